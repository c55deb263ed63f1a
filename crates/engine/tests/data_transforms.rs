//! The image transforms against torchvision's own output on real photos, and the behaviour of the
//! training augmentations.

use deeptune_engine::data::{
    AugmentOp, EvalTransform, FlipDirection, LongEdge, Normalization, RandAugment, Region, TrainTransform, decode_rgb,
    random_resized_crop, resize_bilinear,
};
use image::{Rgb, RgbImage};
use rand::SeedableRng;
use rand::rngs::StdRng;

const PHOTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/photos/");
const NAMES: [&str; 4] = ["chelsea", "coffee", "rocket", "astronaut"];

fn photo(name: &str) -> RgbImage {
    decode_rgb(&std::fs::read(format!("{PHOTOS}{name}.png")).unwrap()).unwrap()
}

fn differences(ours: &[f32], expected: &[f32]) -> (f64, f64) {
    assert_eq!(ours.len(), expected.len());
    let abs = ours.iter().zip(expected).map(|(&a, &b)| f64::from((a - b).abs()));
    let (sum, max) = abs.fold((0.0, 0.0f64), |(s, m), d| (s + d, m.max(d)));
    (sum / ours.len() as f64, max)
}

#[test]
fn eval_transform_matches_torchvision_on_real_photos() {
    let expected =
        deeptune_weights::load_file(format!("{PHOTOS}imagenet_eval_preprocessed.safetensors").as_ref()).unwrap();
    let transform = EvalTransform::new(224, Normalization::ImageNet);
    assert_eq!(transform.resize, 256);
    for name in NAMES {
        let ours = transform.apply(&photo(name));
        let tensor = expected.get(&format!("imagenet_eval.{name}")).unwrap();
        assert_eq!(tensor.shape, [3, 224, 224]);
        let (mean, max) = differences(&ours, tensor.as_f32().unwrap());
        println!("imagenet eval {name}: mean abs diff {mean:.2e}, max {max:.2e}");
        assert!(mean < 0.02, "{name}: mean abs diff {mean}");
        // The resampler is a port of Pillow's, so the pixels are the same, not merely close.
        assert!(max < 1e-5, "{name}: max abs diff {max}");
    }
}

#[test]
fn efficientnet_lite_preprocessing_matches_its_reference() {
    let io = deeptune_weights::load_file(format!("{PHOTOS}efficientnet_lite0_io.safetensors").as_ref()).unwrap();
    let input = io.get("input").unwrap();
    assert_eq!(input.shape, [4, 3, 224, 224]);
    let expected = input.as_f32().unwrap();
    let transform = EvalTransform::new(224, Normalization::MinusOneToOne127);
    // Its reference rounds the long edge (451×300 → 385×256) where torchvision truncates (384).
    assert_eq!(transform.long_edge, LongEdge::Round);
    let per_image = 3 * 224 * 224;
    for (i, name) in NAMES.into_iter().enumerate() {
        let ours = transform.apply(&photo(name));
        let (mean, max) = differences(&ours, &expected[i * per_image..(i + 1) * per_image]);
        println!("efficientnet-lite {name}: mean abs diff {mean:.2e}, max {max:.2e}");
        assert!(mean < 0.02, "{name}: mean abs diff {mean}");
        assert!(max < 1e-5, "{name}: max abs diff {max}");
    }
}

#[test]
fn normalizations_map_pixel_values_as_documented() {
    assert!((Normalization::ImageNet.apply(255, 0) - (1.0 - 0.485) / 0.229).abs() < 1e-6);
    assert!((Normalization::ImageNet.apply(0, 2) - (-0.406 / 0.225)).abs() < 1e-6);
    assert_eq!(Normalization::MinusOneToOne127.apply(127, 1), 0.0);
    assert_eq!(Normalization::MinusOneToOne127.apply(255, 1), 1.0);
    assert_eq!(serde_json::to_string(&Normalization::ImageNet).unwrap(), "\"imagenet\"");
}

