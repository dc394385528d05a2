//! CPU backend: rayon over blocks of output rows, integer GEMM on i8x4 words.
//!
//! Both projections are a GEMM whose reduction runs over packed i8x4 words: the weight words
//! (`[H, ceil(D/4), N]`, `[H·ceil(Lart/4), D]`) already hold 4 consecutive reduction elements
//! of one output column, which is the operand layout of a u8×i8 quad dot (`vpdpbusd`).
//! Activations are turned into words of unsigned lanes: uint8pos codes as they are, signed
//! codes biased by +128 (`c ^ 0x80` on the byte) with the bias removed afterwards through a
//! per-column correction `128·Σ w` (computed by the same kernel on a row of 128s). Padding
//! lanes of the activation words are always 0, so they never meet a weight (this is what lets
//! the decoder use the full-`Lart` weight when `L < Lart`). All integer sums wrap like the
//! reference's, so the i32 result equals the reference's bit for bit, and the output is
//! `ops::dequantize_acc` of it.
//!
//! Kernels: AVX-512 VNNI (`vpdpbusd`, 6 rows × 64 columns in registers) when the CPU has it,
//! a portable auto-vectorisable kernel otherwise. Blocking: rows in tasks of [`ROWS_PER_TASK`]
//! (the rayon unit), columns in blocks of [`COL_BLOCK`] with an i32 accumulator tile, the
//! reduction in chunks of [`K_CHUNK`] words so a weight panel stays in L1.

use rayon::prelude::*;

use super::{Backend, ProjectionArgs};
use crate::config::LowBitActivationFormat;
use crate::error::{BackendKind, LowbitError, Result};
use crate::ops::quantize::{QuantizeShape, check_signed_packable};
use crate::ops::rho::{RHO_BLOCK_SIZE, RHO_WORDS_PER_BLOCK, RhoShape};
use crate::ops::{
    ActInput, DecoderTailShape, Epilogue, LowrankShape, OutputDType, ProjectionOutput, ScaleSource,
    check_activation_codes, check_packed_activations, dequantize_acc,
};
use crate::quant::{absmean_scale, activation_scale, check_finite, check_scale, check_weight_qmax};
use crate::testing::POISON_F32;

/// Output rows per rayon task.
pub const ROWS_PER_TASK: usize = 48;
/// Output columns per accumulator tile.
pub const COL_BLOCK: usize = 256;
/// Reduction words per weight panel.
pub const K_CHUNK: usize = 128;
/// Outputs at least this large (bytes) are written with non-temporal stores.
pub const STREAM_MIN_BYTES: usize = 32 << 20;
/// Rows of the register tile.
const MR: usize = 6;
/// Columns of the register tile (4 × 16 lanes).
const NR: usize = 64;
/// Elements per rayon task of the element-wise ops.
const ELEMS_PER_TASK: usize = 1 << 14;
/// Rho blocks per rayon task.
const RHO_BLOCKS_PER_TASK: usize = 512;

/// Which integer kernel the CPU backend runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuKernel {
    /// Plain Rust, auto-vectorised for the compile target.
    Portable,
    /// The same Rust compiled for AVX2 (x86_64, detected at run time).
    Avx2,
    /// AVX-512 VNNI `vpdpbusd` (x86_64, detected at run time).
    Avx512Vnni,
}

impl CpuKernel {
    /// The fastest kernel this CPU can run.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                return Self::Avx512Vnni;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Self::Avx2;
            }
        }
        Self::Portable
    }
}

/// The CPU backend. Host slices in, host vectors out; [`CpuBackend::lowrank_into`] and
/// friends write into caller buffers (no allocation of the output, no poisoning).
#[derive(Clone, Debug)]
pub struct CpuBackend {
    kernel: CpuKernel,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

const OP_LOWRANK: &str = "cpu::lowrank";
const OP_DECODER: &str = "cpu::decoder_tail";

/// Activations ready for the integer kernel: rows of words of unsigned lanes.
struct IntAct {
    words: Vec<u32>,
    a_scale: f32,
    signed: bool,
}

/// What a projection runs on after validation.
enum Prepared<'a> {
    Int(IntAct),
    Float(&'a [f32]),
}

/// A contiguous run of the reduction: `len` words starting at word `x_off` of an activation
/// row and at weight row `w_row`.
#[derive(Clone, Copy, Debug)]
struct Seg {
    x_off: usize,
    w_row: usize,
    len: usize,
}

/// One GEMM: `acc[r][n] = Σ_segs Σ_k dot4(x[row r][seg.x_off + k], w[seg.w_row + k][n])`.
struct Gemm<'a> {
    x: &'a [u32],
    /// Words between consecutive rows of one task.
    x_stride: usize,
    segs: &'a [Seg],
    w: &'a [u32],
    /// Words between consecutive weight rows.
    w_stride: usize,
    cols: usize,
}

/// Dequantization + epilogue parameters.
#[derive(Clone, Copy)]
struct Epi<'a> {
    corr: &'a [i32],
    w_scale: f32,
    a_scale: f32,
    epilogue: Epilogue,
    /// Non-temporal stores (outputs far larger than the caches).
    stream: bool,
}

impl CpuBackend {
    /// The backend with the fastest kernel this CPU supports.
    pub fn new() -> Self {
        Self {
            kernel: CpuKernel::detect(),
        }
    }

    /// The backend with a given kernel; one this CPU cannot run falls back to the best it
    /// can (`Avx512Vnni` → `Avx2` → `Portable`).
    pub fn with_kernel(kernel: CpuKernel) -> Self {
        let best = CpuKernel::detect();
        let kernel = match (kernel, best) {
            (CpuKernel::Avx512Vnni, b) if b != CpuKernel::Avx512Vnni => b,
            (CpuKernel::Avx2, CpuKernel::Portable) => CpuKernel::Portable,
            (k, _) => k,
        };
        Self { kernel }
    }

    /// The kernel in use.
    pub fn kernel(&self) -> CpuKernel {
        self.kernel
    }

