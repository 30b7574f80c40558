//! Attention over the f16 KV cache (reference: `cpu::attention`, causal GQA, scale 1/sqrt(d)).
//!
//! Cache layout per layer: `[n_head_kv][n_ctx][head_dim]`, f16 or f32 (see `kv_cache.rs`); every
//! kernel comes in an `_f16` and an `_f32` variant for the two cache types. Query head `h`
//! reads KV head `h / group`, `group = n_head / n_head_kv`. Scores, softmax and the weighted sum
//! run in f32; `e^x` is `ex2.approx` (relative error ≈ 2^-21).
//!
//! Decode (one query per head, any context length), two launches:
//! - `attention_decode_f16`: grid = (n_head, n_split), block = 128 threads, dynamic shared memory
//!   = `4 * (head_dim + chunk + 128)` bytes. Split `s` covers positions
//!   `s * chunk .. min((s + 1) * chunk, n_kv)` (every split non-empty: `n_split = ceil(n_kv /
//!   chunk)`), and writes its partial result `[acc(head_dim), max, sum]` to
//!   `part[(h * n_split + s) * (head_dim + 2) ..]`, where `acc = Σ e^(s_p − max) v_p`.
//! - `attention_decode_combine`: grid = (n_head), block = 128; rescales the partials to the global
//!   max and writes `out[h * head_dim + j] = Σ acc / Σ sum`.
//!
//! Limits: `head_dim` a multiple of 32 and ≤ 128; `1 ≤ chunk ≤ 1024`; `n_kv ≤ n_ctx`.
//!
//! Prefill (`attention_prefill_f16`, causal, flash-attention style: key tiles streamed through
//! shared memory with an online softmax, no `n × n` matrix anywhere):
//! grid = (ceil(n_tok / 16), n_head), block = 128 threads (4 warps × 4 queries each), dynamic
//! shared memory = `4 * (16 * head_dim + 32 * (head_dim + 1) + 32 * head_dim)` bytes. Query `i`
//! (of `n_tok`) sits at position `pos0 + i` and attends to cache positions `0 ..= pos0 + i`. Key
//! tiles of 32 (one key per lane for the scores; each lane owns `head_dim / 32` output dims).
//! Limits: `head_dim` a multiple of 32 and ≤ 128; `pos0 + n_tok ≤ n_ctx`.

use crate::gpu;
use crate::kv_cache::CacheElem;

/// Threads per block of every attention kernel.
pub const THREADS: usize = 128;
/// Queries per prefill block.
pub const PREFILL_BQ: usize = 16;
/// Keys per prefill tile.
pub const PREFILL_BK: usize = 32;
/// Most dims per lane (head_dim ≤ 128).
const MAX_DL: usize = 4;
/// Queries per warp in prefill.
const QPW: usize = PREFILL_BQ / (THREADS / 32);

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attention_decode<C: CacheElem>(
    q: *const f32,
    k_cache: *const C,
    v_cache: *const C,
    part: *mut f32,
    n_kv: u32,
    chunk: u32,
    n_ctx: u32,
    head_dim: u32,
    group: u32,
    scale: f32,
) {
    let d = head_dim as usize;
    let h = gpu::block_x() as usize;
    let split = unsafe { core::arch::nvptx::_block_idx_y() } as usize;
    let n_split = unsafe { core::arch::nvptx::_grid_dim_y() } as usize;
    let kvh = h / group as usize;
    let t = gpu::thread_x() as usize;
    let start = split * chunk as usize;
    let end = core::cmp::min(start + chunk as usize, n_kv as usize);
    let smem = gpu::dyn_smem::<f32>();
    let q_s = smem;
    // SAFETY (all shared-memory offsets below): the launcher sized the dynamic shared memory as
    // 4 * (d + chunk + THREADS) bytes: q_s = [0, d), scores = [d, d + chunk), red = [.., + THREADS).
    let scores = unsafe { smem.add(d) };
    let red = unsafe { smem.add(d + chunk as usize) };
    let kbase = (kvh * n_ctx as usize) * d;

    let mut i = t;
    while i < d {
        // SAFETY: i < d; q holds n_head * d floats.
        unsafe { *q_s.add(i) = *q.add(h * d + i) };
        i += THREADS;
    }
    gpu::sync_threads();

    // Scores: one position per thread at a time.
    let mut local_max = f32::NEG_INFINITY;
    let mut p = start + t;
    while p < end {
        let krow = kbase + p * d;
        let mut dot = 0.0f32;
        for j in 0..d {
            // SAFETY: p < n_kv ≤ n_ctx, j < d: inside this head's cache and q_s.
            unsafe { dot += *q_s.add(j) * (*k_cache.add(krow + j)).load() };
        }
        let s = dot * scale;
        // SAFETY: p - start < chunk.
        unsafe { *scores.add(p - start) = s };
        local_max = local_max.max(s);
        p += THREADS;
    }
    let m = gpu::block_max(local_max);
    let mut local_sum = 0.0f32;
    let mut p = start + t;
    while p < end {
        // SAFETY: p - start < chunk; each thread rewrites only its own scores.
        unsafe {
            let e = gpu::exp(*scores.add(p - start) - m);
            *scores.add(p - start) = e;
            local_sum += e;
        }
        p += THREADS;
    }
    let l = gpu::block_sum(local_sum); // its barriers also publish the scores

    // Weighted sum of values: thread (g, j) sums positions start + g, start + g + G, ...
    let groups = THREADS / d;
    let (g, j) = (t / d, t % d);
    let mut acc = 0.0f32;
    if g < groups {
        let mut p = start + g;
        while p < end {
            // SAFETY: p < n_kv, j < d; scores index < chunk.
            unsafe { acc += *scores.add(p - start) * (*v_cache.add(kbase + p * d + j)).load() };
            p += groups;
        }
        // SAFETY: g * d + j < THREADS.
        unsafe { *red.add(g * d + j) = acc };
    }
    gpu::sync_threads();
    if t < d {
        let mut sum = 0.0f32;
        for gg in 0..groups {
            // SAFETY: gg * d + t < THREADS.
            sum += unsafe { *red.add(gg * d + t) };
        }
        let out = (h * n_split + split) * (d + 2);
        // SAFETY: part holds n_head * n_split * (d + 2) floats.
        unsafe {
            *part.add(out + t) = sum;
            if t == 0 {
                *part.add(out + d) = m;
                *part.add(out + d + 1) = l;
            }
        }
    }
}

