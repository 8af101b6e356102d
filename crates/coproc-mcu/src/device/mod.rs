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

mod engine;
pub use engine::JIT_CACHE_BYTES;
mod exceptions;
mod memory;
mod registers;
mod run;
mod staging;
mod state;

use self::memory::{PhysAlloc, PhysMap, Slot, SlotMemory, Window};
use self::staging::{SlotPrep, Staged, StagedSlot};
use self::state::{Ctx, State};
use crate::abi::{CODE_BASE, CODE_SIZE, DATA_BASE, DATA_SIZE, IOVA_BASE, IOVA_SIZE};
use crate::elf::{self, Image};
use crate::scs::Scs;
use crate::timer::{thread_cpu, SliceTimer};
use coproc_core::device::{
    Capabilities, ContextSpec, Device, DeviceError, FirmwareInfo, FirmwarePrep, PreemptHandle,
    Preemption, PreparedFirmware, RunOutcome, SwitchOutcome,
};
use coproc_core::ids::{ContextId, DomainId};
use coproc_core::iova::Mapping;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use unicorn_engine::{uc_error, Prot, RegisterARM, Unicorn};

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
// `drop_code` relies on it: no context translates an address where slot
// memory lies (bar the system control space, which it checks).
const _: () = assert!(PHYS_POOL.0 >= IOVA_BASE as u64 + IOVA_SIZE as u64);

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

fn uc_err(what: &str, e: uc_error) -> DeviceError {
    DeviceError::Backend(format!("unicorn {what}: {e:?}"))
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
    /// Slots of destroyed contexts, for reuse.
    pool: Vec<Pooled>,
    /// Mappings that could not be taken down: kept alive (and trappable),
    /// their window range never reused.
    retired: Vec<PhysMap>,
    config: McuConfig,
    /// The context whose control block refills last made the engine
    /// miscount its TLB table, and when that was seen: flushes made
    /// within [`GROWN_FOR`] after are charged to it.
    tlb_grower: Option<(ContextId, Instant)>,
    /// What the last switch's flush cost because of `tlb_grower`.
    switch_caused: Option<(ContextId, Duration)>,
    /// Installs that found their code in the slot, translated already.
    warm_installs: u64,
}

/// A destroyed context's slot, kept for reuse. Its code memory still holds
/// the code of the last image installed (if the install completed), laid
/// out as `code` says (`Image::code_layout`; the bytes are in the slot
/// itself, nothing is copied), and the engine still holds its translations
/// (they are keyed by physical address, and nothing writes code memory but
/// an install): a context of the same `domain` that gets the slot and
/// loads identical code runs it without translating it again. A context of
/// another domain gets the slot cleared, code and translations gone, so
/// that nothing it times can tell what the previous owner ran.
#[derive(Debug)]
struct Pooled {
    slot: Slot,
    domain: DomainId,
    code: Option<elf::CodeLayout>,
}

/// How long the engine may keep a TLB table grown by a miscount: it sizes
/// the table from the largest count seen in a 100 ms window and shrinks it
/// at the first flush after a window without one.
const GROWN_FOR: Duration = Duration::from_millis(250);

