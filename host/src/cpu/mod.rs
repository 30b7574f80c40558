//! The CPU backend: the reference forward pass every GPU kernel is checked against, and the path
//! that runs on any machine.
//!
//! - [`ops`]: the reference ops (`embedding`, `matmul`, `rms_norm`, `rope`, `swiglu`, `softmax`,
//!   `add`, `attention`), re-exported here so they read as `cpu::rms_norm`.
//! - [`matmul`]: the backend's multithreaded matrix products on quantized rows.
//! - [`forward`]: [`CpuBackend`], the full forward pass over a KV cache.
//! - [`kv`]: the KV cache, f32 or f16 ([`KvPrecision`]).

pub mod forward;
pub mod gemm;
pub mod kv;
pub mod matmul;
pub mod ops;

pub use forward::{CpuBackend, CpuOptions};
pub use kv::KvPrecision;
pub use matmul::Arith;
pub use ops::{add, attention, embedding, matmul, rms_norm, rope, rope_angle, softmax, swiglu};
