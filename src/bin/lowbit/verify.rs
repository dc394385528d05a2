//! `lowbit verify`: every op × backend × variant × activation format on random BDH-like shapes,
//! compared with `lowbit_kernels::reference`.
//!
//! Integer paths must be bit-exact given the scale the backend used (a device-computed scale
//! must match the reference's within `tol::DEVICE_SCALE_REL`); the float path must be within
//! `tol::FLOAT_PATH_NMSE` / `tol::FLOAT_PATH_REL`. On wgpu, whose division may be off by a
//! few ulp (SPEC.md), codes may differ from the reference only at exact ties, which are counted.

use std::time::Instant;

use lowbit_kernels::backend::{self, ProjectionArgs};
use lowbit_kernels::ops::quantize::QuantizeShape;
use lowbit_kernels::ops::rho::RhoShape;
use lowbit_kernels::pack::{pack_rows_i32_to_i8x4, unpack_i8x4};
use lowbit_kernels::quant::{activation_code, activation_scale};
use lowbit_kernels::reference;
use lowbit_kernels::testing::{self, ErrorReport, Rng, compare_f32, tol};
use lowbit_kernels::{
    ActInput, Backend, BackendKind, DecoderTailShape, Epilogue, LowBitActivationFormat,
    LowBitWeightFormat, LowbitError, LowrankShape, OutputDType, ProjectionOutput, ScaleSource,
};

use crate::args::{Args, parse_backends};
use crate::json::{Json, obj};
use crate::table;

pub const USAGE: &str =
    "lowbit verify [--backend cpu|cuda|wgpu|all] [--cases N] [--seed S] [--json]
  Runs every op (quantize codes, quantize+pack, lowrank and decoder tail with codes / packed /
  f32 inputs and host / buffer / device scales, the float path, rho int8 pack/unpack) on
  every available backend and activation format against the CPU reference, on N random
  BDH-like shapes (default 4, seed 1). Exits 1 on any mismatch. Unavailable backends are
  skipped unless LOWBIT_REQUIRE names them.";

#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    Pass,
    Fail(String),
    /// The backend says it cannot run this variant (allowed for GPU backends, listed).
    Unsupported(String),
    /// The backend is not available here.
    Skipped(String),
}

