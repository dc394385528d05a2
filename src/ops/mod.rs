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
/// The product of `dims`, saturating at `usize::MAX`: the accessors of a shape built as a
/// literal answer without overflowing (only a validated shape's products are its lengths).
pub(crate) fn sat_len(dims: &[usize]) -> usize {
    dims.iter().fold(1usize, |a, &d| a.saturating_mul(d))
}

pub(crate) fn checked_len(op: &'static str, dims: &[usize]) -> Result<usize> {
    if dims.contains(&0) {
        return Err(LowbitError::invalid_shape(op, dims, "zero-sized dimension"));
    }
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i32::MAX as usize)
        .ok_or_else(|| LowbitError::invalid_shape(op, dims, "more than i32::MAX elements"))
}

/// Checks i32 activation codes against `format`'s range (±qmax, or 0..=255 for uint8pos; the
/// float path has no codes and passes): they go into 8-bit lanes. The host-slice
/// [`crate::Backend`] API checks them on every backend; the first bad element is the error.
pub fn check_activation_codes(
    op: &'static str,
    codes: &[i32],
    format: crate::config::LowBitActivationFormat,
) -> Result<()> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let Some(q) = format.qmax() else {
        return Ok(());
    };
    let q = q as i32;
    let (lo, hi) = if format.is_signed() { (-q, q) } else { (0, q) };
    let bad = codes
        .par_chunks(CHUNK)
        .position_first(|c| !c.iter().fold(true, |ok, v| ok & (lo..=hi).contains(v)))
        .and_then(|ci| {
            let c = &codes[ci * CHUNK..];
            c.iter()
                .position(|v| !(lo..=hi).contains(v))
                .map(|i| i + ci * CHUNK)
        });
    match bad {
        None => Ok(()),
        Some(i) => Err(LowbitError::InvalidArgument {
            op,
            what: "activation codes",
            reason: format!(
                "element {i} is {}, outside [{lo}, {hi}] of {}",
                codes[i],
                format.as_str()
            ),
        }),
    }
}

/// Checks prepacked signed i8x4 activations, rows of `k` elements in `ceil(k/4)` words: every
/// lane within ±`qmax` (the format's code range, as codes input is checked) and every padding
/// lane past `k` zero, as the crate's packers and `quantize_pack_i8x4` write them. The kernels
/// take words as they are (a nonzero padding lane would meet a real weight where L < Lart, a
/// lane past qmax could overflow the i32 accumulator), so the host-slice
/// [`crate::Backend`] API checks them on every backend; the first bad lane is the error.
pub fn check_packed_activations(
    op: &'static str,
    words: &[u32],
    k: usize,
    qmax: u32,
) -> Result<()> {
    use rayon::prelude::*;
    let kw = k.div_ceil(4);
    if kw == 0 {
        return Ok(());
    }
    let q = qmax.min(127) as i32;
    let used_last = k - 4 * (kw - 1);
    // (lane index in the row, lane value) of a row's first bad lane.
    let bad = |row: &[u32]| {
        row.iter().enumerate().find_map(|(w, &word)| {
            let used = if w + 1 == kw { used_last } else { 4 };
            (0..4).find_map(|j| {
                let lane = i32::from((word >> (8 * j)) as u8 as i8);
                let ok = if j < used { lane.abs() <= q } else { lane == 0 };
                (!ok).then_some((4 * w + j, lane))
            })
        })
    };
    match words
        .par_chunks(kw)
        .enumerate()
        .find_map_first(|(r, row)| bad(row).map(|b| (r, b)))
    {
        None => Ok(()),
        Some((r, (e, lane))) => Err(LowbitError::InvalidArgument {
            op,
            what: "packed activation words",
            reason: if e < k {
                format!("row {r}, element {e} is {lane}, outside ±{q}")
            } else {
                format!("row {r}, padding lane {e} (past K = {k}) is {lane}, must be 0")
            },
        }),
    }
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

impl Epilogue {
    /// This epilogue on one f32 value, as every backend applies it: [`relu`] if asked for,
    /// then one rounding to the output type (widened back to f32).
    #[inline(always)]
    pub fn apply(self, v: f32) -> f32 {
        let v = if self.relu { relu(v) } else { v };
        match self.dtype {
            OutputDType::F32 => v,
            OutputDType::F16 => half::f16::from_f32(v).to_f32(),
            OutputDType::Bf16 => half::bf16::from_f32(v).to_f32(),
        }
    }
}

/// ReLU as every backend computes it: `v` if `v > 0`, else +0.0, so -0.0 and NaN give +0.0
/// (a max with 0 would leave the sign of a zero to the hardware).
#[inline(always)]
pub fn relu(v: f32) -> f32 {
    if v > 0.0 { v } else { 0.0 }
}

/// `(acc as f32 · w_scale) · a_scale`, in that order, on every backend.
#[inline]
pub fn dequantize_acc(acc: i32, w_scale: f32, a_scale: f32) -> f32 {
    (acc as f32 * w_scale) * a_scale
}
