//! Validating uploaded image bytes: recognise the format by content, refuse decompression bombs
//! before allocating, decode fully so corrupt or truncated files are caught at upload time, and
//! produce a small JPEG thumbnail.

use std::io::Cursor;

use deeptune_core::status::StatusCode;
use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageReader, RgbImage};
use serde::Serialize;

/// The image formats we accept. Anything else the `image` crate can recognise (ICO, PNM, QOI,
/// AVIF, HDR, ...) is refused, so training never meets a format other tools choke on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Jpeg,
    Png,
    Tiff,
    Bmp,
    Webp,
    Gif,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Png => "png",
            ImageFormat::Tiff => "tiff",
            ImageFormat::Bmp => "bmp",
            ImageFormat::Webp => "webp",
            ImageFormat::Gif => "gif",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
            ImageFormat::Tiff => "image/tiff",
            ImageFormat::Bmp => "image/bmp",
            ImageFormat::Webp => "image/webp",
            ImageFormat::Gif => "image/gif",
        }
    }

    fn to_image_crate(self) -> image::ImageFormat {
        match self {
            ImageFormat::Jpeg => image::ImageFormat::Jpeg,
            ImageFormat::Png => image::ImageFormat::Png,
            ImageFormat::Tiff => image::ImageFormat::Tiff,
            ImageFormat::Bmp => image::ImageFormat::Bmp,
            ImageFormat::Webp => image::ImageFormat::WebP,
            ImageFormat::Gif => image::ImageFormat::Gif,
        }
    }
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Recognises a supported format from the leading magic bytes. File names and declared MIME
/// types are never consulted: both are under the uploader's control and often wrong.
pub fn sniff_format(bytes: &[u8]) -> Option<ImageFormat> {
    match image::guess_format(bytes).ok()? {
        image::ImageFormat::Jpeg => Some(ImageFormat::Jpeg),
        image::ImageFormat::Png => Some(ImageFormat::Png),
        image::ImageFormat::Tiff => Some(ImageFormat::Tiff),
        image::ImageFormat::Bmp => Some(ImageFormat::Bmp),
        image::ImageFormat::WebP => Some(ImageFormat::Webp),
        image::ImageFormat::Gif => Some(ImageFormat::Gif),
        _ => None,
    }
}

/// Upper bounds on what an upload may cost us to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLimits {
    /// Maximum width × height, checked against the header before any pixel buffer exists.
    pub max_pixels: u64,
    /// Maximum size of the encoded file.
    pub max_bytes: usize,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits { max_pixels: 64 * 1024 * 1024, max_bytes: 32 * 1024 * 1024 }
    }
}

/// What we learned about a valid image. Width and height are as displayed, i.e. after the EXIF
/// orientation has been applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    pub size_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct ProcessedImage {
    pub info: ImageInfo,
    pub thumbnail_jpeg: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MediaError {
    #[error("the image is empty (0 bytes)")]
    Empty,
    #[error("the image is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("unsupported image format: {detail}; accepted formats are jpeg, png, tiff, bmp, webp and gif")]
    UnsupportedFormat { detail: String },
    #[error("the {format} image could not be decoded: {reason}")]
    Undecodable { format: ImageFormat, reason: String },
    #[error("image declares {width}×{height} pixels, more than the limit of {limit}")]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    /// The decoder itself needed more memory than allowed (e.g. deep-colour samples).
    #[error("the {format} image needs more memory to decode than allowed: {detail}")]
    DecodeLimit { format: ImageFormat, detail: String },
}

