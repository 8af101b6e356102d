//! `rt`: hard reservations `(budget, period)` scheduled earliest deadline
//! first, in the manner of Xen's RTDS; vcoprocs without a reservation share
//! the slack round robin.
//!
//! # Reservations
//!
//! A vcoproc whose [`SchedParams::reservation`] is `Some((budget, period))`
//! owns a grid of periods anchored at the first time it becomes runnable
//! under this policy: release `k` is at `anchor + k·period`, and the deadline
//! of a period is the next release. At each release its budget is refilled.
//! A run that overruns its budget (devices that can only be stopped between
//! jobs do) is charged in full: the budget left goes negative, and that debt
//! (at most one budget) is taken off the next refill. A vcoproc that wakes
//! after sleeping past its deadline skips the periods it slept through by
//! whole periods (its phase is kept) and is refilled, like RTDS
//! `rt_update_deadline`; unused budget is never carried over.
//!
//! Queued reserved vcoprocs with budget left are ordered by deadline; `pick`
//! takes the earliest. Its slice ends at the earliest of: its budget running
//! out, its own deadline, and the next release of any other queued reserved
//! vcoproc, so a release that makes an earlier deadline eligible takes the
//! device at once (exact EDF preemption without a scan). A depleted reserved
//! vcoproc waits for its next release even when the device is otherwise idle
//! (hard reservations: it gets no slack).
//!
//! # Slack
//!
//! Vcoprocs without a reservation run only when no reserved vcoproc is
//! eligible, in FIFO order, one slice (`slice_us`) per turn, cut short at the
//! next release of a queued reserved vcoproc. A turn cut short (by such a
//! release or by a preemption) keeps the rest of its slice at the head of the
//! FIFO.
//!
//! # Admission control
//!
//! The sum of `budget/period` over every attached reserved vcoproc may not
//! exceed `capacity_pct` (default 95 %, leaving room for context switches).
//! Each term is computed in integer parts per million, rounded up. An
//! `attach` or `set_params` that would exceed the capacity fails with
//! [`PolicyError::BadParam`] naming the requested and the available
//! utilisation, and changes nothing; `detach` gives the utilisation back.
//!
//! # Changing parameters
//!
//! [`Policy::set_params`] admits the new utilisation at once. New values of
//! an existing reservation take effect at its next release (the current
//! period finishes under the old ones; the grid continues from that release
//! with the new period). Gaining a reservation takes effect at the next
//! decision: the grid is anchored then if the vcoproc is queued, otherwise
//! when it is next woken or requeued. Losing one takes effect at once: the
//! vcoproc joins the slack FIFO.
//!
//! # Figures
//!
//! `describe` gives `capacity_pct`, `slice_us` and the admitted
//! `utilisation_ppm`. Each standing gives `budget_us` and `period_us` (-1
//! without a reservation), `budget_left_us` (negative: overrun debt; 0
//! without a reservation), `deadline_us` (absolute, on the clock passed to
//! the policy; -1 before the grid is anchored or without a reservation),
//! `overruns` (periods in which it was depleted while still runnable),
//! `releases` (budget refills) and `picks`.
//!
//! Every operation except [`Policy::standings`] is O(log n): three ordered
//! sets (eligible by deadline, queued reserved by next release, slack FIFO by
//! sequence number) and a hash map.

use super::runqueue::{Place, RunQueue};
use super::{Decision, Policy, PolicyError, SchedParams, SliceEnd, Standing, WakeAction};
use crate::ids::VcoprocId;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Parts per million in one.
const PPM: u64 = 1_000_000;
/// Durations are kept in nanoseconds, at most this many (so budgets fit the
/// signed budget-left figure).
const MAX_NS: u64 = i64::MAX as u64;

/// `d` in nanoseconds, clamped to [`MAX_NS`].
fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(MAX_NS).min(MAX_NS)
}

/// `budget/period` in parts per million, rounded up.
fn util_ppm(budget_ns: u64, period_ns: u64) -> u64 {
    let u = (u128::from(budget_ns) * u128::from(PPM)).div_ceil(u128::from(period_ns.max(1)));
    u64::try_from(u).unwrap_or(u64::MAX)
}

/// A utilisation in ppm as a percentage ("12.3456%").
fn pct(ppm: u64) -> String {
    format!("{}.{:04}%", ppm / 10_000, ppm % 10_000)
}

/// A nanosecond count as whole microseconds for standings.
fn us(ns: i64) -> i64 {
    ns / 1_000
}

/// The reservation of `p` in nanoseconds (validated: `0 < budget <= period`).
fn reservation_ns(p: &SchedParams) -> Option<(u64, u64)> {
    p.reservation.map(|(b, per)| {
        let per = ns(per).max(1);
        (ns(b).clamp(1, per), per)
    })
}

#[derive(Debug, Clone, Copy)]
struct Reservation {
    /// Budget per period (ns).
    budget: u64,
    /// Period (ns).
    period: u64,
    /// New `(budget, period)` taking over at the next release.
    next: Option<(u64, u64)>,
    /// Deadline of the current period (= its next release); `None` until the
    /// grid is anchored at the first wake-up.
    deadline: Option<u64>,
    /// Budget left in the current period (ns); negative: overrun debt.
    left: i64,
}

impl Reservation {
    fn new((budget, period): (u64, u64)) -> Self {
        Reservation {
            budget,
            period,
            next: None,
            deadline: None,
            left: budget as i64,
        }
    }
}

/// Where a vcoproc is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queued {
    /// Not in the run queue.
    No,
    /// In the slack FIFO at this place.
    Fifo(Place),
    /// Reserved: in `releases` at its deadline, and in `eligible` too when
    /// it has budget left.
    Res,
    /// Reserved while queued, grid to be anchored at the next decision.
    Unanchored,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    res: Option<Reservation>,
    queued: Queued,
    /// Utilisation admitted for it (ppm).
    ppm: u64,
    /// Unused part of a slack slice that was cut short (ns).
    slice_left: Option<u64>,
    /// The slack slice this turn may use (ns, set at pick).
    turn: u64,
    picks: u64,
    releases: u64,
    overruns: u64,
    /// Deadline of the period whose overrun was last counted.
    overrun_counted: Option<u64>,
}

