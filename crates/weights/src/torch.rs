//! PyTorch `.pth` files: the zip format (torch >= 1.6) and the legacy pickle-stream format.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek};
use std::ops::Range;
use std::rc::Rc;

use zip::ZipArchive;
use zip::result::ZipError;

use crate::WeightsError;
use crate::pickle::{ElemType, Machine, Obj, ObjId, StorageDecl, TensorSpec, Value};
use crate::tensor::{HostTensor, StateDict, Values, decode_le};

/// The first pickle of a legacy file is this integer.
pub(crate) const LEGACY_MAGIC: u128 = 0x1950a86a20f9469cfc6c;
const LEGACY_PROTOCOL_VERSION: i64 = 1001;
const MAX_NESTING: usize = 32;
/// Elements that may be materialised beyond 4 per storage byte (room for small broadcast views).
const MATERIALISE_SLACK: u64 = 1 << 20;

/// Whether a pickle value is the legacy magic number.
fn is_legacy_magic(v: &Value) -> bool {
    match v {
        Value::BigInt(bytes) => {
            let magic = LEGACY_MAGIC.to_le_bytes();
            let trimmed = bytes.iter().rposition(|&b| b != 0).map_or(&bytes[..0], |i| &bytes[..=i]);
            trimmed.len() <= 16 && trimmed == &magic[..trimmed.len()] && magic[trimmed.len()..].iter().all(|&b| b == 0)
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Choosing and flattening the state dict
// ---------------------------------------------------------------------------------------------

fn is_tensor(m: &Machine, v: &Value) -> bool {
    matches!(m.obj(v), Some(Obj::Tensor(_)))
}

fn dict_get<'m>(items: &'m [(Value, Value)], key: &str) -> Option<&'m Value> {
    items.iter().rev().find(|(k, _)| matches!(k, Value::Str(s) if &**s == key)).map(|(_, v)| v)
}

/// Unwraps training checkpoints: a dict whose values are not all tensors but which has a
/// `state_dict` or `model` entry holding a dict is replaced by that entry (repeatedly).
fn select_root(m: &Machine, mut v: Value) -> Result<Value, WeightsError> {
    for _ in 0..MAX_NESTING {
        let Some(Obj::Dict(items)) = m.obj(&v) else {
            return Err(WeightsError::NotAStateDict { found: m.describe(&v).to_string() });
        };
        if items.iter().all(|(_, x)| is_tensor(m, x)) {
            return Ok(v);
        }
        let inner = ["state_dict", "model"]
            .into_iter()
            .filter_map(|k| dict_get(items, k))
            .find(|x| matches!(m.obj(x), Some(Obj::Dict(_))));
        match inner {
            Some(inner) => v = inner.clone(),
            None => return Ok(v),
        }
    }
    Err(WeightsError::malformed(format!("checkpoint wrappers nest deeper than {MAX_NESTING} levels")))
}

fn key_name(m: &Machine, k: &Value) -> Result<String, WeightsError> {
    match k {
        Value::Str(s) => Ok(s.to_string()),
        Value::Bytes(b) => std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| WeightsError::malformed("a state_dict key is bytes that are not UTF-8")),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(WeightsError::malformed(format!("a state_dict key is {}, not a string", m.describe(other)))),
    }
}

