//! Random calls of every host-slice [`Backend`] entry point on every backend here: shapes
//! built as struct literals (consistent or not, zero or huge dims), buffers of the right
//! length or a little off, every format, scale source, weight qmax and epilogue, non-finite
//! and huge values. Every call must return `Ok` with an output of the shape's length, or a
//! typed `Err`, and never panic; a GPU backend must agree with the CPU one (both `Ok` with the
//! same bits, or both `Err`). Absent GPU backends print SKIPPED (fail under LOWBIT_REQUIRE).
//! `tests/proptest-regressions/fuzz.txt` (where proptest keeps this module's cases) holds the
//! cases that found bugs; they run first.

use std::panic::{AssertUnwindSafe, catch_unwind};

use lowbit_kernels::backend::{Backend, ProjectionArgs};
use lowbit_kernels::ops::quantize::QuantizeShape;
use lowbit_kernels::ops::rho::RhoShape;
use lowbit_kernels::testing::tol;
use lowbit_kernels::{
    ActInput, BackendKind, DecoderTailShape, Epilogue, LowBitActivationFormat as Fmt, LowrankShape,
    OutputDType, ProjectionOutput, Result, ScaleSource,
};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

/// Every backend that opens here, CPU first (a `SKIPPED` line for each one that does not).
fn backends() -> Vec<(BackendKind, &'static dyn Backend)> {
    [BackendKind::Cpu, BackendKind::Cuda, BackendKind::Wgpu]
        .into_iter()
        .filter_map(|k| crate::backend_for(k).map(|b| (k, b)))
        .collect()
}

/// Buffers larger than this are never built: a shape that asks for more must be refused.
const MAX_BUF: usize = 1 << 14;

/// A dimension: mostly small (1..=9), sometimes 0 or huge.
pub(crate) fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        60 => 1usize..=9,
        1 => Just(0usize),
        1 => Just(1usize << 31),
        1 => Just(usize::MAX / 3),
    ]
}

/// A product that saturates instead of overflowing (the test's own arithmetic).
pub(crate) fn prod(dims: &[usize]) -> usize {
    dims.iter().fold(1usize, |a, &d| a.saturating_mul(d))
}

/// A buffer length for `want` elements: exact, one off, or arbitrary small.
pub(crate) fn len_for(want: usize, pick: u8) -> usize {
    let exact = if want <= MAX_BUF { want } else { 7 };
    match pick % 16 {
        0 => exact.saturating_sub(1),
        1 => exact + 1,
        2 => (pick as usize * 37) % 64,
        _ => exact,
    }
}

pub(crate) fn values(n: usize, seed: u64, kind: u8) -> Vec<f32> {
    let mut rng = lowbit_kernels::testing::Rng::new(seed);
    let mut v = rng.normals(n, 1.0);
    match kind % 20 {
        0 if n > 0 => v[(seed as usize) % n] = f32::NAN,
        1 if n > 0 => v[(seed as usize) % n] = f32::NEG_INFINITY,
        2 => v.iter_mut().for_each(|x| *x *= 1e30),
        3 => v.iter_mut().for_each(|x| *x = 0.0),
        // tiny but normal: a WGSL driver may flush subnormal inputs (SPEC), as NVIDIA's does
        4 => v.iter_mut().for_each(|x| *x *= 1e-30),
        _ => {}
    }
    v
}

pub(crate) fn format() -> impl Strategy<Value = Fmt> {
    prop::sample::select(Fmt::ALL.to_vec())
}

pub(crate) fn scale_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        12 => 0.001f32..2.0,
        1 => prop::sample::select(vec![0.0f32, -1.0, f32::NAN, f32::INFINITY, 1e-30, 1e30]),
    ]
}

fn scale() -> impl Strategy<Value = ScaleSource> {
    prop_oneof![
        scale_value().prop_map(ScaleSource::Param),
        scale_value().prop_map(ScaleSource::Buffer),
        Just(ScaleSource::Compute),
    ]
}

