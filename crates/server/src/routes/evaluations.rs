//! Evaluations of trained versions (asynchronous, like training), per-concept thresholds chosen
//! from their precision-recall curves, and leaderboards that rank versions evaluated on the same
//! dataset version.

use std::collections::BTreeMap;

use axum::extract::State;
use deeptune_core::api::{
    BaseResponse, EvalDataset, EvalDatasetVersion, EvalMetrics, Leaderboard, LeaderboardEntry, ModelVersion,
    MultiEvalMetricsResponse, MultiLeaderboardResponse, PostEvaluationsRequest, PostThresholdsRequest,
    SingleEvalMetricsResponse, SingleModelVersionResponse, Thresholds,
};
use deeptune_core::scope::Scope;
use deeptune_core::{ApiError, Status, StatusCode};
use deeptune_engine::metrics::{Evaluation, best_f1_threshold, threshold_for_precision, threshold_for_recall};
use deeptune_store::{AppRecord, NewEvaluation};
use serde::Deserialize;
use serde_json::{Value, json};

use super::models::{ModelPath, VersionPath};
use super::{AppPath, app_for, check_user_app_id};
use crate::auth::Caller;
use crate::error::{HttpResult, Json, PathParams, QueryParams, Reply};
use crate::state::AppState;

const EVALUATIONS: &str = "/v2/users/{user_id}/apps/{app_id}/models/{model_id}/versions/{version_id}/evaluations";
const EVALUATION: &str =
    "/v2/users/{user_id}/apps/{app_id}/models/{model_id}/versions/{version_id}/evaluations/{evaluation_id}";
const THRESHOLDS: &str = "/v2/users/{user_id}/apps/{app_id}/models/{model_id}/versions/{version_id}/thresholds";
const MODEL_LEADERBOARD: &str = "/v2/users/{user_id}/apps/{app_id}/models/{model_id}/leaderboard";
const APP_LEADERBOARD: &str = "/v2/users/{user_id}/apps/{app_id}/leaderboard";

#[derive(Deserialize)]
pub struct EvaluationPath {
    user_id: String,
    app_id: String,
    model_id: String,
    version_id: String,
    evaluation_id: String,
}

fn app_path(user_id: &str, app_id: &str) -> AppPath {
    AppPath { user_id: user_id.to_string(), app_id: app_id.to_string() }
}

fn invalid(details: String) -> ApiError {
    ApiError::new(StatusCode::MODEL_INVALID_ARGUMENT, details)
}

fn is_trained(version: &ModelVersion) -> bool {
    version.status.as_ref().map(|s| s.code) == Some(StatusCode::MODEL_TRAINED)
}

fn param(version: &ModelVersion, name: &str) -> String {
    version.train_info.params.get(name).and_then(Value::as_str).unwrap_or("").to_string()
}

#[utoipa::path(post, path = EVALUATIONS, tag = "evaluations",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("model_id" = String, Path), ("version_id" = String, Path)),
    request_body = PostEvaluationsRequest,
    responses(
        (status = 200, description = "The evaluation, queued (status 21310); a worker runs it (21300) to 21301 or 21309", body = SingleEvalMetricsResponse),
        (status = 400, description = "The version is not trained, the dataset version or split is unknown, or it has no labels of the model's concepts", body = BaseResponse),
        (status = 404, body = BaseResponse),
    ))]
