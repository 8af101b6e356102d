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
///
/// Taking a mapping down is the kernel's work: unmapping pages the engine
/// touched means a TLB shootdown on every CPU the daemon's threads run on,
/// and on a virtual machine one whose vCPU the hypervisor has descheduled
/// answers late (0.1 to 2 ms measured on the development VM, in a domain's
/// `destroy`). So [`Window::take_down`] hands the mapping to a reclaimer
/// thread of the window's own, which clears the range and drops the
/// mapping (the daemon's own view of the memory goes with its last
/// reference); the range goes back to the allocator only once cleared, and
/// the runner goes on with the next slice meanwhile.
#[derive(Debug)]
pub(super) struct Window {
    /// Host address of [`PHYS_WINDOW`].
    pub(super) host: usize,
    /// Free physical ranges inside the window.
    alloc: PhysAlloc,
    reclaim: Reclaim,
}

/// Mappings handed to the reclaimer and not yet cleared beyond which
/// [`Window::take_down`] waits for it.
pub(super) const RECLAIM_BACKLOG: usize = 64;

/// What the reclaimer thread shares with the device.
#[derive(Debug, Default)]
struct Reclaimed {
    /// Ranges cleared and not yet back in the allocator.
    cleared: Vec<(u64, u64)>,
    /// Mappings handed over and not yet cleared.
    pending: usize,
    /// Staged memory handed over to be freed, not yet freed.
    freeing: usize,
    /// Staged memories freed, ever.
    freed: u64,
    /// Mappings handed over, ever.
    handed: u64,
    /// Of those, how many were cleared and dropped (or retired).
    released: u64,
}

/// The reclaimer's state, shared with the device and with those who wait
/// for a release ([`coproc_core::device::Reclaim`]).
#[derive(Debug, Default)]
pub(super) struct ReclaimState {
    state: std::sync::Mutex<Reclaimed>,
    changed: std::sync::Condvar,
}

impl ReclaimState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Reclaimed> {
        // Counts and a list: consistent whatever a panic interrupted.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wait until the memory handed over to be freed is; how many were
    /// freed, ever.
    #[cfg(test)]
    pub(super) fn wait_freed(&self) -> u64 {
        let mut g = self.lock();
        while g.freeing > 0 {
            g = self
                .changed
                .wait(g)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        g.freed
    }
}

impl coproc_core::device::Reclaim for ReclaimState {
    fn mark(&self) -> u64 {
        self.lock().handed
    }

