//! Parity with PyTorch on the golden fixtures (../shared/fixtures, see its README): eval logits,
//! train-mode logits and loss, every gradient, BatchNorm running statistics after one train-mode
//! forward, and parameters after one SGD and one AdamW step.

use std::path::PathBuf;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use deeptune_engine::models::ImageClassifier;
use deeptune_engine::models::efficientnet::EfficientNetConfig;
use deeptune_engine::models::mobilenet_v2::MobileNetV2Config;
use deeptune_engine::models::resnet::{BlockKind, ResNetConfig};
use deeptune_engine::models::vit::VitConfig;
use deeptune_engine::torch::{
    KeysAllowedToDiffer, gradients_from_state_dict, load_state_dict, named_gradients, to_state_dict,
};
use deeptune_engine::train::optim::{FusedAdamW, FusedSgd};
use deeptune_weights::{HostTensor, StateDict, Values};

fn fixture(path: &str) -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures")).join(path);
    assert!(p.exists(), "fixture {} is missing", p.display());
    p
}

fn floats(t: &HostTensor) -> Vec<f32> {
    match &t.values {
        Values::Float(v) => v.clone(),
        Values::Int(v) => v.iter().map(|&x| x as f32).collect(),
    }
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

/// Largest absolute difference, and the reference's largest magnitude.
fn compare(ours: &[f32], theirs: &[f32]) -> (f32, f32) {
    assert_eq!(ours.len(), theirs.len(), "length differs");
    let diff = ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let scale = theirs.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
    (diff, scale)
}

fn assert_close(what: &str, ours: &[f32], theirs: &[f32], tol: f32) {
    let (diff, scale) = compare(ours, theirs);
    assert!(diff <= tol || diff <= tol * scale, "{what}: max |diff| {diff:e} (reference magnitude {scale:e})");
}

/// Relative to the tensor's largest magnitude. Some gradients are exactly zero in exact
/// arithmetic (a bias followed by a train-mode BatchNorm, whose mean subtraction cancels it), and
/// both sides then hold only the rounding noise of a sum over the batch (~1e-6), so differences
/// below 1e-5 — 1e-4 of these models' typical gradient scale — pass whatever the tensor's scale.
fn assert_close_relative(what: &str, ours: &[f32], theirs: &[f32], tol: f32) {
    let (diff, scale) = compare(ours, theirs);
    assert!(diff <= tol * scale || diff <= 1e-5, "{what}: max |diff| {diff:e} > {tol} × {scale:e}");
}

struct Fixture {
    weights: StateDict,
    io: StateDict,
}

impl Fixture {
    fn load(name: &str) -> Fixture {
        Fixture {
            weights: deeptune_weights::load_file(&fixture(&format!("{name}/weights.safetensors"))).unwrap(),
            io: deeptune_weights::load_file(&fixture(&format!("{name}/io.safetensors"))).unwrap(),
        }
    }

    fn input(&self, device: &Device) -> Tensor<4> {
        let x = self.io.get("x").unwrap();
        Tensor::from_data(TensorData::new(floats(x), x.shape.clone()), device)
    }

    fn labels(&self, device: &Device) -> Tensor<1, Int> {
        let y = self.io.get("labels").unwrap();
        let values: Vec<i64> = match &y.values {
            Values::Int(v) => v.clone(),
            Values::Float(v) => v.iter().map(|&x| x as i64).collect(),
        };
        Tensor::from_data(TensorData::new(values, y.shape.clone()), device)
    }

    fn expect(&self, key: &str) -> Vec<f32> {
        floats(self.io.get(key).unwrap_or_else(|| panic!("io.safetensors has no {key}")))
    }

    /// Compares every `prefix.<key>` tensor of the fixture with `ours[<key>]`.
    fn compare_all(&self, prefix: &str, ours: &StateDict, tol: f32, relative: bool) -> usize {
        let mut checked = 0;
        for key in self.io.keys() {
            let Some(name) = key.strip_prefix(prefix) else { continue };
            let mine = ours.get(name).unwrap_or_else(|| panic!("{prefix}{name}: our model has no {name}"));
            let theirs = self.io.get(key).unwrap();
            assert_eq!(mine.shape, theirs.shape, "{key}: shape");
            if relative {
                assert_close_relative(key, &floats(mine), &floats(theirs), tol);
            } else {
                assert_close(key, &floats(mine), &floats(theirs), tol);
            }
            checked += 1;
        }
        assert!(checked > 0, "no {prefix}* tensors in the fixture");
        checked
    }
}

/// How strictly gradients are compared.
#[derive(Clone, Copy)]
enum Gradients {
    /// Every gradient within 1e-3 of the tensor's largest magnitude.
    Strict,
    /// Strict for the parameters under these prefixes; within `loose` for the rest. For
    /// resnet50_thin: its randomised BatchNorm statistics make the early layers' gradients
    /// chaotic — moving a seventh of the input pixels by 1e-5 changes them by up to 100% — so
    /// float32 rounding (ours or PyTorch's) flips ReLU masks and no implementation reproduces
    /// PyTorch's values there to 1e-3. The layers after the chaotic zone are held to 1e-3.
    StrictFrom { prefixes: &'static [&'static str], loose: f32 },
    /// Every gradient within `tol` (> 1e-3) of the tensor's largest magnitude. For
    /// mobilenet_v2_w025, 7 of 141 gradient tensors differ by 1.1e-3 to 2.5e-3 while the logits,
    /// loss and classifier gradients agree to 3e-5. Cause, measured: pre-activations within
    /// float32 rounding of a ReLU6 kink (one of features.18's is -1.6e-5) fall on the other side
    /// of it than in PyTorch, which moves that channel's gradient by one sample's share.
    Within(f32),
}

