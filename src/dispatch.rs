//! Kernel path selection: for one op, input variant and activation format, which kernel path
//! runs it on this machine, and why every better path was skipped.
//!
//! Preference order: CUDA tensor cores (`mma`, sm_80+, projections in the formats the mma
//! family takes) → CUDA dp4a kernels (sm_61+) → WGSL (any wgpu adapter; native `dot4` or the
//! polyfill) → CPU. [`plan_path`] is a pure function of the probed [`Capabilities`] and
//! explicit [`PathOverrides`]; [`PathOverrides::from_env`] reads the environment once:
//!
//! * `LOWBIT_BACKEND=cpu|cuda|wgpu` forces one backend (every fallback testable on one machine);
//! * `LOWBIT_CUDA_KERNELS=dp4a|mma` as the CUDA backend reads it (`dp4a` turns the mma family
//!   off; `mma` on a device below sm_80, or any other value, makes the CUDA backend refuse
//!   to open);
//! * `LOWBIT_WGPU_DOT4=polyfill` as the WGSL backend reads it.
//!
//! [`crate::backend::open_for_plan`] opens the chosen backend, falling down the list (with
//! the reason) when opening fails.

use std::sync::OnceLock;

use crate::caps::{
    BackendProbe, Capabilities, CudaCaps, CudaDeviceCaps, DP4A_MIN_SM, INT8_MMA_MIN_SM,
    WgpuAdapterCaps, WgpuCaps,
};
use crate::config::LowBitActivationFormat;
use crate::error::{BackendKind, LowbitError, Result};

/// Environment variable forcing one backend (`cpu`, `cuda`, `wgpu`).
pub const BACKEND_ENV: &str = "LOWBIT_BACKEND";
/// Environment variable forcing the CUDA kernel family (read by the CUDA backend).
pub const CUDA_KERNELS_ENV: &str = "LOWBIT_CUDA_KERNELS";
/// Environment variable selecting the WGSL dot4 polyfill (read by the WGSL backend).
pub const WGPU_DOT4_ENV: &str = "LOWBIT_WGPU_DOT4";

/// The ops a path is chosen for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelOp {
    /// Activation quantization to one i32 code per element.
    Quantize,
    /// Activation quantization packed into signed i8x4 words (int8/int4 only).
    QuantizePack,
    /// Low-rank projection: x `[B, Hin, T, D]`, weight `[H, D, N]` → `[B, H, T, latent_out]`.
    Lowrank,
    /// Decoder tail: y `[B, H, T, L]` → `[B, 1, T, D]`, summed over heads.
    DecoderTail,
    /// Rho state int8 block compression (pack and unpack).
    RhoInt8,
}

impl KernelOp {
    /// Every op, in declaration order.
    pub const ALL: [Self; 5] = [
        Self::Quantize,
        Self::QuantizePack,
        Self::Lowrank,
        Self::DecoderTail,
        Self::RhoInt8,
    ];

    /// Stable name, e.g. `decoder_tail` (used in request labels and errors).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quantize => "quantize",
            Self::QuantizePack => "quantize_pack",
            Self::Lowrank => "lowrank",
            Self::DecoderTail => "decoder_tail",
            Self::RhoInt8 => "rho_int8",
        }
    }

    fn is_projection(self) -> bool {
        matches!(self, Self::Lowrank | Self::DecoderTail)
    }
}

/// The activation input variant of a projection (see [`crate::ActInput`]); the other ops
/// always take f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputVariant {
    /// f32 values (quantized inside the kernel, or the float path with `Fp16`).
    F32,
    /// i32 codes, one per element.
    Codes,
    /// Prepacked signed i8x4 words.
    Packed,
}

impl InputVariant {
    /// Stable name: `f32`, `codes` or `packed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Codes => "codes",
            Self::Packed => "packed",
        }
    }
}

/// One question to [`plan_path`]: an op, its input variant and activation format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PathRequest {
    /// Op the path is chosen for.
    pub op: KernelOp,
    /// Activation input variant (only the projections read it).
    pub input: InputVariant,
    /// Activation format (`Fp16` with `F32` input: the float path).
    pub format: LowBitActivationFormat,
}

impl PathRequest {
    /// A request for `op` with `input` and activation `format`.
    pub fn new(op: KernelOp, input: InputVariant, format: LowBitActivationFormat) -> Self {
        Self { op, input, format }
    }

    /// `op/input/format`, e.g. `lowrank/packed/int8`.
    pub fn label(&self) -> String {
        format!(
            "{}/{}/{}",
            self.op.as_str(),
            self.input.as_str(),
            self.format.as_str()
        )
    }

