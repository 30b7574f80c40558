//! Shared helpers for the conformance suite.

use std::path::{Path, PathBuf};

use host::fetch::KnownModel;

/// The real model's path, fetched into the cache on first use (`host fetch` does the same).
/// Fails the test with instructions when it cannot be had: a real-model test never passes
/// without its model.
pub fn real_model(m: &KnownModel) -> PathBuf {
    match host::fetch::ensure(m, false) {
        Ok(p) => p,
        Err(e) => panic!(
            "real model {} is not available: {e}\nfetch it with `cargo run --release -p host -- fetch {}` \
             (cache: {}; override with ${})",
            m.file,
            m.short,
            host::fetch::cache_dir().display(),
            host::fetch::CACHE_ENV
        ),
    }
}

/// `shared/refs` of this workspace: the reference outputs of established implementations.
/// Looked up as `../shared/refs` beside the checkout (where CI puts it) or `shared/refs` inside it.
pub fn refs_dir() -> PathBuf {
    let root = workspace_root();
    for cand in [root.join("../shared/refs"), root.join("shared/refs")] {
        if cand.is_dir() {
            return cand;
        }
    }
    panic!(
        "reference outputs not found: expected ../shared/refs beside the checkout {}",
        root.display()
    );
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Reads a JSON-lines file.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}
