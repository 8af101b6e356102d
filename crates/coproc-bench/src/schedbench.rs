//! Scheduler benchmarks on the real mcu device: `fairness`, `cap`,
//! `preempt`, and `sched-scale` (the policies' decision cost).

use anyhow::{bail, Context};
use coproc_core::pcoproc::TraceEntry;
use coproc_core::policy::{self, Decision, Policy, SchedParams, SliceEnd};
use coproc_core::state::VcoprocState;
use coproc_core::{DomainId, Pcoproc, VcoprocHandle, VcoprocId};
use coproc_firmware::{ECHO, HOG};
use coproc_mcu::{factory, McuConfig};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Figures of one benchmark.
pub type Figures = BTreeMap<String, f64>;

fn kv(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// An mcu pcoproc under `policy` with tracing on.
fn pcoproc(policy: &str, params: &[(&str, &str)]) -> anyhow::Result<Arc<Pcoproc>> {
    let p = policy::build(policy, &kv(params))?;
    let pc = Pcoproc::spawn("bench0", factory(McuConfig::default()), p)?;
    pc.set_trace(4 << 20);
    Ok(pc)
}

/// A vcoproc of domain `d` running `fw`, started.
fn vcoproc(
    pc: &Arc<Pcoproc>,
    d: u32,
    fw: coproc_firmware::Firmware,
    params: SchedParams,
) -> anyhow::Result<VcoprocHandle> {
    let v = pc.create_vcoproc(DomainId(d), params)?;
    v.load_firmware(fw.name, fw.elf)?;
    v.start()?;
    Ok(v)
}

/// Device time of each vcoproc in `[from, to)` from the trace, slices cut
/// at the window's edges.
fn time_in(trace: &[TraceEntry], from: u64, to: u64) -> BTreeMap<VcoprocId, u64> {
    let mut out = BTreeMap::new();
    for e in trace {
        let (s, t) = (e.start_ns, e.start_ns + e.ran_ns);
        let ov = t.min(to).saturating_sub(s.max(from));
        if ov > 0 {
            *out.entry(e.vcoproc).or_insert(0) += ov;
        }
    }
    out
}

/// Share of each vcoproc in each `window` from `t0` over `n` windows.
fn window_shares(
    trace: &[TraceEntry],
    t0: u64,
    window: u64,
    n: u64,
) -> Vec<BTreeMap<VcoprocId, f64>> {
    (0..n)
        .map(|k| {
            let m = time_in(trace, t0 + k * window, t0 + (k + 1) * window);
            let total: u64 = m.values().sum();
            m.into_iter()
                .map(|(v, ns)| (v, ns as f64 / total.max(1) as f64))
                .collect()
        })
        .collect()
}

/// Three hog domains with weights 1:2:4 under `credit`; the share of each in
/// every second, against 1/7, 2/7, 4/7.
pub fn fairness(seconds: u64) -> anyhow::Result<Figures> {
    let pc = pcoproc("credit", &[])?;
    let weights = [1u32, 2, 4];
    let mut vs = Vec::new();
    for (i, w) in weights.iter().enumerate() {
        let params = SchedParams {
            weight: 256 * w,
            ..SchedParams::default()
        };
        vs.push(vcoproc(&pc, i as u32 + 1, HOG, params)?);
    }
    // Let the hogs settle, then measure whole windows.
    std::thread::sleep(Duration::from_millis(200));
    let t0 = pc.now_ns();
    // Work done: each hog's progress counter (iterations / 2^16, modulo
    // 2^16) read at every window's edge.
    let progress = || vs.iter().map(|v| v.mbox_read(0)).collect::<Vec<u32>>();
    let start = Instant::now();
    let mut marks = vec![progress()];
    for k in 1..=seconds {
        let edge = start + Duration::from_secs(k);
        std::thread::sleep(edge.saturating_duration_since(Instant::now()));
        marks.push(progress());
    }
    std::thread::sleep(Duration::from_millis(50));
    let trace = pc.trace();
    let sum: u32 = weights.iter().sum();
    let work: Vec<BTreeMap<VcoprocId, f64>> = marks
        .windows(2)
        .map(|m| {
            let done: Vec<u32> = m[1]
                .iter()
                .zip(&m[0])
                // The counter is a u32 iteration count shifted right by
                // 16, so it wraps at 2^16: a window holds far fewer.
                .map(|(b, a)| b.wrapping_sub(*a) & 0xFFFF)
                .collect();
            let total: u64 = done.iter().map(|&d| u64::from(d)).sum();
            vs.iter()
                .zip(done)
                .map(|(v, d)| (v.id(), f64::from(d) / total.max(1) as f64))
                .collect()
        })
        .collect();
    let charged = window_shares(&trace, t0, 1_000_000_000, seconds);
    for (v, w) in vs.iter().zip(weights) {
        let per_window: Vec<f64> = charged
            .iter()
            .map(|m| m.get(&v.id()).copied().unwrap_or(0.0))
            .collect();
        crate::samples::record(
            &format!("weight_{w}_charged"),
            crate::samples::Kind::Share,
            &per_window,
        );
    }
    // (max, mean) of |share - w/7| / (w/7) over windows and vcoprocs.
    let errors = |shares: &[BTreeMap<VcoprocId, f64>]| -> (f64, f64) {
        let (mut max_err, mut mean_err): (f64, f64) = (0.0, 0.0);
        for w in shares {
            for (v, want) in vs.iter().zip(weights) {
                let want = f64::from(want) / f64::from(sum);
                let got = w.get(&v.id()).copied().unwrap_or(0.0);
                let err = (got - want).abs() / want * 100.0;
                max_err = max_err.max(err);
                mean_err += err / (shares.len() * vs.len()).max(1) as f64;
            }
        }
        (max_err, mean_err)
    };
    let (max_err, mean_err) = errors(&work);
    let (max_charged, mean_charged) = errors(&charged);
    // The hogs really computed: each published progress and still runs.
    for v in &vs {
        if v.mbox_read(0) == 0 || v.info()?.stats.faults > 0 {
            bail!("hog {} made no progress or faulted", v.id());
        }
    }
    let busy = time_in(&trace, t0, t0 + seconds * 1_000_000_000)
        .values()
        .sum::<u64>() as f64
        / (seconds * 1_000_000_000) as f64;
    pc.shutdown();
    let mut f = Figures::new();
    f.insert("max_error_pct".into(), crate::figures::round3(max_charged));
    f.insert(
        "mean_error_pct".into(),
        crate::figures::round3(mean_charged),
    );
    f.insert("max_error_work_pct".into(), crate::figures::round3(max_err));
    f.insert(
        "mean_error_work_pct".into(),
        crate::figures::round3(mean_err),
    );
    f.insert("windows".into(), work.len() as f64);
    f.insert(
        "device_busy_pct".into(),
        crate::figures::round3(busy * 100.0),
    );
    Ok(f)
}

/// One hog capped at 30 % alone on the device under `credit`.
pub fn cap(seconds: u64) -> anyhow::Result<Figures> {
    let pc = pcoproc("credit", &[])?;
    let params = SchedParams {
        cap_pct: Some(30),
        ..SchedParams::default()
    };
    let _v = vcoproc(&pc, 1, HOG, params)?;
    std::thread::sleep(Duration::from_millis(200));
    let t0 = pc.now_ns();
    std::thread::sleep(Duration::from_secs(seconds) + Duration::from_millis(50));
    let trace = pc.trace();
    let span = seconds * 1_000_000_000;
    let total: u64 = time_in(&trace, t0, t0 + span).values().sum();
    let windows = window_shares_abs(&trace, t0, 1_000_000_000, seconds);
    pc.shutdown();
    let as_share: Vec<f64> = windows.iter().map(|pct| pct / 100.0).collect();
    crate::samples::record("capped_hog", crate::samples::Kind::Share, &as_share);
    let mut f = Figures::new();
    f.insert(
        "achieved_pct".into(),
        crate::figures::round3(total as f64 / span as f64 * 100.0),
    );
    f.insert(
        "window_min_pct".into(),
        crate::figures::round3(windows.iter().copied().fold(f64::MAX, f64::min)),
    );
    f.insert(
        "window_max_pct".into(),
        crate::figures::round3(windows.iter().copied().fold(0.0, f64::max)),
    );
    f.insert("target_pct".into(), 30.0);
    Ok(f)
}

/// Percent of each window the device ran anything.
fn window_shares_abs(trace: &[TraceEntry], t0: u64, window: u64, n: u64) -> Vec<f64> {
    (0..n)
        .map(|k| {
            let busy: u64 = time_in(trace, t0 + k * window, t0 + (k + 1) * window)
                .values()
                .sum();
            busy as f64 / window as f64 * 100.0
        })
        .collect()
}

/// A high-priority echo domain's wake→run latency while two low-priority
/// hogs saturate the device under `priority`.
pub fn preempt(messages: usize) -> anyhow::Result<Figures> {
    let pc = pcoproc("priority", &[])?;
    let low = SchedParams::default();
    let _h1 = vcoproc(&pc, 1, HOG, low)?;
    let _h2 = vcoproc(&pc, 2, HOG, low)?;
    let high = SchedParams {
        priority: 10,
        ..SchedParams::default()
    };
    let echo = vcoproc(&pc, 3, ECHO, high)?;
    let mut rtt = Vec::with_capacity(messages);
    let mut seen = echo.last_notify().seq;
    for i in 0..messages as u32 {
        // Each message wakes a parked echo: one traced wake-up each.
        echo.wait_state(|s| s == VcoprocState::Waiting, Duration::from_secs(5))
            .context("echo did not park")?;
        echo.mbox_write(0, i.wrapping_mul(2_654_435_761));
        let t = Instant::now();
        echo.doorbell();
        let n = echo
            .wait_notify(seen, Duration::from_secs(5))
            .context("echo did not answer")?;
        rtt.push(t.elapsed().as_secs_f64() * 1e6);
        seen = n.seq;
        if echo.mbox_read(0) != i.wrapping_mul(2_654_435_761) {
            bail!("echo answered {} for message {i}", echo.mbox_read(0));
        }
        // Let the hogs have the device again between messages.
        std::thread::sleep(Duration::from_micros(500));
    }
    let mut waits: Vec<f64> = pc
        .trace()
        .iter()
        .filter(|e| e.vcoproc == echo.id())
        .filter_map(|e| e.waited_ns)
        .map(|w| w as f64 / 1000.0)
        .collect();
    // The first entry is the start, not a message.
    if waits.len() < messages {
        bail!(
            "only {} wake-ups traced for {messages} messages",
            waits.len()
        );
    }
    let waits = waits.split_off(waits.len() - messages);
    pc.shutdown();
    crate::samples::record(
        "doorbell_to_slice_us",
        crate::samples::Kind::LatencyUs,
        &waits,
    );
    crate::samples::record("round_trip_us", crate::samples::Kind::LatencyUs, &rtt);
    let mut f = Figures::new();
    f.insert(
        "p50_us".into(),
        crate::figures::round3(percentile(&waits, 50.0)),
    );
    f.insert(
        "p99_us".into(),
        crate::figures::round3(percentile(&waits, 99.0)),
    );
    f.insert(
        "max_us".into(),
        crate::figures::round3(percentile(&waits, 100.0)),
    );
    f.insert(
        "round_trip_p50_us".into(),
        crate::figures::round3(percentile(&rtt, 50.0)),
    );
    f.insert(
        "round_trip_p99_us".into(),
        crate::figures::round3(percentile(&rtt, 99.0)),
    );
    f.insert("messages".into(), messages as f64);
    Ok(f)
}

/// The `p` percentile (0..=100) of unsorted samples.
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    crate::figures::percentile(&v, p / 100.0)
}

