//! Kernel launches on raw device addresses: validation (before anything is allocated or
//! launched), the choice of path (tiled, small-M, float), the split-K plan, and the `unsafe`
//! raw-pointer entry points for callers that own their allocations.
//!
//! Every launch is queued on the device's stream; nothing here synchronises.

use cudarc::driver::{CudaFunction, DeviceRepr, LaunchConfig, PushKernelArg};

use super::device::{CudaDevice, Pdl, drv};
use super::tuning as t;
use crate::config::LowBitActivationFormat;
use crate::error::{LowbitError, Result};
use crate::kernels::KernelId;
use crate::ops::quantize::{QuantizeShape, check_signed_packable};
use crate::ops::rho::RhoShape;
use crate::ops::{DecoderTailShape, Epilogue, LowrankShape, OutputDType};
use crate::quant::{EPS, check_scale, check_weight_qmax};

/// Activation input on the device, as a raw address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawAct {
    /// Signed i8x4 words `[rows, ceil(K/4)]` (int8/int4).
    Packed(u64),
    /// i32 codes `[rows, K]` (any quantized format, uint8pos included).
    Codes(u64),
    /// f32 values `[rows, K]`, quantized inside the kernel (or the float path for `Fp16`).
    F32(u64),
}

impl RawAct {
    fn kind(self) -> InputKind {
        match self {
            Self::Packed(_) => InputKind::Packed,
            Self::Codes(_) => InputKind::Codes,
            Self::F32(_) => InputKind::F32,
        }
    }
    fn ptr(self) -> u64 {
        match self {
            Self::Packed(p) | Self::Codes(p) | Self::F32(p) => p,
        }
    }
}

/// Projection weights on the device, as a raw address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawWeights {
    /// i8x4 words (`shape.w_words_len()`), any weight format.
    Words(u64),
    /// Ternary weights at 2 bits in the fragment layout of
    /// [`crate::pack::pack_ternary2_fragments`] (`shape.w_ternary2_len()` words); runs on the
    /// int8 tensor cores (sm_80+) at any M: the small-M kernel, or the warpgroup-mma kernels
    /// at M > 16 on sm_90.
    Ternary2(u64),
}

impl RawWeights {
    pub(crate) fn ptr(self) -> u64 {
        match self {
            Self::Words(p) | Self::Ternary2(p) => p,
        }
    }
}

/// Where the activation scale comes from, as raw addresses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RawScale {
    /// By value.
    Param(f32),
    /// Read from this one-float device buffer.
    Buffer(u64),
    /// Computed on the device from the f32 input (absmean) into this one-float buffer.
    Compute(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InputKind {
    Packed,
    Codes,
    F32,
}

/// Which kernel body runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// Quantized: A mode (0 packed, 1 codes, 2 f32) and unsigned lanes.
    Int { mode: u32, uns: bool },
    /// `Fp16`: the float path.
    Float,
}

/// Mirror of `struct LbProblem` in `cuda/common.cuh` (same field order and types).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LbProblem {
    pub a: u64,
    pub b: u64,
    pub out: u64,
    pub partial: u64,
    pub scale_ptr: u64,
    pub acc: u64,
    pub lda: i64,
    pub a_kvalid: i64,
    pub ldb: i64,
    pub ldc: i64,
    pub scale_param: f32,
    pub w_scale: f32,
    pub fmt: i32,
    pub relu: i32,
    pub m_total: i32,
    pub time: i32,
    pub heads: i32,
    pub a_heads: i32,
    pub o_heads: i32,
    pub ncols: i32,
    pub bcols: i32,
    pub kw_head: i32,
    pub b_head_rows: i32,
    pub splits_per_head: i32,
    pub a_vec: i32,
    pub b_vec: i32,
    pub c_vec: i32,
    pub is_decoder: i32,
    pub out_dtype: i32,
    /// [`Pdl`] as launched (set by `CudaDevice::launch_lb`). Given to `launch_lb` as
    /// [`Pdl::Early`], it asks for the early trigger where the weights are frozen and the
    /// device's mode is [`Pdl::AfterWait`].
    pub pdl: i32,
    /// How the PDL weight prefetch runs: `LB_PF_BULK` (a bulk prefetch per row), `LB_PF_LAST`
    /// (evict_last) and `LB_PF_NONE` (none) bits ([`super::device::WeightPrefetch`]), and
    /// `LB_PF_EARLY` (frozen weights: the first loaded before the wait); set by
    /// `CudaDevice::launch_lb`.
    pub pf_mode: i32,
}

// SAFETY: plain-old-data with the C layout of `LbProblem`.
unsafe impl DeviceRepr for LbProblem {}

pub(crate) fn fmt_code(op: &'static str, format: LowBitActivationFormat) -> Result<i32> {
    match format {
        LowBitActivationFormat::Int8 => Ok(0),
        LowBitActivationFormat::Int4Exp => Ok(1),
        LowBitActivationFormat::Uint8PosExp => Ok(2),
        LowBitActivationFormat::Fp16 => Err(LowbitError::unsupported_format(
            op,
            format,
            "the float path has no codes or scale",
        )),
    }
}

/// The kernels' `out_dtype` code of an epilogue (0 f32, 1 f16, 2 bf16).
pub(crate) fn dtype_code(dtype: OutputDType) -> i32 {
    match dtype {
        OutputDType::F32 => 0,
        OutputDType::F16 => 1,
        OutputDType::Bf16 => 2,
    }
}

fn check_scale_source(op: &'static str, kind: InputKind, scale: RawScale) -> Result<()> {
    match scale {
        RawScale::Param(s) => check_scale(op, "activation scale", s),
        RawScale::Buffer(0) | RawScale::Compute(0) => Err(LowbitError::InvalidArgument {
            op,
            what: "scale buffer",
            reason: "null device address".into(),
        }),
        RawScale::Compute(_) if kind != InputKind::F32 => Err(LowbitError::InvalidArgument {
            op,
            what: "scale",
            reason: "a computed scale needs f32 input (codes and packed words carry none)".into(),
        }),
        _ => Ok(()),
    }
}

/// Checks a projection request and picks its path; `acc` checks the i32 accumulator.
#[allow(clippy::too_many_arguments)]
pub(crate) fn validate_projection(
    op: &'static str,
    kind: InputKind,
    format: LowBitActivationFormat,
    scale: RawScale,
    w_scale: f32,
    w_qmax: u32,
    epilogue: Epilogue,
    acc: impl Fn(u32, u32) -> Result<()>,
) -> Result<Path> {
    let _ = epilogue;
    check_scale(op, "weight scale", w_scale)?;
    check_weight_qmax(op, w_qmax)?;
    if format == LowBitActivationFormat::Fp16 {
        if kind != InputKind::F32 {
            return Err(LowbitError::unsupported_format(
                op,
                format,
                "the float path takes f32 input",
            ));
        }
        return Ok(Path::Float);
    }
    if kind == InputKind::Packed {
        check_signed_packable(op, format)?;
    }
    check_scale_source(op, kind, scale)?;
    let qmax = format.qmax().unwrap_or(127);
    acc(qmax, w_qmax)?;
    Ok(Path::Int {
        mode: match kind {
            InputKind::Packed => 0,
            InputKind::Codes => 1,
            InputKind::F32 => 2,
        },
        uns: format == LowBitActivationFormat::Uint8PosExp,
    })
}

pub(crate) fn non_null(op: &'static str, what: &'static str, p: u64) -> Result<()> {
    if p == 0 {
        Err(LowbitError::InvalidArgument {
            op,
            what,
            reason: "null device address".into(),
        })
    } else {
        Ok(())
    }
}

// The small-M kernels sum x as the reduction's blocks do (`LB_SM_SCALE_BLOCKS`): same size.
const _: () = assert!(t::THREADS == t::RED_THREADS);

/// The dp4a small-M decoder's grid scale on `blocks` reduction blocks (`lb_grid_scale`).
fn grid_scale_defines(blocks: u32) -> [(String, String); 2] {
    [
        d("LB_SM_GRID_SCALE", blocks),
        d("LB_RED_MAX_BLOCKS", t::RED_MAX_BLOCKS),
    ]
}

