//! The training engine: model architectures with torchvision's parameter names, loading of
//! PyTorch checkpoints into them, and (next) the data pipeline, training, evaluation and predict.

pub mod allocator;
pub mod artifact;
pub mod data;
pub mod export;
pub mod metrics;
pub mod models;
pub mod nn;
pub mod pretrained;
pub mod torch;
pub mod train;

/// The burn version the engine is built on, for callers that need its types (devices).
pub use burn;
