//! The int8 tensor-core family ([`KernelFamily::Mma`], sm_80+): the low-rank projection and
//! the decoder tail on `mma.sync.aligned.m16n8k32` with s8 (or, for uint8pos activations, u8)
//! A operands, `ldmatrix` A fragments and `cp.async` pipelines (`cuda/mma.cuh`,
//! `cuda/lowrank_mma.cu`, `cuda/decoder_tail_mma.cu`). Bit-identical to the reference like the
//! dp4a kernels: integer accumulators, zero padding in K, the same dequantization.
//!
//! The launchers in `launch.rs` route here when the device's family is `Mma` and
//! [`CudaDevice::mma_lowrank_ok`] / [`CudaDevice::mma_decoder_ok`] accept the shape; the rest
//! (M ≤ 16, where streaming the weights once on the dp4a small-M path is the whole cost; a
//! low-rank D above [`LOWRANK_MAX_KPW`]·4; the float path) stays on the dp4a kernels.
//!
//! The weights are used as they are packed (`[H, ceil(D/4), N]` and `[H·ceil(Lart/4), D]`
//! words): a word is four consecutive k of one column, which is exactly one B-fragment
//! register of m16n8k32, so no repacked copy is needed.
//!
//! On compute capability 9.0 both ops at M > 16 run on warpgroup mma instead (compiled for
//! `sm_90a`; [`WGMMA_ENV`] or [`CudaDevice::with_wgmma`] switch them off):
//! - `lowrank_wgmma` (D ≤ 384): each CTA keeps one head's 256-column weight tile in smem,
//!   gathered word by word into wgmma's k-major layout, and streams the rows of A;
//! - `decoder_wgmma`: the product transposed (out^T = W^T y^T), so the packed weight words
//!   are wgmma's register A fragments as they lie, and only y goes through smem; split-K
//!   and the reduction as `decoder_tail_mma`, over tiles of 128 rows, or of 64 where 128
//!   would split K many ways ([`decoder_rows`]).

use std::ffi::c_void;

use cudarc::driver::{CudaFunction, DeviceRepr, LaunchConfig, PushKernelArg, sys};

use super::device::{CudaDevice, KernelFamily, Pdl, drv};
use super::launch::{LbProblem, Path, RawAct, RawScale, dtype_code, fmt_code, non_null};
use super::tuning as t;
use crate::config::LowBitActivationFormat;
use crate::error::{LowbitError, Result};
use crate::kernels::KernelId;
use crate::ops::{DecoderTailShape, Epilogue, LowrankShape, OutputDType};
use crate::quant::EPS;

/// Threads per CTA (8 warps: 2 along rows x 4 along columns, each a 64-row warp tile).
pub const MMA_THREADS: u32 = 256;
/// Rows per CTA tile.
pub const MMA_BM: usize = 128;
/// k words (4 k each) per pipeline chunk.
pub const MMA_BKW: usize = 32;
/// Low-rank: n8 fragments per warp (CTA tile 128 x 128); two CTAs per SM.
pub const LOWRANK_NI: usize = 4;
/// Low-rank: the longest K kept in smem, in words (D ≤ 512); longer D takes the dp4a path.
pub const LOWRANK_MAX_KPW: usize = 128;
/// Decoder: n8 fragments per warp (CTA tile 128 x 256); ring depth chosen from the device's
/// shared memory, at most this.
pub const DECODER_NI: usize = 8;
/// Decoder (`decoder_tail_mma`): the deepest ring tried, in chunks; the deepest that fits the
/// device's opt-in shared memory is used (at least 2).
pub const DECODER_MAX_STAGES: usize = 4;
/// Decoder split-K: at least this many chunks per split.
pub const DECODER_MIN_CHUNKS: usize = 2;

/// Small-M kernels (`lb_mma_small`): one m16 row fragment per CTA; warps of 32 columns.
/// Low-rank: 8 column warps, the whole K in one warp (at most this many k words, D ≤ 512).
/// H200, BDH shape: 8 warps 4.99 µs against 5.25 (4 warps) and 5.57 (2) at M = 16 with i8x4
/// weights, 3.41 against 3.74 and 4.48 with ternary2 weights.
pub const SMALL_LOWRANK_CW: u32 = 8;
/// Low-rank small-M kernel: the longest K, in k words (D ≤ 512).
pub const SMALL_LOWRANK_MAX_KW: usize = 128;
/// The smallest M the low-rank projection takes the small-M tensor-core kernel at (H100:
/// 5.8 µs against the dp4a kernel's 5.1 µs at M = 1, 5.8 against 6.0 at M = 4).
pub const SMALL_LOWRANK_MMA_MIN_M: usize = 4;
/// The smallest M the decoder tail takes the small-M tensor-core kernel at with i8x4 weights
/// (H100, BDH shape, graph replay: 5.49 µs against the dp4a kernel's 5.58 at M = 4, 5.45
/// against 5.25 at M = 2, 5.48 against 4.83 at M = 1).
pub const SMALL_DECODER_MMA_MIN_M: usize = 4;
/// The same for f32 input, which the dp4a small-M kernel quantizes as it stages it (with a
/// computed scale worked out on its grid, `CudaDevice::with_decoder_grid_scale`) and the
/// tensor-core kernel takes packed once beforehand (`CudaDevice::with_small_prepack`; scale and
/// packing in one launch, `CudaDevice::with_fused_scale`). H100, BDH shape, graph replay,
/// computed scale: dp4a 8.99 against 9.67–9.69 µs at M = 4, 10.25 against 9.75–9.80 at M = 5,
/// 10.44 against 9.73 at M = 8 (BENCHMARKS.md, 2026-12-06).
pub const SMALL_DECODER_MMA_MIN_M_F32: usize = 5;
/// With frozen weights under PDL (`CudaDevice::with_frozen_weights`: both small-M kernels
/// load their first weights before the wait), the low-rank projection takes the small-M
/// tensor-core kernel from this M on (H100, BDH shape, graph replay: 3.85 against the dp4a
/// kernel's 4.13 µs at M = 1, 3.88 against 4.50 at M = 2, 4.10 against 4.87 at M = 3).
pub const SMALL_LOWRANK_MMA_MIN_M_FROZEN: usize = 1;
/// The same for the decoder tail with i8x4 weights (H100, BDH shape, graph replay, no L2
/// prefetch: 3.91–3.92 against the dp4a kernel's 4.14–4.25 µs at M = 1, 3.98–4.00 against
/// 4.53 at M = 2, 3.99–4.01 against 4.88–4.89 at M = 3).
pub const SMALL_DECODER_MMA_MIN_M_FROZEN: usize = 1;
/// With frozen weights under PDL, the small-M decoder with i8x4 weights runs
/// [`SMALL_DECODER_WIDE`] from this M on (unless a shape is forced). H100, BDH shape, graph
/// replay, two rounds, M = 8 / 9 / 10 / 11 / 12 / 16: the default shape 4.12–4.15 / 4.20–4.22 /
/// 4.24–4.26 / 4.42–4.43 / 4.53–4.54 / 4.74–4.75 µs, `2x8x64` 4.24–4.25 / 4.31 / 4.34 / 4.36 /
/// 4.41 / 4.64.
pub const SMALL_DECODER_WIDE_MIN_M: usize = 11;
/// `2x8x64`: the default CTA two column warps wide, 64 columns x 8 k-warps of 64 words (512
/// threads). A CTA stages A once for 64 columns instead of 32, so the L2 sends half as much A
/// to the SMs (2 MB at M = 16, D = 256), on as many K splits; with frozen weights (one
/// 256-thread block per SM as the split target) that is 64 CTAs, each loading 128 KB of
/// weights into registers before its wait. H100, BDH shape, graph replay, frozen weights, two rounds, M = 1 / 4 / 8 / 16: 4.16–4.20 / 4.16–4.20 /
/// 4.28–4.31 / **4.60–4.62** µs against the default's 4.14–4.25 / 4.04–4.15 / 4.15–4.25 /
/// 4.82–4.94; without frozen weights it loses at every M (M = 16: 6.06–6.07 against 5.46).
pub const SMALL_DECODER_WIDE: SmallMmaDecoder = SmallMmaDecoder {
    cw: 2,
    ..SmallMmaDecoder::DEFAULT
};
/// Decoder with ternary2 weights: 2 column warps x 4 k-warps of at most 64 k words (one
/// register batch each), so a CTA covers 64 columns x 256 words of one head. (H200, BDH
/// shape, M = 1 / 16, ternary2: 5.3 / 7.8 µs; 1x4 warps 5.3 / 9.3, 1x8 5.7 / 8.5, 1x16
/// 8.0 / 10.2, 2x8 5.7 / 7.5, measured before the split-K sum took one atomic.)
pub const SMALL_DECODER_T2: SmallMmaDecoder = SmallMmaDecoder {
    cw: 2,
    kw: 4,
    ksw: 64,
    min_blocks: 1,
    batch: 64,
};
/// Rows of the small kernels' row block (the mma's M).
pub const SMALL_ROWS: usize = 16;

const PAD_A: usize = 4;
const PAD_B: usize = 4;

/// Low-rank on warpgroup mma (`lowrank_wgmma`, sm_90a): weight columns resident per CTA, rows
/// per A tile (one or two pairs of warpgroups, [`wgmma_pairs`], each pair with its own A
/// buffers), and the longest K kept, in words (D ≤ 384: the CTA's smem is `wgmma_smem`).
/// Passed to the kernel as `LB_WG_BN`, `LB_WG_BM`, `LB_WG_PAIRS`, `LB_WG_THREADS`, which it
/// checks.
pub const WGMMA_BN: usize = 256;
/// `lowrank_wgmma`: rows per A tile.
pub const WGMMA_BM: usize = 64;
/// `lowrank_wgmma`: the longest K kept in smem, in k words (D ≤ 384).
pub const WGMMA_MAX_KPW: usize = 96;
/// Threads of one warpgroup pair of `lowrank_wgmma` (each pair on its own row tiles); a CTA
/// has one or two pairs ([`wgmma_pairs`], `LOWBIT_CUDA_WG_PAIRS`).
pub const WGMMA_PAIR_THREADS: u32 = 256;
/// Environment variable that sets `lowrank_wgmma`'s warpgroup pairs per CTA, `1` or `2`;
/// empty or `auto` for the default ([`wgmma_pairs`]): see [`CudaDevice::with_lowrank_pairs`].
pub const WG_PAIRS_ENV: &str = "LOWBIT_CUDA_WG_PAIRS";

/// Environment variable that picks how `lowrank_wgmma` gathers its i8x4 weight tile: see
/// [`WeightGather`] and [`CudaDevice::with_weight_gather`].
pub const WEIGHT_GATHER_ENV: &str = "LOWBIT_CUDA_WEIGHT_GATHER";

/// How the large-M tensor-core projection (`lowrank_wgmma`, sm_90) fills its resident i8x4
/// weight tile (64 KB at D = 256), which every CTA loads from DRAM at once before its first
/// store. Ternary2 weight tiles are expanded from register loads either way. The same bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WeightGather {
    /// By 4-byte `cp.async`s, word by word (each column's k words are a row of the tile), in
    /// two groups by column half where the output is 16-bit, D ≤ 256 and no packing launch
    /// runs before it: each warpgroup pair's first row tile is then multiplied and stored a
    /// half at a time while the second half still arrives; elsewhere as [`WeightGather::Whole`].
    /// H100, BDH shape, i8x4 weights, packed input, bf16 + ReLU, three calls of two rounds:
    /// M = 8192 189.2–191.6 µs against 193.6–196.0 whole; 2048 53.47–54.46 against
    /// 54.40–54.56; 512 19.87–20.22 against 20.19–20.32 (BENCHMARKS.md, 2026-12-06). After
    /// the f32 input's packing launch it lost (0.6–0.9 µs at M = 512), so it is not used there.
    #[default]
    Halves,
    /// Whole, in one `cp.async` group.
    Whole,
}

impl WeightGather {
    /// The kernel's `LB_WG_WHALVES` for this epilogue, `kpw`, weight format and chain (a
    /// packing launch before it).
    fn define(self, epilogue: Epilogue, kpw: usize, t2: bool, chain: bool) -> u32 {
        u32::from(self == Self::Halves && !t2 && !chain && wgmma_split(epilogue) && kpw <= 64)
    }
}

/// A [`WEIGHT_GATHER_ENV`] value: empty or `halves` (the default), or `whole`.
pub fn parse_weight_gather(text: &str) -> std::result::Result<WeightGather, String> {
    match text.trim() {
        "" | "halves" => Ok(WeightGather::Halves),
        "whole" => Ok(WeightGather::Whole),
        t => Err(format!("`{t}`: expected halves or whole")),
    }
}

/// A [`WG_PAIRS_ENV`] value: empty or `auto` for the default (`None`), else 1 or 2.
pub fn parse_wg_pairs(text: &str) -> std::result::Result<Option<usize>, String> {
    match text.trim() {
        "" | "auto" => Ok(None),
        "1" => Ok(Some(1)),
        "2" => Ok(Some(2)),
        t => Err(format!("`{t}`: expected auto, 1 or 2 pairs")),
    }
}

/// `lowrank_wgmma`'s warpgroup pairs per CTA: `forced` where set, else one for f32 output and two
/// for 16-bit outputs. One pair's shared memory would let two CTAs share an SM at D ≤ 256, but its
/// 134–138 registers a thread let only one fit (so the f32-output grid at the BDH shape is 128 CTAs
/// of 256 threads on the H100's 132 SMs; BENCHMARKS.md, 2026-12-07). Bounded to two CTAs per SM
/// (`__launch_bounds__(256, 2)`: 118–127 registers, 256 CTAs) it measured 2–5 % slower there at M =
/// 512 / 2048 / 8192 with either weight format, packed or f32 input, so it is not. H100, BDH shape,
/// M = 512 / 2048 / 8192, one pair against two, i8x4 weights: f32 out from packed input 30.53-30.59
/// / 96.99-97.12 / 375.8-376.1 µs against 30.75-30.88 / 97.79-97.89 / 382.6-382.7, from f32 input
/// 31.97-32.29 / 102.40-102.43 / 387.9-388.2 against 32.32-32.35 / 104.54-104.58 / 403.3-403.4;
/// bf16 + ReLU 21.28-21.38 / 59.26-59.36 / 211.8-213.1 against 20.19-20.22 / 54.40-54.53 /
/// 191.5-193.2. Ternary2 weights, f32 out (one round): packed 28.86 / 95.71 / 375.94 against 28.80
/// / 95.97 / 381.02, from f32 31.17 / 100.96 / 383.65 against 31.74 / 103.01 / 400.29.
pub fn wgmma_pairs(forced: Option<usize>, epilogue: Epilogue) -> usize {
    forced.unwrap_or(if epilogue.dtype == OutputDType::F32 {
        1
    } else {
        2
    })
}
/// `LOWBIT_CUDA_WGMMA=0` keeps both ops on the `mma.sync` kernels on sm_90.
pub const WGMMA_ENV: &str = "LOWBIT_CUDA_WGMMA";

/// Decoder tail on warpgroup mma (`decoder_wgmma`, sm_90a): output columns and rows per CTA
/// (four warpgroups of 64 columns, each on all the rows), its threads, and the depth of its
/// ring (a slot holds one chunk's y tile and weight tile, [`dec_wgmma_slot`] bytes) with i8x4
/// weights and with ternary2 weights (a quarter of the weight tile: more chunks in flight).
/// Passed to the kernel as `LB_DW_*`, which it checks.
pub const DEC_WGMMA_BN: usize = 256;
/// `decoder_wgmma`: rows per CTA by default (see [`DEC_WGMMA_BM_FEW`]).
pub const DEC_WGMMA_BM: usize = 128;
/// `decoder_wgmma`: threads per CTA (four warpgroups).
pub const DEC_WGMMA_THREADS: u32 = 512;
/// `decoder_wgmma`: ring slots with i8x4 weights at 128 rows.
pub const DEC_WGMMA_STAGES: usize = 4;
/// `decoder_wgmma`: ring slots with ternary2 weights at 128 rows.
pub const DEC_WGMMA_T2_STAGES: usize = 8;

/// Rows per `decoder_wgmma` CTA where 128-row tiles would split K more than
/// [`DEC_WGMMA_FEW_SPLITS`] ways (few row tiles: M = 512 at D = 256 on 132 SMs, 33 splits):
/// twice the tiles, half the splits, so half the i32 partials to write and sum. Each k chunk
/// is then half the mma work for the same loads and barrier, so with ternary2 weights a ring
/// slot holds [`dec_wgmma_planes`] chunks under one barrier. At M = 512 on the H200 this
/// measured 19.2 against 21.8 µs (ternary2) and 22.0 against 23.4 µs (i8x4); at M = 1024 (16
/// splits) the same or slower, at 2048 slower (44.9 against 40.4 µs).
pub const DEC_WGMMA_BM_FEW: usize = 64;
/// `decoder_wgmma`: the split-K count of 128-row tiles above which 64-row tiles are used.
pub const DEC_WGMMA_FEW_SPLITS: usize = 16;
/// Shared memory the 64-row ring may take (its slots are as many as fit, at most 8).
const DEC_WGMMA_FEW_RING: usize = 226 * 1024;

