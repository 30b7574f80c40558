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
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => host::cli::inspect::run(args),
        Command::Fetch(args) => host::cli::fetch::run(args),
        Command::Tokenize(args) => host::cli::tokenize::run(args),
        Command::KernelBench(args) => host::cli::kernel_bench::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
