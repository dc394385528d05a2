//! Ceilings the kernels are judged by, measured on the device with CUDA events:
//! the dp4a ceiling (independent `__dp4a` chains, 8 int ops per dp4a) and the device copy
//! bandwidth (a 16-byte copy kernel, bytes read + written), and the weight-stream floor of
//! a chain of dependent small-M ops ([`stream_floor`]). Also [`time_events`] and
//! [`capture_graph`], the timers the benches use.

use std::time::Duration;

use cudarc::driver::{
    CudaGraph, CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg, sys,
};

use super::device::{CudaDevice, drv};
use super::launch::LbProblem;
use super::tuning as t;
use crate::error::{LowbitError, Result};
use crate::kernels::KernelId;

/// A measured rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    /// Median seconds per run.
    pub seconds: f64,
    /// Work per run: int ops (dp4a ceiling) or bytes read + written (copy).
    pub work: f64,
}

impl Measured {
    /// `work / seconds`.
    pub fn rate(&self) -> f64 {
        self.work / self.seconds
    }
}

/// Runs `f` (which queues work on `dev`'s stream) `iters` times between two CUDA events and
/// returns the event-measured time of all of them.
pub fn time_events(
    dev: &CudaDevice,
    iters: u64,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Duration> {
    let ctx = dev.context();
    let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    let start = ctx.new_event(flags).map_err(drv("cuEventCreate"))?;
    let end = ctx.new_event(flags).map_err(drv("cuEventCreate"))?;
    start.record(dev.stream()).map_err(drv("cuEventRecord"))?;
    for _ in 0..iters {
        f()?;
    }
    end.record(dev.stream()).map_err(drv("cuEventRecord"))?;
    let ms = start.elapsed_ms(&end).map_err(drv("cuEventElapsedTime"))?;
    Ok(Duration::from_secs_f64(f64::from(ms) / 1e3))
}

/// Median of `reps` event-timed runs of `f` (after one warm-up run), in seconds.
pub fn median_seconds(
    dev: &CudaDevice,
    reps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<f64> {
    f()?;
    dev.synchronize()?;
    let mut v = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        v.push(time_events(dev, 1, &mut f)?.as_secs_f64());
    }
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

/// The dp4a ceiling: `iters` rounds of `CEILING_CHAINS` independent dp4a per thread on a grid
/// that fills the device. Work is counted as 8 int ops per dp4a.
pub fn dp4a_ceiling(dev: &CudaDevice, iters: u32, reps: usize) -> Result<Measured> {
    let f = dev.function(
        KernelId::Dp4aCeiling,
        vec![("LB_CHAINS".to_string(), t::CEILING_CHAINS.to_string())],
    )?;
    let blocks = dev.caps().multiprocessors.max(1) * 8;
    let threads = blocks as usize * 256;
    let mut out: CudaSlice<i32> = dev.alloc_zeros(threads)?;
    let iters_i = i32::try_from(iters).map_err(|_| LowbitError::InvalidArgument {
        op: "dp4a_ceiling",
        what: "iters",
        reason: format!("{iters} exceeds i32"),
    })?;
    let stream = dev.stream().clone();
    let seconds = median_seconds(dev, reps, || {
        let (op, _g) = out.device_ptr_mut(&stream);
        let mut b = stream.launch_builder(&f);
        b.arg(&iters_i).arg(&op);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: `out` holds one i32 per launched thread.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel (dp4a_ceiling)"))?;
        Ok(())
    })?;
    let work = threads as f64 * f64::from(iters) * f64::from(t::CEILING_CHAINS) * 8.0;
    Ok(Measured { seconds, work })
}

/// Device copy bandwidth over `bytes` (rounded to 16): work is bytes read + bytes written.
pub fn copy_bandwidth(dev: &CudaDevice, bytes: usize, reps: usize) -> Result<Measured> {
    let n16 = (bytes / 16).max(1);
    let f = dev.function(KernelId::CopyBandwidth, Vec::new())?;
    let src: CudaSlice<u32> = dev.alloc_zeros(n16 * 4)?;
    let mut dst: CudaSlice<u32> = dev.alloc_zeros(n16 * 4)?;
    let blocks = (n16.div_ceil(256)).min(dev.caps().multiprocessors.max(1) as usize * 16) as u32;
    let stream = dev.stream().clone();
    let n = n16 as i64;
    let seconds = median_seconds(dev, reps, || {
        let (sp, _gs) = src.device_ptr(&stream);
        let (dp, _gd) = dst.device_ptr_mut(&stream);
        let mut b = stream.launch_builder(&f);
        b.arg(&sp).arg(&dp).arg(&n);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: both buffers hold n16 16-byte elements.
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel (copy_bandwidth)"))?;
        Ok(())
    })?;
    Ok(Measured {
        seconds,
        work: 2.0 * (n16 * 16) as f64,
    })
}

/// Captures `run(0..runs)` on `dev`'s stream into a CUDA graph, after one uncaptured warm-up
/// of each (so that compilation and scratch allocation stay outside it), and uploads it.
pub fn capture_graph(
    dev: &CudaDevice,
    runs: usize,
    mut run: impl FnMut(usize) -> Result<()>,
) -> Result<CudaGraph> {
    (0..runs).try_for_each(&mut run)?;
    dev.synchronize()?;
    let stream = dev.stream();
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(drv("cuStreamBeginCapture"))?;
    let queued = (0..runs).try_for_each(&mut run);
    let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
    queued?;
    let graph = graph
        .map_err(drv("cuStreamEndCapture"))?
        .ok_or_else(|| LowbitError::Driver {
            backend: crate::BackendKind::Cuda,
            context: "cuStreamEndCapture".into(),
            message: "no graph was captured".into(),
        })?;
    graph.upload().map_err(drv("cuGraphUpload"))?;
    Ok(graph)
}

/// Graph replays per timed sample of [`stream_floor`].
const FLOOR_REPLAYS: u64 = 4;

/// The weight-stream floor of a chain of dependent small-M ops: `copies` buffers of `bytes`
/// (rounded down to 16; at least 16, below 8 GiB), one `stream_read` launch per buffer in a
/// CUDA graph, each block reading its contiguous share once, launched like the small-M
/// kernels (programmatic dependent launch as the device's [`super::device::Pdl`]), on
/// `blocks_per_sm` blocks per SM. Median over `reps` samples of the seconds per launch; work
/// is the bytes read per launch. Enough copies (their bytes several times the L2) make
/// every launch read DRAM.
pub fn stream_floor(
    dev: &CudaDevice,
    bytes: usize,
    copies: usize,
    blocks_per_sm: u32,
    reps: usize,
) -> Result<Measured> {
    let words = bytes / 16 * 4;
    if words == 0 || bytes >= 8 << 30 || copies == 0 || blocks_per_sm == 0 {
        return Err(LowbitError::InvalidArgument {
            op: "stream_floor",
            what: "bytes, copies, blocks_per_sm",
            reason: format!(
                "{bytes} bytes (16 to 8 GiB), {copies} copies and {blocks_per_sm} blocks per SM \
                 (each at least 1)"
            ),
        });
    }
    let f = dev.function(KernelId::StreamRead, Vec::new())?;
    let blocks = blocks_per_sm * dev.caps().multiprocessors.max(1);
    let pattern: Vec<u32> = (0..words as u32)
        .map(|i| i.wrapping_mul(0x9e37_79b9))
        .collect();
    let bufs = (0..copies)
        .map(|_| dev.upload(&pattern))
        .collect::<Result<Vec<_>>>()?;
    let out: CudaSlice<u32> = dev.alloc_zeros(blocks as usize * 8)?;
    let stream = dev.stream().clone();
    let launch = |i: usize| {
        let (b, _gb) = bufs[i].device_ptr(&stream);
        let (o, _go) = out.device_ptr(&stream);
        let p = LbProblem {
            b,
            out: o,
            ldb: words as i64,
            ..LbProblem::default()
        };
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: `p.b` holds `p.ldb` words; `out` one word per warp of the grid.
        unsafe { dev.launch_lb(&f, cfg, &p, "stream_read", true, false) }
    };
    let graph = capture_graph(dev, copies, launch)?;
    let replays = median_seconds(dev, reps, || {
        (0..FLOOR_REPLAYS).try_for_each(|_| graph.launch().map_err(drv("cuGraphLaunch")))
    })?;
    Ok(Measured {
        seconds: replays / (FLOOR_REPLAYS as usize * copies) as f64,
        work: (words * 4) as f64,
    })
}

/// The two ceilings of a card, measured once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ceilings {
    /// dp4a int ops per second (8 per dp4a).
    pub dp4a_ops: f64,
    /// Device copy bandwidth, bytes read + written per second.
    pub copy_bytes: f64,
}

impl Ceilings {
    /// dp4a: 4096 rounds on a full grid; copy: 1 GiB (far past L2); medians of 10 runs.
    pub fn measure(dev: &CudaDevice) -> Result<Self> {
        let d = dp4a_ceiling(dev, 4096, 10)?;
        let c = copy_bandwidth(dev, 1 << 30, 10)?;
        Ok(Self {
            dp4a_ops: d.rate(),
            copy_bytes: c.rate(),
        })
    }

    /// One `CUDA-CEILING` line for logs.
    pub fn line(&self, card: &str) -> String {
        format!(
            "CUDA-CEILING card=\"{card}\" dp4a_tops={:.1} copy_gbps={:.0}",
            self.dp4a_ops / 1e12,
            self.copy_bytes / 1e9
        )
    }
}

/// One `CUDA-SUMMARY` line: time, TOPS and the share of the dp4a ceiling; with
/// `weight_bytes`, the weight-stream bandwidth and its share of the copy bandwidth.
pub fn summary_line(
    group: &str,
    variant: &str,
    seconds: f64,
    int_ops: u64,
    weight_bytes: Option<u64>,
    ceilings: &Ceilings,
) -> String {
    let tops = int_ops as f64 / seconds;
    let mut s = format!(
        "CUDA-SUMMARY {group} {variant} time_us={:.2} tops={:.2} of_dp4a={:.1}%",
        seconds * 1e6,
        tops / 1e12,
        100.0 * tops / ceilings.dp4a_ops
    );
    if let Some(b) = weight_bytes {
        let bw = b as f64 / seconds;
        s.push_str(&format!(
            " weight_gbps={:.0} of_copy={:.1}%",
            bw / 1e9,
            100.0 * bw / ceilings.copy_bytes
        ));
    }
    s
}
