//! What `lowbit bench` times, per backend, through that backend's own fastest API:
//!
//! * CPU: `CpuBackend::*_into` with preallocated outputs (wall clock; `host`);
//! * CUDA: the device-resident ops on buffers uploaded once, timed with CUDA events
//!   (`device (CUDA events)`), with the dp4a and copy-bandwidth ceilings of
//!   `backend::cuda::microbench` for the `% peak` / `% bw` columns. Above M = 16 each timed
//!   run follows a 256 MB memset on the stream, as `triton.testing.do_bench` (the torch
//!   peers' timer) does: a cold L2 and the host's launch latency hidden, for both sides
//!   (`... after a 256 MB L2 flush`; `--idle` times on an idle stream instead);
//! * wgpu: the device-resident ops, timed with GPU timestamp queries where the adapter has
//!   them (`device (GPU timestamps)`), else wall clock with a blocking poll inside the timed
//!   region (`device (wall + poll)`);
//! * `--transfers`: any backend through the host-slice `Backend` trait (`incl. transfers`).
//!
//! At small M the GPU timers rotate through [`COLD_COPIES`] copies of the weights so that they
//! come from DRAM, not from an L2 still warm from the previous run. There the CUDA timer
//! captures one run per copy into a CUDA graph and times replays of it (`device (CUDA graph
//! replay)`, `..., PDL)` where the small-M kernels of a replay overlap under programmatic
//! dependent launch), as token-by-token decoding would run: a single launch of a few
//! microseconds is otherwise timed together with the host's launch latency (`--no-graph` keeps
//! that).

use std::time::Instant;

use lowbit_kernels::backend::ProjectionArgs;
use lowbit_kernels::backend::cpu::CpuBackend;
use lowbit_kernels::ops::quantize::QuantizeShape;
use lowbit_kernels::{
    ActInput, Backend, BackendKind, DecoderTailShape, Epilogue, LowBitActivationFormat,
    LowrankShape, Result, ScaleSource,
};

/// The activation format of every bench row.
pub const FORMAT: LowBitActivationFormat = LowBitActivationFormat::Int8;
/// Host scale of the `packed` variant and weight scale of every row (values do not matter
/// for timing).
pub const A_SCALE: f32 = 0.01;
pub const W_SCALE: f32 = 0.02;
/// Weight copies rotated through at small M on GPUs.
#[cfg_attr(not(any(feature = "cuda", feature = "wgpu")), allow(dead_code))]
pub const COLD_COPIES: usize = 8;
/// Largest M at which the GPU timers rotate weight copies.
#[cfg_attr(not(any(feature = "cuda", feature = "wgpu")), allow(dead_code))]
pub const COLD_MAX_M: usize = 16;

/// One op at one shape.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Lowrank(LowrankShape),
    Decoder(DecoderTailShape),
    Quantize(QuantizeShape),
}

impl Op {
    #[cfg_attr(not(any(feature = "cuda", feature = "wgpu")), allow(dead_code))]
    fn m(&self) -> usize {
        match self {
            Self::Lowrank(s) => s.m(),
            Self::Decoder(s) => s.m(),
            Self::Quantize(s) => s.rows,
        }
    }
}

/// Host data of one case: the activations in the form the variant takes.
pub struct Inputs<'a> {
    /// Prepacked int8x4 words (`packed` variant) — else empty.
    pub words: &'a [u32],
    /// f32 activations (`f32` variant, quantize) — else empty.
    pub f32s: &'a [f32],
    pub packed: bool,
}

/// Median / fastest of the timed runs.
#[derive(Clone, Copy, Debug)]
pub struct Sampled {
    pub median_s: f64,
    pub min_s: f64,
    pub runs: usize,
    /// How these runs were timed, where it differs from the backend's usual timing.
    pub timing: Option<&'static str>,
}

