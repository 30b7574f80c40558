//! The errors a user of `host run` / `host perplexity` can hit: each is one clear message (the
//! binary prints it as one line and exits 1), never a panic. Run through the subcommands' entry
//! points on tiny model files.

use std::path::PathBuf;

use fixtures::tiny::{TinySpec, build, build_bytes};
use host::cli::run::{Args, Device, ModelArgs, SampleArgs};
use host::gguf::{GgmlType, Value};
use host::model::Arch;

/// A file in the temp dir, removed when the test is done with it.
struct TempFile(PathBuf);

impl std::ops::Deref for TempFile {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp_file(name: &str, bytes: &[u8]) -> TempFile {
    let p = std::env::temp_dir().join(format!("cpu-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    TempFile(p)
}

fn args(model: &str, prompt: &str) -> Args {
    Args {
        model: ModelArgs {
            model: Some(model.into()),
            device: Device::Cpu,
            ctx: 64,
            threads: 1,
            exact: false,
        },
        prompt: prompt.into(),
        chat: false,
        system: None,
        n_predict: 4,
        stop: Vec::new(),
        sample: SampleArgs {
            temp: 0.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            seed: 0,
        },
        json: true,
    }
}

fn err_of(a: Args) -> String {
    let e = host::cli::run::run(a).expect_err("should fail").to_string();
    assert!(!e.contains('\n'), "not one line: {e:?}");
    e
}

#[test]
fn missing_and_unreadable_models_are_named() {
    let e = err_of(args("/nonexistent/dir/model.gguf", "hi"));
    assert!(
        e.contains("/nonexistent/dir/model.gguf") && e.contains("no such file"),
        "{e}"
    );
    let junk = temp_file("junk.gguf", b"this is not a gguf file at all");
    let e = err_of(args(junk.to_str().unwrap(), "hi"));
    assert!(
        e.to_lowercase().contains("magic") || e.contains("GGUF"),
        "{e}"
    );
}

#[test]
fn unsupported_architecture_is_refused() {
    let (mut w, data) = build(&TinySpec::new(Arch::Llama, GgmlType::Q8_0));
    w.set("general.architecture", Value::String("mamba".into()));
    let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
    let p = temp_file("mamba.gguf", &w.to_bytes(&refs));
    let e = err_of(args(p.to_str().unwrap(), "hi"));
    assert!(e.contains("mamba") && e.contains("not supported"), "{e}");
}

#[test]
fn invalid_sampling_values_fail_before_the_model_loads() {
    for (f, what) in [
        (
            (|a: &mut Args| a.sample.temp = -1.0) as fn(&mut Args),
            "temperature",
        ),
        (|a: &mut Args| a.sample.top_p = 0.0, "top-p"),
        (|a: &mut Args| a.sample.min_p = 2.0, "min-p"),
        (
            |a: &mut Args| a.sample.repeat_penalty = 0.0,
            "repeat penalty",
        ),
    ] {
        // The model path does not exist: the sampling error must come first.
        let mut a = args("/nonexistent/model.gguf", "hi");
        f(&mut a);
        let e = err_of(a);
        assert!(e.contains(what), "{e}");
    }
}

#[test]
fn a_prompt_longer_than_the_context_is_refused() {
    let p = temp_file(
        "tiny.gguf",
        &build_bytes(&TinySpec::new(Arch::Qwen2, GgmlType::Q8_0)),
    );
    let mut a = args(p.to_str().unwrap(), &"the cat sat on the mat. ".repeat(20));
    a.model.ctx = 16;
    let e = err_of(a);
    assert!(e.contains("context holds 16"), "{e}");
    // And a context beyond what the model was trained for.
    let mut a = args(p.to_str().unwrap(), "hi");
    a.model.ctx = 100_000;
    let e = err_of(a);
    assert!(e.contains("training context"), "{e}");
    // The same file runs fine with sane settings.
    host::cli::run::run(args(p.to_str().unwrap(), "the cat")).unwrap();
}

#[test]
fn cuda_without_a_driver_is_a_clear_error() {
    if host::cuda::device::driver_present() {
        eprintln!("a CUDA driver is present; the no-driver message cannot be checked here");
        return;
    }
    let p = temp_file(
        "tiny2.gguf",
        &build_bytes(&TinySpec::new(Arch::Llama, GgmlType::Q4_0)),
    );
    let mut a = args(p.to_str().unwrap(), "hi");
    a.model.device = Device::Cuda;
    let e = err_of(a);
    assert!(e.contains("CUDA"), "{e}");
    // auto falls back to the CPU and runs.
    let mut a = args(p.to_str().unwrap(), "hi");
    a.model.device = Device::Auto;
    host::cli::run::run(a).unwrap();
}
