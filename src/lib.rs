//! wgfer: a deep-learning engine on wgpu with hand-written WGSL kernels,
//! and the tutorial ResNet that reads facial expressions from FER-2013.
//!
//! Data flows one way: `data` (CSV) → `augment` → batches uploaded to the GPU
//! → `model` records on the `tape` → `ops` (WGSL kernels) → `optim` (Adam) →
//! metrics, `checkpoint`s and `report` pictures.

pub mod augment;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod fuzzing;
pub mod gpu;
pub mod image_input;
pub mod model;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod predict;
pub mod report;
pub mod tape;
pub mod tensor;
pub mod train;
pub mod trainer;

pub use gpu::{Gpu, Shader};
pub use tensor::Tensor;
