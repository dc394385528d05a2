//! Fake quantization on host slices: the forward values of the seed's straight-through
//! estimators (`fake_quantize_weight_ste`, `fake_quantize_activation_ste`), i.e. `code · scale`
//! with the quantizers of [`crate::quant`] (the backward pass of an STE is the identity and
//! has no place on slices). Also the seed's training scale caches, as an explicit
//! [`ScaleCache`] handle.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::config::{LowBitActivationFormat, LowBitWeightFormat};
use crate::error::{LowbitError, Result};
use crate::quant::{
    ActivationCodes, EPS, activation_scale, check_finite, quantize_activations,
    quantize_activations_with_scale, quantize_weights, weight_code, weight_scale,
};

/// Forward value of the weight STE: `code · scale` per tensor (`Fp16`: the values unchanged).
/// Non-finite inputs are an error for every format.
pub fn fake_quantize_weight(values: &[f32], format: LowBitWeightFormat) -> Result<Vec<f32>> {
    if format == LowBitWeightFormat::Fp16 {
        check_finite("fake_quantize_weight", "weights", values)?;
        return Ok(values.to_vec());
    }
    let q = quantize_weights(values, format)?;
    Ok(q.codes.iter().map(|&c| f32::from(c) * q.scale).collect())
}

/// Forward value of the activation STE: `code · scale` per tensor (`Fp16`: the values
/// unchanged). Non-finite inputs are an error for every format.
pub fn fake_quantize_activation(
    values: &[f32],
    format: LowBitActivationFormat,
) -> Result<Vec<f32>> {
    Ok(dequantize(quantize_activations(values, format)?))
}

fn dequantize(codes: ActivationCodes) -> Vec<f32> {
    match codes {
        ActivationCodes::Float(values) => values,
        ActivationCodes::Signed { codes, scale } => {
            codes.iter().map(|&c| f32::from(c) * scale).collect()
        }
        ActivationCodes::Unsigned { codes, scale } => {
            codes.iter().map(|&c| f32::from(c) * scale).collect()
        }
    }
}

/// Fraction of elements that are nonzero (0 for an empty slice).
pub fn fraction_nonzero(values: &[f32]) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().filter(|v| v.abs() > 0.0).count() as f32 / values.len() as f32
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ScaleFormat {
    Activation(LowBitActivationFormat),
    Weight(LowBitWeightFormat),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ScaleKey {
    kind: String,
    format: ScaleFormat,
    shape: Vec<usize>,
}

/// The seed's training scale caches: the first quantization of a `(kind, format, shape)`
/// computes the absmean scale and stores it; later ones reuse it (a cache hit). Thread-safe.
#[derive(Debug)]
pub struct ScaleCache {
    enabled: bool,
    scales: Mutex<HashMap<ScaleKey, f32>>,
}

impl Default for ScaleCache {
    fn default() -> Self {
        Self::new()
    }
}

impl ScaleCache {
    /// An enabled, empty cache.
    pub fn new() -> Self {
        Self {
            enabled: true,
            scales: Mutex::new(HashMap::new()),
        }
    }

    /// A cache that never stores (every call computes its scale: "dynamic scale only").
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::new()
        }
    }

    /// Whether scales are stored and reused (`false` for [`ScaleCache::disabled`]).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ScaleKey, f32>> {
        self.scales.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of cached scales.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no scale is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every cached scale, so the next quantization of each key recomputes it.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Returns the cached scale of `key`, or computes it with `compute` and stores it.
    fn scale_for(
        &self,
        key: ScaleKey,
        compute: impl FnOnce() -> Result<f32>,
    ) -> Result<(f32, bool)> {
        let cached = self
            .enabled
            .then(|| self.lock().get(&key).copied())
            .flatten();
        if let Some(scale) = cached {
            return Ok((scale.max(EPS), true));
        }
        let scale = compute()?;
        if self.enabled {
            self.lock().insert(key, scale.max(EPS));
        }
        Ok((scale, false))
    }

    /// Activation codes of `values` (logical `shape`) with the cached scale of
    /// `(kind, format, shape)`: returns `(codes, scale, cache_hit)`. `Fp16` has no codes and
    /// is an error.
    pub fn quantize_activation_codes(
        &self,
        kind: &str,
        values: &[f32],
        shape: &[usize],
        format: LowBitActivationFormat,
    ) -> Result<(Vec<i32>, f32, bool)> {
        const OP: &str = "ScaleCache::quantize_activation_codes";
        check_shape(OP, values.len(), shape)?;
        if format == LowBitActivationFormat::Fp16 {
            return Err(LowbitError::unsupported_format(
                OP,
                format,
                "fp16 activations have no codes",
            ));
        }
        check_finite(OP, "activations", values)?;
        let key = ScaleKey {
            kind: kind.to_string(),
            format: ScaleFormat::Activation(format),
            shape: shape.to_vec(),
        };
        let (scale, hit) = self.scale_for(key, || {
            activation_scale(values, format)?.ok_or_else(|| {
                LowbitError::unsupported_format(OP, format, "fp16 activations have no scale")
            })
        })?;
        let codes = quantize_activations_with_scale(values, format, scale)?.codes_i32();
        Ok((codes, scale, hit))
    }

    /// Weight codes of `values` (logical `shape`) with the cached scale of
    /// `(kind, format, shape)`: returns `(codes, scale, cache_hit)`. `Fp16` is an error.
    pub fn quantize_weight_codes(
        &self,
        kind: &str,
        values: &[f32],
        shape: &[usize],
        format: LowBitWeightFormat,
    ) -> Result<(Vec<i8>, f32, bool)> {
        const OP: &str = "ScaleCache::quantize_weight_codes";
        check_shape(OP, values.len(), shape)?;
        check_finite(OP, "weights", values)?;
        let key = ScaleKey {
            kind: kind.to_string(),
            format: ScaleFormat::Weight(format),
            shape: shape.to_vec(),
        };
        let (scale, hit) = self.scale_for(key, || weight_scale(values, format))?;
        let codes = values
            .iter()
            .map(|&w| weight_code(w, scale, format))
            .collect();
        Ok((codes, scale, hit))
    }
}

