//! CUDA backend through cudarc + NVRTC. (Skeleton: probing and kernels arrive with the CUDA issue.)

use crate::caps::{BackendProbe, CudaCaps};

/// Probes the CUDA driver and devices without panicking when libcuda/libnvrtc are missing.
pub fn probe() -> BackendProbe<CudaCaps> {
    BackendProbe::Unavailable("CUDA backend not implemented yet".into())
}

/// Opens CUDA device 0 as a [`crate::Backend`].
pub fn open_default() -> crate::Result<Box<dyn crate::Backend>> {
    Err(crate::LowbitError::BackendUnavailable {
        backend: crate::BackendKind::Cuda,
        reason: "CUDA backend not implemented yet".into(),
    })
}
