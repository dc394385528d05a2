//! `lowbit run`: one op on named tensors of a safetensors file, written to another, so that a
//! user can check the crate against their numpy or PyTorch model.

use std::collections::HashMap;

use lowbit_kernels::backend::{self, ProjectionArgs};
use lowbit_kernels::ops::rho::{RHO_BLOCK_SIZE, RhoShape};
use lowbit_kernels::pack::unpack_i8x4;
use lowbit_kernels::quant::quantize_weights;
use lowbit_kernels::rho;
use lowbit_kernels::{
    ActInput, Backend, BackendKind, DecoderTailShape, Epilogue, LowBitActivationFormat,
    LowBitWeightFormat, LowrankShape, RhoCompressionConfig, ScaleSource,
};
use safetensors::Dtype;

use crate::args::{Args, parse_backends};

pub const USAGE: &str =
    "lowbit run <op> --input IN.safetensors --output OUT.safetensors [--backend cpu|cuda|wgpu]
           [--act-format int8|int4|uint8pos|none] [--weight-format ternary|sign1|int8]
           [--latent-out N] [--rho-compression int8|ternary|binary]
  ops and the tensors they read (f32 unless said otherwise; missing leading dims are 1):
    quantize      x [..]                      -> codes (i8; u8 for uint8pos), scales [1],
                                                 act_scale [1], out = codes*scale
    lowrank       x [B,Hin,T,D], weight [H,D,N] -> out [B,H,T,latent_out], act_scale,
                                                 weight_scale, weight_codes (i8)
    decoder-tail  y [B,H,T,L], weight [H*Lart,D] (or [H,Lart,D])
                                              -> out [B,1,T,D], act_scale, weight_scale,
                                                 weight_codes (i8)
    rho-pack      rho [B,H,N,D]               -> codes (i8, per element), scales [blocks of 32],
                                                 packed (u8, the stored bytes), out (restored)
  Instead of `weight`, give `weight_codes` (i8, same shape) and `weight_scale` (f32 [1]).
  The activation scale is computed by the backend (per tensor, absmean, SPEC.md); with
  --act-format none the float path runs and no act_scale is written. Defaults: --backend cpu,
  --act-format int8, --weight-format ternary, --latent-out N, --rho-compression int8.";

const OPS: [&str; 4] = ["quantize", "lowrank", "decoder-tail", "rho-pack"];

/// One tensor read from the input file.
struct Tensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

struct Input {
    path: String,
    tensors: HashMap<String, Tensor>,
}

impl Input {
    fn load(path: &str) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| format!("{path} is not a valid safetensors file: {e}"))?;
        let tensors = st
            .iter()
            .map(|(name, view)| {
                (
                    name.to_string(),
                    Tensor {
                        dtype: view.dtype(),
                        shape: view.shape().to_vec(),
                        data: view.data().to_vec(),
                    },
                )
            })
            .collect();
        Ok(Self {
            path: path.to_string(),
            tensors,
        })
    }

    fn names(&self) -> String {
        let mut names: Vec<String> = self
            .tensors
            .iter()
            .map(|(n, t)| format!("{n} {:?} {:?}", t.dtype, t.shape))
            .collect();
        names.sort();
        if names.is_empty() {
            "no tensors".into()
        } else {
            names.join(", ")
        }
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn get(&self, name: &str, needs: &str) -> Result<&Tensor, String> {
        self.tensors.get(name).ok_or_else(|| {
            format!(
                "{}: missing tensor `{name}` ({needs}); the file has: {}",
                self.path,
                self.names()
            )
        })
    }

    fn dtype_err(&self, name: &str, t: &Tensor, want: &str) -> String {
        format!(
            "{}: tensor `{name}` has dtype {:?}, expected {want}",
            self.path, t.dtype
        )
    }

    /// An f32 tensor with its shape.
    fn f32(&self, name: &str, needs: &str) -> Result<(Vec<f32>, Vec<usize>), String> {
        let t = self.get(name, needs)?;
        if t.dtype != Dtype::F32 {
            return Err(self.dtype_err(name, t, "F32"));
        }
        let values: Vec<f32> = t
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "{}: tensor `{name}` holds a non-finite value {} at flat index {i}",
                self.path, values[i]
            ));
        }
        Ok((values, t.shape.clone()))
    }

    fn i8(&self, name: &str, needs: &str) -> Result<(Vec<i8>, Vec<usize>), String> {
        let t = self.get(name, needs)?;
        if t.dtype != Dtype::I8 {
            return Err(self.dtype_err(name, t, "I8"));
        }
        Ok((t.data.iter().map(|&b| b as i8).collect(), t.shape.clone()))
    }

    /// A positive finite f32 scalar stored as shape `[1]` or `[]`.
    fn scalar(&self, name: &str, needs: &str) -> Result<f32, String> {
        let (v, shape) = self.f32(name, needs)?;
        match v.as_slice() {
            [s] if *s > 0.0 => Ok(*s),
            [s] => Err(format!(
                "{}: tensor `{name}` is {s}; a scale must be > 0",
                self.path
            )),
            _ => Err(format!(
                "{}: tensor `{name}` has shape {shape:?}, expected [1]",
                self.path
            )),
        }
    }

    /// Pads a shape of rank `1..=4` to rank 4 with leading ones, or names the tensor.
    fn rank4(&self, name: &str, shape: &[usize], layout: &str) -> Result<[usize; 4], String> {
        if shape.is_empty() || shape.len() > 4 {
            return Err(format!(
                "{}: tensor `{name}` has shape {shape:?} (rank {}), expected rank <= 4 {layout}",
                self.path,
                shape.len()
            ));
        }
        let mut out = [1usize; 4];
        out[4 - shape.len()..].copy_from_slice(shape);
        Ok(out)
    }
}

