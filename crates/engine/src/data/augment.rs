//! RandAugment (Cubuk et al.): a few randomly chosen photometric or geometric operations of one
//! shared strength. The operations and their strongest settings are torchvision's; the strength
//! is on timm's 0–10 scale with timm's optional per-operation noise (`rand-m9-n2-mstd0.5`).
//! Every operation is implemented as PIL implements it (torchvision and timm both run PIL).

use image::{Rgb, RgbImage};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// timm's magnitude scale: 10 is the strongest setting of every operation.
pub const MAX_MAGNITUDE: f32 = 10.0;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandAugment {
    /// Operations applied one after another, each chosen uniformly (with replacement).
    pub num_ops: usize,
    /// Strength in `0..=10`.
    pub magnitude: f32,
    /// When positive, each operation's strength is drawn from normal(magnitude, magnitude_std)
    /// and clipped to `0..=10`.
    pub magnitude_std: f32,
}

impl Default for RandAugment {
    /// timm's `rand-m9-mstd0.5` with two operations.
    fn default() -> Self {
        RandAugment { num_ops: 2, magnitude: 9.0, magnitude_std: 0.5 }
    }
}

impl RandAugment {
    pub fn apply(&self, mut image: RgbImage, rng: &mut impl Rng) -> RgbImage {
        for _ in 0..self.num_ops {
            let op = AugmentOp::ALL[rng.random_range(0..AugmentOp::ALL.len())];
            let magnitude =
                if self.magnitude_std > 0.0 { normal(rng, self.magnitude, self.magnitude_std) } else { self.magnitude };
            let mut level = magnitude.clamp(0.0, MAX_MAGNITUDE) / MAX_MAGNITUDE;
            if op.is_signed() && rng.random_bool(0.5) {
                level = -level;
            }
            image = op.apply(image, level);
        }
        image
    }
}

/// Box–Muller: one normal sample, so the RNG stream (and thus augmentation) depends only on the
/// seed and this code, not on a distribution crate's version.
fn normal(rng: &mut impl Rng, mean: f32, std: f32) -> f32 {
    let u1: f64 = rng.random();
    let u2: f64 = rng.random();
    let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    mean + std * z as f32
}

/// torchvision's RandAugment operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AugmentOp {
    Identity,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    Brightness,
    Color,
    Contrast,
    Sharpness,
    Posterize,
    Solarize,
    AutoContrast,
    Equalize,
}

/// Strongest settings (level ±1), as torchvision's at its top magnitude bin.
const MAX_SHEAR: f64 = 0.3;
const MAX_TRANSLATE_FRACTION: f64 = 150.0 / 331.0;
const MAX_ROTATE_DEGREES: f64 = 30.0;
const MAX_ENHANCE: f32 = 0.9;
const MAX_POSTERIZE_BITS_REMOVED: f32 = 4.0;

impl AugmentOp {
    pub const ALL: [AugmentOp; 14] = [
        AugmentOp::Identity,
        AugmentOp::ShearX,
        AugmentOp::ShearY,
        AugmentOp::TranslateX,
        AugmentOp::TranslateY,
        AugmentOp::Rotate,
        AugmentOp::Brightness,
        AugmentOp::Color,
        AugmentOp::Contrast,
        AugmentOp::Sharpness,
        AugmentOp::Posterize,
        AugmentOp::Solarize,
        AugmentOp::AutoContrast,
        AugmentOp::Equalize,
    ];

    /// Whether the operation has a direction (left/right, brighter/darker) chosen at random.
    pub fn is_signed(self) -> bool {
        matches!(
            self,
            AugmentOp::ShearX
                | AugmentOp::ShearY
                | AugmentOp::TranslateX
                | AugmentOp::TranslateY
                | AugmentOp::Rotate
                | AugmentOp::Brightness
                | AugmentOp::Color
                | AugmentOp::Contrast
                | AugmentOp::Sharpness
        )
    }

