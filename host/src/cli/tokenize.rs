//! `host tokenize MODEL [--add-special] [--parse-special] [--json] TEXT`: prints the ids of TEXT
//! (read from stdin when TEXT is `-`) and the piece each id decodes to.

use std::io::Read;
use std::path::PathBuf;

use super::CliResult;
use crate::tokenizer::Tokenizer;

#[derive(clap::Args)]
pub struct Args {
    /// Path to a GGUF file, or a known model's short name (`qwen`, `smollm2`) from the cache.
    pub model: String,
    /// The text to tokenize; `-` reads it from standard input (bytes, need not be UTF-8).
    pub text: String,
    /// Add BOS/EOS as the model asks (`tokenizer.ggml.add_bos_token`/`add_eos_token`).
    #[arg(long)]
    pub add_special: bool,
    /// Turn text equal to a control token (`<|im_end|>`) into that token.
    #[arg(long)]
    pub parse_special: bool,
    /// Print one JSON object (`ids`, `pieces`) instead of one line per token.
    #[arg(long)]
    pub json: bool,
}

fn model_path(model: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let p = PathBuf::from(model);
    if p.exists() {
        return Ok(p);
    }
    match crate::fetch::KnownModel::by_name(model) {
        Ok(m) => m.cached().ok_or_else(|| {
            format!(
                "{} is not in the model cache {}; run `host fetch {}`",
                m.file,
                crate::fetch::cache_dir().display(),
                m.short
            )
            .into()
        }),
        Err(_) => {
            Err(format!("{model}: no such file, and not a known model name (qwen, smollm2)").into())
        }
    }
}

pub fn run(args: Args) -> CliResult {
    let g = crate::gguf::Gguf::open(model_path(&args.model)?)?;
    let tok = Tokenizer::from_gguf(&g)?;
    let bytes = if args.text == "-" {
        let mut b = Vec::new();
        std::io::stdin().read_to_end(&mut b)?;
        b
    } else {
        args.text.into_bytes()
    };
    let ids = tok.encode_bytes(&bytes, args.add_special, args.parse_special);
    let pieces: Vec<String> = ids
        .iter()
        .map(|&id| String::from_utf8_lossy(tok.token_piece(id).unwrap_or_default()).into_owned())
        .collect();
    if args.json {
        let v = serde_json::json!({ "ids": ids, "pieces": pieces });
        println!("{v}");
    } else {
        for (id, p) in ids.iter().zip(&pieces) {
            println!("{id}\t{p:?}");
        }
        eprintln!("{} tokens", ids.len());
    }
    Ok(())
}
