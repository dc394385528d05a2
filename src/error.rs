//! The crate's one error type. Every public entry point returns `Result<_, LowbitError>`;
//! nothing reachable from the public API panics on bad input.

use std::borrow::Cow;

/// Result alias used across the crate.
pub type Result<T, E = LowbitError> = std::result::Result<T, E>;

/// Which GPU (or CPU) backend an error or a capability row talks about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// The multithreaded CPU backend (rayon, i8x4 quad-dot GEMM).
    Cpu,
    /// CUDA C kernels compiled at run time by NVRTC (`cudarc`).
    Cuda,
    /// WGSL compute shaders on `wgpu`.
    Wgpu,
}

impl BackendKind {
    /// Lower-case name (`cpu`, `cuda`, `wgpu`), as in `LOWBIT_BACKEND` and `LOWBIT_REQUIRE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Wgpu => "wgpu",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every error of the crate. Most variants name the entry point (`op`) or the backend that
/// refused, and say why.
#[derive(Debug, thiserror::Error)]
pub enum LowbitError {
    /// Two shapes that must agree do not. `expected` and `actual` are shown as written.
    #[error("{op}: shape mismatch: expected {expected}, got {actual}")]
    ShapeMismatch {
        /// The entry point that refused, e.g. `lowrank` or `wgpu::decoder_tail`.
        op: &'static str,
        /// The shape (or constraint) the op needs, as text.
        expected: String,
        /// The shape it was given, as text.
        actual: String,
    },
    /// A buffer's length does not match the length its shape implies.
    #[error("{op}: length mismatch for {what}: expected {expected} elements, got {actual}")]
    LengthMismatch {
        /// The entry point that refused, e.g. `lowrank` or `wgpu::decoder_tail`.
        op: &'static str,
        /// The buffer, e.g. `activations`, `weight words` or `output`.
        what: &'static str,
        /// Elements (or words, bytes) the shape implies.
        expected: usize,
        /// Elements (or words, bytes) the buffer holds.
        actual: usize,
    },
    /// A dimension is zero, or a shape has the wrong rank, or a product overflows `usize`.
    #[error("{op}: invalid shape {shape:?}: {reason}")]
    InvalidShape {
        /// The entry point that refused, e.g. `lowrank` or `wgpu::decoder_tail`.
        op: &'static str,
        /// The offending shape, dimension by dimension.
        shape: Vec<usize>,
        /// What is wrong with it, e.g. `zero-sized buffer`.
        reason: Cow<'static, str>,
    },
    /// The format is valid in general but this op (or this kernel variant) cannot take it.
    #[error("{op}: unsupported format {format}: {reason}")]
    UnsupportedFormat {
        /// The entry point that refused, e.g. `lowrank` or `wgpu::decoder_tail`.
        op: &'static str,
        /// The refused format, in its `Debug` spelling (e.g. `Uint8PosExp`).
        format: String,
        /// Why this op cannot take it, e.g. uint8pos codes do not fit signed i8x4 lanes.
        reason: Cow<'static, str>,
    },
    /// A field of a stored or handed-in artifact is invalid.
    #[error("invalid artifact field `{field}`: {reason}")]
    InvalidArtifact {
        /// The field (or safetensors metadata key without `lowbit.`), e.g. `packed`, `scale`.
        field: &'static str,
        /// What is wrong with its value.
        reason: Cow<'static, str>,
    },
    /// A packed 2-bit ternary code held the invalid pattern `0b11`.
    #[error("invalid ternary 2-bit code 0b11 at element {index}")]
    InvalidTernaryCode {
        /// Element index of the bad code (in the whole tensor or rho state).
        index: usize,
    },
    /// Input values that no quantizer can take (NaN or infinity).
    #[error("{op}: non-finite value {value} at index {index} of {what}")]
    NonFinite {
        /// The entry point that refused, e.g. `lowrank` or `wgpu::decoder_tail`.
        op: &'static str,
        /// The input that held it, e.g. `activations` or `weights`.
        what: &'static str,
        /// Index of the first non-finite element.
        index: usize,
        /// That element (NaN or ±infinity).
        value: f32,
    },
    /// A scale handed in by the caller is not a positive finite number.
    #[error("{op}: invalid scale {value} for {what}: scales must be finite and > 0")]
    InvalidScale {
        /// The entry point that refused, e.g. `lowrank` or `wgpu::decoder_tail`.
        op: &'static str,
        /// Which scale, e.g. `activation scale` or `weight scale`.
        what: &'static str,
        /// The rejected value.
        value: f32,
    },
    /// The worst case of the i32 accumulator could overflow: `k * qmax_a * qmax_w >= 2^31`.
    #[error(
        "{op}: i32 accumulator could overflow: K={k} x qmax_a={qmax_a} x qmax_w={qmax_w} >= 2^31"
    )]
    AccumulatorOverflow {
        /// The entry point that refused, e.g. `lowrank` or `wgpu::decoder_tail`.
        op: &'static str,
        /// Reduction length `K`: `D` for the low-rank projection, `H·L` for the decoder tail.
        k: usize,
        /// Largest activation code magnitude (127 int8, 7 int4, 255 uint8pos).
        qmax_a: u32,
        /// Largest weight code magnitude (127 int8, 1 ternary or binary).
        qmax_w: u32,
    },
    /// The backend is not compiled in, has no driver, or no device/adapter.
    #[error("backend {backend} unavailable: {reason}")]
    BackendUnavailable {
        /// The backend that could not be opened.
        backend: BackendKind,
        /// Why, e.g. the feature is off, no driver loads, or no device/adapter exists.
        reason: String,
    },
    /// The backend exists but cannot run this op/variant (the reason says why).
    #[error("backend {backend} cannot run {op}: {reason}")]
    Unsupported {
        /// The backend that cannot run it.
        backend: BackendKind,
        /// The entry point that refused, e.g. `lowrank` or `wgpu::decoder_tail`.
        op: &'static str,
        /// Why, e.g. a buffer exceeds the adapter's binding limit.
        reason: String,
    },
    /// A tensor lives on a different device or backend than the op expects.
    #[error("{op}: {what} lives on {actual}, expected {expected}")]
    WrongDevice {
        /// The entry point that refused, e.g. `lowrank` or `wgpu::decoder_tail`.
        op: &'static str,
        /// The tensor, buffer or stream that is on the wrong device.
        what: &'static str,
        /// The device the op runs on, e.g. `wgpu device #1`.
        expected: String,
        /// The device the tensor lives on.
        actual: String,
    },
    /// A driver call failed (CUDA driver, wgpu device, buffer mapping...).
    #[error("{backend} driver error in {context}: {message}")]
    Driver {
        /// The backend whose driver failed.
        backend: BackendKind,
        /// The call or step that failed, e.g. `cuStreamCreate` or `poll`.
        context: String,
        /// The driver's own error message.
        message: String,
    },
    /// Run-time compilation (NVRTC, or a WGSL pipeline) failed; `log` is the compiler's log.
    #[error("{backend} failed to compile kernel {kernel}:\n{log}")]
    Compile {
        /// The backend that compiled it.
        backend: BackendKind,
        /// The kernel source: CUDA `{stem}.cu [defines]` or WGSL `shaders/{stem}.wgsl`.
        kernel: String,
        /// The compiler's log (or its error message when the log is empty).
        log: String,
    },
    /// Safetensors (de)serialisation failed.
    #[error("safetensors: {0}")]
    Safetensors(String),
    /// File I/O failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file that could not be read or written.
        path: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A caller-supplied argument is out of its valid range (and is not a shape).
    #[error("{op}: invalid argument {what}: {reason}")]
    InvalidArgument {
        /// The entry point that refused, e.g. `lowrank` or `wgpu::decoder_tail`.
        op: &'static str,
        /// The argument, e.g. `latent_out`.
        what: &'static str,
        /// Its valid range or what is wrong with it.
        reason: String,
    },
}

impl LowbitError {
    pub(crate) fn shape(
        op: &'static str,
        expected: impl Into<String>,
        actual: impl Into<String>,
    ) -> Self {
        Self::ShapeMismatch {
            op,
            expected: expected.into(),
            actual: actual.into(),
        }
    }

    pub(crate) fn len(
        op: &'static str,
        what: &'static str,
        expected: usize,
        actual: usize,
    ) -> Self {
        Self::LengthMismatch {
            op,
            what,
            expected,
            actual,
        }
    }

    pub(crate) fn invalid_shape(
        op: &'static str,
        shape: &[usize],
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::InvalidShape {
            op,
            shape: shape.to_vec(),
            reason: reason.into(),
        }
    }

    pub(crate) fn artifact(field: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Self::InvalidArtifact {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported_format(
        op: &'static str,
        format: impl std::fmt::Debug,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::UnsupportedFormat {
            op,
            format: format!("{format:?}"),
            reason: reason.into(),
        }
    }
}
