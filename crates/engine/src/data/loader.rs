//! The prefetching loader: worker threads fetch, decode and augment whole batches ahead of the
//! training loop, which receives them in epoch order.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::decode::decode_rgb;
use super::transform::Transform;

/// Where samples come from: the worker reads the blob store, tests keep bytes in memory. Called
/// from several threads at once.
pub trait DataSource: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Length of every sample's label vector.
    fn num_classes(&self) -> usize;
    /// A stable name for the sample (shown to users when it is bad).
    fn id(&self, index: usize) -> String;
    /// Per-class targets: 1 for a positive, 0 for a negative or absent label.
    fn labels(&self, index: usize) -> Vec<f32>;
    /// The encoded image; `Err` with a reason when it can't be read.
    fn bytes(&self, index: usize) -> Result<Vec<u8>, String>;
}

/// A sample left out of its batch because it couldn't be read, decoded or transformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSample {
    /// Position in the epoch order.
    pub position: usize,
    /// Index in the data source.
    pub index: usize,
    pub id: String,
    pub reason: String,
}

/// Consecutive samples of the epoch order, ready for the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Which batch of the epoch this is (0-based): resume after it with `start_batch = index + 1`.
    pub index: usize,
    /// `N × 3 × H × W` floats, sample-major.
    pub images: Vec<f32>,
    /// `[N, 3, H, W]`.
    pub shape: [usize; 4],
    /// `N × num_classes` targets, sample-major.
    pub labels: Vec<f32>,
    pub num_classes: usize,
    pub sample_ids: Vec<String>,
    /// Each sample's position in the epoch order.
    pub positions: Vec<usize>,
}

impl Batch {
    /// Number of samples; below the batch size for the last batch and when samples were bad.
    pub fn len(&self) -> usize {
        self.shape[0]
    }

    pub fn is_empty(&self) -> bool {
        self.shape[0] == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Threads decoding and augmenting; at least one is used.
    pub workers: usize,
    /// Seeds every sample's augmentation together with its position in the epoch order.
    pub epoch_seed: u64,
    /// Batches of the epoch to skip without reading them, to resume mid-epoch.
    pub start_batch: usize,
    /// Batches prepared ahead of the consumer (memory bound); 0 means twice the workers.
    pub prefetch: usize,
}

impl LoaderConfig {
    pub fn new(batch_size: usize, workers: usize, epoch_seed: u64) -> LoaderConfig {
        LoaderConfig { batch_size, workers, epoch_seed, start_batch: 0, prefetch: 0 }
    }
}

/// The RNG that augments the sample at `position` of an epoch. It depends on nothing else, so
/// batches are identical whatever the number of workers or their scheduling, and a resumed epoch
/// sees the augmentations the interrupted one would have.
pub fn sample_rng(epoch_seed: u64, position: usize) -> ChaCha8Rng {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&epoch_seed.to_le_bytes());
    seed[8..16].copy_from_slice(&(position as u64).to_le_bytes());
    ChaCha8Rng::from_seed(seed)
}

/// Batches of one epoch, in order, prepared on worker threads. Iterate it; dropping it stops the
/// workers (after the sample each is on).
///
/// Batch `k` holds the samples at positions `k·batch_size .. (k+1)·batch_size` of the order,
/// minus bad ones, which [`Loader::take_bad_samples`] reports. A batch whose samples are all bad is
/// not yielded, so use [`Batch::index`] rather than counting batches.
pub struct Loader {
    shared: Arc<Shared>,
    results: Receiver<(usize, Prepared)>,
    ready: BTreeMap<usize, Prepared>,
    bad: Vec<BadSample>,
    next: usize,
    num_batches: usize,
    threads: Vec<JoinHandle<()>>,
}

struct Prepared {
    batch: Batch,
    bad: Vec<BadSample>,
}

/// What the consumer and the workers share.
struct Shared {
    source: Arc<dyn DataSource>,
    order: Vec<usize>,
    transform: Transform,
    config: LoaderConfig,
    num_classes: usize,
    window: usize,
    stop: AtomicBool,
    progress: Mutex<Progress>,
    wake: Condvar,
}

struct Progress {
    /// Next batch a worker will take.
    claimed: usize,
    /// Next batch the consumer will yield; workers stay within `window` batches of it.
    consumed: usize,
}

impl Loader {
    /// Starts the workers on `order` (indices into `source`, already shuffled by the caller).
    pub fn new(source: Arc<dyn DataSource>, order: Vec<usize>, transform: Transform, config: LoaderConfig) -> Loader {
        let batch_size = config.batch_size.max(1);
        let config = LoaderConfig { batch_size, workers: config.workers.max(1), ..config };
        let num_batches = order.len().div_ceil(batch_size);
        let start = config.start_batch.min(num_batches);
        let window = if config.prefetch == 0 { 2 * config.workers } else { config.prefetch };
        let num_classes = source.num_classes();
        let shared = Arc::new(Shared {
            source,
            order,
            transform,
            config,
            num_classes,
            window,
            stop: AtomicBool::new(false),
            progress: Mutex::new(Progress { claimed: start, consumed: start }),
            wake: Condvar::new(),
        });
        let (sender, results) = channel();
        let workers = config.workers.min(num_batches - start);
        let threads = (0..workers)
            .map(|i| {
                let shared = Arc::clone(&shared);
                let sender = sender.clone();
                std::thread::Builder::new()
                    .name(format!("deeptune-data-{i}"))
                    .spawn(move || work(&shared, &sender))
                    .expect("spawning a data loader thread")
            })
            .collect();
        Loader { shared, results, ready: BTreeMap::new(), bad: Vec::new(), next: start, num_batches, threads }
    }

