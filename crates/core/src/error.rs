//! The error every layer returns to the API: a status code plus details for a person.

use crate::status::{Status, StatusCode};

#[derive(Debug, Clone, thiserror::Error)]
#[error("{} ({}): {details}", code.description(), code.code())]
pub struct ApiError {
    pub code: StatusCode,
    pub details: String,
}

impl ApiError {
    pub fn new(code: StatusCode, details: impl Into<String>) -> ApiError {
        ApiError { code, details: details.into() }
    }

    pub fn not_found(kind: &str, id: &str) -> ApiError {
        let code = match kind {
            "input" => StatusCode::INPUT_DOES_NOT_EXIST,
            "model" => StatusCode::MODEL_DOES_NOT_EXIST,
            "workflow" => StatusCode::WORKFLOW_DOES_NOT_EXIST,
            _ => StatusCode::CONN_DOES_NOT_EXIST,
        };
        ApiError::new(code, format!("{kind} {id:?} does not exist"))
    }

    pub fn duplicate(kind: &str, id: &str) -> ApiError {
        let code = if kind == "input" { StatusCode::INPUT_DUPLICATE } else { StatusCode::DATABASE_DUPLICATE_KEY };
        ApiError::new(code, format!("{kind} {id:?} already exists"))
    }

    pub fn invalid(details: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONN_INVALID_REQUEST, details)
    }

    pub fn internal(details: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ISSUE, details)
    }

    pub fn status(&self) -> Status {
        Status::new(self.code, self.details.clone())
    }
}