impl Entry {
    fn new(res: Option<(u64, u64)>) -> Self {
        Entry {
            res: res.map(Reservation::new),
            queued: Queued::No,
            ppm: res.map_or(0, |(b, p)| util_ppm(b, p)),
            slice_left: None,
            turn: 0,
            picks: 0,
            releases: 0,
            overruns: 0,
            overrun_counted: None,
        }
    }

    /// Bring the reservation's grid up to `now`: anchor it on first use; when
    /// the deadline has passed, adopt pending values, move the deadline past
    /// `now` by whole periods and refill the budget less the overrun debt.
    fn catch_up(&mut self, now: u64) {
        let Some(r) = self.res.as_mut() else {
            return;
        };
        match r.deadline {
            None => {
                if let Some((b, p)) = r.next.take() {
                    r.budget = b;
                    r.period = p;
                }
                r.deadline = Some(now.saturating_add(r.period));
                r.left = r.budget as i64;
                self.releases += 1;
            }
            Some(d) if now >= d => {
                if let Some((b, p)) = r.next.take() {
                    r.budget = b;
                    r.period = p;
                }
                let period = r.period.max(1);
                let k = (now - d) / period + 1;
                r.deadline = Some(d.saturating_add(k.saturating_mul(period)));
                let debt = r.left.min(0).unsigned_abs().min(r.budget);
                r.left = (r.budget - debt) as i64;
                self.releases += 1;
            }
            Some(_) => {}
        }
    }
}

/// The `rt` policy: EDF over hard reservations, round robin in the slack.
#[derive(Debug)]
pub struct Rt {
    capacity_pct: u32,
    /// Slack slice (ns).
    slice: u64,
    /// Sum of the admitted utilisations (ppm).
    admitted_ppm: u64,
    entries: HashMap<VcoprocId, Entry>,
    /// Queued reserved vcoprocs with budget left, by deadline.
    eligible: BTreeSet<(u64, VcoprocId)>,
    /// Every queued reserved vcoproc, by next release (= deadline).
    releases: BTreeSet<(u64, VcoprocId)>,
    /// Queued unreserved vcoprocs, in FIFO order.
    fifo: RunQueue,
    /// Vcoprocs that gained a reservation while queued (checked lazily).
    unanchored: Vec<VcoprocId>,
    /// The vcoproc picked last and not charged yet, with its deadline if it
    /// is reserved.
    running: Option<(VcoprocId, Option<u64>)>,
}

impl Rt {
    /// Default admission capacity (percent of the device).
    pub const DEFAULT_CAPACITY_PCT: u32 = 95;
    /// Default slack slice.
    pub const DEFAULT_SLICE: Duration = Duration::from_millis(5);
    /// Shortest slack slice accepted.
    pub const MIN_SLICE: Duration = Duration::from_micros(50);
    /// Longest slack slice accepted.
    pub const MAX_SLICE: Duration = Duration::from_secs(10);

    /// EDF with admission up to `capacity_pct` percent (1..=100) of the
    /// device; unreserved vcoprocs get `slice` turns of the slack.
    pub fn new(capacity_pct: u32, slice: Duration) -> Result<Rt, PolicyError> {
        if !(1..=100).contains(&capacity_pct) {
            return Err(PolicyError::BadParam(format!(
                "rt: capacity_pct={capacity_pct} not in 1..=100"
            )));
        }
        if slice < Self::MIN_SLICE || slice > Self::MAX_SLICE {
            return Err(PolicyError::BadParam(format!(
                "rt: slice {slice:?} not in {:?}..={:?}",
                Self::MIN_SLICE,
                Self::MAX_SLICE
            )));
        }
        Ok(Rt {
            capacity_pct,
            slice: ns(slice),
            admitted_ppm: 0,
            entries: HashMap::new(),
            eligible: BTreeSet::new(),
            releases: BTreeSet::new(),
            fifo: RunQueue::default(),
            unanchored: Vec::new(),
            running: None,
        })
    }

    /// Build from `key=value` parameters: `capacity_pct` (1..=100, default
    /// 95) and `slice_us` (50..=10 000 000, default 5000).
    pub fn from_params(params: &[(String, String)]) -> Result<Self, PolicyError> {
        super::check_known("rt", params, &["capacity_pct", "slice_us"])?;
        let capacity = match super::param(params, "capacity_pct") {
            Some(v) => super::parse_u64("capacity_pct", v, 1, 100)? as u32,
            None => Self::DEFAULT_CAPACITY_PCT,
        };
        let slice = match super::param(params, "slice_us") {
            Some(v) => super::parse_us("slice_us", v, Self::MIN_SLICE, Self::MAX_SLICE)?,
            None => Self::DEFAULT_SLICE,
        };
        Self::new(capacity, slice)
    }

    /// Utilisation admitted so far, in parts per million.
    pub fn utilisation_ppm(&self) -> u64 {
        self.admitted_ppm
    }

    fn capacity_ppm(&self) -> u64 {
        u64::from(self.capacity_pct) * (PPM / 100)
    }

    /// The admitted total if a vcoproc holding `old_ppm` asks for `new`.
    fn admit(&self, old_ppm: u64, new: Option<(u64, u64)>) -> Result<u64, PolicyError> {
        let req = new.map_or(0, |(b, p)| util_ppm(b, p));
        let others = self.admitted_ppm.saturating_sub(old_ppm);
        let total = others.saturating_add(req);
        let cap = self.capacity_ppm();
        if total > cap && req > old_ppm {
            let (b, p) = new.unwrap_or_default();
            return Err(PolicyError::BadParam(format!(
                "rt: reservation {:?} per {:?} requests utilisation {req} ppm ({}), \
                 only {} ppm ({}) available: {others} ppm of the {}% capacity already admitted",
                Duration::from_nanos(b),
                Duration::from_nanos(p),
                pct(req),
                cap.saturating_sub(others),
                pct(cap.saturating_sub(others)),
                self.capacity_pct,
            )));
        }
        Ok(total)
    }

