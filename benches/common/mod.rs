//! Helpers shared by the bench executables (each bench file is its own crate and includes
//! this module with `mod common;`): the activation forms the projection benches feed, and
//! GPU-timestamp timing and device set-up for the wgpu groups.
#![allow(dead_code)]

use lowbit_kernels::config::LowBitActivationFormat as Fmt;
use lowbit_kernels::pack::pack_rows_i32_to_i8x4;
use lowbit_kernels::quant::{activation_code, activation_scale};

/// One activation tensor in every form a projection bench feeds it: the f32 values, their
/// int8 codes and i8x4 words at the int8 absmean scale, and uint8pos codes at theirs.
pub struct Activations {
    pub f32s: Vec<f32>,
    pub codes: Vec<i32>,
    pub words: Vec<u32>,
    pub scale: f32,
    pub codes_u8: Vec<i32>,
    pub scale_u8: f32,
}

impl Activations {
    /// `values` as `rows` rows of `k` (the dimension the words pack).
    pub fn new(values: Vec<f32>, rows: usize, k: usize) -> Self {
        let codes_at = |s: f32, fmt: Fmt| -> Vec<i32> {
            values.iter().map(|&v| activation_code(v, s, fmt)).collect()
        };
        let scale = activation_scale(&values, Fmt::Int8).unwrap().unwrap();
        let codes = codes_at(scale, Fmt::Int8);
        let words = pack_rows_i32_to_i8x4("bench", &codes, rows, k).unwrap();
        let scale_u8 = activation_scale(&values, Fmt::Uint8PosExp)
            .unwrap()
            .unwrap();
        let codes_u8 = codes_at(scale_u8, Fmt::Uint8PosExp);
        Self {
            f32s: values,
            codes,
            words,
            scale,
            codes_u8,
            scale_u8,
        }
    }
}

#[cfg(feature = "wgpu")]
use std::time::Duration;

/// Time of `iters` calls of `f`: GPU timestamps if `timed`, else wall time with a blocking
/// poll inside the timed region.
#[cfg(feature = "wgpu")]
pub fn wgpu_time(
    dev: &lowbit_kernels::backend::wgpu::WgpuDevice,
    timed: bool,
    iters: u64,
    mut f: impl FnMut(),
) -> Duration {
    if timed {
        dev.take_gpu_time().expect("gpu time");
        for _ in 0..iters {
            f();
        }
        dev.take_gpu_time().expect("gpu time").unwrap_or_default()
    } else {
        dev.synchronize().expect("poll");
        let t = std::time::Instant::now();
        for _ in 0..iters {
            f();
        }
        dev.synchronize().expect("poll");
        t.elapsed()
    }
}

/// Median seconds of one call of `f` over `runs` runs (after one warm-up call).
#[cfg(feature = "wgpu")]
pub fn wgpu_median_seconds(
    dev: &lowbit_kernels::backend::wgpu::WgpuDevice,
    timed: bool,
    runs: usize,
    mut f: impl FnMut(),
) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| wgpu_time(dev, timed, 1, &mut f).as_secs_f64())
        .collect();
    t.sort_by(f64::total_cmp);
    t[runs / 2]
}

/// The default wgpu device with GPU timing on where the adapter has timestamps, or `None`
/// (SKIPPED) without an adapter.
#[cfg(feature = "wgpu")]
pub fn wgpu_bench_device() -> Option<(lowbit_kernels::backend::wgpu::WgpuDevice, bool)> {
    use lowbit_kernels::backend::wgpu::{WgpuDevice, WgpuOptions};
    let dev = match WgpuDevice::new(WgpuOptions::default()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("SKIPPED: wgpu benches: {e}");
            return None;
        }
    };
    let timed = dev.start_timing().unwrap_or(false);
    println!(
        "wgpu bench device: {} dot4={:?} native_dot4={:?} timing={}",
        dev.name(),
        dev.dot4_mode(),
        dev.native_dot4(),
        if timed {
            "gpu timestamps"
        } else {
            "wall clock + poll"
        }
    );
    Some((dev, timed))
}

/// Whether the command-line filter (criterion's positional argument) selects `id`, so the
/// `WGPU-SUMMARY` medians (and a case's data) only run for selected cases. A plain filter
/// selects ids containing it (or ids it extends: a group name for a case filter); a filter
/// with regex syntax selects everything (criterion still applies it to the groups).
#[cfg(feature = "wgpu")]
pub fn wgpu_selected(id: &str) -> bool {
    const WITH_VALUE: [&str; 14] = [
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--save-baseline",
        "--baseline",
        "--load-baseline",
        "--plotting-backend",
        "--output-format",
        "--profile-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--color",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filters = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if WITH_VALUE.contains(&a.as_str()) {
            i += 2;
            continue;
        }
        if !a.starts_with('-') {
            filters.push(a.as_str());
        }
        i += 1;
    }
    filters.is_empty()
        || filters.iter().any(|f| {
            f.contains(|c: char| "^$.*+?()[]{}|\\".contains(c))
                || id.contains(f)
                || f.starts_with(id)
        })
}

/// Is a group named `prefix…` selected by the positional criterion filters (none = all)?
#[cfg(feature = "cuda")]
pub fn mma_selected(prefix: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty()
        || filters
            .iter()
            .any(|f| prefix.contains(f.as_str()) || f.starts_with(prefix))
}
