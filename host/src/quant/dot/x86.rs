//! x86_64 dot products: AVX2 (with FMA and F16C) for every type, and AVX-512
//! (F/BW/VL, on 256-bit vectors) variants of Q5_0/Q5_1. Selected at run time by [`super::Isa`].
//!
//! Per block: the weight quants are unpacked to unsigned bytes and multiplied with the signed
//! activation bytes by `vpmaddubsw` (u8 x i8, adjacent pairs summed in i16; never saturates here:
//! at most 63 * 127 * 2), then widened and summed by `vpmaddwd` (with 1, or with the K-quants'
//! group scales). Offsets and minimums are applied through the activation sums (exact integers
//! for the K-quants, one extra FMA stream for the 32-element formats). The 32-element formats
//! reduce 8 blocks' integer sums to one vector and scale it with one FMA by the 8 blocks'
//! `d_w * d_x`; the K-quants do one FMA per super-block. Same integer sums as the scalar code,
//! different float summation order.

use std::arch::x86_64::*;

use super::{Kernel, blocks};
use crate::gguf::GgmlType;
use crate::quant::{BlockQ8K, Q8Blocks};
use kernels_gpu::quant::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K,
    BlockQ8_0, k_scales_mins,
};

/// The AVX-512 kernel for `ty` where there is one, else the AVX2 kernel.
pub(super) fn kernel_avx512(ty: GgmlType) -> Kernel {
    match ty {
        GgmlType::Q5_0 => Kernel::Q8(dot_q5_0_avx512),
        GgmlType::Q5_1 => Kernel::Q8(dot_q5_1_avx512),
        _ => kernel(ty),
    }
}

/// The AVX2 kernel for `ty`.
pub(super) fn kernel(ty: GgmlType) -> Kernel {
    match ty {
        GgmlType::F32 => Kernel::F32(dot_f32),
        GgmlType::F16 => Kernel::F32(dot_f16),
        GgmlType::BF16 => Kernel::F32(dot_bf16),
        GgmlType::Q4_0 => Kernel::Q8(dot_q4_0),
        GgmlType::Q4_1 => Kernel::Q8(dot_q4_1),
        GgmlType::Q5_0 => Kernel::Q8(dot_q5_0),
        GgmlType::Q5_1 => Kernel::Q8(dot_q5_1),
        GgmlType::Q8_0 => Kernel::Q8(dot_q8_0),
        GgmlType::Q4K => Kernel::Q8K(dot_q4k),
        GgmlType::Q5K => Kernel::Q8K(dot_q5k),
        GgmlType::Q6K => Kernel::Q8K(dot_q6k),
        GgmlType::Q2K => Kernel::Q8K(dot_q2k),
        GgmlType::Q3K => Kernel::Q8K(dot_q3k),
    }
}

// ---- helpers -------------------------------------------------------------------------------

/// 32 bytes, unaligned.
#[inline]
#[target_feature(enable = "avx2")]
fn load32<T>(a: &[T; 32]) -> __m256i
where
    T: Copy,
{
    const { assert!(size_of::<T>() == 1) };
    // SAFETY: `a` is 32 readable bytes (T is one byte, asserted above); loadu has no alignment
    // requirement.
    unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
}

/// 16 bytes, unaligned.
#[inline]
#[target_feature(enable = "avx2")]
fn load16<T>(a: &[T; 16]) -> __m128i
where
    T: Copy,
{
    const { assert!(size_of::<T>() == 1) };
    // SAFETY: `a` is 16 readable bytes (T is one byte, asserted above); loadu has no alignment
    // requirement.
    unsafe { _mm_loadu_si128(a.as_ptr().cast()) }
}

/// The first 32 bytes of `s` as an array reference (the caller's slice is at least that long).
#[inline]
fn arr32<T>(s: &[T]) -> &[T; 32] {
    s.first_chunk::<32>()
        .expect("slice of at least 32 elements")
}

/// f16 bits to f32 with F16C.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16(h: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le(h) as i32)))
}

/// Sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Sum of the 4 i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum_epi32_128(v: __m128i) -> i32 {
    let s = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// The 32 4-bit quants of a legacy block in element order: low nibbles (elements 0..16), then
