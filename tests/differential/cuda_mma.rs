//! The CUDA int8 tensor-core (mma) family against the reference, bit for bit: odd shapes
//! (D, L, N, T off every tile size; heads 1 and H; L < Lart; latent_out < N), every input
//! variant and scale source, every epilogue, edge data, the largest accumulator, split-K
//! determinism. The backend is forced onto the mma family whatever `LOWBIT_CUDA_KERNELS` says;
//! without a CUDA device of sm_80+ each test prints `SKIPPED` (or fails under
//! `LOWBIT_REQUIRE=cuda`).

use std::sync::OnceLock;

use crate::{Ctx, Op};
use lowbit_kernels::backend::cuda::{
    CudaBackend, CudaDevice, DeviceAct, DeviceOut, DeviceScale, KernelFamily, Pdl, mma,
};
use lowbit_kernels::config::LowBitActivationFormat as Fmt;
use lowbit_kernels::ops::{DecoderTailShape, Epilogue, LowrankShape, OutputDType};
use lowbit_kernels::testing::{Rng, compare_f32};
use lowbit_kernels::{BackendKind, reference};

type Cell = OnceLock<Result<CudaBackend, String>>;

/// A CUDA device forced onto the mma family, set up by `setup`.
fn open_mma(setup: impl FnOnce(CudaDevice) -> CudaBackend) -> Result<CudaBackend, String> {
    CudaDevice::new(0)
        .and_then(|d| d.with_family(KernelFamily::Mma))
        .map(setup)
        .map_err(|e| e.to_string())
}

fn mma_backend() -> Option<&'static CudaBackend> {
    static B: Cell = OnceLock::new();
    crate::cuda_backend(&B, || open_mma(CudaBackend::from_device))
}

/// The mma family with the warpgroup-mma kernels switched off: on sm_90 the `mma.sync`
/// low-rank and decoder kernels run only here.
fn sync_backend() -> Option<&'static CudaBackend> {
    static B: Cell = OnceLock::new();
    crate::cuda_backend(&B, || {
        open_mma(|d| CudaBackend::from_device(d.with_wgmma(false)))
    })
}

/// The mma backend where its device runs the sm_90a warpgroup-mma kernels; elsewhere `None`,
/// after saying so.
fn wgmma_backend() -> Option<&'static CudaBackend> {
    with_wgmma(mma_backend()?)
}

/// `b` where its device runs the warpgroup-mma kernels; elsewhere `None`, after saying so.
fn with_wgmma(b: &'static CudaBackend) -> Option<&'static CudaBackend> {
    if !b.device().wgmma() {
        println!(
            "SKIPPED: no wgmma on {} (needs compute capability 9.0)",
            b.device().name()
        );
        return None;
    }
    Some(b)
}

/// A backend on the mma family that uploads ternary/binary weights as ternary2 fragments.
fn t2_backend() -> Option<&'static CudaBackend> {
    static B: Cell = OnceLock::new();
    crate::cuda_backend(&B, || {
        open_mma(|d| CudaBackend::from_device(d).with_ternary2_weights(true))
    })
}

/// Runs one case on the mma backend and fails with every recorded failure; `stem` must have
/// been compiled by then (the case really ran on the tensor cores).
fn run_mma(stem: &str, case: fn(&mut Ctx)) {
    let Some(b) = mma_backend() else { return };
    run_on_mma(b, &format!("{stem}.cu"), case);
}

/// As [`run_mma`] on backend `b`; some compiled module's description must contain `needle`.
fn run_on_mma(b: &'static CudaBackend, needle: &str, case: impl FnOnce(&mut Ctx)) {
    assert_eq!(b.device().family(), KernelFamily::Mma);
    println!("[cuda mma] device: {}", b.device().name());
    let mut ctx = Ctx {
        b,
        kind: BackendKind::Cuda,
        failures: Vec::new(),
        tie_flips: 0,
        checks: 0,
    };
    case(&mut ctx);
    println!(
        "[cuda mma] {} checks, {} failures",
        ctx.checks,
        ctx.failures.len()
    );
    if !ctx.failures.is_empty() {
        panic!(
            "[cuda mma] {} failing check(s):\n{}",
            ctx.failures.len(),
            ctx.failures.join("\n")
        );
    }
    assert!(
        crate::compiled(b.device(), &[needle]),
        "no module matching {needle:?} was compiled: the case did not reach that kernel"
    );
}

fn lr(x: [usize; 4], w: [usize; 3], latent_out: usize) -> Op {
    Op::Lowrank(LowrankShape::new(x, w, latent_out).unwrap())
}

fn dec(y: [usize; 4], w: [usize; 2]) -> Op {
    Op::Decoder(DecoderTailShape::new(y, w).unwrap())
}

/// M = B·T > 16 throughout (M ≤ 16 stays on the dp4a small-M path).
fn lowrank_ops() -> Vec<Op> {
    vec![
        lr([4, 1, 5, 18], [3, 18, 9], 9),
        lr([4, 3, 5, 33], [3, 33, 130], 100),
        lr([1, 1, 70, 250], [2, 250, 130], 130),
        lr([2, 2, 70, 33], [2, 33, 9], 7),
    ]
}

fn decoder_ops() -> Vec<Op> {
    vec![
        dec([4, 3, 5, 18], [3 * 18, 9]),
        dec([1, 2, 70, 250], [2 * 256, 130]),
        dec([2, 4, 70, 33], [4 * 40, 33]),
        dec([4, 1, 5, 7], [7, 18]),
    ]
}

fn lowrank_random(ctx: &mut Ctx) {
    crate::int_cases(ctx, "mma lowrank", &lowrank_ops(), 101);
}

fn lowrank_large(ctx: &mut Ctx) {
    let ops = [
        // Several row blocks and column tiles, D = 256 (two resident chunks).
        lr([1, 1, 300, 256], [4, 256, 520], 520),
        // The longest resident K (D = 512), per-head input.
        lr([2, 4, 70, 512], [4, 512, 136], 130),
        // D = 520 is past the resident limit: the dp4a kernels run it, still exact.
        lr([1, 1, 40, 520], [1, 520, 64], 64),
    ];
    crate::large_cases(ctx, "mma lowrank large", &ops, 102);
}

fn lowrank_epilogues(ctx: &mut Ctx) {
    crate::epilogue_cases(
        ctx,
        "mma lowrank",
        &[
            lr([4, 1, 5, 18], [3, 18, 9], 9),
            lr([1, 2, 70, 250], [2, 250, 132], 132),
        ],
        103,
    );
}

fn lowrank_edges(ctx: &mut Ctx) {
    crate::edge_cases(
        ctx,
        "mma lowrank",
        &[
            lr([4, 1, 5, 18], [2, 18, 9], 9),
            lr([2, 2, 17, 33], [2, 33, 130], 129),
        ],
        104,
    );
}

fn decoder_random(ctx: &mut Ctx) {
    crate::int_cases(ctx, "mma decoder_tail", &decoder_ops(), 111);
}

fn decoder_large(ctx: &mut Ctx) {
    let ops = [
        // Long K (H·L = 8192): split-K with the fixed-order reduction.
        dec([1, 4, 200, 2048], [4 * 2048, 256]),
        // L < Lart, odd L and D, several splits.
        dec([2, 3, 33, 1030], [3 * 1032, 130]),
    ];
    crate::large_cases(ctx, "mma decoder_tail large", &ops, 112);
}

fn decoder_epilogues(ctx: &mut Ctx) {
    crate::epilogue_cases(
        ctx,
        "mma decoder_tail",
        &[
            dec([4, 3, 5, 18], [3 * 18, 9]),
            dec([1, 4, 100, 1030], [4 * 1040, 256]),
        ],
        113,
    );
}

fn decoder_edges(ctx: &mut Ctx) {
    crate::edge_cases(
        ctx,
        "mma decoder_tail",
        &[dec([4, 2, 5, 9], [18, 18]), dec([2, 2, 17, 129], [260, 33])],
        114,
    );
}

fn decoder_max_accumulator(ctx: &mut Ctx) {
    // K = 66311: 66311·255·127 < 2^31 (uint8pos × int8 at +255 / ±127: the exact largest i32
    // sums), and 66312 overflows (a typed error before launch). M = 17 > 16.
    crate::max_accumulator_case(ctx, "mma decoder_tail", &dec([1, 1, 17, 66311], [66311, 2]));
    crate::max_accumulator_case(ctx, "mma decoder_tail", &dec([1, 1, 17, 66312], [66312, 1]));
}

