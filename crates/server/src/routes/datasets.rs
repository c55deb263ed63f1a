//! Datasets, the inputs in them, and their immutable versions.

use axum::extract::State;
use deeptune_core::api::{
    BaseResponse, DeleteDatasetInputsRequest, MultiDatasetInputResponse, MultiDatasetResponse,
    MultiDatasetVersionInputResponse, MultiDatasetVersionResponse, Pagination, PostDatasetInputsRequest,
    PostDatasetVersionsRequest, PostDatasetsRequest, SingleDatasetResponse, SingleDatasetVersionResponse,
    VersionInputFilter,
};
use deeptune_core::scope::Scope;
use deeptune_core::{ApiError, Status};
use serde::Deserialize;

use super::{AppPath, app_for, check_user_app_id, page};
use crate::auth::Caller;
use crate::error::{HttpResult, Json, PathParams, QueryParams, Reply};
use crate::state::AppState;

const DATASETS: &str = "/v2/users/{user_id}/apps/{app_id}/datasets";
const DATASET: &str = "/v2/users/{user_id}/apps/{app_id}/datasets/{dataset_id}";
const DATASET_INPUTS: &str = "/v2/users/{user_id}/apps/{app_id}/datasets/{dataset_id}/inputs";
const VERSIONS: &str = "/v2/users/{user_id}/apps/{app_id}/datasets/{dataset_id}/versions";
const VERSION: &str = "/v2/users/{user_id}/apps/{app_id}/datasets/{dataset_id}/versions/{version_id}";
const VERSION_INPUTS: &str = "/v2/users/{user_id}/apps/{app_id}/datasets/{dataset_id}/versions/{version_id}/inputs";

#[derive(Deserialize)]
pub struct DatasetPath {
    user_id: String,
    app_id: String,
    dataset_id: String,
}

#[derive(Deserialize)]
pub struct VersionPath {
    user_id: String,
    app_id: String,
    dataset_id: String,
    version_id: String,
}

impl DatasetPath {
    fn app(&self) -> AppPath {
        AppPath { user_id: self.user_id.clone(), app_id: self.app_id.clone() }
    }
}

#[utoipa::path(post, path = DATASETS, tag = "datasets",
    params(("user_id" = String, Path), ("app_id" = String, Path)),
    request_body = PostDatasetsRequest,
    responses((status = 200, body = MultiDatasetResponse), (status = 409, body = BaseResponse)))]
pub async fn post_datasets(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AppPath>,
    Json(request): Json<PostDatasetsRequest>,
) -> HttpResult<Reply<MultiDatasetResponse>> {
    let app = app_for(&state, &caller, Scope::Write, &path).await?;
    check_user_app_id(&request.user_app_id, &path)?;
    if request.datasets.is_empty() {
        return Err(ApiError::invalid("datasets is empty").into());
    }
    let datasets = state.store.create_datasets(&app, request.datasets).await?;
    Ok(Reply(MultiDatasetResponse { status: Status::ok(), datasets }))
}

#[utoipa::path(get, path = DATASETS, tag = "datasets",
    params(("user_id" = String, Path), ("app_id" = String, Path), Pagination),
    responses((status = 200, body = MultiDatasetResponse)))]
pub async fn list_datasets(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AppPath>,
    QueryParams(pagination): QueryParams<Pagination>,
) -> HttpResult<Reply<MultiDatasetResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &path).await?;
    let (limit, offset) = page(&pagination);
    let datasets = state.store.list_datasets(&app, limit, offset).await?;
    Ok(Reply(MultiDatasetResponse { status: Status::ok(), datasets }))
}

#[utoipa::path(get, path = DATASET, tag = "datasets",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("dataset_id" = String, Path)),
    responses((status = 200, body = SingleDatasetResponse), (status = 404, body = BaseResponse)))]
pub async fn get_dataset(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<DatasetPath>,
) -> HttpResult<Reply<SingleDatasetResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &path.app()).await?;
    let dataset = state.store.get_dataset(&app, &path.dataset_id).await?;
    Ok(Reply(SingleDatasetResponse { status: Status::ok(), dataset }))
}

#[utoipa::path(delete, path = DATASET, tag = "datasets",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("dataset_id" = String, Path)),
    responses((status = 200, description = "The dataset and its versions are deleted; its inputs stay in the app", body = BaseResponse),
              (status = 404, body = BaseResponse)))]
pub async fn delete_dataset(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<DatasetPath>,
) -> HttpResult<Reply<BaseResponse>> {
    let app = app_for(&state, &caller, Scope::Write, &path.app()).await?;
    let keys = state.store.delete_dataset(&app, &path.dataset_id).await?;
    state.collect_blobs(&keys).await?;
    Ok(Reply(BaseResponse { status: Status::ok() }))
}

#[utoipa::path(post, path = DATASET_INPUTS, tag = "datasets",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("dataset_id" = String, Path)),
    request_body = PostDatasetInputsRequest,
    responses((status = 200, description = "Added (adding an input twice is harmless)", body = MultiDatasetInputResponse),
              (status = 404, description = "An input does not exist; nothing was added", body = BaseResponse)))]
pub async fn post_dataset_inputs(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<DatasetPath>,
    Json(request): Json<PostDatasetInputsRequest>,
) -> HttpResult<Reply<MultiDatasetInputResponse>> {
    let app = app_for(&state, &caller, Scope::Write, &path.app()).await?;
    check_user_app_id(&request.user_app_id, &path.app())?;
    let ids: Vec<String> = request.dataset_inputs.iter().map(|d| d.input.id.clone()).collect();
    if ids.is_empty() {
        return Err(ApiError::invalid("dataset_inputs is empty").into());
    }
    if ids.iter().any(String::is_empty) {
        return Err(ApiError::invalid("every dataset input needs input.id").into());
    }
    state.store.add_dataset_inputs(&app, &path.dataset_id, &ids).await?;
    Ok(Reply(MultiDatasetInputResponse { status: Status::ok(), dataset_inputs: request.dataset_inputs }))
}

