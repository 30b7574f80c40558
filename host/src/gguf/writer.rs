//! GGUF writer: metadata in insertion order, tensors laid out in order, each aligned to
//! `general.alignment`. Reading a file and writing its header and tensors back reproduces it byte
//! for byte (the layout ggml's own writer uses).

use std::io::{self, Write};

use super::types::{Array, GgmlType, Value};
use super::{DEFAULT_ALIGNMENT, Header, MAGIC};

/// A tensor to write: its description; the data is supplied at write time.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    /// ne0 first.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, ggml_type: GgmlType, dims: &[u64]) -> Self {
        TensorSpec {
            name: name.into(),
            dims: dims.to_vec(),
            ggml_type,
        }
    }

    /// Bytes of data this tensor takes. Panics on shapes a reader would refuse (a writer bug).
    pub fn n_bytes(&self) -> u64 {
        let n: u64 = self.dims.iter().product();
        let bs = self.ggml_type.block_size() as u64;
        assert!(
            self.dims[0].is_multiple_of(bs),
            "tensor {}: ne0 not a multiple of {bs}",
            self.name
        );
        n / bs * self.ggml_type.block_bytes() as u64
    }
}

/// Builds a GGUF file.
#[derive(Clone, Debug)]
pub struct GgufWriter {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorSpec>,
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter {
            version: 3,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// A writer holding a parsed file's header (metadata and tensor list, in file order).
    pub fn from_header(h: &Header) -> Self {
        GgufWriter {
            version: h.version,
            metadata: h.metadata.clone(),
            tensors: h
                .tensors
                .iter()
                .map(|t| TensorSpec {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    ggml_type: t.ggml_type,
                })
                .collect(),
        }
    }

    /// Adds or replaces a metadata entry (a replaced entry keeps its position).
    pub fn set(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    pub fn tensor(&mut self, spec: TensorSpec) -> &mut Self {
        self.tensors.push(spec);
        self
    }

    pub fn alignment(&self) -> u64 {
        match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            Some((_, Value::U32(a))) => *a as u64,
            _ => DEFAULT_ALIGNMENT,
        }
    }

    /// Data offsets (relative to the data section) of every tensor, in order.
    pub fn offsets(&self) -> Vec<u64> {
        let align = self.alignment();
        let mut off = 0u64;
        self.tensors
            .iter()
            .map(|t| {
                let here = off;
                off = (off + t.n_bytes()).div_ceil(align) * align;
                here
            })
            .collect()
    }

    /// The header: everything before the data section, padding included.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut b, k);
            b.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            put_value(&mut b, v);
        }
        for (t, off) in self.tensors.iter().zip(self.offsets()) {
            put_str(&mut b, &t.name);
            b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            b.extend_from_slice(&off.to_le_bytes());
        }
        let align = self.alignment() as usize;
        b.resize(b.len().div_ceil(align) * align, 0);
        b
    }

    /// Writes the file. `data(i, w)` must write exactly the bytes of tensor `i`.
    pub fn write<W: Write>(
        &self,
        w: &mut W,
        mut data: impl FnMut(usize, &mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        w.write_all(&self.header_bytes())?;
        let align = self.alignment();
        let mut pos = 0u64;
        for (i, (t, off)) in self.tensors.iter().zip(self.offsets()).enumerate() {
            write_zeros(w, off - pos)?;
            let mut counted = Counted {
                inner: &mut *w,
                n: 0,
            };
            data(i, &mut counted)?;
            if counted.n != t.n_bytes() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "tensor {}: {} data bytes written, expected {}",
                        t.name,
                        counted.n,
                        t.n_bytes()
                    ),
                ));
            }
            pos = off + t.n_bytes();
        }
        // ggml pads the last tensor too.
        write_zeros(w, pos.div_ceil(align) * align - pos)
    }

    /// Writes the file with every tensor's data given as a slice.
    pub fn write_with_data<W: Write>(&self, w: &mut W, data: &[&[u8]]) -> io::Result<()> {
        assert_eq!(data.len(), self.tensors.len(), "one data slice per tensor");
        self.write(w, |i, w| w.write_all(data[i]))
    }

    /// The whole file in memory (small fixtures).
    pub fn to_bytes(&self, data: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_with_data(&mut v, data)
            .expect("writing to a Vec cannot fail");
        v
    }
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

struct Counted<'a, W: Write + ?Sized> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write + ?Sized> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_zeros<W: Write + ?Sized>(w: &mut W, n: u64) -> io::Result<()> {
    const Z: [u8; 64] = [0; 64];
    let mut left = n;
    while left > 0 {
        let k = left.min(64) as usize;
        w.write_all(&Z[..k])?;
        left -= k as u64;
    }
    Ok(())
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_value(b: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => b.push(*x),
        Value::I8(x) => b.push(*x as u8),
        Value::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => b.push(*x as u8),
        Value::String(s) => put_str(b, s),
        Value::Array(a) => put_array(b, a),
    }
}

fn put_array(b: &mut Vec<u8>, a: &Array) {
    b.extend_from_slice(&(a.elem_type() as u32).to_le_bytes());
    b.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                b.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => b.extend_from_slice(v),
        Array::I8(v) => b.extend(v.iter().map(|&x| x as u8)),
        Array::Bool(v) => b.extend(v.iter().map(|&x| x as u8)),
        Array::U16(v) => each!(v),
        Array::I16(v) => each!(v),
        Array::U32(v) => each!(v),
        Array::I32(v) => each!(v),
        Array::F32(v) => each!(v),
        Array::U64(v) => each!(v),
        Array::I64(v) => each!(v),
        Array::F64(v) => each!(v),
        Array::String(v) => v.iter().for_each(|s| put_str(b, s)),
        Array::Array(v) => v.iter().for_each(|x| put_array(b, x)),
    }
}
