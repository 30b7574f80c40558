//! `host bench`: prompt processing and generation speed, measured the way llama.cpp's
//! `llama-bench` measures them so the numbers compare, in a table of the same shape:
//!
//! - `ppN`: one forward of N random tokens (last-token logits);
//! - `tgN`: N single-token forwards, each token random;
//! - `… @ dD` (with `-d D`): the KV cache already holds D random tokens when the test starts. The
//!   D tokens are prefilled once per depth, untimed; every run of a test starts at position D
//!   (the forward rewinds the cache there), so each repetition sees the same depth.
//!
//! `-p`, `-n` and `-d` take several values (comma-separated or repeated); the tests run for each
//! depth in turn: every ppN, then every tgN. One warm-up run of each test, then `--reps` timed
//! runs; prints mean ± sample standard deviation in tok/s.
//!
//! After the table:
//! - time to first token for each prompt length (and depth): from handing the prompt to the
//!   backend until the first generated token id is on the host (prefill plus greedy choice);
//! - memory: on CUDA the growth of the device's used memory from a bare context to the highest
//!   value seen (sampled after loading and after each test), with the backend's own buffers by
//!   kind; on the CPU the process's peak resident set.
//!
//! With `--device cuda` the tgN steps run as greedy generation runs (`host run --temp 0`,
//! `Session::generate` through `DeviceSteps`): the first token random, each later one the
//! previous step's greedy choice, fed to the next step on the device; one token id copied back
//! per step, and the host reads step k's id only after it has queued step k + 1. `--sync-steps`
//! runs them one at a time instead, each fed a random token from the host and waited for
//! (`CudaBackend::forward_next`), as llama-bench does. The first token uses `forward_next`
//! (greedy on the device); the other devices take the last row's logits (and choose the first
//! token by argmax on the host). `--sampled` makes the CUDA tgN steps choose by `host run`'s
//! default sampling chain on the device (`tgN sampled`), each handed its draw from a seeded
//! generator as `Session::generate` does.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use thiserror::Error;

use super::CliResult;
use super::run::{Device, model_path};
use crate::backend::{Backend, DeviceSteps, Logits};
use crate::cpu::{Arith, CpuBackend, CpuOptions};
use crate::cuda::backend::MemoryUse;
use crate::cuda::{CudaBackend, CudaOptions};
use crate::gguf::{Gguf, Value};
use crate::model::Config;
use crate::sample::Sampler;

