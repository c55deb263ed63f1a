//! safetensors reading and writing (through the `safetensors` crate, which validates the header).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, View};

use crate::WeightsError;
use crate::tensor::{DType, HostTensor, StateDict, Values, decode_le};

fn dtype_of(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F8_E4M3 => DType::F8E4M3,
        Dtype::F8_E5M2 => DType::F8E5M2,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::I8 => DType::I8,
        Dtype::U64 => DType::U64,
        Dtype::U32 => DType::U32,
        Dtype::U16 => DType::U16,
        Dtype::U8 => DType::U8,
        Dtype::BOOL => DType::Bool,
        _ => return None,
    })
}

pub(crate) fn load(bytes: &[u8]) -> Result<StateDict, WeightsError> {
    let st = SafeTensors::deserialize(bytes).map_err(WeightsError::Safetensors)?;
    let mut out = StateDict::new();
    for (name, view) in st.iter() {
        let dtype = dtype_of(view.dtype()).ok_or_else(|| WeightsError::UnsupportedDtype {
            tensor: name.to_string(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        let data = view.data();
        let numel = view.shape().iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel.and_then(|n| n.checked_mul(dtype.size_bytes())) != Some(data.len()) {
            return Err(WeightsError::malformed(format!("tensor `{name}`: data size does not match its shape")));
        }
        let values = decode_le(dtype, data, name)?;
        out.insert(name, HostTensor { shape: view.shape().to_vec(), values, source_dtype: dtype });
    }
    Ok(out)
}

/// A tensor as safetensors writes it: F32 for floats, I64 for integers.
struct Out<'a>(&'a HostTensor);

impl View for Out<'_> {
    fn dtype(&self) -> Dtype {
        match self.0.values {
            Values::Float(_) => Dtype::F32,
            Values::Int(_) => Dtype::I64,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(match &self.0.values {
            Values::Float(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Values::Int(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        })
    }

    fn data_len(&self) -> usize {
        match &self.0.values {
            Values::Float(v) => v.len() * 4,
            Values::Int(v) => v.len() * 8,
        }
    }
}

/// Serialises a state dict to safetensors bytes: float tensors as F32, integer tensors as I64,
/// with the metadata `{"format": "pt"}` that PyTorch tooling expects.
pub fn to_safetensors_bytes(dict: &StateDict) -> Result<Vec<u8>, WeightsError> {
    for (name, t) in dict.iter() {
        let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel != Some(t.values.len()) {
            return Err(WeightsError::malformed(format!(
                "tensor `{name}` has {} values but its shape {:?} needs {}",
                t.values.len(),
                t.shape,
                numel.map_or_else(|| "more than fit in memory".to_string(), |n| n.to_string())
            )));
        }
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(dict.iter().map(|(n, t)| (n.as_str(), Out(t))), Some(metadata))
        .map_err(WeightsError::Safetensors)
}

/// Writes [`to_safetensors_bytes`] to `path` atomically: a temporary file in the same folder is
/// written and fsynced, renamed over `path`, and the folder is fsynced. On error `path` is untouched.
pub fn save_safetensors(dict: &StateDict, path: &Path) -> Result<(), WeightsError> {
    let bytes = to_safetensors_bytes(dict)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut builder = tempfile::Builder::new();
    let prefix = format!(".{file_name}.");
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Like a plain File::create: 0666 minus the umask (tempfile's default is 0600).
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(|e| WeightsError::io(dir, e))?;
    tmp.write_all(&bytes).map_err(|e| WeightsError::io(tmp.path(), e))?;
    tmp.as_file().sync_all().map_err(|e| WeightsError::io(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| WeightsError::io(path, e.error))?;
    #[cfg(unix)]
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| WeightsError::io(dir, e))?;
    Ok(())
}
