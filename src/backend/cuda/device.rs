//! The CUDA device handle: a context, the stream every op is ordered on, the module cache and
//! the scratch buffers the kernels share (reduction partials, split-K workspace, counters).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    DriverError, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use super::{compile, probe};
use crate::caps::CudaDeviceCaps;
use crate::error::{BackendKind, LowbitError, Result};
use crate::kernels::KernelId;

/// A driver error as a [`LowbitError::Driver`] naming what was being done.
pub(crate) fn drv(context: impl Into<String>) -> impl FnOnce(DriverError) -> LowbitError {
    let context = context.into();
    move |e| LowbitError::Driver {
        backend: BackendKind::Cuda,
        context,
        message: e.to_string(),
    }
}

/// Kernel families this backend can run (`LOWBIT_CUDA_KERNELS` forces one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelFamily {
    /// `__dp4a` kernels (sm_61+).
    Dp4a,
    /// int8 tensor-core `mma.sync` kernels (sm_80+; `mma.rs`): the projections for M > 16;
    /// quantization, rho, the float path and M <= 16 stay on the dp4a kernels.
    Mma,
}

impl KernelFamily {
    /// Reads `LOWBIT_CUDA_KERNELS` (`dp4a` | `mma`; unset = best available) for `caps`.
    pub fn select(caps: &CudaDeviceCaps) -> Result<Self> {
        Self::choose(
            &std::env::var("LOWBIT_CUDA_KERNELS").unwrap_or_default(),
            caps,
        )
    }

    /// The family for a `LOWBIT_CUDA_KERNELS` value (empty = best available) on `caps`.
    pub fn choose(forced: &str, caps: &CudaDeviceCaps) -> Result<Self> {
        let forced = forced.trim().to_ascii_lowercase();
        match forced.as_str() {
            "" if caps.int8_mma => return Ok(Self::Mma),
            "" | "dp4a" => {}
            "mma" if caps.int8_mma => return Ok(Self::Mma),
            "mma" => {
                return Err(LowbitError::Unsupported {
                    backend: BackendKind::Cuda,
                    op: "open",
                    reason: format!(
                        "LOWBIT_CUDA_KERNELS=mma: {} is sm_{}{}; the int8 tensor-core kernels \
                         need sm_{}{}",
                        caps.name,
                        caps.compute_capability.0,
                        caps.compute_capability.1,
                        crate::caps::INT8_MMA_MIN_SM.0,
                        crate::caps::INT8_MMA_MIN_SM.1
                    ),
                });
            }
            other => {
                return Err(LowbitError::InvalidArgument {
                    op: "open",
                    what: "LOWBIT_CUDA_KERNELS",
                    reason: format!("`{other}` is not one of dp4a, mma"),
                });
            }
        }
        if !caps.dp4a {
            return Err(LowbitError::Unsupported {
                backend: BackendKind::Cuda,
                op: "open",
                reason: format!(
                    "{} is sm_{}{}; the dp4a kernels need sm_{}{}",
                    caps.name,
                    caps.compute_capability.0,
                    caps.compute_capability.1,
                    crate::caps::DP4A_MIN_SM.0,
                    crate::caps::DP4A_MIN_SM.1
                ),
            });
        }
        Ok(Self::Dp4a)
    }
}

/// One compiled variant of a stem: the kernel plus the defines that select its path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ModuleKey {
    pub stem: &'static str,
    pub cc: (u32, u32),
    pub defines: Vec<(String, String)>,
}

#[derive(Default)]
pub(crate) struct ModuleCache {
    modules: HashMap<ModuleKey, Arc<CudaModule>>,
    functions: HashMap<(ModuleKey, KernelId), CudaFunction>,
    /// Per function handle (valid while its module is cached, i.e. for the device's life):
    /// the largest dynamic smem allowed by `cuFuncSetAttribute` so far.
    pub smem_allowed: HashMap<usize, usize>,
    /// Function handles whose preferred shared-memory carveout is set to the maximum.
    pub max_carveout: HashSet<usize>,
    /// Resident blocks on the device per (function handle, threads, dynamic smem).
    pub resident: HashMap<(usize, u32, usize), usize>,
    /// Co-resident clusters on the device per (function handle, threads, dynamic smem) of a
    /// kernel compiled with its cluster dimensions.
    pub clusters: HashMap<(usize, u32, usize), usize>,
    /// `decoder_wgmma` launches whose splits summed in clusters, per cluster size.
    pub cluster_launches: HashMap<u32, u64>,
    compilations: usize,
    logs: Vec<(String, String)>,
}

/// Scratch owned by the device, reused by every launch on its stream (so stream order
/// keeps uses apart). Counters and the small-M accumulator are zero between launches (the
/// kernels reset them), so that a captured CUDA graph's replays find them as its first launch
/// did.
#[derive(Default)]
pub(crate) struct Scratch {
    pub red_partials: Option<CudaSlice<f64>>,
    pub red_counter: Option<CudaSlice<u32>>,
    /// `mma_prep_scale_a`'s grid barrier (`lb_grid_arrive` in `cuda/common.cuh`): a generation
    /// and its arrivals, which each launch's block 0 sets back to 0 once every block arrived.
    pub grid_bar: Option<CudaSlice<u64>>,
    pub partials: Option<CudaSlice<i32>>,
    /// Small-M decoder split-K accumulator `[M][D]`: per element, the splits that have added
    /// (bits 48 and up) and their i32 sum (low bits); kept zeroed by the kernels.
    pub small_acc: Option<CudaSlice<u64>>,
    /// f32 inputs quantized + packed once before the tiled GEMM.
    pub act_words: Option<CudaSlice<u32>>,
    /// mma family: activations packed into aligned i8x4 rows (`mma.rs`).
    pub mma_words: Option<CudaSlice<u32>>,
}

/// A tuning variable's bad value: an error naming it.
fn bad_env(var: &'static str) -> impl Fn(String) -> LowbitError {
    move |reason| LowbitError::InvalidArgument {
        op: "open",
        what: var,
        reason,
    }
}

/// On/off variable `var` ([`super::mma::parse_switch`]; `unset` when unset or empty), or an
/// error naming it.
pub(crate) fn env_switch(var: &'static str, unset: bool) -> Result<bool> {
    env_parse(var, |t| super::mma::parse_switch(t, unset))
}

/// Variable `var` (empty when unset) through `parse`, or an error naming `var`.
fn env_parse<T>(
    var: &'static str,
    parse: impl FnOnce(&str) -> std::result::Result<T, String>,
) -> Result<T> {
    parse(&std::env::var(var).unwrap_or_default()).map_err(bad_env(var))
}

/// A switch with an automatic default: empty or `auto` → `None`, else `0` / `1`.
pub(crate) fn parse_auto_switch(text: &str) -> std::result::Result<Option<bool>, String> {
    match text.trim() {
        "" | "auto" => Ok(None),
        other => super::mma::parse_switch(other, false)
            .map(Some)
            .map_err(|_| format!("`{other}`: expected auto, 0 or 1")),
    }
}

/// Environment variable that switches off the one-launch scale and packing of f32 input to
/// the tensor-core kernels (`0`; empty or `1`: on, the default).
pub const FUSED_SCALE_ENV: &str = "LOWBIT_CUDA_FUSED_SCALE";

