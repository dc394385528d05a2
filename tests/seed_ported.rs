//! The seed's 27 unit tests (`seed/000_ca958f8451867da6.txt`, `mod tests`), ported one for one:
//! the seed's name is in the comment above each test, the assertions are the seed's.
//!
//! Tests that leaned on a Burn backend's hard-coded capabilities test the plan as a pure
//! function of config + an explicitly built `LowBitKernelCapabilities` (and, where the result
//! is deterministic, of the real probe too).

use lowbit_kernels::artifact::{PackedWeightArtifact, PackedWeightEncoding};
use lowbit_kernels::backend;
use lowbit_kernels::config::{
    BitNetLowBitProtocol, LowBitActivationFormat, LowBitInferenceMode, LowBitQuantizationConfig,
    LowBitRhoConfig, LowBitSavedActivationConfig, LowBitSavedActivationMode, LowBitTargetModule,
    LowBitTrainingMode, LowBitWeightFormat, RhoCompressionConfig,
};
use lowbit_kernels::error::BackendKind;
use lowbit_kernels::estimate::{
    LowBitMemoryEstimateInput, build_low_bit_saved_activation_inventory,
    estimate_low_bit_memory_buckets,
};
use lowbit_kernels::fake_quant::{ScaleCache, fake_quantize_activation, fake_quantize_weight};
use lowbit_kernels::ops::rho::RhoShape;
use lowbit_kernels::pack_weight_artifact_from_format;
use lowbit_kernels::plan::{
    LowBitKernelCapabilities, LowBitKernelFallbackReason, LowBitKernelRuntimeKind,
    LowBitProjectionPlan, PackedLowBitProjectionArtifacts,
    backend_name_prefers_inference_cached_scale, backend_name_prefers_training_low_bit_runtime,
    resolve_low_bit_kernel_plan, resolve_low_bit_kernel_plan_for_backend_name,
    resolve_low_bit_kernel_plan_from_capabilities,
};
use lowbit_kernels::reference;
use lowbit_kernels::rho::{
    RhoCompressionQualityGate, RhoCompressionStats, pack_rho_block_state_with,
    pack_rho_int8_block_state_device_with, rho_compression_snapshot_passes_gate,
    rho_int8_device_state_from_parts, rho_snapshot_for, unpack_rho_block_state,
    unpack_rho_int8_block_state_device,
};
use lowbit_kernels::saved::{pack_saved_activation_state, unpack_saved_activation_state_as};

/// The Burn test backend's name in the seed (`NdArray<f32>`), for the backend-name variant.
const SEED_TEST_BACKEND: &str = "burn_ndarray::backend::NdArray<f32>";
const RHO_SHAPE: [usize; 4] = [1, 2, 8, 12];

#[derive(Clone, Copy, Debug)]
struct RhoRoundTripMetrics {
    mean_abs_error: f32,
    max_abs_error: f32,
    compression_ratio: f32,
}

fn synthetic_rho() -> Vec<f32> {
    (0..192)
        .map(|index| ((index as f32 * 0.17).sin() * 3.0) + (index % 7) as f32 * 0.1)
        .collect()
}

fn abs_errors(original: &[f32], restored: &[f32]) -> (f32, f32) {
    assert_eq!(original.len(), restored.len());
    let max_abs_error = original
        .iter()
        .zip(restored)
        .map(|(lhs, rhs)| (lhs - rhs).abs())
        .fold(0.0f32, f32::max);
    let mean_abs_error = original
        .iter()
        .zip(restored)
        .map(|(lhs, rhs)| (lhs - rhs).abs())
        .sum::<f32>()
        / original.len() as f32;
    (mean_abs_error, max_abs_error)
}

fn rho_round_trip_metrics(compression: RhoCompressionConfig) -> RhoRoundTripMetrics {
    let rho = synthetic_rho();
    let stats = RhoCompressionStats::new();
    let packed = pack_rho_block_state_with(&rho, RHO_SHAPE, compression, &stats).unwrap();
    let restored = unpack_rho_block_state(&packed).unwrap();
    let (mean_abs_error, max_abs_error) = abs_errors(&rho, &restored);
    RhoRoundTripMetrics {
        mean_abs_error,
        max_abs_error,
        compression_ratio: (packed.packed.len() as f32
            + (packed.scales.len() * core::mem::size_of::<f32>()) as f32)
            / (rho.len() * core::mem::size_of::<f32>()) as f32,
    }
}

