//! `credit`: weighted fair share with caps, after Xen's credit2.
//!
//! # Fair share
//!
//! Every vcoproc has a virtual time (`vtime`, a `u128` in units of
//! 1/[`SCALE`](Credit::SCALE) ns at weight 1): a slice that ran `ran` ns (as measured by the
//! device, overruns included) adds `ran * SCALE / weight`. [`Policy::pick`]
//! runs the queued vcoproc with the lowest vtime for one slice (the
//! `slice_us` parameter), so over time each runnable vcoproc gets the device
//! in proportion to its weight. The queue is a `BTreeSet<(vtime, id)>`, so
//! pick, wake, block and charge are O(log n).
//!
//! # Credit
//!
//! credit2 gives everyone [`CREDIT_INIT`](Credit::CREDIT_INIT) of credit, burns it at a rate
//! inversely proportional to the weight, and resets everybody's credit when
//! the best one runs out. Here the same figure is derived from the vtime
//! without touching every vcoproc: `credit = CREDIT_INIT - (vtime - base)`,
//! converted to nanoseconds at the default weight (256), where `base` is a
//! single policy-wide value. When the vcoproc that `pick` takes (the one with
//! the most credit) has none left, `base` moves up to its vtime, which gives
//! it [`CREDIT_INIT`](Credit::CREDIT_INIT) again and everybody else the same increase: the reset
//! of credit2 in O(1). Credit only orders vcoprocs like vtime does; it is
//! shown in the standings, decisions use the vtime.
//!
//! # Wake-ups
//!
//! A vcoproc that slept comes back at
//! `vtime = max(own vtime, reference - slice * SCALE / weight)`, where the
//! reference is the lowest vtime among the queued vcoprocs and the running
//! one (its vtime plus what it has run so far in this slice), or the highest
//! vtime ever picked when nothing is queued or running. Sleeping therefore
//! earns at most one slice of head start (no hoarding), yet an interactive
//! vcoproc runs soon after it wakes. Time is charged exactly as measured, so
//! a vcoproc that yields just before its slice would end gets nothing for
//! free.
//!
//! The woken vcoproc preempts the running one when its vtime is lower than
//! the running one's current vtime by more than a quarter slice of the
//! woken one's weighted time.
//!
//! # Idle window
//!
//! With `idle_us` set, when a vcoproc that is owed device time (its vtime
//! lower than the best queued one's by more than the preemption margin
//! above) ends a slice because it has nothing to do, `pick` answers
//! `Idle` for up to `idle_us` instead of running another: on a device that
//! cannot preempt, a vcoproc with long jobs would otherwise take the device
//! for a whole job each time a domain pauses between two of its own. Only
//! for a vcoproc whose previous wait fitted in the window; one that comes
//! back within it keeps its vtime (that wait was not sleep). The time the
//! device idled for a vcoproc is charged to it, so idling is paid for out
//! of the share of the one it serves.
//!
//! # Caps
//!
//! A vcoproc with `cap_pct` gets at most that percent of the device in every
//! cap period (`cap_period_us`), even when nobody else wants the device. Its
//! budget per period is `cap_pct * period / 100`; periods are aligned on a
//! global grid (period `k` covers `[k * period, (k + 1) * period)`), and the
//! budget is replenished lazily: each period boundary passed adds one
//! period's budget, and the result is capped at one period's budget. Every
//! slice is charged against it in full, so an overrun (a device that can
//! only stop between jobs) leaves a negative budget: a debt paid from the
//! following periods, and the long-run share is exactly the cap. A capped
//! vcoproc is given at most what is left of its budget (and at most a
//! slice); when it has nothing left it is throttled: kept in a
//! `BTreeSet<(replenish_ns, id)>` until the period boundary that makes its
//! budget positive again. `pick` first moves every throttled vcoproc whose
//! time has come back into the queue (placed like a wake-up: while
//! throttled it did not compete), and when nothing is eligible but someone
//! is throttled it answers `Idle(Some(time until the earliest
//! replenishment))`.
//!
//! # Parameters and standings
//!
//! Policy parameters: `slice_us` (50..=1000000, default 1000),
//! `cap_period_us` (1000..=1000000, default 10000) and `idle_us`
//! (0..=100000, default 0: off). Per vcoproc:
//! [`SchedParams::weight`] and [`SchedParams::cap_pct`]; a change takes
//! effect at the next decision (a slice already picked is charged at the
//! weight it was picked with).
//!
//! Standings, by vcoproc id: `queued` is true for a runnable vcoproc waiting
//! for the device, throttled ones included; figures are `weight`,
//! `credit_us` (see above; the running slice not yet counted), `cap_pct`
//! (-1: no cap), `cap_left_us` (budget left in the period of its last
//! accounting, negative for a debt; 0 without a cap), `throttled` (0/1) and
//! `running` (0/1).

