//! The engine: a GPU device with its limits, tensors, a buffer pool, the
//! autograd tape, differentiable ops with their WGSL kernels and plain CPU
//! references, and optimizers over a set of parameters.
//!
//! It knows nothing of the application, data files or the command line: every
//! crate path here stays inside the engine (`tests/layout.rs` checks).

pub mod gpu;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod profile;
pub mod record;
pub mod tape;
pub mod tensor;

pub use gpu::{Gpu, Kernels, Shader};
pub use tensor::Tensor;
