//! Per-vcoproc statistics, charged by the runner from what actually ran,
//! and the latency histograms a pcoproc keeps.

use crate::fault::FaultReason;
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
    /// Faults by reason: index `FaultReason::code() - 1` (names from
    /// [`FaultReason::KINDS`]).
    pub faults_by_reason: [u64; FaultReason::KINDS.len()],
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

/// Upper bounds of the [`Histogram`] buckets, ns: 1 µs to 1 s in 1-2-5
/// steps (a last, unbounded bucket follows).
pub const BUCKETS_NS: [u64; 19] = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
];

/// A histogram of durations with the fixed buckets [`BUCKETS_NS`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one counts
    /// those over the largest bound.
    pub counts: [u64; BUCKETS_NS.len() + 1],
    /// Sum of the observations, ns.
    pub sum_ns: u64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Count one duration of `ns`.
    pub fn observe(&mut self, ns: u64) {
        let i = BUCKETS_NS.partition_point(|&b| b < ns);
        self.counts[i] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.count += 1;
    }
}

/// The latency histograms of one pcoproc.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LatencyStats {
    /// Context switches: how long the device's switch hook took for each
    /// completed switch onto a vcoproc (the pcoproc's clock).
    pub switch: Histogram,
    /// Wake→run: from a vcoproc's start or doorbell wake-up to the slice
    /// that followed it.
    pub run_delay: Histogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let mut h = Histogram::default();
        for ns in [0, 1_000, 1_001, 999_999_999, 1_000_000_000, 5_000_000_000] {
            h.observe(ns);
        }
        assert_eq!(h.counts[0], 2, "0 and exactly 1 µs are in the first bucket");
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[BUCKETS_NS.len() - 1], 2, "up to and including 1 s");
        assert_eq!(h.counts[BUCKETS_NS.len()], 1, "over 1 s");
        assert_eq!(h.count, 6);
        assert_eq!(
            h.sum_ns,
            1_000 + 1_001 + 999_999_999 + 1_000_000_000 + 5_000_000_000
        );
    }
}
