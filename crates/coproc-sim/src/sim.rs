//! The simulator: shared state, the virtual clock, and the device.
//!
//! # Virtual time
//!
//! `now` starts at 0 and moves only inside [`Device::run`],
//! [`Device::switch`] (by [`SimConfig::switch_ns`]) and
//! [`VirtualClock::idle`], event by event: job boundaries (end, start and
//! end of a non-preemptible section, injected fault), the end of the
//! budget, arrivals of jobs for contexts that are waiting (the waker is
//! called at that instant), hooks ([`Sim::at`]) and the horizon.
//!
//! # The horizon
//!
//! Virtual time never passes the horizon (0 at first). A device that
//! reaches it *parks*: it blocks on the sim's condition variable, holding
//! no lock of the pcoproc, until the horizon is raised. A preempt request
//! from another thread ends a parked run (it returns
//! [`StopReason::Preempted`], even inside a non-preemptible section: the
//! rest of the section stays non-preemptible in the next run), an interrupt
//! ends a parked idle, and a hook that falls due (scheduled at or before
//! `now`) is delivered. [`Sim::run_until`] raises the horizon and waits
//! until the device is parked at it again: a stable state in which the
//! test may look at everything and call the pcoproc's APIs. Commands (load,
//! stop, destroy, ...) preempt or interrupt the park; the runner serves them
//! at the same virtual instant and parks again.
//!
//! Events at one instant are taken in this order: job arrivals for waiting
//! contexts (by context id), then hooks (by time, then by order of
//! [`Sim::at`]); in a run, then: jobs that end, an injected fault, running
//! out of work (waiting or exit), a preempt request, the end of the budget.

use crate::workload::{Active, Arrivals, Workload, DEFAULT_HOG_DISPATCH_NS};
use crate::SimError;
use coproc_core::device::{
    Capabilities, ContextSpec, Device, DeviceError, FirmwareInfo, Preempt, PreemptHandle,
    Preemption, RunOutcome, StopReason, SwitchOutcome, VirtualClock,
};
use coproc_core::fault::{Access, DeviceFault, FaultReason};
use coproc_core::iova::Mapping;
use coproc_core::policy::Policy;
use coproc_core::{Pcoproc, VcoprocId};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

/// Arrived jobs kept materialised per context; later arrivals stay in the
/// generator (still counted as pending) until the queue drains.
const PENDING_WINDOW: usize = 4096;
/// Completed-job records kept per context (the count goes on).
pub const MAX_JOB_RECORDS: usize = 1_000_000;

/// How the simulated device behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConfig {
    /// Every job is non-preemptible as a whole: preemption and the end of
    /// the budget only take effect between jobs (a GPU that can only be
    /// preempted between dispatches). Capabilities then say
    /// [`Preemption::Dispatch`], else [`Preemption::Instruction`].
    pub dispatch_only: bool,
    /// Virtual time a completed switch onto a context costs.
    pub switch_ns: u64,
    /// Most contexts at once.
    pub max_contexts: u32,
    /// How long [`Sim::run_until`] waits on the host clock for the device
    /// to park before it reports [`SimError::Stalled`] (a guard against
    /// deadlocks, never part of a result).
    pub stall_timeout: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            dispatch_only: false,
            switch_ns: 0,
            max_contexts: 1024,
            stall_timeout: Duration::from_secs(60),
        }
    }
}

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
    /// Completed jobs, in order (the first [`MAX_JOB_RECORDS`]).
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

/// A simulated context.
struct Ctx {
    workload: Option<Workload>,
    arrivals: Arrivals,
    /// Arrived, unfinished jobs, FIFO; the front one is in progress.
    pending: VecDeque<Active>,
    /// Background work done by a hog (its dispatch position under
    /// `dispatch_only`).
    hog_done: u64,
    waiting: bool,
    exited: bool,
    mappings: BTreeMap<u64, u64>,
    rec: ContextRecord,
}

impl Ctx {
    fn new() -> Ctx {
        Ctx {
            workload: None,
            arrivals: Arrivals::new(&Workload::default()),
            pending: VecDeque::new(),
            hog_done: 0,
            waiting: false,
            exited: false,
            mappings: BTreeMap::new(),
            rec: ContextRecord::default(),
        }
    }

    /// Take the jobs that arrived by `now`.
    fn catch_up(&mut self, now: u64) {
        while self.pending.len() < PENDING_WINDOW && self.arrivals.next().is_some_and(|t| t <= now)
        {
            match self.arrivals.pop() {
                Some(j) => self.pending.push_back(j),
                None => break,
            }
        }
    }

    /// When an arrival must wake this context.
    fn wake_due(&self) -> Option<u64> {
        match self.waiting && self.pending.len() < PENDING_WINDOW {
            true => self.arrivals.next(),
            false => None,
        }
    }

    fn hog(&self) -> bool {
        self.workload.as_ref().is_some_and(|w| w.hog)
    }

    /// Length of a hog dispatch, under `dispatch_only`.
    fn hog_chunk(&self, dispatch_only: bool) -> Option<u64> {
        let w = self.workload.as_ref().filter(|w| w.hog && dispatch_only)?;
        Some(w.hog_dispatch_ns.unwrap_or(DEFAULT_HOG_DISPATCH_NS))
    }

    fn complete_front(&mut self, now: u64) {
        if let Some(j) = self.pending.pop_front() {
            self.rec.jobs_done += 1;
            if self.rec.completed.len() < MAX_JOB_RECORDS {
                self.rec.completed.push(JobRecord {
                    arrival_ns: j.arrival,
                    start_ns: j.started.unwrap_or(now),
                    finish_ns: now,
                    deadline_ns: j.deadline,
                });
            }
        }
    }
}

/// Where the device is parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Park {
    /// In `run` or `switch`: a preempt request from another thread ends it.
    Run,
    /// In `idle`: an interrupt ends it.
    Idle,
}

type Hook = Box<dyn FnOnce() + Send>;
type Waker = Arc<dyn Fn(VcoprocId) + Send + Sync>;