/// Bytes of one `decoder_wgmma` chunk in its ring: the 128-byte rows of the y tile (`bm`
/// rows), then the weight tile (32 k words, or 8 ternary2 rows, of `BN + 8` words), rounded
/// up to 1 KB (the y tiles are 1 KB-aligned swizzle atoms).
pub const fn dec_wgmma_slot(t2: bool, bm: usize) -> usize {
    let wrows = if t2 { MMA_BKW / 4 } else { MMA_BKW };
    (bm * 128 + wrows * (DEC_WGMMA_BN + 8) * 4).next_multiple_of(1024)
}

/// Is `decoder_wgmma`'s ring handed over by mbarriers ([`MBARRIER_ENV`]) for these weights?
/// Only ternary2 rings have the slots for it (at least 6: loads go S − 2 slots ahead and are
/// published two slots before use).
pub const fn dec_wgmma_mbar(t2: bool, mbar: bool) -> bool {
    t2 && mbar
}

/// Chunks per ring slot of `decoder_wgmma` (one barrier per slot): 2 for 64-row tiles with
/// ternary2 weights under a block barrier, else 1 (an mbarrier ring, `mbar`, hands over
/// single chunks).
pub const fn dec_wgmma_planes(t2: bool, bm: usize, mbar: bool) -> usize {
    if t2 && bm == DEC_WGMMA_BM_FEW && !dec_wgmma_mbar(t2, mbar) {
        2
    } else {
        1
    }
}

/// Ring slots of `decoder_wgmma`: at 64 rows as many as fit in `DEC_WGMMA_FEW_RING`, at most
/// 8 (16 in an mbarrier ring).
pub const fn dec_wgmma_stages(t2: bool, bm: usize, mbar: bool) -> usize {
    if bm == DEC_WGMMA_BM_FEW {
        let slots = DEC_WGMMA_FEW_RING / (dec_wgmma_planes(t2, bm, mbar) * dec_wgmma_slot(t2, bm));
        let most = if dec_wgmma_mbar(t2, mbar) { 16 } else { 8 };
        if slots < most { slots } else { most }
    } else if t2 {
        DEC_WGMMA_T2_STAGES
    } else {
        DEC_WGMMA_STAGES
    }
}

/// Dynamic smem of `decoder_wgmma`: the ring, with 1 KB to align the swizzled tiles.
pub const fn dec_wgmma_smem(t2: bool, bm: usize, mbar: bool) -> usize {
    dec_wgmma_stages(t2, bm, mbar) * dec_wgmma_planes(t2, bm, mbar) * dec_wgmma_slot(t2, bm) + 1024
}

/// `n` where it is one of `allowed`, else an `InvalidArgument` error listing them.
fn one_of(op: &'static str, what: &'static str, n: usize, allowed: &[usize]) -> Result<usize> {
    if allowed.contains(&n) {
        return Ok(n);
    }
    let list: Vec<String> = allowed.iter().map(usize::to_string).collect();
    Err(LowbitError::InvalidArgument {
        op,
        what,
        reason: format!("{n}: expected {}", list.join(" or ")),
    })
}

/// `n`, or the setter `op`'s error for `what` when it is 0.
fn at_least_one(op: &'static str, what: &'static str, n: usize) -> Result<usize> {
    if n == 0 {
        return Err(LowbitError::InvalidArgument {
            op,
            what,
            reason: "must be at least 1".into(),
        });
    }
    Ok(n)
}

/// Tuning: `LOWBIT_CUDA_DECODER_ROWS=64|128` fixes `decoder_wgmma`'s rows per CTA (as
/// [`CudaDevice::with_decoder_rows`]); unset or empty chooses them from the split count
/// ([`decoder_rows`]).
pub const DECODER_ROWS_ENV: &str = "LOWBIT_CUDA_DECODER_ROWS";

/// [`DECODER_ROWS_ENV`]'s value: `None` for unset or empty.
pub fn parse_decoder_rows(text: &str) -> std::result::Result<Option<usize>, String> {
    match text.trim() {
        "" => Ok(None),
        t => match plain_usize(t) {
            Some(rows) => decoder_row_tile(rows).map(Some),
            None => Err(format!(
                "`{t}`: expected {DEC_WGMMA_BM} or {DEC_WGMMA_BM_FEW}"
            )),
        },
    }
}

/// `t` as a number written in decimal digits only (no sign or spaces), if it is one.
fn plain_usize(t: &str) -> Option<usize> {
    t.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| t.parse().ok())
        .flatten()
}

/// `rows` if `decoder_wgmma` has that row tile ([`DEC_WGMMA_BM`], [`DEC_WGMMA_BM_FEW`]).
fn decoder_row_tile(rows: usize) -> std::result::Result<usize, String> {
    if rows == DEC_WGMMA_BM || rows == DEC_WGMMA_BM_FEW {
        Ok(rows)
    } else {
        Err(format!(
            "{rows}: expected {DEC_WGMMA_BM} or {DEC_WGMMA_BM_FEW}"
        ))
    }
}

/// Rows per `decoder_wgmma` CTA for `tiles` output tiles of 128 rows on `sms` SMs (one CTA
/// each) and `chunks` k chunks: [`DEC_WGMMA_BM_FEW`] where those tiles would split K more
/// than [`DEC_WGMMA_FEW_SPLITS`] ways, else [`DEC_WGMMA_BM`].
pub fn decoder_rows(sms: usize, tiles: usize, chunks: usize) -> usize {
    if decoder_splits(sms, tiles, chunks) > DEC_WGMMA_FEW_SPLITS {
        DEC_WGMMA_BM_FEW
    } else {
        DEC_WGMMA_BM
    }
}

/// K splits of a decoder tail of `tiles` output tiles and `chunks` k chunks on `slots`
/// resident CTAs: as many as fill the device once, each at least [`DECODER_MIN_CHUNKS`]
/// chunks (one split when the tiles alone fill it).
pub fn decoder_splits(slots: usize, tiles: usize, chunks: usize) -> usize {
    (slots / tiles.max(1)).clamp(1, (chunks / DECODER_MIN_CHUNKS).max(1))
}

/// `decoder_wgmma` reads each y byte once: its launch marks y as streaming in the L2 (an
/// access policy window), so that y's lines are evicted before the weights', which every row
/// tile reads again. On the H200 this measured 42.3-43.1 against 44.6-45.5 µs at M = 2048
/// with i8x4 weights, 0.2-0.3 µs less with ternary2 ones and the same at M = 512 and 8192.
/// `LOWBIT_CUDA_Y_STREAMING=0` launches without the window.
pub const Y_STREAMING_ENV: &str = "LOWBIT_CUDA_Y_STREAMING";

/// The access policy window over `y_bytes` of y: at most the device's largest window
/// (`max`, in bytes), none where that is 0 (no windows, or [`Y_STREAMING_ENV`] off).
pub fn y_stream_window(y_bytes: usize, max: usize) -> Option<usize> {
    (max > 0 && y_bytes > 0).then(|| y_bytes.min(max))
}

/// Does `e`, from a launch with an access policy window, say only that the window was
/// refused (nothing was queued)?
fn window_refused(e: &cudarc::driver::DriverError) -> bool {
    use cudarc::driver::sys::CUresult as R;
    matches!(
        e.0,
        R::CUDA_ERROR_INVALID_VALUE | R::CUDA_ERROR_NOT_SUPPORTED
    )
}

/// Which `decoder_wgmma` launches write narrow split partials: each split's sum as an i16
/// where it fits in ±32767, else a marker and the i32 in a second array that only those
/// sums touch (`lb_p16` in `cuda/mma.cuh`). Where the sums fit, the partials written by the
/// decoder and read back by `decoder_mma_reduce` take half the bytes. Ternary weights keep a
/// split's sum within 128 per k, so the default takes them for ternary2 weights (H200, M =
/// 512 / 2048 / 8192: 18.7 / 39.3 / 116.0 µs against 19.1 / 40.1 / 116.2); i8x4 words may
/// hold int8 weights, whose sums rarely fit (ternary ones as i8x4: 21.8 / 41.0 against 22.3
/// / 42.3 with `all`). Integer sums either way: the same bits.
/// `LOWBIT_CUDA_NARROW_PARTIALS=0|t2|all` overrides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NarrowPartials {
    /// i32 partials always (`0`).
    Off,
    /// Narrow partials for ternary2-weight launches only (`t2`, the default).
    Ternary2,
    /// Narrow partials for i8x4-weight launches too (`all`).
    All,
}

/// Environment variable that picks [`NarrowPartials`] (`0`, `t2` or `all`).
pub const NARROW_PARTIALS_ENV: &str = "LOWBIT_CUDA_NARROW_PARTIALS";

impl NarrowPartials {
    /// [`NARROW_PARTIALS_ENV`]'s value: unset or empty for [`NarrowPartials::Ternary2`].
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        match text.trim() {
            "" | "t2" => Ok(Self::Ternary2),
            "0" => Ok(Self::Off),
            "all" => Ok(Self::All),
            other => Err(format!("`{other}`: expected 0, t2 or all")),
        }
    }

    /// Are the partials of a launch on ternary2 (`t2`) or i8x4 weights narrow?
    pub fn applies(self, t2: bool) -> bool {
        match self {
            Self::Off => false,
            Self::Ternary2 => t2,
            Self::All => true,
        }
    }
}

/// `decoder_wgmma` with ternary2 weights: `1` feeds the tensor cores each weight's u8 field
/// w + 1 (two instructions per A register instead of four) and subtracts the y row sums,
/// which each thread adds up by dp4a from the y bytes it loaded (`LB_DW_T2U`; unset: the
/// default); `0` expands the fields to i8 weights. The same bits either way. H200, packed
/// input: 18.1 against 18.7 µs at M = 512 (BENCHMARKS.md, 2026-12-05).
pub const T2_FIELDS_ENV: &str = "LOWBIT_CUDA_T2_FIELDS";

/// `decoder_wgmma` with ternary2 weights: `1` hands the ring's slots over by mbarriers, one
/// chunk per slot (`LB_DW_MBAR`): each warp publishes a slot two slots before it is needed
/// and releases it one slot after its wgmmas finish, so no warp waits for the slowest at
/// every slot as under the block barrier; `0` keeps the block barrier per slot (two chunks
/// per slot at 64 rows); unset (the default) takes the ring on 128-row tiles only, where it
/// measured faster (H200: 38.2 against 40.5 µs at M = 2048, 109.6 against 119.4 at 8192, with
/// u8 fields), and the block barrier on 64-row tiles, where it measured slower (20.7 against
/// 18.1 µs at M = 512). The same bits either way.
pub const MBARRIER_ENV: &str = "LOWBIT_CUDA_MBARRIER";

/// `decoder_wgmma` on the mbarrier ring ([`MBARRIER_ENV`]): `1` has one thread load each y
/// tile by TMA (a tensor map of y, 128-byte swizzle) where a row tile lies in one batch (B =
/// 1, or T a multiple of the row tile), the weights staying every thread's cp.asyncs
/// (`LB_DW_TMA`); `0` or unset (the default) loads y by cp.async too. The same bits either
/// way. Off: with the weights by bulk copies it measured 5–35 µs slower on the H200
/// (BENCHMARKS.md, 2026-12-05).
pub const TMA_ENV: &str = "LOWBIT_CUDA_TMA";

/// i32 words of `count` split partials: i32s, or narrow ones (i16s, then at the next 16-byte
/// boundary the i32s of the sums that do not fit; `lb_p16_wide`).
pub fn partial_words(count: usize, narrow: bool) -> usize {
    if narrow {
        (count * 2).next_multiple_of(16) / 4 + count
    } else {
        count
    }
}

/// `decoder_wgmma`'s split clusters: where a tile has at most this many splits (a power of
/// two; fewer are rounded down to one) and the device holds every tile's cluster at once,
/// they run as one thread-block cluster and sum their accumulators through distributed shared
/// memory, writing the output without partials or a reduction kernel (1: off).
/// `LOWBIT_CUDA_WGMMA_ZCLUSTER=1|2|4|8` overrides it.
pub const DEC_WGMMA_ZCLUSTER: usize = 2;
/// Environment variable that overrides [`DEC_WGMMA_ZCLUSTER`] (1, 2, 4 or 8).
pub const DEC_WGMMA_ZCLUSTER_ENV: &str = "LOWBIT_CUDA_WGMMA_ZCLUSTER";

/// [`DEC_WGMMA_ZCLUSTER_ENV`]'s value: unset or empty for [`DEC_WGMMA_ZCLUSTER`], else 1, 2,
/// 4 or 8.
pub fn parse_dw_zcluster(text: &str) -> std::result::Result<usize, String> {
    match text.trim() {
        "" => Ok(DEC_WGMMA_ZCLUSTER),
        "1" => Ok(1),
        "2" => Ok(2),
        "4" => Ok(4),
        "8" => Ok(8),
        other => Err(format!("`{other}`: expected 1, 2, 4 or 8")),
    }
}

/// The split cluster for `splits` splits under setting `max`: the largest power of two at
/// most `splits` when `splits` is 2..=`max` (the grid then runs that many splits), else 1.
pub fn decoder_zcluster(max: usize, splits: usize) -> usize {
    if splits < 2 || splits > max {
        1
    } else {
        1 << splits.ilog2()
    }
}

/// How `decoder_wgmma` is compiled beyond its signedness, split cluster and row tile: the
/// device's settings for ternary2 weights ([`T2_FIELDS_ENV`], [`MBARRIER_ENV`], [`TMA_ENV`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DwOptions {
    /// ternary2 weights as u8 fields w + 1 (`LB_DW_T2U`)
    pub t2_fields: bool,
    /// the ring handed over by mbarriers (`LB_DW_MBAR`) on 128-row tiles
    pub mbar: bool,
    /// ... and on 64-row tiles too ([`DwOptions::for_rows`])
    pub mbar_few: bool,
    /// y tiles by TMA on that ring (`LB_DW_TMA`), where [`DwOptions::for_shape`] allows
    pub tma: bool,
}

impl DwOptions {
    /// Does a launch on ternary2 (`t2`) or i8x4 weights load y by TMA (`LB_DW_TMA`)? Only on
    /// the mbarrier ring ([`DwOptions::for_shape`] also keeps it to 128-row tiles).
    pub fn tma_for(self, t2: bool) -> bool {
        dec_wgmma_mbar(t2, self.mbar) && self.tma
    }

    /// These options on `bm`-row tiles: the mbarrier ring on 64-row tiles only with
    /// `mbar_few`.
    pub fn for_rows(self, bm: usize) -> Self {
        Self {
            mbar: self.mbar && (bm != DEC_WGMMA_BM_FEW || self.mbar_few),
            ..self
        }
    }

    /// These options for a decoder tail of `batch` batches of `time` rows on `bm`-row tiles
    /// ([`DwOptions::for_rows`]), TMA only where every row tile lies in one batch (the
    /// kernel's tensor map addresses a tile as one box of one batch).
    pub fn for_shape(self, batch: usize, time: usize, bm: usize) -> Self {
        let o = self.for_rows(bm);
        Self {
            // (on 64-row tiles the TMA path failed its bit-exactness test on an H200: single
            // splits, whose 13-slot ring wraps, 2026-12-05; it measured slower everywhere)
            tma: o.tma && o.mbar && bm == DEC_WGMMA_BM && (batch == 1 || time.is_multiple_of(bm)),
            ..o
        }
    }

    /// [`MBARRIER_ENV`]'s value as `(mbar, mbar_few)`: unset or empty for the ring on
    /// 128-row tiles only, `1` on both row tiles, `0` on neither.
    pub fn parse_mbarrier(text: &str) -> std::result::Result<(bool, bool), String> {
        match text.trim() {
            "" => Ok((true, false)),
            "1" => Ok((true, true)),
            "0" => Ok((false, false)),
            other => Err(format!("`{other}`: expected 0 or 1")),
        }
    }
}

/// A tensor map (`CUtensorMap`) passed to a kernel by value (`LbTmap` in `cuda/mma.cuh`).
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct LbTmap(cudarc::driver::sys::CUtensorMap);

// SAFETY: plain bytes, the layout of `LbTmap` in cuda/mma.cuh (128 bytes).
unsafe impl DeviceRepr for LbTmap {}

/// The tensor map of `decoder_wgmma`'s y (`LB_DW_TMA`): p.a as bytes [B][H][T][Lw words],
/// rows p.lda words apart, valid up to p.kw words (zeros past it and past T), boxes of 128
/// bytes x `bm` rows, swizzled 128 bytes as the ring's y tiles.
fn y_tensor_map(p: &LbMma, batch: usize, bm: usize) -> Result<LbTmap> {
    let row = p.lda as u64 * 4;
    let dims = [
        p.kw as u64 * 4,
        p.time as u64,
        p.a_heads as u64,
        batch as u64,
    ];
    let strides = [
        row,
        row * p.time as u64,
        row * p.time as u64 * p.a_heads as u64,
    ];
    let boxes = [128u32, bm as u32, 1, 1];
    let steps = [1u32; 4];
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: every array has the rank's length (strides one less); the driver only encodes
    // (y's address is not dereferenced here).
    let r = unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
            4,
            p.a as *mut c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            steps.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    r.result()
        .map_err(drv("cuTensorMapEncodeTiled (decoder y)"))?;
    // SAFETY: initialised by the successful call above (and zeroed before it).
    Ok(LbTmap(unsafe { map.assume_init() }))
}

