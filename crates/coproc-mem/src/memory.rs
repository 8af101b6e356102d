//! Host memory that domains hand to the device.
//!
//! A [`Region`] is page-aligned memory the device can see zero-copy (the mcu
//! class maps its pages straight into the emulated core). The device and the
//! host may touch it concurrently, as with any shared memory: the host side
//! goes through [`Region::read`] and [`Region::write`], which copy bytes and
//! never form references to the shared pages.

use coproc_abi::Shared;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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
    /// The file descriptor cannot back the requested range.
    #[error("fd holds {size} bytes, {need} needed")]
    FdTooSmall {
        /// Its size.
        size: u64,
        /// Bytes needed.
        need: u64,
    },
    /// The file cannot be sealed against shrinking (not a memfd created
    /// with sealing allowed).
    #[error("memory must be a memfd created with sealing allowed")]
    NotSealable,
    /// The file descriptor is not a regular file or memfd.
    #[error("fd is not a regular file or memfd")]
    NotAFile,
    /// The memfd is sealed against writing: the device could not write it.
    #[error("memory is sealed against writing (F_SEAL_WRITE or F_SEAL_FUTURE_WRITE); the device needs it writable")]
    WriteSealed,
    /// A hugetlb memfd (its pages cannot be viewed at 4 KiB granularity).
    #[error("hugetlb memory is not supported; use a plain memfd")]
    Hugetlb,
    /// The kernel refused to map the file.
    #[error("cannot map {0} bytes of the fd: {1}")]
    Map(u64, rustix::io::Errno),
    /// A system call on the fd failed.
    #[error("fd: {0}")]
    Fd(rustix::io::Errno),
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
    /// Something is already mapped at the fixed address asked for (or the
    /// kernel would not place the memory exactly there).
    #[error("address {0:#x} is taken or not available for a fixed mapping")]
    AddressTaken(u64),
}

/// Page-aligned shared memory owned by a domain.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    len: u64,
    /// The file it maps, kept open so the memory outlives the domain's own
    /// mapping and descriptor (None for a [`Region::view`], which the
    /// region it was made from keeps alive).
    file: Option<OwnedFd>,
    /// Where in the file the region starts (for a view: in its parent's
    /// file, absolute).
    fd_offset: u64,
    /// Its pages were withdrawn by [`Region::trap`]. Set under `aliases`.
    trapped: AtomicBool,
    /// Other mappings of the same memory in this process (address, length)
    /// that [`Region::trap`] withdraws along with the region's own: see
    /// [`Region::add_alias`].
    aliases: Mutex<Vec<(usize, usize)>>,
    /// For a view: the region it was made from.
    parent: Option<Arc<Region>>,
}

// SAFETY: the region is plain memory; all host access goes through raw
// copies (`read`/`write`) and the mapping lives until `drop`.
unsafe impl Send for Region {}
// SAFETY: `&Region` reaches its memory only through raw copies (`read`,
// `write`) and the alias list behind its mutex; the mapping stays valid
// until `drop`, which needs the region owned. Concurrent copies from
// several threads are the shared-memory contract, never a reference.
unsafe impl Sync for Region {}

/// `len` as a host size. Region lengths are checked against `isize::MAX`
/// before anything is mapped, so this fails only for lengths refused
/// anyway.
fn host_len(len: u64) -> Result<usize, MemoryError> {
    usize::try_from(len).map_err(|_| MemoryError::BadSize(len))
}

impl Region {
    /// The region's length as a host size: it fit `isize` when the region
    /// was made, so this never panics.
    fn bytes(&self) -> usize {
        usize::try_from(self.len).expect("a region's length fits isize")
    }

