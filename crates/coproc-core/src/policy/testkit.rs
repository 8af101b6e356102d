//! The policies' test kit: a runner over virtual time that drives any
//! [`Policy`] the way the real runner does (pick, run, deliver wake-ups on
//! time — preempting when asked —, charge) for clients with demand models,
//! and records what each got, so that tests can compare it with the shares,
//! deadlines and latencies a policy promises.

use super::{Decision, Policy, SchedParams, SliceEnd, WakeAction};
use crate::ids::VcoprocId;
use std::time::Duration;

/// Nanoseconds per microsecond.
pub(crate) const US: u64 = 1_000;
/// Nanoseconds per millisecond.
pub(crate) const MS: u64 = 1_000_000;
/// Nanoseconds per second.
pub(crate) const SEC: u64 = 1_000_000_000;

/// A slice that ran whole and left the vcoproc runnable.
pub(crate) const RUN: SliceEnd = SliceEnd {
    runnable: true,
    preempted: false,
    waiting: false,
};
/// A slice cut short by a preempt request; the vcoproc still runnable.
pub(crate) const PREEMPTED: SliceEnd = SliceEnd {
    runnable: true,
    preempted: true,
    waiting: false,
};
/// A slice after which the vcoproc waits.
pub(crate) const WAITS: SliceEnd = SliceEnd {
    runnable: false,
    preempted: false,
    waiting: true,
};

/// A duration in ns.
pub(crate) fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `key=value` parameters.
pub(crate) fn kv(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What the policy picks at `now`: (vcoproc, budget in ns), None when idle.
pub(crate) fn pick_at(p: &mut dyn Policy, now: u64) -> Option<(u32, u64)> {
    match p.pick(now) {
        Decision::Run { vcoproc, budget } => Some((vcoproc.0, ns(budget))),
        Decision::Idle(_) => None,
    }
}

/// One figure of `v`'s standing.
pub(crate) fn figure(p: &dyn Policy, v: u32, name: &str) -> i64 {
    let s = p.standings();
    let s = s
        .iter()
        .find(|s| s.vcoproc == VcoprocId(v))
        .expect("attached");
    s.figures
        .iter()
        .find(|(n, _)| n == name)
        .map(|&(_, x)| x)
        .expect("figure")
}

/// Assert that `got` of `total` is `want` within `rel` of it.
pub(crate) fn assert_share(got: u64, total: u64, want: f64, rel: f64) {
    let share = got as f64 / total as f64;
    assert!(
        (share - want).abs() <= want * rel,
        "share {share} not within {rel} of {want}"
    );
}

/// What a simulated vcoproc wants from the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Demand {
    /// Always runnable: woken when added, at that time.
    Hog,
    /// Never runnable.
    Off,
    /// A job of `job` ns released every `period` ns, the first at `first`,
    /// on a fixed grid: a job released before the last is done adds to the
    /// backlog (and counts as a miss).
    Periodic { job: u64, period: u64, first: u64 },
    /// A job of `job` ns `period` ns after the last one was released, or at
    /// once when that one finished later; the first when added.
    Paced { job: u64, period: u64 },
    /// Runs `run` ns, then sleeps `sleep` ns, forever; first woken when
    /// added.
    Sleeper { run: u64, sleep: u64 },
}

/// One simulated vcoproc and what it got.
#[derive(Debug)]
pub(crate) struct Client {
    /// Its vcoproc id.
    pub id: u32,
    pub demand: Demand,
    /// How far past a budget it runs when it has more work than the budget.
    pub overrun: u64,
    /// Work left of released jobs (hogs: unbounded).
    pub left: u64,
    /// Whether the policy has been told it is runnable.
    pub runnable: bool,
    /// Its next wake-up or release, u64::MAX when none.
    pub next_release: u64,
    /// The time of its last wake-up.
    pub woken_at: u64,
    /// Whether the burst since that wake-up has started running.
    pub started: bool,
    /// Device time it received.
    pub ran: u64,
    /// Longest wake-up → first run delay.
    pub max_latency: u64,
    /// Jobs (bursts) released.
    pub jobs: u64,
    /// Releases that found the last job not done.
    pub misses: u64,
}

