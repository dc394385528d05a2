//! Tests specific to the WGSL backend: both dot4 variants bit-equal (and equal to the
//! reference), a wrapped caller-owned device, device-resident chaining without host round
//! trips, the pipeline cache, every tile shape, exact rounding at k+0.5, typed errors that
//! leave outputs untouched, GPU timestamps. SKIPPED without an adapter (fails with
//! `LOWBIT_REQUIRE=wgpu`).

use std::sync::OnceLock;

use lowbit_kernels::backend::wgpu::{
    DeviceAct, DeviceOutput, DeviceScale, Dot4Mode, F32Route, TileConfig, WgpuBackend, WgpuDevice,
    WgpuOptions,
};
use lowbit_kernels::backend::{Backend, ProjectionArgs};
use lowbit_kernels::config::LowBitActivationFormat as Fmt;
use lowbit_kernels::ops::quantize::QuantizeShape;
use lowbit_kernels::ops::{
    ActInput, DecoderTailShape, Epilogue, LowrankShape, OutputDType, ScaleSource,
};
use lowbit_kernels::pack::pack_rows_i32_to_i8x4;
use lowbit_kernels::quant::{activation_code, activation_scale};
use lowbit_kernels::testing::{self, POISON_F32, Rng, compare_f32};
use lowbit_kernels::{
    BackendKind, LowbitError, pack_decoder_weight_codes_i8x4, pack_lowrank_weight_codes_i8x4,
    reference,
};

fn options(dot4: Dot4Mode) -> WgpuOptions {
    WgpuOptions {
        dot4,
        ..Default::default()
    }
}

/// The shared native / polyfill devices (opened once), or `None` (skipped).
fn device(dot4: Dot4Mode) -> Option<&'static WgpuDevice> {
    static NATIVE: OnceLock<Result<WgpuDevice, String>> = OnceLock::new();
    static POLY: OnceLock<Result<WgpuDevice, String>> = OnceLock::new();
    let cell = if dot4 == Dot4Mode::Polyfill {
        &POLY
    } else {
        &NATIVE
    };
    let opened = cell.get_or_init(|| WgpuDevice::new(options(dot4)).map_err(|e| e.to_string()));
    match opened {
        Ok(d) => Some(d),
        Err(reason) => {
            if let Err(msg) = testing::skip_or_fail(BackendKind::Wgpu, reason) {
                panic!("{msg}");
            }
            None
        }
    }
}

fn codes_of(x: &[f32], format: Fmt, s: f32) -> Vec<i32> {
    x.iter().map(|&v| activation_code(v, s, format)).collect()
}

fn assert_bits(what: &str, expected: &[f32], actual: &[f32]) {
    let r = compare_f32(expected, actual);
    assert!(r.bit_exact(), "{what}: not bit-exact: {r}");
}

#[derive(Clone, Copy, Debug)]
enum Problem {
    Lowrank(LowrankShape),
    Decoder(DecoderTailShape),
}

impl Problem {
    fn k(&self) -> usize {
        match self {
            Self::Lowrank(s) => s.embd,
            Self::Decoder(s) => s.latent,
        }
    }
    fn in_len(&self) -> usize {
        match self {
            Self::Lowrank(s) => s.x_len(),
            Self::Decoder(s) => s.y_len(),
        }
    }
    fn w_len(&self) -> usize {
        match self {
            Self::Lowrank(s) => s.w_len(),
            Self::Decoder(s) => s.w_len(),
        }
    }
    fn pack_w(&self, w: &[i8]) -> Vec<u32> {
        match self {
            Self::Lowrank(s) => pack_lowrank_weight_codes_i8x4(w, s.heads, s.embd, s.latent),
            Self::Decoder(s) => {
                pack_decoder_weight_codes_i8x4(w, s.heads, s.latent_per_head, s.dim)
            }
        }
        .unwrap()
    }
    fn reference(&self, codes: &[i32], w: &[i8], a: f32, ws: f32) -> Vec<f32> {
        match self {
            Self::Lowrank(s) => reference::lowrank_projection_codes(s, codes, w, a, ws),
            Self::Decoder(s) => reference::decoder_tail_codes(s, codes, w, a, ws),
        }
        .unwrap()
    }
    fn call(&self, b: &dyn Backend, args: &ProjectionArgs<'_>) -> Vec<f32> {
        match self {
            Self::Lowrank(s) => b.lowrank(s, args),
            Self::Decoder(s) => b.decoder_tail(s, args),
        }
        .unwrap()
        .values
    }
}

