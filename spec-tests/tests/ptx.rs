//! The embedded PTX is valid: `ptxas` assembles both modules for their targets without errors, and
//! reports each kernel's registers and spills (printed; run with `--nocapture` to read them).
//! Without ptxas (pip package `nvidia-cuda-nvcc`) this test is ignored, not passed.

use host::kernels::{PTX_SM80, PTX_SM90};

#[test]
fn ptx_modules_are_whole_programs_for_their_targets() {
    for (ptx, arch) in [(PTX_SM90, "sm_90"), (PTX_SM80, "sm_80")] {
        assert!(
            ptx.contains(&format!(".target {arch}")),
            "{arch}: wrong .target"
        );
        assert!(
            !ptx.contains(".extern .func"),
            "{arch}: calls into external functions"
        );
        assert!(
            ptx.contains(".entry axpy_f32"),
            "{arch}: smoke kernel missing"
        );
    }
}

#[test]
#[cfg_attr(
    not(has_ptxas),
    ignore = "ptxas not found: pip install nvidia-cuda-nvcc, or set PTXAS"
)]
fn ptxas_assembles_embedded_ptx() {
    let Some(ptxas) = option_env!("PTXAS_PATH") else {
        panic!("build.rs set has_ptxas without PTXAS_PATH");
    };
    let dir = std::env::temp_dir().join(format!("ptx-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (ptx, arch) in [(PTX_SM90, "sm_90"), (PTX_SM80, "sm_80")] {
        let src = dir.join(format!("kernels_{arch}.ptx"));
        std::fs::write(&src, ptx).unwrap();
        let out = std::process::Command::new(ptxas)
            .args(["-v", &format!("-arch={arch}"), "-o", "/dev/null"])
            .arg(&src)
            .output()
            .expect("run ptxas");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "ptxas rejected the {arch} module:\n{log}"
        );
        let mut kernels = 0;
        let mut current = String::new();
        for line in log.lines() {
            if let Some(rest) = line.split("Compiling entry function '").nth(1) {
                current = rest.split('\'').next().unwrap_or("").to_string();
                kernels += 1;
            } else if line.contains("spill stores") || line.contains("Used ") {
                println!(
                    "{arch} {current}: {}",
                    line.trim_start_matches("ptxas info    :").trim()
                );
            }
        }
        assert!(kernels > 0, "ptxas compiled no kernels for {arch}:\n{log}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
