//! Per-projection timing counters (the seed's native projection profile): explicit
//! [`ProjectionProfiler`] handles, plus the seed's global functions over process-wide
//! handles for the low-rank projection, the decoder tail and training quantization.
//!
//! Recording is off unless enabled by [`ProjectionProfiler::set_enabled`] /
//! [`set_global_profiling_enabled`] or by the environment variable `LOWBIT_PROFILE=1`
//! (read once per process).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Whether `LOWBIT_PROFILE=1` was set when first asked (read once per process).
pub fn profiling_enabled_by_env() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    *ENV.get_or_init(|| std::env::var("LOWBIT_PROFILE").is_ok_and(|v| v.trim() == "1"))
}

/// Accumulated counters of one projection kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LowBitNativeProjectionProfileSnapshot {
    /// Projection calls recorded.
    pub calls: u64,
    /// Wall time of the calls, summed (ns).
    pub total_ns: u128,
    /// Time quantizing activations to i32 codes, summed (ns).
    pub quantize_ns: u128,
    /// Time quantizing activations and packing them into i8x4 words, summed (ns).
    pub prepacked_quantize_ns: u128,
    /// Time in the raw CUDA integer kernels, summed (ns).
    pub raw_cuda_ns: u128,
    /// Time in the fused kernels (WGSL packed dot, fused from-f32), summed (ns).
    pub fused_ns: u128,
    /// Time in the float reference on fake-quantized input, summed (ns).
    pub reference_ns: u128,
    /// Calls whose activation scale was computed (not cached).
    pub dynamic_scale_calls: u64,
    /// Calls that reused a cached activation scale.
    pub cached_scale_hits: u64,
}

/// The timings of one projection call, as recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProjectionSample {
    /// Wall time of the whole call (ns).
    pub total_ns: u128,
    /// Time quantizing activations to i32 codes (ns).
    pub quantize_ns: u128,
    /// Time quantizing activations and packing them into i8x4 words (ns).
    pub prepacked_quantize_ns: u128,
    /// Time in the raw CUDA integer kernels (ns).
    pub raw_cuda_ns: u128,
    /// Time in the fused kernels (WGSL packed dot, fused from-f32) (ns).
    pub fused_ns: u128,
    /// Time in the float reference on fake-quantized input (ns).
    pub reference_ns: u128,
    /// Whether the activation scale came from a cache (else it was computed).
    pub used_cached_scale: bool,
}