fn d(k: &str, v: impl ToString) -> (String, String) {
    (k.to_string(), v.to_string())
}

fn int_defines(mode: u32, uns: bool) -> Vec<(String, String)> {
    vec![
        d("LB_MODE", mode),
        d("LB_UNS", u32::from(uns)),
        d("LB_THREADS", t::THREADS),
        d("LB_EPS", format!("{EPS:e}f")),
    ]
}

/// `fast`: see [`tiled_fast`].
fn tiled_defines(mode: u32, uns: bool, tile: t::DpTile, fast: bool) -> Vec<(String, String)> {
    let mut v = int_defines(mode, uns);
    v.extend([
        d("LB_FAST", u32::from(fast)),
        d("LB_MIN_BLOCKS", tile.min_blocks),
        d("LB_BM", tile.bm),
        d("LB_BN", tile.bn),
        d("LB_BK", t::TILE_BK),
        d("LB_TM", tile.tm),
    ]);
    v
}

/// Whether the tiled kernel may load without checks (`LB_FAST` in `lb_tiled`): 16-byte loads
/// of A and B are legal, every A row holds all of K, and K per head is whole stages (so every
/// decoder split is too). `mode` 0 is packed words (`a_kvalid` counts words), else elements.
fn tiled_fast(p: &LbProblem, mode: u32) -> bool {
    let words_valid = if mode == 0 {
        p.a_kvalid
    } else {
        p.a_kvalid / 4
    };
    p.a_vec != 0
        && p.b_vec != 0
        && p.bcols >= 4
        && (p.kw_head as u32).is_multiple_of(t::TILE_BK)
        && words_valid >= p.kw_head as i64
}

/// The dp4a small-M kernel for `rows` rows, `cw` column warps; up to
/// [`t::SMALL_M1_ROWS`] rows are compiled for `m1_blocks` resident blocks per SM (register
/// cap 256 / m1_blocks per thread; from 4 blocks on, 4 weight rows in flight per thread, 2 for
/// two rows; the low-rank projection's `SmallShape::m1_blocks`, 2 for the decoder, which
/// measured slower with 4), more rows for 2.
fn small_defines(
    mode: u32,
    uns: bool,
    rows: usize,
    cw: u32,
    m1_blocks: u32,
) -> Vec<(String, String)> {
    let mut v = int_defines(mode, uns);
    let blocks = if rows <= t::SMALL_M1_ROWS {
        m1_blocks
    } else {
        2
    };
    if blocks >= 4 {
        // (ptxas spilled two rows at 4 weight rows in flight, not at 2; one row at 4, none.)
        v.push(d("LB_SM_BATCH", if rows == 2 { 2 } else { 4 }));
    }
    v.extend([
        d("LB_MIN_BLOCKS", blocks),
        d("LB_SMALL_M", rows.next_power_of_two()),
        d(
            "LB_SM_KC",
            if rows > 8 {
                t::SMALL_KC_16
            } else {
                t::SMALL_KC
            },
        ),
        d("LB_SM_CW", cw),
    ]);
    v
}

/// Column warps and blocks per SM of the dp4a small-M low-rank kernel for `rows` rows of
/// input `mode`: the shape's for up to [`t::SMALL_M1_ROWS`] rows of packed words; every other
/// kernel (more rows, or codes and f32, whose staging needs the registers: f32 at M = 1 on
/// the H200 took 9.73 µs at 4 blocks per SM, 8.89 at 2) runs 2 blocks per SM on
/// proportionally more column warps, the same grid per wave.
fn lowrank_small_cw(shape: t::SmallShape, mode: u32, rows: usize) -> (u32, u32) {
    if mode == 0 && rows <= t::SMALL_M1_ROWS {
        (shape.lowrank_cw, shape.m1_blocks)
    } else {
        ((shape.lowrank_cw * shape.m1_blocks / 2).clamp(1, 8), 2)
    }
}

fn plain_defines(flag: &str) -> Vec<(String, String)> {
    vec![d(flag, 1), d("LB_EPS", format!("{EPS:e}f"))]
}

fn ew_grid(n: usize, per_block: usize) -> u32 {
    n.div_ceil(per_block).clamp(1, t::EW_MAX_BLOCKS as usize) as u32
}

