//! Training as a user relies on it: reproducible from a seed, resumable bit for bit after a
//! crash, cancelable within a step with a usable checkpoint, tolerant of corrupt images — and
//! able to fine-tune real pretrained weights to a useful model.

use std::path::Path;
use std::sync::{Arc, Mutex};

use deeptune_engine::data::{DataSource, FlipDirection, Normalization};
use deeptune_engine::models::Architecture;
use deeptune_engine::torch::to_state_dict;
use deeptune_engine::train::{
    CancelToken, EpochEvent, OptimizerKind, Precision, ProgressSink, StepEvent, TrainConfig, TrainOutcome, TrainRun,
    train,
};
use deeptune_weights::{StateDict, Values};

/// Images with horizontal (class 0) or vertical (class 1) stripes, and optionally a corrupt one.
pub struct Stripes {
    images: Vec<(String, Vec<u8>, Vec<f32>)>,
}

impl Stripes {
    pub fn new(n: usize, corrupt: bool) -> Arc<Stripes> {
        let mut images = Vec::new();
        for i in 0..n {
            let class = i % 2;
            let phase = (i / 2) as u32;
            let img = image::RgbImage::from_fn(40, 40, |x, y| {
                let v = if class == 0 { (y + phase) / 4 % 2 } else { (x + phase) / 4 % 2 };
                let c = if v == 1 { 230 } else { 25 };
                image::Rgb([c, c, (c as u32 * (phase + 1) % 256) as u8])
            });
            let mut bytes = std::io::Cursor::new(Vec::new());
            img.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
            let mut labels = vec![0.0, 0.0];
            labels[class] = 1.0;
            images.push((format!("img-{i}"), bytes.into_inner(), labels));
        }
        if corrupt {
            images.push(("broken".into(), b"\x89PNG\r\n\x1a\nnot really".to_vec(), vec![1.0, 0.0]));
        }
        Arc::new(Stripes { images })
    }
}

impl DataSource for Stripes {
    fn len(&self) -> usize {
        self.images.len()
    }
    fn num_classes(&self) -> usize {
        2
    }
    fn id(&self, index: usize) -> String {
        self.images[index].0.clone()
    }
    fn labels(&self, index: usize) -> Vec<f32> {
        self.images[index].2.clone()
    }
    fn bytes(&self, index: usize) -> Result<Vec<u8>, String> {
        Ok(self.images[index].1.clone())
    }
}

pub fn config(seed: u64) -> TrainConfig {
    TrainConfig {
        architecture: Architecture::MobilenetV2,
        num_classes: 2,
        image_size: 32,
        normalization: Normalization::ImageNet,
        batch_size: 4,
        accumulation_steps: 1,
        num_epochs: 2,
        optimizer: OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, epsilon: 1e-8 },
        per_item_lrate: 2.5e-4,
        per_item_min_lrate: 1e-6,
        warmup_iters: 2,
        warmup_ratio: 0.1,
        weight_decay: 0.01,
        label_smoothing: 0.1,
        mutually_exclusive: true,
        class_weights: None,
        balanced_sampler: false,
        freeze_backbone: false,
        backbone_lr_multiplier: 1.0,
        seed,
        flip_probability: 0.5,
        flip_direction: FlipDirection::Horizontal,
        rand_augment: Some((2, 5.0, 0.5)),
        crop_scale: (0.5, 1.0),
        checkpoint_every_steps: 2,
        keep_last_checkpoints: 2,
        workers: 2,
        precision: Precision::Float32,
    }
}

#[derive(Default)]
pub struct Collect {
    steps: Mutex<Vec<StepEvent>>,
    epochs: Mutex<Vec<EpochEvent>>,
    bad: Mutex<Vec<(String, String)>>,
    cancel_at: Option<(u64, CancelToken)>,
}

impl ProgressSink for Collect {
    fn on_step(&self, event: &StepEvent) {
        self.steps.lock().unwrap().push(event.clone());
        if let Some((at, token)) = &self.cancel_at
            && event.step == *at
        {
            token.cancel();
        }
    }
    fn on_epoch(&self, event: &EpochEvent) {
        self.epochs.lock().unwrap().push(event.clone());
    }
    fn on_bad_sample(&self, id: &str, reason: &str) {
        self.bad.lock().unwrap().push((id.to_string(), reason.to_string()));
    }
}

pub fn run(
    config: TrainConfig,
    data: Arc<Stripes>,
    dir: &Path,
    stop_after: Option<u64>,
    sink: &Collect,
    cancel: &CancelToken,
) -> TrainOutcome {
    let run = TrainRun {
        config,
        train: data.clone(),
        validation: Some(Stripes::new(4, false)),
        checkpoints: dir.to_path_buf(),
        pretrained: None,
        pretrained_head: false,
        stop_after_steps: stop_after,
    };
    train(run, sink, cancel).unwrap()
}