impl LowBitNativeProjectionProfileSnapshot {
    fn add(&mut self, s: &ProjectionSample) {
        self.calls = self.calls.saturating_add(1);
        self.total_ns = self.total_ns.saturating_add(s.total_ns);
        self.quantize_ns = self.quantize_ns.saturating_add(s.quantize_ns);
        self.prepacked_quantize_ns = self
            .prepacked_quantize_ns
            .saturating_add(s.prepacked_quantize_ns);
        self.raw_cuda_ns = self.raw_cuda_ns.saturating_add(s.raw_cuda_ns);
        self.fused_ns = self.fused_ns.saturating_add(s.fused_ns);
        self.reference_ns = self.reference_ns.saturating_add(s.reference_ns);
        if s.used_cached_scale {
            self.cached_scale_hits = self.cached_scale_hits.saturating_add(1);
        } else {
            self.dynamic_scale_calls = self.dynamic_scale_calls.saturating_add(1);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A thread-safe projection profile.
#[derive(Debug)]
pub struct ProjectionProfiler {
    enabled: AtomicBool,
    state: Mutex<LowBitNativeProjectionProfileSnapshot>,
}

impl Default for ProjectionProfiler {
    fn default() -> Self {
        Self::new()
    }
}

impl ProjectionProfiler {
    /// A profiler enabled iff `LOWBIT_PROFILE=1`.
    pub fn new() -> Self {
        Self::with_enabled(profiling_enabled_by_env())
    }

    /// A profiler that records iff `enabled` (`LOWBIT_PROFILE` is not read).
    pub fn with_enabled(enabled: bool) -> Self {
        Self {
            enabled: AtomicBool::new(enabled),
            state: Mutex::new(LowBitNativeProjectionProfileSnapshot::default()),
        }
    }

    /// Whether [`record`](Self::record) currently records.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Turns recording on or off (counters already recorded are kept).
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Adds one call (no-op while disabled).
    pub fn record(&self, sample: ProjectionSample) {
        if self.is_enabled() {
            lock(&self.state).add(&sample);
        }
    }

    /// A copy of the counters so far.
    pub fn snapshot(&self) -> LowBitNativeProjectionProfileSnapshot {
        *lock(&self.state)
    }

    /// Zeroes the counters (the enabled flag is unchanged).
    pub fn reset(&self) {
        *lock(&self.state) = LowBitNativeProjectionProfileSnapshot::default();
    }
}

/// Training-time quantization timings (the seed's `LowBitTrainingQuantizeProfileSnapshot`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LowBitTrainingQuantizeProfileSnapshot {
    /// Activation quantizations in the low-rank training projection's direct path.
    pub lowrank_direct_calls: u64,
    /// Summed time of the low-rank direct-path quantizations (ns).
    pub lowrank_direct_total_ns: u128,
    /// Activation quantizations in the low-rank training projection's fallback path.
    pub lowrank_fallback_calls: u64,
    /// Summed time of the low-rank fallback-path quantizations (ns).
    pub lowrank_fallback_total_ns: u128,
    /// Activation quantizations in the decoder tail training projection.
    pub decoder_tail_calls: u64,
    /// Summed time of the decoder tail quantizations (ns).
    pub decoder_tail_total_ns: u128,
}

/// Which training quantization stage a timing belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrainingQuantizeStage {
    /// Low-rank projection, direct path (weight codes and scale stay on the device).
    LowrankDirect,
    /// Low-rank projection, fallback path (weight scale taken on the host).
    LowrankFallback,
    /// Decoder tail projection.
    DecoderTail,
}

/// A thread-safe training quantization profile.
#[derive(Debug)]
pub struct TrainingQuantizeProfiler {
    enabled: AtomicBool,
    state: Mutex<LowBitTrainingQuantizeProfileSnapshot>,
}

impl Default for TrainingQuantizeProfiler {
    fn default() -> Self {
        Self::new()
    }
}

impl TrainingQuantizeProfiler {
    /// A profiler enabled iff `LOWBIT_PROFILE=1`.
    pub fn new() -> Self {
        Self::with_enabled(profiling_enabled_by_env())
    }

    /// A profiler that records iff `enabled` (`LOWBIT_PROFILE` is not read).
    pub fn with_enabled(enabled: bool) -> Self {
        Self {
            enabled: AtomicBool::new(enabled),
            state: Mutex::new(LowBitTrainingQuantizeProfileSnapshot::default()),
        }
    }

    /// Whether [`record`](Self::record) currently records.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Turns recording on or off (counters already recorded are kept).
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Adds one timing (no-op while disabled).
    pub fn record(&self, stage: TrainingQuantizeStage, elapsed_ns: u128) {
        if !self.is_enabled() {
            return;
        }
        let mut guard = lock(&self.state);
        let p = &mut *guard;
        let (calls, total) = match stage {
            TrainingQuantizeStage::LowrankDirect => {
                (&mut p.lowrank_direct_calls, &mut p.lowrank_direct_total_ns)
            }
            TrainingQuantizeStage::LowrankFallback => (
                &mut p.lowrank_fallback_calls,
                &mut p.lowrank_fallback_total_ns,
            ),
            TrainingQuantizeStage::DecoderTail => {
                (&mut p.decoder_tail_calls, &mut p.decoder_tail_total_ns)
            }
        };
        *calls = calls.saturating_add(1);
        *total = total.saturating_add(elapsed_ns);
    }

