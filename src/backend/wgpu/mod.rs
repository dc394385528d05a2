//! WGSL backend on wgpu. (Skeleton: probing and kernels arrive with the WGSL issue.)

use crate::caps::{BackendProbe, WgpuCaps};

/// Enumerates adapters and their limits/features.
pub fn probe() -> BackendProbe<WgpuCaps> {
    BackendProbe::Unavailable("wgpu backend not implemented yet".into())
}

/// Opens the best wgpu adapter as a [`crate::Backend`].
pub fn open_default() -> crate::Result<Box<dyn crate::Backend>> {
    Err(crate::LowbitError::BackendUnavailable {
        backend: crate::BackendKind::Wgpu,
        reason: "wgpu backend not implemented yet".into(),
    })
}