/// Row-major `[m, k] @ [k, n]` in f32, summed in order of `k`.
fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
        }
    }
    out
}

fn assert_close(expected: &[f32], actual: &[f32], what: &str) {
    assert_eq!(expected.len(), actual.len());
    for (index, (lhs, rhs)) in expected.iter().zip(actual).enumerate() {
        assert!(
            (lhs - rhs).abs() <= 1.0e-6,
            "{what} mismatch at {index}: lhs={lhs} rhs={rhs}"
        );
    }
}

fn offline_pack() -> LowBitQuantizationConfig {
    LowBitQuantizationConfig {
        enable: true,
        inference_mode: LowBitInferenceMode::OfflinePack,
        ..Default::default()
    }
}

fn probed_native() -> bool {
    LowBitKernelCapabilities::probed().any_native_supported()
}

// seed: projection_plan_maps_repo_targets_to_runtime_roles
#[test]
fn projection_plan_maps_repo_targets_to_runtime_roles() {
    let plan = LowBitProjectionPlan::from_config(&LowBitQuantizationConfig {
        enable: true,
        weight_format: LowBitWeightFormat::Ternary158,
        act_format: LowBitActivationFormat::Int8,
        target_modules: vec![LowBitTargetModule::Encoder, LowBitTargetModule::DecoderY],
        decoder_x_mode: LowBitWeightFormat::Int8,
        encoder_mode: Some(LowBitWeightFormat::Int8),
        ..Default::default()
    });
    assert_eq!(plan.x_weight_format, None);
    assert_eq!(plan.y_weight_format, Some(LowBitWeightFormat::Ternary158));
    assert_eq!(plan.residual_weight_format, Some(LowBitWeightFormat::Int8));
    assert!(plan.is_enabled());
}

// seed: ternary_weight_fake_quant_preserves_finite_output
#[test]
fn ternary_weight_fake_quant_preserves_finite_output() {
    let values =
        fake_quantize_weight(&[0.1, -0.4, 0.8, -1.2], LowBitWeightFormat::Ternary158).unwrap();
    assert!(values.iter().all(|value| value.is_finite()));
}

// seed: positive_activation_fake_quant_stays_nonnegative
#[test]
fn positive_activation_fake_quant_stays_nonnegative() {
    let values =
        fake_quantize_activation(&[0.0, 0.2, 1.3, 4.7], LowBitActivationFormat::Uint8PosExp)
            .unwrap();
    assert!(values.iter().all(|value| *value >= 0.0));
}

// seed: training_activation_quantization_reuses_cached_scale_after_warmup
#[test]
fn training_activation_quantization_reuses_cached_scale_after_warmup() {
    let activations = [
        0.0, 0.2, 1.3, 4.7, -0.4, 0.9, -1.1, 0.3, 0.7, -0.8, 0.5, -0.2, 1.0, 0.6, -0.3, 0.4,
    ];
    let shape = [1, 1, 4, 4];
    let format = LowBitActivationFormat::Int8;
    let cache_kind = "unit_test_training_cache";
    let cache = ScaleCache::new();
    let (_, first_scale, first_hit) = cache
        .quantize_activation_codes(cache_kind, &activations, &shape, format)
        .expect("first quantization");
    let (_, second_scale, second_hit) = cache
        .quantize_activation_codes(cache_kind, &activations, &shape, format)
        .expect("second quantization");
    assert!(
        !first_hit,
        "first training quantization should warm the cache"
    );
    assert!(
        second_hit,
        "second training quantization should hit the cache"
    );
    assert!(
        (first_scale - second_scale).abs() <= 1.0e-8,
        "cached training scale drifted: first={first_scale} second={second_scale}"
    );
}

// seed: training_weight_quantization_reuses_cached_scale_after_warmup
#[test]
fn training_weight_quantization_reuses_cached_scale_after_warmup() {
    let weights = [
        -0.4, 0.1, 0.9, -1.2, 0.3, -0.7, 1.1, -0.2, 0.5, -0.6, 0.8, -0.9,
    ];
    let shape = [3, 4];
    let cache_kind = "unit_test_weight_cache";
    let cache = ScaleCache::new();
    let (_, first_scale, first_hit) = cache
        .quantize_weight_codes(cache_kind, &weights, &shape, LowBitWeightFormat::Ternary158)
        .expect("first weight quantization");
    let (_, second_scale, second_hit) = cache
        .quantize_weight_codes(cache_kind, &weights, &shape, LowBitWeightFormat::Ternary158)
        .expect("second weight quantization");
    assert!(
        !first_hit,
        "first weight quantization should warm the cache"
    );
    assert!(
        second_hit,
        "second weight quantization should hit the cache"
    );
    assert!(
        (first_scale - second_scale).abs() <= 1.0e-8,
        "cached weight scale drifted: first={first_scale} second={second_scale}"
    );
}

