//! Byte-level BPE tokenizer read from GGUF metadata (`tokenizer.ggml.model = "gpt2"`).
//!
//! Encoding: split the text at special tokens (user-defined ones always, control ones only when
//! asked), pre-tokenize each remaining fragment with the regex rule named by
//! `tokenizer.ggml.pre`, map each piece's bytes to their byte-level alphabet symbols, merge by
//! rank, and emit ids. Decoding maps ids back to bytes exactly. docs/BPE_IMPLEMENTATION.md
//! describes the algorithm, the GGUF keys and the pitfalls.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use host::tokenizer::{ChatMessage, Tokenizer};
//! let g = host::gguf::Gguf::open("model.gguf")?;
//! let tok = Tokenizer::from_gguf(&g)?;
//! let prompt = tok.apply_chat_template(&[ChatMessage::new("user", "hi")], true)?;
//! let ids = tok.encode(&prompt, true, true);
//! let text = tok.decode_lossy(&ids)?;
//! # Ok(()) }
//! ```

mod bpe;
pub mod bytelevel;
mod chat;
mod error;
pub mod pretok;
mod stream;
pub mod unicode;

use std::borrow::Cow;
use std::sync::Mutex;

use rustc_hash::FxHashMap;

use crate::gguf::{Array, Gguf, Value};
use bpe::{Merges, NO_TOKEN};
pub use chat::{CHATML_TEMPLATE, ChatMessage};
pub use error::TokenizerError;
pub use pretok::PreTokenizer;
pub use stream::StreamDecoder;

pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TokenType {
    Undefined = 0,
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl TokenType {
    pub fn from_i64(v: i64) -> Option<Self> {
        Some(match v {
            0 => TokenType::Undefined,
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }

    /// Tokens that the text is split at before pre-tokenization.
    fn is_special(self) -> bool {
        matches!(
            self,
            TokenType::Control | TokenType::UserDefined | TokenType::Unknown
        )
    }
}

/// Whether decoding renders control (and unknown, unused) tokens as their text or skips them.
/// User-defined tokens are always rendered: they stand for text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Specials {
    Render,
    Skip,
}

/// Choices a caller can make when loading.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Used when `tokenizer.ggml.pre` is missing or names a pre-tokenizer this engine does not
    /// know. Without it those cases are errors.
    pub pre_fallback: Option<PreTokenizer>,
}

/// Pieces longer than this (bytes) are not cached.
const CACHE_MAX_PIECE: usize = 64;
/// The cache is emptied when it reaches this many entries.
const CACHE_MAX_ENTRIES: usize = 1 << 18;

type Cache = FxHashMap<Box<[u8]>, Box<[u32]>>;

pub struct Tokenizer {
    pre: PreTokenizer,
    /// `tokenizer.ggml.pre` as found in the file (may differ from `pre.name()` with a fallback).
    pre_name: Option<String>,
    /// Token strings as stored (normal tokens in the byte-level alphabet).
    tokens: Vec<String>,
    types: Vec<TokenType>,
    /// What each token decodes to.
    pieces: Vec<Box<[u8]>>,
    text_to_id: FxHashMap<Box<str>, u32>,
    /// Normal tokens by the bytes they decode to (for llama-bpe's `ignore_merges`).
    bytes_to_id: FxHashMap<Box<[u8]>, u32>,
    merges: Merges,
    byte_ids: [u32; 256],
    /// Control, user-defined and unknown tokens, longest text first.
    specials: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    pad: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
    eog: Vec<u32>,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("pre", &self.pre)
            .field("n_vocab", &self.tokens.len())
            .field("n_merges", &self.merges.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("eog", &self.eog)
            .finish_non_exhaustive()
    }
}

// ---- metadata access -------------------------------------------------------------------------

fn describe(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("array of {} ({} entries)", a.elem_type(), a.len()),
        v => v.value_type().to_string(),
    }
}

