//! Turning stored image bytes into the RGB pixels the transforms work on, as PIL's
//! `Image.open(...).convert("RGB")` would, plus the EXIF rotation the user saw when uploading.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

/// Largest image (width × height, from the header) we agree to decode: the upload check's limit,
/// so anything that was accepted also trains, and a forged header can't exhaust memory.
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the image is empty (0 bytes)")]
    Empty,
    #[error("not a JPEG, PNG, TIFF, BMP, WEBP or GIF image ({detail})")]
    UnsupportedFormat { detail: String },
    #[error("image declares {width}×{height} pixels, more than the limit of {limit}")]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    #[error("the {format} image could not be decoded: {reason}")]
    Corrupt { format: &'static str, reason: String },
}

/// Decodes JPEG, PNG, TIFF, BMP, WEBP or GIF (its first frame), recognised by content, applies the
/// EXIF orientation and converts to 8-bit RGB. Alpha is dropped, not composited: that is what
/// PIL's `.convert("RGB")` does, so images look to the model as they do in torchvision.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    decode_rgb_with_limit(bytes, MAX_PIXELS)
}

/// [`decode_rgb`] with a caller-chosen pixel limit.
pub fn decode_rgb_with_limit(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let format = sniff(bytes)?;
    let name = format_name(format);
    let corrupt = |reason: String| DecodeError::Corrupt { format: name, reason };
    if format == ImageFormat::Jpeg && !deeptune_core::formats::jpeg_is_complete(bytes) {
        // The JPEG decoder fills missing scan data with grey instead of failing; PIL refuses.
        return Err(corrupt("the file ends before the end of the JPEG data (it looks truncated)".into()));
    }

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(decoder_limits(max_pixels));
    // Only the header is parsed here, so the size is known before any pixel buffer exists.
    let mut decoder = reader.into_decoder().map_err(|e| corrupt(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(DecodeError::TooManyPixels { width, height, limit: max_pixels });
    }
    if width == 0 || height == 0 {
        return Err(corrupt(format!("the image declares a size of {width}×{height}")));
    }
    // A broken EXIF block shouldn't cost an otherwise good image.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| corrupt(e.to_string()))?;
    image.apply_orientation(orientation);
    Ok(match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

fn sniff(bytes: &[u8]) -> Result<ImageFormat, DecodeError> {
    match image::guess_format(bytes) {
        Ok(
            format @ (ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::Tiff
            | ImageFormat::Bmp
            | ImageFormat::WebP
            | ImageFormat::Gif),
        ) => Ok(format),
        Ok(other) => Err(DecodeError::UnsupportedFormat { detail: format!("{other:?} images are not accepted") }),
        Err(_) => Err(DecodeError::UnsupportedFormat { detail: "the content is not a recognised image".into() }),
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::Png => "png",
        ImageFormat::Tiff => "tiff",
        ImageFormat::Bmp => "bmp",
        ImageFormat::WebP => "webp",
        ImageFormat::Gif => "gif",
        _ => "unknown",
    }
}

/// A second line of defence in case a decoder allocates more than its header suggested: room for
/// 16-bit RGBA (8 bytes a pixel) at the pixel cap, with a floor for decoders' fixed buffers.
fn decoder_limits(max_pixels: u64) -> image::Limits {
    let mut limits = image::Limits::default();
    let max_side = u32::try_from(max_pixels).unwrap_or(u32::MAX);
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(64 * 1024 * 1024));
    limits
}