    /// Applies the operation at `level` in `-1..=1` (a fraction of its strongest setting; the sign
    /// picks the direction where there is one). Level 0 leaves the image unchanged for every
    /// operation except `AutoContrast` and `Equalize`, which have no strength.
    pub fn apply(self, image: RgbImage, level: f32) -> RgbImage {
        let level = level.clamp(-1.0, 1.0);
        let (width, height) = (f64::from(image.width()), f64::from(image.height()));
        let l = f64::from(level);
        match self {
            AugmentOp::Identity => image,
            AugmentOp::ShearX => affine_nearest(&image, [1.0, MAX_SHEAR * l, 0.0, 0.0, 1.0, 0.0]),
            AugmentOp::ShearY => affine_nearest(&image, [1.0, 0.0, 0.0, MAX_SHEAR * l, 1.0, 0.0]),
            AugmentOp::TranslateX => {
                let shift = (MAX_TRANSLATE_FRACTION * width * l).trunc();
                affine_nearest(&image, [1.0, 0.0, -shift, 0.0, 1.0, 0.0])
            }
            AugmentOp::TranslateY => {
                let shift = (MAX_TRANSLATE_FRACTION * height * l).trunc();
                affine_nearest(&image, [1.0, 0.0, 0.0, 0.0, 1.0, -shift])
            }
            AugmentOp::Rotate => rotate(&image, MAX_ROTATE_DEGREES * l),
            AugmentOp::Brightness => {
                let black = RgbImage::new(image.width(), image.height());
                blend(&black, image, 1.0 + MAX_ENHANCE * level)
            }
            AugmentOp::Color => blend(&grayscale(&image), image, 1.0 + MAX_ENHANCE * level),
            AugmentOp::Contrast => {
                let mean = mean_luma(&image);
                let flat = RgbImage::from_pixel(image.width(), image.height(), Rgb([mean; 3]));
                blend(&flat, image, 1.0 + MAX_ENHANCE * level)
            }
            AugmentOp::Sharpness => blend(&smooth(&image), image, 1.0 + MAX_ENHANCE * level),
            AugmentOp::Posterize => {
                let removed = (MAX_POSTERIZE_BITS_REMOVED * level.abs()).round_ties_even() as u32;
                let mask = !((1u16 << removed) - 1) as u8;
                map_values(image, |v| v & mask)
            }
            AugmentOp::Solarize => {
                let threshold = 256.0 * (1.0 - level.abs());
                map_values(image, |v| if f32::from(v) >= threshold { 255 - v } else { v })
            }
            AugmentOp::AutoContrast => per_channel_lut(image, autocontrast_lut),
            AugmentOp::Equalize => per_channel_lut(image, equalize_lut),
        }
    }
}

/// PIL's `Image.transform(AFFINE, matrix, NEAREST)`: each output pixel centre (x, y) reads the
/// input at (a·x + b·y + c, d·x + e·y + f); anything outside is black (torchvision's default fill).
fn affine_nearest(image: &RgbImage, m: [f64; 6]) -> RgbImage {
    let (width, height) = image.dimensions();
    RgbImage::from_fn(width, height, |x, y| {
        let (x, y) = (f64::from(x) + 0.5, f64::from(y) + 0.5);
        let xi = m[0] * x + m[1] * y + m[2];
        let yi = m[3] * x + m[4] * y + m[5];
        if xi < 0.0 || yi < 0.0 || xi >= f64::from(width) || yi >= f64::from(height) {
            Rgb([0, 0, 0])
        } else {
            *image.get_pixel(xi as u32, yi as u32)
        }
    })
}

/// PIL's `Image.rotate(degrees)`: counter-clockwise about the centre, same size, nearest.
fn rotate(image: &RgbImage, degrees: f64) -> RgbImage {
    let angle = -degrees.to_radians();
    let (cos, sin) = (angle.cos(), angle.sin());
    let (cx, cy) = (f64::from(image.width()) / 2.0, f64::from(image.height()) / 2.0);
    affine_nearest(image, [cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy])
}

/// PIL's `Image.blend(degenerate, image, factor)`, which `ImageEnhance` uses: extrapolates away
/// from the degenerate image when factor > 1, clips, truncates.
fn blend(degenerate: &RgbImage, mut image: RgbImage, factor: f32) -> RgbImage {
    for (v, &d) in image.iter_mut().zip(degenerate.iter()) {
        let d = f32::from(d);
        *v = (d + factor * (f32::from(*v) - d)).clamp(0.0, 255.0) as u8;
    }
    image
}

