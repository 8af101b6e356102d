//! A real pcoproc with round robin on the simulated device: exact,
//! deterministic schedules in virtual time (no sleeps, no host timing).

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use coproc_core::device::{DeviceError, SwitchOutcome};
use coproc_core::fault::FaultReason;
use coproc_core::pcoproc::TraceEntry;
use coproc_core::policy::{RoundRobin, SchedParams};
use coproc_core::state::VcoprocState;
use coproc_core::{CoreError, DomainId, Pcoproc, VcoprocHandle};
use coproc_sim::{Job, Sim, SimConfig, SimError, SwitchRecord, Workload};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

#[allow(clippy::unnecessary_box_returns)] // what Pcoproc::spawn takes
fn rr(slice_ns: u64) -> Box<RoundRobin> {
    Box::new(RoundRobin::new(Duration::from_nanos(slice_ns)).unwrap())
}

fn spawn(sim: &Sim) -> Arc<Pcoproc> {
    let p = sim.spawn("sim0", rr(MS)).unwrap();
    p.set_trace(100_000);
    p
}

fn vcoproc(p: &Arc<Pcoproc>, w: &Workload) -> VcoprocHandle {
    let v = p
        .create_vcoproc(DomainId(1), SchedParams::default())
        .unwrap();
    v.load_firmware("w", &w.to_image()).unwrap();
    v
}

/// Start `vs` together, on the runner thread, at virtual time `t`.
fn start_at(sim: &Sim, t: u64, vs: &[&VcoprocHandle]) {
    let vs: Vec<VcoprocHandle> = vs.iter().map(|&v| v.clone()).collect();
    sim.at(
        t,
        Box::new(move || {
            for v in vs {
                v.start().unwrap();
            }
        }),
    );
}

/// Device time `v` ran, the run in progress included. The pcoproc's
/// snapshot says exactly that: what it charged for the runs the device
/// returned, plus the run in progress (a notification answered mid-slice
/// is followed by statistics that count the time that led to it).
fn ran(sim: &Sim, v: &VcoprocHandle) -> u64 {
    let r = sim.context(v.id()).unwrap();
    assert_eq!(
        r.ran_ns + r.in_run_ns,
        v.info().unwrap().stats.run_ns,
        "{v:?}"
    );
    r.ran_ns + r.in_run_ns
}

/// Two hogs under rr(1 ms) for one second.
fn two_hogs(cfg: SimConfig) -> (Vec<TraceEntry>, Vec<SwitchRecord>, u64, u64) {
    let sim = Sim::new(cfg);
    let p = spawn(&sim);
    let a = vcoproc(&p, &Workload::hog());
    let b = vcoproc(&p, &Workload::hog());
    start_at(&sim, 0, &[&a, &b]);
    sim.run_until(S).unwrap();
    let out = (p.trace(), sim.switch_log(), ran(&sim, &a), ran(&sim, &b));
    p.shutdown();
    out
}

#[test]
fn two_hogs_share_exactly_and_deterministically() {
    let (trace, switches, a, b) = two_hogs(SimConfig::default());
    assert_eq!((a, b), (S / 2, S / 2));
    assert_eq!(trace.len(), 1000);
    for (i, e) in trace.iter().enumerate() {
        let i = i as u64;
        assert_eq!(u64::from(e.vcoproc.0), 1 + i % 2, "alternating");
        assert_eq!((e.start_ns, e.ran_ns, e.budget_ns), (i * MS, MS, MS));
        assert!(e.runnable_after && !e.preempted);
    }
    assert_eq!(switches.len(), 1001, "one per slice, and the one at 1 s");
    assert_eq!(switches[1].at_ns, MS);
    // Identical the second time.
    assert_eq!(two_hogs(SimConfig::default()), (trace, switches, a, b));
}

