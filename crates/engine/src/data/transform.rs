//! The per-image transforms of torchvision/timm classification recipes, producing normalised
//! CHW float pixels: `Resize → CenterCrop` for evaluation, `RandomResizedCrop → flip →
//! RandAugment` for training.

use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::augment::RandAugment;
use super::resize::{Region, resize_bilinear};

/// How 0–255 pixel values become the model's input; must match what the weights were trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Normalization {
    /// torchvision's `ToTensor` (÷255) then `Normalize(mean=[0.485, 0.456, 0.406],
    /// std=[0.229, 0.224, 0.225])`: almost every torchvision/timm checkpoint.
    #[default]
    #[serde(rename = "imagenet")]
    ImageNet,
    /// `(x − 127) / 128` on 0–255 values: EfficientNet-Lite (TensorFlow's TPU preprocessing).
    #[serde(rename = "minus_one_to_one_127")]
    MinusOneToOne127,
}

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Normalization {
    /// Converts one 0–255 value of channel `c`, with torchvision's float32 arithmetic.
    pub fn apply(self, value: u8, channel: usize) -> f32 {
        match self {
            Normalization::ImageNet => (f32::from(value) / 255.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel],
            Normalization::MinusOneToOne127 => (f32::from(value) - 127.0) / 128.0,
        }
    }

    /// A square `size`×`size` image as CHW floats.
    fn to_chw(self, image: &RgbImage) -> Vec<f32> {
        let plane = image.width() as usize * image.height() as usize;
        let mut out = vec![0.0; 3 * plane];
        for (i, p) in image.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = self.apply(p.0[c], c);
            }
        }
        out
    }
}

/// torchvision's evaluation transform: `Resize(resize)` (short edge, bilinear with antialiasing),
/// `CenterCrop(size)`, `ToTensor`, normalise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalTransform {
    /// Side of the square crop the model sees.
    pub size: usize,
    /// Short edge after resizing, before the crop.
    pub resize: usize,
    pub long_edge: LongEdge,
    pub normalization: Normalization,
}

/// How the long edge's new length is rounded when the short edge is resized; the two reference
/// pipelines differ by a pixel (451×300 → 384×256 or 385×256), which shifts every crop pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LongEdge {
    /// `int(resize * long / short)`: torchvision's `Resize(int)`.
    #[default]
    Truncate,
    /// `round(resize * long / short)`: the EfficientNet-Lite reference preprocessing.
    Round,
}

impl EvalTransform {
    /// The usual 224/256 ratio (timm's `crop_pct` 0.875): 224 → 256, 384 → 438; the long edge
    /// rounded as the checkpoints of that normalisation were evaluated (torchvision's truncation
    /// for ImageNet, rounding for EfficientNet-Lite's `(x − 127) / 128`).
    pub fn new(size: usize, normalization: Normalization) -> EvalTransform {
        let long_edge = match normalization {
            Normalization::ImageNet => LongEdge::Truncate,
            Normalization::MinusOneToOne127 => LongEdge::Round,
        };
        EvalTransform { size, resize: size * 256 / 224, long_edge, normalization }
    }

    /// CHW floats, `3 × size × size`.
    pub fn apply(&self, image: &RgbImage) -> Vec<f32> {
        let resized = resize_short_edge(image, self.resize, self.long_edge);
        let mut out = vec![0.0; 3 * self.size * self.size];
        center_crop_into(&resized, self.size, self.normalization, &mut out);
        out
    }
}

/// torchvision's `Resize(int)` on a PIL image: the short edge becomes `short`, the long edge
/// keeps the aspect ratio.
fn resize_short_edge(image: &RgbImage, short: usize, long_edge: LongEdge) -> RgbImage {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let (old_short, old_long) = if w <= h { (w, h) } else { (h, w) };
    let exact = short as f64 * old_long as f64 / old_short as f64;
    let long = match long_edge {
        LongEdge::Truncate => exact as usize,
        LongEdge::Round => exact.round() as usize,
    };
    let long = long.max(1);
    let (new_w, new_h) = if w <= h { (short, long) } else { (long, short) };
    if (new_w, new_h) == (w, h) {
        return image.clone();
    }
    resize_bilinear(image, Region::whole(image), new_w as u32, new_h as u32)
}

/// torchvision's `CenterCrop`: offsets `round((h − size) / 2)` with Python's round-half-even;
/// an image smaller than the crop is padded with black (value 0) on both sides first.
fn center_crop_into(image: &RgbImage, size: usize, normalization: Normalization, out: &mut [f32]) {
    let (w, h) = (image.width() as i64, image.height() as i64);
    let size_i = size as i64;
    // (padding before, padded extent): torchvision pads (size − extent) / 2 before, the rest after.
    let pad = |extent: i64| if size_i > extent { ((size_i - extent) / 2, size_i) } else { (0, extent) };
    let ((pad_left, padded_w), (pad_top, padded_h)) = (pad(w), pad(h));
    let offset = |padded: i64| ((padded - size_i) as f64 / 2.0).round_ties_even() as i64;
    let (left, top) = (offset(padded_w) - pad_left, offset(padded_h) - pad_top);
    let plane = size * size;
    for y in 0..size {
        for x in 0..size {
            let (sx, sy) = (left + x as i64, top + y as i64);
            let pixel = if (0..w).contains(&sx) && (0..h).contains(&sy) {
                image.get_pixel(sx as u32, sy as u32).0
            } else {
                [0, 0, 0]
            };
            for c in 0..3 {
                out[c * plane + y * size + x] = normalization.apply(pixel[c], c);
            }
        }
    }
}

