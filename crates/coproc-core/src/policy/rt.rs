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
            left: super::figure(budget),
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
                r.left = super::figure(r.budget);
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
                r.left = super::figure(r.budget - debt);
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
            Some(v) => u32::try_from(super::parse_u64("capacity_pct", v, 1, 100)?).unwrap_or(100),
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
            let left = e.res.map_or(0, |r| r.left.max(0).unsigned_abs());
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
                    r.left = r
                        .left
                        .saturating_sub(super::figure(ran))
                        .max(-super::figure(r.budget));
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
                        ("budget_us".into(), figure(|r| us(super::figure(r.budget)))),
                        ("period_us".into(), figure(|r| us(super::figure(r.period)))),
                        ("budget_left_us".into(), r.map_or(0, |r| us(r.left))),
                        (
                            "deadline_us".into(),
                            figure(|r| r.deadline.map_or(-1, |d| us(super::figure(d.min(MAX_NS))))),
                        ),
                        ("overruns".into(), super::figure(e.overruns)),
                        ("releases".into(), super::figure(e.releases)),
                        ("picks".into(), super::figure(e.picks)),
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
