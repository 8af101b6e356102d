//! The simulated firmware: a description of the work a context does.
//!
//! An image is a [`Workload`] as JSON. [`Workload::from_image`] is the only
//! way in and refuses anything it cannot run exactly: unknown fields, times
//! past [`MAX_NS`], sections outside their job, periods shorter than
//! [`MIN_GRANULE_NS`], more than [`MAX_JOBS`] explicit jobs, images over
//! [`MAX_IMAGE_BYTES`]. Periodic jobs are generated lazily, so a count of
//! `u64::MAX` costs nothing.

use crate::SimError;
use serde::{Deserialize, Serialize};

/// Largest time or length accepted anywhere in a workload (2^62 ns, about
/// 146 years): sums of two never overflow.
pub const MAX_NS: u64 = 1 << 62;
/// Shortest period and hog dispatch accepted (1 us): bounds the number of
/// events per unit of virtual time.
pub const MIN_GRANULE_NS: u64 = 1_000;
/// Most explicit jobs in one workload.
pub const MAX_JOBS: usize = 100_000;
/// Largest image accepted.
pub const MAX_IMAGE_BYTES: usize = 16 << 20;
/// Length of one hog dispatch under `dispatch_only` when the workload does
/// not say.
pub const DEFAULT_HOG_DISPATCH_NS: u64 = 100_000;

/// One explicit job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Absolute virtual time at which it arrives.
    #[serde(default)]
    pub at_ns: u64,
    /// Work it needs, in ns of device time.
    pub len_ns: u64,
    /// A section `(offset_ns, len_ns)` of the job that cannot be preempted
    /// (neither by a preempt request nor by the end of the budget).
    #[serde(default)]
    pub nonpreempt: Option<(u64, u64)>,
    /// Offset into the job at which the context faults (once: after a reset
    /// the job runs again without the fault).
    #[serde(default)]
    pub fault_at_ns: Option<u64>,
    /// Absolute deadline, only reported.
    #[serde(default)]
    pub deadline_ns: Option<u64>,
}

/// Jobs released at a fixed period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Periodic {
    /// First release (absolute).
    #[serde(default)]
    pub first_ns: u64,
    /// Time between releases; a job's deadline is the next release.
    pub period_ns: u64,
    /// Work of each job.
    pub len_ns: u64,
    /// Number of releases (None: forever).
    #[serde(default)]
    pub count: Option<u64>,
}

/// What a simulated context does: its firmware.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Explicit jobs (any order; they run in order of arrival).
    #[serde(default)]
    pub jobs: Vec<Job>,
    /// Periodic jobs, generated lazily.
    #[serde(default)]
    pub periodic: Option<Periodic>,
    /// Always has work: when no job is pending it runs background work
    /// forever (jobs take precedence when they arrive).
    #[serde(default)]
    pub hog: bool,
    /// Under `dispatch_only`, the hog's work is a stream of dispatches of
    /// this length (default [`DEFAULT_HOG_DISPATCH_NS`]).
    #[serde(default)]
    pub hog_dispatch_ns: Option<u64>,
    /// After its last job (finite workloads only) the context exits with
    /// code 0 instead of waiting forever.
    #[serde(default)]
    pub exit_when_done: bool,
}

impl Workload {
    /// A context that always has work.
    pub fn hog() -> Workload {
        Workload {
            hog: true,
            ..Workload::default()
        }
    }

    /// Periodic jobs only.
    pub fn periodic(first_ns: u64, period_ns: u64, len_ns: u64, count: Option<u64>) -> Workload {
        Workload {
            periodic: Some(Periodic {
                first_ns,
                period_ns,
                len_ns,
                count,
            }),
            ..Workload::default()
        }
    }

    /// Explicit jobs only.
    pub fn jobs(jobs: Vec<Job>) -> Workload {
        Workload {
            jobs,
            ..Workload::default()
        }
    }

    /// The firmware image (JSON) of this workload.
    pub fn to_image(&self) -> Vec<u8> {
        // Plain data with no maps and no custom serialisers: cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parse and check an image.
    pub fn from_image(image: &[u8]) -> Result<Workload, SimError> {
        if image.len() > MAX_IMAGE_BYTES {
            return Err(bad(format!(
                "image of {} bytes exceeds {MAX_IMAGE_BYTES}",
                image.len()
            )));
        }
        // An object, not the sequence form serde would also take.
        if image.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(bad("not a JSON object".into()));
        }
        let w: Workload =
            serde_json::from_slice(image).map_err(|e| bad(format!("not a workload: {e}")))?;
        w.validate()?;
        Ok(w)
    }

