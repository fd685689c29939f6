//! The kernels. One module per op family: its WGSL (in `shaders/`), the Rust
//! that binds and dispatches it, and a plain CPU reference (`cpu`) that the
//! tests compare it with.

pub mod adam;
pub mod batchnorm;
pub mod bn_fold;
pub mod conv2d;
pub mod dense;
pub mod elementwise;
pub mod gemm;
pub mod gemm_sg;
pub mod pool;
pub mod reduce;
pub mod softmax_xent;
pub mod transpose;

use crate::engine::Shader;

/// Images per workgroup in the per-pixel kernels (pools, im2col, col2im):
/// each workgroup loops over every `IMAGES_PER_WORKGROUP`-th image from its
/// own, as llvmpipe pays a fixed cost per workgroup and one per image row
/// made thousands of them.
pub const IMAGES_PER_WORKGROUP: usize = 8;

/// The grids' third dimension for `n` images.
pub fn image_groups(n: usize) -> u32 {
    n.div_ceil(IMAGES_PER_WORKGROUP) as u32
}

/// A kernel source compiled twice, over `f32` and over `vec4<f32>`: the
/// source names its element type `V` and its width `W`. llvmpipe loads a
/// per-lane vec4 for about the price of a scalar, so memory-bound kernels
/// take the vec4 build whenever the channel count (or length) allows.
pub struct ShaderPair {
    pub scalar: Shader,
    pub vec4: Shader,
}

impl ShaderPair {
    pub fn pick(&self, vec4: bool) -> &Shader {
        if vec4 { &self.vec4 } else { &self.scalar }
    }
}

/// `shader_pair!("name", "file.wgsl", ...)`: the files concatenated behind the
/// preludes that define `V` and `W`.
macro_rules! shader_pair {
    ($name:literal, $($file:literal),+) => {
        $crate::engine::ops::ShaderPair {
            scalar: $crate::engine::Shader {
                name: $name,
                source: concat!("alias V = f32;\nconst W: u32 = 1u;\n", $(include_str!($file)),+),
            },
            vec4: $crate::engine::Shader {
                name: concat!($name, "_vec4"),
                source: concat!("alias V = vec4<f32>;\nconst W: u32 = 4u;\n", $(include_str!($file)),+),
            },
        }
    };
}
pub(crate) use shader_pair;
