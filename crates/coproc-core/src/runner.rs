//! The runner: the loop that owns one pcoproc's device.
//!
//! Each turn: tidy revoked mappings and execute queued control commands;
//! apply deferred wake-ups and rung doorbell eventfds; ask the policy whom to
//! run and for how long; switch contexts if needed; run; charge the measured
//! time; update state and statistics. Only this thread touches the device.
//!
//! Every turn runs under `catch_unwind`. A panic inside a device call made
//! for one context (a command's, a switch to it, its slice) is pinned on
//! that vcoproc: its context is reset and it faults with the panic message
//! in its fault record, the others go on. A panic anywhere else (policy
//! code, the runner's own bookkeeping), or one while containing the first,
//! fails the pcoproc: every vcoproc faults, queued commands are dropped so
//! their callers get an error at once, and the runner ends.

use crate::device::{
    thread_cpu_time, Capabilities, ContextSpec, Device, DeviceError, FirmwareInfo, FirmwarePrep,
    PreemptHandle, PreparedFirmware, RunOutcome, StopReason, SwitchOutcome, VirtualClock,
};
use crate::error::CoreError;
use crate::fault::{Access, DeviceFault, FaultReason, PageFault};
use crate::ids::{ContextId, VcoprocId};
use crate::iova::Mapping;
use crate::policy::{Decision, SliceEnd};
use crate::sched::{fail, lock_views, ns, panic_message, Inner, Shared, TraceEntry};
use crate::state::{Event, VcoprocState};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Longest the runner sleeps when idle before re-checking (bounds the cost
/// of a lost wake-up).
const IDLE_RECHECK: Duration = Duration::from_millis(100);

/// What one turn of the loop asks for next.
enum Turn {
    Go,
    Shutdown,
}

pub(crate) fn run(mut device: Box<dyn Device>, shared: &Shared) {
    // The context on the device right now.
    let mut current: Option<VcoprocId> = None;
    // The vcoproc whose context the device call in progress is for: a
    // panic inside it is pinned on that vcoproc.
    let blame = Cell::new(None);
    let mut rung = Vec::new();
    loop {
        let turn = catch_unwind(AssertUnwindSafe(|| {
            one_turn(device.as_mut(), shared, &mut current, &blame, &mut rung)
        }));
        let payload = match turn {
            Ok(Turn::Go) => continue,
            Ok(Turn::Shutdown) => break,
            Err(p) => p,
        };
        shared.slice_running.store(false, Ordering::SeqCst);
        rung.clear();
        current = None;
        let msg = panic_message(payload.as_ref());
        shared
            .last_panic
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone_from(&msg);
        let contained = blame
            .take()
            .is_some_and(|v| contain(device.as_mut(), shared, v, &msg));
        shared.inner.clear_poison();
        if contained {
            let reply = shared.lock().panic_reply.take();
            if let Some(reply) = reply {
                reply(CoreError::Panicked(msg));
            }
            shared.state_cv.notify_all();
            continue;
        }
        // Nothing to pin it on (policy code, the runner's own state), or
        // the context could not be reset: the pcoproc fails visibly.
        let mut g = shared.lock();
        fail(shared, &mut g, &msg);
        let reply = g.panic_reply.take();
        drop(g);
        if let Some(reply) = reply {
            reply(CoreError::Failed(shared.name.clone(), msg.clone()));
        }
        shared.inner.clear_poison();
        shared.wakeup.clear();
        // Release the device without trusting it further.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(device)));
        shared.wakeup.stop_sentinel();
        shared.state_cv.notify_all();
        return;
    }

    // Shutdown: release every context.
    let g = shared.lock();
    let ids: Vec<VcoprocId> = g.vcoprocs.keys().copied().collect();
    drop(g);
    let released = catch_unwind(AssertUnwindSafe(|| {
        let _ = device.switch(None);
        for id in ids {
            device.destroy_context(id);
        }
    }));
    if released.is_err() {
        tracing::error!(pcoproc = %shared.name, "runner: device code panicked while shutting down");
    }
    shared.wakeup.clear();
    shared.wakeup.stop_sentinel();
    lock_views(&shared.views).maps.clear();
    let mut g = shared.lock();
    for vc in g.vcoprocs.values_mut() {
        vc.force(VcoprocState::Destroyed);
        vc.control.kick();
    }
    g.vcoprocs.clear();
    drop(g);
    shared.state_cv.notify_all();
}

/// One turn: tidy revoked mappings and run queued commands, apply deferred
/// wake-ups and doorbells, pick, switch, run, charge.
fn one_turn(
    device: &mut dyn Device,
    shared: &Shared,
    current: &mut Option<VcoprocId>,
    blame: &Cell<Option<VcoprocId>>,
    rung: &mut Vec<VcoprocId>,
) -> Turn {
    // Doorbell eventfds rung while this thread ran a slice were taken by
    // the sentinel; those rung while it idled are in `rung`.
    let mut g = shared.lock();
    let mut blamed = Blamed {
        dev: device,
        blame,
        measure: shared.clock.is_none(),
        spent: Vec::new(),
    };
    loop {
        // Revoked mappings first: a command after a revoke (a new map at
        // the same iova) finds the old one gone.
        tidy(shared, &mut g, &mut blamed);
        let Some(cmd) = g.commands.pop_front() else {
            break;
        };
        cmd(&mut blamed, &mut g);
        if current.is_some_and(|c| !g.vcoprocs.contains_key(&c)) {
            // The command destroyed the context on the device.
            *current = None;
        }
    }
    blamed.charge(shared, &mut g);
    if g.shutdown {
        return Turn::Shutdown;
    }
    ring_doorbells(shared, &mut g, rung);
    drain_wakes(shared, &mut g);
    let now = shared.now_ns();
    let stall_deadline = expire_stalls(&mut g, now);
    if stall_deadline.is_some_and(|d| d <= now) {
        // Some stall just timed out: its waiters were kicked.
        drop(g);
        shared.state_cv.notify_all();
        return Turn::Go;
    }
    let (v, budget) = match g.policy.pick(now) {
        Decision::Idle(t) => {
            let until = t.map(|t| now.saturating_add(ns(t)));
            // A stall times out on time even when nothing runs.
            let until = match (until, stall_deadline) {
                (Some(u), Some(d)) => Some(u.min(d)),
                (u, d) => u.or(d),
            };
            shared.idle(g, until, IDLE_RECHECK, rung);
            return Turn::Go;
        }
        Decision::Run { vcoproc, budget } => (vcoproc, budget),
    };
    let picked = g
        .vcoprocs
        .get_mut(&v)
        .is_some_and(|vc| vc.transition(Event::Pick).is_ok());
    if !picked {
        // A stale queue entry; the policy must forget it.
        g.policy.block(v);
        return Turn::Go;
    }
    g.running = Some(v);
    g.slice_started_ns = None;
    drop(g);

    let switched = *current != Some(v);
    let mut switch_ns = None;
    let mut caused = None;
    if switched {
        blame.set(Some(v));
        let t0 = shared.now_ns();
        let outcome = device.switch(Some(v));
        blame.set(None);
        match outcome {
            SwitchOutcome::Done => {
                *current = Some(v);
                switch_ns = Some(shared.now_ns().saturating_sub(t0));
                caused = device.switch_caused();
            }
            SwitchOutcome::RetryAfter(t) => {
                retry_after(device, shared, *current, v, t, blame);
                return Turn::Go;
            }
            SwitchOutcome::Failed { guilty, reason } => {
                *current = None;
                switch_failed(device, shared, v, guilty, reason, blame);
                return Turn::Go;
            }
        }
    }

    let start = slice_start(shared, v, switch_ns, caused);
    let out = run_slice(device, shared, v, budget, blame);
    charge(shared, v, budget, start, &out);
    Turn::Go
}

/// Run `v`'s slice on the device, with the slice marked as running (so
/// deferred wake-ups and revokes cut it short) and the panic blame on `v`.
fn run_slice(
    device: &mut dyn Device,
    shared: &Shared,
    v: VcoprocId,
    budget: Duration,
    blame: &Cell<Option<VcoprocId>>,
) -> RunOutcome {
    shared.slice_running.store(true, Ordering::SeqCst);
    // Work deferred before the flag was set would otherwise wait for the
    // whole slice.
    if shared.deferred.load(Ordering::SeqCst) {
        shared.preempt.preempt();
    }
    blame.set(Some(v));
    let out = device.run(budget);
    blame.set(None);
    shared.slice_running.store(false, Ordering::SeqCst);
    out
}

/// The doorbell eventfds of the vcoprocs in `rung` were written (and their
/// doorbells rung in their control blocks): wake them.
fn ring_doorbells(shared: &Shared, g: &mut Inner, rung: &mut Vec<VcoprocId>) {
    for v in rung.drain(..) {
        shared.wake_in(g, v, 1);
    }
}

/// Apply the wake-ups that found the scheduling lock taken.
fn drain_wakes(shared: &Shared, g: &mut Inner) {
    if !shared.deferred.swap(false, Ordering::SeqCst) {
        return;
    }
    let wakes = std::mem::take(
        &mut *shared
            .wakes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for (v, doorbells) in wakes {
        shared.wake_in(g, v, doorbells);
    }
    // Revokes set the flag too: leave it set if any wait.
    if !shared
        .tidy
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .is_empty()
    {
        shared.deferred.store(true, Ordering::SeqCst);
    }
}

/// Take revoked mappings out of the iova space and the device. Their pages
/// were out of the device's reach since the revoke; this makes the next
/// access fault.
fn tidy(shared: &Shared, g: &mut Inner, device: &mut dyn Device) {
    let done = std::mem::take(
        &mut *shared
            .tidy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for (id, iova, view) in done {
        let Some(vc) = g.vcoprocs.get_mut(&id) else {
            continue;
        };
        let same = vc
            .iova
            .lookup(iova)
            .is_some_and(|m| m.iova == iova && Arc::ptr_eq(&m.region, &view));
        if same && vc.iova.remove(iova).is_ok() {
            device.unmap(id, iova);
        }
    }
}

/// A panic in device code for `v` was caught: reset its context and fault
/// it; the others go on. False if even that panicked.
fn contain(device: &mut dyn Device, shared: &Shared, v: VcoprocId, msg: &str) -> bool {
    let reset = catch_unwind(AssertUnwindSafe(|| {
        let _ = device.switch(None);
        device.reset_context(v)
    }));
    if reset.is_err() {
        return false;
    }
    let faulted = catch_unwind(AssertUnwindSafe(|| {
        let mut g = shared.lock();
        let now = shared.now_ns();
        g.running = None;
        // A command's own reply channel went with the unwinding.
        if let Some(vc) = g.vcoprocs.get_mut(&v) {
            vc.force(VcoprocState::Faulted);
            let control = vc.control.clone();
            let reason = FaultReason::Device(format!("device code panicked: {msg}"));
            out_with_fault(&mut g, v, now, None, reason);
            drop(g);
            control.kick();
        }
    }));
    faulted.is_ok()
}

/// The device as the runner lends it to commands: every call that names a
/// context notes it as the one to blame should the call panic.
/// On a host clock it also measures each call (the runner thread's CPU
/// time, immune to the host descheduling it) for the context it names: the
/// device time a command took is charged to the vcoproc that asked for it.
struct Blamed<'a> {
    dev: &'a mut dyn Device,
    blame: &'a Cell<Option<VcoprocId>>,
    /// Measure calls (false on a virtual clock: commands take no device
    /// time there, and exact schedules stay exact).
    measure: bool,
    spent: Vec<(VcoprocId, Duration)>,
}

impl Blamed<'_> {
    fn on<R>(&mut self, ctx: VcoprocId, f: impl FnOnce(&mut dyn Device) -> R) -> R {
        self.blame.set(Some(ctx));
        let t0 = self.measure.then(thread_cpu_time);
        let r = f(self.dev);
        if let Some(t0) = t0 {
            let took = thread_cpu_time().saturating_sub(t0);
            match self.spent.last_mut() {
                Some((v, t)) if *v == ctx => *t += took,
                _ => self.spent.push((ctx, took)),
            }
        }
        self.blame.set(None);
        r
    }

    /// Charge what the calls so far took to the vcoprocs they were for
    /// (those still there). A turn without commands reads no clock.
    fn charge(&mut self, shared: &Shared, g: &mut Inner) {
        if self.spent.is_empty() {
            return;
        }
        let now = shared.now_ns();
        for (v, took) in self.spent.drain(..) {
            if g.vcoprocs.contains_key(&v) && !took.is_zero() {
                g.policy.charge_work(v, took, now);
            }
        }
    }
}

impl Device for Blamed<'_> {
    fn capabilities(&self) -> Capabilities {
        self.dev.capabilities()
    }
    fn create_context(&mut self, spec: ContextSpec) -> Result<(), DeviceError> {
        let id = spec.id;
        self.on(id, |d| d.create_context(spec))
    }
    fn destroy_context(&mut self, ctx: ContextId) {
        self.on(ctx, |d| d.destroy_context(ctx));
    }
    fn load_firmware(&mut self, ctx: ContextId, image: &[u8]) -> Result<FirmwareInfo, DeviceError> {
        self.on(ctx, |d| d.load_firmware(ctx, image))
    }
    fn firmware_prep(&self) -> Arc<dyn FirmwarePrep> {
        self.dev.firmware_prep()
    }
    fn install_firmware(
        &mut self,
        ctx: ContextId,
        fw: PreparedFirmware,
    ) -> Result<FirmwareInfo, DeviceError> {
        self.on(ctx, |d| d.install_firmware(ctx, fw))
    }
    fn map(&mut self, ctx: ContextId, mapping: &Mapping) -> Result<(), DeviceError> {
        self.on(ctx, |d| d.map(ctx, mapping))
    }
    fn unmap(&mut self, ctx: ContextId, iova: u64) {
        self.on(ctx, |d| d.unmap(ctx, iova));
    }
    fn switch(&mut self, to: Option<ContextId>) -> SwitchOutcome {
        match to {
            Some(v) => self.on(v, |d| d.switch(to)),
            None => self.dev.switch(None),
        }
    }
    fn run(&mut self, budget: Duration) -> RunOutcome {
        self.dev.run(budget)
    }
    fn preempt_handle(&self) -> PreemptHandle {
        self.dev.preempt_handle()
    }
    fn reset_context(&mut self, ctx: ContextId) -> Result<(), DeviceError> {
        self.on(ctx, |d| d.reset_context(ctx))
    }
    fn virtual_clock(&self) -> Option<Arc<dyn VirtualClock>> {
        self.dev.virtual_clock()
    }
    fn set_demand_faults(&mut self, ctx: ContextId, on: bool) -> Result<(), DeviceError> {
        self.on(ctx, |d| d.set_demand_faults(ctx, on))
    }
    fn alloc_local(&mut self, ctx: ContextId, iova: u64, len: u64) -> Result<(), DeviceError> {
        self.on(ctx, |d| d.alloc_local(ctx, iova, len))
    }
    fn free_local(&mut self, ctx: ContextId, iova: u64) {
        self.on(ctx, |d| d.free_local(ctx, iova));
    }
}