    /// Append unreserved `v` to the slack FIFO (or put it at the head).
    fn enqueue_fifo(&mut self, v: VcoprocId, at_head: bool) {
        if let Some(e) = self.entries.get_mut(&v) {
            e.queued = Queued::Fifo(self.fifo.push(v, at_head));
        }
    }

    /// Queue reserved `v` (not queued) at `now`, bringing its grid up to
    /// date first. Counts an overrun when it is runnable but depleted.
    fn enqueue_reserved(&mut self, v: VcoprocId, now: u64) {
        let Some(e) = self.entries.get_mut(&v) else {
            return;
        };
        e.catch_up(now);
        let Some(Reservation {
            deadline: Some(d),
            left,
            ..
        }) = e.res
        else {
            return;
        };
        e.queued = Queued::Res;
        self.releases.insert((d, v));
        if left > 0 {
            self.eligible.insert((d, v));
        } else if e.overrun_counted != Some(d) {
            e.overrun_counted = Some(d);
            e.overruns += 1;
        }
    }

    /// Take `v` out of whichever queue holds it.
    fn unqueue(&mut self, v: VcoprocId) {
        let Some(e) = self.entries.get_mut(&v) else {
            return;
        };
        match e.queued {
            Queued::Fifo(at) => self.fifo.remove(v, at),
            Queued::Res => {
                if let Some(d) = e.res.and_then(|r| r.deadline) {
                    self.eligible.remove(&(d, v));
                    self.releases.remove(&(d, v));
                }
            }
            Queued::Unanchored | Queued::No => {}
        }
        e.queued = Queued::No;
    }

    /// Anchor the grids of vcoprocs that gained a reservation while queued.
    fn anchor_pending(&mut self, now: u64) {
        for v in std::mem::take(&mut self.unanchored) {
            let pending = self.entries.get_mut(&v).is_some_and(|e| {
                let p = e.queued == Queued::Unanchored && e.res.is_some();
                if p {
                    e.queued = Queued::No;
                }
                p
            });
            if pending {
                self.enqueue_reserved(v, now);
            }
        }
    }

    /// Replenish every queued reserved vcoproc whose release is due.
    fn release_due(&mut self, now: u64) {
        let mut due = Vec::new();
        while let Some(&(d, v)) = self.releases.first() {
            if d > now {
                break;
            }
            self.releases.pop_first();
            self.eligible.remove(&(d, v));
            due.push(v);
        }
        for v in due {
            if let Some(e) = self.entries.get_mut(&v) {
                e.queued = Queued::No;
            }
            self.enqueue_reserved(v, now);
        }
    }

    /// Nanoseconds from `now` to the next release of a queued reserved
    /// vcoproc, if any.
    fn until_release(&self, now: u64) -> Option<u64> {
        self.releases
            .first()
            .map(|&(r, _)| r.saturating_sub(now).max(1))
    }
}

