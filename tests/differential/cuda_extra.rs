//! CUDA-only tests: interop with a caller's context/stream, device-resident chaining, the
//! module cache, the small-M path, split-K determinism and the raw-pointer entry points.
//! Without a CUDA device each test prints `SKIPPED` (or fails under `LOWBIT_REQUIRE=cuda`).

use std::sync::Arc;

use lowbit_kernels::backend::cuda::cudarc::driver::{
    CudaContext, CudaSlice, DevicePtr, DevicePtrMut,
};
use lowbit_kernels::backend::cuda::microbench::stream_floor;
use lowbit_kernels::backend::cuda::{
    CudaDevice, DeviceAct, DeviceOut, DeviceScale, KernelFamily, Pdl, RawAct, RawScale, RawWeights,
    SmallMmaDecoder, SmallShape,
};
use lowbit_kernels::config::LowBitActivationFormat as Fmt;
use lowbit_kernels::ops::quantize::QuantizeShape;
use lowbit_kernels::ops::{DecoderTailShape, Epilogue, LowrankShape};
use lowbit_kernels::pack::{
    pack_decoder_weight_codes_i8x4, pack_lowrank_weight_codes_i8x4, pack_ternary2_fragments,
};
use lowbit_kernels::quant::{activation_code, activation_scale};
use lowbit_kernels::testing::{self, Rng, compare_f32};
use lowbit_kernels::{BackendKind, LowbitError, reference};

/// Device 0, or `None` after a loud skip.
fn device() -> Option<CudaDevice> {
    match CudaDevice::new(0) {
        Ok(d) => Some(d),
        Err(e) => {
            if let Err(msg) = testing::skip_or_fail(BackendKind::Cuda, &e.to_string()) {
                panic!("{msg}");
            }
            None
        }
    }
}

/// Device 0 on the tensor-core family (whatever `LOWBIT_CUDA_KERNELS` says), or `None` after
/// a loud skip (no device, or one without the mma kernels).
fn mma_device() -> Option<CudaDevice> {
    match device()?.with_family(KernelFamily::Mma) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("SKIPPED: no tensor-core family on this device: {e}");
            None
        }
    }
}

fn codes_of(x: &[f32], fmt: Fmt, s: f32) -> Vec<i32> {
    x.iter().map(|&v| activation_code(v, s, fmt)).collect()
}

fn assert_exact(what: &str, expected: &[f32], actual: &[f32]) {
    let r = compare_f32(expected, actual);
    assert!(r.bit_exact(), "{what}: not bit-exact: {r}");
}

/// Runs `f` with the raw addresses (on `dev`'s stream) of an op's input, weight words, scale
/// and output, as a caller of the `unsafe` entry points holds them.
fn with_raw<R>(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    w: &CudaSlice<u32>,
    scale: &mut CudaSlice<f32>,
    out: &mut CudaSlice<f32>,
    f: impl FnOnce(u64, u64, u64, u64) -> R,
) -> R {
    let stream = dev.stream().clone();
    let (xp, _g1) = x.device_ptr(&stream);
    let (wp, _g2) = w.device_ptr(&stream);
    let (sp, _g3) = scale.device_ptr_mut(&stream);
    let (op, _g4) = out.device_ptr_mut(&stream);
    f(xp, wp, sp, op)
}

/// Uploads f32 input `x` and weight words `w`, poisons a one-float scale buffer and an
/// `out_len` f32 output with NaN, runs `f(x, w, scale, out)` on their device addresses and
/// returns the scale and output read back.
fn run_raw_f32(
    dev: &CudaDevice,
    x: &[f32],
    w: &[u32],
    out_len: usize,
    f: impl FnOnce(u64, u64, u64, u64),
) -> (f32, Vec<f32>) {
    let xd = dev.upload(x).unwrap();
    let wd = dev.upload(w).unwrap();
    let mut sd = dev.upload(&[f32::NAN]).unwrap();
    let mut od = dev.upload(&vec![f32::NAN; out_len]).unwrap();
    with_raw(dev, &xd, &wd, &mut sd, &mut od, f);
    (dev.download(&sd).unwrap()[0], dev.download(&od).unwrap())
}

struct Lowrank {
    shape: LowrankShape,
    w_codes: Vec<i8>,
    w_words: Vec<u32>,
    w_scale: f32,
}

fn lowrank_problem(rng: &mut Rng, m: usize, heads: usize, d: usize, n: usize) -> Lowrank {
    let shape = LowrankShape::bdh(m, heads, d, n).unwrap();
    let w_codes = rng.ternary(shape.w_len());
    let w_words = pack_lowrank_weight_codes_i8x4(&w_codes, heads, d, n).unwrap();
    Lowrank {
        shape,
        w_codes,
        w_words,
        w_scale: 0.05,
    }
}

struct Decoder {
    shape: DecoderTailShape,
    w_codes: Vec<i8>,
    w_words: Vec<u32>,
    w_scale: f32,
}

fn decoder_problem(rng: &mut Rng, m: usize, heads: usize, l: usize, d: usize) -> Decoder {
    let shape = DecoderTailShape::bdh(m, heads, l, d).unwrap();
    let w_codes = rng.int8_codes(shape.w_len());
    let w_words = pack_decoder_weight_codes_i8x4(&w_codes, heads, l, d).unwrap();
    Decoder {
        shape,
        w_codes,
        w_words,
        w_scale: 0.003,
    }
}

/// Runs a low-rank projection with i32 codes on `dev` and returns the output.
fn run_lowrank_codes(dev: &CudaDevice, p: &Lowrank, codes: &[i32], fmt: Fmt, s: f32) -> Vec<f32> {
    let x = dev.upload(codes).unwrap();
    let w = dev.upload(&p.w_words).unwrap();
    let mut out = dev.upload(&vec![f32::NAN; p.shape.out_len()]).unwrap();
    dev.lowrank(
        &p.shape,
        DeviceAct::Codes(&x),
        fmt,
        DeviceScale::Param(s),
        &w,
        p.w_scale,
        1,
        Epilogue::default(),
        DeviceOut::F32(&mut out),
    )
    .unwrap();
    dev.download(&out).unwrap()
}

/// A random decoder problem `(M, H, L, D)` on int8 codes, uploaded to a device (codes `y`,
/// weights `w`), with its scale and the reference's output.
struct DecoderCase {
    dec: Decoder,
    s: f32,
    y: CudaSlice<i32>,
    w: CudaSlice<u32>,
    expected: Vec<f32>,
}

