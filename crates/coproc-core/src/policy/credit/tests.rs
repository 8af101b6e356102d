// Casts of values the test itself chose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

//! Tests of `credit`, most of them on the policy test kit.

use super::*;
use crate::policy::testkit::{assert_share, figure, kv, Demand, Sim, MS, SEC, US};

fn id(i: u32) -> VcoprocId {
    VcoprocId(i)
}

fn params(weight: u32, cap_pct: Option<u32>) -> SchedParams {
    SchedParams {
        weight,
        cap_pct,
        ..SchedParams::default()
    }
}

fn end(runnable: bool) -> SliceEnd {
    SliceEnd {
        runnable,
        preempted: false,
        waiting: !runnable,
    }
}

/// Vcoprocs 1..=n with these demands and parameters on `pol`.
fn sim_of(pol: Credit, set: &[(Demand, SchedParams)]) -> Sim<Credit> {
    let mut sim = Sim::new(pol);
    for (i, (demand, p)) in set.iter().enumerate() {
        sim.add(i as u32 + 1, p, *demand);
    }
    sim
}

fn credit() -> Credit {
    Credit::from_params(&[]).unwrap()
}

#[test]
fn weighted_hogs_share_in_proportion() {
    let mut sim = sim_of(
        credit(),
        &[
            (Demand::Hog, params(1, None)),
            (Demand::Hog, params(2, None)),
            (Demand::Hog, params(4, None)),
        ],
    );
    sim.run_until(SEC);
    let total: u64 = (1..=3).map(|v| sim.ran(v)).sum();
    assert_eq!(total, SEC, "the device never idles");
    for (v, w) in [(1, 1.0), (2, 2.0), (3, 4.0)] {
        assert_share(sim.ran(v), SEC, w / 7.0, 0.01);
    }
}

#[test]
fn weighted_hogs_share_with_overruns() {
    let mut sim = sim_of(
        credit(),
        &[
            (Demand::Hog, params(256, None)),
            (Demand::Hog, params(768, None)),
        ],
    );
    sim.overrun = (3, 2);
    sim.run_until(SEC);
    assert_share(sim.ran(1), sim.now, 0.25, 0.01);
    assert_share(sim.ran(2), sim.now, 0.75, 0.01);
}

#[test]
fn cap_holds_alone_and_throttles_with_a_timer() {
    let mut sim = sim_of(credit(), &[(Demand::Hog, params(256, Some(30)))]);
    sim.run_until(SEC);
    let got = sim.ran(1) as f64 / SEC as f64;
    assert!((got - 0.30).abs() <= 0.005, "capped share {got}");
    assert!(sim.idle_timers >= 99, "throttled every period");

    // Directly: 3 ms of a 10 ms period, then Idle until the boundary.
    let mut c = credit();
    c.attach(id(1), &params(256, Some(30))).unwrap();
    c.wake(id(1), 2 * MS);
    let mut now = 2 * MS;
    for _ in 0..3 {
        assert_eq!(
            c.pick(now),
            Decision::Run {
                vcoproc: id(1),
                budget: Duration::from_millis(1)
            }
        );
        now += MS;
        c.charge(id(1), Duration::from_millis(1), now, end(true));
    }
    assert_eq!(figure(&c, 1, "throttled"), 1);
    assert_eq!(figure(&c, 1, "cap_left_us"), 0);
    assert_eq!(c.pick(now), Decision::Idle(Some(Duration::from_millis(5))));
    assert!(matches!(c.pick(10 * MS), Decision::Run { .. }));
}

#[test]
fn cap_converges_despite_overruns() {
    for cap in [30, 25, 7] {
        let mut sim = sim_of(credit(), &[(Demand::Hog, params(256, Some(cap)))]);
        sim.overrun = (3, 2);
        sim.run_until(SEC);
        let want = f64::from(cap) / 100.0;
        let got = sim.ran(1) as f64 / sim.now as f64;
        assert!((got - want).abs() <= 0.005, "cap {cap}: share {got}");
        sim.run_until(10 * SEC);
        let got = sim.ran(1) as f64 / sim.now as f64;
        assert!((got - want).abs() <= 0.001, "cap {cap}: long-run {got}");
    }
}

