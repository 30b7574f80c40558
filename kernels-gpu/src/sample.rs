//! Token choice on the device, so a decode step copies back one `u32`, not the logits.
//!
//! - `argmax_f32`: the index of the largest of `n` logits; ties go to the lower index; NaN is
//!   ignored (if every value is NaN the result is `u32::MAX`). Reference: `host::sample::argmax`.
//! - `sample_f32`: the host's sampling chain (`host::sample`, its reference): the repetition
//!   penalty over a window of recent tokens, then the `top_k` largest logits (ties to the lower
//!   index), then — with the probabilities at temperature 1 — the shortest prefix (by descending
//!   logit) whose probability reaches `top_p` (skipped at 1) and the candidates at least `min_p`
//!   times as likely as the first, then the index whose interval of cumulative weight
//!   `e^((l_i − l_max) / T)` contains `u ×` the kept weight (`u` uniform in [0, 1), drawn by the
//!   host's generator). Greedy with a penalty is `top_k = 1`.
//!
//!   Each of its `G` blocks ([`crate::shapes::sample_blocks`]) first applies the penalty to the
//!   window's tokens in its share of the logits (in place, each token once), then selects the
//!   `top_k` largest of its share exactly — a 4-pass radix select over the order-preserving u32 key
//!   of each float (NaN lowest), and one over the inverted index when ties at the cut are more than
//!   needed — and writes them as `key << 32 | !index` (64-bit keys that order by logit, then by
//!   lower index). The last block to finish (counted in `done`, which it resets) bitonic-sorts the
//!   `G · top_k` candidates (in shared memory, the short strides in registers across a warp),
//!   scans their weights in a fixed order, cuts and draws, and appends the id to the window.
//!
//! Both write the id to `out[0]` and, when `next` is non-null (the `[token, position]` of the next
//! decode step, replayed from a CUDA graph), `next[0]` = the id (0 when it is `u32::MAX`, "none":
//! the next step then reads a valid row and the host, which reads `out`, refuses the result) and
//! `next[1] += 1`.
//!
//! The penalty window is `ring = [count, tokens; cap]`: the last `min(count, cap)` tokens of the
//! sequence (token `j` of it at `ring[1 + j % cap]`); `sample_f32` appends its choice.
//!
//! Launch: `argmax_f32` grid = (G, 1, 1), block = (1024, 1, 1): each block reduces a grid-stride
//! share, and the last block to finish (counted in `done`, which it resets to 0) reduces the `G`
//! pairs in `part`; `sample_f32` grid = (`sample_blocks(n, top_k)`, 1, 1), block = (1024, 1, 1).
//! No dynamic shared memory (static shared arrays). Limits: `1 ≤ top_k ≤ min(n, 1024)`,
//! `cap ≤ 1024`, `n < 2^32 − 1`.

use core::arch::asm;

use crate::gpu;

use crate::shapes::{SAMPLE_CAND as CAND, SAMPLE_MAX_HISTORY, SAMPLE_THREADS as THREADS};

/// Loads in flight per thread in `argmax_f32`.
const UNROLL: usize = 8;

