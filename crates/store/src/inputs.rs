//! Inputs (stored images) and annotations (concept labels on them).

use std::collections::HashMap;

use deeptune_core::api::{Annotation, Concept, Data, HostedImage, Image, ImageInfo, Input, InputFilter};
use deeptune_core::ids::generate_id;
use deeptune_core::{ApiError, StatusCode};
use sqlx::{Row, Sqlite, Transaction};

use crate::{AppRecord, Result, Store, check_id, check_metadata, db_error, insert_error, now, parse_metadata};

/// An image that has been validated and written to blob storage, ready to be recorded.
#[derive(Debug, Clone)]
pub struct NewInput {
    pub id: String,
    pub blob_key: String,
    pub thumb_key: String,
    pub format: String,
    pub width: u32,
    pub height: u32,
    pub size_bytes: u64,
    pub source_url: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub labels: Vec<LabelValue>,
}

/// One concept label: value 1 is a positive, 0 a negative.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelValue {
    pub concept_id: String,
    pub value: f32,
}

/// Turns request concepts into labels, refusing values other than 0 and 1 and repeated concepts.
pub fn labels_from_concepts(concepts: &[Concept]) -> Result<Vec<LabelValue>> {
    let mut labels: Vec<LabelValue> = Vec::with_capacity(concepts.len());
    for concept in concepts {
        if concept.id.is_empty() {
            return Err(ApiError::new(StatusCode::ANNOTATION_INVALID_ARGUMENT, "every concept needs an id"));
        }
        check_id("concept", &concept.id)?;
        let value = concept.value.unwrap_or(1.0);
        if value != 0.0 && value != 1.0 {
            return Err(ApiError::new(
                StatusCode::ANNOTATION_INVALID_ARGUMENT,
                format!("concept {:?} has value {value}; a label is 1 (positive) or 0 (negative)", concept.id),
            ));
        }
        if labels.iter().any(|l| l.concept_id == concept.id) {
            return Err(ApiError::new(
                StatusCode::ANNOTATION_INVALID_ARGUMENT,
                format!("concept {:?} is listed twice", concept.id),
            ));
        }
        labels.push(LabelValue { concept_id: concept.id.clone(), value });
    }
    Ok(labels)
}

pub(crate) fn hosted(app: &AppRecord, input_id: &str) -> HostedImage {
    let base = format!("/v2/users/{}/apps/{}/inputs/{}", app.app.user_id, app.app.id, input_id);
    HostedImage { url: format!("{base}/image"), thumbnail_url: format!("{base}/thumbnail") }
}

fn input_from_row(app: &AppRecord, row: &sqlx::sqlite::SqliteRow, concepts: Vec<Concept>) -> Input {
    let id: String = row.get("id");
    Input {
        data: Data {
            image: Some(Image {
                url: row.get("source_url"),
                base64: None,
                allow_duplicate_url: None,
                hosted: Some(hosted(app, &id)),
                image_info: Some(ImageInfo {
                    width: row.get::<i64, _>("width") as u32,
                    height: row.get::<i64, _>("height") as u32,
                    format: row.get("format"),
                    file_size: row.get::<i64, _>("size_bytes") as u64,
                    content_sha256: row.get("blob_key"),
                }),
            }),
            concepts,
            metadata: parse_metadata(row.get("metadata")),
        },
        id,
        created_at: Some(row.get("created_at")),
        modified_at: Some(row.get("modified_at")),
        status: None,
    }
}

/// Creates the concepts that labels name and that don't exist yet (as Clarifai does).
async fn ensure_concepts(tx: &mut Transaction<'_, Sqlite>, app_pk: i64, labels: &[LabelValue]) -> Result<()> {
    let ts = now();
    for label in labels {
        sqlx::query("INSERT OR IGNORE INTO concepts (app_pk, id, name, created_at) VALUES (?, ?, ?, ?)")
            .bind(app_pk)
            .bind(&label.concept_id)
            .bind(&label.concept_id)
            .bind(&ts)
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
    }
    Ok(())
}