/// Which way random flips go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlipDirection {
    /// Mirror left–right (`RandomHorizontalFlip`): most photos.
    #[default]
    Horizontal,
    /// Upside down (`RandomVerticalFlip`).
    Vertical,
    /// Each axis independently, each with the flip probability: aerial and microscope images,
    /// which have no "up".
    Both,
}

/// A training recipe: torchvision's `RandomResizedCrop(size, scale, ratio)` (bilinear), a random
/// flip, optionally RandAugment, then `ToTensor` and normalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainTransform {
    pub size: usize,
    /// Crop area as a fraction of the image area.
    pub scale: (f32, f32),
    /// Crop aspect ratio (width / height), sampled log-uniformly.
    pub ratio: (f32, f32),
    /// 0 disables flipping.
    pub flip_probability: f32,
    pub flip: FlipDirection,
    pub rand_augment: Option<RandAugment>,
    pub normalization: Normalization,
}

impl TrainTransform {
    /// torchvision's defaults: scale (0.08, 1), ratio (3/4, 4/3), horizontal flip with p = 0.5,
    /// no RandAugment.
    pub fn new(size: usize, normalization: Normalization) -> TrainTransform {
        TrainTransform {
            size,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip_probability: 0.5,
            flip: FlipDirection::Horizontal,
            rand_augment: None,
            normalization,
        }
    }

    /// CHW floats, `3 × size × size`. All randomness comes from `rng`, in a fixed order.
    pub fn apply(&self, image: &RgbImage, rng: &mut impl Rng) -> Vec<f32> {
        self.normalization.to_chw(&self.augment(image, rng))
    }

    /// [`TrainTransform::apply`] before normalisation: the augmented `size`×`size` image.
    pub fn augment(&self, image: &RgbImage, rng: &mut impl Rng) -> RgbImage {
        let region = random_resized_crop(image.width(), image.height(), self.scale, self.ratio, rng);
        let side = self.size as u32;
        let mut out = resize_bilinear(image, region, side, side);
        let (horizontal, vertical) = match self.flip {
            FlipDirection::Horizontal => (true, false),
            FlipDirection::Vertical => (false, true),
            FlipDirection::Both => (true, true),
        };
        if horizontal && rng.random::<f32>() < self.flip_probability {
            image::imageops::flip_horizontal_in_place(&mut out);
        }
        if vertical && rng.random::<f32>() < self.flip_probability {
            image::imageops::flip_vertical_in_place(&mut out);
        }
        if let Some(rand_augment) = &self.rand_augment {
            out = rand_augment.apply(out, rng);
        }
        out
    }
}

/// torchvision's `RandomResizedCrop.get_params`: up to ten tries at a crop of random area and
/// log-uniform aspect ratio that fits, else a centre crop clamped to the ratio range.
pub fn random_resized_crop(
    width: u32,
    height: u32,
    scale: (f32, f32),
    ratio: (f32, f32),
    rng: &mut impl Rng,
) -> Region {
    let (w_img, h_img) = (f64::from(width), f64::from(height));
    let area = w_img * h_img;
    let (log_lo, log_hi) = (f64::from(ratio.0).ln(), f64::from(ratio.1).ln());
    // Written out rather than `random_range`, which refuses an empty range such as scale (1, 1).
    let mut uniform = |lo: f64, hi: f64| lo + (hi - lo) * rng.random::<f64>();
    for _ in 0..10 {
        let target_area = area * uniform(f64::from(scale.0), f64::from(scale.1));
        let aspect = uniform(log_lo, log_hi).exp();
        let w = (target_area * aspect).sqrt().round_ties_even();
        let h = (target_area / aspect).sqrt().round_ties_even();
        if 0.0 < w && w <= w_img && 0.0 < h && h <= h_img {
            let (w, h) = (w as u32, h as u32);
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return Region { left, top, width: w, height: h };
        }
    }
    let in_ratio = w_img / h_img;
    let (lo, hi) = (f64::from(ratio.0.min(ratio.1)), f64::from(ratio.0.max(ratio.1)));
    let (w, h) = if in_ratio < lo {
        (width, ((w_img / lo).round_ties_even() as u32).clamp(1, height))
    } else if in_ratio > hi {
        (((h_img * hi).round_ties_even() as u32).clamp(1, width), height)
    } else {
        (width, height)
    };
    Region { left: (width - w) / 2, top: (height - h) / 2, width: w, height: h }
}

/// Either recipe, for the loader.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    Train(TrainTransform),
    Eval(EvalTransform),
}

impl Transform {
    /// Side of the square output.
    pub fn size(&self) -> usize {
        match self {
            Transform::Train(t) => t.size,
            Transform::Eval(t) => t.size,
        }
    }

    /// CHW floats, `3 × size × size`; the evaluation transform ignores `rng`.
    pub fn apply(&self, image: &RgbImage, rng: &mut impl Rng) -> Vec<f32> {
        match self {
            Transform::Train(t) => t.apply(image, rng),
            Transform::Eval(t) => t.apply(image),
        }
    }
}
