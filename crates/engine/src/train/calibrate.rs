//! Measures how fast this machine trains and runs a configuration, with a few real training
//! steps on synthetic images: the basis of time estimates before a run starts.

use std::io::Cursor as IoCursor;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rand::{RngCore, SeedableRng};

use super::{CancelToken, ONE_RUN_AT_A_TIME, ProgressSink, StepEvent, TrainConfig, TrainError, TrainRun};
use crate::data::{DataSource, EvalTransform};
use crate::models::Architecture;

/// Images per second, training (forward, backward, optimizer step, data loading included) and
/// inference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    pub train_images_per_second: f64,
    pub infer_images_per_second: f64,
}

/// Noise JPEGs a little larger than the model's input, so decoding, cropping and resizing run
/// as they do on real photos.
struct NoiseImages {
    count: usize,
    side: u32,
    classes: usize,
}

impl DataSource for NoiseImages {
    fn len(&self) -> usize {
        self.count
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
    fn id(&self, index: usize) -> String {
        format!("calibration-{index}")
    }
    fn labels(&self, index: usize) -> Vec<f32> {
        (0..self.classes).map(|c| if c == index % self.classes { 1.0 } else { 0.0 }).collect()
    }
    fn bytes(&self, index: usize) -> Result<Vec<u8>, String> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(index as u64);
        let mut pixels = vec![0u8; (self.side * self.side * 3) as usize];
        rng.fill_bytes(&mut pixels);
        let image = image::RgbImage::from_raw(self.side, self.side, pixels).expect("buffer size");
        let mut out = IoCursor::new(Vec::new());
        image.write_to(&mut out, image::ImageFormat::Jpeg).map_err(|e| e.to_string())?;
        Ok(out.into_inner())
    }
}

struct StepTimes(Mutex<Vec<Instant>>);

impl ProgressSink for StepTimes {
    fn on_step(&self, _event: &StepEvent) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(Instant::now());
    }
}

/// Runs one warm-up and `timed_steps` training steps of `config` (pretrained weights don't
/// matter for speed), then times inference. `None` when a training run holds this process:
/// the two would share the CPU and burn's one random generator, spoiling both.
pub fn calibrate(config: &TrainConfig, timed_steps: usize) -> Result<Option<Calibration>, TrainError> {
    let _exclusive = match ONE_RUN_AT_A_TIME.try_lock() {
        Ok(guard) => guard,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return Ok(None),
    };
    let timed_steps = timed_steps.max(1);
    let mut config = config.clone();
    config.num_epochs = 1;
    config.checkpoint_every_steps = u64::MAX;
    config.keep_last_checkpoints = 1;
    let side = (config.image_size as u32 * 5).div_ceil(4);
    let images = config.batch_size * (timed_steps + 1);
    let source = Arc::new(NoiseImages { count: images, side, classes: config.num_classes });
    let scratch =
        std::env::temp_dir().join(format!("deeptune-calibration-{}-{}", std::process::id(), rand::random::<u64>()));
    let run = TrainRun {
        config: config.clone(),
        train: source.clone(),
        validation: None,
        checkpoints: scratch.join("checkpoints"),
        pretrained: None,
        pretrained_head: false,
        stop_after_steps: Some(timed_steps as u64 + 1),
    };
    let times = StepTimes(Mutex::new(Vec::new()));
    let outcome = super::train_exclusive(run, &times, &CancelToken::new());
    let _ = std::fs::remove_dir_all(&scratch);
    outcome?;
    let times = times.0.into_inner().unwrap_or_else(|p| p.into_inner());
    let (Some(first), Some(last)) = (times.first(), times.last()) else {
        return Err(TrainError::NoData("calibration ran no steps".into()));
    };
    let seconds = (*last - *first).as_secs_f64().max(1e-6);
    let train_images_per_second = ((times.len() - 1) * config.batch_size) as f64 / seconds;

    let infer_images_per_second = measure_inference(config.architecture, &config, source);
    Ok(Some(Calibration { train_images_per_second, infer_images_per_second }))
}

/// Inference speed over two batches, after one warm-up batch.
fn measure_inference(architecture: Architecture, config: &TrainConfig, source: Arc<NoiseImages>) -> f64 {
    let model = architecture.build(config.num_classes, &burn::prelude::Device::flex());
    let batch = config.batch_size.min(source.count);
    let transform = EvalTransform::new(config.image_size, config.normalization);
    let warm = Arc::new(NoiseImages { count: batch, ..*source });
    super::predict_source(
        &model,
        warm,
        transform,
        config.mutually_exclusive,
        batch,
        config.workers,
        &super::NoProgress,
    );
    let timed = Arc::new(NoiseImages { count: (2 * batch).min(source.count), ..*source });
    let started = Instant::now();
    super::predict_source(
        &model,
        timed.clone(),
        transform,
        config.mutually_exclusive,
        batch,
        config.workers,
        &super::NoProgress,
    );
    timed.count as f64 / started.elapsed().as_secs_f64().max(1e-6)
}

/// Names this machine for throughput records: CPU model, threads and backend.
pub fn hardware_fingerprint() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cpu} x{threads} flex")
}
