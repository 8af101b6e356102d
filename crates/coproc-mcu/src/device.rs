//! The mcu device: one emulated Cortex-M4 core shared by many contexts.
//!
//! # How contexts are kept apart
//!
//! Unicorn runs in virtual-TLB mode: every address the firmware uses is a
//! virtual address of the *current* context, translated by our TLB-fill hook
//! to a physical address of the one engine. Each context owns distinct
//! physical pages (code, data, and one range per mapping); the control block
//! is an emulated MMIO page whose callbacks act on the current context. A
//! context switch saves and restores the CPU registers, makes the new context
//! current and flushes the TLB, so from the first instruction after the
//! switch only the new context's pages are reachable. Translated code is
//! tagged by physical address, so a switch keeps every context's
//! translations warm: that is what makes a full switch cost about a
//! microsecond instead of the tens of microseconds a remap would cost.
//!
//! An access the context's map does not allow is sent to a trap page whose
//! callback records the exact address and stops the core; a forbidden
//! instruction fetch is refused in the hook and stops the core at once.

// A 32-bit core: its registers and guest addresses are u32 by architecture, and the u64 values narrowed here are guest addresses and sizes the loader and the iova checks already bounded to its 32-bit map; host sizes (u64 to usize) cannot truncate on the 64-bit hosts coproc runs on.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use crate::abi::scs::{EXIT_SYSRESETREQ, IRQ_DOORBELL, SCS_BASE, SCS_SIZE};
use crate::abi::{
    ABI_VERSION, CB_BASE, CB_CONSOLE, CB_DOORBELL, CB_DOORBELL_ACK, CB_EXIT, CB_FAULT_ADDR,
    CB_FAULT_PC, CB_FAULT_REASON, CB_MAGIC, CB_MBOX_IN, CB_MBOX_OUT, CB_NOTIFY, CB_NOTIFY_TAG,
    CB_SIZE, CB_TIME_HI, CB_TIME_LO, CB_VCOPROC, CB_VERSION, CB_WAIT, CODE_BASE, CODE_SIZE,
    DATA_BASE, DATA_SIZE, IOVA_BASE, IOVA_SIZE, MAGIC, MBOX_WORDS,
};
use crate::elf::{self, Image};
use crate::scs::{Scs, ScsEffect, EXC_SVCALL};
use crate::timer::{thread_cpu, SliceTimer};
use coproc_core::control::ControlBlock;
use coproc_core::device::{
    Capabilities, ContextSpec, Device, DeviceError, FirmwareInfo, FirmwarePrep, PreemptHandle,
    Preemption, PreparedFirmware, RunOutcome, StopReason, SwitchOutcome,
};
use coproc_core::fault::{Access, DeviceFault, FaultReason};
use coproc_core::ids::ContextId;
use coproc_core::iova::Mapping;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use unicorn_engine::{
    uc_error, Arch, ArmCpuModel, MemType, Mode, Prot, RegisterARM, TlbEntry, TlbType, Unicorn,
};

/// Physical address of the control block MMIO page.
const PHYS_CB: u64 = 0x7000_0000;
/// Physical address of the trap MMIO page.
const PHYS_TRAP: u64 = 0x7000_1000;
/// Physical address of the System Control Space MMIO page.
const PHYS_SCS: u64 = 0x7000_2000;
/// QEMU's exception number for a v7-M exception return (EXC_RETURN loaded
/// into the pc in handler mode).
const EXCP_EXCEPTION_EXIT: u32 = 8;
/// Longest engine run of a vcoproc with the doorbell interrupt enabled: a
/// doorbell rung while it runs is taken within this much of its run time.
const DOORBELL_POLL: Duration = Duration::from_micros(200);
/// QEMU's exception number for SVC.
const EXCP_SWI: u32 = 2;
/// Words of the exception frame the device stacks: r0-r3, r12, lr, pc,
/// xPSR, then s0-s15, FPSCR and a reserved word (the FP context is always
/// stacked).
const FRAME_WORDS: u32 = 26;
/// Physical range from which context memory and device-local memory are
/// allocated.
const PHYS_POOL: (u64, u64) = (0x8000_0000, 0x1_0000_0000);
/// Physical base of the mapping window: one engine mapping, made once, of a
/// host range reserved once, inside which mappings are placed (see
/// [`Window`]). Above 4 GiB (the 32-bit Arm target has 40 physical address
/// bits): out of the way of the pool, and no 32-bit virtual address equals
/// it, so even the identity translation `drop_code` uses cannot reach it.
const PHYS_WINDOW: u64 = 0x1_0000_0000;
/// Size of the mapping window: as much as mappings could use when they
/// shared the pool.
const WINDOW_SIZE: u64 = 0x8000_0000;
/// `until` of `emu_start`; ignored, as exits are enabled with none set.
const UNTIL: u64 = 0;
/// Mapping granularity.
const PAGE: u64 = 4096;
/// Most device-local memory one context may allocate with
/// `Device::alloc_local` (on top of its code and data memory).
pub const LOCAL_ALLOC_MAX: u64 = 16 << 20;

/// Configuration of an mcu device.
#[derive(Debug, Clone)]
pub struct McuConfig {
    /// Most contexts (vcoprocs) at once.
    pub max_contexts: u32,
    /// Bytes of code memory of every vcoproc (default [`CODE_SIZE`], 1 MiB;
    /// whole 4 KiB pages up to [`elf::MAX_CODE_SIZE`]).
    pub code_size: u32,
    /// Bytes of data memory of every vcoproc (default [`DATA_SIZE`],
    /// 256 KiB; whole 4 KiB pages up to [`elf::MAX_DATA_SIZE`]).
    pub data_size: u32,
}

impl Default for McuConfig {
    fn default() -> Self {
        McuConfig {
            max_contexts: 1024,
            code_size: CODE_SIZE,
            data_size: DATA_SIZE,
        }
    }
}

/// Why an [`McuConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McuConfigError {
    /// No context allowed.
    #[error("max_contexts must be at least 1")]
    NoContexts,
    /// Code or data memory size out of range.
    #[error(transparent)]
    Memory(#[from] elf::ElfError),
}

impl McuConfig {
    /// The memory map every vcoproc of the device has.
    pub fn map(&self) -> elf::MemoryMap {
        elf::MemoryMap {
            code_size: self.code_size,
            data_size: self.data_size,
        }
    }

    /// Check the configuration: at least one context, code and data sizes
    /// whole pages within their limits.
    pub fn validate(&self) -> Result<(), McuConfigError> {
        if self.max_contexts == 0 {
            return Err(McuConfigError::NoContexts);
        }
        self.map().validate()?;
        Ok(())
    }
}

/// Physical address allocator over one range (first fit, coalescing).
#[derive(Debug)]
struct PhysAlloc {
    /// start → len of free ranges.
    free: BTreeMap<u64, u64>,
}

impl PhysAlloc {
    fn new(start: u64, len: u64) -> Self {
        let mut free = BTreeMap::new();
        free.insert(start, len);
        PhysAlloc { free }
    }

    fn alloc(&mut self, len: u64) -> Option<u64> {
        let (&start, &flen) = self.free.iter().find(|(_, &l)| l >= len)?;
        self.free.remove(&start);
        if flen > len {
            self.free.insert(start + len, flen - len);
        }
        Some(start)
    }

