//! One training job: pre-flight, train (renewing the lease, honouring cancels), finalise.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use deeptune_core::StatusCode;
use deeptune_core::api::ModelVersion;
use deeptune_engine::artifact::{self, Manifest};
use deeptune_engine::data::{DataSource, EvalTransform, FlipDirection, Normalization, decode_rgb};
use deeptune_engine::metrics::{Predictions, evaluate};
use deeptune_engine::models::Architecture;
use deeptune_engine::train::{
    CancelToken, EpochEvent, NoProgress, OptimizerKind, ProgressSink, StepEvent, TrainConfig, TrainOutcome, TrainRun,
    predict_source, train,
};
use deeptune_store::AppRecord;
use deeptune_store::jobs::{Job, JobState};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::Worker;

/// Images held in memory after pre-flight (each was decoded once there).
struct MemorySource {
    items: Vec<(String, Vec<u8>, Vec<f32>)>,
    classes: usize,
}

impl DataSource for MemorySource {
    fn len(&self) -> usize {
        self.items.len()
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
    fn id(&self, index: usize) -> String {
        self.items[index].0.clone()
    }
    fn labels(&self, index: usize) -> Vec<f32> {
        self.items[index].2.clone()
    }
    fn bytes(&self, index: usize) -> Result<Vec<u8>, String> {
        Ok(self.items[index].1.clone())
    }
}

struct Target {
    app: AppRecord,
    model_id: String,
    version_id: String,
}

fn num(params: &serde_json::Map<String, Value>, name: &str) -> f64 {
    params.get(name).and_then(Value::as_f64).unwrap_or_default()
}

fn text<'a>(params: &'a serde_json::Map<String, Value>, name: &str) -> &'a str {
    params.get(name).and_then(Value::as_str).unwrap_or_default()
}

/// The engine configuration a version's resolved template parameters describe.
fn train_config(version: &ModelVersion, architecture: Architecture, train_len: usize) -> TrainConfig {
    let p = &version.train_info.params;
    let classes = version.output_info.data.concepts.len();
    let normalization = match architecture {
        Architecture::EfficientnetLite0 | Architecture::EfficientnetLite1 | Architecture::EfficientnetLite2 => {
            Normalization::MinusOneToOne127
        }
        _ => Normalization::ImageNet,
    };
    let optimizer = match text(p, "optimizer") {
        "sgd" => OptimizerKind::Sgd { momentum: 0.9, nesterov: true },
        "lamb" => OptimizerKind::Lamb { beta1: 0.9, beta2: 0.999, epsilon: 1e-6 },
        _ => OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, epsilon: 1e-8 },
    };
    let flip_direction = match text(p, "flip_direction") {
        "vertical" => FlipDirection::Vertical,
        "both" => FlipDirection::Both,
        _ => FlipDirection::Horizontal,
    };
    let magnitude = num(p, "rand_augment_magnitude") as f32;
    // A batch can't be larger than the training split, and BatchNorm needs two images.
    let batch_size = (num(p, "batch_size") as usize).clamp(2, train_len.max(2));
    TrainConfig {
        architecture,
        num_classes: classes,
        image_size: num(p, "image_size") as usize,
        normalization,
        batch_size,
        accumulation_steps: 1,
        num_epochs: num(p, "num_epochs") as usize,
        optimizer,
        per_item_lrate: num(p, "per_item_lrate"),
        per_item_min_lrate: num(p, "per_item_min_lrate"),
        warmup_iters: num(p, "warmup_iters") as u64,
        warmup_ratio: num(p, "warmup_ratio"),
        weight_decay: num(p, "weight_decay"),
        label_smoothing: num(p, "label_smoothing"),
        mutually_exclusive: version.output_info.output_config.concepts_mutually_exclusive,
        class_weights: None,
        balanced_sampler: false,
        freeze_backbone: p.get("freeze_backbone").and_then(Value::as_bool).unwrap_or(false),
        backbone_lr_multiplier: 1.0,
        seed: num(p, "seed") as u64,
        flip_probability: num(p, "flip_probability") as f32,
        flip_direction,
        rand_augment: (magnitude > 0.0).then_some((2, magnitude, 0.5)),
        crop_scale: (0.35, 1.0),
        checkpoint_every_steps: 50,
        keep_last_checkpoints: 2,
        workers: 2,
    }
}

/// Reports progress to the store, renews the lease and turns a cancel request, a lost lease or
/// a shutdown into the engine's cancel token.
struct Reporter {
    worker: Worker,
    runtime: tokio::runtime::Handle,
    version_key: (AppRecord, String, String),
    cancel: CancelToken,
    last_report: Mutex<Instant>,
    signals: Arc<Signals>,
    shutdown: watch::Receiver<bool>,
}

