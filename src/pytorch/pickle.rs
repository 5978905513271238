//! A restricted unpickler: the part of Python's pickle machine that a PyTorch state dict needs,
//! and nothing that can run code. It knows the opcodes `torch.save` writes (protocol 2, and the
//! later protocols' framing and short forms) and exactly these globals:
//!
//! - `collections.OrderedDict` (the state dict, its `_metadata`);
//! - `torch._utils._rebuild_tensor_v2` and `torch._utils._rebuild_parameter` (tensors);
//! - `torch.<Dtype>Storage` (a storage's element type, in persistent ids).
//!
//! Any other global — `os.system`, `builtins.eval`, a user's class — is refused when it is named,
//! before anything is called; REDUCE and BUILD apply only to the globals above, and the opcodes
//! that build arbitrary objects (INST, OBJ, NEWOBJ, EXT*) are refused. Every length is checked
//! against the bytes left, so a declared size never allocates more than the input holds.

use std::collections::HashMap;

/// A value on the pickle machine's stack.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// A dict or OrderedDict, in insertion order.
    Dict(Vec<(Value, Value)>),
    Global(Global),
    /// What the persistent-id callback made of a storage reference.
    Storage(StorageRef),
    Tensor(TensorRef),
}

/// The globals a state dict may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(Dtype),
}

/// Element types of PyTorch storages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    fn from_storage_name(name: &str) -> Option<Dtype> {
        Some(match name {
            "DoubleStorage" => Dtype::F64,
            "FloatStorage" => Dtype::F32,
            "HalfStorage" => Dtype::F16,
            "BFloat16Storage" => Dtype::BF16,
            "LongStorage" => Dtype::I64,
            "IntStorage" => Dtype::I32,
            "ShortStorage" => Dtype::I16,
            "CharStorage" => Dtype::I8,
            "ByteStorage" => Dtype::U8,
            "BoolStorage" => Dtype::Bool,
            _ => return None,
        })
    }
}

/// A storage: its key in the file, its element type and element count, and (legacy format) the
/// element offset of a view into another storage.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    pub key: String,
    pub dtype: Dtype,
    pub numel: u64,
    pub view_offset: u64,
}

/// A tensor: a strided view of a storage (offsets and strides in elements).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

/// Why a pickle was refused or could not be read: the caller adds the file's name.
pub type Refusal = String;

fn global(module: &str, name: &str) -> Result<Global, Refusal> {
    match (module, name) {
        ("collections", "OrderedDict") => Ok(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensor),
        ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
        ("torch", storage) => Dtype::from_storage_name(storage)
            .map(Global::Storage)
            .ok_or_else(|| refused(module, name)),
        _ => Err(refused(module, name)),
    }
}

fn refused(module: &str, name: &str) -> Refusal {
    format!(
        "refused global `{module}.{name}`: a weights file may only name OrderedDict, torch's tensor rebuilders and storage types (loading it would run code)"
    )
}

