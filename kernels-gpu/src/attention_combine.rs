//! `attention_combine`: the output of a decode attention whose splits left partials
//! (`attention_decode_*` launched without `defer` over more than one split; reference:
//! `cpu::attention`, whose softmax over all positions this reassembles).
//!
//! Query head `h` (one block each, grid = n_head) gets `out[h · D + j] = Σ_s w_s · acc_s[j] /
//! Σ_s w_s · sum_s` with `w_s = e^(m_s − M)`, `M = max_s m_s`, over the `n_used` used splits of
//! the step's position (planned as the attention plans it: `attention::decode_n_kv`,
//! `shapes::decode_plan`; with one split the attention wrote `out` itself and this kernel does
//! nothing). Layout as the attention writes it: `acc_s` at `part[(h · n_split + s) · D ..]`,
//! `[m_s, sum_s]` at `part[n_head · n_split · D + 2 (h · n_split + s) ..]`.
//!
//! A separate launch instead of a counted last block of the attention: the attention's blocks
//! end after writing their partials (no fence, atomic or serial combine on its critical path),
//! and here every load is in flight at once. Thread `t` owns the 4 output columns
//! `4 (t mod D/4) ..` and the splits `l, l + L, l + 2L, …` with `l = t / (D/4)`, `L = THREADS /
//! (D/4)` lanes of splits (at most 16 splits each): it loads all its splits' maxima, sums and
//! partials at once, the block forms `M`, each thread sums its splits in order, and the lanes'
//! sums are added in lane order through shared memory (deterministic: the same order at every
//! launch).
//!
//! Launch: grid = (n_head, 1, 1), block = (`COMBINE_THREADS`, 1, 1), dynamic shared memory
//! `shapes::COMBINE_SMEM_BYTES`. Limits: `head_dim` 32, 64 or 128;
//! `n_split ≤ shapes::decode_max_splits(head_dim)`;
//! `part` 16-byte aligned; the attention launched with `defer` = 0 (with one split it wrote
//! `out`).

use crate::gpu;
use crate::shapes::{COMBINE_MAX_PER, COMBINE_THREADS, decode_plan};

/// `[f(0), f(1), …, f(15)]` written out: constant indices, so the arrays stay in registers
/// (`core::array::from_fn` or a loop over 16 elements becomes a loop over an array in local
/// memory).
macro_rules! written_out {
    ($f:expr) => {{
        #[allow(unused_mut)]
        let mut f = $f;
        [
            f(0),
            f(1),
            f(2),
            f(3),
            f(4),
            f(5),
            f(6),
            f(7),
            f(8),
            f(9),
            f(10),
            f(11),
            f(12),
            f(13),
            f(14),
            f(15),
        ]
    }};
}

/// # Safety
/// As the module's limits, validated by the launcher (`ops::attention_combine`): `part` holds the
/// partials of `n_head · n_split` (query head, split) pairs, `pos_dev` is null or one u32, `out`
/// holds `n_head · head_dim` floats.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn attention_combine(
    part: *const f32,
    pos_dev: *const u32,
    n_kv: u32,
    n_ctx: u32,
    n_split: u32,
    head_dim: u32,
    out: *mut f32,
) {
    gpu::pdl_trigger();
    // SAFETY: forwarded contract; head_dim is 32, 64 or 128 (launcher).
    unsafe {
        match head_dim {
            32 => combine::<32>(part, pos_dev, n_kv, n_ctx, n_split, out),
            64 => combine::<64>(part, pos_dev, n_kv, n_ctx, n_split, out),
            _ => combine::<128>(part, pos_dev, n_kv, n_ctx, n_split, out),
        }
    }
}