/// Defines of `decoder_wgmma` with `bm` rows per CTA and clusters of `zc` splits summed
/// through distributed shared memory, on i8x4 or ternary2 (`t2`) weights (these under
/// `opt`, [`DwOptions`]), its split partials narrow (`p16`, [`NarrowPartials`]; only without
/// clusters) or i32 (`LB_WGMMA` makes its target `sm_90a`).
pub fn dec_wgmma_defines(
    uns: bool,
    zc: usize,
    t2: bool,
    bm: usize,
    p16: bool,
    opt: DwOptions,
) -> Vec<(String, String)> {
    let mbar = opt.mbar;
    vec![
        d(super::compile::ARCH_SPECIFIC_DEFINE, 1),
        d("LB_UNS", u32::from(uns)),
        d("LB_DW_BN", DEC_WGMMA_BN),
        d("LB_DW_BM", bm),
        d("LB_DW_THREADS", DEC_WGMMA_THREADS),
        d("LB_DW_STAGES", dec_wgmma_stages(t2, bm, mbar)),
        d("LB_DW_PL", dec_wgmma_planes(t2, bm, mbar)),
        d("LB_DW_SLOT", dec_wgmma_slot(t2, bm)),
        d("LB_DW_T2", u32::from(t2)),
        d("LB_DW_ZC", zc),
        d("LB_DW_P16", u32::from(p16 && zc == 1)),
        d("LB_DW_T2U", u32::from(t2 && opt.t2_fields)),
        d("LB_DW_MBAR", u32::from(dec_wgmma_mbar(t2, mbar))),
        d("LB_DW_TMA", u32::from(opt.tma_for(t2))),
        eps(),
    ]
}

/// `mma_prep_scale_a` runs where the f32 input takes at most 1 / this of the L2: past the
/// first item per thread (kept in registers) its quantizing pass reads the input again, from
/// L2 when it fits. Larger inputs (the decoder's f32 y at M = 512: 67 MB) measured the same
/// or slower than `absmean_scale` + `mma_prep_a` (762 against 719 µs at M = 8192, H200).
pub const FUSED_SCALE_L2_SHARE: u64 = 2;

/// An on/off variable's value ([`WGMMA_ENV`], `LOWBIT_CUDA_FUSED_SCALE`,
/// `LOWBIT_CUDA_TERNARY2`): `1` on, `0` off, unset or empty `unset`.
pub fn parse_switch(text: &str, unset: bool) -> std::result::Result<bool, String> {
    match text.trim() {
        "" => Ok(unset),
        "1" => Ok(true),
        "0" => Ok(false),
        other => Err(format!("`{other}`: expected 0 or 1")),
    }
}

/// The shared memory per block that `lowrank_wgmma`'s A buffers are sized for (sm_90's
/// opt-in limit).
const WGMMA_SMEM_BUDGET: usize = 227 * 1024;
/// The same for one pair per CTA: two CTAs in an SM's 228 KB, each with 1 KB reserved.
const WGMMA_SMEM_BUDGET_HALF: usize = 113 * 1024;

/// A-tile buffers per warpgroup pair of `lowrank_wgmma` for `kpw` resident k words, split
/// ([`wgmma_split`]) or not: three where the split pipeline has them within
/// `WGMMA_SMEM_BUDGET` (D ≤ 256: tile j + 2 loads into tile j − 1's buffer while tile j is
/// computed and stored), else two (split, the pair then meets once more per tile). Passed to
/// the kernel as `LB_WG_NB`. With one pair per CTA the budget is half an SM's
/// (`WGMMA_SMEM_BUDGET_HALF`), so that two CTAs fit where the weights allow.
pub const fn wgmma_buffers(kpw: usize, split: bool, pairs: usize) -> usize {
    let budget = if pairs == 1 {
        WGMMA_SMEM_BUDGET_HALF
    } else {
        WGMMA_SMEM_BUDGET
    };
    if split && wgmma_smem_with(kpw, 3, pairs) <= budget {
        3
    } else {
        2
    }
}

const fn wgmma_smem_with(kpw: usize, buffers: usize, pairs: usize) -> usize {
    (WGMMA_BN + pairs * buffers * WGMMA_BM) * kpw * 4 + 1024
}

/// Dynamic smem of `lowrank_wgmma` with `pairs` warpgroup pairs for `kpw` (a multiple of 32)
/// resident k words: the weight tile and [`wgmma_buffers`] A tiles per pair, with 1 KB to
/// align the swizzled tiles.
pub const fn wgmma_smem(kpw: usize, split: bool, pairs: usize) -> usize {
    wgmma_smem_with(kpw, wgmma_buffers(kpw, split, pairs), pairs)
}

/// Does `lowrank_wgmma` store each 64-column half of a warpgroup's tile while the other
/// half's mma runs (`LB_WG_SPLIT`)? For 16-bit outputs: bf16 + ReLU at BDH shapes on an H200
/// 22.7 / 57.6 / 194.0 µs against 27.5 / 67.2 / 216.4 whole (M = 512 / 2048 / 8192, one run).
/// f32 outputs, whose stores alone take the write floor's time, store whole tiles: split,
/// they measured 33.3 / 85.3 / 296.0 against 31.8 / 85.1 / 280.2 µs.
pub fn wgmma_split(epilogue: Epilogue) -> bool {
    epilogue.dtype != OutputDType::F32
}

/// Defines of `lowrank_wgmma` for `kpw` (a multiple of 32) resident k words: its 128-byte
/// planes per row `LB_WG_NP` and A buffers `LB_WG_NB`, on i8x4 or ternary2 (`t2`) weights
/// (the `LB_WGMMA` define also makes its target `sm_90a`).
pub fn wgmma_defines(
    uns: bool,
    epilogue: Epilogue,
    kpw: usize,
    t2: bool,
    pairs: usize,
    whalves: bool,
) -> Vec<(String, String)> {
    vec![
        d(super::compile::ARCH_SPECIFIC_DEFINE, 1),
        d("LB_UNS", u32::from(uns)),
        d("LB_OUT", dtype_code(epilogue.dtype)),
        d("LB_RELU", u32::from(epilogue.relu)),
        d("LB_WG_BN", WGMMA_BN),
        d("LB_WG_BM", WGMMA_BM),
        d("LB_WG_PAIRS", pairs),
        d("LB_WG_THREADS", WGMMA_PAIR_THREADS as usize * pairs),
        d("LB_WG_NP", kpw / 32),
        d("LB_WG_SPLIT", u32::from(wgmma_split(epilogue))),
        d("LB_WG_NB", wgmma_buffers(kpw, wgmma_split(epilogue), pairs)),
        d("LB_WG_T2", u32::from(t2)),
        d("LB_WG_WHALVES", u32::from(whalves)),
        eps(),
    ]
}

/// The sm_90a-only variants (compiled only for compute capability 9.0).
pub fn wgmma_module_variants() -> Vec<(KernelId, Vec<(String, String)>)> {
    let mut v = Vec::new();
    for uns in [false, true] {
        for dtype in [OutputDType::F32, OutputDType::F16, OutputDType::Bf16] {
            for relu in [false, true] {
                let ep = Epilogue { dtype, relu };
                for kpw in (32..=WGMMA_MAX_KPW).step_by(32) {
                    for t2 in [false, true] {
                        for pairs in [1, 2] {
                            v.push((
                                KernelId::LowrankWgmma,
                                wgmma_defines(uns, ep, kpw, t2, pairs, false),
                            ));
                            // The weight tile in halves (i8x4, 16-bit outputs, D <= 256;
                            // at 384 it spilled 40 bytes).
                            if WeightGather::Halves.define(ep, kpw, t2, false) == 1 {
                                v.push((
                                    KernelId::LowrankWgmma,
                                    wgmma_defines(uns, ep, kpw, t2, pairs, true),
                                ));
                            }
                        }
                    }
                }
            }
        }
        for zc in [1, 2, 4, 8] {
            // i8x4 weights; ternary2 ones expanded or as u8 fields, each under a block
            // barrier, an mbarrier ring, or that ring with y by TMA
            let t2_opts = [(false, false), (true, false), (false, true), (true, true)]
                .into_iter()
                .flat_map(|(t2_fields, mbar)| {
                    let tmas: &[bool] = if mbar { &[false, true] } else { &[false] };
                    tmas.iter().map(move |&tma| DwOptions {
                        t2_fields,
                        mbar,
                        mbar_few: mbar,
                        tma,
                    })
                })
                .map(|opt| (true, opt));
            for (t2, fields) in std::iter::once((false, DwOptions::default())).chain(t2_opts) {
                v.push((
                    KernelId::DecoderWgmma,
                    dec_wgmma_defines(uns, zc, t2, DEC_WGMMA_BM, false, fields),
                ));
                if zc == 1 {
                    // (the i32 partials of 128 rows are above)
                    for (bm, p16) in [
                        (DEC_WGMMA_BM, true),
                        (DEC_WGMMA_BM_FEW, false),
                        (DEC_WGMMA_BM_FEW, true),
                    ] {
                        v.push((
                            KernelId::DecoderWgmma,
                            dec_wgmma_defines(uns, zc, t2, bm, p16, fields),
                        ));
                    }
                }
            }
        }
    }
    v
}

/// Mirror of `struct LbMma` in `cuda/mma.cuh` (same field order and types).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LbMma {
    pub a: u64,
    pub b: u64,
    pub out: u64,
    pub partial: u64,
    pub scale_ptr: u64,
    pub lda: i64,
    pub a_kvalid: i64,
    pub ldb: i64,
    pub ldc: i64,
    pub scale_param: f32,
    pub w_scale: f32,
    pub fmt: i32,
    pub relu: i32,
    pub out_dtype: i32,
    pub m_total: i32,
    pub time: i32,
    pub heads: i32,
    pub a_heads: i32,
    pub o_heads: i32,
    pub ncols: i32,
    pub bcols: i32,
    pub kw: i32,
    pub kpw: i32,
    pub b_head_rows: i32,
    pub tiles_n: i32,
    pub a_vec: i32,
    pub b_vec: i32,
    pub c_vec: i32,
    pub p_vec: i32,
    pub pdl: i32,
}

// SAFETY: plain-old-data with the C layout of `LbMma`.
unsafe impl DeviceRepr for LbMma {}

fn bn(ni: usize) -> usize {
    8 * ni * 4
}

/// Environment variable that overrides the low-rank kernel's weight ring
/// (`BKWxSTAGES`, e.g. `64x2`): for tuning sweeps on a new card.
pub const RING_ENV_LOWRANK: &str = "LOWBIT_CUDA_MMA_LOWRANK";

/// The low-rank kernel's weight ring: `bkw` k words per chunk, `stages` chunks in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmaRing {
    /// k words per chunk: 32 or 64 (default 32).
    pub bkw: usize,
    /// Chunks in flight: 2 to 4 (default 2).
    pub stages: usize,
}

impl MmaRing {
    /// What the low-rank kernel uses unless [`RING_ENV_LOWRANK`] says otherwise: with two
    /// chunks per BDH tile (D = 256) two stages measured 1–3 % faster than three or four on
    /// the H200 (`benches/gpu/sweep.sh`'s ring sweep, BENCHMARKS.md).
    pub const DEFAULT: Self = Self {
        bkw: MMA_BKW,
        stages: 2,
    };

    /// Rings the NVRTC test compiles (no spills) besides the default. (64x2 spills 8 bytes
    /// under the two-CTA register cap; it stays selectable for sweeps.)
    pub const CANDIDATES: [Self; 2] = [Self { bkw: 32, stages: 3 }, Self { bkw: 32, stages: 4 }];

    /// Parses `BKWxSTAGES`: BKW 32 or 64 (whole k32 steps, whole 16-byte pieces per thread),
    /// 2 to 4 stages.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let [bkw, stages] = t::parse_dims(text)?[..] else {
            return Err(format!("`{text}` is not BKWxSTAGES"));
        };
        let (bkw, stages) = (bkw as usize, stages as usize);
        if ![32, 64].contains(&bkw) || !(2..=4).contains(&stages) {
            return Err(format!("`{text}`: BKW must be 32 or 64 and STAGES 2 to 4"));
        }
        Ok(Self { bkw, stages })
    }

    /// The ring of [`RING_ENV_LOWRANK`] (unset or empty: [`MmaRing::DEFAULT`]).
    pub fn from_env() -> std::result::Result<Self, String> {
        t::from_env(RING_ENV_LOWRANK, Self::DEFAULT, Self::parse)
    }
}

/// Dynamic smem of the low-rank kernel for `kpw` resident k words.
pub fn lowrank_smem(kpw: usize, ring: MmaRing) -> usize {
    (MMA_BM * (kpw + PAD_A) + ring.stages * ring.bkw * (bn(LOWRANK_NI) + PAD_B)) * 4
}

/// Dynamic smem of the decoder kernel with `stages` ring stages.
pub fn decoder_smem(stages: usize) -> usize {
    stages * (MMA_BM * (MMA_BKW + PAD_A) + MMA_BKW * (bn(DECODER_NI) + PAD_B)) * 4
}

fn d(k: &str, v: impl ToString) -> (String, String) {
    (k.to_string(), v.to_string())
}

fn eps() -> (String, String) {
    d("LB_EPS", format!("{EPS:e}f"))
}

/// Defines of the low-rank kernel (A words signed, or unsigned for uint8pos): its
/// interior-tile epilogue (output dtype, ReLU) is compiled in, branch-free.
pub fn lowrank_defines(uns: bool, epilogue: Epilogue, ring: MmaRing) -> Vec<(String, String)> {
    vec![
        d("LB_UNS", u32::from(uns)),
        d("LB_OUT", dtype_code(epilogue.dtype)),
        d("LB_RELU", u32::from(epilogue.relu)),
        d("LB_THREADS", MMA_THREADS),
        d("LB_MMA_BKW", ring.bkw),
        d("LB_MMA_NI", LOWRANK_NI),
        d("LB_MMA_STAGES", ring.stages),
        eps(),
    ]
}

/// Defines of the decoder kernel.
pub fn decoder_defines(uns: bool, stages: usize) -> Vec<(String, String)> {
    vec![
        d("LB_UNS", u32::from(uns)),
        d("LB_THREADS", MMA_THREADS),
        d("LB_MMA_BKW", MMA_BKW),
        d("LB_MMA_NI", DECODER_NI),
        d("LB_MMA_STAGES", stages),
        eps(),
    ]
}

/// Narrow partials ([`NarrowPartials`]): splits whose loads a `decoder_mma_reduce` thread
/// issues together before adding them. (H200, ternary2, M = 512 / 2048: 18.7 / 39.3 µs
/// against 19.1 / 40.1 with i32 partials; with each narrow load right before its use, as
/// ptxas scheduled a plain loop, 19.9 / 40.2.)
pub const REDUCE_NARROW_BATCH: usize = 8;

/// Defines of the decoder's split-K reduction, over i32 or narrow (`p16`) partials, `width`
/// output elements per thread and step ([`REDUCE_WIDTHS`]; 8 only over narrow partials).
pub fn reduce_defines(p16: bool, width: usize) -> Vec<(String, String)> {
    vec![
        d("LB_MMA_REDUCE", 1),
        d("LB_MMA_NI", DECODER_NI),
        d("LB_RED16", u32::from(p16)),
        d("LB_RED_BATCH", REDUCE_NARROW_BATCH),
        d("LB_RED_W", width),
        eps(),
    ]
}

/// `decoder_mma_reduce`'s output elements per thread and step (`LB_RED_W`): 4, or 8 over
/// narrow partials where D is a multiple of 8.
pub const REDUCE_WIDTHS: [usize; 2] = [4, 8];

/// Threads per `decoder_mma_reduce` block.
const REDUCE_THREADS: usize = 256;

/// `decoder_mma_reduce` 4 or 8 elements wide ([`REDUCE_WIDTHS`]): unset for the default,
/// 8 where that is legal (narrow partials, D a multiple of 8 and aligned output) and the
/// 4-wide grid would not fit on the device at once. On the H200, at M = 2048 x D = 256 the
/// 4-wide kernel (76 registers: 396 resident blocks) took two waves of its 512 blocks; the
/// decoder tail there measured 38.02-38.21 µs with the 8-wide one, 38.27-38.34 without.
pub const REDUCE_WIDTH_ENV: &str = "LOWBIT_CUDA_REDUCE_W";

/// Environment variable that sets `lowrank_wgmma`'s CTAs per column tile (tuning; see
/// [`CudaDevice::with_lowrank_row_ctas`]); empty for the default.
pub const ROW_CTAS_ENV: &str = "LOWBIT_CUDA_ROW_CTAS";

/// A [`ROW_CTAS_ENV`] value: empty for the default (`None`), else a count from 1 to 1024.
pub fn parse_row_ctas(text: &str) -> std::result::Result<Option<usize>, String> {
    match text.trim() {
        "" => Ok(None),
        t => match t.parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(Some(n)),
            _ => Err(format!("`{t}`: expected a CTA count 1..=1024")),
        },
    }
}

/// A [`REDUCE_WIDTH_ENV`] value: empty for the default (`None`), else 4 or 8.
pub fn parse_reduce_width(text: &str) -> std::result::Result<Option<usize>, String> {
    match text.trim() {
        "" => Ok(None),
        "4" => Ok(Some(4)),
        "8" => Ok(Some(8)),
        t => Err(format!("`{t}`: expected 4 or 8")),
    }
}

/// The reduction's width for `elems` outputs: `forced` where set and legal (`wide_ok`), else
/// 8 where legal and the 4-wide grid needs more than the `resident4` blocks that fit at once.
pub fn reduce_width(forced: Option<usize>, wide_ok: bool, elems: usize, resident4: usize) -> usize {
    match forced {
        Some(8) if wide_ok => 8,
        Some(_) => 4,
        None if wide_ok && elems.div_ceil(4 * REDUCE_THREADS) > resident4 => 8,
        None => 4,
    }
}

