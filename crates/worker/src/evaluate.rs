//! One evaluation job: a trained version's predictions on a dataset version's inputs, scored
//! against their labels (summary, per-concept metrics with curves, confusion matrix, per input).

use std::sync::Arc;

use deeptune_core::StatusCode;
use deeptune_core::api::{EvalMetrics, InvalidInput};
use deeptune_engine::artifact::Predictor;
use deeptune_engine::metrics::{Predictions, evaluate};
use deeptune_engine::train::CancelToken;
use deeptune_store::jobs::{Job, JobState};
use serde_json::{Value, json};

use crate::Worker;
use crate::run::{Signals, spawn_heartbeat};

/// Images predicted per blocking call.
const CHUNK: usize = 32;

impl Worker {
    pub(crate) async fn evaluate(self, job: Job) {
        let evaluation_id = job.payload["evaluation_id"].as_str().unwrap_or("").to_string();
        let signals = Arc::new(Signals::default());
        let heartbeat = spawn_heartbeat(&self, &job.id, signals.clone(), CancelToken::new());
        let outcome = self.run_evaluation(&job.payload, &evaluation_id).await;
        signals.done.store(true, std::sync::atomic::Ordering::SeqCst);
        heartbeat.abort();
        if signals.lost_lease.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let (state, code, details, metrics) = match outcome {
            Ok((details, metrics)) => (JobState::Succeeded, StatusCode::MODEL_EVALUATED, details, Some(metrics)),
            Err((code, reason)) => {
                tracing::warn!(evaluation = %evaluation_id, %reason, "evaluation failed");
                (JobState::Failed, code, reason, None)
            }
        };
        if let Err(e) = self.store.set_evaluation_status(&evaluation_id, code, &details, metrics.as_ref()).await {
            tracing::error!(evaluation = %evaluation_id, error = %e, "cannot record the evaluation");
        }
        let _ = self.store.finish_job(&job.id, &self.id, state, &json!({"details": details})).await;
    }