/// Environment variable that lets the small-M low-rank kernels work out the absmean scale of
/// their f32 input themselves (empty or `1`: on, the default; `0`: a reduction kernel first):
/// see [`CudaDevice::with_small_inline_scale`].
pub const SMALL_INLINE_SCALE_ENV: &str = "LOWBIT_CUDA_SMALL_INLINE_SCALE";

/// Environment variable that lets the dp4a small-M decoder's grid work out the absmean scale
/// of its f32 input itself (empty or `1`: on, the default; `0`: a reduction kernel first): see
/// [`CudaDevice::with_decoder_grid_scale`].
pub const DECODER_GRID_SCALE_ENV: &str = "LOWBIT_CUDA_DECODER_GRID_SCALE";

/// Environment variable that lets the small-M tensor-core decoder's grid work out the absmean
/// scale of the f32 input its CTAs stage from ternary2 weights (empty or `1`: on, the default;
/// `0`: a reduction kernel first): see [`CudaDevice::with_small_mma_grid_scale`].
pub const SMALL_MMA_GRID_SCALE_ENV: &str = "LOWBIT_CUDA_SMALL_MMA_GRID_SCALE";

/// Environment variable that packs f32 input to the small-M tensor-core decoder once, in a
/// pass of its own, before the decoder runs (`1`), or in every CTA that stages it (`0`); empty
/// or `auto` (the default): once for i8x4 weights, in the CTAs for ternary2 weights (see
/// [`CudaDevice::with_small_prepack`]).
pub const SMALL_PREPACK_ENV: &str = "LOWBIT_CUDA_SMALL_PREPACK";

/// Environment variable that compiles every kernel with timeline stamps (`1`; diagnostics
/// only, off by default): see [`CudaDevice::take_traces`].
pub const TRACE_ENV: &str = "LOWBIT_CUDA_TRACE";

/// Stamps per block in a kernel's timeline (`lb_trace` in `cuda/common.cuh`, which gets it
/// as `LB_TRACE`): the first `TRACE_SLOTS - 1` are `%globaltimer` nanoseconds at the kernel's
/// stages (slot 0 entry; 0 where a stage was not reached), the last the block's SM + 1 (0:
/// the block did not run).
pub const TRACE_SLOTS: usize = 8;

/// Environment variable that sets [`Pdl`] on devices that support it: `0` off, `1` (the
/// default) or `early`.
pub const PDL_ENV: &str = "LOWBIT_CUDA_PDL";

/// Programmatic dependent launch of the small-M kernels (sm_90+): each may start while the
/// previous kernel of the stream runs, prefetch its weights into L2, and wait for it before
/// touching anything else. The value is what the kernels see (`LbProblem::pdl`). Unless it
/// is [`Pdl::Off`], the large-M low-rank chain `absmean_scale -> mma_prep_a -> lowrank_wgmma`
/// (codes or f32 input) runs the same way: each kernel lets the next start at once; so does
/// the decoder tail's split-K reduction, which the decoder's blocks trigger as they exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Pdl {
    /// Plain launches, no prefetch.
    Off = 0,
    /// A kernel lets the next one start once it is past its wait (one kernel in flight
    /// ahead of the one working).
    AfterWait = 1,
    /// A kernel lets the next one start as soon as it starts (several may prefetch ahead).
    Early = 2,
}

impl Pdl {
    /// A `LOWBIT_CUDA_PDL` value: empty or `1` (the default), `early`, or `0`.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        match text.trim() {
            "" | "1" => Ok(Self::AfterWait),
            "early" => Ok(Self::Early),
            "0" => Ok(Self::Off),
            other => Err(format!(
                "`{other}` is not 0 (off), 1 (on, the default) or early"
            )),
        }
    }
}

/// Environment variable that sets [`WeightPrefetch`]: `auto` (or empty, the default), `lines`,
/// `bulk`, `lines-last`, `bulk-last` or `none`.
pub const PREFETCH_ENV: &str = "LOWBIT_CUDA_PREFETCH";

/// Largest M at which [`WeightPrefetch::Auto`] prefetches a small-M kernel's weights in bulk.
/// H100, graph replay, i8x4 weights, packed input (BENCHMARKS.md, 2026-12-06), lines against
/// bulk: low-rank M = 1 4.43 / 4.29 µs, M = 2 4.66 / 4.66, M = 4..16 0.03-0.04 µs slower in
/// bulk; decoder M = 1 4.86 / 4.76, M = 2 5.00 / 4.97, M = 4..16 0.31-0.44 µs slower in bulk.
pub const BULK_PREFETCH_MAX_M: usize = 2;

/// How a small-M kernel under programmatic dependent launch prefetches its weights into L2
/// before its wait (`lb_pdl_prefetch` in `cuda/common.cuh`). The large-M low-rank kernel
/// always prefetches in bulk; every choice gives the same bits.
///
/// `evict_last` measured on the H100 (BENCHMARKS.md, 2026-12-06; graph replay, packed input,
/// two rounds): the low-rank projection with i8x4 weights at M = 4 / 8 / 16 took 4.57 / 4.60 /
/// 4.87 µs against 4.65 / 4.69 / 4.95 line by line without it; the decoder and ternary2
/// weights gained nothing. `benches/gpu/chain_floor.cu` shows the same on a kernel that only
/// reads the low-rank tiles (1 KB of each of 64 rows 32 KB apart): 4.25 against 4.66 µs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightPrefetch {
    /// In bulk up to [`BULK_PREFETCH_MAX_M`] rows; above, line by line, with `evict_last` for
    /// the low-rank projection. With frozen weights ([`CudaDevice::with_frozen_weights`],
    /// under PDL), whose kernels load their weights before the wait anyway, none, except for
    /// the ternary2 decoder above [`BULK_PREFETCH_MAX_M`] rows (line by line). H100, graph
    /// replay, frozen weights, i8x4, M = 1 / 2 / 4 / 8 / 16, µs: low-rank 3.66 / 3.69–3.71 /
    /// 3.73–3.74 / 3.79–3.80 / 4.04 against 3.87–3.88 / 3.90 / 4.11–4.12 / 4.16–4.18 /
    /// 4.47–4.51 with the prefetch, decoder 4.14 / 4.00 / 4.01 / 4.12 / 4.77–4.79 against
    /// 4.40–4.42 / 4.58 / 4.41–4.43 / 4.56–4.57 / 5.04; the ternary2 decoder 2.73 / 2.84–2.85 /
    /// 2.95 / 3.15 / 3.90 against 2.78–2.80 / 2.86–2.88 / 2.88–2.90 / 3.10–3.14 / 3.75–3.95
    /// line by line (BENCHMARKS.md, 2026-12-06).
    Auto,
    /// One `prefetch.global.L2` per 128-byte line, spread over the block's threads.
    Lines,
    /// One `cp.async.bulk.prefetch.L2` per weight row (the TMA unit walks its lines).
    Bulk,
    /// As `Lines`, with the L2 `evict_last` priority.
    LinesLast,
    /// As `Bulk`, with an L2 `evict_last` cache policy.
    BulkLast,
    /// No prefetch: the weights are read when the kernel loads them (before its wait with
    /// frozen weights, [`CudaDevice::with_frozen_weights`]; else after it).
    None,
}

/// `LbProblem::pf_mode` bits (`LB_PF_BULK`, `LB_PF_LAST`, `LB_PF_EARLY`, `LB_PF_NONE` in
/// `cuda/common.cuh`).
const PF_BULK: i32 = 1;
const PF_LAST: i32 = 2;
pub(crate) const PF_EARLY: i32 = 4;
const PF_NONE: i32 = 8;

