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
        match self.entries.get(&v) {
            // Attached again: take the new priority like set_params.
            Some(_) => self.set_params(v, params),
            None => {
                self.entries.insert(
                    v,
                    Entry {
                        prio: params.priority,
                        ..Entry::default()
                    },
                );
                Ok(())
            }
        }
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
mod tests {
    use super::*;
    use crate::policy::testkit::{figure, Demand, Sim, MS, PREEMPTED, RUN, US, WAITS};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn prio(p: i32) -> SchedParams {
        SchedParams {
            priority: p,
            ..SchedParams::default()
        }
    }

    fn pick(p: &mut Priority) -> Option<(u32, Duration)> {
        match p.pick(0) {
            Decision::Run { vcoproc, budget } => Some((vcoproc.0, budget)),
            Decision::Idle(_) => None,
        }
    }

    #[test]
    fn higher_priority_wake_preempts_and_runs_next() {
        let mut p = Priority::new(ms(5)).unwrap();
        p.attach(VcoprocId(1), &prio(0)).unwrap();
        p.attach(VcoprocId(2), &prio(0)).unwrap();
        p.attach(VcoprocId(9), &prio(10)).unwrap();
        p.wake(VcoprocId(1), 0);
        p.wake(VcoprocId(2), 0);
        assert_eq!(pick(&mut p), Some((1, ms(5))));
        assert_eq!(p.wake(VcoprocId(9), 0), WakeAction::Preempt);
        p.charge(VcoprocId(1), ms(2), 0, PREEMPTED);
        assert_eq!(pick(&mut p).unwrap().0, 9);
    }

    #[test]
    fn rotates_within_a_level_and_never_runs_a_lower_one() {
        let mut p = Priority::new(ms(1)).unwrap();
        for i in 1..=3 {
            p.attach(VcoprocId(i), &prio(5)).unwrap();
            p.wake(VcoprocId(i), 0);
        }
        p.attach(VcoprocId(4), &prio(1)).unwrap();
        p.wake(VcoprocId(4), 0);
        let mut order = vec![];
        for _ in 0..9 {
            let (v, b) = pick(&mut p).unwrap();
            assert_eq!(b, ms(1), "others of its level wait: one slice");
            order.push(v);
            p.charge(VcoprocId(v), ms(1), 0, RUN);
        }
        assert_eq!(order, [1, 2, 3, 1, 2, 3, 1, 2, 3]);
        // The level empties: the lower one runs, extended as it is alone.
        for i in 1..=3 {
            p.block(VcoprocId(i));
        }
        assert_eq!(pick(&mut p), Some((4, ms(100))));
        assert_eq!(figure(&p, 1, "picks"), 3);
        assert_eq!(figure(&p, 4, "priority"), 1);
    }

    #[test]
    fn interactive_high_priority_never_waits_behind_a_low_hog() {
        // One low hog (extended budget) and two (plain slices).
        for hogs in 1..=2 {
            interactive_vs_hogs(hogs);
        }
    }

    fn interactive_vs_hogs(hogs: u32) {
        let mut sim = Sim::new(Priority::new(ms(5)).unwrap());
        for v in 1..=hogs {
            sim.add(v, &prio(0), Demand::Hog);
        }
        sim.add(
            9,
            &prio(7),
            Demand::Periodic {
                job: 700 * US,
                period: 3 * MS + 300 * US,
                first: 1234 * US,
            },
        );
        sim.run_until(1_000 * MS);
        // The last slice may end past the second.
        let end = sim.now;
        let wakes: Vec<_> = sim.wakes.iter().filter(|w| w.0 == 9).collect();
        assert_eq!(
            wakes.iter().filter(|w| w.1 < 1_000 * MS).count(),
            303,
            "a job every 3.3 ms from 1.234 ms"
        );
        for &&(_, at, a) in &wakes {
            assert_eq!(a, WakeAction::Preempt, "a low hog always runs");
            if at + 700 * US > end {
                continue;
            }
            // Its job starts the moment it is released and runs whole.
            let s = sim
                .slices
                .iter()
                .find(|s| s.v == 9 && s.start >= at)
                .unwrap();
            assert_eq!((s.start, s.ran), (at, 700 * US));
        }
        assert_eq!(sim.idle, 0);
        // The hogs share the rest equally (within a slice).
        let (a, b) = (sim.ran(1), sim.ran(2));
        assert_eq!(a + b + sim.ran(9), end);
        if hogs == 1 {
            return;
        }
        assert!(a.abs_diff(b) <= 5 * MS, "{a} vs {b}");
        // A preempted hog resumes with the rest of its slice at the head.
        assert!(sim.slices.iter().filter(|s| s.preempted).count() > 200);
        for w in sim.slices.windows(3) {
            if w[0].preempted {
                assert_eq!(w[1].v, 9);
                assert_eq!(w[2].v, w[0].v, "the preempted one goes on");
                assert_eq!(w[2].budget, w[0].budget - w[0].ran);
            }
        }
    }