/// Decision cost of each policy (pick + charge of one slice) with `n`
/// runnable vcoprocs, in ns.
fn decision_ns(name: &str, n: u32, rounds: usize) -> anyhow::Result<f64> {
    let params: Vec<(String, String)> = match name {
        "table" => {
            // One 10 µs window per vcoproc in a frame that holds them all.
            let frame = u64::from(n) * 10;
            let mut p = vec![("frame_us".to_string(), frame.to_string())];
            p.extend((0..n).map(|i| {
                (
                    "window".to_string(),
                    format!("{}:{}:10", i + 1, u64::from(i) * 10),
                )
            }));
            p
        }
        _ => vec![],
    };
    let mut pol = policy::build(name, &params)?;
    for i in 1..=n {
        let params = SchedParams {
            weight: 1 + (i % 7) * 100,
            priority: (i % 4) as i32,
            ..SchedParams::default()
        };
        pol.attach(VcoprocId(i), &params)?;
        pol.wake(VcoprocId(i), 0);
    }
    let steps = 20_000usize;
    let mut now = 0u64;
    let mut per = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..steps {
            now = step(pol.as_mut(), now);
        }
        per.push(t.elapsed().as_nanos() as f64 / steps as f64);
    }
    Ok(crate::figures::median(per))
}