    fn release(&mut self, start: u64, len: u64) {
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
struct PhysMap {
    len: u64,
    /// Where in the mapping window (physical) it lies.
    phys: u64,
    prot: Prot,
    /// The memory it maps: its window range is registered as an alias of
    /// `mapping.region` (so revoke traps it) until the mapping is taken
    /// down.
    mapping: Mapping,
}

/// The mapping window: a host range reserved once (`PROT_NONE`, no memory
/// committed) and mapped once into the engine at [`PHYS_WINDOW`]. Making a
/// mapping places the domain's file over part of it (`MAP_FIXED`), taking
/// one down puts `PROT_NONE` reserved memory back; neither changes the
/// engine's memory topology (no flat-view rebuild, no engine-wide page
/// invalidation), which is what made every map and unmap cost all other
/// contexts time.
#[derive(Debug)]
struct Window {
    /// Host address of [`PHYS_WINDOW`].
    host: usize,
    /// Free physical ranges inside the window.
    alloc: PhysAlloc,
}

impl Window {
    fn reserve() -> Result<Window, DeviceError> {
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
    fn host(&self, phys: u64) -> *mut u8 {
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
    unsafe fn place(
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
    unsafe fn clear(&self, phys: u64, len: u64) -> rustix::io::Result<()> {
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
struct Slot {
    code: u64,
    data: u64,
    /// Host address of the code memory; the data memory follows it.
    host: usize,
}

/// The host memory of every slot: one anonymous private mapping each,
/// given to the engine with `mem_map_ptr`, so that zeroing a slot is
/// `madvise(MADV_DONTNEED)` (the kernel's zero pages, nothing committed
/// until the firmware touches it) rather than writing zeros over all of it.
/// Unmapped when the device goes, after the engine (field order of
/// `McuDevice`).
#[derive(Debug, Default)]
struct SlotMemory {
    /// (host address, length) of each mapping.
    maps: Vec<(usize, usize)>,
}

impl SlotMemory {
    fn map(&mut self, len: usize) -> Result<usize, DeviceError> {
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
        .map_err(|e| DeviceError::Exhausted(format!("host memory for context memory: {e}")))?;
        self.maps.push((p as usize, len));
        Ok(p as usize)
    }

    /// Give `[host, host+len)` back to the kernel's zero pages.
    fn zero(&self, host: usize, len: usize) -> Result<(), DeviceError> {
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

struct Ctx {
    control: Arc<ControlBlock>,
    slot: Slot,
    maps: BTreeMap<u64, PhysMap>,
    image: Option<Image>,
    regs: unicorn_engine::Context,
    /// Registers must be initialised from the image at the next switch-in.
    fresh: bool,
    run_ns: u64,
    time_hi: u32,
    /// (reason, addr, pc) of the last fault, for the FAULT_* registers.
    last_fault: (u32, u32, u32),
    /// Demand faults on: a missing page in the iova window stalls.
    demand: bool,
    /// Device-local memory: iova → (physical address, length), engine RAM
    /// only this context's translations reach.
    local: BTreeMap<u64, (u64, u64)>,
    /// The System Control Space (SCB, SysTick, NVIC): reset with the
    /// registers, saved with the context.
    scs: Scs,
}

/// A fault found by a hook during a run.
#[derive(Debug, Clone, Copy)]
struct PendingTrap {
    vpage: u64,
    access: Access,
    pc: u64,
}

#[derive(Debug)]
enum Stop {
    Waiting,
    Exited(u32),
    Fault(DeviceFault),
}

/// State the engine's hooks reach through `Unicorn::get_data_mut`.
struct State {
    contexts: HashMap<ContextId, Ctx>,
    current: Option<ContextId>,
    running: bool,
    /// Runner thread CPU time at the start of the current run.
    slice_cpu_start: Duration,
    stop: Option<Stop>,
    trap: Option<PendingTrap>,
    page_mask: u64,
    /// A data access the TLB hook refused because its page is missing and
    /// the context has demand faults on: (page address, access). The
    /// engine restores the faulting instruction and stops.
    page_fault: Option<(u64, Access)>,
    /// While set, the TLB hook maps every address to itself: how one slot's
    /// physical code range is named to the engine's cache invalidation,
    /// which takes addresses through the TLB (see `McuDevice::drop_code`).
    identity: bool,
    /// An SCS write may have made an exception deliverable: the core was
    /// stopped so the device takes it.
    recheck: bool,
    /// A hook asked the core to stop (a WAIT, an EXIT, a fault on the trap
    /// page, an exception made deliverable): it stops at the start of the
    /// next translation block, see [`McuDevice::new`].
    stop_soon: bool,
    /// An exception was pending but masked by PRIMASK when the run loop
    /// last looked: the block hook stops the core once PRIMASK is clear
    /// (`cpsie i` and `msr primask` end their block) so it is taken then.
    masked_pending: bool,
    /// The core stopped at a WFE.
    wfe: bool,
    /// Code and data memory sizes of every context.
    map: elf::MemoryMap,
}

impl State {
    fn current_ctx(&mut self) -> Option<&mut Ctx> {
        self.contexts.get_mut(&self.current?)
    }

    fn set_stop(&mut self, s: Stop) {
        let rank = |s: &Stop| match s {
            Stop::Waiting => 0,
            Stop::Exited(_) => 1,
            Stop::Fault(_) => 2,
        };
        if self.stop.as_ref().is_none_or(|old| rank(&s) > rank(old)) {
            self.stop = Some(s);
        }
    }

    /// Translate a virtual page of the current context.
    /// Whether `vaddr` is a missing page the current context may demand:
    /// demand faults on, inside the iova window, no mapping covers it.
    fn demandable(&self, vaddr: u64) -> bool {
        let Some(ctx) = self.current.and_then(|c| self.contexts.get(&c)) else {
            return false;
        };
        let window = u64::from(IOVA_BASE)..u64::from(IOVA_BASE) + u64::from(IOVA_SIZE);
        ctx.demand && window.contains(&vaddr) && self.translate(vaddr).is_none()
    }

    fn translate(&self, vaddr: u64) -> Option<(u64, Prot)> {
        let ctx = self.contexts.get(&self.current?)?;
        let off = |base: u32| vaddr - u64::from(base);
        let inside = |base: u32, size: u32| {
            vaddr >= u64::from(base) && vaddr < u64::from(base) + u64::from(size)
        };
        if inside(CODE_BASE, self.map.code_size) {
            return Some((ctx.slot.code + off(CODE_BASE), Prot::READ | Prot::EXEC));
        }
        if inside(DATA_BASE, self.map.data_size) {
            return Some((ctx.slot.data + off(DATA_BASE), Prot::READ | Prot::WRITE));
        }
        if inside(CB_BASE, CB_SIZE) {
            return Some((PHYS_CB + off(CB_BASE), Prot::READ | Prot::WRITE));
        }
        if inside(SCS_BASE, SCS_SIZE) {
            return Some((PHYS_SCS + off(SCS_BASE), Prot::READ | Prot::WRITE));
        }
        if let Some((&iova, m)) = ctx.maps.range(..=vaddr).next_back() {
            if vaddr < iova + m.len {
                return Some((m.phys + (vaddr - iova), m.prot));
            }
        }
        let (&iova, &(phys, len)) = ctx.local.range(..=vaddr).next_back()?;
        (vaddr < iova + len).then(|| (phys + (vaddr - iova), Prot::READ | Prot::WRITE))
    }
}

fn allows(prot: Prot, access: MemType) -> bool {
    let need = match access {
        MemType::READ => Prot::READ,
        MemType::WRITE => Prot::WRITE,
        MemType::FETCH => Prot::EXEC,
        _ => return false,
    };
    prot.0 & need.0 != 0
}

fn access_of(t: MemType) -> Access {
    match t {
        MemType::READ => Access::Read,
        MemType::WRITE => Access::Write,
        MemType::FETCH => Access::Fetch,
        _ => Access::None,
    }
}

fn uc_err(what: &str, e: uc_error) -> DeviceError {
    DeviceError::Backend(format!("unicorn {what}: {e:?}"))
}

fn exception_name(intno: u32) -> String {
    // QEMU's ARM exception numbers (target/arm/cpu.h).
    let name = match intno {
        2 => "svc",
        3 => "prefetch abort",
        4 => "data abort",
        5 => "irq",
        6 => "fiq",
        7 => "bkpt",
        17 => "nocp (coprocessor disabled)",
        19 => "stack overflow",
        20 => "lazy fp state preservation",
        21 => "lazy state error (v8-M)",
        22 => "unaligned access",
        _ => "exception",
    };
    format!("{name} ({intno})")
}

/// The mcu device.
pub struct McuDevice {
    /// The engine. Declared before `window` and `slots` so that it is
    /// dropped first.
    uc: Unicorn<'static, State>,
    /// Host memory of the slots. Dropped after `uc`.
    slots: SlotMemory,
    timer: SliceTimer,
    /// CPU registers of a freshly reset core.
    template: unicorn_engine::Context,
    /// Register buffer swapped in while saving a context.
    spare: unicorn_engine::Context,
    phys: PhysAlloc,
    /// Where mappings are placed. Dropped after `uc`.
    window: Window,
    pool: Vec<Slot>,
    /// Mappings that could not be taken down: kept alive (and trappable),
    /// their window range never reused.
    retired: Vec<PhysMap>,
    config: McuConfig,
}

impl std::fmt::Debug for McuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McuDevice")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl McuDevice {
    /// Create the core.
    pub fn new(config: McuConfig) -> Result<McuDevice, DeviceError> {
        config
            .validate()
            .map_err(|e| DeviceError::Backend(format!("mcu configuration: {e}")))?;
        let state = State {
            contexts: HashMap::new(),
            current: None,
            running: false,
            slice_cpu_start: Duration::ZERO,
            stop: None,
            trap: None,
            page_mask: 0,
            page_fault: None,
            identity: false,
            recheck: false,
            stop_soon: false,
            masked_pending: false,
            wfe: false,
            map: config.map(),
        };
        let mut uc = Unicorn::new_with_data(Arch::ARM, Mode::THUMB | Mode::MCLASS, state)
            .map_err(|e| uc_err("open", e))?;
        uc.ctl_set_cpu_model(ArmCpuModel::CORTEX_M4 as i32)
            .map_err(|e| uc_err("cpu model", e))?;
        uc.ctl_set_tlb_type(TlbType::VIRTUAL)
            .map_err(|e| uc_err("tlb mode", e))?;
        // Exit addresses on, with none set: emulation stops only on our
        // request, and Unicorn does not probe an `until` address after each
        // run (which would go through the TLB hook).
        uc.ctl_exits_enable().map_err(|e| uc_err("exits", e))?;
        uc.ctl_set_exits(&[]).map_err(|e| uc_err("exits", e))?;
        let page = u64::from(uc.ctl_get_page_size().map_err(|e| uc_err("page size", e))?);
        uc.get_data_mut().page_mask = !(page - 1);

        uc.add_tlb_hook(0, u64::MAX, |uc, vaddr, access| {
            let pc = uc.reg_read(RegisterARM::PC).unwrap_or(0);
            let st = uc.get_data_mut();
            if st.identity {
                return Some(TlbEntry {
                    paddr: vaddr,
                    perms: Prot::READ | Prot::EXEC,
                });
            }
            if let Some((paddr, prot)) = st.translate(vaddr) {
                if allows(prot, access) {
                    return Some(TlbEntry { paddr, perms: prot });
                }
            }
            if !st.running {
                return None;
            }
            let acc = access_of(access);
            if matches!(acc, Access::Read | Access::Write) && st.demandable(vaddr) {
                // Refused: the engine restores the state before the
                // faulting instruction and stops, so the next run retries it.
                st.page_fault.get_or_insert((vaddr, acc));
                return None;
            }
            if acc == Access::Fetch || acc == Access::None {
                // Refused: the engine stops with an exception at once.
                st.set_stop(Stop::Fault(DeviceFault {
                    addr: Some(vaddr.max(pc)),
                    access: acc,
                    pc: Some(pc),
                    reason: FaultReason::AccessViolation,
                }));
                return None;
            }
            // Data access: route it to the trap page, whose callback sees the
            // exact address.
            st.trap = Some(PendingTrap {
                vpage: vaddr,
                access: acc,
                pc,
            });
            Some(TlbEntry {
                paddr: PHYS_TRAP,
                perms: Prot::READ | Prot::WRITE,
            })
        })
        .map_err(|e| uc_err("tlb hook", e))?;

        uc.mmio_map(
            PHYS_CB,
            u64::from(CB_SIZE),
            Some(|uc: &mut Unicorn<'_, State>, off: u64, size: usize| {
                cb_read(uc.get_data_mut(), off, size)
            }),
            Some(
                |uc: &mut Unicorn<'_, State>, off: u64, size: usize, value: u64| {
                    let st = uc.get_data_mut();
                    if cb_write(st, off, size, value as u32) {
                        st.stop_soon = true;
                    }
                },
            ),
        )
        .map_err(|e| uc_err("map control block", e))?;

        uc.mmio_map(
            PHYS_TRAP,
            PAGE,
            Some(|uc: &mut Unicorn<'_, State>, off: u64, _size: usize| {
                trap_hit(uc.get_data_mut(), off);
                uc.get_data_mut().stop_soon = true;
                0
            }),
            Some(
                |uc: &mut Unicorn<'_, State>, off: u64, _size: usize, _value: u64| {
                    trap_hit(uc.get_data_mut(), off);
                    uc.get_data_mut().stop_soon = true;
                },
            ),
        )
        .map_err(|e| uc_err("map trap page", e))?;

        uc.mmio_map(
            PHYS_SCS,
            u64::from(SCS_SIZE),
            Some(|uc: &mut Unicorn<'_, State>, off: u64, size: usize| {
                scs_read(uc.get_data_mut(), off, size)
            }),
            Some(
                |uc: &mut Unicorn<'_, State>, off: u64, size: usize, value: u64| {
                    // Stops only when an exception is deliverable now.
                    let primask = reg(uc, RegisterARM::PRIMASK as i32) & 1 != 0;
                    let st = uc.get_data_mut();
                    if scs_write(st, off, size, value as u32, primask) {
                        st.stop_soon = true;
                    }
                },
            ),
        )
        .map_err(|e| uc_err("map system control space", e))?;

        // WFE and YIELD end the block as "invalid" (Unicorn stops on
        // EXCP_YIELD): a WFE parks like WFI, a YIELD is a no-op. Anything
        // else is a real undefined instruction.
        uc.add_insn_invalid_hook(|uc| {
            let pc = uc.reg_read(RegisterARM::PC).unwrap_or(0);
            let half = |uc: &Unicorn<'_, State>, a: u64| -> Option<u16> {
                let (p, prot) = uc.get_data().translate(a)?;
                if prot.0 & Prot::EXEC.0 == 0 {
                    return None;
                }
                let mut b = [0u8; 2];
                uc.mem_read(p, &mut b).ok()?;
                Some(u16::from_le_bytes(b))
            };
            let here = half(uc, pc);
            // UDF (T1 0xDExx, T2 0xF7Fx...): the pc stays on it.
            if here.is_some_and(|h| h >> 8 == 0xde || h & 0xfff0 == 0xf7f0) {
                return false;
            }
            let prev = half(uc, pc.wrapping_sub(2));
            let prev32 = half(uc, pc.wrapping_sub(4));
            let wfe = prev == Some(0xbf20) || (prev32 == Some(0xf3af) && prev == Some(0x8002));
            let yield_ = prev == Some(0xbf10) || (prev32 == Some(0xf3af) && prev == Some(0x8001));
            if wfe {
                uc.get_data_mut().wfe = true;
                let _ = uc.emu_stop();
                return true;
            }
            yield_
        })
        .map_err(|e| uc_err("invalid instruction hook", e))?;

        uc.add_intr_hook(|uc, intno| {
            let pc = uc.reg_read(RegisterARM::PC).unwrap_or(0);
            if intno == EXCP_EXCEPTION_EXIT {
                let r = exception_return(uc).and_then(|()| deliver(uc));
                if let Err(f) = r {
                    uc.get_data_mut().set_stop(Stop::Fault(f));
                    let _ = uc.emu_stop();
                }
                return;
            }
            if intno == EXCP_SWI {
                // SVC: SVCall, taken at once (the stacked pc is the
                // instruction after the SVC); masked, it is a fault.
                let taken = match uc.get_data_mut().current_ctx() {
                    Some(ctx) => {
                        ctx.scs.pend(EXC_SVCALL);
                        deliver(uc).map(|()| {
                            uc.get_data_mut()
                                .current_ctx()
                                .is_some_and(|c| c.scs.active().last() == Some(&EXC_SVCALL))
                        })
                    }
                    None => Ok(false),
                };
                match taken {
                    Ok(true) => return,
                    Ok(false) => {
                        if let Some(ctx) = uc.get_data_mut().current_ctx() {
                            ctx.scs.unpend(EXC_SVCALL);
                        }
                    }
                    Err(f) => {
                        uc.get_data_mut().set_stop(Stop::Fault(f));
                        let _ = uc.emu_stop();
                        return;
                    }
                }
            }
            uc.get_data_mut().set_stop(Stop::Fault(DeviceFault {
                addr: None,
                access: Access::None,
                pc: Some(pc),
                reason: FaultReason::Exception(exception_name(intno)),
            }));
            let _ = uc.emu_stop();
        })
        .map_err(|e| uc_err("interrupt hook", e))?;

        // Every stop lands at the start of a translation block. Unicorn also
        // honours a stop request after any load or store inside a block,
        // and the program counter it leaves there can be that of an
        // earlier instruction in the block (seen with a SysTick stop right
        // after an SVC return): the core then ran part of the block twice,
        // with registers already changed by the first run. So neither the
        // slice timer nor a hook calls `uc_emu_stop` while a block runs:
        // they raise a flag (`kick`, `stop_soon`) and this hook, which
        // Unicorn runs at each block start with the program counter synced
        // and before any of the block's instructions, makes the stop. A
        // hook's stop takes effect at the end of the block it was made in,
        // as a real core takes a pended interrupt a few instructions late.
        let kick = Arc::new(AtomicBool::new(false));
        let block_kick = kick.clone();
        uc.add_block_hook(1, 0, move |uc, _addr, _size| {
            let st = uc.get_data();
            if st.stop_soon || block_kick.load(Ordering::Acquire) {
                let _ = uc.emu_stop();
            } else if st.masked_pending && reg(uc, RegisterARM::PRIMASK as i32) & 1 == 0 {
                let st = uc.get_data_mut();
                st.masked_pending = false;
                st.recheck = true;
                let _ = uc.emu_stop();
            }
        })
        .map_err(|e| uc_err("block hook", e))?;

        let mut template = uc.context_alloc().map_err(|e| uc_err("context", e))?;
        uc.context_save(&mut template)
            .map_err(|e| uc_err("context save", e))?;
        let timer =
            SliceTimer::new(kick).map_err(|e| DeviceError::Backend(format!("slice timer: {e}")))?;
        let spare = uc.context_alloc().map_err(|e| uc_err("context", e))?;
        let window = Window::reserve()?;
        // SAFETY: the host range is the window reservation, which lives as
        // long as the engine: `window` is dropped after `uc` (field order of
        // `McuDevice`; on an error return here, `window` is declared after
        // `uc` and so dropped before it, but the failed call left no engine
        // mapping behind). Until something is placed over part of it, the
        // range is PROT_NONE, and the TLB hook only ever translates to
        // ranges a mapping was placed over.
        unsafe {
            uc.mem_map_ptr(
                PHYS_WINDOW,
                WINDOW_SIZE,
                Prot::READ | Prot::WRITE,
                window.host(PHYS_WINDOW).cast(),
            )
        }
        .map_err(|e| uc_err("map the mapping window", e))?;
        Ok(McuDevice {
            uc,
            timer,
            template,
            spare,
            phys: PhysAlloc::new(PHYS_POOL.0, PHYS_POOL.1 - PHYS_POOL.0),
            window,
            pool: Vec::new(),
            retired: Vec::new(),
            config,
            slots: SlotMemory::default(),
        })
    }

    fn ctx(&mut self, id: ContextId) -> Result<&mut Ctx, DeviceError> {
        self.uc
            .get_data_mut()
            .contexts
            .get_mut(&id)
            .ok_or(DeviceError::NoContext(id))
    }

    fn alloc_slot(&mut self) -> Result<Slot, DeviceError> {
        if let Some(slot) = self.pool.pop() {
            // Nothing of the previous owner survives.
            self.clear(slot)?;
            return Ok(slot);
        }
        let (code_len, data_len) = (
            u64::from(self.config.code_size),
            u64::from(self.config.data_size),
        );
        let code = self.phys.alloc(code_len + data_len).ok_or_else(|| {
            DeviceError::Exhausted("physical address space for context memory".into())
        })?;
        let host = match self.slots.map((code_len + data_len) as usize) {
            Ok(h) => h,
            Err(e) => {
                self.phys.release(code, code_len + data_len);
                return Err(e);
            }
        };
        let slot = Slot {
            code,
            data: code + code_len,
            host,
        };
        // SAFETY: `host` is a fresh mapping of code_len + data_len bytes
        // owned by `self.slots`, which lives longer than the engine (field
        // order of `McuDevice`) and is never unmapped before; nothing else
        // uses it. The physical range was just allocated, so it overlaps
        // no other engine memory.
        unsafe {
            self.uc
                .mem_map_ptr(slot.code, code_len + data_len, Prot::ALL, host as *mut _)
        }
        .map_err(|e| uc_err("map context memory", e))?;
        Ok(slot)
    }

    /// Zero a slot's code and data memory and drop translations of its code.
    fn clear(&mut self, slot: Slot) -> Result<(), DeviceError> {
        let len = (self.config.code_size + self.config.data_size) as usize;
        self.slots.zero(slot.host, len)?;
        self.drop_code(slot)
    }

    /// Drop the engine's translations of one slot's code, and only those:
    /// the engine does not notice writes to code memory by itself, and
    /// flushing its whole cache would make every other context retranslate
    /// its code (a cost one domain loading firmware in a loop would put on
    /// all the others). The invalidation takes a guest address through the
    /// TLB, so the hook maps addresses to themselves meanwhile and the
    /// slot's physical range is named directly. Should the engine refuse,
    /// the whole cache is flushed instead.
    fn drop_code(&mut self, slot: Slot) -> Result<(), DeviceError> {
        self.uc.get_data_mut().identity = true;
        let _ = self.uc.ctl_flush_tlb();
        let r = self
            .uc
            .ctl_remove_cache(slot.code, slot.code + u64::from(self.config.code_size));
        self.uc.get_data_mut().identity = false;
        let _ = self.uc.ctl_flush_tlb();
        match r {
            Ok(()) => Ok(()),
            Err(_) => self.uc.ctl_flush_tb().map_err(|e| uc_err("flush tb", e)),
        }
    }

    /// Write the image into the context's memory and mark its registers for
    /// initialisation.
    fn install(&mut self, id: ContextId, image: Image) -> Result<(), DeviceError> {
        let slot = self.ctx(id)?.slot;
        self.clear(slot)?;
        for s in &image.segments {
            let phys = if s.vaddr >= DATA_BASE {
                slot.data + u64::from(s.vaddr - DATA_BASE)
            } else {
                slot.code + u64::from(s.vaddr - CODE_BASE)
            };
            self.uc
                .mem_write(phys, &s.data)
                .map_err(|e| uc_err("load segment", e))?;
        }
        let ctx = self.ctx(id)?;
        ctx.image = Some(image);
        ctx.fresh = true;
        if self.uc.get_data().current == Some(id) {
            self.init_regs(id)?;
        }
        Ok(())
    }

    /// Reset a context to its loaded image without touching its code memory:
    /// firmware can never write code memory (it is read/execute only) and
    /// only `install` does, so the code is still the image's, and the
    /// engine's translations of it (and of every other context's code) stay
    /// valid. Data memory is zeroed and the image's data segments written
    /// again; registers start over. Keeping the translation cache is what
    /// keeps a domain that resets in a loop from costing every other domain
    /// a retranslation of its code.
    fn restart(&mut self, id: ContextId, image: &Image) -> Result<(), DeviceError> {
        let slot = self.ctx(id)?.slot;
        let code_size = self.config.code_size as usize;
        self.slots
            .zero(slot.host + code_size, self.config.data_size as usize)?;
        for s in image.segments.iter().filter(|s| s.vaddr >= DATA_BASE) {
            self.uc
                .mem_write(slot.data + u64::from(s.vaddr - DATA_BASE), &s.data)
                .map_err(|e| uc_err("load segment", e))?;
        }
        self.ctx(id)?.fresh = true;
        if self.uc.get_data().current == Some(id) {
            self.init_regs(id)?;
        }
        Ok(())
    }

    /// Registers of a freshly started context: reset core and System
    /// Control Space; SP and PC from the image's vector table if it has one
    /// (as a Cortex-M starts), else the top of data memory and the ELF
    /// entry point.
    fn init_regs(&mut self, id: ContextId) -> Result<(), DeviceError> {
        let map = self.config.map();
        let ctx = self.ctx(id)?;
        ctx.scs = Scs::default();
        let (sp, pc) = match &ctx.image {
            Some(image) => image.start(&map),
            None => (map.stack_top(), 1),
        };
        self.uc
            .context_restore(&self.template)
            .map_err(|e| uc_err("context restore", e))?;
        self.uc
            .reg_write(RegisterARM::SP, u64::from(sp))
            .map_err(|e| uc_err("write sp", e))?;
        self.uc
            .reg_write(RegisterARM::PC, u64::from(pc & !1))
            .map_err(|e| uc_err("write pc", e))?;
        self.ctx(id)?.fresh = false;
        Ok(())
    }

    fn save_current(&mut self) -> Result<(), DeviceError> {
        let Some(cur) = self.uc.get_data().current else {
            return Ok(());
        };
        // Swap the context's register buffer with the spare one so the
        // engine can write it without borrowing the hook state.
        match self.uc.get_data_mut().contexts.get_mut(&cur) {
            Some(c) => std::mem::swap(&mut c.regs, &mut self.spare),
            None => return Ok(()),
        }
        let r = self
            .uc
            .context_save(&mut self.spare)
            .map_err(|e| uc_err("context save", e));
        if let Some(c) = self.uc.get_data_mut().contexts.get_mut(&cur) {
            std::mem::swap(&mut c.regs, &mut self.spare);
        }
        r
    }

    fn do_switch(&mut self, to: Option<ContextId>) -> Result<(), DeviceError> {
        if let Some(t) = to {
            if !self.uc.get_data().contexts.contains_key(&t) {
                return Err(DeviceError::NoContext(t));
            }
        }
        self.save_current()?;
        self.uc.get_data_mut().current = to;
        match to {
            None => {
                self.uc
                    .context_restore(&self.template)
                    .map_err(|e| uc_err("context restore", e))?;
            }
            Some(t) if self.ctx(t)?.fresh => self.init_regs(t)?,
            Some(t) => {
                let data = self.uc.get_data();
                let regs = &data.contexts[&t].regs;
                // The engine reads the saved registers; no aliasing with the
                // state the hooks use.
                let r = self.uc.context_restore(regs);
                r.map_err(|e| uc_err("context restore", e))?;
            }
        }
        self.uc
            .ctl_flush_tlb()
            .map_err(|e| uc_err("flush tlb", e))?;
        Ok(())
    }

    /// Translate a context's virtual address (for tests and tools).
    pub fn debug_translate(&mut self, id: ContextId, vaddr: u32) -> Option<u64> {
        let st = self.uc.get_data_mut();
        let saved = st.current;
        st.current = Some(id);
        let r = st.translate(u64::from(vaddr)).map(|(p, _)| p);
        st.current = saved;
        r
    }
}

impl Drop for McuDevice {
    fn drop(&mut self) {
        self.timer.shutdown();
        // The window goes away with the device (after the engine, see
        // `Window`'s drop): no region may trap into it afterwards.
        let st = self.uc.get_data();
        let live = st.contexts.values().flat_map(|c| c.maps.values());
        for pm in live.chain(self.retired.iter()) {
            pm.mapping.region.remove_alias(self.window.host(pm.phys));
        }
    }
}

fn trap_hit(st: &mut State, off: u64) {
    if let Some(t) = st.trap.take() {
        let addr = t.vpage + (off & !st.page_mask);
        st.set_stop(Stop::Fault(DeviceFault {
            addr: Some(addr),
            access: t.access,
            pc: Some(t.pc),
            reason: FaultReason::AccessViolation,
        }));
    }
}

/// The current context's device time in ns (all its slices so far plus the
/// current one), and whether its doorbell line is up.
fn device_time(st: &State, ctx: &Ctx) -> u64 {
    let elapsed = thread_cpu().saturating_sub(st.slice_cpu_start).as_nanos() as u64;
    ctx.run_ns + if st.running { elapsed } else { 0 }
}

/// System Control Space reads (see [`Scs::read`]). After a fault or an exit
/// they read 0, like the control block.
fn scs_read(st: &mut State, off: u64, size: usize) -> u64 {
    let Some(cur) = st.current else { return 0 };
    if matches!(st.stop, Some(Stop::Fault(_) | Stop::Exited(_))) {
        return 0;
    }
    let Some(ctx) = st.contexts.get(&cur) else {
        return 0;
    };
    let now = device_time(st, ctx);
    let Some(ctx) = st.contexts.get_mut(&cur) else {
        return 0;
    };
    let doorbell = ctx.control.pending() > 0;
    let word = ctx
        .scs
        .read(SCS_BASE + off as u32, now, doorbell, ctx.last_fault);
    let shift = 8 * (off & 3);
    let mask = if size >= 4 {
        u64::from(u32::MAX)
    } else {
        (1u64 << (8 * size)) - 1
    };
    (u64::from(word) >> shift) & mask
}

/// System Control Space writes; returns whether the core must stop (an
/// exception may have become deliverable, or a reset was requested).
fn scs_write(st: &mut State, off: u64, size: usize, value: u32, primask: bool) -> bool {
    let Some(cur) = st.current else { return false };
    if matches!(st.stop, Some(Stop::Fault(_) | Stop::Exited(_))) {
        return true;
    }
    let Some(ctx) = st.contexts.get(&cur) else {
        return false;
    };
    let now = device_time(st, ctx);
    let Some(ctx) = st.contexts.get_mut(&cur) else {
        return false;
    };
    // Narrow writes keep their byte lane: the address is that of the byte.
    let addr = SCS_BASE + off as u32;
    match ctx.scs.write(addr, size, value, now) {
        ScsEffect::None => false,
        ScsEffect::Recheck => {
            let deliverable = ctx.scs.take(ctx.control.pending() > 0, primask).is_some();
            st.recheck |= deliverable;
            deliverable
        }
        ScsEffect::ResetRequest => {
            st.set_stop(Stop::Exited(EXIT_SYSRESETREQ));
            true
        }
    }
}

/// Whether the instruction before `pc` is a WFI (16- or 32-bit).
fn wfi_before(uc: &Unicorn<'_, State>, pc: u64) -> bool {
    let half = |a: u64| -> Option<u16> {
        let (p, prot) = uc.get_data().translate(a)?;
        if prot.0 & Prot::EXEC.0 == 0 {
            return None;
        }
        let mut b = [0u8; 2];
        uc.mem_read(p, &mut b).ok()?;
        Some(u16::from_le_bytes(b))
    };
    let prev = half(pc.wrapping_sub(2));
    prev == Some(0xbf30) || (prev == Some(0x8003) && half(pc.wrapping_sub(4)) == Some(0xf3af))
}

fn fault_at(addr: Option<u64>, access: Access, pc: u64, reason: FaultReason) -> DeviceFault {
    DeviceFault {
        addr,
        access,
        pc: Some(pc),
        reason,
    }
}

fn reg(uc: &Unicorn<'_, State>, r: i32) -> u32 {
    uc.reg_read(r).unwrap_or(0) as u32
}

/// Read or write the current context's code or data memory at virtual
/// `addr` as the firmware would, word by word, with its permissions: how
/// the device stacks and unstacks exception frames and reads vectors. Only
/// the context's own code and data memory qualify (not the control block,
/// the SCS, mappings or device-local memory): an exception frame or vector
/// table anywhere else faults the vcoproc.
fn vaccess(
    uc: &mut Unicorn<'_, State>,
    addr: u32,
    words: &mut [u32],
    write: bool,
    pc: u64,
) -> Result<(), DeviceFault> {
    for (i, w) in words.iter_mut().enumerate() {
        let a = u64::from(addr.wrapping_add(4 * i as u32));
        let need = if write { Prot::WRITE } else { Prot::READ };
        let st = uc.get_data();
        let own = u64::from(st.map.code_size)..u64::from(DATA_BASE);
        let local = a < u64::from(DATA_BASE) + u64::from(st.map.data_size) && !own.contains(&a);
        let (access, phys) = match st.translate(a) {
            Some((p, prot)) if local && prot.0 & need.0 != 0 => (None, p),
            _ => (Some(if write { Access::Write } else { Access::Read }), 0),
        };
        if let Some(access) = access {
            return Err(fault_at(Some(a), access, pc, FaultReason::AccessViolation));
        }
        let r = if write {
            uc.mem_write(phys, &w.to_le_bytes())
        } else {
            let mut b = [0u8; 4];
            let r = uc.mem_read(phys, &mut b);
            *w = u32::from_le_bytes(b);
            r
        };
        if let Err(e) = r {
            return Err(fault_at(
                Some(a),
                Access::None,
                pc,
                FaultReason::Device(format!("exception frame: {e:?}")),
            ));
        }
    }
    Ok(())
}

/// Take the highest-priority deliverable exception of the current context,
/// if any: stack the frame on the main stack, enter the handler from the
/// vector table in handler mode.
fn deliver(uc: &mut Unicorn<'_, State>) -> Result<(), DeviceFault> {
    let st = uc.get_data();
    let Some(ctx) = st.current.and_then(|c| st.contexts.get(&c)) else {
        return Ok(());
    };
    // Firmware that uses no interrupts pays one look-up.
    if ctx.scs.quiet(ctx.control.pending() > 0) {
        return Ok(());
    }
    let primask = reg(uc, RegisterARM::PRIMASK as i32) & 1 != 0;
    let st = uc.get_data_mut();
    let Some(cur) = st.current else { return Ok(()) };
    let Some(ctx) = st.contexts.get(&cur) else {
        return Ok(());
    };
    let now = device_time(st, ctx);
    let Some(ctx) = st.contexts.get_mut(&cur) else {
        return Ok(());
    };
    ctx.scs.tick(now);
    let doorbell = ctx.control.pending() > 0;
    let Some(exc) = ctx.scs.take(doorbell, primask) else {
        if primask && ctx.scs.take(doorbell, false).is_some() {
            st.masked_pending = true;
        }
        return Ok(());
    };
    let nested = !ctx.scs.active().is_empty();
    let vtor = ctx.scs.vtor();
    let pc = reg(uc, RegisterARM::PC as i32);
    let bad = |what: String| {
        fault_at(
            None,
            Access::None,
            u64::from(pc),
            FaultReason::Exception(what),
        )
    };
    if !nested && reg(uc, RegisterARM::CONTROL as i32) & 2 != 0 {
        return Err(bad(format!(
            "exception {exc} taken on the process stack (CONTROL.SPSEL = 1 is not modelled)"
        )));
    }
    let mut vector = [0u32];
    vaccess(
        uc,
        vtor.wrapping_add(4 * u32::from(exc)),
        &mut vector,
        false,
        u64::from(pc),
    )?;
    let handler = vector[0];
    let executable = uc
        .get_data()
        .translate(u64::from(handler & !1))
        .is_some_and(|(_, p)| p.0 & Prot::EXEC.0 != 0);
    if handler & 1 == 0 || !executable {
        return Err(bad(format!(
            "exception {exc}: vector {handler:#x} is not Thumb code in code memory"
        )));
    }
    let sp = reg(uc, RegisterARM::SP as i32);
    let xpsr = reg(uc, RegisterARM::XPSR as i32);
    let frame_sp = sp.wrapping_sub(4 * FRAME_WORDS) & !4;
    let mut frame = [0u32; FRAME_WORDS as usize];
    for (i, r) in [
        RegisterARM::R0 as i32,
        RegisterARM::R0 as i32 + 1,
        RegisterARM::R0 as i32 + 2,
        RegisterARM::R0 as i32 + 3,
        RegisterARM::R12 as i32,
        RegisterARM::LR as i32,
    ]
    .into_iter()
    .enumerate()
    {
        frame[i] = reg(uc, r);
    }
    frame[6] = pc;
    frame[7] = (xpsr & !(1 << 9)) | u32::from(sp & 4 != 0) << 9;
    for i in 0..16 {
        frame[8 + i] = reg(uc, RegisterARM::S0 as i32 + i as i32);
    }
    frame[24] = reg(uc, RegisterARM::FPSCR as i32);
    vaccess(uc, frame_sp, &mut frame, true, u64::from(pc))?;
    let set = |uc: &mut Unicorn<'_, State>, r: i32, v: u32| {
        uc.reg_write(r, u64::from(v))
            .map_err(|e| bad(format!("exception entry: {e:?}")))
    };
    set(uc, RegisterARM::SP as i32, frame_sp)?;
    set(
        uc,
        RegisterARM::LR as i32,
        if nested { 0xffff_ffe1 } else { 0xffff_ffe9 },
    )?;
    let new_xpsr = (xpsr & 0xf800_0000) | (1 << 24) | u32::from(exc);
    set(uc, RegisterARM::XPSR as i32, new_xpsr)?;
    // Rebuilds the engine's cached mode flags (handler mode).
    set(uc, RegisterARM::APSR_NZCV as i32, new_xpsr & 0xf000_0000)?;
    set(uc, RegisterARM::PC as i32, handler | 1)?;
    if let Some(ctx) = uc.get_data_mut().current_ctx() {
        ctx.scs.enter(exc);
    }
    Ok(())
}

