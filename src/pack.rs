//! Bit-level storage formats (SPEC.md, little-endian, stable) and the int8x4 packers.
//!
//! * ternary 2-bit: `v ∈ {-1,0,1}` stored as `v+1`; element `i` in byte `i/4` at bit `2·(i%4)`;
//!   `0b11` is invalid; unused bits of the last byte are zero.
//! * binary 1-bit: element `i` in byte `i/8` at bit `i%8`; 1 → +1, 0 → −1.
//! * int8x4 words: byte `j` of a `u32` holds element `4k+j` of the packed axis; a partial last
//!   word is zero-padded (the dp4a / `dot4I8Packed` lane order).

use crate::error::{LowbitError, Result};

/// Ternary codes packed 4 per byte (`PackedTernaryBuffer` in the seed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedTernaryBuffer {
    /// 2-bit codes (`v+1`), 4 per byte, element `i` at bit `2·(i%4)` of byte `i/4`.
    pub packed: Vec<u8>,
    /// Number of ternary elements; `packed.len() == len.div_ceil(4)`.
    pub len: usize,
}

/// Packs ternary codes; any code outside {-1, 0, 1} is an error.
pub fn pack_ternary_2bit(values: &[i8]) -> Result<PackedTernaryBuffer> {
    let mut packed = vec![0u8; values.len().div_ceil(4)];
    for (i, &v) in values.iter().enumerate() {
        if !(-1..=1).contains(&v) {
            return Err(LowbitError::InvalidArgument {
                op: "pack_ternary_2bit",
                what: "code",
                reason: format!("element {i} is {v}, not in {{-1, 0, 1}}"),
            });
        }
        packed[i / 4] |= ((v + 1) as u8) << (2 * (i % 4));
    }
    Ok(PackedTernaryBuffer {
        packed,
        len: values.len(),
    })
}

/// Unpacks ternary codes; `0b11` anywhere, a short buffer, or set padding bits are errors.
pub fn unpack_ternary_2bit(buffer: &PackedTernaryBuffer) -> Result<Vec<i8>> {
    unpack_ternary_2bit_slice(&buffer.packed, buffer.len)
}

/// [`unpack_ternary_2bit`] on a borrowed byte slice.
pub fn unpack_ternary_2bit_slice(packed: &[u8], len: usize) -> Result<Vec<i8>> {
    let need = len.div_ceil(4);
    if packed.len() != need {
        return Err(LowbitError::len(
            "unpack_ternary_2bit",
            "packed bytes",
            need,
            packed.len(),
        ));
    }
    let mut out = Vec::with_capacity(len);
    for i in 0..len {
        let bits = (packed[i / 4] >> (2 * (i % 4))) & 0b11;
        if bits == 0b11 {
            return Err(LowbitError::InvalidTernaryCode { index: i });
        }
        out.push(bits as i8 - 1);
    }
    check_padding("unpack_ternary_2bit", packed, len * 2)?;
    Ok(out)
}

/// Packs ±1 codes one bit each; any other code is an error.
pub fn pack_binary_1bit(values: &[i8]) -> Result<Vec<u8>> {
    let mut packed = vec![0u8; values.len().div_ceil(8)];
    for (i, &v) in values.iter().enumerate() {
        match v {
            1 => packed[i / 8] |= 1 << (i % 8),
            -1 => {}
            _ => {
                return Err(LowbitError::InvalidArgument {
                    op: "pack_binary_1bit",
                    what: "code",
                    reason: format!("element {i} is {v}, not ±1"),
                });
            }
        }
    }
    Ok(packed)
}

/// Unpacks `len` ±1 codes; a wrong byte count or set padding bits are errors.
pub fn unpack_binary_1bit(packed: &[u8], len: usize) -> Result<Vec<i8>> {
    let need = len.div_ceil(8);
    if packed.len() != need {
        return Err(LowbitError::len(
            "unpack_binary_1bit",
            "packed bytes",
            need,
            packed.len(),
        ));
    }
    check_padding("unpack_binary_1bit", packed, len)?;
    Ok((0..len)
        .map(|i| {
            if packed[i / 8] >> (i % 8) & 1 == 1 {
                1
            } else {
                -1
            }
        })
        .collect())
}

