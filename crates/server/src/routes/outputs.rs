//! Predictions (Clarifai's PostModelOutputs): concepts with probabilities for up to 128 images,
//! from the newest trained version of a model or a named one. A bad input fails alone.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use deeptune_core::api::{
    BaseResponse, Concept, Data, Image, Input, ModelVersion, MultiOutputResponse, Output, OutputModel,
    OutputModelVersion, PostModelOutputsRequest, PredictConfig,
};
use deeptune_core::ids::generate_id;
use deeptune_core::scope::Scope;
use deeptune_core::{ApiError, Status, StatusCode};
use deeptune_store::AppRecord;
use futures::StreamExt;

use super::inputs::MAX_INPUTS_PER_REQUEST;
use super::models::{ModelPath, VersionPath};
use super::{AppPath, app_for, batch_status, check_user_app_id};
use crate::auth::Caller;
use crate::error::{HttpError, Json, PathParams, Reply};
use crate::predict::{LoadedModel, PredictError};
use crate::state::AppState;

const MODEL_OUTPUTS: &str = "/v2/users/{user_id}/apps/{app_id}/models/{model_id}/outputs";
const VERSION_OUTPUTS: &str = "/v2/users/{user_id}/apps/{app_id}/models/{model_id}/versions/{version_id}/outputs";

/// Inputs read (downloaded, checked) at once for one request.
const CONCURRENCY: usize = 8;
/// What a 503 asks the client to wait.
const RETRY_AFTER_SECONDS: u64 = 1;

#[utoipa::path(post, path = MODEL_OUTPUTS, tag = "predict",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("model_id" = String, Path)),
    request_body = PostModelOutputsRequest,
    responses(
        (status = 200, description = "Concepts with probabilities from the newest trained version, highest first", body = MultiOutputResponse),
        (status = 207, description = "Some inputs failed; each output has its own status", body = MultiOutputResponse),
        (status = 400, body = BaseResponse), (status = 404, body = BaseResponse),
        (status = 503, description = "The model's queue is full: retry after Retry-After seconds", body = BaseResponse),
    ))]
pub async fn post_model_outputs(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<ModelPath>,
    Json(request): Json<PostModelOutputsRequest>,
) -> Result<Response, HttpError> {
    let app_path = AppPath { user_id: path.user_id.clone(), app_id: path.app_id.clone() };
    let app = app_for(&state, &caller, Scope::Predict, &app_path).await?;
    check_user_app_id(&request.user_app_id, &app_path)?;
    state.store.get_model(&app, &path.model_id).await?;
    let version = newest_trained(&state, &app, &path.model_id).await?;
    predict(&state, &app, &path.model_id, &version, request).await
}

#[utoipa::path(post, path = VERSION_OUTPUTS, tag = "predict",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("model_id" = String, Path), ("version_id" = String, Path)),
    request_body = PostModelOutputsRequest,
    responses(
        (status = 200, description = "Concepts with probabilities from this version, highest first", body = MultiOutputResponse),
        (status = 207, description = "Some inputs failed; each output has its own status", body = MultiOutputResponse),
        (status = 400, description = "The version is not trained, or the request is invalid", body = BaseResponse),
        (status = 404, body = BaseResponse),
        (status = 503, description = "The model's queue is full: retry after Retry-After seconds", body = BaseResponse),
    ))]
pub async fn post_model_version_outputs(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<VersionPath>,
    Json(request): Json<PostModelOutputsRequest>,
) -> Result<Response, HttpError> {
    let app_path = AppPath { user_id: path.user_id.clone(), app_id: path.app_id.clone() };
    let app = app_for(&state, &caller, Scope::Predict, &app_path).await?;
    check_user_app_id(&request.user_app_id, &app_path)?;
    let version = state.store.get_model_version(&app, &path.model_id, &path.version_id).await?;
    if version.status.as_ref().map(|s| s.code) != Some(StatusCode::MODEL_TRAINED) {
        let status = version.status.as_ref().map(|s| s.description.clone()).unwrap_or_default();
        return Err(ApiError::new(
            StatusCode::MODEL_INVALID_ARGUMENT,
            format!("model version {} is not trained ({status}); predict with a trained version", version.id),
        )
        .into());
    }
    predict(&state, &app, &path.model_id, &version, request).await
}

