//! Attention over the f16 KV cache (reference: `cpu::attention`, causal GQA, scale 1/sqrt(d)).
//!
//! Cache layout per layer: `[n_head_kv][n_ctx][head_dim]`, f16 or f32 (see `kv_cache.rs`); every
//! kernel comes in an `_f16` and an `_f32` variant for the two cache types. Query head `h`
//! reads KV head `h / group`, `group = n_head / n_head_kv`. Scores, softmax and the weighted sum
//! run in f32; `e^x` is `ex2.approx` (relative error ≈ 2^-21).
//!
//! Decode (one query per head, any context length), one launch that also does RoPE and the KV
//! append of the new token: `attention_decode_f16`, grid = (n_head_kv, n_split), n_split =
//! min(ceil(n_ctx / DECODE_MIN_CHUNK), DECODE_CHUNK) (host `ops::decode_splits`), block = 128
//! threads, dynamic shared memory =
//! `4 * shapes::decode_smem_layout(group, head_dim)[7]` bytes. A block serves all `group` query
//! heads of one KV head over one split, so every key and value row is read once per step. The
//! new token sits at position `pos = n_kv − 1` (`n_kv` a launch argument, or `*pos_dev + 1` when
//! `pos_dev` is non-null: a decode step replayed from a CUDA graph; clamped to `n_ctx`). `q`
//! (`n_head * head_dim`), `k_new` and `v_new` (`n_head_kv * head_dim`) are the token's
//! projections before RoPE: every block rotates its queries and the new key (the same pairs and
//! f32 operations as `rope_f32`, table `cos_sin` of `n_pos` positions), rounds the new key and
//! value as the cache stores them and uses those for position `pos`; the block whose split holds
//! `pos` writes them to the cache (what `kv_append` would have written). Split `s` covers
//! positions `s * chunk .. min((s + 1) * chunk, n_kv)`, `chunk = max(ceil(n_kv / n_split),
//! DECODE_MIN_CHUNK)` ≤ 128 (splits past the last are idle): `head_dim / 8` adjacent threads
//! score a position against all the group's queries (the key row in 4-element vector loads, the
//! loads of 4 passes issued before their arithmetic), per-head max and sum go through one warp
//! reduction and one barrier each, and warp `w` accumulates the values of positions
//! `start + w, + 4, …` (the loads of 4 positions issued together, accumulated in order) with lane
//! `l` owning dims `l + 32k` (coalesced rows). With one split the block writes
//! `out[h * head_dim + j] = Σ acc / Σ sum` directly; otherwise it writes its partial
//! `[acc(head_dim), max, sum]` per query head to `part[(h * n_split + s) * (head_dim + 2) ..]`
//! and the last split of each KV head to finish (counted in `done[kvh]`, which it resets to 0)
//! rescales the partials to the global max and writes `out`.
//!
//! Limits: `head_dim` 32, 64 or 128 (a power of two: `head_dim / 8` threads share a position);
//! `group ≤ 8`; `n_ctx ≤ 128 · DECODE_CHUNK`; `done` zeroed before the first launch.
//!
//! Prefill (`attention_prefill_{f16,f32}`, causal, flash-attention style: key tiles streamed
//! through shared memory with an online softmax, no `n × n` matrix anywhere), register-tiled like
//! a GEMM on the CUDA cores: grid = (ceil(n_tok / 32), n_head), block = 128 threads, dynamic shared
//! memory = `shapes::prefill_smem_bytes(head_dim)` (`q_s [32][d+4]`, `k_s [BN][d+4]`,
//! `v_s [BN][d]`, `p_s [32][BN+4]` f32; BN = 32 keys per tile, 16 for d = 128). Block `x` takes
//! query rows `32 (gridDim.x − 1 − x) ..` (the longest first) of head `y`; query `i` (of `n_tok`)
//! sits at position `pos0 + i` and attends to cache positions `0 ..= pos0 + i`. Thread `t` owns
//! rows `2 (t / 8)` and `2 (t / 8) + 1` of the tile — the scores against keys `t % 8 + 8 kk` and
//! the output dims `32 i + 4 (t % 8) .. + 4` — so a row's softmax state lives in 8 adjacent lanes
//! (3 shuffles per reduction) and its probabilities go through `p_s` within the warp. Q is scaled
//! by `scale · log2 e` once, so the softmax runs on `ex2`. The next K/V tile is loaded into
//! registers while the current one is computed. Products are f32 FMAs.
//! Limits: `head_dim` in {32, 64, 96, 128}; `pos0 + n_tok ≤ n_ctx`; `q`, `out` 16-byte aligned.

use crate::gpu;
use crate::kv_cache::CacheElem;
use crate::shapes::{PREFILL_BM, prefill_bn};

/// Threads per block of every attention kernel.
pub const THREADS: usize = 128;
const _: () = assert!(THREADS == crate::shapes::DECODE_THREADS);