use super::{Decision, Policy, PolicyError, SchedParams, SliceEnd, Standing, WakeAction};
use crate::ids::VcoprocId;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Weight at which credit is expressed in nanoseconds (the default weight).
const REF_WEIGHT: u32 = 256;

/// `ns` of device time in vtime units at `weight`.
fn weighted(ns: u64, weight: u32) -> u128 {
    u128::from(ns).saturating_mul(Credit::SCALE) / u128::from(weight.max(1))
}

/// Nanoseconds of a duration, saturated to `u64`.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Where an attached vcoproc is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Not runnable (or running): in no set.
    Out,
    /// In the run queue under its vtime.
    Queued,
    /// Runnable but out of cap budget until this time.
    Throttled(u64),
}

#[derive(Debug, Clone)]
struct Entry {
    weight: u32,
    cap_pct: Option<u32>,
    vtime: u128,
    place: Place,
    /// Cap budget left in the current period, ns (negative: debt).
    cap_left: i64,
    /// The cap period `cap_left` is counted in; None: not yet known (a cap
    /// that was just set, with a full budget).
    cap_period_idx: Option<u64>,
    /// When it last stopped to wait for work (until it wakes).
    waited_since: Option<u64>,
    /// Whether its last wait for work was no longer than the idle window:
    /// the device idles for it only then.
    short_waits: bool,
}

/// The slice running now, as `pick` decided it.
#[derive(Debug, Clone, Copy)]
struct Running {
    vcoproc: VcoprocId,
    start_ns: u64,
    vtime: u128,
    weight: u32,
}

/// The device idling for a vcoproc that stopped to wait (see "Idle
/// window").
#[derive(Debug, Clone, Copy)]
struct Anticipation {
    vcoproc: VcoprocId,
    since: u64,
    until: u64,
}

/// The credit policy (weighted fair share with caps).
#[derive(Debug)]
pub struct Credit {
    slice: Duration,
    cap_period: Duration,
    entries: HashMap<VcoprocId, Entry>,
    queue: BTreeSet<(u128, VcoprocId)>,
    throttled: BTreeSet<(u64, VcoprocId)>,
    running: Option<Running>,
    /// Highest vtime ever picked: the reference for wake-ups when nobody
    /// is queued or running, and the starting vtime of new vcoprocs.
    floor: u128,
    /// Credit origin: credit = CREDIT_INIT - (vtime - base).
    base: u128,
    /// The latest time given to wake, pick or charge (for `set_params`,
    /// which is given none).
    now_seen: u64,
    /// The idle window (`idle_us`; zero: never idle while work waits).
    idle: Duration,
    /// The vcoproc the device is idling for: since when, until when.
    anticipating: Option<Anticipation>,
}

