//! `host`: the engine's command-line interface.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "host",
    version,
    about = "GGUF inference engine with Rust GPU kernels"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's metadata, derived config, tensors and weight mapping.
    Inspect(host::cli::inspect::Args),
    /// Download the known models (qwen, smollm2) into the model cache and print their paths.
    Fetch(host::cli::fetch::Args),
    /// Print the token ids (and pieces) of a text.
    Tokenize(host::cli::tokenize::Args),
    /// Run one GPU kernel (or all) on real shapes: check it against the CPU and time it.
    KernelBench(host::cli::kernel_bench::Args),
    /// Generate text from a prompt (streamed), with prompt and generation speed at the end.
    Run(host::cli::run::Args),
    /// An interactive multi-turn chat using the model's chat template.
    Chat(host::cli::chat::Args),
    /// Perplexity of a text, by llama.cpp's method (chunks of --ctx tokens, second halves scored).
    Perplexity(host::cli::perplexity::Args),
    /// Prompt (ppN) and generation (tgN) speed, as llama-bench measures them.
    Bench(host::cli::bench::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => host::cli::inspect::run(args),
        Command::Fetch(args) => host::cli::fetch::run(args),
        Command::Tokenize(args) => host::cli::tokenize::run(args),
        Command::KernelBench(args) => host::cli::kernel_bench::run(args),
        Command::Run(args) => host::cli::run::run(args),
        Command::Chat(args) => host::cli::chat::run(args),
        Command::Perplexity(args) => host::cli::perplexity::run(args),
        Command::Bench(args) => host::cli::bench::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