    #[test]
    fn preempted_one_keeps_the_rest_of_its_slice() {
        let mut p = Priority::new(ms(5)).unwrap();
        for (v, pr) in [(1, 0), (2, 0), (9, 3)] {
            p.attach(VcoprocId(v), &prio(pr)).unwrap();
        }
        p.wake(VcoprocId(1), 0);
        p.wake(VcoprocId(2), 0);
        assert_eq!(pick(&mut p), Some((1, ms(5))));
        assert_eq!(p.wake(VcoprocId(9), 0), WakeAction::Preempt);
        p.charge(VcoprocId(1), ms(2), 0, PREEMPTED);
        assert_eq!(figure(&p, 1, "slice_left_us"), 3000);
        assert_eq!(pick(&mut p).unwrap().0, 9);
        p.charge(VcoprocId(9), ms(1), 0, WAITS);
        assert_eq!(pick(&mut p), Some((1, ms(3))));
        assert_eq!(figure(&p, 1, "slice_left_us"), -1);
        p.charge(VcoprocId(1), ms(3), 0, RUN);
        assert_eq!(pick(&mut p), Some((2, ms(5))));
        // Preempted but runnable without a preempt request: the tail.
        p.charge(VcoprocId(2), ms(1), 0, RUN);
        assert_eq!(pick(&mut p), Some((1, ms(5))));
    }

    #[test]
    fn lower_wake_never_preempts_equal_only_an_extended_one() {
        let mut p = Priority::new(ms(5)).unwrap();
        for (v, pr) in [(1, 5), (2, 5), (3, 1), (4, 5)] {
            p.attach(VcoprocId(v), &prio(pr)).unwrap();
        }
        p.wake(VcoprocId(1), 0);
        // Alone at the top: extended.
        assert_eq!(pick(&mut p), Some((1, ms(500))));
        assert_eq!(p.wake(VcoprocId(3), 0), WakeAction::None, "lower");
        assert_eq!(
            p.wake(VcoprocId(2), 0),
            WakeAction::Preempt,
            "equal, extended"
        );
        // The extension is over: another equal one waits its turn.
        assert_eq!(p.wake(VcoprocId(4), 0), WakeAction::None);
        p.charge(VcoprocId(1), ms(1), 0, PREEMPTED);
        // The rest of one slice at the head, not of the extension.
        assert_eq!(pick(&mut p), Some((1, ms(4))));
        p.charge(VcoprocId(1), ms(4), 0, RUN);
        assert_eq!(pick(&mut p), Some((2, ms(5))));
        p.charge(VcoprocId(2), ms(5), 0, WAITS);
        assert_eq!(pick(&mut p), Some((4, ms(5))));
        assert_eq!(
            p.wake(VcoprocId(2), 0),
            WakeAction::None,
            "equal, not extended"
        );
    }

    #[test]
    fn priority_change_takes_effect_at_the_next_pick() {
        let mut p = Priority::new(ms(5)).unwrap();
        for v in 1..=3 {
            p.attach(VcoprocId(v), &prio(0)).unwrap();
            p.wake(VcoprocId(v), 0);
        }
        assert_eq!(pick(&mut p).unwrap().0, 1);
        // Raising a queued one re-keys it, but does not cut the slice.
        p.set_params(VcoprocId(3), &prio(4)).unwrap();
        assert_eq!(figure(&p, 3, "priority"), 4);
        p.charge(VcoprocId(1), ms(5), 0, RUN);
        assert_eq!(pick(&mut p), Some((3, ms(500))), "alone at the top");
        p.charge(VcoprocId(3), ms(5), 0, RUN);
        // Lowering it sends it below the others.
        p.set_params(VcoprocId(3), &prio(-1)).unwrap();
        assert_eq!(pick(&mut p).unwrap().0, 2);
        p.charge(VcoprocId(2), ms(5), 0, RUN);
        assert_eq!(pick(&mut p).unwrap().0, 1);
        // The running one's priority counts for the next wake-up.
        p.set_params(VcoprocId(1), &prio(-5)).unwrap();
        p.charge(VcoprocId(1), ms(5), 0, WAITS);
        assert_eq!(pick(&mut p).unwrap().0, 2);
        p.set_params(VcoprocId(2), &prio(-9)).unwrap();
        assert_eq!(p.wake(VcoprocId(1), 0), WakeAction::Preempt);
        assert!(p.set_params(VcoprocId(77), &prio(1)).is_err());
        let bad = SchedParams {
            weight: 0,
            ..SchedParams::default()
        };
        assert!(p.set_params(VcoprocId(1), &bad).is_err());
        assert!(p.attach(VcoprocId(5), &bad).is_err());
    }