#[derive(clap::Args)]
pub struct Args {
    /// A GGUF file, or a known model's short name (`qwen`, `smollm2`); default: the qwen model.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
    /// CPU threads; 0 = one per core.
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// CPU: f32 dequantized weights instead of 8-bit activations (see `host run --help`).
    #[arg(long)]
    pub exact: bool,
    /// Prompt lengths (the ppN tests and the time to first token); 0 skips.
    #[arg(long, short = 'p', value_delimiter = ',', default_value = "512")]
    pub n_prompt: Vec<usize>,
    /// Generated tokens (the tgN tests); 0 skips.
    #[arg(long, short = 'n', value_delimiter = ',', default_value = "128")]
    pub n_gen: Vec<usize>,
    /// Tokens already in the KV cache when each test starts.
    #[arg(long, short = 'd', value_delimiter = ',', default_value = "0")]
    pub depth: Vec<usize>,
    /// Timed repetitions of each test.
    #[arg(long, short = 'r', default_value_t = 5)]
    pub reps: usize,
    /// KV cache positions; 0 = just enough for the largest depth plus the largest test.
    #[arg(long, default_value_t = 0)]
    pub ctx: usize,
    /// CUDA: separate bias and residual `add` launches in decode (to measure the fusion).
    #[arg(long)]
    pub no_fuse: bool,
    /// CUDA: the LM head as an f16 copy multiplied by cuBLAS (the previous default) instead of
    /// the Q8_0 output matrix itself (`matvec_q8p`).
    #[arg(long)]
    pub lm_head_f16: bool,
    /// CUDA: the decode FFN on f32 activations (the previous default) instead of 8-bit ones
    /// (`swiglu_a8`, `matvec_a8`).
    #[arg(long)]
    pub ffn_f32: bool,
    /// CUDA: launch the decode graph's kernels in plain stream order, without programmatic
    /// dependent launch (to measure it).
    #[arg(long)]
    pub no_pdl: bool,
    /// CUDA: prefill attention on the CUDA cores (the previous default) instead of the tensor
    /// cores (`attention_prefill_mma_f16`).
    #[arg(long)]
    pub no_prefill_mma: bool,
    /// CUDA: the tgN steps one at a time, each fed a random token from the host and waited for
    /// before the next is queued (llama-bench's flow), instead of the generation loop's.
    #[arg(long)]
    pub sync_steps: bool,
    /// CUDA: the tgN steps choose by `host run`'s default sampling chain (temperature 0.8, top-k
    /// 40, top-p 0.95, min-p 0.05) on the device instead of greedily; the tests are named
    /// `tgN sampled`.
    #[arg(long)]
    pub sampled: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Settings `host bench` refuses before loading the model.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error("--reps must be at least 1")]
    NoReps,
    #[error("nothing to measure: every -p and -n value is 0")]
    NothingToMeasure,
    #[error(
        "depth {depth} + {tokens} test tokens need {needed} KV cache positions, but --ctx is {ctx} (raise --ctx, or pass 0 to size it automatically)"
    )]
    ContextTooSmall {
        depth: usize,
        tokens: usize,
        needed: usize,
        ctx: usize,
    },
    #[error(
        "a context of {n_ctx} positions (depth {depth} + {tokens} test tokens) is longer than the model's training context {n_ctx_train}"
    )]
    BeyondTraining {
        n_ctx: usize,
        depth: usize,
        tokens: usize,
        n_ctx_train: usize,
    },
    #[error("the backend returned no logits for the first token")]
    NoLogits,
}

/// Deterministic "random" token ids (SplitMix64), as llama-bench feeds random ids.
fn random_tokens(n: usize, n_vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) % n_vocab as u64) as u32
        })
        .collect()
}

/// The seed of the depth's tokens (the tests use seeds 0 ..= reps).
const DEPTH_SEED: u64 = 0xd0d0;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// What one measured run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// One forward of the tokens; the result is tok/s.
    Pp,
    /// One forward per token; the result is tok/s.
    Tg,
    /// One forward of the prompt and the first token's choice; the result is seconds.
    Ttft,
}

/// The backend under test: any, or the GPU one (whose `tg` runs the generation loop's greedy
/// steps, or with `sync` one `forward_next` per token, and whose first token uses
/// `forward_next`).
enum Target {
    Any(Box<dyn Backend>),
    Cuda {
        b: Box<CudaBackend>,
        sync: bool,
        /// The sampler whose draws the device's tg steps get (`--sampled`); greedy without.
        sampler: Option<Sampler>,
    },
}

impl Target {
    fn backend(&mut self) -> &mut dyn Backend {
        match self {
            Target::Any(b) => b.as_mut(),
            Target::Cuda { b, .. } => b.as_mut(),
        }
    }

    /// Fills the cache with `depth` random tokens (untimed); the tests then start at `depth`.
    fn prefill(&mut self, depth: usize) -> Res<()> {
        let b = self.backend();
        b.reset();
        if depth > 0 {
            let n_vocab = b.config().n_vocab;
            b.forward(&random_tokens(depth, n_vocab, DEPTH_SEED), 0, Logits::None)?;
        }
        Ok(())
    }

