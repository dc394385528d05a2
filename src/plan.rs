//! Which runtime a low-bit projection takes: the seed's `LowBitProjectionPlan` and
//! `resolve_low_bit_kernel_plan*` rules, reproduced exactly, over capabilities that come from
//! real probing ([`LowBitKernelCapabilities::from_probe`]), never hard-coded.
//!
//! The rules (in order):
//! 1. quantization disabled → `FakeQuantReference`, fallback `QuantDisabled`;
//! 2. `OfflinePack` inference: packed artifacts + native projection → `PackedNativeInference`;
//!    packed artifacts + packed reference → `PackedReference`; otherwise `FakeQuantReference`
//!    with `NativeLowBitUnavailable` (artifacts present) or `MissingPackedArtifacts`;
//! 3. `TrainKernelExp` training + native projection + every targeted module in a format the
//!    native training forward takes (decoder x: int8/sign1; others: anything but fp16) →
//!    `PackedNativeTrainingForward`;
//! 4. otherwise `FakeQuantReference` with no fallback reason (runtime fake quant is the plan).
//!
//! The backend-name variant adds the seed's generic-backend shortcut: a backend whose name
//! contains `Autodiff` takes rule 3 before rule 2.

use crate::artifact::PackedWeightArtifact;
use crate::caps::Capabilities;
use crate::config::{
    LowBitActivationFormat, LowBitInferenceMode, LowBitQuantizationConfig, LowBitTargetModule,
    LowBitTrainingMode, LowBitWeightFormat,
};

/// Which weight/activation format each BDH projection role runs in (`None`: not quantized).
///
/// Roles: `x` = decoder-x low-rank projection, `y` = decoder-y low-rank projection,
/// `residual` = the decoder tail (the seed's `Encoder` target).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LowBitProjectionPlan {
    /// The config's `strict_bitnet_reference` flag, copied as is (no plan rule reads it).
    pub strict_bitnet_reference: bool,
    /// x weight format (the config's `decoder_x_mode`); `None` unless `DecoderX` is targeted.
    pub x_weight_format: Option<LowBitWeightFormat>,
    /// x activation format (the config's `act_format`); `None` unless `DecoderX` is targeted.
    pub x_activation_format: Option<LowBitActivationFormat>,
    /// y weight format (the config's `weight_format`); `None` unless `DecoderY` is targeted.
    pub y_weight_format: Option<LowBitWeightFormat>,
    /// y activation format (the config's `act_format`); `None` unless `DecoderY` is targeted.
    pub y_activation_format: Option<LowBitActivationFormat>,
    /// Decoder tail weight format (`encoder_mode`, else `weight_format`); `None` unless
    /// `Encoder` is targeted.
    pub residual_weight_format: Option<LowBitWeightFormat>,
    /// Decoder tail activation format (`act_format`); `None` unless `Encoder` is targeted.
    pub residual_activation_format: Option<LowBitActivationFormat>,
}

impl LowBitProjectionPlan {
    /// The roles' formats under `config`; the default (all `None`) when quantization is disabled.
    pub fn from_config(config: &LowBitQuantizationConfig) -> Self {
        if !config.enable {
            return Self::default();
        }
        let targets = |m: LowBitTargetModule| config.target_modules.contains(&m);
        let x_enabled = targets(LowBitTargetModule::DecoderX);
        let y_enabled = targets(LowBitTargetModule::DecoderY);
        let residual_enabled = targets(LowBitTargetModule::Encoder);
        Self {
            strict_bitnet_reference: config.strict_bitnet_reference,
            x_weight_format: x_enabled.then_some(config.decoder_x_mode),
            x_activation_format: x_enabled.then_some(config.act_format),
            y_weight_format: y_enabled.then_some(config.weight_format),
            y_activation_format: y_enabled.then_some(config.act_format),
            residual_weight_format: residual_enabled
                .then_some(config.encoder_mode.unwrap_or(config.weight_format)),
            residual_activation_format: residual_enabled.then_some(config.act_format),
        }
    }

    /// Whether any role is quantized (has a weight format).
    pub fn is_enabled(&self) -> bool {
        self.x_weight_format.is_some()
            || self.y_weight_format.is_some()
            || self.residual_weight_format.is_some()
    }
}

/// The runtime a projection takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LowBitKernelRuntimeKind {
    /// Float math on fake-quantized (quantize-dequantize) values.
    #[default]
    FakeQuantReference,
    /// Packed artifacts, executed by the CPU reference.
    PackedReference,
    /// Packed artifacts, executed by native integer kernels (CUDA dp4a / WGSL dot4).
    PackedNativeInference,
    /// Native integer kernels in the training forward pass (weights quantized on the fly).
    PackedNativeTrainingForward,
}