    /// A short list covering each op and the variants whose path differs (for `lowbit probe`).
    pub fn summary() -> Vec<Self> {
        use InputVariant as I;
        use KernelOp as O;
        use LowBitActivationFormat as F;
        vec![
            Self::new(O::Quantize, I::F32, F::Int8),
            Self::new(O::QuantizePack, I::F32, F::Int8),
            Self::new(O::Lowrank, I::F32, F::Int8),
            Self::new(O::Lowrank, I::Codes, F::Uint8PosExp),
            Self::new(O::Lowrank, I::Packed, F::Uint8PosExp),
            Self::new(O::Lowrank, I::F32, F::Fp16),
            Self::new(O::DecoderTail, I::Packed, F::Int8),
            Self::new(O::DecoderTail, I::F32, F::Fp16),
            Self::new(O::RhoInt8, I::F32, F::Int8),
        ]
    }
}

/// A kernel path, in preference order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathKind {
    /// CUDA int8 tensor cores (`mma.sync`, sm_80+). Inside this family, shapes the mma
    /// kernels do not take (M ≤ 16 rows, a low-rank D above 512) still run the dp4a kernels
    /// (`CudaDevice::mma_lowrank_ok` / `mma_decoder_ok` decide per launch).
    CudaMma,
    /// CUDA `__dp4a` kernels (sm_61+; also the CUDA float, quantize and rho kernels).
    CudaDp4a,
    /// WGSL compute shaders on a wgpu adapter.
    Wgsl,
    /// The CPU backend.
    Cpu,
}

impl PathKind {
    /// Every path, best first (the order [`plan_path`] tries them).
    pub const ALL: [Self; 4] = [Self::CudaMma, Self::CudaDp4a, Self::Wgsl, Self::Cpu];