impl WeightPrefetch {
    /// A `LOWBIT_CUDA_PREFETCH` value: empty or `auto` (the default), `lines`, `bulk`,
    /// `lines-last`, `bulk-last` or `none`.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        match text.trim() {
            "" | "auto" => Ok(Self::Auto),
            "lines" => Ok(Self::Lines),
            "bulk" => Ok(Self::Bulk),
            "lines-last" => Ok(Self::LinesLast),
            "bulk-last" => Ok(Self::BulkLast),
            "none" => Ok(Self::None),
            other => Err(format!(
                "`{other}` is not auto (the default), lines, bulk, lines-last, bulk-last or none"
            )),
        }
    }

    /// The kernels' `pf_mode` for a small-M launch of `m` rows of the decoder tail
    /// (`decoder`) or the low-rank projection, on ternary2 weights where `t2`, by a kernel that
    /// loads its first weights before its wait where `early` (frozen weights: then `Auto`
    /// prefetches nothing, except for the ternary2 decoder above `BULK_PREFETCH_MAX_M` rows).
    pub(crate) fn mode(self, m: usize, decoder: bool, t2: bool, early: bool) -> i32 {
        match self {
            Self::Auto if early && !(decoder && t2 && m > BULK_PREFETCH_MAX_M) => PF_NONE,
            Self::Auto if m <= BULK_PREFETCH_MAX_M => PF_BULK,
            Self::Auto if !decoder => PF_LAST,
            Self::Auto | Self::Lines => 0,
            Self::Bulk => PF_BULK,
            Self::LinesLast => PF_LAST,
            Self::BulkLast => PF_BULK | PF_LAST,
            Self::None => PF_NONE,
        }
    }
}

/// Environment variable that promises the small-M kernels frozen weights (`1`; empty or `0`:
/// not, the default): see [`CudaDevice::with_frozen_weights`].
pub const FROZEN_WEIGHTS_ENV: &str = "LOWBIT_CUDA_FROZEN_WEIGHTS";

/// A CUDA device (or a caller's context + stream) ready to run the kernels.
///
/// Everything is queued on one stream. A device opened with [`CudaDevice::new`] switches off
/// cudarc's per-buffer event tracking on its own context handle (one stream needs none): a
/// buffer made through it and used on another stream must be ordered by the caller.
///
/// Its ops may be captured into a CUDA graph on [`CudaDevice::stream`] (as
/// [`microbench::capture_graph`](super::microbench::capture_graph) does) and the graph
/// replayed on that stream: every counter the kernels keep in the device's scratch is back
/// at its start when a launch ends, so each replay runs as the captured launch did. Run each
/// captured op once uncaptured first, so that its kernels are compiled and the scratch has
/// grown to it: an op that would grow the scratch inside a capture returns
/// [`LowbitError::InvalidArgument`] instead. After a capture, a scratch buffer that a later,
/// larger op outgrows is kept until the device is dropped, since a graph may hold its
/// address.
pub struct CudaDevice {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) caps: CudaDeviceCaps,
    pub(crate) family: KernelFamily,
    /// Tiled dp4a block shapes of the low-rank projection and the decoder tail.
    pub(crate) tiles: (super::tuning::DpTile, super::tuning::DpTile),
    /// The low-rank mma kernel's weight ring (`LOWBIT_CUDA_MMA_LOWRANK`).
    pub(crate) lowrank_ring: super::mma::MmaRing,
    /// M ≤ 16 with i8x4 weights: the tensor-core small-M kernel for every M and both ops
    /// (`LOWBIT_CUDA_SMALL_MMA=1`, or [`CudaDevice::with_small_mma`]) instead of where it
    /// measured faster (both ops at M ≥ 4).
    pub(crate) small_mma_all: bool,
    /// Both ops run on the warpgroup-mma kernels where they can (sm_90a; off with
    /// `LOWBIT_CUDA_WGMMA=0` or [`CudaDevice::with_wgmma`]).
    pub(crate) wgmma: bool,
    /// `decoder_wgmma`'s largest split cluster (`LOWBIT_CUDA_WGMMA_ZCLUSTER`).
    pub(crate) dw_zcluster: usize,
    /// Largest L2 access policy window `decoder_wgmma` may mark its y with, in bytes (0: none;
    /// `mma::Y_STREAMING_ENV`).
    pub(crate) y_window_max: usize,
    /// Which `decoder_wgmma` launches write narrow split partials
    /// (`mma::NARROW_PARTIALS_ENV`).
    pub(crate) narrow_partials: super::mma::NarrowPartials,
    /// How `decoder_wgmma` takes ternary2 weights: as u8 fields w + 1
    /// (`mma::T2_FIELDS_ENV`), through an mbarrier ring (`mma::MBARRIER_ENV`), y by TMA
    /// there (`mma::TMA_ENV`).
    pub(crate) dw_opt: super::mma::DwOptions,
    /// `decoder_wgmma`'s rows per CTA, when set ([`CudaDevice::with_decoder_rows`],
    /// `mma::DECODER_ROWS_ENV`; else chosen from the split count, `mma::decoder_rows`).
    pub(crate) dw_rows: Option<usize>,
    /// `decoder_mma_reduce`'s width, when set ([`CudaDevice::with_reduce_width`],
    /// `mma::REDUCE_WIDTH_ENV`; else `mma::reduce_width` chooses).
    pub(crate) reduce_w: Option<usize>,
    /// The tensor-core decoders' K splits, when set ([`CudaDevice::with_decoder_splits`];
    /// else `mma::decoder_splits`).
    pub(crate) dw_splits: Option<usize>,
    /// `lowrank_wgmma`'s CTAs per column tile, when set ([`CudaDevice::with_lowrank_row_ctas`];
    /// else as many as fill the SMs).
    pub(crate) wg_row_ctas: Option<usize>,
    /// `lowrank_wgmma`'s warpgroup pairs per CTA (`LOWBIT_CUDA_WG_PAIRS`,
    /// [`CudaDevice::with_lowrank_pairs`]).
    pub(crate) wg_pairs: Option<usize>,
    /// How the small-M kernels are launched (`LOWBIT_CUDA_PDL`; off below sm_90).
    pub(crate) pdl: Pdl,
    /// How the small-M kernels prefetch their weights under PDL (`LOWBIT_CUDA_PREFETCH`).
    pub(crate) prefetch: WeightPrefetch,
    /// The caller's promise that nothing on the device writes the weights while the small-M
    /// kernels run (`LOWBIT_CUDA_FROZEN_WEIGHTS`, [`CudaDevice::with_frozen_weights`]).
    pub(crate) frozen_weights: bool,
    /// f32 input to the small-M tensor-core decoder packed once beforehand
    /// (`LOWBIT_CUDA_SMALL_PREPACK`, [`CudaDevice::with_small_prepack`]); `None`: auto.
    pub(crate) small_prepack: Option<bool>,
    /// f32 input to the tensor-core kernels with a computed scale: the scale and the packing
    /// in one cooperative launch (`mma_prep_scale_a`) instead of `absmean_scale` then
    /// `mma_prep_a` (off with `LOWBIT_CUDA_FUSED_SCALE=0` or [`CudaDevice::with_fused_scale`]).
    pub(crate) fused_scale: bool,
    /// The small-M low-rank kernels work out a computed scale themselves
    /// ([`SMALL_INLINE_SCALE_ENV`], [`CudaDevice::with_small_inline_scale`]).
    pub(crate) small_inline_scale: bool,
    /// The dp4a small-M decoder's grid works out a computed scale itself
    /// ([`DECODER_GRID_SCALE_ENV`], [`CudaDevice::with_decoder_grid_scale`]).
    pub(crate) decoder_grid_scale: bool,
    /// The small-M tensor-core decoder's grid works out a computed scale of the f32 input its
    /// CTAs stage ([`SMALL_MMA_GRID_SCALE_ENV`], [`CudaDevice::with_small_mma_grid_scale`]).
    pub(crate) small_mma_grid_scale: bool,
    /// How `lowrank_wgmma` gathers its i8x4 weight tile
    /// ([`super::mma::WEIGHT_GATHER_ENV`], [`CudaDevice::with_weight_gather`]).
    pub(crate) weight_gather: super::mma::WeightGather,
    /// SMs this context's kernels may occupy at once ([`coresident_sms`]): what a kernel with
    /// a grid barrier must fit in.
    pub(crate) coresident_sms: u32,
    /// Grid shape of the small-M kernels (`LOWBIT_CUDA_SMALL`).
    pub(crate) small: super::tuning::SmallShape,
    /// The small-M tensor-core decoder's CTA with i8x4 weights where one is forced
    /// (`LOWBIT_CUDA_SMALL_DECODER`, [`CudaDevice::with_small_mma_decoder`]); `None`: chosen by
    /// M ([`CudaDevice::small_decoder_shape`]).
    pub(crate) small_mma_decoder: Option<super::mma::SmallMmaDecoder>,
    /// Kernels compiled with timeline stamps ([`TRACE_ENV`], [`CudaDevice::take_traces`]).
    pub(crate) trace: bool,
    cache: Mutex<ModuleCache>,
    scratch: Mutex<Scratch>,
    /// Set once an op has been queued while the stream was capturing a CUDA graph: from then
    /// on a scratch buffer that grows is kept (in `retired`) instead of freed, since a graph
    /// may hold its address.
    graph_captured: std::sync::atomic::AtomicBool,
    retired: Mutex<Vec<Box<dyn std::any::Any + Send>>>,
    /// Held while one op queues its launches: the scratch buffers an op fills in one launch
    /// and reads in the next must not be refilled by another thread's op in between. All
    /// launches go to one stream, so an op queued whole runs whole.
    op_lock: Mutex<()>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("caps", &self.caps)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

