//! `priority`: fixed priorities, preemptive, round robin within a level.
//!
//! Each vcoproc has a fixed priority ([`SchedParams::priority`], higher runs
//! first). The device always runs the head of the highest non-empty level;
//! within a level, vcoprocs take turns of one slice each, like `rr`.
//!
//! The whole run queue is one ordered set keyed by
//! `(Reverse(priority), sequence, id)`: its first element is the head of the
//! highest level. Sequence numbers come from two counters shared by all
//! levels, one decreasing (queueing at the head of a level) and one
//! increasing (the tail), so every queue operation is O(log n).
//!
//! Preemption:
//! - a wake-up of a vcoproc with a higher priority than the running one
//!   preempts it;
//! - a vcoproc that was picked while no other vcoproc of its level was
//!   queued runs on an extended budget ([`Priority::EXTEND`] slices, at most
//!   one second); a wake-up of an equal priority then preempts it at once,
//!   so nobody of its level waits longer than under plain slicing;
//! - a lower-priority wake-up never preempts.
//!
//! A vcoproc cut short by a preemption goes back to the head of its level
//! with the rest of its slice, so a preemption costs it nothing but the
//! wait.

use super::{Decision, Policy, PolicyError, SchedParams, SliceEnd, Standing, WakeAction};
use crate::ids::VcoprocId;
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    /// Its priority (higher runs first).
    prio: i32,
    /// Its position in the queue, if queued.
    queued: Option<i64>,
    /// Unused part of a slice that was cut short.
    left: Option<Duration>,
    /// The part of a slice this turn may still use (set at pick).
    turn: Duration,
    picks: u64,
}

/// A queue key: highest priority first, then by sequence number.
type Key = (Reverse<i32>, i64, VcoprocId);

/// The fixed-priority policy.
#[derive(Debug)]
pub struct Priority {
    slice: Duration,
    queue: BTreeSet<Key>,
    /// Next sequence numbers at the head (decreasing) and tail (increasing).
    head: i64,
    tail: i64,
    entries: HashMap<VcoprocId, Entry>,
    /// The vcoproc picked and not yet charged, if any.
    running: Option<VcoprocId>,
    /// Whether `running` runs on an extended budget.
    extended: bool,
}

impl Priority {
    /// Shortest slice accepted.
    pub const MIN_SLICE: Duration = Duration::from_micros(50);
    /// Longest slice accepted.
    pub const MAX_SLICE: Duration = Duration::from_secs(10);
    /// Default slice.
    pub const DEFAULT_SLICE: Duration = Duration::from_millis(5);
    /// Slices a vcoproc alone at the top level gets before it is stopped
    /// anyway.
    pub const EXTEND: u32 = 100;

    /// Fixed priorities with `slice` per turn within a level.
    pub fn new(slice: Duration) -> Result<Priority, PolicyError> {
        let mut p = Priority {
            slice: Self::DEFAULT_SLICE,
            queue: BTreeSet::new(),
            head: 0,
            tail: 1,
            entries: HashMap::new(),
            running: None,
            extended: false,
        };
        p.set_slice(slice)?;
        Ok(p)
    }

    /// Build from `key=value` parameters: `slice_us` (50..=10000000,
    /// default 5000).
    pub fn from_params(params: &[(String, String)]) -> Result<Self, PolicyError> {
        super::check_known("priority", params, &["slice_us"])?;
        let slice = match super::param(params, "slice_us") {
            Some(v) => super::parse_us("slice_us", v, Self::MIN_SLICE, Self::MAX_SLICE)?,
            None => Self::DEFAULT_SLICE,
        };
        Self::new(slice)
    }

    /// Change the slice; effective at the next pick.
    pub fn set_slice(&mut self, slice: Duration) -> Result<(), PolicyError> {
        if slice < Self::MIN_SLICE || slice > Self::MAX_SLICE {
            return Err(PolicyError::BadParam(format!(
                "slice {slice:?} not in {:?}..={:?}",
                Self::MIN_SLICE,
                Self::MAX_SLICE
            )));
        }
        self.slice = slice;
        Ok(())
    }

    /// The slice length.
    pub fn slice(&self) -> Duration {
        self.slice
    }

    /// Queue `v` at the tail (or the head) of its level.
    fn enqueue(&mut self, v: VcoprocId, at_head: bool) {
        let Some(e) = self.entries.get_mut(&v) else {
            return;
        };
        let seq = if at_head {
            self.head = self.head.saturating_sub(1);
            self.head
        } else {
            self.tail = self.tail.saturating_add(1);
            self.tail
        };
        e.queued = Some(seq);
        self.queue.insert((Reverse(e.prio), seq, v));
    }