/// Element `i` of the head at `x` (`d` floats) after RoPE at position `pos`: the same pairs and
/// the same f32 operations as `rope_f32` (`crate::rope`). Positions past the table (`≥ n_pos`,
/// only possible for a device position past the cache) are left unrotated.
///
/// # Safety
/// `x` holds `d` floats, `i < d`, `cos_sin` holds `n_pos * d` floats.
#[inline(always)]
unsafe fn rope_pair(
    x: *const f32,
    i: usize,
    d: usize,
    pos: usize,
    n_pos: u32,
    cos_sin: *const f32,
    neox: u32,
) -> f32 {
    let half = d / 2;
    let (j, ia, ib, second) = if neox != 0 {
        let j = i % half;
        (j, j, j + half, i >= half)
    } else {
        (i / 2, i & !1, i | 1, i & 1 == 1)
    };
    // SAFETY: ia, ib < d (caller contract).
    let (a, b) = unsafe { (*x.add(ia), *x.add(ib)) };
    if pos >= n_pos as usize {
        return if second { b } else { a };
    }
    // SAFETY: pos < n_pos and j < half: inside the table.
    let (cos, sin) = unsafe {
        (
            *cos_sin.add(2 * (pos * half + j)),
            *cos_sin.add(2 * (pos * half + j) + 1),
        )
    };
    if second {
        a * sin + b * cos
    } else {
        a * cos - b * sin
    }
}

use crate::shapes::{
    DECODE_CHUNK, DECODE_MAX_GROUP, DECODE_MIN_CHUNK, DECODE_WARPS, decode_smem_layout,
};
/// Most dims per lane in the value phase of decode (head_dim ≤ 128).
const MAX_DL: usize = 4;