fn cfg(grid: (u32, u32, u32), block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn ceil_u32(a: usize, b: u32) -> u32 {
    a.div_ceil(b as usize) as u32
}

fn aligned16(p: u64) -> bool {
    p.is_multiple_of(16)
}

/// The splits per head that hold work when `kw` words of K are cut into `sp` splits as
/// `lb_split` (`cuda/common.cuh`) cuts them: chunks of ceil(kw / sp) words rounded up to `kb`.
/// Asking for this many instead of `sp` gives the same chunks without the empty blocks.
pub(crate) fn nonempty_splits(kw: usize, sp: usize, kb: usize) -> usize {
    let chunk = kw.div_ceil(sp.max(1)).next_multiple_of(kb.max(1)).max(1);
    kw.div_ceil(chunk).max(1)
}

/// The wave-efficient number of splits per head: `units` blocks per split step, `slots`
/// resident blocks on the whole device, at most `max_sp`.
fn pick_splits(units: usize, slots: usize, max_sp: usize) -> usize {
    let slots = slots.max(1);
    let mut best = (0.0f64, 1usize);
    for sp in 1..=max_sp.max(1) {
        let blocks = units * sp;
        let waves = blocks.div_ceil(slots);
        let eff = blocks as f64 / (waves * slots) as f64;
        if eff > best.0 + 0.02 {
            best = (eff, sp);
        }
        if blocks >= 4 * slots {
            break;
        }
    }
    best.1
}

impl CudaDevice {
    /// `small`: a small-M kernel (`lb_small_m`, which may overlap the previous kernel).
    fn launch_problem(
        &self,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        p: &LbProblem,
        small: bool,
    ) -> Result<()> {
        // SAFETY: `p` mirrors the kernel's only parameter; every address in it was checked
        // by the caller to cover the shape's extent.
        unsafe { self.launch_lb(f, cfg(grid, t::THREADS), p, "projection", small, false) }
    }

    /// Queues `f` with `p` as its only parameter. For a small-M kernel (`small`), unless the
    /// device's [`Pdl`] is off, the launch allows programmatic stream serialization: the
    /// kernel may start before the previous kernel of the stream ends, so it runs
    /// `lb_pdl_prologue` (`cuda/common.cuh`: L2 prefetches of its weights, then
    /// `griddepcontrol.wait`) before it touches any other memory; `p.pdl` is set to say so.
    /// `t2`: the kernel reads ternary2 weights (the prefetch depends on it,
    /// [`WeightPrefetch::mode`](super::WeightPrefetch)).
    ///
    /// # Safety
    /// `p` must be the kernel's parameter, every address in it covering what the kernel
    /// reads and writes at this grid.
    pub(crate) unsafe fn launch_lb(
        &self,
        f: &CudaFunction,
        c: LaunchConfig,
        p: &LbProblem,
        what: &str,
        small: bool,
        t2: bool,
    ) -> Result<()> {
        let early = self.loads_weights_early();
        let (pdl, pf_mode) = small_launch(
            small,
            self.pdl,
            early,
            p.pdl == Pdl::Early as i32,
            self.prefetch
                .mode(p.m_total.max(0) as usize, p.is_decoder != 0, t2, early),
        );
        let p = &LbProblem {
            pdl: pdl as i32,
            pf_mode,
            ..*p
        };
        let context = format!("cuLaunchKernel ({what})");
        if pdl == Pdl::Off {
            let mut b = self.stream.launch_builder(f);
            b.arg(p);
            // SAFETY: per the caller's contract.
            unsafe { b.launch(c) }.map_err(drv(context))?;
            return Ok(());
        }
        let mut params = [p as *const LbProblem as *mut std::ffi::c_void];
        // SAFETY: `params` holds the address of the kernel's one parameter; the rest per the
        // caller's contract.
        unsafe { self.launch_programmatic(f, c, &mut params, &context) }
    }

    /// Queues `f` with programmatic stream serialization allowed (`cuLaunchKernelEx`): it may
    /// start before the previous kernel of the stream ends, so it must `griddepcontrol.wait`
    /// before it reads or writes anything that kernel (or an earlier one) may touch.
    ///
    /// # Safety
    /// `params` holds the address of each of the kernel's parameters, in order, alive for the
    /// call (the driver copies them); every address in them covers what the kernel reads and
    /// writes at this grid; the kernel waits as above.
    pub(crate) unsafe fn launch_programmatic(
        &self,
        f: &CudaFunction,
        c: LaunchConfig,
        params: &mut [*mut std::ffi::c_void],
        context: &str,
    ) -> Result<()> {
        use cudarc::driver::sys;
        let attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value: sys::CUlaunchAttributeValue {
                programmaticStreamSerializationAllowed: 1,
            },
        };
        // SAFETY: per the caller's contract.
        unsafe { self.launch_ex(f, c, params, attr) }.map_err(drv(context.to_string()))
    }

    /// Queues `f` with an L2 access policy window that marks `bytes` at `base` (device
    /// memory the kernel reads once) as streaming: its lines are evicted first. The driver's
    /// error is returned as it is, for the caller to fall back on a plain launch.
    ///
    /// # Safety
    /// As [`CudaDevice::launch_programmatic`], without the wait; `bytes` is at most the
    /// device's largest window.
    pub(crate) unsafe fn launch_streaming(
        &self,
        f: &CudaFunction,
        c: LaunchConfig,
        params: &mut [*mut std::ffi::c_void],
        base: u64,
        bytes: usize,
    ) -> std::result::Result<(), cudarc::driver::DriverError> {
        use cudarc::driver::sys;
        let attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW,
            pad: [0; 4],
            value: sys::CUlaunchAttributeValue {
                accessPolicyWindow: sys::CUaccessPolicyWindow {
                    base_ptr: base as *mut std::ffi::c_void,
                    num_bytes: bytes,
                    hitRatio: 1.0,
                    hitProp: sys::CUaccessProperty::CU_ACCESS_PROPERTY_STREAMING,
                    missProp: sys::CUaccessProperty::CU_ACCESS_PROPERTY_STREAMING,
                },
            },
        };
        // SAFETY: per the caller's contract.
        unsafe { self.launch_ex(f, c, params, attr) }
    }

    /// Queues `f` as a cooperative launch: the driver starts it only with every block
    /// resident at once (a grid barrier inside cannot deadlock). Returns `Ok(false)`, having
    /// queued nothing, when the device cannot hold the grid at once.
    ///
    /// # Safety
    /// As [`CudaDevice::launch_programmatic`], without the wait.
    pub(crate) unsafe fn launch_cooperative(
        &self,
        f: &CudaFunction,
        c: LaunchConfig,
        params: &mut [*mut std::ffi::c_void],
        context: &str,
    ) -> Result<bool> {
        use cudarc::driver::sys;
        let attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE,
            pad: [0; 4],
            value: sys::CUlaunchAttributeValue { cooperative: 1 },
        };
        // SAFETY: per the caller's contract.
        match unsafe { self.launch_ex(f, c, params, attr) } {
            Ok(()) => Ok(true),
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE => Ok(false),
            Err(e) => Err(drv(context.to_string())(e)),
        }
    }

    /// `cuLaunchKernelEx` of `f` on this device's stream with one launch attribute.
    ///
    /// # Safety
    /// As [`CudaDevice::launch_programmatic`]; what `attr` asks of the kernel is its own.
    unsafe fn launch_ex(
        &self,
        f: &CudaFunction,
        c: LaunchConfig,
        params: &mut [*mut std::ffi::c_void],
        mut attr: cudarc::driver::sys::CUlaunchAttribute,
    ) -> std::result::Result<(), cudarc::driver::DriverError> {
        use cudarc::driver::sys;
        self.ctx.bind_to_thread()?;
        let config = self.cu_config(c, std::slice::from_mut(&mut attr));
        // SAFETY: per the caller's contract.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
    }

    /// The driver's launch configuration of `c` on this device's stream with `attrs`.
    fn cu_config(
        &self,
        c: LaunchConfig,
        attrs: &mut [cudarc::driver::sys::CUlaunchAttribute],
    ) -> cudarc::driver::sys::CUlaunchConfig {
        cudarc::driver::sys::CUlaunchConfig {
            gridDimX: c.grid_dim.0,
            gridDimY: c.grid_dim.1,
            gridDimZ: c.grid_dim.2,
            blockDimX: c.block_dim.0,
            blockDimY: c.block_dim.1,
            blockDimZ: c.block_dim.2,
            sharedMemBytes: c.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: if attrs.is_empty() {
                std::ptr::null_mut()
            } else {
                attrs.as_mut_ptr()
            },
            numAttrs: attrs.len() as u32,
        }
    }

    /// Allows `smem` bytes of dynamic shared memory for `f`; returns its resident blocks on
    /// the whole device. Each driver call runs once per function and size: the device
    /// remembers the largest size allowed so far and the count per (function, threads, smem).
    pub(crate) fn prepare_dynamic(
        &self,
        f: &CudaFunction,
        threads: u32,
        smem: usize,
    ) -> Result<usize> {
        use cudarc::driver::sys;
        let id = f.cu_function() as usize;
        {
            let mut cache = self.module_cache();
            if cache.smem_allowed.get(&id).is_none_or(|&s| s < smem) {
                f.set_attribute(
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
                .map_err(drv("cuFuncSetAttribute (dynamic smem)"))?;
                cache.smem_allowed.insert(id, smem);
            }
        }
        self.resident_blocks(f, threads, smem)
    }

    /// Of `slots` blocks resident on the whole device (`prepare_dynamic`'s count), those that
    /// fit at once on the SMs this context may use (`coresident_sms`: fewer under MPS): what a
    /// grid barrier's kernel must not exceed.
    pub(crate) fn coresident_blocks(&self, slots: usize) -> usize {
        slots / self.caps.multiprocessors.max(1) as usize * self.coresident_sms.max(1) as usize
    }

    /// Asks the driver to give `f`'s SMs all of their unified L1 / shared memory as shared
    /// memory (the preferred carveout), so that several of its large-smem blocks fit per SM;
    /// once per function. Call before [`CudaDevice::prepare_dynamic`], whose occupancy query
    /// then counts them.
    pub(crate) fn prefer_max_shared(&self, f: &CudaFunction) -> Result<()> {
        let id = f.cu_function() as usize;
        let mut cache = self.module_cache();
        if !cache.max_carveout.contains(&id) {
            f.set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                100,
            )
            .map_err(drv("cuFuncSetAttribute (carveout)"))?;
            cache.max_carveout.insert(id);
        }
        Ok(())
    }

    /// Resident blocks of `f` on the whole device at `threads` and `smem` bytes of dynamic
    /// shared memory (the occupancy query runs once per function and size).
    fn resident_blocks(&self, f: &CudaFunction, threads: u32, smem: usize) -> Result<usize> {
        let key = (f.cu_function() as usize, threads, smem);
        let mut cache = self.module_cache();
        if let Some(&blocks) = cache.resident.get(&key) {
            return Ok(blocks);
        }
        let per_sm = f
            .occupancy_max_active_blocks_per_multiprocessor(threads, smem, None)
            .map_err(drv("cuOccupancyMaxActiveBlocksPerMultiprocessor"))?
            .max(1);
        let blocks = per_sm as usize * self.caps.multiprocessors.max(1) as usize;
        cache.resident.insert(key, blocks);
        Ok(blocks)
    }

    /// Clusters of `f` (compiled with `__cluster_dims__(1, 1, z)`) the device holds at once
    /// at `threads` and `smem` bytes of dynamic shared memory (queried once per function and
    /// size; `prepare_dynamic` must have allowed `smem`).
    pub(crate) fn resident_clusters(
        &self,
        f: &CudaFunction,
        z: u32,
        threads: u32,
        smem: usize,
    ) -> Result<usize> {
        use cudarc::driver::sys;
        let key = (f.cu_function() as usize, threads, smem);
        if let Some(&n) = self.module_cache().clusters.get(&key) {
            return Ok(n);
        }
        self.ctx
            .bind_to_thread()
            .map_err(drv("cuCtxSetCurrent (cluster occupancy)"))?;
        let c = LaunchConfig {
            grid_dim: (1, 1, z),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let config = self.cu_config(c, &mut []);
        let mut n: std::ffi::c_int = 0;
        // SAFETY: `n` and `config` are valid for the call; `f` is a loaded function.
        unsafe { sys::cuOccupancyMaxActiveClusters(&mut n, f.cu_function(), &config) }
            .result()
            .map_err(drv("cuOccupancyMaxActiveClusters"))?;
        let n = n.max(0) as usize;
        self.module_cache().clusters.insert(key, n);
        Ok(n)
    }

    fn resident_slots(&self, f: &CudaFunction) -> usize {
        self.resident_blocks(f, t::THREADS, 0)
            .unwrap_or(self.caps.multiprocessors.max(1) as usize)
    }

    /// Queues the absmean reduction of `n` floats at `x` into the one-float buffer `out`.
    ///
    /// # Safety
    /// `x` must address `n` f32 and `out` one f32 of this device's context, alive until the
    /// stream has run the kernel.
    pub unsafe fn absmean_scale_raw(
        &self,
        x: u64,
        n: usize,
        format: LowBitActivationFormat,
        out: u64,
    ) -> Result<()> {
        let _op = self.op_guard();
        // SAFETY: forwarded contract.
        unsafe { self.absmean_scale_queued(x, n, format, out) }
    }

    /// [`CudaDevice::absmean_scale_raw`] for callers that already hold the op guard.
    ///
    /// # Safety
    /// As [`CudaDevice::absmean_scale_raw`].
    unsafe fn absmean_scale_queued(
        &self,
        x: u64,
        n: usize,
        format: LowBitActivationFormat,
        out: u64,
    ) -> Result<()> {
        const OP: &str = "cuda::absmean_scale";
        let fmt = fmt_code(OP, format)?;
        non_null(OP, "x", x)?;
        non_null(OP, "scale buffer", out)?;
        if n == 0 {
            return Err(LowbitError::InvalidArgument {
                op: OP,
                what: "n",
                reason: "no elements".into(),
            });
        }
        let f = self.function(KernelId::AbsmeanScale, plain_defines("LB_QUANTIZE"))?;
        let blocks = t::red_blocks(n);
        let mut scratch = self.scratch();
        let partials = self.scratch_buf(&mut scratch.red_partials, t::RED_MAX_BLOCKS as usize)?;
        let counter = self.scratch_buf(&mut scratch.red_counter, 1)?;
        let (n64, fmt) = (n as i64, fmt);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&x)
            .arg(&n64)
            .arg(&fmt)
            .arg(&partials)
            .arg(&counter)
            .arg(&out);
        // SAFETY: per the caller's contract; scratch is ours and sized above.
        unsafe { b.launch(cfg((blocks, 1, 1), t::RED_THREADS)) }
            .map_err(drv("cuLaunchKernel (absmean_scale)"))?;
        Ok(())
    }

    /// Resolves a scale source to `(device pointer or 0, by-value scale)`, launching the
    /// absmean reduction first for `Compute`.
    ///
    /// # Safety
    /// As [`CudaDevice::absmean_scale_raw`] when `scale` is `Compute` (then `x` holds `n` f32).
    pub(crate) unsafe fn resolve_scale(
        &self,
        x: u64,
        n: usize,
        format: LowBitActivationFormat,
        scale: RawScale,
    ) -> Result<(u64, f32)> {
        Ok(match scale {
            RawScale::Param(s) => (0, s),
            RawScale::Buffer(p) => (p, 0.0),
            RawScale::Compute(p) => {
                // SAFETY: forwarded contract.
                unsafe { self.absmean_scale_queued(x, n, format, p)? };
                (p, 0.0)
            }
        })
    }

    /// Queues quantization of `n` floats at `x` into i32 codes at `codes`.
    ///
    /// # Safety
    /// `x` must address `n` f32, `codes` `n` i32, and a `Buffer`/`Compute` scale one f32, all
    /// of this device's context and alive until the stream has run the kernels.
    pub unsafe fn quantize_codes_raw(
        &self,
        x: u64,
        n: usize,
        format: LowBitActivationFormat,
        scale: RawScale,
        codes: u64,
    ) -> Result<()> {
        let _op = self.op_guard();
        const OP: &str = "cuda::quantize_codes";
        let fmt = fmt_code(OP, format)?;
        check_scale_source(OP, InputKind::F32, scale)?;
        non_null(OP, "x", x)?;
        non_null(OP, "codes", codes)?;
        if n == 0 {
            return Err(LowbitError::InvalidArgument {
                op: OP,
                what: "n",
                reason: "no elements".into(),
            });
        }
        let f = self.function(KernelId::QuantizeCodes, plain_defines("LB_QUANTIZE"))?;
        // SAFETY: forwarded contract.
        let (sp, sv) = unsafe { self.resolve_scale(x, n, format, scale)? };
        let n64 = n as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&x).arg(&n64).arg(&fmt).arg(&sp).arg(&sv).arg(&codes);
        // SAFETY: per the caller's contract.
        unsafe {
            b.launch(cfg(
                (ew_grid(n, t::EW_THREADS as usize), 1, 1),
                t::EW_THREADS,
            ))
        }
        .map_err(drv("cuLaunchKernel (quantize_codes)"))?;
        Ok(())
    }

    /// Queues quantize + pack of `x[rows, k]` into signed i8x4 words `[rows, ceil(k/4)]`.
    ///
    /// # Safety
    /// `x` must address `shape.len()` f32, `words` `shape.words_len()` u32, and a
    /// `Buffer`/`Compute` scale one f32, of this context, alive until the stream has run them.
    pub unsafe fn quantize_pack_i8x4_raw(
        &self,
        x: u64,
        shape: QuantizeShape,
        format: LowBitActivationFormat,
        scale: RawScale,
        words: u64,
    ) -> Result<()> {
        let _op = self.op_guard();
        const OP: &str = "cuda::quantize_pack_i8x4";
        check_signed_packable(OP, format)?;
        let fmt = fmt_code(OP, format)?;
        check_scale_source(OP, InputKind::F32, scale)?;
        non_null(OP, "x", x)?;
        non_null(OP, "words", words)?;
        let f = self.function(KernelId::QuantizePack, plain_defines("LB_QUANTIZE"))?;
        // SAFETY: forwarded contract.
        let (sp, sv) = unsafe { self.resolve_scale(x, shape.len(), format, scale)? };
        let (rows, k) = (shape.rows as i64, shape.k as i64);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&x)
            .arg(&rows)
            .arg(&k)
            .arg(&fmt)
            .arg(&sp)
            .arg(&sv)
            .arg(&words);
        let grid = ew_grid(shape.words_len(), t::EW_THREADS as usize);
        // SAFETY: per the caller's contract.
        unsafe { b.launch(cfg((grid, 1, 1), t::EW_THREADS)) }
            .map_err(drv("cuLaunchKernel (quantize_pack_i8x4)"))?;
        Ok(())
    }

    /// Quantizes `rows × k` floats at `x` with the resolved scale into the device's scratch
    /// i8x4 words (unsigned lanes for uint8pos) and returns their address.
    ///
    /// # Safety
    /// `x` must address `rows * k` f32 of this context; `scale_ptr` (if not 0) one f32.
    unsafe fn prepack_f32(
        &self,
        x: u64,
        rows: usize,
        k: usize,
        fmt: i32,
        scale_ptr: u64,
        scale_val: f32,
    ) -> Result<u64> {
        let f = self.function(KernelId::QuantizePack, plain_defines("LB_QUANTIZE"))?;
        let n = rows * k.div_ceil(4);
        let mut scratch = self.scratch();
        let words = self.scratch_buf(&mut scratch.act_words, n)?;
        drop(scratch);
        let (rows64, k64) = (rows as i64, k as i64);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&x)
            .arg(&rows64)
            .arg(&k64)
            .arg(&fmt)
            .arg(&scale_ptr)
            .arg(&scale_val)
            .arg(&words);
        // SAFETY: per the caller's contract; the scratch holds `n` words.
        unsafe {
            b.launch(cfg(
                (ew_grid(n, t::EW_THREADS as usize), 1, 1),
                t::EW_THREADS,
            ))
        }
        .map_err(drv("cuLaunchKernel (quantize_pack_i8x4, f32 pre-pass)"))?;
        Ok(words)
    }

    /// Queues the low-rank projection.
    ///
    /// # Safety
    /// Every address must be of this device's context, alive until the stream has run the
    /// kernels, and cover its extent: input `shape.x_len()` elements (`x_words_len()` words
    /// when packed), weight `shape.w_words_len()` words, output `shape.out_len()` elements of
    /// the epilogue's dtype (f32, or f16/bf16 bits), scale buffer one f32. Codes must lie in
    /// the format's range.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn lowrank_raw(
        &self,
        shape: &LowrankShape,
        input: RawAct,
        format: LowBitActivationFormat,
        scale: RawScale,
        w_words: u64,
        w_scale: f32,
        w_qmax: u32,
        epilogue: Epilogue,
        out: u64,
    ) -> Result<()> {
        let w = RawWeights::Words(w_words);
        // SAFETY: forwarded contract.
        unsafe {
            self.lowrank_weights_raw(
                shape, input, format, scale, w, w_scale, w_qmax, epilogue, out,
            )
        }
    }

    /// [`CudaDevice::lowrank_raw`] with weights in either device layout.
    ///
    /// # Safety
    /// As [`CudaDevice::lowrank_raw`]; ternary2 weights cover `shape.w_ternary2_len()` words.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn lowrank_weights_raw(
        &self,
        shape: &LowrankShape,
        input: RawAct,
        format: LowBitActivationFormat,
        scale: RawScale,
        weights: RawWeights,
        w_scale: f32,
        w_qmax: u32,
        epilogue: Epilogue,
        out: u64,
    ) -> Result<()> {
        let _op = self.op_guard();
        const OP: &str = "cuda::lowrank";
        shape.validate()?;
        let path = validate_projection(
            OP,
            input.kind(),
            format,
            scale,
            w_scale,
            w_qmax,
            epilogue,
            |qa, qw| shape.check_accumulator(qa, qw),
        )?;
        let (x, w) = (input.ptr(), weights.ptr());
        non_null(OP, "input", x)?;
        non_null(OP, "weight words", w)?;
        non_null(OP, "output", out)?;
        let t2 = matches!(weights, RawWeights::Ternary2(_));
        if t2 {
            self.ternary2_ok(OP, path, shape.k_words(), true)?;
        }
        // Ternary2 weights at M > 16 run on lowrank_wgmma where it runs, else (any M) on the
        // small-M kernel.
        if let Path::Int { mode, uns } = path
            && self.mma_lowrank_ok(shape)
            && (!t2 || self.wgmma_lowrank_ok(shape))
        {
            // SAFETY: forwarded contract (tensor-core family, `mma.rs`).
            return unsafe {
                self.lowrank_mma_raw(
                    shape, input, format, scale, w, w_scale, epilogue, out, mode, uns, t2,
                )
            };
        }
        let kw = shape.k_words();
        let m = shape.m();
        let packed = matches!(input, RawAct::Packed(_));
        let lda = if packed { kw } else { shape.embd };
        let mut p = LbProblem {
            a: x,
            b: w,
            out,
            lda: lda as i64,
            a_kvalid: lda as i64,
            ldb: shape.latent as i64,
            ldc: shape.latent_out as i64,
            w_scale,
            fmt: if path == Path::Float {
                0
            } else {
                fmt_code(OP, format)?
            },
            relu: i32::from(epilogue.relu),
            m_total: m as i32,
            time: shape.time as i32,
            heads: shape.heads as i32,
            a_heads: shape.in_heads as i32,
            o_heads: shape.heads as i32,
            ncols: shape.latent_out as i32,
            bcols: shape.latent as i32,
            kw_head: kw as i32,
            b_head_rows: kw as i32,
            splits_per_head: 1,
            a_vec: i32::from(lda.is_multiple_of(4) && aligned16(x)),
            b_vec: i32::from(shape.latent.is_multiple_of(4) && aligned16(w)),
            c_vec: i32::from(shape.latent_out.is_multiple_of(4) && aligned16(out)),
            is_decoder: 0,
            out_dtype: dtype_code(epilogue.dtype),
            ..Default::default()
        };
        let heads = shape.heads as u32;
        match path {
            Path::Float => {
                let f = self.function(KernelId::LowrankFloat, plain_defines("LB_FLOAT"))?;
                let grid = (
                    ceil_u32(shape.latent_out, t::FLOAT_TILE),
                    ceil_u32(m, t::FLOAT_TILE),
                    heads,
                );
                self.launch_problem(&f, grid, &p, false)
            }
            Path::Int { mode, uns } => {
                let small = m <= t::SMALL_M_MAX;
                let small_mma = t2 || (small && self.mma_small_lowrank_ok(shape));
                // f32 input with a computed scale on a small-M kernel: where the device lets it
                // (`with_small_inline_scale`), the kernel works out the scale itself, on the
                // reduction's grid for x, and writes it to the caller's buffer.
                let inline = match scale {
                    RawScale::Compute(buf) if mode == 2 && small => {
                        let g = t::red_blocks(shape.x_len());
                        (self.small_inline_scale && g <= t::SMALL_INLINE_SCALE_MAX_BLOCKS)
                            .then_some((buf, g))
                    }
                    _ => None,
                };
                let (sp, sv) = match inline {
                    Some((buf, _)) => {
                        non_null(OP, "scale buffer", buf)?;
                        (buf, 0.0)
                    }
                    // SAFETY: forwarded contract (x holds x_len f32 when F32).
                    None => unsafe { self.resolve_scale(x, shape.x_len(), format, scale)? },
                };
                p.scale_ptr = sp;
                p.scale_param = sv;
                let mut mode = mode;
                if mode == 2 && !small {
                    // Large M: quantize + pack each element once (not once per column tile
                    // and head), then the packed GEMM on the words.
                    let rows = shape.batch * shape.in_heads * shape.time;
                    // SAFETY: forwarded contract (x holds rows * D f32).
                    p.a = unsafe { self.prepack_f32(x, rows, shape.embd, p.fmt, sp, sv)? };
                    p.lda = kw as i64;
                    p.a_kvalid = kw as i64;
                    p.a_vec = i32::from(kw.is_multiple_of(4));
                    mode = 0;
                }
                if small_mma {
                    let scale_blocks = inline.map(|(_, g)| g);
                    return self.lowrank_mma_small(p, shape, mode, uns, t2, scale_blocks);
                }
                let id = [
                    KernelId::LowrankPacked,
                    KernelId::LowrankCodes,
                    KernelId::LowrankF32,
                ][mode as usize];
                let tile = self.tiles.0;
                let (cw, m1) = lowrank_small_cw(self.small, mode, m);
                let f = if small {
                    let mut defs = small_defines(mode, uns, m, cw, m1);
                    if let Some((_, g)) = inline {
                        defs.push(d("LB_SM_SCALE_BLOCKS", g));
                    }
                    self.function(id, defs)?
                } else {
                    self.function(id, tiled_defines(mode, uns, tile, tiled_fast(&p, mode)))?
                };
                let grid = if small {
                    (ceil_u32(shape.latent_out, cw * 32), heads, 1)
                } else {
                    (
                        ceil_u32(shape.latent_out, self.tiles.0.bn),
                        ceil_u32(m, self.tiles.0.bm),
                        heads,
                    )
                };
                self.launch_problem(&f, grid, &p, small)
            }
        }
    }

    /// Queues the decoder tail.
    ///
    /// # Safety
    /// As [`CudaDevice::lowrank_raw`], with input `shape.y_len()` elements (`y_words_len()`
    /// words when packed), weight `shape.w_words_len()` words and output `shape.out_len()`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn decoder_tail_raw(
        &self,
        shape: &DecoderTailShape,
        input: RawAct,
        format: LowBitActivationFormat,
        scale: RawScale,
        w_words: u64,
        w_scale: f32,
        w_qmax: u32,
        epilogue: Epilogue,
        out: u64,
    ) -> Result<()> {
        let w = RawWeights::Words(w_words);
        // SAFETY: forwarded contract.
        unsafe {
            self.decoder_tail_weights_raw(
                shape, input, format, scale, w, w_scale, w_qmax, epilogue, out,
            )
        }
    }

    /// [`CudaDevice::decoder_tail_raw`] with weights in either device layout.
    ///
    /// # Safety
    /// As [`CudaDevice::decoder_tail_raw`]; ternary2 weights cover `shape.w_ternary2_len()`
    /// words.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn decoder_tail_weights_raw(
        &self,
        shape: &DecoderTailShape,
        input: RawAct,
        format: LowBitActivationFormat,
        scale: RawScale,
        weights: RawWeights,
        w_scale: f32,
        w_qmax: u32,
        epilogue: Epilogue,
        out: u64,
    ) -> Result<()> {
        let _op = self.op_guard();
        const OP: &str = "cuda::decoder_tail";
        shape.validate()?;
        let path = validate_projection(
            OP,
            input.kind(),
            format,
            scale,
            w_scale,
            w_qmax,
            epilogue,
            |qa, qw| shape.check_accumulator(qa, qw),
        )?;
        let (y, w) = (input.ptr(), weights.ptr());
        non_null(OP, "input", y)?;
        non_null(OP, "weight words", w)?;
        non_null(OP, "output", out)?;
        let t2 = matches!(weights, RawWeights::Ternary2(_));
        if t2 {
            self.ternary2_ok(OP, path, shape.k_words(), false)?;
        }
        // Ternary2 weights at M > 16 run on decoder_wgmma where it runs, else (any M) on the
        // small-M kernel.
        if let Path::Int { mode, uns } = path
            && self.mma_decoder_ok(shape)
            && (!t2 || self.wgmma_decoder_ok(shape))
        {
            // SAFETY: forwarded contract (tensor-core family, `mma.rs`).
            return unsafe {
                self.decoder_tail_mma_raw(
                    shape, input, format, scale, w, w_scale, epilogue, out, mode, uns, t2,
                )
            };
        }
        let lw = shape.k_words();
        let m = shape.m();
        let packed = matches!(input, RawAct::Packed(_));
        let lda = if packed { lw } else { shape.latent };
        let dim = shape.dim;
        let mut p = LbProblem {
            a: y,
            b: w,
            out,
            lda: lda as i64,
            a_kvalid: lda as i64,
            ldb: dim as i64,
            ldc: dim as i64,
            w_scale,
            fmt: if path == Path::Float {
                0
            } else {
                fmt_code(OP, format)?
            },
            relu: i32::from(epilogue.relu),
            m_total: m as i32,
            time: shape.time as i32,
            heads: shape.heads as i32,
            a_heads: shape.heads as i32,
            o_heads: 1,
            ncols: dim as i32,
            bcols: dim as i32,
            kw_head: lw as i32,
            b_head_rows: shape.w_head_words() as i32,
            splits_per_head: 1,
            a_vec: i32::from(lda.is_multiple_of(4) && aligned16(y)),
            b_vec: i32::from(dim.is_multiple_of(4) && aligned16(w)),
            c_vec: i32::from(dim.is_multiple_of(4) && aligned16(out)),
            is_decoder: 1,
            out_dtype: dtype_code(epilogue.dtype),
            ..Default::default()
        };
        let heads = shape.heads;
        let (mode, uns) = match path {
            Path::Float => {
                let f = self.function(KernelId::DecoderFloat, plain_defines("LB_FLOAT"))?;
                let grid = (ceil_u32(dim, t::FLOAT_TILE), ceil_u32(m, t::FLOAT_TILE), 1);
                return self.launch_problem(&f, grid, &p, false);
            }
            Path::Int { mode, uns } => (mode, uns),
        };
        let small = m <= t::SMALL_M_MAX;
        let mut mode = mode;
        let mma_small = t2
            || (small
                && if mode == 2 {
                    self.mma_small_decoder_f32_ok(shape)
                } else {
                    self.mma_small_decoder_ok(shape)
                });
        // f32 input with a computed scale on the dp4a small-M kernel: where the device lets it
        // (`with_decoder_grid_scale`, sm_70+), the kernel's grid works out the scale
        // (`lb_grid_scale`) on the reduction's blocks, if all of its CTAs fit at once on the
        // SMs this context may use (checked below, which else queues the reduction first).
        let mut grid_scale = match scale {
            RawScale::Compute(buf)
                if mode == 2
                    && small
                    && !mma_small
                    && self.decoder_grid_scale
                    && self.caps.compute_capability >= crate::caps::GRID_BARRIER_MIN_SM =>
            {
                non_null(OP, "scale buffer", buf)?;
                Some((buf, t::red_blocks(shape.y_len())))
            }
            _ => None,
        };
        let rows = shape.batch * heads * shape.time;
        let small_prepack = mode == 2 && mma_small && self.prepacks_small(t2);
        // f32 input that the small-M tensor-core decoder takes packed, with a computed scale:
        // the scale and the packing in one launch where the device lets it
        // (`mma_prep_scale_a`, `with_fused_scale`).
        let fused = if small_prepack {
            // SAFETY: forwarded contract (y holds y_len f32).
            unsafe { self.small_prep_scaled(&p, rows, lw, shape.y_len(), scale)? }
        } else {
            None
        };
        // f32 input that the small-M tensor-core decoder's CTAs stage from ternary2 weights,
        // with a computed scale: where the device lets it (`with_small_mma_grid_scale`, sm_70+), `decoder_mma_small`
        // decides whether its grid works out the scale, and else queues the reduction.
        let mma_grid = mode == 2
            && t2
            && mma_small
            && !small_prepack
            && self.small_mma_grid_scale
            && self.caps.compute_capability >= crate::caps::GRID_BARRIER_MIN_SM
            && matches!(scale, RawScale::Compute(_));
        let (scale_ptr, scale_val) = match (fused, grid_scale) {
            (Some((_, _, buf)), _) | (None, Some((buf, _))) => (buf, 0.0),
            (None, None) if mma_grid => (0, 0.0),
            // SAFETY: forwarded contract (y holds y_len f32 when F32).
            (None, None) => unsafe { self.resolve_scale(y, shape.y_len(), format, scale)? },
        };
        p.scale_ptr = scale_ptr;
        p.scale_param = scale_val;
        if let Some((words, ldo, _)) = fused {
            p.a = words;
            p.lda = ldo as i64;
            p.a_kvalid = lw as i64;
            p.a_vec = 1;
            mode = 0;
        } else if mode == 2 && (!small || small_prepack) {
            // Large M (and the small-M tensor-core decoder where `prepacks_small`): quantize +
            // pack each element once (not once per column tile).
            // SAFETY: forwarded contract (y holds rows * L f32).
            p.a = unsafe { self.prepack_f32(y, rows, shape.latent, p.fmt, scale_ptr, scale_val)? };
            p.lda = lw as i64;
            p.a_kvalid = lw as i64;
            p.a_vec = i32::from(lw.is_multiple_of(4));
            mode = 0;
        }
        if mma_small {
            let pending = mma_grid.then_some((format, scale));
            // SAFETY: forwarded contract (y holds y_len f32 where the scale is pending).
            return unsafe { self.decoder_mma_small(p, shape, mode, uns, t2, pending) };
        }
        let id = [
            KernelId::DecoderPacked,
            KernelId::DecoderCodes,
            KernelId::DecoderF32,
        ][mode as usize];
        let f = if small {
            let mut defs = small_defines(mode, uns, m, t::SMALL_CW_DECODER, 2);
            if let Some((_, g)) = grid_scale {
                defs.extend(grid_scale_defines(g));
            }
            self.function(id, defs)?
        } else {
            self.function(
                id,
                tiled_defines(mode, uns, self.tiles.1, tiled_fast(&p, mode)),
            )?
        };
        let tile = self.tiles.1;
        let reduce = if small {
            None
        } else {
            Some(self.function(KernelId::DecoderReduce, plain_defines("LB_REDUCE"))?)
        };
        let slots = self.resident_slots(&f);
        let (col_tiles, units, kchunk) = if small {
            let ct = ceil_u32(dim, t::SMALL_CW_DECODER * 32) as usize;
            (ct, ct * heads, 16usize)
        } else {
            let ct = ceil_u32(dim, tile.bn) as usize;
            (
                ct,
                ct * ceil_u32(m, tile.bm) as usize * heads,
                t::TILE_BK as usize,
            )
        };
        let max_sp = lw
            .div_ceil(kchunk)
            .clamp(1, t::MAX_SPLITS_PER_HEAD as usize);
        // Small M: one wave of streaming blocks (at most `SmallShape::blocks_per_sm` per SM);
        // tiled: the wave-efficient split count.
        let sp = if small {
            let wave = slots
                .min(self.small.blocks_per_sm as usize * self.caps.multiprocessors.max(1) as usize);
            nonempty_splits(lw, (wave / units.max(1)).clamp(1, max_sp), 4)
        } else {
            pick_splits(units, slots, max_sp)
        };
        let splits = heads * sp;
        p.splits_per_head = sp as i32;
        // The grid barrier needs every CTA resident at once, on the SMs this context may use.
        let f = match grid_scale {
            Some(_) if col_tiles * splits > self.coresident_blocks(slots) => {
                grid_scale = None;
                // SAFETY: forwarded contract (y holds y_len f32).
                let (sp, sv) = unsafe { self.resolve_scale(y, shape.y_len(), format, scale)? };
                p.scale_ptr = sp;
                p.scale_param = sv;
                self.function(id, small_defines(mode, uns, m, t::SMALL_CW_DECODER, 2))?
            }
            _ => f,
        };
        let mut scratch = self.scratch();
        if grid_scale.is_some() {
            // absmean_scale's partials, then the grid barrier's word (`lb_grid_scale`).
            p.partial =
                self.scratch_buf(&mut scratch.red_partials, t::RED_MAX_BLOCKS as usize + 1)?;
        }
        if splits > 1 {
            if small {
                // A zeroed [M][D] accumulator (the kernel leaves it zeroed again).
                p.acc = self.scratch_buf(&mut scratch.small_acc, m * dim)?;
            } else {
                p.partial = self.scratch_buf(&mut scratch.partials, splits * m * dim)?;
            }
        }
        drop(scratch);
        if small {
            self.launch_problem(&f, (col_tiles as u32, splits as u32, 1), &p, true)
        } else {
            let grid = (col_tiles as u32, ceil_u32(m, tile.bm), splits as u32);
            self.launch_problem(&f, grid, &p, false)?;
            if let (Some(r), true) = (reduce, splits > 1) {
                let s = splits as i32;
                let mut b = self.stream.launch_builder(&r);
                b.arg(&p).arg(&s);
                let grid = ew_grid(m * dim, t::EW_THREADS as usize);
                // SAFETY: the partials were written above on this stream; `p` as checked.
                unsafe { b.launch(cfg((grid, 1, 1), t::EW_THREADS)) }
                    .map_err(drv("cuLaunchKernel (decoder_reduce)"))?;
            }
            Ok(())
        }
    }

    /// Queues the rho int8 block pack of `shape.len()` floats at `values` into `words`
    /// (`shape.int8_words()`) and `scales` (`shape.blocks()`).
    ///
    /// # Safety
    /// The addresses must cover those extents in this context and outlive the kernel.
    pub unsafe fn rho_int8_pack_raw(
        &self,
        shape: &RhoShape,
        values: u64,
        words: u64,
        scales: u64,
    ) -> Result<()> {
        let _op = self.op_guard();
        const OP: &str = "cuda::rho_int8_pack";
        non_null(OP, "values", values)?;
        non_null(OP, "words", words)?;
        non_null(OP, "scales", scales)?;
        let f = self.function(KernelId::RhoInt8Pack, plain_defines("LB_RHO"))?;
        let n = shape.len() as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&values).arg(&n).arg(&words).arg(&scales);
        let grid = ew_grid(shape.blocks(), (t::EW_THREADS / 32) as usize);
        // SAFETY: per the caller's contract.
        unsafe { b.launch(cfg((grid, 1, 1), t::EW_THREADS)) }
            .map_err(drv("cuLaunchKernel (rho_int8_pack)"))?;
        Ok(())
    }

    /// Queues the rho int8 block unpack into `shape.len()` floats at `out`.
    ///
    /// # Safety
    /// As [`CudaDevice::rho_int8_pack_raw`].
    pub unsafe fn rho_int8_unpack_raw(
        &self,
        shape: &RhoShape,
        words: u64,
        scales: u64,
        out: u64,
    ) -> Result<()> {
        let _op = self.op_guard();
        const OP: &str = "cuda::rho_int8_unpack";
        non_null(OP, "words", words)?;
        non_null(OP, "scales", scales)?;
        non_null(OP, "out", out)?;
        let f = self.function(KernelId::RhoInt8Unpack, plain_defines("LB_RHO"))?;
        let n = shape.len() as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&words).arg(&scales).arg(&n).arg(&out);
        let grid = ew_grid(shape.len(), t::EW_THREADS as usize);
        // SAFETY: per the caller's contract.
        unsafe { b.launch(cfg((grid, 1, 1), t::EW_THREADS)) }
            .map_err(drv("cuLaunchKernel (rho_int8_unpack)"))?;
        Ok(())
    }
}

