//! The mcu class's firmware ABI: every vcoproc's memory map and its control
//! block registers. Mirrors `firmware/sdk/coproc.h`; a test in coproc-mcu
//! checks they agree. The mailbox size is the framework's for every class
//! (`coproc_core::control::MBOX_WORDS`).

/// Code memory: firmware text and rodata (read/exec).
pub const CODE_BASE: u32 = 0x0000_0000;
/// Default size of code memory (1 MiB; an mcu pcoproc's `code_kib` option
/// sets its own).
pub const CODE_SIZE: u32 = 0x0010_0000;
/// Data memory: data, bss, stack (read/write).
pub const DATA_BASE: u32 = 0x2000_0000;
/// Default size of data memory (256 KiB; an mcu pcoproc's `data_kib`
/// option sets its own).
pub const DATA_SIZE: u32 = 0x0004_0000;
/// The control block page. Its address keeps its engine TLB slots away from
/// those of the pages firmware uses most: the starts of code, data and the
/// iova window all lie at multiples of 512 MiB and share slot 0 at every
/// table size, and a control block there had its (MMIO) TLB entry evicted
/// and refilled on every pass of a loop that touched both, which the
/// engine miscounts (docs/performance.md, "the engine's TLB"). Its 1 KiB
/// page number, 0x12AAA8, has alternating low bits, so at every table size
/// of 2^6 to 2^19 entries its slots lie in the middle half of the table,
/// away from the first and last pages of each region.
pub const CB_BASE: u32 = 0x4AAA_A000;
/// Its size.
pub const CB_SIZE: u32 = 0x0000_1000;
/// Window where the domain's mappings appear.
pub const IOVA_BASE: u32 = 0x6000_0000;
/// Its size.
pub const IOVA_SIZE: u32 = 0x2000_0000;

/// ro: [`MAGIC`].
pub const CB_MAGIC: u32 = 0x000;
/// ro: [`ABI_VERSION`].
pub const CB_VERSION: u32 = 0x004;
/// ro: the vcoproc's id.
pub const CB_VCOPROC: u32 = 0x008;
/// ro: doorbells rung so far (wrapping count).
pub const CB_DOORBELL: u32 = 0x010;
/// rw: doorbell count the firmware has handled.
pub const CB_DOORBELL_ACK: u32 = 0x00c;
/// wo: park while DOORBELL == DOORBELL_ACK.
pub const CB_WAIT: u32 = 0x014;
/// wo: notification sequence number; a new value notifies the domain.
pub const CB_NOTIFY: u32 = 0x018;
/// rw: tag of the next notification.
pub const CB_NOTIFY_TAG: u32 = 0x024;
/// wo: stop with an exit code.
pub const CB_EXIT: u32 = 0x01c;
/// wo: (sequence << 8) | byte; a new sequence appends the byte.
pub const CB_CONSOLE: u32 = 0x020;
/// ro: run time in ns, low word; latches the high word.
pub const CB_TIME_LO: u32 = 0x028;
/// ro: latched high word of the run time.
pub const CB_TIME_HI: u32 = 0x02c;
/// ro: reason code of the context's latest fault since its firmware was loaded (0: none).
pub const CB_FAULT_REASON: u32 = 0x030;
/// ro: its address.
pub const CB_FAULT_ADDR: u32 = 0x034;
/// ro: its pc.
pub const CB_FAULT_PC: u32 = 0x038;
/// wo: a full memory barrier as the host's other threads see it, between
/// the firmware's memory accesses before the write and after it (the
/// core's own barrier instructions order only what the core sees).
pub const CB_FENCE: u32 = 0x03c;
/// ro: mailbox domain → firmware.
pub const CB_MBOX_IN: u32 = 0x100;
/// rw: mailbox firmware → domain.
pub const CB_MBOX_OUT: u32 = 0x140;
/// Words per mailbox.
pub const MBOX_WORDS: u32 = 16;

/// "COPR".
pub const MAGIC: u32 = 0x434f_5052;
/// ABI version.
pub const ABI_VERSION: u32 = 2;

/// Every constant by its C name, for the header check.
pub const ALL: &[(&str, u32)] = &[
    ("COPROC_CODE_BASE", CODE_BASE),
    ("COPROC_CODE_SIZE", CODE_SIZE),
    ("COPROC_DATA_BASE", DATA_BASE),
    ("COPROC_DATA_SIZE", DATA_SIZE),
    ("COPROC_CB_BASE", CB_BASE),
    ("COPROC_CB_SIZE", CB_SIZE),
    ("COPROC_IOVA_BASE", IOVA_BASE),
    ("COPROC_IOVA_SIZE", IOVA_SIZE),
    ("COPROC_CB_MAGIC", CB_MAGIC),
    ("COPROC_CB_VERSION", CB_VERSION),
    ("COPROC_CB_VCOPROC", CB_VCOPROC),
    ("COPROC_CB_DOORBELL", CB_DOORBELL),
    ("COPROC_CB_DOORBELL_ACK", CB_DOORBELL_ACK),
    ("COPROC_CB_NOTIFY_TAG", CB_NOTIFY_TAG),
    ("COPROC_CB_WAIT", CB_WAIT),
    ("COPROC_CB_NOTIFY", CB_NOTIFY),
    ("COPROC_CB_EXIT", CB_EXIT),
    ("COPROC_CB_CONSOLE", CB_CONSOLE),
    ("COPROC_CB_TIME_LO", CB_TIME_LO),
    ("COPROC_CB_TIME_HI", CB_TIME_HI),
    ("COPROC_CB_FAULT_REASON", CB_FAULT_REASON),
    ("COPROC_CB_FAULT_ADDR", CB_FAULT_ADDR),
    ("COPROC_CB_FAULT_PC", CB_FAULT_PC),
    ("COPROC_CB_FENCE", CB_FENCE),
    ("COPROC_CB_MBOX_IN", CB_MBOX_IN),
    ("COPROC_CB_MBOX_OUT", CB_MBOX_OUT),
    ("COPROC_MBOX_WORDS", MBOX_WORDS),
    ("COPROC_MAGIC", MAGIC),
    ("COPROC_ABI_VERSION", ABI_VERSION),
];