/// M ≤ 16 on the small-M tensor-core kernel (i8x4 weights): one row fragment, rows past M
/// and columns past N masked, every input variant.
fn small_ops() -> Vec<Op> {
    vec![
        lr([1, 1, 1, 18], [3, 18, 9], 9),
        lr([3, 3, 5, 250], [3, 250, 130], 100),
        lr([2, 1, 8, 512], [2, 512, 70], 70),
        dec([1, 3, 1, 18], [3 * 18, 9]),
        dec([3, 2, 5, 1030], [2 * 1032, 130]),
        dec([16, 4, 1, 2048], [4 * 2048, 256]),
        dec([1, 1, 3, 40000], [40000, 40]),
    ]
}

fn small_random(ctx: &mut Ctx) {
    crate::int_cases(ctx, "mma small-M", &small_ops(), 131);
    crate::epilogue_cases(ctx, "mma small-M", &small_ops(), 132);
    crate::edge_cases(ctx, "mma small-M", &small_ops(), 133);
}

/// Ternary2 weights at every M (row blocks of 16): the same cases, odd shapes, the largest
/// low-rank K (D = 512) and a long decoder K split over many CTAs.
fn ternary2_ops() -> Vec<Op> {
    let mut v = small_ops();
    v.extend([
        lr([1, 1, 17, 33], [2, 33, 130], 129),
        lr([4, 4, 10, 256], [4, 256, 260], 260),
        dec([1, 2, 17, 129], [260, 33]),
        dec([2, 4, 20, 2048], [4 * 2048, 256]),
    ]);
    v
}

fn ternary2_random(ctx: &mut Ctx) {
    use crate::WeightKind::Ternary;
    crate::int_cases(ctx, "ternary2", &ternary2_ops(), 141);
    crate::epilogue_cases_with(ctx, "ternary2", &ternary2_ops(), 142, Ternary);
    crate::edge_cases_with(ctx, "ternary2", &ternary2_ops(), 143, Ternary);
}

#[test]
fn small_m_on_the_tensor_cores() {
    static B: Cell = OnceLock::new();
    let opened = crate::cuda_backend(&B, || {
        open_mma(|d| CudaBackend::from_device(d.with_small_mma(true)))
    });
    let Some(b) = opened else { return };
    run_on_mma(b, "LB_MMA_SMALL=1", small_random);
}

/// The same small-M cases with programmatic dependent launch off (on by default where the
/// device has it).
#[test]
fn small_m_without_programmatic_launch() {
    static B: Cell = OnceLock::new();
    let opened = crate::cuda_backend(&B, || {
        open_mma(|d| {
            CudaBackend::from_device(d.with_small_mma(true).with_programmatic_launch(Pdl::Off))
        })
    });
    let Some(b) = opened else { return };
    assert_eq!(b.device().programmatic_launch(), Pdl::Off);
    run_on_mma(b, "LB_MMA_SMALL=1", small_random);
}

/// The small-M cases (ternary2 weights' where `t2`, else i8x4's on the small-M tensor-core
/// kernel at every M) on the mma backend in `cell`, its device set up by `setup`; `None`
/// without such a device (after saying so).
fn small_cases_on(
    cell: &'static Cell,
    t2: bool,
    setup: impl FnOnce(CudaDevice) -> CudaDevice,
) -> Option<&'static CudaBackend> {
    let b = crate::cuda_backend(cell, || {
        open_mma(|d| {
            CudaBackend::from_device(setup(d.with_small_mma(true))).with_ternary2_weights(t2)
        })
    })?;
    if t2 {
        run_on_mma(b, "LB_MS_T2=1", ternary2_random);
    } else {
        run_on_mma(b, "LB_MMA_SMALL=1", small_random);
    }
    Some(b)
}

/// The small-M kernels' PDL weight prefetch forced each way at every M
/// (`CudaDevice::with_weight_prefetch`; the default prefetches in bulk only at M ≤ 2, above
/// line by line, with evict_last for the low-rank projection): in bulk
/// on i8x4 and ternary2 weights, line by line on i8x4, and both with the L2 evict_last
/// priority; rows that do not start 16-byte aligned (N = 9, 70, 130) take the line-by-line
/// fallback inside the bulk path; none at all with frozen weights (read before the wait) on
/// both kinds of weights. Under PDL only (on by default on sm_90); elsewhere these run the
/// plain launches.
#[test]
fn small_m_weight_prefetch_each_way() {
    use lowbit_kernels::backend::cuda::WeightPrefetch;
    static BULK: Cell = OnceLock::new();
    static LINES: Cell = OnceLock::new();
    static T2_BULK: Cell = OnceLock::new();
    static LINES_LAST: Cell = OnceLock::new();
    static BULK_LAST: Cell = OnceLock::new();
    static T2_LINES_LAST: Cell = OnceLock::new();
    static NONE_FROZEN: Cell = OnceLock::new();
    static T2_NONE_FROZEN: Cell = OnceLock::new();
    for (cell, prefetch, t2, frozen) in [
        (&BULK, WeightPrefetch::Bulk, false, false),
        (&LINES, WeightPrefetch::Lines, false, false),
        (&T2_BULK, WeightPrefetch::Bulk, true, false),
        (&LINES_LAST, WeightPrefetch::LinesLast, false, false),
        (&BULK_LAST, WeightPrefetch::BulkLast, false, false),
        (&T2_LINES_LAST, WeightPrefetch::LinesLast, true, false),
        (&NONE_FROZEN, WeightPrefetch::None, false, true),
        (&T2_NONE_FROZEN, WeightPrefetch::None, true, true),
    ] {
        let Some(b) = small_cases_on(cell, t2, |d| {
            d.with_weight_prefetch(prefetch).with_frozen_weights(frozen)
        }) else {
            return;
        };
        assert_eq!(b.device().weight_prefetch(), prefetch);
    }
}

/// The small-M cases with the low-rank kernel working out computed scales of f32 input itself
/// (`CudaDevice::with_small_inline_scale`), on i8x4 and ternary2 weights: every f32-input case
/// with a computed scale (every format, edge values) checked against the reference at the
/// scale the kernel wrote.
#[test]
fn small_lowrank_inline_scale() {
    static I8: Cell = OnceLock::new();
    static T2: Cell = OnceLock::new();
    for (cell, t2) in [(&I8, false), (&T2, true)] {
        let Some(b) = small_cases_on(cell, t2, |d| d.with_small_inline_scale(true)) else {
            return;
        };
        let inline = crate::compiled(b.device(), &["lowrank_mma.cu", "LB_MS_SCALE_BLOCKS="]);
        assert!(inline, "t2 {t2}: no inline-scale variant was compiled");
    }
}

/// The small-M cases with frozen weights (`CudaDevice::with_frozen_weights`: the first weights
/// loaded before the PDL wait), under both PDL modes, on i8x4 and ternary2 weights. (On a
/// device in the default mode the i8x4 tensor-core kernels then take the early trigger too;
/// ternary2 ones keep the trigger after the wait.)
#[test]
fn small_m_frozen_weights() {
    static AFTER: Cell = OnceLock::new();
    static EARLY: Cell = OnceLock::new();
    static T2_EARLY: Cell = OnceLock::new();
    static T2_AFTER: Cell = OnceLock::new();
    for (cell, pdl, t2) in [
        (&AFTER, Pdl::AfterWait, false),
        (&EARLY, Pdl::Early, false),
        (&T2_EARLY, Pdl::Early, true),
        (&T2_AFTER, Pdl::AfterWait, true),
    ] {
        let Some(b) = small_cases_on(cell, t2, |d| {
            d.with_frozen_weights(true).with_programmatic_launch(pdl)
        }) else {
            return;
        };
        let dev = b.device();
        assert!(dev.frozen_weights());
        // Under PDL the i8x4 decoder took its 64-column CTAs at M = 15 and 16.
        let wide = dev.programmatic_launch() != Pdl::Off;
        let ms = dev.small_decoder_shape(mma::SMALL_DECODER_WIDE_MIN_M);
        assert_eq!(ms == mma::SMALL_DECODER_WIDE, wide, "{ms}");
        assert_eq!(dev.small_decoder_shape(1), mma::SmallMmaDecoder::DEFAULT);
    }
}

