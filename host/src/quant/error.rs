//! Errors of the quantization functions: every shape mismatch names the type and both sizes.

use super::{ActKind, Isa};
use crate::gguf::GgmlType;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    /// A row length that is not a whole number of blocks.
    #[error("{ty}: a row of {n} elements is not a whole number of {block_size}-element blocks")]
    PartialBlock {
        ty: GgmlType,
        n: usize,
        block_size: usize,
    },
    /// The bytes given do not hold exactly the elements asked for.
    #[error("{ty}: {n} elements take {expected} bytes, but {found} bytes were given")]
    ByteLength {
        ty: GgmlType,
        n: usize,
        expected: usize,
        found: usize,
    },
    /// An activation vector that is not a whole number of its blocks.
    #[error(
        "{kind:?} activations: {n} elements are not a whole number of {block_size}-element blocks"
    )]
    ActivationLength {
        kind: ActKind,
        n: usize,
        block_size: usize,
    },
    /// Activations prepared for another kind of weights.
    #[error("{ty} weights are dotted with {expected:?} activations, but {found:?} were given")]
    ActivationKind {
        ty: GgmlType,
        expected: ActKind,
        found: ActKind,
    },
    /// A dot-product implementation asked for by name that this CPU cannot run.
    #[error("the {0:?} dot products need CPU features this machine does not have")]
    IsaUnavailable(Isa),
    /// A vector or matrix whose length does not match the shape it goes with.
    #[error("{what}: expected {expected} elements, found {found}")]
    Length {
        what: &'static str,
        expected: usize,
        found: usize,
    },
}

impl QuantError {
    /// Checks that `src` holds exactly `n` elements of type `ty`.
    pub(crate) fn check_row(ty: GgmlType, n: usize, src: &[u8]) -> Result<(), QuantError> {
        let expected = ty.row_bytes(n).ok_or(QuantError::PartialBlock {
            ty,
            n,
            block_size: ty.block_size(),
        })?;
        if src.len() != expected {
            return Err(QuantError::ByteLength {
                ty,
                n,
                expected,
                found: src.len(),
            });
        }
        Ok(())
    }
}
