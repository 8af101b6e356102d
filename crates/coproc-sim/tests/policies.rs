//! Scheduler acceptance tests, in the spirit of the Linux drm_sched
//! mock-scheduler tests: whole scenarios through a real pcoproc and its
//! runner on the simulated device, in virtual time (no sleeps, no host
//! timing), checked against expectations computed independently from the
//! workload definitions, the sim's own per-context records and the trace.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use coproc_core::device::SwitchOutcome;
use coproc_core::fault::FaultReason;
use coproc_core::pcoproc::TraceEntry;
use coproc_core::policy::{build, Policy, SchedParams};
use coproc_core::state::VcoprocState;
use coproc_core::{DomainId, Pcoproc, VcoprocHandle, VcoprocId};
use coproc_sim::{Job, Sim, SimConfig, Workload};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

/// Policy `name` built from `key=value` pairs, as configuration does it.
fn policy(name: &str, params: &[(&str, String)]) -> Box<dyn Policy> {
    let kv: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    build(name, &kv).unwrap_or_else(|e| panic!("{name} {kv:?}: {e}"))
}

fn credit(slice_us: u64) -> Box<dyn Policy> {
    policy("credit", &[("slice_us", slice_us.to_string())])
}

/// A pcoproc on `sim` with tracing on.
fn spawn(sim: &Sim, p: Box<dyn Policy>) -> Arc<Pcoproc> {
    let p = sim.spawn("sim0", p).unwrap();
    p.set_trace(1_000_000);
    p
}

fn vc(p: &Arc<Pcoproc>, params: SchedParams, w: &Workload) -> VcoprocHandle {
    let v = p.create_vcoproc(DomainId(1), params).unwrap();
    v.load_firmware("w", &w.to_image()).unwrap();
    v
}

fn weight(w: u32) -> SchedParams {
    SchedParams {
        weight: w,
        ..SchedParams::default()
    }
}

fn prio(p: i32) -> SchedParams {
    SchedParams {
        priority: p,
        ..SchedParams::default()
    }
}

fn reserve(budget_ns: u64, period_ns: u64) -> SchedParams {
    SchedParams {
        reservation: Some((
            Duration::from_nanos(budget_ns),
            Duration::from_nanos(period_ns),
        )),
        ..SchedParams::default()
    }
}

