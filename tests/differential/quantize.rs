//! Activation scale, quantize to codes, quantize + pack to i8x4 on every backend.

use crate::{Ctx, Data, INT_FORMATS, make_data, ref_codes, ref_scale};
use lowbit_kernels::LowbitError;
use lowbit_kernels::config::LowBitActivationFormat as Fmt;
use lowbit_kernels::ops::ScaleSource;
use lowbit_kernels::ops::quantize::QuantizeShape;
use lowbit_kernels::pack::{pack_rows_i32_to_i8x4, unpack_i8x4};
use lowbit_kernels::testing::Rng;

const DATA: [Data; 7] = [
    Data::Normal,
    Data::Zeros,
    Data::Huge,
    Data::Clip,
    Data::Ties(0.25),
    Data::Ties(0.1),
    Data::Ties(0.0137),
];

/// (rows, k): k not a multiple of 4 nor of any tile; one larger tensor for the reductions.
const SHAPES: [(usize, usize); 6] = [(1, 1), (1, 5), (3, 18), (17, 33), (2, 256), (70, 1031)];

fn scale(ctx: &mut Ctx) {
    let mut rng = Rng::new(21);
    for (rows, k) in SHAPES {
        for data in DATA {
            let x = make_data(&mut rng, rows * k, data);
            for format in INT_FORMATS {
                let case = format!("activation_scale {rows}x{k} {data:?} {format:?}");
                if let Some(s) = ctx.ok(&case, ctx.b.activation_scale(&x, format)) {
                    ctx.check_scale(&case, ref_scale(&x, format), s);
                }
            }
        }
    }
    let x = make_data(&mut rng, 100, Data::Normal);
    ctx.check_err(
        "activation_scale Fp16",
        ctx.b.activation_scale(&x, Fmt::Fp16),
        "UnsupportedFormat",
        crate::is_format,
    );
    let mut xb = x.clone();
    xb[37] = f32::NAN;
    ctx.check_err(
        "activation_scale NaN",
        ctx.b.activation_scale(&xb, Fmt::Int8),
        "NonFinite",
        |e| matches!(e, LowbitError::NonFinite { .. }),
    );
}

/// Scale sources of one case: computed, the reference's, and a smaller one (more clipping).
fn scale_sources(x: &[f32], format: Fmt, data: Data) -> Vec<ScaleSource> {
    let s = match data {
        Data::Ties(s) => s,
        _ => ref_scale(x, format),
    };
    vec![
        ScaleSource::Compute,
        ScaleSource::Param(s),
        ScaleSource::Buffer(s * 0.6),
    ]
}

fn used_scale(
    ctx: &mut Ctx,
    case: &str,
    x: &[f32],
    format: Fmt,
    src: ScaleSource,
    got: f32,
) -> bool {
    match src {
        ScaleSource::Param(s) | ScaleSource::Buffer(s) => {
            ctx.checks += 1;
            if got.to_bits() != s.to_bits() {
                ctx.fail(case, format!("reported scale {got:e}, given {s:e}"));
                return false;
            }
            true
        }
        ScaleSource::Compute => ctx.check_scale(case, ref_scale(x, format), got),
    }
}

fn codes(ctx: &mut Ctx) {
    let mut rng = Rng::new(22);
    for (rows, k) in SHAPES {
        for data in DATA {
            let x = make_data(&mut rng, rows * k, data);
            for format in INT_FORMATS {
                for src in scale_sources(&x, format, data) {
                    let case = format!("quantize_codes {rows}x{k} {data:?} {format:?} {src:?}");
                    let Some((c1, s1)) = ctx.ok(&case, ctx.b.quantize_codes(&x, format, src))
                    else {
                        continue;
                    };
                    let Some((c2, s2)) = ctx.ok(&case, ctx.b.quantize_codes(&x, format, src))
                    else {
                        continue;
                    };
                    ctx.checks += 1;
                    if c1 != c2 || s1.to_bits() != s2.to_bits() {
                        ctx.fail(&case, "two runs differ (not deterministic)");
                    }
                    if used_scale(ctx, &case, &x, format, src, s1) {
                        let expected = ref_codes(&x, format, s1);
                        ctx.check_codes(&case, &x, s1, format, &expected, &c1);
                    }
                }
            }
        }
    }
}