impl DecoderCase {
    fn new(
        dev: &CudaDevice,
        rng: &mut Rng,
        (m, heads, l, d): (usize, usize, usize, usize),
    ) -> Self {
        let dec = decoder_problem(rng, m, heads, l, d);
        let y = rng.normals(dec.shape.y_len(), 1.0);
        let s = activation_scale(&y, Fmt::Int8).unwrap().unwrap();
        let codes = codes_of(&y, Fmt::Int8, s);
        let expected =
            reference::decoder_tail_codes(&dec.shape, &codes, &dec.w_codes, s, dec.w_scale)
                .unwrap();
        let (y, w) = (
            dev.upload(&codes).unwrap(),
            dev.upload(&dec.w_words).unwrap(),
        );
        Self {
            dec,
            s,
            y,
            w,
            expected,
        }
    }

    /// Runs the decoder tail into `out`.
    fn run_into(&self, dev: &CudaDevice, out: &mut CudaSlice<f32>) -> Result<(), LowbitError> {
        dev.decoder_tail(
            &self.dec.shape,
            DeviceAct::Codes(&self.y),
            Fmt::Int8,
            DeviceScale::Param(self.s),
            &self.w,
            self.dec.w_scale,
            127,
            Epilogue::default(),
            DeviceOut::F32(out),
        )
    }

    /// Runs it into a NaN-poisoned output and returns that.
    fn run(&self, dev: &CudaDevice) -> Vec<f32> {
        let mut out = dev
            .upload(&vec![f32::NAN; self.dec.shape.out_len()])
            .unwrap();
        self.run_into(dev, &mut out).unwrap();
        dev.download(&out).unwrap()
    }
}

#[test]
fn wraps_a_callers_context_and_stream() {
    let Some(_probe) = device() else { return };
    let ctx = CudaContext::new(0).unwrap();
    let stream = ctx.new_stream().unwrap();
    let dev = CudaDevice::from_stream(ctx.clone(), stream.clone()).unwrap();
    assert!(Arc::ptr_eq(dev.stream(), &stream));
    let mut rng = Rng::new(1);
    let p = lowrank_problem(&mut rng, 37, 2, 64, 200);
    let x = rng.normals(p.shape.x_len(), 1.0);
    let s = activation_scale(&x, Fmt::Int8).unwrap().unwrap();
    let codes = codes_of(&x, Fmt::Int8, s);
    let out = run_lowrank_codes(&dev, &p, &codes, Fmt::Int8, s);
    let expected =
        reference::lowrank_projection_codes(&p.shape, &codes, &p.w_codes, s, p.w_scale).unwrap();
    assert_exact("lowrank on the caller's stream", &expected, &out);
    // A buffer the caller allocated on its own stream works as input too.
    let xs: CudaSlice<i32> = stream.clone_htod(&codes).unwrap();
    let w = dev.upload(&p.w_words).unwrap();
    let mut o = dev.alloc_zeros::<f32>(p.shape.out_len()).unwrap();
    dev.lowrank(
        &p.shape,
        DeviceAct::Codes(&xs),
        Fmt::Int8,
        DeviceScale::Param(s),
        &w,
        p.w_scale,
        1,
        Epilogue::default(),
        DeviceOut::F32(&mut o),
    )
    .unwrap();
    assert_exact(
        "caller-allocated input",
        &expected,
        &dev.download(&o).unwrap(),
    );
}

#[test]
fn a_stream_or_buffer_of_another_context_is_a_typed_error() {
    let Some(dev) = device() else { return };
    let other = CudaContext::new_non_primary(0, 0).unwrap();
    let other_stream = other.new_stream().unwrap();
    let err = CudaDevice::from_stream(dev.context().clone(), other_stream.clone()).unwrap_err();
    assert!(matches!(err, LowbitError::WrongDevice { .. }), "{err:?}");
    // A buffer of the other context: rejected before anything is launched.
    let mut rng = Rng::new(2);
    let p = lowrank_problem(&mut rng, 5, 1, 16, 8);
    let codes = vec![1i32; p.shape.x_len()];
    let foreign: CudaSlice<i32> = other_stream.clone_htod(&codes).unwrap();
    let w = dev.upload(&p.w_words).unwrap();
    let mut out = dev.upload(&vec![f32::NAN; p.shape.out_len()]).unwrap();
    let err = dev
        .lowrank(
            &p.shape,
            DeviceAct::Codes(&foreign),
            Fmt::Int8,
            DeviceScale::Param(0.1),
            &w,
            p.w_scale,
            1,
            Epilogue::default(),
            DeviceOut::F32(&mut out),
        )
        .unwrap_err();
    assert!(matches!(err, LowbitError::WrongDevice { .. }), "{err:?}");
    assert!(
        dev.download(&out).unwrap().iter().all(|v| v.is_nan()),
        "nothing may be written on error"
    );
}

