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
//! DECODE_MIN_CHUNK)` ≤ 128 (splits past the last are idle). The body is instantiated per
//! `head_dim` and built as a short chain for short contexts (4 barriers, one memory latency after
//! the position is known):
//! 1. every global load first, all in flight together: the token's query pairs, key pair, value
//!    and table entry, the key rows of the split's first 4 score passes and the value rows of
//!    the warp's first 8 positions (all of a 32-position split); then RoPE into shared memory
//!    and the new row to the cache.
//! 2. scores: `head_dim / 8` adjacent threads score a position against all the group's queries
//!    (the key row in 4-element vector loads, the group's FMA chains interleaved), the dots
//!    summed over those threads by a reduce-scatter (7 shuffles for 8 heads), passes over the
//!    split's positions only, loads of 4 passes issued before their arithmetic.
//! 3. softmax: the two halves of warp `w` take heads `w` and `w + 4`: max, `e^(s − max)` in
//!    place, sum, with no barrier in between (4 shuffles per reduction, both heads at once).
//! 4. values: warp `w` accumulates positions `start + w, + 4, …` (the first 8 rows from step 1,
//!    then 4 rows loaded together; accumulated in order), lane `l` owning dims
//!    `dl·l .. dl·l + dl`, `dl = head_dim / 32` (one coalesced access per row).
//! 5. the warps' sums: with one split and `defer` = 0 the block writes `out[h * head_dim + j] =
//!    Σ acc · rcp(Σ sum)` directly (`rcp.approx`, ≤ 1 ulp); otherwise it writes its partial per
//!    query head, `acc` (head_dim floats) to `part[(h * n_split + s) * head_dim ..]` and
//!    `[max, sum]` to `part[n_head * n_split * head_dim + 2 (h * n_split + s) ..]`, and ends: the
//!    partials are combined by the output projection (`matvec_attn_*`, while `n_used ≤ defer`)
//!    or by `attention_combine` (the next launch; `attention_combine.rs`). The blocks never wait
//!    for each other (no counted last block: its fence, atomic and serial combine cost more
//!    than the separate launch, PERF.md change 35).
//!
//! Limits: `head_dim` 32, 64 or 128 (a power of two: `head_dim / 8` threads share a position);
//! `group ≤ 8`; `n_ctx ≤ DECODE_CHUNK · shapes::decode_max_splits(head_dim)`; `cos_sin` 16-byte aligned (the slots of a split
//! past its positions load from it, a readable dummy); with `defer` > 0, the position needs at
//! most `defer` splits (the host replays the graph captured with `defer` only there).
//!
//! Prefill (`attention_prefill_{f16,f32}`; for the f16 cache the backend runs the tensor-core
//! `attention_prefill_mma_f16` of `attention_mma.rs` by default, the same function; causal,
//! flash-attention style: key tiles streamed
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

use crate::shapes::{
    DECODE_CHUNK, DECODE_MAX_GROUP, DECODE_WARPS, decode_plan, decode_smem_layout,
};
/// Most dims per lane in the value phase of decode (head_dim ≤ 128).
const MAX_DL: usize = 4;
/// Most query RoPE pairs per thread in decode (`DECODE_MAX_GROUP · 64 / THREADS`).
const MAX_QI: usize = DECODE_MAX_GROUP * 64 / THREADS;
/// Lanes per query head in the decode softmax: a half warp, each warp serving 2 heads.
const SOFTMAX_LANES: usize = 16;
/// Score slots per lane in the decode softmax (a split holds at most `DECODE_CHUNK` positions).
const SLOTS: usize = DECODE_CHUNK / SOFTMAX_LANES;
const _: () = assert!(
    DECODE_CHUNK.is_multiple_of(SOFTMAX_LANES)
        && DECODE_MAX_GROUP == DECODE_WARPS * (32 / SOFTMAX_LANES)
);

/// The elements of RoPE pair `jj` of a head of `d` dims: `(jj, jj + d/2)` (NEOX) or
/// `(2 jj, 2 jj + 1)`; the pair's table entry is `jj` either way (as in `crate::rope`).
#[inline(always)]
fn rope_idx(jj: usize, d: usize, neox: bool) -> (usize, usize) {
    if neox {
        (jj, jj + d / 2)
    } else {
        (2 * jj, 2 * jj + 1)
    }
}