struct State {
    config: SimConfig,
    now: u64,
    horizon: u64,
    parked: Option<Park>,
    /// A preempt request is pending.
    preempt: bool,
    /// The pending preempt request came from another thread than the
    /// device's: it also ends a park.
    park_break: bool,
    interrupt: bool,
    /// The thread the device runs on.
    runner: Option<ThreadId>,
    /// Start of the run in progress.
    run_start: Option<u64>,
    /// A device exists.
    attached: bool,
    current: Option<VcoprocId>,
    ctxs: BTreeMap<VcoprocId, Ctx>,
    /// The contexts whose `waiting` is set: the only ones an arrival can
    /// wake, so looking for the next external event costs O(waiting), not
    /// O(contexts).
    waiting: BTreeSet<VcoprocId>,
    hooks: BTreeMap<(u64, u64), Hook>,
    hook_seq: u64,
    answers: HashMap<VcoprocId, VecDeque<SwitchOutcome>>,
    switch_log: Vec<SwitchRecord>,
    waker: Option<Waker>,
    /// Injected panics still to happen: (hook, context).
    panics: Vec<(PanicIn, VcoprocId)>,
}

impl State {
    /// The next instant something outside the running context is due.
    fn next_external(&self) -> Option<u64> {
        let hook = self.hooks.keys().next().map(|&(t, _)| t);
        let arrival = self
            .waiting
            .iter()
            .filter_map(|id| self.ctxs.get(id).and_then(Ctx::wake_due))
            .min();
        match (hook, arrival) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn hook_due(&self) -> bool {
        self.hooks
            .keys()
            .next()
            .is_some_and(|&(t, _)| t <= self.now)
    }

    fn on_device_thread(&self) -> bool {
        self.runner == Some(std::thread::current().id())
    }
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

/// A device hook the sim can be told to panic in, to test how the
/// framework contains panics of device code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicIn {
    /// `create_context` for the context.
    Create,
    /// `load_firmware` (or installing prepared firmware) into the context.
    Load,
    /// `map` into the context.
    Map,
    /// A switch onto the context.
    Switch,
    /// A run while the context is on the device.
    Run,
    /// `reset_context` of the context.
    Reset,
}

/// The simulator: a cloneable handle shared by the test and the device.
/// It is also the device's [`VirtualClock`].
#[derive(Clone)]
pub struct Sim {
    shared: Arc<Shared>,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.lock();
        f.debug_struct("Sim")
            .field("now", &g.now)
            .field("horizon", &g.horizon)
            .field("parked", &g.parked)
            .field("contexts", &g.ctxs.len())
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// A sim at virtual time 0 with the horizon at 0.
    pub fn new(config: SimConfig) -> Sim {
        Sim {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    config,
                    now: 0,
                    horizon: 0,
                    parked: None,
                    preempt: false,
                    park_break: false,
                    interrupt: false,
                    runner: None,
                    run_start: None,
                    attached: false,
                    current: None,
                    ctxs: BTreeMap::new(),
                    waiting: BTreeSet::new(),
                    hooks: BTreeMap::new(),
                    hook_seq: 0,
                    answers: HashMap::new(),
                    switch_log: Vec::new(),
                    waker: None,
                    panics: Vec::new(),
                }),
                cv: Condvar::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.shared.cv.wait(g).unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.shared.cv.notify_all();
    }

    /// The device of this sim (one at a time; another may be made once it
    /// is dropped).
    pub fn device(&self) -> Result<SimDevice, SimError> {
        let mut g = self.lock();
        if g.attached {
            return Err(SimError::AlreadyAttached);
        }
        g.attached = true;
        Ok(SimDevice { sim: self.clone() })
    }

    /// Spawn a pcoproc with this sim's device and `policy`, and install the
    /// waker that wakes its vcoprocs with [`Pcoproc::device_wake`] (through
    /// a weak reference: the sim does not keep the pcoproc alive).
    pub fn spawn(&self, name: &str, policy: Box<dyn Policy>) -> Result<Arc<Pcoproc>, SimError> {
        let sim = self.clone();
        let factory = move || -> Result<Box<dyn Device>, DeviceError> {
            let d = sim
                .device()
                .map_err(|e| DeviceError::Backend(e.to_string()))?;
            Ok(Box::new(d))
        };
        let p = Pcoproc::spawn(name, factory, policy)?;
        let weak = Arc::downgrade(&p);
        self.set_waker(Box::new(move |id| {
            if let Some(p) = weak.upgrade() {
                p.device_wake(id);
            }
        }));
        Ok(p)
    }

    /// Make the device panic the next time `hook` is called for context
    /// `ctx` (once per call of this; calls add up). The panic happens
    /// before the hook changes anything of the sim.
    pub fn panic_next(&self, hook: PanicIn, ctx: VcoprocId) {
        self.lock().panics.push((hook, ctx));
    }

    /// Panic if a panic in `hook` for `ctx` was injected.
    fn injected(&self, hook: PanicIn, ctx: Option<VcoprocId>) {
        let Some(ctx) = ctx else { return };
        let mut g = self.lock();
        let Some(i) = g.panics.iter().position(|&p| p == (hook, ctx)) else {
            return;
        };
        g.panics.remove(i);
        drop(g);
        panic!("sim: injected panic in {hook:?} for {ctx}");
    }

    /// Set what the sim calls, on the device's thread with no lock held,
    /// when a job arrives for a context that is waiting.
    pub fn set_waker(&self, waker: Box<dyn Fn(VcoprocId) + Send + Sync>) {
        self.lock().waker = Some(Arc::from(waker));
    }

    /// Run `hook` on the device's thread when virtual time reaches `t_ns`
    /// (during a run, a switch or an idle; at the next such moment if `t_ns`
    /// has passed). No lock of the pcoproc or the sim is held then, so it
    /// may call [`Pcoproc::set_policy`], [`Pcoproc::sched_info`],
    /// [`coproc_core::VcoprocHandle::set_params`],
    /// [`coproc_core::VcoprocHandle::start`] and the sim's own methods other
    /// than [`Sim::run_until`]. It must not call the command-based APIs
    /// (create, load, map, stop, reset, destroy, shutdown): they wait for
    /// the runner, which is the thread running the hook, and deadlock.
    ///
    /// A hook that holds an `Arc<Pcoproc>` keeps the pcoproc alive until it
    /// runs (or the device is dropped); prefer a `Weak`.
    pub fn at(&self, t_ns: u64, hook: Box<dyn FnOnce() + Send>) {
        let mut g = self.lock();
        let seq = g.hook_seq;
        g.hook_seq += 1;
        g.hooks.insert((t_ns, seq), hook);
        if t_ns <= g.now {
            // Due now: a parked device delivers it, then parks again.
            g.parked = None;
        }
        drop(g);
        self.notify();
    }

