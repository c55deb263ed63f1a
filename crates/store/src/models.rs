//! Models and model versions. Creating a version queues its training job in the same
//! transaction, so a version never exists without its job (nor a job without its version).

use deeptune_core::api::{
    Concept, Data, InvalidInput, LogEntry, Model, ModelVersion, OutputConfig, OutputInfo, Thresholds, TrainInfo,
    TrainingFailure, TrainingTime,
};
use deeptune_core::ids::generate_id;
use deeptune_core::{ApiError, Status, StatusCode};
use sqlx::Row;

use crate::{AppRecord, Result, Store, check_id, db_error, insert_error, now};

/// A validated training request, ready to be recorded and queued.
#[derive(Debug, Clone)]
pub struct NewModelVersion {
    pub id: String,
    pub template: String,
    pub params: serde_json::Map<String, serde_json::Value>,
    pub dataset_id: String,
    pub dataset_version_id: String,
    pub concepts: Vec<String>,
    pub mutually_exclusive: bool,
    pub description: String,
    /// The job's kind and payload.
    pub job_kind: String,
    pub job_payload: serde_json::Value,
}

/// A line for a version's training log.
#[derive(Debug, Clone, Copy)]
pub struct NewLogLine<'a> {
    pub level: &'a str,
    pub event: &'a str,
    pub message: &'a str,
    pub data: Option<&'a serde_json::Value>,
}

/// Statuses a version does not leave.
pub fn is_final(code: StatusCode) -> bool {
    matches!(
        code,
        StatusCode::MODEL_TRAINED
            | StatusCode::MODEL_TRAINING_FAILED
            | StatusCode::MODEL_TRAINING_INVALID_DATA_TOLERANCE_EXCEEDED
            | StatusCode::JOB_CANCELLED
    )
}

fn version_from_row(row: &sqlx::sqlite::SqliteRow) -> ModelVersion {
    let mut params: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(row.get::<String, _>("params").as_str()).unwrap_or_default();
    params.insert("template".into(), row.get::<String, _>("template").into());
    params.insert("dataset_id".into(), row.get::<String, _>("dataset_id").into());
    params.insert("dataset_version_id".into(), row.get::<String, _>("dataset_version_id").into());
    let concepts: Vec<String> = serde_json::from_str(row.get::<String, _>("concepts").as_str()).unwrap_or_default();
    let code = StatusCode::from_code(row.get::<i64, _>("status_code") as u32).unwrap_or(StatusCode::MODEL_UNTRAINED);
    let progress: Option<String> = row.get("progress");
    let metrics: Option<String> = row.get("metrics");
    let invalid_inputs: Option<String> = row.get("invalid_inputs");
    let started_at: Option<String> = row.get("started_at");
    let completed_at: Option<String> = row.get("completed_at");
    let estimated_seconds: Option<f64> = row.get("estimated_seconds");
    let actual_seconds = match (&started_at, &completed_at) {
        (Some(start), Some(end)) => chrono::DateTime::parse_from_rfc3339(end)
            .ok()
            .zip(chrono::DateTime::parse_from_rfc3339(start).ok())
            .map(|(end, start)| (end - start).num_milliseconds() as f64 / 1000.0),
        _ => None,
    };
    let training_time = (started_at.is_some() || estimated_seconds.is_some()).then_some(TrainingTime {
        estimated_seconds,
        actual_seconds,
        started_at,
        completed_at,
    });
    ModelVersion {
        invalid_inputs: invalid_inputs.and_then(|v| serde_json::from_str(&v).ok()).unwrap_or_default(),
        failure: row.get::<Option<String>, _>("failure").and_then(|v| serde_json::from_str(&v).ok()),
        thresholds: row.get::<Option<String>, _>("thresholds").and_then(|v| serde_json::from_str(&v).ok()),
        training_time,
        progress: progress.and_then(|p| serde_json::from_str(&p).ok()),
        metrics: metrics.and_then(|m| serde_json::from_str(&m).ok()),
        id: row.get("id"),
        model_id: row.get("model_id"),
        status: Some(Status::new(code, row.get::<String, _>("status_details"))),
        train_info: TrainInfo {
            resume_from_model: params.remove("resume_from_model").and_then(|v| serde_json::from_value(v).ok()),
            params,
        },
        output_info: OutputInfo {
            data: Data {
                concepts: concepts
                    .into_iter()
                    .map(|id| Concept { name: id.clone(), id, ..Default::default() })
                    .collect(),
                ..Default::default()
            },
            output_config: OutputConfig { concepts_mutually_exclusive: row.get::<i64, _>("mutually_exclusive") != 0 },
        },
        created_at: Some(row.get("created_at")),
        description: row.get("description"),
    }
}

