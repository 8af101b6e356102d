//! Physical memory of the mcu device: the allocator of engine-physical
//! ranges, the window mappings are placed in, and the code/data slots of
//! contexts.

use super::staging::StagedSlot;
use super::{PHYS_WINDOW, WINDOW_SIZE};
use coproc_core::device::DeviceError;
use coproc_core::iova::Mapping;
use std::collections::BTreeMap;
use unicorn_engine::Prot;

/// Physical address allocator over one range (first fit, coalescing).
#[derive(Debug)]
pub(super) struct PhysAlloc {
    /// start → len of free ranges.
    pub(super) free: BTreeMap<u64, u64>,
}

impl PhysAlloc {
    pub(super) fn new(start: u64, len: u64) -> Self {
        let mut free = BTreeMap::new();
        free.insert(start, len);
        PhysAlloc { free }
    }

    pub(super) fn alloc(&mut self, len: u64) -> Option<u64> {
        let (&start, &flen) = self.free.iter().find(|(_, &l)| l >= len)?;
        self.free.remove(&start);
        if flen > len {
            self.free.insert(start + len, flen - len);
        }
        Some(start)
    }

    pub(super) fn release(&mut self, start: u64, len: u64) {
        let (mut s, mut l) = (start, len);
        if let Some((&ps, &pl)) = self.free.range(..s).next_back() {
            if ps + pl == s {
                self.free.remove(&ps);
                s = ps;
                l += pl;
            }
        }
        if let Some(&nl) = self.free.get(&(s + l)) {
            self.free.remove(&(s + l));
            l += nl;
        }
        self.free.insert(s, l);
    }
}

/// A mapping as the device placed it.
#[derive(Debug)]
pub(super) struct PhysMap {
    pub(super) len: u64,
    /// Where in the mapping window (physical) it lies.
    pub(super) phys: u64,
    pub(super) prot: Prot,
    /// The memory it maps: its window range is registered as an alias of
    /// `mapping.region` (so revoke traps it) until the mapping is taken
    /// down.
    pub(super) mapping: Mapping,
}

/// The mapping window: a host range reserved once (`PROT_NONE`, no memory
/// committed) and mapped once into the engine at [`PHYS_WINDOW`]. Making a
/// mapping places the domain's file over part of it (`MAP_FIXED`), taking
/// one down puts `PROT_NONE` reserved memory back; neither changes the
/// engine's memory topology (no flat-view rebuild, no engine-wide page
/// invalidation), which is what made every map and unmap cost all other
/// contexts time.
#[derive(Debug)]
pub(super) struct Window {
    /// Host address of [`PHYS_WINDOW`].
    pub(super) host: usize,
    /// Free physical ranges inside the window.
    pub(super) alloc: PhysAlloc,
}

impl Window {
    pub(super) fn reserve() -> Result<Window, DeviceError> {
        // SAFETY: a fresh anonymous mapping at an address of the kernel's
        // choosing: no existing memory is affected.
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                WINDOW_SIZE as usize,
                rustix::mm::ProtFlags::empty(),
                rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::NORESERVE,
            )
        }
        .map_err(|e| DeviceError::Backend(format!("reserving the mapping window: {e}")))?;
        Ok(Window {
            host: p as usize,
            alloc: PhysAlloc::new(PHYS_WINDOW, WINDOW_SIZE),
        })
    }

    /// Host address of a physical address inside the window.
    pub(super) fn host(&self, phys: u64) -> *mut u8 {
        debug_assert!((PHYS_WINDOW..PHYS_WINDOW + WINDOW_SIZE).contains(&phys));
        (self.host + (phys - PHYS_WINDOW) as usize) as *mut u8
    }

    /// Map `len` bytes of `fd` from `offset`, shared and read/write, over
    /// the window range at `phys`.
    ///
    /// # Safety
    ///
    /// `[phys, phys+len)` must be a range of the window that this device
    /// allocated and holds no mapping (reserved `PROT_NONE`), and
    /// `[offset, offset+len)` must exist in the file for as long as it
    /// stays mapped.
    pub(super) unsafe fn place(
        &self,
        phys: u64,
        len: u64,
        fd: rustix::fd::BorrowedFd<'_>,
        offset: u64,
    ) -> rustix::io::Result<()> {
        // SAFETY: the range lies inside the window reservation, which this
        // device owns until drop, and holds nothing (the caller's
        // contract), so MAP_FIXED replaces only reserved address space; the
        // file range exists while mapped (the caller's contract).
        unsafe {
            rustix::mm::mmap(
                self.host(phys).cast(),
                len as usize,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED | rustix::mm::MapFlags::FIXED,
                fd,
                offset,
            )
        }
        .map(|_| ())
    }

    /// Put reserved `PROT_NONE` address space back over `[phys, phys+len)`.
    ///
    /// # Safety
    ///
    /// The range must lie inside the window, and nothing may reach it any
    /// more: the engine has no translation into it (its TLB was flushed
    /// after the mapping left the hook's table) and no trap will replace
    /// it (its alias was removed).
    pub(super) unsafe fn clear(&self, phys: u64, len: u64) -> rustix::io::Result<()> {
        // SAFETY: the range lies inside the window reservation this device
        // owns; MAP_FIXED replaces exactly it, and nothing uses it (the
        // caller's contract).
        unsafe {
            rustix::mm::mmap_anonymous(
                self.host(phys).cast(),
                len as usize,
                rustix::mm::ProtFlags::empty(),
                rustix::mm::MapFlags::PRIVATE
                    | rustix::mm::MapFlags::FIXED
                    | rustix::mm::MapFlags::NORESERVE,
            )
        }
        .map(|_| ())
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: exactly the reservation made in `reserve` (with whatever
        // was placed over it). The engine that mapped it is gone: the
        // window is a field of `McuDevice` declared after `uc`, so it is
        // dropped after the engine, and `McuDevice::drop` removed every
        // alias registered on regions, so no trap will write into it.
        let _ = unsafe { rustix::mm::munmap(self.host as *mut _, WINDOW_SIZE as usize) };
    }
}

