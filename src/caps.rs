//! Capability probing: what this machine can run, probed once into typed structs.
//! Never hard-coded: a GPU row is filled only by that backend's probe.

use std::sync::OnceLock;

/// dp4a (`__dp4a`) needs compute capability 6.1.
pub const DP4A_MIN_SM: (u32, u32) = (6, 1);
/// A grid barrier on `.acquire` / `.release` memory operations (the dp4a small-M decoder's
/// grid scale) needs compute capability 7.0.
pub const GRID_BARRIER_MIN_SM: (u32, u32) = (7, 0);
/// Integer `mma.sync` (s8 m16n8k32) needs compute capability 8.0.
pub const INT8_MMA_MIN_SM: (u32, u32) = (8, 0);
/// Programmatic dependent launch (`griddepcontrol`, a launch attribute) needs 9.0.
pub const PROGRAMMATIC_LAUNCH_MIN_SM: (u32, u32) = (9, 0);
/// Warpgroup mma (`wgmma`) is an `sm_90a` arch-specific feature: compute capability exactly 9.0.
pub const WGMMA_SM: (u32, u32) = (9, 0);

/// The result of probing one backend.
#[derive(Clone, Debug, PartialEq)]
pub enum BackendProbe<T> {
    /// The cargo feature is off.
    NotBuilt,
    /// Built, but unusable here (no driver / no adapter); the reason says which.
    Unavailable(String),
    /// Usable; holds what the probe found.
    Available(T),
}

impl<T> BackendProbe<T> {
    /// The probed facts when [`BackendProbe::Available`], else `None`.
    pub fn available(&self) -> Option<&T> {
        match self {
            Self::Available(t) => Some(t),
            _ => None,
        }
    }
    /// One-line status for tables.
    pub fn status(&self) -> String {
        match self {
            Self::NotBuilt => "not built".into(),
            Self::Unavailable(reason) => format!("unavailable: {reason}"),
            Self::Available(_) => "available".into(),
        }
    }
}

/// CPU facts that matter to the CPU backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuCaps {
    /// Worker threads of the rayon pool the CPU backend runs on.
    pub threads: usize,
    /// Target architecture, as `std::env::consts::ARCH` (e.g. "x86_64", "aarch64").
    pub arch: &'static str,
    /// SIMD features detected at run time (e.g. "avx2", "avx512vnni", "neon").
    pub simd: Vec<&'static str>,
}

impl CpuCaps {
    /// Detects the SIMD features at run time and reads the rayon pool size.
    pub fn probe() -> Self {
        let mut simd = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("sse4.1") {
                simd.push("sse4.1");
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                simd.push("avx2");
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                simd.push("avx512f");
            }
            if std::arch::is_x86_feature_detected!("avx512bw") {
                simd.push("avx512bw");
            }
            if std::arch::is_x86_feature_detected!("avx512vnni") {
                simd.push("avx512vnni");
            }
            if std::arch::is_x86_feature_detected!("avxvnni") {
                simd.push("avxvnni");
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                simd.push("neon");
            }
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                simd.push("dotprod");
            }
        }
        Self {
            threads: rayon::current_num_threads(),
            arch: std::env::consts::ARCH,
            simd,
        }
    }
}

/// One CUDA device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaDeviceCaps {
    /// CUDA device index, as `cuDeviceGet` takes it.
    pub ordinal: usize,
    /// Device name reported by the driver.
    pub name: String,
    /// Compute capability `(major, minor)`, e.g. `(9, 0)` for sm_90.
    pub compute_capability: (u32, u32),
    /// Number of streaming multiprocessors (SMs); sizes persistent grids.
    pub multiprocessors: u32,
    /// Total device memory in bytes.
    pub memory_bytes: u64,
    /// L2 cache size in bytes.
    pub l2_bytes: u64,
    /// `compute_capability >= DP4A_MIN_SM`.
    pub dp4a: bool,
    /// `compute_capability >= INT8_MMA_MIN_SM`.
    pub int8_mma: bool,
    /// `compute_capability >= PROGRAMMATIC_LAUNCH_MIN_SM`.
    pub programmatic_launch: bool,
    /// `compute_capability == WGMMA_SM`.
    pub wgmma: bool,
}