/// Every module variant the launchers can ask for (kernel, defines): what a warm-up or a
/// compile check goes through.
pub fn module_variants() -> Vec<(KernelId, Vec<(String, String)>)> {
    let mut v = Vec::new();
    let lowrank = [
        KernelId::LowrankPacked,
        KernelId::LowrankCodes,
        KernelId::LowrankF32,
    ];
    let decoder = [
        KernelId::DecoderPacked,
        KernelId::DecoderCodes,
        KernelId::DecoderF32,
    ];
    for mode in 0..3u32 {
        // Packed words with unsigned lanes come from the f32 pre-pass of uint8pos inputs.
        for uns in [false, true] {
            for (ids, decoder_cw) in [(lowrank, None), (decoder, Some(t::SMALL_CW_DECODER))] {
                // Large-M f32 input is packed first (prepack_f32), so only the small-M
                // kernels read f32.
                if mode != 2 {
                    for tile in t::DpTile::CANDIDATES {
                        for fast in [false, true] {
                            v.push((ids[mode as usize], tiled_defines(mode, uns, tile, fast)));
                        }
                    }
                }
                // Low-rank: the default shape's kernels and those of one-row blocks at 2 per SM
                // (`LOWBIT_CUDA_SMALL=..x2`).
                let mut rows = 1;
                while rows <= t::SMALL_M_MAX {
                    for m1_blocks in [t::SmallShape::DEFAULT.m1_blocks, 2] {
                        let shape = t::SmallShape {
                            m1_blocks,
                            ..t::SmallShape::DEFAULT
                        };
                        let (cw, blocks) = match decoder_cw {
                            Some(cw) => (cw, 2),
                            None => lowrank_small_cw(shape, mode, rows),
                        };
                        let k = (
                            ids[mode as usize],
                            small_defines(mode, uns, rows, cw, blocks),
                        );
                        if !v.contains(&k) {
                            v.push(k);
                        }
                    }
                    rows *= 2;
                }
            }
        }
    }
    // f32 input whose scale the small-M low-rank kernel works out itself (LB_SM_SCALE_BLOCKS).
    for uns in [false, true] {
        for rows in [1, t::SMALL_M_MAX] {
            let (cw, blocks) = lowrank_small_cw(t::SmallShape::DEFAULT, 2, rows);
            for g in [1, t::SMALL_INLINE_SCALE_MAX_BLOCKS] {
                let mut defs = small_defines(2, uns, rows, cw, blocks);
                defs.push(d("LB_SM_SCALE_BLOCKS", g));
                v.push((KernelId::LowrankF32, defs));
            }
        }
    }
    // f32 input whose scale the dp4a small-M decoder's grid works out (LB_SM_GRID_SCALE).
    for uns in [false, true] {
        for rows in [1, t::SMALL_M_MAX] {
            for g in [1, t::RED_MAX_BLOCKS] {
                let mut defs = small_defines(2, uns, rows, t::SMALL_CW_DECODER, 2);
                defs.extend(grid_scale_defines(g));
                v.push((KernelId::DecoderF32, defs));
            }
        }
    }
    v.push((KernelId::LowrankFloat, plain_defines("LB_FLOAT")));
    v.push((KernelId::DecoderFloat, plain_defines("LB_FLOAT")));
    v.push((KernelId::DecoderReduce, plain_defines("LB_REDUCE")));
    for id in [
        KernelId::AbsmeanScale,
        KernelId::QuantizeCodes,
        KernelId::QuantizePack,
    ] {
        v.push((id, plain_defines("LB_QUANTIZE")));
    }
    for id in [KernelId::RhoInt8Pack, KernelId::RhoInt8Unpack] {
        v.push((id, plain_defines("LB_RHO")));
    }
    v.push((
        KernelId::Dp4aCeiling,
        vec![("LB_CHAINS".to_string(), t::CEILING_CHAINS.to_string())],
    ));
    v.push((KernelId::CopyBandwidth, Vec::new()));
    v.push((KernelId::StreamRead, Vec::new()));
    v
}

