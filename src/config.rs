//! Configuration enums of the seed's `model::low_bit` module, reproduced without Burn.
//!
//! Defaults follow the seed's tests: quantization disabled, BitNet b1.58 protocol, ternary
//! weights, int8 activations, all three BDH projections targeted, rho kept in bf16.

/// Activation quantization format (per tensor).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LowBitActivationFormat {
    /// No quantization: the float path `Σ (w_code·w_scale)·x`.
    Fp16,
    /// Symmetric int8, qmax 127.
    #[default]
    Int8,
    /// Symmetric int4 (stored in int8 lanes), qmax 7.
    Int4Exp,
    /// Unsigned 8-bit of `max(x, 0)`, qmax 255.
    Uint8PosExp,
}

impl LowBitActivationFormat {
    pub const ALL: [Self; 4] = [Self::Fp16, Self::Int8, Self::Int4Exp, Self::Uint8PosExp];

    /// Largest code magnitude, or `None` for the float path.
    pub fn qmax(self) -> Option<u32> {
        match self {
            Self::Fp16 => None,
            Self::Int8 => Some(127),
            Self::Int4Exp => Some(7),
            Self::Uint8PosExp => Some(255),
        }
    }

    /// True for formats whose codes fit a signed int8 lane.
    pub fn is_signed(self) -> bool {
        matches!(self, Self::Int8 | Self::Int4Exp)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fp16 => "none",
            Self::Int8 => "int8",
            Self::Int4Exp => "int4",
            Self::Uint8PosExp => "uint8pos",
        }
    }

    /// Parses the CLI spellings (`int8`, `int4`, `uint8pos`, `none`/`fp16`).
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "none" | "fp16" | "float" => Some(Self::Fp16),
            "int8" => Some(Self::Int8),
            "int4" | "int4exp" => Some(Self::Int4Exp),
            "uint8pos" | "uint8posexp" | "uint8" => Some(Self::Uint8PosExp),
            _ => None,
        }
    }
}

/// Weight quantization format (per tensor, absmean).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LowBitWeightFormat {
    /// Unquantized weights; no packed artifact exists for this format.
    Fp16,
    Int8,
    /// Binary ±1 (1 bit).
    Sign1,
    /// Ternary {-1, 0, 1} (2 bits), BitNet b1.58.
    #[default]
    Ternary158,
    /// Same codes as `Ternary158`, 2-bit packed.
    Packed2,
}

impl LowBitWeightFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fp16 => "fp16",
            Self::Int8 => "int8",
            Self::Sign1 => "sign1",
            Self::Ternary158 => "ternary",
            Self::Packed2 => "packed2",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "fp16" | "none" => Some(Self::Fp16),
            "int8" => Some(Self::Int8),
            "sign1" | "binary" => Some(Self::Sign1),
            "ternary" | "ternary158" => Some(Self::Ternary158),
            "packed2" => Some(Self::Packed2),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BitNetLowBitProtocol {
    #[default]
    BitnetB158,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LowBitTrainingMode {
    /// Quantization-aware training with straight-through estimators (fake quant).
    #[default]
    QatSte,
    /// Experimental: run the packed native kernels in the training forward pass.
    TrainKernelExp,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LowBitInferenceMode {
    #[default]
    RuntimeFakeQuant,
    /// Weights are packed offline into artifacts.
    OfflinePack,
}

/// Which BDH projection a quantization setting applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LowBitTargetModule {
    /// The decoder tail `y · W[H·N, D]` (the seed calls its role "residual").
    Encoder,
    /// The low-rank projection of `x`.
    DecoderX,
    /// The low-rank projection of `y`.
    DecoderY,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LowBitSavedActivationMode {
    #[default]
    Disabled,
    QuantizedCacheExp,
    QuantizedCacheRecomputeExp,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LowBitSavedActivationConfig {
    pub mode: LowBitSavedActivationMode,
    pub format: LowBitActivationFormat,
}

/// Block compression of the rho state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RhoCompressionConfig {
    #[default]
    None,
    Int8BlockExp,
    TernaryBlockExp,
    BinaryBlockExp,
}

impl RhoCompressionConfig {
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "none" => Some(Self::None),
            "int8" => Some(Self::Int8BlockExp),
            "ternary" => Some(Self::TernaryBlockExp),
            "binary" => Some(Self::BinaryBlockExp),
            _ => None,
        }
    }
}

/// Storage precision of the rho state when it is not block-compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RhoPrecisionConfig {
    Fp32,
    #[default]
    Bf16,
    Fp8Exp,
    Int8BlockExp,
    Blockfp8Exp,
    SparseTileExp,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LowBitRhoConfig {
    pub precision: RhoPrecisionConfig,
    pub compression: RhoCompressionConfig,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LowBitQuantizationConfig {
    pub enable: bool,
    pub protocol: BitNetLowBitProtocol,
    pub training_mode: LowBitTrainingMode,
    pub inference_mode: LowBitInferenceMode,
    /// Weight format of the y projection (and of the decoder tail unless `encoder_mode` is set).
    pub weight_format: LowBitWeightFormat,
    pub act_format: LowBitActivationFormat,
    pub target_modules: Vec<LowBitTargetModule>,
    /// Weight format of the x projection.
    pub decoder_x_mode: LowBitWeightFormat,
    /// Weight format of the decoder tail; `None` means `weight_format`.
    pub encoder_mode: Option<LowBitWeightFormat>,
    pub strict_bitnet_reference: bool,
    pub saved_activations: LowBitSavedActivationConfig,
}

impl Default for LowBitQuantizationConfig {
    fn default() -> Self {
        Self {
            enable: false,
            protocol: BitNetLowBitProtocol::BitnetB158,
            training_mode: LowBitTrainingMode::QatSte,
            inference_mode: LowBitInferenceMode::RuntimeFakeQuant,
            weight_format: LowBitWeightFormat::Ternary158,
            act_format: LowBitActivationFormat::Int8,
            target_modules: vec![
                LowBitTargetModule::Encoder,
                LowBitTargetModule::DecoderX,
                LowBitTargetModule::DecoderY,
            ],
            decoder_x_mode: LowBitWeightFormat::Int8,
            encoder_mode: None,
            strict_bitnet_reference: false,
            saved_activations: LowBitSavedActivationConfig::default(),
        }
    }
}
