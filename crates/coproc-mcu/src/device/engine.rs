//! Creating the engine: the Cortex-M4 core, its memory map, and the hooks
//! through which it reaches the contexts (TLB fill, MMIO pages, exceptions,
//! block starts).

use super::exceptions::{code_half, deliver, exception_name, exception_return, reg};
use super::memory::{PhysAlloc, SlotMemory, Window};
use super::registers::{cb_read, cb_write, scs_read, scs_write, trap_hit};
use super::state::{access_of, allows, PendingTrap, State, Stop};
use super::{
    uc_err, McuConfig, McuDevice, EXCP_EXCEPTION_EXIT, EXCP_SWI, PAGE, PHYS_CB, PHYS_POOL,
    PHYS_SCS, PHYS_TRAP, PHYS_WINDOW, WINDOW_SIZE,
};
use crate::abi::scs::SCS_SIZE;
use crate::abi::CB_SIZE;
use crate::scs::EXC_SVCALL;
use crate::timer::SliceTimer;
use coproc_core::device::DeviceError;
use coproc_core::fault::Access;
use coproc_core::fault::DeviceFault;
use coproc_core::fault::FaultReason;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use unicorn_engine::Arch;
use unicorn_engine::ArmCpuModel;
use unicorn_engine::Mode;
use unicorn_engine::Prot;
use unicorn_engine::RegisterARM;
use unicorn_engine::TlbEntry;
use unicorn_engine::TlbType;
use unicorn_engine::Unicorn;

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
            tlb_stale: false,
            cb_filled: false,
            cb_refilled_by: None,
            recheck: false,
            stop_soon: false,
            masked_pending: false,
            wfe: false,
            map: config.map(),
        };
        let mut uc = Unicorn::new_with_data(Arch::ARM, Mode::THUMB | Mode::MCLASS, state)
            .map_err(|e| uc_err("open", e))?;
        set_jit_cache(&mut uc, JIT_CACHE_BYTES)?;
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
                    if (PHYS_CB..PHYS_CB + u64::from(CB_SIZE)).contains(&paddr) {
                        st.note_cb_fill();
                    }
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
            // exact address. The translation must not outlive this run.
            st.tlb_stale = true;
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
            let half = code_half;
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
            tlb_grower: None,
            switch_caused: None,
            warm_installs: 0,
        })
    }
}

/// Size of the engine's translated-code buffer. Unicorn reserves 1 GiB by
/// default, and translations of destroyed or reloaded contexts' code stay
/// in it (their space is reused only once the buffer is full and flushed
/// whole), so the daemon's resident memory grew with every firmware load
/// until then. 32 MiB holds the hot code of hundreds of contexts; when it
/// fills, the engine flushes it and every context retranslates what it
/// runs next.
pub const JIT_CACHE_BYTES: u32 = 32 << 20;

/// Set the translated-code buffer's size: before anything else runs the
/// engine (it is allocated on first use).
fn set_jit_cache(uc: &mut Unicorn<'_, State>, bytes: u32) -> Result<(), DeviceError> {
    use unicorn_engine::{uc_ctl, uc_error, ControlType};
    let write = ControlType(ControlType::TCG_BUFFER_SIZE.0 | ControlType::IO_WRITE.0);
    // SAFETY: `get_handle` is this live engine's handle; the control takes
    // exactly one `uint32_t` argument (unicorn.h's
    // `uc_ctl_set_tcg_buffer_size`), passed as a `u32`, and only records
    // the size (nothing is allocated or freed by the call).
    let r = unsafe { uc_ctl(uc.get_handle(), write, bytes) };
    if r == uc_error::OK {
        Ok(())
    } else {
        Err(uc_err("jit cache size", r))
    }
}

#[cfg(test)]
mod tests {
    use super::{McuConfig, McuDevice};
    use crate::abi::{CB_BASE, CB_SIZE};

