//! WGSL backend on wgpu: tiled compute shaders (`shaders/*.wgsl`, validated by naga in
//! `build.rs`) on any Vulkan/Metal/DX12/GL adapter, lavapipe included.
//!
//! * [`WgpuDevice`]: the best adapter, one chosen by index/name/backend (`WGPU_BACKEND`), or
//!   a caller's own `wgpu::Device` + `wgpu::Queue` ([`WgpuDevice::from_wgpu`]). Pipelines are
//!   compiled once per kernel and override set and cached.
//! * Device-resident ops on [`GpuBuffer`]s ([`WgpuDevice::quantize_pack_i8x4`],
//!   [`WgpuDevice::lowrank`], [`WgpuDevice::decoder_tail`], ...): chain them without host
//!   round trips.
//! * [`WgpuBackend`]: the host-slice [`Backend`] the differential tests and the CLI use
//!   (upload, poison the outputs, run, download).
//!
//! Every integer result is bit-identical to the CPU reference: codes are computed with the
//! exact `round(x/s)` of SPEC.md (WGSL division is only trusted away from k+0.5; near it an
//! exact integer comparison decides), and outputs are `(acc as f32 · w_scale) · a_scale`.
//! `LOWBIT_WGPU_DOT4=polyfill` (or [`Dot4Mode::Polyfill`]) selects the manual-unpack dot4.

mod buffer;
mod device;
mod ops;
mod probe;
mod shaders;
mod wgsl_include;

pub use buffer::{DeviceOutput, GpuBuffer};
pub use device::{
    AdapterChoice, DOT4_ENV, Dot4Mode, F32Route, TileConfig, WgpuDevice, WgpuOptions,
};
pub use ops::{DeviceAct, DeviceScale, DeviceWeights};
pub use probe::probe;

use half::{bf16, f16};

use super::{Backend, ProjectionArgs};
use crate::config::LowBitActivationFormat;
use crate::error::{BackendKind, LowbitError, Result};
use crate::ops::quantize::{QuantizeShape, check_signed_packable};
use crate::ops::rho::RhoShape;
use crate::ops::{
    ActInput, DecoderTailShape, LowrankShape, OutputDType, ProjectionOutput, ScaleSource,
    check_activation_codes, check_packed_activations,
};
use crate::quant::{check_finite, check_scale};
use crate::testing::{POISON_F32, POISON_U32};

/// Opens the best wgpu adapter as a [`crate::Backend`] (`LOWBIT_WGPU_DOT4` honoured).
pub fn open_default() -> Result<Box<dyn Backend>> {
    Ok(Box::new(WgpuBackend::new(WgpuOptions::default())?))
}

/// The host-slice [`Backend`] on a [`WgpuDevice`]: every call validates its arguments on the
/// host, uploads, poisons the outputs (NaN / `0xDEADBEEF`), launches, and downloads.
#[derive(Clone, Debug)]
pub struct WgpuBackend {
    dev: WgpuDevice,
}

impl WgpuBackend {
    /// Opens an adapter per `opts` ([`WgpuDevice::new`]).
    pub fn new(opts: WgpuOptions) -> Result<Self> {
        Ok(Self {
            dev: WgpuDevice::new(opts)?,
        })
    }

    /// Wraps an opened device.
    pub fn from_device(dev: WgpuDevice) -> Self {
        Self { dev }
    }

    /// The device, for its device-resident API and settings.
    pub fn device(&self) -> &WgpuDevice {
        &self.dev
    }

    fn poisoned_output(&self, dtype: OutputDType, len: usize) -> Result<DeviceOutput> {
        let out = self.dev.alloc_output(dtype, len)?;
        match &out {
            DeviceOutput::F32(b) => self.dev.fill(b, POISON_F32)?,
            DeviceOutput::F16(b) => self.dev.fill(b, f16::NAN)?,
            DeviceOutput::Bf16(b) => self.dev.fill(b, bf16::NAN)?,
        }
        Ok(out)
    }