// seed: packed_lowrank_projection_reference_matches_fake_quant_matmul
#[test]
fn packed_lowrank_projection_reference_matches_fake_quant_matmul() {
    // input [1, 1, 3, 4], weight [1, 1, 4, 3] (artifact [1, 4, 3]).
    let input = [
        0.25, -0.75, 1.0, 0.5, -0.1, 0.2, 0.4, -0.6, 0.8, 0.3, -0.9, 0.7,
    ];
    let weight = [
        0.2, -0.7, 0.0, 1.1, -0.8, 0.6, 0.5, -0.3, 0.9, -1.2, 0.4, 0.1,
    ];
    let artifact =
        pack_weight_artifact_from_format(&weight, &[1, 4, 3], LowBitWeightFormat::Ternary158)
            .expect("packed artifact");
    let expected = matmul(
        &fake_quantize_activation(&input, LowBitActivationFormat::Int8).unwrap(),
        &fake_quantize_weight(&weight, LowBitWeightFormat::Ternary158).unwrap(),
        3,
        4,
        3,
    );
    let actual = reference::lowrank_projection(
        &input,
        [1, 1, 3, 4],
        &artifact,
        Some(LowBitActivationFormat::Int8),
        3,
    )
    .unwrap();
    assert_close(&expected, &actual, "packed low-rank projection");
}

// seed: packed_decoder_tail_reference_matches_dequantized_tail_projection
#[test]
fn packed_decoder_tail_reference_matches_dequantized_tail_projection() {
    // y_neuron [1, 2, 2, 3] = [B, H, T, L]; decoder [6, 3] = [H·L, D].
    let y_neuron = [0.5, 0.0, 1.0, 0.0, 0.2, 0.4, 0.8, 0.6, 0.3, 0.1, 0.0, 0.7];
    let decoder = [
        0.3, -0.1, 0.2, 0.7, -0.4, 0.6, 0.5, -0.2, 0.1, 0.8, -0.5, 0.4, 0.9, 0.2, -0.3, 0.0, 0.6,
        -0.7,
    ];
    let artifact =
        pack_weight_artifact_from_format(&decoder, &[6, 3], LowBitWeightFormat::Ternary158)
            .expect("packed decoder");
    let quantized_decoder = fake_quantize_weight(&decoder, LowBitWeightFormat::Ternary158).unwrap();
    // y.swap_dims(1, 2).reshape([T, H·L]).
    let (heads, time, latent) = (2, 2, 3);
    let mut swapped = Vec::with_capacity(y_neuron.len());
    for t in 0..time {
        for h in 0..heads {
            swapped.extend_from_slice(&y_neuron[(h * time + t) * latent..][..latent]);
        }
    }
    let expected = matmul(&swapped, &quantized_decoder, time, heads * latent, 3);
    let actual = reference::decoder_tail(&y_neuron, [1, 2, 2, 3], &artifact, None).unwrap();
    assert_close(&expected, &actual, "packed decoder tail");
}

// seed: rho_int8_block_round_trip_keeps_error_bounded
#[test]
fn rho_int8_block_round_trip_keeps_error_bounded() {
    let rho = synthetic_rho();
    let stats = RhoCompressionStats::new();
    let packed =
        pack_rho_block_state_with(&rho, RHO_SHAPE, RhoCompressionConfig::Int8BlockExp, &stats)
            .unwrap();
    let restored = unpack_rho_block_state(&packed).unwrap();
    let (mean_abs_error, max_abs_error) = abs_errors(&rho, &restored);
    let snapshot = rho_snapshot_for(
        &rho,
        &restored,
        packed.packed.len() as u64 + (packed.scales.len() * core::mem::size_of::<f32>()) as u64,
    )
    .unwrap();
    assert_eq!(packed.logical_shape, [1, 2, 8, 12]);
    assert!(
        rho_compression_snapshot_passes_gate(&snapshot, &RhoCompressionQualityGate::default()),
        "expected rho int8-block compression snapshot to pass default quality gate: {snapshot:?}"
    );
    assert!(
        mean_abs_error <= 0.02,
        "mean abs error too large: {mean_abs_error}"
    );
    assert!(
        max_abs_error <= 0.05,
        "max abs error too large: {max_abs_error}"
    );
    assert!(
        snapshot.compression_ratio().expect("compression ratio") < 0.5,
        "expected int8 block rho compression to beat dense fp32 storage"
    );
    // The handle the pack recorded into holds the same one-call snapshot.
    assert_eq!(stats.snapshot(), snapshot);
}

