//! `coproc bench faults`: a victim's device throughput against its fair
//! share while an offender on the same pcoproc faults, hangs, loads
//! corrupt firmware, is killed mid-job or has its mappings revoked
//! mid-job. One private `coprocd`, `credit` with equal weights; the victim
//! computes without pause and checks its results throughout. Baseline
//! phases (the victim alone) and offender phases are interleaved in
//! rotating order over `--rounds` rounds. The offenders are
//! [`crate::offender`]'s, shared with `bench isolation`.

use crate::offender::{
    calibrate, spin_job, spin_vcoproc, Ctx, Kind, Offender, GPU, MCU, SAMPLE, SPIN_N, SPIN_OUT,
    STEP, WATCHDOG_MS,
};
use anyhow::{anyhow, bail, Context};
use coproc_client::Client;
use coproc_firmware::{reference, HOG};
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Notes printed under the table.
pub const NOTES: &str = "A private coprocd: one mcu pcoproc and, where a Vulkan device is found, \
one vulkan pcoproc (watchdog 250 ms, idle window idle_us 5000: its jobs cannot be preempted), both \
credit with 5 ms slices, every vcoproc weight 256; \
figures prefixed mcu_ and gpu_. Victim (mcu): hog, computing without pause; every 10 ms its \
progress and LCG state are read and checked against the host reference (victim_errors: wrong \
states, failed requests, no progress for 5 s). Victim (gpu): spin jobs over 8192 invocations \
(the shortest power-of-two iteration count whose round trip alone takes 2 ms or more), two in \
flight, each output checked against the host reference. victim_rate_alone: its work per second \
in the baseline phases (alone on the pcoproc). Fair share = victim_rate_alone x 1/2 (its weight \
over the sum of both weights: what credit guarantees it while the offender is runnable all the \
time; more is fine when the offender is not). victim_share_ratio_<kind> = its rate in the phases \
of offender <kind> / its fair share (pooled over rounds; _min: the worst single phase). \
Offenders, each its own session on the victim's pcoproc: fault (mcu: faulty started, faults, \
reset; gpu: a dispatch on a revoked binding faults, reset), hang (mcu: hog ignoring a doorbell \
for 100 ms, then stop, reset; gpu: a spin job that runs past the watchdog, doubled until it \
does, but ends: the vcoproc faults, the device is recreated, reset, restart), corrupt (loads of \
corrupt firmware images, each refused), kill (mcu: an isolation-child process with 4 busy qecho \
queues SIGKILLed; gpu: a session closing its connection with spin jobs in flight), revoke (mcu: \
scribble using a revocable mapping placed in the control block's engine TLB slot, which makes \
every TLB flush costly, revoked mid-pass, faults, reset); controls, not counted in \
the minimum: hog (a well-behaved competitor always runnable: what an exactly fair half measures \
as here) and cpu (a thread keeping one host CPU busy, no request). victim_min_share_ratio: the \
lowest victim_share_ratio_<kind> of the fault kinds, mcu and gpu together. offender_ops_<kind>: \
operations the offender completed in its phases. victim_errors = failures = mcu_victim_errors + \
gpu_victim_errors.";

/// Length of one phase.
const PHASE: Duration = Duration::from_secs(1);
/// Length of one GPU phase.
const GPU_PHASE: Duration = Duration::from_secs(2);
/// Victim errors printed (the rest are only counted).
const SHOWN_ERRORS: u64 = 5;
/// No progress for this long counts as a victim error.
const STUCK: Duration = Duration::from_secs(5);
/// Which device classes to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Class {
    /// mcu, and the GPU where a Vulkan device is present.
    All,
    /// The mcu only.
    Mcu,
    /// The GPU only (fails without a Vulkan device).
    Gpu,
}

