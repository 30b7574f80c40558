//! GGUF v2/v3 parser over a byte slice. Every length and count is checked against what is left of
//! the file before anything is allocated, so a hostile file can neither panic the reader nor make
//! it allocate more than a small multiple of the file's size.

use std::collections::HashMap;

use super::error::{GgufError, Result};
use super::types::{Array, GgmlType, TypeRefusal, Value, ValueType};
use super::{DEFAULT_ALIGNMENT, Header, MAGIC, TensorInfo};

/// Deepest nesting of arrays accepted (ggml's own files use one level).
pub const MAX_ARRAY_DEPTH: usize = 8;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: u32 = 4;

/// Whether tensor data must lie inside the bytes given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataCheck {
    /// A whole file: every tensor's data must be inside it, aligned and not overlapping.
    Full,
    /// A header-only file (metadata and tensor infos, data cut off): offsets are checked for
    /// alignment and overlap, not against the file's end.
    HeaderOnly,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn len(&self) -> u64 {
        self.buf.len() as u64
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                needed: n,
                len: self.len(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        Ok(self.take(N as u64, what)?.try_into().unwrap())
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Refuses `count` elements of at least `min_size` bytes each when they cannot fit.
    fn check_count(&self, count: u64, min_size: usize, what: &dyn Fn() -> String) -> Result<()> {
        let fits = count
            .checked_mul(min_size as u64)
            .is_some_and(|b| b <= self.remaining());
        if fits {
            Ok(())
        } else {
            Err(GgufError::CountTooLarge {
                what: what(),
                offset: self.pos as u64,
                count,
                min_size: min_size as u64,
                remaining: self.remaining(),
            })
        }
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        let start = self.pos as u64;
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(source) => Err(GgufError::BadUtf8 {
                what: what(),
                offset: start,
                source,
            }),
        }
    }
}

/// Parses the header (metadata and tensor infos) of a GGUF file held in `buf`.
pub fn parse_header(buf: &[u8], check: DataCheck) -> Result<Header> {
    let mut c = Cursor { buf, pos: 0 };
    let magic: [u8; 4] = c.array(&|| "magic".into())?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = c.u32(&|| "version".into())?;
    if version != 2 && version != 3 {
        let hint = if version == 1 {
            " (version 1 used 32-bit lengths; convert the file with a current gguf tool)"
        } else if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            " (this looks like a big-endian GGUF file; only little-endian files are supported)"
        } else {
            ""
        };
        return Err(GgufError::UnsupportedVersion { version, hint });
    }
    let n_tensors = c.u64(&|| "tensor count".into())?;
    let n_kv = c.u64(&|| "metadata count".into())?;
    // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info at least
    // 8 (name length) + 4 (n_dims) + 8 (one dim) + 4 (type) + 8 (offset).
    c.check_count(n_kv, 13, &|| "metadata count".into())?;

    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut index = HashMap::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let at = c.pos as u64;
        let key = c.string(&|| format!("key of metadata entry {i}"))?;
        if index.contains_key(&key) {
            return Err(GgufError::DuplicateKey { key, offset: at });
        }
        let type_at = c.pos as u64;
        let type_id = c.u32(&|| format!("value type of {key:?}"))?;
        let vt = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.clone(),
            type_id,
            offset: type_at,
        })?;
        let value = read_value(&mut c, vt, &key, 0)?;
        index.insert(key.clone(), metadata.len());
        metadata.push((key, value));
    }

    let alignment = match index.get("general.alignment").map(|&i| &metadata[i]) {
        None => DEFAULT_ALIGNMENT,
        Some((key, Value::U32(a))) => {
            if *a == 0 || !a.is_power_of_two() {
                return Err(GgufError::BadMetadata {
                    key: key.clone(),
                    offset: 0,
                    problem: format!("alignment {a} is not a non-zero power of two"),
                });
            }
            *a as u64
        }
        Some((key, v)) => {
            return Err(GgufError::BadMetadata {
                key: key.clone(),
                offset: 0,
                problem: format!("must be a u32, found {}", v.value_type()),
            });
        }
    };

    c.check_count(n_tensors, 32, &|| "tensor count".into())?;
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let info_offset = c.pos as u64;
        let name = c.string(&|| format!("name of tensor {i}"))?;
        if tensor_index.contains_key(&name) {
            return Err(GgufError::DuplicateTensor {
                name,
                offset: info_offset,
            });
        }
        let n_dims = c.u32(&|| format!("n_dims of tensor {name:?}"))?;
        let shape_err = |problem: String| GgufError::BadTensorShape {
            name: name.clone(),
            offset: info_offset,
            problem,
        };
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(shape_err(format!(
                "n_dims is {n_dims}, must be 1..={MAX_DIMS}"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(c.u64(&|| format!("dimension {d} of tensor {name:?}"))?);
        }
        let type_id = c.u32(&|| format!("type of tensor {name:?}"))?;
        let ggml_type = GgmlType::from_id(type_id).map_err(|r| GgufError::BadTensorType {
            name: name.clone(),
            offset: info_offset,
            type_id,
            kind: match r {
                TypeRefusal::Unsupported(n) => format!("{n}, which this engine does not support"),
                TypeRefusal::Unknown => "not a ggml type".into(),
            },
        })?;
        let offset = c.u64(&|| format!("data offset of tensor {name:?}"))?;

        if let Some(d) = dims.iter().position(|&d| d == 0) {
            return Err(shape_err(format!("dimension {d} is zero")));
        }
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| shape_err(format!("element count of {dims:?} overflows")))?;
        if dims[0] % ggml_type.block_size() as u64 != 0 {
            return Err(shape_err(format!(
                "row length {} is not a multiple of the {} block size {}",
                dims[0],
                ggml_type,
                ggml_type.block_size()
            )));
        }
        let n_bytes = (n_elements / ggml_type.block_size() as u64)
            .checked_mul(ggml_type.block_bytes() as u64)
            .ok_or_else(|| shape_err("byte size overflows".into()))?;
        if offset % alignment != 0 {
            return Err(GgufError::MisalignedTensor {
                name,
                data_offset: offset,
                alignment,
            });
        }
        tensor_index.insert(name.clone(), tensors.len());
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_elements,
            n_bytes,
            info_offset,
        });
    }

    let header_end = c.pos as u64;
    let data_start = header_end.div_ceil(alignment) * alignment;
    let len = c.len();

    // Bounds and overlap, in data order.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors[i].offset);
    let mut prev: Option<(usize, u64)> = None;
    for &i in &order {
        let t = &tensors[i];
        let start = data_start.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        let (Some(start), Some(end)) = (start, end) else {
            return Err(GgufError::TensorOutOfBounds {
                name: t.name.clone(),
                start: t.offset,
                end: u64::MAX,
                len,
            });
        };
        if check == DataCheck::Full && end > len {
            return Err(GgufError::TensorOutOfBounds {
                name: t.name.clone(),
                start,
                end,
                len,
            });
        }
        if let Some((p, p_end)) = prev
            && start < p_end
        {
            return Err(GgufError::TensorOverlap {
                name: t.name.clone(),
                other: tensors[p].name.clone(),
                start,
                end,
            });
        }
        prev = Some((i, end));
    }

    Ok(Header {
        version,
        metadata,
        index,
        tensors,
        tensor_index,
        alignment,
        data_start,
        header_end,
    })
}

