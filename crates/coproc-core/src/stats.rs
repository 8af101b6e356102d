//! Per-vcoproc statistics, charged by the runner from what actually ran.

use serde::Serialize;

/// Counters of one vcoproc.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct VcoprocStats {
    /// Device time this vcoproc ran, as measured by the device, in ns.
    pub run_ns: u64,
    /// Slices it was given.
    pub slices: u64,
    /// Context switches onto this vcoproc.
    pub switches: u64,
    /// Faults it took.
    pub faults: u64,
    /// Doorbells its domain rang.
    pub doorbells: u64,
    /// Times it parked waiting for a doorbell.
    pub waits: u64,
    /// Slices cut short by a preempt request.
    pub preemptions: u64,
    /// Total ns from its wake-ups (start, doorbell) to the slice that
    /// followed each (schedstat's run delay).
    pub run_delay_ns: u64,
    /// Longest such wake→run latency.
    pub run_delay_max_ns: u64,
}