/// Quantized weights: codes, scale, largest |code|, and how they were obtained.
struct Weights {
    codes: Vec<i8>,
    scale: f32,
    qmax: u32,
    shape: Vec<usize>,
    source: String,
}

fn load_weights(input: &Input, format: LowBitWeightFormat, needs: &str) -> Result<Weights, String> {
    if input.has("weight_codes") {
        if input.has("weight") {
            eprintln!("note: both `weight` and `weight_codes` given; using `weight_codes`");
        }
        let (codes, shape) = input.i8("weight_codes", needs)?;
        if let Some(i) = codes.iter().position(|&c| c == i8::MIN) {
            return Err(format!(
                "{}: tensor `weight_codes` holds -128 at flat index {i}; codes are in [-127, 127]",
                input.path
            ));
        }
        let scale = input.scalar(
            "weight_scale",
            "with `weight_codes`, an f32 [1] weight scale",
        )?;
        let qmax = if codes.iter().all(|c| (-1..=1).contains(c)) {
            1
        } else {
            127
        };
        return Ok(Weights {
            codes,
            scale,
            qmax,
            shape,
            source: "weight_codes".into(),
        });
    }
    let (values, shape) = input.f32("weight", needs)?;
    let q = quantize_weights(&values, format).map_err(|e| format!("tensor `weight`: {e}"))?;
    Ok(Weights {
        codes: q.codes,
        scale: q.scale,
        qmax: if format == LowBitWeightFormat::Int8 {
            127
        } else {
            1
        },
        shape,
        source: format!("weight quantized as {}", format.as_str()),
    })
}

/// Named output tensors, serialised at the end.
#[derive(Default)]
struct Output {
    tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
}

impl Output {
    fn f32(&mut self, name: &str, shape: &[usize], v: &[f32]) {
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensors
            .push((name.into(), Dtype::F32, shape.to_vec(), bytes));
    }
    fn i8(&mut self, name: &str, shape: &[usize], v: &[i8]) {
        let bytes = v.iter().map(|&x| x as u8).collect();
        self.tensors
            .push((name.into(), Dtype::I8, shape.to_vec(), bytes));
    }
    fn u8(&mut self, name: &str, shape: &[usize], v: Vec<u8>) {
        self.tensors
            .push((name.into(), Dtype::U8, shape.to_vec(), v));
    }
    fn save(&self, path: &str, metadata: HashMap<String, String>) -> Result<(), String> {
        let views = self
            .tensors
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| format!("output tensor `{name}`: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bytes = safetensors::serialize(views, Some(metadata))
            .map_err(|e| format!("serializing {path}: {e}"))?;
        std::fs::write(path, bytes).map_err(|e| format!("cannot write {path}: {e}"))
    }
}

struct Ctx<'a> {
    input: &'a Input,
    backend: &'a dyn Backend,
    act: LowBitActivationFormat,
    weight_format: LowBitWeightFormat,
    latent_out: Option<usize>,
    rho: RhoCompressionConfig,
    out: Output,
    meta: HashMap<String, String>,
    summary: Vec<String>,
}