    /// Raise the horizon to `t_ns` and wait until the device is parked
    /// there (every event up to and including `t_ns` delivered, the runner
    /// blocked at `t_ns`). `t_ns` equal to the current time just waits for
    /// the stable state (after a command, a start, ...).
    pub fn run_until(&self, t_ns: u64) -> Result<(), SimError> {
        let mut g = self.lock();
        if !g.attached {
            return Err(SimError::Detached);
        }
        if t_ns < g.now {
            return Err(SimError::Past {
                t: t_ns,
                now: g.now,
            });
        }
        if t_ns > g.horizon {
            g.horizon = t_ns;
            g.parked = None;
            self.notify();
        }
        let deadline = Instant::now() + g.config.stall_timeout;
        loop {
            if !g.attached {
                return Err(SimError::Detached);
            }
            if g.parked.is_some() && g.now == g.horizon {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SimError::Stalled {
                    now: g.now,
                    horizon: g.horizon,
                });
            }
            g = self
                .shared
                .cv
                .wait_timeout(g, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Raise the horizon to `t_ns` without waiting (for driving a
    /// [`SimDevice`] directly on the calling thread).
    pub fn set_horizon(&self, t_ns: u64) {
        let mut g = self.lock();
        if t_ns > g.horizon {
            g.horizon = t_ns;
            g.parked = None;
        }
        drop(g);
        self.notify();
    }

    /// The horizon.
    pub fn horizon(&self) -> u64 {
        self.lock().horizon
    }

    /// Whether the device is parked at the horizon now.
    pub fn is_parked(&self) -> bool {
        let g = self.lock();
        g.parked.is_some() && g.now == g.horizon
    }

    /// Virtual time, ns.
    pub fn now_ns(&self) -> u64 {
        self.lock().now
    }

    /// Queue `outcome` as the answer to the next switch onto `to` (answers
    /// are used in order; then switches succeed). `RetryAfter` keeps the
    /// current context on the device; `Failed` leaves none on it.
    pub fn answer_switch(&self, to: VcoprocId, outcome: SwitchOutcome) {
        self.lock()
            .answers
            .entry(to)
            .or_default()
            .push_back(outcome);
    }

    /// Every completed switch, in order.
    pub fn switch_log(&self) -> Vec<SwitchRecord> {
        self.lock().switch_log.clone()
    }

    /// The context on the device.
    pub fn current(&self) -> Option<VcoprocId> {
        self.lock().current
    }

    /// The contexts that exist.
    pub fn contexts(&self) -> Vec<VcoprocId> {
        self.lock().ctxs.keys().copied().collect()
    }

    /// What the sim recorded about context `v` (None: no such context).
    pub fn context(&self, v: VcoprocId) -> Option<ContextRecord> {
        let g = self.lock();
        let c = g.ctxs.get(&v)?;
        let mut r = c.rec.clone();
        r.pending = (c.pending.len() as u64).saturating_add(c.arrivals.arrived(g.now));
        if g.current == Some(v) {
            r.in_run_ns = g.run_start.map_or(0, |t| g.now - t);
        }
        r.waiting = c.waiting;
        r.exited = c.exited;
        r.mappings = c.mappings.iter().map(|(&i, &l)| (i, l)).collect();
        Some(r)
    }

    /// Deliver everything due at `now`: arrivals for waiting contexts (the
    /// waker), then hooks, with the lock dropped while they run; again
    /// until nothing is due. Returns whether anything was delivered.
    fn deliver<'a>(&'a self, mut g: MutexGuard<'a, State>) -> (MutexGuard<'a, State>, bool) {
        let mut any = false;
        loop {
            let now = g.now;
            let mut wakes = Vec::new();
            let st = &mut *g;
            for &id in &st.waiting {
                let Some(c) = st.ctxs.get_mut(&id) else {
                    continue;
                };
                if c.wake_due().is_some_and(|t| t <= now) {
                    c.catch_up(now);
                    c.rec.wakeups += 1;
                    wakes.push(id);
                }
            }
            let mut hooks = Vec::new();
            while g.hook_due() {
                if let Some((_, h)) = g.hooks.pop_first() {
                    hooks.push(h);
                }
            }
            if wakes.is_empty() && hooks.is_empty() {
                return (g, any);
            }
            any = true;
            let waker = g.waker.clone();
            drop(g);
            if let Some(w) = &waker {
                for &id in &wakes {
                    w(id);
                }
            }
            for h in hooks {
                h();
            }
            g = self.lock();
        }
    }

    /// Park at the horizon until it is raised, a hook falls due, or (run)
    /// a preempt request from another thread / (idle) an interrupt comes.
    /// Returns whether a request or interrupt ended it.
    fn park<'a>(
        &'a self,
        mut g: MutexGuard<'a, State>,
        kind: Park,
    ) -> (MutexGuard<'a, State>, bool) {
        g.parked = Some(kind);
        self.notify();
        let broke = loop {
            if g.horizon > g.now || g.hook_due() {
                break false;
            }
            let req = match kind {
                Park::Run => g.park_break,
                Park::Idle => g.interrupt,
            };
            if req {
                break true;
            }
            g = self.wait(g);
        };
        g.parked = None;
        (g, broke)
    }

    /// Let `d` ns pass for a switch. False: a preempt request from another
    /// thread ended a park on the way (the switch is abandoned).
    fn pass_switch_time<'a>(
        &'a self,
        mut g: MutexGuard<'a, State>,
        d: u64,
    ) -> (MutexGuard<'a, State>, bool) {
        let target = g.now.saturating_add(d);
        loop {
            g = self.deliver(g).0;
            let now = g.now;
            if now >= target {
                return (g, true);
            }
            let mut t = g.next_external().map_or(target, |e| e.min(target));
            if t > g.horizon {
                if now < g.horizon {
                    t = g.horizon;
                } else {
                    let (g2, broke) = self.park(g, Park::Run);
                    g = g2;
                    if broke {
                        g.park_break = false;
                        return (g, false);
                    }
                    continue;
                }
            }
            g.now = t;
        }
    }

