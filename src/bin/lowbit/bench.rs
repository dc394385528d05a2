//! `lowbit bench`: times the ops at BDH shapes on each backend.
//!
//! Timing goes through the host-slice [`Backend`] trait: for the CPU that is the backend's own
//! API (no copies beyond the output vector); for GPU backends it includes upload and download,
//! and rows say so ("incl. transfers").

use std::io::IsTerminal as _;
use std::io::Write as _;
use std::time::Instant;

use lowbit_kernels::backend::cpu::CpuBackend;
use lowbit_kernels::backend::{self, ProjectionArgs};
use lowbit_kernels::ops::quantize::QuantizeShape;
use lowbit_kernels::testing::Rng;
use lowbit_kernels::{
    ActInput, Backend, BackendKind, DecoderTailShape, Epilogue, LowBitActivationFormat,
    LowbitError, LowrankShape, ScaleSource,
};

use crate::args::{Args, parse_backends};
use crate::json::{Json, obj};
use crate::table;

pub const USAGE: &str = "lowbit bench [--backend cpu|cuda|wgpu|all] [--op lowrank|decoder-tail|quantize|all]
             [--variant packed|f32|all] [--m 1,16,512,2048,8192] [--d 256] [--h 4] [--n 8192]
             [--iters K] [--json FILE] [--peers FILE]
  Times each op at BDH shapes (tokens M, embedding D, heads H, latent N):
    lowrank       x[1,1,M,D] . W[H,D,N]   -> [1,H,M,N]   (2*M*H*D*N int ops)
    decoder-tail  y[1,H,M,N] . W[H*N,D]   -> [1,1,M,D]   (2*M*H*N*D int ops)
    quantize      y[1,H,M,N] f32 -> int8x4 words, scale on the backend
  variants: packed = prepacked int8x4 input + host scale (the GEMM alone);
            f32 = f32 input quantized inside the op, scale computed by the backend.
  Weights are ternary. Time is the median of K runs (default: >= 3 runs and >= 0.3 s).
  GB/s counts input + weights + output once; '% bw' is that over this device's measured copy
  bandwidth (CPU: a parallel memcpy microbenchmark), '% peak' the int ops over the measured
  compute ceiling where one is known. GPU rows go through the host-slice Backend trait and are
  labelled 'incl. transfers'.
  --peers FILE adds a column 'vs NAME' = peer time / lowbit time (> 1: lowbit is faster) for
  every peer in FILE, a JSON list of {\"op\", \"m\", \"name\", \"us\"} (optionally \"d\", \"h\", \"n\"),
  e.g. written by benches/peers/torch_peer.py on the same card.
  --json FILE writes the rows (and the peer ratios) as JSON.";

const OPS: [&str; 3] = ["lowrank", "decoder-tail", "quantize"];

#[derive(Clone, Debug)]
struct Peer {
    op: String,
    m: usize,
    name: String,
    us: f64,
    dhn: [Option<usize>; 3],
}

#[derive(Clone, Debug)]
struct BenchRow {
    backend: BackendKind,
    device: String,
    op: &'static str,
    variant: &'static str,
    m: usize,
    shape: String,
    iters: usize,
    median_s: f64,
    min_s: f64,
    int_ops: Option<u64>,
    bytes: u64,
    copy_bw: Option<f64>,
    compute_peak: Option<f64>,
    timing: &'static str,
    peers: Vec<(String, f64)>,
}

impl BenchRow {
    fn tops(&self) -> Option<f64> {
        self.int_ops.map(|ops| ops as f64 / self.median_s / 1e12)
    }
    fn gbps(&self) -> f64 {
        self.bytes as f64 / self.median_s / 1e9
    }
    fn pct_bw(&self) -> Option<f64> {
        self.copy_bw
            .map(|bw| 100.0 * self.bytes as f64 / self.median_s / bw)
    }
    fn pct_peak(&self) -> Option<f64> {
        match (self.int_ops, self.compute_peak) {
            (Some(ops), Some(peak)) => Some(100.0 * ops as f64 / self.median_s / peak),
            _ => None,
        }
    }
}

fn normalize_op(op: &str) -> String {
    op.trim().to_ascii_lowercase().replace('_', "-")
}

fn load_peers(path: &str) -> Result<Vec<Peer>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--peers {path}: {e}"))?;
    let json = crate::json::Json::parse(&text).map_err(|e| format!("--peers {path}: {e}"))?;
    // A bare list, or an object holding it under "peers" / "results" / "rows".
    let list = json
        .as_array()
        .or_else(|| {
            ["peers", "results", "rows"]
                .iter()
                .find_map(|k| json.get(k).and_then(Json::as_array))
        })
        .ok_or_else(|| {
            format!("--peers {path}: expected a JSON list of {{\"op\", \"m\", \"name\", \"us\"}}")
        })?;
    let dim = |e: &Json, k: &str| e.get(k).and_then(Json::as_f64).map(|v| v as usize);
    list.iter()
        .enumerate()
        .map(|(i, e)| {
            let field = |k: &str| format!("--peers {path}: entry {i} lacks {k:?}");
            Ok(Peer {
                op: normalize_op(
                    e.get("op")
                        .and_then(Json::as_str)
                        .ok_or_else(|| field("op"))?,
                ),
                m: dim(e, "m").ok_or_else(|| field("m"))?,
                name: e
                    .get("name")
                    .and_then(Json::as_str)
                    .ok_or_else(|| field("name"))?
                    .to_string(),
                us: e
                    .get("us")
                    .and_then(Json::as_f64)
                    .filter(|v| *v > 0.0)
                    .ok_or_else(|| field("us (> 0)"))?,
                dhn: [dim(e, "d"), dim(e, "h"), dim(e, "n")],
            })
        })
        .collect()
}

