//! Training templates: an architecture, its pretrained-weights options and every hyperparameter
//! with its type, default, range and description — what `GET .../models/types` lists and what a
//! training request is validated against before anything is queued.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

/// The type and allowed values of a hyperparameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ParamKind {
    Int { min: i64, max: i64 },
    Float { min: f64, max: f64 },
    Choice { options: Vec<String> },
    Bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ParamSpec {
    pub name: String,
    #[serde(flatten)]
    pub kind: ParamKind,
    #[schema(value_type = Object)]
    pub default: Value,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Template {
    pub id: String,
    /// Other names the template answers to (Clarifai's template names).
    pub aliases: Vec<String>,
    pub description: String,
    pub recommended: bool,
    /// The engine architecture (`resnet50`, `efficientnet_lite0`, ...).
    pub architecture: String,
    pub pretrained_weights: Vec<String>,
    pub params: Vec<ParamSpec>,
}

/// One reason a parameter set was refused, naming the field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ParamError {
    pub field: String,
    pub reason: String,
}

fn int(name: &str, default: i64, min: i64, max: i64, description: &str) -> ParamSpec {
    ParamSpec {
        name: name.into(),
        kind: ParamKind::Int { min, max },
        default: json!(default),
        description: description.into(),
    }
}

fn float(name: &str, default: f64, min: f64, max: f64, description: &str) -> ParamSpec {
    ParamSpec {
        name: name.into(),
        kind: ParamKind::Float { min, max },
        default: json!(default),
        description: description.into(),
    }
}

fn choice(name: &str, default: &str, options: &[&str], description: &str) -> ParamSpec {
    ParamSpec {
        name: name.into(),
        kind: ParamKind::Choice { options: options.iter().map(|s| s.to_string()).collect() },
        default: json!(default),
        description: description.into(),
    }
}

fn boolean(name: &str, default: bool, description: &str) -> ParamSpec {
    ParamSpec { name: name.into(), kind: ParamKind::Bool, default: json!(default), description: description.into() }
}

/// Defaults that differ between templates.
struct Recipe {
    image_size: i64,
    batch_size: i64,
    num_epochs: i64,
    optimizer: &'static str,
    per_item_lrate: f64,
    per_item_min_lrate: f64,
    weight_decay: f64,
    warmup_iters: i64,
    warmup_ratio: f64,
    label_smoothing: f64,
    rand_augment_magnitude: f64,
    freeze_backbone: bool,
}

fn params(r: &Recipe) -> Vec<ParamSpec> {
    vec![
        int("image_size", r.image_size, 32, 1024, "Images are resized and cropped to this many pixels a side."),
        int("batch_size", r.batch_size, 1, 256, "Images per optimizer step. The learning rate scales with it."),
        int("num_epochs", r.num_epochs, 1, 600, "Passes over the training split."),
        choice("optimizer", r.optimizer, &["sgd", "adamw", "lamb"], "SGD (momentum 0.9, Nesterov), AdamW or LAMB."),
        float(
            "per_item_lrate",
            r.per_item_lrate,
            0.0,
            1.0,
            "Learning rate per image: the step's rate is batch_size × per_item_lrate (Clarifai's convention).",
        ),
        float("per_item_min_lrate", r.per_item_min_lrate, 0.0, 1.0, "Rate per image at the end of the cosine decay."),
        float("weight_decay", r.weight_decay, 0.0, 1.0, "Weight decay; never applied to norm layers and biases."),
        int("warmup_iters", r.warmup_iters, 0, 100_000, "Steps of linear warm-up before the cosine decay."),
        float("warmup_ratio", r.warmup_ratio, 0.0, 1.0, "The warm-up starts at this fraction of the full rate."),
        float("label_smoothing", r.label_smoothing, 0.0, 0.5, "Share of each target spread over all concepts."),
        float("flip_probability", 0.5, 0.0, 1.0, "Chance that a training image is flipped."),
        choice("flip_direction", "horizontal", &["horizontal", "vertical", "both"], "Which way flips go."),
        float(
            "rand_augment_magnitude",
            r.rand_augment_magnitude,
            0.0,
            10.0,
            "Strength (0–10) of two RandAugment operations per training image; 0 turns RandAugment off.",
        ),
        boolean(
            "concepts_mutually_exclusive",
            false,
            "True when each image shows exactly one concept (softmax); false for independent concepts (sigmoid).",
        ),
        boolean(
            "freeze_backbone",
            r.freeze_backbone,
            "Train only a new classification head on top of the frozen pretrained network.",
        ),
        choice(
            "pretrained_weights",
            "ImageNet-1k",
            &["ImageNet-1k", "None"],
            "Start from ImageNet-1k weights, or from scratch.",
        ),
        int(
            "seed",
            -1,
            -1,
            i64::from(u32::MAX),
            "Seed of initialisation, shuffling and augmentation; −1 picks one at random.",
        ),
        choice(
            "precision",
            "float32",
            &["float32", "bfloat16"],
            "bfloat16: the convolutions multiply in bfloat16 with float32 sums, about twice as fast on CPUs with AVX-512-BF16 (weights stay float32); elsewhere training runs in float32 and its log says so.",
        ),
        float(
            "invalid_data_tolerance_percent",
            5.0,
            0.0,
            100.0,
            "Training stops if more than this share of the dataset's images cannot be read.",
        ),
    ]
}