#[utoipa::path(get, path = DATASET_INPUTS, tag = "datasets",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("dataset_id" = String, Path), Pagination),
    responses((status = 200, body = MultiDatasetInputResponse), (status = 404, body = BaseResponse)))]
pub async fn list_dataset_inputs(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<DatasetPath>,
    QueryParams(pagination): QueryParams<Pagination>,
) -> HttpResult<Reply<MultiDatasetInputResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &path.app()).await?;
    let (limit, offset) = page(&pagination);
    let dataset_inputs = state.store.list_dataset_inputs(&app, &path.dataset_id, limit, offset).await?;
    Ok(Reply(MultiDatasetInputResponse { status: Status::ok(), dataset_inputs }))
}

#[utoipa::path(delete, path = DATASET_INPUTS, tag = "datasets",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("dataset_id" = String, Path)),
    request_body = DeleteDatasetInputsRequest,
    responses((status = 200, description = "Removed from the dataset (they stay in the app)", body = BaseResponse),
              (status = 404, body = BaseResponse)))]
pub async fn delete_dataset_inputs(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<DatasetPath>,
    Json(request): Json<DeleteDatasetInputsRequest>,
) -> HttpResult<Reply<BaseResponse>> {
    let app = app_for(&state, &caller, Scope::Write, &path.app()).await?;
    check_user_app_id(&request.user_app_id, &path.app())?;
    state.store.remove_dataset_inputs(&app, &path.dataset_id, &request.input_ids).await?;
    Ok(Reply(BaseResponse { status: Status::ok() }))
}

#[utoipa::path(post, path = VERSIONS, tag = "datasets",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("dataset_id" = String, Path)),
    request_body = PostDatasetVersionsRequest,
    responses((status = 200, description = "The new frozen version with its metrics and split", body = MultiDatasetVersionResponse),
              (status = 404, body = BaseResponse), (status = 409, body = BaseResponse)))]
pub async fn post_dataset_versions(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<DatasetPath>,
    Json(request): Json<PostDatasetVersionsRequest>,
) -> HttpResult<Reply<MultiDatasetVersionResponse>> {
    let app = app_for(&state, &caller, Scope::Write, &path.app()).await?;
    check_user_app_id(&request.user_app_id, &path.app())?;
    let requests =
        if request.dataset_versions.is_empty() { vec![Default::default()] } else { request.dataset_versions };
    let mut dataset_versions = Vec::new();
    for version in requests {
        dataset_versions.push(state.store.create_dataset_version(&app, &path.dataset_id, version).await?);
    }
    Ok(Reply(MultiDatasetVersionResponse { status: Status::ok(), dataset_versions }))
}

#[utoipa::path(get, path = VERSIONS, tag = "datasets",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("dataset_id" = String, Path), Pagination),
    responses((status = 200, description = "Newest first", body = MultiDatasetVersionResponse), (status = 404, body = BaseResponse)))]
pub async fn list_dataset_versions(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<DatasetPath>,
    QueryParams(pagination): QueryParams<Pagination>,
) -> HttpResult<Reply<MultiDatasetVersionResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &path.app()).await?;
    let (limit, offset) = page(&pagination);
    let dataset_versions = state.store.list_dataset_versions(&app, &path.dataset_id, limit, offset).await?;
    Ok(Reply(MultiDatasetVersionResponse { status: Status::ok(), dataset_versions }))
}

#[utoipa::path(get, path = VERSION, tag = "datasets",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("dataset_id" = String, Path), ("version_id" = String, Path)),
    responses((status = 200, body = SingleDatasetVersionResponse), (status = 404, body = BaseResponse)))]
pub async fn get_dataset_version(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<VersionPath>,
) -> HttpResult<Reply<SingleDatasetVersionResponse>> {
    let app_path = AppPath { user_id: path.user_id, app_id: path.app_id };
    let app = app_for(&state, &caller, Scope::Read, &app_path).await?;
    let dataset_version = state.store.get_dataset_version(&app, &path.dataset_id, &path.version_id).await?;
    Ok(Reply(SingleDatasetVersionResponse { status: Status::ok(), dataset_version }))
}

#[utoipa::path(get, path = VERSION_INPUTS, tag = "datasets",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("dataset_id" = String, Path), ("version_id" = String, Path),
           Pagination, VersionInputFilter),
    responses((status = 200, description = "The inputs as the version froze them, with their split and labels", body = MultiDatasetVersionInputResponse),
              (status = 404, body = BaseResponse)))]
pub async fn list_dataset_version_inputs(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<VersionPath>,
    QueryParams(pagination): QueryParams<Pagination>,
    QueryParams(filter): QueryParams<VersionInputFilter>,
) -> HttpResult<Reply<MultiDatasetVersionInputResponse>> {
    let app_path = AppPath { user_id: path.user_id, app_id: path.app_id };
    let app = app_for(&state, &caller, Scope::Read, &app_path).await?;
    let (limit, offset) = page(&pagination);
    let dataset_version_inputs = state
        .store
        .list_dataset_version_inputs(&app, &path.dataset_id, &path.version_id, filter.split.as_deref(), limit, offset)
        .await?;
    Ok(Reply(MultiDatasetVersionInputResponse { status: Status::ok(), dataset_version_inputs }))
}