/// Runs `one` (which returns the seconds of one run) once to warm up, then `iters` times, or
/// adaptively (`iters == 0`: at least 3 runs and 0.3 s, at most 1000 runs).
pub fn sample(iters: usize, mut one: impl FnMut() -> Result<f64>) -> Result<Sampled> {
    one()?;
    let mut times = Vec::new();
    let start = Instant::now();
    loop {
        times.push(one()?);
        let n = times.len();
        let done = if iters > 0 {
            n >= iters
        } else {
            (n >= 3 && start.elapsed().as_secs_f64() >= 0.3) || n >= 1000
        };
        if done {
            break;
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(Sampled {
        median_s: times[times.len() / 2],
        min_s: times[0],
        runs: times.len(),
        timing: None,
    })
}

fn wall(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

fn host_args<'a>(inputs: &Inputs<'a>, w_words: &'a [u32]) -> ProjectionArgs<'a> {
    ProjectionArgs {
        input: if inputs.packed {
            ActInput::Packed(inputs.words)
        } else {
            ActInput::F32(inputs.f32s)
        },
        format: FORMAT,
        scale: if inputs.packed {
            ScaleSource::Param(A_SCALE)
        } else {
            ScaleSource::Compute
        },
        w_words,
        w_scale: W_SCALE,
        w_qmax: 1,
        epilogue: Epilogue::default(),
    }
}

/// A backend as `lowbit bench` times it.
pub trait Timer {
    fn kind(&self) -> BackendKind;
    fn name(&self) -> String;
    /// How the time is taken (a table column).
    fn timing(&self) -> &'static str;
    /// Measured copy bandwidth (bytes read + written per second), if known.
    fn copy_bandwidth(&mut self) -> Option<f64>;
    /// Measured integer compute ceiling (int ops per second) of the kernels that run `op`,
    /// if known.
    fn compute_peak(&self, op: &Op) -> Option<f64>;
    /// What the ceiling is (for the footer), if any.
    fn ceiling_name(&self) -> Option<&'static str> {
        None
    }
    /// Packed weight words of the next ops (uploaded once, reused across M and variants);
    /// `layout` = (heads, i8x4 rows per head, columns).
    fn set_weights(&mut self, words: &[u32], layout: (usize, usize, usize)) -> Result<()>;
    fn time(&mut self, op: &Op, inputs: &Inputs<'_>, iters: usize) -> Result<Sampled>;
    /// Lines for the footer after every row was timed (measured then, if at all).
    fn footnotes(&mut self) -> Vec<String> {
        Vec::new()
    }
}

/// The CPU through `CpuBackend::*_into` (outputs preallocated outside the timed region).
pub struct CpuTimer {
    cpu: CpuBackend,
    weights: Vec<u32>,
    copy_bw: Option<f64>,
}

impl CpuTimer {
    pub fn new() -> Self {
        Self {
            cpu: CpuBackend::new(),
            weights: Vec::new(),
            copy_bw: None,
        }
    }
}

/// Parallel memcpy bandwidth of this machine in bytes/s (read + write counted).
fn cpu_copy_bandwidth() -> f64 {
    use rayon::prelude::*;
    const LEN: usize = 32 << 20; // 32 Mi u64 = 256 MiB per buffer
    let src = vec![1u64; LEN];
    let mut dst = vec![0u64; LEN];
    let chunk = LEN / (4 * rayon::current_num_threads().max(1));
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let t = Instant::now();
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    (2 * LEN * 8) as f64 / best
}

impl Timer for CpuTimer {
    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }
    fn name(&self) -> String {
        self.cpu.name()
    }
    fn timing(&self) -> &'static str {
        "host"
    }
    fn copy_bandwidth(&mut self) -> Option<f64> {
        Some(*self.copy_bw.get_or_insert_with(cpu_copy_bandwidth))
    }
    fn compute_peak(&self, _op: &Op) -> Option<f64> {
        None
    }
    fn set_weights(&mut self, words: &[u32], _layout: (usize, usize, usize)) -> Result<()> {
        self.weights = words.to_vec();
        Ok(())
    }
    fn time(&mut self, op: &Op, inputs: &Inputs<'_>, iters: usize) -> Result<Sampled> {
        let cpu = &self.cpu;
        let args = host_args(inputs, &self.weights);
        match op {
            Op::Lowrank(shape) => {
                let mut out = vec![0.0f32; shape.out_len()];
                sample(iters, || {
                    wall(|| cpu.lowrank_into(shape, &args, &mut out).map(drop))
                })
            }
            Op::Decoder(shape) => {
                let mut out = vec![0.0f32; shape.out_len()];
                sample(iters, || {
                    wall(|| cpu.decoder_tail_into(shape, &args, &mut out).map(drop))
                })
            }
            Op::Quantize(shape) => {
                let mut out = vec![0u32; shape.words_len()];
                sample(iters, || {
                    wall(|| {
                        cpu.quantize_pack_into(
                            inputs.f32s,
                            *shape,
                            FORMAT,
                            ScaleSource::Compute,
                            &mut out,
                        )
                        .map(drop)
                    })
                })
            }
        }
    }
}

/// Any backend through the host-slice trait: upload + kernels + download.
pub struct TraitTimer {
    be: Box<dyn Backend>,
    weights: Vec<u32>,
}

impl TraitTimer {
    pub fn new(be: Box<dyn Backend>) -> Self {
        Self {
            be,
            weights: Vec::new(),
        }
    }
}

impl Timer for TraitTimer {
    fn kind(&self) -> BackendKind {
        self.be.kind()
    }
    fn name(&self) -> String {
        self.be.name()
    }
    fn timing(&self) -> &'static str {
        if self.be.kind() == BackendKind::Cpu {
            "host (Backend trait)"
        } else {
            "incl. transfers"
        }
    }
    fn copy_bandwidth(&mut self) -> Option<f64> {
        None
    }
    fn compute_peak(&self, _op: &Op) -> Option<f64> {
        None
    }
    fn set_weights(&mut self, words: &[u32], _layout: (usize, usize, usize)) -> Result<()> {
        self.weights = words.to_vec();
        Ok(())
    }
    fn time(&mut self, op: &Op, inputs: &Inputs<'_>, iters: usize) -> Result<Sampled> {
        let be = self.be.as_ref();
        let args = host_args(inputs, &self.weights);
        match op {
            Op::Lowrank(shape) => sample(iters, || wall(|| be.lowrank(shape, &args).map(drop))),
            Op::Decoder(shape) => {
                sample(iters, || wall(|| be.decoder_tail(shape, &args).map(drop)))
            }
            Op::Quantize(shape) => sample(iters, || {
                wall(|| {
                    be.quantize_pack_i8x4(inputs.f32s, *shape, FORMAT, ScaleSource::Compute)
                        .map(drop)
                })
            }),
        }
    }
}