/// The pickle machine over `bytes` from `pos`; `persistent` turns a persistent id into a value
/// (a storage). Returns the unpickled value and the position after STOP.
pub fn load(
    bytes: &[u8],
    pos: usize,
    persistent: &mut dyn FnMut(Value) -> Result<Value, Refusal>,
) -> Result<(Value, usize), Refusal> {
    Machine {
        bytes,
        pos,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    }
    .run(persistent)
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack heights at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Refusal> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "pickle truncated: {n} bytes declared at byte {}, {} left",
                    self.pos,
                    self.bytes.len().saturating_sub(self.pos)
                )
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, Refusal> {
        Ok(self.take(1)?[0])
    }

    fn le(&mut self, n: usize) -> Result<u64, Refusal> {
        let mut v = 0u64;
        for (i, &b) in self.take(n)?.iter().enumerate() {
            v |= (b as u64) << (8 * i);
        }
        Ok(v)
    }

    fn line(&mut self) -> Result<String, Refusal> {
        let rest = &self.bytes[self.pos.min(self.bytes.len())..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("pickle truncated: a line without its newline")?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }

    fn pop(&mut self) -> Result<Value, Refusal> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("pickle pops past a MARK".into());
        }
        self.stack
            .pop()
            .ok_or_else(|| "pickle pops an empty stack".into())
    }

    fn top(&mut self) -> Result<&mut Value, Refusal> {
        self.stack
            .last_mut()
            .ok_or_else(|| "pickle reads an empty stack".into())
    }

    /// The items since the last MARK, removed with the mark.
    fn pop_mark(&mut self) -> Result<Vec<Value>, Refusal> {
        let m = self.marks.pop().ok_or("pickle has no MARK to pop to")?;
        if m > self.stack.len() {
            return Err("pickle's MARK lies above the stack".into());
        }
        Ok(self.stack.split_off(m))
    }

    fn text(&mut self, n: usize) -> Result<Value, Refusal> {
        let raw = self.take(n)?;
        String::from_utf8(raw.to_vec())
            .map(Value::Str)
            .map_err(|_| "pickle string is not UTF-8".into())
    }

    fn memo_get(&self, key: u32) -> Result<Value, Refusal> {
        self.memo
            .get(&key)
            .cloned()
            .ok_or_else(|| format!("pickle reads memo {key}, never stored"))
    }

    fn memo_put(&mut self, key: u32) -> Result<(), Refusal> {
        let v = self.top()?.clone();
        self.memo.insert(key, v);
        Ok(())
    }

    fn run(
        mut self,
        persistent: &mut dyn FnMut(Value) -> Result<Value, Refusal>,
    ) -> Result<(Value, usize), Refusal> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(format!("pickle protocol {proto} (at most 5 is known)"));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint only
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok((v, self.pos));
                }
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(pairs(items)?));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n + self.marks.last().copied().unwrap_or(0) {
                        return Err("pickle builds a tuple from too few items".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.le(4)? as u32 as i32 as i64;
                    self.stack.push(Value::Int(v));
                }
                b'K' => {
                    let v = self.u8()? as i64;
                    self.stack.push(Value::Int(v));
                }
                b'M' => {
                    let v = self.le(2)? as i64;
                    self.stack.push(Value::Int(v));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let raw = self.take(n)?.to_vec();
                    self.stack.push(Value::Int(long(&raw)?));
                }
                b'G' => {
                    let raw = self.take(8)?;
                    let v = f64::from_be_bytes(raw.try_into().expect("8 bytes"));
                    self.stack.push(Value::Float(v));
                }
                b'I' => {
                    let l = self.line()?;
                    self.stack.push(match l.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(s.parse().map_err(|_| format!("pickle INT `{s}`"))?),
                    });
                }
                b'L' => {
                    let l = self.line()?;
                    let s = l.trim_end_matches('L');
                    self.stack.push(Value::Int(
                        s.parse().map_err(|_| format!("pickle LONG `{s}`"))?,
                    ));
                }
                b'X' => {
                    let n = self.le(4)? as usize;
                    let v = self.text(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.text(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = usize::try_from(self.le(8)?).unwrap_or(usize::MAX);
                    let v = self.text(n)?;
                    self.stack.push(v);
                }
                b'T' | b'U' => {
                    // Python 2 str: bytes; storage keys and locations arrive this way.
                    let n = if op == b'T' { self.le(4)? as usize } else { self.u8()? as usize };
                    let text = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(Value::Str(text));
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'B' => self.le(4)? as usize,
                        b'C' => self.u8()? as usize,
                        _ => usize::try_from(self.le(8)?).unwrap_or(usize::MAX),
                    };
                    let raw = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(raw));
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.le(4)? as u32;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?;
                }
                b'p' => {
                    let l = self.line()?;
                    let k = l.parse().map_err(|_| format!("pickle PUT `{l}`"))?;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                b'j' => {
                    let k = self.le(4)? as u32;
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                b'g' => {
                    let l = self.line()?;
                    let k = l.parse().map_err(|_| format!("pickle GET `{l}`"))?;
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(global(&module, &name)?));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            self.stack.push(Value::Global(global(&m, &n)?))
                        }
                        _ => return Err("pickle STACK_GLOBAL of non-strings".into()),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = persistent(pid)?;
                    self.stack.push(v);
                }
                b'P' => {
                    let l = self.line()?;
                    let v = persistent(Value::Str(l))?;
                    self.stack.push(v);
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = reduce(f, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    let _state = self.pop()?;
                    match self.top()? {
                        // An OrderedDict's attributes (a state dict's `_metadata`) and a
                        // tensor's are not needed: the state is dropped.
                        Value::Dict(_) | Value::Tensor(_) => {}
                        other => {
                            return Err(format!("pickle BUILD on {}: refused", kind(other)))
                        }
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        other => {
                            return Err(format!("pickle SETITEM on {}", kind(other)));
                        }
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let new = pairs(items)?;
                    match self.top()? {
                        Value::Dict(d) => d.extend(new),
                        other => return Err(format!("pickle SETITEMS on {}", kind(other))),
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        other => return Err(format!("pickle APPEND on {}", kind(other))),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        other => return Err(format!("pickle APPENDS on {}", kind(other))),
                    }
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                other => {
                    return Err(format!(
                        "pickle opcode 0x{other:02x} at byte {at} is refused (it builds arbitrary objects, or is not a pickle opcode)"
                    ))
                }
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::Int(_) => "an int",
        Value::Float(_) => "a float",
        Value::Str(_) => "a string",
        Value::Bytes(_) => "bytes",
        Value::Tuple(_) => "a tuple",
        Value::List(_) => "a list",
        Value::Dict(_) => "a dict",
        Value::Global(_) => "a global",
        Value::Storage(_) => "a storage",
        Value::Tensor(_) => "a tensor",
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, Refusal> {
    if !items.len().is_multiple_of(2) {
        return Err("pickle dict items come in an odd number".into());
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// Python's LONG1 bytes: little-endian two's complement.
fn long(raw: &[u8]) -> Result<i64, Refusal> {
    if raw.is_empty() {
        return Ok(0);
    }
    if raw.len() > 8 {
        return Err(format!("pickle integer of {} bytes", raw.len()));
    }
    let mut v: i64 = 0;
    for (i, &b) in raw.iter().enumerate() {
        v |= (b as i64) << (8 * i);
    }
    let bits = 8 * raw.len();
    if bits < 64 && raw[raw.len() - 1] & 0x80 != 0 {
        v -= 1i64 << bits;
    }
    Ok(v)
}

fn ints(v: &Value, what: &str) -> Result<Vec<u64>, Refusal> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|x| match x {
                Value::Int(i) if *i >= 0 => Ok(*i as u64),
                _ => Err(format!("a tensor's {what} holds {x:?}")),
            })
            .collect(),
        _ => Err(format!("a tensor's {what} is {}", kind(v))),
    }
}

/// REDUCE: calls one of the allowed globals with `args`.
fn reduce(f: Value, args: Value) -> Result<Value, Refusal> {
    let Value::Tuple(args) = args else {
        return Err(format!("pickle REDUCE with {} as arguments", kind(&args)));
    };
    match f {
        Value::Global(Global::OrderedDict) => match args.as_slice() {
            [] => Ok(Value::Dict(Vec::new())),
            [Value::List(items)] => items
                .iter()
                .map(|p| match p {
                    Value::Tuple(kv) if kv.len() == 2 => Ok((kv[0].clone(), kv[1].clone())),
                    _ => Err("OrderedDict from items that are not pairs".to_string()),
                })
                .collect::<Result<_, _>>()
                .map(Value::Dict),
            _ => Err("OrderedDict called with unexpected arguments".into()),
        },
        Value::Global(Global::RebuildTensor) => {
            if args.len() < 4 {
                return Err("_rebuild_tensor_v2 with fewer than 4 arguments".into());
            }
            let Value::Storage(storage) = args[0].clone() else {
                return Err(format!("_rebuild_tensor_v2 of {}", kind(&args[0])));
            };
            let Value::Int(offset) = args[1] else {
                return Err("_rebuild_tensor_v2: the storage offset is not an int".into());
            };
            let shape = ints(&args[2], "shape")?;
            let stride = ints(&args[3], "stride")?;
            if offset < 0 || shape.len() != stride.len() {
                return Err(format!(
                    "_rebuild_tensor_v2: offset {offset}, shape {shape:?}, stride {stride:?}"
                ));
            }
            Ok(Value::Tensor(TensorRef {
                storage,
                offset: offset as u64,
                shape,
                stride,
            }))
        }
        Value::Global(Global::RebuildParameter) => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            _ => Err("_rebuild_parameter of something that is not a tensor".into()),
        },
        other => Err(format!("pickle REDUCE calls {}: refused", kind(&other))),
    }
}
