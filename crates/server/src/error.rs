//! Turning errors into `{ "status": {code, description, details} }` responses with the HTTP
//! status that belongs to the code, and JSON bodies that clients get wrong into clear 400s.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode as HttpStatus;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use deeptune_core::api::BaseResponse;
use deeptune_core::{ApiError, Status, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The error type of every handler.
#[derive(Debug)]
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        if self.0.code.http_status() >= 500 {
            tracing::error!(code = self.0.code.code(), details = %self.0.details, "request failed");
        }
        status_response(self.0.status(), Vec::new())
    }
}

pub type HttpResult<T> = Result<T, HttpError>;

/// A JSON response whose HTTP status follows its `status.code`.
pub fn status_response(status: Status, headers: Vec<(axum::http::HeaderName, String)>) -> Response {
    let http = HttpStatus::from_u16(status.code.http_status()).unwrap_or(HttpStatus::INTERNAL_SERVER_ERROR);
    let mut response = (http, axum::Json(BaseResponse { status })).into_response();
    for (name, value) in headers {
        if let Ok(value) = value.parse() {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// A successful or batch JSON response: the HTTP status follows `status.code` of the body.
pub struct Reply<T>(pub T);

pub trait HasStatus {
    fn status(&self) -> &Status;
}

macro_rules! has_status {
    ($($t:ty),* $(,)?) => { $(impl HasStatus for $t { fn status(&self) -> &Status { &self.status } })* };
}
use deeptune_core::api::*;
has_status!(
    BaseResponse,
    MultiAppResponse,
    SingleAppResponse,
    MultiConceptResponse,
    SingleConceptResponse,
    MultiInputResponse,
    SingleInputResponse,
    ImportResponse,
    MultiAnnotationResponse,
    SingleAnnotationResponse,
    MultiDatasetResponse,
    SingleDatasetResponse,
    MultiDatasetInputResponse,
    MultiDatasetVersionResponse,
    SingleDatasetVersionResponse,
    MultiDatasetVersionInputResponse,
    MultiKeyResponse,
    SingleModelResponse,
    MultiModelResponse,
    SingleModelVersionResponse,
    MultiModelVersionResponse,
    MultiModelTypeResponse,
    MultiLogEntryResponse,
    TrainingTimeEstimateResponse,
    MultiOutputResponse,
    SingleEvalMetricsResponse,
    MultiEvalMetricsResponse,
    MultiLeaderboardResponse,
    SingleWorkflowResponse,
    MultiWorkflowResponse,
    PostWorkflowResultsResponse,
    SingleModelExportResponse,
);

impl<T: Serialize + HasStatus> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        let http = HttpStatus::from_u16(self.0.status().code.http_status()).unwrap_or(HttpStatus::OK);
        (http, axum::Json(self.0)).into_response()
    }
}

/// `axum::Json` with Clarifai-style errors: malformed JSON is 11100 naming where it broke, and an
/// oversized body is 413.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

pub fn json_rejection(rejection: JsonRejection) -> HttpError {
    if rejection.status() == HttpStatus::PAYLOAD_TOO_LARGE {
        return HttpError(ApiError::new(
            StatusCode::RPC_MAX_MESSAGE_SIZE_EXCEEDED,
            "request body is larger than the limit",
        ));
    }
    let details = match &rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "expected a JSON body with content-type application/json".to_string()
        }
        other => other.body_text(),
    };
    HttpError(ApiError::new(StatusCode::CONN_BAD_REQUEST_FORMAT, details))
}

/// Path parameters; a malformed one is a 400 in our shape.
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|e: PathRejection| HttpError(ApiError::new(StatusCode::CONN_BAD_REQUEST_FORMAT, e.body_text())))
    }
}

/// Query parameters; a malformed one is a 400 in our shape.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e: QueryRejection| HttpError(ApiError::new(StatusCode::CONN_BAD_REQUEST_FORMAT, e.body_text())))
    }
}