fn get_str<'a>(g: &'a Gguf, key: &'static str) -> Result<Option<&'a str>> {
    match g.header.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(TokenizerError::WrongType {
            key,
            expected: "string",
            found: describe(v),
        }),
    }
}

fn get_strings<'a>(g: &'a Gguf, key: &'static str) -> Result<Option<&'a [String]>> {
    match g.header.get(key) {
        None => Ok(None),
        Some(Value::Array(Array::String(v))) => Ok(Some(v)),
        Some(v) => Err(TokenizerError::WrongType {
            key,
            expected: "array of string",
            found: describe(v),
        }),
    }
}

fn get_ints(g: &Gguf, key: &'static str) -> Result<Option<Vec<i64>>> {
    let wrong = |v: &Value| TokenizerError::WrongType {
        key,
        expected: "array of integers",
        found: describe(v),
    };
    let Some(v) = g.header.get(key) else {
        return Ok(None);
    };
    let Value::Array(a) = v else {
        return Err(wrong(v));
    };
    let out: Vec<i64> = match a {
        Array::I32(x) => x.iter().map(|&v| v as i64).collect(),
        Array::U32(x) => x.iter().map(|&v| v as i64).collect(),
        Array::I8(x) => x.iter().map(|&v| v as i64).collect(),
        Array::U8(x) => x.iter().map(|&v| v as i64).collect(),
        Array::I16(x) => x.iter().map(|&v| v as i64).collect(),
        Array::U16(x) => x.iter().map(|&v| v as i64).collect(),
        Array::I64(x) => x.clone(),
        _ => return Err(wrong(v)),
    };
    Ok(Some(out))
}

fn get_bool(g: &Gguf, key: &'static str) -> Result<Option<bool>> {
    match g.header.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(TokenizerError::WrongType {
            key,
            expected: "bool",
            found: describe(v),
        }),
    }
}

fn get_id(g: &Gguf, key: &'static str, n_tokens: usize) -> Result<Option<u32>> {
    let Some(v) = g.header.get(key) else {
        return Ok(None);
    };
    let id = v.as_u64().ok_or_else(|| TokenizerError::WrongType {
        key,
        expected: "non-negative integer",
        found: format!("{v:?}"),
    })?;
    if id >= n_tokens as u64 {
        return Err(TokenizerError::SpecialIdOutOfRange { key, id, n_tokens });
    }
    Ok(Some(id as u32))
}

/// What a token's string decodes to: normal tokens through the byte-level alphabet (a character
/// outside it stands for its own UTF-8 bytes); byte tokens `<0xXX>` for that byte; every other
/// type for its text.
fn token_piece(text: &str, ty: TokenType) -> Vec<u8> {
    match ty {
        TokenType::Normal | TokenType::Undefined => {
            let mut out = Vec::with_capacity(text.len());
            for c in text.chars() {
                match bytelevel::char_to_byte(c) {
                    Some(b) => out.push(b),
                    None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            out
        }
        TokenType::Byte => {
            let hex = text
                .strip_prefix("<0x")
                .and_then(|t| t.strip_suffix('>'))
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => vec![b],
                None => token_piece(text, TokenType::Normal),
            }
        }
        _ => text.as_bytes().to_vec(),
    }
}

/// Input bytes as text: each byte that does not begin a valid UTF-8 sequence becomes U+FFFD, one
/// per byte, as llama.cpp does before pre-tokenization.
fn utf8_lossy_per_byte(b: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => {
            let mut s = String::with_capacity(b.len() + 8);
            let mut rest = b;
            loop {
                match std::str::from_utf8(rest) {
                    Ok(v) => {
                        s.push_str(v);
                        break;
                    }
                    Err(e) => {
                        let (good, bad) = rest.split_at(e.valid_up_to());
                        // `good` is valid by construction.
                        s.push_str(std::str::from_utf8(good).unwrap_or_default());
                        s.push('\u{FFFD}');
                        rest = &bad[1..];
                    }
                }
            }
            Cow::Owned(s)
        }
    }
}

