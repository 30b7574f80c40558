//! `host chat`: an interactive multi-turn conversation. Each turn renders the whole history with
//! the model's chat template; the session reuses the KV cache for the part of the conversation
//! it has already seen, so only the new turn is run.
//!
//! Commands at the prompt: `/reset` forgets the history, `/exit` (or end of input) quits.

use std::io::{BufRead, Write};

use super::CliResult;
use super::run::{ModelArgs, SampleArgs, load, speed_line, stop_note, token_bytes};
use crate::generate::{GenerateError, GenerateOptions, Session, StopReason};
use crate::tokenizer::ChatMessage;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A system message opening the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens per reply.
    #[arg(short = 'n', long = "n-predict", default_value_t = 512)]
    pub n_predict: usize,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Print the speed line after each reply.
    #[arg(long)]
    pub verbose: bool,
}

pub fn run(args: Args) -> CliResult {
    let mut sampler = args.sample.sampler()?;
    let m = load(&args.model)?;
    let tok = &m.tokenizer;
    if tok.chat_template().is_none() {
        return Err(
            "this model has no chat template (tokenizer.chat_template); use `host run`".into(),
        );
    }
    let n_ctx = m.backend.capacity();
    let device = m.backend.name();
    let opts = GenerateOptions {
        max_tokens: args.n_predict,
        eog: tok.eog_ids().to_vec(),
        stop_strings: Vec::new(),
        batch: 128,
    };
    let mut session = Session::new(m.backend);
    let bytes = token_bytes(tok);
    let opening: Vec<ChatMessage> = args
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s.as_str()))
        .collect();
    let mut history = opening.clone();
    eprintln!(
        "chat with {} on the {device} ({n_ctx} tokens of context); /reset forgets, /exit quits",
        m.path.display()
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let Some(line) = lines.next() else { break };
        let line = line?;
        let input = line.trim();
        match input {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history = opening.clone();
                session.reset();
                eprintln!("(history cleared)");
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage::new("user", input));
        let ids = tok.encode_chat(&history, true)?;
        let mut out = std::io::stdout().lock();
        let mut on_text = |s: &str| {
            let _ = out.write_all(s.as_bytes());
            let _ = out.flush();
        };
        match session.generate(&ids, &mut sampler, &opts, Some(&bytes), &mut on_text) {
            Ok(g) => {
                println!();
                if let Some(n) = stop_note(&g.stop, n_ctx) {
                    eprintln!("{n}; /reset to start over");
                }
                if args.verbose {
                    eprintln!("{}", speed_line(&g, device));
                }
                if g.stop == StopReason::ContextFull {
                    history.pop();
                } else {
                    history.push(ChatMessage::new("assistant", g.text));
                }
            }
            Err(e @ GenerateError::PromptTooLong { .. }) => {
                eprintln!("error: {e}; /reset to start over");
                history.pop();
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