/// f32 input to the small-M tensor-core decoder packed each way against the default
/// (`CudaDevice::with_small_prepack`; by default once beforehand for i8x4 weights, by every CTA
/// for ternary2): i8x4 staged by the CTAs, ternary2 packed once, each also packed once without
/// the fused scale (`with_fused_scale(false)`: `absmean_scale` and `quantize_pack_i8x4`
/// instead of `mma_prep_scale_a`), and i8x4 packed with it (the default, named); every input
/// variant, epilogue and the edge data. Packed once, the decoder compiled no f32-staging
/// variant; on i8x4 weights (whose cases are all M ≤ 16), `mma_prep_scale_a`'s module was
/// compiled where packed with the fused scale, and else not.
#[test]
fn small_decoder_f32_packing_each_way() {
    static I8_STAGED: Cell = OnceLock::new();
    static T2_PACKED: Cell = OnceLock::new();
    static I8_TWO: Cell = OnceLock::new();
    static T2_TWO: Cell = OnceLock::new();
    static I8_FUSED: Cell = OnceLock::new();
    for (cell, t2, prepack, fused) in [
        (&I8_STAGED, false, false, true),
        (&I8_FUSED, false, true, true),
        (&T2_PACKED, true, true, true),
        (&I8_TWO, false, true, false),
        (&T2_TWO, true, true, false),
    ] {
        let Some(b) = small_cases_on(cell, t2, |d| {
            d.with_small_prepack(Some(prepack)).with_fused_scale(fused)
        }) else {
            return;
        };
        assert_eq!(b.device().small_prepack(), Some(prepack));
        let compiled = |needle: &str| {
            crate::compiled(b.device(), &["decoder_tail_mma.cu", needle, "LB_MODE=2"])
        };
        assert_eq!(
            compiled("LB_MMA_SMALL=1"),
            !prepack,
            "t2 {t2}: the small-M decoder staged f32 itself"
        );
        if !t2 {
            assert_eq!(
                compiled("LB_MMA_PREP=1"),
                prepack && fused,
                "fused {fused}: mma_prep_scale_a packed the f32 input"
            );
        }
    }
}

#[test]
fn ternary2_weights() {
    let Some(b) = t2_backend() else { return };
    run_on_mma(b, "LB_MS_T2=1", ternary2_random);
}

/// Ternary2 weights through the device API: the wrong length, the float path, a low-rank D
/// past 512 and a non-ternary lane are typed errors, and nothing is written.
#[test]
fn ternary2_errors() {
    use lowbit_kernels::LowbitError;
    use lowbit_kernels::backend::cuda::DeviceWeights;
    use lowbit_kernels::pack::pack_ternary2_fragments;
    let Some(b) = mma_backend() else { return };
    let dev = b.device();
    let shape = LowrankShape::bdh(4, 2, 64, 32).unwrap();
    let x = dev.upload(&vec![0.5f32; shape.x_len()]).unwrap();
    let t2 = dev
        .upload(&vec![0x5555_5555u32; shape.w_ternary2_len()])
        .unwrap();
    let short = dev
        .upload(&vec![0x5555_5555u32; shape.w_ternary2_len() - 1])
        .unwrap();
    let mut o = dev.upload(&vec![f32::NAN; shape.out_len()]).unwrap();
    let run = |w: &_, fmt, o: &mut _| {
        dev.lowrank(
            &shape,
            DeviceAct::F32(&x),
            fmt,
            DeviceScale::Param(0.1),
            DeviceWeights::Ternary2(w),
            0.5,
            1,
            Epilogue::default(),
            DeviceOut::F32(o),
        )
    };
    assert!(matches!(
        run(&short, Fmt::Int8, &mut o),
        Err(LowbitError::LengthMismatch { .. })
    ));
    assert!(matches!(
        run(&t2, Fmt::Fp16, &mut o),
        Err(LowbitError::Unsupported { .. })
    ));
    assert!(dev.download(&o).unwrap().iter().all(|v| v.is_nan()));
    let wide = LowrankShape::bdh(4, 1, 516, 8).unwrap();
    let xw = dev.upload(&vec![0.5f32; wide.x_len()]).unwrap();
    let tw = dev
        .upload(&vec![0x5555_5555u32; wide.w_ternary2_len()])
        .unwrap();
    let mut ow = dev.upload(&vec![f32::NAN; wide.out_len()]).unwrap();
    let r = dev.lowrank(
        &wide,
        DeviceAct::F32(&xw),
        Fmt::Int8,
        DeviceScale::Param(0.1),
        DeviceWeights::Ternary2(&tw),
        0.5,
        1,
        Epilogue::default(),
        DeviceOut::F32(&mut ow),
    );
    assert!(matches!(r, Err(LowbitError::Unsupported { .. })), "{r:?}");
    // An int8 lane cannot be packed.
    assert!(pack_ternary2_fragments(&[0x0000_0102], 1, 1, 1).is_err());
}

#[test]
fn lowrank_random_shapes() {
    run_mma("lowrank_mma", lowrank_random);
}
#[test]
fn lowrank_large_shapes() {
    run_mma("lowrank_mma", lowrank_large);
}
#[test]
fn lowrank_every_epilogue() {
    run_mma("lowrank_mma", lowrank_epilogues);
}
#[test]
fn lowrank_edge_data() {
    run_mma("lowrank_mma", lowrank_edges);
}
/// The `mma.sync` low-rank kernel (on sm_90 the default low-rank kernel is `lowrank_wgmma`).
#[test]
fn lowrank_on_mma_sync() {
    let Some(b) = sync_backend() else { return };
    run_all_on(
        b,
        "lowrank_mma.cu [LB_UNS",
        &[
            lowrank_random,
            lowrank_large,
            lowrank_epilogues,
            lowrank_edges,
        ],
    );
}

/// Where the device runs it (sm_90a), every low-rank case above also went through
/// `lowrank_wgmma`, plus BDH-like shapes with several warpgroup row tiles per CTA.
#[test]
fn lowrank_on_wgmma() {
    let Some(b) = wgmma_backend() else { return };
    run_on_mma(b, "LB_WGMMA=1", |ctx| {
        let ops = [
            lr([2, 1, 500, 256], [2, 256, 600], 600),
            lr([1, 4, 130, 256], [4, 256, 256], 256),
            lr([3, 1, 97, 384], [1, 384, 300], 257),
        ];
        crate::large_cases(ctx, "wgmma lowrank", &ops, 105);
        crate::epilogue_cases(ctx, "wgmma lowrank", &ops[..2], 106);
    });
}

/// `lowrank_wgmma` on ternary2 weights (M > 16 on sm_90), expanded into its weight tile: the
/// shapes of `lowrank_on_wgmma` (D = 384 too), D off every multiple of 16 k words (the last
/// t2 rows partly or wholly past D), Hin = H, latent_out < N; and with one CTA per column
/// tile, so that each warpgroup pair walks several row tiles. Every input variant, every
/// epilogue and the edge data on ternary weights.
#[test]
fn ternary2_lowrank_on_wgmma() {
    use crate::WeightKind::Ternary;
    let Some(b) = t2_backend().and_then(with_wgmma) else {
        return;
    };
    let ops = [
        lr([2, 1, 500, 256], [2, 256, 600], 600),
        lr([1, 4, 130, 256], [4, 256, 256], 256),
        lr([3, 1, 97, 384], [1, 384, 300], 257),
        lr([2, 2, 70, 250], [2, 250, 130], 130),
        lr([4, 3, 5, 33], [3, 33, 130], 100),
    ];
    run_on_mma(b, "LB_WG_T2=1", |ctx| {
        let name = "wgmma lowrank, ternary2";
        crate::large_cases(ctx, name, &ops, 161);
        crate::int_cases(ctx, name, &ops[3..], 162);
        crate::epilogue_cases_with(ctx, name, &ops[1..], 163, Ternary);
        crate::edge_cases_with(ctx, name, &ops[3..], 164, Ternary);
    });
    let one = tuned_backend("one row CTA", true, |d| d.with_lowrank_row_ctas(1));
    run_on_mma(one, "LB_WG_T2=1", |ctx| {
        let name = "wgmma lowrank, ternary2, 1 row CTA";
        crate::large_cases(ctx, name, &ops[..2], 165);
        crate::epilogue_cases_with(ctx, name, &ops[..1], 166, Ternary);
    });
}

