//! Differential tests: every backend against `lowbit_kernels::reference`, bit for bit on the
//! integer paths. One test executable; one module per op.
//!
//! Each case is a plain function `fn(&mut Ctx)`; [`backend_tests!`] turns it into one `#[test]`
//! per backend (`<op>::<case>::cpu`, `::cuda`, `::wgpu`), so a failure names its backend. A
//! backend that cannot be opened is SKIPPED loudly (or fails when `LOWBIT_REQUIRE` lists it).
//! A case records every failing sub-case (with an `ErrorReport` line) and fails once at the end.

use std::fmt::Display;
use std::sync::OnceLock;

use lowbit_kernels::backend::cpu::{CpuBackend, CpuKernel};
use lowbit_kernels::backend::{self, Backend, ProjectionArgs};
use lowbit_kernels::config::LowBitActivationFormat as Fmt;
use lowbit_kernels::ops::{
    ActInput, DecoderTailShape, Epilogue, LowrankShape, OutputDType, ProjectionOutput, ScaleSource,
};
use lowbit_kernels::pack::pack_rows_i32_to_i8x4;
use lowbit_kernels::quant::{activation_code, activation_scale};
use lowbit_kernels::testing::{self, ErrorReport, compare_f32, tol};
use lowbit_kernels::{BackendKind, LowbitError, reference};

/// One `#[test]` per backend for each listed case function of the enclosing module.
macro_rules! backend_tests {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[test]
            fn cpu() {
                crate::run(lowbit_kernels::BackendKind::Cpu, super::$case);
            }
            /// The CPU backend forced onto its portable kernel (the SIMD one is `cpu`).
            #[test]
            fn cpu_portable() {
                crate::run_cpu_portable(super::$case);
            }
            #[test]
            fn cuda() {
                crate::run(lowbit_kernels::BackendKind::Cuda, super::$case);
            }
            /// CUDA forced onto the dp4a family (`cuda` runs the device's default family).
            #[test]
            fn cuda_dp4a() {
                crate::run_cuda_dp4a(super::$case);
            }
            /// CUDA with ternary/binary weights kept at 2 bits on the device (ternary2).
            #[test]
            fn cuda_t2() {
                crate::run_cuda_t2(super::$case);
            }
            #[test]
            fn wgpu() {
                crate::run(lowbit_kernels::BackendKind::Wgpu, super::$case);
            }
        }
    )*};
}

#[cfg(feature = "cuda")]
mod cuda_extra;
#[cfg(feature = "cuda")]
mod cuda_mma;
mod decoder_tail;
#[cfg(feature = "wgpu")]
mod device_fuzz;
mod fuzz;
mod lowrank;
mod quantize;
mod rho;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
mod tensor;
#[cfg(feature = "wgpu")]
mod wgpu_extra;

type Opened = Result<Box<dyn Backend>, String>;
static BACKENDS: [OnceLock<Opened>; 3] = [const { OnceLock::new() }; 3];

fn slot(kind: BackendKind) -> usize {
    match kind {
        BackendKind::Cpu => 0,
        BackendKind::Cuda => 1,
        BackendKind::Wgpu => 2,
    }
}

/// Opens each backend once per test process (GPU device creation is slow).
fn backend_for(kind: BackendKind) -> Option<&'static dyn Backend> {
    let opened =
        BACKENDS[slot(kind)].get_or_init(|| backend::open(kind).map_err(|e| e.to_string()));
    match opened {
        Ok(b) => Some(b.as_ref()),
        Err(reason) => {
            if let Err(msg) = testing::skip_or_fail(kind, reason) {
                panic!("{msg}");
            }
            None
        }
    }
}

/// Runs one case on the CPU backend's portable kernel.
pub fn run_cpu_portable(case: fn(&mut Ctx)) {
    static PORTABLE: OnceLock<CpuBackend> = OnceLock::new();
    let b = PORTABLE.get_or_init(|| CpuBackend::with_kernel(CpuKernel::Portable));
    run_on(b, BackendKind::Cpu, case);
}

/// The CUDA backend in `cell`, opened once by `open`; `None` after a loud `SKIPPED` when it
/// could not be opened (a panic instead under `LOWBIT_REQUIRE=cuda`).
#[cfg(feature = "cuda")]
pub fn cuda_backend(
    cell: &'static OnceLock<Result<lowbit_kernels::backend::cuda::CudaBackend, String>>,
    open: impl FnOnce() -> Result<lowbit_kernels::backend::cuda::CudaBackend, String>,
) -> Option<&'static lowbit_kernels::backend::cuda::CudaBackend> {
    match cell.get_or_init(open) {
        Ok(b) => Some(b),
        Err(reason) => {
            if let Err(msg) = testing::skip_or_fail(BackendKind::Cuda, reason) {
                panic!("{msg}");
            }
            None
        }
    }
}

/// Whether `dev` compiled a module whose key holds every one of `needles` (defines such as
/// `LB_RED16=1`); a needle ending in `.cu` names the file and must open the key. The tests use
/// it to show that a case reached the kernel variant it is about.
#[cfg(feature = "cuda")]
pub fn compiled(dev: &lowbit_kernels::backend::cuda::CudaDevice, needles: &[&str]) -> bool {
    dev.compile_logs().iter().any(|(key, _)| {
        needles.iter().all(|n| {
            if n.ends_with(".cu") {
                key.starts_with(n)
            } else {
                key.contains(n)
            }
        })
    })
}