#[test]
fn switch_cost_is_virtual_time_outside_the_slices() {
    let cfg = SimConfig {
        switch_ns: 10 * US,
        ..SimConfig::default()
    };
    let (trace, switches, a, b) = two_hogs(cfg);
    // Every slice pays 10 us to get on the device.
    assert_eq!(trace[1].start_ns, MS + 20 * US);
    assert_eq!(switches[0].at_ns, 10 * US);
    assert_eq!(a + b + switches.len() as u64 * 10 * US, S);
}

#[test]
fn periodic_interactive_against_a_hog_meets_every_deadline() {
    let sim = Sim::new(SimConfig::default());
    let p = spawn(&sim);
    let mut w = Workload::periodic(0, 10 * MS, MS, Some(50));
    w.exit_when_done = true;
    let i = vcoproc(&p, &w);
    let h = vcoproc(&p, &Workload::hog());
    start_at(&sim, 0, &[&i, &h]);
    sim.run_until(S).unwrap();
    let r = sim.context(i.id()).unwrap();
    assert_eq!((r.jobs_done, r.pending, r.completed.len()), (50, 0, 50));
    for (k, j) in r.completed.iter().enumerate() {
        // Each arrival preempts the hog at once: it runs straight through.
        assert_eq!(j.arrival_ns, k as u64 * 10 * MS);
        assert_eq!((j.start_ns, j.response_ns()), (j.arrival_ns, MS));
        assert!(j.met_deadline());
    }
    assert_eq!(r.wakeups, 49);
    assert!(r.exited);
    assert_eq!(i.state().unwrap(), VcoprocState::Stopped);
    let st = i.info().unwrap().stats;
    assert_eq!((st.run_delay_max_ns, st.waits), (0, 49));
    assert_eq!(ran(&sim, &i), 50 * MS);
    assert_eq!(ran(&sim, &h), S - 50 * MS);
    p.shutdown();
}

#[test]
fn dispatch_only_hog_delays_the_interactive_to_a_dispatch_end() {
    let cfg = SimConfig {
        dispatch_only: true,
        ..SimConfig::default()
    };
    let sim = Sim::new(cfg);
    let p = spawn(&sim);
    let i = vcoproc(&p, &Workload::periodic(MS / 2, 10 * MS, MS, Some(20)));
    let hog = Workload {
        hog_dispatch_ns: Some(300 * US),
        ..Workload::hog()
    };
    let h = vcoproc(&p, &hog);
    // The interactive one runs first, finds nothing and waits: its
    // arrivals then wake it and preempt the hog.
    start_at(&sim, 0, &[&i, &h]);
    sim.run_until(S / 2).unwrap();
    let r = sim.context(i.id()).unwrap();
    assert_eq!(r.jobs_done, 20);
    // The first arrival (0.5 ms) preempts the hog at the end of its second
    // dispatch (0.6 ms); having run less than a slice, rr gives the hog the
    // rest of it (0.4 ms) at the head, and that dispatch overruns to 1.2 ms.
    assert_eq!(r.completed[0].start_ns, 1200 * US);
    // Later the hog has used its slice: the wait is the rest of a dispatch.
    for j in &r.completed[1..] {
        let delay = j.start_ns - j.arrival_ns;
        assert!(delay < 300 * US, "{j:?}");
        assert_eq!(j.response_ns(), delay + MS);
    }
    ran(&sim, &i);
    ran(&sim, &h);
    p.shutdown();
}

#[test]
fn hook_runs_at_its_instant_and_may_change_the_policy() {
    let sim = Sim::new(SimConfig::default());
    let p = spawn(&sim);
    let a = vcoproc(&p, &Workload::hog());
    let b = vcoproc(&p, &Workload::hog());
    start_at(&sim, 0, &[&a, &b]);
    let at = Arc::new(AtomicU64::new(u64::MAX));
    let (at2, s, weak) = (at.clone(), sim.clone(), Arc::downgrade(&p));
    sim.at(
        500 * MS,
        Box::new(move || {
            at2.store(s.now_ns(), Ordering::SeqCst);
            if let Some(p) = weak.upgrade() {
                p.set_policy(rr(2 * MS)).unwrap();
                assert_eq!(p.sched_info().params[0].1, "2000");
            }
        }),
    );
    sim.run_until(S).unwrap();
    assert_eq!(at.load(Ordering::SeqCst), 500 * MS);
    let trace = p.trace();
    for e in &trace {
        let slice = if e.start_ns < 500 * MS { MS } else { 2 * MS };
        assert_eq!((e.budget_ns, e.ran_ns), (slice, slice), "{e:?}");
    }
    assert_eq!(trace.len(), 500 + 250);
    assert_eq!((ran(&sim, &a), ran(&sim, &b)), (S / 2, S / 2));
    p.shutdown();
}

