//! PIL's bilinear resampling (`Image.resize(size, Image.BILINEAR)`), which is what torchvision's
//! `Resize` and `RandomResizedCrop` run on PIL images. When shrinking, the triangle filter's
//! support widens with the scale factor (antialiasing), so every source pixel contributes.
//!
//! This is a port of Pillow's `Resample.c` for 8-bit images — the same tap positions, the same
//! 22-bit fixed-point weights, a horizontal pass rounded to 8 bits, then a vertical pass — so
//! results match torchvision's preprocessing to the last bit rather than approximately.
//! (`image::imageops::resize` with `FilterType::Triangle` uses the same filter but runs the
//! vertical pass first and keeps a float intermediate, so it differs by a grey level here and
//! there.)

use image::RgbImage;

/// A rectangle of an image, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub left: u32,
    pub top: u32,
    pub width: u32,
    pub height: u32,
}

impl Region {
    pub fn whole(image: &RgbImage) -> Region {
        Region { left: 0, top: 0, width: image.width(), height: image.height() }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Resizes `region` of `image` to `width`×`height` as PIL crops to it and then resizes with
/// bilinear filtering: pixels outside the region never contribute.
///
/// Panics if the region is empty or outside the image, or if the target size is zero.
pub fn resize_bilinear(image: &RgbImage, region: Region, width: u32, height: u32) -> RgbImage {
    assert!(width > 0 && height > 0, "resize to an empty image");
    assert!(
        region.width > 0
            && region.height > 0
            && region.left + region.width <= image.width()
            && region.top + region.height <= image.height(),
        "region {region:?} is not inside the {}×{} image",
        image.width(),
        image.height()
    );
    let horizontal = Coefficients::new(region.width, width);
    let vertical = Coefficients::new(region.height, height);
    // Only the source rows the vertical pass reads are resampled horizontally.
    let first_row = vertical.bounds[0].0;
    let last_row = vertical.bounds.iter().map(|&(start, len)| start + len).max().unwrap_or(first_row);
    let rows = last_row - first_row;

    let source = image.as_raw();
    let stride = image.width() as usize * 3;
    let pixel = |x: usize, y: usize| (region.top as usize + y) * stride + (region.left as usize + x) * 3;

    // Horizontal pass into `rows` rows of `width` pixels (a plain copy when the width is unchanged,
    // which is exactly what PIL's skipped pass gives).
    let temp_width = width as usize;
    let mut temp = vec![0u8; rows * temp_width * 3];
    if width == region.width {
        for y in 0..rows {
            let start = pixel(0, first_row + y);
            temp[y * temp_width * 3..(y + 1) * temp_width * 3].copy_from_slice(&source[start..start + temp_width * 3]);
        }
    } else {
        for y in 0..rows {
            let out_row = &mut temp[y * temp_width * 3..(y + 1) * temp_width * 3];
            for (x, out) in out_row.chunks_exact_mut(3).enumerate() {
                let (start, len) = horizontal.bounds[x];
                let weights = &horizontal.weights[x * horizontal.taps..x * horizontal.taps + len];
                let base = pixel(start, first_row + y);
                let mut sums = [1i32 << (PRECISION_BITS - 1); 3];
                for (k, &w) in weights.iter().enumerate() {
                    let p = &source[base + k * 3..base + k * 3 + 3];
                    sums[0] += i32::from(p[0]) * w;
                    sums[1] += i32::from(p[1]) * w;
                    sums[2] += i32::from(p[2]) * w;
                }
                out.copy_from_slice(&sums.map(clip8));
            }
        }
    }

    if height == region.height {
        // PIL skips the vertical pass too; the horizontal pass read exactly the region's rows.
        return RgbImage::from_raw(width, height, temp).expect("buffer has the image's size");
    }
    let row_len = temp_width * 3;
    let mut out = vec![0u8; height as usize * row_len];
    let mut sums = vec![0i32; row_len];
    for (y, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        let (start, len) = vertical.bounds[y];
        let weights = &vertical.weights[y * vertical.taps..y * vertical.taps + len];
        sums.fill(1 << (PRECISION_BITS - 1));
        for (k, &w) in weights.iter().enumerate() {
            let row = (start - first_row + k) * row_len;
            for (sum, &v) in sums.iter_mut().zip(&temp[row..row + row_len]) {
                *sum += i32::from(v) * w;
            }
        }
        for (o, &sum) in out_row.iter_mut().zip(&sums) {
            *o = clip8(sum);
        }
    }
    RgbImage::from_raw(width, height, out).expect("buffer has the image's size")
}

fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// For each output pixel along one axis: the first source pixel and how many follow it, and
/// the fixed-point weights (`taps` slots per output pixel), as Pillow's `precompute_coeffs` and
/// `normalize_coeffs_8bpc` compute them.
struct Coefficients {
    taps: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

impl Coefficients {
    fn new(in_size: u32, out_size: u32) -> Coefficients {
        let scale = f64::from(in_size) / f64::from(out_size);
        let filter_scale = scale.max(1.0);
        let support = filter_scale; // the triangle filter's support is 1
        let taps = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size as usize);
        let mut weights = vec![0i32; out_size as usize * taps];
        let mut raw = vec![0f64; taps];
        for x in 0..out_size as usize {
            let center = (x as f64 + 0.5) * scale;
            // C's truncating casts, as in Pillow.
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(i64::from(in_size)) as usize;
            let len = end.saturating_sub(start).min(taps);
            let mut total = 0.0;
            for (k, w) in raw[..len].iter_mut().enumerate() {
                let t = ((k + start) as f64 - center + 0.5) / filter_scale;
                *w = (1.0 - t.abs()).max(0.0);
                total += *w;
            }
            for (k, &w) in raw[..len].iter().enumerate() {
                let w = if total != 0.0 { w / total } else { w };
                let fixed = w * f64::from(1u32 << PRECISION_BITS);
                weights[x * taps + k] = if fixed < 0.0 { (fixed - 0.5) as i32 } else { (fixed + 0.5) as i32 };
            }
            bounds.push((start, len));
        }
        Coefficients { taps, bounds, weights }
    }
}
