//! Rho state block compression (SPEC.md): blocks of 32 over the flattened `[B, H, N, D]`
//! tensor, each with one f32 scale.
//!
//! * int8: scale `max(max|v|/127, EPS)`, codes `clamp(round(v/s), ±127)`, one byte each
//!   (host layout) or four per `u32` word (device layout, [`PackedRhoInt8DeviceState`]);
//! * ternary / binary: the weight quantizers of [`crate::quant`] per block (scale = block
//!   absmean), stored with the 2-bit / 1-bit codecs of [`crate::pack`]; each block starts on a
//!   byte boundary (only the last block can be partial).
//!
//! Compression quality is tracked by [`RhoCompressionStats`] handles; the seed's global
//! `rho_compression_profile_*` functions use a process-wide one.

use std::sync::{Mutex, OnceLock};

use crate::config::RhoCompressionConfig;
use crate::error::{LowbitError, Result};
use crate::ops::rho::{RHO_BLOCK_SIZE, RhoShape};
use crate::pack::{
    pack_binary_1bit, pack_ternary_2bit, unpack_binary_1bit, unpack_ternary_2bit_slice,
};
use crate::quant::{check_finite, check_scale, quantize_binary_sign, quantize_ternary_absmean};
use crate::reference::rho::{
    rho_int8_block_scale, rho_int8_code, rho_int8_pack_words, rho_int8_unpack_words,
};

/// How the codes of a packed rho state are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PackedRhoBlockEncoding {
    /// One signed byte per element, codes in ±127 with the int8 block scale.
    Int8,
    /// 2-bit ternary codes ({-1, 0, 1}), 4 per byte, block absmean scale.
    Ternary2,
    /// 1-bit sign codes (±1), 8 per byte, block absmean scale.
    Binary1,
}

impl PackedRhoBlockEncoding {
    /// The encoding of a block compression mode (`None` for no compression).
    pub fn from_compression(compression: RhoCompressionConfig) -> Option<Self> {
        match compression {
            RhoCompressionConfig::Int8BlockExp => Some(Self::Int8),
            RhoCompressionConfig::TernaryBlockExp => Some(Self::Ternary2),
            RhoCompressionConfig::BinaryBlockExp => Some(Self::Binary1),
            RhoCompressionConfig::None => None,
        }
    }

    /// Bits of one code: 8, 2 or 1.
    pub fn bits_per_element(self) -> usize {
        match self {
            Self::Int8 => 8,
            Self::Ternary2 => 2,
            Self::Binary1 => 1,
        }
    }

    /// Code bytes of one block of `len` elements.
    pub fn block_bytes(self, len: usize) -> usize {
        (len * self.bits_per_element()).div_ceil(8)
    }

    /// Code bytes of a whole state of `len` elements (blocks start on byte boundaries).
    pub fn packed_len(self, len: usize) -> usize {
        let full = len / RHO_BLOCK_SIZE;
        full * self.block_bytes(RHO_BLOCK_SIZE) + self.block_bytes(len % RHO_BLOCK_SIZE)
    }
}

/// A block-compressed rho state (host layout).
#[derive(Clone, Debug, PartialEq)]
pub struct PackedRhoBlockState {
    /// `[B, H, N, D]` of the uncompressed state; blocks run over it flattened.
    pub logical_shape: [usize; 4],
    /// Elements per block; always `RHO_BLOCK_SIZE` (32), anything else fails validation.
    pub block_size: usize,
    /// How `packed` stores the codes.
    pub encoding: PackedRhoBlockEncoding,
    /// One f32 scale per block (`ceil(B·H·N·D / 32)`), finite and positive.
    pub scales: Vec<f32>,
    /// Codes of every block back to back, each block starting on a byte boundary.
    pub packed: Vec<u8>,
}

impl PackedRhoBlockState {
    /// Compressed size: code bytes plus 4 bytes of scale per block.
    pub fn compressed_bytes(&self) -> u64 {
        self.packed.len() as u64 + (self.scales.len() * core::mem::size_of::<f32>()) as u64
    }