/// Runs one case on a CUDA backend that uploads ternary/binary weights as ternary2 fragments
/// (the tensor-core small-M kernel at every M); skips loudly without the int8 tensor cores.
pub fn run_cuda_t2(case: fn(&mut Ctx)) {
    #[cfg(feature = "cuda")]
    {
        use lowbit_kernels::backend::cuda::CudaBackend;
        static T2: OnceLock<Result<CudaBackend, String>> = OnceLock::new();
        let opened = cuda_backend(&T2, || {
            let b = CudaBackend::new(0)
                .map_err(|e| e.to_string())?
                .with_ternary2_weights(true);
            if b.ternary2_weights() {
                Ok(b)
            } else {
                Err(format!(
                    "{} has no int8 tensor cores (ternary2 weights need sm_80+)",
                    b.device().name()
                ))
            }
        });
        if let Some(b) = opened {
            run_on(b, BackendKind::Cuda, case);
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = case;
        if let Err(msg) = testing::skip_or_fail(BackendKind::Cuda, "built without the cuda feature")
        {
            panic!("{msg}");
        }
    }
}

/// Runs one case on a CUDA backend forced onto the dp4a kernels (the tiled and small-M paths),
/// whatever family the device would pick.
pub fn run_cuda_dp4a(case: fn(&mut Ctx)) {
    #[cfg(feature = "cuda")]
    {
        use lowbit_kernels::backend::cuda::{CudaBackend, CudaDevice, KernelFamily};
        static DP4A: OnceLock<Result<CudaBackend, String>> = OnceLock::new();
        let opened = cuda_backend(&DP4A, || {
            CudaDevice::new(0)
                .and_then(|d| d.with_family(KernelFamily::Dp4a))
                .map(CudaBackend::from_device)
                .map_err(|e| e.to_string())
        });
        if let Some(b) = opened {
            run_on(b, BackendKind::Cuda, case);
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = case;
        if let Err(msg) = testing::skip_or_fail(BackendKind::Cuda, "built without the cuda feature")
        {
            panic!("{msg}");
        }
    }
}

/// Runs one case on one backend (or skips it) and fails with every recorded failure.
pub fn run(kind: BackendKind, case: fn(&mut Ctx)) {
    let Some(b) = backend_for(kind) else {
        return;
    };
    run_on(b, kind, case);
}

fn run_on(b: &'static dyn Backend, kind: BackendKind, case: fn(&mut Ctx)) {
    println!("[{kind}] backend: {}", b.name());
    let mut ctx = Ctx {
        b,
        kind,
        failures: Vec::new(),
        tie_flips: 0,
        checks: 0,
    };
    case(&mut ctx);
    if ctx.tie_flips > 0 {
        println!(
            "[{kind}] {} code(s) differ only at near-ties of x/scale (allowed for wgpu division)",
            ctx.tie_flips
        );
    }
    println!(
        "[{kind}] {} checks, {} failures",
        ctx.checks,
        ctx.failures.len()
    );
    if !ctx.failures.is_empty() {
        panic!(
            "[{kind}] {} failing check(s):\n{}",
            ctx.failures.len(),
            ctx.failures.join("\n")
        );
    }
}

/// State of one case on one backend: the backend, and the failures seen so far.
pub struct Ctx {
    pub b: &'static dyn Backend,
    pub kind: BackendKind,
    pub failures: Vec<String>,
    /// Codes that differ from the reference only at near-ties (wgpu only).
    pub tie_flips: usize,
    pub checks: usize,
}

impl Ctx {
    pub fn fail(&mut self, case: &str, msg: impl Display) {
        let line = format!("[{}] {case}: {msg}", self.kind);
        eprintln!("FAIL {line}");
        self.failures.push(line);
    }

    /// May this backend's divisions be off by a few ulp (SPEC.md: WGSL)?
    pub fn inexact_division(&self) -> bool {
        self.kind == BackendKind::Wgpu
    }

    /// Bit-exact comparison of f32 outputs (±0 equal); also fails on any NaN left (poison).
    pub fn check_exact(&mut self, case: &str, expected: &[f32], actual: &[f32]) -> bool {
        self.checks += 1;
        let r = compare_f32(expected, actual);
        if r.bit_exact() {
            true
        } else {
            self.fail(case, format!("not bit-exact: {r}"));
            false
        }
    }

    /// Tolerance comparison for the float path.
    pub fn check_close(
        &mut self,
        case: &str,
        expected: &[f32],
        actual: &[f32],
        rel: f32,
        nmse: f64,
    ) -> bool {
        self.checks += 1;
        let r = compare_f32(expected, actual);
        let ok = r.non_finite == 0
            && r.len == actual.len()
            && r.max_abs <= rel * r.max_abs_expected.max(f32::MIN_POSITIVE)
            && r.nmse <= nmse;
        if !ok {
            self.fail(
                case,
                format!("outside tolerance (rel {rel:e}, nmse {nmse:e}): {r}"),
            );
        }
        ok
    }

    /// The result must be an error accepted by `pred`.
    pub fn check_err<T: std::fmt::Debug>(
        &mut self,
        case: &str,
        result: lowbit_kernels::Result<T>,
        want: &str,
        pred: impl Fn(&LowbitError) -> bool,
    ) {
        self.checks += 1;
        match result {
            Err(e) if pred(&e) => {}
            Err(e) => self.fail(case, format!("expected {want}, got error {e:?}")),
            Ok(v) => {
                let mut s = format!("{v:?}");
                s.truncate(200);
                self.fail(case, format!("expected {want}, got Ok({s})"))
            }
        }
    }

    /// Unwraps a backend result or records the error.
    pub fn ok<T>(&mut self, case: &str, result: lowbit_kernels::Result<T>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.checks += 1;
                self.fail(case, format!("unexpected error: {e}"));
                None
            }
        }
    }

    /// Checks a backend-computed scale against the reference's within `tol::DEVICE_SCALE_REL`.
    pub fn check_scale(&mut self, case: &str, reference: f32, actual: f32) -> bool {
        self.checks += 1;
        let ok = actual.is_finite()
            && actual > 0.0
            && (actual - reference).abs() <= tol::DEVICE_SCALE_REL * reference;
        if !ok {
            self.fail(
                case,
                format!(
                    "scale {actual:e} vs reference {reference:e} (rel tol {:e})",
                    tol::DEVICE_SCALE_REL
                ),
            );
        }
        ok
    }

    /// Compares codes bit-exactly; on backends with inexact division, codes one apart where
    /// `|x/scale|` is a near-tie are counted in `tie_flips` instead of failing.
    pub fn check_codes(
        &mut self,
        case: &str,
        x: &[f32],
        scale: f32,
        format: Fmt,
        expected: &[i32],
        actual: &[i32],
    ) -> bool {
        self.checks += 1;
        if expected.len() != actual.len() {
            self.fail(
                case,
                format!("{} codes, expected {}", actual.len(), expected.len()),
            );
            return false;
        }
        let (mut bad, mut ties, mut first_bad) = (0usize, 0usize, None);
        for (i, (&e, &a)) in expected.iter().zip(actual).enumerate() {
            if e == a {
                continue;
            }
            if self.inexact_division() && (e - a).abs() == 1 && near_tie(x[i], scale, format) {
                ties += 1;
            } else {
                bad += 1;
                first_bad.get_or_insert(i);
            }
        }
        self.tie_flips += ties;
        if let Some(i) = first_bad {
            self.fail(
                case,
                format!(
                    "{bad} code(s) differ (+{ties} near-tie); first at {i}: x={:e} scale={scale:e} expected {} got {}",
                    x[i], expected[i], actual[i]
                ),
            );
            false
        } else {
            true
        }
    }

    /// Integer projection output vs the reference: bit-exact, except that on backends with
    /// inexact division an element may differ by at most `slack[i]` (the |weight| mass on
    /// near-tie inputs, already in output units).
    pub fn check_projection(
        &mut self,
        case: &str,
        expected: &[f32],
        actual: &[f32],
        slack: Option<&[f32]>,
    ) -> bool {
        let r = compare_f32(expected, actual);
        if r.bit_exact() {
            self.checks += 1;
            return true;
        }
        if let (true, Some(slack), 0, true) = (
            self.inexact_division(),
            slack,
            r.non_finite,
            expected.len() == actual.len(),
        ) {
            let explained = expected
                .iter()
                .zip(actual)
                .zip(slack)
                .all(|((&e, &a), &s)| (a - e).abs() <= s * (1.0 + 1e-5));
            if explained {
                self.checks += 1;
                self.tie_flips += r.mismatches;
                return true;
            }
        }
        self.check_exact(case, expected, actual)
    }
}

