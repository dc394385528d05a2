//! Op descriptors: shapes, lengths and checks shared by every backend (one stem per op).
//! Every check here runs before anything is allocated or launched.

pub mod decoder_tail;
pub mod lowrank;
pub mod quantize;
pub mod rho;

pub use decoder_tail::DecoderTailShape;
pub use lowrank::LowrankShape;

use crate::error::{LowbitError, Result};

/// Product of dims with overflow and zero checks.
pub(crate) fn checked_len(op: &'static str, dims: &[usize]) -> Result<usize> {
    if dims.contains(&0) {
        return Err(LowbitError::invalid_shape(op, dims, "zero-sized dimension"));
    }
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i32::MAX as usize)
        .ok_or_else(|| LowbitError::invalid_shape(op, dims, "more than i32::MAX elements"))
}

/// Where the activation scale of a quantized op comes from (the seed's "host scale" and
/// "device scale" variants).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScaleSource {
    /// Passed by value as a kernel parameter (host scale); finite and > 0.
    Param(f32),
    /// Read by the kernel from a one-element device buffer holding this value (device scale
    /// produced elsewhere, e.g. by a cached reduction); finite and > 0.
    Buffer(f32),
    /// Computed on the device by the absmean reduction over the f32 input (f32 input only).
    Compute,
}

impl ScaleSource {
    /// The given value, if any, after checking it is finite and > 0.
    pub fn given(self, op: &'static str) -> crate::error::Result<Option<f32>> {
        match self {
            Self::Param(s) | Self::Buffer(s) => {
                crate::quant::check_scale(op, "activation scale", s).map(|_| Some(s))
            }
            Self::Compute => Ok(None),
        }
    }
}

/// Activation input of a projection kernel (the seed's three input variants).
#[derive(Clone, Copy, Debug)]
pub enum ActInput<'a> {
    /// i32 codes, one per element, `[rows, K]`.
    Codes(&'a [i32]),
    /// Prepacked signed i8x4 words, `[rows, ceil(K/4)]` (int8/int4 only).
    Packed(&'a [u32]),
    /// f32 values, quantized inside the kernel ("fused from f32").
    F32(&'a [f32]),
}

/// A projection result downloaded to the host, with the activation scale that was used.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectionOutput {
    /// Output values; f16/bf16 epilogues are widened back to f32 exactly.
    pub values: Vec<f32>,
    /// Activation scale the output was dequantized with (given or computed); 1.0 on the float
    /// path.
    pub a_scale: f32,
}

/// Output element type of the projection kernels' epilogue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OutputDType {
    /// 32-bit float (the default).
    #[default]
    F32,
    /// IEEE half precision, rounded to nearest even from the f32 result.
    F16,
    /// bfloat16, rounded to nearest even from the f32 result.
    Bf16,
}

/// Epilogue applied after `(acc·w_scale)·a_scale`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Epilogue {
    /// Element type the kernel writes (default f32).
    pub dtype: OutputDType,
    /// BDH's `relu(x @ encoder)`, fused.
    pub relu: bool,
}

/// `(acc as f32 · w_scale) · a_scale`, in that order, on every backend.
#[inline]
pub fn dequantize_acc(acc: i32, w_scale: f32, a_scale: f32) -> f32 {
    (acc as f32 * w_scale) * a_scale
}