impl Status {
    fn label(&self) -> &'static str {
        match self {
            Self::Pass => "ok",
            Self::Fail(_) => "FAIL",
            Self::Unsupported(_) => "n/a",
            Self::Skipped(_) => "skipped",
        }
    }
    fn note(&self) -> &str {
        match self {
            Self::Pass => "",
            Self::Fail(s) | Self::Unsupported(s) | Self::Skipped(s) => s,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Row {
    pub op: &'static str,
    pub backend: String,
    pub variant: String,
    pub format: String,
    pub shape: String,
    pub report: Option<ErrorReport>,
    pub time_s: Option<f64>,
    pub status: Status,
    /// Extra facts (scale error, allowed ties).
    pub note: String,
}

struct Weights {
    format: LowBitWeightFormat,
    codes: Vec<i8>,
    words: Vec<u32>,
    scale: f32,
    qmax: u32,
}

struct Case {
    lowrank: LowrankShape,
    lowrank_w: Weights,
    x: Vec<f32>,
    decoder: DecoderTailShape,
    decoder_w: Weights,
    y: Vec<f32>,
    quantize: QuantizeShape,
    rho: RhoShape,
    rho_values: Vec<f32>,
}

const WEIGHT_FORMATS: [LowBitWeightFormat; 3] = [
    LowBitWeightFormat::Ternary158,
    LowBitWeightFormat::Sign1,
    LowBitWeightFormat::Int8,
];
const QUANT_FORMATS: [LowBitActivationFormat; 3] = [
    LowBitActivationFormat::Int8,
    LowBitActivationFormat::Int4Exp,
    LowBitActivationFormat::Uint8PosExp,
];

fn weight_codes(rng: &mut Rng, format: LowBitWeightFormat, n: usize) -> Vec<i8> {
    match format {
        LowBitWeightFormat::Int8 => rng.int8_codes(n),
        LowBitWeightFormat::Sign1 => (0..n)
            .map(|_| if rng.unit() < 0.5 { -1 } else { 1 })
            .collect(),
        _ => rng.ternary(n),
    }
}

fn make_weights(
    rng: &mut Rng,
    format: LowBitWeightFormat,
    len: usize,
    pack: impl FnOnce(&[i8]) -> lowbit_kernels::Result<Vec<u32>>,
) -> Result<Weights, String> {
    let codes = weight_codes(rng, format, len);
    let words = pack(&codes).map_err(|e| e.to_string())?;
    Ok(Weights {
        format,
        codes,
        words,
        scale: rng.range(0.005, 0.05),
        qmax: if format == LowBitWeightFormat::Int8 {
            127
        } else {
            1
        },
    })
}

/// Activations: roughly normal with a random spread and offset, so every format sees both signs.
fn activations(rng: &mut Rng, n: usize) -> Vec<f32> {
    let std = rng.range(0.2, 3.0);
    let offset = rng.range(-0.3, 0.3) * std;
    (0..n).map(|_| rng.normal(std) + offset).collect()
}

fn gen_case(rng: &mut Rng, index: usize) -> Result<Case, String> {
    let err = |e: LowbitError| e.to_string();
    let heads = [1, 2, 4][rng.usize(0, 2)];
    // Case 0 is a fixed BDH-like shape (H=4, broadcast input, D and N not multiples of 4).
    let lowrank = if index == 0 {
        LowrankShape::new([1, 1, 5, 61], [4, 61, 130], 127).map_err(err)?
    } else {
        let (batch, time) = (rng.usize(1, 2), rng.usize(1, 9));
        let (embd, latent) = (rng.usize(1, 80), rng.usize(1, 96));
        let latent_out = if rng.unit() < 0.5 {
            latent
        } else {
            rng.usize(1, latent)
        };
        let in_heads = if rng.unit() < 0.5 { 1 } else { heads };
        LowrankShape::new(
            [batch, in_heads, time, embd],
            [heads, embd, latent],
            latent_out,
        )
        .map_err(err)?
    };
    let decoder = if index == 0 {
        DecoderTailShape::new([1, 4, 5, 125], [4 * 130, 61]).map_err(err)?
    } else {
        let (batch, time) = (rng.usize(1, 2), rng.usize(1, 9));
        let (lart, dim) = (rng.usize(1, 96), rng.usize(1, 80));
        let latent = if rng.unit() < 0.5 {
            lart
        } else {
            rng.usize(1, lart)
        };
        DecoderTailShape::new([batch, heads, time, latent], [heads * lart, dim]).map_err(err)?
    };
    let wf = WEIGHT_FORMATS[index % WEIGHT_FORMATS.len()];
    let [h, d, n] = lowrank.w_shape();
    let lowrank_w = make_weights(rng, wf, lowrank.w_len(), |c| {
        lowbit_kernels::pack_lowrank_weight_codes_i8x4(c, h, d, n)
    })?;
    let (dh, lart, dd) = (decoder.heads, decoder.latent_per_head, decoder.dim);
    let decoder_w = make_weights(rng, wf, decoder.w_len(), |c| {
        lowbit_kernels::pack_decoder_weight_codes_i8x4(c, dh, lart, dd)
    })?;
    let x = activations(rng, lowrank.x_len());
    let y = activations(rng, decoder.y_len());
    let quantize = QuantizeShape::from_shape4(decoder.y_shape()).map_err(err)?;
    let rho =
        RhoShape::new([rng.usize(1, 2), heads, rng.usize(1, 40), rng.usize(1, 40)]).map_err(err)?;
    let rho_values = rng.normals(rho.len(), 0.1);
    Ok(Case {
        lowrank,
        lowrank_w,
        x,
        decoder,
        decoder_w,
        y,
        quantize,
        rho,
        rho_values,
    })
}

/// `|v/s|` within a few ulp of `k + 0.5`: a code WGSL's division may round either way.
fn is_tie(v: f32, s: f32, format: LowBitActivationFormat) -> bool {
    let v = if format == LowBitActivationFormat::Uint8PosExp {
        v.max(0.0)
    } else {
        v
    };
    let q = (f64::from(v) / f64::from(s)).abs();
    let frac = q - q.floor();
    (frac - 0.5).abs() <= 4.0 * f64::from(f32::EPSILON) * q.max(1.0)
}

fn codes_with(x: &[f32], s: f32, format: LowBitActivationFormat) -> Vec<i32> {
    x.iter().map(|&v| activation_code(v, s, format)).collect()
}

fn as_f32<T: Copy + Into<f64>>(v: &[T]) -> Vec<f32> {
    v.iter().map(|&c| c.into() as f32).collect()
}

fn words_as_lanes(words: &[u32]) -> Vec<f32> {
    words
        .iter()
        .flat_map(|&w| unpack_i8x4(w))
        .map(f32::from)
        .collect()
}

/// Scale check: `(relative error, ok)`.
fn scale_ok(got: f32, want: f32) -> (f32, bool) {
    let rel = ((got - want) / want).abs();
    (rel, got.is_finite() && rel <= tol::DEVICE_SCALE_REL)
}

/// How a backend error becomes a row status.
fn error_status(kind: BackendKind, e: &LowbitError) -> Status {
    match e {
        LowbitError::Unsupported { .. } | LowbitError::UnsupportedFormat { .. }
            if kind != BackendKind::Cpu =>
        {
            Status::Unsupported(e.to_string())
        }
        _ => Status::Fail(e.to_string()),
    }
}

/// Runs one projection on a backend.
type ProjCall<'a> =
    dyn Fn(&dyn Backend, &ProjectionArgs<'_>) -> lowbit_kernels::Result<ProjectionOutput> + 'a;
/// The reference on codes with an activation scale.
type RefCodes<'a> = dyn Fn(&[i32], f32) -> lowbit_kernels::Result<Vec<f32>> + 'a;
/// The reference float path.
type RefFloat<'a> = dyn Fn(&[f32]) -> lowbit_kernels::Result<Vec<f32>> + 'a;

struct Ctx<'a> {
    backend: &'a dyn Backend,
    kind: BackendKind,
    rows: Vec<Row>,
}

impl Ctx<'_> {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        op: &'static str,
        variant: &str,
        format: &str,
        shape: &str,
        report: Option<ErrorReport>,
        time_s: Option<f64>,
        status: Status,
        note: String,
    ) {
        self.rows.push(Row {
            op,
            backend: self.kind.as_str().into(),
            variant: variant.into(),
            format: format.into(),
            shape: shape.into(),
            report,
            time_s,
            status,
            note,
        });
    }

    /// Bit-exact check of integer outputs; on wgpu, mismatches are allowed only where the
    /// input codes `got_codes` differ from the reference's at ties.
    fn exact_status(report: &ErrorReport) -> Status {
        if report.bit_exact() {
            Status::Pass
        } else {
            Status::Fail(format!("not bit-exact: {report}"))
        }
    }

    fn quantize(&mut self, case: &Case) {
        let shape = case.quantize;
        let x = &case.y;
        let shape_s = format!("[{},{}]", shape.rows, shape.k);
        for format in QUANT_FORMATS {
            let fname = format.as_str();
            let Ok(Some(s_ref)) = activation_scale(x, format) else {
                continue;
            };
            for (variant, source) in [
                ("codes+compute", ScaleSource::Compute),
                ("codes+param", ScaleSource::Param(s_ref)),
            ] {
                let t = Instant::now();
                let res = self.backend.quantize_codes(x, format, source);
                let dt = t.elapsed().as_secs_f64();
                match res {
                    Err(e) => {
                        let st = error_status(self.kind, &e);
                        self.push(
                            "quantize",
                            variant,
                            fname,
                            &shape_s,
                            None,
                            Some(dt),
                            st,
                            String::new(),
                        );
                    }
                    Ok((codes, s)) => {
                        let (rel, ok) = scale_ok(s, s_ref);
                        let want = codes_with(x, s, format);
                        let report = compare_f32(&as_f32(&want), &as_f32(&codes));
                        let ties = self.tie_only(x, s, format, &want, &codes);
                        let status = if !ok {
                            Status::Fail(format!("scale {s} vs reference {s_ref} (rel {rel:.1e})"))
                        } else if report.bit_exact() || ties.is_some() {
                            Status::Pass
                        } else {
                            Self::exact_status(&report)
                        };
                        let mut note = if matches!(source, ScaleSource::Compute) {
                            format!("scale rel err {rel:.1e}")
                        } else {
                            String::new()
                        };
                        if let Some(n) = ties.filter(|&n| n > 0) {
                            note.push_str(&format!("; {n} ties allowed"));
                        }
                        self.push(
                            "quantize",
                            variant,
                            fname,
                            &shape_s,
                            Some(report),
                            Some(dt),
                            status,
                            note,
                        );
                    }
                }
            }
            // quantize + pack into signed i8x4 words: int8/int4 only; uint8pos must be refused.
            let t = Instant::now();
            let res = self
                .backend
                .quantize_pack_i8x4(x, shape, format, ScaleSource::Compute);
            let dt = t.elapsed().as_secs_f64();
            if !format.is_signed() {
                let status = match res {
                    Err(
                        LowbitError::UnsupportedFormat { .. } | LowbitError::Unsupported { .. },
                    ) => Status::Pass,
                    Err(e) => Status::Fail(format!("expected UnsupportedFormat, got: {e}")),
                    Ok(_) => Status::Fail("uint8pos codes were packed into signed lanes".into()),
                };
                self.push(
                    "quantize_pack",
                    "rejects",
                    fname,
                    &shape_s,
                    None,
                    Some(dt),
                    status,
                    "uint8pos must not go into signed i8x4 lanes".into(),
                );
                continue;
            }
            match res {
                Err(e) => {
                    let st = error_status(self.kind, &e);
                    self.push(
                        "quantize_pack",
                        "f32+compute",
                        fname,
                        &shape_s,
                        None,
                        Some(dt),
                        st,
                        String::new(),
                    );
                }
                Ok((words, s)) => {
                    let (rel, ok) = scale_ok(s, s_ref);
                    let want = pack_rows_i32_to_i8x4(
                        "verify",
                        &codes_with(x, s, format),
                        shape.rows,
                        shape.k,
                    )
                    .unwrap_or_default();
                    let report = compare_f32(&words_as_lanes(&want), &words_as_lanes(&words));
                    let status = if !ok {
                        Status::Fail(format!("scale {s} vs reference {s_ref} (rel {rel:.1e})"))
                    } else if self.kind == BackendKind::Wgpu && !report.bit_exact() {
                        // Ties may flip on wgpu: compare against the backend's own codes.
                        match self
                            .backend
                            .quantize_codes(x, format, ScaleSource::Param(s))
                        {
                            Ok((codes, _))
                                if self
                                    .tie_only(x, s, format, &codes_with(x, s, format), &codes)
                                    .is_some() =>
                            {
                                let w =
                                    pack_rows_i32_to_i8x4("verify", &codes, shape.rows, shape.k)
                                        .unwrap_or_default();
                                Self::exact_status(&compare_f32(
                                    &words_as_lanes(&w),
                                    &words_as_lanes(&words),
                                ))
                            }
                            _ => Self::exact_status(&report),
                        }
                    } else {
                        Self::exact_status(&report)
                    };
                    self.push(
                        "quantize_pack",
                        "f32+compute",
                        fname,
                        &shape_s,
                        Some(report),
                        Some(dt),
                        status,
                        format!("scale rel err {rel:.1e}"),
                    );
                }
            }
        }
    }

    /// On wgpu: `Some(ties)` if `got` differs from `want` only at ties (by at most one code).
    /// Elsewhere: `Some(0)` if equal, `None` otherwise.
    fn tie_only(
        &self,
        x: &[f32],
        s: f32,
        format: LowBitActivationFormat,
        want: &[i32],
        got: &[i32],
    ) -> Option<usize> {
        if want.len() != got.len() {
            return None;
        }
        let mut ties = 0;
        for (i, (&w, &g)) in want.iter().zip(got).enumerate() {
            if w != g {
                if self.kind == BackendKind::Wgpu && (w - g).abs() == 1 && is_tie(x[i], s, format) {
                    ties += 1;
                } else {
                    return None;
                }
            }
        }
        Some(ties)
    }

    #[allow(clippy::too_many_arguments)]
    fn projection(
        &mut self,
        op: &'static str,
        shape_s: &str,
        act: &[f32],
        k: usize,
        w: &Weights,
        call: &ProjCall<'_>,
        ref_codes: &RefCodes<'_>,
        ref_float: &RefFloat<'_>,
    ) {
        let rows = act.len() / k.max(1);
        let wname = w.format.as_str();
        for format in QUANT_FORMATS {
            let fname = format!("{}/{wname}", format.as_str());
            let Ok(Some(s_ref)) = activation_scale(act, format) else {
                continue;
            };
            let codes = codes_with(act, s_ref, format);
            let expected = ref_codes(&codes, s_ref);
            let words = if format.is_signed() {
                pack_rows_i32_to_i8x4("verify", &codes, rows, k).ok()
            } else {
                None
            };
            let mut variants: Vec<(&str, ActInput<'_>, ScaleSource)> = vec![
                (
                    "codes+param",
                    ActInput::Codes(&codes),
                    ScaleSource::Param(s_ref),
                ),
                (
                    "codes+buffer",
                    ActInput::Codes(&codes),
                    ScaleSource::Buffer(s_ref),
                ),
            ];
            if let Some(words) = &words {
                variants.push((
                    "packed+param",
                    ActInput::Packed(words),
                    ScaleSource::Param(s_ref),
                ));
                variants.push((
                    "packed+buffer",
                    ActInput::Packed(words),
                    ScaleSource::Buffer(s_ref),
                ));
            }
            variants.push(("f32+param", ActInput::F32(act), ScaleSource::Param(s_ref)));
            variants.push(("f32+compute", ActInput::F32(act), ScaleSource::Compute));
            for (variant, input, scale) in variants {
                let args = ProjectionArgs {
                    input,
                    format,
                    scale,
                    w_words: &w.words,
                    w_scale: w.scale,
                    w_qmax: w.qmax,
                    epilogue: Epilogue::default(),
                };
                let t = Instant::now();
                let res = call(self.backend, &args);
                let dt = t.elapsed().as_secs_f64();
                let out = match res {
                    Ok(out) => out,
                    Err(e) => {
                        let st = error_status(self.kind, &e);
                        self.push(
                            op,
                            variant,
                            &fname,
                            shape_s,
                            None,
                            Some(dt),
                            st,
                            String::new(),
                        );
                        continue;
                    }
                };
                let mut note = String::new();
                let (status, report) = if matches!(scale, ScaleSource::Compute) {
                    // Bit-exact given the backend's scale, which must match the reference's.
                    let s = out.a_scale;
                    let (rel, ok) = scale_ok(s, s_ref);
                    note = format!("scale rel err {rel:.1e}");
                    let mut want_codes = codes_with(act, s, format);
                    if self.kind == BackendKind::Wgpu
                        && let Ok((got, _)) =
                            self.backend
                                .quantize_codes(act, format, ScaleSource::Param(s))
                        && let Some(n) = self.tie_only(act, s, format, &want_codes, &got)
                        && n > 0
                    {
                        note.push_str(&format!("; {n} ties allowed"));
                        want_codes = got;
                    }
                    match ref_codes(&want_codes, s) {
                        Ok(want) => {
                            let report = compare_f32(&want, &out.values);
                            let st = if ok {
                                Self::exact_status(&report)
                            } else {
                                Status::Fail(format!(
                                    "scale {s} vs reference {s_ref} (rel {rel:.1e})"
                                ))
                            };
                            (st, Some(report))
                        }
                        Err(e) => (Status::Fail(format!("reference: {e}")), None),
                    }
                } else {
                    match &expected {
                        Ok(want) => {
                            let report = compare_f32(want, &out.values);
                            let st = if out.a_scale.to_bits() != s_ref.to_bits() {
                                Status::Fail(format!(
                                    "returned a_scale {} but {} was given",
                                    out.a_scale, s_ref
                                ))
                            } else {
                                Self::exact_status(&report)
                            };
                            (st, Some(report))
                        }
                        Err(e) => (Status::Fail(format!("reference: {e}")), None),
                    }
                };
                self.push(op, variant, &fname, shape_s, report, Some(dt), status, note);
            }
        }
        // Epilogues (f16/bf16 output, fused ReLU) on int8 codes: the reference output
        // passed through the same epilogue (f16/bf16 values are widened back exactly).
        let format = LowBitActivationFormat::Int8;
        if let Ok(Some(s_ref)) = activation_scale(act, format) {
            let codes = codes_with(act, s_ref, format);
            let expected = ref_codes(&codes, s_ref);
            for (name, dtype, relu) in [
                ("relu", OutputDType::F32, true),
                ("f16", OutputDType::F16, false),
                ("bf16+relu", OutputDType::Bf16, true),
            ] {
                let epilogue = Epilogue { dtype, relu };
                let args = ProjectionArgs {
                    input: ActInput::Codes(&codes),
                    format,
                    scale: ScaleSource::Param(s_ref),
                    w_words: &w.words,
                    w_scale: w.scale,
                    w_qmax: w.qmax,
                    epilogue,
                };
                let variant = format!("codes+param {name}");
                let fname = format!("int8/{wname}");
                let t = Instant::now();
                let res = call(self.backend, &args);
                let dt = t.elapsed().as_secs_f64();
                let (status, report) = match (res, &expected) {
                    (Err(e), _) => (error_status(self.kind, &e), None),
                    (_, Err(e)) => (Status::Fail(format!("reference: {e}")), None),
                    (Ok(out), Ok(want)) => {
                        let want: Vec<f32> = want.iter().map(|&v| epilogue.apply(v)).collect();
                        let r = compare_f32(&want, &out.values);
                        (Self::exact_status(&r), Some(r))
                    }
                };
                self.push(
                    op,
                    &variant,
                    &fname,
                    shape_s,
                    report,
                    Some(dt),
                    status,
                    String::new(),
                );
            }
        }
        // The float path: f32 in, no activation quantization.
        let fname = format!("none/{wname}");
        let args = ProjectionArgs {
            input: ActInput::F32(act),
            format: LowBitActivationFormat::Fp16,
            scale: ScaleSource::Compute,
            w_words: &w.words,
            w_scale: w.scale,
            w_qmax: w.qmax,
            epilogue: Epilogue::default(),
        };
        let t = Instant::now();
        let res = call(self.backend, &args);
        let dt = t.elapsed().as_secs_f64();
        match (res, ref_float(act)) {
            (Err(e), _) => {
                let st = error_status(self.kind, &e);
                self.push(
                    op,
                    "f32 float",
                    &fname,
                    shape_s,
                    None,
                    Some(dt),
                    st,
                    String::new(),
                );
            }
            (Ok(_), Err(e)) => self.push(
                op,
                "f32 float",
                &fname,
                shape_s,
                None,
                Some(dt),
                Status::Fail(format!("reference: {e}")),
                String::new(),
            ),
            (Ok(out), Ok(want)) => {
                let report = compare_f32(&want, &out.values);
                let bound = tol::FLOAT_PATH_REL * report.max_abs_expected.max(f32::MIN_POSITIVE);
                let status = if report.non_finite == 0
                    && report.nmse <= tol::FLOAT_PATH_NMSE
                    && report.max_abs <= bound
                {
                    Status::Pass
                } else {
                    Status::Fail(format!(
                        "beyond float tolerance (nmse <= {:.0e}, max abs <= {bound:.2e}): {report}",
                        tol::FLOAT_PATH_NMSE
                    ))
                };
                self.push(
                    op,
                    "f32 float",
                    &fname,
                    shape_s,
                    Some(report),
                    Some(dt),
                    status,
                    "tolerance".into(),
                );
            }
        }
    }

    fn lowrank(&mut self, case: &Case) {
        let shape = case.lowrank;
        let [b, hin, t, d] = shape.x_shape();
        let [h, _, n] = shape.w_shape();
        let shape_s = format!(
            "x[{b},{hin},{t},{d}] w[{h},{d},{n}] out:{}",
            shape.latent_out
        );
        let w = &case.lowrank_w;
        self.projection(
            "lowrank",
            &shape_s,
            &case.x,
            d,
            w,
            &|be, args| be.lowrank(&shape, args),
            &|codes, s| reference::lowrank_projection_codes(&shape, codes, &w.codes, s, w.scale),
            &|x| reference::lowrank_projection_float(&shape, x, &w.codes, w.scale),
        );
    }

    fn decoder_tail(&mut self, case: &Case) {
        let shape = case.decoder;
        let [b, h, t, l] = shape.y_shape();
        let [rows, d] = shape.w_shape();
        let shape_s = format!("y[{b},{h},{t},{l}] w[{rows},{d}]");
        let w = &case.decoder_w;
        self.projection(
            "decoder_tail",
            &shape_s,
            &case.y,
            l,
            w,
            &|be, args| be.decoder_tail(&shape, args),
            &|codes, s| reference::decoder_tail_codes(&shape, codes, &w.codes, s, w.scale),
            &|y| reference::decoder_tail_float(&shape, y, &w.codes, w.scale),
        );
    }

    fn rho(&mut self, case: &Case) {
        let shape = case.rho;
        let shape_s = format!("{:?}", shape.logical_shape).replace(' ', "");
        let want = reference::rho::rho_int8_pack_words(&shape, &case.rho_values);
        let Ok((want_words, want_scales)) = want else {
            return;
        };
        let t = Instant::now();
        let res = self.backend.rho_int8_pack(&shape, &case.rho_values);
        let dt = t.elapsed().as_secs_f64();
        match res {
            Err(e) => {
                let st = error_status(self.kind, &e);
                self.push(
                    "rho",
                    "int8 pack",
                    "int8",
                    &shape_s,
                    None,
                    Some(dt),
                    st,
                    String::new(),
                );
            }
            Ok((words, scales)) => {
                let report = compare_f32(&words_as_lanes(&want_words), &words_as_lanes(&words));
                let scales_report = compare_f32(&want_scales, &scales);
                let status = if !scales_report.bit_exact() {
                    Status::Fail(format!("block scales differ: {scales_report}"))
                } else {
                    Self::exact_status(&report)
                };
                self.push(
                    "rho",
                    "int8 pack",
                    "int8",
                    &shape_s,
                    Some(report),
                    Some(dt),
                    status,
                    String::new(),
                );
            }
        }
        let want = reference::rho::rho_int8_unpack_words(&shape, &want_words, &want_scales);
        let t = Instant::now();
        let res = self
            .backend
            .rho_int8_unpack(&shape, &want_words, &want_scales);
        let dt = t.elapsed().as_secs_f64();
        let (status, report) = match (res, want) {
            (Err(e), _) => (error_status(self.kind, &e), None),
            (_, Err(e)) => (Status::Fail(format!("reference: {e}")), None),
            (Ok(got), Ok(want)) => {
                let r = compare_f32(&want, &got);
                (Self::exact_status(&r), Some(r))
            }
        };
        self.push(
            "rho",
            "int8 unpack",
            "int8",
            &shape_s,
            report,
            Some(dt),
            status,
            String::new(),
        );
    }
}

