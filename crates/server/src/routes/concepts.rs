//! Concepts: the labels a model learns.

use axum::extract::State;
use deeptune_core::api::{BaseResponse, MultiConceptResponse, Pagination, PostConceptsRequest, SingleConceptResponse};
use deeptune_core::scope::Scope;
use deeptune_core::{ApiError, Status};
use serde::Deserialize;

use super::{AppPath, app_for, check_user_app_id, page};
use crate::auth::Caller;
use crate::error::{HttpResult, Json, PathParams, QueryParams, Reply};
use crate::state::AppState;

#[utoipa::path(post, path = "/v2/users/{user_id}/apps/{app_id}/concepts", tag = "concepts",
    params(("user_id" = String, Path), ("app_id" = String, Path)),
    request_body = PostConceptsRequest,
    responses((status = 200, body = MultiConceptResponse), (status = 409, body = BaseResponse)))]
pub async fn post_concepts(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AppPath>,
    Json(request): Json<PostConceptsRequest>,
) -> HttpResult<Reply<MultiConceptResponse>> {
    let app = app_for(&state, &caller, Scope::Write, &path).await?;
    check_user_app_id(&request.user_app_id, &path)?;
    if request.concepts.is_empty() {
        return Err(ApiError::invalid("concepts is empty").into());
    }
    let concepts = state.store.create_concepts(&app, request.concepts).await?;
    Ok(Reply(MultiConceptResponse { status: Status::ok(), concepts }))
}

#[utoipa::path(get, path = "/v2/users/{user_id}/apps/{app_id}/concepts", tag = "concepts",
    params(("user_id" = String, Path), ("app_id" = String, Path), Pagination),
    responses((status = 200, body = MultiConceptResponse)))]
pub async fn list_concepts(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AppPath>,
    QueryParams(pagination): QueryParams<Pagination>,
) -> HttpResult<Reply<MultiConceptResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &path).await?;
    let (limit, offset) = page(&pagination);
    let concepts = state.store.list_concepts(&app, limit, offset).await?;
    Ok(Reply(MultiConceptResponse { status: Status::ok(), concepts }))
}

#[derive(Deserialize)]
pub struct ConceptPath {
    user_id: String,
    app_id: String,
    concept_id: String,
}

#[utoipa::path(get, path = "/v2/users/{user_id}/apps/{app_id}/concepts/{concept_id}", tag = "concepts",
    params(("user_id" = String, Path), ("app_id" = String, Path), ("concept_id" = String, Path)),
    responses((status = 200, body = SingleConceptResponse), (status = 404, body = BaseResponse)))]
pub async fn get_concept(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<ConceptPath>,
) -> HttpResult<Reply<SingleConceptResponse>> {
    let app = app_for(&state, &caller, Scope::Read, &AppPath { user_id: path.user_id, app_id: path.app_id }).await?;
    let concept = state.store.get_concept(&app, &path.concept_id).await?;
    Ok(Reply(SingleConceptResponse { status: Status::ok(), concept }))
}
