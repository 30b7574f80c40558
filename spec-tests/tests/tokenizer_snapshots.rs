//! Snapshots of the ids of our own corpus (tests/data/tokenizer_corpus.json: code, numbers,
//! whitespace runs, CJK, emoji with modifiers and ZWJ, combining marks, RTL, special-token
//! look-alikes, the empty string, long repeats), for both real models, with and without
//! parse_special.
//!
//! The snapshots were checked against an independent implementation when they were written:
//! `python3 host/benches/tokenizer_hf_check.py` rebuilds each model's tokenizer in Hugging Face
//! `tokenizers` from the GGUF vocabulary and merges (configured as the models' tokenizer.json,
//! without Qwen's NFC normalizer, which llama.cpp does not apply either) and compares every id
//! list in these snapshots. Re-run it whenever a snapshot changes.

use host::fetch::{KnownModel, QWEN, SMOLLM2};
use host::gguf::Gguf;
use host::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use spec_tests::{real_model, workspace_root};

#[derive(Deserialize)]
struct Case {
    name: String,
    text: String,
}

#[derive(Serialize)]
struct Row {
    name: String,
    ids: Vec<u32>,
    /// Present only when parse_special changes the ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    ids_parse_special: Option<Vec<u32>>,
}

fn corpus() -> Vec<Case> {
    let p = workspace_root().join("spec-tests/tests/data/tokenizer_corpus.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn rows(m: &KnownModel) -> Vec<Row> {
    let t = Tokenizer::from_gguf(&Gguf::open(real_model(m)).unwrap()).unwrap();
    corpus()
        .into_iter()
        .map(|c| {
            let ids = t.encode(&c.text, false, false);
            let ps = t.encode(&c.text, false, true);
            // Every row round-trips (SmolLM2 lacks a few control-byte symbols; none are used here).
            assert_eq!(t.decode(&ids).unwrap(), c.text.as_bytes(), "{}", c.name);
            Row {
                name: c.name,
                ids_parse_special: (ps != ids).then_some(ps),
                ids,
            }
        })
        .collect()
}

#[test]
fn qwen_corpus_ids() {
    insta::assert_json_snapshot!("qwen_corpus_ids", rows(&QWEN));
}

#[test]
fn smollm_corpus_ids() {
    insta::assert_json_snapshot!("smollm_corpus_ids", rows(&SMOLLM2));
}
