//! `rr`: round robin with a fixed slice (EPAM's only algorithm).
//!
//! A FIFO of runnable vcoprocs. Each pick gives the head one slice. A
//! vcoproc preempted before its slice ran out goes back to the head with
//! what is left of it, so a preemption for an unrelated reason (a control
//! command, a revoke) costs it nothing.
//!
//! The queue is a [`RunQueue`]: taking the head, appending, and removing a
//! blocked vcoproc from the middle are all O(log n).
//!
//! When the picked vcoproc is the only runnable one, its budget is extended
//! to [`RoundRobin::EXTEND`] slices (at most one second): stopping it every
//! slice would only cost time. The first wake-up of another vcoproc then
//! preempts it at once, so nobody waits longer than under plain slicing.

use super::runqueue::{Place, RunQueue};
use super::{Decision, Policy, PolicyError, SchedParams, SliceEnd, Standing, WakeAction};
use crate::ids::VcoprocId;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    /// Its position in the queue, if queued.
    queued: Option<Place>,
    /// Unused part of a slice that was cut short.
    left: Option<Duration>,
    /// The part of a slice this turn may still use (set at pick).
    turn: Duration,
    picks: u64,
}

/// The round-robin policy.
#[derive(Debug)]
pub struct RoundRobin {
    slice: Duration,
    queue: RunQueue,
    entries: HashMap<VcoprocId, Entry>,
    /// The vcoproc running on an extended budget, if any.
    extended: Option<VcoprocId>,
}

impl RoundRobin {
    /// Shortest slice accepted.
    pub const MIN_SLICE: Duration = Duration::from_micros(50);
    /// Default slice.
    pub const DEFAULT_SLICE: Duration = Duration::from_millis(5);
    /// Slices a lone runnable vcoproc gets before it is stopped anyway.
    pub const EXTEND: u32 = 100;

    /// Round robin with `slice` per turn.
    pub fn new(slice: Duration) -> Result<RoundRobin, PolicyError> {
        let mut rr = RoundRobin {
            slice,
            queue: RunQueue::default(),
            entries: HashMap::new(),
            extended: None,
        };
        rr.set_slice(slice)?;
        Ok(rr)
    }

    /// Build from `key=value` parameters: `slice_us`.
    pub fn from_params(params: &[(String, String)]) -> Result<Self, PolicyError> {
        super::check_known("rr", params, &["slice_us"])?;
        let slice = match super::param(params, "slice_us") {
            Some(v) => super::parse_us("slice_us", v, Self::MIN_SLICE, Duration::from_secs(10))?,
            None => Self::DEFAULT_SLICE,
        };
        Self::new(slice)
    }

    /// Queue `v` at the tail (or the head).
    fn enqueue(&mut self, v: VcoprocId, at_head: bool) {
        if let Some(e) = self.entries.get_mut(&v) {
            e.queued = Some(self.queue.push(v, at_head));
        }
    }

    /// Change the slice; effective at the next pick.
    pub fn set_slice(&mut self, slice: Duration) -> Result<(), PolicyError> {
        if slice < Self::MIN_SLICE || slice > Duration::from_secs(10) {
            return Err(PolicyError::BadParam(format!(
                "slice {slice:?} not in {:?}..=10s",
                Self::MIN_SLICE
            )));
        }
        self.slice = slice;
        Ok(())
    }