    fn poisoned<T: bytemuck::Pod>(&self, len: usize, poison: T) -> Result<GpuBuffer<T>> {
        let b = self.dev.alloc(len)?;
        self.dev.fill(&b, poison)?;
        Ok(b)
    }

    /// Runs a projection given host arguments: `run(device input, scale, weights, out)`.
    #[allow(clippy::too_many_arguments)]
    fn projection(
        &self,
        op: &'static str,
        args: &ProjectionArgs<'_>,
        len: usize,
        k: usize,
        words: usize,
        w_words: usize,
        out_len: usize,
        check_acc: impl Fn(u32) -> Result<()>,
        run: impl Fn(DeviceAct<'_>, DeviceScale<'_>, &DeviceWeights, &DeviceOutput) -> Result<()>,
    ) -> Result<ProjectionOutput> {
        check_host_projection(op, args, len, k, words, w_words, check_acc)?;
        // Binding sizes before anything is uploaded or allocated.
        let in_bytes = match args.input {
            ActInput::Packed(_) => words,
            _ => len,
        } as u64
            * 4;
        self.dev.check_binding(op, "activations", in_bytes)?;
        self.dev
            .check_binding(op, "weight words", w_words as u64 * 4)?;
        self.dev.check_binding(
            op,
            "output",
            ops::output_bytes(args.epilogue.dtype, out_len),
        )?;
        let w = self
            .dev
            .upload_weights(args.w_words, args.w_scale, args.w_qmax)?;
        let out = self.poisoned_output(args.epilogue.dtype, out_len)?;
        let float = args.format.qmax().is_none();
        let scale_buf = if float {
            None
        } else {
            self.scale_buffer(args.scale)?
        };
        let scale = self.device_scale(args.scale, &scale_buf);
        match args.input {
            ActInput::Codes(c) => run(DeviceAct::Codes(&self.dev.upload(c)?), scale, &w, &out)?,
            ActInput::Packed(p) => run(DeviceAct::Packed(&self.dev.upload(p)?), scale, &w, &out)?,
            ActInput::F32(x) => run(DeviceAct::F32(&self.dev.upload(x)?), scale, &w, &out)?,
        }
        let values = self.dev.download_output(&out)?;
        let a_scale = if float {
            1.0
        } else {
            self.used_scale(args.scale, &scale_buf)?
        };
        Ok(ProjectionOutput { values, a_scale })
    }
}

/// Every host-side check of a projection, in the CPU backend's order, before any upload.
fn check_host_projection(
    op: &'static str,
    args: &ProjectionArgs<'_>,
    len: usize,
    k: usize,
    words: usize,
    w_words: usize,
    check_acc: impl Fn(u32) -> Result<()>,
) -> Result<()> {
    check_scale(op, "weight scale", args.w_scale)?;
    if args.w_words.len() != w_words {
        return Err(LowbitError::len(
            op,
            "weight words",
            w_words,
            args.w_words.len(),
        ));
    }
    let format = args.format;
    let Some(qmax) = format.qmax() else {
        return match args.input {
            ActInput::F32(x) => {
                if x.len() != len {
                    return Err(LowbitError::len(op, "activations", len, x.len()));
                }
                check_finite(op, "activations", x)
            }
            _ => Err(LowbitError::unsupported_format(
                op,
                format,
                "the float path takes f32 input",
            )),
        };
    };
    check_acc(qmax)?;
    let no_compute = || LowbitError::InvalidArgument {
        op,
        what: "scale",
        reason: "ScaleSource::Compute needs f32 input; codes and packed input need a given scale"
            .into(),
    };
    match args.input {
        ActInput::Codes(codes) => {
            if codes.len() != len {
                return Err(LowbitError::len(op, "activation codes", len, codes.len()));
            }
            args.scale.given(op)?.ok_or_else(no_compute)?;
            check_activation_codes(op, codes, format)?;
        }
        ActInput::Packed(p) => {
            check_signed_packable(op, format)?;
            if p.len() != words {
                return Err(LowbitError::len(
                    op,
                    "packed activation words",
                    words,
                    p.len(),
                ));
            }
            check_packed_activations(op, p, k, qmax)?;
            args.scale.given(op)?.ok_or_else(no_compute)?;
        }
        ActInput::F32(x) => {
            if x.len() != len {
                return Err(LowbitError::len(op, "activations", len, x.len()));
            }
            args.scale.given(op)?;
            check_finite(op, "activations", x)?;
        }
    }
    Ok(())
}

