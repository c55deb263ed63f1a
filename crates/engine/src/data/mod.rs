//! The image data pipeline: stored bytes → RGB pixels → torchvision-style transforms → batches,
//! prepared on worker threads ahead of the training loop.
//!
//! - [`decode_rgb`]: JPEG, PNG, TIFF, BMP, WEBP or GIF (first frame), recognised by content, EXIF
//!   orientation applied, alpha dropped (as PIL's `convert("RGB")`), at most [`MAX_PIXELS`].
//! - [`EvalTransform`]: `Resize(size·256/224) → CenterCrop(size) → ToTensor → normalise`, with
//!   Pillow's antialiased bilinear resampling ported exactly ([`resize_bilinear`]), so inputs
//!   match torchvision's on the same image.
//! - [`TrainTransform`]: `RandomResizedCrop → flip → RandAugment (optional) → normalise`; all
//!   randomness from the RNG passed in.
//! - [`Loader`]: batches of one epoch in the caller's order, `start_batch` to resume, bad samples
//!   skipped and reported, identical output for any number of workers given the epoch seed.
//!
//! Pixels are CHW `f32` (`3 × size × size` per image, `N × 3 × size × size` per batch);
//! labels are a dense `N × classes` matrix of 0/1 targets.
//!
//! ```no_run
//! use std::sync::Arc;
//! use deeptune_engine::data::*;
//! # fn run(source: Arc<dyn DataSource>, order: Vec<usize>) {
//! let transform = Transform::Train(TrainTransform::new(224, Normalization::ImageNet));
//! let mut loader = Loader::new(source, order, transform, LoaderConfig::new(64, 4, 1234));
//! while let Some(batch) = loader.next() {
//!     // batch.images: [N, 3, 224, 224]; batch.labels: [N, classes]
//!     for bad in loader.take_bad_samples() {
//!         eprintln!("skipped {}: {}", bad.id, bad.reason);
//!     }
//! }
//! # }
//! ```

mod augment;
mod decode;
mod loader;
mod resize;
mod transform;

pub use augment::{AugmentOp, MAX_MAGNITUDE, RandAugment};
pub use decode::{DecodeError, MAX_PIXELS, decode_rgb, decode_rgb_with_limit};
pub use loader::{BadSample, Batch, DataSource, Loader, LoaderConfig, sample_rng};
pub use resize::{Region, resize_bilinear};
pub use transform::{
    EvalTransform, FlipDirection, LongEdge, Normalization, TrainTransform, Transform, random_resized_crop,
};