/// `|x/scale|` within 4 ulp of `k + 0.5` (where an inexact division can flip the rounding).
pub fn near_tie(x: f32, scale: f32, format: Fmt) -> bool {
    let v = if format == Fmt::Uint8PosExp {
        x.max(0.0)
    } else {
        x
    };
    let q = (v / scale).abs();
    if !q.is_finite() {
        return false;
    }
    let tie = q.floor() + 0.5;
    let ulp = q.next_up() - q;
    (q - tie).abs() <= 4.0 * ulp
}

/// Reference codes (i32) of `x` in `format` with scale `s`.
pub fn ref_codes(x: &[f32], format: Fmt, s: f32) -> Vec<i32> {
    x.iter().map(|&v| activation_code(v, s, format)).collect()
}

/// Reference scale (panics on the float path; tests only).
pub fn ref_scale(x: &[f32], format: Fmt) -> f32 {
    activation_scale(x, format).unwrap().unwrap()
}

/// The epilogue applied to a reference output: relu, then one rounding to f16/bf16.
pub fn apply_epilogue(values: &[f32], ep: Epilogue) -> Vec<f32> {
    values.iter().map(|&v| ep.apply(v)).collect()
}

/// Every integer activation format.
pub const INT_FORMATS: [Fmt; 3] = [Fmt::Int8, Fmt::Int4Exp, Fmt::Uint8PosExp];

/// How the activations are handed to a projection kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    Codes,
    Packed,
    F32,
}

/// Weight code kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightKind {
    Ternary,
    Int8,
}

impl WeightKind {
    pub fn qmax(self) -> u32 {
        match self {
            Self::Ternary => 1,
            Self::Int8 => 127,
        }
    }
    pub fn codes(self, rng: &mut testing::Rng, n: usize) -> Vec<i8> {
        match self {
            Self::Ternary => rng.ternary(n),
            Self::Int8 => rng.int8_codes(n),
        }
    }
}

/// One projection problem: lowrank or decoder tail.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Lowrank(LowrankShape),
    Decoder(DecoderTailShape),
}

