//! One training job: pre-flight, train (renewing the lease, honouring cancels), finalise.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use deeptune_core::StatusCode;
use deeptune_core::api::{InvalidInput, ModelVersion, TrainingFailure};
use deeptune_engine::artifact::{self, Manifest};
use deeptune_engine::data::{DataSource, EvalTransform, FlipDirection, Normalization, decode_rgb};
use deeptune_engine::metrics::{Predictions, evaluate};
use deeptune_engine::models::Architecture;
use deeptune_engine::train::{
    CancelToken, EpochEvent, NoProgress, OptimizerKind, Precision, ProgressSink, StepEvent, TrainConfig, TrainOutcome,
    TrainRun, predict_source, train,
};
use deeptune_store::jobs::{Job, JobState};
use deeptune_store::{AppRecord, NewLogLine};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::Worker;
use crate::estimate::SplitCounts;

/// The images of a split, read from the blob store whenever the loader asks (pre-flight has
/// decoded each once): memory holds only what the loader prefetches, however large the dataset,
/// and a worker on another machine reads the same object storage.
struct BlobSource {
    items: Vec<Item>,
    classes: usize,
    blobs: Arc<dyn deeptune_blob::BlobStore>,
    runtime: tokio::runtime::Handle,
}

impl DataSource for BlobSource {
    fn len(&self) -> usize {
        self.items.len()
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
    fn id(&self, index: usize) -> String {
        self.items[index].input_id.clone()
    }
    fn labels(&self, index: usize) -> Vec<f32> {
        self.items[index].labels.clone()
    }
    fn bytes(&self, index: usize) -> Result<Vec<u8>, String> {
        // Called from the loader's own threads, never from the async runtime.
        let key = &self.items[index].blob_key;
        self.runtime.block_on(self.blobs.get(key)).map(|b| b.to_vec()).map_err(|e| e.to_string())
    }
}

/// An input that passed pre-flight.
struct Item {
    input_id: String,
    blob_key: String,
    labels: Vec<f32>,
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

/// The engine configuration that resolved template parameters (`train_info.params`, template
/// included) describe, for `classes` concepts and a training split of `train_len` inputs.
pub fn train_config(
    p: &serde_json::Map<String, Value>,
    classes: usize,
    mutually_exclusive: bool,
    train_len: usize,
) -> Result<TrainConfig, String> {
    let template = deeptune_core::templates::find_template(text(p, "template"))
        .ok_or_else(|| format!("unknown template {:?}", text(p, "template")))?;
    let architecture: Architecture = serde_json::from_value(json!(template.architecture))
        .map_err(|_| format!("unknown architecture {}", template.architecture))?;
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
    Ok(TrainConfig {
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
        mutually_exclusive,
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
        precision: if text(p, "precision") == "bfloat16" { Precision::Bfloat16 } else { Precision::Float32 },
    })
}

/// A version's training log: lines go to the store (where the API streams and serves them)
/// and to the process log.
#[derive(Clone)]
pub(crate) struct RunLog {
    store: deeptune_store::Store,
    app: AppRecord,
    model_id: String,
    version_id: String,
}

impl RunLog {
    async fn write(&self, level: &str, event: &str, message: &str, data: Option<Value>) {
        let version = self.version_id.as_str();
        match (level, event) {
            ("error", _) => tracing::error!(version, event, "{message}"),
            ("warn", _) => tracing::warn!(version, event, "{message}"),
            (_, "step") => tracing::debug!(version, event, "{message}"),
            _ => tracing::info!(version, event, "{message}"),
        }
        let line = NewLogLine { level, event, message, data: data.as_ref() };
        if let Err(e) = self.store.append_model_version_log(&self.app, &self.model_id, &self.version_id, &line).await {
            tracing::warn!(error = %e, "cannot write the training log");
        }
    }