    /// Check every field against the limits.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.jobs.len() > MAX_JOBS {
            return Err(bad(format!(
                "{} jobs exceed the limit of {MAX_JOBS}",
                self.jobs.len()
            )));
        }
        for (i, j) in self.jobs.iter().enumerate() {
            time(&format!("jobs[{i}].at_ns"), j.at_ns)?;
            time(&format!("jobs[{i}].len_ns"), j.len_ns)?;
            if let Some(d) = j.deadline_ns {
                time(&format!("jobs[{i}].deadline_ns"), d)?;
            }
            if let Some((o, l)) = j.nonpreempt {
                if o.checked_add(l).is_none_or(|end| end > j.len_ns) {
                    return Err(bad(format!(
                        "jobs[{i}].nonpreempt ({o}, {l}) lies outside the job of {} ns",
                        j.len_ns
                    )));
                }
            }
            if let Some(f) = j.fault_at_ns {
                if f > j.len_ns {
                    return Err(bad(format!(
                        "jobs[{i}].fault_at_ns {f} lies outside the job of {} ns",
                        j.len_ns
                    )));
                }
            }
        }
        if let Some(p) = &self.periodic {
            time("periodic.first_ns", p.first_ns)?;
            time("periodic.len_ns", p.len_ns)?;
            time("periodic.period_ns", p.period_ns)?;
            if p.period_ns < MIN_GRANULE_NS {
                return Err(bad(format!(
                    "periodic.period_ns {} is under {MIN_GRANULE_NS}",
                    p.period_ns
                )));
            }
        }
        if let Some(h) = self.hog_dispatch_ns {
            time("hog_dispatch_ns", h)?;
            if h < MIN_GRANULE_NS {
                return Err(bad(format!(
                    "hog_dispatch_ns {h} is under {MIN_GRANULE_NS}"
                )));
            }
        }
        Ok(())
    }

    /// Whether the workload has a last job (no hog, no endless period).
    pub fn is_finite(&self) -> bool {
        !self.hog && self.periodic.is_none_or(|p| p.count.is_some())
    }
}

fn bad(msg: String) -> SimError {
    SimError::BadWorkload(msg)
}

fn time(field: &str, v: u64) -> Result<(), SimError> {
    if v > MAX_NS {
        Err(bad(format!("{field} {v} exceeds {MAX_NS}")))
    } else {
        Ok(())
    }
}

/// A job that has arrived, with its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Active {
    pub arrival: u64,
    pub len: u64,
    pub nonpreempt: Option<(u64, u64)>,
    pub fault_at: Option<u64>,
    pub deadline: Option<u64>,
    /// Work done so far.
    pub done: u64,
    /// When it first ran.
    pub started: Option<u64>,
}

/// Releases a workload's jobs in order of arrival, lazily.
#[derive(Debug, Clone)]
pub(crate) struct Arrivals {
    /// Explicit jobs sorted by arrival (stable: ties keep their order).
    jobs: Vec<Job>,
    next_job: usize,
    periodic: Option<Periodic>,
    /// Index of the next periodic release.
    next_k: u64,
}

impl Arrivals {
    pub fn new(w: &Workload) -> Arrivals {
        let mut jobs = w.jobs.clone();
        jobs.sort_by_key(|j| j.at_ns);
        Arrivals {
            jobs,
            next_job: 0,
            periodic: w.periodic,
            next_k: 0,
        }
    }

    /// Release time of periodic job `k`, if there is one.
    fn release(&self, k: u64) -> Option<u64> {
        let p = self.periodic?;
        if p.count.is_some_and(|c| k >= c) {
            return None;
        }
        k.checked_mul(p.period_ns)?.checked_add(p.first_ns)
    }