impl Op {
    /// Reduction length of one input row (D, or L).
    pub fn k(&self) -> usize {
        match self {
            Op::Lowrank(s) => s.embd,
            Op::Decoder(s) => s.latent,
        }
    }
    /// Length of the whole reduction (D, or H·L): what the accumulator check sees.
    pub fn reduction(&self) -> usize {
        match self {
            Op::Lowrank(s) => s.embd,
            Op::Decoder(s) => s.k(),
        }
    }
    pub fn in_len(&self) -> usize {
        match self {
            Op::Lowrank(s) => s.x_len(),
            Op::Decoder(s) => s.y_len(),
        }
    }
    pub fn rows(&self) -> usize {
        self.in_len() / self.k()
    }
    pub fn w_len(&self) -> usize {
        match self {
            Op::Lowrank(s) => s.w_len(),
            Op::Decoder(s) => s.w_len(),
        }
    }
    pub fn out_len(&self) -> usize {
        match self {
            Op::Lowrank(s) => s.out_len(),
            Op::Decoder(s) => s.out_len(),
        }
    }
    pub fn pack_weights(&self, w: &[i8]) -> Vec<u32> {
        match self {
            Op::Lowrank(s) => {
                lowbit_kernels::pack_lowrank_weight_codes_i8x4(w, s.heads, s.embd, s.latent)
            }
            Op::Decoder(s) => {
                lowbit_kernels::pack_decoder_weight_codes_i8x4(w, s.heads, s.latent_per_head, s.dim)
            }
        }
        .unwrap()
    }
    pub fn reference_codes(&self, codes: &[i32], w: &[i8], a_scale: f32, w_scale: f32) -> Vec<f32> {
        match self {
            Op::Lowrank(s) => reference::lowrank_projection_codes(s, codes, w, a_scale, w_scale),
            Op::Decoder(s) => reference::decoder_tail_codes(s, codes, w, a_scale, w_scale),
        }
        .unwrap()
    }
    pub fn reference_float(&self, x: &[f32], w: &[i8], w_scale: f32) -> Vec<f32> {
        match self {
            Op::Lowrank(s) => reference::lowrank_projection_float(s, x, w, w_scale),
            Op::Decoder(s) => reference::decoder_tail_float(s, x, w, w_scale),
        }
        .unwrap()
    }
    pub fn call(
        &self,
        b: &dyn Backend,
        args: &ProjectionArgs<'_>,
    ) -> lowbit_kernels::Result<ProjectionOutput> {
        match self {
            Op::Lowrank(s) => b.lowrank(s, args),
            Op::Decoder(s) => b.decoder_tail(s, args),
        }
    }
    /// Per-output slack where near-tie inputs could flip by one code: the reference run on
    /// the 0/1 tie mask with |w|, scaled to output units. `None` when there is no near-tie.
    pub fn tie_slack(
        &self,
        x: &[f32],
        format: Fmt,
        a_scale: f32,
        w: &[i8],
        w_scale: f32,
    ) -> Option<Vec<f32>> {
        let mask: Vec<i32> = x
            .iter()
            .map(|&v| i32::from(near_tie(v, a_scale, format)))
            .collect();
        if !mask.contains(&1) {
            return None;
        }
        let abs_w: Vec<i8> = w.iter().map(|c| c.abs()).collect();
        let acc = self.reference_codes(&mask, &abs_w, 1.0, 1.0);
        Some(acc.iter().map(|&a| a * w_scale * a_scale).collect())
    }
}

/// Weights of one problem: codes, words, scale.
pub struct Weights {
    pub kind: WeightKind,
    pub codes: Vec<i8>,
    pub words: Vec<u32>,
    pub scale: f32,
}

impl Weights {
    pub fn new(op: &Op, kind: WeightKind, rng: &mut testing::Rng) -> Self {
        let codes = kind.codes(rng, op.w_len());
        let words = op.pack_weights(&codes);
        let scale = rng.range(0.01, 0.2);
        Self {
            kind,
            codes,
            words,
            scale,
        }
    }
}

/// One integer-path variant of a projection.
#[derive(Clone, Copy, Debug)]
pub struct Variant {
    pub format: Fmt,
    pub input: InputKind,
    pub scale: ScaleSource,
    pub epilogue: Epilogue,
}

