//! The CPU reference ops against straightforward f64 implementations written from the math, on
//! random inputs of the real models' shapes and of odd edge shapes.

use fixtures::synth::Rng;
use host::cpu;
use host::model::RopeStyle;

fn random(n: usize, scale: f32, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| scale * rng.uniform()).collect()
}

/// Relative error measure: max |got - want| / max(1, max |want|); names the worst index.
fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let (worst, err) = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs() / scale)
        .enumerate()
        .fold((0, 0.0f64), |a, (i, e)| if e > a.1 { (i, e) } else { a });
    assert!(
        err <= tol,
        "{what}: relative error {err:e} at index {worst} (got {}, want {}) exceeds {tol:e}",
        got[worst],
        want[worst]
    );
}

fn rms_norm_f64(x: &[f32], w: &[f32], eps: f32) -> Vec<f64> {
    let n = w.len();
    let mut out = Vec::new();
    for row in x.chunks(n) {
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / n as f64;
        let s = 1.0 / (ms + eps as f64).sqrt();
        out.extend(row.iter().zip(w).map(|(&v, &g)| v as f64 * s * g as f64));
    }
    out
}

#[test]
fn rms_norm_matches_f64() {
    let mut rng = Rng::new(11);
    for (n, rows, eps) in [(896, 3, 1e-6), (576, 1, 1e-5), (7, 5, 1e-6), (1, 2, 1e-6)] {
        let x = random(n * rows, 3.0, &mut rng);
        let w: Vec<f32> = (0..n).map(|_| 1.0 + 0.5 * rng.uniform()).collect();
        let mut out = vec![f32::NAN; x.len()];
        cpu::rms_norm(&x, &w, eps, &mut out);
        assert_close(
            &format!("rms_norm n={n} rows={rows}"),
            &out,
            &rms_norm_f64(&x, &w, eps),
            1e-5,
        );
    }
}

fn rope_f64(
    x: &[f32],
    n_head: usize,
    d: usize,
    positions: &[usize],
    theta: f64,
    style: RopeStyle,
) -> Vec<f64> {
    let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for (r, &p) in positions.iter().enumerate() {
        for h in 0..n_head {
            let base = r * n_head * d + h * d;
            for i in 0..d / 2 {
                let ang = p as f64 / theta.powf(2.0 * i as f64 / d as f64);
                let (a, b) = match style {
                    RopeStyle::Normal => (base + 2 * i, base + 2 * i + 1),
                    RopeStyle::Neox => (base + i, base + i + d / 2),
                };
                let (xa, xb) = (x[a] as f64, x[b] as f64);
                out[a] = xa * ang.cos() - xb * ang.sin();
                out[b] = xa * ang.sin() + xb * ang.cos();
            }
        }
    }
    out
}

#[test]
fn rope_matches_f64_both_styles() {
    let mut rng = Rng::new(12);
    for style in [RopeStyle::Normal, RopeStyle::Neox] {
        for (n_head, d, positions, theta) in [
            (14, 64, vec![0usize, 1, 2, 31], 1_000_000.0f32),
            (9, 64, vec![5, 4096, 30_000], 100_000.0),
            (2, 2, vec![3], 10_000.0),
        ] {
            let x0 = random(positions.len() * n_head * d, 2.0, &mut rng);
            let mut x = x0.clone();
            cpu::rope(&mut x, n_head, d, &positions, theta, style);
            assert_close(
                &format!("rope {style:?} heads={n_head} d={d} pos={positions:?}"),
                &x,
                &rope_f64(&x0, n_head, d, &positions, theta as f64, style),
                1e-5,
            );
        }
    }
}

#[test]
fn swiglu_softmax_add_match_f64() {
    let mut rng = Rng::new(13);
    let gate = random(4864, 8.0, &mut rng);
    let up = random(4864, 2.0, &mut rng);
    let mut out = vec![f32::NAN; 4864];
    cpu::swiglu(&gate, &up, &mut out);
    let want: Vec<f64> = gate
        .iter()
        .zip(&up)
        .map(|(&g, &u)| g as f64 / (1.0 + (-g as f64).exp()) * u as f64)
        .collect();
    assert_close("swiglu", &out, &want, 1e-6);

    for n in [1usize, 3, 151_936] {
        let x0 = random(n, 20.0, &mut rng);
        let mut x = x0.clone();
        cpu::softmax(&mut x);
        let max = x0.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let e: Vec<f64> = x0.iter().map(|&v| (v as f64 - max).exp()).collect();
        let s: f64 = e.iter().sum();
        let want: Vec<f64> = e.iter().map(|v| v / s).collect();
        assert_close(&format!("softmax n={n}"), &x, &want, 1e-6);
    }

    let dst0 = random(3 * 128, 1.0, &mut rng);
    let bias = random(128, 1.0, &mut rng);
    let mut dst = dst0.clone();
    cpu::add(&mut dst, &bias);
    let want: Vec<f64> = dst0
        .iter()
        .enumerate()
        .map(|(i, &v)| v as f64 + bias[i % 128] as f64)
        .collect();
    assert_close("add (broadcast)", &dst, &want, 1e-7);
}

#[allow(clippy::too_many_arguments)]
fn attention_f64(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n_head: usize,
    n_head_kv: usize,
    d: usize,
    pos0: usize,
) -> Vec<f64> {
    let n_q = q.len() / (n_head * d);
    let mut out = vec![0.0f64; q.len()];
    for i in 0..n_q {
        for h in 0..n_head {
            let kvh = h * n_head_kv / n_head;
            let qv = &q[(i * n_head + h) * d..][..d];
            let scores: Vec<f64> = (0..=pos0 + i)
                .map(|t| {
                    let kv = &k[(t * n_head_kv + kvh) * d..][..d];
                    qv.iter()
                        .zip(kv)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let max = scores.iter().fold(f64::NEG_INFINITY, |m, &s| m.max(s));
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let z: f64 = e.iter().sum();
            for (t, w) in e.iter().enumerate() {
                let vv = &v[(t * n_head_kv + kvh) * d..][..d];
                for j in 0..d {
                    out[(i * n_head + h) * d + j] += w / z * vv[j] as f64;
                }
            }
        }
    }
    out
}

#[test]
fn attention_matches_f64_causal_gqa() {
    let mut rng = Rng::new(14);
    // (n_head, n_head_kv, head_dim, pos0, n_q, cache rows): qwen's 14/2x64, SmolLM's 9/3x64,
    // plain multi-head, a single query deep into the cache, a cache longer than needed.
    for (n_head, n_head_kv, d, pos0, n_q, rows) in [
        (14, 2, 64, 0, 7, 7),
        (9, 3, 64, 5, 3, 8),
        (4, 4, 8, 0, 1, 1),
        (14, 2, 64, 300, 1, 301),
        (2, 1, 4, 2, 2, 10),
    ] {
        let q = random(n_q * n_head * d, 1.5, &mut rng);
        let k = random(rows * n_head_kv * d, 1.5, &mut rng);
        let v = random(rows * n_head_kv * d, 1.0, &mut rng);
        let mut out = vec![f32::NAN; q.len()];
        cpu::attention(&q, &k, &v, n_head, n_head_kv, d, pos0, &mut out);
        let used = (pos0 + n_q) * n_head_kv * d;
        assert_close(
            &format!("attention {n_head}/{n_head_kv}x{d} pos0={pos0} n_q={n_q}"),
            &out,
            &attention_f64(&q, &k[..used], &v[..used], n_head, n_head_kv, d, pos0),
            1e-5,
        );
    }
}
