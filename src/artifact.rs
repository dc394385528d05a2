//! `PackedWeightArtifact`: quantized weights as they are stored and shipped.
//!
//! On disk it is a safetensors file with one `U8` tensor `packed` (the code bytes) and, in the
//! header's metadata, `lowbit.encoding`, `lowbit.logical_shape` (comma-separated), `lowbit.scale`
//! (the f32's bits as 8 hex digits, exact) and `lowbit.len`. Loading validates every field.

use std::collections::HashMap;
use std::path::Path;

use crate::config::LowBitWeightFormat;
use crate::error::{LowbitError, Result};
use crate::pack::{
    pack_binary_1bit, pack_ternary_2bit, unpack_binary_1bit, unpack_ternary_2bit_slice,
};
use crate::quant::quantize_weights;

/// How the codes of an artifact are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PackedWeightEncoding {
    /// One signed byte per element.
    Int8,
    /// Ternary, 2 bits per element.
    Ternary2,
    /// Binary ±1, 1 bit per element.
    Binary1,
}

impl PackedWeightEncoding {
    /// Name stored in `lowbit.encoding`: `int8`, `ternary2` or `binary1`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Int8 => "int8",
            Self::Ternary2 => "ternary2",
            Self::Binary1 => "binary1",
        }
    }

    /// Parses an `as_str` name (exact, case-sensitive).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "int8" => Some(Self::Int8),
            "ternary2" => Some(Self::Ternary2),
            "binary1" => Some(Self::Binary1),
            _ => None,
        }
    }

    /// Bytes needed for `len` codes.
    pub fn packed_len(self, len: usize) -> usize {
        match self {
            Self::Int8 => len,
            Self::Ternary2 => len.div_ceil(4),
            Self::Binary1 => len.div_ceil(8),
        }
    }

    /// Largest code magnitude (for the accumulator overflow check).
    pub fn qmax(self) -> u32 {
        match self {
            Self::Int8 => 127,
            Self::Ternary2 | Self::Binary1 => 1,
        }
    }

    /// The encoding a weight format is stored in (`None` for fp16).
    pub fn for_format(format: LowBitWeightFormat) -> Option<Self> {
        match format {
            LowBitWeightFormat::Fp16 => None,
            LowBitWeightFormat::Int8 => Some(Self::Int8),
            LowBitWeightFormat::Sign1 => Some(Self::Binary1),
            LowBitWeightFormat::Ternary158 | LowBitWeightFormat::Packed2 => Some(Self::Ternary2),
        }
    }
}

/// Quantized, packed weights with their logical shape and per-tensor scale.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedWeightArtifact {
    /// How `packed` stores the codes.
    pub encoding: PackedWeightEncoding,
    /// Shape of the unpacked weight, e.g. `[H, D, N]` (low-rank) or `[H·N, D]` (decoder
    /// tail); rank 1 to 4, no zero dimension.
    pub logical_shape: Vec<usize>,
    /// Per-tensor absmean scale (finite, > 0): weight ≈ code · scale.
    pub scale: f32,
    /// The code bytes in SPEC.md's storage layout, `encoding.packed_len(len)` of them.
    pub packed: Vec<u8>,
    /// Number of codes: the product of `logical_shape`.
    pub len: usize,
}

const MAX_RANK: usize = 4;
const KEY_ENCODING: &str = "lowbit.encoding";
const KEY_SHAPE: &str = "lowbit.logical_shape";
const KEY_SCALE: &str = "lowbit.scale";
const KEY_LEN: &str = "lowbit.len";
const KEY_VERSION: &str = "lowbit.version";
const VERSION: &str = "1";
const TENSOR: &str = "packed";

impl PackedWeightArtifact {
    /// Quantizes `values` of logical `shape` in `format` and packs the codes.
    pub fn from_values(
        values: &[f32],
        shape: &[usize],
        format: LowBitWeightFormat,
    ) -> Result<Self> {
        pack_weight_artifact_from_format(values, shape, format)
    }