    async fn info(&self, event: &str, message: &str, data: Option<Value>) {
        self.write("info", event, message, data).await
    }
}

/// Reports progress and log lines to the store, and turns a cancel request, a lost lease or a
/// shutdown into the engine's cancel token.
struct Reporter {
    worker: Worker,
    runtime: tokio::runtime::Handle,
    log: RunLog,
    job_id: String,
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
pub(crate) struct Signals {
    pub(crate) lost_lease: AtomicBool,
    pub(crate) canceled: AtomicBool,
    pub(crate) done: AtomicBool,
}

/// Renews the job's lease every third of it for as long as the job runs (pre-flight and
/// evaluation included, not only training steps), and records a lost lease or a cancel request.
pub(crate) fn spawn_heartbeat(
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
        let message = format!(
            "epoch {} step {}/{} loss {:.4} lr {:.3e} {:.1} img/s",
            event.epoch + 1,
            event.step,
            event.total_steps,
            event.loss,
            event.learning_rate,
            event.images_per_second
        );
        self.runtime.block_on(self.log.write("info", "step", &message, serde_json::to_value(event).ok()));
        let mut last = self.last_report.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed().as_millis() < 500 && event.step < event.total_steps {
            return;
        }
        *last = Instant::now();
        drop(last);
        let RunLog { app, model_id, version_id, .. } = &self.log;
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
        let store = &self.worker.store;
        let _ = self.runtime.block_on(store.set_model_version_progress(app, model_id, version_id, &progress));
        // A cancel request stops the run within this step, not at the next heartbeat.
        if let Ok(job) = self.runtime.block_on(store.get_job(&self.job_id))
            && job.cancel_requested
        {
            self.signals.canceled.store(true, Ordering::SeqCst);
        }
        self.check();
    }

    fn on_epoch(&self, event: &EpochEvent) {
        let mut message = format!("epoch {} done: train loss {:.4}", event.epoch + 1, event.train_loss);
        if let (Some(loss), Some(accuracy)) = (event.validation_loss, event.validation_accuracy) {
            message += &format!(", validation loss {loss:.4}, validation accuracy {:.1}%", accuracy * 100.0);
        }
        self.runtime.block_on(self.log.info("epoch", &message, serde_json::to_value(event).ok()));
    }

    fn on_bad_sample(&self, id: &str, reason: &str) {
        let message = format!("skipped input {id}: {reason}");
        let data = json!({"input_id": id, "reason": reason});
        self.runtime.block_on(self.log.write("warn", "invalid_input", &message, Some(data)));
    }

    fn on_message(&self, message: &str) {
        self.runtime.block_on(self.log.info("message", message, None));
    }
}

/// What to try when a run fails in `stage`.
fn failure_hint(stage: &str) -> &'static str {
    match stage {
        "pretrained weights" => {
            "Import the weights with `deeptune weights import TEMPLATE FILE`, or train with pretrained_weights \"None\"."
        }
        "pre-flight" => {
            "Check the dataset version's inputs (invalid_inputs lists those that could not be read), or create a version with more usable images."
        }
        "training" => {
            "See the log for the step that failed; a smaller batch_size or image_size needs less memory. Training again resumes from the last checkpoint."
        }
        "evaluation" | "saving the model" => {
            "Check the free space and permissions of the data directory, then train again."
        }
        _ => "The template or its parameters cannot be used as given; train again with the template's defaults.",
    }
}

/// How a job ended, as far as the version is concerned.
enum Ending {
    /// A final status to record, and the job's end state and result.
    Final { state: JobState, code: StatusCode, details: String, result: Value },
    /// Shutdown or a lost lease: the checkpoint stays and whoever claims the job next resumes.
    Interrupted,
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