    fn switch(&self, to: Option<VcoprocId>) -> SwitchOutcome {
        let mut g = self.lock();
        g.runner = Some(std::thread::current().id());
        let answer = to.and_then(|t| g.answers.get_mut(&t).and_then(VecDeque::pop_front));
        if let Some(a) = &answer {
            tracing::debug!(to = ?to, answer = ?a, at_ns = g.now, "sim: scripted switch answer");
        }
        match answer {
            Some(SwitchOutcome::RetryAfter(d)) => return SwitchOutcome::RetryAfter(d),
            Some(SwitchOutcome::Failed { guilty, reason }) => {
                g.current = None;
                return SwitchOutcome::Failed { guilty, reason };
            }
            _ => {}
        }
        if let Some(t) = to {
            if !g.ctxs.contains_key(&t) {
                g.current = None;
                return SwitchOutcome::Failed {
                    guilty: t,
                    reason: format!("sim: no context {t}"),
                };
            }
            let cost = g.config.switch_ns;
            if cost > 0 {
                let (g2, done) = self.pass_switch_time(g, cost);
                g = g2;
                if !done {
                    tracing::debug!(to = %t, "sim: switch abandoned at the horizon for a request");
                    // Abandoned at the horizon for a request: the current
                    // context stays; the pending preempt ends the next run.
                    return SwitchOutcome::RetryAfter(Duration::ZERO);
                }
            }
        }
        let from = g.current;
        g.current = to;
        let at_ns = g.now;
        g.switch_log.push(SwitchRecord { from, to, at_ns });
        if let Some(c) = to.and_then(|t| g.ctxs.get_mut(&t)) {
            c.rec.switches_in += 1;
        }
        SwitchOutcome::Done
    }

    fn run(&self, budget: Duration) -> RunOutcome {
        let mut g = self.lock();
        g.runner = Some(std::thread::current().id());
        let start = g.now;
        g.run_start = Some(start);
        let (mut g, stop) = self.run_events(g, budget);
        g.run_start = None;
        g.preempt = false;
        g.park_break = false;
        let ran = g.now - start;
        if let Some(c) = g.current.and_then(|v| g.ctxs.get_mut(&v)) {
            c.rec.ran_ns += ran;
            c.rec.runs += 1;
        }
        RunOutcome {
            ran: Duration::from_nanos(ran),
            stop,
        }
    }

    /// The event loop of one run.
    fn run_events<'a>(
        &'a self,
        mut g: MutexGuard<'a, State>,
        budget: Duration,
    ) -> (MutexGuard<'a, State>, StopReason) {
        let Some(cur) = g.current else {
            return (g, StopReason::Waiting);
        };
        if g.preempt {
            return (g, StopReason::Preempted);
        }
        let budget_ns = u64::try_from(budget.as_nanos()).unwrap_or(u64::MAX);
        let budget_end = g.now.saturating_add(budget_ns);
        let dispatch_only = g.config.dispatch_only;
        if let Some(c) = g.ctxs.get_mut(&cur) {
            c.waiting = false;
        }
        g.waiting.remove(&cur);
        loop {
            g = self.deliver(g).0;
            let now = g.now;
            let external = g.next_external();
            let (horizon, preempt) = (g.horizon, g.preempt);
            let Some(c) = g.ctxs.get_mut(&cur) else {
                return (g, StopReason::Waiting);
            };
            c.catch_up(now);
            let chunk = c.hog_chunk(dispatch_only);
            // Under dispatch_only a hog dispatch in progress finishes first.
            let hog_mid = chunk.is_some_and(|k| c.hog_done % k != 0);
            if !hog_mid {
                // Settle the front job: finished ones complete, a fault
                // point reached faults.
                while let Some(j) = c.pending.front_mut() {
                    j.started.get_or_insert(now);
                    if j.fault_at == Some(j.done) {
                        j.fault_at = None;
                        c.rec.faults += 1;
                        tracing::debug!(ctx = %cur, at_ns = now, "sim: injected fault");
                        let fault = DeviceFault {
                            addr: None,
                            access: Access::None,
                            pc: None,
                            reason: FaultReason::Device(format!(
                                "injected fault {} ns into the job that arrived at {} ns",
                                j.done, j.arrival
                            )),
                        };
                        return (g, StopReason::Fault(fault));
                    }
                    if j.done < j.len {
                        break;
                    }
                    c.complete_front(now);
                    c.catch_up(now);
                }
                if c.pending.is_empty() && !c.hog() {
                    let exit = c.workload.as_ref().is_some_and(|w| w.exit_when_done)
                        && c.arrivals.exhausted();
                    return match exit {
                        true => {
                            c.exited = true;
                            (g, StopReason::Exited(0))
                        }
                        false => {
                            c.waiting = true;
                            g.waiting.insert(cur);
                            (g, StopReason::Waiting)
                        }
                    };
                }
            }
            // The work now on the device: how far it may go in one step,
            // and whether it is inside a non-preemptible stretch.
            let (in_np, step) = match c.pending.front().filter(|_| !hog_mid) {
                Some(j) => {
                    let np = match dispatch_only {
                        true => Some((0, j.len)),
                        false => j.nonpreempt,
                    };
                    let in_np = np.is_some_and(|(o, l)| o < j.done && j.done < o + l);
                    let bounds = [
                        j.fault_at,
                        np.map(|(o, _)| o),
                        np.map(|(o, l)| o + l),
                        Some(j.len),
                    ];
                    let next = bounds.into_iter().flatten().filter(|&b| b > j.done).min();
                    (in_np, next.map(|b| b - j.done))
                }
                None => match chunk {
                    Some(k) => (c.hog_done % k != 0, Some(k - c.hog_done % k)),
                    // Background work yields to the next job's arrival.
                    None => (false, c.arrivals.next().map(|t| t.saturating_sub(now))),
                },
            };
            if !in_np {
                if preempt {
                    return (g, StopReason::Preempted);
                }
                if now >= budget_end {
                    return (g, StopReason::BudgetSpent);
                }
            }
            let mut t = step.map_or(u64::MAX, |s| now.saturating_add(s));
            if !in_np {
                t = t.min(budget_end);
            }
            if let Some(e) = external {
                t = t.min(e);
            }
            if t > horizon {
                if now < horizon {
                    t = horizon;
                } else {
                    let (g2, broke) = self.park(g, Park::Run);
                    g = g2;
                    if broke {
                        return (g, StopReason::Preempted);
                    }
                    continue;
                }
            }
            if t == now && now == u64::MAX {
                // Virtual time ends at u64::MAX ns: workloads of several
                // jobs of up to MAX_NS each can get there, and nothing can
                // run past it (without this the loop would spin in place).
                return (g, StopReason::BudgetSpent);
            }
            let d = t - now;
            let hog_work = hog_mid || c.pending.is_empty();
            match c.pending.front_mut() {
                Some(j) if !hog_work => j.done += d,
                _ => c.hog_done = c.hog_done.wrapping_add(d),
            }
            g.now = t;
        }
    }
}

