//! Teacher-forced GPU-vs-CPU comparison shared by `gpu_e2e` (twins) and `gpu_real` (real models).

use std::path::PathBuf;
use std::sync::Arc;

use host::backend::{Backend, Logits};
use host::cpu::{CpuBackend, CpuOptions};
use host::cuda::gemm::GemmKind;
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
            arith: host::cpu::Arith::Exact,
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

/// The GPU's output for the teacher-forced schedule: logits rows (prefill rows, then decode
/// steps), and the ids chosen on the device (`forward_next`) for the last `n_next` steps.
pub struct GpuRun {
    pub label: String,
    pub rows: Vec<Vec<f32>>,
    /// (position, id) of the device-side argmax steps.
    pub next: Vec<(usize, u32)>,
    pub t_prefill: f64,
    pub t_decode: f64,
    pub device: String,
}

/// Runs the GPU through the schedule: a 512-token prefill (all logits), then decode steps with
/// the last logits, the final `n_next` of them through the device argmax.
pub fn gpu_run(label: &str, g: &Gguf, opts: CudaOptions, tokens: &[u32], n_next: usize) -> GpuRun {
    let mut gpu = CudaBackend::load(g, opts).unwrap();
    let n_vocab = gpu.config().n_vocab;
    let t0 = std::time::Instant::now();
    let all = gpu.forward(&tokens[..N_PROMPT], 0, Logits::All).unwrap();
    let t_prefill = t0.elapsed().as_secs_f64();
    assert_eq!(all.len(), N_PROMPT * n_vocab, "{label}: prefill logits");
    let mut rows: Vec<Vec<f32>> = all.chunks_exact(n_vocab).map(<[f32]>::to_vec).collect();
    let t1 = std::time::Instant::now();
    for i in 0..N_DECODE - n_next {
        rows.push(
            gpu.forward(&tokens[N_PROMPT + i..][..1], N_PROMPT + i, Logits::Last)
                .unwrap(),
        );
    }
    let t_decode = t1.elapsed().as_secs_f64() / (N_DECODE - n_next).max(1) as f64;
    let mut next = Vec::new();
    for i in N_DECODE - n_next..N_DECODE {
        let pos = N_PROMPT + i;
        next.push((
            pos,
            gpu.forward_next(&tokens[pos..][..1], pos, None).unwrap(),
        ));
    }
    assert_eq!(gpu.n_past(), N_PROMPT + N_DECODE);
    GpuRun {
        label: label.to_string(),
        rows,
        next,
        t_prefill,
        t_decode,
        device: gpu.gpu().name().to_string(),
    }
}

/// What comparing one GPU run with the CPU found.
pub struct GpuReport {
    pub label: String,
    /// Largest logits rel L2 over the checked positions, and where.
    pub worst: (f64, usize),
    /// Positions compared, and how many of them were above the bar.
    pub compared: usize,
    /// Positions whose argmax was compared (CPU margin > MARGIN).
    pub checks: usize,
    /// The first violated bar, if any.
    pub failure: Option<String>,
}