#[test]
fn retry_after_keeps_the_current_context_for_that_long() {
    let sim = Sim::new(SimConfig::default());
    let p = spawn(&sim);
    let a = vcoproc(&p, &Workload::hog());
    let b = vcoproc(&p, &Workload::hog());
    sim.answer_switch(
        b.id(),
        SwitchOutcome::RetryAfter(Duration::from_micros(500)),
    );
    start_at(&sim, 0, &[&a, &b]);
    sim.run_until(10 * MS).unwrap();
    let t = p.trace();
    let key = |e: &TraceEntry| (e.vcoproc, e.start_ns, e.ran_ns, e.budget_ns);
    assert_eq!(key(&t[0]), (a.id(), 0, MS, MS));
    assert_eq!(key(&t[1]), (a.id(), MS, 500 * US, 500 * US));
    assert_eq!(key(&t[2]), (b.id(), 1500 * US, MS, MS));
    let log = sim.switch_log();
    assert_eq!(
        (log[1].from, log[1].to, log[1].at_ns),
        (Some(a.id()), Some(b.id()), 1500 * US)
    );
    assert_eq!(ran(&sim, &a) + ran(&sim, &b), 10 * MS);
    p.shutdown();
}

#[test]
fn failed_switch_faults_the_guilty_one_and_the_other_keeps_running() {
    let sim = Sim::new(SimConfig::default());
    let p = spawn(&sim);
    let a = vcoproc(&p, &Workload::hog());
    let b = vcoproc(&p, &Workload::hog());
    let failed = SwitchOutcome::Failed {
        guilty: b.id(),
        reason: "device hung".into(),
    };
    sim.answer_switch(b.id(), failed);
    start_at(&sim, 0, &[&a, &b]);
    sim.run_until(S).unwrap();
    assert_eq!(b.state().unwrap(), VcoprocState::Faulted);
    let f = b.faults().unwrap().pop().unwrap();
    assert_eq!(f.at_ns, MS);
    assert_eq!(
        f.fault.reason,
        FaultReason::SwitchFailed("device hung".into())
    );
    assert_eq!(sim.context(b.id()).unwrap().resets, 1);
    assert_eq!((ran(&sim, &a), ran(&sim, &b)), (S, 0));
    assert_eq!(a.info().unwrap().stats.faults, 0);
    // Reset and start: b is back, in rotation with a.
    b.reset().unwrap();
    b.start().unwrap();
    sim.run_until(S + 10 * MS).unwrap();
    assert!(ran(&sim, &b) >= 4 * MS);
    p.shutdown();
}

#[test]
fn commands_while_parked_take_effect_at_that_instant() {
    let sim = Sim::new(SimConfig::default());
    let p = spawn(&sim);
    let a = vcoproc(&p, &Workload::hog());
    let b = vcoproc(&p, &Workload::hog());
    start_at(&sim, 0, &[&a, &b]);
    sim.run_until(5 * MS).unwrap();
    b.stop().unwrap();
    sim.run_until(5 * MS).unwrap();
    assert_eq!(sim.now_ns(), 5 * MS);
    sim.run_until(10 * MS).unwrap();
    assert_eq!((ran(&sim, &a), ran(&sim, &b)), (8 * MS, 2 * MS));
    // Destroyed contexts are forgotten by the sim too.
    b.destroy().unwrap();
    sim.run_until(10 * MS).unwrap();
    assert!(sim.context(b.id()).is_none());
    assert_eq!(sim.contexts(), [a.id()]);
    p.shutdown();
}

