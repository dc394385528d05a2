//! The CPU reference: naive, obviously correct loops that define what every kernel computes.
//!
//! Nothing here is fast and nothing here is clever; each function is a direct transcription of
//! SPEC.md. Backends (CPU, CUDA, WGSL) are tested against these functions bit for bit wherever
//! the math is integer: equal codes and scales give equal outputs.
//!
//! The projections keep one row of outputs' accumulators and run the output column innermost,
//! so that weight rows are read in memory order; each output's own sum still runs in the order
//! its doc states (the same f32 additions, so the float paths' results do not depend on it).

pub mod rho;

use crate::artifact::PackedWeightArtifact;
use crate::config::LowBitActivationFormat;
use crate::error::{LowbitError, Result};
use crate::ops::{DecoderTailShape, LowrankShape, dequantize_acc};
use crate::quant::{ActivationCodes, quantize_activations};

fn check_len<T>(op: &'static str, what: &'static str, data: &[T], expected: usize) -> Result<()> {
    if data.len() == expected {
        Ok(())
    } else {
        Err(LowbitError::len(op, what, expected, data.len()))
    }
}

/// Integer low-rank projection on codes: the bit-exact oracle of every integer kernel.
///
/// `x_codes` is `[B, Hin, T, D]` (i32 codes of any activation format), `w_codes` is `[H, D, N]`.
/// `out[b,h,t,n] = (Σ_d x[b,hin,t,d]·w[h,d,n] as f32 · w_scale) · a_scale` for `n < latent_out`.
pub fn lowrank_projection_codes(
    shape: &LowrankShape,
    x_codes: &[i32],
    w_codes: &[i8],
    a_scale: f32,
    w_scale: f32,
) -> Result<Vec<f32>> {
    const OP: &str = "reference::lowrank_projection_codes";
    shape.validate()?; // a literal shape is checked before it indexes anything
    check_len(OP, "x codes", x_codes, shape.x_len())?;
    check_len(OP, "weight codes", w_codes, shape.w_len())?;
    Ok(sum_codes(
        lowrank_rows(shape),
        x_codes,
        w_codes,
        shape.latent_out,
        (a_scale, w_scale),
        shape.out_len(),
    ))
}

/// The output rows of the low-rank projection, `(b, h, t)` in order: each row's offset in
/// `[B, H, T, latent_out]` and its sum's terms, `(x index, weight row offset)` in order of
/// `d` (the weight row's first `latent_out` codes are the row's weights).
fn lowrank_rows(
    shape: &LowrankShape,
) -> impl Iterator<Item = (usize, impl Iterator<Item = (usize, usize)>)> + '_ {
    let (d_len, n_len) = (shape.embd, shape.latent);
    (0..shape.batch).flat_map(move |b| {
        (0..shape.heads).flat_map(move |h| {
            (0..shape.time).map(move |t| {
                let x_row = ((b * shape.in_heads + shape.in_head(h)) * shape.time + t) * d_len;
                let o = ((b * shape.heads + h) * shape.time + t) * shape.latent_out;
                (
                    o,
                    (0..d_len).map(move |d| (x_row + d, (h * d_len + d) * n_len)),
                )
            })
        })
    })
}

/// Float low-rank projection (`Fp16`/no activation quantization): `Σ_d (w·w_scale)·x` in f32,
/// summed in order of `d`.
pub fn lowrank_projection_float(
    shape: &LowrankShape,
    x: &[f32],
    w_codes: &[i8],
    w_scale: f32,
) -> Result<Vec<f32>> {
    const OP: &str = "reference::lowrank_projection_float";
    shape.validate()?; // a literal shape is checked before it indexes anything
    check_len(OP, "x", x, shape.x_len())?;
    check_len(OP, "weight codes", w_codes, shape.w_len())?;
    Ok(sum_float(
        lowrank_rows(shape),
        x,
        w_codes,
        shape.latent_out,
        w_scale,
        shape.out_len(),
    ))
}

/// The seed's `packed_lowrank_projection_reference`: quantize `x` per tensor in `format`
/// (`None` = float path), unpack the artifact, project. Returns `[B, H, T, latent_out]`.
pub fn lowrank_projection(
    x: &[f32],
    x_shape: [usize; 4],
    artifact: &PackedWeightArtifact,
    format: Option<LowBitActivationFormat>,
    latent_out: usize,
) -> Result<Vec<f32>> {
    const OP: &str = "reference::lowrank_projection";
    let shape = LowrankShape::new(x_shape, artifact.shape3(OP)?, latent_out)?;
    check_len(OP, "x", x, shape.x_len())?;
    let w_codes = artifact.codes()?;
    let format = format.unwrap_or(LowBitActivationFormat::Fp16);
    if let Some(qmax) = format.qmax() {
        shape.check_accumulator(qmax, artifact.encoding.qmax())?;
    }
    match quantize_activations(x, format)? {
        ActivationCodes::Float(values) => {
            lowrank_projection_float(&shape, &values, &w_codes, artifact.scale)
        }
        q => lowrank_projection_codes(
            &shape,
            &q.codes_i32(),
            &w_codes,
            q.scale().unwrap_or(1.0),
            artifact.scale,
        ),
    }
}