    /// One run of `kind` on `tokens` at positions `depth ..`: tok/s, or seconds for `Ttft`.
    fn run(&mut self, kind: Kind, tokens: &[u32], depth: usize) -> Res<f64> {
        let start = Instant::now();
        match (kind, self) {
            (Kind::Pp, t) => {
                t.backend().forward(tokens, depth, Logits::Last)?;
            }
            (Kind::Tg, Target::Cuda { b, sync: true, .. }) => {
                for (i, &tok) in tokens.iter().enumerate() {
                    std::hint::black_box(b.forward_next(&[tok], depth + i, None)?);
                }
            }
            (
                Kind::Tg,
                Target::Cuda {
                    b,
                    sync: false,
                    sampler,
                },
            ) => {
                // As `Session::generate` decodes: each step queued before the previous step's
                // choice is read, and fed that choice on the device.
                let mut draw = || sampler.as_mut().map_or(0.0, |s| s.draw());
                if let Some(&first) = tokens.first() {
                    b.queue_step(Some(first), depth, draw())?;
                    for i in 1..tokens.len() {
                        b.queue_step(None, depth + i, draw())?;
                        std::hint::black_box(b.take_step()?);
                    }
                    std::hint::black_box(b.take_step()?);
                }
            }
            (Kind::Tg, Target::Any(b)) => {
                for (i, &tok) in tokens.iter().enumerate() {
                    b.forward(&[tok], depth + i, Logits::Last)?;
                }
            }
            (Kind::Ttft, Target::Cuda { b, .. }) => {
                // Greedy: the first token's choice (as llama-bench's first token).
                std::hint::black_box(b.forward_next(tokens, depth, None)?);
            }
            (Kind::Ttft, Target::Any(b)) => {
                let logits = b.forward(tokens, depth, Logits::Last)?;
                let id = crate::sample::argmax(&logits).ok_or(BenchError::NoLogits)?;
                std::hint::black_box(id);
            }
        }
        let secs = start.elapsed().as_secs_f64();
        Ok(match kind {
            Kind::Ttft => secs,
            _ => tokens.len() as f64 / secs,
        })
    }

    /// One warm-up run, then `reps` timed runs of different random tokens.
    fn measure(&mut self, kind: Kind, n: usize, depth: usize, reps: usize) -> Res<Vec<f64>> {
        let n_vocab = self.backend().config().n_vocab;
        self.run(kind, &random_tokens(n, n_vocab, 0), depth)?;
        (1..=reps as u64)
            .map(|r| self.run(kind, &random_tokens(n, n_vocab, r), depth))
            .collect()
    }
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

/// One row of results.
struct Measured {
    kind: Kind,
    n: usize,
    depth: usize,
    /// tok/s (pp, tg) or seconds (ttft), one per repetition.
    samples: Vec<f64>,
    /// tg steps sampled on the device (`--sampled`).
    sampled: bool,
}

impl Measured {
    /// llama-bench's test name: `pp512`, `tg128`, `pp512 @ d4096`.
    fn name(&self) -> String {
        let base = match self.kind {
            Kind::Pp | Kind::Ttft => format!("pp{}", self.n),
            Kind::Tg if self.sampled => format!("tg{} sampled", self.n),
            Kind::Tg => format!("tg{}", self.n),
        };
        if self.depth > 0 {
            format!("{base} @ d{}", self.depth)
        } else {
            base
        }
    }
}

/// The KV cache positions the tests need: the largest depth plus the largest test, and which
/// depth and test length that is.
fn positions_needed(args: &Args) -> (usize, usize, usize) {
    let tokens = args
        .n_prompt
        .iter()
        .chain(&args.n_gen)
        .copied()
        .max()
        .unwrap_or(0);
    let depth = args.depth.iter().copied().max().unwrap_or(0);
    (depth + tokens, depth, tokens)
}

/// The context the tests run in: `--ctx`, or just enough; refused if too small or longer than
/// the model was trained for.
fn context_for(args: &Args, n_ctx_train: usize) -> Result<usize, BenchError> {
    if args.reps == 0 {
        return Err(BenchError::NoReps);
    }
    if args.n_prompt.iter().chain(&args.n_gen).all(|&n| n == 0) {
        return Err(BenchError::NothingToMeasure);
    }
    let (needed, depth, tokens) = positions_needed(args);
    let n_ctx = if args.ctx == 0 {
        needed
    } else if needed > args.ctx {
        return Err(BenchError::ContextTooSmall {
            depth,
            tokens,
            needed,
            ctx: args.ctx,
        });
    } else {
        args.ctx
    };
    if n_ctx > n_ctx_train {
        return Err(BenchError::BeyondTraining {
            n_ctx,
            depth,
            tokens,
            n_ctx_train,
        });
    }
    Ok(n_ctx)
}

/// llama.cpp's name of a `general.file_type` value (`llama_ftype`), when it is one of the types
/// this engine knows.
fn file_type_name(ft: u64) -> Option<&'static str> {
    Some(match ft {
        0 => "all F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K - Medium",
        11 => "Q3_K - Small",
        12 => "Q3_K - Medium",
        13 => "Q3_K - Large",
        14 => "Q4_K - Small",
        15 => "Q4_K - Medium",
        16 => "Q5_K - Small",
        17 => "Q5_K - Medium",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    })
}