    /// Low-rank projection into `out` (`[B, H, T, latent_out]`); returns the activation scale
    /// used (for the float path, 1.0). Every check runs before `out` is touched.
    pub fn lowrank_into(
        &self,
        shape: &LowrankShape,
        args: &ProjectionArgs<'_>,
        out: &mut [f32],
    ) -> Result<f32> {
        const OP: &str = OP_LOWRANK;
        shape.validate()?;
        check_out(OP, out, shape.out_len())?;
        check_weights(OP, args, shape.w_words_len())?;
        let prepared = prepare(OP, args, shape.x_len(), shape.embd, |qa, qw| {
            shape.check_accumulator(qa, qw)
        })?;
        let kw = shape.k_words();
        let (t, n_len, lo) = (shape.time, shape.latent, shape.latent_out);
        match prepared {
            Prepared::Float(x) => {
                let d_len = shape.embd;
                // Logical row r = h·D + d is word row h·kw + d/4, lane d%4.
                let wf = weights_f32(
                    args.w_words,
                    shape.heads * d_len,
                    n_len,
                    args.w_scale,
                    |r| (r / d_len) * kw + (r % d_len) / 4,
                    |r| (r % d_len) % 4,
                );
                // wf[(h·D + d)·N + n]; rows of out are (b, h, t).
                let (in_heads, heads) = (shape.in_heads, shape.heads);
                out.par_chunks_mut(lo).enumerate().for_each(|(row, o)| {
                    let (bh, tt) = (row / t, row % t);
                    let (b, h) = (bh / heads, bh % heads);
                    let hin = if in_heads == 1 { 0 } else { h };
                    let xr = &x[((b * in_heads + hin) * t + tt) * d_len..][..d_len];
                    o.fill(0.0);
                    for (d, &xv) in xr.iter().enumerate() {
                        let wr = &wf[(h * d_len + d) * n_len..][..lo];
                        for (acc, &w) in o.iter_mut().zip(wr) {
                            *acc += w * xv;
                        }
                    }
                    apply_float_epilogue(o, args.epilogue);
                });
                Ok(1.0)
            }
            Prepared::Int(act) => {
                let heads = shape.heads;
                // Per-head bias correction (signed activations only).
                let corr: Vec<i32> = if act.signed {
                    let bias = bias_row(shape.embd);
                    let mut corr = vec![0i32; heads * lo];
                    corr.par_chunks_mut(lo).enumerate().for_each(|(h, c)| {
                        let segs = [Seg {
                            x_off: 0,
                            w_row: h * kw,
                            len: kw,
                        }];
                        let g = Gemm {
                            x: &bias,
                            x_stride: kw,
                            segs: &segs,
                            w: args.w_words,
                            w_stride: n_len,
                            cols: lo,
                        };
                        gemm_acc(self.kernel, &g, 0, 1, c);
                    });
                    corr
                } else {
                    vec![0i32; lo]
                };
                let zero_corr = !act.signed;
                // Tasks: (b, h, block of t) → out rows contiguous.
                out.par_chunks_mut(t * lo)
                    .enumerate()
                    .for_each(|(bh, slab)| {
                        let (b, h) = (bh / heads, bh % heads);
                        let hin = shape.in_head(h);
                        let segs = [Seg {
                            x_off: 0,
                            w_row: h * kw,
                            len: kw,
                        }];
                        let x_base = (b * shape.in_heads + hin) * t * kw;
                        let c = if zero_corr {
                            &corr[..lo]
                        } else {
                            &corr[h * lo..(h + 1) * lo]
                        };
                        let epi = Epi {
                            corr: c,
                            w_scale: args.w_scale,
                            a_scale: act.a_scale,
                            epilogue: args.epilogue,
                            stream: 4 * shape.out_len() >= STREAM_MIN_BYTES,
                        };
                        slab.par_chunks_mut(ROWS_PER_TASK * lo)
                            .enumerate()
                            .for_each(|(blk, o)| {
                                let g = Gemm {
                                    x: &act.words,
                                    x_stride: kw,
                                    segs: &segs,
                                    w: args.w_words,
                                    w_stride: n_len,
                                    cols: lo,
                                };
                                let row0 = x_base + blk * ROWS_PER_TASK * kw;
                                gemm_task(self.kernel, &g, row0, o.len() / lo, &epi, o);
                            });
                    });
                Ok(act.a_scale)
            }
        }
    }

    /// Decoder tail into `out` (`[B, 1, T, D]`); returns the activation scale used (for the
    /// float path, 1.0). Every check runs before `out` is touched.
    pub fn decoder_tail_into(
        &self,
        shape: &DecoderTailShape,
        args: &ProjectionArgs<'_>,
        out: &mut [f32],
    ) -> Result<f32> {
        const OP: &str = OP_DECODER;
        shape.validate()?;
        check_out(OP, out, shape.out_len())?;
        check_weights(OP, args, shape.w_words_len())?;
        let prepared = prepare(OP, args, shape.y_len(), shape.latent, |qa, qw| {
            shape.check_accumulator(qa, qw)
        })?;
        let (heads, t, l_len, dim) = (shape.heads, shape.time, shape.latent, shape.dim);
        let (kw, lw) = (shape.k_words(), shape.w_head_words());
        match prepared {
            Prepared::Float(y) => {
                let lart = shape.latent_per_head;
                // Row r = h·Lart + l of the logical weight is word row h·Lw + l/4, lane l%4.
                let wf = weights_f32(
                    args.w_words,
                    heads * lart,
                    dim,
                    args.w_scale,
                    |r| (r / lart) * lw + (r % lart) / 4,
                    |r| (r % lart) % 4,
                );
                out.par_chunks_mut(dim).enumerate().for_each(|(row, o)| {
                    let (b, tt) = (row / t, row % t);
                    o.fill(0.0);
                    for h in 0..heads {
                        let yr = &y[((b * heads + h) * t + tt) * l_len..][..l_len];
                        for (l, &yv) in yr.iter().enumerate() {
                            let wr = &wf[(h * lart + l) * dim..][..dim];
                            for (acc, &w) in o.iter_mut().zip(wr) {
                                *acc += w * yv;
                            }
                        }
                    }
                    apply_float_epilogue(o, args.epilogue);
                });
                Ok(1.0)
            }
            Prepared::Int(act) => {
                // Row (b, t): head h's words sit at (b·H + h)·T·kw + t·kw.
                let segs: Vec<Seg> = (0..heads)
                    .map(|h| Seg {
                        x_off: h * t * kw,
                        w_row: h * lw,
                        len: kw,
                    })
                    .collect();
                let mut corr = vec![0i32; dim];
                if act.signed {
                    let bias: Vec<u32> = (0..heads).flat_map(|_| bias_row(l_len)).collect();
                    let bias_segs: Vec<Seg> = (0..heads)
                        .map(|h| Seg {
                            x_off: h * kw,
                            w_row: h * lw,
                            len: kw,
                        })
                        .collect();
                    let g = Gemm {
                        x: &bias,
                        x_stride: heads * kw,
                        segs: &bias_segs,
                        w: args.w_words,
                        w_stride: dim,
                        cols: dim,
                    };
                    corr.par_chunks_mut(COL_BLOCK)
                        .enumerate()
                        .for_each(|(i, c)| gemm_acc_cols(self.kernel, &g, 0, 1, i * COL_BLOCK, c));
                }
                let epi = Epi {
                    corr: &corr,
                    w_scale: args.w_scale,
                    a_scale: act.a_scale,
                    epilogue: args.epilogue,
                    stream: 4 * shape.out_len() >= STREAM_MIN_BYTES,
                };
                out.par_chunks_mut(t * dim)
                    .enumerate()
                    .for_each(|(b, slab)| {
                        slab.par_chunks_mut(ROWS_PER_TASK * dim)
                            .enumerate()
                            .for_each(|(blk, o)| {
                                let g = Gemm {
                                    x: &act.words,
                                    x_stride: kw,
                                    segs: &segs,
                                    w: args.w_words,
                                    w_stride: dim,
                                    cols: dim,
                                };
                                let row0 = b * heads * t * kw + blk * ROWS_PER_TASK * kw;
                                gemm_task(self.kernel, &g, row0, o.len() / dim, &epi, o);
                            });
                    });
                Ok(act.a_scale)
            }
        }
    }