/// x (f32) → device scale → packed words → lowrank (device scale buffer) → decoder tail fused
/// from f32 with a computed scale: everything stays on the device; each stage is checked.
#[test]
fn device_resident_chaining() {
    let Some(dev) = device() else { return };
    let mut rng = Rng::new(3);
    let (m, heads, d, n) = (40, 2, 64, 96);
    let lr = lowrank_problem(&mut rng, m, heads, d, n);
    let dec = decoder_problem(&mut rng, m, heads, n, d);
    let x = rng.normals(lr.shape.x_len(), 1.0);

    let xd = dev.upload(&x).unwrap();
    let mut s1 = dev.upload(&[f32::NAN]).unwrap();
    dev.absmean_scale(&xd, Fmt::Int8, &mut s1).unwrap();
    let qshape = QuantizeShape::new(m, d).unwrap();
    let mut words = dev.alloc_zeros::<u32>(qshape.words_len()).unwrap();
    dev.quantize_pack_i8x4(&xd, qshape, Fmt::Int8, DeviceScale::Buffer(&s1), &mut words)
        .unwrap();
    let wl = dev.upload(&lr.w_words).unwrap();
    let mut hidden = dev.alloc_zeros::<f32>(lr.shape.out_len()).unwrap();
    dev.lowrank(
        &lr.shape,
        DeviceAct::Packed(&words),
        Fmt::Int8,
        DeviceScale::Buffer(&s1),
        &wl,
        lr.w_scale,
        1,
        Epilogue {
            relu: true,
            ..Default::default()
        },
        DeviceOut::F32(&mut hidden),
    )
    .unwrap();
    let wd = dev.upload(&dec.w_words).unwrap();
    let mut s2 = dev.upload(&[f32::NAN]).unwrap();
    let mut out = dev.upload(&vec![f32::NAN; dec.shape.out_len()]).unwrap();
    dev.decoder_tail(
        &dec.shape,
        DeviceAct::F32(&hidden),
        Fmt::Uint8PosExp,
        DeviceScale::Compute(&mut s2),
        &wd,
        dec.w_scale,
        127,
        Epilogue::default(),
        DeviceOut::F32(&mut out),
    )
    .unwrap();
    let out = dev.download(&out).unwrap();

    let a1 = dev.download(&s1).unwrap()[0];
    let r1 = activation_scale(&x, Fmt::Int8).unwrap().unwrap();
    assert!((a1 - r1).abs() <= 1e-6 * r1, "scale {a1} vs {r1}");
    let c1 = codes_of(&x, Fmt::Int8, a1);
    let h = reference::lowrank_projection_codes(&lr.shape, &c1, &lr.w_codes, a1, lr.w_scale)
        .unwrap()
        .into_iter()
        .map(|v| v.max(0.0))
        .collect::<Vec<_>>();
    assert_exact("hidden", &h, &dev.download(&hidden).unwrap());
    let a2 = dev.download(&s2).unwrap()[0];
    let r2 = activation_scale(&h, Fmt::Uint8PosExp).unwrap().unwrap();
    assert!((a2 - r2).abs() <= 1e-6 * r2, "scale {a2} vs {r2}");
    let c2 = codes_of(&h, Fmt::Uint8PosExp, a2);
    let expected =
        reference::decoder_tail_codes(&dec.shape, &c2, &dec.w_codes, a2, dec.w_scale).unwrap();
    assert_exact("decoder output", &expected, &out);
}

/// Token-by-token decoding queued back to back with no sync: x -> relu(lowrank(x)) ->
/// decoder_tail -> x, 8 steps, at M = 1 and 8 (the dp4a and tensor-core small-M kernels; with
/// frozen weights the tensor-core ones take M = 1 too, so the dp4a family once more on its
/// own), with each programmatic dependent launch mode (off below sm_90), with and without
/// frozen weights (`CudaDevice::with_frozen_weights`: the weights loaded before the wait).
/// Every kernel reads the previous kernel's output and every buffer starts as NaN, so a kernel
/// that read its input before its predecessor finished would show: each step is checked bit
/// for bit against the reference on the device's own inputs.
#[test]
fn small_m_chain_back_to_back() {
    const STEPS: usize = 8;
    let (heads, d, n) = (4, 256, 512);
    let (s_x, s_h) = (0.05f32, 0.01f32);
    for (pdl, frozen, dp4a) in [
        (Pdl::AfterWait, false, false),
        (Pdl::Early, false, false),
        (Pdl::Off, false, false),
        (Pdl::AfterWait, true, false),
        (Pdl::Early, true, false),
        (Pdl::AfterWait, true, true),
    ] {
        let Some(dev) = device() else { return };
        let mut dev = dev
            .with_programmatic_launch(pdl)
            .with_frozen_weights(frozen);
        if dp4a {
            dev = dev.with_family(KernelFamily::Dp4a).unwrap();
        }
        println!(
            "programmatic launch: {:?}, frozen weights: {frozen}, {:?}",
            dev.programmatic_launch(),
            dev.family()
        );
        for m in [1, 8] {
            let mut rng = Rng::new(40 + m as u64);
            let lr = lowrank_problem(&mut rng, m, heads, d, n);
            let mut dec = decoder_problem(&mut rng, m, heads, n, d);
            dec.w_scale = 0.001;
            let (wl, wd) = (
                dev.upload(&lr.w_words).unwrap(),
                dev.upload(&dec.w_words).unwrap(),
            );
            let mut xs = vec![dev.upload(&rng.normals(lr.shape.x_len(), 1.0)).unwrap()];
            let mut hs = Vec::new();
            for _ in 0..STEPS {
                let mut h = dev.upload(&vec![f32::NAN; lr.shape.out_len()]).unwrap();
                let relu = Epilogue {
                    relu: true,
                    ..Default::default()
                };
                let x = xs.last().unwrap();
                dev.lowrank(
                    &lr.shape,
                    DeviceAct::F32(x),
                    Fmt::Int8,
                    DeviceScale::Param(s_x),
                    &wl,
                    lr.w_scale,
                    1,
                    relu,
                    DeviceOut::F32(&mut h),
                )
                .unwrap();
                let mut y = dev.upload(&vec![f32::NAN; dec.shape.out_len()]).unwrap();
                dev.decoder_tail(
                    &dec.shape,
                    DeviceAct::F32(&h),
                    Fmt::Int8,
                    DeviceScale::Param(s_h),
                    &wd,
                    dec.w_scale,
                    127,
                    Epilogue::default(),
                    DeviceOut::F32(&mut y),
                )
                .unwrap();
                hs.push(h);
                xs.push(y);
            }
            for i in 0..STEPS {
                let x = dev.download(&xs[i]).unwrap();
                let h = dev.download(&hs[i]).unwrap();
                let c = codes_of(&x, Fmt::Int8, s_x);
                let eh: Vec<f32> = reference::lowrank_projection_codes(
                    &lr.shape,
                    &c,
                    &lr.w_codes,
                    s_x,
                    lr.w_scale,
                )
                .unwrap()
                .into_iter()
                .map(|v| v.max(0.0))
                .collect();
                assert_exact(
                    &format!("pdl {pdl:?} frozen {frozen} M {m} step {i} hidden"),
                    &eh,
                    &h,
                );
                let ch = codes_of(&h, Fmt::Int8, s_h);
                let ey =
                    reference::decoder_tail_codes(&dec.shape, &ch, &dec.w_codes, s_h, dec.w_scale)
                        .unwrap();
                let y = dev.download(&xs[i + 1]).unwrap();
                assert_exact(
                    &format!("pdl {pdl:?} frozen {frozen} M {m} step {i} output"),
                    &ey,
                    &y,
                );
                assert!(ey.iter().any(|&v| v != 0.0), "step {i}: degenerate data");
            }
        }
    }
}

