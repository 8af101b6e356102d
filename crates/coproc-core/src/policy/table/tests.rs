// Casts of values the test itself chose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

//! Tests of `table`, most of them on the policy test kit.

use super::*;
use crate::policy::testkit::{figure, kv, Demand, Sim, MS, PREEMPTED, RUN, US};

/// Frame 10 ms: v1 0..2 ms, v2 2..7 ms, slack 7..10 ms.
fn ab(fill: &str) -> Table {
    Table::from_params(&kv(&[
        ("frame_us", "10000"),
        ("window", "1:0:2000"),
        ("window", "v2:2000:5000"),
        ("fill", fill),
    ]))
    .unwrap()
}

fn run_of(d: Decision) -> Option<(u32, u64)> {
    match d {
        Decision::Run { vcoproc, budget } => Some((vcoproc.0, budget.as_nanos() as u64)),
        Decision::Idle(_) => None,
    }
}

/// Every slice of `v` starts at `epoch + k * 10 ms + offset` (k =
/// 0..frames) and runs `len`.
fn assert_windows(sim: &Sim<Table>, v: u32, epoch: u64, offset: u64, len: u64, frames: u64) {
    let got: Vec<(u64, u64)> = sim.slices_of(v).iter().map(|s| (s.start, s.ran)).collect();
    let want: Vec<(u64, u64)> = (0..frames)
        .map(|k| (epoch + k * 10 * MS + offset, len))
        .collect();
    assert_eq!(got, want, "v{v}");
}

#[test]
fn windows_start_on_the_frame_grid_and_last_exactly() {
    // The epoch is the first clock reading, not zero.
    let epoch = 3 * MS + 123;
    let mut sim = Sim::starting_at(ab("idle"), epoch);
    sim.add(1, &SchedParams::default(), Demand::Hog);
    sim.add(2, &SchedParams::default(), Demand::Hog);
    sim.run_until(epoch + 1_000 * MS);
    assert_windows(&sim, 1, epoch, 0, 2 * MS, 100);
    assert_windows(&sim, 2, epoch, 2 * MS, 5 * MS, 100);
    assert_eq!(sim.ran(1), 200 * MS);
    assert_eq!(sim.ran(2), 500 * MS);
    assert_eq!(sim.idle, 300 * MS, "3 ms of slack per frame");
    assert_eq!(figure(&sim.policy, 1, "windows"), 1);
    assert_eq!(figure(&sim.policy, 2, "window_us"), 5000);
    assert_eq!(figure(&sim.policy, 2, "debt_us"), 0);
    assert_eq!(figure(&sim.policy, 1, "picks"), 100);
}

#[test]
fn fill_rr_gives_the_slack_to_a_third_vcoproc() {
    let epoch = 42;
    let mut sim = Sim::starting_at(ab("rr"), epoch);
    sim.add(1, &SchedParams::default(), Demand::Hog);
    sim.add(2, &SchedParams::default(), Demand::Hog);
    sim.add(3, &SchedParams::default(), Demand::Hog);
    sim.run_until(epoch + 1_000 * MS);
    assert_windows(&sim, 1, epoch, 0, 2 * MS, 100);
    assert_windows(&sim, 2, epoch, 2 * MS, 5 * MS, 100);
    // The owners just had their turn: the slack goes to the third.
    assert_windows(&sim, 3, epoch, 7 * MS, 3 * MS, 100);
    assert_eq!(sim.idle, 0);
    // With fill=idle the third never runs.
    let mut sim = Sim::starting_at(ab("idle"), epoch);
    for v in 1..=3 {
        sim.add(v, &SchedParams::default(), Demand::Hog);
    }
    sim.run_until(epoch + 1_000 * MS);
    assert_eq!(sim.ran(3), 0);
    assert_eq!(sim.idle, 300 * MS);
}