pub(crate) fn w_qmax() -> impl Strategy<Value = u32> {
    prop_oneof![
        8 => prop::sample::select(vec![1u32, 7, 127]),
        1 => prop::sample::select(vec![0u32, 128, 255, u32::MAX]),
    ]
}

pub(crate) fn epilogue() -> impl Strategy<Value = Epilogue> {
    (
        prop::sample::select(vec![OutputDType::F32, OutputDType::F16, OutputDType::Bf16]),
        any::<bool>(),
    )
        .prop_map(|(dtype, relu)| Epilogue { dtype, relu })
}

/// The activation input: 0 codes, 1 packed words, 2 f32 values, `n` elements (`nw` words).
pub(crate) struct Input {
    pub(crate) codes: Vec<i32>,
    pub(crate) words: Vec<u32>,
    pub(crate) f32s: Vec<f32>,
    pub(crate) kind: u8,
}

impl Input {
    /// `n` codes / values, `nw` words of rows of `k` elements, in `format`'s range except
    /// now and then (out-of-range codes and lanes, a corrupted word).
    pub(crate) fn new(
        kind: u8,
        (n, nw, k): (usize, usize, usize),
        format: Fmt,
        seed: u64,
        vkind: u8,
    ) -> Self {
        let mut rng = lowbit_kernels::testing::Rng::new(seed ^ 0x9e37);
        let q = i64::from(format.qmax().unwrap_or(127));
        let wild = vkind.is_multiple_of(13);
        let (lo, hi) = match (wild, format.is_signed()) {
            (true, _) => (-300, 300),
            (false, true) => (-q, q),
            (false, false) => (0, q),
        };
        let codes = (0..n).map(|_| rng.int(lo, hi) as i32).collect();
        let kw = k.div_ceil(4).max(1);
        let lane = q.min(127);
        let mut words: Vec<u32> = (0..nw)
            .map(|i| {
                let used = if (i + 1) % kw == 0 {
                    k.max(1) - 4 * (kw - 1)
                } else {
                    4
                };
                (0..used.min(4)).fold(0u32, |w, j| {
                    w | (u32::from(rng.int(-lane, lane) as i8 as u8) << (8 * j))
                })
            })
            .collect();
        if wild && !words.is_empty() {
            let i = rng.usize(0, words.len() - 1);
            words[i] = rng.next_u64() as u32;
        }
        Self {
            codes,
            words,
            f32s: values(n, seed, vkind),
            kind: kind % 3,
        }
    }
    pub(crate) fn act(&self) -> ActInput<'_> {
        match self.kind {
            0 => ActInput::Codes(&self.codes),
            1 => ActInput::Packed(&self.words),
            _ => ActInput::F32(&self.f32s),
        }
    }
}

pub(crate) fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => panic!("{what}: panicked"),
    }
}

/// Runs `call` on every backend: no panics, `check` on every `Ok`, and each GPU result agrees
/// with the CPU's: both `Err`, or both `Ok` and `same`. A scale computed on the device may
/// differ from the CPU's in its last bits (docs/SPEC.md), so where `same` fails, `again` runs
/// the CPU with the GPU result's scale given, and that must be `same`.
fn on_all<T: std::fmt::Debug>(
    what: &str,
    call: impl Fn(&dyn Backend) -> Result<T>,
    check: impl Fn(&T) -> std::result::Result<(), String>,
    same: impl Fn(&T, &T) -> bool,
    again: impl Fn(&dyn Backend, &T) -> Option<Result<T>>,
) -> std::result::Result<(), TestCaseError> {
    let all = backends();
    let cpu = all[0].1;
    let checked = |kind: BackendKind, r: &Result<T>| match r {
        Ok(v) => check(v).map_err(|e| TestCaseError::fail(format!("{what} on {kind}: {e}"))),
        Err(_) => Ok(()),
    };
    let want = no_panic(&format!("{what} on cpu"), || call(cpu));
    checked(BackendKind::Cpu, &want)?;
    for (kind, b) in &all[1..] {
        let got = no_panic(&format!("{what} on {kind}"), || call(*b));
        checked(*kind, &got)?;
        let ok = match (&want, &got) {
            (Err(_), Err(_)) => true,
            (Ok(c), Ok(g)) => {
                same(c, g)
                    || no_panic(&format!("{what} again on cpu"), || {
                        again(cpu, g).unwrap_or_else(|| call(cpu))
                    })
                    .is_ok_and(|c2| same(&c2, g))
            }
            _ => false,
        };
        let show = |r: &Result<T>| {
            let mut t = format!("{r:?}");
            t.truncate(400);
            t
        };
        prop_assert!(
            ok,
            "{what}: cpu gave {}, {kind} gave {}",
            show(&want),
            show(&got)
        );
    }
    Ok(())
}