    /// The device-free fast path of the benches and the CLI: low-rank projection of
    /// prepacked signed i8x4 activations `[B, Hin, T, ceil(D/4)]` (int8 or int4 codes) with
    /// weight words `[H, ceil(D/4), N]`, written into `out` (`[B, H, T, latent_out]`, f32).
    #[allow(clippy::too_many_arguments)]
    pub fn lowrank_packed(
        &self,
        shape: &LowrankShape,
        format: LowBitActivationFormat,
        x_words: &[u32],
        w_words: &[u32],
        w_qmax: u32,
        a_scale: f32,
        w_scale: f32,
        out: &mut [f32],
    ) -> Result<()> {
        let args = ProjectionArgs {
            input: ActInput::Packed(x_words),
            format,
            scale: ScaleSource::Param(a_scale),
            w_words,
            w_scale,
            w_qmax,
            epilogue: Epilogue::default(),
        };
        self.lowrank_into(shape, &args, out).map(|_| ())
    }

    /// Decoder tail of prepacked signed i8x4 activations `[B, H, T, ceil(L/4)]` with weight
    /// words `[H·ceil(Lart/4), D]`, written into `out` (`[B, 1, T, D]`, f32).
    #[allow(clippy::too_many_arguments)]
    pub fn decoder_tail_packed(
        &self,
        shape: &DecoderTailShape,
        format: LowBitActivationFormat,
        y_words: &[u32],
        w_words: &[u32],
        w_qmax: u32,
        a_scale: f32,
        w_scale: f32,
        out: &mut [f32],
    ) -> Result<()> {
        let args = ProjectionArgs {
            input: ActInput::Packed(y_words),
            format,
            scale: ScaleSource::Param(a_scale),
            w_words,
            w_scale,
            w_qmax,
            epilogue: Epilogue::default(),
        };
        self.decoder_tail_into(shape, &args, out).map(|_| ())
    }

    /// Quantizes `x` (`shape.rows × shape.k`) and packs it into signed i8x4 words written into
    /// `out` (`rows × ceil(k/4)`); returns the scale used.
    pub fn quantize_pack_into(
        &self,
        x: &[f32],
        shape: QuantizeShape,
        format: LowBitActivationFormat,
        scale: ScaleSource,
        out: &mut [u32],
    ) -> Result<f32> {
        const OP: &str = "cpu::quantize_pack_i8x4";
        check_signed_packable(OP, format)?;
        check_quantize_shape(OP, shape)?;
        if x.len() != shape.len() {
            return Err(LowbitError::len(OP, "activations", shape.len(), x.len()));
        }
        if out.len() != shape.words_len() {
            return Err(LowbitError::len(
                OP,
                "output words",
                shape.words_len(),
                out.len(),
            ));
        }
        let s = resolve_scale(OP, x, format, scale)?;
        pack_f32(x, shape.k, out, 0, format, s);
        Ok(s)
    }
}

/// Errors unless `out` has `len` elements.
fn check_out(op: &'static str, out: &[f32], len: usize) -> Result<()> {
    if out.len() == len {
        Ok(())
    } else {
        Err(LowbitError::len(op, "output", len, out.len()))
    }
}

/// Weight scale, largest |weight code| and weight word count.
fn check_weights(op: &'static str, args: &ProjectionArgs<'_>, words: usize) -> Result<()> {
    check_scale(op, "weight scale", args.w_scale)?;
    check_weight_qmax(op, args.w_qmax)?;
    if args.w_words.len() != words {
        return Err(LowbitError::len(
            op,
            "weight words",
            words,
            args.w_words.len(),
        ));
    }
    Ok(())
}

fn check_quantize_shape(op: &'static str, shape: QuantizeShape) -> Result<()> {
    if shape.rows == 0 || shape.k == 0 {
        return Err(LowbitError::invalid_shape(
            op,
            &[shape.rows, shape.k],
            "zero-sized dimension",
        ));
    }
    Ok(())
}

/// The given scale, or the absmean scale of `x` (f32 input only).
fn resolve_scale(
    op: &'static str,
    x: &[f32],
    format: LowBitActivationFormat,
    scale: ScaleSource,
) -> Result<f32> {
    if format.qmax().is_none() {
        return Err(LowbitError::unsupported_format(
            op,
            format,
            "the float path has no codes or scale",
        ));
    }
    if x.is_empty() {
        return Err(LowbitError::invalid_shape(op, &[0], "zero-sized input"));
    }
    let given = scale.given(op)?;
    let positive = format == LowBitActivationFormat::Uint8PosExp;
    // One parallel pass: finiteness (always) and the absmean sum (Compute only).
    let parts: Vec<(bool, f64)> = x
        .par_chunks(ELEMS_PER_TASK)
        .map(|c| {
            if simd::avx512() {
                // SAFETY: avx512f/bw detected.
                unsafe { simd::finite_and_sum_avx512(c, positive) }
            } else {
                simd::finite_and_sum(c, positive)
            }
        })
        .collect();
    if parts.iter().any(|p| !p.0) {
        check_finite_par(op, "activations", x)?;
    }
    if let Some(s) = given {
        return Ok(s);
    }
    let (Some(qmax), None) = (format.qmax(), given) else {
        return activation_scale(x, format)?.ok_or_else(|| {
            LowbitError::unsupported_format(op, format, "the float path has no scale")
        });
    };
    let sum: f64 = parts.iter().map(|p| p.1).sum();
    let scale = absmean_scale((sum / x.len() as f64) as f32, qmax as f32);
    check_scale(op, "activation scale (2*mean overflows f32)", scale)?;
    Ok(scale)
}

/// Element-wise loops compiled twice: plain, and for AVX-512 (chosen at run time). The
/// results are identical (IEEE ops only, no contraction); only the speed differs.
mod simd {
    use crate::config::LowBitActivationFormat;
    use crate::ops::rho::{RHO_BLOCK_SIZE, RHO_WORDS_PER_BLOCK};
    use crate::quant::{activation_code, round_half_away};
    use crate::reference::rho::rho_int8_block_scale;

