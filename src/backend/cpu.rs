//! CPU backend. (Placeholder: routes to the reference; the rayon/i8x4 version replaces it.)

use super::{Backend, ProjectionArgs};
use crate::config::LowBitActivationFormat;
use crate::error::{BackendKind, LowbitError, Result};
use crate::ops::quantize::{QuantizeShape, check_signed_packable};
use crate::ops::rho::RhoShape;
use crate::ops::{ActInput, DecoderTailShape, LowrankShape, ProjectionOutput, ScaleSource};
use crate::pack::pack_rows_i32_to_i8x4;
use crate::quant::{activation_code, activation_scale, check_finite};
use crate::reference;

#[derive(Clone, Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        Self
    }
}

fn resolve_scale(
    op: &'static str,
    x: &[f32],
    format: LowBitActivationFormat,
    scale: ScaleSource,
) -> Result<f32> {
    match scale.given(op)? {
        Some(s) => Ok(s),
        None => activation_scale(x, format)?.ok_or_else(|| {
            LowbitError::unsupported_format(op, format, "the float path has no scale")
        }),
    }
}

impl Backend for CpuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }
    fn name(&self) -> String {
        "cpu".into()
    }
    fn activation_scale(&self, x: &[f32], format: LowBitActivationFormat) -> Result<f32> {
        resolve_scale("cpu::activation_scale", x, format, ScaleSource::Compute)
    }
    fn quantize_codes(
        &self,
        x: &[f32],
        format: LowBitActivationFormat,
        scale: ScaleSource,
    ) -> Result<(Vec<i32>, f32)> {
        const OP: &str = "cpu::quantize_codes";
        check_finite(OP, "activations", x)?;
        let s = resolve_scale(OP, x, format, scale)?;
        Ok((
            x.iter().map(|&v| activation_code(v, s, format)).collect(),
            s,
        ))
    }
    fn quantize_pack_i8x4(
        &self,
        x: &[f32],
        shape: QuantizeShape,
        format: LowBitActivationFormat,
        scale: ScaleSource,
    ) -> Result<(Vec<u32>, f32)> {
        const OP: &str = "cpu::quantize_pack_i8x4";
        check_signed_packable(OP, format)?;
        if x.len() != shape.len() {
            return Err(LowbitError::len(OP, "activations", shape.len(), x.len()));
        }
        let (codes, s) = self.quantize_codes(x, format, scale)?;
        Ok((pack_rows_i32_to_i8x4(OP, &codes, shape.rows, shape.k)?, s))
    }
    fn lowrank(&self, shape: &LowrankShape, args: &ProjectionArgs<'_>) -> Result<ProjectionOutput> {
        let _ = (
            shape,
            args,
            ActInput::Codes(&[]),
            reference::lowrank_projection_codes,
        );
        Err(LowbitError::Unsupported {
            backend: BackendKind::Cpu,
            op: "lowrank",
            reason: "not yet implemented".into(),
        })
    }
    fn decoder_tail(
        &self,
        shape: &DecoderTailShape,
        args: &ProjectionArgs<'_>,
    ) -> Result<ProjectionOutput> {
        let _ = (shape, args);
        Err(LowbitError::Unsupported {
            backend: BackendKind::Cpu,
            op: "decoder_tail",
            reason: "not yet implemented".into(),
        })
    }
    fn rho_int8_pack(&self, shape: &RhoShape, values: &[f32]) -> Result<(Vec<u32>, Vec<f32>)> {
        reference::rho::rho_int8_pack_words(shape, values)
    }
    fn rho_int8_unpack(&self, shape: &RhoShape, words: &[u32], scales: &[f32]) -> Result<Vec<f32>> {
        reference::rho::rho_int8_unpack_words(shape, words, scales)
    }
}