// seed: rho_int8_block_device_round_trip_keeps_error_bounded
#[test]
fn rho_int8_block_device_round_trip_keeps_error_bounded() {
    let rho: Vec<f32> = (0..192)
        .map(|index| ((index as f32 * 0.13).sin() * 2.5) + (index % 11) as f32 * 0.07)
        .collect();
    let stats = RhoCompressionStats::new();
    let packed = pack_rho_int8_block_state_device_with(&rho, RHO_SHAPE, &stats).unwrap();
    let restored = unpack_rho_int8_block_state_device(&packed).unwrap();
    let (mean_abs_error, max_abs_error) = abs_errors(&rho, &restored);
    let snapshot = rho_snapshot_for(&rho, &restored, packed.compressed_bytes()).unwrap();
    assert_eq!(packed.logical_shape, [1, 2, 8, 12]);
    assert!(mean_abs_error <= 0.02);
    assert!(max_abs_error <= 0.05);
    assert!(rho_compression_snapshot_passes_gate(
        &snapshot,
        &RhoCompressionQualityGate::default()
    ));
    // The CPU backend's device-layout pack gives the same words and scales.
    let cpu = backend::open(BackendKind::Cpu).unwrap();
    let shape = RhoShape::new(RHO_SHAPE).unwrap();
    let (words, scales) = cpu.rho_int8_pack(&shape, &rho).unwrap();
    let from_backend = rho_int8_device_state_from_parts(RHO_SHAPE, words, scales).unwrap();
    assert_eq!(from_backend, packed);
    assert_eq!(
        cpu.rho_int8_unpack(&shape, &packed.words, &packed.scales)
            .unwrap(),
        restored
    );
}

// seed: rho_binary_and_ternary_block_trade_accuracy_for_size
#[test]
fn rho_binary_and_ternary_block_trade_accuracy_for_size() {
    let int8 = rho_round_trip_metrics(RhoCompressionConfig::Int8BlockExp);
    let ternary = rho_round_trip_metrics(RhoCompressionConfig::TernaryBlockExp);
    let binary = rho_round_trip_metrics(RhoCompressionConfig::BinaryBlockExp);
    println!(
        "rho block tradeoff: int8 mean={:.5} max={:.5} ratio={:.5}; ternary mean={:.5} max={:.5} ratio={:.5}; binary mean={:.5} max={:.5} ratio={:.5}",
        int8.mean_abs_error,
        int8.max_abs_error,
        int8.compression_ratio,
        ternary.mean_abs_error,
        ternary.max_abs_error,
        ternary.compression_ratio,
        binary.mean_abs_error,
        binary.max_abs_error,
        binary.compression_ratio,
    );
    assert!(int8.mean_abs_error <= ternary.mean_abs_error);
    assert!(int8.mean_abs_error <= binary.mean_abs_error);
    assert!(int8.max_abs_error <= ternary.max_abs_error);
    assert!(int8.max_abs_error <= binary.max_abs_error);
    assert!(int8.compression_ratio >= ternary.compression_ratio);
    assert!(ternary.compression_ratio >= binary.compression_ratio);
}

