//! Full-graph training: every parameter of a pretrained model trains further on the user's
//! data (or only a new head, for transfer learning), with checkpoints that make a resumed run
//! end with exactly the weights of an uninterrupted one.
//!
//! The worker and tests drive it the same way: a [`TrainConfig`], data sources, a
//! [`ProgressSink`], a [`CancelToken`] and a checkpoint directory.

pub mod calibrate;
pub mod checkpoint;
pub mod optim;
pub mod schedule;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::{Module, ParamGroup};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer, Optimizer};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::data::{DataSource, EvalTransform, Loader, LoaderConfig, Normalization, TrainTransform, Transform};
use crate::models::{Architecture, Classifier, ImageClassifier};
use crate::pretrained::{PretrainedError, load_backbone};
use crate::torch::{TorchModel, freeze_where, param_ids_where};
use checkpoint::{CheckpointDir, CheckpointError, Cursor};
use optim::{FusedAdamW, FusedLamb, FusedSgd};
use schedule::LrSchedule;

/// The optimizer and its own hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OptimizerKind {
    Sgd { momentum: f64, nesterov: bool },
    AdamW { beta1: f32, beta2: f32, epsilon: f32 },
    Lamb { beta1: f32, beta2: f32, epsilon: f32 },
}

/// What the convolutions' matrix products compute in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    Float32,
    /// bfloat16 operands, float32 sums (mixed precision; weights, activations and optimizer state
    /// stay float32): about twice the products' speed on CPUs with AVX-512-BF16. Elsewhere the run
    /// computes in float32 and says so in its log.
    Bfloat16,
}

impl Precision {
    /// What a run asking for this precision computes in on this CPU.
    pub fn effective(self) -> Precision {
        match self {
            Precision::Bfloat16 if deeptune_kernels::bf16::supported() => Precision::Bfloat16,
            _ => Precision::Float32,
        }
    }
}

/// Everything that decides what a run computes. Same config, data and seed: same weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub architecture: Architecture,
    pub num_classes: usize,
    pub image_size: usize,
    pub normalization: Normalization,
    pub batch_size: usize,
    /// Micro-batches per optimizer step (gradient accumulation when a batch does not fit).
    pub accumulation_steps: usize,
    pub num_epochs: usize,
    pub optimizer: OptimizerKind,
    pub per_item_lrate: f64,
    pub per_item_min_lrate: f64,
    pub warmup_iters: u64,
    pub warmup_ratio: f64,
    /// Decoupled (AdamW, LAMB) or L2 (SGD) weight decay; never applied to norm layers and biases.
    pub weight_decay: f64,
    pub label_smoothing: f64,
    /// Softmax cross-entropy when true (one concept per input), sigmoid BCE otherwise.
    pub mutually_exclusive: bool,
    pub class_weights: Option<Vec<f32>>,
    /// Sample inputs with probabilities that equalise the concepts (with replacement).
    pub balanced_sampler: bool,
    /// Transfer learning: only the new head trains.
    pub freeze_backbone: bool,
    /// The backbone's learning rate as a multiple of the head's (1 = the same).
    pub backbone_lr_multiplier: f64,
    pub seed: u64,
    pub flip_probability: f32,
    pub flip_direction: crate::data::FlipDirection,
    /// RandAugment (ops per image, magnitude 0–10 and its standard deviation); None disables.
    pub rand_augment: Option<(usize, f32, f32)>,
    pub crop_scale: (f32, f32),
    pub checkpoint_every_steps: u64,
    pub keep_last_checkpoints: usize,
    pub workers: usize,
    /// Absent in configs saved before it existed: float32.
    #[serde(default)]
    pub precision: Precision,
}

impl TrainConfig {
    pub fn steps_per_epoch(&self, train_len: usize) -> u64 {
        train_len.div_ceil(self.batch_size) as u64
    }
}

/// Emitted after each optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepEvent {
    pub epoch: u64,
    pub step: u64,
    pub total_steps: u64,
    pub loss: f64,
    pub learning_rate: f64,
    pub images_per_second: f64,
    pub eta_seconds: f64,
}

/// Emitted after each epoch's validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochEvent {
    pub epoch: u64,
    pub step: u64,
    pub train_loss: f64,
    pub validation_loss: Option<f64>,
    pub validation_accuracy: Option<f64>,
}