/// One projection (`run`: the op on a backend) on every backend, as [`on_all`]: `want` output
/// elements, equal bits (the float path within `bound`'s rules), and where the scale was
/// computed, the GPU's scale given to the CPU.
fn projection_on_all(
    what: &str,
    args: &ProjectionArgs<'_>,
    want: usize,
    bound: f32,
    run: impl Fn(&dyn Backend, &ProjectionArgs<'_>) -> Result<ProjectionOutput>,
) -> std::result::Result<(), TestCaseError> {
    let what = format!(
        "{what} {:?} {:?} {:?}",
        args.format, args.scale, args.epilogue
    );
    on_all(
        &what,
        |be| run(be, args),
        |o| len_is(o.values.len(), want),
        |a, c| same_projection(a, c, (args.format, args.epilogue, bound)),
        |be, g| {
            (args.scale == ScaleSource::Compute).then(|| {
                let given = ProjectionArgs {
                    scale: ScaleSource::Param(g.a_scale),
                    ..*args
                };
                run(be, &given)
            })
        },
    )
}

/// Equal bits, both NaN, or both zero or subnormal: WGSL lets a driver flush subnormal
/// results to zero, and NVIDIA's Vulkan driver does (found by this test on an H200).
fn same_f32(a: &[f32], b: &[f32]) -> bool {
    let tiny = |v: &f32| v.abs() < f32::MIN_POSITIVE;
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()) || (tiny(x) && tiny(y))
        })
}

/// The float path (`Fp16` format) sums in f32 in each backend's order: within
/// `FLOAT_PATH_REL` of the largest |value| (one rounding step of a 16-bit output type more).
fn close_f32(a: &[f32], b: &[f32], dtype: OutputDType) -> bool {
    let rel = match dtype {
        OutputDType::F32 => tol::FLOAT_PATH_REL,
        OutputDType::F16 => 2f32.powi(-10),
        OutputDType::Bf16 => 2f32.powi(-7),
    };
    let big = a
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f32, |m, v| m.max(v.abs()));
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.to_bits() == y.to_bits()
                || (x.is_nan() && y.is_nan())
                || (x.is_finite() && y.is_finite() && (x - y).abs() <= rel * big)
                || same_f32(&[*x], &[*y])
        })
}

/// Two projection results agree. The float path (`Fp16` format) sums in f32 in each backend's
/// order, so it agrees within [`close_f32`], and not at all where its f32 sums can overflow
/// (`f32_bound`, the largest |x|·127·w_scale·K, at 1e37 or more: inf, NaN or a ReLU of NaN).
pub(crate) fn same_projection(
    a: &ProjectionOutput,
    c: &ProjectionOutput,
    (f, e, f32_bound): (Fmt, Epilogue, f32),
) -> bool {
    a.a_scale.to_bits() == c.a_scale.to_bits()
        && match f {
            Fmt::Fp16 => {
                f32_bound.is_nan() || f32_bound >= 1e37 || close_f32(&a.values, &c.values, e.dtype)
            }
            _ => same_f32(&a.values, &c.values),
        }
}

