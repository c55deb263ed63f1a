//! Personal access tokens: `Authorization: Key <token>`, scopes and app restriction.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use deeptune_core::scope::Scope;
use deeptune_core::{ApiError, StatusCode};
use deeptune_store::TokenRecord;

use crate::error::HttpError;
use crate::state::AppState;

/// The caller, authenticated. Handlers then ask for the scope and app they need.
#[derive(Debug, Clone)]
pub struct Caller(pub TokenRecord);

impl FromRequestParts<AppState> for Caller {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            // The portal's cookie stands in for the header on reads only (images, downloads):
            // a write always needs the header, which no cross-site form or link can send.
            let read = parts.method == axum::http::Method::GET || parts.method == axum::http::Method::HEAD;
            if let Some(secret) = read.then(|| cookie(parts, crate::portal::TOKEN_COOKIE)).flatten() {
                let token = state.store.find_token(&secret).await?.ok_or_else(|| {
                    ApiError::new(StatusCode::CONN_KEY_INVALID, "the portal's token is not valid: sign in again")
                })?;
                return Ok(Caller(token));
            }
            return Err(
                ApiError::new(StatusCode::CONN_KEY_NOT_FOUND, "missing header: Authorization: Key <token>").into()
            );
        };
        let header = header
            .to_str()
            .map_err(|_| ApiError::new(StatusCode::CONN_KEY_INVALID, "the Authorization header is not text"))?;
        let secret = header
            .strip_prefix("Key ")
            .or_else(|| header.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ApiError::new(StatusCode::CONN_KEY_INVALID, "expected the header Authorization: Key <token>")
            })?;
        let token = state.store.find_token(secret).await?.ok_or_else(|| {
            ApiError::new(StatusCode::CONN_KEY_INVALID, "the token is not valid (revoked or mistyped?)")
        })?;
        Ok(Caller(token))
    }
}

/// The value of the cookie `name` in the request's `Cookie` headers.
fn cookie(parts: &Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

impl Caller {
    /// Resolves the path's user id (`me` means the caller) and checks the caller may act on it
    /// with `scope`, in `app_id` when given.
    pub fn authorize(&self, scope: Scope, user_id: &str, app_id: Option<&str>) -> Result<String, ApiError> {
        let token = &self.0;
        let user = if user_id == "me" { token.user_id.clone() } else { user_id.to_string() };
        if !token.has_scope(scope) {
            return Err(ApiError::new(
                StatusCode::CONN_INSUFFICIENT_SCOPES,
                format!("this token lacks the {:?} scope", scope.as_str()),
            ));
        }
        let admin = token.scopes.contains(&Scope::Admin);
        if user != token.user_id && !admin {
            return Err(ApiError::new(
                StatusCode::CONN_INSUFFICIENT_SCOPES,
                format!("this token belongs to user {:?}, not {user:?}", token.user_id),
            ));
        }
        if let (Some(restricted), Some(app)) = (&token.app_id, app_id)
            && restricted != app
        {
            return Err(ApiError::new(
                StatusCode::CONN_INSUFFICIENT_SCOPES,
                format!("this token is restricted to app {restricted:?}"),
            ));
        }
        if token.app_id.is_some() && app_id.is_none() && scope != Scope::Read {
            return Err(ApiError::new(
                StatusCode::CONN_INSUFFICIENT_SCOPES,
                "this token is restricted to one app and cannot act outside it",
            ));
        }
        Ok(user)
    }
}
