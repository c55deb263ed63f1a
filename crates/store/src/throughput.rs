//! Measured training and inference speed, per machine and model configuration. Workers record
//! what their runs measure and calibration runs fill the gaps; time estimates read it back.

use sqlx::Row;

use crate::{Result, Store, db_error, now};

/// What a throughput figure depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ThroughputKey {
    /// The machine: CPU model, threads, backend (see the engine's `hardware_fingerprint`).
    pub hardware: String,
    pub architecture: String,
    pub image_size: u32,
    pub batch_size: u32,
    pub frozen_backbone: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Throughput {
    pub key: ThroughputKey,
    pub train_images_per_second: f64,
    pub infer_images_per_second: f64,
    /// `calibration` or `training`.
    pub source: String,
    pub measured_at: String,
}

fn from_row(row: &sqlx::sqlite::SqliteRow) -> Throughput {
    Throughput {
        key: ThroughputKey {
            hardware: row.get("hardware"),
            architecture: row.get("architecture"),
            image_size: row.get::<i64, _>("image_size") as u32,
            batch_size: row.get::<i64, _>("batch_size") as u32,
            frozen_backbone: row.get::<i64, _>("frozen_backbone") != 0,
        },
        train_images_per_second: row.get("train_images_per_second"),
        infer_images_per_second: row.get("infer_images_per_second"),
        source: row.get("source"),
        measured_at: row.get("measured_at"),
    }
}

impl Store {
    /// Records (replacing) a measurement.
    pub async fn record_throughput(
        &self,
        key: &ThroughputKey,
        train_images_per_second: f64,
        infer_images_per_second: f64,
        source: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO throughput (hardware, architecture, image_size, batch_size, frozen_backbone,
                 train_images_per_second, infer_images_per_second, source, measured_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (hardware, architecture, image_size, batch_size, frozen_backbone) DO UPDATE SET
                 train_images_per_second = excluded.train_images_per_second,
                 infer_images_per_second = excluded.infer_images_per_second,
                 source = excluded.source, measured_at = excluded.measured_at",
        )
        .bind(&key.hardware)
        .bind(&key.architecture)
        .bind(key.image_size as i64)
        .bind(key.batch_size as i64)
        .bind(key.frozen_backbone as i64)
        .bind(train_images_per_second)
        .bind(infer_images_per_second)
        .bind(source)
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    pub async fn get_throughput(&self, key: &ThroughputKey) -> Result<Option<Throughput>> {
        let row = sqlx::query(
            "SELECT * FROM throughput WHERE hardware = ? AND architecture = ? AND image_size = ? AND batch_size = ?
                 AND frozen_backbone = ?",
        )
        .bind(&key.hardware)
        .bind(&key.architecture)
        .bind(key.image_size as i64)
        .bind(key.batch_size as i64)
        .bind(key.frozen_backbone as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(row.as_ref().map(from_row))
    }

    /// Every measurement, newest first (estimates scale the nearest one when the exact
    /// configuration has none).
    pub async fn list_throughput(&self) -> Result<Vec<Throughput>> {
        let rows = sqlx::query("SELECT * FROM throughput ORDER BY measured_at DESC")
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(rows.iter().map(from_row).collect())
    }
}
