//! The worker: claims training jobs with a lease, trains through the engine while renewing the
//! lease and watching for cancel requests, and finalises the model version. Every state it needs
//! is in the store, the blob store and the data directory, so a job whose worker died is picked
//! up by another (or the same, restarted) worker and resumes from its last checkpoint.

pub mod estimate;
mod evaluate;
pub mod export;
pub mod pretrained;
mod run;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deeptune_blob::BlobStore;
use deeptune_store::Store;

pub use pretrained::{PretrainedWeightsError, ensure_pretrained, import_weights};
pub use run::train_config;

/// The job kinds this worker runs.
pub const TRAIN_JOB: &str = "train";
pub const EVALUATE_JOB: &str = "evaluate";

#[derive(Clone)]
pub struct Worker {
    pub store: Store,
    pub blobs: Arc<dyn BlobStore>,
    /// Where checkpoints, trained models and the weights cache live.
    pub data_dir: PathBuf,
    pub id: String,
    /// How long a claim lasts without a heartbeat; a crashed worker's job is retried after it.
    pub lease: Duration,
    /// How long to wait between polls of an empty queue.
    pub poll: Duration,
    /// Whether missing pretrained weights may be fetched from their published source.
    pub fetch_weights: bool,
}

impl Worker {
    pub fn new(store: Store, blobs: Arc<dyn BlobStore>, data_dir: PathBuf) -> Worker {
        Worker {
            store,
            blobs,
            data_dir,
            id: format!("worker-{}-{}", std::process::id(), deeptune_core::ids::generate_id()),
            lease: Duration::from_secs(60),
            poll: Duration::from_millis(500),
            fetch_weights: true,
        }
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.data_dir.join("runs")
    }

    pub fn models_dir(&self) -> PathBuf {
        self.data_dir.join("models")
    }
}