/// Exception return: the firmware loaded an EXC_RETURN value into the pc
/// in handler mode. Unstack the frame and go back to the interrupted code.
fn exception_return(uc: &mut Unicorn<'_, State>) -> Result<(), DeviceFault> {
    let excret = reg(uc, RegisterARM::PC as i32) | 1;
    let sp = reg(uc, RegisterARM::SP as i32);
    let bad = |what: String| {
        fault_at(
            None,
            Access::None,
            u64::from(excret),
            FaultReason::Exception(what),
        )
    };
    let Some(ctx) = uc.get_data_mut().current_ctx() else {
        return Ok(());
    };
    let Some(_) = ctx.scs.exit() else {
        return Err(bad(format!(
            "exception return ({excret:#x}) outside a handler"
        )));
    };
    let outer = ctx.scs.active().last().copied();
    let to_thread = excret & 8 != 0;
    if excret >> 8 != 0x00ff_ffff || excret & 4 != 0 || to_thread != outer.is_none() {
        return Err(bad(format!(
            "EXC_RETURN {excret:#x} does not return to the interrupted main-stack context"
        )));
    }
    let extended = excret & 0x10 == 0;
    let n = if extended { FRAME_WORDS } else { 8 };
    let mut frame = [0u32; FRAME_WORDS as usize];
    vaccess(uc, sp, &mut frame[..n as usize], false, u64::from(excret))?;
    let set = |uc: &mut Unicorn<'_, State>, r: i32, v: u32| {
        uc.reg_write(r, u64::from(v))
            .map_err(|e| bad(format!("exception return: {e:?}")))
    };
    for (i, r) in [
        RegisterARM::R0 as i32,
        RegisterARM::R0 as i32 + 1,
        RegisterARM::R0 as i32 + 2,
        RegisterARM::R0 as i32 + 3,
        RegisterARM::R12 as i32,
        RegisterARM::LR as i32,
    ]
    .into_iter()
    .enumerate()
    {
        set(uc, r, frame[i])?;
    }
    if extended {
        for i in 0..16 {
            set(uc, RegisterARM::S0 as i32 + i as i32, frame[8 + i])?;
        }
        set(uc, RegisterARM::FPSCR as i32, frame[24])?;
    }
    let xpsr = frame[7];
    let new_sp = sp
        .wrapping_add(4 * n)
        .wrapping_add(if xpsr & (1 << 9) != 0 { 4 } else { 0 });
    set(uc, RegisterARM::SP as i32, new_sp)?;
    let new_xpsr = (xpsr & 0xf800_0000) | (1 << 24) | u32::from(outer.unwrap_or(0));
    set(uc, RegisterARM::XPSR as i32, new_xpsr)?;
    set(uc, RegisterARM::APSR_NZCV as i32, new_xpsr & 0xf000_0000)?;
    set(uc, RegisterARM::PC as i32, frame[6] | 1)?;
    Ok(())
}