/// One slice the simulated runner ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slice {
    pub v: u32,
    pub start: u64,
    pub ran: u64,
    pub budget: u64,
    pub preempted: bool,
}

/// A runner over virtual time: pick, run min(budget × overrun, work) (plus
/// the client's own overrun) unless a wake-up asks for a preemption, or
/// idle until the time given or the next release; charge; deliver wake-ups
/// at their times.
#[derive(Debug)]
pub(crate) struct Sim<P: Policy> {
    pub policy: P,
    pub now: u64,
    pub clients: Vec<Client>,
    pub slices: Vec<Slice>,
    /// Every wake-up of a released job delivered: (vcoproc, time, answer)
    /// (not the wake-ups of hogs when added).
    pub wakes: Vec<(u32, u64, WakeAction)>,
    /// Time the device idled.
    pub idle: u64,
    /// Idle decisions that came with a timer.
    pub idle_timers: u64,
    /// Slices cut short by a wake-up.
    pub preemptions: u64,
    /// The device runs every budget times num/den (1/1: exact).
    pub overrun: (u64, u64),
    /// Whether a wake-up's preempt request cuts a slice short (false: a
    /// device that only stops at the end of a job, as a GPU without
    /// compute preemption).
    pub preemptible: bool,
}

impl<P: Policy> Sim<P> {
    /// A runner starting at 0.
    pub(crate) fn new(policy: P) -> Self {
        Self::starting_at(policy, 0)
    }

    /// A runner starting at `now`.
    pub(crate) fn starting_at(policy: P, now: u64) -> Self {
        Sim {
            policy,
            now,
            clients: vec![],
            slices: vec![],
            wakes: vec![],
            idle: 0,
            idle_timers: 0,
            preemptions: 0,
            overrun: (1, 1),
            preemptible: true,
        }
    }

    /// Attach vcoproc `v` with `params` and `demand`.
    pub(crate) fn add(&mut self, v: u32, params: &SchedParams, demand: Demand) -> &mut Client {
        self.policy.attach(VcoprocId(v), params).unwrap();
        let next_release = match demand {
            Demand::Paced { .. } | Demand::Sleeper { .. } => self.now,
            Demand::Hog | Demand::Off => u64::MAX,
            Demand::Periodic { first, .. } => first,
        };
        self.clients.push(Client {
            id: v,
            demand,
            overrun: 0,
            left: 0,
            runnable: false,
            next_release,
            woken_at: 0,
            started: false,
            ran: 0,
            max_latency: 0,
            jobs: 0,
            misses: 0,
        });
        if demand == Demand::Hog {
            let c = self.clients.last_mut().unwrap();
            c.left = u64::MAX;
            c.runnable = true;
            c.woken_at = self.now;
            c.jobs = 1;
            self.policy.wake(VcoprocId(v), self.now);
        }
        self.clients.last_mut().unwrap()
    }

    /// The slices vcoproc `v` ran.
    pub(crate) fn slices_of(&self, v: u32) -> Vec<Slice> {
        self.slices.iter().filter(|s| s.v == v).copied().collect()
    }

    /// Device time vcoproc `v` received (0 for one never added).
    pub(crate) fn ran(&self, v: u32) -> u64 {
        self.slices.iter().filter(|s| s.v == v).map(|s| s.ran).sum()
    }

