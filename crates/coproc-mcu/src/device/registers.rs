//! The emulated MMIO pages: the control block, the System Control Space
//! and the trap page.

use super::state::{Ctx, State, Stop};
use crate::abi::scs::EXIT_SYSRESETREQ;
use crate::abi::scs::SCS_BASE;
use crate::abi::ABI_VERSION;
use crate::abi::CB_CONSOLE;
use crate::abi::CB_DOORBELL;
use crate::abi::CB_DOORBELL_ACK;
use crate::abi::CB_EXIT;
use crate::abi::CB_FAULT_ADDR;
use crate::abi::CB_FAULT_PC;
use crate::abi::CB_FAULT_REASON;
use crate::abi::CB_FENCE;
use crate::abi::CB_MAGIC;
use crate::abi::CB_MBOX_IN;
use crate::abi::CB_MBOX_OUT;
use crate::abi::CB_NOTIFY;
use crate::abi::CB_NOTIFY_TAG;
use crate::abi::CB_TIME_HI;
use crate::abi::CB_TIME_LO;
use crate::abi::CB_VCOPROC;
use crate::abi::CB_VERSION;
use crate::abi::CB_WAIT;
use crate::abi::MAGIC;
use crate::abi::MBOX_WORDS;
use crate::scs::ScsEffect;
use crate::timer::thread_cpu;
use coproc_core::fault::DeviceFault;
use coproc_core::fault::FaultReason;

pub(super) fn trap_hit(st: &mut State, off: u64) {
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
pub(super) fn device_time(st: &State, ctx: &Ctx) -> u64 {
    let elapsed = thread_cpu().saturating_sub(st.slice_cpu_start).as_nanos() as u64;
    ctx.run_ns + if st.running { elapsed } else { 0 }
}

/// System Control Space reads (see [`Scs::read`]). After a fault or an exit
/// they read 0, like the control block.
pub(super) fn scs_read(st: &mut State, off: u64, size: usize) -> u64 {
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
    lane(word, off, size)
}

/// System Control Space writes; returns whether the core must stop (an
/// exception may have become deliverable, or a reset was requested).
pub(super) fn scs_write(st: &mut State, off: u64, size: usize, value: u32, primask: bool) -> bool {
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

/// Control block reads. Every register read is idempotent, as the ABI
/// promises (TIME_LO latches TIME_HI, which a repeated read simply does
/// again), though the device never restarts an instruction.
///
/// A stop requested by a callback takes effect at the end of the current
/// translation block (the block-start hook makes it), so a few more
/// instructions may run. They
/// must not change what the stop means: after WAIT parks the core, DOORBELL
/// reads as DOORBELL_ACK (new doorbells stay pending for the runner to see);
/// after a fault or an exit, the control block ignores the context entirely.
pub(super) fn cb_read(st: &mut State, off: u64, size: usize) -> u64 {
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
    lane(word, off, size)
}

/// Control block writes, each idempotent. Only aligned 32-bit stores reach a
/// register; narrower ones are ignored. Returns whether the core must stop.
pub(super) fn cb_write(st: &mut State, off: u64, size: usize, value: u32) -> bool {
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
        CB_FENCE => {
            // The engine runs the core on this thread, its loads and
            // stores being this thread's: a fence here orders them for the
            // domain's threads, which the core's DMB (no host barrier in a
            // single-core engine) does not.
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
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

/// The bytes of register `word` a read of `size` bytes at offset `off`
/// returns (a narrow read takes its byte lane, as on the bus).
fn lane(word: u32, off: u64, size: usize) -> u64 {
    let shift = 8 * (off & 3);
    let mask = if size >= 4 {
        u64::from(u32::MAX)
    } else {
        (1u64 << (8 * size)) - 1
    };
    (u64::from(word) >> shift) & mask
}
