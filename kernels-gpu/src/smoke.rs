//! `axpy_f32`: y[i] = a * x[i] + y[i]. The pipeline's smoke test (build.rs → PTX → ptxas → launch).
//! Launch: any 1-D grid; grid-stride loop over n.

use crate::gpu;

/// # Safety
/// `x` and `y` point to at least `n` f32 on the device.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn axpy_f32(a: f32, x: *const f32, y: *mut f32, n: u32) {
    let mut i = gpu::global_x();
    while i < n as usize {
        // SAFETY: i < n, and the launcher checked both buffers hold n elements.
        unsafe { *y.add(i) = a * *x.add(i) + *y.add(i) };
        i += gpu::stride_x();
    }
}
