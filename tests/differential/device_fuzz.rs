//! The wgpu device-resident API under random misuse (`fuzz.rs`'s generators): shape
//! literals, input / weight / output / scale buffers of the right or a wrong length, output
//! types that do or do not match the epilogue. A call that fails wrote nothing: its output
//! and a computed-scale buffer still hold their poison. A call that succeeds equals the CPU
//! host-slice backend on the same data (given the scale the device used), wherever the input
//! keeps the contract the device API documents (codes and lanes in range, finite values, a
//! valid value in a scale buffer). The module's name
//! keeps it out of CI's `wgpu` filter for Mesa's slow GL driver.

use std::sync::OnceLock;

use lowbit_kernels::backend::cpu::CpuBackend;
use lowbit_kernels::backend::wgpu::{DeviceAct, DeviceOutput, DeviceScale, WgpuDevice};
use lowbit_kernels::backend::{Backend, ProjectionArgs};
use lowbit_kernels::config::LowBitActivationFormat as Fmt;
use lowbit_kernels::ops::{self, ActInput};
use lowbit_kernels::ops::{
    DecoderTailShape, Epilogue, LowrankShape, OutputDType, ProjectionOutput, ScaleSource,
};
use lowbit_kernels::quant::check_finite;
use lowbit_kernels::testing::{self, POISON_F32};
use lowbit_kernels::{BackendKind, LowbitError, Result};
use proptest::prelude::*;

use crate::fuzz::{
    Input, config, dim, epilogue, f32_bound, format, len_for, no_panic, prod, same_projection,
    scale_value, w_qmax, weight_words,
};

/// The shared device, or `None` (SKIPPED; a failure under `LOWBIT_REQUIRE=wgpu`).
fn device() -> Option<&'static WgpuDevice> {
    static DEV: OnceLock<std::result::Result<WgpuDevice, String>> = OnceLock::new();
    match DEV.get_or_init(|| WgpuDevice::open_default().map_err(|e| e.to_string())) {
        Ok(d) => Some(d),
        Err(reason) => {
            if let Err(msg) = testing::skip_or_fail(BackendKind::Wgpu, reason) {
                panic!("{msg}");
            }
            None
        }
    }
}