fn problems() -> Vec<Problem> {
    vec![
        Problem::Lowrank(LowrankShape::new([2, 1, 9, 37], [3, 37, 70], 67).unwrap()),
        Problem::Lowrank(LowrankShape::new([1, 2, 130, 64], [2, 64, 140], 140).unwrap()),
        Problem::Decoder(DecoderTailShape::new([2, 3, 7, 45], [3 * 47, 66]).unwrap()),
        Problem::Decoder(DecoderTailShape::new([1, 2, 131, 300], [600, 130]).unwrap()),
    ]
}

/// Every integer format × input kind on both dot4 variants: bit-equal to each other and to
/// the reference.
#[test]
fn dot4_variants_agree_with_each_other_and_the_reference() {
    let (Some(native), Some(poly)) = (device(Dot4Mode::Native), device(Dot4Mode::Polyfill)) else {
        return;
    };
    println!(
        "native device: {} (dot4 lowers to OpSDot: {:?}); polyfill device: {:?}",
        native.name(),
        native.native_dot4(),
        poly.dot4_mode()
    );
    let backends = [
        WgpuBackend::from_device(native.clone()),
        WgpuBackend::from_device(poly.clone()),
    ];
    let mut rng = Rng::new(11);
    for p in problems() {
        let w = rng.int8_codes(p.w_len());
        let words = p.pack_w(&w);
        let x = rng.normals(p.in_len(), 1.0);
        for format in [Fmt::Int8, Fmt::Int4Exp, Fmt::Uint8PosExp] {
            let s = activation_scale(&x, format).unwrap().unwrap();
            let codes = codes_of(&x, format, s);
            let expected = p.reference(&codes, &w, s, 0.03);
            let rows = p.in_len() / p.k();
            let packed = pack_rows_i32_to_i8x4("t", &codes, rows, p.k()).ok();
            let mut inputs = vec![ActInput::Codes(&codes), ActInput::F32(&x)];
            if format.is_signed() {
                inputs.push(ActInput::Packed(packed.as_deref().unwrap()));
            }
            for input in inputs {
                let args = ProjectionArgs {
                    input,
                    format,
                    scale: ScaleSource::Param(s),
                    w_words: &words,
                    w_scale: 0.03,
                    w_qmax: 127,
                    epilogue: Epilogue::default(),
                };
                let a = p.call(&backends[0], &args);
                let b = p.call(&backends[1], &args);
                let what = format!("{p:?} {format:?} {input:?}");
                assert_bits(&format!("native {what}"), &expected, &a);
                assert_bits(&format!("polyfill {what}"), &expected, &b);
            }
        }
    }
}

