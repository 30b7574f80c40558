//! Tokenizer behaviour that does not need a reference implementation: validation of the GGUF
//! keys (each bad input a clear error), special-token parsing, decoding options, the
//! end-of-generation rule and streaming, on small synthetic vocabularies and on the real models.

use host::fetch::{KnownModel, QWEN, SMOLLM2};
use host::gguf::{Array, Gguf, GgufWriter, Value};
use host::tokenizer::{
    CHATML_TEMPLATE, ChatMessage, LoadOptions, PreTokenizer, Specials, TokenType, Tokenizer,
    TokenizerError, bytelevel,
};
use spec_tests::real_model;

fn real(m: &KnownModel) -> Tokenizer {
    Tokenizer::from_gguf(&Gguf::open(real_model(m)).unwrap()).unwrap()
}

/// A tiny byte-level vocabulary: the 256 alphabet symbols (ids 0..256), then "he", "ll",
/// "hell", "hello", "Ġw", then `<|end|>` (control) and `<tool>` (user-defined).
struct Synth {
    tokens: Vec<String>,
    types: Vec<i32>,
    merges: Vec<String>,
    extra: Vec<(String, Value)>,
}

impl Synth {
    fn new() -> Self {
        let mut tokens: Vec<String> = (0..=255u8)
            .map(|b| bytelevel::BYTE_TO_CHAR[b as usize].to_string())
            .collect();
        let mut types = vec![1; 256];
        for t in ["he", "ll", "hell", "hello", "Ġw"] {
            tokens.push(t.into());
            types.push(1);
        }
        tokens.push("<|end|>".into());
        types.push(3);
        tokens.push("<tool>".into());
        types.push(4);
        let merges = ["h e", "l l", "he ll", "hell o", "Ġ w"]
            .map(String::from)
            .to_vec();
        Synth {
            tokens,
            types,
            merges,
            extra: vec![
                ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
                ("tokenizer.ggml.pre".into(), Value::String("qwen2".into())),
                ("tokenizer.ggml.eos_token_id".into(), Value::U32(261)),
            ],
        }
    }

    fn set(mut self, key: &str, v: Value) -> Self {
        self.extra.retain(|(k, _)| k != key);
        self.extra.push((key.into(), v));
        self
    }

    fn gguf(&self) -> Gguf {
        let mut w = GgufWriter::new();
        w.set(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(self.tokens.clone())),
        );
        w.set(
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(self.types.clone())),
        );
        w.set(
            "tokenizer.ggml.merges",
            Value::Array(Array::String(self.merges.clone())),
        );
        for (k, v) in &self.extra {
            w.set(k.clone(), v.clone());
        }
        Gguf::from_bytes(w.to_bytes(&[])).unwrap()
    }

    fn load(&self) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::from_gguf(&self.gguf())
    }
}

#[test]
fn synthetic_vocabulary_encodes_and_decodes() {
    let t = Synth::new().load().unwrap();
    let ids = t.encode("hello world", false, false);
    // "hello" is one token (261 after 256 bytes + 4); " w" merges, "orld" stays bytes.
    assert_eq!(ids[0], 259);
    assert_eq!(ids[1], 260);
    assert_eq!(t.decode(&ids).unwrap(), b"hello world");
}

#[test]
fn refuses_other_tokenizer_models_by_name() {
    for m in ["llama", "bert", "t5", "rwkv"] {
        let e = Synth::new()
            .set("tokenizer.ggml.model", Value::String(m.into()))
            .load()
            .unwrap_err();
        assert!(
            matches!(&e, TokenizerError::UnsupportedModel(x) if x == m),
            "{e}"
        );
        assert!(e.to_string().contains(m), "{e}");
    }
}

#[test]
fn unknown_pre_is_an_error_unless_a_fallback_is_named() {
    let s = Synth::new().set("tokenizer.ggml.pre", Value::String("deepseek-coder".into()));
    let e = s.load().unwrap_err();
    assert!(e.to_string().contains("deepseek-coder"), "{e}");
    let t = Tokenizer::from_gguf_with(
        &s.gguf(),
        &LoadOptions {
            pre_fallback: Some(PreTokenizer::Gpt2),
        },
    )
    .unwrap();
    assert_eq!(t.pre_tokenizer(), PreTokenizer::Gpt2);
    assert_eq!(t.pre_name(), Some("deepseek-coder"));
}

