//! The Cortex-M System Control Space of one vcoproc: SCB, SysTick, NVIC and
//! the FPU's control registers, as firmware start-up code and interrupt
//! handlers use them (docs/firmware-abi.md lists what is modelled and what
//! an access to the rest does). Pure state: the device routes accesses here
//! and takes the exceptions it reports pending (`device.rs`).

// Registers of a 32-bit core: every value is a 32-bit word by architecture.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use crate::abi::scs::{
    CPUID, FPU_FPCAR, FPU_FPCCR, FPU_FPDSCR, IRQ_DOORBELL, NVIC_IABR, NVIC_ICER, NVIC_ICPR,
    NVIC_IPR, NVIC_IRQS, NVIC_ISER, NVIC_ISPR, NVIC_STIR, SCB_AIRCR, SCB_BFAR, SCB_CCR, SCB_CFSR,
    SCB_CPACR, SCB_CPUID, SCB_ICSR, SCB_MMFAR, SCB_SCR, SCB_SHCSR, SCB_SHPR1, SCB_SHPR2, SCB_SHPR3,
    SCB_VTOR, SCS_ACTLR, SYSTICK_HZ, SYST_CALIB, SYST_CSR, SYST_CVR, SYST_RVR,
};

/// Exception numbers.
pub(crate) const EXC_NMI: u16 = 2;
pub(crate) const EXC_SVCALL: u16 = 11;
pub(crate) const EXC_PENDSV: u16 = 14;
pub(crate) const EXC_SYSTICK: u16 = 15;
/// First external interrupt.
pub(crate) const EXC_IRQ0: u16 = 16;
/// Exception numbers handled: 0..EXC_IRQ0 + NVIC_IRQS.
const EXCEPTIONS: usize = EXC_IRQ0 as usize + NVIC_IRQS as usize;
/// Priority bits implemented (the top four, as on a Cortex-M4).
const PRIO_MASK: u8 = 0xf0;
/// Nanoseconds of device time per SysTick tick.
const TICK_NS: u64 = 1_000_000_000 / SYSTICK_HZ as u64;

/// SysTick, counting the vcoproc's own device time.
#[derive(Debug, Clone, Default)]
struct SysTick {
    enable: bool,
    tickint: bool,
    clksource: bool,
    countflag: bool,
    rvr: u32,
    /// Device time at which the counter held `val0` (while enabled).
    t0: u64,
    val0: u32,
    /// Zero crossings since `t0` already turned into COUNTFLAG and pending.
    zeros_seen: u64,
    /// The counter while disabled.
    stopped: u32,
}

impl SysTick {
    fn ticks(&self, now: u64) -> u64 {
        now.saturating_sub(self.t0) / TICK_NS
    }

    fn value(&self, now: u64) -> u32 {
        if !self.enable {
            return self.stopped;
        }
        let (k, v0, rvr) = (self.ticks(now), u64::from(self.val0), u64::from(self.rvr));
        if k <= v0 && v0 > 0 {
            return (v0 - k) as u32;
        }
        if rvr == 0 || k == 0 {
            return 0;
        }
        (rvr - (k - v0 - 1) % (rvr + 1)) as u32
    }

    /// Times the counter reached zero in ticks 1..=k.
    fn zeros(&self, k: u64) -> u64 {
        let (v0, period) = (u64::from(self.val0), u64::from(self.rvr) + 1);
        if v0 > 0 {
            if k < v0 {
                0
            } else if self.rvr == 0 {
                1
            } else {
                1 + (k - v0) / period
            }
        } else if self.rvr == 0 {
            0
        } else {
            k / period
        }
    }

    /// Device time until the counter next reaches zero, if it will.
    fn until_zero(&self, now: u64) -> Option<u64> {
        if !self.enable {
            return None;
        }
        let k = self.ticks(now);
        let (v0, period) = (u64::from(self.val0), u64::from(self.rvr) + 1);
        let next = if v0 > 0 && k < v0 {
            v0
        } else if self.rvr == 0 {
            return None;
        } else {
            v0 + ((k - v0) / period + 1) * period
        };
        Some((self.t0 + next * TICK_NS).saturating_sub(now).max(1))
    }

    /// Turn zero crossings up to `now` into COUNTFLAG; returns whether the
    /// interrupt became pending.
    fn update(&mut self, now: u64) -> bool {
        if !self.enable {
            return false;
        }
        let z = self.zeros(self.ticks(now));
        if z > self.zeros_seen {
            self.zeros_seen = z;
            self.countflag = true;
            return self.tickint;
        }
        false
    }

