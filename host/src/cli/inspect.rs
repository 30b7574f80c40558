//! `host inspect MODEL [--json]`.

use std::path::PathBuf;

use super::CliResult;

#[derive(clap::Args)]
pub struct Args {
    /// Path to a GGUF file.
    pub model: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> CliResult {
    let g = crate::gguf::Gguf::open(&args.model)?;
    println!(
        "{} tensors, {} metadata keys",
        g.header.tensors.len(),
        g.header.metadata.len()
    );
    Ok(())
}
