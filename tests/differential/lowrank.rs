//! Low-rank projection `x[B,Hin,T,D] · W[H,D,N] → [B,H,T,latent_out]` on every backend.

use crate::{Ctx, Op};
use lowbit_kernels::LowrankShape;

fn op(x: [usize; 4], w: [usize; 3], latent_out: usize) -> Op {
    Op::Lowrank(LowrankShape::new(x, w, latent_out).unwrap())
}

/// Small and odd shapes: D, N, T not multiples of 4 or of tile sizes; B 1 and 2; Hin 1 and H;
/// latent_out < N; M = B·T from 1 to 34.
fn small_ops() -> Vec<Op> {
    vec![
        op([1, 1, 5, 18], [1, 18, 9], 9),
        op([2, 3, 5, 18], [3, 18, 9], 7),
        op([2, 1, 5, 18], [3, 18, 9], 9),
        op([1, 1, 1, 1], [1, 1, 1], 1),
        op([2, 1, 17, 33], [2, 33, 130], 130),
        op([1, 2, 17, 33], [2, 33, 130], 100),
        op([1, 1, 3, 7], [4, 7, 65], 64),
        // M = 2 (the CUDA dp4a kernel's one-row shape takes up to two rows), across batches
        // and within one.
        op([2, 1, 1, 40], [3, 40, 70], 70),
        op([1, 3, 2, 40], [3, 40, 70], 61),
    ]
}

fn random(ctx: &mut Ctx) {
    crate::int_cases(ctx, "lowrank", &small_ops(), 1);
}

fn large(ctx: &mut Ctx) {
    let ops = [
        op([1, 1, 70, 256], [4, 256, 300], 300),
        op([2, 4, 9, 130], [4, 130, 257], 200),
    ];
    crate::large_cases(ctx, "lowrank large", &ops, 2);
}

/// A 32 MiB output (8192 × 1024 f32): the CPU backend's non-temporal-store epilogue and
/// GPU launches with many blocks along M.
fn wide(ctx: &mut Ctx) {
    let op = op([1, 1, 8192, 6], [1, 6, 1024], 1024);
    let mut rng = lowbit_kernels::testing::Rng::new(6);
    let w = crate::Weights::new(&op, crate::WeightKind::Int8, &mut rng);
    let x = crate::make_data(&mut rng, op.in_len(), crate::Data::Normal);
    for relu in [false, true] {
        let v = crate::Variant {
            format: lowbit_kernels::config::LowBitActivationFormat::Int8,
            input: crate::InputKind::F32,
            scale: lowbit_kernels::ops::ScaleSource::Compute,
            epilogue: lowbit_kernels::ops::Epilogue {
                relu,
                ..Default::default()
            },
        };
        crate::check_int_variant(ctx, "lowrank wide", &op, &w, &x, v);
    }
}

fn epilogue(ctx: &mut Ctx) {
    crate::epilogue_cases(
        ctx,
        "lowrank",
        &[
            op([2, 1, 5, 18], [3, 18, 9], 7),
            op([1, 2, 17, 33], [2, 33, 130], 130),
            // Whole K stages and 16-byte rows (the tiled kernels' unchecked loads) with edge
            // tiles in M and N, and a thread's rows crossing a batch boundary (T = 37).
            op([2, 1, 37, 256], [3, 256, 132], 132),
        ],
        3,
    );
}

fn float(ctx: &mut Ctx) {
    // The large shape's float path runs in `large`.
    let ops = small_ops();
    crate::float_cases(ctx, "lowrank", &ops, 4);
}

fn edges(ctx: &mut Ctx) {
    crate::edge_cases(
        ctx,
        "lowrank",
        &[
            op([1, 1, 5, 18], [2, 18, 9], 9),
            op([2, 2, 17, 33], [2, 33, 130], 129),
        ],
        5,
    );
}

fn max_accumulator(ctx: &mut Ctx) {
    // 66311·255·127 < 2^31 ≤ 66312·255·127; int8×int8 fits far above.
    crate::max_accumulator_case(ctx, "lowrank", &op([1, 1, 1, 66311], [1, 66311, 2], 2));
    crate::max_accumulator_case(ctx, "lowrank", &op([1, 1, 2, 66312], [1, 66312, 1], 1));
}

fn errors(ctx: &mut Ctx) {
    let good = op([2, 1, 5, 18], [3, 18, 9], 7);
    let lit = |in_heads, heads, time, latent, latent_out| {
        Op::Lowrank(LowrankShape {
            batch: 1,
            in_heads,
            heads,
            time,
            embd: 18,
            latent,
            latent_out,
        })
    };
    let bad = [
        lit(3, 2, 5, 9, 9),  // Hin not 1 or H
        lit(1, 2, 5, 9, 10), // latent_out > N
        lit(1, 2, 5, 9, 0),  // latent_out = 0
        lit(1, 2, 0, 9, 9),  // zero T
        lit(1, 0, 5, 9, 9),  // zero H
    ];
    let overflow = [
        op([1, 1, 1, 66312], [1, 66312, 1], 1),
        op([1, 2, 2, 70001], [2, 70001, 3], 2),
    ];
    crate::error_cases(ctx, "lowrank", &good, &bad, &overflow);
    // The shape constructor itself rejects what it must.
    for (x, w, lo) in [
        ([1, 3, 5, 18], [2, 18, 9], 9),
        ([1, 1, 5, 17], [2, 18, 9], 9),
        ([1, 1, 5, 18], [2, 18, 9], 10),
        ([1, 1, 0, 18], [2, 18, 9], 9),
        ([1, 1, 5, 18], [2, 18, 0], 0),
    ] {
        ctx.check_err(
            &format!("LowrankShape::new({x:?}, {w:?}, {lo})"),
            LowrankShape::new(x, w, lo),
            "a shape error",
            crate::is_shape,
        );
    }
}

backend_tests!(
    random,
    large,
    wide,
    epilogue,
    float,
    edges,
    max_accumulator,
    errors
);
