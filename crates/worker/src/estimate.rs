//! Training-time estimates: this machine's measured throughput for the configuration (from an
//! earlier run, or a short calibration run that is then kept), multiplied by the steps the
//! dataset version and epochs imply, plus pre-flight, per-epoch validation and the final
//! evaluation.

use deeptune_engine::models::Architecture;
use deeptune_engine::train::calibrate::{calibrate, hardware_fingerprint};
use deeptune_engine::train::{Precision, TrainConfig};
use deeptune_store::{Store, ThroughputKey};
use serde_json::{Value, json};

/// Pre-flight reads and decodes every input once.
const PREFLIGHT_SECONDS_PER_INPUT: f64 = 0.004;
/// Building the model, loading pretrained weights, starting the loader.
const STARTUP_SECONDS: f64 = 2.0;
/// Calibration batches are capped: per-image speed barely changes above it, and a calibration
/// of ResNet-50 at batch 256 would take minutes.
const CALIBRATION_MAX_BATCH: usize = 16;
/// Timed steps of a calibration run (after one warm-up step).
const CALIBRATION_STEPS: usize = 2;

/// How many inputs a run will see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitCounts {
    pub train: usize,
    pub validation: usize,
    /// Every input pre-flight reads.
    pub total: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub seconds: f64,
    pub breakdown: Value,
}

/// Forward FLOPs per image at 224×224 (GFLOPs, from the papers and torchvision's tables): the
/// scale between configurations when only another one has been measured.
fn gflops_224(architecture: Architecture) -> f64 {
    use Architecture::*;
    match architecture {
        Resnet18 => 1.82,
        Resnet34 => 3.67,
        Resnet50 => 4.11,
        Resnet101 => 7.83,
        Resnet152 => 11.56,
        MobilenetV2 => 0.30,
        EfficientnetB0 => 0.39,
        EfficientnetB1 => 0.70,
        EfficientnetB2 => 1.0,
        EfficientnetB3 => 1.8,
        EfficientnetLite0 => 0.40,
        EfficientnetLite1 => 0.60,
        EfficientnetLite2 => 0.90,
        VitB16 => 17.6,
        VitB32 => 4.41,
    }
}

fn architecture_name(architecture: Architecture) -> String {
    serde_json::to_value(architecture).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn cost(architecture: Architecture, image_size: u32) -> f64 {
    gflops_224(architecture) * (image_size as f64 / 224.0).powi(2)
}

/// The key of a run's throughput on this machine: bfloat16 runs (where the CPU has them) are
/// measured apart from float32 ones, as if on other hardware.
pub fn throughput_key(config: &TrainConfig) -> ThroughputKey {
    let hardware = match config.precision.effective() {
        Precision::Bfloat16 => format!("{} bfloat16", hardware_fingerprint()),
        Precision::Float32 => hardware_fingerprint(),
    };
    ThroughputKey {
        hardware,
        architecture: architecture_name(config.architecture),
        image_size: config.image_size as u32,
        batch_size: config.batch_size as u32,
        frozen_backbone: config.freeze_backbone,
    }
}

/// Throughput for `config`: measured for exactly this configuration, else calibrated now (when
/// `may_calibrate` and no training run occupies this process), else scaled by FLOPs from the
/// nearest measurement. Returns (train img/s, infer img/s, how it was obtained).
async fn throughput(store: &Store, config: &TrainConfig, may_calibrate: bool) -> (f64, f64, String) {
    let key = throughput_key(config);
    let capped = ThroughputKey { batch_size: key.batch_size.min(CALIBRATION_MAX_BATCH as u32), ..key.clone() };
    for candidate in [&key, &capped] {
        if let Ok(Some(found)) = store.get_throughput(candidate).await {
            let how = format!("measured by {} on {}", found.source, found.measured_at);
            return (found.train_images_per_second, found.infer_images_per_second, how);
        }
    }
    if may_calibrate {
        let mut probe = config.clone();
        probe.batch_size = config.batch_size.clamp(2, CALIBRATION_MAX_BATCH);
        match tokio::task::spawn_blocking(move || calibrate(&probe, CALIBRATION_STEPS)).await {
            Ok(Ok(Some(measured))) => {
                let _ = store
                    .record_throughput(
                        &capped,
                        measured.train_images_per_second,
                        measured.infer_images_per_second,
                        "calibration",
                    )
                    .await;
                return (measured.train_images_per_second, measured.infer_images_per_second, "calibrated now".into());
            }
            Ok(Ok(None)) => tracing::info!("a training run occupies this process; scaling an earlier measurement"),
            Ok(Err(e)) => tracing::warn!(error = %e, "calibration failed"),
            Err(e) => tracing::warn!(error = %e, "calibration panicked"),
        }
    }
    // Scale the nearest measurement (this machine's first) by the FLOPs per image.
    let target = cost(config.architecture, key.image_size);
    let all = store.list_throughput().await.unwrap_or_default();
    let nearest = all
        .iter()
        .filter_map(|t| {
            let architecture: Architecture = serde_json::from_value(json!(t.key.architecture)).ok()?;
            Some((t, cost(architecture, t.key.image_size)))
        })
        .min_by(|(a, ca), (b, cb)| {
            let rank = |t: &deeptune_store::Throughput, c: f64| {
                (
                    (t.key.hardware != key.hardware) as u8,
                    (t.key.architecture != key.architecture) as u8,
                    (c / target).ln().abs(),
                )
            };
            rank(a, *ca).partial_cmp(&rank(b, *cb)).unwrap_or(std::cmp::Ordering::Equal)
        });
    match nearest {
        Some((t, c)) => {
            let factor = c / target;
            let how = format!(
                "approximate: scaled by FLOPs from {} at {} px, batch {}",
                t.key.architecture, t.key.image_size, t.key.batch_size
            );
            (t.train_images_per_second * factor, t.infer_images_per_second * factor, how)
        }
        // Nothing measured anywhere yet: a typical 2-core CPU trains about 6 GFLOP-images/s.
        None => (6.0 / target, 18.0 / target, "approximate: no measurement on this machine yet".into()),
    }
}

/// The estimate for training `config` on `counts`.
pub async fn estimate(store: &Store, config: &TrainConfig, counts: SplitCounts, may_calibrate: bool) -> Estimate {
    let (train_ips, infer_ips, how) = throughput(store, config, may_calibrate).await;
    let epochs = config.num_epochs as f64;
    let steps = config.steps_per_epoch(counts.train) * config.num_epochs as u64;
    let preflight = counts.total as f64 * PREFLIGHT_SECONDS_PER_INPUT;
    let training = epochs * counts.train as f64 / train_ips.max(1e-9);
    let validation = epochs * counts.validation as f64 / infer_ips.max(1e-9);
    let evaluation = counts.validation as f64 / infer_ips.max(1e-9);
    let seconds = STARTUP_SECONDS + preflight + training + validation + evaluation;
    Estimate {
        seconds,
        breakdown: json!({
            "startup_seconds": STARTUP_SECONDS,
            "preflight_seconds": preflight,
            "training_seconds": training,
            "validation_seconds": validation,
            "evaluation_seconds": evaluation,
            "steps": steps,
            "train_inputs": counts.train,
            "validation_inputs": counts.validation,
            "train_images_per_second": train_ips,
            "infer_images_per_second": infer_ips,
            "throughput_source": how,
            "hardware": hardware_fingerprint(),
        }),
    }
}