pub async fn post_evaluations(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<VersionPath>,
    Json(request): Json<PostEvaluationsRequest>,
) -> HttpResult<Reply<SingleEvalMetricsResponse>> {
    let ap = app_path(&path.user_id, &path.app_id);
    let app = app_for(&state, &caller, Scope::Train, &ap).await?;
    check_user_app_id(&request.user_app_id, &ap)?;
    let version = state.store.get_model_version(&app, &path.model_id, &path.version_id).await?;
    if !is_trained(&version) {
        return Err(invalid(format!("model version {} is not trained; evaluate a trained version", version.id)).into());
    }
    if request.eval_metrics.len() > 1 {
        return Err(invalid("give one evaluation per request".into()).into());
    }
    let asked = request.eval_metrics.into_iter().next().unwrap_or_default();
    let own = EvalDataset {
        user_id: app.app.user_id.clone(),
        app_id: app.app.id.clone(),
        id: param(&version, "dataset_id"),
        version: EvalDatasetVersion { id: param(&version, "dataset_version_id") },
    };
    let (dataset, default_split) = match asked.ground_truth_dataset {
        None => (own.clone(), "validation"),
        Some(mut d) => {
            if d.app_id.is_empty() {
                d.app_id = app.app.id.clone();
            }
            if d.user_id.is_empty() {
                d.user_id = app.app.user_id.clone();
            }
            let split = if d == own { "validation" } else { "all" };
            (d, split)
        }
    };
    let split = if asked.split.is_empty() { default_split.to_string() } else { asked.split.clone() };
    if !["validation", "train", "all"].contains(&split.as_str()) {
        return Err(invalid(format!("eval_metrics[0].split {split:?}: expected validation, train or all")).into());
    }
    // The dataset may live in another app the caller can read.
    let dataset_app = if dataset.app_id == app.app.id && dataset.user_id == app.app.user_id {
        app.clone()
    } else {
        app_for(&state, &caller, Scope::Read, &app_path(&dataset.user_id, &dataset.app_id)).await?
    };
    let dataset_version =
        state.store.get_dataset_version(&dataset_app, &dataset.id, &dataset.version.id).await.map_err(|_| {
            invalid(format!(
                "eval_metrics[0].ground_truth_dataset: dataset version {:?} of dataset {:?} in app {:?} does not exist",
                dataset.version.id, dataset.id, dataset.app_id
            ))
        })?;
    let concepts: Vec<String> = version.output_info.data.concepts.iter().map(|c| c.id.clone()).collect();
    let metrics = dataset_version.metrics.unwrap_or_default();
    let labeled = metrics.concepts.iter().filter(|c| concepts.contains(&c.id)).any(|c| match split.as_str() {
        "validation" => c.validation_positive_count > 0,
        "train" => c.train_positive_count > 0,
        _ => c.positive_count + c.negative_count > 0,
    });
    if !labeled {
        return Err(ApiError::new(
            StatusCode::MODEL_EVALUATION_NEED_LABELS,
            format!(
                "dataset version {:?} has no {split} inputs labeled with the model's concepts ({})",
                dataset.version.id,
                concepts.join(", ")
            ),
        )
        .into());
    }
    let new = NewEvaluation {
        dataset_user_id: dataset.user_id,
        dataset_app_id: dataset.app_id,
        dataset_id: dataset.id,
        dataset_version_id: dataset.version.id,
        split,
        job_kind: deeptune_worker::EVALUATE_JOB.into(),
    };
    let eval_metrics = state.store.create_evaluation(&app, &path.model_id, &path.version_id, new).await?;
    Ok(Reply(SingleEvalMetricsResponse { status: Status::ok(), eval_metrics }))
}

#[utoipa::path(get, path = EVALUATIONS, tag = "evaluations",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("model_id" = String, Path), ("version_id" = String, Path)),
    responses((status = 200, description = "The version's evaluations, newest first, without per-input results", body = MultiEvalMetricsResponse), (status = 404, body = BaseResponse)))]
pub async fn list_evaluations(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<VersionPath>,
) -> HttpResult<Reply<MultiEvalMetricsResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &app_path(&path.user_id, &path.app_id)).await?;
    state.store.get_model_version(&app, &path.model_id, &path.version_id).await?;
    let mut eval_metrics = state.store.list_evaluations(&app, &path.model_id, &path.version_id).await?;
    for e in &mut eval_metrics {
        if let Some(m) = e.metrics.as_mut().and_then(Value::as_object_mut) {
            m.remove("per_input");
        }
    }
    Ok(Reply(MultiEvalMetricsResponse { status: Status::ok(), eval_metrics }))
}