/// The templates of the visual-classifier model type, recommended first.
pub fn visual_classifier_templates() -> Vec<Template> {
    let fine_tune = Recipe {
        image_size: 224,
        batch_size: 32,
        num_epochs: 10,
        optimizer: "adamw",
        per_item_lrate: 3.125e-5,
        per_item_min_lrate: 3.125e-8,
        weight_decay: 0.01,
        warmup_iters: 50,
        warmup_ratio: 0.01,
        label_smoothing: 0.1,
        rand_augment_magnitude: 5.0,
        freeze_backbone: false,
    };
    let template =
        |id: &str, aliases: &[&str], architecture: &str, recommended: bool, description: &str, recipe: &Recipe| {
            Template {
                id: id.into(),
                aliases: aliases.iter().map(|a| a.to_string()).collect(),
                description: description.into(),
                recommended,
                architecture: architecture.into(),
                pretrained_weights: vec!["ImageNet-1k".into(), "None".into()],
                params: params(recipe),
            }
        };
    vec![
        template(
            "EfficientNet_Lite0",
            &[],
            "efficientnet_lite0",
            true,
            "EfficientNet-Lite0 fine-tuned end to end: accurate, small and fast on a CPU; the default choice.",
            &fine_tune,
        ),
        template(
            "EfficientNet_Lite0_Transfer",
            &[],
            "efficientnet_lite0",
            false,
            "Transfer learning: the pretrained EfficientNet-Lite0 stays frozen and only a new head trains — seconds instead of hours.",
            &Recipe {
                num_epochs: 5,
                per_item_lrate: 3.125e-4,
                per_item_min_lrate: 3.125e-6,
                warmup_iters: 0,
                rand_augment_magnitude: 0.0,
                freeze_backbone: true,
                ..fine_tune
            },
        ),
        template(
            "ResNet50_RSB_A1",
            &["MMClassification_ResNet_50_RSB_A1"],
            "resnet50",
            false,
            "ResNet-50 with the \"ResNet strikes back\" A1 recipe: LAMB, warm-up then cosine, RandAugment and flips.",
            &Recipe {
                image_size: 224,
                batch_size: 64,
                num_epochs: 60,
                optimizer: "lamb",
                per_item_lrate: 1.953125e-5,
                per_item_min_lrate: 1.5625e-8,
                weight_decay: 0.01,
                warmup_iters: 100,
                warmup_ratio: 1e-4,
                label_smoothing: 0.0,
                rand_augment_magnitude: 7.0,
                freeze_backbone: false,
            },
        ),
        template(
            "ResNet18",
            &[],
            "resnet18",
            false,
            "ResNet-18 fine-tuned end to end: a quick, sturdy baseline.",
            &fine_tune,
        ),
        template(
            "MobileNetV2",
            &[],
            "mobilenet_v2",
            false,
            "MobileNetV2 fine-tuned end to end: small and fast.",
            &fine_tune,
        ),
        template(
            "EfficientNet_B0",
            &[],
            "efficientnet_b0",
            false,
            "EfficientNet-B0 (torchvision) fine-tuned end to end.",
            &fine_tune,
        ),
        template(
            "ViT_B_16",
            &[],
            "vit_b_16",
            false,
            "Vision Transformer B/16 fine-tuned end to end: strongest with much data, slow on a CPU.",
            &Recipe { batch_size: 16, per_item_lrate: 6.25e-6, per_item_min_lrate: 6.25e-9, ..fine_tune },
        ),
    ]
}

/// The template with this id or alias.
pub fn find_template(id: &str) -> Option<Template> {
    visual_classifier_templates().into_iter().find(|t| t.id == id || t.aliases.iter().any(|a| a == id))
}