    /// Checks every field against the logical shape; returns the element count.
    pub fn validate(&self) -> Result<usize> {
        const OP: &str = "PackedRhoBlockState";
        let shape = RhoShape::new(self.logical_shape)?;
        check_block_size(OP, self.block_size)?;
        if self.scales.len() != shape.blocks() {
            return Err(LowbitError::len(
                OP,
                "scales",
                shape.blocks(),
                self.scales.len(),
            ));
        }
        check_scales(OP, &self.scales)?;
        let need = self.encoding.packed_len(shape.len());
        if self.packed.len() != need {
            return Err(LowbitError::len(
                OP,
                "packed bytes",
                need,
                self.packed.len(),
            ));
        }
        Ok(shape.len())
    }
}

/// Int8 rho state in the device layout (4 codes per `u32` word, 8 words per block; the last
/// block's missing lanes are zero), held on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedRhoInt8DeviceState {
    /// `[B, H, N, D]` of the uncompressed state; blocks run over it flattened.
    pub logical_shape: [usize; 4],
    /// Elements per block; always `RHO_BLOCK_SIZE` (32).
    pub block_size: usize,
    /// One f32 scale per block, as in the host layout.
    pub scales: Vec<f32>,
    /// i8x4 words, 8 per block: byte `j` of a block's word `w` holds its code `4w+j`.
    pub words: Vec<u32>,
}

impl PackedRhoInt8DeviceState {
    /// Compressed size: 4 bytes per word plus 4 bytes of scale per block.
    pub fn compressed_bytes(&self) -> u64 {
        ((self.words.len() + self.scales.len()) * 4) as u64
    }
}

fn check_block_size(op: &'static str, block_size: usize) -> Result<()> {
    if block_size == RHO_BLOCK_SIZE {
        Ok(())
    } else {
        Err(LowbitError::InvalidArgument {
            op,
            what: "block_size",
            reason: format!("{block_size}, only blocks of {RHO_BLOCK_SIZE} are supported"),
        })
    }
}

fn check_scales(op: &'static str, scales: &[f32]) -> Result<()> {
    scales
        .iter()
        .try_for_each(|&s| check_scale(op, "rho block scale", s))
}

fn check_values(op: &'static str, shape: &RhoShape, values: &[f32]) -> Result<()> {
    if values.len() != shape.len() {
        return Err(LowbitError::len(
            op,
            "rho values",
            shape.len(),
            values.len(),
        ));
    }
    check_finite(op, "rho values", values)
}

/// Packs `values` (flattened `logical_shape`) and records the round trip's quality in
/// `stats`.
pub fn pack_rho_block_state_with(
    values: &[f32],
    logical_shape: [usize; 4],
    compression: RhoCompressionConfig,
    stats: &RhoCompressionStats,
) -> Result<PackedRhoBlockState> {
    const OP: &str = "pack_rho_block_state";
    let encoding = PackedRhoBlockEncoding::from_compression(compression).ok_or_else(|| {
        LowbitError::unsupported_format(OP, compression, "rho packing needs a block compression")
    })?;
    let shape = RhoShape::new(logical_shape)?;
    check_values(OP, &shape, values)?;
    let mut packed = Vec::with_capacity(encoding.packed_len(values.len()));
    let mut scales = Vec::with_capacity(shape.blocks());
    let mut reconstructed = Vec::with_capacity(values.len());
    for block in values.chunks(RHO_BLOCK_SIZE) {
        match encoding {
            PackedRhoBlockEncoding::Int8 => {
                let scale = rho_int8_block_scale(block);
                scales.push(scale);
                for &v in block {
                    let code = rho_int8_code(v, scale);
                    packed.push(code as u8);
                    reconstructed.push(f32::from(code) * scale);
                }
            }
            PackedRhoBlockEncoding::Ternary2 | PackedRhoBlockEncoding::Binary1 => {
                let q = if encoding == PackedRhoBlockEncoding::Ternary2 {
                    quantize_ternary_absmean(block)?
                } else {
                    quantize_binary_sign(block)?
                };
                scales.push(q.scale);
                reconstructed.extend(q.codes.iter().map(|&c| f32::from(c) * q.scale));
                if encoding == PackedRhoBlockEncoding::Ternary2 {
                    packed.extend(pack_ternary_2bit(&q.codes)?.packed);
                } else {
                    packed.extend(pack_binary_1bit(&q.codes)?);
                }
            }
        }
    }
    let state = PackedRhoBlockState {
        logical_shape,
        block_size: RHO_BLOCK_SIZE,
        encoding,
        scales,
        packed,
    };
    stats.record(values, &reconstructed, state.compressed_bytes());
    Ok(state)
}