/// Control block reads. Every register read is idempotent, since the core
/// may restart the instruction after a preemption (TIME_LO latches TIME_HI,
/// which a repeated read simply does again).
///
/// A stop requested by a callback takes effect at the latest at the end of
/// the current translation block, so a few more instructions may run. They
/// must not change what the stop means: after WAIT parks the core, DOORBELL
/// reads as DOORBELL_ACK (new doorbells stay pending for the runner to see);
/// after a fault or an exit, the control block ignores the context entirely.
fn cb_read(st: &mut State, off: u64, size: usize) -> u64 {
    let Some(cur) = st.current else { return 0 };
    let parked = matches!(st.stop, Some(Stop::Waiting));
    if matches!(st.stop, Some(Stop::Fault(_) | Stop::Exited(_))) {
        return 0;
    }
    // Only this vcoproc's CPU time in the slice so far, like `run_ns`,
    // so TIME never goes backwards.
    let elapsed = thread_cpu().saturating_sub(st.slice_cpu_start).as_nanos() as u64;
    let Some(ctx) = st.contexts.get_mut(&cur) else {
        return 0;
    };
    let c = &ctx.control;
    let word: u32 = match (off & !3) as u32 {
        CB_MAGIC => MAGIC,
        CB_VERSION => ABI_VERSION,
        CB_VCOPROC => cur.0,
        CB_DOORBELL if parked => c.doorbell_acked(),
        CB_DOORBELL => c.doorbell_count(),
        CB_DOORBELL_ACK => c.doorbell_acked(),
        CB_NOTIFY_TAG => c.notify_tag(),
        CB_TIME_LO => {
            let t = ctx.run_ns + elapsed;
            ctx.time_hi = (t >> 32) as u32;
            t as u32
        }
        CB_TIME_HI => ctx.time_hi,
        CB_FAULT_REASON => ctx.last_fault.0,
        CB_FAULT_ADDR => ctx.last_fault.1,
        CB_FAULT_PC => ctx.last_fault.2,
        o if (CB_MBOX_IN..CB_MBOX_IN + 4 * MBOX_WORDS).contains(&o) => {
            c.read_in(((o - CB_MBOX_IN) / 4) as usize)
        }
        o if (CB_MBOX_OUT..CB_MBOX_OUT + 4 * MBOX_WORDS).contains(&o) => {
            c.read_out(((o - CB_MBOX_OUT) / 4) as usize)
        }
        _ => 0,
    };
    let shift = 8 * (off & 3);
    let mask = if size >= 4 {
        u64::from(u32::MAX)
    } else {
        (1u64 << (8 * size)) - 1
    };
    (u64::from(word) >> shift) & mask
}

