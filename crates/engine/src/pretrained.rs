//! Loading pretrained checkpoints from files: as they are, or as the backbone of a model that
//! gets a fresh classification head for new concepts (fine-tuning).

use std::path::Path;

use deeptune_weights::WeightsError;

use crate::torch::{KeysAllowedToDiffer, LoadError, LoadReport, TorchModel, load_state_dict};

#[derive(Debug, thiserror::Error)]
pub enum PretrainedError {
    #[error("cannot read weights from {path}: {source}")]
    Read { path: String, source: WeightsError },
    #[error("{path}: {source}")]
    Fit { path: String, source: LoadError },
}

/// Loads every parameter from the checkpoint; fails on any missing, unexpected or mis-shaped
/// key except those `allowed` to differ.
pub fn load_checkpoint<M: TorchModel>(
    model: M,
    path: &Path,
    allowed: &KeysAllowedToDiffer,
) -> Result<(M, LoadReport), PretrainedError> {
    let dict = deeptune_weights::load_file(path)
        .map_err(|source| PretrainedError::Read { path: path.display().to_string(), source })?;
    load_state_dict(model, &dict, allowed)
        .map_err(|source| PretrainedError::Fit { path: path.display().to_string(), source })
}

/// Fine-tuning set-up: the backbone comes from the checkpoint, the classification head stays
/// freshly initialised (whatever the checkpoint's head, even one of the same size), so the model
/// learns the new concepts from scratch on top of pretrained features.
pub fn load_backbone<M: TorchModel>(model: M, path: &Path) -> Result<(M, LoadReport), PretrainedError> {
    let mut dict = deeptune_weights::load_file(path)
        .map_err(|source| PretrainedError::Read { path: path.display().to_string(), source })?;
    let head: Vec<String> =
        dict.keys().filter(|k| M::head_prefixes().iter().any(|p| k.starts_with(p))).map(str::to_string).collect();
    for key in head {
        dict.remove(&key);
    }
    load_state_dict(model, &dict, &KeysAllowedToDiffer::prefixes(M::head_prefixes()))
        .map_err(|source| PretrainedError::Fit { path: path.display().to_string(), source })
}
