//! `lowbit bench`: times the ops at BDH shapes on each backend, each through its own fastest
//! API (see `timers.rs`), and prints time, TOPS, GB/s, the share of the measured ceilings and
//! the ratio to peer timings.

use std::io::IsTerminal as _;
use std::io::Write as _;

use lowbit_kernels::backend;
use lowbit_kernels::ops::quantize::QuantizeShape;
use lowbit_kernels::ops::{Epilogue, OutputDType};
use lowbit_kernels::testing::Rng;
use lowbit_kernels::{BackendKind, DecoderTailShape, LowbitError, LowrankShape};

use crate::args::{Args, parse_backends};
use crate::json::{Json, obj};
use crate::table;
use crate::timers::{CpuTimer, Inputs, Op, Timer, TraitTimer};

pub const USAGE: &str = "lowbit bench [--backend cpu|cuda|wgpu|all] [--op lowrank|decoder-tail|quantize|all]
             [--variant packed|f32|all] [--m 1,16,512,2048,8192] [--d 256] [--h 4] [--n 8192]
             [--iters K] [--json FILE] [--peers FILE] [--transfers] [--no-graph]
             [--idle] [--weights i8x4|ternary2] [--out f32|f16|bf16] [--relu]
  Times each op at BDH shapes (tokens M, embedding D, heads H, latent N):
    lowrank       x[1,1,M,D] . W[H,D,N]   -> [1,H,M,N]   (2*M*H*D*N int ops)
    decoder-tail  y[1,H,M,N] . W[H*N,D]   -> [1,1,M,D]   (2*M*H*N*D int ops)
    quantize      y[1,H,M,N] f32 -> int8x4 words, scale computed on the backend
  variants: packed = prepacked int8x4 input + host scale (the GEMM alone);
            f32 = f32 input quantized inside the op, scale computed by the backend.
  Weights are ternary, uploaded once, as i8x4 words (one byte per weight), or with
  --weights ternary2 (CUDA on sm_80+ only) as 2-bit ternary2 fragments (variants *-t2). Each backend is timed through its own API: the CPU's
  `*_into` functions (wall clock), CUDA's device-resident ops (CUDA events), wgpu's
  device-resident ops (GPU timestamps, else wall clock around a blocking poll); at M <= 16 the
  GPUs rotate through 8 weight copies so the weights come from DRAM, not a warm L2, and CUDA
  times them as replays of a CUDA graph of 8 runs (4 replays per sample, so the host's launch
  latency is not counted; --no-graph times single launches instead; 'PDL' in the timing
  column: on sm_90+ each run's kernels may start while the previous run's finish, see
  LOWBIT_CUDA_PDL). After such rows CUDA prints the weight-stream floor of each weight size:
  the same graph replay of kernels that only read their weights once (1, 2, 4 blocks/SM).
  Above M = 16 CUDA zeroes 256 MB on the stream before each timed run, as
  triton.testing.do_bench does for the torch peers: the L2 starts cold and the host's launch
  latency is hidden behind the memset ('after a 256 MB L2 flush'); --idle times each run on an
  idle stream instead (the host's launch latency counted).
  --out f16|bf16 and --relu (CUDA's device API only) time the projections with that fused
  epilogue (variants *-bf16, *-relu); the output bytes count 2 per element then.
  --transfers times every backend through the host-slice Backend trait instead (upload +
  kernels + download). Time is the median of K runs (default: >= 3 runs and >= 0.3 s).
  GB/s counts input + weights + output once; '% bw' is that over the device's measured copy
  bandwidth (CPU: a parallel memcpy; CUDA: the crate's copy kernel), '% peak' the int ops over
  the measured dp4a ceiling (CUDA). A case beyond a device limit is skipped with the reason.
  --peers FILE adds a column 'vs NAME' = peer time / lowbit time (> 1: lowbit is faster) for
  every peer in FILE, a JSON list of {\"op\", \"m\", \"name\", \"us\"} (optionally \"d\", \"h\", \"n\"),
  e.g. written by benches/peers/torch_peer.py on the same card.
  --json FILE writes the rows (and the peer ratios) as JSON.";

const OPS: [&str; 3] = ["lowrank", "decoder-tail", "quantize"];

/// One peer timing. Shape fields that are present must match the bench's shape.
#[derive(Clone, Debug)]
struct Peer {
    op: String,
    m: usize,
    name: String,
    us: f64,
    /// `d`, `h`, `n` of the BDH shape.
    dhn: [Option<usize>; 3],
    /// The GEMM's `k` and `n` (torch_peer.py's cases: lowrank `k = D, n = H·N`, decoder
    /// tail `k = H·N, n = D`).
    kn: [Option<usize>; 2],
}

impl Peer {
    fn fits(&self, op: &str, m: usize, dims: &Dims) -> bool {
        let kn = match op {
            "lowrank" => [dims.d, dims.h * dims.n],
            _ => [dims.h * dims.n, dims.d],
        };
        let same = |theirs: Option<usize>, ours: usize| theirs.is_none_or(|t| t == ours);
        self.op == op
            && self.m == m
            && [dims.d, dims.h, dims.n]
                .iter()
                .zip(self.dhn)
                .all(|(&o, t)| same(t, o))
            && kn.iter().zip(self.kn).all(|(&o, t)| same(t, o))
    }
}

#[derive(Clone, Debug)]
struct BenchRow {
    backend: BackendKind,
    device: String,
    op: &'static str,
    variant: String,
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

/// Reads a peers file: a list of `{"op", "m", "name", "us"}` (optionally `"d"`, `"h"`,
/// `"n"`), or `benches/peers/torch_peer.py`'s `{"cases": [{"op", "m", "k", "n",
/// "<name>_ms": ...}]}` (one peer per `*_ms` key).
fn load_peers(path: &str) -> Result<Vec<Peer>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--peers {path}: {e}"))?;
    let json = crate::json::Json::parse(&text).map_err(|e| format!("--peers {path}: {e}"))?;
    let list = json
        .as_array()
        .or_else(|| {
            ["cases", "peers", "results", "rows"]
                .iter()
                .find_map(|k| json.get(k).and_then(Json::as_array))
        })
        .ok_or_else(|| {
            format!(
                "--peers {path}: expected a JSON list of {{\"op\", \"m\", \"name\", \"us\"}} \
                 or torch_peer.py's {{\"cases\": [...]}}"
            )
        })?;
    let num = |e: &Json, k: &str| e.get(k).and_then(Json::as_f64);
    let dim = |e: &Json, k: &str| num(e, k).map(|v| v as usize);
    let mut peers = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let field = |k: &str| format!("--peers {path}: entry {i} lacks {k:?}");
        let op = normalize_op(
            e.get("op")
                .and_then(Json::as_str)
                .ok_or_else(|| field("op"))?,
        );
        let m = dim(e, "m").ok_or_else(|| field("m"))?;
        let base = Peer {
            op,
            m,
            name: String::new(),
            us: 0.0,
            dhn: [dim(e, "d"), dim(e, "h"), dim(e, "n")],
            kn: [None, None],
        };
        if let Some(name) = e.get("name").and_then(Json::as_str) {
            let us = num(e, "us")
                .filter(|v| *v > 0.0)
                .ok_or_else(|| field("us (> 0)"))?;
            peers.push(Peer {
                name: name.to_string(),
                us,
                ..base
            });
            continue;
        }
        let Json::Obj(pairs) = e else {
            return Err(field("name"));
        };
        // torch_peer.py: `k`/`n` are the GEMM's, and every `<name>_ms` is one peer.
        let timed: Vec<(String, f64)> = pairs
            .iter()
            .filter_map(|(k, v)| Some((k.strip_suffix("_ms")?.to_string(), v.as_f64()?)))
            .filter(|(_, ms)| *ms > 0.0)
            .collect();
        if timed.is_empty() {
            return Err(field("name and us, or <name>_ms"));
        }
        for (name, ms) in timed {
            peers.push(Peer {
                name,
                us: ms * 1e3,
                dhn: [None; 3],
                kn: [dim(e, "k"), dim(e, "n")],
                ..base.clone()
            });
        }
    }
    Ok(peers)
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

/// Random int8 codes in [-127, 127] packed in rows of `k` elements (`ceil(k/4)` words, the
/// padding lanes past `k` zero, as the packers write them).
fn int8_words(rng: &mut Rng, words: usize, k: usize) -> Vec<u32> {
    let kw = k.div_ceil(4).max(1);
    let last = match k % 4 {
        0 => u32::MAX,
        r => (1u32 << (8 * r)) - 1,
    };
    (0..words)
        .map(|i| {
            let bytes = (rng.next_u64() as u32).to_le_bytes();
            let w = u32::from_le_bytes(bytes.map(|b| if b == 0x80 { 0x81 } else { b }));
            if (i + 1) % kw == 0 { w & last } else { w }
        })
        .collect()
}

fn f32s(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.range(-2.0, 2.0)).collect()
}

struct Dims {
    d: usize,
    h: usize,
    n: usize,
}

/// Host data of one op at one M: the op's shape, its activations, int ops and bytes moved.
struct CaseData {
    op: Op,
    shape: String,
    words: Vec<u32>,
    f32s: Vec<f32>,
    int_ops: Option<u64>,
    bytes: u64,
}

fn case_data(
    op: &str,
    packed: bool,
    ternary2: bool,
    epilogue: Epilogue,
    m: usize,
    dims: &Dims,
    rng: &mut Rng,
) -> lowbit_kernels::Result<CaseData> {
    let Dims { d, h, n } = *dims;
    let (op, shape, act_len, act_words, w_words, out_len, int_ops) = match op {
        "lowrank" => {
            let s = LowrankShape::bdh(m, h, d, n)?;
            let text = format!("x[1,1,{m},{d}] w[{h},{d},{n}]");
            let (xl, xw, ww, ol, ops) = (
                s.x_len(),
                s.x_words_len(),
                if ternary2 {
                    s.w_ternary2_len()
                } else {
                    s.w_words_len()
                },
                s.out_len(),
                s.int_ops(),
            );
            (Op::Lowrank(s), text, xl, xw, ww, ol, Some(ops))
        }
        "decoder-tail" => {
            let s = DecoderTailShape::bdh(m, h, n, d)?;
            let text = format!("y[1,{h},{m},{n}] w[{},{d}]", h * n);
            let (yl, yw, ww, ol, ops) = (
                s.y_len(),
                s.y_words_len(),
                if ternary2 {
                    s.w_ternary2_len()
                } else {
                    s.w_words_len()
                },
                s.out_len(),
                s.int_ops(),
            );
            (Op::Decoder(s), text, yl, yw, ww, ol, Some(ops))
        }
        _ => {
            let s = QuantizeShape::new(h * m, n)?;
            let text = format!("y[1,{h},{m},{n}]");
            (Op::Quantize(s), text, s.len(), 0, 0, s.words_len(), None)
        }
    };
    let quantize = matches!(op, Op::Quantize(_));
    let (words, f32s) = if packed && !quantize {
        let k = match &op {
            Op::Lowrank(s) => s.embd,
            Op::Decoder(s) => s.latent,
            Op::Quantize(_) => 0,
        };
        (int8_words(rng, act_words, k), Vec::new())
    } else {
        (Vec::new(), f32s(rng, act_len))
    };
    // Input + weights (i8x4 or ternary2 words) + output, once each; quantize writes words.
    let in_bytes = 4 * (words.len() + f32s.len());
    let out_elem = if quantize || epilogue.dtype == OutputDType::F32 {
        4
    } else {
        2
    };
    let bytes = (in_bytes + 4 * w_words + out_elem * out_len) as u64;
    Ok(CaseData {
        op,
        shape,
        words,
        f32s,
        int_ops,
        bytes,
    })
}

/// Weight words of `op` (ternary codes packed as int8x4), or none for quantize.
/// The op's ternary weight words and their layout (heads, i8x4 rows per head, columns).
type Weights = (Vec<u32>, (usize, usize, usize));

fn weights(op: &str, dims: &Dims, rng: &mut Rng) -> lowbit_kernels::Result<Weights> {
    let Dims { d, h, n } = *dims;
    match op {
        "lowrank" => {
            lowbit_kernels::pack_lowrank_weight_codes_i8x4(&rng.ternary(h * d * n), h, d, n)
                .map(|w| (w, (h, d.div_ceil(4), n)))
        }
        "decoder-tail" => {
            lowbit_kernels::pack_decoder_weight_codes_i8x4(&rng.ternary(h * n * d), h, n, d)
                .map(|w| (w, (h, n.div_ceil(4), d)))
        }
        _ => Ok((Vec::new(), (0, 0, 0))),
    }
}

/// Opens the timer of `kind`: the backend's own fastest API, or the host-slice trait.
/// `graphs`: CUDA times M <= 16 as graph replays; `idle`: CUDA times larger M on an idle
/// stream instead of after an L2 flush.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
fn open_timer(
    kind: BackendKind,
    transfers: bool,
    graphs: bool,
    idle: bool,
    ternary2: bool,
    epilogue: Epilogue,
) -> lowbit_kernels::Result<Box<dyn Timer>> {
    let cuda_device = !transfers && kind == BackendKind::Cuda && cfg!(feature = "cuda");
    for (asked, what) in [
        (ternary2, "--weights ternary2"),
        (epilogue != Epilogue::default(), "--out f16|bf16 and --relu"),
    ] {
        if asked && !cuda_device {
            return Err(LowbitError::BackendUnavailable {
                backend: kind,
                reason: format!("{what}: timed on CUDA's device API only"),
            });
        }
    }
    if transfers {
        return Ok(Box::new(TraitTimer::new(backend::open(kind)?)));
    }
    match kind {
        BackendKind::Cpu => Ok(Box::new(CpuTimer::new())),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            let mut t = crate::timers::CudaTimer::new(0)?;
            t.graphs = graphs;
            t.idle = idle;
            t.ternary2 = ternary2;
            t.epilogue = epilogue;
            Ok(Box::new(t))
        }
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(Box::new(crate::timers::WgpuTimer::new()?)),
        #[allow(unreachable_patterns)]
        other => Ok(Box::new(TraitTimer::new(backend::open(other)?))),
    }
}

pub fn main(tokens: &[String]) -> Result<i32, String> {
    let args = Args::parse(
        tokens,
        &[
            "backend", "op", "variant", "m", "d", "h", "n", "iters", "json", "peers", "weights",
            "out",
        ],
        &["transfers", "no-graph", "idle", "relu"],
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
    let ternary2 = match args.value("weights") {
        None | Some("i8x4") => false,
        Some("ternary2") => true,
        Some(v) => return Err(format!("--weights: unknown {v:?} (i8x4, ternary2)")),
    };
    let epilogue = Epilogue {
        dtype: match args.value("out") {
            None | Some("f32") => OutputDType::F32,
            Some("f16") => OutputDType::F16,
            Some("bf16") => OutputDType::Bf16,
            Some(v) => return Err(format!("--out: unknown {v:?} (f32, f16, bf16)")),
        },
        relu: args.switch("relu"),
    };
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
    let mut backends: Vec<Box<dyn Timer>> = Vec::new();
    let mut failed = false;
    for &kind in &kinds {
        let graphs = !args.switch("no-graph");
        let idle = args.switch("idle");
        match open_timer(
            kind,
            args.switch("transfers"),
            graphs,
            idle,
            ternary2,
            epilogue,
        ) {
            Ok(t) => backends.push(t),
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
    for be in backends.iter_mut() {
        let kind = be.kind();
        progress.show(&format!("{kind}: measuring ceilings"));
        let (copy_bw, timing) = (be.copy_bandwidth(), be.timing());
        for &op in &ops {
            let weights = match weights(op, &dims, &mut rng).and_then(|(w, layout)| {
                if w.is_empty() {
                    Ok(())
                } else {
                    be.set_weights(&w, layout)
                }
            }) {
                Ok(()) => true,
                Err(e) => {
                    progress.finish();
                    eprintln!("lowbit bench: {kind} {op}: weights: {e}");
                    failed = true;
                    false
                }
            };
            let op_variants: Vec<&'static str> = if op == "quantize" {
                vec!["f32"]
            } else {
                variants.clone()
            };
            for &variant in &op_variants {
                for &m in &ms {
                    progress.step(&format!("{kind} {op} {variant} m={m}"));
                    if !weights {
                        continue;
                    }
                    let packed = variant == "packed";
                    let res = case_data(op, packed, ternary2, epilogue, m, &dims, &mut rng)
                        .and_then(|c| {
                            let inputs = Inputs {
                                words: &c.words,
                                f32s: &c.f32s,
                                packed: variant == "packed",
                            };
                            be.time(&c.op, &inputs, iters).map(|t| (c, t))
                        });
                    match res {
                        Ok((case, t)) => {
                            let mut row = BenchRow {
                                backend: kind,
                                device: be.name(),
                                op,
                                variant: format!(
                                    "{variant}{}{}{}",
                                    if ternary2 { "-t2" } else { "" },
                                    match epilogue.dtype {
                                        OutputDType::F32 => "",
                                        OutputDType::F16 => "-f16",
                                        OutputDType::Bf16 => "-bf16",
                                    },
                                    if epilogue.relu { "-relu" } else { "" }
                                ),
                                m,
                                shape: case.shape,
                                iters: t.runs,
                                median_s: t.median_s,
                                min_s: t.min_s,
                                int_ops: case.int_ops,
                                bytes: case.bytes,
                                copy_bw,
                                compute_peak: be.compute_peak(&case.op),
                                timing: t.timing.unwrap_or(timing),
                                peers: Vec::new(),
                            };
                            for name in &peer_names {
                                let hit = peers
                                    .iter()
                                    .find(|p| &p.name == name && p.fits(op, m, &dims));
                                if let Some(p) = hit {
                                    row.peers.push((name.clone(), p.us * 1e-6 / row.median_s));
                                }
                            }
                            rows.push(row);
                        }
                        // A device limit (e.g. lavapipe's 128 MiB storage bindings) skips the
                        // case; anything else is a failure.
                        Err(LowbitError::Unsupported { reason, .. }) => {
                            progress.finish();
                            eprintln!("skipping {kind} {op} {variant} m={m}: {reason}");
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
                r.tops().map_or("-".into(), fmt_tops),
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
    let mut backend_facts = Vec::new();
    for be in backends.iter_mut() {
        let mut facts = vec![format!("timing: {}", be.timing())];
        let bw = be.copy_bandwidth();
        if let Some(bw) = bw {
            facts.push(format!(
                "copy bandwidth {:.1} GB/s (read + write)",
                bw / 1e9
            ));
        }
        let peak = rows
            .iter()
            .find(|r| r.backend == be.kind() && r.compute_peak.is_some())
            .and_then(|r| r.compute_peak);
        let ceiling = be.ceiling_name().zip(peak);
        if let Some((what, peak)) = ceiling {
            facts.push(format!("{what} {:.1} TOPS", peak / 1e12));
        }
        println!("{}: {}; {}", be.kind(), be.name(), facts.join(", "));
        let notes = be.footnotes();
        for note in &notes {
            println!("{}: {note}", be.kind());
        }
        backend_facts.push(obj([
            ("backend", be.kind().as_str().into()),
            ("device", be.name().into()),
            ("timing", be.timing().into()),
            ("copy_bandwidth_gbps", bw.map(|b| b / 1e9).into()),
            ("ceiling", ceiling.map(|(what, _)| what).into()),
            ("ceiling_tops", ceiling.map(|(_, p)| p / 1e12).into()),
            (
                "footnotes",
                Json::Arr(notes.into_iter().map(Json::from).collect()),
            ),
        ]));
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
            ("weights", if ternary2 { "ternary2" } else { "i8x4" }.into()),
            ("out", args.value("out").unwrap_or("f32").into()),
            ("relu", epilogue.relu.into()),
            ("backends", Json::Arr(backend_facts)),
            ("rows", Json::Arr(rows.iter().map(row_json).collect())),
        ]);
        std::fs::write(path, json.pretty()).map_err(|e| format!("--json {path}: {e}"))?;
        eprintln!("wrote {path}");
    }
    Ok(if failed { 1 } else { 0 })
}

fn fmt_tops(t: f64) -> String {
    if t >= 1.0 {
        format!("{t:.2}")
    } else if t >= 0.001 {
        format!("{t:.4}")
    } else {
        format!("{t:.1e}")
    }
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
        ("variant", r.variant.as_str().into()),
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