/// A victim computing on its own thread: `work` counts what it has done
/// (mcu: hog progress in units of 2^16 iterations; GPU: checked jobs).
struct Victim {
    stop: Arc<AtomicBool>,
    work: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Victim {
    fn spawn(
        name: &'static str,
        mut step: impl FnMut() -> Result<u64, String> + Send + 'static,
    ) -> anyhow::Result<Victim> {
        let stop = Arc::new(AtomicBool::new(false));
        let work = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let (s, w, e) = (stop.clone(), work.clone(), errors.clone());
        let thread = std::thread::Builder::new()
            .name(format!("{name}victim"))
            .spawn(move || {
                while !s.load(Ordering::Acquire) {
                    match step() {
                        Ok(n) => {
                            w.fetch_add(n, Ordering::AcqRel);
                        }
                        Err(msg) => {
                            if e.fetch_add(1, Ordering::AcqRel) < SHOWN_ERRORS {
                                eprintln!("faults: {name}victim: {msg}");
                            }
                        }
                    }
                }
            })?;
        Ok(Victim {
            stop,
            work,
            errors,
            thread,
        })
    }

    fn work(&self) -> u64 {
        self.work.load(Ordering::Acquire)
    }

    fn finish(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Release);
        self.thread
            .join()
            .map_err(|_| anyhow!("the victim panicked"))?;
        Ok(self.errors.load(Ordering::Acquire))
    }
}

/// The mcu victim: hog, sampled every [`SAMPLE`]; each sample's LCG state
/// is checked against the host reference for the progress read (or a
/// neighbour: the two words are written one after the other).
fn mcu_victim(socket: &Path) -> anyhow::Result<Victim> {
    let mut c = Client::connect_to(socket)?;
    let v = c.open(MCU)?;
    c.load_firmware(v, HOG.name, HOG.elf)?;
    c.start(v)?;
    let mut last: Option<u32> = None;
    let mut since = Instant::now();
    Victim::spawn("mcu_", move || {
        std::thread::sleep(SAMPLE);
        let (words, _) = c.mbox_read(v).map_err(|e| format!("mailbox: {e}"))?;
        let (done, state) = (words[0], words[1]);
        if last == Some(done) && since.elapsed() > STUCK {
            // Say what the daemon thinks of the victim.
            since = Instant::now();
            let info = c
                .query(v)
                .map_or_else(|e| e.to_string(), |i| format!("{i:?}"));
            return Err(format!("no progress for {STUCK:?} at {done}: {info}"));
        }
        if last != Some(done) {
            since = Instant::now();
        }
        if done != 0 && !reference::hog_state_between(done, state, done) {
            // The daemon reads the words one by one while hog runs: read
            // the progress again to bound what may have passed meanwhile.
            let (again, _) = c.mbox_read(v).map_err(|e| format!("mailbox: {e}"))?;
            if !reference::hog_state_between(done, state, again[0]) {
                return Err(format!(
                    "LCG state {state:#x} after {done} to {} x 2^16 steps",
                    again[0]
                ));
            }
        }
        // The progress word counts 2^32 iterations around (16 bits).
        let n = last.map_or(0, |l| u64::from(done.wrapping_sub(l) & 0xffff));
        last = Some(done);
        Ok(n)
    })
}
/// offender's operations.
/// The GPU victim: spin jobs, two in flight on two output buffers, each
/// output checked against the host reference before its buffer is reused.
fn gpu_victim(socket: &Path) -> anyhow::Result<Victim> {
    let (mut c, v, mut q, outs) = spin_vcoproc(socket, 2)?;
    let iters = calibrate(&mut q)?;
    let len = 4 * u64::from(SPIN_N);
    let mut seed = 1000u32;
    let mut flight: VecDeque<(u32, usize, u32)> = VecDeque::new();
    Victim::spawn("gpu_", move || {
        while flight.len() < outs.len() {
            let buf = (0..outs.len())
                .find(|b| flight.iter().all(|&(_, f, _)| f != *b))
                .unwrap_or(0);
            seed = seed.wrapping_add(1);
            let out = SPIN_OUT + buf as u64 * len;
            let tag = q
                .submit_job(&spin_job(iters, seed, out))
                .map_err(|e| format!("job {seed}: {e}"))?;
            flight.push_back((tag, buf, seed));
        }
        let Some((tag, buf, seed)) = flight.pop_front() else {
            return Ok(0);
        };
        if let Err(e) = q.wait_job(tag, STEP) {
            // Say what the daemon thinks of the victim.
            let state = c.query(v).map_or_else(|e| e.to_string(), |i| i.state);
            return Err(format!("job {tag}: {e} (vcoproc {state})"));
        }
        let got = outs[buf]
            .read_vec(0, len as usize)
            .map_err(|e| format!("job {tag}: {e}"))?;
        let want = reference::spin(seed, iters, SPIN_N as usize);
        if got
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .ne(want)
        {
            return Err(format!("job {tag}: output differs from the host reference"));
        }
        Ok(1)
    })
}