/// Asks the sim to preempt the running context.
struct SimPreempt(Sim);

impl Preempt for SimPreempt {
    fn preempt(&self) {
        let mut g = self.0.lock();
        g.preempt = true;
        if !g.on_device_thread() {
            g.park_break = true;
            if g.parked == Some(Park::Run) {
                g.parked = None;
            }
        }
        drop(g);
        self.0.notify();
    }
}

impl VirtualClock for Sim {
    fn now_ns(&self) -> u64 {
        self.lock().now
    }

    /// Advance to `until_ns`, the next arrival for a waiting context, the
    /// next hook or the horizon, whichever comes first, delivering arrivals
    /// and hooks on the way; return after a delivery, at `until_ns`, or on
    /// an interrupt (parking at the horizon meanwhile).
    fn idle(&self, until_ns: Option<u64>) {
        let mut g = self.lock();
        g.runner = Some(std::thread::current().id());
        loop {
            if g.interrupt {
                break;
            }
            let (g2, delivered) = self.deliver(g);
            g = g2;
            if delivered {
                break;
            }
            let now = g.now;
            if until_ns.is_some_and(|u| now >= u) {
                break;
            }
            let mut t = until_ns.unwrap_or(u64::MAX);
            if let Some(e) = g.next_external() {
                t = t.min(e);
            }
            if t > g.horizon {
                if now < g.horizon {
                    t = g.horizon;
                } else {
                    g = self.park(g, Park::Idle).0;
                    continue;
                }
            }
            g.now = t;
        }
        // Whatever the interrupt was for, the runner looks now.
        g.interrupt = false;
    }

    fn interrupt(&self) {
        let mut g = self.lock();
        g.interrupt = true;
        if g.parked == Some(Park::Idle) {
            g.parked = None;
        }
        drop(g);
        self.notify();
    }
}

/// The simulated device; made by [`Sim::device`] (or inside
/// [`Sim::spawn`]).
pub struct SimDevice {
    sim: Sim,
}

impl fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDevice").field("sim", &self.sim).finish()
    }
}

impl SimDevice {
    /// The sim it belongs to.
    pub fn sim(&self) -> &Sim {
        &self.sim
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        let mut g = self.sim.lock();
        g.attached = false;
        g.parked = None;
        g.current = None;
        // Hooks and the waker may hold the pcoproc: let it go.
        let hooks = std::mem::take(&mut g.hooks);
        let waker = g.waker.take();
        drop(g);
        drop(hooks);
        drop(waker);
        self.sim.notify();
    }
}

fn no_ctx(ctx: VcoprocId) -> DeviceError {
    DeviceError::NoContext(ctx)
}

impl Device for SimDevice {
    fn capabilities(&self) -> Capabilities {
        let cfg = self.sim.lock().config;
        Capabilities {
            class: "sim",
            model: "coproc-sim virtual-clock workload simulator".into(),
            preemption: match cfg.dispatch_only {
                true => Preemption::Dispatch,
                false => Preemption::Instruction,
            },
            local_memory: 0,
            address_bits: 64,
            iova_base: 0x1000_0000,
            iova_size: 1 << 40,
            page_size: 4096,
            demand_faults: false,
            max_contexts: cfg.max_contexts,
            memory_bytes: 0,
            limits: Default::default(),
            features: Vec::new(),
        }
    }

    fn create_context(&mut self, spec: ContextSpec) -> Result<(), DeviceError> {
        self.sim.injected(PanicIn::Create, Some(spec.id));
        let mut g = self.sim.lock();
        if g.ctxs.contains_key(&spec.id) {
            return Err(DeviceError::ContextExists(spec.id));
        }
        if g.ctxs.len() >= g.config.max_contexts as usize {
            return Err(DeviceError::Exhausted(format!(
                "{} contexts",
                g.config.max_contexts
            )));
        }
        g.ctxs.insert(spec.id, Ctx::new());
        Ok(())
    }

    fn destroy_context(&mut self, ctx: VcoprocId) {
        let mut g = self.sim.lock();
        g.ctxs.remove(&ctx);
        g.waiting.remove(&ctx);
        g.answers.remove(&ctx);
        if g.current == Some(ctx) {
            g.current = None;
        }
    }

    fn load_firmware(&mut self, ctx: VcoprocId, image: &[u8]) -> Result<FirmwareInfo, DeviceError> {
        self.sim.injected(PanicIn::Load, Some(ctx));
        let w = Workload::from_image(image).map_err(|e| match e {
            SimError::BadWorkload(m) => DeviceError::BadFirmware(m),
            other => DeviceError::BadFirmware(other.to_string()),
        })?;
        let mut g = self.sim.lock();
        let c = g.ctxs.get_mut(&ctx).ok_or(no_ctx(ctx))?;
        c.arrivals = Arrivals::new(&w);
        c.workload = Some(w);
        c.pending.clear();
        c.hog_done = 0;
        c.waiting = false;
        c.exited = false;
        c.rec.loaded = true;
        g.waiting.remove(&ctx);
        Ok(FirmwareInfo {
            entry: 0,
            code_bytes: image.len() as u64,
            data_bytes: 0,
        })
    }

