//! Annotations: concept labels on inputs, value 1 (positive) or 0 (negative).

use axum::extract::State;
use deeptune_core::api::{
    AnnotationFilter, BaseResponse, DeleteAnnotationsRequest, MultiAnnotationResponse, Pagination,
    PatchAnnotationsRequest, PostAnnotationsRequest, SingleAnnotationResponse,
};
use deeptune_core::scope::Scope;
use deeptune_core::{ApiError, Status, StatusCode};
use serde::Deserialize;

use super::{AppPath, app_for, check_user_app_id, page};
use crate::auth::Caller;
use crate::error::{HttpResult, Json, PathParams, QueryParams, Reply};
use crate::state::AppState;

const ANNOTATIONS: &str = "/v2/users/{user_id}/apps/{app_id}/annotations";

#[utoipa::path(post, path = ANNOTATIONS, tag = "annotations",
    params(("user_id" = String, Path), ("app_id" = String, Path)),
    request_body = PostAnnotationsRequest,
    responses((status = 200, body = MultiAnnotationResponse),
              (status = 404, description = "An input does not exist; nothing was added", body = BaseResponse),
              (status = 409, description = "The input already has a label for that concept", body = BaseResponse)))]
pub async fn post_annotations(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AppPath>,
    Json(request): Json<PostAnnotationsRequest>,
) -> HttpResult<Reply<MultiAnnotationResponse>> {
    let app = app_for(&state, &caller, Scope::Write, &path).await?;
    check_user_app_id(&request.user_app_id, &path)?;
    if request.annotations.is_empty() {
        return Err(ApiError::new(StatusCode::ANNOTATION_INVALID_ARGUMENT, "annotations is empty").into());
    }
    let annotations = state.store.create_annotations(&app, request.annotations).await?;
    Ok(Reply(MultiAnnotationResponse { status: Status::ok(), annotations }))
}

#[utoipa::path(get, path = ANNOTATIONS, tag = "annotations",
    params(("user_id" = String, Path), ("app_id" = String, Path), Pagination, AnnotationFilter),
    responses((status = 200, body = MultiAnnotationResponse)))]
pub async fn list_annotations(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AppPath>,
    QueryParams(pagination): QueryParams<Pagination>,
    QueryParams(filter): QueryParams<AnnotationFilter>,
) -> HttpResult<Reply<MultiAnnotationResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &path).await?;
    let (limit, offset) = page(&pagination);
    let annotations = state.store.list_annotations(&app, filter.input_id.as_deref(), limit, offset).await?;
    Ok(Reply(MultiAnnotationResponse { status: Status::ok(), annotations }))
}

#[utoipa::path(patch, path = ANNOTATIONS, tag = "annotations",
    params(("user_id" = String, Path), ("app_id" = String, Path)),
    request_body = PatchAnnotationsRequest,
    responses((status = 200, body = MultiAnnotationResponse), (status = 404, body = BaseResponse)))]
pub async fn patch_annotations(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AppPath>,
    Json(request): Json<PatchAnnotationsRequest>,
) -> HttpResult<Reply<MultiAnnotationResponse>> {
    let app = app_for(&state, &caller, Scope::Write, &path).await?;
    check_user_app_id(&request.user_app_id, &path)?;
    let annotations = state.store.patch_annotations(&app, request.annotations, &request.action).await?;
    Ok(Reply(MultiAnnotationResponse { status: Status::ok(), annotations }))
}

#[utoipa::path(delete, path = ANNOTATIONS, tag = "annotations",
    params(("user_id" = String, Path), ("app_id" = String, Path)),
    request_body = DeleteAnnotationsRequest,
    responses((status = 200, body = BaseResponse), (status = 404, body = BaseResponse)))]
pub async fn delete_annotations(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AppPath>,
    Json(request): Json<DeleteAnnotationsRequest>,
) -> HttpResult<Reply<BaseResponse>> {
    let app = app_for(&state, &caller, Scope::Write, &path).await?;
    check_user_app_id(&request.user_app_id, &path)?;
    if request.ids.is_empty() && request.input_ids.is_empty() {
        return Err(ApiError::new(StatusCode::ANNOTATION_INVALID_ARGUMENT, "give ids or input_ids").into());
    }
    state.store.delete_annotations(&app, &request.ids, &request.input_ids).await?;
    Ok(Reply(BaseResponse { status: Status::ok() }))
}

#[derive(Deserialize)]
pub struct AnnotationPath {
    user_id: String,
    app_id: String,
    input_id: String,
    annotation_id: String,
}

const ANNOTATION: &str = "/v2/users/{user_id}/apps/{app_id}/inputs/{input_id}/annotations/{annotation_id}";

#[utoipa::path(get, path = ANNOTATION, tag = "annotations",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("input_id" = String, Path), ("annotation_id" = String, Path)),
    responses((status = 200, body = SingleAnnotationResponse), (status = 404, body = BaseResponse)))]
pub async fn get_annotation(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AnnotationPath>,
) -> HttpResult<Reply<SingleAnnotationResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &AppPath { user_id: path.user_id, app_id: path.app_id }).await?;
    let annotation = state.store.get_annotation(&app, &path.annotation_id).await?;
    if annotation.input_id != path.input_id {
        return Err(ApiError::not_found("annotation", &path.annotation_id).into());
    }
    Ok(Reply(SingleAnnotationResponse { status: Status::ok(), annotation }))
}

#[utoipa::path(delete, path = ANNOTATION, tag = "annotations",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("input_id" = String, Path), ("annotation_id" = String, Path)),
    responses((status = 200, body = BaseResponse), (status = 404, body = BaseResponse)))]
pub async fn delete_annotation(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AnnotationPath>,
) -> HttpResult<Reply<BaseResponse>> {
    let app = app_for(&state, &caller, Scope::Write, &AppPath { user_id: path.user_id, app_id: path.app_id }).await?;
    let annotation = state.store.get_annotation(&app, &path.annotation_id).await?;
    if annotation.input_id != path.input_id {
        return Err(ApiError::not_found("annotation", &path.annotation_id).into());
    }
    state.store.delete_annotations(&app, std::slice::from_ref(&path.annotation_id), &[]).await?;
    Ok(Reply(BaseResponse { status: Status::ok() }))
}