/// `out[hh] = ⊕ sc[hh][0 .. n]` for each query head `hh < grp` of a decode block: warp `w` takes
/// heads `w, w + DECODE_WARPS, …`, its lanes fold positions `lane, lane + 32, …` with `op` from
/// `init`, and `warp_op` combines the lanes (the per-head max and the per-head sum of a split).
///
/// # Safety
/// `sc` holds `grp` rows of `DECODE_CHUNK ≥ n` floats, `out` `grp` floats (shared memory of the
/// block); called by every thread of the block.
#[inline(always)]
unsafe fn per_head(
    sc: *const f32,
    out: *mut f32,
    grp: usize,
    n: usize,
    init: f32,
    op: impl Fn(f32, f32) -> f32,
    warp_op: impl Fn(f32) -> f32,
) {
    let (lane, warp) = (gpu::lane() as usize, gpu::warp() as usize);
    let mut hh = warp;
    while hh < grp {
        let mut v = init;
        let mut k = lane;
        while k < n {
            // SAFETY: hh < grp, k < n ≤ DECODE_CHUNK (caller contract).
            v = op(v, unsafe { *sc.add(hh * DECODE_CHUNK + k) });
            k += 32;
        }
        let v = warp_op(v);
        if lane == 0 {
            // SAFETY: hh < grp.
            unsafe { *out.add(hh) = v };
        }
        hh += DECODE_WARPS;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attention_decode<C: Chunk4>(
    q: *const f32,
    k_new: *const f32,
    v_new: *const f32,
    k_cache: *mut C,
    v_cache: *mut C,
    cos_sin: *const f32,
    part: *mut f32,
    done: *mut u32,
    out: *mut f32,
    n_kv: u32,
    pos_dev: *const u32,
    n_ctx: u32,
    n_pos: u32,
    head_dim: u32,
    group: u32,
    neox: u32,
    scale: f32,
) {
    const G: usize = DECODE_MAX_GROUP;
    let d = head_dim as usize;
    let grp = group as usize;
    let kvh = gpu::block_x() as usize;
    // SAFETY: reading special registers has no side effects.
    let (split, n_split) = unsafe {
        (
            core::arch::nvptx::_block_idx_y() as usize,
            core::arch::nvptx::_grid_dim_y() as usize,
        )
    };
    // In device mode the new token sits at *pos_dev; clamped to the cache either way.
    let n_kv = if pos_dev.is_null() {
        n_kv as usize
    } else {
        // SAFETY: pos_dev is one readable u32 (launcher contract).
        unsafe { *pos_dev as usize + 1 }
    };
    let n_kv = core::cmp::min(n_kv, n_ctx as usize);
    let pos = n_kv - 1;
    // Splits of at least DECODE_MIN_CHUNK positions (at most DECODE_CHUNK: n_split ≥
    // n_ctx / DECODE_CHUNK); the splits past the last used one have nothing to do.
    let chunk = core::cmp::max(n_kv.div_ceil(n_split), DECODE_MIN_CHUNK);
    let n_used = n_kv.div_ceil(chunk);
    if split >= n_used {
        return; // block-uniform, before any barrier
    }
    let start = split * chunk;
    let end = core::cmp::min(start + chunk, n_kv);
    let t = gpu::thread_x() as usize;
    let (lane, warp) = (gpu::lane() as usize, gpu::warp() as usize);
    let [o_q, o_kn, o_vn, o_sc, o_red, o_tot, o_acc, _] = decode_smem_layout(grp, d);
    let smem = gpu::dyn_smem::<f32>();
    // SAFETY (every shared-memory access below): offsets inside the regions of
    // `decode_smem_layout(group, d)`, which the launcher sized the dynamic shared memory for.
    let (q_s, kn_s, vn_s, sc, red, tot, acc_s) = unsafe {
        (
            smem.add(o_q),
            smem.add(o_kn),
            smem.add(o_vn),
            smem.add(o_sc),
            smem.add(o_red),
            smem.add(o_tot),
            smem.add(o_acc),
        )
    };
    let cache_base = kvh * n_ctx as usize * d;

    // 1. The group's queries and the new key after RoPE; the new key and value rounded as the
    //    cache stores them (every split then sees what a later step reads back).
    let mut i = t;
    while i < grp * d {
        let (hh, j) = (i / d, i % d);
        // SAFETY: query head kvh * grp + hh < n_head; j < d; the table holds n_pos positions.
        unsafe {
            *q_s.add(i) = rope_pair(q.add((kvh * grp + hh) * d), j, d, pos, n_pos, cos_sin, neox)
        };
        i += THREADS;
    }
    let mut i = t;
    while i < d {
        // SAFETY: k_new / v_new hold n_head_kv * d floats; i < d.
        unsafe {
            let kr = rope_pair(k_new.add(kvh * d), i, d, pos, n_pos, cos_sin, neox);
            *kn_s.add(i) = C::store(kr).load();
            *vn_s.add(i) = C::store(*v_new.add(kvh * d + i)).load();
        }
        i += THREADS;
    }
    gpu::sync_threads();
    // The split holding `pos` writes the new row (one block per KV head; no block reads the
    // cache at `pos`: they use kn_s / vn_s).
    if start <= pos && pos < end {
        let mut i = t;
        while i < d {
            // SAFETY: pos < n_ctx, i < d: inside this head's cache.
            unsafe {
                *k_cache.add(cache_base + pos * d + i) = C::store(*kn_s.add(i));
                *v_cache.add(cache_base + pos * d + i) = C::store(*vn_s.add(i));
            }
            i += THREADS;
        }
    }

    // 2. Scores: `tpp = d / 8` adjacent threads share a position, thread `sub` owning dims
    //    8 sub .. 8 sub + 8 of every query of the group (in registers), the key read as two
    //    4-element vectors; a shuffle reduction over the tpp threads gives the dots.
    let tpp = d / 8;
    let (sub, row) = (t % tpp, t / tpp);
    let per_pass = THREADS / tpp;
    // The same number of passes for every thread: all lanes take part in every shuffle
    // (positions past `end` contribute zeros). Passes go in groups of 4 whose key loads are all
    // issued before any arithmetic (the loop is bound by memory latency, not work).
    let n_pass = chunk.div_ceil(per_pass);
    let mut pass0 = 0;
    while pass0 < n_pass {
        let ld = |u: usize| {
            let p = start + row + (pass0 + u) * per_pass;
            if p < end && p != pos {
                // SAFETY: p < n_kv ≤ n_ctx; 8 sub + 8 ≤ d; rows are 4-element aligned.
                unsafe {
                    let kp = k_cache.add(cache_base + p * d + 8 * sub) as *const C;
                    (C::load4(kp), C::load4(kp.add(4)))
                }
            } else {
                (C::ZERO, C::ZERO)
            }
        };
        let raw = [ld(0), ld(1), ld(2), ld(3)];
        let step = |u: usize| {
            let p = start + row + (pass0 + u) * per_pass;
            let mut kv = [0.0f32; 8];
            if p < end && p == pos {
                for (i, v) in kv.iter_mut().enumerate() {
                    // SAFETY: 8 sub + i < d.
                    *v = unsafe { *kn_s.add(8 * sub + i) };
                }
            } else if p < end {
                let (a, b) = (C::widen(raw[u].0), C::widen(raw[u].1));
                kv = [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]];
            }
            // The queries are read from shared memory at each pass (two 16-byte loads per
            // head), not held in registers: the kernel needs ~100 registers instead of 144.
            let mut dots = [0.0f32; G];
            for (hh, dt) in dots.iter_mut().enumerate() {
                if hh < grp {
                    // SAFETY: hh * d + 8 sub + 8 ≤ grp * d, 16-byte aligned (q_s is at offset 0
                    // of the 16-byte aligned dynamic shared memory, d and 8 sub multiples of 4).
                    let (qa, qb) = unsafe {
                        let qp = q_s.add(hh * d + 8 * sub);
                        (ld4(qp), ld4(qp.add(4)))
                    };
                    for i in 0..4 {
                        *dt += qa[i] * kv[i];
                    }
                    for i in 0..4 {
                        *dt += qb[i] * kv[4 + i];
                    }
                }
            }
            let mut m = tpp / 2;
            while m > 0 {
                for dt in dots.iter_mut() {
                    *dt += gpu::shfl_xor(*dt, m as u32);
                }
                m /= 2;
            }
            if sub == 0 && p < end {
                for (hh, &dt) in dots.iter().enumerate() {
                    if hh < grp {
                        // SAFETY: p − start < chunk ≤ DECODE_CHUNK.
                        unsafe { *sc.add(hh * DECODE_CHUNK + p - start) = dt * scale };
                    }
                }
            }
        };
        // Passes past n_pass are skipped (the condition is the same for every thread, so every
        // lane still takes part in each shuffle).
        // Written out (a loop would index `raw` at run time, in local memory).
        step(0);
        if pass0 + 1 < n_pass {
            step(1);
        }
        if pass0 + 2 < n_pass {
            step(2);
        }
        if pass0 + 3 < n_pass {
            step(3);
        }
        pass0 += 4;
    }
    gpu::sync_threads();
    // 3. Per-head max over the split, warp `w` reducing heads w, w + 4.
    let n_here = end - start;
    // SAFETY: tot = [max × grp, sum × grp]; sc holds grp rows of DECODE_CHUNK ≥ n_here.
    unsafe {
        per_head(
            sc,
            tot,
            grp,
            n_here,
            f32::NEG_INFINITY,
            f32::max,
            gpu::warp_max,
        )
    };
    gpu::sync_threads();
    // 4. Weights e^(s − m) in place, then their per-head sums.
    let mut i = t;
    while i < grp * DECODE_CHUNK {
        let (hh, k) = (i / DECODE_CHUNK, i % DECODE_CHUNK);
        if k < n_here {
            // SAFETY: as above.
            unsafe { *sc.add(i) = gpu::exp(*sc.add(i) - *tot.add(hh)) };
        }
        i += THREADS;
    }
    gpu::sync_threads();
    // SAFETY: as above (the sums go to tot[grp ..]).
    unsafe {
        per_head(
            sc,
            tot.add(grp),
            grp,
            n_here,
            0.0,
            |a, b| a + b,
            gpu::warp_sum,
        )
    };
    // 5. Values: warp w takes positions start + w, + DECODE_WARPS, …; lane owns dims
    //    lane + 32 k (coalesced rows), for every query head of the group.
    let dl = d / 32;
    let mut acc = [[0.0f32; MAX_DL]; G];
    // Positions in groups of 4 per warp (p, p + 4, p + 8, p + 12 of the warp's sequence), the
    // value loads of a group issued first; accumulated in the same order as one at a time.
    let mut p0 = start + warp;
    while p0 < end {
        let ld = |u: usize| {
            let p = p0 + u * DECODE_WARPS;
            let mut vv = [0.0f32; MAX_DL];
            if p < end {
                for (k, v) in vv.iter_mut().enumerate() {
                    if k < dl {
                        let j = lane + 32 * k;
                        // SAFETY: j < d; p < n_kv ≤ n_ctx.
                        *v = unsafe {
                            if p == pos {
                                *vn_s.add(j)
                            } else {
                                (*v_cache.add(cache_base + p * d + j)).load()
                            }
                        };
                    }
                }
            }
            vv
        };
        let vs = [ld(0), ld(1), ld(2), ld(3)];
        let mut step = |u: usize| {
            let p = p0 + u * DECODE_WARPS;
            if p < end {
                for (hh, a) in acc.iter_mut().enumerate() {
                    if hh < grp {
                        // SAFETY: p − start < chunk ≤ DECODE_CHUNK.
                        let e = unsafe { *sc.add(hh * DECODE_CHUNK + p - start) };
                        for (av, &v) in a.iter_mut().zip(&vs[u]) {
                            *av += e * v;
                        }
                    }
                }
            }
        };
        step(0);
        step(1);
        step(2);
        step(3);
        p0 += 4 * DECODE_WARPS;
    }
    for (hh, a) in acc.iter().enumerate() {
        if hh < grp {
            for (k, &v) in a.iter().enumerate() {
                if k < dl {
                    // SAFETY: (warp * grp + hh) * d + lane + 32 k < DECODE_WARPS * grp * d.
                    unsafe { *acc_s.add((warp * grp + hh) * d + lane + 32 * k) = v };
                }
            }
        }
    }
    gpu::sync_threads(); // publishes acc_s and tot
    // 6. Sum the warps' pieces: the result (one split used) or this split's partial.
    let mut i = t;
    while i < grp * d {
        let (hh, j) = (i / d, i % d);
        let mut o = 0.0f32;
        for w in 0..DECODE_WARPS {
            // SAFETY: as above.
            o += unsafe { *acc_s.add((w * grp + hh) * d + j) };
        }
        let hq = kvh * grp + hh;
        // SAFETY: out holds n_head * d floats, part n_head * n_split * (d + 2); tot as above.
        unsafe {
            if n_used == 1 {
                *out.add(hq * d + j) = o / *tot.add(grp + hh);
            } else {
                let ps = (hq * n_split + split) * (d + 2);
                *part.add(ps + j) = o;
                if j == 0 {
                    *part.add(ps + d) = *tot.add(hh);
                    *part.add(ps + d + 1) = *tot.add(grp + hh);
                }
            }
        }
        i += THREADS;
    }
    if n_used == 1 {
        return;
    }

    // 7. The last used split of this KV head to finish combines them: each block publishes its
    //    partials (fence), counts itself in done[kvh], and the block that brings the count to
    //    n_used rescales the partials to the global max.
    gpu::fence_gpu();
    gpu::sync_threads(); // every thread's partials are fenced before thread 0 counts the block
    if t == 0 {
        // SAFETY: done holds ≥ n_head_kv u32, 0 at launch (the last block resets its slot).
        let prev = gpu::atomic_add_u32(unsafe { done.add(kvh) }, 1);
        let last = if prev as usize == n_used - 1 {
            1.0
        } else {
            0.0
        };
        // SAFETY: red[0] is this block's scratch.
        unsafe { *red = last };
    }
    gpu::sync_threads();
    // SAFETY: written by thread 0 before the barrier.
    if unsafe { *red } == 0.0 {
        return;
    }
    gpu::fence_gpu();
    // Each split's weight e^(m_s − m) per head into sc (n_used ≤ DECODE_CHUNK: the launcher
    // keeps n_split ≤ DECODE_CHUNK), the denominators into tot.
    let mut hh = warp;
    while hh < grp {
        let base = (kvh * grp + hh) * n_split * (d + 2);
        let mut gm = f32::NEG_INFINITY;
        let mut s = lane;
        while s < n_used {
            // SAFETY: s < n_used ≤ n_split; fenced by its writer before the count.
            gm = gm.max(unsafe { gpu::load_cg(part.add(base + s * (d + 2) + d)) });
            s += 32;
        }
        let gm = gpu::warp_max(gm);
        let mut den = 0.0f32;
        let mut s = lane;
        while s < n_used {
            // SAFETY: as above; hh * DECODE_CHUNK + s < grp * DECODE_CHUNK.
            unsafe {
                let ps = base + s * (d + 2);
                let w = gpu::exp(gpu::load_cg(part.add(ps + d)) - gm);
                *sc.add(hh * DECODE_CHUNK + s) = w;
                den += w * gpu::load_cg(part.add(ps + d + 1));
            }
            s += 32;
        }
        let den = gpu::warp_sum(den);
        if lane == 0 {
            // SAFETY: as above.
            unsafe { *tot.add(hh) = den };
        }
        hh += DECODE_WARPS;
    }
    gpu::sync_threads();
    let mut i = t;
    while i < grp * d {
        let (hh, j) = (i / d, i % d);
        let base = (kvh * grp + hh) * n_split * (d + 2) + j;
        let mut num = 0.0f32;
        for s in 0..n_used {
            // SAFETY: as above.
            unsafe {
                num += *sc.add(hh * DECODE_CHUNK + s) * gpu::load_cg(part.add(base + s * (d + 2)))
            };
        }
        // SAFETY: out holds n_head * d floats.
        unsafe { *out.add((kvh * grp + hh) * d + j) = num / *tot.add(hh) };
        i += THREADS;
    }
    if t == 0 {
        // SAFETY: every used block of this KV head has counted itself; none touches done again.
        unsafe { *done.add(kvh) = 0 };
    }
}

/// Four consecutive floats, for 16-byte loads and stores.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct F4([f32; 4]);

/// # Safety
/// `p` is 16-byte aligned, 4 floats readable.
#[inline(always)]
unsafe fn ld4(p: *const f32) -> [f32; 4] {
    // SAFETY: caller contract.
    unsafe { (*(p as *const F4)).0 }
}

/// # Safety
/// `p` is 16-byte aligned, 4 floats writable.
#[inline(always)]
unsafe fn st4(p: *mut f32, v: [f32; 4]) {
    // SAFETY: caller contract.
    unsafe { *(p as *mut F4) = F4(v) }
}

#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    // SAFETY: a pure arithmetic intrinsic (fma.rn.f32).
    unsafe { core::intrinsics::fmaf32(a, b, c) }
}

