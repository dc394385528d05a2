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
    /// Every format, float path first.
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

    /// CLI / metadata name: `none`, `int8`, `int4` or `uint8pos` (`parse` reads it back).
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
    /// Symmetric int8 (absmean), qmax 127, one byte per code.
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
    /// CLI name: `fp16`, `int8`, `sign1`, `ternary` or `packed2` (`parse` reads it back).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fp16 => "fp16",
            Self::Int8 => "int8",
            Self::Sign1 => "sign1",
            Self::Ternary158 => "ternary",
            Self::Packed2 => "packed2",
        }
    }

    /// Parses the CLI spellings (`fp16`/`none`, `int8`, `sign1`/`binary`,
    /// `ternary`/`ternary158`, `packed2`), ignoring case.
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

/// Quantization protocol of the seed's config; it has one value and selects nothing here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BitNetLowBitProtocol {
    /// BitNet b1.58: absmean weight codes, per-tensor activation scales.
    #[default]
    BitnetB158,
}

/// How the training forward pass quantizes (read by the plan's native-training rule).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LowBitTrainingMode {
    /// Quantization-aware training with straight-through estimators (fake quant).
    #[default]
    QatSte,
    /// Experimental: run the packed native kernels in the training forward pass.
    TrainKernelExp,
}

/// Where inference weights come from: quantized at run time, or packed artifacts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LowBitInferenceMode {
    /// Weights are fake-quantized (quantize-dequantize) at run time; no artifacts are needed.
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

/// Whether activations saved for the backward pass are kept in a quantized cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LowBitSavedActivationMode {
    /// No quantized cache: no inventory, 0 saved-activation bytes in the memory estimate.
    #[default]
    Disabled,
    /// Experimental: saved activations kept as codes + per-tensor scale.
    QuantizedCacheExp,
    /// Experimental: the quantized cache plus recompute within a rho window (half the saved
    /// bytes, more workspace; the inventory then requires a rho window anchor).
    QuantizedCacheRecomputeExp,
}

/// Settings of the saved-activation cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LowBitSavedActivationConfig {
    /// Whether, and how, saved activations are cached.
    pub mode: LowBitSavedActivationMode,
    /// Format of the cached codes (`Fp16` keeps the f32 values).
    pub format: LowBitActivationFormat,
}

/// Block compression of the rho state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RhoCompressionConfig {
    /// No block compression: the state is stored at `LowBitRhoConfig::precision`.
    #[default]
    None,
    /// Experimental: blocks of 32, int8 codes with scale `max|v|/127` per block.
    Int8BlockExp,
    /// Experimental: blocks of 32, ternary codes (2 bits) with the block's absmean scale.
    TernaryBlockExp,
    /// Experimental: blocks of 32, ±1 codes (1 bit) with the block's absmean scale.
    BinaryBlockExp,
}

impl RhoCompressionConfig {
    /// Parses `none`, `int8`, `ternary` or `binary`, ignoring case.
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
    /// f32, 4 bytes per element.
    Fp32,
    /// bf16, 2 bytes per element.
    #[default]
    Bf16,
    /// Experimental fp8; the memory estimate counts 1 byte per element.
    Fp8Exp,
    /// Experimental int8 blocks; the memory estimate counts 1 byte per element.
    Int8BlockExp,
    /// Experimental block fp8; the memory estimate counts 1 byte per element.
    Blockfp8Exp,
    /// Experimental sparse tiles; the memory estimate counts 1 byte per element.
    SparseTileExp,
}

/// How the rho state is stored: its precision, or a block compression that overrides it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LowBitRhoConfig {
    /// Element precision, used when `compression` is `None`.
    pub precision: RhoPrecisionConfig,
    /// Block compression; anything but `None` takes precedence over `precision`.
    pub compression: RhoCompressionConfig,
}

/// The seed's low-bit quantization config: what is quantized, in which formats, and which
/// runtime is asked for. The default has quantization off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LowBitQuantizationConfig {
    /// Master switch: when false nothing is quantized (plan fallback `QuantDisabled`).
    pub enable: bool,
    /// Quantization protocol (only BitNet b1.58).
    pub protocol: BitNetLowBitProtocol,
    /// Training forward: fake quant (`QatSte`) or the native kernels (`TrainKernelExp`).
    pub training_mode: LowBitTrainingMode,
    /// Inference weights: fake-quantized at run time, or packed artifacts (`OfflinePack`).
    pub inference_mode: LowBitInferenceMode,
    /// Weight format of the y projection (and of the decoder tail unless `encoder_mode` is set).
    pub weight_format: LowBitWeightFormat,
    /// Activation format of every targeted projection.
    pub act_format: LowBitActivationFormat,
    /// Projections that are quantized; the others stay in float.
    pub target_modules: Vec<LowBitTargetModule>,
    /// Weight format of the x projection.
    pub decoder_x_mode: LowBitWeightFormat,
    /// Weight format of the decoder tail; `None` means `weight_format`.
    pub encoder_mode: Option<LowBitWeightFormat>,
    /// The seed's strict-BitNet-reference flag; copied into `LowBitProjectionPlan`, no op
    /// here reads it.
    pub strict_bitnet_reference: bool,
    /// Quantized cache of the activations saved for the backward pass.
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
