//! Host tensors, the state dict, and element decoding.

use std::collections::BTreeMap;
use std::collections::btree_map;
use std::fmt;

use half::{bf16, f16};

use crate::WeightsError;

/// The element type a tensor had in the file it came from.
///
/// Floats of every width are converted to `f32` on load and integers/bools to `i64`;
/// this records what the file held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    /// float8 e4m3 "fn" flavour (no infinities), `torch.float8_e4m3fn`, safetensors `F8_E4M3`.
    F8E4M3,
    /// float8 e5m2, `torch.float8_e5m2`, safetensors `F8_E5M2`.
    F8E5M2,
    I64,
    I32,
    I16,
    I8,
    U64,
    U32,
    U16,
    U8,
    Bool,
}

impl DType {
    /// Bytes per element in the file.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::F8E4M3 | DType::F8E5M2 | DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// Whether values of this type load as [`Values::Float`].
    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3 | DType::F8E5M2)
    }

    /// The PyTorch spelling, e.g. `float32`.
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::F64 => "float64",
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F8E4M3 => "float8_e4m3fn",
            DType::F8E5M2 => "float8_e5m2",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U64 => "uint64",
            DType::U32 => "uint32",
            DType::U16 => "uint16",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.torch_name())
    }
}

/// Element values, contiguous in row-major (C) order.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// Every floating-point source type, converted to `f32`.
    Float(Vec<f32>),
    /// Every integer source type and bool (as 0/1), converted to `i64`.
    Int(Vec<i64>),
}

impl Values {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Values::Float(v) => v.len(),
            Values::Int(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A dense tensor in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first; empty for a scalar.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values in row-major order.
    pub values: Values,
    /// The element type in the source file.
    pub source_dtype: DType,
}

impl HostTensor {
    /// A float32 tensor. `values.len()` should equal the product of `shape`.
    pub fn from_f32(shape: Vec<usize>, values: Vec<f32>) -> Self {
        HostTensor { shape, values: Values::Float(values), source_dtype: DType::F32 }
    }

    /// An int64 tensor. `values.len()` should equal the product of `shape`.
    pub fn from_i64(shape: Vec<usize>, values: Vec<i64>) -> Self {
        HostTensor { shape, values: Values::Int(values), source_dtype: DType::I64 }
    }

    /// Number of elements (product of the shape; 1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values if they are floats.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.values {
            Values::Float(v) => Some(v),
            Values::Int(_) => None,
        }
    }

    /// The values if they are integers (or bools).
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.values {
            Values::Int(v) => Some(v),
            Values::Float(_) => None,
        }
    }
}

/// Named tensors, sorted by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict {
    tensors: BTreeMap<String, HostTensor>,
}

impl StateDict {
    /// An empty state dict.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.tensors.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut HostTensor> {
        self.tensors.get_mut(name)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn remove(&mut self, name: &str) -> Option<HostTensor> {
        self.tensors.remove(name)
    }

    /// Inserts a tensor, returning the one it replaced.
    pub fn insert(&mut self, name: impl Into<String>, tensor: HostTensor) -> Option<HostTensor> {
        self.tensors.insert(name.into(), tensor)
    }

    /// Names in sorted order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// `(name, tensor)` in sorted order.
    pub fn iter(&self) -> btree_map::Iter<'_, String, HostTensor> {
        self.tensors.iter()
    }

    pub fn into_inner(self) -> BTreeMap<String, HostTensor> {
        self.tensors
    }
}

impl From<BTreeMap<String, HostTensor>> for StateDict {
    fn from(tensors: BTreeMap<String, HostTensor>) -> Self {
        StateDict { tensors }
    }
}

impl FromIterator<(String, HostTensor)> for StateDict {
    fn from_iter<I: IntoIterator<Item = (String, HostTensor)>>(iter: I) -> Self {
        StateDict { tensors: iter.into_iter().collect() }
    }
}

impl IntoIterator for StateDict {
    type Item = (String, HostTensor);
    type IntoIter = btree_map::IntoIter<String, HostTensor>;
    fn into_iter(self) -> Self::IntoIter {
        self.tensors.into_iter()
    }
}

