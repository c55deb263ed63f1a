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
pub fn remove_version_files(data_dir: &std::path::Path, version_id: &str) -> std::io::Result<()> {
    for dir in [data_dir.join("runs").join(version_id), data_dir.join("models").join(version_id)] {
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

impl Worker {
    /// Runs jobs until `shutdown` turns true. A job in progress at shutdown keeps its checkpoint
    /// and is resumed by the next worker to claim it.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
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
