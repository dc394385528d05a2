//! A thin tensor: a checked shape (rank 1..=4), a dtype and storage: host vectors, or (with
//! the `cuda` / `wgpu` features) a device buffer of the tensor's raw bytes
//! ([`Tensor::to_device_cuda`], [`Tensor::to_device_wgpu`], [`Tensor::to_host`]). The typed
//! host accessors ([`Tensor::as_slice`], [`Tensor::to_vec`]) return
//! [`LowbitError::WrongDevice`] on a device tensor; download it first.
//!
//! Cloning a device tensor shares its device memory (tensors are immutable).
//!
//! `I8x4` tensors hold `u32` words of four signed lanes (byte `j` = element `4k+j` of the
//! packed axis, SPEC.md); their shape counts words, e.g. `[B, H, T, ceil(D/4)]`.

use half::{bf16, f16};

use crate::error::{BackendKind, LowbitError, Result};

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// IEEE half precision (`half::f16`).
    F16,
    /// bfloat16 (`half::bf16`).
    BF16,
    /// 32-bit signed integer.
    I32,
    /// Signed 8-bit integer (one code per byte).
    I8,
    /// Unsigned 8-bit integer.
    U8,
    /// Four signed int8 lanes packed in a `u32` word.
    I8x4,
}

impl DType {
    /// Bytes per stored element (per word for `I8x4`).
    pub fn size_of(self) -> usize {
        match self {
            Self::F32 | Self::I32 | Self::I8x4 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::I8 | Self::U8 => 1,
        }
    }

    /// Lower-case name, as `Display` prints it: "f32", "f16", "bf16", "i32", "i8", "u8", "i8x4".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::I32 => "i32",
            Self::I8 => "i8",
            Self::U8 => "u8",
            Self::I8x4 => "i8x4",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Largest rank a [`Shape`] may have.
pub const MAX_RANK: usize = 4;

/// A checked shape: rank 1..=4, no zero dimension, element count fits `usize`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: [usize; MAX_RANK],
    rank: usize,
}

impl Shape {
    /// Checks `dims`: rank 1..=[`MAX_RANK`], no zero dimension, element count fits `usize`.
    pub fn new(dims: &[usize]) -> Result<Self> {
        const OP: &str = "Shape::new";
        if dims.is_empty() || dims.len() > MAX_RANK {
            return Err(LowbitError::invalid_shape(
                OP,
                dims,
                format!("rank {} (must be 1..={MAX_RANK})", dims.len()),
            ));
        }
        if dims.contains(&0) {
            return Err(LowbitError::invalid_shape(OP, dims, "zero-sized dimension"));
        }
        if dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .is_none()
        {
            return Err(LowbitError::invalid_shape(
                OP,
                dims,
                "element count overflows usize",
            ));
        }
        let mut all = [1usize; MAX_RANK];
        all[..dims.len()].copy_from_slice(dims);
        Ok(Self {
            dims: all,
            rank: dims.len(),
        })
    }

    /// The dimensions, outermost first (`rank()` of them).
    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank]
    }

    /// Number of dimensions, 1..=[`MAX_RANK`].
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Element count (checked at construction).
    pub fn len(&self) -> usize {
        self.dims().iter().product()
    }

    /// Always false: zero-sized dimensions are rejected.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The dims as an array of exactly rank `R`.
    pub fn dims_n<const R: usize>(&self) -> Result<[usize; R]> {
        <[usize; R]>::try_from(self.dims()).map_err(|_| {
            LowbitError::invalid_shape(
                "Shape::dims_n",
                self.dims(),
                format!("rank {} but rank {R} was requested", self.rank),
            )
        })
    }
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

impl TryFrom<&[usize]> for Shape {
    type Error = LowbitError;
    fn try_from(dims: &[usize]) -> Result<Self> {
        Self::new(dims)
    }
}

impl<const R: usize> TryFrom<[usize; R]> for Shape {
    type Error = LowbitError;
    fn try_from(dims: [usize; R]) -> Result<Self> {
        Self::new(&dims)
    }
}