/// Put `v` back at the head of the queue with its slice intact.
fn unpick(g: &mut Inner, v: VcoprocId, now: u64) {
    if let Some(vc) = g.vcoprocs.get_mut(&v) {
        let _ = vc.transition(Event::SliceEnd);
    }
    g.running = None;
    g.policy.charge(
        v,
        Duration::ZERO,
        now,
        SliceEnd {
            runnable: true,
            preempted: true,
            waiting: false,
        },
    );
}

/// The device cannot leave the current context yet: keep running it (if it
/// wants to run) for up to `t`, then retry the switch.
fn retry_after(
    device: &mut dyn Device,
    shared: &Shared,
    current: Option<VcoprocId>,
    v: VcoprocId,
    t: Duration,
    blame: &Cell<Option<VcoprocId>>,
) {
    let mut g = shared.lock();
    let now = shared.now_ns();
    unpick(&mut g, v, now);
    let cur = current.filter(|c| g.vcoprocs.get(c).is_some_and(|vc| vc.state.is_runnable()));
    if let Some(c) = cur {
        g.policy.block(c);
        if let Some(vc) = g.vcoprocs.get_mut(&c) {
            let _ = vc.transition(Event::Pick);
        }
        g.running = Some(c);
        drop(g);
        let start = slice_start(shared, c, None, None);
        let out = run_slice(device, shared, c, t, blame);
        charge(shared, c, t, start, &out);
    } else {
        // Wait the whole delay: wake-ups of other vcoprocs cannot use a
        // device that cannot switch yet. Only a command (or shutdown)
        // ends the wait early; the switch is retried after it.
        let until = now.saturating_add(ns(t));
        let mut rung = Vec::new();
        loop {
            shared.idle(g, Some(until), t, &mut rung);
            g = shared.lock();
            // Doorbells rung meanwhile are not lost: the firmware sees
            // them in its control block, the wake-up waits for a turn.
            ring_doorbells(shared, &mut g, &mut rung);
            if shared.now_ns() >= until || !g.commands.is_empty() || g.shutdown {
                break;
            }
        }
    }
}

