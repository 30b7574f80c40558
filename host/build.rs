//! Compiles `kernels-gpu` to PTX with upstream rustc's nvptx64 backend and embeds it in the host.
//!
//! Two modules are built: `sm_90` (Hopper, the tuned target) and `sm_80` (the portable baseline the
//! driver JIT-compiles for any newer card). See docs/TOOLCHAIN.md for why each flag is there.
use std::{env, path::PathBuf, process::Command};

use kernels_gpu::shapes;

const ARCHES: [&str; 2] = ["sm_90", "sm_80"];

/// Launch bounds for ptxas (rustc has no attribute for them): kernel-name prefix → (`.maxntid`
/// threads per block, `.minnctapersm` blocks per SM), the threads from the launch geometry the
/// launchers use (`kernels_gpu::shapes`). The second caps the registers so that many blocks fit
/// on an SM: `matvec_swiglu_*` launches ⌈4864 / 4⌉ = 1,216 blocks of 128 threads for the qwen
/// FFN, which take two waves on an H100's 132 SMs at 8 blocks per SM (64 registers) and one at 10
/// (≤ 48); `swiglu_a8_*` launches 152 blocks of 512 threads, one wave at 2 per SM (≤ 64
/// registers); `matvec_attn_*` launches a block per row (896 for qwen), one wave at 7 per SM (≤ 72
/// registers; its combine of 4 splits' loads took 108 uncapped); `matvec_qkv_*` launches a block
/// per row (1,152 for qwen), one wave at 9 per SM (≤ 56 registers): the two variants that took
/// 60 uncapped (8 per SM, so a second wave of 96 blocks) are capped, the others already fit 9
/// (PERF.md change 43); `matvec_q8p` runs
/// `Q8P_BLOCKS_PER_SM` = 2 blocks of 256 threads per SM, its launcher's grid (≤ 128 registers; its
/// two steps of weights in registers took 153 uncapped).
const LAUNCH_BOUNDS: &[(&str, usize, usize)] = &[
    ("matvec_swiglu_", 32 * shapes::MATVEC_ROWS_PER_BLOCK, 10),
    ("swiglu_a8_", 32 * shapes::SWIGLU_A8_WARPS, 2),
    ("matvec_attn_", 32 * shapes::MATVEC_KWARP_WARPS, 7),
    ("matvec_qkv_q5_0_q5_0", 32 * shapes::MATVEC_KWARP_WARPS, 9),
    ("matvec_qkv_q5_1_q5_1", 32 * shapes::MATVEC_KWARP_WARPS, 9),
    (
        "matvec_q8p",
        32 * shapes::Q8P_WARPS,
        shapes::Q8P_BLOCKS_PER_SM,
    ),
];

/// `ptx` with the [`LAUNCH_BOUNDS`] directives inserted after the parameter list of each matching
/// `.entry`.
fn with_launch_bounds(ptx: &str) -> String {
    let mut out = String::with_capacity(ptx.len() + 1024);
    let mut pending: Option<(usize, usize)> = None;
    for line in ptx.lines() {
        out.push_str(line);
        out.push('\n');
        if let Some(name) = line.strip_prefix(".visible .entry ") {
            let name = name.trim_end_matches('(');
            pending = LAUNCH_BOUNDS
                .iter()
                .find(|(prefix, _, _)| name.starts_with(prefix))
                .map(|&(_, t, b)| (t, b));
        } else if line == ")"
            && let Some((threads, blocks)) = pending.take()
        {
            out.push_str(&format!(
                ".maxntid {threads}, 1, 1\n.minnctapersm {blocks}\n"
            ));
        }
    }
    out
}

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
        std::fs::write(
            out.join(format!("kernels_{arch}.ptx")),
            with_launch_bounds(&text),
        )
        .unwrap();
    }
}
