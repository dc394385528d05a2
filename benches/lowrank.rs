//! Low-rank projection `x[B,Hin,T,D] · W[H,D,N]` benches.
//!
//! Groups are `{backend}/lowrank/{shape}`; throughput is in elements = integer ops
//! (`2·M·H·D·N`: one multiply + one add per MAC), so criterion's "elem/s" reads as int ops/s.
//! The naive `reference/lowrank/...` group runs the same shape with few samples so the
//! speedup is measured, not guessed. GPU backends add their own `fn {backend}_benches`
//! next to `cpu_benches` and list it in `criterion_group!`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use lowbit_kernels::backend::ProjectionArgs;
use lowbit_kernels::backend::cpu::CpuBackend;
use lowbit_kernels::config::LowBitActivationFormat as Fmt;
use lowbit_kernels::ops::{ActInput, Epilogue, LowrankShape, ScaleSource};
use lowbit_kernels::pack::pack_lowrank_weight_codes_i8x4;
use lowbit_kernels::reference;
use lowbit_kernels::testing::Rng;

mod common;
#[cfg(feature = "cuda")]
use common::mma_selected;
#[cfg(feature = "wgpu")]
use common::{wgpu_bench_device, wgpu_median_seconds, wgpu_selected, wgpu_time};

/// BDH sizes `(M tokens, H heads, D embd, N latent)` of the benches; the first is the headline.
pub const SHAPES: [(usize, usize, usize, usize); 2] = [(2048, 4, 256, 8192), (64, 4, 256, 8192)];

/// Inputs of one benchmark shape, shared by every backend's group.
pub struct LowrankData {
    pub shape: LowrankShape,
    pub name: String,
    /// f32 activations `[1, 1, M, D]`.
    pub x: Vec<f32>,
    /// int8 codes of `x` at `a_scale`, and their i8x4 words `[1, 1, M, ceil(D/4)]`.
    pub x_codes: Vec<i32>,
    pub x_words: Vec<u32>,
    pub a_scale: f32,
    /// uint8pos codes of `x` at `a_scale_u8`.
    pub x_codes_u8: Vec<i32>,
    pub a_scale_u8: f32,
    /// Ternary weight codes `[H, D, N]` and words `[H, ceil(D/4), N]`.
    pub w_codes: Vec<i8>,
    pub w_words: Vec<u32>,
    pub w_scale: f32,
}

impl LowrankData {
    pub fn new((m, h, d, n): (usize, usize, usize, usize)) -> Self {
        let shape = LowrankShape::bdh(m, h, d, n).expect("bench shape");
        let mut rng = Rng::new(7);
        let common::Activations {
            f32s: x,
            codes: x_codes,
            words: x_words,
            scale: a_scale,
            codes_u8: x_codes_u8,
            scale_u8: a_scale_u8,
        } = common::Activations::new(rng.normals(shape.x_len(), 1.0), m, d);
        let w_codes = rng.ternary(shape.w_len());
        let w_words = pack_lowrank_weight_codes_i8x4(&w_codes, h, d, n).unwrap();
        Self {
            shape,
            name: format!("m{m}_d{d}_h{h}_n{n}"),
            x,
            x_codes,
            x_words,
            a_scale,
            x_codes_u8,
            a_scale_u8,
            w_codes,
            w_words,
            w_scale: 0.05,
        }
    }
}