fn check_parity<M: ImageClassifier + Clone>(name: &str, gradients: Gradients, build: impl Fn(&Device) -> M) {
    let fx = Fixture::load(name);
    let strict = KeysAllowedToDiffer::none();

    // Eval mode.
    let device = Device::flex();
    let (model, report) = load_state_dict(build(&device), &fx.weights, &strict).unwrap();
    assert!(report.loaded > 0);
    let logits = host(model.valid().forward(fx.input(&device)));
    assert_close(&format!("{name} eval logits"), &logits, &fx.expect("eval_logits"), 1e-4);

    // Train mode: logits, loss, running statistics, gradients.
    let ad = Device::flex().autodiff();
    let fresh = || load_state_dict(build(&ad), &fx.weights, &strict).unwrap().0;
    let model = fresh();
    let logits = model.forward(fx.input(&ad));
    assert_close(&format!("{name} train logits"), &host(logits.clone()), &fx.expect("train_logits"), 1e-4);
    let loss = CrossEntropyLossConfig::new().init(&ad).forward(logits, fx.labels(&ad));
    let loss_value = loss.clone().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    assert_close(&format!("{name} train loss"), &loss_value, &fx.expect("train_loss"), 1e-4);
    let has_batch_norm = fx.io.keys().any(|k| k.starts_with("after_train_forward."));
    if has_batch_norm {
        fx.compare_all("after_train_forward.", &to_state_dict(&model), 1e-5, false);
    }
    let grads = loss.backward();
    let ours = named_gradients(&model, &grads);
    match gradients {
        Gradients::Strict => {
            fx.compare_all("grad.", &ours, 1e-3, true);
        }
        Gradients::Within(tol) => {
            fx.compare_all("grad.", &ours, tol, true);
        }
        Gradients::StrictFrom { prefixes, loose } => {
            let (strict_part, loose_part): (StateDict, StateDict) = {
                let mut a = StateDict::new();
                let mut b = StateDict::new();
                for (k, t) in ours.iter() {
                    if prefixes.iter().any(|p| k.starts_with(p)) {
                        a.insert(k.clone(), t.clone());
                    } else {
                        b.insert(k.clone(), t.clone());
                    }
                }
                (a, b)
            };
            for (part, tol) in [(&strict_part, 1e-3), (&loose_part, loose)] {
                for (key, mine) in part.iter() {
                    let theirs = fx.io.get(&format!("grad.{key}")).unwrap_or_else(|| panic!("no grad.{key}"));
                    assert_close_relative(&format!("grad.{key}"), &floats(mine), &floats(theirs), tol);
                }
            }
            assert!(!strict_part.is_empty());
        }
    }

    drop(grads);

    // The optimizers themselves, from PyTorch's own gradients: parameters after one SGD and one
    // AdamW step. (AdamW's first step is lr·g/(|g|+eps): for gradients near eps it magnifies any
    // difference in g, so it is checked from identical gradients.)
    let torch_grads: StateDict =
        fx.io.iter().filter_map(|(k, t)| k.strip_prefix("grad.").map(|n| (n.to_string(), t.clone()))).collect();
    let model = fresh();
    let grads = gradients_from_state_dict(&model, &torch_grads, &device);
    let stepped = sgd().step(0.1, model, grads);
    fx.compare_all("after_sgd.", &to_state_dict(&stepped), 1e-5, false);
    let model = fresh();
    let grads = gradients_from_state_dict(&model, &torch_grads, &device);
    let mut adamw = FusedAdamW { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8, weight_decay: 0.01 }.init();
    let stepped = adamw.step(1e-3, model, grads);
    fx.compare_all("after_adamw.", &to_state_dict(&stepped), 1e-5, false);
}

/// torch.optim.SGD(lr, momentum=0.9, weight_decay=1e-4): burn's momentum dampening defaults to
/// 0.1, PyTorch's to 0.
fn sgd() -> burn::optim::ModuleOptimizer {
    FusedSgd { weight_decay: Some(1e-4), momentum: Some((0.9, 0.0, false)) }.init()
}

#[test]
fn resnet18_thin_matches_pytorch() {
    check_parity("resnet18_thin", Gradients::Strict, |d| {
        ResNetConfig { block: BlockKind::Basic, layers: [2, 2, 2, 2], widths: [8, 16, 32, 64], num_classes: 3 }.init(d)
    });
}

#[test]
fn resnet50_thin_matches_pytorch() {
    let gradients = Gradients::StrictFrom { prefixes: &["fc.", "layer4.", "layer3.", "layer2.3."], loose: 5e-2 };
    check_parity("resnet50_thin", gradients, |d| {
        ResNetConfig { block: BlockKind::Bottleneck, layers: [3, 4, 6, 3], widths: [8, 16, 32, 64], num_classes: 3 }
            .init(d)
    });
}

#[test]
fn mobilenet_v2_matches_pytorch() {
    check_parity("mobilenet_v2_w025", Gradients::Within(3e-3), |d| {
        let mut config = MobileNetV2Config::new(0.25, 3);
        config.dropout = 0.0;
        config.init(d)
    });
}

#[test]
fn efficientnet_b0_matches_pytorch() {
    check_parity("efficientnet_b0_w025", Gradients::Strict, |d| {
        let mut config = EfficientNetConfig::new(0.25, 1.0, 3);
        config.dropout = 0.0;
        config.stochastic_depth_prob = 0.0;
        config.init(d)
    });
}

#[test]
fn vit_matches_pytorch() {
    check_parity("vit_tiny", Gradients::Strict, |d| VitConfig::new(32, 8, 2, 2, 32, 64, 3).init(d));
}
