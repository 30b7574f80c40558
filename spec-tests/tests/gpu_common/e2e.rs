//! Teacher-forced GPU-vs-CPU comparison shared by `gpu_e2e` (twins) and `gpu_real` (real models).

use std::path::PathBuf;
use std::sync::Arc;

use host::backend::{Backend, Logits};
use host::cpu::{CpuBackend, CpuOptions};
use host::cuda::{CudaBackend, CudaOptions};
use host::gguf::Gguf;

pub const N_PROMPT: usize = 512;
pub const N_DECODE: usize = 64;
/// Decode steps at the end that use the device argmax instead of downloading logits.
pub const N_NEXT: usize = 8;
pub const MAX_REL_L2: f64 = 2e-3;
pub const MARGIN: f32 = 0.1;

pub fn headers_dir() -> PathBuf {
    std::env::var_os("GPU_FIXTURE_HEADERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| spec_tests::workspace_root().join("fixtures/headers"))
}

/// The twin of `header` (a file in `fixtures/headers`), written on first use.
pub fn twin(header: &str) -> PathBuf {
    let dir = std::env::var_os("GPU_TWIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(header.replace(".header.gguf", ".twin.gguf"));
    if !out.exists() {
        let tmp = out.with_extension("partial");
        fixtures::twin::make_twin(&headers_dir().join(header), &tmp, 1)
            .unwrap_or_else(|e| panic!("making the twin of {header}: {e}"));
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

/// (argmax, top-1 minus top-2) of one row of logits; ties go to the lower id.
pub fn top2(row: &[f32]) -> (usize, f32) {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    let second = row
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .map(|(_, &v)| v)
        .fold(f32::NEG_INFINITY, f32::max);
    (best, row[best] - second)
}

pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        num += (g as f64 - w as f64).powi(2);
        den += (w as f64).powi(2);
    }
    (num / den).sqrt()
}

/// The CPU's logits for the teacher-forced schedule: prefill rows, then one row per decode step.
pub struct CpuRun {
    pub rows: Vec<Vec<f32>>,
    pub tokens: Vec<u32>,
}

pub fn cpu_run(g: &Arc<Gguf>, seed: u64) -> CpuRun {
    let mut cpu = CpuBackend::load(
        g.clone(),
        &CpuOptions {
            n_ctx: 1024,
            threads: 0,
        },
    )
    .unwrap();
    let n_vocab = cpu.config().n_vocab;
    let mut rng = super::Rng::new(seed);
    let tokens: Vec<u32> = (0..N_PROMPT + N_DECODE)
        .map(|_| (rng.next_u64() % n_vocab as u64) as u32)
        .collect();
    let t0 = std::time::Instant::now();
    let all = cpu.forward(&tokens[..N_PROMPT], 0, Logits::All).unwrap();
    let mut rows: Vec<Vec<f32>> = all.chunks_exact(n_vocab).map(<[f32]>::to_vec).collect();
    for i in 0..N_DECODE {
        rows.push(
            cpu.forward(&tokens[N_PROMPT + i..][..1], N_PROMPT + i, Logits::Last)
                .unwrap(),
        );
    }
    eprintln!("cpu reference: {:.1} s", t0.elapsed().as_secs_f64());
    CpuRun { rows, tokens }
}

/// What one GPU run through the teacher-forced schedule found.
pub struct GpuReport {
    pub label: String,
    /// Largest logits rel L2 over all positions, and where.
    pub worst: (f64, usize),
    /// Positions whose argmax was compared (CPU margin > MARGIN).
    pub checks: usize,
    /// The first violated bar, if any.
    pub failure: Option<String>,
}

/// Runs the GPU through the same schedule and checks every position (without panicking, so that
/// several configurations can be reported before the verdict).
pub fn gpu_check(label: &str, g: &Gguf, opts: CudaOptions, r: &CpuRun) -> GpuReport {
    let mut rep = GpuReport {
        label: label.to_string(),
        worst: (0.0, 0),
        checks: 0,
        failure: None,
    };
    let fail = |rep: &mut GpuReport, msg: String| {
        if rep.failure.is_none() {
            rep.failure = Some(msg);
        }
    };
    let mut gpu = CudaBackend::load(g, opts).unwrap();
    let n_vocab = gpu.config().n_vocab;
    let t0 = std::time::Instant::now();
    let all = gpu.forward(&r.tokens[..N_PROMPT], 0, Logits::All).unwrap();
    let t_prefill = t0.elapsed().as_secs_f64();
    assert_eq!(all.len(), N_PROMPT * n_vocab, "{label}: prefill logits");
    let mut rows: Vec<Vec<f32>> = all.chunks_exact(n_vocab).map(<[f32]>::to_vec).collect();
    let t1 = std::time::Instant::now();
    for i in 0..N_DECODE - N_NEXT {
        rows.push(
            gpu.forward(&r.tokens[N_PROMPT + i..][..1], N_PROMPT + i, Logits::Last)
                .unwrap(),
        );
    }
    let t_decode = t1.elapsed().as_secs_f64() / (N_DECODE - N_NEXT) as f64;
    for (p, (gr, cr)) in rows.iter().zip(&r.rows).enumerate() {
        let e = rel_l2(gr, cr);
        if e > rep.worst.0 || e.is_nan() {
            rep.worst = (e, p);
        }
        if e.is_nan() || e > MAX_REL_L2 {
            fail(
                &mut rep,
                format!("{label}: position {p}: logits rel L2 {e:e} > {MAX_REL_L2:e}"),
            );
        }
        let (ca, cm) = top2(cr);
        if cm > MARGIN {
            rep.checks += 1;
            let ga = top2(gr).0;
            if ga != ca {
                fail(
                    &mut rep,
                    format!("{label}: position {p}: argmax {ga} vs CPU {ca} (CPU margin {cm})"),
                );
            }
        }
    }
    // Device-side argmax for the last steps: one token id copied back per step.
    for i in N_DECODE - N_NEXT..N_DECODE {
        let pos = N_PROMPT + i;
        let id = gpu.forward_next(&r.tokens[pos..][..1], pos, None).unwrap();
        let (ca, cm) = top2(&r.rows[pos]);
        if cm > MARGIN {
            rep.checks += 1;
            if id as usize != ca {
                fail(
                    &mut rep,
                    format!(
                        "{label}: forward_next at position {pos}: {id} vs CPU {ca} (CPU margin {cm})"
                    ),
                );
            }
        }
    }
    assert_eq!(gpu.n_past(), N_PROMPT + N_DECODE);
    eprintln!(
        "{label}: max rel L2 {:.2e} at position {}; argmax compared at {} positions (margin > {MARGIN}); \
         prefill {N_PROMPT} tokens {:.1} ms, decode {:.2} ms/token (both incl. logits download) on {}; {}",
        rep.worst.0,
        rep.worst.1,
        rep.checks,
        t_prefill * 1e3,
        t_decode * 1e3,
        gpu.gpu().name(),
        rep.failure.as_deref().unwrap_or("ok")
    );
    rep
}

/// Panics with every report's failure, if any; requires some argmax comparisons.
pub fn verdict(reports: &[GpuReport]) {
    let fails: Vec<&str> = reports
        .iter()
        .filter_map(|r| r.failure.as_deref())
        .collect();
    assert!(fails.is_empty(), "{}", fails.join("\n"));
    for r in reports {
        assert!(
            r.checks > 0,
            "{}: no position had a comfortable CPU margin: the check is vacuous",
            r.label
        );
    }
}
