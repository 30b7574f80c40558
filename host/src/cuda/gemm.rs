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
/// The split-f16 operands' scale `2^S` (`kernels-gpu/src/split.rs`): `lo` is stored times it.
pub use kernels_gpu::split::F16X3_SCALE;

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
    /// Split f16: near-f32 accuracy on f16 tensor cores. Each operand is written as f16 pairs
    /// (`hi`, `lo`) in rows of `3K` (`W` by the `dequant_*_f16x3` kernels, `X` by
    /// `f32_to_f16x3`; layout and error bound in `kernels-gpu/src/split.rs`), and one GEMM with
    /// `k = 3K`, f32 accumulation (`CUBLAS_COMPUTE_32F`) and `alpha = 2^-S` sums
    /// `hi·hi + hi·lo + lo·hi`: representation error ≤ 3·2^-22·Σ|w·x| (0 for the weight of d·q
    /// block types), three times the tensor-core work of [`GemmKind::F16F32`].
    F16x3,
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
            GemmKind::F16x3 => (D::CUDA_R_16F, D::CUDA_R_32F, C::CUBLAS_COMPUTE_32F),
        }
    }

    /// Stored input elements per logical element (3 for the split operands of
    /// [`GemmKind::F16x3`], else 1).
    pub fn in_factor(self) -> usize {
        if self == GemmKind::F16x3 { 3 } else { 1 }
    }

    /// Bytes per input element.
    pub fn in_bytes(self) -> usize {
        match self {
            GemmKind::F32 | GemmKind::Tf32 => 4,
            GemmKind::F16F32 | GemmKind::F16F16 | GemmKind::F16x3 => 2,
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
/// length checks in bytes enforce. For [`GemmKind::F16x3`] `w` and `x` are the split operands,
/// rows of `3k` f16 (`k` is still the logical inner dimension).
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
    gemm_impl(gpu, kind, false, false, w, x, y, n, k, t)
}

/// [`gemm`] into `y` as it is: `Y[t, n] += X[t, k] · W[n, k]ᵀ` (cuBLAS's `beta` = 1: the product,
/// scaled by `alpha` exactly, and `Y` added in one f32 rounding — what a separate `add` of the
/// stored product computes).
#[allow(clippy::too_many_arguments)]
pub fn gemm_accumulate<T, O>(
    gpu: &Gpu,
    kind: GemmKind,
    w: &CudaView<T>,
    x: &CudaView<T>,
    y: &mut CudaViewMut<O>,
    n: usize,
    k: usize,
    t: usize,
) -> Result<(), CudaError> {
    gemm_impl(gpu, kind, false, true, w, x, y, n, k, t)
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
    gemm_impl(gpu, kind, w_t, false, w, x, y, n, k, t)
}

/// [`gemm_layout`], storing (`accumulate` false) or adding to `y` ([`gemm_accumulate`]).
#[allow(clippy::too_many_arguments)]
fn gemm_impl<T, O>(
    gpu: &Gpu,
    kind: GemmKind,
    w_t: bool,
    accumulate: bool,
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
    if w_t && kind == GemmKind::F16x3 {
        return Err(bad(
            "the split-f16 kind takes the weight in GGUF's layout only".into(),
        ));
    }
    // The stored inner dimension: 3k for the split operands.
    let ks = kind.in_factor() * k;
    if w.len() != n * ks || x.len() != t * ks || y.len() != t * n || n == 0 || k == 0 || t == 0 {
        return Err(bad(format!(
            "W {} (want {n}x{ks}), X {} (want {t}x{ks}), Y {} (want {t}x{n})",
            w.len(),
            x.len(),
            y.len()
        )));
    }
    let to_i = |v: usize| i32::try_from(v).map_err(|_| bad(format!("{v} exceeds cuBLAS's int")));
    let (m_, n_, k_) = (to_i(n)?, to_i(t)?, to_i(ks)?);
    let blas = gpu.blas()?;
    let (in_t, out_t, compute) = kind.types();
    // F16x3: the sum carries a factor 2^S (kernels-gpu/src/split.rs); alpha = 2^-S removes it
    // exactly.
    let alpha = if kind == GemmKind::F16x3 {
        1.0 / kernels_gpu::split::F16X3_SCALE
    } else {
        1.0f32
    };
    let beta = if accumulate { 1.0f32 } else { 0.0 };
    // 1.0 and beta as f16 bits, for COMPUTE_16F.
    let (alpha16, beta16) = (0x3c00u16, if accumulate { 0x3c00u16 } else { 0 });
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

/// Which operand of a [`GemmKind::F16x3`] product a row belongs to (their thirds differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitOperand {
    /// `W` rows: `[hi·2^S | hi | lo]`.
    Weight,
    /// `X` rows: `[hi | lo | hi]`.
    Activation,
}

/// The split-f16 operand of [`GemmKind::F16x3`] computed on the CPU: rows of `k` f32 → rows of
/// `3k` f16 bits, exactly what the `dequant_*_f16x3` and `f32_to_f16x3` kernels write (the
/// reference their tests compare against; layout in `kernels-gpu/src/split.rs`).
pub fn split_f16x3(v: &[f32], k: usize, op: SplitOperand) -> Vec<u16> {
    use half::f16;
    let scale = kernels_gpu::split::F16X3_SCALE;
    let mut out = vec![0u16; 3 * v.len()];
    for (row, o) in v.chunks(k).zip(out.chunks_mut(3 * k)) {
        for (c, &x) in row.iter().enumerate() {
            let hi = f16::from_f32(x);
            let lo = f16::from_f32((x - hi.to_f32()) * scale).to_bits();
            let (a, b, d) = match op {
                SplitOperand::Weight => (
                    f16::from_f32(hi.to_f32() * scale).to_bits(),
                    hi.to_bits(),
                    lo,
                ),
                SplitOperand::Activation => (hi.to_bits(), lo, hi.to_bits()),
            };
            o[c] = a;
            o[k + c] = b;
            o[2 * k + c] = d;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    struct Lcg(u64);
    impl Lcg {
        fn uniform(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    /// The product the GPU computes from split rows, in f64 (the tensor cores' products are exact;
    /// only the f32 accumulation differs): `2^-S Σ_{3k} a·b`.
    fn split_dot(w: &[u16], x: &[u16]) -> f64 {
        let s: f64 = w
            .iter()
            .zip(x)
            .map(|(&a, &b)| f16::from_bits(a).to_f64() * f16::from_bits(b).to_f64())
            .sum();
        s / kernels_gpu::split::F16X3_SCALE as f64
    }

    /// The error bound of `kernels-gpu/src/split.rs` holds on random f32 data of the models'
    /// magnitudes (weights ~0.1, activations ~4, some tiny ones), while plain f16 operands miss it
    /// by orders of magnitude.
    #[test]
    fn split_f16x3_products_meet_the_stated_bound() {
        let mut r = Lcg(5);
        let k = 896;
        let mut worst_plain = 0.0f64;
        for trial in 0..50 {
            let w: Vec<f32> = (0..k)
                .map(|i| r.uniform() * if i % 97 == 0 { 1e-5 } else { 0.1 })
                .collect();
            let x: Vec<f32> = (0..k)
                .map(|i| r.uniform() * if i % 89 == 0 { 1e-4 } else { 4.0 })
                .collect();
            let exact: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
            let mag: f64 = w
                .iter()
                .zip(&x)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
            let abs: f64 = w.iter().chain(&x).map(|&v| v.abs() as f64).sum();
            let (ws, xs) = (
                split_f16x3(&w, k, SplitOperand::Weight),
                split_f16x3(&x, k, SplitOperand::Activation),
            );
            let got = split_dot(&ws, &xs);
            let u2 = 2f64.powi(-22);
            let bound = 3.0 * u2 * mag + 2f64.powi(-(25 + kernels_gpu::split::F16X3_SHIFT)) * abs;
            assert!(
                (got - exact).abs() <= bound,
                "trial {trial}: split {got} exact {exact} err {:e} bound {bound:e}",
                (got - exact).abs()
            );
            // Plain f16 on the same data (the bound is not vacuous: plain f16 breaks it).
            let plain: f64 = w
                .iter()
                .zip(&x)
                .map(|(&a, &b)| f16::from_f32(a).to_f64() * f16::from_f32(b).to_f64())
                .sum();
            worst_plain = worst_plain.max((plain - exact).abs() / bound);
        }
        assert!(
            worst_plain > 10.0,
            "plain f16 stayed within {worst_plain}x the bound"
        );
    }

    /// For d·q block values (an f16 scale times a small integer, as Q4_0/Q5_0/Q8_0 decode to) the
    /// split weight is exact: hi + lo·2^-S = w.
    #[test]
    fn split_weight_is_exact_for_scaled_integers() {
        let mut r = Lcg(9);
        for _ in 0..20000 {
            let d = f16::from_f32(0.02 * r.uniform()).to_f32();
            let q = ((r.uniform() * 128.0) as i32).clamp(-128, 127);
            let w = d * q as f32;
            let s = split_f16x3(&[w], 1, SplitOperand::Weight);
            let back = f16::from_bits(s[1]).to_f64()
                + f16::from_bits(s[2]).to_f64() / kernels_gpu::split::F16X3_SCALE as f64;
            assert_eq!(back, w as f64, "d {d} q {q}");
            // The first third is hi·2^S exactly.
            assert_eq!(
                f16::from_bits(s[0]).to_f64(),
                f16::from_bits(s[1]).to_f64() * kernels_gpu::split::F16X3_SCALE as f64
            );
        }
    }
}
