//! `rope_f32`: rotary position embedding in place (reference: `cpu::rope`).
//!
//! `x` holds `n_tok` rows of `n_head` heads of `head_dim` floats; row `t` is at position
//! `pos0 + t`. Pair `i` (of `half = head_dim / 2`) is `(2i, 2i+1)` (normal, `neox = 0`) or
//! `(i, i + half)` (NEOX, `neox = 1`); it turns by the angle whose cosine and sine are
//! `cos_sin[2 * (pos * half + i)]` and `[.. + 1]`. The table is computed on the host with the
//! CPU reference's angle (`cpu::rope_angle`, f64) and rounded to f32 once, so the GPU applies
//! exactly the CPU's rotation: `(a, b) → (a cos − b sin, a sin + b cos)`, same operation order.
//! With `has_bias` the row's bias (`n_head * head_dim` floats, the prefill's q or k bias) is
//! added to each element first — the f32 addition `add_f32` would make, in the same launch.
//!
//! Launch: any 1-D grid, grid-stride over the `n_tok * n_head * half` pairs (the launcher covers
//! them once with 256-thread blocks). Limits: `head_dim` even; the table holds positions
//! `0 .. pos0 + n_tok`.

use crate::gpu;

/// # Safety
/// Shapes as in the module header, validated by the launcher.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn rope_f32(
    x: *mut f32,
    bias: *const f32,
    has_bias: u32,
    cos_sin: *const f32,
    n_tok: u32,
    n_head: u32,
    head_dim: u32,
    pos0: u32,
    neox: u32,
) {
    let half = head_dim as usize / 2;
    let per_tok = n_head as usize * half;
    let total = n_tok as usize * per_tok;
    let mut k = gpu::global_x();
    while k < total {
        let t = k / per_tok;
        let r = k % per_tok;
        let (h, i) = (r / half, r % half);
        let base = (t * n_head as usize + h) * head_dim as usize;
        let (ia, ib) = if neox != 0 {
            (i, i + half)
        } else {
            (2 * i, 2 * i + 1)
        };
        let p = pos0 as usize + t;
        // SAFETY: t < n_tok, h < n_head, ia/ib < head_dim, p < table length (launcher contract).
        unsafe {
            let cos = *cos_sin.add(2 * (p * half + i));
            let sin = *cos_sin.add(2 * (p * half + i) + 1);
            let (mut a, mut b) = (*x.add(base + ia), *x.add(base + ib));
            if has_bias != 0 {
                // SAFETY: the bias holds n_head · head_dim floats (launcher contract).
                let hb = h * head_dim as usize;
                a += *bias.add(hb + ia);
                b += *bias.add(hb + ib);
            }
            *x.add(base + ia) = a * cos - b * sin;
            *x.add(base + ib) = a * sin + b * cos;
        }
        k += gpu::stride_x();
    }
}
