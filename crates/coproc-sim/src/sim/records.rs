//! What the sim records: completed jobs, per-context totals, switches.

use super::VcoprocId;

/// One completed job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRecord {
    /// When it arrived.
    pub arrival_ns: u64,
    /// When it first ran.
    pub start_ns: u64,
    /// When it finished.
    pub finish_ns: u64,
    /// Its deadline, if it had one.
    pub deadline_ns: Option<u64>,
}

impl JobRecord {
    /// Arrival to finish.
    pub fn response_ns(&self) -> u64 {
        self.finish_ns - self.arrival_ns
    }

    /// Whether it finished by its deadline (true without one).
    pub fn met_deadline(&self) -> bool {
        self.deadline_ns.is_none_or(|d| self.finish_ns <= d)
    }
}

/// What the sim recorded about one context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextRecord {
    /// A workload is loaded.
    pub loaded: bool,
    /// Device time it ran in completed runs, as the device measured it
    /// (the sum of the `ran` it returned: what the runner charged).
    pub ran_ns: u64,
    /// Device time of the run in progress, if it is running now (parked in
    /// a run at the horizon): not yet returned, nor charged.
    pub in_run_ns: u64,
    /// Runs it was given.
    pub runs: u64,
    /// Completed jobs, in order (the first [`MAX_JOB_RECORDS`](crate::MAX_JOB_RECORDS)).
    pub completed: Vec<JobRecord>,
    /// Jobs completed in all.
    pub jobs_done: u64,
    /// Jobs arrived and not finished (the one in progress included).
    pub pending: u64,
    /// Resets of the context.
    pub resets: u64,
    /// Faults injected.
    pub faults: u64,
    /// Completed switches onto it.
    pub switches_in: u64,
    /// Times the waker was called for it.
    pub wakeups: u64,
    /// It returned `Waiting` and has not run since.
    pub waiting: bool,
    /// It returned `Exited(0)`.
    pub exited: bool,
    /// Its mappings as (iova, len).
    pub mappings: Vec<(u64, u64)>,
}

/// One completed context switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwitchRecord {
    /// The context that was on the device.
    pub from: Option<VcoprocId>,
    /// The one put on it.
    pub to: Option<VcoprocId>,
    /// When the switch completed.
    pub at_ns: u64,
}
