//! Decoder tail `y[B,H,T,L] · W[H·Lart,D]` summed over heads benches.
//!
//! Groups are `{backend}/decoder_tail/{shape}`; throughput is in elements = integer ops
//! (`2·M·H·L·D`), so criterion's "elem/s" reads as int ops/s. The naive
//! `reference/decoder_tail/...` group measures the speedup (small shape by default; set
//! `LOWBIT_BENCH_FULL_REFERENCE=1` for the headline one). GPU backends add their own
//! `fn {backend}_benches` next to `cpu_benches` and list it in `criterion_group!`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use lowbit_kernels::backend::ProjectionArgs;
use lowbit_kernels::backend::cpu::CpuBackend;
use lowbit_kernels::config::LowBitActivationFormat as Fmt;
use lowbit_kernels::ops::{ActInput, DecoderTailShape, Epilogue, ScaleSource};
use lowbit_kernels::pack::pack_decoder_weight_codes_i8x4;
#[cfg(feature = "wgpu")]
use lowbit_kernels::quant::{activation_code, activation_scale};
use lowbit_kernels::reference;
use lowbit_kernels::testing::Rng;

mod common;
#[cfg(feature = "cuda")]
use common::mma_selected;
#[cfg(feature = "wgpu")]
use common::{wgpu_bench_device, wgpu_median_seconds, wgpu_selected, wgpu_time};

/// BDH sizes `(M tokens, H heads, L latent per head, D embd)`; the first is the headline.
pub const SHAPES: [(usize, usize, usize, usize); 2] = [(2048, 4, 8192, 256), (64, 4, 8192, 256)];

/// Inputs of one benchmark shape, shared by every backend's group.
pub struct DecoderData {
    pub shape: DecoderTailShape,
    pub name: String,
    /// f32 activations `[1, H, M, L]` (non-negative half the time, as after a relu).
    pub y: Vec<f32>,
    /// int8 codes of `y` at `a_scale` and their words `[1, H, M, ceil(L/4)]`.
    pub y_codes: Vec<i32>,
    pub y_words: Vec<u32>,
    pub a_scale: f32,
    /// uint8pos codes of `y` at `a_scale_u8`.
    pub y_codes_u8: Vec<i32>,
    pub a_scale_u8: f32,
    /// Ternary weight codes `[H·L, D]` and words `[H·ceil(L/4), D]`.
    pub w_codes: Vec<i8>,
    pub w_words: Vec<u32>,
    pub w_scale: f32,
}

impl DecoderData {
    pub fn new((m, h, l, d): (usize, usize, usize, usize)) -> Self {
        let shape = DecoderTailShape::bdh(m, h, l, d).expect("bench shape");
        let mut rng = Rng::new(8);
        let common::Activations {
            f32s: y,
            codes: y_codes,
            words: y_words,
            scale: a_scale,
            codes_u8: y_codes_u8,
            scale_u8: a_scale_u8,
        } = common::Activations::new(rng.normals(shape.y_len(), 1.0), h * m, l);
        let w_codes = rng.ternary(shape.w_len());
        let w_words = pack_decoder_weight_codes_i8x4(&w_codes, h, l, d).unwrap();
        Self {
            shape,
            name: format!("m{m}_h{h}_l{l}_d{d}"),
            y,
            y_codes,
            y_words,
            a_scale,
            y_codes_u8,
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
        let data = DecoderData::new(dims);
        let shape = data.shape;
        let mut out = vec![0.0f32; shape.out_len()];
        let mut g = c.benchmark_group(format!("cpu/decoder_tail/{}", data.name));
        g.throughput(Throughput::Elements(shape.int_ops()))
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        g.bench_function("packed_int8", |b| {
            b.iter(|| {
                cpu.decoder_tail_packed(
                    &shape,
                    Fmt::Int8,
                    black_box(&data.y_words),
                    &data.w_words,
                    1,
                    data.a_scale,
                    data.w_scale,
                    &mut out,
                )
                .unwrap()
            })
        });
        g.bench_function("f32_compute_int8", |b| {
            let args = ProjectionArgs {
                input: ActInput::F32(&data.y),
                format: Fmt::Int8,
                scale: ScaleSource::Compute,
                w_words: &data.w_words,
                w_scale: data.w_scale,
                w_qmax: 1,
                epilogue: Epilogue::default(),
            };
            b.iter(|| {
                cpu.decoder_tail_into(&shape, black_box(&args), &mut out)
                    .unwrap()
            })
        });
        g.bench_function("codes_uint8pos", |b| {
            let args = ProjectionArgs {
                input: ActInput::Codes(&data.y_codes_u8),
                format: Fmt::Uint8PosExp,
                scale: ScaleSource::Param(data.a_scale_u8),
                w_words: &data.w_words,
                w_scale: data.w_scale,
                w_qmax: 1,
                epilogue: Epilogue::default(),
            };
            b.iter(|| {
                cpu.decoder_tail_into(&shape, black_box(&args), &mut out)
                    .unwrap()
            })
        });
        g.finish();
    }
}

/// The naive reference (single-threaded, 10 flat samples); the small shape unless
/// `LOWBIT_BENCH_FULL_REFERENCE=1`.
fn reference_benches(c: &mut Criterion) {
    let full = std::env::var_os("LOWBIT_BENCH_FULL_REFERENCE").is_some_and(|v| v == "1");
    let shapes = if full { &SHAPES[..] } else { &SHAPES[1..] };
    for &dims in shapes {
        let data = DecoderData::new(dims);
        let shape = data.shape;
        let mut g = c.benchmark_group(format!("reference/decoder_tail/{}", data.name));
        g.throughput(Throughput::Elements(shape.int_ops()))
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_secs(1));
        g.bench_function("codes_int8", |b| {
            b.iter(|| {
                reference::decoder_tail_codes(
                    &shape,
                    black_box(&data.y_codes),
                    &data.w_codes,
                    data.a_scale,
                    data.w_scale,
                )
                .unwrap()
            })
        });
        g.finish();
    }
}