/// PIL's `convert("L")`: ITU-R 601-2 luma in 16-bit fixed point.
fn luma(p: &Rgb<u8>) -> u8 {
    let [r, g, b] = p.0.map(u32::from);
    ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
}

fn grayscale(image: &RgbImage) -> RgbImage {
    RgbImage::from_fn(image.width(), image.height(), |x, y| Rgb([luma(image.get_pixel(x, y)); 3]))
}

/// `ImageEnhance.Contrast`'s pivot: the mean grey level, rounded.
fn mean_luma(image: &RgbImage) -> u8 {
    let total: u64 = image.pixels().map(|p| u64::from(luma(p))).sum();
    let count = u64::from(image.width()) * u64::from(image.height());
    (total as f64 / count.max(1) as f64 + 0.5) as u8
}

/// PIL's `ImageFilter.SMOOTH` (3×3, centre 5, others 1, /13), border pixels left as they are —
/// the degenerate image of `ImageEnhance.Sharpness`.
fn smooth(image: &RgbImage) -> RgbImage {
    let (width, height) = image.dimensions();
    let mut out = image.clone();
    if width < 3 || height < 3 {
        return out;
    }
    for y in 1..height - 1 {
        for x in 1..width - 1 {
            let mut sums = [0u32; 3];
            for dy in 0..3 {
                for dx in 0..3 {
                    let weight = if dx == 1 && dy == 1 { 5 } else { 1 };
                    let p = image.get_pixel(x + dx - 1, y + dy - 1).0;
                    for c in 0..3 {
                        sums[c] += weight * u32::from(p[c]);
                    }
                }
            }
            out.put_pixel(x, y, Rgb(sums.map(|s| ((s as f32 / 13.0) + 0.5).min(255.0) as u8)));
        }
    }
    out
}

fn map_values(mut image: RgbImage, f: impl Fn(u8) -> u8) -> RgbImage {
    let lut: [u8; 256] = std::array::from_fn(|v| f(v as u8));
    for v in image.iter_mut() {
        *v = lut[usize::from(*v)];
    }
    image
}

fn per_channel_lut(mut image: RgbImage, make_lut: fn(&[u32; 256]) -> [u8; 256]) -> RgbImage {
    let mut histograms = [[0u32; 256]; 3];
    for p in image.pixels() {
        for c in 0..3 {
            histograms[c][usize::from(p.0[c])] += 1;
        }
    }
    let luts = histograms.map(|h| make_lut(&h));
    for p in image.pixels_mut() {
        for c in 0..3 {
            p.0[c] = luts[c][usize::from(p.0[c])];
        }
    }
    image
}

/// `ImageOps.autocontrast` (no cutoff): stretch each channel's used range to 0–255.
fn autocontrast_lut(histogram: &[u32; 256]) -> [u8; 256] {
    let lo = histogram.iter().position(|&n| n > 0);
    let hi = histogram.iter().rposition(|&n| n > 0);
    match (lo, hi) {
        (Some(lo), Some(hi)) if hi > lo => {
            let scale = 255.0 / (hi - lo) as f64;
            let offset = -(lo as f64) * scale;
            std::array::from_fn(|v| (v as f64 * scale + offset).clamp(0.0, 255.0) as u8)
        }
        _ => std::array::from_fn(|v| v as u8),
    }
}

/// `ImageOps.equalize`: map each channel through its cumulative histogram.
fn equalize_lut(histogram: &[u32; 256]) -> [u8; 256] {
    let used: Vec<u64> = histogram.iter().filter(|&&n| n > 0).map(|&n| u64::from(n)).collect();
    let identity = std::array::from_fn(|v| v as u8);
    if used.len() <= 1 {
        return identity;
    }
    let step = (used.iter().sum::<u64>() - used[used.len() - 1]) / 256;
    if step == 0 {
        return identity;
    }
    let mut n = step / 2;
    std::array::from_fn(|v| {
        let out = (n / step).min(255) as u8;
        n += u64::from(histogram[v]);
        out
    })
}
