//! `host inspect MODEL [--json]`: metadata (big arrays and long strings summarized), the derived
//! config, the tensor table and the weight mapping. If the model is not one this engine can run,
//! the report still shows the file and says why.

use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};

use super::CliResult;
use crate::gguf::{Array, Gguf, Value};
use crate::model::{Config, Weights};

#[derive(clap::Args)]
pub struct Args {
    /// Path to a GGUF file.
    pub model: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Longest string shown whole; longer ones are cut and their length given.
const MAX_STR: usize = 120;
/// Array elements shown before the rest is summarized.
const MAX_ELEMS: usize = 6;

pub fn run(args: Args) -> CliResult {
    let g = Gguf::open(&args.model)?;
    let report = report(&g, &args.model);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(())
}

/// The whole report as JSON (the text form is rendered from it).
pub fn report(g: &Gguf, path: &Path) -> Json {
    let h = &g.header;
    let metadata: serde_json::Map<String, Json> = h
        .metadata
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                json!({"type": type_name(v), "value": summarize(v)}),
            )
        })
        .collect();
    let tensors: Vec<Json> = h
        .tensors
        .iter()
        .map(|t| {
            json!({"name": t.name, "type": t.ggml_type.name(), "shape": t.dims, "bytes": t.n_bytes, "offset": t.offset})
        })
        .collect();
    let total: u64 = h.tensors.iter().map(|t| t.n_bytes).sum();
    let (config, mapping) = match Config::from_header(h) {
        Err(e) => (json!({"error": e.to_string()}), Json::Null),
        Ok(cfg) => {
            let mapping = match Weights::from_header(h, &cfg) {
                Err(e) => json!({"error": e.to_string()}),
                Ok(w) => json!({
                    "output_tied": w.output_tied,
                    "roles": w.roles().iter().map(|(role, t)| json!([role, t.name])).collect::<Vec<_>>(),
                }),
            };
            (
                serde_json::to_value(&cfg).expect("config serializes"),
                mapping,
            )
        }
    };
    json!({
        "file": {
            "name": path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "bytes": g.bytes().len(),
            "version": h.version,
            "alignment": h.alignment,
            "data_start": h.data_start,
        },
        "metadata": metadata,
        "config": config,
        "tensors": {"count": h.tensors.len(), "bytes": total, "list": tensors},
        "mapping": mapping,
    })
}

fn type_name(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("array<{}>[{}]", a.elem_type(), a.len()),
        v => v.value_type().to_string(),
    }
}

fn summarize(v: &Value) -> Json {
    match v {
        Value::String(s) => short_str(s),
        Value::Array(a) => summarize_array(a),
        Value::F32(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Bool(b) => json!(b),
        v => match v.as_u64() {
            Some(n) => json!(n),
            None => json!(v.as_f64()),
        },
    }
}

fn short_str(s: &str) -> Json {
    if s.chars().count() <= MAX_STR {
        json!(s)
    } else {
        let head: String = s.chars().take(MAX_STR).collect();
        json!(format!("{head}… ({} chars)", s.chars().count()))
    }
}

fn summarize_array(a: &Array) -> Json {
    fn head<T: serde::Serialize>(v: &[T], n: usize) -> Json {
        let mut items: Vec<Json> = v.iter().take(MAX_ELEMS).map(|x| json!(x)).collect();
        if n > MAX_ELEMS {
            items.push(json!(format!("… {} more", n - MAX_ELEMS)));
        }
        Json::Array(items)
    }
    let n = a.len();
    match a {
        Array::U8(v) => head(v, n),
        Array::I8(v) => head(v, n),
        Array::U16(v) => head(v, n),
        Array::I16(v) => head(v, n),
        Array::U32(v) => head(v, n),
        Array::I32(v) => head(v, n),
        Array::F32(v) => head(v, n),
        Array::Bool(v) => head(v, n),
        Array::U64(v) => head(v, n),
        Array::I64(v) => head(v, n),
        Array::F64(v) => head(v, n),
        Array::String(v) => head(&v.iter().map(|s| short_str(s)).collect::<Vec<_>>(), n),
        Array::Array(v) => head(&v.iter().map(summarize_array).collect::<Vec<_>>(), n),
    }
}

/// Human-readable form of [`report`].
pub fn render_text(r: &Json) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let f = &r["file"];
    let _ = writeln!(
        o,
        "file      {}  {} bytes  GGUF v{}  alignment {}  data at {}",
        f["name"].as_str().unwrap_or("?"),
        f["bytes"],
        f["version"],
        f["alignment"],
        f["data_start"]
    );
    let md = r["metadata"].as_object().expect("metadata is an object");
    let _ = writeln!(o, "\nmetadata ({} keys)", md.len());
    let width = md.keys().map(|k| k.len()).max().unwrap_or(0);
    for (k, v) in md {
        let _ = writeln!(
            o,
            "  {k:width$}  {:<22} {}",
            v["type"].as_str().unwrap_or(""),
            v["value"]
        );
    }
    let _ = writeln!(o, "\nconfig");
    match r["config"].as_object() {
        Some(c) => {
            for (k, v) in c {
                let _ = writeln!(o, "  {k:12} {v}");
            }
        }
        None => {
            let _ = writeln!(o, "  {}", r["config"]);
        }
    }
    let t = &r["tensors"];
    let _ = writeln!(o, "\ntensors ({}, {} bytes)", t["count"], t["bytes"]);
    let _ = writeln!(
        o,
        "  {:32} {:6} {:>14} {:>12}",
        "name", "type", "shape", "bytes"
    );
    for x in t["list"].as_array().into_iter().flatten() {
        let shape: Vec<String> = x["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.to_string())
            .collect();
        let _ = writeln!(
            o,
            "  {:32} {:6} {:>14} {:>12}",
            x["name"].as_str().unwrap(),
            x["type"].as_str().unwrap(),
            shape.join("x"),
            x["bytes"]
        );
    }
    let _ = writeln!(o, "\nmapping");
    match r["mapping"]["roles"].as_array() {
        Some(roles) => {
            for role in roles {
                let _ = writeln!(
                    o,
                    "  {:40} {}",
                    role[0].as_str().unwrap(),
                    role[1].as_str().unwrap()
                );
            }
        }
        None => {
            let _ = writeln!(o, "  {}", r["mapping"]);
        }
    }
    o
}
