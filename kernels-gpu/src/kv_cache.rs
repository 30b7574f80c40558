//! `kv_append_f16` / `kv_append_f32`: write the keys and values of `n_tok` new positions into one
//! layer's KV cache, f16 (the default: half the memory and traffic) or f32 (the reference-precision
//! option). Reference: the CPU backend's f32 cache rows (rounded to f16 for the f16 cache).
//!
//! Inputs `k`, `v`: `n_tok` rows of `n_head_kv * head_dim` f32 (row `t` is position `pos0 + t`).
//! Cache layout, per layer: `[n_head_kv][n_ctx][head_dim]`, so one head's keys are contiguous
//! for attention. f16 values are rounded to nearest even (`cvt.rn.f16.f32`).
//!
//! With `has_bias` the value bias (`n_head_kv * head_dim` floats, the prefill's v bias) is added
//! to each value before it is stored — the f32 addition `add_f32` would make, in the same launch.
//!
//! Launch: any 1-D grid, grid-stride over the `n_tok * n_head_kv * head_dim` elements.
//! Limits: `pos0 + n_tok ≤ n_ctx`.

use crate::gpu;

/// An element type of the KV cache.
pub trait CacheElem: Copy {
    fn store(x: f32) -> Self;
    fn load(self) -> f32;
}

impl CacheElem for u16 {
    #[inline(always)]
    fn store(x: f32) -> Self {
        gpu::f32_to_f16(x)
    }
    #[inline(always)]
    fn load(self) -> f32 {
        gpu::f16_to_f32(self)
    }
}

impl CacheElem for f32 {
    #[inline(always)]
    fn store(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn load(self) -> f32 {
        self
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn kv_append<C: CacheElem>(
    k: *const f32,
    v: *const f32,
    v_bias: *const f32,
    has_bias: u32,
    k_cache: *mut C,
    v_cache: *mut C,
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
            *k_cache.add(dst) = C::store(*k.add(i));
            let mut vv = *v.add(i);
            if has_bias != 0 {
                // SAFETY: the bias holds row floats (launcher contract).
                vv += *v_bias.add(r);
            }
            *v_cache.add(dst) = C::store(vv);
        }
        i += gpu::stride_x();
    }
}

/// # Safety
/// Shapes as in the module header, validated by the launcher.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn kv_append_f16(
    k: *const f32,
    v: *const f32,
    v_bias: *const f32,
    has_bias: u32,
    k_cache: *mut u16,
    v_cache: *mut u16,
    pos0: u32,
    n_tok: u32,
    n_head_kv: u32,
    head_dim: u32,
    n_ctx: u32,
) {
    // SAFETY: forwarded contract.
    unsafe {
        kv_append(
            k, v, v_bias, has_bias, k_cache, v_cache, pos0, n_tok, n_head_kv, head_dim, n_ctx,
        )
    }
}

/// # Safety
/// Shapes as in the module header, validated by the launcher.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn kv_append_f32(
    k: *const f32,
    v: *const f32,
    v_bias: *const f32,
    has_bias: u32,
    k_cache: *mut f32,
    v_cache: *mut f32,
    pos0: u32,
    n_tok: u32,
    n_head_kv: u32,
    head_dim: u32,
    n_ctx: u32,
) {
    // SAFETY: forwarded contract.
    unsafe {
        kv_append(
            k, v, v_bias, has_bias, k_cache, v_cache, pos0, n_tok, n_head_kv, head_dim, n_ctx,
        )
    }
}