/// [`pack_rho_block_state_with`] recording into the process-wide stats
/// ([`rho_compression_profile_snapshot`]).
pub fn pack_rho_block_state(
    values: &[f32],
    logical_shape: [usize; 4],
    compression: RhoCompressionConfig,
) -> Result<PackedRhoBlockState> {
    pack_rho_block_state_with(
        values,
        logical_shape,
        compression,
        RhoCompressionStats::global(),
    )
}

/// Restores the flattened values of a packed state. Every field is validated first; a
/// corrupt state (wrong lengths, bad scales, `0b11` ternary codes, set padding bits, the
/// int8 code -128) is an error.
pub fn unpack_rho_block_state(state: &PackedRhoBlockState) -> Result<Vec<f32>> {
    const OP: &str = "unpack_rho_block_state";
    let total = state.validate()?;
    let mut values = Vec::with_capacity(total);
    let mut offset = 0usize;
    for (block, &scale) in state.scales.iter().enumerate() {
        let start = block * RHO_BLOCK_SIZE;
        let block_len = (total - start).min(RHO_BLOCK_SIZE);
        let bytes = state.encoding.block_bytes(block_len);
        let Some(chunk) = state.packed.get(offset..offset + bytes) else {
            return Err(LowbitError::len(
                OP,
                "packed bytes",
                offset + bytes,
                state.packed.len(),
            ));
        };
        offset += bytes;
        let codes = match state.encoding {
            PackedRhoBlockEncoding::Int8 => {
                if let Some(i) = chunk.iter().position(|&b| b == 0x80) {
                    return Err(LowbitError::InvalidArgument {
                        op: OP,
                        what: "int8 code",
                        reason: format!("-128 at element {} (codes are in ±127)", start + i),
                    });
                }
                chunk.iter().map(|&b| b as i8).collect()
            }
            PackedRhoBlockEncoding::Ternary2 => unpack_ternary_2bit_slice(chunk, block_len)
                .map_err(|e| offset_ternary_error(e, start))?,
            PackedRhoBlockEncoding::Binary1 => unpack_binary_1bit(chunk, block_len)?,
        };
        values.extend(codes.into_iter().map(|c: i8| f32::from(c) * scale));
    }
    Ok(values)
}

/// Reports ternary code errors at their index in the whole state.
fn offset_ternary_error(e: LowbitError, start: usize) -> LowbitError {
    match e {
        LowbitError::InvalidTernaryCode { index } => LowbitError::InvalidTernaryCode {
            index: start + index,
        },
        other => other,
    }
}

/// Packs int8 rho blocks in the device layout (via [`crate::reference::rho`]) and records
/// the round trip's quality in `stats`.
pub fn pack_rho_int8_block_state_device_with(
    values: &[f32],
    logical_shape: [usize; 4],
    stats: &RhoCompressionStats,
) -> Result<PackedRhoInt8DeviceState> {
    let shape = RhoShape::new(logical_shape)?;
    check_values("pack_rho_int8_block_state_device", &shape, values)?;
    let (words, scales) = rho_int8_pack_words(&shape, values)?;
    let state = PackedRhoInt8DeviceState {
        logical_shape,
        block_size: RHO_BLOCK_SIZE,
        scales,
        words,
    };
    let reconstructed = rho_int8_unpack_words(&shape, &state.words, &state.scales)?;
    stats.record(values, &reconstructed, state.compressed_bytes());
    Ok(state)
}

/// [`pack_rho_int8_block_state_device_with`] recording into the process-wide stats.
pub fn pack_rho_int8_block_state_device(
    values: &[f32],
    logical_shape: [usize; 4],
) -> Result<PackedRhoInt8DeviceState> {
    pack_rho_int8_block_state_device_with(values, logical_shape, RhoCompressionStats::global())
}