/// `lowrank_wgmma`'s tile pipeline over several tiles per warpgroup pair: with one CTA per
/// column tile each pair walks every other 64-row tile (4 and 3 here), reusing its A buffers
/// (three at D = 256, two at D = 384); with three CTAs, a pair's tiles are 6 apart. Every
/// input variant and epilogue (16-bit outputs take the split pipeline, f32 the whole-tile
/// one), tiles crossing batches with Hin = H, a partial last tile and column tile.
#[test]
fn lowrank_wgmma_pipeline() {
    if wgmma_backend().is_none() {
        return;
    }
    let ops = [
        lr([3, 4, 150, 256], [4, 256, 300], 300),
        lr([1, 1, 333, 384], [2, 384, 256], 256),
    ];
    for (pairs, ctas) in [(2, 1), (2, 3), (1, 1), (1, 3)] {
        let b = tuned_mma_backend(&format!("{pairs} pairs, {ctas} row CTAs"), |d| {
            d.with_lowrank_pairs(pairs)?.with_lowrank_row_ctas(ctas)
        });
        assert_eq!(b.device().lowrank_pairs(), Some(pairs));
        run_on_mma(b, &format!("LB_WG_PAIRS={pairs}"), |ctx| {
            let name = format!("wgmma lowrank, {pairs} pairs, {ctas} row CTAs");
            crate::large_cases(ctx, &name, &ops, 107);
            crate::epilogue_cases(ctx, &name, &ops, 108);
        });
    }
}

/// `lowrank_wgmma` gathering its i8x4 weight tile each way (`with_weight_gather`): in two
/// column halves (the default; it applies to 16-bit outputs at D <= 256 without a packing
/// launch before: each pair's first tile multiplied and stored a half at a time) and whole.
/// Every epilogue and input variant, the edge data with 16-bit outputs, under both pair
/// counts and several row CTAs: M of one 64-row tile (the second pair has none and only meets
/// the barrier), a partial last tile and column tile, Hin = H, D off 32 (k words past D),
/// latent_out < N.
#[test]
fn lowrank_wgmma_weight_gather() {
    use lowbit_kernels::backend::cuda::mma::WeightGather;
    if wgmma_backend().is_none() {
        return;
    }
    let ops = [
        lr([2, 1, 500, 256], [2, 256, 600], 600),
        lr([3, 4, 150, 256], [4, 256, 300], 300),
        lr([1, 1, 50, 200], [3, 200, 270], 257),
        lr([2, 2, 70, 100], [2, 100, 130], 130),
    ];
    let halves = [
        (2, None),
        (2, Some(1)),
        (2, Some(3)),
        (1, None),
        (1, Some(1)),
    ];
    let runs = halves.iter().map(|&pc| (WeightGather::Halves, pc)).chain([
        (WeightGather::Whole, (2, None)),
        (WeightGather::Whole, (1, Some(1))),
    ]);
    for (gather, (pairs, ctas)) in runs {
        let what = format!("{gather:?} gather, {pairs} pairs, row CTAs {ctas:?}");
        let b = tuned_mma_backend(&what, |d| {
            let d = d.with_weight_gather(gather).with_lowrank_pairs(pairs)?;
            match ctas {
                Some(n) => d.with_lowrank_row_ctas(n),
                None => Ok(d),
            }
        });
        assert_eq!(b.device().weight_gather(), gather);
        let needle = if gather == WeightGather::Halves {
            "LB_WG_WHALVES=1"
        } else {
            "LB_WG_WHALVES=0"
        };
        run_on_mma(b, needle, |ctx| {
            let name = format!("wgmma lowrank, {what}");
            crate::epilogue_cases(ctx, &name, &ops, 169);
            half_output_edges(ctx, &name, &ops[2..], 170);
        });
        if gather == WeightGather::Whole {
            let halves_built = crate::compiled(b.device(), &["LB_WG_WHALVES=1"]);
            assert!(!halves_built, "{what}: the halves variant was built");
        }
    }
}

/// Huge values (bf16 only: in f16 they overflow), qmax clipping and ties with f16 and
/// bf16 + ReLU outputs (`edge_cases` keeps f32 output), packed and f32 input.
fn half_output_edges(ctx: &mut Ctx, name: &str, ops: &[Op], seed: u64) {
    use crate::{Data, InputKind, ScaleSource, Variant, Weights};
    let mut rng = Rng::new(seed);
    let halves = [
        Epilogue {
            dtype: OutputDType::F16,
            relu: false,
        },
        Epilogue {
            dtype: OutputDType::Bf16,
            relu: true,
        },
    ];
    for op in ops {
        let w = Weights::new(op, crate::WeightKind::Int8, &mut rng);
        for data in [Data::Huge, Data::Clip, Data::Ties(0.0137)] {
            let x = crate::make_data(&mut rng, op.in_len(), data);
            for epilogue in halves {
                if data == Data::Huge && epilogue.dtype == OutputDType::F16 {
                    continue; // past f16's range: inf, which the check rejects
                }
                for (input, scale) in [
                    (InputKind::F32, ScaleSource::Compute),
                    (InputKind::Packed, ScaleSource::Param(0.0137)),
                ] {
                    let v = Variant {
                        format: Fmt::Int8,
                        input,
                        scale,
                        epilogue,
                    };
                    crate::check_int_variant(ctx, &format!("{name} {data:?}"), op, &w, &x, v);
                }
            }
        }
    }
}

/// `lowrank_wgmma` with one warpgroup pair per CTA (`with_lowrank_pairs(1)`: two CTAs per
/// SM at D ≤ 256) and the default row CTAs: the random, large, epilogue and edge cases on
/// i8x4 weights, and the large and epilogue cases on ternary2 weights.
#[test]
fn lowrank_wgmma_one_pair() {
    use crate::WeightKind::Ternary;
    if wgmma_backend().is_none() {
        return;
    }
    let b = tuned_mma_backend("one pair", |d| d.with_lowrank_pairs(1));
    run_all_on(
        b,
        "LB_WG_PAIRS=1",
        &[
            lowrank_random,
            lowrank_large,
            lowrank_epilogues,
            lowrank_edges,
        ],
    );
    let t2 = tuned_backend("one pair, ternary2", true, |d| d.with_lowrank_pairs(1));
    let ops = [
        lr([2, 1, 500, 256], [2, 256, 600], 600),
        lr([3, 1, 97, 384], [1, 384, 300], 257),
    ];
    run_on_mma(t2, "LB_WG_PAIRS=1", |ctx| {
        let name = "wgmma lowrank, one pair, ternary2";
        crate::large_cases(ctx, name, &ops, 167);
        crate::epilogue_cases_with(ctx, name, &ops, 168, Ternary);
    });
}

#[test]
fn decoder_random_shapes() {
    run_mma("decoder_tail_mma", decoder_random);
}
#[test]
fn decoder_large_shapes() {
    run_mma("decoder_tail_mma", decoder_large);
}
#[test]
fn decoder_every_epilogue() {
    run_mma("decoder_tail_mma", decoder_epilogues);
}
#[test]
fn decoder_edge_data() {
    run_mma("decoder_tail_mma", decoder_edges);
}
#[test]
fn decoder_largest_accumulator() {
    run_mma("decoder_tail_mma", decoder_max_accumulator);
}
/// The `mma.sync` decoder kernel (on sm_90 the default decoder kernel is `decoder_wgmma`).
#[test]
fn decoder_on_mma_sync() {
    let Some(b) = sync_backend() else { return };
    run_all_on(
        b,
        "decoder_tail_mma.cu [LB_UNS",
        &[
            decoder_random,
            decoder_large,
            decoder_epilogues,
            decoder_edges,
            decoder_max_accumulator,
        ],
    );
}

/// Where the device runs it (sm_90a), every decoder case above also went through
/// `decoder_wgmma`, plus BDH-like shapes: several row tiles and column tiles, a D that is not
/// a multiple of 8, one split (the output written directly) and many.
#[test]
fn decoder_on_wgmma() {
    let Some(b) = wgmma_backend() else { return };
    run_on_mma(b, "decoder_tail_mma.cu [LB_WGMMA=1", |ctx| {
        let ops = [
            // Four heads of L = 2048 (the BDH head width / 4), 520 rows: five row tiles.
            dec([2, 4, 260, 2048], [4 * 2048, 256]),
            // D = 300: two column tiles, the second partial; L < Lart, odd L.
            dec([1, 2, 150, 1031], [2 * 1040, 300]),
            // 17000 rows, one head, K = 64: more row tiles than CTAs fit, so one split.
            dec([1, 1, 17000, 64], [64, 36]),
        ];
        crate::large_cases(ctx, "wgmma decoder_tail", &ops, 115);
        crate::epilogue_cases(ctx, "wgmma decoder_tail", &ops[..2], 116);
    });
}

/// The ternary2 decoder's shapes (on 132 SMs): 520 rows in 64-row tiles with split partials,
/// two column tiles with odd L < Lart, 17000 rows in one split of 128-row tiles, a D not a
/// multiple of 4, a partial last chunk past the head's ternary2 rows.
fn t2_decoder_shapes() -> [Op; 5] {
    [
        dec([2, 4, 260, 2048], [4 * 2048, 256]),
        dec([1, 2, 150, 1031], [2 * 1040, 300]),
        dec([1, 1, 17000, 64], [64, 36]),
        dec([2, 2, 90, 253], [2 * 256, 301]),
        dec([1, 3, 40, 64], [3 * 64, 64]),
    ]
}