/// Host-resident elements.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    /// `f32` elements.
    F32(Vec<f32>),
    /// `f16` elements.
    F16(Vec<f16>),
    /// `bf16` elements.
    BF16(Vec<bf16>),
    /// `i32` elements.
    I32(Vec<i32>),
    /// `i8` elements.
    I8(Vec<i8>),
    /// `u8` elements.
    U8(Vec<u8>),
    /// i8x4 words: byte `j` of word `k` is element `4k+j` of the packed axis.
    I8x4(Vec<u32>),
}

impl HostData {
    /// The [`DType`] matching the variant.
    pub fn dtype(&self) -> DType {
        match self {
            Self::F32(_) => DType::F32,
            Self::F16(_) => DType::F16,
            Self::BF16(_) => DType::BF16,
            Self::I32(_) => DType::I32,
            Self::I8(_) => DType::I8,
            Self::U8(_) => DType::U8,
            Self::I8x4(_) => DType::I8x4,
        }
    }

    /// Stored elements (words for `I8x4`).
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::F16(v) => v.len(),
            Self::BF16(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::I8(v) => v.len(),
            Self::U8(v) => v.len(),
            Self::I8x4(v) => v.len(),
        }
    }

    /// Whether no element is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements of `dtype` from their raw little-endian bytes (any alignment).
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> Result<Self> {
        let size = dtype.size_of();
        if !bytes.len().is_multiple_of(size) {
            return Err(LowbitError::InvalidArgument {
                op: "HostData::from_bytes",
                what: "bytes",
                reason: format!(
                    "{} bytes is not a whole number of {dtype} elements",
                    bytes.len()
                ),
            });
        }
        fn v<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
            bytes
                .chunks_exact(std::mem::size_of::<T>())
                .map(bytemuck::pod_read_unaligned)
                .collect()
        }
        Ok(match dtype {
            DType::F32 => Self::F32(v(bytes)),
            DType::F16 => Self::F16(v(bytes)),
            DType::BF16 => Self::BF16(v(bytes)),
            DType::I32 => Self::I32(v(bytes)),
            DType::I8 => Self::I8(v(bytes)),
            DType::U8 => Self::U8(bytes.to_vec()),
            DType::I8x4 => Self::I8x4(v(bytes)),
        })
    }

    /// The raw bytes (little-endian on every supported target).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::F32(v) => bytemuck::cast_slice(v),
            Self::F16(v) => bytemuck::cast_slice(v),
            Self::BF16(v) => bytemuck::cast_slice(v),
            Self::I32(v) => bytemuck::cast_slice(v),
            Self::I8(v) => bytemuck::cast_slice(v),
            Self::U8(v) => v,
            Self::I8x4(v) => bytemuck::cast_slice(v),
        }
    }
}

/// Where a tensor's elements live.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Storage {
    /// Typed elements in host memory.
    Host(HostData),
    /// The raw bytes in CUDA device memory.
    #[cfg(feature = "cuda")]
    Cuda(CudaStorage),
    /// The raw bytes in a wgpu storage buffer.
    #[cfg(feature = "wgpu")]
    Wgpu(WgpuStorage),
}

/// A tensor's bytes on a CUDA device (shared between clones; equal only to itself).
#[cfg(feature = "cuda")]
#[derive(Clone, Debug)]
pub struct CudaStorage {
    bytes: std::sync::Arc<crate::backend::cuda::cudarc::driver::CudaSlice<u8>>,
    device: String,
}

#[cfg(feature = "cuda")]
impl PartialEq for CudaStorage {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.bytes, &other.bytes)
    }
}

#[cfg(feature = "cuda")]
impl CudaStorage {
    /// The device buffer (its stream is the uploading device's stream).
    pub fn bytes(&self) -> &crate::backend::cuda::cudarc::driver::CudaSlice<u8> {
        &self.bytes
    }