impl Credit {
    /// Virtual time units per nanosecond of device time at weight 1.
    pub const SCALE: u128 = 1 << 24;
    /// Credit a vcoproc holds after a reset (as device time at weight 256).
    pub const CREDIT_INIT: Duration = Duration::from_millis(10);
    /// Shortest slice accepted.
    pub const MIN_SLICE: Duration = Duration::from_micros(50);
    /// Longest slice accepted.
    pub const MAX_SLICE: Duration = Duration::from_secs(1);
    /// Default slice (keeps the per-second share error of weighted hogs
    /// under 1 %).
    pub const DEFAULT_SLICE: Duration = Duration::from_millis(1);
    /// Shortest cap period accepted.
    pub const MIN_CAP_PERIOD: Duration = Duration::from_millis(1);
    /// Longest cap period accepted.
    pub const MAX_CAP_PERIOD: Duration = Duration::from_secs(1);
    /// Default cap period.
    pub const DEFAULT_CAP_PERIOD: Duration = Duration::from_millis(10);
    /// Longest idle window accepted.
    pub const MAX_IDLE: Duration = Duration::from_millis(100);

    /// Credit scheduling with `slice` per turn and caps enforced over
    /// `cap_period`.
    pub fn new(slice: Duration, cap_period: Duration) -> Result<Self, PolicyError> {
        if slice < Self::MIN_SLICE || slice > Self::MAX_SLICE {
            return Err(PolicyError::BadParam(format!(
                "slice {slice:?} not in {:?}..={:?}",
                Self::MIN_SLICE,
                Self::MAX_SLICE
            )));
        }
        if cap_period < Self::MIN_CAP_PERIOD || cap_period > Self::MAX_CAP_PERIOD {
            return Err(PolicyError::BadParam(format!(
                "cap period {cap_period:?} not in {:?}..={:?}",
                Self::MIN_CAP_PERIOD,
                Self::MAX_CAP_PERIOD
            )));
        }
        Ok(Credit {
            slice,
            cap_period,
            entries: HashMap::new(),
            queue: BTreeSet::new(),
            throttled: BTreeSet::new(),
            running: None,
            floor: 0,
            base: 0,
            now_seen: 0,
            idle: Duration::ZERO,
            anticipating: None,
        })
    }

    /// The same with an idle window (see the module documentation): after
    /// a vcoproc that is owed device time stops to wait for work, the
    /// device stays idle for up to `idle` for it to come back.
    pub fn with_idle(mut self, idle: Duration) -> Result<Self, PolicyError> {
        if idle > Self::MAX_IDLE {
            return Err(PolicyError::BadParam(format!(
                "idle window {idle:?} over {:?}",
                Self::MAX_IDLE
            )));
        }
        self.idle = idle;
        Ok(self)
    }

    /// Build from `key=value` parameters: `slice_us` (50..=1000000, default
    /// 1000), `cap_period_us` (1000..=1000000, default 10000) and `idle_us`
    /// (0..=100000, default 0).
    pub fn from_params(params: &[(String, String)]) -> Result<Self, PolicyError> {
        super::check_known("credit", params, &["slice_us", "cap_period_us", "idle_us"])?;
        let slice = match super::param(params, "slice_us") {
            Some(v) => super::parse_us("slice_us", v, Self::MIN_SLICE, Self::MAX_SLICE)?,
            None => Self::DEFAULT_SLICE,
        };
        let cap_period = match super::param(params, "cap_period_us") {
            Some(v) => super::parse_us(
                "cap_period_us",
                v,
                Self::MIN_CAP_PERIOD,
                Self::MAX_CAP_PERIOD,
            )?,
            None => Self::DEFAULT_CAP_PERIOD,
        };
        let idle = match super::param(params, "idle_us") {
            Some(v) => super::parse_us("idle_us", v, Duration::ZERO, Self::MAX_IDLE)?,
            None => Duration::ZERO,
        };
        Self::new(slice, cap_period)?.with_idle(idle)
    }