/// Four consecutive cache elements, loaded raw (so a tile can wait in registers while the
/// previous one is computed) and widened to f32 when stored to shared memory.
trait Chunk4: CacheElem {
    type Raw: Copy;
    const ZERO: Self::Raw;
    /// # Safety
    /// `p` points to 4 readable elements, aligned to 4 elements.
    unsafe fn load4(p: *const Self) -> Self::Raw;
    fn widen(r: Self::Raw) -> [f32; 4];
}

#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct H4([u16; 4]);

impl Chunk4 for u16 {
    type Raw = H4;
    const ZERO: H4 = H4([0; 4]);
    #[inline(always)]
    unsafe fn load4(p: *const u16) -> H4 {
        // SAFETY: caller contract (8-byte aligned).
        unsafe { *(p as *const H4) }
    }
    #[inline(always)]
    fn widen(r: H4) -> [f32; 4] {
        r.0.map(gpu::f16_to_f32)
    }
}

/// f32 chunks travel as one 128-bit integer (an aggregate of four floats would be copied
/// through local memory where it is selected).
impl Chunk4 for f32 {
    type Raw = u128;
    const ZERO: u128 = 0;
    #[inline(always)]
    unsafe fn load4(p: *const f32) -> u128 {
        // SAFETY: caller contract (16-byte aligned).
        unsafe { *(p as *const u128) }
    }
    #[inline(always)]
    fn widen(r: u128) -> [f32; 4] {
        core::array::from_fn(|i| f32::from_bits((r >> (32 * i)) as u32))
    }
}