enum Frag {
    Text(usize, usize),
    Token(u32),
}

impl Tokenizer {
    /// Loads the tokenizer of a GGUF file; an unknown pre-tokenizer is an error.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        Self::from_gguf_with(g, &LoadOptions::default())
    }

    pub fn from_gguf_with(g: &Gguf, opts: &LoadOptions) -> Result<Self> {
        let model = get_str(g, "tokenizer.ggml.model")?.ok_or(TokenizerError::MissingKey {
            key: "tokenizer.ggml.model",
        })?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(model.to_string()));
        }
        let pre_name = get_str(g, "tokenizer.ggml.pre")?;
        let pre = match pre_name.and_then(PreTokenizer::from_name) {
            Some(p) => p,
            None => opts
                .pre_fallback
                .ok_or_else(|| TokenizerError::UnknownPre {
                    name: pre_name.unwrap_or("(missing)").to_string(),
                    known: PreTokenizer::NAMES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", "),
                })?,
        };

        let tokens =
            get_strings(g, "tokenizer.ggml.tokens")?.ok_or(TokenizerError::MissingKey {
                key: "tokenizer.ggml.tokens",
            })?;
        let n = tokens.len();
        if n == 0 || n >= u32::MAX as usize {
            return Err(TokenizerError::LengthMismatch {
                key: "tokenizer.ggml.tokens",
                len: n,
                n_tokens: n,
            });
        }
        let types: Vec<TokenType> = match get_ints(g, "tokenizer.ggml.token_type")? {
            None => vec![TokenType::Normal; n],
            Some(t) => {
                if t.len() != n {
                    return Err(TokenizerError::LengthMismatch {
                        key: "tokenizer.ggml.token_type",
                        len: t.len(),
                        n_tokens: n,
                    });
                }
                t.iter()
                    .enumerate()
                    .map(|(id, &v)| {
                        TokenType::from_i64(v).ok_or(TokenizerError::BadTokenType { id, value: v })
                    })
                    .collect::<Result<_>>()?
            }
        };

        let mut text_to_id: FxHashMap<Box<str>, u32> = FxHashMap::default();
        text_to_id.reserve(n);
        let mut bytes_to_id: FxHashMap<Box<[u8]>, u32> = FxHashMap::default();
        let mut pieces = Vec::with_capacity(n);
        for (id, t) in tokens.iter().enumerate() {
            if t.is_empty() {
                return Err(TokenizerError::EmptyToken { id });
            }
            if let Some(&first) = text_to_id.get(t.as_str()) {
                return Err(TokenizerError::DuplicateToken {
                    id,
                    first,
                    text: t.clone(),
                });
            }
            text_to_id.insert(t.as_str().into(), id as u32);
            let piece = token_piece(t, types[id]);
            if types[id] == TokenType::Normal {
                bytes_to_id
                    .entry(piece.clone().into_boxed_slice())
                    .or_insert(id as u32);
            }
            pieces.push(piece.into_boxed_slice());
        }

        let mut byte_ids = [NO_TOKEN; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            let c = bytelevel::BYTE_TO_CHAR[b];
            if let Some(&id) = text_to_id.get(c.encode_utf8(&mut [0; 4]) as &str) {
                *slot = id;
            }
        }

        let merge_strs =
            get_strings(g, "tokenizer.ggml.merges")?.ok_or(TokenizerError::MissingKey {
                key: "tokenizer.ggml.merges",
            })?;
        let mut merges = Merges::with_capacity(merge_strs.len());
        let mut joined = String::new();
        for (rank, m) in merge_strs.iter().enumerate() {
            let bad = |problem: String| TokenizerError::BadMerge {
                rank,
                merge: m.clone(),
                problem,
            };
            // The alphabet has no U+0020, so the one space separates the parts.
            let Some((a, b)) = m.split_once(' ') else {
                return Err(bad("no space separating two parts".into()));
            };
            if a.is_empty() || b.is_empty() || b.contains(' ') {
                return Err(bad("expected exactly two non-empty parts".into()));
            }
            let ia = *text_to_id
                .get(a)
                .ok_or_else(|| bad(format!("left part {a:?} is not in the vocabulary")))?;
            let ib = *text_to_id
                .get(b)
                .ok_or_else(|| bad(format!("right part {b:?} is not in the vocabulary")))?;
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let ic = *text_to_id
                .get(joined.as_str())
                .ok_or_else(|| bad(format!("result {joined:?} is not in the vocabulary")))?;
            merges.insert(ia, ib, rank as u32, ic);
        }

        let bos = get_id(g, "tokenizer.ggml.bos_token_id", n)?;
        let eos = get_id(g, "tokenizer.ggml.eos_token_id", n)?;
        let eot = get_id(g, "tokenizer.ggml.eot_token_id", n)?;
        let eom = get_id(g, "tokenizer.ggml.eom_token_id", n)?;
        let pad = get_id(g, "tokenizer.ggml.padding_token_id", n)?;
        let unk = get_id(g, "tokenizer.ggml.unknown_token_id", n)?;
        // llama.cpp's defaults when the keys are absent: BOS for llama-bpe only, never EOS.
        let add_bos =
            get_bool(g, "tokenizer.ggml.add_bos_token")?.unwrap_or(pre == PreTokenizer::Llama3);
        let add_eos = get_bool(g, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(TokenizerError::AddWithoutId {
                flag: "tokenizer.ggml.add_bos_token",
                key: "tokenizer.ggml.bos_token_id",
            });
        }
        if add_eos && eos.is_none() {
            return Err(TokenizerError::AddWithoutId {
                flag: "tokenizer.ggml.add_eos_token",
                key: "tokenizer.ggml.eos_token_id",
            });
        }
        let chat_template = get_str(g, "tokenizer.chat_template")?.map(str::to_string);

        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| types[i as usize].is_special())
            .collect();
        // Longest first; ties by id so the order is deterministic.
        specials.sort_by_key(|&i| (std::cmp::Reverse(tokens[i as usize].len()), i));

        let mut tok = Tokenizer {
            pre,
            pre_name: pre_name.map(str::to_string),
            tokens: tokens.to_vec(),
            types,
            pieces,
            text_to_id,
            bytes_to_id,
            merges,
            byte_ids,
            specials,
            bos,
            eos,
            eot,
            eom,
            pad,
            unk,
            add_bos,
            add_eos,
            chat_template,
            eog: Vec::new(),
            cache: Mutex::new(Cache::default()),
        };
        tok.eog = tok.derive_eog();
        Ok(tok)
    }

    /// The end-of-generation set: eos, eot and eom (when the file names them); the token the chat
    /// template closes an assistant turn with, when that is a control token; and the padding
    /// token when it is a control token (a model that emits its padding has finished). Derived
    /// from metadata, token types and the template, never from a list of token texts.
    fn derive_eog(&self) -> Vec<u32> {
        let mut set: Vec<u32> = [self.eos, self.eot, self.eom]
            .into_iter()
            .flatten()
            .collect();
        if let Some(id) = self.turn_end_token() {
            set.push(id);
        }
        if let Some(p) = self.pad
            && self.types[p as usize] == TokenType::Control
        {
            set.push(p);
        }
        set.sort_unstable();
        set.dedup();
        set
    }

    /// Renders a probe conversation through the chat template and returns the control token that
    /// directly follows the assistant's message, if any.
    fn turn_end_token(&self) -> Option<u32> {
        const PROBE: &str = "\u{E000}probe\u{E001}";
        let msgs = [
            ChatMessage::new("user", "hello"),
            ChatMessage::new("assistant", PROBE),
        ];
        let rendered = self.apply_chat_template(&msgs, false).ok()?;
        let after = &rendered[rendered.rfind(PROBE)? + PROBE.len()..];
        let ids = self.encode(after, false, true);
        let first = *ids.first()?;
        (self.types[first as usize] == TokenType::Control).then_some(first)
    }

    // ---- accessors ----------------------------------------------------------------------------

    pub fn pre_tokenizer(&self) -> PreTokenizer {
        self.pre
    }

    /// `tokenizer.ggml.pre` as stored in the file.
    pub fn pre_name(&self) -> Option<&str> {
        self.pre_name.as_deref()
    }

    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    pub fn n_merges(&self) -> usize {
        self.merges.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }

    /// Whether `encode(…, add_special = true, …)` prepends BOS (`tokenizer.ggml.add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Token ids that end generation, sorted (see [`Tokenizer::derive_eog`] for the rule).
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// `tokenizer.chat_template`, if the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The token's string as stored in the file (byte-level alphabet for normal tokens).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The bytes the token decodes to (control tokens: their text).
    pub fn token_piece(&self, id: u32) -> Option<&[u8]> {
        self.pieces.get(id as usize).map(|p| &p[..])
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// The id of a token by its stored string.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.text_to_id.get(text).copied()
    }

    // ---- encoding -----------------------------------------------------------------------------

    /// Encodes text. `add_special`: add BOS/EOS as the file asks (`add_bos_token`,
    /// `add_eos_token`). `parse_special`: text equal to a control token becomes that token;
    /// without it only user-defined tokens are matched, and `<|im_end|>` typed by a user stays
    /// text.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        self.encode_bytes(text.as_bytes(), add_special, parse_special)
    }

    /// Encodes bytes that need not be UTF-8: each byte that does not start a valid UTF-8
    /// sequence is read as U+FFFD (as llama.cpp does), so such input does not round-trip.
    pub fn encode_bytes(&self, bytes: &[u8], add_special: bool, parse_special: bool) -> Vec<u32> {
        self.encode_masked(bytes, add_special, parse_special, &[])
    }

    pub(crate) fn encode_masked(
        &self,
        bytes: &[u8],
        add_special: bool,
        parse_special: bool,
        protected: &[(usize, usize)],
    ) -> Vec<u32> {
        let mut out = Vec::with_capacity(bytes.len() / 3 + 2);
        if add_special
            && self.add_bos
            && let Some(b) = self.bos
        {
            out.push(b);
        }
        // The word cache is taken once per call; a caller that finds it busy (another thread
        // encoding) works without it rather than waiting.
        let mut guard = self.cache.try_lock().ok();
        let mut cache = guard.as_deref_mut();
        let mut syms = Vec::new();
        for frag in self.partition_masked(bytes, parse_special, protected) {
            match frag {
                Frag::Token(id) => out.push(id),
                Frag::Text(a, e) => {
                    let text = utf8_lossy_per_byte(&bytes[a..e]);
                    self.pre.split_ranges(&text, &mut |s, t| {
                        self.encode_piece(
                            &text.as_bytes()[s..t],
                            &mut out,
                            cache.as_deref_mut(),
                            &mut syms,
                        )
                    });
                }
            }
        }
        if add_special
            && self.add_eos
            && let Some(e) = self.eos
        {
            out.push(e);
        }
        out
    }

    /// Splits at special tokens, longest token first, each over all remaining text fragments
    /// (llama.cpp's partition order).
    ///
    /// A control or unknown token is not matched where it overlaps one of the `protected` byte
    /// ranges (message contents in a rendered chat prompt).
    fn partition_masked(
        &self,
        bytes: &[u8],
        parse_special: bool,
        protected: &[(usize, usize)],
    ) -> Vec<Frag> {
        let mut frags = Vec::new();
        if bytes.is_empty() {
            return frags;
        }
        frags.push(Frag::Text(0, bytes.len()));
        for &id in &self.specials {
            let ty = self.types[id as usize];
            if !parse_special && ty != TokenType::UserDefined {
                continue;
            }
            let needle = self.tokens[id as usize].as_bytes();
            let finder = memchr::memmem::Finder::new(needle);
            let mut next: Vec<Frag> = Vec::with_capacity(frags.len());
            for f in frags.drain(..) {
                let Frag::Text(a, e) = f else {
                    next.push(f);
                    continue;
                };
                let mut pos = a;
                let mut from = a;
                while let Some(k) = finder.find(&bytes[from..e]) {
                    let (s, t) = (from + k, from + k + needle.len());
                    if ty != TokenType::UserDefined
                        && protected.iter().any(|&(p, q)| s < q && p < t)
                    {
                        from = s + 1;
                        continue;
                    }
                    if s > pos {
                        next.push(Frag::Text(pos, s));
                    }
                    next.push(Frag::Token(id));
                    pos = t;
                    from = t;
                }
                if pos < e {
                    next.push(Frag::Text(pos, e));
                }
            }
            frags = next;
        }
        frags
    }

    fn encode_piece(
        &self,
        piece: &[u8],
        out: &mut Vec<u32>,
        cache: Option<&mut Cache>,
        syms: &mut Vec<u32>,
    ) {
        if piece.len() == 1 {
            let id = self.byte_ids[piece[0] as usize];
            if id != NO_TOKEN {
                out.push(id);
            }
            return;
        }
        let cacheable = piece.len() <= CACHE_MAX_PIECE;
        if cacheable
            && let Some(c) = &cache
            && let Some(ids) = c.get(piece)
        {
            out.extend_from_slice(ids);
            return;
        }
        if self.pre.ignore_merges()
            && let Some(&id) = self.bytes_to_id.get(piece)
        {
            out.push(id);
            return;
        }
        syms.clear();
        syms.extend(piece.iter().map(|&b| self.byte_ids[b as usize]));
        self.merges.apply(syms);
        let start = out.len();
        out.extend(syms.iter().copied().filter(|&id| id != NO_TOKEN));
        if cacheable && let Some(c) = cache {
            if c.len() >= CACHE_MAX_ENTRIES {
                c.clear();
            }
            c.insert(piece.into(), out[start..].into());
        }
    }

    // ---- decoding -----------------------------------------------------------------------------

    fn check_id(&self, id: u32) -> Result<usize> {
        if (id as usize) < self.tokens.len() {
            Ok(id as usize)
        } else {
            Err(TokenizerError::IdOutOfRange {
                id,
                n_tokens: self.tokens.len(),
            })
        }
    }

    /// Whether decoding with [`Specials::Skip`] leaves this token out.
    fn skipped(&self, i: usize, specials: Specials) -> bool {
        specials == Specials::Skip
            && matches!(
                self.types[i],
                TokenType::Control | TokenType::Unknown | TokenType::Unused
            )
    }

    /// The bytes of the ids, every token rendered (control tokens as their text): the exact
    /// inverse of `encode` for text that is valid UTF-8.
    pub fn decode(&self, ids: &[u32]) -> Result<Vec<u8>> {
        self.decode_with(ids, Specials::Render)
    }

    pub fn decode_with(&self, ids: &[u32], specials: Specials) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        self.decode_into(ids, specials, &mut out)?;
        Ok(out)
    }

    /// Appends the bytes of `ids` to `out`.
    pub fn decode_into(&self, ids: &[u32], specials: Specials, out: &mut Vec<u8>) -> Result<()> {
        for &id in ids {
            let i = self.check_id(id)?;
            if !self.skipped(i, specials) {
                out.extend_from_slice(&self.pieces[i]);
            }
        }
        Ok(())
    }

    /// Decodes to a `String`, invalid UTF-8 replaced by U+FFFD.
    pub fn decode_lossy(&self, ids: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode(ids)?).into_owned())
    }

    /// A streaming decoder over this tokenizer.
    pub fn stream_decoder(&self, specials: Specials) -> StreamDecoder<'_> {
        StreamDecoder::new(self, specials)
    }
}