/// Runs `variant` of `op` on `x` twice and checks it against the reference: the scale used,
/// bit-exact outputs (near-tie slack on wgpu's fused f32 path), no NaN left, determinism.
pub fn check_int_variant(ctx: &mut Ctx, name: &str, op: &Op, w: &Weights, x: &[f32], v: Variant) {
    let case = format!("{name} {:?} w={:?} {v:?}", op, w.kind);
    let given = match v.scale {
        ScaleSource::Param(s) | ScaleSource::Buffer(s) => Some(s),
        ScaleSource::Compute => None,
    };
    // Inputs of the codes/packed variants are the reference codes at the given scale.
    let codes_scale = given.unwrap_or_else(|| ref_scale(x, v.format));
    let codes = ref_codes(x, v.format, codes_scale);
    let words;
    let input = match v.input {
        InputKind::Codes => ActInput::Codes(&codes),
        InputKind::Packed => {
            words = pack_rows_i32_to_i8x4("test", &codes, op.rows(), op.k()).unwrap();
            ActInput::Packed(&words)
        }
        InputKind::F32 => ActInput::F32(x),
    };
    let args = ProjectionArgs {
        input,
        format: v.format,
        scale: v.scale,
        w_words: &w.words,
        w_scale: w.scale,
        w_qmax: w.kind.qmax(),
        epilogue: v.epilogue,
    };
    let Some(first) = ctx.ok(&case, op.call(ctx.b, &args)) else {
        return;
    };
    let Some(second) = ctx.ok(&case, op.call(ctx.b, &args)) else {
        return;
    };
    ctx.checks += 1;
    let same = first.a_scale.to_bits() == second.a_scale.to_bits()
        && first.values.len() == second.values.len()
        && first
            .values
            .iter()
            .zip(&second.values)
            .all(|(a, b)| a.to_bits() == b.to_bits());
    if !same {
        ctx.fail(&case, "two runs differ (not deterministic)");
    }
    let a_scale = match given {
        Some(s) => {
            ctx.checks += 1;
            if first.a_scale.to_bits() != s.to_bits() {
                ctx.fail(
                    &case,
                    format!("reported a_scale {:e}, given {s:e}", first.a_scale),
                );
            }
            s
        }
        None => {
            if !ctx.check_scale(&format!("{case} scale"), codes_scale, first.a_scale) {
                return;
            }
            first.a_scale
        }
    };
    let exp_codes = if a_scale.to_bits() == codes_scale.to_bits() {
        codes
    } else {
        ref_codes(x, v.format, a_scale)
    };
    let raw = op.reference_codes(&exp_codes, &w.codes, a_scale, w.scale);
    let expected = apply_epilogue(&raw, v.epilogue);
    let slack = if v.input == InputKind::F32
        && ctx.inexact_division()
        && v.epilogue.dtype == OutputDType::F32
    {
        op.tie_slack(x, v.format, a_scale, &w.codes, w.scale)
    } else {
        None
    };
    if !ctx.check_projection(&case, &expected, &first.values, slack.as_deref()) {
        report_line(&case, &compare_f32(&expected, &first.values));
    }
}

/// Float path (`Fp16` format, f32 input): within `testing::tol` of the reference.
pub fn check_float_variant(
    ctx: &mut Ctx,
    name: &str,
    op: &Op,
    w: &Weights,
    x: &[f32],
    epilogue: Epilogue,
) {
    let case = format!("{name} {:?} w={:?} float {epilogue:?}", op, w.kind);
    let args = ProjectionArgs {
        input: ActInput::F32(x),
        format: Fmt::Fp16,
        scale: ScaleSource::Compute,
        w_words: &w.words,
        w_scale: w.scale,
        w_qmax: w.kind.qmax(),
        epilogue,
    };
    let Some(out) = ctx.ok(&case, op.call(ctx.b, &args)) else {
        return;
    };
    if let Some(again) = ctx.ok(&case, op.call(ctx.b, &args)) {
        ctx.checks += 1;
        let same = again.values.len() == out.values.len()
            && again
                .values
                .iter()
                .zip(&out.values)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        if !same {
            ctx.fail(&case, "two runs differ (not deterministic)");
        }
    }
    let expected = apply_epilogue(&op.reference_float(x, &w.codes, w.scale), epilogue);
    // f16/bf16 outputs: one rounding of the (tolerance-close) f32 value.
    let (rel, nmse) = match epilogue.dtype {
        OutputDType::F32 => (tol::FLOAT_PATH_REL, tol::FLOAT_PATH_NMSE),
        OutputDType::F16 => (2.0f32.powi(-10), 1e-6),
        OutputDType::Bf16 => (2.0f32.powi(-7), 1e-4),
    };
    ctx.check_close(&case, &expected, &out.values, rel, nmse);
}

/// Prints one ErrorReport line (max-abs, NMSE, worst index).
pub fn report_line(case: &str, r: &ErrorReport) {
    eprintln!("  report {case}: {r}");
}

/// The epilogues exercised by the epilogue cases.
pub fn epilogues() -> Vec<Epilogue> {
    let mut v = Vec::new();
    for dtype in [OutputDType::F32, OutputDType::F16, OutputDType::Bf16] {
        for relu in [false, true] {
            v.push(Epilogue { dtype, relu });
        }
    }
    v
}

/// Input data of a given flavour.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Data {
    /// Approximately normal, std 1, ~half negative.
    Normal,
    /// All zeros (scale falls to EPS).
    Zeros,
    /// Mostly normal with some ±1e20 values.
    Huge,
    /// Mostly small, a few values far above 2·mean (codes clip at qmax).
    Clip,
    /// Values at `(k+0.5)·s` for the scale `s` the case passes and their neighbours.
    Ties(f32),
}

pub fn make_data(rng: &mut testing::Rng, n: usize, data: Data) -> Vec<f32> {
    match data {
        Data::Normal => rng.normals(n, 1.0),
        Data::Zeros => vec![0.0; n],
        Data::Huge => (0..n)
            .map(|i| {
                if i % 7 == 3 {
                    if i % 2 == 0 { 1e20 } else { -3e19 }
                } else {
                    rng.normal(1.0)
                }
            })
            .collect(),
        Data::Clip => (0..n)
            .map(|i| {
                if i % 11 == 5 {
                    rng.range(50.0, 500.0) * if i % 2 == 0 { 1.0 } else { -1.0 }
                } else {
                    rng.normal(0.1)
                }
            })
            .collect(),
        Data::Ties(s) => (0..n)
            .map(|_| {
                let k = rng.int(-140, 140) as f32;
                let t = (k + 0.5) * s;
                match rng.int(0, 3) {
                    0 => t.next_up(),
                    1 => t.next_down(),
                    _ => t,
                }
            })
            .collect(),
    }
}

