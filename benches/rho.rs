//! Rho state int8 block compression benches (pack and unpack in the device layout) at the BDH
//! rho shape `[B=1, H=4, N=8192, D=256]`: groups `{backend}/rho/{shape}`, throughput in bytes
//! of f32 state read (pack) or written (unpack).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lowbit_kernels::Backend;
use lowbit_kernels::backend::cpu::CpuBackend;
use lowbit_kernels::ops::rho::RhoShape;
use lowbit_kernels::reference;
use lowbit_kernels::testing::Rng;

mod common;
#[cfg(feature = "wgpu")]
use common::{wgpu_bench_device, wgpu_median_seconds, wgpu_selected, wgpu_time};

/// Rho state `[B, H, N, D]` of the BDH model (D=256, H=4, N=8192).
const RHO_SHAPE: [usize; 4] = [1, 4, 8192, 256];

fn group_name(backend: &str) -> String {
    let [b0, h, n, d] = RHO_SHAPE;
    format!("{backend}/rho/b{b0}_h{h}_n{n}_d{d}")
}

fn group_config(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
}

fn cpu_benches(c: &mut Criterion) {
    let cpu = CpuBackend::new();
    let shape = RhoShape::new(RHO_SHAPE).unwrap();
    let v = Rng::new(9).normals(shape.len(), 0.1);
    let (words, scales) = cpu.rho_int8_pack(&shape, &v).unwrap();
    let mut g = c.benchmark_group(group_name("cpu"));
    g.throughput(Throughput::Bytes(4 * shape.len() as u64));
    group_config(&mut g);
    g.bench_function("int8_pack", |b| {
        b.iter(|| cpu.rho_int8_pack(&shape, black_box(&v)).unwrap())
    });
    g.bench_function("int8_unpack", |b| {
        b.iter(|| {
            cpu.rho_int8_unpack(&shape, black_box(&words), &scales)
                .unwrap()
        })
    });
    g.finish();
}

/// The reference rho packer.
fn reference_benches(c: &mut Criterion) {
    let shape = RhoShape::new(RHO_SHAPE).unwrap();
    let v = Rng::new(9).normals(shape.len(), 0.1);
    let mut g = c.benchmark_group(group_name("reference"));
    g.throughput(Throughput::Bytes(4 * shape.len() as u64));
    group_config(&mut g);
    g.bench_function("int8_pack", |b| {
        b.iter(|| reference::rho::rho_int8_pack_words(&shape, black_box(&v)).unwrap())
    });
    g.finish();
}

/// CUDA rho int8 pack/unpack, timed with CUDA events.
#[cfg(feature = "cuda")]
fn cuda_benches(c: &mut Criterion) {
    use lowbit_kernels::backend::cuda::CudaDevice;
    use lowbit_kernels::backend::cuda::microbench;

    let dev = match CudaDevice::new(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("SKIPPED: cuda benches: {e}");
            return;
        }
    };
    let shape = RhoShape::new(RHO_SHAPE).unwrap();
    let v = dev.upload(&Rng::new(9).normals(shape.len(), 0.1)).unwrap();
    let mut words = dev.alloc_zeros::<u32>(shape.int8_words()).unwrap();
    let mut scales = dev.alloc_zeros::<f32>(shape.blocks()).unwrap();
    let mut back = dev.alloc_zeros::<f32>(shape.len()).unwrap();
    let mut g = c.benchmark_group(group_name("cuda"));
    g.throughput(Throughput::Bytes(4 * shape.len() as u64));
    group_config(&mut g);
    g.bench_function("int8_pack", |b| {
        b.iter_custom(|iters| {
            microbench::time_events(&dev, iters, || {
                dev.rho_int8_pack(&shape, &v, &mut words, &mut scales)
            })
            .unwrap()
        })
    });
    g.bench_function("int8_unpack", |b| {
        b.iter_custom(|iters| {
            microbench::time_events(&dev, iters, || {
                dev.rho_int8_unpack(&shape, &words, &scales, &mut back)
            })
            .unwrap()
        })
    });
    g.finish();
}

#[cfg(not(feature = "cuda"))]
fn cuda_benches(_: &mut Criterion) {}

/// wgpu (WGSL) rho int8 pack/unpack, device-resident, timed with GPU timestamps where the
/// adapter has them (else wall time + blocking poll). One `WGPU-SUMMARY` line per case.
#[cfg(feature = "wgpu")]
fn wgpu_benches(c: &mut Criterion) {
    let Some((dev, timed)) = wgpu_bench_device() else {
        return;
    };
    let shape = RhoShape::new(RHO_SHAPE).unwrap();
    let name = group_name("wgpu");
    let bytes = 4 * shape.len() as u64;
    if !["int8_pack", "int8_unpack"]
        .iter()
        .any(|v| wgpu_selected(&format!("{name}/{v}")))
    {
        dev.stop_timing();
        return;
    }
    let bufs = (|| {
        Ok::<_, lowbit_kernels::LowbitError>((
            dev.upload(&Rng::new(14).normals(shape.len(), 0.1))?,
            dev.alloc::<u32>(shape.int8_words())?,
            dev.alloc::<f32>(shape.blocks())?,
            dev.alloc::<f32>(shape.len())?,
        ))
    })();
    match bufs {
        Err(e) => eprintln!("SKIPPED: {name}: {e}"),
        Ok((v, words, scales, back)) => {
            let run = |variant: &str| match variant {
                "int8_pack" => dev.rho_int8_pack_into(&shape, &v, &words, &scales),
                _ => dev.rho_int8_unpack_into(&shape, &words, &scales, &back),
            };
            let mut g = c.benchmark_group(&name);
            g.throughput(Throughput::Bytes(bytes));
            group_config(&mut g);
            for variant in ["int8_pack", "int8_unpack"] {
                if let Err(e) = run(variant) {
                    eprintln!("SKIPPED: {name}/{variant}: {e}");
                    continue;
                }
                if wgpu_selected(&format!("{name}/{variant}")) {
                    let secs = wgpu_median_seconds(&dev, timed, 10, || run(variant).unwrap());
                    println!(
                        "WGPU-SUMMARY {name}/{variant}: {:.3} ms, {:.1} GB/s of f32, {}",
                        secs * 1e3,
                        bytes as f64 / secs / 1e9,
                        dev.name()
                    );
                }
                g.bench_function(variant, |b| {
                    b.iter_custom(|iters| wgpu_time(&dev, timed, iters, || run(variant).unwrap()))
                });
            }
            g.finish();
        }
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