impl Policy for Rt {
    fn name(&self) -> &'static str {
        "rt"
    }

    fn describe(&self) -> Vec<(String, String)> {
        vec![
            ("capacity_pct".into(), self.capacity_pct.to_string()),
            ("slice_us".into(), (self.slice / 1_000).to_string()),
            ("utilisation_ppm".into(), self.admitted_ppm.to_string()),
        ]
    }

    fn attach(&mut self, v: VcoprocId, params: &SchedParams) -> Result<(), PolicyError> {
        params.validate()?;
        if self.entries.contains_key(&v) {
            return self.set_params(v, params);
        }
        let res = reservation_ns(params);
        self.admitted_ppm = self.admit(0, res)?;
        self.entries.insert(v, Entry::new(res));
        Ok(())
    }

    fn detach(&mut self, v: VcoprocId) {
        self.unqueue(v);
        if let Some(e) = self.entries.remove(&v) {
            self.admitted_ppm = self.admitted_ppm.saturating_sub(e.ppm);
        }
        if self.running.is_some_and(|(r, _)| r == v) {
            self.running = None;
        }
    }

    fn set_params(&mut self, v: VcoprocId, params: &SchedParams) -> Result<(), PolicyError> {
        params.validate()?;
        let new = reservation_ns(params);
        let Some(e) = self.entries.get(&v).copied() else {
            return Err(PolicyError::Unknown(v));
        };
        self.admitted_ppm = self.admit(e.ppm, new)?;
        let mut e = e;
        e.ppm = new.map_or(0, |(b, p)| util_ppm(b, p));
        match (e.res.as_mut(), new) {
            (None, None) => {
                self.entries.insert(v, e);
            }
            (Some(_), None) => {
                // Losing the reservation: into the slack FIFO at once.
                let queued = e.queued != Queued::No;
                self.unqueue(v);
                e.queued = Queued::No;
                e.res = None;
                self.entries.insert(v, e);
                if queued {
                    self.enqueue_fifo(v, false);
                }
            }
            (None, Some(res)) => {
                // Gaining one: anchored at the next decision if queued.
                e.res = Some(Reservation::new(res));
                if let Queued::Fifo(at) = e.queued {
                    self.fifo.remove(v, at);
                    e.queued = Queued::Unanchored;
                    e.slice_left = None;
                    self.unanchored.push(v);
                }
                self.entries.insert(v, e);
            }
            (Some(r), Some((b, p))) => {
                if r.deadline.is_none() {
                    *r = Reservation::new((b, p));
                } else if (b, p) == (r.budget, r.period) {
                    r.next = None;
                } else {
                    r.next = Some((b, p));
                }
                self.entries.insert(v, e);
            }
        }
        Ok(())
    }

    fn wake(&mut self, v: VcoprocId, now_ns: u64) -> WakeAction {
        let Some(e) = self.entries.get(&v) else {
            return WakeAction::None;
        };
        if e.queued != Queued::No {
            return WakeAction::None;
        }
        if e.res.is_none() {
            self.enqueue_fifo(v, false);
            return WakeAction::None;
        }
        self.enqueue_reserved(v, now_ns);
        let Some(Reservation {
            deadline: Some(d),
            left,
            ..
        }) = self.entries.get(&v).and_then(|e| e.res)
        else {
            return WakeAction::None;
        };
        match self.running {
            Some((r, _)) if r == v || left <= 0 => WakeAction::None,
            Some((_, None)) => WakeAction::Preempt,
            Some((_, Some(rd))) if d < rd => WakeAction::Preempt,
            _ => WakeAction::None,
        }
    }

    fn block(&mut self, v: VcoprocId) {
        self.unqueue(v);
        if let Some(e) = self.entries.get_mut(&v) {
            e.slice_left = None;
        }
    }

    fn pick(&mut self, now_ns: u64) -> Decision {
        self.running = None;
        self.anchor_pending(now_ns);
        self.release_due(now_ns);
        while let Some((d, v)) = self.eligible.pop_first() {
            self.releases.remove(&(d, v));
            let Some(e) = self.entries.get_mut(&v) else {
                continue;
            };
            e.queued = Queued::No;
            e.picks += 1;
            let left = e.res.map_or(0, |r| r.left.max(0) as u64);
            let until = self
                .releases
                .first()
                .map_or(d, |&(r, _)| r.min(d))
                .saturating_sub(now_ns);
            let budget = left.min(until).max(1);
            self.running = Some((v, Some(d)));
            return Decision::Run {
                vcoproc: v,
                budget: Duration::from_nanos(budget),
            };
        }
        let release = self.until_release(now_ns);
        while let Some(v) = self.fifo.pop() {
            let Some(e) = self.entries.get_mut(&v) else {
                continue;
            };
            e.queued = Queued::No;
            e.picks += 1;
            let turn = e.slice_left.take().unwrap_or(self.slice);
            e.turn = turn;
            let budget = release.map_or(turn, |r| r.min(turn)).max(1);
            self.running = Some((v, None));
            return Decision::Run {
                vcoproc: v,
                budget: Duration::from_nanos(budget),
            };
        }
        Decision::Idle(release.map(Duration::from_nanos))
    }

    fn charge(&mut self, v: VcoprocId, ran: Duration, now_ns: u64, end: SliceEnd) {
        if self.running.is_some_and(|(r, _)| r == v) {
            self.running = None;
        }
        let ran = ns(ran);
        let min_slice = ns(Self::MIN_SLICE);
        let slice = self.slice;
        let Some(e) = self.entries.get(&v).copied() else {
            return;
        };
        if let Some(r) = e.res {
            let queued = e.queued == Queued::Res;
            if r.deadline.is_some() {
                // Eligibility may change: leave the sets while charging.
                if queued {
                    self.unqueue(v);
                }
                if let Some(r) = self.entries.get_mut(&v).and_then(|e| e.res.as_mut()) {
                    r.left = r.left.saturating_sub(ran as i64).max(-(r.budget as i64));
                }
            }
            // Time charged to an unanchored reservation has no period to
            // count against: only the grid starts.
            if (end.runnable && e.queued == Queued::No) || queued {
                self.enqueue_reserved(v, now_ns);
            }
            return;
        }
        if let Some(e) = self.entries.get_mut(&v) {
            let left = e.turn.min(slice).saturating_sub(ran);
            e.turn = 0;
            if !end.runnable || e.queued != Queued::No {
                return;
            }
            // A turn cut short (preempted, or stopped at a release) keeps
            // the rest of its slice at the head.
            let keep = left >= min_slice;
            e.slice_left = keep.then_some(left);
            self.enqueue_fifo(v, keep);
        }
    }

    fn standings(&self) -> Vec<Standing> {
        let mut out: Vec<Standing> = self
            .entries
            .iter()
            .map(|(&v, e)| {
                let r = e.res;
                let figure = |f: fn(&Reservation) -> i64| r.as_ref().map_or(-1, f);
                Standing {
                    vcoproc: v,
                    queued: e.queued != Queued::No,
                    figures: vec![
                        ("budget_us".into(), figure(|r| us(r.budget as i64))),
                        ("period_us".into(), figure(|r| us(r.period as i64))),
                        ("budget_left_us".into(), r.map_or(0, |r| us(r.left))),
                        (
                            "deadline_us".into(),
                            figure(|r| r.deadline.map_or(-1, |d| us(d.min(MAX_NS) as i64))),
                        ),
                        ("overruns".into(), e.overruns as i64),
                        ("releases".into(), e.releases as i64),
                        ("picks".into(), e.picks as i64),
                    ],
                }
            })
            .collect();
        out.sort_by_key(|s| s.vcoproc);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testkit::{
        figure, kv, pick_at as pick, Client, Demand, Sim, MS, RUN, WAITS,
    };

    const DONE: SliceEnd = WAITS;

    fn v(i: u32) -> VcoprocId {
        VcoprocId(i)
    }

    fn res(budget: u64, period: u64) -> SchedParams {
        SchedParams {
            reservation: Some((Duration::from_nanos(budget), Duration::from_nanos(period))),
            ..SchedParams::default()
        }
    }

    /// A client with jobs of `work` ns released every `period` ns from
    /// `offset` on, each due at the next release.
    fn periodic(id: u32, work: u64, period: u64, offset: u64) -> (u32, Demand) {
        let first = offset;
        (
            id,
            Demand::Periodic {
                job: work,
                period,
                first,
            },
        )
    }

    /// A client that always has work.
    fn hog(id: u32) -> (u32, Demand) {
        (id, Demand::Hog)
    }

    /// A periodic client's job and period.
    fn job_period(c: &Client) -> (u64, u64) {
        match c.demand {
            Demand::Periodic { job, period, .. } => (job, period),
            _ => (0, 0),
        }
    }

    /// Attach every client (those in `reserve` with their job and period
    /// as their reservation); hogs are woken at 0.
    fn sim_of(p: Rt, set: Vec<(u32, Demand)>, reserve: &[u32]) -> Sim<Rt> {
        let mut sim = Sim::new(p);
        for (id, demand) in set {
            let params = match demand {
                Demand::Periodic { job, period, .. } if reserve.contains(&id) => res(job, period),
                _ => SchedParams::default(),
            };
            sim.add(id, &params, demand);
        }
        sim
    }

    fn admitted_set(offsets: [u64; 4]) -> Vec<(u32, Demand)> {
        vec![
            periodic(1, 2 * MS, 10 * MS, offsets[0]),
            periodic(2, 3 * MS, 15 * MS, offsets[1]),
            periodic(3, 5 * MS, 20 * MS, offsets[2]),
            periodic(4, 20 * MS, 100 * MS, offsets[3]),
            hog(5),
        ]
    }

    #[test]
    fn admitted_set_meets_every_deadline_and_hog_gets_the_slack() {
        for offsets in [[0; 4], [0, 7 * MS, 3 * MS, 55 * MS]] {
            let p = Rt::new(95, Duration::from_millis(5)).unwrap();
            let mut sim = sim_of(p, admitted_set(offsets), &[1, 2, 3, 4]);
            // 2/10 + 3/15 + 5/20 + 20/100 = 85 %.
            assert_eq!(sim.policy.utilisation_ppm(), 850_000);
            let end = 2_000 * MS;
            sim.run_until(end);
            assert_eq!(sim.now, end);
            assert_eq!(sim.idle, 0, "the hog is always runnable");
            for t in &sim.clients[..4] {
                assert_eq!(t.misses, 0, "{} missed a deadline", t.id);
                // Everything released and due by the end was done.
                let (work, period) = job_period(t);
                let due = (end - offsets[(t.id - 1) as usize]) / period;
                assert!(t.ran >= due * work, "{}: ran {} of {}", t.id, t.ran, due);
                assert_eq!(figure(&sim.policy, t.id, "overruns"), 0);
            }
            let hog = sim.clients[4].ran;
            let reserved: u64 = sim.clients[..4].iter().map(|t| t.ran).sum();
            assert_eq!(hog + reserved, end);
            // The hog gets all but the work of the jobs released before the
            // end (about 85 % of it, a little more for jobs due after it).
            let released: u64 = sim.clients[..4]
                .iter()
                .map(|t| {
                    let (work, period) = job_period(t);
                    (end - offsets[(t.id - 1) as usize]).div_ceil(period) * work
                })
                .sum();
            assert!(hog >= end - released, "hog got {hog}");
            assert!(hog >= 300 * MS - 30 * MS, "hog got {hog}");
            assert!(sim.preemptions > 0, "releases preempt the hog");
        }
    }

    #[test]
    fn a_greedy_reservation_is_held_to_its_budget() {
        let p = Rt::new(95, Duration::from_millis(5)).unwrap();
        let mut tasks = vec![hog(1)];
        tasks.push(periodic(2, 3 * MS, 15 * MS, MS));
        tasks.push(periodic(3, 5 * MS, 20 * MS, 2 * MS));
        tasks.push(hog(4));
        let mut sim = sim_of(p, tasks, &[2, 3]);
        sim.policy.set_params(v(1), &res(2 * MS, 10 * MS)).unwrap();
        let end = 1_000 * MS;
        sim.run_until(end);
        // Reserved while queued, anchored at the first pick (0): exactly
        // 2 ms in each 10 ms, depleted while runnable in every period.
        assert_eq!(sim.clients[0].ran, 200 * MS);
        assert_eq!(figure(&sim.policy, 1, "overruns"), 100);
        assert_eq!(sim.clients[1].misses + sim.clients[2].misses, 0);
        // The unreserved hog gets the rest: 1 - 0.2 - 0.2 - 0.25.
        let hog = sim.clients[3].ran;
        assert!(hog >= 350 * MS - 10 * MS, "hog got {hog}");
    }

    #[test]
    fn unreserved_vcoprocs_share_the_slack_round_robin() {
        let p = Rt::new(95, Duration::from_millis(1)).unwrap();
        let tasks = vec![periodic(1, 5 * MS, 10 * MS, 0), hog(2), hog(3)];
        let mut sim = sim_of(p, tasks, &[1]);
        sim.run_until(1_000 * MS);
        assert_eq!(sim.clients[0].misses, 0);
        assert_eq!(sim.clients[0].ran, 500 * MS);
        let (a, b) = (sim.clients[1].ran, sim.clients[2].ran);
        assert_eq!(a + b, 500 * MS);
        assert!(a.abs_diff(b) <= MS, "slack split {a} / {b}");
    }

    #[test]
    fn admission_refuses_an_over_full_set_and_detach_frees() {
        let mut p = Rt::new(95, Duration::from_millis(5)).unwrap();
        p.attach(v(1), &res(50 * MS, 100 * MS)).unwrap();
        p.attach(v(2), &res(40 * MS, 100 * MS)).unwrap();
        p.attach(v(3), &SchedParams::default()).unwrap();
        assert_eq!(p.utilisation_ppm(), 900_000);
        let before = (p.describe(), p.standings());

        let err = p.attach(v(4), &res(10 * MS, 100 * MS)).unwrap_err();
        let PolicyError::BadParam(msg) = &err else {
            panic!("{err:?}");
        };
        assert!(msg.contains("100000 ppm"), "requested: {msg}");
        assert!(msg.contains("50000 ppm"), "available: {msg}");
        // Raising v2 or reserving v3 beyond the capacity fails too.
        assert!(p.set_params(v(2), &res(46 * MS, 100 * MS)).is_err());
        assert!(p.set_params(v(3), &res(6 * MS, 100 * MS)).is_err());
        assert_eq!((p.describe(), p.standings()), before, "nothing changed");
        assert_eq!(
            p.set_params(v(9), &SchedParams::default()),
            Err(PolicyError::Unknown(v(9)))
        );

        // Exactly up to the capacity is fine; lowering always is.
        p.set_params(v(2), &res(45 * MS, 100 * MS)).unwrap();
        assert_eq!(p.utilisation_ppm(), 950_000);
        p.set_params(v(2), &res(10 * MS, 100 * MS)).unwrap();
        assert_eq!(p.utilisation_ppm(), 600_000);
        p.set_params(v(3), &res(35 * MS, 100 * MS)).unwrap();
        assert!(p.attach(v(4), &res(30 * MS, 100 * MS)).is_err());
        p.detach(v(1));
        assert_eq!(p.utilisation_ppm(), 450_000);
        p.attach(v(4), &res(30 * MS, 100 * MS)).unwrap();
        assert_eq!(p.utilisation_ppm(), 750_000);

        // Each term is rounded up: 1/3 is 333 334 ppm.
        let mut p = Rt::new(100, Duration::from_millis(5)).unwrap();
        p.attach(v(1), &res(1, 3)).unwrap();
        p.attach(v(2), &res(1, 3)).unwrap();
        assert_eq!(p.utilisation_ppm(), 666_668);
        assert!(p.attach(v(3), &res(1, 3)).is_err());
        // Invalid reservations are refused before admission.
        assert!(p.attach(v(4), &res(2, 1)).is_err());
        assert!(p.attach(v(4), &res(0, 1)).is_err());
    }

    #[test]
    fn earlier_deadline_released_preempts() {
        let mut p = Rt::new(95, Duration::from_millis(5)).unwrap();
        p.attach(v(1), &res(20 * MS, 100 * MS)).unwrap();
        p.attach(v(2), &res(MS, 10 * MS)).unwrap();
        p.attach(v(3), &res(10 * MS, 200 * MS)).unwrap();
        p.attach(v(4), &SchedParams::default()).unwrap();
        p.wake(v(1), 0);
        assert_eq!(pick(&mut p, 0), Some((1, 20 * MS)));
        // Deadline 201 ms is later than v1's 100 ms: no preemption.
        assert_eq!(p.wake(v(3), MS), WakeAction::None);
        // Deadline 12 ms is earlier: preempt.
        assert_eq!(p.wake(v(2), 2 * MS), WakeAction::Preempt);
        p.charge(
            v(1),
            Duration::from_nanos(2 * MS),
            2 * MS,
            SliceEnd {
                runnable: true,
                preempted: true,
            },
        );
        // v2 runs, then v1 with the rest of its budget, then v3.
        assert_eq!(pick(&mut p, 2 * MS), Some((2, MS)));
        p.charge(v(2), Duration::from_nanos(MS), 3 * MS, DONE);
        assert_eq!(pick(&mut p, 3 * MS), Some((1, 18 * MS)));
        p.charge(v(1), Duration::from_nanos(18 * MS), 21 * MS, DONE);
        assert_eq!(pick(&mut p, 21 * MS), Some((3, 10 * MS)));
        // A reserved wake-up preempts an unreserved vcoproc.
        p.charge(v(3), Duration::from_nanos(MS), 22 * MS, DONE);
        p.wake(v(4), 22 * MS);
        assert_eq!(pick(&mut p, 22 * MS), Some((4, 5 * MS)));
        assert_eq!(p.wake(v(3), 23 * MS), WakeAction::Preempt);
        p.charge(
            v(4),
            Duration::from_nanos(MS),
            23 * MS,
            SliceEnd {
                runnable: true,
                preempted: true,
            },
        );
        assert_eq!(pick(&mut p, 23 * MS), Some((3, 9 * MS)));
        p.charge(v(3), Duration::from_nanos(9 * MS), 32 * MS, DONE);
        // The unreserved one resumes with the rest of its slice.
        assert_eq!(pick(&mut p, 32 * MS), Some((4, 4 * MS)));
        // A depleted reserved wake-up does not preempt.
        assert_eq!(p.wake(v(3), 33 * MS), WakeAction::None);
    }

    #[test]
    fn slices_end_at_releases() {
        let mut p = Rt::new(95, Duration::from_millis(5)).unwrap();
        p.attach(v(1), &res(2 * MS, 10 * MS)).unwrap();
        p.attach(v(2), &res(30 * MS, 100 * MS)).unwrap();
        p.attach(v(3), &SchedParams::default()).unwrap();
        p.wake(v(1), 0);
        p.wake(v(2), 0);
        p.wake(v(3), 0);
        assert_eq!(pick(&mut p, 0), Some((1, 2 * MS)));
        p.charge(v(1), Duration::from_nanos(2 * MS), 2 * MS, RUN);
        // v1 is depleted until 10 ms: v2 runs until then.
        assert_eq!(pick(&mut p, 2 * MS), Some((2, 8 * MS)));
        p.charge(v(2), Duration::from_nanos(8 * MS), 10 * MS, RUN);
        assert_eq!(pick(&mut p, 10 * MS), Some((1, 2 * MS)));
        p.charge(v(1), Duration::from_nanos(2 * MS), 12 * MS, RUN);
        assert_eq!(pick(&mut p, 12 * MS), Some((2, 8 * MS)));
        p.charge(v(2), Duration::from_nanos(8 * MS), 20 * MS, RUN);
        assert_eq!(pick(&mut p, 20 * MS), Some((1, 2 * MS)));
        p.charge(v(1), Duration::from_nanos(2 * MS), 22 * MS, RUN);
        // v2 has 14 ms left: 8 until v1's release; after the release v1
        // runs, then v2 its last 6 ms.
        assert_eq!(pick(&mut p, 22 * MS), Some((2, 8 * MS)));
        p.charge(v(2), Duration::from_nanos(8 * MS), 30 * MS, RUN);
        assert_eq!(pick(&mut p, 30 * MS), Some((1, 2 * MS)));
        p.charge(v(1), Duration::from_nanos(2 * MS), 32 * MS, RUN);
        assert_eq!(pick(&mut p, 32 * MS), Some((2, 6 * MS)));
        p.charge(v(2), Duration::from_nanos(6 * MS), 38 * MS, RUN);
        // Both depleted: the unreserved one until v1's release at 40 ms.
        assert_eq!(pick(&mut p, 38 * MS), Some((3, 2 * MS)));
        p.block(v(3));
        p.charge(v(3), Duration::from_nanos(2 * MS), 40 * MS, DONE);
        assert_eq!(figure(&p, 1, "overruns"), 4);
        assert_eq!(figure(&p, 2, "budget_left_us"), 0);
        // Nothing eligible: idle until the next release.
        assert_eq!(pick(&mut p, 39 * MS), None);
        assert_eq!(
            p.pick(39 * MS),
            Decision::Idle(Some(Duration::from_millis(1)))
        );
        p.block(v(1));
        p.block(v(2));
        assert_eq!(p.pick(39 * MS), Decision::Idle(None));
    }

    #[test]
    fn overrun_is_paid_in_the_next_period() {
        let mut p = Rt::new(95, Duration::from_millis(5)).unwrap();
        p.attach(v(1), &res(2 * MS, 10 * MS)).unwrap();
        p.wake(v(1), 0);
        assert_eq!(pick(&mut p, 0), Some((1, 2 * MS)));
        // The device could only stop it after 3 ms.
        p.charge(v(1), Duration::from_nanos(3 * MS), 3 * MS, RUN);
        assert_eq!(figure(&p, 1, "budget_left_us"), -1_000);
        assert_eq!(figure(&p, 1, "overruns"), 1);
        assert_eq!(
            p.pick(3 * MS),
            Decision::Idle(Some(Duration::from_millis(7)))
        );
        // Next period: 2 ms less the 1 ms debt.
        assert_eq!(pick(&mut p, 10 * MS), Some((1, MS)));
        p.charge(v(1), Duration::from_nanos(MS), 11 * MS, RUN);
        assert_eq!(pick(&mut p, 20 * MS), Some((1, 2 * MS)));
        // Debt is capped at one budget: a huge overrun costs one period.
        p.charge(v(1), Duration::from_nanos(50 * MS), 70 * MS, DONE);
        assert_eq!(figure(&p, 1, "budget_left_us"), -2_000);
        p.wake(v(1), 71 * MS);
        assert_eq!(figure(&p, 1, "budget_left_us"), 0);
        assert_eq!(figure(&p, 1, "deadline_us"), 80_000);
        assert_eq!(pick(&mut p, 75 * MS), None);
        assert_eq!(pick(&mut p, 80 * MS), Some((1, 2 * MS)));
    }

    #[test]
    fn grid_keeps_its_phase_across_sleeps() {
        let mut p = Rt::new(95, Duration::from_millis(5)).unwrap();
        p.attach(v(1), &res(2 * MS, 10 * MS)).unwrap();
        assert_eq!(figure(&p, 1, "deadline_us"), -1);
        assert_eq!(figure(&p, 1, "budget_us"), 2_000);
        assert_eq!(figure(&p, 1, "period_us"), 10_000);
        p.wake(v(1), 3 * MS);
        assert_eq!(figure(&p, 1, "deadline_us"), 13_000);
        assert_eq!(pick(&mut p, 3 * MS), Some((1, 2 * MS)));
        p.charge(v(1), Duration::from_nanos(MS), 4 * MS, DONE);
        // Woken in the same period: what is left of the budget.
        p.wake(v(1), 5 * MS);
        assert_eq!(pick(&mut p, 5 * MS), Some((1, MS)));
        p.charge(v(1), Duration::from_nanos(MS / 2), 6 * MS, DONE);
        // Slept past several deadlines: whole periods, same phase, refilled.
        p.wake(v(1), 47 * MS);
        assert_eq!(figure(&p, 1, "deadline_us"), 53_000);
        assert_eq!(figure(&p, 1, "budget_left_us"), 2_000);
        assert_eq!(figure(&p, 1, "releases"), 2);
        assert_eq!(pick(&mut p, 47 * MS), Some((1, 2 * MS)));
        let s = p.standings();
        assert_eq!(s.len(), 1);
        assert!(!s[0].queued);
        assert_eq!(figure(&p, 1, "picks"), 3);
    }

    #[test]
    fn reservation_changes_take_effect_at_the_next_release() {
        let mut p = Rt::new(95, Duration::from_millis(5)).unwrap();
        p.attach(v(1), &res(2 * MS, 10 * MS)).unwrap();
        p.attach(v(2), &SchedParams::default()).unwrap();
        p.wake(v(1), 0);
        p.wake(v(2), 0);
        p.set_params(v(1), &res(4 * MS, 20 * MS)).unwrap();
        assert_eq!(p.utilisation_ppm(), 200_000);
        // This period is still 2 ms / 10 ms.
        assert_eq!(pick(&mut p, 0), Some((1, 2 * MS)));
        p.charge(v(1), Duration::from_nanos(2 * MS), 2 * MS, RUN);
        assert_eq!(pick(&mut p, 2 * MS), Some((2, 5 * MS)));
        p.charge(v(2), Duration::from_nanos(5 * MS), 7 * MS, RUN);
        assert_eq!(pick(&mut p, 7 * MS), Some((2, 3 * MS)));
        p.charge(v(2), Duration::from_nanos(3 * MS), 10 * MS, RUN);
        // From the release at 10 ms: 4 ms, deadline 30 ms.
        assert_eq!(pick(&mut p, 10 * MS), Some((1, 4 * MS)));
        assert_eq!(figure(&p, 1, "deadline_us"), 30_000);
        assert_eq!(figure(&p, 1, "period_us"), 20_000);
        p.charge(v(1), Duration::from_nanos(4 * MS), 14 * MS, DONE);

        // Gaining a reservation while queued: anchored at the next pick.
        p.charge(v(2), Duration::ZERO, 14 * MS, RUN);
        p.set_params(v(2), &res(MS, 5 * MS)).unwrap();
        assert_eq!(p.utilisation_ppm(), 400_000);
        assert_eq!(pick(&mut p, 15 * MS), Some((2, MS)));
        assert_eq!(figure(&p, 2, "deadline_us"), 20_000);
        // Losing it: into the slack FIFO at once.
        p.charge(v(2), Duration::from_nanos(MS / 2), 16 * MS, RUN);
        p.set_params(v(2), &SchedParams::default()).unwrap();
        assert_eq!(p.utilisation_ppm(), 200_000);
        assert_eq!(figure(&p, 2, "deadline_us"), -1);
        assert_eq!(pick(&mut p, 16 * MS), Some((2, 5 * MS)));
    }

    #[test]
    fn unexpected_calls_are_harmless() {
        let mut p = Rt::new(95, Duration::from_millis(5)).unwrap();
        // Unknown vcoprocs.
        assert_eq!(p.wake(v(9), 0), WakeAction::None);
        p.block(v(9));
        p.detach(v(9));
        p.charge(v(9), Duration::MAX, u64::MAX, RUN);
        // Charged without having been picked (policy switched mid-slice).
        p.attach(v(1), &res(2 * MS, 10 * MS)).unwrap();
        p.attach(v(2), &SchedParams::default()).unwrap();
        p.charge(v(1), Duration::from_millis(1), 5 * MS, RUN);
        p.charge(v(2), Duration::from_millis(1), 5 * MS, RUN);
        assert_eq!(figure(&p, 1, "deadline_us"), 15_000);
        assert_eq!(pick(&mut p, 5 * MS), Some((1, 2 * MS)));
        // Charged while queued: the time counts, it stays queued once.
        p.wake(v(1), 6 * MS);
        p.charge(v(1), Duration::from_millis(1), 6 * MS, RUN);
        p.charge(v(1), Duration::from_millis(3), 7 * MS, RUN);
        assert_eq!(figure(&p, 1, "budget_left_us"), -2_000);
        assert_eq!(pick(&mut p, 7 * MS), Some((2, 5 * MS)));
        // Huge times saturate.
        p.charge(v(2), Duration::MAX, u64::MAX - 1, RUN);
        p.wake(v(1), u64::MAX - 1);
        assert!(matches!(p.pick(u64::MAX), Decision::Run { .. }));
        p.charge(v(1), Duration::MAX, u64::MAX, RUN);
        let _ = p.pick(u64::MAX);
        let _ = p.standings();
        // Re-attaching is a parameter change.
        p.attach(v(1), &SchedParams::default()).unwrap();
        assert_eq!(p.utilisation_ppm(), 0);
        p.detach(v(1));
        p.detach(v(2));
        assert_eq!(p.pick(0), Decision::Idle(None));
        assert!(p.standings().is_empty());
    }

    #[test]
    fn hundred_thousand_vcoprocs() {
        let mut p = Rt::new(95, Duration::from_micros(100)).unwrap();
        let n = 100_000u32;
        for i in 0..n {
            let params = if i % 1_000 == 0 {
                res(100_000, 200 * MS) // 0.05 % each, 100 of them
            } else {
                SchedParams::default()
            };
            p.attach(v(i), &params).unwrap();
        }
        assert_eq!(p.utilisation_ppm(), 100 * 500);
        for i in 0..n {
            p.wake(v(i), 0);
        }
        let mut now = 0;
        let mut reserved = 0;
        let mut first_unreserved = None;
        for round in 0..5_000u64 {
            let Decision::Run { vcoproc, budget } = p.pick(now) else {
                panic!("everyone is runnable");
            };
            if vcoproc.0 % 1_000 == 0 {
                reserved += 1;
            } else if first_unreserved.is_none() {
                first_unreserved = Some(round);
            }
            now += ns(budget);
            let end = if round % 7 == 0 { DONE } else { RUN };
            p.charge(vcoproc, budget, now, end);
            if round % 7 == 0 {
                p.wake(vcoproc, now);
            }
            if round % 11 == 0 {
                p.block(v((round as u32 * 13) % n));
            }
        }
        // Every reservation ran once per period, before anyone unreserved.
        assert_eq!(first_unreserved, Some(100));
        let periods = now.div_ceil(200 * MS);
        assert!(periods >= 2);
        assert!(reserved > 100 * (periods - 1) && reserved <= 100 * periods);
        assert_eq!(p.standings().len(), n as usize);
    }

    #[test]
    fn parameters() {
        let p = Rt::from_params(&[]).unwrap();
        assert_eq!(
            p.describe(),
            vec![
                ("capacity_pct".into(), "95".into()),
                ("slice_us".into(), "5000".into()),
                ("utilisation_ppm".into(), "0".into()),
            ]
        );
        let p = Rt::from_params(&kv(&[("capacity_pct", "100"), ("slice_us", "50")])).unwrap();
        assert_eq!(p.describe()[0].1, "100");
        assert_eq!(p.describe()[1].1, "50");
        for bad in [
            kv(&[("weight", "3")]),
            kv(&[("capacity_pct", "0")]),
            kv(&[("capacity_pct", "101")]),
            kv(&[("capacity_pct", "ninety")]),
            kv(&[("slice_us", "49")]),
            kv(&[("slice_us", "10000001")]),
            kv(&[("slice_us", "-1")]),
        ] {
            assert!(
                matches!(Rt::from_params(&bad), Err(PolicyError::BadParam(_))),
                "{bad:?}"
            );
        }
        assert!(Rt::new(0, Duration::from_millis(5)).is_err());
        assert!(Rt::new(95, Duration::from_micros(10)).is_err());
        assert_eq!(super::super::build("rt", &[]).unwrap().name(), "rt");
    }
}
