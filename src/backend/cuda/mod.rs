//! CUDA backend through cudarc + NVRTC: dp4a kernels compiled at run time for the device's
//! architecture (`cuda/*.cu`), bit-identical to the CPU reference.
//!
//! * [`probe()`] — driver, NVRTC and devices, never panicking when the libraries are missing.
//! * [`CudaDevice`] — a device ordinal, or a caller's `Arc<CudaContext>` + `Arc<CudaStream>`;
//!   the device-resident op API ([`DeviceAct`], [`DeviceScale`]) and the `unsafe` raw-address
//!   entry points (`*_raw`, [`RawAct`], [`RawScale`]). Everything is ordered on one stream.
//! * [`CudaBackend`] — the host-slice [`Backend`] used by the tests.
//! * [`microbench`] — dp4a ceiling, copy bandwidth and the weight-stream floor, timed with
//!   CUDA events.

pub mod compile;
pub mod device;
pub mod launch;
pub mod microbench;
pub mod mma;
pub mod ops;
pub mod probe;
#[cfg(test)]
mod ring_model;
pub mod tuning;

/// The cudarc this backend is built on (name its types through this re-export).
pub use cudarc;
pub use device::{
    BULK_PREFETCH_MAX_M, CudaDevice, DECODER_GRID_SCALE_ENV, FROZEN_WEIGHTS_ENV, KernelFamily,
    PREFETCH_ENV, Pdl, SMALL_INLINE_SCALE_ENV, SMALL_PREPACK_ENV, TRACE_ENV, TRACE_SLOTS,
    WeightPrefetch,
};
pub use launch::{RawAct, RawScale, RawWeights};
pub use mma::SmallMmaDecoder;
pub use ops::{DeviceAct, DeviceOut, DeviceScale, DeviceWeights};
pub use probe::probe;
pub use tuning::SmallShape;

use cudarc::driver::{CudaSlice, DeviceRepr};

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

/// `LOWBIT_CUDA_TERNARY2=1`: [`open_default`] (the backend of [`crate::backend::open`], as
/// the CLI's `verify` and `run` use it) uploads ternary or binary weights as ternary2
/// ([`CudaBackend::with_ternary2_weights`]); unset, empty or `0`: i8x4 words.
pub const TERNARY2_ENV: &str = "LOWBIT_CUDA_TERNARY2";

/// Opens CUDA device 0 as a [`crate::Backend`] (ternary2 weights per [`TERNARY2_ENV`]).
pub fn open_default() -> Result<Box<dyn Backend>> {
    let t2 = device::env_switch(TERNARY2_ENV, false)?;
    Ok(Box::new(CudaBackend::new(0)?.with_ternary2_weights(t2)))
}

/// The host-slice backend over one [`CudaDevice`]: upload, run, download. Outputs are
/// poisoned (NaN / `POISON_U32`) before each launch, so an element left unwritten shows.
#[derive(Debug)]
pub struct CudaBackend {
    dev: CudaDevice,
    ternary2: bool,
}

impl CudaBackend {
    /// Opens CUDA device `ordinal` ([`CudaDevice::new`]), with i8x4 weights.
    pub fn new(ordinal: usize) -> Result<Self> {
        Ok(Self::from_device(CudaDevice::new(ordinal)?))
    }
    /// Wraps an opened device, with i8x4 weights.
    pub fn from_device(dev: CudaDevice) -> Self {
        Self {
            dev,
            ternary2: false,
        }
    }
    /// Uploads weights whose lanes are all in {-1, 0, 1} (ternary or binary) as ternary2
    /// fragments ([`DeviceWeights::Ternary2`]) for the integer paths, on devices with the
    /// int8 tensor cores; other weights go up as i8x4 words.
    pub fn with_ternary2_weights(mut self, on: bool) -> Self {
        self.ternary2 = on && self.dev.caps().int8_mma;
        self
    }
    /// Whether [`CudaBackend::with_ternary2_weights`] is in effect.
    pub fn ternary2_weights(&self) -> bool {
        self.ternary2
    }
    /// The device, for its device-resident API and settings.
    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    fn poisoned<T: DeviceRepr + Copy>(&self, n: usize, v: T) -> Result<CudaSlice<T>> {
        self.dev.upload(&vec![v; n])
    }

