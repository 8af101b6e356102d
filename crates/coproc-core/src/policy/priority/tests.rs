// Casts of values the test itself chose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

//! Tests of `priority`, most of them on the policy test kit.

use super::*;
use crate::policy::testkit::{figure, Demand, Sim, MS, PREEMPTED, RUN, US, WAITS};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn prio(p: i32) -> SchedParams {
    SchedParams {
        priority: p,
        ..SchedParams::default()
    }
}

fn pick(p: &mut Priority) -> Option<(u32, Duration)> {
    match p.pick(0) {
        Decision::Run { vcoproc, budget } => Some((vcoproc.0, budget)),
        Decision::Idle(_) => None,
    }
}

#[test]
fn higher_priority_wake_preempts_and_runs_next() {
    let mut p = Priority::new(ms(5)).unwrap();
    p.attach(VcoprocId(1), &prio(0)).unwrap();
    p.attach(VcoprocId(2), &prio(0)).unwrap();
    p.attach(VcoprocId(9), &prio(10)).unwrap();
    p.wake(VcoprocId(1), 0);
    p.wake(VcoprocId(2), 0);
    assert_eq!(pick(&mut p), Some((1, ms(5))));
    assert_eq!(p.wake(VcoprocId(9), 0), WakeAction::Preempt);
    p.charge(VcoprocId(1), ms(2), 0, PREEMPTED);
    assert_eq!(pick(&mut p).unwrap().0, 9);
}

#[test]
fn rotates_within_a_level_and_never_runs_a_lower_one() {
    let mut p = Priority::new(ms(1)).unwrap();
    for i in 1..=3 {
        p.attach(VcoprocId(i), &prio(5)).unwrap();
        p.wake(VcoprocId(i), 0);
    }
    p.attach(VcoprocId(4), &prio(1)).unwrap();
    p.wake(VcoprocId(4), 0);
    let mut order = vec![];
    for _ in 0..9 {
        let (v, b) = pick(&mut p).unwrap();
        assert_eq!(b, ms(1), "others of its level wait: one slice");
        order.push(v);
        p.charge(VcoprocId(v), ms(1), 0, RUN);
    }
    assert_eq!(order, [1, 2, 3, 1, 2, 3, 1, 2, 3]);
    // The level empties: the lower one runs, extended as it is alone.
    for i in 1..=3 {
        p.block(VcoprocId(i));
    }
    assert_eq!(pick(&mut p), Some((4, ms(100))));
    assert_eq!(figure(&p, 1, "picks"), 3);
    assert_eq!(figure(&p, 4, "priority"), 1);
}

#[test]
fn interactive_high_priority_never_waits_behind_a_low_hog() {
    // One low hog (extended budget) and two (plain slices).
    for hogs in 1..=2 {
        interactive_vs_hogs(hogs);
    }
}

fn interactive_vs_hogs(hogs: u32) {
    let mut sim = Sim::new(Priority::new(ms(5)).unwrap());
    for v in 1..=hogs {
        sim.add(v, &prio(0), Demand::Hog);
    }
    sim.add(
        9,
        &prio(7),
        Demand::Periodic {
            job: 700 * US,
            period: 3 * MS + 300 * US,
            first: 1234 * US,
        },
    );
    sim.run_until(1_000 * MS);
    // The last slice may end past the second.
    let end = sim.now;
    let wakes: Vec<_> = sim.wakes.iter().filter(|w| w.0 == 9).collect();
    assert_eq!(
        wakes.iter().filter(|w| w.1 < 1_000 * MS).count(),
        303,
        "a job every 3.3 ms from 1.234 ms"
    );
    for &&(_, at, a) in &wakes {
        assert_eq!(a, WakeAction::Preempt, "a low hog always runs");
        if at + 700 * US > end {
            continue;
        }
        // Its job starts the moment it is released and runs whole.
        let s = sim
            .slices
            .iter()
            .find(|s| s.v == 9 && s.start >= at)
            .unwrap();
        assert_eq!((s.start, s.ran), (at, 700 * US));
    }
    assert_eq!(sim.idle, 0);
    // The hogs share the rest equally (within a slice).
    let (a, b) = (sim.ran(1), sim.ran(2));
    assert_eq!(a + b + sim.ran(9), end);
    if hogs == 1 {
        return;
    }
    assert!(a.abs_diff(b) <= 5 * MS, "{a} vs {b}");
    // A preempted hog resumes with the rest of its slice at the head.
    assert!(sim.slices.iter().filter(|s| s.preempted).count() > 200);
    for w in sim.slices.windows(3) {
        if w[0].preempted {
            assert_eq!(w[1].v, 9);
            assert_eq!(w[2].v, w[0].v, "the preempted one goes on");
            assert_eq!(w[2].budget, w[0].budget - w[0].ran);
        }
    }
}