fn lib_err(what: &str) -> impl Fn(lowbit_kernels::LowbitError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Ctx<'_> {
    fn quantize(&mut self) -> Result<(), String> {
        if self.act == LowBitActivationFormat::Fp16 {
            return Err("quantize needs --act-format int8, int4 or uint8pos".into());
        }
        let (x, shape) = self.input.f32("x", "the f32 activations to quantize")?;
        if x.is_empty() {
            return Err(format!("{}: tensor `x` is empty", self.input.path));
        }
        let (codes, scale) = self
            .backend
            .quantize_codes(&x, self.act, ScaleSource::Compute)
            .map_err(lib_err("quantize"))?;
        let deq: Vec<f32> = codes.iter().map(|&c| c as f32 * scale).collect();
        if self.act == LowBitActivationFormat::Uint8PosExp {
            self.out
                .u8("codes", &shape, codes.iter().map(|&c| c as u8).collect());
        } else {
            let c8: Vec<i8> = codes.iter().map(|&c| c as i8).collect();
            self.out.i8("codes", &shape, &c8);
        }
        self.out.f32("scales", &[1], &[scale]);
        self.out.f32("act_scale", &[1], &[scale]);
        self.out.f32("out", &shape, &deq);
        self.summary.push(format!(
            "quantize x {shape:?} as {} -> scale {scale:e}",
            self.act.as_str()
        ));
        Ok(())
    }

    fn project(
        &mut self,
        act: &[f32],
        words: Vec<u32>,
        w: &Weights,
        call: &dyn Fn(
            &ProjectionArgs<'_>,
        ) -> lowbit_kernels::Result<lowbit_kernels::ProjectionOutput>,
    ) -> Result<lowbit_kernels::ProjectionOutput, String> {
        let args = ProjectionArgs {
            input: ActInput::F32(act),
            format: self.act,
            scale: ScaleSource::Compute,
            w_words: &words,
            w_scale: w.scale,
            w_qmax: w.qmax,
            epilogue: Epilogue::default(),
        };
        call(&args).map_err(|e| e.to_string())
    }

    fn write_projection(
        &mut self,
        out_shape: &[usize],
        res: &lowbit_kernels::ProjectionOutput,
        w: &Weights,
    ) {
        self.out.f32("out", out_shape, &res.values);
        if self.act != LowBitActivationFormat::Fp16 {
            self.out.f32("act_scale", &[1], &[res.a_scale]);
        }
        self.out.f32("weight_scale", &[1], &[w.scale]);
        self.out.i8("weight_codes", &w.shape, &w.codes);
    }

    fn lowrank(&mut self) -> Result<(), String> {
        let needs = "lowrank needs `x` [B,Hin,T,D] and `weight` [H,D,N] (f32), or `weight_codes` \
                     (i8) + `weight_scale` (f32 [1]) instead of `weight`";
        let (x, xs) = self.input.f32("x", needs)?;
        let x_shape = self.input.rank4("x", &xs, "[B,Hin,T,D]")?;
        let w = load_weights(self.input, self.weight_format, needs)?;
        let wname = w.source.split(' ').next().unwrap_or("weight").to_string();
        let w_shape: [usize; 3] = match w.shape.as_slice() {
            [d, n] => [1, *d, *n],
            [h, d, n] => [*h, *d, *n],
            other => {
                return Err(format!(
                    "{}: tensor `{wname}` has shape {other:?}, expected [H,D,N]",
                    self.input.path
                ));
            }
        };
        let latent_out = self.latent_out.unwrap_or(w_shape[2]);
        let shape = LowrankShape::new(x_shape, w_shape, latent_out)
            .map_err(|e| format!("`x` {xs:?} and `{wname}` {:?} do not fit: {e}", w.shape))?;
        let [h, d, n] = w_shape;
        let words = lowbit_kernels::pack_lowrank_weight_codes_i8x4(&w.codes, h, d, n)
            .map_err(lib_err("packing the weight"))?;
        let be = self.backend;
        let res = self.project(&x, words, &w, &|args| be.lowrank(&shape, args))?;
        self.write_projection(&shape.out_shape(), &res, &w);
        self.summary.push(format!(
            "lowrank x {x_shape:?} . {} {w_shape:?} (scale {:e}) act {} (scale {:e}) -> out {:?}",
            w.source,
            w.scale,
            self.act.as_str(),
            res.a_scale,
            shape.out_shape()
        ));
        Ok(())
    }

    fn decoder_tail(&mut self) -> Result<(), String> {
        let needs = "decoder-tail needs `y` [B,H,T,L] and `weight` [H*Lart,D] (f32), or \
                     `weight_codes` (i8) + `weight_scale` (f32 [1]) instead of `weight`";
        let (y, ys) = self.input.f32("y", needs)?;
        let y_shape = self.input.rank4("y", &ys, "[B,H,T,L]")?;
        if self.latent_out.is_some() {
            return Err("--latent-out applies to lowrank only".into());
        }
        let w = load_weights(self.input, self.weight_format, needs)?;
        let wname = w.source.split(' ').next().unwrap_or("weight").to_string();
        let w_shape: [usize; 2] = match w.shape.as_slice() {
            [rows, d] => [*rows, *d],
            [h, l, d] => [h * l, *d],
            other => {
                return Err(format!(
                    "{}: tensor `{wname}` has shape {other:?}, expected [H*Lart,D]",
                    self.input.path
                ));
            }
        };
        let shape = DecoderTailShape::new(y_shape, w_shape)
            .map_err(|e| format!("`y` {ys:?} and `{wname}` {:?} do not fit: {e}", w.shape))?;
        let words = lowbit_kernels::pack_decoder_weight_codes_i8x4(
            &w.codes,
            shape.heads,
            shape.latent_per_head,
            shape.dim,
        )
        .map_err(lib_err("packing the weight"))?;
        let be = self.backend;
        let res = self.project(&y, words, &w, &|args| be.decoder_tail(&shape, args))?;
        self.write_projection(&shape.out_shape(), &res, &w);
        self.summary.push(format!(
            "decoder-tail y {y_shape:?} . {} {w_shape:?} (scale {:e}) act {} (scale {:e}) -> out {:?}",
            w.source,
            w.scale,
            self.act.as_str(),
            res.a_scale,
            shape.out_shape()
        ));
        Ok(())
    }

    fn rho_pack(&mut self) -> Result<(), String> {
        let (v, vs) = self
            .input
            .f32("rho", "rho-pack needs `rho` [B,H,N,D] (f32)")?;
        let logical = self.input.rank4("rho", &vs, "[B,H,N,D]")?;
        let shape = RhoShape::new(logical).map_err(lib_err("tensor `rho`"))?;
        let (codes, scales, packed, restored, bits) = match self.rho {
            RhoCompressionConfig::Int8BlockExp => {
                let (words, scales) = self
                    .backend
                    .rho_int8_pack(&shape, &v)
                    .map_err(lib_err("rho int8 pack"))?;
                let restored = self
                    .backend
                    .rho_int8_unpack(&shape, &words, &scales)
                    .map_err(lib_err("rho int8 unpack"))?;
                // Device layout: 8 words per block, the last block zero-padded.
                let codes: Vec<i8> = (0..shape.len())
                    .map(|i| {
                        let (b, j) = (i / RHO_BLOCK_SIZE, i % RHO_BLOCK_SIZE);
                        unpack_i8x4(words[b * 8 + j / 4])[j % 4]
                    })
                    .collect();
                let packed = codes.iter().map(|&c| c as u8).collect();
                (codes, scales, packed, restored, 8)
            }
            RhoCompressionConfig::TernaryBlockExp | RhoCompressionConfig::BinaryBlockExp => {
                if self.backend.kind() != BackendKind::Cpu {
                    eprintln!("note: ternary/binary rho compression runs on the host (src/rho.rs)");
                }
                let state = rho::pack_rho_block_state_with(
                    &v,
                    logical,
                    self.rho,
                    &rho::RhoCompressionStats::new(),
                )
                .map_err(lib_err("rho pack"))?;
                let restored =
                    rho::unpack_rho_block_state(&state).map_err(lib_err("rho unpack"))?;
                // restored = code * scale exactly, so the codes come back by division.
                let codes = restored
                    .iter()
                    .enumerate()
                    .map(|(i, &r)| (r / state.scales[i / RHO_BLOCK_SIZE]).round() as i8)
                    .collect();
                let bits = state.encoding.bits_per_element();
                (codes, state.scales, state.packed, restored, bits)
            }
            RhoCompressionConfig::None => {
                return Err("--rho-compression none has nothing to pack".into());
            }
        };
        let compressed = (packed.len() + 4 * scales.len()) as u64;
        let stats =
            rho::rho_snapshot_for(&v, &restored, compressed).map_err(lib_err("rho stats"))?;
        let gate = rho::RhoCompressionQualityGate::default();
        let passes = rho::rho_compression_snapshot_passes_gate(&stats, &gate);
        self.out.i8("codes", &vs, &codes);
        self.out.f32("scales", &[scales.len()], &scales);
        self.out.u8("packed", &[packed.len()], packed);
        self.out.f32("out", &vs, &restored);
        self.meta
            .insert("lowbit.rho_passes_default_gate".into(), passes.to_string());
        self.summary.push(format!(
            "rho-pack {logical:?} as {bits}-bit blocks of {RHO_BLOCK_SIZE}: mean abs err {:.3e}, \
             max abs err {:.3e}, rms ratio {:.4}, compression ratio {:.3} ({compressed} bytes) \
             -> default quality gate: {}",
            stats.mean_abs_error().unwrap_or(0.0),
            stats.max_abs_error,
            stats.mean_rms_ratio().unwrap_or(1.0),
            stats.compression_ratio().unwrap_or(0.0),
            if passes { "pass" } else { "fail" },
        ));
        Ok(())
    }
}