    /// Stable name: `cuda-mma`, `cuda-dp4a`, `wgsl` or `cpu` (also the `Display` text).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CudaMma => "cuda-mma",
            Self::CudaDp4a => "cuda-dp4a",
            Self::Wgsl => "wgsl",
            Self::Cpu => "cpu",
        }
    }

    /// The backend that runs this path (both CUDA paths: `BackendKind::Cuda`).
    pub fn backend(self) -> BackendKind {
        match self {
            Self::CudaMma | Self::CudaDp4a => BackendKind::Cuda,
            Self::Wgsl => BackendKind::Wgpu,
            Self::Cpu => BackendKind::Cpu,
        }
    }
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the WGSL integer kernels compute `dot4I8Packed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WgslDot4 {
    /// The builtin, lowered to a native integer dot product on this adapter.
    Native,
    /// The builtin, but the adapter has no native integer dot product (naga unpacks it).
    BuiltinEmulated,
    /// The crate's manual unpack (`LOWBIT_WGPU_DOT4=polyfill`).
    Polyfill,
}

impl WgslDot4 {
    /// Human-readable name (for explanations).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native dot4",
            Self::BuiltinEmulated => "dot4 builtin (emulated by the driver)",
            Self::Polyfill => "dot4 polyfill",
        }
    }
}

/// Why a path was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The cargo feature is off.
    NotBuilt(BackendKind),
    /// Built, but no driver / no adapter (the probe's words).
    NoDriver(BackendKind, String),
    /// The driver is there but lists no device.
    NoDevice(BackendKind),
    /// The device's compute capability is below what the path needs.
    ComputeCapability {
        /// Device name.
        device: String,
        /// The device's compute capability, `(major, minor)`.
        have: (u32, u32),
        /// The minimum the path needs, `(major, minor)`.
        need: (u32, u32),
    },
    /// The path's kernel family does not take this op / input variant / format.
    Unsupported(String),
    /// An override (environment or explicit) turned the path off.
    ForcedOff(String),
    /// [`crate::backend::open_for_plan`] tried it and opening failed.
    OpenFailed(String),
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotBuilt(b) => write!(f, "not built (cargo feature `{b}` off)"),
            Self::NoDriver(b, r) => write!(f, "{b} unavailable: {r}"),
            Self::NoDevice(b) => write!(f, "{b}: no device/adapter found"),
            Self::ComputeCapability { device, have, need } => write!(
                f,
                "{device} is sm_{}{}, below sm_{}{}",
                have.0, have.1, need.0, need.1
            ),
            Self::Unsupported(r) => write!(f, "unsupported: {r}"),
            Self::ForcedOff(r) => write!(f, "forced off: {r}"),
            Self::OpenFailed(r) => write!(f, "open failed: {r}"),
        }
    }
}

/// A path that was not taken, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedPath {
    /// The path not taken.
    pub path: PathKind,
    /// Why it was not taken.
    pub reason: SkipReason,
}

/// The CUDA kernel family override (`LOWBIT_CUDA_KERNELS`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CudaKernelsOverride {
    /// `dp4a`: the dp4a kernels only (the mma family off).
    Dp4a,
    /// `mma`: the mma family (the CUDA backend refuses to open below sm_80).
    Mma,
    /// A value the CUDA backend rejects (it refuses to open).
    Invalid(String),
}

/// Explicit overrides of the path choice (tests build them by hand; [`Self::from_env`]
/// reads the environment).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathOverrides {
    /// Only this backend may run (`LOWBIT_BACKEND`). An invalid value is kept in
    /// `invalid_backend` and forces nothing.
    pub backend: Option<BackendKind>,
    /// An unrecognised `LOWBIT_BACKEND` value (trimmed, lowercased); it forces nothing.
    pub invalid_backend: Option<String>,
    /// `LOWBIT_CUDA_KERNELS`.
    pub cuda_kernels: Option<CudaKernelsOverride>,
    /// `LOWBIT_WGPU_DOT4=polyfill`.
    pub wgpu_dot4_polyfill: bool,
}

impl PathOverrides {
    /// Builds overrides from the three variable values (`None` = unset), as the backends
    /// interpret them.
    pub fn from_values(
        backend: Option<&str>,
        cuda_kernels: Option<&str>,
        wgpu_dot4: Option<&str>,
    ) -> Self {
        let mut o = Self::default();
        if let Some(v) = backend.map(|v| v.trim().to_ascii_lowercase())
            && !v.is_empty()
        {
            match v.as_str() {
                "cpu" => o.backend = Some(BackendKind::Cpu),
                "cuda" => o.backend = Some(BackendKind::Cuda),
                "wgpu" | "wgsl" => o.backend = Some(BackendKind::Wgpu),
                _ => o.invalid_backend = Some(v),
            }
        }
        // As `KernelFamily::choose`: trimmed, case-insensitive, empty = best available.
        if let Some(v) = cuda_kernels.map(|v| v.trim().to_ascii_lowercase())
            && !v.is_empty()
        {
            o.cuda_kernels = Some(match v.as_str() {
                "dp4a" => CudaKernelsOverride::Dp4a,
                "mma" => CudaKernelsOverride::Mma,
                _ => CudaKernelsOverride::Invalid(v),
            });
        }
        // As `Dot4Mode::resolve`.
        o.wgpu_dot4_polyfill = wgpu_dot4.is_some_and(|v| v.trim().eq_ignore_ascii_case("polyfill"));
        o
    }

    /// The overrides in the environment, read once per process.
    pub fn from_env() -> Self {
        static ENV: OnceLock<PathOverrides> = OnceLock::new();
        ENV.get_or_init(|| {
            let var = |k| std::env::var(k).ok();
            Self::from_values(
                var(BACKEND_ENV).as_deref(),
                var(CUDA_KERNELS_ENV).as_deref(),
                var(WGPU_DOT4_ENV).as_deref(),
            )
        })
        .clone()
    }

    fn forced_off(&self, kind: BackendKind) -> Option<SkipReason> {
        let forced = self.backend?;
        (forced != kind).then(|| SkipReason::ForcedOff(format!("{BACKEND_ENV}={forced}")))
    }
}

/// The path chosen for one request, the viable alternatives, and every skipped path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPlan {
    /// The request planned.
    pub request: PathRequest,
    /// Viable paths, best first (`candidates[0]` is the choice). Empty: nothing can run it.
    pub candidates: Vec<PathKind>,
    /// Every path not viable, in preference order, with the reason.
    pub skipped: Vec<SkippedPath>,
    /// The WGSL dot4 flavour, when WGSL is a candidate.
    pub wgsl_dot4: Option<WgslDot4>,
    /// The CUDA device / wgpu adapter the GPU candidates would use.
    pub cuda_device: Option<String>,
    /// The wgpu adapter as `name (backend)`; set only when WGSL is a candidate.
    pub wgpu_adapter: Option<String>,
}

impl PathPlan {
    /// The path that runs the request (`candidates[0]`), or `None` if none can.
    pub fn chosen(&self) -> Option<PathKind> {
        self.candidates.first().copied()
    }

    /// The reason `path` was skipped, if it was.
    pub fn skip_reason(&self, path: PathKind) -> Option<&SkipReason> {
        self.skipped
            .iter()
            .find(|s| s.path == path)
            .map(|s| &s.reason)
    }

    /// One line: `op/input/format: chosen (detail); skipped: path: reason; ...`.
    pub fn explain(&self) -> String {
        let chosen = match self.chosen() {
            Some(p) => format!("{p}{}", self.detail(p)),
            None => "none".into(),
        };
        let skipped = self
            .skipped
            .iter()
            .map(|s| format!("{}: {}", s.path, s.reason))
            .collect::<Vec<_>>()
            .join("; ");
        if skipped.is_empty() {
            format!("{}: {chosen}", self.request.label())
        } else {
            format!("{}: {chosen}; skipped: {skipped}", self.request.label())
        }
    }

    /// ` (device, dot4 flavour)` for a GPU path, empty for the CPU.
    pub fn detail(&self, path: PathKind) -> String {
        match path {
            PathKind::CudaMma | PathKind::CudaDp4a => self
                .cuda_device
                .as_ref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default(),
            PathKind::Wgsl => {
                let mut parts = Vec::new();
                if let Some(a) = &self.wgpu_adapter {
                    parts.push(a.clone());
                }
                if let Some(d) = self.wgsl_dot4 {
                    parts.push(d.as_str().to_string());
                }
                if parts.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", parts.join(", "))
                }
            }
            PathKind::Cpu => String::new(),
        }
    }
}

/// Why no backend can take this request at all (format rules of SPEC.md), if so.
fn format_blocker(req: &PathRequest) -> Option<String> {
    use LowBitActivationFormat as F;
    match req.op {
        KernelOp::Quantize if req.format == F::Fp16 => {
            Some("fp16 is the float path: there is nothing to quantize".into())
        }
        KernelOp::QuantizePack if !req.format.is_signed() => Some(format!(
            "{} codes do not fit a signed i8x4 lane",
            req.format.as_str()
        )),
        KernelOp::Lowrank | KernelOp::DecoderTail => match (req.input, req.format) {
            (InputVariant::Packed, f) if !f.is_signed() => Some(format!(
                "prepacked signed i8x4 words cannot hold {} activations",
                f.as_str()
            )),
            (InputVariant::Codes | InputVariant::Packed, F::Fp16) => {
                Some("the float path takes f32 input only".into())
            }
            _ => None,
        },
        _ => None,
    }
}

/// Why the mma family does not take this request, if so.
fn mma_blocker(req: &PathRequest) -> Option<String> {
    if !req.op.is_projection() {
        return Some(format!(
            "{} runs on the dp4a-family kernels (mma covers the projections only)",
            req.op.as_str()
        ));
    }
    if req.format == LowBitActivationFormat::Fp16 {
        return Some("the float path runs on the dp4a-family kernels".into());
    }
    None
}

fn fmt_sm(c: (u32, u32)) -> String {
    format!("sm_{}{}", c.0, c.1)
}

/// The CUDA device the backend opens (device 0), or why the CUDA paths are out.
fn cuda_device(probe: &BackendProbe<CudaCaps>) -> std::result::Result<&CudaDeviceCaps, SkipReason> {
    match probe {
        BackendProbe::NotBuilt => Err(SkipReason::NotBuilt(BackendKind::Cuda)),
        BackendProbe::Unavailable(r) => Err(SkipReason::NoDriver(BackendKind::Cuda, r.clone())),
        BackendProbe::Available(c) => c
            .devices
            .iter()
            .min_by_key(|d| d.ordinal)
            .ok_or(SkipReason::NoDevice(BackendKind::Cuda)),
    }
}

/// The adapter `AdapterChoice::Best` would open: discrete, integrated, virtual, CPU.
fn wgpu_adapter(
    probe: &BackendProbe<WgpuCaps>,
) -> std::result::Result<&WgpuAdapterCaps, SkipReason> {
    let rank = |a: &WgpuAdapterCaps| match a.device_type.as_str() {
        "DiscreteGpu" => 0,
        "IntegratedGpu" => 1,
        "VirtualGpu" => 2,
        "Cpu" => 3,
        _ => 4,
    };
    match probe {
        BackendProbe::NotBuilt => Err(SkipReason::NotBuilt(BackendKind::Wgpu)),
        BackendProbe::Unavailable(r) => Err(SkipReason::NoDriver(BackendKind::Wgpu, r.clone())),
        BackendProbe::Available(w) => w
            .adapters
            .iter()
            .min_by_key(|a| (rank(a), a.index))
            .ok_or(SkipReason::NoDevice(BackendKind::Wgpu)),
    }
}

/// Picks the kernel path for `req` from `caps` under `overrides` (pure: no environment, no
/// device access). Every path not taken is listed with its reason.
pub fn plan_path(caps: &Capabilities, overrides: &PathOverrides, req: PathRequest) -> PathPlan {
    let mut plan = PathPlan {
        request: req,
        candidates: Vec::new(),
        skipped: Vec::new(),
        wgsl_dot4: None,
        cuda_device: None,
        wgpu_adapter: None,
    };
    let format = format_blocker(&req);
    let cuda = cuda_device(&caps.cuda);
    if let Ok(d) = &cuda {
        plan.cuda_device = Some(format!(
            "{} #{}, {}",
            d.name,
            d.ordinal,
            fmt_sm(d.compute_capability)
        ));
    }
    for path in PathKind::ALL {
        let reason = (|| -> Option<SkipReason> {
            if let Some(r) = overrides.forced_off(path.backend()) {
                return Some(r);
            }
            match path {
                PathKind::CudaMma | PathKind::CudaDp4a => {
                    let dev = match &cuda {
                        Ok(d) => *d,
                        Err(r) => return Some(r.clone()),
                    };
                    // The CUDA backend itself needs sm_61 to open (`KernelFamily::choose`).
                    if !dev.dp4a {
                        return Some(SkipReason::ComputeCapability {
                            device: dev.name.clone(),
                            have: dev.compute_capability,
                            need: DP4A_MIN_SM,
                        });
                    }
                    match &overrides.cuda_kernels {
                        Some(CudaKernelsOverride::Invalid(v)) => {
                            return Some(SkipReason::ForcedOff(format!(
                                "{CUDA_KERNELS_ENV}={v} is not dp4a or mma: the CUDA backend \
                                 refuses to open"
                            )));
                        }
                        Some(CudaKernelsOverride::Mma) if !dev.int8_mma => {
                            return Some(SkipReason::ForcedOff(format!(
                                "{CUDA_KERNELS_ENV}=mma on {} ({}, mma needs {}): the CUDA \
                                 backend refuses to open",
                                dev.name,
                                fmt_sm(dev.compute_capability),
                                fmt_sm(INT8_MMA_MIN_SM)
                            )));
                        }
                        _ => {}
                    }
                    if let Some(r) = &format {
                        return Some(SkipReason::Unsupported(r.clone()));
                    }
                    if path == PathKind::CudaMma {
                        if overrides.cuda_kernels == Some(CudaKernelsOverride::Dp4a) {
                            return Some(SkipReason::ForcedOff(format!("{CUDA_KERNELS_ENV}=dp4a")));
                        }
                        if !dev.int8_mma {
                            return Some(SkipReason::ComputeCapability {
                                device: dev.name.clone(),
                                have: dev.compute_capability,
                                need: INT8_MMA_MIN_SM,
                            });
                        }
                        if let Some(r) = mma_blocker(&req) {
                            return Some(SkipReason::Unsupported(r));
                        }
                    }
                    None
                }
                PathKind::Wgsl => {
                    let adapter = match wgpu_adapter(&caps.wgpu) {
                        Ok(a) => a,
                        Err(r) => return Some(r),
                    };
                    if let Some(r) = &format {
                        return Some(SkipReason::Unsupported(r.clone()));
                    }
                    plan.wgpu_adapter = Some(format!("{} ({})", adapter.name, adapter.backend));
                    plan.wgsl_dot4 = Some(if overrides.wgpu_dot4_polyfill {
                        WgslDot4::Polyfill
                    } else if adapter.native_dot4 {
                        WgslDot4::Native
                    } else {
                        WgslDot4::BuiltinEmulated
                    });
                    None
                }
                PathKind::Cpu => format.clone().map(SkipReason::Unsupported),
            }
        })();
        match reason {
            Some(reason) => plan.skipped.push(SkippedPath { path, reason }),
            None => plan.candidates.push(path),
        }
    }
    plan
}

/// [`plan_path`] on this machine's probe ([`Capabilities::get`]) and the environment.
pub fn plan_path_probed(req: PathRequest) -> PathPlan {
    plan_path(Capabilities::get(), &PathOverrides::from_env(), req)
}

/// The error for a plan with no viable path: `UnsupportedFormat` when no backend takes the
/// request's format/variant, else `Unsupported` listing every reason.
pub fn no_path_error(plan: &PathPlan) -> LowbitError {
    if let Some(reason) = format_blocker(&plan.request) {
        return LowbitError::UnsupportedFormat {
            op: plan.request.op.as_str(),
            format: format!(
                "{}/{}",
                plan.request.input.as_str(),
                plan.request.format.as_str()
            ),
            reason: reason.into(),
        };
    }
    LowbitError::Unsupported {
        backend: BackendKind::Cpu,
        op: "plan_path",
        reason: format!("no kernel path can run {}", plan.explain()),
    }
}

/// `Ok(chosen)` or the [`no_path_error`].
pub fn require_path(plan: &PathPlan) -> Result<PathKind> {
    plan.chosen().ok_or_else(|| no_path_error(plan))
}

/// A backend opened for a [`PathPlan`]: the path it runs, and every path passed over (the
/// plan's skips plus candidates that failed to open).
pub struct OpenedPath {
    /// The opened backend.
    pub backend: Box<dyn crate::Backend>,
    /// The path it runs.
    pub path: PathKind,
    /// Every path passed over, in preference order, with the reason.
    pub skipped: Vec<SkippedPath>,
}

impl std::fmt::Debug for OpenedPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedPath")
            .field("backend", &self.backend.name())
            .field("path", &self.path)
            .field("skipped", &self.skipped)
            .finish()
    }
}

fn open_one(path: PathKind, overrides: &PathOverrides) -> Result<Box<dyn crate::Backend>> {
    match path {
        PathKind::Cpu => crate::backend::open(BackendKind::Cpu),
        #[cfg(feature = "cuda")]
        PathKind::CudaMma | PathKind::CudaDp4a => {
            use crate::backend::cuda::{CudaBackend, CudaDevice, KernelFamily};
            let family = if path == PathKind::CudaMma {
                KernelFamily::Mma
            } else {
                KernelFamily::Dp4a
            };
            let dev = CudaDevice::new(0)?.with_family(family)?;
            Ok(Box::new(CudaBackend::from_device(dev)))
        }
        #[cfg(feature = "wgpu")]
        PathKind::Wgsl => {
            use crate::backend::wgpu::{Dot4Mode, WgpuBackend, WgpuOptions};
            let dot4 = if overrides.wgpu_dot4_polyfill {
                Dot4Mode::Polyfill
            } else {
                Dot4Mode::Native
            };
            Ok(Box::new(WgpuBackend::new(WgpuOptions {
                dot4,
                ..Default::default()
            })?))
        }
        #[allow(unreachable_patterns)]
        other => {
            let _ = overrides;
            crate::backend::open(other.backend())
        }
    }
}

/// Opens the backend of `plan`'s best candidate; when opening fails, records why and tries
/// the next candidate. Errors (naming every reason) when no candidate opens.
pub fn open_for_plan(plan: &PathPlan, overrides: &PathOverrides) -> Result<OpenedPath> {
    let mut skipped = plan.skipped.clone();
    for &path in &plan.candidates {
        match open_one(path, overrides) {
            Ok(backend) => {
                skipped.sort_by_key(|s| s.path);
                return Ok(OpenedPath {
                    backend,
                    path,
                    skipped,
                });
            }
            Err(e) => skipped.push(SkippedPath {
                path,
                reason: SkipReason::OpenFailed(e.to_string()),
            }),
        }
    }
    skipped.sort_by_key(|s| s.path);
    let mut failed = plan.clone();
    failed.candidates.clear();
    failed.skipped = skipped;
    Err(no_path_error(&failed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::CpuCaps;
    use InputVariant as I;
    use KernelOp as O;
    use LowBitActivationFormat as F;

    fn gpu(cc: (u32, u32)) -> CudaDeviceCaps {
        CudaDeviceCaps {
            ordinal: 0,
            name: format!("test sm_{}{}", cc.0, cc.1),
            compute_capability: cc,
            multiprocessors: 1,
            l2_bytes: 0,
            memory_bytes: 1 << 30,
            dp4a: cc >= DP4A_MIN_SM,
            int8_mma: cc >= INT8_MMA_MIN_SM,
            programmatic_launch: cc >= crate::caps::PROGRAMMATIC_LAUNCH_MIN_SM,
            wgmma: cc == crate::caps::WGMMA_SM,
        }
    }

    fn adapter(native_dot4: bool) -> WgpuAdapterCaps {
        WgpuAdapterCaps {
            index: 0,
            name: "test adapter".into(),
            backend: "Vulkan".into(),
            device_type: "Cpu".into(),
            driver: String::new(),
            driver_info: String::new(),
            max_storage_buffer_binding_size: 1 << 27,
            max_buffer_size: 1 << 28,
            max_compute_workgroup_storage_size: 16384,
            max_compute_invocations_per_workgroup: 256,
            subgroup: false,
            shader_f16: false,
            shader_int64: false,
            native_dot4,
        }
    }

    fn caps(cuda: Option<(u32, u32)>, wgpu: bool) -> Capabilities {
        Capabilities {
            cpu: CpuCaps::default(),
            cuda: match cuda {
                Some(cc) => BackendProbe::Available(CudaCaps {
                    devices: vec![gpu(cc)],
                    ..Default::default()
                }),
                None => BackendProbe::Unavailable("libcuda not found".into()),
            },
            wgpu: if wgpu {
                BackendProbe::Available(WgpuCaps {
                    adapters: vec![adapter(true)],
                })
            } else {
                BackendProbe::NotBuilt
            },
        }
    }

    fn lowrank_int8() -> PathRequest {
        PathRequest::new(O::Lowrank, I::F32, F::Int8)
    }

    #[test]
    fn sm90_takes_mma_for_projections_and_dp4a_for_the_rest() {
        let c = caps(Some((9, 0)), true);
        let o = PathOverrides::default();
        let p = plan_path(&c, &o, lowrank_int8());
        assert_eq!(
            p.candidates,
            vec![
                PathKind::CudaMma,
                PathKind::CudaDp4a,
                PathKind::Wgsl,
                PathKind::Cpu
            ]
        );
        assert!(p.skipped.is_empty());
        // uint8pos codes go to the u8 mma operand.
        let p = plan_path(
            &c,
            &o,
            PathRequest::new(O::DecoderTail, I::Codes, F::Uint8PosExp),
        );
        assert_eq!(p.chosen(), Some(PathKind::CudaMma));
        for req in [
            PathRequest::new(O::Quantize, I::F32, F::Int8),
            PathRequest::new(O::RhoInt8, I::F32, F::Int8),
            PathRequest::new(O::Lowrank, I::F32, F::Fp16),
        ] {
            let p = plan_path(&c, &o, req);
            assert_eq!(p.chosen(), Some(PathKind::CudaDp4a), "{}", p.explain());
            assert!(matches!(
                p.skip_reason(PathKind::CudaMma),
                Some(SkipReason::Unsupported(_))
            ));
        }
    }

    #[test]
    fn sm75_takes_dp4a_with_the_mma_threshold_reason() {
        let p = plan_path(
            &caps(Some((7, 5)), true),
            &PathOverrides::default(),
            lowrank_int8(),
        );
        assert_eq!(p.chosen(), Some(PathKind::CudaDp4a));
        assert_eq!(
            p.skip_reason(PathKind::CudaMma),
            Some(&SkipReason::ComputeCapability {
                device: "test sm_75".into(),
                have: (7, 5),
                need: INT8_MMA_MIN_SM,
            })
        );
    }

    #[test]
    fn sm52_falls_to_wgsl_then_cpu_with_the_dp4a_threshold_reason() {
        let o = PathOverrides::default();
        for wgpu in [true, false] {
            let p = plan_path(&caps(Some((5, 2)), wgpu), &o, lowrank_int8());
            let want = if wgpu { PathKind::Wgsl } else { PathKind::Cpu };
            assert_eq!(p.chosen(), Some(want));
            for path in [PathKind::CudaMma, PathKind::CudaDp4a] {
                assert_eq!(
                    p.skip_reason(path),
                    Some(&SkipReason::ComputeCapability {
                        device: "test sm_52".into(),
                        have: (5, 2),
                        need: DP4A_MIN_SM,
                    })
                );
            }
            if wgpu {
                assert_eq!(p.wgsl_dot4, Some(WgslDot4::Native));
            } else {
                assert_eq!(
                    p.skip_reason(PathKind::Wgsl),
                    Some(&SkipReason::NotBuilt(BackendKind::Wgpu))
                );
            }
            assert!(p.explain().contains("below sm_61"), "{}", p.explain());
        }
    }

    #[test]
    fn no_gpu_takes_cpu_with_reasons() {
        let mut c = caps(None, true);
        c.wgpu = BackendProbe::Available(WgpuCaps::default());
        let p = plan_path(&c, &PathOverrides::default(), lowrank_int8());
        assert_eq!(p.candidates, vec![PathKind::Cpu]);
        assert!(matches!(
            p.skip_reason(PathKind::CudaMma),
            Some(SkipReason::NoDriver(BackendKind::Cuda, _))
        ));
        assert_eq!(
            p.skip_reason(PathKind::Wgsl),
            Some(&SkipReason::NoDevice(BackendKind::Wgpu))
        );
        c.cuda = BackendProbe::Available(CudaCaps::default());
        let p = plan_path(&c, &PathOverrides::default(), lowrank_int8());
        assert_eq!(
            p.skip_reason(PathKind::CudaDp4a),
            Some(&SkipReason::NoDevice(BackendKind::Cuda))
        );
    }

    #[test]
    fn forced_backends() {
        let c = caps(Some((9, 0)), true);
        let o = PathOverrides::from_values(Some(" CPU "), None, None);
        let p = plan_path(&c, &o, lowrank_int8());
        assert_eq!(p.candidates, vec![PathKind::Cpu]);
        assert!(
            p.skipped
                .iter()
                .all(|s| s.reason == SkipReason::ForcedOff("LOWBIT_BACKEND=cpu".into()))
        );
        let o = PathOverrides::from_values(Some("wgpu"), None, Some("polyfill"));
        let p = plan_path(&c, &o, lowrank_int8());
        assert_eq!(p.candidates, vec![PathKind::Wgsl]);
        assert_eq!(p.wgsl_dot4, Some(WgslDot4::Polyfill));
        // Forcing an absent backend leaves nothing: no silent fallback.
        let o = PathOverrides::from_values(Some("cuda"), None, None);
        let p = plan_path(&caps(None, true), &o, lowrank_int8());
        assert_eq!(p.chosen(), None);
        assert!(require_path(&p).is_err());
        let o = PathOverrides::from_values(Some("metal"), None, None);
        assert_eq!(o.invalid_backend.as_deref(), Some("metal"));
        assert_eq!(o.backend, None);
    }

    #[test]
    fn cuda_kernels_override_mirrors_the_backend() {
        let o = PathOverrides::from_values(None, Some("DP4A"), None);
        let p = plan_path(&caps(Some((9, 0)), false), &o, lowrank_int8());
        assert_eq!(p.chosen(), Some(PathKind::CudaDp4a));
        assert_eq!(
            p.skip_reason(PathKind::CudaMma),
            Some(&SkipReason::ForcedOff("LOWBIT_CUDA_KERNELS=dp4a".into()))
        );
        // mma forced on sm_75: the CUDA backend refuses to open at all.
        let o = PathOverrides::from_values(None, Some("mma"), None);
        let p = plan_path(&caps(Some((7, 5)), false), &o, lowrank_int8());
        assert_eq!(p.candidates, vec![PathKind::Cpu]);
        assert!(matches!(
            p.skip_reason(PathKind::CudaDp4a),
            Some(SkipReason::ForcedOff(_))
        ));
        // mma forced on sm_90: quantize still runs on the dp4a-family kernels.
        let p = plan_path(
            &caps(Some((9, 0)), false),
            &o,
            PathRequest::new(O::Quantize, I::F32, F::Int8),
        );
        assert_eq!(p.chosen(), Some(PathKind::CudaDp4a));
        let o = PathOverrides::from_values(None, Some("tensor"), None);
        let p = plan_path(&caps(Some((9, 0)), false), &o, lowrank_int8());
        assert_eq!(p.candidates, vec![PathKind::Cpu]);
    }

    #[test]
    fn formats_no_backend_takes_leave_no_path() {
        let c = caps(Some((9, 0)), true);
        let o = PathOverrides::default();
        for req in [
            PathRequest::new(O::Lowrank, I::Packed, F::Uint8PosExp),
            PathRequest::new(O::QuantizePack, I::F32, F::Uint8PosExp),
            PathRequest::new(O::DecoderTail, I::Codes, F::Fp16),
        ] {
            let p = plan_path(&c, &o, req);
            assert_eq!(p.chosen(), None);
            assert_eq!(p.skipped.len(), 4);
            assert!(
                p.skipped
                    .iter()
                    .all(|s| matches!(s.reason, SkipReason::Unsupported(_)))
            );
        }
        let p = plan_path(
            &c,
            &o,
            PathRequest::new(O::Lowrank, I::Codes, F::Uint8PosExp),
        );
        assert_eq!(p.chosen(), Some(PathKind::CudaMma));
    }

    #[test]
    fn open_falls_down_the_list_when_opening_fails() {
        // A pretend sm_90 device with a wrong-for-this-machine probe: if CUDA does not open
        // here, the next candidate opens and the failure is recorded.
        let plan = plan_path(
            &caps(Some((9, 0)), false),
            &PathOverrides::default(),
            lowrank_int8(),
        );
        let opened = open_for_plan(&plan, &PathOverrides::default()).unwrap();
        if opened.path == PathKind::Cpu {
            assert!(matches!(
                opened.skipped[0].reason,
                SkipReason::OpenFailed(_) | SkipReason::NotBuilt(_)
            ));
        }
        let o = PathOverrides::from_values(Some("cpu"), None, None);
        let plan = plan_path(&caps(Some((9, 0)), true), &o, lowrank_int8());
        let opened = open_for_plan(&plan, &o).unwrap();
        assert_eq!(opened.path, PathKind::Cpu);
        assert_eq!(opened.backend.kind(), BackendKind::Cpu);
        assert_eq!(opened.skipped.len(), 3);
        let plan = plan_path(
            &caps(None, false),
            &PathOverrides::default(),
            PathRequest::new(O::Lowrank, I::Packed, F::Uint8PosExp),
        );
        assert!(matches!(
            open_for_plan(&plan, &PathOverrides::default()),
            Err(LowbitError::UnsupportedFormat { .. })
        ));
    }

    #[test]
    fn summary_plans_on_this_machine() {
        for req in PathRequest::summary() {
            let p = plan_path_probed(req);
            assert!(!p.explain().is_empty());
        }
    }
}