/// Integer decoder tail on codes: the bit-exact oracle of every integer decoder kernel.
///
/// `y_codes` is `[B, H, T, L]`, `w_codes` is `[H·Lart, D]`; heads are summed into one i32.
pub fn decoder_tail_codes(
    shape: &DecoderTailShape,
    y_codes: &[i32],
    w_codes: &[i8],
    a_scale: f32,
    w_scale: f32,
) -> Result<Vec<f32>> {
    const OP: &str = "reference::decoder_tail_codes";
    shape.validate()?; // a literal shape is checked before it indexes anything
    check_len(OP, "y codes", y_codes, shape.y_len())?;
    check_len(OP, "weight codes", w_codes, shape.w_len())?;
    Ok(sum_codes(
        decoder_rows(shape),
        y_codes,
        w_codes,
        shape.dim,
        (a_scale, w_scale),
        shape.out_len(),
    ))
}

/// The output rows of the decoder tail, `(b, t)` in order: each row's offset in
/// `[B, 1, T, D]` and its sum's terms, `(y index, weight row offset)` with heads outer and
/// `l` inner (the weight row's `D` codes are the row's weights).
fn decoder_rows(
    shape: &DecoderTailShape,
) -> impl Iterator<Item = (usize, impl Iterator<Item = (usize, usize)>)> + '_ {
    let (l_len, dim) = (shape.latent, shape.dim);
    (0..shape.batch).flat_map(move |b| {
        (0..shape.time).map(move |t| {
            let terms = (0..shape.heads).flat_map(move |h| {
                let y_row = ((b * shape.heads + h) * shape.time + t) * l_len;
                let w_base = h * shape.latent_per_head * dim;
                (0..l_len).map(move |l| (y_row + l, w_base + l * dim))
            });
            ((b * shape.time + t) * dim, terms)
        })
    })
}

/// Float decoder tail: `Σ_h Σ_l (w·w_scale)·y` in f32, heads outer, `l` inner.
pub fn decoder_tail_float(
    shape: &DecoderTailShape,
    y: &[f32],
    w_codes: &[i8],
    w_scale: f32,
) -> Result<Vec<f32>> {
    const OP: &str = "reference::decoder_tail_float";
    shape.validate()?; // a literal shape is checked before it indexes anything
    check_len(OP, "y", y, shape.y_len())?;
    check_len(OP, "weight codes", w_codes, shape.w_len())?;
    Ok(sum_float(
        decoder_rows(shape),
        y,
        w_codes,
        shape.dim,
        w_scale,
        shape.out_len(),
    ))
}

/// The integer oracles' sums: for each `(offset, terms)` of `rows`, the `n` outputs at `offset`
/// are `Σ act[i] · w[j..j + n]` over its terms `(i, j)` in order, in wrapping i32, dequantized.
fn sum_codes<T: IntoIterator<Item = (usize, usize)>>(
    rows: impl Iterator<Item = (usize, T)>,
    acts: &[i32],
    w_codes: &[i8],
    n: usize,
    (a_scale, w_scale): (f32, f32),
    out_len: usize,
) -> Vec<f32> {
    let mut out = vec![0.0f32; out_len];
    let mut acc = vec![0i32; n];
    for (o, terms) in rows {
        acc.fill(0);
        for (i, j) in terms {
            let x = acts[i];
            for (a, &w) in acc.iter_mut().zip(&w_codes[j..][..n]) {
                *a = a.wrapping_add(x.wrapping_mul(i32::from(w)));
            }
        }
        for (dst, &a) in out[o..o + n].iter_mut().zip(&acc) {
            *dst = dequantize_acc(a, w_scale, a_scale);
        }
    }
    out
}

/// The float oracles' sums: as [`sum_codes`], `Σ (w·w_scale)·act` in f32, in the terms' order.
fn sum_float<T: IntoIterator<Item = (usize, usize)>>(
    rows: impl Iterator<Item = (usize, T)>,
    acts: &[f32],
    w_codes: &[i8],
    n: usize,
    w_scale: f32,
    out_len: usize,
) -> Vec<f32> {
    let mut out = vec![0.0f32; out_len];
    for (o, terms) in rows {
        let acc = &mut out[o..o + n];
        for (i, j) in terms {
            let x = acts[i];
            for (a, &w) in acc.iter_mut().zip(&w_codes[j..][..n]) {
                *a += (f32::from(w) * w_scale) * x;
            }
        }
    }
    out
}

/// The seed's `packed_decoder_tail_reference`: quantize `y` per tensor, unpack the artifact,
/// sum over heads. Returns `[B, 1, T, D]`.
pub fn decoder_tail(
    y: &[f32],
    y_shape: [usize; 4],
    artifact: &PackedWeightArtifact,
    format: Option<LowBitActivationFormat>,
) -> Result<Vec<f32>> {
    const OP: &str = "reference::decoder_tail";
    let shape = DecoderTailShape::new(y_shape, artifact.shape2(OP)?)?;
    check_len(OP, "y", y, shape.y_len())?;
    let w_codes = artifact.codes()?;
    let format = format.unwrap_or(LowBitActivationFormat::Fp16);
    if let Some(qmax) = format.qmax() {
        shape.check_accumulator(qmax, artifact.encoding.qmax())?;
    }
    match quantize_activations(y, format)? {
        ActivationCodes::Float(values) => {
            decoder_tail_float(&shape, &values, &w_codes, artifact.scale)
        }
        q => decoder_tail_codes(
            &shape,
            &q.codes_i32(),
            &w_codes,
            q.scale().unwrap_or(1.0),
            artifact.scale,
        ),
    }
}
