//! `attention_combine`: the output of a decode attention whose splits left partials
//! (`attention_decode_*` launched without `defer` over more than one split; reference:
//! `cpu::attention`, whose softmax over all positions this reassembles).
//!
//! Query head `h` gets `out[h · D + j] = Σ_s w_s · acc_s[j] / Σ_s w_s · sum_s` with
//! `w_s = e^(m_s − M)`, `M = max_s m_s`, over the `n_used` used splits of the step's position
//! (planned as the attention plans it: `attention::decode_n_kv`, `shapes::decode_plan`; with one
//! split the attention wrote `out` itself and this kernel does nothing). Layout as the attention
//! writes it: `acc_s` at `part[(h · n_split + s) · D ..]`, `[m_s, sum_s]` at
//! `part[n_head · n_split · D + 2 (h · n_split + s) ..]`.
//!
//! A separate launch instead of a counted last block of the attention: the attention's blocks
//! end after writing their partials (no fence, atomic or serial combine on its critical path),
//! and here every load is in flight at once. Each head has `COMBINE_HEAD_BLOCKS` blocks, block
//! `cb` the `D / COMBINE_HEAD_BLOCKS` columns from `cb · D / COMBINE_HEAD_BLOCKS`. Thread `t` owns
//! 4 of them (column group `c = t mod Q`, `Q` groups per block) and the splits `l, l + L, …` with
//! `l = t / Q`, `L = COMBINE_THREADS / Q` lanes of splits (at most `COMBINE_MAX_PER` each): it
//! loads all its splits' maxima, sums and partials at once, the block forms `M` over every
//! split, each thread sums its splits in order, the lanes of a warp are added in a fixed
//! butterfly and the warps in order through shared memory (deterministic: the same order at every
//! launch).
//!
//! Launch: grid = (n_head · `COMBINE_HEAD_BLOCKS`, 1, 1), block = (`COMBINE_THREADS`, 1, 1),
//! dynamic shared memory `shapes::COMBINE_SMEM_BYTES`. Limits: `head_dim` 32, 64 or 128;
//! `n_split ≤ shapes::decode_max_splits(head_dim)`;
//! `part` 16-byte aligned; the attention launched with `defer` = 0 (with one split it wrote
//! `out`).

use crate::gpu;
use crate::shapes::{COMBINE_HEAD_BLOCKS, COMBINE_MAX_PER, COMBINE_THREADS, decode_plan};

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
    const QB: usize = COMBINE_HEAD_BLOCKS;
    // Splits per thread: at most n_split / lanes ≤ COMBINE_MAX_PER (the launcher's limit).
    const MAX_PER: usize = COMBINE_MAX_PER;

    let cols = D / QB;
    let q4 = cols / 4;
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
    let (h, cb) = (gpu::block_x() as usize / QB, gpu::block_x() as usize % QB);
    let n_head = gpu::grid_dim_x() as usize / QB;
    let t = gpu::thread_x() as usize;
    let (c, l) = (t % q4, t / q4);
    let col = cb * cols + 4 * c;
    let row0 = h * n_split;
    // SAFETY: the [m, sum] pairs follow the n_head · n_split partial rows (the layout).
    let ms = unsafe { part.add(n_head * n_split * D) };
    // A split past n_used reads the last used one's row (unconditional loads) and gets weight 0.
    let split = |k: usize| core::cmp::min(l + lanes * k, n_used - 1);
    let live = |k: usize| l + lanes * k < n_used;
    let ld = |k: usize| {
        let r = row0 + split(k);
        // SAFETY: r < n_head · n_split: a partial row (col + 4 ≤ D, 16-byte aligned) and its
        // [m, sum] pair (8-byte aligned).
        let (acc, [m, sum]) = unsafe {
            (
                gpu::load_cg4(part.add(r * D + col)),
                [gpu::load_cg(ms.add(2 * r)), gpu::load_cg(ms.add(2 * r + 1))],
            )
        };
        (if live(k) { m } else { f32::NEG_INFINITY }, acc, sum)
    };
    // Every load in flight together, unconditional (the array stays in registers).
    let v: [(f32, [f32; 4], f32); MAX_PER] = core::array::from_fn(ld);
    // The block's maximum over every split (each block reads all of them for its columns).
    let mut mx = v.iter().fold(f32::NEG_INFINITY, |a, x| a.max(x.0));
    let mut k = 16;
    while k > 0 {
        mx = mx.max(gpu::shfl_xor(mx, k));
        k >>= 1;
    }
    let smem = gpu::dyn_smem::<f32>();
    let warps = T / 32;
    // SAFETY (shared memory): [warps] maxima, [warps][cols] sums, [warps] denominators, inside
    // `shapes::COMBINE_SMEM_BYTES`.
    let (wmax, nums, dens) = unsafe { (smem, smem.add(warps), smem.add(warps + warps * cols)) };
    let (lane, warp) = (gpu::lane() as usize, gpu::warp() as usize);
    if lane == 0 {
        // SAFETY: warp < warps.
        unsafe { *wmax.add(warp) = mx };
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
    for x in &v {
        let w = gpu::exp(x.0 - big);
        den = fma(w, x.2, den);
        for (a, &p) in num.iter_mut().zip(&x.1) {
            *a = fma(w, p, *a);
        }
    }
    // The warp's lanes of splits (lane bits above those of the column group) in a fixed tree.
    let mut off = q4 as u32;
    while off < 32 {
        for a in num.iter_mut() {
            *a += gpu::shfl_xor(*a, off);
        }
        den += gpu::shfl_xor(den, off);
        off <<= 1;
    }
    if lane < q4 {
        // SAFETY: warp < warps, 4 c + 4 ≤ cols: inside [warps][cols]; dens[warp].
        unsafe {
            for (i, &a) in num.iter().enumerate() {
                *nums.add(warp * cols + 4 * c + i) = a;
            }
            if c == 0 {
                *dens.add(warp) = den;
            }
        }
    }
    gpu::sync_threads();
    // The warps' sums in warp order; thread t < cols writes column cb · cols + t.
    if t < cols {
        let (mut o, mut d) = (0.0f32, 0.0f32);
        for w in 0..warps {
            // SAFETY: as above.
            unsafe {
                o += *nums.add(w * cols + t);
                d += *dens.add(w);
            }
        }
        // SAFETY: out holds n_head · D floats.
        unsafe { *out.add(h * D + cb * cols + t) = o / d };
    }
}

#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    // SAFETY: a pure arithmetic intrinsic (fma.rn.f32).
    unsafe { core::intrinsics::fmaf32(a, b, c) }
}