/// How `launch_lb` launches a kernel, and its `pf_mode`: a small-M kernel (`small`) under the
/// device's `pdl`, where the kernel asks for the early trigger (`wants_early`, taken only
/// where it loads its weights early, `early_loads`, in the default mode) and prefetches as
/// `prefetch_mode` says, plus `LB_PF_EARLY` where it loads early; any other kernel plainly,
/// with no prefetch.
fn small_launch(
    small: bool,
    pdl: Pdl,
    early_loads: bool,
    wants_early: bool,
    prefetch_mode: i32,
) -> (Pdl, i32) {
    let pdl = match pdl {
        _ if !small => Pdl::Off,
        Pdl::AfterWait if early_loads && wants_early => Pdl::Early,
        pdl => pdl,
    };
    let pf_mode = match pdl {
        Pdl::Off => 0,
        _ if early_loads => prefetch_mode | super::device::PF_EARLY,
        _ => prefetch_mode,
    };
    (pdl, pf_mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::compile;

    #[test]
    fn small_launches_take_the_early_trigger_only_with_frozen_weights() {
        use super::super::device::PF_EARLY;
        const PF: i32 = 2; // any prefetch bits
        // Not a small-M kernel: plain, no prefetch, whatever else is asked.
        assert_eq!(
            small_launch(false, Pdl::AfterWait, true, true, PF),
            (Pdl::Off, 0)
        );
        // The device's mode, the prefetch as asked; the early trigger only with frozen
        // weights in the default mode, which also load before the wait.
        assert_eq!(
            small_launch(true, Pdl::AfterWait, false, true, PF),
            (Pdl::AfterWait, PF)
        );
        assert_eq!(
            small_launch(true, Pdl::AfterWait, true, true, PF),
            (Pdl::Early, PF | PF_EARLY)
        );
        assert_eq!(
            small_launch(true, Pdl::AfterWait, true, false, PF),
            (Pdl::AfterWait, PF | PF_EARLY)
        );
        assert_eq!(
            small_launch(true, Pdl::Early, false, false, PF),
            (Pdl::Early, PF)
        );
        // Plain launches wait for nothing: no prefetch, no early loads.
        assert_eq!(small_launch(true, Pdl::Off, true, true, PF), (Pdl::Off, 0));
    }

    /// Compiles every module variant with NVRTC (no GPU needed) for sm_90 and sm_75 (CUDA 13
    /// knows nothing older); skips loudly when libnvrtc is absent (see
    /// [`compile::compile_checked`] for its variables).
    #[test]
    fn every_module_variant_compiles() {
        if !compile::nvrtc_present() {
            eprintln!("SKIPPED: libnvrtc not found; CUDA sources not compiled");
            return;
        }
        let mut seen = std::collections::HashSet::new();
        for cc in [(9, 0), (7, 5)] {
            for (id, defines) in module_variants() {
                // The tiled kernels on packed words are the large-M dp4a path: no spills
                // there (other inputs and the small-M variants may spill a few bytes).
                let hot =
                    defines.contains(&d("LB_MODE", 0)) && defines.iter().any(|(k, _)| k == "LB_BM");
                if seen.insert((cc, id.stem(), defines.clone())) {
                    compile::compile_checked(id.stem(), cc, &defines, hot.then_some(0));
                }
            }
        }
    }

    #[test]
    fn problem_struct_layout_matches_the_c_side() {
        // 6 pointers + 4 i64 + 2 f32 + 21 i32 + 4 bytes of padding = 168 bytes (common.cuh).
        assert_eq!(std::mem::size_of::<LbProblem>(), 168);
    }

    #[test]
    fn one_row_lowrank_keeps_its_wave_for_every_input() {
        let s = t::SmallShape::DEFAULT;
        for rows in 1..=t::SMALL_M1_ROWS {
            assert_eq!(lowrank_small_cw(s, 0, rows), (s.lowrank_cw, s.m1_blocks));
        }
        for (mode, rows) in [(0, t::SMALL_M1_ROWS + 1), (0, 16), (1, 1), (2, 1), (2, 3)] {
            let (cw, m1) = lowrank_small_cw(s, mode, rows);
            assert_eq!(m1, 2);
            assert_eq!(cw * m1, (s.lowrank_cw * s.m1_blocks).min(16));
        }
        let two = t::SmallShape { m1_blocks: 2, ..s };
        assert_eq!(lowrank_small_cw(two, 2, 1), (two.lowrank_cw, 2));
    }

    #[test]
    fn nonempty_splits_match_the_kernel_cut() {
        // lb_split: chunk = round_up(ceil(kw / sp), kb); split z covers [z * chunk, ...).
        for kw in [1, 4, 63, 64, 65, 512, 2048, 2049] {
            for sp in 1..40 {
                for kb in [4, 16, 64] {
                    let n = nonempty_splits(kw, sp, kb);
                    let chunk = kw.div_ceil(sp).next_multiple_of(kb);
                    assert!(n <= sp && (n - 1) * chunk < kw, "{kw} {sp} {kb}: {n}");
                    assert!(n * chunk >= kw, "{kw} {sp} {kb}: {n} leaves K uncovered");
                    // Asking for n gives the same chunk, so the same cut.
                    assert_eq!(kw.div_ceil(n).next_multiple_of(kb), chunk, "{kw} {sp} {kb}");
                }
            }
        }
        assert_eq!(std::mem::align_of::<LbProblem>(), 8);
    }

    #[test]
    fn splits_fill_waves() {
        assert_eq!(pick_splits(512, 264, 64), 1);
        assert_eq!(pick_splits(128, 264, 64), 2);
        assert!(pick_splits(16, 264, 64) >= 16);
    }
}