    /// Does this CPU have avx512f + avx512bw (checked once)?
    pub(super) fn avx512() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            *HAS.get_or_init(|| {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// (all finite, Σ |v| or Σ max(v, 0) in f64 over 8 interleaved lanes).
    #[inline(always)]
    pub(super) fn finite_and_sum(c: &[f32], positive: bool) -> (bool, f64) {
        let mut acc = [0.0f64; 8];
        let mut finite = true;
        let f = |v: f32| if positive { v.max(0.0) } else { v.abs() };
        let chunks = c.chunks_exact(8);
        let rest = chunks.remainder();
        for q in chunks {
            for j in 0..8 {
                finite &= q[j].is_finite();
                acc[j] += f64::from(f(q[j]));
            }
        }
        for (j, &v) in rest.iter().enumerate() {
            finite &= v.is_finite();
            acc[j] += f64::from(f(v));
        }
        let s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        (finite, s)
    }

    /// # Safety
    /// The CPU must have avx512f and avx512bw.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn finite_and_sum_avx512(c: &[f32], positive: bool) -> (bool, f64) {
        finite_and_sum(c, positive)
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) unsafe fn finite_and_sum_avx512(c: &[f32], positive: bool) -> (bool, f64) {
        finite_and_sum(c, positive)
    }

    /// Rows of `k` values → words of `ceil(k/4)` byte lanes `code(v) + bias` (padding 0).
    #[inline(always)]
    pub(super) fn pack_chunk<T: Copy>(
        src: &[T],
        k: usize,
        dst: &mut [u32],
        bias: i32,
        code: impl Fn(T) -> i32,
    ) {
        let kw = k.div_ceil(4);
        let lane = |v: T| ((code(v) + bias) as u32) & 0xff;
        for (drow, srow) in dst.chunks_mut(kw).zip(src.chunks(k)) {
            let quads = srow.chunks_exact(4);
            let rest = quads.remainder();
            for (word, q) in drow.iter_mut().zip(quads) {
                *word = lane(q[0]) | lane(q[1]) << 8 | lane(q[2]) << 16 | lane(q[3]) << 24;
            }
            if !rest.is_empty() {
                let mut w = 0u32;
                for (j, &v) in rest.iter().enumerate() {
                    w |= lane(v) << (8 * j);
                }
                drow[kw - 1] = w;
            }
        }
    }

    /// # Safety
    /// The CPU must have avx512f and avx512bw.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn pack_chunk_avx512<T: Copy>(
        src: &[T],
        k: usize,
        dst: &mut [u32],
        bias: i32,
        code: impl Fn(T) -> i32,
    ) {
        pack_chunk(src, k, dst, bias, code)
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) unsafe fn pack_chunk_avx512<T: Copy>(
        src: &[T],
        k: usize,
        dst: &mut [u32],
        bias: i32,
        code: impl Fn(T) -> i32,
    ) {
        pack_chunk(src, k, dst, bias, code)
    }

    /// An integral f32 in `[-2^22, 2^22]` to i32 without the saturating `as` (which does not
    /// vectorise): adding 1.5·2^23 puts the integer in the low mantissa bits.
    #[inline(always)]
    fn small_int(f: f32) -> i32 {
        (f + 12_582_912.0).to_bits() as i32 - 0x4B40_0000
    }

    // `quant::activation_code` with the format fixed at compile time; the values are the
    // same (the differential tests compare them bit for bit).
    #[inline(always)]
    pub(super) fn code_int8(v: f32, s: f32) -> i32 {
        small_int(round_half_away(v / s).clamp(-127.0, 127.0))
    }
    #[inline(always)]
    pub(super) fn code_int4(v: f32, s: f32) -> i32 {
        small_int(round_half_away(v / s).clamp(-7.0, 7.0))
    }
    #[inline(always)]
    pub(super) fn code_uint8(v: f32, s: f32) -> i32 {
        small_int(round_half_away(v.max(0.0) / s).clamp(0.0, 255.0))
    }

    /// Rho int8 blocks of `vals` → 8 words + 1 scale each (the reference's
    /// `rho_int8_block_scale` / `rho_int8_code`, same values).
    #[inline(always)]
    pub(super) fn rho_pack(vals: &[f32], words: &mut [u32], scales: &mut [f32]) {
        for ((wds, scale), block) in words
            .chunks_mut(RHO_WORDS_PER_BLOCK)
            .zip(scales.iter_mut())
            .zip(vals.chunks(RHO_BLOCK_SIZE))
        {
            let s = rho_int8_block_scale(block);
            *scale = s;
            pack_chunk(block, block.len(), wds, 0, |v| {
                small_int(round_half_away(v / s).clamp(-127.0, 127.0))
            });
        }
    }

    /// # Safety
    /// The CPU must have avx512f and avx512bw.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn rho_pack_avx512(vals: &[f32], words: &mut [u32], scales: &mut [f32]) {
        rho_pack(vals, words, scales)
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) unsafe fn rho_pack_avx512(vals: &[f32], words: &mut [u32], scales: &mut [f32]) {
        rho_pack(vals, words, scales)
    }

    /// Rho int8 blocks → `code · scale` per element.
    #[inline(always)]
    pub(super) fn rho_unpack(words: &[u32], scales: &[f32], out: &mut [f32]) {
        for ((o, wds), &s) in out
            .chunks_mut(RHO_BLOCK_SIZE)
            .zip(words.chunks(RHO_WORDS_PER_BLOCK))
            .zip(scales)
        {
            if let (Ok(o), Ok(wds)) = (
                <&mut [f32; RHO_BLOCK_SIZE]>::try_from(&mut *o),
                <&[u32; RHO_WORDS_PER_BLOCK]>::try_from(wds),
            ) {
                // Whole block: fixed bounds, unrolled and vectorised.
                for (j, v) in o.iter_mut().enumerate() {
                    *v = f32::from((wds[j / 4] >> (8 * (j % 4))) as u8 as i8) * s;
                }
                continue;
            }
            for (q, &w) in o.chunks_mut(4).zip(wds) {
                for (j, v) in q.iter_mut().enumerate() {
                    *v = f32::from((w >> (8 * j)) as u8 as i8) * s;
                }
            }
        }
    }

    /// # Safety
    /// The CPU must have avx512f and avx512bw.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn rho_unpack_avx512(words: &[u32], scales: &[f32], out: &mut [f32]) {
        rho_unpack(words, scales, out)
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) unsafe fn rho_unpack_avx512(words: &[u32], scales: &[f32], out: &mut [f32]) {
        rho_unpack(words, scales, out)
    }

    /// Codes of a chunk, one i32 each.
    #[inline(always)]
    pub(super) fn codes_chunk(x: &[f32], out: &mut [i32], format: LowBitActivationFormat, s: f32) {
        match format {
            LowBitActivationFormat::Int8 => {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = code_int8(v, s);
                }
            }
            LowBitActivationFormat::Int4Exp => {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = code_int4(v, s);
                }
            }
            LowBitActivationFormat::Uint8PosExp => {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = code_uint8(v, s);
                }
            }
            LowBitActivationFormat::Fp16 => {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = activation_code(v, s, format);
                }
            }
        }
    }

    /// # Safety
    /// The CPU must have avx512f and avx512bw.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn codes_chunk_avx512(
        x: &[f32],
        out: &mut [i32],
        format: LowBitActivationFormat,
        s: f32,
    ) {
        codes_chunk(x, out, format, s)
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) unsafe fn codes_chunk_avx512(
        x: &[f32],
        out: &mut [i32],
        format: LowBitActivationFormat,
        s: f32,
    ) {
        codes_chunk(x, out, format, s)
    }
}

