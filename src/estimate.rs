//! Memory estimates of a low-bit BDH configuration (the seed's bucket estimate and saved
//! activation inventory), with the seed's byte ratios and saturating arithmetic.
//!
//! Every packed tensor is counted as `ceil(elements · num / den) + 4` bytes (codes plus one
//! f32 scale). Ratios (bytes per element as `num/den`): weights fp16 2, int8 1, sign1 1/8,
//! ternary 1/4; activations fp16 2, int8/uint8pos 1, int4 1/2; rho compressed int8 9/8,
//! ternary 3/8, binary 1/4, else by precision (fp32 4, bf16 2, 8-bit formats 1).

use crate::config::{
    LowBitActivationFormat, LowBitQuantizationConfig, LowBitRhoConfig, LowBitSavedActivationMode,
    LowBitWeightFormat, RhoCompressionConfig, RhoPrecisionConfig,
};
use crate::plan::LowBitProjectionPlan;

/// Model and batch dimensions the estimate is made for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LowBitMemoryEstimateInput {
    /// `B`, sequences per batch.
    pub batch_size: usize,
    /// `T`, tokens per sequence.
    pub time_steps: usize,
    /// Layers (scales the saved activations and the rho state).
    pub n_layer: usize,
    /// `H`, heads.
    pub n_head: usize,
    /// `D`, the model (embedding) width.
    pub n_embd: usize,
    /// Latent width over all heads, `H·N` (`N = latent_total / H`, rounded down).
    pub latent_total: usize,
}

/// Estimated bytes per memory bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LowBitMemoryBucketEstimate {
    /// f32 master copies of the quantized projection weights (4 bytes per element).
    pub master_weight_bytes: u64,
    /// The same weights in their low-bit formats, each with its f32 scale.
    pub execution_weight_bytes: u64,
    /// Quantized inputs of the quantized projections, once (not per layer): x `B·T·D`,
    /// y `B·T·H·D`, tail `B·T·H·N` elements.
    pub activation_shell_bytes: u64,
    /// Saved activations, `3·B·T·n_layer·D` elements in the saved format; halved under
    /// `QuantizedCacheRecomputeExp`, 0 when saved activations are disabled.
    pub saved_activation_bytes: u64,
    /// Rho state, `B·n_layer·H·N·D` elements, compressed or at the rho precision,
    /// plus 4 bytes.
    pub rho_state_bytes: u64,
    /// Scratch: half of `activation_shell_bytes`, plus a quarter more under
    /// `QuantizedCacheRecomputeExp`.
    pub workspace_bytes: u64,
}

impl LowBitMemoryBucketEstimate {
    /// Sum of all buckets (saturating).
    pub fn estimated_total_bytes(&self) -> u64 {
        self.master_weight_bytes
            .saturating_add(self.execution_weight_bytes)
            .saturating_add(self.activation_shell_bytes)
            .saturating_add(self.saved_activation_bytes)
            .saturating_add(self.rho_state_bytes)
            .saturating_add(self.workspace_bytes)
    }
}

/// What a saved activation does in the backward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LowBitSavedActivationRecomputePolicy {
    /// Saved activations are disabled.
    #[default]
    Disabled,
    /// Backward reads the quantized cache only (`QuantizedCacheExp`).
    QuantizedCacheOnly,
    /// Backward may recompute inside the rho window (`QuantizedCacheRecomputeExp`).
    RecomputeSafeWithinWindow,
}

impl LowBitSavedActivationRecomputePolicy {
    /// Stable names (logged and compared by tooling).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::QuantizedCacheOnly => "quantized_cache_only",
            Self::RecomputeSafeWithinWindow => "recompute_safe_within_window",
        }
    }
}

