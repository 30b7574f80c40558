//! `rms_norm_f32`: `y = x / sqrt(mean(x²) + eps) * w`, row by row (reference: `cpu::rms_norm`).
//! `rms_norm_f16x3`: the same rows written as the split-f16 activation operand of the `F16x3`
//! GEMM (`split.rs`: each row of `n` becomes `[hi | lo | hi]`, `3n` halves), the bits that
//! `rms_norm_f32` followed by `f32_to_f16x3` give, in one launch (the prefill's input to q/k/v
//! and to gate/up).
//!
//! Launch: grid = (rows, 1, 1), block = (T, 1, 1) with T a multiple of 32, ≤ 1024 (the launcher
//! uses a thread per element, rounded up to a warp, at most 1024: the row's loads are then issued
//! at once). Each block reduces one row of `n` floats; the scale is computed with IEEE `sqrt` and
//! division (not `rsqrt.approx`) so it matches the CPU reference to rounding.
//! Limits: `n ≥ 1`; `x`, `y` hold `rows * n` floats, `w` holds `n`; `x` and `y` may be the same
//! buffer (each element is read and written by the same thread).

use crate::gpu;
use crate::split::split_lo;

/// The row's scale `1 / sqrt(mean(x²) + eps)` (every thread of the block gets it).
///
/// # Safety
/// `x` holds the row's `n` floats.
#[inline(always)]
unsafe fn row_scale(x: *const f32, n: usize, eps: f32) -> f32 {
    let step = gpu::block_dim_x() as usize;
    let mut ss = 0.0f32;
    let mut c = gpu::thread_x() as usize;
    while c < n {
        // SAFETY: c < n (caller contract).
        let v = unsafe { *x.add(c) };
        ss += v * v;
        c += step;
    }
    let ss = gpu::block_sum(ss);
    1.0 / core::f32::math::sqrt(ss / n as f32 + eps)
}

/// # Safety
/// Shapes as in the module header, validated by the launcher.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn rms_norm_f32(
    x: *const f32,
    w: *const f32,
    y: *mut f32,
    n: u32,
    eps: f32,
) {
    gpu::pdl_trigger();
    gpu::pdl_wait();
    let n = n as usize;
    let row = gpu::block_x() as usize * n;
    let step = gpu::block_dim_x() as usize;
    // SAFETY: the row lies inside x (launcher contract).
    let scale = unsafe { row_scale(x.add(row), n, eps) };
    let mut c = gpu::thread_x() as usize;
    while c < n {
        // SAFETY: as above; y has the same shape as x, w holds n.
        unsafe { *y.add(row + c) = *x.add(row + c) * scale * *w.add(c) };
        c += step;
    }
}

/// # Safety
/// Shapes as in the module header (`y` holds `rows · 3n` halves), validated by the launcher; `x`
/// and `y` do not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn rms_norm_f16x3(
    x: *const f32,
    w: *const f32,
    y: *mut u16,
    n: u32,
    eps: f32,
) {
    let n = n as usize;
    let r = gpu::block_x() as usize;
    let step = gpu::block_dim_x() as usize;
    // SAFETY: the row lies inside x (launcher contract).
    let scale = unsafe { row_scale(x.add(r * n), n, eps) };
    let mut c = gpu::thread_x() as usize;
    while c < n {
        // SAFETY: c < n: inside row r of x, w, and row r of y (3n halves).
        unsafe {
            let v = *x.add(r * n + c) * scale * *w.add(c);
            let hi = gpu::f32_to_f16(v);
            let o = y.add(3 * r * n + c);
            *o = hi;
            *o.add(n) = split_lo(v);
            *o.add(2 * n) = hi;
        }
        c += step;
    }
}
