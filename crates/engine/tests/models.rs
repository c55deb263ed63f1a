//! Every architecture builds exactly the state_dict keys and shapes of its PyTorch counterpart
//! (torchvision's full-size models and the golden fixtures), so published checkpoints load, and runs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::module::Module;
use burn::prelude::*;
use deeptune_engine::models::efficientnet::EfficientNetConfig;
use deeptune_engine::models::efficientnet_lite::EfficientNetLiteConfig;
use deeptune_engine::models::mobilenet_v2::MobileNetV2Config;
use deeptune_engine::models::resnet::{BlockKind, ResNetConfig};
use deeptune_engine::models::vit::VitConfig;
use deeptune_engine::torch::{TorchModel, state_dict_shapes};

fn fixture(path: &str) -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures")).join(path);
    assert!(p.exists(), "fixture {} is missing", p.display());
    p
}

type Shapes = BTreeMap<String, Vec<usize>>;

/// The full-size torchvision model's keys and shapes (1000 classes).
fn torchvision_shapes(name: &str) -> Shapes {
    let text = std::fs::read_to_string(fixture("torchvision_state_dict_shapes.json")).unwrap();
    let all: BTreeMap<String, Shapes> = serde_json::from_str(&text).unwrap();
    all.get(name).unwrap_or_else(|| panic!("no {name} in the shapes fixture")).clone()
}

/// Keys and shapes of a safetensors file, from its header (8-byte LE length, then JSON).
fn safetensors_shapes(path: &str) -> Shapes {
    let bytes = std::fs::read(fixture(path)).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let shape = v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            (k, shape)
        })
        .collect()
}

fn ours<M: TorchModel>(model: &M) -> Shapes {
    let list = state_dict_shapes(model);
    let n = list.len();
    let map: Shapes = list.into_iter().collect();
    assert_eq!(map.len(), n, "duplicate keys");
    map
}

fn assert_same(what: &str, ours: &Shapes, theirs: &Shapes) {
    let missing: Vec<&String> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<&String> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    let misshaped: Vec<(&String, &Vec<usize>, &Vec<usize>)> =
        ours.iter().filter_map(|(k, s)| theirs.get(k).filter(|t| *t != s).map(|t| (k, s, t))).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && misshaped.is_empty(),
        "{what}: missing {missing:?}\nextra {extra:?}\nmis-shaped (ours, theirs) {misshaped:?}"
    );
}

#[test]
fn efficientnet_b0_to_b3_match_torchvision() {
    let device = Device::flex();
    for (name, config) in [
        ("efficientnet_b0", EfficientNetConfig::b0(1000)),
        ("efficientnet_b1", EfficientNetConfig::b1(1000)),
        ("efficientnet_b2", EfficientNetConfig::b2(1000)),
        ("efficientnet_b3", EfficientNetConfig::b3(1000)),
    ] {
        let model = config.init(&device);
        assert_same(name, &ours(&model), &torchvision_shapes(name));
        assert_eq!(config.feature_dim(), torchvision_shapes(name)["classifier.1.weight"][1]);
    }
}

#[test]
fn vit_b_16_and_b_32_match_torchvision() {
    let device = Device::flex();
    for (name, config) in [("vit_b_16", VitConfig::b_16(1000)), ("vit_b_32", VitConfig::b_32(1000))] {
        assert_same(name, &ours(&config.init(&device)), &torchvision_shapes(name));
    }
}

#[test]
fn efficientnet_fixture_keys_match_and_it_runs() {
    let device = Device::flex();
    let model = EfficientNetConfig::new(0.25, 1.0, 3).init(&device);
    assert_same("efficientnet_b0_w025", &ours(&model), &safetensors_shapes("efficientnet_b0_w025/weights.safetensors"));
    let logits = model.valid().forward(Tensor::zeros([1, 3, 64, 64], &device));
    assert_eq!(logits.dims(), [1, 3]);
}

#[test]
fn vit_fixture_keys_match_and_it_runs() {
    let device = Device::flex();
    let config = VitConfig::new(32, 8, 2, 2, 32, 64, 3);
    let model = config.init(&device);
    assert_same("vit_tiny", &ours(&model), &safetensors_shapes("vit_tiny/weights.safetensors"));
    let logits = model.valid().forward(Tensor::zeros([1, 3, 32, 32], &device));
    assert_eq!(logits.dims(), [1, 3]);
}