/// One projection call: `run(device input, scale, weights, out)` on the device, `cpu(args)`
/// on the CPU backend. `k`: elements per input row; `want`: output elements.
#[allow(clippy::too_many_arguments)]
fn projection_case(
    what: &str,
    input: &Input,
    args: &ProjectionArgs<'_>,
    (scale_kind, sbuf_len, out_dtype, opick): (u8, usize, OutputDType, u8),
    (k, want, bound): (usize, usize, f32),
    run: impl Fn(
        DeviceAct<'_>,
        DeviceScale<'_>,
        &lowbit_kernels::backend::wgpu::DeviceWeights,
        &DeviceOutput,
    ) -> Result<()>,
    cpu: impl Fn(&ProjectionArgs<'_>) -> Result<ProjectionOutput>,
) -> std::result::Result<(), TestCaseError> {
    let Some(dev) = device() else {
        return Ok(());
    };
    // Buffers the caller would make; a refusal there (an empty buffer, a bad weight qmax or
    // scale) is itself a typed error and ends the case.
    let made = no_panic(&format!("{what}: buffers"), || {
        let act = match input.kind {
            0 => Act::Codes(dev.upload(&input.codes)?),
            1 => Act::Packed(dev.upload(&input.words)?),
            _ => Act::F32(dev.upload(&input.f32s)?),
        };
        let w = dev.upload_weights(args.w_words, args.w_scale, args.w_qmax)?;
        let sbuf = dev.alloc::<f32>(sbuf_len)?;
        dev.fill(&sbuf, POISON_F32)?;
        let out = dev.alloc_output(out_dtype, len_for(want, opick))?;
        poison(dev, &out)?;
        Ok((act, w, sbuf, out))
    });
    let Ok((act, w, sbuf, out)) = made else {
        return Ok(());
    };
    let given = match args.scale {
        ScaleSource::Param(v) | ScaleSource::Buffer(v) => v,
        ScaleSource::Compute => 1.0,
    };
    if scale_kind == 1 {
        no_panic(what, || dev.fill(&sbuf, given))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    let scale = match (scale_kind, args.scale) {
        (_, ScaleSource::Compute) => DeviceScale::Compute(&sbuf),
        (1, _) => DeviceScale::Buffer(&sbuf),
        _ => DeviceScale::Host(given),
    };
    let r = no_panic(what, || run(act.get(), scale, &w, &out));
    let got = no_panic(what, || dev.download_output(&out))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let scale_now =
        no_panic(what, || dev.download(&sbuf)).map_err(|e| TestCaseError::fail(e.to_string()))?;
    match r {
        Err(e) => {
            prop_assert!(
                got.iter().all(|v| v.is_nan()),
                "{what}: failed ({e}) but wrote its output"
            );
            if matches!(scale, DeviceScale::Compute(_)) {
                prop_assert!(
                    scale_now.iter().all(|v| v.is_nan()),
                    "{what}: failed ({e}) but wrote the scale buffer"
                );
            }
        }
        Ok(()) => {
            // (the float path has no activation scale)
            let used = match scale {
                DeviceScale::Compute(_) if args.format != Fmt::Fp16 => {
                    ScaleSource::Param(scale_now[0])
                }
                _ => args.scale,
            };
            let want = cpu(&ProjectionArgs {
                scale: used,
                ..*args
            });
            let ok = match &want {
                Ok(c) => {
                    let dev_out = ProjectionOutput {
                        values: got.clone(),
                        a_scale: c.a_scale,
                    };
                    same_projection(c, &dev_out, (args.format, args.epilogue, bound))
                }
                // what the device API trusts its caller for (the host-slice API checks it)
                Err(e) => {
                    breaks_contract(args, k)
                        || (matches!(scale, DeviceScale::Buffer(_)) && bad_scale_value(e))
                }
            };
            prop_assert!(ok, "{what}: device Ok, cpu {:?}", want.map(|_| ()));
        }
    }
    Ok(())
}

/// Whether the input breaks what the device API trusts its caller for (documented on
/// `DeviceAct`; the host-slice API checks it): codes or packed lanes out of range,
/// non-finite values. Then any result is allowed, but a failure must still write nothing.
fn breaks_contract(args: &ProjectionArgs<'_>, k: usize) -> bool {
    let qmax = args.format.qmax().unwrap_or(0);
    match args.input {
        ActInput::Codes(c) => ops::check_activation_codes("fuzz", c, args.format).is_err(),
        ActInput::Packed(w) => ops::check_packed_activations("fuzz", w, k, qmax).is_err(),
        ActInput::F32(x) => check_finite("fuzz", "x", x).is_err(),
    }
}

/// The error of an invalid scale value (from a scale buffer, whose value the device reads
/// on the device and so cannot refuse).
fn bad_scale_value(e: &LowbitError) -> bool {
    matches!(e, LowbitError::InvalidScale { what, .. } if *what == "activation scale")
}

/// An uploaded activation input.
enum Act {
    Codes(lowbit_kernels::backend::wgpu::GpuBuffer<i32>),
    Packed(lowbit_kernels::backend::wgpu::GpuBuffer<u32>),
    F32(lowbit_kernels::backend::wgpu::GpuBuffer<f32>),
}

impl Act {
    fn get(&self) -> DeviceAct<'_> {
        match self {
            Self::Codes(b) => DeviceAct::Codes(b),
            Self::Packed(b) => DeviceAct::Packed(b),
            Self::F32(b) => DeviceAct::F32(b),
        }
    }
}

/// NaN in every element of `out`, in its type.
fn poison(dev: &WgpuDevice, out: &DeviceOutput) -> Result<()> {
    match out {
        DeviceOutput::F32(b) => dev.fill(b, POISON_F32),
        DeviceOutput::F16(b) => dev.fill(b, half::f16::NAN),
        DeviceOutput::Bf16(b) => dev.fill(b, half::bf16::NAN),
    }
}

fn cpu() -> &'static CpuBackend {
    static CPU: OnceLock<CpuBackend> = OnceLock::new();
    CPU.get_or_init(CpuBackend::new)
}