// seed: low_bit_kernel_plan_uses_packed_reference_when_artifacts_exist
// (the seed's NdArray backend reported native support; here the capabilities are explicit)
#[test]
fn low_bit_kernel_plan_uses_packed_reference_when_artifacts_exist() {
    let artifact = PackedWeightArtifact {
        encoding: PackedWeightEncoding::Ternary2,
        logical_shape: vec![1, 4, 3],
        scale: 0.25,
        packed: vec![0u8; 3],
        len: 12,
    };
    artifact.validate().unwrap();
    let config = offline_pack();
    let artifacts = PackedLowBitProjectionArtifacts {
        x: Some(&artifact),
        ..Default::default()
    };
    // Native kernels available: packed native inference.
    let plan = resolve_low_bit_kernel_plan_from_capabilities(
        &config,
        artifacts,
        LowBitKernelCapabilities::all_native(),
    );
    assert_eq!(plan.runtime, LowBitKernelRuntimeKind::PackedNativeInference);
    assert_eq!(plan.fallback_reason, None);
    assert!(plan.capabilities.packed_reference_supported);
    assert!(plan.capabilities.native_projection_supported);
    // Only the packed reference: packed reference.
    let plan = resolve_low_bit_kernel_plan_from_capabilities(
        &config,
        artifacts,
        LowBitKernelCapabilities::reference_only(),
    );
    assert_eq!(plan.runtime, LowBitKernelRuntimeKind::PackedReference);
    assert_eq!(plan.fallback_reason, None);
    assert!(plan.capabilities.packed_reference_supported);
    assert!(!plan.capabilities.native_projection_supported);
    // The real probe picks one of the two, never a fallback.
    let plan = resolve_low_bit_kernel_plan(&config, artifacts);
    assert_eq!(plan.fallback_reason, None);
    assert_eq!(
        plan.runtime,
        if probed_native() {
            LowBitKernelRuntimeKind::PackedNativeInference
        } else {
            LowBitKernelRuntimeKind::PackedReference
        }
    );
}

// seed: low_bit_kernel_runtime_kind_has_stable_strings
#[test]
fn low_bit_kernel_runtime_kind_has_stable_strings() {
    assert_eq!(
        LowBitKernelRuntimeKind::FakeQuantReference.as_str(),
        "fake_quant_reference"
    );
    assert_eq!(
        LowBitKernelRuntimeKind::PackedReference.as_str(),
        "packed_reference"
    );
    assert_eq!(
        LowBitKernelRuntimeKind::PackedNativeInference.as_str(),
        "packed_native_inference"
    );
    assert_eq!(
        LowBitKernelRuntimeKind::PackedNativeTrainingForward.as_str(),
        "packed_native_training_forward"
    );
}

// seed: low_bit_backend_name_capabilities_default_to_reference_only
// (the seed hard-coded every capability to true for any backend name; here capabilities are
// explicit or probed, and a backend name alone never grants native support)
#[test]
fn low_bit_backend_name_capabilities_default_to_reference_only() {
    let reference_only = LowBitKernelCapabilities::reference_only();
    assert!(reference_only.packed_reference_supported);
    assert!(!reference_only.any_native_supported());
    let native = LowBitKernelCapabilities::all_native();
    assert!(native.packed_reference_supported);
    assert!(native.any_native_supported());
    let plan =
        resolve_low_bit_kernel_plan_for_backend_name("cuda", &offline_pack(), true, reference_only);
    assert_eq!(plan.runtime, LowBitKernelRuntimeKind::PackedReference);
    let plan = resolve_low_bit_kernel_plan_for_backend_name("cuda", &offline_pack(), true, native);
    assert_eq!(plan.runtime, LowBitKernelRuntimeKind::PackedNativeInference);
    let probed = LowBitKernelCapabilities::probed();
    assert!(probed.packed_reference_supported);
}

// seed: low_bit_kernel_plan_falls_back_safely_without_packed_artifacts
#[test]
fn low_bit_kernel_plan_falls_back_safely_without_packed_artifacts() {
    let config = offline_pack();
    for caps in [
        LowBitKernelCapabilities::all_native(),
        LowBitKernelCapabilities::reference_only(),
        LowBitKernelCapabilities::default(),
    ] {
        let plan = resolve_low_bit_kernel_plan_from_capabilities(
            &config,
            PackedLowBitProjectionArtifacts::default(),
            caps,
        );
        assert_eq!(plan.runtime, LowBitKernelRuntimeKind::FakeQuantReference);
        assert_eq!(
            plan.fallback_reason,
            Some(LowBitKernelFallbackReason::MissingPackedArtifacts)
        );
    }
    let plan = resolve_low_bit_kernel_plan(&config, PackedLowBitProjectionArtifacts::default());
    assert_eq!(plan.runtime, LowBitKernelRuntimeKind::FakeQuantReference);
    assert_eq!(
        plan.fallback_reason,
        Some(LowBitKernelFallbackReason::MissingPackedArtifacts)
    );
}

