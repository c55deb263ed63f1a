//! Datasets, their inputs, and dataset versions: immutable snapshots with metrics and a split.

use std::collections::BTreeMap;

use deeptune_core::api::{
    Concept, ConceptCounts, Dataset, DatasetInput, DatasetVersion, DatasetVersionInput, DatasetVersionMetrics,
    SplitConfig,
};
use deeptune_core::ids::generate_id;
use deeptune_core::split::stratified_split;
use deeptune_core::{ApiError, Status, StatusCode};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::{AppRecord, Result, Store, check_id, check_metadata, db_error, insert_error, now, parse_metadata};

#[derive(Serialize, Deserialize)]
struct FrozenLabel {
    id: String,
    value: f32,
}

fn dataset_from_row(app: &AppRecord, row: &sqlx::sqlite::SqliteRow) -> Dataset {
    Dataset {
        id: row.get("id"),
        description: row.get("description"),
        metadata: parse_metadata(row.get("metadata")),
        app_id: app.app.id.clone(),
        created_at: Some(row.get("created_at")),
        modified_at: Some(row.get("modified_at")),
        inputs_count: Some(row.get::<i64, _>("inputs_count") as u64),
    }
}

fn version_from_row(row: &sqlx::sqlite::SqliteRow) -> DatasetVersion {
    let metrics: String = row.get("metrics");
    DatasetVersion {
        id: row.get("id"),
        dataset_id: row.get("dataset_id"),
        description: row.get("description"),
        split: Some(SplitConfig { train_fraction: row.get("train_fraction"), seed: row.get::<i64, _>("seed") as u64 }),
        metrics: serde_json::from_str(&metrics).ok(),
        status: Some(Status::new(StatusCode::DATASET_VERSION_READY, "")),
        created_at: Some(row.get("created_at")),
        metadata: parse_metadata(row.get("metadata")),
    }
}

const DATASET_SELECT: &str = "SELECT d.*, (SELECT COUNT(*) FROM dataset_inputs di
     WHERE di.app_pk = d.app_pk AND di.dataset_id = d.id) AS inputs_count FROM datasets d";