/// `decoder_wgmma` on ternary2 weights (M > 16 on sm_90): the shapes of `decoder_on_wgmma`
/// (splits with partials, two column tiles with odd L < Lart, one split), a D that is not a
/// multiple of 4 (word-wise weight loads), a tile whose 2 splits sum in a cluster, and a
/// partial last chunk whose second half lies past the head's ternary2 rows. Every input
/// variant, every epilogue and the edge data on ternary weights (the int8 ones of
/// `large_cases` go through the i8x4 kernel).
#[test]
fn ternary2_decoder_on_wgmma() {
    use crate::WeightKind::Ternary;
    let Some(b) = t2_backend().and_then(with_wgmma) else {
        return;
    };
    run_on_mma(b, "LB_DW_T2=1 LB_DW_ZC=1 ", |ctx| {
        let ops = t2_decoder_shapes();
        let name = "wgmma decoder_tail, ternary2";
        crate::large_cases(ctx, name, &ops, 151);
        crate::int_cases(ctx, name, &ops[3..], 152);
        crate::epilogue_cases_with(ctx, name, &ops[1..], 153, Ternary);
        crate::edge_cases_with(ctx, name, &ops[3..], 154, Ternary);
    });
    run_on_mma(b, "LB_DW_T2=1 LB_DW_ZC=2 ", |ctx| {
        let ops = [dec([1, 1, 6400, 512], [512, 256])];
        let name = "wgmma decoder_tail, ternary2, 2 splits in a cluster";
        crate::large_cases(ctx, name, &ops, 155);
        crate::epilogue_cases_with(ctx, name, &ops, 156, Ternary);
    });
}

/// `decoder_wgmma` with ternary2 weights fed to the tensor cores as u8 fields w + 1, the y
/// row sums subtracted after the mainloop (`CudaDevice::with_t2_fields`): [`t2_option_cases`].
#[test]
fn decoder_t2_fields() {
    t2_option_cases("t2 fields", "LB_DW_T2U=1", 161, |d| d.with_t2_fields(true));
}

/// The ternary2 paths the defaults no longer take: the fields expanded to i8 weights, under
/// the block barrier on every row tile (`with_t2_fields(false)`, `with_mbarrier_ring(false)`):
/// [`t2_option_cases`].
#[test]
fn decoder_t2_expanded_block_barrier() {
    t2_option_cases("t2 expanded, block barrier", "LB_DW_T2U=0", 162, |d| {
        d.with_t2_fields(false).with_mbarrier_ring(false)
    });
}

/// `decoder_wgmma` with ternary2 weights on an mbarrier ring (`CudaDevice::with_mbarrier_ring`,
/// one chunk per slot, 13 slots at 64 rows, 8 at 128): [`t2_option_cases`], then with u8
/// fields too, then single splits whose rings wrap around several times (32 and 64 k chunks
/// per CTA on 64- and 128-row tiles).
#[test]
fn decoder_mbarrier_ring() {
    t2_option_cases("mbarrier ring", "LB_DW_MBAR=1", 171, |d| {
        d.with_mbarrier_ring(true)
    });
    if t2_backend().and_then(with_wgmma).is_none() {
        return;
    }
    let both = tuned_backend("mbarrier ring, t2 fields", true, |d| {
        Ok(d.with_mbarrier_ring(true).with_t2_fields(true))
    });
    run_on_mma(both, "LB_DW_T2U=1 LB_DW_MBAR=1", |ctx| {
        let ops = [t2_decoder_shapes()[0], t2_decoder_shapes()[3]];
        crate::large_cases(
            ctx,
            "wgmma decoder_tail, mbarrier ring, t2 fields",
            &ops,
            174,
        );
    });
    let ring = |d: CudaDevice| d.with_mbarrier_ring(true);
    on_single_splits(
        "mbarrier ring",
        "LB_DW_MBAR=1",
        &[64, 128],
        ring,
        |ctx, what| long_ring_cases(ctx, what, 175),
    );
}

/// Single-split cases for [`on_single_splits`]: 4 heads of 16 k chunks (64 chunks per CTA)
/// and 2 heads of 16, the last partial (32), on ternary2 weights; the edge data on the second.
fn long_ring_cases(ctx: &mut Ctx, what: &str, seed: u64) {
    let ops = [
        dec([1, 4, 130, 2048], [4 * 2048, 256]),
        dec([1, 2, 70, 2000], [2 * 2048, 301]),
    ];
    crate::large_cases(ctx, what, &ops, seed);
    crate::edge_cases_with(ctx, what, &ops[1..], seed + 1, crate::WeightKind::Ternary);
}

/// `decoder_wgmma` on the mbarrier ring with y loaded by TMA (`CudaDevice::with_y_tma`; the
/// weights by cp.async), which `DwOptions::for_shape` takes on 128-row tiles only: one-batch
/// shapes (rows past M read as zeros), a partial last chunk per head (zeros past L in the
/// box), a second, partial column tile, two batches whose T is a multiple of the row tile, a
/// 2-split cluster, and two batches of T = 260, which take the ring without TMA; then single
/// splits on 128-row tiles, whose rings wrap around. Every input variant, bit for bit.
#[test]
fn decoder_y_by_tma() {
    use crate::WeightKind::Ternary;
    if t2_backend().and_then(with_wgmma).is_none() {
        return;
    }
    let ops = [
        dec([1, 4, 130, 2048], [4 * 2048, 256]),
        dec([1, 2, 70, 2000], [2 * 2048, 301]),
        dec([2, 2, 128, 256], [2 * 256, 256]),
        dec([1, 1, 6400, 512], [512, 256]),
        dec([2, 4, 260, 2048], [4 * 2048, 256]),
    ];
    let b = tuned_backend("y by TMA", true, |d| {
        Ok(d.with_mbarrier_ring(true)
            .with_y_tma(true)
            .with_t2_fields(false))
    });
    run_on_mma(b, "LB_DW_TMA=1", |ctx| {
        let name = "wgmma decoder_tail, y by TMA";
        crate::large_cases(ctx, name, &ops, 191);
        crate::epilogue_cases_with(ctx, name, &ops[1..3], 192, Ternary);
        crate::edge_cases_with(ctx, name, &ops[1..2], 193, Ternary);
    });
    assert_tiles_ran(
        b,
        "y by TMA",
        "LB_DW_TMA=1",
        &["LB_DW_BM=128", "LB_DW_ZC=2"],
    );
    let tma = |d: CudaDevice| {
        d.with_mbarrier_ring(true)
            .with_y_tma(true)
            .with_t2_fields(false)
    };
    on_single_splits("y by TMA", "LB_DW_TMA=1", &[128], tma, |ctx, what| {
        crate::large_cases(ctx, what, &ops[..3], 194);
    });
}

/// `case` on a backend tuned by `tune` with every k chunk of a tile in one split, on each
/// row tile of `row_tiles` in turn: long rings that wrap around.
fn on_single_splits(
    what: &str,
    needle: &str,
    row_tiles: &[usize],
    tune: impl Fn(CudaDevice) -> CudaDevice,
    case: impl Fn(&mut Ctx, &str),
) {
    for &rows in row_tiles {
        let what = format!("{what}, one split, {rows} rows");
        let b = tuned_backend(&what, true, |d| {
            tune(d).with_decoder_rows(rows)?.with_decoder_splits(1)
        });
        run_on_mma(b, needle, |ctx| case(ctx, &what));
    }
}

/// Modules with `needle` in their defines ran on `b` on 64- and 128-row tiles and in a
/// 2-split cluster.
fn assert_every_tile_ran(b: &CudaBackend, what: &str, needle: &str) {
    assert_tiles_ran(
        b,
        what,
        needle,
        &["LB_DW_BM=64", "LB_DW_BM=128", "LB_DW_ZC=2"],
    );
}

/// Modules with `needle` in their defines ran on `b` with each of `tiles` (defines such as
/// `LB_DW_BM=64`, `LB_DW_ZC=2`).
fn assert_tiles_ran(b: &CudaBackend, what: &str, needle: &str, tiles: &[&str]) {
    for tile in tiles {
        assert!(
            crate::compiled(b.device(), &[tile, needle]),
            "{what}: no {tile} module with {needle} ran"
        );
    }
}