// seed: low_bit_kernel_plan_uses_native_training_forward_for_train_kernel_mode
#[test]
fn low_bit_kernel_plan_uses_native_training_forward_for_train_kernel_mode() {
    let config = LowBitQuantizationConfig {
        enable: true,
        training_mode: LowBitTrainingMode::TrainKernelExp,
        inference_mode: LowBitInferenceMode::RuntimeFakeQuant,
        target_modules: vec![LowBitTargetModule::DecoderY],
        ..Default::default()
    };
    let plan = resolve_low_bit_kernel_plan_for_backend_name(
        SEED_TEST_BACKEND,
        &config,
        false,
        LowBitKernelCapabilities::all_native(),
    );
    assert_eq!(
        plan.runtime,
        LowBitKernelRuntimeKind::PackedNativeTrainingForward
    );
    assert!(plan.capabilities.native_projection_supported);
    // Without native projection kernels the training forward stays fake-quant.
    let plan = resolve_low_bit_kernel_plan_for_backend_name(
        SEED_TEST_BACKEND,
        &config,
        false,
        LowBitKernelCapabilities::reference_only(),
    );
    assert_eq!(plan.runtime, LowBitKernelRuntimeKind::FakeQuantReference);
}

// seed: low_bit_kernel_plan_uses_native_training_forward_for_tri_matrix_hybrid_recipe
#[test]
fn low_bit_kernel_plan_uses_native_training_forward_for_tri_matrix_hybrid_recipe() {
    let config = LowBitQuantizationConfig {
        enable: true,
        training_mode: LowBitTrainingMode::TrainKernelExp,
        inference_mode: LowBitInferenceMode::RuntimeFakeQuant,
        weight_format: LowBitWeightFormat::Ternary158,
        target_modules: vec![
            LowBitTargetModule::Encoder,
            LowBitTargetModule::DecoderX,
            LowBitTargetModule::DecoderY,
        ],
        decoder_x_mode: LowBitWeightFormat::Sign1,
        encoder_mode: Some(LowBitWeightFormat::Int8),
        ..Default::default()
    };
    let plan = resolve_low_bit_kernel_plan_from_capabilities(
        &config,
        PackedLowBitProjectionArtifacts::default(),
        LowBitKernelCapabilities::all_native(),
    );
    assert_eq!(
        plan.runtime,
        LowBitKernelRuntimeKind::PackedNativeTrainingForward
    );
}

// seed: low_bit_kernel_plan_avoids_native_training_forward_when_decoder_x_ternary_is_targeted
#[test]
fn low_bit_kernel_plan_avoids_native_training_forward_when_decoder_x_ternary_is_targeted() {
    let config = LowBitQuantizationConfig {
        enable: true,
        training_mode: LowBitTrainingMode::TrainKernelExp,
        inference_mode: LowBitInferenceMode::RuntimeFakeQuant,
        weight_format: LowBitWeightFormat::Ternary158,
        target_modules: vec![LowBitTargetModule::DecoderX, LowBitTargetModule::DecoderY],
        decoder_x_mode: LowBitWeightFormat::Ternary158,
        ..Default::default()
    };
    let plan = resolve_low_bit_kernel_plan_from_capabilities(
        &config,
        PackedLowBitProjectionArtifacts::default(),
        LowBitKernelCapabilities::all_native(),
    );
    assert_eq!(plan.runtime, LowBitKernelRuntimeKind::FakeQuantReference);
}

// seed: autodiff_backend_name_prefers_training_runtime
#[test]
fn autodiff_backend_name_prefers_training_runtime() {
    assert!(backend_name_prefers_training_low_bit_runtime(
        "burn_autodiff::backend::Autodiff<burn_ndarray::backend::NdArray<f32>>"
    ));
    assert!(!backend_name_prefers_training_low_bit_runtime(
        "burn_ndarray::backend::NdArray<f32>"
    ));
}

// seed: wgpu_backend_name_prefers_inference_cached_scale
#[test]
fn wgpu_backend_name_prefers_inference_cached_scale() {
    assert!(backend_name_prefers_inference_cached_scale(
        "burn_wgpu::backend::Wgpu<f32>"
    ));
    assert!(backend_name_prefers_inference_cached_scale(
        "burn_cubecl::backend::CubeBackend<burn_wgpu::WgpuRuntime, f32, i32, u32>"
    ));
    assert!(!backend_name_prefers_inference_cached_scale(
        "burn_ndarray::backend::NdArray<f32>"
    ));
}

