//! Personal access tokens (Clarifai calls them keys). Managing them needs the admin scope.

use axum::extract::State;
use deeptune_core::api::{BaseResponse, MultiKeyResponse, PostKeysRequest};
use deeptune_core::scope::Scope;
use deeptune_core::{ApiError, Status};
use serde::Deserialize;

use super::UserPath;
use crate::auth::Caller;
use crate::error::{HttpResult, Json, PathParams, Reply};
use crate::state::AppState;

#[utoipa::path(post, path = "/v2/users/{user_id}/keys", tag = "keys",
    params(("user_id" = String, Path)),
    request_body = PostKeysRequest,
    responses((status = 200, description = "The new keys, each with its secret `token`, shown only here", body = MultiKeyResponse),
              (status = 403, body = BaseResponse)))]
pub async fn post_keys(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<UserPath>,
    Json(request): Json<PostKeysRequest>,
) -> HttpResult<Reply<MultiKeyResponse>> {
    let user = caller.authorize(Scope::Admin, &path.user_id, None)?;
    if request.keys.is_empty() {
        return Err(ApiError::invalid("keys is empty").into());
    }
    let mut keys = Vec::new();
    for key in request.keys {
        if let Some(app_id) = &key.app_id {
            state.store.get_app(&user, app_id).await?;
        }
        keys.push(state.store.create_token(&user, &key.scopes, key.app_id.as_deref(), &key.description).await?);
    }
    Ok(Reply(MultiKeyResponse { status: Status::ok(), keys }))
}

#[utoipa::path(get, path = "/v2/users/{user_id}/keys", tag = "keys",
    params(("user_id" = String, Path)),
    responses((status = 200, body = MultiKeyResponse)))]
pub async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<UserPath>,
) -> HttpResult<Reply<MultiKeyResponse>> {
    let user = caller.authorize(Scope::Admin, &path.user_id, None)?;
    Ok(Reply(MultiKeyResponse { status: Status::ok(), keys: state.store.list_tokens(&user).await? }))
}

#[derive(Deserialize)]
pub struct KeyPath {
    user_id: String,
    key_id: String,
}

#[utoipa::path(delete, path = "/v2/users/{user_id}/keys/{key_id}", tag = "keys",
    params(("user_id" = String, Path), ("key_id" = String, Path)),
    responses((status = 200, body = BaseResponse), (status = 404, body = BaseResponse)))]
pub async fn delete_key(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(path): PathParams<KeyPath>,
) -> HttpResult<Reply<BaseResponse>> {
    let user = caller.authorize(Scope::Admin, &path.user_id, None)?;
    state.store.delete_token(&user, &path.key_id).await?;
    Ok(Reply(BaseResponse { status: Status::ok() }))
}