/// Removes a model version's files from the data directory: its checkpoints and its trained
/// model. Idempotent.
///
/// A worker may still be writing into the run directory when the version is deleted (it notices
/// the cancel within a step), so removing it in place can meet a file created meanwhile and fail
/// with "directory not empty". Each directory is first renamed aside, atomically, then removed:
/// nothing new lands in the renamed tree, and whatever the worker writes under the old name
/// afterwards it removes itself when it stops.
pub fn remove_version_files(data_dir: &std::path::Path, version_id: &str) -> std::io::Result<()> {
    for parent in [data_dir.join("runs"), data_dir.join("models")] {
        let dir = parent.join(version_id);
        let aside = parent.join(format!(".deleting-{version_id}-{}", unique_suffix()));
        match std::fs::rename(&dir, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        match std::fs::remove_dir_all(&aside) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Removes what interrupted deletions left behind: the `.deleting-*` directories that
/// [`remove_version_files`] renames a version's files to before removing them, when the process
/// stopped in between. Another process removing the same leftover meanwhile is fine (each entry
/// gone already counts as removed). Returns how many leftovers were removed.
pub fn sweep_deletion_leftovers(data_dir: &std::path::Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for parent in [data_dir.join("runs"), data_dir.join("models")] {
        let entries = match std::fs::read_dir(&parent) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            if !entry.file_name().to_string_lossy().starts_with(".deleting-") {
                continue;
            }
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// A name unique among concurrent deleters of the same version (API and worker, on any host
/// sharing the data directory).
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl Worker {
    /// Runs jobs until `shutdown` turns true. A job in progress at shutdown keeps its checkpoint
    /// and is resumed by the next worker to claim it.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let data_dir = self.data_dir.clone();
        match tokio::task::spawn_blocking(move || sweep_deletion_leftovers(&data_dir)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(leftovers = n, "removed the files of deletions a stop interrupted"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove the files of interrupted deletions"),
            Err(e) => tracing::warn!(error = %e, "the sweep of interrupted deletions panicked"),
        }
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.store.claim_job(&self.id, &[TRAIN_JOB, EVALUATE_JOB], self.lease).await {
                Ok(Some(job)) => {
                    tracing::info!(job = %job.id, kind = %job.kind, attempt = job.attempts, "claimed a job");
                    if job.kind == EVALUATE_JOB {
                        self.clone().evaluate(job).await;
                    } else {
                        self.clone().train(job, shutdown.clone()).await;
                    }
                }
                Ok(None) => {
                    tokio::select! {
                        _ = tokio::time::sleep(self.poll) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot claim jobs");
                    tokio::time::sleep(self.poll * 4).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use deeptune_engine::train::Precision;

    /// The template parameter `precision` reaches the engine's configuration (float32 unless
    /// asked), is checked against its options, and bfloat16 runs keep their own throughput
    /// measurements where the CPU has the instructions.
    #[test]
    fn the_precision_parameter_selects_bfloat16_runs() {
        let template = deeptune_core::templates::find_template("EfficientNet_Lite0").unwrap();
        let config = |given: serde_json::Value| {
            let mut given = given.as_object().unwrap().clone();
            let resolved =
                deeptune_core::templates::resolve_params(&template, &given).map_err(|e| e[0].reason.clone())?;
            given = resolved.into_iter().collect();
            given.insert("template".into(), "EfficientNet_Lite0".into());
            super::train_config(&given, 3, true, 100)
        };
        let float32 = config(serde_json::json!({})).unwrap();
        assert_eq!(float32.precision, Precision::Float32);
        let bfloat16 = config(serde_json::json!({"precision": "bfloat16"})).unwrap();
        assert_eq!(bfloat16.precision, Precision::Bfloat16);
        let wrong = config(serde_json::json!({"precision": "float16"})).unwrap_err();
        assert!(wrong.contains("float16"), "{wrong}");
        let (key32, key16) = (crate::estimate::throughput_key(&float32), crate::estimate::throughput_key(&bfloat16));
        assert_eq!(key32.hardware != key16.hardware, Precision::Bfloat16.effective() == Precision::Bfloat16);
    }

    /// Deleting a version while its worker is still writing checkpoints (it stops only at its
    /// next step) must not fail with "directory not empty", nor leave anything behind.
    #[test]
    fn version_files_are_removed_while_a_worker_still_writes_into_them() {
        let data_dir = std::env::temp_dir().join(format!("deeptune-remove-{}", super::unique_suffix()));
        let run = data_dir.join("runs").join("v1");
        std::fs::create_dir_all(data_dir.join("models").join("v1")).unwrap();
        std::fs::write(data_dir.join("models").join("v1").join("model.safetensors"), b"weights").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (run, stop) = (run.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let dir = run.join("checkpoints").join(format!("epoch-{}", n % 7));
                    if std::fs::create_dir_all(&dir).is_ok() {
                        let _ = std::fs::write(dir.join(format!("part-{n}")), b"tensor bytes");
                    }
                    n += 1;
                }
            })
        };
        for _ in 0..200 {
            while std::fs::read_dir(&run).map_or(true, |mut d| d.next().is_none()) {
                std::thread::yield_now();
            }
            super::remove_version_files(&data_dir, "v1").expect("removal races the writer");
            assert!(!data_dir.join("models").join("v1").exists());
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        super::remove_version_files(&data_dir, "v1").unwrap();
        super::remove_version_files(&data_dir, "v1").unwrap(); // idempotent
        let left: Vec<_> = ["runs", "models"]
            .iter()
            .flat_map(|p| std::fs::read_dir(data_dir.join(p)).unwrap().flatten().map(|e| e.path()))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        std::fs::remove_dir_all(&data_dir).unwrap();
    }

    /// A process stopped between renaming a deleted version's files aside and removing them
    /// leaves a `.deleting-*` directory; the next worker to start removes it, and nothing else.
    #[tokio::test]
    async fn a_starting_worker_removes_what_interrupted_deletions_left() {
        let data_dir = std::env::temp_dir().join(format!("deeptune-sweep-{}", super::unique_suffix()));
        let leftovers = [
            data_dir.join("runs").join(".deleting-v1-77-1-0"),
            data_dir.join("models").join(".deleting-v1-77-2-1"),
            data_dir.join("models").join(".deleting-v2-78-3-0"),
        ];
        for dir in &leftovers {
            std::fs::create_dir_all(dir.join("checkpoints")).unwrap();
            std::fs::write(dir.join("checkpoints").join("step-3.safetensors"), b"tensor bytes").unwrap();
        }
        let kept = [data_dir.join("runs").join("v3"), data_dir.join("models").join("v3")];
        for dir in &kept {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("model.safetensors"), b"weights").unwrap();
        }
        let store = deeptune_store::Store::open(&data_dir.join("meta.sqlite")).await.unwrap();
        let blobs = Arc::new(deeptune_blob::LocalBlobStore::open(data_dir.join("blobs")).unwrap());
        let worker = super::Worker::new(store, blobs, data_dir.clone());
        let (_stop, stopped) = tokio::sync::watch::channel(true); // stops right after starting
        worker.run(stopped).await;

        for dir in &leftovers {
            assert!(!dir.exists(), "{} was left behind", dir.display());
        }
        for dir in &kept {
            assert!(dir.join("model.safetensors").exists(), "{} was removed", dir.display());
        }
        assert_eq!(super::sweep_deletion_leftovers(&data_dir).unwrap(), 0);
        std::fs::remove_dir_all(&data_dir).unwrap();
    }
}