    /// The engine's TLB is indexed by virtual page number modulo its size
    /// (2^6 to 2^22 entries, resized at each flush). The control block's
    /// pages must not share a slot with the first or last pages of code,
    /// data and the iova window (all at multiples of 512 MiB) at any size
    /// firmware reaches with its own pages, or a loop touching both evicts
    /// the MMIO entry on every pass (see `CB_BASE`).
    #[test]
    fn control_block_tlb_slots_lie_in_the_middle_of_the_table() {
        let dev = McuDevice::new(McuConfig::default()).unwrap();
        let page = !dev.uc.get_data().page_mask + 1;
        assert!(page.is_power_of_two() && page >= 1024, "page size {page}");
        let first = u64::from(CB_BASE) / page;
        let last = (u64::from(CB_BASE) + u64::from(CB_SIZE) - 1) / page;
        for bits in 6..=19 {
            let n = 1u64 << bits;
            for p in first..=last {
                let slot = p % n;
                assert!(
                    (n / 4..3 * n / 4).contains(&slot),
                    "page {p:#x} has slot {slot} of {n}"
                );
            }
        }
    }

    /// A reload of the code a context's slot holds keeps the slot's code
    /// pages and the engine's translations (a warm install), and its data
    /// memory starts over as the image says, whether the image comes
    /// staged (its data pages moved in, its copy of the code freed off the
    /// runner) or not (data memory reset in place). Checked against the
    /// image's bytes, after the firmware's data memory was written over.
    #[test]
    fn a_warm_reload_starts_data_memory_over_from_the_image() {
        use crate::abi::{CODE_SIZE, DATA_BASE, DATA_SIZE};
        use crate::elf::{Image, Segment};
        use coproc_core::device::{ContextSpec, Device};
        use coproc_core::{DomainId, VcoprocId};
        let mut image = crate::elf::parse(coproc_firmware::HOG.elf).unwrap();
        let init: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 1) as u8).collect();
        image.segments.retain(|s| s.vaddr < DATA_BASE);
        image.segments.push(Segment {
            vaddr: DATA_BASE + 0x1000,
            data: init.clone(),
            memsz: 0x2000,
        });
        let mut dev = McuDevice::new(McuConfig::default()).unwrap();
        let id = VcoprocId(1);
        dev.create_context(ContextSpec {
            id,
            domain: DomainId(1),
            control: std::sync::Arc::default(),
        })
        .unwrap();
        let prep = super::super::staging::SlotPrep(dev.config.map());
        let staged = |image: &Image| {
            let slot = prep.stage(image).unwrap();
            Box::new(super::super::staging::Staged {
                image: image.clone(),
                map: prep.0,
                slot,
            })
        };
        dev.install_firmware(id, staged(&image)).unwrap();
        let slot = dev.ctx(id).unwrap().slot;
        let read = |dev: &McuDevice, at: u64, len: usize| dev.uc.mem_read_as_vec(at, len).unwrap();
        let code = read(&dev, slot.code, CODE_SIZE as usize);
        let want = {
            let mut d = vec![0u8; DATA_SIZE as usize];
            d[0x1000..0x1000 + init.len()].copy_from_slice(&init);
            d
        };
        assert_eq!(read(&dev, slot.data, DATA_SIZE as usize), want);
        for (n, with_staged) in [true, false].into_iter().enumerate() {
            let reload: coproc_core::device::PreparedFirmware = if with_staged {
                staged(&image)
            } else {
                Box::new(image.clone())
            };
            // The firmware wrote all over its data memory.
            dev.uc
                .mem_write(slot.data, &vec![0xa5; DATA_SIZE as usize])
                .unwrap();
            dev.install_firmware(id, reload).unwrap();
            assert_eq!(dev.warm_installs(), n as u64 + 1);
            assert_eq!(
                read(&dev, slot.data, DATA_SIZE as usize),
                want,
                "reload {n}"
            );
            assert_eq!(
                read(&dev, slot.code, CODE_SIZE as usize),
                code,
                "reload {n}"
            );
        }
        // The staged copy of the code went to the reclaimer, which freed it.
        assert_eq!(dev.window.reclaim().wait_freed(), 1);
    }
}
