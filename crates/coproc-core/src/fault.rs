//! Fault records: what went wrong on the device, for which vcoproc, where.

use crate::ids::{DomainId, VcoprocId};
use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// The kind of access that faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// A data load.
    Read,
    /// A data store.
    Write,
    /// An instruction fetch.
    Fetch,
    /// Not a memory access (bad instruction, watchdog, ...).
    None,
}

/// Why a vcoproc faulted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultReason {
    /// An access outside the vcoproc's address space or against its permissions.
    AccessViolation,
    /// An undefined or unsupported instruction.
    InvalidInstruction,
    /// An exception the device class does not support (SVC, BKPT, ...).
    Exception(String),
    /// The firmware image was rejected at run time (the loader catches most).
    BadFirmware(String),
    /// A context switch answered "failed": the device reset this context.
    SwitchFailed(String),
    /// The device reported an error it could not attribute more precisely.
    Device(String),
    /// A demand fault was not resolved in time: no mapping covered the
    /// address (the record's `addr` and `access`) before the stall timeout.
    PageFaultTimeout,
    /// A job ran past the device's watchdog bound.
    Watchdog,
    /// The device was lost while this context's work ran (it was
    /// recreated; the other contexts were restored).
    DeviceLost,
}

impl fmt::Display for FaultReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultReason::AccessViolation => f.write_str("access violation"),
            FaultReason::InvalidInstruction => f.write_str("invalid instruction"),
            FaultReason::Exception(e) => write!(f, "unsupported exception: {e}"),
            FaultReason::BadFirmware(e) => write!(f, "bad firmware: {e}"),
            FaultReason::SwitchFailed(e) => write!(f, "context switch failed: {e}"),
            FaultReason::Device(e) => write!(f, "device error: {e}"),
            FaultReason::PageFaultTimeout => f.write_str("page fault not resolved in time"),
            FaultReason::Watchdog => f.write_str("job ran past the watchdog bound"),
            FaultReason::DeviceLost => f.write_str("device lost during this vcoproc's job"),
        }
    }
}

impl FaultReason {
    /// Short names of the reasons, by `code() - 1` (the `reason` label of
    /// the daemon's fault metrics).
    pub const KINDS: [&'static str; 9] = [
        "access_violation",
        "invalid_instruction",
        "exception",
        "bad_firmware",
        "switch_failed",
        "device",
        "page_fault_timeout",
        "watchdog",
        "device_lost",
    ];

    /// This reason's short name (one of [`FaultReason::KINDS`]).
    pub fn kind(&self) -> &'static str {
        Self::KINDS[self.kind_index()]
    }

    /// Index of this reason in [`FaultReason::KINDS`].
    pub fn kind_index(&self) -> usize {
        // Codes run from 1 to KINDS.len().
        usize::try_from(self.code()).map_or(0, |c| c.saturating_sub(1))
    }

    /// The code firmware reads back from its control block after a reset.
    pub fn code(&self) -> u32 {
        match self {
            FaultReason::AccessViolation => 1,
            FaultReason::InvalidInstruction => 2,
            FaultReason::Exception(_) => 3,
            FaultReason::BadFirmware(_) => 4,
            FaultReason::SwitchFailed(_) => 5,
            FaultReason::Device(_) => 6,
            FaultReason::PageFaultTimeout => 7,
            FaultReason::Watchdog => 8,
            FaultReason::DeviceLost => 9,
        }
    }
}

/// What a device reports when a context faults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceFault {
    /// The faulting address (iova) where the fault is a memory access.
    pub addr: Option<u64>,
    /// The access kind.
    pub access: Access,
    /// Program counter (mcu) or job index (gpu) at the fault.
    pub pc: Option<u64>,
    /// Why.
    pub reason: FaultReason,
}

/// A fault as the framework records it: the device's report plus who and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultRecord {
    /// The faulted vcoproc.
    pub vcoproc: VcoprocId,
    /// Its domain.
    pub domain: DomainId,
    /// Nanoseconds since the pcoproc started.
    pub at_ns: u64,
    /// When it was recorded, wall clock: nanoseconds since the Unix epoch
    /// (for people and logs; `at_ns` orders records).
    pub at_unix_ns: u64,
    /// What the device reported.
    #[serde(flatten)]
    pub fault: DeviceFault,
}

impl fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.vcoproc, self.fault.reason)?;
        if let Some(a) = self.fault.addr {
            write!(f, " at {a:#x}")?;
        }
        if self.fault.access != Access::None {
            write!(f, " ({:?})", self.fault.access)?;
        }
        if let Some(pc) = self.fault.pc {
            write!(f, " pc {pc:#x}")?;
        }
        Ok(())
    }
}

/// Shortest demand-fault stall timeout accepted.
pub const MIN_STALL_TIMEOUT: Duration = Duration::from_millis(1);
/// Longest demand-fault stall timeout accepted.
pub const MAX_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A pending demand fault: where a stalled vcoproc waits for a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PageFault {
    /// The address the device reported.
    pub addr: u64,
    /// The access kind.
    pub access: Access,
    /// When it stalled (ns since the pcoproc started).
    pub since_ns: u64,
    /// When the stall turns into a fault.
    pub deadline_ns: u64,
}