    fn rebase(&mut self, now: u64, value: u32) {
        self.t0 = now;
        self.val0 = value;
        self.zeros_seen = 0;
        self.stopped = value;
    }
}

/// Why a register access stops the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScsEffect {
    /// Nothing beyond the register.
    None,
    /// AIRCR.SYSRESETREQ: the vcoproc stops with [`EXIT_SYSRESETREQ`].
    ResetRequest,
    /// An exception may have become deliverable: stop so the device looks.
    Recheck,
}

/// The System Control Space state of one vcoproc.
#[derive(Debug, Clone)]
pub(crate) struct Scs {
    vtor: u32,
    prigroup: u32,
    scr: u32,
    ccr: u32,
    actlr: u32,
    cpacr: u32,
    shcsr_enables: u32,
    fpccr: u32,
    fpcar: u32,
    fpdscr: u32,
    /// Priority byte per exception number (4 and up configurable).
    prio: [u8; EXCEPTIONS],
    /// Pending exceptions by number (software-set; the doorbell line is
    /// level-sensitive and not stored here).
    pend: u64,
    /// Active exceptions by number, innermost last.
    active: Vec<u16>,
    /// IRQ enables.
    enabled: u32,
    systick: SysTick,
}

impl Default for Scs {
    fn default() -> Self {
        Scs {
            vtor: 0,
            prigroup: 0,
            scr: 0,
            ccr: 0x200,
            actlr: 0,
            cpacr: 0,
            shcsr_enables: 0,
            fpccr: 0xc000_0000,
            fpcar: 0,
            fpdscr: 0,
            prio: [0; EXCEPTIONS],
            pend: 0,
            active: Vec::new(),
            enabled: 0,
            systick: SysTick::default(),
        }
    }
}

/// CFSR bits of the last fault the device recorded.
fn cfsr(last_fault: (u32, u32, u32), fetch: bool) -> u32 {
    match last_fault.0 {
        1 if fetch => 1,          // IACCVIOL
        1 => (1 << 1) | (1 << 7), // DACCVIOL | MMARVALID
        2 => 1 << 16,             // UNDEFINSTR
        _ => 0,
    }
}

impl Scs {
    /// Vector table base.
    pub(crate) fn vtor(&self) -> u32 {
        self.vtor
    }

    /// Exception numbers active, innermost last.
    pub(crate) fn active(&self) -> &[u16] {
        &self.active
    }

    fn priority(&self, exc: u16) -> i16 {
        match exc {
            1 => -3,
            2 => -2,
            3 => -1,
            e => i16::from(self.prio[usize::from(e) % EXCEPTIONS] & PRIO_MASK),
        }
    }

    fn is_active(&self, exc: u16) -> bool {
        self.active.contains(&exc)
    }

    /// Bring SysTick up to `now` (device time in ns).
    pub(crate) fn tick(&mut self, now: u64) {
        if self.systick.update(now) {
            self.pend |= 1 << EXC_SYSTICK;
        }
    }

    /// Nothing can be pending: no exception pending, SysTick not counting
    /// towards an interrupt, the doorbell's line down or its IRQ disabled.
    pub(crate) fn quiet(&self, doorbell: bool) -> bool {
        self.pend == 0
            && !self.systick_interrupts()
            && !(doorbell && self.enabled & (1 << IRQ_DOORBELL) != 0)
    }

    /// External interrupt `irq` is enabled.
    pub(crate) fn irq_enabled(&self, irq: u32) -> bool {
        irq < NVIC_IRQS && self.enabled & (1 << irq) != 0
    }

    /// SysTick is enabled with its interrupt.
    pub(crate) fn systick_interrupts(&self) -> bool {
        self.systick.enable && self.systick.tickint
    }

    /// Device time until SysTick next raises its interrupt, if it will.
    pub(crate) fn until_systick(&self, now: u64) -> Option<u64> {
        if self.systick.tickint {
            self.systick.until_zero(now)
        } else {
            None
        }
    }