/// Checks `given` against the template and fills in defaults. Every problem is reported, each
/// naming its field (`train_info.params.<name>`).
pub fn resolve_params(
    template: &Template,
    given: &serde_json::Map<String, Value>,
) -> Result<BTreeMap<String, Value>, Vec<ParamError>> {
    let mut errors = Vec::new();
    let field = |name: &str| format!("train_info.params.{name}");
    for name in given.keys() {
        if !template.params.iter().any(|p| &p.name == name) {
            errors.push(ParamError {
                field: field(name),
                reason: format!("template {} has no parameter {name:?}", template.id),
            });
        }
    }
    let mut resolved = BTreeMap::new();
    for spec in &template.params {
        let value = given.get(&spec.name).cloned().unwrap_or_else(|| spec.default.clone());
        let problem = match (&spec.kind, &value) {
            (ParamKind::Int { min, max }, v) => {
                match v.as_i64().or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)) {
                    Some(n) if n < *min || n > *max => Some(format!("{n} is outside {min}..={max}")),
                    Some(n) => {
                        resolved.insert(spec.name.clone(), json!(n));
                        None
                    }
                    None => Some(format!("expected a whole number, got {v}")),
                }
            }
            (ParamKind::Float { min, max }, v) => match v.as_f64() {
                Some(x) if !x.is_finite() || x < *min || x > *max => Some(format!("{x} is outside {min}..={max}")),
                Some(x) => {
                    resolved.insert(spec.name.clone(), json!(x));
                    None
                }
                None => Some(format!("expected a number, got {v}")),
            },
            (ParamKind::Choice { options }, v) => match v.as_str() {
                Some(s) if options.iter().any(|o| o == s) => {
                    resolved.insert(spec.name.clone(), json!(s));
                    None
                }
                _ => Some(format!("expected one of {}, got {v}", options.join(", "))),
            },
            (ParamKind::Bool, v) => match v.as_bool() {
                Some(b) => {
                    resolved.insert(spec.name.clone(), json!(b));
                    None
                }
                None => Some(format!("expected true or false, got {v}")),
            },
        };
        if let Some(reason) = problem {
            errors.push(ParamError { field: field(&spec.name), reason });
        }
    }
    if errors.is_empty() { Ok(resolved) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clarifai_rsb_a1_defaults_are_kept_under_its_clarifai_name() {
        let t = find_template("MMClassification_ResNet_50_RSB_A1").unwrap();
        assert_eq!(t.id, "ResNet50_RSB_A1");
        let p = resolve_params(&t, &Default::default()).unwrap();
        assert_eq!(p["image_size"], 224);
        assert_eq!(p["batch_size"], 64);
        assert_eq!(p["num_epochs"], 60);
        assert_eq!(p["per_item_lrate"], 1.953125e-5);
        assert_eq!(p["weight_decay"], 0.01);
        assert_eq!(p["per_item_min_lrate"], 1.5625e-8);
        assert_eq!(p["warmup_iters"], 100);
        assert_eq!(p["warmup_ratio"], 1e-4);
        assert_eq!(p["flip_probability"], 0.5);
        assert_eq!(p["flip_direction"], "horizontal");
        assert_eq!(p["concepts_mutually_exclusive"], false);
        assert_eq!(p["pretrained_weights"], "ImageNet-1k");
        assert_eq!(p["seed"], -1);
        assert_eq!(p["invalid_data_tolerance_percent"], 5.0);
        assert_eq!(p["optimizer"], "lamb");
        let batch = t.params.iter().find(|p| p.name == "batch_size").unwrap();
        assert_eq!(batch.kind, ParamKind::Int { min: 1, max: 256 });
        let epochs = t.params.iter().find(|p| p.name == "num_epochs").unwrap();
        assert_eq!(epochs.kind, ParamKind::Int { min: 1, max: 600 });
    }

    #[test]
    fn every_template_has_described_params_with_valid_defaults_and_one_is_recommended_first() {
        let all = visual_classifier_templates();
        assert!(all[0].recommended);
        assert_eq!(all.iter().filter(|t| t.recommended).count(), 1);
        for t in &all {
            assert!(t.params.iter().all(|p| !p.description.is_empty()));
            resolve_params(t, &Default::default()).unwrap_or_else(|e| panic!("{}: {e:?}", t.id));
        }
        assert!(all.iter().any(|t| t.params.iter().any(|p| p.name == "freeze_backbone" && p.default == true)));
    }

    #[test]
    fn bad_params_are_named_with_the_reason() {
        let t = find_template("EfficientNet_Lite0").unwrap();
        let given =
            json!({"batch_size": 0, "num_epochs": "ten", "optimizer": "adagrad", "bogus": 1, "per_item_lrate": 1e-4})
                .as_object()
                .unwrap()
                .clone();
        let errors = resolve_params(&t, &given).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"train_info.params.batch_size"), "{errors:?}");
        assert!(fields.contains(&"train_info.params.num_epochs"));
        assert!(fields.contains(&"train_info.params.optimizer"));
        assert!(fields.contains(&"train_info.params.bogus"));
        assert!(!fields.contains(&"train_info.params.per_item_lrate"));
        assert!(errors.iter().find(|e| e.field.ends_with("batch_size")).unwrap().reason.contains("1..=256"));
    }
}
