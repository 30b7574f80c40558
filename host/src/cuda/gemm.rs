//! Matrix products through cuBLAS, for the GGUF row-major layout (see docs/CUBLAS.md for the
//! measurements behind the choices).
//!
//! The engine's product is `Y[T, N] = X[T, K] · W[N, K]ᵀ`: `W` is a weight matrix as GGUF stores
//! it (`N` rows of `K` contiguous elements), `X` holds `T` token rows of `K` activations, `Y` gets
//! `T` rows of `N` outputs. cuBLAS is column-major, so a row-major `R × C` matrix is its
//! column-major `C × R` transpose. Reading every operand that way, the product becomes
//! `Yᵀ[N, T] = W · Xᵀ` = `op(A) · B` with `A` = the stored `W` (column-major `K × N`, `lda = K`)
//! taken transposed (`transa = T`), `B` = the stored `X` (column-major `K × T`, `ldb = K`)
//! untransposed (`transb = N`), `C` = the stored `Y` (column-major `N × T`, `ldc = N`);
//! `m = N, n = T, k = K`. No copy or transpose of any operand is made.

use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut};

use super::device::Gpu;
use super::error::CudaError;

/// Element types and compute type of one GEMM configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKind {
    /// f32 inputs, f32 output, f32 arithmetic without tensor cores (`CUBLAS_COMPUTE_32F_PEDANTIC`).
    F32,
    /// f32 inputs and output, TF32 tensor cores (`CUBLAS_COMPUTE_32F_FAST_TF32`).
    Tf32,
    /// f16 inputs, f32 output, f32 accumulation on tensor cores (`CUBLAS_COMPUTE_32F`).
    F16F32,
    /// f16 inputs, f16 output, f16 accumulation (`CUBLAS_COMPUTE_16F`): measured, not used.
    F16F16,
}

impl GemmKind {
    fn types(self) -> (cudaDataType_t, cudaDataType_t, cublasComputeType_t) {
        use cublasComputeType_t as C;
        use cudaDataType_t as D;
        match self {
            GemmKind::F32 => (D::CUDA_R_32F, D::CUDA_R_32F, C::CUBLAS_COMPUTE_32F_PEDANTIC),
            GemmKind::Tf32 => (
                D::CUDA_R_32F,
                D::CUDA_R_32F,
                C::CUBLAS_COMPUTE_32F_FAST_TF32,
            ),
            GemmKind::F16F32 => (D::CUDA_R_16F, D::CUDA_R_32F, C::CUBLAS_COMPUTE_32F),
            GemmKind::F16F16 => (D::CUDA_R_16F, D::CUDA_R_16F, C::CUBLAS_COMPUTE_16F),
        }
    }

    /// Bytes per input element.
    pub fn in_bytes(self) -> usize {
        match self {
            GemmKind::F32 | GemmKind::Tf32 => 4,
            GemmKind::F16F32 | GemmKind::F16F16 => 2,
        }
    }

    /// Bytes per output element.
    pub fn out_bytes(self) -> usize {
        match self {
            GemmKind::F16F16 => 2,
            _ => 4,
        }
    }
}

/// `Y[t, n] = X[t, k] · W[n, k]ᵀ` (row-major, see the module docs), with element types given by
/// `kind`; `T` and `O` must be the matching Rust types (`f32`, or `u16` for f16 bits), which the
/// length checks in bytes enforce.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T, O>(
    gpu: &Gpu,
    kind: GemmKind,
    w: &CudaView<T>,
    x: &CudaView<T>,
    y: &mut CudaViewMut<O>,
    n: usize,
    k: usize,
    t: usize,
) -> Result<(), CudaError> {
    gemm_layout(gpu, kind, false, w, x, y, n, k, t)
}

/// [`gemm`] with the weight optionally stored transposed (`w_t = true`: `W` held as `K` rows of
/// `N`, i.e. repacked at load), which cuBLAS reads untransposed (`transa = N`, `lda = N`). Only the
/// kernel sandbox uses it, to measure whether such a repack would pay (docs/CUBLAS.md).
#[allow(clippy::too_many_arguments)]
pub fn gemm_layout<T, O>(
    gpu: &Gpu,
    kind: GemmKind,
    w_t: bool,
    w: &CudaView<T>,
    x: &CudaView<T>,
    y: &mut CudaViewMut<O>,
    n: usize,
    k: usize,
    t: usize,
) -> Result<(), CudaError> {
    let op = "gemm";
    let bad = |problem: String| CudaError::Shape {
        kernel: "cublasGemmEx",
        problem,
    };
    if size_of::<T>() != kind.in_bytes() || size_of::<O>() != kind.out_bytes() {
        return Err(bad(format!("element sizes do not match {kind:?}")));
    }
    if w.len() != n * k || x.len() != t * k || y.len() != t * n || n == 0 || k == 0 || t == 0 {
        return Err(bad(format!(
            "W {} (want {n}x{k}), X {} (want {t}x{k}), Y {} (want {t}x{n})",
            w.len(),
            x.len(),
            y.len()
        )));
    }
    let to_i = |v: usize| i32::try_from(v).map_err(|_| bad(format!("{v} exceeds cuBLAS's int")));
    let (m_, n_, k_) = (to_i(n)?, to_i(t)?, to_i(k)?);
    let blas = gpu.blas()?;
    let (in_t, out_t, compute) = kind.types();
    let (alpha, beta) = (1.0f32, 0.0f32);
    let (alpha16, beta16) = (0x3c00u16, 0u16); // 1.0 and 0.0 as f16 bits, for COMPUTE_16F
    let (pa, pb): (*const std::ffi::c_void, *const std::ffi::c_void) = if kind == GemmKind::F16F16 {
        (&alpha16 as *const u16 as _, &beta16 as *const u16 as _)
    } else {
        (&alpha as *const f32 as _, &beta as *const f32 as _)
    };
    let stream = gpu.stream();
    let (wp, _r1) = w.device_ptr(stream);
    let (xp, _r2) = x.device_ptr(stream);
    let (yp, _r3) = y.device_ptr_mut(stream);
    // SAFETY: the pointers are device allocations holding exactly N*K, T*K and T*N elements of
    // the declared types (checked above); the leading dimensions equal the row lengths of the
    // row-major matrices; alpha/beta point to host scalars of the compute type, alive for the call
    // (cuBLAS reads them before returning in host pointer mode, the default).
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *blas.handle(),
            if w_t {
                cublasOperation_t::CUBLAS_OP_N
            } else {
                cublasOperation_t::CUBLAS_OP_T
            },
            cublasOperation_t::CUBLAS_OP_N,
            m_,
            n_,
            k_,
            pa,
            wp as *const _,
            in_t,
            if w_t { m_ } else { k_ },
            xp as *const _,
            in_t,
            k_,
            pb,
            yp as *mut _,
            out_t,
            m_,
            compute,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|source| CudaError::Cublas { op, source })?;
    gpu.after_launch("cublasGemmEx")?;
    Ok(())
}