    /// The idle window.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Whether the device should stay idle at `now` for the vcoproc it
    /// anticipates: it has not come back, its window is open, and it is
    /// owed device time (its vtime is below the best queued one's by more
    /// than the margin a wake-up needs to preempt). Ends the anticipation
    /// otherwise. Returns how long to idle.
    fn anticipate(&mut self, now: u64) -> Option<Duration> {
        let a = self.anticipating?;
        let owed = match (self.entries.get(&a.vcoproc), self.queue.first()) {
            (Some(e), Some(&(best, _))) if e.place == Place::Out && now < a.until => {
                let margin = weighted(nanos(self.slice) / 4, e.weight);
                e.vtime.saturating_add(margin) < best
            }
            _ => false,
        };
        if owed {
            Some(Duration::from_nanos(a.until - now))
        } else {
            self.end_anticipation(now);
            None
        }
    }

    /// Stop idling for the anticipated vcoproc at `now`, charging it the
    /// time the device idled for it: the device was kept for it, so that
    /// time is its own, and a vcoproc that pauses just under the window
    /// after tiny jobs pays for the idling it causes instead of holding the
    /// device idle at no cost for as long as it is owed anything.
    fn end_anticipation(&mut self, now: u64) {
        let Some(a) = self.anticipating.take() else {
            return;
        };
        let idled = now.min(a.until).saturating_sub(a.since);
        self.charge_work(a.vcoproc, Duration::from_nanos(idled), now);
    }

    /// End an anticipation of `v` at `now` (it came back, or left).
    fn stop_anticipating(&mut self, v: VcoprocId, now: u64) {
        if self.anticipating.is_some_and(|a| a.vcoproc == v) {
            self.end_anticipation(now);
        }
    }

    /// The slice length.
    pub fn slice(&self) -> Duration {
        self.slice
    }

    /// The cap period.
    pub fn cap_period(&self) -> Duration {
        self.cap_period
    }

    fn period_ns(&self) -> u64 {
        nanos(self.cap_period).max(1)
    }

    /// Budget per cap period for `cap_pct`, ns.
    fn cap_budget(&self, cap_pct: u32) -> i64 {
        let b = u128::from(self.period_ns()) * u128::from(cap_pct.min(100)) / 100;
        i64::try_from(b).unwrap_or(i64::MAX).max(1)
    }

    /// Bring `v`'s cap budget to the period holding `now`: one budget per
    /// period boundary passed, at most one period's worth in all.
    fn refresh(&mut self, v: VcoprocId, now: u64) {
        let period = self.period_ns();
        let Some(cap) = self.entries.get(&v).and_then(|e| e.cap_pct) else {
            return;
        };
        let budget = self.cap_budget(cap);
        let Some(e) = self.entries.get_mut(&v) else {
            return;
        };
        let idx = now / period;
        match e.cap_period_idx {
            None => e.cap_period_idx = Some(idx),
            Some(old) if idx > old => {
                let passed = i64::try_from(idx - old).unwrap_or(i64::MAX);
                e.cap_left = e
                    .cap_left
                    .saturating_add(budget.saturating_mul(passed))
                    .min(budget);
                e.cap_period_idx = Some(idx);
            }
            Some(_) => {}
        }
    }

    /// When `v`, out of budget, gets a positive budget again.
    fn replenish_at(&self, e: &Entry) -> u64 {
        let budget = self.cap_budget(e.cap_pct.unwrap_or(100));
        let debt = e.cap_left.saturating_neg().max(0);
        let periods = (debt / budget).saturating_add(1).unsigned_abs();
        e.cap_period_idx
            .unwrap_or(0)
            .saturating_add(periods)
            .saturating_mul(self.period_ns())
    }

    /// The running vcoproc's vtime at `now` (its slice so far included).
    fn running_vtime(r: &Running, now: u64) -> u128 {
        r.vtime
            .saturating_add(weighted(now.saturating_sub(r.start_ns), r.weight))
    }