/// The newest version of a model that finished training.
pub(crate) async fn newest_trained(
    state: &AppState,
    app: &AppRecord,
    model_id: &str,
) -> Result<ModelVersion, ApiError> {
    let mut offset = 0;
    loop {
        let page = state.store.list_model_versions(app, model_id, 100, offset).await?;
        if let Some(v) = page.iter().find(|v| v.status.as_ref().map(|s| s.code) == Some(StatusCode::MODEL_TRAINED)) {
            return Ok(v.clone());
        }
        if page.len() < 100 {
            return Err(ApiError::new(
                StatusCode::MODEL_INVALID_ARGUMENT,
                format!("model {model_id} has no trained version yet; train one first"),
            ));
        }
        offset += 100;
    }
}

/// The bytes of one request input: its base64, its URL (fetched with the SSRF guard) or a
/// stored input of the app by id; checked like an upload before a decoder sees it.
async fn input_bytes(state: &AppState, app: &AppRecord, input: &Input) -> Result<Bytes, ApiError> {
    let invalid = |m: &str| ApiError::new(StatusCode::INPUT_INVALID_ARGUMENT, m.to_string());
    let image = input.data.image.as_ref();
    let bytes = match (image.and_then(|i| i.base64.as_ref()), image.and_then(|i| i.url.as_ref())) {
        (Some(_), Some(_)) => return Err(invalid("give data.image.url or data.image.base64, not both")),
        (Some(b64), None) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| invalid(&format!("data.image.base64 is not valid base64: {e}")))?,
        ),
        (None, Some(url)) => {
            state.fetcher.fetch(url).await.map_err(|e| ApiError::new(e.status_code(), e.to_string()))?
        }
        (None, None) if !input.id.is_empty() => {
            let (blob_key, _, _) = state.store.input_blobs(app, &input.id).await?;
            state.blobs.get(&blob_key).await.map_err(|e| ApiError::internal(e.to_string()))?
        }
        (None, None) => {
            return Err(invalid("data.image needs a url or base64 bytes (or give the id of a stored input)"));
        }
    };
    let limits = state.image_limits.clone();
    deeptune_media::check_image(&bytes, &limits).map_err(|e| ApiError::new(e.status_code(), e.to_string()))?;
    Ok(bytes)
}

/// Applies Clarifai's output_config (select_concepts, min_value, max_concepts) and marks each
/// concept against its threshold, where one is set.
pub(crate) fn shape_concepts(
    prediction: Vec<(String, f32)>,
    config: &PredictConfig,
    thresholds: &BTreeMap<String, f32>,
    app_id: &str,
) -> Vec<Concept> {
    prediction
        .into_iter()
        .filter(|(id, _)| config.select_concepts.is_empty() || config.select_concepts.iter().any(|c| &c.id == id))
        .filter(|(_, value)| config.min_value.is_none_or(|min| *value >= min))
        .take(config.max_concepts.map(|n| n as usize).unwrap_or(usize::MAX))
        .map(|(id, value)| {
            let threshold = thresholds.get(&id).copied();
            Concept {
                name: id.clone(),
                value: Some(value),
                app_id: app_id.to_string(),
                threshold,
                above_threshold: threshold.map(|t| value >= t),
                id,
                ..Default::default()
            }
        })
        .collect()
}