/// One saved activation tensor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LowBitSavedActivationTensorInventoryEntry {
    /// `x_projection_input`, `y_projection_input` or `residual_tail_input`.
    pub name: String,
    /// `[B, H, T, D]` for the projection inputs, `[B, H, T, N]` for the tail input.
    pub shape: Vec<usize>,
    /// Product of `shape` (saturating).
    pub element_count: u64,
    /// Bytes in the saved format: `ceil(elements · bytes per element) + 4` (f32 scale).
    pub estimated_bytes: u64,
    /// What the backward pass does with it (from the saved activation mode).
    pub recompute_policy: LowBitSavedActivationRecomputePolicy,
}

/// Every saved activation tensor of a configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LowBitSavedActivationInventory {
    /// The config's saved activation mode (never `Disabled` here).
    pub mode: LowBitSavedActivationMode,
    /// Activation format the tensors are saved in.
    pub format: LowBitActivationFormat,
    /// Whether the mode is `QuantizedCacheRecomputeExp` (recompute needs a rho
    /// window anchor).
    pub requires_rho_window_anchor: bool,
    /// One entry per targeted role, in the order x, y, decoder tail.
    pub tensors: Vec<LowBitSavedActivationTensorInventoryEntry>,
}

fn bytes_per_weight_element(format: LowBitWeightFormat) -> (u64, u64) {
    match format {
        LowBitWeightFormat::Fp16 => (2, 1),
        LowBitWeightFormat::Int8 => (1, 1),
        LowBitWeightFormat::Sign1 => (1, 8),
        LowBitWeightFormat::Ternary158 | LowBitWeightFormat::Packed2 => (1, 4),
    }
}

fn bytes_per_activation_element(format: LowBitActivationFormat) -> (u64, u64) {
    match format {
        LowBitActivationFormat::Fp16 => (2, 1),
        LowBitActivationFormat::Int8 | LowBitActivationFormat::Uint8PosExp => (1, 1),
        LowBitActivationFormat::Int4Exp => (1, 2),
    }
}

fn saved_activation_bytes_per_element(format: LowBitActivationFormat) -> (u64, u64) {
    bytes_per_activation_element(format)
}

fn estimate_packed_tensor_bytes(elements: u64, numerator: u64, denominator: u64) -> u64 {
    elements
        .saturating_mul(numerator)
        .div_ceil(denominator.max(1))
        .saturating_add(core::mem::size_of::<f32>() as u64)
}

fn rho_bytes_per_element(config: &LowBitRhoConfig) -> (u64, u64) {
    match config.compression {
        RhoCompressionConfig::Int8BlockExp => return (9, 8),
        RhoCompressionConfig::TernaryBlockExp => return (3, 8),
        RhoCompressionConfig::BinaryBlockExp => return (1, 4),
        RhoCompressionConfig::None => {}
    }
    match config.precision {
        RhoPrecisionConfig::Fp32 => (4, 1),
        RhoPrecisionConfig::Bf16 => (2, 1),
        RhoPrecisionConfig::Fp8Exp
        | RhoPrecisionConfig::Int8BlockExp
        | RhoPrecisionConfig::Blockfp8Exp
        | RhoPrecisionConfig::SparseTileExp => (1, 1),
    }
}

fn saved_activation_recompute_factor(mode: LowBitSavedActivationMode) -> (u64, u64) {
    match mode {
        LowBitSavedActivationMode::Disabled => (0, 1),
        LowBitSavedActivationMode::QuantizedCacheExp => (1, 1),
        LowBitSavedActivationMode::QuantizedCacheRecomputeExp => (1, 2),
    }
}

