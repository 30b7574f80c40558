//! What can be wrong with a GGUF tokenizer or a request to it.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TokenizerError {
    #[error("metadata key {key:?} is missing")]
    MissingKey { key: &'static str },
    #[error("metadata key {key:?}: expected {expected}, found {found}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error(
        "tokenizer.ggml.model = {0:?} is not supported: this engine reads only \"gpt2\" (byte-level BPE); \
         \"llama\" is SentencePiece, \"bert\" WordPiece, \"t5\" Unigram, \"rwkv\" RWKV's trie"
    )]
    UnsupportedModel(String),
    #[error(
        "tokenizer.ggml.pre = {name:?} is not a pre-tokenizer this engine knows (known: {known}); \
         a caller may ask for a named fallback explicitly"
    )]
    UnknownPre { name: String, known: String },
    #[error(
        "{key} has {len} entries but tokenizer.ggml.tokens has {n_tokens}: the lists must have the same length"
    )]
    LengthMismatch {
        key: &'static str,
        len: usize,
        n_tokens: usize,
    },
    #[error(
        "tokenizer.ggml.token_type[{id}] = {value} is not a token type (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte)"
    )]
    BadTokenType { id: usize, value: i64 },
    #[error("tokenizer.ggml.tokens[{id}] is empty")]
    EmptyToken { id: usize },
    #[error("tokenizer.ggml.tokens[{id}] = {text:?} repeats tokenizer.ggml.tokens[{first}]")]
    DuplicateToken { id: usize, first: u32, text: String },
    #[error("tokenizer.ggml.merges[{rank}] = {merge:?}: {problem}")]
    BadMerge {
        rank: usize,
        merge: String,
        problem: String,
    },
    #[error("{key} = {id} is out of range: the vocabulary has {n_tokens} tokens")]
    SpecialIdOutOfRange {
        key: &'static str,
        id: u64,
        n_tokens: usize,
    },
    #[error("{flag} is true but {key} is not set")]
    AddWithoutId {
        flag: &'static str,
        key: &'static str,
    },
    #[error("token id {id} is out of range: the vocabulary has {n_tokens} tokens")]
    IdOutOfRange { id: u32, n_tokens: usize },
    #[error(
        "this model has no chat template (tokenizer.chat_template); give one explicitly, e.g. the built-in ChatML"
    )]
    NoChatTemplate,
    #[error("chat template: {0}")]
    Template(String),
}

impl From<minijinja::Error> for TokenizerError {
    fn from(e: minijinja::Error) -> Self {
        // minijinja's Display gives the kind and detail; add the template line when it has one.
        let mut s = e.to_string();
        if let Some(line) = e.line() {
            s.push_str(&format!(" (template line {line})"));
        }
        TokenizerError::Template(s)
    }
}