#[test]
fn capped_and_uncapped_share_the_device() {
    let mut sim = sim_of(
        credit(),
        &[
            (Demand::Hog, params(1000, Some(20))),
            (Demand::Hog, params(256, None)),
        ],
    );
    sim.run_until(SEC);
    assert!((sim.ran(1) as f64 / SEC as f64 - 0.20).abs() <= 0.005);
    assert_eq!(sim.ran(1) + sim.ran(2), SEC, "the device never idles");
}

#[test]
fn rogue_yielder_gets_no_more_than_its_share() {
    for sleep in [0, 1, 150 * US, 101 * US] {
        let mut sim = sim_of(
            credit(),
            &[
                (
                    Demand::Sleeper {
                        run: 900 * US,
                        sleep,
                    },
                    params(256, None),
                ),
                (Demand::Hog, params(256, None)),
            ],
        );
        sim.run_until(SEC);
        let rogue = sim.ran(1) as f64 / sim.now as f64;
        assert!(rogue <= 0.51, "sleep {sleep}: rogue got {rogue}");
    }
}

#[test]
fn interactive_runs_within_a_slice_of_its_wake_up() {
    let mut sim = sim_of(
        credit(),
        &[
            (Demand::Hog, params(256, None)),
            (
                Demand::Paced {
                    job: 100 * US,
                    period: 10 * MS,
                },
                params(256, None),
            ),
        ],
    );
    // The hog's slices are shifted off the 10 ms grid, so every job is
    // released while the hog runs.
    sim.clients[1].next_release = 3 * MS + 300 * US;
    sim.run_until(SEC);
    let inter = &sim.clients[1];
    assert!(inter.jobs >= 99);
    assert!(inter.max_latency <= nanos(Credit::DEFAULT_SLICE));
    // Preempted at once every time: no delay at all.
    assert_eq!(inter.max_latency, 0);
    assert!(sim.preemptions >= inter.jobs - 1);
    assert!(sim.ran(2) >= (inter.jobs - 1) * 100 * US);
}

#[test]
fn wake_preempts_only_beyond_the_granularity() {
    let mut c = credit();
    for i in 1..=2 {
        c.attach(id(i), &params(256, None)).unwrap();
    }
    c.wake(id(1), 0);
    assert!(matches!(c.pick(0), Decision::Run { vcoproc, .. } if vcoproc == id(1)));
    // Placed one slice behind the running one at most: 0 - slice → 0.
    assert_eq!(c.wake(id(2), 100 * US), WakeAction::None);
    c.block(id(2));
    // Long after: v1 has run 5 ms, v2 comes back 1 slice behind it.
    assert_eq!(c.wake(id(2), 5 * MS), WakeAction::Preempt);
}

#[test]
fn sleepers_cannot_hoard_credit() {
    let mut sim = sim_of(
        credit(),
        &[
            (Demand::Hog, params(256, None)),
            (
                Demand::Paced {
                    job: 50 * MS,
                    period: 400 * MS,
                },
                params(256, None),
            ),
        ],
    );
    // v2 sleeps until 300 ms, then wants 50 ms: it may not take the
    // device for more than about a slice in a row.
    sim.clients[1].next_release = 300 * MS;
    sim.run_until(300 * MS);
    let before = sim.ran(2);
    sim.run_until(310 * MS);
    let burst = sim.ran(2) - before;
    assert!(burst <= 6 * MS, "sleeper took {burst} ns of 10 ms");
}