/// The combine for head dimension `D` (see the module header).
///
/// # Safety
/// As [`attention_combine`].
#[inline(always)]
unsafe fn combine<const D: usize>(
    part: *const f32,
    pos_dev: *const u32,
    n_kv: u32,
    n_ctx: u32,
    n_split: u32,
    out: *mut f32,
) {
    const T: usize = COMBINE_THREADS;
    // Splits per thread: at most n_split / lanes ≤ COMBINE_MAX_PER (the launcher's limit).
    const MAX_PER: usize = COMBINE_MAX_PER;
    const _: () = assert!(MAX_PER == 16, "the loads below are written out for 16");
    let q4 = D / 4;
    let lanes = T / q4;
    // The position is written before the step: read before the wait.
    // SAFETY: pos_dev is null or one readable u32 (launcher contract).
    let n_kv = unsafe { crate::attention::decode_n_kv(n_kv, pos_dev, n_ctx) };
    let (_, n_used) = decode_plan(n_kv, n_split);
    gpu::pdl_wait();
    if n_used <= 1 {
        return; // the attention wrote `out` itself (block-uniform, before any barrier)
    }
    let (n_used, n_split) = (n_used as usize, n_split as usize);
    let h = gpu::block_x() as usize;
    let n_head = gpu::grid_dim_x() as usize;
    let t = gpu::thread_x() as usize;
    let (c, l) = (t % q4, t / q4);
    let row0 = h * n_split;
    // SAFETY: the [m, sum] pairs follow the n_head · n_split partial rows (the layout).
    let ms = unsafe { part.add(n_head * n_split * D) };
    // A split past n_used reads the last used one's row (unconditional loads) and gets weight 0.
    let split = |k: usize| core::cmp::min(l + lanes * k, n_used - 1);
    let live = |k: usize| l + lanes * k < n_used;
    let ld = |k: usize| {
        let r = row0 + split(k);
        // SAFETY: r < n_head · n_split: a partial row (4 c + 4 ≤ D, 16-byte aligned) and its
        // pair (8-byte aligned).
        unsafe {
            (
                gpu::load_cg4(part.add(r * D + 4 * c)),
                gpu::load_cg(ms.add(2 * r + 1)),
            )
        }
    };
    // Every load in flight together, unconditional (a split past n_used reads the last used
    // one's row), so the arrays stay in registers.
    let m: [f32; MAX_PER] = written_out!(|k: usize| {
        // SAFETY: as above.
        let v = unsafe { gpu::load_cg(ms.add(2 * (row0 + split(k)))) };
        if live(k) { v } else { f32::NEG_INFINITY }
    });
    let parts: [([f32; 4], f32); MAX_PER] = written_out!(ld);
    // The block's maximum (every thread holds maxima of its lane's splits).
    let mut mx = m.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut k = 16;
    while k > 0 {
        mx = mx.max(gpu::shfl_xor(mx, k));
        k >>= 1;
    }
    let smem = gpu::dyn_smem::<f32>();
    let warps = T / 32;
    // SAFETY (shared memory): [warps] maxima, [lanes][D] sums, [lanes] denominators, inside
    // `shapes::COMBINE_SMEM_BYTES`.
    let (wmax, nums, dens) = unsafe { (smem, smem.add(warps), smem.add(warps + T * 4)) };
    if gpu::lane() == 0 {
        // SAFETY: warp < warps.
        unsafe { *wmax.add(gpu::warp() as usize) = mx };
    }
    gpu::sync_threads();
    let mut big = f32::NEG_INFINITY;
    for w in 0..warps {
        // SAFETY: as above.
        big = big.max(unsafe { *wmax.add(w) });
    }
    // This thread's splits in order: Σ w_s acc_s and Σ w_s sum_s (w = 0 past n_used: m = −inf).
    let mut num = [0.0f32; 4];
    let mut den = 0.0f32;
    written_out!(|k: usize| {
        let w = gpu::exp(m[k] - big);
        den = fma(w, parts[k].1, den);
        for (a, &x) in num.iter_mut().zip(&parts[k].0) {
            *a = fma(w, x, *a);
        }
    });
    // SAFETY: l < lanes, 4 c + 4 ≤ D: inside [lanes][D]; dens[l].
    unsafe {
        for (i, &a) in num.iter().enumerate() {
            *nums.add(l * D + 4 * c + i) = a;
        }
        if c == 0 {
            *dens.add(l) = den;
        }
    }
    gpu::sync_threads();
    // The lanes' sums in lane order; thread t < D writes element t.
    if t < D {
        let (mut o, mut d) = (0.0f32, 0.0f32);
        for i in 0..lanes {
            // SAFETY: as above.
            unsafe {
                o += *nums.add(i * D + t);
                d += *dens.add(i);
            }
        }
        // SAFETY: out holds n_head · D floats.
        unsafe { *out.add(h * D + t) = o / d };
    }
}

#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    // SAFETY: a pure arithmetic intrinsic (fma.rn.f32).
    unsafe { core::intrinsics::fmaf32(a, b, c) }
}