/// # Safety
/// Shapes as in the module header, validated by the launcher.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn attention_decode_combine(
    part: *const f32,
    out: *mut f32,
    n_split: u32,
    head_dim: u32,
) {
    let d = head_dim as usize;
    let h = gpu::block_x() as usize;
    let t = gpu::thread_x() as usize;
    let ns = n_split as usize;
    let base = h * ns * (d + 2);
    let mut m = f32::NEG_INFINITY;
    for s in 0..ns {
        // SAFETY: s < n_split; part holds n_head * n_split * (d + 2).
        m = m.max(unsafe { *part.add(base + s * (d + 2) + d) });
    }
    let mut j = t;
    while j < d {
        let (mut num, mut den) = (0.0f32, 0.0f32);
        for s in 0..ns {
            let ps = base + s * (d + 2);
            // SAFETY: as above.
            unsafe {
                let w = gpu::exp(*part.add(ps + d) - m);
                num += w * *part.add(ps + j);
                den += w * *part.add(ps + d + 1);
            }
        }
        // SAFETY: out holds n_head * d floats.
        unsafe { *out.add(h * d + j) = num / den };
        j += THREADS;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attention_prefill<C: CacheElem>(
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
    let d = head_dim as usize;
    let dl = d / 32; // dims per lane
    let nh = n_head as usize;
    let q0 = gpu::block_x() as usize * PREFILL_BQ;
    let h = unsafe { core::arch::nvptx::_block_idx_y() } as usize;
    let kvh = h / group as usize;
    let t = gpu::thread_x() as usize;
    let (lane, warp) = (gpu::lane() as usize, gpu::warp() as usize);
    let n_q = core::cmp::min(PREFILL_BQ, n_tok as usize - q0);
    let kstride = d + 1; // padded K rows: lanes reading k_s[lane][j] hit distinct banks
    let smem = gpu::dyn_smem::<f32>();
    // Layout (the launcher's size): q_s [BQ][d], k_s [BK][d + 1], v_s [BK][d].
    let q_s = smem;
    // SAFETY: offsets inside the launch's dynamic shared memory (see the module header).
    let k_s = unsafe { smem.add(PREFILL_BQ * d) };
    let v_s = unsafe { smem.add(PREFILL_BQ * d + PREFILL_BK * kstride) };
    let kbase = kvh * n_ctx as usize * d;

    let mut i = t;
    while i < PREFILL_BQ * d {
        let (r, c) = (i / d, i % d);
        let v = if r < n_q {
            // SAFETY: q0 + r < n_tok; q holds n_tok * n_head * d floats.
            unsafe { *q.add(((q0 + r) * nh + h) * d + c) }
        } else {
            0.0
        };
        // SAFETY: i < BQ * d.
        unsafe { *q_s.add(i) = v };
        i += THREADS;
    }

    // Online-softmax state of this warp's QPW queries, as separate values (not an array indexed
    // in a loop) so they stay in registers.
    let mut st = [QState::new(), QState::new(), QState::new(), QState::new()];
    const _: () = assert!(QPW == 4);
    let ctx = Tile {
        q_s,
        k_s,
        v_s,
        d,
        dl,
        kstride,
        lane,
        scale,
    };
    // Keys this block needs: positions 0 ..= pos0 + q0 + n_q - 1.
    let n_keys = pos0 as usize + q0 + n_q;
    let mut kt = 0;
    while kt < n_keys {
        gpu::sync_threads(); // the previous tile is consumed (and, first time, q_s is written)
        let mut i = t;
        while i < PREFILL_BK * d {
            let (r, c) = (i / d, i % d);
            let (kv, vv) = if kt + r < n_keys {
                let src = kbase + (kt + r) * d + c;
                // SAFETY: kt + r < n_keys ≤ n_ctx, c < d.
                unsafe { ((*k_cache.add(src)).load(), (*v_cache.add(src)).load()) }
            } else {
                (0.0, 0.0)
            };
            // SAFETY: r < BK, c < d: inside k_s and v_s.
            unsafe {
                *k_s.add(r * kstride + c) = kv;
                *v_s.add(r * d + c) = vv;
            }
            i += THREADS;
        }
        gpu::sync_threads();

        let [s0, s1, s2, s3] = &mut st;
        let qp0 = pos0 as usize + q0 + warp * QPW;
        let r0 = warp * QPW;
        if r0 < n_q {
            ctx.step(r0, qp0, kt, s0);
        }
        if r0 + 1 < n_q {
            ctx.step(r0 + 1, qp0 + 1, kt, s1);
        }
        if r0 + 2 < n_q {
            ctx.step(r0 + 2, qp0 + 2, kt, s2);
        }
        if r0 + 3 < n_q {
            ctx.step(r0 + 3, qp0 + 3, kt, s3);
        }
        kt += PREFILL_BK;
    }

    for (qi, s) in st.iter().enumerate() {
        let r = warp * QPW + qi;
        if r >= n_q {
            continue;
        }
        let inv = 1.0 / s.l;
        for (c, a) in s.acc.iter().enumerate() {
            if c < dl {
                // SAFETY: q0 + r < n_tok, c * 32 + lane < d.
                unsafe { *out.add(((q0 + r) * nh + h) * d + c * 32 + lane) = a * inv };
            }
        }
    }
}

/// Online-softmax state of one query: running max, running sum, this lane's output dims.
#[derive(Clone, Copy)]
struct QState {
    m: f32,
    l: f32,
    acc: [f32; MAX_DL],
}

impl QState {
    #[inline(always)]
    fn new() -> Self {
        QState {
            m: f32::NEG_INFINITY,
            l: 0.0,
            acc: [0.0; MAX_DL],
        }
    }
}

/// What one warp needs to fold a key tile into a query's state.
struct Tile {
    q_s: *mut f32,
    k_s: *mut f32,
    v_s: *mut f32,
    d: usize,
    dl: usize,
    kstride: usize,
    lane: usize,
    scale: f32,
}

impl Tile {
    /// Folds the key tile starting at position `kt` into query row `r` (position `qp`).
    /// Warp-uniform: every lane of the warp calls it with the same arguments.
    #[inline(always)]
    fn step(&self, r: usize, qp: usize, kt: usize, s: &mut QState) {
        if kt > qp {
            return; // the whole tile is in this query's future
        }
        let (d, lane) = (self.d, self.lane);
        let kp = kt + lane;
        let score = if kp <= qp {
            let mut dot = 0.0f32;
            for c in 0..d {
                // SAFETY: r < BQ, lane < BK, c < d: inside q_s and k_s.
                unsafe { dot += *self.q_s.add(r * d + c) * *self.k_s.add(lane * self.kstride + c) };
            }
            dot * self.scale
        } else {
            f32::NEG_INFINITY
        };
        // kp = kt ≤ qp for lane 0, so the tile max is finite.
        let m_new = s.m.max(gpu::warp_max(score));
        let alpha = gpu::exp(s.m - m_new);
        let p = gpu::exp(score - m_new);
        s.l = s.l * alpha + gpu::warp_sum(p);
        for c in 0..MAX_DL {
            s.acc[c] *= alpha;
            if c < self.dl {
                let mut sum = 0.0f32;
                for j in 0..PREFILL_BK {
                    let pj = gpu::shfl_idx(p, j as u32);
                    // SAFETY: j < BK, c * 32 + lane < d: inside v_s.
                    sum += pj * unsafe { *self.v_s.add(j * d + c * 32 + lane) };
                }
                s.acc[c] += sum;
            }
        }
        s.m = m_new;
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
            k_cache: *const $t,
            v_cache: *const $t,
            part: *mut f32,
            n_kv: u32,
            chunk: u32,
            n_ctx: u32,
            head_dim: u32,
            group: u32,
            scale: f32,
        ) {
            // SAFETY: forwarded contract.
            unsafe {
                attention_decode(q, k_cache, v_cache, part, n_kv, chunk, n_ctx, head_dim, group, scale)
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
