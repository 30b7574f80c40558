//! Compiles `kernels-gpu` to PTX with upstream rustc's nvptx64 backend and embeds it in the host.
//!
//! Two modules are built: `sm_90` (Hopper, the tuned target) and `sm_80` (the portable baseline the
//! driver JIT-compiles for any newer card). See docs/TOOLCHAIN.md for why each flag is there.
use std::{env, path::PathBuf, process::Command};

const ARCHES: [&str; 2] = ["sm_90", "sm_80"];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let kernels = manifest.join("../kernels-gpu");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", kernels.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        kernels.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        manifest.join("../Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        manifest.join("../rust-toolchain.toml").display()
    );

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for arch in ARCHES {
        // A target dir of its own per arch: the outer build holds the lock on the main one.
        let target_dir = out.join(format!("ptx-{arch}"));
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&kernels)
            .args([
                "rustc",
                "--profile",
                "ptx",
                "--target",
                "nvptx64-nvidia-cuda",
            ])
            .args([
                "-Zbuild-std=core",
                "--lib",
                "--crate-type",
                "cdylib",
                "--target-dir",
            ])
            .arg(&target_dir)
            .args(["--", "--emit=asm", "-Zno-link", "-C"])
            .arg(format!("target-cpu={arch}"));
        // Nothing of the outer build (its flags, wrappers such as clippy-driver, jobserver) leaks in.
        for (key, _) in env::vars() {
            let strip = (key.starts_with("CARGO_") && key != "CARGO_HOME")
                || matches!(
                    key.as_str(),
                    "RUSTC" | "RUSTDOC" | "RUSTFLAGS" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER"
                );
            if strip {
                cmd.env_remove(key);
            }
        }
        let status = cmd.status().unwrap_or_else(|e| {
            panic!("could not run `{cargo}` to build kernels-gpu for {arch}: {e}")
        });
        assert!(
            status.success(),
            "building kernels-gpu to PTX for {arch} failed (see the errors above; docs/TOOLCHAIN.md lists what the kernel build needs)"
        );
        let ptx = target_dir.join("nvptx64-nvidia-cuda/ptx/deps/kernels_gpu.s");
        let text = std::fs::read_to_string(&ptx)
            .unwrap_or_else(|e| panic!("PTX not produced at {}: {e}", ptx.display()));
        assert!(
            !text.contains(".extern .func"),
            "PTX for {arch} calls external functions: fat LTO did not inline core (check profile.ptx)"
        );
        std::fs::write(out.join(format!("kernels_{arch}.ptx")), text).unwrap();
    }
}
