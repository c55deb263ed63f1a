//! Safe reading of PyTorch checkpoints (state_dicts) into plain host tensors.
//!
//! [`load_file`] and [`load_bytes`] recognise the format by content, not by file name:
//!
//! * **safetensors**: an 8-byte little-endian header length, then a JSON header starting with `{`.
//! * **PyTorch zip** (`torch.save` since torch 1.6): `<prefix>/data.pkl` plus one raw
//!   little-endian file per storage under `<prefix>/data/`.
//! * **PyTorch legacy** (before 1.6, or `_use_new_zipfile_serialization=False`): a stream of
//!   pickles (magic number, protocol version, sys info, the object, the storage keys) followed by
//!   the raw storages.
//!
//! Every float type is converted to `f32` and every integer type and bool to `i64`
//! ([`Values`]); [`HostTensor::source_dtype`] says what the file held.
//!
//! # Safety of `.pth` files
//!
//! A `.pth` is a Python pickle, and unpickling with Python runs whatever code the file names.
//! This crate never does: it has its own small pickle reader that understands the opcodes
//! `torch.save` emits and accepts only these globals, checked the moment a `GLOBAL` or
//! `STACK_GLOBAL` opcode is read:
//! `collections.OrderedDict`, `torch._utils._rebuild_tensor{,_v2,_v3}`,
//! `torch._utils._rebuild_parameter{,_with_state}`, the `torch.*Storage` classes
//! (`torch.FloatStorage`, ..., `torch.UntypedStorage`), dtype objects such as `torch.float32`,
//! and `builtins.set`/`frozenset`. Anything else (`os.system`, `builtins.eval`, `__main__.Model`,
//! `numpy.core.multiarray.scalar`, ...) fails with [`WeightsError::UnsupportedGlobal`]. The allowed
//! callables are interpreted as data constructors, never called. All reads are bounds-checked, so
//! truncated or corrupt input yields an error rather than a panic, and allocations are bounded by
//! the size of the input (a storage may not declare more data than the file holds).
//!
//! # Which object is the state dict
//!
//! The checkpoint's top-level object must be a dict. If some of its values are not tensors and it
//! has a `"state_dict"` or `"model"` entry that is itself a dict (a training checkpoint such as
//! `{"epoch": 3, "model": ..., "optimizer": ...}`), that entry is used instead (`"state_dict"`
//! first; applied repeatedly). The chosen dict is then flattened: tensors keep their keys, nested
//! dicts, lists and tuples contribute their tensors under dotted names (`{"a": {"b": t}}` gives
//! `a.b`, `{"a": [t]}` gives `a.0`), and other values (numbers, strings, `None`, ...) are ignored.
//! For safetensors files the tensors are taken as they are.
//!
//! Tensor views are materialised: storage offsets and strides are honoured (and checked against
//! the storage), and the result is contiguous in row-major order.

mod error;
mod pickle;
mod st;
mod tensor;
mod torch;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

pub use error::WeightsError;
pub use st::{save_safetensors, to_safetensors_bytes};
pub use tensor::{DType, HostTensor, StateDict, Values};

/// The file formats [`load_bytes`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    /// `torch.save` zip archive (torch >= 1.6).
    TorchZip,
    /// `torch.save` legacy pickle stream (before torch 1.6).
    TorchLegacy,
}

/// Identifies the format from the first bytes of a file (at least 9 are needed for safetensors).
/// `None` means "not a checkpoint".
pub fn detect_format(head: &[u8]) -> Option<Format> {
    if head.starts_with(b"PK\x03\x04") {
        Some(Format::TorchZip)
    } else if head.len() > 8 && head[8] == b'{' {
        Some(Format::Safetensors)
    } else if torch::looks_legacy(head) {
        Some(Format::TorchLegacy)
    } else {
        None
    }
}

fn not_a_checkpoint(head: &[u8]) -> WeightsError {
    let detail = if head.is_empty() {
        "the file is empty".to_string()
    } else if head.starts_with(b"PK") {
        "a zip archive that does not start with a file entry".to_string()
    } else {
        let shown: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("unrecognised content starting with bytes {}", shown.join(" "))
    };
    WeightsError::NotACheckpoint { detail }
}

/// Loads a checkpoint held in memory. See the crate docs for the formats and rules.
pub fn load_bytes(bytes: &[u8]) -> Result<StateDict, WeightsError> {
    match detect_format(bytes) {
        Some(Format::Safetensors) => st::load(bytes),
        Some(Format::TorchZip) => torch::load_zip(std::io::Cursor::new(bytes), None),
        Some(Format::TorchLegacy) => torch::load_legacy(bytes),
        None => Err(not_a_checkpoint(bytes)),
    }
}

/// Loads a checkpoint file. Zip archives are read entry by entry; other formats are read whole.
/// See the crate docs for the formats and rules.
pub fn load_file(path: &Path) -> Result<StateDict, WeightsError> {
    let io = |e| WeightsError::io(path, e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut head = Vec::with_capacity(16);
    (&mut file).take(16).read_to_end(&mut head).map_err(io)?;
    match detect_format(&head) {
        Some(Format::TorchZip) => {
            file.seek(SeekFrom::Start(0)).map_err(io)?;
            torch::load_zip(std::io::BufReader::new(file), Some(path))
        }
        Some(_) => {
            let mut bytes = head;
            file.read_to_end(&mut bytes).map_err(io)?;
            load_bytes(&bytes)
        }
        None => Err(not_a_checkpoint(&head)),
    }
}