    /// Wake-up placement: at most one slice of `v`'s weighted time ahead of
    /// the lowest vtime competing now.
    fn place(&mut self, v: VcoprocId, now: u64) {
        let queued = self.queue.first().map(|&(t, _)| t);
        let running = self
            .running
            .filter(|r| r.vcoproc != v)
            .map(|r| Self::running_vtime(&r, now));
        let reference = match (queued, running) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => self.floor,
        };
        let slice = nanos(self.slice);
        if let Some(e) = self.entries.get_mut(&v) {
            let lowest = reference.saturating_sub(weighted(slice, e.weight));
            e.vtime = e.vtime.max(lowest);
        }
    }

    /// Take `v` out of whichever set holds it.
    fn unplace(&mut self, v: VcoprocId) {
        if let Some(e) = self.entries.get_mut(&v) {
            match std::mem::replace(&mut e.place, Place::Out) {
                Place::Out => {}
                Place::Queued => {
                    self.queue.remove(&(e.vtime, v));
                }
                Place::Throttled(t) => {
                    self.throttled.remove(&(t, v));
                }
            }
        }
    }

    /// Put `v` (in no set) into the queue, or among the throttled when it is
    /// capped and out of budget. Its budget must be refreshed already.
    fn enqueue(&mut self, v: VcoprocId) {
        let Some(e) = self.entries.get(&v) else {
            return;
        };
        let place = if e.cap_pct.is_some() && e.cap_left <= 0 {
            let t = self.replenish_at(e);
            self.throttled.insert((t, v));
            Place::Throttled(t)
        } else {
            self.queue.insert((e.vtime, v));
            Place::Queued
        };
        if let Some(e) = self.entries.get_mut(&v) {
            e.place = place;
        }
    }

    /// Move every throttled vcoproc whose replenishment has come back into
    /// the queue.
    fn unthrottle(&mut self, now: u64) {
        let mut due = vec![];
        while let Some(&(t, v)) = self.throttled.first() {
            if t > now {
                break;
            }
            self.unplace(v);
            due.push(v);
        }
        // Requeued after the scan: one whose replenishment time saturated
        // (the clock at its end) is throttled again, not looped over.
        for v in due {
            self.refresh(v, now);
            self.place(v, now);
            self.enqueue(v);
        }
    }
}

