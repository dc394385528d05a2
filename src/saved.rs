//! Saved activations kept for the backward pass in a quantized cache (the seed's
//! `pack_saved_activation_state` / `unpack_saved_activation_state`): per-tensor activation
//! quantization of [`crate::quant`], restored as `code · scale`.

use crate::config::LowBitActivationFormat;
use crate::error::{LowbitError, Result};
use crate::quant::{ActivationCodes, check_scale, quantize_activations};

/// Largest rank a saved activation may have.
pub const MAX_SAVED_RANK: usize = 4;

/// The stored values of a saved activation.
#[derive(Clone, Debug, PartialEq)]
pub enum PackedSavedActivationBuffer {
    /// No quantization (`Fp16` format): the f32 values themselves.
    Float(Vec<f32>),
    /// int8 / int4 codes and their scale.
    Signed {
        /// Codes in `±qmax` (127 for int8, 7 for int4), one per element.
        values: Vec<i8>,
        /// Per-tensor absmean activation scale; an element is `code · scale`.
        scale: f32,
    },
    /// uint8pos codes and their scale.
    UnsignedPositive {
        /// Codes of `max(x, 0)` in `0..=255`, one per element.
        values: Vec<u8>,
        /// Per-tensor scale from the mean of `max(x, 0)`; an element is `code · scale`.
        scale: f32,
    },
}

impl PackedSavedActivationBuffer {
    /// Number of stored elements (floats or codes).
    pub fn len(&self) -> usize {
        match self {
            Self::Float(v) => v.len(),
            Self::Signed { values, .. } => values.len(),
            Self::UnsignedPositive { values, .. } => values.len(),
        }
    }

    /// Whether no element is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The seed's estimate: 4 bytes per float, or 1 byte per code plus a 4-byte scale.
    pub fn estimated_bytes(&self) -> u64 {
        let scale = core::mem::size_of::<f32>() as u64;
        match self {
            Self::Float(v) => (v.len() * core::mem::size_of::<f32>()) as u64,
            Self::Signed { values, .. } => values.len() as u64 + scale,
            Self::UnsignedPositive { values, .. } => values.len() as u64 + scale,
        }
    }
}

/// A saved activation with its logical shape and format.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedSavedActivationState {
    /// Shape of the activation, rank 1..=[`MAX_SAVED_RANK`], no zero dim.
    pub logical_shape: Vec<usize>,
    /// Activation format it was quantized in; decides the `buffer` variant.
    pub format: LowBitActivationFormat,
    /// [`PackedSavedActivationBuffer::estimated_bytes`] of `buffer`, at pack time.
    pub estimated_bytes: u64,
    /// The stored values, flattened row-major.
    pub buffer: PackedSavedActivationBuffer,
}

fn shape_len(op: &'static str, shape: &[usize]) -> Result<usize> {
    if shape.is_empty() || shape.len() > MAX_SAVED_RANK {
        return Err(LowbitError::invalid_shape(
            op,
            shape,
            format!("rank {} (must be 1..={MAX_SAVED_RANK})", shape.len()),
        ));
    }
    if shape.contains(&0) {
        return Err(LowbitError::invalid_shape(
            op,
            shape,
            "zero-sized dimension",
        ));
    }
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| LowbitError::invalid_shape(op, shape, "element count overflows usize"))
}

/// Quantizes `values` of logical `shape` in `format` (per tensor).
pub fn pack_saved_activation_state(
    values: &[f32],
    shape: &[usize],
    format: LowBitActivationFormat,
) -> Result<PackedSavedActivationState> {
    const OP: &str = "pack_saved_activation_state";
    let len = shape_len(OP, shape)?;
    if values.len() != len {
        return Err(LowbitError::len(OP, "values", len, values.len()));
    }
    let buffer = match quantize_activations(values, format)? {
        ActivationCodes::Float(values) => PackedSavedActivationBuffer::Float(values),
        ActivationCodes::Signed { codes, scale } => PackedSavedActivationBuffer::Signed {
            values: codes,
            scale,
        },
        ActivationCodes::Unsigned { codes, scale } => {
            PackedSavedActivationBuffer::UnsignedPositive {
                values: codes,
                scale,
            }
        }
    };
    Ok(PackedSavedActivationState {
        logical_shape: shape.to_vec(),
        format,
        estimated_bytes: buffer.estimated_bytes(),
        buffer,
    })
}