/// high nibbles (16..32).
#[inline]
#[target_feature(enable = "avx2")]
fn nibbles(qs: &[u8; 16]) -> __m256i {
    // The 16 bytes in both halves (a load, no shuffle), the high half shifted right by 4.
    let both = _mm256_broadcastsi128_si256(load16(qs));
    let shifted = _mm256_srlv_epi64(both, _mm256_setr_epi64x(0, 0, 4, 4));
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x0f))
}

/// Byte i = 0x10 where bit i of `qh` is set, else 0 (the fifth bits of Q5_0/Q5_1).
#[inline]
#[target_feature(enable = "avx2")]
fn fifth_bits(qh: u32) -> __m256i {
    // Byte i takes byte i/8 of qh; OR-ing every bit but bit i%8 in and comparing with all-ones
    // leaves 0xFF exactly where that bit is set.
    let v = _mm256_set1_epi32(qh as i32);
    let pick = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let b = _mm256_shuffle_epi8(v, pick);
    let b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
    let set = _mm256_cmpeq_epi8(b, _mm256_set1_epi8(-1));
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Σ over pairs of u8 `a` x i8 `b`, as 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn dot_u8i8(a: __m256i, b: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1))
}

// ---- float weights --------------------------------------------------------------------------

/// Float rows: four 8-lane FMA accumulators over (weights, x) pairs, then a scalar tail.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_float(
    n: usize,
    load8: impl Fn(usize) -> (__m256, __m256),
    tail: impl Fn(usize) -> f32,
) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            let (w, x) = load8(i + 8 * k);
            *a = _mm256_fmadd_ps(w, x, *a);
        }
        i += 32;
    }
    let mut a = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    while i + 8 <= n {
        let (w, x) = load8(i);
        a = _mm256_fmadd_ps(w, x, a);
        i += 8;
    }
    let mut s = hsum_ps(a);
    while i < n {
        s += tail(i);
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    let (w, xp) = (row.as_ptr(), x.as_ptr());
    dot_float(
        x.len(),
        // SAFETY: i + 8 <= n; row holds 4n bytes (validated by the caller), x holds n floats;
        // loadu has no alignment requirement.
        |i| unsafe {
            (
                _mm256_loadu_ps(w.add(4 * i).cast()),
                _mm256_loadu_ps(xp.add(i)),
            )
        },
        |i| f32::from_le_bytes([row[4 * i], row[4 * i + 1], row[4 * i + 2], row[4 * i + 3]]) * x[i],
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    let (w, xp) = (row.as_ptr(), x.as_ptr());
    dot_float(
        x.len(),
        // SAFETY: i + 8 <= n; row holds 2n bytes (validated by the caller), x holds n floats;
        // loadu has no alignment requirement.
        |i| unsafe {
            let h = _mm_loadu_si128(w.add(2 * i).cast());
            (_mm256_cvtph_ps(h), _mm256_loadu_ps(xp.add(i)))
        },
        |i| f16(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])) * x[i],
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_bf16(row: &[u8], x: &[f32]) -> f32 {
    let (w, xp) = (row.as_ptr(), x.as_ptr());
    dot_float(
        x.len(),
        // SAFETY: i + 8 <= n; row holds 2n bytes (validated by the caller), x holds n floats;
        // loadu has no alignment requirement.
        |i| unsafe {
            let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(w.add(2 * i).cast()));
            let f = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h));
            (f, _mm256_loadu_ps(xp.add(i)))
        },
        |i| f32::from_bits((u16::from_le_bytes([row[2 * i], row[2 * i + 1]]) as u32) << 16) * x[i],
    )
}

// ---- 32-element blocks -----------------------------------------------------------------------

/// The second term of a 32-element format's block: nothing (Q8_0), an offset (Q4_0: `-8 d_w Σx`,
/// Q5_0: `-16 d_w Σx`), or a minimum (Q4_1, Q5_1: `m_w Σx`). With `s_x = d_x Σ q_x` it is
/// `coef * a_w * s_x`, `a_w` being `d_w` for offsets and `m_w` for minimums.
#[derive(Clone, Copy, PartialEq)]
enum Second {
    Nothing,
    Offset(f32),
    Min,
}

