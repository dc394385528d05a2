//! Rho int8 block compression (device layout: 8 i8x4 words + 1 scale per block of 32).

use crate::{Ctx, Data, make_data};
use lowbit_kernels::LowbitError;
use lowbit_kernels::ops::rho::{RHO_BLOCK_SIZE, RhoShape};
use lowbit_kernels::pack::unpack_i8x4;
use lowbit_kernels::reference::rho::{rho_int8_code, rho_int8_pack_words, rho_int8_unpack_words};
use lowbit_kernels::testing::{Rng, tol};

/// Odd lengths (not multiples of 32) and a few whole-block ones.
const SHAPES: [[usize; 4]; 7] = [
    [1, 1, 1, 1],
    [1, 2, 3, 5],
    [1, 1, 4, 8],
    [1, 1, 33, 1],
    [2, 3, 7, 11],
    [1, 4, 64, 67],
    [2, 4, 32, 64],
];

fn codes_of(words: &[u32], len: usize) -> Vec<i32> {
    (0..len)
        .map(|i| i32::from(unpack_i8x4(words[i / 4])[i % 4]))
        .collect()
}

fn pack(ctx: &mut Ctx) {
    let mut rng = Rng::new(31);
    for dims in SHAPES {
        let shape = RhoShape::new(dims).unwrap();
        for data in [
            Data::Normal,
            Data::Zeros,
            Data::Huge,
            Data::Clip,
            Data::Ties(0.01),
        ] {
            let v = make_data(&mut rng, shape.len(), data);
            let case = format!("rho_int8_pack {dims:?} {data:?}");
            let (ref_words, ref_scales) = rho_int8_pack_words(&shape, &v).unwrap();
            let Some((words, scales)) = ctx.ok(&case, ctx.b.rho_int8_pack(&shape, &v)) else {
                continue;
            };
            let again = ctx.ok(&case, ctx.b.rho_int8_pack(&shape, &v));
            ctx.checks += 1;
            if again.as_ref().is_some_and(|(w, s)| {
                *w != words
                    || s.iter()
                        .zip(&scales)
                        .any(|(a, b)| a.to_bits() != b.to_bits())
            }) {
                ctx.fail(&case, "two runs differ (not deterministic)");
            }
            if words.len() != ref_words.len() || scales.len() != ref_scales.len() {
                ctx.fail(
                    &case,
                    format!(
                        "{} words / {} scales, expected {} / {}",
                        words.len(),
                        scales.len(),
                        ref_words.len(),
                        ref_scales.len()
                    ),
                );
                continue;
            }
            let exact_scales = scales
                .iter()
                .zip(&ref_scales)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            if words == ref_words && exact_scales {
                continue;
            }
            // Only a backend with inexact division (max/127, v/s) may differ, and only by a
            // scale within tolerance and near-tie codes under its own scales.
            if !ctx.inexact_division() {
                ctx.check_exact(&format!("{case} scales"), &ref_scales, &scales);
                let (e, a) = (
                    codes_of(&ref_words, ref_words.len() * 4),
                    codes_of(&words, words.len() * 4),
                );
                let first = e.iter().zip(&a).position(|(x, y)| x != y);
                ctx.fail(
                    &case,
                    format!("words differ; first differing code at {first:?}"),
                );
                continue;
            }
            for (i, (&s, &r)) in scales.iter().zip(&ref_scales).enumerate() {
                ctx.checks += 1;
                if (s - r).abs() > tol::DEVICE_SCALE_REL * r {
                    ctx.fail(&case, format!("block {i} scale {s:e} vs reference {r:e}"));
                }
            }
            let n = shape.len();
            let got = codes_of(&words, n);
            let expected: Vec<i32> = (0..n)
                .map(|i| i32::from(rho_int8_code(v[i], scales[i / RHO_BLOCK_SIZE])))
                .collect();
            // near_tie is per element with its block's scale: check block by block.
            for (blk, s) in scales.iter().enumerate() {
                let lo = blk * RHO_BLOCK_SIZE;
                let hi = (lo + RHO_BLOCK_SIZE).min(n);
                ctx.check_codes(
                    &format!("{case} block {blk}"),
                    &v[lo..hi],
                    *s,
                    lowbit_kernels::config::LowBitActivationFormat::Int8,
                    &expected[lo..hi],
                    &got[lo..hi],
                );
            }
            let pad = (n..words.len() * 4).find(|&i| unpack_i8x4(words[i / 4])[i % 4] != 0);
            if let Some(i) = pad {
                ctx.fail(&case, format!("padding lane {i} not zero"));
            }
        }
    }
}

fn unpack(ctx: &mut Ctx) {
    let mut rng = Rng::new(32);
    for dims in SHAPES {
        let shape = RhoShape::new(dims).unwrap();
        let v = make_data(&mut rng, shape.len(), Data::Normal);
        let (words, scales) = rho_int8_pack_words(&shape, &v).unwrap();
        let case = format!("rho_int8_unpack {dims:?}");
        let expected = rho_int8_unpack_words(&shape, &words, &scales).unwrap();
        if let Some(got) = ctx.ok(&case, ctx.b.rho_int8_unpack(&shape, &words, &scales)) {
            ctx.check_exact(&case, &expected, &got);
        }
    }
}

fn errors(ctx: &mut Ctx) {
    let b = ctx.b;
    let shape = RhoShape::new([1, 2, 3, 5]).unwrap();
    let v = make_data(&mut Rng::new(33), shape.len(), Data::Normal);
    let (words, scales) = rho_int8_pack_words(&shape, &v).unwrap();
    ctx.check_err(
        "pack short",
        b.rho_int8_pack(&shape, &v[1..]),
        "LengthMismatch",
        crate::is_len,
    );
    let mut vb = v.clone();
    vb[29] = f32::NAN;
    ctx.check_err("pack NaN", b.rho_int8_pack(&shape, &vb), "NonFinite", |e| {
        matches!(e, LowbitError::NonFinite { .. })
    });
    ctx.check_err(
        "unpack short words",
        b.rho_int8_unpack(&shape, &words[1..], &scales),
        "LengthMismatch",
        crate::is_len,
    );
    ctx.check_err(
        "unpack long scales",
        b.rho_int8_unpack(&shape, &words, &[scales.clone(), vec![1.0]].concat()),
        "LengthMismatch",
        crate::is_len,
    );
    ctx.check_err(
        "RhoShape zero dim",
        RhoShape::new([1, 0, 3, 5]),
        "InvalidShape",
        |e| matches!(e, LowbitError::InvalidShape { .. }),
    );
    ctx.check_err(
        "pack literal zero shape",
        b.rho_int8_pack(
            &RhoShape {
                logical_shape: [1, 0, 3, 5],
            },
            &[],
        ),
        "a shape error",
        crate::is_shape,
    );
}

backend_tests!(pack, unpack, errors);
