//! Checkpoints: the model, the optimizer and the training cursor, written atomically (into a
//! temporary folder, fsynced, renamed into place, the parent folder fsynced), so a crash at any
//! moment leaves the previous checkpoint intact and never a half-written one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where training stands: enough to continue as if it had never stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// Optimizer steps done so far.
    pub global_step: u64,
    /// The epoch in progress (from 0).
    pub epoch: u64,
    /// Batches of this epoch already trained on.
    pub batch_in_epoch: u64,
    /// The best validation accuracy so far and the step it was reached at.
    pub best_accuracy: Option<f64>,
    pub best_step: Option<u64>,
    /// Per-epoch history (train loss, validation loss and accuracy) for curves.
    pub history: Vec<super::EpochEvent>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint I/O error in {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("checkpoint {path} is unreadable: {reason}")]
    Corrupt { path: String, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.display().to_string(), source }
}

/// A checkpoint's contents: model record bytes, optimizer record bytes, and the cursor.
pub type Checkpoint = (Vec<u8>, Vec<u8>, Cursor);

/// A checkpoint folder: `step-<global step>` under the run's checkpoint directory.
pub struct CheckpointDir {
    root: PathBuf,
}

pub const MODEL_FILE: &str = "model.bpk";
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
pub const CURSOR_FILE: &str = "cursor.json";

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut file = fs::File::create(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

fn sync_dir(path: &Path) -> Result<(), CheckpointError> {
    fs::File::open(path).and_then(|d| d.sync_all()).map_err(io(path))
}

impl CheckpointDir {
    pub fn new(root: impl Into<PathBuf>) -> Result<CheckpointDir, CheckpointError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io(&root))?;
        Ok(CheckpointDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn step_dir(&self, step: u64) -> PathBuf {
        self.root.join(format!("step-{step:010}"))
    }

    /// Writes a checkpoint for `cursor.global_step` atomically. Writing the same step again
    /// replaces it.
    pub fn write(&self, model: &[u8], optimizer: &[u8], cursor: &Cursor) -> Result<PathBuf, CheckpointError> {
        let final_dir = self.step_dir(cursor.global_step);
        let tmp = self.root.join(format!(".tmp-step-{:010}-{}", cursor.global_step, std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        write_file(&tmp.join(MODEL_FILE), model)?;
        write_file(&tmp.join(OPTIMIZER_FILE), optimizer)?;
        let json = serde_json::to_vec_pretty(cursor).expect("cursor serialises");
        write_file(&tmp.join(CURSOR_FILE), &json)?;
        sync_dir(&tmp)?;
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
        }
        fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
        sync_dir(&self.root)?;
        Ok(final_dir)
    }

    /// Completed checkpoints, oldest first.
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io(&self.root))? {
            let entry = entry.map_err(io(&self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
                out.push((step, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The newest checkpoint's files: (model bytes, optimizer bytes, cursor).
    pub fn latest(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let Some((_, dir)) = self.list()?.pop() else { return Ok(None) };
        Self::read(&dir).map(Some)
    }

    pub fn read(dir: &Path) -> Result<Checkpoint, CheckpointError> {
        let model = fs::read(dir.join(MODEL_FILE)).map_err(io(dir))?;
        let optimizer = fs::read(dir.join(OPTIMIZER_FILE)).map_err(io(dir))?;
        let cursor_bytes = fs::read(dir.join(CURSOR_FILE)).map_err(io(dir))?;
        let cursor = serde_json::from_slice(&cursor_bytes)
            .map_err(|e| CheckpointError::Corrupt { path: dir.display().to_string(), reason: e.to_string() })?;
        Ok((model, optimizer, cursor))
    }

    /// Keeps the newest `keep_last` checkpoints and the one at `best_step`; removes the rest
    /// (and leftovers of interrupted writes).
    pub fn prune(&self, keep_last: usize, best_step: Option<u64>) -> Result<(), CheckpointError> {
        let all = self.list()?;
        let cutoff = all.len().saturating_sub(keep_last.max(1));
        for (step, dir) in &all[..cutoff] {
            if Some(*step) != best_step {
                fs::remove_dir_all(dir).map_err(io(dir))?;
            }
        }
        for entry in fs::read_dir(&self.root).map_err(io(&self.root))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-step-") && !name.ends_with(&format!("-{}", std::process::id())) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }
}
