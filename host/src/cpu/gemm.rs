//! Batched integer dot products for prefill: a weight row of a 32-element format (Q4_0, Q4_1,
//! Q5_0, Q5_1, Q8_0) against several 8-bit activation rows at once (AVX2).
//!
//! A per-pair dot product unpacks each weight block (nibbles, fifth bits) once per activation
//! row; here a weight row is unpacked once into one byte per element (it stays in L1) and every
//! activation row of the batch is dotted with that, eight blocks' integer sums scaled per FMA. The arithmetic per (block, row) is
//! the same as `quant::vec_dot`'s: the integer sum `Σ q_w·q_x` is exact, scaled by `d_w·d_x` in
//! f32; offsets (Q4_0's 8, Q5_0's 16) and minimums (Q4_1, Q5_1) are applied through the
//! activation block's `s = d_x·Σq_x`. Only the order of the f32 accumulation differs.
//!
//! Layout of the blocks (GGUF, little-endian): Q4_0 `d:f16, qs[16]`; Q4_1 `d, m:f16, qs[16]`;
//! Q5_0 `d, qh:u32, qs[16]`; Q5_1 `d, m, qh, qs[16]`; Q8_0 `d, qs:i8[32]`. Element `j < 16` is the
//! low nibble of `qs[j]`, element `j + 16` its high nibble; bit `j` of `qh` is element `j`'s
//! fifth bit.

use crate::gguf::GgmlType;
use crate::quant::{BlockQ8K, Q8Blocks, f16_to_f32};

/// A 32-element weight format this module handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fmt {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl Fmt {
    pub fn of(ty: GgmlType) -> Option<Fmt> {
        Some(match ty {
            GgmlType::Q4_0 => Fmt::Q4_0,
            GgmlType::Q4_1 => Fmt::Q4_1,
            GgmlType::Q5_0 => Fmt::Q5_0,
            GgmlType::Q5_1 => Fmt::Q5_1,
            GgmlType::Q8_0 => Fmt::Q8_0,
            _ => return None,
        })
    }

    /// Bytes per block of 32.
    pub fn block_bytes(self) -> usize {
        match self {
            Fmt::Q4_0 => 18,
            Fmt::Q4_1 => 20,
            Fmt::Q5_0 => 22,
            Fmt::Q5_1 => 24,
            Fmt::Q8_0 => 34,
        }
    }
}

/// Whether this CPU runs [`dot_rows`] (AVX2, FMA).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has AVX-512 VNNI (with VL), used by [`dot_rows`] when present.
pub fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// An activation row of 8-bit blocks repacked for the interleaved kernel: blocks padded with
/// zero blocks to a multiple of 8, and each group of 8 blocks stored as 8 steps of 32 bytes, step
/// `k` holding bytes `4k .. 4k + 4` of blocks 0..8 in turn. One 32-byte multiply-add per step then
/// leaves block `j`'s partial sum in 32-bit lane `j`, so a group's 8 block sums come out of 8
/// steps in one register, scaled by one FMA, with no horizontal reduction.
pub struct PackedX {
    q: Vec<u8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

/// Block-major bytes (`nb` blocks of 32) to the interleaved layout, padded to `nbp` blocks.
fn interleave(src: &[u8], nb: usize, nbp: usize, dst: &mut Vec<u8>) {
    dst.clear();
    dst.resize(nbp * 32, 0);
    for g in 0..nbp / 8 {
        for j in 0..8 {
            let b = 8 * g + j;
            if b >= nb {
                break;
            }
            for k in 0..8 {
                let from = b * 32 + 4 * k;
                let to = ((g * 8 + k) * 8 + j) * 4;
                dst[to..to + 4].copy_from_slice(&src[from..from + 4]);
            }
        }
    }
}

impl PackedX {
    pub fn new(x: &Q8Blocks) -> Self {
        let nb = x.len();
        let nbp = nb.div_ceil(8) * 8;
        let bytes: Vec<u8> = x.qs().iter().flatten().map(|&q| q as u8).collect();
        let mut q = Vec::new();
        interleave(&bytes, nb, nbp, &mut q);
        let pad = |v: &[f32]| {
            let mut p = v.to_vec();
            p.resize(nbp, 0.0);
            p
        };
        PackedX {
            q,
            d: pad(x.d()),
            s: pad(x.s()),
        }
    }

