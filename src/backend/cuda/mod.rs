//! CUDA backend through cudarc + NVRTC. (Skeleton: probing and kernels arrive with the CUDA issue.)

use crate::caps::{BackendProbe, CudaCaps};

/// Probes the CUDA driver and devices without panicking when libcuda/libnvrtc are missing.
pub fn probe() -> BackendProbe<CudaCaps> {
    BackendProbe::Unavailable("CUDA backend not implemented yet".into())
}