/// Control block writes, each idempotent. Only aligned 32-bit stores reach a
/// register; narrower ones are ignored. Returns whether the core must stop.
fn cb_write(st: &mut State, off: u64, size: usize, value: u32) -> bool {
    let Some(cur) = st.current else { return false };
    if size != 4 || !off.is_multiple_of(4) {
        return false;
    }
    if matches!(st.stop, Some(Stop::Fault(_) | Stop::Exited(_))) {
        return true;
    }
    let parked = matches!(st.stop, Some(Stop::Waiting));
    let Some(ctx) = st.contexts.get_mut(&cur) else {
        return false;
    };
    let c = &ctx.control;
    match off as u32 {
        CB_WAIT if c.pending() == 0 => {
            st.set_stop(Stop::Waiting);
            true
        }
        CB_DOORBELL_ACK if !parked => {
            c.ack_doorbells(value);
            false
        }
        CB_NOTIFY_TAG => {
            c.set_notify_tag(value);
            false
        }
        CB_NOTIFY => {
            c.notify(value);
            false
        }
        CB_EXIT => {
            st.set_stop(Stop::Exited(value));
            true
        }
        CB_CONSOLE => {
            c.console_byte((value >> 8) as u8, value as u8);
            false
        }
        o if (CB_MBOX_OUT..CB_MBOX_OUT + 4 * MBOX_WORDS).contains(&o) => {
            c.write_out(((o - CB_MBOX_OUT) / 4) as usize, value);
            false
        }
        // Writes to read-only or reserved registers are ignored, as on
        // hardware.
        _ => false,
    }
}

