//! The prefetching loader: order, determinism whatever the thread count, bad samples, resuming
//! mid-epoch and stopping.

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deeptune_engine::data::{
    Batch, DataSource, EvalTransform, FlipDirection, Loader, LoaderConfig, Normalization, RandAugment, TrainTransform,
    Transform,
};
use image::{Rgb, RgbImage};

const CLASSES: usize = 3;

/// Samples held in memory; `delay` slows every read down, `reads` counts them.
struct Memory {
    samples: Vec<(String, Result<Vec<u8>, String>, usize)>,
    delay: Duration,
    reads: AtomicUsize,
}

impl Memory {
    fn new(samples: Vec<(String, Result<Vec<u8>, String>, usize)>) -> Memory {
        Memory { samples, delay: Duration::ZERO, reads: AtomicUsize::new(0) }
    }
}

impl DataSource for Memory {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn num_classes(&self) -> usize {
        CLASSES
    }
    fn id(&self, index: usize) -> String {
        self.samples[index].0.clone()
    }
    fn labels(&self, index: usize) -> Vec<f32> {
        let mut labels = vec![0.0; CLASSES];
        labels[self.samples[index].2] = 1.0;
        labels
    }
    fn bytes(&self, index: usize) -> Result<Vec<u8>, String> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        if self.samples[index].0 == "panics" {
            panic!("the store fell over");
        }
        self.samples[index].1.clone()
    }
}

/// A distinct little PNG per sample, of varying size and aspect.
fn png(seed: u32) -> Vec<u8> {
    let (w, h) = (40 + seed % 17, 30 + seed % 23);
    let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 5 + seed * 11) as u8, (y * 7 + seed * 3) as u8, (x ^ y) as u8]));
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
    out
}

fn dataset(n: u32) -> Memory {
    Memory::new((0..n).map(|i| (format!("img-{i}"), Ok(png(i)), i as usize % CLASSES)).collect())
}

fn train_transform() -> Transform {
    Transform::Train(TrainTransform {
        flip: FlipDirection::Both,
        rand_augment: Some(RandAugment::default()),
        ..TrainTransform::new(24, Normalization::ImageNet)
    })
}

/// A shuffled-looking order, as the training loop would compute from its seed.
fn order(n: usize) -> Vec<usize> {
    (0..n).map(|i| (i * 7 + 3) % n).collect()
}

fn run(source: &Arc<Memory>, config: LoaderConfig) -> Vec<Batch> {
    let order = order(source.len());
    Loader::new(source.clone(), order, train_transform(), config).collect()
}

#[test]
fn batches_arrive_in_epoch_order_with_images_and_labels() {
    let source = Arc::new(dataset(10));
    let batches = run(&source, LoaderConfig::new(4, 2, 5));
    assert_eq!(batches.iter().map(|b| b.index).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(batches.iter().map(|b| b.shape).collect::<Vec<_>>(), [[4, 3, 24, 24], [4, 3, 24, 24], [2, 3, 24, 24]]);
    let ids: Vec<String> = batches.iter().flat_map(|b| b.sample_ids.clone()).collect();
    let expected: Vec<String> = order(10).into_iter().map(|i| format!("img-{i}")).collect();
    assert_eq!(ids, expected);
    for batch in &batches {
        assert_eq!(batch.images.len(), batch.len() * 3 * 24 * 24);
        assert_eq!(batch.num_classes, CLASSES);
        assert_eq!(batch.labels.len(), batch.len() * CLASSES);
        for (row, id) in batch.labels.chunks(CLASSES).zip(&batch.sample_ids) {
            let index: usize = id.trim_start_matches("img-").parse().unwrap();
            let mut expected = [0.0; CLASSES];
            expected[index % CLASSES] = 1.0;
            assert_eq!(row, expected, "{id}");
        }
    }
}

#[test]
fn the_same_seed_gives_identical_batches_with_any_number_of_workers() {
    let source = Arc::new(dataset(23));
    let one = run(&source, LoaderConfig::new(5, 1, 42));
    let three = run(&source, LoaderConfig::new(5, 3, 42));
    assert_eq!(one.len(), 5);
    assert!(one == three, "batches differ between 1 and 3 workers");
    let again = run(&source, LoaderConfig { prefetch: 1, ..LoaderConfig::new(5, 3, 42) });
    assert!(one == again);

    let other_seed = run(&source, LoaderConfig::new(5, 3, 43));
    assert_eq!(other_seed[0].sample_ids, one[0].sample_ids, "the order is the caller's");
    assert_ne!(other_seed[0].images, one[0].images, "another seed augments differently");
}

#[test]
fn bad_samples_are_skipped_and_reported_while_the_rest_arrive() {
    let mut samples: Vec<_> = (0..8).map(|i| (format!("img-{i}"), Ok(png(i)), 0)).collect();
    samples[2] = ("truncated".into(), Ok(png(2)[..50].to_vec()), 0);
    samples[5] = ("missing".into(), Err("blob not found".into()), 1);
    samples[6] = ("text".into(), Ok(b"not an image".to_vec()), 2);
    samples[7] = ("panics".into(), Ok(png(7)), 2);
    let source: Arc<dyn DataSource> = Arc::new(Memory::new(samples));
    let order: Vec<usize> = (0..8).collect();
    let mut loader = Loader::new(source, order, train_transform(), LoaderConfig::new(3, 2, 9));

    let first = loader.next().unwrap();
    assert_eq!(first.sample_ids, ["img-0", "img-1"]);
    assert_eq!(first.shape[0], 2);
    assert_eq!(first.images.len(), 2 * 3 * 24 * 24);
    let bad = loader.take_bad_samples();
    assert_eq!(bad.len(), 1);
    assert_eq!((bad[0].id.as_str(), bad[0].index, bad[0].position), ("truncated", 2, 2));
    assert!(bad[0].reason.contains("png"), "{}", bad[0].reason);

    let second = loader.next().unwrap();
    assert_eq!(second.sample_ids, ["img-3", "img-4"]);
    let bad = loader.take_bad_samples();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].id, "missing");
    assert!(bad[0].reason.contains("blob not found"), "{}", bad[0].reason);

    // The last batch has only bad samples: it is not yielded, but its samples are reported.
    assert!(loader.next().is_none());
    let bad = loader.take_bad_samples();
    assert_eq!(bad.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), ["text", "panics"]);
    assert!(bad[0].reason.contains("not a JPEG"), "{}", bad[0].reason);
    assert!(bad[1].reason.contains("the store fell over"), "{}", bad[1].reason);
}

