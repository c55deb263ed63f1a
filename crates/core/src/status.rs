//! Status codes shaped after Clarifai's `status.code` numbers, so clients written for Clarifai read
//! our responses unchanged. Each code has one HTTP status and one stable description; the numbers
//! never change meaning once released.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

macro_rules! status_codes {
    ($( $(#[$doc:meta])* $name:ident = $num:literal, $http:literal, $desc:literal; )*) => {
        /// A Clarifai-compatible status code. Serialises as its number. Variants keep the names
        /// of Clarifai's proto so they can be looked up there.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum StatusCode { $( $(#[$doc])* $name ),* }

        impl StatusCode {
            pub const ALL: &'static [StatusCode] = &[$(StatusCode::$name),*];

            /// The number clients see in `status.code`.
            pub fn code(self) -> u32 { match self { $(StatusCode::$name => $num),* } }

            /// The HTTP status that accompanies this code when it is the response's top-level status.
            pub fn http_status(self) -> u16 { match self { $(StatusCode::$name => $http),* } }

            /// The short, stable description placed in `status.description`.
            pub fn description(self) -> &'static str { match self { $(StatusCode::$name => $desc),* } }

            /// The code's name in Clarifai's proto (`INPUT_DUPLICATE`, ...).
            pub fn name(self) -> &'static str { match self { $(StatusCode::$name => stringify!($name)),* } }

            pub fn from_code(code: u32) -> Option<StatusCode> {
                match code { $($num => Some(StatusCode::$name),)* _ => None }
            }
        }
    };
}

status_codes! {
    SUCCESS = 10000, 200, "Ok";
    MIXED_STATUS = 10010, 207, "Some items failed; see each item's status";
    FAILURE = 10020, 400, "Failure";
    NOT_IMPLEMENTED = 10040, 501, "Not implemented";

    CONN_THROTTLED = 11005, 503, "Busy: retry after the Retry-After header's seconds";
    CONN_INSUFFICIENT_SCOPES = 11007, 403, "API key has insufficient scopes";
    CONN_KEY_INVALID = 11008, 401, "API key is invalid";
    CONN_KEY_NOT_FOUND = 11009, 401, "API key not found";
    CONN_BAD_REQUEST_FORMAT = 11100, 400, "Bad request format";
    CONN_DOES_NOT_EXIST = 11101, 404, "Resource does not exist";
    CONN_INVALID_REQUEST = 11102, 400, "Invalid request";
    CONN_METHOD_NOT_ALLOWED = 11103, 405, "Method not allowed";

    MODEL_TRAINED = 21100, 200, "Model is trained and ready";
    MODEL_TRAINING = 21101, 200, "Model is training";
    MODEL_UNTRAINED = 21102, 200, "Model has not been trained";
    MODEL_QUEUED_FOR_TRAINING = 21103, 200, "Model is queued for training";
    MODEL_TRAINING_FAILED = 21106, 200, "Model training failed";
    MODEL_TRAINING_INVALID_DATA_TOLERANCE_EXCEEDED = 21119, 200, "Training stopped: too many inputs could not be read";
    MODEL_DOES_NOT_EXIST = 21200, 404, "Model does not exist";
    MODEL_EVALUATING = 21300, 200, "Model is being evaluated";
    MODEL_EVALUATED = 21301, 200, "Model is evaluated";
    MODEL_EVALUATION_NEED_LABELS = 21307, 400, "The evaluation needs labeled inputs of the model's concepts";
    MODEL_EVALUATION_FAILED = 21309, 200, "Model evaluation failed";
    MODEL_QUEUED_FOR_EVALUATION = 21310, 200, "Model is queued for evaluation";
    MODEL_INVALID_ARGUMENT = 21202, 400, "Invalid model argument";
    JOB_CANCELLED = 64004, 200, "Canceled";

    WORKFLOW_NO_MATCHING_INPUT = 43001, 200, "Skipped: the node's inputs did not pass";
    WORKFLOW_DOES_NOT_EXIST = 43005, 404, "Workflow does not exist";
    WORKFLOW_INVALID_ARGUMENT = 43007, 400, "Invalid workflow";
    WORKFLOW_INVALID_GRAPH = 43010, 400, "Invalid workflow graph";

    ANNOTATION_INVALID_ARGUMENT = 24155, 400, "Invalid annotation";

    METADATA_PARSING_ISSUE = 24901, 400, "Metadata could not be parsed";

    INPUT_SUCCESS = 30000, 200, "Input stored";
    INPUT_FAILED = 30002, 400, "Input could not be stored";
    INPUT_DUPLICATE = 30100, 409, "Input id already exists";
    INPUT_UNSUPPORTED_FORMAT = 30101, 400, "Unsupported or undecodable image";
    INPUT_DOES_NOT_EXIST = 30102, 404, "Input does not exist";
    INPUT_INVALID_ARGUMENT = 30104, 400, "Invalid input";
    INPUT_OVER_LIMIT = 30105, 400, "Input is over a limit";
    INPUT_INVALID_URL = 30106, 400, "Input URL is invalid or not allowed";
    INPUT_CONNECTION_FAILED = 39996, 400, "Could not download the input URL";
    INPUT_INVALID_REQUEST = 39999, 400, "Invalid input request";

    DATABASE_DUPLICATE_KEY = 40010, 409, "Resource with this id already exists";
    RPC_MAX_MESSAGE_SIZE_EXCEEDED = 40033, 413, "Request body is larger than the limit";

    DATASET_VERSION_READY = 64015, 200, "Dataset version is ready";

    INTERNAL_SERVER_ISSUE = 98004, 500, "Internal server error";
}

impl Serialize for StatusCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.code())
    }
}

impl<'de> Deserialize<'de> for StatusCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u32::deserialize(d)?;
        StatusCode::from_code(n).ok_or_else(|| serde::de::Error::custom(format!("unknown status code {n}")))
    }
}

/// `status {code, description, details}` as carried by every response and by each item of a batch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Status {
    /// Clarifai-compatible numeric code: 10000 is success.
    #[schema(value_type = u32, example = 10000)]
    pub code: StatusCode,
    pub description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
    /// Request id, for matching a response with the server's log.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub req_id: String,
}

impl Status {
    pub fn ok() -> Status {
        Status::new(StatusCode::SUCCESS, "")
    }

    pub fn new(code: StatusCode, details: impl Into<String>) -> Status {
        Status { code, description: code.description().to_string(), details: details.into(), req_id: String::new() }
    }

    pub fn is_success(&self) -> bool {
        matches!(self.code, StatusCode::SUCCESS | StatusCode::INPUT_SUCCESS | StatusCode::DATASET_VERSION_READY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = HashSet::new();
        for &c in StatusCode::ALL {
            assert!(seen.insert(c.code()), "duplicate number {}", c.code());
            assert_eq!(StatusCode::from_code(c.code()), Some(c));
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, c.code().to_string());
        }
    }

    #[test]
    fn clarifai_numbers_are_kept() {
        assert_eq!(StatusCode::SUCCESS.code(), 10000);
        assert_eq!(StatusCode::INPUT_DUPLICATE.code(), 30100);
        assert_eq!(StatusCode::CONN_INSUFFICIENT_SCOPES.http_status(), 403);
        assert_eq!(StatusCode::CONN_KEY_NOT_FOUND.http_status(), 401);
    }
}
