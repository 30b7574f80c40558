//! The PTX modules compiled from `kernels-gpu` by build.rs.

/// PTX for Hopper (sm_90).
pub const PTX_SM90: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels_sm_90.ptx"));
/// PTX for Ampere (sm_80): the portable baseline, JIT-compiled by the driver on newer cards.
pub const PTX_SM80: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels_sm_80.ptx"));

/// The PTX module to load on a device of compute capability `major.minor`, or `None` when the
/// card is older than the baseline.
pub fn ptx_for(major: i32, minor: i32) -> Option<&'static str> {
    match (major, minor) {
        (9.., _) => Some(PTX_SM90),
        (8, _) => Some(PTX_SM80),
        _ => None,
    }
}