impl LowBitKernelRuntimeKind {
    /// Stable names (logged and compared by tooling).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FakeQuantReference => "fake_quant_reference",
            Self::PackedReference => "packed_reference",
            Self::PackedNativeInference => "packed_native_inference",
            Self::PackedNativeTrainingForward => "packed_native_training_forward",
        }
    }
}

/// Why a plan fell back to fake quantization.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LowBitKernelFallbackReason {
    /// Quantization is disabled in the config (`enable = false`).
    QuantDisabled,
    /// `OfflinePack` inference was asked for, but no packed weight artifact was given.
    MissingPackedArtifacts,
    /// Packed artifacts exist, but neither native kernels nor the packed reference can run them.
    #[default]
    NativeLowBitUnavailable,
}

impl LowBitKernelFallbackReason {
    /// Stable names (logged and compared by tooling).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QuantDisabled => "quant_disabled",
            Self::MissingPackedArtifacts => "missing_packed_artifacts",
            Self::NativeLowBitUnavailable => "native_low_bit_unavailable",
        }
    }
}

/// What the machine can run, as the plan sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LowBitKernelCapabilities {
    /// The packed CPU reference can run packed artifacts (always true from a probe).
    pub packed_reference_supported: bool,
    /// A native low-bit device exists (CUDA with dp4a, or a wgpu adapter).
    pub native_low_bit_supported: bool,
    /// Native low-rank projection kernels can run (the one native field the plan rules read).
    pub native_projection_supported: bool,
    /// Native decoder tail kernels can run (reported; no plan rule reads it).
    pub native_decoder_tail_supported: bool,
    /// Native int8 block rho compression can run (reported; no plan rule reads it).
    pub native_rho_int8_block_supported: bool,
}

impl LowBitKernelCapabilities {
    /// Whether any native field is set (the packed reference does not count).
    pub fn any_native_supported(&self) -> bool {
        self.native_low_bit_supported
            || self.native_projection_supported
            || self.native_decoder_tail_supported
            || self.native_rho_int8_block_supported
    }

    /// Only the packed CPU reference (the CPU backend always exists).
    pub fn reference_only() -> Self {
        Self {
            packed_reference_supported: true,
            ..Self::default()
        }
    }

    /// Every native path available (for tests and what-if explanations; not a probe result).
    pub fn all_native() -> Self {
        Self {
            packed_reference_supported: true,
            native_low_bit_supported: true,
            native_projection_supported: true,
            native_decoder_tail_supported: true,
            native_rho_int8_block_supported: true,
        }
    }

    /// From a probe: the packed reference is always supported (the CPU backend always
    /// exists); the native paths only when a CUDA device with dp4a or a wgpu adapter was
    /// found (`Available`).
    pub fn from_probe(caps: &Capabilities) -> Self {
        let cuda = caps
            .cuda
            .available()
            .is_some_and(|c| c.devices.iter().any(|d| d.dp4a));
        let wgpu = caps
            .wgpu
            .available()
            .is_some_and(|w| !w.adapters.is_empty());
        let native = cuda || wgpu;
        Self {
            packed_reference_supported: true,
            native_low_bit_supported: native,
            native_projection_supported: native,
            native_decoder_tail_supported: native,
            native_rho_int8_block_supported: native,
        }
    }

    /// [`from_probe`](Self::from_probe) of the process-wide probe ([`Capabilities::get`]).
    pub fn probed() -> Self {
        Self::from_probe(Capabilities::get())
    }
}

/// A resolved plan: the runtime, the capabilities it was resolved against, and why it fell
/// back (if it did).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LowBitKernelPlan {
    /// The runtime the projections take.
    pub runtime: LowBitKernelRuntimeKind,
    /// The capabilities the plan was resolved against.
    pub capabilities: LowBitKernelCapabilities,
    /// Whether packed weight artifacts were at hand (for at least one role).
    pub packed_static_ready: bool,
    /// Why the plan fell back to fake quantization; `None` if it did not (runtime fake
    /// quantization chosen outside `OfflinePack` is no fallback).
    pub fallback_reason: Option<LowBitKernelFallbackReason>,
}

/// The packed artifacts available for each projection role (borrowed).
#[derive(Clone, Copy, Debug, Default)]
pub struct PackedLowBitProjectionArtifacts<'a> {
    /// Kept from the seed's struct; no resolver reads it.
    pub runtime: LowBitKernelRuntimeKind,
    /// Packed x projection weight (`[H, D, N]`), if any.
    pub x: Option<&'a PackedWeightArtifact>,
    /// Packed y projection weight (`[H, D, N]`), if any.
    pub y: Option<&'a PackedWeightArtifact>,
    /// Packed decoder tail weight (`[H·N, D]`), if any.
    pub residual: Option<&'a PackedWeightArtifact>,
}