    /// When the next job arrives (None: never).
    pub fn next(&self) -> Option<u64> {
        let e = self.jobs.get(self.next_job).map(|j| j.at_ns);
        let p = self.release(self.next_k);
        match (e, p) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Take the next job (explicit first on a tie).
    pub fn pop(&mut self) -> Option<Active> {
        let e = self.jobs.get(self.next_job).copied();
        let p = self.release(self.next_k);
        match (e, p) {
            (Some(j), p) if p.is_none_or(|p| j.at_ns <= p) => {
                self.next_job += 1;
                Some(Active {
                    arrival: j.at_ns,
                    len: j.len_ns,
                    nonpreempt: j.nonpreempt,
                    fault_at: j.fault_at_ns,
                    deadline: j.deadline_ns,
                    done: 0,
                    started: None,
                })
            }
            (_, Some(at)) => {
                let per = self.periodic?;
                self.next_k += 1;
                Some(Active {
                    arrival: at,
                    len: per.len_ns,
                    nonpreempt: None,
                    fault_at: None,
                    deadline: Some(at.saturating_add(per.period_ns)),
                    done: 0,
                    started: None,
                })
            }
            _ => None,
        }
    }

    /// Jobs that arrived by `now` but were not taken yet.
    pub fn arrived(&self, now: u64) -> u64 {
        let rest = &self.jobs[self.next_job.min(self.jobs.len())..];
        let explicit = rest.partition_point(|j| j.at_ns <= now) as u64;
        let periodic = match self.periodic {
            Some(p) if p.first_ns <= now => {
                let released = ((now - p.first_ns) / p.period_ns).saturating_add(1);
                let released = p.count.map_or(released, |c| released.min(c));
                released.saturating_sub(self.next_k)
            }
            _ => 0,
        };
        explicit.saturating_add(periodic)
    }

    /// No job will ever arrive again.
    pub fn exhausted(&self) -> bool {
        self.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_round_trip_and_defaults() {
        let w = Workload {
            jobs: vec![Job {
                at_ns: 5,
                len_ns: 10,
                nonpreempt: Some((2, 3)),
                fault_at_ns: Some(4),
                deadline_ns: Some(100),
            }],
            periodic: Some(Periodic {
                first_ns: 0,
                period_ns: 1_000_000,
                len_ns: 1000,
                count: Some(3),
            }),
            hog: false,
            hog_dispatch_ns: None,
            exit_when_done: true,
        };
        assert_eq!(Workload::from_image(&w.to_image()).unwrap(), w);
        let h = Workload::from_image(br#"{"hog": true}"#).unwrap();
        assert_eq!(h, Workload::hog());
        assert!(!h.is_finite() && w.is_finite());
    }

    #[test]
    fn hostile_images_are_refused() {
        let bad: &[&[u8]] = &[
            b"",
            b"\xff\xfe",
            b"null",
            b"[]",
            b"{\"hog\": 1}",
            b"{\"unknown\": true}",
            b"{\"periodic\": {\"period_ns\": 0, \"len_ns\": 1}}",
            b"{\"periodic\": {\"period_ns\": 999, \"len_ns\": 1}}",
            b"{\"periodic\": {\"period_ns\": 18446744073709551615, \"len_ns\": 1}}",
            b"{\"periodic\": {\"period_ns\": 1000, \"len_ns\": 1, \"first_ns\": -1}}",
            b"{\"periodic\": {\"period_ns\": 1000, \"len_ns\": 1, \"count\": 18446744073709551616}}",
            b"{\"jobs\": [{\"len_ns\": 18446744073709551615}]}",
            b"{\"jobs\": [{\"len_ns\": 10, \"nonpreempt\": [5, 18446744073709551615]}]}",
            b"{\"jobs\": [{\"len_ns\": 10, \"nonpreempt\": [5, 6]}]}",
            b"{\"jobs\": [{\"len_ns\": 10, \"nonpreempt\": [5]}]}",
            b"{\"jobs\": [{\"len_ns\": 10, \"fault_at_ns\": 11}]}",
            b"{\"jobs\": [{\"at_ns\": 4611686018427387905, \"len_ns\": 1}]}",
            b"{\"hog\": true, \"hog_dispatch_ns\": 0}",
            b"{\"jobs\": {\"len_ns\": 1}}",
            b"{\"jobs\": [{}]}",
        ];
        for img in bad {
            assert!(
                matches!(Workload::from_image(img), Err(SimError::BadWorkload(_))),
                "accepted {:?}",
                String::from_utf8_lossy(img)
            );
        }
        let deep = "[".repeat(100_000);
        assert!(Workload::from_image(deep.as_bytes()).is_err());
        let many = Workload::jobs(vec![Job::default(); MAX_JOBS + 1]);
        assert!(Workload::from_image(&many.to_image()).is_err());
        assert!(Workload::from_image(&vec![b' '; MAX_IMAGE_BYTES + 1]).is_err());
    }

    #[test]
    fn endless_periodic_is_lazy_and_counted() {
        let w = Workload::periodic(1000, 1000, 10, Some(u64::MAX));
        let mut a = Arrivals::new(&w);
        assert_eq!(a.arrived(999), 0);
        assert_eq!(a.arrived(1000), 1);
        assert_eq!(a.arrived(MAX_NS), MAX_NS / 1000);
        assert_eq!(a.arrived(u64::MAX), u64::MAX / 1000);
        let j = a.pop().unwrap();
        assert_eq!((j.arrival, j.deadline), (1000, Some(2000)));
        assert_eq!(a.next(), Some(2000));
        assert_eq!(a.arrived(2000), 1);
        // Releases past u64 end the stream instead of wrapping.
        let mut far = Arrivals::new(&Workload::periodic(MAX_NS, MAX_NS, 1, None));
        assert_eq!(far.pop().unwrap().arrival, MAX_NS);
        assert_eq!(far.pop().unwrap().arrival, 2 * MAX_NS);
        assert_eq!(far.pop().unwrap().arrival, 3 * MAX_NS);
        assert!(far.pop().is_none() && far.exhausted());
    }

    #[test]
    fn explicit_and_periodic_merge_by_arrival() {
        let mut w = Workload::periodic(0, 1000, 1, Some(3));
        w.jobs = vec![
            Job {
                at_ns: 1500,
                len_ns: 7,
                ..Job::default()
            },
            Job {
                at_ns: 1000,
                len_ns: 8,
                ..Job::default()
            },
        ];
        let mut a = Arrivals::new(&w);
        let order: Vec<(u64, u64)> = std::iter::from_fn(|| a.pop())
            .map(|j| (j.arrival, j.len))
            .collect();
        assert_eq!(order, [(0, 1), (1000, 8), (1000, 1), (1500, 7), (2000, 1)]);
    }
}