impl MediaError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            MediaError::Empty => StatusCode::INPUT_INVALID_ARGUMENT,
            MediaError::TooLarge { .. } | MediaError::TooManyPixels { .. } | MediaError::DecodeLimit { .. } => {
                StatusCode::INPUT_OVER_LIMIT
            }
            MediaError::UnsupportedFormat { .. } | MediaError::Undecodable { .. } => {
                StatusCode::INPUT_UNSUPPORTED_FORMAT
            }
        }
    }

    /// A stable machine-readable name for the failure; never changes once released.
    pub fn error_code(&self) -> &'static str {
        match self {
            MediaError::Empty => "image_empty",
            MediaError::TooLarge { .. } => "image_too_large",
            MediaError::UnsupportedFormat { .. } => "image_unsupported_format",
            MediaError::Undecodable { .. } => "image_undecodable",
            MediaError::TooManyPixels { .. } => "image_too_many_pixels",
            MediaError::DecodeLimit { .. } => "image_over_decode_limit",
        }
    }
}

/// JPEG can encode at most 65535 pixels per side.
const MAX_THUMBNAIL_SIDE: u32 = 65_535;
const THUMBNAIL_QUALITY: u8 = 80;

/// Checks what can be known without decoding the pixels: size, format, a complete JPEG, the
/// declared pixel count and the memory a decode would need. A decoder given bytes that pass is
/// not asked for more than `limits` allow.
pub fn check_image(bytes: &[u8], limits: &ImageLimits) -> Result<ImageInfo, MediaError> {
    let (format, decoder) = open_decoder(bytes, limits)?;
    let (width, height) = decoder.dimensions();
    Ok(ImageInfo { format, width, height, size_bytes: bytes.len() as u64 })
}

/// The header checks of [`check_image`], returning the decoder ready to decode.
fn open_decoder<'a>(
    bytes: &'a [u8],
    limits: &ImageLimits,
) -> Result<(ImageFormat, impl ImageDecoder + 'a), MediaError> {
    if bytes.is_empty() {
        return Err(MediaError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(MediaError::TooLarge { size: bytes.len() as u64, limit: limits.max_bytes as u64 });
    }
    let format =
        sniff_format(bytes).ok_or_else(|| MediaError::UnsupportedFormat { detail: describe_unsupported(bytes) })?;
    let undecodable = |reason: String| MediaError::Undecodable { format, reason };
    if format == ImageFormat::Jpeg && !deeptune_core::formats::jpeg_is_complete(bytes) {
        // The JPEG decoder fills missing scan data with grey instead of failing, but a
        // half-uploaded photo is still broken for training.
        return Err(undecodable("the file ends before the end of the JPEG data (it looks truncated)".into()));
    }

    // Constructing the decoder parses only the header, so the pixel count can be checked before
    // any buffer proportional to it is allocated.
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format.to_image_crate());
    reader.limits(decoder_limits(limits));
    let decoder = reader.into_decoder().map_err(|e| classify_decode_error(e, format))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(MediaError::TooManyPixels { width, height, limit: limits.max_pixels });
    }
    if width == 0 || height == 0 {
        return Err(undecodable(format!("the image declares a size of {width}×{height}")));
    }
    // Deep colour (16-bit or float samples) can multiply the buffer size even under the pixel cap.
    let decode_bytes = decoder.total_bytes();
    if decode_bytes > max_decode_bytes(limits) {
        return Err(MediaError::DecodeLimit {
            format,
            detail: format!("{decode_bytes} bytes for {width}×{height} pixels of {:?}", decoder.color_type()),
        });
    }
    Ok((format, decoder))
}

/// Validates `bytes` as an image of a supported format within `limits`, decodes it completely and
/// returns its description plus a JPEG thumbnail whose longest side is at most `thumbnail_side`.
///
/// CPU-heavy (a full decode): call it from `spawn_blocking` in async code.
pub fn process_image(bytes: &[u8], limits: &ImageLimits, thumbnail_side: u32) -> Result<ProcessedImage, MediaError> {
    let (format, mut decoder) = open_decoder(bytes, limits)?;
    let undecodable = |reason: String| MediaError::Undecodable { format, reason };
    // A broken EXIF block shouldn't cost the user an otherwise good image.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);

    // For GIF this reads the first frame only.
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| classify_decode_error(e, format))?;
    image.apply_orientation(orientation);

    let thumbnail_jpeg = make_thumbnail(&image, thumbnail_side)
        .map_err(|e| undecodable(format!("the thumbnail could not be encoded: {e}")))?;
    Ok(ProcessedImage {
        info: ImageInfo { format, width: image.width(), height: image.height(), size_bytes: bytes.len() as u64 },
        thumbnail_jpeg,
    })
}