    /// (status details, metrics JSON) or (failure status, reason).
    async fn run_evaluation(
        &self,
        payload: &Value,
        evaluation_id: &str,
    ) -> Result<(String, Value), (StatusCode, String)> {
        let failed = |reason: String| (StatusCode::MODEL_EVALUATION_FAILED, reason);
        let text = |name: &str| payload[name].as_str().unwrap_or("").to_string();
        let (model_id, version_id) = (text("model_id"), text("version_id"));
        let app = self.store.get_app(&text("user_id"), &text("app_id")).await.map_err(|e| failed(e.details))?;
        let evaluation: EvalMetrics = self
            .store
            .get_evaluation(&app, &model_id, &version_id, evaluation_id)
            .await
            .map_err(|e| failed(e.details))?;
        self.store
            .set_evaluation_status(evaluation_id, StatusCode::MODEL_EVALUATING, "predicting", None)
            .await
            .map_err(|e| failed(e.details))?;
        let dataset = evaluation.ground_truth_dataset.clone().unwrap_or_default();
        let dataset_app = self.store.get_app(&dataset.user_id, &dataset.app_id).await.map_err(|e| failed(e.details))?;
        let split = match evaluation.split.as_str() {
            "all" => None,
            other => Some(other.to_string()),
        };
        let mut inputs = Vec::new();
        loop {
            let page = self
                .store
                .list_dataset_version_inputs(
                    &dataset_app,
                    &dataset.id,
                    &dataset.version.id,
                    split.as_deref(),
                    1000,
                    inputs.len() as u64,
                )
                .await
                .map_err(|e| failed(e.details))?;
            let n = page.len();
            inputs.extend(page);
            if n < 1000 {
                break;
            }
        }

        let dir = self.models_dir().join(&version_id);
        let mut predictor = tokio::task::spawn_blocking(move || Predictor::load(&dir))
            .await
            .map_err(|e| failed(e.to_string()))?
            .map_err(|e| failed(format!("cannot load the trained model: {e}")))?;
        let concepts = predictor.manifest.concepts.clone();
        let exclusive = predictor.manifest.mutually_exclusive;

        // Inputs labeled for the model's concepts, with their label rows in the model's order.
        let labeled: Vec<(String, String, Vec<f32>)> = inputs
            .iter()
            .filter_map(|input| {
                let labels: Vec<f32> = concepts
                    .iter()
                    .map(|c| input.concepts.iter().find(|l| &l.id == c).and_then(|l| l.value).unwrap_or(0.0))
                    .collect();
                let any_label = input.concepts.iter().any(|l| concepts.contains(&l.id));
                let keep = if exclusive { labels.iter().any(|v| *v >= 0.5) } else { any_label };
                keep.then(|| (input.input_id.clone(), input.content_sha256.clone(), labels))
            })
            .collect();
        if labeled.is_empty() {
            return Err((
                StatusCode::MODEL_EVALUATION_NEED_LABELS,
                format!(
                    "none of the {} inputs of dataset version {}/{} ({}) is labeled with the model's concepts ({})",
                    inputs.len(),
                    dataset.id,
                    dataset.version.id,
                    evaluation.split,
                    concepts.join(", ")
                ),
            ));
        }

        let (mut input_ids, mut probabilities, mut labels, mut invalid) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for chunk in labeled.chunks(CHUNK) {
            let mut images = Vec::with_capacity(chunk.len());
            for (input_id, key, _) in chunk {
                match self.blobs.get(key).await {
                    Ok(bytes) => images.push(Ok(bytes)),
                    Err(e) => images.push(Err(InvalidInput { input_id: input_id.clone(), reason: e.to_string() })),
                }
            }
            let readable: Vec<bytes::Bytes> = images.iter().filter_map(|i| i.as_ref().ok().cloned()).collect();
            let (back, predicted) = tokio::task::spawn_blocking(move || {
                let refs: Vec<&[u8]> = readable.iter().map(|b| b.as_ref()).collect();
                let out = predictor.predict(&refs);
                (predictor, out)
            })
            .await
            .map_err(|e| failed(format!("prediction panicked: {e}")))?;
            predictor = back;
            let mut predicted = predicted.into_iter();
            for ((input_id, _, row), image) in chunk.iter().zip(images) {
                let outcome = match image {
                    Err(bad) => Err(bad),
                    Ok(_) => predicted
                        .next()
                        .unwrap_or_else(|| Err("no prediction".into()))
                        .map_err(|reason| InvalidInput { input_id: input_id.clone(), reason }),
                };
                match outcome {
                    Ok(prediction) => {
                        // Back from best-first to the model's concept order.
                        probabilities.extend(
                            concepts
                                .iter()
                                .map(|c| prediction.iter().find(|(id, _)| id == c).map(|(_, p)| *p).unwrap_or(0.0)),
                        );
                        labels.extend_from_slice(row);
                        input_ids.push(input_id.clone());
                    }
                    Err(bad) => invalid.push(bad),
                }
            }
        }
        if input_ids.is_empty() {
            return Err(failed(format!("none of the {} labeled inputs could be read", labeled.len())));
        }
        let predictions = Predictions {
            concepts: concepts.clone(),
            input_ids,
            probabilities,
            labels,
            label_known: None,
            mutually_exclusive: exclusive,
        };
        predictions.validate().map_err(|e| failed(e.to_string()))?;
        let mut result = evaluate(&predictions, 0.5);
        result.strip_scores();
        let summary = &result.summary;
        let details = match (summary.top1_accuracy, summary.macro_f1) {
            (Some(accuracy), _) if exclusive => {
                format!("top-1 accuracy {:.1}% on {} inputs", accuracy * 100.0, summary.inputs)
            }
            (_, Some(f1)) => format!("macro F1 {:.1}% on {} inputs", f1 * 100.0, summary.inputs),
            _ => format!("evaluated on {} inputs", summary.inputs),
        };
        let mut metrics = serde_json::to_value(&result).map_err(|e| failed(e.to_string()))?;
        metrics["invalid_inputs"] = json!(invalid);
        Ok((details, metrics))
    }
}
