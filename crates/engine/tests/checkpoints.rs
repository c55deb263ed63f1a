//! Checkpoint files into models: every format gives the same model, the wrong architecture and
//! bad files are refused with clear errors, fine-tuning gets a fresh head, and EfficientNet-Lite0
//! with its real ImageNet weights reproduces PyTorch's outputs on real photos.

use std::path::PathBuf;

use burn::module::Module;
use burn::prelude::*;
use deeptune_engine::models::efficientnet_lite::EfficientNetLiteConfig;
use deeptune_engine::models::resnet::{BlockKind, ResNetConfig};
use deeptune_engine::pretrained::{PretrainedError, load_backbone, load_checkpoint};
use deeptune_engine::torch::{KeysAllowedToDiffer, LoadError, to_state_dict};
use deeptune_weights::Values;

mod common;
use common::lite0_weights;

fn fixture(path: &str) -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures")).join(path);
    assert!(p.exists(), "fixture {} is missing", p.display());
    p
}

fn resnet18_thin(classes: usize) -> ResNetConfig {
    ResNetConfig { block: BlockKind::Basic, layers: [2, 2, 2, 2], widths: [8, 16, 32, 64], num_classes: classes }
}

#[test]
fn safetensors_zip_pth_and_legacy_pth_load_identical_models() {
    let device = Device::flex();
    let strict = KeysAllowedToDiffer::none();
    let mut loaded = Vec::new();
    for file in ["weights.safetensors", "weights.pth", "weights-legacy.pth"] {
        let (model, report) =
            load_checkpoint(resnet18_thin(3).init(&device), &fixture(&format!("resnet18_thin/{file}")), &strict)
                .unwrap();
        assert!(report.loaded > 50, "{file}: {report:?}");
        loaded.push(to_state_dict(&model));
    }
    for other in &loaded[1..] {
        assert_eq!(other.len(), loaded[0].len());
        for (key, tensor) in loaded[0].iter() {
            let b = other.get(key).unwrap();
            assert_eq!(tensor.shape, b.shape, "{key}");
            let (Values::Float(x), Values::Float(y)) = (&tensor.values, &b.values) else { panic!("{key}") };
            assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()), "{key} differs");
        }
    }
}

#[test]
fn a_checkpoint_for_another_architecture_is_refused_naming_keys() {
    let device = Device::flex();
    let err = load_checkpoint(
        resnet18_thin(3).init(&device),
        &fixture("resnet50_thin/weights.safetensors"),
        &KeysAllowedToDiffer::none(),
    )
    .unwrap_err();
    let PretrainedError::Fit { source: LoadError::Mismatch(message), .. } = &err else { panic!("{err}") };
    assert!(message.contains("unexpected keys") && message.contains("conv3.weight"), "{message}");
    assert!(message.contains("mis-shaped keys") && message.contains("layer1.0.conv1.weight"), "{message}");
    assert!(err.to_string().contains("resnet50_thin/weights.safetensors"), "{err}");

    // A head of another size is refused too, unless the head may differ.
    let strict = load_checkpoint(
        resnet18_thin(5).init(&device),
        &fixture("resnet18_thin/weights.safetensors"),
        &KeysAllowedToDiffer::none(),
    );
    let message = strict.unwrap_err().to_string();
    assert!(message.contains("fc.weight (model [5, 64], checkpoint [3, 64])"), "{message}");
}

#[test]
fn bad_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let whole = std::fs::read(fixture("resnet18_thin/weights.pth")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated.pth", whole[..whole.len() / 2].to_vec()),
        ("notes.pth", b"these are not weights".to_vec()),
        ("empty.safetensors", Vec::new()),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = load_checkpoint(resnet18_thin(3).init(&device), &path, &KeysAllowedToDiffer::none()).unwrap_err();
        assert!(matches!(err, PretrainedError::Read { .. }), "{name}: {err}");
        assert!(err.to_string().contains(name), "{err}");
    }
    let missing =
        load_checkpoint(resnet18_thin(3).init(&device), &dir.path().join("nope.pth"), &KeysAllowedToDiffer::none());
    assert!(missing.unwrap_err().to_string().contains("nope.pth"));
}

#[test]
fn fine_tuning_loads_the_backbone_and_gives_a_fresh_head() {
    let device = Device::flex();
    let checkpoint = fixture("resnet18_thin/weights.safetensors");
    let reference = deeptune_weights::load_file(&checkpoint).unwrap();
    device.seed(7);
    let (model, report) = load_backbone(resnet18_thin(5).init(&device), &checkpoint).unwrap();
    assert!(report.kept_fresh.contains(&"fc.weight".to_string()), "{report:?}");
    let state = to_state_dict(&model);
    assert_eq!(state.get("fc.weight").unwrap().shape, vec![5, 64]);
    assert_eq!(
        state.get("layer4.1.conv2.weight").unwrap().values,
        reference.get("layer4.1.conv2.weight").unwrap().values
    );
    // Even with as many classes as the checkpoint, the head is fresh, not the checkpoint's.
    let (same_size, _) = load_backbone(resnet18_thin(3).init(&device), &checkpoint).unwrap();
    assert_ne!(to_state_dict(&same_size).get("fc.weight").unwrap().values, reference.get("fc.weight").unwrap().values);
    let logits = model.valid().forward(Tensor::zeros([2, 3, 64, 64], &device));
    assert_eq!(logits.dims(), [2, 5]);
}

#[test]
fn efficientnet_lite0_imagenet_reproduces_pytorch_on_real_photos() {
    let device = Device::flex();
    let (model, _) = load_checkpoint(
        EfficientNetLiteConfig::lite0(1000).init(&device),
        &lite0_weights(),
        &KeysAllowedToDiffer::none(),
    )
    .unwrap();
    let io = deeptune_weights::load_file(&fixture("photos/efficientnet_lite0_io.safetensors")).unwrap();
    let input = io.get("input").unwrap();
    let x = Tensor::<4>::from_data(TensorData::new(input.as_f32().unwrap().to_vec(), input.shape.clone()), &device);
    let logits = model.valid().forward(x);
    let ours = logits.clone().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    let theirs = io.get("logits").unwrap().as_f32().unwrap();
    let diff = ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-3, "logits differ by {diff}");
    let top1: Vec<i64> = logits.argmax(1).into_data().convert::<i64>().try_into_vec::<i64>().unwrap();
    // chelsea → tiger cat, coffee → espresso, rocket → missile, astronaut → 450
    assert_eq!(top1, vec![282, 967, 657, 450]);
}