#[test]
fn an_absent_owner_leaves_its_window_idle() {
    let mut sim = Sim::starting_at(ab("idle"), 0);
    sim.add(1, &SchedParams::default(), Demand::Hog);
    sim.add(2, &SchedParams::default(), Demand::Off);
    sim.run_until(1_000 * MS);
    assert_windows(&sim, 1, 0, 0, 2 * MS, 100);
    assert_eq!(sim.idle, 800 * MS);
    // Unless slack is filled: then v1 fills v2's window and the gap.
    let mut sim = Sim::starting_at(ab("rr"), 0);
    sim.add(1, &SchedParams::default(), Demand::Hog);
    sim.add(2, &SchedParams::default(), Demand::Off);
    sim.run_until(1_000 * MS);
    assert_eq!(sim.idle, 0);
    let starts: Vec<u64> = sim.slices_of(1).iter().take(3).map(|s| s.start).collect();
    assert_eq!(starts, [0, 2 * MS, 7 * MS]);
    // A window of a vcoproc never attached stays idle too.
    let t = Table::new(
        Duration::from_millis(10),
        vec![
            Window {
                vcoproc: VcoprocId(1),
                offset: Duration::ZERO,
                len: Duration::from_millis(2),
            },
            Window {
                vcoproc: VcoprocId(99),
                offset: Duration::from_millis(2),
                len: Duration::from_millis(8),
            },
        ],
        Fill::Idle,
    )
    .unwrap();
    let mut sim = Sim::starting_at(t, 0);
    sim.add(1, &SchedParams::default(), Demand::Hog);
    sim.run_until(1_000 * MS);
    assert_windows(&sim, 1, 0, 0, 2 * MS, 100);
    assert_eq!(sim.idle, 800 * MS);
}

#[test]
fn an_owner_waking_in_its_window_preempts_a_filler() {
    // v1: a job of 500 us every 10 ms, released 300 us into its window;
    // v3 (no window) fills all slack.
    let mut sim = Sim::starting_at(ab("rr"), 0);
    sim.add(3, &SchedParams::default(), Demand::Hog);
    sim.add(
        1,
        &SchedParams::default(),
        Demand::Periodic {
            job: 500 * US,
            period: 10 * MS,
            first: 300 * US,
        },
    );
    sim.add(2, &SchedParams::default(), Demand::Off);
    sim.run_until(1_000 * MS);
    assert_windows(&sim, 1, 0, 300 * US, 500 * US, 100);
    assert!(sim
        .wakes
        .iter()
        .all(|&(v, _, a)| v == 1 && a == WakeAction::Preempt));
    assert_eq!(sim.ran(3), 1_000 * MS - 50 * MS);
    assert_eq!(sim.idle, 0);
    // The same by hand, and a non-owner's wake-up preempts nobody.
    let mut t = ab("rr");
    for v in 1..=4 {
        t.attach(VcoprocId(v), &SchedParams::default()).unwrap();
    }
    t.wake(VcoprocId(3), 0);
    assert_eq!(run_of(t.pick(0)), Some((3, 2 * MS)), "fills v1's window");
    assert_eq!(t.wake(VcoprocId(2), 100 * US), WakeAction::None);
    assert_eq!(t.wake(VcoprocId(4), 200 * US), WakeAction::None);
    assert_eq!(t.wake(VcoprocId(1), 500 * US), WakeAction::Preempt);
    t.charge(
        VcoprocId(3),
        Duration::from_micros(500),
        500 * US,
        PREEMPTED,
    );
    assert_eq!(run_of(t.pick(500 * US)), Some((1, 1_500 * US)));
    // With fill=idle, nothing runs to preempt: the wake-up just queues.
    let mut t = ab("idle");
    t.attach(VcoprocId(1), &SchedParams::default()).unwrap();
    t.attach(VcoprocId(3), &SchedParams::default()).unwrap();
    t.wake(VcoprocId(3), 0);
    assert_eq!(t.pick(0), Decision::Idle(Some(Duration::from_millis(2))));
    assert_eq!(t.wake(VcoprocId(1), 500 * US), WakeAction::None);
    assert_eq!(run_of(t.pick(500 * US)), Some((1, 1_500 * US)));
}

#[test]
fn overrun_is_debt_taken_from_the_next_window() {
    // v1 stops only between jobs: it runs 300 us past every budget.
    let mut sim = Sim::starting_at(ab("idle"), 0);
    sim.add(1, &SchedParams::default(), Demand::Hog).overrun = 300 * US;
    sim.add(2, &SchedParams::default(), Demand::Hog);
    sim.run_until(1_000 * MS);
    let s1 = sim.slices_of(1);
    let s2 = sim.slices_of(2);
    assert_eq!(s1.len(), 100);
    assert_eq!(s2.len(), 100);
    // Frame 0: v1 overruns into v2's window, which still ends on time.
    assert_eq!(
        (s1[0].start, s1[0].budget, s1[0].ran),
        (0, 2 * MS, 2_300 * US)
    );
    assert_eq!((s2[0].start, s2[0].ran), (2_300 * US, 4_700 * US));
    // Later frames: every window starts on time; v1's budget is short
    // by its debt, so with the overrun it ends at its window's end.
    for k in 1..100 {
        assert_eq!(
            (s1[k].start, s1[k].budget, s1[k].ran),
            (k as u64 * 10 * MS, 1_700 * US, 2 * MS)
        );
        assert_eq!(
            (s2[k].start, s2[k].ran),
            (k as u64 * 10 * MS + 2 * MS, 5 * MS)
        );
    }
    assert_eq!(figure(&sim.policy, 1, "debt_us"), 300);
    assert_eq!(figure(&sim.policy, 1, "overrun_us"), 100 * 300);
    assert_eq!(sim.ran(1), 200 * MS + 300 * US, "its windows and the debt");
}

