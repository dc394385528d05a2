//! Device buffers: a typed view of one `wgpu::Buffer` owned by one [`super::WgpuDevice`].

use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex};

use bytemuck::Pod;
use half::{bf16, f16};

use crate::error::{LowbitError, Result};
use crate::ops::OutputDType;

/// A storage buffer of `len` elements of `T` on one wgpu device.
///
/// Every op checks that its buffers belong to the device it runs on ([`LowbitError::WrongDevice`])
/// and have the length the shape implies ([`LowbitError::LengthMismatch`]).
#[derive(Debug)]
pub struct GpuBuffer<T> {
    pub(crate) buffer: ManuallyDrop<wgpu::Buffer>,
    pub(crate) len: usize,
    pub(crate) device_id: u64,
    /// On wgpu's GL backend, the device's [`Graveyard`]: the handle goes there when dropped.
    pub(crate) graveyard: Option<Arc<Graveyard>>,
    pub(crate) _t: PhantomData<T>,
}

/// Buffer handles dropped on a GL device, released later under its GL serialization (in
/// the device's next call that takes it). Releasing the last handle of a buffer takes
/// wgpu-hal's GL context lock, which panics after a few seconds if another thread's long
/// dispatch holds the context; the device's own calls wait for each other instead.
#[derive(Debug, Default)]
pub(crate) struct Graveyard(Mutex<Vec<wgpu::Buffer>>);

impl Graveyard {
    fn bury(&self, buffer: wgpu::Buffer) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(buffer);
    }

    /// The handles dropped so far, to be released by the caller (holding the GL guard).
    pub(crate) fn take(&self) -> Vec<wgpu::Buffer> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl<T> GpuBuffer<T> {
    pub(crate) fn new(
        buffer: wgpu::Buffer,
        len: usize,
        device_id: u64,
        graveyard: Option<Arc<Graveyard>>,
    ) -> Self {
        Self {
            buffer: ManuallyDrop::new(buffer),
            len,
            device_id,
            graveyard,
            _t: PhantomData,
        }
    }

    /// A handle of another element type to the same memory (`len` elements of `U`).
    pub(crate) fn retyped<U>(&self, len: usize) -> GpuBuffer<U> {
        GpuBuffer::new(
            (*self.buffer).clone(),
            len,
            self.device_id,
            self.graveyard.clone(),
        )
    }
}

impl<T> Clone for GpuBuffer<T> {
    /// Another handle to the same device memory (not a copy).
    fn clone(&self) -> Self {
        self.retyped(self.len)
    }
}

impl<T> Drop for GpuBuffer<T> {
    fn drop(&mut self) {
        // SAFETY: the field is taken once, here, and not used again.
        let buffer = unsafe { ManuallyDrop::take(&mut self.buffer) };
        match &self.graveyard {
            Some(g) => g.bury(buffer),
            None => drop(buffer),
        }
    }
}

impl<T: Pod> GpuBuffer<T> {
    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the elements occupy (the allocation is rounded up to 4).
    pub fn byte_len(&self) -> u64 {
        (self.len * std::mem::size_of::<T>()) as u64
    }

    /// The underlying buffer (usages `STORAGE | COPY_SRC | COPY_DST`), for interop.
    pub fn raw(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    pub(crate) fn check_len(&self, op: &'static str, what: &'static str, len: usize) -> Result<()> {
        if self.len == len {
            Ok(())
        } else {
            Err(LowbitError::len(op, what, len, self.len))
        }
    }
}

/// A projection output on the device, in its epilogue's element type.
#[derive(Clone, Debug)]
pub enum DeviceOutput {
    /// f32 values (epilogue dtype `F32`).
    F32(GpuBuffer<f32>),
    /// IEEE half values (epilogue dtype `F16`).
    F16(GpuBuffer<f16>),
    /// bfloat16 values (epilogue dtype `Bf16`).
    Bf16(GpuBuffer<bf16>),
}

impl DeviceOutput {
    /// The element type, as an epilogue names it.
    pub fn dtype(&self) -> OutputDType {
        match self {
            Self::F32(_) => OutputDType::F32,
            Self::F16(_) => OutputDType::F16,
            Self::Bf16(_) => OutputDType::Bf16,
        }
    }

    /// Elements.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(b) => b.len(),
            Self::F16(b) => b.len(),
            Self::Bf16(b) => b.len(),
        }
    }

    /// Whether the output holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        match self {
            Self::F32(b) => &b.buffer,
            Self::F16(b) => &b.buffer,
            Self::Bf16(b) => &b.buffer,
        }
    }

    pub(crate) fn device_id(&self) -> u64 {
        match self {
            Self::F32(b) => b.device_id,
            Self::F16(b) => b.device_id,
            Self::Bf16(b) => b.device_id,
        }
    }
}