/// `check_finite` in parallel (same error: the first non-finite element).
fn check_finite_par(op: &'static str, what: &'static str, x: &[f32]) -> Result<()> {
    let bad = x
        .par_chunks(ELEMS_PER_TASK)
        .position_first(|c| !c.iter().fold(true, |ok, v| ok & v.is_finite()));
    match bad {
        None => Ok(()),
        Some(ci) => check_finite(op, what, &x[ci * ELEMS_PER_TASK..]).map_err(|e| match e {
            LowbitError::NonFinite {
                op,
                what,
                index,
                value,
            } => LowbitError::NonFinite {
                op,
                what,
                index: index + ci * ELEMS_PER_TASK,
                value,
            },
            e => e,
        }),
    }
}

/// Validates a projection's activation input and turns it into kernel words (or the float
/// path's f32 slice). `rows × k` elements; `check_acc(qmax_a, qmax_w)` is the shape's
/// accumulator check.
fn prepare<'a>(
    op: &'static str,
    args: &ProjectionArgs<'a>,
    len: usize,
    k: usize,
    check_acc: impl Fn(u32, u32) -> Result<()>,
) -> Result<Prepared<'a>> {
    let format = args.format;
    let rows = len / k;
    let kw = k.div_ceil(4);
    let Some(qmax) = format.qmax() else {
        return match args.input {
            ActInput::F32(x) => {
                if x.len() != len {
                    return Err(LowbitError::len(op, "activations", len, x.len()));
                }
                check_finite(op, "activations", x)?;
                Ok(Prepared::Float(x))
            }
            _ => Err(LowbitError::unsupported_format(
                op,
                format,
                "the float path takes f32 input",
            )),
        };
    };
    check_acc(qmax, args.w_qmax)?;
    let signed = format.is_signed();
    let bias: i32 = if signed { 128 } else { 0 };
    let no_compute = || LowbitError::InvalidArgument {
        op,
        what: "scale",
        reason: "ScaleSource::Compute needs f32 input; codes and packed input need a given scale"
            .into(),
    };
    let mut words: Vec<u32>;
    let a_scale = match args.input {
        ActInput::Codes(codes) => {
            if codes.len() != len {
                return Err(LowbitError::len(op, "activation codes", len, codes.len()));
            }
            let s = args.scale.given(op)?.ok_or_else(no_compute)?;
            check_activation_codes(op, codes, format)?;
            words = vec![0u32; rows * kw];
            pack_rows(codes, k, &mut words, bias, |c| c);
            s
        }
        ActInput::Packed(packed) => {
            check_signed_packable(op, format)?;
            if packed.len() != rows * kw {
                return Err(LowbitError::len(
                    op,
                    "packed activation words",
                    rows * kw,
                    packed.len(),
                ));
            }
            check_packed_activations(op, packed, k, qmax)?;
            let s = args.scale.given(op)?.ok_or_else(no_compute)?;
            // +128 on a signed byte is a flip of its top bit; padding lanes become 0.
            let last = lane_mask(k);
            words = vec![0u32; rows * kw];
            words
                .par_chunks_mut(kw * ELEMS_PER_TASK.div_ceil(kw * 4).max(1))
                .zip(packed.par_chunks(kw * ELEMS_PER_TASK.div_ceil(kw * 4).max(1)))
                .for_each(|(dst, src)| {
                    for (drow, srow) in dst.chunks_mut(kw).zip(src.chunks(kw)) {
                        for (d, &s) in drow.iter_mut().zip(srow) {
                            *d = s ^ 0x8080_8080;
                        }
                        drow[kw - 1] &= last;
                    }
                });
            s
        }
        ActInput::F32(x) => {
            if x.len() != len {
                return Err(LowbitError::len(op, "activations", len, x.len()));
            }
            let s = resolve_scale(op, x, format, args.scale)?;
            words = vec![0u32; rows * kw];
            pack_f32(x, k, &mut words, bias, format, s);
            s
        }
    };
    Ok(Prepared::Int(IntAct {
        words,
        a_scale,
        signed,
    }))
}

/// Mask of the real lanes of the last word of a row of `k` elements.
fn lane_mask(k: usize) -> u32 {
    match k % 4 {
        0 => u32::MAX,
        r => (1u32 << (8 * r)) - 1,
    }
}

/// A row of 128s in the real lanes (0 in padding lanes): the bias row of the correction.
fn bias_row(k: usize) -> Vec<u32> {
    let kw = k.div_ceil(4);
    let mut row = vec![0x8080_8080u32; kw];
    row[kw - 1] &= lane_mask(k);
    row
}

/// Packs rows of `k` values into words of `ceil(k/4)` byte lanes: lane = `code(v) + bias`
/// truncated to a byte (padding lanes 0). In parallel over blocks of rows.
fn pack_rows<T: Copy + Sync>(
    src: &[T],
    k: usize,
    dst: &mut [u32],
    bias: i32,
    code: impl Fn(T) -> i32 + Sync,
) {
    let kw = k.div_ceil(4);
    let rows_per_task = ELEMS_PER_TASK.div_ceil(k).max(1);
    let code = &code;
    dst.par_chunks_mut(rows_per_task * kw)
        .zip(src.par_chunks(rows_per_task * k))
        .for_each(|(d, s)| {
            if simd::avx512() {
                // SAFETY: avx512f/bw detected.
                unsafe { simd::pack_chunk_avx512(s, k, d, bias, code) }
            } else {
                simd::pack_chunk(s, k, d, bias, code)
            }
        });
}

/// [`pack_rows`] of f32 values through `format`'s quantizer at scale `s`.
fn pack_f32(
    x: &[f32],
    k: usize,
    dst: &mut [u32],
    bias: i32,
    format: LowBitActivationFormat,
    s: f32,
) {
    match format {
        LowBitActivationFormat::Int8 => pack_rows(x, k, dst, bias, |v| simd::code_int8(v, s)),
        LowBitActivationFormat::Int4Exp => pack_rows(x, k, dst, bias, |v| simd::code_int4(v, s)),
        LowBitActivationFormat::Uint8PosExp => {
            pack_rows(x, k, dst, bias, |v| simd::code_uint8(v, s))
        }
        LowBitActivationFormat::Fp16 => {}
    }
}

/// Unpacks weight words to `w·w_scale` in f32, logical rows × columns (float path). `word_row`
/// and `lane` map a logical row to its word row and lane.
fn weights_f32(
    words: &[u32],
    rows: usize,
    cols: usize,
    w_scale: f32,
    word_row: impl Fn(usize) -> usize + Sync,
    lane: impl Fn(usize) -> usize + Sync,
) -> Vec<f32> {
    let mut wf = vec![0.0f32; rows * cols];
    wf.par_chunks_mut(cols).enumerate().for_each(|(r, dst)| {
        let src = &words[word_row(r) * cols..][..cols];
        let shift = 8 * lane(r);
        for (d, &w) in dst.iter_mut().zip(src) {
            *d = f32::from((w >> shift) as u8 as i8) * w_scale;
        }
    });
    wf
}