    fn map(&mut self, ctx: VcoprocId, mapping: &Mapping) -> Result<(), DeviceError> {
        self.sim.injected(PanicIn::Map, Some(ctx));
        let mut g = self.sim.lock();
        let c = g.ctxs.get_mut(&ctx).ok_or(no_ctx(ctx))?;
        c.mappings.insert(mapping.iova, mapping.len);
        Ok(())
    }

    fn unmap(&mut self, ctx: VcoprocId, iova: u64) {
        if let Some(c) = self.sim.lock().ctxs.get_mut(&ctx) {
            c.mappings.remove(&iova);
        }
    }

    fn switch(&mut self, to: Option<VcoprocId>) -> SwitchOutcome {
        self.sim.injected(PanicIn::Switch, to);
        self.sim.switch(to)
    }

    fn run(&mut self, budget: Duration) -> RunOutcome {
        let current = self.sim.lock().current;
        self.sim.injected(PanicIn::Run, current);
        self.sim.run(budget)
    }

    fn preempt_handle(&self) -> PreemptHandle {
        PreemptHandle(Arc::new(SimPreempt(self.sim.clone())))
    }

    fn reset_context(&mut self, ctx: VcoprocId) -> Result<(), DeviceError> {
        self.sim.injected(PanicIn::Reset, Some(ctx));
        let mut g = self.sim.lock();
        let c = g.ctxs.get_mut(&ctx).ok_or(no_ctx(ctx))?;
        if let Some(j) = c.pending.front_mut() {
            j.done = 0;
        }
        c.hog_done = 0;
        c.waiting = false;
        c.exited = false;
        c.rec.resets += 1;
        g.waiting.remove(&ctx);
        Ok(())
    }