#[test]
fn hostile_workloads_are_refused_as_bad_firmware() {
    let sim = Sim::new(SimConfig::default());
    let p = spawn(&sim);
    let v = p
        .create_vcoproc(DomainId(1), SchedParams::default())
        .unwrap();
    let huge = format!("{{\"jobs\": [{{\"len_ns\": {}}}]}}", u128::MAX);
    let bad: Vec<&[u8]> = vec![
        b"",
        b"\x00\x01\x02",
        b"{\"periodic\": {\"period_ns\": 0, \"len_ns\": 1}}",
        b"{\"periodic\": {\"period_ns\": 1000, \"len_ns\": 1, \"count\": -5}}",
        b"{\"jobs\": [{\"len_ns\": 5, \"nonpreempt\": [18446744073709551615, 2]}]}",
        b"{\"hog\": true, \"extra\": 1}",
        huge.as_bytes(),
    ];
    for img in bad {
        match v.load_firmware("x", img) {
            Err(CoreError::Device(DeviceError::BadFirmware(_))) => {}
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(img)),
        }
    }
    assert_eq!(v.state().unwrap(), VcoprocState::Created);
    // An endless periodic with a huge count is accepted and costs nothing.
    let w = Workload::periodic(0, 1000, 1000, Some(u64::MAX));
    v.load_firmware("ok", &w.to_image()).unwrap();
    v.start().unwrap();
    sim.run_until(10 * MS).unwrap();
    assert_eq!(ran(&sim, &v), 10 * MS);
    p.shutdown();
}

#[test]
fn shutdown_while_parked_returns() {
    // Parked in idle, with nothing at all.
    let sim = Sim::new(SimConfig::default());
    let p = spawn(&sim);
    sim.run_until(3 * MS).unwrap();
    p.shutdown();
    assert!(matches!(sim.run_until(4 * MS), Err(SimError::Detached)));

    // Parked in a run, inside a non-preemptible section.
    let sim = Sim::new(SimConfig::default());
    let p = spawn(&sim);
    let j = Job {
        at_ns: 0,
        len_ns: 100 * MS,
        nonpreempt: Some((0, 100 * MS)),
        ..Job::default()
    };
    let a = vcoproc(&p, &Workload::jobs(vec![j]));
    let b = vcoproc(&p, &Workload::hog());
    start_at(&sim, 0, &[&a, &b]);
    sim.run_until(5 * MS).unwrap();
    p.shutdown();
    assert!(sim.contexts().is_empty());

    // Parked in the middle of a costly switch.
    let cfg = SimConfig {
        switch_ns: 100 * US,
        ..SimConfig::default()
    };
    let sim = Sim::new(cfg);
    let p = spawn(&sim);
    let a = vcoproc(&p, &Workload::hog());
    start_at(&sim, 0, &[&a]);
    sim.run_until(50 * US).unwrap();
    assert!(sim.switch_log().is_empty());
    p.shutdown();
}

#[test]
fn a_command_during_a_costly_switch_abandons_it() {
    let cfg = SimConfig {
        switch_ns: 100 * US,
        ..SimConfig::default()
    };
    let sim = Sim::new(cfg);
    let p = spawn(&sim);
    let a = vcoproc(&p, &Workload::hog());
    start_at(&sim, 0, &[&a]);
    sim.run_until(50 * US).unwrap();
    // A command: the switch is abandoned at 50 us and tried again.
    let b = vcoproc(&p, &Workload::hog());
    sim.run_until(50 * US).unwrap();
    assert!(sim.switch_log().is_empty());
    sim.run_until(MS).unwrap();
    let log = sim.switch_log();
    assert_eq!((log[0].to, log[0].at_ns), (Some(a.id()), 150 * US));
    assert_eq!(ran(&sim, &a), MS - 150 * US);
    assert_eq!(ran(&sim, &b), 0);
    p.shutdown();
}