/// The pair `(a, b)` turned by the table entry `cs = (cos, sin)`, or left as it is when `cs` is
/// `None` (a position past the table): the same f32 operations as `rope_f32`.
#[inline(always)]
fn rotate(a: f32, b: f32, cs: Option<(f32, f32)>) -> (f32, f32) {
    match cs {
        Some((cos, sin)) => (a * cos - b * sin, a * sin + b * cos),
        None => (a, b),
    }
}

/// Sums each `v[i]` over the `tpp` adjacent lanes that share a position (`tpp` a power of two,
/// at most 32) and leaves the sums spread over those lanes (a reduce-scatter: 7 shuffles for
/// `tpp ≥ 8` instead of `8 · log2 tpp`). Returns `(n, base, owner)`: this lane holds the sums of
/// `base .. base + n` in `v[.. n]`, and `owner` is true on exactly one of the lanes holding them.
/// Each sum is formed with the same additions as a butterfly reduction, bit for bit.
/// Warp-uniform (every lane shuffles).
#[inline(always)]
fn reduce_scatter(v: &mut [f32; DECODE_MAX_GROUP], sub: usize, tpp: usize) -> (usize, usize, bool) {
    const _: () = assert!(DECODE_MAX_GROUP == 8);
    let (mut n, mut base, mut owner) = (DECODE_MAX_GROUP, 0, true);
    let mut m = tpp / 2;
    // Halving levels written out (constant indices: the array stays in registers).
    if m > 0 {
        base += split_half::<4>(v, sub, m);
        n = 4;
        m /= 2;
    }
    if m > 0 {
        base += split_half::<2>(v, sub, m);
        n = 2;
        m /= 2;
    }
    if m > 0 {
        base += split_half::<1>(v, sub, m);
        n = 1;
        m /= 2;
    }
    while m > 0 {
        v[0] += gpu::shfl_xor(v[0], m as u32);
        owner &= sub & m == 0;
        m /= 2;
    }
    (n, base, owner)
}

/// One level of [`reduce_scatter`] over `2 H` values and lanes `sub`, `sub ^ m`: the lane with
/// bit `m` clear keeps `v[.. H]`, the other `v[H .. 2 H]` (moved down), each adding the partner's
/// copy of the half it keeps. Returns the offset of the kept half (0 or `H`).
#[inline(always)]
fn split_half<const H: usize>(v: &mut [f32; DECODE_MAX_GROUP], sub: usize, m: usize) -> usize {
    let up = sub & m != 0;
    for i in 0..H {
        let (keep, send) = if up {
            (v[i + H], v[i])
        } else {
            (v[i], v[i + H])
        };
        v[i] = keep + gpu::shfl_xor(send, m as u32);
    }
    if up { H } else { 0 }
}

/// The partial dots of query heads `0 .. N` of a decode group (head `hh` read as head
/// `min(hh, grp − 1)`: every load and FMA unconditional) with this thread's 8 key elements `kv`
/// (dims `8 sub .. 8 sub + 8`); the other entries 0.
///
/// # Safety
/// `q_s` holds `grp ≥ 1` heads of `D` floats, 16-byte aligned; `8 sub + 8 ≤ D`, D a multiple of 4.
#[inline(always)]
unsafe fn group_dots<const D: usize, const N: usize>(
    q_s: *const f32,
    grp: usize,
    sub: usize,
    kv: &[f32; 8],
) -> [f32; DECODE_MAX_GROUP] {
    let mut dots = [0.0f32; DECODE_MAX_GROUP];
    #[allow(clippy::needless_range_loop)] // a constant range: unrolled, `dots` in registers
    for hh in 0..N {
        let dt = &mut dots[hh];
        // SAFETY: min(hh, grp − 1) * D + 8 sub + 8 ≤ grp * D; 16-byte aligned (caller contract,
        // 8 sub a multiple of 4).
        let (qa, qb) = unsafe {
            let qp = q_s.add(core::cmp::min(hh, grp - 1) * D + 8 * sub);
            (ld4(qp), ld4(qp.add(4)))
        };
        for i in 0..4 {
            *dt = fma(qa[i], kv[i], *dt);
        }
        for i in 0..4 {
            *dt = fma(qb[i], kv[4 + i], *dt);
        }
    }
    dots
}