fn unavailable(reason: impl Into<String>) -> LowbitError {
    LowbitError::BackendUnavailable {
        backend: BackendKind::Cuda,
        reason: reason.into(),
    }
}

/// SMs that `ctx`'s kernels may occupy at once: under MPS with an active thread percentage
/// (the context's execution affinity, `cuCtxGetExecAffinity`) fewer than the device's `sms`;
/// `sms` where the driver cannot say.
fn coresident_sms(ctx: &CudaContext, sms: u32) -> u32 {
    use cudarc::driver::sys;
    let query = || {
        ctx.bind_to_thread().ok()?;
        let mut aff = sys::CUexecAffinityParam {
            type_: sys::CUexecAffinityType::CU_EXEC_AFFINITY_TYPE_SM_COUNT,
            param: sys::CUexecAffinityParam_st__bindgen_ty_1 {
                smCount: sys::CUexecAffinitySmCount { val: 0 },
            },
        };
        // SAFETY: `aff` is a valid out-parameter of the type asked for; the context is bound.
        unsafe {
            sys::cuCtxGetExecAffinity(
                &mut aff,
                sys::CUexecAffinityType::CU_EXEC_AFFINITY_TYPE_SM_COUNT,
            )
        }
        .result()
        .ok()?;
        // SAFETY: the driver filled the SM-count member, the one asked for.
        Some(unsafe { aff.param.smCount.val })
    };
    // A driver without the entry point makes the dynamic loader panic: the device's count.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(query)) {
        Ok(Some(n)) if n > 0 => n.min(sms),
        _ => sms,
    }
}