fn check_host_x(op: &'static str, x: &[f32]) -> Result<()> {
    if x.is_empty() {
        return Err(LowbitError::invalid_shape(op, &[0], "zero-sized input"));
    }
    check_finite(op, "activations", x)
}

impl WgpuBackend {
    fn device_scale<'a>(
        &self,
        scale: ScaleSource,
        buf: &'a Option<GpuBuffer<f32>>,
    ) -> DeviceScale<'a> {
        match (scale, buf) {
            (ScaleSource::Buffer(_), Some(b)) => DeviceScale::Buffer(b),
            (ScaleSource::Compute, Some(b)) => DeviceScale::Compute(b),
            (ScaleSource::Param(s) | ScaleSource::Buffer(s), _) => DeviceScale::Host(s),
            (ScaleSource::Compute, None) => DeviceScale::Host(f32::NAN),
        }
    }

    fn scale_buffer(&self, scale: ScaleSource) -> Result<Option<GpuBuffer<f32>>> {
        Ok(match scale {
            ScaleSource::Buffer(s) => Some(self.dev.upload(&[s])?),
            ScaleSource::Compute => Some(self.poisoned(1, POISON_F32)?),
            ScaleSource::Param(_) => None,
        })
    }

    fn used_scale(&self, scale: ScaleSource, buf: &Option<GpuBuffer<f32>>) -> Result<f32> {
        Ok(match (scale, buf) {
            (ScaleSource::Param(s) | ScaleSource::Buffer(s), _) => s,
            (ScaleSource::Compute, Some(b)) => self.dev.download(b)?[0],
            (ScaleSource::Compute, None) => f32::NAN,
        })
    }
}

