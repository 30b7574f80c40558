//! The CPU backend's f16 KV cache (`CpuOptions::kv = KvPrecision::F16`, the precision of the GPU's
//! default cache) end to end on tiny models of both architectures: its logits stay close to the
//! f32 cache's, it holds half the bytes, and it keeps the cache contract (prefill in chunks = one
//! prefill, rewinding recomputes, bad input refused without corrupting it).
//!
//! That the f16 cache differs from the f32 cache by nothing but the rounding of the stored keys
//! and values (bit-identical logits against an f32 cache fed the rounded values), and that the
//! rounding is IEEE round-to-nearest-even like the GPU's `cvt.rn.f16.f32`, is tested in
//! `host::cpu::kv` and `host::cpu::forward`.

use std::sync::Arc;

use fixtures::tiny::{TinySpec, build_bytes};
use host::backend::{Backend, BackendError, Logits};
use host::cpu::{Arith, CpuBackend, CpuOptions, KvPrecision};
use host::gguf::{GgmlType, Gguf};
use host::model::Arch;

fn backend(g: &Arc<Gguf>, arith: Arith, kv: KvPrecision) -> CpuBackend {
    CpuBackend::load(
        g.clone(),
        &CpuOptions {
            n_ctx: 96,
            threads: 2,
            arith,
            kv,
        },
    )
    .unwrap()
}

fn models() -> Vec<(String, Arc<Gguf>)> {
    use GgmlType::*;
    let mut v = Vec::new();
    for arch in [Arch::Qwen2, Arch::Llama] {
        for types in [vec![F32], vec![Q8_0], vec![Q4K, Q6K, Q5_0]] {
            let mut s = TinySpec::new(arch, types[0]);
            s.matrix_types = types.clone();
            s.embd_type = *types.last().unwrap();
            let g = Arc::new(Gguf::from_bytes(build_bytes(&s)).unwrap());
            v.push((format!("{arch:?} {types:?}"), g));
        }
    }
    v
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        num += (g as f64 - w as f64).powi(2);
        den += (w as f64).powi(2);
    }
    (num / den).sqrt()
}

/// (argmax, top-1 minus top-2).
fn top2(row: &[f32]) -> (usize, f32) {
    let best = (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b });
    let second = (0..row.len())
        .filter(|&i| i != best)
        .fold(f32::NEG_INFINITY, |m, i| m.max(row[i]));
    (best, row[best] - second)
}

/// Prefill of 64 tokens (every row's logits) then 16 decode steps: one logits row per position.
fn schedule(be: &mut CpuBackend, tokens: &[u32]) -> Vec<Vec<f32>> {
    let nv = be.config().n_vocab;
    let all = be.forward(&tokens[..64], 0, Logits::All).unwrap();
    let mut rows: Vec<Vec<f32>> = all.chunks_exact(nv).map(<[f32]>::to_vec).collect();
    for p in 64..tokens.len() {
        rows.push(be.forward(&tokens[p..p + 1], p, Logits::Last).unwrap());
    }
    rows
}

/// Each stored key and value moves by at most half an f16 step (2^-11 ≈ 4.9e-4 relative); through
/// the scores, the softmax and the layers after it the logits move by a model-dependent multiple
/// of that: measured (exact arithmetic, rel L2 per position) ≤ 7e-4 for the f32 and Q8_0 models
/// and 2.7e-3 for the qwen2 K-quant mix (its larger keys). The bar, 1e-2, is ~20× the rounding;
/// the argmax must not change where the f32 cache's top-1/top-2 margin exceeds 0.1.
///
/// Exact arithmetic only: with 8-bit activations a value that moves across a quantization step of
/// the next product moves by a whole step (1/254 of its block's largest value), which made these
/// logits move by up to 4e-2 — the 8-bit arithmetic's noise, not the cache's (the cache contract
/// test below runs both arithmetics).
const MAX_REL_L2: f64 = 1e-2;