/// The `image` crate's own limits: a second line of defence in case a decoder allocates more than
/// the header suggested (e.g. intermediate buffers).
fn decoder_limits(limits: &ImageLimits) -> image::Limits {
    let max_side = u32::try_from(limits.max_pixels).unwrap_or(u32::MAX);
    let mut l = image::Limits::default();
    l.max_image_width = Some(max_side);
    l.max_image_height = Some(max_side);
    l.max_alloc = Some(max_decode_bytes(limits));
    l
}

/// Room for the largest common pixel layout (16-bit RGBA, 8 bytes a pixel) at the pixel cap, with
/// a floor so small caps don't starve decoders' fixed-size working buffers.
fn max_decode_bytes(limits: &ImageLimits) -> u64 {
    limits.max_pixels.saturating_mul(8).max(64 * 1024 * 1024)
}

fn classify_decode_error(err: ImageError, format: ImageFormat) -> MediaError {
    match err {
        // Only reachable when a decoder's own bookkeeping trips the `image::Limits` we set.
        ImageError::Limits(e) => MediaError::DecodeLimit { format, detail: e.to_string() },
        ImageError::Unsupported(e) => {
            MediaError::UnsupportedFormat { detail: format!("{format} variant not supported ({e})") }
        }
        other => MediaError::Undecodable { format, reason: other.to_string() },
    }
}

/// Names what the bytes look like, so the user learns why their file was refused.
fn describe_unsupported(bytes: &[u8]) -> String {
    match image::guess_format(bytes) {
        Ok(other) => format!("{} images are not accepted", format!("{other:?}").to_lowercase()),
        Err(_) if bytes.iter().take(512).all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()) => {
            "the content is text, not an image".to_string()
        }
        Err(_) => "the content is not a recognised image".to_string(),
    }
}

fn make_thumbnail(image: &DynamicImage, side: u32) -> Result<Vec<u8>, ImageError> {
    let side = side.clamp(1, MAX_THUMBNAIL_SIDE);
    let rgb = flatten_to_rgb(image);
    let (w, h) = rgb.dimensions();
    let rgb = if w.max(h) > side {
        let (tw, th) = fit_within(w, h, side);
        image::imageops::resize(&rgb, tw, th, FilterType::Triangle)
    } else {
        // Never upscale: the thumbnail of a small image is the image itself.
        rgb
    };
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, THUMBNAIL_QUALITY).encode_image(&rgb)?;
    Ok(out)
}

/// Scales (w, h) so the longest side is `side`, keeping the aspect ratio and at least 1 pixel.
fn fit_within(w: u32, h: u32, side: u32) -> (u32, u32) {
    let scale = |short: u32, long: u32| {
        let scaled = (u64::from(short) * u64::from(side) + u64::from(long) / 2) / u64::from(long);
        (scaled as u32).max(1)
    };
    if w >= h { (side, scale(h, w)) } else { (scale(w, h), side) }
}

