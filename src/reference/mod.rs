//! The CPU reference: naive, obviously correct loops that define what every kernel computes.
//!
//! Nothing here is fast and nothing here is clever; each function is a direct transcription of
//! SPEC.md. Backends (CPU, CUDA, WGSL) are tested against these functions bit for bit wherever
//! the math is integer: equal codes and scales give equal outputs.

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
    let (d_len, n_len) = (shape.embd, shape.latent);
    let mut out = vec![0.0f32; shape.out_len()];
    for b in 0..shape.batch {
        for h in 0..shape.heads {
            for t in 0..shape.time {
                let x_row = ((b * shape.in_heads + shape.in_head(h)) * shape.time + t) * d_len;
                for n in 0..shape.latent_out {
                    let mut acc = 0i32;
                    for d in 0..d_len {
                        let w = i32::from(w_codes[(h * d_len + d) * n_len + n]);
                        acc = acc.wrapping_add(x_codes[x_row + d].wrapping_mul(w));
                    }
                    out[((b * shape.heads + h) * shape.time + t) * shape.latent_out + n] =
                        dequantize_acc(acc, w_scale, a_scale);
                }
            }
        }
    }
    Ok(out)
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
    let (d_len, n_len) = (shape.embd, shape.latent);
    let mut out = vec![0.0f32; shape.out_len()];
    for b in 0..shape.batch {
        for h in 0..shape.heads {
            for t in 0..shape.time {
                let x_row = ((b * shape.in_heads + shape.in_head(h)) * shape.time + t) * d_len;
                for n in 0..shape.latent_out {
                    let mut acc = 0.0f32;
                    for d in 0..d_len {
                        acc += (f32::from(w_codes[(h * d_len + d) * n_len + n]) * w_scale)
                            * x[x_row + d];
                    }
                    out[((b * shape.heads + h) * shape.time + t) * shape.latent_out + n] = acc;
                }
            }
        }
    }
    Ok(out)
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
    let (l_len, dim) = (shape.latent, shape.dim);
    let mut out = vec![0.0f32; shape.out_len()];
    for b in 0..shape.batch {
        for t in 0..shape.time {
            for e in 0..dim {
                let mut acc = 0i32;
                for h in 0..shape.heads {
                    let y_row = ((b * shape.heads + h) * shape.time + t) * l_len;
                    let w_base = h * shape.latent_per_head * dim;
                    for l in 0..l_len {
                        let w = i32::from(w_codes[w_base + l * dim + e]);
                        acc = acc.wrapping_add(y_codes[y_row + l].wrapping_mul(w));
                    }
                }
                out[(b * shape.time + t) * dim + e] = dequantize_acc(acc, w_scale, a_scale);
            }
        }
    }
    Ok(out)
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
    let (l_len, dim) = (shape.latent, shape.dim);
    let mut out = vec![0.0f32; shape.out_len()];
    for b in 0..shape.batch {
        for t in 0..shape.time {
            for e in 0..dim {
                let mut acc = 0.0f32;
                for h in 0..shape.heads {
                    let y_row = ((b * shape.heads + h) * shape.time + t) * l_len;
                    let w_base = h * shape.latent_per_head * dim;
                    for l in 0..l_len {
                        acc += (f32::from(w_codes[w_base + l * dim + e]) * w_scale) * y[y_row + l];
                    }
                }
                out[(b * shape.time + t) * dim + e] = acc;
            }
        }
    }
    Ok(out)
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
