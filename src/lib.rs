//! wgfer: a deep-learning engine on wgpu with hand-written WGSL kernels
//! (`engine`), and the facial-expression tool built on it (`fer`).
//!
//! Data flows one way: `fer::data` (CSV) → `fer::augment` → batches uploaded
//! to the GPU → `fer::model` records on the `engine::tape` → `engine::ops`
//! (WGSL kernels) → `engine::optim` (Adam) → metrics, `fer::checkpoint`s and
//! `fer::report` pictures.

pub mod engine;
pub mod fer;