/// Most staged 4-element chunks per thread per tile (`BN · d / 4 / THREADS`, 6 at d = 96).
const MAX_CHUNKS: usize = 6;

/// The prefill body for head dimension `D` and key tile `BN` (see the module header for the
/// thread layout).
///
/// # Safety
/// Shapes as in the module header, validated by the launcher; dynamic shared memory of
/// `shapes::prefill_smem_bytes(D)` bytes; `q` and `out` 16-byte aligned.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn prefill_tiled<C: Chunk4, const D: usize, const BN: usize>(
    q: *const f32,
    k_cache: *const C,
    v_cache: *const C,
    out: *mut f32,
    n_tok: u32,
    pos0: u32,
    n_ctx: u32,
    n_head: u32,
    group: u32,
    scale: f32,
) {
    const BM: usize = PREFILL_BM;
    let ni: usize = D / 32; // float4 groups of output dims per thread
    let kpt: usize = BN / 8; // keys per thread
    let nch: usize = BN * D / 4 / THREADS; // staged chunks per thread
    let qs: usize = D + 4; // padded row stride of q_s and k_s
    let ps: usize = BN + 4; // padded row stride of p_s
    let c4: usize = D / 4; // chunks per row

    let t = gpu::thread_x() as usize;
    let (rg, kg) = (t / 8, t % 8);
    let (ra, rb) = (2 * rg, 2 * rg + 1);
    let nh = n_head as usize;
    // The longest query tiles (most keys) first.
    let qt = (gpu::grid_dim_x() - 1 - gpu::block_x()) as usize;
    let q0 = qt * BM;
    // SAFETY: reading a special register.
    let h = unsafe { core::arch::nvptx::_block_idx_y() } as usize;
    let kvh = h / group as usize;
    let n_q = core::cmp::min(BM, n_tok as usize - q0);
    let smem = gpu::dyn_smem::<f32>();
    // SAFETY: the four arrays lie inside the launch's dynamic shared memory
    // (prefill_smem_bytes(D)), each 16-byte aligned (all strides are multiples of 4 floats).
    let (q_s, k_s, v_s, p_s) = unsafe {
        let k_s = smem.add(BM * qs);
        let v_s = k_s.add(BN * qs);
        (smem, k_s, v_s, v_s.add(BN * D))
    };

    // Q tile, pre-scaled by scale · log2(e) so that the softmax runs on ex2.
    let sl = scale * core::f32::consts::LOG2_E;
    let mut ch = t;
    while ch < BM * c4 {
        let (r, c) = (ch / c4, 4 * (ch % c4));
        let v = if r < n_q {
            // SAFETY: q0 + r < n_tok; the row holds n_head · D floats; 16-byte aligned.
            unsafe { ld4(q.add(((q0 + r) * nh + h) * D + c)) }
        } else {
            [0.0; 4]
        };
        // SAFETY: r < BM, c + 4 ≤ D.
        unsafe { st4(q_s.add(r * qs + c), v.map(|x| x * sl)) };
        ch += THREADS;
    }

    let kbase = kvh * n_ctx as usize * D;
    // Keys this block needs: positions 0 ..= pos0 + q0 + n_q - 1.
    let n_keys = pos0 as usize + q0 + n_q;
    let n_tiles = n_keys.div_ceil(BN);
    // Chunk i of a tile: key ch / c4, dims 4 (ch % c4) .. + 4, ch = t + THREADS · i. Loaded raw
    // into registers (the arrays are built and read with constant indices only).
    let stage = |kt: usize, v: *const C| -> [C::Raw; MAX_CHUNKS] {
        core::array::from_fn(|i| {
            let ch = t + THREADS * i;
            let (j, c) = (ch / c4, 4 * (ch % c4));
            if i < nch && kt + j < n_keys {
                // SAFETY: kt + j < n_keys ≤ n_ctx, c + 4 ≤ D: inside this head's cache; aligned
                // to 4 elements.
                unsafe { C::load4(v.add(kbase + (kt + j) * D + c)) }
            } else {
                // Past the last key (or an unused chunk): zeros, since a cache slot may hold
                // anything, even NaN.
                C::ZERO
            }
        })
    };
    let mut rk = stage(0, k_cache);
    let mut rv = stage(0, v_cache);

    let mut ya = RowState::new(pos0 as usize + q0 + ra);
    let mut yb = RowState::new(pos0 as usize + q0 + rb);
    for tile in 0..n_tiles {
        let kt = tile * BN;
        gpu::sync_threads(); // the previous tile is consumed (first time: q_s is written)
        for (i, (&k4, &v4)) in rk.iter().zip(&rv).enumerate() {
            if i < nch {
                let ch = t + THREADS * i;
                let (j, c) = (ch / c4, 4 * (ch % c4));
                // SAFETY: j < BN, c + 4 ≤ D.
                unsafe {
                    st4(k_s.add(j * qs + c), C::widen(k4));
                    st4(v_s.add(j * D + c), C::widen(v4));
                }
            }
        }
        gpu::sync_threads();
        if tile + 1 < n_tiles {
            // In flight while this tile is computed.
            rk = stage(kt + BN, k_cache);
            rv = stage(kt + BN, v_cache);
        }

        // Scores of rows ra, rb against keys kg + 8 kk (log2 domain).
        let (mut sca, mut scb) = ([0.0f32; 4], [0.0f32; 4]);
        let mut c = 0;
        while c < D {
            // SAFETY: rows < BM, keys < BN, c + 4 ≤ D: inside q_s and k_s.
            let (qa, qb) = unsafe { (ld4(q_s.add(ra * qs + c)), ld4(q_s.add(rb * qs + c))) };
            for kk in 0..4 {
                if kk < kpt {
                    // SAFETY: as above.
                    let kv = unsafe { ld4(k_s.add((kg + 8 * kk) * qs + c)) };
                    for e in 0..4 {
                        sca[kk] = fma(qa[e], kv[e], sca[kk]);
                        scb[kk] = fma(qb[e], kv[e], scb[kk]);
                    }
                }
            }
            c += 4;
        }
        // Causal mask and the online softmax of each row; the row's 8 lanes (kg) share it.
        // SAFETY: rows ra, rb < BM: their p_s rows.
        unsafe {
            ya.softmax(&mut sca, kt + kg, kpt, p_s.add(ra * ps + kg));
            yb.softmax(&mut scb, kt + kg, kpt, p_s.add(rb * ps + kg));
        }
        // Rows ra, rb are written and read by the 8 lanes of this warp only.
        gpu::sync_warp();
        // acc[row][dims] += Σ_j p[row][j] · V[j][dims].
        let mut j = 0;
        while j < BN {
            // SAFETY: rows < BM, j + 4 ≤ BN: inside p_s.
            let (pa, pb) = unsafe { (ld4(p_s.add(ra * ps + j)), ld4(p_s.add(rb * ps + j))) };
            for jj in 0..4 {
                for i in 0..4 {
                    if i < ni {
                        // SAFETY: j + jj < BN, 32 i + 4 kg + 4 ≤ D: inside v_s.
                        let v = unsafe { ld4(v_s.add((j + jj) * D + 32 * i + 4 * kg)) };
                        for e in 0..4 {
                            ya.acc[4 * i + e] = fma(pa[jj], v[e], ya.acc[4 * i + e]);
                            yb.acc[4 * i + e] = fma(pb[jj], v[e], yb.acc[4 * i + e]);
                        }
                    }
                }
            }
            j += 4;
        }
    }

    // SAFETY: rows ra, rb of this block's output tile (written when < n_q).
    unsafe {
        ya.write(out, ra, n_q, q0, nh, h, D, ni, kg);
        yb.write(out, rb, n_q, q0, nh, h, D, ni, kg);
    }
}