    /// Removes a version's checkpoints and, with `artifact`, its trained model.
    fn remove_files(&self, version_id: &str, artifact: bool) {
        let result = if artifact {
            crate::remove_version_files(&self.data_dir, version_id)
        } else {
            match std::fs::remove_dir_all(self.runs_dir().join(version_id)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        };
        if let Err(e) = result {
            tracing::warn!(version = version_id, error = %e, "cannot remove the version's files");
        }
    }

    pub(crate) async fn train(self, job: Job, shutdown: watch::Receiver<bool>) {
        let p = &job.payload;
        let (user, app_id) = (p["user_id"].as_str().unwrap_or(""), p["app_id"].as_str().unwrap_or(""));
        let version_id = p["version_id"].as_str().unwrap_or("").to_string();
        let Ok(app) = self.store.get_app(user, app_id).await else {
            self.remove_files(&version_id, true);
            return self.finish(&job, JobState::Canceled, json!({"reason": "the app was deleted"})).await;
        };
        let target = Target { app, model_id: p["model_id"].as_str().unwrap_or("").to_string(), version_id };
        let Ok(version) = self.store.get_model_version(&target.app, &target.model_id, &target.version_id).await else {
            self.remove_files(&target.version_id, true);
            return self.finish(&job, JobState::Canceled, json!({"reason": "the model version was deleted"})).await;
        };
        let log = RunLog {
            store: self.store.clone(),
            app: target.app.clone(),
            model_id: target.model_id.clone(),
            version_id: target.version_id.clone(),
        };
        let attempt = if job.attempts > 1 { format!(" (attempt {})", job.attempts) } else { String::new() };
        log.info(
            "start",
            &format!("{} claimed the run{attempt}", self.id),
            Some(json!({"worker": self.id, "attempt": job.attempts})),
        )
        .await;
        let signals = Arc::new(Signals::default());
        let cancel = CancelToken::new();
        let heartbeat = spawn_heartbeat(&self, &job.id, signals.clone(), cancel.clone());
        let outcome = self.train_version(&target, &version, &job, &log, shutdown, signals.clone(), cancel).await;
        signals.done.store(true, Ordering::SeqCst);
        heartbeat.abort();
        if signals.lost_lease.load(Ordering::SeqCst) {
            tracing::warn!(job = %job.id, "lost the job's lease; another worker carries on");
            return;
        }
        let version_gone =
            || async { self.store.get_model_version(&target.app, &target.model_id, &target.version_id).await.is_err() };
        match outcome {
            Ok(Ending::Final { state, code, details, result }) => {
                let level = if state == JobState::Succeeded { "info" } else { "warn" };
                log.write(
                    level,
                    "status",
                    &format!("{}: {details}", code.description()),
                    Some(json!({"code": code.code()})),
                )
                .await;
                self.set_status(&target, code, &details).await;
                self.finish(&job, state, result).await;
                // Checkpoints are only needed to resume; the artifact stays with the version.
                self.remove_files(&target.version_id, false);
            }
            Ok(Ending::Interrupted) => {
                log.info(
                    "message",
                    "interrupted; the next worker to claim the job resumes from the last checkpoint",
                    None,
                )
                .await;
            }
            Err((stage, reason)) => {
                let details = format!("{stage}: {reason}");
                let hint = failure_hint(stage);
                let message = format!("training failed in {stage}: {reason}. {hint}");
                log.write("error", "status", &message, Some(json!({"stage": stage, "reason": reason}))).await;
                let failure = TrainingFailure {
                    stage: stage.to_string(),
                    reason: reason.clone(),
                    hint: hint.to_string(),
                    last_log_lines: self.last_log_lines(&target, 20).await,
                };
                let (app, model, version) = (&target.app, &target.model_id, &target.version_id);
                if let Err(e) = self.store.set_model_version_failure(app, model, version, &failure).await {
                    tracing::warn!(error = %e, "cannot record the failure");
                }
                self.set_status(&target, StatusCode::MODEL_TRAINING_FAILED, &details).await;
                self.finish(&job, JobState::Failed, json!({"stage": stage, "reason": reason})).await;
            }
        }
        // A version deleted while it trained leaves no files behind.
        if version_gone().await {
            self.remove_files(&target.version_id, true);
        }
    }

    /// The end of a version's log as text lines.
    async fn last_log_lines(&self, target: &Target, n: usize) -> Vec<String> {
        let mut lines = Vec::new();
        let mut after = 0;
        // Pages through the log keeping the tail (logs are a few thousand lines at most).
        while let Ok(page) =
            self.store.list_model_version_log(&target.app, &target.model_id, &target.version_id, after, 1000).await
        {
            let Some(last) = page.last() else { break };
            after = last.seq;
            lines.extend(page.iter().map(|e| format!("{} {:<5} {}", e.time, e.level.to_uppercase(), e.message)));
            if lines.len() > n {
                lines.drain(..lines.len() - n);
            }
        }
        lines
    }

    /// The inputs of the run's dataset version, read and decoded once: (train, validation,
    /// invalid).
    async fn preflight(
        &self,
        target: &Target,
        params: &serde_json::Map<String, Value>,
        concepts: &[String],
        exclusive: bool,
        log: &RunLog,
    ) -> Result<(Vec<Item>, Vec<Item>, Vec<InvalidInput>), (&'static str, String)> {
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
        log.info(
            "preflight",
            &format!("pre-flight: reading {} inputs of dataset version {dataset_version}", frozen.len()),
            None,
        )
        .await;
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
                Ok(b) => b,
                Err(e) => {
                    bad.push(InvalidInput { input_id: input.input_id.clone(), reason: e.to_string() });
                    continue;
                }
            };
            let decoded =
                tokio::task::spawn_blocking(move || decode_rgb(&bytes).map(|_| ()).map_err(|e| e.to_string()))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
            if let Err(reason) = decoded {
                bad.push(InvalidInput { input_id: input.input_id.clone(), reason });
                continue;
            }
            let item = Item { input_id: input.input_id.clone(), blob_key: input.content_sha256.clone(), labels };
            if input.split == "train" { train_items.push(item) } else { validation_items.push(item) }
        }
        for invalid in &bad {
            let message = format!("invalid input {}: {}", invalid.input_id, invalid.reason);
            log.write("warn", "invalid_input", &message, serde_json::to_value(invalid).ok()).await;
        }
        let _ =
            self.store.set_model_version_invalid_inputs(&target.app, &target.model_id, &target.version_id, &bad).await;
        log.info(
            "preflight",
            &format!(
                "pre-flight done: {} training and {} validation inputs usable, {} invalid",
                train_items.len(),
                validation_items.len(),
                bad.len()
            ),
            Some(json!({"train": train_items.len(), "validation": validation_items.len(), "invalid": bad.len()})),
        )
        .await;
        Ok((train_items, validation_items, bad))
    }

