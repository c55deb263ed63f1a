//! Evaluations of model versions. Creating one queues its job in the same transaction.

use deeptune_core::api::{EvalDataset, EvalDatasetVersion, EvalMetrics};
use deeptune_core::ids::generate_id;
use deeptune_core::{ApiError, Status, StatusCode};
use sqlx::Row;

use crate::{AppRecord, Result, Store, db_error, now};

/// A validated evaluation request.
#[derive(Debug, Clone)]
pub struct NewEvaluation {
    pub dataset_user_id: String,
    pub dataset_app_id: String,
    pub dataset_id: String,
    pub dataset_version_id: String,
    pub split: String,
    pub job_kind: String,
}

fn evaluation_from_row(row: &sqlx::sqlite::SqliteRow) -> EvalMetrics {
    let code = StatusCode::from_code(row.get::<i64, _>("status_code") as u32)
        .unwrap_or(StatusCode::MODEL_QUEUED_FOR_EVALUATION);
    let metrics: Option<String> = row.get("metrics");
    EvalMetrics {
        id: row.get("id"),
        status: Some(Status::new(code, row.get::<String, _>("status_details"))),
        model_id: row.get("model_id"),
        model_version_id: row.get("version_id"),
        ground_truth_dataset: Some(EvalDataset {
            user_id: row.get("dataset_user_id"),
            app_id: row.get("dataset_app_id"),
            id: row.get("dataset_id"),
            version: EvalDatasetVersion { id: row.get("dataset_version_id") },
        }),
        split: row.get("split"),
        metrics: metrics.and_then(|m| serde_json::from_str(&m).ok()),
        created_at: Some(row.get("created_at")),
        completed_at: row.get("completed_at"),
    }
}

impl Store {
    /// Records the evaluation (queued) and its job in one transaction.
    pub async fn create_evaluation(
        &self,
        app: &AppRecord,
        model_id: &str,
        version_id: &str,
        new: NewEvaluation,
    ) -> Result<EvalMetrics> {
        self.get_model_version(app, model_id, version_id).await?;
        let (id, job_id, ts) = (generate_id(), generate_id(), now());
        let payload = serde_json::json!({
            "user_id": app.app.user_id, "app_id": app.app.id, "model_id": model_id, "version_id": version_id,
            "evaluation_id": id,
        });
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sqlx::query(
            "INSERT INTO evaluations (id, app_pk, model_id, version_id, status_code, dataset_user_id, dataset_app_id,
                 dataset_id, dataset_version_id, split, job_id, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(app.pk)
        .bind(model_id)
        .bind(version_id)
        .bind(StatusCode::MODEL_QUEUED_FOR_EVALUATION.code() as i64)
        .bind(&new.dataset_user_id)
        .bind(&new.dataset_app_id)
        .bind(&new.dataset_id)
        .bind(&new.dataset_version_id)
        .bind(&new.split)
        .bind(&job_id)
        .bind(&ts)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        sqlx::query(
            "INSERT INTO jobs (id, kind, payload, state, created_at, updated_at) VALUES (?, ?, ?, 'queued', ?, ?)",
        )
        .bind(&job_id)
        .bind(&new.job_kind)
        .bind(payload.to_string())
        .bind(&ts)
        .bind(&ts)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        self.get_evaluation(app, model_id, version_id, &id).await
    }

    pub async fn get_evaluation(
        &self,
        app: &AppRecord,
        model_id: &str,
        version_id: &str,
        evaluation_id: &str,
    ) -> Result<EvalMetrics> {
        let row =
            sqlx::query("SELECT * FROM evaluations WHERE app_pk = ? AND model_id = ? AND version_id = ? AND id = ?")
                .bind(app.pk)
                .bind(model_id)
                .bind(version_id)
                .bind(evaluation_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?
                .ok_or_else(|| ApiError::not_found("evaluation", evaluation_id))?;
        Ok(evaluation_from_row(&row))
    }

    /// A version's evaluations, newest first.
    pub async fn list_evaluations(
        &self,
        app: &AppRecord,
        model_id: &str,
        version_id: &str,
    ) -> Result<Vec<EvalMetrics>> {
        let rows = sqlx::query(
            "SELECT * FROM evaluations WHERE app_pk = ? AND model_id = ? AND version_id = ? ORDER BY seq DESC",
        )
        .bind(app.pk)
        .bind(model_id)
        .bind(version_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows.iter().map(evaluation_from_row).collect())
    }

    /// Every finished evaluation in an app, without per-input results (for leaderboards).
    pub async fn list_app_evaluations(&self, app: &AppRecord) -> Result<Vec<EvalMetrics>> {
        let rows = sqlx::query("SELECT * FROM evaluations WHERE app_pk = ? AND status_code = ? ORDER BY seq")
            .bind(app.pk)
            .bind(StatusCode::MODEL_EVALUATED.code() as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(rows.iter().map(evaluation_from_row).collect())
    }

    /// Sets an evaluation's status, and its metrics when given; a final status stamps the
    /// completion time.
    pub async fn set_evaluation_status(
        &self,
        evaluation_id: &str,
        code: StatusCode,
        details: &str,
        metrics: Option<&serde_json::Value>,
    ) -> Result<()> {
        let done = matches!(code, StatusCode::MODEL_EVALUATED | StatusCode::MODEL_EVALUATION_FAILED);
        sqlx::query(
            "UPDATE evaluations SET status_code = ?, status_details = ?, metrics = COALESCE(?, metrics),
                 completed_at = CASE WHEN ? THEN COALESCE(completed_at, ?) ELSE completed_at END
             WHERE id = ?",
        )
        .bind(code.code() as i64)
        .bind(details)
        .bind(metrics.map(|m| m.to_string()))
        .bind(done)
        .bind(now())
        .bind(evaluation_id)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }
}
