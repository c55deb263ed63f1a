//! deeptune's shared vocabulary: ids, statuses and error codes, scopes and the JSON shapes of the
//! v2 API. Everything here is plain data; no crate below the server needs I/O to use it.

pub mod api;
pub mod error;
pub mod formats;
pub mod ids;
pub mod scope;
pub mod split;
pub mod status;
pub mod templates;

pub use error::ApiError;
pub use status::{Status, StatusCode};
