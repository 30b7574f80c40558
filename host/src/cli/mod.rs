//! One module per `host` subcommand: its arguments and what it does.

pub mod bench;
pub mod chat;
pub mod fetch;
pub mod inspect;
pub mod kernel_bench;
pub mod perplexity;
pub mod run;
pub mod tokenize;

/// The error a subcommand returns: printed as one line by `main`, exit code 1.
pub type CliResult = Result<(), Box<dyn std::error::Error>>;
