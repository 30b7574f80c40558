//! AVX2 dot products (x86_64 with AVX2, FMA and F16C, detected at run time).
//!
//! Per block: the weight quants are unpacked to unsigned bytes, multiplied with the signed
//! activation bytes by `vpmaddubsw` (u8 x i8 -> pairs summed in i16; never saturates here: at most
//! 63 * 127 * 2), widened and summed by `vpmaddwd` (with 1, or with the K-quants' group scales),
//! then the weights' offset is taken off in integers using the activation sums. The eight i32
//! lanes are converted to f32 and accumulated with one FMA by `d_w * d_x`; a horizontal sum ends
//! the row. Same integer sums as the scalar code, different float summation order.

use std::arch::x86_64::*;

use super::{Kernel, blocks, scalar};
use crate::gguf::GgmlType;
use crate::quant::{BlockQ8, BlockQ8K};
use kernels_gpu::quant::{
    BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0,
    k_scales_mins,
};

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
        // No SIMD version (no target model uses them): the scalar code.
        GgmlType::Q2K | GgmlType::Q3K => scalar::kernel(ty),
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
    let q = load16(qs);
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(q), q);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
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

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_0(row: &[u8], x: &[BlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    // Quants are stored + 8: Σ d_w d_x (q - 8) x = Σ d_w d_x q x - 8 Σ d_w (d_x Σx).
    let mut off = 0.0f32;
    for (w, x) in blocks::<32, BlockQ4_0>(row).iter().zip(x) {
        let p = dot_u8i8(nibbles(&w.qs), load32(&x.qs));
        let dw = f16(w.d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dw * x.d), _mm256_cvtepi32_ps(p), acc);
        off += dw * x.s;
    }
    hsum_ps(acc) - 8.0 * off
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_1(row: &[u8], x: &[BlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summ = 0.0f32;
    for (w, x) in blocks::<32, BlockQ4_1>(row).iter().zip(x) {
        let p = dot_u8i8(nibbles(&w.qs), load32(&x.qs));
        let d = _mm256_set1_ps(f16(w.d) * x.d);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
        summ += f16(w.m) * x.s;
    }
    hsum_ps(acc) + summ
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_0(row: &[u8], x: &[BlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    // Quants are stored + 16: Σ d_w d_x (q - 16) x = Σ d_w d_x q x - 16 Σ d_w (d_x Σx).
    let mut off = 0.0f32;
    for (w, x) in blocks::<32, BlockQ5_0>(row).iter().zip(x) {
        let q = _mm256_or_si256(nibbles(&w.qs), fifth_bits(w.qh()));
        let p = dot_u8i8(q, load32(&x.qs));
        let dw = f16(w.d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dw * x.d), _mm256_cvtepi32_ps(p), acc);
        off += dw * x.s;
    }
    hsum_ps(acc) - 16.0 * off
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_1(row: &[u8], x: &[BlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summ = 0.0f32;
    for (w, x) in blocks::<32, BlockQ5_1>(row).iter().zip(x) {
        let q = _mm256_or_si256(nibbles(&w.qs), fifth_bits(w.qh()));
        let p = dot_u8i8(q, load32(&x.qs));
        let d = _mm256_set1_ps(f16(w.d) * x.d);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
        summ += f16(w.m) * x.s;
    }
    hsum_ps(acc) + summ
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0(row: &[u8], x: &[BlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (w, x) in blocks::<32, BlockQ8_0>(row).iter().zip(x) {
        let a = load32(&w.qs);
        let b = load32(&x.qs);
        // i8 x i8 through u8 x i8: |a| times b with a's sign moved onto b.
        let p = dot_u8i8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
        let d = _mm256_set1_ps(f16(w.d) * x.d);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    hsum_ps(acc)
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
        // SAFETY: bsums is 32 readable bytes; loadu has no alignment requirement.
        let bs = unsafe { _mm256_loadu_si256(x.bsums.as_ptr().cast()) };
        let sc16 = _mm256_cvtepi8_epi16(load16(&w.scales));
        let off = _mm256_madd_epi16(bs, sc16);
        sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<5>(off));
        let d = _mm256_set1_ps(f16(w.d) * x.d);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}