/// Reduces 8 vectors of 8 i32 lanes to one vector of their 8 sums, in order.
#[inline]
#[target_feature(enable = "avx2")]
fn reduce8(p: [__m256i; 8]) -> __m256i {
    // hadd pairs lanes within each 128-bit half: after two rounds the low half holds the sums of
    // lanes 0..4 of four inputs and the high half the sums of lanes 4..8.
    let h01 = _mm256_hadd_epi32(p[0], p[1]);
    let h23 = _mm256_hadd_epi32(p[2], p[3]);
    let h45 = _mm256_hadd_epi32(p[4], p[5]);
    let h67 = _mm256_hadd_epi32(p[6], p[7]);
    let a = _mm256_hadd_epi32(h01, h23);
    let b = _mm256_hadd_epi32(h45, h67);
    let lo = _mm256_permute2x128_si256::<0x20>(a, b);
    let hi = _mm256_permute2x128_si256::<0x31>(a, b);
    _mm256_add_epi32(lo, hi)
}

/// Sum of 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum_epi32(v: __m256i) -> i32 {
    hsum_epi32_128(_mm_add_epi32(
        _mm256_castsi256_si128(v),
        _mm256_extracti128_si256::<1>(v),
    ))
}

/// The f16 fields `f` of 8 blocks, converted to f32 together.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16x8<B>(ws: &[B], f: &impl Fn(&B) -> u16) -> __m256 {
    let h = |k: usize| u16::from_le(f(&ws[k])) as i16;
    _mm256_cvtph_ps(_mm_setr_epi16(
        h(0),
        h(1),
        h(2),
        h(3),
        h(4),
        h(5),
        h(6),
        h(7),
    ))
}