/// The CUDA driver, NVRTC and every device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CudaCaps {
    /// `cuDriverGetVersion`: `1000·major + 10·minor` (12040 is 12.4); `None` if the call failed.
    pub driver_version: Option<i32>,
    /// NVRTC `(major, minor)` version; `None` if it could not be read.
    pub nvrtc_version: Option<(i32, i32)>,
    /// Every device the driver enumerates, in ordinal order.
    pub devices: Vec<CudaDeviceCaps>,
}

/// One wgpu adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WgpuAdapterCaps {
    /// Position in wgpu's adapter enumeration.
    pub index: usize,
    /// Adapter name reported by wgpu.
    pub name: String,
    /// Graphics API the adapter runs on (`Debug` of `wgpu::Backend`, e.g. "Vulkan", "Metal").
    pub backend: String,
    /// Kind of adapter (`Debug` of `wgpu::DeviceType`, e.g. "DiscreteGpu", "Cpu").
    pub device_type: String,
    /// Driver name reported by wgpu (may be empty).
    pub driver: String,
    /// Driver version/details reported by wgpu (may be empty).
    pub driver_info: String,
    /// Adapter limit: largest storage-buffer binding, in bytes.
    pub max_storage_buffer_binding_size: u64,
    /// Adapter limit: largest buffer, in bytes.
    pub max_buffer_size: u64,
    /// Adapter limit: workgroup (shared) memory per compute workgroup, in bytes.
    pub max_compute_workgroup_storage_size: u32,
    /// Adapter limit: invocations (threads) per compute workgroup.
    pub max_compute_invocations_per_workgroup: u32,
    /// Whether the adapter supports `wgpu::Features::SUBGROUP`.
    pub subgroup: bool,
    /// Whether the adapter supports `wgpu::Features::SHADER_F16`.
    pub shader_f16: bool,
    /// Whether the adapter supports `wgpu::Features::SHADER_INT64`.
    pub shader_int64: bool,
    /// Whether `dot4I8Packed` lowers to a native integer dot product on this adapter.
    pub native_dot4: bool,
}

/// Every wgpu adapter found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WgpuCaps {
    /// Every adapter the instance enumerates (`WGPU_BACKEND` honoured).
    pub adapters: Vec<WgpuAdapterCaps>,
}

/// Everything probed, once per process.
#[derive(Clone, Debug, PartialEq)]
pub struct Capabilities {
    /// CPU facts; always probed.
    pub cpu: CpuCaps,
    /// CUDA probe; [`BackendProbe::NotBuilt`] without the `cuda` feature.
    pub cuda: BackendProbe<CudaCaps>,
    /// wgpu probe; [`BackendProbe::NotBuilt`] without the `wgpu` feature.
    pub wgpu: BackendProbe<WgpuCaps>,
}

impl Capabilities {
    /// Probes every backend (no caching; see [`Capabilities::get`]).
    pub fn probe() -> Self {
        #[cfg(feature = "cuda")]
        let cuda = crate::backend::cuda::probe();
        #[cfg(not(feature = "cuda"))]
        let cuda = BackendProbe::NotBuilt;
        #[cfg(feature = "wgpu")]
        let wgpu = crate::backend::wgpu::probe();
        #[cfg(not(feature = "wgpu"))]
        let wgpu = BackendProbe::NotBuilt;
        Self {
            cpu: CpuCaps::probe(),
            cuda,
            wgpu,
        }
    }

    /// The process-wide probe result, computed on first use.
    pub fn get() -> &'static Self {
        static CAPS: OnceLock<Capabilities> = OnceLock::new();
        CAPS.get_or_init(Self::probe)
    }
}