    /// The CUDA device ordinal.
    pub fn ordinal(&self) -> usize {
        self.bytes.ordinal()
    }

    fn download(&self) -> Result<Vec<u8>> {
        self.bytes
            .stream()
            .clone_dtoh(&*self.bytes)
            .map_err(crate::backend::cuda::device::drv("Tensor::to_host"))
    }
}

/// A tensor's bytes in a wgpu buffer, with the device that owns it (shared between clones;
/// equal only to itself).
#[cfg(feature = "wgpu")]
#[derive(Clone, Debug)]
pub struct WgpuStorage {
    bytes: std::sync::Arc<crate::backend::wgpu::GpuBuffer<u8>>,
    device: crate::backend::wgpu::WgpuDevice,
}

#[cfg(feature = "wgpu")]
impl PartialEq for WgpuStorage {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.bytes, &other.bytes)
    }
}

#[cfg(feature = "wgpu")]
impl WgpuStorage {
    /// The buffer of raw bytes.
    pub fn bytes(&self) -> &crate::backend::wgpu::GpuBuffer<u8> {
        &self.bytes
    }

    /// The device that owns the buffer.
    pub fn device(&self) -> &crate::backend::wgpu::WgpuDevice {
        &self.device
    }
}

mod sealed {
    pub trait Sealed {}
}

/// Rust types a tensor can hold: `f32`, `f16`, `bf16`, `i32`, `i8`, `u8` and `u32` (the
/// words of `I8x4`).
pub trait Element: bytemuck::Pod + sealed::Sealed {
    /// The [`DType`] a tensor of this element type has (`I8x4` for `u32`).
    const DTYPE: DType;
    #[doc(hidden)]
    fn wrap(data: Vec<Self>) -> HostData;
    #[doc(hidden)]
    fn view(data: &HostData) -> Option<&[Self]>;
}