/// Every tile shape (including K steps of 4..32 words) gives the reference's bits.
#[test]
fn every_tile_config_is_exact() {
    let Some(base) = device(Dot4Mode::Native) else {
        return;
    };
    println!(
        "adapter limits: workgroup storage {} B, invocations {}",
        base.limits().max_compute_workgroup_storage_size,
        base.limits().max_compute_invocations_per_workgroup
    );
    let mut rng = Rng::new(12);
    for tiles in [
        TileConfig::LARGE,
        TileConfig::SMALL,
        TileConfig {
            wg_x: 16,
            wg_y: 16,
            bk: 16,
        },
        TileConfig {
            wg_x: 16,
            wg_y: 8,
            bk: 4,
        },
        TileConfig {
            wg_x: 8,
            wg_y: 16,
            bk: 8,
        },
        TileConfig {
            wg_x: 4,
            wg_y: 4,
            bk: 16,
        },
    ] {
        if tiles.workgroup_bytes() > base.limits().max_compute_workgroup_storage_size {
            println!("tile {tiles:?} exceeds this adapter's workgroup storage; skipped");
            continue;
        }
        let dev = WgpuDevice::new(WgpuOptions {
            tiles: Some(tiles),
            ..options(Dot4Mode::Native)
        })
        .unwrap();
        let b = WgpuBackend::from_device(dev);
        for p in problems() {
            let w = rng.ternary(p.w_len());
            let words = p.pack_w(&w);
            let x = rng.normals(p.in_len(), 1.0);
            for format in [Fmt::Int8, Fmt::Uint8PosExp] {
                let s = activation_scale(&x, format).unwrap().unwrap();
                let expected = p.reference(&codes_of(&x, format, s), &w, s, 0.5);
                let args = ProjectionArgs {
                    input: ActInput::F32(&x),
                    format,
                    scale: ScaleSource::Param(s),
                    w_words: &words,
                    w_scale: 0.5,
                    w_qmax: 1,
                    epilogue: Epilogue::default(),
                };
                assert_bits(
                    &format!("{tiles:?} {p:?} {format:?}"),
                    &expected,
                    &p.call(&b, &args),
                );
            }
        }
    }
}

/// A device and queue created by the caller (an engine's) run the crate's kernels.
#[test]
fn wraps_an_external_device() {
    if device(Dot4Mode::Native).is_none() {
        return;
    }
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .expect("adapter");
    let info = adapter.get_info();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("engine device"),
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .expect("device");
    let dev = WgpuDevice::from_wgpu(
        device.clone(),
        queue.clone(),
        Some(info),
        options(Dot4Mode::Native),
    )
    .unwrap();
    assert!(dev.name().contains(&adapter.get_info().name));
    // The engine's own buffer, written by the engine, read by the crate through `upload`'s
    // sibling path: here we just check results on the wrapped device.
    let shape = LowrankShape::new([1, 1, 33, 20], [2, 20, 19], 19).unwrap();
    let mut rng = Rng::new(13);
    let w = rng.int8_codes(shape.w_len());
    let x = rng.normals(shape.x_len(), 1.0);
    let s = activation_scale(&x, Fmt::Int8).unwrap().unwrap();
    let expected =
        reference::lowrank_projection_codes(&shape, &codes_of(&x, Fmt::Int8, s), &w, s, 0.1)
            .unwrap();
    let b = WgpuBackend::from_device(dev.clone());
    let words = pack_lowrank_weight_codes_i8x4(&w, 2, 20, 19).unwrap();
    let out = b
        .lowrank(
            &shape,
            &ProjectionArgs {
                input: ActInput::F32(&x),
                format: Fmt::Int8,
                scale: ScaleSource::Param(s),
                w_words: &words,
                w_scale: 0.1,
                w_qmax: 127,
                epilogue: Epilogue::default(),
            },
        )
        .unwrap();
    assert_bits("wrapped device", &expected, &out.values);
    // The crate's buffers are plain wgpu buffers of the caller's device.
    let buf = dev.upload(&[1.0f32, 2.0]).unwrap();
    assert_eq!(buf.raw().size(), 8);
    assert!(dev.native_dot4().is_none(), "a wrapped device cannot tell");
}