/// The seed's `estimate_low_bit_memory_buckets` (all zeros when quantization is disabled).
pub fn estimate_low_bit_memory_buckets(
    quant: &LowBitQuantizationConfig,
    rho: &LowBitRhoConfig,
    input: LowBitMemoryEstimateInput,
) -> LowBitMemoryBucketEstimate {
    if !quant.enable {
        return LowBitMemoryBucketEstimate::default();
    }
    let plan = LowBitProjectionPlan::from_config(quant);
    let latent_per_head = input.latent_total / input.n_head.max(1);
    let headwise_projection_elements = (input.n_head as u64)
        .saturating_mul(input.n_embd as u64)
        .saturating_mul(latent_per_head as u64);
    let decoder_tail_elements = (input.latent_total as u64).saturating_mul(input.n_embd as u64);

    let mut master_weight_bytes = 0u64;
    let mut execution_weight_bytes = 0u64;
    let mut activation_shell_bytes = 0u64;
    let mut saved_activation_bytes = 0u64;

    let weights = [
        (plan.x_weight_format, headwise_projection_elements),
        (plan.y_weight_format, headwise_projection_elements),
        (plan.residual_weight_format, decoder_tail_elements),
    ];
    for (format, elements) in weights {
        if let Some(format) = format {
            master_weight_bytes = master_weight_bytes.saturating_add(elements.saturating_mul(4));
            let (num, den) = bytes_per_weight_element(format);
            execution_weight_bytes = execution_weight_bytes
                .saturating_add(estimate_packed_tensor_bytes(elements, num, den));
        }
    }

    let activation_tokens = (input.batch_size as u64).saturating_mul(input.time_steps as u64);
    let activations = [
        (
            plan.x_activation_format,
            activation_tokens.saturating_mul(input.n_embd as u64),
        ),
        (
            plan.y_activation_format,
            activation_tokens
                .saturating_mul(input.n_head as u64)
                .saturating_mul(input.n_embd as u64),
        ),
        (
            plan.residual_activation_format,
            activation_tokens
                .saturating_mul(input.n_head as u64)
                .saturating_mul(latent_per_head as u64),
        ),
    ];
    for (format, elements) in activations {
        if let Some(format) = format {
            let (num, den) = bytes_per_activation_element(format);
            activation_shell_bytes = activation_shell_bytes
                .saturating_add(estimate_packed_tensor_bytes(elements, num, den));
        }
    }

    if quant.saved_activations.mode != LowBitSavedActivationMode::Disabled {
        let saved_activation_elements = activation_tokens
            .saturating_mul(input.n_layer as u64)
            .saturating_mul(input.n_embd as u64)
            .saturating_mul(3);
        let (bytes_num, bytes_den) =
            saved_activation_bytes_per_element(quant.saved_activations.format);
        let raw_saved_activation_bytes =
            estimate_packed_tensor_bytes(saved_activation_elements, bytes_num, bytes_den);
        let (factor_num, factor_den) =
            saved_activation_recompute_factor(quant.saved_activations.mode);
        saved_activation_bytes = raw_saved_activation_bytes
            .saturating_mul(factor_num)
            .saturating_div(factor_den.max(1));
    }

    let rho_elements = input
        .batch_size
        .saturating_mul(input.n_layer)
        .saturating_mul(input.n_head)
        .saturating_mul(latent_per_head)
        .saturating_mul(input.n_embd) as u64;
    let (rho_num, rho_den) = rho_bytes_per_element(rho);
    let rho_state_bytes = estimate_packed_tensor_bytes(rho_elements, rho_num, rho_den);

    let mut workspace_bytes = activation_shell_bytes / 2;
    if quant.saved_activations.mode == LowBitSavedActivationMode::QuantizedCacheRecomputeExp {
        workspace_bytes = workspace_bytes.saturating_add(activation_shell_bytes / 4);
    }

    LowBitMemoryBucketEstimate {
        master_weight_bytes,
        execution_weight_bytes,
        activation_shell_bytes,
        saved_activation_bytes,
        rho_state_bytes,
        workspace_bytes,
    }
}

