//! GPU kernels written in Rust, plus the GGUF block formats they share with the CPU path.
//!
//! On the host this crate is an ordinary `no_std` library: only [`quant`] (block layouts and their
//! decode functions) is compiled, and the CPU reference path calls it. For `nvptx64-nvidia-cuda`
//! `host/build.rs` compiles the same crate as a fat-LTO cdylib to PTX, and every `extern
//! "ptx-kernel"` function below becomes a kernel. One definition of each block format serves both.
#![no_std]
#![cfg_attr(
    target_arch = "nvptx64",
    feature(
        abi_ptx,
        stdarch_nvptx,
        asm_experimental_arch,
        core_intrinsics,
        gpu_intrinsics,
        gpu_launch_sized_workgroup_mem,
        core_float_math
    )
)]
#![cfg_attr(target_arch = "nvptx64", allow(internal_features))]

pub mod matvec_dot;
pub mod q8_act;
pub mod q8_planar;
pub mod quant;
pub mod shapes;
pub mod split;

/// A small deterministic generator for the host tests of the lane arithmetic (no_std: no crates).
#[cfg(test)]
mod test_rng {
    pub struct Lcg(pub u64);

    impl Lcg {
        pub fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        /// `N` random bytes.
        pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
            core::array::from_fn(|_| self.next() as u8)
        }
        /// A value in [-1, 1] in steps of 1e-3.
        pub fn f(&mut self) -> f32 {
            (self.next() % 2001) as f32 / 1000.0 - 1.0
        }
        /// An f16 in ±[2^-8, 2^-6): normal, so the comparisons of the tests are meaningful.
        pub fn small_f16(&mut self) -> [u8; 2] {
            let exp = 7 + self.next() % 2; // biased exponent 7..9
            let h = ((self.next() & 1) << 15) | (exp << 10) | (self.next() & 0x3ff);
            (h as u16).to_le_bytes()
        }
    }

    /// A block's bytes in a 16-byte aligned buffer (as on the device, where blocks are at least
    /// 2-byte aligned and Q4_K super-blocks 16-byte aligned).
    #[repr(C, align(16))]
    pub struct Aligned(pub [u8; 224]);

    impl Aligned {
        pub fn ptr(&self) -> *const u8 {
            self.0.as_ptr()
        }
    }

    /// A random block of type `B` (`N` bytes; the f16 fields at byte offsets `fix` made normal),
    /// copied into an aligned buffer, with its values from the block's own `dequantize`.
    pub fn random_block<const QK: usize, B: crate::quant::Block<QK>, const N: usize>(
        r: &mut Lcg,
        fix: &[usize],
    ) -> (Aligned, [f32; QK]) {
        let mut bytes: [u8; N] = r.bytes();
        for &o in fix {
            bytes[o..o + 2].copy_from_slice(&r.small_f16());
        }
        let mut buf = Aligned([0; 224]);
        buf.0[..N].copy_from_slice(&bytes);
        let mut vals = [0.0f32; QK];
        crate::quant::read_block::<QK, B>(&bytes)
            .unwrap()
            .dequantize(&mut vals);
        (buf, vals)
    }

    /// Checks a lane-arithmetic result `got` against `Σ w_i x_i` in f64: within 1e-5 of
    /// `Σ |w_i x_i|`.
    pub fn check_dot(w: &[f32], x: &[f32], got: f32) {
        let want: f64 = w.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum();
        let mag: f64 = w
            .iter()
            .zip(x)
            .map(|(&a, &b)| (a as f64 * b as f64).abs())
            .sum();
        assert!(
            (got as f64 - want).abs() <= 1e-5 * mag + 1e-30,
            "got {got}, want {want} (Σ|wx| {mag})"
        );
    }
}

#[cfg(target_arch = "nvptx64")]
pub mod attention;
#[cfg(target_arch = "nvptx64")]
pub mod attention_combine;
#[cfg(target_arch = "nvptx64")]
pub mod attention_mma;
#[cfg(target_arch = "nvptx64")]
pub mod dequant;
#[cfg(target_arch = "nvptx64")]
pub mod elementwise;
#[cfg(target_arch = "nvptx64")]
pub mod formats;
#[cfg(target_arch = "nvptx64")]
mod gpu;
#[cfg(target_arch = "nvptx64")]
pub mod kv_cache;
#[cfg(target_arch = "nvptx64")]
pub mod lm_head;
#[cfg(target_arch = "nvptx64")]
pub mod matvec;
#[cfg(target_arch = "nvptx64")]
pub mod matvec_a8;
#[cfg(target_arch = "nvptx64")]
pub mod norm;
#[cfg(target_arch = "nvptx64")]
pub mod rope;
#[cfg(target_arch = "nvptx64")]
pub mod sample;
#[cfg(target_arch = "nvptx64")]
pub mod smoke;
#[cfg(target_arch = "nvptx64")]
pub mod swiglu_a8;

#[cfg(target_arch = "nvptx64")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // SAFETY: `trap` aborts the kernel; no state is left half-written that anyone reads afterwards
    // (the launch reports an error to the host).
    unsafe { core::arch::nvptx::trap() }
}