/// Random data, every integer format, every input variant and scale source, both weight kinds.
pub fn int_cases(ctx: &mut Ctx, name: &str, ops: &[Op], seed: u64) {
    let mut rng = testing::Rng::new(seed);
    for op in ops {
        for wk in [WeightKind::Ternary, WeightKind::Int8] {
            let w = Weights::new(op, wk, &mut rng);
            for format in INT_FORMATS {
                let x = make_data(&mut rng, op.in_len(), Data::Normal);
                let s = ref_scale(&x, format);
                let mut variants = vec![
                    (InputKind::Codes, ScaleSource::Param(s)),
                    (InputKind::Codes, ScaleSource::Buffer(s * 0.7)),
                    (InputKind::F32, ScaleSource::Param(s)),
                    (InputKind::F32, ScaleSource::Buffer(s * 0.7)),
                    (InputKind::F32, ScaleSource::Compute),
                ];
                if format.is_signed() {
                    variants.push((InputKind::Packed, ScaleSource::Param(s)));
                    variants.push((InputKind::Packed, ScaleSource::Buffer(s * 1.3)));
                }
                for (input, scale) in variants {
                    let v = Variant {
                        format,
                        input,
                        scale,
                        epilogue: Epilogue::default(),
                    };
                    check_int_variant(ctx, name, op, &w, &x, v);
                }
            }
        }
    }
}

/// Larger shapes: one variant per input kind (int8 fused f32 with a computed scale, int4
/// packed, uint8pos codes) and both weight kinds, to keep the debug-mode reference quick.
pub fn large_cases(ctx: &mut Ctx, name: &str, ops: &[Op], seed: u64) {
    let mut rng = testing::Rng::new(seed);
    for op in ops {
        for wk in [WeightKind::Ternary, WeightKind::Int8] {
            let w = Weights::new(op, wk, &mut rng);
            let x = make_data(&mut rng, op.in_len(), Data::Normal);
            for (format, input) in [
                (Fmt::Int8, InputKind::F32),
                (Fmt::Int4Exp, InputKind::Packed),
                (Fmt::Uint8PosExp, InputKind::Codes),
            ] {
                let scale = match input {
                    InputKind::F32 => ScaleSource::Compute,
                    _ => ScaleSource::Param(ref_scale(&x, format)),
                };
                let v = Variant {
                    format,
                    input,
                    scale,
                    epilogue: Epilogue::default(),
                };
                check_int_variant(ctx, name, op, &w, &x, v);
            }
            check_float_variant(ctx, name, op, &w, &x, Epilogue::default());
        }
    }
}

/// Every epilogue (f32/f16/bf16, relu or not) on each input variant, int8 weights.
pub fn epilogue_cases(ctx: &mut Ctx, name: &str, ops: &[Op], seed: u64) {
    epilogue_cases_with(ctx, name, ops, seed, WeightKind::Int8);
}

/// [`epilogue_cases`] with weights of kind `wk`.
pub fn epilogue_cases_with(ctx: &mut Ctx, name: &str, ops: &[Op], seed: u64, wk: WeightKind) {
    let mut rng = testing::Rng::new(seed);
    for op in ops {
        let w = Weights::new(op, wk, &mut rng);
        let x = make_data(&mut rng, op.in_len(), Data::Normal);
        for epilogue in epilogues() {
            for (format, input, scale) in [
                (Fmt::Uint8PosExp, InputKind::Codes, ScaleSource::Param(0.01)),
                (Fmt::Int8, InputKind::Packed, ScaleSource::Buffer(0.02)),
                (Fmt::Int4Exp, InputKind::F32, ScaleSource::Compute),
                (Fmt::Int8, InputKind::F32, ScaleSource::Param(0.015)),
            ] {
                let v = Variant {
                    format,
                    input,
                    scale,
                    epilogue,
                };
                check_int_variant(ctx, name, op, &w, &x, v);
            }
        }
    }
}

/// The float path (`Fp16`, f32 input) within `testing::tol`.
pub fn float_cases(ctx: &mut Ctx, name: &str, ops: &[Op], seed: u64) {
    let mut rng = testing::Rng::new(seed);
    for op in ops {
        for wk in [WeightKind::Ternary, WeightKind::Int8] {
            let w = Weights::new(op, wk, &mut rng);
            let x = make_data(&mut rng, op.in_len(), Data::Normal);
            for epilogue in epilogues() {
                check_float_variant(ctx, name, op, &w, &x, epilogue);
            }
        }
    }
}

/// Zeros (EPS scale), huge magnitudes, exact k+0.5 ties and their neighbours, qmax clipping.
pub fn edge_cases(ctx: &mut Ctx, name: &str, ops: &[Op], seed: u64) {
    edge_cases_with(ctx, name, ops, seed, WeightKind::Int8);
}

/// [`edge_cases`] with weights of kind `wk`.
pub fn edge_cases_with(ctx: &mut Ctx, name: &str, ops: &[Op], seed: u64, wk: WeightKind) {
    let mut rng = testing::Rng::new(seed);
    for op in ops {
        let w = Weights::new(op, wk, &mut rng);
        for data in [
            Data::Zeros,
            Data::Huge,
            Data::Clip,
            Data::Ties(0.25),
            Data::Ties(0.1),
            Data::Ties(0.0137),
        ] {
            let x = make_data(&mut rng, op.in_len(), data);
            for format in INT_FORMATS {
                let mut scales = vec![ScaleSource::Compute];
                if let Data::Ties(s) = data {
                    scales.push(ScaleSource::Param(s));
                    scales.push(ScaleSource::Buffer(s));
                } else {
                    scales.push(ScaleSource::Param(0.05));
                }
                for scale in scales {
                    let mut inputs = vec![InputKind::F32];
                    if scale != ScaleSource::Compute {
                        inputs.push(InputKind::Codes);
                        if format.is_signed() {
                            inputs.push(InputKind::Packed);
                        }
                    }
                    for input in inputs {
                        let v = Variant {
                            format,
                            input,
                            scale,
                            epilogue: Epilogue::default(),
                        };
                        check_int_variant(ctx, &format!("{name} {data:?}"), op, &w, &x, v);
                    }
                }
            }
        }
    }
}