async fn insert_labels(
    tx: &mut Transaction<'_, Sqlite>,
    app_pk: i64,
    annotation_id: &str,
    input_id: &str,
    labels: &[LabelValue],
) -> Result<()> {
    ensure_concepts(tx, app_pk, labels).await?;
    for (position, label) in labels.iter().enumerate() {
        let existing: Option<(String,)> =
            sqlx::query_as("SELECT annotation_id FROM labels WHERE app_pk = ? AND input_id = ? AND concept_id = ?")
                .bind(app_pk)
                .bind(input_id)
                .bind(&label.concept_id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(db_error)?;
        if let Some((other,)) = existing {
            return Err(ApiError::new(
                StatusCode::DATABASE_DUPLICATE_KEY,
                format!(
                    "input {input_id:?} already has a label for concept {:?} (annotation {other:?}); patch that annotation instead",
                    label.concept_id
                ),
            ));
        }
        sqlx::query(
            "INSERT INTO labels (app_pk, annotation_id, input_id, concept_id, value, position) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(app_pk)
        .bind(annotation_id)
        .bind(input_id)
        .bind(&label.concept_id)
        .bind(label.value)
        .bind(position as i64)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

impl Store {
    /// Records one input with its labels in one transaction.
    pub async fn insert_input(&self, app: &AppRecord, new: NewInput) -> Result<Input> {
        check_id("input", &new.id)?;
        let metadata = check_metadata(&new.metadata)?;
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let ts = now();
        sqlx::query(
            "INSERT INTO inputs (app_pk, id, blob_key, thumb_key, format, width, height, size_bytes, source_url, metadata, created_at, modified_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(app.pk)
        .bind(&new.id)
        .bind(&new.blob_key)
        .bind(&new.thumb_key)
        .bind(&new.format)
        .bind(new.width as i64)
        .bind(new.height as i64)
        .bind(new.size_bytes as i64)
        .bind(&new.source_url)
        .bind(metadata)
        .bind(&ts)
        .bind(&ts)
        .execute(&mut *tx)
        .await
        .map_err(|e| insert_error(e, "input", &new.id))?;
        if !new.labels.is_empty() {
            let annotation_id = generate_id();
            sqlx::query(
                "INSERT INTO annotations (app_pk, id, input_id, created_at, modified_at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(app.pk)
            .bind(&annotation_id)
            .bind(&new.id)
            .bind(&ts)
            .bind(&ts)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            insert_labels(&mut tx, app.pk, &annotation_id, &new.id, &new.labels).await?;
        }
        tx.commit().await.map_err(db_error)?;
        self.get_input(app, &new.id).await
    }

    /// The labels of the given inputs, keyed by input id, in label order.
    async fn concepts_of_inputs(&self, app: &AppRecord, input_ids: &[String]) -> Result<HashMap<String, Vec<Concept>>> {
        let mut out: HashMap<String, Vec<Concept>> = HashMap::new();
        if input_ids.is_empty() {
            return Ok(out);
        }
        let placeholders = vec!["?"; input_ids.len()].join(",");
        let sql = format!(
            "SELECT l.input_id, l.concept_id, l.value, c.name FROM labels l
             JOIN concepts c ON c.app_pk = l.app_pk AND c.id = l.concept_id
             WHERE l.app_pk = ? AND l.input_id IN ({placeholders})
             ORDER BY l.input_id, l.annotation_id, l.position"
        );
        let mut query = sqlx::query(&sql).bind(app.pk);
        for id in input_ids {
            query = query.bind(id);
        }
        for row in query.fetch_all(&self.pool).await.map_err(db_error)? {
            out.entry(row.get("input_id")).or_default().push(Concept {
                id: row.get("concept_id"),
                name: row.get("name"),
                value: Some(row.get::<f64, _>("value") as f32),
                ..Default::default()
            });
        }
        Ok(out)
    }

    pub async fn get_input(&self, app: &AppRecord, input_id: &str) -> Result<Input> {
        let row = sqlx::query("SELECT * FROM inputs WHERE app_pk = ? AND id = ?")
            .bind(app.pk)
            .bind(input_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .ok_or_else(|| ApiError::not_found("input", input_id))?;
        let mut concepts = self.concepts_of_inputs(app, &[input_id.to_string()]).await?;
        Ok(input_from_row(app, &row, concepts.remove(input_id).unwrap_or_default()))
    }

    /// The blob keys of an input's image and thumbnail, and its format.
    pub async fn input_blobs(&self, app: &AppRecord, input_id: &str) -> Result<(String, String, String)> {
        sqlx::query_as("SELECT blob_key, thumb_key, format FROM inputs WHERE app_pk = ? AND id = ?")
            .bind(app.pk)
            .bind(input_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .ok_or_else(|| ApiError::not_found("input", input_id))
    }

    pub async fn input_exists(&self, app: &AppRecord, input_id: &str) -> Result<bool> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM inputs WHERE app_pk = ? AND id = ?")
            .bind(app.pk)
            .bind(input_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(row.is_some())
    }

    /// Newest first.
    pub async fn list_inputs(
        &self,
        app: &AppRecord,
        filter: &InputFilter,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<Input>> {
        let mut sql = String::from("SELECT * FROM inputs i WHERE i.app_pk = ?");
        if let Some(concept_id) = &filter.concept_id {
            self.get_concept(app, concept_id).await?;
            sql.push_str(
                " AND EXISTS (SELECT 1 FROM labels l WHERE l.app_pk = i.app_pk AND l.input_id = i.id AND l.concept_id = ?",
            );
            if filter.concept_value.is_some() {
                sql.push_str(" AND l.value = ?");
            }
            sql.push(')');
        }
        if filter.unlabeled == Some(true) {
            sql.push_str(" AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.app_pk = i.app_pk AND l.input_id = i.id)");
        }
        sql.push_str(" ORDER BY i.rowid DESC LIMIT ? OFFSET ?");
        let mut query = sqlx::query(&sql).bind(app.pk);
        if let Some(concept_id) = &filter.concept_id {
            query = query.bind(concept_id);
            if let Some(value) = filter.concept_value {
                query = query.bind(value);
            }
        }
        let rows = query.bind(limit).bind(offset as i64).fetch_all(&self.pool).await.map_err(db_error)?;
        let ids: Vec<String> = rows.iter().map(|r| r.get("id")).collect();
        let mut concepts = self.concepts_of_inputs(app, &ids).await?;
        Ok(rows
            .iter()
            .map(|r| {
                let id: String = r.get("id");
                let c = concepts.remove(&id).unwrap_or_default();
                input_from_row(app, r, c)
            })
            .collect())
    }

    pub async fn count_inputs(&self, app: &AppRecord) -> Result<u64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM inputs WHERE app_pk = ?")
            .bind(app.pk)
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(n as u64)
    }

    /// Deletes all the inputs or none (an unknown id deletes nothing); returns the blob keys
    /// that may now be unreferenced.
    pub async fn delete_inputs(&self, app: &AppRecord, ids: &[String]) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let mut keys = Vec::new();
        for id in ids {
            let row: Option<(String, String)> =
                sqlx::query_as("SELECT blob_key, thumb_key FROM inputs WHERE app_pk = ? AND id = ?")
                    .bind(app.pk)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_error)?;
            let (blob, thumb) = row.ok_or_else(|| ApiError::not_found("input", id))?;
            keys.push(blob);
            keys.push(thumb);
            sqlx::query("DELETE FROM inputs WHERE app_pk = ? AND id = ?")
                .bind(app.pk)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    // -----------------------------------------------------------------------------------------
    // Annotations

    async fn annotation_concepts(&self, app: &AppRecord, annotation_id: &str) -> Result<Vec<Concept>> {
        let rows = sqlx::query(
            "SELECT l.concept_id, l.value, c.name FROM labels l
             JOIN concepts c ON c.app_pk = l.app_pk AND c.id = l.concept_id
             WHERE l.app_pk = ? AND l.annotation_id = ? ORDER BY l.position",
        )
        .bind(app.pk)
        .bind(annotation_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows
            .iter()
            .map(|r| Concept {
                id: r.get("concept_id"),
                name: r.get("name"),
                value: Some(r.get::<f64, _>("value") as f32),
                ..Default::default()
            })
            .collect())
    }

    pub async fn get_annotation(&self, app: &AppRecord, annotation_id: &str) -> Result<Annotation> {
        let row: (String, String, String, String) =
            sqlx::query_as("SELECT id, input_id, created_at, modified_at FROM annotations WHERE app_pk = ? AND id = ?")
                .bind(app.pk)
                .bind(annotation_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?
                .ok_or_else(|| ApiError::not_found("annotation", annotation_id))?;
        let concepts = self.annotation_concepts(app, annotation_id).await?;
        Ok(Annotation {
            id: row.0,
            input_id: row.1,
            data: Data { image: None, concepts, metadata: None },
            created_at: Some(row.2),
            modified_at: Some(row.3),
            status: None,
        })
    }

    /// Creates all the annotations or none.
    pub async fn create_annotations(&self, app: &AppRecord, annotations: Vec<Annotation>) -> Result<Vec<Annotation>> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let mut ids = Vec::with_capacity(annotations.len());
        for annotation in &annotations {
            let id = if annotation.id.is_empty() { generate_id() } else { annotation.id.clone() };
            check_id("annotation", &id)?;
            if annotation.input_id.is_empty() {
                return Err(ApiError::new(StatusCode::ANNOTATION_INVALID_ARGUMENT, "annotation needs an input_id"));
            }
            let labels = labels_from_concepts(&annotation.data.concepts)?;
            if labels.is_empty() {
                return Err(ApiError::new(
                    StatusCode::ANNOTATION_INVALID_ARGUMENT,
                    "annotation needs at least one concept in data.concepts",
                ));
            }
            let exists: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM inputs WHERE app_pk = ? AND id = ?")
                .bind(app.pk)
                .bind(&annotation.input_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
            if exists.is_none() {
                return Err(ApiError::not_found("input", &annotation.input_id));
            }
            let ts = now();
            sqlx::query(
                "INSERT INTO annotations (app_pk, id, input_id, created_at, modified_at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(app.pk)
            .bind(&id)
            .bind(&annotation.input_id)
            .bind(&ts)
            .bind(&ts)
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error(e, "annotation", &id))?;
            insert_labels(&mut tx, app.pk, &id, &annotation.input_id, &labels).await?;
            ids.push(id);
        }
        tx.commit().await.map_err(db_error)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.get_annotation(app, &id).await?);
        }
        Ok(out)
    }

    pub async fn list_annotations(
        &self,
        app: &AppRecord,
        input_id: Option<&str>,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<Annotation>> {
        let ids: Vec<(String,)> = match input_id {
            Some(input_id) => {
                if !self.input_exists(app, input_id).await? {
                    return Err(ApiError::not_found("input", input_id));
                }
                sqlx::query_as(
                    "SELECT id FROM annotations WHERE app_pk = ? AND input_id = ? ORDER BY rowid LIMIT ? OFFSET ?",
                )
                .bind(app.pk)
                .bind(input_id)
                .bind(limit)
                .bind(offset as i64)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query_as("SELECT id FROM annotations WHERE app_pk = ? ORDER BY rowid LIMIT ? OFFSET ?")
                    .bind(app.pk)
                    .bind(limit)
                    .bind(offset as i64)
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(db_error)?;
        let mut out = Vec::with_capacity(ids.len());
        for (id,) in ids {
            out.push(self.get_annotation(app, &id).await?);
        }
        Ok(out)
    }

    /// Changes all the annotations or none. `action`: merge (default), overwrite or remove.
    pub async fn patch_annotations(
        &self,
        app: &AppRecord,
        annotations: Vec<Annotation>,
        action: &str,
    ) -> Result<Vec<Annotation>> {
        let action = if action.is_empty() { "merge" } else { action };
        if !matches!(action, "merge" | "overwrite" | "remove") {
            return Err(ApiError::invalid(format!("action {action:?} is not one of merge, overwrite, remove")));
        }
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let mut ids = Vec::new();
        for annotation in &annotations {
            let row: Option<(String,)> = sqlx::query_as("SELECT input_id FROM annotations WHERE app_pk = ? AND id = ?")
                .bind(app.pk)
                .bind(&annotation.id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
            let (input_id,) = row.ok_or_else(|| ApiError::not_found("annotation", &annotation.id))?;
            if !annotation.input_id.is_empty() && annotation.input_id != input_id {
                return Err(ApiError::new(
                    StatusCode::ANNOTATION_INVALID_ARGUMENT,
                    format!(
                        "annotation {:?} belongs to input {input_id:?}, not {:?}",
                        annotation.id, annotation.input_id
                    ),
                ));
            }
            let labels = labels_from_concepts(&annotation.data.concepts)?;
            match action {
                "overwrite" => {
                    sqlx::query("DELETE FROM labels WHERE app_pk = ? AND annotation_id = ?")
                        .bind(app.pk)
                        .bind(&annotation.id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_error)?;
                    insert_labels(&mut tx, app.pk, &annotation.id, &input_id, &labels).await?;
                }
                "merge" => {
                    for label in &labels {
                        sqlx::query("DELETE FROM labels WHERE app_pk = ? AND annotation_id = ? AND concept_id = ?")
                            .bind(app.pk)
                            .bind(&annotation.id)
                            .bind(&label.concept_id)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_error)?;
                    }
                    insert_labels(&mut tx, app.pk, &annotation.id, &input_id, &labels).await?;
                }
                _ => {
                    for label in &labels {
                        sqlx::query("DELETE FROM labels WHERE app_pk = ? AND annotation_id = ? AND concept_id = ?")
                            .bind(app.pk)
                            .bind(&annotation.id)
                            .bind(&label.concept_id)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_error)?;
                    }
                }
            }
            sqlx::query("UPDATE annotations SET modified_at = ? WHERE app_pk = ? AND id = ?")
                .bind(now())
                .bind(app.pk)
                .bind(&annotation.id)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            ids.push(annotation.id.clone());
        }
        tx.commit().await.map_err(db_error)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.get_annotation(app, &id).await?);
        }
        Ok(out)
    }

    /// Deletes annotations by id, or every annotation of the given inputs; all or nothing.
    pub async fn delete_annotations(&self, app: &AppRecord, ids: &[String], input_ids: &[String]) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        for id in ids {
            let done = sqlx::query("DELETE FROM annotations WHERE app_pk = ? AND id = ?")
                .bind(app.pk)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            if done.rows_affected() == 0 {
                return Err(ApiError::not_found("annotation", id));
            }
        }
        for input_id in input_ids {
            let exists: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM inputs WHERE app_pk = ? AND id = ?")
                .bind(app.pk)
                .bind(input_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
            if exists.is_none() {
                return Err(ApiError::not_found("input", input_id));
            }
            sqlx::query("DELETE FROM annotations WHERE app_pk = ? AND input_id = ?")
                .bind(app.pk)
                .bind(input_id)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }
}