/// The ternary2 options of `decoder_wgmma` (`tune` switches one on; `needle` names its
/// define): the shapes of `ternary2_decoder_on_wgmma` (64-row tiles with narrow partials,
/// two column tiles with odd L < Lart, one split of 128-row tiles, a D not a multiple of 4)
/// and a 2-split cluster, every input variant (uint8pos codes: unsigned y, whose row sums are
/// unsigned), every epilogue and the edge data, bit for bit against the reference; modules
/// with `needle` must have run on 64- and 128-row tiles and in a cluster.
fn t2_option_cases(
    what: &str,
    needle: &'static str,
    seed: u64,
    tune: fn(CudaDevice) -> CudaDevice,
) {
    use crate::WeightKind::Ternary;
    if t2_backend().and_then(with_wgmma).is_none() {
        return;
    }
    let b = tuned_backend(what, true, |d| Ok(tune(d)));
    let name = format!("wgmma decoder_tail, ternary2, {what}");
    run_on_mma(b, needle, |ctx| {
        let mut ops = t2_decoder_shapes().to_vec();
        ops.push(dec([1, 1, 6400, 512], [512, 256]));
        crate::large_cases(ctx, &name, &ops, seed);
        crate::epilogue_cases_with(ctx, &name, &ops[..2], seed + 1, Ternary);
        crate::edge_cases_with(ctx, &name, &ops[3..4], seed + 2, Ternary);
    });
    assert_every_tile_ran(b, what, needle);
}

/// `decoder_wgmma`'s narrow split partials (ternary2 weights by default, as u8 fields too,
/// i8x4 ones with `NarrowPartials::All`) where some split sums do not fit an i16: rows of
/// codes at +127, -64 and -127 against columns of weights all +1 or all -1, between random
/// rows and columns, so that one tile holds sums that fit, sums past ±32767 and sums of exactly
/// -32768 (4 chunks of -64 · 128: the marker's own value), all sent through the wide array.
/// Packed and code input, every epilogue on D = 301 (partials stored element-wise); bit for
/// bit against the reference.
#[test]
fn decoder_narrow_partials() {
    use lowbit_kernels::backend::cuda::mma::NarrowPartials;
    let cases = [
        (NarrowPartials::Ternary2, true, false, None),
        (NarrowPartials::All, false, false, None),
        (NarrowPartials::Ternary2, true, true, Some(4)),
    ];
    // (ops, splits of 3 to 5 chunks on 132 SMs: 5 tiles of 64 rows x 26, 4 x 33; 75 rows x
    // D = 264, a multiple of 8 in two column tiles)
    let ops = [
        dec([1, 4, 300, 4096], [4 * 4096, 256]),
        dec([1, 2, 90, 8192], [2 * 8192, 301]),
        dec([1, 2, 75, 4096], [2 * 4096, 264]),
    ];
    narrow_partials_cases(&cases, &ops);
}

/// [`decoder_narrow_partials`]' checks with `decoder_mma_reduce` 8 elements wide (forced), on
/// the shapes whose D is a multiple of 8: 256, and 264 in two column tiles; i8x4 weights
/// narrow too, ternary2 ones as u8 fields.
#[test]
fn decoder_reduce_wide() {
    use lowbit_kernels::backend::cuda::mma::NarrowPartials;
    let cases = [
        (NarrowPartials::All, false, false, Some(8)),
        (NarrowPartials::Ternary2, true, true, Some(8)),
    ];
    let ops = [
        dec([1, 4, 300, 4096], [4 * 4096, 256]),
        dec([1, 2, 75, 4096], [2 * 4096, 264]),
    ];
    narrow_partials_cases(&cases, &ops);
}

/// Each of `cases` (narrow partials, ternary2 weights, u8 fields, the reduction's forced
/// width) on each of `ops`: the checks of [`decoder_narrow_partials`].
fn narrow_partials_cases(
    cases: &[(
        lowbit_kernels::backend::cuda::mma::NarrowPartials,
        bool,
        bool,
        Option<usize>,
    )],
    ops: &[Op],
) {
    use crate::{InputKind, Variant, WeightKind, Weights};
    use lowbit_kernels::ops::ScaleSource;
    if t2_backend().and_then(with_wgmma).is_none() {
        return;
    }
    for &(narrow, t2, fields, width) in cases {
        let what =
            format!("narrow partials {narrow:?}, t2 fields {fields}, reduce width {width:?}");
        let b = tuned_backend(&what, t2, |d| {
            let d = d.with_narrow_partials(narrow).with_t2_fields(fields);
            match width {
                Some(w) => d.with_reduce_width(w),
                None => Ok(d),
            }
        });
        run_on_mma(b, "LB_DW_P16=1", |ctx| {
            let mut rng = Rng::new(181);
            for op in ops {
                let Op::Decoder(s) = op else { unreachable!() };
                let (l, d) = (s.latent, s.dim);
                let w_codes: Vec<i8> = (0..op.w_len())
                    .map(|i| match i % d % 3 {
                        0 => 1,
                        1 => -1,
                        _ => rng.int(-1, 1) as i8,
                    })
                    .collect();
                let w = Weights {
                    kind: WeightKind::Ternary,
                    words: op.pack_weights(&w_codes),
                    codes: w_codes,
                    scale: 0.03,
                };
                // Rows of y are (b, h, t) of L codes; row t's code depends on t alone.
                let x: Vec<f32> = (0..op.in_len())
                    .map(|i| match (i / l) % s.time % 5 {
                        0 => 127.0,
                        1 => -64.0,
                        2 => -127.0,
                        _ => rng.int(-127, 127) as f32,
                    })
                    .collect();
                let eps = if d % 4 == 0 {
                    vec![Epilogue::default()]
                } else {
                    crate::epilogues()
                };
                for epilogue in eps {
                    for input in [InputKind::Packed, InputKind::Codes] {
                        let v = Variant {
                            format: Fmt::Int8,
                            input,
                            scale: ScaleSource::Param(1.0),
                            epilogue,
                        };
                        crate::check_int_variant(ctx, &what, op, &w, &x, v);
                    }
                }
            }
        });
        assert!(
            crate::compiled(b.device(), &["LB_RED16=1"]),
            "{what}: the narrow reduction was not compiled"
        );
        if let Some(w) = width {
            let needle = format!("LB_RED16=1 LB_RED_BATCH=8 LB_RED_W={w}");
            assert!(
                crate::compiled(b.device(), &[&needle]),
                "{what}: the {w}-wide reduction was not compiled"
            );
        }
    }
}

/// `decoder_wgmma` with all of a tile's splits in one cluster, summed through distributed
/// shared memory straight into the output: 2 splits (the default setting) and 8. On 132 SMs
/// these shapes split so: 50 tiles (6400 rows; 3200 rows x two column tiles of D = 301, odd
/// L < Lart, two heads) into 2, 15 tiles into 8 (an H200 holds 15 clusters of 8 at once).
/// Every input variant and weight kind; every epilogue on the odd shape and on the 8-split
/// one.
#[test]
fn decoder_wgmma_split_clusters() {
    if wgmma_backend().is_none() {
        return;
    }
    let two = [
        dec([1, 1, 6400, 512], [512, 256]),
        dec([2, 2, 1600, 253], [2 * 256, 301]),
    ];
    let eight = [dec([1, 1, 1920, 2048], [2048, 256])];
    for (zc, ops) in [(2, &two[..]), (8, &eight[..])] {
        let b = tuned_mma_backend(&format!("split cluster {zc}"), |d| {
            d.with_decoder_zcluster(zc)
        });
        let before = b.device().cluster_launches(zc as u32);
        run_on_mma(b, &format!("LB_DW_ZC={zc} "), |ctx| {
            let name = format!("wgmma decoder_tail, {zc} splits in a cluster");
            crate::large_cases(ctx, &name, ops, 117);
            crate::epilogue_cases(ctx, &name, &ops[ops.len() - 1..], 118);
        });
        // The module is compiled before the guard asks whether every tile's cluster fits,
        // so only the launch count shows that the cluster path ran.
        let launched = b.device().cluster_launches(zc as u32) - before;
        println!("[cuda mma] {launched} launches summed in clusters of {zc}");
        assert!(
            launched > 0,
            "no decoder launch summed its splits in clusters of {zc}: the device does not \
             hold every tile's cluster at once, so these shapes tested the partials path"
        );
    }
}