fn apply_float_epilogue(o: &mut [f32], ep: Epilogue) {
    for v in o.iter_mut() {
        *v = ep.apply(*v);
    }
}

/// One task: `rows` output rows starting at activation word `row0` → `out` (`rows × cols`).
fn gemm_task(
    kernel: CpuKernel,
    g: &Gemm<'_>,
    row0: usize,
    rows: usize,
    epi: &Epi<'_>,
    out: &mut [f32],
) {
    let mut acc = vec![0i32; rows * COL_BLOCK.min(g.cols)];
    for n0 in (0..g.cols).step_by(COL_BLOCK) {
        let nb = COL_BLOCK.min(g.cols - n0);
        let tile = &mut acc[..rows * nb];
        gemm_acc_cols(kernel, g, row0, rows, n0, tile);
        epilogue(kernel, tile, nb, epi, n0, out, g.cols);
    }
}

/// `acc` (`rows × cols`, all columns) of the GEMM, in column blocks.
fn gemm_acc(kernel: CpuKernel, g: &Gemm<'_>, row0: usize, rows: usize, acc: &mut [i32]) {
    if g.cols <= COL_BLOCK {
        gemm_acc_cols(kernel, g, row0, rows, 0, acc);
        return;
    }
    let mut tile = vec![0i32; rows * COL_BLOCK];
    for n0 in (0..g.cols).step_by(COL_BLOCK) {
        let nb = COL_BLOCK.min(g.cols - n0);
        gemm_acc_cols(kernel, g, row0, rows, n0, &mut tile[..rows * nb]);
        for r in 0..rows {
            acc[r * g.cols + n0..][..nb].copy_from_slice(&tile[r * nb..][..nb]);
        }
    }
}

/// Accumulators of columns `n0 .. n0 + nb` (`nb = tile.len() / rows`), row stride `nb`.
fn gemm_acc_cols(
    kernel: CpuKernel,
    g: &Gemm<'_>,
    row0: usize,
    rows: usize,
    n0: usize,
    tile: &mut [i32],
) {
    let nb = tile.len() / rows;
    debug_assert!(n0 + nb <= g.cols);
    // The last row read is row0 + (rows-1)·x_stride + max seg end; the last weight word is
    // (w_row + len - 1)·w_stride + n0 + nb - 1. Checked here once so the kernels can index
    // without bounds checks.
    let x_end = g.segs.iter().map(|s| s.x_off + s.len).max().unwrap_or(0);
    let w_end = g
        .segs
        .iter()
        .map(|s| (s.w_row + s.len) * g.w_stride)
        .max()
        .unwrap_or(0);
    let in_bounds = row0 + (rows - 1) * g.x_stride + x_end <= g.x.len()
        && w_end <= g.w.len()
        && n0 + nb <= g.w_stride;
    if !in_bounds {
        // Unreachable after validation; computed the slow safe way rather than panicking.
        portable::tile_checked(g, row0, rows, n0, tile);
        return;
    }
    let mut first = true;
    for seg in g.segs {
        for k0 in (0..seg.len).step_by(K_CHUNK) {
            let kn = K_CHUNK.min(seg.len - k0);
            for p0 in (0..nb).step_by(NR) {
                let np = NR.min(nb - p0);
                for i0 in (0..rows).step_by(MR) {
                    let mr = MR.min(rows - i0);
                    let x_at = row0 + i0 * g.x_stride + seg.x_off + k0;
                    let w_at = (seg.w_row + k0) * g.w_stride + n0 + p0;
                    let c_at = i0 * nb + p0;
                    let call = MicroCall {
                        x_at,
                        x_stride: g.x_stride,
                        w_at,
                        w_stride: g.w_stride,
                        kn,
                        c_at,
                        c_stride: nb,
                        mr,
                        np,
                        first,
                    };
                    match kernel {
                        #[cfg(target_arch = "x86_64")]
                        CpuKernel::Avx512Vnni => {
                            // SAFETY: `kernel` is Avx512Vnni only when the CPU was detected to
                            // have avx512f/bw/vnni; every index the call touches was checked
                            // above (x rows, weight rows, columns < nb within the tile).
                            unsafe { avx512::micro(g.x, g.w, tile, &call) }
                        }
                        #[cfg(target_arch = "x86_64")]
                        CpuKernel::Avx2 => {
                            // SAFETY: `kernel` is Avx2 only when the CPU has avx2.
                            unsafe { portable::micro_avx2(g.x, g.w, tile, &call) }
                        }
                        _ => portable::micro(g.x, g.w, tile, &call),
                    }
                }
            }
            first = false;
        }
    }
    if first {
        tile.fill(0);
    }
}

/// One register-tile call: `mr` rows × `np` columns over `kn` reduction words.
#[derive(Clone, Copy, Debug)]
struct MicroCall {
    x_at: usize,
    x_stride: usize,
    w_at: usize,
    w_stride: usize,
    kn: usize,
    c_at: usize,
    c_stride: usize,
    mr: usize,
    np: usize,
    first: bool,
}

/// Dequantizes a tile of accumulators into columns `n0 ..` of `out` (row stride `cols`).
fn epilogue(
    kernel: CpuKernel,
    tile: &[i32],
    nb: usize,
    epi: &Epi<'_>,
    n0: usize,
    out: &mut [f32],
    cols: usize,
) {
    let corr = &epi.corr[n0..n0 + nb];
    match kernel {
        #[cfg(target_arch = "x86_64")]
        CpuKernel::Avx512Vnni if epi.epilogue.dtype == OutputDType::F32 => {
            // SAFETY: avx512f was detected (kernel is Avx512Vnni); the function only uses
            // slices with checked indexing.
            unsafe { avx512::epilogue_f32(tile, nb, corr, epi, &mut out[n0..], cols) }
        }
        _ => epilogue_generic(tile, nb, corr, epi, &mut out[n0..], cols),
    }
}

#[inline(always)]
fn epilogue_generic(
    tile: &[i32],
    nb: usize,
    corr: &[i32],
    epi: &Epi<'_>,
    out: &mut [f32],
    cols: usize,
) {
    for (r, acc) in tile.chunks(nb).enumerate() {
        let o = &mut out[r * cols..][..nb];
        for ((o, &a), &c) in o.iter_mut().zip(acc).zip(corr) {
            *o = epi
                .epilogue
                .apply(dequantize_acc(a.wrapping_sub(c), epi.w_scale, epi.a_scale));
        }
    }
}

mod portable {
    use super::{Gemm, MicroCall, NR};

    #[inline(always)]
    fn lanes(w: u32) -> [i32; 4] {
        [
            i32::from(w as u8 as i8),
            i32::from((w >> 8) as u8 as i8),
            i32::from((w >> 16) as u8 as i8),
            i32::from((w >> 24) as u8 as i8),
        ]
    }