/// The bits past `used_bits` in the last byte must be zero (the format is canonical).
fn check_padding(op: &'static str, packed: &[u8], used_bits: usize) -> Result<()> {
    let rem = used_bits % 8;
    if rem != 0
        && let Some(&last) = packed.last()
        && last >> rem != 0
    {
        return Err(LowbitError::InvalidArgument {
            op,
            what: "padding",
            reason: "unused bits of the last byte must be zero".into(),
        });
    }
    Ok(())
}

/// Packs four signed bytes into one dp4a word (byte `j` = lane `j`).
#[inline]
pub fn pack_i8x4(lanes: [i8; 4]) -> u32 {
    u32::from_le_bytes(lanes.map(|b| b as u8))
}

/// Splits a dp4a word into its four signed lanes.
#[inline]
pub fn unpack_i8x4(word: u32) -> [i8; 4] {
    word.to_le_bytes().map(|b| b as i8)
}

fn checked_product(op: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| LowbitError::invalid_shape(op, dims, "element count overflows usize"))
}

/// Packs `codes` of logical shape `[outer, k, inner]` along the middle axis `k`:
/// the result has shape `[outer, ceil(k/4), inner]`.
fn pack_middle_axis(
    op: &'static str,
    codes: &[i8],
    outer: usize,
    k: usize,
    inner: usize,
) -> Result<Vec<u32>> {
    let total = checked_product(op, &[outer, k, inner])?;
    if codes.len() != total {
        return Err(LowbitError::len(op, "codes", total, codes.len()));
    }
    let kw = k.div_ceil(4);
    let mut out = vec![0u32; outer * kw * inner];
    for o in 0..outer {
        for w in 0..kw {
            for i in 0..inner {
                let mut lanes = [0i8; 4];
                for (j, lane) in lanes.iter_mut().enumerate() {
                    let kk = 4 * w + j;
                    if kk < k {
                        *lane = codes[(o * k + kk) * inner + i];
                    }
                }
                out[(o * kw + w) * inner + i] = pack_i8x4(lanes);
            }
        }
    }
    Ok(out)
}