/// The driver of the 32-element kernels. `dot(w, q_x)` gives a block's integer dot product as 8
/// i32 lanes; `d(w)` and `m(w)` its f16 scale and minimum bits.
///
/// Blocks go in groups of 8: the 8 integer dots are reduced to one vector of 8 block sums and
/// scaled with one FMA by the 8 blocks' `d_w * d_x` (the activation scales are contiguous; the
/// 8 f16 weight scales are converted together), so the per-block float work is a fraction of an
/// instruction. The last `n % 8` blocks are done one by one.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn blocks32<B>(
    ws: &[B],
    x: &Q8Blocks,
    second: Second,
    d: impl Fn(&B) -> u16,
    m: impl Fn(&B) -> u16,
    dot: impl Fn(&B, &[i8; 32]) -> __m256i,
) -> f32 {
    let n = ws.len().min(x.len());
    let (ws, xd, xs, xq) = (&ws[..n], &x.d()[..n], &x.s()[..n], &x.qs()[..n]);
    let mut acc = _mm256_setzero_ps();
    let mut acc2 = _mm256_setzero_ps();
    let mut g = 0;
    while g + 8 <= n {
        let p: [__m256i; 8] = std::array::from_fn(|k| dot(&ws[g + k], &xq[g + k]));
        let sums = _mm256_cvtepi32_ps(reduce8(p));
        let dw = f16x8(&ws[g..g + 8], &d);
        // SAFETY: g + 8 <= n = the length of xd and xs; loadu has no alignment requirement.
        let (dx, sx) = unsafe {
            (
                _mm256_loadu_ps(xd.as_ptr().add(g)),
                _mm256_loadu_ps(xs.as_ptr().add(g)),
            )
        };
        acc = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), sums, acc);
        match second {
            Second::Nothing => {}
            Second::Offset(_) => acc2 = _mm256_fmadd_ps(dw, sx, acc2),
            Second::Min => acc2 = _mm256_fmadd_ps(f16x8(&ws[g..g + 8], &m), sx, acc2),
        }
        g += 8;
    }
    let (mut tail, mut tail2) = (0.0f32, 0.0f32);
    for b in g..n {
        let dw = f16(d(&ws[b]));
        tail += (dw * xd[b]) * hsum_epi32(dot(&ws[b], &xq[b])) as f32;
        match second {
            Second::Nothing => {}
            Second::Offset(_) => tail2 += dw * xs[b],
            Second::Min => tail2 += f16(m(&ws[b])) * xs[b],
        }
    }
    let main = hsum_ps(acc) + tail;
    match second {
        Second::Nothing => main,
        Second::Offset(c) => main + c * (hsum_ps(acc2) + tail2),
        Second::Min => main + (hsum_ps(acc2) + tail2),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_0(row: &[u8], x: &Q8Blocks) -> f32 {
    // Quants are stored + 8: Σ d_w d_x (q - 8) x = Σ d_w d_x q x - 8 Σ d_w (d_x Σx).
    let ws = blocks::<32, BlockQ4_0>(row);
    blocks32(
        &ws,
        x,
        Second::Offset(-8.0),
        |w| w.d,
        |_| 0,
        |w, xq| dot_u8i8(nibbles(&w.qs), load32(xq)),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_1(row: &[u8], x: &Q8Blocks) -> f32 {
    let ws = blocks::<32, BlockQ4_1>(row);
    blocks32(
        &ws,
        x,
        Second::Min,
        |w| w.d,
        |w| w.m,
        |w, xq| dot_u8i8(nibbles(&w.qs), load32(xq)),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_0(row: &[u8], x: &Q8Blocks) -> f32 {
    // Quants are stored + 16: Σ d_w d_x (q - 16) x = Σ d_w d_x q x - 16 Σ d_w (d_x Σx).
    let ws = blocks::<32, BlockQ5_0>(row);
    blocks32(
        &ws,
        x,
        Second::Offset(-16.0),
        |w| w.d,
        |_| 0,
        |w, xq| {
            let q = _mm256_or_si256(nibbles(&w.qs), fifth_bits(w.qh()));
            dot_u8i8(q, load32(xq))
        },
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_1(row: &[u8], x: &Q8Blocks) -> f32 {
    let ws = blocks::<32, BlockQ5_1>(row);
    blocks32(
        &ws,
        x,
        Second::Min,
        |w| w.d,
        |w| w.m,
        |w, xq| {
            let q = _mm256_or_si256(nibbles(&w.qs), fifth_bits(w.qh()));
            dot_u8i8(q, load32(xq))
        },
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0(row: &[u8], x: &Q8Blocks) -> f32 {
    let ws = blocks::<32, BlockQ8_0>(row);
    blocks32(
        &ws,
        x,
        Second::Nothing,
        |w| w.d,
        |_| 0,
        |w, xq| {
            let (a, b) = (load32(&w.qs), load32(xq));
            // i8 x i8 through u8 x i8: |a| times b with a's sign moved onto b.
            dot_u8i8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a))
        },
    )
}

// ---- 32-element blocks, AVX-512 (VL, BW) on 256-bit vectors -----------------------------------
//
// The fifth bits of Q5_0/Q5_1 are a 32-bit mask register (`kmovd`) applied by one masked byte add,
// instead of AVX2's shuffle/or/compare/and sequence.

/// The 5-bit unsigned quants of a Q5_0/Q5_1 block: nibbles, plus 16 where the bit of `qh` is set.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
fn quants5_avx512(qs: &[u8; 16], qh: u32) -> __m256i {
    let both = _mm256_broadcastsi128_si256(load16(qs));
    // Low half as is (low nibbles), high half shifted right by 4 (high nibbles).
    let shifted = _mm256_srlv_epi64(both, _mm256_setr_epi64x(0, 0, 4, 4));
    let fifth = _mm256_maskz_mov_epi8(qh, _mm256_set1_epi8(16));
    // (shifted & 0x0f) | fifth in one instruction: truth table of a & b | c is 0xEA.
    _mm256_ternarylogic_epi32::<0xEA>(shifted, _mm256_set1_epi8(0x0f), fifth)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
fn dot_q5_0_avx512(row: &[u8], x: &Q8Blocks) -> f32 {
    let ws = blocks::<32, BlockQ5_0>(row);
    blocks32(
        &ws,
        x,
        Second::Offset(-16.0),
        |w| w.d,
        |_| 0,
        |w, xq| dot_u8i8(quants5_avx512(&w.qs, w.qh()), load32(xq)),
    )
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
fn dot_q5_1_avx512(row: &[u8], x: &Q8Blocks) -> f32 {
    let ws = blocks::<32, BlockQ5_1>(row);
    blocks32(
        &ws,
        x,
        Second::Min,
        |w| w.d,
        |w| w.m,
        |w, xq| dot_u8i8(quants5_avx512(&w.qs, w.qh()), load32(xq)),
    )
}

// ---- K-quants --------------------------------------------------------------------------------

/// Σ_j m_j (bsums[2j] + bsums[2j+1]) for the 8 mins of Q4_K/Q5_K.
#[inline]
#[target_feature(enable = "avx2")]
fn mins_dot_bsums(mins: &[u8; 8], bsums: &[i16; 16]) -> i32 {
    // SAFETY: bsums is 32 readable bytes; loadu has no alignment requirement.
    let bs = unsafe { _mm256_loadu_si256(bsums.as_ptr().cast()) };
    // Pairwise sums of the 16 group sums: the 8 sums of 32-element groups, in order.
    let pairs = _mm_hadd_epi16(
        _mm256_castsi256_si128(bs),
        _mm256_extracti128_si256::<1>(bs),
    );
    let m = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(i64::from_le_bytes(*mins)));
    hsum_epi32_128(_mm_madd_epi16(pairs, m))
}

/// The Q4_K/Q5_K body: for each 64-element chunk j, `lo`/`hi` give the unsigned quants of groups
/// 2j and 2j+1; returns Σ_j sc_j Σ q x as 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn k_scaled_sums(
    sc: &[u8],
    xq: &[i8; 256],
    quants: impl Fn(usize) -> (__m256i, __m256i),
) -> __m256i {
    let mut sumi = _mm256_setzero_si256();
    for j in 0..4 {
        let (lo, hi) = quants(j);
        let p0 = _mm256_maddubs_epi16(lo, load32(arr32(&xq[64 * j..])));
        let p1 = _mm256_maddubs_epi16(hi, load32(arr32(&xq[64 * j + 32..])));
        let p0 = _mm256_madd_epi16(p0, _mm256_set1_epi16(sc[2 * j] as i16));
        let p1 = _mm256_madd_epi16(p1, _mm256_set1_epi16(sc[2 * j + 1] as i16));
        sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
    }
    sumi
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summ = 0.0f32;
    let m4 = _mm256_set1_epi8(0x0f);
    for (w, x) in blocks::<256, BlockQ4K>(row).iter().zip(x) {
        let sm = k_scales_mins(&w.scales);
        let mins: &[u8; 8] = sm[8..].first_chunk().unwrap();
        summ += (f16(w.dmin) * x.d) * mins_dot_bsums(mins, &x.bsums) as f32;
        let sumi = k_scaled_sums(&sm[..8], &x.qs, |j| {
            let q = load32(arr32(&w.qs[32 * j..]));
            (
                _mm256_and_si256(q, m4),
                _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4),
            )
        });
        let d = _mm256_set1_ps(f16(w.d) * x.d);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) - summ
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summ = 0.0f32;
    let m4 = _mm256_set1_epi8(0x0f);
    let b4 = _mm256_set1_epi8(0x10);
    for (w, x) in blocks::<256, BlockQ5K>(row).iter().zip(x) {
        let sm = k_scales_mins(&w.scales);
        let mins: &[u8; 8] = sm[8..].first_chunk().unwrap();
        summ += (f16(w.dmin) * x.d) * mins_dot_bsums(mins, &x.bsums) as f32;
        let qh = load32(&w.qh);
        // 0x10 where bit `bit` of qh[l] is set.
        let fifth = |bit: usize| {
            let m = _mm256_set1_epi8((1u8 << bit) as i8);
            _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, m), m), b4)
        };
        let sumi = k_scaled_sums(&sm[..8], &x.qs, |j| {
            let q = load32(arr32(&w.qs[32 * j..]));
            let lo = _mm256_or_si256(_mm256_and_si256(q, m4), fifth(2 * j));
            let hi = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4),
                fifth(2 * j + 1),
            );
            (lo, hi)
        });
        let d = _mm256_set1_ps(f16(w.d) * x.d);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) - summ
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q6k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let m4 = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(0x03);
    for (w, x) in blocks::<256, BlockQ6K>(row).iter().zip(x) {
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let ql0 = load32(arr32(&w.ql[64 * h..]));
            let ql1 = load32(arr32(&w.ql[64 * h + 32..]));
            let qh = load32(arr32(&w.qh[32 * h..]));
            let high = |v: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(v, m2));
            // The four 32-element groups of this half, unsigned 0..64.
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), high(qh)),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), high(_mm256_srli_epi16::<2>(qh))),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                    high(_mm256_srli_epi16::<4>(qh)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                    high(_mm256_srli_epi16::<6>(qh)),
                ),
            ];
            for (s, q) in q.into_iter().enumerate() {
                let p = _mm256_maddubs_epi16(q, load32(arr32(&x.qs[128 * h + 32 * s..])));
                // Lanes 0..8 are elements 0..16 (group g), lanes 8..16 elements 16..32 (g + 1).
                let g = 8 * h + 2 * s;
                let sc = _mm256_set_m128i(
                    _mm_set1_epi16(w.scales[g + 1] as i16),
                    _mm_set1_epi16(w.scales[g] as i16),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, sc));
            }
        }
        // Quants are stored + 32: take 32 Σ_g sc_g bsum_g off.
        let bs = load_bsums(x);
        let sc16 = _mm256_cvtepi8_epi16(load16(&w.scales));
        let off = _mm256_madd_epi16(bs, sc16);
        sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<5>(off));
        let d = _mm256_set1_ps(f16(w.d) * x.d);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