/// The input packer's mode for f32 activations (`LB_A_F32` in `cuda/common.cuh`).
const MODE_F32: u32 = 2;

/// Defines of the input packer for mode 0 (misaligned words) / 1 codes / 2 f32.
pub fn prep_defines(mode: u32) -> Vec<(String, String)> {
    vec![d("LB_MMA_PREP", 1), d("LB_MODE", mode), eps()]
}

/// Defines of the small-M kernels: input mode, unsigned A lanes, ternary2 weights, the CTA
/// (the low-rank kernel's has one k-warp): column warps, k-warps, k words per k-warp, k-step
/// pairs per register batch, and (decoder; 1 leaves it out) the CTAs per SM its registers
/// are capped for.
pub fn small_defines(
    mode: u32,
    uns: bool,
    t2: bool,
    cta: &SmallMmaDecoder,
) -> Vec<(String, String)> {
    let mut v = vec![
        d("LB_MMA_SMALL", 1),
        d("LB_MODE", mode),
        d("LB_UNS", u32::from(uns)),
        d("LB_MS_T2", u32::from(t2)),
        d("LB_MS_CW", cta.cw),
        d("LB_MS_KW", cta.kw),
        d("LB_MS_KSW", cta.ksw),
        d("LB_MS_PAIRS", cta.batch / 16),
    ];
    if cta.min_blocks > 1 {
        v.push(d("LB_MS_MIN_BLOCKS", cta.min_blocks));
    }
    v.push(eps());
    v
}

/// Dynamic smem of a small-M kernel: A `[16][kws·ksw + 4]` words.
pub const fn small_smem(kws: u32, ksw: usize) -> usize {
    SMALL_ROWS * (kws as usize * ksw + PAD_A) * 4
}
/// The dynamic smem a launch gets without opt-in; both small-M kernels stay within it.
const SMALL_SMEM_MAX: usize = 48 * 1024;
const _: () = assert!(small_smem(1, SMALL_LOWRANK_MAX_KW) <= SMALL_SMEM_MAX);
// The low-rank CTA sums x as the reduction's blocks do (`LB_MS_SCALE_BLOCKS`): same size.
const _: () = assert!(32 * SMALL_LOWRANK_CW == t::RED_THREADS);
const _: () = assert!(SmallMmaDecoder::DEFAULT.check().is_ok());
const _: () = assert!(SMALL_DECODER_T2.check().is_ok());
// The ternary2 decoder's grid scale (`LB_MS_GRID_SCALE`) sums y as the reduction's blocks
// do: same size.
const _: () = assert!(SMALL_DECODER_T2.threads() == t::RED_THREADS);

/// Environment variable that forces the small-M tensor-core decoder's CTA with i8x4 weights
/// at every M ([`SmallMmaDecoder`], `CWxKWxKSW[xB[xBW]]`, e.g. `1x16x32` or `1x8x64x1x32`): for
/// tuning sweeps.
pub const SMALL_DECODER_ENV: &str = "LOWBIT_CUDA_SMALL_DECODER";

/// The CTA of the small-M tensor-core decoder (`decoder_mma_small`) with i8x4 weights:
/// `cw` column warps (32 columns each) x `kw` k-warps of at most `ksw` k words each. The
/// split-K count follows (`SmallShape::blocks_per_sm` blocks of 256 threads per SM), and with
/// it the integer atomics: one per output element per split, so at a given CTA count narrower
/// column tiles take fewer. Ternary2 weights run [`SMALL_DECODER_T2`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SmallMmaDecoder {
    /// Column warps: 1 or 2.
    pub cw: u32,
    /// k-warps: 2, 4, 8 or 16.
    pub kw: u32,
    /// The most k words of one k-warp: 32 or 64.
    pub ksw: usize,
    /// CTAs per SM its registers are capped for: 1 to 4.
    pub min_blocks: u32,
    /// k words per register batch: 32 or 64, at most `ksw`. A k-warp's weight loads of one
    /// batch are in flight together; its next batch is loaded after the batch's mma.
    pub batch: usize,
}

impl SmallMmaDecoder {
    /// `1x8x64` (`1x8x64x1x64`): what the kernel runs unless [`SMALL_DECODER_ENV`] says
    /// otherwise (with frozen weights, [`SMALL_DECODER_WIDE`] from
    /// [`SMALL_DECODER_WIDE_MIN_M`] rows). One column warp x 8 k-warps of at most 64 words,
    /// each k-warp's weight loads in flight at once: a CTA of 256 threads takes 32 columns x
    /// up to 512 words. At the BDH shape the split target (2 such CTAs per SM) cuts a head's 2048 words into 8 splits of
    /// 256 (32 per k-warp): 256 CTAs, two per SM. H100, BDH shape, graph replay, M = 1 / 2 / 4
    /// / 8 / 16: 4.73 / 4.76-4.77 / 4.81 / 4.97-4.98 / 5.40 µs against 4.91-4.92 / 4.94-4.95 /
    /// 4.99 / 5.14 / 5.50 in batches of 32 (`1x8x64x1x32`); 5.44 / – / 5.47 / 5.64 / 6.01 for
    /// `1x16x32` (the default before). H200, two rounds: 4.53-4.54 / 4.57-4.58 / 4.67 / 4.83 /
    /// 5.28 µs, against 4.65-4.66 / 4.72 / 4.77 / 4.93 / 5.36-5.37 in batches of 32,
    /// 5.08-5.10 / 5.16-5.17 / 5.25-5.26 / 5.39 / 5.74-5.75 for `1x16x32` (512 threads),
    /// 4.78-4.79 / 4.84-4.85 / 4.97-4.98 / 5.08-5.09 / 6.11-6.12 for `1x4x64x2`, 5.79-5.80 /
    /// 5.88 / 6.12-6.13 / 6.22-6.24 / 6.77-6.79 for `2x4x64x1x32`. On int8 codes (sm_90)
    /// ptxas spills 16 bytes of it.
    pub const DEFAULT: Self = Self {
        cw: 1,
        kw: 8,
        ksw: 64,
        min_blocks: 1,
        batch: 64,
    };

    /// Shapes the NVRTC test compiles besides the default.
    pub const CANDIDATES: [Self; 6] = [
        SMALL_DECODER_T2,
        SMALL_DECODER_WIDE,
        Self {
            batch: 32,
            ..Self::DEFAULT
        },
        Self {
            min_blocks: 2,
            batch: 32,
            ..Self::DEFAULT
        },
        Self {
            cw: 1,
            kw: 16,
            ksw: 32,
            min_blocks: 1,
            batch: 32,
        },
        Self {
            cw: 1,
            kw: 4,
            ksw: 64,
            min_blocks: 2,
            batch: 64,
        },
    ];

    /// [`SmallMmaDecoder::DEFAULT`], then the [`SmallMmaDecoder::CANDIDATES`].
    pub fn with_candidates() -> impl Iterator<Item = Self> {
        std::iter::once(Self::DEFAULT).chain(Self::CANDIDATES)
    }

    /// Threads per CTA.
    pub const fn threads(&self) -> u32 {
        32 * self.cw * self.kw
    }

    /// Whether the kernel takes this shape: the k-warps' partials overlay A
    /// (`kw · 32·cw ≤ kw · ksw + 4` words a row), A fits the smem a launch gets without
    /// opt-in.
    pub const fn check(&self) -> std::result::Result<(), &'static str> {
        if !matches!(self.cw, 1 | 2) || !matches!(self.kw, 2 | 4 | 8 | 16) {
            return Err("CW must be 1 or 2 and KW 2, 4, 8 or 16");
        }
        if !matches!(self.ksw, 32 | 64) {
            return Err("KSW must be 32 or 64");
        }
        if !matches!(self.min_blocks, 1..=4) {
            return Err("B must be 1 to 4");
        }
        if !matches!(self.batch, 32 | 64) || self.batch > self.ksw {
            return Err("BW must be 32 or 64, at most KSW");
        }
        if 32 * self.cw as usize > self.ksw {
            return Err("the k-warps' partials (32·CW columns) must fit a row of A (KSW words)");
        }
        if small_smem(self.kw, self.ksw) > SMALL_SMEM_MAX {
            return Err("A (16 rows of KW·KSW words) must fit 48 KB");
        }
        Ok(())
    }

    /// Parses `CWxKWxKSW[xB[xBW]]` (B: `min_blocks`, default 1; BW: `batch`, default KSW, one
    /// batch per k-warp; see [`SmallMmaDecoder::check`]).
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let (cw, kw, ksw, min_blocks, batch) = match t::parse_dims(text)?[..] {
            [cw, kw, ksw] => (cw, kw, ksw, 1, ksw),
            [cw, kw, ksw, b] => (cw, kw, ksw, b, ksw),
            [cw, kw, ksw, b, bw] => (cw, kw, ksw, b, bw),
            _ => return Err(format!("`{text}` is not CWxKWxKSW[xB[xBW]]")),
        };
        let shape = Self {
            cw,
            kw,
            ksw: ksw as usize,
            min_blocks,
            batch: batch as usize,
        };
        shape.check().map_err(|e| format!("`{text}`: {e}"))?;
        Ok(shape)
    }

    /// A [`SMALL_DECODER_ENV`] value: the shape it forces, or `None` where it is empty (the
    /// decoder then chooses by M: [`CudaDevice::small_decoder_shape`]).
    pub fn parse_forced(text: &str) -> std::result::Result<Option<Self>, String> {
        if text.trim().is_empty() {
            Ok(None)
        } else {
            Self::parse(text).map(Some)
        }
    }
}

/// `CWxKWxKSWxBxBW`, as [`SmallMmaDecoder::parse`] reads it.
impl std::fmt::Display for SmallMmaDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            cw,
            kw,
            ksw,
            min_blocks,
            batch,
        } = self;
        write!(f, "{cw}x{kw}x{ksw}x{min_blocks}x{batch}")
    }
}

/// The small low-rank kernel's k words per warp for `kw` words of K.
fn small_lowrank_ksw(kw: usize) -> usize {
    if kw.next_multiple_of(16) <= 64 {
        64
    } else {
        SMALL_LOWRANK_MAX_KW
    }
}

/// The small low-rank kernel's CTA: [`SMALL_LOWRANK_CW`] column warps, one k-warp of `ksw`
/// words, batches of 64.
fn small_lowrank_cta(ksw: usize) -> SmallMmaDecoder {
    SmallMmaDecoder {
        cw: SMALL_LOWRANK_CW,
        kw: 1,
        ksw,
        min_blocks: 1,
        batch: 64,
    }
}

/// Every module variant of the family (kernel, defines), for a warm-up or a compile check.
pub fn mma_module_variants() -> Vec<(KernelId, Vec<(String, String)>)> {
    let mut v = Vec::new();
    for mode in 0..3u32 {
        v.push((KernelId::MmaPrepA, prep_defines(mode)));
    }
    for uns in [false, true] {
        for dtype in [OutputDType::F32, OutputDType::F16, OutputDType::Bf16] {
            for relu in [false, true] {
                let ep = Epilogue { dtype, relu };
                v.push((
                    KernelId::LowrankMma,
                    lowrank_defines(uns, ep, MmaRing::DEFAULT),
                ));
            }
        }
        for ring in MmaRing::CANDIDATES {
            v.push((
                KernelId::LowrankMma,
                lowrank_defines(uns, Epilogue::default(), ring),
            ));
        }
        for stages in 3..=DECODER_MAX_STAGES {
            v.push((KernelId::DecoderMma, decoder_defines(uns, stages)));
        }
    }
    v.push((KernelId::DecoderMmaReduce, reduce_defines(false, 4)));
    for width in REDUCE_WIDTHS {
        v.push((KernelId::DecoderMmaReduce, reduce_defines(true, width)));
    }
    for mode in 0..3u32 {
        for uns in [false, true] {
            for t2 in [false, true] {
                for ksw in [64, SMALL_LOWRANK_MAX_KW] {
                    let defs = small_defines(mode, uns, t2, &small_lowrank_cta(ksw));
                    v.push((KernelId::LowrankMmaSmall, defs));
                }
                // f32 input whose scale the kernel works out itself (`LB_MS_SCALE_BLOCKS`).
                if mode == 2 {
                    for g in [1, t::SMALL_INLINE_SCALE_MAX_BLOCKS] {
                        let mut defs = small_defines(mode, uns, t2, &small_lowrank_cta(64));
                        defs.push(d("LB_MS_SCALE_BLOCKS", g));
                        v.push((KernelId::LowrankMmaSmall, defs));
                    }
                }
                let shapes: Vec<SmallMmaDecoder> = if t2 {
                    vec![SMALL_DECODER_T2]
                } else {
                    SmallMmaDecoder::with_candidates().collect()
                };
                for s in shapes {
                    let defs = small_defines(mode, uns, t2, &s);
                    // f32 input whose scale the grid works out (`LB_MS_GRID_SCALE`): ternary2
                    // weights' CTA (with i8x4 weights the default CTA spilled 40 bytes).
                    if mode == 2 && t2 {
                        for g in [1, t::RED_MAX_BLOCKS] {
                            let mut defs = defs.clone();
                            defs.extend([
                                d("LB_MS_GRID_SCALE", g),
                                d("LB_RED_MAX_BLOCKS", t::RED_MAX_BLOCKS),
                            ]);
                            v.push((KernelId::DecoderMmaSmall, defs));
                        }
                    }
                    v.push((KernelId::DecoderMmaSmall, defs));
                }
            }
        }
    }
    v
}

/// Can a device of compute capability `cc` run the sm_90a kernels (`crate::caps::WGMMA_SM`)
/// with this NVRTC?
pub(crate) fn wgmma_capable(cc: (u32, u32)) -> bool {
    cc == crate::caps::WGMMA_SM && super::compile::sm90a_target(cc).is_ok()
}

fn aligned16(p: u64) -> bool {
    p.is_multiple_of(16)
}

