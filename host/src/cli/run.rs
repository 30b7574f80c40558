//! `host run`: generate text from a prompt, streaming it to stdout; prompt and generation speed
//! on stderr at the end (`--json`: one JSON object instead).
//!
//! Also the pieces `chat`, `perplexity` and `bench` share: model resolution (a path, a known
//! model's short name, or the default model fetched on first use), device choice, sampling flags.

use std::error::Error;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use super::CliResult;
use crate::backend::Backend;
use crate::cpu::{Arith, CpuBackend, CpuOptions};
use crate::generate::{GenerateOptions, Generation, Session, StopReason};
use crate::gguf::Gguf;
use crate::sample::{Sampler, SamplerConfig};
use crate::tokenizer::{ChatMessage, Specials, Tokenizer};

/// Where to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
    /// The GPU when one is usable, else the CPU (with a one-line notice).
    Auto,
}

/// Model and device flags.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// A GGUF file, or a known model's short name (`qwen`, `smollm2`); default: the qwen model,
    /// fetched into the model cache on first use.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
    /// Context length (KV cache positions); 0 = the model's training context.
    #[arg(long, default_value_t = 4096)]
    pub ctx: usize,
    /// CPU threads; 0 = one per core.
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// CPU: dequantize weight rows to f32 instead of quantizing activations to 8 bits (slower;
    /// the arithmetic of an f32 model).
    #[arg(long)]
    pub exact: bool,
}

/// The default sampling of `host run` and `host chat`: temperature, top-k, top-p and min-p.
const DEFAULT_TEMP: f32 = 0.8;
const DEFAULT_TOP_K: usize = 40;
const DEFAULT_TOP_P: f32 = 0.95;
const DEFAULT_MIN_P: f32 = 0.05;

/// The sampler settings `host run` uses when no sampling flag is given (seed 0, no repetition
/// penalty): what `host bench --sampled` and `host kernel-bench sample` measure.
pub fn default_sampling() -> SamplerConfig {
    SamplerConfig {
        temperature: DEFAULT_TEMP,
        top_k: DEFAULT_TOP_K,
        top_p: DEFAULT_TOP_P,
        min_p: DEFAULT_MIN_P,
        ..SamplerConfig::default()
    }
}

/// Sampling flags.
#[derive(clap::Args, Clone, Debug)]
pub struct SampleArgs {
    /// Temperature; 0 = greedy (argmax, ties to the lower id).
    #[arg(long, default_value_t = DEFAULT_TEMP)]
    pub temp: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = DEFAULT_TOP_K)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = DEFAULT_TOP_P)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0 = off).
    #[arg(long, default_value_t = DEFAULT_MIN_P)]
    pub min_p: f32,
    /// Repetition penalty over the last 64 tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed (any sampler is deterministic for a given seed).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SampleArgs {
    pub fn sampler(&self) -> Result<Sampler, crate::sample::SampleError> {
        Sampler::new(SamplerConfig {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: 64,
            seed: self.seed,
        })
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt; `-` reads it from standard input.
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template (as the user message).
    #[arg(long)]
    pub chat: bool,
    /// A system message before the prompt (with --chat).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Most tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    pub n_predict: usize,
    /// Stop when this text appears (repeatable); the text is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Print one JSON object (prompt ids, generated ids, text, timings) instead of streaming.
    #[arg(long)]
    pub json: bool,
}

/// A model ready to run: its file, tokenizer and backend.
pub struct Loaded {
    pub path: PathBuf,
    pub gguf: Arc<Gguf>,
    pub tokenizer: Tokenizer,
    pub backend: Box<dyn Backend>,
}

/// The model file the flags name (fetching the default model on first use, with a progress bar).
pub fn model_path(model: Option<&str>) -> Result<PathBuf, Box<dyn Error>> {
    let Some(m) = model else {
        return Ok(crate::fetch::ensure(&crate::fetch::QWEN, true)?);
    };
    let p = PathBuf::from(m);
    if p.exists() {
        return Ok(p);
    }
    match crate::fetch::KnownModel::by_name(m) {
        Ok(known) => Ok(crate::fetch::ensure(known, true)?),
        Err(_) => Err(format!(
            "model {m}: no such file, and not a known model name (qwen, smollm2)"
        )
        .into()),
    }
}

