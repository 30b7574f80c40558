//! `host bench` on a tiny model file, CPU: the llama-bench-shaped table has one row per test and
//! depth, every cell parses, the time to first token and memory lines follow; the JSON form
//! carries the same tests; depth beyond the context is refused before anything runs.

use std::collections::BTreeSet;
use std::path::PathBuf;

use fixtures::tiny::{TinySpec, build_bytes};
use host::cli::bench::{Args, run_to};
use host::cli::run::Device;
use host::gguf::GgmlType;
use host::model::Arch;

/// A file in the temp dir, removed when the test is done with it.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tiny_model(name: &str) -> TempFile {
    let p = std::env::temp_dir().join(format!("cpu-bench-{}-{name}", std::process::id()));
    std::fs::write(&p, build_bytes(&TinySpec::new(Arch::Llama, GgmlType::Q8_0))).unwrap();
    TempFile(p)
}

fn args(model: &TempFile, p: &[usize], n: &[usize], d: &[usize]) -> Args {
    Args {
        model: Some(model.0.to_str().unwrap().into()),
        device: Device::Cpu,
        threads: 1,
        exact: false,
        n_prompt: p.to_vec(),
        n_gen: n.to_vec(),
        depth: d.to_vec(),
        reps: 2,
        ctx: 0,
        no_fuse: false,
        lm_head_f16: false,
        ffn_f32: false,
        no_pdl: false,
        no_prefill_mma: false,
        sync_steps: false,
        sampled: false,
        json: false,
    }
}