impl Store {
    pub async fn create_model(&self, app: &AppRecord, mut model: Model) -> Result<Model> {
        if model.id.is_empty() {
            model.id = generate_id();
        }
        check_id("model", &model.id)?;
        if model.name.is_empty() {
            model.name = model.id.clone();
        }
        let ts = now();
        sqlx::query(
            "INSERT INTO models (app_pk, id, name, model_type_id, description, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(app.pk)
        .bind(&model.id)
        .bind(&model.name)
        .bind(&model.model_type_id)
        .bind(&model.description)
        .bind(&ts)
        .execute(&self.pool)
        .await
        .map_err(|e| insert_error(e, "model", &model.id))?;
        self.get_model(app, &model.id).await
    }

    pub async fn get_model(&self, app: &AppRecord, model_id: &str) -> Result<Model> {
        let row = sqlx::query("SELECT * FROM models WHERE app_pk = ? AND id = ?")
            .bind(app.pk)
            .bind(model_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .ok_or_else(|| ApiError::not_found("model", model_id))?;
        let latest = self.list_model_versions(app, model_id, 1, 0).await?.into_iter().next();
        Ok(Model {
            id: row.get("id"),
            name: row.get("name"),
            model_type_id: row.get("model_type_id"),
            description: row.get("description"),
            app_id: app.app.id.clone(),
            created_at: Some(row.get("created_at")),
            model_version: latest.map(Box::new),
        })
    }

    pub async fn list_models(&self, app: &AppRecord, limit: u32, offset: u64) -> Result<Vec<Model>> {
        let ids: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM models WHERE app_pk = ? ORDER BY created_at DESC, id LIMIT ? OFFSET ?")
                .bind(app.pk)
                .bind(limit)
                .bind(offset as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(db_error)?;
        let mut out = Vec::with_capacity(ids.len());
        for (id,) in ids {
            out.push(self.get_model(app, &id).await?);
        }
        Ok(out)
    }

    /// Records the version (queued) and its job in one transaction.
    pub async fn create_model_version(
        &self,
        app: &AppRecord,
        model_id: &str,
        new: NewModelVersion,
    ) -> Result<ModelVersion> {
        self.get_model(app, model_id).await?;
        check_id("model version", &new.id)?;
        let job_id = generate_id();
        let ts = now();
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sqlx::query(
            "INSERT INTO model_versions (app_pk, model_id, id, status_code, template, params, dataset_id, dataset_version_id,
                 concepts, mutually_exclusive, job_id, description, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(app.pk)
        .bind(model_id)
        .bind(&new.id)
        .bind(StatusCode::MODEL_QUEUED_FOR_TRAINING.code() as i64)
        .bind(&new.template)
        .bind(serde_json::Value::Object(new.params.clone()).to_string())
        .bind(&new.dataset_id)
        .bind(&new.dataset_version_id)
        .bind(serde_json::to_string(&new.concepts).expect("concepts serialise"))
        .bind(new.mutually_exclusive as i64)
        .bind(&job_id)
        .bind(&new.description)
        .bind(&ts)
        .execute(&mut *tx)
        .await
        .map_err(|e| insert_error(e, "model version", &new.id))?;
        sqlx::query(
            "INSERT INTO jobs (id, kind, payload, state, created_at, updated_at) VALUES (?, ?, ?, 'queued', ?, ?)",
        )
        .bind(&job_id)
        .bind(&new.job_kind)
        .bind(new.job_payload.to_string())
        .bind(&ts)
        .bind(&ts)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        self.get_model_version(app, model_id, &new.id).await
    }

    pub async fn get_model_version(&self, app: &AppRecord, model_id: &str, version_id: &str) -> Result<ModelVersion> {
        let row = sqlx::query("SELECT * FROM model_versions WHERE app_pk = ? AND model_id = ? AND id = ?")
            .bind(app.pk)
            .bind(model_id)
            .bind(version_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .ok_or_else(|| ApiError::not_found("model version", version_id))?;
        Ok(version_from_row(&row))
    }

    /// The job that trains a version.
    pub async fn model_version_job(&self, app: &AppRecord, model_id: &str, version_id: &str) -> Result<String> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT job_id FROM model_versions WHERE app_pk = ? AND model_id = ? AND id = ?")
                .bind(app.pk)
                .bind(model_id)
                .bind(version_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        row.map(|r| r.0).ok_or_else(|| ApiError::not_found("model version", version_id))
    }

    /// Newest first.
    pub async fn list_model_versions(
        &self,
        app: &AppRecord,
        model_id: &str,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<ModelVersion>> {
        let rows = sqlx::query(
            "SELECT * FROM model_versions WHERE app_pk = ? AND model_id = ? ORDER BY seq DESC LIMIT ? OFFSET ?",
        )
        .bind(app.pk)
        .bind(model_id)
        .bind(limit)
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows.iter().map(version_from_row).collect())
    }

    /// Sets a version's status (the worker reports progress and outcomes through it).
    pub async fn set_model_version_status(
        &self,
        app: &AppRecord,
        model_id: &str,
        version_id: &str,
        code: StatusCode,
        details: &str,
    ) -> Result<()> {
        // A final status stamps the completion time once (a re-run finalisation keeps the first).
        let done = sqlx::query(
            "UPDATE model_versions SET status_code = ?, status_details = ?,
                 completed_at = CASE WHEN ? THEN COALESCE(completed_at, ?) ELSE NULL END
             WHERE app_pk = ? AND model_id = ? AND id = ?",
        )
        .bind(code.code() as i64)
        .bind(details)
        .bind(is_final(code))
        .bind(now())
        .bind(app.pk)
        .bind(model_id)
        .bind(version_id)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        if done.rows_affected() == 0 {
            return Err(ApiError::not_found("model version", version_id));
        }
        Ok(())
    }

    /// Records that a worker started (or resumed) the run, with the estimate it made; the first
    /// start and the first estimate are kept.
    pub async fn mark_model_version_started(
        &self,
        app: &AppRecord,
        model_id: &str,
        version_id: &str,
        estimated_seconds: Option<f64>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE model_versions SET started_at = COALESCE(started_at, ?), estimated_seconds = COALESCE(estimated_seconds, ?)
             WHERE app_pk = ? AND model_id = ? AND id = ?",
        )
        .bind(now())
        .bind(estimated_seconds)
        .bind(app.pk)
        .bind(model_id)
        .bind(version_id)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    /// Records why a run failed.
    pub async fn set_model_version_failure(
        &self,
        app: &AppRecord,
        model_id: &str,
        version_id: &str,
        failure: &TrainingFailure,
    ) -> Result<()> {
        let value = serde_json::to_value(failure).expect("failure serialises");
        self.set_model_version_json(app, model_id, version_id, "failure", &value).await
    }

    /// Records the inputs pre-flight could not use.
    pub async fn set_model_version_invalid_inputs(
        &self,
        app: &AppRecord,
        model_id: &str,
        version_id: &str,
        invalid: &[InvalidInput],
    ) -> Result<()> {
        let value = serde_json::to_value(invalid).expect("invalid inputs serialise");
        self.set_model_version_json(app, model_id, version_id, "invalid_inputs", &value).await
    }

    /// Appends a line to a version's training log (nothing happens when the version is gone).
    pub async fn append_model_version_log(
        &self,
        app: &AppRecord,
        model_id: &str,
        version_id: &str,
        line: &NewLogLine<'_>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO model_version_logs (version_seq, time, level, event, message, data)
             SELECT seq, ?, ?, ?, ?, ? FROM model_versions WHERE app_pk = ? AND model_id = ? AND id = ?",
        )
        .bind(now())
        .bind(line.level)
        .bind(line.event)
        .bind(line.message)
        .bind(line.data.map(|d| d.to_string()))
        .bind(app.pk)
        .bind(model_id)
        .bind(version_id)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    /// Log lines after `after` (a `seq`), oldest first.
    pub async fn list_model_version_log(
        &self,
        app: &AppRecord,
        model_id: &str,
        version_id: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LogEntry>> {
        let rows = sqlx::query(
            "SELECT l.* FROM model_version_logs l JOIN model_versions v ON v.seq = l.version_seq
             WHERE v.app_pk = ? AND v.model_id = ? AND v.id = ? AND l.seq > ? ORDER BY l.seq LIMIT ?",
        )
        .bind(app.pk)
        .bind(model_id)
        .bind(version_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows
            .iter()
            .map(|r| LogEntry {
                seq: r.get("seq"),
                time: r.get("time"),
                level: r.get("level"),
                event: r.get("event"),
                message: r.get("message"),
                data: r.get::<Option<String>, _>("data").and_then(|d| serde_json::from_str(&d).ok()),
            })
            .collect())
    }

    /// Records training progress (JSON the portal and CLI show).
    pub async fn set_model_version_progress(
        &self,
        app: &AppRecord,
        model_id: &str,
        version_id: &str,
        progress: &serde_json::Value,
    ) -> Result<()> {
        self.set_model_version_json(app, model_id, version_id, "progress", progress).await
    }

    /// Records the evaluation of a trained version.
    pub async fn set_model_version_metrics(
        &self,
        app: &AppRecord,
        model_id: &str,
        version_id: &str,
        metrics: &serde_json::Value,
    ) -> Result<()> {
        self.set_model_version_json(app, model_id, version_id, "metrics", metrics).await
    }

    async fn set_model_version_json(
        &self,
        app: &AppRecord,
        model_id: &str,
        version_id: &str,
        column: &'static str,
        value: &serde_json::Value,
    ) -> Result<()> {
        // `column` is one of the constants in this file, never user input.
        let done = sqlx::query(&format!(
            "UPDATE model_versions SET {column} = ? WHERE app_pk = ? AND model_id = ? AND id = ?"
        ))
        .bind(value.to_string())
        .bind(app.pk)
        .bind(model_id)
        .bind(version_id)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        if done.rows_affected() == 0 {
            return Err(ApiError::not_found("model version", version_id));
        }
        Ok(())
    }

    /// Records the per-concept thresholds chosen for a version.
    pub async fn set_model_version_thresholds(
        &self,
        app: &AppRecord,
        model_id: &str,
        version_id: &str,
        thresholds: &Thresholds,
    ) -> Result<()> {
        let value = serde_json::to_value(thresholds).expect("thresholds serialise");
        self.set_model_version_json(app, model_id, version_id, "thresholds", &value).await
    }

    /// Deletes a version; its job is asked to cancel first (a running job stops at its next
    /// heartbeat and finds its version gone).
    pub async fn delete_model_version(&self, app: &AppRecord, model_id: &str, version_id: &str) -> Result<()> {
        let job_id = self.model_version_job(app, model_id, version_id).await?;
        self.request_job_cancel(&job_id).await?;
        sqlx::query("DELETE FROM model_versions WHERE app_pk = ? AND model_id = ? AND id = ?")
            .bind(app.pk)
            .bind(model_id)
            .bind(version_id)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }
}
