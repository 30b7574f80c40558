//! `host fetch [MODEL…] [--verify]`: download the known models into the cache.

use super::CliResult;
use crate::fetch::{self, KnownModel};

#[derive(clap::Args)]
pub struct Args {
    /// Models to fetch: qwen, smollm2 (default: both).
    pub models: Vec<String>,
    /// Also re-hash cached files against their sha256.
    #[arg(long)]
    pub verify: bool,
}

pub fn run(args: Args) -> CliResult {
    let models: Vec<&KnownModel> = if args.models.is_empty() {
        fetch::KNOWN.to_vec()
    } else {
        args.models
            .iter()
            .map(|m| KnownModel::by_name(m))
            .collect::<Result<_, _>>()?
    };
    for m in models {
        let path = fetch::ensure(m, true)?;
        if args.verify {
            let sum = fetch::sha256_file(&path)?;
            if sum != m.sha256 {
                return Err(
                    format!("{}: sha256 {sum}, expected {}", path.display(), m.sha256).into(),
                );
            }
        }
        println!("{}", path.display());
    }
    Ok(())
}
