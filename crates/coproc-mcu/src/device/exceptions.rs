//! Exception entry and return as a Cortex-M4 takes them: frames on the
//! main stack, the vector table, EXC_RETURN.

use super::registers::device_time;
use super::state::State;
use super::FRAME_WORDS;
use crate::abi::DATA_BASE;
use coproc_core::fault::Access;
use coproc_core::fault::DeviceFault;
use coproc_core::fault::FaultReason;
use unicorn_engine::Prot;
use unicorn_engine::RegisterARM;
use unicorn_engine::Unicorn;

/// The core registers an exception frame holds first, in frame order (then
/// the return address and xPSR, then s0-s15 and FPSCR).
const STACKED: [RegisterARM; 6] = [
    RegisterARM::R0,
    RegisterARM::R1,
    RegisterARM::R2,
    RegisterARM::R3,
    RegisterARM::R12,
    RegisterARM::LR,
];

/// The halfword of the current context's code at virtual address `a`
/// (None where it has no executable code).
pub(super) fn code_half(uc: &Unicorn<'_, State>, a: u64) -> Option<u16> {
    let (p, prot) = uc.get_data().translate(a)?;
    if prot.0 & Prot::EXEC.0 == 0 {
        return None;
    }
    let mut b = [0u8; 2];
    uc.mem_read(p, &mut b).ok()?;
    Some(u16::from_le_bytes(b))
}

/// Whether the instruction before `pc` is a WFI (16- or 32-bit).
pub(super) fn wfi_before(uc: &Unicorn<'_, State>, pc: u64) -> bool {
    let half = |a: u64| code_half(uc, a);
    let prev = half(pc.wrapping_sub(2));
    prev == Some(0xbf30) || (prev == Some(0x8003) && half(pc.wrapping_sub(4)) == Some(0xf3af))
}

pub(super) fn fault_at(
    addr: Option<u64>,
    access: Access,
    pc: u64,
    reason: FaultReason,
) -> DeviceFault {
    DeviceFault {
        addr,
        access,
        pc: Some(pc),
        reason,
    }
}

pub(super) fn reg(uc: &Unicorn<'_, State>, r: i32) -> u32 {
    uc.reg_read(r).unwrap_or(0) as u32
}

/// Read or write the current context's code or data memory at virtual
/// `addr` as the firmware would, word by word, with its permissions: how
/// the device stacks and unstacks exception frames and reads vectors. Only
/// the context's own code and data memory qualify (not the control block,
/// the SCS, mappings or device-local memory): an exception frame or vector
/// table anywhere else faults the vcoproc.
pub(super) fn vaccess(
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
pub(super) fn deliver(uc: &mut Unicorn<'_, State>) -> Result<(), DeviceFault> {
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
    for (i, r) in STACKED.into_iter().enumerate() {
        frame[i] = reg(uc, r as i32);
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
pub(super) fn exception_return(uc: &mut Unicorn<'_, State>) -> Result<(), DeviceFault> {
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
    for (i, r) in STACKED.into_iter().enumerate() {
        set(uc, r as i32, frame[i])?;
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

pub(super) fn exception_name(intno: u32) -> String {
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