/// `a[i]` for `i < N` by a chain of selects over the registers holding `a` (a run-time index
/// into a register array would put it in local memory).
#[inline(always)]
fn pick<T: Copy, const N: usize>(a: &[T; N], i: usize) -> T {
    let mut r = a[0];
    for (j, &x) in a.iter().enumerate().skip(1) {
        if i == j {
            r = x;
        }
    }
    r
}

/// `n`, opaque to the compiler (`matvec_dot::pin`): a loop bounded by it stays a loop instead of
/// being written out `n` times.
#[inline(always)]
fn rolled(n: u32) -> usize {
    crate::matvec_dot::pin(n) as usize
}

/// Dispatches decode attention on `head_dim` (32, 64 or 128: the launcher's limits).
///
/// # Safety
/// As [`decode_d`].
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
    out: *mut f32,
    n_kv: u32,
    pos_dev: *const u32,
    n_ctx: u32,
    n_pos: u32,
    head_dim: u32,
    group: u32,
    neox: u32,
    scale: f32,
    defer: u32,
) {
    // SAFETY: forwarded contract; head_dim is 32, 64 or 128 (launcher).
    unsafe {
        match head_dim {
            32 => decode_d::<C, 32>(
                q, k_new, v_new, k_cache, v_cache, cos_sin, part, out, n_kv, pos_dev, n_ctx, n_pos,
                group, neox, scale, defer,
            ),
            64 => decode_d::<C, 64>(
                q, k_new, v_new, k_cache, v_cache, cos_sin, part, out, n_kv, pos_dev, n_ctx, n_pos,
                group, neox, scale, defer,
            ),
            _ => decode_d::<C, 128>(
                q, k_new, v_new, k_cache, v_cache, cos_sin, part, out, n_kv, pos_dev, n_ctx, n_pos,
                group, neox, scale, defer,
            ),
        }
    }
}

/// The positions a decode query attends to: `n_kv` (the launch argument) or, when `pos_dev` is
/// non-null (a decode step replayed from a CUDA graph), `*pos_dev + 1`; clamped to the cache's
/// `n_ctx` either way. Every kernel that reads the attention's partials counts with this one
/// function. `*pos_dev` is written by the sampler before the step, so it may be read before
/// `gpu::pdl_wait`.
///
/// # Safety
/// `pos_dev` is null or one readable u32.
#[inline(always)]
pub(crate) unsafe fn decode_n_kv(n_kv: u32, pos_dev: *const u32, n_ctx: u32) -> u32 {
    if pos_dev.is_null() {
        core::cmp::min(n_kv, n_ctx)
    } else {
        // SAFETY: caller contract.
        core::cmp::min(unsafe { *pos_dev }, n_ctx - 1) + 1
    }
}