    /// A copy of the counters so far.
    pub fn snapshot(&self) -> LowBitTrainingQuantizeProfileSnapshot {
        *lock(&self.state)
    }

    /// Zeroes the counters (the enabled flag is unchanged).
    pub fn reset(&self) {
        *lock(&self.state) = LowBitTrainingQuantizeProfileSnapshot::default();
    }
}

/// The process-wide low-rank projection profiler.
pub fn lowrank_profiler() -> &'static ProjectionProfiler {
    static P: OnceLock<ProjectionProfiler> = OnceLock::new();
    P.get_or_init(ProjectionProfiler::new)
}

/// The process-wide decoder tail profiler.
pub fn decoder_tail_profiler() -> &'static ProjectionProfiler {
    static P: OnceLock<ProjectionProfiler> = OnceLock::new();
    P.get_or_init(ProjectionProfiler::new)
}

/// The process-wide training quantization profiler.
pub fn training_quantize_profiler() -> &'static TrainingQuantizeProfiler {
    static P: OnceLock<TrainingQuantizeProfiler> = OnceLock::new();
    P.get_or_init(TrainingQuantizeProfiler::new)
}

/// Enables or disables all process-wide profilers.
pub fn set_global_profiling_enabled(enabled: bool) {
    lowrank_profiler().set_enabled(enabled);
    decoder_tail_profiler().set_enabled(enabled);
    training_quantize_profiler().set_enabled(enabled);
}

/// Resets all process-wide profilers.
pub fn low_bit_native_projection_profile_reset() {
    lowrank_profiler().reset();
    decoder_tail_profiler().reset();
    training_quantize_profiler().reset();
}

/// The process-wide low-rank projection counters ([`lowrank_profiler`]).
pub fn low_bit_native_lowrank_profile_snapshot() -> LowBitNativeProjectionProfileSnapshot {
    lowrank_profiler().snapshot()
}

/// The process-wide decoder tail counters ([`decoder_tail_profiler`]).
pub fn low_bit_native_decoder_tail_profile_snapshot() -> LowBitNativeProjectionProfileSnapshot {
    decoder_tail_profiler().snapshot()
}

/// The process-wide training quantization counters ([`training_quantize_profiler`]).
pub fn low_bit_training_quantize_profile_snapshot() -> LowBitTrainingQuantizeProfileSnapshot {
    training_quantize_profiler().snapshot()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_when_enabled() {
        let p = ProjectionProfiler::with_enabled(false);
        p.record(ProjectionSample {
            total_ns: 10,
            ..Default::default()
        });
        assert_eq!(p.snapshot().calls, 0);
        p.set_enabled(true);
        p.record(ProjectionSample {
            total_ns: 10,
            fused_ns: 4,
            ..Default::default()
        });
        p.record(ProjectionSample {
            total_ns: 5,
            used_cached_scale: true,
            ..Default::default()
        });
        let s = p.snapshot();
        assert_eq!((s.calls, s.total_ns, s.fused_ns), (2, 15, 4));
        assert_eq!((s.dynamic_scale_calls, s.cached_scale_hits), (1, 1));
        p.reset();
        assert_eq!(
            p.snapshot(),
            LowBitNativeProjectionProfileSnapshot::default()
        );
    }

    #[test]
    fn training_quantize_stages() {
        let p = TrainingQuantizeProfiler::with_enabled(true);
        p.record(TrainingQuantizeStage::LowrankDirect, 3);
        p.record(TrainingQuantizeStage::DecoderTail, 7);
        p.record(TrainingQuantizeStage::DecoderTail, 1);
        let s = p.snapshot();
        assert_eq!((s.lowrank_direct_calls, s.lowrank_direct_total_ns), (1, 3));
        assert_eq!((s.decoder_tail_calls, s.decoder_tail_total_ns), (2, 8));
        assert_eq!(s.lowrank_fallback_calls, 0);
    }
}
