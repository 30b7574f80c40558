//! The CUDA backend: the forward pass on an NVIDIA GPU with kernels written in Rust
//! (`kernels-gpu`, compiled to PTX by build.rs) and cuBLAS for the large matrix products.
//!
//! - [`device`]: [`Gpu`] — context, stream, PTX module by compute capability, cuBLAS, memory.
//! - [`ops`]: one typed launcher per kernel, validating shapes (`rms_norm` ↔ `cpu::rms_norm`).
//! - [`gemm`]: `Y = X·Wᵀ` through cuBLAS for GGUF's row-major layout.
//! - [`backend`]: [`CudaBackend`], the forward pass behind the [`crate::backend::Backend`] trait.
//!
//! Machines without a driver: [`device::driver_present`] is checked before any cudarc call, and
//! every entry point returns [`CudaError::NoDriver`] instead of panicking.

pub mod backend;
pub mod device;
pub mod error;
pub mod gemm;
pub mod kernels;
pub mod ops;

pub use backend::{CudaBackend, CudaOptions};
pub use device::Gpu;
pub use error::CudaError;