fn launch_cfg(grid: (u32, u32, u32), block: u32, smem: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (block, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

fn too_big(op: &'static str, what: &str, n: usize) -> LowbitError {
    LowbitError::InvalidArgument {
        op,
        what: "shape",
        reason: format!("{what} = {n} exceeds the mma kernels' i32 grid arithmetic"),
    }
}

fn i32_of(op: &'static str, what: &str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| too_big(op, what, n))
}

/// Weight rows per head of `p.b`: `words` i8x4 rows (`what`), or their ternary2 rows.
fn weight_head_rows(op: &'static str, what: &str, words: usize, t2: bool) -> Result<i32> {
    if t2 {
        i32_of(op, "ternary2 rows", crate::pack::ternary2_rows(words))
    } else {
        i32_of(op, what, words)
    }
}

/// `op` cannot run on this device or at this shape, and why.
fn unsupported(op: &'static str, reason: impl Into<String>) -> LowbitError {
    LowbitError::Unsupported {
        backend: crate::error::BackendKind::Cuda,
        op,
        reason: reason.into(),
    }
}

/// Ternary2 weights at M > 16 reached an op whose warpgroup-mma `kernel` does not run here
/// (the routing in launch.rs sends them to the small-M kernel instead).
fn ternary2_needs_wgmma(op: &'static str, kernel: &str) -> LowbitError {
    unsupported(
        op,
        format!("ternary2 weights at this M need the warpgroup-mma {kernel} (sm_90a)"),
    )
}

/// A grid dimension: y and z are limited to 65535 blocks.
fn grid_dim(op: &'static str, what: &str, n: usize) -> Result<u32> {
    if n <= 65_535 {
        Ok(n.max(1) as u32)
    } else {
        Err(too_big(op, what, n))
    }
}

impl CudaDevice {
    /// Forces a kernel family on this device (what `LOWBIT_CUDA_KERNELS` does when it is
    /// opened), after checking the device can run it.
    pub fn with_family(mut self, family: KernelFamily) -> Result<Self> {
        let name = match family {
            KernelFamily::Dp4a => "dp4a",
            KernelFamily::Mma => "mma",
        };
        self.family = KernelFamily::choose(name, &self.caps)?;
        Ok(self)
    }

    /// The device's opt-in shared memory per block (0 when the driver does not say).
    pub(crate) fn smem_optin(&self) -> usize {
        self.ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_or(0, |v| v.max(0) as usize)
    }

    /// The decoder ring depth that fits this device's shared memory.
    fn decoder_stages(&self) -> Option<usize> {
        let optin = self.smem_optin();
        (2..=DECODER_MAX_STAGES)
            .rev()
            .find(|&s| decoder_smem(s) <= optin)
    }

    /// Does the mma family run this low-rank projection (else the dp4a kernels do)?
    pub fn mma_lowrank_ok(&self, shape: &LowrankShape) -> bool {
        let kpw = shape.k_words().next_multiple_of(self.lowrank_ring.bkw);
        self.family == KernelFamily::Mma
            && shape.m() > t::SMALL_M_MAX
            && kpw <= LOWRANK_MAX_KPW
            && lowrank_smem(kpw, self.lowrank_ring) <= self.smem_optin()
    }

    /// Does `lowrank_wgmma` run this low-rank projection (sm_90a, K ≤ `WGMMA_MAX_KPW` words,
    /// fewer than 2^31 output rows, not switched off by [`WGMMA_ENV`] or
    /// [`CudaDevice::with_wgmma`])?
    pub fn wgmma_lowrank_ok(&self, shape: &LowrankShape) -> bool {
        let kpw = shape.k_words().next_multiple_of(32);
        self.wgmma
            && self.mma_lowrank_ok(shape)
            && kpw <= WGMMA_MAX_KPW
            && wgmma_smem(kpw, true, 2) <= self.smem_optin() // the larger layout
            // The kernel indexes output rows (B·H·T of them) in 32 bits.
            && shape.m().checked_mul(shape.heads).is_some_and(|r| r <= i32::MAX as usize)
    }

    /// Does `decoder_wgmma` run this decoder tail (sm_90a, M > 16, not switched off by
    /// [`WGMMA_ENV`] or [`CudaDevice::with_wgmma`])?
    pub fn wgmma_decoder_ok(&self, shape: &DecoderTailShape) -> bool {
        self.wgmma
            && self.mma_decoder_ok(shape)
            && [DEC_WGMMA_BM, DEC_WGMMA_BM_FEW].iter().all(|&bm| {
                let mbar = self.dw_opt.for_rows(bm).mbar;
                dec_wgmma_smem(false, bm, mbar).max(dec_wgmma_smem(true, bm, mbar))
                    <= self.smem_optin()
            })
    }

    /// Switches the warpgroup-mma kernels (both ops) on, where the device can run them, or off.
    pub fn with_wgmma(mut self, on: bool) -> Self {
        self.wgmma = on && wgmma_capable(self.caps.compute_capability);
        self
    }

    /// Sets how many splits `decoder_wgmma` may sum in one cluster (1, 2, 4 or 8; see
    /// [`DEC_WGMMA_ZCLUSTER`]).
    pub fn with_decoder_zcluster(mut self, zcluster: usize) -> Result<Self> {
        self.dw_zcluster = parse_dw_zcluster(&zcluster.to_string()).map_err(|reason| {
            LowbitError::InvalidArgument {
                op: "with_decoder_zcluster",
                what: "zcluster",
                reason,
            }
        })?;
        Ok(self)
    }

    /// Sets which `decoder_wgmma` launches write narrow split partials ([`NarrowPartials`]);
    /// any setting gives the same bits.
    pub fn with_narrow_partials(mut self, narrow: NarrowPartials) -> Self {
        self.narrow_partials = narrow;
        self
    }

    /// Sets whether `decoder_wgmma` feeds ternary2 weights to the tensor cores as u8 fields
    /// w + 1 and subtracts the y row sums ([`T2_FIELDS_ENV`]); either gives the same bits.
    pub fn with_t2_fields(mut self, on: bool) -> Self {
        self.dw_opt.t2_fields = on;
        self
    }

    /// Sets whether `decoder_wgmma`'s ring hands its slots over by mbarriers with ternary2
    /// weights ([`MBARRIER_ENV`]); either gives the same bits.
    pub fn with_mbarrier_ring(mut self, on: bool) -> Self {
        self.dw_opt.mbar = on;
        self.dw_opt.mbar_few = on;
        self
    }

    /// Sets whether `decoder_wgmma` on the mbarrier ring loads y by TMA where a row tile lies
    /// in one batch ([`TMA_ENV`]); either gives the same bits.
    pub fn with_y_tma(mut self, on: bool) -> Self {
        self.dw_opt.tma = on;
        self
    }

    /// Sets `decoder_wgmma`'s rows per CTA ([`DEC_WGMMA_BM`] or [`DEC_WGMMA_BM_FEW`]) instead
    /// of choosing them from the split count ([`decoder_rows`]); either gives the same bits.
    /// Split clusters keep 128 rows.
    pub fn with_decoder_rows(mut self, rows: usize) -> Result<Self> {
        let rows = decoder_row_tile(rows).map_err(|reason| LowbitError::InvalidArgument {
            op: "with_decoder_rows",
            what: "rows",
            reason,
        })?;
        self.dw_rows = Some(rows);
        Ok(self)
    }

    /// Sets `decoder_mma_reduce`'s output elements per thread ([`REDUCE_WIDTHS`]) instead of
    /// the default ([`REDUCE_WIDTH_ENV`]); 8 applies only where it is legal. Either gives the
    /// same bits.
    pub fn with_reduce_width(mut self, width: usize) -> Result<Self> {
        self.reduce_w = Some(one_of("with_reduce_width", "width", width, &REDUCE_WIDTHS)?);
        Ok(self)
    }

    /// Sets how many ways the tensor-core decoder kernels split K (at least 1; at most one
    /// per k chunk), instead of as many as fill the device once ([`decoder_splits`]): one
    /// split gives each CTA every chunk of its tile, so that small shapes run long rings
    /// (for tests). Either gives the same bits.
    pub fn with_decoder_splits(mut self, splits: usize) -> Result<Self> {
        self.dw_splits = Some(at_least_one("with_decoder_splits", "splits", splits)?);
        Ok(self)
    }

    /// Sets how many CTAs of `lowrank_wgmma` share each column tile's 64-row tiles (at least
    /// 1; at most one per two tiles), instead of as many as fill the SMs: fewer give each
    /// warpgroup pair more tiles in turn (for tests of its tile pipeline on small shapes).
    pub fn with_lowrank_row_ctas(mut self, ctas: usize) -> Result<Self> {
        self.wg_row_ctas = Some(at_least_one("with_lowrank_row_ctas", "ctas", ctas)?);
        Ok(self)
    }

    /// Sets `lowrank_wgmma`'s warpgroup pairs per CTA, 1 or 2 (overrides
    /// `LOWBIT_CUDA_WG_PAIRS`; by default [`wgmma_pairs`] chooses): one pair halves each
    /// CTA's threads and A buffers (the shared memory of two CTAs per SM where K ≤ 256; the
    /// registers fit one, see [`wgmma_pairs`]). Either gives the same bits.
    pub fn with_lowrank_pairs(mut self, pairs: usize) -> Result<Self> {
        self.wg_pairs = Some(one_of("with_lowrank_pairs", "pairs", pairs, &[1, 2])?);
        Ok(self)
    }

    /// `lowrank_wgmma`'s forced warpgroup pairs per CTA ([`CudaDevice::with_lowrank_pairs`]);
    /// `None`: [`wgmma_pairs`] chooses by epilogue.
    pub fn lowrank_pairs(&self) -> Option<usize> {
        self.wg_pairs
    }

    /// Does this device run the ops on the warpgroup-mma kernels when it can?
    pub fn wgmma(&self) -> bool {
        self.wgmma
    }

    /// Does the mma family run this decoder tail (else the dp4a kernels do)?
    pub fn mma_decoder_ok(&self, shape: &DecoderTailShape) -> bool {
        self.family == KernelFamily::Mma
            && shape.m() > t::SMALL_M_MAX
            && self.decoder_stages().is_some()
    }

    /// Does the small-M tensor-core kernel run this low-rank projection with i8x4 weights?
    /// M in `SMALL_LOWRANK_MMA_MIN_M..=16` (below, the dp4a small-M kernel is faster;
    /// `SMALL_LOWRANK_MMA_MIN_M_FROZEN` where the weights load early), or any M ≤ 16 with
    /// [`CudaDevice::with_small_mma`].
    pub fn mma_small_lowrank_ok(&self, shape: &LowrankShape) -> bool {
        let min_m = if self.loads_weights_early() {
            SMALL_LOWRANK_MMA_MIN_M_FROZEN
        } else {
            SMALL_LOWRANK_MMA_MIN_M
        };
        self.family == KernelFamily::Mma
            && shape.m() <= t::SMALL_M_MAX
            && (self.small_mma_all || shape.m() >= min_m)
            && shape.k_words().next_multiple_of(16) <= SMALL_LOWRANK_MAX_KW
    }

    /// Does the small-M tensor-core kernel run this decoder tail with i8x4 weights? M in
    /// `SMALL_DECODER_MMA_MIN_M..=16` (below, the dp4a small-M kernel measured faster;
    /// `SMALL_DECODER_MMA_MIN_M_FROZEN` where the weights load early), or any M ≤ 16 with
    /// [`CudaDevice::with_small_mma`]. Ternary2 weights run on it at every M unless
    /// `decoder_wgmma` takes them ([`CudaDevice::wgmma_decoder_ok`]).
    pub fn mma_small_decoder_ok(&self, shape: &DecoderTailShape) -> bool {
        let min_m = if self.loads_weights_early() {
            SMALL_DECODER_MMA_MIN_M_FROZEN
        } else {
            SMALL_DECODER_MMA_MIN_M
        };
        self.small_decoder_from(shape, min_m)
    }

    /// [`CudaDevice::mma_small_decoder_ok`] for f32 input: M in
    /// `SMALL_DECODER_MMA_MIN_M_F32..=16`, or any M ≤ 16 with [`CudaDevice::with_small_mma`].
    pub fn mma_small_decoder_f32_ok(&self, shape: &DecoderTailShape) -> bool {
        self.small_decoder_from(shape, SMALL_DECODER_MMA_MIN_M_F32)
    }

    fn small_decoder_from(&self, shape: &DecoderTailShape, min_m: usize) -> bool {
        self.family == KernelFamily::Mma
            && shape.m() <= t::SMALL_M_MAX
            && (self.small_mma_all || shape.m() >= min_m)
    }

    /// The small-M tensor-core decoder's CTA with i8x4 weights at `m` rows: the shape forced
    /// by [`CudaDevice::with_small_mma_decoder`] or `LOWBIT_CUDA_SMALL_DECODER`, else
    /// [`SMALL_DECODER_WIDE`] from [`SMALL_DECODER_WIDE_MIN_M`] rows where the weights load
    /// early (frozen weights under PDL), else [`SmallMmaDecoder::DEFAULT`].
    pub fn small_decoder_shape(&self, m: usize) -> SmallMmaDecoder {
        match self.small_mma_decoder {
            Some(ms) => ms,
            None if self.loads_weights_early() && m >= SMALL_DECODER_WIDE_MIN_M => {
                SMALL_DECODER_WIDE
            }
            None => SmallMmaDecoder::DEFAULT,
        }
    }

    /// Routes every M ≤ 16 projection with i8x4 weights to the tensor-core small-M kernel
    /// (what `LOWBIT_CUDA_SMALL_MMA=1` does when the device is opened).
    pub fn with_small_mma(mut self, all: bool) -> Self {
        self.small_mma_all = all;
        self
    }

    /// Can ternary2 weights run here: an integer path, the int8 tensor cores, and (low-rank)
    /// K of at most `SMALL_LOWRANK_MAX_KW` words.
    pub(crate) fn ternary2_ok(
        &self,
        op: &'static str,
        path: Path,
        kw: usize,
        lowrank: bool,
    ) -> Result<()> {
        if path == Path::Float {
            return Err(unsupported(
                op,
                "ternary2 weights run on the integer paths only (not the fp16 float path)",
            ));
        }
        if !self.caps.int8_mma {
            let (ma, mi) = self.caps.compute_capability;
            return Err(unsupported(
                op,
                format!(
                    "ternary2 weights run on the int8 tensor cores: {} is sm_{ma}{mi}, they need \
                 sm_80+ (use i8x4 weight words)",
                    self.caps.name
                ),
            ));
        }
        if lowrank && kw.next_multiple_of(16) > SMALL_LOWRANK_MAX_KW {
            return Err(unsupported(
                op,
                format!(
                    "ternary2 low-rank weights need D <= {} (D is {} words)",
                    SMALL_LOWRANK_MAX_KW * 4,
                    kw
                ),
            ));
        }
        Ok(())
    }

    /// Queues the small-M low-rank kernel on `p` (built and validated by `lowrank_raw`; `mode`
    /// says how A arrives). With `t2`, `p.b` holds ternary2 weights and M may be any size
    /// (at M > 16 `lowrank_wgmma` takes them where it runs).
    /// `scale_blocks`: f32 input whose absmean scale the kernel works out itself, as the
    /// reduction does on that many blocks, and writes to `p.scale_ptr`
    /// ([`CudaDevice::with_small_inline_scale`]).
    pub(crate) fn lowrank_mma_small(
        &self,
        mut p: LbProblem,
        shape: &LowrankShape,
        mode: u32,
        uns: bool,
        t2: bool,
        scale_blocks: Option<u32>,
    ) -> Result<()> {
        const OP: &str = "cuda::lowrank (mma small-M)";
        let kw = shape.k_words();
        p.b_head_rows = weight_head_rows(OP, "D words", kw, t2)?;
        let ksw = small_lowrank_ksw(kw);
        let cta = small_lowrank_cta(ksw);
        let mut defs = small_defines(mode, uns, t2, &cta);
        if let Some(g) = scale_blocks {
            defs.push(d("LB_MS_SCALE_BLOCKS", g));
        }
        let f = self.function(KernelId::LowrankMmaSmall, defs)?;
        let cols = SMALL_LOWRANK_CW as usize * 32;
        let grid = (
            grid_dim(OP, "column tiles", shape.latent_out.div_ceil(cols))?,
            grid_dim(OP, "heads", shape.heads)?,
            grid_dim(OP, "row blocks", shape.m().div_ceil(SMALL_ROWS))?,
        );
        let smem = small_smem(1, ksw);
        self.launch_small(&f, grid, SMALL_LOWRANK_CW, smem, p, t2, "lowrank_mma_small")
    }

    /// Queues the small-M decoder kernel on `p` (built and validated by `decoder_tail_raw`).
    /// `pending`: f32 input (`p.a`) with a computed scale not yet resolved
    /// ([`CudaDevice::with_small_mma_grid_scale`]): the kernel's grid works it out where its
    /// CTAs are 256 threads and all fit at once, else the reduction kernel is queued first.
    ///
    /// # Safety
    /// As [`CudaDevice::decoder_tail_raw`]; with `pending`, `p.a` holds `shape.y_len()` f32.
    pub(crate) unsafe fn decoder_mma_small(
        &self,
        mut p: LbProblem,
        shape: &DecoderTailShape,
        mode: u32,
        uns: bool,
        t2: bool,
        pending: Option<(LowBitActivationFormat, RawScale)>,
    ) -> Result<()> {
        const OP: &str = "cuda::decoder_tail (mma small-M)";
        const WHAT: &str = "decoder_mma_small";
        p.b_head_rows = weight_head_rows(OP, "Lart words", shape.w_head_words(), t2)?;
        let lw = shape.k_words();
        let row_blocks = shape.m().div_ceil(SMALL_ROWS);
        let ms = if t2 {
            SMALL_DECODER_T2
        } else {
            self.small_decoder_shape(shape.m())
        };
        // A caller's shape (`with_small_mma_decoder`) is checked here: one k-warp would store
        // each split's sums over the others.
        ms.check().map_err(|e| LowbitError::InvalidArgument {
            op: OP,
            what: "small-M decoder CTA (CWxKWxKSWxBxBW)",
            reason: format!("{ms}: {e}"),
        })?;
        let (cw, kws) = (ms.cw, ms.kw as usize);
        let defs = small_defines(mode, uns, t2, &ms);
        let col_tiles = shape.dim.div_ceil(cw as usize * 32);
        // Splits per head: a CTA covers at most KW·KSW words (in steps of 16·KW); aim at
        // the small-M blocks per SM (`SmallShape`, in 256-thread blocks; half for ternary2, a
        // quarter of the bytes; half with frozen weights under PDL, where the next kernel's
        // CTAs then fit beside these and load their weights before their wait: H100, graph
        // replay, M = 4 / 8 / 16, 4.43 / 4.57 / 5.05 µs against 4.86 / 4.90 / 5.25 at the
        // default's 2 per SM, BENCHMARKS.md 2026-12-06).
        let (step, most) = (16 * kws, ms.ksw * kws);
        let units = col_tiles * shape.heads * row_blocks;
        let per_sm = if t2 || self.loads_weights_early() {
            (self.small.blocks_per_sm / 2).max(1)
        } else {
            self.small.blocks_per_sm
        };
        let target = (per_sm as usize * self.caps.multiprocessors.max(1) as usize * 256
            / ms.threads() as usize)
            .max(1);
        let sp = target
            .div_ceil(units)
            .clamp(lw.div_ceil(most), lw.div_ceil(step).max(1));
        let sp = super::launch::nonempty_splits(lw, sp, step);
        let splits = shape.heads * sp;
        p.splits_per_head = i32_of(OP, "splits", sp)?;
        if splits > 1 {
            let mut scratch = self.scratch();
            // A zeroed [M][D] accumulator (the kernel leaves it zeroed again).
            p.acc = self.scratch_buf(&mut scratch.small_acc, shape.m() * shape.dim)?;
        }
        let grid = (
            grid_dim(OP, "column tiles", col_tiles)?,
            grid_dim(OP, "splits", splits)?,
            grid_dim(OP, "row blocks", row_blocks)?,
        );
        let smem = small_smem(ms.kw, ms.ksw);
        if let Some((format, scale)) = pending {
            // The grid barrier needs every CTA resident at once, on the SMs this context may
            // use, and the reduction's block partials need its block size.
            let blocks = t::red_blocks(shape.y_len());
            let grid_scale = match scale {
                RawScale::Compute(buf) if t2 && ms.threads() == t::RED_THREADS => {
                    let mut g = defs.clone();
                    g.extend([
                        d("LB_MS_GRID_SCALE", blocks),
                        d("LB_RED_MAX_BLOCKS", t::RED_MAX_BLOCKS),
                    ]);
                    let f = self.function(KernelId::DecoderMmaSmall, g)?;
                    let resident =
                        self.coresident_blocks(self.prepare_dynamic(&f, ms.threads(), smem)?);
                    (col_tiles * splits * row_blocks <= resident).then_some((f, buf))
                }
                _ => None,
            };
            if let Some((f, buf)) = grid_scale {
                non_null(OP, "scale buffer", buf)?;
                p.scale_ptr = buf;
                p.scale_param = 0.0;
                // absmean_scale's partials, then the grid barrier's word (`lb_grid_scale`).
                let mut scratch = self.scratch();
                p.partial =
                    self.scratch_buf(&mut scratch.red_partials, t::RED_MAX_BLOCKS as usize + 1)?;
                drop(scratch);
                return self.launch_small(&f, grid, cw * kws as u32, smem, p, t2, WHAT);
            }
            // SAFETY: forwarded contract (p.a holds y_len f32).
            let (sp, sv) = unsafe { self.resolve_scale(p.a, shape.y_len(), format, scale)? };
            p.scale_ptr = sp;
            p.scale_param = sv;
        }
        let f = self.function(KernelId::DecoderMmaSmall, defs)?;
        self.launch_small(&f, grid, cw * kws as u32, smem, p, t2, WHAT)
    }

    /// With i8x4 weights (not `t2`) the kernel asks `launch_lb` for the early PDL trigger,
    /// which it takes where the weights are frozen (`CudaDevice::with_frozen_weights`): H100,
    /// graph replay, frozen weights, low-rank at M = 4 / 8 / 16 took 4.13 / 4.16 / 4.46 µs with
    /// it against 4.53 / 4.53 / 4.71 after the wait; the decoder 0.01-0.05 µs less; ternary2
    /// weights up to 0.2 µs more (BENCHMARKS.md, 2026-12-06).
    #[allow(clippy::too_many_arguments)]
    fn launch_small(
        &self,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        warps: u32,
        smem: usize,
        mut p: LbProblem,
        t2: bool,
        what: &str,
    ) -> Result<()> {
        p.pdl = if t2 { Pdl::AfterWait } else { Pdl::Early } as i32;
        // SAFETY: `p` mirrors the kernel's only parameter; its addresses were checked by the
        // caller to cover the shape's extent (loads past the valid extents are masked).
        unsafe { self.launch_lb(f, launch_cfg(grid, 32 * warps, smem), &p, what, true, t2) }
    }

    fn prepare(&self, f: &CudaFunction, smem: usize) -> Result<usize> {
        self.prepare_dynamic(f, MMA_THREADS, smem)
    }

    /// Queues `mma_prep_a`: `rows` input rows of `p` (codes, f32 or misaligned words, per
    /// `mode`) packed into the scratch as zero-padded i8x4 rows of `round_up(kw, 4)` words.
    /// Under programmatic dependent launch ([`CudaDevice::chained`]) it may start while the
    /// previous kernel of the stream ends, and lets the next one start: at once where that
    /// previous kernel is this op's absmean reduction (`after_scale`, a plain launch), else
    /// only once it has waited for it, since the projection after it reads its weights
    /// before its own wait and an earlier kernel (the caller's, under PDL) may write them.
    /// Returns the scratch address and that row length.
    ///
    /// # Safety
    /// `p.a` must hold `rows` rows of `p.lda` elements (words for mode 0) of this context.
    unsafe fn mma_prep(
        &self,
        p: &LbMma,
        mode: u32,
        rows: usize,
        kw: usize,
        after_scale: bool,
    ) -> Result<(u64, usize)> {
        let prep = self.function(KernelId::MmaPrepA, prep_defines(mode))?;
        let ldo = kw.next_multiple_of(4);
        let mut scratch = self.scratch();
        let dst = self.scratch_buf(&mut scratch.mma_words, rows * ldo)?;
        drop(scratch);
        let (rows64, ldo32) = (rows as i64, ldo as i32);
        let grid = (rows * ldo / 4)
            .div_ceil(256)
            .clamp(1, self.caps.multiprocessors.max(1) as usize * 16) as u32;
        let c = launch_cfg((grid, 1, 1), 256, 0);
        const WHAT: &str = "cuLaunchKernel (mma_prep_a)";
        if self.chained() {
            // lb_pdl_chain: 2 lets the next kernel start at once, 1 once past the wait.
            let p = LbMma {
                pdl: if after_scale { 2 } else { 1 },
                ..*p
            };
            let mut params = [
                &p as *const LbMma as *mut c_void,
                &dst as *const u64 as *mut c_void,
                &rows64 as *const i64 as *mut c_void,
                &ldo32 as *const i32 as *mut c_void,
            ];
            // SAFETY: `params` are the kernel's four parameters, alive for the call; `dst`
            // holds rows * ldo words, the input covers its extent (contract); the kernel
            // waits (`lb_pdl_chain`) before it reads or writes.
            unsafe { self.launch_programmatic(&prep, c, &mut params, WHAT)? };
        } else {
            let mut b = self.stream.launch_builder(&prep);
            b.arg(p).arg(&dst).arg(&rows64).arg(&ldo32);
            // SAFETY: `dst` holds rows * ldo words; the input covers its extent (contract).
            unsafe { b.launch(c) }.map_err(drv(WHAT))?;
        }
        Ok((dst, ldo))
    }

    /// [`CudaDevice::mma_prep_scaled`] for the f32 input `p.a` (whole rows of `p.lda` floats)
    /// of the small-M tensor-core decoder, which it packs beforehand: `rows` rows of `kw`
    /// words, `n` floats in all.
    ///
    /// # Safety
    /// As [`CudaDevice::mma_prep_scaled`]; `p.a` holds `n` f32 of this context.
    pub(crate) unsafe fn small_prep_scaled(
        &self,
        p: &super::launch::LbProblem,
        rows: usize,
        kw: usize,
        n: usize,
        scale: RawScale,
    ) -> Result<Option<(u64, usize, u64)>> {
        let m = LbMma {
            a: p.a,
            lda: p.lda,
            a_kvalid: p.a_kvalid,
            fmt: p.fmt,
            a_vec: p.a_vec,
            ..Default::default()
        };
        // SAFETY: forwarded contract.
        unsafe { self.mma_prep_scaled(&m, MODE_F32, rows, kw, n, scale) }
    }

    /// For f32 input (`mode` [`MODE_F32`]) with a computed scale: the absmean scale into `Compute`'s
    /// buffer and `mma_prep`'s packing in one cooperative launch of `mma_prep_scale_a`.
    /// Returns the scratch address, its row length and the scale buffer, or `None` with
    /// nothing queued where the two-kernel chain must run: fused scaling off, another input
    /// or scale, rows that are not the whole input (`rows * p.a_kvalid != n`), an input of
    /// more than 1 / [`FUSED_SCALE_L2_SHARE`] of the L2, or a grid the device cannot hold at
    /// once.
    ///
    /// # Safety
    /// As [`CudaDevice::mma_prep`]; `Compute`'s buffer holds one f32 of this context.
    unsafe fn mma_prep_scaled(
        &self,
        p: &LbMma,
        mode: u32,
        rows: usize,
        kw: usize,
        n: usize,
        scale: RawScale,
    ) -> Result<Option<(u64, usize, u64)>> {
        const WHAT: &str = "cuLaunchKernel (mma_prep_scale_a)";
        let RawScale::Compute(scale_out) = scale else {
            return Ok(None);
        };
        let whole =
            p.lda == p.a_kvalid && (rows as u64).checked_mul(p.a_kvalid as u64) == Some(n as u64);
        let fits = (n as u64).saturating_mul(4) <= self.caps.l2_bytes / FUSED_SCALE_L2_SHARE;
        if !self.fused_scale || mode != MODE_F32 || !whole || !fits || n == 0 {
            return Ok(None);
        }
        non_null("cuda::absmean_scale", "scale buffer", scale_out)?;
        let f = self.function(KernelId::MmaPrepScaleA, prep_defines(mode))?;
        // A grid barrier: no more blocks than fit at once on the SMs this context may use.
        let resident = self.coresident_blocks(self.prepare_dynamic(&f, 256, 0)?);
        let ldo = kw.next_multiple_of(4);
        let items = rows * (ldo / 4);
        let blocks = items
            .div_ceil(256)
            .min(resident)
            .min(t::RED_MAX_BLOCKS as usize)
            .max(1);
        let mut scratch = self.scratch();
        let dst = self.scratch_buf(&mut scratch.mma_words, rows * ldo)?;
        let partials = self.scratch_buf(&mut scratch.red_partials, t::RED_MAX_BLOCKS as usize)?;
        let bar = self.scratch_buf(&mut scratch.grid_bar, 1)?;
        drop(scratch);
        let (rows64, ldo32, n64) = (rows as i64, ldo as i32, n as i64);
        let mut params = [
            p as *const LbMma as *mut c_void,
            &dst as *const u64 as *mut c_void,
            &rows64 as *const i64 as *mut c_void,
            &ldo32 as *const i32 as *mut c_void,
            &n64 as *const i64 as *mut c_void,
            &partials as *const u64 as *mut c_void,
            &bar as *const u64 as *mut c_void,
            &scale_out as *const u64 as *mut c_void,
        ];
        let c = launch_cfg((blocks as u32, 1, 1), 256, 0);
        // SAFETY: `params` are the kernel's eight parameters, alive for the call; `dst` holds
        // rows * ldo words, the partials RED_MAX_BLOCKS ≥ blocks doubles, `bar` a barrier
        // word with no arrivals (zeroed when allocated, and every launch leaves it so); the
        // input covers its extent (contract).
        let queued = unsafe { self.launch_cooperative(&f, c, &mut params, WHAT)? };
        Ok(queued.then_some((dst, ldo, scale_out)))
    }

    /// Whether the large-M chain `absmean_scale -> mma_prep_a -> lowrank_wgmma` (or
    /// `mma_prep_scale_a -> lowrank_wgmma`) runs under
    /// programmatic dependent launch: where the device's [`Pdl`] is on (sm_90+, unless
    /// `LOWBIT_CUDA_PDL=0`).
    fn chained(&self) -> bool {
        self.pdl != Pdl::Off
    }

    /// Queues the low-rank projection on the tensor cores. The request was validated by
    /// `lowrank_raw` (which routes here when [`CudaDevice::mma_lowrank_ok`], and with
    /// ternary2 weights (`t2`) only when [`CudaDevice::wgmma_lowrank_ok`]).
    ///
    /// # Safety
    /// As [`CudaDevice::lowrank_raw`]; ternary2 weights cover `shape.w_ternary2_len()` words.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn lowrank_mma_raw(
        &self,
        shape: &LowrankShape,
        input: RawAct,
        format: LowBitActivationFormat,
        scale: RawScale,
        w_words: u64,
        w_scale: f32,
        epilogue: Epilogue,
        out: u64,
        mode: u32,
        uns: bool,
        t2: bool,
    ) -> Result<()> {
        const OP: &str = "cuda::lowrank (mma)";
        let x = match input {
            RawAct::Packed(p) | RawAct::Codes(p) | RawAct::F32(p) => p,
        };
        let kw = shape.k_words();
        let ring = self.lowrank_ring;
        let kpw = kw.next_multiple_of(ring.bkw);
        let lda = if mode == 0 { kw } else { shape.embd };
        let m = shape.m();
        let bn = bn(LOWRANK_NI);
        let tiles_n = shape.latent_out.div_ceil(bn);
        let m_tiles = m.div_ceil(MMA_BM);
        let total_tiles = shape.heads * tiles_n;
        let mut p = LbMma {
            a: x,
            b: w_words,
            out,
            lda: lda as i64,
            a_kvalid: lda as i64,
            ldb: shape.latent as i64,
            ldc: shape.latent_out as i64,
            w_scale,
            fmt: fmt_code(OP, format)?,
            relu: i32::from(epilogue.relu),
            out_dtype: dtype_code(epilogue.dtype),
            m_total: i32_of(OP, "M", m)?,
            time: i32_of(OP, "T", shape.time)?,
            heads: i32_of(OP, "H", shape.heads)?,
            a_heads: i32_of(OP, "Hin", shape.in_heads)?,
            o_heads: i32_of(OP, "H", shape.heads)?,
            ncols: i32_of(OP, "latent_out", shape.latent_out)?,
            bcols: i32_of(OP, "N", shape.latent)?,
            kw: i32_of(OP, "D words", kw)?,
            kpw: i32_of(OP, "D words", kpw)?,
            b_head_rows: weight_head_rows(OP, "D words", kw, t2)?,
            tiles_n: i32_of(OP, "column tiles", tiles_n)?,
            a_vec: i32::from(lda.is_multiple_of(4) && aligned16(x)),
            b_vec: i32::from(shape.latent.is_multiple_of(4) && aligned16(w_words)),
            c_vec: i32::from(shape.latent_out.is_multiple_of(4) && aligned16(out)),
            p_vec: 0,
            ..Default::default()
        };
        i32_of(OP, "tiles", total_tiles)?;
        i32_of(OP, "row tiles", m_tiles)?;
        if self.wgmma_lowrank_ok(shape) {
            // SAFETY: forwarded contract.
            return unsafe {
                self.lowrank_wgmma_raw(shape, p, scale, format, epilogue, mode, uns, t2)
            };
        }
        if t2 {
            return Err(ternary2_needs_wgmma(OP, "low-rank kernel"));
        }
        let f = self.function(KernelId::LowrankMma, lowrank_defines(uns, epilogue, ring))?;
        let smem = lowrank_smem(kpw, ring);
        let slots = self.prepare(&f, smem)?;
        // SAFETY: forwarded contract. Codes / f32 are quantized or packed once (not once per
        // CTA); this kernel reads misaligned words itself.
        unsafe { self.lowrank_scale_and_a(&mut p, shape, format, scale, mode, false)? };
        // Each CTA owns one row block and a contiguous run of column tiles; as many CTAs as
        // fit the device at once (one wave), never more than there are tiles.
        let per_row = (slots / m_tiles).clamp(1, total_tiles);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p);
        let grid = (per_row as u32, m_tiles as u32, 1);
        // SAFETY: `p` mirrors the kernel's parameter; every address covers the shape's extent
        // (the caller's contract), loads past the valid extents are masked in the kernel.
        unsafe { b.launch(launch_cfg(grid, MMA_THREADS, smem)) }
            .map_err(drv("cuLaunchKernel (lowrank_mma)"))?;
        Ok(())
    }

    /// The low-rank kernels' common set-up: resolves the activation scale into `p` and, for
    /// codes or f32 input (or misaligned words when `pack_misaligned`), queues `mma_prep_a`
    /// and points `p` at the packed, zero-padded i8x4 rows. Returns whether it queued
    /// `mma_prep_a`.
    ///
    /// # Safety
    /// As [`CudaDevice::lowrank_raw`]; `p.a` is the caller's input.
    unsafe fn lowrank_scale_and_a(
        &self,
        p: &mut LbMma,
        shape: &LowrankShape,
        format: LowBitActivationFormat,
        scale: RawScale,
        mode: u32,
        pack_misaligned: bool,
    ) -> Result<bool> {
        let rows = shape.batch * shape.in_heads * shape.time;
        let pack = mode != 0 || (pack_misaligned && p.a_vec == 0);
        // SAFETY: forwarded contract (x holds x_len f32 when F32, rows * D codes, or rows *
        // lda words).
        unsafe {
            self.scale_and_pack(
                p,
                mode,
                rows,
                shape.k_words(),
                shape.x_len(),
                format,
                scale,
                pack,
            )
        }
    }

    /// Both ops' input set-up: resolves the activation scale into `p` and, when `pack` (or
    /// always, where [`CudaDevice::mma_prep_scaled`] computes the scale and packs in one
    /// launch), packs `p.a`'s `rows` rows into zero-padded, 16-byte aligned i8x4 rows of
    /// `round_up(kw, 4)` words that `p` then points at. `n`: the input's element count.
    /// Returns whether it packed.
    ///
    /// # Safety
    /// As [`CudaDevice::mma_prep`]; for a computed scale of f32 input, `p.a` holds `n` f32.
    #[allow(clippy::too_many_arguments)]
    unsafe fn scale_and_pack(
        &self,
        p: &mut LbMma,
        mode: u32,
        rows: usize,
        kw: usize,
        n: usize,
        format: LowBitActivationFormat,
        scale: RawScale,
        pack: bool,
    ) -> Result<bool> {
        // SAFETY: forwarded contract.
        let packed = if let Some((dst, ldo, sp)) =
            unsafe { self.mma_prep_scaled(p, mode, rows, kw, n, scale)? }
        {
            p.scale_ptr = sp;
            p.scale_param = 0.0;
            Some((dst, ldo))
        } else {
            // SAFETY: forwarded contract.
            let (sp, sv) = unsafe { self.resolve_scale(p.a, n, format, scale)? };
            p.scale_ptr = sp;
            p.scale_param = sv;
            let after_scale = matches!(scale, RawScale::Compute(_));
            // SAFETY: forwarded contract.
            pack.then(|| unsafe { self.mma_prep(p, mode, rows, kw, after_scale) })
                .transpose()?
        };
        if let Some((dst, ldo)) = packed {
            p.a = dst;
            p.lda = ldo as i64;
            p.a_kvalid = ldo as i64;
            p.a_vec = 1;
        }
        Ok(packed.is_some())
    }

    /// Queues `lowrank_wgmma` for the problem `p` that `lowrank_mma_raw` built (A not yet
    /// packed). Inputs that are not aligned i8x4 rows are packed first by `mma_prep_a`.
    ///
    /// # Safety
    /// As [`CudaDevice::lowrank_raw`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn lowrank_wgmma_raw(
        &self,
        shape: &LowrankShape,
        mut p: LbMma,
        scale: RawScale,
        format: LowBitActivationFormat,
        epilogue: Epilogue,
        mode: u32,
        uns: bool,
        t2: bool,
    ) -> Result<()> {
        const OP: &str = "cuda::lowrank (wgmma)";
        let kw = shape.k_words();
        let kpw = kw.next_multiple_of(32);
        let tiles_n = shape.latent_out.div_ceil(WGMMA_BN);
        let col_ctas = shape.heads * tiles_n;
        let m_tiles = shape.m().div_ceil(WGMMA_BM);
        p.kpw = i32_of(OP, "D words", kpw)?;
        p.tiles_n = i32_of(OP, "column tiles", tiles_n)?;
        let pairs = wgmma_pairs(self.wg_pairs, epilogue);
        // Whether `lowrank_scale_and_a` below will pack the input first (and so chain): only
        // to pick the weight gather, which is correct either way.
        let chain = self.chained() && (mode != 0 || p.a_vec == 0);
        let whalves = self.weight_gather.define(epilogue, kpw, t2, chain) == 1;
        let f = self.function(
            KernelId::LowrankWgmma,
            wgmma_defines(uns, epilogue, kpw, t2, pairs, whalves),
        )?;
        let threads = WGMMA_PAIR_THREADS * pairs as u32;
        let smem = wgmma_smem(kpw, wgmma_split(epilogue), pairs);
        if pairs == 1 {
            // Two CTAs' shared memory per SM needs all of it as such (their registers let
            // one fit: see `wgmma_pairs`).
            self.prefer_max_shared(&f)?;
        }
        let slots = self.prepare_dynamic(&f, threads, smem)?;
        // One CTA per (head, 256-column tile) holds those weights; when that leaves SMs idle,
        // the 64-row tiles are dealt over several CTAs per column tile as well.
        let row_ctas = self
            .wg_row_ctas
            .unwrap_or(slots / col_ctas.max(1))
            .clamp(1, m_tiles.div_ceil(pairs).max(1));
        let grid = (
            u32::try_from(col_ctas).map_err(|_| too_big(OP, "column tiles", col_ctas))?,
            grid_dim(OP, "row CTAs", row_ctas)?,
            1,
        );
        let c = launch_cfg(grid, threads, smem);
        // SAFETY: forwarded contract. This kernel's 16-byte cp.asyncs need aligned i8x4 rows,
        // so misaligned words are packed too.
        let packed = unsafe { self.lowrank_scale_and_a(&mut p, shape, format, scale, mode, true)? };
        // After this op's own packing kernel, the projection starts while it ends (its weight
        // tile loaded, then `griddepcontrol.wait`) and lets the next kernel start at once
        // (pdl 2, as lb_pdl_chain).
        p.pdl = if self.chained() && packed { 2 } else { 0 };
        const WHAT: &str = "cuLaunchKernel (lowrank_wgmma)";
        if p.pdl != 0 {
            let mut params = [&p as *const LbMma as *mut c_void];
            // SAFETY: as below; before its `lb_pdl_wait` the kernel reads only its weights,
            // which no kernel still running writes: the packing kernel before it lets it start
            // only once every earlier kernel of the stream is complete (`mma_prep`).
            return unsafe { self.launch_programmatic(&f, c, &mut params, WHAT) };
        }
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p);
        // SAFETY: `p` mirrors the kernel's parameter; every address covers the shape's extent
        // (the caller's contract), loads past the valid extents are zero-filled in the kernel.
        unsafe { b.launch(c) }.map_err(drv(WHAT))?;
        Ok(())
    }

    /// Queues the decoder tail on the tensor cores (validated by `decoder_tail_raw`, which
    /// routes here when [`CudaDevice::mma_decoder_ok`], and with ternary2 weights (`t2`) only
    /// when [`CudaDevice::wgmma_decoder_ok`]).
    ///
    /// # Safety
    /// As [`CudaDevice::decoder_tail_raw`]; ternary2 weights cover `shape.w_ternary2_len()`
    /// words.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn decoder_tail_mma_raw(
        &self,
        shape: &DecoderTailShape,
        input: RawAct,
        format: LowBitActivationFormat,
        scale: RawScale,
        w_words: u64,
        w_scale: f32,
        epilogue: Epilogue,
        out: u64,
        mode: u32,
        uns: bool,
        t2: bool,
    ) -> Result<()> {
        const OP: &str = "cuda::decoder_tail (mma)";
        let y = match input {
            RawAct::Packed(p) | RawAct::Codes(p) | RawAct::F32(p) => p,
        };
        let stages = self.decoder_stages().ok_or_else(|| {
            unsupported(OP, "not enough shared memory per block for the mma decoder")
        })?;
        let lw = shape.k_words();
        let m = shape.m();
        let dim = shape.dim;
        let rows = shape.batch * shape.heads * shape.time;
        let in_lda = if mode == 0 { lw } else { shape.latent };
        let bn = bn(DECODER_NI);
        let n_tiles = dim.div_ceil(bn);
        let m_tiles = m.div_ceil(MMA_BM);
        let chunks = shape.heads * lw.div_ceil(MMA_BKW);
        let mut p = LbMma {
            a: y,
            b: w_words,
            out,
            lda: in_lda as i64,
            a_kvalid: in_lda as i64,
            ldb: dim as i64,
            ldc: dim as i64,
            w_scale,
            fmt: fmt_code(OP, format)?,
            relu: i32::from(epilogue.relu),
            out_dtype: dtype_code(epilogue.dtype),
            m_total: i32_of(OP, "M", m)?,
            time: i32_of(OP, "T", shape.time)?,
            heads: i32_of(OP, "H", shape.heads)?,
            a_heads: i32_of(OP, "H", shape.heads)?,
            o_heads: 1,
            ncols: i32_of(OP, "D", dim)?,
            bcols: i32_of(OP, "D", dim)?,
            kw: i32_of(OP, "L words", lw)?,
            kpw: 0,
            b_head_rows: weight_head_rows(OP, "Lart words", shape.w_head_words(), t2)?,
            tiles_n: i32_of(OP, "column tiles", n_tiles)?,
            a_vec: i32::from(in_lda.is_multiple_of(4) && aligned16(y)),
            b_vec: i32::from(dim.is_multiple_of(4) && aligned16(w_words)),
            c_vec: i32::from(dim.is_multiple_of(4) && aligned16(out)),
            p_vec: i32::from(dim.is_multiple_of(4)),
            ..Default::default()
        };
        i32_of(OP, "k chunks", chunks)?;
        i32_of(OP, "row tiles", m_tiles)?;
        // decoder_wgmma (sm_90a) or decoder_tail_mma: the CTA tile, kernel and smem.
        let wg = self.wgmma_decoder_ok(shape);
        if t2 && !wg {
            return Err(ternary2_needs_wgmma(OP, "decoder"));
        }
        // decoder_wgmma's rows per CTA `dbm` (only 128 in split clusters); its partials narrow?
        let p16 = wg && self.narrow_partials.applies(t2);
        let opt = |bm| self.dw_opt.for_shape(shape.batch, shape.time, bm);
        let (n_tiles, m_tiles, threads, smem, f, what, dbm) = if wg {
            let n_tiles = dim.div_ceil(DEC_WGMMA_BN);
            let sms = self.caps.multiprocessors.max(1) as usize;
            let dbm = self
                .dw_rows
                .unwrap_or_else(|| decoder_rows(sms, n_tiles * m.div_ceil(DEC_WGMMA_BM), chunks));
            let f = self.function(
                KernelId::DecoderWgmma,
                dec_wgmma_defines(uns, 1, t2, dbm, p16, opt(dbm)),
            )?;
            let m_tiles = m.div_ceil(dbm);
            let what = "cuLaunchKernel (decoder_wgmma)";
            (
                n_tiles,
                m_tiles,
                DEC_WGMMA_THREADS,
                dec_wgmma_smem(t2, dbm, opt(dbm).mbar),
                f,
                what,
                dbm,
            )
        } else {
            let f = self.function(KernelId::DecoderMma, decoder_defines(uns, stages))?;
            let what = "cuLaunchKernel (decoder_tail_mma)";
            let smem = decoder_smem(stages);
            (n_tiles, m_tiles, MMA_THREADS, smem, f, what, MMA_BM)
        };
        let slots = self.prepare_dynamic(&f, threads, smem)?;
        let direct = mode == 0 && lw.is_multiple_of(4) && aligned16(y);
        // Split K so that the CTAs fill the device once (each split at least
        // DECODER_MIN_CHUNKS chunks of MMA_BKW words).
        let units = n_tiles * m_tiles;
        let splits = match self.dw_splits {
            Some(z) => z.clamp(1, chunks.max(1)),
            None => decoder_splits(slots, units, chunks),
        };
        // decoder_wgmma: few enough splits sum in one cluster per tile (distributed smem),
        // where the device holds every tile's cluster at once (an H200 holds 66 clusters of
        // 2 of this kernel, 30 of 4, 15 of 8): a second wave of clusters would cost as much
        // as the first.
        let zc = if wg && dbm == DEC_WGMMA_BM {
            decoder_zcluster(self.dw_zcluster, splits)
        } else {
            1
        };
        let clustered = if zc > 1 {
            let f = self.function(
                KernelId::DecoderWgmma,
                dec_wgmma_defines(uns, zc, t2, DEC_WGMMA_BM, false, opt(DEC_WGMMA_BM)),
            )?;
            self.prepare_dynamic(&f, threads, smem)?;
            let fits = self.resident_clusters(&f, zc as u32, threads, smem)? >= units;
            fits.then_some(f)
        } else {
            None
        };
        let (f, zc, splits) = match clustered {
            Some(f) => (f, zc, zc),
            None => (f, 1, splits),
        };
        let groups = splits / zc; // sets of partials: one when the splits sum in a cluster
        // (split clusters run 128-row tiles, which dbm then is)
        let tma = wg && opt(dbm).tma_for(t2);
        // The reduction and its width (reduce_width): 8 needs narrow partials, D % 8 and
        // vector output stores.
        // The 4-wide kernel is compiled and its residency queried only where that decides.
        let reduce = if groups > 1 {
            let wide_ok = p16 && dim.is_multiple_of(8) && p.c_vec != 0;
            let resident4 = if wide_ok && self.reduce_w.is_none() {
                let r4 = self.function(KernelId::DecoderMmaReduce, reduce_defines(p16, 4))?;
                self.prepare_dynamic(&r4, REDUCE_THREADS as u32, 0)?
            } else {
                0 // (not read: reduce_width then follows the setting or legality alone)
            };
            let width = reduce_width(self.reduce_w, wide_ok, m * dim, resident4);
            let r = self.function(KernelId::DecoderMmaReduce, reduce_defines(p16, width))?;
            Some((r, width))
        } else {
            None
        };
        // SAFETY: forwarded contract (y holds y_len f32 when F32, rows * L codes, or rows * Lw
        // words).
        unsafe {
            self.scale_and_pack(
                &mut p,
                mode,
                rows,
                lw,
                shape.y_len(),
                format,
                scale,
                !direct,
            )?
        };
        let mut scratch = self.scratch();
        if groups > 1 {
            let words = partial_words(groups * m * dim, p16);
            p.partial = self.scratch_buf(&mut scratch.partials, words)?;
        }
        drop(scratch);
        // LB_DW_TMA kernels take y's tensor map as a second parameter.
        let y_map = if tma {
            Some(y_tensor_map(&p, shape.batch, dbm)?)
        } else {
            None
        };
        let c = launch_cfg(
            (n_tiles as u32, m_tiles as u32, splits as u32),
            threads,
            smem,
        );
        let y_window = y_stream_window(rows * p.lda as usize * 4, self.y_window_max);
        let windowed = match y_window.filter(|_| wg) {
            Some(bytes) => {
                let mut params = vec![&p as *const LbMma as *mut c_void];
                if let Some(m) = &y_map {
                    params.push(m as *const LbTmap as *mut c_void);
                }
                // SAFETY: `params` are the kernel's parameters, alive for the call; the rest
                // as below (the window is only a cache hint over y).
                match unsafe { self.launch_streaming(&f, c, &mut params, p.a, bytes) } {
                    Ok(()) => true,
                    // A driver that refuses the window queued nothing: launch plainly.
                    Err(e) if window_refused(&e) => false,
                    Err(e) => return Err(drv(what)(e)),
                }
            }
            None => false,
        };
        if !windowed {
            let mut b = self.stream.launch_builder(&f);
            b.arg(&p);
            if let Some(m) = &y_map {
                b.arg(m);
            }
            // SAFETY: as above; the partials hold groups * M * D i32 (and the tensor map
            // describes y as it lies, within its allocation).
            unsafe { b.launch(c) }.map_err(drv(what))?;
        }
        if zc > 1 {
            *self
                .module_cache()
                .cluster_launches
                .entry(zc as u32)
                .or_default() += 1;
        }
        if let Some((r, width)) = reduce {
            let s = groups as i32;
            let grid = (m * dim)
                .div_ceil(width * REDUCE_THREADS)
                .clamp(1, self.caps.multiprocessors.max(1) as usize * 16)
                as u32;
            let c = launch_cfg((grid, 1, 1), REDUCE_THREADS as u32, 0);
            const WHAT: &str = "cuLaunchKernel (decoder_mma_reduce)";
            // Launched programmatically, triggered as the decoder's blocks exit, so its launch
            // overlaps their tail (1.7-1.9 µs less at M = 512 and 2048 on the H200). An
            // explicit trigger in the decoder, at its start or after its mainloop, measured
            // 3.5 µs slower at M = 512.
            let pdl_reduce = self.chained();
            let p = LbMma {
                pdl: if pdl_reduce { 2 } else { 0 }, // lb_pdl_chain: the next may start at once
                ..p
            };
            if pdl_reduce {
                let mut params = [
                    &p as *const LbMma as *mut c_void,
                    &s as *const i32 as *mut c_void,
                ];
                // SAFETY: `params` are the kernel's two parameters, alive for the call; it
                // waits (`lb_pdl_chain`) before it reads the partials written above.
                unsafe { self.launch_programmatic(&r, c, &mut params, WHAT)? };
            } else {
                let mut b = self.stream.launch_builder(&r);
                b.arg(&p).arg(&s);
                // SAFETY: the partials were written above on this stream.
                unsafe { b.launch(c) }.map_err(drv(WHAT))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::compile;

    #[test]
    fn problem_struct_layout_matches_the_c_side() {
        // 5 pointers + 4 i64 + 2 f32 + 19 i32 = 156 bytes, padded to 160 (mma.cuh asserts
        // the same size).
        assert_eq!(std::mem::size_of::<LbMma>(), 160);
        assert_eq!(std::mem::align_of::<LbMma>(), 8);
    }

    #[test]
    fn smem_budgets() {
        // BDH D = 256: two low-rank CTAs fit an H100 SM (228 KB), the decoder's 4-stage ring
        // fits its 227 KB per block.
        let ring = MmaRing::DEFAULT;
        assert!(2 * lowrank_smem(64, ring) <= 228 * 1024);
        assert!(decoder_smem(4) <= 227 * 1024);
        assert!(lowrank_smem(LOWRANK_MAX_KPW, ring) <= 227 * 1024);
        // lowrank_wgmma: one CTA per SM up to the longest resident K (D = 384), with three A
        // buffers per pair up to D = 256 when split, two at D = 384 or whole.
        // One pair: two CTAs per SM (each + 1 KB reserved in 228 KB) up to D = 256, three
        // buffers when split; D = 384 fits one.
        let layout = |split, pairs| {
            (
                wgmma_buffers(64, split, pairs),
                wgmma_smem(64, split, pairs),
            )
        };
        assert_eq!(layout(true, 2), (3, 161 * 1024));
        assert_eq!(layout(false, 2), (2, 129 * 1024));
        assert_eq!(layout(true, 1), (3, 113 * 1024));
        assert_eq!(layout(false, 1), (2, 97 * 1024));
        assert_eq!(wgmma_buffers(WGMMA_MAX_KPW, true, 2), 2);
        assert!(wgmma_smem(WGMMA_MAX_KPW, true, 2) <= 227 * 1024);
        assert!(2 * (wgmma_smem(64, true, 1) + 1024) <= 228 * 1024);
        assert!(wgmma_smem(WGMMA_MAX_KPW, true, 1) <= 227 * 1024);
        // decoder_wgmma: four slots of a 16 KB y tile and a 33 KB weight tile, one CTA per SM;
        // with ternary2 weights eight slots of 16 KB + 8.25 KB.
        assert_eq!(dec_wgmma_smem(false, 128, false), 4 * 49 * 1024 + 1024);
        assert_eq!(dec_wgmma_smem(true, 128, false), 8 * 25 * 1024 + 1024);
        // 64-row tiles: 5 slots of one 41 KB chunk (i8x4), 6 slots of two 17 KB chunks
        // (ternary2).
        assert_eq!(dec_wgmma_smem(false, 64, false), 5 * 41 * 1024 + 1024);
        assert_eq!(dec_wgmma_smem(true, 64, false), 6 * 2 * 17 * 1024 + 1024);
        for t2 in [false, true] {
            assert!(dec_wgmma_smem(t2, 64, false) <= 227 * 1024);
            assert!(dec_wgmma_stages(t2, 64, false) >= 3);
        }
        // The mbarrier ring (ternary2 only): 13 slots of one 17 KB chunk at 64 rows, the
        // 8 slots of 25 KB at 128; the kernel needs 6 or more. i8x4 rings keep the barrier.
        assert_eq!(dec_wgmma_stages(true, 64, true), 13);
        assert_eq!(dec_wgmma_planes(true, 64, true), 1);
        assert_eq!(dec_wgmma_smem(true, 64, true), 13 * 17 * 1024 + 1024);
        assert_eq!(
            dec_wgmma_smem(true, 128, true),
            dec_wgmma_smem(true, 128, false)
        );
        for bm in [64, 128] {
            assert!(dec_wgmma_smem(true, bm, true) <= 227 * 1024);
            assert!(dec_wgmma_stages(true, bm, true) >= 6);
            assert_eq!(
                dec_wgmma_smem(false, bm, true),
                dec_wgmma_smem(false, bm, false)
            );
        }
        // 128-row tiles split K up to 16 ways, then 64-row tiles take over (M = 512, D = 256
        // on 132 SMs: 4 tiles, 33 splits).
        assert_eq!(decoder_rows(132, 4, 1024), 64);
        assert_eq!(decoder_rows(132, 8, 1024), 128);
        assert_eq!(decoder_rows(132, 16, 1024), 128);
        assert_eq!(decoder_rows(132, 4, 20), 128); // 10 chunk pairs: at most 10 splits
        assert_eq!(decoder_splits(132, 4, 1024), 33);
        assert_eq!(decoder_splits(132, 132, 1024), 1);
        assert_eq!(decoder_splits(132, 200, 1024), 1); // more tiles than CTAs fit: one split
        assert_eq!(decoder_splits(132, 4, 1), 1);
        for t2 in [false, true] {
            assert!(dec_wgmma_smem(t2, 128, false) <= 227 * 1024);
            // Its split-cluster sum reuses the ring for the 128 x (256 + 8) i32 tile.
            assert!(
                DEC_WGMMA_BM * (DEC_WGMMA_BN + 8) * 4
                    <= dec_wgmma_stages(t2, 128, false) * dec_wgmma_slot(t2, 128)
            );
        }
    }

    #[test]
    fn y_stream_window_is_clamped_or_none() {
        assert_eq!(y_stream_window(67 << 20, 128 << 20), Some(67 << 20));
        assert_eq!(y_stream_window(268 << 20, 128 << 20), Some(128 << 20));
        assert_eq!(y_stream_window(1 << 20, 0), None);
        assert_eq!(y_stream_window(0, 128 << 20), None);
    }

    #[test]
    fn decoder_clusters() {
        assert_eq!(NarrowPartials::parse(""), Ok(NarrowPartials::Ternary2));
        assert_eq!(NarrowPartials::parse(" all"), Ok(NarrowPartials::All));
        assert_eq!(NarrowPartials::parse("0"), Ok(NarrowPartials::Off));
        assert!(NarrowPartials::parse("1").is_err());
        assert!(NarrowPartials::Ternary2.applies(true) && !NarrowPartials::Ternary2.applies(false));
        // i16s rounded up to 16 bytes, then one i32 per partial (lb_p16_wide).
        assert_eq!(partial_words(8, true), 4 + 8);
        assert_eq!(partial_words(9, true), 8 + 9);
        assert_eq!(partial_words(9, false), 9);
        assert_eq!(parse_dw_zcluster(""), Ok(DEC_WGMMA_ZCLUSTER));
        assert_eq!(parse_dw_zcluster("8"), Ok(8));
        assert!(parse_dw_zcluster("16").is_err());
        assert!(parse_dw_zcluster("3").is_err());
        // All the splits in one cluster (rounded down to a power of two), or none.
        assert_eq!(decoder_zcluster(2, 2), 2);
        assert_eq!(decoder_zcluster(2, 3), 1);
        assert_eq!(decoder_zcluster(4, 3), 2);
        assert_eq!(decoder_zcluster(8, 8), 8);
        assert_eq!(decoder_zcluster(8, 6), 4);
        assert_eq!(decoder_zcluster(8, 33), 1);
        assert_eq!(decoder_zcluster(8, 1), 1);
        assert_eq!(decoder_zcluster(1, 2), 1);
    }

    #[test]
    fn t2_options_only_with_ternary2_weights() {
        let define = |t2, t2_fields, mbar, name: &str| {
            let opt = DwOptions {
                t2_fields,
                mbar,
                mbar_few: mbar,
                tma: false,
            };
            dec_wgmma_defines(false, 1, t2, DEC_WGMMA_BM, true, opt)
                .into_iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v)
        };
        assert_eq!(define(true, true, false, "LB_DW_T2U").as_deref(), Some("1"));
        assert_eq!(
            define(true, false, false, "LB_DW_T2U").as_deref(),
            Some("0")
        );
        assert_eq!(
            define(true, false, true, "LB_DW_MBAR").as_deref(),
            Some("1")
        );
        assert_eq!(
            define(true, true, false, "LB_DW_MBAR").as_deref(),
            Some("0")
        );
        // (the kernel rejects LB_DW_T2U without LB_DW_T2, and an mbarrier ring of i8x4
        // weights would have too few slots)
        assert_eq!(define(false, true, true, "LB_DW_T2U").as_deref(), Some("0"));
        assert_eq!(
            define(false, true, true, "LB_DW_MBAR").as_deref(),
            Some("0")
        );
    }

    #[test]
    fn tma_only_on_the_mbarrier_ring_where_tiles_lie_in_one_batch() {
        let on = DwOptions {
            t2_fields: false,
            mbar: true,
            mbar_few: true,
            tma: true,
        };
        let tma = |t2, opt: DwOptions| {
            dec_wgmma_defines(false, 1, t2, DEC_WGMMA_BM, true, opt)
                .into_iter()
                .any(|(k, v)| k == "LB_DW_TMA" && v == "1")
        };
        assert!(tma(true, on));
        assert!(!tma(false, on)); // i8x4 weights keep the block barrier
        assert!(!tma(true, DwOptions { mbar: false, ..on }));
        // a row tile in one batch: B = 1 (rows past T read as zeros), or T % BM = 0
        assert!(on.for_shape(1, 300, 128).tma);
        assert!(on.for_shape(4, 256, 128).tma);
        assert!(!on.for_shape(2, 260, 128).tma);
        assert!(!on.for_shape(1, 300, 64).tma); // never on 64-row tiles
        // the default ring (128-row tiles only) takes neither the ring nor TMA on 64 rows
        let default = DwOptions {
            mbar_few: false,
            ..on
        };
        assert!(!default.for_rows(DEC_WGMMA_BM_FEW).mbar);
        assert!(default.for_rows(DEC_WGMMA_BM).mbar);
        assert!(!default.for_shape(1, 300, 64).tma);
        assert_eq!(DwOptions::parse_mbarrier(""), Ok((true, false)));
        assert_eq!(DwOptions::parse_mbarrier("1"), Ok((true, true)));
        assert_eq!(DwOptions::parse_mbarrier("0"), Ok((false, false)));
        assert!(DwOptions::parse_mbarrier("2").is_err());
        assert!(!on.for_shape(2, 192, 128).tma);
    }

    #[test]
    fn decoder_rows_parse() {
        assert_eq!(parse_decoder_rows(""), Ok(None));
        assert_eq!(parse_decoder_rows(" 64"), Ok(Some(64)));
        assert_eq!(parse_decoder_rows("128"), Ok(Some(128)));
        assert!(parse_decoder_rows("96").is_err());
        assert!(parse_decoder_rows("+64").is_err());
        assert!(parse_decoder_rows("x").is_err());
    }

    #[test]
    fn reduce_width_choice() {
        assert_eq!(parse_reduce_width(""), Ok(None));
        assert_eq!(parse_reduce_width(" 8"), Ok(Some(8)));
        assert_eq!(parse_reduce_width("4"), Ok(Some(4)));
        assert!(parse_reduce_width("16").is_err());
        // M = 2048 x D = 256: 512 blocks 4 wide, where the H200 holds 396 of them.
        assert_eq!(reduce_width(None, true, 2048 * 256, 396), 8);
        assert_eq!(reduce_width(None, true, 512 * 256, 396), 4);
        assert_eq!(reduce_width(None, false, 2048 * 256, 396), 4);
        assert_eq!(reduce_width(Some(8), true, 16, 396), 8);
        assert_eq!(reduce_width(Some(8), false, 2048 * 256, 396), 4);
        assert_eq!(reduce_width(Some(4), true, 2048 * 256, 396), 4);
    }

    #[test]
    fn one_of_names_the_choices() {
        assert_eq!(one_of("op", "pairs", 2, &[1, 2]).ok(), Some(2));
        let e = one_of("with_lowrank_pairs", "pairs", 3, &[1, 2]).unwrap_err();
        assert!(e.to_string().contains("3: expected 1 or 2"), "{e}");
        let e = one_of("with_reduce_width", "width", 6, &REDUCE_WIDTHS).unwrap_err();
        assert!(e.to_string().contains("6: expected 4 or 8"), "{e}");
    }

    #[test]
    fn wg_pairs_parse() {
        assert_eq!(parse_wg_pairs(""), Ok(None));
        assert_eq!(parse_wg_pairs("auto"), Ok(None));
        assert_eq!(parse_wg_pairs(" 1 "), Ok(Some(1)));
        assert_eq!(parse_wg_pairs("2"), Ok(Some(2)));
        for bad in ["0", "3", "x"] {
            assert!(
                parse_wg_pairs(bad).unwrap_err().contains("auto, 1 or 2"),
                "{bad}"
            );
        }
        let f32_out = Epilogue::default();
        let bf16 = Epilogue {
            dtype: OutputDType::Bf16,
            relu: true,
        };
        assert_eq!(wgmma_pairs(None, f32_out), 1);
        assert_eq!(wgmma_pairs(None, bf16), 2);
        assert_eq!(wgmma_pairs(Some(2), f32_out), 2);
        assert_eq!(wgmma_pairs(Some(1), bf16), 1);
    }

    #[test]
    fn weight_gather_parse_and_define() {
        for (text, g) in [
            ("", WeightGather::Halves),
            (" halves ", WeightGather::Halves),
            ("whole", WeightGather::Whole),
        ] {
            assert_eq!(parse_weight_gather(text), Ok(g), "{text:?}");
        }
        for bad in ["vector", "1", "Halves"] {
            assert!(parse_weight_gather(bad).is_err(), "{bad}");
        }
        // Halves only for i8x4 weights, 16-bit outputs, D <= 256 and no packing launch first.
        let bf16 = Epilogue {
            dtype: OutputDType::Bf16,
            relu: true,
        };
        let h = WeightGather::Halves;
        assert_eq!(h.define(bf16, 64, false, false), 1);
        assert_eq!(h.define(bf16, 96, false, false), 0);
        assert_eq!(h.define(bf16, 64, true, false), 0);
        assert_eq!(h.define(bf16, 64, false, true), 0);
        assert_eq!(h.define(Epilogue::default(), 64, false, false), 0);
        assert_eq!(WeightGather::Whole.define(bf16, 64, false, false), 0);
    }

    #[test]
    fn row_ctas_parse() {
        for (text, n) in [
            ("", None),
            (" 4 ", Some(4)),
            ("1", Some(1)),
            ("1024", Some(1024)),
        ] {
            assert_eq!(parse_row_ctas(text), Ok(n), "{text:?}");
        }
        for bad in ["0", "1025", "x", "-2"] {
            assert!(
                parse_row_ctas(bad).unwrap_err().contains("CTA count"),
                "{bad}"
            );
        }
    }

    #[test]
    fn wgmma_switch_parses() {
        assert_eq!(parse_switch("", true), Ok(true));
        assert_eq!(parse_switch(" 1 ", true), Ok(true));
        assert_eq!(parse_switch("0", true), Ok(false));
        assert!(
            parse_switch("direct", true)
                .unwrap_err()
                .contains("expected 0 or 1")
        );
        // Off when unset (LOWBIT_CUDA_TERNARY2).
        for (text, on) in [("", false), ("0", false), (" 1 ", true)] {
            assert_eq!(parse_switch(text, false), Ok(on), "{text:?}");
        }
        for bad in ["2", "yes", "on"] {
            assert!(parse_switch(bad, false).is_err(), "{bad}");
        }
        // Only compute capability 9.0 runs the sm_90a kernels.
        assert!(!wgmma_capable((8, 0)));
        assert!(!wgmma_capable((10, 0)));
    }

    #[test]
    fn lowrank_ring_parses() {
        assert_eq!(MmaRing::parse("32x2"), Ok(MmaRing::DEFAULT));
        assert_eq!(
            MmaRing::parse(" 64 x 2 "),
            Ok(MmaRing { bkw: 64, stages: 2 })
        );
        for bad in ["", "32", "32x3x1", "16x3", "32x1", "32x5", "ax3"] {
            assert!(MmaRing::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn small_mma_decoder_parses() {
        assert_eq!(
            SmallMmaDecoder::parse("1x8x64"),
            Ok(SmallMmaDecoder::DEFAULT)
        );
        for s in SmallMmaDecoder::CANDIDATES {
            assert_eq!(SmallMmaDecoder::parse(&s.to_string()), Ok(s));
        }
        // 2x4x32: 64 columns of partials past a 32-word row; 1x16x64: 65.8 KB of A.
        for bad in [
            "",
            "2x4",
            "3x4x64",
            "2x1x64",
            "2x4x48",
            "2x4x32",
            "1x16x64",
            "ax4x64",
            "1x8x32x1x64",
            "1x8x64x1x16",
            "1x8x64x1x64x1",
        ] {
            assert!(SmallMmaDecoder::parse(bad).is_err(), "{bad}");
        }
        // The variable: empty forces nothing, a shape forces it, a bad one is an error.
        assert_eq!(SmallMmaDecoder::parse_forced(" "), Ok(None));
        assert_eq!(
            SmallMmaDecoder::parse_forced("2x8x64"),
            Ok(Some(SMALL_DECODER_WIDE))
        );
        assert!(SmallMmaDecoder::parse_forced("2x4").is_err());
    }

    /// Spill stores a wgmma kernel may have (bytes, per ptxas). `decoder_wgmma` holds 64
    /// accumulators and two 16-word fragment buffers per thread at 128 registers (512
    /// threads): ptxas spills a few words (12-16 bytes, in the edge-chunk loads).
    /// `lowrank_wgmma` (16-bit outputs) holds one column half's 32 accumulators in flight
    /// while it stores the other's: at D = 384 ptxas spills a few words (4-20 bytes, f32
    /// output too), at D ≤ 256 none. More than the budget is a regression.
    fn wgmma_spill_budget(id: KernelId) -> usize {
        match id {
            KernelId::DecoderWgmma => 64,
            KernelId::LowrankWgmma => 32,
            _ => 0,
        }
    }

    /// The first variant of every tensor-core kernel compiles with its timeline stamps too
    /// (`LOWBIT_CUDA_TRACE=1`, `LB_TRACE`), which otherwise only a card builds.
    #[test]
    fn trace_builds_compile() {
        if !compile::nvrtc_present() || !wgmma_capable((9, 0)) {
            eprintln!("SKIPPED: libnvrtc (with sm_90) not found; trace builds not compiled");
            return;
        }
        let mut seen = Vec::new();
        for (id, mut defines) in mma_module_variants()
            .into_iter()
            .chain(wgmma_module_variants())
        {
            if seen.contains(&id) {
                continue;
            }
            seen.push(id);
            defines.push(d("LB_TRACE", super::super::TRACE_SLOTS));
            compile::compile_checked(id.stem(), (9, 0), &defines, None);
        }
    }

    /// Compiles every module variant with NVRTC (no GPU needed) for sm_80 and sm_90; skips
    /// loudly when libnvrtc is absent (see [`compile::compile_checked`] for its variables).
    #[test]
    fn every_mma_module_variant_compiles() {
        if !compile::nvrtc_present() {
            eprintln!("SKIPPED: libnvrtc not found; CUDA mma sources not compiled");
            return;
        }
        // The small-M decoder's tuning candidates may spill; its default only on int8 codes
        // (16 bytes on sm_90: ptxas keeps it at 128 registers); nothing else may.
        let decoder_defines = |shapes: &[SmallMmaDecoder], modes: &[u32]| -> Vec<_> {
            let mut v = Vec::new();
            for s in shapes.iter().filter(|s| **s != SMALL_DECODER_T2) {
                for &mode in modes {
                    for uns in [false, true] {
                        v.push(small_defines(mode, uns, false, s));
                    }
                }
            }
            v
        };
        let candidates = decoder_defines(&SmallMmaDecoder::CANDIDATES, &[0, 1, 2]);
        let default_codes = decoder_defines(&[SmallMmaDecoder::DEFAULT], &[1]);
        for cc in [(8, 0), (9, 0)] {
            for (id, defines) in mma_module_variants() {
                let budget = if candidates.contains(&defines) {
                    None
                } else if default_codes.contains(&defines) {
                    Some(16)
                } else {
                    Some(0)
                };
                compile::compile_checked(id.stem(), cc, &defines, budget);
            }
        }
        if wgmma_capable((9, 0)) {
            for (id, defines) in wgmma_module_variants() {
                compile::compile_checked(id.stem(), (9, 0), &defines, Some(wgmma_spill_budget(id)));
            }
        } else {
            eprintln!("SKIPPED: this NVRTC does not know sm_90; wgmma sources not compiled");
        }
    }
}