/// quantize_pack (scale computed on the device) → lowrank / decoder on packed words, all
/// device-resident; only the final output is downloaded.
#[test]
fn device_resident_chain() {
    let Some(dev) = device(Dot4Mode::Native) else {
        return;
    };
    let mut rng = Rng::new(14);
    let shape = LowrankShape::new([2, 1, 17, 50], [3, 50, 41], 41).unwrap();
    let x = rng.normals(shape.x_len(), 1.0);
    let w = rng.ternary(shape.w_len());
    let xd = dev.upload(&x).unwrap();
    let scale = dev.activation_scale(&xd, Fmt::Int8).unwrap();
    let qshape = QuantizeShape::new(2 * 17, 50).unwrap();
    let words = dev
        .quantize_pack_i8x4(&xd, qshape, Fmt::Int8, DeviceScale::Buffer(&scale))
        .unwrap();
    let wd = dev
        .upload_weights(
            &pack_lowrank_weight_codes_i8x4(&w, 3, 50, 41).unwrap(),
            0.2,
            1,
        )
        .unwrap();
    let epilogue = Epilogue {
        dtype: OutputDType::F32,
        relu: true,
    };
    let out = dev
        .lowrank(
            &shape,
            DeviceAct::Packed(&words),
            Fmt::Int8,
            DeviceScale::Buffer(&scale),
            &wd,
            epilogue,
        )
        .unwrap();
    // Reference with the device scale (checked against the host scale within 1e-6).
    let s = dev.download(&scale).unwrap()[0];
    let s_ref = activation_scale(&x, Fmt::Int8).unwrap().unwrap();
    assert!((s - s_ref).abs() <= 1e-6 * s_ref, "scale {s} vs {s_ref}");
    let expected: Vec<f32> =
        reference::lowrank_projection_codes(&shape, &codes_of(&x, Fmt::Int8, s), &w, s, 0.2)
            .unwrap()
            .iter()
            .map(|v| v.max(0.0))
            .collect();
    assert_bits(
        "chained lowrank",
        &expected,
        &dev.download_output(&out).unwrap(),
    );

    // The relu'd f32 output feeds the decoder tail as f32 (fused quantize, computed scale).
    let dshape = DecoderTailShape::new([2, 3, 17, 41], [3 * 41, 24]).unwrap();
    let wd2 = rng.int8_codes(dshape.w_len());
    let wdd = dev
        .upload_weights(
            &pack_decoder_weight_codes_i8x4(&wd2, 3, 41, 24).unwrap(),
            0.01,
            127,
        )
        .unwrap();
    let y = match &out {
        DeviceOutput::F32(b) => b.clone(),
        _ => unreachable!(),
    };
    let y_scale = dev.alloc::<f32>(1).unwrap();
    let tail = dev
        .decoder_tail(
            &dshape,
            DeviceAct::F32(&y),
            Fmt::Uint8PosExp,
            DeviceScale::Compute(&y_scale),
            &wdd,
            Epilogue::default(),
        )
        .unwrap();
    let ys = dev.download(&y_scale).unwrap()[0];
    let y_host = &expected;
    let ys_ref = activation_scale(y_host, Fmt::Uint8PosExp).unwrap().unwrap();
    assert!(
        (ys - ys_ref).abs() <= 1e-6 * ys_ref,
        "y scale {ys} vs {ys_ref}"
    );
    let exp_tail = reference::decoder_tail_codes(
        &dshape,
        &codes_of(y_host, Fmt::Uint8PosExp, ys),
        &wd2,
        ys,
        0.01,
    )
    .unwrap();
    assert_bits(
        "chained decoder",
        &exp_tail,
        &dev.download_output(&tail).unwrap(),
    );
}

/// A kernel + override set compiles once; a new override set compiles a new pipeline.
#[test]
fn pipeline_cache_reuse() {
    if device(Dot4Mode::Native).is_none() {
        return;
    }
    let dev = WgpuDevice::new(options(Dot4Mode::Native)).unwrap();
    let shape = LowrankShape::new([1, 1, 5, 18], [2, 18, 9], 9).unwrap();
    let mut rng = Rng::new(15);
    let x = dev.upload(&rng.normals(shape.x_len(), 1.0)).unwrap();
    let w = dev
        .upload_weights(
            &pack_lowrank_weight_codes_i8x4(&rng.ternary(shape.w_len()), 2, 18, 9).unwrap(),
            1.0,
            1,
        )
        .unwrap();
    let run = |relu: bool| {
        dev.lowrank(
            &shape,
            DeviceAct::F32(&x),
            Fmt::Int8,
            DeviceScale::Host(0.02),
            &w,
            Epilogue {
                dtype: OutputDType::F32,
                relu,
            },
        )
        .unwrap()
    };
    assert_eq!(dev.pipelines_compiled(), 0);
    run(false);
    let after_first = dev.pipelines_compiled();
    assert_eq!(after_first, 1);
    for _ in 0..3 {
        run(false);
    }
    assert_eq!(
        dev.pipelines_compiled(),
        after_first,
        "cached pipeline reused"
    );
    run(true);
    assert_eq!(
        dev.pipelines_compiled(),
        after_first + 1,
        "relu is a new variant"
    );
    run(true);
    assert_eq!(dev.pipelines_compiled(), after_first + 1);
}