fn cpu_benches(c: &mut Criterion) {
    let cpu = CpuBackend::new();
    for dims in SHAPES {
        let data = LowrankData::new(dims);
        let shape = data.shape;
        let mut out = vec![0.0f32; shape.out_len()];
        let mut g = c.benchmark_group(format!("cpu/lowrank/{}", data.name));
        g.throughput(Throughput::Elements(shape.int_ops()))
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        // Prepacked int8 words → f32 (the device-free fast path).
        g.bench_function("packed_int8", |b| {
            b.iter(|| {
                cpu.lowrank_packed(
                    &shape,
                    Fmt::Int8,
                    black_box(&data.x_words),
                    &data.w_words,
                    1,
                    data.a_scale,
                    data.w_scale,
                    &mut out,
                )
                .unwrap()
            })
        });
        // f32 in, scale computed and quantized inside the op (fused from f32).
        g.bench_function("f32_compute_int8", |b| {
            let args = ProjectionArgs {
                input: ActInput::F32(&data.x),
                format: Fmt::Int8,
                scale: ScaleSource::Compute,
                w_words: &data.w_words,
                w_scale: data.w_scale,
                w_qmax: 1,
                epilogue: Epilogue::default(),
            };
            b.iter(|| {
                cpu.lowrank_into(&shape, black_box(&args), &mut out)
                    .unwrap()
            })
        });
        // uint8pos i32 codes (no bias correction).
        g.bench_function("codes_uint8pos", |b| {
            let args = ProjectionArgs {
                input: ActInput::Codes(&data.x_codes_u8),
                format: Fmt::Uint8PosExp,
                scale: ScaleSource::Param(data.a_scale_u8),
                w_words: &data.w_words,
                w_scale: data.w_scale,
                w_qmax: 1,
                epilogue: Epilogue::default(),
            };
            b.iter(|| {
                cpu.lowrank_into(&shape, black_box(&args), &mut out)
                    .unwrap()
            })
        });
        g.finish();
    }
}

/// The naive reference (single-threaded, slow: 10 flat samples). By default on the small
/// shape (its cost per int op is the same at any M: no reuse across rows); set
/// `LOWBIT_BENCH_FULL_REFERENCE=1` for the headline shape too (~30 s per iteration).
fn reference_benches(c: &mut Criterion) {
    let full = std::env::var_os("LOWBIT_BENCH_FULL_REFERENCE").is_some_and(|v| v == "1");
    let shapes = if full { &SHAPES[..] } else { &SHAPES[1..] };
    for &dims in shapes {
        reference_bench(c, dims);
    }
}

fn reference_bench(c: &mut Criterion, dims: (usize, usize, usize, usize)) {
    let data = LowrankData::new(dims);
    let shape = data.shape;
    let mut g = c.benchmark_group(format!("reference/lowrank/{}", data.name));
    g.throughput(Throughput::Elements(shape.int_ops()))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));
    g.bench_function("codes_int8", |b| {
        b.iter(|| {
            reference::lowrank_projection_codes(
                &shape,
                black_box(&data.x_codes),
                &data.w_codes,
                data.a_scale,
                data.w_scale,
            )
            .unwrap()
        })
    });
    g.finish();
}

