//! The metadata store: apps, concepts, inputs, annotations, datasets and their versions, and
//! access tokens. SQLite (WAL, versioned migrations) is the embedded default; every multi-row
//! change happens in one transaction, so a failed request leaves nothing half-written.

mod apps;
mod datasets;
mod evaluations;
mod inputs;
pub mod jobs;
mod models;
mod throughput;
mod tokens;
mod workflows;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use deeptune_core::{ApiError, StatusCode};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use apps::AppRecord;
pub use evaluations::NewEvaluation;
pub use inputs::{LabelValue, NewInput, labels_from_concepts};
pub use models::{NewLogLine, NewModelVersion, is_final};
pub use throughput::{Throughput, ThroughputKey};
pub use tokens::TokenRecord;

pub type Result<T> = std::result::Result<T, ApiError>;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Store> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(db_error)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await.map_err(db_error)?;
        MIGRATOR.run(&pool).await.map_err(|e| ApiError::internal(format!("database migration failed: {e}")))?;
        Ok(Store { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Whether any input or dataset version still refers to this blob.
    pub async fn blob_referenced(&self, key: &str) -> Result<bool> {
        let row: (i64,) = sqlx::query_as(
            "SELECT EXISTS(SELECT 1 FROM inputs WHERE blob_key = ?1 OR thumb_key = ?1)
                 OR EXISTS(SELECT 1 FROM dataset_version_inputs WHERE blob_key = ?1)",
        )
        .bind(key)
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(row.0 != 0)
    }

    /// Every blob key that metadata refers to.
    pub async fn referenced_blob_keys(&self) -> Result<std::collections::HashSet<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT blob_key FROM inputs UNION SELECT thumb_key FROM inputs
             UNION SELECT blob_key FROM dataset_version_inputs",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(crate) fn db_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ISSUE, format!("database error: {e}"))
}

/// Maps a unique-constraint violation to "already exists", anything else to an internal error.
pub(crate) fn insert_error(e: sqlx::Error, kind: &str, id: &str) -> ApiError {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        return ApiError::duplicate(kind, id);
    }
    db_error(e)
}

pub(crate) fn parse_metadata(text: Option<String>) -> Option<serde_json::Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

pub(crate) fn check_id(kind: &str, id: &str) -> Result<()> {
    deeptune_core::ids::validate_id(id).map_err(|e| ApiError::invalid(format!("{kind} id: {e}")))
}

pub(crate) fn check_metadata(metadata: &Option<serde_json::Value>) -> Result<Option<String>> {
    match metadata {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v @ serde_json::Value::Object(_)) => Ok(Some(v.to_string())),
        Some(_) => Err(ApiError::new(StatusCode::METADATA_PARSING_ISSUE, "metadata must be a JSON object")),
    }
}