/// One query row's online-softmax state in the prefill kernel, held (identically) by the row's
/// 8 lanes: running max and sum (log2 domain), and this lane's output dims `32 i + 4 kg + e`
/// at `acc[4 i + e]`.
struct RowState {
    /// The row's position (its last visible key).
    qp: usize,
    m: f32,
    l: f32,
    acc: [f32; 16],
}

impl RowState {
    #[inline(always)]
    fn new(qp: usize) -> Self {
        RowState {
            qp,
            m: f32::NEG_INFINITY,
            l: 0.0,
            acc: [0.0; 16],
        }
    }

    /// Masks and folds this lane's scores `sc` (keys `key0 + 8 kk`, `kk < kpt`) into the state,
    /// rescaling `acc`, and writes the probabilities to `p_row[8 kk]`. Warp-uniform (shuffles
    /// over the row's 8 lanes).
    ///
    /// # Safety
    /// `p_row[8 kk]` is writable for `kk < kpt`.
    #[inline(always)]
    unsafe fn softmax(&mut self, sc: &mut [f32; 4], key0: usize, kpt: usize, p_row: *mut f32) {
        let mut mt = f32::NEG_INFINITY;
        for (kk, s) in sc.iter_mut().enumerate() {
            if kk < kpt {
                if key0 + 8 * kk > self.qp {
                    *s = f32::NEG_INFINITY;
                }
                mt = mt.max(*s);
            }
        }
        // The row's 8 lanes (written out: an array of masks would live in local memory).
        mt = mt.max(gpu::shfl_xor(mt, 1));
        mt = mt.max(gpu::shfl_xor(mt, 2));
        mt = mt.max(gpu::shfl_xor(mt, 4));
        // Finite: the row's first tile holds key 0 ≤ its position.
        let m_new = self.m.max(mt);
        let alpha = gpu::ex2(self.m - m_new);
        let mut sum = 0.0f32;
        for (kk, s) in sc.iter_mut().enumerate() {
            if kk < kpt {
                let p = gpu::ex2(*s - m_new);
                *s = p;
                sum += p;
                // SAFETY: caller contract.
                unsafe { *p_row.add(8 * kk) = p };
            }
        }
        sum += gpu::shfl_xor(sum, 1);
        sum += gpu::shfl_xor(sum, 2);
        sum += gpu::shfl_xor(sum, 4);
        self.l = self.l * alpha + sum;
        self.m = m_new;
        for a in self.acc.iter_mut() {
            *a *= alpha;
        }
    }