/// Parallel memcpy bandwidth of this machine in bytes/s (read + write counted).
fn cpu_copy_bandwidth() -> f64 {
    use rayon::prelude::*;
    const LEN: usize = 32 << 20; // 32 Mi u64 = 256 MiB per buffer
    let src: Vec<u64> = (0..LEN as u64).collect();
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

struct Progress {
    total: usize,
    done: usize,
    tty: bool,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        self.show(what);
    }
    fn show(&self, what: &str) {
        let width = 24;
        let filled = width * self.done.saturating_sub(1) / self.total.max(1);
        let bar = format!("{}{}", "#".repeat(filled), ".".repeat(width - filled));
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K[{bar}] {}/{} {what}", self.done, self.total);
        } else {
            let _ = writeln!(err, "[{}/{}] {what}", self.done, self.total);
        }
        let _ = err.flush();
    }
    fn finish(&self) {
        if self.tty {
            eprint!("\r\x1b[2K");
        }
    }
}

/// Median and minimum of `iters` timed runs of `f` after one warm-up run (which also checks
/// that `f` works). `iters == 0` means adaptive: at least 3 runs and 0.3 s, at most 1000 runs.
fn time_it(
    iters: usize,
    mut f: impl FnMut() -> lowbit_kernels::Result<()>,
) -> lowbit_kernels::Result<(f64, f64, usize)> {
    f()?;
    let mut times = Vec::new();
    let start = Instant::now();
    loop {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
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
    Ok((times[times.len() / 2], times[0], times.len()))
}

/// Random int8 codes in [-127, 127], 8 per RNG draw.
fn int8_words(rng: &mut Rng, words: usize) -> Vec<u32> {
    (0..words)
        .map(|_| {
            let bytes = (rng.next_u64() as u32).to_le_bytes();
            u32::from_le_bytes(bytes.map(|b| if b == 0x80 { 0x81 } else { b }))
        })
        .collect()
}

fn f32s(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.range(-2.0, 2.0)).collect()
}

/// A backend to time: the CPU through its own `*_into` API (preallocated outputs, nothing
/// but the op in the timed region), any other through the host-slice trait.
enum Runner {
    Cpu(CpuBackend),
    Trait(Box<dyn Backend>),
}

impl Runner {
    fn as_cpu(&self) -> Option<&CpuBackend> {
        match self {
            Self::Cpu(cpu) => Some(cpu),
            Self::Trait(_) => None,
        }
    }
    fn lowrank(
        &self,
        shape: &LowrankShape,
        args: &ProjectionArgs<'_>,
    ) -> lowbit_kernels::Result<lowbit_kernels::ProjectionOutput> {
        match self {
            Self::Cpu(cpu) => cpu.lowrank(shape, args),
            Self::Trait(be) => be.lowrank(shape, args),
        }
    }
    fn decoder_tail(
        &self,
        shape: &DecoderTailShape,
        args: &ProjectionArgs<'_>,
    ) -> lowbit_kernels::Result<lowbit_kernels::ProjectionOutput> {
        match self {
            Self::Cpu(cpu) => cpu.decoder_tail(shape, args),
            Self::Trait(be) => be.decoder_tail(shape, args),
        }
    }
    fn quantize_pack_i8x4(
        &self,
        x: &[f32],
        shape: QuantizeShape,
        format: LowBitActivationFormat,
        scale: ScaleSource,
    ) -> lowbit_kernels::Result<(Vec<u32>, f32)> {
        match self {
            Self::Cpu(cpu) => cpu.quantize_pack_i8x4(x, shape, format, scale),
            Self::Trait(be) => be.quantize_pack_i8x4(x, shape, format, scale),
        }
    }
    fn kind(&self) -> BackendKind {
        match self {
            Self::Cpu(cpu) => cpu.kind(),
            Self::Trait(be) => be.kind(),
        }
    }
    fn name(&self) -> String {
        match self {
            Self::Cpu(cpu) => cpu.name(),
            Self::Trait(be) => be.name(),
        }
    }
}

