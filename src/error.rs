//! The crate's one error type. Every public entry point returns `Result<_, LowbitError>`;
//! nothing reachable from the public API panics on bad input.

use std::borrow::Cow;

/// Result alias used across the crate.
pub type Result<T, E = LowbitError> = std::result::Result<T, E>;

/// Which GPU (or CPU) backend an error or a capability row talks about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Cpu,
    Cuda,
    Wgpu,
}

impl BackendKind {
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

#[derive(Debug, thiserror::Error)]
pub enum LowbitError {
    /// Two shapes that must agree do not. `expected` and `actual` are shown as written.
    #[error("{op}: shape mismatch: expected {expected}, got {actual}")]
    ShapeMismatch {
        op: &'static str,
        expected: String,
        actual: String,
    },
    /// A buffer's length does not match the length its shape implies.
    #[error("{op}: length mismatch for {what}: expected {expected} elements, got {actual}")]
    LengthMismatch {
        op: &'static str,
        what: &'static str,
        expected: usize,
        actual: usize,
    },
    /// A dimension is zero, or a shape has the wrong rank, or a product overflows `usize`.
    #[error("{op}: invalid shape {shape:?}: {reason}")]
    InvalidShape {
        op: &'static str,
        shape: Vec<usize>,
        reason: Cow<'static, str>,
    },
    /// The format is valid in general but this op (or this kernel variant) cannot take it.
    #[error("{op}: unsupported format {format}: {reason}")]
    UnsupportedFormat {
        op: &'static str,
        format: String,
        reason: Cow<'static, str>,
    },
    /// A field of a stored or handed-in artifact is invalid.
    #[error("invalid artifact field `{field}`: {reason}")]
    InvalidArtifact {
        field: &'static str,
        reason: Cow<'static, str>,
    },
    /// A packed 2-bit ternary code held the invalid pattern `0b11`.
    #[error("invalid ternary 2-bit code 0b11 at element {index}")]
    InvalidTernaryCode { index: usize },
    /// Input values that no quantizer can take (NaN or infinity).
    #[error("{op}: non-finite value {value} at index {index} of {what}")]
    NonFinite {
        op: &'static str,
        what: &'static str,
        index: usize,
        value: f32,
    },
    /// A scale handed in by the caller is not a positive finite number.
    #[error("{op}: invalid scale {value} for {what}: scales must be finite and > 0")]
    InvalidScale {
        op: &'static str,
        what: &'static str,
        value: f32,
    },
    /// The worst case of the i32 accumulator could overflow: `k * qmax_a * qmax_w >= 2^31`.
    #[error(
        "{op}: i32 accumulator could overflow: K={k} x qmax_a={qmax_a} x qmax_w={qmax_w} >= 2^31"
    )]
    AccumulatorOverflow {
        op: &'static str,
        k: usize,
        qmax_a: u32,
        qmax_w: u32,
    },
    /// The backend is not compiled in, has no driver, or no device/adapter.
    #[error("backend {backend} unavailable: {reason}")]
    BackendUnavailable {
        backend: BackendKind,
        reason: String,
    },
    /// The backend exists but cannot run this op/variant (the reason says why).
    #[error("backend {backend} cannot run {op}: {reason}")]
    Unsupported {
        backend: BackendKind,
        op: &'static str,
        reason: String,
    },
    /// A tensor lives on a different device or backend than the op expects.
    #[error("{op}: {what} lives on {actual}, expected {expected}")]
    WrongDevice {
        op: &'static str,
        what: &'static str,
        expected: String,
        actual: String,
    },
    /// A driver call failed (CUDA driver, wgpu device, buffer mapping...).
    #[error("{backend} driver error in {context}: {message}")]
    Driver {
        backend: BackendKind,
        context: String,
        message: String,
    },
    /// Run-time compilation (NVRTC, or a WGSL pipeline) failed; `log` is the compiler's log.
    #[error("{backend} failed to compile kernel {kernel}:\n{log}")]
    Compile {
        backend: BackendKind,
        kernel: String,
        log: String,
    },
    /// Safetensors (de)serialisation failed.
    #[error("safetensors: {0}")]
    Safetensors(String),
    /// File I/O failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A caller-supplied argument is out of its valid range (and is not a shape).
    #[error("{op}: invalid argument {what}: {reason}")]
    InvalidArgument {
        op: &'static str,
        what: &'static str,
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