    /// The slice length.
    pub fn slice(&self) -> Duration {
        self.slice
    }
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "rr"
    }

    fn describe(&self) -> Vec<(String, String)> {
        vec![("slice_us".into(), self.slice.as_micros().to_string())]
    }

    fn attach(&mut self, v: VcoprocId, params: &SchedParams) -> Result<(), PolicyError> {
        params.validate()?;
        self.entries.entry(v).or_default();
        Ok(())
    }

    fn detach(&mut self, v: VcoprocId) {
        if self.extended == Some(v) {
            self.extended = None;
        }
        if let Some(at) = self.entries.remove(&v).and_then(|e| e.queued) {
            self.queue.remove(v, at);
        }
    }

    fn set_params(&mut self, v: VcoprocId, params: &SchedParams) -> Result<(), PolicyError> {
        params.validate()?;
        self.entries
            .get(&v)
            .map(|_| ())
            .ok_or(PolicyError::Unknown(v))
    }

    fn wake(&mut self, v: VcoprocId, _now_ns: u64) -> WakeAction {
        let Some(e) = self.entries.get_mut(&v) else {
            return WakeAction::None;
        };
        if e.queued.is_some() || self.extended == Some(v) {
            return WakeAction::None;
        }
        self.enqueue(v, false);
        // Someone runs on an extended budget: its slice is over now.
        match self.extended.take() {
            Some(_) => WakeAction::Preempt,
            None => WakeAction::None,
        }
    }

    fn block(&mut self, v: VcoprocId) {
        if let Some(e) = self.entries.get_mut(&v) {
            if let Some(at) = e.queued.take() {
                e.left = None;
                self.queue.remove(v, at);
            }
        }
    }

    fn pick(&mut self, _now_ns: u64) -> Decision {
        self.extended = None;
        while let Some(v) = self.queue.pop() {
            if let Some(e) = self.entries.get_mut(&v) {
                e.queued = None;
                e.picks += 1;
                let mut budget = e.left.take().unwrap_or(self.slice);
                e.turn = budget;
                if self.queue.is_empty() {
                    budget = (self.slice * Self::EXTEND)
                        .min(Duration::from_secs(1))
                        .max(budget);
                    self.extended = Some(v);
                }
                return Decision::Run { vcoproc: v, budget };
            }
        }
        Decision::Idle(None)
    }

    fn charge(&mut self, v: VcoprocId, ran: Duration, _now_ns: u64, end: SliceEnd) {
        if self.extended == Some(v) {
            self.extended = None;
        }
        let slice = self.slice;
        let Some(e) = self.entries.get_mut(&v) else {
            return;
        };
        if !end.runnable || e.queued.is_some() {
            return;
        }
        // What is left of this turn's share of a slice (an extended turn
        // counts as one slice).
        let left = e.turn.min(slice).saturating_sub(ran);
        let keep = end.preempted && left >= Self::MIN_SLICE;
        e.left = keep.then_some(left);
        self.enqueue(v, keep);
    }

    fn standings(&self) -> Vec<Standing> {
        let mut out: Vec<Standing> = self
            .entries
            .iter()
            .map(|(&v, e)| Standing {
                vcoproc: v,
                queued: e.queued.is_some(),
                figures: vec![
                    ("picks".into(), super::figure(e.picks)),
                    ("slice_left_us".into(), e.left.map_or(-1, super::figure_us)),
                ],
            })
            .collect();
        out.sort_by_key(|s| s.vcoproc);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const RUN: SliceEnd = SliceEnd {
        runnable: true,
        preempted: false,
        waiting: false,
    };

    fn pick(rr: &mut RoundRobin) -> Option<(u32, Duration)> {
        match rr.pick(0) {
            Decision::Run { vcoproc, budget } => Some((vcoproc.0, budget)),
            Decision::Idle(_) => None,
        }
    }

    #[test]
    fn rotates_fifo() {
        let mut rr = RoundRobin::new(MS).unwrap();
        for i in 1..=3 {
            rr.attach(VcoprocId(i), &SchedParams::default()).unwrap();
            rr.wake(VcoprocId(i), 0);
        }
        let mut order = vec![];
        for _ in 0..6 {
            let (v, b) = pick(&mut rr).unwrap();
            assert_eq!(b, MS, "others are queued: one slice");
            order.push(v);
            rr.charge(VcoprocId(v), MS, 0, RUN);
        }
        assert_eq!(order, [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn lone_vcoproc_is_extended_until_someone_wakes() {
        let mut rr = RoundRobin::new(MS).unwrap();
        for i in 1..=2 {
            rr.attach(VcoprocId(i), &SchedParams::default()).unwrap();
        }
        rr.wake(VcoprocId(1), 0);
        assert_eq!(pick(&mut rr).unwrap(), (1, MS * RoundRobin::EXTEND));
        // A wake-up ends the extension at once...
        assert_eq!(rr.wake(VcoprocId(2), 0), WakeAction::Preempt);
        rr.charge(
            VcoprocId(1),
            MS / 2,
            0,
            SliceEnd {
                runnable: true,
                preempted: true,
                waiting: false,
            },
        );
        // ...and the preempted one keeps only the rest of a normal slice.
        assert_eq!(pick(&mut rr).unwrap(), (1, MS / 2));
        rr.charge(VcoprocId(1), MS / 2, 0, RUN);
        assert_eq!(pick(&mut rr).unwrap(), (2, MS));
        // No second preemption while nobody is extended.
        rr.charge(VcoprocId(2), MS, 0, RUN);
        assert_eq!(pick(&mut rr).unwrap(), (1, MS));
    }

    #[test]
    fn preempted_keeps_rest_of_slice_at_head() {
        let mut rr = RoundRobin::new(10 * MS).unwrap();
        for i in 1..=2 {
            rr.attach(VcoprocId(i), &SchedParams::default()).unwrap();
            rr.wake(VcoprocId(i), 0);
        }
        assert_eq!(pick(&mut rr).unwrap().0, 1);
        rr.charge(
            VcoprocId(1),
            4 * MS,
            0,
            SliceEnd {
                runnable: true,
                preempted: true,
                waiting: false,
            },
        );
        assert_eq!(pick(&mut rr).unwrap(), (1, 6 * MS));
        rr.charge(VcoprocId(1), 6 * MS, 0, RUN);
        assert_eq!(pick(&mut rr).unwrap(), (2, 10 * MS));
    }

    #[test]
    fn blocked_and_detached_leave_queue() {
        let mut rr = RoundRobin::new(MS).unwrap();
        for i in 1..=3 {
            rr.attach(VcoprocId(i), &SchedParams::default()).unwrap();
            rr.wake(VcoprocId(i), 0);
        }
        rr.block(VcoprocId(2));
        rr.detach(VcoprocId(3));
        assert_eq!(pick(&mut rr).unwrap().0, 1);
        rr.charge(
            VcoprocId(1),
            MS,
            0,
            SliceEnd {
                runnable: false,
                preempted: false,
                waiting: false,
            },
        );
        assert_eq!(pick(&mut rr), None);
        assert!(RoundRobin::new(Duration::from_nanos(1)).is_err());
    }
}
