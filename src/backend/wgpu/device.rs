//! The device handle: adapter choice, device creation (or wrapping a caller's device), buffers,
//! the pipeline cache, launches under wgpu error scopes, and GPU timestamps for benches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytemuck::Pod;
use wgpu::util::DeviceExt;

use super::buffer::{GpuBuffer, Graveyard};
use super::probe;
use super::shaders::{self, Bind};
use crate::error::{BackendKind, LowbitError, Result};
use crate::kernels::KernelId;

/// Environment variable: `polyfill` forces the manual-unpack dot4 shader variant.
pub const DOT4_ENV: &str = "LOWBIT_WGPU_DOT4";
/// Fixes the integer GEMM tiles (`WG_XxWG_YxBK`, e.g. `16x8x16`) when the options leave them
/// to the per-problem choice: for tuning sweeps on a new adapter.
pub const TILE_ENV: &str = "LOWBIT_WGPU_TILE";

/// Which adapter [`WgpuDevice::new`] opens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AdapterChoice {
    /// Discrete GPU first, then integrated, virtual, CPU; Vulkan/Metal/DX12 before GL (GL
    /// adapters are only enumerated when there is no other).
    #[default]
    Best,
    /// Position in the enumeration of the chosen backends (as `lowbit probe` lists it).
    Index(usize),
    /// First adapter whose name contains this text (case-insensitive).
    Name(String),
}

/// Which `dot4I8Packed` shader variant the integer kernels use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Dot4Mode {
    /// `LOWBIT_WGPU_DOT4=polyfill` selects [`Dot4Mode::Polyfill`], anything else `Native`.
    #[default]
    FromEnv,
    /// The WGSL builtin `dot4I8Packed` (naga lowers it to `OpSDot` where the adapter has
    /// `shaderIntegerDotProduct`, else to its own unpack).
    Native,
    /// The crate's manual unpack (shifts and four multiply-adds).
    Polyfill,
}

impl Dot4Mode {
    /// The mode after reading the environment: `Native` or `Polyfill`.
    pub fn resolve(self) -> Self {
        match self {
            Self::FromEnv => match std::env::var(DOT4_ENV) {
                Ok(v) if v.trim().eq_ignore_ascii_case("polyfill") => Self::Polyfill,
                _ => Self::Native,
            },
            m => m,
        }
    }
}

/// Workgroup shape of the integer GEMM kernels: `wg_x × wg_y` invocations of 8×8 outputs
/// (tiles of `8·wg_y` rows × `8·wg_x` columns), `bk` K words staged per step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TileConfig {
    /// Invocations along the output columns (a power of two).
    pub wg_x: u32,
    /// Invocations along the output rows (a power of two).
    pub wg_y: u32,
    /// K words (4 k each) staged per step (a power of two, at least 4).
    pub bk: u32,
}

impl TileConfig {
    /// 64×128 (rows × columns) tiles, 128 invocations, 8 words (32 int8) of K per step (the
    /// next step is prefetched in registers). On the H100 (Vulkan) this ran the BDH low-rank
    /// and decoder shapes 1.3–1.5× faster than 128×128 tiles with 16-word steps
    /// (`LOWBIT_WGPU_TILE` sweep of `benches/gpu/sweep.sh wgpu`, BENCHMARKS.md).
    pub const LARGE: Self = Self {
        wg_x: 16,
        wg_y: 8,
        bk: 8,
    };
    /// 64×64 tiles, 64 invocations (small problems, small GPUs).
    pub const SMALL: Self = Self {
        wg_x: 8,
        wg_y: 8,
        bk: 32,
    };

