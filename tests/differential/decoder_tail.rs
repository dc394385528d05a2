//! Decoder tail `y[B,H,T,L] · W[H·Lart,D]` summed over heads → `[B,1,T,D]` on every backend.

use crate::{Ctx, Op};
use lowbit_kernels::DecoderTailShape;

fn op(y: [usize; 4], w: [usize; 2]) -> Op {
    Op::Decoder(DecoderTailShape::new(y, w).unwrap())
}

/// Small and odd shapes: L, D, T not multiples of 4 or of tile sizes; B 1 and 2; H 1 and
/// more; L < Lart.
fn small_ops() -> Vec<Op> {
    vec![
        op([1, 1, 5, 9], [9, 18]),
        op([2, 3, 5, 7], [27, 18]),
        op([1, 1, 1, 1], [1, 1]),
        op([2, 2, 17, 130], [266, 33]),
        op([1, 4, 3, 5], [4 * 8, 65]),
    ]
}

fn random(ctx: &mut Ctx) {
    crate::int_cases(ctx, "decoder_tail", &small_ops(), 11);
}

fn large(ctx: &mut Ctx) {
    let ops = [
        op([1, 4, 70, 300], [1200, 256]),
        op([2, 3, 9, 257], [3 * 260, 130]),
        // Whole K stages and 16-byte rows (the tiled kernels' unchecked loads), edge tiles.
        op([2, 2, 37, 256], [512, 132]),
    ];
    crate::large_cases(ctx, "decoder_tail large", &ops, 12);
}

fn epilogue(ctx: &mut Ctx) {
    crate::epilogue_cases(
        ctx,
        "decoder_tail",
        &[op([2, 3, 5, 7], [27, 18]), op([1, 2, 17, 130], [260, 33])],
        13,
    );
}

fn float(ctx: &mut Ctx) {
    // The large shape's float path runs in `large`.
    let ops = small_ops();
    crate::float_cases(ctx, "decoder_tail", &ops, 14);
}

fn edges(ctx: &mut Ctx) {
    crate::edge_cases(
        ctx,
        "decoder_tail",
        &[op([1, 2, 5, 9], [18, 18]), op([2, 2, 17, 129], [260, 33])],
        15,
    );
}

fn max_accumulator(ctx: &mut Ctx) {
    // K = H·L: 66311·255·127 < 2^31 ≤ 66312·255·127 (uint8pos × int8).
    crate::max_accumulator_case(ctx, "decoder_tail", &op([1, 1, 1, 66311], [66311, 2]));
    crate::max_accumulator_case(ctx, "decoder_tail", &op([1, 2, 2, 33156], [66312, 1]));
}

fn errors(ctx: &mut Ctx) {
    let good = op([2, 3, 5, 7], [27, 18]);
    let lit = |heads, time, latent, latent_per_head, dim| {
        Op::Decoder(DecoderTailShape {
            batch: 1,
            heads,
            time,
            latent,
            latent_per_head,
            dim,
        })
    };
    let bad = [
        lit(2, 5, 10, 9, 18), // L > Lart
        lit(2, 0, 9, 9, 18),  // zero T
        lit(2, 5, 9, 9, 0),   // zero D
        lit(2, 5, 0, 9, 18),  // zero L
    ];
    let overflow = [
        op([1, 2, 1, 33156], [66312, 1]),
        op([1, 1, 3, 70001], [70001, 2]),
    ];
    crate::error_cases(ctx, "decoder_tail", &good, &bad, &overflow);
    for (y, w) in [
        ([1, 2, 5, 10], [18, 18]),
        ([1, 4, 5, 2], [18, 18]),
        ([1, 2, 0, 9], [18, 18]),
        ([1, 2, 5, 9], [18, 0]),
    ] {
        ctx.check_err(
            &format!("DecoderTailShape::new({y:?}, {w:?})"),
            DecoderTailShape::new(y, w),
            "a shape error",
            crate::is_shape,
        );
    }
}

backend_tests!(
    random,
    large,
    epilogue,
    float,
    edges,
    max_accumulator,
    errors
);