#[test]
fn modules_are_compiled_once_and_reused() {
    let Some(dev) = device() else { return };
    let mut rng = Rng::new(4);
    let p = lowrank_problem(&mut rng, 50, 2, 32, 64);
    let codes: Vec<i32> = (0..p.shape.x_len()).map(|i| (i % 15) as i32 - 7).collect();
    let before = dev.compilations();
    let first = run_lowrank_codes(&dev, &p, &codes, Fmt::Int4Exp, 0.5);
    let after_first = dev.compilations();
    assert!(after_first > before, "the first launch compiles its module");
    for _ in 0..3 {
        let again = run_lowrank_codes(&dev, &p, &codes, Fmt::Int4Exp, 0.5);
        assert_exact("repeat", &first, &again);
    }
    assert_eq!(
        dev.compilations(),
        after_first,
        "repeats reuse the cached module"
    );
    // Another M in the same (tiled) class reuses it too.
    let q = lowrank_problem(&mut rng, 77, 2, 32, 64);
    let codes: Vec<i32> = vec![3; q.shape.x_len()];
    run_lowrank_codes(&dev, &q, &codes, Fmt::Int4Exp, 0.5);
    assert_eq!(dev.compilations(), after_first);
}

/// M = B·T ≤ 16 takes the small-M path (weights streamed once); every format and input.
#[test]
fn small_m_path_is_bit_exact() {
    let Some(dev) = device() else { return };
    let mut rng = Rng::new(5);
    for m in [1, 2, 3, 8, 13, 16] {
        let lr = lowrank_problem(&mut rng, m, 4, 256, 1030);
        let dec = decoder_problem(&mut rng, m, 4, 1030, 256);
        for fmt in [Fmt::Int8, Fmt::Int4Exp, Fmt::Uint8PosExp] {
            let x = rng.normals(lr.shape.x_len(), 1.0);
            let s = activation_scale(&x, fmt).unwrap().unwrap();
            let codes = codes_of(&x, fmt, s);
            let out = run_lowrank_codes(&dev, &lr, &codes, fmt, s);
            let exp =
                reference::lowrank_projection_codes(&lr.shape, &codes, &lr.w_codes, s, lr.w_scale)
                    .unwrap();
            assert_exact(&format!("small-M lowrank m={m} {fmt:?}"), &exp, &out);

            let y = rng.normals(dec.shape.y_len(), 1.0);
            let yd = dev.upload(&y).unwrap();
            let wd = dev.upload(&dec.w_words).unwrap();
            let mut sd = dev.upload(&[f32::NAN]).unwrap();
            let mut o = dev.upload(&vec![f32::NAN; dec.shape.out_len()]).unwrap();
            dev.decoder_tail(
                &dec.shape,
                DeviceAct::F32(&yd),
                fmt,
                DeviceScale::Compute(&mut sd),
                &wd,
                dec.w_scale,
                127,
                Epilogue::default(),
                DeviceOut::F32(&mut o),
            )
            .unwrap();
            let a = dev.download(&sd).unwrap()[0];
            let c = codes_of(&y, fmt, a);
            let exp = reference::decoder_tail_codes(&dec.shape, &c, &dec.w_codes, a, dec.w_scale)
                .unwrap();
            assert_exact(
                &format!("small-M decoder m={m} {fmt:?}"),
                &exp,
                &dev.download(&o).unwrap(),
            );
        }
    }
}

/// A [`DecoderCase`] run twice on `dev` from NaN-poisoned outputs (a split-K accumulator is
/// reused), each run bit for bit against the reference.
fn decoder_twice_exact(
    dev: &CudaDevice,
    rng: &mut Rng,
    what: &str,
    mhld: (usize, usize, usize, usize),
) {
    let case = DecoderCase::new(dev, rng, mhld);
    for run in 0..2 {
        assert_exact(&format!("{what} run {run}"), &case.expected, &case.run(dev));
    }
}

/// Every small-M grid shape (`LOWBIT_CUDA_SMALL`: the low-rank block's column warps, the
/// decoder's split count through its blocks per SM) on both families gives the reference's
/// bits, from NaN-poisoned outputs, run after run on the same accumulator.
#[test]
fn small_m_grid_shapes_are_bit_exact() {
    let mut rng = Rng::new(12);
    for (cw, b, m1) in [(8, 1, 2), (1, 3, 4), (2, 8, 4), (4, 2, 2)] {
        let shape = SmallShape {
            lowrank_cw: cw,
            blocks_per_sm: b,
            m1_blocks: m1,
        };
        for mma in [false, true] {
            let Some(dev) = device() else { return };
            let dev = dev.with_small_shape(shape).with_small_mma(mma);
            for m in [1, 5, 16] {
                let what = format!("{cw}x{b}x{m1} small mma {mma} m={m}");
                let lr = lowrank_problem(&mut rng, m, 4, 256, 1030);
                let x = rng.normals(lr.shape.x_len(), 1.0);
                let s = activation_scale(&x, Fmt::Int8).unwrap().unwrap();
                let codes = codes_of(&x, Fmt::Int8, s);
                let exp = reference::lowrank_projection_codes(
                    &lr.shape,
                    &codes,
                    &lr.w_codes,
                    s,
                    lr.w_scale,
                )
                .unwrap();
                let out = run_lowrank_codes(&dev, &lr, &codes, Fmt::Int8, s);
                assert_exact(&format!("{what} lowrank"), &exp, &out);

                let what = format!("{what} decoder");
                decoder_twice_exact(&dev, &mut rng, &what, (m, 4, 1030, 256));
            }
        }
    }
}

/// Every CTA shape of the small-M tensor-core decoder with i8x4 weights
/// (`LOWBIT_CUDA_SMALL_DECODER`), at one and two blocks per SM (so several split counts),
/// gives the reference's bits from NaN-poisoned outputs, run after run on the same
/// accumulator; D = 200 leaves a partial column tile.
#[test]
fn small_mma_decoder_shapes_are_bit_exact() {
    let mut rng = Rng::new(13);
    for ms in SmallMmaDecoder::with_candidates() {
        for b in [1, 2] {
            let Some(dev) = mma_device() else { return };
            let shape = SmallShape {
                blocks_per_sm: b,
                ..SmallShape::DEFAULT
            };
            let dev = dev
                .with_small_shape(shape)
                .with_small_mma(true)
                .with_small_mma_decoder(ms);
            for (m, heads, l, d) in [(1, 4, 1030, 256), (5, 1, 2048, 200), (16, 4, 1030, 256)] {
                let what = format!("{ms} b={b} m={m} H={heads} L={l} D={d}");
                decoder_twice_exact(&dev, &mut rng, &what, (m, heads, l, d));
            }
        }
    }
}

