//! The split-f16 operands of the `F16x3` prefill GEMM: f32 accuracy from f16 tensor cores.
//!
//! Every f32 value `v` is written as two f16: `hi = f16(v)` and `lo = f16((v - hi) · 2^S)`
//! (`S` = [`F16X3_SHIFT`]; `v - hi` is exact in f32 by Sterbenz's lemma, and the scaling by a
//! power of two is exact). A row of the weight `W` (`K` elements) becomes `3K` f16 and a row of
//! the activations `X` likewise:
//!
//! ```text
//! W row:  [ hi(w)·2^S | hi(w)      | lo(w) ]      (lo already carries 2^S)
//! X row:  [ hi(x)     | lo(x)      | hi(x) ]
//! ```
//!
//! so one cuBLAS GEMM (f16 inputs, f32 accumulation on tensor cores, `k = 3K`) with
//! `alpha = 2^-S` computes `Σ_k hi(w)hi(x) + hi(w)lo(x)·2^-S + lo(w)hi(x)·2^-S`, i.e.
//! `W·X` without the `lo(w)·lo(x)` term. Each product of two f16 is exact in f32, and `alpha`
//! (a power of two) scales the f32 sum exactly.
//!
//! Error, per product `w·x` (u = 2^-11, the unit roundoff of f16):
//! - `w = hi + lo·2^-S + e_w`, `|e_w| ≤ u·|w - hi| ≤ u²|w|` (the rounding of the remainder) plus
//!   `2^-(25+S)` absolute where the scaled remainder is subnormal in f16. For `d·q` block types
//!   (Q4_0, Q5_0, Q8_0: an f16 scale times a small integer) `e_w = 0`: `d·q` and `hi` are both
//!   multiples of `ulp(d)` (≥ 2^-24), and their difference is at most `ulp(hi)/2 ≤ 2^7·ulp(d)`
//!   (`|q| ≤ 128`), so it has at most 8 significant bits and is an f16 exactly, and so is its
//!   scaling by 2^S.
//! - the same for `x`: `|e_x| ≤ u²|x| + 2^-(25+S)`.
//! - the dropped `lo(w)·lo(x)·2^-2S` is at most `u²|w·x|`.
//!
//! In all, `|Σ ŵx̂ - Σ wx| ≤ 3u²·Σ|w·x| (≈ 7.2e-7·Σ|w·x|) + 2^-(25+S)·Σ(|w| + |x|)`, plus the
//! f32 accumulation error of the GEMM itself (the same accumulator as the f16→f32 GEMM; an f32
//! GEMM on CUDA cores has the same order of accumulation error). Compare the f16→f32 GEMM on f32
//! data: `2u ≈ 9.8e-4` relative per product. The representation error is ~2^-22 relative, near
//! f32's 2^-24; the tensor cores do three products per product instead of one.
//!
//! Range: `hi(w)·2^S` must stay below f16's maximum (65504), so `|w| < 2^(16-S)` (255.9 for
//! S = 8; projection weights are far smaller); `|x| < 65504` as for any f16 GEMM. Beyond either,
//! the f16 is infinite and the product inf or NaN: a visible failure, never a silently wrong
//! value. `S = 8` keeps the remainders normal down to `|v - hi| ≥ 2^-22` and their resolution
//! at 2^-33 absolute below that.

/// `S`: the remainders (and the `hi(w)` of the first third) are scaled by `2^S`; the GEMM's
/// `alpha` is `2^-S`.
pub const F16X3_SHIFT: i32 = 8;

/// `2^S` as f32.
pub const F16X3_SCALE: f32 = (1u32 << F16X3_SHIFT) as f32;

/// `hi·2^S` as f16, from `hi` (exact unless it overflows to inf).
#[cfg(target_arch = "nvptx64")]
#[inline(always)]
pub fn split_hi_scaled(hi: u16) -> u16 {
    use crate::gpu;
    gpu::f32_to_f16(gpu::f16_to_f32(hi) * F16X3_SCALE)
}

/// `lo = f16((v - f16(v))·2^S)`: the difference and the scaling are exact in f32.
#[cfg(target_arch = "nvptx64")]
#[inline(always)]
pub fn split_lo(v: f32) -> u16 {
    use crate::gpu;
    let hi = gpu::f16_to_f32(gpu::f32_to_f16(v));
    gpu::f32_to_f16((v - hi) * F16X3_SCALE)
}