    fn scale_one(&self, v: f32) -> Result<CudaSlice<f32>> {
        self.dev.upload(&[v])
    }

    fn download_one(&self, buf: &CudaSlice<f32>) -> Result<f32> {
        let v = self.dev.download(buf)?;
        v.first().copied().ok_or_else(|| LowbitError::Driver {
            backend: BackendKind::Cuda,
            context: "download scale".into(),
            message: "empty scale buffer".into(),
        })
    }
}

/// A host scale source turned into a device one; `buf` holds the uploaded/computed scale.
enum HostScale {
    Param(f32),
    Buffer(CudaSlice<f32>),
    Compute(CudaSlice<f32>),
}

impl HostScale {
    fn new(be: &CudaBackend, op: &'static str, scale: ScaleSource) -> Result<Self> {
        Ok(match scale {
            ScaleSource::Param(v) => {
                check_scale(op, "activation scale", v)?;
                Self::Param(v)
            }
            ScaleSource::Buffer(v) => {
                check_scale(op, "activation scale", v)?;
                Self::Buffer(be.scale_one(v)?)
            }
            ScaleSource::Compute => Self::Compute(be.poisoned(1, POISON_F32)?),
        })
    }
    fn device(&mut self) -> DeviceScale<'_> {
        match self {
            Self::Param(v) => DeviceScale::Param(*v),
            Self::Buffer(b) => DeviceScale::Buffer(b),
            Self::Compute(b) => DeviceScale::Compute(b),
        }
    }
    /// The scale that was used (downloaded when computed on the device).
    fn value(&self, be: &CudaBackend, op: &'static str) -> Result<f32> {
        match self {
            Self::Param(v) => Ok(*v),
            Self::Buffer(b) => be.download_one(b),
            Self::Compute(b) => {
                let s = be.download_one(b)?;
                check_scale(op, "computed activation scale (2*mean overflows f32?)", s)?;
                Ok(s)
            }
        }
    }
}

/// A placeholder raw scale, for validating a host request before anything is uploaded.
fn raw_scale_of(scale: ScaleSource) -> RawScale {
    match scale {
        ScaleSource::Param(v) => RawScale::Param(v),
        ScaleSource::Buffer(v) => RawScale::Param(v),
        ScaleSource::Compute => RawScale::Compute(1),
    }
}

fn check_len<T>(op: &'static str, what: &'static str, data: &[T], n: usize) -> Result<()> {
    if data.len() == n {
        Ok(())
    } else {
        Err(LowbitError::len(op, what, n, data.len()))
    }
}

enum Uploaded {
    Packed(CudaSlice<u32>),
    Codes(CudaSlice<i32>),
    F32(CudaSlice<f32>),
}

impl Uploaded {
    fn act(&self) -> DeviceAct<'_> {
        match self {
            Self::Packed(b) => DeviceAct::Packed(b),
            Self::Codes(b) => DeviceAct::Codes(b),
            Self::F32(b) => DeviceAct::F32(b),
        }
    }
}