impl PackedLowBitProjectionArtifacts<'_> {
    /// Whether any role has an artifact (what the resolvers call `packed_static_ready`).
    pub fn has_any(&self) -> bool {
        self.x.is_some() || self.y.is_some() || self.residual.is_some()
    }
}

/// The seed's backend-name heuristic: an autodiff backend (`Autodiff` in its type name)
/// prefers the native training runtime.
pub fn backend_name_prefers_training_low_bit_runtime(backend_name: &str) -> bool {
    backend_name.contains("Autodiff")
}

/// The seed's backend-name heuristic: wgpu backends reuse a cached inference activation
/// scale (case-insensitive `wgpu` in the name).
pub fn backend_name_prefers_inference_cached_scale(backend_name: &str) -> bool {
    backend_name.trim().to_ascii_lowercase().contains("wgpu")
}

/// Decoder-x weight formats the native training forward takes.
pub fn native_training_supports_decoder_x_format(format: LowBitWeightFormat) -> bool {
    matches!(format, LowBitWeightFormat::Int8 | LowBitWeightFormat::Sign1)
}

/// Decoder-y / decoder-tail weight formats the native training forward takes.
pub fn native_training_supports_weight_format(format: LowBitWeightFormat) -> bool {
    !matches!(format, LowBitWeightFormat::Fp16)
}

/// The first targeted module whose weight format the native training forward cannot take.
fn native_training_blocker(
    config: &LowBitQuantizationConfig,
) -> Option<(LowBitTargetModule, LowBitWeightFormat)> {
    config
        .target_modules
        .iter()
        .find_map(|&module| match module {
            LowBitTargetModule::DecoderX => {
                (!native_training_supports_decoder_x_format(config.decoder_x_mode))
                    .then_some((module, config.decoder_x_mode))
            }
            LowBitTargetModule::DecoderY => {
                (!native_training_supports_weight_format(config.weight_format))
                    .then_some((module, config.weight_format))
            }
            LowBitTargetModule::Encoder => {
                let format = config.encoder_mode.unwrap_or(config.weight_format);
                (!native_training_supports_weight_format(format)).then_some((module, format))
            }
        })
}

/// Whether every targeted module is in a format the native training forward takes.
pub fn config_prefers_native_training_runtime(config: &LowBitQuantizationConfig) -> bool {
    native_training_blocker(config).is_none()
}

fn wants_native_training(
    config: &LowBitQuantizationConfig,
    capabilities: &LowBitKernelCapabilities,
) -> bool {
    config.enable
        && config.training_mode == LowBitTrainingMode::TrainKernelExp
        && capabilities.native_projection_supported
        && config_prefers_native_training_runtime(config)
}

/// Resolves a plan from explicit capabilities and the artifacts at hand.
pub fn resolve_low_bit_kernel_plan_from_capabilities(
    config: &LowBitQuantizationConfig,
    packed_artifacts: PackedLowBitProjectionArtifacts<'_>,
    capabilities: LowBitKernelCapabilities,
) -> LowBitKernelPlan {
    resolve_low_bit_kernel_plan_from_packed_static_ready(
        config,
        packed_artifacts.has_any(),
        capabilities,
    )
}

/// Resolves a plan from explicit capabilities and whether packed artifacts exist.
pub fn resolve_low_bit_kernel_plan_from_packed_static_ready(
    config: &LowBitQuantizationConfig,
    packed_static_ready: bool,
    capabilities: LowBitKernelCapabilities,
) -> LowBitKernelPlan {
    let plan = |runtime, fallback_reason| LowBitKernelPlan {
        runtime,
        capabilities,
        packed_static_ready,
        fallback_reason,
    };
    if !config.enable {
        return plan(
            LowBitKernelRuntimeKind::FakeQuantReference,
            Some(LowBitKernelFallbackReason::QuantDisabled),
        );
    }
    if config.inference_mode == LowBitInferenceMode::OfflinePack {
        if packed_static_ready && capabilities.native_projection_supported {
            return plan(LowBitKernelRuntimeKind::PackedNativeInference, None);
        }
        if packed_static_ready && capabilities.packed_reference_supported {
            return plan(LowBitKernelRuntimeKind::PackedReference, None);
        }
        return plan(
            LowBitKernelRuntimeKind::FakeQuantReference,
            Some(if packed_static_ready {
                LowBitKernelFallbackReason::NativeLowBitUnavailable
            } else {
                LowBitKernelFallbackReason::MissingPackedArtifacts
            }),
        );
    }
    if wants_native_training(config, &capabilities) {
        return plan(LowBitKernelRuntimeKind::PackedNativeTrainingForward, None);
    }
    plan(LowBitKernelRuntimeKind::FakeQuantReference, None)
}

