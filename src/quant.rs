//! Number formats of SPEC.md: activation and weight quantizers, the one rounding rule, and the
//! per-tensor scales. Everything here is the oracle the kernels are judged by.

use crate::config::{LowBitActivationFormat, LowBitWeightFormat};
use crate::error::{LowbitError, Result};

/// The seed's `QUANT_EPSILON`: the smallest scale any quantizer produces.
pub const EPS: f32 = 1.0e-8;

/// Rounds half away from zero (`f32::round`): the one rounding rule of every backend.
#[inline]
pub fn round_half_away(x: f32) -> f32 {
    x.round()
}

/// Returns an error naming the first NaN/Inf in `values`.
pub fn check_finite(op: &'static str, what: &'static str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(LowbitError::NonFinite {
            op,
            what,
            index,
            value: values[index],
        }),
    }
}

/// Checks that a caller-given scale is usable (finite, > 0).
pub fn check_scale(op: &'static str, what: &'static str, scale: f32) -> Result<()> {
    if scale.is_finite() && scale > 0.0 {
        Ok(())
    } else {
        Err(LowbitError::InvalidScale {
            op,
            what,
            value: scale,
        })
    }
}

/// Mean of `f(x)` over `values`, summed in f64 (the reference's summation; device reductions
/// use other orders and match within 1e-6 relative).
fn mean_of(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    let sum: f64 = values.iter().map(|&v| f64::from(f(v))).sum();
    (sum / values.len() as f64) as f32
}

/// `max(max(2·m, EPS)/qmax, EPS)`: the scale of an absmean quantizer with mean `m`.
#[inline]
pub fn absmean_scale(mean: f32, qmax: f32) -> f32 {
    ((2.0 * mean).max(EPS) / qmax).max(EPS)
}

/// Per-tensor activation scale of SPEC.md, or `None` for the float path.
///
/// int8/int4: `max(max(2·mean|x|, EPS)/qmax, EPS)`; uint8pos: the same over `max(x, 0)`.
pub fn activation_scale(values: &[f32], format: LowBitActivationFormat) -> Result<Option<f32>> {
    const OP: &str = "activation_scale";
    check_finite(OP, "activations", values)?;
    let Some(qmax) = format.qmax() else {
        return Ok(None);
    };
    let mean = match format {
        LowBitActivationFormat::Uint8PosExp => mean_of(values, |v| v.max(0.0)),
        _ => mean_of(values, f32::abs),
    };
    let scale = absmean_scale(mean, qmax as f32);
    check_scale(OP, "activation scale (2*mean overflows f32)", scale)?;
    Ok(Some(scale))
}

/// One activation code: `clamp(round(x/s), -q, q)`, or `clamp(round(max(x,0)/s), 0, 255)`.
/// For `Fp16` this returns 0 (there are no codes on the float path).
#[inline]
pub fn activation_code(x: f32, scale: f32, format: LowBitActivationFormat) -> i32 {
    match format {
        LowBitActivationFormat::Fp16 => 0,
        LowBitActivationFormat::Int8 => round_half_away(x / scale).clamp(-127.0, 127.0) as i32,
        LowBitActivationFormat::Int4Exp => round_half_away(x / scale).clamp(-7.0, 7.0) as i32,
        LowBitActivationFormat::Uint8PosExp => {
            round_half_away(x.max(0.0) / scale).clamp(0.0, 255.0) as i32
        }
    }
}

/// Activations after quantization: the float path keeps values, the others hold codes + scale.
#[derive(Clone, Debug, PartialEq)]
pub enum ActivationCodes {
    /// `Fp16` (float path): the f32 values, unquantized.
    Float(Vec<f32>),
    /// int8 / int4 codes in `[-qmax, qmax]`.
    Signed {
        /// One code per value.
        codes: Vec<i8>,
        /// Per-tensor scale: value ≈ code · scale.
        scale: f32,
    },
    /// uint8pos codes of `max(x, 0)`, in `[0, 255]`.
    Unsigned {
        /// One code per value.
        codes: Vec<u8>,
        /// Per-tensor scale: value ≈ code · scale.
        scale: f32,
    },
}