    /// The highest-priority pending exception (enabled, not active), with
    /// its priority. `doorbell` is the doorbell line (IRQ 0).
    fn highest_pending(&self, doorbell: bool) -> Option<(u16, i16)> {
        let doorbell = doorbell && self.enabled & (1 << IRQ_DOORBELL) != 0;
        if self.pend == 0 && !doorbell {
            return None;
        }
        let mut best: Option<(u16, i16)> = None;
        for exc in 1..EXCEPTIONS as u16 {
            let irq = exc.checked_sub(EXC_IRQ0);
            let pending = self.pend & (1 << exc) != 0
                || (irq == Some(u16::try_from(IRQ_DOORBELL).unwrap_or(0)) && doorbell);
            if !pending || self.is_active(exc) {
                continue;
            }
            if let Some(i) = irq {
                if self.enabled & (1 << i) == 0 {
                    continue;
                }
            }
            let p = self.priority(exc);
            if best.is_none_or(|(_, bp)| p < bp) {
                best = Some((exc, p));
            }
        }
        best
    }

    /// Whether anything is pending that wakes WFI (masked or not).
    pub(crate) fn wakes(&self, doorbell: bool) -> bool {
        self.highest_pending(doorbell).is_some()
    }

    /// The exception to take now, if one is pending with a priority above
    /// the current execution priority (PRIMASK masks all but NMI).
    pub(crate) fn take(&self, doorbell: bool, primask: bool) -> Option<u16> {
        let (exc, p) = self.highest_pending(doorbell)?;
        let mut current: i16 = 256;
        for &a in &self.active {
            current = current.min(self.priority(a));
        }
        if primask {
            current = current.min(0);
        }
        (p < current).then_some(exc)
    }

    /// Make an exception pending (SVCall on an SVC instruction).
    pub(crate) fn pend(&mut self, exc: u16) {
        self.pend |= 1 << exc;
    }

    /// Withdraw a pending exception.
    pub(crate) fn unpend(&mut self, exc: u16) {
        self.pend &= !(1 << exc);
    }

    /// Exception entry done: `exc` is active and no longer pending.
    pub(crate) fn enter(&mut self, exc: u16) {
        self.pend &= !(1 << exc);
        self.active.push(exc);
    }

    /// Exception return: the innermost active exception ends.
    pub(crate) fn exit(&mut self) -> Option<u16> {
        self.active.pop()
    }

    /// A 32-bit (or narrower) read at `addr` (in the SCS). `now` is the
    /// vcoproc's device time.
    pub(crate) fn read(
        &mut self,
        addr: u32,
        now: u64,
        doorbell: bool,
        last_fault: (u32, u32, u32),
    ) -> u32 {
        self.tick(now);
        match addr & !3 {
            SCS_ACTLR => self.actlr,
            SYST_CSR => {
                let s = &mut self.systick;
                let v = u32::from(s.enable)
                    | u32::from(s.tickint) << 1
                    | u32::from(s.clksource) << 2
                    | u32::from(s.countflag) << 16;
                s.countflag = false;
                v
            }
            SYST_RVR => self.systick.rvr,
            SYST_CVR => self.systick.value(now),
            SYST_CALIB => 0x8000_0000 | (SYSTICK_HZ / 100 - 1),
            NVIC_ISER | NVIC_ICER => self.enabled,
            NVIC_ISPR | NVIC_ICPR => {
                let soft = (self.pend >> EXC_IRQ0) as u32;
                soft | u32::from(doorbell && !self.is_active(EXC_IRQ0 + IRQ_DOORBELL as u16))
                    << IRQ_DOORBELL
            }
            NVIC_IABR => self
                .active
                .iter()
                .filter_map(|&e| e.checked_sub(EXC_IRQ0))
                .fold(0, |m, i| m | 1 << i),
            a if (NVIC_IPR..NVIC_IPR + NVIC_IRQS).contains(&a) => {
                let i = (EXC_IRQ0 as usize) + (a - NVIC_IPR) as usize;
                u32::from_le_bytes([
                    self.prio[i],
                    self.prio[i + 1],
                    self.prio[i + 2],
                    self.prio[i + 3],
                ])
            }
            SCB_CPUID => CPUID,
            SCB_ICSR => {
                let vectactive = u32::from(self.active.last().copied().unwrap_or(0));
                let pending = self
                    .highest_pending(doorbell)
                    .map_or(0, |(e, _)| u32::from(e));
                let isrpending = (self.pend >> EXC_IRQ0) != 0 || doorbell;
                vectactive
                    | u32::from(self.active.len() <= 1) << 11
                    | pending << 12
                    | u32::from(isrpending) << 22
                    | u32::from(self.pend & (1 << EXC_SYSTICK) != 0) << 26
                    | u32::from(self.pend & (1 << EXC_PENDSV) != 0) << 28
            }
            SCB_VTOR => self.vtor,
            SCB_AIRCR => 0xfa05_0000 | self.prigroup << 8,
            SCB_SCR => self.scr,
            SCB_CCR => self.ccr,
            a @ (SCB_SHPR1 | SCB_SHPR2 | SCB_SHPR3) => {
                let i = 4 + (a - SCB_SHPR1) as usize;
                u32::from_le_bytes([
                    self.prio[i],
                    self.prio[i + 1],
                    self.prio[i + 2],
                    self.prio[i + 3],
                ])
            }
            SCB_SHCSR => {
                let act = |e: u16| u32::from(self.is_active(e));
                self.shcsr_enables
                    | act(4)
                    | act(5) << 1
                    | act(6) << 3
                    | act(11) << 7
                    | act(EXC_PENDSV) << 10
                    | act(EXC_SYSTICK) << 11
            }
            SCB_CFSR => cfsr(last_fault, last_fault.1 == last_fault.2),
            SCB_MMFAR | SCB_BFAR if cfsr(last_fault, false) & (1 << 7) != 0 => last_fault.1,
            SCB_CPACR => self.cpacr,
            FPU_FPCCR => self.fpccr,
            FPU_FPCAR => self.fpcar,
            FPU_FPDSCR => self.fpdscr,
            // Everything else in the SCS reads as zero.
            _ => 0,
        }
    }