/// The model column: architecture, size label, file type (as llama-bench describes a model).
fn model_desc(g: &Gguf, n_params: u64) -> String {
    let h = &g.header;
    let arch = h
        .get("general.architecture")
        .and_then(Value::as_str)
        .unwrap_or("?");
    let size = h
        .get("general.size_label")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            if n_params >= 1_000_000_000 {
                format!("{:.1}B", n_params as f64 / 1e9)
            } else {
                format!("{:.0}M", n_params as f64 / 1e6)
            }
        });
    let ftype = h
        .get("general.file_type")
        .and_then(Value::as_u64)
        .and_then(file_type_name)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            // The type holding the most bytes.
            let mut by_type: Vec<(u64, &str)> = Vec::new();
            for t in &h.tensors {
                let name = t.ggml_type.name();
                match by_type.iter_mut().find(|(_, n)| *n == name) {
                    Some(e) => e.0 += t.n_bytes,
                    None => by_type.push((t.n_bytes, name)),
                }
            }
            by_type
                .into_iter()
                .max()
                .map_or("?".into(), |(_, n)| n.to_owned())
        });
    format!("{arch} {size} {ftype}")
}

const MIB: f64 = 1024.0 * 1024.0;

/// llama-bench's size column.
fn size_cell(bytes: u64) -> String {
    let b = bytes as f64;
    if b < 1024.0 * MIB {
        format!("{:.2} MiB", b / MIB)
    } else {
        format!("{:.2} GiB", b / MIB / 1024.0)
    }
}

/// llama-bench's params column.
fn params_cell(n: u64) -> String {
    let n = n as f64;
    if n < 1e9 {
        format!("{:.2} M", n / 1e6)
    } else {
        format!("{:.2} B", n / 1e9)
    }
}

/// Device memory in use, sampled: before the model loads (a bare context) and at the highest
/// point seen since.
struct DeviceMem {
    ctx: Arc<cudarc::driver::CudaContext>,
    total: usize,
    before: usize,
    peak: usize,
}

impl DeviceMem {
    /// Opens (retains) device `ordinal`'s primary context, the one the backend will use, and
    /// reads its used memory.
    fn open(ordinal: usize) -> Res<DeviceMem> {
        crate::cuda::device::device_count()?;
        let ctx = cudarc::driver::CudaContext::new(ordinal)
            .map_err(|e| format!("opening CUDA device {ordinal}: {e}"))?;
        let (free, total) = ctx
            .mem_get_info()
            .map_err(|e| format!("reading device memory: {e}"))?;
        Ok(DeviceMem {
            ctx,
            total,
            before: total - free,
            peak: total - free,
        })
    }

    fn sample(&mut self) {
        if let Ok((free, total)) = self.ctx.mem_get_info() {
            self.peak = self.peak.max(total - free);
        }
    }
}

