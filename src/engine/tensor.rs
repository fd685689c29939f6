//! A GPU tensor: a shape and a view into a (usually pooled) buffer.
//!
//! Tensors are cheap to clone (they share the buffer). When the last clone of
//! a pooled buffer is dropped, the buffer goes back to the pool for the next
//! tensor of the same size. Layout is row-major; images are NHWC.

use std::sync::{Arc, Mutex, Weak};

use crate::engine::gpu::Pool;

/// Identities of tensors and buffers, unique in the process: the tape keys
/// gradients by tensor id, the bind-group cache by buffer id.
pub(crate) fn fresh_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

pub(crate) struct Storage {
    buffer: Option<wgpu::Buffer>,
    id: u64,
    bytes: u64,
    pool: Weak<Mutex<Pool>>,
}

impl Storage {
    pub(crate) fn new(buffer: wgpu::Buffer, id: u64, bytes: u64, pool: Weak<Mutex<Pool>>) -> Self {
        Storage {
            buffer: Some(buffer),
            id,
            bytes,
            pool,
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let (Some(buffer), Some(pool)) = (self.buffer.take(), self.pool.upgrade())
            && let Ok(mut pool) = pool.lock()
        {
            pool.give_back(self.bytes, self.id, buffer);
        }
    }
}

#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    /// Offset into the buffer, in f32 elements.
    offset: usize,
    shape: Vec<usize>,
    /// Identity for the autograd tape: clones share it, views do not.
    id: u64,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor#{}{:?}", self.id, self.shape)
    }
}

impl Tensor {
    pub(crate) fn from_storage(
        storage: Arc<Storage>,
        offset: usize,
        shape: Vec<usize>,
        id: u64,
    ) -> Self {
        Tensor {
            storage,
            offset,
            shape,
            id,
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The same data seen with another shape of the same size (flatten).
    /// Keeps the identity: for the tape it is the same value.
    pub fn reshape(&self, shape: &[usize]) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            self.len(),
            "reshape {:?} -> {shape:?} changes the element count",
            self.shape
        );
        Tensor {
            shape: shape.to_vec(),
            ..self.clone()
        }
    }

    /// A view of `len` elements starting `offset` elements into this tensor,
    /// with its own identity. `offset` must keep the binding aligned (a
    /// multiple of 64 elements keeps 256-byte alignment on every adapter).
    pub fn view(&self, offset: usize, shape: &[usize]) -> Tensor {
        let len: usize = shape.iter().product();
        assert!(offset + len <= self.len(), "view out of range");
        Tensor {
            storage: self.storage.clone(),
            offset: self.offset + offset,
            shape: shape.to_vec(),
            id: fresh_id(),
        }
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        self.storage.buffer.as_ref().expect("tensor buffer")
    }

    /// The id of the buffer this tensor lives in (as recordings name it).
    pub fn buffer_id(&self) -> u64 {
        self.storage.id
    }

    /// Where this tensor starts in its buffer, in bytes.
    pub fn buffer_offset(&self) -> u64 {
        self.byte_offset()
    }

    pub(crate) fn storage_id(&self) -> u64 {
        self.storage.id
    }

    pub(crate) fn storage_bytes(&self) -> u64 {
        self.storage.bytes
    }

    /// The whole buffer this tensor lives in as one flat tensor, for a
    /// kernel that reaches several views of it through one binding.
    pub(crate) fn whole_buffer(&self) -> Tensor {
        Tensor {
            storage: self.storage.clone(),
            offset: 0,
            shape: vec![(self.storage.bytes / 4) as usize],
            id: fresh_id(),
        }
    }

    pub(crate) fn byte_offset(&self) -> u64 {
        self.offset as u64 * 4
    }

    /// The tensor's bytes rounded up to 16 (whole vec4s).
    pub(crate) fn padded_bytes(&self) -> u64 {
        (self.len().max(1) as u64 * 4).div_ceil(16) * 16
    }

    /// Bytes bound for a dispatch: whole vec4s when the buffer has room
    /// (so kernels may read it as `array<vec4<f32>>`), else the exact size.
    pub(crate) fn binding_bytes(&self) -> u64 {
        let padded = self.padded_bytes();
        if self.byte_offset() + padded <= self.storage.bytes {
            padded
        } else {
            self.len().max(1) as u64 * 4
        }
    }
}
