//! Fuzzes the GGUF reader: any bytes give an error or a parse whose tensors all lie in the file,
//! and a parsed file maps to a model or to a model error, never a panic.
//!
//!   cargo fuzz run gguf_reader          (from the repository root; needs cargo-fuzz)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = host::gguf::Gguf::from_bytes(data.to_vec()) {
        for t in &g.header.tensors {
            assert_eq!(g.tensor_data(t).len() as u64, t.n_bytes);
        }
        if let Ok(cfg) = host::model::Config::from_header(&g.header) {
            let _ = host::model::Weights::from_header(&g.header, &cfg);
        }
    }
});