/// Runs the whole matrix; rows in order of backend, case, op.
pub fn run_matrix(kinds: &[BackendKind], cases: usize, seed: u64) -> Result<Vec<Row>, String> {
    let mut rng = Rng::new(seed);
    let cases: Vec<Case> = (0..cases)
        .map(|i| gen_case(&mut rng, i))
        .collect::<Result<_, _>>()?;
    let required = testing::required_backends();
    let mut rows = Vec::new();
    for &kind in kinds {
        let be = match backend::open(kind) {
            Ok(be) => be,
            Err(e) => {
                let reason = match &e {
                    LowbitError::BackendUnavailable { reason, .. } => reason.clone(),
                    other => other.to_string(),
                };
                let status = if required.contains(&kind) {
                    Status::Fail(format!("required by LOWBIT_REQUIRE: {reason}"))
                } else if matches!(e, LowbitError::BackendUnavailable { .. }) {
                    Status::Skipped(reason)
                } else {
                    Status::Fail(reason)
                };
                rows.push(Row {
                    op: "*",
                    backend: kind.as_str().into(),
                    variant: "-".into(),
                    format: "-".into(),
                    shape: "-".into(),
                    report: None,
                    time_s: None,
                    status,
                    note: String::new(),
                });
                continue;
            }
        };
        let mut ctx = Ctx {
            backend: be.as_ref(),
            kind,
            rows: Vec::new(),
        };
        for case in &cases {
            ctx.quantize(case);
            ctx.lowrank(case);
            ctx.decoder_tail(case);
            ctx.rho(case);
        }
        rows.append(&mut ctx.rows);
    }
    Ok(rows)
}