#[test]
fn debt_longer_than_a_window_is_paid_over_several() {
    let mut t = Table::from_params(&kv(&[
        ("frame_us", "10000"),
        ("window", "1:0:2000"),
        ("fill", "rr"),
    ]))
    .unwrap();
    t.attach(VcoprocId(1), &SchedParams::default()).unwrap();
    t.wake(VcoprocId(1), 0);
    assert_eq!(run_of(t.pick(0)), Some((1, 2 * MS)));
    t.charge(VcoprocId(1), Duration::from_millis(7), 7 * MS, RUN);
    assert_eq!(figure(&t, 1, "debt_us"), 5000);
    // Slack outside any window is still filled by it...
    assert_eq!(run_of(t.pick(7 * MS)), Some((1, 3 * MS)));
    t.charge(VcoprocId(1), Duration::from_millis(3), 10 * MS, RUN);
    // ...but its own window pays the debt: 2 ms now, 2 ms next frame.
    assert_eq!(
        t.pick(10 * MS),
        Decision::Idle(Some(Duration::from_millis(10)))
    );
    assert_eq!(figure(&t, 1, "debt_us"), 3000);
    assert_eq!(run_of(t.pick(12 * MS)), Some((1, 5 * MS)), "slack");
    t.charge(VcoprocId(1), Duration::from_millis(5), 17 * MS, PREEMPTED);
    assert_eq!(run_of(t.pick(17 * MS)), Some((1, 3 * MS)));
    t.charge(VcoprocId(1), Duration::from_millis(3), 20 * MS, RUN);
    assert_eq!(
        t.pick(20 * MS),
        Decision::Idle(Some(Duration::from_millis(10)))
    );
    // Last 1 ms of debt: 1 ms of the window left.
    assert_eq!(run_of(t.pick(30 * MS)), Some((1, MS)));
    assert_eq!(figure(&t, 1, "debt_us"), 0);
    // Preempted in its window, it gets the same cut end back.
    t.charge(
        VcoprocId(1),
        Duration::from_micros(400),
        30 * MS + 400 * US,
        PREEMPTED,
    );
    assert_eq!(run_of(t.pick(30 * MS + 400 * US)), Some((1, 600 * US)));
    // Fill overruns are counted but are no debt.
    t.charge(VcoprocId(1), Duration::from_micros(600), 31 * MS, RUN);
    assert_eq!(run_of(t.pick(32 * MS)), Some((1, 5 * MS)));
    t.charge(VcoprocId(1), Duration::from_millis(6), 38 * MS, RUN);
    assert_eq!(figure(&t, 1, "debt_us"), 0);
    assert_eq!(figure(&t, 1, "overrun_us"), 5000 + 1000);
}

