//! WGSL backend on wgpu. (Skeleton: probing and kernels arrive with the WGSL issue.)

use crate::caps::{BackendProbe, WgpuCaps};

/// Enumerates adapters and their limits/features.
pub fn probe() -> BackendProbe<WgpuCaps> {
    BackendProbe::Unavailable("wgpu backend not implemented yet".into())
}
