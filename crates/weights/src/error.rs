//! The one error type of this crate.

use std::path::PathBuf;

/// Why a checkpoint could not be read or written.
///
/// Messages are written for the person who picked the file. They do not repeat the file name
/// (except [`WeightsError::Io`]); callers that load a file add it as context.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The bytes are neither safetensors nor a PyTorch `.pth`.
    #[error("not a checkpoint (expected safetensors or a PyTorch .pth): {detail}")]
    NotACheckpoint {
        /// What was found instead.
        detail: String,
    },

    /// The data ends before something it declares.
    #[error("the checkpoint is truncated: {what} runs past the end of the data")]
    Truncated {
        /// The part that was cut off.
        what: String,
    },

    /// The data is structurally invalid.
    #[error("the checkpoint is malformed: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },

    /// The pickle names a Python global outside the small allow-list a `state_dict` needs.
    ///
    /// Raised as soon as the global is read: nothing it names is ever called or emulated.
    #[error(
        "the checkpoint asks for Python global `{name}`, which a state_dict never needs; refusing to load it \
         (save `model.state_dict()` rather than a whole model or custom objects)"
    )]
    UnsupportedGlobal {
        /// `module.name`, e.g. `os.system`.
        name: String,
    },

    /// A tensor uses an element type this crate does not convert.
    #[error(
        "tensor `{tensor}` has dtype {dtype}, which cannot be loaded \
         (supported: float64/32/16, bfloat16, float8 e4m3fn/e5m2, integers and bool)"
    )]
    UnsupportedDtype {
        /// The tensor's name in the state dict (or `<unnamed>`).
        tensor: String,
        /// The dtype as the file spells it (e.g. `torch.complex64`, `C64`).
        dtype: String,
    },

    /// The checkpoint decodes, but its top-level object is not a dict of tensors.
    #[error("the checkpoint holds {found}, not a state_dict (a dict of tensors)")]
    NotAStateDict {
        /// What it holds instead, e.g. "a single tensor".
        found: String,
    },

    /// Reading or writing a file failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file (or folder) involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The safetensors library rejected the file (bad header, offsets, sizes) or could not write it.
    #[error("invalid safetensors data: {0}")]
    Safetensors(#[source] safetensors::SafeTensorError),
}

impl WeightsError {
    pub(crate) fn malformed(reason: impl Into<String>) -> Self {
        WeightsError::Malformed { reason: reason.into() }
    }

    pub(crate) fn truncated(what: impl Into<String>) -> Self {
        WeightsError::Truncated { what: what.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        WeightsError::Io { path: path.into(), source }
    }
}