/// A small-M decoder CTA that fails `SmallMmaDecoder::check` (one k-warp, whose stores would
/// skip the split-K sum) is refused with a typed error naming it; the output is untouched.
#[test]
fn small_mma_decoder_rejects_a_bad_shape() {
    let Some(dev) = mma_device() else { return };
    let bad = SmallMmaDecoder {
        kw: 1,
        ..SmallMmaDecoder::DEFAULT
    };
    let dev = dev.with_small_mma(true).with_small_mma_decoder(bad);
    let case = DecoderCase::new(&dev, &mut Rng::new(14), (4, 2, 64, 64));
    let mut out = dev
        .upload(&vec![f32::NAN; case.dec.shape.out_len()])
        .unwrap();
    let err = case.run_into(&dev, &mut out).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("small-M decoder CTA") && text.contains("1x1x64x1x64"),
        "{text}"
    );
    assert!(dev.download(&out).unwrap().iter().all(|v| v.is_nan()));
}

/// The weight-stream floor microbenchmark runs (under each launch mode) and names bad
/// arguments.
#[test]
fn stream_floor_runs_and_rejects_bad_arguments() {
    for pdl in [Pdl::AfterWait, Pdl::Off] {
        let Some(dev) = device() else { return };
        let dev = dev.with_programmatic_launch(pdl);
        let m = stream_floor(&dev, (1 << 20) + 5, 3, 1, 3).unwrap();
        assert_eq!(m.work, (1 << 20) as f64);
        assert!(m.seconds > 0.0 && m.seconds.is_finite(), "{m:?}");
        for (bytes, copies, bps) in [(8, 3, 1), (1 << 20, 0, 1), (1 << 20, 3, 0)] {
            assert!(
                matches!(
                    stream_floor(&dev, bytes, copies, bps, 3),
                    Err(LowbitError::InvalidArgument { .. })
                ),
                "{bytes} {copies} {bps}"
            );
        }
    }
}

/// The decoder's split-K partials are summed in a fixed order: same bits on every run, on
/// the tiled (M > 16) and the small-M paths, and equal to the reference.
#[test]
fn split_k_is_deterministic() {
    let Some(dev) = device() else { return };
    let mut rng = Rng::new(6);
    for m in [8, 300] {
        let case = DecoderCase::new(&dev, &mut rng, (m, 4, 2048, 256));
        let mut first: Option<Vec<u32>> = None;
        for run in 0..5 {
            let out = case.run(&dev);
            assert_exact(&format!("split-K m={m} run {run}"), &case.expected, &out);
            let bits: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
            match &first {
                None => first = Some(bits),
                Some(f) => assert_eq!(f, &bits, "split-K m={m}: run {run} differs"),
            }
        }
    }
}

/// f32 input with a computed scale at M ≤ 16 on the small-M low-rank kernels (tensor-core
/// and dp4a): with `CudaDevice::with_small_inline_scale` the kernel works out the absmean
/// scale itself (no reduction kernel first). The scale it writes and the outputs must have the bits of the
/// two-kernel path, and match the reference at that scale: x of 1 to 8 reduction blocks
/// (n = 18 to 16384), input heads 1 and H, x 16-byte aligned or not (float4 or scalar sums),
/// signed and uint8pos formats, and a ReLU epilogue; outputs and scale start as NaN.
#[test]
fn small_lowrank_inline_scale_same_bits() {
    // (kernel module, two-kernel device, inline device): the tensor-core kernel at every M (M
    // = 1 too), then the dp4a family's.
    let mut pairs = Vec::new();
    if let (Some(two), Some(one)) = (mma_device(), mma_device()) {
        let one = one.with_small_mma(true).with_small_inline_scale(true);
        pairs.push((
            "lowrank_mma.cu",
            two.with_small_mma(true).with_small_inline_scale(false),
            one,
        ));
    }
    let (Some(two), Some(one)) = (device(), device()) else {
        return;
    };
    let dp4a = |d: CudaDevice| d.with_family(KernelFamily::Dp4a).unwrap();
    pairs.push((
        "lowrank.cu",
        dp4a(two).with_small_inline_scale(false),
        dp4a(one).with_small_inline_scale(true),
    ));
    for (module, two, one) in &pairs {
        small_inline_scale_pair(module, two, one);
    }
}

/// A computed scale worked out two ways, `one` and `two` (scale, outputs), from the f32
/// input `input`: the same scale bits and outputs, and the reference's outputs
/// (`reference(codes, scale)`, then `epilogue`) at that scale.
fn assert_scale_pair(
    what: &str,
    (s_one, o_one): (f32, Vec<f32>),
    (s_two, o_two): (f32, Vec<f32>),
    input: &[f32],
    fmt: Fmt,
    epilogue: Epilogue,
    reference: impl FnOnce(&[i32], f32) -> Vec<f32>,
) {
    assert_eq!(s_one.to_bits(), s_two.to_bits(), "{what}: scale");
    assert_exact(&format!("{what}: against two kernels"), &o_two, &o_one);
    let codes = codes_of(input, fmt, s_one);
    let exp: Vec<f32> = reference(&codes, s_one)
        .into_iter()
        .map(|v| epilogue.apply(v))
        .collect();
    assert_exact(&format!("{what}: against the reference"), &exp, &o_one);
}