fn job(at_ns: u64, len_ns: u64) -> Job {
    Job {
        at_ns,
        len_ns,
        ..Job::default()
    }
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

/// Device time `v` ran up to now, the run in progress included, after
/// checking that the pcoproc's snapshot says exactly that: what the device
/// returned so far, as charged, plus the run in progress (honest
/// accounting).
fn ran(sim: &Sim, v: &VcoprocHandle) -> u64 {
    let r = sim.context(v.id()).unwrap();
    assert_eq!(
        r.ran_ns + r.in_run_ns,
        v.info().unwrap().stats.run_ns,
        "{v:?}"
    );
    r.ran_ns + r.in_run_ns
}

/// Device time each of `vs` ran in `[t0, t1)`: differences of the sim's
/// records at two parks (the device must be parked at `t0` now).
fn ran_between(sim: &Sim, vs: &[&VcoprocHandle], t0: u64, t1: u64) -> Vec<u64> {
    assert_eq!(sim.now_ns(), t0);
    let before: Vec<u64> = vs.iter().map(|v| ran(sim, v)).collect();
    sim.run_until(t1).unwrap();
    vs.iter()
        .zip(before)
        .map(|(v, b)| ran(sim, v) - b)
        .collect()
}

/// Device time `v` ran in `[t0, t1)` according to the trace, slices cut
/// at the window's edges.
fn traced_between(trace: &[TraceEntry], v: VcoprocId, t0: u64, t1: u64) -> u64 {
    trace
        .iter()
        .filter(|e| e.vcoproc == v)
        .map(|e| {
            let (s, f) = (e.start_ns.max(t0), (e.start_ns + e.ran_ns).min(t1));
            f.saturating_sub(s)
        })
        .sum()
}

/// `got` within `pct` percent of `want`, relative.
fn assert_close(got: u64, want: u64, pct: f64, what: &str) {
    let err = (got as f64 - want as f64).abs() / want as f64 * 100.0;
    assert!(
        err <= pct,
        "{what}: {got} vs {want} ns: {err:.3}% off (limit {pct}%)"
    );
}

/// The jobs of `w` in order of arrival (explicit jobs only).
fn arrivals(w: &Workload) -> Vec<u64> {
    let mut a: Vec<u64> = w.jobs.iter().map(|j| j.at_ns).collect();
    a.sort_unstable();
    a
}

// ---------------------------------------------------------------------
// 1. Weighted fair share
// ---------------------------------------------------------------------

#[test]
fn weights_1_2_4_share_within_1pct_over_a_virtual_second() {
    let sim = Sim::new(SimConfig::default());
    let p = spawn(&sim, credit(1000));
    let ws = [256u32, 512, 1024];
    let vs: Vec<VcoprocHandle> = ws
        .iter()
        .map(|&w| vc(&p, weight(w), &Workload::hog()))
        .collect();
    let refs: Vec<&VcoprocHandle> = vs.iter().collect();
    start_at(&sim, 0, &refs);
    // A warm-up, then exactly one virtual second.
    let t0 = 137 * MS + 250 * US;
    sim.run_until(t0).unwrap();
    let got = ran_between(&sim, &refs, t0, t0 + S);
    // Let the slice in progress at t0 + 1 s end so the trace covers it.
    sim.run_until(t0 + S + 10 * MS).unwrap();
    let trace = p.trace();
    let total: u32 = ws.iter().sum();
    for ((v, &w), &g) in vs.iter().zip(&ws).zip(&got) {
        let want = S * u64::from(w) / u64::from(total);
        assert_close(g, want, 1.0, &format!("weight {w}"));
        // The trace cut at the window edges says the same.
        assert_eq!(traced_between(&trace, v.id(), t0, t0 + S), g, "{v:?}");
    }
    // Hogs only: the device never idled.
    assert_eq!(got.iter().sum::<u64>(), S);
    for v in &vs {
        ran(&sim, v);
    }
    p.shutdown();
}

// ---------------------------------------------------------------------
// 2. Caps
// ---------------------------------------------------------------------

/// A credit pcoproc with one hog capped at 30 % and, optionally, a
/// neighbour; returns (capped ran, neighbour ran) over [t0, t0 + 1 s).
fn capped_scenario(cfg: SimConfig, neighbour: Option<&Workload>) -> (u64, Option<u64>, u64) {
    let sim = Sim::new(cfg);
    let p = spawn(&sim, credit(1000));
    let capped = SchedParams {
        cap_pct: Some(30),
        ..SchedParams::default()
    };
    let hog = Workload {
        // Dispatches that do not divide the 3 ms budget: every period
        // overruns under dispatch_only.
        hog_dispatch_ns: Some(700 * US),
        ..Workload::hog()
    };
    let c = vc(&p, capped, &hog);
    let n = neighbour.map(|w| vc(&p, SchedParams::default(), w));
    let mut all = vec![&c];
    all.extend(n.as_ref());
    start_at(&sim, 0, &all);
    let t0 = 100 * MS;
    sim.run_until(t0).unwrap();
    let got = ran_between(&sim, &all, t0, t0 + S);
    let busy: u64 = got.iter().sum();
    if let Some(n) = &n {
        // The neighbour's jobs all completed, none pending long.
        let r = sim.context(n.id()).unwrap();
        assert!(r.pending <= 1, "{r:?}");
    }
    p.shutdown();
    (got[0], got.get(1).copied(), busy)
}

#[test]
fn caps_hold_when_others_are_idle() {
    // Alone: 30 % of the second, and the device idles the rest.
    let (c, _, busy) = capped_scenario(SimConfig::default(), None);
    assert_close(c, 300 * MS, 1.0, "capped hog alone");
    assert_eq!(busy, c, "nobody else ran: the device idled 70 %");

    // With a neighbour that mostly waits (1 ms every 10 ms): the cap still
    // holds, the neighbour gets all its work, and the rest stays idle.
    let n = Workload::periodic(5 * MS, 10 * MS, MS, None);
    let (c, nb, busy) = capped_scenario(SimConfig::default(), Some(&n));
    assert_close(c, 300 * MS, 1.0, "capped hog with a waiting neighbour");
    assert_eq!(nb, Some(100 * MS), "the neighbour ran every job");
    assert_eq!(busy, c + 100 * MS);

    // A device that stops only between 0.7 ms dispatches overruns every
    // 3 ms budget; the debt is carried and the long-run share holds.
    let cfg = SimConfig {
        dispatch_only: true,
        ..SimConfig::default()
    };
    let (c, _, busy) = capped_scenario(cfg, None);
    assert_close(c, 300 * MS, 1.0, "capped hog, dispatch_only");
    assert_eq!(busy, c);
    let (c, nb, _) = capped_scenario(cfg, Some(&n));
    assert_close(c, 300 * MS, 1.0, "capped hog, dispatch_only, neighbour");
    assert_eq!(nb, Some(100 * MS));
}

// ---------------------------------------------------------------------
// 3. Hog versus interactive under each policy
// ---------------------------------------------------------------------

#[test]
fn hog_vs_interactive_under_each_policy() {
    const SLICE: u64 = MS;
    const JOB: u64 = 200 * US;
    const PERIOD: u64 = 10 * MS;
    const FIRST: u64 = 2 * MS;
    const JOBS: u64 = 100;
    let end = FIRST + JOBS * PERIOD;
    let slice = ("slice_us", (SLICE / US).to_string());
    // (policy, interactive params, hog params, bound on the response time)
    type Case = (&'static str, Box<dyn Policy>, SchedParams, SchedParams);
    let cases: Vec<Case> = vec![
        (
            "rr",
            policy("rr", std::slice::from_ref(&slice)),
            SchedParams::default(),
            SchedParams::default(),
        ),
        (
            "credit",
            policy("credit", std::slice::from_ref(&slice)),
            SchedParams::default(),
            SchedParams::default(),
        ),
        (
            "priority",
            policy("priority", std::slice::from_ref(&slice)),
            prio(10),
            prio(0),
        ),
        (
            "rt",
            policy("rt", std::slice::from_ref(&slice)),
            reserve(JOB, PERIOD),
            SchedParams::default(),
        ),
        (
            // Interactive (id 1) owns [2, 3) ms of each 10 ms frame, the
            // hog (id 2) the rest but [2, 3).
            "table",
            policy(
                "table",
                &[
                    ("frame_us", "10000".into()),
                    ("window", "1:2000:1000".into()),
                    ("window", "2:0:2000".into()),
                    ("window", "2:3000:7000".into()),
                ],
            ),
            SchedParams::default(),
            SchedParams::default(),
        ),
    ];
    for (name, pol, ip, hp) in cases {
        let sim = Sim::new(SimConfig::default());
        let p = spawn(&sim, pol);
        let mut w = Workload::periodic(FIRST, PERIOD, JOB, Some(JOBS));
        w.exit_when_done = true;
        let i = vc(&p, ip, &w);
        let h = vc(&p, hp, &Workload::hog());
        assert_eq!((i.id(), h.id()), (VcoprocId(1), VcoprocId(2)));
        start_at(&sim, 0, &[&i, &h]);
        sim.run_until(end).unwrap();
        let r = sim.context(i.id()).unwrap();
        assert_eq!(
            r.completed.len() as u64,
            JOBS,
            "{name}: every job completes"
        );
        assert!(r.exited, "{name}");
        for (k, j) in r.completed.iter().enumerate() {
            let arrival = FIRST + k as u64 * PERIOD;
            assert_eq!(j.arrival_ns, arrival, "{name}");
            let resp = j.response_ns();
            match name {
                "rr" => assert!(resp <= SLICE + JOB, "{name}: {j:?}"),
                "credit" => assert!(resp <= SLICE, "{name}: {j:?}"),
                "priority" => assert_eq!((j.start_ns, resp), (arrival, JOB), "{name}"),
                "rt" => assert!(j.met_deadline() && j.deadline_ns == Some(arrival + PERIOD)),
                "table" => {
                    // Inside its window [2, 3) ms of the frame (epoch 0:
                    // the pcoproc's first decision).
                    let win = j.arrival_ns - j.arrival_ns % PERIOD + 2 * MS;
                    assert!(j.start_ns >= win && j.finish_ns <= win + MS, "{j:?}");
                }
                _ => unreachable!(),
            }
        }
        assert_eq!(ran(&sim, &i), JOBS * JOB, "{name}");
        let hog = ran(&sim, &h);
        match name {
            // The hog gets everything else: the device never idles.
            "table" => {
                // Exactly its windows [0, 2) and [3, 10) ms of each frame.
                let frames = end / PERIOD;
                let part = (end % PERIOD).min(2 * MS) + (end % PERIOD).saturating_sub(3 * MS);
                assert_eq!(hog, frames * 9 * MS + part, "{name}");
            }
            _ => assert_eq!(hog, end - JOBS * JOB, "{name}"),
        }
        p.shutdown();
    }
}

// ---------------------------------------------------------------------
// 4. A yielder gets nothing for free
// ---------------------------------------------------------------------

/// The yielder asks for 95 % (jobs just under a slice, released faster
/// than half the device can serve them). Arrivals are absolute times, so it
/// only gets to wait and be re-woken when the scheduler lets it catch up: a
/// scheduler that rewarded waking up would let it, and it would then wait
/// and wake every job, taking more than its half. Under credit it stays
/// backlogged at its fair half. (A closed-loop yielder, whose next job
/// arrives a fixed gap after the previous one finishes, needs arrivals
/// relative to completions, which the sim's workloads do not have.)
#[test]
fn rogue_yielder_gets_nothing_free() {
    for (what, yielder) in [
        (
            "periodic 0.95 ms every 1 ms",
            Workload::periodic(0, MS, 950 * US, None),
        ),
        (
            "explicit jobs just under a slice, back to back",
            Workload::jobs((0..1500).map(|k| job(k * 700 * US, 990 * US)).collect()),
        ),
    ] {
        let sim = Sim::new(SimConfig::default());
        let p = spawn(&sim, credit(1000));
        let y = vc(&p, SchedParams::default(), &yielder);
        let h = vc(&p, SchedParams::default(), &Workload::hog());
        start_at(&sim, 0, &[&y, &h]);
        let t0 = 10 * MS;
        sim.run_until(t0).unwrap();
        let got = ran_between(&sim, &[&y, &h], t0, t0 + S);
        assert!(
            got[0] <= S / 2 + S / 100,
            "{what}: the yielder got {} ns of 1 s",
            got[0]
        );
        assert_eq!(got[0] + got[1], S, "{what}: the device never idled");
        // Charged exactly what it ran, wake-ups and all.
        ran(&sim, &y);
        ran(&sim, &h);
        p.shutdown();
    }
}

// ---------------------------------------------------------------------
// 5. Priority preemption points
// ---------------------------------------------------------------------

#[test]
fn priority_preemption_happens_at_the_next_preemption_point() {
    let pol = || policy("priority", &[("slice_us", "1000".into())]);
    // Instruction-preemptible: every high job starts at its arrival.
    {
        let sim = Sim::new(SimConfig::default());
        let p = spawn(&sim, pol());
        let hj = Workload::jobs(vec![
            job(1_234_567, 100 * US),
            job(5 * MS + 1, 50 * US),
            job(7 * MS + 999, 10 * US),
        ]);
        let hi = vc(&p, prio(5), &hj);
        let lo = vc(&p, prio(0), &Workload::hog());
        start_at(&sim, 0, &[&hi, &lo]);
        sim.run_until(10 * MS).unwrap();
        let r = sim.context(hi.id()).unwrap();
        assert_eq!(r.completed.len(), 3);
        for (j, want) in r.completed.iter().zip(&hj.jobs) {
            assert_eq!(j.arrival_ns, want.at_ns);
            assert_eq!(j.start_ns, want.at_ns, "{j:?}");
            assert_eq!(j.finish_ns, want.at_ns + want.len_ns, "{j:?}");
        }
        assert_eq!(ran(&sim, &lo), 10 * MS - 160 * US);
        p.shutdown();
    }
    // A non-preemptible section in the low hog's job: the high job starts
    // exactly where the section ends.
    {
        let sim = Sim::new(SimConfig::default());
        let p = spawn(&sim, pol());
        let section = (300 * US, 1200 * US);
        let lj = Job {
            nonpreempt: Some(section),
            ..job(2 * MS, 3 * MS)
        };
        let low = Workload {
            jobs: vec![lj],
            ..Workload::hog()
        };
        let arrival = 2 * MS + 700 * US;
        let hi = vc(&p, prio(5), &Workload::jobs(vec![job(arrival, 100 * US)]));
        let lo = vc(&p, prio(0), &low);
        start_at(&sim, 0, &[&hi, &lo]);
        sim.run_until(10 * MS).unwrap();
        let l = sim.context(lo.id()).unwrap().completed[0];
        // The hog's job ran from its arrival (jobs take precedence over the
        // background work); its section is [start + 0.3, start + 1.5) ms.
        assert_eq!(l.start_ns, 2 * MS);
        let section_end = l.start_ns + section.0 + section.1;
        assert!(arrival > l.start_ns + section.0 && arrival < section_end);
        let h = sim.context(hi.id()).unwrap().completed[0];
        assert_eq!((h.arrival_ns, h.start_ns), (arrival, section_end));
        assert_eq!(h.finish_ns, section_end + 100 * US);
        // The low job lost exactly the high job's time.
        assert_eq!(l.finish_ns, l.start_ns + 3 * MS + 100 * US);
        p.shutdown();
    }
    // dispatch_only: the high job starts at the end of the hog's dispatch
    // in progress (dispatches of 300 us from the hog's first run).
    {
        let cfg = SimConfig {
            dispatch_only: true,
            ..SimConfig::default()
        };
        let sim = Sim::new(cfg);
        let p = spawn(&sim, pol());
        let k = 300 * US;
        let hj = Workload::jobs(vec![
            job(1_050 * US, 100 * US),
            job(4_321 * US, 40 * US),
            job(8 * MS, 10 * US),
        ]);
        let hi = vc(&p, prio(5), &hj);
        let low = Workload {
            hog_dispatch_ns: Some(k),
            ..Workload::hog()
        };
        let lo = vc(&p, prio(0), &low);
        start_at(&sim, 0, &[&hi, &lo]);
        sim.run_until(10 * MS).unwrap();
        let r = sim.context(hi.id()).unwrap();
        assert_eq!(r.completed.len(), 3);
        // The hog's dispatch grid: it starts at 0 and only pauses for the
        // high jobs, which each arrive mid-dispatch (or at a boundary).
        let mut hog_done = 0u64; // hog work done at the start of the grid
        let mut resume = 0u64; // when the hog resumed
        for (j, want) in r.completed.iter().zip(&hj.jobs) {
            let into = hog_done + (want.at_ns - resume);
            let end = resume + into.div_ceil(k) * k - hog_done;
            assert_eq!((j.arrival_ns, j.start_ns), (want.at_ns, end), "{j:?}");
            assert_eq!(j.finish_ns, end + want.len_ns);
            hog_done += end - resume;
            resume = j.finish_ns;
        }
        p.shutdown();
    }
}

// ---------------------------------------------------------------------
// 6. EDF with admission control
// ---------------------------------------------------------------------

#[test]
fn edf_meets_every_deadline_of_an_admitted_set_and_refuses_an_overfull_one() {
    let sim = Sim::new(SimConfig::default());
    let p = spawn(&sim, policy("rt", &[]));
    let set = [(2, 10), (3, 15), (5, 20), (20, 100)];
    let horizon = 2 * S;
    let vs: Vec<(VcoprocHandle, u64)> = set
        .iter()
        .map(|&(b, per)| {
            let (b, per) = (b * MS, per * MS);
            let w = Workload::periodic(0, per, b, None);
            (vc(&p, reserve(b, per), &w), per)
        })
        .collect();
    let hog = vc(&p, SchedParams::default(), &Workload::hog());
    let mut all: Vec<&VcoprocHandle> = vs.iter().map(|(v, _)| v).collect();
    all.push(&hog);
    start_at(&sim, 0, &all);
    sim.run_until(horizon).unwrap();
    let mut reserved = 0;
    for (v, per) in &vs {
        let r = sim.context(v.id()).unwrap();
        for j in &r.completed {
            assert!(j.met_deadline(), "{v:?}: {j:?}");
        }
        // Every job released with its deadline by the horizon completed.
        let due = horizon / per;
        assert!(
            r.completed.len() as u64 >= due,
            "{v:?}: {} < {due}",
            r.completed.len()
        );
        reserved += ran(&sim, v);
    }
    // The hog got the slack, and the device never idled.
    assert_eq!(ran(&sim, &hog) + reserved, horizon);

    // Over-full: 85 % admitted, 95 % capacity.
    let err = p.create_vcoproc(DomainId(1), reserve(11 * MS, 100 * MS));
    assert!(err.is_err(), "an 11 % reservation must be refused");
    let (v0, _) = &vs[0];
    assert!(v0.set_params(reserve(4 * MS, 10 * MS)).is_err(), "105 %");
    assert_eq!(v0.info().unwrap().params, reserve(2 * MS, 10 * MS));
    // Within capacity it is accepted.
    let ok = vc(&p, reserve(10 * MS, 100 * MS), &Workload::default());
    ok.destroy().unwrap();
    p.shutdown();

    // set_policy(rt) over reservations a credit pcoproc holds: refused,
    // and the credit policy stays.
    let sim = Sim::new(SimConfig::default());
    let p = spawn(&sim, credit(1000));
    let a = vc(&p, reserve(6 * MS, 10 * MS), &Workload::hog());
    let b = vc(&p, reserve(4 * MS, 10 * MS), &Workload::hog());
    start_at(&sim, 0, &[&a, &b]);
    sim.run_until(10 * MS).unwrap();
    assert!(p.set_policy(policy("rt", &[])).is_err(), "100 % > 95 %");
    assert_eq!(p.sched_info().policy, "credit");
    sim.run_until(20 * MS).unwrap();
    assert_eq!(ran(&sim, &a) + ran(&sim, &b), 20 * MS);
    // With room it is taken.
    p.set_policy(policy("rt", &[("capacity_pct", "100".into())]))
        .unwrap();
    assert_eq!(p.sched_info().policy, "rt");
    p.shutdown();
}

// ---------------------------------------------------------------------
// 7. Static table
// ---------------------------------------------------------------------

#[test]
fn table_runs_each_window_at_its_offset() {
    let sim = Sim::new(SimConfig::default());
    let p = spawn(
        &sim,
        policy(
            "table",
            &[
                ("frame_us", "10000".into()),
                ("window", "1:0:2000".into()),
                ("window", "2:3000:4000".into()),
                ("fill", "idle".into()),
            ],
        ),
    );
    let a = vc(&p, SchedParams::default(), &Workload::hog());
    let b = vc(&p, SchedParams::default(), &Workload::hog());
    assert_eq!((a.id(), b.id()), (VcoprocId(1), VcoprocId(2)));
    start_at(&sim, 0, &[&a, &b]);
    let frames = 100;
    sim.run_until(frames * 10 * MS).unwrap();
    let trace = p.trace();
    let epoch = trace[0].start_ns;
    assert_eq!(trace[0].vcoproc, a.id());
    let mut per = BTreeMap::new();
    for e in &trace {
        let (off, len) = if e.vcoproc == a.id() {
            (0, 2 * MS)
        } else {
            assert_eq!(e.vcoproc, b.id());
            (3 * MS, 4 * MS)
        };
        let pos = e.start_ns - epoch;
        assert_eq!(pos % (10 * MS), off, "{e:?}");
        assert_eq!((e.ran_ns, e.budget_ns), (len, len), "{e:?}");
        *per.entry(e.vcoproc).or_insert(0u64) += 1;
    }
    // One slice per window per frame; nothing else ran (idle fill).
    let full = (frames * 10 * MS - epoch) / (10 * MS);
    assert!(per[&a.id()] >= full && per[&b.id()] >= full, "{per:?}");
    let busy = p.busy().0;
    assert_eq!(busy, ran(&sim, &a) + ran(&sim, &b));
    assert_eq!(ran(&sim, &a), per[&a.id()] * 2 * MS);
    assert_eq!(ran(&sim, &b), per[&b.id()] * 4 * MS);
    p.shutdown();
}

// ---------------------------------------------------------------------
// 8. Policy switches keep every job
// ---------------------------------------------------------------------

#[test]
fn switching_policy_mid_run_keeps_every_job() {
    let sim = Sim::new(SimConfig::default());
    let p = spawn(&sim, policy("rr", &[("slice_us", "500".into())]));
    // Four finite workloads; v1 also has a reservation for rt, and the
    // table gives each a window.
    let ws: Vec<Workload> = (0..4u64)
        .map(|i| {
            let jobs = (0..200)
                .map(|k| job(k * (1 + i) * 700 * US, (150 + 100 * i) * US))
                .collect();
            Workload {
                exit_when_done: true,
                ..Workload::jobs(jobs)
            }
        })
        .collect();
    let params = [
        reserve(MS, 5 * MS),
        prio(1),
        SchedParams::default(),
        weight(1024),
    ];
    let vs: Vec<VcoprocHandle> = ws
        .iter()
        .zip(params)
        .map(|(w, par)| vc(&p, par, w))
        .collect();
    let refs: Vec<&VcoprocHandle> = vs.iter().collect();
    start_at(&sim, 0, &refs);
    let table = || {
        policy(
            "table",
            &[
                ("frame_us", "8000".into()),
                ("window", "1:0:2000".into()),
                ("window", "2:2000:2000".into()),
                ("window", "3:4000:2000".into()),
                ("window", "4:6000:2000".into()),
                ("fill", "rr".into()),
            ],
        )
    };
    let switches: Vec<(u64, Box<dyn Policy>)> = vec![
        (33 * MS + 17 * US, credit(1000)),
        (81 * MS + 400 * US, policy("priority", &[])),
        (150 * MS, policy("rt", &[])),
        (231 * MS + 1, table()),
        (333 * MS, policy("rr", &[("slice_us", "2000".into())])),
        (400 * MS, credit(300)),
        (470 * MS, policy("rt", &[])),
    ];
    let names: Vec<&str> = switches.iter().map(|(_, p)| p.name()).collect();
    let log = Arc::new(Mutex::new(Vec::new()));
    for (t, pol) in switches {
        let (w, log, s) = (Arc::downgrade(&p), log.clone(), sim.clone());
        sim.at(
            t,
            Box::new(move || {
                if let Some(p) = w.upgrade() {
                    let name = pol.name();
                    let r = p.set_policy(pol).map_err(|e| e.to_string());
                    log.lock().unwrap().push((s.now_ns(), name, r));
                }
            }),
        );
    }
    sim.run_until(2 * S).unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), names.len());
    for ((_, n, r), want) in log.iter().zip(&names) {
        assert_eq!((n, r), (want, &Ok(())));
    }
    assert_eq!(p.sched_info().policy, "rt");
    for (v, w) in vs.iter().zip(&ws) {
        let info = v.info().unwrap();
        assert_eq!(info.state, VcoprocState::Stopped, "{v:?}");
        assert_eq!(info.exit_code, Some(0), "{v:?}");
        assert_eq!(info.stats.faults, 0);
        let r = sim.context(v.id()).unwrap();
        let got: Vec<u64> = r.completed.iter().map(|j| j.arrival_ns).collect();
        assert_eq!(got, arrivals(w), "{v:?}: every job exactly once, in order");
        assert_eq!(r.jobs_done, w.jobs.len() as u64);
        assert!(r.exited && r.faults == 0 && r.resets == 0);
        let work: u64 = w.jobs.iter().map(|j| j.len_ns).sum();
        assert_eq!(ran(&sim, v), work, "{v:?}");
    }
    assert!(p.faults().is_empty());
    p.shutdown();
}

