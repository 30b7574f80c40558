//! Token choice on the device, so a decode step copies back one `u32`, not the logits
//! (reference: the host's greedy argmax and a plain sort-based top-k/top-p sampler in the tests).
//!
//! - `argmax_f32`: the index of the largest of `n` logits; ties go to the lower index; NaN is
//!   ignored (if every value is NaN the result is `u32::MAX`).
//! - `sample_topk_topp_f32`: keeps the `top_k` largest logits (ties at the cut to the lower
//!   indices, exactly, unless more than `CAND - top_k` logits tie at the cut, then some of them),
//!   weights them `e^((l_i − l_max) / T)` (`inv_temp = 1/T`), keeps the shortest prefix (by
//!   descending logit) whose weight reaches `top_p` of the total, and returns the index whose
//!   cumulative-weight interval contains `u ×` the prefix weight (`u` uniform in [0, 1), drawn by
//!   the host). The k-th largest value is found by a 4-pass radix select over the order-preserving
//!   u32 key of each float (NaN ranks below −inf); the candidates are bitonic-sorted in shared
//!   memory; the cumulative sum is a block scan.
//!
//! Both write the id to `out[0]` and, when `next` is non-null, feed it to the next decode step
//! (a step replayed from a CUDA graph, `next = [token, position]`): `next[0]` = the id (0 when it is
//! `u32::MAX`, "none": the next step then reads a valid row and the host, which reads `out`,
//! refuses the result) and `next[1] += 1`.
//!
//! Launch: `argmax_f32` grid = (G, 1, 1), block = (1024, 1, 1): each block reduces a grid-stride
//! share, and the last block to finish (counted in `done`, which it resets to 0) reduces the `G`
//! pairs in `part`; `sample_topk_topp_f32` grid = (1, 1, 1), block = (1024, 1, 1). No dynamic
//! shared memory (static shared arrays). Limits: `1 ≤ top_k ≤ 1024`, `top_k ≤ n`, `n < 2^32 − 1`.

use core::arch::asm;

use crate::gpu;

/// Candidate slots for the sort (a power of two ≥ 2 × the largest top_k).
pub const CAND: usize = 2048;
/// Largest top_k.
pub const MAX_TOP_K: usize = 1024;
const THREADS: usize = 1024;
/// Loads in flight per thread in `argmax_f32`.
const UNROLL: usize = 8;

core::arch::global_asm!(
    ".shared .align 16 .b8 SAMPLE_HIST[1024];", // 256 u32 radix histogram
    ".shared .align 16 .b8 SAMPLE_CAND[16384];", // CAND u64 (key << 32 | !index)
    ".shared .align 16 .b8 SAMPLE_CUM[4096];",  // MAX_TOP_K f32 weights, then their scan
    ".shared .align 16 .b8 SAMPLE_MISC[64];",   // counters and the selection state
    ".shared .align 16 .b8 ARGMAX_RED[256];",   // 32 (value, index) pairs
);

macro_rules! smem_ptr {
    ($name:literal, $ty:ty) => {{
        let p: u64;
        // SAFETY: `cvta.shared` only converts the address of a symbol declared above.
        unsafe {
            asm!(concat!("cvta.shared.u64 {p}, ", $name, ";"), p = out(reg64) p,
                 options(nomem, nostack, pure));
        }
        p as *mut $ty
    }};
}

/// (value, index) of the better of two candidates: larger value, then lower index; an index of
/// `u32::MAX` means "none".
#[inline(always)]
fn better(a: (f32, u32), b: (f32, u32)) -> (f32, u32) {
    if b.1 == u32::MAX {
        return a;
    }
    if a.1 == u32::MAX || b.0 > a.0 || (b.0 == a.0 && b.1 < a.1) {
        b
    } else {
        a
    }
}

