//! Decoding stored image bytes: every accepted format, EXIF rotation, GIF's first frame, and
//! clear refusals for what can't be decoded.

use std::io::Cursor;

use deeptune_engine::data::{DecodeError, decode_rgb, decode_rgb_with_limit};
use image::codecs::{
    bmp::BmpEncoder, gif::GifEncoder, jpeg::JpegEncoder, png::PngEncoder, tiff::TiffEncoder, webp::WebPEncoder,
};
use image::{DynamicImage, ExtendedColorType, Frame, ImageEncoder, Rgb, RgbImage, Rgba, RgbaImage};

/// A gradient, so encoders can't collapse it to something trivial.
fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8]))
}

fn encode_png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    PngEncoder::new(&mut out).write_image(img, img.width(), img.height(), ExtendedColorType::Rgb8).unwrap();
    out
}

fn encode_jpeg(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 95)
        .write_image(img, img.width(), img.height(), ExtendedColorType::Rgb8)
        .unwrap();
    out
}

#[test]
fn lossless_formats_decode_to_the_exact_pixels() {
    let img = gradient(40, 30);
    let (w, h) = img.dimensions();
    let mut tiff = Vec::new();
    TiffEncoder::new(Cursor::new(&mut tiff)).write_image(&img, w, h, ExtendedColorType::Rgb8).unwrap();
    let mut bmp = Vec::new();
    BmpEncoder::new(&mut bmp).write_image(&img, w, h, ExtendedColorType::Rgb8).unwrap();
    let mut webp = Vec::new();
    WebPEncoder::new_lossless(&mut webp).write_image(&img, w, h, ExtendedColorType::Rgb8).unwrap();
    for (name, bytes) in [("png", encode_png(&img)), ("tiff", tiff), ("bmp", bmp), ("webp", webp)] {
        let decoded = decode_rgb(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(decoded == img, "{name} decoded to different pixels");
    }
}

#[test]
fn jpeg_decodes_close_to_the_original() {
    let img = gradient(64, 48);
    let decoded = decode_rgb(&encode_jpeg(&img)).unwrap();
    assert_eq!(decoded.dimensions(), (64, 48));
    let mean_error: f64 =
        decoded.iter().zip(img.iter()).map(|(&a, &b)| f64::from(a.abs_diff(b))).sum::<f64>() / img.len() as f64;
    assert!(mean_error < 3.0, "mean error {mean_error}");
}

#[test]
fn gif_gives_its_first_frame() {
    let red = RgbaImage::from_pixel(16, 12, Rgba([255, 0, 0, 255]));
    let blue = RgbaImage::from_pixel(16, 12, Rgba([0, 0, 255, 255]));
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut bytes);
        encoder.encode_frames([Frame::new(red), Frame::new(blue)]).unwrap();
    }
    let decoded = decode_rgb(&bytes).unwrap();
    assert_eq!(decoded.dimensions(), (16, 12));
    assert!(decoded.pixels().all(|p| p.0 == [255, 0, 0]), "first pixel {:?}", decoded.get_pixel(0, 0));
}

#[test]
fn alpha_is_dropped_like_pil_convert_rgb() {
    // PIL's convert("RGB") keeps the colour stored under a transparent pixel; it does not
    // composite onto white or black.
    let img = RgbaImage::from_fn(4, 4, |x, _| if x < 2 { Rgba([10, 20, 30, 0]) } else { Rgba([200, 100, 50, 128]) });
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes).write_image(&img, 4, 4, ExtendedColorType::Rgba8).unwrap();
    let decoded = decode_rgb(&bytes).unwrap();
    assert_eq!(decoded.get_pixel(0, 0).0, [10, 20, 30]);
    assert_eq!(decoded.get_pixel(3, 3).0, [200, 100, 50]);
}

/// Inserts an APP1 EXIF segment carrying only an Orientation tag right after the JPEG's SOI.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec(); // big-endian TIFF header, first IFD at offset 8
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
fn exif_orientation_rotates_the_photo_as_the_camera_meant() {
    // 60×20, dark on the left, bright on the right.
    let img = RgbImage::from_fn(60, 20, |x, _| if x < 30 { Rgb([20, 20, 20]) } else { Rgb([230, 230, 230]) });
    let plain = decode_rgb(&encode_jpeg(&img)).unwrap();
    assert_eq!(plain.dimensions(), (60, 20));

    // Orientation 6: the stored image must be turned 90° clockwise to display, so the left
    // (dark) half ends up on top.
    let rotated = decode_rgb(&with_exif_orientation(&encode_jpeg(&img), 6)).unwrap();
    assert_eq!(rotated.dimensions(), (20, 60));
    assert!(rotated.get_pixel(10, 5).0[0] < 60, "top is {:?}", rotated.get_pixel(10, 5));
    assert!(rotated.get_pixel(10, 55).0[0] > 190, "bottom is {:?}", rotated.get_pixel(10, 55));
}

#[test]
fn undecodable_bytes_are_refused_with_a_reason() {
    assert_eq!(decode_rgb(&[]), Err(DecodeError::Empty));

    let err = decode_rgb(b"id,label\ncat,1\n").unwrap_err();
    assert!(matches!(err, DecodeError::UnsupportedFormat { .. }), "{err:?}");
    assert!(err.to_string().contains("not a JPEG, PNG"), "{err}");

    let png = encode_png(&gradient(200, 150));
    let err = decode_rgb(&png[..png.len() / 2]).unwrap_err();
    assert!(matches!(err, DecodeError::Corrupt { format: "png", .. }), "{err:?}");

    // The JPEG decoder would fill a cut-off scan with grey; a half-written photo is refused.
    let jpeg = encode_jpeg(&gradient(200, 150));
    let err = decode_rgb(&jpeg[..jpeg.len() * 2 / 3]).unwrap_err();
    assert!(matches!(err, DecodeError::Corrupt { format: "jpeg", .. }), "{err:?}");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn images_over_the_pixel_limit_are_refused_from_their_header() {
    let png = encode_png(&gradient(100, 100));
    let err = decode_rgb_with_limit(&png, 9_999).unwrap_err();
    assert_eq!(err, DecodeError::TooManyPixels { width: 100, height: 100, limit: 9_999 });
    assert_eq!(err.to_string(), "image declares 100×100 pixels, more than the limit of 9999");
    assert!(decode_rgb_with_limit(&png, 10_000).is_ok());
}

#[test]
fn a_grey_image_becomes_three_equal_channels() {
    let grey = DynamicImage::ImageLuma8(image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 30 + y) as u8])));
    let mut bytes = Vec::new();
    grey.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    let decoded = decode_rgb(&bytes).unwrap();
    assert_eq!(decoded.get_pixel(3, 2).0, [92, 92, 92]);
}
