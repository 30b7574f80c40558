//! `host bench`: prompt processing and generation speed, measured the way llama.cpp's
//! `llama-bench` measures them so the numbers compare:
//!
//! - `ppN`: one forward of N random tokens from an empty cache (last-token logits);
//! - `tgN`: N single-token forwards from an empty cache, each token random.
//!
//! One warm-up run of each, then `--reps` timed runs; prints mean ± standard deviation in tok/s.
//!
//! With `--device cuda` the tgN steps use `CudaBackend::forward_next` (greedy on the device, one
//! token id copied back), as generation does; the other devices take the last row's logits.

use super::CliResult;
use super::run::{Device, ModelArgs, load, model_path};
use crate::backend::{Backend, Logits};
use crate::cuda::{CudaBackend, CudaOptions};
use crate::gguf::Gguf;

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
    /// Prompt tokens (the ppN test); 0 skips it.
    #[arg(long, short = 'p', default_value_t = 128)]
    pub n_prompt: usize,
    /// Generated tokens (the tgN test); 0 skips it.
    #[arg(long, short = 'n', default_value_t = 64)]
    pub n_gen: usize,
    /// Timed repetitions of each test.
    #[arg(long, short = 'r', default_value_t = 5)]
    pub reps: usize,
    /// CUDA: separate bias and residual `add` launches in decode (to measure the fusion).
    #[arg(long)]
    pub no_fuse: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
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

fn pp(b: &mut dyn Backend, tokens: &[u32]) -> Result<f64, Box<dyn std::error::Error>> {
    b.reset();
    let t = std::time::Instant::now();
    b.forward(tokens, 0, Logits::Last)?;
    Ok(tokens.len() as f64 / t.elapsed().as_secs_f64())
}

fn tg(b: &mut dyn Backend, tokens: &[u32]) -> Result<f64, Box<dyn std::error::Error>> {
    b.reset();
    let t = std::time::Instant::now();
    for (i, &tok) in tokens.iter().enumerate() {
        b.forward(&[tok], i, Logits::Last)?;
    }
    Ok(tokens.len() as f64 / t.elapsed().as_secs_f64())
}

/// `tg` on the GPU: each step chooses its token on the device and copies back only its id.
fn tg_cuda(b: &mut CudaBackend, tokens: &[u32]) -> Result<f64, Box<dyn std::error::Error>> {
    b.reset();
    let t = std::time::Instant::now();
    for (i, &tok) in tokens.iter().enumerate() {
        b.forward_next(&[tok], i, None)?;
    }
    Ok(tokens.len() as f64 / t.elapsed().as_secs_f64())
}

/// The backend under test: any, or the GPU one (whose `tg` uses `forward_next`).
enum Target {
    Any(Box<dyn Backend>),
    Cuda(Box<CudaBackend>),
}

impl Target {
    fn backend(&mut self) -> &mut dyn Backend {
        match self {
            Target::Any(b) => b.as_mut(),
            Target::Cuda(b) => b.as_mut(),
        }
    }

    fn run(&mut self, test: &str, tokens: &[u32]) -> Result<f64, Box<dyn std::error::Error>> {
        match (test, self) {
            ("pp", t) => pp(t.backend(), tokens),
            (_, Target::Cuda(b)) => tg_cuda(b, tokens),
            (_, Target::Any(b)) => tg(b.as_mut(), tokens),
        }
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

pub fn run(args: Args) -> CliResult {
    let ctx = args.n_prompt.max(args.n_gen).max(1);
    let model_args = ModelArgs {
        model: args.model.clone(),
        device: args.device,
        ctx,
        threads: args.threads,
        exact: args.exact,
    };
    let (path, mut target) = if args.device == Device::Cuda {
        let path = model_path(args.model.as_deref())?;
        let g = Gguf::open(&path)?;
        let opts = CudaOptions {
            n_ctx: ctx,
            fuse_epilogues: !args.no_fuse,
            ..Default::default()
        };
        let b = CudaBackend::load(&g, opts)?;
        (path, Target::Cuda(Box::new(b)))
    } else {
        let m = load(&model_args)?;
        (m.path, Target::Any(m.backend))
    };
    let threads = if args.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.threads
    };
    let n_vocab = target.backend().config().n_vocab;
    let reps = args.reps.max(1);
    let mut results = Vec::new();
    for (name, n) in [("pp", args.n_prompt), ("tg", args.n_gen)] {
        if n == 0 {
            continue;
        }
        target.run(name, &random_tokens(n, n_vocab, 0))?;
        let runs = (1..=reps as u64)
            .map(|r| target.run(name, &random_tokens(n, n_vocab, r)))
            .collect::<Result<Vec<_>, _>>()?;
        let (mean, sd) = mean_sd(&runs);
        results.push((format!("{name}{n}"), mean, sd));
    }
    let b = target.backend();
    let model = path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into(),
    );
    if args.json {
        let tests: Vec<_> = results
            .iter()
            .map(|(t, mean, sd)| serde_json::json!({"test": t, "tok_per_sec": mean, "sd": sd}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "model": model,
                "device": b.name(),
                "threads": threads,
                "reps": reps,
                "tests": tests,
            })
        );
    } else {
        println!("| model | device | threads | test | t/s |");
        println!("| --- | --- | ---: | ---: | ---: |");
        for (t, mean, sd) in &results {
            println!(
                "| {model} | {} | {threads} | {t} | {mean:.2} ± {sd:.2} |",
                b.name()
            );
        }
    }
    Ok(())
}
