//! State the engine's hooks reach: the contexts, the current one, and what
//! the last run asked for (stop, trap, page fault).

use super::memory::{PhysMap, Slot};
use super::{PHYS_CB, PHYS_SCS};
use crate::abi::scs::SCS_BASE;
use crate::abi::scs::SCS_SIZE;
use crate::abi::CB_BASE;
use crate::abi::CB_SIZE;
use crate::abi::CODE_BASE;
use crate::abi::DATA_BASE;
use crate::abi::IOVA_BASE;
use crate::abi::IOVA_SIZE;
use crate::elf;
use crate::elf::Image;
use crate::scs::Scs;
use coproc_core::control::ControlBlock;
use coproc_core::fault::Access;
use coproc_core::fault::DeviceFault;
use coproc_core::ids::{ContextId, DomainId};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use unicorn_engine::MemType;
use unicorn_engine::Prot;

pub(super) struct Ctx {
    pub(super) control: Arc<ControlBlock>,
    /// The domain it belongs to (see `Pooled`).
    pub(super) domain: DomainId,
    pub(super) slot: Slot,
    /// Before this context's first install: the code layout
    /// (`Image::code_layout`) of the image whose code its slot still holds,
    /// translated, from a context of the same domain that had the slot
    /// before (`Pooled`). Afterwards `image` says it.
    pub(super) warm: Option<elf::CodeLayout>,
    pub(super) maps: BTreeMap<u64, PhysMap>,
    pub(super) image: Option<Image>,
    pub(super) regs: unicorn_engine::Context,
    /// Registers must be initialised from the image at the next switch-in.
    pub(super) fresh: bool,
    pub(super) run_ns: u64,
    pub(super) time_hi: u32,
    /// (reason, addr, pc) of the last fault, for the FAULT_* registers.
    pub(super) last_fault: (u32, u32, u32),
    /// Demand faults on: a missing page in the iova window stalls.
    pub(super) demand: bool,
    /// Device-local memory: iova → (physical address, length), engine RAM
    /// only this context's translations reach.
    pub(super) local: BTreeMap<u64, (u64, u64)>,
    /// The System Control Space (SCB, SysTick, NVIC): reset with the
    /// registers, saved with the context.
    pub(super) scs: Scs,
}

/// A fault found by a hook during a run.
#[derive(Debug, Clone, Copy)]
pub(super) struct PendingTrap {
    pub(super) vpage: u64,
    pub(super) access: Access,
    pub(super) pc: u64,
}

#[derive(Debug)]
pub(super) enum Stop {
    Waiting,
    Exited(u32),
    Fault(DeviceFault),
}

/// State the engine's hooks reach through `Unicorn::get_data_mut`.
pub(super) struct State {
    pub(super) contexts: HashMap<ContextId, Ctx>,
    pub(super) current: Option<ContextId>,
    pub(super) running: bool,
    /// Runner thread CPU time at the start of the current run.
    pub(super) slice_cpu_start: Duration,
    pub(super) stop: Option<Stop>,
    pub(super) trap: Option<PendingTrap>,
    pub(super) page_mask: u64,
    /// A data access the TLB hook refused because its page is missing and
    /// the context has demand faults on: (page address, access). The
    /// engine restores the faulting instruction and stops.
    pub(super) page_fault: Option<(u64, Access)>,
    /// While set, the TLB hook maps every address to itself: how one slot's
    /// physical code range is named to the engine's cache invalidation,
    /// which takes addresses through the TLB (see `McuDevice::drop_code`).
    pub(super) identity: bool,
    /// An SCS write may have made an exception deliverable: the core was
    /// stopped so the device takes it.
    pub(super) recheck: bool,
    /// A hook asked the core to stop (a WAIT, an EXIT, a fault on the trap
    /// page, an exception made deliverable): it stops at the start of the
    /// next translation block, see [`McuDevice::new`].
    pub(super) stop_soon: bool,
    /// An exception was pending but masked by PRIMASK when the run loop
    /// last looked: the block hook stops the core once PRIMASK is clear
    /// (`cpsie i` and `msr primask` end their block) so it is taken then.
    pub(super) masked_pending: bool,
    /// The core stopped at a WFE.
    pub(super) wfe: bool,
    /// The engine's TLB may hold a translation no run may use (a trap
    /// page's, an identity one of `McuDevice::drop_code`, or, after a
    /// failed switch, the previous context's): the next run or switch
    /// flushes it first, and unmapping any context's memory flushes it.
    /// Flushing then rather than at once saves a flush whenever a switch
    /// comes first (the switch flushes anyway), and a flush costs the size
    /// of the engine's TLB table.
    pub(super) tlb_stale: bool,
    /// The control block's page was translated since the last TLB flush.
    pub(super) cb_filled: bool,
    /// A context translated it again since then: its entry had been
    /// evicted, and the engine, refilling an MMIO entry, miscounts its
    /// table (it may grow it to its largest at the next flush).
    pub(super) cb_refilled_by: Option<ContextId>,
    /// Code and data memory sizes of every context.
    pub(super) map: elf::MemoryMap,
}

impl State {
    /// The TLB hook translated the control block's page for the current
    /// context.
    pub(super) fn note_cb_fill(&mut self) {
        if self.cb_filled {
            self.cb_refilled_by = self.current;
        }
        self.cb_filled = true;
    }

    pub(super) fn current_ctx(&mut self) -> Option<&mut Ctx> {
        self.contexts.get_mut(&self.current?)
    }

    pub(super) fn set_stop(&mut self, s: Stop) {
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
    pub(super) fn demandable(&self, vaddr: u64) -> bool {
        let Some(ctx) = self.current.and_then(|c| self.contexts.get(&c)) else {
            return false;
        };
        let window = u64::from(IOVA_BASE)..u64::from(IOVA_BASE) + u64::from(IOVA_SIZE);
        ctx.demand && window.contains(&vaddr) && self.translate(vaddr).is_none()
    }

    pub(super) fn translate(&self, vaddr: u64) -> Option<(u64, Prot)> {
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

pub(super) fn allows(prot: Prot, access: MemType) -> bool {
    let need = match access {
        MemType::READ => Prot::READ,
        MemType::WRITE => Prot::WRITE,
        MemType::FETCH => Prot::EXEC,
        _ => return false,
    };
    prot.0 & need.0 != 0
}

pub(super) fn access_of(t: MemType) -> Access {
    match t {
        MemType::READ => Access::Read,
        MemType::WRITE => Access::Write,
        MemType::FETCH => Access::Fetch,
        _ => Access::None,
    }
}