/// The largest |x|·127·w_scale·K of a float-path projection (`inf` if any of it is).
pub(crate) fn f32_bound(x: &[f32], w_scale: f32, k: usize) -> f32 {
    let big = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    big * 127.0 * w_scale * k as f32
}

pub(crate) fn len_is(got: usize, want: usize) -> std::result::Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("output of {got} elements, the shape has {want}"))
    }
}

/// Weight words for `want` words with random lanes.
pub(crate) fn weight_words(want: usize, pick: u8, seed: u64) -> Vec<u32> {
    let mut rng = lowbit_kernels::testing::Rng::new(seed ^ 0x51);
    (0..len_for(want, pick))
        .map(|_| rng.next_u64() as u32 & 0x7f7f_7f7f)
        .collect()
}

/// A fixed seed, so that CI runs the same cases every time; `LOWBIT_FUZZ_SEED` and
/// `LOWBIT_FUZZ_CASES` explore others.
pub(crate) fn config() -> ProptestConfig {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    ProptestConfig {
        cases: env("LOWBIT_FUZZ_CASES").map_or(384, |c| c as u32),
        rng_seed: RngSeed::Fixed(env("LOWBIT_FUZZ_SEED").unwrap_or(0x10b1_7f22)),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn lowrank_calls(
        (b, hin_is_h, h, t, d, d2, n, lo) in (dim(), any::<bool>(), dim(), dim(), dim(),
            dim(), dim(), dim()),
        consistent in prop::bool::weighted(0.85),
        (kind, pick, wpick, vkind) in (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()),
        format in format(), scale in scale(), w_scale in scale_value(),
        w_qmax in w_qmax(),
        epilogue in epilogue(), seed in any::<u64>(),
    ) {
        let shape = if consistent {
            LowrankShape {
                batch: b, in_heads: if hin_is_h { h } else { 1 }, heads: h, time: t,
                embd: d, latent: n, latent_out: lo.min(n).max(1),
            }
        } else {
            LowrankShape {
                batch: b, in_heads: if hin_is_h { h } else { d2 }, heads: h, time: t,
                embd: d, latent: n, latent_out: lo,
            }
        };
        let (rows, kw) = (prod(&[b, shape.in_heads, t]), d.div_ceil(4));
        let lens = (len_for(prod(&[rows, d]), pick), len_for(prod(&[rows, kw]), pick), d);
        let input = Input::new(kind, lens, format, seed, vkind);
        let w = weight_words(prod(&[h, kw, n]), wpick, seed);
        let args = ProjectionArgs {
            input: input.act(), format, scale, w_words: &w, w_scale, w_qmax, epilogue,
        };
        let want = prod(&[b, h, t, shape.latent_out]);
        let bound = f32_bound(&input.f32s, w_scale, d);
        projection_on_all(&format!("lowrank {shape:?}"), &args, want, bound,
            |be, a| be.lowrank(&shape, a))?;
    }

    #[test]
    fn decoder_tail_calls(
        (b, h, t, l, lart, dd) in (dim(), dim(), dim(), dim(), dim(), dim()),
        consistent in prop::bool::weighted(0.85),
        (kind, pick, wpick, vkind) in (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()),
        format in format(), scale in scale(), w_scale in scale_value(),
        w_qmax in w_qmax(),
        epilogue in epilogue(), seed in any::<u64>(),
    ) {
        let lart = if consistent { lart.max(l) } else { lart };
        let shape = DecoderTailShape {
            batch: b, heads: h, time: t, latent: l, latent_per_head: lart, dim: dd,
        };
        let rows = prod(&[b, h, t]);
        let lens =
            (len_for(prod(&[rows, l]), pick), len_for(prod(&[rows, l.div_ceil(4)]), pick), l);
        let input = Input::new(kind, lens, format, seed, vkind);
        let w = weight_words(prod(&[h, lart.div_ceil(4), dd]), wpick, seed);
        let args = ProjectionArgs {
            input: input.act(), format, scale, w_words: &w, w_scale, w_qmax, epilogue,
        };
        let want = prod(&[b, t, dd]);
        let bound = f32_bound(&input.f32s, w_scale, prod(&[h, l]));
        projection_on_all(&format!("decoder_tail {shape:?}"), &args, want, bound,
            |be, a| be.decoder_tail(&shape, a))?;
    }

    #[test]
    fn quantize_calls(
        (rows, k) in (dim(), dim()), pick in any::<u8>(), vkind in any::<u8>(),
        format in format(), scale in scale(), seed in any::<u64>(),
    ) {
        let shape = QuantizeShape { rows, k };
        let x = values(len_for(prod(&[rows, k]), pick), seed, vkind);
        let n = x.len();
        on_all(&format!("activation_scale {n} {format:?}"),
            |be| be.activation_scale(&x, format),
            |_| Ok(()),
            |a, c| (a - c).abs() <= 1e-6 * a.abs().max(c.abs()),
            |_, _| None)?;
        on_all(&format!("quantize_codes {n} {format:?} {scale:?}"),
            |be| be.quantize_codes(&x, format, scale),
            |(codes, _)| len_is(codes.len(), n),
            |a, c| a.0 == c.0 && a.1.to_bits() == c.1.to_bits(),
            |be, g| (scale == ScaleSource::Compute)
                .then(|| be.quantize_codes(&x, format, ScaleSource::Param(g.1))))?;
        let words = prod(&[rows, k.div_ceil(4)]);
        on_all(&format!("quantize_pack_i8x4 {shape:?} {format:?} {scale:?}"),
            |be| be.quantize_pack_i8x4(&x, shape, format, scale),
            |(w, _)| len_is(w.len(), words),
            |a, c| a.0 == c.0 && a.1.to_bits() == c.1.to_bits(),
            |be, g| (scale == ScaleSource::Compute)
                .then(|| be.quantize_pack_i8x4(&x, shape, format, ScaleSource::Param(g.1))))?;
    }

    #[test]
    fn rho_calls(
        dims in (dim(), dim(), dim(), dim()), pick in any::<u8>(), vkind in any::<u8>(),
        (wpick, spick) in (any::<u8>(), any::<u8>()), seed in any::<u64>(),
    ) {
        let shape = RhoShape { logical_shape: [dims.0, dims.1, dims.2, dims.3] };
        let n = prod(&shape.logical_shape);
        let x = values(len_for(n, pick), seed, vkind);
        let blocks = n.div_ceil(32);
        on_all(&format!("rho_int8_pack {shape:?}"),
            |be| be.rho_int8_pack(&shape, &x),
            |(w, s)| len_is(w.len(), blocks.saturating_mul(8)).and(len_is(s.len(), blocks)),
            |a, c| a.0 == c.0 && same_f32(&a.1, &c.1),
            |_, _| None)?;
        let mut rng = lowbit_kernels::testing::Rng::new(seed);
        let words: Vec<u32> = (0..len_for(blocks.saturating_mul(8), wpick))
            .map(|_| rng.next_u64() as u32)
            .collect();
        let scales = values(len_for(blocks, spick), seed ^ 1, vkind / 3);
        let scales: Vec<f32> = scales.iter().map(|s| s.abs()).collect();
        on_all(&format!("rho_int8_unpack {shape:?}"),
            |be| be.rho_int8_unpack(&shape, &words, &scales),
            |v| len_is(v.len(), n),
            |a, c| same_f32(a, c),
            |_, _| None)?;
    }
}

/// The shape accessors answer (saturating, not panicking) on literals that `validate` refuses.
#[test]
fn shape_accessors_of_invalid_literals() {
    let huge = usize::MAX / 3;
    let l = LowrankShape {
        batch: huge,
        in_heads: huge,
        heads: huge,
        time: huge,
        embd: huge,
        latent: huge,
        latent_out: huge,
    };
    assert!(l.validate().is_err());
    let lens = [
        l.x_len(),
        l.x_words_len(),
        l.w_len(),
        l.w_words_len(),
        l.out_len(),
        l.m(),
    ];
    assert_eq!((lens, l.w_ternary2_len()), ([usize::MAX; 6], usize::MAX));
    assert_eq!(l.int_ops(), u64::MAX);
    let d = DecoderTailShape {
        batch: huge,
        heads: huge,
        time: huge,
        latent: huge,
        latent_per_head: huge,
        dim: huge,
    };
    assert!(d.validate().is_err());
    let lens = [
        d.y_len(),
        d.y_words_len(),
        d.w_words_len(),
        d.out_len(),
        d.m(),
        d.k(),
    ];
    assert_eq!((lens, d.w_ternary2_len()), ([usize::MAX; 6], usize::MAX));
    assert_eq!(d.int_ops(), u64::MAX);
    let q = QuantizeShape {
        rows: huge,
        k: huge,
    };
    assert_eq!((q.len(), q.words_len()), (usize::MAX, usize::MAX));
    let r = RhoShape {
        logical_shape: [huge; 4],
    };
    assert_eq!(r.len(), usize::MAX);
    assert_eq!(r.int8_words(), usize::MAX.div_ceil(32) * 8);
}

proptest! {
    #![proptest_config(config())]

    /// The reference's entry points on literal shapes and buffers of any length: typed errors,
    /// never a panic, outputs of the shape's length.
    #[test]
    fn reference_calls(
        (b, hin, h, t, d, n, lo) in (dim(), dim(), dim(), dim(), dim(), dim(), dim()),
        (pick, wpick) in (any::<u8>(), any::<u8>()),
        (a_scale, w_scale) in (scale_value(), scale_value()),
        seed in any::<u64>(),
    ) {
        use lowbit_kernels::reference;
        let l = LowrankShape {
            batch: b, in_heads: hin, heads: h, time: t, embd: d, latent: n, latent_out: lo,
        };
        let x = values(len_for(prod(&[b, hin, t, d]), pick), seed, 5);
        let codes: Vec<i32> = x.iter().map(|v| (v * 40.0) as i32).collect();
        let w: Vec<i8> = (0..len_for(prod(&[h, d, n]), wpick)).map(|i| (i % 3) as i8 - 1).collect();
        let out = |r: Result<Vec<f32>>, want: usize| match r {
            Ok(v) => len_is(v.len(), want).map_err(TestCaseError::fail),
            Err(_) => Ok(()),
        };
        let want = prod(&[b, h, t, lo]);
        out(no_panic("reference::lowrank_projection_codes", || {
            reference::lowrank_projection_codes(&l, &codes, &w, a_scale, w_scale)
        }), want)?;
        out(no_panic("reference::lowrank_projection_float", || {
            reference::lowrank_projection_float(&l, &x, &w, w_scale)
        }), want)?;
        let dt = DecoderTailShape {
            batch: b, heads: h, time: t, latent: d, latent_per_head: n, dim: lo,
        };
        let y = values(len_for(prod(&[b, h, t, d]), pick), seed, 5);
        let ycodes: Vec<i32> = y.iter().map(|v| (v * 40.0) as i32).collect();
        let wd: Vec<i8> = (0..len_for(prod(&[h, n, lo]), wpick)).map(|i| (i % 3) as i8 - 1).collect();
        let want = prod(&[b, t, lo]);
        out(no_panic("reference::decoder_tail_codes", || {
            reference::decoder_tail_codes(&dt, &ycodes, &wd, a_scale, w_scale)
        }), want)?;
        out(no_panic("reference::decoder_tail_float", || {
            reference::decoder_tail_float(&dt, &y, &wd, w_scale)
        }), want)?;
    }
}