/// The decode body for head dimension `D` (see the module header).
///
/// # Safety
/// Shapes as in the module header, validated by the launcher; dynamic shared memory of
/// `4 · decode_smem_layout(group, D)[7]` bytes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn decode_d<C: Chunk4, const D: usize>(
    q: *const f32,
    k_new: *const f32,
    v_new: *const f32,
    k_cache: *mut C,
    v_cache: *mut C,
    cos_sin: *const f32,
    part: *mut f32,
    out: *mut f32,
    n_kv: u32,
    pos_dev: *const u32,
    n_ctx: u32,
    n_pos: u32,
    group: u32,
    neox: u32,
    scale: f32,
    defer: u32,
) {
    const G: usize = DECODE_MAX_GROUP;
    let half = D / 2;
    let grp = group as usize;
    let neox = neox != 0;
    let kvh = gpu::block_x() as usize;
    // SAFETY: reading special registers has no side effects.
    let (split, n_split) = unsafe {
        (
            core::arch::nvptx::_block_idx_y(),
            core::arch::nvptx::_grid_dim_y(),
        )
    };
    // Positions are u32 (n_ctx ≤ DECODE_CHUNK · decode_max_splits(D)), offsets usize.
    // SAFETY: pos_dev is null or one readable u32 (launcher contract).
    let n_kv = unsafe { decode_n_kv(n_kv, pos_dev, n_ctx) };
    let pos = n_kv - 1;
    // Splits of at least DECODE_MIN_CHUNK positions (at most DECODE_CHUNK: n_split ≥
    // n_ctx / DECODE_CHUNK); the splits past the last used one have nothing to do.
    let (chunk, n_used) = decode_plan(n_kv, n_split);
    // The output projection combines the partials itself (the launch's `defer`).
    let deferred = n_used <= defer;
    let start = split * chunk;
    if start >= n_kv {
        return; // block-uniform, before any barrier
    }
    let end = core::cmp::min(start + chunk, n_kv);
    let n_here = end - start;
    // One split holds every position: the block writes `out` itself.
    let single = chunk >= n_kv;
    let t = gpu::thread_x() as usize;
    let (lane, warp) = (gpu::lane() as usize, gpu::warp() as usize);
    let [o_q, o_kn, o_vn, o_sc, o_red, o_tot, o_acc, _] = decode_smem_layout(grp, D);
    let smem = gpu::dyn_smem::<f32>();
    // SAFETY (every shared-memory access below): offsets inside the regions of
    // `decode_smem_layout(group, D)`, which the launcher sized the dynamic shared memory for.
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
    let cache_base = kvh * n_ctx as usize * D;

    // 1. Every global load the split needs first, so that they are all in flight together (one
    //    memory latency, not one per phase): the new token's query pairs, key pair, value and
    //    RoPE table entry; the key rows of the first 4 score passes and the value rows of the
    //    first 8 positions of this warp (cache positions other than `pos`, which comes from
    //    kn_s / vn_s).
    //    RoPE: thread t turns the query pairs t, t + THREADS, … of the group (pair jj = t % (D/2)
    //    of head (t + THREADS m) / (D/2): D/2 divides THREADS, so every pair of the thread uses
    //    table entry jj), threads t < D/2 the new key's pair t, threads t < D the new value's t.
    let jj = t % half;
    let (ia, ib) = rope_idx(jj, D, neox);
    let n_qi = (G * half).div_ceil(THREADS);
    let cs = if pos < n_pos {
        let e = 2 * (pos as usize * half + jj);
        // SAFETY: pos < n_pos and jj < D/2: inside the table.
        Some(unsafe { (*cos_sin.add(e), *cos_sin.add(e + 1)) })
    } else {
        None // a device position past the table: left unrotated
    };

    //    Scores: `tpp = D / 8` adjacent threads share a position, thread `sub` owning dims
    //    8 sub .. 8 sub + 8 of every query of the group, the key read as two 4-element vectors.
    //    Every thread runs the same number of passes (n_here / per_pass rounded up), so all
    //    lanes take part in every shuffle (positions past `end` contribute zeros).
    let tpp = D / 8;
    let (sub, row) = (t % tpp, t / tpp);
    let per_pass = THREADS / tpp;
    // At most DECODE_CHUNK / per_pass (chunk ≤ DECODE_CHUNK; lets the compiler drop the pass
    // loop when one group covers a split).
    let n_pass = core::cmp::min(
        (n_here as usize).div_ceil(per_pass),
        DECODE_CHUNK / per_pass,
    );
    //    A slot outside the split (or at `pos`, which comes from kn_s / vn_s) loads from the
    //    start of the RoPE table instead of a cache row (at least D floats, 16-byte aligned,
    //    never written here) and its value is never used: unconditional loads, so that the
    //    compiler has no zero to merge a loaded register into (such a copy makes the warp wait
    //    for that load before it issues the ones after it).
    let dummy = cos_sin as *const C;
    let kld = |pass: usize| {
        let p = start + (row + pass * per_pass) as u32;
        let at = if p < end && p != pos {
            // SAFETY: p < n_kv ≤ n_ctx: inside this head's cache.
            unsafe { k_cache.add(cache_base + p as usize * D) as *const C }
        } else {
            dummy
        };
        // SAFETY: 8 sub + 8 ≤ D elements of a cache row or of the table (D floats); aligned to
        // 4 elements.
        unsafe { (C::load4(at.add(8 * sub)), C::load4(at.add(8 * sub + 4))) }
    };
    //    Values: warp w takes positions start + w, + DECODE_WARPS, …; lane owns dims
    //    dl lane .. dl lane + dl, dl = D / 32 (a row is one coalesced access of the warp). Kept
    //    raw until used (a conversion here would make the warp wait for the load before it
    //    issues the loads after it).
    let dl = D / 32;
    const W: u32 = DECODE_WARPS as u32;
    let vld = |p: u32| {
        let at = if p < end && p != pos {
            // SAFETY: p < n_kv ≤ n_ctx: inside this head's cache.
            unsafe { v_cache.add(cache_base + p as usize * D) as *const C }
        } else {
            dummy
        };
        // SAFETY: dl lane + dl ≤ D elements of a cache row or of the table; aligned to dl.
        unsafe { C::load_n(at.add(dl * lane), dl) }
    };
    let mut kraw = [kld(0), kld(1), kld(2), kld(3)];
    let p0 = start + warp as u32;
    // The warp's first 8 positions: a whole DECODE_MIN_CHUNK split's value rows.
    let vs: [C::Wide; 8] = core::array::from_fn(|u| vld(p0 + u as u32 * W));

    // Everything above reads memory no kernel of this step writes: the position (written by the
    // sampler before the step), the RoPE table and the cache rows of earlier positions (the row
    // at `pos` is never loaded: it comes from kn_s / vn_s). The token's projections below are the
    // previous kernel's output: wait for it (`gpu::pdl_wait`, which also keeps the loads above
    // before the arithmetic below in the instruction stream — the compiler would otherwise move
    // the cache loads down to the RoPE stores, a second memory latency).
    gpu::pdl_wait();
    let mut qa = [0.0f32; MAX_QI];
    let mut qb = [0.0f32; MAX_QI];
    for m in 0..MAX_QI {
        let pi = t + THREADS * m;
        if m < n_qi && pi < grp * half {
            let hq = kvh * grp + pi / half;
            // SAFETY: query head hq < n_head; ia, ib < D.
            unsafe {
                qa[m] = *q.add(hq * D + ia);
                qb[m] = *q.add(hq * D + ib);
            }
        }
    }
    let (mut ka, mut kb, mut vn) = (0.0f32, 0.0f32, 0.0f32);
    if t < half {
        // SAFETY: k_new holds n_head_kv * D floats; ia, ib < D (jj = t).
        unsafe {
            ka = *k_new.add(kvh * D + ia);
            kb = *k_new.add(kvh * D + ib);
        }
    }
    if t < D {
        // SAFETY: v_new holds n_head_kv * D floats.
        vn = unsafe { *v_new.add(kvh * D + t) };
    }

    //    The group's queries and the new key after RoPE; the new key and value rounded as the
    //    cache stores them (every split then sees what a later step reads back). The split
    //    holding `pos` writes the new row (one block per KV head; no block reads the cache at
    //    `pos`).
    for m in 0..MAX_QI {
        let pi = t + THREADS * m;
        if m < n_qi && pi < grp * half {
            let (a, b) = rotate(qa[m], qb[m], cs);
            let base = (pi / half) * D;
            // SAFETY: base + D ≤ grp * D: inside q_s.
            unsafe {
                *q_s.add(base + ia) = a;
                *q_s.add(base + ib) = b;
            }
        }
    }
    let holder = start <= pos && pos < end;
    if t < half {
        let (a, b) = rotate(ka, kb, cs);
        let (a, b) = (C::store(a), C::store(b));
        // SAFETY: ia, ib < D; pos < n_ctx: inside this head's cache.
        unsafe {
            *kn_s.add(ia) = a.load();
            *kn_s.add(ib) = b.load();
            if holder {
                *k_cache.add(cache_base + pos as usize * D + ia) = a;
                *k_cache.add(cache_base + pos as usize * D + ib) = b;
            }
        }
    }
    if t < D {
        let v = C::store(vn);
        // SAFETY: t < D; pos < n_ctx.
        unsafe {
            *vn_s.add(t) = v.load();
            if holder {
                *v_cache.add(cache_base + pos as usize * D + t) = v;
            }
        }
    }
    gpu::sync_threads();

    // 2. Scores, passes in groups of 4 whose key loads are issued before any arithmetic (the
    //    first group's in step 1).
    let step = |pass: usize, raw: (C::Raw, C::Raw)| {
        let p = start + (row + pass * per_pass) as u32;
        let mut kv = [0.0f32; 8];
        if p < end && p == pos {
            for (i, v) in kv.iter_mut().enumerate() {
                // SAFETY: 8 sub + i < D.
                *v = unsafe { *kn_s.add(8 * sub + i) };
            }
        } else {
            // Past `end` (anything: those dots are not stored).
            let (a, b) = (C::widen(raw.0), C::widen(raw.1));
            kv = [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]];
        }
        // The queries are read from shared memory at each pass (two 16-byte loads per head),
        // not held in registers (register pressure). Branch-free over 1, 2, 4 or 8 heads (the
        // group rounded up to a power of two; one uniform branch), so that the heads' loads
        // and FMA chains interleave.
        // SAFETY: q_s holds grp ≥ 1 heads of D floats, 16-byte aligned (below).
        let mut dots = unsafe {
            if grp > 4 {
                group_dots::<D, 8>(q_s, grp, sub, &kv)
            } else if grp > 2 {
                group_dots::<D, 4>(q_s, grp, sub, &kv)
            } else if grp > 1 {
                group_dots::<D, 2>(q_s, grp, sub, &kv)
            } else {
                group_dots::<D, 1>(q_s, grp, sub, &kv)
            }
        };
        let (n, base, owner) = reduce_scatter(&mut dots, sub, tpp);
        if owner && p < end {
            for (i, &dt) in dots.iter().enumerate() {
                if i < n && base + i < grp {
                    // SAFETY: base + i < grp; p − start < chunk ≤ DECODE_CHUNK.
                    let at = (base + i) * DECODE_CHUNK + (p - start) as usize;
                    unsafe { *sc.add(at) = dt * scale };
                }
            }
        }
    };
    let mut pass0 = 0;
    loop {
        // Passes past n_pass are skipped (the condition is the same for every thread, so every
        // lane still takes part in each shuffle). A rolled loop, its pass's rows picked from
        // `kraw` by selects (no run-time indexing into local memory): at short contexts this
        // code runs once per block on an SM whose instruction cache does not hold it, and its
        // time went mostly to instruction fetch when the 4 passes were written out (PERF.md
        // change 32).
        let mut i = 0;
        while i < rolled(4) && pass0 + i < n_pass {
            step(pass0 + i, pick(&kraw, i));
            i += 1;
        }
        pass0 += 4;
        if pass0 >= n_pass {
            break;
        }
        kraw = [kld(pass0), kld(pass0 + 1), kld(pass0 + 2), kld(pass0 + 3)];
    }
    gpu::sync_threads();

    // 3. Softmax of each head over the split within half a warp (lanes 0–15 of warp w: head w,
    //    lanes 16–31: head w + DECODE_WARPS; no barrier between the steps, both heads reduced by
    //    the same 4 shuffles): the max, the weights e^(s − max) in place of the scores, their
    //    sum (each lane folds slots l, l + 16, … in order, then one half-warp reduction).
    let n_here = n_here as usize;
    let hh = warp + DECODE_WARPS * (lane / SOFTMAX_LANES);
    let l = lane % SOFTMAX_LANES;
    let mut s = [f32::NEG_INFINITY; SLOTS];
    for (k, x) in s.iter_mut().enumerate() {
        let kk = l + SOFTMAX_LANES * k;
        if hh < grp && kk < n_here {
            // SAFETY: hh < grp, kk < n_here ≤ DECODE_CHUNK.
            *x = unsafe { *sc.add(hh * DECODE_CHUNK + kk) };
        }
    }
    let mut mx = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut m = SOFTMAX_LANES as u32 / 2;
    while m > 0 {
        mx = mx.max(gpu::shfl_xor(mx, m));
        m >>= 1;
    }
    let mut sum = 0.0f32;
    for (k, &x) in s.iter().enumerate() {
        let kk = l + SOFTMAX_LANES * k;
        if hh < grp && kk < n_here {
            let e = gpu::exp(x - mx);
            // SAFETY: as above.
            unsafe { *sc.add(hh * DECODE_CHUNK + kk) = e };
            sum += e;
        }
    }
    let mut m = SOFTMAX_LANES as u32 / 2;
    while m > 0 {
        sum += gpu::shfl_xor(sum, m);
        m >>= 1;
    }
    if l == 0 && hh < grp {
        // SAFETY: tot = [max × grp, sum × grp].
        unsafe {
            *tot.add(hh) = mx;
            *tot.add(grp + hh) = sum;
        }
    }
    gpu::sync_threads();

    // 4. Values, for every query head of the group: the rows of 4 positions of the warp loaded
    //    together (the first 8 in step 1), accumulated in position order.
    let mut acc = [[0.0f32; MAX_DL]; G];
    // Position p from its raw row (a macro: expanded for the first group and in the loop, call
    // sites the compiler would not all inline as a closure).
    macro_rules! value_step {
        ($p:expr, $raw:expr) => {{
            let p: u32 = $p;
            if p < end {
                let mut vv = C::widen_n($raw);
                if p == pos {
                    for (k, v) in vv.iter_mut().enumerate() {
                        if k < dl {
                            // SAFETY: dl lane + k < D.
                            *v = unsafe { *vn_s.add(dl * lane + k) };
                        }
                    }
                }
                for (hh, a) in acc.iter_mut().enumerate() {
                    if hh < grp {
                        // SAFETY: p − start < chunk ≤ DECODE_CHUNK.
                        let e = unsafe { *sc.add(hh * DECODE_CHUNK + (p - start) as usize) };
                        for (av, &v) in a.iter_mut().zip(&vv) {
                            *av = fma(e, v, *av);
                        }
                    }
                }
            }
        }};
    }
    // The first group, from the loads of step 1, in a rolled loop (as the score passes: the
    // code is fetched cold), each position's row picked from `vs` by selects.
    let mut u = 0;
    while u < rolled(8) && p0 + u as u32 * W < end {
        value_step!(p0 + u as u32 * W, pick(&vs, u));
        u += 1;
    }
    let mut p0 = p0 + 8 * W;
    while p0 < end {
        // The rows of 4 positions loaded together, accumulated in position order.
        let vs = [vld(p0), vld(p0 + W), vld(p0 + 2 * W), vld(p0 + 3 * W)];
        value_step!(p0, vs[0]);
        value_step!(p0 + W, vs[1]);
        value_step!(p0 + 2 * W, vs[2]);
        value_step!(p0 + 3 * W, vs[3]);
        p0 += 4 * W;
    }
    for (hh, a) in acc.iter().enumerate() {
        if hh < grp {
            for (k, &v) in a.iter().enumerate() {
                if k < dl {
                    // SAFETY: (warp * grp + hh) * D + dl lane + k < DECODE_WARPS * grp * D.
                    unsafe { *acc_s.add((warp * grp + hh) * D + dl * lane + k) = v };
                }
            }
        }
    }
    gpu::sync_threads(); // publishes acc_s and tot

    // 5. Sum the warps' pieces: the result (one split used) or this split's partial. Thread t
    //    takes elements i = t, t + THREADS, … of the group's grp × D outputs.
    let n_out = G * D / THREADS;
    if single && !deferred {
        // Every shared-memory read first (clamped to the last element: the reads of all the
        // thread's elements in flight together), then out = Σ acc · (1 / Σ e).
        let mut o = [0.0f32; G];
        let mut den = [1.0f32; G];
        for m in 0..G {
            if m < n_out {
                let i = core::cmp::min(t + THREADS * m, grp * D - 1);
                let (hh, j) = (i / D, i % D);
                for w in 0..DECODE_WARPS {
                    // SAFETY: as above.
                    o[m] += unsafe { *acc_s.add((w * grp + hh) * D + j) };
                }
                // SAFETY: tot = [max × grp, sum × grp].
                den[m] = unsafe { *tot.add(grp + hh) };
            }
        }
        // Keeps those reads here (the compiler would sink them into each store's branch).
        // SAFETY: an empty asm statement (a compiler barrier).
        unsafe { core::arch::asm!("", options(nostack, preserves_flags)) };
        for m in 0..G {
            let i = t + THREADS * m;
            if m < n_out && i < grp * D {
                // SAFETY: out holds n_head * D floats; query head kvh * grp + i / D.
                unsafe { *out.add(kvh * grp * D + i) = o[m] * gpu::rcp(den[m]) };
            }
        }
        return;
    }
    // The partial of query head h = kvh · grp + hh over split s: its grp × D sums at
    // `part[(h · n_split + s) · D ..]` (rows 16-byte aligned, read as vectors by the combine), its
    // max and sum at `part[n_head · n_split · D + (h · n_split + s) · 2 ..]`.
    let n_split = n_split as usize;
    let split = split as usize;
    let ms_base = gpu::grid_dim_x() as usize * grp * n_split * D;
    for m in 0..n_out {
        let i = t + THREADS * m;
        if i < grp * D {
            let (hh, j) = (i / D, i % D);
            let mut o = 0.0f32;
            for w in 0..DECODE_WARPS {
                // SAFETY: as above.
                o += unsafe { *acc_s.add((w * grp + hh) * D + j) };
            }
            let row = (kvh * grp + hh) * n_split + split;
            // SAFETY: part holds n_head * n_split * (D + 2) floats: row < n_head * n_split; tot
            // as above.
            unsafe {
                *part.add(row * D + j) = o;
                if j == 0 {
                    *part.add(ms_base + 2 * row) = *tot.add(hh);
                    *part.add(ms_base + 2 * row + 1) = *tot.add(grp + hh);
                }
            }
        }
    }
    // The output projection (`defer`) or `attention_combine` combines the partials.
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
    /// Up to 4 consecutive elements loaded in one access, in the low lanes (`load_n`).
    type Wide: Copy;
    /// `n` (1, 2 or 4) consecutive elements in one access (the other lanes zero).
    ///
    /// # Safety
    /// `p` points to `n` readable elements, aligned to `n` elements.
    unsafe fn load_n(p: *const Self, n: usize) -> Self::Wide;
    fn widen_n(w: Self::Wide) -> [f32; 4];
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
    type Wide = u64;
    #[inline(always)]
    unsafe fn load_n(p: *const u16, n: usize) -> u64 {
        // SAFETY: caller contract (aligned to n elements).
        unsafe {
            match n {
                4 => *(p as *const u64),
                2 => *(p as *const u32) as u64,
                _ => *p as u64,
            }
        }
    }
    #[inline(always)]
    fn widen_n(w: u64) -> [f32; 4] {
        core::array::from_fn(|i| gpu::f16_to_f32((w >> (16 * i)) as u16))
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
    type Wide = u128;
    #[inline(always)]
    unsafe fn load_n(p: *const f32, n: usize) -> u128 {
        // SAFETY: caller contract (aligned to n elements).
        unsafe {
            match n {
                4 => *(p as *const u128),
                2 => *(p as *const u64) as u128,
                _ => (*p).to_bits() as u128,
            }
        }
    }
    #[inline(always)]
    fn widen_n(w: u128) -> [f32; 4] {
        Self::widen(w)
    }
}