    fn wait(&self, mark: u64, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut g = self.lock();
        while g.released < mark {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self
                .changed
                .wait_timeout(g, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// What the reclaimer thread is handed.
enum Job {
    /// A mapping to take out of the window ([`Window::take_down`]).
    TakeDown(PhysMap),
    /// Memory the runner is done with, to free ([`Window::free`]).
    Free(StagedSlot),
}

#[derive(Debug)]
struct Reclaim {
    /// None once shut down.
    tx: Option<std::sync::mpsc::Sender<Job>>,
    state: std::sync::Arc<ReclaimState>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Put reserved `PROT_NONE` address space back over `len` bytes at `host`.
///
/// # Safety
///
/// The range must lie inside a window reservation that outlives the call,
/// and nothing may reach it any more (see [`Window::clear`]).
unsafe fn clear_at(host: usize, len: u64) -> rustix::io::Result<()> {
    // SAFETY: the range lies inside the window reservation, which outlives
    // the call; MAP_FIXED replaces exactly it, and nothing uses it (the
    // caller's contract).
    unsafe {
        rustix::mm::mmap_anonymous(
            host as *mut _,
            len as usize,
            rustix::mm::ProtFlags::empty(),
            rustix::mm::MapFlags::PRIVATE
                | rustix::mm::MapFlags::FIXED
                | rustix::mm::MapFlags::NORESERVE,
        )
    }
    .map(|_| ())
}

/// The reclaimer thread: clear each mapping's range, report it cleared,
/// drop the mapping, count it released (and free the staged memory it is
/// handed); until the window shuts it down (the channel closes after the
/// last job handed over).
fn reclaimer(host: usize, rx: &std::sync::mpsc::Receiver<Job>, state: &ReclaimState) {
    // Mappings whose range could not be cleared: kept (their range is
    // never reused) until the window goes.
    let mut retired = Vec::new();
    for job in rx {
        let pm = match job {
            Job::TakeDown(pm) => pm,
            Job::Free(memory) => {
                drop(memory);
                let mut g = state.lock();
                g.freeing = g.freeing.saturating_sub(1);
                g.freed += 1;
                drop(g);
                state.changed.notify_all();
                continue;
            }
        };
        let at = host + (pm.phys - PHYS_WINDOW) as usize;
        // SAFETY: the window was reserved at `host` and is unmapped only
        // after this thread has ended (`Window`'s drop joins it first);
        // `Window::take_down`'s contract: nothing reaches the range.
        let r = unsafe { clear_at(at, pm.len) };
        let mut g = state.lock();
        g.pending = g.pending.saturating_sub(1);
        if r.is_ok() {
            g.cleared.push((pm.phys, pm.len));
        }
        drop(g);
        state.changed.notify_all();
        match r {
            Ok(()) => drop(pm),
            Err(e) => {
                tracing::error!(
                    ?e,
                    "mcu: taking a mapping out of the window failed; window range retired"
                );
                retired.push(pm);
            }
        }
        state.lock().released += 1;
        state.changed.notify_all();
    }
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
        let host = p as usize;
        let state = std::sync::Arc::new(ReclaimState::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("mcu-reclaim".into())
            .spawn(move || reclaimer(host, &rx, &st));
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                // SAFETY: the reservation made above, used by nothing yet.
                let _ = unsafe { rustix::mm::munmap(p, WINDOW_SIZE as usize) };
                return Err(DeviceError::Backend(format!(
                    "starting the mapping window's reclaimer: {e}"
                )));
            }
        };
        Ok(Window {
            host,
            alloc: PhysAlloc::new(PHYS_WINDOW, WINDOW_SIZE),
            reclaim: Reclaim {
                tx: Some(tx),
                state,
                thread: Some(thread),
            },
        })
    }

    /// A free range of `len` bytes. Ranges the reclaimer has cleared are
    /// taken back first; when none fits and some are still being
    /// cleared, it waits for them.
    pub(super) fn take(&mut self, len: u64) -> Option<u64> {
        let state = self.reclaim.state.clone();
        let mut g = state.lock();
        loop {
            for (phys, l) in g.cleared.drain(..) {
                self.alloc.release(phys, l);
            }
            if let Some(phys) = self.alloc.alloc(len) {
                return Some(phys);
            }
            let alive = self
                .reclaim
                .thread
                .as_ref()
                .is_some_and(|t| !t.is_finished());
            if g.pending == 0 || !alive {
                return None;
            }
            // Bounded, and rechecked: a reclaimer that died mid-way is
            // seen above rather than waited for.
            g = state
                .changed
                .wait_timeout(g, std::time::Duration::from_millis(10))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Where those who need a release done wait for it.
    pub(super) fn reclaim(&self) -> std::sync::Arc<ReclaimState> {
        self.reclaim.state.clone()
    }

    /// Wait while more than [`RECLAIM_BACKLOG`] mappings (and staged
    /// memories) are still to be cleared (freed), until half of them are:
    /// a domain unmapping (or having revoked, or loading firmware) faster
    /// than the kernel takes memory down pays for it in its own command's
    /// time, and what waits for the reclaimer stays
    /// bounded. Bounded besides: a reclaimer that died is not waited for.
    fn throttle(&self) {
        let state = &self.reclaim.state;
        let mut g = state.lock();
        if g.pending + g.freeing <= RECLAIM_BACKLOG {
            return;
        }
        while g.pending + g.freeing > RECLAIM_BACKLOG / 2
            && self
                .reclaim
                .thread
                .as_ref()
                .is_some_and(|t| !t.is_finished())
        {
            g = state
                .changed
                .wait_timeout(g, std::time::Duration::from_millis(10))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Free `memory` on the reclaimer thread (here, where that thread is
    /// gone): unmapping memory that was written means a TLB shootdown, as
    /// for [`Window::take_down`], which the runner need not wait for.
    pub(super) fn free(&self, memory: StagedSlot) {
        self.reclaim.state.lock().freeing += 1;
        let sent = self
            .reclaim
            .tx
            .as_ref()
            .map(|tx| tx.send(Job::Free(memory)));
        match sent {
            Some(Ok(())) => self.throttle(),
            Some(Err(std::sync::mpsc::SendError(job))) => {
                self.reclaim.state.lock().freeing -= 1;
                drop(job);
            }
            None => unreachable!("the window's reclaimer is shut down only on drop"),
        }
    }

    /// Give back a range taken with [`Window::take`] that holds no mapping
    /// (reserved `PROT_NONE`).
    pub(super) fn give_back(&mut self, phys: u64, len: u64) {
        self.alloc.release(phys, len);
    }

    /// Take `pm` out of the window: its range is cleared (reserved
    /// `PROT_NONE` again) and then free for [`Window::take`], the mapping
    /// dropped, both on the reclaimer thread. Where that thread is gone,
    /// here; a range that cannot be cleared comes back as `Err` (keep the
    /// mapping, never reuse the range).
    ///
    /// # Safety
    ///
    /// `pm` must have been placed in this window, and nothing may reach its
    /// range any more: the engine has no translation into it (its TLB was
    /// flushed after the mapping left the hook's table) and no trap will
    /// replace it (its alias was removed).
    pub(super) unsafe fn take_down(&mut self, pm: PhysMap) -> Result<(), PhysMap> {
        let mut g = self.reclaim.state.lock();
        g.pending += 1;
        g.handed += 1;
        drop(g);
        let pm = match self
            .reclaim
            .tx
            .as_ref()
            .map(|tx| tx.send(Job::TakeDown(pm)))
        {
            Some(Ok(())) => {
                self.throttle();
                return Ok(());
            }
            Some(Err(std::sync::mpsc::SendError(Job::TakeDown(pm)))) => pm,
            Some(Err(_)) => unreachable!("a job comes back as it was sent"),
            None => unreachable!("the window's reclaimer is shut down only on drop"),
        };
        let mut g = self.reclaim.state.lock();
        g.pending -= 1;
        g.handed -= 1;
        drop(g);
        // SAFETY: the caller's contract.
        match unsafe { self.clear(pm.phys, pm.len) } {
            Ok(()) => {
                self.alloc.release(pm.phys, pm.len);
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    ?e,
                    "mcu: taking a mapping out of the window failed; window range retired"
                );
                Err(pm)
            }
        }
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
        // owns until drop; nothing uses it (the caller's contract).
        unsafe { clear_at(self.host(phys) as usize, len) }
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // The reclaimer clears what was handed over and ends (the channel
        // closes), before the reservation goes.
        drop(self.reclaim.tx.take());
        if let Some(t) = self.reclaim.thread.take() {
            let _ = t.join();
        }
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

    /// Put `staged`'s pages from offset `off` on in place of the slot
    /// mapping's at `host + off`, in one step (`mremap` onto it): the
    /// slot's old pages there are freed, its host address, which the
    /// engine holds, stays valid; below `off` the slot keeps its own. The
    /// staged mapping must be exactly as long as the slot's and `off` a
    /// page boundary inside it. Returns what is left of the staged mapping
    /// (the part below `off`, if any) for the caller to free. On failure
    /// the slot is as it was.
    pub(super) fn replace(
        &self,
        host: usize,
        staged: StagedSlot,
        off: usize,
    ) -> Result<Option<StagedSlot>, DeviceError> {
        let (from, len) = staged.range();
        if !self.maps.contains(&(host, len)) {
            return Err(DeviceError::Backend(format!(
                "no slot of {len} bytes at {host:#x} to install into"
            )));
        }
        if off >= len || !off.is_multiple_of(rustix::param::page_size()) {
            return Err(DeviceError::Backend(format!(
                "no page boundary at {off:#x} in a slot of {len} bytes"
            )));
        }
        // SAFETY: `from+off..from+len` lies in the staged slot's own
        // anonymous mapping, page aligned (checked above) and not
        // referenced elsewhere (`staged` is owned here and gives that part
        // away once moved); `host+off..host+len` lies in exactly one of
        // this device's slot mappings (checked above), which the engine
        // reaches only through its address, on this thread and not while
        // this runs. MREMAP_FIXED replaces the destination's pages with
        // the source's in one step, at the same address.
        let r = unsafe {
            rustix::mm::mremap_fixed(
                (from + off) as *mut _,
                len - off,
                len - off,
                rustix::mm::MremapFlags::MAYMOVE,
                (host + off) as *mut _,
            )
        };
        match r {
            // Success: the pages are at `host + off` and that part of the
            // source range is gone, so `staged` must not unmap it. On
            // failure nothing moved: `staged` is dropped and unmaps its
            // own mapping.
            Ok(_) => Ok(staged.given_away_from(off)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use coproc_core::memory::Region;
    use std::sync::Arc;

    /// The protection of the mapping of this process at `addr`, as
    /// `/proc/self/maps` shows it (`rw-s`, `---p`), and its path.
    fn mapping_at(addr: usize) -> (String, String) {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for line in maps.lines() {
            let mut f = line.split_whitespace();
            let (a, b) = f.next().unwrap().split_once('-').unwrap();
            let (a, b) = (
                usize::from_str_radix(a, 16).unwrap(),
                usize::from_str_radix(b, 16).unwrap(),
            );
            if (a..b).contains(&addr) {
                let perms = f.next().unwrap().to_string();
                let path = f.nth(3).unwrap_or("").to_string();
                return (perms, path);
            }
        }
        panic!("nothing mapped at {addr:#x}");
    }

    /// A range taken down goes back to the allocator only once the
    /// reclaimer has put reserved address space over it: `take` of the
    /// whole window waits for that, and what it hands out is `PROT_NONE`
    /// again, not the domain's memory.
    #[test]
    fn a_range_taken_down_is_free_again_only_once_cleared() {
        let mut w = Window::reserve().unwrap();
        let all = w.take(WINDOW_SIZE).unwrap();
        assert_eq!(w.take(4096), None, "the window is all taken");
        let region = Arc::new(Region::new(2 * 4096).unwrap());
        region.write(4096, &0xC0DE_u32.to_le_bytes()).unwrap();
        let (fd, offset) = region.backing().unwrap();
        // SAFETY: the range was just taken and holds nothing; the region
        // outlives the mapping (the PhysMap below keeps it).
        unsafe { w.place(all, 2 * 4096, fd, offset) }.unwrap();
        let host = w.host(all) as usize;
        assert_eq!(mapping_at(host).0, "rw-s");
        // SAFETY: placed above; read inside the two pages just mapped.
        let word = unsafe { std::ptr::read_volatile(w.host(all + 4096).cast::<[u8; 4]>()) };
        assert_eq!(word, 0xC0DE_u32.to_le_bytes());
        let pm = PhysMap {
            len: WINDOW_SIZE,
            phys: all,
            prot: Prot::READ | Prot::WRITE,
            mapping: Mapping::pinned_rw(0, &region, 2 * 4096),
        };
        // SAFETY: no engine and no alias: nothing reaches the range.
        unsafe { w.take_down(pm) }.unwrap();
        // Those who need the release wait for it: then only the region
        // holds the memory.
        let reclaim = w.reclaim();
        let mark = coproc_core::device::Reclaim::mark(&*reclaim);
        assert_eq!(mark, 1);
        assert!(coproc_core::device::Reclaim::wait(
            &*reclaim,
            mark,
            std::time::Duration::from_secs(10)
        ));
        assert_eq!(Arc::strong_count(&region), 1);
        assert_eq!(w.take(WINDOW_SIZE), Some(all));
        assert_eq!(mapping_at(host), ("---p".to_string(), String::new()));
        assert_eq!(mapping_at(host + 4096).0, "---p");
        // The domain's memory is untouched.
        assert_eq!(region.read_vec(4096, 4).unwrap(), 0xC0DE_u32.to_le_bytes());
    }

    /// However fast mappings are taken down, no more than
    /// [`RECLAIM_BACKLOG`] wait for the reclaimer when `take_down`
    /// returns, and every one is released in the end.
    #[test]
    fn the_reclaimers_backlog_is_bounded() {
        let mut w = Window::reserve().unwrap();
        let region = Arc::new(Region::new(4096).unwrap());
        let (fd, offset) = region.backing().unwrap();
        for _ in 0..4 * RECLAIM_BACKLOG {
            let phys = w.take(4096).unwrap();
            // SAFETY: a range just taken, holding nothing; the region
            // outlives the mapping (the PhysMap keeps it).
            unsafe { w.place(phys, 4096, fd, offset) }.unwrap();
            let pm = PhysMap {
                len: 4096,
                phys,
                prot: Prot::READ | Prot::WRITE,
                mapping: Mapping::pinned_rw(0, &region, 4096),
            };
            // SAFETY: no engine and no alias: nothing reaches the range.
            unsafe { w.take_down(pm) }.unwrap();
            assert!(w.reclaim.state.lock().pending <= RECLAIM_BACKLOG);
        }
        let reclaim = w.reclaim();
        let mark = coproc_core::device::Reclaim::mark(&*reclaim);
        assert_eq!(mark, 4 * RECLAIM_BACKLOG as u64);
        assert!(coproc_core::device::Reclaim::wait(
            &*reclaim,
            mark,
            std::time::Duration::from_secs(10)
        ));
        assert_eq!(Arc::strong_count(&region), 1);
    }
}