impl Reporter {
    fn check(&self) {
        if *self.shutdown.borrow()
            || self.signals.lost_lease.load(Ordering::SeqCst)
            || self.signals.canceled.load(Ordering::SeqCst)
        {
            self.cancel.cancel();
        }
    }
}

/// What the heartbeat task has learnt about the job.
#[derive(Default)]
struct Signals {
    lost_lease: AtomicBool,
    canceled: AtomicBool,
    done: AtomicBool,
}

/// Renews the job's lease every third of it for as long as the job runs (pre-flight and
/// evaluation included, not only training steps), and records a lost lease or a cancel request.
fn spawn_heartbeat(
    worker: &Worker,
    job: &str,
    signals: Arc<Signals>,
    cancel: CancelToken,
) -> tokio::task::JoinHandle<()> {
    let (worker, job) = (worker.clone(), job.to_string());
    tokio::spawn(async move {
        while !signals.done.load(Ordering::SeqCst) {
            tokio::time::sleep(worker.lease / 3).await;
            if signals.done.load(Ordering::SeqCst) {
                break;
            }
            match worker.store.heartbeat_job(&job, &worker.id, worker.lease).await {
                Ok(beat) if !beat.lease_held => {
                    signals.lost_lease.store(true, Ordering::SeqCst);
                    cancel.cancel();
                    break;
                }
                Ok(beat) if beat.cancel_requested => {
                    signals.canceled.store(true, Ordering::SeqCst);
                    cancel.cancel();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    })
}

impl ProgressSink for Reporter {
    fn on_step(&self, event: &StepEvent) {
        let mut last = self.last_report.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed().as_millis() < 500 && event.step < event.total_steps {
            return;
        }
        *last = Instant::now();
        drop(last);
        let (app, model, version) = &self.version_key;
        let progress = json!({
            "percent_completed": (100.0 * event.step as f64 / event.total_steps.max(1) as f64).min(100.0),
            "time_remaining": event.eta_seconds,
            "epoch": event.epoch + 1,
            "step": event.step,
            "total_steps": event.total_steps,
            "loss": event.loss,
            "learning_rate": event.learning_rate,
            "images_per_second": event.images_per_second,
        });
        let _ = self.runtime.block_on(self.worker.store.set_model_version_progress(app, model, version, &progress));
        self.check();
    }

    fn on_epoch(&self, event: &EpochEvent) {
        tracing::info!(epoch = event.epoch + 1, train_loss = event.train_loss, validation_accuracy = ?event.validation_accuracy, "epoch done");
    }

    fn on_bad_sample(&self, id: &str, reason: &str) {
        tracing::warn!(input = id, reason, "skipped an input that could not be read");
    }
}

impl Worker {
    async fn set_status(&self, target: &Target, code: StatusCode, details: &str) {
        if let Err(e) =
            self.store.set_model_version_status(&target.app, &target.model_id, &target.version_id, code, details).await
        {
            tracing::warn!(error = %e, "cannot update the version's status");
        }
    }

    async fn finish(&self, job: &Job, state: JobState, result: Value) {
        match self.store.finish_job(&job.id, &self.id, state, &result).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(job = %job.id, "the job was no longer ours to finish"),
            Err(e) => tracing::error!(job = %job.id, error = %e, "cannot finish the job"),
        }
    }

    pub(crate) async fn train(self, job: Job, shutdown: watch::Receiver<bool>) {
        let p = &job.payload;
        let (user, app_id) = (p["user_id"].as_str().unwrap_or(""), p["app_id"].as_str().unwrap_or(""));
        let Ok(app) = self.store.get_app(user, app_id).await else {
            return self.finish(&job, JobState::Canceled, json!({"reason": "the app was deleted"})).await;
        };
        let target = Target {
            app,
            model_id: p["model_id"].as_str().unwrap_or("").to_string(),
            version_id: p["version_id"].as_str().unwrap_or("").to_string(),
        };
        let Ok(version) = self.store.get_model_version(&target.app, &target.model_id, &target.version_id).await else {
            return self.finish(&job, JobState::Canceled, json!({"reason": "the model version was deleted"})).await;
        };
        let signals = Arc::new(Signals::default());
        let cancel = CancelToken::new();
        let heartbeat = spawn_heartbeat(&self, &job.id, signals.clone(), cancel.clone());
        let outcome = self.train_version(&target, &version, shutdown, signals.clone(), cancel).await;
        signals.done.store(true, Ordering::SeqCst);
        heartbeat.abort();
        if signals.lost_lease.load(Ordering::SeqCst) {
            tracing::warn!(job = %job.id, "lost the job's lease; another worker carries on");
            return;
        }
        match outcome {
            Ok(Some((state, code, details, result))) => {
                self.set_status(&target, code, &details).await;
                self.finish(&job, state, result).await;
            }
            Ok(None) => {} // shutdown or lost lease: the job stays for the next claim
            Err((stage, reason)) => {
                let details = format!("{stage}: {reason}");
                tracing::error!(version = %target.version_id, %details, "training failed");
                self.set_status(&target, StatusCode::MODEL_TRAINING_FAILED, &details).await;
                self.finish(&job, JobState::Failed, json!({"stage": stage, "reason": reason})).await;
            }
        }
    }

    /// `Ok(Some)`: the final state to record; `Ok(None)`: leave the job to be resumed;
    /// `Err((stage, reason))`: failed.
    #[allow(clippy::type_complexity)]
    async fn train_version(
        &self,
        target: &Target,
        version: &ModelVersion,
        shutdown: watch::Receiver<bool>,
        signals: Arc<Signals>,
        cancel: CancelToken,
    ) -> Result<Option<(JobState, StatusCode, String, Value)>, (&'static str, String)> {
        let params = &version.train_info.params;
        let template = deeptune_core::templates::find_template(text(params, "template"))
            .ok_or(("set-up", format!("unknown template {:?}", text(params, "template"))))?;
        let architecture: Architecture = serde_json::from_value(json!(template.architecture))
            .map_err(|_| ("set-up", format!("unknown architecture {}", template.architecture)))?;
        let concepts: Vec<String> = version.output_info.data.concepts.iter().map(|c| c.id.clone()).collect();
        let exclusive = version.output_info.output_config.concepts_mutually_exclusive;

        // Pre-flight: read and decode every input of the dataset version once.
        self.set_status(target, StatusCode::MODEL_TRAINING, "pre-flight: checking the dataset's images").await;
        let (dataset, dataset_version) = (text(params, "dataset_id"), text(params, "dataset_version_id"));
        let mut frozen = Vec::new();
        loop {
            let page = self
                .store
                .list_dataset_version_inputs(&target.app, dataset, dataset_version, None, 1000, frozen.len() as u64)
                .await
                .map_err(|e| ("pre-flight", e.details))?;
            let n = page.len();
            frozen.extend(page);
            if n < 1000 {
                break;
            }
        }
        let mut bad = Vec::new();
        let (mut train_items, mut validation_items) = (Vec::new(), Vec::new());
        for input in &frozen {
            let labels: Vec<f32> = concepts
                .iter()
                .map(|c| input.concepts.iter().find(|l| &l.id == c).and_then(|l| l.value).unwrap_or(0.0))
                .collect();
            if exclusive && labels.iter().all(|v| *v < 0.5) {
                continue; // not an example of any of the chosen concepts
            }
            let bytes = match self.blobs.get(&input.content_sha256).await {
                Ok(b) => b.to_vec(),
                Err(e) => {
                    bad.push((input.input_id.clone(), e.to_string()));
                    continue;
                }
            };
            let check = bytes.clone();
            match tokio::task::spawn_blocking(move || decode_rgb(&check).map(|_| ())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    bad.push((input.input_id.clone(), e.to_string()));
                    continue;
                }
                Err(e) => {
                    bad.push((input.input_id.clone(), e.to_string()));
                    continue;
                }
            }
            let item = (input.input_id.clone(), bytes, labels);
            if input.split == "train" { train_items.push(item) } else { validation_items.push(item) }
        }
        let checked = train_items.len() + validation_items.len() + bad.len();
        let tolerance = num(params, "invalid_data_tolerance_percent");
        if checked > 0 && bad.len() as f64 * 100.0 / checked as f64 > tolerance {
            let listed: Vec<String> = bad.iter().take(20).map(|(id, why)| format!("{id} ({why})")).collect();
            let details = format!(
                "{} of {checked} inputs could not be read ({:.1}% > {tolerance}%): {}",
                bad.len(),
                bad.len() as f64 * 100.0 / checked as f64,
                listed.join(", ")
            );
            return Ok(Some((
                JobState::Failed,
                StatusCode::MODEL_TRAINING_INVALID_DATA_TOLERANCE_EXCEEDED,
                details,
                json!({"invalid_inputs": bad}),
            )));
        }
        if train_items.len() < 2 {
            return Err(("pre-flight", format!("only {} usable training inputs", train_items.len())));
        }

        let classes = concepts.len();
        let config = train_config(version, architecture, train_items.len());
        let pretrained = if text(params, "pretrained_weights") == "ImageNet-1k" {
            let dir = self.data_dir.clone();
            let arch = template.architecture.clone();
            Some(
                tokio::task::spawn_blocking(move || crate::pretrained_weights(&dir, &arch))
                    .await
                    .map_err(|e| ("pretrained weights", e.to_string()))?
                    .map_err(|e| ("pretrained weights", e.to_string()))?,
            )
        } else {
            None
        };
        let train_source: Arc<dyn DataSource> = Arc::new(MemorySource { items: train_items, classes });
        let validation_source: Arc<dyn DataSource> = Arc::new(MemorySource { items: validation_items, classes });
        let run_dir: PathBuf = self.runs_dir().join(&target.version_id);
        let reporter = Arc::new(Reporter {
            worker: self.clone(),
            runtime: tokio::runtime::Handle::current(),
            version_key: (target.app.clone(), target.model_id.clone(), target.version_id.clone()),
            cancel: cancel.clone(),
            last_report: Mutex::new(Instant::now()),
            signals: signals.clone(),
            shutdown,
        });
        self.set_status(target, StatusCode::MODEL_TRAINING, &format!("training on {} images", train_source.len()))
            .await;
        let run = TrainRun {
            config: config.clone(),
            train: train_source,
            validation: (!validation_source.is_empty()).then(|| validation_source.clone()),
            checkpoints: run_dir.join("checkpoints"),
            pretrained,
            stop_after_steps: None,
        };
        let sink = reporter.clone();
        let outcome = tokio::task::spawn_blocking(move || train(run, sink.as_ref(), &cancel))
            .await
            .map_err(|e| ("training", format!("the training thread panicked: {e}")))?
            .map_err(|e| ("training", e.to_string()))?;
        match outcome {
            TrainOutcome::Finished { model, cursor } => {
                // Evaluation on the held-out split, then the artifact.
                let evaluation = if validation_source.is_empty() {
                    Value::Null
                } else {
                    let source = validation_source.clone();
                    let transform = EvalTransform::new(config.image_size, config.normalization);
                    let model_for_eval = model.clone();
                    let concepts_for_eval = concepts.clone();
                    tokio::task::spawn_blocking(move || {
                        let (probabilities, labels, input_ids, _) =
                            predict_source(&model_for_eval, source, transform, exclusive, 16, 2, &NoProgress);
                        let mut evaluation = evaluate(
                            &Predictions {
                                concepts: concepts_for_eval,
                                input_ids,
                                probabilities,
                                labels,
                                label_known: None,
                                mutually_exclusive: exclusive,
                            },
                            0.5,
                        );
                        evaluation.strip_scores();
                        serde_json::to_value(&evaluation).unwrap_or(Value::Null)
                    })
                    .await
                    .map_err(|e| ("evaluation", e.to_string()))?
                };
                let manifest = Manifest {
                    architecture,
                    concepts: concepts.clone(),
                    image_size: config.image_size,
                    normalization: config.normalization,
                    mutually_exclusive: exclusive,
                    template: template.id.clone(),
                    params: Value::Object(params.clone()),
                    dataset_hash: format!("{dataset}/{dataset_version}"),
                    seed: config.seed,
                    engine_version: env!("CARGO_PKG_VERSION").into(),
                };
                let dir = self.models_dir().join(&target.version_id);
                tokio::task::spawn_blocking(move || artifact::save(&dir, &model, &manifest))
                    .await
                    .map_err(|e| ("saving the model", e.to_string()))?
                    .map_err(|e| ("saving the model", e.to_string()))?;
                let _ = self
                    .store
                    .set_model_version_metrics(&target.app, &target.model_id, &target.version_id, &evaluation)
                    .await;
                let accuracy = cursor.history.last().and_then(|e| e.validation_accuracy);
                let details = match accuracy {
                    Some(a) => format!("validation accuracy {:.1}%", a * 100.0),
                    None => "trained (no validation split)".into(),
                };
                let mut progress =
                    json!({"percent_completed": 100.0, "time_remaining": 0.0, "history": cursor.history});
                progress["skipped_inputs"] = json!(bad);
                let _ = self
                    .store
                    .set_model_version_progress(&target.app, &target.model_id, &target.version_id, &progress)
                    .await;
                Ok(Some((
                    JobState::Succeeded,
                    StatusCode::MODEL_TRAINED,
                    details,
                    json!({"validation_accuracy": accuracy}),
                )))
            }
            TrainOutcome::Canceled { cursor } | TrainOutcome::Stopped { cursor } => {
                if signals.canceled.load(Ordering::SeqCst) {
                    let details = format!("canceled after step {}", cursor.global_step);
                    Ok(Some((
                        JobState::Canceled,
                        StatusCode::JOB_CANCELLED,
                        details,
                        json!({"step": cursor.global_step}),
                    )))
                } else {
                    // Shutdown or a lost lease: the checkpoint stays; whoever claims the job next resumes.
                    Ok(None)
                }
            }
        }
    }
}
