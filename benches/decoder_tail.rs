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
use lowbit_kernels::pack::{pack_decoder_weight_codes_i8x4, pack_rows_i32_to_i8x4};
use lowbit_kernels::quant::{activation_code, activation_scale};
use lowbit_kernels::reference;
use lowbit_kernels::testing::Rng;

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
        let y = rng.normals(shape.y_len(), 1.0);
        let a_scale = activation_scale(&y, Fmt::Int8).unwrap().unwrap();
        let y_codes: Vec<i32> = y
            .iter()
            .map(|&v| activation_code(v, a_scale, Fmt::Int8))
            .collect();
        let y_words = pack_rows_i32_to_i8x4("bench", &y_codes, h * m, l).unwrap();
        let a_scale_u8 = activation_scale(&y, Fmt::Uint8PosExp).unwrap().unwrap();
        let y_codes_u8 = y
            .iter()
            .map(|&v| activation_code(v, a_scale_u8, Fmt::Uint8PosExp))
            .collect();
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

    let dev = match CudaDevice::new(0) {
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

criterion_group!(benches, cpu_benches, reference_benches, cuda_benches);
criterion_main!(benches);