/// One decision: pick, "run" 10 µs (or idle until told), charge.
fn step(pol: &mut dyn Policy, now: u64) -> u64 {
    match pol.pick(now) {
        Decision::Run { vcoproc, budget } => {
            let ran = budget.min(Duration::from_micros(10));
            let now = now + ran.as_nanos() as u64;
            pol.charge(
                vcoproc,
                ran,
                now,
                SliceEnd {
                    runnable: true,
                    preempted: false,
                    waiting: false,
                },
            );
            now
        }
        Decision::Idle(t) => now + t.map_or(1_000, |t| t.as_nanos() as u64).max(1),
    }
}

/// Decision cost with 10, 1 000 and 100 000 runnable vcoprocs per policy.
pub fn sched_scale(rounds: usize) -> anyhow::Result<Figures> {
    let mut f = Figures::new();
    for name in policy::POLICIES {
        for (n, key) in [
            (10u32, "_pick_ns_10"),
            (1000, "_pick_ns_1000"),
            (100_000, "_pick_ns_100000"),
        ] {
            let ns = decision_ns(name, n, rounds)?;
            f.insert(format!("{name}{key}"), crate::figures::round3(ns));
        }
    }
    // The headline keys: the credit policy (the fair-share default).
    for n in ["10", "1000", "100000"] {
        let v = f[&format!("credit_pick_ns_{n}")];
        f.insert(format!("pick_ns_{n}"), v);
    }
    Ok(f)
}