    /// `Err((stage, reason))`: failed.
    #[allow(clippy::too_many_arguments)]
    async fn train_version(
        &self,
        target: &Target,
        version: &ModelVersion,
        job: &Job,
        log: &RunLog,
        shutdown: watch::Receiver<bool>,
        signals: Arc<Signals>,
        cancel: CancelToken,
    ) -> Result<Ending, (&'static str, String)> {
        let params = &version.train_info.params;
        let concepts: Vec<String> = version.output_info.data.concepts.iter().map(|c| c.id.clone()).collect();
        let exclusive = version.output_info.output_config.concepts_mutually_exclusive;

        self.set_status(target, StatusCode::MODEL_TRAINING, "pre-flight: checking the dataset's images").await;
        let (train_items, validation_items, bad) = self.preflight(target, params, &concepts, exclusive, log).await?;
        let checked = train_items.len() + validation_items.len() + bad.len();
        let tolerance = num(params, "invalid_data_tolerance_percent");
        if checked > 0 && bad.len() as f64 * 100.0 / checked as f64 > tolerance {
            let listed: Vec<String> = bad.iter().take(20).map(|b| format!("{} ({})", b.input_id, b.reason)).collect();
            let details = format!(
                "{} of {checked} inputs could not be read ({:.1}% > {tolerance}%): {}",
                bad.len(),
                bad.len() as f64 * 100.0 / checked as f64,
                listed.join(", ")
            );
            return Ok(Ending::Final {
                state: JobState::Failed,
                code: StatusCode::MODEL_TRAINING_INVALID_DATA_TOLERANCE_EXCEEDED,
                details,
                result: json!({"invalid_inputs": bad}),
            });
        }
        if train_items.len() < 2 {
            return Err(("pre-flight", format!("only {} usable training inputs", train_items.len())));
        }

        let classes = concepts.len();
        let config = train_config(params, classes, exclusive, train_items.len()).map_err(|e| ("set-up", e))?;
        let counts = SplitCounts { train: train_items.len(), validation: validation_items.len(), total: checked };
        let estimate = crate::estimate::estimate(&self.store, &config, counts, false).await;
        let _ = self
            .store
            .mark_model_version_started(&target.app, &target.model_id, &target.version_id, Some(estimate.seconds))
            .await;
        log.info("estimate", &format!("estimated duration {:.0} s", estimate.seconds), Some(estimate.breakdown)).await;

        let resume_from = version.train_info.resume_from_model.as_ref().map(|r| r.model_version.id.clone());
        let (pretrained, pretrained_head) = if let Some(source) = &resume_from {
            // Continuing an earlier version: its trained weights; its head too when it predicts
            // exactly these concepts.
            let dir = self.models_dir().join(source);
            let manifest: Option<Manifest> =
                std::fs::read(dir.join(artifact::MANIFEST_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok());
            let Some(manifest) = manifest else {
                return Err(("set-up", format!("the trained model of version {source} is gone")));
            };
            let same_concepts = manifest.concepts == concepts;
            let head =
                if same_concepts { "its classification head included" } else { "with a new head for these concepts" };
            log.info("message", &format!("continuing from version {source}, {head}"), None).await;
            (Some(dir.join(artifact::WEIGHTS_FILE)), same_concepts)
        } else if text(params, "pretrained_weights") == "ImageNet-1k" {
            let path =
                crate::pretrained::ensure_pretrained(&self.data_dir, text(params, "template"), self.fetch_weights)
                    .await
                    .map_err(|e| ("pretrained weights", e.to_string()))?;
            (Some(path), false)
        } else {
            (None, false)
        };
        let source = |items| BlobSource {
            items,
            classes,
            blobs: self.blobs.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        let train_source: Arc<dyn DataSource> = Arc::new(source(train_items));
        let validation_source: Arc<dyn DataSource> = Arc::new(source(validation_items));
        let run_dir: PathBuf = self.runs_dir().join(&target.version_id);
        let reporter = Arc::new(Reporter {
            worker: self.clone(),
            runtime: tokio::runtime::Handle::current(),
            log: log.clone(),
            job_id: job.id.clone(),
            cancel: cancel.clone(),
            last_report: Mutex::new(Instant::now()),
            signals: signals.clone(),
            shutdown,
        });
        let message = format!(
            "training {:?} on {} images for {} epochs, batch {}, {} px",
            config.architecture,
            train_source.len(),
            config.num_epochs,
            config.batch_size,
            config.image_size
        );
        self.set_status(target, StatusCode::MODEL_TRAINING, &format!("training on {} images", train_source.len()))
            .await;
        log.info("train", &message, serde_json::to_value(&config).ok()).await;
        let run = TrainRun {
            config: config.clone(),
            train: train_source,
            validation: (!validation_source.is_empty()).then(|| validation_source.clone()),
            checkpoints: run_dir.join("checkpoints"),
            pretrained,
            pretrained_head,
            stop_after_steps: None,
        };
        let sink = reporter.clone();
        let training_started = Instant::now();
        let outcome = tokio::task::spawn_blocking(move || train(run, sink.as_ref(), &cancel))
            .await
            .map_err(|e| ("training", format!("the training thread panicked: {e}")))?
            .map_err(|e| ("training", e.to_string()))?;
        let (model, cursor) = match outcome {
            TrainOutcome::Finished { model, cursor } => (model, cursor),
            TrainOutcome::Canceled { cursor } | TrainOutcome::Stopped { cursor } => {
                if signals.canceled.load(Ordering::SeqCst) {
                    return Ok(Ending::Final {
                        state: JobState::Canceled,
                        code: StatusCode::JOB_CANCELLED,
                        details: format!("canceled after step {}", cursor.global_step),
                        result: json!({"step": cursor.global_step}),
                    });
                }
                return Ok(Ending::Interrupted);
            }
        };
        let train_seconds = training_started.elapsed().as_secs_f64();

        // Evaluation on the held-out split, then the artifact.
        let mut infer_images_per_second = None;
        let evaluation = if validation_source.is_empty() {
            Value::Null
        } else {
            log.info("evaluation", &format!("evaluating on {} validation inputs", validation_source.len()), None).await;
            let source = validation_source.clone();
            let transform = EvalTransform::new(config.image_size, config.normalization);
            let model_for_eval = model.clone();
            let concepts_for_eval = concepts.clone();
            let started = Instant::now();
            let evaluation = tokio::task::spawn_blocking(move || {
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
            .map_err(|e| ("evaluation", e.to_string()))?;
            infer_images_per_second = Some(validation_source.len() as f64 / started.elapsed().as_secs_f64().max(1e-6));
            evaluation
        };
        let (dataset, dataset_version) = (text(params, "dataset_id"), text(params, "dataset_version_id"));
        let manifest = Manifest {
            architecture: config.architecture,
            concepts: concepts.clone(),
            image_size: config.image_size,
            normalization: config.normalization,
            mutually_exclusive: exclusive,
            template: text(params, "template").to_string(),
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
        let _ =
            self.store.set_model_version_metrics(&target.app, &target.model_id, &target.version_id, &evaluation).await;
        let accuracy = cursor.history.last().and_then(|e| e.validation_accuracy);
        let details = match accuracy {
            Some(a) => format!("validation accuracy {:.1}%", a * 100.0),
            None => "trained (no validation split)".into(),
        };
        let progress = json!({"percent_completed": 100.0, "time_remaining": 0.0, "history": cursor.history});
        let _ =
            self.store.set_model_version_progress(&target.app, &target.model_id, &target.version_id, &progress).await;
        // What this run measured makes the next estimate for the configuration exact. A resumed
        // run trained only part of the steps here, so only an uninterrupted one counts.
        if job.attempts == 1 && cursor.global_step > 0 {
            let images = (counts.train * config.num_epochs) as f64;
            let validated = (counts.validation * (config.num_epochs + 1)) as f64;
            let infer = infer_images_per_second.unwrap_or(0.0);
            let validation_time = if infer > 0.0 { validated / infer } else { 0.0 };
            let train_ips = images / (train_seconds - validation_time).max(1e-3);
            if infer > 0.0 {
                let key = crate::estimate::throughput_key(&config);
                let _ = self.store.record_throughput(&key, train_ips, infer, "training").await;
            }
        }
        Ok(Ending::Final {
            state: JobState::Succeeded,
            code: StatusCode::MODEL_TRAINED,
            details,
            result: json!({"validation_accuracy": accuracy}),
        })
    }
}
