//! GGUF: the file format of ggml models. A reader for versions 2 and 3 (zero-copy tensor views
//! over a memory map) and a writer for the same format.
//!
//! Layout: magic `GGUF`, version (u32), tensor count (u64), metadata count (u64), the metadata
//! key/value pairs, the tensor infos (name, dims with ne0 first, type, offset), padding to
//! `general.alignment` (default 32), then the data section; tensor offsets are relative to it.

mod error;
mod reader;
mod types;
mod writer;

use std::collections::HashMap;
use std::path::Path;

pub use error::{GgufError, Result};
pub use reader::{DataCheck, MAX_ARRAY_DEPTH, MAX_DIMS, parse_header};
pub use types::{Array, GgmlType, TypeRefusal, Value, ValueType};
pub use writer::{GgufWriter, TensorSpec};

pub const MAGIC: [u8; 4] = *b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// One tensor's description from the header.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` (ne0) is the row length, the fastest-varying index.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
    /// Where this tensor's info starts in the file (for error messages).
    pub info_offset: u64,
}

impl TensorInfo {
    /// Number of rows: the product of every dimension but the first.
    pub fn n_rows(&self) -> u64 {
        self.dims[1..].iter().product()
    }

    /// Row length (ne0).
    pub fn row_len(&self) -> u64 {
        self.dims[0]
    }

    /// Shape as `[ne0, ne1, …]` in a compact text form, `896x151936`.
    pub fn shape_str(&self) -> String {
        self.dims
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x")
    }
}

/// Everything before the data section.
#[derive(Clone, Debug)]
pub struct Header {
    pub version: u32,
    /// Key/value pairs in file order.
    pub metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_start: u64,
    /// Absolute offset where the tensor infos end (the data section starts at the next multiple
    /// of the alignment).
    pub header_end: u64,
}

impl Header {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// `general.architecture`, if present and a string.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }
}

enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

/// A parsed GGUF file with its bytes (memory-mapped or owned): the header plus zero-copy views of
/// every tensor's data.
pub struct Gguf {
    storage: Storage,
    pub header: Header,
}

impl Gguf {
    /// Memory-maps and parses a file. Tensor data is not read until it is used.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this process. Another process truncating
        // or rewriting the model file while it is mapped would be undefined behaviour; model
        // files are treated as immutable, as every mmap-based loader does.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let header = parse_header(&map, DataCheck::Full)?;
        Ok(Gguf {
            storage: Storage::Mapped(map),
            header,
        })
    }

    /// Parses a file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let header = parse_header(&bytes, DataCheck::Full)?;
        Ok(Gguf {
            storage: Storage::Owned(bytes),
            header,
        })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }

    /// A tensor's raw data (its GGUF blocks), borrowed from the file.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.header.data_start + info.offset) as usize;
        // In bounds: parse_header(DataCheck::Full) checked every tensor against the file length.
        &self.bytes()[start..start + info.n_bytes as usize]
    }

    /// A tensor by name with its data.
    pub fn tensor(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self
            .header
            .tensor(name)
            .ok_or_else(|| GgufError::NoSuchTensor(name.into()))?;
        Ok((info, self.tensor_data(info)))
    }
}
