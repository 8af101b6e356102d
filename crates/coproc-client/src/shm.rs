//! Shared memory a domain gives to its vcoprocs: a memfd (sealable, so the
//! daemon can forbid shrinking it), mapped in this process too. A thin
//! wrapper over the core's [`Region`].

use crate::ClientError;
use coproc_core::memory::Region;
use rustix::fd::BorrowedFd;

/// Page size for shared memory lengths and offsets.
pub const PAGE: u64 = 4096;

/// A memfd mapped into this process.
#[derive(Debug)]
pub struct SharedMem(Region);

fn mem(e: coproc_core::memory::MemoryError) -> ClientError {
    ClientError::Memory(e.to_string())
}

impl SharedMem {
    /// `len` bytes (rounded up to pages), zeroed.
    pub fn new(len: u64) -> Result<SharedMem, ClientError> {
        Region::new_memfd(len.div_ceil(PAGE).max(1) * PAGE)
            .map(SharedMem)
            .map_err(mem)
    }

    /// Memory holding `data` (for firmware images).
    pub fn with_contents(data: &[u8]) -> Result<SharedMem, ClientError> {
        let m = SharedMem::new(data.len() as u64)?;
        m.write(0, data)?;
        Ok(m)
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The memfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0
            .fd()
            .unwrap_or_else(|| unreachable!("made by new_memfd"))
    }

    /// Copy bytes in.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.0.write(offset, data).map_err(mem)
    }

    /// Copy bytes out.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ClientError> {
        self.0.read(offset, buf).map_err(mem)
    }

    /// Read a vector.
    pub fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>, ClientError> {
        self.0.read_vec(offset, len as u64).map_err(mem)
    }
}