/// Code and data memory of one context (pooled for reuse): physical
/// addresses in the engine, and the host memory behind them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    pub(super) code: u64,
    pub(super) data: u64,
    /// Host address of the code memory; the data memory follows it.
    pub(super) host: usize,
}

/// The host memory of every slot: one anonymous private mapping each,
/// given to the engine with `mem_map_ptr`, so that zeroing a slot is
/// `madvise(MADV_DONTNEED)` (the kernel's zero pages, nothing committed
/// until the firmware touches it) rather than writing zeros over all of it.
/// Unmapped when the device goes, after the engine (field order of
/// `McuDevice`).
#[derive(Debug, Default)]
pub(super) struct SlotMemory {
    /// (host address, length) of each mapping.
    pub(super) maps: Vec<(usize, usize)>,
}

/// A fresh private read/write anonymous mapping of `len` bytes (pages
/// committed only when touched): its host address. `what` names it in
/// the error.
pub(super) fn map_anonymous(len: usize, what: &str) -> Result<usize, DeviceError> {
    // SAFETY: a fresh anonymous mapping at an address of the kernel's
    // choosing: no existing memory is affected.
    let p = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::NORESERVE,
        )
    }
    .map_err(|e| DeviceError::Exhausted(format!("host memory for {what}: {e}")))?;
    Ok(p as usize)
}

impl SlotMemory {
    /// Whether the slot memory at host address `host` holds `bytes`
    /// (false if the range is not inside one of the slot mappings).
    pub(super) fn holds(&self, host: usize, bytes: &[u8]) -> bool {
        let inside = self.maps.iter().any(|&(h, l)| {
            host >= h
                && host
                    .checked_add(bytes.len())
                    .is_some_and(|end| end <= h + l)
        });
        // SAFETY: the range lies inside one of this device's own anonymous
        // private read/write mappings (checked above), mapped until drop.
        // Only the runner thread, which is the engine's, touches slot
        // memory, and not while this reads: the engine is not running, and
        // nothing else writes code memory concurrently.
        inside && unsafe { std::slice::from_raw_parts(host as *const u8, bytes.len()) } == bytes
    }

    pub(super) fn map(&mut self, len: usize) -> Result<usize, DeviceError> {
        let p = map_anonymous(len, "context memory")?;
        self.maps.push((p, len));
        Ok(p)
    }

    /// Give `[host, host+len)` back to the kernel's zero pages.
    pub(super) fn zero(&self, host: usize, len: usize) -> Result<(), DeviceError> {
        debug_assert!(self
            .maps
            .iter()
            .any(|&(h, l)| host >= h && host + len <= h + l));
        // SAFETY: the range lies inside one of this device's own anonymous
        // private mappings (slots are carved from them only), which stay
        // mapped until drop; MADV_DONTNEED keeps the mapping and makes its
        // pages read as zero, so every host pointer the engine holds into
        // it stays valid.
        unsafe { rustix::mm::madvise(host as *mut _, len, rustix::mm::Advice::LinuxDontNeed) }
            .map_err(|e| DeviceError::Backend(format!("zeroing context memory: {e}")))
    }
}

impl SlotMemory {
    /// Put `staged`'s pages in place of the slot mapping at `host`, in one
    /// step (`mremap` onto it): the slot's old pages are freed, its host
    /// address, which the engine holds, stays valid. The staged mapping
    /// must be exactly as long as the slot's. On failure the slot is as it
    /// was.
    pub(super) fn replace(&self, host: usize, staged: StagedSlot) -> Result<(), DeviceError> {
        let (from, len) = staged.range();
        if !self.maps.contains(&(host, len)) {
            return Err(DeviceError::Backend(format!(
                "no slot of {len} bytes at {host:#x} to install into"
            )));
        }
        // SAFETY: `from..from+len` is the staged slot's own anonymous
        // mapping, page aligned and not referenced elsewhere (it is moved
        // out of `staged`, which is then forgotten); `host..host+len` is
        // exactly one of this device's slot mappings (checked above),
        // which the engine reaches only through its address, on this
        // thread and not while this runs. MREMAP_FIXED replaces the
        // destination's pages with the source's in one step, at the same
        // address.
        let r = unsafe {
            rustix::mm::mremap_fixed(
                from as *mut _,
                len,
                len,
                rustix::mm::MremapFlags::MAYMOVE,
                host as *mut _,
            )
        };
        match r {
            // With MREMAP_FIXED, success means the pages are at `host`;
            // the source range is unmapped either way and must not be
            // unmapped again.
            Ok(_) => {
                staged.given_away();
                Ok(())
            }
            Err(e) => Err(DeviceError::Backend(format!(
                "installing firmware memory: {e}"
            ))),
        }
    }
}

impl Drop for SlotMemory {
    fn drop(&mut self) {
        for &(host, len) in &self.maps {
            // SAFETY: a mapping `map` made; the engine that used it is gone
            // (`SlotMemory` is declared after `uc` in `McuDevice`, so it is
            // dropped after it), and nothing else points into it.
            let _ = unsafe { rustix::mm::munmap(host as *mut _, len) };
        }
    }
}