fn small_inline_scale_pair(module: &str, two: &CudaDevice, one: &CudaDevice) {
    assert!(one.small_inline_scale() && !two.small_inline_scale());
    let mut rng = Rng::new(17);
    for (b, hin, t, d, heads, n) in [
        (1, 1, 1, 18, 3, 9),
        (1, 1, 1, 256, 4, 130),
        (1, 1, 16, 256, 4, 256),
        (4, 4, 4, 256, 4, 64),
        (3, 3, 5, 250, 3, 70),
    ] {
        let shape = LowrankShape::new([b, hin, t, d], [heads, d, n], n).unwrap();
        let w_codes = rng.ternary(shape.w_len());
        let w_words = pack_lowrank_weight_codes_i8x4(&w_codes, heads, d, n).unwrap();
        let x = rng.normals(shape.x_len() + 1, 1.5);
        for (fmt, off, relu) in [
            (Fmt::Int8, 0, false),
            (Fmt::Int8, 1, true),
            (Fmt::Uint8PosExp, 0, false),
            (Fmt::Uint8PosExp, 1, false),
        ] {
            let epilogue = Epilogue {
                relu,
                ..Epilogue::default()
            };
            let what = format!(
                "{module}: x {:?} {fmt:?} offset {off} relu {relu}",
                shape.x_shape()
            );
            let run = |dev: &CudaDevice| -> (f32, Vec<f32>) {
                run_raw_f32(dev, &x, &w_words, shape.out_len(), |xp, wp, sp, op| {
                    // SAFETY: live allocations of this context: x holds x_len floats past
                    // `off`, the weights and output the shape's extents, the scale one float.
                    unsafe {
                        dev.lowrank_raw(
                            &shape,
                            RawAct::F32(xp + 4 * off),
                            fmt,
                            RawScale::Compute(sp),
                            wp,
                            0.02,
                            1,
                            epilogue,
                            op,
                        )
                    }
                    .unwrap();
                })
            };
            let xs = &x[off as usize..off as usize + shape.x_len()];
            assert_scale_pair(&what, run(one), run(two), xs, fmt, epilogue, |codes, s| {
                reference::lowrank_projection_codes(&shape, codes, &w_codes, s, 0.02).unwrap()
            });
        }
    }
    let inline8 = crate::compiled(one, &[module, "LB_MS_SCALE_BLOCKS=8"])
        || crate::compiled(one, &[module, "LB_SM_SCALE_BLOCKS=8"]);
    assert!(
        inline8,
        "{module}: no inline-scale variant of 8 blocks was compiled"
    );
}

/// The `unsafe` raw-address entry points on allocations the caller owns.
#[test]
fn raw_pointer_entry_points() {
    let Some(dev) = device() else { return };
    let mut rng = Rng::new(7);
    let p = lowrank_problem(&mut rng, 21, 3, 40, 50);
    let x = rng.normals(p.shape.x_len(), 1.0);
    let (a, out) = run_raw_f32(&dev, &x, &p.w_words, p.shape.out_len(), |xp, wp, sp, op| {
        // SAFETY: every address is a live allocation of this context with the shape's extent.
        unsafe {
            dev.lowrank_raw(
                &p.shape,
                RawAct::F32(xp),
                Fmt::Int8,
                RawScale::Compute(sp),
                wp,
                p.w_scale,
                1,
                Epilogue::default(),
                op,
            )
            .unwrap();
            // A null address is a typed error, not a launch.
            let err = dev
                .lowrank_raw(
                    &p.shape,
                    RawAct::F32(0),
                    Fmt::Int8,
                    RawScale::Param(0.1),
                    wp,
                    p.w_scale,
                    1,
                    Epilogue::default(),
                    op,
                )
                .unwrap_err();
            assert!(
                matches!(err, LowbitError::InvalidArgument { .. }),
                "{err:?}"
            );
        }
    });
    let codes = codes_of(&x, Fmt::Int8, a);
    let expected =
        reference::lowrank_projection_codes(&p.shape, &codes, &p.w_codes, a, p.w_scale).unwrap();
    assert_exact("raw lowrank", &expected, &out);
}

/// BDH-sized shapes once each (tiled lowrank, split-K decoder), fused from f32.
#[test]
fn bdh_shapes_fused_from_f32() {
    let Some(dev) = device() else { return };
    let mut rng = Rng::new(8);
    let m = 512;
    let lr = lowrank_problem(&mut rng, m, 4, 256, 8192);
    let x = rng.normals(lr.shape.x_len(), 1.0);
    let xd = dev.upload(&x).unwrap();
    let wl = dev.upload(&lr.w_words).unwrap();
    let mut s = dev.upload(&[f32::NAN]).unwrap();
    let mut o = dev.upload(&vec![f32::NAN; lr.shape.out_len()]).unwrap();
    dev.lowrank(
        &lr.shape,
        DeviceAct::F32(&xd),
        Fmt::Int8,
        DeviceScale::Compute(&mut s),
        &wl,
        lr.w_scale,
        1,
        Epilogue::default(),
        DeviceOut::F32(&mut o),
    )
    .unwrap();
    let a = dev.download(&s).unwrap()[0];
    let codes = codes_of(&x, Fmt::Int8, a);
    let exp =
        reference::lowrank_projection_codes(&lr.shape, &codes, &lr.w_codes, a, lr.w_scale).unwrap();
    assert_exact("BDH lowrank m=512", &exp, &dev.download(&o).unwrap());

    let dec = decoder_problem(&mut rng, 64, 4, 8192, 256);
    let y: Vec<f32> = rng
        .normals(dec.shape.y_len(), 1.0)
        .into_iter()
        .map(|v| v.max(0.0))
        .collect();
    let yd = dev.upload(&y).unwrap();
    let wd = dev.upload(&dec.w_words).unwrap();
    let mut s2 = dev.upload(&[f32::NAN]).unwrap();
    let mut o2 = dev.upload(&vec![f32::NAN; dec.shape.out_len()]).unwrap();
    dev.decoder_tail(
        &dec.shape,
        DeviceAct::F32(&yd),
        Fmt::Uint8PosExp,
        DeviceScale::Compute(&mut s2),
        &wd,
        dec.w_scale,
        127,
        Epilogue::default(),
        DeviceOut::F32(&mut o2),
    )
    .unwrap();
    let a2 = dev.download(&s2).unwrap()[0];
    let c2 = codes_of(&y, Fmt::Uint8PosExp, a2);
    let exp2 =
        reference::decoder_tail_codes(&dec.shape, &c2, &dec.w_codes, a2, dec.w_scale).unwrap();
    assert_exact("BDH decoder m=64", &exp2, &dev.download(&o2).unwrap());
}

