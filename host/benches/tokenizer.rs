//! Tokenizer throughput: encode ~1 MB of mixed text (English prose, source code, CJK) with the
//! Qwen2.5 tokenizer, one thread, and print it beside the Hugging Face `tokenizers` package (PyPI)
//! encoding the same text with the same vocabulary on the same machine.
//!
//!     cargo bench -p host --bench tokenizer
//!
//! The corpus is assembled from files present on any machine with this repository and Python:
//! prose from /usr/share/common-licenses (GPL, Apache, … license texts), code from this
//! workspace's own Rust sources, CJK from CPython's `test/cjkencodings/*-utf8.txt`; it is written
//! to `target/tokenizer-bench-corpus.txt`, which `host/benches/tokenizer_hf.py` reads. The HF
//! side runs only if `python3 -c 'import tokenizers, gguf'` works.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group};
use host::tokenizer::Tokenizer;

const PROSE_BYTES: usize = 450_000;
const CODE_BYTES: usize = 400_000;
const CJK_BYTES: usize = 150_000;

fn files_under(dir: &Path, ext: Option<&str>, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if !p.ends_with("target") && !p.file_name().is_some_and(|n| n == ".git") {
                files_under(&p, ext, out);
            }
        } else if ext.is_none_or(|e| p.extension().is_some_and(|x| x == e)) {
            out.push(p);
        }
    }
}

fn take(files: &[PathBuf], budget: usize, suffix: &str) -> String {
    let mut s = String::new();
    for f in files {
        if s.len() >= budget {
            break;
        }
        if !f.to_string_lossy().ends_with(suffix) {
            continue;
        }
        if let Ok(t) = std::fs::read_to_string(f) {
            s.push_str(&t);
            s.push('\n');
        }
    }
    s
}

fn python_stdlib() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .ok()?;
    Some(PathBuf::from(String::from_utf8(out.stdout).ok()?.trim()))
}

fn corpus() -> (String, [usize; 3]) {
    let mut prose_files = Vec::new();
    files_under(
        Path::new("/usr/share/common-licenses"),
        None,
        &mut prose_files,
    );
    let prose = take(&prose_files, PROSE_BYTES, "");

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut code_files = Vec::new();
    files_under(&root, Some("rs"), &mut code_files);
    let mut code = take(&code_files, CODE_BYTES, "");
    if code.len() < CODE_BYTES {
        // Not enough code in the workspace yet: add crates from the cargo registry sources.
        let home = std::env::var("CARGO_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
            });
        let mut more = Vec::new();
        files_under(&home.join("registry/src"), Some("rs"), &mut more);
        code.push_str(&take(&more, CODE_BYTES - code.len(), ""));
    }

    let mut cjk_files = Vec::new();
    if let Some(std) = python_stdlib() {
        files_under(&std.join("test/cjkencodings"), Some("txt"), &mut cjk_files);
    }
    let cjk_once = take(&cjk_files, usize::MAX, "-utf8.txt");
    let mut cjk = String::new();
    while !cjk_once.is_empty() && cjk.len() < CJK_BYTES {
        cjk.push_str(&cjk_once);
    }
    let sizes = [prose.len(), code.len(), cjk.len()];
    (prose + &code + &cjk, sizes)
}

fn load() -> Tokenizer {
    let path = host::fetch::QWEN.cached().unwrap_or_else(|| {
        panic!(
            "{} is not in the model cache ({}); run `host fetch qwen` first",
            host::fetch::QWEN.file,
            host::fetch::cache_dir().display()
        )
    });
    let g = host::gguf::Gguf::open(&path).expect("open model");
    Tokenizer::from_gguf(&g).expect("load tokenizer")
}

fn bench(c: &mut Criterion) {
    let tok = load();
    let (text, [p, k, j]) = corpus();
    let corpus_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tokenizer-bench-corpus.txt");
    std::fs::write(&corpus_path, &text).expect("write corpus");
    eprintln!(
        "corpus: {} bytes ({p} prose, {k} code, {j} CJK) -> {}",
        text.len(),
        corpus_path.display()
    );

    let mut g = c.benchmark_group("tokenizer");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.sample_size(10);
    g.bench_function("qwen2_encode_1MB", |b| {
        b.iter(|| tok.encode(&text, false, false))
    });
    g.finish();

    // Side by side: our own timing (best of 5; a fresh tokenizer, so an empty word cache, each
    // time for "cold") and HF's. Specials are parsed, as HF does for its added tokens, so both
    // produce the same ids (the script checks).
    let mut best = f64::MAX;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let fresh = load();
        let t0 = Instant::now();
        ids = fresh.encode(&text, false, true);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    let n_ids = ids.len();
    let ours_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tokenizer-bench-ours.json");
    std::fs::write(&ours_path, serde_json::json!({ "ids": ids }).to_string()).expect("write ids");
    let mut warm = f64::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        let _ = tok.encode(&text, false, true);
        warm = warm.min(t0.elapsed().as_secs_f64());
    }
    let mb = text.len() as f64 / 1e6;
    println!(
        "\n{:<48} {:>10} {:>10} {:>9}",
        "encoder (1 thread)", "seconds", "MB/s", "tokens"
    );
    println!(
        "{:<48} {:>10.4} {:>10.2} {:>9}",
        "host (cold word cache)",
        best,
        mb / best,
        n_ids
    );
    println!(
        "{:<48} {:>10.4} {:>10.2} {:>9}",
        "host (warm word cache)",
        warm,
        mb / warm,
        n_ids
    );

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/tokenizer_hf.py");
    let model = host::fetch::QWEN.cached().expect("model checked above");
    match Command::new("python3")
        .arg(&script)
        .arg(&model)
        .arg(&corpus_path)
        .arg("--ours")
        .arg(&ours_path)
        .env("RAYON_NUM_THREADS", "1")
        .env("TOKENIZERS_PARALLELISM", "false")
        .output()
    {
        Ok(o) if o.status.success() => print!("{}", String::from_utf8_lossy(&o.stdout)),
        Ok(o) => println!(
            "HF tokenizers: not run ({})",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("failed")
        ),
        Err(e) => println!("HF tokenizers: not run (python3: {e})"),
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