impl<'a> IntoIterator for &'a StateDict {
    type Item = (&'a String, &'a HostTensor);
    type IntoIter = btree_map::Iter<'a, String, HostTensor>;
    fn into_iter(self) -> Self::IntoIter {
        self.tensors.iter()
    }
}

/// float8 e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities, S.1111.111 is NaN.
fn f8_e4m3fn_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = i32::from((b >> 3) & 0x0f);
    let man = f32::from(b & 0x07);
    if exp == 0x0f && b & 0x07 == 0x07 {
        return f32::NAN;
    }
    if exp == 0 { sign * man / 8.0 * 2f32.powi(-6) } else { sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7) }
}

/// Decodes little-endian elements of `dtype` (`bytes.len()` a multiple of the element size).
pub(crate) fn decode_le(dtype: DType, bytes: &[u8], tensor: &str) -> Result<Values, WeightsError> {
    debug_assert_eq!(bytes.len() % dtype.size_bytes(), 0);
    fn floats<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Values {
        Values::Float(bytes.chunks_exact(N).map(|c| f(c.try_into().expect("chunk size"))).collect())
    }
    fn ints<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> i64) -> Values {
        Values::Int(bytes.chunks_exact(N).map(|c| f(c.try_into().expect("chunk size"))).collect())
    }
    Ok(match dtype {
        DType::F64 => floats(bytes, |b| f64::from_le_bytes(b) as f32),
        DType::F32 => floats(bytes, f32::from_le_bytes),
        DType::F16 => floats(bytes, |b| f16::from_le_bytes(b).to_f32()),
        DType::BF16 => floats(bytes, |b| bf16::from_le_bytes(b).to_f32()),
        DType::F8E4M3 => floats(bytes, |[b]| f8_e4m3fn_to_f32(b)),
        DType::F8E5M2 => floats(bytes, |[b]| f16::from_bits(u16::from(b) << 8).to_f32()),
        DType::I64 => ints(bytes, i64::from_le_bytes),
        DType::I32 => ints(bytes, |b| i64::from(i32::from_le_bytes(b))),
        DType::I16 => ints(bytes, |b| i64::from(i16::from_le_bytes(b))),
        DType::I8 => ints(bytes, |b| i64::from(i8::from_le_bytes(b))),
        DType::U32 => ints(bytes, |b| i64::from(u32::from_le_bytes(b))),
        DType::U16 => ints(bytes, |b| i64::from(u16::from_le_bytes(b))),
        DType::U8 => ints(bytes, |[b]| i64::from(b)),
        DType::Bool => ints(bytes, |[b]| i64::from(b != 0)),
        DType::U64 => {
            let mut out = Vec::with_capacity(bytes.len() / 8);
            for c in bytes.chunks_exact(8) {
                let v = u64::from_le_bytes(c.try_into().expect("chunk size"));
                out.push(i64::try_from(v).map_err(|_| {
                    WeightsError::malformed(format!(
                        "tensor `{tensor}` (uint64) holds {v}, which does not fit the int64 values this crate returns"
                    ))
                })?);
            }
            Values::Int(out)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f8_e4m3fn_known_values() {
        assert_eq!(f8_e4m3fn_to_f32(0x00), 0.0);
        assert_eq!(f8_e4m3fn_to_f32(0x38), 1.0); // exp 7, man 0
        assert_eq!(f8_e4m3fn_to_f32(0xb8), -1.0);
        assert_eq!(f8_e4m3fn_to_f32(0x7e), 448.0); // largest finite
        assert_eq!(f8_e4m3fn_to_f32(0x01), 2f32.powi(-9)); // smallest subnormal
        assert!(f8_e4m3fn_to_f32(0x7f).is_nan());
    }

    #[test]
    fn f8_e5m2_known_values() {
        let v = decode_le(DType::F8E5M2, &[0x3c, 0xc0, 0x7c], "t").unwrap();
        assert_eq!(v, Values::Float(vec![1.0, -2.0, f32::INFINITY]));
    }

    #[test]
    fn u64_overflow_is_an_error() {
        assert!(decode_le(DType::U64, &u64::MAX.to_le_bytes(), "t").is_err());
        assert_eq!(decode_le(DType::U64, &7u64.to_le_bytes(), "t").unwrap(), Values::Int(vec![7]));
    }
}