struct Dims {
    d: usize,
    h: usize,
    n: usize,
}

#[allow(clippy::too_many_arguments)]
fn bench_one(
    be: &Runner,
    op: &'static str,
    variant: &'static str,
    m: usize,
    dims: &Dims,
    iters: usize,
    rng: &mut Rng,
) -> lowbit_kernels::Result<(String, Option<u64>, u64, f64, f64, usize)> {
    let Dims { d, h, n } = *dims;
    let fmt = LowBitActivationFormat::Int8;
    let packed = variant == "packed";
    let scale = if packed {
        ScaleSource::Param(0.01)
    } else {
        ScaleSource::Compute
    };
    match op {
        "lowrank" => {
            let shape = LowrankShape::bdh(m, h, d, n)?;
            let codes = rng.ternary(shape.w_len());
            let w = lowbit_kernels::pack_lowrank_weight_codes_i8x4(&codes, h, d, n)?;
            drop(codes);
            let xw = if packed {
                int8_words(rng, shape.x_words_len())
            } else {
                Vec::new()
            };
            let xf = if packed {
                Vec::new()
            } else {
                f32s(rng, shape.x_len())
            };
            let input = if packed {
                ActInput::Packed(&xw)
            } else {
                ActInput::F32(&xf)
            };
            let args = ProjectionArgs {
                input,
                format: fmt,
                scale,
                w_words: &w,
                w_scale: 0.02,
                w_qmax: 1,
                epilogue: Epilogue::default(),
            };
            let in_bytes = if packed { xw.len() * 4 } else { xf.len() * 4 };
            let bytes = (in_bytes + w.len() * 4 + shape.out_len() * 4) as u64;
            let (med, min, k) = match be.as_cpu() {
                Some(cpu) => {
                    let mut out = vec![0.0f32; shape.out_len()];
                    time_it(iters, || {
                        cpu.lowrank_into(&shape, &args, &mut out).map(drop)
                    })?
                }
                None => time_it(iters, || be.lowrank(&shape, &args).map(drop))?,
            };
            Ok((
                format!("x[1,1,{m},{d}] w[{h},{d},{n}]"),
                Some(shape.int_ops()),
                bytes,
                med,
                min,
                k,
            ))
        }
        "decoder-tail" => {
            let shape = DecoderTailShape::bdh(m, h, n, d)?;
            let codes = rng.ternary(shape.w_len());
            let w = lowbit_kernels::pack_decoder_weight_codes_i8x4(&codes, h, n, d)?;
            drop(codes);
            let yw = if packed {
                int8_words(rng, shape.y_words_len())
            } else {
                Vec::new()
            };
            let yf = if packed {
                Vec::new()
            } else {
                f32s(rng, shape.y_len())
            };
            let input = if packed {
                ActInput::Packed(&yw)
            } else {
                ActInput::F32(&yf)
            };
            let args = ProjectionArgs {
                input,
                format: fmt,
                scale,
                w_words: &w,
                w_scale: 0.02,
                w_qmax: 1,
                epilogue: Epilogue::default(),
            };
            let in_bytes = if packed { yw.len() * 4 } else { yf.len() * 4 };
            let bytes = (in_bytes + w.len() * 4 + shape.out_len() * 4) as u64;
            let (med, min, k) = match be.as_cpu() {
                Some(cpu) => {
                    let mut out = vec![0.0f32; shape.out_len()];
                    time_it(iters, || {
                        cpu.decoder_tail_into(&shape, &args, &mut out).map(drop)
                    })?
                }
                None => time_it(iters, || be.decoder_tail(&shape, &args).map(drop))?,
            };
            Ok((
                format!("y[1,{h},{m},{n}] w[{},{d}]", h * n),
                Some(shape.int_ops()),
                bytes,
                med,
                min,
                k,
            ))
        }
        _ => {
            let shape = QuantizeShape::new(h * m, n)?;
            let y = f32s(rng, shape.len());
            let bytes = (shape.len() * 4 + shape.words_len() * 4) as u64;
            let (med, min, k) = match be.as_cpu() {
                Some(cpu) => {
                    let mut out = vec![0u32; shape.words_len()];
                    time_it(iters, || {
                        cpu.quantize_pack_into(&y, shape, fmt, ScaleSource::Compute, &mut out)
                            .map(drop)
                    })?
                }
                None => time_it(iters, || {
                    be.quantize_pack_i8x4(&y, shape, fmt, ScaleSource::Compute)
                        .map(drop)
                })?,
            };
            Ok((format!("y[1,{h},{m},{n}]"), None, bytes, med, min, k))
        }
    }
}