/// The best `(value, index)` over the block (every thread passes its own; valid in thread 0).
#[inline(always)]
fn block_best(mut best: (f32, u32)) -> (f32, u32) {
    let mut m = 16;
    while m > 0 {
        let o = (gpu::shfl_xor(best.0, m), gpu::shfl_xor_u32(best.1, m));
        best = better(best, o);
        m >>= 1;
    }
    let red = smem_ptr!("ARGMAX_RED", u32);
    let (lane, warp) = (gpu::lane() as usize, gpu::warp() as usize);
    let n_warps = (gpu::block_dim_x() / 32) as usize;
    // SAFETY: ≤ 32 warps × 2 words fit the 256-byte array; barriers order writes and reads.
    unsafe {
        if lane == 0 {
            *red.add(2 * warp) = best.0.to_bits();
            *red.add(2 * warp + 1) = best.1;
        }
        gpu::sync_threads();
        let mut b = if lane < n_warps {
            (f32::from_bits(*red.add(2 * lane)), *red.add(2 * lane + 1))
        } else {
            (f32::NEG_INFINITY, u32::MAX)
        };
        let mut m = 16;
        while m > 0 {
            let o = (gpu::shfl_xor(b.0, m), gpu::shfl_xor_u32(b.1, m));
            b = better(b, o);
            m >>= 1;
        }
        gpu::sync_threads(); // red is reused by the caller's next reduction
        b
    }
}

/// Writes the chosen id: `out[0] = id`, and when `next` is non-null (the `[token, position]` of
/// the next decode step), `next[0] = id` (0 for "none", `u32::MAX`: never a row past the
/// embedding) and `next[1] += 1`.
///
/// # Safety
/// `out` is one writable u32; `next` null or two writable u32.
#[inline(always)]
unsafe fn emit(out: *mut u32, next: *mut u32, id: u32) {
    // SAFETY: caller contract.
    unsafe {
        *out = id;
        if !next.is_null() {
            *next = if id == u32::MAX { 0 } else { id };
            *next.add(1) += 1;
        }
    }
}

/// # Safety
/// `x` holds `n` floats, `part` 2 × gridDim.x u32, `done` one u32 that is 0 at launch (the last
/// block resets it), `out` one u32, `next` null or two u32; launched as in the module header.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn argmax_f32(
    x: *const f32,
    n: u32,
    part: *mut u32,
    done: *mut u32,
    out: *mut u32,
    next: *mut u32,
) {
    // In the decode graph the argmax follows the LM head: scheduled while it runs, it waits for
    // the logits before reading them.
    gpu::pdl_trigger();
    gpu::pdl_wait();
    let mut best = (f32::NEG_INFINITY, u32::MAX);
    let n = n as usize;
    let stride = gpu::stride_x();
    let mut i = gpu::global_x();
    // UNROLL independent loads in flight per thread (`better` is order-independent).
    while i + (UNROLL - 1) * stride < n {
        // SAFETY: i + k * stride < n for every k < UNROLL.
        let v: [f32; UNROLL] = core::array::from_fn(|k| unsafe { *x.add(i + k * stride) });
        for (k, &v) in v.iter().enumerate() {
            if !v.is_nan() {
                best = better(best, (v, (i + k * stride) as u32));
            }
        }
        i += UNROLL * stride;
    }
    while i < n {
        // SAFETY: i < n.
        let v = unsafe { *x.add(i) };
        if !v.is_nan() {
            best = better(best, (v, i as u32));
        }
        i += stride;
    }
    let b = block_best(best);
    let t = gpu::thread_x() as usize;
    let blk = gpu::block_x() as usize;
    let n_blocks = gpu::grid_dim_x() as usize;
    if n_blocks == 1 {
        if t == 0 {
            // SAFETY: caller contract.
            unsafe { emit(out, next, b.1) };
        }
        return;
    }
    let flag = smem_ptr!("ARGMAX_RED", u32);
    if t == 0 {
        // SAFETY: part holds 2 × gridDim.x u32; done one u32 (caller contract).
        unsafe {
            *part.add(2 * blk) = b.0.to_bits();
            *part.add(2 * blk + 1) = b.1;
            gpu::fence_gpu();
            let prev = gpu::atomic_add_u32(done, 1);
            *flag = (prev as usize == n_blocks - 1) as u32;
        }
    }
    gpu::sync_threads();
    // SAFETY: written by thread 0 before the barrier.
    if unsafe { *flag } == 0 {
        return;
    }
    gpu::sync_threads(); // everyone has read the flag before block_best reuses the array
    gpu::fence_gpu();
    let mut best = (f32::NEG_INFINITY, u32::MAX);
    let mut k = t;
    while k < n_blocks {
        // SAFETY: k < gridDim.x; the other blocks fenced their pairs before counting.
        let o = unsafe {
            (
                f32::from_bits(gpu::load_volatile(part.add(2 * k))),
                gpu::load_volatile(part.add(2 * k + 1)),
            )
        };
        best = better(best, o);
        k += THREADS;
    }
    let b = block_best(best);
    if t == 0 {
        // SAFETY: caller contract; every block has counted itself, none touches done again.
        unsafe {
            emit(out, next, b.1);
            *done = 0;
        }
    }
}

