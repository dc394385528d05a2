//! Rho state block compression: blocks of 32 over the flattened `[B, H, N, D]` tensor.

use super::{checked_len, sat_len};
use crate::error::{LowbitError, Result};

/// Op name used in this op's error messages.
pub const OP: &str = "rho";
/// Elements per block (one scale each).
pub const RHO_BLOCK_SIZE: usize = 32;
/// i8x4 words per int8 block on device.
pub const RHO_WORDS_PER_BLOCK: usize = RHO_BLOCK_SIZE / 4;

/// Validated rho state shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RhoShape {
    /// `[B, H, N, D]` of the uncompressed state; blocks run over it flattened.
    pub logical_shape: [usize; 4],
}

impl RhoShape {
    /// Checks that no dim is zero and that the element count fits `i32::MAX`.
    pub fn new(logical_shape: [usize; 4]) -> Result<Self> {
        checked_len(OP, &logical_shape)?;
        Ok(Self { logical_shape })
    }
    /// Elements of the state.
    pub fn len(&self) -> usize {
        sat_len(&self.logical_shape)
    }
    /// Whether there are no elements (never true for a shape built by `new`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Blocks of [`RHO_BLOCK_SIZE`] elements, the last one possibly partial; one scale each.
    pub fn blocks(&self) -> usize {
        self.len().div_ceil(RHO_BLOCK_SIZE)
    }
    /// Words of the device int8 layout: 8 per block, the last block zero-padded.
    pub fn int8_words(&self) -> usize {
        self.blocks().saturating_mul(RHO_WORDS_PER_BLOCK)
    }

    /// Re-checks the shape (it may have been built as a literal) and that an int8 device-layout
    /// state has `int8_words()` words and one scale per block.
    pub fn check_int8_state(&self, op: &'static str, words: usize, scales: usize) -> Result<()> {
        Self::new(self.logical_shape)?;
        if words != self.int8_words() {
            return Err(LowbitError::len(op, "rho words", self.int8_words(), words));
        }
        if scales != self.blocks() {
            return Err(LowbitError::len(op, "rho scales", self.blocks(), scales));
        }
        Ok(())
    }
}
