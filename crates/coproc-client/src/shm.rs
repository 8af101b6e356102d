//! Shared memory a domain gives to its vcoprocs: a memfd (sealable, so the
//! daemon can forbid shrinking it), mapped in this process too.

use crate::ClientError;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use std::ptr::NonNull;

/// Page size for shared memory lengths and offsets.
pub const PAGE: u64 = 4096;

/// A memfd mapped into this process.
#[derive(Debug)]
pub struct SharedMem {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: u64,
}

// SAFETY: plain shared memory; accessed only through copying methods.
unsafe impl Send for SharedMem {}

impl SharedMem {
    /// `len` bytes (rounded up to pages), zeroed.
    pub fn new(len: u64) -> Result<SharedMem, ClientError> {
        let len = len.div_ceil(PAGE).max(1) * PAGE;
        let mem = |e: rustix::io::Errno| ClientError::Memory(e.to_string());
        let fd =
            memfd_create("coproc", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).map_err(mem)?;
        ftruncate(&fd, len).map_err(mem)?;
        // SAFETY: a fresh shared mapping of the whole memfd just sized to
        // `len`; it is unmapped in Drop and never shrunk (the daemon seals
        // it against shrinking when it maps it).
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len as usize,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(mem)?;
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| ClientError::Memory("null mapping".into()))?;
        Ok(SharedMem { fd, ptr, len })
    }

    /// Memory holding `data` (for firmware images).
    pub fn with_contents(data: &[u8]) -> Result<SharedMem, ClientError> {
        let m = SharedMem::new(data.len() as u64)?;
        m.write(0, data)?;
        Ok(m)
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn check(&self, offset: u64, len: usize) -> Result<(), ClientError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(ClientError::Memory(format!(
                "{offset:#x}+{len:#x} outside {} bytes",
                self.len
            ))),
        }
    }

    /// Copy bytes in.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.check(offset, data.len())?;
        // SAFETY: range checked against the live mapping; distinct source.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.ptr.as_ptr().add(offset as usize),
                data.len(),
            )
        };
        Ok(())
    }

    /// Copy bytes out.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ClientError> {
        self.check(offset, buf.len())?;
        // SAFETY: range checked against the live mapping; distinct target.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset as usize),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        Ok(())
    }

    /// Read a vector.
    pub fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>, ClientError> {
        let mut v = vec![0; len];
        self.read(offset, &mut v)?;
        Ok(v)
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`; no references into it
        // escape this type.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len as usize) };
    }
}