#[test]
fn window_edges() {
    // Adjacent windows; less than 1 us left of a window is none.
    let mut t = Table::from_params(&kv(&[
        ("frame_us", "10000"),
        ("window", "1:0:2000"),
        ("window", "2:2000:1000"),
    ]))
    .unwrap();
    for v in 1..=2 {
        t.attach(VcoprocId(v), &SchedParams::default()).unwrap();
    }
    t.wake(VcoprocId(1), 0);
    assert_eq!(run_of(t.pick(0)), Some((1, 2 * MS)));
    t.charge(
        VcoprocId(1),
        Duration::from_nanos(2 * MS - 500),
        2 * MS - 500,
        RUN,
    );
    assert_eq!(
        t.pick(2 * MS - 500),
        Decision::Idle(Some(Duration::from_nanos(500)))
    );
    assert_eq!(
        t.pick(2 * MS - 1_000),
        Decision::Run {
            vcoproc: VcoprocId(1),
            budget: Duration::from_micros(1),
        }
    );
    t.charge(VcoprocId(1), Duration::from_micros(1), 2 * MS, RUN);
    t.wake(VcoprocId(2), 2 * MS);
    assert_eq!(run_of(t.pick(2 * MS)), Some((2, MS)));
    t.charge(VcoprocId(2), Duration::from_millis(1), 3 * MS, RUN);
    // Past the last window: wait until the first one of the next frame.
    assert_eq!(
        t.pick(3 * MS),
        Decision::Idle(Some(Duration::from_millis(7)))
    );
    assert_eq!(run_of(t.pick(1_000 * MS + 2 * MS)), Some((2, MS)));
    // A clock behind the epoch counts as the epoch.
    let mut t = ab("idle");
    t.attach(VcoprocId(1), &SchedParams::default()).unwrap();
    t.wake(VcoprocId(1), 5 * MS);
    assert_eq!(run_of(t.pick(0)), Some((1, 2 * MS)));
    assert_eq!(run_of(t.pick(u64::MAX)).map(|r| r.0), None);
}

#[test]
fn several_windows_per_vcoproc_and_none() {
    let t = Table::from_params(&kv(&[
        ("frame_us", "1000"),
        ("window", "v7:500:100"),
        ("window", "7:0:100"),
        ("window", "8:200:50"),
        ("fill", "rr"),
    ]))
    .unwrap();
    let mut sim = Sim::starting_at(t, 0);
    sim.add(7, &SchedParams::default(), Demand::Hog);
    sim.add(8, &SchedParams::default(), Demand::Hog);
    sim.add(9, &SchedParams::default(), Demand::Hog);
    sim.run_until(100 * MS);
    assert_eq!(figure(&sim.policy, 7, "windows"), 2);
    assert_eq!(figure(&sim.policy, 7, "window_us"), 200);
    assert_eq!(figure(&sim.policy, 9, "windows"), 0);
    assert_eq!(sim.idle, 0);
    // Every window ran its owner, whole.
    for k in 0..100 {
        let at = |off: u64| sim.slices.iter().find(|s| s.start == k * MS + off).copied();
        assert_eq!(at(0).map(|s| (s.v, s.ran)), Some((7, 100 * US)));
        assert_eq!(at(200 * US).map(|s| (s.v, s.ran)), Some((8, 50 * US)));
        assert_eq!(at(500 * US).map(|s| (s.v, s.ran)), Some((7, 100 * US)));
    }
    // The one without a window only got slack, and a good part of it.
    assert!(sim.ran(9) > 20 * MS, "{}", sim.ran(9));
    assert_eq!(sim.ran(7) + sim.ran(8) + sim.ran(9), 100 * MS);
}

#[test]
fn parameters_and_invalid_tables() {
    let t = ab("rr");
    assert_eq!(t.name(), "table");
    assert_eq!(
        t.describe(),
        kv(&[
            ("frame_us", "10000"),
            ("window", "1:0:2000"),
            ("window", "2:2000:5000"),
            ("fill", "rr"),
        ])
    );
    // describe round-trips.
    let again = Table::from_params(&t.describe()).unwrap();
    assert_eq!(again.windows(), t.windows());
    assert_eq!(again.fill(), Fill::Rr);
    assert_eq!(again.frame(), Duration::from_millis(10));
    let t = Table::from_params(&kv(&[("frame_us", "100"), ("window", "1:0:10")])).unwrap();
    assert_eq!(t.fill(), Fill::Idle);
    assert!(super::super::build("table", &ab("idle").describe()).is_ok());

    let err = |items: &[(&str, &str)]| match Table::from_params(&kv(items)) {
        Err(PolicyError::BadParam(m)) => m,
        other => panic!("{items:?} accepted: {other:?}"),
    };
    let f = ("frame_us", "10000");
    let msg = err(&[f, ("window", "1:0:2000"), ("window", "2:1500:1000")]);
    assert!(msg.contains("overlap"), "{msg}");
    let msg = err(&[f, ("window", "1:9000:2000")]);
    assert!(msg.contains("past the frame"), "{msg}");
    let msg = err(&[f, ("window", "1:18446744073709551615:2000")]);
    assert!(msg.contains("past the frame"), "{msg}");
    let msg = err(&[f]);
    assert!(msg.contains("no windows"), "{msg}");
    let msg = err(&[("window", "1:0:2000")]);
    assert!(msg.contains("frame_us is required"), "{msg}");
    let msg = err(&[f, ("window", "1:0:9")]);
    assert!(msg.contains("shorter"), "{msg}");
    for bad in [
        "1:0",
        "1:0:2000:5",
        "x1:0:10",
        "v:0:10",
        "1:a:10",
        "1:0:-1",
        "",
    ] {
        let msg = err(&[f, ("window", bad)]);
        assert!(msg.contains("VCOPROC:OFFSET_US:LEN_US"), "{msg}");
    }
    assert!(err(&[f, ("window", "1:0:10"), ("fill", "fifo")]).contains("fill"));
    assert!(err(&[("frame_us", "99"), ("window", "1:0:10")]).contains("frame_us"));
    assert!(err(&[("frame_us", "10000001"), ("window", "1:0:10")]).contains("frame_us"));
    assert!(err(&[f, ("window", "1:0:10"), ("slice_us", "5")]).contains("slice_us"));
    // Exactly adjacent and exactly filling the frame is fine.
    assert!(
        Table::from_params(&kv(&[f, ("window", "2:5000:5000"), ("window", "1:0:5000")])).is_ok()
    );
}