#[cfg(feature = "cuda")]
pub use cuda::CudaTimer;

#[cfg(feature = "cuda")]
mod cuda {
    use lowbit_kernels::backend::cuda::cudarc::driver::{CudaSlice, DriverError};
    use lowbit_kernels::backend::cuda::microbench::{
        Ceilings, capture_graph, stream_floor, time_events,
    };
    use lowbit_kernels::backend::cuda::{
        CudaDevice, DeviceAct, DeviceOut, DeviceScale, DeviceWeights, KernelFamily, Pdl,
    };
    use lowbit_kernels::ops::OutputDType;
    use lowbit_kernels::{BackendKind, Epilogue, LowbitError, Result};

    use super::{A_SCALE, COLD_COPIES, COLD_MAX_M, FORMAT, Inputs, Op, Sampled, W_SCALE, sample};

    /// The mma family runs the projections for M above this (see `KernelFamily::Mma`).
    const MMA_MIN_M: usize = 16;

    /// Graph replays per timed sample at small M (each replay runs once per weight copy).
    const GRAPH_REPLAYS: u64 = 4;

    /// CUDA device-resident ops timed with CUDA events.
    pub struct CudaTimer {
        dev: CudaDevice,
        ceilings: Option<Ceilings>,
        weights: Vec<CudaSlice<u32>>,
        /// Weight bytes of the ops timed as graph replays (for the stream floor).
        graph_weight_bytes: std::collections::BTreeSet<usize>,
        /// Time M <= COLD_MAX_M as CUDA graph replays.
        pub graphs: bool,
        /// Upload the (ternary) weights as ternary2 fragments.
        pub ternary2: bool,
        /// The projections' fused epilogue (output dtype, ReLU).
        pub epilogue: Epilogue,
        /// Time M > COLD_MAX_M on an idle stream (the host's launch latency counted) instead
        /// of after an L2 flush.
        pub idle: bool,
        /// The [`FLUSH_BYTES`] zeroed before each timed run at M > COLD_MAX_M.
        flush: Option<CudaSlice<u8>>,
    }