/// CUDA (dp4a, split-K) at BDH sizes H=4, L=8192, D=256 and M ∈ {1, 16, 512, 2048, 8192},
/// timed with CUDA events (`iter_custom`); throughput in int ops. One `CUDA-SUMMARY` line per
/// case (median of 20 event-timed runs). M ≤ 16 rotates over 8 weight copies (64 MiB, past
/// the 50 MB L2) so the weights stream from device memory.
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
    let (h, l, d) = (4usize, 8192usize, 256usize);
    let mut rng = Rng::new(12);
    let w_codes = rng.ternary(h * l * d);
    let w_host = pack_decoder_weight_codes_i8x4(&w_codes, h, l, d).unwrap();
    let weights: Vec<_> = (0..8).map(|_| dev.upload(&w_host).unwrap()).collect();
    let w_bytes = (w_host.len() * 4) as u64;
    for m in [1usize, 16, 512, 2048, 8192] {
        let shape = DecoderTailShape::bdh(m, h, l, d).unwrap();
        let y: Vec<f32> = rng
            .normals(shape.y_len(), 1.0)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect();
        let y = dev.upload(&y).unwrap();
        let mut scale = dev.upload(&[0.0f32]).unwrap();
        dev.absmean_scale(&y, Fmt::Int8, &mut scale).unwrap();
        let a_scale = dev.download(&scale).unwrap()[0];
        let qs = QuantizeShape::new(h * m, l).unwrap();
        let mut words = dev.alloc_zeros::<u32>(qs.words_len()).unwrap();
        dev.quantize_pack_i8x4(&y, qs, Fmt::Int8, DeviceScale::Param(a_scale), &mut words)
            .unwrap();
        let mut out = dev.alloc_zeros::<f32>(shape.out_len()).unwrap();
        let rotate = if m <= 16 { weights.len() } else { 1 };
        let mut k = 0usize;
        let mut run = |variant: &str| {
            let w = &weights[k % rotate];
            k += 1;
            let (input, format, sc) = if variant == "packed_int8" {
                (
                    DeviceAct::Packed(&words),
                    Fmt::Int8,
                    DeviceScale::Param(a_scale),
                )
            } else {
                (
                    DeviceAct::F32(&y),
                    Fmt::Uint8PosExp,
                    DeviceScale::Compute(&mut scale),
                )
            };
            dev.decoder_tail(
                &shape,
                input,
                format,
                sc,
                w,
                0.05,
                1,
                Epilogue::default(),
                DeviceOut::F32(&mut out),
            )
        };
        let name = format!("cuda/decoder_tail/m{m}_h{h}_l{l}_d{d}");
        let mut g = c.benchmark_group(&name);
        g.throughput(Throughput::Elements(shape.int_ops()))
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        for variant in ["packed_int8", "f32_compute_uint8pos"] {
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

/// wgpu (WGSL) at BDH sizes H=4, L=8192, D=256 and M ∈ {512, 2048, 8192}, device-resident,
/// timed with GPU timestamps where the adapter has them (else wall time + blocking poll);
/// throughput in int ops (`2·M·H·L·D`). Prints one `WGPU-SUMMARY` line per case (median of 10
/// runs). The f32 and codes inputs (4 bytes per element: 1 GiB at M=8192) run for M ≤ 2048;
/// cases over the adapter's storage binding limit are SKIPPED with the reason.
#[cfg(feature = "wgpu")]
fn wgpu_benches(c: &mut Criterion) {
    use lowbit_kernels::backend::wgpu::{DeviceAct, DeviceScale};
    use lowbit_kernels::ops::OutputDType;

    let Some((dev, timed)) = wgpu_bench_device() else {
        return;
    };
    let (h, l, d) = (4usize, 8192usize, 256usize);
    let mut rng = Rng::new(13);
    let w_codes = rng.ternary(h * l * d);
    let w_words = pack_decoder_weight_codes_i8x4(&w_codes, h, l, d).unwrap();
    let Ok(w) = dev.upload_weights(&w_words, 0.05, 1) else {
        eprintln!("SKIPPED: wgpu decoder benches: weights do not fit");
        return;
    };
    for m in [512usize, 2048, 8192] {
        let shape = DecoderTailShape::bdh(m, h, l, d).unwrap();
        let name = format!("wgpu/decoder_tail/m{m}_h{h}_l{l}_d{d}");
        let small = m <= 2048;
        let variants: &[&str] = if small {
            &["packed_int8", "f32_compute_int8", "codes_uint8pos"]
        } else {
            &["packed_int8"]
        };
        if !variants
            .iter()
            .any(|v| wgpu_selected(&format!("{name}/{v}")))
        {
            continue;
        }
        // Packed words straight from the RNG (any byte is a valid lane; |K·128·1| < 2^31).
        let words_host: Vec<u32> = (0..shape.y_words_len())
            .map(|_| rng.next_u64() as u32 & 0x7f7f_7f7f)
            .collect();
        let y_host = if small {
            rng.normals(shape.y_len(), 1.0)
        } else {
            Vec::new()
        };
        let a_scale_u8 = if small {
            activation_scale(&y_host, Fmt::Uint8PosExp)
                .unwrap()
                .unwrap()
        } else {
            1.0
        };
        let uploaded = (|| {
            let words = dev.upload(&words_host)?;
            let out = dev.alloc_output(OutputDType::F32, shape.out_len())?;
            let scale = dev.alloc::<f32>(1)?;
            let extra = if small {
                let codes: Vec<i32> = y_host
                    .iter()
                    .map(|&v| activation_code(v, a_scale_u8, Fmt::Uint8PosExp))
                    .collect();
                Some((dev.upload(&y_host)?, dev.upload(&codes)?))
            } else {
                None
            };
            Ok::<_, lowbit_kernels::LowbitError>((words, out, scale, extra))
        })();
        let (words, out, scale, extra) = match uploaded {
            Ok(t) => t,
            Err(e) => {
                eprintln!("SKIPPED: {name}: {e}");
                continue;
            }
        };
        let run = |variant: &str| match (variant, &extra) {
            ("f32_compute_int8", Some((y, _))) => dev.decoder_tail_into(
                &shape,
                DeviceAct::F32(y),
                Fmt::Int8,
                DeviceScale::Compute(&scale),
                &w,
                Epilogue::default(),
                &out,
            ),
            ("codes_uint8pos", Some((_, codes))) => dev.decoder_tail_into(
                &shape,
                DeviceAct::Codes(codes),
                Fmt::Uint8PosExp,
                DeviceScale::Host(a_scale_u8),
                &w,
                Epilogue::default(),
                &out,
            ),
            _ => dev.decoder_tail_into(
                &shape,
                DeviceAct::Packed(&words),
                Fmt::Int8,
                DeviceScale::Host(0.02),
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
        for &variant in variants {
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

/// CUDA int8 tensor cores (the mma family, forced) at BDH sizes H=4, L=8192, D=256 and
/// M ∈ {512, 2048, 8192}: prepacked int8 input with f32 and with bf16 output, and fused from
/// f32 (uint8pos, device scale: absmean + packing + mma + split-K reduction). Timed with CUDA
/// events over 20 back-to-back runs. Prints one `MMA-SUMMARY` line per case: median time,
/// int TOPS, input bytes read per second, and the byte floor (input + weight + output bytes
/// at the measured copy bandwidth).
#[cfg(feature = "cuda")]
fn cuda_mma_benches(c: &mut Criterion) {
    use lowbit_kernels::backend::cuda::microbench;
    use lowbit_kernels::backend::cuda::{
        CudaDevice, DeviceAct, DeviceOut, DeviceScale, DeviceWeights, KernelFamily,
    };
    use lowbit_kernels::ops::OutputDType;
    use lowbit_kernels::ops::quantize::QuantizeShape;
    use lowbit_kernels::pack::pack_ternary2_fragments;

    if !mma_selected("cuda_mma/decoder_tail") {
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
    let (h, l, d) = (4usize, 8192usize, 256usize);
    let mut rng = Rng::new(22);
    let w_codes = rng.ternary(h * l * d);
    let w_host = pack_decoder_weight_codes_i8x4(&w_codes, h, l, d).unwrap();
    let w = dev.upload(&w_host).unwrap();
    // The same weights at 2 bits (`ternary2` variants; sm_90 runs them on decoder_wgmma).
    let w2_host = pack_ternary2_fragments(&w_host, h, l.div_ceil(4), d).unwrap();
    let w2 = dev.upload(&w2_host).unwrap();
    for m in [512usize, 2048, 8192] {
        let shape = DecoderTailShape::bdh(m, h, l, d).unwrap();
        let y: Vec<f32> = rng
            .normals(shape.y_len(), 1.0)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect();
        let y = dev.upload(&y).unwrap();
        let mut scale = dev.upload(&[0.0f32]).unwrap();
        dev.absmean_scale(&y, Fmt::Int8, &mut scale).unwrap();
        let a_scale = dev.download(&scale).unwrap()[0];
        let qs = QuantizeShape::new(h * m, l).unwrap();
        let mut words = dev.alloc_zeros::<u32>(qs.words_len()).unwrap();
        dev.quantize_pack_i8x4(&y, qs, Fmt::Int8, DeviceScale::Param(a_scale), &mut words)
            .unwrap();
        let mut out32 = dev.alloc_zeros::<f32>(shape.out_len()).unwrap();
        let mut out16 = dev.alloc_zeros::<u16>(shape.out_len()).unwrap();
        let name = format!("cuda_mma/decoder_tail/m{m}_h{h}_l{l}_d{d}");
        let mut g = c.benchmark_group(&name);
        g.throughput(Throughput::Elements(shape.int_ops()))
            .sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(600));
        for variant in [
            "packed_int8",
            "packed_int8_bf16",
            "f32_compute_uint8pos",
            "packed_ternary2",
        ] {
            let fused = variant.starts_with("f32");
            let bf16 = variant.ends_with("bf16");
            let t2 = variant.contains("ternary2");
            let ep = Epilogue {
                dtype: if bf16 {
                    OutputDType::Bf16
                } else {
                    OutputDType::F32
                },
                relu: false,
            };
            let mut run = || {
                let (input, format, sc) = if fused {
                    (
                        DeviceAct::F32(&y),
                        Fmt::Uint8PosExp,
                        DeviceScale::Compute(&mut scale),
                    )
                } else {
                    (
                        DeviceAct::Packed(&words),
                        Fmt::Int8,
                        DeviceScale::Param(a_scale),
                    )
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
                dev.decoder_tail(&shape, input, format, sc, weights, 0.05, 1, ep, out)
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
            let in_bytes = (shape.y_len() * if fused { 4 } else { 1 }) as f64;
            let out_bytes = (shape.out_len() * if bf16 { 2 } else { 4 }) as f64;
            let w_words = if t2 { w2_host.len() } else { w_host.len() };
            let floor = (in_bytes + out_bytes + (w_words * 4) as f64) / copy.rate();
            println!(
                "MMA-SUMMARY {name} {variant} time_us={:.2} tops={:.1} in_gbps={:.0} floor_us={:.2} of_floor={:.2}",
                secs * 1e6,
                shape.int_ops() as f64 / secs / 1e12,
                in_bytes / secs / 1e9,
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