    /// Portable register tile: each weight word is split into its 4 lanes once per `k`,
    /// then every row does i32 multiply-adds over the columns (auto-vectorised).
    #[inline(always)]
    pub(super) fn micro_body(x: &[u32], w: &[u32], c: &mut [i32], m: &MicroCall) {
        let np = m.np.min(NR);
        if m.first {
            for i in 0..m.mr {
                c[m.c_at + i * m.c_stride..][..np].fill(0);
            }
        }
        let mut wl = [[0i32; NR]; 4];
        for k in 0..m.kn {
            let wrow = &w[m.w_at + k * m.w_stride..][..np];
            for (col, &ww) in wrow.iter().enumerate() {
                let l = lanes(ww);
                wl[0][col] = l[0];
                wl[1][col] = l[1];
                wl[2][col] = l[2];
                wl[3][col] = l[3];
            }
            for i in 0..m.mr {
                let xw = x[m.x_at + i * m.x_stride + k];
                if xw == 0 {
                    continue;
                }
                let xl = xw.to_le_bytes().map(i32::from);
                let crow = &mut c[m.c_at + i * m.c_stride..][..np];
                for (col, acc) in crow.iter_mut().enumerate() {
                    let dot = xl[0] * wl[0][col]
                        + xl[1] * wl[1][col]
                        + xl[2] * wl[2][col]
                        + xl[3] * wl[3][col];
                    *acc = acc.wrapping_add(dot);
                }
            }
        }
    }

    /// [`micro_body`] for the compile target.
    pub(super) fn micro(x: &[u32], w: &[u32], c: &mut [i32], m: &MicroCall) {
        micro_body(x, w, c, m)
    }

    /// [`micro_body`] compiled for AVX2.
    ///
    /// # Safety
    /// The CPU must have avx2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn micro_avx2(x: &[u32], w: &[u32], c: &mut [i32], m: &MicroCall) {
        micro_body(x, w, c, m)
    }

    /// Fully checked fallback (used only if a bound check fails; never after validation).
    pub(super) fn tile_checked(
        g: &Gemm<'_>,
        row0: usize,
        rows: usize,
        n0: usize,
        tile: &mut [i32],
    ) {
        let nb = tile.len() / rows;
        for r in 0..rows {
            for n in 0..nb {
                let mut acc = 0i32;
                for s in g.segs {
                    for k in 0..s.len {
                        let xw =
                            g.x.get(row0 + r * g.x_stride + s.x_off + k)
                                .copied()
                                .unwrap_or(0);
                        let ww =
                            g.w.get((s.w_row + k) * g.w_stride + n0 + n)
                                .copied()
                                .unwrap_or(0);
                        let xl = xw.to_le_bytes().map(i32::from);
                        let wl = lanes(ww);
                        acc = acc.wrapping_add(
                            xl[0] * wl[0] + xl[1] * wl[1] + xl[2] * wl[2] + xl[3] * wl[3],
                        );
                    }
                }
                tile[r * nb + n] = acc;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Epi, MicroCall};
    use std::arch::x86_64::*;

    /// Masks of the 4 column vectors of a tile `np` columns wide.
    #[inline(always)]
    fn masks(np: usize) -> [u16; 4] {
        let mut m = [0u16; 4];
        for (v, mv) in m.iter_mut().enumerate() {
            let lo = 16 * v;
            *mv = if np >= lo + 16 {
                0xffff
            } else if np > lo {
                ((1u32 << (np - lo)) - 1) as u16
            } else {
                0
            };
        }
        m
    }

    /// Dispatches to the register tile of `m.mr` rows × `ceil(m.np/16)` vectors.
    ///
    /// # Safety
    /// The CPU must have avx512f, avx512bw and avx512vnni. All of `x[x_at + i·x_stride + k]`
    /// (i < mr, k < kn), `w[w_at + k·w_stride + j]` (k < kn, j < np) and
    /// `c[c_at + i·c_stride + j]` (i < mr, j < np) must be in bounds.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn micro(x: &[u32], w: &[u32], c: &mut [i32], m: &MicroCall) {
        let nv = m.np.div_ceil(16);
        macro_rules! go {
            ($($mr:literal),*) => {
                match (m.mr, nv) {
                    $(
                        ($mr, 1) => unsafe { tile::<$mr, 1>(x, w, c, m) },
                        ($mr, 2) => unsafe { tile::<$mr, 2>(x, w, c, m) },
                        ($mr, 3) => unsafe { tile::<$mr, 3>(x, w, c, m) },
                        ($mr, 4) => unsafe { tile::<$mr, 4>(x, w, c, m) },
                    )*
                    _ => super::portable::micro(x, w, c, m),
                }
            };
        }
        go!(1, 2, 3, 4, 5, 6)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const R: usize, const V: usize>(
        x: &[u32],
        w: &[u32],
        c: &mut [i32],
        m: &MicroCall,
    ) {
        let mk = masks(m.np);
        let xp = x.as_ptr();
        let wp = w.as_ptr();
        let cp = c.as_mut_ptr();
        let mut acc = [[_mm512_setzero_si512(); V]; R];
        // SAFETY (whole block): indices are within the bounds the caller guarantees; masked
        // loads/stores never touch lanes ≥ np.
        unsafe {
            if !m.first {
                for (i, row) in acc.iter_mut().enumerate() {
                    for (v, a) in row.iter_mut().enumerate() {
                        *a = _mm512_maskz_loadu_epi32(
                            mk[v],
                            cp.add(m.c_at + i * m.c_stride + 16 * v),
                        );
                    }
                }
            }
            let mut xr = [xp; R];
            for (i, p) in xr.iter_mut().enumerate() {
                *p = xp.add(m.x_at + i * m.x_stride);
            }
            for k in 0..m.kn {
                let wr = wp.add(m.w_at + k * m.w_stride);
                let mut wv = [_mm512_setzero_si512(); V];
                for (v, wvv) in wv.iter_mut().enumerate() {
                    *wvv = _mm512_maskz_loadu_epi32(mk[v], wr.add(16 * v) as *const i32);
                }
                for i in 0..R {
                    let xb = _mm512_set1_epi32(*xr[i].add(k) as i32);
                    for v in 0..V {
                        acc[i][v] = _mm512_dpbusd_epi32(acc[i][v], xb, wv[v]);
                    }
                }
            }
            for (i, row) in acc.iter().enumerate() {
                for (v, a) in row.iter().enumerate() {
                    _mm512_mask_storeu_epi32(cp.add(m.c_at + i * m.c_stride + 16 * v), mk[v], *a);
                }
            }
        }
    }

    /// f32 epilogue, 16 wide: `((acc - corr) as f32 · w_scale) · a_scale`, relu as
    /// `v < 0 ? 0 : v` (the same IEEE operations as [`crate::ops::dequantize_acc`] + `finish`). The
    /// 64-byte-aligned body of each row is stored with `vmovntps` when `epi.stream`.
    ///
    /// # Safety
    /// The CPU must have avx512f. `tile.len()` is a multiple of `nb`; `corr.len() >= nb`;
    /// every row `r` of the tile has `out[r·cols .. r·cols + nb]`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn epilogue_f32(
        tile: &[i32],
        nb: usize,
        corr: &[i32],
        epi: &Epi<'_>,
        out: &mut [f32],
        cols: usize,
    ) {
        let (ws, a_s, ep) = (epi.w_scale, epi.a_scale, epi.epilogue);
        let (wsv, asv, zero) = (_mm512_set1_ps(ws), _mm512_set1_ps(a_s), _mm512_setzero_ps());
        let corr = &corr[..nb];
        // 16 outputs from `acc[j..]`, `corr[j..]` (lanes outside `mask` neither read nor
        // written); full aligned vectors may be streamed.
        let vec16 = |acc: &[i32], o: &mut [f32], j: usize, mask: u16, stream: bool| {
            // SAFETY: the callers pass masks covering only lanes j + l < nb, which are in
            // bounds of acc, corr and o; masked lanes are not accessed; streamed stores are
            // full vectors at 64-byte-aligned addresses.
            unsafe {
                let a = _mm512_maskz_loadu_epi32(mask, acc.as_ptr().add(j).cast());
                let c = _mm512_maskz_loadu_epi32(mask, corr.as_ptr().add(j).cast());
                let f = _mm512_cvtepi32_ps(_mm512_sub_epi32(a, c));
                let mut v = _mm512_mul_ps(_mm512_mul_ps(f, wsv), asv);
                if ep.relu {
                    // not > 0 (NaN included): +0.0, as `relu`
                    let off = _mm512_cmp_ps_mask::<_CMP_NGT_UQ>(v, zero);
                    v = _mm512_mask_blend_ps(off, v, zero);
                }
                let p = o.as_mut_ptr().add(j);
                if stream {
                    _mm512_stream_ps(p, v);
                } else {
                    _mm512_mask_storeu_ps(p, mask, v);
                }
            }
        };
        let lanes = |n: usize| {
            if n >= 16 {
                0xffff
            } else {
                ((1u32 << n) - 1) as u16
            }
        };
        for (r, acc) in tile.chunks(nb).enumerate() {
            let o = &mut out[r * cols..][..nb];
            let head = o.as_ptr().align_offset(64).min(nb);
            if head > 0 {
                vec16(acc, o, 0, lanes(head), false);
            }
            let mut j = head;
            while j + 16 <= nb {
                vec16(acc, o, j, 0xffff, epi.stream);
                j += 16;
            }
            if j < nb {
                vec16(acc, o, j, lanes(nb - j), false);
            }
        }
        if epi.stream {
            // Order the non-temporal stores before the task reports completion.
            _mm_sfence();
        }
    }
}