/// Per kind: the victim's work and time, each phase's rate, the
/// offender's operations.
#[derive(Default)]
struct Tally {
    work: u64,
    secs: f64,
    rates: Vec<f64>,
    ops: u64,
}

/// Interleaved phases of `kinds` (the first `Baseline`), `rounds` rounds
/// of `phase` each; figures prefixed with `prefix`. Returns the victim's
/// errors and the lowest share ratio of the fault kinds.
fn phases(
    victim: Victim,
    kinds: &[Kind],
    rounds: usize,
    phase: Duration,
    ctx: &Arc<Ctx>,
    prefix: &str,
    m: &mut BTreeMap<String, f64>,
) -> anyhow::Result<(u64, f64)> {
    // Warm up: translation caches, pipelines, the daemon's threads.
    let w0 = victim.work();
    let deadline = Instant::now() + STEP;
    while victim.work() == w0 && Instant::now() < deadline {
        std::thread::sleep(SAMPLE);
    }
    let mut tally: Vec<Tally> = kinds.iter().map(|_| Tally::default()).collect();
    for round in 0..rounds {
        for k in 0..kinds.len() {
            let idx = (k + round) % kinds.len();
            let kind = kinds[idx];
            let offender = match kind {
                Kind::Baseline => None,
                _ => Some(Offender::start(kind, ctx)?),
            };
            let ops0 = offender.as_ref().map_or(0, Offender::ops);
            let (w0, t0) = (victim.work(), Instant::now());
            std::thread::sleep(phase);
            let (w1, secs) = (victim.work(), t0.elapsed().as_secs_f64());
            let t = &mut tally[idx];
            if let Some(o) = offender {
                t.ops += o.ops() - ops0;
                o.finish(kind)?;
            }
            t.work += w1 - w0;
            t.secs += secs;
            t.rates.push((w1 - w0) as f64 / secs);
        }
    }
    let errors = victim.finish()?;
    let alone = tally[0].work as f64 / tally[0].secs;
    let fair = alone / 2.0;
    let r3 = crate::figures::round3;
    m.insert(format!("{prefix}victim_rate_alone"), r3(alone));
    let mut rates = tally[0].rates.clone();
    rates.sort_by(f64::total_cmp);
    m.insert(
        format!("{prefix}victim_rate_alone_min"),
        r3(rates.first().copied().unwrap_or(f64::NAN)),
    );
    let mut worst = f64::NAN;
    for (kind, t) in kinds.iter().zip(&tally).skip(1) {
        let n = kind.name();
        let ratio = t.work as f64 / t.secs / fair;
        let min = t.rates.iter().copied().fold(f64::INFINITY, f64::min) / fair;
        m.insert(format!("{prefix}victim_share_ratio_{n}"), r3(ratio));
        m.insert(format!("{prefix}victim_share_ratio_{n}_min"), r3(min));
        m.insert(format!("{prefix}offender_ops_{n}"), t.ops as f64);
        if !matches!(kind, Kind::Hog | Kind::GpuHog | Kind::Cpu)
            && (worst.is_nan() || ratio < worst)
        {
            worst = ratio;
        }
    }
    m.insert(format!("{prefix}victim_min_share_ratio"), r3(worst));
    m.insert(format!("{prefix}victim_errors"), errors as f64);
    Ok((errors, worst))
}

