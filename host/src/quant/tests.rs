//! Unit tests of the block formats' internal consistency and of the shape checks. Bit-exactness
//! against an independent reference (gguf-py) is checked in spec-tests/tests/quant_reference.rs.

use super::*;
use crate::gguf::GgmlType;
use proptest::prelude::*;

#[test]
fn f16_conversion_matches_half_for_every_bit_pattern() {
    for h in 0..=u16::MAX {
        let ours = f16_to_f32(h);
        let theirs = half::f16::from_bits(h).to_f32();
        if theirs.is_nan() {
            assert!(ours.is_nan(), "{h:#06x}: expected NaN, got {ours}");
            assert_eq!(
                ours.to_bits() >> 31,
                theirs.to_bits() >> 31,
                "{h:#06x}: NaN sign"
            );
        } else {
            assert_eq!(ours.to_bits(), theirs.to_bits(), "{h:#06x}");
        }
    }
}

#[test]
fn bf16_conversion_matches_half_for_every_bit_pattern() {
    for h in 0..=u16::MAX {
        let ours = bf16_to_f32(h);
        let theirs = half::bf16::from_bits(h).to_f32();
        if theirs.is_nan() {
            assert!(ours.is_nan(), "{h:#06x}");
        } else {
            assert_eq!(ours.to_bits(), theirs.to_bits(), "{h:#06x}");
        }
    }
}

#[test]
fn cast_blocks_checks_length_and_alignment() {
    let buf = [0x1234u16; 40]; // 80 bytes, 2-byte aligned
    let bytes: Vec<u8> = buf.iter().flat_map(|v| v.to_le_bytes()).collect();
    let aligned: &[u8] = {
        // SAFETY: viewing initialized u16s as bytes (u8 has alignment 1).
        unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), 2 * buf.len()) }
    };
    let blocks: &[BlockQ4_0] = cast_blocks(&aligned[..72]).unwrap();
    assert_eq!(blocks.len(), 4);
    assert_eq!(blocks_as_bytes(blocks), &bytes[..72]);
    assert_eq!(
        cast_blocks::<32, BlockQ4_0>(&aligned[..71]),
        Err(CastError::Length {
            len: 71,
            block_bytes: 18
        })
    );
    assert!(matches!(
        cast_blocks::<32, BlockQ4_0>(&aligned[1..73]),
        Err(CastError::Misaligned { align: 2, .. })
    ));
    let b: BlockQ4_0 = read_block(&aligned[1..]).unwrap();
    assert_eq!(b.d, 0x3412); // read at an odd offset
    assert!(read_block::<32, BlockQ4_0>(&aligned[..17]).is_none());
}

#[test]
fn dequantize_row_refuses_bad_shapes() {
    let mut out = vec![0.0f32; 48];
    assert_eq!(
        dequantize_row(GgmlType::Q4_0, &[0; 36], &mut out),
        Err(QuantError::PartialBlock {
            ty: GgmlType::Q4_0,
            n: 48,
            block_size: 32
        })
    );
    let mut out = vec![0.0f32; 64];
    assert_eq!(
        dequantize_row(GgmlType::Q4_0, &[0; 35], &mut out),
        Err(QuantError::ByteLength {
            ty: GgmlType::Q4_0,
            n: 64,
            expected: 36,
            found: 35
        })
    );
    let mut out = vec![0.0f32; 256];
    let err = dequantize_row(GgmlType::Q6K, &[0; 211], &mut out).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Q6_K: 256 elements take 210 bytes, but 211 bytes were given"
    );
    let mut out = vec![0.0f32; 3];
    assert!(dequantize_row(GgmlType::F16, &[0; 6], &mut out).is_ok());
    assert!(dequantize_row(GgmlType::F32, &[0; 6], &mut out).is_err());
}

/// Random bytes for `n` blocks of `ty` whose f16 fields are finite and small (|x| in [2^-12, 4)),
/// so every decoded value is finite.
pub(crate) fn random_blocks(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let bb = ty.block_bytes();
    let mut out: Vec<u8> = (0..n * bb).map(|_| next() as u8).collect();
    for b in out.chunks_exact_mut(bb) {
        for &off in f16_offsets(ty) {
            let r = next();
            // exponent 3..=16 (2^-12 .. 2^1), random mantissa and sign
            let exp = 3 + (r % 14) as u16;
            let h = ((r >> 8) as u16 & 0x8000) | (exp << 10) | ((r >> 20) as u16 & 0x3ff);
            b[off..off + 2].copy_from_slice(&h.to_le_bytes());
        }
    }
    out
}

/// Byte offsets of the f16 fields inside one block of `ty`.
pub(crate) fn f16_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => &[],
    }
}

/// `value(i)`, `quant(i)` and `dequantize_sub(j)` agree with `dequantize` (bit for bit).
fn check_accessors<const QK: usize, B: Block<QK>>(
    bytes: &[u8],
    value: impl Fn(&B, usize) -> f32,
    sub: Option<fn(&B, usize, &mut [f32; 32])>,
) {
    for chunk in bytes.chunks_exact(B::BYTES) {
        let b: B = read_block(chunk).unwrap();
        let mut all = [0.0f32; QK];
        b.dequantize(&mut all);
        for (i, v) in all.iter().enumerate() {
            assert_eq!(
                v.to_bits(),
                value(&b, i).to_bits(),
                "{} element {i}",
                B::NAME
            );
        }
        if let Some(sub) = sub {
            for j in 0..QK / 32 {
                let mut part = [0.0f32; 32];
                sub(&b, j, &mut part);
                for l in 0..32 {
                    assert_eq!(
                        part[l].to_bits(),
                        all[32 * j + l].to_bits(),
                        "{} sub {j}",
                        B::NAME
                    );
                }
            }
        }
    }
}

