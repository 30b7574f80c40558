//! The CPU backend: the reference forward pass every GPU kernel is checked against, and the path
//! that runs on any machine.
//!
//! - [`ops`]: the reference ops (`rms_norm`, `rope`, `swiglu`, `softmax`, `add`, `attention`),
//!   re-exported here so they read as `cpu::rms_norm`.

pub mod ops;

pub use ops::{add, attention, rms_norm, rope, rope_angle, softmax, swiglu};