/// Values on and next to `(k + 0.5)·s` for many scales: codes equal the reference's exactly
/// (the shader settles near-ties with an exact comparison; no tie allowance here).
#[test]
fn codes_are_exact_at_ties() {
    let Some(dev) = device(Dot4Mode::Native) else {
        return;
    };
    let b = WgpuBackend::from_device(dev.clone());
    let mut rng = Rng::new(16);
    for _ in 0..20 {
        let s = rng.range(1e-3, 3.0) * 10f32.powi(rng.int(-6, 3) as i32);
        let x: Vec<f32> = (0..4096)
            .map(|_| {
                let t = (rng.int(-300, 300) as f32 + 0.5) * s;
                match rng.int(0, 4) {
                    0 => t.next_up(),
                    1 => t.next_down(),
                    2 => t.next_up().next_up(),
                    _ => t,
                }
            })
            .collect();
        for format in [Fmt::Int8, Fmt::Int4Exp, Fmt::Uint8PosExp] {
            let (codes, used) = b.quantize_codes(&x, format, ScaleSource::Param(s)).unwrap();
            assert_eq!(used, s);
            let expected = codes_of(&x, format, s);
            let bad = codes.iter().zip(&expected).filter(|(a, e)| a != e).count();
            assert_eq!(bad, 0, "{bad} codes differ at scale {s:e} {format:?}");
        }
        // rho: the block scale is a correctly rounded max/127
        let shape = lowbit_kernels::ops::rho::RhoShape::new([1, 1, 64, 64]).unwrap();
        let (words, scales) = b.rho_int8_pack(&shape, &x).unwrap();
        let (rw, rs) = reference::rho::rho_int8_pack_words(&shape, &x).unwrap();
        assert_eq!(
            scales.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            rs.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(words, rw);
    }
}

/// Keeping wgpu's runtime checks (index clamping, loop bounding) changes nothing.
#[test]
fn runtime_checks_variant_agrees() {
    if device(Dot4Mode::Native).is_none() {
        return;
    }
    let checked = WgpuBackend::new(WgpuOptions {
        runtime_checks: true,
        ..options(Dot4Mode::Native)
    })
    .unwrap();
    let mut rng = Rng::new(17);
    for p in problems() {
        let w = rng.int8_codes(p.w_len());
        let words = p.pack_w(&w);
        let x = rng.normals(p.in_len(), 1.0);
        let s = activation_scale(&x, Fmt::Int4Exp).unwrap().unwrap();
        let args = ProjectionArgs {
            input: ActInput::F32(&x),
            format: Fmt::Int4Exp,
            scale: ScaleSource::Compute,
            w_words: &words,
            w_scale: 0.07,
            w_qmax: 127,
            epilogue: Epilogue {
                dtype: OutputDType::Bf16,
                relu: false,
            },
        };
        let out = p.call(&checked, &args);
        let expected: Vec<f32> = p
            .reference(&codes_of(&x, Fmt::Int4Exp, s), &w, s, 0.07)
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        // the device scale may differ from `s` in the last bits: compare via codes at s only
        // when equal
        let dev_scale = checked.activation_scale(&x, Fmt::Int4Exp).unwrap();
        if dev_scale.to_bits() == s.to_bits() {
            assert_bits(&format!("checked {p:?}"), &expected, &out);
        } else {
            let exp2: Vec<f32> = p
                .reference(&codes_of(&x, Fmt::Int4Exp, dev_scale), &w, dev_scale, 0.07)
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_f32())
                .collect();
            assert_bits(&format!("checked {p:?}"), &exp2, &out);
        }
    }
}