#[test]
fn accessors_agree_with_dequantize() {
    for seed in 0..20 {
        let r = |ty| random_blocks(ty, 4, seed);
        check_accessors::<32, BlockQ4_0>(&r(GgmlType::Q4_0), |b, i| b.value(i), None);
        check_accessors::<32, BlockQ4_1>(&r(GgmlType::Q4_1), |b, i| b.value(i), None);
        check_accessors::<32, BlockQ5_0>(&r(GgmlType::Q5_0), |b, i| b.value(i), None);
        check_accessors::<32, BlockQ5_1>(&r(GgmlType::Q5_1), |b, i| b.value(i), None);
        check_accessors::<32, BlockQ8_0>(&r(GgmlType::Q8_0), |b, i| b.value(i), None);
        check_accessors::<256, BlockQ2K>(
            &r(GgmlType::Q2K),
            |b, i| b.value(i),
            Some(BlockQ2K::dequantize_sub),
        );
        check_accessors::<256, BlockQ3K>(
            &r(GgmlType::Q3K),
            |b, i| b.value(i),
            Some(BlockQ3K::dequantize_sub),
        );
        check_accessors::<256, BlockQ4K>(
            &r(GgmlType::Q4K),
            |b, i| b.value(i),
            Some(BlockQ4K::dequantize_sub),
        );
        check_accessors::<256, BlockQ5K>(
            &r(GgmlType::Q5K),
            |b, i| b.value(i),
            Some(BlockQ5K::dequantize_sub),
        );
        check_accessors::<256, BlockQ6K>(
            &r(GgmlType::Q6K),
            |b, i| b.value(i),
            Some(BlockQ6K::dequantize_sub),
        );
    }
}

/// `quants()` of the 32-element formats agrees with `quant(i)`, and the quants stay in range.
#[test]
fn quants_agree_with_quant() {
    fn check<const QK: usize, B: Block<QK>>(
        ty: GgmlType,
        quant: impl Fn(&B, usize) -> i32,
        quants: impl Fn(&B, &mut [i8; 32]),
        range: std::ops::Range<i32>,
    ) {
        for seed in 0..10 {
            let bytes = random_blocks(ty, 8, seed);
            for chunk in bytes.chunks_exact(B::BYTES) {
                let b: B = read_block(chunk).unwrap();
                let mut q = [0i8; 32];
                quants(&b, &mut q);
                for (i, &qi) in q.iter().enumerate() {
                    assert_eq!(qi as i32, quant(&b, i), "{ty} {i}");
                    assert!(range.contains(&(qi as i32)), "{ty} {i}: {qi}");
                }
            }
        }
    }
    check::<32, BlockQ4_0>(GgmlType::Q4_0, |b, i| b.quant(i), |b, q| b.quants(q), -8..8);
    check::<32, BlockQ4_1>(GgmlType::Q4_1, |b, i| b.quant(i), |b, q| b.quants(q), 0..16);
    check::<32, BlockQ5_0>(
        GgmlType::Q5_0,
        |b, i| b.quant(i),
        |b, q| b.quants(q),
        -16..16,
    );
    check::<32, BlockQ5_1>(GgmlType::Q5_1, |b, i| b.quant(i), |b, q| b.quants(q), 0..32);
}

proptest! {
    /// dequantize_row reads blocks at any alignment and gives the same values.
    #[test]
    fn dequantize_row_is_alignment_independent(ty_idx in 0usize..13, n_blocks in 1usize..5, seed in any::<u64>()) {
        let ty = GgmlType::ALL[ty_idx];
        let n = n_blocks * if ty.is_quantized() { ty.block_size() } else { 32 };
        let bytes = if ty.is_quantized() {
            random_blocks(ty, n_blocks, seed)
        } else {
            // Finite small values of the float types.
            let vals: Vec<f32> = (0..n).map(|i| ((seed as usize ^ i) % 1000) as f32 / 37.0 - 13.0).collect();
            match ty {
                GgmlType::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
                GgmlType::F16 => vals.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
                _ => vals.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
            }
        };
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(&bytes);
        let a = dequantize_row_to_vec(ty, &bytes, n).unwrap();
        let b = dequantize_row_to_vec(ty, &shifted[1..], n).unwrap();
        prop_assert!(a.iter().all(|v| v.is_finite()));
        prop_assert_eq!(a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), b.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }
}

#[test]
fn k_scales_mins_agrees_with_k_scale_min() {
    use kernels_gpu::quant::{k_scale_min, k_scales_mins};
    for seed in 0..200u64 {
        let bytes = random_blocks(GgmlType::Q4K, 1, seed);
        let scales: [u8; 12] = bytes[4..16].try_into().unwrap();
        let all = k_scales_mins(&scales);
        for j in 0..8 {
            assert_eq!(
                (all[j], all[8 + j]),
                k_scale_min(&scales, j),
                "seed {seed} j {j}"
            );
        }
    }
}