/// Notes printed under each table.
pub const FAIRNESS_NOTES: &str = "Three hog vcoprocs (one per domain) with weights 1:2:4 under credit \
(slice 1 ms) on one mcu pcoproc. max_error_pct / mean_error_pct: from the device time the \
scheduler charged (the runner's trace, slices cut at window edges; on the mcu, runner CPU time): \
the largest (mean) |share - w/7| / (w/7) over 1 s windows and vcoprocs. max_error_work_pct / \
mean_error_work_pct: what each vcoproc actually got, measured as work done: the share of each hog's iterations (its progress counter, read at the edges \
of 1 s windows) against w/7, the largest (mean) |share - w/7| / (w/7) over windows and vcoprocs \
(it also moves with the emulator's speed, which a busy host varies from slice to slice). \
device_busy_pct: \
charged time over the wall time of the windows (below 100 when the host takes the runner's CPU).";
/// Notes for `cap`.
pub const CAP_NOTES: &str =
    "One hog capped at 30 % under credit (cap period 10 ms), alone on an mcu \
pcoproc; achieved_pct: its device time over the wall time of the measurement.";
/// Notes for `preempt`.
pub const PREEMPT_NOTES: &str = "Two priority-0 hogs saturate an mcu pcoproc under priority; an echo \
vcoproc at priority 10 gets a message every ~0.5 ms. p50/p99_us: from its doorbell (the wake-up) to \
the start of its slice on the device, from the runner's trace. round_trip_*: doorbell to notification \
as the domain thread sees it.";
/// Notes for `sched-scale`.
pub const SCALE_NOTES: &str = "Cost of one scheduling decision (pick, then charge of a 10 µs slice) \
of each policy with 10, 1 000 and 100 000 runnable vcoprocs, timed on the policy alone (an mcu \
pcoproc cannot hold 100 000 contexts: each has private code and data pages; 100 000 vcoprocs on one \
pcoproc are exercised on the simulated device by the tests). pick_ns_*: credit.";