/// Typed errors leave a caller's output buffer as it was; buffers of another device are
/// refused; an output too large for a storage binding is refused before any allocation.
#[test]
fn errors_write_nothing() {
    let Some(dev) = device(Dot4Mode::Native) else {
        return;
    };
    let shape = LowrankShape::new([1, 1, 5, 18], [2, 18, 9], 9).unwrap();
    let mut rng = Rng::new(18);
    let x = dev.upload(&rng.normals(shape.x_len(), 1.0)).unwrap();
    let w = dev
        .upload_weights(
            &pack_lowrank_weight_codes_i8x4(&rng.ternary(shape.w_len()), 2, 18, 9).unwrap(),
            1.0,
            1,
        )
        .unwrap();
    let out = dev.alloc_output(OutputDType::F32, shape.out_len()).unwrap();
    let DeviceOutput::F32(ob) = &out else {
        unreachable!()
    };
    dev.fill(ob, POISON_F32).unwrap();
    let poisoned = |what: &str| {
        let v = dev.download(ob).unwrap();
        assert!(v.iter().all(|f| f.is_nan()), "{what}: output was written");
    };
    // Host scale 0, a computed scale on... f32 is fine, a wrong-length scale buffer, a
    // wrong-length input, an overflowing K, uint8pos on packed words.
    let bad_scale = dev.alloc::<f32>(2).unwrap();
    let short_x = dev.upload(&[0.5f32; 10]).unwrap();
    let words = dev.alloc::<u32>(shape.x_words_len()).unwrap();
    let f16_out = dev.alloc_output(OutputDType::F16, shape.out_len()).unwrap();
    let cases: Vec<(&str, lowbit_kernels::Result<()>)> = vec![
        (
            "scale 0",
            dev.lowrank_into(
                &shape,
                DeviceAct::F32(&x),
                Fmt::Int8,
                DeviceScale::Host(0.0),
                &w,
                Epilogue::default(),
                &out,
            ),
        ),
        (
            "scale buffer of 2",
            dev.lowrank_into(
                &shape,
                DeviceAct::F32(&x),
                Fmt::Int8,
                DeviceScale::Buffer(&bad_scale),
                &w,
                Epilogue::default(),
                &out,
            ),
        ),
        (
            "short input",
            dev.lowrank_into(
                &shape,
                DeviceAct::F32(&short_x),
                Fmt::Int8,
                DeviceScale::Host(0.1),
                &w,
                Epilogue::default(),
                &out,
            ),
        ),
        (
            "uint8pos packed",
            dev.lowrank_into(
                &shape,
                DeviceAct::Packed(&words),
                Fmt::Uint8PosExp,
                DeviceScale::Host(0.1),
                &w,
                Epilogue::default(),
                &out,
            ),
        ),
        (
            "computed scale on packed",
            dev.lowrank_into(
                &shape,
                DeviceAct::Packed(&words),
                Fmt::Int8,
                DeviceScale::Compute(&bad_scale),
                &w,
                Epilogue::default(),
                &out,
            ),
        ),
        (
            "dtype mismatch",
            dev.lowrank_into(
                &shape,
                DeviceAct::F32(&x),
                Fmt::Int8,
                DeviceScale::Host(0.1),
                &w,
                Epilogue {
                    dtype: OutputDType::F16,
                    relu: false,
                },
                &out,
            ),
        ),
        (
            "f16 buffer for f32 epilogue",
            dev.lowrank_into(
                &shape,
                DeviceAct::F32(&x),
                Fmt::Int8,
                DeviceScale::Host(0.1),
                &w,
                Epilogue::default(),
                &f16_out,
            ),
        ),
    ];
    for (what, r) in cases {
        assert!(r.is_err(), "{what}: expected an error");
        poisoned(what);
    }
    // A buffer of another device.
    let other = WgpuDevice::new(options(Dot4Mode::Native)).unwrap();
    let foreign = other.upload(&rng.normals(shape.x_len(), 1.0)).unwrap();
    let r = dev.lowrank_into(
        &shape,
        DeviceAct::F32(&foreign),
        Fmt::Int8,
        DeviceScale::Host(0.1),
        &w,
        Epilogue::default(),
        &out,
    );
    assert!(matches!(r, Err(LowbitError::WrongDevice { .. })), "{r:?}");
    poisoned("foreign buffer");
    // An output larger than a storage binding: refused before anything is allocated.
    let limit = dev.limits().max_storage_buffer_binding_size;
    let n = ((limit / 4) as usize).div_ceil(1 << 16) + 1;
    let big = LowrankShape::new([1, 1, 1 << 16, 1], [1, 1, n], n).unwrap();
    let b = WgpuBackend::from_device(dev.clone());
    let xs = vec![1.0f32; big.x_len()];
    let ws = vec![0u32; big.w_words_len()];
    let r = b.lowrank(
        &big,
        &ProjectionArgs {
            input: ActInput::F32(&xs),
            format: Fmt::Int8,
            scale: ScaleSource::Param(1.0),
            w_words: &ws,
            w_scale: 1.0,
            w_qmax: 1,
            epilogue: Epilogue::default(),
        },
    );
    assert!(matches!(r, Err(LowbitError::Unsupported { .. })), "{r:?}");
}