#[utoipa::path(get, path = EVALUATION, tag = "evaluations",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("model_id" = String, Path), ("version_id" = String, Path), ("evaluation_id" = String, Path)),
    responses((status = 200, description = "One evaluation with all its metrics, per-input results included", body = SingleEvalMetricsResponse), (status = 404, body = BaseResponse)))]
pub async fn get_evaluation(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<EvaluationPath>,
) -> HttpResult<Reply<SingleEvalMetricsResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &app_path(&path.user_id, &path.app_id)).await?;
    let eval_metrics = state.store.get_evaluation(&app, &path.model_id, &path.version_id, &path.evaluation_id).await?;
    Ok(Reply(SingleEvalMetricsResponse { status: Status::ok(), eval_metrics }))
}

#[utoipa::path(post, path = THRESHOLDS, tag = "evaluations",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("model_id" = String, Path), ("version_id" = String, Path)),
    request_body = PostThresholdsRequest,
    responses(
        (status = 200, description = "The version with its thresholds; predictions now report which concepts pass them", body = SingleModelVersionResponse),
        (status = 400, description = "Unknown strategy or concept, a target out of 0–1 or that no point of a curve reaches", body = BaseResponse),
        (status = 404, body = BaseResponse),
    ))]
pub async fn post_thresholds(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<VersionPath>,
    Json(request): Json<PostThresholdsRequest>,
) -> HttpResult<Reply<SingleModelVersionResponse>> {
    let app = app_for(&state, &caller, Scope::Train, &app_path(&path.user_id, &path.app_id)).await?;
    let version = state.store.get_model_version(&app, &path.model_id, &path.version_id).await?;
    let concepts: Vec<String> = version.output_info.data.concepts.iter().map(|c| c.id.clone()).collect();
    for (id, value) in &request.concepts {
        if !concepts.contains(id) {
            return Err(invalid(format!("concepts.{id}: the model does not predict {id:?}")).into());
        }
        if !(0.0..=1.0).contains(value) {
            return Err(invalid(format!("concepts.{id}: {value} is not a probability (0–1)")).into());
        }
    }
    let strategy = if request.strategy.is_empty() { "best_f1".to_string() } else { request.strategy.clone() };
    let mut chosen: BTreeMap<String, f32> = BTreeMap::new();
    if strategy != "manual" {
        if !["best_f1", "precision", "recall"].contains(&strategy.as_str()) {
            return Err(invalid(format!("strategy {strategy:?}: expected best_f1, precision, recall or manual")).into());
        }
        let target = match (strategy.as_str(), request.target) {
            ("best_f1", _) => 0.0,
            (_, Some(t)) if (0.0..=1.0).contains(&t) => t,
            _ => return Err(invalid(format!("target: the {strategy} strategy needs a target between 0 and 1")).into()),
        };
        let metrics = if request.evaluation_id.is_empty() {
            version.metrics.clone()
        } else {
            state.store.get_evaluation(&app, &path.model_id, &path.version_id, &request.evaluation_id).await?.metrics
        };
        let evaluation: Evaluation = metrics
            .and_then(|m| serde_json::from_value(m).ok())
            .ok_or_else(|| invalid("no finished evaluation to choose thresholds from".into()))?;
        for concept in &evaluation.per_concept {
            if request.concepts.contains_key(&concept.concept) {
                continue;
            }
            let curve = &concept.pr_curve;
            let threshold = match strategy.as_str() {
                "best_f1" => Some(best_f1_threshold(curve)),
                "precision" => threshold_for_precision(curve, target),
                _ => threshold_for_recall(curve, target),
            };
            match threshold {
                Some(t) if t.is_finite() => {
                    chosen.insert(concept.concept.clone(), t.clamp(0.0, 1.0));
                }
                _ => {
                    return Err(invalid(format!(
                        "concept {:?}: no threshold reaches {strategy} {target} on this evaluation",
                        concept.concept
                    ))
                    .into());
                }
            }
        }
    }
    chosen.extend(request.concepts.clone());
    let thresholds =
        Thresholds { strategy, target: request.target, evaluation_id: request.evaluation_id.clone(), concepts: chosen };
    state.store.set_model_version_thresholds(&app, &path.model_id, &path.version_id, &thresholds).await?;
    let model_version = state.store.get_model_version(&app, &path.model_id, &path.version_id).await?;
    Ok(Reply(SingleModelVersionResponse { status: Status::ok(), model_version }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LeaderboardQuery {
    /// A summary metric: top1_accuracy (default), top5_accuracy, macro_f1, macro_precision,
    /// macro_recall, macro_roc_auc or macro_average_precision.
    #[serde(default)]
    metric: Option<String>,
    /// Only evaluations on this dataset (with dataset_version_id, on that version).
    #[serde(default)]
    dataset_id: Option<String>,
    #[serde(default)]
    dataset_version_id: Option<String>,
}

const METRICS: &[&str] = &[
    "top1_accuracy",
    "top5_accuracy",
    "macro_f1",
    "macro_precision",
    "macro_recall",
    "macro_roc_auc",
    "macro_average_precision",
];

/// Every finished evaluation of the trained versions of `models`, the training runs' own
/// held-out evaluations included: (version, evaluation).
async fn evaluated_versions(
    state: &AppState,
    app: &AppRecord,
    models: &[String],
) -> Result<Vec<(ModelVersion, EvalMetrics)>, ApiError> {
    let stored = state.store.list_app_evaluations(app).await?;
    let mut out = Vec::new();
    for model in models {
        let mut offset = 0;
        loop {
            let page = state.store.list_model_versions(app, model, 100, offset).await?;
            for version in page.iter().filter(|v| is_trained(v)) {
                // One entry per evaluation set: the newest explicit evaluation, else the
                // training run's own.
                let explicit: Vec<&EvalMetrics> =
                    stored.iter().filter(|e| e.model_id == *model && e.model_version_id == version.id).collect();
                for (i, e) in explicit.iter().enumerate() {
                    let newer_on_same_set = explicit[i + 1..]
                        .iter()
                        .any(|later| later.ground_truth_dataset == e.ground_truth_dataset && later.split == e.split);
                    if !newer_on_same_set {
                        out.push((version.clone(), (*e).clone()));
                    }
                }
                if let Some(metrics) = &version.metrics {
                    let own = EvalMetrics {
                        model_id: model.clone(),
                        model_version_id: version.id.clone(),
                        ground_truth_dataset: Some(EvalDataset {
                            user_id: app.app.user_id.clone(),
                            app_id: app.app.id.clone(),
                            id: param(version, "dataset_id"),
                            version: EvalDatasetVersion { id: param(version, "dataset_version_id") },
                        }),
                        split: "validation".into(),
                        metrics: Some(metrics.clone()),
                        ..Default::default()
                    };
                    let covered = explicit
                        .iter()
                        .any(|e| e.ground_truth_dataset == own.ground_truth_dataset && e.split == own.split);
                    if !covered {
                        out.push((version.clone(), own));
                    }
                }
            }
            if page.len() < 100 {
                break;
            }
            offset += 100;
        }
    }
    Ok(out)
}

fn lineage(state: &AppState, version: &ModelVersion) -> Value {
    let manifest: Value = std::fs::read(state.config.data_dir.join("models").join(&version.id).join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    json!({
        "template": param(version, "template"),
        "params": version.train_info.params,
        "training_dataset": {"id": param(version, "dataset_id"), "version": {"id": param(version, "dataset_version_id")}},
        "seed": version.train_info.params.get("seed"),
        "resumed_from": version.train_info.resume_from_model,
        "data_hash": manifest["dataset_hash"],
        "engine_version": manifest["engine_version"],
        "created_at": version.created_at,
    })
}

async fn leaderboards(
    state: &AppState,
    app: &AppRecord,
    models: Vec<String>,
    query: LeaderboardQuery,
) -> Result<MultiLeaderboardResponse, ApiError> {
    let metric = query.metric.unwrap_or_else(|| "top1_accuracy".into());
    if !METRICS.contains(&metric.as_str()) {
        return Err(ApiError::invalid(format!("metric {metric:?}: expected one of {}", METRICS.join(", "))));
    }
    let mut boards: Vec<Leaderboard> = Vec::new();
    for (version, evaluation) in evaluated_versions(state, app, &models).await? {
        let dataset = evaluation.ground_truth_dataset.clone().unwrap_or_default();
        if query.dataset_id.as_ref().is_some_and(|d| *d != dataset.id)
            || query.dataset_version_id.as_ref().is_some_and(|v| *v != dataset.version.id)
        {
            continue;
        }
        let summary = evaluation.metrics.as_ref().map(|m| m["summary"].clone()).unwrap_or(Value::Null);
        let entry = LeaderboardEntry {
            rank: 0,
            model_id: version.model_id.clone(),
            model_version_id: version.id.clone(),
            evaluation_id: evaluation.id.clone(),
            value: summary[&metric].as_f64().map(|v| v as f32),
            summary,
            lineage: lineage(state, &version),
        };
        match boards.iter_mut().find(|b| b.ground_truth_dataset == dataset && b.split == evaluation.split) {
            Some(board) => board.entries.push(entry),
            None => boards.push(Leaderboard {
                ground_truth_dataset: dataset,
                split: evaluation.split.clone(),
                metric: metric.clone(),
                entries: vec![entry],
            }),
        }
    }
    for board in &mut boards {
        // Highest first; versions without the metric last.
        board.entries.sort_by(|a, b| match (a.value, b.value) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
        for (i, entry) in board.entries.iter_mut().enumerate() {
            entry.rank = i + 1;
        }
    }
    boards.sort_by_key(|b| std::cmp::Reverse(b.entries.len()));
    Ok(MultiLeaderboardResponse { status: Status::ok(), leaderboards: boards })
}

#[utoipa::path(get, path = MODEL_LEADERBOARD, tag = "evaluations",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("model_id" = String, Path), LeaderboardQuery),
    responses((status = 200, description = "The model's trained versions ranked by a metric, one board per evaluation dataset version and split", body = MultiLeaderboardResponse),
              (status = 400, body = BaseResponse), (status = 404, body = BaseResponse)))]
pub async fn model_leaderboard(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<ModelPath>,
    QueryParams(query): QueryParams<LeaderboardQuery>,
) -> HttpResult<Reply<MultiLeaderboardResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &app_path(&path.user_id, &path.app_id)).await?;
    state.store.get_model(&app, &path.model_id).await?;
    Ok(Reply(leaderboards(&state, &app, vec![path.model_id.clone()], query).await?))
}

#[utoipa::path(get, path = APP_LEADERBOARD, tag = "evaluations",
    params(("user_id" = String, Path), ("app_id" = String, Path), LeaderboardQuery),
    responses((status = 200, description = "Every model's trained versions in the app, ranked", body = MultiLeaderboardResponse),
              (status = 400, body = BaseResponse), (status = 404, body = BaseResponse)))]
pub async fn app_leaderboard(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AppPath>,
    QueryParams(query): QueryParams<LeaderboardQuery>,
) -> HttpResult<Reply<MultiLeaderboardResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &path).await?;
    let mut models = Vec::new();
    let mut offset = 0;
    loop {
        let page = state.store.list_models(&app, 100, offset).await?;
        models.extend(page.iter().map(|m| m.id.clone()));
        if page.len() < 100 {
            break;
        }
        offset += 100;
    }
    Ok(Reply(leaderboards(&state, &app, models, query).await?))
}

/// The thresholds a prediction applies: the version's, overridden per concept by the request's.
pub fn effective_thresholds(version: &ModelVersion, overrides: &BTreeMap<String, f32>) -> BTreeMap<String, f32> {
    let mut thresholds = version.thresholds.as_ref().map(|t| t.concepts.clone()).unwrap_or_default();
    thresholds.extend(overrides.iter().map(|(k, v)| (k.clone(), *v)));
    thresholds
}