#[test]
fn eval_crop_of_an_image_smaller_than_the_crop_is_padded_with_black() {
    // Resize 20 → short edge 20 (no-op), crop 24: torchvision pads 2 pixels of 0 on each side.
    let transform = EvalTransform { size: 24, resize: 20, ..EvalTransform::new(24, Normalization::MinusOneToOne127) };
    let out = transform.apply(&RgbImage::from_pixel(20, 20, Rgb([255, 255, 255])));
    assert_eq!(out.len(), 3 * 24 * 24);
    assert_eq!(out[0], -127.0 / 128.0, "corner is padding");
    assert_eq!(out[2 * 24 + 2], 1.0, "image starts 2 pixels in");
    assert_eq!(out[21 * 24 + 21], 1.0);
    assert_eq!(out[22 * 24 + 22], -127.0 / 128.0);
}

#[test]
fn resize_keeps_a_flat_colour_and_averages_when_shrinking() {
    let flat = RgbImage::from_pixel(37, 23, Rgb([90, 140, 200]));
    let small = resize_bilinear(&flat, Region::whole(&flat), 11, 7);
    assert!(small.pixels().all(|p| p.0 == [90, 140, 200]));
    // A fine black/white checkerboard shrunk 8× becomes mid-grey (antialiasing), not aliased.
    let checker = RgbImage::from_fn(64, 64, |x, y| if (x + y) % 2 == 0 { Rgb([0; 3]) } else { Rgb([255; 3]) });
    let small = resize_bilinear(&checker, Region::whole(&checker), 8, 8);
    assert!(small.pixels().all(|p| (120..=135).contains(&p.0[0])), "{:?}", small.get_pixel(3, 3));
}

#[test]
fn random_resized_crop_gives_the_requested_size_and_crops_within_its_ranges() {
    let image = photo("chelsea");
    let transform = TrainTransform::new(96, Normalization::ImageNet);
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..20 {
        assert_eq!(transform.augment(&image, &mut rng).dimensions(), (96, 96));
        assert_eq!(transform.apply(&image, &mut rng).len(), 3 * 96 * 96);
    }
    let (w, h) = image.dimensions();
    for _ in 0..500 {
        let r = random_resized_crop(w, h, (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0), &mut rng);
        assert!(r.left + r.width <= w && r.top + r.height <= h, "{r:?}");
        let area = f64::from(r.width * r.height) / f64::from(w * h);
        assert!((0.075..=1.0).contains(&area), "{r:?}: area {area}");
        let ratio = f64::from(r.width) / f64::from(r.height);
        assert!((0.7..=1.4).contains(&ratio), "{r:?}: ratio {ratio}");
    }
    // A panorama far outside the ratio range: every try fails and the fallback is a centred crop
    // of the widest allowed ratio.
    let r = random_resized_crop(1000, 10, (0.9, 1.0), (3.0 / 4.0, 4.0 / 3.0), &mut rng);
    assert_eq!(r, Region { left: 493, top: 0, width: 13, height: 10 });
}

/// 32×32, no two pixels alike, so any flip or shift shows.
fn asymmetric() -> RgbImage {
    RgbImage::from_fn(32, 32, |x, y| Rgb([(x * 8) as u8, (y * 8) as u8, ((x * 3 + y * 5) % 256) as u8]))
}

/// The whole image at its own size: the crop and resize are exact copies.
fn whole_image(flip: FlipDirection, flip_probability: f32) -> TrainTransform {
    TrainTransform {
        scale: (1.0, 1.0),
        ratio: (1.0, 1.0),
        flip,
        flip_probability,
        ..TrainTransform::new(32, Normalization::ImageNet)
    }
}