#[test]
fn weight_change_applies_from_the_next_pick() {
    let mut c = credit();
    for i in 1..=2 {
        c.attach(id(i), &params(256, None)).unwrap();
        c.wake(id(i), 0);
    }
    let slice = Duration::from_millis(1);
    let diff = |c: &Credit| figure(c, 1, "credit_us") - figure(c, 2, "credit_us");
    assert!(matches!(c.pick(0), Decision::Run { vcoproc, .. } if vcoproc == id(1)));
    c.charge(id(1), slice, MS, end(true));
    assert_eq!(diff(&c), -1000);
    assert!(matches!(c.pick(MS), Decision::Run { vcoproc, .. } if vcoproc == id(2)));
    // Changed while v2 runs: this slice is still charged at 256...
    c.set_params(id(2), &params(2560, None)).unwrap();
    assert_eq!(figure(&c, 2, "weight"), 2560);
    c.charge(id(2), slice, 2 * MS, end(true));
    assert_eq!(diff(&c), 0);
    // ...the next ones at 2560: ten slices of v2 per slice of v1.
    let mut runs = [0u32; 3];
    let mut now = 2 * MS;
    for _ in 0..22 {
        let Decision::Run { vcoproc, budget } = c.pick(now) else {
            panic!("idle");
        };
        runs[vcoproc.0 as usize] += 1;
        now += nanos(budget);
        c.charge(vcoproc, budget, now, end(true));
    }
    assert_eq!(runs, [0, 2, 20]);
    assert!(c.set_params(id(9), &params(1, None)).is_err());
    assert!(c.set_params(id(1), &params(0, None)).is_err());
    assert!(c.set_params(id(1), &params(1, Some(101))).is_err());
}

#[test]
fn cap_change_applies_from_the_next_pick() {
    let mut c = credit();
    c.attach(id(1), &params(256, None)).unwrap();
    c.wake(id(1), 0);
    let Decision::Run { budget, .. } = c.pick(0) else {
        panic!("idle");
    };
    c.charge(id(1), budget, MS, end(true));
    c.set_params(id(1), &params(256, Some(5))).unwrap();
    assert_eq!(
        c.pick(MS),
        Decision::Run {
            vcoproc: id(1),
            budget: Duration::from_micros(500)
        }
    );
    c.charge(id(1), Duration::from_micros(500), MS + 500 * US, end(true));
    assert_eq!(
        c.pick(MS + 500 * US),
        Decision::Idle(Some(Duration::from_micros(8500)))
    );
    // Lifting the cap frees it at once.
    c.set_params(id(1), &params(256, None)).unwrap();
    assert_eq!(figure(&c, 1, "throttled"), 0);
    assert!(matches!(c.pick(2 * MS), Decision::Run { .. }));
}

#[test]
fn block_and_detach_leave_every_set() {
    let mut c = credit();
    for i in 1..=4 {
        let cap = (i >= 3).then_some(10);
        c.attach(id(i), &params(256, cap)).unwrap();
    }
    // Throttle v3 and v4: each runs its whole 1 ms budget.
    for v in [3, 4] {
        c.wake(id(v), 0);
        let Decision::Run { vcoproc, budget } = c.pick(0) else {
            panic!("idle");
        };
        assert_eq!(vcoproc, id(v));
        c.charge(vcoproc, budget, MS, end(true));
        assert_eq!(figure(&c, v, "throttled"), 1);
    }
    c.wake(id(1), MS);
    c.wake(id(2), MS);
    c.block(id(1));
    c.detach(id(2));
    c.block(id(3));
    c.detach(id(4));
    assert_eq!(c.pick(MS), Decision::Idle(None));
    assert!(c.standings().iter().all(|s| !s.queued));
    assert_eq!(c.standings().len(), 2);
    // Detached while running; then charged: ignored.
    c.wake(id(1), MS);
    assert!(matches!(c.pick(MS), Decision::Run { .. }));
    c.detach(id(1));
    c.charge(id(1), Duration::from_millis(1), 2 * MS, end(true));
    assert_eq!(c.pick(2 * MS), Decision::Idle(None));
    // Woken again after a block: queued once.
    c.wake(id(3), 20 * MS);
    c.wake(id(3), 20 * MS);
    assert!(matches!(c.pick(20 * MS), Decision::Run { vcoproc, .. } if vcoproc == id(3)));
    c.charge(id(3), Duration::ZERO, 20 * MS, end(false));
    assert_eq!(c.pick(20 * MS), Decision::Idle(None));
}