impl CudaDevice {
    /// Opens device `ordinal` with its own non-blocking stream.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !probe::driver_present() {
            return Err(unavailable(
                "libcuda not found (no NVIDIA driver installed)",
            ));
        }
        if !compile::nvrtc_present() {
            return Err(unavailable(
                "libnvrtc not found (NVRTC compiles the CUDA kernels at run time)",
            ));
        }
        let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|_| unavailable("the CUDA driver panicked while opening the device"))?
            .map_err(|e| unavailable(format!("cannot open CUDA device {ordinal}: {e}")))?;
        // Every op of this device is ordered on its one stream, so cudarc's per-buffer
        // events (a record/wait pair per buffer per launch, microseconds each) buy nothing:
        // switch them off for this context handle (a caller's handle keeps its own setting).
        // SAFETY: buffers made through this handle are used on `stream`; a caller who moves
        // one to another stream orders it himself (documented on `CudaDevice`).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(drv("cuStreamCreate"))?;
        Self::build(ctx, stream)
    }

    /// Wraps a caller's context and stream (a framework's own): every op is ordered on
    /// `stream`. The stream must belong to `ctx`.
    pub fn from_stream(ctx: Arc<CudaContext>, stream: Arc<CudaStream>) -> Result<Self> {
        if stream.context().cu_ctx() != ctx.cu_ctx() {
            return Err(LowbitError::WrongDevice {
                op: "CudaDevice::from_stream",
                what: "stream",
                expected: format!(
                    "a stream of context {:p} (device {})",
                    ctx.cu_ctx(),
                    ctx.ordinal()
                ),
                actual: format!(
                    "a stream of context {:p} (device {})",
                    stream.context().cu_ctx(),
                    stream.context().ordinal()
                ),
            });
        }
        if !compile::nvrtc_present() {
            return Err(unavailable(
                "libnvrtc not found (NVRTC compiles the CUDA kernels at run time)",
            ));
        }
        Self::build(ctx, stream)
    }

    fn build(ctx: Arc<CudaContext>, stream: Arc<CudaStream>) -> Result<Self> {
        let caps = probe::device_caps(ctx.ordinal()).map_err(|message| LowbitError::Driver {
            backend: BackendKind::Cuda,
            context: "device attributes".into(),
            message,
        })?;
        let family = KernelFamily::select(&caps)?;
        let tile = |var: &'static str| super::tuning::DpTile::from_env(var).map_err(bad_env(var));
        let tiles = (
            tile(super::tuning::TILE_ENV_LOWRANK)?,
            tile(super::tuning::TILE_ENV_DECODER)?,
        );
        let lowrank_ring =
            super::mma::MmaRing::from_env().map_err(bad_env(super::mma::RING_ENV_LOWRANK))?;
        let pdl = env_parse(PDL_ENV, Pdl::parse)?;
        let prefetch = env_parse(PREFETCH_ENV, WeightPrefetch::parse)?;
        let small =
            super::tuning::SmallShape::from_env().map_err(bad_env(super::tuning::SMALL_ENV))?;
        let wgmma = env_switch(super::mma::WGMMA_ENV, true)?
            && super::mma::wgmma_capable(caps.compute_capability);
        let dw_zcluster = env_parse(
            super::mma::DEC_WGMMA_ZCLUSTER_ENV,
            super::mma::parse_dw_zcluster,
        )?;
        let pdl = if caps.programmatic_launch {
            pdl
        } else {
            Pdl::Off
        };
        let narrow_partials = env_parse(
            super::mma::NARROW_PARTIALS_ENV,
            super::mma::NarrowPartials::parse,
        )?;
        let y_window_max = if env_switch(super::mma::Y_STREAMING_ENV, true)? {
            use cudarc::driver::sys::CUdevice_attribute as A;
            // A driver without the attribute has no windows either.
            ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MAX_ACCESS_POLICY_WINDOW_SIZE)
                .map_or(0, |v| v.max(0) as usize)
        } else {
            0
        };
        let coresident_sms = coresident_sms(&ctx, caps.multiprocessors);
        Ok(Self {
            ctx,
            stream,
            caps,
            family,
            tiles,
            lowrank_ring,
            small_mma_all: std::env::var("LOWBIT_CUDA_SMALL_MMA").is_ok_and(|v| v.trim() == "1"),
            wgmma,
            dw_zcluster,
            y_window_max,
            narrow_partials,
            dw_opt: {
                let (mbar, mbar_few) = env_parse(
                    super::mma::MBARRIER_ENV,
                    super::mma::DwOptions::parse_mbarrier,
                )?;
                super::mma::DwOptions {
                    t2_fields: env_switch(super::mma::T2_FIELDS_ENV, true)?,
                    mbar,
                    mbar_few,
                    tma: env_switch(super::mma::TMA_ENV, false)?,
                }
            },
            dw_rows: env_parse(super::mma::DECODER_ROWS_ENV, super::mma::parse_decoder_rows)?,
            dw_splits: None,
            reduce_w: env_parse(super::mma::REDUCE_WIDTH_ENV, super::mma::parse_reduce_width)?,
            wg_row_ctas: env_parse(super::mma::ROW_CTAS_ENV, super::mma::parse_row_ctas)?,
            wg_pairs: env_parse(super::mma::WG_PAIRS_ENV, super::mma::parse_wg_pairs)?,
            pdl,
            prefetch,
            frozen_weights: env_switch(FROZEN_WEIGHTS_ENV, false)?,
            small_prepack: env_parse(SMALL_PREPACK_ENV, parse_auto_switch)?,
            fused_scale: env_switch(FUSED_SCALE_ENV, true)?,
            small_inline_scale: env_switch(SMALL_INLINE_SCALE_ENV, true)?,
            decoder_grid_scale: env_switch(DECODER_GRID_SCALE_ENV, true)?,
            small_mma_grid_scale: env_switch(SMALL_MMA_GRID_SCALE_ENV, true)?,
            weight_gather: env_parse(
                super::mma::WEIGHT_GATHER_ENV,
                super::mma::parse_weight_gather,
            )?,
            coresident_sms,
            small,
            small_mma_decoder: env_parse(
                super::mma::SMALL_DECODER_ENV,
                super::mma::SmallMmaDecoder::parse_forced,
            )?,
            trace: env_switch(TRACE_ENV, false)?,
            cache: Mutex::new(ModuleCache::default()),
            scratch: Mutex::new(Scratch::default()),
            graph_captured: std::sync::atomic::AtomicBool::new(false),
            retired: Mutex::new(Vec::new()),
            op_lock: Mutex::new(()),
        })
    }

    /// The CUDA context the device was opened with (or the caller's, by
    /// [`CudaDevice::from_stream`]).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The stream every op of this device is ordered on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// How the small-M kernels (and, unless off, the large-M low-rank chain) are launched.
    pub fn programmatic_launch(&self) -> Pdl {
        self.pdl
    }
    /// Sets how the small-M kernels are launched ([`Pdl::Off`] on devices without
    /// programmatic dependent launch); the default is [`Pdl::AfterWait`] where supported,
    /// or what `LOWBIT_CUDA_PDL` says.
    pub fn with_programmatic_launch(mut self, pdl: Pdl) -> Self {
        self.pdl = if self.caps.programmatic_launch {
            pdl
        } else {
            Pdl::Off
        };
        self
    }
    /// How the small-M kernels prefetch their weights under PDL.
    pub fn weight_prefetch(&self) -> WeightPrefetch {
        self.prefetch
    }
    /// Sets how the small-M kernels prefetch their weights under PDL (overrides
    /// `LOWBIT_CUDA_PREFETCH`); any choice gives the same bits.
    pub fn with_weight_prefetch(mut self, prefetch: WeightPrefetch) -> Self {
        self.prefetch = prefetch;
        self
    }
    /// Whether the caller has promised frozen weights ([`CudaDevice::with_frozen_weights`]).
    pub fn frozen_weights(&self) -> bool {
        self.frozen_weights
    }
    /// Promises (`true`) that nothing on this device writes a projection's weights while the
    /// small-M kernels (M ≤ 16) that read them may run: the weights are uploaded or updated,
    /// and the device synchronized, before such ops are queued, as in inference. Under
    /// programmatic dependent launch such a kernel then loads its first weights into registers
    /// before it waits for the previous kernel of the stream, instead of prefetching them into
    /// L2 (by default no prefetch then: [`WeightPrefetch::Auto`]). With i8x4 weights the
    /// small-M tensor-core kernels also let the next kernel start as soon as they start
    /// ([`Pdl::Early`] for them), and the decoder aims its split-K at half the blocks per SM,
    /// so that the next kernel's CTAs fit beside it: a chain of them streams its weights back
    /// to back. They then also take M below 4, where the dp4a small-M kernels are faster
    /// without the promise (`mma::SMALL_LOWRANK_MMA_MIN_M_FROZEN`,
    /// `mma::SMALL_DECODER_MMA_MIN_M_FROZEN`), and the decoder runs 64-column CTAs from
    /// `mma::SMALL_DECODER_WIDE_MIN_M` rows ([`CudaDevice::small_decoder_shape`]). Off by default (`LOWBIT_CUDA_FROZEN_WEIGHTS`): a
    /// training step that rewrites the weights earlier in the stream would otherwise race with
    /// those loads. The same bits either way.
    pub fn with_frozen_weights(mut self, frozen: bool) -> Self {
        self.frozen_weights = frozen;
        self
    }
    /// Do the small-M kernels load their first weights before the PDL wait: frozen weights,
    /// launched under PDL (plain launches have no wait to load before).
    pub(crate) fn loads_weights_early(&self) -> bool {
        self.frozen_weights && self.pdl != Pdl::Off
    }
    /// Whether f32 input to the small-M tensor-core decoder is quantized and packed once, by
    /// a pass of its own, instead of by the decoder's CTAs as they stage it. Each CTA stages
    /// its K slice of every row, so at D = 256 (8 column tiles of 32) the CTAs quantize every
    /// element 8 times; the pass adds a launch (with a computed scale it also works out the
    /// scale, [`CudaDevice::with_fused_scale`]: one launch where `absmean_scale` ran anyway).
    /// Measured on the H100 (BENCHMARKS.md), the pass wins with i8x4 weights (M = 16: 20.8 →
    /// 13.0 µs; with the fused scale 10.67–10.68 µs) and loses with ternary2 weights (M = 4:
    /// 7.8 → 12.1 µs; with the fused scale still 7.22–7.26 → 7.72–7.73 µs at M = 1), which is
    /// what the default (`None`) picks. Overrides `LOWBIT_CUDA_SMALL_PREPACK`; every choice
    /// gives the same bits.
    pub fn with_small_prepack(mut self, on: Option<bool>) -> Self {
        self.small_prepack = on;
        self
    }
    /// The forced choice of [`CudaDevice::with_small_prepack`], `None` where it is automatic.
    pub fn small_prepack(&self) -> Option<bool> {
        self.small_prepack
    }
    /// Whether f32 input to the small-M tensor-core decoder is packed beforehand, for ternary2
    /// weights where `t2`.
    pub(crate) fn prepacks_small(&self, t2: bool) -> bool {
        self.small_prepack.unwrap_or(!t2)
    }
    /// Whether f32 input with a computed scale is scaled and packed for the tensor-core
    /// kernels in one cooperative launch (overrides `LOWBIT_CUDA_FUSED_SCALE`): at M > 16, and
    /// for the small-M decoder where it packs beforehand ([`CudaDevice::with_small_prepack`];
    /// H100, i8x4 weights, M = 9 / 12 / 16: 11.36–11.37 / 11.66 / 12.20 µs with the two
    /// kernels, 10.17–10.20 / 10.38–10.41 / 10.67–10.68 fused). Off, or when the device cannot
    /// hold that grid at once, `absmean_scale` and `mma_prep_a` (small M:
    /// `quantize_pack_i8x4`) run instead.
    pub fn with_fused_scale(mut self, on: bool) -> Self {
        self.fused_scale = on;
        self
    }
    /// See [`CudaDevice::with_fused_scale`].
    pub fn fused_scale(&self) -> bool {
        self.fused_scale
    }
    /// Lets (`true`) the small-M low-rank kernels (tensor-core and dp4a) work out the absmean
    /// scale of their f32 input themselves where the scale is computed
    /// ([`RawScale::Compute`](super::RawScale), M ≤ 16, x of at most 16384 floats:
    /// `tuning::SMALL_INLINE_SCALE_MAX_BLOCKS`), instead of a reduction kernel before them.
    /// Every CTA sums all of x in the order the reduction kernel does, so the scale (which the
    /// first CTA writes to the caller's buffer) and the outputs have the same bits either way;
    /// the op is then one launch instead of two. On by default (`LOWBIT_CUDA_SMALL_INLINE_SCALE`
    /// = `0` turns it off): H100, BDH shape, graph replay, i8x4 weights, M = 1 / 16, 8.33–8.50 /
    /// 10.06 µs with the reduction kernel first, 5.53–5.55 / 7.83–7.90 µs inline (ternary2
    /// 6.30–6.36 / 7.14–7.24 against 4.09–4.11 / 5.73–5.86; with frozen weights i8x4 7.62–7.68
    /// / 8.37–8.41 against 5.20–5.21 / 7.29–7.31). BENCHMARKS.md, 2026-12-06.
    pub fn with_small_inline_scale(mut self, on: bool) -> Self {
        self.small_inline_scale = on;
        self
    }
    /// See [`CudaDevice::with_small_inline_scale`].
    pub fn small_inline_scale(&self) -> bool {
        self.small_inline_scale
    }
    /// Lets (`true`) the dp4a small-M decoder tail (the plan's kernel below
    /// `SMALL_DECODER_MMA_MIN_M_F32` rows of f32 input) work out the absmean scale of its f32
    /// input where the scale is computed ([`RawScale::Compute`](super::RawScale)), on compute
    /// capability 7.0 and up, instead of a reduction kernel before it. Its CTAs, all resident
    /// at once, split the reduction kernel's blocks among them, meet at a grid barrier and
    /// each sum the partials as that kernel's last block does: the same scale bits (the first
    /// CTA writes it to the caller's buffer) and outputs either way, one launch instead of
    /// two. The host counts the CTAs against the SMs this context may use (fewer under MPS
    /// with an active thread percentage) and runs the reduction kernel first where they do
    /// not fit; the launch is not cooperative, which cost 0.5–0.9 µs under PDL on the H100.
    /// A kernel of another stream that holds SMs until this op's results arrive could keep
    /// some CTAs from starting: turn the option off there. On by default
    /// (`LOWBIT_CUDA_DECODER_GRID_SCALE=0` turns it off): H100, BDH shape, graph replay, i8x4
    /// weights, the dp4a kernel at M = 1 / 2 / 4 / 8, 8.04–8.08 / 8.61–8.66 / 9.51–9.56 /
    /// 10.93–11.02 µs with the reduction kernel first, 7.75–7.82 / 8.24–8.27 / 8.99–9.03 /
    /// 10.38–10.45 µs on the grid (BENCHMARKS.md, 2026-12-06).
    pub fn with_decoder_grid_scale(mut self, on: bool) -> Self {
        self.decoder_grid_scale = on;
        self
    }
    /// See [`CudaDevice::with_decoder_grid_scale`].
    pub fn decoder_grid_scale(&self) -> bool {
        self.decoder_grid_scale
    }
    /// Lets (`true`) the small-M tensor-core decoder with ternary2 weights work out the
    /// absmean scale of f32 input that its CTAs stage themselves (the default for ternary2
    /// weights: [`CudaDevice::with_small_prepack`]) where the scale is computed, as
    /// [`CudaDevice::with_decoder_grid_scale`] does for the dp4a kernel: the CTAs, all
    /// resident at once (else the reduction kernel runs first), split `absmean_scale`'s blocks
    /// among them and meet at a grid barrier; the same scale bits and outputs, one launch
    /// instead of two. (With i8x4 weights, whose f32 input is packed beforehand by default,
    /// the kernel's default CTA spilled 40 bytes with it.) On by default
    /// (`LOWBIT_CUDA_SMALL_MMA_GRID_SCALE=0` turns it off): H100, BDH shape, graph replay,
    /// M = 1 / 4 / 16 took 6.43–6.48 / 6.65–6.72 / 11.47–11.51 µs with it and 7.16–7.17 /
    /// 7.48–7.51 / 11.73–11.75 µs with `absmean_scale` first (BENCHMARKS.md, 2026-12-06). As
    /// with the dp4a kernel's grid scale, turn it off where a kernel of another stream may
    /// hold SMs until this op's results arrive.
    pub fn with_small_mma_grid_scale(mut self, on: bool) -> Self {
        self.small_mma_grid_scale = on;
        self
    }
    /// See [`CudaDevice::with_small_mma_grid_scale`].
    pub fn small_mma_grid_scale(&self) -> bool {
        self.small_mma_grid_scale
    }
    /// How the large-M tensor-core projection (`lowrank_wgmma`, sm_90) fills its resident
    /// i8x4 weight tile ([`WeightGather`](super::mma::WeightGather), in halves where that
    /// applies by default; overrides `LOWBIT_CUDA_WEIGHT_GATHER`). The same bits each way.
    pub fn with_weight_gather(mut self, gather: super::mma::WeightGather) -> Self {
        self.weight_gather = gather;
        self
    }
    /// See [`CudaDevice::with_weight_gather`].
    pub fn weight_gather(&self) -> super::mma::WeightGather {
        self.weight_gather
    }
    /// The small-M grid shape (overrides `LOWBIT_CUDA_SMALL`; any shape is bit-exact).
    pub fn with_small_shape(mut self, shape: super::tuning::SmallShape) -> Self {
        self.small = shape;
        self
    }
    /// The small-M grid shape in use.
    pub fn small_shape(&self) -> super::tuning::SmallShape {
        self.small
    }
    /// Forces the small-M tensor-core decoder's CTA with i8x4 weights at every M (overrides
    /// `LOWBIT_CUDA_SMALL_DECODER`; by default it is chosen by M,
    /// [`CudaDevice::small_decoder_shape`]; any shape that passes [`SmallMmaDecoder::check`]
    /// is bit-exact; the decoder refuses others with [`LowbitError::InvalidArgument`]).
    ///
    /// [`SmallMmaDecoder::check`]: super::mma::SmallMmaDecoder::check
    pub fn with_small_mma_decoder(mut self, shape: super::mma::SmallMmaDecoder) -> Self {
        self.small_mma_decoder = Some(shape);
        self
    }
    /// What the device was probed to have: compute capability, SMs, features.
    pub fn caps(&self) -> &CudaDeviceCaps {
        &self.caps
    }
    /// The kernel family the projections run on (`LOWBIT_CUDA_KERNELS`, else mma on sm_80+).
    pub fn family(&self) -> KernelFamily {
        self.family
    }
    /// Device name reported by the driver.
    pub fn name(&self) -> String {
        self.caps.name.clone()
    }

    /// How many NVRTC compilations this device has done (the cache makes repeats free).
    pub fn compilations(&self) -> usize {
        lock(&self.cache).compilations
    }

    /// `(module, NVRTC log)` of every module compiled so far (ptxas' resource report).
    pub fn compile_logs(&self) -> Vec<(String, String)> {
        lock(&self.cache).logs.clone()
    }

    /// How many decoder-tail launches on this device summed their K splits inside
    /// thread-block clusters of `z` CTAs (distributed shared memory, no partials); the rest
    /// wrote partials for the reduction pass. Where a cluster size was asked for but the
    /// device cannot hold every tile's cluster at once, the launch is not counted here.
    pub fn cluster_launches(&self, z: u32) -> u64 {
        lock(&self.cache)
            .cluster_launches
            .get(&z)
            .copied()
            .unwrap_or(0)
    }

    /// Waits for everything queued on this device's stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(drv("cuStreamSynchronize"))
    }

    /// Copies `data` to a new device buffer (stream-ordered).
    pub fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        if data.is_empty() {
            return Err(LowbitError::InvalidArgument {
                op: "CudaDevice::upload",
                what: "data",
                reason: "empty buffers are not allowed".into(),
            });
        }
        self.stream.clone_htod(data).map_err(drv("upload"))
    }

    /// A new zeroed device buffer of `len` elements (stream-ordered).
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        if len == 0 {
            return Err(LowbitError::InvalidArgument {
                op: "CudaDevice::alloc_zeros",
                what: "len",
                reason: "empty buffers are not allowed".into(),
            });
        }
        self.stream.alloc_zeros(len).map_err(drv("alloc"))
    }

    /// Copies a device buffer back (waits for the stream).
    pub fn download<T: DeviceRepr>(&self, buf: &CudaSlice<T>) -> Result<Vec<T>> {
        self.check_slice("download", "buffer", buf)?;
        self.stream.clone_dtoh(buf).map_err(drv("download"))
    }

    /// Errors unless `buf` lives in this device's context.
    pub(crate) fn check_slice<T>(
        &self,
        op: &'static str,
        what: &'static str,
        buf: &CudaSlice<T>,
    ) -> Result<()> {
        let other = buf.context();
        if other.cu_ctx() == self.ctx.cu_ctx() {
            Ok(())
        } else {
            Err(LowbitError::WrongDevice {
                op,
                what,
                expected: format!("CUDA context of device {}", self.ctx.ordinal()),
                actual: format!("another CUDA context (device {})", other.ordinal()),
            })
        }
    }

    /// The function `id` of the module compiled with `defines` (compiled and loaded once).
    pub(crate) fn function(
        &self,
        id: KernelId,
        mut defines: Vec<(String, String)>,
    ) -> Result<CudaFunction> {
        if self.trace {
            defines.push(("LB_TRACE".into(), TRACE_SLOTS.to_string()));
        }
        let key = ModuleKey {
            stem: id.stem(),
            cc: self.caps.compute_capability,
            defines,
        };
        let mut cache = lock(&self.cache);
        if let Some(f) = cache.functions.get(&(key.clone(), id)) {
            return Ok(f.clone());
        }
        let module = match cache.modules.get(&key) {
            Some(m) => m.clone(),
            None => {
                let compiled = compile::compile(key.stem, key.cc, &key.defines)?;
                let image = if compiled.is_cubin {
                    Ptx::from_binary(compiled.image)
                } else {
                    let end = compiled
                        .image
                        .iter()
                        .position(|&b| b == 0)
                        .unwrap_or(compiled.image.len());
                    Ptx::from_src(String::from_utf8_lossy(&compiled.image[..end]).into_owned())
                };
                let module = self.ctx.load_module(image).map_err(drv(format!(
                    "cuModuleLoadData {}",
                    compile::describe(key.stem, &key.defines)
                )))?;
                cache.compilations += 1;
                cache
                    .logs
                    .push((compile::describe(key.stem, &key.defines), compiled.log));
                cache.modules.insert(key.clone(), module.clone());
                module
            }
        };
        let f = module
            .load_function(id.entry())
            .map_err(drv(format!("cuModuleGetFunction {}", id.entry())))?;
        cache.functions.insert((key, id), f.clone());
        Ok(f)
    }

    /// Timeline stamps of the latest launch of every kernel compiled so far, when this device
    /// was opened with `LOWBIT_CUDA_TRACE=1` (else none): per loaded module, its description
    /// and `TRACE_SLOTS` stamps per block (see [`TRACE_SLOTS`]), then zeroed for the next
    /// launch. Waits for the stream (as [`CudaDevice::download`]). Diagnostics only: the
    /// stamps cost a few instructions.
    pub fn take_traces(&self) -> Result<Vec<(String, Vec<u64>)>> {
        if !self.trace {
            return Ok(Vec::new());
        }
        let cache = lock(&self.cache);
        let mut out = Vec::new();
        for (key, module) in &cache.modules {
            let Ok(mut sym) = module.get_global("lb_trace", &self.stream) else {
                continue;
            };
            // SAFETY: lb_trace is an array of u64 of sym.len() bytes.
            let mut view = unsafe { sym.transmute_mut::<u64>(sym.len() / 8) }.ok_or_else(|| {
                LowbitError::Driver {
                    backend: BackendKind::Cuda,
                    context: "lb_trace".into(),
                    message: "symbol size not a multiple of 8".into(),
                }
            })?;
            let words = self
                .stream
                .clone_dtoh(&view)
                .map_err(drv("lb_trace read".to_string()))?;
            self.stream
                .memset_zeros(&mut view)
                .map_err(drv("lb_trace zero".to_string()))?;
            if words.iter().any(|&w| w != 0) {
                out.push((compile::describe(key.stem, &key.defines), words));
            }
        }
        Ok(out)
    }

    /// Serialises the queuing of whole ops (see `op_lock`); taken by every public entry point.
    pub(crate) fn op_guard(&self) -> MutexGuard<'_, ()> {
        lock(&self.op_lock)
    }

    pub(crate) fn scratch(&self) -> MutexGuard<'_, Scratch> {
        lock(&self.scratch)
    }

    /// The compiled modules and what is known about their functions.
    pub(crate) fn module_cache(&self) -> MutexGuard<'_, ModuleCache> {
        lock(&self.cache)
    }

    /// Device pointer of a scratch buffer of at least `len` zeroed-at-creation elements.
    /// While the stream captures a CUDA graph, a buffer too small is an error (nothing is
    /// allocated inside a capture); once a graph has been captured, a buffer that grows is
    /// kept alive until the device is dropped, because the graph may still use it.
    pub(crate) fn scratch_buf<T: DeviceRepr + ValidAsZeroBits + Send + 'static>(
        &self,
        slot: &mut Option<CudaSlice<T>>,
        len: usize,
    ) -> Result<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let len = len.max(1);
        let capturing = self
            .stream
            .capture_status()
            .map_err(drv("cuStreamIsCapturing"))?
            != cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
        if capturing {
            self.graph_captured.store(true, Relaxed);
        }
        let held = slot.as_ref().map_or(0, |s| s.len());
        if held < len {
            if capturing {
                return Err(LowbitError::InvalidArgument {
                    op: "cuda graph capture",
                    what: "scratch",
                    reason: format!(
                        "this op needs {len} elements of a scratch buffer that holds {held}: \
                         run it once on this device before capturing it"
                    ),
                });
            }
            // Grow geometrically so that alternating shapes do not reallocate every call.
            let want = if held == 0 { len } else { len.max(held * 2) };
            let fresh = self
                .stream
                .alloc_zeros(want)
                .map_err(drv("scratch alloc"))?;
            if let Some(old) = slot.replace(fresh)
                && self.graph_captured.load(Relaxed)
            {
                lock(&self.retired).push(Box::new(old));
            }
        }
        match slot.as_ref() {
            Some(s) => Ok(raw_ptr(s, &self.stream)),
            None => Err(LowbitError::Driver {
                backend: BackendKind::Cuda,
                context: "scratch alloc".into(),
                message: "scratch buffer missing after allocation".into(),
            }),
        }
    }
}