macro_rules! element {
    ($t:ty, $variant:ident) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn wrap(data: Vec<Self>) -> HostData {
                HostData::$variant(data)
            }
            fn view(data: &HostData) -> Option<&[Self]> {
                match data {
                    HostData::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

element!(f32, F32);
element!(f16, F16);
element!(bf16, BF16);
element!(i32, I32);
element!(i8, I8);
element!(u8, U8);
element!(u32, I8x4);

/// A shaped, typed block of elements.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Shape,
    dtype: DType,
    storage: Storage,
}

impl Tensor {
    /// Takes ownership of `data`; its length must equal the shape's element count.
    pub fn from_vec<T: Element>(dims: &[usize], data: Vec<T>) -> Result<Self> {
        let shape = Shape::new(dims)?;
        if data.len() != shape.len() {
            return Err(LowbitError::len(
                "Tensor::from_vec",
                "data",
                shape.len(),
                data.len(),
            ));
        }
        Ok(Self {
            shape,
            dtype: T::DTYPE,
            storage: Storage::Host(T::wrap(data)),
        })
    }

    /// Copies `data`; its length must equal the shape's element count.
    pub fn from_slice<T: Element>(dims: &[usize], data: &[T]) -> Result<Self> {
        let shape = Shape::new(dims)?;
        if data.len() != shape.len() {
            return Err(LowbitError::len(
                "Tensor::from_slice",
                "data",
                shape.len(),
                data.len(),
            ));
        }
        Self::from_vec(dims, data.to_vec())
    }

    /// The checked shape (for `I8x4`, the packed axis counts words).
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    /// Number of dimensions, 1..=4.
    pub fn rank(&self) -> usize {
        self.shape.rank()
    }

    /// Element type of the stored elements.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Where the elements live (host data or a device buffer).
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Elements (words for `I8x4`).
    pub fn len(&self) -> usize {
        self.shape.len()
    }

    /// Always false: zero-sized dimensions are rejected.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bytes of storage.
    pub fn size_bytes(&self) -> usize {
        self.len() * self.dtype.size_of()
    }

    /// The dims of a rank-4 tensor.
    pub fn dims4(&self) -> Result<[usize; 4]> {
        self.shape.dims_n::<4>()
    }

    /// The dims of a rank-3 tensor.
    pub fn dims3(&self) -> Result<[usize; 3]> {
        self.shape.dims_n::<3>()
    }

    /// The dims of a rank-2 tensor.
    pub fn dims2(&self) -> Result<[usize; 2]> {
        self.shape.dims_n::<2>()
    }

    fn host(&self, op: &'static str) -> Result<&HostData> {
        match &self.storage {
            Storage::Host(data) => Ok(data),
            #[allow(unreachable_patterns)]
            _ => Err(LowbitError::WrongDevice {
                op,
                what: "tensor",
                expected: "host (call Tensor::to_host first)".into(),
                actual: self.device(),
            }),
        }
    }

    /// Which backend holds the elements (`Cpu` for host storage).
    pub fn backend(&self) -> BackendKind {
        match &self.storage {
            Storage::Host(_) => BackendKind::Cpu,
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => BackendKind::Cuda,
            #[cfg(feature = "wgpu")]
            Storage::Wgpu(_) => BackendKind::Wgpu,
        }
    }

    /// Whether the elements are in host memory.
    pub fn is_host(&self) -> bool {
        matches!(self.storage, Storage::Host(_))
    }

    /// Where the elements live: `host`, `cuda:ORDINAL (NAME)` or `wgpu (ADAPTER)`.
    pub fn device(&self) -> String {
        match &self.storage {
            Storage::Host(_) => "host".into(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(c) => c.device.clone(),
            #[cfg(feature = "wgpu")]
            Storage::Wgpu(w) => format!("wgpu ({})", w.device.name()),
        }
    }

    /// A host copy (a clone when already on the host; downloads otherwise, waiting for the
    /// device).
    pub fn to_host(&self) -> Result<Self> {
        let bytes: Vec<u8> = match &self.storage {
            Storage::Host(_) => None,
            #[cfg(feature = "cuda")]
            Storage::Cuda(c) => Some(c.download()?),
            #[cfg(feature = "wgpu")]
            Storage::Wgpu(w) => Some(w.device.download(&w.bytes)?),
        }
        .unwrap_or_default();
        if self.is_host() {
            return Ok(self.clone());
        }
        let data = HostData::from_bytes(self.dtype, &bytes)?;
        if data.len() != self.len() {
            return Err(LowbitError::len(
                "Tensor::to_host",
                "downloaded elements",
                self.len(),
                data.len(),
            ));
        }
        Ok(Self {
            shape: self.shape,
            dtype: self.dtype,
            storage: Storage::Host(data),
        })
    }

    /// The tensor on CUDA device `dev` (uploaded, stream-ordered). Already there: a clone
    /// sharing the buffer; on another device: through the host.
    #[cfg(feature = "cuda")]
    pub fn to_device_cuda(&self, dev: &crate::backend::cuda::CudaDevice) -> Result<Self> {
        if let Storage::Cuda(c) = &self.storage
            && c.bytes.context().cu_ctx() == dev.context().cu_ctx()
        {
            return Ok(self.clone());
        }
        let host = self.to_host()?;
        let bytes = dev.upload(host.host("Tensor::to_device_cuda")?.as_bytes())?;
        Ok(Self {
            shape: self.shape,
            dtype: self.dtype,
            storage: Storage::Cuda(CudaStorage {
                device: format!("cuda:{} ({})", bytes.ordinal(), dev.name()),
                bytes: std::sync::Arc::new(bytes),
            }),
        })
    }

    /// The device buffer of a tensor on `dev` ([`LowbitError::WrongDevice`] otherwise).
    #[cfg(feature = "cuda")]
    pub fn cuda_bytes(
        &self,
        dev: &crate::backend::cuda::CudaDevice,
    ) -> Result<&crate::backend::cuda::cudarc::driver::CudaSlice<u8>> {
        match &self.storage {
            Storage::Cuda(c) if c.bytes.context().cu_ctx() == dev.context().cu_ctx() => {
                Ok(&c.bytes)
            }
            _ => Err(LowbitError::WrongDevice {
                op: "Tensor::cuda_bytes",
                what: "tensor",
                expected: format!("cuda:{} ({})", dev.context().ordinal(), dev.name()),
                actual: self.device(),
            }),
        }
    }

    /// The tensor on wgpu device `dev` (uploaded). Already there: a clone sharing the
    /// buffer; elsewhere: through the host.
    #[cfg(feature = "wgpu")]
    pub fn to_device_wgpu(&self, dev: &crate::backend::wgpu::WgpuDevice) -> Result<Self> {
        if let Storage::Wgpu(w) = &self.storage
            && w.device.inner.id == dev.inner.id
        {
            return Ok(self.clone());
        }
        let host = self.to_host()?;
        let bytes = dev.upload(host.host("Tensor::to_device_wgpu")?.as_bytes())?;
        Ok(Self {
            shape: self.shape,
            dtype: self.dtype,
            storage: Storage::Wgpu(WgpuStorage {
                bytes: std::sync::Arc::new(bytes),
                device: dev.clone(),
            }),
        })
    }

    /// A typed handle to the buffer of a tensor on `dev`, for the device-resident ops
    /// (`u32` for `I8x4`). [`LowbitError::WrongDevice`] when it lives elsewhere, an
    /// `InvalidArgument` when `T` is not its dtype.
    #[cfg(feature = "wgpu")]
    pub fn wgpu_buffer<T: Element>(
        &self,
        dev: &crate::backend::wgpu::WgpuDevice,
    ) -> Result<crate::backend::wgpu::GpuBuffer<T>> {
        const OP: &str = "Tensor::wgpu_buffer";
        let w = match &self.storage {
            Storage::Wgpu(w) if w.device.inner.id == dev.inner.id => w,
            _ => {
                return Err(LowbitError::WrongDevice {
                    op: OP,
                    what: "tensor",
                    expected: format!("wgpu ({})", dev.name()),
                    actual: self.device(),
                });
            }
        };
        if T::DTYPE != self.dtype {
            return Err(self.dtype_error::<T>(OP));
        }
        Ok(w.bytes.retyped(self.len()))
    }

    fn dtype_error<T: Element>(&self, op: &'static str) -> LowbitError {
        LowbitError::InvalidArgument {
            op,
            what: "dtype",
            reason: format!("tensor holds {}, {} was requested", self.dtype, T::DTYPE),
        }
    }

    /// Borrows the elements (no copy); `T` must match the dtype.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        const OP: &str = "Tensor::as_slice";
        T::view(self.host(OP)?).ok_or_else(|| self.dtype_error::<T>(OP))
    }

    /// Copies the elements out; `T` must match the dtype.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        const OP: &str = "Tensor::to_vec";
        T::view(self.host(OP)?)
            .map(<[T]>::to_vec)
            .ok_or_else(|| self.dtype_error::<T>(OP))
    }

    /// The raw bytes of host storage; empty for a device tensor (see
    /// [`try_as_bytes`](Self::try_as_bytes)).
    pub fn as_bytes(&self) -> &[u8] {
        self.try_as_bytes().unwrap_or_default()
    }

    /// The raw bytes of host storage, or [`LowbitError::WrongDevice`] for a device tensor.
    pub fn try_as_bytes(&self) -> Result<&[u8]> {
        Ok(self.host("Tensor::as_bytes")?.as_bytes())
    }

    /// Same elements, new shape of equal element count.
    pub fn reshape(self, dims: &[usize]) -> Result<Self> {
        let shape = Shape::new(dims)?;
        if shape.len() != self.len() {
            return Err(LowbitError::shape(
                "Tensor::reshape",
                format!("{} elements", self.len()),
                format!("{dims:?} ({} elements)", shape.len()),
            ));
        }
        Ok(Self { shape, ..self })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_constructors() {
        let t = Tensor::from_vec(&[2, 3], vec![1.0f32; 6]).unwrap();
        assert_eq!(t.dims(), &[2, 3]);
        assert_eq!(t.dtype(), DType::F32);
        assert_eq!(t.size_bytes(), 24);
        assert!(matches!(
            Tensor::from_vec(&[2, 3], vec![1.0f32; 5]),
            Err(LowbitError::LengthMismatch {
                expected: 6,
                actual: 5,
                ..
            })
        ));
        assert!(Tensor::from_slice::<i8>(&[], &[]).is_err());
        assert!(Tensor::from_slice(&[1, 1, 1, 1, 1], &[1u8]).is_err());
        assert!(Tensor::from_slice(&[2, 0], &[0i32; 0]).is_err());
        assert!(Tensor::from_slice(&[usize::MAX, 2], &[0i32; 0]).is_err());
    }

    #[test]
    fn typed_access_checks_dtype() {
        let t = Tensor::from_slice(&[1, 1, 2, 1], &[7u32, 9]).unwrap();
        assert_eq!(t.dtype(), DType::I8x4);
        assert_eq!(t.as_slice::<u32>().unwrap(), &[7, 9]);
        assert!(t.as_slice::<i32>().is_err());
        assert!(t.to_vec::<f32>().is_err());
        assert_eq!(t.dims4().unwrap(), [1, 1, 2, 1]);
        assert!(t.dims3().is_err());
        assert_eq!(t.as_bytes(), &[7, 0, 0, 0, 9, 0, 0, 0]);
    }

    #[test]
    fn every_dtype_round_trips() {
        let h = [f16::from_f32(1.5), f16::from_f32(-2.0)];
        let t = Tensor::from_slice(&[2], &h).unwrap();
        assert_eq!(t.to_vec::<f16>().unwrap(), h.to_vec());
        assert_eq!(t.dtype().size_of(), 2);
        let b = [bf16::from_f32(0.25)];
        assert_eq!(
            Tensor::from_slice(&[1], &b)
                .unwrap()
                .to_vec::<bf16>()
                .unwrap(),
            b.to_vec()
        );
        for (t, d) in [
            (Tensor::from_slice(&[1], &[1i32]).unwrap(), DType::I32),
            (Tensor::from_slice(&[1], &[-1i8]).unwrap(), DType::I8),
            (Tensor::from_slice(&[1], &[255u8]).unwrap(), DType::U8),
        ] {
            assert_eq!(t.dtype(), d);
        }
    }

    #[test]
    fn host_path_of_the_device_api() {
        let t = Tensor::from_slice(&[2, 2], &[1.5f32, -2.0, 0.0, 7.0]).unwrap();
        assert!(t.is_host());
        assert_eq!(t.backend(), BackendKind::Cpu);
        assert_eq!(t.device(), "host");
        assert_eq!(t.to_host().unwrap(), t);
        assert_eq!(t.try_as_bytes().unwrap(), t.as_bytes());
        for (dtype, bytes) in [
            (DType::F32, 1.5f32.to_le_bytes().to_vec()),
            (DType::I8x4, 0xDEAD_BEEFu32.to_le_bytes().to_vec()),
            (DType::BF16, vec![0x80, 0x3f]),
        ] {
            // From an odd offset: no alignment assumed.
            let mut buf = vec![0u8];
            buf.extend_from_slice(&bytes);
            let data = HostData::from_bytes(dtype, &buf[1..]).unwrap();
            assert_eq!(data.dtype(), dtype);
            assert_eq!(data.as_bytes(), &bytes[..]);
        }
        assert!(HostData::from_bytes(DType::F32, &[0u8; 6]).is_err());
    }

    #[test]
    fn reshape_keeps_element_count() {
        let t = Tensor::from_vec(&[2, 3], vec![0i8; 6]).unwrap();
        let t = t.reshape(&[3, 2]).unwrap();
        assert_eq!(t.dims(), &[3, 2]);
        assert!(t.reshape(&[4]).is_err());
    }
}