/// The switch to `v` failed, blaming `guilty`: fault `guilty`, reset its
/// context so nothing half-switched survives, and go on with the others.
fn switch_failed(
    device: &mut dyn Device,
    shared: &Shared,
    v: VcoprocId,
    guilty: VcoprocId,
    reason: String,
    blame: &Cell<Option<VcoprocId>>,
) {
    blame.set(Some(guilty));
    let reset = device.reset_context(guilty);
    blame.set(None);
    if let Err(e) = reset {
        tracing::error!(vcoproc = %guilty, error = %e, "runner: reset after a failed switch");
    }
    let mut g = shared.lock();
    let now = shared.now_ns();
    if guilty == v {
        g.running = None;
    } else {
        unpick(&mut g, v, now);
    }
    if let Some(vc) = g.vcoprocs.get_mut(&guilty) {
        if vc.transition(Event::Fault).is_ok() {
            vc.control.kick();
            out_with_fault(&mut g, guilty, now, None, FaultReason::SwitchFailed(reason));
        }
    }
    drop(g);
    shared.state_cv.notify_all();
}

/// The slice of `v` starts now (after a completed switch onto it that took
/// `switch_ns`, if there was one): count the switch, charge what it spent
/// because of another vcoproc (`caused`, [`Device::switch_caused`]) to
/// that one if it is still there, note the wake→run latency if it is the
/// first slice since a wake-up. One lock per slice.
fn slice_start(
    shared: &Shared,
    v: VcoprocId,
    switch_ns: Option<u64>,
    caused: Option<(VcoprocId, Duration)>,
) -> (u64, Option<u64>) {
    let mut g = shared.lock();
    let now = shared.now_ns();
    g.slice_started_ns = Some(now);
    if let Some(took) = switch_ns {
        g.switches += 1;
        g.latency.switch.observe(took);
        if let Some(vc) = g.vcoprocs.get_mut(&v) {
            vc.stats.switches += 1;
        }
    }
    if let Some((by, took)) = caused {
        if g.vcoprocs.contains_key(&by) && !took.is_zero() {
            g.policy.charge_work(by, took, now);
        }
    }
    let vc = g.vcoprocs.get_mut(&v);
    let waited = vc.and_then(|vc| {
        let waited = now.saturating_sub(vc.woken_ns.take()?);
        vc.stats.run_delay_ns += waited;
        vc.stats.run_delay_max_ns = vc.stats.run_delay_max_ns.max(waited);
        Some(waited)
    });
    if let Some(w) = waited {
        g.latency.run_delay.observe(w);
    }
    (now, waited)
}