// ---------------------------------------------------------------------
// 9. Parameter changes take effect at the next decision
// ---------------------------------------------------------------------

#[test]
fn parameters_changed_mid_run_take_effect_at_the_next_decision() {
    // credit: weight 256 -> 768 at t; the following second splits 3:1.
    {
        let sim = Sim::new(SimConfig::default());
        let p = spawn(&sim, credit(1000));
        let a = vc(&p, weight(256), &Workload::hog());
        let b = vc(&p, weight(256), &Workload::hog());
        start_at(&sim, 0, &[&a, &b]);
        let t = 200 * MS + 300 * US;
        let a2 = a.clone();
        sim.at(t, Box::new(move || a2.set_params(weight(768)).unwrap()));
        sim.run_until(t).unwrap();
        // Before: even.
        assert_close(ran(&sim, &a), t / 2, 1.0, "a before");
        let got = ran_between(&sim, &[&a, &b], t, t + S);
        assert_close(got[0], 3 * S / 4, 1.0, "a after");
        assert_close(got[1], S / 4, 1.0, "b after");
        p.shutdown();
    }
    // priority: raising c's priority makes it the next pick.
    {
        let sim = Sim::new(SimConfig::default());
        let p = spawn(&sim, policy("priority", &[("slice_us", "1000".into())]));
        let a = vc(&p, prio(0), &Workload::hog());
        let b = vc(&p, prio(0), &Workload::hog());
        let c = vc(&p, prio(0), &Workload::hog());
        start_at(&sim, 0, &[&a, &b, &c]);
        let t = 20 * MS + 400 * US;
        let c2 = c.clone();
        sim.at(t, Box::new(move || c2.set_params(prio(3)).unwrap()));
        // Alone at its level, c runs on an extended budget (100 slices).
        sim.run_until(300 * MS).unwrap();
        let trace = p.trace();
        let k = trace.iter().position(|e| e.start_ns >= t).unwrap();
        // The slice in progress at t finished its turn; from the next
        // decision on, c alone runs.
        assert_eq!(
            trace[k - 1].start_ns + trace[k - 1].ran_ns,
            trace[k].start_ns
        );
        assert!(trace[k].start_ns < t + MS);
        for e in &trace[k..] {
            assert_eq!(e.vcoproc, c.id(), "{e:?}");
        }
        p.shutdown();
    }
    // rt: a reservation changed mid-period applies from the next release.
    {
        let sim = Sim::new(SimConfig::default());
        let p = spawn(&sim, policy("rt", &[]));
        let a = vc(&p, reserve(2 * MS, 10 * MS), &Workload::hog());
        let h = vc(&p, SchedParams::default(), &Workload::hog());
        start_at(&sim, 0, &[&a, &h]);
        let t = 55 * MS;
        let a2 = a.clone();
        sim.at(
            t,
            Box::new(move || a2.set_params(reserve(5 * MS, 10 * MS)).unwrap()),
        );
        sim.run_until(150 * MS).unwrap();
        let trace = p.trace();
        // The grid is anchored where a first became runnable: 0.
        for k in 0..14u64 {
            let got = traced_between(&trace, a.id(), k * 10 * MS, (k + 1) * 10 * MS);
            let want = if k * 10 * MS < t { 2 * MS } else { 5 * MS };
            assert_eq!(got, want, "period {k}");
        }
        p.shutdown();
    }
}