/// Where progress goes: the worker logs and streams it; tests collect it.
pub trait ProgressSink: Send + Sync {
    fn on_step(&self, _event: &StepEvent) {}
    fn on_epoch(&self, _event: &EpochEvent) {}
    /// An input that could not be read or decoded; it was skipped.
    fn on_bad_sample(&self, _id: &str, _reason: &str) {}
    fn on_message(&self, _message: &str) {}
}

/// A sink that drops everything.
pub struct NoProgress;
impl ProgressSink for NoProgress {}

/// Asks a run to stop after the step in progress (leaving a checkpoint).
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_canceled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Pretrained(#[from] PretrainedError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("cannot restore the checkpoint: {0}")]
    Restore(String),
    #[error("no usable training data: {0}")]
    NoData(String),
    /// The operating system refused the run's threads (not the run's fault: try again).
    #[error("cannot start the training threads: {0}")]
    Threads(String),
}

// Returned once per run; boxing the model would only add a dereference.
#[allow(clippy::large_enum_variant)]
pub enum TrainOutcome {
    /// Training ran to the end; the model is in evaluation mode.
    Finished { model: Classifier, cursor: Cursor },
    /// Canceled; the last checkpoint holds the state.
    Canceled { cursor: Cursor },
    /// Stopped by `stop_after_steps` (tests of crash and resume).
    Stopped { cursor: Cursor },
}

/// What to train on and where to keep checkpoints.
pub struct TrainRun {
    pub config: TrainConfig,
    pub train: Arc<dyn DataSource>,
    pub validation: Option<Arc<dyn DataSource>>,
    pub checkpoints: PathBuf,
    /// Pretrained weights for the backbone (the head is always fresh).
    pub pretrained: Option<PathBuf>,
    /// Load the checkpoint's classification head too: continuing a trained model on the same
    /// concepts (its head has exactly this run's outputs).
    pub pretrained_head: bool,
    /// Stop (as a crash would) after this many optimizer steps, right after checkpointing.
    pub stop_after_steps: Option<u64>,
}

/// splitmix64: independent, reproducible seeds for each epoch and step.
fn mix(seed: u64, salt: u64) -> u64 {
    let mut z = seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The sample order of an epoch: a seeded shuffle, or a seeded class-balanced draw.
fn epoch_order(source: &dyn DataSource, config: &TrainConfig, epoch: u64) -> Vec<usize> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(mix(config.seed, 1_000_003 + epoch));
    let n = source.len();
    if !config.balanced_sampler {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        return order;
    }
    // Weight each input by the inverse frequency of its rarest positive concept.
    let labels: Vec<Vec<f32>> = (0..n).map(|i| source.labels(i)).collect();
    let mut counts = vec![0usize; config.num_classes];
    for l in &labels {
        for (c, &v) in l.iter().enumerate() {
            if v > 0.5 {
                counts[c] += 1;
            }
        }
    }
    let weights: Vec<f64> = labels
        .iter()
        .map(|l| {
            l.iter()
                .enumerate()
                .filter(|(_, v)| **v > 0.5)
                .map(|(c, _)| 1.0 / counts[c] as f64)
                .fold(0.0, f64::max)
                .max(1.0 / n as f64)
        })
        .collect();
    let dist = rand::distr::weighted::WeightedIndex::new(&weights).expect("positive weights");
    use rand::distr::Distribution;
    (0..n).map(|_| dist.sample(&mut rng)).collect()
}

/// How a batch's loss is computed.
#[derive(Debug, Clone, Copy)]
pub struct LossOptions<'a> {
    pub mutually_exclusive: bool,
    pub label_smoothing: f64,
    pub class_weights: Option<&'a [f32]>,
}

impl TrainConfig {
    fn loss_options(&self) -> LossOptions<'_> {
        LossOptions {
            mutually_exclusive: self.mutually_exclusive,
            label_smoothing: self.label_smoothing,
            class_weights: self.class_weights.as_deref(),
        }
    }
}

