//! Activation quantize (+ pack to i8x4) descriptors.

use super::{checked_len, sat_len};
use crate::config::LowBitActivationFormat;
use crate::error::{LowbitError, Result};

/// Op name used in this op's error messages.
pub const OP: &str = "quantize";

/// `rows × k` activations quantized per tensor; packed output is `rows × ceil(k/4)` words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QuantizeShape {
    /// Rows; each is packed on its own (its last word zero-padded).
    pub rows: usize,
    /// Elements per row, the packed axis.
    pub k: usize,
}

impl QuantizeShape {
    /// Checks that neither dim is zero and that `rows·k` fits `i32::MAX`.
    pub fn new(rows: usize, k: usize) -> Result<Self> {
        checked_len(OP, &[rows, k])?;
        Ok(Self { rows, k })
    }
    /// Rows are every axis but the last of a rank-4 tensor.
    pub fn from_shape4(shape: [usize; 4]) -> Result<Self> {
        checked_len(OP, &shape)?;
        Self::new(shape[0] * shape[1] * shape[2], shape[3])
    }
    /// Elements `rows·k`.
    pub fn len(&self) -> usize {
        sat_len(&[self.rows, self.k])
    }
    /// Whether there are no elements (never true for a shape built by `new`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// i8x4 words of the packed output: `rows·ceil(k/4)`.
    pub fn words_len(&self) -> usize {
        sat_len(&[self.rows, self.k.div_ceil(4)])
    }
}

/// The quantized formats a signed i8x4 kernel accepts (int8, int4); uint8pos codes above 127
/// do not fit a signed lane and `Fp16` has no codes.
pub fn check_signed_packable(op: &'static str, format: LowBitActivationFormat) -> Result<u32> {
    match format {
        LowBitActivationFormat::Int8 | LowBitActivationFormat::Int4Exp => {
            Ok(format.qmax().unwrap_or(127))
        }
        LowBitActivationFormat::Uint8PosExp => Err(LowbitError::unsupported_format(
            op,
            format,
            "uint8pos codes above 127 do not fit a signed int8x4 lane",
        )),
        LowBitActivationFormat::Fp16 => Err(LowbitError::unsupported_format(
            op,
            format,
            "the float path has no codes to pack",
        )),
    }
}