// seed: low_bit_memory_estimate_is_nonzero_for_enabled_quantized_bdh
#[test]
fn low_bit_memory_estimate_is_nonzero_for_enabled_quantized_bdh() {
    let estimate = estimate_low_bit_memory_buckets(
        &LowBitQuantizationConfig {
            enable: true,
            protocol: BitNetLowBitProtocol::BitnetB158,
            training_mode: LowBitTrainingMode::QatSte,
            inference_mode: LowBitInferenceMode::OfflinePack,
            weight_format: LowBitWeightFormat::Ternary158,
            act_format: LowBitActivationFormat::Int8,
            target_modules: vec![
                LowBitTargetModule::Encoder,
                LowBitTargetModule::DecoderX,
                LowBitTargetModule::DecoderY,
            ],
            decoder_x_mode: LowBitWeightFormat::Ternary158,
            ..Default::default()
        },
        &LowBitRhoConfig::default(),
        LowBitMemoryEstimateInput {
            batch_size: 4,
            time_steps: 128,
            n_layer: 4,
            n_head: 4,
            n_embd: 256,
            latent_total: 32768,
        },
    );
    assert!(estimate.master_weight_bytes > 0);
    assert!(estimate.execution_weight_bytes > 0);
    assert!(estimate.activation_shell_bytes > 0);
    assert!(estimate.rho_state_bytes > 0);
    assert!(estimate.estimated_total_bytes() >= estimate.master_weight_bytes);
}

fn encoder_only_quant() -> LowBitQuantizationConfig {
    LowBitQuantizationConfig {
        enable: true,
        protocol: BitNetLowBitProtocol::BitnetB158,
        target_modules: vec![LowBitTargetModule::Encoder],
        ..Default::default()
    }
}

const RHO_ESTIMATE_INPUT: LowBitMemoryEstimateInput = LowBitMemoryEstimateInput {
    batch_size: 2,
    time_steps: 64,
    n_layer: 2,
    n_head: 4,
    n_embd: 128,
    latent_total: 8192,
};

fn rho_with(compression: RhoCompressionConfig) -> LowBitRhoConfig {
    LowBitRhoConfig {
        compression,
        ..Default::default()
    }
}

// seed: rho_int8_block_estimate_reduces_rho_bucket_vs_bf16
#[test]
fn rho_int8_block_estimate_reduces_rho_bucket_vs_bf16() {
    let quant = encoder_only_quant();
    let bf16 =
        estimate_low_bit_memory_buckets(&quant, &LowBitRhoConfig::default(), RHO_ESTIMATE_INPUT);
    let compressed = estimate_low_bit_memory_buckets(
        &quant,
        &rho_with(RhoCompressionConfig::Int8BlockExp),
        RHO_ESTIMATE_INPUT,
    );
    assert!(compressed.rho_state_bytes < bf16.rho_state_bytes);
}

// seed: rho_binary_and_ternary_block_estimates_reduce_rho_bucket_beyond_int8
#[test]
fn rho_binary_and_ternary_block_estimates_reduce_rho_bucket_beyond_int8() {
    let quant = encoder_only_quant();
    let estimate = |c| estimate_low_bit_memory_buckets(&quant, &rho_with(c), RHO_ESTIMATE_INPUT);
    let int8 = estimate(RhoCompressionConfig::Int8BlockExp);
    let ternary = estimate(RhoCompressionConfig::TernaryBlockExp);
    let binary = estimate(RhoCompressionConfig::BinaryBlockExp);
    assert!(ternary.rho_state_bytes < int8.rho_state_bytes);
    assert!(binary.rho_state_bytes < ternary.rho_state_bytes);
}

// seed: saved_activation_estimate_is_nonzero_when_enabled
#[test]
fn saved_activation_estimate_is_nonzero_when_enabled() {
    let estimate = estimate_low_bit_memory_buckets(
        &LowBitQuantizationConfig {
            enable: true,
            protocol: BitNetLowBitProtocol::BitnetB158,
            training_mode: LowBitTrainingMode::TrainKernelExp,
            target_modules: vec![LowBitTargetModule::Encoder],
            saved_activations: LowBitSavedActivationConfig {
                mode: LowBitSavedActivationMode::QuantizedCacheExp,
                format: LowBitActivationFormat::Int8,
            },
            ..Default::default()
        },
        &LowBitRhoConfig::default(),
        LowBitMemoryEstimateInput {
            batch_size: 4,
            time_steps: 128,
            n_layer: 6,
            n_head: 4,
            n_embd: 192,
            latent_total: 12288,
        },
    );
    assert!(estimate.saved_activation_bytes > 0);
}

