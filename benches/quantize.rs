//! Activation quantize (+ pack to i8x4) benches (rho block compression: `benches/rho.rs`).
//!
//! Groups are `{backend}/{op}/{shape}`; throughput is in bytes of f32 input read. The naive
//! `reference/quantize/...` group (the reference quantizer + packer) measures the speedup.
//! GPU backends add their own `fn {backend}_benches` next to `cpu_benches` and list it in
//! `criterion_group!`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lowbit_kernels::Backend;
use lowbit_kernels::backend::cpu::CpuBackend;
use lowbit_kernels::config::LowBitActivationFormat as Fmt;
use lowbit_kernels::ops::ScaleSource;
use lowbit_kernels::ops::quantize::QuantizeShape;
use lowbit_kernels::pack::pack_rows_i32_to_i8x4;
use lowbit_kernels::quant::quantize_activations;
use lowbit_kernels::testing::Rng;

mod common;
#[cfg(feature = "wgpu")]
use common::{wgpu_bench_device, wgpu_median_seconds, wgpu_selected, wgpu_time};

/// `(name, rows, k)`: the low-rank input `x[M, D]` and the decoder input `y[H·M, N]` of the
/// BDH shape M=2048, H=4, D=256, N=8192.
pub const SHAPES: [(&str, usize, usize); 2] = [
    ("x_m2048_d256", 2048, 256),
    ("y_m2048_h4_n8192", 4 * 2048, 8192),
];

fn group_config(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
}

fn cpu_benches(c: &mut Criterion) {
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(9);
    for (name, rows, k) in SHAPES {
        let shape = QuantizeShape::new(rows, k).unwrap();
        let x = rng.normals(shape.len(), 1.0);
        let mut words = vec![0u32; shape.words_len()];
        let mut g = c.benchmark_group(format!("cpu/quantize/{name}"));
        g.throughput(Throughput::Bytes(4 * shape.len() as u64));
        group_config(&mut g);
        g.bench_function("pack_compute_int8", |b| {
            b.iter(|| {
                cpu.quantize_pack_into(
                    black_box(&x),
                    shape,
                    Fmt::Int8,
                    ScaleSource::Compute,
                    &mut words,
                )
                .unwrap()
            })
        });
        g.bench_function("pack_param_int8", |b| {
            b.iter(|| {
                cpu.quantize_pack_into(
                    black_box(&x),
                    shape,
                    Fmt::Int8,
                    ScaleSource::Param(0.02),
                    &mut words,
                )
                .unwrap()
            })
        });
        g.bench_function("codes_compute_uint8pos", |b| {
            b.iter(|| {
                cpu.quantize_codes(black_box(&x), Fmt::Uint8PosExp, ScaleSource::Compute)
                    .unwrap()
            })
        });
        g.finish();
    }
}

/// The reference quantizer (scale + codes, then the i8x4 packer) on the small shape.
fn reference_benches(c: &mut Criterion) {
    let mut rng = Rng::new(9);
    let (name, rows, k) = SHAPES[0];
    let x = rng.normals(rows * k, 1.0);
    let mut g = c.benchmark_group(format!("reference/quantize/{name}"));
    g.throughput(Throughput::Bytes(4 * (rows * k) as u64));
    group_config(&mut g);
    g.bench_function("pack_compute_int8", |b| {
        b.iter(|| {
            let q = quantize_activations(black_box(&x), Fmt::Int8).unwrap();
            pack_rows_i32_to_i8x4("bench", &q.codes_i32(), rows, k).unwrap()
        })
    });
    g.finish();
}