    #[test]
    fn odd_calls_are_harmless() {
        let mut p = Priority::new(ms(1)).unwrap();
        assert_eq!(p.pick(0), Decision::Idle(None));
        assert_eq!(p.wake(VcoprocId(1), 0), WakeAction::None);
        p.block(VcoprocId(1));
        p.detach(VcoprocId(1));
        p.charge(VcoprocId(1), ms(1), 0, RUN);
        p.attach(VcoprocId(1), &prio(0)).unwrap();
        // Charged without a pick (policy switched mid-slice): queued.
        p.charge(VcoprocId(1), Duration::MAX, u64::MAX, PREEMPTED);
        assert!(p.standings()[0].queued);
        assert_eq!(p.wake(VcoprocId(1), 0), WakeAction::None);
        assert_eq!(pick(&mut p), Some((1, ms(100))));
        // Detached while running: its charge is ignored.
        p.detach(VcoprocId(1));
        p.charge(VcoprocId(1), ms(1), 0, RUN);
        assert_eq!(p.pick(0), Decision::Idle(None));
        assert!(p.standings().is_empty());
        // Extreme priorities.
        p.attach(VcoprocId(2), &prio(i32::MIN)).unwrap();
        p.attach(VcoprocId(3), &prio(i32::MAX)).unwrap();
        p.wake(VcoprocId(2), 0);
        assert_eq!(pick(&mut p).unwrap().0, 2);
        assert_eq!(p.wake(VcoprocId(3), 0), WakeAction::Preempt);
    }

    #[test]
    fn parameters() {
        let kv = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let p = Priority::from_params(&[]).unwrap();
        assert_eq!(p.slice(), Priority::DEFAULT_SLICE);
        assert_eq!(p.describe(), vec![("slice_us".into(), "5000".into())]);
        assert_eq!(p.name(), "priority");
        let p = Priority::from_params(&kv("slice_us", "50")).unwrap();
        assert_eq!(p.slice(), Duration::from_micros(50));
        assert!(Priority::from_params(&kv("slice_us", "49")).is_err());
        assert!(Priority::from_params(&kv("slice_us", "10000001")).is_err());
        assert!(Priority::from_params(&kv("slice_us", "x")).is_err());
        assert!(Priority::from_params(&kv("priority", "1")).is_err());
        assert!(super::super::build("priority", &kv("slice_us", "2000")).is_ok());
    }

    #[test]
    fn a_hundred_thousand_vcoprocs() {
        let mut p = Priority::new(ms(1)).unwrap();
        const N: u32 = 100_000;
        for i in 0..N {
            p.attach(VcoprocId(i), &prio((i % 10) as i32)).unwrap();
            p.wake(VcoprocId(i), 0);
        }
        // Only the top level (i % 10 == 9) runs, in order, round robin.
        let mut next = 9;
        for round in 0..5_000u32 {
            let (v, _) = pick(&mut p).unwrap();
            assert_eq!(v, next);
            next = (next + 10) % N;
            let end = if round % 7 == 0 { PREEMPTED } else { RUN };
            p.charge(VcoprocId(v), ms(1), 0, end);
            if end == PREEMPTED {
                // Kept at the head with the rest: zero left, so the tail.
                assert_eq!(pick(&mut p).unwrap().0, next);
                p.charge(VcoprocId(next), ms(1), 0, RUN);
                next = (next + 10) % N;
            }
        }
        for i in (0..N).step_by(10) {
            p.block(VcoprocId(i + 9));
        }
        assert_eq!(pick(&mut p).unwrap().0, 8);
        assert_eq!(p.standings().len(), N as usize);
    }
}
