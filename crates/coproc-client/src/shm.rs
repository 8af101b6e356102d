//! Shared memory a domain gives to its vcoprocs: a memfd (sealable, so the
//! daemon can forbid shrinking it), mapped in this process too. A thin
//! wrapper over the core's [`Region`].

use crate::ClientError;
use coproc_mem::memory::Region;
use rustix::fd::BorrowedFd;

/// Page size for shared memory lengths and offsets.
pub const PAGE: u64 = 4096;

/// A memfd mapped into this process.
#[derive(Debug)]
pub struct SharedMem(Region);

fn mem(e: coproc_mem::memory::MemoryError) -> ClientError {
    ClientError::Memory(e.to_string())
}

/// A memfd holding exactly `data`, sealed against writing, shrinking,
/// growing and further sealing: how a firmware image is handed to the
/// daemon (it reads it without the contents changing under it).
///
/// # Examples
///
/// ```
/// # use coproc_client::*;
/// # use std::time::Duration;
/// # fn main() -> Result<(), ClientError> {
/// let fd = sealed_image(b"\x7fELF...")?;
/// let mut f = std::fs::File::from(fd);
/// use std::io::Write;
/// assert!(f.write_all(b"changed").is_err()); // sealed against writing
/// # Ok(())
/// # }
/// ```
pub fn sealed_image(data: &[u8]) -> Result<rustix::fd::OwnedFd, ClientError> {
    use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
    let io = |e: rustix::io::Errno| ClientError::Memory(format!("firmware memfd: {e}"));
    let fd = memfd_create(
        "coproc-firmware",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(io)?;
    let mut done = 0;
    while done < data.len() {
        match rustix::io::write(&fd, &data[done..]) {
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(io(e)),
        }
    }
    fcntl_add_seals(
        &fd,
        SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    )
    .map_err(io)?;
    Ok(fd)
}

impl SharedMem {
    /// `len` bytes (rounded up to pages), zeroed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mem = SharedMem::new(8192)?;
    /// mem.write(4096, b"page two")?;
    /// assert_eq!(mem.read_vec(4096, 8)?, b"page two");
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(len: u64) -> Result<SharedMem, ClientError> {
        Region::new_memfd(len.div_ceil(PAGE).max(1) * PAGE)
            .map(SharedMem)
            .map_err(mem)
    }

    /// `len` bytes (rounded up to pages), zeroed, mapped in this process at
    /// exactly the address `addr` (page-aligned) and never over anything
    /// already mapped there (`MAP_FIXED_NOREPLACE`); fails with
    /// [`ClientError::AddressTaken`] when that range is not free. The
    /// building block of shared virtual addressing
    /// ([`crate::Client::alloc_shared_va`]).
    pub fn new_at(addr: u64, len: u64) -> Result<SharedMem, ClientError> {
        match Region::new_memfd_at(addr, len.div_ceil(PAGE).max(1) * PAGE) {
            Ok(r) => Ok(SharedMem(r)),
            Err(coproc_mem::memory::MemoryError::AddressTaken(a)) => {
                Err(ClientError::AddressTaken(a))
            }
            Err(e) => Err(mem(e)),
        }
    }

    /// The region behind it.
    pub(crate) fn region(&self) -> &Region {
        &self.0
    }

    /// The address of its first byte in this process.
    pub fn addr(&self) -> u64 {
        self.0.addr()
    }

    /// Memory holding `data`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mem = SharedMem::with_contents(b"hello")?;
    /// assert_eq!(mem.len(), 4096); // whole pages
    /// assert_eq!(mem.read_vec(0, 5)?, b"hello");
    /// # Ok(())
    /// # }
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mem = SharedMem::with_contents(&[1, 2, 3, 4])?;
    /// let mut buf = [0u8; 2];
    /// mem.read(2, &mut buf)?;
    /// assert_eq!(buf, [3, 4]);
    /// assert!(mem.read(4095, &mut buf).is_err()); // past the end
    /// # Ok(())
    /// # }
    /// ```
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ClientError> {
        self.0.read(offset, buf).map_err(mem)
    }

    /// Read a vector.
    pub fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>, ClientError> {
        self.0.read_vec(offset, len as u64).map_err(mem)
    }
}

/// Shared memory at the same address in this process and in a vcoproc's iova
/// space (shared virtual addressing): a pointer into it that the domain
/// stores in the memory is valid for the device too. Made by
/// [`crate::Client::alloc_shared_va`]. Dropping it unmaps it from this
/// process only; the vcoproc keeps its mapping until
/// [`crate::Client::unmap`] at [`SvaMem::iova`] or its destruction.
#[derive(Debug)]
pub struct SvaMem {
    mem: SharedMem,
    vcoproc: u32,
}

impl SvaMem {
    pub(crate) fn new(mem: SharedMem, vcoproc: u32) -> SvaMem {
        SvaMem { mem, vcoproc }
    }

    /// The device address of the first byte, equal to its address here.
    pub fn iova(&self) -> u64 {
        self.mem.addr()
    }

    /// The vcoproc it is mapped in.
    pub fn vcoproc(&self) -> u32 {
        self.vcoproc
    }

    /// The device address (and host address) of byte `offset`, as the
    /// 32-bit pointer firmware of a 32-bit device uses; `None` if `offset`
    /// is outside the memory or the address does not fit 32 bits.
    pub fn ptr32(&self, offset: u64) -> Option<u32> {
        (offset < self.mem.len())
            .then(|| self.iova().checked_add(offset))
            .flatten()
            .and_then(|a| u32::try_from(a).ok())
    }
}

impl std::ops::Deref for SvaMem {
    type Target = SharedMem;
    fn deref(&self) -> &SharedMem {
        &self.mem
    }
}