pub fn main(tokens: &[String]) -> Result<i32, String> {
    let args = Args::parse(
        tokens,
        &[
            "input",
            "output",
            "backend",
            "act-format",
            "weight-format",
            "latent-out",
            "rho-compression",
        ],
        &[],
    )?;
    let Some(op) = args.positional.first() else {
        return Err(format!("which op? one of {}", OPS.join(", ")));
    };
    args.at_most_positional(1)?;
    let op = op.replace('_', "-");
    if !OPS.contains(&op.as_str()) {
        return Err(format!("unknown op {op:?} (one of {})", OPS.join(", ")));
    }
    let in_path = args
        .value("input")
        .ok_or("--input IN.safetensors is required")?;
    let out_path = args
        .value("output")
        .ok_or("--output OUT.safetensors is required")?;
    let kind = match parse_backends(Some(args.value("backend").unwrap_or("cpu")))?.as_slice() {
        [k] => *k,
        _ => return Err("--backend: give exactly one of cpu, cuda, wgpu".into()),
    };
    let act = match args.value("act-format") {
        None => LowBitActivationFormat::Int8,
        Some(v) => LowBitActivationFormat::parse(v)
            .ok_or_else(|| format!("--act-format: unknown {v:?} (int8, int4, uint8pos, none)"))?,
    };
    let weight_format = match args.value("weight-format") {
        None => LowBitWeightFormat::Ternary158,
        Some(v) => match LowBitWeightFormat::parse(v) {
            Some(f) if f != LowBitWeightFormat::Fp16 => f,
            _ => {
                return Err(format!(
                    "--weight-format: unknown {v:?} (ternary, sign1, int8)"
                ));
            }
        },
    };
    let latent_out = match args.value("latent-out") {
        None => None,
        Some(_) => Some(args.number::<usize>("latent-out", 0)?),
    };
    let rho = match args.value("rho-compression") {
        None => RhoCompressionConfig::Int8BlockExp,
        Some(v) => RhoCompressionConfig::parse(v)
            .ok_or_else(|| format!("--rho-compression: unknown {v:?} (int8, ternary, binary)"))?,
    };
    let input = Input::load(in_path)?;
    let be = backend::open(kind).map_err(|e| e.to_string())?;
    let mut ctx = Ctx {
        input: &input,
        backend: be.as_ref(),
        act,
        weight_format,
        latent_out,
        rho,
        out: Output::default(),
        meta: HashMap::new(),
        summary: Vec::new(),
    };
    match op.as_str() {
        "quantize" => ctx.quantize()?,
        "lowrank" => ctx.lowrank()?,
        "decoder-tail" => ctx.decoder_tail()?,
        _ => ctx.rho_pack()?,
    }
    ctx.meta.insert("lowbit.op".into(), op.clone());
    ctx.meta.insert("lowbit.backend".into(), be.name());
    ctx.meta
        .insert("lowbit.act_format".into(), act.as_str().into());
    ctx.out.save(out_path, ctx.meta)?;
    for line in &ctx.summary {
        println!("{line}");
    }
    println!("{} on {}: wrote {out_path}", op, be.name());
    Ok(0)
}