/// Builds the backend for `device`. `auto` takes the GPU when the driver, a device and the
/// backend all work, else the CPU with a one-line notice on stderr.
pub fn open_backend(
    g: &Arc<Gguf>,
    device: Device,
    n_ctx: usize,
    threads: usize,
    arith: Arith,
) -> Result<Box<dyn Backend>, Box<dyn Error>> {
    let cfg = crate::model::Config::from_header(&g.header)?;
    let n_ctx = if n_ctx == 0 { cfg.n_ctx_train } else { n_ctx };
    if n_ctx > cfg.n_ctx_train {
        return Err(format!(
            "context {n_ctx} is longer than the model's training context {}",
            cfg.n_ctx_train
        )
        .into());
    }
    let cpu = || -> Result<Box<dyn Backend>, Box<dyn Error>> {
        Ok(Box::new(CpuBackend::load(
            g.clone(),
            &CpuOptions {
                n_ctx,
                threads,
                arith,
                ..Default::default()
            },
        )?))
    };
    let cuda = || -> Result<Box<dyn Backend>, Box<dyn Error>> {
        let opts = crate::cuda::CudaOptions {
            n_ctx,
            ..Default::default()
        };
        Ok(Box::new(crate::cuda::CudaBackend::load(g, opts)?))
    };
    match device {
        Device::Cpu => cpu(),
        Device::Cuda => cuda(),
        Device::Auto => match crate::cuda::device::device_count() {
            Ok(n) if n > 0 => match cuda() {
                Ok(b) => Ok(b),
                Err(e) => {
                    eprintln!("note: the GPU is not usable ({e}); running on the CPU");
                    cpu()
                }
            },
            Ok(_) => {
                eprintln!("note: no CUDA device found; running on the CPU");
                cpu()
            }
            Err(e) => {
                eprintln!("note: no usable GPU ({e}); running on the CPU");
                cpu()
            }
        },
    }
}

/// Opens the model, its tokenizer and a backend.
pub fn load(args: &ModelArgs) -> Result<Loaded, Box<dyn Error>> {
    let path = model_path(args.model.as_deref())?;
    let gguf = Arc::new(Gguf::open(&path)?);
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    let arith = if args.exact {
        Arith::Exact
    } else {
        Arith::Quantized
    };
    let backend = open_backend(&gguf, args.device, args.ctx, args.threads, arith)?;
    Ok(Loaded {
        path,
        gguf,
        tokenizer,
        backend,
    })
}

/// A token's text as streamed: its bytes, control tokens left out.
pub fn token_bytes(tok: &Tokenizer) -> impl Fn(u32) -> Vec<u8> + '_ {
    |id| tok.decode_with(&[id], Specials::Skip).unwrap_or_default()
}

/// The one-line speed summary.
pub fn speed_line(g: &Generation, device: &str) -> String {
    let t = &g.timings;
    format!(
        "[{device}] prompt: {} tokens in {:.2} s ({:.1} tok/s); generation: {} tokens, {} decode steps in {:.2} s ({:.1} tok/s)",
        t.prompt_tokens,
        t.prompt_secs,
        t.prompt_tok_per_sec(),
        g.generated_ids.len(),
        t.decode_tokens,
        t.decode_secs,
        t.decode_tok_per_sec()
    )
}

/// A note for the reasons a user should hear about.
pub fn stop_note(stop: &StopReason, n_ctx: usize) -> Option<String> {
    match stop {
        StopReason::ContextFull => Some(format!(
            "note: stopped because the context of {n_ctx} tokens is full (raise --ctx)"
        )),
        _ => None,
    }
}

pub fn run(args: Args) -> CliResult {
    // Cheap checks first: a bad flag should not wait for a model to load.
    let mut sampler = args.sample.sampler()?;
    let prompt = if args.prompt == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        args.prompt.clone()
    };
    let m = load(&args.model)?;
    let tok = &m.tokenizer;
    // Chat: the template's markers are control tokens, the message texts never are.
    let ids = if args.chat {
        let mut msgs = Vec::new();
        if let Some(s) = &args.system {
            msgs.push(ChatMessage::new("system", s.as_str()));
        }
        msgs.push(ChatMessage::new("user", prompt.as_str()));
        tok.encode_chat(&msgs, true)?
    } else {
        tok.encode(&prompt, true, true)
    };
    let n_ctx = m.backend.capacity();
    let device = m.backend.name();
    let opts = GenerateOptions {
        max_tokens: args.n_predict,
        eog: tok.eog_ids().to_vec(),
        stop_strings: args.stop.clone(),
        batch: 128,
    };
    let mut session = Session::new(m.backend);
    let bytes = token_bytes(tok);
    let mut stdout = std::io::stdout().lock();
    let json = args.json;
    let mut on_text = |s: &str| {
        if !json {
            // A closed pipe is not worth a panic; the run ends when generation does.
            let _ = stdout.write_all(s.as_bytes());
            let _ = stdout.flush();
        }
    };
    let g = session.generate(&ids, &mut sampler, &opts, Some(&bytes), &mut on_text)?;
    if json {
        let t = &g.timings;
        let obj = serde_json::json!({
            "model": m.path.display().to_string(),
            "device": device,
            "prompt_ids": g.prompt_ids,
            "generated_ids": g.generated_ids,
            "text": g.text,
            "stop": g.stop,
            "timings": {
                "prompt_tokens": t.prompt_tokens,
                "prompt_secs": t.prompt_secs,
                "prompt_tok_per_sec": t.prompt_tok_per_sec(),
                "decode_tokens": t.decode_tokens,
                "decode_secs": t.decode_secs,
                "decode_tok_per_sec": t.decode_tok_per_sec(),
                "sample_secs": t.sample_secs,
            },
        });
        println!("{obj}");
    } else {
        println!();
    }
    if let Some(n) = stop_note(&g.stop, n_ctx) {
        eprintln!("{n}");
    }
    eprintln!("{}", speed_line(&g, device));
    Ok(())
}
