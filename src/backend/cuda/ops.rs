//! The device-resident op API: buffers in, buffers out, all queued on the device's stream.
//! Every check (context, lengths, formats, overflow) runs before anything is launched.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::device::CudaDevice;
use super::launch::{RawAct, RawScale, RawWeights};
use crate::config::LowBitActivationFormat;
use crate::error::{LowbitError, Result};
use crate::ops::quantize::QuantizeShape;
use crate::ops::rho::RhoShape;
use crate::ops::{DecoderTailShape, Epilogue, LowrankShape, OutputDType};

/// Activations on the device.
#[derive(Clone, Copy, Debug)]
pub enum DeviceAct<'a> {
    /// Signed i8x4 words `[rows, ceil(K/4)]` (int8/int4 only): lanes within ±qmax, padding
    /// lanes past K zero (the host-slice API checks,
    /// [`crate::ops::check_packed_activations`]; the device API trusts them).
    Packed(&'a CudaSlice<u32>),
    /// i32 codes `[rows, K]` (uint8pos included).
    Codes(&'a CudaSlice<i32>),
    /// f32 values `[rows, K]`: quantized inside the kernel, or the float path for `Fp16`.
    F32(&'a CudaSlice<f32>),
}

/// The activation scale of a device op.
#[derive(Debug)]
pub enum DeviceScale<'a> {
    /// By value (host scale).
    Param(f32),
    /// A one-float device buffer (device scale produced elsewhere).
    Buffer(&'a CudaSlice<f32>),
    /// Computed on the device from the f32 input (absmean) and written to this buffer.
    Compute(&'a mut CudaSlice<f32>),
}

/// Projection weights on the device.
#[derive(Clone, Copy, Debug)]
pub enum DeviceWeights<'a> {
    /// i8x4 words (`[H, ceil(D/4), N]` / `[H·ceil(Lart/4), D]`), any weight format.
    Words(&'a CudaSlice<u32>),
    /// Ternary (or binary) weights at 2 bits in the fragment layout of
    /// [`crate::pack::pack_ternary2_fragments`] (`w_ternary2_len()` words, a quarter of the
    /// bytes): the int8 tensor-core small-M kernel at any M (sm_80+), or the warpgroup-mma
    /// kernels at M > 16 on sm_90.
    Ternary2(&'a CudaSlice<u32>),
}

impl<'a> From<&'a CudaSlice<u32>> for DeviceWeights<'a> {
    fn from(w: &'a CudaSlice<u32>) -> Self {
        Self::Words(w)
    }
}

/// Output buffer of a projection: f32, or the bits of f16/bf16 (per the epilogue's dtype).
#[derive(Debug)]
pub enum DeviceOut<'a> {
    /// f32 values (epilogue dtype `F32`).
    F32(&'a mut CudaSlice<f32>),
    /// f16 or bf16 bits, as the epilogue says.
    Bits16(&'a mut CudaSlice<u16>),
}

impl CudaDevice {
    /// Checks `out` against the epilogue and length; returns its raw address and guard.
    fn out_ptr<'b>(
        &'b self,
        op: &'static str,
        out: &'b mut DeviceOut<'_>,
        epilogue: Epilogue,
        n: usize,
    ) -> Result<(u64, cudarc::driver::SyncOnDrop<'b>)> {
        match (out, epilogue.dtype) {
            (DeviceOut::F32(b), OutputDType::F32) => {
                self.check_slice(op, "output", b)?;
                expect_len(op, "output", b, n)?;
                Ok(b.device_ptr_mut(&self.stream))
            }
            (DeviceOut::Bits16(b), OutputDType::F16 | OutputDType::Bf16) => {
                self.check_slice(op, "output", b)?;
                expect_len(op, "output", b, n)?;
                Ok(b.device_ptr_mut(&self.stream))
            }
            (_, dtype) => Err(LowbitError::InvalidArgument {
                op,
                what: "output",
                reason: format!("output buffer type does not match the {dtype:?} epilogue"),
            }),
        }
    }
}

fn expect_len<T>(op: &'static str, what: &'static str, buf: &CudaSlice<T>, n: usize) -> Result<()> {
    if buf.len() == n {
        Ok(())
    } else {
        Err(LowbitError::len(op, what, n, buf.len()))
    }
}

impl CudaDevice {
    fn check_scale_buf(&self, op: &'static str, scale: &DeviceScale<'_>) -> Result<()> {
        match scale {
            DeviceScale::Param(_) => Ok(()),
            DeviceScale::Buffer(b) => {
                self.check_slice(op, "scale buffer", b)?;
                expect_len(op, "scale buffer", b, 1)
            }
            DeviceScale::Compute(b) => {
                self.check_slice(op, "scale buffer", b)?;
                expect_len(op, "scale buffer", b, 1)
            }
        }
    }

    fn check_act(
        &self,
        op: &'static str,
        input: &DeviceAct<'_>,
        elems: usize,
        words: usize,
    ) -> Result<()> {
        match input {
            DeviceAct::Packed(b) => {
                self.check_slice(op, "input", b)?;
                expect_len(op, "input words", b, words)
            }
            DeviceAct::Codes(b) => {
                self.check_slice(op, "input", b)?;
                expect_len(op, "input codes", b, elems)
            }
            DeviceAct::F32(b) => {
                self.check_slice(op, "input", b)?;
                expect_len(op, "input", b, elems)
            }
        }
    }

    /// Runs `f` with the raw addresses of `input` and `scale`; cudarc's stream/event tracking
    /// is kept by holding the guards until `f` has queued its launches.
    fn with_act_scale<R>(
        &self,
        input: DeviceAct<'_>,
        scale: DeviceScale<'_>,
        f: impl FnOnce(RawAct, RawScale) -> Result<R>,
    ) -> Result<R> {
        let s = &self.stream;
        let (ap, _ga, act) = match input {
            DeviceAct::Packed(b) => {
                let (p, g) = b.device_ptr(s);
                (p, g, 0)
            }
            DeviceAct::Codes(b) => {
                let (p, g) = b.device_ptr(s);
                (p, g, 1)
            }
            DeviceAct::F32(b) => {
                let (p, g) = b.device_ptr(s);
                (p, g, 2)
            }
        };
        let raw_act = match act {
            0 => RawAct::Packed(ap),
            1 => RawAct::Codes(ap),
            _ => RawAct::F32(ap),
        };
        match scale {
            DeviceScale::Param(v) => f(raw_act, RawScale::Param(v)),
            DeviceScale::Buffer(b) => {
                let (p, _g) = b.device_ptr(s);
                f(raw_act, RawScale::Buffer(p))
            }
            DeviceScale::Compute(b) => {
                let (p, _g) = b.device_ptr_mut(s);
                f(raw_act, RawScale::Compute(p))
            }
        }
    }

    /// Absmean activation scale of `x` into the one-float buffer `out`.
    pub fn absmean_scale(
        &self,
        x: &CudaSlice<f32>,
        format: LowBitActivationFormat,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "cuda::absmean_scale";
        self.check_slice(OP, "x", x)?;
        self.check_slice(OP, "scale buffer", out)?;
        expect_len(OP, "scale buffer", out, 1)?;
        let (xp, _gx) = x.device_ptr(&self.stream);
        let (op, _go) = out.device_ptr_mut(&self.stream);
        // SAFETY: both buffers are of this context with the lengths checked above.
        unsafe { self.absmean_scale_raw(xp, x.len(), format, op) }
    }

    /// f32 → one i32 code per element.
    pub fn quantize_codes(
        &self,
        x: &CudaSlice<f32>,
        format: LowBitActivationFormat,
        scale: DeviceScale<'_>,
        codes: &mut CudaSlice<i32>,
    ) -> Result<()> {
        const OP: &str = "cuda::quantize_codes";
        self.check_slice(OP, "x", x)?;
        self.check_slice(OP, "codes", codes)?;
        expect_len(OP, "codes", codes, x.len())?;
        self.check_scale_buf(OP, &scale)?;
        let n = x.len();
        let (cp, _gc) = codes.device_ptr_mut(&self.stream);
        self.with_act_scale(DeviceAct::F32(x), scale, |a, s| {
            let RawAct::F32(xp) = a else {
                return Err(internal(OP));
            };
            // SAFETY: buffers of this context, lengths checked above.
            unsafe { self.quantize_codes_raw(xp, n, format, s, cp) }
        })
    }

    /// f32 `[rows, k]` → signed i8x4 words `[rows, ceil(k/4)]` (int8/int4).
    pub fn quantize_pack_i8x4(
        &self,
        x: &CudaSlice<f32>,
        shape: QuantizeShape,
        format: LowBitActivationFormat,
        scale: DeviceScale<'_>,
        words: &mut CudaSlice<u32>,
    ) -> Result<()> {
        const OP: &str = "cuda::quantize_pack_i8x4";
        crate::ops::quantize::check_signed_packable(OP, format)?;
        self.check_slice(OP, "x", x)?;
        self.check_slice(OP, "words", words)?;
        expect_len(OP, "x", x, shape.len())?;
        expect_len(OP, "words", words, shape.words_len())?;
        self.check_scale_buf(OP, &scale)?;
        let (wp, _gw) = words.device_ptr_mut(&self.stream);
        self.with_act_scale(DeviceAct::F32(x), scale, |a, s| {
            let RawAct::F32(xp) = a else {
                return Err(internal(OP));
            };
            // SAFETY: buffers of this context, lengths checked above.
            unsafe { self.quantize_pack_i8x4_raw(xp, shape, format, s, wp) }
        })
    }

    /// Low-rank projection into `out` (`shape.out_len()` elements of the epilogue's dtype).
    #[allow(clippy::too_many_arguments)]
    pub fn lowrank<'w>(
        &self,
        shape: &LowrankShape,
        input: DeviceAct<'_>,
        format: LowBitActivationFormat,
        scale: DeviceScale<'_>,
        weights: impl Into<DeviceWeights<'w>>,
        w_scale: f32,
        w_qmax: u32,
        epilogue: Epilogue,
        mut out: DeviceOut<'_>,
    ) -> Result<()> {
        const OP: &str = "cuda::lowrank";
        shape.validate()?;
        self.check_act(OP, &input, shape.x_len(), shape.x_words_len())?;
        self.check_scale_buf(OP, &scale)?;
        let (wbuf, wlen, t2) = match weights.into() {
            DeviceWeights::Words(b) => (b, shape.w_words_len(), false),
            DeviceWeights::Ternary2(b) => (b, shape.w_ternary2_len(), true),
        };
        self.check_slice(OP, "weight words", wbuf)?;
        expect_len(
            OP,
            if t2 {
                "ternary2 weight words"
            } else {
                "weight words"
            },
            wbuf,
            wlen,
        )?;
        let (op, _go) = self.out_ptr(OP, &mut out, epilogue, shape.out_len())?;
        let (wp, _gw) = wbuf.device_ptr(&self.stream);
        let w = if t2 {
            RawWeights::Ternary2(wp)
        } else {
            RawWeights::Words(wp)
        };
        self.with_act_scale(input, scale, |a, s| {
            // SAFETY: every buffer is of this context with the extent its shape needs.
            unsafe {
                self.lowrank_weights_raw(shape, a, format, s, w, w_scale, w_qmax, epilogue, op)
            }
        })
    }

    /// Decoder tail into `out` (`shape.out_len()` elements of the epilogue's dtype).
    #[allow(clippy::too_many_arguments)]
    pub fn decoder_tail<'w>(
        &self,
        shape: &DecoderTailShape,
        input: DeviceAct<'_>,
        format: LowBitActivationFormat,
        scale: DeviceScale<'_>,
        weights: impl Into<DeviceWeights<'w>>,
        w_scale: f32,
        w_qmax: u32,
        epilogue: Epilogue,
        mut out: DeviceOut<'_>,
    ) -> Result<()> {
        const OP: &str = "cuda::decoder_tail";
        shape.validate()?;
        self.check_act(OP, &input, shape.y_len(), shape.y_words_len())?;
        self.check_scale_buf(OP, &scale)?;
        let (wbuf, wlen, t2) = match weights.into() {
            DeviceWeights::Words(b) => (b, shape.w_words_len(), false),
            DeviceWeights::Ternary2(b) => (b, shape.w_ternary2_len(), true),
        };
        self.check_slice(OP, "weight words", wbuf)?;
        expect_len(
            OP,
            if t2 {
                "ternary2 weight words"
            } else {
                "weight words"
            },
            wbuf,
            wlen,
        )?;
        let (op, _go) = self.out_ptr(OP, &mut out, epilogue, shape.out_len())?;
        let (wp, _gw) = wbuf.device_ptr(&self.stream);
        let w = if t2 {
            RawWeights::Ternary2(wp)
        } else {
            RawWeights::Words(wp)
        };
        self.with_act_scale(input, scale, |a, s| {
            // SAFETY: every buffer is of this context with the extent its shape needs.
            unsafe {
                self.decoder_tail_weights_raw(shape, a, format, s, w, w_scale, w_qmax, epilogue, op)
            }
        })
    }

    /// Rho int8 block pack: `values` (`shape.len()`) → `words` (`int8_words()`), `scales`
    /// (`blocks()`).
    pub fn rho_int8_pack(
        &self,
        shape: &RhoShape,
        values: &CudaSlice<f32>,
        words: &mut CudaSlice<u32>,
        scales: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "cuda::rho_int8_pack";
        self.check_slice(OP, "values", values)?;
        self.check_slice(OP, "words", words)?;
        self.check_slice(OP, "scales", scales)?;
        expect_len(OP, "rho values", values, shape.len())?;
        expect_len(OP, "rho words", words, shape.int8_words())?;
        expect_len(OP, "rho scales", scales, shape.blocks())?;
        let (vp, _gv) = values.device_ptr(&self.stream);
        let (wp, _gw) = words.device_ptr_mut(&self.stream);
        let (sp, _gs) = scales.device_ptr_mut(&self.stream);
        // SAFETY: buffers of this context, lengths checked above.
        unsafe { self.rho_int8_pack_raw(shape, vp, wp, sp) }
    }

    /// Rho int8 block unpack into `out` (`shape.len()` f32).
    pub fn rho_int8_unpack(
        &self,
        shape: &RhoShape,
        words: &CudaSlice<u32>,
        scales: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "cuda::rho_int8_unpack";
        self.check_slice(OP, "words", words)?;
        self.check_slice(OP, "scales", scales)?;
        self.check_slice(OP, "out", out)?;
        expect_len(OP, "rho words", words, shape.int8_words())?;
        expect_len(OP, "rho scales", scales, shape.blocks())?;
        expect_len(OP, "rho out", out, shape.len())?;
        let (wp, _gw) = words.device_ptr(&self.stream);
        let (sp, _gs) = scales.device_ptr(&self.stream);
        let (op, _go) = out.device_ptr_mut(&self.stream);
        // SAFETY: buffers of this context, lengths checked above.
        unsafe { self.rho_int8_unpack_raw(shape, wp, sp, op) }
    }
}

fn internal(op: &'static str) -> LowbitError {
    LowbitError::InvalidArgument {
        op,
        what: "input",
        reason: "internal: f32 input expected".into(),
    }
}