async fn predict(
    state: &AppState,
    app: &AppRecord,
    model_id: &str,
    version: &ModelVersion,
    request: PostModelOutputsRequest,
) -> Result<Response, HttpError> {
    if request.inputs.is_empty() || request.inputs.len() > MAX_INPUTS_PER_REQUEST {
        return Err(ApiError::new(
            StatusCode::INPUT_INVALID_ARGUMENT,
            format!("give 1 to {MAX_INPUTS_PER_REQUEST} inputs, not {}", request.inputs.len()),
        )
        .into());
    }
    let config = request.model.map(|m| m.output_info.output_config).unwrap_or_default();
    let model = load_version(state, version).await?;
    for (i, c) in config.select_concepts.iter().enumerate() {
        if !model.concepts.contains(&c.id) {
            return Err(ApiError::new(
                StatusCode::MODEL_INVALID_ARGUMENT,
                format!(
                    "model.output_info.output_config.select_concepts[{i}]: the model does not predict {:?}; it predicts {}",
                    c.id,
                    model.concepts.join(", ")
                ),
            )
            .into());
        }
    }
    for id in config.thresholds.keys() {
        if !model.concepts.contains(id) {
            return Err(ApiError::new(
                StatusCode::MODEL_INVALID_ARGUMENT,
                format!("model.output_info.output_config.thresholds.{id}: the model does not predict {id:?}"),
            )
            .into());
        }
    }
    let thresholds = super::evaluations::effective_thresholds(version, &config.thresholds);
    let read = read_inputs(state, app, &request.inputs).await;
    let mut predictions = match run_model(&model, &read).await {
        Ok(p) => p.into_iter(),
        Err(PredictError::Busy) => return Ok(busy()),
        Err(e) => return Err(ApiError::internal(e.to_string()).into()),
    };
    let created_at = now();
    let made_by = OutputModel {
        id: model_id.to_string(),
        app_id: app.app.id.clone(),
        model_version: OutputModelVersion { id: version.id.clone() },
    };
    let outputs: Vec<Output> = request
        .inputs
        .into_iter()
        .zip(read)
        .map(|(input, bytes)| {
            let outcome = bytes.and_then(|_| predictions.next().unwrap_or_else(|| Err(no_prediction())));
            let echoed = echo_input(&input);
            let (status, concepts) = match outcome {
                Ok(prediction) => (Status::ok(), shape_concepts(prediction, &config, &thresholds, &app.app.id)),
                Err(e) => (e.status(), Vec::new()),
            };
            Output {
                id: generate_id(),
                status,
                created_at: Some(created_at.clone()),
                model: Some(made_by.clone()),
                node_id: String::new(),
                input: echoed,
                data: Data { concepts, ..Default::default() },
            }
        })
        .collect();
    let statuses: Vec<&Status> = outputs.iter().map(|o| &o.status).collect();
    let status = batch_status(&statuses);
    Ok(Reply(MultiOutputResponse { status, outputs }).into_response())
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn no_prediction() -> ApiError {
    ApiError::internal("no prediction came back for this input")
}

/// Reads every input of a request (a few at a time); each fails alone.
pub(crate) async fn read_inputs(state: &AppState, app: &AppRecord, inputs: &[Input]) -> Vec<Result<Bytes, ApiError>> {
    futures::stream::iter(inputs.to_vec())
        .map(|input| async move { input_bytes(state, app, &input).await })
        .buffered(CONCURRENCY)
        .collect()
        .await
}

/// Runs the model on the inputs that were read, in one queued request; a result per read input,
/// in order (an image that fails to decode fails alone).
pub(crate) async fn run_model(
    model: &LoadedModel,
    read: &[Result<Bytes, ApiError>],
) -> Result<Vec<Result<Vec<(String, f32)>, ApiError>>, PredictError> {
    let good: Vec<Bytes> = read.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
    if good.is_empty() {
        return Ok(Vec::new());
    }
    let out = model.predict(good).await?;
    Ok(out.into_iter().map(|r| r.map_err(|e| ApiError::new(StatusCode::INPUT_UNSUPPORTED_FORMAT, e))).collect())
}

/// A trained version, loaded (or from the cache).
pub(crate) async fn load_version(state: &AppState, version: &ModelVersion) -> Result<LoadedModel, ApiError> {
    state
        .models
        .get(state.config.data_dir.join("models").join(&version.id))
        .await
        .map_err(|e| ApiError::internal(format!("cannot load model version {}: {e}", version.id)))
}

/// The request input as an output echoes it: its id, and its URL when it had one.
pub(crate) fn echo_input(input: &Input) -> Input {
    Input {
        id: input.id.clone(),
        data: Data {
            image: input
                .data
                .image
                .as_ref()
                .and_then(|i| i.url.clone())
                .map(|url| Image { url: Some(url), ..Default::default() }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// 503 with Retry-After: the model's queue is full.
pub(crate) fn busy() -> Response {
    let error = ApiError::new(StatusCode::CONN_THROTTLED, PredictError::Busy.to_string());
    let mut response = HttpError(error).into_response();
    response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(RETRY_AFTER_SECONDS));
    response
}
