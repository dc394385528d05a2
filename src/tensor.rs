//! A thin tensor: a checked shape (rank 1..=4), a dtype and storage. Only host storage exists
//! for now; device-resident storage (CUDA buffers, wgpu buffers) arrives with those backends
//! as further [`Storage`] variants.
//!
//! `I8x4` tensors hold `u32` words of four signed lanes (byte `j` = element `4k+j` of the
//! packed axis, SPEC.md); their shape counts words, e.g. `[B, H, T, ceil(D/4)]`.

use half::{bf16, f16};

use crate::error::{LowbitError, Result};

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    I8,
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

    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank]
    }

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
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I32(Vec<i32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    I8x4(Vec<u32>),
}

impl HostData {
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

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    Host(HostData),
}

mod sealed {
    pub trait Sealed {}
}

/// Rust types a tensor can hold: `f32`, `f16`, `bf16`, `i32`, `i8`, `u8` and `u32` (the
/// words of `I8x4`).
pub trait Element: bytemuck::Pod + sealed::Sealed {
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

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn rank(&self) -> usize {
        self.shape.rank()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

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

    fn host(&self) -> &HostData {
        match &self.storage {
            Storage::Host(data) => data,
        }
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
        T::view(self.host()).ok_or_else(|| self.dtype_error::<T>("Tensor::as_slice"))
    }

    /// Copies the elements out; `T` must match the dtype.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        T::view(self.host())
            .map(<[T]>::to_vec)
            .ok_or_else(|| self.dtype_error::<T>("Tensor::to_vec"))
    }

    /// The raw bytes of host storage.
    pub fn as_bytes(&self) -> &[u8] {
        self.host().as_bytes()
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
    fn reshape_keeps_element_count() {
        let t = Tensor::from_vec(&[2, 3], vec![0i8; 6]).unwrap();
        let t = t.reshape(&[3, 2]).unwrap();
        assert_eq!(t.dims(), &[3, 2]);
        assert!(t.reshape(&[4]).is_err());
    }
}