/// Account one slice of `v` and move it to its next state.
fn charge(
    shared: &Shared,
    v: VcoprocId,
    budget: Duration,
    (start, waited_ns): (u64, Option<u64>),
    out: &RunOutcome,
) {
    let mut g = shared.lock();
    let now = shared.now_ns();
    g.running = None;
    let ran_ns = ns(out.ran);
    g.busy_ns += ran_ns;
    let Some(vc) = g.vcoprocs.get_mut(&v) else {
        return;
    };
    vc.stats.run_ns += ran_ns;
    vc.stats.slices += 1;
    let control = vc.control.clone();
    let mut fault = None;
    let end = match &out.stop {
        StopReason::BudgetSpent => SliceEnd {
            runnable: true,
            preempted: false,
            waiting: false,
        },
        StopReason::Preempted => {
            vc.stats.preemptions += 1;
            SliceEnd {
                runnable: true,
                preempted: true,
                waiting: false,
            }
        }
        // A doorbell that arrived while it was still running counts: it
        // stays runnable instead of parking.
        StopReason::Waiting if control.pending() > 0 => SliceEnd {
            runnable: true,
            preempted: false,
            waiting: false,
        },
        StopReason::Waiting => {
            vc.stats.waits += 1;
            SliceEnd {
                runnable: false,
                preempted: false,
                waiting: true,
            }
        }
        StopReason::Exited(code) => {
            vc.exit_code = Some(*code);
            SliceEnd {
                runnable: false,
                preempted: false,
                waiting: false,
            }
        }
        StopReason::Fault(f) => {
            fault = Some(f.clone());
            SliceEnd {
                runnable: false,
                preempted: false,
                waiting: false,
            }
        }
        StopReason::PageFault { addr, access } => {
            match vc.demand {
                Some(t) => {
                    vc.stall = Some(PageFault {
                        addr: *addr,
                        access: *access,
                        since_ns: now,
                        deadline_ns: now.saturating_add(ns(t)),
                    });
                }
                // Turned off meanwhile (the device should not report it):
                // the access is an ordinary violation.
                None => {
                    fault = Some(DeviceFault {
                        addr: Some(*addr),
                        access: *access,
                        pc: None,
                        reason: FaultReason::AccessViolation,
                    });
                }
            }
            SliceEnd {
                runnable: false,
                preempted: false,
                waiting: false,
            }
        }
    };
    let stalled = vc.stall.take();
    let event = match (&out.stop, end.runnable) {
        (_, true) => Event::SliceEnd,
        (StopReason::Exited(_), _) => Event::Exit,
        (StopReason::Fault(_), _) => Event::Fault,
        (StopReason::PageFault { .. }, _) if stalled.is_some() => Event::PageFault,
        (StopReason::PageFault { .. }, _) => Event::Fault,
        _ => Event::Wait,
    };
    if let Err(e) = vc.transition(event) {
        tracing::error!(vcoproc = %v, error = %e, "runner: unexpected state");
    }
    let mut stall_deadline = None;
    if vc.state == VcoprocState::Stalled {
        stall_deadline = stalled.map(|p| p.deadline_ns);
        vc.stall = stalled;
    }
    if let Some(d) = stall_deadline {
        g.stall_deadlines.insert((d, v));
    }
    g.policy.charge(v, out.ran, now, end);
    if let Some(fault) = fault {
        g.record_fault(v, now, fault);
    }
    if let Some((cap, t)) = g.trace.as_mut() {
        if t.len() == *cap {
            t.pop_front();
        }
        t.push_back(TraceEntry {
            vcoproc: v,
            start_ns: start,
            ran_ns,
            budget_ns: ns(budget),
            runnable_after: end.runnable,
            preempted: end.preempted,
            waited_ns,
        });
    }
    drop(g);
    if let Some(p) = stalled {
        // After the state change, so a listener that looks sees `Stalled`.
        control.page_fault(p.addr, p.access);
    }
    if !end.runnable {
        control.kick();
    }
    shared.state_cv.notify_all();
}