/// The process's peak resident set (`VmHWM`), where the OS reports it.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The memory report: (one line of text, JSON).
fn memory_report(
    mem: Option<&DeviceMem>,
    bufs: Option<MemoryUse>,
    n_ctx: usize,
) -> (String, serde_json::Value) {
    let mib = |b: usize| b as f64 / MIB;
    match (mem, bufs) {
        (Some(m), Some(u)) => {
            let grown = m.peak.saturating_sub(m.before);
            let other = grown.saturating_sub(u.total());
            (
                format!(
                    "peak device memory: {:.2} MiB above the bare context (weights {:.2}, LM head {:.2}, KV cache {:.2} ({n_ctx} positions), scratch {:.2}, other {:.2} MiB); device-wide {:.0} of {:.0} MiB in use at peak",
                    mib(grown),
                    mib(u.weights),
                    mib(u.lm_head),
                    mib(u.kv_cache),
                    mib(u.scratch),
                    mib(other),
                    mib(m.peak),
                    mib(m.total)
                ),
                serde_json::json!({
                    "kind": "device",
                    "peak_bytes_above_context": grown,
                    "weights_bytes": u.weights,
                    "lm_head_bytes": u.lm_head,
                    "kv_cache_bytes": u.kv_cache,
                    "scratch_bytes": u.scratch,
                    "other_bytes": other,
                    "device_used_before_bytes": m.before,
                    "device_used_peak_bytes": m.peak,
                    "device_total_bytes": m.total,
                    "n_ctx": n_ctx,
                }),
            )
        }
        _ => match peak_rss() {
            Some(b) => (
                format!(
                    "peak RSS: {:.2} MiB (the whole process, mapped model pages included; KV cache {n_ctx} positions)",
                    b as f64 / MIB
                ),
                serde_json::json!({"kind": "rss", "peak_rss_bytes": b, "n_ctx": n_ctx}),
            ),
            None => (
                "peak RSS: not available on this OS".into(),
                serde_json::json!({"kind": "rss", "peak_rss_bytes": null, "n_ctx": n_ctx}),
            ),
        },
    }
}

/// A markdown table with padded columns (`right[i]`: right-aligned).
fn table(head: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let w: Vec<usize> = (0..head.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([head[i].chars().count(), 3])
                .max()
                .unwrap_or(3)
        })
        .collect();
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let pad = |i: usize, s: &str| {
        if right[i] {
            format!("{s:>w$}", w = w[i])
        } else {
            format!("{s:<w$}", w = w[i])
        }
    };
    let mut out = line(head.iter().enumerate().map(|(i, h)| pad(i, h)).collect());
    out += &line(
        (0..head.len())
            .map(|i| {
                if right[i] {
                    format!("{}:", "-".repeat(w[i] - 1))
                } else {
                    "-".repeat(w[i])
                }
            })
            .collect(),
    );
    for r in rows {
        out += &line(r.iter().enumerate().map(|(i, c)| pad(i, c)).collect());
    }
    out
}

pub fn run(args: Args) -> CliResult {
    let stdout = std::io::stdout();
    run_to(args, &mut stdout.lock())
}

