//! Decoder tail `y[B, H, T, L] · W[H·Lart, D]`, summed over heads → `out[B, 1, T, D]`.

use super::{checked_len, sat_len};
use crate::error::{LowbitError, Result};
use crate::quant::check_accumulator;

/// Op name used in this op's error messages.
pub const OP: &str = "decoder_tail";

/// Validated problem shape of one decoder tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DecoderTailShape {
    /// `B`, sequences in the batch.
    pub batch: usize,
    /// `H`, heads summed over.
    pub heads: usize,
    /// `T`, tokens per sequence.
    pub time: usize,
    /// L, the latent rows used per head (the first `L` of each head's block).
    pub latent: usize,
    /// Lart, rows per head in the artifact.
    pub latent_per_head: usize,
    /// D, the output width.
    pub dim: usize,
}

impl DecoderTailShape {
    /// Checks `y_shape = [B, H, T, L]` against `w_shape = [H·Lart, D]`.
    pub fn new(y_shape: [usize; 4], w_shape: [usize; 2]) -> Result<Self> {
        let [batch, heads, time, latent] = y_shape;
        let [rows, dim] = w_shape;
        checked_len(OP, &y_shape)?;
        checked_len(OP, &w_shape)?;
        if rows % heads != 0 {
            return Err(LowbitError::shape(
                OP,
                format!("weight rows divisible by heads = {heads}"),
                format!("weight {w_shape:?}"),
            ));
        }
        let latent_per_head = rows / heads;
        if latent > latent_per_head {
            return Err(LowbitError::shape(
                OP,
                format!(
                    "input L <= artifact latent per head {latent_per_head} (weight {w_shape:?})"
                ),
                format!("{y_shape:?}"),
            ));
        }
        let shape = Self {
            batch,
            heads,
            time,
            latent,
            latent_per_head,
            dim,
        };
        checked_len(OP, &shape.out_shape())?;
        Ok(shape)
    }

    /// BDH sizes with `m = B·T` tokens (B = 1).
    pub fn bdh(m: usize, heads: usize, latent: usize, dim: usize) -> Result<Self> {
        Self::new([1, heads, m, latent], [heads * latent, dim])
    }

    /// Re-checks a shape that may have been built as a struct literal (its fields are public):
    /// backends call this before touching buffers.
    pub fn validate(&self) -> Result<()> {
        if Self::new(self.y_shape(), self.w_shape())? == *self {
            Ok(())
        } else {
            Err(LowbitError::shape(
                OP,
                "a consistent shape",
                format!("{self:?}"),
            ))
        }
    }

    /// Input shape `[B, H, T, L]`.
    pub fn y_shape(&self) -> [usize; 4] {
        [self.batch, self.heads, self.time, self.latent]
    }
    /// Weight shape `[H·Lart, D]`.
    pub fn w_shape(&self) -> [usize; 2] {
        [sat_len(&[self.heads, self.latent_per_head]), self.dim]
    }
    /// Output shape `[B, 1, T, D]`.
    pub fn out_shape(&self) -> [usize; 4] {
        [self.batch, 1, self.time, self.dim]
    }
    /// Words per input row: `ceil(L/4)`.
    pub fn k_words(&self) -> usize {
        self.latent.div_ceil(4)
    }
    /// Words per head block of the packed weight: `ceil(Lart/4)`.
    pub fn w_head_words(&self) -> usize {
        self.latent_per_head.div_ceil(4)
    }
    /// Input elements `B·H·T·L`.
    pub fn y_len(&self) -> usize {
        sat_len(&[self.batch, self.heads, self.time, self.latent])
    }
    /// i8x4 words of the packed input `[B, H, T, ceil(L/4)]`.
    pub fn y_words_len(&self) -> usize {
        sat_len(&[self.batch, self.heads, self.time, self.k_words()])
    }
    /// Weight elements `H·Lart·D`.
    pub fn w_len(&self) -> usize {
        sat_len(&[self.heads, self.latent_per_head, self.dim])
    }
    /// Words of the packed weight `[H·ceil(Lart/4), D]`.
    pub fn w_words_len(&self) -> usize {
        sat_len(&[self.heads, self.w_head_words(), self.dim])
    }
    /// u32 words of the weight in the ternary2 fragment layout
    /// ([`crate::pack::pack_ternary2_fragments`]).
    pub fn w_ternary2_len(&self) -> usize {
        sat_len(&[
            self.heads,
            crate::pack::ternary2_rows(self.w_head_words()),
            self.dim,
        ])
    }
    /// Output elements `B·T·D`.
    pub fn out_len(&self) -> usize {
        sat_len(&[self.batch, self.time, self.dim])
    }
    /// Tokens `M = B·T`, the output rows.
    pub fn m(&self) -> usize {
        sat_len(&[self.batch, self.time])
    }
    /// Reduction length `H·L`.
    pub fn k(&self) -> usize {
        sat_len(&[self.heads, self.latent])
    }
    /// Integer ops (one multiply + one add per MAC) of the useful work: `2·M·H·L·D`.
    pub fn int_ops(&self) -> u64 {
        [self.batch, self.time, self.heads, self.latent, self.dim]
            .iter()
            .fold(2u64, |a, &d| a.saturating_mul(d as u64))
    }
    /// Errors if `H·L · qmax_a · qmax_w ≥ 2^31`.
    pub fn check_accumulator(&self, qmax_a: u32, qmax_w: u32) -> Result<()> {
        check_accumulator(OP, self.k(), qmax_a, qmax_w)
    }
}