    /// Output rows per workgroup tile: `8·wg_y`.
    pub fn bm(self) -> u32 {
        8 * self.wg_y
    }
    /// Output columns per workgroup tile: `8·wg_x`.
    pub fn bn(self) -> u32 {
        8 * self.wg_x
    }
    /// Workgroup memory of the integer GEMM (A and B tiles and the row table).
    pub fn workgroup_bytes(self) -> u32 {
        (self.bm() * self.bk + self.bk * self.bn() + self.bm()) * 4
    }
    /// Parses `WG_XxWG_YxBK` (e.g. `16x16x16`).
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let nums: Vec<u32> = text
            .trim()
            .split('x')
            .map(|v| {
                v.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("`{v}` is not a number"))
            })
            .collect::<std::result::Result<_, _>>()?;
        let [wg_x, wg_y, bk] = nums[..] else {
            return Err(format!("`{text}` is not WG_XxWG_YxBK"));
        };
        let t = Self { wg_x, wg_y, bk };
        if t.valid() {
            Ok(t)
        } else {
            Err(format!(
                "{t:?}: sizes must be powers of two, BK >= 4, WG_X*WG_Y >= 4 and \
                 8*BK <= 32*min(WG_X, WG_Y)"
            ))
        }
    }

    pub(crate) fn valid(self) -> bool {
        self.wg_x.is_power_of_two()
            && self.wg_y.is_power_of_two()
            && self.bk >= 4
            && self.bk.is_power_of_two()
            && self.wg_x * self.wg_y >= 4
            // register prefetch: at most 32 words of each tile per invocation (PF)
            && 8 * self.bk <= 32 * self.wg_x.min(self.wg_y)
    }
}

/// How projections with f32 input quantize it. Both routes give the same bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum F32Route {
    /// Prepack when many workgroups would quantize the same rows (wide lowrank outputs),
    /// else fused.
    #[default]
    Auto,
    /// The projection kernel quantizes while staging its activation tile (`*_f32` entries).
    Fused,
    /// One quantize-pack pass writes i8x4 words, then the packed kernel runs.
    Prepack,
}

/// Options of [`WgpuDevice::new`] / [`WgpuDevice::from_wgpu`].
#[derive(Clone, Debug, Default)]
pub struct WgpuOptions {
    /// Which adapter [`WgpuDevice::new`] opens (unused by `from_wgpu`).
    pub adapter: AdapterChoice,
    /// Backends searched; `None` means `WGPU_BACKEND` if set, else all.
    pub backends: Option<wgpu::Backends>,
    /// `dot4I8Packed` builtin or the manual unpack (default: per `LOWBIT_WGPU_DOT4`).
    pub dot4: Dot4Mode,
    /// Keep wgpu's shader runtime checks (index clamping, loop bounding). Off by default: the
    /// crate's shaders guard every buffer access and every loop has a uniform bound, and the
    /// clamps cost registers and instructions in the GEMM inner loops.
    pub runtime_checks: bool,
    /// Fixed GEMM tiles instead of the per-problem choice (benches, tests).
    pub tiles: Option<TileConfig>,
    /// How projections quantize f32 input: fused, prepacked, or chosen per problem.
    pub f32_route: F32Route,
}

/// Key of the pipeline cache: the kernel and its override constants (every variant — dot4,
/// unsigned input, scale source, epilogue, tile shape — is an override).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PipelineKey {
    pub kernel: KernelId,
    pub constants: Vec<(&'static str, u64)>,
}

pub(crate) struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// One dispatch of a launch sequence.
pub(crate) struct Launch<'a> {
    pub kernel: KernelId,
    pub constants: Vec<(&'static str, f64)>,
    pub params: Vec<u8>,
    pub buffers: Vec<(u32, &'a wgpu::Buffer)>,
    pub groups: [u32; 3],
}

const TIMESTAMP_CAPACITY: u32 = 256;

struct Timing {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    next: u32,
    pending: Duration,
}

pub(crate) struct Inner {
    pub id: u64,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: Option<wgpu::AdapterInfo>,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// Whether the integer kernels use `dot4I8Packed` (else the manual unpack).
    pub dot4_builtin: bool,
    /// Whether `dot4I8Packed` lowers to `OpSDot` here (`None`: cannot tell, e.g. wrapped).
    pub native_dot4: Option<bool>,
    pub runtime_checks: bool,
    pub tiles: Option<TileConfig>,
    pub f32_route: F32Route,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
    compiles: AtomicUsize,
    timing: Mutex<Option<Timing>>,
    dummy: wgpu::Buffer,
    /// Scratch buffers of the ops (keyed by purpose), kept and grown across calls: a fresh
    /// 256 MiB buffer per call cost the H100 milliseconds of GPU time.
    scratch: Mutex<HashMap<&'static str, wgpu::Buffer>>,
    /// On wgpu's GL backend: held by every call of this device that uses the GL context.
    /// wgpu-hal's GL context lock gives up after a few seconds and panics ("Could not lock
    /// adapter context"), and on a software GL driver one large dispatch holds it that long,
    /// so threads sharing the device wait here instead. Taken after `timing` or `scratch`
    /// where both are held.
    gl_serial: Option<Mutex<()>>,
    /// On the GL backend: the buffer handles dropped since the last call that took
    /// `gl_serial`, which releases them (see [`Graveyard`]).
    graveyard: Option<Arc<Graveyard>>,
}

/// A wgpu device and queue with the crate's compiled pipelines. Cheap to clone (shared).
#[derive(Clone)]
pub struct WgpuDevice {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for WgpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuDevice")
            .field("id", &self.inner.id)
            .field("adapter", &self.name())
            .field("dot4_builtin", &self.inner.dot4_builtin)
            .finish()
    }
}

