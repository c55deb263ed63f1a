//! Apps: the top-level container of inputs, concepts, datasets and models.

use axum::extract::State;
use deeptune_core::api::{BaseResponse, MultiAppResponse, Pagination, PostAppsRequest, SingleAppResponse};
use deeptune_core::scope::Scope;
use deeptune_core::{ApiError, Status};

use super::{AppPath, UserPath, page};
use crate::auth::Caller;
use crate::error::{HttpResult, Json, PathParams, QueryParams, Reply};
use crate::state::AppState;

#[utoipa::path(post, path = "/v2/users/{user_id}/apps", tag = "apps",
    params(("user_id" = String, Path, description = "User id, or `me`")),
    request_body = PostAppsRequest,
    responses((status = 200, body = MultiAppResponse), (status = 409, description = "An app id already exists", body = BaseResponse)))]
pub async fn post_apps(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<UserPath>,
    Json(request): Json<PostAppsRequest>,
) -> HttpResult<Reply<MultiAppResponse>> {
    let user = caller.authorize(Scope::Write, &path.user_id, None)?;
    if request.apps.is_empty() {
        return Err(ApiError::invalid("apps is empty").into());
    }
    let apps = state.store.create_apps(&user, request.apps).await?;
    Ok(Reply(MultiAppResponse { status: Status::ok(), apps }))
}

#[utoipa::path(get, path = "/v2/users/{user_id}/apps", tag = "apps",
    params(("user_id" = String, Path, description = "User id, or `me`"), Pagination),
    responses((status = 200, body = MultiAppResponse)))]
pub async fn list_apps(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<UserPath>,
    QueryParams(pagination): QueryParams<Pagination>,
) -> HttpResult<Reply<MultiAppResponse>> {
    let user = caller.authorize(Scope::Read, &path.user_id, None)?;
    let (limit, offset) = page(&pagination);
    let mut apps = state.store.list_apps(&user, limit, offset).await?;
    if let Some(only) = &caller.0.app_id {
        apps.retain(|a| &a.id == only);
    }
    Ok(Reply(MultiAppResponse { status: Status::ok(), apps }))
}

#[utoipa::path(get, path = "/v2/users/{user_id}/apps/{app_id}", tag = "apps",
    params(("user_id" = String, Path), ("app_id" = String, Path)),
    responses((status = 200, body = SingleAppResponse), (status = 404, body = BaseResponse)))]
pub async fn get_app(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AppPath>,
) -> HttpResult<Reply<SingleAppResponse>> {
    let app = super::app_for(&state, &caller, Scope::Read, &path).await?;
    Ok(Reply(SingleAppResponse { status: Status::ok(), app: app.app }))
}

#[utoipa::path(delete, path = "/v2/users/{user_id}/apps/{app_id}", tag = "apps",
    params(("user_id" = String, Path), ("app_id" = String, Path)),
    responses((status = 200, description = "Deleted with everything in it", body = BaseResponse), (status = 404, body = BaseResponse)))]
pub async fn delete_app(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<AppPath>,
) -> HttpResult<Reply<BaseResponse>> {
    let app = super::app_for(&state, &caller, Scope::Write, &path).await?;
    let keys = state.store.delete_app(&app).await?;
    state.collect_blobs(&keys).await?;
    Ok(Reply(BaseResponse { status: Status::ok() }))
}