/// The loss of a batch. `labels` is N×C (1 positive, 0 negative).
pub fn loss(config: LossOptions<'_>, logits: Tensor<2>, labels: &[f32], device: &Device) -> Tensor<1> {
    let [n, c] = logits.dims();
    if config.mutually_exclusive {
        let targets: Vec<i64> = labels
            .chunks(c)
            .map(|row| {
                row.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as i64
            })
            .collect();
        let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [n]), device);
        let mut ce = CrossEntropyLossConfig::new();
        if config.label_smoothing > 0.0 {
            ce = ce.with_smoothing(Some(config.label_smoothing as f32));
        }
        if let Some(weights) = config.class_weights {
            ce = ce.with_weights(Some(weights.to_vec()));
        }
        return ce.init(device).forward(logits, targets);
    }
    // Sigmoid BCE on logits, in the stable form max(z,0) − z·y + log(1 + e^−|z|).
    let smoothing = config.label_smoothing as f32;
    let smoothed: Vec<f32> = labels.iter().map(|&y| y * (1.0 - smoothing) + 0.5 * smoothing).collect();
    let y = Tensor::<2>::from_data(TensorData::new(smoothed, [n, c]), device);
    let z = logits;
    let mut per = z.clone().clamp_min(0.0) - z.clone() * y + z.abs().neg().exp().add_scalar(1.0).log();
    if let Some(weights) = config.class_weights {
        let w = Tensor::<1>::from_data(TensorData::new(weights.to_vec(), [c]), device).reshape([1, c]);
        per = per * w;
    }
    per.mean()
}

/// An optimizer whose learning rate is a fixed multiple of the schedule's (for a backbone that
/// learns more slowly than the new head).
#[derive(Clone)]
struct ScaledLr<O> {
    inner: O,
    factor: f64,
}

impl<O: Optimizer> Optimizer for ScaledLr<O> {
    type State<const D: usize> = O::State<D>;

    fn step<const D: usize>(
        &self,
        lr: f64,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        self.inner.step(lr * self.factor, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        O::to_device(state, device)
    }
}

/// The optimizer with its parameter groups: no weight decay on norm layers, biases, class
/// tokens and position embeddings (as timm and MMPretrain), and the backbone's learning-rate
/// multiplier.
fn build_optimizer(config: &TrainConfig, model: &Classifier) -> ModuleOptimizer {
    let no_decay = |key: &str, rank: usize| rank <= 1 || key.ends_with("class_token") || key.ends_with("pos_embedding");
    let factor = config.backbone_lr_multiplier;
    let group = |backbone: bool, decay: bool| {
        ParamGroup::from_ids(param_ids_where(model, |key, rank| {
            head_key(key) != backbone && no_decay(key, rank) != decay
        }))
    };
    // (group, learning-rate factor, weight decay); the head with decay is the fallback.
    let groups = [
        (group(true, true), factor, config.weight_decay),
        (group(false, false), 1.0, 0.0),
        (group(true, false), factor, 0.0),
    ];
    fn assemble<O: Optimizer>(
        make: impl Fn(f64) -> O,
        head_decay: f64,
        groups: [(ParamGroup, f64, f64); 3],
    ) -> ModuleOptimizer {
        let mut optim = ModuleOptimizer::from(ScaledLr { inner: make(head_decay), factor: 1.0 });
        for (group, factor, decay) in groups {
            optim = optim.with_group(group, ScaledLr { inner: make(decay), factor }, None);
        }
        optim
    }
    let decay = config.weight_decay;
    match config.optimizer {
        OptimizerKind::Sgd { momentum, nesterov } => assemble(
            |wd| FusedSgd {
                weight_decay: (wd > 0.0).then_some(wd as f32),
                momentum: Some((momentum as f32, 0.0, nesterov)),
            },
            decay,
            groups,
        ),
        OptimizerKind::AdamW { beta1, beta2, epsilon } => {
            assemble(|wd| FusedAdamW { beta_1: beta1, beta_2: beta2, epsilon, weight_decay: wd as f32 }, decay, groups)
        }
        OptimizerKind::Lamb { beta1, beta2, epsilon } => assemble(
            |wd| FusedLamb { beta_1: beta1, beta_2: beta2, epsilon, weight_decay: wd as f32, use_trust_ratio: true },
            decay,
            groups,
        ),
    }
}

fn head_key(key: &str) -> bool {
    Classifier::head_prefixes().iter().any(|p| key.starts_with(p))
}

fn batch_tensor(images: Vec<f32>, shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(images, shape), device)
}