/// Most staged 4-element chunks per thread per tile (`BN · d / 4 / THREADS`, 6 at d = 96).
const MAX_CHUNKS: usize = 6;

/// What a prefill block works on: query rows `q0 .. q0 + n_q` (`n_q` ≤ the tile's rows) of query
/// head `h`, whose keys and values are KV head `kvh`.
pub(crate) struct PrefillTile {
    pub q0: usize,
    pub h: usize,
    pub kvh: usize,
    pub n_q: usize,
}

/// The tile of a prefill attention block (both prefill kernels): grid x counts the query tiles of
/// `bm` rows, the longest (most keys) first, grid y the query heads; `group` query heads share a
/// KV head.
#[inline(always)]
pub(crate) fn prefill_tile(bm: usize, n_tok: u32, group: u32) -> PrefillTile {
    let q0 = (gpu::grid_dim_x() - 1 - gpu::block_x()) as usize * bm;
    // SAFETY: reading a special register.
    let h = unsafe { core::arch::nvptx::_block_idx_y() } as usize;
    PrefillTile {
        q0,
        h,
        kvh: h / group as usize,
        n_q: core::cmp::min(bm, n_tok as usize - q0),
    }
}

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
    let PrefillTile { q0, h, kvh, n_q } = prefill_tile(BM, n_tok, group);
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
            out: *mut f32,
            n_kv: u32,
            pos_dev: *const u32,
            n_ctx: u32,
            n_pos: u32,
            head_dim: u32,
            group: u32,
            neox: u32,
            scale: f32,
            defer: u32,
        ) {
            gpu::pdl_trigger(); // and `decode_d` waits once its cache loads are out
            // SAFETY: forwarded contract.
            unsafe {
                attention_decode(
                    q, k_new, v_new, k_cache, v_cache, cos_sin, part, out, n_kv, pos_dev,
                    n_ctx, n_pos, head_dim, group, neox, scale, defer,
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
