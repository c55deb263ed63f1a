//! A small, safe pickle reader for what `torch.save` writes.
//!
//! This is not Python's unpickler. It never calls, imports or emulates anything a pickle names:
//! every `GLOBAL`/`STACK_GLOBAL` is checked against a fixed allow-list the moment it is read
//! ([`resolve_global`]), and the few allowed callables (`OrderedDict`, `_rebuild_tensor_v2`, ...)
//! are interpreted here as plain data constructors that build descriptions of tensors.
//!
//! Resource safety: every read is bounds-checked against the input; containers live in an arena
//! (`Machine::objs`) and refer to each other by index, so values are cheap to copy (`BINGET`/`DUP`
//! never deep-copies), cyclic or deeply nested data cannot overflow the stack on drop, and memory
//! grows at most by a constant per opcode read.

use std::collections::HashMap;
use std::rc::Rc;

use crate::WeightsError;
use crate::tensor::DType;

/// Most dimensions a tensor may have.
pub(crate) const MAX_DIMS: usize = 64;
/// Copies allowed beyond one per input byte.
const COPY_SLACK: u64 = 1 << 16;

/// Index of an object in [`Machine::objs`].
pub(crate) type ObjId = usize;

/// A pickle value. Containers are [`Value::Obj`] handles into the machine's arena.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit `i64`: its little-endian two's-complement bytes.
    BigInt(Rc<[u8]>),
    /// A float (its value is never needed).
    Float,
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Global(Global),
    Obj(ObjId),
}

#[derive(Debug)]
pub(crate) enum Obj {
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// Python dict or `collections.OrderedDict`, in insertion order (duplicates kept; later wins).
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    /// A storage handed out by the persistent-id hook.
    Storage(StorageRef),
    Tensor(TensorSpec),
}

/// An element type as a storage class or dtype global names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ElemType {
    Supported(DType),
    /// Known to torch (so its element size is known) but not converted by this crate.
    Unsupported {
        name: &'static str,
        size: usize,
    },
}

impl ElemType {
    pub(crate) fn size(self) -> usize {
        match self {
            ElemType::Supported(d) => d.size_bytes(),
            ElemType::Unsupported { size, .. } => size,
        }
    }
}

/// The globals a state_dict pickle may name. Anything else is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    /// `torch.FloatStorage` etc.; `torch.UntypedStorage` is bytes.
    StorageClass(ElemType),
    /// `torch.float32` etc. (used by `_rebuild_tensor_v3`).
    Dtype(ElemType),
    Set,
    FrozenSet,
}

/// A storage as a tensor refers to it: the root storage's key plus an optional element window
/// (legacy format views).
#[derive(Debug, Clone)]
pub(crate) struct StorageRef {
    pub key: Rc<str>,
    /// `(offset, len)` in elements of the storage's type.
    pub view: Option<(u64, u64)>,
}

/// What the file says about one root storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StorageDecl {
    pub elem: ElemType,
    pub numel: u64,
}

