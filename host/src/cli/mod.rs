//! One module per `host` subcommand: its arguments and what it does.

pub mod fetch;
pub mod inspect;
pub mod tokenize;
pub mod kernel_bench;

/// The error a subcommand returns: printed as one line by `main`, exit code 1.
pub type CliResult = Result<(), Box<dyn std::error::Error>>;
