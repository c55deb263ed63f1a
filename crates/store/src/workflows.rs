//! Workflows: their nodes are stored as one JSON document (validated by the API before).

use deeptune_core::ApiError;
use deeptune_core::api::Workflow;
use sqlx::Row;

use crate::{AppRecord, Result, Store, check_id, db_error, insert_error, now};

fn workflow_from_row(row: &sqlx::sqlite::SqliteRow, app_id: &str) -> Workflow {
    Workflow {
        id: row.get("id"),
        app_id: app_id.to_string(),
        description: row.get("description"),
        nodes: serde_json::from_str(row.get::<String, _>("nodes").as_str()).unwrap_or_default(),
        created_at: Some(row.get("created_at")),
    }
}

impl Store {
    pub async fn create_workflow(&self, app: &AppRecord, workflow: &Workflow) -> Result<Workflow> {
        check_id("workflow", &workflow.id)?;
        sqlx::query("INSERT INTO workflows (app_pk, id, description, nodes, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(app.pk)
            .bind(&workflow.id)
            .bind(&workflow.description)
            .bind(serde_json::to_string(&workflow.nodes).expect("nodes serialise"))
            .bind(now())
            .execute(&self.pool)
            .await
            .map_err(|e| insert_error(e, "workflow", &workflow.id))?;
        self.get_workflow(app, &workflow.id).await
    }

    pub async fn get_workflow(&self, app: &AppRecord, workflow_id: &str) -> Result<Workflow> {
        let row = sqlx::query("SELECT * FROM workflows WHERE app_pk = ? AND id = ?")
            .bind(app.pk)
            .bind(workflow_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .ok_or_else(|| ApiError::not_found("workflow", workflow_id))?;
        Ok(workflow_from_row(&row, &app.app.id))
    }

    pub async fn list_workflows(&self, app: &AppRecord, limit: u32, offset: u64) -> Result<Vec<Workflow>> {
        let rows =
            sqlx::query("SELECT * FROM workflows WHERE app_pk = ? ORDER BY created_at DESC, id LIMIT ? OFFSET ?")
                .bind(app.pk)
                .bind(limit)
                .bind(offset as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(db_error)?;
        Ok(rows.iter().map(|r| workflow_from_row(r, &app.app.id)).collect())
    }

    pub async fn delete_workflow(&self, app: &AppRecord, workflow_id: &str) -> Result<()> {
        let done = sqlx::query("DELETE FROM workflows WHERE app_pk = ? AND id = ?")
            .bind(app.pk)
            .bind(workflow_id)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        if done.rows_affected() == 0 {
            return Err(ApiError::not_found("workflow", workflow_id));
        }
        Ok(())
    }
}
