//! The facial-expression tool built on the engine: FER-2013 data and its
//! augmentation, the tutorial's ResNet, the training loop, checkpoints,
//! evaluation, prediction, benchmarks and report pictures.

pub mod annotate;
pub mod augment;
pub mod average;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod export;
pub mod faces;
pub mod files;
pub mod fuzzing;
pub mod image_input;
pub mod infer;
pub mod keras;
pub mod model;
pub mod models;
pub mod plan;
pub mod predict;
pub mod provenance;
pub mod report;
pub mod serve;
pub mod train;
pub mod trainer;
pub mod web;
