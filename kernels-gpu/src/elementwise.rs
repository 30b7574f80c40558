//! Elementwise kernels of the forward pass (references: `cpu::add`, `cpu::swiglu`).
//!
//! - `add_f32`: `dst[i] += src[i % m]` for `i < n` — the residual add (`m = n`) and the bias add
//!   (`m` = row length, the bias repeated over every row), like `cpu::add`.
//! - `swiglu_f32`: `out = silu(gate) * up`, `silu(g) = g / (1 + e^-g)`; `e^x` is `ex2.approx`
//!   (relative error ≈ 2^-21), so results differ from the CPU by a few ulp.
//! - `f32_to_f16`: round to nearest even (the activations fed to an f16 GEMM).
//! - `f32_to_f16x3`: the split-f16 activation operand of the `F16x3` GEMM (`split.rs`): `rows`
//!   rows of `k` floats become rows of `3k` halves, `[hi(x) | lo(x) | hi(x)]`; a thread per pair of
//!   elements (`k` even, `y` 4-byte aligned, `x` 8-byte aligned: the launcher checks).
//! - `swiglu_f16x3`: `silu(gate) * up` written as that operand (the bits of `swiglu_f32` followed
//!   by `f32_to_f16x3`, in one launch: the prefill's input to the down projection).
//!
//! Launch: any 1-D grid (grid-stride loops); the launchers use 256 threads and enough blocks to
//! cover `n` once, capped. Limits: `n < 2^32`; `m ≥ 1`.

use crate::gpu;
use crate::split::split_lo;

/// # Safety
/// `dst` holds `n` floats, `src` holds `m ≥ 1`, `n` a multiple of `m` (launcher contract).
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn add_f32(dst: *mut f32, src: *const f32, n: u32, m: u32) {
    let (n, m) = (n as usize, m as usize);
    let mut i = gpu::global_x();
    while i < n {
        // SAFETY: i < n and i % m < m.
        unsafe { *dst.add(i) += *src.add(i % m) };
        i += gpu::stride_x();
    }
}

/// `silu(g) · u` = `g / (1 + e^-g) · u`: the SwiGLU of one element (also used by the fused
/// gate/up matvec, so both give the same bits).
#[inline(always)]
pub fn silu_mul(g: f32, u: f32) -> f32 {
    g / (1.0 + gpu::exp(-g)) * u
}

/// # Safety
/// `gate`, `up`, `out` hold `n` floats (launcher contract).
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn swiglu_f32(
    gate: *const f32,
    up: *const f32,
    out: *mut f32,
    n: u32,
) {
    let n = n as usize;
    let mut i = gpu::global_x();
    while i < n {
        // SAFETY: i < n.
        unsafe {
            *out.add(i) = silu_mul(*gate.add(i), *up.add(i));
        }
        i += gpu::stride_x();
    }
}

/// # Safety
/// `x` holds `n` floats, `y` holds `n` halves (launcher contract).
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn f32_to_f16(x: *const f32, y: *mut u16, n: u32) {
    let n = n as usize;
    let mut i = gpu::global_x();
    while i < n {
        // SAFETY: i < n.
        unsafe { *y.add(i) = gpu::f32_to_f16(*x.add(i)) };
        i += gpu::stride_x();
    }
}

/// Two floats, for one 8-byte load.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct F2([f32; 2]);

/// Rows of `k` values, produced a pair at a time by `pair(e)` (elements `e`, `e + 1`, `e` even),
/// written as the split-f16 operand: row `r` → `y[3 r k ..]` = `[hi | lo | hi]`.
///
/// # Safety
/// `y` holds `3 · rows · k` halves (4-byte aligned), `k` even, `rows · k < 2^32`; `pair(e)` is
/// valid for every even `e < rows · k`.
#[inline(always)]
unsafe fn split_rows(y: *mut u16, rows: u32, k: u32, pair: impl Fn(usize) -> [f32; 2]) {
    let n2 = (rows * k / 2) as usize;
    let k = k as usize;
    let mut i = gpu::global_x();
    while i < n2 {
        let e = 2 * i;
        let r = (e as u32 / k as u32) as usize;
        let c = e - r * k;
        let [a, b] = pair(e);
        let (ha, hb) = (gpu::f32_to_f16(a), gpu::f32_to_f16(b));
        let hi = ha as u32 | (hb as u32) << 16;
        let lo = split_lo(a) as u32 | (split_lo(b) as u32) << 16;
        // SAFETY: c + 1 < k, so the three pairs are inside output row r (3k halves); c even, so
        // each is 4-byte aligned.
        unsafe {
            let o = y.add(3 * r * k + c);
            *(o as *mut u32) = hi;
            *(o.add(k) as *mut u32) = lo;
            *(o.add(2 * k) as *mut u32) = hi;
        }
        i += gpu::stride_x();
    }
}

/// # Safety
/// `x` holds `rows · k` floats (8-byte aligned), `y` holds `3 · rows · k` halves (4-byte aligned),
/// `k` even, `rows · k < 2^32` (launcher contract).
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn f32_to_f16x3(x: *const f32, y: *mut u16, rows: u32, k: u32) {
    // SAFETY: forwarded contract; e even and e + 1 < rows · k, so the pair is an aligned load.
    unsafe { split_rows(y, rows, k, |e| (*(x.add(e) as *const F2)).0) }
}

/// # Safety
/// `gate`, `up` hold `rows · k` floats (8-byte aligned), `y` holds `3 · rows · k` halves (4-byte
/// aligned), `k` even, `rows · k < 2^32` (launcher contract).
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn swiglu_f16x3(
    gate: *const f32,
    up: *const f32,
    y: *mut u16,
    rows: u32,
    k: u32,
) {
    // SAFETY: forwarded contract; as in `f32_to_f16x3`.
    unsafe {
        split_rows(y, rows, k, |e| {
            let (F2(g), F2(u)) = (*(gate.add(e) as *const F2), *(up.add(e) as *const F2));
            [silu_mul(g[0], u[0]), silu_mul(g[1], u[1])]
        })
    }
}