    /// Builds an artifact from i8 codes already quantized (codes must fit the encoding).
    pub fn from_codes(
        codes: &[i8],
        shape: &[usize],
        scale: f32,
        encoding: PackedWeightEncoding,
    ) -> Result<Self> {
        let len = shape_len(shape)?;
        if codes.len() != len {
            return Err(LowbitError::len(
                "PackedWeightArtifact::from_codes",
                "codes",
                len,
                codes.len(),
            ));
        }
        let packed = match encoding {
            PackedWeightEncoding::Int8 => {
                if let Some(i) = codes.iter().position(|&c| c == i8::MIN) {
                    return Err(LowbitError::artifact(
                        "packed",
                        format!("int8 code -128 at {i} (codes are in [-127, 127])"),
                    ));
                }
                codes.iter().map(|&c| c as u8).collect()
            }
            PackedWeightEncoding::Ternary2 => pack_ternary_2bit(codes)?.packed,
            PackedWeightEncoding::Binary1 => pack_binary_1bit(codes)?,
        };
        let artifact = Self {
            encoding,
            logical_shape: shape.to_vec(),
            scale,
            packed,
            len,
        };
        artifact.validate()?;
        Ok(artifact)
    }

    /// Checks every field: shape rank and product, `len`, byte count, scale, code validity.
    pub fn validate(&self) -> Result<()> {
        let len = shape_len(&self.logical_shape)?;
        if len != self.len {
            return Err(LowbitError::artifact(
                "len",
                format!(
                    "{} but the logical shape {:?} holds {len}",
                    self.len, self.logical_shape
                ),
            ));
        }
        let need = self.encoding.packed_len(self.len);
        if self.packed.len() != need {
            return Err(LowbitError::artifact(
                "packed",
                format!(
                    "{} bytes, {} encoding of {} codes needs {need}",
                    self.packed.len(),
                    self.encoding.as_str(),
                    self.len
                ),
            ));
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(LowbitError::artifact(
                "scale",
                format!("{} is not finite and > 0", self.scale),
            ));
        }
        self.codes().map(|_| ())
    }

    /// Unpacks to one i8 code per element (`unpack_weight_artifact_to_i8_codes`).
    pub fn codes(&self) -> Result<Vec<i8>> {
        let need = self.encoding.packed_len(self.len);
        if self.packed.len() != need {
            return Err(LowbitError::artifact(
                "packed",
                format!("{} bytes, expected {need}", self.packed.len()),
            ));
        }
        match self.encoding {
            PackedWeightEncoding::Int8 => {
                if let Some(i) = self.packed.iter().position(|&b| b == 0x80) {
                    return Err(LowbitError::artifact(
                        "packed",
                        format!("int8 code -128 at {i} (codes are in [-127, 127])"),
                    ));
                }
                Ok(self.packed.iter().map(|&b| b as i8).collect())
            }
            PackedWeightEncoding::Ternary2 => unpack_ternary_2bit_slice(&self.packed, self.len),
            PackedWeightEncoding::Binary1 => unpack_binary_1bit(&self.packed, self.len),
        }
    }

    /// The logical shape as `[H, D, N]`, or an error naming `op`.
    pub fn shape3(&self, op: &'static str) -> Result<[usize; 3]> {
        <[usize; 3]>::try_from(self.logical_shape.as_slice()).map_err(|_| {
            LowbitError::invalid_shape(
                op,
                &self.logical_shape,
                "artifact must be rank 3 [heads, embd, latent]",
            )
        })
    }

    /// The logical shape as `[H·N, D]`, or an error naming `op`.
    pub fn shape2(&self, op: &'static str) -> Result<[usize; 2]> {
        <[usize; 2]>::try_from(self.logical_shape.as_slice()).map_err(|_| {
            LowbitError::invalid_shape(
                op,
                &self.logical_shape,
                "artifact must be rank 2 [heads*latent, dim]",
            )
        })
    }

