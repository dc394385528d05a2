//! Probing the CUDA driver, NVRTC and every device, without ever panicking: the libraries are
//! loaded dynamically, and a missing `libcuda`/`libnvrtc` is reported, not unwrapped.

use cudarc::driver::{result, sys};

use super::compile;
use crate::caps::{
    BackendProbe, CudaCaps, CudaDeviceCaps, DP4A_MIN_SM, INT8_MMA_MIN_SM,
    PROGRAMMATIC_LAUNCH_MIN_SM,
};

/// True when libcuda can be loaded (never panics).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library candidates.
    unsafe { sys::is_culib_present() }
}

/// Probes the driver, NVRTC and every device. Never panics: a missing library or a failing
/// driver call becomes `Unavailable` with the reason.
pub fn probe() -> BackendProbe<CudaCaps> {
    match std::panic::catch_unwind(probe_inner) {
        Ok(Ok(caps)) => BackendProbe::Available(caps),
        Ok(Err(reason)) => BackendProbe::Unavailable(reason),
        Err(_) => BackendProbe::Unavailable("the CUDA driver panicked while probing".into()),
    }
}

fn probe_inner() -> Result<CudaCaps, String> {
    if !driver_present() {
        return Err("libcuda not found (no NVIDIA driver installed)".into());
    }
    result::init().map_err(|e| format!("cuInit failed: {e}"))?;
    let mut version = 0;
    // SAFETY: out-parameter.
    let driver_version = unsafe { sys::cuDriverGetVersion(&mut version) }
        .result()
        .ok()
        .map(|_| version);
    if !compile::nvrtc_present() {
        return Err("libnvrtc not found (NVRTC compiles the CUDA kernels at run time)".into());
    }
    let nvrtc_version = compile::nvrtc_version().ok();
    let count = result::device::get_count().map_err(|e| format!("cuDeviceGetCount: {e}"))?;
    if count <= 0 {
        return Err("no CUDA device found".into());
    }
    let devices = (0..count as usize)
        .map(device_caps)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CudaCaps {
        driver_version,
        nvrtc_version,
        devices,
    })
}

/// Name, compute capability, SMs and memory of device `ordinal`, with the derived flags.
/// The driver must be initialised.
pub fn device_caps(ordinal: usize) -> Result<CudaDeviceCaps, String> {
    use sys::CUdevice_attribute as A;
    let dev =
        result::device::get(ordinal as i32).map_err(|e| format!("cuDeviceGet({ordinal}): {e}"))?;
    let attr = |a: A| {
        // SAFETY: `dev` is a valid device handle.
        unsafe { result::device::get_attribute(dev, a) }
            .map_err(|e| format!("cuDeviceGetAttribute({a:?}) on device {ordinal}: {e}"))
    };
    let major = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)? as u32;
    let minor = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)? as u32;
    let multiprocessors = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
    let name = result::device::get_name(dev).map_err(|e| format!("cuDeviceGetName: {e}"))?;
    // SAFETY: `dev` is a valid device handle.
    let memory_bytes = unsafe { result::device::total_mem(dev) }
        .map_err(|e| format!("cuDeviceTotalMem: {e}"))? as u64;
    let l2_bytes = attr(A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?.max(0) as u64;
    let cc = (major, minor);
    Ok(CudaDeviceCaps {
        ordinal,
        name,
        compute_capability: cc,
        multiprocessors,
        memory_bytes,
        l2_bytes,
        dp4a: cc >= DP4A_MIN_SM,
        int8_mma: cc >= INT8_MMA_MIN_SM,
        programmatic_launch: cc >= PROGRAMMATIC_LAUNCH_MIN_SM,
        wgmma: cc == crate::caps::WGMMA_SM,
    })
}