    /// Allocate `len` bytes (a multiple of [`PAGE_SIZE`]), zeroed. The
    /// memory is a memfd of its own (like [`Region::new_memfd`]), so the
    /// framework can give the device a view of it that revoke can withdraw.
    pub fn new(len: u64) -> Result<Region, MemoryError> {
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) || len > isize::MAX as u64 {
            return Err(MemoryError::BadSize(len));
        }
        Region::new_memfd(len).map_err(|e| match e {
            MemoryError::Fd(errno) => MemoryError::Alloc(len, errno),
            e => e,
        })
    }

    /// Allocate `len` bytes (a multiple of [`PAGE_SIZE`]) as a fresh memfd
    /// that allows sealing, mapped here: the form a domain hands memory to
    /// the daemon in (see [`Region::fd`]).
    pub fn new_memfd(len: u64) -> Result<Region, MemoryError> {
        use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            return Err(MemoryError::BadSize(len));
        }
        let fd = memfd_create("coproc", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(MemoryError::Fd)?;
        ftruncate(&fd, len).map_err(MemoryError::Fd)?;
        Region::from_fd(fd, 0, len)
    }

    /// The file behind the region, if it maps one.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.file.as_ref().map(|f| f.as_fd())
    }

    /// Map `len` bytes of a domain's file (a memfd) from `offset`, shared:
    /// what the device writes, the domain sees. The fd must be a memfd that
    /// allows sealing, at least `offset + len` bytes long; `offset` and
    /// `len` must be page multiples. It is sealed against shrinking, so the
    /// domain can never truncate the memory under the mapping (which would
    /// turn accesses into SIGBUS). The region keeps the fd.
    pub fn from_fd(fd: OwnedFd, offset: u64, len: u64) -> Result<Region, MemoryError> {
        Region::map_fd(fd, offset, len, None)
    }

    /// Allocate `len` bytes (a multiple of [`PAGE_SIZE`]) as a fresh sealable
    /// memfd mapped here at exactly the address `addr` (page-aligned), never
    /// replacing anything mapped there (`MAP_FIXED_NOREPLACE`):
    /// [`MemoryError::AddressTaken`] when that range is not free. This is
    /// how shared virtual addressing gets memory whose host address is also
    /// a valid device address.
    pub fn new_memfd_at(addr: u64, len: u64) -> Result<Region, MemoryError> {
        use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            return Err(MemoryError::BadSize(len));
        }
        if addr == 0 || !addr.is_multiple_of(PAGE_SIZE) || addr.checked_add(len).is_none() {
            return Err(MemoryError::AddressTaken(addr));
        }
        let fd = memfd_create("coproc", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(MemoryError::Fd)?;
        ftruncate(&fd, len).map_err(MemoryError::Fd)?;
        Region::map_fd(fd, 0, len, Some(addr))
    }

    /// The address of the first byte in this process.
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    fn map_fd(fd: OwnedFd, offset: u64, len: u64, at: Option<u64>) -> Result<Region, MemoryError> {
        if len == 0
            || !len.is_multiple_of(PAGE_SIZE)
            || !offset.is_multiple_of(PAGE_SIZE)
            || len > isize::MAX as u64
        {
            return Err(MemoryError::BadSize(len));
        }
        let st = rustix::fs::fstat(fd.as_fd()).map_err(MemoryError::Fd)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(MemoryError::NotAFile);
        }
        use rustix::fs::{fcntl_add_seals, fcntl_get_seals, SealFlags};
        // Everything that can refuse the memory is checked before it is
        // sealed: a refused request leaves the domain's memfd as it was.
        let seals = fcntl_get_seals(&fd).map_err(|_| MemoryError::NotSealable)?;
        if seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE) {
            return Err(MemoryError::WriteSealed);
        }
        const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
        // `f_type`'s width differs between targets.
        #[allow(clippy::useless_conversion)]
        if rustix::fs::fstatfs(&fd).is_ok_and(|f| i64::from(f.f_type) == HUGETLBFS_MAGIC) {
            return Err(MemoryError::Hugetlb);
        }
        let need = offset.checked_add(len).ok_or(MemoryError::BadSize(len))?;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if size < need {
            return Err(MemoryError::FdTooSmall { size, need });
        }
        if !seals.contains(SealFlags::SHRINK) {
            fcntl_add_seals(&fd, SealFlags::SHRINK).map_err(|_| MemoryError::NotSealable)?;
        }
        // Size after sealing (it may have shrunk in between): from here it
        // can only grow.
        let size = rustix::fs::fstat(fd.as_fd())
            .map_err(MemoryError::Fd)?
            .st_size;
        let size = u64::try_from(size).unwrap_or(0);
        if size < need {
            return Err(MemoryError::FdTooSmall { size, need });
        }
        let (hint, flags) = match at {
            Some(a) => (
                a as *mut std::ffi::c_void,
                rustix::mm::MapFlags::SHARED | rustix::mm::MapFlags::FIXED_NOREPLACE,
            ),
            None => (std::ptr::null_mut(), rustix::mm::MapFlags::SHARED),
        };
        // SAFETY: a fresh shared mapping of a file range that exists (size
        // checked above, after sealing the file against shrinking, so the
        // range keeps existing while mapped). With a fixed address,
        // MAP_FIXED_NOREPLACE fails (EEXIST) rather than replace anything
        // mapped there, so no existing memory is affected either way.
        let ptr = unsafe {
            rustix::mm::mmap(
                hint,
                host_len(len)?,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                flags,
                fd.as_fd(),
                offset,
            )
        }
        .map_err(|e| match (at, e) {
            (Some(a), rustix::io::Errno::EXIST) => MemoryError::AddressTaken(a),
            _ => MemoryError::Map(len, e),
        })?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(MemoryError::BadSize(len))?;
        if let Some(a) = at.filter(|&a| a != ptr.as_ptr() as u64) {
            // A kernel older than 4.17 takes the flag as a mere hint.
            // SAFETY: exactly the mapping made just above, used by nothing.
            let _ = unsafe { rustix::mm::munmap(ptr.as_ptr().cast(), host_len(len)?) };
            return Err(MemoryError::AddressTaken(a));
        }
        Ok(Region {
            ptr,
            len,
            file: Some(fd),
            fd_offset: offset,
            trapped: AtomicBool::new(false),
            aliases: Mutex::new(Vec::new()),
            parent: None,
        })
    }

    /// A second mapping in this process of `len` bytes of the same memory
    /// from `offset` (page multiples): what the device is given for one
    /// mapping, so that [`Region::trap`] can later withdraw exactly that
    /// view, leaving the domain's memory and its other views untouched.
    /// The view keeps `self` alive (so the memory a mapping uses is held as
    /// long as the device may use it, even after its domain let go of it).
    pub fn view(self: &Arc<Self>, offset: u64, len: u64) -> Result<Region, MemoryError> {
        self.check(offset, len)?;
        let fd = self.file.as_ref().ok_or(MemoryError::NotAFile)?;
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) || !offset.is_multiple_of(PAGE_SIZE) {
            return Err(MemoryError::BadSize(len));
        }
        // SAFETY: a fresh shared mapping of a file range that exists: the
        // file backs this region's whole range (checked when it was mapped,
        // and sealed against shrinking since), and [offset, offset+len) lies
        // inside that range (checked above). No existing memory is affected.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                host_len(len)?,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                fd.as_fd(),
                self.fd_offset + offset,
            )
        }
        .map_err(|e| MemoryError::Alloc(len, e))?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(MemoryError::BadSize(len))?;
        Ok(Region {
            ptr,
            len,
            file: None,
            fd_offset: self.fd_offset + offset,
            trapped: AtomicBool::new(false),
            aliases: Mutex::new(Vec::new()),
            parent: Some(self.clone()),
        })
    }

    /// Withdraw this mapping's pages in one step: the address range is
    /// replaced, atomically for every thread of the process, by fresh
    /// private zero pages that belong to no one. Whatever still accesses
    /// the range through this region's address (an emulated core, a CPU
    /// driver's worker thread) reads zeros and writes into memory that is
    /// thrown away; the memory the region mapped is never reached through
    /// this address again. Never fails: should the kernel refuse the
    /// replacement (out of memory for page tables), it is retried until it
    /// succeeds: making the range inaccessible instead would crash an
    /// emulated core that touches it.
    ///
    /// Every alias registered with [`Region::add_alias`] is withdrawn the
    /// same way, under the same lock.
    pub fn trap(&self) {
        let aliases = self.lock_aliases();
        if self.trapped.swap(true, Ordering::AcqRel) {
            return;
        }
        // SAFETY: [ptr, ptr+len) is this region's own mapping (made by mmap
        // and alive until drop), and no Rust reference into it exists (all
        // access is by raw copies).
        unsafe { replace_with_zero_pages(self.ptr.as_ptr().cast(), self.bytes()) };
        for &(ptr, len) in aliases.iter() {
            // SAFETY: an alias is a mapping of this region's memory that its
            // owner registered with `add_alias` and keeps mapped until it
            // calls `remove_alias`, which waits for this lock: the range is
            // still that mapping here. No reference into it exists.
            unsafe { replace_with_zero_pages(ptr as *mut std::ffi::c_void, len) };
        }
    }

    /// Register `[ptr, ptr+len)` as another mapping of (part of) this
    /// region's memory, made by whoever calls this (the mcu device maps the
    /// memory a second time into the emulated core's window): from now on
    /// [`Region::trap`] replaces it too, with the same private zero pages
    /// (never `PROT_NONE`: an engine may still touch it until its owner
    /// takes it down). If the region is already trapped, the alias is
    /// trapped here at once.
    ///
    /// Ordering with the caller's teardown: `trap` and `remove_alias`
    /// serialise on one lock. Once `remove_alias` returned, no `trap` will
    /// touch the range again, so the owner may re-protect it (`PROT_NONE`)
    /// and reuse it for other memory without a late trap replacing that
    /// memory by zero pages. A trap that ran before `remove_alias` left the
    /// range readable and writable (zero pages), never inaccessible; the
    /// only `PROT_NONE` is the one the owner itself applies after
    /// `remove_alias`, at a moment it chooses (the mcu device: after it
    /// dropped the mapping from its TLB hook's table and flushed the
    /// engine's TLB, on the only thread that runs the engine), so an
    /// address the engine still has translated is never made inaccessible
    /// by this mechanism.
    ///
    /// # Safety
    ///
    /// `[ptr, ptr+len)` must be a page-aligned mapping of the caller's that
    /// nothing holds a Rust reference into, whose contents may be replaced
    /// at any time; the caller must keep it mapped, with nothing else
    /// mapped there, until [`Region::remove_alias`] for it returned (or the
    /// region is dropped).
    pub unsafe fn add_alias(&self, ptr: *mut u8, len: usize) {
        let mut aliases = self.lock_aliases();
        if self.trapped.load(Ordering::Acquire) {
            // SAFETY: the caller's own mapping of this region's memory,
            // which it keeps mapped until `remove_alias` (the contract
            // above); no reference into it exists.
            unsafe { replace_with_zero_pages(ptr.cast(), len) };
        }
        aliases.push((ptr as usize, len));
    }

    /// Stop [`Region::trap`] from touching an alias registered with
    /// [`Region::add_alias`] at `ptr`. Waits for a trap in progress; after
    /// it returns, the range is the caller's alone again (see
    /// [`Region::add_alias`] for why this order is safe).
    pub fn remove_alias(&self, ptr: *mut u8) {
        self.lock_aliases().retain(|&(p, _)| p != ptr as usize);
    }

    /// The file behind the region and the offset of its first byte in it:
    /// its own file, or for a [`Region::view`] its parent's file. None for a
    /// region without one.
    pub fn backing(&self) -> Option<(BorrowedFd<'_>, u64)> {
        match (&self.file, &self.parent) {
            (Some(fd), _) => Some((fd.as_fd(), self.fd_offset)),
            (None, Some(p)) => p.fd().map(|fd| (fd, self.fd_offset)),
            (None, None) => None,
        }
    }

    fn lock_aliases(&self) -> MutexGuard<'_, Vec<(usize, usize)>> {
        // A panic under the lock leaves the list itself consistent.
        self.aliases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether [`Region::trap`] withdrew this mapping's pages.
    pub fn is_trapped(&self) -> bool {
        self.trapped.load(Ordering::Acquire)
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
            _ => Err(self.out_of_range(offset, len)),
        }
    }

    fn out_of_range(&self, offset: u64, len: u64) -> MemoryError {
        MemoryError::OutOfRange {
            offset,
            len,
            size: self.len,
        }
    }

    /// The region as `coproc-abi` shared memory, borrowed from it: the one
    /// typed accessor (volatile copies, atomic indexes) every host access
    /// goes through.
    pub fn as_shared(&self) -> Shared<'_> {
        // SAFETY: `ptr..ptr + len` is the region's live mapping (`len` fit
        // `isize` when it was made), valid for reads and writes until the
        // region drops, which the view's borrow of `self` outlasts; host
        // code never forms references to it, only volatile copies and
        // atomics, so other processes and the device may use it meanwhile.
        unsafe { Shared::new(self.as_ptr(), self.bytes()) }
            .unwrap_or_else(|| unreachable!("a region's mapping is never at address 0"))
    }

    /// Copy bytes out of the region.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        // Bounds are checked by the view.
        self.as_shared()
            .read(offset, buf)
            .map_err(|_| self.out_of_range(offset, buf.len() as u64))
    }

    /// Copy bytes into the region.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.as_shared()
            .write(offset, data)
            .map_err(|_| self.out_of_range(offset, data.len() as u64))
    }

    /// Read a vector of bytes.
    pub fn read_vec(&self, offset: u64, len: u64) -> Result<Vec<u8>, MemoryError> {
        self.check(offset, len)?;
        let mut v = vec![0; host_len(len)?];
        self.read(offset, &mut v)?;
        Ok(v)
    }
}