    fn virtual_clock(&self) -> Option<Arc<dyn VirtualClock>> {
        Some(Arc::new(self.sim.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Job;
    use coproc_core::ControlBlock;

    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;
    const A: VcoprocId = VcoprocId(1);
    const B: VcoprocId = VcoprocId(2);

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// A sim and its device, driven on this thread, horizon far away.
    fn sim(cfg: SimConfig) -> (Sim, SimDevice) {
        let sim = Sim::new(cfg);
        let dev = sim.device().unwrap();
        sim.set_horizon(10_000 * MS);
        (sim, dev)
    }

    fn add(dev: &mut SimDevice, id: VcoprocId, w: &Workload) {
        dev.create_context(ContextSpec {
            id,
            control: Arc::new(ControlBlock::default()),
        })
        .unwrap();
        let fw = dev.load_firmware(id, &w.to_image()).unwrap();
        assert_eq!(fw.code_bytes, w.to_image().len() as u64);
    }

    fn job(at_ns: u64, len_ns: u64) -> Job {
        Job {
            at_ns,
            len_ns,
            ..Job::default()
        }
    }

    fn out(ran_ns: u64, stop: StopReason) -> RunOutcome {
        RunOutcome {
            ran: Duration::from_nanos(ran_ns),
            stop,
        }
    }

    /// A waker that logs (who, when).
    fn log_waker(sim: &Sim) -> Arc<Mutex<Vec<(VcoprocId, u64)>>> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (l, s) = (log.clone(), sim.clone());
        sim.set_waker(Box::new(move |v| l.lock().unwrap().push((v, s.now_ns()))));
        log
    }

    #[test]
    fn budget_waiting_exit() {
        let (sim, mut dev) = sim(SimConfig::default());
        assert_eq!(dev.capabilities().class, "sim");
        assert_eq!(dev.capabilities().preemption, Preemption::Instruction);
        add(&mut dev, A, &Workload::hog());
        let mut w = Workload::jobs(vec![job(0, 300 * US), job(2 * MS, 100 * US)]);
        add(&mut dev, B, &w);
        assert_eq!(dev.switch(Some(A)), SwitchOutcome::Done);
        assert_eq!(dev.run(us(1000)), out(MS, StopReason::BudgetSpent));
        assert_eq!(sim.now_ns(), MS);
        assert_eq!(dev.switch(Some(B)), SwitchOutcome::Done);
        assert_eq!(dev.run(us(1000)), out(300 * US, StopReason::Waiting));
        let r = sim.context(B).unwrap();
        assert_eq!(
            r.completed,
            [JobRecord {
                arrival_ns: 0,
                start_ns: MS,
                finish_ns: MS + 300 * US,
                deadline_ns: None
            }]
        );
        assert!(r.waiting && r.pending == 0 && r.ran_ns == 300 * US);
        // Nothing to run: idle up to the next arrival, which wakes B.
        let wakes = log_waker(&sim);
        dev.switch(None);
        sim.idle(None);
        assert_eq!(*wakes.lock().unwrap(), [(B, 2 * MS)]);
        assert_eq!(sim.context(B).unwrap().pending, 1);
        dev.switch(Some(B));
        assert_eq!(dev.run(us(1000)), out(100 * US, StopReason::Waiting));
        // The same workload exits when told to.
        w.exit_when_done = true;
        dev.load_firmware(B, &w.to_image()).unwrap();
        // A fresh load: both jobs (arrived in the past) run again.
        assert_eq!(dev.run(us(1000)), out(400 * US, StopReason::Exited(0)));
        let empty = Workload {
            exit_when_done: true,
            ..Workload::default()
        };
        dev.load_firmware(B, &empty.to_image()).unwrap();
        assert_eq!(dev.run(us(1000)), out(0, StopReason::Exited(0)));
        assert!(sim.context(B).unwrap().exited);
        // Endless periodic work never exits.
        let mut p = Workload::periodic(sim.now_ns(), 10 * US, 5 * US, None);
        p.exit_when_done = true;
        dev.load_firmware(B, &p.to_image()).unwrap();
        assert_eq!(dev.run(us(100)), out(5 * US, StopReason::Waiting));
        assert_eq!(sim.context(B).unwrap().pending, 0);
    }

    #[test]
    fn fault_is_injected_once_and_reset_restarts_the_job() {
        let (sim, mut dev) = sim(SimConfig::default());
        let w = Workload::jobs(vec![Job {
            fault_at_ns: Some(200 * US),
            ..job(0, MS)
        }]);
        add(&mut dev, A, &w);
        dev.switch(Some(A));
        let o = dev.run(us(5000));
        assert_eq!(o.ran, us(200));
        let StopReason::Fault(f) = o.stop else {
            panic!("{o:?}")
        };
        assert_eq!((f.addr, f.access, f.pc), (None, Access::None, None));
        assert!(matches!(f.reason, FaultReason::Device(m) if m.starts_with("injected fault")));
        dev.reset_context(A).unwrap();
        assert_eq!(dev.run(us(5000)), out(MS, StopReason::Waiting));
        let r = sim.context(A).unwrap();
        assert_eq!((r.faults, r.resets, r.jobs_done), (1, 1, 1));
        assert_eq!(
            (r.completed[0].start_ns, r.completed[0].finish_ns),
            (0, 1200 * US)
        );
    }

    #[test]
    fn nonpreemptible_section_overruns_the_budget() {
        let (sim, mut dev) = sim(SimConfig::default());
        let j = Job {
            nonpreempt: Some((200 * US, 500 * US)),
            ..job(0, MS)
        };
        add(&mut dev, A, &Workload::jobs(vec![j, j]));
        dev.switch(Some(A));
        // Budget ends inside the section: it runs to the section's end.
        assert_eq!(dev.run(us(300)), out(700 * US, StopReason::BudgetSpent));
        assert_eq!(dev.run(us(100)), out(100 * US, StopReason::BudgetSpent));
        // Budget ends where the next job's section starts: no overrun.
        assert_eq!(dev.run(us(400)), out(400 * US, StopReason::BudgetSpent));
        // A preempt during the section takes effect at its end.
        let h = dev.preempt_handle();
        sim.at(1500 * US, Box::new(move || h.preempt()));
        assert_eq!(dev.run(us(5000)), out(500 * US, StopReason::Preempted));
        assert_eq!(sim.now_ns(), 1700 * US);
        assert_eq!(dev.run(us(5000)), out(300 * US, StopReason::Waiting));
    }

    #[test]
    fn dispatch_only_preempts_between_jobs_only() {
        let cfg = SimConfig {
            dispatch_only: true,
            ..SimConfig::default()
        };
        let (sim, mut dev) = sim(cfg);
        assert_eq!(dev.capabilities().preemption, Preemption::Dispatch);
        add(&mut dev, A, &Workload::jobs(vec![job(0, 400 * US); 3]));
        dev.switch(Some(A));
        assert_eq!(dev.run(us(500)), out(800 * US, StopReason::BudgetSpent));
        // The last job overruns too, then there is no more work.
        assert_eq!(dev.run(us(100)), out(400 * US, StopReason::Waiting));
        // A hog's work is a stream of dispatches.
        let hog = Workload {
            hog_dispatch_ns: Some(100 * US),
            ..Workload::hog()
        };
        add(&mut dev, B, &hog);
        dev.switch(Some(B));
        let h = dev.preempt_handle();
        let t0 = sim.now_ns();
        sim.at(t0 + 150 * US, Box::new(move || h.preempt()));
        assert_eq!(dev.run(us(1000)), out(200 * US, StopReason::Preempted));
        assert_eq!(dev.run(us(250)), out(300 * US, StopReason::BudgetSpent));
    }

    #[test]
    fn preempt_before_and_during_a_run() {
        let (sim, mut dev) = sim(SimConfig::default());
        add(&mut dev, A, &Workload::hog());
        dev.switch(Some(A));
        let h = dev.preempt_handle();
        h.preempt();
        assert_eq!(dev.run(us(1000)), out(0, StopReason::Preempted));
        assert_eq!(dev.run(us(1000)), out(MS, StopReason::BudgetSpent));
        let h2 = h.clone();
        sim.at(1300 * US, Box::new(move || h2.preempt()));
        assert_eq!(dev.run(us(1000)), out(300 * US, StopReason::Preempted));
        // A request does not outlive the run that ended for another reason.
        add(&mut dev, B, &Workload::jobs(vec![job(0, 10 * US)]));
        dev.switch(Some(B));
        let h3 = h.clone();
        sim.at(sim.now_ns() + 5 * US, Box::new(move || h3.preempt()));
        assert_eq!(dev.run(us(1000)), out(5 * US, StopReason::Preempted));
        assert_eq!(dev.run(us(1000)), out(5 * US, StopReason::Waiting));
    }

    #[test]
    fn arrival_for_a_waiting_context_calls_the_waker_mid_run() {
        let (sim, mut dev) = sim(SimConfig::default());
        add(&mut dev, A, &Workload::jobs(vec![job(250 * US, 50 * US)]));
        add(&mut dev, B, &Workload::hog());
        // A ran and found nothing: it waits.
        dev.switch(Some(A));
        assert_eq!(dev.run(us(1000)), out(0, StopReason::Waiting));
        let wakes = Arc::new(Mutex::new(Vec::new()));
        let (w, s, h) = (wakes.clone(), sim.clone(), dev.preempt_handle());
        sim.set_waker(Box::new(move |v| {
            w.lock().unwrap().push((v, s.now_ns()));
            h.preempt();
        }));
        dev.switch(Some(B));
        assert_eq!(dev.run(us(1000)), out(250 * US, StopReason::Preempted));
        assert_eq!(*wakes.lock().unwrap(), [(A, 250 * US)]);
        // The running context's own arrivals wake nobody.
        dev.switch(Some(A));
        assert_eq!(dev.run(us(1000)), out(50 * US, StopReason::Waiting));
        assert_eq!(sim.context(A).unwrap().wakeups, 1);
    }

    #[test]
    fn idle_until_hooks_and_interrupts() {
        let (sim, mut dev) = sim(SimConfig::default());
        add(&mut dev, A, &Workload::jobs(vec![job(5 * MS, 1)]));
        dev.switch(Some(A));
        assert_eq!(dev.run(us(1000)), out(0, StopReason::Waiting));
        let wakes = log_waker(&sim);
        sim.idle(Some(2 * MS));
        assert_eq!(sim.now_ns(), 2 * MS);
        let hit = Arc::new(Mutex::new(None));
        let (hh, s) = (hit.clone(), sim.clone());
        sim.at(
            3 * MS,
            Box::new(move || *hh.lock().unwrap() = Some(s.now_ns())),
        );
        sim.idle(None);
        assert_eq!((*hit.lock().unwrap(), sim.now_ns()), (Some(3 * MS), 3 * MS));
        // An interrupt while not idling ends the next idle at once.
        sim.interrupt();
        sim.idle(None);
        assert_eq!(sim.now_ns(), 3 * MS);
        sim.idle(None);
        assert_eq!(*wakes.lock().unwrap(), [(A, 5 * MS)]);
        assert_eq!(sim.now_ns(), 5 * MS);
    }

    #[test]
    fn switch_answers_cost_and_log() {
        let cfg = SimConfig {
            switch_ns: 10 * US,
            ..SimConfig::default()
        };
        let (sim, mut dev) = sim(cfg);
        add(&mut dev, A, &Workload::hog());
        add(&mut dev, B, &Workload::hog());
        assert_eq!(dev.switch(Some(A)), SwitchOutcome::Done);
        assert_eq!(sim.now_ns(), 10 * US);
        sim.answer_switch(B, SwitchOutcome::RetryAfter(us(5)));
        let failed = SwitchOutcome::Failed {
            guilty: B,
            reason: "hung".into(),
        };
        sim.answer_switch(B, failed.clone());
        assert_eq!(dev.switch(Some(B)), SwitchOutcome::RetryAfter(us(5)));
        assert_eq!(sim.current(), Some(A));
        assert_eq!(dev.switch(Some(B)), failed);
        assert_eq!(sim.current(), None);
        assert_eq!(dev.switch(Some(B)), SwitchOutcome::Done);
        assert_eq!(sim.now_ns(), 20 * US);
        assert_eq!(
            sim.switch_log(),
            [
                SwitchRecord {
                    from: None,
                    to: Some(A),
                    at_ns: 10 * US
                },
                SwitchRecord {
                    from: None,
                    to: Some(B),
                    at_ns: 20 * US
                }
            ]
        );
        assert_eq!(sim.context(B).unwrap().switches_in, 1);
        assert!(matches!(
            dev.switch(Some(VcoprocId(9))),
            SwitchOutcome::Failed { .. }
        ));
    }

    #[test]
    fn contexts_maps_and_bad_firmware() {
        let (sim, mut dev) = sim(SimConfig::default());
        add(&mut dev, A, &Workload::hog());
        let spec = ContextSpec {
            id: A,
            control: Arc::new(ControlBlock::default()),
        };
        assert_eq!(dev.create_context(spec), Err(DeviceError::ContextExists(A)));
        assert!(matches!(
            dev.load_firmware(A, b"{\"periodic\": {\"period_ns\": 0, \"len_ns\": 1}}"),
            Err(DeviceError::BadFirmware(_))
        ));
        assert_eq!(
            dev.load_firmware(B, &Workload::hog().to_image()),
            Err(DeviceError::NoContext(B))
        );
        let region = Arc::new(coproc_core::memory::Region::new(4096).unwrap());
        let m = Mapping::pinned_rw(0x1000_0000, &region, 4096);
        dev.map(A, &m).unwrap();
        assert_eq!(sim.context(A).unwrap().mappings, [(0x1000_0000, 4096)]);
        dev.unmap(A, 0x1000_0000);
        assert!(sim.context(A).unwrap().mappings.is_empty());
        dev.switch(Some(A));
        dev.destroy_context(A);
        assert!(sim.context(A).is_none() && sim.current().is_none());
        assert!(matches!(sim.device(), Err(SimError::AlreadyAttached)));
        sim.idle(Some(5));
        assert!(matches!(sim.run_until(4), Err(SimError::Past { .. })));
        drop(dev);
        assert!(matches!(sim.run_until(u64::MAX), Err(SimError::Detached)));
    }

    #[test]
    fn overloaded_endless_periodic_counts_pending_lazily() {
        let (sim, mut dev) = sim(SimConfig::default());
        add(&mut dev, A, &Workload::periodic(0, US, 2 * US, None));
        dev.switch(Some(A));
        assert_eq!(dev.run(us(1000)), out(MS, StopReason::BudgetSpent));
        let r = sim.context(A).unwrap();
        assert_eq!((r.jobs_done, r.pending), (500, 501));
        assert!(!r.completed[0].met_deadline());
        assert_eq!(r.completed[0].response_ns(), 2 * US);
    }

    /// Run `f` with the device on another thread.
    fn on_thread<R: Send + 'static>(
        mut dev: SimDevice,
        f: impl FnOnce(&mut SimDevice) -> R + Send + 'static,
    ) -> std::thread::JoinHandle<(SimDevice, R)> {
        std::thread::spawn(move || {
            let r = f(&mut dev);
            (dev, r)
        })
    }

    #[test]
    fn parked_run_returns_on_a_request_from_another_thread() {
        let sim = Sim::new(SimConfig::default());
        let mut dev = sim.device().unwrap();
        let j = Job {
            nonpreempt: Some((100 * US, 800 * US)),
            ..job(0, MS)
        };
        add(&mut dev, A, &Workload::jobs(vec![j]));
        let h = dev.preempt_handle();
        let t = on_thread(dev, |d| {
            d.switch(Some(A));
            d.run(us(200))
        });
        sim.run_until(0).unwrap();
        sim.run_until(500 * US).unwrap();
        assert!(sim.is_parked());
        // Inside the section, but a request while parked ends the run.
        h.preempt();
        let (dev, o) = t.join().unwrap();
        assert_eq!(o, out(500 * US, StopReason::Preempted));
        // The rest of the section stays non-preemptible.
        let t = on_thread(dev, |d| d.run(Duration::ZERO));
        sim.set_horizon(MS);
        let (_dev, o) = t.join().unwrap();
        assert_eq!(sim.now_ns(), 900 * US);
        assert_eq!(o, out(400 * US, StopReason::BudgetSpent));
    }

    #[test]
    fn parked_idle_returns_on_interrupt() {
        let sim = Sim::new(SimConfig::default());
        let dev = sim.device().unwrap();
        let s = sim.clone();
        let t = on_thread(dev, move |_| s.idle(None));
        sim.run_until(7 * MS).unwrap();
        assert!(sim.is_parked());
        sim.interrupt();
        t.join().unwrap();
        assert_eq!(sim.now_ns(), 7 * MS);
    }
}