impl Device for McuDevice {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            class: "mcu",
            model: "Cortex-M4 (Unicorn 2)".into(),
            preemption: Preemption::Instruction,
            local_memory: u64::from(self.config.code_size)
                + u64::from(self.config.data_size)
                + LOCAL_ALLOC_MAX,
            address_bits: 32,
            iova_base: u64::from(IOVA_BASE),
            iova_size: u64::from(IOVA_SIZE),
            page_size: PAGE,
            demand_faults: true,
            max_contexts: self.config.max_contexts,
            memory_bytes: 0,
            limits: std::collections::BTreeMap::default(),
            features: Vec::new(),
        }
    }

    fn create_context(&mut self, spec: ContextSpec) -> Result<(), DeviceError> {
        let n = self.uc.get_data().contexts.len();
        if self.uc.get_data().contexts.contains_key(&spec.id) {
            return Err(DeviceError::ContextExists(spec.id));
        }
        if n >= self.config.max_contexts as usize {
            return Err(DeviceError::Exhausted(format!(
                "{n} contexts (the most this device holds)"
            )));
        }
        let slot = self.alloc_slot()?;
        let regs = self.uc.context_alloc().map_err(|e| uc_err("context", e))?;
        self.uc.get_data_mut().contexts.insert(
            spec.id,
            Ctx {
                control: spec.control,
                slot,
                maps: BTreeMap::new(),
                image: None,
                regs,
                fresh: true,
                run_ns: 0,
                time_hi: 0,
                last_fault: (0, 0, 0),
                demand: false,
                local: BTreeMap::new(),
                scs: Scs::default(),
            },
        );
        Ok(())
    }

    fn destroy_context(&mut self, id: ContextId) {
        if self.uc.get_data().current == Some(id) {
            let _ = self.do_switch(None);
        }
        let iovas: Vec<u64> = match self.uc.get_data().contexts.get(&id) {
            Some(c) => c.maps.keys().copied().collect(),
            None => return,
        };
        for iova in iovas {
            self.unmap(id, iova);
        }
        let locals: Vec<u64> = self.uc.get_data().contexts[&id]
            .local
            .keys()
            .copied()
            .collect();
        for iova in locals {
            self.free_local(id, iova);
        }
        if let Some(ctx) = self.uc.get_data_mut().contexts.remove(&id) {
            self.pool.push(ctx.slot);
        }
    }

    fn load_firmware(&mut self, id: ContextId, image: &[u8]) -> Result<FirmwareInfo, DeviceError> {
        self.ctx(id)?;
        let prepared = elf::ElfPrepFor(self.config.map()).prepare(image)?;
        self.install_firmware(id, prepared)
    }

    fn firmware_prep(&self) -> Arc<dyn FirmwarePrep> {
        Arc::new(elf::ElfPrepFor(self.config.map()))
    }

    /// Copies the segments of an image [`elf::ElfPrepFor`] validated and marks
    /// the registers for a fresh start: nothing is parsed or checked here.
    fn install_firmware(
        &mut self,
        id: ContextId,
        fw: PreparedFirmware,
    ) -> Result<FirmwareInfo, DeviceError> {
        self.ctx(id)?;
        let image = *fw
            .downcast::<Image>()
            .map_err(|_| DeviceError::BadFirmware("prepared for another device class".into()))?;
        // Prepared for another memory map (another pcoproc's prep): the
        // segments and the start must still fit this device's.
        if !image.fits(&self.config.map()) {
            return Err(DeviceError::BadFirmware(
                "prepared for a larger memory map than this pcoproc's".into(),
            ));
        }
        let info = FirmwareInfo {
            entry: u64::from(image.entry),
            code_bytes: image.code_bytes(),
            data_bytes: image.data_bytes(),
        };
        self.install(id, image)?;
        // A new image starts with no fault history.
        self.ctx(id)?.last_fault = (0, 0, 0);
        Ok(info)
    }

    fn map(&mut self, id: ContextId, m: &Mapping) -> Result<(), DeviceError> {
        if m.perms.exec {
            return Err(DeviceError::BadMapping(
                "the mcu class executes only from code memory: mappings cannot be executable"
                    .into(),
            ));
        }
        if !m.iova.is_multiple_of(PAGE)
            || !m.len.is_multiple_of(PAGE)
            || !m.offset.is_multiple_of(PAGE)
            || m.len == 0
        {
            return Err(DeviceError::BadMapping("not page aligned".into()));
        }
        let end = m.offset.checked_add(m.len).filter(|&e| e <= m.region.len());
        if end.is_none() {
            return Err(DeviceError::BadMapping("past the end of the memory".into()));
        }
        if m.iova < u64::from(IOVA_BASE)
            || m.iova + m.len > u64::from(IOVA_BASE) + u64::from(IOVA_SIZE)
        {
            return Err(DeviceError::BadMapping("outside the iova window".into()));
        }
        self.ctx(id)?;
        let (fd, file_offset) = m.region.backing().ok_or_else(|| {
            DeviceError::BadMapping("only memory backed by a file can be mapped".into())
        })?;
        let phys = self
            .window
            .alloc
            .alloc(m.len)
            .ok_or_else(|| DeviceError::Exhausted("mapping window".into()))?;
        let mut prot = Prot::NONE;
        if m.perms.read {
            prot |= Prot::READ;
        }
        if m.perms.write {
            prot |= Prot::WRITE;
        }
        // SAFETY: `phys` was just allocated from the window, so its range
        // holds nothing; the file range [offset, offset+len) of the region
        // lies inside the region (checked above), whose file is sealed
        // against shrinking, so it exists as long as it is mapped.
        let r = unsafe { self.window.place(phys, m.len, fd, file_offset + m.offset) };
        if let Err(e) = r {
            // A failed MAP_FIXED may already have unmapped the reservation
            // there: put it back before the range can be handed out again.
            // SAFETY: the range lies in the window, was never in the hook's
            // table (so never translated) and has no alias.
            match unsafe { self.window.clear(phys, m.len) } {
                Ok(()) => self.window.alloc.release(phys, m.len),
                Err(e) => tracing::error!(
                    ?e,
                    "mcu: restoring the window after a failed map failed; range retired"
                ),
            }
            return Err(DeviceError::Backend(format!("mcu: map: {e}")));
        }
        let host = self.window.host(phys);
        // SAFETY: [host, host+len) is this device's own mapping of the
        // region's memory, made just above, which nothing holds references
        // into (the engine accesses it by address). It stays mapped, with
        // nothing else placed there, until `unmap` (or drop) removes the
        // alias: the range goes back to the allocator only after that.
        unsafe { m.region.add_alias(host, m.len as usize) };
        // No TLB flush: nothing was ever translated to this range since it
        // was last taken down (unmap flushes before releasing it), and the
        // hook translates to it only from now on.
        let ctx = self.ctx(id)?;
        ctx.maps.insert(
            m.iova,
            PhysMap {
                len: m.len,
                phys,
                prot,
                mapping: m.clone(),
            },
        );
        Ok(())
    }

    fn unmap(&mut self, id: ContextId, iova: u64) {
        let Some(pm) = self
            .uc
            .get_data_mut()
            .contexts
            .get_mut(&id)
            .and_then(|c| c.maps.remove(&iova))
        else {
            return;
        };
        // Order matters. The hook no longer translates to the range (it
        // left the table above); drop the translations it made; stop
        // revoke from trapping the range; make it reserved again; only
        // then let another mapping have it. The range is never made
        // inaccessible while the engine may still have it translated (the
        // flush came first, and the engine runs only on this thread), and a
        // trap never lands on another mapping placed there later (the alias
        // is gone before the range is released; `remove_alias` waits for a
        // trap in progress).
        if let Err(e) = self.uc.ctl_flush_tlb() {
            tracing::error!(
                ?e,
                "mcu: flushing the TLB failed; mapping and window range retired"
            );
            self.retired.push(pm);
            return;
        }
        let host = self.window.host(pm.phys);
        pm.mapping.region.remove_alias(host);
        // SAFETY: the range lies in the window; the engine has no
        // translation into it (flushed above, after it left the table) and
        // no trap will replace it (alias removed above).
        if let Err(e) = unsafe { self.window.clear(pm.phys, pm.len) } {
            // Still the domain's memory, but unreachable: keep it, never
            // reuse the range.
            tracing::error!(
                ?e,
                "mcu: taking a mapping out of the window failed; window range retired"
            );
            self.retired.push(pm);
            return;
        }
        self.window.alloc.release(pm.phys, pm.len);
    }

    fn switch(&mut self, to: Option<ContextId>) -> SwitchOutcome {
        if self.uc.get_data().current == to {
            return SwitchOutcome::Done;
        }
        match self.do_switch(to) {
            Ok(()) => SwitchOutcome::Done,
            Err(e) => {
                let guilty = to.unwrap_or(coproc_core::VcoprocId(0));
                let _ = self.uc.get_data_mut().current.take();
                SwitchOutcome::Failed {
                    guilty,
                    reason: e.to_string(),
                }
            }
        }
    }

    fn run(&mut self, budget: Duration) -> RunOutcome {
        let Some(cur) = self.uc.get_data().current else {
            return RunOutcome {
                ran: Duration::ZERO,
                stop: StopReason::Fault(DeviceFault {
                    addr: None,
                    access: Access::None,
                    pc: None,
                    reason: FaultReason::Device("run with no context on the device".into()),
                }),
            };
        };
        if self.timer.take_preempt() {
            return RunOutcome {
                ran: Duration::ZERO,
                stop: StopReason::Preempted,
            };
        }
        // Charged: CPU time of this (the runner) thread while the engine
        // ran, which the host preempting the runner does not inflate. The
        // slice timer counts the budget in the same time. The slice runs as
        // several engine runs when exceptions are taken between them
        // (SysTick's next interrupt ends one, an SCS write that pends an
        // exception another, WFI with an interrupt pending a third).
        let cpu_start = thread_cpu();
        {
            let st = self.uc.get_data_mut();
            st.slice_cpu_start = cpu_start;
            st.running = true;
        }
        // The runner's CPU clock at the start of each engine run (read again
        // only when the slice goes on past one).
        let mut now_cpu = cpu_start;
        let stop = loop {
            {
                let st = self.uc.get_data_mut();
                st.stop = None;
                st.trap = None;
                st.page_fault = None;
                st.recheck = false;
                st.stop_soon = false;
                st.masked_pending = false;
                st.wfe = false;
            }
            if let Err(f) = deliver(&mut self.uc) {
                break StopReason::Fault(f);
            }
            let spent = now_cpu.saturating_sub(cpu_start);
            let Some(left) = budget.checked_sub(spent).filter(|l| !l.is_zero()) else {
                break StopReason::BudgetSpent;
            };
            let st = self.uc.get_data();
            let systick = st
                .contexts
                .get(&cur)
                .filter(|c| c.scs.systick_interrupts())
                .and_then(|c| c.scs.until_systick(device_time(st, c)))
                .map(Duration::from_nanos);
            let mut sub = systick.map_or(left, |t| t.min(left));
            // With the doorbell's interrupt enabled, look for a doorbell
            // rung meanwhile at least every DOORBELL_POLL of run time.
            if st
                .contexts
                .get(&cur)
                .is_some_and(|c| c.scs.irq_enabled(IRQ_DOORBELL))
            {
                sub = sub.min(DOORBELL_POLL);
            }
            let pc = self.uc.reg_read(RegisterARM::PC).unwrap_or(0);
            self.timer.arm(sub, now_cpu);
            let res = self.uc.emu_start(pc | 1, UNTIL, 0, 0);
            let (fired, preempted) = self.timer.disarm();
            let pc_after = self.uc.reg_read(RegisterARM::PC).unwrap_or(0);
            let st = self.uc.get_data_mut();
            st.trap = None;
            let stop = st.stop.take();
            let page_fault = st.page_fault.take();
            let (recheck, wfe) = (st.recheck, st.wfe);
            let wakes = |st: &State| {
                st.contexts
                    .get(&cur)
                    .is_some_and(|c| c.scs.wakes(c.control.pending() > 0))
            };
            now_cpu = thread_cpu();
            break match (stop, res) {
                (Some(Stop::Fault(f)), _) => StopReason::Fault(f),
                // A WAIT or EXIT earlier in the block stands; a parked context
                // retries the missing access when it runs again.
                (Some(Stop::Exited(c)), _) if page_fault.is_some() => StopReason::Exited(c),
                (Some(Stop::Waiting), _) if page_fault.is_some() => StopReason::Waiting,
                (None, _) if page_fault.is_some() => {
                    let (addr, access) = page_fault.unwrap_or((0, Access::None));
                    StopReason::PageFault { addr, access }
                }
                (_, Err(uc_error::INSN_INVALID)) => StopReason::Fault(DeviceFault {
                    addr: None,
                    access: Access::None,
                    pc: Some(pc_after),
                    reason: FaultReason::InvalidInstruction,
                }),
                (_, Err(e)) => StopReason::Fault(DeviceFault {
                    addr: None,
                    access: Access::None,
                    pc: Some(pc_after),
                    reason: FaultReason::Device(format!("{e:?}")),
                }),
                (Some(Stop::Exited(c)), Ok(())) => StopReason::Exited(c),
                (Some(Stop::Waiting), Ok(())) => StopReason::Waiting,
                (None, Ok(())) if preempted => StopReason::Preempted,
                (None, Ok(())) if recheck => continue,
                // The slice goes on past a SysTick interrupt's sub-slice.
                (None, Ok(())) if fired && sub < left => continue,
                (None, Ok(())) if fired => StopReason::BudgetSpent,
                // WFI (the engine halts) or WFE: go on if an interrupt is
                // pending, else park like WAIT.
                (None, Ok(())) if wfe || wfi_before(&self.uc, pc_after) => {
                    if wakes(self.uc.get_data()) {
                        continue;
                    }
                    StopReason::Waiting
                }
                (None, Ok(())) => StopReason::BudgetSpent,
            };
        };
        let ran = now_cpu.saturating_sub(cpu_start);
        let st = self.uc.get_data_mut();
        st.running = false;
        st.trap = None;
        if let Some(ctx) = st.contexts.get_mut(&cur) {
            ctx.run_ns += ran.as_nanos() as u64;
        }
        if let StopReason::Fault(f) = &stop {
            if let Some(ctx) = st.contexts.get_mut(&cur) {
                ctx.last_fault = (
                    f.reason.code(),
                    f.addr.unwrap_or(0) as u32,
                    f.pc.unwrap_or(0) as u32,
                );
            }
            // Drop any trap-page translations.
            let _ = self.uc.ctl_flush_tlb();
        }
        RunOutcome { ran, stop }
    }

    fn preempt_handle(&self) -> PreemptHandle {
        PreemptHandle(self.timer.preempter())
    }

    fn reset_context(&mut self, id: ContextId) -> Result<(), DeviceError> {
        let image = self.ctx(id)?.image.clone();
        if let Some(image) = image {
            self.restart(id, &image)
        } else {
            let slot = self.ctx(id)?.slot;
            self.clear(slot)?;
            self.ctx(id)?.fresh = true;
            Ok(())
        }
    }

    fn set_demand_faults(&mut self, id: ContextId, on: bool) -> Result<(), DeviceError> {
        self.ctx(id)?.demand = on;
        // Refusals are never cached, so no translation needs dropping.
        Ok(())
    }

    fn alloc_local(&mut self, id: ContextId, iova: u64, len: u64) -> Result<(), DeviceError> {
        if !iova.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) || len == 0 {
            return Err(DeviceError::BadMapping("not page aligned".into()));
        }
        let window = u64::from(IOVA_BASE)..=u64::from(IOVA_BASE) + u64::from(IOVA_SIZE);
        if !window.contains(&iova) || !iova.checked_add(len).is_some_and(|e| window.contains(&e)) {
            return Err(DeviceError::BadMapping("outside the iova window".into()));
        }
        let ctx = self.ctx(id)?;
        let used: u64 = ctx.local.values().map(|&(_, l)| l).sum();
        if used.saturating_add(len) > LOCAL_ALLOC_MAX {
            return Err(DeviceError::Exhausted(format!(
                "device-local memory: the context has {used} bytes, {len} more exceed \
                 the {LOCAL_ALLOC_MAX} a context may allocate"
            )));
        }
        let phys = self.phys.alloc(len).ok_or_else(|| {
            DeviceError::Exhausted("physical address space for device-local memory".into())
        })?;
        // Fresh engine RAM is zeroed: nothing of an earlier user of this
        // physical range survives (its RAM was unmapped and freed).
        if let Err(e) = self.uc.mem_map(phys, len, Prot::READ | Prot::WRITE) {
            self.phys.release(phys, len);
            return Err(uc_err("map local memory", e));
        }
        self.ctx(id)?.local.insert(iova, (phys, len));
        let _ = self.uc.ctl_flush_tlb();
        Ok(())
    }

    fn free_local(&mut self, id: ContextId, iova: u64) {
        let Some((phys, len)) = self
            .uc
            .get_data_mut()
            .contexts
            .get_mut(&id)
            .and_then(|c| c.local.remove(&iova))
        else {
            return;
        };
        // As for unmap: drop translations, then the engine RAM, then reuse.
        let _ = self.uc.ctl_flush_tlb();
        if let Err(e) = self.uc.mem_unmap(phys, len) {
            tracing::error!(
                ?e,
                "mcu: freeing device-local memory failed; address range retired"
            );
            return;
        }
        let _ = self.uc.ctl_flush_tlb();
        self.phys.release(phys, len);
    }
}