/// CUDA quantize + pack (scale computed on the device), timed with
/// CUDA events; throughput in bytes of f32 input read. One `CUDA-SUMMARY` line per case.
#[cfg(feature = "cuda")]
fn cuda_benches(c: &mut Criterion) {
    use lowbit_kernels::backend::cuda::microbench;
    use lowbit_kernels::backend::cuda::{CudaDevice, DeviceScale};

    let dev = match CudaDevice::new(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("SKIPPED: cuda benches: {e}");
            return;
        }
    };
    let mut rng = Rng::new(9);
    for (name, rows, k) in SHAPES {
        let shape = QuantizeShape::new(rows, k).unwrap();
        let x = dev.upload(&rng.normals(shape.len(), 1.0)).unwrap();
        let mut scale = dev.upload(&[0.0f32]).unwrap();
        let mut words = dev.alloc_zeros::<u32>(shape.words_len()).unwrap();
        let mut run = || {
            dev.quantize_pack_i8x4(
                &x,
                shape,
                Fmt::Int8,
                DeviceScale::Compute(&mut scale),
                &mut words,
            )
        };
        let bytes = 4 * shape.len() as u64;
        let secs = microbench::median_seconds(&dev, 20, &mut run).unwrap();
        println!(
            "CUDA-SUMMARY cuda/quantize/{name} pack_compute_int8 time_us={:.2} input_gbps={:.0}",
            secs * 1e6,
            bytes as f64 / secs / 1e9
        );
        let mut g = c.benchmark_group(format!("cuda/quantize/{name}"));
        g.throughput(Throughput::Bytes(bytes));
        group_config(&mut g);
        g.bench_function("pack_compute_int8", |b| {
            b.iter_custom(|iters| microbench::time_events(&dev, iters, &mut run).unwrap())
        });
        g.finish();
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_benches(_: &mut Criterion) {}

/// wgpu (WGSL) quantize (+ pack) at the BDH shapes, device-resident,
/// timed with GPU timestamps where the adapter has them (else wall time + blocking poll);
/// throughput in bytes of f32 read. One `WGPU-SUMMARY` line per case (median of 10 runs).
#[cfg(feature = "wgpu")]
fn wgpu_benches(c: &mut Criterion) {
    use lowbit_kernels::backend::wgpu::DeviceScale;

    let Some((dev, timed)) = wgpu_bench_device() else {
        return;
    };
    const VARIANTS: [&str; 4] = [
        "pack_compute_int8",
        "pack_param_int8",
        "scale_int8",
        "codes_compute_uint8pos",
    ];
    let mut rng = Rng::new(14);
    let summary = |name: &str, variant: &str, secs: f64, bytes: u64| {
        println!(
            "WGPU-SUMMARY {name}/{variant}: {:.3} ms, {:.1} GB/s of f32 read, {}",
            secs * 1e3,
            bytes as f64 / secs / 1e9,
            dev.name()
        );
    };
    for (name, rows, k) in SHAPES {
        let shape = QuantizeShape::new(rows, k).unwrap();
        let name = format!("wgpu/quantize/{name}");
        if !VARIANTS
            .iter()
            .any(|v| wgpu_selected(&format!("{name}/{v}")))
        {
            continue;
        }
        let bytes = 4 * shape.len() as u64;
        let bufs = (|| {
            Ok::<_, lowbit_kernels::LowbitError>((
                dev.upload(&rng.normals(shape.len(), 1.0))?,
                dev.alloc::<u32>(shape.words_len())?,
                dev.alloc::<i32>(shape.len())?,
                dev.alloc::<f32>(1)?,
            ))
        })();
        let (x, words, codes, scale) = match bufs {
            Ok(b) => b,
            Err(e) => {
                eprintln!("SKIPPED: {name}: {e}");
                continue;
            }
        };
        let run = |variant: &str| match variant {
            "pack_compute_int8" => dev.quantize_pack_i8x4_into(
                &x,
                shape,
                Fmt::Int8,
                DeviceScale::Compute(&scale),
                &words,
            ),
            "pack_param_int8" => {
                dev.quantize_pack_i8x4_into(&x, shape, Fmt::Int8, DeviceScale::Host(0.02), &words)
            }
            "scale_int8" => dev.activation_scale_into(&x, Fmt::Int8, &scale),
            _ => {
                dev.quantize_codes_into(&x, Fmt::Uint8PosExp, DeviceScale::Compute(&scale), &codes)
            }
        };
        let mut g = c.benchmark_group(&name);
        g.throughput(Throughput::Bytes(bytes));
        group_config(&mut g);
        for variant in VARIANTS {
            if let Err(e) = run(variant) {
                eprintln!("SKIPPED: {name}/{variant}: {e}");
                continue;
            }
            if wgpu_selected(&format!("{name}/{variant}")) {
                let secs = wgpu_median_seconds(&dev, timed, 10, || run(variant).unwrap());
                summary(&name, variant, secs, bytes);
            }
            g.bench_function(variant, |b| {
                b.iter_custom(|iters| wgpu_time(&dev, timed, iters, || run(variant).unwrap()))
            });
        }
        g.finish();
    }
    dev.stop_timing();
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_benches(_: &mut Criterion) {}

criterion_group!(
    benches,
    cpu_benches,
    reference_benches,
    cuda_benches,
    wgpu_benches
);
criterion_main!(benches);