/// Compares a GPU run with the CPU at every position not marked in `skip` (logits rel L2 ≤
/// MAX_REL_L2; argmax equal where the CPU margin > MARGIN, device-side ids included), without
/// panicking so that several runs can be reported before the verdict.
pub fn compare(run: &GpuRun, cpu: &CpuRun, skip: &[bool], bar: f64) -> GpuReport {
    let label = &run.label;
    let mut rep = GpuReport {
        label: label.clone(),
        worst: (0.0, 0),
        compared: 0,
        checks: 0,
        failure: None,
    };
    let fail = |rep: &mut GpuReport, msg: String| {
        if rep.failure.is_none() {
            rep.failure = Some(msg);
        }
    };
    let mut errs = Vec::new();
    for (p, (gr, cr)) in run.rows.iter().zip(&cpu.rows).enumerate() {
        if skip.get(p).copied().unwrap_or(false) {
            continue;
        }
        rep.compared += 1;
        let e = rel_l2(gr, cr);
        errs.push(e);
        if e > rep.worst.0 || e.is_nan() {
            rep.worst = (e, p);
        }
        if e.is_nan() || e > bar {
            fail(
                &mut rep,
                format!("{label}: position {p}: logits rel L2 {e:e} > {bar:e}"),
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
    for &(pos, id) in &run.next {
        if skip.get(pos).copied().unwrap_or(false) {
            continue;
        }
        let (ca, cm) = top2(&cpu.rows[pos]);
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
    errs.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        errs.get(((errs.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    eprintln!(
        "{label}: {} positions compared ({} skipped), rel L2 median {:.2e}, p99 {:.2e}, max {:.2e} at position {}; \
         {} above {bar:e}; argmax compared at {} positions (CPU margin > {MARGIN}); \
         prefill {N_PROMPT} tokens {:.1} ms, decode {:.2} ms/token (both incl. logits download) on {}; {}",
        rep.compared,
        skip.iter().filter(|&&s| s).count(),
        pct(0.5),
        pct(0.99),
        rep.worst.0,
        rep.worst.1,
        errs.iter().filter(|&&e| e > bar).count(),
        rep.checks,
        run.t_prefill * 1e3,
        run.t_decode * 1e3,
        run.device,
        rep.failure.as_deref().unwrap_or("ok")
    );
    rep
}

/// Positions whose logits move by more than this (rel L2) when only the KV cache is rounded to
/// f16 are ill-conditioned: no f16-cache engine can be held to the 2e-3 bar there.
pub const SENSITIVE: f64 = 5e-4;
/// The bar of the f16 tensor-core GEMM configuration (activations and decoded weights rounded to
/// f16 before every prefill product: ~2^-12 relative per operand, amplified through the layers).
pub const FAST_REL_L2: f64 = 1e-2;
/// Largest fraction of positions the default-precision comparison may skip as ill-conditioned.
pub const MAX_SKIPPED: f64 = 0.05;

/// The whole check on one model:
/// 1. reference precision (f32 GEMMs, f32 LM head, f32 KV cache) against the CPU at every
///    position: the bar, no exceptions;
/// 2. the conditioning of each position, measured on the GPU: the same run with only the KV cache
///    in f16, against run 1;
/// 3. the default configuration (f16 KV cache, split-f16 `F16x3` GEMMs, f16 LM head) against the
///    CPU at every position that is not ill-conditioned (at most 5% may be skipped), with the same
///    bar;
/// 4. the plain f16 tensor-core GEMM configuration likewise, with the bar [`FAST_REL_L2`];
/// 5. reference precision with the `F16x3` GEMMs instead of the f32 ones, at every position with
///    the bar, like run 1: the split-f16 GEMM is held to the f32 path's standard.
pub fn check_model(label: &str, g: &Gguf, cpu: &CpuRun) {
    let base = CudaOptions {
        n_ctx: 1024,
        ..CudaOptions::default()
    };
    let exact = gpu_run(
        &format!("{label} reference precision"),
        g,
        base.reference_precision(),
        &cpu.tokens,
        0,
    );
    let kv16 = gpu_run(
        &format!("{label} reference precision + f16 KV cache"),
        g,
        CudaOptions {
            kv_f32: false,
            ..base.reference_precision()
        },
        &cpu.tokens,
        0,
    );
    let default = gpu_run(
        &format!("{label} default (f16 KV cache, split-f16 GEMMs, f16 LM head)"),
        g,
        base,
        &cpu.tokens,
        N_NEXT,
    );
    let fast = gpu_run(
        &format!("{label} f16 tensor-core GEMMs (f16 KV cache, f16 LM head)"),
        g,
        CudaOptions {
            gemm: GemmKind::F16F32,
            ..base
        },
        &cpu.tokens,
        N_NEXT,
    );
    let split = gpu_run(
        &format!("{label} reference precision with split-f16 GEMMs"),
        g,
        CudaOptions {
            gemm: GemmKind::F16x3,
            ..base.reference_precision()
        },
        &cpu.tokens,
        0,
    );
    let n = cpu.rows.len();
    let sens: Vec<f64> = (0..n)
        .map(|p| rel_l2(&kv16.rows[p], &exact.rows[p]))
        .collect();
    let skip: Vec<bool> = sens.iter().map(|&s| s.is_nan() || s > SENSITIVE).collect();
    let n_skip = skip.iter().filter(|&&s| s).count();
    let mut worst_s = (0.0, 0);
    for (p, &s) in sens.iter().enumerate() {
        if s > worst_s.0 {
            worst_s = (s, p);
        }
    }
    eprintln!(
        "{label}: f16 KV cache alone moves the logits by up to {:.2e} (position {}); {n_skip} of {n} positions above {SENSITIVE:e} are skipped in the f16-cache comparisons",
        worst_s.0, worst_s.1
    );
    let reports = [
        compare(&exact, cpu, &[], MAX_REL_L2),
        compare(&default, cpu, &skip, MAX_REL_L2),
        compare(&fast, cpu, &skip, FAST_REL_L2),
        compare(&split, cpu, &[], MAX_REL_L2),
    ];
    let mut fails: Vec<String> = reports.iter().filter_map(|r| r.failure.clone()).collect();
    if n_skip as f64 > MAX_SKIPPED * n as f64 {
        fails.push(format!(
            "{label}: {n_skip} of {n} positions are ill-conditioned (more than {MAX_SKIPPED})"
        ));
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}
