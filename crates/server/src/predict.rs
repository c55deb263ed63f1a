//! Serving predictions: a trained version is loaded once and kept while memory allows (least
//! recently used out first), and the requests that arrive for it while it is busy, or within a
//! few milliseconds of each other, run as one batch. Each loaded version has a bounded queue:
//! when it is full the request is turned away (503 with Retry-After) instead of piling up.
//!
//! This is a cache only: any server process can load any version from its artifact.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use deeptune_engine::artifact::{Prediction, Predictor};
use tokio::sync::{mpsc, oneshot};

/// Images per forward pass.
pub const MAX_BATCH_IMAGES: usize = 32;
/// How long the first request of a batch waits for company.
pub const BATCH_DELAY: Duration = Duration::from_millis(5);
/// Requests waiting per loaded version before new ones are turned away.
pub const QUEUE_REQUESTS: usize = 64;
/// Memory for loaded versions (their weights, which dominate).
pub const CACHE_BYTES: u64 = 2 << 30;

type Answer = Vec<Result<Prediction, String>>;

struct Request {
    images: Vec<Bytes>,
    reply: oneshot::Sender<Answer>,
}

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("the model is busy: {QUEUE_REQUESTS} requests are already waiting; retry in a moment")]
    Busy,
    #[error("the model could not run: {0}")]
    Failed(String),
}

/// A loaded version and its batching queue.
#[derive(Clone)]
pub struct LoadedModel {
    queue: mpsc::Sender<Request>,
    bytes: u64,
    /// Concept ids in output order.
    pub concepts: Vec<String>,
}

impl LoadedModel {
    fn start(predictor: Predictor, bytes: u64) -> LoadedModel {
        let concepts = predictor.manifest.concepts.clone();
        let (queue, requests) = mpsc::channel(QUEUE_REQUESTS);
        tokio::spawn(run_batches(predictor, requests));
        LoadedModel { queue, bytes, concepts }
    }

    /// Predicts `images` (encoded files); each result in order, an undecodable image failing alone.
    pub async fn predict(&self, images: Vec<Bytes>) -> Result<Answer, PredictError> {
        let (reply, answer) = oneshot::channel();
        self.queue.try_send(Request { images, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PredictError::Busy,
            mpsc::error::TrySendError::Closed(_) => PredictError::Failed("the model was unloaded".into()),
        })?;
        answer.await.map_err(|_| PredictError::Failed("the prediction thread stopped".into()))
    }
}

/// Takes requests off the queue in batches and runs them on a blocking thread.
async fn run_batches(mut predictor: Predictor, mut requests: mpsc::Receiver<Request>) {
    while let Some(first) = requests.recv().await {
        let mut images = first.images.len();
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while images < MAX_BATCH_IMAGES {
            match tokio::time::timeout_at(deadline, requests.recv()).await {
                Ok(Some(request)) => {
                    images += request.images.len();
                    batch.push(request);
                }
                _ => break,
            }
        }
        let all: Vec<Bytes> = batch.iter().flat_map(|r| r.images.iter().cloned()).collect();
        let ran = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(all.len());
            for chunk in all.chunks(MAX_BATCH_IMAGES) {
                let refs: Vec<&[u8]> = chunk.iter().map(|b| b.as_ref()).collect();
                out.extend(predictor.predict(&refs));
            }
            (predictor, out)
        })
        .await;
        let Ok((back, out)) = ran else {
            // A panic in the model: the waiting requests get an error (their senders drop) and
            // the version is loaded afresh by the next request.
            tracing::error!("a prediction panicked; unloading the model");
            return;
        };
        predictor = back;
        let mut out = out.into_iter();
        for request in batch {
            let answer: Answer = out.by_ref().take(request.images.len()).collect();
            let _ = request.reply.send(answer);
        }
    }
}

/// Loaded versions by artifact folder, least recently used first.
#[derive(Default)]
pub struct ModelCache {
    entries: Mutex<Vec<(PathBuf, LoadedModel)>>,
}

impl ModelCache {
    fn lookup(&self, dir: &PathBuf) -> Option<LoadedModel> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let at = entries.iter().position(|(d, m)| d == dir && !m.queue.is_closed())?;
        let entry = entries.remove(at);
        let model = entry.1.clone();
        entries.push(entry);
        Some(model)
    }

    /// The loaded model of the artifact in `dir`, loading it if needed.
    pub async fn get(&self, dir: PathBuf) -> Result<LoadedModel, PredictError> {
        if let Some(model) = self.lookup(&dir) {
            return Ok(model);
        }
        let load_dir = dir.clone();
        let predictor = tokio::task::spawn_blocking(move || Predictor::load(&load_dir))
            .await
            .map_err(|e| PredictError::Failed(e.to_string()))?
            .map_err(|e| PredictError::Failed(e.to_string()))?;
        let bytes = std::fs::metadata(dir.join(deeptune_engine::artifact::WEIGHTS_FILE)).map(|m| m.len()).unwrap_or(0);
        let model = LoadedModel::start(predictor, bytes);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|(d, m)| d != &dir && !m.queue.is_closed());
        entries.push((dir, model.clone()));
        // Unload the least recently used until the rest fits (the new one always stays); a
        // version being unloaded finishes the requests already queued for it.
        while entries.len() > 1 && entries.iter().map(|(_, m)| m.bytes).sum::<u64>() > CACHE_BYTES {
            entries.remove(0);
        }
        Ok(model)
    }

    /// Forgets a version (it was deleted).
    pub fn remove(&self, dir: &PathBuf) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).retain(|(d, _)| d != dir);
    }
}
