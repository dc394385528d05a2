//! Device-resident ops: every input and output is a [`GpuBuffer`] on the same
//! [`WgpuDevice`]; nothing goes through the host. Every check runs before anything is
//! allocated or launched; the launches of one op go in one compute pass and one submission.

use bytemuck::{Pod, Zeroable};

use super::buffer::{DeviceOutput, GpuBuffer};
use super::device::{F32Route, Launch, TileConfig, WgpuDevice};
use crate::config::LowBitActivationFormat;
use crate::error::{BackendKind, LowbitError, Result};
use crate::kernels::KernelId;
use crate::ops::quantize::{QuantizeShape, check_signed_packable};
use crate::ops::rho::{RHO_BLOCK_SIZE, RhoShape};
use crate::ops::{DecoderTailShape, Epilogue, LowrankShape, OutputDType};
use crate::quant::{EPS, check_scale, check_weight_qmax};

/// Invocations per workgroup of the element-wise and reduction kernels (quantize, rho,
/// decoder_reduce).
const WG: u32 = 256;
/// Elements per invocation of the absmean partial pass.
const ABSMEAN_ITEMS: u32 = 16;
/// Float-path tile edge (lowrank_float / decoder_float).
const FLOAT_TILE: u32 = 64;
/// `F32Route::Auto` quantizes f32 input in a separate pass once this many workgroups would
/// each quantize the same rows (column tiles × heads).
const F32_PREPACK_READERS: u32 = 8;
/// Workgroups the split-K decoder aims for (enough waves for a large GPU).
const DECODER_TARGET_GROUPS: u32 = 1024;

