//! One slice of a context on the core: engine runs between SysTick
//! interrupts, doorbell polls and exceptions, until the budget is spent or
//! the context waits, exits or faults.

use super::exceptions::{deliver, wfi_before};
use super::registers::device_time;
use super::state::{State, Stop};
use super::{McuDevice, DOORBELL_POLL, UNTIL};
use crate::abi::scs::IRQ_DOORBELL;
use crate::timer::thread_cpu;
use coproc_core::device::RunOutcome;
use coproc_core::device::StopReason;
use coproc_core::fault::Access;
use coproc_core::fault::DeviceFault;
use coproc_core::fault::FaultReason;
use std::time::Duration;
use unicorn_engine::uc_error;
use unicorn_engine::RegisterARM;

/// A run that could not start: nothing ran, the device faults with `why`.
fn refused(why: String) -> RunOutcome {
    RunOutcome {
        ran: Duration::ZERO,
        stop: StopReason::Fault(DeviceFault {
            addr: None,
            access: Access::None,
            pc: None,
            reason: FaultReason::Device(why),
        }),
    }
}

impl McuDevice {
    /// Run the current context for up to `budget` of the runner's CPU time.
    pub(super) fn run_slice(&mut self, budget: Duration) -> RunOutcome {
        let Some(cur) = self.uc.get_data().current else {
            return refused("run with no context on the device".into());
        };
        if self.timer.take_preempt() {
            return RunOutcome {
                ran: Duration::ZERO,
                stop: StopReason::Preempted,
            };
        }
        if self.uc.get_data().tlb_stale {
            if let Err(e) = self.flush_tlb() {
                return refused(format!("flush tlb: {e:?}"));
            }
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
            // Trap-page translations made in this slice are flushed before
            // the next run (or by the next switch): `tlb_stale`.
        }
        RunOutcome { ran, stop }
    }
}
