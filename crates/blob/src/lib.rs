//! Content-addressed blob storage. A blob's key is the sha256 of its bytes, so the same image is
//! stored once however often it is uploaded, and a write can be repeated safely. The local folder
//! is the embedded default; object storage implements the same trait for scale-out.

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} not found")]
    NotFound(String),
    #[error("invalid blob key {0:?}: expected 64 lowercase hex characters")]
    InvalidKey(String),
    #[error("blob storage I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// The sha256 of `bytes`, as the key blobs are stored under.
pub fn content_key(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores `bytes` under their content key and returns the key. Storing the same bytes again
    /// is a no-op.
    async fn put(&self, bytes: Bytes) -> Result<String, BlobError>;
    async fn get(&self, key: &str) -> Result<Bytes, BlobError>;
    async fn exists(&self, key: &str) -> Result<bool, BlobError>;
    /// Removes a blob; removing one that is absent is not an error.
    async fn delete(&self, key: &str) -> Result<(), BlobError>;
    /// Every stored key (for the orphan sweep and for tests).
    async fn list(&self) -> Result<Vec<String>, BlobError>;
}

/// Blobs as files under a folder: `<root>/ab/cd/abcd…` (two fan-out levels keep folders small).
#[derive(Debug, Clone)]
pub struct LocalBlobStore {
    root: PathBuf,
}

fn check_key(key: &str) -> Result<(), BlobError> {
    if key.len() == 64 && key.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(BlobError::InvalidKey(key.to_string()))
    }
}

impl LocalBlobStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let root = root.into();
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(LocalBlobStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> PathBuf {
        self.root.join(&key[0..2]).join(&key[2..4]).join(key)
    }

    /// Writes to a temporary file, fsyncs it, renames it into place and fsyncs the folder, so a
    /// crash leaves either the whole blob or nothing under its key.
    fn write_atomically(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let dest = self.path_of(key);
        if dest.exists() {
            return Ok(());
        }
        let dir = dest.parent().expect("blob path has a parent");
        std::fs::create_dir_all(dir)?;
        let suffix: u64 = rand::random();
        let tmp = self.root.join("tmp").join(format!("{key}.{suffix:016x}"));
        let result = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &dest)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(result?)
    }
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn put(&self, bytes: Bytes) -> Result<String, BlobError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let key = content_key(&bytes);
            this.write_atomically(&key, &bytes)?;
            Ok(key)
        })
        .await
        .expect("blob write task panicked")
    }

    async fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        check_key(key)?;
        match tokio::fs::read(self.path_of(key)).await {
            Ok(bytes) => Ok(Bytes::from(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BlobError::NotFound(key.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, BlobError> {
        check_key(key)?;
        Ok(tokio::fs::try_exists(self.path_of(key)).await?)
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        check_key(key)?;
        match tokio::fs::remove_file(self.path_of(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self) -> Result<Vec<String>, BlobError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let mut keys = Vec::new();
            for level1 in std::fs::read_dir(&root)? {
                let level1 = level1?;
                if level1.file_name() == "tmp" || !level1.file_type()?.is_dir() {
                    continue;
                }
                for level2 in std::fs::read_dir(level1.path())? {
                    let level2 = level2?;
                    if !level2.file_type()?.is_dir() {
                        continue;
                    }
                    for file in std::fs::read_dir(level2.path())? {
                        let name = file?.file_name().to_string_lossy().into_owned();
                        if check_key(&name).is_ok() {
                            keys.push(name);
                        }
                    }
                }
            }
            keys.sort();
            Ok(keys)
        })
        .await
        .expect("blob list task panicked")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_once_by_content_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(dir.path()).unwrap();
        let a = store.put(Bytes::from_static(b"hello")).await.unwrap();
        let b = store.put(Bytes::from_static(b"hello")).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a, content_key(b"hello"));
        assert_eq!(store.list().await.unwrap(), vec![a.clone()]);
        assert_eq!(&store.get(&a).await.unwrap()[..], b"hello");
        store.delete(&a).await.unwrap();
        assert!(!store.exists(&a).await.unwrap());
        assert!(matches!(store.get(&a).await, Err(BlobError::NotFound(_))));
        store.delete(&a).await.unwrap();
        // no temporary files left behind
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn path_like_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(dir.path()).unwrap();
        for key in ["../etc/passwd", "ab/../../x", &"A".repeat(64)] {
            assert!(matches!(store.get(key).await, Err(BlobError::InvalidKey(_))), "{key}");
            assert!(matches!(store.delete(key).await, Err(BlobError::InvalidKey(_))), "{key}");
        }
    }
}
