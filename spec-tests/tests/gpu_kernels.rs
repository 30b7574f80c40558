//! Property tests of every GPU kernel against its CPU reference, on random inputs (never zeros) of
//! the real models' shapes (896, 128, 4864, 151936, 49152, 576, …), rows that are not multiples of
//! 256, sequence lengths from 1 to 4096. Every output buffer is poisoned (NaN) before the launch,
//! so an element the kernel fails to write fails the test; NaN never passes.
//!
//! Tolerances, per kernel (`atol` is relative to the RMS of the reference):
//! - `add`, `rope`, `kv_append`, `dequant`/`embedding`, the matvec bias/residual epilogues
//!   (against the plain matvec plus the addition): bit-exact. The same IEEE operations in the
//!   same order (no fused multiply-add: the PTX uses `.rn` operations, which ptxas never fuses);
//!   the RoPE table holds the CPU's own f64 angles rounded once.
//! - `rms_norm`: rtol 1e-4. The sum of squares is summed in a different order (a tree on the GPU,
//!   sequential on the CPU); for n ≤ 4864 positive terms the typical difference is ~sqrt(n)·2^-24
//!   ≈ 4e-6 relative (worst case n·2^-24 ≈ 3e-4 is never approached on random data).
//! - `swiglu`: rtol 1e-5. `e^x` is `ex2.approx` (≈2^-21 relative) after scaling the argument
//!   (|g|·2^-24); inputs are within ±8, so ≤ 1e-6, with margin.
//! - `matvec`: |err| ≤ 1e-5·Σ|w·x| against an f64 dot of the CPU-dequantized row: the rigorous
//!   bound for f32 accumulation in 32 lanes of ≤ 152 terms plus a 5-level tree is
//!   (152 + 5)·2^-24 ≈ 9.4e-6. The fused launches with the RMSNorm folded in (`matvec_qkv`,
//!   `matvec_swiglu`): 2e-5·Σ|w·xn| against f64 (`normed_matvec_ref`), SwiGLU's error propagated.
//! - `attention` (decode and prefill): atol 1e-4·rms, rtol 1e-4. K and V are drawn exactly
//!   representable in f16 so the cache rounding is exact; what remains is `ex2.approx` and a
//!   different summation order of up to 4096 softmax terms (typically ~sqrt(n)·2^-24 ≈ 4e-6).
//! - `f32_to_f16x3` and `dequant` to the split-f16 layout: bit-exact against the CPU split
//!   (`host::cuda::gemm::split_f16x3`: the same f16 roundings of the same f32 values).
//! - `F16x3` GEMM (split f16, f32 data): |err| ≤ 1e-5·Σ|w·x| against f64 on the unrounded
//!   inputs — the operand representation contributes ≤ 3·2^-22 ≈ 7.2e-7·Σ|w·x|
//!   (`kernels-gpu/src/split.rs`), the f32 accumulation of `3k` products on tensor cores the rest
//!   (measured ≤ 7e-6 of max|y| for the f16 GEMM, docs/CUBLAS.md) — and its worst error at most
//!   1/10 of the plain f16 GEMM's on the same data (a bound the plain GEMM cannot meet).
//! - `argmax`: the same index. `sample`: the drawn id is among the host sampler's candidates
//!   (`host::sample::candidates`: penalty, top-k, top-p, min-p in f64) and its interval of their
//!   probabilities contains `u` up to 1e-5; the penalized logits equal the host's bit for bit; the
//!   choice joins the penalty window.

mod gpu_common;

use cudarc::driver::CudaSlice;
use gpu_common::{
    Rng, assert_bits_eq, assert_close, download, gpu, poisoned, random, random_f16_exact, upload,
};
use host::cpu;
use host::cuda::gemm::{SplitOperand, split_f16x3};
use host::cuda::ops::{
    self, DecodeAt, DequantOut, DeviceTensor, KvElem, KvLayer, KvShape, MatvecOut, NormedInput,
    RopeTable, SampleParams,
};
use host::gguf::GgmlType;
use host::model::RopeStyle;
use host::sample::{SamplerConfig, candidates};
use proptest::prelude::*;

fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        // A failing GPU case is expensive to shrink; a few steps give a readable counterexample.
        max_shrink_iters: 8,
        ..ProptestConfig::default()
    }
}

/// Row lengths of the real models plus odd ones (not multiples of 256 or even of 32).
const ROW_LENS: &[usize] = &[896, 576, 4864, 1536, 128, 64, 192, 1000, 33, 1];