/// `decoder_wgmma` with each of its row tiles forced: 128 rows where the default takes 64
/// (few tiles, many splits: 520 rows, and two column tiles of an odd D = 301 over 180 rows),
/// 64 rows where it takes 128 (1920 rows: 15 tiles of 128 split 8 ways, 30 of 64 split 4
/// ways). Ternary weights go up as ternary2 (two chunks per ring slot at 64 rows), int8 ones
/// as i8x4; every input variant, and every epilogue on the odd shape.
#[test]
fn decoder_wgmma_row_tiles() {
    if wgmma_backend().is_none() {
        return;
    }
    let ops = [
        dec([2, 4, 260, 2048], [4 * 2048, 256]),
        dec([2, 2, 90, 253], [2 * 256, 301]),
        dec([1, 1, 1920, 1024], [1024, 256]),
    ];
    for rows in [128, 64] {
        let what = format!("{rows} rows per CTA");
        let b = tuned_backend(&what, true, |d| d.with_decoder_rows(rows));
        run_on_mma(b, &format!("LB_DW_BM={rows} "), |ctx| {
            let name = format!("wgmma decoder_tail, {what}");
            crate::large_cases(ctx, &name, &ops, 171);
            crate::epilogue_cases_with(ctx, &name, &ops[1..2], 172, crate::WeightKind::Ternary);
            crate::epilogue_cases(ctx, &name, &ops[1..2], 173);
        });
    }
}

/// The large-M chain `absmean_scale -> mma_prep_a -> lowrank_wgmma` (under programmatic
/// dependent launch where the device has it, and with it off) queued back to back without a
/// synchronization: f32 input with a computed scale, codes with a host scale (whose
/// `mma_prep_a` follows the previous projection directly, overwriting the scratch that
/// projection reads), f32 with a device scale, on shapes of different sizes; with i8x4 words,
/// then ternary2 fragments (whose weight words are all loaded before the projection's wait).
/// Every output is poisoned first and must equal the reference bit for bit.
#[test]
fn lowrank_chain_back_to_back() {
    use lowbit_kernels::backend::cuda::DeviceWeights;
    use lowbit_kernels::pack::pack_ternary2_fragments;
    if wgmma_backend().is_none() {
        return;
    }
    let mut rng = Rng::new(121);
    let shapes = [
        LowrankShape::bdh(700, 4, 256, 520).unwrap(),
        LowrankShape::new([2, 1, 150, 256], [2, 256, 300], 300).unwrap(),
        LowrankShape::bdh(1100, 4, 256, 264).unwrap(),
        // Call 3 (f32, computed scale): 112000 items, more than a thread each on the blocks
        // that fit at once on an H100 (396 x 256), so some of mma_prep_scale_a's threads
        // pack a second item, read again.
        LowrankShape::bdh(7000, 1, 256, 72).unwrap(),
    ];
    // (PDL, scale and packing of f32 in one cooperative launch)
    for (pdl, fused) in [(None, true), (Some(Pdl::Off), true), (None, false)] {
        let b = tuned_mma_backend("chain", |d| {
            let d = d.with_fused_scale(fused);
            Ok(match pdl {
                Some(p) => d.with_programmatic_launch(p),
                None => d,
            })
        });
        let dev = b.device();
        println!(
            "[cuda mma] chain: {:?}, fused scale {}",
            dev.programmatic_launch(),
            dev.fused_scale()
        );
        // (shape, x, w codes, w words, host scale of x)
        let cases: Vec<_> = (0..6)
            .map(|i| {
                let shape = shapes[i % shapes.len()];
                let x = rng.normals(shape.x_len(), 1.0 + i as f32);
                let w = rng.ternary(shape.w_len());
                let (h, d, n) = (shape.heads, shape.embd, shape.latent);
                let words = lowbit_kernels::pack_lowrank_weight_codes_i8x4(&w, h, d, n).unwrap();
                let s = reference_scale(&x);
                (shape, x, w, words, s)
            })
            .collect();
        let codes_of = |x: &[f32], s: f32| -> Vec<i32> {
            x.iter()
                .map(|&v| lowbit_kernels::quant::activation_code(v, s, Fmt::Int8))
                .collect()
        };
        let xs: Vec<_> = cases.iter().map(|c| dev.upload(&c.1).unwrap()).collect();
        let cs: Vec<_> = cases
            .iter()
            .map(|c| dev.upload(&codes_of(&c.1, c.4)).unwrap())
            .collect();
        let ws: Vec<_> = cases.iter().map(|c| dev.upload(&c.3).unwrap()).collect();
        let t2s: Vec<_> = cases
            .iter()
            .map(|c| {
                let (h, n) = (c.0.heads, c.0.latent);
                let t2 = pack_ternary2_fragments(&c.3, h, c.0.k_words(), n).unwrap();
                dev.upload(&t2).unwrap()
            })
            .collect();
        let given: Vec<_> = cases.iter().map(|c| dev.upload(&[c.4]).unwrap()).collect();
        for t2 in [false, true] {
            let mut outs: Vec<_> = cases
                .iter()
                .map(|c| dev.upload(&vec![f32::NAN; c.0.out_len()]).unwrap())
                .collect();
            let mut computed: Vec<_> = (0..cases.len())
                .map(|_| dev.upload(&[f32::NAN]).unwrap())
                .collect();
            for (i, ((c, o), sd)) in cases.iter().zip(&mut outs).zip(&mut computed).enumerate() {
                let (input, scale) = match i % 3 {
                    0 => (DeviceAct::F32(&xs[i]), DeviceScale::Compute(sd)),
                    1 => (DeviceAct::Codes(&cs[i]), DeviceScale::Param(c.4)),
                    _ => (DeviceAct::F32(&xs[i]), DeviceScale::Buffer(&given[i])),
                };
                let w = if t2 {
                    DeviceWeights::Ternary2(&t2s[i])
                } else {
                    DeviceWeights::Words(&ws[i])
                };
                let ep = Epilogue::default();
                dev.lowrank(
                    &c.0,
                    input,
                    Fmt::Int8,
                    scale,
                    w,
                    0.05,
                    1,
                    ep,
                    DeviceOut::F32(o),
                )
                .unwrap();
            }
            for (i, c) in cases.iter().enumerate() {
                let a = if i % 3 == 0 {
                    let a = dev.download(&computed[i]).unwrap()[0];
                    let rel = ((a - c.4) / c.4).abs();
                    assert!(
                        rel <= 1e-6,
                        "chain {pdl:?} {fused} t2 {t2}, call {i}: scale {a} vs {}",
                        c.4
                    );
                    a
                } else {
                    c.4
                };
                let exp =
                    reference::lowrank_projection_codes(&c.0, &codes_of(&c.1, a), &c.2, a, 0.05)
                        .unwrap();
                let r = compare_f32(&exp, &dev.download(&outs[i]).unwrap());
                assert!(
                    r.bit_exact(),
                    "chain {pdl:?} {fused} t2 {t2}, call {i}: {r}"
                );
            }
        }
        for stem in ["LB_WG_T2=0", "LB_WG_T2=1"] {
            assert!(
                crate::compiled(dev, &["LB_WGMMA=1", stem]),
                "the chain did not reach lowrank_wgmma with {stem}"
            );
        }
    }
}

/// A backend of its own on device 0's mma family with `tune` applied (for the tests of one
/// setting; leaked, like the shared backends).
fn tuned_mma_backend(
    what: &str,
    tune: impl FnOnce(CudaDevice) -> lowbit_kernels::Result<CudaDevice>,
) -> &'static CudaBackend {
    tuned_backend(what, false, tune)
}

/// [`tuned_mma_backend`] uploading ternary/binary weights as ternary2 fragments when
/// `ternary2`.
fn tuned_backend(
    what: &str,
    ternary2: bool,
    tune: impl FnOnce(CudaDevice) -> lowbit_kernels::Result<CudaDevice>,
) -> &'static CudaBackend {
    let b = open_mma(|d| {
        let d = tune(d).unwrap_or_else(|e| panic!("{what}: {e}"));
        CudaBackend::from_device(d).with_ternary2_weights(ternary2)
    })
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    Box::leak(Box::new(b))
}

/// [`run_on_mma`] for each of `cases` in turn.
fn run_all_on(b: &'static CudaBackend, needle: &str, cases: &[fn(&mut Ctx)]) {
    for &case in cases {
        run_on_mma(b, needle, case);
    }
}