#[test]
fn flips_mirror_the_image() {
    let image = asymmetric();
    let mut rng = StdRng::seed_from_u64(1);
    assert!(whole_image(FlipDirection::Horizontal, 0.0).augment(&image, &mut rng) == image);
    let mirrored = whole_image(FlipDirection::Horizontal, 1.0).augment(&image, &mut rng);
    assert_eq!(mirrored.get_pixel(0, 5), image.get_pixel(31, 5));
    assert!(mirrored == image::imageops::flip_horizontal(&image));
    let upside_down = whole_image(FlipDirection::Vertical, 1.0).augment(&image, &mut rng);
    assert!(upside_down == image::imageops::flip_vertical(&image));
    let both = whole_image(FlipDirection::Both, 1.0).augment(&image, &mut rng);
    assert!(both == image::imageops::rotate180(&image));

    // At p = 0.5 about half the images are mirrored.
    let flipped =
        (0..400).filter(|_| whole_image(FlipDirection::Horizontal, 0.5).augment(&image, &mut rng) != image).count();
    assert!((150..250).contains(&flipped), "{flipped} of 400 flipped");
}

#[test]
fn augment_ops_at_level_zero_leave_the_image_alone() {
    let image = asymmetric();
    for op in AugmentOp::ALL {
        let out = op.apply(image.clone(), 0.0);
        match op {
            // These have no strength: they always act.
            AugmentOp::AutoContrast | AugmentOp::Equalize => assert_eq!(out.dimensions(), image.dimensions()),
            _ => assert!(out == image, "{op:?} changed the image at level 0"),
        }
    }
}

#[test]
fn augment_ops_at_full_strength_change_the_image() {
    let image = photo("coffee");
    let image = resize_bilinear(&image, Region::whole(&image), 64, 48);
    for op in AugmentOp::ALL.into_iter().filter(|&op| op != AugmentOp::Identity) {
        for level in [1.0, -1.0] {
            let out = op.apply(image.clone(), level);
            assert_eq!(out.dimensions(), image.dimensions(), "{op:?}");
            assert!(out != image, "{op:?} at {level} left the image unchanged");
        }
    }
    // Directions are as named: brighter for +, darker for −; translate moves content right.
    let mean = |img: &RgbImage| img.iter().map(|&v| f64::from(v)).sum::<f64>() / img.len() as f64;
    assert!(mean(&AugmentOp::Brightness.apply(image.clone(), 0.5)) > mean(&image));
    assert!(mean(&AugmentOp::Brightness.apply(image.clone(), -0.5)) < mean(&image));
    let shifted = AugmentOp::TranslateX.apply(image.clone(), 0.5);
    let shift = (150.0 / 331.0 * 64.0 * 0.5f64) as u32;
    assert_eq!(shifted.get_pixel(shift + 3, 10), image.get_pixel(3, 10));
    assert_eq!(shifted.get_pixel(0, 10).0, [0, 0, 0], "uncovered area is black");
}

#[test]
fn rand_augment_at_magnitude_zero_only_applies_strengthless_ops() {
    let image = asymmetric();
    let autocontrast = AugmentOp::AutoContrast.apply(image.clone(), 0.0);
    let equalize = AugmentOp::Equalize.apply(image.clone(), 0.0);
    let rand_augment = RandAugment { num_ops: 1, magnitude: 0.0, magnitude_std: 0.0 };
    let mut rng = StdRng::seed_from_u64(3);
    let mut unchanged = 0;
    for _ in 0..200 {
        let out = rand_augment.apply(image.clone(), &mut rng);
        assert!(out == image || out == autocontrast || out == equalize);
        unchanged += usize::from(out == image);
    }
    // 12 of the 14 operations are no-ops at magnitude 0.
    assert!(unchanged > 140, "{unchanged} of 200 unchanged");
}

#[test]
fn the_same_seed_gives_the_same_augmentation() {
    let image = photo("rocket");
    let transform = TrainTransform {
        rand_augment: Some(RandAugment::default()),
        flip: FlipDirection::Both,
        ..TrainTransform::new(64, Normalization::ImageNet)
    };
    let run = |seed| transform.apply(&image, &mut StdRng::seed_from_u64(seed));
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12));
}