fn next_device_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub(crate) fn driver(context: impl Into<String>, message: impl std::fmt::Display) -> LowbitError {
    LowbitError::Driver {
        backend: BackendKind::Wgpu,
        context: context.into(),
        message: message.to_string(),
    }
}

pub(crate) fn unavailable(reason: impl Into<String>) -> LowbitError {
    LowbitError::BackendUnavailable {
        backend: BackendKind::Wgpu,
        reason: reason.into(),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The instance for `backends` (`None`: `WGPU_BACKEND` or all), with env-chosen flags.
pub(crate) fn instance(backends: Option<wgpu::Backends>) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if let Some(b) = backends {
        desc.backends = b;
    }
    wgpu::Instance::new(desc)
}

/// Adapters of `instance` that can run compute shaders, in enumeration order.
pub(crate) fn compute_adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .filter(|a| {
            a.get_downlevel_capabilities()
                .flags
                .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        })
        .collect()
}

fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let ty = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (ty, backend)
}

impl WgpuDevice {
    /// Opens the adapter `opts.adapter` chooses and creates a device with every limit the
    /// adapter has (and `TIMESTAMP_QUERY` where present).
    pub fn new(opts: WgpuOptions) -> Result<Self> {
        // Vulkan/Metal/DX12 first (GL is slower to open and noisy without a display); GL only
        // when no primary adapter exists. `Index` counts over every backend, as the probe does.
        let explicit = opts.backends.is_some() || std::env::var_os("WGPU_BACKEND").is_some();
        let adapters = if explicit || matches!(opts.adapter, AdapterChoice::Index(_)) {
            compute_adapters(&instance(opts.backends))
        } else {
            let primary = compute_adapters(&instance(Some(wgpu::Backends::PRIMARY)));
            if primary.is_empty() {
                compute_adapters(&instance(None))
            } else {
                primary
            }
        };
        if adapters.is_empty() {
            return Err(unavailable(
                "no wgpu adapter with compute shaders (no Vulkan/Metal/DX12/GL driver found)",
            ));
        }
        let adapter = match &opts.adapter {
            AdapterChoice::Best => adapters
                .iter()
                .enumerate()
                .min_by_key(|(i, a)| (rank(&a.get_info()), *i))
                .map(|(_, a)| a),
            AdapterChoice::Index(i) => adapters.get(*i),
            AdapterChoice::Name(name) => {
                let needle = name.to_lowercase();
                adapters
                    .iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&needle))
            }
        }
        .ok_or_else(|| {
            let names: Vec<String> = adapters
                .iter()
                .enumerate()
                .map(|(i, a)| format!("{i}: {}", a.get_info().name))
                .collect();
            unavailable(format!(
                "no adapter matches {:?}; found [{}]",
                opts.adapter,
                names.join(", ")
            ))
        })?;
        let info = adapter.get_info();
        let native_dot4 = probe::native_dot4(adapter);
        let limits = adapter.limits();
        let features = adapter.features() & wgpu::Features::TIMESTAMP_QUERY;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("lowbit-kernels"),
            required_features: features,
            required_limits: limits,
            experimental_features: wgpu::ExperimentalFeatures::default(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| unavailable(format!("request_device on {}: {e}", info.name)))?;
        device.on_uncaptured_error(Arc::new(|e: wgpu::Error| {
            eprintln!("lowbit-kernels: uncaptured wgpu error: {e}");
        }));
        Self::build(device, queue, Some(info), native_dot4, &opts)
    }

    /// The best adapter with default options (`LOWBIT_WGPU_DOT4` honoured).
    pub fn open_default() -> Result<Self> {
        Self::new(WgpuOptions::default())
    }

    /// Wraps a device and queue the caller already owns (an engine's). The crate's buffers and
    /// pipelines are created on it; `info` is shown by [`WgpuDevice::name`] when given. The
    /// caller's error handler is left alone; the crate's launches use error scopes.
    pub fn from_wgpu(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: Option<wgpu::AdapterInfo>,
        opts: WgpuOptions,
    ) -> Result<Self> {
        if device.limits().max_compute_invocations_per_workgroup < 64 {
            return Err(unavailable(
                "wrapped device allows fewer than 64 compute invocations per workgroup",
            ));
        }
        Self::build(device, queue, info, None, &opts)
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: Option<wgpu::AdapterInfo>,
        native_dot4: Option<bool>,
        opts: &WgpuOptions,
    ) -> Result<Self> {
        let bad_tiles = |reason: String| LowbitError::InvalidArgument {
            op: "wgpu::open",
            what: "tiles",
            reason,
        };
        let tiles = match opts.tiles {
            Some(t) if t.valid() => Some(t),
            Some(t) => return Err(bad_tiles(format!("{t:?} is not a valid tile config"))),
            None => match std::env::var(TILE_ENV) {
                Ok(v) if !v.trim().is_empty() => {
                    Some(TileConfig::parse(&v).map_err(|e| bad_tiles(format!("{TILE_ENV}: {e}")))?)
                }
                _ => None,
            },
        };
        let gl = info
            .as_ref()
            .is_some_and(|i| i.backend == wgpu::Backend::Gl);
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("lowbit dummy binding"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(Self {
            inner: Arc::new(Inner {
                id: next_device_id(),
                limits: device.limits(),
                features: device.features(),
                device,
                queue,
                info,
                dot4_builtin: opts.dot4.resolve() != Dot4Mode::Polyfill,
                native_dot4,
                runtime_checks: opts.runtime_checks,
                tiles,
                f32_route: opts.f32_route,
                modules: Mutex::new(HashMap::new()),
                pipelines: Mutex::new(HashMap::new()),
                compiles: AtomicUsize::new(0),
                timing: Mutex::new(None),
                dummy,
                scratch: Mutex::new(HashMap::new()),
                gl_serial: gl.then(|| Mutex::new(())),
                graveyard: gl.then(|| Arc::new(Graveyard::default())),
            }),
        })
    }

    /// Adapter name (or "wrapped wgpu device").
    pub fn name(&self) -> String {
        match &self.inner.info {
            Some(i) => format!("{} ({:?})", i.name, i.backend),
            None => "wrapped wgpu device".into(),
        }
    }

    /// The adapter's info; `None` for a wrapped device given none.
    pub fn adapter_info(&self) -> Option<&wgpu::AdapterInfo> {
        self.inner.info.as_ref()
    }
    /// The underlying wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }
    /// The queue every launch of this device is submitted to.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }
    /// The device's limits (for a device this crate opened, all the adapter has).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }
    /// The dot4 shader variant in use: `Native` (the builtin) or `Polyfill`.
    pub fn dot4_mode(&self) -> Dot4Mode {
        if self.inner.dot4_builtin {
            Dot4Mode::Native
        } else {
            Dot4Mode::Polyfill
        }
    }
    /// Whether the builtin lowers to a native integer dot product (`OpSDot`) on this adapter;
    /// `None` when that cannot be told (wrapped devices, non-Vulkan backends report `false`).
    pub fn native_dot4(&self) -> Option<bool> {
        self.inner.native_dot4
    }
    /// Pipelines compiled so far (each distinct kernel + override set compiles once).
    pub fn pipelines_compiled(&self) -> usize {
        self.inner.compiles.load(Ordering::Relaxed)
    }
    /// Whether the device has `TIMESTAMP_QUERY`, which [`WgpuDevice::start_timing`] needs.
    pub fn has_timestamps(&self) -> bool {
        self.inner
            .features
            .contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// The GL backend's serialization guard (see `Inner::gl_serial`); `None` elsewhere.
    /// Releases the buffer handles dropped since the last one (`Inner::graveyard`).
    fn gl_guard(&self) -> Option<MutexGuard<'_, ()>> {
        let guard = self.inner.gl_serial.as_ref().map(lock);
        if let Some(g) = &self.inner.graveyard {
            drop(g.take());
        }
        guard
    }

    /// Blocks until all submitted work is done.
    pub fn synchronize(&self) -> Result<()> {
        let _gl = self.gl_guard();
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| driver("poll", e))
    }

    // ---- buffers ----

    pub(crate) fn check_binding(&self, op: &'static str, what: &str, bytes: u64) -> Result<()> {
        let limit = self.inner.limits.max_storage_buffer_binding_size;
        if bytes > limit {
            return Err(LowbitError::Unsupported {
                backend: BackendKind::Wgpu,
                op,
                reason: format!(
                    "{what} needs a {bytes}-byte storage binding; this adapter allows {limit} \
                     (max_storage_buffer_binding_size)"
                ),
            });
        }
        Ok(())
    }

    pub(crate) fn check_own<T>(
        &self,
        op: &'static str,
        what: &'static str,
        b: &GpuBuffer<T>,
    ) -> Result<()> {
        self.check_id(op, what, b.device_id)
    }

    pub(crate) fn check_id(&self, op: &'static str, what: &'static str, id: u64) -> Result<()> {
        if id == self.inner.id {
            Ok(())
        } else {
            Err(LowbitError::WrongDevice {
                op,
                what,
                expected: format!("wgpu device #{}", self.inner.id),
                actual: format!("wgpu device #{id}"),
            })
        }
    }

    /// A new buffer of `len` elements (contents undefined until written).
    pub fn alloc<T: Pod>(&self, len: usize) -> Result<GpuBuffer<T>> {
        const OP: &str = "wgpu::alloc";
        if len == 0 {
            return Err(LowbitError::invalid_shape(OP, &[len], "zero-sized buffer"));
        }
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .map(|b| (b as u64).div_ceil(4) * 4)
            .ok_or_else(|| LowbitError::invalid_shape(OP, &[len], "byte size overflows"))?;
        if bytes > self.inner.limits.max_buffer_size {
            return Err(LowbitError::Unsupported {
                backend: BackendKind::Wgpu,
                op: OP,
                reason: format!(
                    "{bytes}-byte buffer exceeds this adapter's max_buffer_size {}",
                    self.inner.limits.max_buffer_size
                ),
            });
        }
        let _gl = self.gl_guard();
        let scope = self
            .inner
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(driver(format!("allocating {bytes} bytes"), e));
        }
        Ok(self.wrap(buffer, len))
    }

    /// A typed handle of this device to `buffer`.
    fn wrap<T>(&self, buffer: wgpu::Buffer, len: usize) -> GpuBuffer<T> {
        GpuBuffer::new(buffer, len, self.inner.id, self.inner.graveyard.clone())
    }

    /// Scratch of `len` elements for one op's launches, reused across calls (grown when too
    /// small). Safe to share between ops: each op is one submission that writes its scratch
    /// before reading it, and wgpu orders submissions on the queue; a replaced buffer lives
    /// until the submissions using it are done. Its contents on entry are undefined.
    pub(crate) fn scratch<T: Pod>(&self, key: &'static str, len: usize) -> Result<GpuBuffer<T>> {
        let bytes = (len.saturating_mul(std::mem::size_of::<T>()) as u64).div_ceil(4) * 4;
        let mut cache = lock(&self.inner.scratch);
        let buffer = match cache.get(key) {
            Some(b) if b.size() >= bytes => b.clone(),
            _ => {
                let fresh = (*self.alloc::<T>(len)?.buffer).clone();
                let old = cache.insert(key, fresh.clone());
                let _gl = self.gl_guard();
                drop(old);
                fresh
            }
        };
        Ok(self.wrap(buffer, len))
    }

    /// Frees the scratch buffers the ops keep between calls (they are made again on demand).
    pub fn release_scratch(&self) {
        let old: Vec<_> = lock(&self.inner.scratch).drain().collect();
        let _gl = self.gl_guard();
        drop(old);
    }

    /// A new buffer holding `data`.
    pub fn upload<T: Pod>(&self, data: &[T]) -> Result<GpuBuffer<T>> {
        let buf = self.alloc::<T>(data.len())?;
        self.write(&buf, data)?;
        Ok(buf)
    }

    /// Overwrites `buf` with `data` (same length).
    pub fn write<T: Pod>(&self, buf: &GpuBuffer<T>, data: &[T]) -> Result<()> {
        self.check_own("wgpu::write", "buffer", buf)?;
        buf.check_len("wgpu::write", "data", data.len())?;
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let _gl = self.gl_guard();
        if bytes.len().is_multiple_of(4) {
            self.inner.queue.write_buffer(&buf.buffer, 0, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4) * 4, 0);
            self.inner.queue.write_buffer(&buf.buffer, 0, &padded);
        }
        Ok(())
    }

    /// Fills `buf` with `value` (poisoning outputs before a launch, in tests).
    pub fn fill<T: Pod>(&self, buf: &GpuBuffer<T>, value: T) -> Result<()> {
        self.write(buf, &vec![value; buf.len])
    }

    /// Copies `buf` back to the host (blocks).
    pub fn download<T: Pod>(&self, buf: &GpuBuffer<T>) -> Result<Vec<T>> {
        self.check_own("wgpu::download", "buffer", buf)?;
        let bytes = self.read_bytes(&buf.buffer, buf.byte_len())?;
        Ok(bytemuck::pod_collect_to_vec(
            &bytes[..buf.byte_len() as usize],
        ))
    }

    pub(crate) fn read_bytes(&self, src: &wgpu::Buffer, len: u64) -> Result<Vec<u8>> {
        let size = len.div_ceil(4) * 4;
        let d = &self.inner.device;
        let _gl = self.gl_guard();
        let scope = d.push_error_scope(wgpu::ErrorFilter::Validation);
        let staging = d.create_buffer(&wgpu::BufferDescriptor {
            label: Some("lowbit readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = d.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(src, 0, &staging, 0, size);
        self.inner.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(driver("readback", e));
        }
        d.poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| driver("poll (readback)", e))?;
        rx.recv()
            .map_err(|e| driver("readback", e))?
            .map_err(|e| driver("map_async", e))?;
        let bytes = staging
            .get_mapped_range(..)
            .map_err(|e| driver("get_mapped_range", e))?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }

    // ---- pipelines ----

    fn module(&self, stem: &'static str) -> Result<wgpu::ShaderModule> {
        let mut modules = lock(&self.inner.modules);
        if let Some(m) = modules.get(stem) {
            return Ok(m.clone());
        }
        let source = shaders::source(stem).map_err(|log| LowbitError::Compile {
            backend: BackendKind::Wgpu,
            kernel: format!("shaders/{stem}.wgsl"),
            log,
        })?;
        let d = &self.inner.device;
        let _gl = self.gl_guard();
        let scope = d.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(stem),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        };
        let module = if self.inner.runtime_checks {
            d.create_shader_module(desc)
        } else {
            // SAFETY: the crate's shaders bound every storage access by explicit checks and
            // every loop by a uniform count (see shaders/*.wgsl); only wgpu's redundant
            // clamping and loop-bounding instrumentation is dropped.
            unsafe { d.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
        };
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(LowbitError::Compile {
                backend: BackendKind::Wgpu,
                kernel: format!("shaders/{stem}.wgsl"),
                log: e.to_string(),
            });
        }
        modules.insert(stem, module.clone());
        Ok(module)
    }

    /// The pipeline of `kernel` with `constants`, compiled on first use and cached.
    pub(crate) fn pipeline(
        &self,
        kernel: KernelId,
        constants: &[(&'static str, f64)],
    ) -> Result<Arc<Pipeline>> {
        let mut sorted: Vec<(&'static str, u64)> =
            constants.iter().map(|&(k, v)| (k, v.to_bits())).collect();
        sorted.sort_unstable();
        let key = PipelineKey {
            kernel,
            constants: sorted,
        };
        if let Some(p) = lock(&self.inner.pipelines).get(&key) {
            return Ok(p.clone());
        }
        let module = self.module(kernel.stem())?;
        let d = &self.inner.device;
        let _gl = self.gl_guard();
        let scope = d.push_error_scope(wgpu::ErrorFilter::Validation);
        let entries: Vec<wgpu::BindGroupLayoutEntry> = shaders::bindings(kernel)
            .iter()
            .map(|&(binding, bind)| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match bind {
                        Bind::Uniform => wgpu::BufferBindingType::Uniform,
                        Bind::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Bind::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let layout = d.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(kernel.entry()),
            entries: &entries,
        });
        let pl = d.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(kernel.entry()),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.entry()),
            layout: Some(&pl),
            module: &module,
            entry_point: Some(kernel.entry()),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                // every workgroup array is written before it is read
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(LowbitError::Compile {
                backend: BackendKind::Wgpu,
                kernel: format!("{} ({}.wgsl) {constants:?}", kernel.entry(), kernel.stem()),
                log: e.to_string(),
            });
        }
        self.inner.compiles.fetch_add(1, Ordering::Relaxed);
        let p = Arc::new(Pipeline { pipeline, layout });
        lock(&self.inner.pipelines).insert(key, p.clone());
        Ok(p)
    }

    // ---- launches ----

    /// Encodes `launches` in order in one compute pass (wgpu orders dependent dispatches) and
    /// submits them. Every pipeline is resolved and every grid checked first, so an error
    /// leaves the device untouched.
    pub(crate) fn run(&self, op: &'static str, launches: &[Launch<'_>]) -> Result<()> {
        let max = self.inner.limits.max_compute_workgroups_per_dimension;
        let mut pipelines = Vec::with_capacity(launches.len());
        for l in launches {
            if let Some(&g) = l.groups.iter().find(|&&g| g > max) {
                return Err(LowbitError::Unsupported {
                    backend: BackendKind::Wgpu,
                    op,
                    reason: format!(
                        "{}: {g} workgroups in one dimension exceeds this adapter's {max}",
                        l.kernel.entry()
                    ),
                });
            }
            pipelines.push(self.pipeline(l.kernel, &l.constants)?);
        }
        let d = &self.inner.device;
        // Query slots full: read them back first (read_bytes takes the GL guard itself).
        let mut timing = lock(&self.inner.timing);
        if let Some(t) = timing.as_mut()
            && t.next + 2 > TIMESTAMP_CAPACITY
        {
            let spent = self.resolve_timestamps(t)?;
            t.pending += spent;
        }
        let _gl = self.gl_guard();
        let scope = d.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut bind_groups = Vec::with_capacity(launches.len());
        for (l, p) in launches.iter().zip(&pipelines) {
            let params = d.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("lowbit params"),
                contents: &l.params,
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let mut entries = Vec::with_capacity(l.buffers.len() + 1);
            entries.push(wgpu::BindGroupEntry {
                binding: 0,
                resource: params.as_entire_binding(),
            });
            for &(binding, buf) in &l.buffers {
                entries.push(wgpu::BindGroupEntry {
                    binding,
                    resource: buf.as_entire_binding(),
                });
            }
            bind_groups.push(d.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(l.kernel.entry()),
                layout: &p.layout,
                entries: &entries,
            }));
        }
        let mut enc = d.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(op) });
        {
            let timestamp_writes = timing.as_ref().map(|t| wgpu::ComputePassTimestampWrites {
                query_set: &t.set,
                beginning_of_pass_write_index: Some(t.next),
                end_of_pass_write_index: Some(t.next + 1),
            });
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(op),
                timestamp_writes,
            });
            for ((l, p), bg) in launches.iter().zip(&pipelines).zip(&bind_groups) {
                if l.groups.contains(&0) {
                    continue;
                }
                pass.set_pipeline(&p.pipeline);
                pass.set_bind_group(0, bg, &[]);
                pass.dispatch_workgroups(l.groups[0], l.groups[1], l.groups[2]);
            }
        }
        if let Some(t) = timing.as_mut() {
            t.next += 2;
        }
        drop(timing);
        self.inner.queue.submit([enc.finish()]);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(driver(op, e));
        }
        Ok(())
    }

    /// The dummy buffer bound where a layout has a slot the launch does not read.
    pub(crate) fn dummy(&self) -> &wgpu::Buffer {
        &self.inner.dummy
    }

    // ---- timing ----

    /// Starts recording GPU time of every launch (timestamp queries around each compute
    /// pass). Returns `false` (and records nothing) where the adapter has no
    /// `TIMESTAMP_QUERY`.
    pub fn start_timing(&self) -> Result<bool> {
        if !self.has_timestamps() {
            return Ok(false);
        }
        let mut timing = lock(&self.inner.timing);
        if timing.is_none() {
            let d = &self.inner.device;
            let _gl = self.gl_guard();
            let set = d.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("lowbit timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: TIMESTAMP_CAPACITY,
            });
            let resolve = d.create_buffer(&wgpu::BufferDescriptor {
                label: Some("lowbit timestamp resolve"),
                size: u64::from(TIMESTAMP_CAPACITY) * 8,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            *timing = Some(Timing {
                set,
                resolve,
                next: 0,
                pending: Duration::ZERO,
            });
        }
        Ok(true)
    }

    /// Stops recording GPU time.
    pub fn stop_timing(&self) {
        let old = lock(&self.inner.timing).take();
        let _gl = self.gl_guard();
        drop(old);
    }

    /// GPU time of the launches since the last call (waits for them), or `None` when timing
    /// is off.
    pub fn take_gpu_time(&self) -> Result<Option<Duration>> {
        let mut timing = lock(&self.inner.timing);
        let Some(t) = timing.as_mut() else {
            return Ok(None);
        };
        let spent = self.resolve_timestamps(t)?;
        let total = t.pending + spent;
        t.pending = Duration::ZERO;
        Ok(Some(total))
    }

    fn resolve_timestamps(&self, t: &mut Timing) -> Result<Duration> {
        if t.next == 0 {
            return Ok(Duration::ZERO);
        }
        {
            let _gl = self.gl_guard();
            let mut enc = self
                .inner
                .device
                .create_command_encoder(&Default::default());
            enc.resolve_query_set(&t.set, 0..t.next, &t.resolve, 0);
            self.inner.queue.submit([enc.finish()]);
        }
        let bytes = self.read_bytes(&t.resolve, u64::from(t.next) * 8)?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
        let period = f64::from(self.inner.queue.get_timestamp_period());
        let ns: f64 = ticks
            .chunks_exact(2)
            .map(|p| p[1].saturating_sub(p[0]) as f64 * period)
            .sum();
        t.next = 0;
        Ok(Duration::from_nanos(ns as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::{TileConfig, WgpuDevice, WgpuOptions};

    /// On GL, a dropped buffer handle only goes to the device's graveyard (dropping it on
    /// another thread takes no GL lock); the next call that takes the GL guard releases it.
    /// Elsewhere there is no graveyard.
    #[test]
    fn gl_drops_wait_for_the_gl_guard() {
        let opts = WgpuOptions {
            backends: Some(wgpu::Backends::GL),
            ..Default::default()
        };
        let dev = match WgpuDevice::new(opts) {
            Ok(d) => d,
            Err(e) => {
                println!("SKIPPED: no GL adapter ({e})");
                return;
            }
        };
        let Some(yard) = dev.inner.graveyard.clone() else {
            panic!("{} is a GL device without a graveyard", dev.name());
        };
        let a = dev.upload(&[1u32, 2, 3]).unwrap();
        let b = a.clone();
        std::thread::spawn(move || drop(a)).join().unwrap();
        assert_eq!(yard.len(), 1);
        // The memory lives on through `b`; this call takes the guard and releases `a`.
        assert_eq!(dev.download(&b).unwrap(), [1, 2, 3]);
        assert_eq!(yard.len(), 0);
        drop(b);
        dev.synchronize().unwrap();
        assert_eq!(yard.len(), 0);
    }

    #[test]
    fn tile_config_parses_and_rejects() {
        assert_eq!(TileConfig::parse("16x8x8").unwrap(), TileConfig::LARGE);
        assert_eq!(TileConfig::parse(" 8x8x32 ").unwrap(), TileConfig::SMALL);
        for bad in [
            "", "16x8", "16x8x8x1", "12x8x8", "16x8x2", "2x1x4", "16x8x64", "axbxc",
        ] {
            assert!(TileConfig::parse(bad).is_err(), "{bad}");
        }
    }
}