/// The raw device address of `buf` (ordering with `stream` handled by cudarc's events).
pub(crate) fn raw_ptr<T>(buf: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (p, _guard) = buf.device_ptr(stream);
    p
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(cc: (u32, u32)) -> CudaDeviceCaps {
        CudaDeviceCaps {
            ordinal: 0,
            name: "test".into(),
            compute_capability: cc,
            multiprocessors: 1,
            l2_bytes: 0,
            memory_bytes: 1,
            dp4a: cc >= crate::caps::DP4A_MIN_SM,
            int8_mma: cc >= crate::caps::INT8_MMA_MIN_SM,
            programmatic_launch: cc >= crate::caps::PROGRAMMATIC_LAUNCH_MIN_SM,
            wgmma: cc == crate::caps::WGMMA_SM,
        }
    }

    #[test]
    fn auto_switch_parses() {
        for (text, v) in [
            ("", None),
            (" auto ", None),
            ("0", Some(false)),
            ("1", Some(true)),
        ] {
            assert_eq!(parse_auto_switch(text), Ok(v), "{text:?}");
        }
        for bad in ["2", "on", "Auto"] {
            assert!(
                parse_auto_switch(bad)
                    .unwrap_err()
                    .contains("expected auto, 0 or 1")
            );
        }
    }

    #[test]
    fn pdl_values_parse() {
        assert_eq!(Pdl::parse(""), Ok(Pdl::AfterWait));
        assert_eq!(Pdl::parse(" 1 "), Ok(Pdl::AfterWait));
        assert_eq!(Pdl::parse("early"), Ok(Pdl::Early));
        assert_eq!(Pdl::parse("0"), Ok(Pdl::Off));
        for bad in ["2", "on", "Early", "true"] {
            assert!(Pdl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn weight_prefetch_values_parse() {
        assert_eq!(WeightPrefetch::parse(""), Ok(WeightPrefetch::Auto));
        assert_eq!(WeightPrefetch::parse(" auto "), Ok(WeightPrefetch::Auto));
        assert_eq!(WeightPrefetch::parse("lines"), Ok(WeightPrefetch::Lines));
        assert_eq!(WeightPrefetch::parse("bulk"), Ok(WeightPrefetch::Bulk));
        for bad in ["0", "Bulk", "line", "tma", "last"] {
            assert!(WeightPrefetch::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            WeightPrefetch::parse("lines-last"),
            Ok(WeightPrefetch::LinesLast)
        );
        assert_eq!(
            WeightPrefetch::parse("bulk-last"),
            Ok(WeightPrefetch::BulkLast)
        );
        assert_eq!(WeightPrefetch::parse("none"), Ok(WeightPrefetch::None));
        let above = BULK_PREFETCH_MAX_M + 1;
        for decoder in [false, true] {
            for t2 in [false, true] {
                for early in [false, true] {
                    // What is forced holds whatever the weights and the loads.
                    let mode = |pf: WeightPrefetch, m| pf.mode(m, decoder, t2, early);
                    assert_eq!(mode(WeightPrefetch::Bulk, 16), PF_BULK);
                    assert_eq!(mode(WeightPrefetch::Lines, 1), 0);
                    assert_eq!(mode(WeightPrefetch::LinesLast, 1), PF_LAST);
                    assert_eq!(mode(WeightPrefetch::None, 4), PF_NONE);
                    assert_eq!(mode(WeightPrefetch::BulkLast, 16), PF_BULK | PF_LAST);
                    // Auto: nothing where the weights load early (but the ternary2
                    // decoder above BULK_PREFETCH_MAX_M); else in bulk up to it.
                    let auto = WeightPrefetch::Auto;
                    let small = if early { PF_NONE } else { PF_BULK };
                    assert_eq!(mode(auto, BULK_PREFETCH_MAX_M), small);
                    let big = match (early, decoder, t2) {
                        (true, true, true) | (false, true, _) => 0,
                        (true, _, _) => PF_NONE,
                        (false, false, _) => PF_LAST,
                    };
                    assert_eq!(mode(auto, above), big, "{decoder} {t2} {early}");
                }
            }
        }
    }

    #[test]
    fn kernel_family_selection() {
        let h100 = caps((9, 0));
        assert_eq!(KernelFamily::choose("", &h100).unwrap(), KernelFamily::Mma);
        assert_eq!(
            KernelFamily::choose("mma", &h100).unwrap(),
            KernelFamily::Mma
        );
        assert_eq!(
            KernelFamily::choose("", &caps((7, 5))).unwrap(),
            KernelFamily::Dp4a
        );
        assert_eq!(
            KernelFamily::choose(" DP4A ", &h100).unwrap(),
            KernelFamily::Dp4a
        );
        assert!(matches!(
            KernelFamily::choose("mma", &caps((7, 5))),
            Err(LowbitError::Unsupported { .. })
        ));
        assert!(matches!(
            KernelFamily::choose("tensor", &h100),
            Err(LowbitError::InvalidArgument { .. })
        ));
        assert!(matches!(
            KernelFamily::choose("", &caps((6, 0))),
            Err(LowbitError::Unsupported { .. })
        ));
    }

    #[test]
    fn probe_and_open_never_panic() {
        // Without a driver (CI, this machine) both report; with one, both succeed.
        match super::super::probe() {
            crate::caps::BackendProbe::Available(c) => {
                assert!(!c.devices.is_empty());
                // Without MPS limits, this context may use every SM at once.
                if let Ok(dev) = CudaDevice::new(0)
                    && std::env::var_os("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE").is_none()
                {
                    assert_eq!(dev.coresident_sms, dev.caps.multiprocessors);
                }
            }
            other => {
                assert!(!other.status().is_empty());
                assert!(matches!(
                    CudaDevice::new(0),
                    Err(LowbitError::BackendUnavailable { .. })
                ));
            }
        }
    }
}