// ---------------------------------------------------------------------
// 10. Scripted switch answers
// ---------------------------------------------------------------------

#[test]
fn retry_after_and_failed_switch_answers_behave_as_documented() {
    for name in ["rr", "credit", "priority"] {
        let sim = Sim::new(SimConfig::default());
        let p = spawn(&sim, policy(name, &[("slice_us", "1000".into())]));
        let finite = |first: u64| Workload {
            exit_when_done: true,
            ..Workload::jobs((0..20).map(|k| job(first + k * 3 * MS, 400 * US)).collect())
        };
        let a = vc(&p, SchedParams::default(), &Workload::hog());
        let (wb, wc) = (finite(1500 * US), finite(10 * MS + 100 * US));
        let b = vc(&p, SchedParams::default(), &wb);
        let c = vc(&p, SchedParams::default(), &wc);
        let d = Duration::from_micros(500);
        sim.answer_switch(b.id(), SwitchOutcome::RetryAfter(d));
        sim.answer_switch(
            c.id(),
            SwitchOutcome::Failed {
                guilty: c.id(),
                reason: "hung".into(),
            },
        );
        start_at(&sim, 0, &[&a]);
        start_at(&sim, 1400 * US, &[&b]);
        start_at(&sim, 10 * MS, &[&c]);
        sim.run_until(200 * MS).unwrap();
        let trace = p.trace();
        // RetryAfter: the slice just before b's first is a's, exactly d
        // long, and b's switch completes at its end.
        let k = trace.iter().position(|e| e.vcoproc == b.id()).unwrap();
        let before = trace[k - 1];
        assert_eq!(before.vcoproc, a.id(), "{name}");
        assert_eq!(
            (before.budget_ns, before.ran_ns),
            (500 * US, 500 * US),
            "{name}"
        );
        assert_eq!(before.start_ns + before.ran_ns, trace[k].start_ns, "{name}");
        let into_b = sim
            .switch_log()
            .into_iter()
            .find(|s| s.to == Some(b.id()))
            .unwrap();
        assert_eq!(
            (into_b.from, into_b.at_ns),
            (Some(a.id()), trace[k].start_ns)
        );
        // Failed: c is faulted for the switch and its context was reset.
        assert_eq!(c.state().unwrap(), VcoprocState::Faulted, "{name}");
        let f = c.faults().unwrap().pop().unwrap();
        assert_eq!(f.fault.reason, FaultReason::SwitchFailed("hung".into()));
        let rc = sim.context(c.id()).unwrap();
        assert_eq!((rc.resets, rc.switches_in, rc.ran_ns), (1, 0, 0), "{name}");
        // The others go on: b completes every job, a gets the rest.
        let rb = sim.context(b.id()).unwrap();
        let got: Vec<u64> = rb.completed.iter().map(|j| j.arrival_ns).collect();
        assert_eq!(got, arrivals(&wb), "{name}");
        assert_eq!(b.info().unwrap().exit_code, Some(0), "{name}");
        assert_eq!(ran(&sim, &a) + ran(&sim, &b), 200 * MS, "{name}");
        assert_eq!(a.info().unwrap().stats.faults, 0);
        p.shutdown();
    }
}

