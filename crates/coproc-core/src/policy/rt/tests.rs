// Casts of values the test itself chose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

//! Tests of `rt`, most of them on the policy test kit.

use super::*;
use crate::policy::testkit::{figure, kv, pick_at as pick, Client, Demand, Sim, MS, RUN, WAITS};

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
            waiting: false,
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
            waiting: false,
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