#[test]
fn preempted_one_keeps_the_rest_of_its_slice() {
    let mut p = Priority::new(ms(5)).unwrap();
    for (v, pr) in [(1, 0), (2, 0), (9, 3)] {
        p.attach(VcoprocId(v), &prio(pr)).unwrap();
    }
    p.wake(VcoprocId(1), 0);
    p.wake(VcoprocId(2), 0);
    assert_eq!(pick(&mut p), Some((1, ms(5))));
    assert_eq!(p.wake(VcoprocId(9), 0), WakeAction::Preempt);
    p.charge(VcoprocId(1), ms(2), 0, PREEMPTED);
    assert_eq!(figure(&p, 1, "slice_left_us"), 3000);
    assert_eq!(pick(&mut p).unwrap().0, 9);
    p.charge(VcoprocId(9), ms(1), 0, WAITS);
    assert_eq!(pick(&mut p), Some((1, ms(3))));
    assert_eq!(figure(&p, 1, "slice_left_us"), -1);
    p.charge(VcoprocId(1), ms(3), 0, RUN);
    assert_eq!(pick(&mut p), Some((2, ms(5))));
    // Preempted but runnable without a preempt request: the tail.
    p.charge(VcoprocId(2), ms(1), 0, RUN);
    assert_eq!(pick(&mut p), Some((1, ms(5))));
}

#[test]
fn lower_wake_never_preempts_equal_only_an_extended_one() {
    let mut p = Priority::new(ms(5)).unwrap();
    for (v, pr) in [(1, 5), (2, 5), (3, 1), (4, 5)] {
        p.attach(VcoprocId(v), &prio(pr)).unwrap();
    }
    p.wake(VcoprocId(1), 0);
    // Alone at the top: extended.
    assert_eq!(pick(&mut p), Some((1, ms(500))));
    assert_eq!(p.wake(VcoprocId(3), 0), WakeAction::None, "lower");
    assert_eq!(
        p.wake(VcoprocId(2), 0),
        WakeAction::Preempt,
        "equal, extended"
    );
    // The extension is over: another equal one waits its turn.
    assert_eq!(p.wake(VcoprocId(4), 0), WakeAction::None);
    p.charge(VcoprocId(1), ms(1), 0, PREEMPTED);
    // The rest of one slice at the head, not of the extension.
    assert_eq!(pick(&mut p), Some((1, ms(4))));
    p.charge(VcoprocId(1), ms(4), 0, RUN);
    assert_eq!(pick(&mut p), Some((2, ms(5))));
    p.charge(VcoprocId(2), ms(5), 0, WAITS);
    assert_eq!(pick(&mut p), Some((4, ms(5))));
    assert_eq!(
        p.wake(VcoprocId(2), 0),
        WakeAction::None,
        "equal, not extended"
    );
}

#[test]
fn priority_change_takes_effect_at_the_next_pick() {
    let mut p = Priority::new(ms(5)).unwrap();
    for v in 1..=3 {
        p.attach(VcoprocId(v), &prio(0)).unwrap();
        p.wake(VcoprocId(v), 0);
    }
    assert_eq!(pick(&mut p).unwrap().0, 1);
    // Raising a queued one re-keys it, but does not cut the slice.
    p.set_params(VcoprocId(3), &prio(4)).unwrap();
    assert_eq!(figure(&p, 3, "priority"), 4);
    p.charge(VcoprocId(1), ms(5), 0, RUN);
    assert_eq!(pick(&mut p), Some((3, ms(500))), "alone at the top");
    p.charge(VcoprocId(3), ms(5), 0, RUN);
    // Lowering it sends it below the others.
    p.set_params(VcoprocId(3), &prio(-1)).unwrap();
    assert_eq!(pick(&mut p).unwrap().0, 2);
    p.charge(VcoprocId(2), ms(5), 0, RUN);
    assert_eq!(pick(&mut p).unwrap().0, 1);
    // The running one's priority counts for the next wake-up.
    p.set_params(VcoprocId(1), &prio(-5)).unwrap();
    p.charge(VcoprocId(1), ms(5), 0, WAITS);
    assert_eq!(pick(&mut p).unwrap().0, 2);
    p.set_params(VcoprocId(2), &prio(-9)).unwrap();
    assert_eq!(p.wake(VcoprocId(1), 0), WakeAction::Preempt);
    assert!(p.set_params(VcoprocId(77), &prio(1)).is_err());
    let bad = SchedParams {
        weight: 0,
        ..SchedParams::default()
    };
    assert!(p.set_params(VcoprocId(1), &bad).is_err());
    assert!(p.attach(VcoprocId(5), &bad).is_err());
}