/// Fault every stalled vcoproc whose stall deadline has passed; returns the
/// earliest deadline seen (a past one if any expired, so the caller knows).
fn expire_stalls(g: &mut Inner, now: u64) -> Option<u64> {
    let mut expired = false;
    while let Some(&(deadline, id)) = g.stall_deadlines.first() {
        let live = g
            .vcoprocs
            .get(&id)
            .and_then(|vc| vc.stall.filter(|_| vc.state == VcoprocState::Stalled))
            .is_some_and(|p| p.deadline_ns == deadline);
        if live && deadline > now {
            return Some(if expired { now } else { deadline });
        }
        g.stall_deadlines.pop_first();
        if live {
            fail_stall(g, id, now, FaultReason::PageFaultTimeout);
            expired = true;
        }
    }
    expired.then_some(now)
}

/// Turn the stall of `id` into a fault for `reason`, recording the
/// address and access it stalled on, and kick its waiters.
pub(crate) fn fail_stall(g: &mut Inner, id: VcoprocId, now: u64, reason: FaultReason) {
    let Some(vc) = g.vcoprocs.get_mut(&id) else {
        return;
    };
    let Some(p) = vc.stall else { return };
    if vc.transition(Event::Fault).is_err() {
        return;
    }
    let control = vc.control.clone();
    out_with_fault(g, id, now, Some((p.addr, p.access)), reason);
    control.kick();
}

/// `id`, just moved to `Faulted`, leaves the policy and its fault is
/// recorded (`at`: the address and access, where there is one).
fn out_with_fault(
    g: &mut Inner,
    id: VcoprocId,
    now: u64,
    at: Option<(u64, Access)>,
    reason: FaultReason,
) {
    g.policy.block(id);
    g.record_fault(
        id,
        now,
        DeviceFault {
            addr: at.map(|(a, _)| a),
            access: at.map_or(Access::None, |(_, a)| a),
            pc: None,
            reason,
        },
    );
}