/// JPEG has no alpha; composite transparent images onto white so transparent areas don't turn
/// into whatever colour the encoder happened to store behind them (often black).
fn flatten_to_rgb(image: &DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let over_white = |c: u8| ((u16::from(c) * u16::from(a) + 255 * (255 - u16::from(a)) + 127) / 255) as u8;
        image::Rgb([over_white(r), over_white(g), over_white(b)])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::{bmp::BmpEncoder, gif::GifEncoder, png::PngEncoder, tiff::TiffEncoder, webp::WebPEncoder};
    use image::{ExtendedColorType, ImageEncoder, Rgb, Rgba, RgbaImage};

    /// A gradient so encoders can't collapse the image to something trivial.
    fn sample_rgb(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8]))
    }

    fn encode(format: ImageFormat, img: &RgbImage) -> Vec<u8> {
        let (w, h) = img.dimensions();
        let mut out = Vec::new();
        match format {
            ImageFormat::Jpeg => {
                JpegEncoder::new_with_quality(&mut out, 90).write_image(img, w, h, ExtendedColorType::Rgb8).unwrap()
            }
            ImageFormat::Png => PngEncoder::new(&mut out).write_image(img, w, h, ExtendedColorType::Rgb8).unwrap(),
            ImageFormat::Tiff => {
                TiffEncoder::new(Cursor::new(&mut out)).write_image(img, w, h, ExtendedColorType::Rgb8).unwrap()
            }
            ImageFormat::Bmp => BmpEncoder::new(&mut out).write_image(img, w, h, ExtendedColorType::Rgb8).unwrap(),
            ImageFormat::Webp => {
                WebPEncoder::new_lossless(&mut out).write_image(img, w, h, ExtendedColorType::Rgb8).unwrap()
            }
            ImageFormat::Gif => {
                let rgba = DynamicImage::ImageRgb8(img.clone()).to_rgba8();
                GifEncoder::new(&mut out).encode(&rgba, w, h, ExtendedColorType::Rgba8).unwrap();
            }
        }
        out
    }

    const ALL: [ImageFormat; 6] =
        [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::Tiff, ImageFormat::Bmp, ImageFormat::Webp, ImageFormat::Gif];

    #[test]
    fn every_supported_format_is_recognised_by_content_with_its_dimensions() {
        for format in ALL {
            let bytes = encode(format, &sample_rgb(40, 30));
            assert_eq!(sniff_format(&bytes), Some(format));
            let processed = process_image(&bytes, &ImageLimits::default(), 256)
                .unwrap_or_else(|e| panic!("{format} was refused: {e}"));
            assert_eq!(
                processed.info,
                ImageInfo { format, width: 40, height: 30, size_bytes: bytes.len() as u64 },
                "{format}"
            );
            let thumb = image::load_from_memory(&processed.thumbnail_jpeg).unwrap();
            assert_eq!((thumb.width(), thumb.height()), (40, 30), "{format}: small images are not upscaled");
        }
    }

    #[test]
    fn format_names_and_mime_types() {
        assert_eq!(ImageFormat::Webp.as_str(), "webp");
        assert_eq!(ImageFormat::Jpeg.mime(), "image/jpeg");
        assert_eq!(serde_json::to_value(ImageFormat::Tiff).unwrap(), "tiff");
    }

    #[test]
    fn text_is_refused_as_unsupported() {
        let err =
            process_image(b"name,url\ncat,http://example.com/cat.jpg\n", &ImageLimits::default(), 64).unwrap_err();
        assert!(matches!(err, MediaError::UnsupportedFormat { .. }), "{err:?}");
        assert_eq!(err.status_code(), StatusCode::INPUT_UNSUPPORTED_FORMAT);
        assert_eq!(err.error_code(), "image_unsupported_format");
        assert!(err.to_string().contains("text"), "{err}");
    }

    #[test]
    fn formats_the_image_crate_knows_but_we_do_not_accept_are_refused() {
        // A valid 2×2 binary PPM and the header of an ICO file.
        let ppm = b"P6\n2 2\n255\n\xff\x00\x00\x00\xff\x00\x00\x00\xff\xff\xff\xff".to_vec();
        let ico = [0u8, 0, 1, 0, 1, 0, 16, 16, 0, 0, 1, 0, 32, 0, 0, 0, 0, 0, 22, 0, 0, 0].to_vec();
        for (name, bytes) in [("ppm", ppm), ("ico", ico)] {
            assert_eq!(sniff_format(&bytes), None, "{name}");
            let err = process_image(&bytes, &ImageLimits::default(), 64).unwrap_err();
            assert!(matches!(err, MediaError::UnsupportedFormat { .. }), "{name}: {err:?}");
            assert!(err.to_string().contains("not accepted"), "{name}: {err}");
        }
    }

    #[test]
    fn truncated_png_and_jpeg_are_undecodable() {
        for format in [ImageFormat::Png, ImageFormat::Jpeg] {
            let bytes = encode(format, &sample_rgb(200, 150));
            let half = &bytes[..bytes.len() / 2];
            let err = process_image(half, &ImageLimits::default(), 64).unwrap_err();
            assert!(matches!(err, MediaError::Undecodable { format: f, .. } if f == format), "{format}: {err:?}");
            assert_eq!(err.status_code(), StatusCode::INPUT_UNSUPPORTED_FORMAT);
            assert_eq!(err.error_code(), "image_undecodable");
        }
    }

    #[test]
    fn other_truncated_formats_are_undecodable() {
        for format in [ImageFormat::Tiff, ImageFormat::Bmp, ImageFormat::Webp, ImageFormat::Gif] {
            let bytes = encode(format, &sample_rgb(200, 150));
            let err = process_image(&bytes[..bytes.len() / 2], &ImageLimits::default(), 64).unwrap_err();
            assert!(matches!(err, MediaError::Undecodable { .. }), "{format}: {err:?}");
        }
    }

    #[test]
    fn jpeg_with_trailing_bytes_after_the_end_marker_is_accepted() {
        let mut bytes = encode(ImageFormat::Jpeg, &sample_rgb(20, 20));
        bytes.extend_from_slice(b"\0\0\r\ntrailing junk some cameras append");
        assert!(process_image(&bytes, &ImageLimits::default(), 64).is_ok());
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
        chunk.extend_from_slice(kind);
        chunk.extend_from_slice(data);
        let mut crc_input = kind.to_vec();
        crc_input.extend_from_slice(data);
        chunk.extend_from_slice(&crc32(&crc_input).to_be_bytes());
        chunk
    }

    /// A PNG that is a few dozen bytes but whose header claims a 40-gigapixel image.
    fn png_bomb(width: u32, height: u32) -> Vec<u8> {
        let mut ihdr = width.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(png_chunk(b"IHDR", &ihdr));
        // Tiny zlib stream (empty stored block): the bomb is in the header, not the data.
        png.extend(png_chunk(b"IDAT", &[0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01]));
        png.extend(png_chunk(b"IEND", &[]));
        png
    }

    #[test]
    fn crc_helper_matches_a_real_png() {
        // The encoder's IHDR chunk must carry the same CRC our helper computes.
        let real = encode(ImageFormat::Png, &sample_rgb(3, 2));
        let ihdr_data = &real[16..29];
        assert_eq!(png_chunk(b"IHDR", ihdr_data), real[8..33].to_vec());
    }

    #[test]
    fn png_declaring_huge_dimensions_is_refused_before_decoding() {
        let bomb = png_bomb(100_000, 100_000);
        let started = std::time::Instant::now();
        let err = process_image(&bomb, &ImageLimits::default(), 64).unwrap_err();
        assert_eq!(err, MediaError::TooManyPixels { width: 100_000, height: 100_000, limit: 67_108_864 });
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "took {:?}", started.elapsed());
        assert_eq!(err.to_string(), "image declares 100000×100000 pixels, more than the limit of 67108864");
        assert_eq!(err.status_code(), StatusCode::INPUT_OVER_LIMIT);
        assert_eq!(err.error_code(), "image_too_many_pixels");
    }

    #[test]
    fn pixel_limit_is_configurable() {
        let bytes = encode(ImageFormat::Png, &sample_rgb(100, 100));
        let limits = ImageLimits { max_pixels: 9_999, ..ImageLimits::default() };
        let err = process_image(&bytes, &limits, 64).unwrap_err();
        assert!(matches!(err, MediaError::TooManyPixels { width: 100, height: 100, limit: 9_999 }), "{err:?}");
        let limits = ImageLimits { max_pixels: 10_000, ..ImageLimits::default() };
        assert!(process_image(&bytes, &limits, 64).is_ok());
    }

    #[test]
    fn empty_and_oversized_files_are_refused() {
        let err = process_image(&[], &ImageLimits::default(), 64).unwrap_err();
        assert_eq!(err, MediaError::Empty);
        assert_eq!(err.status_code(), StatusCode::INPUT_INVALID_ARGUMENT);

        let bytes = encode(ImageFormat::Png, &sample_rgb(50, 50));
        let limits = ImageLimits { max_bytes: bytes.len() - 1, ..ImageLimits::default() };
        let err = process_image(&bytes, &limits, 64).unwrap_err();
        assert_eq!(err, MediaError::TooLarge { size: bytes.len() as u64, limit: bytes.len() as u64 - 1 });
        assert_eq!(err.status_code(), StatusCode::INPUT_OVER_LIMIT);
        assert_eq!(err.error_code(), "image_too_large");
    }

    #[test]
    fn thumbnail_fits_the_requested_side_and_keeps_aspect_ratio() {
        for (w, h) in [(400, 100), (90, 300)] {
            let bytes = encode(ImageFormat::Png, &sample_rgb(w, h));
            let processed = process_image(&bytes, &ImageLimits::default(), 64).unwrap();
            assert_eq!((processed.info.width, processed.info.height), (w, h));
            assert_eq!(sniff_format(&processed.thumbnail_jpeg), Some(ImageFormat::Jpeg));
            let thumb = image::load_from_memory(&processed.thumbnail_jpeg).unwrap();
            let expected = if w > h { (64, 16) } else { (19, 64) };
            assert_eq!((thumb.width(), thumb.height()), expected, "{w}×{h}");
        }
    }

    #[test]
    fn transparent_areas_become_white_in_the_thumbnail() {
        let img = RgbaImage::from_pixel(8, 8, Rgba([0, 0, 0, 0]));
        let mut bytes = Vec::new();
        PngEncoder::new(&mut bytes).write_image(&img, 8, 8, ExtendedColorType::Rgba8).unwrap();
        let processed = process_image(&bytes, &ImageLimits::default(), 64).unwrap();
        let thumb = image::load_from_memory(&processed.thumbnail_jpeg).unwrap().to_rgb8();
        assert!(thumb.get_pixel(4, 4).0.iter().all(|&c| c > 245), "{:?}", thumb.get_pixel(4, 4));
    }

    /// Inserts an APP1 EXIF segment with the given orientation tag right after SOI.
    fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec(); // big-endian TIFF header, IFD at offset 8
        tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_be_bytes()); // count
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]); // value padding
        tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
        let mut payload = b"Exif\0\0".to_vec();
        payload.extend(tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        out.extend(payload);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn exif_rotation_is_applied_to_dimensions_and_thumbnail() {
        let jpeg = with_exif_orientation(&encode(ImageFormat::Jpeg, &sample_rgb(60, 20)), 6); // rotate 90° CW
        let processed = process_image(&jpeg, &ImageLimits::default(), 256).unwrap();
        assert_eq!((processed.info.width, processed.info.height), (20, 60));
        let thumb = image::load_from_memory(&processed.thumbnail_jpeg).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (20, 60));
    }

    #[test]
    fn fit_within_keeps_at_least_one_pixel() {
        assert_eq!(fit_within(10_000, 1, 100), (100, 1));
        assert_eq!(fit_within(1, 10_000, 100), (1, 100));
        assert_eq!(fit_within(300, 200, 150), (150, 100));
    }
}
