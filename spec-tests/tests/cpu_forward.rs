//! The CPU backend's full forward on tiny random models (both architectures, many type mixes)
//! against a straightforward f64 implementation written here from the math, plus the KV-cache
//! contract of the `Backend` trait: batched prefill = token-by-token decode, `Logits::All` rows =
//! `Logits::Last` at each position, rewinding, and refusals.

use std::sync::Arc;

use fixtures::tiny::{TinySpec, build_bytes};
use host::backend::{Backend, BackendError, Logits};
use host::cpu::{Arith, CpuBackend, CpuOptions};
use host::gguf::{GgmlType, Gguf};
use host::model::{Arch, Config, RopeStyle};
use host::quant::dequantize_row_to_vec;

fn load_with(spec: &TinySpec, n_ctx: usize, arith: Arith) -> (Arc<Gguf>, CpuBackend) {
    let g = Arc::new(Gguf::from_bytes(build_bytes(spec)).unwrap());
    let be = CpuBackend::load(
        g.clone(),
        &CpuOptions {
            n_ctx,
            threads: 2,
            arith,
            ..Default::default()
        },
    )
    .unwrap();
    (g, be)
}

fn load(spec: &TinySpec, n_ctx: usize) -> (Arc<Gguf>, CpuBackend) {
    load_with(spec, n_ctx, Arith::Quantized)
}

/// A tensor dequantized to f64, row-major `[rows][cols]`.
fn tensor(g: &Gguf, name: &str) -> Vec<f64> {
    let (t, data) = g.tensor(name).unwrap();
    dequantize_row_to_vec(t.ggml_type, data, t.n_elements as usize)
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// `w` is `[rows][cols]`: returns `w · x`.
fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
    w.chunks(x.len())
        .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let s = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(a, b)| a * s * b).collect()
}

fn rope(x: &mut [f64], head_dim: usize, pos: usize, theta: f64, style: RopeStyle) {
    for head in x.chunks_mut(head_dim) {
        for i in 0..head_dim / 2 {
            let ang = pos as f64 * theta.powf(-2.0 * i as f64 / head_dim as f64);
            let (a, b) = match style {
                RopeStyle::Normal => (2 * i, 2 * i + 1),
                RopeStyle::Neox => (i, i + head_dim / 2),
            };
            let (xa, xb) = (head[a], head[b]);
            head[a] = xa * ang.cos() - xb * ang.sin();
            head[b] = xa * ang.sin() + xb * ang.cos();
        }
    }
}

