//! What the CUDA backend can fail at, each error naming what it was doing.

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;
use thiserror::Error;

/// An error of the CUDA backend.
#[derive(Debug, Error)]
pub enum CudaError {
    #[error(
        "no CUDA driver on this machine (libcuda could not be loaded); install the NVIDIA driver or use --device cpu"
    )]
    NoDriver,
    #[error("no CUDA device found (the driver reports {0} devices)")]
    NoDevice(i32),
    #[error("CUDA device {ordinal} does not exist ({count} devices)")]
    BadOrdinal { ordinal: usize, count: i32 },
    #[error("device {name} has compute capability {major}.{minor}; the kernels need 8.0 or newer")]
    UnsupportedDevice {
        name: String,
        major: i32,
        minor: i32,
    },
    #[error(
        "cuBLAS could not be loaded (libcublas not found; on a CUDA machine set LD_LIBRARY_PATH to the CUDA libraries, e.g. /usr/local/cuda/lib64)"
    )]
    NoCublas,
    #[error("CUDA driver call failed while {what}: {source}")]
    Driver {
        what: String,
        #[source]
        source: DriverError,
    },
    #[error("kernel {kernel}: {source}")]
    Kernel {
        kernel: &'static str,
        #[source]
        source: DriverError,
    },
    #[error("kernel {kernel}: {problem}")]
    Shape {
        kernel: &'static str,
        problem: String,
    },
    #[error("cuBLAS {op}: {source}")]
    Cublas {
        op: &'static str,
        #[source]
        source: CublasError,
    },
    #[error(
        "not enough device memory for {what}: {needed} MiB needed, {free} MiB free of {total} MiB",
        needed = mib(*needed), free = mib(*free), total = mib(*total)
    )]
    OutOfMemory {
        what: String,
        needed: usize,
        free: usize,
        total: usize,
    },
    #[error("tensor {tensor:?} has type {ggml_type}, which the CUDA kernels do not support")]
    UnsupportedType { tensor: String, ggml_type: String },
}

fn mib(b: usize) -> String {
    format!("{:.1}", b as f64 / (1024.0 * 1024.0))
}

impl CudaError {
    /// A driver error while doing `what`.
    pub fn driver(what: impl Into<String>) -> impl FnOnce(DriverError) -> CudaError {
        let what = what.into();
        move |source| CudaError::Driver { what, source }
    }
}

impl From<CudaError> for crate::backend::BackendError {
    fn from(e: CudaError) -> Self {
        crate::backend::BackendError::Device(e.to_string())
    }
}