fn read_value(c: &mut Cursor<'_>, vt: ValueType, key: &str, depth: usize) -> Result<Value> {
    let what = || format!("value of {key:?}");
    Ok(match vt {
        ValueType::U8 => Value::U8(c.array::<1>(&what)?[0]),
        ValueType::I8 => Value::I8(c.array::<1>(&what)?[0] as i8),
        ValueType::U16 => Value::U16(u16::from_le_bytes(c.array(&what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(c.array(&what)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(c.array(&what)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(c.array(&what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(c.array(&what)?)),
        ValueType::U64 => Value::U64(u64::from_le_bytes(c.array(&what)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(c.array(&what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(c.array(&what)?)),
        ValueType::Bool => Value::Bool(read_bool(c, key)?),
        ValueType::String => Value::String(c.string(&what)?),
        ValueType::Array => Value::Array(read_array(c, key, depth)?),
    })
}

fn read_bool(c: &mut Cursor<'_>, key: &str) -> Result<bool> {
    let at = c.pos as u64;
    match c.array::<1>(&|| format!("bool of {key:?}"))?[0] {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(GgufError::BadBool {
            key: key.into(),
            offset: at,
            value,
        }),
    }
}

fn read_array(c: &mut Cursor<'_>, key: &str, depth: usize) -> Result<Array> {
    if depth >= MAX_ARRAY_DEPTH {
        return Err(GgufError::NestingTooDeep {
            key: key.into(),
            offset: c.pos as u64,
            max: MAX_ARRAY_DEPTH,
        });
    }
    let type_at = c.pos as u64;
    let type_id = c.u32(&|| format!("array element type of {key:?}"))?;
    let et = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
        key: key.into(),
        type_id,
        offset: type_at,
    })?;
    let count = c.u64(&|| format!("array length of {key:?}"))?;
    c.check_count(count, et.min_encoded_size(), &|| format!("array {key:?}"))?;
    let n = count as usize;
    let what = || format!("array {key:?}");

    macro_rules! scalars {
        ($variant:ident, $t:ty) => {{
            const W: usize = std::mem::size_of::<$t>();
            let bytes = c.take(count * W as u64, &what)?;
            Array::$variant(
                bytes
                    .chunks_exact(W)
                    .map(|b| <$t>::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
            )
        }};
    }
    Ok(match et {
        ValueType::U8 => Array::U8(c.take(count, &what)?.to_vec()),
        ValueType::I8 => Array::I8(c.take(count, &what)?.iter().map(|&b| b as i8).collect()),
        ValueType::U16 => scalars!(U16, u16),
        ValueType::I16 => scalars!(I16, i16),
        ValueType::U32 => scalars!(U32, u32),
        ValueType::I32 => scalars!(I32, i32),
        ValueType::F32 => scalars!(F32, f32),
        ValueType::U64 => scalars!(U64, u64),
        ValueType::I64 => scalars!(I64, i64),
        ValueType::F64 => scalars!(F64, f64),
        ValueType::Bool => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_bool(c, key)?);
            }
            Array::Bool(v)
        }
        ValueType::String => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(c.string(&|| format!("element {i} of array {key:?}"))?);
            }
            Array::String(v)
        }
        ValueType::Array => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_array(c, key, depth + 1)?);
            }
            Array::Array(v)
        }
    })
}