impl Policy for Credit {
    fn name(&self) -> &'static str {
        "credit"
    }

    fn describe(&self) -> Vec<(String, String)> {
        vec![
            ("slice_us".into(), self.slice.as_micros().to_string()),
            (
                "cap_period_us".into(),
                self.cap_period.as_micros().to_string(),
            ),
            ("idle_us".into(), self.idle.as_micros().to_string()),
        ]
    }

    fn attach(&mut self, v: VcoprocId, params: &SchedParams) -> Result<(), PolicyError> {
        params.validate()?;
        if self.entries.contains_key(&v) {
            return self.set_params(v, params);
        }
        let cap_left = params.cap_pct.map_or(0, |c| self.cap_budget(c));
        self.entries.insert(
            v,
            Entry {
                weight: params.weight,
                cap_pct: params.cap_pct,
                vtime: self.floor,
                place: Place::Out,
                cap_left,
                cap_period_idx: None,
                waited_since: None,
                short_waits: false,
            },
        );
        Ok(())
    }

    fn detach(&mut self, v: VcoprocId) {
        self.stop_anticipating(v, self.now_seen);
        self.unplace(v);
        self.entries.remove(&v);
        if self.running.is_some_and(|r| r.vcoproc == v) {
            self.running = None;
        }
    }

    fn set_params(&mut self, v: VcoprocId, params: &SchedParams) -> Result<(), PolicyError> {
        params.validate()?;
        let new_budget = params.cap_pct.map(|c| self.cap_budget(c));
        let e = self.entries.get_mut(&v).ok_or(PolicyError::Unknown(v))?;
        e.weight = params.weight;
        match (e.cap_pct, new_budget) {
            (None, Some(b)) => {
                e.cap_left = b;
                e.cap_period_idx = None;
            }
            (Some(_), Some(b)) => e.cap_left = e.cap_left.min(b),
            (_, None) => {
                e.cap_left = 0;
                e.cap_period_idx = None;
            }
        }
        e.cap_pct = params.cap_pct;
        if e.place != Place::Out {
            // Re-key: a new cap may throttle it, a lifted one frees it.
            let was_throttled = matches!(e.place, Place::Throttled(_));
            self.unplace(v);
            if was_throttled {
                self.place(v, self.now_seen);
            }
            self.enqueue(v);
        }
        Ok(())
    }

    fn wake(&mut self, v: VcoprocId, now_ns: u64) -> WakeAction {
        self.now_seen = self.now_seen.max(now_ns);
        let idle = nanos(self.idle);
        let mut short = false;
        match self.entries.get_mut(&v) {
            Some(e) if e.place == Place::Out => {
                if let Some(t) = e.waited_since.take() {
                    short = idle > 0 && now_ns.saturating_sub(t) <= idle;
                    e.short_waits = short;
                }
            }
            _ => return WakeAction::None,
        }
        self.stop_anticipating(v, now_ns);
        self.refresh(v, now_ns);
        // Back within the idle window, it did not sleep: it keeps its
        // vtime, and so what it is owed.
        if !short {
            self.place(v, now_ns);
        }
        self.enqueue(v);
        let Some(e) = self.entries.get(&v) else {
            return WakeAction::None;
        };
        let Some(r) = self.running.filter(|r| r.vcoproc != v) else {
            return WakeAction::None;
        };
        if e.place != Place::Queued {
            return WakeAction::None;
        }
        let granularity = weighted(nanos(self.slice) / 4, e.weight);
        if e.vtime.saturating_add(granularity) < Self::running_vtime(&r, now_ns) {
            WakeAction::Preempt
        } else {
            WakeAction::None
        }
    }

    fn block(&mut self, v: VcoprocId) {
        self.stop_anticipating(v, self.now_seen);
        if let Some(e) = self.entries.get_mut(&v) {
            e.waited_since = None;
        }
        self.unplace(v);
    }

    fn pick(&mut self, now_ns: u64) -> Decision {
        self.now_seen = self.now_seen.max(now_ns);
        // Nothing runs while the runner asks.
        self.running = None;
        self.unthrottle(now_ns);
        if let Some(t) = self.anticipate(now_ns) {
            return Decision::Idle(Some(t.max(Duration::from_nanos(1))));
        }
        while let Some((vtime, v)) = self.queue.pop_first() {
            let Some(e) = self.entries.get_mut(&v) else {
                continue;
            };
            e.place = Place::Out;
            self.refresh(v, now_ns);
            let Some(e) = self.entries.get(&v) else {
                continue;
            };
            let mut budget = self.slice;
            if e.cap_pct.is_some() {
                if e.cap_left <= 0 {
                    self.enqueue(v);
                    continue;
                }
                budget = budget.min(Duration::from_nanos(e.cap_left.unsigned_abs()));
            }
            let weight = e.weight;
            // The best vcoproc is out of credit: everybody gets CREDIT_INIT.
            if vtime.saturating_sub(self.base) >= weighted(nanos(Credit::CREDIT_INIT), REF_WEIGHT) {
                self.base = vtime;
            }
            self.floor = self.floor.max(vtime);
            self.running = Some(Running {
                vcoproc: v,
                start_ns: now_ns,
                vtime,
                weight,
            });
            return Decision::Run { vcoproc: v, budget };
        }
        match self.throttled.first() {
            Some(&(t, _)) => {
                Decision::Idle(Some(Duration::from_nanos(t.saturating_sub(now_ns).max(1))))
            }
            None => Decision::Idle(None),
        }
    }

    fn charge(&mut self, v: VcoprocId, ran: Duration, now_ns: u64, end: SliceEnd) {
        self.now_seen = self.now_seen.max(now_ns);
        let ran_ns = nanos(ran);
        let run = self.running.filter(|r| r.vcoproc == v);
        if run.is_some() {
            self.running = None;
        }
        let Some(e) = self.entries.get(&v) else {
            return;
        };
        // A slice this policy did not pick (policy switched mid-slice) is
        // charged at the current weight, as having ended now.
        let weight = run.map_or(e.weight, |r| r.weight);
        let start = run.map_or(now_ns.saturating_sub(ran_ns), |r| r.start_ns);
        // Woken while it ran: it stays queued, re-keyed below.
        let was_placed = e.place != Place::Out;
        self.unplace(v);
        // The budget of the period the slice started in pays for all of it.
        self.refresh(v, start);
        let Some(e) = self.entries.get_mut(&v) else {
            return;
        };
        e.vtime = e.vtime.saturating_add(weighted(ran_ns, weight));
        if e.cap_pct.is_some() {
            e.cap_left = e
                .cap_left
                .saturating_sub(i64::try_from(ran_ns).unwrap_or(i64::MAX));
        }
        self.refresh(v, now_ns);
        if end.runnable || was_placed {
            self.enqueue(v);
        } else if end.waiting {
            let idle = nanos(self.idle);
            if let Some(e) = self.entries.get_mut(&v) {
                e.waited_since = Some(now_ns);
                if idle > 0 && e.short_waits {
                    self.end_anticipation(now_ns);
                    self.anticipating = Some(Anticipation {
                        vcoproc: v,
                        since: now_ns,
                        until: now_ns.saturating_add(idle),
                    });
                }
            }
        }
    }

    fn charge_work(&mut self, v: VcoprocId, took: Duration, now_ns: u64) {
        self.now_seen = self.now_seen.max(now_ns);
        let Some(e) = self.entries.get(&v) else {
            return;
        };
        let placed = e.place != Place::Out;
        // Re-keyed: the queue is ordered by vtime, the throttled set by a
        // replenishment time that the budget decides.
        self.unplace(v);
        self.refresh(v, now_ns);
        let took_ns = nanos(took);
        let running = self.running.filter(|r| r.vcoproc == v);
        let Some(e) = self.entries.get_mut(&v) else {
            return;
        };
        let weight = running.map_or(e.weight, |r| r.weight);
        e.vtime = e.vtime.saturating_add(weighted(took_ns, weight));
        if e.cap_pct.is_some() {
            e.cap_left = e
                .cap_left
                .saturating_sub(i64::try_from(took_ns).unwrap_or(i64::MAX));
        }
        if placed {
            self.enqueue(v);
        }
    }

    fn standings(&self) -> Vec<Standing> {
        let init = i128::from(nanos(Credit::CREDIT_INIT));
        let mut out: Vec<Standing> = self
            .entries
            .iter()
            .map(|(&v, e)| {
                // vtime above base, as ns at the reference weight.
                let used = if e.vtime >= self.base {
                    i128::try_from(
                        (e.vtime - self.base).saturating_mul(u128::from(REF_WEIGHT))
                            / Credit::SCALE,
                    )
                    .unwrap_or(i128::MAX)
                } else {
                    -i128::try_from(
                        (self.base - e.vtime).saturating_mul(u128::from(REF_WEIGHT))
                            / Credit::SCALE,
                    )
                    .unwrap_or(i128::MAX)
                };
                let credit_us = init.saturating_sub(used) / 1000;
                let credit_us = i64::try_from(credit_us).unwrap_or(if credit_us < 0 {
                    i64::MIN
                } else {
                    i64::MAX
                });
                let capped = e.cap_pct.is_some();
                Standing {
                    vcoproc: v,
                    queued: e.place != Place::Out,
                    figures: vec![
                        ("weight".into(), i64::from(e.weight)),
                        ("credit_us".into(), credit_us),
                        ("cap_pct".into(), e.cap_pct.map_or(-1, i64::from)),
                        (
                            "cap_left_us".into(),
                            if capped { e.cap_left / 1000 } else { 0 },
                        ),
                        (
                            "throttled".into(),
                            i64::from(matches!(e.place, Place::Throttled(_))),
                        ),
                        (
                            "running".into(),
                            i64::from(self.running.is_some_and(|r| r.vcoproc == v)),
                        ),
                    ],
                }
            })
            .collect();
        out.sort_by_key(|s| s.vcoproc);
        out
    }
}

#[cfg(test)]
mod tests;
