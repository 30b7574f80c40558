//! What can be wrong with a GGUF file, and where.

use thiserror::Error;

/// A malformed or unsupported GGUF file. Every variant says where: a byte offset from the start
/// of the file, and the key or tensor name when there is one.
#[derive(Debug, Error)]
pub enum GgufError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file: magic at offset 0 is {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error(
        "GGUF version {version} at offset 4 is not supported (this reader handles versions 2 and 3){hint}"
    )]
    UnsupportedVersion { version: u32, hint: &'static str },
    #[error(
        "file truncated: {what} needs {needed} bytes at offset {offset}, but the file ends at {len}"
    )]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        len: u64,
    },
    #[error(
        "{what} at offset {offset} declares {count} elements of at least {min_size} bytes each, more than the {remaining} bytes left in the file"
    )]
    CountTooLarge {
        what: String,
        offset: u64,
        count: u64,
        min_size: u64,
        remaining: u64,
    },
    #[error("string at offset {offset} ({what}) is not valid UTF-8: {source}")]
    BadUtf8 {
        what: String,
        offset: u64,
        #[source]
        source: std::str::Utf8Error,
    },
    #[error("metadata key {key:?} at offset {offset} appears twice")]
    DuplicateKey { key: String, offset: u64 },
    #[error("metadata key {key:?}: unknown value type {type_id} at offset {offset}")]
    UnknownValueType {
        key: String,
        type_id: u32,
        offset: u64,
    },
    #[error(
        "metadata key {key:?}: bool at offset {offset} has byte value {value} (must be 0 or 1)"
    )]
    BadBool { key: String, offset: u64, value: u8 },
    #[error("metadata key {key:?}: arrays nested deeper than {max} levels at offset {offset}")]
    NestingTooDeep {
        key: String,
        offset: u64,
        max: usize,
    },
    #[error("metadata key {key:?} at offset {offset}: {problem}")]
    BadMetadata {
        key: String,
        offset: u64,
        problem: String,
    },
    #[error("tensor {name:?} at offset {offset} appears twice")]
    DuplicateTensor { name: String, offset: u64 },
    #[error("tensor {name:?} (info at offset {offset}): type id {type_id} is {kind}")]
    BadTensorType {
        name: String,
        offset: u64,
        type_id: u32,
        kind: String,
    },
    #[error("tensor {name:?} (info at offset {offset}): {problem}")]
    BadTensorShape {
        name: String,
        offset: u64,
        problem: String,
    },
    #[error(
        "tensor {name:?}: data offset {data_offset} (relative to the data section) is not a multiple of the alignment {alignment}"
    )]
    MisalignedTensor {
        name: String,
        data_offset: u64,
        alignment: u64,
    },
    #[error("tensor {name:?}: data [{start}, {end}) lies outside the file of {len} bytes")]
    TensorOutOfBounds {
        name: String,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("tensor {name:?}: data [{start}, {end}) overlaps tensor {other:?}")]
    TensorOverlap {
        name: String,
        other: String,
        start: u64,
        end: u64,
    },
    #[error("no tensor named {0:?}")]
    NoSuchTensor(String),
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;