/// Restores the flattened values (`code · scale`, or the floats). The state is validated
/// first: shape and length, a buffer variant matching the format, codes within the
/// format's range, a finite positive scale.
pub fn unpack_saved_activation_state(state: &PackedSavedActivationState) -> Result<Vec<f32>> {
    const OP: &str = "unpack_saved_activation_state";
    let len = shape_len(OP, &state.logical_shape)?;
    if state.buffer.len() != len {
        return Err(LowbitError::len(OP, "buffer", len, state.buffer.len()));
    }
    let mismatch = || {
        LowbitError::unsupported_format(
            OP,
            state.format,
            "the buffer variant does not match the format",
        )
    };
    match (&state.buffer, state.format) {
        (PackedSavedActivationBuffer::Float(values), LowBitActivationFormat::Fp16) => {
            Ok(values.clone())
        }
        (
            PackedSavedActivationBuffer::Signed { values, scale },
            LowBitActivationFormat::Int8 | LowBitActivationFormat::Int4Exp,
        ) => {
            check_scale(OP, "saved activation scale", *scale)?;
            let qmax = state.format.qmax().unwrap_or(127) as i32;
            if let Some(i) = values.iter().position(|&c| i32::from(c).abs() > qmax) {
                return Err(LowbitError::InvalidArgument {
                    op: OP,
                    what: "code",
                    reason: format!("{} at {i} is outside ±{qmax}", values[i]),
                });
            }
            Ok(values.iter().map(|&c| f32::from(c) * scale).collect())
        }
        (
            PackedSavedActivationBuffer::UnsignedPositive { values, scale },
            LowBitActivationFormat::Uint8PosExp,
        ) => {
            check_scale(OP, "saved activation scale", *scale)?;
            Ok(values.iter().map(|&c| f32::from(c) * scale).collect())
        }
        _ => Err(mismatch()),
    }
}

/// [`unpack_saved_activation_state`] for a caller that expects rank `D` (the seed's
/// `unpack_saved_activation_state::<B, D>`): returns the shape as an array with the values.
pub fn unpack_saved_activation_state_as<const D: usize>(
    state: &PackedSavedActivationState,
) -> Result<([usize; D], Vec<f32>)> {
    let shape = <[usize; D]>::try_from(state.logical_shape.as_slice()).map_err(|_| {
        LowbitError::invalid_shape(
            "unpack_saved_activation_state",
            &state.logical_shape,
            format!(
                "rank {} but rank {D} was requested",
                state.logical_shape.len()
            ),
        )
    })?;
    Ok((shape, unpack_saved_activation_state(state)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimated_bytes_follow_the_seed() {
        let v = [0.5f32; 12];
        let s =
            pack_saved_activation_state(&v, &[1, 2, 2, 3], LowBitActivationFormat::Int8).unwrap();
        assert_eq!(s.estimated_bytes, 16);
        let s = pack_saved_activation_state(&v, &[12], LowBitActivationFormat::Fp16).unwrap();
        assert_eq!(s.estimated_bytes, 48);
        assert_eq!(unpack_saved_activation_state(&s).unwrap(), v.to_vec());
    }

    #[test]
    fn invalid_states_are_errors() {
        let v = [0.5f32, -1.0, 2.0, 0.0];
        assert!(pack_saved_activation_state(&v, &[3], LowBitActivationFormat::Int8).is_err());
        assert!(pack_saved_activation_state(&v, &[], LowBitActivationFormat::Int8).is_err());
        assert!(
            pack_saved_activation_state(&v, &[1, 1, 1, 1, 4], LowBitActivationFormat::Int8)
                .is_err()
        );
        let good =
            pack_saved_activation_state(&v, &[2, 2], LowBitActivationFormat::Int4Exp).unwrap();
        let mut s = good.clone();
        s.logical_shape = vec![5];
        assert!(unpack_saved_activation_state(&s).is_err());
        let mut s = good.clone();
        s.format = LowBitActivationFormat::Uint8PosExp;
        assert!(unpack_saved_activation_state(&s).is_err());
        let mut s = good.clone();
        if let PackedSavedActivationBuffer::Signed { values, .. } = &mut s.buffer {
            values[0] = 8;
        }
        assert!(unpack_saved_activation_state(&s).is_err());
        let mut s = good.clone();
        if let PackedSavedActivationBuffer::Signed { scale, .. } = &mut s.buffer {
            *scale = -1.0;
        }
        assert!(unpack_saved_activation_state(&s).is_err());
        assert!(unpack_saved_activation_state_as::<3>(&good).is_err());
        assert_eq!(
            unpack_saved_activation_state_as::<2>(&good).unwrap().0,
            [2, 2]
        );
    }
}