/// Wraps `(words, scales)` produced by a backend's `rho_int8_pack` into a host mirror,
/// validating their lengths.
pub fn rho_int8_device_state_from_parts(
    logical_shape: [usize; 4],
    words: Vec<u32>,
    scales: Vec<f32>,
) -> Result<PackedRhoInt8DeviceState> {
    let state = PackedRhoInt8DeviceState {
        logical_shape,
        block_size: RHO_BLOCK_SIZE,
        scales,
        words,
    };
    validate_device_state(&state)?;
    Ok(state)
}

fn validate_device_state(state: &PackedRhoInt8DeviceState) -> Result<RhoShape> {
    const OP: &str = "PackedRhoInt8DeviceState";
    let shape = RhoShape::new(state.logical_shape)?;
    check_block_size(OP, state.block_size)?;
    if state.words.len() != shape.int8_words() {
        return Err(LowbitError::len(
            OP,
            "rho words",
            shape.int8_words(),
            state.words.len(),
        ));
    }
    if state.scales.len() != shape.blocks() {
        return Err(LowbitError::len(
            OP,
            "rho scales",
            shape.blocks(),
            state.scales.len(),
        ));
    }
    check_scales(OP, &state.scales)?;
    Ok(shape)
}

/// Restores the flattened values of a device-layout int8 state (validated first).
pub fn unpack_rho_int8_block_state_device(state: &PackedRhoInt8DeviceState) -> Result<Vec<f32>> {
    let shape = validate_device_state(state)?;
    rho_int8_unpack_words(&shape, &state.words, &state.scales)
}

/// Accumulated compression quality over one or more pack calls.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RhoCompressionStatsSnapshot {
    /// Pack calls (round trips) recorded.
    pub calls: u64,
    /// Sum over calls of the RMS of the original values.
    pub total_original_rms: f64,
    /// Sum over calls of the RMS of the unpacked (reconstructed) values.
    pub total_reconstructed_rms: f64,
    /// Sum over calls of each call's mean absolute error.
    pub total_mean_abs_error: f64,
    /// Largest absolute error of any element over all calls.
    pub max_abs_error: f32,
    /// Total size of the original values as f32, in bytes.
    pub total_original_bytes: u64,
    /// Total compressed size in bytes (codes plus 4 bytes of scale per block).
    pub total_compressed_bytes: u64,
}

impl RhoCompressionStatsSnapshot {
    /// Mean over calls of each call's mean absolute error.
    pub fn mean_abs_error(&self) -> Option<f32> {
        (self.calls > 0).then(|| (self.total_mean_abs_error / self.calls as f64) as f32)
    }

    /// Σ reconstructed RMS / Σ original RMS.
    pub fn mean_rms_ratio(&self) -> Option<f32> {
        if self.calls == 0 || self.total_original_rms <= 0.0 {
            return None;
        }
        Some((self.total_reconstructed_rms / self.total_original_rms) as f32)
    }

    /// Compressed bytes / original f32 bytes.
    pub fn compression_ratio(&self) -> Option<f32> {
        if self.total_original_bytes == 0 {
            return None;
        }
        Some(self.total_compressed_bytes as f32 / self.total_original_bytes as f32)
    }

    /// Adds another snapshot's calls to this one.
    pub fn merge(&mut self, other: &Self) {
        self.calls = self.calls.saturating_add(other.calls);
        self.total_original_rms += other.total_original_rms;
        self.total_reconstructed_rms += other.total_reconstructed_rms;
        self.total_mean_abs_error += other.total_mean_abs_error;
        self.max_abs_error = self.max_abs_error.max(other.max_abs_error);
        self.total_original_bytes = self
            .total_original_bytes
            .saturating_add(other.total_original_bytes);
        self.total_compressed_bytes = self
            .total_compressed_bytes
            .saturating_add(other.total_compressed_bytes);
    }
}

