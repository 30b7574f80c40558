//! Finds `ptxas` (CUDA's PTX assembler) for the PTX validity test: `$PTXAS`, then `PATH`, then the
//! `nvidia-cuda-nvcc` Python wheel. Without it the test is compiled as ignored (reported as such).
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_ptxas)");
    println!("cargo::rerun-if-env-changed=PTXAS");
    println!("cargo::rerun-if-env-changed=PATH");
    if let Some(p) = find_ptxas() {
        println!("cargo::rustc-cfg=has_ptxas");
        println!("cargo::rustc-env=PTXAS_PATH={}", p.display());
        println!("cargo::rerun-if-changed={}", p.display());
    }
}

fn works(p: &PathBuf) -> bool {
    Command::new(p)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn find_ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PTXAS").map(PathBuf::from) {
        return works(&p).then_some(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("ptxas");
            if works(&p) {
                return Some(p);
            }
        }
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .ok()?;
    let site = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    ["cu13", "cu12"]
        .iter()
        .map(|v| site.join("nvidia").join(v).join("bin/ptxas"))
        .find(works)
}