/// Order key of a logit for selection: larger logit → larger key, NaN lowest.
#[inline(always)]
fn key(v: f32) -> u32 {
    if v.is_nan() { 0 } else { gpu::f32_order_key(v) }
}

/// # Safety
/// `x` holds `n` floats, `out` one u32, `next` null or two u32; `1 ≤ top_k ≤ min(n, 1024)`;
/// launched as in the module header.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sample_topk_topp_f32(
    x: *const f32,
    n: u32,
    top_k: u32,
    top_p: f32,
    inv_temp: f32,
    u: f32,
    out: *mut u32,
    next: *mut u32,
) {
    let t = gpu::thread_x() as usize;
    let n = n as usize;
    let hist = smem_ptr!("SAMPLE_HIST", u32);
    let cand = smem_ptr!("SAMPLE_CAND", u64);
    let cum = smem_ptr!("SAMPLE_CUM", f32);
    let misc = smem_ptr!("SAMPLE_MISC", u32);
    // misc[0] = prefix, misc[1] = remaining rank, misc[2] = candidate count, misc[3] = result
    // index, misc[4] = kept prefix length.

    // 1. Radix select: the key of the top_k-th largest logit.
    if t == 0 {
        // SAFETY: misc has 16 words.
        unsafe {
            *misc = 0;
            *misc.add(1) = top_k;
            *misc.add(2) = 0;
        }
    }
    let mut mask = 0u32;
    let mut shift = 24i32;
    while shift >= 0 {
        if t < 256 {
            // SAFETY: t < 256 = histogram length.
            unsafe { *hist.add(t) = 0 };
        }
        gpu::sync_threads();
        // SAFETY: misc[0] was written before the barrier above.
        let prefix = unsafe { *misc };
        let mut i = t;
        while i < n {
            // SAFETY: i < n.
            let k = key(unsafe { *x.add(i) });
            if k & mask == prefix {
                // SAFETY: the bin index is < 256.
                gpu::atomic_add_u32(unsafe { hist.add(((k >> shift) & 255) as usize) }, 1);
            }
            i += THREADS;
        }
        gpu::sync_threads();
        if t == 0 {
            // SAFETY: single thread; histogram complete after the barrier.
            unsafe {
                let mut rank = *misc.add(1);
                let mut b = 255usize;
                loop {
                    let c = *hist.add(b);
                    if c >= rank || b == 0 {
                        break;
                    }
                    rank -= c;
                    b -= 1;
                }
                *misc = prefix | ((b as u32) << shift);
                *misc.add(1) = rank;
            }
        }
        mask |= 255 << shift;
        shift -= 8;
        gpu::sync_threads();
    }
    // SAFETY: written by thread 0 before the last barrier.
    let thr = unsafe { *misc };

    // 2. Candidates: every logit with key ≥ thr (ties at the cut beyond the slots are dropped).
    let mut i = t;
    while i < CAND {
        // SAFETY: i < CAND.
        unsafe { *cand.add(i) = 0 }; // the smallest u64: padding sorts last
        i += THREADS;
    }
    gpu::sync_threads();
    let mut i = t;
    while i < n {
        // SAFETY: i < n.
        let k = key(unsafe { *x.add(i) });
        if k >= thr {
            let slot = gpu::atomic_add_u32(misc.wrapping_add(2), 1) as usize;
            if slot < CAND {
                // SAFETY: slot < CAND.
                unsafe { *cand.add(slot) = ((k as u64) << 32) | (!(i as u32)) as u64 };
            }
        }
        i += THREADS;
    }
    gpu::sync_threads();

    // 3. Bitonic sort, descending by (key, !index) = by logit desc, then index asc.
    let mut size = 2;
    while size <= CAND {
        let mut stride = size / 2;
        while stride > 0 {
            let mut c = t;
            while c < CAND / 2 {
                let lo = 2 * stride * (c / stride) + c % stride;
                let hi = lo + stride;
                let desc = (lo & size) == 0;
                // SAFETY: lo < hi < CAND; each comparator pair is owned by one thread per step.
                unsafe {
                    let (a, b) = (*cand.add(lo), *cand.add(hi));
                    if (a < b) == desc {
                        *cand.add(lo) = b;
                        *cand.add(hi) = a;
                    }
                }
                c += THREADS;
            }
            gpu::sync_threads();
            stride /= 2;
        }
        size *= 2;
    }

    // 4. Weights of the top_k, inclusive scan, top-p cut, draw.
    let k = top_k as usize;
    // SAFETY: cand[0] is the largest candidate (there is at least one: top_k ≥ 1 ≤ n).
    let lmax = gpu::f32_from_order_key((unsafe { *cand } >> 32) as u32);
    let w = if t < k {
        // SAFETY: t < k ≤ 1024 ≤ CAND.
        let l = gpu::f32_from_order_key((unsafe { *cand.add(t) } >> 32) as u32);
        gpu::exp((l - lmax) * inv_temp)
    } else {
        0.0
    };
    // SAFETY: t < 1024 = cum length.
    unsafe { *cum.add(t) = w };
    gpu::sync_threads();
    let mut off = 1;
    while off < THREADS {
        // SAFETY: t and t - off < 1024; read, barrier, write, barrier.
        let add = if t >= off {
            unsafe { *cum.add(t - off) }
        } else {
            0.0
        };
        gpu::sync_threads();
        unsafe { *cum.add(t) += add };
        gpu::sync_threads();
        off *= 2;
    }
    // SAFETY: k - 1 < 1024.
    let total = unsafe { *cum.add(k - 1) };
    let need = top_p * total;
    // Kept prefix: r = 1 + the first index whose cumulative weight reaches `need` (or k).
    if t == 0 {
        // SAFETY: misc has 16 words.
        unsafe { *misc.add(4) = k as u32 };
    }
    gpu::sync_threads();
    if t < k {
        // SAFETY: t, t - 1 < 1024.
        let (prev, cur) = unsafe { (if t > 0 { *cum.add(t - 1) } else { 0.0 }, *cum.add(t)) };
        if cur >= need && (t == 0 || prev < need) {
            unsafe { *misc.add(4) = t as u32 + 1 };
        }
    }
    gpu::sync_threads();
    // SAFETY: written before the barrier; 1 ≤ r ≤ k.
    let r = unsafe { *misc.add(4) } as usize;
    let target = u * unsafe { *cum.add(r - 1) };
    if t == 0 {
        // Fallback when rounding puts the target at or past the end: the last kept candidate.
        // SAFETY: r - 1 < CAND.
        unsafe { *misc.add(3) = !(*cand.add(r - 1) as u32) };
    }
    gpu::sync_threads();
    if t < r {
        // SAFETY: t < r ≤ 1024.
        let (prev, cur) = unsafe { (if t > 0 { *cum.add(t - 1) } else { 0.0 }, *cum.add(t)) };
        if prev <= target && target < cur {
            unsafe { *misc.add(3) = !(*cand.add(t) as u32) };
        }
    }
    gpu::sync_threads();
    if t == 0 {
        // SAFETY: out holds one u32.
        unsafe { emit(out, next, *misc.add(3)) };
    }
}