/// burn's CPU backend has one random generator per process, which dropout and stochastic depth
/// draw from; two runs interleaving their draws would make both irreproducible. So a process
/// trains one run at a time (a worker is CPU-bound anyway); others wait here.
static ONE_RUN_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Trains (or resumes) a run to its end, a cancel, or `stop_after_steps`.
pub fn train(run: TrainRun, sink: &dyn ProgressSink, cancel: &CancelToken) -> Result<TrainOutcome, TrainError> {
    let _exclusive = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    train_exclusive(run, sink, cancel)
}

/// [`train`], for a caller that holds `ONE_RUN_AT_A_TIME` (a run, or a calibration): on a thread
/// pool of its own, as many threads as the process's, whose products compute in the run's
/// precision — predictions the same process serves meanwhile, on other threads, keep theirs.
fn train_exclusive(run: TrainRun, sink: &dyn ProgressSink, cancel: &CancelToken) -> Result<TrainOutcome, TrainError> {
    let wanted = run.config.precision == Precision::Bfloat16;
    let (pool, bfloat16) = deeptune_kernels::bf16::pool(wanted).map_err(|e| TrainError::Threads(e.to_string()))?;
    if bfloat16 != wanted {
        sink.on_message("precision bfloat16 asked for, but this CPU has no AVX-512-BF16: training in float32");
    }
    let outcome = pool.install(|| train_on_this_pool(run, sink, cancel));
    // The run's evaluations kept packed filters of weights it has dropped since.
    deeptune_kernels::drop_unused_prepared_filters();
    outcome
}

