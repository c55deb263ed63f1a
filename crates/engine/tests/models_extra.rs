//! EfficientNet, EfficientNet-Lite and ViT build exactly the state_dict keys and shapes of their
//! PyTorch counterparts (torchvision's full-size models and the golden fixtures), and run.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::module::Module;
use burn::prelude::*;
use deeptune_engine::models::efficientnet::EfficientNetConfig;
use deeptune_engine::models::efficientnet_lite::EfficientNetLiteConfig;
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

/// Eval-mode and train-mode logits, the loss and every gradient of a fixture model equal PyTorch's
/// (logits within 1e-4, gradients within 1e-3 of each tensor's magnitude).
fn check_fixture<M: TorchModel + Module>(
    name: &str,
    build: impl Fn(&Device) -> M,
    forward: impl Fn(&M, Tensor<4>) -> Tensor<2>,
) {
    use burn::nn::loss::CrossEntropyLossConfig;
    use deeptune_engine::torch::{KeysAllowedToDiffer, load_state_dict, named_gradients};
    use deeptune_weights::{HostTensor, Values};
    let floats = |t: &HostTensor| -> Vec<f32> {
        match &t.values {
            Values::Float(v) => v.clone(),
            Values::Int(v) => v.iter().map(|&x| x as f32).collect(),
        }
    };
    let compare = |what: &str, ours: &[f32], theirs: &[f32], tol: f32, relative: bool| {
        assert_eq!(ours.len(), theirs.len(), "{what}: length");
        let diff = ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let scale = theirs.iter().map(|v| v.abs()).fold(0f32, f32::max);
        // Gradients: relative to the tensor's magnitude, with an absolute floor of 1e-5 for those
        // that are zero up to rounding (a BatchNorm bias whose output feeds a train-mode BatchNorm
        // through a 1×1 convolution has a true gradient of exactly 0).
        let ok = if relative { diff <= tol * scale || diff <= 1e-5 } else { diff <= tol || diff <= tol * scale };
        assert!(ok, "{name} {what}: max |diff| {diff:e} (magnitude {scale:e})");
        println!("{name} {what}: max |diff| {diff:e}, magnitude {scale:e}");
    };
    let weights = deeptune_weights::load_file(&fixture(&format!("{name}/weights.safetensors"))).unwrap();
    let io = deeptune_weights::load_file(&fixture(&format!("{name}/io.safetensors"))).unwrap();
    let x = io.get("x").unwrap();
    let input = |device: &Device| Tensor::<4>::from_data(TensorData::new(floats(x), x.shape.clone()), device);

    let device = Device::flex();
    let (model, _) = load_state_dict(build(&device), &weights, &KeysAllowedToDiffer::none()).unwrap();
    let logits = forward(&model.valid(), input(&device)).into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    compare("eval_logits", &logits, &floats(io.get("eval_logits").unwrap()), 1e-4, false);

    let device = Device::flex().autodiff();
    let (model, _) = load_state_dict(build(&device), &weights, &KeysAllowedToDiffer::none()).unwrap();
    let logits = forward(&model, input(&device));
    let host = logits.clone().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    compare("train_logits", &host, &floats(io.get("train_logits").unwrap()), 1e-4, false);
    let y = io.get("labels").unwrap();
    let labels: Vec<i64> = floats(y).iter().map(|&v| v as i64).collect();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, y.shape.clone()), &device);
    let loss = CrossEntropyLossConfig::new().init(&device).forward(logits, labels);
    let loss_value = loss.clone().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    compare("train_loss", &loss_value, &floats(io.get("train_loss").unwrap()), 1e-4, false);
    let grads = named_gradients(&model, &loss.backward());
    let mut checked = 0;
    for key in io.keys() {
        let Some(param) = key.strip_prefix("grad.") else { continue };
        let ours = grads.get(param).unwrap_or_else(|| panic!("{name}: no gradient for {param}"));
        let theirs = io.get(key).unwrap();
        assert_eq!(ours.shape, theirs.shape, "{key}");
        compare(key, &floats(ours), &floats(theirs), 1e-3, true);
        checked += 1;
    }
    assert!(checked > 0);
}

#[test]
fn efficientnet_fixture_logits_and_gradients_match_pytorch() {
    check_fixture(
        "efficientnet_b0_w025",
        |d| {
            let mut config = EfficientNetConfig::new(0.25, 1.0, 3);
            config.dropout = 0.0;
            config.stochastic_depth_prob = 0.0;
            config.init(d)
        },
        |m, x| m.forward(x),
    );
}

#[test]
fn vit_fixture_logits_and_gradients_match_pytorch() {
    check_fixture("vit_tiny", |d| VitConfig::new(32, 8, 2, 2, 32, 64, 3).init(d), |m, x| m.forward(x));
}
