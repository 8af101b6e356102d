//! The runner: the loop that owns one pcoproc's device.
//!
//! Each turn: execute queued control commands; ask the policy whom to run and
//! for how long; switch contexts if needed; run; charge the measured time;
//! update state and statistics. Only this thread touches the device.

use crate::device::{Device, RunOutcome, StopReason, SwitchOutcome};
use crate::fault::{Access, DeviceFault, FaultReason, FaultRecord};
use crate::ids::VcoprocId;
use crate::pcoproc::{Inner, PageFault, Shared, TraceEntry};
use crate::policy::{Decision, SliceEnd};
use crate::state::{Event, VcoprocState};
use std::time::Duration;

/// Longest the runner sleeps when idle before re-checking (bounds the cost
/// of a lost wake-up).
const IDLE_RECHECK: Duration = Duration::from_millis(100);

pub(crate) fn run(mut device: Box<dyn Device>, shared: &Shared) {
    // The context on the device right now.
    let mut current: Option<VcoprocId> = None;
    loop {
        let mut g = shared.lock();
        while let Some(cmd) = g.commands.pop_front() {
            cmd(device.as_mut(), &mut g);
            if current.is_some_and(|c| !g.vcoprocs.contains_key(&c)) {
                // The command destroyed the context on the device.
                current = None;
            }
        }
        if g.shutdown {
            break;
        }
        let now = shared.now_ns();
        let stall_deadline = expire_stalls(&mut g, now);
        if stall_deadline.is_some_and(|d| d <= now) {
            // Some stall just timed out: its waiters were kicked.
            drop(g);
            shared.state_cv.notify_all();
            continue;
        }
        let (v, budget) = match g.policy.pick(now) {
            Decision::Idle(t) => {
                let until = t.map(|t| now.saturating_add(ns(t)));
                // A stall times out on time even when nothing runs.
                let until = match (until, stall_deadline) {
                    (Some(u), Some(d)) => Some(u.min(d)),
                    (u, d) => u.or(d),
                };
                shared.idle(g, until, IDLE_RECHECK);
                continue;
            }
            Decision::Run { vcoproc, budget } => (vcoproc, budget),
        };
        let picked = g
            .vcoprocs
            .get_mut(&v)
            .is_some_and(|vc| vc.transition(Event::Pick).is_ok());
        match picked {
            true => {}
            false => {
                // A stale queue entry; the policy must forget it.
                g.policy.block(v);
                continue;
            }
        }
        g.running = Some(v);
        drop(g);

        let switched = current != Some(v);
        if switched {
            match device.switch(Some(v)) {
                SwitchOutcome::Done => current = Some(v),
                SwitchOutcome::RetryAfter(t) => {
                    retry_after(device.as_mut(), shared, current, v, t);
                    continue;
                }
                SwitchOutcome::Failed { guilty, reason } => {
                    current = None;
                    switch_failed(device.as_mut(), shared, v, guilty, reason);
                    continue;
                }
            }
        }

        let start = slice_start(shared, v, switched);
        let out = device.run(budget);
        charge(shared, v, budget, start, &out);
    }

    // Shutdown: release every context.
    let g = shared.lock();
    let ids: Vec<VcoprocId> = g.vcoprocs.keys().copied().collect();
    drop(g);
    let _ = device.switch(None);
    for id in ids {
        device.destroy_context(id);
    }
    let mut g = shared.lock();
    for vc in g.vcoprocs.values_mut() {
        vc.state = VcoprocState::Destroyed;
        vc.control.kick();
    }
    g.vcoprocs.clear();
    drop(g);
    shared.state_cv.notify_all();
}

/// A duration in ns, saturating.
pub(crate) fn ns(t: Duration) -> u64 {
    u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)
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
) {
    let mut g = shared.lock();
    let now = shared.now_ns();
    unpick(&mut g, v, now);
    let cur = current.filter(|c| g.vcoprocs.get(c).is_some_and(|vc| vc.state.is_runnable()));
    match cur {
        Some(c) => {
            g.policy.block(c);
            if let Some(vc) = g.vcoprocs.get_mut(&c) {
                let _ = vc.transition(Event::Pick);
            }
            g.running = Some(c);
            drop(g);
            let start = slice_start(shared, c, false);
            let out = device.run(t);
            charge(shared, c, t, start, &out);
        }
        None => {
            // Wait the whole delay: wake-ups of other vcoprocs cannot use a
            // device that cannot switch yet. Only a command (or shutdown)
            // ends the wait early; the switch is retried after it.
            let until = now.saturating_add(ns(t));
            loop {
                shared.idle(g, Some(until), t);
                g = shared.lock();
                if shared.now_ns() >= until || !g.commands.is_empty() || g.shutdown {
                    break;
                }
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
) {
    if let Err(e) = device.reset_context(guilty) {
        tracing::error!(vcoproc = %guilty, error = %e, "runner: reset after a failed switch");
    }
    let mut g = shared.lock();
    let now = shared.now_ns();
    if guilty != v {
        unpick(&mut g, v, now);
    } else {
        g.running = None;
    }
    if let Some(vc) = g.vcoprocs.get_mut(&guilty) {
        if vc.transition(Event::Fault).is_ok() {
            vc.control.kick();
            g.policy.block(guilty);
            g.record_fault(FaultRecord {
                vcoproc: guilty,
                at_ns: now,
                fault: DeviceFault {
                    addr: None,
                    access: Access::None,
                    pc: None,
                    reason: FaultReason::SwitchFailed(reason),
                },
            });
        }
    }
    drop(g);
    shared.state_cv.notify_all();
}

/// The slice of `v` starts now (after a completed switch onto it if
/// `switched`): count the switch, note the wake→run latency if it is the
/// first slice since a wake-up. One lock per slice.
fn slice_start(shared: &Shared, v: VcoprocId, switched: bool) -> (u64, Option<u64>) {
    let mut g = shared.lock();
    let now = shared.now_ns();
    if switched {
        g.switches += 1;
        if let Some(vc) = g.vcoprocs.get_mut(&v) {
            vc.stats.switches += 1;
        }
    }
    let vc = g.vcoprocs.get_mut(&v);
    let waited = vc.and_then(|vc| {
        let waited = now.saturating_sub(vc.woken_ns.take()?);
        vc.stats.run_delay_ns += waited;
        vc.stats.run_delay_max_ns = vc.stats.run_delay_max_ns.max(waited);
        Some(waited)
    });
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
        },
        StopReason::Preempted => {
            vc.stats.preemptions += 1;
            SliceEnd {
                runnable: true,
                preempted: true,
            }
        }
        // A doorbell that arrived while it was still running counts: it
        // stays runnable instead of parking.
        StopReason::Waiting if control.pending() > 0 => SliceEnd {
            runnable: true,
            preempted: false,
        },
        StopReason::Waiting => {
            vc.stats.waits += 1;
            SliceEnd {
                runnable: false,
                preempted: false,
            }
        }
        StopReason::Exited(code) => {
            vc.exit_code = Some(*code);
            SliceEnd {
                runnable: false,
                preempted: false,
            }
        }
        StopReason::Fault(f) => {
            fault = Some(f.clone());
            SliceEnd {
                runnable: false,
                preempted: false,
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
        g.record_fault(FaultRecord {
            vcoproc: v,
            at_ns: now,
            fault,
        });
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
    g.policy.block(id);
    g.record_fault(FaultRecord {
        vcoproc: id,
        at_ns: now,
        fault: DeviceFault {
            addr: Some(p.addr),
            access: p.access,
            pc: None,
            reason,
        },
    });
    control.kick();
}