/// The activation scale of a device op.
#[derive(Clone, Copy, Debug)]
pub enum DeviceScale<'a> {
    /// Given on the host; passed in the params uniform.
    Host(f32),
    /// Read by the kernel from element 0 of this one-element buffer.
    Buffer(&'a GpuBuffer<f32>),
    /// f32 input only: the absmean reduction writes the scale into this one-element buffer
    /// first (same submission), then the op reads it from there.
    Compute(&'a GpuBuffer<f32>),
}

/// Activation input of a projection on the device.
#[derive(Clone, Copy, Debug)]
pub enum DeviceAct<'a> {
    /// Signed i8x4 words `[rows, ceil(K/4)]` (int8/int4): lanes within ±qmax, padding lanes
    /// past K zero (the host-slice API checks, [`crate::ops::check_packed_activations`]; the
    /// device API trusts them).
    Packed(&'a GpuBuffer<u32>),
    /// i32 codes `[rows, K]` of any integer format (uint8pos included). Codes must lie in
    /// the format's range (the host-slice API checks; the device API trusts them).
    Codes(&'a GpuBuffer<i32>),
    /// f32 values `[rows, K]`, quantized inside the projection kernel (finite values; the
    /// host-slice API checks).
    F32(&'a GpuBuffer<f32>),
}

/// Packed weight words on the device with their scale and largest |code|.
#[derive(Clone, Debug)]
pub struct DeviceWeights {
    /// Packed i8x4 words: `[H, ceil(D/4), N]` (low-rank projection) or `[H·ceil(Lart/4), D]`
    /// (decoder tail).
    pub words: GpuBuffer<u32>,
    /// Per-tensor weight scale (absmean); finite and > 0.
    pub scale: f32,
    /// 1 for ternary/binary, 127 for int8 (at most 127: codes are signed lanes).
    pub qmax: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct QuantParams {
    len: u32,
    k: u32,
    k_words: u32,
    count: u32,
    qmax: f32,
    scale: f32,
    _pad: [u32; 2],
}

/// Params of lowrank.wgsl (the first 12 fields) and decoder_tail.wgsl (all).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct GemmParams {
    m: u32,
    n_out: u32,
    k_words: u32,
    k_elems: u32,
    time: u32,
    in_heads: u32,
    heads: u32,
    ldw: u32,
    w_scale: f32,
    a_scale: f32,
    qmax: f32,
    tile_y0: u32,
    splits: u32,
    chunk: u32,
    w_head_words: u32,
    planes: u32,
    count: u32,
    words: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct RhoParams {
    len: u32,
    blocks: u32,
    words: u32,
    _pad: u32,
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

fn bytes_of<T: Pod>(t: &T) -> Vec<u8> {
    bytemuck::bytes_of(t).to_vec()
}

fn unsupported(op: &'static str, reason: impl Into<String>) -> LowbitError {
    LowbitError::Unsupported {
        backend: BackendKind::Wgpu,
        op,
        reason: reason.into(),
    }
}

fn to_u32(op: &'static str, what: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| unsupported(op, format!("{what} = {v} does not fit u32")))
}

/// How the scale reaches a kernel: the `*_SCALE_DEVICE` override, the host value and the
/// buffer bound at the scale slot.
struct ScalePlan<'a> {
    device: bool,
    host: f32,
    buffer: &'a wgpu::Buffer,
    compute: Option<&'a GpuBuffer<f32>>,
}

/// Scratch of the absmean reduction (one double-float partial per workgroup).
struct AbsmeanScratch {
    partials: GpuBuffer<[f32; 2]>,
    groups: u32,
}

/// Workgroup columns × rows of one GEMM launch set.
#[derive(Clone, Copy, Debug)]
struct Grid {
    nx: u32,
    ny: u32,
}

impl WgpuDevice {
    // ---- helpers ----

    /// A 1D count of workgroups as a 2D grid (x ≤ the per-dimension limit).
    fn grid_1d(&self, op: &'static str, groups: u32) -> Result<[u32; 3]> {
        let max = self
            .inner
            .limits
            .max_compute_workgroups_per_dimension
            .max(1);
        let x = groups.clamp(1, max);
        let y = groups.div_ceil(x);
        if y > max {
            return Err(unsupported(
                op,
                format!("{groups} workgroups exceed a {max}² grid"),
            ));
        }
        Ok([x, y, 1])
    }

    fn check_scale_buffer(&self, op: &'static str, b: &GpuBuffer<f32>) -> Result<()> {
        self.check_own(op, "scale buffer", b)?;
        b.check_len(op, "scale buffer", 1)
    }

    /// Validates `scale` for an op on `f32_input` (or codes/words) and plans its binding.
    fn plan_scale<'a>(
        &'a self,
        op: &'static str,
        scale: DeviceScale<'a>,
        f32_input: bool,
    ) -> Result<ScalePlan<'a>> {
        match scale {
            DeviceScale::Host(s) => {
                check_scale(op, "activation scale", s)?;
                Ok(ScalePlan {
                    device: false,
                    host: s,
                    buffer: self.dummy(),
                    compute: None,
                })
            }
            DeviceScale::Buffer(b) => {
                self.check_scale_buffer(op, b)?;
                Ok(ScalePlan {
                    device: true,
                    host: 1.0,
                    buffer: &b.buffer,
                    compute: None,
                })
            }
            DeviceScale::Compute(b) => {
                if !f32_input {
                    return Err(LowbitError::InvalidArgument {
                        op,
                        what: "scale",
                        reason: "a computed scale needs f32 input; codes and packed input need \
                                 a given scale"
                            .into(),
                    });
                }
                self.check_scale_buffer(op, b)?;
                Ok(ScalePlan {
                    device: true,
                    host: 1.0,
                    buffer: &b.buffer,
                    compute: Some(b),
                })
            }
        }
    }

    fn absmean_scratch(&self, op: &'static str, len: usize) -> Result<AbsmeanScratch> {
        let groups = to_u32(
            op,
            "absmean workgroups",
            len.div_ceil((WG * ABSMEAN_ITEMS) as usize),
        )?;
        Ok(AbsmeanScratch {
            partials: self.scratch("absmean partials", groups as usize)?,
            groups,
        })
    }

    /// The two absmean passes: per-workgroup partials, then one workgroup folding them.
    fn absmean_launches<'a>(
        &self,
        op: &'static str,
        x: &'a GpuBuffer<f32>,
        format: LowBitActivationFormat,
        scratch: &'a AbsmeanScratch,
        out: &'a GpuBuffer<f32>,
    ) -> Result<[Launch<'a>; 2]> {
        let qmax = format.qmax().ok_or_else(|| {
            LowbitError::unsupported_format(op, format, "the float path has no scale")
        })?;
        let params = QuantParams {
            len: to_u32(op, "elements", x.len())?,
            count: scratch.groups,
            qmax: qmax as f32,
            ..Default::default()
        };
        let unsigned = format == LowBitActivationFormat::Uint8PosExp;
        let constants = |pass: u32| {
            vec![
                ("WG", f64::from(WG)),
                ("ITEMS", f64::from(ABSMEAN_ITEMS)),
                ("PASS", f64::from(pass)),
                ("A_UNSIGNED", flag(unsigned)),
                ("EPS", f64::from(EPS)),
            ]
        };
        let buffers: Vec<(u32, &wgpu::Buffer)> = vec![
            (1, &x.buffer),
            (2, &scratch.partials.buffer),
            (3, &out.buffer),
        ];
        Ok([
            Launch {
                kernel: KernelId::AbsmeanScale,
                constants: constants(0),
                params: bytes_of(&params),
                buffers: buffers.clone(),
                groups: self.grid_1d(op, scratch.groups)?,
            },
            Launch {
                kernel: KernelId::AbsmeanScale,
                constants: constants(1),
                params: bytes_of(&params),
                buffers,
                groups: [1, 1, 1],
            },
        ])
    }

    fn check_x(&self, op: &'static str, x: &GpuBuffer<f32>) -> Result<()> {
        self.check_own(op, "activations", x)?;
        if x.is_empty() {
            return Err(LowbitError::invalid_shape(op, &[0], "zero-sized input"));
        }
        self.check_binding(op, "activations", x.byte_len())
    }

    // ---- quantize ----

    /// Absmean activation scale of `x` into the one-element buffer `out`.
    pub fn activation_scale_into(
        &self,
        x: &GpuBuffer<f32>,
        format: LowBitActivationFormat,
        out: &GpuBuffer<f32>,
    ) -> Result<()> {
        const OP: &str = "wgpu::activation_scale";
        self.check_x(OP, x)?;
        self.check_scale_buffer(OP, out)?;
        if format.qmax().is_none() {
            return Err(LowbitError::unsupported_format(
                OP,
                format,
                "the float path has no scale",
            ));
        }
        let scratch = self.absmean_scratch(OP, x.len())?;
        let launches = self.absmean_launches(OP, x, format, &scratch, out)?;
        self.run(OP, &launches)
    }

    /// Absmean activation scale of `x` in a new one-element buffer.
    pub fn activation_scale(
        &self,
        x: &GpuBuffer<f32>,
        format: LowBitActivationFormat,
    ) -> Result<GpuBuffer<f32>> {
        if format.qmax().is_none() {
            return Err(LowbitError::unsupported_format(
                "wgpu::activation_scale",
                format,
                "the float path has no scale",
            ));
        }
        let out = self.alloc(1)?;
        self.activation_scale_into(x, format, &out)?;
        Ok(out)
    }

    /// One i32 code per element of `x` into `out` (any integer format).
    pub fn quantize_codes_into(
        &self,
        x: &GpuBuffer<f32>,
        format: LowBitActivationFormat,
        scale: DeviceScale<'_>,
        out: &GpuBuffer<i32>,
    ) -> Result<()> {
        const OP: &str = "wgpu::quantize_codes";
        self.check_x(OP, x)?;
        self.check_own(OP, "codes", out)?;
        out.check_len(OP, "codes", x.len())?;
        let qmax = format.qmax().ok_or_else(|| {
            LowbitError::unsupported_format(OP, format, "the float path has no codes")
        })?;
        let plan = self.plan_scale(OP, scale, true)?;
        let scratch = match plan.compute {
            Some(_) => Some(self.absmean_scratch(OP, x.len())?),
            None => None,
        };
        let len = to_u32(OP, "elements", x.len())?;
        let mut launches = Vec::new();
        if let (Some(s), Some(sb)) = (&scratch, plan.compute) {
            launches.extend(self.absmean_launches(OP, x, format, s, sb)?);
        }
        launches.push(Launch {
            kernel: KernelId::QuantizeCodes,
            constants: vec![
                ("WG", f64::from(WG)),
                (
                    "A_UNSIGNED",
                    flag(format == LowBitActivationFormat::Uint8PosExp),
                ),
                ("SCALE_DEVICE", flag(plan.device)),
                ("EPS", f64::from(EPS)),
            ],
            params: bytes_of(&QuantParams {
                len,
                qmax: qmax as f32,
                scale: plan.host,
                ..Default::default()
            }),
            buffers: vec![(1, &x.buffer), (3, plan.buffer), (4, &out.buffer)],
            groups: self.grid_1d(OP, len.div_ceil(WG))?,
        });
        self.run(OP, &launches)
    }

    /// [`WgpuDevice::quantize_codes_into`] into a new buffer.
    pub fn quantize_codes(
        &self,
        x: &GpuBuffer<f32>,
        format: LowBitActivationFormat,
        scale: DeviceScale<'_>,
    ) -> Result<GpuBuffer<i32>> {
        if x.is_empty() {
            return Err(LowbitError::invalid_shape(
                "wgpu::quantize_codes",
                &[0],
                "zero-sized input",
            ));
        }
        let out = self.alloc(x.len())?;
        self.quantize_codes_into(x, format, scale, &out)?;
        Ok(out)
    }

    /// Quantize `x` (`rows × k`) and pack along `k` into signed i8x4 words (int8/int4).
    pub fn quantize_pack_i8x4_into(
        &self,
        x: &GpuBuffer<f32>,
        shape: QuantizeShape,
        format: LowBitActivationFormat,
        scale: DeviceScale<'_>,
        out: &GpuBuffer<u32>,
    ) -> Result<()> {
        const OP: &str = "wgpu::quantize_pack_i8x4";
        let qmax = check_signed_packable(OP, format)?;
        QuantizeShape::new(shape.rows, shape.k)?;
        self.check_x(OP, x)?;
        x.check_len(OP, "activations", shape.len())?;
        self.check_own(OP, "packed words", out)?;
        out.check_len(OP, "packed words", shape.words_len())?;
        self.check_binding(OP, "packed words", out.byte_len())?;
        let plan = self.plan_scale(OP, scale, true)?;
        let scratch = match plan.compute {
            Some(_) => Some(self.absmean_scratch(OP, x.len())?),
            None => None,
        };
        let count = to_u32(OP, "words", shape.words_len())?;
        let mut launches = Vec::new();
        if let (Some(s), Some(sb)) = (&scratch, plan.compute) {
            launches.extend(self.absmean_launches(OP, x, format, s, sb)?);
        }
        launches.push(Launch {
            kernel: KernelId::QuantizePack,
            constants: vec![
                ("WG", f64::from(WG)),
                ("SCALE_DEVICE", flag(plan.device)),
                ("EPS", f64::from(EPS)),
            ],
            params: bytes_of(&QuantParams {
                len: to_u32(OP, "elements", shape.len())?,
                k: to_u32(OP, "k", shape.k)?,
                k_words: to_u32(OP, "k words", shape.k.div_ceil(4))?,
                count,
                qmax: qmax as f32,
                scale: plan.host,
                ..Default::default()
            }),
            buffers: vec![(1, &x.buffer), (3, plan.buffer), (4, &out.buffer)],
            groups: self.grid_1d(OP, count.div_ceil(WG))?,
        });
        self.run(OP, &launches)
    }

    /// [`WgpuDevice::quantize_pack_i8x4_into`] into a new buffer.
    pub fn quantize_pack_i8x4(
        &self,
        x: &GpuBuffer<f32>,
        shape: QuantizeShape,
        format: LowBitActivationFormat,
        scale: DeviceScale<'_>,
    ) -> Result<GpuBuffer<u32>> {
        check_signed_packable("wgpu::quantize_pack_i8x4", format)?;
        QuantizeShape::new(shape.rows, shape.k)?;
        let out = self.alloc(shape.words_len())?;
        self.quantize_pack_i8x4_into(x, shape, format, scale, &out)?;
        Ok(out)
    }

    // ---- projections ----

    /// Uploads packed weight words with their scale and largest |code|.
    pub fn upload_weights(&self, words: &[u32], scale: f32, qmax: u32) -> Result<DeviceWeights> {
        const OP: &str = "wgpu::upload_weights";
        check_scale(OP, "weight scale", scale)?;
        check_weight_qmax(OP, qmax)?;
        Ok(DeviceWeights {
            words: self.upload(words)?,
            scale,
            qmax,
        })
    }

    /// A new output buffer of `len` elements of `dtype`.
    pub fn alloc_output(&self, dtype: OutputDType, len: usize) -> Result<DeviceOutput> {
        Ok(match dtype {
            OutputDType::F32 => DeviceOutput::F32(self.alloc(len)?),
            OutputDType::F16 => DeviceOutput::F16(self.alloc(len)?),
            OutputDType::Bf16 => DeviceOutput::Bf16(self.alloc(len)?),
        })
    }

    /// Downloads an output widened to f32 (exact for f16/bf16).
    pub fn download_output(&self, out: &DeviceOutput) -> Result<Vec<f32>> {
        Ok(match out {
            DeviceOutput::F32(b) => self.download(b)?,
            DeviceOutput::F16(b) => self.download(b)?.iter().map(|h| h.to_f32()).collect(),
            DeviceOutput::Bf16(b) => self.download(b)?.iter().map(|h| h.to_f32()).collect(),
        })
    }

    /// GEMM tiles for an `m × n` output on this adapter.
    fn tiles_for(&self, op: &'static str, m: usize, n: usize) -> Result<TileConfig> {
        let l = &self.inner.limits;
        let fits = |t: TileConfig| {
            t.wg_x * t.wg_y <= l.max_compute_invocations_per_workgroup
                && t.wg_x <= l.max_compute_workgroup_size_x
                && t.wg_y <= l.max_compute_workgroup_size_y
                && t.workgroup_bytes() <= l.max_compute_workgroup_storage_size
        };
        if let Some(t) = self.inner.tiles {
            return if fits(t) {
                Ok(t)
            } else {
                Err(unsupported(
                    op,
                    format!("tile config {t:?} exceeds this adapter's limits"),
                ))
            };
        }
        let mut t = if m > 64 && n > 64 {
            TileConfig::LARGE
        } else {
            TileConfig::SMALL
        };
        if !fits(TileConfig { bk: 4, ..t }) {
            t = TileConfig::SMALL;
        }
        while !fits(t) && t.bk > 4 {
            t.bk /= 2;
        }
        if fits(t) {
            Ok(t)
        } else {
            Err(unsupported(
                op,
                "even 64×64 tiles exceed this adapter's workgroup limits",
            ))
        }
    }

    /// Whether f32 input goes through a quantize-pack pass first (see [`F32Route`]), given
    /// how many workgroups would quantize each row block.
    fn f32_prepack(&self, readers: u32) -> bool {
        match self.inner.f32_route {
            F32Route::Fused => false,
            F32Route::Prepack => true,
            F32Route::Auto => readers >= F32_PREPACK_READERS,
        }
    }

    /// Quantize-pack launch writing `rows × ceil(k/4)` words of `x` for a packed GEMM;
    /// uint8pos lanes hold code-128 (padding lanes -128), the GEMM's unsigned form.
    #[allow(clippy::too_many_arguments)]
    fn prepack_launch<'a>(
        &self,
        op: &'static str,
        x: &'a GpuBuffer<f32>,
        rows: usize,
        k: usize,
        format: LowBitActivationFormat,
        plan: &ScalePlan<'a>,
        words: &'a GpuBuffer<u32>,
    ) -> Result<Launch<'a>> {
        let count = to_u32(op, "words", rows * k.div_ceil(4))?;
        Ok(Launch {
            kernel: KernelId::QuantizePack,
            constants: vec![
                ("WG", f64::from(WG)),
                (
                    "A_UNSIGNED",
                    flag(format == LowBitActivationFormat::Uint8PosExp),
                ),
                ("SCALE_DEVICE", flag(plan.device)),
                ("EPS", f64::from(EPS)),
            ],
            params: bytes_of(&QuantParams {
                len: to_u32(op, "elements", rows * k)?,
                k: to_u32(op, "k", k)?,
                k_words: to_u32(op, "k words", k.div_ceil(4))?,
                count,
                qmax: format.qmax().unwrap_or(0) as f32,
                scale: plan.host,
                ..Default::default()
            }),
            buffers: vec![(1, &x.buffer), (3, plan.buffer), (4, &words.buffer)],
            groups: self.grid_1d(op, count.div_ceil(WG))?,
        })
    }

    fn gemm_constants(
        &self,
        t: TileConfig,
        unsigned: bool,
        scale_device: bool,
        relu: bool,
        raw_out: bool,
    ) -> Vec<(&'static str, f64)> {
        vec![
            ("WG_X", f64::from(t.wg_x)),
            ("WG_Y", f64::from(t.wg_y)),
            ("BK", f64::from(t.bk)),
            ("DOT4_NATIVE", flag(self.inner.dot4_builtin)),
            ("A_UNSIGNED", flag(unsigned)),
            ("A_SCALE_DEVICE", flag(scale_device)),
            ("RELU", flag(relu)),
            ("RAW_OUT", flag(raw_out)),
            ("EPS", f64::from(EPS)),
        ]
    }

    /// Splits `ny` row tiles into dispatches of at most the per-dimension limit:
    /// `(first tile, tiles)`.
    fn row_chunks(&self, ny: u32) -> Vec<(u32, u32)> {
        let max = self
            .inner
            .limits
            .max_compute_workgroups_per_dimension
            .max(1);
        (0..ny.div_ceil(max))
            .map(|i| (i * max, (ny - i * max).min(max)))
            .collect()
    }

    fn check_weights(&self, op: &'static str, w: &DeviceWeights, words: usize) -> Result<()> {
        check_scale(op, "weight scale", w.scale)?;
        check_weight_qmax(op, w.qmax)?;
        self.check_own(op, "weight words", &w.words)?;
        w.words.check_len(op, "weight words", words)?;
        self.check_binding(op, "weight words", w.words.byte_len())
    }

    fn check_output(
        &self,
        op: &'static str,
        out: &DeviceOutput,
        epilogue: Epilogue,
        len: usize,
    ) -> Result<()> {
        self.check_id(op, "output", out.device_id())?;
        if out.dtype() != epilogue.dtype {
            return Err(LowbitError::InvalidArgument {
                op,
                what: "output",
                reason: format!(
                    "output buffer is {:?}, the epilogue writes {:?}",
                    out.dtype(),
                    epilogue.dtype
                ),
            });
        }
        if out.len() != len {
            return Err(LowbitError::len(op, "output", len, out.len()));
        }
        self.check_binding(op, "output", out.buffer().size())
    }

    /// Checks a projection's activation input (`rows × k` elements, `k_words` per row) and
    /// returns the kernel flavour and whether it is the float path.
    #[allow(clippy::too_many_arguments)]
    /// The checks both projections run before any work (output, weights, activations, then
    /// the scale): the input's flavour and, on the integer paths, the scale plan.
    #[allow(clippy::too_many_arguments)]
    fn check_projection<'a>(
        &'a self,
        op: &'static str,
        input: DeviceAct<'_>,
        format: LowBitActivationFormat,
        scale: DeviceScale<'a>,
        w: &DeviceWeights,
        epilogue: Epilogue,
        out: &DeviceOutput,
        lens: ProjectionLens,
        check_acc: impl Fn(u32) -> Result<()>,
    ) -> Result<(Flavour, Option<ScalePlan<'a>>)> {
        self.check_output(op, out, epilogue, lens.out)?;
        self.check_weights(op, w, lens.weight_words)?;
        let flavour = self.check_act(op, input, format, lens.act, lens.act_words, check_acc)?;
        let plan = match flavour {
            Flavour::Float => None,
            f => Some(self.plan_scale(op, scale, f == Flavour::F32)?),
        };
        Ok((flavour, plan))
    }

    fn check_act(
        &self,
        op: &'static str,
        input: DeviceAct<'_>,
        format: LowBitActivationFormat,
        len: usize,
        words: usize,
        check_acc: impl Fn(u32) -> Result<()>,
    ) -> Result<Flavour> {
        let Some(qmax) = format.qmax() else {
            return match input {
                DeviceAct::F32(x) => {
                    self.check_x(op, x)?;
                    x.check_len(op, "activations", len)?;
                    Ok(Flavour::Float)
                }
                _ => Err(LowbitError::unsupported_format(
                    op,
                    format,
                    "the float path takes f32 input",
                )),
            };
        };
        check_acc(qmax)?;
        match input {
            DeviceAct::Packed(b) => {
                check_signed_packable(op, format)?;
                self.check_own(op, "packed activations", b)?;
                b.check_len(op, "packed activation words", words)?;
                self.check_binding(op, "packed activations", b.byte_len())?;
                Ok(Flavour::Packed)
            }
            DeviceAct::Codes(b) => {
                self.check_own(op, "activation codes", b)?;
                b.check_len(op, "activation codes", len)?;
                self.check_binding(op, "activation codes", b.byte_len())?;
                Ok(Flavour::Codes)
            }
            DeviceAct::F32(x) => {
                self.check_x(op, x)?;
                x.check_len(op, "activations", len)?;
                Ok(Flavour::F32)
            }
        }
    }

    /// Low-rank projection `x[B,Hin,T,D] · W[H,D,N] → out[B,H,T,latent_out]` into `out`
    /// (whose dtype is the epilogue's).
    #[allow(clippy::too_many_arguments)]
    pub fn lowrank_into(
        &self,
        shape: &LowrankShape,
        input: DeviceAct<'_>,
        format: LowBitActivationFormat,
        scale: DeviceScale<'_>,
        w: &DeviceWeights,
        epilogue: Epilogue,
        out: &DeviceOutput,
    ) -> Result<()> {
        const OP: &str = "wgpu::lowrank";
        shape.validate()?;
        let lens = ProjectionLens {
            out: shape.out_len(),
            weight_words: shape.w_words_len(),
            act: shape.x_len(),
            act_words: shape.x_words_len(),
        };
        let (flavour, plan) =
            self.check_projection(OP, input, format, scale, w, epilogue, out, lens, |qa| {
                shape.check_accumulator(qa, w.qmax)
            })?;
        let u = |what, v| to_u32(OP, what, v);
        let m = shape.m();
        let heads = u("heads", shape.heads)?;
        let max = self.inner.limits.max_compute_workgroups_per_dimension;
        if heads > max {
            return Err(unsupported(
                OP,
                format!("{heads} heads exceed {max} workgroups"),
            ));
        }
        let half_out = epilogue.dtype != OutputDType::F32;
        let scratch: Option<GpuBuffer<u32>> = if half_out {
            self.check_binding(OP, "raw accumulators", (shape.out_len() * 4) as u64)?;
            Some(self.scratch("raw accumulators", shape.out_len())?)
        } else {
            None
        };
        let absmean = match plan.as_ref().and_then(|p| p.compute) {
            Some(_) => Some(self.absmean_scratch(OP, shape.x_len())?),
            None => None,
        };
        let mut params = GemmParams {
            m: u("rows", m)?,
            n_out: u("latent_out", shape.latent_out)?,
            k_words: u("k words", shape.k_words())?,
            k_elems: u("D", shape.embd)?,
            time: u("T", shape.time)?,
            in_heads: u("input heads", shape.in_heads)?,
            heads,
            ldw: u("N", shape.latent)?,
            w_scale: w.scale,
            a_scale: plan.as_ref().map_or(1.0, |p| p.host),
            qmax: format.qmax().unwrap_or(0) as f32,
            ..Default::default()
        };
        let scale_device = plan.as_ref().is_some_and(|p| p.device);
        let unsigned = format == LowBitActivationFormat::Uint8PosExp;
        let (mut kernel, constants, tile_m, nx) = match flavour {
            Flavour::Float => (
                KernelId::LowrankFloat,
                vec![("RELU", flag(epilogue.relu)), ("RAW_OUT", flag(half_out))],
                FLOAT_TILE,
                params.n_out.div_ceil(FLOAT_TILE),
            ),
            f => {
                let t = self.tiles_for(OP, m, shape.latent_out)?;
                let kernel = match f {
                    Flavour::Packed => KernelId::LowrankPacked,
                    Flavour::Codes => KernelId::LowrankCodes,
                    _ => KernelId::LowrankF32,
                };
                (
                    kernel,
                    self.gemm_constants(t, unsigned, scale_device, epilogue.relu, half_out),
                    t.bm(),
                    params.n_out.div_ceil(t.bn()),
                )
            }
        };
        // f32 input read by many column tiles (and heads): quantize once into packed words
        // instead of in every workgroup (same codes, same bits).
        let prepack: Option<GpuBuffer<u32>> =
            if flavour == Flavour::F32 && self.f32_prepack(nx.saturating_mul(heads)) {
                self.check_binding(OP, "packed activations", (shape.x_words_len() * 4) as u64)?;
                Some(self.scratch("packed activations", shape.x_words_len())?)
            } else {
                None
            };
        let gemm_out = scratch.as_ref().map_or(out.buffer(), |s| &s.buffer);
        let scale_buf = plan.as_ref().map_or(self.dummy(), |p| p.buffer);
        let mut launches = Vec::new();
        if let (Some(s), Some(p), DeviceAct::F32(x)) = (&absmean, &plan, input)
            && let Some(sb) = p.compute
        {
            launches.extend(self.absmean_launches(OP, x, format, s, sb)?);
        }
        let x_buf = match (&prepack, input, &plan) {
            (Some(words), DeviceAct::F32(x), Some(p)) => {
                launches.push(self.prepack_launch(
                    OP,
                    x,
                    shape.x_len() / shape.embd,
                    shape.embd,
                    format,
                    p,
                    words,
                )?);
                kernel = KernelId::LowrankPacked;
                &words.buffer
            }
            _ => act_buffer(input),
        };
        if nx > max {
            return Err(unsupported(
                OP,
                format!("{nx} column tiles exceed {max} workgroups"),
            ));
        }
        for (y0, ny) in self.row_chunks(params.m.div_ceil(tile_m)) {
            params.tile_y0 = y0;
            launches.push(Launch {
                kernel,
                constants: constants.clone(),
                params: bytes_of(&params),
                buffers: vec![
                    (1, x_buf),
                    (2, &w.words.buffer),
                    (3, scale_buf),
                    (4, gemm_out),
                ],
                groups: [nx, ny, heads],
            });
        }
        if let Some(s) = &scratch {
            launches.push(self.reduce_launch(
                OP,
                &s.buffer,
                1,
                shape.out_len(),
                flavour == Flavour::Float,
                epilogue,
                w.scale,
                plan.as_ref(),
                out.buffer(),
            )?);
        }
        self.run(OP, &launches)
    }

    /// [`WgpuDevice::lowrank_into`] into a new output buffer.
    pub fn lowrank(
        &self,
        shape: &LowrankShape,
        input: DeviceAct<'_>,
        format: LowBitActivationFormat,
        scale: DeviceScale<'_>,
        w: &DeviceWeights,
        epilogue: Epilogue,
    ) -> Result<DeviceOutput> {
        shape.validate()?;
        self.check_binding(
            "wgpu::lowrank",
            "output",
            output_bytes(epilogue.dtype, shape.out_len()),
        )?;
        let out = self.alloc_output(epilogue.dtype, shape.out_len())?;
        self.lowrank_into(shape, input, format, scale, w, epilogue, &out)?;
        Ok(out)
    }

    /// The decoder_reduce launch: sum `planes` planes of `count` partials, epilogue, `out`.
    #[allow(clippy::too_many_arguments)]
    fn reduce_launch<'a>(
        &'a self,
        op: &'static str,
        partials: &'a wgpu::Buffer,
        planes: u32,
        count: usize,
        float: bool,
        epilogue: Epilogue,
        w_scale: f32,
        plan: Option<&ScalePlan<'a>>,
        out: &'a wgpu::Buffer,
    ) -> Result<Launch<'a>> {
        let count_u = to_u32(op, "output elements", count)?;
        let words = match epilogue.dtype {
            OutputDType::F32 => count_u,
            _ => count_u.div_ceil(2),
        };
        let dtype = match epilogue.dtype {
            OutputDType::F32 => 0.0,
            OutputDType::F16 => 1.0,
            OutputDType::Bf16 => 2.0,
        };
        Ok(Launch {
            kernel: KernelId::DecoderReduce,
            constants: vec![
                ("PARTIAL_FLOAT", flag(float)),
                ("OUT_DTYPE", dtype),
                ("RELU", flag(epilogue.relu)),
                ("A_SCALE_DEVICE", flag(plan.is_some_and(|p| p.device))),
            ],
            params: bytes_of(&GemmParams {
                w_scale,
                a_scale: plan.map_or(1.0, |p| p.host),
                planes,
                count: count_u,
                words,
                ..Default::default()
            }),
            buffers: vec![
                (1, self.dummy()),
                (2, self.dummy()),
                (3, plan.map_or(self.dummy(), |p| p.buffer)),
                (4, out),
                (5, partials),
            ],
            groups: self.grid_1d(op, words.div_ceil(WG))?,
        })
    }

    /// Decoder tail `y[B,H,T,L] · W[H·Lart,D]` summed over heads → `out[B,1,T,D]`, into
    /// `out` (whose dtype is the epilogue's).
    #[allow(clippy::too_many_arguments)]
    pub fn decoder_tail_into(
        &self,
        shape: &DecoderTailShape,
        input: DeviceAct<'_>,
        format: LowBitActivationFormat,
        scale: DeviceScale<'_>,
        w: &DeviceWeights,
        epilogue: Epilogue,
        out: &DeviceOutput,
    ) -> Result<()> {
        const OP: &str = "wgpu::decoder_tail";
        shape.validate()?;
        let lens = ProjectionLens {
            out: shape.out_len(),
            weight_words: shape.w_words_len(),
            act: shape.y_len(),
            act_words: shape.y_words_len(),
        };
        let (flavour, plan) =
            self.check_projection(OP, input, format, scale, w, epilogue, out, lens, |qa| {
                shape.check_accumulator(qa, w.qmax)
            })?;
        let u = |what, v| to_u32(OP, what, v);
        let m = shape.m();
        let heads = u("heads", shape.heads)?;
        let max = self.inner.limits.max_compute_workgroups_per_dimension;
        let plane = shape.out_len(); // M·D
        let mut params = GemmParams {
            m: u("rows", m)?,
            n_out: u("D", shape.dim)?,
            k_words: u("k words", shape.k_words())?,
            k_elems: u("L", shape.latent)?,
            time: u("T", shape.time)?,
            in_heads: heads,
            heads,
            ldw: u("D", shape.dim)?,
            w_scale: w.scale,
            a_scale: plan.as_ref().map_or(1.0, |p| p.host),
            qmax: format.qmax().unwrap_or(0) as f32,
            w_head_words: u("weight words per head", shape.w_head_words())?,
            ..Default::default()
        };
        let limit = self.inner.limits.max_storage_buffer_binding_size;
        let plane_bytes = (plane as u64) * 4;
        let max_planes = (limit / plane_bytes).min(u64::from(max)) as u32;
        let (grid, planes, kernel, constants) = match flavour {
            Flavour::Float => {
                if heads > max_planes {
                    return Err(unsupported(
                        OP,
                        format!(
                            "{heads} f32 partial planes of {plane_bytes} bytes exceed the adapter's storage binding or grid limits"
                        ),
                    ));
                }
                params.splits = 1;
                params.chunk = params.k_words;
                let g = Grid {
                    nx: params.n_out.div_ceil(FLOAT_TILE),
                    ny: params.m.div_ceil(FLOAT_TILE),
                };
                (g, heads, KernelId::DecoderFloat, vec![])
            }
            f => {
                let t = self.tiles_for(OP, m, shape.dim)?;
                let nx = params.n_out.div_ceil(t.bn());
                let ny = params.m.div_ceil(t.bm());
                let k_tiles = params.k_words.div_ceil(t.bk);
                let out_groups = nx.saturating_mul(ny).saturating_mul(heads);
                let mut splits = DECODER_TARGET_GROUPS
                    .div_ceil(out_groups.max(1))
                    .clamp(1, (k_tiles / 4).max(1)); // chunks of >= 4 K steps
                splits = splits.min((max_planes / heads.max(1)).max(1));
                if heads.saturating_mul(splits) > max_planes {
                    return Err(unsupported(
                        OP,
                        format!(
                            "{heads} i32 partial planes of {plane_bytes} bytes exceed the adapter's storage binding or grid limits"
                        ),
                    ));
                }
                let chunk_tiles = k_tiles.div_ceil(splits);
                params.chunk = chunk_tiles * t.bk;
                params.splits = params.k_words.div_ceil(params.chunk);
                let kernel = match f {
                    Flavour::Packed => KernelId::DecoderPacked,
                    Flavour::Codes => KernelId::DecoderCodes,
                    _ => KernelId::DecoderF32,
                };
                let unsigned = format == LowBitActivationFormat::Uint8PosExp;
                let scale_device = plan.as_ref().is_some_and(|p| p.device);
                (
                    Grid { nx, ny },
                    heads * params.splits,
                    kernel,
                    self.gemm_constants(t, unsigned, scale_device, false, true),
                )
            }
        };
        if grid.nx > max {
            return Err(unsupported(
                OP,
                format!("{} column tiles exceed {max} workgroups", grid.nx),
            ));
        }
        // f32 input: every column tile of every K chunk would quantize its rows inside a
        // dp4a-bound GEMM (H100, M=2048: 1.62 ms fused, 0.78 ms with a separate pass), so
        // `F32Route::Auto` always quantizes once first.
        let prepack: Option<GpuBuffer<u32>> =
            if flavour == Flavour::F32 && self.f32_prepack(F32_PREPACK_READERS) {
                self.check_binding(OP, "packed activations", (shape.y_words_len() * 4) as u64)?;
                Some(self.scratch("packed activations", shape.y_words_len())?)
            } else {
                None
            };
        let partials: GpuBuffer<u32> = self.scratch("split-K partials", plane * planes as usize)?;
        let absmean = match plan.as_ref().and_then(|p| p.compute) {
            Some(_) => Some(self.absmean_scratch(OP, shape.y_len())?),
            None => None,
        };
        let scale_buf = plan.as_ref().map_or(self.dummy(), |p| p.buffer);
        let mut launches = Vec::new();
        if let (Some(s), Some(p), DeviceAct::F32(x)) = (&absmean, &plan, input)
            && let Some(sb) = p.compute
        {
            launches.extend(self.absmean_launches(OP, x, format, s, sb)?);
        }
        let mut kernel = kernel;
        let x_buf = match (&prepack, input, &plan) {
            (Some(words), DeviceAct::F32(x), Some(p)) => {
                launches.push(self.prepack_launch(
                    OP,
                    x,
                    shape.y_len() / shape.latent,
                    shape.latent,
                    format,
                    p,
                    words,
                )?);
                kernel = KernelId::DecoderPacked;
                &words.buffer
            }
            _ => act_buffer(input),
        };
        for (y0, ny) in self.row_chunks(grid.ny) {
            params.tile_y0 = y0;
            launches.push(Launch {
                kernel,
                constants: constants.clone(),
                params: bytes_of(&params),
                buffers: vec![
                    (1, x_buf),
                    (2, &w.words.buffer),
                    (3, scale_buf),
                    (4, &partials.buffer),
                    (5, self.dummy()),
                ],
                groups: [grid.nx, ny, planes],
            });
        }
        launches.push(self.reduce_launch(
            OP,
            &partials.buffer,
            planes,
            plane,
            flavour == Flavour::Float,
            epilogue,
            w.scale,
            plan.as_ref(),
            out.buffer(),
        )?);
        self.run(OP, &launches)
    }

    /// [`WgpuDevice::decoder_tail_into`] into a new output buffer.
    pub fn decoder_tail(
        &self,
        shape: &DecoderTailShape,
        input: DeviceAct<'_>,
        format: LowBitActivationFormat,
        scale: DeviceScale<'_>,
        w: &DeviceWeights,
        epilogue: Epilogue,
    ) -> Result<DeviceOutput> {
        shape.validate()?;
        self.check_binding(
            "wgpu::decoder_tail",
            "output",
            output_bytes(epilogue.dtype, shape.out_len()),
        )?;
        let out = self.alloc_output(epilogue.dtype, shape.out_len())?;
        self.decoder_tail_into(shape, input, format, scale, w, epilogue, &out)?;
        Ok(out)
    }

    // ---- rho ----

    /// Rho int8 block pack: `values` (flattened `[B,H,N,D]`) → 8 words + 1 scale per block.
    pub fn rho_int8_pack_into(
        &self,
        shape: &RhoShape,
        values: &GpuBuffer<f32>,
        words: &GpuBuffer<u32>,
        scales: &GpuBuffer<f32>,
    ) -> Result<()> {
        const OP: &str = "wgpu::rho_int8_pack";
        RhoShape::new(shape.logical_shape)?;
        self.check_own(OP, "rho values", values)?;
        self.check_own(OP, "rho words", words)?;
        self.check_own(OP, "rho scales", scales)?;
        values.check_len(OP, "rho values", shape.len())?;
        words.check_len(OP, "rho words", shape.int8_words())?;
        scales.check_len(OP, "rho scales", shape.blocks())?;
        self.check_binding(OP, "rho values", values.byte_len())?;
        self.check_binding(OP, "rho words", words.byte_len())?;
        let params = RhoParams {
            len: to_u32(OP, "elements", shape.len())?,
            blocks: to_u32(OP, "blocks", shape.blocks())?,
            words: to_u32(OP, "words", shape.int8_words())?,
            _pad: 0,
        };
        let launch = Launch {
            kernel: KernelId::RhoInt8Pack,
            constants: vec![("EPS", f64::from(EPS))],
            params: bytes_of(&params),
            buffers: vec![(1, &values.buffer), (2, &words.buffer), (3, &scales.buffer)],
            groups: self.grid_1d(OP, params.words.div_ceil(WG))?,
        };
        self.run(OP, &[launch])
    }

    /// [`WgpuDevice::rho_int8_pack_into`] into new buffers: `(words, scales)`.
    pub fn rho_int8_pack(
        &self,
        shape: &RhoShape,
        values: &GpuBuffer<f32>,
    ) -> Result<(GpuBuffer<u32>, GpuBuffer<f32>)> {
        RhoShape::new(shape.logical_shape)?;
        let words = self.alloc(shape.int8_words())?;
        let scales = self.alloc(shape.blocks())?;
        self.rho_int8_pack_into(shape, values, &words, &scales)?;
        Ok((words, scales))
    }

    /// Rho int8 block unpack: `code · scale` per element into `out`.
    pub fn rho_int8_unpack_into(
        &self,
        shape: &RhoShape,
        words: &GpuBuffer<u32>,
        scales: &GpuBuffer<f32>,
        out: &GpuBuffer<f32>,
    ) -> Result<()> {
        const OP: &str = "wgpu::rho_int8_unpack";
        RhoShape::new(shape.logical_shape)?;
        self.check_own(OP, "rho words", words)?;
        self.check_own(OP, "rho scales", scales)?;
        self.check_own(OP, "rho values", out)?;
        words.check_len(OP, "rho words", shape.int8_words())?;
        scales.check_len(OP, "rho scales", shape.blocks())?;
        out.check_len(OP, "rho values", shape.len())?;
        self.check_binding(OP, "rho values", out.byte_len())?;
        self.check_binding(OP, "rho words", words.byte_len())?;
        debug_assert_eq!(RHO_BLOCK_SIZE, 32);
        let params = RhoParams {
            len: to_u32(OP, "elements", shape.len())?,
            blocks: to_u32(OP, "blocks", shape.blocks())?,
            words: to_u32(OP, "words", shape.int8_words())?,
            _pad: 0,
        };
        let launch = Launch {
            kernel: KernelId::RhoInt8Unpack,
            constants: vec![],
            params: bytes_of(&params),
            buffers: vec![(4, &words.buffer), (5, &scales.buffer), (6, &out.buffer)],
            groups: self.grid_1d(OP, params.len.div_ceil(WG))?,
        };
        self.run(OP, &[launch])
    }

    /// [`WgpuDevice::rho_int8_unpack_into`] into a new buffer.
    pub fn rho_int8_unpack(
        &self,
        shape: &RhoShape,
        words: &GpuBuffer<u32>,
        scales: &GpuBuffer<f32>,
    ) -> Result<GpuBuffer<f32>> {
        RhoShape::new(shape.logical_shape)?;
        let out = self.alloc(shape.len())?;
        self.rho_int8_unpack_into(shape, words, scales, &out)?;
        Ok(out)
    }
}

/// Which projection kernel an input selects.
/// Element counts a projection's buffers must have.
struct ProjectionLens {
    out: usize,
    weight_words: usize,
    act: usize,
    act_words: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavour {
    Packed,
    Codes,
    F32,
    Float,
}

/// Bytes of an output of `len` elements of `dtype`, as allocated (rounded up to 4).
pub(crate) fn output_bytes(dtype: OutputDType, len: usize) -> u64 {
    match dtype {
        OutputDType::F32 => len as u64 * 4,
        _ => (len as u64 * 2).div_ceil(4) * 4,
    }
}

fn act_buffer<'a>(input: DeviceAct<'a>) -> &'a wgpu::Buffer {
    match input {
        DeviceAct::Packed(b) => &b.buffer,
        DeviceAct::Codes(b) => &b.buffer,
        DeviceAct::F32(b) => &b.buffer,
    }
}