impl ActivationCodes {
    /// The codes widened to i32 (empty for the float path).
    pub fn codes_i32(&self) -> Vec<i32> {
        match self {
            Self::Float(_) => Vec::new(),
            Self::Signed { codes, .. } => codes.iter().map(|&c| i32::from(c)).collect(),
            Self::Unsigned { codes, .. } => codes.iter().map(|&c| i32::from(c)).collect(),
        }
    }

    /// The per-tensor scale, or `None` for the float path.
    pub fn scale(&self) -> Option<f32> {
        match self {
            Self::Float(_) => None,
            Self::Signed { scale, .. } | Self::Unsigned { scale, .. } => Some(*scale),
        }
    }

    /// Number of elements (values or codes).
    pub fn len(&self) -> usize {
        match self {
            Self::Float(v) => v.len(),
            Self::Signed { codes, .. } => codes.len(),
            Self::Unsigned { codes, .. } => codes.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Quantizes activations with their own per-tensor scale.
pub fn quantize_activations(
    values: &[f32],
    format: LowBitActivationFormat,
) -> Result<ActivationCodes> {
    match activation_scale(values, format)? {
        None => Ok(ActivationCodes::Float(values.to_vec())),
        Some(scale) => quantize_activations_with_scale(values, format, scale),
    }
}

/// Quantizes activations with a given scale (host-given, cached, or computed on a device).
pub fn quantize_activations_with_scale(
    values: &[f32],
    format: LowBitActivationFormat,
    scale: f32,
) -> Result<ActivationCodes> {
    const OP: &str = "quantize_activations";
    check_finite(OP, "activations", values)?;
    if format == LowBitActivationFormat::Fp16 {
        return Ok(ActivationCodes::Float(values.to_vec()));
    }
    check_scale(OP, "activation scale", scale)?;
    Ok(match format {
        LowBitActivationFormat::Uint8PosExp => ActivationCodes::Unsigned {
            codes: values
                .iter()
                .map(|&v| activation_code(v, scale, format) as u8)
                .collect(),
            scale,
        },
        _ => ActivationCodes::Signed {
            codes: values
                .iter()
                .map(|&v| activation_code(v, scale, format) as i8)
                .collect(),
            scale,
        },
    })
}

/// Per-tensor quantized weights: i8 codes and one scale.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedWeights {
    /// One code per weight: {-1, 0, 1} ternary, ±1 sign1, `[-127, 127]` int8.
    pub codes: Vec<i8>,
    /// Per-tensor absmean scale: weight ≈ code · scale.
    pub scale: f32,
}

/// Weight scale of SPEC.md for `format` (error for `Fp16`, which has no codes).
pub fn weight_scale(values: &[f32], format: LowBitWeightFormat) -> Result<f32> {
    const OP: &str = "weight_scale";
    check_finite(OP, "weights", values)?;
    let mean_abs = mean_of(values, f32::abs);
    let scale = match format {
        LowBitWeightFormat::Fp16 => {
            return Err(LowbitError::unsupported_format(
                OP,
                format,
                "fp16 weights are not quantized",
            ));
        }
        LowBitWeightFormat::Int8 => absmean_scale(mean_abs, 127.0),
        LowBitWeightFormat::Sign1
        | LowBitWeightFormat::Ternary158
        | LowBitWeightFormat::Packed2 => mean_abs.max(EPS),
    };
    check_scale(OP, "weight scale", scale)?;
    Ok(scale)
}

/// One weight code for `format` given its scale.
#[inline]
pub fn weight_code(w: f32, scale: f32, format: LowBitWeightFormat) -> i8 {
    let sign = if w >= 0.0 { 1 } else { -1 };
    match format {
        LowBitWeightFormat::Fp16 => 0,
        LowBitWeightFormat::Int8 => round_half_away(w / scale).clamp(-127.0, 127.0) as i8,
        LowBitWeightFormat::Sign1 => sign,
        // Threshold at the scale (not BitNet's round): the seed's tests pin this.
        LowBitWeightFormat::Ternary158 | LowBitWeightFormat::Packed2 => {
            if w.abs() / scale >= 1.0 {
                sign
            } else {
                0
            }
        }
    }
}

/// Quantizes weights per tensor (absmean) into i8 codes.
pub fn quantize_weights(values: &[f32], format: LowBitWeightFormat) -> Result<QuantizedWeights> {
    let scale = weight_scale(values, format)?;
    Ok(QuantizedWeights {
        codes: values
            .iter()
            .map(|&w| weight_code(w, scale, format))
            .collect(),
        scale,
    })
}

/// Quantizes a block of values to ternary codes with its absmean scale (`quantize_ternary_absmean`).
pub fn quantize_ternary_absmean(values: &[f32]) -> Result<QuantizedWeights> {
    quantize_weights(values, LowBitWeightFormat::Ternary158)
}

/// Quantizes a block of values to ±1 codes with its absmean scale (`quantize_binary_sign`).
pub fn quantize_binary_sign(values: &[f32]) -> Result<QuantizedWeights> {
    quantize_weights(values, LowBitWeightFormat::Sign1)
}

/// The largest |weight code| a projection takes (`ProjectionArgs::w_qmax`, the weights of a
/// device upload): 1..=127, since weight codes are signed int8 lanes (127 for int8 weights, 1
/// for ternary and binary ones); anything else is [`LowbitError::InvalidArgument`].
pub fn check_weight_qmax(op: &'static str, w_qmax: u32) -> Result<()> {
    if (1..=127).contains(&w_qmax) {
        Ok(())
    } else {
        Err(LowbitError::InvalidArgument {
            op,
            what: "w_qmax",
            reason: format!("{w_qmax}: weight codes are signed int8 lanes (1..=127)"),
        })
    }
}

/// Errors with [`LowbitError::AccumulatorOverflow`] unless every dot product of length `k`
/// with codes up to `qmax_a` and `qmax_w` in magnitude fits an i32: `k·qmax_a·qmax_w < 2^31`.
pub fn check_accumulator(op: &'static str, k: usize, qmax_a: u32, qmax_w: u32) -> Result<()> {
    let worst = (k as u128) * u128::from(qmax_a) * u128::from(qmax_w);
    if worst >= 1u128 << 31 {
        Err(LowbitError::AccumulatorOverflow {
            op,
            k,
            qmax_a,
            qmax_w,
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(round_half_away(0.5), 1.0);
        assert_eq!(round_half_away(-0.5), -1.0);
        assert_eq!(round_half_away(1.5), 2.0);
        assert_eq!(round_half_away(2.5), 3.0);
        assert_eq!(round_half_away(0.49999997), 0.0);
    }

    #[test]
    fn zeros_give_eps_scale() {
        let s = activation_scale(&[0.0; 5], LowBitActivationFormat::Int8)
            .unwrap()
            .unwrap();
        assert_eq!(s, (EPS / 127.0).max(EPS));
    }

    #[test]
    fn non_finite_is_an_error() {
        assert!(matches!(
            quantize_activations(&[1.0, f32::NAN], LowBitActivationFormat::Int8),
            Err(LowbitError::NonFinite { index: 1, .. })
        ));
    }

    #[test]
    fn ternary_thresholds_at_scale() {
        let q = quantize_ternary_absmean(&[0.1, -0.4, 0.8, -1.2]).unwrap();
        assert_eq!(q.scale, 0.625);
        assert_eq!(q.codes, vec![0, 0, 1, -1]);
    }
}