/// GPU time is recorded where the adapter has timestamp queries.
#[test]
fn gpu_timestamps() {
    let Some(base) = device(Dot4Mode::Native) else {
        return;
    };
    let dev = WgpuDevice::new(options(Dot4Mode::Native)).unwrap();
    if !dev.start_timing().unwrap() {
        println!("no TIMESTAMP_QUERY on {}", base.name());
        assert!(dev.take_gpu_time().unwrap().is_none());
        return;
    }
    let shape = LowrankShape::new([1, 1, 64, 64], [1, 64, 64], 64).unwrap();
    let x = dev.upload(&vec![0.5f32; shape.x_len()]).unwrap();
    let w = dev
        .upload_weights(&vec![0x0101_0101u32; shape.w_words_len()], 1.0, 1)
        .unwrap();
    for _ in 0..3 {
        dev.lowrank(
            &shape,
            DeviceAct::F32(&x),
            Fmt::Int8,
            DeviceScale::Host(0.01),
            &w,
            Epilogue::default(),
        )
        .unwrap();
    }
    let t = dev.take_gpu_time().unwrap().unwrap();
    println!("3 launches: {t:?} of GPU time");
    assert!(t.as_nanos() > 0);
    dev.stop_timing();
}

/// f32 input quantized in the projection kernel or in a separate pack pass: same bits, for
/// every integer format and scale source.
#[test]
fn f32_routes_agree() {
    if device(Dot4Mode::Native).is_none() {
        return;
    }
    let open = |route| {
        WgpuBackend::new(WgpuOptions {
            f32_route: route,
            ..options(Dot4Mode::Native)
        })
        .unwrap()
    };
    let (fused, prepack) = (open(F32Route::Fused), open(F32Route::Prepack));
    let mut rng = Rng::new(19);
    for p in problems() {
        let w = rng.int8_codes(p.w_len());
        let words = p.pack_w(&w);
        let x = rng.normals(p.in_len(), 1.0);
        for format in [Fmt::Int8, Fmt::Int4Exp, Fmt::Uint8PosExp] {
            let s = activation_scale(&x, format).unwrap().unwrap();
            for scale in [
                ScaleSource::Param(s),
                ScaleSource::Buffer(s),
                ScaleSource::Compute,
            ] {
                let args = ProjectionArgs {
                    input: ActInput::F32(&x),
                    format,
                    scale,
                    w_words: &words,
                    w_scale: 0.02,
                    w_qmax: 127,
                    epilogue: Epilogue::default(),
                };
                let a = p.call(&fused, &args);
                let b = p.call(&prepack, &args);
                let what = format!("{p:?} {format:?} {scale:?}");
                assert_bits(&format!("fused vs prepack {what}"), &a, &b);
                if scale != ScaleSource::Compute {
                    let expected = p.reference(&codes_of(&x, format, s), &w, s, 0.02);
                    assert_bits(&format!("prepack {what}"), &expected, &b);
                }
            }
        }
    }
}

