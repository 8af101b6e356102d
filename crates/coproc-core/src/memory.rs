//! Host memory that domains hand to the device.
//!
//! A [`Region`] is page-aligned memory the device can see zero-copy (the mcu
//! class maps its pages straight into the emulated core). The device and the
//! host may touch it concurrently, as with any shared memory: the host side
//! goes through [`Region::read`] and [`Region::write`], which copy bytes and
//! never form references to the shared pages.

use std::ptr::NonNull;
use thiserror::Error;

/// Page size used for regions and iova granularity.
pub const PAGE_SIZE: u64 = 4096;

/// Errors of this module.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// Zero or unaligned size.
    #[error("region size {0} is zero or not a multiple of {PAGE_SIZE}")]
    BadSize(u64),
    /// The kernel refused the allocation.
    #[error("cannot allocate {0} bytes: {1}")]
    Alloc(u64, rustix::io::Errno),
    /// Offset/length outside the region.
    #[error("range {offset:#x}+{len:#x} outside region of {size:#x} bytes")]
    OutOfRange {
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
        /// Region size.
        size: u64,
    },
}

/// Page-aligned shared memory owned by a domain.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    len: u64,
}

// SAFETY: the region is plain memory; all host access goes through raw
// copies (`read`/`write`) and the mapping lives until `drop`.
unsafe impl Send for Region {}
// SAFETY: as above; concurrent copies are the shared-memory contract.
unsafe impl Sync for Region {}

impl Region {
    /// Allocate `len` bytes (a multiple of [`PAGE_SIZE`]), zeroed.
    pub fn new(len: u64) -> Result<Region, MemoryError> {
        if len == 0 || len % PAGE_SIZE != 0 || len > isize::MAX as u64 {
            return Err(MemoryError::BadSize(len));
        }
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len as usize,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
            )
        }
        .map_err(|e| MemoryError::Alloc(len, e))?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(MemoryError::BadSize(len))?;
        Ok(Region { ptr, len })
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never true: regions are at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Base pointer, for devices that map the pages (valid while `self` lives).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), MemoryError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(MemoryError::OutOfRange {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    /// Copy bytes out of the region.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.check(offset, buf.len() as u64)?;
        // SAFETY: the range was checked to lie inside the live mapping; the
        // destination is a distinct Rust buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset as usize),
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
        Ok(())
    }

    /// Copy bytes into the region.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.check(offset, data.len() as u64)?;
        // SAFETY: the range was checked to lie inside the live mapping; the
        // source is a distinct Rust buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.ptr.as_ptr().add(offset as usize),
                data.len(),
            );
        }
        Ok(())
    }

    /// Read a vector of bytes.
    pub fn read_vec(&self, offset: u64, len: u64) -> Result<Vec<u8>, MemoryError> {
        self.check(offset, len)?;
        let mut v = vec![0; len as usize];
        self.read(offset, &mut v)?;
        Ok(v)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; devices hold an
        // `Arc<Region>` for as long as they map it, so nothing uses it now.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_and_bounds() {
        let r = Region::new(2 * PAGE_SIZE).unwrap();
        r.write(4090, b"hello world").unwrap();
        assert_eq!(r.read_vec(4090, 11).unwrap(), b"hello world");
        assert!(r.write(2 * PAGE_SIZE - 1, b"xy").is_err());
        assert!(r.read_vec(u64::MAX, 2).is_err());
        assert!(Region::new(100).is_err());
        assert!(Region::new(0).is_err());
    }
}