fn output(a: Args) -> String {
    let mut out = Vec::new();
    run_to(a, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// `"12.34 ± 0.56"` (optionally followed by a unit) as (mean, sd).
fn mean_sd(cell: &str) -> (f64, f64) {
    let (m, rest) = cell.split_once(" ± ").unwrap_or_else(|| panic!("{cell:?}"));
    let sd = rest.split_whitespace().next().unwrap();
    (m.trim().parse().unwrap(), sd.parse().unwrap())
}

fn cells(line: &str) -> Vec<String> {
    let inner = line
        .trim()
        .strip_prefix('|')
        .unwrap()
        .strip_suffix('|')
        .unwrap();
    inner.split('|').map(|c| c.trim().to_string()).collect()
}

#[test]
fn table_has_a_parsable_row_per_test_and_depth() {
    let m = tiny_model("table.gguf");
    let text = output(args(&m, &[8, 12], &[4], &[0, 20]));
    let lines: Vec<&str> = text.lines().collect();

    let head = cells(lines[0]);
    assert_eq!(
        head,
        [
            "model", "size", "params", "backend", "threads", "test", "t/s"
        ],
        "{text}"
    );
    let sep = cells(lines[1]);
    assert!(
        sep.iter()
            .all(|c| c.chars().all(|ch| ch == '-' || ch == ':')),
        "{text}"
    );
    let col = |name: &str| head.iter().position(|h| h == name).unwrap();

    let rows: Vec<Vec<String>> = lines[2..]
        .iter()
        .take_while(|l| l.starts_with('|'))
        .map(|l| cells(l))
        .collect();
    let tests: BTreeSet<&str> = rows.iter().map(|r| r[col("test")].as_str()).collect();
    let want: BTreeSet<&str> =
        ["pp8", "pp12", "tg4", "pp8 @ d20", "pp12 @ d20", "tg4 @ d20"].into();
    assert_eq!(tests, want, "{text}");
    assert_eq!(rows.len(), want.len(), "{text}");
    for r in &rows {
        assert_eq!(r.len(), head.len(), "{r:?}");
        assert!(r[col("model")].starts_with("llama "), "{r:?}");
        assert!(r[col("size")].ends_with(" MiB"), "{r:?}");
        assert!(r[col("params")].ends_with(" M"), "{r:?}");
        assert_eq!(r[col("backend")], "CPU");
        assert_eq!(r[col("threads")], "1");
        let (mean, sd) = mean_sd(&r[col("t/s")]);
        assert!(mean.is_finite() && mean > 0.0 && sd >= 0.0, "{r:?}");
    }

    // After the table: the time to first token per prompt length and depth, then memory.
    let after: Vec<&str> = lines[2 + rows.len()..]
        .iter()
        .copied()
        .filter(|l| !l.is_empty())
        .collect();
    let ttft: BTreeSet<&str> = after
        .iter()
        .filter_map(|l| l.strip_prefix("time to first token, "))
        .map(|l| {
            let (test, value) = l.split_once(": ").unwrap();
            assert!(value.ends_with(" ms"), "{l}");
            let (mean, sd) = mean_sd(value);
            assert!(mean.is_finite() && mean > 0.0 && sd >= 0.0, "{l}");
            test
        })
        .collect();
    assert_eq!(
        ttft,
        ["pp8", "pp12", "pp8 @ d20", "pp12 @ d20"].into(),
        "{text}"
    );
    let mem = after.last().unwrap();
    let rss = mem
        .strip_prefix("peak RSS: ")
        .and_then(|r| r.split_once(" MiB"))
        .map(|(v, _)| v.parse::<f64>().unwrap())
        .unwrap_or_else(|| panic!("{mem}"));
    assert!(rss > 0.0, "{mem}");
    // The cache was sized for the deepest, longest test.
    assert!(mem.contains("KV cache 32 positions"), "{mem}");
}

#[test]
fn json_carries_every_test_with_its_depth() {
    let m = tiny_model("json.gguf");
    let mut a = args(&m, &[6], &[3, 5], &[0, 9]);
    a.json = true;
    a.reps = 3;
    let v: serde_json::Value = serde_json::from_str(&output(a)).unwrap();
    assert_eq!(v["n_ctx"], 15); // depth 9 + the longest test, 6
    assert_eq!(v["reps"], 3);
    let tests = v["tests"].as_array().unwrap();
    let got: Vec<(String, u64, u64, u64)> = tests
        .iter()
        .map(|t| {
            assert_eq!(t["samples"].as_array().unwrap().len(), 3, "{t}");
            assert!(t["tok_per_sec"].as_f64().unwrap() > 0.0, "{t}");
            (
                t["test"].as_str().unwrap().to_string(),
                t["n_prompt"].as_u64().unwrap(),
                t["n_gen"].as_u64().unwrap(),
                t["n_depth"].as_u64().unwrap(),
            )
        })
        .collect();
    let want = [
        ("pp6", 6, 0, 0),
        ("tg3", 0, 3, 0),
        ("tg5", 0, 5, 0),
        ("pp6 @ d9", 6, 0, 9),
        ("tg3 @ d9", 0, 3, 9),
        ("tg5 @ d9", 0, 5, 9),
    ]
    .map(|(t, p, n, d)| (t.to_string(), p, n, d));
    assert_eq!(got, want);
    let ttft = v["time_to_first_token"].as_array().unwrap();
    assert_eq!(ttft.len(), 2);
    assert!(ttft.iter().all(|t| t["ms"].as_f64().unwrap() > 0.0));
    assert!(v["memory"]["peak_rss_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn depth_beyond_the_context_is_refused() {
    let m = tiny_model("depth.gguf");
    let err = |a: Args| {
        let mut out = Vec::new();
        let e = run_to(a, &mut out).expect_err("should fail").to_string();
        assert!(out.is_empty(), "printed before refusing");
        assert!(!e.contains('\n'), "{e}");
        e
    };
    let mut a = args(&m, &[8], &[4], &[40]);
    a.ctx = 32;
    let e = err(a);
    assert!(e.contains("depth 40") && e.contains("--ctx is 32"), "{e}");
    // The tiny model was trained for 512 positions.
    let e = err(args(&m, &[8], &[4], &[0, 510]));
    assert!(e.contains("training context 512"), "{e}");
    // An explicit --ctx that fits is used as given.
    let mut a = args(&m, &[8], &[4], &[20]);
    a.ctx = 64;
    a.json = true;
    let v: serde_json::Value = serde_json::from_str(&output(a)).unwrap();
    assert_eq!(v["n_ctx"], 64);
}