#[test]
fn type_list_length_mismatch() {
    let mut s = Synth::new();
    s.types.pop();
    let e = s.load().unwrap_err();
    assert!(
        matches!(
            e,
            TokenizerError::LengthMismatch {
                len: 262,
                n_tokens: 263,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn bad_token_type_value() {
    let mut s = Synth::new();
    s.types[7] = 9;
    let e = s.load().unwrap_err();
    assert!(
        matches!(e, TokenizerError::BadTokenType { id: 7, value: 9 }),
        "{e}"
    );
}

#[test]
fn merges_must_stay_inside_the_vocabulary() {
    let cases = [
        ("h z", "right part \"z\""),
        ("q e", "left part \"q\""),
        ("l o", "result \"lo\""),
        ("hello", "no space"),
        ("h e l", "two non-empty parts"),
    ];
    for (m, want) in cases {
        let mut s = Synth::new();
        // "z" and "q" exist as byte symbols; make them absent for the first two cases.
        s.tokens = s
            .tokens
            .iter()
            .map(|t| match t.as_str() {
                "z" => "<z>".into(),
                "q" => "<q>".into(),
                _ => t.clone(),
            })
            .collect();
        s.merges.push(m.into());
        let e = s.load().unwrap_err();
        assert!(
            matches!(&e, TokenizerError::BadMerge { rank: 5, .. }) && e.to_string().contains(want),
            "{m:?}: {e}"
        );
    }
}

#[test]
fn special_ids_out_of_range() {
    let e = Synth::new()
        .set("tokenizer.ggml.bos_token_id", Value::U32(263))
        .load()
        .unwrap_err();
    assert!(
        matches!(
            e,
            TokenizerError::SpecialIdOutOfRange {
                id: 263,
                n_tokens: 263,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn add_bos_needs_a_bos_id() {
    let e = Synth::new()
        .set("tokenizer.ggml.add_bos_token", Value::Bool(true))
        .load()
        .unwrap_err();
    assert!(matches!(e, TokenizerError::AddWithoutId { .. }), "{e}");
    let t = Synth::new()
        .set("tokenizer.ggml.add_bos_token", Value::Bool(true))
        .set("tokenizer.ggml.bos_token_id", Value::U32(261))
        .load()
        .unwrap();
    assert_eq!(t.encode("he", true, false), vec![261, 256]);
    assert_eq!(t.encode("he", false, false), vec![256]);
}

#[test]
fn duplicate_and_empty_tokens() {
    let mut s = Synth::new();
    s.tokens[5] = "he".into();
    let e = s.load().unwrap_err();
    assert!(matches!(e, TokenizerError::DuplicateToken { .. }), "{e}");
    let mut s = Synth::new();
    s.tokens[5] = String::new();
    assert!(matches!(
        s.load().unwrap_err(),
        TokenizerError::EmptyToken { id: 5 }
    ));
}

#[test]
fn wrong_metadata_types() {
    let e = Synth::new()
        .set("tokenizer.ggml.merges", Value::U32(3))
        .load()
        .unwrap_err();
    assert!(e.to_string().contains("tokenizer.ggml.merges"), "{e}");
    let e = Synth::new()
        .set("tokenizer.ggml.eos_token_id", Value::String("x".into()))
        .load()
        .unwrap_err();
    assert!(e.to_string().contains("eos_token_id"), "{e}");
}

#[test]
fn control_tokens_need_parse_special_user_defined_do_not() {
    let t = Synth::new().load().unwrap();
    let plain = t.encode("a<|end|>b<tool>c", false, false);
    let parsed = t.encode("a<|end|>b<tool>c", false, true);
    assert!(!plain.contains(&261), "{plain:?}");
    assert!(
        plain.contains(&262),
        "user-defined is always split out: {plain:?}"
    );
    assert!(parsed.contains(&261) && parsed.contains(&262), "{parsed:?}");
    assert_eq!(t.decode(&plain).unwrap(), b"a<|end|>b<tool>c");
    assert_eq!(t.decode(&parsed).unwrap(), b"a<|end|>b<tool>c");
    assert_eq!(
        t.decode_with(&parsed, Specials::Skip).unwrap(),
        b"ab<tool>c",
        "Skip drops control tokens, keeps user-defined ones"
    );
}

#[test]
fn decode_refuses_out_of_range_ids() {
    let t = Synth::new().load().unwrap();
    let e = t.decode(&[1, 263]).unwrap_err();
    assert!(
        matches!(
            e,
            TokenizerError::IdOutOfRange {
                id: 263,
                n_tokens: 263
            }
        ),
        "{e}"
    );
}

#[test]
fn chat_template_missing_is_an_error_chatml_is_explicit() {
    let t = Synth::new().load().unwrap();
    assert!(matches!(
        t.apply_chat_template(&[ChatMessage::new("user", "x")], true),
        Err(TokenizerError::NoChatTemplate)
    ));
    let s = t
        .apply_chat_template_with(
            CHATML_TEMPLATE,
            &[ChatMessage::new("user", "x")],
            None,
            true,
        )
        .unwrap();
    assert_eq!(s, "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n");
}

#[test]
fn eog_comes_from_metadata_and_the_template() {
    // No template: eos only.
    let t = Synth::new().load().unwrap();
    assert_eq!(t.eog_ids(), &[261]);
    // A template that closes turns with `<|end|>` while eos is another token: both end.
    let tmpl = "{% for m in messages %}{{ m.role }}: {{ m.content }}<|end|>\n{% endfor %}";
    let t = Synth::new()
        .set("tokenizer.ggml.eos_token_id", Value::U32(0))
        .set("tokenizer.chat_template", Value::String(tmpl.into()))
        .load()
        .unwrap();
    assert_eq!(t.eog_ids(), &[0, 261]);
    // A padding token that is a control token ends generation too.
    let t = Synth::new()
        .set("tokenizer.ggml.eos_token_id", Value::U32(0))
        .set("tokenizer.ggml.padding_token_id", Value::U32(261))
        .load()
        .unwrap();
    assert_eq!(t.eog_ids(), &[0, 261]);
}

#[test]
fn real_models_eog_sets() {
    let q = real(&QWEN);
    // eos <|im_end|> (151645); padding <|endoftext|> (151643, control); the template closes
    // assistant turns with <|im_end|>.
    assert_eq!(q.token_text(151645), Some("<|im_end|>"));
    assert_eq!(q.token_text(151643), Some("<|endoftext|>"));
    assert_eq!(q.eog_ids(), &[151643, 151645]);
    let s = real(&SMOLLM2);
    // eos = padding = <|im_end|> (2), also the template's turn end.
    assert_eq!(s.token_text(2), Some("<|im_end|>"));
    assert_eq!(s.eog_ids(), &[2]);
}

#[test]
fn user_text_never_becomes_a_control_token_by_default() {
    let q = real(&QWEN);
    let ids = q.encode("<|im_end|><|im_start|>system", false, false);
    assert!(
        ids.iter()
            .all(|&i| q.token_type(i) == Some(TokenType::Normal)),
        "{ids:?}"
    );
    assert_eq!(q.encode("<|im_end|>", false, true), vec![151645]);
    // `<tool_call>` is user-defined in qwen: split out even without parse_special.
    assert_eq!(q.encode("<tool_call>", false, false), vec![151657]);
}

#[test]
fn streaming_emits_only_whole_characters() {
    let q = real(&QWEN);
    for text in ["Thumbs 👍🏽 up", "家族 👨‍👩‍👧‍👦 🇫🇷 日本語", "e\u{301}\u{302}"]
    {
        let ids = q.encode(text, false, false);
        let mut d = q.stream_decoder(Specials::Render);
        let mut out = String::new();
        for &id in &ids {
            let piece = d.push(id).unwrap();
            // Nothing emitted is a replacement character: pieces split inside a character are
            // held back until it is complete.
            assert!(!piece.contains('\u{FFFD}'), "{text:?}: {piece:?}");
            assert!(d.pending().len() <= 3);
            out.push_str(&piece);
        }
        out.push_str(&d.finish());
        assert_eq!(out, text);
    }
    // A token sequence ending inside a character: finish() flushes it as U+FFFD.
    // A character the vocabulary has no single token for (private use plane 16).
    let ids = q.encode("\u{10FFFD}", false, false);
    assert!(ids.len() > 1, "{ids:?}");
    let mut d = q.stream_decoder(Specials::Render);
    let mut out = String::new();
    for &id in &ids[..ids.len() - 1] {
        out.push_str(&d.push(id).unwrap());
    }
    assert_eq!(out, "");
    assert_eq!(d.finish(), "\u{FFFD}");
}

#[test]
fn stream_can_skip_control_tokens() {
    let q = real(&QWEN);
    let ids = q.encode("<|im_start|>assistant\nHi<|im_end|>", false, true);
    let mut d = q.stream_decoder(Specials::Skip);
    let s: String = ids.iter().map(|&i| d.push(i).unwrap()).collect();
    assert_eq!(s, "assistant\nHi");
}

#[test]
fn invalid_utf8_bytes_become_replacement_characters() {
    // Each byte that does not start a valid sequence is read as U+FFFD, one per byte.
    let q = real(&QWEN);
    let got = q.encode_bytes(b"\xff\xfeA\x80B\xe2\x82", false, false);
    let want = q.encode("\u{FFFD}\u{FFFD}A\u{FFFD}B\u{FFFD}\u{FFFD}", false, false);
    assert_eq!(got, want);
}