pub fn main(tokens: &[String]) -> Result<i32, String> {
    let args = Args::parse(
        tokens,
        &[
            "backend", "op", "variant", "m", "d", "h", "n", "iters", "json", "peers",
        ],
        &[],
    )?;
    args.at_most_positional(0)?;
    let kinds = parse_backends(args.value("backend"))?;
    let ops: Vec<&'static str> = match args.value("op").map(normalize_op).as_deref() {
        None | Some("all") => OPS.to_vec(),
        Some(list) => list
            .split(',')
            .map(|o| {
                OPS.iter().copied().find(|k| *k == o.trim()).ok_or_else(|| {
                    format!("--op: unknown op {o:?} (lowrank, decoder-tail, quantize, all)")
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let variants: Vec<&'static str> = match args.value("variant") {
        None | Some("all") => vec!["packed", "f32"],
        Some("packed") => vec!["packed"],
        Some("f32") => vec!["f32"],
        Some(v) => return Err(format!("--variant: unknown {v:?} (packed, f32, all)")),
    };
    let ms = args.numbers("m", &[1, 16, 512, 2048, 8192])?;
    let dims = Dims {
        d: args.number("d", 256)?,
        h: args.number("h", 4)?,
        n: args.number("n", 8192)?,
    };
    if dims.d == 0 || dims.h == 0 || dims.n == 0 {
        return Err("--d, --h and --n must be positive".into());
    }
    let iters: usize = args.number("iters", 0)?;
    let peers = match args.value("peers") {
        Some(p) => load_peers(p)?,
        None => Vec::new(),
    };
    let mut peer_names: Vec<String> = Vec::new();
    for p in &peers {
        if !peer_names.contains(&p.name) {
            peer_names.push(p.name.clone());
        }
    }

    let required = lowbit_kernels::testing::required_backends();
    let mut backends: Vec<Runner> = Vec::new();
    let mut failed = false;
    for &kind in &kinds {
        if kind == BackendKind::Cpu {
            backends.push(Runner::Cpu(CpuBackend::new()));
            continue;
        }
        match backend::open(kind) {
            Ok(be) => backends.push(Runner::Trait(be)),
            Err(LowbitError::BackendUnavailable { reason, .. }) if !required.contains(&kind) => {
                eprintln!("skipping {kind}: {reason}");
            }
            Err(e) => {
                eprintln!("lowbit bench: {kind}: {e}");
                failed = true;
            }
        }
    }
    let per_op = |op: &str| if op == "quantize" { 1 } else { variants.len() };
    let total = backends.len() * ms.len() * ops.iter().map(|o| per_op(o)).sum::<usize>();
    let mut progress = Progress {
        total,
        done: 0,
        tty: std::io::stderr().is_terminal(),
    };
    let mut rows = Vec::new();
    let mut rng = Rng::new(7);
    for be in &backends {
        let kind = be.kind();
        let (copy_bw, compute_peak, timing) = match kind {
            BackendKind::Cpu => {
                progress.show("cpu: measuring copy bandwidth");
                (Some(cpu_copy_bandwidth()), None, "host")
            }
            _ => (None, None, "incl. transfers"),
        };
        for &op in &ops {
            let op_variants: Vec<&'static str> = if op == "quantize" {
                vec!["f32"]
            } else {
                variants.clone()
            };
            for &variant in &op_variants {
                for &m in &ms {
                    progress.step(&format!("{kind} {op} {variant} m={m}"));
                    match bench_one(be, op, variant, m, &dims, iters, &mut rng) {
                        Ok((shape, int_ops, bytes, median_s, min_s, iters)) => {
                            let mut row = BenchRow {
                                backend: kind,
                                device: be.name(),
                                op,
                                variant,
                                m,
                                shape,
                                iters,
                                median_s,
                                min_s,
                                int_ops,
                                bytes,
                                copy_bw,
                                compute_peak,
                                timing,
                                peers: Vec::new(),
                            };
                            for name in &peer_names {
                                let hit = peers.iter().find(|p| {
                                    &p.name == name
                                        && p.op == op
                                        && p.m == m
                                        && [dims.d, dims.h, dims.n]
                                            .iter()
                                            .zip(p.dhn)
                                            .all(|(&ours, theirs)| theirs.is_none_or(|t| t == ours))
                                });
                                if let Some(p) = hit {
                                    row.peers.push((name.clone(), p.us * 1e-6 / row.median_s));
                                }
                            }
                            rows.push(row);
                        }
                        Err(e) => {
                            progress.finish();
                            eprintln!("lowbit bench: {kind} {op} {variant} m={m}: {e}");
                            failed = true;
                        }
                    }
                }
            }
        }
    }
    progress.finish();

    let mut header: Vec<String> = [
        "backend", "op", "variant", "M", "shape", "time", "min", "TOPS", "GB/s", "% bw", "% peak",
        "timing",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    header.extend(peer_names.iter().map(|n| format!("vs {n}")));
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut c = vec![
                r.backend.to_string(),
                r.op.to_string(),
                r.variant.to_string(),
                r.m.to_string(),
                r.shape.clone(),
                table::fmt_duration(r.median_s),
                table::fmt_duration(r.min_s),
                r.tops().map_or("-".into(), |t| format!("{t:.3}")),
                format!("{:.1}", r.gbps()),
                r.pct_bw().map_or("-".into(), pct),
                r.pct_peak().map_or("-".into(), pct),
                r.timing.to_string(),
            ];
            for name in &peer_names {
                c.push(
                    r.peers
                        .iter()
                        .find(|(n, _)| n == name)
                        .map_or("-".into(), |(_, ratio)| format!("{ratio:.2}x")),
                );
            }
            c
        })
        .collect();
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    print!("{}", table::render(&header_refs, &cells));
    for be in &backends {
        if be.kind() == BackendKind::Cpu
            && let Some(r) = rows.iter().find(|r| r.backend == BackendKind::Cpu)
            && let Some(bw) = r.copy_bw
        {
            println!(
                "cpu: {} threads, copy bandwidth {:.1} GB/s (read+write, parallel memcpy)",
                rayon::current_num_threads(),
                bw / 1e9
            );
        } else if be.kind() != BackendKind::Cpu {
            println!(
                "{}: {} (timed through the host-slice Backend trait: upload + kernel + download)",
                be.kind(),
                be.name()
            );
        }
    }
    if !peer_names.is_empty() {
        println!("vs NAME = peer time / lowbit time (> 1: lowbit is faster)");
    }

    if let Some(path) = args.value("json") {
        let json = obj([
            ("date", today().into()),
            ("d", dims.d.into()),
            ("h", dims.h.into()),
            ("n", dims.n.into()),
            ("rows", Json::Arr(rows.iter().map(row_json).collect())),
        ]);
        std::fs::write(path, json.pretty()).map_err(|e| format!("--json {path}: {e}"))?;
        eprintln!("wrote {path}");
    }
    Ok(if failed { 1 } else { 0 })
}

fn pct(p: f64) -> String {
    if p < 10.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.0}%")
    }
}

fn row_json(r: &BenchRow) -> Json {
    obj([
        ("backend", r.backend.as_str().into()),
        ("device", r.device.clone().into()),
        ("op", r.op.into()),
        ("variant", r.variant.into()),
        ("m", r.m.into()),
        ("shape", r.shape.clone().into()),
        ("iters", r.iters.into()),
        ("us", (r.median_s * 1e6).into()),
        ("us_min", (r.min_s * 1e6).into()),
        ("int_ops", r.int_ops.into()),
        ("bytes", r.bytes.into()),
        ("tops", r.tops().into()),
        ("gbps", r.gbps().into()),
        ("pct_copy_bandwidth", r.pct_bw().into()),
        ("pct_compute_peak", r.pct_peak().into()),
        ("timing", r.timing.into()),
        (
            "peers",
            Json::Obj(
                r.peers
                    .iter()
                    .map(|(n, ratio)| (n.clone(), Json::from(*ratio)))
                    .collect(),
            ),
        ),
    ])
}

/// Today's UTC date as `YYYY-MM-DD` (civil-from-days, no time crate).
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