/// The largest accumulator that does not overflow (`k·qmax_a·qmax_w < 2^31`): codes at
/// +qmax against weights at ±127 must give the exact i32.
pub fn max_accumulator_case(ctx: &mut Ctx, name: &str, op: &Op) {
    for (format, code) in [(Fmt::Uint8PosExp, 255), (Fmt::Int8, 127), (Fmt::Int8, -127)] {
        let qmax = format.qmax().unwrap();
        let fits = (op.reduction() as u64) * u64::from(qmax) * 127 < (1u64 << 31);
        for wc in [127i8, -127] {
            let w_codes = vec![wc; op.w_len()];
            let w = Weights {
                kind: WeightKind::Int8,
                words: op.pack_weights(&w_codes),
                codes: w_codes,
                scale: 1.0,
            };
            let codes = vec![code; op.in_len()];
            let args = ProjectionArgs {
                input: ActInput::Codes(&codes),
                format,
                scale: ScaleSource::Param(1.0),
                w_words: &w.words,
                w_scale: 1.0,
                w_qmax: 127,
                epilogue: Epilogue::default(),
            };
            let case = format!(
                "{name} max-acc {format:?} code={code} w={wc} K={}",
                op.reduction()
            );
            if fits {
                if let Some(out) = ctx.ok(&case, op.call(ctx.b, &args)) {
                    let expected = op.reference_codes(&codes, &w.codes, 1.0, 1.0);
                    ctx.check_exact(&case, &expected, &out.values);
                }
            } else {
                ctx.check_err(&case, op.call(ctx.b, &args), "AccumulatorOverflow", |e| {
                    matches!(e, LowbitError::AccumulatorOverflow { .. })
                });
            }
        }
    }
}

fn is_len(e: &LowbitError) -> bool {
    matches!(e, LowbitError::LengthMismatch { .. })
}
fn is_scale(e: &LowbitError) -> bool {
    matches!(e, LowbitError::InvalidScale { .. })
}
fn is_format(e: &LowbitError) -> bool {
    matches!(e, LowbitError::UnsupportedFormat { .. })
}
fn is_shape(e: &LowbitError) -> bool {
    matches!(
        e,
        LowbitError::ShapeMismatch { .. }
            | LowbitError::InvalidShape { .. }
            | LowbitError::InvalidArgument { .. }
            | LowbitError::LengthMismatch { .. }
    )
}