/// Inverse of [`pack_middle_axis`]; padding lanes must be zero.
fn unpack_middle_axis(
    op: &'static str,
    words: &[u32],
    outer: usize,
    k: usize,
    inner: usize,
) -> Result<Vec<i8>> {
    let kw = k.div_ceil(4);
    let total_words = checked_product(op, &[outer, kw, inner])?;
    if words.len() != total_words {
        return Err(LowbitError::len(
            op,
            "packed words",
            total_words,
            words.len(),
        ));
    }
    let mut out = vec![0i8; outer * k * inner];
    for o in 0..outer {
        for w in 0..kw {
            for i in 0..inner {
                let lanes = unpack_i8x4(words[(o * kw + w) * inner + i]);
                for (j, &lane) in lanes.iter().enumerate() {
                    let kk = 4 * w + j;
                    if kk < k {
                        out[(o * k + kk) * inner + i] = lane;
                    } else if lane != 0 {
                        return Err(LowbitError::InvalidArgument {
                            op,
                            what: "padding lane",
                            reason: format!("lane {j} of word {w} is {lane}, must be 0"),
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Low-rank weight codes `[H, D, N]` → words `[H, ceil(D/4), N]` (packed along D).
pub fn pack_lowrank_weight_codes_i8x4(
    codes: &[i8],
    heads: usize,
    embd: usize,
    latent: usize,
) -> Result<Vec<u32>> {
    pack_middle_axis("pack_lowrank_weight_codes_i8x4", codes, heads, embd, latent)
}

/// Inverse of [`pack_lowrank_weight_codes_i8x4`].
pub fn unpack_lowrank_weight_codes_i8x4(
    words: &[u32],
    heads: usize,
    embd: usize,
    latent: usize,
) -> Result<Vec<i8>> {
    unpack_middle_axis(
        "unpack_lowrank_weight_codes_i8x4",
        words,
        heads,
        embd,
        latent,
    )
}

/// Decoder weight codes `[H·N, D]` (= `[H, N, D]`) → words `[H·ceil(N/4), D]` (along N per head).
pub fn pack_decoder_weight_codes_i8x4(
    codes: &[i8],
    heads: usize,
    latent_per_head: usize,
    dim: usize,
) -> Result<Vec<u32>> {
    pack_middle_axis(
        "pack_decoder_weight_codes_i8x4",
        codes,
        heads,
        latent_per_head,
        dim,
    )
}

/// Inverse of [`pack_decoder_weight_codes_i8x4`].
pub fn unpack_decoder_weight_codes_i8x4(
    words: &[u32],
    heads: usize,
    latent_per_head: usize,
    dim: usize,
) -> Result<Vec<i8>> {
    unpack_middle_axis(
        "unpack_decoder_weight_codes_i8x4",
        words,
        heads,
        latent_per_head,
        dim,
    )
}

/// Low-rank input codes `[B, Hin, T, D]` → words `[B, Hin, T, ceil(D/4)]`.
pub fn pack_lowrank_input_codes_i8x4(
    codes: &[i8],
    batch: usize,
    heads: usize,
    time: usize,
    embd: usize,
) -> Result<Vec<u32>> {
    let rows = checked_product("pack_lowrank_input_codes_i8x4", &[batch, heads, time])?;
    pack_middle_axis("pack_lowrank_input_codes_i8x4", codes, rows, embd, 1)
}

/// Inverse of [`pack_lowrank_input_codes_i8x4`].
pub fn unpack_lowrank_input_codes_i8x4(
    words: &[u32],
    batch: usize,
    heads: usize,
    time: usize,
    embd: usize,
) -> Result<Vec<i8>> {
    let rows = checked_product("unpack_lowrank_input_codes_i8x4", &[batch, heads, time])?;
    unpack_middle_axis("unpack_lowrank_input_codes_i8x4", words, rows, embd, 1)
}

/// Decoder input codes `[B, H, T, N]` → words `[B, H, T, ceil(N/4)]`.
pub fn pack_decoder_input_codes_i8x4(
    codes: &[i8],
    batch: usize,
    heads: usize,
    time: usize,
    latent: usize,
) -> Result<Vec<u32>> {
    let rows = checked_product("pack_decoder_input_codes_i8x4", &[batch, heads, time])?;
    pack_middle_axis("pack_decoder_input_codes_i8x4", codes, rows, latent, 1)
}

/// Inverse of [`pack_decoder_input_codes_i8x4`].
pub fn unpack_decoder_input_codes_i8x4(
    words: &[u32],
    batch: usize,
    heads: usize,
    time: usize,
    latent: usize,
) -> Result<Vec<i8>> {
    let rows = checked_product("unpack_decoder_input_codes_i8x4", &[batch, heads, time])?;
    unpack_middle_axis("unpack_decoder_input_codes_i8x4", words, rows, latent, 1)
}

/// Packs signed i32 codes into i8x4 words along the last axis of length `k` (rows × k).
/// Codes outside i8 are an error (uint8pos codes above 127 never go through here).
pub fn pack_rows_i32_to_i8x4(
    op: &'static str,
    codes: &[i32],
    rows: usize,
    k: usize,
) -> Result<Vec<u32>> {
    let narrowed = codes
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            i8::try_from(c).map_err(|_| LowbitError::InvalidArgument {
                op,
                what: "code",
                reason: format!("element {i} is {c}, which does not fit a signed int8 lane"),
            })
        })
        .collect::<Result<Vec<i8>>>()?;
    pack_middle_axis(op, &narrowed, rows, k, 1)
}

// ---- ternary2 fragment layout (device weights at 2 bits) ------------------------------------
//
// Ternary (or binary) weight words re-laid for the CUDA small-M tensor-core kernels
// (`lb_mma_small` in cuda/mma.cuh): per head block of `head_rows` i8x4 rows (k words) and
// `cols` columns, t2 row `R` (`ternary2_rows(head_rows)` of them) holds k words
// `16·(R/4) + R%4 + 4j`, j = 0..3, of every column; lane `b` of the word in slot `j` sits at
// bits `8b + 2j` as `v + 1`. Rows past `head_rows` hold weight 0 (`0b01`). One u32 is 16
// weights: a quarter of the i8x4 bytes.

/// t2 rows per head block of `head_rows` i8x4 rows.
pub fn ternary2_rows(head_rows: usize) -> usize {
    head_rows.div_ceil(16) * 4
}

/// Repacks i8x4 weight words `[heads][head_rows][cols]` whose lanes are all in {-1, 0, 1}
/// into the ternary2 fragment layout `[heads][ternary2_rows(head_rows)][cols]`.
pub fn pack_ternary2_fragments(
    words: &[u32],
    heads: usize,
    head_rows: usize,
    cols: usize,
) -> Result<Vec<u32>> {
    const OP: &str = "pack_ternary2_fragments";
    let n = checked_product(OP, &[heads, head_rows, cols])?;
    if words.len() != n {
        return Err(LowbitError::len(OP, "weight words", n, words.len()));
    }
    let rows2 = ternary2_rows(head_rows);
    let mut out = vec![0u32; checked_product(OP, &[heads, rows2, cols])?];
    for h in 0..heads {
        for r2 in 0..rows2 {
            for c in 0..cols {
                let mut v = 0u32;
                for j in 0..4 {
                    let kw = 16 * (r2 / 4) + r2 % 4 + 4 * j;
                    let lanes = if kw < head_rows {
                        let i = (h * head_rows + kw) * cols + c;
                        unpack_i8x4(words[i]).map(|l| (i, l))
                    } else {
                        [(0, 0); 4]
                    };
                    for (b, (i, l)) in lanes.into_iter().enumerate() {
                        if !(-1..=1).contains(&l) {
                            return Err(LowbitError::InvalidArgument {
                                op: OP,
                                what: "weight",
                                reason: format!(
                                    "lane {b} of word {i} is {l}: ternary2 holds only -1, 0, 1"
                                ),
                            });
                        }
                        v |= ((l + 1) as u32) << (8 * b + 2 * j);
                    }
                }
                out[(h * rows2 + r2) * cols + c] = v;
            }
        }
    }
    Ok(out)
}

/// The inverse of [`pack_ternary2_fragments`]: i8x4 words `[heads][head_rows][cols]`.
/// A field `0b11` is an error.
pub fn unpack_ternary2_fragments(
    t2: &[u32],
    heads: usize,
    head_rows: usize,
    cols: usize,
) -> Result<Vec<u32>> {
    const OP: &str = "unpack_ternary2_fragments";
    let rows2 = ternary2_rows(head_rows);
    let n2 = checked_product(OP, &[heads, rows2, cols])?;
    if t2.len() != n2 {
        return Err(LowbitError::len(OP, "ternary2 words", n2, t2.len()));
    }
    let mut out = vec![0u32; checked_product(OP, &[heads, head_rows, cols])?];
    for h in 0..heads {
        for kw in 0..head_rows {
            let (r2, j) = (16 * (kw / 16) / 4 + kw % 4, (kw % 16) / 4);
            for c in 0..cols {
                let i2 = (h * rows2 + r2) * cols + c;
                let mut lanes = [0i8; 4];
                for (b, lane) in lanes.iter_mut().enumerate() {
                    let f = (t2[i2] >> (8 * b + 2 * j)) & 3;
                    if f == 3 {
                        return Err(LowbitError::InvalidArgument {
                            op: OP,
                            what: "ternary2 word",
                            reason: format!("word {i2} holds the invalid field 0b11"),
                        });
                    }
                    *lane = f as i8 - 1;
                }
                out[(h * head_rows + kw) * cols + c] = pack_i8x4(lanes);
            }
        }
    }
    Ok(out)
}