/// Collects `(dotted name, tensor)` from nested dicts, lists and tuples; other leaves are skipped.
///
/// `budget` bounds the work (entries visited plus name bytes built): a pickle can reference one
/// container many times, and without a bound the walk could grow exponentially with nesting.
fn flatten(
    m: &Machine,
    v: &Value,
    prefix: &str,
    depth: usize,
    budget: &mut u64,
    out: &mut BTreeMap<String, ObjId>,
) -> Result<(), WeightsError> {
    if depth > MAX_NESTING {
        return Err(WeightsError::malformed(format!("the state_dict nests deeper than {MAX_NESTING} levels")));
    }
    let join = |name: &str| if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") };
    let mut visit = |name: String, child: &Value, out: &mut BTreeMap<String, ObjId>| -> Result<(), WeightsError> {
        *budget = budget.checked_sub(1 + name.len() as u64).ok_or_else(|| {
            WeightsError::malformed(
                "the state_dict refers to the same containers so often that it would not fit in memory",
            )
        })?;
        match (child, m.obj(child)) {
            (Value::Obj(id), Some(Obj::Tensor(_))) => {
                if out.insert(name.clone(), *id).is_some() {
                    return Err(WeightsError::malformed(format!("tensor name `{name}` occurs twice")));
                }
                Ok(())
            }
            (_, Some(Obj::Dict(_) | Obj::List(_) | Obj::Tuple(_))) => flatten(m, child, &name, depth + 1, budget, out),
            _ => Ok(()),
        }
    };
    match m.obj(v) {
        Some(Obj::Dict(items)) => {
            // Later duplicates of a key win, as in Python.
            let mut seen: HashMap<String, usize> = HashMap::new();
            let mut entries = Vec::with_capacity(items.len());
            for (k, child) in items {
                let holds_data =
                    matches!(m.obj(child), Some(Obj::Tensor(_) | Obj::Dict(_) | Obj::List(_) | Obj::Tuple(_)));
                let name = match key_name(m, k) {
                    Ok(n) => n,
                    Err(_) if !holds_data => continue,
                    Err(e) => return Err(e),
                };
                match seen.get(&name) {
                    Some(&i) => entries[i] = (name, child),
                    None => {
                        seen.insert(name.clone(), entries.len());
                        entries.push((name, child));
                    }
                }
            }
            for (name, child) in entries {
                visit(join(&name), child, out)?;
            }
        }
        Some(Obj::List(items) | Obj::Tuple(items)) => {
            for (i, child) in items.iter().enumerate() {
                visit(join(&i.to_string()), child, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Materialising tensors
// ---------------------------------------------------------------------------------------------

/// Reads one tensor's elements out of its root storage's bytes.
fn materialise(
    name: &str,
    spec: &TensorSpec,
    decl: StorageDecl,
    root: &[u8],
    budget: &mut u64,
) -> Result<HostTensor, WeightsError> {
    let bad = |msg: String| WeightsError::malformed(format!("tensor `{name}`: {msg}"));
    let dtype = match spec.elem {
        ElemType::Supported(d) => d,
        ElemType::Unsupported { name: dt, .. } => {
            return Err(WeightsError::UnsupportedDtype { tensor: name.to_string(), dtype: format!("torch.{dt}") });
        }
    };
    let se = decl.elem.size() as u64;
    let (view_off, view_len) = spec.storage.view.unwrap_or((0, decl.numel));
    let view_end = view_off.checked_add(view_len).filter(|&e| e <= decl.numel).ok_or_else(|| {
        bad(format!("storage view [{view_off}, +{view_len}) is outside its storage of {} elements", decl.numel))
    })?;
    // root.len() == decl.numel * se, checked by the caller; so these cannot overflow.
    let region = &root[(view_off * se) as usize..(view_end * se) as usize];

    let te = dtype.size_bytes() as u64;
    let too_big = || bad("size overflows".to_string());
    let numel = spec.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(too_big)?;
    let shape: Vec<usize> =
        spec.shape.iter().map(|&d| usize::try_from(d).map_err(|_| too_big())).collect::<Result<_, _>>()?;
    // Every tensor costs its elements plus a little for its shape, so that many tiny or empty
    // views of one storage cannot add up to unbounded memory either.
    let cost = numel.saturating_add(spec.shape.len() as u64 + 1);
    if cost > *budget {
        return Err(bad(
            "its views would materialise far more elements than the checkpoint's storages hold".to_string()
        ));
    }
    *budget -= cost;
    if numel == 0 {
        let values = if dtype.is_float() { Values::Float(Vec::new()) } else { Values::Int(Vec::new()) };
        return Ok(HostTensor { shape, values, source_dtype: dtype });
    }
    // Strides of size-1 dimensions never move; zero them so the arithmetic below stays small.
    let stride: Vec<u64> = spec.shape.iter().zip(&spec.stride).map(|(&d, &s)| if d == 1 { 0 } else { s }).collect();
    let max_index = spec
        .shape
        .iter()
        .zip(&stride)
        .try_fold(spec.offset, |a, (&d, &s)| (d - 1).checked_mul(s).and_then(|x| a.checked_add(x)))
        .ok_or_else(too_big)?;
    let needed = max_index.checked_add(1).and_then(|n| n.checked_mul(te)).ok_or_else(too_big)?;
    if needed > region.len() as u64 {
        return Err(bad(format!(
            "reads {needed} bytes from its storage `{}`, which holds only {} bytes",
            spec.storage.key,
            region.len()
        )));
    }

    // Row-major strides: the tensor is a contiguous slice of the storage.
    let mut contiguous = true;
    let mut expect = 1u64;
    for (&d, &s) in spec.shape.iter().zip(&stride).rev() {
        if d != 1 && s != expect {
            contiguous = false;
            break;
        }
        expect = expect.saturating_mul(d);
    }
    let te = te as usize;
    let offset = spec.offset as usize; // <= max_index < region.len()
    let numel = numel as usize; // <= needed / te
    let values = if contiguous {
        decode_le(dtype, &region[offset * te..(offset + numel) * te], name)?
    } else {
        let stride: Vec<usize> = stride.iter().map(|&s| s as usize).collect(); // each <= max_index
        let mut bytes = Vec::with_capacity(numel * te);
        let mut idx = vec![0usize; shape.len()];
        let mut pos = offset;
        for _ in 0..numel {
            bytes.extend_from_slice(&region[pos * te..(pos + 1) * te]);
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                pos = pos.wrapping_add(stride[d]);
                if idx[d] < shape[d] {
                    break;
                }
                pos = pos.wrapping_sub(stride[d].wrapping_mul(shape[d]));
                idx[d] = 0;
            }
        }
        decode_le(dtype, &bytes, name)?
    };
    Ok(HostTensor { shape, values, source_dtype: dtype })
}

/// Flattens the root object and reads every tensor, loading each root storage once via `load`
/// (given the key and its byte size, which `load` must return exactly) and dropping it after its
/// last tensor.
fn build_state_dict<'a>(
    m: &Machine,
    root: Value,
    mut load: impl FnMut(&str, usize) -> Result<Cow<'a, [u8]>, WeightsError>,
) -> Result<StateDict, WeightsError> {
    let root = select_root(m, root)?;
    let mut named = BTreeMap::new();
    let mut flatten_budget = m.consumed.saturating_mul(16).saturating_add(16 << 20);
    flatten(m, &root, "", 0, &mut flatten_budget, &mut named)?;

    let spec_of = |id: ObjId| match &m.objs[id] {
        Obj::Tensor(t) => t,
        _ => unreachable!("flatten only collects tensors"),
    };
    let mut jobs: Vec<(String, &TensorSpec)> = named.into_iter().map(|(n, id)| (n, spec_of(id))).collect();
    jobs.sort_by(|a, b| a.1.storage.key.cmp(&b.1.storage.key));
    let mut remaining: HashMap<Rc<str>, usize> = HashMap::new();
    for (_, spec) in &jobs {
        *remaining.entry(spec.storage.key.clone()).or_default() += 1;
    }

    let mut loaded: HashMap<Rc<str>, Cow<'a, [u8]>> = HashMap::new();
    let mut budget = MATERIALISE_SLACK;
    let mut out = StateDict::new();
    for (name, spec) in jobs {
        let key = &spec.storage.key;
        let decl = *m.storages.get(key).expect("every storage ref is declared");
        if !loaded.contains_key(key) {
            let nbytes = decl
                .numel
                .checked_mul(decl.elem.size() as u64)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| WeightsError::malformed(format!("storage `{key}` declares an impossible size")))?;
            let bytes = load(key, nbytes)?;
            debug_assert_eq!(bytes.len(), nbytes);
            budget = budget.saturating_add((bytes.len() as u64).saturating_mul(4));
            loaded.insert(key.clone(), bytes);
        }
        let tensor = materialise(&name, spec, decl, &loaded[key], &mut budget)?;
        out.insert(name, tensor);
        let left = remaining.get_mut(key).expect("counted above");
        *left -= 1;
        if *left == 0 {
            loaded.remove(key);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Zip format
// ---------------------------------------------------------------------------------------------

fn zip_error(e: ZipError, what: &str, path: Option<&std::path::Path>) -> WeightsError {
    match e {
        ZipError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => WeightsError::truncated(what),
        ZipError::Io(io) if io.kind() != std::io::ErrorKind::InvalidData && path.is_some() => {
            WeightsError::io(path.expect("checked"), io)
        }
        // A cut-off download loses the archive's directory, which lives at the end of the file.
        ZipError::InvalidArchive(msg) if msg.contains("EOCD") || msg.contains("Unexpected end") => {
            WeightsError::truncated(format!("{what} (its central directory at the end of the file is missing)"))
        }
        other => WeightsError::malformed(format!("{what}: {other}")),
    }
}

fn read_entry<R: Read + Seek>(
    zip: &mut ZipArchive<R>,
    name: &str,
    exact: Option<usize>,
    path: Option<&std::path::Path>,
) -> Result<Vec<u8>, WeightsError> {
    let mut file = zip.by_name(name).map_err(|e| match e {
        ZipError::FileNotFound => WeightsError::malformed(format!("`{name}` is missing from the archive")),
        e => zip_error(e, &format!("zip entry `{name}`"), path),
    })?;
    let declared = file.size();
    let limit = match exact {
        Some(n) => {
            if declared < n as u64 {
                return Err(WeightsError::truncated(format!(
                    "storage `{name}` (needs {n} bytes, the archive holds {declared})"
                )));
            }
            n as u64
        }
        None => declared,
    };
    // No pre-allocation from declared sizes: the buffer grows only as data actually arrives.
    let mut buf = Vec::new();
    (&mut file)
        .take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| zip_error(ZipError::Io(e), &format!("zip entry `{name}`"), path))?;
    if (buf.len() as u64) < limit {
        return Err(WeightsError::truncated(format!("zip entry `{name}`")));
    }
    Ok(buf)
}

/// Loads a `torch.save` zip archive (`<prefix>/data.pkl`, `<prefix>/data/<key>`, `<prefix>/byteorder`).
pub(crate) fn load_zip<R: Read + Seek>(reader: R, path: Option<&std::path::Path>) -> Result<StateDict, WeightsError> {
    let mut zip = ZipArchive::new(reader).map_err(|e| zip_error(e, "zip archive", path))?;
    let mut pkls = zip.file_names_raw().filter_map(|n| {
        let n = std::str::from_utf8(n).ok()?;
        let prefix = n.strip_suffix("data.pkl")?;
        (prefix.is_empty() || (prefix.ends_with('/') && prefix.matches('/').count() == 1)).then(|| prefix.to_string())
    });
    let prefix = match (pkls.next(), pkls.next()) {
        (Some(p), None) => p,
        (None, _) => {
            return Err(WeightsError::NotACheckpoint {
                detail: "a zip archive without a `data.pkl` (not written by torch.save)".into(),
            });
        }
        (Some(_), Some(_)) => return Err(WeightsError::malformed("the zip archive holds more than one data.pkl")),
    };
    drop(pkls);

    let byteorder_name = format!("{prefix}byteorder");
    if zip.index_for_name(&byteorder_name).is_some() {
        let order = read_entry(&mut zip, &byteorder_name, None, path)?;
        match order.as_slice().trim_ascii() {
            b"little" => {}
            b"big" => return Err(WeightsError::malformed("big-endian checkpoints are not supported")),
            _ => return Err(WeightsError::malformed("unrecognised byteorder record")),
        }
    }

    let pickle = read_entry(&mut zip, &format!("{prefix}data.pkl"), None, path)?;
    let mut m = Machine::new();
    let (root, _) = m.load(&pickle, 0)?;
    build_state_dict(&m, root, |key, nbytes| {
        read_entry(&mut zip, &format!("{prefix}data/{key}"), Some(nbytes), path).map(Cow::Owned)
    })
}

// ---------------------------------------------------------------------------------------------
// Legacy format
// ---------------------------------------------------------------------------------------------

/// Whether the bytes start with a pickle of the legacy magic number (cheap check, no VM).
pub(crate) fn looks_legacy(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x80)
}

/// Loads the pre-1.6 format: magic, protocol version, sys_info, the object, the storage keys,
/// then each storage as `u64 LE element count` + raw little-endian elements.
pub(crate) fn load_legacy(data: &[u8]) -> Result<StateDict, WeightsError> {
    let mut m = Machine::new();
    let (magic, pos) = m.load(data, 0)?;
    if !is_legacy_magic(&magic) {
        return Err(WeightsError::NotACheckpoint {
            detail: "a Python pickle without PyTorch's magic number (not written by torch.save)".into(),
        });
    }
    let (version, pos) = m.load(data, pos)?;
    if !matches!(version, Value::Int(LEGACY_PROTOCOL_VERSION)) {
        return Err(WeightsError::malformed("unsupported legacy torch.save protocol version"));
    }
    let (sys_info, pos) = m.load(data, pos)?;
    if let Some(Obj::Dict(items)) = m.obj(&sys_info)
        && matches!(dict_get(items, "little_endian"), Some(Value::Bool(false)))
    {
        return Err(WeightsError::malformed("big-endian checkpoints are not supported"));
    }
    let (root, pos) = m.load(data, pos)?;
    let (keys, mut pos) = m.load(data, pos)?;
    let keys = m.seq(&keys).ok_or_else(|| WeightsError::malformed("the storage key list is not a list"))?;

    let mut ranges: HashMap<Rc<str>, Range<usize>> = HashMap::new();
    for k in keys {
        let key: Rc<str> = match k {
            Value::Str(s) => s.clone(),
            _ => return Err(WeightsError::malformed("a storage key is not a string")),
        };
        let decl = *m
            .storages
            .get(&key)
            .ok_or_else(|| WeightsError::malformed(format!("storage `{key}` has data but no tensor declares it")))?;
        let count_bytes = data
            .get(pos..pos.saturating_add(8))
            .ok_or_else(|| WeightsError::truncated(format!("size of storage `{key}`")))?;
        let count = u64::from_le_bytes(count_bytes.try_into().expect("8 bytes"));
        if count != decl.numel {
            return Err(WeightsError::malformed(format!(
                "storage `{key}` holds {count} elements but is declared with {}",
                decl.numel
            )));
        }
        let start = pos + 8;
        let end = count
            .checked_mul(decl.elem.size() as u64)
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| start.checked_add(n))
            .filter(|&e| e <= data.len())
            .ok_or_else(|| WeightsError::truncated(format!("data of storage `{key}`")))?;
        if ranges.insert(key.clone(), start..end).is_some() {
            return Err(WeightsError::malformed(format!("storage `{key}` is listed twice")));
        }
        pos = end;
    }

    build_state_dict(&m, root, |key, nbytes| {
        let range = ranges
            .get(key)
            .ok_or_else(|| WeightsError::malformed(format!("storage `{key}` has no data in the file")))?;
        debug_assert_eq!(range.len(), nbytes);
        Ok(Cow::Borrowed(&data[range.clone()]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    #[test]
    fn magic_number() {
        let mut m = Machine::new();
        let (v, end) = m.load(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.", 0).unwrap();
        assert_eq!(end, 15);
        assert!(is_legacy_magic(&v));
        let (v, _) = m.load(b"\x80\x02\x8a\x0b\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x00.", 0).unwrap();
        assert!(is_legacy_magic(&v));
        let (v, _) = m.load(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x18.", 0).unwrap();
        assert!(!is_legacy_magic(&v));
        assert!(!is_legacy_magic(&Value::Int(5)));
    }

    #[test]
    fn dtype_sizes_match_storage() {
        assert_eq!(ElemType::Supported(DType::BF16).size(), 2);
    }
}