impl Backend for CpuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }
    fn name(&self) -> String {
        let threads = rayon::current_num_threads();
        match self.kernel {
            CpuKernel::Portable => format!("cpu (portable, {threads} threads)"),
            CpuKernel::Avx2 => format!("cpu (avx2, {threads} threads)"),
            CpuKernel::Avx512Vnni => format!("cpu (avx512-vnni, {threads} threads)"),
        }
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
        let s = resolve_scale(OP, x, format, scale)?;
        let mut codes = vec![0i32; x.len()];
        codes
            .par_chunks_mut(ELEMS_PER_TASK)
            .zip(x.par_chunks(ELEMS_PER_TASK))
            .for_each(|(c, xs)| {
                if simd::avx512() {
                    // SAFETY: avx512f/bw detected.
                    unsafe { simd::codes_chunk_avx512(xs, c, format, s) }
                } else {
                    simd::codes_chunk(xs, c, format, s)
                }
            });
        Ok((codes, s))
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
        check_quantize_shape(OP, shape)?;
        if x.len() != shape.len() {
            return Err(LowbitError::len(OP, "activations", shape.len(), x.len()));
        }
        let mut words = vec![0u32; shape.words_len()];
        let s = self.quantize_pack_into(x, shape, format, scale, &mut words)?;
        Ok((words, s))
    }
    fn lowrank(&self, shape: &LowrankShape, args: &ProjectionArgs<'_>) -> Result<ProjectionOutput> {
        shape.validate()?;
        let mut values = vec![POISON_F32; shape.out_len()];
        let a_scale = self.lowrank_into(shape, args, &mut values)?;
        Ok(ProjectionOutput { values, a_scale })
    }
    fn decoder_tail(
        &self,
        shape: &DecoderTailShape,
        args: &ProjectionArgs<'_>,
    ) -> Result<ProjectionOutput> {
        shape.validate()?;
        let mut values = vec![POISON_F32; shape.out_len()];
        let a_scale = self.decoder_tail_into(shape, args, &mut values)?;
        Ok(ProjectionOutput { values, a_scale })
    }
    fn rho_int8_pack(&self, shape: &RhoShape, values: &[f32]) -> Result<(Vec<u32>, Vec<f32>)> {
        const OP: &str = "cpu::rho_int8_pack";
        let _ = RhoShape::new(shape.logical_shape)?;
        if values.len() != shape.len() {
            return Err(LowbitError::len(
                OP,
                "rho values",
                shape.len(),
                values.len(),
            ));
        }
        check_finite_par(OP, "rho values", values)?;
        let mut words = vec![0u32; shape.int8_words()];
        let mut scales = vec![0f32; shape.blocks()];
        words
            .par_chunks_mut(RHO_WORDS_PER_BLOCK * RHO_BLOCKS_PER_TASK)
            .zip(scales.par_chunks_mut(RHO_BLOCKS_PER_TASK))
            .zip(values.par_chunks(RHO_BLOCK_SIZE * RHO_BLOCKS_PER_TASK))
            .for_each(|((wds, scs), vals)| {
                if simd::avx512() {
                    // SAFETY: avx512f/bw detected.
                    unsafe { simd::rho_pack_avx512(vals, wds, scs) }
                } else {
                    simd::rho_pack(vals, wds, scs)
                }
            });
        Ok((words, scales))
    }
    fn rho_int8_unpack(&self, shape: &RhoShape, words: &[u32], scales: &[f32]) -> Result<Vec<f32>> {
        const OP: &str = "cpu::rho_int8_unpack";

        shape.check_int8_state(OP, words.len(), scales.len())?;
        let mut out = vec![POISON_F32; shape.len()];
        out.par_chunks_mut(RHO_BLOCK_SIZE * RHO_BLOCKS_PER_TASK)
            .zip(words.par_chunks(RHO_WORDS_PER_BLOCK * RHO_BLOCKS_PER_TASK))
            .zip(scales.par_chunks(RHO_BLOCKS_PER_TASK))
            .for_each(|((o, wds), scs)| {
                if simd::avx512() {
                    // SAFETY: avx512f/bw detected.
                    unsafe { simd::rho_unpack_avx512(wds, scs, o) }
                } else {
                    simd::rho_unpack(wds, scs, o)
                }
            });
        Ok(out)
    }
}