impl Store {
    pub async fn create_datasets(&self, app: &AppRecord, datasets: Vec<Dataset>) -> Result<Vec<Dataset>> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let mut ids = Vec::new();
        for dataset in datasets {
            let id = if dataset.id.is_empty() { generate_id() } else { dataset.id.clone() };
            check_id("dataset", &id)?;
            let metadata = check_metadata(&dataset.metadata)?;
            let ts = now();
            sqlx::query(
                "INSERT INTO datasets (app_pk, id, description, metadata, created_at, modified_at) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(app.pk)
            .bind(&id)
            .bind(&dataset.description)
            .bind(metadata)
            .bind(&ts)
            .bind(&ts)
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error(e, "dataset", &id))?;
            ids.push(id);
        }
        tx.commit().await.map_err(db_error)?;
        let mut out = Vec::new();
        for id in ids {
            out.push(self.get_dataset(app, &id).await?);
        }
        Ok(out)
    }

    pub async fn get_dataset(&self, app: &AppRecord, dataset_id: &str) -> Result<Dataset> {
        let row = sqlx::query(&format!("{DATASET_SELECT} WHERE d.app_pk = ? AND d.id = ?"))
            .bind(app.pk)
            .bind(dataset_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.map(|r| dataset_from_row(app, &r)).ok_or_else(|| ApiError::not_found("dataset", dataset_id))
    }

    pub async fn list_datasets(&self, app: &AppRecord, limit: u32, offset: u64) -> Result<Vec<Dataset>> {
        let rows = sqlx::query(&format!(
            "{DATASET_SELECT} WHERE d.app_pk = ? ORDER BY d.created_at DESC, d.id LIMIT ? OFFSET ?"
        ))
        .bind(app.pk)
        .bind(limit)
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows.iter().map(|r| dataset_from_row(app, r)).collect())
    }

    /// Deletes the dataset and its versions; returns blob keys that may now be unreferenced.
    pub async fn delete_dataset(&self, app: &AppRecord, dataset_id: &str) -> Result<Vec<String>> {
        self.get_dataset(app, dataset_id).await?;
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let keys: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT dvi.blob_key FROM dataset_version_inputs dvi
             JOIN dataset_versions dv ON dv.pk = dvi.version_pk WHERE dv.app_pk = ? AND dv.dataset_id = ?",
        )
        .bind(app.pk)
        .bind(dataset_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        sqlx::query("DELETE FROM datasets WHERE app_pk = ? AND id = ?")
            .bind(app.pk)
            .bind(dataset_id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(keys.into_iter().map(|(k,)| k).collect())
    }

    /// Adds inputs to a dataset; all or nothing. Adding an input that is already there is a no-op.
    pub async fn add_dataset_inputs(&self, app: &AppRecord, dataset_id: &str, input_ids: &[String]) -> Result<u64> {
        self.get_dataset(app, dataset_id).await?;
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let ts = now();
        let mut added = 0;
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
            let done = sqlx::query(
                "INSERT OR IGNORE INTO dataset_inputs (app_pk, dataset_id, input_id, created_at) VALUES (?, ?, ?, ?)",
            )
            .bind(app.pk)
            .bind(dataset_id)
            .bind(input_id)
            .bind(&ts)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            added += done.rows_affected();
        }
        tx.commit().await.map_err(db_error)?;
        Ok(added)
    }

    /// Removes inputs from a dataset (not from the app); all or nothing.
    pub async fn remove_dataset_inputs(&self, app: &AppRecord, dataset_id: &str, input_ids: &[String]) -> Result<()> {
        self.get_dataset(app, dataset_id).await?;
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        for input_id in input_ids {
            let done = sqlx::query("DELETE FROM dataset_inputs WHERE app_pk = ? AND dataset_id = ? AND input_id = ?")
                .bind(app.pk)
                .bind(dataset_id)
                .bind(input_id)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            if done.rows_affected() == 0 {
                return Err(ApiError::new(
                    StatusCode::INPUT_DOES_NOT_EXIST,
                    format!("input {input_id:?} is not in dataset {dataset_id:?}"),
                ));
            }
        }
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }

    pub async fn list_dataset_inputs(
        &self,
        app: &AppRecord,
        dataset_id: &str,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<DatasetInput>> {
        self.get_dataset(app, dataset_id).await?;
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT input_id, created_at FROM dataset_inputs WHERE app_pk = ? AND dataset_id = ?
             ORDER BY created_at, input_id LIMIT ? OFFSET ?",
        )
        .bind(app.pk)
        .bind(dataset_id)
        .bind(limit)
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut out = Vec::with_capacity(rows.len());
        for (input_id, created_at) in rows {
            out.push(DatasetInput { input: self.get_input(app, &input_id).await?, created_at: Some(created_at) });
        }
        Ok(out)
    }

    /// Freezes the dataset's current inputs and labels into a new version, with its metrics and
    /// split, in one transaction.
    pub async fn create_dataset_version(
        &self,
        app: &AppRecord,
        dataset_id: &str,
        request: DatasetVersion,
    ) -> Result<DatasetVersion> {
        self.get_dataset(app, dataset_id).await?;
        let id = if request.id.is_empty() { generate_id() } else { request.id.clone() };
        check_id("dataset version", &id)?;
        let split = request.split.unwrap_or_default();
        if !(split.train_fraction > 0.0 && split.train_fraction <= 1.0) {
            return Err(ApiError::invalid(format!(
                "split.train_fraction is {}; it must be greater than 0 and at most 1",
                split.train_fraction
            )));
        }
        let metadata = check_metadata(&request.metadata)?;

        let mut tx = self.pool.begin().await.map_err(db_error)?;
        // Snapshot inside the transaction so concurrent label edits can't tear it.
        let rows = sqlx::query(
            "SELECT i.id, i.blob_key, l.concept_id, l.value FROM dataset_inputs di
             JOIN inputs i ON i.app_pk = di.app_pk AND i.id = di.input_id
             LEFT JOIN labels l ON l.app_pk = i.app_pk AND l.input_id = i.id
             WHERE di.app_pk = ? AND di.dataset_id = ?
             ORDER BY i.id, l.concept_id",
        )
        .bind(app.pk)
        .bind(dataset_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let mut inputs: BTreeMap<String, (String, Vec<FrozenLabel>)> = BTreeMap::new();
        for row in &rows {
            let input_id: String = row.get("id");
            let entry = inputs.entry(input_id).or_insert_with(|| (row.get("blob_key"), Vec::new()));
            if let Some(concept_id) = row.get::<Option<String>, _>("concept_id") {
                entry.1.push(FrozenLabel { id: concept_id, value: row.get::<f64, _>("value") as f32 });
            }
        }

        // Stratify by the first positive concept (alphabetically), so each concept keeps its share.
        let strata: Vec<String> = inputs
            .values()
            .map(|(_, labels)| match labels.iter().find(|l| l.value > 0.5) {
                Some(l) => format!("+{}", l.id),
                None if labels.is_empty() => "unlabeled".to_string(),
                None => "negative-only".to_string(),
            })
            .collect();
        let items: Vec<(&str, &str)> =
            inputs.keys().map(String::as_str).zip(strata.iter().map(String::as_str)).collect();
        let is_train = stratified_split(&items, split.train_fraction, split.seed);

        let mut metrics = DatasetVersionMetrics::default();
        let mut per_concept: BTreeMap<String, ConceptCounts> = BTreeMap::new();
        for ((_, (_, labels)), &train) in inputs.iter().zip(&is_train) {
            metrics.inputs_count += 1;
            if train {
                metrics.train_inputs_count += 1;
            } else {
                metrics.validation_inputs_count += 1;
            }
            if labels.is_empty() {
                metrics.unlabeled_inputs_count += 1;
            }
            for label in labels {
                let counts = per_concept
                    .entry(label.id.clone())
                    .or_insert_with(|| ConceptCounts { id: label.id.clone(), ..Default::default() });
                if label.value > 0.5 {
                    counts.positive_count += 1;
                    if train {
                        counts.train_positive_count += 1;
                    } else {
                        counts.validation_positive_count += 1;
                    }
                } else {
                    counts.negative_count += 1;
                }
            }
        }
        metrics.concepts = per_concept.into_values().collect();

        let ts = now();
        let result = sqlx::query(
            "INSERT INTO dataset_versions (app_pk, dataset_id, id, description, train_fraction, seed, metrics, metadata, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(app.pk)
        .bind(dataset_id)
        .bind(&id)
        .bind(&request.description)
        .bind(split.train_fraction)
        .bind(split.seed as i64)
        .bind(serde_json::to_string(&metrics).expect("metrics serialise"))
        .bind(metadata)
        .bind(&ts)
        .execute(&mut *tx)
        .await
        .map_err(|e| insert_error(e, "dataset version", &id))?;
        let version_pk = result.last_insert_rowid();
        for ((input_id, (blob_key, labels)), &train) in inputs.iter().zip(&is_train) {
            sqlx::query(
                "INSERT INTO dataset_version_inputs (version_pk, input_id, split, blob_key, labels) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(version_pk)
            .bind(input_id)
            .bind(if train { "train" } else { "validation" })
            .bind(blob_key)
            .bind(serde_json::to_string(labels).expect("labels serialise"))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        self.get_dataset_version(app, dataset_id, &id).await
    }

    async fn version_pk(&self, app: &AppRecord, dataset_id: &str, version_id: &str) -> Result<i64> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT pk FROM dataset_versions WHERE app_pk = ? AND dataset_id = ? AND id = ?")
                .bind(app.pk)
                .bind(dataset_id)
                .bind(version_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        row.map(|r| r.0).ok_or_else(|| ApiError::not_found("dataset version", version_id))
    }

    pub async fn get_dataset_version(
        &self,
        app: &AppRecord,
        dataset_id: &str,
        version_id: &str,
    ) -> Result<DatasetVersion> {
        self.get_dataset(app, dataset_id).await?;
        let row = sqlx::query("SELECT * FROM dataset_versions WHERE app_pk = ? AND dataset_id = ? AND id = ?")
            .bind(app.pk)
            .bind(dataset_id)
            .bind(version_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.map(|r| version_from_row(&r)).ok_or_else(|| ApiError::not_found("dataset version", version_id))
    }

    pub async fn list_dataset_versions(
        &self,
        app: &AppRecord,
        dataset_id: &str,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<DatasetVersion>> {
        self.get_dataset(app, dataset_id).await?;
        let rows = sqlx::query(
            "SELECT * FROM dataset_versions WHERE app_pk = ? AND dataset_id = ? ORDER BY pk DESC LIMIT ? OFFSET ?",
        )
        .bind(app.pk)
        .bind(dataset_id)
        .bind(limit)
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows.iter().map(version_from_row).collect())
    }

    pub async fn list_dataset_version_inputs(
        &self,
        app: &AppRecord,
        dataset_id: &str,
        version_id: &str,
        split: Option<&str>,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<DatasetVersionInput>> {
        if let Some(s) = split
            && s != "train"
            && s != "validation"
        {
            return Err(ApiError::invalid(format!("split {s:?} is not train or validation")));
        }
        let version_pk = self.version_pk(app, dataset_id, version_id).await?;
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT input_id, split, blob_key, labels FROM dataset_version_inputs
             WHERE version_pk = ?1 AND (?2 IS NULL OR split = ?2) ORDER BY input_id LIMIT ?3 OFFSET ?4",
        )
        .bind(version_pk)
        .bind(split)
        .bind(limit)
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|(input_id, split, blob_key, labels)| {
                let labels: Vec<FrozenLabel> = serde_json::from_str(&labels).unwrap_or_default();
                DatasetVersionInput {
                    input_id,
                    split,
                    content_sha256: blob_key,
                    concepts: labels
                        .into_iter()
                        .map(|l| Concept { id: l.id.clone(), name: l.id, value: Some(l.value), ..Default::default() })
                        .collect(),
                }
            })
            .collect())
    }
}