/// Resolves a plan against this machine's probed capabilities ([`Capabilities::get`]).
pub fn resolve_low_bit_kernel_plan(
    config: &LowBitQuantizationConfig,
    packed_artifacts: PackedLowBitProjectionArtifacts<'_>,
) -> LowBitKernelPlan {
    resolve_low_bit_kernel_plan_from_capabilities(
        config,
        packed_artifacts,
        LowBitKernelCapabilities::probed(),
    )
}

/// The seed's generic `resolve_low_bit_kernel_plan::<B>` with the backend's type name given
/// as a string and the capabilities given explicitly: an `Autodiff` backend takes the native
/// training forward (when the config asks for it and native projection exists) even under
/// `OfflinePack`; otherwise the ordinary rules apply.
pub fn resolve_low_bit_kernel_plan_for_backend_name(
    backend_name: &str,
    config: &LowBitQuantizationConfig,
    packed_static_ready: bool,
    capabilities: LowBitKernelCapabilities,
) -> LowBitKernelPlan {
    if wants_native_training(config, &capabilities)
        && backend_name_prefers_training_low_bit_runtime(backend_name)
    {
        return LowBitKernelPlan {
            runtime: LowBitKernelRuntimeKind::PackedNativeTrainingForward,
            capabilities,
            packed_static_ready,
            fallback_reason: None,
        };
    }
    resolve_low_bit_kernel_plan_from_packed_static_ready(config, packed_static_ready, capabilities)
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// A short explanation of a plan: the runtime, and why it was chosen or why it fell back.
pub fn explain(plan: &LowBitKernelPlan) -> String {
    let caps = &plan.capabilities;
    let why = match (plan.runtime, plan.fallback_reason) {
        (_, Some(LowBitKernelFallbackReason::QuantDisabled)) => {
            "quantization is disabled (`enable = false`): float math, nothing packed".to_string()
        }
        (_, Some(LowBitKernelFallbackReason::MissingPackedArtifacts)) => {
            "offline-pack inference was asked for but no packed weight artifact was given: \
             falling back to fake quantization"
                .to_string()
        }
        (_, Some(LowBitKernelFallbackReason::NativeLowBitUnavailable)) => {
            "packed artifacts exist but neither native kernels nor the packed reference are \
             available: falling back to fake quantization"
                .to_string()
        }
        (LowBitKernelRuntimeKind::PackedNativeInference, None) => {
            "offline-pack inference with packed artifacts and a native low-bit device \
             (CUDA dp4a or a wgpu adapter)"
                .to_string()
        }
        (LowBitKernelRuntimeKind::PackedReference, None) => {
            "offline-pack inference with packed artifacts, but no native low-bit device was \
             probed: the packed CPU reference runs it"
                .to_string()
        }
        (LowBitKernelRuntimeKind::PackedNativeTrainingForward, None) => {
            "train-kernel mode with a native low-bit device and native-compatible weight formats"
                .to_string()
        }
        (LowBitKernelRuntimeKind::FakeQuantReference, None) => {
            "runtime fake quantization (not offline-pack inference; the native training \
             forward was not selected)"
                .to_string()
        }
    };
    format!(
        "runtime: {}\nreason: {why}\npacked artifacts: {}\ncapabilities: packed_reference={} \
         native_projection={} native_decoder_tail={} native_rho_int8_block={}",
        plan.runtime.as_str(),
        yes_no(plan.packed_static_ready),
        yes_no(caps.packed_reference_supported),
        yes_no(caps.native_projection_supported),
        yes_no(caps.native_decoder_tail_supported),
        yes_no(caps.native_rho_int8_block_supported),
    )
}

/// [`explain`], plus what the config adds: why the native training forward was not chosen.
pub fn explain_with_config(config: &LowBitQuantizationConfig, plan: &LowBitKernelPlan) -> String {
    let mut text = explain(plan);
    if config.enable
        && config.training_mode == LowBitTrainingMode::TrainKernelExp
        && plan.runtime != LowBitKernelRuntimeKind::PackedNativeTrainingForward
    {
        let note = if config.inference_mode == LowBitInferenceMode::OfflinePack {
            "offline-pack inference takes precedence over the train-kernel mode".to_string()
        } else if !plan.capabilities.native_projection_supported {
            "train-kernel mode asked for, but no native projection kernels are available"
                .to_string()
        } else if let Some((module, format)) = native_training_blocker(config) {
            format!(
                "train-kernel mode asked for, but {module:?} uses weight format {} which the \
                 native training forward does not take",
                format.as_str()
            )
        } else {
            "train-kernel mode asked for".to_string()
        };
        text.push_str("\nnote: ");
        text.push_str(&note);
    }
    text
}

/// What one projection role runs on under a plan (for the CLI's per-op table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LowBitOpExplanation {
    /// `x_projection`, `y_projection` or `decoder_tail`.
    pub role: &'static str,
    /// Weight format the role is quantized to.
    pub weight_format: LowBitWeightFormat,
    /// Activation format the role's input is quantized to (`Fp16`: not quantized).
    pub activation_format: LowBitActivationFormat,
    /// The runtime under the plan.
    pub runtime: LowBitKernelRuntimeKind,
    /// Integer (`acc_i32 · w_scale · a_scale`) or float (`Σ (w·w_scale)·x`) math.
    pub math: &'static str,
}