/// [`run`], writing the report to `out`.
pub fn run_to(args: Args, out: &mut dyn Write) -> CliResult {
    let path = model_path(args.model.as_deref())?;
    let g = Arc::new(Gguf::open(&path)?);
    let cfg = Config::from_header(&g.header)?;
    let n_ctx = context_for(&args, cfg.n_ctx_train)?;
    let reps = args.reps;

    let use_cuda = match args.device {
        Device::Cpu => false,
        Device::Cuda => true,
        Device::Auto => match crate::cuda::device::device_count() {
            Ok(n) if n > 0 => true,
            Ok(_) => {
                eprintln!("note: no CUDA device found; running on the CPU");
                false
            }
            Err(e) => {
                eprintln!("note: no usable GPU ({e}); running on the CPU");
                false
            }
        },
    };
    let cpu = || -> Res<Target> {
        let arith = if args.exact {
            Arith::Exact
        } else {
            Arith::Quantized
        };
        let opts = CpuOptions {
            n_ctx,
            threads: args.threads,
            arith,
            ..Default::default()
        };
        Ok(Target::Any(Box::new(CpuBackend::load(g.clone(), &opts)?)))
    };
    let cuda_opts = CudaOptions {
        n_ctx,
        fuse_epilogues: !args.no_fuse,
        lm_head_q8: !args.lm_head_f16,
        ffn_a8: !args.ffn_f32,
        pdl: !args.no_pdl,
        prefill_mma: !args.no_prefill_mma,
        ..Default::default()
    };
    // Declared before the backend so that it is dropped after it.
    let mut device_mem = None;
    let mut target = if use_cuda {
        let loaded = DeviceMem::open(cuda_opts.device).and_then(|m| {
            let b = CudaBackend::load(&g, cuda_opts)?;
            Ok((m, b))
        });
        match loaded {
            Ok((m, b)) => {
                device_mem = Some(m);
                let mut b = Box::new(b);
                let sampler = if args.sampled {
                    let cfg = super::run::default_sampling();
                    b.set_rule(&cfg, &[])?;
                    Some(Sampler::new(cfg).map_err(|e| e.to_string())?)
                } else {
                    None
                };
                Target::Cuda {
                    b,
                    sync: args.sync_steps,
                    sampler,
                }
            }
            Err(e) if args.device == Device::Auto => {
                eprintln!("note: the GPU is not usable ({e}); running on the CPU");
                cpu()?
            }
            Err(e) => return Err(e),
        }
    } else {
        cpu()?
    };
    let sample_mem = |m: &mut Option<DeviceMem>| {
        if let Some(m) = m {
            m.sample();
        }
    };
    sample_mem(&mut device_mem);

    let mut rows: Vec<Measured> = Vec::new();
    let mut ttft: Vec<Measured> = Vec::new();
    for &depth in &args.depth {
        target.prefill(depth)?;
        let tests = args
            .n_prompt
            .iter()
            .map(|&n| (Kind::Pp, n))
            .chain(args.n_gen.iter().map(|&n| (Kind::Tg, n)))
            .chain(args.n_prompt.iter().map(|&n| (Kind::Ttft, n)));
        for (kind, n) in tests {
            if n == 0 {
                continue;
            }
            let samples = target.measure(kind, n, depth, reps)?;
            sample_mem(&mut device_mem);
            let m = Measured {
                kind,
                n,
                depth,
                samples,
                sampled: args.sampled && matches!(target, Target::Cuda { sync: false, .. }),
            };
            if kind == Kind::Ttft {
                ttft.push(m);
            } else {
                rows.push(m);
            }
        }
    }

    let bufs = match &target {
        Target::Cuda { b, .. } => Some(b.memory_use()),
        Target::Any(_) => None,
    };
    let (mem_line, mem_json) = memory_report(device_mem.as_ref(), bufs, n_ctx);
    let b = target.backend();
    let backend = match b.name() {
        "cuda" => "CUDA".to_string(),
        "cpu" => "CPU".to_string(),
        other => other.to_string(),
    };
    let threads = if args.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.threads
    };
    let show_threads = b.name() == "cpu";
    let n_params: u64 = g.header.tensors.iter().map(|t| t.n_elements).sum();
    let n_bytes: u64 = g.header.tensors.iter().map(|t| t.n_bytes).sum();
    let model = model_desc(&g, n_params);

    if args.json {
        let tests: Vec<_> = rows
            .iter()
            .map(|r| {
                let (mean, sd) = mean_sd(&r.samples);
                serde_json::json!({
                    "test": r.name(),
                    "n_prompt": if r.kind == Kind::Pp { r.n } else { 0 },
                    "n_gen": if r.kind == Kind::Tg { r.n } else { 0 },
                    "n_depth": r.depth,
                    "tok_per_sec": mean,
                    "sd": sd,
                    "samples": r.samples,
                })
            })
            .collect();
        let ttfts: Vec<_> = ttft
            .iter()
            .map(|r| {
                let ms: Vec<f64> = r.samples.iter().map(|s| s * 1e3).collect();
                let (mean, sd) = mean_sd(&ms);
                serde_json::json!({
                    "n_prompt": r.n, "n_depth": r.depth, "ms": mean, "sd": sd, "samples_ms": ms,
                })
            })
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "model": model,
                "file": path.display().to_string(),
                "size_bytes": n_bytes,
                "n_params": n_params,
                "backend": backend,
                "threads": if show_threads { Some(threads) } else { None },
                "reps": reps,
                "n_ctx": n_ctx,
                "tests": tests,
                "time_to_first_token": ttfts,
                "memory": mem_json,
            })
        )?;
        return Ok(());
    }

    let mut head = vec!["model", "size", "params", "backend"];
    let mut right = vec![false, true, true, false];
    if show_threads {
        head.push("threads");
        right.push(true);
    }
    head.extend(["test", "t/s"]);
    right.extend([true, true]);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let (mean, sd) = mean_sd(&r.samples);
            let mut c = vec![
                model.clone(),
                size_cell(n_bytes),
                params_cell(n_params),
                backend.clone(),
            ];
            if show_threads {
                c.push(threads.to_string());
            }
            c.extend([r.name(), format!("{mean:.2} ± {sd:.2}")]);
            c
        })
        .collect();
    write!(out, "{}", table(&head, &right, &cells))?;
    writeln!(out)?;
    for r in &ttft {
        let ms: Vec<f64> = r.samples.iter().map(|s| s * 1e3).collect();
        let (mean, sd) = mean_sd(&ms);
        writeln!(
            out,
            "time to first token, {}: {mean:.2} ± {sd:.2} ms",
            r.name()
        )?;
    }
    writeln!(out, "{mem_line}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(p: &[usize], n: &[usize], d: &[usize], ctx: usize) -> Args {
        Args {
            model: None,
            device: Device::Cpu,
            threads: 1,
            exact: false,
            n_prompt: p.to_vec(),
            n_gen: n.to_vec(),
            depth: d.to_vec(),
            reps: 1,
            ctx,
            no_fuse: false,
            lm_head_f16: false,
            ffn_f32: false,
            no_pdl: false,
            no_prefill_mma: false,
            sync_steps: false,
            sampled: false,
            json: false,
        }
    }

    #[test]
    fn the_context_fits_the_deepest_largest_test() {
        assert_eq!(
            context_for(&args(&[64], &[16], &[0, 128], 0), 8192).unwrap(),
            192
        );
        assert_eq!(context_for(&args(&[8], &[32], &[5], 0), 8192).unwrap(), 37);
        assert_eq!(
            context_for(&args(&[8], &[32], &[5], 100), 8192).unwrap(),
            100
        );
        let e = context_for(&args(&[64], &[16], &[0, 128], 100), 8192).unwrap_err();
        assert!(
            matches!(
                e,
                BenchError::ContextTooSmall {
                    depth: 128,
                    tokens: 64,
                    needed: 192,
                    ctx: 100
                }
            ),
            "{e}"
        );
        let e = context_for(&args(&[64], &[16], &[4096], 0), 2048).unwrap_err();
        assert!(
            matches!(e, BenchError::BeyondTraining { n_ctx: 4160, .. }),
            "{e}"
        );
        let mut a = args(&[1], &[1], &[0], 0);
        a.reps = 0;
        assert!(matches!(context_for(&a, 64), Err(BenchError::NoReps)));
        assert!(matches!(
            context_for(&args(&[0], &[0], &[0], 0), 64),
            Err(BenchError::NothingToMeasure)
        ));
    }

    #[test]
    fn mean_and_sample_deviation() {
        let (m, sd) = mean_sd(&[2.0, 4.0, 6.0]);
        assert!((m - 4.0).abs() < 1e-12 && (sd - 2.0).abs() < 1e-12);
        assert_eq!(mean_sd(&[3.0]), (3.0, 0.0));
    }

    #[test]
    fn cells_follow_llama_bench_units() {
        assert_eq!(size_cell(1536 * 1024), "1.50 MiB");
        assert_eq!(size_cell(3 << 30), "3.00 GiB");
        assert_eq!(params_cell(134_515_008), "134.52 M");
        assert_eq!(params_cell(1_500_000_000), "1.50 B");
        let name = |kind, n, depth| {
            Measured {
                kind,
                n,
                depth,
                samples: vec![],
                sampled: false,
            }
            .name()
        };
        assert_eq!(name(Kind::Pp, 512, 0), "pp512");
        assert_eq!(name(Kind::Tg, 128, 4096), "tg128 @ d4096");
    }
}