pub fn main(tokens: &[String]) -> Result<i32, String> {
    let args = Args::parse(tokens, &["backend", "cases", "seed"], &["json"])?;
    args.at_most_positional(0)?;
    let kinds = parse_backends(args.value("backend"))?;
    let cases: usize = args.number("cases", 4)?;
    if cases == 0 {
        return Err("--cases must be at least 1".into());
    }
    let seed: u64 = args.number("seed", 1)?;
    let t = Instant::now();
    let rows = run_matrix(&kinds, cases, seed)?;
    let elapsed = t.elapsed().as_secs_f64();
    let count = |f: fn(&Status) -> bool| rows.iter().filter(|r| f(&r.status)).count();
    let passed = count(|s| matches!(s, Status::Pass));
    let failed = count(|s| matches!(s, Status::Fail(_)));
    let unsupported = count(|s| matches!(s, Status::Unsupported(_)));
    let skipped = count(|s| matches!(s, Status::Skipped(_)));
    if args.switch("json") {
        let json = obj([
            ("seed", (seed as f64).into()),
            ("cases", cases.into()),
            (
                "summary",
                obj([
                    ("passed", passed.into()),
                    ("failed", failed.into()),
                    ("unsupported", unsupported.into()),
                    ("skipped", skipped.into()),
                    ("seconds", elapsed.into()),
                ]),
            ),
            ("rows", Json::Arr(rows.iter().map(row_json).collect())),
        ]);
        print!("{}", json.pretty());
    } else {
        let table_rows: Vec<Vec<String>> = rows.iter().map(row_cells).collect();
        print!(
            "{}",
            table::render(
                &[
                    "op",
                    "backend",
                    "variant",
                    "format",
                    "shape",
                    "max abs err",
                    "NMSE",
                    "bit-exact",
                    "time",
                    "status",
                    "note",
                ],
                &table_rows,
            )
        );
        for r in rows.iter().filter(|r| matches!(r.status, Status::Fail(_))) {
            println!(
                "FAIL {} {} {} {} {}: {}",
                r.op,
                r.backend,
                r.variant,
                r.format,
                r.shape,
                r.status.note()
            );
        }
        println!(
            "verify: {passed} passed, {failed} failed, {unsupported} unsupported, {skipped} skipped \
             ({cases} cases, seed {seed}, {})",
            table::fmt_duration(elapsed)
        );
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

fn row_cells(r: &Row) -> Vec<String> {
    let (max_abs, nmse, exact) = match &r.report {
        Some(rep) => (
            table::fmt_sci(f64::from(rep.max_abs)),
            table::fmt_sci(rep.nmse),
            if rep.bit_exact() { "yes" } else { "no" }.to_string(),
        ),
        None => ("-".into(), "-".into(), "-".into()),
    };
    let note = match &r.status {
        Status::Pass => r.note.clone(),
        other => {
            let mut n = other.note().to_string();
            if n.len() > 90 {
                n.truncate(87);
                n.push_str("...");
            }
            n
        }
    };
    vec![
        r.op.to_string(),
        r.backend.clone(),
        r.variant.clone(),
        r.format.clone(),
        r.shape.clone(),
        max_abs,
        nmse,
        exact,
        r.time_s.map_or("-".into(), table::fmt_duration),
        r.status.label().to_string(),
        note,
    ]
}

fn row_json(r: &Row) -> Json {
    obj([
        ("op", r.op.into()),
        ("backend", r.backend.clone().into()),
        ("variant", r.variant.clone().into()),
        ("format", r.format.clone().into()),
        ("shape", r.shape.clone().into()),
        ("max_abs_err", r.report.map(|x| x.max_abs).into()),
        ("nmse", r.report.map(|x| x.nmse).into()),
        ("bit_exact", r.report.map(|x| x.bit_exact()).into()),
        ("mismatches", r.report.map(|x| x.mismatches).into()),
        ("seconds", r.time_s.into()),
        ("status", r.status.label().into()),
        ("reason", r.status.note().to_string().into()),
        ("note", r.note.clone().into()),
    ])
}