    fn next_release(&self) -> u64 {
        self.clients
            .iter()
            .map(|c| c.next_release)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Release the jobs due by now, waking their vcoprocs unless they
    /// are runnable already; whether a wake-up asked for a preemption.
    fn release(&mut self) -> bool {
        let mut preempt = false;
        let now = self.now;
        for c in &mut self.clients {
            while c.next_release <= now {
                match c.demand {
                    Demand::Hog | Demand::Off => unreachable!(),
                    Demand::Periodic { job, period, .. } => {
                        if c.left > 0 {
                            c.misses += 1;
                        }
                        c.left += job;
                        c.next_release += period;
                    }
                    Demand::Paced { job, .. } => {
                        c.left = job;
                        c.next_release = u64::MAX;
                    }
                    Demand::Sleeper { run, .. } => {
                        c.left = run;
                        c.next_release = u64::MAX;
                    }
                }
                c.jobs += 1;
                if !c.runnable {
                    c.runnable = true;
                    c.woken_at = now;
                    c.started = false;
                    let a = self.policy.wake(VcoprocId(c.id), now);
                    self.wakes.push((c.id, now, a));
                    preempt |= a == WakeAction::Preempt;
                }
            }
        }
        preempt
    }

    /// Run until `until` (the last slice may end past it).
    pub(crate) fn run_until(&mut self, until: u64) {
        while self.now < until {
            self.release();
            match self.policy.pick(self.now) {
                Decision::Idle(t) => {
                    if let Some(t) = t {
                        assert!(!t.is_zero(), "idle for no time");
                        self.idle_timers += 1;
                    }
                    let next = t.map_or(u64::MAX, |t| self.now.saturating_add(ns(t)));
                    let next = next.min(self.next_release()).min(until);
                    assert!(next > self.now, "idle without a way out");
                    self.idle += next - self.now;
                    self.now = next;
                }
                Decision::Run { vcoproc, budget } => self.run_slice(vcoproc, ns(budget)),
            }
        }
    }

    fn run_slice(&mut self, vcoproc: VcoprocId, budget: u64) {
        assert!(budget > 0, "empty budget");
        let i = self
            .clients
            .iter()
            .position(|c| c.id == vcoproc.0)
            .expect("picked a vcoproc never added");
        let start = self.now;
        let c = &mut self.clients[i];
        assert!(c.runnable, "{vcoproc} picked while not runnable");
        if !c.started {
            c.started = true;
            c.max_latency = c.max_latency.max(start - c.woken_at);
        }
        let b = budget.saturating_mul(self.overrun.0) / self.overrun.1;
        // A client that overruns runs its whole overrun past the budget
        // once it has more work than the budget; others stop when their
        // work is done, even within the budget.
        let over = if c.left > b { c.overrun } else { 0 };
        let mut room = b.saturating_add(over);
        let mut preempted = false;
        loop {
            let c = &self.clients[i];
            let can = if over > 0 { room } else { room.min(c.left) };
            let ev = self.next_release();
            let step = if ev < self.now.saturating_add(can) {
                ev - self.now
            } else {
                can
            };
            let c = &mut self.clients[i];
            if c.demand != Demand::Hog {
                c.left = c.left.saturating_sub(step);
            }
            room -= step;
            self.now += step;
            if step == can {
                break;
            }
            // Wake-ups while it runs, at their times (its own next job
            // adds to its work).
            if self.release() && self.preemptible {
                preempted = true;
                break;
            }
        }
        let ran = self.now - start;
        let c = &mut self.clients[i];
        c.ran += ran;
        if c.demand != Demand::Hog {
            c.runnable = c.left > 0;
        }
        if !c.runnable {
            c.next_release = match c.demand {
                Demand::Paced { period, .. } => (c.woken_at + period).max(self.now),
                Demand::Sleeper { sleep, .. } => self.now + sleep,
                _ => c.next_release,
            };
        }
        self.preemptions += u64::from(preempted);
        let end = SliceEnd {
            runnable: c.runnable,
            preempted,
            // Nothing left until its next release: it waits for work.
            waiting: !c.runnable,
        };
        self.policy
            .charge(vcoproc, Duration::from_nanos(ran), self.now, end);
        self.slices.push(Slice {
            v: vcoproc.0,
            start,
            ran,
            budget,
            preempted,
        });
    }
}
