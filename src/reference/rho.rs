//! Rho int8 block compression in the device layout: per block of 32, scale
//! `max(max|v|/127, EPS)` and codes `clamp(round(v/s), ±127)` packed 4 per word (8 words per
//! block; the last block's missing elements are zero lanes).

use crate::error::{LowbitError, Result};
use crate::ops::rho::{RHO_BLOCK_SIZE, RHO_WORDS_PER_BLOCK, RhoShape};
use crate::pack::{pack_i8x4, unpack_i8x4};
use crate::quant::{EPS, check_finite, round_half_away};

/// Scale of one int8 rho block.
#[inline]
pub fn rho_int8_block_scale(block: &[f32]) -> f32 {
    (block.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0).max(EPS)
}

/// One int8 rho code.
#[inline]
pub fn rho_int8_code(v: f32, scale: f32) -> i8 {
    round_half_away(v / scale).clamp(-127.0, 127.0) as i8
}

/// Packs `values` (flattened `[B, H, N, D]`) into `(words, scales)`.
pub fn rho_int8_pack_words(shape: &RhoShape, values: &[f32]) -> Result<(Vec<u32>, Vec<f32>)> {
    const OP: &str = "reference::rho_int8_pack_words";
    if values.len() != shape.len() {
        return Err(LowbitError::len(
            OP,
            "rho values",
            shape.len(),
            values.len(),
        ));
    }
    check_finite(OP, "rho values", values)?;
    let mut words = Vec::with_capacity(shape.int8_words());
    let mut scales = Vec::with_capacity(shape.blocks());
    for block in values.chunks(RHO_BLOCK_SIZE) {
        let scale = rho_int8_block_scale(block);
        scales.push(scale);
        for w in 0..RHO_WORDS_PER_BLOCK {
            let mut lanes = [0i8; 4];
            for (j, lane) in lanes.iter_mut().enumerate() {
                if let Some(&v) = block.get(4 * w + j) {
                    *lane = rho_int8_code(v, scale);
                }
            }
            words.push(pack_i8x4(lanes));
        }
    }
    Ok((words, scales))
}

/// Inverse of [`rho_int8_pack_words`]: `code · scale` per element.
pub fn rho_int8_unpack_words(shape: &RhoShape, words: &[u32], scales: &[f32]) -> Result<Vec<f32>> {
    const OP: &str = "reference::rho_int8_unpack_words";
    shape.check_int8_state(OP, words.len(), scales.len())?;
    Ok((0..shape.len())
        .map(|i| {
            let lanes = unpack_i8x4(words[i / 4]);
            f32::from(lanes[i % 4]) * scales[i / RHO_BLOCK_SIZE]
        })
        .collect())
}