#[test]
fn odd_calls_are_harmless() {
    let mut t = ab("rr");
    assert_eq!(t.pick(0), Decision::Idle(None));
    assert_eq!(t.wake(VcoprocId(1), 0), WakeAction::None, "unknown");
    t.block(VcoprocId(1));
    t.detach(VcoprocId(1));
    t.charge(VcoprocId(1), Duration::MAX, u64::MAX, RUN);
    assert!(t.set_params(VcoprocId(1), &SchedParams::default()).is_err());
    let bad = SchedParams {
        weight: 0,
        ..SchedParams::default()
    };
    assert!(t.attach(VcoprocId(1), &bad).is_err());
    t.attach(VcoprocId(1), &SchedParams::default()).unwrap();
    assert!(t.set_params(VcoprocId(1), &SchedParams::default()).is_ok());
    assert!(t.set_params(VcoprocId(1), &bad).is_err());
    // Charged without a pick (policy switched mid-slice): queued, no debt.
    t.charge(VcoprocId(1), Duration::MAX, 0, RUN);
    assert!(t.standings()[0].queued);
    assert_eq!(figure(&t, 1, "debt_us"), 0);
    assert_eq!(run_of(t.pick(0)), Some((1, 2 * MS)));
    // A huge overrun saturates.
    t.charge(VcoprocId(1), Duration::MAX, u64::MAX, RUN);
    let debt = (u64::MAX - 2 * MS) / 1_000;
    assert_eq!(figure(&t, 1, "debt_us"), debt as i64);
    // At the end of time: slack (9.55 ms into a frame), filled.
    assert_eq!(run_of(t.pick(u64::MAX)), Some((1, 448_385)));
    t.charge(VcoprocId(1), Duration::MAX, u64::MAX, RUN);
    assert_eq!(figure(&t, 1, "debt_us"), debt as i64, "no debt from fill");
    // Detached while running.
    assert_eq!(run_of(t.pick(7 * MS)), Some((1, 3 * MS)));
    t.detach(VcoprocId(1));
    t.charge(VcoprocId(1), Duration::from_millis(3), 10 * MS, RUN);
    assert!(t.standings().is_empty());
    assert_eq!(t.pick(10 * MS), Decision::Idle(None));
}

#[test]
fn a_hundred_thousand_vcoprocs() {
    const N: u32 = 100_000;
    let mut t = ab("rr");
    for i in 0..N {
        t.attach(VcoprocId(i), &SchedParams::default()).unwrap();
        t.wake(VcoprocId(i), 0);
    }
    let mut now = 0;
    let mut fillers = vec![];
    for _ in 0..5_000 {
        let (v, budget) = run_of(t.pick(now)).unwrap();
        let pos = now % (10 * MS);
        match pos {
            p if p < 2 * MS => assert_eq!(v, 1),
            p if p < 7 * MS => assert_eq!(v, 2),
            _ => fillers.push(v),
        }
        // Jobs of 250 us.
        let ran = budget.min(250 * US);
        now += ran;
        t.charge(VcoprocId(v), Duration::from_nanos(ran), now, RUN);
    }
    // The slack went round robin, in wake-up order, skipping the owners.
    let want: Vec<u32> = (0..N)
        .filter(|&v| v != 1 && v != 2)
        .take(fillers.len())
        .collect();
    assert_eq!(fillers, want);
    assert_eq!(t.standings().len(), N as usize);
}