/// A computed scale inside a CUDA graph: each replay sums its own input afresh. The graph of
/// one low-rank projection and one decoder tail from f32 input (`DeviceScale::Compute`) is
/// captured once, then replayed on new inputs written into the same buffers, each round's
/// a different magnitude, into NaN-poisoned outputs: every replay's scale must be its own
/// input's (the reduction kernel's or the fused packing launch's grid barrier, which must
/// not carry state from one replay to the next) and its outputs the reference's at that
/// scale, bit for bit. Small M (the inline scale, the reduction kernel) and large M (the
/// tensor-core chain, `mma_prep_scale_a` on sm_90, whose grid fills the device at M = 8192),
/// on the device's plan and on dp4a.
#[test]
fn graph_replays_compute_each_scale_afresh() {
    use lowbit_kernels::backend::cuda::microbench::capture_graph;
    const ROUNDS: usize = 5;
    let Some(dev) = device() else { return };
    let dp4a = device().unwrap().with_family(KernelFamily::Dp4a).unwrap();
    for (dev, fam) in [(&dev, "plan"), (&dp4a, "dp4a")] {
        // (M, H, low-rank D and N, decoder L and D)
        for (m, heads, d, n, l, dd) in [
            (3, 4, 256, 320, 300, 256),
            (200, 3, 136, 264, 520, 136),
            (8192, 1, 256, 8, 256, 8),
        ] {
            let mut rng = Rng::new(90 + m as u64);
            let lr = lowrank_problem(&mut rng, m, heads, d, n);
            let dec = decoder_problem(&mut rng, m, heads, l, dd);
            let wl = dev.upload(&lr.w_words).unwrap();
            let wd = dev.upload(&dec.w_words).unwrap();
            let mut x = dev.upload(&vec![1.0f32; lr.shape.x_len()]).unwrap();
            let mut y = dev.upload(&vec![1.0f32; dec.shape.y_len()]).unwrap();
            let mut sx = dev.upload(&[f32::NAN]).unwrap();
            let mut sy = dev.upload(&[f32::NAN]).unwrap();
            let mut ox = dev.upload(&vec![f32::NAN; lr.shape.out_len()]).unwrap();
            let mut oy = dev.upload(&vec![f32::NAN; dec.shape.out_len()]).unwrap();
            let graph = capture_graph(dev, 1, |_| {
                dev.lowrank(
                    &lr.shape,
                    DeviceAct::F32(&x),
                    Fmt::Int8,
                    DeviceScale::Compute(&mut sx),
                    &wl,
                    lr.w_scale,
                    1,
                    Epilogue::default(),
                    DeviceOut::F32(&mut ox),
                )?;
                dev.decoder_tail(
                    &dec.shape,
                    DeviceAct::F32(&y),
                    Fmt::Int8,
                    DeviceScale::Compute(&mut sy),
                    &wd,
                    dec.w_scale,
                    127,
                    Epilogue::default(),
                    DeviceOut::F32(&mut oy),
                )
            })
            .unwrap();
            for round in 0..ROUNDS {
                let what = format!("{fam} M {m} replay {round}");
                let std = 0.25 * 4f32.powi(round as i32);
                let xh = rng.normals(lr.shape.x_len(), std);
                let yh = rng.normals(dec.shape.y_len(), std);
                let stream = dev.stream();
                stream.memcpy_htod(&xh, &mut x).unwrap();
                stream.memcpy_htod(&yh, &mut y).unwrap();
                stream
                    .memcpy_htod(&vec![f32::NAN; lr.shape.out_len()], &mut ox)
                    .unwrap();
                stream
                    .memcpy_htod(&vec![f32::NAN; dec.shape.out_len()], &mut oy)
                    .unwrap();
                graph.launch().unwrap();
                dev.synchronize().unwrap();
                let (a, b) = (dev.download(&sx).unwrap()[0], dev.download(&sy).unwrap()[0]);
                for (label, s, input) in [("x", a, &xh), ("y", b, &yh)] {
                    let cpu = activation_scale(input, Fmt::Int8).unwrap().unwrap();
                    assert!(
                        ((s - cpu) / cpu).abs() <= 1e-6,
                        "{what}: scale of {label} {s} against {cpu} on the CPU"
                    );
                }
                let cx = codes_of(&xh, Fmt::Int8, a);
                let ex =
                    reference::lowrank_projection_codes(&lr.shape, &cx, &lr.w_codes, a, lr.w_scale)
                        .unwrap();
                assert_exact(
                    &format!("{what}: low-rank"),
                    &ex,
                    &dev.download(&ox).unwrap(),
                );
                let cy = codes_of(&yh, Fmt::Int8, b);
                let ey =
                    reference::decoder_tail_codes(&dec.shape, &cy, &dec.w_codes, b, dec.w_scale)
                        .unwrap();
                assert_exact(
                    &format!("{what}: decoder"),
                    &ey,
                    &dev.download(&oy).unwrap(),
                );
            }
        }
    }
}

/// An op that would grow the device's scratch inside a CUDA graph capture is refused with a
/// typed error naming the scratch (nothing is allocated in the capture); the same op then runs
/// uncaptured, bit for bit.
#[test]
fn graph_capture_refuses_to_grow_the_scratch() {
    use lowbit_kernels::backend::cuda::cudarc::driver::sys;
    let Some(dev) = device() else { return };
    let mut rng = Rng::new(77);
    // A low-rank problem of M rows from f32 with a computed scale, every buffer uploaded
    // (nothing may be allocated inside the capture): (problem, x, x, w, scale, output).
    let mut problem = |m: usize| {
        let p = lowrank_problem(&mut rng, m, 2, 64, 96);
        let x = rng.normals(p.shape.x_len(), 1.0);
        let bufs = (
            dev.upload(&x).unwrap(),
            dev.upload(&p.w_words).unwrap(),
            dev.upload(&[f32::NAN]).unwrap(),
            dev.upload(&vec![f32::NAN; p.shape.out_len()]).unwrap(),
        );
        (p, x, bufs)
    };
    type Bufs = (
        CudaSlice<f32>,
        CudaSlice<u32>,
        CudaSlice<f32>,
        CudaSlice<f32>,
    );
    let call = |p: &Lowrank, b: &mut Bufs| {
        dev.lowrank(
            &p.shape,
            DeviceAct::F32(&b.0),
            Fmt::Int8,
            DeviceScale::Compute(&mut b.2),
            &b.1,
            p.w_scale,
            1,
            Epilogue::default(),
            DeviceOut::F32(&mut b.3),
        )
    };
    // Warm up at M = 20 (kernels compiled, scratch sized), then capture M = 40.
    let (small, _, mut bs) = problem(20);
    call(&small, &mut bs).unwrap();
    let (big, xb, mut bb) = problem(40);
    dev.synchronize().unwrap();
    let stream = dev.stream();
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    let r = call(&big, &mut bb);
    let _ = stream.end_capture(sys::CUgraphInstantiate_flags(0));
    match r {
        Err(LowbitError::InvalidArgument {
            what: "scratch", ..
        }) => {}
        other => panic!("capture that grows the scratch: {other:?}"),
    }
    call(&big, &mut bb).unwrap();
    let a = dev.download(&bb.2).unwrap()[0];
    let codes = codes_of(&xb, Fmt::Int8, a);
    let exp = reference::lowrank_projection_codes(&big.shape, &codes, &big.w_codes, a, big.w_scale)
        .unwrap();
    let got = dev.download(&bb.3).unwrap();
    assert_exact("M = 40 after the refused capture", &exp, &got);
}