#[test]
fn odd_calls_are_harmless() {
    let mut p = Priority::new(ms(1)).unwrap();
    assert_eq!(p.pick(0), Decision::Idle(None));
    assert_eq!(p.wake(VcoprocId(1), 0), WakeAction::None);
    p.block(VcoprocId(1));
    p.detach(VcoprocId(1));
    p.charge(VcoprocId(1), ms(1), 0, RUN);
    p.attach(VcoprocId(1), &prio(0)).unwrap();
    // Charged without a pick (policy switched mid-slice): queued.
    p.charge(VcoprocId(1), Duration::MAX, u64::MAX, PREEMPTED);
    assert!(p.standings()[0].queued);
    assert_eq!(p.wake(VcoprocId(1), 0), WakeAction::None);
    assert_eq!(pick(&mut p), Some((1, ms(100))));
    // Detached while running: its charge is ignored.
    p.detach(VcoprocId(1));
    p.charge(VcoprocId(1), ms(1), 0, RUN);
    assert_eq!(p.pick(0), Decision::Idle(None));
    assert!(p.standings().is_empty());
    // Extreme priorities.
    p.attach(VcoprocId(2), &prio(i32::MIN)).unwrap();
    p.attach(VcoprocId(3), &prio(i32::MAX)).unwrap();
    p.wake(VcoprocId(2), 0);
    assert_eq!(pick(&mut p).unwrap().0, 2);
    assert_eq!(p.wake(VcoprocId(3), 0), WakeAction::Preempt);
}

#[test]
fn parameters() {
    let kv = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    let p = Priority::from_params(&[]).unwrap();
    assert_eq!(p.slice(), Priority::DEFAULT_SLICE);
    assert_eq!(p.describe(), vec![("slice_us".into(), "5000".into())]);
    assert_eq!(p.name(), "priority");
    let p = Priority::from_params(&kv("slice_us", "50")).unwrap();
    assert_eq!(p.slice(), Duration::from_micros(50));
    assert!(Priority::from_params(&kv("slice_us", "49")).is_err());
    assert!(Priority::from_params(&kv("slice_us", "10000001")).is_err());
    assert!(Priority::from_params(&kv("slice_us", "x")).is_err());
    assert!(Priority::from_params(&kv("priority", "1")).is_err());
    assert!(super::super::build("priority", &kv("slice_us", "2000")).is_ok());
}

#[test]
fn a_hundred_thousand_vcoprocs() {
    let mut p = Priority::new(ms(1)).unwrap();
    const N: u32 = 100_000;
    for i in 0..N {
        p.attach(VcoprocId(i), &prio((i % 10) as i32)).unwrap();
        p.wake(VcoprocId(i), 0);
    }
    // Only the top level (i % 10 == 9) runs, in order, round robin.
    let mut next = 9;
    for round in 0..5_000u32 {
        let (v, _) = pick(&mut p).unwrap();
        assert_eq!(v, next);
        next = (next + 10) % N;
        let end = if round % 7 == 0 { PREEMPTED } else { RUN };
        p.charge(VcoprocId(v), ms(1), 0, end);
        if end == PREEMPTED {
            // Kept at the head with the rest: zero left, so the tail.
            assert_eq!(pick(&mut p).unwrap().0, next);
            p.charge(VcoprocId(next), ms(1), 0, RUN);
            next = (next + 10) % N;
        }
    }
    for i in (0..N).step_by(10) {
        p.block(VcoprocId(i + 9));
    }
    assert_eq!(pick(&mut p).unwrap().0, 8);
    assert_eq!(p.standings().len(), N as usize);
}