/// A tensor description from `_rebuild_tensor*`; its data is read later.
#[derive(Debug, Clone)]
pub(crate) struct TensorSpec {
    pub storage: StorageRef,
    /// The tensor's element type (the storage's, except for `_rebuild_tensor_v3`).
    pub elem: ElemType,
    /// In elements of the tensor's type.
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

const STORAGE_CLASSES: &[(&str, ElemType)] = {
    use ElemType::{Supported as S, Unsupported as U};
    &[
        ("FloatStorage", S(DType::F32)),
        ("DoubleStorage", S(DType::F64)),
        ("HalfStorage", S(DType::F16)),
        ("BFloat16Storage", S(DType::BF16)),
        ("LongStorage", S(DType::I64)),
        ("IntStorage", S(DType::I32)),
        ("ShortStorage", S(DType::I16)),
        ("CharStorage", S(DType::I8)),
        ("ByteStorage", S(DType::U8)),
        ("BoolStorage", S(DType::Bool)),
        ("UntypedStorage", S(DType::U8)),
        ("ComplexFloatStorage", U { name: "complex64", size: 8 }),
        ("ComplexDoubleStorage", U { name: "complex128", size: 16 }),
        ("QInt8Storage", U { name: "qint8", size: 1 }),
        ("QUInt8Storage", U { name: "quint8", size: 1 }),
        ("QInt32Storage", U { name: "qint32", size: 4 }),
        ("QUInt4x2Storage", U { name: "quint4x2", size: 1 }),
        ("QUInt2x4Storage", U { name: "quint2x4", size: 1 }),
    ]
};

const DTYPES: &[(&str, ElemType)] = {
    use ElemType::{Supported as S, Unsupported as U};
    &[
        ("float32", S(DType::F32)),
        ("float", S(DType::F32)),
        ("float64", S(DType::F64)),
        ("double", S(DType::F64)),
        ("float16", S(DType::F16)),
        ("half", S(DType::F16)),
        ("bfloat16", S(DType::BF16)),
        ("float8_e4m3fn", S(DType::F8E4M3)),
        ("float8_e5m2", S(DType::F8E5M2)),
        ("int64", S(DType::I64)),
        ("long", S(DType::I64)),
        ("int32", S(DType::I32)),
        ("int", S(DType::I32)),
        ("int16", S(DType::I16)),
        ("short", S(DType::I16)),
        ("int8", S(DType::I8)),
        ("uint8", S(DType::U8)),
        ("uint16", S(DType::U16)),
        ("uint32", S(DType::U32)),
        ("uint64", S(DType::U64)),
        ("bool", S(DType::Bool)),
        ("float8_e4m3fnuz", U { name: "float8_e4m3fnuz", size: 1 }),
        ("float8_e5m2fnuz", U { name: "float8_e5m2fnuz", size: 1 }),
        ("float8_e8m0fnu", U { name: "float8_e8m0fnu", size: 1 }),
        ("complex32", U { name: "complex32", size: 4 }),
        ("complex64", U { name: "complex64", size: 8 }),
        ("complex128", U { name: "complex128", size: 16 }),
        ("cfloat", U { name: "complex64", size: 8 }),
        ("cdouble", U { name: "complex128", size: 16 }),
        ("qint8", U { name: "qint8", size: 1 }),
        ("quint8", U { name: "quint8", size: 1 }),
        ("qint32", U { name: "qint32", size: 4 }),
    ]
};

/// Checks a global against the allow-list. This is the only place a pickle's globals are looked at.
pub(crate) fn resolve_global(module: &str, name: &str) -> Result<Global, WeightsError> {
    let found = match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor") => Some(Global::RebuildTensor),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_tensor_v3") => Some(Global::RebuildTensorV3),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => Some(Global::RebuildParameterWithState),
        ("builtins" | "__builtin__", "set") => Some(Global::Set),
        ("builtins" | "__builtin__", "frozenset") => Some(Global::FrozenSet),
        ("torch.storage", "UntypedStorage") => Some(Global::StorageClass(ElemType::Supported(DType::U8))),
        ("torch", _) => STORAGE_CLASSES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, e)| Global::StorageClass(e))
            .or_else(|| DTYPES.iter().find(|(n, _)| *n == name).map(|&(_, e)| Global::Dtype(e))),
        _ => None,
    };
    found.ok_or_else(|| WeightsError::UnsupportedGlobal { name: format!("{module}.{name}") })
}

/// Runs pickles over an arena of objects shared by all pickles of one file.
#[derive(Default)]
pub(crate) struct Machine {
    pub objs: Vec<Obj>,
    /// Root storages by key, as declared by persistent ids.
    pub storages: HashMap<Rc<str>, StorageDecl>,
    /// Pickle bytes run so far (over all `load` calls).
    pub consumed: u64,
    /// Values that REDUCE may still copy out of shared containers (`set(l)`, `OrderedDict(l)`,
    /// tensor sizes). Grows with the input read, so memo references cannot multiply memory.
    copy_budget: u64,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WeightsError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| WeightsError::truncated(format!("pickle {what} at offset {}", self.pos)))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N], WeightsError> {
        Ok(self.take(N, what)?.try_into().expect("length checked"))
    }

    fn u8(&mut self, what: &str) -> Result<u8, WeightsError> {
        Ok(self.arr::<1>(what)?[0])
    }

    /// A length that must fit in what is left of the input.
    fn len_u64(&mut self, n: u64) -> Result<usize, WeightsError> {
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.data.len() - self.pos)
            .ok_or_else(|| WeightsError::truncated(format!("pickle value of {n} bytes at offset {}", self.pos)))
    }

    fn line(&mut self, what: &str) -> Result<&'a str, WeightsError> {
        let rest = &self.data[self.pos..];
        let nl = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| WeightsError::truncated(format!("pickle {what} at offset {}", self.pos)))?;
        let s = std::str::from_utf8(&rest[..nl])
            .map_err(|_| WeightsError::malformed(format!("pickle {what} at offset {} is not UTF-8", self.pos)))?;
        self.pos += nl + 1;
        Ok(s)
    }
}