    /// Take `v` out of the queue if it is there.
    fn dequeue(&mut self, v: VcoprocId) {
        if let Some(e) = self.entries.get_mut(&v) {
            if let Some(seq) = e.queued.take() {
                self.queue.remove(&(Reverse(e.prio), seq, v));
            }
        }
    }
}

impl Policy for Priority {
    fn name(&self) -> &'static str {
        "priority"
    }

    fn describe(&self) -> Vec<(String, String)> {
        vec![("slice_us".into(), self.slice.as_micros().to_string())]
    }

    fn attach(&mut self, v: VcoprocId, params: &SchedParams) -> Result<(), PolicyError> {
        params.validate()?;
        if self.entries.contains_key(&v) {
            // Attached again: take the new priority like set_params.
            return self.set_params(v, params);
        }
        self.entries.insert(
            v,
            Entry {
                prio: params.priority,
                ..Entry::default()
            },
        );
        Ok(())
    }

    fn detach(&mut self, v: VcoprocId) {
        if self.running == Some(v) {
            self.running = None;
            self.extended = false;
        }
        self.dequeue(v);
        self.entries.remove(&v);
    }

    fn set_params(&mut self, v: VcoprocId, params: &SchedParams) -> Result<(), PolicyError> {
        params.validate()?;
        let e = self.entries.get(&v).ok_or(PolicyError::Unknown(v))?;
        if e.prio == params.priority {
            return Ok(());
        }
        // Re-key a queued vcoproc: the tail of its new level, or the head if
        // it holds the rest of a preempted slice.
        let queued = e.queued.is_some();
        let at_head = e.left.is_some();
        self.dequeue(v);
        if let Some(e) = self.entries.get_mut(&v) {
            e.prio = params.priority;
        }
        if queued {
            self.enqueue(v, at_head);
        }
        Ok(())
    }

    fn wake(&mut self, v: VcoprocId, _now_ns: u64) -> WakeAction {
        let Some(e) = self.entries.get(&v) else {
            return WakeAction::None;
        };
        if e.queued.is_some() || self.running == Some(v) {
            return WakeAction::None;
        }
        let prio = e.prio;
        self.enqueue(v, false);
        let running = self
            .running
            .and_then(|r| self.entries.get(&r))
            .map(|e| e.prio);
        match running {
            Some(rp) if prio > rp || (prio == rp && self.extended) => {
                self.extended = false;
                WakeAction::Preempt
            }
            _ => WakeAction::None,
        }
    }

    fn block(&mut self, v: VcoprocId) {
        if let Some(e) = self.entries.get_mut(&v) {
            if e.queued.is_some() {
                e.left = None;
            }
        }
        self.dequeue(v);
    }

    fn pick(&mut self, _now_ns: u64) -> Decision {
        self.running = None;
        self.extended = false;
        while let Some((Reverse(prio), _, v)) = self.queue.pop_first() {
            let Some(e) = self.entries.get_mut(&v) else {
                continue;
            };
            e.queued = None;
            e.picks = e.picks.saturating_add(1);
            let mut budget = e.left.take().unwrap_or(self.slice);
            e.turn = budget;
            // Nobody else of its level (nor above) is waiting: extend.
            let alone = self
                .queue
                .first()
                .is_none_or(|(Reverse(next), _, _)| *next < prio);
            if alone {
                budget = self
                    .slice
                    .saturating_mul(Self::EXTEND)
                    .min(Duration::from_secs(1))
                    .max(budget);
                self.extended = true;
            }
            self.running = Some(v);
            return Decision::Run { vcoproc: v, budget };
        }
        Decision::Idle(None)
    }

    fn charge(&mut self, v: VcoprocId, ran: Duration, _now_ns: u64, end: SliceEnd) {
        // Only a slice this policy picked has a turn to keep the rest of.
        let ours = self.running == Some(v);
        if ours {
            self.running = None;
            self.extended = false;
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
        let keep = ours && end.preempted && left >= Self::MIN_SLICE;
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
                    ("priority".into(), i64::from(e.prio)),
                    (
                        "slice_left_us".into(),
                        e.left
                            .map_or(-1, |l| i64::try_from(l.as_micros()).unwrap_or(i64::MAX)),
                    ),
                    ("picks".into(), i64::try_from(e.picks).unwrap_or(i64::MAX)),
                ],
            })
            .collect();
        out.sort_by_key(|s| s.vcoproc);
        out
    }
}

#[cfg(test)]
mod tests;