impl std::fmt::Debug for McuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McuDevice")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl McuDevice {
    fn ctx(&mut self, id: ContextId) -> Result<&mut Ctx, DeviceError> {
        self.uc
            .get_data_mut()
            .contexts
            .get_mut(&id)
            .ok_or(DeviceError::NoContext(id))
    }

    /// A slot for a new context of `domain`, and the layout of the code it
    /// still holds, translated (see [`Pooled`]): one this domain left if
    /// there is one (its data memory zeroed, its code kept), else any
    /// other with nothing of its previous owner left, else a new one.
    fn alloc_slot(
        &mut self,
        domain: DomainId,
    ) -> Result<(Slot, Option<elf::CodeLayout>), DeviceError> {
        if let Some(i) = self.pool.iter().rposition(|p| p.domain == domain) {
            let p = self.pool.swap_remove(i);
            let code_size = self.config.code_size as usize;
            if let Err(e) = self
                .slots
                .zero(p.slot.host + code_size, self.config.data_size as usize)
            {
                self.pool.push(p);
                return Err(e);
            }
            return Ok((p.slot, p.code));
        }
        if let Some(p) = self.pool.pop() {
            // Another domain's: nothing of the previous owner survives.
            let slot = p.slot;
            if let Err(e) = self.clear(slot) {
                self.pool.push(Pooled { code: None, ..p });
                return Err(e);
            }
            return Ok((slot, None));
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
        Ok((slot, None))
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
        // The identity translation must not find one of the current
        // context's at the same address already in the TLB. Outside a
        // stale TLB it holds the current context's translations only, and
        // of those only the system control space lies where slots do (slot
        // memory is above the iova window): otherwise no flush is needed.
        let code = slot.code..slot.code + u64::from(self.config.code_size);
        let scs = u64::from(crate::abi::scs::SCS_BASE)
            ..u64::from(crate::abi::scs::SCS_BASE) + u64::from(crate::abi::scs::SCS_SIZE);
        let st = self.uc.get_data_mut();
        let clash = st.tlb_stale || (code.start < scs.end && scs.start < code.end);
        st.identity = true;
        if clash {
            let _ = self.flush_tlb();
        }
        let r = self
            .uc
            .ctl_remove_cache(slot.code, slot.code + u64::from(self.config.code_size));
        // The identity translation made meanwhile is flushed before the
        // next run (or by the next switch).
        let st = self.uc.get_data_mut();
        st.identity = false;
        st.tlb_stale = true;
        match r {
            Ok(()) => Ok(()),
            Err(_) => self.uc.ctl_flush_tb().map_err(|e| uc_err("flush tb", e)),
        }
    }

    /// Put `image` in the context's memory and mark its registers for
    /// initialisation. `memory` is the image staged for this pcoproc's
    /// memory map, if the loading thread made it; otherwise it is staged
    /// here, unless the slot already holds the image's code.
    fn install(
        &mut self,
        id: ContextId,
        image: Image,
        memory: Option<StagedSlot>,
    ) -> Result<(), DeviceError> {
        let ctx = self.ctx(id)?;
        let slot = ctx.slot;
        let held = match (&ctx.image, &ctx.warm) {
            (Some(i), _) => Some(i.code_layout()),
            (None, w) => w.clone(),
        };
        let same = held.is_some_and(|l| l == image.code_layout())
            && image.code_segments().all(|s| {
                self.slots
                    .holds(slot.host + (s.vaddr - CODE_BASE) as usize, &s.data)
            });
        if same {
            // The slot's code memory holds this very code, translated by
            // the engine already (this context's, or one of the same
            // domain that had the slot before): only data memory and the
            // registers start over, as at a reset. With the image staged
            // (off the runner), its data pages take the slot's in one
            // step, which costs the runner a page table update instead of
            // zeroing and refilling data memory; the code pages stay.
            match memory {
                Some(m) => {
                    let code = self
                        .slots
                        .replace(slot.host, m, self.config.code_size as usize)?;
                    if let Some(code) = code {
                        // Its copy of the code: freed off the runner.
                        self.window.free(code);
                    }
                    self.start_over(id)?;
                }
                None => self.restart(id, &image)?,
            }
            let ctx = self.ctx(id)?;
            ctx.image = Some(image);
            ctx.warm = None;
            self.warm_installs += 1;
            return Ok(());
        }
        let memory = match memory {
            Some(m) => m,
            None => SlotPrep(self.config.map()).stage(&image)?,
        };
        // The slot's contents change: nothing is known about them until
        // the new image is in.
        let ctx = self.ctx(id)?;
        ctx.image = None;
        ctx.warm = None;
        // The staged pages replace the slot's; the engine's translations
        // of the old code go.
        // Nothing is left of the staged memory.
        let _ = self.slots.replace(slot.host, memory, 0)?;
        self.drop_code(slot)?;
        self.ctx(id)?.image = Some(image);
        self.start_over(id)
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
        self.start_over(id)
    }

    /// The context's registers start over at its next run (at once, if it
    /// is the current one).
    fn start_over(&mut self, id: ContextId) -> Result<(), DeviceError> {
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
        // Until the flush below, the TLB may hold translations of a
        // context that is no longer current (a failure on the way leaves
        // it so).
        self.uc.get_data_mut().tlb_stale = true;
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
        self.switch_caused = self.flush_tlb().map_err(|e| uc_err("flush tlb", e))?;
        Ok(())
    }

    /// Flush the engine's TLB; nothing stale is left in it after. The
    /// flush's cost is the size of the engine's table, which a context
    /// that keeps refilling the control block's entry makes the engine
    /// grow (see `CB_BASE`): while that context is recent, the flush is
    /// measured and returned as caused by it.
    pub(super) fn flush_tlb(
        &mut self,
    ) -> Result<Option<(ContextId, Duration)>, unicorn_engine::uc_error> {
        let st = self.uc.get_data_mut();
        st.cb_filled = false;
        let refilled = st.cb_refilled_by.take();
        let now = Instant::now();
        if let Some(c) = refilled {
            self.tlb_grower = Some((c, now));
        }
        let grower = match self.tlb_grower {
            Some((c, seen))
                if now.saturating_duration_since(seen) < GROWN_FOR
                    && self.uc.get_data().contexts.contains_key(&c) =>
            {
                Some(c)
            }
            _ => {
                self.tlb_grower = None;
                None
            }
        };
        let t0 = grower.map(|_| thread_cpu());
        self.uc.ctl_flush_tlb()?;
        self.uc.get_data_mut().tlb_stale = false;
        Ok(grower
            .zip(t0)
            .map(|(c, t0)| (c, thread_cpu().saturating_sub(t0))))
    }

    /// Firmware installs so far that found the image's code in the
    /// context's slot with the engine's translations of it (a reload of
    /// the same code, or a slot recycled within one domain, see `Pooled`),
    /// and so only reset data memory.
    pub fn warm_installs(&self) -> u64 {
        self.warm_installs
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
        let (slot, warm) = self.alloc_slot(spec.domain)?;
        let regs = match self.uc.context_alloc() {
            Ok(regs) => regs,
            Err(e) => {
                self.pool.push(Pooled {
                    slot,
                    domain: spec.domain,
                    code: warm,
                });
                return Err(uc_err("context", e));
            }
        };
        self.uc.get_data_mut().contexts.insert(
            spec.id,
            Ctx {
                control: spec.control,
                domain: spec.domain,
                slot,
                warm,
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
            self.pool.push(Pooled {
                slot: ctx.slot,
                domain: ctx.domain,
                code: ctx.image.map(|i| i.code_layout()).or(ctx.warm),
            });
        }
    }

    fn load_firmware(&mut self, id: ContextId, image: &[u8]) -> Result<FirmwareInfo, DeviceError> {
        self.ctx(id)?;
        let prepared = SlotPrep(self.config.map()).prepare(image)?;
        self.install_firmware(id, prepared)
    }

    fn firmware_prep(&self) -> Arc<dyn FirmwarePrep> {
        Arc::new(SlotPrep(self.config.map()))
    }

    fn reclaim(&self) -> Option<Arc<dyn coproc_core::device::Reclaim>> {
        Some(self.window.reclaim())
    }

    /// Puts an image `SlotPrep` (or [`elf::ElfPrepFor`]) validated in the
    /// context's slot (its staged pages moved in, or only data memory reset
    /// when the slot holds its code already, see `install`) and marks the
    /// registers for a fresh start: nothing is parsed or checked here.
    fn install_firmware(
        &mut self,
        id: ContextId,
        fw: PreparedFirmware,
    ) -> Result<FirmwareInfo, DeviceError> {
        self.ctx(id)?;
        // Staged memory serves only if laid out for this pcoproc's map;
        // an image validated by `elf::ElfPrepFor` comes without any.
        let (image, memory) = match fw.downcast::<Staged>() {
            Ok(staged) => {
                let Staged { image, map, slot } = *staged;
                (image, (map == self.config.map()).then_some(slot))
            }
            Err(fw) => match fw.downcast::<Image>() {
                Ok(image) => (*image, None),
                Err(_) => {
                    return Err(DeviceError::BadFirmware(
                        "prepared for another device class".into(),
                    ))
                }
            },
        };
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
        self.install(id, image, memory)?;
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
            .take(m.len)
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
                Ok(()) => self.window.give_back(phys, m.len),
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
        // trap in progress). The TLB holds translations of the current
        // context only (every switch flushes; a switch that fails leaves
        // it marked stale), so the mapping of another context needs no
        // flush: a domain tearing down its vcoprocs does not make every
        // other context's translations go.
        let st = self.uc.get_data();
        if st.current == Some(id) || st.tlb_stale {
            if let Err(e) = self.flush_tlb() {
                tracing::error!(
                    ?e,
                    "mcu: flushing the TLB failed; mapping and window range retired"
                );
                self.retired.push(pm);
                return;
            }
        }
        let host = self.window.host(pm.phys);
        pm.mapping.region.remove_alias(host);
        // SAFETY: the mapping was placed in this window; the engine has no
        // translation into its range (flushed above, after it left the
        // table, or never made while the TLB held this context's
        // translations) and no trap will replace it (alias removed above).
        if let Err(pm) = unsafe { self.window.take_down(pm) } {
            // Still the domain's memory, but unreachable: keep it, never
            // reuse the range.
            self.retired.push(pm);
        }
    }

    fn switch(&mut self, to: Option<ContextId>) -> SwitchOutcome {
        self.switch_caused = None;
        if self.uc.get_data().current == to {
            return SwitchOutcome::Done;
        }
        match self.do_switch(to) {
            Ok(()) => SwitchOutcome::Done,
            Err(e) => {
                let guilty = to.unwrap_or(coproc_core::VcoprocId(0));
                // do_switch left the TLB marked stale.
                let _ = self.uc.get_data_mut().current.take();
                SwitchOutcome::Failed {
                    guilty,
                    reason: e.to_string(),
                }
            }
        }
    }

    fn switch_caused(&mut self) -> Option<(ContextId, Duration)> {
        self.switch_caused.take()
    }

    fn run(&mut self, budget: Duration) -> RunOutcome {
        self.run_slice(budget)
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
            let ctx = self.ctx(id)?;
            ctx.fresh = true;
            ctx.warm = None;
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
        let _ = self.flush_tlb();
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
        let _ = self.flush_tlb();
        if let Err(e) = self.uc.mem_unmap(phys, len) {
            tracing::error!(
                ?e,
                "mcu: freeing device-local memory failed; address range retired"
            );
            return;
        }
        let _ = self.flush_tlb();
        self.phys.release(phys, len);
    }
}