#[test]
fn charge_of_a_slice_never_picked_requeues() {
    let mut c = credit();
    c.attach(id(1), &params(256, Some(50))).unwrap();
    c.charge(id(1), Duration::from_millis(7), 7 * MS, end(true));
    // 5 ms budget, 7 ms ran: 2 ms debt, repaid at 10 ms → 3 ms left.
    assert_eq!(figure(&c, 1, "throttled"), 1);
    assert_eq!(
        c.pick(7 * MS),
        Decision::Idle(Some(Duration::from_millis(3)))
    );
    assert_eq!(
        c.pick(10 * MS),
        Decision::Run {
            vcoproc: id(1),
            budget: Duration::from_millis(1)
        }
    );
    assert_eq!(figure(&c, 1, "cap_left_us"), 3000);
    // Unknown: nothing happens.
    c.charge(id(9), Duration::from_millis(1), 0, end(true));
    assert_eq!(c.wake(id(9), 0), WakeAction::None);
}

#[test]
fn debt_beyond_a_period_is_carried() {
    let mut c = credit();
    c.attach(id(1), &params(256, Some(10))).unwrap();
    c.wake(id(1), 0);
    assert!(matches!(c.pick(0), Decision::Run { .. }));
    // 1 ms budget per 10 ms; 25 ms ran in period 0: 24 ms of debt, of
    // which periods 1 and 2 (reached at 25 ms) repaid 2 ms.
    c.charge(id(1), Duration::from_millis(25), 25 * MS, end(true));
    assert_eq!(figure(&c, 1, "cap_left_us"), -22_000);
    // Periods 3..=24 repay the rest; period 25 (250 ms) has a budget.
    assert_eq!(
        c.pick(25 * MS),
        Decision::Idle(Some(Duration::from_millis(250 - 25)))
    );
    assert_eq!(
        c.pick(249 * MS),
        Decision::Idle(Some(Duration::from_millis(1)))
    );
    assert!(matches!(c.pick(250 * MS), Decision::Run { .. }));
    assert_eq!(figure(&c, 1, "cap_left_us"), 1_000);
}

#[test]
fn never_panics_on_extreme_input() {
    let mut c = Credit::new(Credit::MAX_SLICE, Credit::MIN_CAP_PERIOD).unwrap();
    c.attach(id(1), &params(1, Some(1))).unwrap();
    c.attach(id(2), &params(65535, None)).unwrap();
    for now in [0, u64::MAX, 1] {
        for v in 0..=3 {
            c.wake(id(v), now);
            c.block(id(v));
            c.wake(id(v), now);
        }
        for _ in 0..4 {
            if let Decision::Run { vcoproc, budget } = c.pick(now) {
                assert!(!budget.is_zero());
                c.charge(vcoproc, Duration::MAX, now, end(true));
            }
        }
        c.charge(id(2), Duration::ZERO, 0, end(true));
        c.charge(id(1), Duration::MAX, u64::MAX, end(true));
        let _ = c.standings();
    }
    c.detach(id(1));
    c.detach(id(7));
}

#[test]
fn many_vcoprocs_are_picked_in_fair_order() {
    const N: u32 = 100_000;
    let mut c = credit();
    for i in 0..N {
        c.attach(id(i), &params(256, None)).unwrap();
    }
    for i in 0..N {
        c.wake(id(i), 0);
    }
    let mut now = 0;
    for round in 0..5_000u32 {
        let Decision::Run { vcoproc, budget } = c.pick(now) else {
            panic!("idle");
        };
        // Everybody starts level: lowest id first, each one once.
        assert_eq!(vcoproc, id(round));
        now += nanos(budget);
        c.charge(vcoproc, budget, now, end(true));
    }
    // A blocked one in the middle of the queue leaves it.
    c.block(id(5_000));
    assert!(matches!(c.pick(now), Decision::Run { vcoproc, .. } if vcoproc == id(5_001)));
    assert_eq!(c.standings().len(), N as usize);
}