/// Acceptance thresholds for rho compression.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RhoCompressionQualityGate {
    /// Upper bound on [`RhoCompressionStatsSnapshot::mean_abs_error`] (default 0.02).
    pub max_mean_abs_error: f32,
    /// Upper bound on `max_abs_error` over all calls (default 0.05).
    pub max_max_abs_error: f32,
    /// Lower bound on [`RhoCompressionStatsSnapshot::mean_rms_ratio`] (default 0.95).
    pub min_mean_rms_ratio: f32,
    /// Upper bound on [`RhoCompressionStatsSnapshot::mean_rms_ratio`] (default 1.05).
    pub max_mean_rms_ratio: f32,
    /// Upper bound on [`RhoCompressionStatsSnapshot::compression_ratio`] (default 0.5).
    pub max_compression_ratio: f32,
}

impl Default for RhoCompressionQualityGate {
    fn default() -> Self {
        Self {
            max_mean_abs_error: 0.02,
            max_max_abs_error: 0.05,
            min_mean_rms_ratio: 0.95,
            max_mean_rms_ratio: 1.05,
            max_compression_ratio: 0.5,
        }
    }
}

/// Whether a snapshot passes a gate (an empty snapshot never does).
pub fn rho_compression_snapshot_passes_gate(
    snapshot: &RhoCompressionStatsSnapshot,
    gate: &RhoCompressionQualityGate,
) -> bool {
    let (Some(mean_abs_error), Some(mean_rms_ratio), Some(compression_ratio)) = (
        snapshot.mean_abs_error(),
        snapshot.mean_rms_ratio(),
        snapshot.compression_ratio(),
    ) else {
        return false;
    };
    mean_abs_error <= gate.max_mean_abs_error
        && snapshot.max_abs_error <= gate.max_max_abs_error
        && mean_rms_ratio >= gate.min_mean_rms_ratio
        && mean_rms_ratio <= gate.max_mean_rms_ratio
        && compression_ratio <= gate.max_compression_ratio
}

/// The one-call snapshot of a round trip: RMS of both sides and the errors (f64 sums).
pub fn rho_snapshot_for(
    original: &[f32],
    reconstructed: &[f32],
    compressed_bytes: u64,
) -> Result<RhoCompressionStatsSnapshot> {
    if original.len() != reconstructed.len() {
        return Err(LowbitError::len(
            "rho_snapshot_for",
            "reconstructed values",
            original.len(),
            reconstructed.len(),
        ));
    }
    let n = original.len().max(1) as f64;
    let rms = |v: &[f32]| (v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() / n).sqrt();
    let errors = original
        .iter()
        .zip(reconstructed)
        .map(|(a, b)| (a - b).abs());
    Ok(RhoCompressionStatsSnapshot {
        calls: 1,
        total_original_rms: rms(original),
        total_reconstructed_rms: rms(reconstructed),
        total_mean_abs_error: errors.clone().map(f64::from).sum::<f64>() / n,
        max_abs_error: errors.fold(0.0f32, f32::max),
        total_original_bytes: std::mem::size_of_val(original) as u64,
        total_compressed_bytes: compressed_bytes,
    })
}

/// A thread-safe accumulator of rho compression quality.
#[derive(Debug, Default)]
pub struct RhoCompressionStats {
    state: Mutex<RhoCompressionStatsSnapshot>,
}

impl RhoCompressionStats {
    /// An empty accumulator, independent of the process-wide one.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide handle behind the seed's `rho_compression_profile_*` functions.
    pub fn global() -> &'static Self {
        static GLOBAL: OnceLock<RhoCompressionStats> = OnceLock::new();
        GLOBAL.get_or_init(Self::new)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RhoCompressionStatsSnapshot> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one round trip; empty or mismatched inputs are ignored (as in the seed).
    pub fn record(&self, original: &[f32], reconstructed: &[f32], compressed_bytes: u64) {
        if original.is_empty() {
            return;
        }
        if let Ok(snapshot) = rho_snapshot_for(original, reconstructed, compressed_bytes) {
            self.lock().merge(&snapshot);
        }
    }

    /// A copy of everything accumulated so far.
    pub fn snapshot(&self) -> RhoCompressionStatsSnapshot {
        *self.lock()
    }

