//! The firmware ABI: every vcoproc's memory map and its control block
//! registers, defined once in `coproc-abi` (`coproc_abi::control`) and
//! re-exported here. Mirrors `firmware/sdk/coproc.h`; a test checks they
//! agree.

pub use coproc_abi::control::*;

/// The Cortex-M System Control Space as the mcu class models it (mirrors
/// the `COPROC_SCS*`, `COPROC_SYST*`, `COPROC_NVIC*`, `COPROC_SCB*` and
/// `COPROC_FPU*` constants of `coproc.h`).
pub mod scs {
    /// Base of the System Control Space.
    pub const SCS_BASE: u32 = 0xe000_e000;
    /// Its size (one page).
    pub const SCS_SIZE: u32 = 0x1000;
    /// Auxiliary control (stored, no effect).
    pub const SCS_ACTLR: u32 = 0xe000_e008;
    /// SysTick control and status.
    pub const SYST_CSR: u32 = 0xe000_e010;
    /// SysTick reload value.
    pub const SYST_RVR: u32 = 0xe000_e014;
    /// SysTick current value.
    pub const SYST_CVR: u32 = 0xe000_e018;
    /// SysTick calibration.
    pub const SYST_CALIB: u32 = 0xe000_e01c;
    /// Interrupt set-enable.
    pub const NVIC_ISER: u32 = 0xe000_e100;
    /// Interrupt clear-enable.
    pub const NVIC_ICER: u32 = 0xe000_e180;
    /// Interrupt set-pending.
    pub const NVIC_ISPR: u32 = 0xe000_e200;
    /// Interrupt clear-pending.
    pub const NVIC_ICPR: u32 = 0xe000_e280;
    /// Interrupt active bits.
    pub const NVIC_IABR: u32 = 0xe000_e300;
    /// Interrupt priority bytes.
    pub const NVIC_IPR: u32 = 0xe000_e400;
    /// CPUID base.
    pub const SCB_CPUID: u32 = 0xe000_ed00;
    /// Interrupt control and state.
    pub const SCB_ICSR: u32 = 0xe000_ed04;
    /// Vector table offset.
    pub const SCB_VTOR: u32 = 0xe000_ed08;
    /// Application interrupt and reset control.
    pub const SCB_AIRCR: u32 = 0xe000_ed0c;
    /// System control.
    pub const SCB_SCR: u32 = 0xe000_ed10;
    /// Configuration and control.
    pub const SCB_CCR: u32 = 0xe000_ed14;
    /// System handler priorities 4..7.
    pub const SCB_SHPR1: u32 = 0xe000_ed18;
    /// System handler priorities 8..11.
    pub const SCB_SHPR2: u32 = 0xe000_ed1c;
    /// System handler priorities 12..15.
    pub const SCB_SHPR3: u32 = 0xe000_ed20;
    /// System handler control and state.
    pub const SCB_SHCSR: u32 = 0xe000_ed24;
    /// Configurable fault status.
    pub const SCB_CFSR: u32 = 0xe000_ed28;
    /// Hard fault status.
    pub const SCB_HFSR: u32 = 0xe000_ed2c;
    /// MemManage fault address.
    pub const SCB_MMFAR: u32 = 0xe000_ed34;
    /// Bus fault address.
    pub const SCB_BFAR: u32 = 0xe000_ed38;
    /// Coprocessor access control.
    pub const SCB_CPACR: u32 = 0xe000_ed88;
    /// Software trigger interrupt.
    pub const NVIC_STIR: u32 = 0xe000_ef00;
    /// FP context control.
    pub const FPU_FPCCR: u32 = 0xe000_ef34;
    /// FP context address.
    pub const FPU_FPCAR: u32 = 0xe000_ef38;
    /// FP default status control.
    pub const FPU_FPDSCR: u32 = 0xe000_ef3c;
    /// CPUID: Cortex-M4 r0p1.
    pub const CPUID: u32 = 0x410f_c241;
    /// SysTick ticks per second of the vcoproc's device time.
    pub const SYSTICK_HZ: u32 = 100_000_000;
    /// External interrupts.
    pub const NVIC_IRQS: u32 = 32;
    /// The doorbell's interrupt line.
    pub const IRQ_DOORBELL: u32 = 0;
    /// Exit code (or'ed with the exception number) of the SDK's default
    /// handler.
    pub const EXIT_UNHANDLED: u32 = 0xe000_0000;
    /// Exit code of a vcoproc that wrote AIRCR.SYSRESETREQ.
    pub const EXIT_SYSRESETREQ: u32 = 0xe000_1000;

    /// Every constant by its C name, for the header check.
    pub const ALL: &[(&str, u32)] = &[
        ("COPROC_SCS_BASE", SCS_BASE),
        ("COPROC_SCS_ACTLR", SCS_ACTLR),
        ("COPROC_SYST_CSR", SYST_CSR),
        ("COPROC_SYST_RVR", SYST_RVR),
        ("COPROC_SYST_CVR", SYST_CVR),
        ("COPROC_SYST_CALIB", SYST_CALIB),
        ("COPROC_NVIC_ISER", NVIC_ISER),
        ("COPROC_NVIC_ICER", NVIC_ICER),
        ("COPROC_NVIC_ISPR", NVIC_ISPR),
        ("COPROC_NVIC_ICPR", NVIC_ICPR),
        ("COPROC_NVIC_IABR", NVIC_IABR),
        ("COPROC_NVIC_IPR", NVIC_IPR),
        ("COPROC_SCB_CPUID", SCB_CPUID),
        ("COPROC_SCB_ICSR", SCB_ICSR),
        ("COPROC_SCB_VTOR", SCB_VTOR),
        ("COPROC_SCB_AIRCR", SCB_AIRCR),
        ("COPROC_SCB_SCR", SCB_SCR),
        ("COPROC_SCB_CCR", SCB_CCR),
        ("COPROC_SCB_SHPR1", SCB_SHPR1),
        ("COPROC_SCB_SHPR2", SCB_SHPR2),
        ("COPROC_SCB_SHPR3", SCB_SHPR3),
        ("COPROC_SCB_SHCSR", SCB_SHCSR),
        ("COPROC_SCB_CFSR", SCB_CFSR),
        ("COPROC_SCB_HFSR", SCB_HFSR),
        ("COPROC_SCB_MMFAR", SCB_MMFAR),
        ("COPROC_SCB_BFAR", SCB_BFAR),
        ("COPROC_SCB_CPACR", SCB_CPACR),
        ("COPROC_NVIC_STIR", NVIC_STIR),
        ("COPROC_FPU_FPCCR", FPU_FPCCR),
        ("COPROC_FPU_FPCAR", FPU_FPCAR),
        ("COPROC_FPU_FPDSCR", FPU_FPDSCR),
        ("COPROC_CPUID", CPUID),
        ("COPROC_SYSTICK_HZ", SYSTICK_HZ),
        ("COPROC_NVIC_IRQS", NVIC_IRQS),
        ("COPROC_IRQ_DOORBELL", IRQ_DOORBELL),
        ("COPROC_EXIT_UNHANDLED", EXIT_UNHANDLED),
        ("COPROC_EXIT_SYSRESETREQ", EXIT_SYSRESETREQ),
    ];
}