// seed: saved_activation_recompute_estimate_reduces_resident_bytes
#[test]
fn saved_activation_recompute_estimate_reduces_resident_bytes() {
    let input = LowBitMemoryEstimateInput {
        batch_size: 4,
        time_steps: 256,
        n_layer: 8,
        n_head: 4,
        n_embd: 256,
        latent_total: 32768,
    };
    let mut quant = LowBitQuantizationConfig {
        enable: true,
        protocol: BitNetLowBitProtocol::BitnetB158,
        training_mode: LowBitTrainingMode::TrainKernelExp,
        target_modules: vec![LowBitTargetModule::Encoder, LowBitTargetModule::DecoderY],
        ..Default::default()
    };
    quant.saved_activations = LowBitSavedActivationConfig {
        mode: LowBitSavedActivationMode::QuantizedCacheExp,
        format: LowBitActivationFormat::Int8,
    };
    let cached = estimate_low_bit_memory_buckets(&quant, &LowBitRhoConfig::default(), input);
    quant.saved_activations.mode = LowBitSavedActivationMode::QuantizedCacheRecomputeExp;
    let recompute = estimate_low_bit_memory_buckets(&quant, &LowBitRhoConfig::default(), input);
    assert!(cached.saved_activation_bytes > recompute.saved_activation_bytes);
    assert!(recompute.workspace_bytes > cached.workspace_bytes);
}

// seed: saved_activation_inventory_reports_expected_training_tensors
#[test]
fn saved_activation_inventory_reports_expected_training_tensors() {
    let inventory = build_low_bit_saved_activation_inventory(
        &LowBitQuantizationConfig {
            enable: true,
            protocol: BitNetLowBitProtocol::BitnetB158,
            training_mode: LowBitTrainingMode::TrainKernelExp,
            target_modules: vec![
                LowBitTargetModule::Encoder,
                LowBitTargetModule::DecoderX,
                LowBitTargetModule::DecoderY,
            ],
            saved_activations: LowBitSavedActivationConfig {
                mode: LowBitSavedActivationMode::QuantizedCacheRecomputeExp,
                format: LowBitActivationFormat::Int8,
            },
            ..Default::default()
        },
        LowBitMemoryEstimateInput {
            batch_size: 2,
            time_steps: 64,
            n_layer: 4,
            n_head: 4,
            n_embd: 128,
            latent_total: 8192,
        },
    )
    .expect("expected saved activation inventory");
    assert!(inventory.requires_rho_window_anchor);
    assert_eq!(inventory.tensors.len(), 3);
    assert_eq!(inventory.tensors[0].name, "x_projection_input");
    assert_eq!(inventory.tensors[1].name, "y_projection_input");
    assert_eq!(inventory.tensors[2].name, "residual_tail_input");
    assert!(
        inventory
            .tensors
            .iter()
            .all(|entry| entry.estimated_bytes > 0)
    );
}

// seed: saved_activation_cache_int8_round_trip_keeps_error_bounded
#[test]
fn saved_activation_cache_int8_round_trip_keeps_error_bounded() {
    let tensor = [
        -1.5, -0.25, 0.0, 0.4, 0.9, 1.2, -0.8, 0.15, 0.33, -0.6, 0.75, 1.8,
    ];
    let packed =
        pack_saved_activation_state(&tensor, &[1, 2, 2, 3], LowBitActivationFormat::Int8).unwrap();
    let (shape, restored) = unpack_saved_activation_state_as::<4>(&packed).unwrap();
    assert_eq!(shape, [1, 2, 2, 3]);
    let max_abs = tensor
        .iter()
        .zip(restored.iter())
        .map(|(lhs, rhs)| (lhs - rhs).abs())
        .fold(0.0f32, f32::max);
    assert!(packed.estimated_bytes > 0);
    assert!(max_abs <= 0.4, "max_abs={max_abs}");
}

// seed: saved_activation_cache_uint8_positive_stays_nonnegative
#[test]
fn saved_activation_cache_uint8_positive_stays_nonnegative() {
    let tensor = [-1.0, 0.0, 0.5, 1.0];
    let packed =
        pack_saved_activation_state(&tensor, &[1, 1, 2, 2], LowBitActivationFormat::Uint8PosExp)
            .unwrap();
    let (_, restored) = unpack_saved_activation_state_as::<4>(&packed).unwrap();
    assert!(restored.iter().all(|value| *value >= 0.0));
}