// ---------------------------------------------------------------------
// 11. Scale
// ---------------------------------------------------------------------

#[test]
fn a_hundred_thousand_vcoprocs_on_one_pcoproc() {
    const N: u64 = 100_000;
    const JOB: u64 = 10 * US;
    let cfg = SimConfig {
        max_contexts: N as u32 + 1,
        ..SimConfig::default()
    };
    let sim = Sim::new(cfg);
    let p = sim
        .spawn("sim0", policy("rr", &[("slice_us", "100".into())]))
        .unwrap();
    let w = Workload {
        exit_when_done: true,
        ..Workload::jobs(vec![job(0, JOB)])
    };
    let image = w.to_image();
    let t = Instant::now();
    let vs: Vec<VcoprocHandle> = (0..N)
        .map(|_| {
            let v = p
                .create_vcoproc(DomainId(1), SchedParams::default())
                .unwrap();
            v.load_firmware("one", &image).unwrap();
            v
        })
        .collect();
    let created = t.elapsed();
    eprintln!("{N} vcoprocs created and loaded in {created:?}");
    let refs: Vec<&VcoprocHandle> = vs.iter().collect();
    start_at(&sim, 0, &refs);
    let t = Instant::now();
    sim.run_until(N * JOB).unwrap();
    let ran_for = t.elapsed();
    eprintln!("{N} vcoprocs ran in {ran_for:?}");
    for v in &vs {
        let r = sim.context(v.id()).unwrap();
        assert_eq!(r.completed.len(), 1, "{v:?}");
        assert!(r.exited, "{v:?}");
        assert_eq!(r.ran_ns, JOB);
        let info = v.info().unwrap();
        assert_eq!((info.stats.run_ns, info.exit_code), (JOB, Some(0)));
        assert_eq!(info.state, VcoprocState::Stopped);
    }
    assert_eq!(p.busy().0, N * JOB);
    p.shutdown();
}