#[test]
fn f16_cache_logits_are_close_to_the_f32_cache_and_take_half_the_memory() {
    let mut worst = (0.0f64, String::new());
    let mut argmax_checks = 0;
    for (name, g) in models() {
        let n_vocab = host::model::Config::from_header(&g.header).unwrap().n_vocab;
        let tokens: Vec<u32> = (0..80u32)
            .map(|i| (i * 7919 + 13) % n_vocab as u32)
            .collect();
        let mut b32 = backend(&g, Arith::Exact, KvPrecision::F32);
        let mut b16 = backend(&g, Arith::Exact, KvPrecision::F16);
        assert_eq!(b16.kv_precision(), KvPrecision::F16);
        let r32 = schedule(&mut b32, &tokens);
        let r16 = schedule(&mut b16, &tokens);
        let c = b16.config();
        let per_pos = 2 * c.n_layer * c.kv_dim();
        assert_eq!(b16.kv_bytes(), 2 * per_pos * tokens.len(), "{name}");
        assert_eq!(b32.kv_bytes(), 4 * per_pos * tokens.len(), "{name}");
        let mut moved = false;
        for (p, (a, b)) in r16.iter().zip(&r32).enumerate() {
            assert!(a.iter().all(|v| v.is_finite()), "{name}: position {p}");
            let e = rel_l2(a, b);
            moved |= e > 0.0;
            assert!(
                e <= MAX_REL_L2,
                "{name}: position {p}: f16 vs f32 cache rel L2 {e:e}"
            );
            if e > worst.0 {
                worst = (e, format!("{name} position {p}"));
            }
            let (want, margin) = top2(b);
            if margin > 0.1 {
                argmax_checks += 1;
                assert_eq!(top2(a).0, want, "{name}: position {p} argmax");
            }
        }
        // Not vacuous: rounding the cache must change something.
        assert!(moved, "{name}: f16 cache gave the f32 cache's logits");
    }
    eprintln!(
        "f16 vs f32 KV cache: worst rel L2 {:.2e} ({}); argmax compared at {argmax_checks} positions",
        worst.0, worst.1
    );
    assert!(argmax_checks > 100);
}

#[test]
fn f16_cache_keeps_the_cache_contract() {
    for (name, g) in models().into_iter().step_by(2) {
        for arith in [Arith::Exact, Arith::Quantized] {
            let mut be = backend(&g, arith, KvPrecision::F16);
            let nv = be.config().n_vocab;
            let tokens: Vec<u32> = (0..24u32).map(|i| (i * 31 + 7) % nv as u32).collect();
            let all = be.forward(&tokens, 0, Logits::All).unwrap();
            // Prefill in uneven chunks: the same stored values, the same logits (exact
            // arithmetic computes each row alike in a batch or alone; 8-bit arithmetic may
            // accumulate a batch in another order: the CPU's kernel noise, 2e-3).
            be.reset();
            assert_eq!(be.kv_bytes(), 0);
            let mut pos = 0;
            for chunk in [&tokens[..10], &tokens[10..11], &tokens[11..]] {
                let last = be.forward(chunk, pos, Logits::Last).unwrap();
                pos += chunk.len();
                let e = rel_l2(&last, &all[(pos - 1) * nv..][..nv]);
                let tol = if arith == Arith::Exact { 1e-6 } else { 2e-3 };
                assert!(e <= tol, "{name} {arith:?}: chunk ending at {pos}: {e:e}");
            }
            // Rewinding overwrites the stored positions.
            let a = be.forward(&tokens[20..], 20, Logits::Last).unwrap();
            let b = be.forward(&[1, 2], 20, Logits::Last).unwrap();
            assert_ne!(a, b);
            assert_eq!(be.forward(&tokens[20..], 20, Logits::Last).unwrap(), a);
            // Bad input: refused, the cache still holds its positions.
            assert!(matches!(
                be.forward(&[nv as u32], 24, Logits::Last),
                Err(BackendError::BadToken { .. })
            ));
            assert!(matches!(
                be.forward(&[1; 80], 24, Logits::Last),
                Err(BackendError::ContextFull { .. })
            ));
            assert_eq!(be.n_past(), 24);
            assert_eq!(be.forward(&tokens[20..], 20, Logits::Last).unwrap(), a);
        }
    }
}