/// CUDA (dp4a) at BDH sizes D=256, H=4, N=8192 and M ∈ {1, 16, 512, 2048, 8192}, timed with
/// CUDA events (`iter_custom`); throughput in int ops. Also prints the card's dp4a ceiling and
/// copy bandwidth and one `CUDA-SUMMARY` line per case (median of 20 event-timed runs).
/// M ≤ 16 rotates over 8 weight copies (64 MiB, past the 50 MB L2) so the weights stream
/// from device memory.
#[cfg(feature = "cuda")]
fn cuda_benches(c: &mut Criterion) {
    use lowbit_kernels::backend::cuda::microbench::{self, Ceilings};
    use lowbit_kernels::backend::cuda::{CudaDevice, DeviceAct, DeviceOut, DeviceScale};
    use lowbit_kernels::ops::quantize::QuantizeShape;

    // The dp4a family, whatever the device's default (`cuda_mma_benches` has the mma one).
    let dev = match CudaDevice::new(0)
        .and_then(|d| d.with_family(lowbit_kernels::backend::cuda::KernelFamily::Dp4a))
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("SKIPPED: cuda benches: {e}");
            return;
        }
    };
    let ceil = Ceilings::measure(&dev).expect("ceilings");
    println!("{}", ceil.line(&dev.name()));
    let mut g = c.benchmark_group("cuda/microbench/ceilings");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    g.bench_function("dp4a_ceiling_4096", |b| {
        b.iter_custom(|iters| {
            let m = microbench::dp4a_ceiling(&dev, 4096, iters as usize).unwrap();
            Duration::from_secs_f64(m.seconds * iters as f64)
        })
    });
    g.finish();

    let (h, d, n) = (4usize, 256usize, 8192usize);
    let mut rng = Rng::new(11);
    let w_codes = rng.ternary(h * d * n);
    let w_host = pack_lowrank_weight_codes_i8x4(&w_codes, h, d, n).unwrap();
    let weights: Vec<_> = (0..8).map(|_| dev.upload(&w_host).unwrap()).collect();
    let w_bytes = (w_host.len() * 4) as u64;
    for m in [1usize, 16, 512, 2048, 8192] {
        let shape = LowrankShape::bdh(m, h, d, n).unwrap();
        let x = dev.upload(&rng.normals(shape.x_len(), 1.0)).unwrap();
        let mut scale = dev.upload(&[0.0f32]).unwrap();
        dev.absmean_scale(&x, Fmt::Int8, &mut scale).unwrap();
        let a_scale = dev.download(&scale).unwrap()[0];
        let qs = QuantizeShape::new(m, d).unwrap();
        let mut words = dev.alloc_zeros::<u32>(qs.words_len()).unwrap();
        dev.quantize_pack_i8x4(&x, qs, Fmt::Int8, DeviceScale::Param(a_scale), &mut words)
            .unwrap();
        let mut out = dev.alloc_zeros::<f32>(shape.out_len()).unwrap();
        let rotate = if m <= 16 { weights.len() } else { 1 };
        let mut k = 0usize;
        let mut run = |variant: &str| {
            let w = &weights[k % rotate];
            k += 1;
            let input = if variant == "packed_int8" {
                DeviceAct::Packed(&words)
            } else {
                DeviceAct::F32(&x)
            };
            let sc = if variant == "packed_int8" {
                DeviceScale::Param(a_scale)
            } else {
                DeviceScale::Compute(&mut scale)
            };
            dev.lowrank(
                &shape,
                input,
                Fmt::Int8,
                sc,
                w,
                0.05,
                1,
                Epilogue::default(),
                DeviceOut::F32(&mut out),
            )
        };
        let name = format!("cuda/lowrank/m{m}_d{d}_h{h}_n{n}");
        let mut g = c.benchmark_group(&name);
        g.throughput(Throughput::Elements(shape.int_ops()))
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        for variant in ["packed_int8", "f32_compute_int8"] {
            let secs = microbench::median_seconds(&dev, 20, || run(variant)).unwrap();
            let wb = (m <= 16).then_some(w_bytes);
            println!(
                "{}",
                microbench::summary_line(&name, variant, secs, shape.int_ops(), wb, &ceil)
            );
            g.bench_function(variant, |b| {
                b.iter_custom(|iters| {
                    microbench::time_events(&dev, iters, || run(variant)).unwrap()
                })
            });
        }
        g.finish();
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_benches(_: &mut Criterion) {}

/// wgpu (WGSL) at BDH sizes D=256, H=4, N=8192 and M ∈ {512, 2048, 8192}, device-resident
/// (inputs uploaded once), timed with GPU timestamp queries around each launch
/// (`iter_custom` returns GPU time) where the adapter has `TIMESTAMP_QUERY`, else wall time
/// with a blocking poll inside the timed region; throughput in int ops. Prints one
/// `WGPU-SUMMARY` line per case (median of 10 runs, TOPS). Cases whose buffers exceed the
/// adapter's storage binding limit (lavapipe: 128 MiB) are SKIPPED with the reason.
#[cfg(feature = "wgpu")]
fn wgpu_benches(c: &mut Criterion) {
    use lowbit_kernels::backend::wgpu::{DeviceAct, DeviceScale};
    use lowbit_kernels::ops::OutputDType;

    let Some((dev, timed)) = wgpu_bench_device() else {
        return;
    };
    const VARIANTS: [&str; 3] = ["packed_int8", "f32_compute_int8", "codes_uint8pos"];
    let (h, d, n) = (4usize, 256usize, 8192usize);
    let mut rng = Rng::new(12);
    let w_codes = rng.ternary(h * d * n);
    let w_words = pack_lowrank_weight_codes_i8x4(&w_codes, h, d, n).unwrap();
    let Ok(w) = dev.upload_weights(&w_words, 0.05, 1) else {
        eprintln!("SKIPPED: wgpu benches: weights do not fit");
        return;
    };
    for m in [512usize, 2048, 8192] {
        let shape = LowrankShape::bdh(m, h, d, n).unwrap();
        let name = format!("wgpu/lowrank/m{m}_d{d}_h{h}_n{n}");
        if !VARIANTS
            .iter()
            .any(|v| wgpu_selected(&format!("{name}/{v}")))
        {
            continue;
        }
        let act = common::Activations::new(rng.normals(shape.x_len(), 1.0), m, d);
        let (a_scale, a_scale_u8) = (act.scale, act.scale_u8);
        let uploaded = (|| {
            Ok::<_, lowbit_kernels::LowbitError>((
                dev.upload(&act.f32s)?,
                dev.upload(&act.words)?,
                dev.upload(&act.codes_u8)?,
                dev.alloc::<f32>(1)?,
                dev.alloc_output(OutputDType::F32, shape.out_len())?,
            ))
        })();
        let (x, words, codes_u8, scale, out) = match uploaded {
            Ok(t) => t,
            Err(e) => {
                eprintln!("SKIPPED: {name}: {e}");
                continue;
            }
        };
        let run = |variant: &str| match variant {
            "packed_int8" => dev.lowrank_into(
                &shape,
                DeviceAct::Packed(&words),
                Fmt::Int8,
                DeviceScale::Host(a_scale),
                &w,
                Epilogue::default(),
                &out,
            ),
            "f32_compute_int8" => dev.lowrank_into(
                &shape,
                DeviceAct::F32(&x),
                Fmt::Int8,
                DeviceScale::Compute(&scale),
                &w,
                Epilogue::default(),
                &out,
            ),
            _ => dev.lowrank_into(
                &shape,
                DeviceAct::Codes(&codes_u8),
                Fmt::Uint8PosExp,
                DeviceScale::Host(a_scale_u8),
                &w,
                Epilogue::default(),
                &out,
            ),
        };
        let mut g = c.benchmark_group(&name);
        g.throughput(Throughput::Elements(shape.int_ops()))
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        for variant in VARIANTS {
            if let Err(e) = run(variant) {
                eprintln!("SKIPPED: {name}/{variant}: {e}");
                continue;
            }
            if wgpu_selected(&format!("{name}/{variant}")) {
                let secs = wgpu_median_seconds(&dev, timed, 10, || run(variant).unwrap());
                println!(
                    "WGPU-SUMMARY {name}/{variant}: {:.3} ms, {:.3} TOPS (int ops), {}",
                    secs * 1e3,
                    shape.int_ops() as f64 / secs / 1e12,
                    dev.name()
                );
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

/// CUDA int8 tensor cores (the mma family, forced) at BDH sizes D=256, H=4, N=8192 and
/// M ∈ {512, 2048, 8192}: fused from f32 (device scale: absmean launch + mma kernel) and
/// prepacked int8, each with f32 output and with bf16 + fused ReLU output. Timed with CUDA
/// events over 20 back-to-back runs (launch gaps amortised). Prints one `MMA-SUMMARY` line
/// per case: median time, int TOPS, output bytes written per second, and the byte floor
/// (output + input + weight bytes at the measured copy bandwidth).
#[cfg(feature = "cuda")]
fn cuda_mma_benches(c: &mut Criterion) {
    use lowbit_kernels::backend::cuda::microbench;
    use lowbit_kernels::backend::cuda::{
        CudaDevice, DeviceAct, DeviceOut, DeviceScale, DeviceWeights, KernelFamily,
    };
    use lowbit_kernels::ops::OutputDType;
    use lowbit_kernels::ops::quantize::QuantizeShape;
    use lowbit_kernels::pack::pack_ternary2_fragments;

    if !mma_selected("cuda_mma/lowrank") {
        return;
    }
    let dev = match CudaDevice::new(0).and_then(|d| d.with_family(KernelFamily::Mma)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("SKIPPED: cuda mma benches: {e}");
            return;
        }
    };
    let copy = microbench::copy_bandwidth(&dev, 1 << 30, 10).expect("copy bandwidth");
    println!(
        "MMA-CEILING card=\"{}\" copy_gbps={:.0}",
        dev.name(),
        copy.rate() / 1e9
    );
    let (h, d, n) = (4usize, 256usize, 8192usize);
    let mut rng = Rng::new(21);
    let w_codes = rng.ternary(h * d * n);
    let w_host = pack_lowrank_weight_codes_i8x4(&w_codes, h, d, n).unwrap();
    let w = dev.upload(&w_host).unwrap();
    // The same weights at 2 bits (`ternary2` variants; sm_90 runs them on lowrank_wgmma).
    let w2_host = pack_ternary2_fragments(&w_host, h, d.div_ceil(4), n).unwrap();
    let w2 = dev.upload(&w2_host).unwrap();
    for m in [512usize, 2048, 8192] {
        let shape = LowrankShape::bdh(m, h, d, n).unwrap();
        let x = dev.upload(&rng.normals(shape.x_len(), 1.0)).unwrap();
        let mut scale = dev.upload(&[0.0f32]).unwrap();
        dev.absmean_scale(&x, Fmt::Int8, &mut scale).unwrap();
        let a_scale = dev.download(&scale).unwrap()[0];
        let qs = QuantizeShape::new(m, d).unwrap();
        let mut words = dev.alloc_zeros::<u32>(qs.words_len()).unwrap();
        dev.quantize_pack_i8x4(&x, qs, Fmt::Int8, DeviceScale::Param(a_scale), &mut words)
            .unwrap();
        let mut out32 = dev.alloc_zeros::<f32>(shape.out_len()).unwrap();
        let mut out16 = dev.alloc_zeros::<u16>(shape.out_len()).unwrap();
        let name = format!("cuda_mma/lowrank/m{m}_d{d}_h{h}_n{n}");
        let mut g = c.benchmark_group(&name);
        g.throughput(Throughput::Elements(shape.int_ops()))
            .sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(600));
        for variant in [
            "f32_compute_int8",
            "packed_int8",
            "f32_compute_int8_bf16_relu",
            "packed_int8_bf16_relu",
            "packed_ternary2_bf16_relu",
        ] {
            let fused = variant.starts_with("f32");
            let bf16 = variant.ends_with("bf16_relu");
            let t2 = variant.contains("ternary2");
            let ep = if bf16 {
                Epilogue {
                    dtype: OutputDType::Bf16,
                    relu: true,
                }
            } else {
                Epilogue::default()
            };
            let mut run = || {
                let (input, sc) = if fused {
                    (DeviceAct::F32(&x), DeviceScale::Compute(&mut scale))
                } else {
                    (DeviceAct::Packed(&words), DeviceScale::Param(a_scale))
                };
                let out = if bf16 {
                    DeviceOut::Bits16(&mut out16)
                } else {
                    DeviceOut::F32(&mut out32)
                };
                let weights = if t2 {
                    DeviceWeights::Ternary2(&w2)
                } else {
                    DeviceWeights::Words(&w)
                };
                dev.lowrank(&shape, input, Fmt::Int8, sc, weights, 0.05, 1, ep, out)
            };
            run().unwrap();
            dev.synchronize().unwrap();
            let mut samples: Vec<f64> = (0..10)
                .map(|_| {
                    microbench::time_events(&dev, 20, &mut run)
                        .unwrap()
                        .as_secs_f64()
                        / 20.0
                })
                .collect();
            samples.sort_by(f64::total_cmp);
            let secs = samples[samples.len() / 2];
            let out_bytes = (shape.out_len() * if bf16 { 2 } else { 4 }) as f64;
            let in_bytes = (m * d * if fused { 4 } else { 1 }) as f64;
            let w_words = if t2 { w2_host.len() } else { w_host.len() };
            let bytes = out_bytes + in_bytes + (w_words * 4) as f64;
            let floor = bytes / copy.rate();
            println!(
                "MMA-SUMMARY {name} {variant} time_us={:.2} tops={:.1} out_gbps={:.0} floor_us={:.2} of_floor={:.2}",
                secs * 1e6,
                shape.int_ops() as f64 / secs / 1e12,
                out_bytes / secs / 1e9,
                floor * 1e6,
                secs / floor
            );
            g.bench_function(variant, |b| {
                b.iter_custom(|iters| microbench::time_events(&dev, iters, &mut run).unwrap())
            });
        }
        g.finish();
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_mma_benches(_: &mut Criterion) {}

criterion_group!(
    benches,
    cpu_benches,
    reference_benches,
    cuda_benches,
    cuda_mma_benches,
    wgpu_benches
);
criterion_main!(benches);