#[test]
fn credit_is_reset_lazily() {
    let mut c = credit();
    c.attach(id(1), &params(256, None)).unwrap();
    c.wake(id(1), 0);
    assert_eq!(figure(&c, 1, "credit_us"), 10_000);
    let mut now = 0;
    for _ in 0..10 {
        let Decision::Run { budget, .. } = c.pick(now) else {
            panic!("idle");
        };
        now += nanos(budget);
        c.charge(id(1), budget, now, end(true));
    }
    assert_eq!(figure(&c, 1, "credit_us"), 0);
    // Out of credit at the next pick: everybody gets CREDIT_INIT more.
    assert!(matches!(c.pick(now), Decision::Run { .. }));
    assert_eq!(figure(&c, 1, "credit_us"), 10_000);
    assert_eq!(figure(&c, 1, "running"), 1);
}

#[test]
fn parameters_are_checked() {
    assert!(Credit::from_params(&kv(&[("weight", "3")])).is_err());
    assert!(Credit::from_params(&kv(&[("slice_us", "49")])).is_err());
    assert!(Credit::from_params(&kv(&[("slice_us", "1000001")])).is_err());
    assert!(Credit::from_params(&kv(&[("slice_us", "x")])).is_err());
    assert!(Credit::from_params(&kv(&[("cap_period_us", "999")])).is_err());
    assert!(Credit::from_params(&kv(&[("cap_period_us", "1000001")])).is_err());
    assert!(Credit::new(Duration::from_micros(10), Credit::DEFAULT_CAP_PERIOD).is_err());
    assert_eq!(
        credit().describe(),
        kv(&[
            ("slice_us", "1000"),
            ("cap_period_us", "10000"),
            ("idle_us", "0")
        ])
    );
    let c = Credit::from_params(&kv(&[("slice_us", "50"), ("cap_period_us", "1000000")])).unwrap();
    assert_eq!(c.slice(), Duration::from_micros(50));
    assert_eq!(c.cap_period(), Duration::from_secs(1));
    let b = super::super::build("credit", &kv(&[("slice_us", "2000")])).unwrap();
    assert_eq!(b.name(), "credit");
    let mut c = credit();
    assert!(c.attach(id(1), &params(0, None)).is_err());
    assert!(c.attach(id(1), &params(1, Some(0))).is_err());
    assert!(c.standings().is_empty());
}

/// Device time spent on a vcoproc's commands is charged like running
/// time: two equal hogs, one of which had 200 ms of work done for it, end
/// up with equal totals of running plus work (to within a slice), and
/// where it stands in the queue stays right (it keeps being picked).
#[test]
fn command_work_is_charged_like_running_time() {
    let mut sim = sim_of(
        credit(),
        &[
            (Demand::Hog, params(256, None)),
            (Demand::Hog, params(256, None)),
        ],
    );
    sim.run_until(100 * MS);
    sim.policy
        .charge_work(id(1), Duration::from_millis(200), sim.now);
    sim.run_until(SEC);
    let (a, b) = (sim.ran(1) + 200 * MS, sim.ran(2));
    let slice = nanos(Credit::DEFAULT_SLICE);
    assert!(
        a.abs_diff(b) <= slice,
        "run + work {a} vs run {b}: off by more than a slice ({slice})"
    );
    // Unknown vcoprocs are ignored.
    sim.policy
        .charge_work(id(9), Duration::from_millis(5), sim.now);
    // A capped vcoproc pays from its budget: 50 % of each 10 ms period,
    // and 30 ms of work leaves it throttled past 50 ms (uncharged it
    // would run 20 ms of the 40).
    let mut capped = sim_of(credit(), &[(Demand::Hog, params(256, Some(50)))]);
    capped.run_until(10 * MS);
    let before = capped.ran(1);
    capped
        .policy
        .charge_work(id(1), Duration::from_millis(30), capped.now);
    capped.run_until(50 * MS);
    assert!(
        capped.ran(1) - before <= 5 * MS,
        "ran {} after 30 ms of work",
        capped.ran(1) - before
    );
}

