//! Backends: the CPU one (always there), CUDA (feature `cuda`) and WGSL on wgpu (feature `wgpu`).
//!
//! [`Backend`] is the host-slice face every backend shows: upload, run, download. It is what
//! the differential tests, `lowbit verify` and the plan use. Each backend also has its own
//! device-resident API (buffers stay on the device) for callers that chain ops.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

/// Opens the backend a [`crate::dispatch::PathPlan`] chose, falling back with reasons.
pub use crate::dispatch::{OpenedPath, open_for_plan};

use crate::config::LowBitActivationFormat;
use crate::error::{BackendKind, Result};
use crate::ops::quantize::QuantizeShape;
use crate::ops::rho::RhoShape;
use crate::ops::{
    ActInput, DecoderTailShape, Epilogue, LowrankShape, ProjectionOutput, ScaleSource,
};

/// One op request of a projection kernel.
#[derive(Clone, Copy, Debug)]
pub struct ProjectionArgs<'a> {
    /// Activations: codes, packed i8x4 words or f32 values, row-major over the input shape.
    pub input: ActInput<'a>,
    /// Activation format of `input` (its codes' qmax, or how `F32` input is quantized).
    /// `Fp16` with `F32` input selects the float path.
    pub format: LowBitActivationFormat,
    /// Where the activation scale comes from; `Compute` needs `F32` input.
    pub scale: ScaleSource,
    /// Packed weight words (`[H, ceil(D/4), N]` for lowrank, `[H·ceil(Lart/4), D]` for the tail).
    pub w_words: &'a [u32],
    /// Per-tensor weight scale (the artifact's absmean scale); finite and > 0.
    pub w_scale: f32,
    /// Largest |weight code| (1 for ternary/binary, 127 for int8) for the overflow check.
    pub w_qmax: u32,
    /// Output type and fused ReLU applied after dequantization.
    pub epilogue: Epilogue,
}

/// The host-slice interface of a backend.
pub trait Backend: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// Device or adapter name, for tables.
    fn name(&self) -> String;
    /// Absmean activation scale computed by this backend (int8/int4/uint8pos).
    fn activation_scale(&self, x: &[f32], format: LowBitActivationFormat) -> Result<f32>;
    /// Quantize to one i32 code per element. Returns the codes and the scale used.
    fn quantize_codes(
        &self,
        x: &[f32],
        format: LowBitActivationFormat,
        scale: ScaleSource,
    ) -> Result<(Vec<i32>, f32)>;
    /// Quantize and pack along the last axis into signed i8x4 words (int8/int4 only).
    fn quantize_pack_i8x4(
        &self,
        x: &[f32],
        shape: QuantizeShape,
        format: LowBitActivationFormat,
        scale: ScaleSource,
    ) -> Result<(Vec<u32>, f32)>;
    /// Low-rank projection: `[B, H, T, latent_out]` values and the activation scale used.
    fn lowrank(&self, shape: &LowrankShape, args: &ProjectionArgs<'_>) -> Result<ProjectionOutput>;
    /// Decoder tail, summed over heads: `[B, 1, T, D]` values and the activation scale used.
    fn decoder_tail(
        &self,
        shape: &DecoderTailShape,
        args: &ProjectionArgs<'_>,
    ) -> Result<ProjectionOutput>;
    /// Rho int8 block pack in the device layout: `(words, scales)`.
    fn rho_int8_pack(&self, shape: &RhoShape, values: &[f32]) -> Result<(Vec<u32>, Vec<f32>)>;
    /// Inverse of `rho_int8_pack`: `code · scale` for each of the state's elements.
    fn rho_int8_unpack(&self, shape: &RhoShape, words: &[u32], scales: &[f32]) -> Result<Vec<f32>>;
}

/// Opens the default device of `kind` (CPU always; CUDA device 0; the best wgpu adapter),
/// or says why it is unavailable.
pub fn open(kind: BackendKind) -> Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Cpu => Ok(Box::new(cpu::CpuBackend::new())),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => cuda::open_default(),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => wgpu::open_default(),
        #[allow(unreachable_patterns)]
        other => Err(crate::error::LowbitError::BackendUnavailable {
            backend: other,
            reason: format!("built without the `{other}` cargo feature"),
        }),
    }
}
