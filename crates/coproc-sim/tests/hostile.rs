//! Hostile and random workloads: never a panic, and every run's `ran` is
//! exactly the virtual time that passed.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use coproc_core::device::{ContextSpec, Device, StopReason, SwitchOutcome, VirtualClock};
use coproc_core::{ControlBlock, VcoprocId};
use coproc_sim::{Job, Periodic, Sim, SimConfig, Workload, MAX_NS};
use proptest::prelude::*;
use std::sync::Arc;
use std::time::Duration;

/// Small values, boundary values and anything at all.
fn num() -> impl Strategy<Value = u64> {
    prop_oneof![
        12 => 0..5_000u64,
        1 => Just(MAX_NS),
        1 => Just(MAX_NS + 1),
        1 => Just(u64::MAX),
        1 => any::<u64>()
    ]
}

fn job() -> impl Strategy<Value = Job> {
    (
        num(),
        num(),
        proptest::option::of((num(), num())),
        proptest::option::of(num()),
        proptest::option::of(num()),
    )
        .prop_map(
            |(at_ns, len_ns, nonpreempt, fault_at_ns, deadline_ns)| Job {
                at_ns,
                len_ns,
                nonpreempt,
                fault_at_ns,
                deadline_ns,
            },
        )
}

fn workload() -> impl Strategy<Value = Workload> {
    (
        proptest::collection::vec(job(), 0..6),
        proptest::option::of((num(), num(), num(), proptest::option::of(num()))),
        any::<bool>(),
        proptest::option::of(num()),
        any::<bool>(),
    )
        .prop_map(|(jobs, p, hog, hog_dispatch_ns, exit_when_done)| Workload {
            jobs,
            periodic: p.map(|(first_ns, period_ns, len_ns, count)| Periodic {
                first_ns,
                period_ns,
                len_ns,
                count,
            }),
            hog,
            hog_dispatch_ns,
            exit_when_done,
        })
}

#[derive(Debug, Clone)]
enum Op {
    Run(u64),
    Preempt,
    Reset,
    Idle(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..10_000_000u64).prop_map(Op::Run),
        Just(Op::Preempt),
        Just(Op::Reset),
        (0..10_000_000u64).prop_map(Op::Idle),
    ]
}

proptest! {
    #[test]
    fn any_bytes_are_refused_or_accepted_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Workload::from_image(&bytes);
    }

    #[test]
    fn random_workloads_run_exactly(
        w in workload(),
        dispatch_only in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..30),
    ) {
        let sim = Sim::new(SimConfig { dispatch_only, ..SimConfig::default() });
        let mut dev = sim.device().unwrap();
        // Never parks: this thread drives the device (idle is always bounded).
        sim.set_horizon(u64::MAX);
        let id = VcoprocId(1);
        dev.create_context(ContextSpec { id, domain: coproc_core::DomainId(1), control: Arc::new(ControlBlock::default()) }).unwrap();
        if dev.load_firmware(id, &w.to_image()).is_err() {
            prop_assert!(w.validate().is_err());
            return Ok(());
        }
        prop_assert_eq!(dev.switch(Some(id)), SwitchOutcome::Done);
        let h = dev.preempt_handle();
        let mut total = 0u64;
        let mut faults = 0u64;
        for op in ops {
            match op {
                Op::Run(b) => {
                    let before = sim.now_ns();
                    let out = dev.run(Duration::from_nanos(b));
                    let ran = out.ran.as_nanos() as u64;
                    prop_assert_eq!(sim.now_ns() - before, ran);
                    // Only a non-preemptible stretch runs past the budget.
                    if ran > b {
                        prop_assert!(dispatch_only || w.jobs.iter().any(|j| j.nonpreempt.is_some()), "{:?}", out);
                    }
                    if let StopReason::Fault(_) = out.stop {
                        faults += 1;
                    }
                    total += ran;
                }
                Op::Preempt => h.0.preempt(),
                Op::Reset => dev.reset_context(id).unwrap(),
                Op::Idle(d) => sim.idle(Some(sim.now_ns().saturating_add(d))),
            }
        }
        let r = sim.context(id).unwrap();
        prop_assert_eq!((r.ran_ns, r.faults), (total, faults));
    }
}

/// Jobs of the longest allowed length back to back run virtual time up to
/// its end (u64::MAX ns); runs there return instead of spinning in place.
/// Found by `random_workloads_run_exactly` (PROPTEST_RNG_SEED=27).
#[test]
fn virtual_time_runs_out_without_a_hang() {
    let w = Workload {
        jobs: vec![],
        periodic: Some(Periodic {
            first_ns: 3574,
            period_ns: 3501,
            len_ns: MAX_NS,
            count: None,
        }),
        hog: true,
        hog_dispatch_ns: None,
        exit_when_done: false,
    };
    let sim = Sim::new(SimConfig {
        dispatch_only: true,
        ..SimConfig::default()
    });
    let mut dev = sim.device().unwrap();
    sim.set_horizon(u64::MAX);
    let id = VcoprocId(1);
    dev.create_context(ContextSpec {
        id,
        domain: coproc_core::DomainId(1),
        control: Arc::new(ControlBlock::default()),
    })
    .unwrap();
    dev.load_firmware(id, &w.to_image()).unwrap();
    assert_eq!(dev.switch(Some(id)), SwitchOutcome::Done);
    let mut total = 0u64;
    for _ in 0..8 {
        sim.idle(Some(sim.now_ns().saturating_add(5_000)));
        let before = sim.now_ns();
        let out = dev.run(Duration::from_millis(5));
        let ran = out.ran.as_nanos() as u64;
        assert_eq!(sim.now_ns() - before, ran);
        total = total.saturating_add(ran);
    }
    assert_eq!(sim.now_ns(), u64::MAX, "time ran out");
    let r = sim.context(id).unwrap();
    assert_eq!(r.ran_ns, total);
}