fn train_on_this_pool(
    run: TrainRun,
    sink: &dyn ProgressSink,
    cancel: &CancelToken,
) -> Result<TrainOutcome, TrainError> {
    let config = &run.config;
    if config.batch_size == 0
        || config.accumulation_steps == 0
        || !config.batch_size.is_multiple_of(config.accumulation_steps)
    {
        return Err(TrainError::Config(format!(
            "batch_size {} must be a positive multiple of accumulation_steps {}",
            config.batch_size, config.accumulation_steps
        )));
    }
    if run.train.is_empty() {
        return Err(TrainError::NoData("the training split is empty".into()));
    }
    let device = Device::flex().autodiff();
    let steps_per_epoch = config.steps_per_epoch(run.train.len());
    let total_steps = steps_per_epoch * config.num_epochs as u64;
    let schedule = LrSchedule::per_item(
        config.batch_size,
        config.per_item_lrate,
        config.per_item_min_lrate,
        config.warmup_iters,
        config.warmup_ratio,
        total_steps,
    );
    let checkpoints = CheckpointDir::new(&run.checkpoints)?;

    // A fresh model (pretrained backbone, new head), or the state of the last checkpoint.
    device.seed(config.seed);
    let mut model = config.architecture.build(config.num_classes, &device);
    let latest = checkpoints.latest()?;
    let (mut cursor, optimizer_bytes) = match latest {
        Some((model_bytes, optimizer_bytes, cursor)) => {
            let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(model_bytes))
                .map_err(|e| TrainError::Restore(format!("model: {e:?}")))?;
            model = model.try_load_record(record).map_err(|e| TrainError::Restore(format!("model: {e:?}")))?;
            sink.on_message(&format!("resuming from step {} (epoch {})", cursor.global_step, cursor.epoch + 1));
            (cursor, Some(optimizer_bytes))
        }
        None => {
            if let Some(path) = &run.pretrained {
                let (loaded, report) = if run.pretrained_head {
                    crate::pretrained::load_checkpoint(model, path, &crate::torch::KeysAllowedToDiffer::none())?
                } else {
                    load_backbone(model, path)?
                };
                sink.on_message(&format!("loaded {} pretrained tensors from {}", report.loaded, path.display()));
                model = loaded;
            }
            let cursor = Cursor {
                global_step: 0,
                epoch: 0,
                batch_in_epoch: 0,
                best_accuracy: None,
                best_step: None,
                history: Vec::new(),
            };
            (cursor, None)
        }
    };
    if config.freeze_backbone {
        model = freeze_where(model, |key| !head_key(key));
    }
    let mut optim = build_optimizer(config, &model);
    if let Some(bytes) = optimizer_bytes {
        optim = optim
            .from_bytes(Bytes::from_bytes_vec(bytes))
            .map_err(|e| TrainError::Restore(format!("optimizer: {e:?}")))?;
    }

    let save = |model: &Classifier, optim: &ModuleOptimizer, cursor: &Cursor| -> Result<(), TrainError> {
        // `valid()` folds the running statistics of the last forwards into the record (burn keeps
        // them per thread until synced); ids are kept, so optimizer state still matches.
        let model_bytes = model
            .valid()
            .into_record()
            .into_bytes()
            .map_err(|e| TrainError::Restore(format!("model record: {e:?}")))?;
        let optimizer_bytes =
            optim.into_bytes().map_err(|e| TrainError::Restore(format!("optimizer record: {e:?}")))?;
        checkpoints.write(&model_bytes, &optimizer_bytes, cursor)?;
        checkpoints.prune(config.keep_last_checkpoints, cursor.best_step)?;
        Ok(())
    };

    let train_transform = TrainTransform {
        size: config.image_size,
        scale: config.crop_scale,
        ratio: (3.0 / 4.0, 4.0 / 3.0),
        flip_probability: config.flip_probability,
        flip: config.flip_direction,
        rand_augment: config.rand_augment.map(|(num_ops, magnitude, magnitude_std)| crate::data::RandAugment {
            num_ops,
            magnitude,
            magnitude_std,
        }),
        normalization: config.normalization,
    };
    let started = Instant::now();
    let start_step = cursor.global_step;
    let micro = config.batch_size / config.accumulation_steps;

    while cursor.epoch < config.num_epochs as u64 {
        let epoch = cursor.epoch;
        let order = epoch_order(run.train.as_ref(), config, epoch);
        let loader_config = LoaderConfig {
            start_batch: cursor.batch_in_epoch as usize,
            ..LoaderConfig::new(config.batch_size, config.workers, mix(config.seed, 2_000_003 + epoch))
        };
        let mut loader = Loader::new(run.train.clone(), order, Transform::Train(train_transform), loader_config);
        let mut epoch_loss_sum = 0.0;
        let mut epoch_batches = 0u64;
        while let Some(batch) = loader.next() {
            for bad in loader.take_bad_samples() {
                sink.on_bad_sample(&bad.id, &bad.reason);
            }
            let [n, _, h, w] = batch.shape;
            cursor.batch_in_epoch = batch.index as u64 + 1;
            if n < 2 {
                // A BatchNorm cannot train on one image; the leftover sample waits for the next epoch.
                continue;
            }
            let lr = schedule.at(cursor.global_step);
            // Dropout and stochastic depth draw from the device RNG: reseeding per step makes
            // them a function of (seed, step), so a resumed run draws what the original would.
            device.seed(mix(config.seed, cursor.global_step));
            let classes = config.num_classes;
            let mut accumulator = GradientsAccumulator::<Classifier>::new();
            let mut step_loss = 0.0;
            let mut offset = 0;
            while offset < n {
                let m = micro.min(n - offset);
                let images = batch.images[offset * 3 * h * w..(offset + m) * 3 * h * w].to_vec();
                let labels = &batch.labels[offset * classes..(offset + m) * classes];
                let logits = model.forward(batch_tensor(images, [m, 3, h, w], &device));
                let l = loss(config.loss_options(), logits, labels, &device).mul_scalar(m as f64 / n as f64);
                step_loss += l.clone().into_scalar::<f32>() as f64;
                let grads = GradientsParams::from_grads(l.backward(), &model);
                accumulator.accumulate(&model, grads);
                offset += m;
            }
            model = optim.step(lr, model, accumulator.grads());
            cursor.global_step += 1;
            epoch_loss_sum += step_loss;
            epoch_batches += 1;

            let elapsed = started.elapsed().as_secs_f64();
            let done = (cursor.global_step - start_step) as f64;
            let per_step = elapsed / done.max(1.0);
            sink.on_step(&StepEvent {
                epoch,
                step: cursor.global_step,
                total_steps,
                loss: step_loss,
                learning_rate: lr,
                images_per_second: done * config.batch_size as f64 / elapsed.max(1e-9),
                eta_seconds: per_step * total_steps.saturating_sub(cursor.global_step) as f64,
            });

            let stop_now = run.stop_after_steps == Some(cursor.global_step);
            if cancel.is_canceled() || stop_now || cursor.global_step % config.checkpoint_every_steps.max(1) == 0 {
                save(&model, &optim, &cursor)?;
            }
            if cancel.is_canceled() {
                sink.on_message(&format!("canceled after step {}", cursor.global_step));
                return Ok(TrainOutcome::Canceled { cursor });
            }
            if stop_now {
                return Ok(TrainOutcome::Stopped { cursor });
            }
        }
        for bad in loader.take_bad_samples() {
            sink.on_bad_sample(&bad.id, &bad.reason);
        }
        drop(loader);

        // Validation, then the epoch-end checkpoint.
        let (validation_loss, validation_accuracy) = match &run.validation {
            Some(source) if !source.is_empty() => {
                let (l, a) = validate(&model, source.clone(), config, sink);
                (Some(l), Some(a))
            }
            _ => (None, None),
        };
        let event = EpochEvent {
            epoch,
            step: cursor.global_step,
            train_loss: if epoch_batches > 0 { epoch_loss_sum / epoch_batches as f64 } else { f64::NAN },
            validation_loss,
            validation_accuracy,
        };
        sink.on_epoch(&event);
        cursor.history.push(event);
        if let Some(accuracy) = validation_accuracy
            && cursor.best_accuracy.is_none_or(|best| accuracy > best)
        {
            cursor.best_accuracy = Some(accuracy);
            cursor.best_step = Some(cursor.global_step);
        }
        cursor.epoch += 1;
        cursor.batch_in_epoch = 0;
        save(&model, &optim, &cursor)?;
    }
    Ok(TrainOutcome::Finished { model: model.valid(), cursor })
}