fn weights(outcome: TrainOutcome) -> StateDict {
    match outcome {
        TrainOutcome::Finished { model, .. } => to_state_dict(&model),
        _ => panic!("the run did not finish"),
    }
}

fn assert_bit_identical(a: &StateDict, b: &StateDict) {
    assert_eq!(a.len(), b.len());
    for (key, ta) in a.iter() {
        let tb = b.get(key).unwrap();
        let (Values::Float(x), Values::Float(y)) = (&ta.values, &tb.values) else { continue };
        assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()), "{key} differs");
    }
}

#[test]
fn same_seed_same_weights_other_seed_other_weights() {
    let data = Stripes::new(12, false);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let sink = Collect::default();
    let a = weights(run(config(1), data.clone(), dirs[0].path(), None, &sink, &CancelToken::new()));
    let b = weights(run(config(1), data.clone(), dirs[1].path(), None, &sink, &CancelToken::new()));
    assert_bit_identical(&a, &b);
    let c = weights(run(config(2), data, dirs[2].path(), None, &sink, &CancelToken::new()));
    assert_ne!(a.get("classifier.1.weight").unwrap().values, c.get("classifier.1.weight").unwrap().values);
}

#[test]
fn a_run_stopped_mid_epoch_resumes_to_the_same_weights() {
    let data = Stripes::new(12, false);
    let whole = tempfile::tempdir().unwrap();
    let broken = tempfile::tempdir().unwrap();
    let sink = Collect::default();
    let uninterrupted = weights(run(config(3), data.clone(), whole.path(), None, &sink, &CancelToken::new()));
    // 3 steps per epoch: stop after step 4, in the middle of the second epoch.
    let stopped = run(config(3), data.clone(), broken.path(), Some(4), &sink, &CancelToken::new());
    let TrainOutcome::Stopped { cursor } = stopped else { panic!("expected a stop") };
    assert_eq!((cursor.global_step, cursor.epoch, cursor.batch_in_epoch), (4, 1, 1));
    let resumed = weights(run(config(3), data, broken.path(), None, &sink, &CancelToken::new()));
    assert_bit_identical(&uninterrupted, &resumed);
}

#[test]
fn cancel_stops_within_a_step_and_leaves_a_checkpoint_to_resume_from() {
    let data = Stripes::new(12, false);
    let dir = tempfile::tempdir().unwrap();
    let token = CancelToken::new();
    let sink = Collect { cancel_at: Some((1, token.clone())), ..Default::default() };
    let outcome = run(config(4), data.clone(), dir.path(), None, &sink, &token);
    let TrainOutcome::Canceled { cursor } = outcome else { panic!("expected a cancel") };
    assert_eq!(cursor.global_step, 1);
    assert_eq!(sink.steps.lock().unwrap().len(), 1, "no step after the cancel");
    let checkpoints: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(checkpoints.iter().any(|n| n.to_string_lossy() == "step-0000000001"), "{checkpoints:?}");
    let sink = Collect::default();
    let finished = run(config(4), data, dir.path(), None, &sink, &CancelToken::new());
    assert!(matches!(finished, TrainOutcome::Finished { .. }));
    assert_eq!(sink.steps.lock().unwrap().first().unwrap().step, 2, "resumed after the canceled step");
}

#[test]
fn a_corrupt_image_is_skipped_and_reported() {
    let data = Stripes::new(12, true);
    let dir = tempfile::tempdir().unwrap();
    let sink = Collect::default();
    let outcome = run(config(5), data, dir.path(), None, &sink, &CancelToken::new());
    let TrainOutcome::Finished { cursor, .. } = outcome else { panic!("the run did not finish") };
    // Checkpoints: the last two, plus the best by validation accuracy when it is older.
    let mut kept: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    let last = format!("step-{:010}", cursor.global_step);
    assert!(kept.contains(&last), "{kept:?}");
    let best = format!("step-{:010}", cursor.best_step.unwrap());
    assert!(kept.contains(&best), "{kept:?}");
    assert!(kept.len() <= 3 && kept.iter().all(|k| k.starts_with("step-")), "{kept:?}");
    let bad = sink.bad.lock().unwrap();
    assert!(!bad.is_empty() && bad.iter().all(|(id, _)| id == "broken"), "{bad:?}");
    assert!(!bad[0].1.is_empty());
    // Progress: one event per step with a learning rate and an ETA, and one per epoch.
    let steps = sink.steps.lock().unwrap();
    // 13 images in batches of 4: 4 batches an epoch, less any left with a single good image.
    assert!((6..=8).contains(&steps.len()), "{} steps", steps.len());
    assert!(steps.iter().all(|s| s.learning_rate > 0.0 && s.eta_seconds >= 0.0 && s.loss.is_finite()));
    assert_eq!(sink.epochs.lock().unwrap().len(), 2);
    assert!(sink.epochs.lock().unwrap().iter().all(|e| e.validation_accuracy.is_some()));
}