    /// Bytes zeroed on the stream before each timed run at M > COLD_MAX_M, as
    /// `triton.testing.do_bench` (which times the torch peers) zeroes 256 MB before each of
    /// its runs: the L2 starts cold, and the host's launch latency is hidden behind the
    /// memset, for our kernels as for the peer's.
    const FLUSH_BYTES: usize = 256 << 20;

    /// The projections' output buffer, per the epilogue's dtype.
    enum OutBuf {
        F32(CudaSlice<f32>),
        Bits16(CudaSlice<u16>),
    }

    fn driver(context: &str) -> impl FnOnce(DriverError) -> LowbitError + '_ {
        move |e| LowbitError::Driver {
            backend: BackendKind::Cuda,
            context: context.into(),
            message: e.to_string(),
        }
    }

    /// Captures `run(0..runs)` into one CUDA graph ([`capture_graph`]) and times replays with
    /// CUDA events: `GRAPH_REPLAYS` replays back to back per sample, divided by the runs.
    fn time_graph(
        dev: &CudaDevice,
        runs: usize,
        iters: usize,
        run: impl FnMut(usize) -> Result<()>,
    ) -> Result<Sampled> {
        let graph = capture_graph(dev, runs, run)?;
        let per = (GRAPH_REPLAYS as usize * runs) as f64;
        let mut s = sample(iters, || {
            let d = time_events(dev, GRAPH_REPLAYS, || {
                graph.launch().map_err(driver("cuGraphLaunch"))
            })?;
            Ok(d.as_secs_f64() / per)
        })?;
        // The small-M kernels of one replay overlap under programmatic dependent launch.
        // (Frozen weights change what the kernels read before their wait: said too.)
        s.timing = Some(match (dev.programmatic_launch(), dev.frozen_weights()) {
            (Pdl::Off, _) => "device (CUDA graph replay)",
            (Pdl::AfterWait, false) => "device (CUDA graph replay, PDL)",
            (Pdl::AfterWait, true) => "device (CUDA graph replay, PDL, frozen weights)",
            (Pdl::Early, false) => "device (CUDA graph replay, PDL early)",
            (Pdl::Early, true) => "device (CUDA graph replay, PDL early, frozen weights)",
        });
        Ok(s)
    }

    impl CudaTimer {
        pub fn new(ordinal: usize) -> Result<Self> {
            let dev = CudaDevice::new(ordinal)?;
            // The ceilings are a nicety: a failure leaves the columns empty.
            let ceilings = Ceilings::measure(&dev)
                .inspect_err(|e| eprintln!("cuda: ceilings not measured: {e}"))
                .ok();
            Ok(Self {
                dev,
                ceilings,
                weights: Vec::new(),
                graph_weight_bytes: Default::default(),
                graphs: true,
                ternary2: false,
                epilogue: Epilogue::default(),
                idle: false,
                flush: None,
            })
        }
    }

    impl super::Timer for CudaTimer {
        fn kind(&self) -> BackendKind {
            BackendKind::Cuda
        }
        fn name(&self) -> String {
            format!("{} ({:?} kernels)", self.dev.name(), self.dev.family())
        }
        fn timing(&self) -> &'static str {
            "device (CUDA events)"
        }
        fn copy_bandwidth(&mut self) -> Option<f64> {
            self.ceilings.map(|c| c.copy_bytes)
        }
        /// The dp4a ceiling, for the ops that run dp4a kernels: everything under the dp4a
        /// family; under the mma family only quantize and projections at M <= 16 (the crate
        /// measures no tensor-core ceiling, so mma rows show none).
        fn compute_peak(&self, op: &Op) -> Option<f64> {
            let dp4a = match self.dev.family() {
                KernelFamily::Dp4a => true,
                KernelFamily::Mma => matches!(op, Op::Quantize(_)) || op.m() <= MMA_MIN_M,
            };
            self.ceilings.filter(|_| dp4a).map(|c| c.dp4a_ops)
        }
        fn ceiling_name(&self) -> Option<&'static str> {
            Some("dp4a ceiling (dp4a rows only)")
        }
        /// The weight-stream floor ([`stream_floor`]) of each weight size timed as graph
        /// replays, on 1, 2 and 4 blocks per SM: what a chain of dependent ops reading only
        /// their weights would take, timed the same way.
        fn footnotes(&mut self) -> Vec<String> {
            let pdl = match self.dev.programmatic_launch() {
                Pdl::Off => "plain launches",
                Pdl::AfterWait => "PDL",
                Pdl::Early => "PDL early",
            };
            let mut lines = Vec::new();
            for &bytes in &self.graph_weight_bytes {
                let mut line = format!(
                    "weight-stream floor, {:.2} MB per kernel ({COLD_COPIES} copies, CUDA graph replay, {pdl}):",
                    bytes as f64 / 1e6
                );
                for bps in [1, 2, 4] {
                    match stream_floor(&self.dev, bytes, COLD_COPIES, bps, 10) {
                        Ok(m) => {
                            line.push_str(&format!(
                                " {:.2} us at {bps} block(s)/SM",
                                m.seconds * 1e6
                            ));
                            if let Some(c) = self.ceilings {
                                line.push_str(&format!(
                                    " ({:.1}% of copy bw)",
                                    100.0 * m.rate() / c.copy_bytes
                                ));
                            }
                        }
                        Err(e) => line.push_str(&format!(" {bps} block(s)/SM failed: {e}")),
                    }
                }
                lines.push(line);
            }
            lines
        }
        fn set_weights(&mut self, words: &[u32], layout: (usize, usize, usize)) -> Result<()> {
            self.weights.clear();
            let t2;
            let words = if self.ternary2 {
                t2 = lowbit_kernels::pack::pack_ternary2_fragments(
                    words, layout.0, layout.1, layout.2,
                )?;
                &t2[..]
            } else {
                words
            };
            for _ in 0..COLD_COPIES {
                self.weights.push(self.dev.upload(words)?);
            }
            Ok(())
        }
        fn time(&mut self, op: &Op, inputs: &Inputs<'_>, iters: usize) -> Result<Sampled> {
            if !self.idle && self.flush.is_none() && op.m() > COLD_MAX_M {
                // A card without 256 MB to spare times on an idle stream (the label says so).
                match self.dev.alloc_zeros::<u8>(FLUSH_BYTES) {
                    Ok(buf) => self.flush = Some(buf),
                    Err(e) => {
                        eprintln!("cuda: no L2 flush buffer ({e}); timing on an idle stream");
                        self.idle = true;
                    }
                }
            }
            // Allocated only when not idle.
            let mut flush = self.flush.as_mut();
            let timing = flush
                .is_some()
                .then_some("device (CUDA events, after a 256 MB L2 flush)");
            let dev = &self.dev;
            let mut timed = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
                if let Some(buf) = flush.as_deref_mut() {
                    dev.stream()
                        .memset_zeros(buf)
                        .map_err(driver("cuMemsetD8Async"))?;
                }
                Ok(time_events(dev, 1, f)?.as_secs_f64())
            };
            let rotate = if op.m() <= COLD_MAX_M {
                self.weights.len()
            } else {
                1
            };
            let words = if inputs.packed {
                Some(dev.upload(inputs.words)?)
            } else {
                None
            };
            let x = if inputs.f32s.is_empty() {
                None
            } else {
                Some(dev.upload(inputs.f32s)?)
            };
            let mut scale = dev.alloc_zeros::<f32>(1)?;
            let mut k = 0usize;
            let weights = &self.weights;
            match op {
                Op::Lowrank(_) | Op::Decoder(_) => {
                    let out_len = match op {
                        Op::Lowrank(s) => s.out_len(),
                        Op::Decoder(s) => s.out_len(),
                        Op::Quantize(_) => 0,
                    };
                    let e = self.epilogue;
                    let mut out = if e.dtype == OutputDType::F32 {
                        OutBuf::F32(dev.alloc_zeros(out_len)?)
                    } else {
                        OutBuf::Bits16(dev.alloc_zeros(out_len)?)
                    };
                    let t2 = self.ternary2;
                    let mut run = |w: &CudaSlice<u32>| {
                        let w = if t2 {
                            DeviceWeights::Ternary2(w)
                        } else {
                            DeviceWeights::Words(w)
                        };
                        let input = match (&words, &x) {
                            (Some(wd), _) => DeviceAct::Packed(wd),
                            (None, Some(xf)) => DeviceAct::F32(xf),
                            (None, None) => return Err(no_input()),
                        };
                        let sc = if inputs.packed {
                            DeviceScale::Param(A_SCALE)
                        } else {
                            DeviceScale::Compute(&mut scale)
                        };
                        let out = match &mut out {
                            OutBuf::F32(o) => DeviceOut::F32(o),
                            OutBuf::Bits16(o) => DeviceOut::Bits16(o),
                        };
                        match op {
                            Op::Lowrank(s) => {
                                dev.lowrank(s, input, FORMAT, sc, w, W_SCALE, 1, e, out)
                            }
                            Op::Decoder(s) => {
                                dev.decoder_tail(s, input, FORMAT, sc, w, W_SCALE, 1, e, out)
                            }
                            Op::Quantize(_) => Ok(()),
                        }
                    };
                    let s = if self.graphs && rotate > 1 {
                        self.graph_weight_bytes.insert(4 * weights[0].len());
                        time_graph(dev, rotate, iters, |i| run(&weights[i]))?
                    } else {
                        let mut s = sample(iters, || {
                            let w = &weights[k % rotate.max(1)];
                            k += 1;
                            timed(&mut || run(w))
                        })?;
                        s.timing = timing;
                        s
                    };
                    print_traces(dev, op)?;
                    Ok(s)
                }
                Op::Quantize(shape) => {
                    let Some(x) = &x else {
                        return Err(no_input());
                    };
                    let mut out = dev.alloc_zeros::<u32>(shape.words_len())?;
                    let mut s = sample(iters, || {
                        timed(&mut || {
                            dev.quantize_pack_i8x4(
                                x,
                                *shape,
                                FORMAT,
                                DeviceScale::Compute(&mut scale),
                                &mut out,
                            )
                        })
                    })?;
                    s.timing = timing;
                    Ok(s)
                }
            }
        }
    }

    /// Under `LOWBIT_CUDA_TRACE=1`: the timeline of the last timed launch, per kernel (µs from
    /// the earliest block's entry: min / p10 / median / p90 / max over blocks of each stamped
    /// stage), then the blocks that reached the last stage latest, with their SMs. With
    /// `LOWBIT_TRACE_CSV=DIR` every block's stamps also go to `DIR/trace-<n>.csv`. After a
    /// graph replay that is the replay's last kernel, in its steady state: the stamps of each
    /// block index and stage are the last written, and a kernel reaches every stage after the
    /// one before it in the stream did (it enters once that one's blocks are past their PDL
    /// wait, and passes its own wait once that one has ended), so none is mixed in.
    fn print_traces(dev: &CudaDevice, op: &Op) -> Result<()> {
        use lowbit_kernels::backend::cuda::TRACE_SLOTS;
        let traces = dev.take_traces()?;
        // Per kernel, the stamps of the blocks that ran (their SM slot is set), with each
        // block's linear index.
        type Blocks<'a> = Vec<(usize, &'a [u64])>;
        let kernels: Vec<(&String, Blocks)> = traces
            .iter()
            .map(|(name, words)| {
                let ran = words
                    .chunks_exact(TRACE_SLOTS)
                    .enumerate()
                    .filter(|(_, b)| b[TRACE_SLOTS - 1] != 0)
                    .collect();
                (name, ran)
            })
            .collect();
        let t0 = kernels
            .iter()
            .flat_map(|(_, b)| b.iter().map(|(_, b)| b[0]))
            .min();
        let Some(t0) = t0 else { return Ok(()) };
        let us = |t: u64| t.saturating_sub(t0) as f64 / 1e3;
        let mut all: Vec<u64> = Vec::new();
        let mut csv = String::from("kernel,block,sm,stage,us\n");
        eprintln!("trace: {op:?}");
        for (k, (name, blocks)) in kernels.iter().enumerate() {
            let mut sms: Vec<u64> = blocks.iter().map(|(_, b)| b[TRACE_SLOTS - 1]).collect();
            sms.sort_unstable();
            sms.dedup();
            eprintln!("  {name}: {} blocks on {} SMs", blocks.len(), sms.len());
            let mut last = 0;
            for slot in 0..TRACE_SLOTS - 1 {
                let mut t: Vec<f64> = blocks
                    .iter()
                    .filter(|(_, b)| b[slot] != 0)
                    .map(|(_, b)| us(b[slot]))
                    .collect();
                if t.is_empty() {
                    continue;
                }
                last = slot;
                all.extend(blocks.iter().map(|(_, b)| b[slot]).filter(|&x| x != 0));
                t.sort_by(f64::total_cmp);
                let q = |f: f64| t[((t.len() - 1) as f64 * f).round() as usize];
                eprintln!(
                    "    s{slot} min/p10/median/p90/max {:.2} / {:.2} / {:.2} / {:.2} / {:.2}",
                    q(0.0),
                    q(0.1),
                    q(0.5),
                    q(0.9),
                    q(1.0)
                );
            }
            // The blocks that reached the last stage latest: block index, SM, every stage.
            let mut late: Vec<&(usize, &[u64])> = blocks.iter().collect();
            late.sort_by_key(|(_, b)| std::cmp::Reverse(b[last]));
            for (i, b) in late.iter().take(4) {
                let stages: Vec<String> = (0..=last)
                    .filter(|&s| b[s] != 0)
                    .map(|s| format!("s{s} {:.2}", us(b[s])))
                    .collect();
                eprintln!(
                    "    late: block {i} on SM {}: {}",
                    b[TRACE_SLOTS - 1] - 1,
                    stages.join(" ")
                );
            }
            for (i, b) in blocks {
                for s in (0..TRACE_SLOTS - 1).filter(|&s| b[s] != 0) {
                    csv.push_str(&format!(
                        "{k}:{name},{i},{},{s},{:.3}\n",
                        b[TRACE_SLOTS - 1] - 1,
                        us(b[s])
                    ));
                }
            }
        }
        all.sort_unstable();
        all.dedup();
        let tick = all.windows(2).map(|w| w[1] - w[0]).min().unwrap_or(0);
        eprintln!("  (globaltimer: smallest step between distinct stamps {tick} ns)");
        if let Ok(dir) = std::env::var("LOWBIT_TRACE_CSV") {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::path::Path::new(&dir).join(format!("trace-{n}.csv"));
            let csv = format!("# {op:?}\n{csv}");
            std::fs::write(&path, csv).map_err(|source| LowbitError::Io {
                path: path.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }

    fn no_input() -> LowbitError {
        LowbitError::InvalidArgument {
            op: "lowbit bench",
            what: "inputs",
            reason: "no activations for this variant".into(),
        }
    }
}

#[cfg(feature = "wgpu")]
pub use wgpu_timer::WgpuTimer;

#[cfg(feature = "wgpu")]
mod wgpu_timer {
    use std::time::Instant;

    use lowbit_kernels::backend::wgpu::{
        DeviceAct, DeviceScale, DeviceWeights, WgpuDevice, WgpuOptions,
    };
    use lowbit_kernels::ops::OutputDType;
    use lowbit_kernels::{BackendKind, Epilogue, LowbitError, Result};

    use super::{A_SCALE, COLD_COPIES, COLD_MAX_M, FORMAT, Inputs, Op, Sampled, W_SCALE, sample};

    /// wgpu device-resident ops, timed with GPU timestamps where the adapter has them.
    pub struct WgpuTimer {
        dev: WgpuDevice,
        timestamps: bool,
        weights: Vec<DeviceWeights>,
    }

    impl WgpuTimer {
        pub fn new() -> Result<Self> {
            let dev = WgpuDevice::new(WgpuOptions::default())?;
            let timestamps = dev.start_timing().unwrap_or(false);
            Ok(Self {
                dev,
                timestamps,
                weights: Vec::new(),
            })
        }

        /// Seconds of one call of `f`: GPU timestamps, or wall clock between two polls.
        fn once(&self, f: impl FnOnce() -> Result<()>) -> Result<f64> {
            if self.timestamps {
                self.dev.take_gpu_time()?;
                f()?;
                Ok(self.dev.take_gpu_time()?.map_or(0.0, |d| d.as_secs_f64()))
            } else {
                self.dev.synchronize()?;
                let t = Instant::now();
                f()?;
                self.dev.synchronize()?;
                Ok(t.elapsed().as_secs_f64())
            }
        }
    }

    impl Drop for WgpuTimer {
        fn drop(&mut self) {
            self.dev.stop_timing();
        }
    }

    impl super::Timer for WgpuTimer {
        fn kind(&self) -> BackendKind {
            BackendKind::Wgpu
        }
        fn name(&self) -> String {
            self.dev.name()
        }
        fn timing(&self) -> &'static str {
            if self.timestamps {
                "device (GPU timestamps)"
            } else {
                "device (wall + poll)"
            }
        }
        fn copy_bandwidth(&mut self) -> Option<f64> {
            None
        }
        fn compute_peak(&self, _op: &Op) -> Option<f64> {
            None
        }
        fn set_weights(&mut self, words: &[u32], _layout: (usize, usize, usize)) -> Result<()> {
            self.weights.clear();
            for _ in 0..COLD_COPIES {
                self.weights
                    .push(self.dev.upload_weights(words, W_SCALE, 1)?);
            }
            Ok(())
        }
        fn time(&mut self, op: &Op, inputs: &Inputs<'_>, iters: usize) -> Result<Sampled> {
            let dev = &self.dev;
            let rotate = if op.m() <= COLD_MAX_M {
                self.weights.len()
            } else {
                1
            };
            let words = if inputs.packed {
                Some(dev.upload(inputs.words)?)
            } else {
                None
            };
            let x = if inputs.f32s.is_empty() {
                None
            } else {
                Some(dev.upload(inputs.f32s)?)
            };
            let scale = dev.alloc::<f32>(1)?;
            let input = match (&words, &x) {
                (Some(wd), _) => DeviceAct::Packed(wd),
                (None, Some(xf)) => DeviceAct::F32(xf),
                (None, None) => return Err(no_input()),
            };
            let sc = if inputs.packed {
                DeviceScale::Host(A_SCALE)
            } else {
                DeviceScale::Compute(&scale)
            };
            let mut k = 0usize;
            match op {
                Op::Lowrank(s) => {
                    let out = dev.alloc_output(OutputDType::F32, s.out_len())?;
                    sample(iters, || {
                        let w = &self.weights[k % rotate.max(1)];
                        k += 1;
                        self.once(|| {
                            dev.lowrank_into(s, input, FORMAT, sc, w, Epilogue::default(), &out)
                        })
                    })
                }
                Op::Decoder(s) => {
                    let out = dev.alloc_output(OutputDType::F32, s.out_len())?;
                    sample(iters, || {
                        let w = &self.weights[k % rotate.max(1)];
                        k += 1;
                        self.once(|| {
                            dev.decoder_tail_into(
                                s,
                                input,
                                FORMAT,
                                sc,
                                w,
                                Epilogue::default(),
                                &out,
                            )
                        })
                    })
                }
                Op::Quantize(shape) => {
                    let Some(x) = &x else {
                        return Err(no_input());
                    };
                    let out = dev.alloc::<u32>(shape.words_len())?;
                    sample(iters, || {
                        self.once(|| {
                            dev.quantize_pack_i8x4_into(
                                x,
                                *shape,
                                FORMAT,
                                DeviceScale::Compute(&scale),
                                &out,
                            )
                        })
                    })
                }
            }
        }
    }

    fn no_input() -> LowbitError {
        LowbitError::InvalidArgument {
            op: "lowbit bench",
            what: "inputs",
            reason: "no activations for this variant".into(),
        }
    }
}