#[test]
fn efficientnet_lite0_has_the_published_keys() {
    let device = Device::flex();
    let model = EfficientNetLiteConfig::lite0(1000).init(&device);
    let keys = ours(&model);
    let bn = |prefix: &str, c: usize, out: &mut Shapes| {
        for name in ["weight", "bias", "running_mean", "running_var"] {
            out.insert(format!("{prefix}.{name}"), vec![c]);
        }
        out.insert(format!("{prefix}.num_batches_tracked"), vec![]);
    };
    // (input, output, kernel, expand) of the 16 blocks.
    let stages = [(1, 3, 1, 32, 16), (2, 3, 6, 16, 24), (2, 5, 6, 24, 40), (3, 3, 6, 40, 80), (3, 5, 6, 80, 112)];
    let stages = stages.into_iter().chain([(4, 5, 6, 112, 192), (1, 3, 6, 192, 320)]);
    let mut expected = Shapes::new();
    expected.insert("_conv_stem.weight".into(), vec![32, 3, 3, 3]);
    bn("_bn0", 32, &mut expected);
    let mut n = 0;
    for (repeats, k, expand, input, output) in stages {
        for r in 0..repeats {
            let input = if r == 0 { input } else { output };
            let hidden = input * expand;
            let p = format!("_blocks.{n}");
            if expand != 1 {
                expected.insert(format!("{p}._expand_conv.weight"), vec![hidden, input, 1, 1]);
                bn(&format!("{p}._bn0"), hidden, &mut expected);
            }
            expected.insert(format!("{p}._depthwise_conv.weight"), vec![hidden, 1, k, k]);
            bn(&format!("{p}._bn1"), hidden, &mut expected);
            expected.insert(format!("{p}._project_conv.weight"), vec![output, hidden, 1, 1]);
            bn(&format!("{p}._bn2"), output, &mut expected);
            n += 1;
        }
    }
    assert_eq!(n, 16);
    expected.insert("_conv_head.weight".into(), vec![1280, 320, 1, 1]);
    bn("_bn1", 1280, &mut expected);
    expected.insert("_fc.weight".into(), vec![1000, 1280]);
    expected.insert("_fc.bias".into(), vec![1000]);
    assert_same("efficientnet_lite0", &keys, &expected);
    // Spot checks from the brief.
    assert_eq!(keys["_blocks.0._depthwise_conv.weight"], vec![32, 1, 3, 3]);
    assert_eq!(keys["_blocks.0._project_conv.weight"], vec![16, 32, 1, 1]);
    assert_eq!(keys["_blocks.1._expand_conv.weight"], vec![96, 16, 1, 1]);
}

#[test]
fn efficientnet_lite_runs_with_tf_same_padding() {
    let device = Device::flex();
    let model = EfficientNetLiteConfig::lite0(5).init(&device).valid();
    // Odd sizes exercise the asymmetric padding of the stride-2 convolutions.
    let logits = model.forward(Tensor::zeros([2, 3, 67, 45], &device));
    assert_eq!(logits.dims(), [2, 5]);
}

#[test]
fn train_mode_runs_on_autodiff() {
    // Stochastic depth, drop-connect and dropout only act on an autodiff device; gradients flow.
    let device = Device::flex().autodiff();
    let model = EfficientNetConfig::new(0.25, 1.0, 3).init(&device);
    let loss = model.forward(Tensor::ones([2, 3, 32, 32], &device)).sum();
    let _ = loss.backward();
    let model = EfficientNetLiteConfig::new(0.25, 0.5, 0.2, 3).init(&device);
    let loss = model.forward(Tensor::ones([2, 3, 32, 32], &device)).sum();
    let _ = loss.backward();
    let mut config = VitConfig::new(32, 8, 2, 2, 32, 64, 3);
    config.dropout = 0.1;
    config.attention_dropout = 0.1;
    let model = config.init(&device);
    let loss = model.forward(Tensor::ones([2, 3, 32, 32], &device)).sum();
    let _ = loss.backward();
}

#[test]
fn resnets_match_torchvision() {
    let device = Device::flex();
    for (name, config) in [
        ("resnet18", ResNetConfig::resnet18(1000)),
        ("resnet34", ResNetConfig::resnet34(1000)),
        ("resnet50", ResNetConfig::resnet50(1000)),
        ("resnet101", ResNetConfig::resnet101(1000)),
        ("resnet152", ResNetConfig::resnet152(1000)),
    ] {
        assert_same(name, &ours(&config.init(&device)), &torchvision_shapes(name));
    }
}

#[test]
fn mobilenet_v2_matches_torchvision() {
    let model = MobileNetV2Config::new(1.0, 1000).init(&Device::flex());
    assert_same("mobilenet_v2", &ours(&model), &torchvision_shapes("mobilenet_v2"));
}

#[test]
fn thin_fixture_configs_match_their_checkpoints() {
    let device = Device::flex();
    let resnet18 =
        ResNetConfig { block: BlockKind::Basic, layers: [2, 2, 2, 2], widths: [8, 16, 32, 64], num_classes: 3 };
    assert_same(
        "resnet18_thin",
        &ours(&resnet18.init(&device)),
        &safetensors_shapes("resnet18_thin/weights.safetensors"),
    );
    let resnet50 =
        ResNetConfig { block: BlockKind::Bottleneck, layers: [3, 4, 6, 3], widths: [8, 16, 32, 64], num_classes: 3 };
    assert_same(
        "resnet50_thin",
        &ours(&resnet50.init(&device)),
        &safetensors_shapes("resnet50_thin/weights.safetensors"),
    );
    let mobilenet = MobileNetV2Config::new(0.25, 3).init(&device);
    assert_same("mobilenet_v2_w025", &ours(&mobilenet), &safetensors_shapes("mobilenet_v2_w025/weights.safetensors"));
}