core::arch::global_asm!(
    ".shared .align 16 .b8 SAMPLE_HIST[1024];", // 256 u32 radix histogram
    ".shared .align 16 .b8 SAMPLE_CAND[16384];", // CAND u64 (key << 32 | !index)
    ".shared .align 16 .b8 SAMPLE_CUM[4096];",  // 1024 f32 scanned weights, or window tokens
    ".shared .align 16 .b8 SAMPLE_MISC[64];",   // counters and the selection state
    ".shared .align 16 .b8 ARGMAX_RED[256];",   // 32 (value, index) pairs, or scan totals
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

/// Order key of a logit for selection: larger logit → larger key, NaN lowest (0).
#[inline(always)]
fn key(v: f32) -> u32 {
    if v.is_nan() { 0 } else { gpu::f32_order_key(v) }
}

/// Loads per thread issued together by the passes of `sample_f32` over its share.
const BATCH: usize = 4;

/// Calls `f(i, key_i)` for every `i` in `lo..hi` this thread owns (`lo + thread, + 1024, …`),
/// where `key_i = keys(i)` and `Some`; the keys of `BATCH` indices are loaded before any is used.
#[inline(always)]
fn for_keys(
    lo: usize,
    hi: usize,
    keys: &impl Fn(usize) -> Option<u32>,
    mut f: impl FnMut(usize, u32),
) {
    let mut i = lo + gpu::thread_x() as usize;
    while i < hi {
        let ks: [Option<u32>; BATCH] = core::array::from_fn(|j| {
            let ii = i + j * THREADS;
            if ii < hi { keys(ii) } else { None }
        });
        #[allow(clippy::needless_range_loop)] // constant indices: the array stays in registers
        for j in 0..BATCH {
            if let Some(k) = ks[j] {
                f(i + j * THREADS, k);
            }
        }
        i += BATCH * THREADS;
    }
}

/// Radix select in one block: among the keys `keys(i)` of `i in lo..hi` (`None`: left out), the
/// `rank`-th largest (1 = the largest; `1 ≤ rank ≤` their count). Returns `(key, take, equal)`:
/// the key, how many of the keys equal to it are within `rank` (the rest of the rank is larger),
/// and how many equal it. Every thread of the block calls it and gets the result.
#[inline(always)]
fn block_select(lo: usize, hi: usize, rank: u32, keys: &impl Fn(usize) -> Option<u32>) -> [u32; 3] {
    let t = gpu::thread_x() as usize;
    let hist = smem_ptr!("SAMPLE_HIST", u32);
    let misc = smem_ptr!("SAMPLE_MISC", u32);
    // misc[0] = prefix so far, misc[1] = rank left within it, misc[5] = its count.
    if t == 0 {
        // SAFETY: misc has 16 words; nobody reads them before the barrier below.
        unsafe {
            *misc = 0;
            *misc.add(1) = rank;
            *misc.add(5) = 0;
        }
    }
    let mut mask = 0u32;
    let mut shift = 24u32;
    loop {
        if t < 256 {
            // SAFETY: t < 256 = histogram length; the previous pass's reads ended at its barrier.
            unsafe { *hist.add(t) = 0 };
        }
        gpu::sync_threads();
        // SAFETY: written before the barrier above.
        let prefix = unsafe { *misc };
        for_keys(lo, hi, keys, |_, k| {
            if k & mask == prefix {
                // SAFETY: the bin index is < 256.
                gpu::atomic_add_u32(unsafe { hist.add(((k >> shift) & 255) as usize) }, 1);
            }
        });
        gpu::sync_threads();
        if t < 32 {
            // Warp 0 finds the bin: lane l holds bins 255 − 8l − j (j < 8), largest first.
            let l = t;
            // SAFETY: 255 − 8l − j is in 0..256 for l < 32, j < 8; misc[1] written before.
            let (c, left) = unsafe {
                let c: [u32; 8] = core::array::from_fn(|j| *hist.add(255 - 8 * l - j));
                (c, *misc.add(1))
            };
            let s: u32 = c.iter().sum();
            let incl = gpu::warp_scan_u32(s);
            let excl = incl - s;
            if excl < left && left <= incl {
                let mut r = left - excl;
                let mut bin = 0usize;
                let mut cnt = 0u32;
                let mut found = false;
                for (j, &cj) in c.iter().enumerate() {
                    if !found {
                        if cj >= r {
                            found = true;
                            bin = 255 - 8 * l - j;
                            cnt = cj;
                        } else {
                            r -= cj;
                        }
                    }
                }
                // SAFETY: one lane (the ranges [excl, incl) are disjoint); misc has 16 words.
                unsafe {
                    *misc = prefix | ((bin as u32) << shift);
                    *misc.add(1) = r;
                    *misc.add(5) = cnt;
                }
            }
        }
        mask |= 255 << shift;
        gpu::sync_threads();
        if shift == 0 {
            break;
        }
        shift -= 8;
    }
    // SAFETY: written before the last barrier; the caller's next use of misc is after a barrier.
    let r = unsafe { [*misc, *misc.add(1), *misc.add(5)] };
    gpu::sync_threads();
    r
}

/// [`gpu::shfl_xor_u32`] of a u64.
#[inline(always)]
fn shfl_xor_u64(v: u64, m: u32) -> u64 {
    let lo = gpu::shfl_xor_u32(v as u32, m) as u64;
    let hi = gpu::shfl_xor_u32((v >> 32) as u32, m) as u64;
    (hi << 32) | lo
}

/// Bitonic sort of the shared slots `cand[0..p]`, descending (`p` a power of two,
/// `2 ≤ p ≤ 2 · THREADS`; every thread of the block calls it). Comparator strides of 64 slots and
/// more exchange through shared memory, a barrier each; the smaller ones in registers, thread `t`
/// holding slots `2t` and `2t + 1` and its partner at stride `s ≥ 2` being lane `t ^ s/2` of
/// its own warp — a barrier per merge size instead of one per stride.
#[inline(always)]
fn sort_desc(cand: *mut u64, p: usize) {
    let t = gpu::thread_x() as usize;
    let own = 2 * t < p;
    let mut size = 2;
    while size <= p {
        let mut stride = size / 2;
        while stride >= 64 {
            let mut c = t;
            while c < p / 2 {
                let lo = 2 * stride * (c / stride) + c % stride;
                let hi = lo + stride;
                let desc = (lo & size) == 0;
                // SAFETY: lo < hi < p ≤ CAND; each comparator pair is owned by one thread.
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
        // SAFETY: 2t + 1 < p when `own`; the previous stage ended with a barrier.
        let (mut a, mut b) = if own {
            unsafe { (*cand.add(2 * t), *cand.add(2 * t + 1)) }
        } else {
            (0, 0)
        };
        // The pair's direction: descending where the merge block's index bit `size` is clear.
        let desc = (2 * t) & size == 0;
        while stride >= 1 {
            if stride == 1 {
                if (a < b) == desc {
                    core::mem::swap(&mut a, &mut b);
                }
            } else {
                let m = (stride / 2) as u32;
                let (oa, ob) = (shfl_xor_u64(a, m), shfl_xor_u64(b, m));
                // The lower slot of a pair keeps the larger key when descending.
                let keep_max = desc == ((2 * t) & stride == 0);
                a = if keep_max { a.max(oa) } else { a.min(oa) };
                b = if keep_max { b.max(ob) } else { b.min(ob) };
            }
            stride /= 2;
        }
        if own {
            // SAFETY: as above; each thread writes its own two slots.
            unsafe {
                *cand.add(2 * t) = a;
                *cand.add(2 * t + 1) = b;
            }
        }
        gpu::sync_threads();
        size *= 2;
    }
}

/// Inclusive prefix sum over the block, in a fixed order (every thread calls it with its value;
/// thread `t` gets the sum over threads `0..=t`).
#[inline(always)]
fn block_scan(v: f32) -> f32 {
    let red = smem_ptr!("ARGMAX_RED", f32);
    let (lane, warp) = (gpu::lane() as usize, gpu::warp() as usize);
    let x = gpu::warp_scan_f32(v);
    // SAFETY: ≤ 32 warps; slots 0..32 the warp totals, 32..64 their scan (256 bytes = 64 f32);
    // barriers order writes and reads.
    unsafe {
        if lane == 31 {
            *red.add(warp) = x;
        }
        gpu::sync_threads();
        if warp == 0 {
            let n_warps = (gpu::block_dim_x() / 32) as usize;
            let w = if lane < n_warps { *red.add(lane) } else { 0.0 };
            *red.add(32 + lane) = gpu::warp_scan_f32(w);
        }
        gpu::sync_threads();
        let r = if warp > 0 {
            x + *red.add(32 + warp - 1)
        } else {
            x
        };
        gpu::sync_threads();
        r
    }
}

/// # Safety
/// `x` holds `n` writable floats (the penalty is applied in place), `ring` null or
/// `1 + ring_cap` u32 (`ring_cap ≤ 1024`), `part` `gridDim.x × top_k` u64, `done` one u32 that is
/// 0 at launch (the last block resets it), `out` one u32, `next` null or two u32;
/// `1 ≤ top_k ≤ min(n, 1024)`, `gridDim.x × top_k ≤ 2048`, `0 ≤ u < 1`; launched as in the
/// module header.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn sample_f32(
    x: *mut f32,
    n: u32,
    top_k: u32,
    top_p: f32,
    min_p: f32,
    inv_temp: f32,
    penalty: f32,
    u: f32,
    ring: *mut u32,
    ring_cap: u32,
    part: *mut u64,
    done: *mut u32,
    out: *mut u32,
    next: *mut u32,
) {
    gpu::pdl_trigger();
    gpu::pdl_wait();
    let t = gpu::thread_x() as usize;
    let (blk, n_blocks) = (gpu::block_x() as usize, gpu::grid_dim_x() as usize);
    let n = n as usize;
    let k = top_k as usize;
    let per = n.div_ceil(n_blocks);
    let lo = (blk * per).min(n);
    let hi = (lo + per).min(n);
    let cand = smem_ptr!("SAMPLE_CAND", u64);
    let cum = smem_ptr!("SAMPLE_CUM", f32);
    let misc = smem_ptr!("SAMPLE_MISC", u32);

    // 1. The repetition penalty on the window's tokens in this share, each token once.
    if !ring.is_null() && ring_cap > 0 && penalty != 1.0 {
        let toks = cum as *mut u32;
        // SAFETY: ring holds 1 + ring_cap u32 (caller contract); w ≤ ring_cap ≤ 1024 = toks' length.
        let w = unsafe { *ring }
            .min(ring_cap)
            .min(SAMPLE_MAX_HISTORY as u32) as usize;
        if t < w {
            // SAFETY: t < w ≤ ring_cap.
            unsafe { *toks.add(t) = *ring.add(1 + t) };
        }
        gpu::sync_threads();
        if t < w {
            // SAFETY: t < w; the tokens were stored before the barrier.
            let h = unsafe { *toks.add(t) } as usize;
            if (lo..hi).contains(&h) && !(0..t).any(|j| unsafe { *toks.add(j) } as usize == h) {
                // SAFETY: h < n; this share is this block's alone.
                unsafe {
                    let v = *x.add(h);
                    *x.add(h) = if v > 0.0 { v / penalty } else { v * penalty };
                }
            }
        }
        // Orders the writes before this block's reads of its share (and frees `toks`).
        gpu::sync_threads();
    }

    // 2. This share's `kb` largest, exactly (ties to the lower index).
    let keys = |i: usize| -> Option<u32> {
        // SAFETY: i < hi ≤ n.
        Some(key(unsafe { *x.add(i) }))
    };
    let kb = k.min(hi - lo);
    if kb > 0 {
        let [thr, take, equal] = block_select(lo, hi, kb as u32, &keys);
        let thr2 = if take < equal {
            let tied = |i: usize| -> Option<u32> {
                // SAFETY: i < hi ≤ n.
                (key(unsafe { *x.add(i) }) == thr).then_some(!(i as u32))
            };
            block_select(lo, hi, take, &tied)[0]
        } else {
            0
        };
        if t == 0 {
            // SAFETY: misc has 16 words; block_select ended with a barrier.
            unsafe { *misc.add(2) = 0 };
        }
        gpu::sync_threads();
        for_keys(lo, hi, &keys, |i, kv| {
            if kv > thr || (kv == thr && !(i as u32) >= thr2) {
                // Exactly kb of the share's keys qualify, so slot < kb.
                let slot = gpu::atomic_add_u32(misc.wrapping_add(2), 1) as usize;
                // SAFETY: blk · k + slot < gridDim.x · top_k (caller contract).
                unsafe { *part.add(blk * k + slot) = ((kv as u64) << 32) | (!(i as u32)) as u64 };
            }
        });
    }
    if kb <= t && t < k {
        // SAFETY: as above; the smallest u64 pads a share shorter than top_k (sorts last).
        unsafe { *part.add(blk * k + t) = 0 };
    }

    // 3. The last block to finish goes on with every block's candidates.
    gpu::sync_threads();
    if t == 0 {
        // SAFETY: done is one u32 (caller contract); misc has 16 words.
        unsafe {
            gpu::fence_gpu();
            let prev = gpu::atomic_add_u32(done, 1);
            *misc.add(3) = (prev as usize == n_blocks - 1) as u32;
        }
    }
    gpu::sync_threads();
    // SAFETY: written by thread 0 before the barrier.
    if unsafe { *misc.add(3) } == 0 {
        return;
    }
    gpu::fence_gpu();
    let m = n_blocks * k;
    let p = m.next_power_of_two();
    let mut i = t;
    while i < p {
        // SAFETY: i < p ≤ CAND (caller contract: m ≤ 2048); i < m is within part, which the other
        // blocks fenced before counting.
        unsafe {
            *cand.add(i) = if i < m {
                gpu::load_volatile(part.add(i))
            } else {
                0
            }
        };
        i += THREADS;
    }
    gpu::sync_threads();

    // 4. Bitonic sort of the p slots, descending: by logit, then by lower index.
    sort_desc(cand, p);

    // 5. The top_k, less NaN (key 0): kk of them, a prefix of the sorted slots.
    // SAFETY: t < 1024 ≤ CAND; slots are sorted.
    let c_t = if t < k { unsafe { *cand.add(t) } } else { 0 };
    let valid = (c_t >> 32) != 0;
    if t == 0 {
        // SAFETY: misc has 16 words.
        unsafe {
            *misc.add(4) = 0;
            *misc.add(6) = 0;
        }
    }
    gpu::sync_threads();
    if valid {
        gpu::atomic_add_u32(misc.wrapping_add(4), 1);
    }
    gpu::sync_threads();
    // SAFETY: counted before the barrier.
    let kk = unsafe { *misc.add(4) } as usize;
    if kk == 0 {
        if t == 0 {
            // SAFETY: caller contract.
            unsafe {
                emit(out, next, u32::MAX);
                *done = 0;
            }
        }
        return;
    }
    // SAFETY: slot 0 is the largest candidate, and valid (kk ≥ 1).
    let lmax = gpu::f32_from_order_key((unsafe { *cand } >> 32) as u32);
    let l_t = gpu::f32_from_order_key((c_t >> 32) as u32);
    let id_t = !(c_t as u32);

    // 6. Weights at temperature 1: the top-p prefix and the min-p floor.
    let w1 = if t < kk { gpu::exp(l_t - lmax) } else { 0.0 };
    let c1 = block_scan(w1);
    // SAFETY: t < 1024 = cum's length.
    unsafe { *cum.add(t) = c1 };
    if t < kk && w1 >= min_p {
        gpu::atomic_add_u32(misc.wrapping_add(6), 1);
    }
    if t == 0 {
        // SAFETY: misc has 16 words.
        unsafe { *misc.add(7) = kk as u32 };
    }
    gpu::sync_threads();
    if top_p < 1.0 && t < kk {
        // SAFETY: t, t − 1, kk − 1 < 1024; written before the barrier.
        let (prev, need) = unsafe {
            (
                if t > 0 { *cum.add(t - 1) } else { 0.0 },
                top_p * *cum.add(kk - 1),
            )
        };
        if c1 >= need && (t == 0 || prev < need) {
            // SAFETY: one thread (the first to reach `need`).
            unsafe { *misc.add(7) = t as u32 + 1 };
        }
    }
    gpu::sync_threads();
    // SAFETY: written before the barrier; r_m ≥ 1 (w1 of the first is 1 ≥ min_p).
    let r = unsafe { (*misc.add(7)).min((*misc.add(6)).max(1)) } as usize;

    // 7. Weights at the temperature over the r kept, the draw.
    let wt = if t < r {
        gpu::exp((l_t - lmax) * inv_temp)
    } else {
        0.0
    };
    let ct = block_scan(wt);
    // SAFETY: t < 1024.
    unsafe { *cum.add(t) = ct };
    if t == r - 1 {
        // Fallback when rounding puts the target at or past the end: the last kept candidate.
        // SAFETY: misc has 16 words.
        unsafe { *misc.add(8) = id_t };
    }
    gpu::sync_threads();
    if t < r {
        // SAFETY: t, t − 1, r − 1 < 1024; written before the barrier.
        let (prev, target) = unsafe {
            (
                if t > 0 { *cum.add(t - 1) } else { 0.0 },
                u * *cum.add(r - 1),
            )
        };
        if prev <= target && target < ct {
            // SAFETY: one thread: the intervals [prev, ct) are disjoint.
            unsafe { *misc.add(8) = id_t };
        }
    }
    gpu::sync_threads();
    if t == 0 {
        // SAFETY: caller contract; every block has counted itself, none touches done again.
        unsafe {
            let id = *misc.add(8);
            emit(out, next, id);
            if !ring.is_null() && ring_cap > 0 {
                let c = *ring;
                *ring.add(1 + (c % ring_cap) as usize) = id;
                // Kept below 2 · cap: the same slot order and a full window.
                *ring = if c + 1 >= 2 * ring_cap {
                    c + 1 - ring_cap
                } else {
                    c + 1
                };
            }
            *done = 0;
        }
    }
}