/// Each decoder case `(M, H, L, D)` with f32 input and a computed scale on `one` and on `two`
/// (random int8 weights as i8x4 words, or ternary weights as ternary2 fragments where `t2`):
/// the same scale bits and outputs, and the reference's outputs at that scale. Aligned and
/// misaligned y (float4 and scalar runs), int8 and uint8pos, a ReLU epilogue.
fn decoder_scale_pairs(
    one: &CudaDevice,
    two: &CudaDevice,
    seed: u64,
    t2: bool,
    cases: &[(usize, usize, usize, usize)],
) {
    let mut rng = Rng::new(seed);
    for &(m, heads, l, dd) in cases {
        let shape = DecoderTailShape::bdh(m, heads, l, dd).unwrap();
        let w_codes = if t2 {
            rng.ternary(shape.w_len())
        } else {
            rng.int8_codes(shape.w_len())
        };
        let mut w_words = pack_decoder_weight_codes_i8x4(&w_codes, heads, l, dd).unwrap();
        if t2 {
            w_words = pack_ternary2_fragments(&w_words, heads, shape.w_head_words(), dd).unwrap();
        }
        let y = rng.normals(shape.y_len() + 1, 1.0);
        for (fmt, off, relu) in [
            (Fmt::Int8, 0, false),
            (Fmt::Int8, 1, true),
            (Fmt::Uint8PosExp, 0, false),
        ] {
            let epilogue = Epilogue {
                relu,
                ..Epilogue::default()
            };
            let what = format!("M {m} H {heads} L {l} D {dd} {fmt:?} offset {off} relu {relu}");
            let run = |dev: &CudaDevice| -> (f32, Vec<f32>) {
                run_raw_f32(dev, &y, &w_words, shape.out_len(), |yp, wp, sp, op| {
                    let (weights, qmax) = if t2 {
                        (RawWeights::Ternary2(wp), 1)
                    } else {
                        (RawWeights::Words(wp), 127)
                    };
                    // SAFETY: live allocations of this context: y holds y_len floats past
                    // `off`, the weights and output the shape's extents, the scale one float.
                    unsafe {
                        dev.decoder_tail_weights_raw(
                            &shape,
                            RawAct::F32(yp + 4 * off),
                            fmt,
                            RawScale::Compute(sp),
                            weights,
                            0.003,
                            qmax,
                            epilogue,
                            op,
                        )
                    }
                    .unwrap();
                })
            };
            let ys = &y[off as usize..off as usize + shape.y_len()];
            assert_scale_pair(&what, run(one), run(two), ys, fmt, epilogue, |codes, s| {
                reference::decoder_tail_codes(&shape, codes, &w_codes, s, 0.003).unwrap()
            });
        }
    }
}

/// The dp4a small-M decoder's grid scale (`CudaDevice::with_decoder_grid_scale`): f32 input
/// with a computed scale, the CTAs splitting the reduction's blocks among them and meeting at
/// a grid barrier, against the reduction kernel first (`decoder_scale_pairs`): M = 1 to 8, one
/// to eight heads, one reduction block and more blocks than CTAs.
#[test]
fn small_decoder_grid_scale_same_bits() {
    let (Some(two), Some(one)) = (device(), device()) else {
        return;
    };
    let two = two
        .with_family(KernelFamily::Dp4a)
        .unwrap()
        .with_decoder_grid_scale(false);
    let one = one
        .with_family(KernelFamily::Dp4a)
        .unwrap()
        .with_decoder_grid_scale(true);
    // (M, H, L, D)
    let cases = [
        (1, 1, 37, 24),
        (1, 4, 8192, 256),
        (3, 2, 300, 72),
        (8, 4, 8192, 256),
        (5, 8, 8190, 8),
    ];
    decoder_scale_pairs(&one, &two, 23, false, &cases);
    let caps = one.caps().compute_capability;
    let grid = crate::compiled(&one, &["decoder_tail.cu", "LB_SM_GRID_SCALE="]);
    assert!(
        grid || caps < lowbit_kernels::caps::GRID_BARRIER_MIN_SM,
        "no grid-scale variant was compiled on compute capability {caps:?}"
    );
}

/// The small-M tensor-core decoder's grid scale on ternary2 weights
/// (`CudaDevice::with_small_mma_grid_scale`), f32 input that the CTAs stage, against the
/// reduction kernel first (`decoder_scale_pairs`): M = 1 to 16, one to eight heads, L = 37 to
/// 8190.
#[test]
fn small_mma_decoder_grid_scale_same_bits() {
    let (Some(two), Some(one)) = (mma_device(), mma_device()) else {
        return;
    };
    let two = two.with_small_mma_grid_scale(false);
    let one = one.with_small_mma_grid_scale(true);
    // (M, H, L, D)
    let cases = [
        (1, 4, 8192, 256),
        (3, 2, 300, 72),
        (16, 1, 37, 24),
        (8, 8, 8190, 8),
    ];
    decoder_scale_pairs(&one, &two, 29, true, &cases);
    let grid = crate::compiled(&one, &["decoder_tail_mma.cu", "LB_MS_GRID_SCALE="]);
    assert!(
        grid,
        "no grid-scale variant of the small-M tensor-core decoder was compiled"
    );
    let none = crate::compiled(&two, &["LB_MS_GRID_SCALE="]);
    assert!(!none, "the grid scale ran with it off");
}