fn check_shape(op: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    let expected = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| LowbitError::invalid_shape(op, shape, "element count overflows usize"))?;
    if shape.is_empty() {
        return Err(LowbitError::invalid_shape(op, shape, "rank 0"));
    }
    if expected != len {
        return Err(LowbitError::len(op, "values", expected, len));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ternary_fake_quant_is_codes_times_scale() {
        let v =
            fake_quantize_weight(&[0.1, -0.4, 0.8, -1.2], LowBitWeightFormat::Ternary158).unwrap();
        assert_eq!(v, vec![0.0, 0.0, 0.625, -0.625]);
        assert_eq!(fraction_nonzero(&v), 0.5);
    }

    #[test]
    fn fp16_is_identity_and_nan_is_an_error() {
        let x = [1.5f32, -2.0];
        assert_eq!(
            fake_quantize_activation(&x, LowBitActivationFormat::Fp16).unwrap(),
            x.to_vec()
        );
        assert!(fake_quantize_weight(&[f32::NAN], LowBitWeightFormat::Fp16).is_err());
    }

    #[test]
    fn disabled_cache_never_hits() {
        let cache = ScaleCache::disabled();
        let x = [0.5f32, -1.0, 2.0, 0.25];
        for _ in 0..2 {
            let (_, _, hit) = cache
                .quantize_activation_codes("k", &x, &[2, 2], LowBitActivationFormat::Int8)
                .unwrap();
            assert!(!hit);
        }
        assert!(cache.is_empty());
    }

    #[test]
    fn cache_keys_differ_by_shape_and_kind() {
        let cache = ScaleCache::new();
        let x = [0.5f32, -1.0, 2.0, 0.25];
        let f = LowBitWeightFormat::Int8;
        assert!(!cache.quantize_weight_codes("a", &x, &[4], f).unwrap().2);
        assert!(!cache.quantize_weight_codes("a", &x, &[2, 2], f).unwrap().2);
        assert!(!cache.quantize_weight_codes("b", &x, &[4], f).unwrap().2);
        assert!(cache.quantize_weight_codes("a", &x, &[4], f).unwrap().2);
        assert!(cache.quantize_weight_codes("a", &x, &[3], f).is_err());
    }
}