    /// Clears the accumulated stats back to zero calls.
    pub fn reset(&self) {
        *self.lock() = RhoCompressionStatsSnapshot::default();
    }
}

/// Resets the process-wide rho compression stats.
pub fn rho_compression_profile_reset() {
    RhoCompressionStats::global().reset();
}

/// The process-wide rho compression stats.
pub fn rho_compression_profile_snapshot() -> RhoCompressionStatsSnapshot {
    RhoCompressionStats::global().snapshot()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.37).sin() * 2.0).collect()
    }

    #[test]
    fn round_trip_every_encoding_and_partial_block() {
        let shape = [1, 1, 5, 9]; // 45 elements: one full block and one of 13
        let v = values(45);
        for c in [
            RhoCompressionConfig::Int8BlockExp,
            RhoCompressionConfig::TernaryBlockExp,
            RhoCompressionConfig::BinaryBlockExp,
        ] {
            let stats = RhoCompressionStats::new();
            let s = pack_rho_block_state_with(&v, shape, c, &stats).unwrap();
            assert_eq!(s.scales.len(), 2);
            assert_eq!(s.packed.len(), s.encoding.packed_len(45));
            let r = unpack_rho_block_state(&s).unwrap();
            assert_eq!(r.len(), 45);
            assert_eq!(stats.snapshot().calls, 1);
        }
    }

    #[test]
    fn corrupt_states_are_errors() {
        let v = values(42);
        let stats = RhoCompressionStats::new();
        let good = pack_rho_block_state_with(
            &v,
            [1, 1, 6, 7],
            RhoCompressionConfig::TernaryBlockExp,
            &stats,
        )
        .unwrap();
        let mut s = good.clone();
        s.packed.pop();
        assert!(unpack_rho_block_state(&s).is_err());
        let mut s = good.clone();
        s.block_size = 16;
        assert!(unpack_rho_block_state(&s).is_err());
        let mut s = good.clone();
        s.scales[0] = f32::NAN;
        assert!(unpack_rho_block_state(&s).is_err());
        let mut s = good.clone();
        s.packed[0] = 0xFF;
        assert!(matches!(
            unpack_rho_block_state(&s),
            Err(LowbitError::InvalidTernaryCode { index: 0 })
        ));
        let mut s = good.clone();
        // The last block holds 10 codes: bits 4..8 of its last byte are padding.
        *s.packed.last_mut().unwrap() |= 0x40;
        assert!(unpack_rho_block_state(&s).is_err());
        let mut s = good;
        s.logical_shape = [0, 1, 6, 7];
        assert!(unpack_rho_block_state(&s).is_err());
    }

    #[test]
    fn non_finite_and_no_compression_are_errors() {
        let stats = RhoCompressionStats::new();
        let mut v = values(32);
        assert!(
            pack_rho_block_state_with(&v, [1, 1, 1, 32], RhoCompressionConfig::None, &stats)
                .is_err()
        );
        v[3] = f32::INFINITY;
        assert!(
            pack_rho_block_state_with(
                &v,
                [1, 1, 1, 32],
                RhoCompressionConfig::Int8BlockExp,
                &stats
            )
            .is_err()
        );
        assert!(
            pack_rho_block_state_with(
                &v[..31],
                [1, 1, 1, 32],
                RhoCompressionConfig::Int8BlockExp,
                &stats
            )
            .is_err()
        );
        assert_eq!(stats.snapshot().calls, 0);
    }

    #[test]
    fn device_layout_matches_host_layout_values() {
        let v = values(70);
        let stats = RhoCompressionStats::new();
        let host =
            pack_rho_block_state_with(&v, [1, 2, 5, 7], RhoCompressionConfig::Int8BlockExp, &stats)
                .unwrap();
        let dev = pack_rho_int8_block_state_device_with(&v, [1, 2, 5, 7], &stats).unwrap();
        assert_eq!(host.scales, dev.scales);
        assert_eq!(
            unpack_rho_block_state(&host).unwrap(),
            unpack_rho_int8_block_state_device(&dev).unwrap()
        );
        let mut bad = dev.clone();
        bad.words.pop();
        assert!(unpack_rho_int8_block_state_device(&bad).is_err());
    }
}