fn malformed_at(pos: usize, msg: impl std::fmt::Display) -> WeightsError {
    WeightsError::malformed(format!("pickle opcode at offset {pos}: {msg}"))
}

/// Integer from little-endian two's-complement bytes (LONG1/LONG4).
fn long_value(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let fill = if negative { 0xff } else { 0x00 };
    // Strip sign-extension bytes beyond 8, keeping the value's sign.
    let mut len = bytes.len();
    while len > 8 && bytes[len - 1] == fill && (bytes[len - 2] & 0x80 != 0) == negative {
        len -= 1;
    }
    if len <= 8 {
        let mut buf = [fill; 8];
        buf[..len].copy_from_slice(&bytes[..len]);
        Value::Int(i64::from_le_bytes(buf))
    } else {
        Value::BigInt(Rc::from(bytes))
    }
}

impl Machine {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn alloc(&mut self, obj: Obj) -> Value {
        self.objs.push(obj);
        Value::Obj(self.objs.len() - 1)
    }

    pub(crate) fn obj(&self, v: &Value) -> Option<&Obj> {
        match v {
            Value::Obj(id) => self.objs.get(*id),
            _ => None,
        }
    }

    /// Elements of a tuple or list.
    pub(crate) fn seq(&self, v: &Value) -> Option<&[Value]> {
        match self.obj(v)? {
            Obj::Tuple(items) | Obj::List(items) => Some(items),
            _ => None,
        }
    }