impl Backend for WgpuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Wgpu
    }

    fn name(&self) -> String {
        let variant = match self.dev.dot4_mode() {
            Dot4Mode::Polyfill => "dot4 polyfill",
            _ => match self.dev.native_dot4() {
                Some(true) => "dot4 native (OpSDot)",
                _ => "dot4 builtin (lowered by naga)",
            },
        };
        format!("{} [{variant}]", self.dev.name())
    }

    fn activation_scale(&self, x: &[f32], format: LowBitActivationFormat) -> Result<f32> {
        const OP: &str = "wgpu::activation_scale";
        if format.qmax().is_none() {
            return Err(LowbitError::unsupported_format(
                OP,
                format,
                "the float path has no scale",
            ));
        }
        check_host_x(OP, x)?;
        let xb = self.dev.upload(x)?;
        let out = self.poisoned(1, POISON_F32)?;
        self.dev.activation_scale_into(&xb, format, &out)?;
        Ok(self.dev.download(&out)?[0])
    }

    fn quantize_codes(
        &self,
        x: &[f32],
        format: LowBitActivationFormat,
        scale: ScaleSource,
    ) -> Result<(Vec<i32>, f32)> {
        const OP: &str = "wgpu::quantize_codes";
        if format.qmax().is_none() {
            return Err(LowbitError::unsupported_format(
                OP,
                format,
                "the float path has no codes",
            ));
        }
        check_host_x(OP, x)?;
        scale.given(OP)?;
        let xb = self.dev.upload(x)?;
        let sb = self.scale_buffer(scale)?;
        let out = self.poisoned(x.len(), POISON_U32 as i32)?;
        self.dev
            .quantize_codes_into(&xb, format, self.device_scale(scale, &sb), &out)?;
        Ok((self.dev.download(&out)?, self.used_scale(scale, &sb)?))
    }

    fn quantize_pack_i8x4(
        &self,
        x: &[f32],
        shape: QuantizeShape,
        format: LowBitActivationFormat,
        scale: ScaleSource,
    ) -> Result<(Vec<u32>, f32)> {
        const OP: &str = "wgpu::quantize_pack_i8x4";
        check_signed_packable(OP, format)?;
        QuantizeShape::new(shape.rows, shape.k)?;
        if x.len() != shape.len() {
            return Err(LowbitError::len(OP, "activations", shape.len(), x.len()));
        }
        check_host_x(OP, x)?;
        scale.given(OP)?;
        let xb = self.dev.upload(x)?;
        let sb = self.scale_buffer(scale)?;
        let out = self.poisoned(shape.words_len(), POISON_U32)?;
        self.dev.quantize_pack_i8x4_into(
            &xb,
            shape,
            format,
            self.device_scale(scale, &sb),
            &out,
        )?;
        Ok((self.dev.download(&out)?, self.used_scale(scale, &sb)?))
    }

    fn lowrank(&self, shape: &LowrankShape, args: &ProjectionArgs<'_>) -> Result<ProjectionOutput> {
        const OP: &str = "wgpu::lowrank";
        shape.validate()?;
        self.projection(
            OP,
            args,
            shape.x_len(),
            shape.embd,
            shape.x_words_len(),
            shape.w_words_len(),
            shape.out_len(),
            |qa| shape.check_accumulator(qa, args.w_qmax),
            |input, scale, w, out| {
                self.dev
                    .lowrank_into(shape, input, args.format, scale, w, args.epilogue, out)
            },
        )
    }

    fn decoder_tail(
        &self,
        shape: &DecoderTailShape,
        args: &ProjectionArgs<'_>,
    ) -> Result<ProjectionOutput> {
        const OP: &str = "wgpu::decoder_tail";
        shape.validate()?;
        self.projection(
            OP,
            args,
            shape.y_len(),
            shape.latent,
            shape.y_words_len(),
            shape.w_words_len(),
            shape.out_len(),
            |qa| shape.check_accumulator(qa, args.w_qmax),
            |input, scale, w, out| {
                self.dev
                    .decoder_tail_into(shape, input, args.format, scale, w, args.epilogue, out)
            },
        )
    }

    fn rho_int8_pack(&self, shape: &RhoShape, values: &[f32]) -> Result<(Vec<u32>, Vec<f32>)> {
        const OP: &str = "wgpu::rho_int8_pack";
        RhoShape::new(shape.logical_shape)?;
        if values.len() != shape.len() {
            return Err(LowbitError::len(
                OP,
                "rho values",
                shape.len(),
                values.len(),
            ));
        }
        check_finite(OP, "rho values", values)?;
        let vb = self.dev.upload(values)?;
        let words = self.poisoned(shape.int8_words(), POISON_U32)?;
        let scales = self.poisoned(shape.blocks(), POISON_F32)?;
        self.dev.rho_int8_pack_into(shape, &vb, &words, &scales)?;
        Ok((self.dev.download(&words)?, self.dev.download(&scales)?))
    }

    fn rho_int8_unpack(&self, shape: &RhoShape, words: &[u32], scales: &[f32]) -> Result<Vec<f32>> {
        const OP: &str = "wgpu::rho_int8_unpack";

        shape.check_int8_state(OP, words.len(), scales.len())?;
        let wb = self.dev.upload(words)?;
        let sb = self.dev.upload(scales)?;
        let out = self.poisoned(shape.len(), POISON_F32)?;
        self.dev.rho_int8_unpack_into(shape, &wb, &sb, &out)?;
        self.dev.download(&out)
    }
}