impl CudaBackend {
    /// Validates and uploads a projection's input; `elems`/`words` are the shape's lengths,
    /// `k` its elements per row.
    fn upload_input(
        &self,
        op: &'static str,
        input: ActInput<'_>,
        format: LowBitActivationFormat,
        (elems, k, words): (usize, usize, usize),
    ) -> Result<Uploaded> {
        match input {
            ActInput::Packed(w) => check_len(op, "input words", w, words)
                .and_then(|()| check_packed_activations(op, w, k, format.qmax().unwrap_or(0))),
            ActInput::Codes(c) => {
                check_len(op, "input codes", c, elems)?;
                check_activation_codes(op, c, format)
            }
            ActInput::F32(x) => {
                check_len(op, "input", x, elems)?;
                check_finite(op, "input", x)
            }
        }?;
        Ok(match input {
            ActInput::Packed(w) => Uploaded::Packed(self.dev.upload(w)?),
            ActInput::Codes(c) => Uploaded::Codes(self.dev.upload(c)?),
            ActInput::F32(x) => Uploaded::F32(self.dev.upload(x)?),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn project(
        &self,
        op: &'static str,
        args: &ProjectionArgs<'_>,
        (elems, k, words): (usize, usize, usize),
        w_words: usize,
        w_layout: (usize, usize, usize),
        out_len: usize,
        acc: impl Fn(u32, u32) -> Result<()>,
        run: impl FnOnce(
            &CudaDevice,
            DeviceAct<'_>,
            DeviceScale<'_>,
            DeviceWeights<'_>,
            DeviceOut<'_>,
        ) -> Result<()>,
    ) -> Result<ProjectionOutput> {
        let kind = match args.input {
            ActInput::Packed(_) => launch::InputKind::Packed,
            ActInput::Codes(_) => launch::InputKind::Codes,
            ActInput::F32(_) => launch::InputKind::F32,
        };
        let path = launch::validate_projection(
            op,
            kind,
            args.format,
            raw_scale_of(args.scale),
            args.w_scale,
            args.w_qmax,
            args.epilogue,
            acc,
        )?;
        check_len(op, "weight words", args.w_words, w_words)?;
        let input = self.upload_input(op, args.input, args.format, (elems, k, words))?;
        // Ternary2 when asked for, on the integer paths, and every lane is ternary.
        let (heads, rows, cols) = w_layout;
        let t2 = (self.ternary2 && path != launch::Path::Float)
            .then(|| crate::pack::pack_ternary2_fragments(args.w_words, heads, rows, cols).ok())
            .flatten();
        let w = self.dev.upload(t2.as_deref().unwrap_or(args.w_words))?;
        let w = if t2.is_some() {
            DeviceWeights::Ternary2(&w)
        } else {
            DeviceWeights::Words(&w)
        };
        let float = path == launch::Path::Float;
        let mut scale = if float {
            HostScale::Param(1.0)
        } else {
            HostScale::new(self, op, args.scale)?
        };
        let values = match args.epilogue.dtype {
            OutputDType::F32 => {
                let mut out = self.poisoned(out_len, POISON_F32)?;
                run(
                    &self.dev,
                    input.act(),
                    scale.device(),
                    w,
                    DeviceOut::F32(&mut out),
                )?;
                self.dev.download(&out)?
            }
            dtype => {
                // 0xFFFF is a NaN in both f16 and bf16: the poison.
                let mut out = self.poisoned(out_len, 0xFFFFu16)?;
                run(
                    &self.dev,
                    input.act(),
                    scale.device(),
                    w,
                    DeviceOut::Bits16(&mut out),
                )?;
                let bits = self.dev.download(&out)?;
                if dtype == OutputDType::F16 {
                    bits.into_iter()
                        .map(|b| half::f16::from_bits(b).to_f32())
                        .collect()
                } else {
                    bits.into_iter()
                        .map(|b| half::bf16::from_bits(b).to_f32())
                        .collect()
                }
            }
        };
        let a_scale = if float { 1.0 } else { scale.value(self, op)? };
        Ok(ProjectionOutput { values, a_scale })
    }
}

impl Backend for CudaBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }

    fn name(&self) -> String {
        self.dev.name()
    }

    fn activation_scale(&self, x: &[f32], format: LowBitActivationFormat) -> Result<f32> {
        const OP: &str = "cuda::activation_scale";
        launch::fmt_code(OP, format)?;
        if x.is_empty() {
            return Err(LowbitError::invalid_shape(OP, &[0], "zero-sized dimension"));
        }
        check_finite(OP, "activations", x)?;
        let xd = self.dev.upload(x)?;
        let mut s = self.poisoned(1, POISON_F32)?;
        self.dev.absmean_scale(&xd, format, &mut s)?;
        let v = self.download_one(&s)?;
        check_scale(OP, "activation scale (2*mean overflows f32)", v)?;
        Ok(v)
    }

    fn quantize_codes(
        &self,
        x: &[f32],
        format: LowBitActivationFormat,
        scale: ScaleSource,
    ) -> Result<(Vec<i32>, f32)> {
        const OP: &str = "cuda::quantize_codes";
        launch::fmt_code(OP, format)?;
        if x.is_empty() {
            return Err(LowbitError::invalid_shape(OP, &[0], "zero-sized dimension"));
        }
        check_finite(OP, "activations", x)?;
        let mut hs = HostScale::new(self, OP, scale)?;
        let xd = self.dev.upload(x)?;
        let mut codes = self.poisoned(x.len(), POISON_U32 as i32)?;
        self.dev
            .quantize_codes(&xd, format, hs.device(), &mut codes)?;
        let c = self.dev.download(&codes)?;
        Ok((c, hs.value(self, OP)?))
    }

    fn quantize_pack_i8x4(
        &self,
        x: &[f32],
        shape: QuantizeShape,
        format: LowBitActivationFormat,
        scale: ScaleSource,
    ) -> Result<(Vec<u32>, f32)> {
        const OP: &str = "cuda::quantize_pack_i8x4";
        QuantizeShape::new(shape.rows, shape.k)?;
        check_signed_packable(OP, format)?;
        check_len(OP, "activations", x, shape.len())?;
        check_finite(OP, "activations", x)?;
        let mut hs = HostScale::new(self, OP, scale)?;
        let xd = self.dev.upload(x)?;
        let mut words = self.poisoned(shape.words_len(), POISON_U32)?;
        self.dev
            .quantize_pack_i8x4(&xd, shape, format, hs.device(), &mut words)?;
        let w = self.dev.download(&words)?;
        Ok((w, hs.value(self, OP)?))
    }

    fn lowrank(&self, shape: &LowrankShape, args: &ProjectionArgs<'_>) -> Result<ProjectionOutput> {
        shape.validate()?;
        let (format, w_scale, w_qmax, ep) = (args.format, args.w_scale, args.w_qmax, args.epilogue);
        self.project(
            "cuda::lowrank",
            args,
            (shape.x_len(), shape.embd, shape.x_words_len()),
            shape.w_words_len(),
            (shape.heads, shape.k_words(), shape.latent),
            shape.out_len(),
            |qa, qw| shape.check_accumulator(qa, qw),
            |dev, act, scale, w, out| {
                dev.lowrank(shape, act, format, scale, w, w_scale, w_qmax, ep, out)
            },
        )
    }

    fn decoder_tail(
        &self,
        shape: &DecoderTailShape,
        args: &ProjectionArgs<'_>,
    ) -> Result<ProjectionOutput> {
        shape.validate()?;
        let (format, w_scale, w_qmax, ep) = (args.format, args.w_scale, args.w_qmax, args.epilogue);
        self.project(
            "cuda::decoder_tail",
            args,
            (shape.y_len(), shape.latent, shape.y_words_len()),
            shape.w_words_len(),
            (shape.heads, shape.w_head_words(), shape.dim),
            shape.out_len(),
            |qa, qw| shape.check_accumulator(qa, qw),
            |dev, act, scale, w, out| {
                dev.decoder_tail(shape, act, format, scale, w, w_scale, w_qmax, ep, out)
            },
        )
    }

    fn rho_int8_pack(&self, shape: &RhoShape, values: &[f32]) -> Result<(Vec<u32>, Vec<f32>)> {
        const OP: &str = "cuda::rho_int8_pack";
        RhoShape::new(shape.logical_shape)?;
        check_len(OP, "rho values", values, shape.len())?;
        check_finite(OP, "rho values", values)?;
        let v = self.dev.upload(values)?;
        let mut words = self.poisoned(shape.int8_words(), POISON_U32)?;
        let mut scales = self.poisoned(shape.blocks(), POISON_F32)?;
        self.dev.rho_int8_pack(shape, &v, &mut words, &mut scales)?;
        Ok((self.dev.download(&words)?, self.dev.download(&scales)?))
    }

    fn rho_int8_unpack(&self, shape: &RhoShape, words: &[u32], scales: &[f32]) -> Result<Vec<f32>> {
        const OP: &str = "cuda::rho_int8_unpack";
        shape.check_int8_state(OP, words.len(), scales.len())?;
        let w = self.dev.upload(words)?;
        let s = self.dev.upload(scales)?;
        let mut out = self.poisoned(shape.len(), POISON_F32)?;
        self.dev.rho_int8_unpack(shape, &w, &s, &mut out)?;
        self.dev.download(&out)
    }
}
