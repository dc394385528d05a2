#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod artifact;
pub mod backend;
pub mod caps;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod estimate;
pub mod fake_quant;
pub mod kernels;
pub mod ops;
pub mod pack;
pub mod plan;
pub mod profile;
pub mod quant;
pub mod reference;
pub mod rho;
pub mod saved;
pub mod tensor;
pub mod testing;

pub use artifact::{
    PackedWeightArtifact, PackedWeightEncoding, pack_weight_artifact_from_format,
    unpack_weight_artifact_to_i8_codes,
};
pub use backend::Backend;
pub use caps::Capabilities;
pub use config::*;
pub use error::{BackendKind, LowbitError, Result};
pub use ops::{
    ActInput, DecoderTailShape, Epilogue, LowrankShape, OutputDType, ProjectionOutput, ScaleSource,
};
pub use pack::{
    pack_decoder_input_codes_i8x4, pack_decoder_weight_codes_i8x4, pack_lowrank_input_codes_i8x4,
    pack_lowrank_weight_codes_i8x4, unpack_decoder_input_codes_i8x4,
    unpack_decoder_weight_codes_i8x4, unpack_lowrank_input_codes_i8x4,
    unpack_lowrank_weight_codes_i8x4,
};
pub use quant::EPS;