/// The scale source and the device-only choices: 0 host, 1 a buffer, else computed; the
/// scale buffer's length (1 but now and then 0 or 2); the output type (the epilogue's, now
/// and then another).
fn device_choices() -> impl Strategy<Value = (u8, usize, u8, u8)> {
    (
        0u8..3,
        prop_oneof![8 => Just(1usize), 1 => Just(0usize), 1 => Just(2usize)],
        0u8..10,
        any::<u8>(),
    )
}

fn out_dtype(e: Epilogue, pick: u8) -> OutputDType {
    match pick {
        0 => OutputDType::F32,
        1 => OutputDType::Bf16,
        _ => e.dtype,
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn lowrank_into_calls(
        (b, hin_is_h, h, t, d, n, lo) in (dim(), any::<bool>(), dim(), dim(), dim(), dim(), dim()),
        (kind, pick, wpick, vkind) in (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()),
        format in format(), sv in scale_value(), w_scale in scale_value(), w_qmax in w_qmax(),
        epilogue in epilogue(), (sk, sbuf_len, dpick, opick) in device_choices(),
        seed in any::<u64>(),
    ) {
        let shape = LowrankShape {
            batch: b, in_heads: if hin_is_h { h } else { 1 }, heads: h, time: t,
            embd: d, latent: n, latent_out: lo.min(n).max(1),
        };
        let rows = prod(&[b, shape.in_heads, t]);
        let lens = (len_for(prod(&[rows, d]), pick), len_for(prod(&[rows, d.div_ceil(4)]), pick), d);
        let input = Input::new(kind, lens, format, seed, vkind);
        let w = weight_words(prod(&[h, d.div_ceil(4), n]), wpick, seed);
        let scale = if sk >= 2 { ScaleSource::Compute } else { ScaleSource::Param(sv) };
        let args = ProjectionArgs {
            input: input.act(), format, scale, w_words: &w, w_scale, w_qmax, epilogue,
        };
        let want = prod(&[b, h, t, shape.latent_out]);
        let bound = f32_bound(&input.f32s, w_scale, d);
        let choices = (sk, sbuf_len, out_dtype(epilogue, dpick), opick);
        projection_case(&format!("lowrank_into {shape:?} {format:?} {scale:?}"), &input, &args,
            choices, (d, want, bound),
            |a, s, wt, o| device().map_or(Ok(()), |dev| {
                dev.lowrank_into(&shape, a, format, s, wt, epilogue, o)
            }),
            |a| cpu().lowrank(&shape, a))?;
    }

    #[test]
    fn decoder_tail_into_calls(
        (b, h, t, l, lart, dd) in (dim(), dim(), dim(), dim(), dim(), dim()),
        (kind, pick, wpick, vkind) in (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()),
        format in format(), sv in scale_value(), w_scale in scale_value(), w_qmax in w_qmax(),
        epilogue in epilogue(), (sk, sbuf_len, dpick, opick) in device_choices(),
        seed in any::<u64>(),
    ) {
        let shape = DecoderTailShape {
            batch: b, heads: h, time: t, latent: l, latent_per_head: lart.max(l), dim: dd,
        };
        let rows = prod(&[b, h, t]);
        let lens = (len_for(prod(&[rows, l]), pick), len_for(prod(&[rows, l.div_ceil(4)]), pick), l);
        let input = Input::new(kind, lens, format, seed, vkind);
        let w = weight_words(prod(&[h, shape.latent_per_head.div_ceil(4), dd]), wpick, seed);
        let scale = if sk >= 2 { ScaleSource::Compute } else { ScaleSource::Param(sv) };
        let args = ProjectionArgs {
            input: input.act(), format, scale, w_words: &w, w_scale, w_qmax, epilogue,
        };
        let want = prod(&[b, t, dd]);
        let bound = f32_bound(&input.f32s, w_scale, prod(&[h, l]));
        let choices = (sk, sbuf_len, out_dtype(epilogue, dpick), opick);
        projection_case(&format!("decoder_tail_into {shape:?} {format:?} {scale:?}"), &input,
            &args, choices, (l, want, bound),
            |a, s, wt, o| device().map_or(Ok(()), |dev| {
                dev.decoder_tail_into(&shape, a, format, s, wt, epilogue, o)
            }),
            |a| cpu().decoder_tail(&shape, a))?;
    }
}
