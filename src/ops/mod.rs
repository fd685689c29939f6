//! The kernels. One module per op family: its WGSL (in `shaders/`), the Rust
//! that binds and dispatches it, and a plain CPU reference (`cpu`) that the
//! tests compare it with.

pub mod adam;
pub mod batchnorm;
pub mod conv2d;
pub mod dense;
pub mod elementwise;
pub mod gemm;
pub mod pool;
pub mod reduce;
pub mod softmax_xent;
