//! `kv_append_f16`: writes the keys and values of `n_tok` new positions into one layer's f16 KV
//! cache (reference: the CPU backend's f32 cache rows, rounded to f16).
//!
//! Inputs `k`, `v`: `n_tok` rows of `n_head_kv * head_dim` f32 (row `t` is position `pos0 + t`).
//! Cache layout, per layer: `[n_head_kv][n_ctx][head_dim]` f16, so one head's keys are contiguous
//! for attention. Values are rounded to nearest even (`cvt.rn.f16.f32`).
//!
//! Launch: any 1-D grid, grid-stride over the `n_tok * n_head_kv * head_dim` elements.
//! Limits: `pos0 + n_tok ≤ n_ctx`.

use crate::gpu;

/// # Safety
/// Shapes as in the module header, validated by the launcher.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn kv_append_f16(
    k: *const f32,
    v: *const f32,
    k_cache: *mut u16,
    v_cache: *mut u16,
    pos0: u32,
    n_tok: u32,
    n_head_kv: u32,
    head_dim: u32,
    n_ctx: u32,
) {
    let d = head_dim as usize;
    let row = n_head_kv as usize * d;
    let total = n_tok as usize * row;
    let mut i = gpu::global_x();
    while i < total {
        let (t, r) = (i / row, i % row);
        let (h, j) = (r / d, r % d);
        let dst = (h * n_ctx as usize + pos0 as usize + t) * d + j;
        // SAFETY: i < n_tok * row; dst < n_head_kv * n_ctx * d since pos0 + t < n_ctx.
        unsafe {
            *k_cache.add(dst) = gpu::f32_to_f16(*k.add(i));
            *v_cache.add(dst) = gpu::f32_to_f16(*v.add(i));
        }
        i += gpu::stride_x();
    }
}