/// The benchmark. Returns its figures and, when the GPU was measured, its
/// name.
pub fn faults(
    rounds: usize,
    class: Class,
) -> anyhow::Result<(BTreeMap<String, f64>, Option<String>)> {
    let load0 = crate::hostload::loadavg_1m().unwrap_or(f64::NAN);
    let gpu_skipped = match class {
        Class::Mcu => Some("--class mcu".to_string()),
        _ => coproc_vulkan::probe()
            .err()
            .map(|e| format!("no Vulkan device: {e}")),
    };
    if class == Class::Gpu {
        if let Some(why) = &gpu_skipped {
            bail!("bench faults --class gpu: {why}");
        }
    }
    let gpu = gpu_skipped.is_none();
    let mut config = format!(
        "[[pcoproc]]\nname = \"{MCU}\"\nclass = \"mcu\"\npolicy = \"credit\"\n\
         policy_params = {{ slice_us = 5000 }}\noptions = {{ max_contexts = 1024 }}\n\n"
    );
    if gpu {
        config += &format!(
            "[[pcoproc]]\nname = \"{GPU}\"\nclass = \"vulkan\"\npolicy = \"credit\"\n\
             policy_params = {{ slice_us = 5000, idle_us = 5000 }}\noptions = {{ watchdog_ms = {WATCHDOG_MS} }}\n\n"
        );
    }
    config += &crate::offender::open_rule(gpu);
    let daemon = crate::spawn::TempDaemon::start(&config)?;
    let ctx = Arc::new(Ctx {
        socket: daemon.socket.clone(),
        elf: Vec::new(),
        shader: Vec::new(),
    });
    let rounds = rounds.max(1);
    let mut m = BTreeMap::new();
    let (mut failures, mut worst) = (0u64, f64::NAN);
    let mut min = |w: f64| {
        if worst.is_nan() || w < worst {
            worst = w;
        }
    };
    if class != Class::Gpu {
        let kinds = [
            Kind::Baseline,
            Kind::Hog,
            Kind::Fault,
            Kind::Hang,
            Kind::Corrupt,
            Kind::Kill,
            Kind::Revoke,
            Kind::Cpu,
        ];
        let victim = mcu_victim(&daemon.socket)?;
        let (e, w) =
            phases(victim, &kinds, rounds, PHASE, &ctx, "mcu_", &mut m).context("mcu phases")?;
        failures += e;
        min(w);
    }
    let mut model = None;
    if let Some(why) = gpu_skipped {
        eprintln!("faults: GPU part skipped: {why}");
    } else {
        let mut c = Client::connect_to(&daemon.socket)?;
        let name = c
            .list_coprocs()?
            .into_iter()
            .find(|p| p.name == GPU)
            .map(|p| p.model)
            .with_context(|| format!("the daemon does not list {GPU}"))?;
        eprintln!("faults: GPU part on {name}");
        model = Some(name);
        let kinds = [
            Kind::Baseline,
            Kind::GpuHog,
            Kind::GpuFault,
            Kind::GpuHang,
            Kind::GpuCorrupt,
            Kind::GpuKill,
            Kind::Cpu,
        ];
        let victim = gpu_victim(&daemon.socket)?;
        let (e, w) = phases(victim, &kinds, rounds, GPU_PHASE, &ctx, "gpu_", &mut m)
            .context("GPU phases")?;
        failures += e;
        min(w);
    }
    m.insert(
        "victim_min_share_ratio".into(),
        crate::figures::round3(worst),
    );
    m.insert("victim_errors".into(), failures as f64);
    m.insert("failures".into(), failures as f64);
    m.insert("loadavg_1m_start".into(), load0);
    Ok((m, model))
}
