//! `rms_norm_f32`: `y = x / sqrt(mean(x²) + eps) * w`, row by row (reference: `cpu::rms_norm`).
//!
//! Launch: grid = (rows, 1, 1), block = (T, 1, 1) with T a multiple of 32, ≤ 1024 (the launcher
//! uses a thread per element, rounded up to a warp, at most 1024: the row's loads are then issued
//! at once). Each block reduces one row of `n` floats; the scale is computed with IEEE `sqrt` and
//! division (not `rsqrt.approx`) so it matches the CPU reference to rounding.
//! Limits: `n ≥ 1`; `x`, `y` hold `rows * n` floats, `w` holds `n`; `x` and `y` may be the same
//! buffer (each element is read and written by the same thread).

use crate::gpu;

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
    let mut ss = 0.0f32;
    let mut c = gpu::thread_x() as usize;
    while c < n {
        // SAFETY: c < n, and the row lies inside x (launcher contract).
        let v = unsafe { *x.add(row + c) };
        ss += v * v;
        c += step;
    }
    let ss = gpu::block_sum(ss);
    let scale = 1.0 / core::f32::math::sqrt(ss / n as f32 + eps);
    let mut c = gpu::thread_x() as usize;
    while c < n {
        // SAFETY: as above; y has the same shape as x, w holds n.
        unsafe { *y.add(row + c) = *x.add(row + c) * scale * *w.add(c) };
        c += step;
    }
}