/// The whole model in f64, one token at a time; returns every position's logits.
fn reference_logits(g: &Gguf, tokens: &[u32]) -> Vec<Vec<f64>> {
    let c = Config::from_header(&g.header).unwrap();
    let (d, hd) = (c.n_embd, c.head_dim);
    let eps = c.rms_eps as f64;
    let theta = c.rope_theta as f64;
    let embd = tensor(g, "token_embd.weight");
    let out_w = if g.header.tensor("output.weight").is_some() {
        tensor(g, "output.weight")
    } else {
        embd.clone()
    };
    let out_norm = tensor(g, "output_norm.weight");
    let lw = |i: usize, s: &str| tensor(g, &format!("blk.{i}.{s}"));
    let has = |i: usize, s: &str| g.header.tensor(&format!("blk.{i}.{s}")).is_some();
    let mut kc: Vec<Vec<Vec<f64>>> = vec![Vec::new(); c.n_layer];
    let mut vc: Vec<Vec<Vec<f64>>> = vec![Vec::new(); c.n_layer];
    let mut all = Vec::new();
    for (pos, &t) in tokens.iter().enumerate() {
        let mut x = embd[t as usize * d..][..d].to_vec();
        for l in 0..c.n_layer {
            let h = rms_norm(&x, &lw(l, "attn_norm.weight"), eps);
            let mut q = matvec(&lw(l, "attn_q.weight"), &h);
            let mut k = matvec(&lw(l, "attn_k.weight"), &h);
            let mut v = matvec(&lw(l, "attn_v.weight"), &h);
            for (p, name) in [(&mut q, "attn_q"), (&mut k, "attn_k"), (&mut v, "attn_v")] {
                if has(l, &format!("{name}.bias")) {
                    for (a, b) in p.iter_mut().zip(lw(l, &format!("{name}.bias"))) {
                        *a += b;
                    }
                }
            }
            rope(&mut q, hd, pos, theta, c.rope_style);
            rope(&mut k, hd, pos, theta, c.rope_style);
            kc[l].push(k);
            vc[l].push(v);
            let mut att = vec![0.0; c.n_head * hd];
            for h in 0..c.n_head {
                let kvh = h / (c.n_head / c.n_head_kv);
                let qh = &q[h * hd..][..hd];
                let s: Vec<f64> = kc[l]
                    .iter()
                    .map(|k| {
                        qh.iter()
                            .zip(&k[kvh * hd..][..hd])
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (p, v) in e.iter().zip(&vc[l]) {
                    for j in 0..hd {
                        att[h * hd + j] += p / z * v[kvh * hd + j];
                    }
                }
            }
            for (a, b) in x.iter_mut().zip(matvec(&lw(l, "attn_output.weight"), &att)) {
                *a += b;
            }
            let h = rms_norm(&x, &lw(l, "ffn_norm.weight"), eps);
            let gate = matvec(&lw(l, "ffn_gate.weight"), &h);
            let up = matvec(&lw(l, "ffn_up.weight"), &h);
            let act: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            for (a, b) in x.iter_mut().zip(matvec(&lw(l, "ffn_down.weight"), &act)) {
                *a += b;
            }
        }
        all.push(matvec(&out_w, &rms_norm(&x, &out_norm, eps)));
    }
    all
}

/// Relative error: max |got - want| / max |want|, with the worst index.
fn rel_err(got: &[f32], want: &[f64]) -> (f64, usize) {
    let scale = want.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs() / scale)
        .enumerate()
        .fold((0.0, 0), |a, (i, e)| if e > a.0 { (e, i) } else { a })
}

/// How far one token's logits may move when computed by the batched kernel rather than the
/// matrix-vector one (prefill in other chunk sizes): the integer sums are the same, the f32
/// accumulation order is not, and a last-bit difference can move an activation across an 8-bit
/// rounding boundary in the next layer (one quantization step, 1/254 of a block's largest value).
const KERNEL_NOISE: f64 = 2e-3;

const TOKENS: [u32; 9] = [17, 260, 3, 101, 101, 44, 300, 0, 255];

fn specs() -> Vec<(String, TinySpec)> {
    use GgmlType::*;
    let mut v = Vec::new();
    for arch in [Arch::Qwen2, Arch::Llama] {
        for types in [
            vec![F32],
            vec![F16],
            vec![Q8_0],
            vec![Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, BF16, F16],
            vec![Q2K, Q3K, Q4K, Q5K, Q6K],
        ] {
            let mut s = TinySpec::new(arch, types[0]);
            s.matrix_types = types.clone();
            s.embd_type = *types.last().unwrap();
            v.push((format!("{arch:?} {types:?}"), s));
        }
    }
    v
}

/// Exact arithmetic (f32 dequantized weights, f32 activations) against f64: accumulation-order
/// noise only. Quantized arithmetic (8-bit activations): each activation is rounded to 1/254 of
/// its block's largest value; through two layers and the LM head that stays within a few
/// percent of the largest logit.
#[test]
fn forward_matches_f64_reference_on_tiny_models() {
    for (arith, tol) in [(Arith::Exact, 1e-5), (Arith::Quantized, 3e-2)] {
        let mut worst = (0.0, String::new());
        for (name, spec) in specs() {
            let (g, mut be) = load_with(&spec, 64, arith);
            let want = reference_logits(&g, &TOKENS);
            let got = be.forward(&TOKENS, 0, Logits::All).unwrap();
            let nv = be.config().n_vocab;
            for (p, w) in want.iter().enumerate() {
                let (err, at) = rel_err(&got[p * nv..][..nv], w);
                assert!(
                    err < tol,
                    "{arith:?} {name}: position {p}: relative error {err:e} at vocab index {at}"
                );
                if err > worst.0 {
                    worst = (err, format!("{name} position {p} index {at}"));
                }
            }
        }
        eprintln!(
            "{arith:?}: worst relative error {:e} ({})",
            worst.0, worst.1
        );
    }
}

#[test]
fn batched_prefill_equals_token_by_token_and_last_equals_all() {
    for (name, spec) in specs().into_iter().step_by(3) {
        let (_, mut be) = load(&spec, 64);
        let nv = be.config().n_vocab;
        let all = be.forward(&TOKENS, 0, Logits::All).unwrap();
        assert_eq!(all.len(), TOKENS.len() * nv);
        be.reset();
        // Prefill in uneven chunks, then one at a time.
        let mut pos = 0;
        for chunk in [&TOKENS[..4], &TOKENS[4..5], &TOKENS[5..]] {
            let last = be.forward(chunk, pos, Logits::Last).unwrap();
            pos += chunk.len();
            let (err, at) = rel_err(
                &last,
                &all[(pos - 1) * nv..][..nv]
                    .iter()
                    .map(|&v| v as f64)
                    .collect::<Vec<_>>(),
            );
            assert!(
                err < KERNEL_NOISE,
                "{name}: chunk ending at {pos}: {err:e} at {at}"
            );
        }
        assert_eq!(be.n_past(), TOKENS.len());
        assert!(
            be.forward(&TOKENS[..2], 0, Logits::None)
                .unwrap()
                .is_empty()
        );
        assert_eq!(be.n_past(), 2);
    }
}

#[test]
fn rewinding_recomputes_from_the_given_position() {
    let (_, mut be) = load(&TinySpec::new(Arch::Qwen2, GgmlType::Q8_0), 64);
    let a = be.forward(&[5, 6, 7, 8], 0, Logits::Last).unwrap();
    // Overwrite positions 2.. with other tokens, then go back to the original ones.
    let b = be.forward(&[40, 41], 2, Logits::Last).unwrap();
    assert_ne!(a, b);
    let again = be.forward(&[7, 8], 2, Logits::Last).unwrap();
    assert_eq!(a, again);
}

#[test]
fn forward_refuses_bad_input_without_corrupting_the_cache() {
    let (_, mut be) = load(&TinySpec::new(Arch::Llama, GgmlType::Q4_0), 8);
    let n_vocab = be.config().n_vocab as u32;
    let ok = be.forward(&[1, 2, 3], 0, Logits::Last).unwrap();
    assert!(matches!(
        be.forward(&[1; 6], 3, Logits::Last),
        Err(BackendError::ContextFull {
            needed: 9,
            capacity: 8
        })
    ));
    assert!(matches!(
        be.forward(&[n_vocab], 3, Logits::Last),
        Err(BackendError::BadToken { .. })
    ));
    assert!(matches!(
        be.forward(&[1], 4, Logits::Last),
        Err(BackendError::BadPosition { pos: 4, filled: 3 })
    ));
    assert_eq!(be.n_past(), 3);
    // Recomputing position 2 alone (a matrix-vector product instead of the batched kernel: the
    // same integer sums, another float accumulation order) gives the same logits up to
    // [`KERNEL_NOISE`].
    let again = be.forward(&[3], 2, Logits::Last).unwrap();
    let want: Vec<f64> = ok.iter().map(|&v| v as f64).collect();
    let (err, at) = rel_err(&again, &want);
    assert!(err < KERNEL_NOISE, "{err:e} at {at}");
}
