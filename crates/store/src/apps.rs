//! Apps and concepts.

use deeptune_core::ApiError;
use deeptune_core::api::{App, Concept};
use deeptune_core::ids::generate_id;
use sqlx::Row;

use crate::{Result, Store, check_id, check_metadata, db_error, insert_error, now, parse_metadata};

/// An app with the internal key other tables use.
#[derive(Debug, Clone)]
pub struct AppRecord {
    pub pk: i64,
    pub app: App,
}

fn app_from_row(row: &sqlx::sqlite::SqliteRow) -> AppRecord {
    AppRecord {
        pk: row.get("pk"),
        app: App {
            id: row.get("id"),
            name: row.get("name"),
            description: row.get("description"),
            user_id: row.get("user_id"),
            metadata: parse_metadata(row.get("metadata")),
            created_at: Some(row.get("created_at")),
            modified_at: Some(row.get("modified_at")),
        },
    }
}

fn concept_from_row(row: &sqlx::sqlite::SqliteRow, app_id: &str) -> Concept {
    Concept {
        id: row.get("id"),
        name: row.get("name"),
        value: None,
        created_at: Some(row.get("created_at")),
        app_id: app_id.to_string(),
        ..Default::default()
    }
}

impl Store {
    /// Creates all the apps or none.
    pub async fn create_apps(&self, user_id: &str, apps: Vec<App>) -> Result<Vec<App>> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let mut created = Vec::with_capacity(apps.len());
        for mut app in apps {
            if app.id.is_empty() {
                app.id = generate_id();
            }
            check_id("app", &app.id)?;
            let metadata = check_metadata(&app.metadata)?;
            if app.name.is_empty() {
                app.name = app.id.clone();
            }
            let ts = now();
            sqlx::query(
                "INSERT INTO apps (user_id, id, name, description, metadata, created_at, modified_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(user_id)
            .bind(&app.id)
            .bind(&app.name)
            .bind(&app.description)
            .bind(metadata)
            .bind(&ts)
            .bind(&ts)
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error(e, "app", &app.id))?;
            app.user_id = user_id.to_string();
            app.created_at = Some(ts.clone());
            app.modified_at = Some(ts);
            created.push(app);
        }
        tx.commit().await.map_err(db_error)?;
        Ok(created)
    }

    pub async fn list_apps(&self, user_id: &str, limit: u32, offset: u64) -> Result<Vec<App>> {
        let rows = sqlx::query("SELECT * FROM apps WHERE user_id = ? ORDER BY created_at DESC, id LIMIT ? OFFSET ?")
            .bind(user_id)
            .bind(limit)
            .bind(offset as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(rows.iter().map(|r| app_from_row(r).app).collect())
    }

    pub async fn get_app(&self, user_id: &str, app_id: &str) -> Result<AppRecord> {
        let row = sqlx::query("SELECT * FROM apps WHERE user_id = ? AND id = ?")
            .bind(user_id)
            .bind(app_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.map(|r| app_from_row(&r)).ok_or_else(|| ApiError::not_found("app", app_id))
    }

    /// Deletes the app and everything in it; returns the blob keys that may now be unreferenced.
    pub async fn delete_app(&self, app: &AppRecord) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let keys: Vec<(String, String)> = sqlx::query_as("SELECT blob_key, thumb_key FROM inputs WHERE app_pk = ?")
            .bind(app.pk)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
        let version_keys: Vec<(String,)> = sqlx::query_as(
            "SELECT dvi.blob_key FROM dataset_version_inputs dvi
             JOIN dataset_versions dv ON dv.pk = dvi.version_pk WHERE dv.app_pk = ?",
        )
        .bind(app.pk)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        // Versions reference datasets, not apps, so remove them explicitly before the cascade.
        sqlx::query("DELETE FROM dataset_versions WHERE app_pk = ?")
            .bind(app.pk)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query("DELETE FROM labels WHERE app_pk = ?").bind(app.pk).execute(&mut *tx).await.map_err(db_error)?;
        sqlx::query("DELETE FROM annotations WHERE app_pk = ?")
            .bind(app.pk)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query("DELETE FROM dataset_inputs WHERE app_pk = ?")
            .bind(app.pk)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query("DELETE FROM apps WHERE pk = ?").bind(app.pk).execute(&mut *tx).await.map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        let mut all: Vec<String> = keys.into_iter().flat_map(|(a, b)| [a, b]).collect();
        all.extend(version_keys.into_iter().map(|(k,)| k));
        all.sort();
        all.dedup();
        Ok(all)
    }

    /// Creates all the concepts or none.
    pub async fn create_concepts(&self, app: &AppRecord, concepts: Vec<Concept>) -> Result<Vec<Concept>> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let mut created = Vec::with_capacity(concepts.len());
        for mut concept in concepts {
            if concept.id.is_empty() {
                concept.id = generate_id();
            }
            check_id("concept", &concept.id)?;
            if concept.name.is_empty() {
                concept.name = concept.id.clone();
            }
            let ts = now();
            sqlx::query("INSERT INTO concepts (app_pk, id, name, created_at) VALUES (?, ?, ?, ?)")
                .bind(app.pk)
                .bind(&concept.id)
                .bind(&concept.name)
                .bind(&ts)
                .execute(&mut *tx)
                .await
                .map_err(|e| insert_error(e, "concept", &concept.id))?;
            concept.created_at = Some(ts);
            concept.app_id = app.app.id.clone();
            concept.value = None;
            created.push(concept);
        }
        tx.commit().await.map_err(db_error)?;
        Ok(created)
    }

    pub async fn list_concepts(&self, app: &AppRecord, limit: u32, offset: u64) -> Result<Vec<Concept>> {
        let rows = sqlx::query("SELECT * FROM concepts WHERE app_pk = ? ORDER BY id LIMIT ? OFFSET ?")
            .bind(app.pk)
            .bind(limit)
            .bind(offset as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(rows.iter().map(|r| concept_from_row(r, &app.app.id)).collect())
    }

    pub async fn get_concept(&self, app: &AppRecord, concept_id: &str) -> Result<Concept> {
        let row = sqlx::query("SELECT * FROM concepts WHERE app_pk = ? AND id = ?")
            .bind(app.pk)
            .bind(concept_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.map(|r| concept_from_row(&r, &app.app.id)).ok_or_else(|| ApiError::not_found("concept", concept_id))
    }
}
