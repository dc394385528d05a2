//! Low-rank projection `x[B, 1|H, T, D] · W[H, D, N] → out[B, H, T, latent_out]`.

use super::{checked_len, sat_len};
use crate::error::{LowbitError, Result};
use crate::quant::check_accumulator;

/// Op name used in this op's error messages.
pub const OP: &str = "lowrank";

/// Validated problem shape of one low-rank projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LowrankShape {
    /// `B`, sequences in the batch.
    pub batch: usize,
    /// Heads of the input: 1 (broadcast over heads) or `heads`.
    pub in_heads: usize,
    /// `H`, heads of the weight and of the output.
    pub heads: usize,
    /// `T`, tokens per sequence.
    pub time: usize,
    /// D, the reduction axis.
    pub embd: usize,
    /// N of the weight artifact.
    pub latent: usize,
    /// Columns computed: the first `latent_out ≤ N`.
    pub latent_out: usize,
}

impl LowrankShape {
    /// Checks `x_shape = [B, Hin, T, D]` against `w_shape = [H, D, N]` and `latent_out`.
    pub fn new(x_shape: [usize; 4], w_shape: [usize; 3], latent_out: usize) -> Result<Self> {
        let [batch, in_heads, time, embd] = x_shape;
        let [heads, w_embd, latent] = w_shape;
        checked_len(OP, &x_shape)?;
        checked_len(OP, &w_shape)?;
        if in_heads != 1 && in_heads != heads {
            return Err(LowbitError::shape(
                OP,
                format!("input heads 1 or {heads} (weight {w_shape:?})"),
                format!("{x_shape:?}"),
            ));
        }
        if embd != w_embd {
            return Err(LowbitError::shape(
                OP,
                format!("input D = weight D = {w_embd} (weight {w_shape:?})"),
                format!("{x_shape:?}"),
            ));
        }
        if latent_out == 0 || latent_out > latent {
            return Err(LowbitError::InvalidArgument {
                op: OP,
                what: "latent_out",
                reason: format!("{latent_out} must be in 1..={latent}"),
            });
        }
        let shape = Self {
            batch,
            in_heads,
            heads,
            time,
            embd,
            latent,
            latent_out,
        };
        checked_len(OP, &shape.out_shape())?;
        Ok(shape)
    }

    /// BDH sizes with `m = B·T` tokens (B = 1), shared input: D=embd, H heads, N latent.
    pub fn bdh(m: usize, heads: usize, embd: usize, latent: usize) -> Result<Self> {
        Self::new([1, 1, m, embd], [heads, embd, latent], latent)
    }

    /// Re-checks a shape that may have been built as a struct literal (its fields are public):
    /// backends call this before touching buffers.
    pub fn validate(&self) -> Result<()> {
        if Self::new(self.x_shape(), self.w_shape(), self.latent_out)? == *self {
            Ok(())
        } else {
            Err(LowbitError::shape(
                OP,
                "a consistent shape",
                format!("{self:?}"),
            ))
        }
    }

    /// Input shape `[B, Hin, T, D]`.
    pub fn x_shape(&self) -> [usize; 4] {
        [self.batch, self.in_heads, self.time, self.embd]
    }
    /// Weight shape `[H, D, N]`.
    pub fn w_shape(&self) -> [usize; 3] {
        [self.heads, self.embd, self.latent]
    }
    /// Output shape `[B, H, T, latent_out]`.
    pub fn out_shape(&self) -> [usize; 4] {
        [self.batch, self.heads, self.time, self.latent_out]
    }
    /// Words per input row: `ceil(D/4)`.
    pub fn k_words(&self) -> usize {
        self.embd.div_ceil(4)
    }
    /// Input elements `B·Hin·T·D`.
    pub fn x_len(&self) -> usize {
        sat_len(&[self.batch, self.in_heads, self.time, self.embd])
    }
    /// i8x4 words of the packed input `[B, Hin, T, ceil(D/4)]`.
    pub fn x_words_len(&self) -> usize {
        sat_len(&[self.batch, self.in_heads, self.time, self.k_words()])
    }
    /// Weight elements `H·D·N`.
    pub fn w_len(&self) -> usize {
        sat_len(&[self.heads, self.embd, self.latent])
    }
    /// Words of the packed weight `[H, ceil(D/4), N]`.
    pub fn w_words_len(&self) -> usize {
        sat_len(&[self.heads, self.k_words(), self.latent])
    }
    /// u32 words of the weight in the ternary2 fragment layout
    /// ([`crate::pack::pack_ternary2_fragments`]).
    pub fn w_ternary2_len(&self) -> usize {
        sat_len(&[
            self.heads,
            crate::pack::ternary2_rows(self.k_words()),
            self.latent,
        ])
    }
    /// Output elements `B·H·T·latent_out`.
    pub fn out_len(&self) -> usize {
        sat_len(&[self.batch, self.heads, self.time, self.latent_out])
    }
    /// Tokens `B·T`.
    pub fn m(&self) -> usize {
        sat_len(&[self.batch, self.time])
    }
    /// Integer ops (one multiply + one add per MAC) of the useful work.
    pub fn int_ops(&self) -> u64 {
        [
            self.batch,
            self.heads,
            self.time,
            self.embd,
            self.latent_out,
        ]
        .iter()
        .fold(2u64, |a, &d| a.saturating_mul(d as u64))
    }
    /// Errors if `D · qmax_a · qmax_w ≥ 2^31`.
    pub fn check_accumulator(&self, qmax_a: u32, qmax_w: u32) -> Result<()> {
        check_accumulator(OP, self.embd, qmax_a, qmax_w)
    }
    /// Row of the input used by output head `h`.
    #[inline]
    pub fn in_head(&self, h: usize) -> usize {
        if self.in_heads == 1 { 0 } else { h }
    }
}