fn pack(ctx: &mut Ctx) {
    let mut rng = Rng::new(23);
    for (rows, k) in SHAPES {
        let shape = QuantizeShape::new(rows, k).unwrap();
        for data in DATA {
            let x = make_data(&mut rng, rows * k, data);
            for format in [Fmt::Int8, Fmt::Int4Exp] {
                for src in scale_sources(&x, format, data) {
                    let case = format!("quantize_pack_i8x4 {rows}x{k} {data:?} {format:?} {src:?}");
                    let Some((w1, s1)) =
                        ctx.ok(&case, ctx.b.quantize_pack_i8x4(&x, shape, format, src))
                    else {
                        continue;
                    };
                    let Some((w2, s2)) =
                        ctx.ok(&case, ctx.b.quantize_pack_i8x4(&x, shape, format, src))
                    else {
                        continue;
                    };
                    ctx.checks += 1;
                    if w1 != w2 || s1.to_bits() != s2.to_bits() {
                        ctx.fail(&case, "two runs differ (not deterministic)");
                    }
                    if !used_scale(ctx, &case, &x, format, src, s1) {
                        continue;
                    }
                    let expected_codes = ref_codes(&x, format, s1);
                    let expected = pack_rows_i32_to_i8x4("test", &expected_codes, rows, k).unwrap();
                    ctx.checks += 1;
                    if w1 == expected {
                        continue;
                    }
                    if w1.len() != expected.len() {
                        ctx.fail(
                            &case,
                            format!("{} words, expected {}", w1.len(), expected.len()),
                        );
                        continue;
                    }
                    // Unpack (padding lanes must be zero) and compare codes, ties allowed on wgpu.
                    let kw = k.div_ceil(4);
                    let mut got = Vec::with_capacity(rows * k);
                    let mut bad_padding = None;
                    for r in 0..rows {
                        for (j, &word) in w1[r * kw..(r + 1) * kw].iter().enumerate() {
                            for (l, lane) in unpack_i8x4(word).into_iter().enumerate() {
                                if 4 * j + l < k {
                                    got.push(i32::from(lane));
                                } else if lane != 0 {
                                    bad_padding.get_or_insert((r, j, l, lane));
                                }
                            }
                        }
                    }
                    if let Some(p) = bad_padding {
                        ctx.fail(
                            &case,
                            format!("padding lane not zero (row, word, lane, value) = {p:?}"),
                        );
                    }
                    ctx.check_codes(&case, &x, s1, format, &expected_codes, &got);
                }
            }
        }
    }
}

fn errors(ctx: &mut Ctx) {
    let mut rng = Rng::new(24);
    let x = make_data(&mut rng, 3 * 18, Data::Normal);
    let shape = QuantizeShape::new(3, 18).unwrap();
    let b = ctx.b;
    for src in [ScaleSource::Compute, ScaleSource::Param(0.1)] {
        ctx.check_err(
            &format!("pack uint8pos {src:?}"),
            b.quantize_pack_i8x4(&x, shape, Fmt::Uint8PosExp, src),
            "UnsupportedFormat",
            crate::is_format,
        );
        ctx.check_err(
            &format!("pack fp16 {src:?}"),
            b.quantize_pack_i8x4(&x, shape, Fmt::Fp16, src),
            "UnsupportedFormat",
            crate::is_format,
        );
        ctx.check_err(
            &format!("codes fp16 {src:?}"),
            b.quantize_codes(&x, Fmt::Fp16, src),
            "UnsupportedFormat",
            crate::is_format,
        );
        ctx.check_err(
            &format!("pack short input {src:?}"),
            b.quantize_pack_i8x4(&x[..x.len() - 1], shape, Fmt::Int8, src),
            "LengthMismatch",
            crate::is_len,
        );
        ctx.check_err(
            &format!("pack literal shape 0x18 {src:?}"),
            b.quantize_pack_i8x4(&[], QuantizeShape { rows: 0, k: 18 }, Fmt::Int8, src),
            "a shape error",
            crate::is_shape,
        );
        for (i, v) in [(0usize, f32::NAN), (53, f32::INFINITY)] {
            let mut xb = x.clone();
            xb[i] = v;
            for format in INT_FORMATS {
                ctx.check_err(
                    &format!("codes {v} at {i} {format:?} {src:?}"),
                    b.quantize_codes(&xb, format, src),
                    "NonFinite",
                    |e| matches!(e, LowbitError::NonFinite { .. }),
                );
            }
            ctx.check_err(
                &format!("pack {v} at {i} {src:?}"),
                b.quantize_pack_i8x4(&xb, shape, Fmt::Int4Exp, src),
                "NonFinite",
                |e| matches!(e, LowbitError::NonFinite { .. }),
            );
        }
    }
    for s in [0.0, -0.5, f32::NAN, f32::INFINITY] {
        for src in [ScaleSource::Param(s), ScaleSource::Buffer(s)] {
            ctx.check_err(
                &format!("codes {src:?}"),
                b.quantize_codes(&x, Fmt::Int8, src),
                "InvalidScale",
                crate::is_scale,
            );
            ctx.check_err(
                &format!("pack {src:?}"),
                b.quantize_pack_i8x4(&x, shape, Fmt::Int8, src),
                "InvalidScale",
                crate::is_scale,
            );
        }
    }
    for format in INT_FORMATS {
        ctx.check_err(
            &format!("codes of an empty tensor {format:?}"),
            b.quantize_codes(&[], format, ScaleSource::Param(0.1)),
            "a shape error",
            crate::is_shape,
        );
    }
    for (rows, k) in [(0, 5), (5, 0)] {
        ctx.check_err(
            &format!("QuantizeShape::new({rows}, {k})"),
            QuantizeShape::new(rows, k),
            "InvalidShape",
            |e| matches!(e, LowbitError::InvalidShape { .. }),
        );
    }
}

backend_tests!(scale, codes, pack, errors);