    /// A short description of a value for error messages.
    pub(crate) fn describe(&self, v: &Value) -> &'static str {
        match v {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) | Value::BigInt(_) => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a string",
            Value::Bytes(_) => "bytes",
            Value::Global(_) => "a class or function",
            Value::Obj(id) => match self.objs.get(*id) {
                Some(Obj::List(_)) => "a list",
                Some(Obj::Tuple(_)) => "a tuple",
                Some(Obj::Dict(_)) => "a dict",
                Some(Obj::Set(_)) => "a set",
                Some(Obj::Storage(_)) => "a storage",
                Some(Obj::Tensor(_)) => "a single tensor",
                None => "an invalid object",
            },
        }
    }

    /// Runs the pickle that starts at `data[start..]`; returns its value and the offset just
    /// past its STOP opcode.
    pub(crate) fn load(&mut self, data: &[u8], start: usize) -> Result<(Value, usize), WeightsError> {
        let mut r = Reader { data, pos: start.min(data.len()) };
        let len = (data.len() - r.pos) as u64;
        self.copy_budget = self.copy_budget.saturating_add(len).saturating_add(COPY_SLACK);
        let mut stack: Vec<Value> = Vec::new();
        let mut metastack: Vec<Vec<Value>> = Vec::new();
        let mut memo: HashMap<u64, Value> = HashMap::new();

        macro_rules! pop {
            ($at:expr) => {
                stack.pop().ok_or_else(|| malformed_at($at, "stack underflow"))?
            };
        }
        macro_rules! pop_mark {
            ($at:expr) => {{
                let below = metastack.pop().ok_or_else(|| malformed_at($at, "no MARK on the stack"))?;
                std::mem::replace(&mut stack, below)
            }};
        }

        loop {
            let at = r.pos;
            if at >= data.len() {
                return Err(WeightsError::truncated(format!("pickle starting at offset {start} (no STOP opcode)")));
            }
            let op = r.u8("opcode")?;
            match op {
                // PROTO
                0x80 => {
                    let v = r.u8("PROTO argument")?;
                    if v > 5 {
                        return Err(malformed_at(at, format!("unsupported pickle protocol {v}")));
                    }
                }
                // FRAME: framing is only a read-ahead hint; the data is all in memory.
                0x95 => {
                    r.take(8, "FRAME length")?;
                }
                // STOP
                b'.' => {
                    let v = pop!(at);
                    self.consumed += (r.pos - start) as u64;
                    return Ok((v, r.pos));
                }
                b'(' => {
                    metastack.push(std::mem::take(&mut stack));
                }
                b'}' => {
                    let v = self.alloc(Obj::Dict(Vec::new()));
                    stack.push(v);
                }
                b']' => {
                    let v = self.alloc(Obj::List(Vec::new()));
                    stack.push(v);
                }
                b')' => {
                    let v = self.alloc(Obj::Tuple(Vec::new()));
                    stack.push(v);
                }
                // EMPTY_SET
                0x8f => {
                    let v = self.alloc(Obj::Set(Vec::new()));
                    stack.push(v);
                }
                b't' => {
                    let items = pop_mark!(at);
                    let v = self.alloc(Obj::Tuple(items));
                    stack.push(v);
                }
                // TUPLE1, TUPLE2, TUPLE3
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if stack.len() < n {
                        return Err(malformed_at(at, "stack underflow"));
                    }
                    let items = stack.split_off(stack.len() - n);
                    let v = self.alloc(Obj::Tuple(items));
                    stack.push(v);
                }
                // FROZENSET
                0x91 => {
                    let items = pop_mark!(at);
                    let v = self.alloc(Obj::Set(items));
                    stack.push(v);
                }
                b's' => {
                    let value = pop!(at);
                    let key = pop!(at);
                    self.dict_mut(stack.last(), at)?.push((key, value));
                }
                b'u' => {
                    let items = pop_mark!(at);
                    if items.len() % 2 != 0 {
                        return Err(malformed_at(at, "SETITEMS with an odd number of items"));
                    }
                    let dict = self.dict_mut(stack.last(), at)?;
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        dict.push((k, v));
                    }
                }
                b'a' => {
                    let value = pop!(at);
                    self.list_mut(stack.last(), at)?.push(value);
                }
                b'e' => {
                    let items = pop_mark!(at);
                    self.list_mut(stack.last(), at)?.extend(items);
                }
                // ADDITEMS
                0x90 => {
                    let items = pop_mark!(at);
                    match stack.last().and_then(|v| match v {
                        Value::Obj(id) => self.objs.get_mut(*id),
                        _ => None,
                    }) {
                        Some(Obj::Set(s)) => s.extend(items),
                        _ => return Err(malformed_at(at, "ADDITEMS on something that is not a set")),
                    }
                }
                // BINPUT, LONG_BINPUT, MEMOIZE
                b'q' | b'r' | 0x94 => {
                    let idx = match op {
                        b'q' => u64::from(r.u8("BINPUT index")?),
                        b'r' => u64::from(u32::from_le_bytes(r.arr("LONG_BINPUT index")?)),
                        _ => memo.len() as u64,
                    };
                    let top = stack.last().ok_or_else(|| malformed_at(at, "memoizing an empty stack"))?;
                    memo.insert(idx, top.clone());
                }
                // BINGET, LONG_BINGET
                b'h' | b'j' => {
                    let idx = if op == b'h' {
                        u64::from(r.u8("BINGET index")?)
                    } else {
                        u64::from(u32::from_le_bytes(r.arr("LONG_BINGET index")?))
                    };
                    let v = memo.get(&idx).ok_or_else(|| malformed_at(at, format!("memo entry {idx} is missing")))?;
                    stack.push(v.clone());
                }
                b'J' => stack.push(Value::Int(i64::from(i32::from_le_bytes(r.arr("BININT")?)))),
                b'K' => stack.push(Value::Int(i64::from(r.u8("BININT1")?))),
                b'M' => stack.push(Value::Int(i64::from(u16::from_le_bytes(r.arr("BININT2")?)))),
                // LONG1
                0x8a => {
                    let n = r.u8("LONG1 length")?;
                    let bytes = r.take(usize::from(n), "LONG1")?;
                    stack.push(long_value(bytes));
                }
                // LONG4
                0x8b => {
                    let n = i32::from_le_bytes(r.arr("LONG4 length")?);
                    let n = u64::try_from(n).map_err(|_| malformed_at(at, "negative LONG4 length"))?;
                    let n = r.len_u64(n)?;
                    let bytes = r.take(n, "LONG4")?;
                    stack.push(long_value(bytes));
                }
                b'G' => {
                    r.take(8, "BINFLOAT")?;
                    stack.push(Value::Float);
                }
                // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => u64::from(u32::from_le_bytes(r.arr("BINUNICODE length")?)),
                        0x8c => u64::from(r.u8("SHORT_BINUNICODE length")?),
                        _ => u64::from_le_bytes(r.arr("BINUNICODE8 length")?),
                    };
                    let n = r.len_u64(n)?;
                    let bytes = r.take(n, "string")?;
                    let s = std::str::from_utf8(bytes).map_err(|_| malformed_at(at, "string is not valid UTF-8"))?;
                    stack.push(Value::Str(Rc::from(s)));
                }
                // BINSTRING, SHORT_BINSTRING (Python 2 str): text if UTF-8, else bytes.
                b'T' | b'U' => {
                    let n = if op == b'T' {
                        let n = i32::from_le_bytes(r.arr("BINSTRING length")?);
                        u64::try_from(n).map_err(|_| malformed_at(at, "negative BINSTRING length"))?
                    } else {
                        u64::from(r.u8("SHORT_BINSTRING length")?)
                    };
                    let n = r.len_u64(n)?;
                    let bytes = r.take(n, "string")?;
                    stack.push(match std::str::from_utf8(bytes) {
                        Ok(s) => Value::Str(Rc::from(s)),
                        Err(_) => Value::Bytes(Rc::from(bytes)),
                    });
                }
                // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => u64::from(u32::from_le_bytes(r.arr("BINBYTES length")?)),
                        b'C' => u64::from(r.u8("SHORT_BINBYTES length")?),
                        _ => u64::from_le_bytes(r.arr("BINBYTES8 length")?),
                    };
                    let n = r.len_u64(n)?;
                    let bytes = r.take(n, "bytes")?;
                    stack.push(Value::Bytes(Rc::from(bytes)));
                }
                b'N' => stack.push(Value::None),
                0x88 => stack.push(Value::Bool(true)),
                0x89 => stack.push(Value::Bool(false)),
                // GLOBAL
                b'c' => {
                    let module = r.line("GLOBAL module name")?;
                    let name = r.line("GLOBAL name")?;
                    stack.push(Value::Global(resolve_global(module, name)?));
                }
                // STACK_GLOBAL
                0x93 => {
                    let name = pop!(at);
                    let module = pop!(at);
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(resolve_global(m, n)?)),
                        _ => return Err(malformed_at(at, "STACK_GLOBAL needs two strings")),
                    }
                }
                // INST: instantiates a class named inline. Check the name, then refuse the opcode.
                b'i' => {
                    let module = r.line("INST module name")?;
                    let name = r.line("INST class name")?;
                    resolve_global(module, name)?;
                    return Err(malformed_at(at, "the INST opcode is not supported"));
                }
                // EXT1, EXT2, EXT4: globals looked up in copyreg's extension registry.
                0x82..=0x84 => {
                    let code = match op {
                        0x82 => u32::from(r.u8("EXT1")?),
                        0x83 => u32::from(u16::from_le_bytes(r.arr("EXT2")?)),
                        _ => u32::from_le_bytes(r.arr("EXT4")?),
                    };
                    return Err(WeightsError::UnsupportedGlobal { name: format!("copyreg extension #{code}") });
                }
                b'R' => {
                    let args = pop!(at);
                    let func = pop!(at);
                    let v = self.call(&func, &args, at)?;
                    stack.push(v);
                }
                // NEWOBJ, NEWOBJ_EX: cls.__new__(cls, *args)
                0x81 | 0x92 => {
                    if op == 0x92 {
                        pop!(at); // kwargs
                    }
                    let args = pop!(at);
                    let cls = pop!(at);
                    let no_args = self.seq(&args).is_some_and(<[Value]>::is_empty);
                    let obj = match cls {
                        Value::Global(Global::OrderedDict) if no_args => Obj::Dict(Vec::new()),
                        Value::Global(Global::Set | Global::FrozenSet) if no_args => Obj::Set(Vec::new()),
                        _ => return Err(malformed_at(at, format!("cannot instantiate {}", self.describe(&cls)))),
                    };
                    let v = self.alloc(obj);
                    stack.push(v);
                }
                // BUILD: only the attributes torch puts on an OrderedDict state_dict (`_metadata`),
                // which are ignored.
                b'b' => {
                    let _state = pop!(at);
                    let target = stack.last().ok_or_else(|| malformed_at(at, "stack underflow"))?;
                    if !matches!(self.obj(target), Some(Obj::Dict(_))) {
                        return Err(malformed_at(at, format!("cannot set the state of {}", self.describe(target))));
                    }
                }
                // BINPERSID
                b'Q' => {
                    let pid = pop!(at);
                    let v = self.persistent_load(&pid, at)?;
                    stack.push(v);
                }
                b'0' => {
                    if stack.pop().is_none() {
                        let _ = pop_mark!(at);
                    }
                }
                b'1' => {
                    let _ = pop_mark!(at);
                }
                b'2' => {
                    let top = stack.last().ok_or_else(|| malformed_at(at, "stack underflow"))?.clone();
                    stack.push(top);
                }
                0x97 | 0x98 => {
                    return Err(malformed_at(at, "out-of-band buffers (pickle protocol 5) are not supported"));
                }
                _ => {
                    let shown = if op.is_ascii_graphic() { format!(" ('{}')", op as char) } else { String::new() };
                    return Err(WeightsError::malformed(format!(
                        "unsupported pickle opcode 0x{op:02x}{shown} at offset {at} (torch.save does not emit it)"
                    )));
                }
            }
        }
    }

    fn dict_mut(&mut self, v: Option<&Value>, at: usize) -> Result<&mut Vec<(Value, Value)>, WeightsError> {
        if let Some(Value::Obj(id)) = v
            && let Some(Obj::Dict(d)) = self.objs.get_mut(*id)
        {
            return Ok(d);
        }
        Err(malformed_at(at, "SETITEM on something that is not a dict"))
    }

    fn list_mut(&mut self, v: Option<&Value>, at: usize) -> Result<&mut Vec<Value>, WeightsError> {
        if let Some(Value::Obj(id)) = v
            && let Some(Obj::List(l)) = self.objs.get_mut(*id)
        {
            return Ok(l);
        }
        Err(malformed_at(at, "APPEND on something that is not a list"))
    }

    /// Accounts for `n` values copied out of a shared container.
    fn charge(&mut self, n: usize, at: usize) -> Result<(), WeightsError> {
        self.copy_budget = self.copy_budget.checked_sub(n as u64).ok_or_else(|| {
            malformed_at(at, "the pickle expands to far more data than it contains (refusing a decompression bomb)")
        })?;
        Ok(())
    }

    fn int_arg(&self, v: &Value, what: &str, at: usize) -> Result<u64, WeightsError> {
        match v {
            Value::Int(i) => u64::try_from(*i).map_err(|_| malformed_at(at, format!("{what} is negative ({i})"))),
            Value::Bool(b) => Ok(u64::from(*b)),
            other => Err(malformed_at(at, format!("{what} should be an int, not {}", self.describe(other)))),
        }
    }

    fn ints_arg(&self, v: &Value, what: &str, at: usize) -> Result<Vec<u64>, WeightsError> {
        let items = self
            .seq(v)
            .ok_or_else(|| malformed_at(at, format!("{what} should be a tuple, not {}", self.describe(v))))?;
        items.iter().map(|x| self.int_arg(x, what, at)).collect()
    }

    /// Interprets REDUCE for an allowed global. Nothing here runs code named by the file.
    fn call(&mut self, func: &Value, args: &Value, at: usize) -> Result<Value, WeightsError> {
        let Value::Global(g) = func else {
            return Err(malformed_at(at, format!("REDUCE calls {}", self.describe(func))));
        };
        let args = self
            .seq(args)
            .ok_or_else(|| malformed_at(at, format!("REDUCE arguments are {}, not a tuple", self.describe(args))))?;
        if args.len() > 8 {
            return Err(malformed_at(at, format!("{g:?} called with {} arguments", args.len())));
        }
        let args = args.to_vec();
        let arity = |ok: bool| {
            if ok { Ok(()) } else { Err(malformed_at(at, format!("{g:?} called with {} arguments", args.len()))) }
        };
        match *g {
            Global::OrderedDict => {
                arity(args.len() <= 1)?;
                let mut items = Vec::new();
                if let Some(pairs) = args.first() {
                    let n = self.seq(pairs).map_or(0, <[Value]>::len);
                    self.charge(n, at)?;
                    let pairs =
                        self.seq(pairs).ok_or_else(|| malformed_at(at, "OrderedDict argument is not a list"))?;
                    for p in pairs {
                        match self.seq(p) {
                            Some([k, v]) => items.push((k.clone(), v.clone())),
                            _ => return Err(malformed_at(at, "OrderedDict item is not a pair")),
                        }
                    }
                }
                Ok(self.alloc(Obj::Dict(items)))
            }
            Global::Set | Global::FrozenSet => {
                arity(args.len() <= 1)?;
                let iterable = |m: &Self, v: &Value| match m.obj(v) {
                    Some(Obj::List(x) | Obj::Tuple(x) | Obj::Set(x)) => Some(x.len()),
                    _ => None,
                };
                let items = match args.first() {
                    None => Vec::new(),
                    Some(v) => {
                        let n = iterable(self, v).ok_or_else(|| malformed_at(at, "set() argument is not a list"))?;
                        self.charge(n, at)?;
                        match self.obj(v) {
                            Some(Obj::List(x) | Obj::Tuple(x) | Obj::Set(x)) => x.clone(),
                            _ => Vec::new(),
                        }
                    }
                };
                Ok(self.alloc(Obj::Set(items)))
            }
            Global::RebuildTensor | Global::RebuildTensorV2 | Global::RebuildTensorV3 => {
                match g {
                    Global::RebuildTensor => arity(args.len() == 4)?,
                    Global::RebuildTensorV2 => arity(args.len() == 6 || args.len() == 7)?,
                    _ => arity(args.len() == 7 || args.len() == 8)?,
                }
                let (storage, storage_elem) = match self.obj(&args[0]) {
                    Some(Obj::Storage(s)) => {
                        let decl = self.storages.get(&s.key).expect("storage declared when created");
                        (s.clone(), decl.elem)
                    }
                    _ => {
                        return Err(malformed_at(
                            at,
                            format!("tensor storage is {}, not a storage", self.describe(&args[0])),
                        ));
                    }
                };
                let elem = if *g == Global::RebuildTensorV3 {
                    match &args[6] {
                        Value::Global(Global::Dtype(e)) => *e,
                        other => {
                            return Err(malformed_at(at, format!("tensor dtype is {}", self.describe(other))));
                        }
                    }
                } else {
                    storage_elem
                };
                let offset = self.int_arg(&args[1], "storage offset", at)?;
                let shape = self.ints_arg(&args[2], "tensor size", at)?;
                let stride = self.ints_arg(&args[3], "tensor stride", at)?;
                if shape.len() != stride.len() {
                    return Err(malformed_at(at, "tensor size and stride have different lengths"));
                }
                if shape.len() > MAX_DIMS {
                    return Err(malformed_at(
                        at,
                        format!("tensor has {} dimensions (at most {MAX_DIMS})", shape.len()),
                    ));
                }
                self.charge(2 * shape.len(), at)?;
                Ok(self.alloc(Obj::Tensor(TensorSpec { storage, elem, offset, shape, stride })))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                arity(args.len() == if *g == Global::RebuildParameter { 3 } else { 4 })?;
                match self.obj(&args[0]) {
                    Some(Obj::Tensor(_)) => Ok(args[0].clone()),
                    _ => Err(malformed_at(at, format!("parameter data is {}", self.describe(&args[0])))),
                }
            }
            Global::StorageClass(_) | Global::Dtype(_) => {
                Err(malformed_at(at, "a storage class or dtype is called directly, which torch.save never does"))
            }
        }
    }

    fn str_like(v: &Value) -> Option<Rc<str>> {
        match v {
            Value::Str(s) => Some(s.clone()),
            Value::Bytes(b) => std::str::from_utf8(b).ok().map(Rc::from),
            Value::Int(i) => Some(Rc::from(i.to_string())),
            _ => None,
        }
    }

    /// torch's persistent ids: `('storage', storage_class, key, location, numel)` in zip files,
    /// plus a trailing `view_metadata` (None or `(view_key, offset, size)`) in the legacy format.
    fn persistent_load(&mut self, pid: &Value, at: usize) -> Result<Value, WeightsError> {
        let items = self
            .seq(pid)
            .ok_or_else(|| malformed_at(at, format!("persistent id is {}, not a tuple", self.describe(pid))))?;
        let kind = items.first().and_then(Self::str_like);
        match kind.as_deref() {
            Some("storage") => {}
            Some("module") => {
                return Err(WeightsError::malformed(
                    "the checkpoint embeds Python module source code (a pickled nn.Module), which a state_dict never \
                     needs; save `model.state_dict()` instead",
                ));
            }
            _ => return Err(malformed_at(at, "unknown persistent id (expected a 'storage' record)")),
        }
        if items.len() != 5 && items.len() != 6 {
            return Err(malformed_at(at, format!("storage record has {} fields", items.len())));
        }
        let elem = match &items[1] {
            Value::Global(Global::StorageClass(e)) => *e,
            other => return Err(malformed_at(at, format!("storage type is {}", self.describe(other)))),
        };
        let key = Self::str_like(&items[2]).ok_or_else(|| malformed_at(at, "storage key is not a string"))?;
        let numel = self.int_arg(&items[4], "storage size", at)?;
        let view = match items.get(5) {
            None | Some(Value::None) => None,
            Some(v) => match self.seq(v) {
                Some([_view_key, off, len]) => {
                    Some((self.int_arg(off, "storage view offset", at)?, self.int_arg(len, "storage view size", at)?))
                }
                _ => return Err(malformed_at(at, "storage view metadata is not (key, offset, size)")),
            },
        };
        let decl = StorageDecl { elem, numel };
        match self.storages.get(&key) {
            Some(prev) if *prev != decl => {
                return Err(malformed_at(
                    at,
                    format!("storage `{key}` is declared twice with different types or sizes"),
                ));
            }
            Some(_) => {}
            None => {
                self.storages.insert(key.clone(), decl);
            }
        }
        Ok(self.alloc(Obj::Storage(StorageRef { key, view })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<(Machine, Value), WeightsError> {
        let mut m = Machine::new();
        let (v, _) = m.load(bytes, 0)?;
        Ok((m, v))
    }

    #[test]
    fn long1_values() {
        assert!(matches!(long_value(&[]), Value::Int(0)));
        assert!(matches!(long_value(&[0xff]), Value::Int(-1)));
        assert!(matches!(long_value(&[0x80, 0x00]), Value::Int(128)));
        assert!(matches!(long_value(&[0xff; 12]), Value::Int(-1)));
        let magic = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
        assert!(matches!(long_value(&magic), Value::BigInt(_)));
    }

    #[test]
    fn memo_and_containers() {
        // {'a': [1, 2], 'b': <same list>}
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00a]q\x01(K\x01K\x02eX\x01\x00\x00\x00bh\x01u.";
        let (m, v) = run(p).unwrap();
        let Some(Obj::Dict(items)) = m.obj(&v) else { panic!("not a dict") };
        assert_eq!(items.len(), 2);
        assert_eq!(m.seq(&items[1].1).unwrap().len(), 2);
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b'(', 1_000_000));
        p.extend(std::iter::repeat_n(b't', 1_000_000));
        p.push(b'.');
        let (m, _) = run(&p).unwrap();
        drop(m);
        // A list that contains itself.
        let p = b"\x80\x02]q\x00h\x00a.";
        run(p).unwrap();
    }

    #[test]
    fn repeated_memo_gets_do_not_copy() {
        let mut p = vec![0x80, 2, b'B'];
        p.extend(1_000_000u32.to_le_bytes());
        p.extend(vec![0u8; 1_000_000]);
        p.extend(b"q\x00(");
        for _ in 0..100_000 {
            p.extend(b"h\x00");
        }
        p.extend(b"l.");
        // 'l' (LIST, text mode) is refused, but only after 100k gets of a 1 MB string cost nothing.
        assert!(matches!(run(&p), Err(WeightsError::Malformed { .. })));
    }

    #[test]
    fn refuses_globals_when_read() {
        let err = run(b"\x80\x02cos\nsystem\n.").err().unwrap();
        assert!(matches!(err, WeightsError::UnsupportedGlobal { ref name } if name == "os.system"), "{err}");
        let err = run(b"\x80\x02c__main__\nModel\nq\x00)\x81.").err().unwrap();
        assert!(matches!(err, WeightsError::UnsupportedGlobal { ref name } if name == "__main__.Model"));
        let err = run(b"\x80\x02\x82\x01.").err().unwrap();
        assert!(matches!(err, WeightsError::UnsupportedGlobal { .. }));
        assert!(resolve_global("torch", "FloatStorage").is_ok());
        assert!(resolve_global("torch", "load").is_err());
        assert!(resolve_global("torch._utils", "_rebuild_qtensor").is_err());
    }

    #[test]
    fn errors_not_panics_on_bad_stack_use() {
        for p in [
            &b"."[..],
            b"t.",
            b"\x85.",
            b"s.",
            b"Ns.",
            b"NNu.",
            b"a.",
            b"R.",
            b"NNR.",
            b"b.",
            b"Q.",
            b"1.",
            b"2.",
            b"h\x05.",
        ] {
            assert!(run(p).is_err(), "{p:?}");
        }
        let err = run(b"\x80\x02\xff").err().unwrap();
        assert!(err.to_string().contains("0xff") && err.to_string().contains("offset 2"), "{err}");
    }
}