/// Which shapes the family takes: M > 16, and for the low-rank projection D ≤ 512.
#[test]
fn routing() {
    let Some(b) = mma_backend() else { return };
    let dev = b.device();
    let l = |m, d| LowrankShape::bdh(m, 4, d, 64).unwrap();
    assert!(dev.mma_lowrank_ok(&l(17, 256)));
    assert!(dev.mma_lowrank_ok(&l(17, 512)));
    assert!(!dev.mma_lowrank_ok(&l(16, 256)));
    assert!(!dev.mma_lowrank_ok(&l(17, 513)));
    if dev.wgmma() {
        // sm_90a: the warpgroup-mma kernel up to D = 384, mma.sync above.
        assert!(dev.wgmma_lowrank_ok(&l(17, 256)));
        assert!(dev.wgmma_lowrank_ok(&l(17, 384)));
        assert!(!dev.wgmma_lowrank_ok(&l(17, 385)));
        assert!(!dev.wgmma_lowrank_ok(&l(16, 256)));
        let off = CudaDevice::new(0)
            .unwrap()
            .with_family(KernelFamily::Mma)
            .unwrap()
            .with_wgmma(false);
        assert!(!off.wgmma_lowrank_ok(&l(17, 256)));
    }
    let dd = |m| DecoderTailShape::bdh(m, 4, 64, 256).unwrap();
    assert!(dev.mma_decoder_ok(&dd(17)));
    assert!(!dev.mma_decoder_ok(&dd(16)));
    assert_eq!(dev.wgmma_decoder_ok(&dd(17)), dev.wgmma());
    assert!(!dev.wgmma_decoder_ok(&dd(16)));
    if dev.wgmma() {
        let off = CudaDevice::new(0)
            .unwrap()
            .with_family(KernelFamily::Mma)
            .unwrap()
            .with_wgmma(false);
        assert!(!off.wgmma_decoder_ok(&dd(17)));
    }
    // M in 4..=16: the small-M tensor-core low-rank kernel (D ≤ 512) and decoder (dp4a below,
    // unless forced).
    assert!(dev.mma_small_lowrank_ok(&l(16, 512)));
    assert!(dev.mma_small_lowrank_ok(&l(4, 256)));
    assert!(!dev.mma_small_lowrank_ok(&l(1, 256)));
    assert!(!dev.mma_small_lowrank_ok(&l(16, 513)));
    assert!(!dev.mma_small_lowrank_ok(&l(17, 256)));
    assert!(!dev.mma_small_decoder_ok(&dd(1)));
    assert!(!dev.mma_small_decoder_ok(&dd(3)));
    assert!(dev.mma_small_decoder_ok(&dd(4)));
    assert!(dev.mma_small_decoder_ok(&dd(16)));
    assert!(!dev.mma_small_decoder_ok(&dd(17)));
    // f32 input: from M = 5.
    assert!(!dev.mma_small_decoder_f32_ok(&dd(1)));
    assert!(!dev.mma_small_decoder_f32_ok(&dd(4)));
    assert!(dev.mma_small_decoder_f32_ok(&dd(5)));
    assert!(dev.mma_small_decoder_f32_ok(&dd(8)));
    assert!(dev.mma_small_decoder_f32_ok(&dd(16)));
    assert!(!dev.mma_small_decoder_f32_ok(&dd(17)));
    let forced = CudaDevice::new(0)
        .unwrap()
        .with_family(KernelFamily::Mma)
        .unwrap()
        .with_small_mma(true);
    assert!(forced.mma_small_lowrank_ok(&l(1, 256)));
    assert!(forced.mma_small_decoder_ok(&dd(16)));
    assert!(forced.mma_small_decoder_f32_ok(&dd(1)));
    assert!(!forced.mma_small_decoder_ok(&dd(17)));
    // The dp4a family never routes here.
    let dp4a = CudaDevice::new(0)
        .unwrap()
        .with_family(KernelFamily::Dp4a)
        .unwrap();
    assert!(!dp4a.mma_lowrank_ok(&l(2048, 256)));
    assert!(!dp4a.mma_decoder_ok(&dd(2048)));
    assert!(!dp4a.mma_small_lowrank_ok(&l(1, 256)));
    assert!(!dp4a.mma_small_decoder_ok(&dd(1)));
    assert!(!dp4a.mma_small_decoder_f32_ok(&dd(16)));
}

/// Split-K over many CTAs and the persistent low-rank grid give the same bits on every run,
/// equal to the reference, with every epilogue dtype.
#[test]
fn runs_are_bit_identical() {
    let Some(b) = mma_backend() else { return };
    let dev = b.device();
    let mut rng = Rng::new(120);
    // Decoder: K = 4·2048, 300 rows.
    let shape = DecoderTailShape::bdh(300, 4, 2048, 256).unwrap();
    let w_codes = rng.int8_codes(shape.w_len());
    let w_words = lowbit_kernels::pack_decoder_weight_codes_i8x4(&w_codes, 4, 2048, 256).unwrap();
    let y = rng.normals(shape.y_len(), 1.0);
    let s = reference_scale(&y);
    let codes: Vec<i32> = y
        .iter()
        .map(|&v| lowbit_kernels::quant::activation_code(v, s, Fmt::Int8))
        .collect();
    let expected = reference::decoder_tail_codes(&shape, &codes, &w_codes, s, 0.003).unwrap();
    let yd = dev.upload(&codes).unwrap();
    let wd = dev.upload(&w_words).unwrap();
    for dtype in [OutputDType::F32, OutputDType::Bf16] {
        let ep = Epilogue { dtype, relu: false };
        let exp = crate::apply_epilogue(&expected, ep);
        let mut first: Option<Vec<u32>> = None;
        for run in 0..5 {
            let got: Vec<f32> = if dtype == OutputDType::F32 {
                let mut o = dev.upload(&vec![f32::NAN; shape.out_len()]).unwrap();
                dev.decoder_tail(
                    &shape,
                    DeviceAct::Codes(&yd),
                    Fmt::Int8,
                    DeviceScale::Param(s),
                    &wd,
                    0.003,
                    127,
                    ep,
                    DeviceOut::F32(&mut o),
                )
                .unwrap();
                dev.download(&o).unwrap()
            } else {
                let mut o = dev.upload(&vec![0xFFFFu16; shape.out_len()]).unwrap();
                dev.decoder_tail(
                    &shape,
                    DeviceAct::Codes(&yd),
                    Fmt::Int8,
                    DeviceScale::Param(s),
                    &wd,
                    0.003,
                    127,
                    ep,
                    DeviceOut::Bits16(&mut o),
                )
                .unwrap();
                dev.download(&o)
                    .unwrap()
                    .into_iter()
                    .map(|h| half::bf16::from_bits(h).to_f32())
                    .collect()
            };
            let r = compare_f32(&exp, &got);
            assert!(r.bit_exact(), "decoder {dtype:?} run {run}: {r}");
            let bits: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            match &first {
                None => first = Some(bits),
                Some(f) => assert_eq!(f, &bits, "decoder {dtype:?}: run {run} differs"),
            }
        }
    }
    // Low-rank: f32 input, device scale; the scale and the output repeat bit for bit.
    let shape = LowrankShape::bdh(1000, 4, 256, 1000).unwrap();
    let w_codes = rng.ternary(shape.w_len());
    let w_words = lowbit_kernels::pack_lowrank_weight_codes_i8x4(&w_codes, 4, 256, 1000).unwrap();
    let x = rng.normals(shape.x_len(), 1.0);
    let xd = dev.upload(&x).unwrap();
    let wd = dev.upload(&w_words).unwrap();
    let mut first: Option<(u32, Vec<u32>)> = None;
    for run in 0..3 {
        let mut sd = dev.upload(&[f32::NAN]).unwrap();
        let mut o = dev.upload(&vec![f32::NAN; shape.out_len()]).unwrap();
        dev.lowrank(
            &shape,
            DeviceAct::F32(&xd),
            Fmt::Int8,
            DeviceScale::Compute(&mut sd),
            &wd,
            0.05,
            1,
            Epilogue::default(),
            DeviceOut::F32(&mut o),
        )
        .unwrap();
        let a = dev.download(&sd).unwrap()[0];
        let got = dev.download(&o).unwrap();
        let codes: Vec<i32> = x
            .iter()
            .map(|&v| lowbit_kernels::quant::activation_code(v, a, Fmt::Int8))
            .collect();
        let exp = reference::lowrank_projection_codes(&shape, &codes, &w_codes, a, 0.05).unwrap();
        let r = compare_f32(&exp, &got);
        assert!(r.bit_exact(), "lowrank run {run}: {r}");
        let bits = (a.to_bits(), got.iter().map(|v| v.to_bits()).collect());
        match &first {
            None => first = Some(bits),
            Some(f) => assert_eq!(f, &bits, "lowrank: run {run} differs"),
        }
    }
}

fn reference_scale(x: &[f32]) -> f32 {
    lowbit_kernels::quant::activation_scale(x, Fmt::Int8)
        .unwrap()
        .unwrap()
}