/// The seed's `build_low_bit_saved_activation_inventory` (`None` when quantization or saved
/// activations are disabled).
pub fn build_low_bit_saved_activation_inventory(
    quant: &LowBitQuantizationConfig,
    input: LowBitMemoryEstimateInput,
) -> Option<LowBitSavedActivationInventory> {
    if !quant.enable || quant.saved_activations.mode == LowBitSavedActivationMode::Disabled {
        return None;
    }
    let plan = LowBitProjectionPlan::from_config(quant);
    let latent_per_head = input.latent_total / input.n_head.max(1);
    let (bytes_num, bytes_den) = saved_activation_bytes_per_element(quant.saved_activations.format);
    let recompute_policy = match quant.saved_activations.mode {
        LowBitSavedActivationMode::Disabled => LowBitSavedActivationRecomputePolicy::Disabled,
        LowBitSavedActivationMode::QuantizedCacheExp => {
            LowBitSavedActivationRecomputePolicy::QuantizedCacheOnly
        }
        LowBitSavedActivationMode::QuantizedCacheRecomputeExp => {
            LowBitSavedActivationRecomputePolicy::RecomputeSafeWithinWindow
        }
    };
    let entry = |name: &str, shape: Vec<usize>| {
        let element_count = shape
            .iter()
            .fold(1u64, |acc, &dim| acc.saturating_mul(dim as u64));
        LowBitSavedActivationTensorInventoryEntry {
            name: name.to_string(),
            estimated_bytes: estimate_packed_tensor_bytes(element_count, bytes_num, bytes_den),
            shape,
            element_count,
            recompute_policy,
        }
    };
    let projection_shape = vec![
        input.batch_size,
        input.n_head,
        input.time_steps,
        input.n_embd,
    ];
    let mut tensors = Vec::new();
    if plan.x_weight_format.is_some() {
        tensors.push(entry("x_projection_input", projection_shape.clone()));
    }
    if plan.y_weight_format.is_some() {
        tensors.push(entry("y_projection_input", projection_shape));
    }
    if plan.residual_weight_format.is_some() {
        tensors.push(entry(
            "residual_tail_input",
            vec![
                input.batch_size,
                input.n_head,
                input.time_steps,
                latent_per_head,
            ],
        ));
    }
    Some(LowBitSavedActivationInventory {
        mode: quant.saved_activations.mode,
        format: quant.saved_activations.format,
        requires_rho_window_anchor: quant.saved_activations.mode
            == LowBitSavedActivationMode::QuantizedCacheRecomputeExp,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LowBitTargetModule;

    #[test]
    fn disabled_is_all_zero() {
        let e = estimate_low_bit_memory_buckets(
            &LowBitQuantizationConfig::default(),
            &LowBitRhoConfig::default(),
            LowBitMemoryEstimateInput::default(),
        );
        assert_eq!(e, LowBitMemoryBucketEstimate::default());
    }

    #[test]
    fn exact_numbers_for_a_small_config() {
        // One decoder-tail role, ternary weights, int8 activations, bf16 rho.
        let quant = LowBitQuantizationConfig {
            enable: true,
            target_modules: vec![LowBitTargetModule::Encoder],
            ..Default::default()
        };
        let input = LowBitMemoryEstimateInput {
            batch_size: 2,
            time_steps: 3,
            n_layer: 1,
            n_head: 2,
            n_embd: 8,
            latent_total: 16,
        };
        let e = estimate_low_bit_memory_buckets(&quant, &LowBitRhoConfig::default(), input);
        // decoder tail: 16·8 = 128 elements.
        assert_eq!(e.master_weight_bytes, 512);
        assert_eq!(e.execution_weight_bytes, 128 / 4 + 4);
        // activations: 6 tokens · 2 heads · 8 latent/head = 96 int8 + scale.
        assert_eq!(e.activation_shell_bytes, 100);
        assert_eq!(e.saved_activation_bytes, 0);
        // rho: 2·1·2·8·8 = 256 elements in bf16.
        assert_eq!(e.rho_state_bytes, 512 + 4);
        assert_eq!(e.workspace_bytes, 50);
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let quant = LowBitQuantizationConfig {
            enable: true,
            ..Default::default()
        };
        let big = usize::MAX / 2;
        let e = estimate_low_bit_memory_buckets(
            &quant,
            &LowBitRhoConfig::default(),
            LowBitMemoryEstimateInput {
                batch_size: big,
                time_steps: big,
                n_layer: big,
                n_head: 1,
                n_embd: big,
                latent_total: big,
            },
        );
        assert_eq!(e.estimated_total_bytes(), u64::MAX);
    }
}