    /// A write of `size` bytes at `addr` (in the SCS). Priority registers
    /// take byte, halfword and word writes; the others only aligned words
    /// (narrower writes to them are ignored).
    pub(crate) fn write(&mut self, addr: u32, size: usize, value: u32, now: u64) -> ScsEffect {
        self.tick(now);
        let ipr = NVIC_IPR..NVIC_IPR + NVIC_IRQS;
        let shpr = SCB_SHPR1..SCB_SHPR3 + 4;
        if ipr.contains(&addr) || shpr.contains(&addr) {
            let first = if ipr.contains(&addr) {
                EXC_IRQ0 as usize + (addr - NVIC_IPR) as usize
            } else {
                4 + (addr - SCB_SHPR1) as usize
            };
            for (k, b) in value.to_le_bytes().iter().take(size.min(4)).enumerate() {
                if let Some(p) = self.prio.get_mut(first + k) {
                    *p = b & PRIO_MASK;
                }
            }
            return ScsEffect::Recheck;
        }
        if size != 4 || !addr.is_multiple_of(4) {
            return ScsEffect::None;
        }
        match addr {
            SCS_ACTLR => self.actlr = value & 0x307,
            SYST_CSR => {
                let on = value & 1 != 0;
                if on && !self.systick.enable {
                    let v = self.systick.stopped;
                    self.systick.enable = true;
                    self.systick.rebase(now, v);
                } else if !on && self.systick.enable {
                    let v = self.systick.value(now);
                    self.systick.enable = false;
                    self.systick.stopped = v;
                }
                self.systick.tickint = value & 2 != 0;
                self.systick.clksource = value & 4 != 0;
                return ScsEffect::Recheck;
            }
            SYST_RVR => {
                let v = self.systick.value(now);
                self.systick.rvr = value & 0x00ff_ffff;
                self.systick.rebase(now, v);
            }
            SYST_CVR => {
                self.systick.countflag = false;
                self.systick.rebase(now, 0);
            }
            NVIC_ISER => {
                self.enabled |= value;
                return ScsEffect::Recheck;
            }
            NVIC_ICER => self.enabled &= !value,
            NVIC_ISPR => {
                self.pend |= u64::from(value) << EXC_IRQ0;
                return ScsEffect::Recheck;
            }
            NVIC_ICPR => self.pend &= !(u64::from(value) << EXC_IRQ0),
            NVIC_STIR if value < NVIC_IRQS => {
                self.pend |= 1 << (u32::from(EXC_IRQ0) + value);
                return ScsEffect::Recheck;
            }
            SCB_ICSR => {
                if value & (1 << 31) != 0 {
                    self.pend |= 1 << EXC_NMI;
                }
                if value & (1 << 28) != 0 {
                    self.pend |= 1 << EXC_PENDSV;
                } else if value & (1 << 27) != 0 {
                    self.pend &= !(1 << EXC_PENDSV);
                }
                if value & (1 << 26) != 0 {
                    self.pend |= 1 << EXC_SYSTICK;
                } else if value & (1 << 25) != 0 {
                    self.pend &= !(1 << EXC_SYSTICK);
                }
                return ScsEffect::Recheck;
            }
            SCB_VTOR => self.vtor = value & 0xffff_ff80,
            SCB_AIRCR if value >> 16 == 0x05fa => {
                self.prigroup = (value >> 8) & 7;
                if value & (1 << 2) != 0 {
                    return ScsEffect::ResetRequest;
                }
            }
            SCB_SCR => self.scr = value & 0x16,
            SCB_CCR => self.ccr = (value & 0x31b) | 0x200,
            SCB_SHCSR => self.shcsr_enables = value & (7 << 16),
            SCB_CPACR => self.cpacr = value & (0xf << 20),
            FPU_FPCCR => self.fpccr = value & 0xc000_01ff,
            FPU_FPCAR => self.fpcar = value & !7,
            FPU_FPDSCR => self.fpdscr = value & 0x07c0_0000,
            // Read-only and unmodelled registers ignore writes.
            _ => {}
        }
        ScsEffect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::scs::{SCS_BASE, SCS_SIZE};

    /// SysTick from its definition: count down one per tick, reload RVR
    /// after reaching zero; a zero raises the interrupt.
    #[test]
    fn systick_counts_like_the_definition() {
        let mut s = Scs::default();
        s.write(SYST_RVR, 4, 9, 0);
        s.write(SYST_CVR, 4, 0, 0);
        s.write(SYST_CSR, 4, 7, 0);
        let (mut value, mut zeros) = (0u32, 0u32);
        for k in 1..100u64 {
            value = if value == 0 { 9 } else { value - 1 };
            if value == 0 {
                zeros += 1;
            }
            let now = k * TICK_NS;
            assert_eq!(s.systick.value(now), value, "tick {k}");
            assert_eq!(s.systick.zeros(k), u64::from(zeros), "tick {k}");
        }
        assert_eq!(s.until_systick(0), Some(10 * TICK_NS));
        s.tick(10 * TICK_NS);
        assert_eq!(s.take(false, false), Some(EXC_SYSTICK));
        assert_eq!(s.take(false, true), None, "PRIMASK masks it");
        s.enter(EXC_SYSTICK);
        assert_eq!(s.take(false, false), None);
        assert_eq!(s.exit(), Some(EXC_SYSTICK));
    }

    /// Hostile firmware: any access of any size anywhere in the page, any
    /// value, at any time, never panics; what is pending and deliverable
    /// stays consistent (an exception is taken at most once until it ends).
    #[test]
    fn random_accesses_never_break_the_state() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut s = Scs::default();
        let mut now = 0u64;
        for _ in 0..200_000 {
            let r = next();
            let addr = SCS_BASE + (r as u32 & (SCS_SIZE - 1));
            let size = [1usize, 2, 4, 4][(r >> 12) as usize % 4];
            let value = (r >> 16) as u32;
            now += (r >> 56) * 1000;
            if r & (1 << 60) != 0 {
                s.write(addr, size, value, now);
            } else {
                s.read(addr, now, r & (1 << 61) != 0, (1, value, value ^ 1));
            }
            let doorbell = r & (1 << 62) != 0;
            if let Some(exc) = s.take(doorbell, r & (1 << 63) != 0) {
                assert!(!s.active().contains(&exc));
                s.enter(exc);
            }
            if r & (3 << 58) == 0 {
                s.exit();
            }
            assert!(s.active().len() <= EXCEPTIONS);
            let _ = s.until_systick(now);
        }
    }

    #[test]
    fn doorbell_irq_needs_enabling_and_respects_priority() {
        let mut s = Scs::default();
        assert!(s.take(true, false).is_none());
        s.write(NVIC_ISER, 4, 1, 0);
        assert_eq!(s.take(true, false), Some(EXC_IRQ0));
        // SysTick at a higher priority (lower value) preempts the IRQ.
        s.write(NVIC_IPR, 1, 0x80, 0);
        s.enter(EXC_IRQ0);
        s.write(SCB_ICSR, 4, 1 << 26, 0);
        assert_eq!(s.take(true, false), Some(EXC_SYSTICK));
        assert_eq!(s.read(SCB_ICSR, 0, true, (0, 0, 0)) & 0x1ff, 16);
        assert_eq!(s.read(SCB_CPUID, 0, false, (0, 0, 0)), CPUID);
    }
}
