//! From a GGUF header to a model: the hyper-parameters ([`Config`]) and the tensor-name mapping
//! ([`Weights`]) for the architectures this engine runs (`qwen2`, `llama`).

mod config;
mod weights;

pub use config::{Arch, Config, RopeStyle};
pub use weights::{LayerWeights, Weights};

use thiserror::Error;

/// A model file whose metadata or tensors do not describe a model this engine can run.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error("metadata key {0:?} is missing")]
    MissingKey(String),
    #[error("metadata key {key:?} has type {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("metadata key {key:?}: {problem}")]
    BadValue { key: String, problem: String },
    #[error("architecture {0:?} is not supported (supported: qwen2, llama)")]
    UnsupportedArch(String),
    #[error("tensor {0:?} is missing")]
    MissingTensor(String),
    #[error("tensor {name:?} has shape {found}, expected {expected}")]
    TensorShape {
        name: String,
        expected: String,
        found: String,
    },
    #[error("tensor {name:?} has type {found}, expected one of {expected}")]
    TensorType {
        name: String,
        expected: &'static str,
        found: String,
    },
    #[error(
        "tensor {name:?} is not part of the {arch} model this engine knows; refusing to ignore it{hint}"
    )]
    UnexpectedTensor {
        name: String,
        arch: &'static str,
        hint: &'static str,
    },
}