    /// Batches in the whole epoch (including skipped ones and ones that end up empty).
    pub fn num_batches(&self) -> usize {
        self.num_batches
    }

    /// Samples left out of the batches yielded so far, in epoch order, since the last call.
    pub fn take_bad_samples(&mut self) -> Vec<BadSample> {
        std::mem::take(&mut self.bad)
    }
}

impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        while self.next < self.num_batches {
            let prepared = match self.ready.remove(&self.next) {
                Some(prepared) => prepared,
                None => match self.results.recv() {
                    Ok((index, prepared)) => {
                        self.ready.insert(index, prepared);
                        continue;
                    }
                    // Every worker is gone without delivering: nothing more will come.
                    Err(_) => return None,
                },
            };
            self.next += 1;
            lock(&self.shared.progress).consumed = self.next;
            self.shared.wake.notify_all();
            self.bad.extend(prepared.bad);
            if !prepared.batch.is_empty() {
                return Some(prepared.batch);
            }
        }
        None
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        {
            let _progress = lock(&self.shared.progress);
            self.shared.stop.store(true, Ordering::SeqCst);
        }
        self.shared.wake.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A poisoned lock only means another thread panicked while holding it; the counters inside
/// are still consistent.
fn lock(progress: &Mutex<Progress>) -> MutexGuard<'_, Progress> {
    progress.lock().unwrap_or_else(|e| e.into_inner())
}

fn work(shared: &Shared, sender: &Sender<(usize, Prepared)>) {
    let num_batches = shared.order.len().div_ceil(shared.config.batch_size);
    loop {
        let index = {
            let mut progress = lock(&shared.progress);
            loop {
                if shared.stop.load(Ordering::SeqCst) || progress.claimed >= num_batches {
                    return;
                }
                if progress.claimed < progress.consumed + shared.window {
                    break;
                }
                progress = shared.wake.wait(progress).unwrap_or_else(|e| e.into_inner());
            }
            progress.claimed += 1;
            progress.claimed - 1
        };
        let Some(prepared) = prepare(shared, index) else { return };
        if sender.send((index, prepared)).is_err() {
            return;
        }
    }
}

/// Builds batch `index`; `None` when the loader is being dropped.
fn prepare(shared: &Shared, index: usize) -> Option<Prepared> {
    let batch_size = shared.config.batch_size;
    let positions = index * batch_size..((index + 1) * batch_size).min(shared.order.len());
    let size = shared.transform.size();
    let num_classes = shared.num_classes;
    let mut batch = Batch {
        index,
        images: Vec::with_capacity(positions.len() * 3 * size * size),
        shape: [0, 3, size, size],
        labels: Vec::with_capacity(positions.len() * num_classes),
        num_classes,
        sample_ids: Vec::with_capacity(positions.len()),
        positions: Vec::with_capacity(positions.len()),
    };
    let mut bad = Vec::new();
    for position in positions {
        if shared.stop.load(Ordering::Relaxed) {
            return None;
        }
        let index = shared.order[position];
        let sample = catch_unwind(AssertUnwindSafe(|| load_sample(shared, position, index)));
        match sample {
            Ok(Ok((id, pixels, labels))) => {
                batch.images.extend_from_slice(&pixels);
                batch.labels.extend_from_slice(&labels);
                batch.sample_ids.push(id);
                batch.positions.push(position);
            }
            Ok(Err((id, reason))) => bad.push(BadSample { position, index, id, reason }),
            Err(panic) => {
                let id = catch_unwind(AssertUnwindSafe(|| shared.source.id(index))).unwrap_or_default();
                bad.push(BadSample { position, index, id, reason: format!("panicked: {}", panic_message(&panic)) });
            }
        }
    }
    batch.shape[0] = batch.sample_ids.len();
    Some(Prepared { batch, bad })
}

type Sample = (String, Vec<f32>, Vec<f32>);

/// Fetches, decodes and transforms one sample; the error carries its id and the reason.
fn load_sample(shared: &Shared, position: usize, index: usize) -> Result<Sample, (String, String)> {
    let source = &shared.source;
    if index >= source.len() {
        return Err((String::new(), format!("sample index {index} is outside the data source ({})", source.len())));
    }
    let id = source.id(index);
    let labels = source.labels(index);
    if labels.len() != shared.num_classes {
        let reason = format!("has {} label values, expected one per class ({})", labels.len(), shared.num_classes);
        return Err((id, reason));
    }
    let bytes = match source.bytes(index) {
        Ok(bytes) => bytes,
        Err(reason) => return Err((id, format!("could not be read: {reason}"))),
    };
    let image = match decode_rgb(&bytes) {
        Ok(image) => image,
        Err(e) => return Err((id, e.to_string())),
    };
    let pixels = shared.transform.apply(&image, &mut sample_rng(shared.config.epoch_seed, position));
    Ok((id, pixels, labels))
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}