proptest! {
    #![proptest_config(cfg(12))]

    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
    fn rms_norm_matches_cpu(
        n in prop::sample::select(ROW_LENS),
        rows in prop::sample::select(&[1usize, 3, 17, 512][..]),
        seed in any::<u64>(),
    ) {
        let g = gpu();
        let mut rng = Rng::new(seed);
        let x = random(&mut rng, rows * n, 4.0);
        let w: Vec<f32> = (0..n).map(|_| 1.0 + 0.5 * rng.uniform()).collect();
        let eps = 1e-6;
        let mut want = vec![0.0; x.len()];
        cpu::rms_norm(&x, &w, eps, &mut want);
        let (dx, dw) = (upload(&g, &x), upload(&g, &w));
        let mut out = poisoned(&g, x.len(), f32::NAN);
        ops::rms_norm(&g, &dx.as_view(), &dw.as_view(), eps, &mut out.as_view_mut()).unwrap();
        assert_close(&format!("rms_norm n={n} rows={rows}"), &download(&g, &out), &want, 1e-6, 1e-4);
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
    fn add_residual_and_bias_are_exact(
        m in prop::sample::select(ROW_LENS),
        rows in prop::sample::select(&[1usize, 2, 7, 512][..]),
        seed in any::<u64>(),
    ) {
        let g = gpu();
        let mut rng = Rng::new(seed);
        let dst = random(&mut rng, rows * m, 3.0);
        for src_len in [m, rows * m] {
            // src_len = m: a bias repeated over the rows; = rows * m: the residual add.
            let src = random(&mut rng, src_len, 1.0);
            let mut want = dst.clone();
            cpu::add(&mut want, &src);
            let mut d = upload(&g, &dst);
            ops::add(&g, &mut d.as_view_mut(), &upload(&g, &src).as_view()).unwrap();
            assert_bits_eq(&format!("add m={m} rows={rows} src={src_len}"), &download(&g, &d), &want);
        }
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
    fn swiglu_matches_cpu(
        n in prop::sample::select(&[4864usize, 1536, 4864 * 7, 1000, 1][..]),
        seed in any::<u64>(),
    ) {
        let g = gpu();
        let mut rng = Rng::new(seed);
        let gate = random(&mut rng, n, 8.0);
        let up = random(&mut rng, n, 2.0);
        let mut want = vec![0.0; n];
        cpu::swiglu(&gate, &up, &mut want);
        let mut out = poisoned(&g, n, f32::NAN);
        ops::swiglu(&g, &upload(&g, &gate).as_view(), &upload(&g, &up).as_view(), &mut out.as_view_mut()).unwrap();
        assert_close(&format!("swiglu n={n}"), &download(&g, &out), &want, 1e-7, 1e-5);
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
    fn f32_to_f16_rounds_to_nearest_even(n in 1usize..5000, seed in any::<u64>()) {
        let g = gpu();
        let mut rng = Rng::new(seed);
        let mut x = random(&mut rng, n, 70000.0); // beyond f16's range too: ±inf
        x[0] = 1.0 + f32::EPSILON; // halfway-ish cases come from the random draw
        let want: Vec<u16> = x.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
        let mut out = poisoned(&g, n, 0x7e00u16);
        ops::f32_to_f16(&g, &upload(&g, &x).as_view(), &mut out.as_view_mut()).unwrap();
        prop_assert_eq!(download(&g, &out), want);
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
    fn rope_is_exact(
        (n_head, head_dim) in prop::sample::select(&[(14usize, 64usize), (2, 64), (9, 64), (3, 64), (4, 128), (5, 32)][..]),
        n_tok in prop::sample::select(&[1usize, 2, 17, 512][..]),
        pos0 in prop::sample::select(&[0usize, 1, 100, 3583][..]),
        neox in any::<bool>(),
        with_bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let g = gpu();
        let mut rng = Rng::new(seed);
        let theta = if neox { 1_000_000.0 } else { 10_000.0 };
        let style = if neox { RopeStyle::Neox } else { RopeStyle::Normal };
        let x = random(&mut rng, n_tok * n_head * head_dim, 2.0);
        // With a bias (the prefill's q or k bias): added first, as `cpu::add` adds it.
        let bias = random(&mut rng, n_head * head_dim, 1.0);
        let positions: Vec<usize> = (pos0..pos0 + n_tok).collect();
        let mut want = x.clone();
        if with_bias {
            cpu::add(&mut want, &bias);
        }
        cpu::rope(&mut want, n_head, head_dim, &positions, theta, style);
        let table = RopeTable::new(&g, 4096, head_dim, theta).unwrap();
        let mut d = upload(&g, &x);
        let db = upload(&g, &bias);
        let dbv = db.as_view();
        ops::rope(&g, &mut d.as_view_mut(), with_bias.then_some(&dbv), &table, n_head, pos0, style).unwrap();
        assert_bits_eq(&format!("rope {n_head}x{head_dim} n_tok={n_tok} pos0={pos0} {style:?} bias {with_bias}"), &download(&g, &d), &want);
    }
}

/// A cache element type with its poison value (NaN) and its rounding of an f32.
trait TestElem: KvElem {
    const POISON: Self;
    fn round(x: f32) -> Self;
    fn to_f32(self) -> f32;
    fn is_poison(self) -> bool;
}

impl TestElem for u16 {
    const POISON: u16 = 0x7e00;
    fn round(x: f32) -> u16 {
        half::f16::from_f32(x).to_bits()
    }
    fn to_f32(self) -> f32 {
        half::f16::from_bits(self).to_f32()
    }
    fn is_poison(self) -> bool {
        self == 0x7e00
    }
}

impl TestElem for f32 {
    const POISON: f32 = f32::NAN;
    fn round(x: f32) -> f32 {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn is_poison(self) -> bool {
        self.is_nan()
    }
}

/// Writes random K/V rows at positions `0..n` through `kv_append` (in chunks, as a forward would)
/// and returns the CPU view of the cache (f32 rows of `n_head_kv * head_dim`, f16-exact values).
fn fill_cache<T: TestElem>(
    g: &host::cuda::Gpu,
    rng: &mut Rng,
    s: KvShape,
    n: usize,
    chunks: &[usize],
) -> (KvLayer<T>, Vec<f32>, Vec<f32>) {
    let row = s.n_head_kv * s.head_dim;
    let k = random_f16_exact(rng, n * row, 2.0);
    let v = random_f16_exact(rng, n * row, 2.0);
    let mut cache = KvLayer {
        k: poisoned(g, s.elems(), T::POISON),
        v: poisoned(g, s.elems(), T::POISON),
    };
    let mut p = 0;
    let mut ci = 0;
    while p < n {
        let c = chunks[ci % chunks.len()].min(n - p);
        ops::kv_append(
            g,
            &upload(g, &k[p * row..(p + c) * row]).as_view(),
            &upload(g, &v[p * row..(p + c) * row]).as_view(),
            None,
            &mut cache,
            s,
            p,
        )
        .unwrap();
        p += c;
        ci += 1;
    }
    (cache, k, v)
}

/// `kv_append` of `n` rows at the cache's end; with `with_bias` a value bias is added first (the
/// prefill's v bias), checked against the f32 sum rounded as the cache stores it.
fn kv_append_case<T: TestElem + PartialEq + std::fmt::Debug>(
    n_head_kv: usize,
    head_dim: usize,
    n: usize,
    with_bias: bool,
    seed: u64,
) {
    let g = gpu();
    let mut rng = Rng::new(seed);
    let s = KvShape {
        n_head_kv,
        head_dim,
        n_ctx: 1024,
    };
    let row = n_head_kv * head_dim;
    // Values not exactly representable in f16: the f16 cache must round to nearest even.
    let k = random(&mut rng, n * row, 3.0);
    let v = random(&mut rng, n * row, 3.0);
    let mut cache: KvLayer<T> = KvLayer {
        k: poisoned(&g, s.elems(), T::POISON),
        v: poisoned(&g, s.elems(), T::POISON),
    };
    let pos0 = 1024 - n;
    let bias = random(&mut rng, row, 1.0);
    let db = upload(&g, &bias);
    let dbv = db.as_view();
    ops::kv_append(
        &g,
        &upload(&g, &k).as_view(),
        &upload(&g, &v).as_view(),
        with_bias.then_some(&dbv),
        &mut cache,
        s,
        pos0,
    )
    .unwrap();
    let (kc, vc) = (download(&g, &cache.k), download(&g, &cache.v));
    for t in 0..n {
        for h in 0..n_head_kv {
            for j in 0..head_dim {
                let at = (h * s.n_ctx + pos0 + t) * head_dim + j;
                let src = t * row + h * head_dim + j;
                assert_eq!(kc[at], T::round(k[src]), "k t={t} h={h} j={j}");
                let want_v = if with_bias {
                    v[src] + bias[src % row]
                } else {
                    v[src]
                };
                assert_eq!(vc[at], T::round(want_v), "v t={t} h={h} j={j}");
            }
        }
    }
    // Positions before pos0 are untouched (still the poison).
    assert!(kc[..pos0 * head_dim].iter().all(|&b| b.is_poison()));
}

/// Decode attention against `cpu::rope` + `cpu::attention`, then the output projection
/// `matvec_attn` (a 64-row legacy-type `Wo` chosen by the seed, into a residual) against the f64
/// product of the CPU attention's output. With `defer`, contexts of at most
/// `DECODE_DEFER_SPLITS` used splits leave the combine to `matvec_attn` (the attention writes no
/// output: checked); otherwise `attention_combine` combines the splits (a host position asking
/// to defer beyond is refused). The cache holds 4096 positions, or `n_kv` if more (up to
/// `decode_max_splits(head_dim)` splits of 32).
fn attention_decode_case<T: TestElem + PartialEq>(
    (n_head, n_head_kv, head_dim): (usize, usize, usize),
    n_kv: usize,
    defer: bool,
    seed: u64,
) {
    let g = gpu();
    let mut rng = Rng::new(seed);
    let s = KvShape {
        n_head_kv,
        head_dim,
        n_ctx: n_kv.max(4096),
    };
    // Positions 0 .. n_kv − 1 in the cache; the new token at n_kv − 1 comes as projections
    // before RoPE (the kernel rotates q and k and writes the new k, v to the cache).
    let (mut cache, mut k, mut v) = fill_cache::<T>(&g, &mut rng, s, n_kv, &[n_kv.min(512), 1, 7]);
    let q = random(&mut rng, n_head * head_dim, 2.0);
    let kn = random(&mut rng, n_head_kv * head_dim, 2.0);
    let vn = random(&mut rng, n_head_kv * head_dim, 2.0);
    let (style, theta) = if seed.is_multiple_of(2) {
        (RopeStyle::Neox, 1_000_000.0)
    } else {
        (RopeStyle::Normal, 10_000.0)
    };
    let pos = n_kv - 1;
    let row = n_head_kv * head_dim;
    let mut qr = q.clone();
    cpu::rope(&mut qr, n_head, head_dim, &[pos], theta, style);
    let mut kr = kn.clone();
    cpu::rope(&mut kr, n_head_kv, head_dim, &[pos], theta, style);
    let stored_k: Vec<T> = kr.iter().map(|&x| T::round(x)).collect();
    let stored_v: Vec<T> = vn.iter().map(|&x| T::round(x)).collect();
    for j in 0..row {
        k[pos * row + j] = T::to_f32(stored_k[j]);
        v[pos * row + j] = T::to_f32(stored_v[j]);
    }
    let mut want = vec![0.0; q.len()];
    cpu::attention(&qr, &k, &v, n_head, n_head_kv, head_dim, pos, &mut want);
    let table = RopeTable::new(&g, s.n_ctx, head_dim, theta).unwrap();
    let mut scratch = ops::DecodeScratch::new(&g, n_head, head_dim, s.n_ctx).unwrap();
    let dpos = upload(&g, &[pos as u32]);
    let (dq, dk, dv) = (upload(&g, &q), upload(&g, &kn), upload(&g, &vn));
    let deferred = defer && ops::decode_defers(n_kv, s.n_ctx, head_dim);
    // The output projection: resid + Wo · attention (f64 from the CPU's attention output), its
    // bound the attention's tolerance carried through |Wo| plus the matvec's own.
    let wo_ty = [GgmlType::Q5_0, GgmlType::Q4_1, GgmlType::Q8_0][(seed % 3) as usize];
    let (o_rows, o_cols) = (64, n_head * head_dim);
    let (wo_bytes, wo_deq) = random_tensor(wo_ty, o_rows, o_cols, &mut rng);
    let wo = DeviceTensor::upload(&g, "wo", wo_ty, o_rows, o_cols, &wo_bytes).unwrap();
    let resid0 = random(&mut rng, o_rows, 1.0);
    let o_want: Vec<(f64, f64)> = wo_deq
        .chunks_exact(o_cols)
        .zip(&resid0)
        .zip(dots(&wo_deq, o_cols, &want))
        .map(|((row, &r0), (dot, mag))| {
            let carried: f64 = row
                .iter()
                .zip(&want)
                .map(|(&a, &b)| a.abs() as f64 * (1e-4 + 1e-4 * b.abs() as f64))
                .sum();
            (
                r0 as f64 + dot,
                carried + 1e-5 * mag + 1e-6 * r0.abs() as f64,
            )
        })
        .collect();
    // Host n_kv, then the device position (a graph-replayed step), each twice: the split
    // counters must be left at zero for the next launch. Splits are sized for the whole cache
    // either way, most of them empty for small n_kv.
    for (mode, device) in [
        ("host", false),
        ("host again", false),
        ("device", true),
        ("device again", true),
    ] {
        scratch.part = poisoned(&g, scratch.part.len(), f32::NAN);
        let mut out = poisoned(&g, q.len(), f32::NAN);
        let (pv, qv, kv, vv) = (dpos.as_view(), dq.as_view(), dk.as_view(), dv.as_view());
        let at = if device {
            DecodeAt::Device(&pv)
        } else {
            DecodeAt::Kv(n_kv)
        };
        let tok = ops::NewToken {
            q: &qv,
            k: &kv,
            v: &vv,
            rope: &table,
            style,
        };
        let mut launch = |defer: bool| {
            let o = &mut out.as_view_mut();
            ops::attention_decode(&g, tok, &mut cache, s, n_head, at, &mut scratch, o, defer)
        };
        if defer && !deferred && !device {
            // Past the short contexts the output projection cannot combine the splits: a host
            // position asking for it is refused before anything runs.
            let e = launch(true).unwrap_err().to_string();
            assert!(e.contains("(defer)"), "{e}");
        }
        launch(deferred).unwrap();
        if !deferred {
            // The splits' partials into the output (nothing to do for one split).
            ops::attention_combine(&g, &scratch, &mut out.as_view_mut()).unwrap();
        }
        let label = format!(
            "attention_decode ({mode} position, defer {deferred}) {} {n_head}/{n_head_kv}x{head_dim} n_kv={n_kv} {style:?}",
            std::any::type_name::<T>()
        );
        if deferred {
            assert!(
                download(&g, &out).iter().all(|v| v.is_nan()),
                "{label}: a deferred attention writes no output"
            );
        } else {
            assert_close(&label, &download(&g, &out), &want, 1e-4, 1e-4);
        }
        let mut resid = upload(&g, &resid0);
        let attn = &out.as_view();
        if deferred {
            ops::matvec_attn(&g, &wo, &scratch, &mut resid.as_view_mut()).unwrap();
        } else {
            // Only after an attention launched with defer; its output goes to the plain matvec.
            let e = ops::matvec_attn(&g, &wo, &scratch, &mut resid.as_view_mut()).unwrap_err();
            assert!(e.to_string().contains("not launched with defer"), "{e}");
            let y = &mut resid.as_view_mut();
            ops::matvec_with(&g, &wo, attn, y, MatvecOut::Accumulate).unwrap();
        }
        for (r, (&got, &(w, bound))) in download(&g, &resid).iter().zip(&o_want).enumerate() {
            assert!(
                (got as f64 - w).abs() <= bound,
                "{label}: matvec_attn {wo_ty:?} row {r}: got {got} want {w} (bound {bound:e})"
            );
        }
        if device && !ops::decode_defers(n_kv, s.n_ctx, head_dim) {
            // A device position past the splits the projection combines (which the backend never
            // replays the short graph at) cannot be refused on the host: the projection's rows
            // come out NaN, not a number read from an output nobody wrote.
            let o = &mut out.as_view_mut();
            ops::attention_decode(&g, tok, &mut cache, s, n_head, at, &mut scratch, o, true)
                .unwrap();
            let mut bad = upload(&g, &resid0);
            ops::matvec_attn(&g, &wo, &scratch, &mut bad.as_view_mut()).unwrap();
            assert!(
                download(&g, &bad).iter().all(|v| v.is_nan()),
                "{label}: matvec_attn past defer"
            );
        }
        // The new row is in the cache exactly as kv_append would store it; the rows after it
        // are untouched.
        let (kc, vc) = (download(&g, &cache.k), download(&g, &cache.v));
        for h in 0..n_head_kv {
            for j in 0..head_dim {
                let at = (h * s.n_ctx + pos) * head_dim + j;
                assert!(
                    kc[at] == stored_k[h * head_dim + j],
                    "{label}: cache k h={h} j={j}"
                );
                assert!(
                    vc[at] == stored_v[h * head_dim + j],
                    "{label}: cache v h={h} j={j}"
                );
                if pos + 1 < s.n_ctx {
                    assert!(
                        kc[at + head_dim].is_poison(),
                        "{label}: k row after the new one written"
                    );
                }
            }
        }
    }
}

fn attention_prefill_case<T: TestElem>(
    (n_head, n_head_kv, head_dim): (usize, usize, usize),
    (pos0, n_tok): (usize, usize),
    seed: u64,
) {
    prefill_case::<T>((n_head, n_head_kv, head_dim), (pos0, n_tok), seed, false);
}

/// The tensor-core prefill (`attention_prefill_mma_f16`), held to the CUDA-core kernel's
/// tolerance.
fn attention_prefill_mma_case(
    (n_head, n_head_kv, head_dim): (usize, usize, usize),
    (pos0, n_tok): (usize, usize),
    seed: u64,
) {
    prefill_case::<u16>((n_head, n_head_kv, head_dim), (pos0, n_tok), seed, true);
}

fn prefill_case<T: TestElem>(
    (n_head, n_head_kv, head_dim): (usize, usize, usize),
    (pos0, n_tok): (usize, usize),
    seed: u64,
    mma: bool,
) {
    let g = gpu();
    let mut rng = Rng::new(seed);
    let s = KvShape {
        n_head_kv,
        head_dim,
        n_ctx: (pos0 + n_tok).max(4096),
    };
    let (cache, k, v) = fill_cache::<T>(&g, &mut rng, s, pos0 + n_tok, &[pos0.max(1), n_tok]);
    let q = random(&mut rng, n_tok * n_head * head_dim, 2.0);
    let mut want = vec![0.0; q.len()];
    cpu::attention(&q, &k, &v, n_head, n_head_kv, head_dim, pos0, &mut want);
    let mut out = poisoned(&g, q.len(), f32::NAN);
    let prefill = if mma {
        ops::attention_prefill_mma::<T>
    } else {
        ops::attention_prefill::<T>
    };
    prefill(
        &g,
        &upload(&g, &q).as_view(),
        &cache,
        s,
        n_head,
        pos0,
        &mut out.as_view_mut(),
    )
    .unwrap();
    assert_close(
        &format!(
            "attention_prefill{} {} {n_head}/{n_head_kv}x{head_dim} pos0={pos0} n_tok={n_tok}",
            if mma { "_mma" } else { "" },
            std::any::type_name::<T>()
        ),
        &download(&g, &out),
        &want,
        1e-4,
        1e-4,
    );
}

const HEADS: &[(usize, usize, usize)] =
    &[(14, 2, 64), (9, 3, 64), (4, 4, 128), (8, 1, 32), (6, 2, 96)];
/// Decode takes head_dim 32, 64 or 128 (96 is refused: `launchers_refuse_bad_shapes…`), and up to
/// 8 query heads per KV head.
const DECODE_HEADS: &[(usize, usize, usize)] = &[
    (14, 2, 64),
    (9, 3, 64),
    (4, 4, 128),
    (8, 1, 32),
    (16, 2, 64),
    (16, 2, 128),
];

proptest! {
    #![proptest_config(cfg(8))]

    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
    fn kv_append_writes_the_cache_layout(
        (n_head_kv, head_dim) in prop::sample::select(&[(2usize, 64usize), (3, 64), (1, 128)][..]),
        n in prop::sample::select(&[1usize, 5, 300, 1024][..]),
        f32_cache in any::<bool>(),
        with_bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        if f32_cache {
            kv_append_case::<f32>(n_head_kv, head_dim, n, with_bias, seed);
        } else {
            kv_append_case::<u16>(n_head_kv, head_dim, n, with_bias, seed);
        }
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
    fn attention_decode_matches_cpu(
        heads in prop::sample::select(DECODE_HEADS),
        n_kv in prop::sample::select(&[1usize, 2, 31, 32, 33, 128, 129, 255, 256, 257, 1000, 4095, 4096][..]),
        f32_cache in any::<bool>(),
        defer in any::<bool>(),
        seed in any::<u64>(),
    ) {
        if f32_cache {
            attention_decode_case::<f32>(heads, n_kv, defer, seed);
        } else {
            attention_decode_case::<u16>(heads, n_kv, defer, seed);
        }
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
    fn attention_prefill_matches_cpu(
        heads in prop::sample::select(HEADS),
        shape in prop::sample::select(&[(0usize, 1usize), (0, 2), (0, 15), (0, 16), (0, 17), (5, 100), (0, 512), (3584, 512), (100, 33)][..]),
        f32_cache in any::<bool>(),
        seed in any::<u64>(),
    ) {
        if f32_cache {
            attention_prefill_case::<f32>(heads, shape, seed);
        } else {
            attention_prefill_case::<u16>(heads, shape, seed);
        }
    }
}

proptest! {
    #![proptest_config(cfg(12))]

    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
    fn attention_prefill_mma_matches_cpu(
        heads in prop::sample::select(HEADS),
        shape in prop::sample::select(&[(0usize, 1usize), (0, 2), (0, 15), (0, 16), (0, 17), (0, 63), (0, 64), (0, 65), (5, 100), (0, 512), (3584, 512), (100, 33), (4000, 96)][..]),
        seed in any::<u64>(),
    ) {
        attention_prefill_mma_case(heads, shape, seed);
    }
}

/// The tensor-core prefill on every head_dim it is instantiated for (32 and 64: tiles of 64
/// keys; 96 and 128: 32), with partial query and key tiles, chunks after earlier positions, rows
/// that one key split sees nothing of, and a 4,096-position prefix; and the f32 cache refused (it
/// has no such kernel).
#[test]
#[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
fn attention_prefill_mma_on_every_head_dim() {
    attention_prefill_mma_case((14, 2, 64), (0, 512), 31);
    // The second key split's only tile lies past a whole warp of rows (their maxima stay −∞
    // until the merge).
    attention_prefill_mma_case((14, 2, 64), (5, 100), 30);
    attention_prefill_mma_case((14, 2, 64), (4096, 512), 32);
    attention_prefill_mma_case((8, 1, 32), (0, 33), 33);
    attention_prefill_mma_case((6, 2, 96), (5, 70), 34);
    attention_prefill_mma_case((4, 4, 128), (0, 100), 35);
    attention_prefill_mma_case((4, 4, 128), (40, 17), 36);
    attention_prefill_mma_case((16, 2, 128), (1000, 200), 37);
    let g = gpu();
    let s = KvShape {
        n_head_kv: 2,
        head_dim: 64,
        n_ctx: 64,
    };
    let mut rng = Rng::new(38);
    let (cache, _, _) = fill_cache::<f32>(&g, &mut rng, s, 16, &[1, 15]);
    let q = upload(&g, &random(&mut rng, 16 * 14 * 64, 1.0));
    let mut out = poisoned(&g, 16 * 14 * 64, f32::NAN);
    let err =
        ops::attention_prefill_mma(&g, &q.as_view(), &cache, s, 14, 1, &mut out.as_view_mut())
            .unwrap_err()
            .to_string();
    assert!(err.contains("f16 cache"), "{err}");
}

/// The qwen configuration exactly (14 heads over 2 KV heads of 64, a 512-token prefill, then
/// decode at 4096), for both cache types, and every prefill head_dim, whatever the random draws
/// above picked.
#[test]
#[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
fn attention_on_the_qwen_shapes() {
    attention_prefill_case::<u16>((14, 2, 64), (0, 512), 1);
    attention_prefill_case::<f32>((14, 2, 64), (0, 512), 2);
    attention_decode_case::<u16>((14, 2, 64), 4096, true, 3);
    attention_decode_case::<f32>((14, 2, 64), 4096, false, 4);
    // Short contexts, where the output projection combines (1 to 4 used splits) or not.
    for (i, n_kv) in [1usize, 32, 33, 100, 128, 129].into_iter().enumerate() {
        attention_decode_case::<u16>((14, 2, 64), n_kv, true, 10 + i as u64);
    }
    attention_decode_case::<f32>((14, 2, 64), 100, false, 20);
    // More than 128 splits (a 4224- and a 16000-position cache: 132 and 256 splits of at most
    // 32 and 63 positions).
    attention_decode_case::<u16>((14, 2, 64), 4224, false, 21);
    attention_decode_case::<u16>((14, 2, 64), 16000, true, 22);
    attention_prefill_case::<u16>((9, 3, 64), (0, 512), 5);
    // Every head_dim the prefill kernel is instantiated for (32, 64, 96, 128: tiles of 32 keys,
    // 16 at 128), with partial query and key tiles and a chunk after earlier positions.
    attention_prefill_case::<u16>((8, 1, 32), (0, 33), 6);
    attention_prefill_case::<f32>((6, 2, 96), (5, 70), 7);
    attention_prefill_case::<f32>((4, 4, 128), (0, 100), 8);
    attention_prefill_case::<u16>((4, 4, 128), (40, 17), 9);
}

/// The types the real models use, and the rest of the supported ones.
const TYPES: &[GgmlType] = &[
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q6K,
    GgmlType::Q4_1,
    GgmlType::F16,
    GgmlType::F32,
    GgmlType::Q4_0,
    GgmlType::Q5_1,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q5K,
    GgmlType::BF16,
];

/// A random `rows x cols` tensor of type `t` (valid blocks, scales keeping weights near ±0.1),
/// its bytes and its rows dequantized by the CPU path.
fn random_tensor(t: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> (Vec<u8>, Vec<f32>) {
    let rb = t.row_bytes(cols).unwrap();
    let mut bytes = vec![0u8; rows * rb];
    fixtures::synth::fill(t, fixtures::synth::Role::Weight, rng, &mut bytes);
    let mut deq = vec![0.0f32; rows * cols];
    for (r, o) in deq.chunks_exact_mut(cols).enumerate() {
        host::quant::dequantize_row(t, &bytes[r * rb..(r + 1) * rb], o).unwrap();
    }
    (bytes, deq)
}

proptest! {
    #![proptest_config(cfg(12))]

    /// The planar Q8_0 LM-head matvec: the same bound as `matvec` against an f64 dot of the
    /// CPU-dequantized rows, on the rows the warps share (1, a partial warp, whole blocks, and
    /// 10,003: more groups of rows than an H100's or H200's resident warps, so warps take two).
    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
    fn matvec_q8p_matches_cpu_dequantized(
        cols in prop::sample::select(&[896usize, 576, 32, 64, 4864, 2048][..]),
        rows in prop::sample::select(&[1usize, 3, 31, 32, 33, 1001, 4864, 10_003][..]),
        seed in any::<u64>(),
    ) {
        let g = gpu();
        let mut rng = Rng::new(seed);
        let (bytes, deq) = random_tensor(GgmlType::Q8_0, rows, cols, &mut rng);
        let x = random(&mut rng, cols, 3.0);
        let w = ops::Q8Planar::upload(&g, "w", rows, cols, &bytes).unwrap();
        let mut y = poisoned(&g, rows, f32::NAN);
        ops::matvec_q8p(&g, &w, &upload(&g, &x).as_view(), &mut y.as_view_mut()).unwrap();
        let got = download(&g, &y);
        for (r, (want, mag)) in dots(&deq, cols, &x).into_iter().enumerate() {
            let bound = mag * 1e-5;
            prop_assert!((got[r] as f64 - want).abs() <= bound,
                "q8p {}x{} row {}: got {} want {} (bound {:e})", rows, cols, r, got[r], want, bound);
        }
        // The embedding lookup from the same planar matrix: the dequantized rows, bit for bit.
        let ids: Vec<u32> = (0..1 + (seed % 9) as usize).map(|_| (rng.next_u64() % rows as u64) as u32).collect();
        let mut e = poisoned(&g, ids.len() * cols, f32::NAN);
        ops::embedding_q8p(&g, &w, &upload(&g, &ids).as_view(), &mut e.as_view_mut()).unwrap();
        let want: Vec<f32> = ids.iter().flat_map(|&i| deq[i as usize * cols..(i as usize + 1) * cols].iter().copied()).collect();
        assert_bits_eq(&format!("embedding_q8p {rows}x{cols} ids {ids:?}"), &download(&g, &e), &want);
    }
}

/// Column counts valid for `t` from the real shapes (K-quants need multiples of 256).
fn cols_for(t: GgmlType) -> &'static [usize] {
    if t.block_size() == 256 {
        &[4864, 1536, 256]
    } else {
        &[896, 576, 4864, 128, 1536, 32]
    }
}

/// f64 reference of the fused launches' product `W · xn`, `xn = h / sqrt(mean(h²) + eps) ∘ g`,
/// per row of the dequantized `rows × cols` matrix `deq`, with the bound on the GPU's error:
/// 2e-5 of `Σ|w · xn|` — 1e-5 for the f32 dot product as in `matvec` (the sum of `w · (h · g)`,
/// the scale applied once to the warp's sum), the rest for the scale itself (`Σ h²` in f32 over
/// ≤ 152 terms per lane and a 5-level tree: ≤ 9.4e-6 relative, halved by the square root).
fn normed_matvec_ref(deq: &[f32], cols: usize, h: &[f32], g: &[f32], eps: f32) -> Vec<(f64, f64)> {
    let ss: f64 = h.iter().map(|&v| v as f64 * v as f64).sum();
    let s = 1.0 / (ss / cols as f64 + eps as f64).sqrt();
    let xn: Vec<f64> = h
        .iter()
        .zip(g)
        .map(|(&a, &b)| a as f64 * b as f64 * s)
        .collect();
    deq.chunks(cols)
        .map(|row| {
            let dot: f64 = row.iter().zip(&xn).map(|(&w, &x)| w as f64 * x).sum();
            let mag: f64 = row
                .iter()
                .zip(&xn)
                .map(|(&w, &x)| (w as f64 * x).abs())
                .sum();
            (dot, 2e-5 * mag)
        })
        .collect()
}

/// The matvec epilogues against the plain result `got`, bit for bit (the same f32 additions as a
/// separate `add` after the plain store): `launch` once with a random bias, once accumulating into
/// a random residual.
fn check_epilogues(
    g: &host::cuda::Gpu,
    rng: &mut Rng,
    what: &str,
    got: &[f32],
    launch: impl Fn(&mut cudarc::driver::CudaViewMut<f32>, MatvecOut),
) {
    let rows = got.len();
    let bias = random(rng, rows, 2.0);
    let mut yb = poisoned(g, rows, f32::NAN);
    let bd = upload(g, &bias);
    launch(&mut yb.as_view_mut(), MatvecOut::Bias(&bd.as_view()));
    let want_b: Vec<f32> = got.iter().zip(&bias).map(|(&a, &b)| a + b).collect();
    assert_bits_eq(&format!("{what} + bias"), &download(g, &yb), &want_b);
    let resid = random(rng, rows, 2.0);
    let mut ya = upload(g, &resid);
    launch(&mut ya.as_view_mut(), MatvecOut::Accumulate);
    let want_a: Vec<f32> = resid.iter().zip(got).map(|(&r, &a)| r + a).collect();
    assert_bits_eq(&format!("{what} into residual"), &download(g, &ya), &want_a);
}

proptest! {
    #![proptest_config(cfg(26))]

    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
    fn matvec_matches_cpu_dequantized(
        t in prop::sample::select(TYPES),
        ci in 0usize..3,
        rows in prop::sample::select(&[896usize, 128, 4864, 192, 1001, 1][..]),
        seed in any::<u64>(),
    ) {
        let g = gpu();
        let mut rng = Rng::new(seed);
        let cols = cols_for(t)[ci % cols_for(t).len()];
        let (bytes, deq) = random_tensor(t, rows, cols, &mut rng);
        let x = random(&mut rng, cols, 3.0);
        let w = DeviceTensor::upload(&g, "w", t, rows, cols, &bytes).unwrap();
        let mut y = poisoned(&g, rows, f32::NAN);
        ops::matvec(&g, &w, &upload(&g, &x).as_view(), &mut y.as_view_mut()).unwrap();
        let got = download(&g, &y);
        for (r, (want, mag)) in dots(&deq, cols, &x).into_iter().enumerate() {
            let bound = mag * 1e-5;
            prop_assert!(got[r].is_finite(), "{:?} {}x{} row {}: {}", t, rows, cols, r, got[r]);
            prop_assert!((got[r] as f64 - want).abs() <= bound,
                "{:?} {}x{} row {}: got {} want {} (bound {:e})", t, rows, cols, r, got[r], want, bound);
        }
        // The fused epilogues: the same f32 additions as a separate `add` after the plain store.
        let xd = upload(&g, &x);
        check_epilogues(&g, &mut rng, &format!("matvec {t:?} {rows}x{cols}"), &got, |y, out| {
            ops::matvec_with(&g, &w, &xd.as_view(), y, out).unwrap()
        });
        // The fused launches (legacy types) fold the RMSNorm into their input: a residual row
        // and a norm weight, against f64 references (`normed_matvec_ref`).
        let (hr, gw, eps) = (random(&mut rng, cols, 3.0), random(&mut rng, cols, 1.5), 1e-6f32);
        let (hd, gd) = (upload(&g, &hr), upload(&g, &gw));
        let inp = NormedInput { x: &hd.as_view(), weight: &gd.as_view(), eps };
        let want_w = normed_matvec_ref(&deq, cols, &hr, &gw, eps);
        let (ub, udeq) = random_tensor(t, rows, cols, &mut rng);
        let wu = DeviceTensor::upload(&g, "u", t, rows, cols, &ub).unwrap();
        if ops::matvec_swiglu_supported(&w, &wu) {
            let want_u = normed_matvec_ref(&udeq, cols, &hr, &gw, eps);
            let mut hf = poisoned(&g, rows, f32::NAN);
            ops::matvec_swiglu(&g, &w, &wu, inp, &mut hf.as_view_mut()).unwrap();
            let got = download(&g, &hf);
            for r in 0..rows {
                let ((a, ea), (b, eb)) = (want_w[r], want_u[r]);
                let silu = a / (1.0 + (-a).exp());
                let want = silu * b;
                // |silu'| ≤ 1.1; `ex2.approx` in the kernel's silu: 1e-5 relative.
                let bound = 1.1 * ea * b.abs() + silu.abs() * eb + 1.1 * ea * eb + 1e-5 * want.abs() + 1e-30;
                prop_assert!((got[r] as f64 - want).abs() <= bound,
                    "matvec_swiglu {:?} {}x{} row {}: got {} want {} (bound {:e})", t, rows, cols, r, got[r], want, bound);
            }
        }
        // The fused q/k/v matvec: w as q, a second matrix of the type as k (fewer rows), and a
        // Q8_0 matrix as v, with and without biases.
        let nk = rows.div_ceil(3);
        let (kb, kdeq) = random_tensor(t, nk, cols, &mut rng);
        let wk = DeviceTensor::upload(&g, "k", t, nk, cols, &kb).unwrap();
        let (vb, vdeq) = random_tensor(GgmlType::Q8_0, nk, cols, &mut rng);
        let wv = DeviceTensor::upload(&g, "v", GgmlType::Q8_0, nk, cols, &vb).unwrap();
        let wants = [
            want_w,
            normed_matvec_ref(&kdeq, cols, &hr, &gw, eps),
            normed_matvec_ref(&vdeq, cols, &hr, &gw, eps),
        ];
        for with_bias in [false, true] {
            if !ops::matvec_qkv_supported(&w, &wk, &wv, [with_bias; 3]) {
                continue;
            }
            let bs: Vec<Vec<f32>> = [rows, nk, nk].iter().map(|&n| random(&mut rng, n, 2.0)).collect();
            let bd: Vec<_> = bs.iter().map(|b| upload(&g, b)).collect();
            let (mut yq, mut yk, mut yv) = (poisoned(&g, rows, f32::NAN), poisoned(&g, nk, f32::NAN), poisoned(&g, nk, f32::NAN));
            let (b0, b1, b2) = (bd[0].as_view(), bd[1].as_view(), bd[2].as_view());
            let biases = with_bias.then_some([&b0, &b1, &b2]);
            ops::matvec_qkv(&g, [&w, &wk, &wv], inp, &mut yq.as_view_mut(), &mut yk.as_view_mut(), &mut yv.as_view_mut(), biases).unwrap();
            for (i, (name, got)) in [("q", download(&g, &yq)), ("k", download(&g, &yk)), ("v", download(&g, &yv))].into_iter().enumerate() {
                for (r, &y) in got.iter().enumerate() {
                    let (dot, e) = wants[i][r];
                    let bias = if with_bias { bs[i][r] as f64 } else { 0.0 };
                    let want = dot + bias;
                    // The bias addition rounds once more: 2^-24 of the result.
                    let bound = e + 6e-8 * (want.abs() + e) + 1e-30;
                    prop_assert!((y as f64 - want).abs() <= bound,
                        "matvec_qkv {:?} {}x{} {} row {} bias={}: got {} want {} (bound {:e})", t, rows, cols, name, r, with_bias, y, want, bound);
                }
            }
        }
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
    fn dequant_and_embedding_are_exact(
        t in prop::sample::select(TYPES),
        ci in 0usize..3,
        seed in any::<u64>(),
    ) {
        let g = gpu();
        let mut rng = Rng::new(seed);
        let cols = cols_for(t)[ci % cols_for(t).len()];
        // Not a whole number of 256-element warp steps for most column counts.
        let rows = 301;
        let (bytes, deq) = random_tensor(t, rows, cols, &mut rng);
        let w = DeviceTensor::upload(&g, "w", t, rows, cols, &bytes).unwrap();
        // Whole matrix, f32, f16 and the split-f16 GEMM operand.
        let mut o32 = poisoned(&g, rows * cols, f32::NAN);
        ops::dequant(&g, &w, None, DequantOut::F32(&mut o32.as_view_mut())).unwrap();
        assert_bits_eq(&format!("dequant {t:?} {rows}x{cols} f32"), &download(&g, &o32), &deq);
        let mut o16 = poisoned(&g, rows * cols, 0x7e00u16);
        ops::dequant(&g, &w, None, DequantOut::F16(&mut o16.as_view_mut())).unwrap();
        let want16: Vec<u16> = deq.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
        prop_assert_eq!(download(&g, &o16), want16, "dequant {:?} f16", t);
        let mut o3 = poisoned(&g, 3 * rows * cols, 0x7e00u16);
        ops::dequant(&g, &w, None, DequantOut::F16x3(&mut o3.as_view_mut())).unwrap();
        prop_assert_eq!(download(&g, &o3), split_f16x3(&deq, cols, SplitOperand::Weight), "dequant {:?} f16x3", t);
        // Embedding: rows picked by ids, repeats and the last row included.
        let ids: Vec<u32> = (0..37).map(|i| if i == 0 { rows as u32 - 1 } else { (rng.next_u64() % rows as u64) as u32 }).collect();
        let mut e = poisoned(&g, ids.len() * cols, f32::NAN);
        let dids = upload(&g, &ids);
        ops::embedding(&g, &w, &dids.as_view(), &mut e.as_view_mut()).unwrap();
        let want: Vec<f32> = ids.iter().flat_map(|&i| deq[i as usize * cols..(i as usize + 1) * cols].to_vec()).collect();
        assert_bits_eq(&format!("embedding {t:?} cols={cols}"), &download(&g, &e), &want);
        // Gathered rows in the other layouts too (the kernels share the ids path).
        let mut e3 = poisoned(&g, 3 * ids.len() * cols, 0x7e00u16);
        ops::dequant(&g, &w, Some(&dids.as_view()), DequantOut::F16x3(&mut e3.as_view_mut())).unwrap();
        prop_assert_eq!(download(&g, &e3), split_f16x3(&want, cols, SplitOperand::Weight), "gather {:?} f16x3", t);
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
    fn f32_to_f16x3_splits_exactly(
        k in prop::sample::select(&[896usize, 4864, 576, 1536, 128, 34, 2][..]),
        rows in prop::sample::select(&[1usize, 7, 512, 33][..]),
        seed in any::<u64>(),
    ) {
        let g = gpu();
        let mut rng = Rng::new(seed);
        let mut x = random(&mut rng, rows * k, 8.0);
        // Tiny values (subnormal halves and remainders), and beyond f16's range (±inf).
        for (i, v) in x.iter_mut().enumerate() {
            match i % 13 {
                3 => *v *= 1e-6,
                7 => *v *= 1e-3,
                11 if i % 5 == 0 => *v *= 1e4,
                _ => {}
            }
        }
        let mut out = poisoned(&g, 3 * rows * k, 0x7e00u16);
        ops::f32_to_f16x3(&g, &upload(&g, &x).as_view(), k, &mut out.as_view_mut()).unwrap();
        prop_assert_eq!(download(&g, &out), split_f16x3(&x, k, SplitOperand::Activation), "f32_to_f16x3 {}x{}", rows, k);
    }
}

proptest! {
    #![proptest_config(cfg(10))]

    /// The fused prefill inputs give exactly the bits of their two-launch compositions
    /// (`rms_norm` then `f32_to_f16x3`; `swiglu` then `f32_to_f16x3`), and those split the CPU
    /// reference's values to within its tolerance.
    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
    fn norm_and_swiglu_split_as_their_compositions(
        k in prop::sample::select(&[896usize, 576, 4864, 1536, 64, 34, 2][..]),
        rows in prop::sample::select(&[1usize, 3, 17, 512][..]),
        seed in any::<u64>(),
    ) {
        let g = gpu();
        let mut rng = Rng::new(seed);
        let split_rows = |v: &CudaSlice<f32>| {
            let mut o = poisoned(&g, 3 * rows * k, 0x7e00u16);
            ops::f32_to_f16x3(&g, &v.as_view(), k, &mut o.as_view_mut()).unwrap();
            download(&g, &o)
        };
        // The value a split row holds: hi + lo / 2^S.
        let joined = |h: &[u16]| -> Vec<f32> {
            let sc = host::cuda::gemm::F16X3_SCALE;
            h.chunks(3 * k)
                .flat_map(|r| {
                    (0..k).map(move |c| {
                        half::f16::from_bits(r[c]).to_f32() + half::f16::from_bits(r[k + c]).to_f32() / sc
                    })
                })
                .collect()
        };

        let x = random(&mut rng, rows * k, 4.0);
        let w: Vec<f32> = (0..k).map(|_| 1.0 + 0.5 * rng.uniform()).collect();
        let eps = 1e-6;
        let (dx, dw) = (upload(&g, &x), upload(&g, &w));
        let mut xn = poisoned(&g, rows * k, f32::NAN);
        ops::rms_norm(&g, &dx.as_view(), &dw.as_view(), eps, &mut xn.as_view_mut()).unwrap();
        let mut fused = poisoned(&g, 3 * rows * k, 0x7e00u16);
        ops::rms_norm_f16x3(&g, &dx.as_view(), &dw.as_view(), eps, &mut fused.as_view_mut()).unwrap();
        let fused = download(&g, &fused);
        prop_assert_eq!(&fused, &split_rows(&xn), "rms_norm_f16x3 {}x{}", rows, k);
        let mut want = vec![0.0; x.len()];
        cpu::rms_norm(&x, &w, eps, &mut want);
        assert_close(&format!("rms_norm_f16x3 {rows}x{k} (joined)"), &joined(&fused), &want, 1e-6, 1e-4);

        let gate = random(&mut rng, rows * k, 8.0);
        let up = random(&mut rng, rows * k, 2.0);
        let (dg, du) = (upload(&g, &gate), upload(&g, &up));
        let mut h = poisoned(&g, rows * k, f32::NAN);
        ops::swiglu(&g, &dg.as_view(), &du.as_view(), &mut h.as_view_mut()).unwrap();
        let mut fused = poisoned(&g, 3 * rows * k, 0x7e00u16);
        ops::swiglu_f16x3(&g, &dg.as_view(), &du.as_view(), k, &mut fused.as_view_mut()).unwrap();
        let fused = download(&g, &fused);
        prop_assert_eq!(&fused, &split_rows(&h), "swiglu_f16x3 {}x{}", rows, k);
        let mut want = vec![0.0; gate.len()];
        cpu::swiglu(&gate, &up, &mut want);
        assert_close(&format!("swiglu_f16x3 {rows}x{k} (joined)"), &joined(&fused), &want, 1e-6, 1e-5);
    }
}

/// The real embedding and LM-head shapes: 151936 x 896 (qwen, Q8_0 output, Q5_0 embedding) and
/// 49152 x 576 (smollm2, Q8_0).
#[test]
#[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
fn matvec_and_embedding_on_vocab_sized_matrices() {
    let g = gpu();
    let mut rng = Rng::new(7);
    for (t, rows, cols) in [
        (GgmlType::Q8_0, 151936, 896),
        (GgmlType::Q5_0, 151936, 896),
        (GgmlType::Q8_0, 49152, 576),
    ] {
        let (bytes, deq) = random_tensor(t, rows, cols, &mut rng);
        let w = DeviceTensor::upload(&g, "vocab", t, rows, cols, &bytes).unwrap();
        let x = random(&mut rng, cols, 3.0);
        let mut y = poisoned(&g, rows, f32::NAN);
        ops::matvec(&g, &w, &upload(&g, &x).as_view(), &mut y.as_view_mut()).unwrap();
        let got = download(&g, &y);
        for (r, (want, mag)) in dots(&deq, cols, &x).into_iter().enumerate() {
            let bound = mag * 1e-5;
            assert!(
                (got[r] as f64 - want).abs() <= bound,
                "{t:?} {rows}x{cols} row {r}: got {} want {want}",
                got[r]
            );
        }
        let ids: Vec<u32> = vec![
            0,
            rows as u32 - 1,
            12345 % rows as u32,
            151935 % rows as u32,
        ];
        let mut e = poisoned(&g, ids.len() * cols, f32::NAN);
        ops::embedding(&g, &w, &upload(&g, &ids).as_view(), &mut e.as_view_mut()).unwrap();
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&i| deq[i as usize * cols..(i as usize + 1) * cols].to_vec())
            .collect();
        assert_bits_eq(
            &format!("embedding {t:?} {rows}x{cols}"),
            &download(&g, &e),
            &want,
        );
    }
}

/// Every logit NaN: the argmax (and the sampler) is "none" (`u32::MAX`) where the host reads it,
/// and the next decode step is fed token 0 (a row inside the embedding) with its position
/// advanced (the sampler's penalty window is left as it was); a `next` shorter than `[token,
/// position]` is refused.
#[test]
#[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
fn argmax_of_nan_logits_feeds_a_valid_row() {
    let g = gpu();
    let x = vec![f32::NAN; 151936];
    let mut sel = ops::SelectScratch::new(&g).unwrap();
    let dx = upload(&g, &x);
    let mut out = poisoned(&g, 1, 5);
    let mut next = upload(&g, &[77u32, 9]);
    // "None" where the host reads the id; token 0 fed at the next position.
    let none_fed = |out: &CudaSlice<u32>, next: &CudaSlice<u32>| {
        assert_eq!(download(&g, out)[0], u32::MAX);
        assert_eq!(download(&g, next), vec![0, 10]);
    };
    ops::argmax(
        &g,
        &dx.as_view(),
        &mut sel,
        &mut out.as_view_mut(),
        Some(&mut next.as_view_mut()),
    )
    .unwrap();
    none_fed(&out, &next);
    let mut short = upload(&g, &[3u32]);
    let e = ops::argmax(
        &g,
        &dx.as_view(),
        &mut sel,
        &mut out.as_view_mut(),
        Some(&mut short.as_view_mut()),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("[token, position]"), "{e}");
    // The sampler too: "none", token 0 fed, the window unchanged.
    let mut dx = upload(&g, &x);
    let mut next = upload(&g, &[77u32, 9]);
    let mut ring = upload(&g, &[1u32, 42]);
    ops::sample(
        &g,
        &mut dx.as_view_mut(),
        SampleParams {
            repeat_penalty: 1.2,
            ..SampleParams::top_k_top_p(40, 0.9, 0.8)
        },
        0.5,
        Some(&mut ring.as_view_mut()),
        &mut sel,
        &mut out.as_view_mut(),
        Some(&mut next.as_view_mut()),
    )
    .unwrap();
    none_fed(&out, &next);
    assert_eq!(download(&g, &ring), vec![1, 42]);
}

/// Host argmax: largest value, ties to the lower index, NaN ignored.
fn argmax_ref(x: &[f32]) -> u32 {
    let mut best: Option<usize> = None;
    for (i, &v) in x.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.is_none_or(|b| v > x[b]) {
            best = Some(i);
        }
    }
    best.map_or(u32::MAX, |b| b as u32)
}

proptest! {
    #![proptest_config(cfg(16))]

    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
    fn argmax_matches_cpu(
        n in prop::sample::select(&[151936usize, 49152, 1, 1023, 1025][..]),
        ties in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let g = gpu();
        let mut rng = Rng::new(seed);
        let mut x = random(&mut rng, n, 20.0);
        if ties && n > 10 {
            // The maximum appears several times, and NaN appears: lowest index must win.
            let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max) + 1.0;
            for _ in 0..5 {
                let i = (rng.next_u64() % n as u64) as usize;
                x[i] = m;
            }
            x[(rng.next_u64() % n as u64) as usize] = f32::NAN;
        }
        let mut sel = ops::SelectScratch::new(&g).unwrap();
        let dx = upload(&g, &x);
        // Twice: the block counter must be left at zero. The second time feeding the next
        // decode step's [token, position] (a graph-replayed step): the id, the position + 1.
        let mut out = poisoned(&g, 1, u32::MAX - 1);
        ops::argmax(&g, &dx.as_view(), &mut sel, &mut out.as_view_mut(), None).unwrap();
        prop_assert_eq!(download(&g, &out)[0], argmax_ref(&x));
        let mut out = poisoned(&g, 1, u32::MAX - 1);
        let mut next = upload(&g, &[u32::MAX - 1, 41u32]);
        ops::argmax(&g, &dx.as_view(), &mut sel, &mut out.as_view_mut(), Some(&mut next.as_view_mut())).unwrap();
        prop_assert_eq!(download(&g, &out)[0], argmax_ref(&x));
        prop_assert_eq!(download(&g, &next), vec![argmax_ref(&x), 42]);
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
    fn sample_draws_from_the_host_chains_interval(
        n in prop::sample::select(&[151936usize, 49152, 1500, 3][..]),
        top_k in prop::sample::select(&[1usize, 2, 40, 1024][..]),
        top_p in prop::sample::select(&[1.0f32, 0.95, 0.5, 0.05][..]),
        min_p in prop::sample::select(&[0.0f32, 0.05, 0.3][..]),
        temperature in prop::sample::select(&[1.0f32, 0.8, 1.5][..]),
        penalty in prop::sample::select(&[1.0f32, 1.3, 0.7][..]),
        window in prop::sample::select(&[1usize, 5, 64, 1024][..]),
        ties in any::<bool>(),
        u in 0.0f32..1.0,
        seed in any::<u64>(),
    ) {
        let g = gpu();
        let mut rng = Rng::new(seed);
        let top_k = top_k.min(n);
        let mut x = random(&mut rng, n, 8.0);
        if ties {
            // Few distinct values: ties at the top-k cut, decided by the lower index.
            for v in &mut x {
                *v = (*v * 0.5).round();
            }
        }
        // A history whose tail repeats tokens, some of them among the likeliest.
        let mut by_logit: Vec<u32> = (0..n as u32).collect();
        by_logit.sort_by(|&a, &b| x[b as usize].total_cmp(&x[a as usize]).then(a.cmp(&b)));
        let history: Vec<u32> = (0..70)
            .map(|i| if i % 3 == 0 { by_logit[(i / 3) % n.min(8)] } else { (rng.next_u64() % n as u64) as u32 })
            .collect();
        let cfg = SamplerConfig {
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty: penalty,
            repeat_last_n: window,
            seed: 0,
        };
        // The host chain's candidates, most likely first, with their probabilities.
        let cand = candidates(&cfg, &x, &history).unwrap();
        let tail = &history[history.len() - history.len().min(window)..];
        let mut ring = vec![tail.len() as u32];
        ring.extend_from_slice(tail);
        ring.resize(1 + window, u32::MAX);
        let mut dring = upload(&g, &ring);
        let mut dx = upload(&g, &x);
        let mut sel = ops::SelectScratch::new(&g).unwrap();
        let mut out = poisoned(&g, 1, u32::MAX - 1);
        let mut next = upload(&g, &[u32::MAX, 7u32]);
        let p = SampleParams { top_k, top_p, min_p, temperature, repeat_penalty: penalty };
        ops::sample(
            &g, &mut dx.as_view_mut(), p, u, Some(&mut dring.as_view_mut()), &mut sel,
            &mut out.as_view_mut(), Some(&mut next.as_view_mut()),
        ).unwrap();
        let got = download(&g, &out)[0];
        prop_assert_eq!(download(&g, &next), vec![got, 8]);
        let j = cand.iter().position(|c| c.0 == got);
        prop_assert!(j.is_some(), "drew {} outside the host's {} candidates", got, cand.len());
        let j = j.unwrap();
        let lo: f64 = cand[..j].iter().map(|c| c.1).sum();
        let hi = lo + cand[j].1;
        let tol = 1e-5;
        prop_assert!(lo - tol <= u as f64 && u as f64 <= hi + tol,
            "drew rank {} (interval [{}, {}]) for u = {}", j, lo, hi, u);
        // The penalty was applied in place, to each window token once.
        let mut want_x = x.clone();
        if penalty != 1.0 {
            let mut seen = std::collections::HashSet::new();
            for &t in tail {
                if seen.insert(t) {
                    let v = &mut want_x[t as usize];
                    *v = if *v > 0.0 { *v / penalty } else { *v * penalty };
                }
            }
        }
        let got_x = download(&g, &dx);
        prop_assert!(got_x.iter().zip(&want_x).all(|(a, b)| a.to_bits() == b.to_bits()),
            "the logits after the penalty");
        // The choice joined the window.
        let c = ring[0] as usize;
        let ring_after = download(&g, &dring);
        prop_assert_eq!(ring_after[1 + c % window], got);
        let c1 = if c + 1 >= 2 * window { c + 1 - window } else { c + 1 };
        prop_assert_eq!(ring_after[0] as usize, c1);
    }
}

/// `Y = X·Wᵀ` in f64 for `t` rows of `x` and `n` rows of `w` (`k` columns each), row-major over
/// (row of x, row of w): each element with `Σ|w·x|`, the scale of its rounding bound.
fn gemm_ref(x: &[f32], w: &[f32], n: usize, k: usize, t: usize) -> Vec<(f64, f64)> {
    (0..t * n)
        .map(|i| {
            let (r, c) = (i / n, i % n);
            let (xr, wr) = (&x[r * k..(r + 1) * k], &w[c * k..(c + 1) * k]);
            let s: f64 = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
            let m: f64 = xr
                .iter()
                .zip(wr)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
            (s, m)
        })
        .collect()
}

/// cuBLAS GEMM in the engine's row-major convention, Y = X·Wᵀ, against an f64 reference on the
/// same (f16-rounded where applicable) inputs: |err| ≤ 1e-4·Σ|w·x| (f32 accumulation on tensor
/// cores; F32 pedantic is ~1e-6 in practice).
#[test]
#[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
fn gemm_row_major_matches_f64() {
    use host::cuda::gemm::{GemmKind, gemm};
    let g = gpu();
    let mut rng = Rng::new(3);
    for (n, k, t) in [
        (896usize, 896usize, 7usize),
        (4864, 896, 33),
        (896, 4864, 512),
        (128, 896, 1),
        (151936, 896, 2),
    ] {
        let w = random_f16_exact(&mut rng, n * k, 0.1);
        let x = random_f16_exact(&mut rng, t * k, 2.0);
        let want = gemm_ref(&x, &w, n, k, t);
        for kind in [GemmKind::F32, GemmKind::F16F32] {
            let mut y: CudaSlice<f32> = poisoned(&g, t * n, f32::NAN);
            if kind == GemmKind::F16F32 {
                let wh: Vec<u16> = w
                    .iter()
                    .map(|&v| half::f16::from_f32(v).to_bits())
                    .collect();
                let xh: Vec<u16> = x
                    .iter()
                    .map(|&v| half::f16::from_f32(v).to_bits())
                    .collect();
                gemm(
                    &g,
                    kind,
                    &upload(&g, &wh).as_view(),
                    &upload(&g, &xh).as_view(),
                    &mut y.as_view_mut(),
                    n,
                    k,
                    t,
                )
                .unwrap();
            } else {
                gemm(
                    &g,
                    kind,
                    &upload(&g, &w).as_view(),
                    &upload(&g, &x).as_view(),
                    &mut y.as_view_mut(),
                    n,
                    k,
                    t,
                )
                .unwrap();
            }
            let got = download(&g, &y);
            for (i, (&gv, &(s, m))) in got.iter().zip(&want).enumerate() {
                assert!(
                    gv.is_finite() && (gv as f64 - s).abs() <= 1e-4 * m,
                    "gemm {kind:?} n={n} k={k} t={t} element {i}: got {gv} want {s}"
                );
            }
        }
    }
}

/// `gemm_accumulate` (the prefill's residual projections: `Y += X·Wᵀ`, cuBLAS's beta = 1) for
/// each input kind the backend runs, on residual rows of their own scale: `Y0 + X·Wᵀ` against
/// f64 within the kind's GEMM bound plus one rounding of the sum, and within a few roundings of
/// the stored product plus `Y0` added on the host (what the separate `add` did).
#[test]
#[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
fn gemm_accumulate_adds_the_product() {
    use host::cuda::gemm::{GemmKind, gemm, gemm_accumulate};
    let g = gpu();
    let mut rng = Rng::new(12);
    for (n, k, t) in [
        (896usize, 896usize, 33usize),
        (896, 4864, 512),
        (128, 896, 2),
    ] {
        let w = random_f16_exact(&mut rng, n * k, 0.1);
        let x = random_f16_exact(&mut rng, t * k, 2.0);
        let y0 = random(&mut rng, t * n, 5.0);
        let want = gemm_ref(&x, &w, n, k, t);
        let (dw, dx) = (upload(&g, &w), upload(&g, &x));
        for kind in [GemmKind::F32, GemmKind::F16F32, GemmKind::F16x3] {
            // The operands in the kind's input form.
            let (wk, xk): (CudaSlice<u16>, CudaSlice<u16>) = match kind {
                GemmKind::F16x3 => {
                    let mut w3 = poisoned(&g, 3 * n * k, 0x7e00u16);
                    let dt = DeviceTensor::upload(
                        &g,
                        "w",
                        GgmlType::F32,
                        n,
                        k,
                        &w.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
                    )
                    .unwrap();
                    ops::dequant(&g, &dt, None, DequantOut::F16x3(&mut w3.as_view_mut())).unwrap();
                    let mut x3 = poisoned(&g, 3 * t * k, 0x7e00u16);
                    ops::f32_to_f16x3(&g, &dx.as_view(), k, &mut x3.as_view_mut()).unwrap();
                    (w3, x3)
                }
                _ => {
                    let h = |v: &[f32]| -> Vec<u16> {
                        v.iter()
                            .map(|&a| half::f16::from_f32(a).to_bits())
                            .collect()
                    };
                    (upload(&g, &h(&w)), upload(&g, &h(&x)))
                }
            };
            let mut stored = poisoned(&g, t * n, f32::NAN);
            let mut acc = upload(&g, &y0);
            if kind == GemmKind::F32 {
                let (wv, xv) = (dw.as_view(), dx.as_view());
                gemm(&g, kind, &wv, &xv, &mut stored.as_view_mut(), n, k, t).unwrap();
                gemm_accumulate(&g, kind, &wv, &xv, &mut acc.as_view_mut(), n, k, t).unwrap();
            } else {
                let (wv, xv) = (wk.as_view(), xk.as_view());
                gemm(&g, kind, &wv, &xv, &mut stored.as_view_mut(), n, k, t).unwrap();
                gemm_accumulate(&g, kind, &wv, &xv, &mut acc.as_view_mut(), n, k, t).unwrap();
            }
            let (st, got) = (download(&g, &stored), download(&g, &acc));
            let bound = if kind == GemmKind::F16F32 { 1e-4 } else { 1e-5 };
            for i in 0..t * n {
                let (s, m) = want[i];
                let sum = y0[i] + st[i];
                let ulp = f32::EPSILON as f64 * (y0[i].abs() as f64 + s.abs() + m);
                assert!(
                    got[i].is_finite()
                        && (got[i] as f64 - (y0[i] as f64 + s)).abs() <= bound * m + ulp,
                    "gemm_accumulate {kind:?} n={n} k={k} t={t} element {i}: got {} want {}",
                    got[i],
                    y0[i] as f64 + s
                );
                // A few roundings: cuBLAS may pick another accumulation order with beta = 1.
                assert!(
                    (got[i] - sum).abs() as f64 <= 4.0 * ulp,
                    "gemm_accumulate {kind:?} n={n} k={k} t={t} element {i}: got {} but the stored product plus y0 is {sum}",
                    got[i]
                );
            }
        }
    }
}

/// The split-f16 GEMM as the prefill runs it (the quantized weight decoded by
/// `dequant_*_f16x3`, the activations split by `f32_to_f16x3`, one GEMM of `3k`) on the real
/// projection shapes and types, against f64 on the unrounded inputs: |err| ≤ 1e-5·Σ|w·x|, and
/// its worst error (relative to Σ|w·x|) at most a tenth of the plain f16 GEMM's on the same data.
#[test]
#[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
fn gemm_f16x3_keeps_f32_accuracy() {
    use host::cuda::gemm::{GemmKind, gemm};
    let g = gpu();
    let mut rng = Rng::new(11);
    for (t_ty, n, k, t) in [
        (GgmlType::Q5_0, 4864usize, 896usize, 33usize),
        (GgmlType::Q5_0, 896, 896, 512),
        (GgmlType::Q8_0, 128, 896, 100),
        (GgmlType::Q6K, 896, 4864, 65),
        (GgmlType::Q4K, 896, 4864, 17),
        (GgmlType::Q4_1, 1536, 576, 200),
        (GgmlType::F32, 192, 1000 - 1000 % 32, 3),
    ] {
        let (bytes, deq) = random_tensor(t_ty, n, k, &mut rng);
        let w = DeviceTensor::upload(&g, "w", t_ty, n, k, &bytes).unwrap();
        let x = random(&mut rng, t * k, 3.0);
        let want = gemm_ref(&x, &deq, n, k, t);
        let dx = upload(&g, &x);
        // Split f16 through the kernels the backend uses.
        let mut w3 = poisoned(&g, 3 * n * k, 0x7e00u16);
        ops::dequant(&g, &w, None, DequantOut::F16x3(&mut w3.as_view_mut())).unwrap();
        let mut x3 = poisoned(&g, 3 * t * k, 0x7e00u16);
        ops::f32_to_f16x3(&g, &dx.as_view(), k, &mut x3.as_view_mut()).unwrap();
        let mut y = poisoned(&g, t * n, f32::NAN);
        gemm(
            &g,
            GemmKind::F16x3,
            &w3.as_view(),
            &x3.as_view(),
            &mut y.as_view_mut(),
            n,
            k,
            t,
        )
        .unwrap();
        let got = download(&g, &y);
        // Plain f16 on the same data.
        let mut w16 = poisoned(&g, n * k, 0x7e00u16);
        ops::dequant(&g, &w, None, DequantOut::F16(&mut w16.as_view_mut())).unwrap();
        let mut x16 = poisoned(&g, t * k, 0x7e00u16);
        ops::f32_to_f16(&g, &dx.as_view(), &mut x16.as_view_mut()).unwrap();
        let mut y16 = poisoned(&g, t * n, f32::NAN);
        gemm(
            &g,
            GemmKind::F16F32,
            &w16.as_view(),
            &x16.as_view(),
            &mut y16.as_view_mut(),
            n,
            k,
            t,
        )
        .unwrap();
        let plain = download(&g, &y16);
        let worst = |v: &[f32]| {
            v.iter()
                .zip(&want)
                .map(|(&gv, &(s, m))| {
                    if gv.is_finite() {
                        (gv as f64 - s).abs() / m
                    } else {
                        f64::INFINITY
                    }
                })
                .fold(0.0f64, f64::max)
        };
        let (e3, e16) = (worst(&got), worst(&plain));
        eprintln!(
            "gemm {t_ty:?} n={n} k={k} t={t}: worst |err|/Σ|w·x| F16x3 {e3:.2e}, F16F32 {e16:.2e}"
        );
        for (i, (&gv, &(s, m))) in got.iter().zip(&want).enumerate() {
            assert!(
                gv.is_finite() && (gv as f64 - s).abs() <= 1e-5 * m,
                "gemm F16x3 {t_ty:?} n={n} k={k} t={t} element {i}: got {gv} want {s} (Σ|w·x| {m})"
            );
        }
        assert!(
            e3 <= e16 / 10.0,
            "F16x3 {e3:e} is not 10x below plain f16 {e16:e}"
        );
    }
}

/// Shape validation: a wrong-sized buffer is refused with an error naming the kernel, before any
/// launch (runs on a GPU machine: the launchers need a device handle).
#[test]
#[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
fn launchers_refuse_bad_shapes_naming_the_kernel() {
    let g = gpu();
    let x = upload(&g, &[1.0f32; 10]);
    let w = upload(&g, &[1.0f32; 3]);
    let mut out = poisoned(&g, 10, f32::NAN);
    let e =
        ops::rms_norm(&g, &x.as_view(), &w.as_view(), 1e-6, &mut out.as_view_mut()).unwrap_err();
    assert!(e.to_string().contains("rms_norm_f32"), "{e}");
    let mut short = poisoned(&g, 9, f32::NAN);
    let w5 = upload(&g, &[1.0f32; 5]);
    let e = ops::rms_norm(
        &g,
        &x.as_view(),
        &w5.as_view(),
        1e-6,
        &mut short.as_view_mut(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("rms_norm_f32"), "{e}");
    // A bias is one row of the heads it is added to.
    let table = RopeTable::new(&g, 8, 4, 10_000.0).unwrap();
    let mut xr = upload(&g, &[1.0f32; 16]);
    let b7 = upload(&g, &[0.5f32; 7]);
    let e = ops::rope(
        &g,
        &mut xr.as_view_mut(),
        Some(&b7.as_view()),
        &table,
        2,
        0,
        RopeStyle::Normal,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("rope_f32") && e.contains("bias"), "{e}");
    let s = KvShape {
        n_head_kv: 2,
        head_dim: 4,
        n_ctx: 8,
    };
    let mut cache = KvLayer::<u16> {
        k: poisoned(&g, s.elems(), 0x7e00u16),
        v: poisoned(&g, s.elems(), 0x7e00u16),
    };
    let kv = upload(&g, &[1.0f32; 16]);
    let e = ops::kv_append(
        &g,
        &kv.as_view(),
        &kv.as_view(),
        Some(&b7.as_view()),
        &mut cache,
        s,
        0,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("kv_append_f16") && e.contains("bias"), "{e}");
    assert!(
        download(&g, &cache.v).iter().all(|&h| h == 0x7e00),
        "nothing may be written"
    );
    // The split-f16 writers take three halves per element, of rows of an even length.
    let w2 = upload(&g, &[1.0f32; 2]);
    let mut h30 = poisoned(&g, 30, 0x7e00u16);
    let mut h29 = poisoned(&g, 29, 0x7e00u16);
    let e = ops::rms_norm_f16x3(
        &g,
        &x.as_view(),
        &w2.as_view(),
        1e-6,
        &mut h29.as_view_mut(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("rms_norm_f16x3"), "{e}");
    ops::rms_norm_f16x3(
        &g,
        &x.as_view(),
        &w2.as_view(),
        1e-6,
        &mut h30.as_view_mut(),
    )
    .unwrap();
    let e =
        ops::swiglu_f16x3(&g, &x.as_view(), &x.as_view(), 5, &mut h30.as_view_mut()).unwrap_err();
    assert!(
        e.to_string().contains("swiglu_f16x3") && e.to_string().contains("even"),
        "{e}"
    );
    let e =
        ops::swiglu_f16x3(&g, &x.as_view(), &x.as_view(), 2, &mut h29.as_view_mut()).unwrap_err();
    assert!(e.to_string().contains("swiglu_f16x3"), "{e}");
    let mut sel = ops::SelectScratch::new(&g).unwrap();
    let mut xm = upload(&g, &vec![0.5f32; 4096]);
    for (p, why) in [
        (SampleParams::top_k_top_p(2000, 1.0, 1.0), "top_k 2000"),
        (
            SampleParams {
                min_p: 1.5,
                ..SampleParams::top_k_top_p(4, 1.0, 1.0)
            },
            "min_p 1.5",
        ),
        (
            SampleParams {
                repeat_penalty: 1.3,
                ..SampleParams::top_k_top_p(4, 1.0, 1.0)
            },
            "needs the window",
        ),
    ] {
        let e = ops::sample(
            &g,
            &mut xm.as_view_mut(),
            p,
            0.5,
            None,
            &mut sel,
            &mut poisoned(&g, 1, 0u32).as_view_mut(),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sample_f32") && e.contains(why), "{e}");
    }
    // Decode attention: head_dim 96 and a group of 16 query heads per KV head are refused by name
    // before anything is launched.
    for (n_head, n_head_kv, head_dim, why) in
        [(6, 2, 96, "head_dim 96"), (32, 2, 64, "16 query heads")]
    {
        let s = KvShape {
            n_head_kv,
            head_dim,
            n_ctx: 64,
        };
        let mut cache: KvLayer<u16> = KvLayer::new(&g, s).unwrap();
        let q = upload(&g, &vec![0.5f32; n_head * head_dim]);
        let kv = upload(&g, &vec![0.5f32; n_head_kv * head_dim]);
        let table = RopeTable::new(&g, 64, head_dim, 10_000.0).unwrap();
        let mut scratch = ops::DecodeScratch::new(&g, n_head, head_dim, 64).unwrap();
        let mut out = poisoned(&g, n_head * head_dim, f32::NAN);
        let (qv, kvv) = (q.as_view(), kv.as_view());
        let tok = ops::NewToken {
            q: &qv,
            k: &kvv,
            v: &kvv,
            rope: &table,
            style: RopeStyle::Neox,
        };
        let e = ops::attention_decode(
            &g,
            tok,
            &mut cache,
            s,
            n_head,
            DecodeAt::Kv(5),
            &mut scratch,
            &mut out.as_view_mut(),
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("attention_decode_f16") && e.contains(why.split(' ').next().unwrap()),
            "{e}"
        );
        assert!(
            download(&g, &out).iter().all(|v| v.is_nan()),
            "{why}: nothing may be written"
        );
    }
    // The dequant kernels' vector stores need a 16-byte aligned output; the split layouts need
    // three times the elements.
    let w = DeviceTensor::upload(&g, "w", GgmlType::F32, 2, 32, &[0x3f; 2 * 32 * 4]).unwrap();
    let mut buf = poisoned(&g, 200, 0u16);
    let e = ops::dequant(&g, &w, None, DequantOut::F16(&mut buf.slice_mut(1..65))).unwrap_err();
    assert!(e.to_string().contains("dequant_f32_f16"), "{e}");
    let e = ops::dequant(&g, &w, None, DequantOut::F16x3(&mut buf.slice_mut(..64))).unwrap_err();
    assert!(e.to_string().contains("dequant_f32_f16x3"), "{e}");
    let e = ops::f32_to_f16x3(&g, &x.as_view(), 10, &mut buf.slice_mut(..20)).unwrap_err();
    assert!(e.to_string().contains("f32_to_f16x3"), "{e}");
}

/// The CPU's 8-bit quantization of `x` (`quant::Q8Blocks`, what the GPU's `q8_act` reproduces):
/// the quants as bytes, the `[d, s]` pairs interleaved as the device layout, and the values
/// the integer dot products see (`d · q`).
fn q8_cpu(x: &[f32]) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
    let v = host::quant::QuantizedVec::new(host::quant::ActKind::Q8, x).unwrap();
    let host::quant::QuantizedVec::Q8(b) = &v else {
        unreachable!("ActKind::Q8 gives Q8 blocks")
    };
    let (qs, ds) = b.device_layout();
    (qs, ds, v.dequantize())
}

/// f64 dot of each row of `deq` (`cols` wide) with `x`, and `Σ |w · x|`.
fn dots(deq: &[f32], cols: usize, x: &[f32]) -> Vec<(f64, f64)> {
    deq.chunks(cols)
        .map(|row| {
            row.iter().zip(x).fold((0.0, 0.0), |(s, m), (&w, &v)| {
                let p = w as f64 * v as f64;
                (s + p, m + p.abs())
            })
        })
        .collect()
}

proptest! {
    #![proptest_config(cfg(24))]

    /// `matvec_a8`: the row against the CPU-quantized activations, dequantized, in f64:
    /// |err| ≤ 1e-5·Σ|w·x̂| (integer block sums are exact; f32 scaling and accumulation as in
    /// `matvec`). The epilogues bit-exact against the plain result plus the addition. Types
    /// without a kernel are refused with an error.
    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
    fn matvec_a8_matches_cpu_quantized(
        t in prop::sample::select(TYPES),
        ci in 0usize..3,
        rows in prop::sample::select(&[896usize, 128, 4864, 192, 1001, 1][..]),
        seed in any::<u64>(),
    ) {
        let g = gpu();
        let mut rng = Rng::new(seed);
        let cols = cols_for(t)[ci % cols_for(t).len()];
        let (bytes, deq) = random_tensor(t, rows, cols, &mut rng);
        let w = DeviceTensor::upload(&g, "w", t, rows, cols, &bytes).unwrap();
        let x = random(&mut rng, cols, 3.0);
        let (qs, ds, xq) = q8_cpu(&x);
        let (qd, dd) = (upload(&g, &qs), upload(&g, &ds));
        let a8 = ops::A8 { qs: &qd.as_view(), ds: &dd.as_view() };
        let mut y = poisoned(&g, rows, f32::NAN);
        let r = ops::matvec_a8(&g, &w, a8, &mut y.as_view_mut(), MatvecOut::Store);
        let has_kernel = matches!(t, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1
            | GgmlType::Q8_0 | GgmlType::Q4K | GgmlType::Q6K);
        prop_assert_eq!(ops::matvec_a8_supported(&w), has_kernel, "{:?}", t);
        if !has_kernel {
            prop_assert!(r.is_err(), "{:?}: no kernel, yet no error", t);
            return Ok(());
        }
        r.unwrap();
        let got = download(&g, &y);
        for (r, &(want, mag)) in dots(&deq, cols, &xq).iter().enumerate() {
            prop_assert!((got[r] as f64 - want).abs() <= 1e-5 * mag + 1e-30,
                "matvec_a8 {:?} {}x{} row {}: got {} want {} (Σ|wx| {:e})", t, rows, cols, r, got[r], want, mag);
        }
        check_epilogues(&g, &mut rng, &format!("matvec_a8 {t:?} {rows}x{cols}"), &got, |y, out| {
            ops::matvec_a8(&g, &w, a8, y, out).unwrap()
        });
    }

    /// `swiglu_a8`: against the CPU's norm (`cpu::rms_norm`), its 8-bit quantization and f64
    /// dots of the dequantized rows. The GPU norms with a differently ordered sum of squares, so
    /// an element whose scaled value lies within 1e-3 of a rounding tie may round the other way:
    /// each such element widens the bound by `|w|·d` of its block. Otherwise 1e-5·Σ|w·x̂| per dot,
    /// SwiGLU's error propagated. The quantized output is exactly the CPU's quantization of the
    /// GPU's own f32 output.
    #[test]
    #[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
    fn swiglu_a8_matches_cpu_quantized(
        t in prop::sample::select(&[GgmlType::Q5_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_1][..]),
        ci in 0usize..6,
        rows in prop::sample::select(&[4864usize, 1536, 128, 32][..]),
        seed in any::<u64>(),
    ) {
        let g = gpu();
        let mut rng = Rng::new(seed);
        let cols = cols_for(t)[ci % cols_for(t).len()];
        let (gb, gdeq) = random_tensor(t, rows, cols, &mut rng);
        let (ub, udeq) = random_tensor(t, rows, cols, &mut rng);
        let wg = DeviceTensor::upload(&g, "gate", t, rows, cols, &gb).unwrap();
        let wu = DeviceTensor::upload(&g, "up", t, rows, cols, &ub).unwrap();
        prop_assert!(ops::swiglu_a8_supported(&wg, &wu));
        let (hr, gw, eps) = (random(&mut rng, cols, 3.0), random(&mut rng, cols, 1.5), 1e-6f32);
        let (hd, gd) = (upload(&g, &hr), upload(&g, &gw));
        let inp = NormedInput { x: &hd.as_view(), weight: &gd.as_view(), eps };
        let mut hf = poisoned(&g, rows, f32::NAN);
        let mut hq = poisoned(&g, rows, 0x55u8);
        let mut hqd = poisoned(&g, rows / 16, f32::NAN);
        ops::swiglu_a8(&g, &wg, &wu, inp, &mut hf.as_view_mut(),
            ops::A8Mut { qs: &mut hq.as_view_mut(), ds: &mut hqd.as_view_mut() }).unwrap();
        let got = download(&g, &hf);

        let mut xn = vec![0.0f32; cols];
        cpu::rms_norm(&hr, &gw, eps, &mut xn);
        let (_, xds, xq) = q8_cpu(&xn);
        // Elements near a rounding tie, and what a flip there could change.
        let ties: Vec<f64> = xn.iter().enumerate().map(|(i, &v)| {
            let d = xds[2 * (i / 32)] as f64;
            let t = if d > 0.0 { v as f64 / d } else { 0.0 };
            if ((t - t.floor()) - 0.5).abs() < 1e-3 { d } else { 0.0 }
        }).collect();
        let slack = |deq: &[f32], r: usize| -> f64 {
            deq[r * cols..(r + 1) * cols].iter().zip(&ties).map(|(&w, &d)| w.abs() as f64 * d).sum()
        };
        let (wa, wb) = (dots(&gdeq, cols, &xq), dots(&udeq, cols, &xq));
        for r in 0..rows {
            let ((a, ma), (b, mb)) = (wa[r], wb[r]);
            let (ea, eb) = (1e-5 * ma + slack(&gdeq, r), 1e-5 * mb + slack(&udeq, r));
            let silu = a / (1.0 + (-a).exp());
            let want = silu * b;
            let bound = 1.1 * ea * b.abs() + silu.abs() * eb + 1.1 * ea * eb + 1e-5 * want.abs() + 1e-30;
            prop_assert!((got[r] as f64 - want).abs() <= bound,
                "swiglu_a8 {:?} {}x{} row {}: got {} want {} (bound {:e})", t, rows, cols, r, got[r], want, bound);
        }
        let (want_q, want_d, _) = q8_cpu(&got);
        prop_assert_eq!(download(&g, &hq), want_q, "swiglu_a8 {:?} quants of the output", t);
        let got_d = download(&g, &hqd);
        prop_assert!(got_d.iter().zip(&want_d).all(|(a, b)| a.to_bits() == b.to_bits()),
            "swiglu_a8 {:?} output scales: got {:?}, want {:?}", t, &got_d[..4], &want_d[..4]);
    }
}