/// On a device that cannot preempt, with an idle window of `idle`: a
/// vcoproc that runs `run` ns then waits `sleep` ns, forever, against a
/// hog whose every turn runs `overrun` ns past its slice.
fn pauser_and_hog(idle: Duration, run: u64, sleep: u64, overrun: u64) -> Sim<Credit> {
    let pol = credit().with_idle(idle).unwrap();
    let mut sim = Sim::new(pol);
    sim.preemptible = false;
    sim.add(1, &params(256, None), Demand::Sleeper { run, sleep });
    sim.add(2, &params(256, None), Demand::Hog).overrun = overrun;
    sim
}

/// A thinker (2 ms of work, then 0.5 ms to prepare the next) against a
/// hog whose every turn runs 50 ms past its slice (a GPU's long job),
/// over 2 s; returns (thinker, hog, idle).
fn thinker_against_long_jobs(idle: Duration) -> (u64, u64, u64) {
    let mut sim = pauser_and_hog(idle, 2 * MS, 500 * US, 50 * MS);
    sim.run_until(2 * SEC);
    (sim.ran(1), sim.ran(2), sim.idle)
}

#[test]
fn an_idle_window_keeps_a_thinker_s_share_against_unpreemptible_jobs() {
    // Work-conserving, the device goes to the hog each time the thinker
    // stops to think, for 51 ms a time: the thinker gets a few percent.
    let (thinker, hog, _) = thinker_against_long_jobs(Duration::ZERO);
    assert!(thinker * 10 < hog, "thinker {thinker} hog {hog}");
    // Idling 1 ms for it while it is owed time, it gets its half, the
    // device idling for it counted as its own (its thinking, 0.5 ms per
    // 2 ms of work): its work and the idling add up to the hog's time
    // within one of the hog's turns.
    let (thinker, hog, idle) = thinker_against_long_jobs(Duration::from_millis(1));
    assert!(
        (thinker + idle).abs_diff(hog) <= 51 * MS,
        "thinker {thinker} idle {idle} hog {hog}"
    );
    assert!(
        idle <= thinker / 4 + MS,
        "idle {idle} for thinker {thinker}"
    );
    assert!(thinker * 10 > hog * 7, "thinker {thinker} hog {hog}");
}

#[test]
fn a_vcoproc_cannot_hold_the_device_idle_with_tiny_jobs() {
    // 1 µs of work, then a pause just under the window, over and over:
    // each pause is idling charged to it, so the hog still gets half.
    let mut sim = pauser_and_hog(Duration::from_millis(1), US, 990 * US, 0);
    sim.run_until(SEC);
    let hog = sim.ran(2);
    assert!(
        hog * 100 >= SEC * 48,
        "hog {hog} of {SEC}, idle {}",
        sim.idle
    );
}

#[test]
fn no_idling_for_one_that_waits_longer_than_the_window() {
    let mut sim = pauser_and_hog(Duration::from_millis(1), MS, 20 * MS, 0);
    sim.run_until(SEC);
    assert_eq!(
        sim.idle, 0,
        "idled for a vcoproc that never came back in time"
    );
    assert_eq!(sim.ran(1) + sim.ran(2), SEC);
}

#[test]
fn idle_window_parameter_is_bounded_and_shown() {
    let p = Credit::from_params(&kv(&[("idle_us", "2500")])).unwrap();
    assert_eq!(p.idle(), Duration::from_micros(2500));
    assert!(p
        .describe()
        .contains(&("idle_us".to_string(), "2500".to_string())));
    assert!(Credit::from_params(&kv(&[("idle_us", "100001")])).is_err());
    assert_eq!(credit().idle(), Duration::ZERO);
}