    /// Serializes to safetensors bytes.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::U8,
            vec![self.packed.len()],
            &self.packed,
        )
        .map_err(|e| LowbitError::Safetensors(e.to_string()))?;
        let shape = self
            .logical_shape
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let meta = HashMap::from([
            (KEY_VERSION.to_string(), VERSION.to_string()),
            (KEY_ENCODING.to_string(), self.encoding.as_str().to_string()),
            (KEY_SHAPE.to_string(), shape),
            (
                KEY_SCALE.to_string(),
                format!("{:08x}", self.scale.to_bits()),
            ),
            (KEY_LEN.to_string(), self.len.to_string()),
        ]);
        safetensors::serialize([(TENSOR, view)], Some(meta))
            .map_err(|e| LowbitError::Safetensors(e.to_string()))
    }

    /// Parses and validates safetensors bytes; any corrupt input is an `Err`, never a panic.
    pub fn from_safetensors_bytes(bytes: &[u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| LowbitError::Safetensors(e.to_string()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| LowbitError::Safetensors(e.to_string()))?;
        let meta = header
            .metadata()
            .as_ref()
            .ok_or_else(|| LowbitError::artifact("metadata", "missing"))?;
        let get = |key: &'static str| {
            meta.get(key).ok_or_else(|| {
                LowbitError::artifact(key_field(key), format!("missing metadata key {key}"))
            })
        };
        if get(KEY_VERSION)? != VERSION {
            return Err(LowbitError::artifact(
                "version",
                format!("unsupported version {:?}", meta.get(KEY_VERSION)),
            ));
        }
        let encoding = PackedWeightEncoding::parse(get(KEY_ENCODING)?).ok_or_else(|| {
            LowbitError::artifact(
                "encoding",
                format!("unknown encoding {:?}", meta.get(KEY_ENCODING)),
            )
        })?;
        let shape_text = get(KEY_SHAPE)?;
        let logical_shape = if shape_text.is_empty() {
            Vec::new()
        } else {
            shape_text
                .split(',')
                .map(|d| {
                    d.parse::<usize>().map_err(|_| {
                        LowbitError::artifact("logical_shape", format!("{d:?} is not a dimension"))
                    })
                })
                .collect::<Result<Vec<_>>>()?
        };
        let scale_text = get(KEY_SCALE)?;
        if scale_text.len() != 8 {
            return Err(LowbitError::artifact(
                "scale",
                "expected 8 hex digits of f32 bits",
            ));
        }
        let scale = u32::from_str_radix(scale_text, 16)
            .map(f32::from_bits)
            .map_err(|_| LowbitError::artifact("scale", "expected 8 hex digits of f32 bits"))?;
        let len = get(KEY_LEN)?
            .parse::<usize>()
            .map_err(|_| LowbitError::artifact("len", "not an integer"))?;
        let names = st.names();
        if names.len() != 1 {
            return Err(LowbitError::artifact(
                "packed",
                format!(
                    "expected exactly one tensor `{TENSOR}`, found {}",
                    names.len()
                ),
            ));
        }
        let view = st
            .tensor(TENSOR)
            .map_err(|e| LowbitError::artifact("packed", e.to_string()))?;
        if view.dtype() != safetensors::Dtype::U8 || view.shape().len() != 1 {
            return Err(LowbitError::artifact(
                "packed",
                format!(
                    "expected a rank-1 U8 tensor, got {:?} {:?}",
                    view.dtype(),
                    view.shape()
                ),
            ));
        }
        let artifact = Self {
            encoding,
            logical_shape,
            scale,
            packed: view.data().to_vec(),
            len,
        };
        artifact.validate()?;
        Ok(artifact)
    }

    /// Writes the safetensors file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let bytes = self.to_safetensors_bytes()?;
        let path = path.as_ref();
        std::fs::write(path, bytes).map_err(|source| LowbitError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads and validates a safetensors file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| LowbitError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_safetensors_bytes(&bytes)
    }
}

fn key_field(key: &'static str) -> &'static str {
    key.strip_prefix("lowbit.").unwrap_or(key)
}

/// Element count of a logical shape: rank 1..=4, no zero dims, no overflow.
fn shape_len(shape: &[usize]) -> Result<usize> {
    if shape.is_empty() || shape.len() > MAX_RANK {
        return Err(LowbitError::artifact(
            "logical_shape",
            format!("rank {} (must be 1..={MAX_RANK})", shape.len()),
        ));
    }
    if shape.contains(&0) {
        return Err(LowbitError::artifact(
            "logical_shape",
            format!("{shape:?} has a zero dimension"),
        ));
    }
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| LowbitError::artifact("logical_shape", format!("{shape:?} overflows usize")))
}

/// Quantizes float weights per tensor and packs them (`pack_weight_artifact_from_format`).
pub fn pack_weight_artifact_from_format(
    values: &[f32],
    shape: &[usize],
    format: LowBitWeightFormat,
) -> Result<PackedWeightArtifact> {
    let encoding = PackedWeightEncoding::for_format(format).ok_or_else(|| {
        LowbitError::unsupported_format(
            "pack_weight_artifact_from_format",
            format,
            "fp16 weights have no packed artifact",
        )
    })?;
    let len = shape_len(shape)?;
    if values.len() != len {
        return Err(LowbitError::len(
            "pack_weight_artifact_from_format",
            "values",
            len,
            values.len(),
        ));
    }
    let q = quantize_weights(values, format)?;
    PackedWeightArtifact::from_codes(&q.codes, shape, q.scale, encoding)
}

/// Unpacks an artifact to i8 codes (the seed's name for [`PackedWeightArtifact::codes`]).
pub fn unpack_weight_artifact_to_i8_codes(artifact: &PackedWeightArtifact) -> Result<Vec<i8>> {
    artifact.codes()
}