#[test]
fn start_batch_resumes_exactly_where_an_interrupted_epoch_was() {
    let source = Arc::new(dataset(20));
    let full = run(&source, LoaderConfig::new(3, 2, 77));
    assert_eq!(full.len(), 7);
    let reads_before = source.reads.load(Ordering::SeqCst);
    let resumed = run(&source, LoaderConfig { start_batch: 4, ..LoaderConfig::new(3, 3, 77) });
    assert!(resumed == full[4..], "resumed batches differ");
    assert_eq!(resumed[0].index, 4);
    // Skipped batches are not read.
    assert_eq!(source.reads.load(Ordering::SeqCst) - reads_before, 20 - 4 * 3);

    let past_the_end = run(&source, LoaderConfig { start_batch: 7, ..LoaderConfig::new(3, 2, 77) });
    assert!(past_the_end.is_empty());
}

#[test]
fn eval_transform_batches_are_the_eval_transform_of_each_image() {
    let source = Arc::new(dataset(5));
    let eval = EvalTransform::new(32, Normalization::MinusOneToOne127);
    let order: Vec<usize> = (0..5).collect();
    let batches: Vec<Batch> =
        Loader::new(source.clone(), order, Transform::Eval(eval), LoaderConfig::new(5, 2, 0)).collect();
    assert_eq!(batches.len(), 1);
    let per_image = 3 * 32 * 32;
    let third = deeptune_engine::data::decode_rgb(&png(2)).unwrap();
    assert_eq!(batches[0].images[2 * per_image..3 * per_image], eval.apply(&third));
}

#[test]
fn dropping_the_loader_stops_its_workers_promptly() {
    let mut source = dataset(200);
    source.delay = Duration::from_millis(20);
    let source = Arc::new(source);
    let dyn_source: Arc<dyn DataSource> = source.clone();
    let mut loader = Loader::new(dyn_source, (0..200).collect(), train_transform(), LoaderConfig::new(4, 2, 1));
    assert!(loader.next().is_some());
    let started = Instant::now();
    drop(loader);
    assert!(started.elapsed() < Duration::from_secs(1), "drop took {:?}", started.elapsed());
    let reads = source.reads.load(Ordering::SeqCst);
    // Two workers, at most 2 × workers batches ahead of the consumer.
    assert!(reads <= 4 * (1 + 4 + 2), "{reads} samples read ahead");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(source.reads.load(Ordering::SeqCst), reads, "workers kept reading after the drop");
}

#[test]
fn an_empty_order_yields_nothing() {
    let source: Arc<dyn DataSource> = Arc::new(dataset(3));
    let mut loader = Loader::new(source, Vec::new(), train_transform(), LoaderConfig::new(4, 2, 1));
    assert_eq!(loader.num_batches(), 0);
    assert!(loader.next().is_none());
}