/// Replace `[ptr, ptr+len)` by fresh private zero pages, readable and
/// writable, in one `MAP_FIXED` step. Never fails: should the kernel refuse
/// (out of memory for page tables), it is retried until it succeeds, since
/// making the range inaccessible instead would crash an emulated core that
/// touches it.
///
/// # Safety
///
/// The range must be a page-aligned mapping of this process that nothing
/// holds a Rust reference into, and that may have its contents replaced.
unsafe fn replace_with_zero_pages(ptr: *mut std::ffi::c_void, len: usize) {
    loop {
        // SAFETY: the caller guarantees the range is a mapping it may
        // replace; MAP_FIXED replaces exactly that range with anonymous
        // memory of the same size and protection, so every address stays
        // mapped and readable/writable. Nothing outside it is affected.
        let r = unsafe {
            rustix::mm::mmap_anonymous(
                ptr,
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::FIXED,
            )
        };
        match r {
            Ok(_) => return,
            Err(e) => {
                tracing::error!(error = %e, "memory: trapping a mapping failed; retrying");
                std::thread::yield_now();
            }
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; devices hold an
        // `Arc<Region>` for as long as they map it, so nothing uses it now.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.bytes()) };
    }
}

#[cfg(test)]
// Casts of values the test itself chose.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]
mod tests {
    use super::*;
    use rustix::fd::AsRawFd;

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

    #[test]
    fn from_fd_checks_and_shares() {
        use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
        let unsealable = memfd_create("t", MemfdFlags::CLOEXEC).unwrap();
        ftruncate(&unsealable, PAGE_SIZE).unwrap();
        assert!(matches!(
            Region::from_fd(unsealable, 0, PAGE_SIZE),
            Err(MemoryError::NotSealable)
        ));
        let fd = memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        ftruncate(&fd, 2 * PAGE_SIZE).unwrap();
        let dup = rustix::io::dup(&fd).unwrap();
        assert!(matches!(
            Region::from_fd(rustix::io::dup(&fd).unwrap(), PAGE_SIZE, 2 * PAGE_SIZE),
            Err(MemoryError::FdTooSmall {
                size: 8192,
                need: 12288
            })
        ));
        assert!(Region::from_fd(rustix::io::dup(&fd).unwrap(), 1, PAGE_SIZE).is_err());
        let r = Region::from_fd(dup, PAGE_SIZE, PAGE_SIZE).unwrap();
        r.write(0, b"shared").unwrap();
        let mut buf = [0u8; 6];
        rustix::io::pread(&fd, &mut buf, PAGE_SIZE).unwrap();
        assert_eq!(&buf, b"shared");
        // Not a file: a pipe is refused.
        let (rd, _wr) = rustix::pipe::pipe().unwrap();
        assert!(matches!(
            Region::from_fd(rd, 0, PAGE_SIZE),
            Err(MemoryError::NotAFile)
        ));
        // Sealed: the domain can no longer shrink it under the mapping.
        assert!(ftruncate(&fd, 0).is_err());
    }

    #[test]
    fn views_share_the_memory_until_trapped() {
        let r = Arc::new(Region::new(4 * PAGE_SIZE).unwrap());
        r.write(PAGE_SIZE, b"domain data").unwrap();
        let v = r.view(PAGE_SIZE, 2 * PAGE_SIZE).unwrap();
        assert_ne!(v.addr(), r.addr() + PAGE_SIZE, "a mapping of its own");
        assert_eq!(v.read_vec(0, 11).unwrap(), b"domain data");
        v.write(100, b"device").unwrap();
        assert_eq!(r.read_vec(PAGE_SIZE + 100, 6).unwrap(), b"device");
        assert!(r.view(PAGE_SIZE, 4 * PAGE_SIZE).is_err(), "past the end");
        assert!(r.view(1, PAGE_SIZE).is_err(), "unaligned");
        // Trapped: the same addresses now reach throwaway zero pages.
        let before = r.read_vec(0, 4 * PAGE_SIZE).unwrap();
        v.trap();
        assert!(v.is_trapped());
        assert_eq!(v.read_vec(0, 11).unwrap(), [0; 11]);
        v.write(0, b"too late").unwrap();
        assert_eq!(v.read_vec(0, 8).unwrap(), b"too late");
        assert_eq!(r.read_vec(0, 4 * PAGE_SIZE).unwrap(), before);
        // Another view of the same range is unaffected.
        let w = r.view(PAGE_SIZE, PAGE_SIZE).unwrap();
        assert_eq!(w.read_vec(0, 11).unwrap(), b"domain data");
        v.trap();
    }

    /// A second shared mapping of `len` bytes of a region's memory.
    fn alias_of(r: &Region, len: usize) -> *mut u8 {
        let (fd, off) = r.backing().unwrap();
        // SAFETY: a fresh shared mapping of a file range that exists (the
        // region maps it); no existing memory is affected.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                fd,
                off,
            )
        };
        p.unwrap().cast()
    }

    fn peek(p: *mut u8, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        // SAFETY: `p` is a live mapping of at least `n` bytes made by
        // `alias_of`, unmapped only at the end of the test.
        unsafe { std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), n) };
        v
    }

    fn poke(p: *mut u8, data: &[u8]) {
        // SAFETY: as in `peek`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
    }

    #[test]
    fn trap_reaches_aliases_but_not_removed_ones() {
        let len = 2 * PAGE_SIZE as usize;
        let r = Arc::new(Region::new(4 * PAGE_SIZE).unwrap());
        r.write(PAGE_SIZE, b"domain data").unwrap();
        let v = r.view(PAGE_SIZE, 2 * PAGE_SIZE).unwrap();
        let (fd, off) = v.backing().unwrap();
        assert_eq!(off, PAGE_SIZE, "absolute offset in the parent's file");
        assert_eq!(
            fd.as_raw_fd(),
            r.fd().unwrap().as_raw_fd(),
            "the parent's file"
        );
        let (kept, removed) = (alias_of(&v, len), alias_of(&v, len));
        assert_eq!(peek(kept, 11), b"domain data");
        // SAFETY: both are this test's own mappings of the view's memory,
        // unmapped only after the region is dropped; no references exist.
        unsafe {
            v.add_alias(kept, len);
            v.add_alias(removed, len);
        }
        v.remove_alias(removed);
        v.trap();
        // The alias now reaches throwaway zero pages, still writable.
        assert_eq!(peek(kept, 11), [0; 11]);
        poke(kept, b"too late");
        assert_eq!(peek(kept, 8), b"too late");
        assert_eq!(r.read_vec(PAGE_SIZE, 11).unwrap(), b"domain data");
        // The removed alias was left alone: still the domain's memory.
        assert_eq!(peek(removed, 11), b"domain data");
        poke(removed, b"DOMAIN");
        assert_eq!(r.read_vec(PAGE_SIZE, 6).unwrap(), b"DOMAIN");
        // An alias added after the trap is trapped at once.
        let late = alias_of(&v, len);
        assert_eq!(peek(late, 6), b"DOMAIN");
        // SAFETY: `late` is this test's own mapping of the view's memory,
        // unmapped only after the region is dropped; no references exist.
        unsafe { v.add_alias(late, len) };
        assert_eq!(peek(late, 6), [0; 6]);
        poke(late, b"lost");
        assert_eq!(r.read_vec(PAGE_SIZE, 6).unwrap(), b"DOMAIN");
        // Trapping again changes nothing.
        v.trap();
        assert_eq!(peek(kept, 8), b"too late");
        drop(v);
        for p in [kept, removed, late] {
            // SAFETY: exactly the mappings `alias_of` made; nothing uses
            // them any more.
            unsafe { rustix::mm::munmap(p.cast(), len) }.unwrap();
        }
    }

    #[test]
    fn memfd_at_a_fixed_address_never_replaces() {
        // Find a free range in the 32-bit device window by trying.
        let mut got = None;
        for i in 0..256u64 {
            let addr = 0x6000_0000 + i * 0x10_0000;
            if let Ok(r) = Region::new_memfd_at(addr, 2 * PAGE_SIZE) {
                got = Some(r);
                break;
            }
        }
        let r = got.expect("a free range in 0x6000_0000..0x7000_0000");
        let addr = r.addr();
        assert!((0x6000_0000..0x7000_0000).contains(&addr));
        assert_eq!(addr, r.as_ptr() as u64);
        r.write(8, b"here").unwrap();
        // Taken: refused, and the first mapping is untouched.
        assert!(matches!(
            Region::new_memfd_at(addr, PAGE_SIZE),
            Err(MemoryError::AddressTaken(a)) if a == addr
        ));
        assert!(matches!(
            Region::new_memfd_at(addr + PAGE_SIZE, 2 * PAGE_SIZE),
            Err(MemoryError::AddressTaken(_))
        ));
        assert_eq!(r.read_vec(8, 4).unwrap(), b"here");
        assert!(Region::new_memfd_at(addr + 1, PAGE_SIZE).is_err());
        assert!(Region::new_memfd_at(0, PAGE_SIZE).is_err());
        assert!(Region::new_memfd_at(u64::MAX - 0xfff, PAGE_SIZE).is_err());
    }
}