    fn n_blocks_padded(&self) -> usize {
        self.d.len()
    }
}

/// `dst[r * n + i] = w[r] · xs[i]` for each row `r` of `w` (rows of `row_bytes`) and each of the
/// `n = xs.len()` activation rows. The caller checked that `row_bytes` is a whole number of
/// blocks of `fmt`, that every `xs[i]` was packed from a row of that many blocks, that `dst` is
/// `rows × n`, and that [`available`] is true.
pub fn dot_rows(fmt: Fmt, w: &[u8], row_bytes: usize, xs: &[PackedX], dst: &mut [f32]) {
    dot_rows_with(vnni_available(), fmt, w, row_bytes, xs, dst)
}

/// [`dot_rows`] with the VNNI kernel chosen by the caller (who checked [`vnni_available`] when
/// `vnni` is true).
fn dot_rows_with(
    vnni: bool,
    fmt: Fmt,
    w: &[u8],
    row_bytes: usize,
    xs: &[PackedX],
    dst: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        let n = xs.len();
        let nb = row_bytes / fmt.block_bytes();
        let nbp = nb.div_ceil(8) * 8;
        assert!(
            xs.iter().all(|x| x.n_blocks_padded() == nbp) && dst.len() == w.len() / row_bytes * n,
            "dot_rows: activation rows or output do not match the weights"
        );
        // Every weight row of the tile packed once (it stays in L1), then register tiles of
        // RM weight rows x RN activation rows. The packing buffers are kept per thread.
        thread_local! {
            static PACKED: std::cell::RefCell<(x86::Unpacked, Vec<x86::PackedW>)> =
                std::cell::RefCell::new(Default::default());
        }
        PACKED.with_borrow_mut(|(u, rows)| {
            let n_rows = w.len() / row_bytes;
            if rows.len() < n_rows {
                rows.resize_with(n_rows, Default::default);
            }
            for (row, p) in w.chunks_exact(row_bytes).zip(rows.iter_mut()) {
                // SAFETY: `available()` (AVX2 + FMA) was checked by the caller; the row holds
                // whole blocks (caller's contract).
                unsafe { x86::unpack(fmt, row, u) };
                p.pack(u, fmt == Fmt::Q8_0, vnni);
            }
            tiles(vnni, &rows[..n_rows], xs, n, dst);
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (vnni, fmt, w, row_bytes, xs, dst);
        unreachable!("dot_rows needs AVX2; callers check available()")
    }
}

/// The register tiles over packed weight rows and activation rows.
#[cfg(target_arch = "x86_64")]
fn tiles(vnni: bool, rows: &[x86::PackedW], xs: &[PackedX], n: usize, dst: &mut [f32]) {
    {
        let (rm, rn) = if vnni { (2, 4) } else { (2, 2) };
        for i0 in (0..n).step_by(rn) {
            let cn = (n - i0).min(rn);
            for r0 in (0..rows.len()).step_by(rm) {
                let cm = (rows.len() - r0).min(rm);
                let mut out = [[0.0f32; 4]; 2];
                let ws = &rows[r0..r0 + cm];
                let xg = &xs[i0..i0 + cn];
                // SAFETY: the caller checked the CPU features and the shapes.
                unsafe {
                    if vnni {
                        x86::tile_vnni_dispatch(ws, xg, &mut out);
                    } else {
                        x86::tile_avx2_dispatch(ws, xg, &mut out);
                    }
                }
                for (m, o) in out.iter().enumerate().take(cm) {
                    dst[(r0 + m) * n + i0..][..cn].copy_from_slice(&o[..cn]);
                }
            }
        }
    }
}

/// A K-quant weight format this module handles (256-element super-blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KFmt {
    /// `d, dmin: f16, scales[12] (6-bit scale and min per 32), qs[128]` (4-bit quants).
    Q4K,
    /// `ql[128], qh[64], scales: i8[16] (per 16), d: f16` (6-bit quants, offset 32).
    Q6K,
}

impl KFmt {
    pub fn of(ty: GgmlType) -> Option<KFmt> {
        match ty {
            GgmlType::Q4K => Some(KFmt::Q4K),
            GgmlType::Q6K => Some(KFmt::Q6K),
            _ => None,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            KFmt::Q4K => 144,
            KFmt::Q6K => 210,
        }
    }
}

/// Byte offset of element `e` of super-block `sb` in the K interleaved layout: each half
/// super-block (8 groups of 16) is 4 steps of 32 bytes, step `k` holding bytes `4k .. 4k + 4` of
/// groups 0..8 in turn, so a multiply-add per step leaves group `j`'s partial sum in lane `j`.
fn k_offset(sb: usize, e: usize) -> usize {
    let (g, r) = (e / 16, e % 16);
    let (h, j, k, t) = (g / 8, g % 8, r / 4, r % 4);
    (((sb * 2 + h) * 4 + k) * 8 + j) * 4 + t
}

/// Natural-order bytes (`n_sb` super-blocks of 256) to the K interleaved layout.
fn interleave_k(src: &[u8], dst: &mut Vec<u8>) {
    dst.clear();
    dst.resize(src.len(), 0);
    for (sb, chunk) in src.chunks_exact(256).enumerate() {
        for (e, w) in chunk.chunks_exact(4).enumerate() {
            let to = k_offset(sb, 4 * e);
            dst[to..to + 4].copy_from_slice(w);
        }
    }
}

/// An activation row of K blocks repacked for the interleaved K kernel.
pub struct PackedXK {
    q: Vec<u8>,
    d: Vec<f32>,
    bsums: Vec<[i16; 16]>,
}

impl PackedXK {
    pub fn new(x: &[BlockQ8K]) -> Self {
        let bytes: Vec<u8> = x.iter().flat_map(|b| b.qs.map(|q| q as u8)).collect();
        let mut q = Vec::new();
        interleave_k(&bytes, &mut q);
        PackedXK {
            q,
            d: x.iter().map(|b| b.d).collect(),
            bsums: x.iter().map(|b| b.bsums).collect(),
        }
    }
}

/// [`dot_rows`] for the K formats.
pub fn dot_rows_k(fmt: KFmt, w: &[u8], row_bytes: usize, xs: &[PackedXK], dst: &mut [f32]) {
    dot_rows_k_with(vnni_available(), fmt, w, row_bytes, xs, dst)
}

fn dot_rows_k_with(
    vnni: bool,
    fmt: KFmt,
    w: &[u8],
    row_bytes: usize,
    xs: &[PackedXK],
    dst: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        let n = xs.len();
        let n_sb = row_bytes / fmt.block_bytes();
        assert!(
            xs.iter().all(|x| x.d.len() == n_sb) && dst.len() == w.len() / row_bytes * n,
            "dot_rows_k: activation rows or output do not match the weights"
        );
        thread_local! {
            static PACKED: std::cell::RefCell<(Vec<u8>, Vec<x86::PackedWK>)> =
                std::cell::RefCell::new(Default::default());
        }
        PACKED.with_borrow_mut(|(u, rows)| {
            let n_rows = w.len() / row_bytes;
            if rows.len() < n_rows {
                rows.resize_with(n_rows, Default::default);
            }
            for (row, p) in w.chunks_exact(row_bytes).zip(rows.iter_mut()) {
                // SAFETY: `available()` was checked by the caller; whole super-blocks.
                unsafe { x86::unpack_k(fmt, row, u, p) };
            }
            let rows = &rows[..n_rows];
            let (rm, rn) = if vnni { (2, 4) } else { (2, 2) };
            for i0 in (0..n).step_by(rn) {
                let cn = (n - i0).min(rn);
                for r0 in (0..n_rows).step_by(rm) {
                    let cm = (n_rows - r0).min(rm);
                    let mut out = [[0.0f32; 4]; 2];
                    let (ws, xg) = (&rows[r0..r0 + cm], &xs[i0..i0 + cn]);
                    // SAFETY: features checked by the caller, shapes asserted above.
                    unsafe {
                        if vnni {
                            x86::tile_k_vnni_dispatch(ws, xg, &mut out);
                        } else {
                            x86::tile_k_avx2_dispatch(ws, xg, &mut out);
                        }
                    }
                    for (m, o) in out.iter().enumerate().take(cm) {
                        dst[(r0 + m) * n + i0..][..cn].copy_from_slice(&o[..cn]);
                    }
                }
            }
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (vnni, fmt, w, row_bytes, xs, dst);
        unreachable!("dot_rows_k needs AVX2; callers check available()")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Fmt, KFmt, f16_to_f32};

    #[inline]
    fn f16_at(b: &[u8], at: usize) -> f32 {
        f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
    }

    /// 32 unsigned 4-bit quants: low nibbles of `qs` then high nibbles.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn nibbles(qs: &[u8]) -> __m256i {
        // SAFETY: `qs` has at least 16 bytes (a block's quants); unaligned load.
        let v = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
        let lo = _mm_and_si128(v, _mm_set1_epi8(0x0f));
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), _mm_set1_epi8(0x0f));
        _mm256_set_m128i(hi, lo)
    }

    /// 0x10 in byte `j` where bit `j` of `qh` is set, else 0.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn fifth_bits(qh: u32) -> __m256i {
        // Byte j gets byte j/8 of qh (the shuffle works within 128-bit lanes, and every lane
        // holds all four bytes), then is tested against bit j%8.
        let all = _mm256_set1_epi32(qh as i32);
        let pick = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        );
        let bytes = _mm256_shuffle_epi8(all, pick);
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }

    /// Sum of `a[j] * b[j]` over 32 bytes (a unsigned, b signed) as 8 i32 partial sums.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn dot_u8i8(a: __m256i, b: __m256i) -> __m256i {
        // u8 x i8 pairs into i16: at most 2 * 255 * 127 only when a has 8-bit values, which
        // only the sign-moved Q8_0 path gives (|w| <= 128: 2 * 128 * 127 = 32512, no saturation).
        _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// A weight row unpacked once: one byte per element (unsigned quants, or |w| for Q8_0 with
    /// its signs kept apart), and per block the scale and the factor of the activation's `s`.
    #[derive(Default)]
    pub(super) struct Unpacked {
        q: Vec<u8>,
        /// Q8_0 only: the signed weights' bytes.
        w: Vec<u8>,
        d: Vec<f32>,
        second: Vec<f32>,
    }

    /// Unpacks `row` (whole blocks of `fmt`) into `u`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn unpack(fmt: Fmt, row: &[u8], u: &mut Unpacked) {
        let bb = fmt.block_bytes();
        let nb = row.len() / bb;
        u.q.resize(nb * 32, 0);
        u.d.clear();
        u.second.clear();
        if fmt == Fmt::Q8_0 {
            u.w.resize(nb * 32, 0);
        }
        u.w.truncate(if fmt == Fmt::Q8_0 { nb * 32 } else { 0 });
        for (b, blk) in row.chunks_exact(bb).enumerate() {
            let dw = f16_at(blk, 0);
            let (q, second) = match fmt {
                Fmt::Q4_0 => (nibbles(&blk[2..18]), -8.0 * dw),
                Fmt::Q4_1 => (nibbles(&blk[4..20]), f16_at(blk, 2)),
                Fmt::Q5_0 => {
                    let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                    (
                        _mm256_or_si256(nibbles(&blk[6..22]), fifth_bits(qh)),
                        -16.0 * dw,
                    )
                }
                Fmt::Q5_1 => {
                    let qh = u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
                    (
                        _mm256_or_si256(nibbles(&blk[8..24]), fifth_bits(qh)),
                        f16_at(blk, 2),
                    )
                }
                Fmt::Q8_0 => {
                    // SAFETY: a Q8_0 block has 32 quant bytes after its 2-byte scale; `u.w`
                    // has 32 bytes at block b.
                    let w = unsafe { _mm256_loadu_si256(blk[2..34].as_ptr().cast()) };
                    unsafe { _mm256_storeu_si256(u.w[b * 32..].as_mut_ptr().cast(), w) };
                    (_mm256_sign_epi8(w, w), 0.0)
                }
            };
            // SAFETY: `u.q` has nb * 32 bytes.
            unsafe { _mm256_storeu_si256(u.q[b * 32..].as_mut_ptr().cast(), q) };
            u.d.push(dw);
            u.second.push(second);
        }
    }

    /// A weight row packed for the interleaved kernel (see [`super::PackedX`]): the unsigned
    /// operand, for AVX2's Q8_0 the signed weights apart (their signs move onto the activations),
    /// and per block (padded) the scale and the factor of the activation's `s`.
    #[derive(Default)]
    pub(super) struct PackedW {
        q: Vec<u8>,
        sign: Vec<u8>,
        d: Vec<f32>,
        second: Vec<f32>,
    }

    impl PackedW {
        /// Packs an unpacked row. Q8_0 (`signed`): with VNNI (no 16-bit saturation) the operand is
        /// `w + 128` with `−128·d` added to the activation-sum factor; without, it is `|w|` and the
        /// signs are kept for the activations.
        pub(super) fn pack(&mut self, u: &Unpacked, signed: bool, vnni: bool) {
            let nb = u.d.len();
            let nbp = nb.div_ceil(8) * 8;
            self.d.clear();
            self.d.extend_from_slice(&u.d);
            self.d.resize(nbp, 0.0);
            self.second.clear();
            self.second.extend_from_slice(&u.second);
            self.sign.clear();
            if signed && vnni {
                let biased: Vec<u8> = u.w.iter().map(|&w| (w as i8 as i16 + 128) as u8).collect();
                super::interleave(&biased, nb, nbp, &mut self.q);
                for (s, &d) in self.second.iter_mut().zip(&u.d) {
                    *s = -128.0 * d;
                }
            } else {
                super::interleave(&u.q, nb, nbp, &mut self.q);
                if signed {
                    super::interleave(&u.w, nb, nbp, &mut self.sign);
                }
            }
            self.second.resize(nbp, 0.0);
        }
    }

    /// `Σ_blocks second_w · s_x` (the offset / minimum term), 8 blocks per FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn second_term(w: &PackedW, x: &super::PackedX) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (a, b) in w.second.chunks_exact(8).zip(x.s.chunks_exact(8)) {
            // SAFETY: 8 floats each.
            unsafe {
                acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr()),
                    _mm256_loadu_ps(b.as_ptr()),
                    acc,
                );
            }
        }
        hsum(acc)
    }

    /// [`dot_u8i8`] in one VNNI instruction, accumulated (no 16-bit intermediate).
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    fn dpbusd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, a, b)
    }

    macro_rules! tile_fn {
        ($name:ident, $features:literal, $step:ident) => {
            /// `out[m][n] = w[m] · x[n]` for a register tile of `RM` weight rows and `RN`
            /// activation rows (all packed from rows of the same number of blocks).
            #[target_feature(enable = $features)]
            fn $name<const RM: usize, const RN: usize>(
                w: &[PackedW],
                x: &[super::PackedX],
                out: &mut [[f32; 4]; 2],
            ) {
                let nbp = x[0].d.len();
                let signed = !w[0].sign.is_empty();
                let mut facc = [[_mm256_setzero_ps(); RN]; RM];
                for g in 0..nbp / 8 {
                    let mut iacc = [[_mm256_setzero_si256(); RN]; RM];
                    for k in 0..8 {
                        let off = (g * 8 + k) * 32;
                        // SAFETY: every packed row holds nbp * 32 bytes (asserted by the
                        // caller: same padded block count).
                        let wv: [__m256i; RM] = core::array::from_fn(|m| unsafe {
                            _mm256_loadu_si256(w[m].q[off..off + 32].as_ptr().cast())
                        });
                        let xv: [__m256i; RN] = core::array::from_fn(|n| unsafe {
                            _mm256_loadu_si256(x[n].q[off..off + 32].as_ptr().cast())
                        });
                        for m in 0..RM {
                            let sgn = if signed {
                                // SAFETY: as above, `sign` is packed like `q`.
                                Some(unsafe {
                                    _mm256_loadu_si256(w[m].sign[off..off + 32].as_ptr().cast())
                                })
                            } else {
                                None
                            };
                            for n in 0..RN {
                                let xs = match sgn {
                                    Some(sv) => _mm256_sign_epi8(xv[n], sv),
                                    None => xv[n],
                                };
                                iacc[m][n] = $step(iacc[m][n], wv[m], xs);
                            }
                        }
                    }
                    // SAFETY: 8 floats at block 8g in every padded per-block array.
                    let dw: [__m256; RM] = core::array::from_fn(|m| unsafe {
                        _mm256_loadu_ps(w[m].d[8 * g..8 * g + 8].as_ptr())
                    });
                    let dx: [__m256; RN] = core::array::from_fn(|n| unsafe {
                        _mm256_loadu_ps(x[n].d[8 * g..8 * g + 8].as_ptr())
                    });
                    for m in 0..RM {
                        for n in 0..RN {
                            facc[m][n] = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(iacc[m][n]),
                                _mm256_mul_ps(dw[m], dx[n]),
                                facc[m][n],
                            );
                        }
                    }
                }
                for m in 0..RM {
                    for n in 0..RN {
                        out[m][n] = hsum(facc[m][n]) + second_term(&w[m], &x[n]);
                    }
                }
            }
        };
    }

    /// One AVX2 step: u8 x i8 pairs into i16, pairs of those into i32, accumulated.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn step_avx2(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(acc, dot_u8i8(a, b))
    }

    tile_fn!(tile_avx2, "avx2,fma", step_avx2);
    tile_fn!(tile_vnni, "avx2,fma,avx512f,avx512vl,avx512vnni", dpbusd);

    /// Runs the AVX2 tile kernel instantiated for `w.len()` (1..=2) x `x.len()` (1..=2).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn tile_avx2_dispatch(w: &[PackedW], x: &[super::PackedX], out: &mut [[f32; 4]; 2]) {
        match (w.len(), x.len()) {
            (2, 2) => tile_avx2::<2, 2>(w, x, out),
            (2, _) => tile_avx2::<2, 1>(w, x, out),
            (_, 2) => tile_avx2::<1, 2>(w, x, out),
            _ => tile_avx2::<1, 1>(w, x, out),
        }
    }

    /// Runs the VNNI tile kernel instantiated for `w.len()` (1..=2) x `x.len()` (1..=4).
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
    pub(super) fn tile_vnni_dispatch(w: &[PackedW], x: &[super::PackedX], out: &mut [[f32; 4]; 2]) {
        match (w.len(), x.len()) {
            (2, 4) => tile_vnni::<2, 4>(w, x, out),
            (2, 3) => tile_vnni::<2, 3>(w, x, out),
            (2, 2) => tile_vnni::<2, 2>(w, x, out),
            (2, _) => tile_vnni::<2, 1>(w, x, out),
            (_, 4) => tile_vnni::<1, 4>(w, x, out),
            (_, 3) => tile_vnni::<1, 3>(w, x, out),
            (_, 2) => tile_vnni::<1, 2>(w, x, out),
            _ => tile_vnni::<1, 1>(w, x, out),
        }
    }

    /// A K-quant weight row packed for the interleaved kernel: the unsigned quants (one byte
    /// each, K interleaved layout), and per super-block `d · scale` of its 16 groups (f32), the
    /// 16 coefficients of the activation's group sums in the minimum term, and that term's factor.
    #[derive(Default)]
    pub(super) struct PackedWK {
        q: Vec<u8>,
        dsc: Vec<[f32; 16]>,
        mins: Vec<[i16; 16]>,
        fmin: Vec<f32>,
    }

    /// Unpacks and packs one K row; `u` is scratch for the natural-order quants.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn unpack_k(fmt: KFmt, row: &[u8], u: &mut Vec<u8>, p: &mut PackedWK) {
        let bb = fmt.block_bytes();
        let nb = row.len() / bb;
        u.clear();
        u.resize(nb * 256, 0);
        p.dsc.clear();
        p.mins.clear();
        p.fmin.clear();
        let low4 = _mm256_set1_epi8(0x0f);
        for (b, blk) in row.chunks_exact(bb).enumerate() {
            let out = &mut u[b * 256..(b + 1) * 256];
            // Per group of 16: the scale multiplying Σ q·x and the coefficient of the group's
            // activation sum in the minimum term.
            let (sc16, cg16, d, fmin): ([i16; 16], [i16; 16], f32, f32) = match fmt {
                KFmt::Q4K => {
                    let d = f16_at(blk, 0);
                    let dmin = f16_at(blk, 2);
                    let scales: &[u8; 12] = blk[4..16].try_into().unwrap_or(&[0; 12]);
                    let sm = kernels_gpu::quant::k_scales_mins(scales);
                    // Chunk c of 64 elements: 32 low nibbles (sub-block 2c), 32 high (2c+1).
                    for c in 0..4 {
                        // SAFETY: qs has 128 bytes at 16..144; `out` has 256.
                        unsafe {
                            let v = _mm256_loadu_si256(blk[16 + 32 * c..].as_ptr().cast());
                            let lo = _mm256_and_si256(v, low4);
                            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low4);
                            _mm256_storeu_si256(out[64 * c..].as_mut_ptr().cast(), lo);
                            _mm256_storeu_si256(out[64 * c + 32..].as_mut_ptr().cast(), hi);
                        }
                    }
                    let sc = core::array::from_fn(|g| sm[g / 2] as i16);
                    let m = core::array::from_fn(|g| sm[8 + g / 2] as i16);
                    (sc, m, d, -dmin)
                }
                KFmt::Q6K => {
                    let d = f16_at(blk, 208);
                    // Half h (128 elements): element 32k + l (k in 0..4) has its low 4 bits in
                    // ql[64h + 32(k%2) + l] (nibble k/2) and its high 2 bits in qh[32h + l]
                    // (bits 2k, 2k+1); the stored value is the quant + 32.
                    for h in 0..2 {
                        // SAFETY: ql is bytes 0..128, qh 128..192; `out` has 256.
                        unsafe {
                            let qh = _mm256_loadu_si256(blk[128 + 32 * h..].as_ptr().cast());
                            for k in 0..4 {
                                let ql = _mm256_loadu_si256(
                                    blk[64 * h + 32 * (k % 2)..].as_ptr().cast(),
                                );
                                let lo = if k < 2 {
                                    _mm256_and_si256(ql, low4)
                                } else {
                                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql), low4)
                                };
                                let hi = match k {
                                    0 => qh,
                                    1 => _mm256_srli_epi16::<2>(qh),
                                    2 => _mm256_srli_epi16::<4>(qh),
                                    _ => _mm256_srli_epi16::<6>(qh),
                                };
                                let hi = _mm256_slli_epi16::<4>(_mm256_and_si256(
                                    hi,
                                    _mm256_set1_epi8(3),
                                ));
                                let q = _mm256_or_si256(lo, hi);
                                _mm256_storeu_si256(out[128 * h + 32 * k..].as_mut_ptr().cast(), q);
                            }
                        }
                    }
                    let sc: [i16; 16] = core::array::from_fn(|g| blk[192 + g] as i8 as i16);
                    (sc, sc, d, -32.0 * d)
                }
            };
            // d · scale is exact in f32 (an 11-bit mantissa times a scale of at most 7 bits).
            p.dsc.push(core::array::from_fn(|g| d * sc16[g] as f32));
            p.mins.push(cg16);
            p.fmin.push(fmin);
        }
        super::interleave_k(u, &mut p.q);
    }

    /// `Σ_superblocks fmin · d_x · Σ_groups coef · bsum` (the minimum / offset term).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn min_term(w: &PackedWK, x: &super::PackedXK) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for sb in 0..w.fmin.len() {
            // SAFETY: 16 i16 each.
            let m = unsafe {
                _mm256_madd_epi16(
                    _mm256_loadu_si256(w.mins[sb].as_ptr().cast()),
                    _mm256_loadu_si256(x.bsums[sb].as_ptr().cast()),
                )
            };
            acc = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(m),
                _mm256_set1_ps(w.fmin[sb] * x.d[sb]),
                acc,
            );
        }
        hsum(acc)
    }

    macro_rules! tile_k_fn {
        ($name:ident, $features:literal, $step:ident) => {
            /// `out[m][n] = w[m] · x[n]` for a register tile of K rows.
            #[target_feature(enable = $features)]
            fn $name<const RM: usize, const RN: usize>(
                w: &[PackedWK],
                x: &[super::PackedXK],
                out: &mut [[f32; 4]; 2],
            ) {
                let n_sb = x[0].d.len();
                let mut facc = [[_mm256_setzero_ps(); RN]; RM];
                for sb in 0..n_sb {
                    // SAFETY (whole loop body): every packed row holds n_sb super-blocks (the
                    // caller asserted equal counts); offsets stay inside super-block sb.
                    let dx: [__m256; RN] = core::array::from_fn(|n| _mm256_set1_ps(x[n].d[sb]));
                    for h in 0..2 {
                        let mut iacc = [[_mm256_setzero_si256(); RN]; RM];
                        for k in 0..4 {
                            let off = ((sb * 2 + h) * 4 + k) * 32;
                            let wv: [__m256i; RM] = core::array::from_fn(|m| unsafe {
                                _mm256_loadu_si256(w[m].q[off..off + 32].as_ptr().cast())
                            });
                            let xv: [__m256i; RN] = core::array::from_fn(|n| unsafe {
                                _mm256_loadu_si256(x[n].q[off..off + 32].as_ptr().cast())
                            });
                            for m in 0..RM {
                                for n in 0..RN {
                                    iacc[m][n] = $step(iacc[m][n], wv[m], xv[n]);
                                }
                            }
                        }
                        let dsc: [__m256; RM] = core::array::from_fn(|m| unsafe {
                            _mm256_loadu_ps(w[m].dsc[sb][8 * h..8 * h + 8].as_ptr())
                        });
                        for m in 0..RM {
                            for n in 0..RN {
                                facc[m][n] = _mm256_fmadd_ps(
                                    _mm256_cvtepi32_ps(iacc[m][n]),
                                    _mm256_mul_ps(dsc[m], dx[n]),
                                    facc[m][n],
                                );
                            }
                        }
                    }
                }
                for m in 0..RM {
                    for n in 0..RN {
                        out[m][n] = hsum(facc[m][n]) + min_term(&w[m], &x[n]);
                    }
                }
            }
        };
    }

    tile_k_fn!(tile_k_avx2, "avx2,fma", step_avx2);
    tile_k_fn!(tile_k_vnni, "avx2,fma,avx512f,avx512vl,avx512vnni", dpbusd);

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn tile_k_avx2_dispatch(
        w: &[PackedWK],
        x: &[super::PackedXK],
        out: &mut [[f32; 4]; 2],
    ) {
        match (w.len(), x.len()) {
            (2, 2) => tile_k_avx2::<2, 2>(w, x, out),
            (2, _) => tile_k_avx2::<2, 1>(w, x, out),
            (_, 2) => tile_k_avx2::<1, 2>(w, x, out),
            _ => tile_k_avx2::<1, 1>(w, x, out),
        }
    }

    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
    pub(super) fn tile_k_vnni_dispatch(
        w: &[PackedWK],
        x: &[super::PackedXK],
        out: &mut [[f32; 4]; 2],
    ) {
        match (w.len(), x.len()) {
            (2, 4) => tile_k_vnni::<2, 4>(w, x, out),
            (2, 3) => tile_k_vnni::<2, 3>(w, x, out),
            (2, 2) => tile_k_vnni::<2, 2>(w, x, out),
            (2, _) => tile_k_vnni::<2, 1>(w, x, out),
            (_, 4) => tile_k_vnni::<1, 4>(w, x, out),
            (_, 3) => tile_k_vnni::<1, 3>(w, x, out),
            (_, 2) => tile_k_vnni::<1, 2>(w, x, out),
            _ => tile_k_vnni::<1, 1>(w, x, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{QuantizedVec, vec_dot};

    /// SplitMix64.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn uniform(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
    }

    /// Random bytes with sane f16 scales (and minimums) in each block.
    fn random_row(fmt: Fmt, n_blocks: usize, rng: &mut Rng) -> Vec<u8> {
        let bb = fmt.block_bytes();
        let mut v: Vec<u8> = (0..n_blocks * bb).map(|_| rng.next() as u8).collect();
        for blk in v.chunks_exact_mut(bb) {
            let d = half::f16::from_f32(0.01 + 0.02 * rng.uniform().abs()).to_le_bytes();
            blk[..2].copy_from_slice(&d);
            if matches!(fmt, Fmt::Q4_1 | Fmt::Q5_1) {
                let m = half::f16::from_f32(0.05 * rng.uniform()).to_le_bytes();
                blk[2..4].copy_from_slice(&m);
            }
        }
        v
    }

    #[test]
    fn dot_rows_matches_vec_dot_for_every_format_and_group_size() {
        if !available() {
            eprintln!("no AVX2 on this CPU: dot_rows is not used here");
            return;
        }
        let mut rng = Rng(7);
        for (fmt, ty) in [
            (Fmt::Q4_0, GgmlType::Q4_0),
            (Fmt::Q4_1, GgmlType::Q4_1),
            (Fmt::Q5_0, GgmlType::Q5_0),
            (Fmt::Q5_1, GgmlType::Q5_1),
            (Fmt::Q8_0, GgmlType::Q8_0),
        ] {
            for (n_blocks, rows, n) in [(28, 3, 9), (1, 1, 1), (7, 2, 4), (5, 5, 6), (16, 2, 3)] {
                let cols = n_blocks * 32;
                let w = random_row(fmt, n_blocks * rows, &mut rng);
                let xs: Vec<QuantizedVec> = (0..n)
                    .map(|_| {
                        let x: Vec<f32> = (0..cols).map(|_| 3.0 * rng.uniform()).collect();
                        QuantizedVec::for_weights(ty, &x).unwrap()
                    })
                    .collect();
                let q8: Vec<&Q8Blocks> = xs
                    .iter()
                    .map(|x| match x {
                        QuantizedVec::Q8(b) => b,
                        _ => unreachable!("32-element formats take Q8 activations"),
                    })
                    .collect();
                let rb = n_blocks * fmt.block_bytes();
                for vnni in [false, true] {
                    if vnni && !vnni_available() {
                        continue;
                    }
                    let mut dst = vec![f32::NAN; rows * n];
                    let packed: Vec<PackedX> = q8.iter().map(|x| PackedX::new(x)).collect();
                    dot_rows_with(vnni, fmt, &w, rb, &packed, &mut dst);
                    for r in 0..rows {
                        for i in 0..n {
                            let want = vec_dot(ty, &w[r * rb..(r + 1) * rb], &xs[i]).unwrap();
                            let got = dst[r * n + i];
                            // Same integer sums; the f32 accumulation order differs.
                            let tol = 1e-5 * (1.0 + want.abs()) * n_blocks as f32;
                            assert!(
                                (got - want).abs() <= tol,
                                "{fmt:?} vnni {vnni} blocks {n_blocks} row {r} col {i}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn dot_rows_k_matches_vec_dot() {
        if !available() {
            eprintln!("no AVX2 on this CPU: dot_rows_k is not used here");
            return;
        }
        let mut rng = Rng(11);
        for (fmt, ty) in [(KFmt::Q4K, GgmlType::Q4K), (KFmt::Q6K, GgmlType::Q6K)] {
            for (n_blocks, rows, n) in [(19, 3, 5), (1, 2, 1), (4, 1, 7)] {
                let bb = fmt.block_bytes();
                let mut w: Vec<u8> = (0..n_blocks * rows * bb)
                    .map(|_| rng.next() as u8)
                    .collect();
                for blk in w.chunks_exact_mut(bb) {
                    let d = half::f16::from_f32(0.001 + 0.002 * rng.uniform().abs());
                    let at = if fmt == KFmt::Q4K { 0 } else { 208 };
                    blk[at..at + 2].copy_from_slice(&d.to_le_bytes());
                    if fmt == KFmt::Q4K {
                        let dmin = half::f16::from_f32(0.001 * rng.uniform().abs());
                        blk[2..4].copy_from_slice(&dmin.to_le_bytes());
                    }
                }
                let cols = n_blocks * 256;
                let xs: Vec<QuantizedVec> = (0..n)
                    .map(|_| {
                        let x: Vec<f32> = (0..cols).map(|_| 2.0 * rng.uniform()).collect();
                        QuantizedVec::for_weights(ty, &x).unwrap()
                    })
                    .collect();
                let qk: Vec<&[BlockQ8K]> = xs
                    .iter()
                    .map(|x| match x {
                        QuantizedVec::Q8K(b) => b.as_slice(),
                        _ => unreachable!("K formats take Q8K activations"),
                    })
                    .collect();
                let rb = n_blocks * bb;
                let packed: Vec<PackedXK> = qk.iter().map(|x| PackedXK::new(x)).collect();
                for vnni in [false, true] {
                    if vnni && !vnni_available() {
                        continue;
                    }
                    let mut dst = vec![f32::NAN; rows * n];
                    dot_rows_k_with(vnni, fmt, &w, rb, &packed, &mut dst);
                    for r in 0..rows {
                        for i in 0..n {
                            let want = vec_dot(ty, &w[r * rb..(r + 1) * rb], &xs[i]).unwrap();
                            let got = dst[r * n + i];
                            let tol = 1e-5 * (1.0 + want.abs()) * n_blocks as f32;
                            assert!(
                                (got - want).abs() <= tol,
                                "{fmt:?} vnni {vnni} blocks {n_blocks} row {r} col {i}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
