//! Models, model types with their training templates, and model versions (training runs).
//! A training request is validated in full before anything is queued: every problem is a 400
//! naming its field.

use axum::extract::State;
use deeptune_core::api::{
    BaseResponse, Model, ModelType, ModelVersion, MultiModelResponse, MultiModelTypeResponse,
    MultiModelVersionResponse, Pagination, PostModelVersionsRequest, PostModelsRequest, SingleModelResponse,
    SingleModelVersionResponse,
};
use deeptune_core::ids::generate_id;
use deeptune_core::scope::Scope;
use deeptune_core::templates::{ParamError, find_template, resolve_params, visual_classifier_templates};
use deeptune_core::{ApiError, Status, StatusCode};
use deeptune_store::{AppRecord, NewModelVersion};
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

#[derive(Deserialize)]
pub struct ModelPath {
    user_id: String,
    app_id: String,
    model_id: String,
}

#[derive(Deserialize)]
pub struct VersionPath {
    user_id: String,
    app_id: String,
    model_id: String,
    version_id: String,
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
    request: &ModelVersion,
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
    if !errors.is_empty() {
        return Err(errors);
    }
    let template = template.expect("no errors means a template");
    let id = if request.id.is_empty() { generate_id() } else { request.id.clone() };
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
    let mut new = match validate(&state, &app, version).await {
        Ok(new) => new,
        Err(errors) => {
            let details: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.field, e.reason)).collect();
            return Err(ApiError::new(StatusCode::MODEL_INVALID_ARGUMENT, details.join("; ")).into());
        }
    };
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
    responses((status = 200, description = "Deleted; a queued or running training is canceled first", body = BaseResponse), (status = 404, body = BaseResponse)))]
pub async fn delete_model_version(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<VersionPath>,
) -> HttpResult<Reply<BaseResponse>> {
    let app = app_for(&state, &caller, Scope::Write, &app_path(&path.user_id, &path.app_id)).await?;
    state.store.delete_model_version(&app, &path.model_id, &path.version_id).await?;
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