/// Bad inputs must give typed errors: short/long buffers, unsupported formats, NaN/Inf,
/// bad scales, inconsistent shapes (`bad_shapes`, struct literals with matching buffers),
/// accumulator overflow (`overflow` ops have a K too large for uint8pos × int8).
pub fn error_cases(ctx: &mut Ctx, name: &str, op: &Op, bad_shapes: &[Op], overflow: &[Op]) {
    let mut rng = testing::Rng::new(99);
    let w = Weights::new(op, WeightKind::Int8, &mut rng);
    let x = make_data(&mut rng, op.in_len(), Data::Normal);
    let codes = ref_codes(&x, Fmt::Int8, 0.02);
    let words = pack_rows_i32_to_i8x4("test", &codes, op.rows(), op.k()).unwrap();
    let base = ProjectionArgs {
        input: ActInput::F32(&x),
        format: Fmt::Int8,
        scale: ScaleSource::Param(0.02),
        w_words: &w.words,
        w_scale: w.scale,
        w_qmax: 127,
        epilogue: Epilogue::default(),
    };
    let b = ctx.b;
    let expect = |ctx: &mut Ctx,
                  what: &str,
                  args: ProjectionArgs<'_>,
                  want: &str,
                  pred: fn(&LowbitError) -> bool| {
        ctx.check_err(
            &format!("{name} error: {what}"),
            op.call(b, &args),
            want,
            pred,
        );
    };
    // Buffer lengths.
    let short_codes = &codes[..codes.len() - 1];
    expect(
        ctx,
        "short codes",
        ProjectionArgs {
            input: ActInput::Codes(short_codes),
            ..base
        },
        "LengthMismatch",
        is_len,
    );
    let mut long_codes = codes.clone();
    long_codes.push(0);
    expect(
        ctx,
        "long codes",
        ProjectionArgs {
            input: ActInput::Codes(&long_codes),
            ..base
        },
        "LengthMismatch",
        is_len,
    );
    expect(
        ctx,
        "short packed",
        ProjectionArgs {
            input: ActInput::Packed(&words[..words.len() - 1]),
            ..base
        },
        "LengthMismatch",
        is_len,
    );
    expect(
        ctx,
        "short f32",
        ProjectionArgs {
            input: ActInput::F32(&x[..x.len() - 1]),
            ..base
        },
        "LengthMismatch",
        is_len,
    );
    let mut long_x = x.clone();
    long_x.push(0.5);
    expect(
        ctx,
        "long f32 (K mismatch)",
        ProjectionArgs {
            input: ActInput::F32(&long_x),
            ..base
        },
        "LengthMismatch",
        is_len,
    );
    expect(
        ctx,
        "short weights",
        ProjectionArgs {
            w_words: &w.words[..w.words.len() - 1],
            ..base
        },
        "LengthMismatch",
        is_len,
    );
    let mut long_w = w.words.clone();
    long_w.push(0);
    expect(
        ctx,
        "long weights",
        ProjectionArgs {
            w_words: &long_w,
            ..base
        },
        "LengthMismatch",
        is_len,
    );
    expect(
        ctx,
        "empty weights",
        ProjectionArgs {
            w_words: &[],
            ..base
        },
        "LengthMismatch",
        is_len,
    );
    // Formats.
    expect(
        ctx,
        "uint8pos packed",
        ProjectionArgs {
            input: ActInput::Packed(&words),
            format: Fmt::Uint8PosExp,
            ..base
        },
        "UnsupportedFormat",
        is_format,
    );
    expect(
        ctx,
        "fp16 codes",
        ProjectionArgs {
            input: ActInput::Codes(&codes),
            format: Fmt::Fp16,
            ..base
        },
        "UnsupportedFormat",
        is_format,
    );
    expect(
        ctx,
        "fp16 packed",
        ProjectionArgs {
            input: ActInput::Packed(&words),
            format: Fmt::Fp16,
            ..base
        },
        "UnsupportedFormat",
        is_format,
    );
    expect(
        ctx,
        "compute scale on codes",
        ProjectionArgs {
            input: ActInput::Codes(&codes),
            scale: ScaleSource::Compute,
            ..base
        },
        "a typed error",
        |e| {
            matches!(
                e,
                LowbitError::InvalidArgument { .. } | LowbitError::UnsupportedFormat { .. }
            )
        },
    );
    expect(
        ctx,
        "compute scale on packed",
        ProjectionArgs {
            input: ActInput::Packed(&words),
            scale: ScaleSource::Compute,
            ..base
        },
        "a typed error",
        |e| {
            matches!(
                e,
                LowbitError::InvalidArgument { .. } | LowbitError::UnsupportedFormat { .. }
            )
        },
    );
    // Non-finite input.
    for (i, bad) in [
        (0usize, f32::NAN),
        (x.len() / 2, f32::INFINITY),
        (x.len() - 1, f32::NEG_INFINITY),
    ] {
        let mut xb = x.clone();
        xb[i] = bad;
        for (format, scale) in [
            (Fmt::Int8, ScaleSource::Param(0.02)),
            (Fmt::Uint8PosExp, ScaleSource::Compute),
            (Fmt::Fp16, ScaleSource::Compute),
        ] {
            expect(
                ctx,
                &format!("{bad} at {i}, {format:?} {scale:?}"),
                ProjectionArgs {
                    input: ActInput::F32(&xb),
                    format,
                    scale,
                    ..base
                },
                "NonFinite",
                |e| matches!(e, LowbitError::NonFinite { .. }),
            );
        }
    }
    // Scales.
    for s in [0.0, -1.0, f32::NAN, f32::INFINITY, -0.0] {
        expect(
            ctx,
            &format!("Param({s})"),
            ProjectionArgs {
                scale: ScaleSource::Param(s),
                ..base
            },
            "InvalidScale",
            is_scale,
        );
        expect(
            ctx,
            &format!("Buffer({s}) codes"),
            ProjectionArgs {
                input: ActInput::Codes(&codes),
                scale: ScaleSource::Buffer(s),
                ..base
            },
            "InvalidScale",
            is_scale,
        );
        expect(
            ctx,
            &format!("w_scale {s}"),
            ProjectionArgs { w_scale: s, ..base },
            "InvalidScale",
            is_scale,
        );
    }
    // Inconsistent shapes built as literals, with buffers sized to match them.
    for bad in bad_shapes {
        let bx = vec![0.5f32; bad.in_len()];
        let bw = vec![0u32; bad_w_words(bad)];
        let args = ProjectionArgs {
            input: ActInput::F32(&bx),
            w_words: &bw,
            ..base
        };
        ctx.check_err(
            &format!("{name} error: literal shape {bad:?}"),
            bad.call(b, &args),
            "a shape error",
            is_shape,
        );
    }
    // Accumulator overflow (checked before anything runs).
    for big in overflow {
        let bx = vec![1.0f32; big.in_len()];
        let bc = vec![255i32; big.in_len()];
        let bw = vec![0x7f7f_7f7fu32; bad_w_words(big)];
        for input in [ActInput::F32(&bx), ActInput::Codes(&bc)] {
            let args = ProjectionArgs {
                input,
                format: Fmt::Uint8PosExp,
                w_words: &bw,
                w_qmax: 127,
                ..base
            };
            ctx.check_err(
                &format!("{name} error: overflow K={}", big.reduction()),
                big.call(b, &args),
                "AccumulatorOverflow",
                |e| matches!(e, LowbitError::AccumulatorOverflow { .. }),
            );
        }
    }
}

/// Weight words a (possibly inconsistent) shape literal asks for.
fn bad_w_words(op: &Op) -> usize {
    match op {
        Op::Lowrank(s) => s.heads * s.embd.div_ceil(4) * s.latent,
        Op::Decoder(s) => s.heads * s.latent_per_head.div_ceil(4) * s.dim,
    }
}