    /// Writes row `row` of the block's tile (if `row < n_q`): this lane's dims, divided by the
    /// softmax sum.
    ///
    /// # Safety
    /// `out` holds `n_tok · nh · d` floats, 16-byte aligned; `q0 + n_q ≤ n_tok`, `h < nh`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn write(
        &self,
        out: *mut f32,
        row: usize,
        n_q: usize,
        q0: usize,
        nh: usize,
        h: usize,
        d: usize,
        ni: usize,
        kg: usize,
    ) {
        if row >= n_q {
            return;
        }
        let inv = 1.0 / self.l;
        for i in 0..4 {
            if i < ni {
                let v = [0, 1, 2, 3].map(|e| self.acc[4 * i + e] * inv);
                // SAFETY: q0 + row < n_tok, 32 i + 4 kg + 4 ≤ d; 16-byte aligned.
                unsafe { st4(out.add(((q0 + row) * nh + h) * d + 32 * i + 4 * kg), v) };
            }
        }
    }
}

/// Dispatches the prefill on `head_dim` (32, 64, 96 or 128: the launcher's limits).
///
/// # Safety
/// As [`prefill_tiled`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attention_prefill<C: Chunk4>(
    q: *const f32,
    k_cache: *const C,
    v_cache: *const C,
    out: *mut f32,
    n_tok: u32,
    pos0: u32,
    n_ctx: u32,
    n_head: u32,
    head_dim: u32,
    group: u32,
    scale: f32,
) {
    // SAFETY: forwarded contract; each arm's smem size is prefill_smem_bytes(head_dim).
    unsafe {
        match head_dim {
            32 => prefill_tiled::<C, 32, { prefill_bn(32) }>(
                q, k_cache, v_cache, out, n_tok, pos0, n_ctx, n_head, group, scale,
            ),
            64 => prefill_tiled::<C, 64, { prefill_bn(64) }>(
                q, k_cache, v_cache, out, n_tok, pos0, n_ctx, n_head, group, scale,
            ),
            96 => prefill_tiled::<C, 96, { prefill_bn(96) }>(
                q, k_cache, v_cache, out, n_tok, pos0, n_ctx, n_head, group, scale,
            ),
            _ => prefill_tiled::<C, 128, { prefill_bn(128) }>(
                q, k_cache, v_cache, out, n_tok, pos0, n_ctx, n_head, group, scale,
            ),
        }
    }
}