/// Probabilities from logits: softmax for mutually exclusive concepts, sigmoid otherwise.
pub fn probabilities(logits: Tensor<2>, mutually_exclusive: bool) -> Tensor<2> {
    if mutually_exclusive {
        burn::tensor::activation::softmax(logits, 1)
    } else {
        burn::tensor::activation::sigmoid(logits)
    }
}

/// Runs a model in evaluation mode over a source; returns (probabilities N×C, labels N×C, ids).
pub fn predict_source(
    model: &Classifier,
    source: Arc<dyn DataSource>,
    transform: EvalTransform,
    mutually_exclusive: bool,
    batch_size: usize,
    workers: usize,
    sink: &dyn ProgressSink,
) -> (Vec<f32>, Vec<f32>, Vec<String>, f64) {
    let device = Device::flex();
    let model = model.valid();
    let order: Vec<usize> = (0..source.len()).collect();
    let mut loader = Loader::new(source, order, Transform::Eval(transform), LoaderConfig::new(batch_size, workers, 0));
    let (mut probs, mut labels, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    let mut loss_sum = 0.0;
    while let Some(batch) = loader.next() {
        for bad in loader.take_bad_samples() {
            sink.on_bad_sample(&bad.id, &bad.reason);
        }
        let logits = model.forward(batch_tensor(batch.images, batch.shape, &device));
        let [n, c] = logits.dims();
        let options = LossOptions { mutually_exclusive, label_smoothing: 0.0, class_weights: None };
        loss_sum += loss(options, logits.clone(), &batch.labels, &device).into_scalar::<f32>() as f64 * n as f64;
        let p =
            probabilities(logits, mutually_exclusive).into_data().convert::<f32>().try_into_vec::<f32>().expect("f32");
        debug_assert_eq!(p.len(), n * c);
        probs.extend(p);
        labels.extend(batch.labels);
        ids.extend(batch.sample_ids);
    }
    for bad in loader.take_bad_samples() {
        sink.on_bad_sample(&bad.id, &bad.reason);
    }
    let count = ids.len().max(1) as f64;
    (probs, labels, ids, loss_sum / count)
}

/// Validation loss and top-1 accuracy (for multi-label: the top concept is a positive).
fn validate(
    model: &Classifier,
    source: Arc<dyn DataSource>,
    config: &TrainConfig,
    sink: &dyn ProgressSink,
) -> (f64, f64) {
    let transform = EvalTransform::new(config.image_size, config.normalization);
    let (probs, labels, ids, loss) =
        predict_source(model, source, transform, config.mutually_exclusive, config.batch_size, config.workers, sink);
    let c = config.num_classes;
    let correct = probs
        .chunks(c)
        .zip(labels.chunks(c))
        .filter(|(p, l)| {
            let top = p.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0;
            l[top] > 0.5
        })
        .count();
    (loss, correct as f64 / ids.len().max(1) as f64)
}