/// The scale vector for a `vpmaddubsw` result covering groups `g` (lanes 0..8) and `g + 1`
/// (lanes 8..16) of 16 elements each.
#[inline]
#[target_feature(enable = "avx2")]
fn scale_pair(a: i16, b: i16) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(b), _mm_set1_epi16(a))
}

/// The 16 activation group sums as one vector.
#[inline]
#[target_feature(enable = "avx2")]
fn load_bsums(x: &BlockQ8K) -> __m256i {
    // SAFETY: bsums is 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(x.bsums.as_ptr().cast()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q2k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summ = 0.0f32;
    let m2 = _mm256_set1_epi8(3);
    for (w, x) in blocks::<256, BlockQ2K>(row).iter().zip(x) {
        // Mins (high nibbles) against the group sums.
        let sc = load16(&w.scales);
        let mins =
            _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sc), _mm_set1_epi8(0x0f)));
        let m = hsum_epi32(_mm256_madd_epi16(mins, load_bsums(x)));
        summ += (f16(w.dmin) * x.d) * m as f32;
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let q = load32(arr32(&w.qs[32 * h..]));
            let parts = [
                q,
                _mm256_srli_epi16::<2>(q),
                _mm256_srli_epi16::<4>(q),
                _mm256_srli_epi16::<6>(q),
            ];
            for (s, part) in parts.into_iter().enumerate() {
                let u = _mm256_and_si256(part, m2);
                let p = _mm256_maddubs_epi16(u, load32(arr32(&x.qs[128 * h + 32 * s..])));
                let g = 8 * h + 2 * s;
                let scv = scale_pair((w.scales[g] & 0x0f) as i16, (w.scales[g + 1] & 0x0f) as i16);
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scv));
            }
        }
        let d = _mm256_set1_ps(f16(w.d) * x.d);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) - summ
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q3k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let m2 = _mm256_set1_epi8(3);
    let four = _mm256_set1_epi8(4);
    for (w, x) in blocks::<256, BlockQ3K>(row).iter().zip(x) {
        let sc: [i16; 16] = std::array::from_fn(|g| w.scale(g) as i16);
        let hm = load32(&w.hmask);
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let q = load32(arr32(&w.qs[32 * h..]));
            let parts = [
                q,
                _mm256_srli_epi16::<2>(q),
                _mm256_srli_epi16::<4>(q),
                _mm256_srli_epi16::<6>(q),
            ];
            for (s, part) in parts.into_iter().enumerate() {
                // u = low 2 bits | high bit << 2, in 0..8; the quant is u - 4.
                let bit = _mm256_set1_epi8((1u8 << (4 * h + s)) as i8);
                let high =
                    _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), bit), four);
                let u = _mm256_or_si256(_mm256_and_si256(part, m2), high);
                let p = _mm256_maddubs_epi16(u, load32(arr32(&x.qs[128 * h + 32 * s..])));
                let g = 8 * h + 2 * s;
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(sc[g], sc[g + 1])));
            }
        }
        // Take 4 Σ_g sc_g bsum_g off (the quants' offset of 4).
        // SAFETY: `sc` is 32 readable bytes; loadu has no alignment requirement.
        let sc16 = unsafe { _mm256_loadu_si256(sc.as_ptr().cast()) };
        let off = _mm256_madd_epi16(load_bsums(x), sc16);
        sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<2>(off));
        let d = _mm256_set1_ps(f16(w.d) * x.d);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}