/// A device whose grids allow only 4 workgroups per dimension: row tiles are split over
/// several dispatches, the decoder's split-K keeps its planes within the grid, 1D kernels
/// fold into 2D grids; results stay exact.
#[test]
fn small_grid_limits_split_dispatches() {
    if device(Dot4Mode::Native).is_none() {
        return;
    }
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).unwrap();
    let mut limits = adapter.limits();
    limits.max_compute_workgroups_per_dimension = 4;
    let (d, q) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: limits,
        ..Default::default()
    }))
    .unwrap();
    let tiles = TileConfig {
        wg_x: 4,
        wg_y: 4,
        bk: 16,
    };
    let dev = WgpuDevice::from_wgpu(
        d,
        q,
        Some(adapter.get_info()),
        WgpuOptions {
            tiles: Some(tiles),
            f32_route: F32Route::Fused,
            ..options(Dot4Mode::Native)
        },
    )
    .unwrap();
    assert_eq!(dev.limits().max_compute_workgroups_per_dimension, 4);
    let b = WgpuBackend::from_device(dev);
    let mut rng = Rng::new(20);
    // lowrank: 600 rows = 19 row tiles of 32 → 5 dispatches; f32 epilogue (no reduce pass).
    // decoder: 160 rows = 5 row tiles → 2 dispatches; 2 heads × ≤ 2 K chunks ≤ 4 planes;
    // reduce over 160·24 = 3840 outputs = 15 workgroups → a 4×4 grid.
    for (p, dtype) in [
        (
            Problem::Lowrank(LowrankShape::new([2, 1, 300, 21], [3, 21, 50], 50).unwrap()),
            OutputDType::F32,
        ),
        (
            Problem::Decoder(DecoderTailShape::new([1, 2, 160, 301], [2 * 301, 24]).unwrap()),
            OutputDType::F32,
        ),
        (
            Problem::Decoder(DecoderTailShape::new([1, 2, 160, 301], [2 * 301, 24]).unwrap()),
            OutputDType::Bf16,
        ),
    ] {
        let w = rng.int8_codes(p.w_len());
        let words = p.pack_w(&w);
        let x = rng.normals(p.in_len(), 1.0);
        for format in [Fmt::Int8, Fmt::Uint8PosExp] {
            let s = activation_scale(&x, format).unwrap().unwrap();
            let codes = codes_of(&x, format, s);
            for input in [ActInput::Codes(&codes), ActInput::F32(&x)] {
                let args = ProjectionArgs {
                    input,
                    format,
                    scale: ScaleSource::Param(s),
                    w_words: &words,
                    w_scale: 0.01,
                    w_qmax: 127,
                    epilogue: Epilogue { dtype, relu: true },
                };
                let expected: Vec<f32> = p
                    .reference(&codes, &w, s, 0.01)
                    .iter()
                    .map(|&v| {
                        let v = v.max(0.0);
                        match dtype {
                            OutputDType::Bf16 => half::bf16::from_f32(v).to_f32(),
                            _ => v,
                        }
                    })
                    .collect();
                assert_bits(
                    &format!("small grid {p:?} {format:?} {dtype:?}"),
                    &expected,
                    &p.call(&b, &args),
                );
            }
        }
    }
    // 1D kernels: 3000 elements = 12 workgroups of 256 → a 4×3 grid.
    let x = rng.normals(3000, 1.0);
    let (codes, s) = b
        .quantize_codes(&x, Fmt::Int8, ScaleSource::Compute)
        .unwrap();
    assert_eq!(codes, codes_of(&x, Fmt::Int8, s));
    let s_ref = activation_scale(&x, Fmt::Int8).unwrap().unwrap();
    assert!((s - s_ref).abs() <= 1e-6 * s_ref);
}