/// One line per quantized projection role of `config`, under `plan`.
pub fn explain_ops(
    config: &LowBitQuantizationConfig,
    plan: &LowBitKernelPlan,
) -> Vec<LowBitOpExplanation> {
    let roles = LowBitProjectionPlan::from_config(config);
    [
        (
            "x_projection",
            roles.x_weight_format,
            roles.x_activation_format,
        ),
        (
            "y_projection",
            roles.y_weight_format,
            roles.y_activation_format,
        ),
        (
            "decoder_tail",
            roles.residual_weight_format,
            roles.residual_activation_format,
        ),
    ]
    .into_iter()
    .filter_map(|(role, weight, activation)| {
        let (weight_format, activation_format) = (weight?, activation?);
        let math = match (plan.runtime, activation_format) {
            (LowBitKernelRuntimeKind::FakeQuantReference, _) => "float (fake quant)",
            (_, LowBitActivationFormat::Fp16) => "float (dequantized weights)",
            _ => "integer (i32 accumulator)",
        };
        Some(LowBitOpExplanation {
            role,
            weight_format,
            activation_format,
            runtime: plan.runtime,
            math,
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offline() -> LowBitQuantizationConfig {
        LowBitQuantizationConfig {
            enable: true,
            inference_mode: LowBitInferenceMode::OfflinePack,
            ..Default::default()
        }
    }

    #[test]
    fn offline_pack_without_any_backend_falls_back_to_native_unavailable() {
        let plan = resolve_low_bit_kernel_plan_from_packed_static_ready(
            &offline(),
            true,
            LowBitKernelCapabilities::default(),
        );
        assert_eq!(plan.runtime, LowBitKernelRuntimeKind::FakeQuantReference);
        assert_eq!(
            plan.fallback_reason,
            Some(LowBitKernelFallbackReason::NativeLowBitUnavailable)
        );
        assert!(explain(&plan).contains("fake_quant_reference"));
    }

    #[test]
    fn autodiff_name_takes_training_forward_even_offline() {
        let config = LowBitQuantizationConfig {
            training_mode: LowBitTrainingMode::TrainKernelExp,
            target_modules: vec![LowBitTargetModule::DecoderY],
            ..offline()
        };
        let caps = LowBitKernelCapabilities::all_native();
        let plan =
            resolve_low_bit_kernel_plan_for_backend_name("Autodiff<Cuda>", &config, true, caps);
        assert_eq!(
            plan.runtime,
            LowBitKernelRuntimeKind::PackedNativeTrainingForward
        );
        let plan = resolve_low_bit_kernel_plan_for_backend_name("cuda", &config, true, caps);
        assert_eq!(plan.runtime, LowBitKernelRuntimeKind::PackedNativeInference);
        assert!(explain_with_config(&config, &plan).contains("takes precedence"));
    }

    #[test]
    fn probed_plan_reference_is_always_supported() {
        assert!(LowBitKernelCapabilities::probed().packed_reference_supported);
    }

    #[test]
    fn explain_ops_lists_targeted_roles() {
        let config = LowBitQuantizationConfig {
            target_modules: vec![LowBitTargetModule::Encoder],
            ..offline()
        };
        let plan = resolve_low_bit_kernel_plan_from_packed_static_ready(
            &config,
            true,
            LowBitKernelCapabilities::reference_only(),
        );
        let ops = explain_ops(&config, &plan);
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].role, "decoder_tail");
        assert_eq!(ops[0].runtime, LowBitKernelRuntimeKind::PackedReference);
    }
}