macro_rules! attention_kernels {
    ($($decode:ident, $prefill:ident => $t:ty;)*) => {$(
        /// # Safety
        /// Shapes as in the module header, validated by the launcher; dynamic shared memory as
        /// stated.
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $decode(
            q: *const f32,
            k_new: *const f32,
            v_new: *const f32,
            k_cache: *mut $t,
            v_cache: *mut $t,
            cos_sin: *const f32,
            part: *mut f32,
            done: *mut u32,
            out: *mut f32,
            n_kv: u32,
            pos_dev: *const u32,
            n_ctx: u32,
            n_pos: u32,
            head_dim: u32,
            group: u32,
            neox: u32,
            scale: f32,
        ) {
            // SAFETY: forwarded contract.
            unsafe {
                attention_decode(
                    q, k_new, v_new, k_cache, v_cache, cos_sin, part, done, out, n_kv, pos_dev,
                    n_ctx, n_pos, head_dim, group, neox, scale,
                )
            }
        }

        /// # Safety
        /// Shapes as in the module header, validated by the launcher; dynamic shared memory as
        /// stated.
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $prefill(
            q: *const f32,
            k_cache: *const $t,
            v_cache: *const $t,
            out: *mut f32,
            n_tok: u32,
            pos0: u32,
            n_ctx: u32,
            n_head: u32,
            head_dim: u32,
            group: u32,
            scale: f32,
        ) {
            // SAFETY: forwarded contract.
            unsafe {
                attention_prefill(
                    q, k_cache, v_cache, out, n_tok, pos0, n_ctx, n_head, head_dim, group, scale,
                )
            }
        }
    )*};
}

attention_kernels! {
    attention_decode_f16, attention_prefill_f16 => u16;
    attention_decode_f32, attention_prefill_f32 => f32;
}