/// `RetryAfter(d)` while no context is on the device (the first switch,
/// or right after a failed one): the runner idles `d`, then switches.
#[test]
fn retry_after_with_no_context_on_the_device_waits_its_delay() {
    for name in ["rr", "credit"] {
        // The first switch of all.
        let sim = Sim::new(SimConfig::default());
        let p = spawn(&sim, policy(name, &[("slice_us", "1000".into())]));
        let b = vc(&p, SchedParams::default(), &Workload::hog());
        sim.answer_switch(
            b.id(),
            SwitchOutcome::RetryAfter(Duration::from_micros(500)),
        );
        start_at(&sim, MS, &[&b]);
        sim.run_until(10 * MS).unwrap();
        let log = sim.switch_log();
        assert_eq!(
            (log[0].to, log[0].at_ns),
            (Some(b.id()), 1500 * US),
            "{name}"
        );
        p.shutdown();
    }
    // Right after a failed switch left the device empty (FIFO policies, so
    // the failing vcoproc is picked before the refused one).
    for name in ["rr", "priority"] {
        let sim = Sim::new(SimConfig::default());
        let p = spawn(&sim, policy(name, &[("slice_us", "1000".into())]));
        let a = vc(&p, SchedParams::default(), &Workload::hog());
        let b = vc(&p, SchedParams::default(), &Workload::hog());
        let c = vc(&p, SchedParams::default(), &Workload::hog());
        sim.answer_switch(
            c.id(),
            SwitchOutcome::Failed {
                guilty: c.id(),
                reason: "hung".into(),
            },
        );
        sim.answer_switch(
            b.id(),
            SwitchOutcome::RetryAfter(Duration::from_micros(500)),
        );
        start_at(&sim, 0, &[&a]);
        start_at(&sim, 1400 * US, &[&c, &b]);
        sim.run_until(10 * MS).unwrap();
        let f = c.faults().unwrap().pop().unwrap();
        let into_b = sim
            .switch_log()
            .into_iter()
            .find(|s| s.to == Some(b.id()))
            .unwrap();
        assert!(
            into_b.at_ns >= f.at_ns + 500 * US,
            "{name}: switch failed at {} ns, RetryAfter(500 us), yet b was switched in at {} ns; {:?}",
            f.at_ns,
            into_b.at_ns,
            sim.switch_log()
        );
        p.shutdown();
    }
}
