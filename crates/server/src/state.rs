//! What every handler shares. Nothing here is state a second server process would need: all of
//! it lives in the store and blob storage; the lock below only orders this process's own writes.

use std::sync::Arc;

use deeptune_blob::BlobStore;
use deeptune_core::ApiError;
use deeptune_media::{ImageLimits, UrlFetcher};
use deeptune_store::Store;
use tokio::sync::RwLock;

use crate::config::Config;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub blobs: Arc<dyn BlobStore>,
    pub fetcher: UrlFetcher,
    pub image_limits: ImageLimits,
    pub config: Arc<Config>,
    /// Uploads hold it shared from blob write to metadata commit; blob collection holds it
    /// exclusively, so it never deletes a blob that an upload is about to reference.
    pub blob_lock: Arc<RwLock<()>>,
    /// Trained versions loaded for predictions (a cache: any process can load any version).
    pub models: Arc<crate::predict::ModelCache>,
}

pub const THUMBNAIL_SIDE: u32 = 256;

impl AppState {
    /// Deletes those of `keys` that no input or dataset version refers to any more.
    pub async fn collect_blobs(&self, keys: &[String]) -> Result<usize, ApiError> {
        let _exclusive = self.blob_lock.write().await;
        let mut deleted = 0;
        for key in keys {
            if !self.store.blob_referenced(key).await? {
                self.blobs.delete(key).await.map_err(|e| ApiError::internal(e.to_string()))?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Removes blobs that nothing refers to, left behind by a crash between a blob write and its
    /// metadata commit. Run at start, before requests are served.
    pub async fn sweep_orphan_blobs(&self) -> Result<usize, ApiError> {
        let _exclusive = self.blob_lock.write().await;
        let referenced = self.store.referenced_blob_keys().await?;
        let mut deleted = 0;
        for key in self.blobs.list().await.map_err(|e| ApiError::internal(e.to_string()))? {
            if !referenced.contains(&key) {
                self.blobs.delete(&key).await.map_err(|e| ApiError::internal(e.to_string()))?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}
