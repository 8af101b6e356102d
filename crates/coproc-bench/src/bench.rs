//! `coproc bench NAME`: programs that measure, side by side in one run, and
//! print a table or one JSON object `{"bench", "figures", "env"}`.

use crate::figures::{median, round3};
use crate::output::{print_table, Format};
use anyhow::{bail, Context};
use coproc_core::control::ControlBlock;
use coproc_core::device::{ContextSpec, Device, StopReason};
use coproc_core::iova::{MapKind, Mapping};
use coproc_core::memory::Region;
use coproc_core::policy::{RoundRobin, SchedParams};
use coproc_core::{DomainId, Pcoproc, VcoprocId};
use coproc_firmware::drive::{self, bytes_to_samples, samples_to_bytes, Buffer};
use coproc_firmware::reference::{self, TestRng};
use coproc_firmware::{ECHO, FIR};
use coproc_mcu::baseline::{Bare, Translation};
use coproc_mcu::{factory, McuConfig, McuDevice};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `coproc bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which benchmark.
    #[arg(value_enum)]
    name: Name,
    /// Measurement rounds (the median is reported).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Length of the fairness and gpu-fairness (default 10) and cap
    /// (default 5) runs.
    #[arg(long)]
    seconds: Option<u64>,
    /// Messages of the preempt benchmark.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Revokes of the revoke benchmark.
    #[arg(long, default_value_t = 10_000)]
    revokes: usize,
    /// Scheduling policy of the isolation benchmark's pcoprocs (5 ms
    /// slices): `credit` (what tenants sharing a device would be given) or
    /// `rr`.
    #[arg(long, default_value = "credit", value_parser = ["credit", "rr"])]
    policy: String,
    /// Threads of this process that spin on CPU work for the whole
    /// measurement (started before it, stopped after), to measure on a
    /// busy host.
    #[arg(long, default_value_t = 0)]
    host_load: usize,
    /// Kill cycles (and connection floods) of the soak benchmark.
    #[arg(long, default_value_t = 500)]
    cycles: usize,
    /// Device classes of the faults benchmark: `all` (the GPU where a
    /// Vulkan device is present), `mcu` or `gpu`.
    #[arg(long, value_enum, default_value_t = crate::faults::Class::All)]
    class: crate::faults::Class,
    /// Write the raw samples behind the figures (latencies in µs, shares
    /// per window) as CSV: `series,kind,index,value`.
    #[arg(long, value_name = "FILE")]
    samples: Option<std::path::PathBuf>,
    /// Draw the samples as SVG: latency CDFs (preempt, revoke, ring,
    /// isolation), shares per window (fairness, cap, gpu-fairness).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Name {
    /// fir throughput under the framework vs directly on Unicorn.
    Overhead,
    /// Cost of one full context switch on the mcu device.
    CtxSwitch,
    /// Queue round trips and request rates through the daemon vs in-process.
    Ring,
    /// Shares of three hogs with weights 1:2:4 under credit, per second.
    Fairness,
    /// A hog capped at 30 % alone on the device.
    Cap,
    /// A high-priority vcoproc's wake→run latency under saturation.
    Preempt,
    /// Decision cost of each policy with 10 to 100 000 vcoprocs.
    SchedScale,
    /// Revoke latency while the firmware uses the mapping, each verified.
    Revoke,
    /// Map + unmap cost by size.
    Map,
    /// spin jobs through the framework vs the same shader directly on Vulkan.
    GpuOverhead,
    /// Shares of two GPU domains with weights 1:3 under credit, per second.
    GpuFairness,
    /// A victim domain's round trips with and without an offender domain.
    Isolation,
    /// Clients killed mid-job and mid-setup, connection floods: the
    /// daemon's memory, descriptors and threads before and after.
    Soak,
    /// A victim's throughput against its fair share while an offender
    /// faults, hangs, loads corrupt firmware, is killed or revoked.
    Faults,
}

#[derive(Debug, Serialize)]
struct Env {
    cpu: String,
    cpus: usize,
    kernel: String,
    arch: &'static str,
    device: String,
    coproc: &'static str,
}

impl Env {
    fn probe() -> Env {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or_else(|| "unknown".into(), |s| s.trim().to_string());
        Env {
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .into(),
            arch: std::env::consts::ARCH,
            device: "mcu: Cortex-M4 on Unicorn 2.1".into(),
            coproc: env!("CARGO_PKG_VERSION"),
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    figures: BTreeMap<String, f64>,
    env: Env,
}

/// Run a benchmark; returns whether it completed with correct results.
pub fn run(args: &Args, format: Format) -> anyhow::Result<bool> {
    let rounds = args.rounds.max(1);
    let named = |m: BTreeMap<&'static str, f64>| -> BTreeMap<String, f64> {
        m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    };
    use crate::schedbench as sb;
    // The device the figures were measured on, where not the mcu.
    let mut device = None;
    let mut gpu = |(f, name): (BTreeMap<String, f64>, String)| {
        device = Some(format!("vulkan: {name}"));
        f
    };
    if args.samples.is_some() || args.plot.is_some() {
        crate::samples::enable();
    }
    // Spinning threads for the whole measurement, whichever benchmark.
    let host_load = crate::hostload::HostLoad::start(args.host_load)?;
    let (bench, mut figures, notes) = match args.name {
        Name::Overhead => ("overhead", named(overhead(rounds)?), OVERHEAD_NOTES),
        Name::CtxSwitch => ("ctx-switch", named(ctx_switch(rounds)?), SWITCH_NOTES),
        Name::Ring => (
            "ring",
            named(crate::ring::ring(rounds)?),
            crate::ring::NOTES,
        ),
        Name::Fairness => (
            "fairness",
            sb::fairness(args.seconds.unwrap_or(10).max(1))?,
            sb::FAIRNESS_NOTES,
        ),
        Name::Cap => (
            "cap",
            sb::cap(args.seconds.unwrap_or(5).max(1))?,
            sb::CAP_NOTES,
        ),
        Name::Preempt => (
            "preempt",
            sb::preempt(args.messages.max(10))?,
            sb::PREEMPT_NOTES,
        ),
        Name::SchedScale => ("sched-scale", sb::sched_scale(rounds)?, sb::SCALE_NOTES),
        Name::Revoke => (
            "revoke",
            crate::membench::revoke(args.revokes)?,
            crate::membench::REVOKE_NOTES,
        ),
        Name::Map => (
            "map",
            crate::membench::map(rounds)?,
            crate::membench::MAP_NOTES,
        ),
        Name::GpuOverhead => (
            "gpu-overhead",
            gpu(crate::gpubench::overhead(rounds)?),
            crate::gpubench::OVERHEAD_NOTES,
        ),
        Name::GpuFairness => (
            "gpu-fairness",
            gpu(crate::gpubench::fairness(
                args.seconds.unwrap_or(10).max(1),
            )?),
            crate::gpubench::FAIRNESS_NOTES,
        ),
        Name::Isolation => (
            "isolation",
            crate::isolation::isolation(rounds, &args.policy)?,
            crate::isolation::NOTES,
        ),
        Name::Soak => (
            "soak",
            crate::soak::soak(args.cycles.max(1))?,
            crate::soak::NOTES,
        ),
        Name::Faults => {
            let (f, model) = crate::faults::faults(rounds, args.class)?;
            if let Some(name) = model {
                device = Some(format!("mcu: Cortex-M4 on Unicorn 2.1; vulkan: {name}"));
            }
            ("faults", f, crate::faults::NOTES)
        }
    };
    // The load average while the spinners still run, then stop them.
    if let Some(l) = crate::hostload::loadavg_1m() {
        figures.insert("loadavg_1m".into(), l);
    }
    figures.insert("host_load_threads".into(), host_load.threads() as f64);
    drop(host_load);
    let mut env = Env::probe();
    if let Some(d) = device {
        env.device = d;
    }
    let report = Report {
        bench,
        figures,
        env,
    };
    let series = crate::samples::take();
    if let Some(path) = &args.samples {
        crate::samples::write_csv(path, &series)
            .with_context(|| format!("writing samples to {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        crate::samples::plot_svg(path, &format!("coproc bench {bench}"), &series)?;
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string(&report)?),
        Format::Table => {
            println!("coproc bench {bench} (median of {rounds} rounds)\n");
            let rows: Vec<Vec<String>> = report
                .figures
                .iter()
                .map(|(k, v)| vec![k.clone(), format!("{v}")])
                .collect();
            print_table(&["figure", "value"], &rows);
            println!("\n{notes}\n{HOST_NOTES}");
            println!(
                "env: {} ({} cpus), kernel {}",
                report.env.cpu, report.env.cpus, report.env.kernel
            );
        }
    }
    // Benchmarks that verify each step report failures; any fails the run.
    Ok(report.figures.get("failures").is_none_or(|&f| f == 0.0))
}

const HOST_NOTES: &str = "host_load_threads: threads of this process that spun on CPU work \
during the measurement (--host-load N). loadavg_1m: the host's 1-minute load average at the end \
of the measurement (other work competing for the CPUs delays the runner thread).";
const OVERHEAD_NOTES: &str = "overhead_pct: median over jobs of the time of a fir job under the framework \
(domain thread, pcoproc runner thread, rr policy, mailbox + doorbell + notification) over the time of the \
same job on the same Unicorn core and context model driven directly in-process (direct_device), minus 1; \
jobs of all variants interleaved. overhead_total_pct: the same from the sums. vs_bare_unicorn_pct compares \
with the faster of two hand-built bare Unicorn setups (bare_*), see docs/performance.md.";
const SWITCH_NOTES: &str = "switch_us: one full switch (save registers, restore the other context's, \
switch code/data/control block/mappings, flush the TLB). switch_refill_us adds what the first accesses \
after a switch cost (TLB refills through the translation hook), measured as round trips with switches \
minus the same round trips without.";

const SAMPLES: usize = 65536;
const TAPS: usize = 64;
const JOBS: usize = 4;

/// One way of running a fir job: runs job `i`, checks it, returns seconds.
type Runner<'a> = Box<dyn FnMut(usize) -> anyhow::Result<f64> + 'a>;

/// Byte offsets of the output and the taps in the job buffer.
const Y_OFF: u64 = 2 * SAMPLES as u64;
const H_OFF: u64 = 4 * SAMPLES as u64;

/// Mailbox words of fir job `i` with the buffer at the start of the window.
fn fir_args(i: usize) -> [u32; 6] {
    let base = coproc_mcu::abi::IOVA_BASE;
    [
        base,
        base + Y_OFF as u32,
        SAMPLES as u32,
        base + H_OFF as u32,
        TAPS as u32,
        i as u32 + 1,
    ]
}

type Jobs = Arc<(Vec<(Vec<i16>, Vec<i16>)>, Vec<Vec<i16>>)>;

/// Run an engine on its own thread (as the framework's runner does), built
/// there by `make` (Unicorn engines stay on the thread that made them);
/// the returned runner hands it job indices and waits for the timings.
fn on_thread<F>(make: F) -> anyhow::Result<Runner<'static>>
where
    F: FnOnce() -> anyhow::Result<Box<dyn FnMut(usize) -> anyhow::Result<f64>>> + Send + 'static,
{
    let (job_tx, job_rx) = std::sync::mpsc::channel::<usize>();
    let (res_tx, res_rx) = std::sync::mpsc::channel::<Result<f64, String>>();
    std::thread::Builder::new()
        .name("bench-engine".into())
        .spawn(move || {
            let mut run = match make() {
                Ok(r) => r,
                Err(e) => {
                    let _ = res_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = res_tx.send(Ok(0.0));
            while let Ok(i) = job_rx.recv() {
                let _ = res_tx.send(run(i).map_err(|e| e.to_string()));
            }
        })?;
    res_rx.recv()?.map_err(anyhow::Error::msg)?;
    Ok(Box::new(move |i| {
        job_tx.send(i)?;
        res_rx.recv()?.map_err(anyhow::Error::msg)
    }))
}

/// Bare: the firmware on a hand-built Unicorn core.
fn bare_runner(translation: Translation, jobs: Jobs) -> anyhow::Result<Runner<'static>> {
    on_thread(move || {
        let mut b = Bare::new(FIR.elf, SAMPLES * 4 + TAPS * 2, translation)?;
        Ok(Box::new(move |i| {
            let (input, expect) = (&jobs.0[i], &jobs.1[i]);
            let t = Instant::now();
            b.write(0, &samples_to_bytes(&input.0))?;
            b.write(H_OFF, &samples_to_bytes(&input.1))?;
            let (out, _) = b.job(&fir_args(i))?;
            let y = bytes_to_samples(&b.read(Y_OFF, 2 * SAMPLES)?);
            let dt = t.elapsed().as_secs_f64();
            if out[0] != 0 || y != *expect {
                bail!("bare run: job {i} differs from the reference");
            }
            Ok(dt)
        }))
    })
}

/// Create context `id` on `dev` with `fw` loaded and `map_len` bytes of
/// fresh domain memory mapped read/write at the start of the iova window.
fn device_context(
    dev: &mut McuDevice,
    id: VcoprocId,
    fw: &[u8],
    map_len: u64,
) -> anyhow::Result<(Arc<ControlBlock>, Arc<Region>)> {
    let cb = Arc::new(ControlBlock::default());
    dev.create_context(ContextSpec {
        id,
        domain: coproc_core::DomainId(1),
        control: cb.clone(),
    })?;
    dev.load_firmware(id, fw)?;
    let region = Arc::new(Region::new(map_len.div_ceil(4096) * 4096)?);
    let iova = u64::from(coproc_mcu::abi::IOVA_BASE);
    dev.map(id, &Mapping::pinned_rw(iova, &region, region.len()))?;
    Ok((cb, region))
}

/// Device: the mcu device model (Unicorn core, virtual-TLB context, control
/// block) driven directly: no runner, policy, pcoproc or domain thread.
fn device_runner(jobs: Jobs) -> anyhow::Result<Runner<'static>> {
    on_thread(move || {
        let mut dev = McuDevice::new(McuConfig::default())?;
        let id = VcoprocId(1);
        let (cb, region) = device_context(&mut dev, id, FIR.elf, (SAMPLES * 4 + TAPS * 2) as u64)?;
        dev.switch(Some(id));
        dev.run(Duration::from_secs(1));
        Ok(Box::new(move |i| {
            let (input, expect) = (&jobs.0[i], &jobs.1[i]);
            let t = Instant::now();
            region.write(0, &samples_to_bytes(&input.0))?;
            region.write(H_OFF, &samples_to_bytes(&input.1))?;
            for (w, a) in fir_args(i).iter().enumerate() {
                cb.write_in(w, *a);
            }
            cb.ring();
            if dev.run(Duration::from_secs(600)).stop != StopReason::Waiting {
                bail!("device run: job {i} did not complete");
            }
            let y = bytes_to_samples(&region.read_vec(Y_OFF, 2 * SAMPLES as u64)?);
            let dt = t.elapsed().as_secs_f64();
            if y != *expect {
                bail!("device run: job {i} differs from the reference");
            }
            Ok(dt)
        }))
    })
}

fn overhead(rounds: usize) -> anyhow::Result<BTreeMap<&'static str, f64>> {
    let mut rng = TestRng::new(77);
    let input: Vec<(Vec<i16>, Vec<i16>)> = (0..JOBS)
        .map(|_| (rng.samples(SAMPLES), rng.samples(TAPS)))
        .collect();
    let expect: Vec<Vec<i16>> = input
        .iter()
        .map(|(x, h)| reference::fir_q15(x, h))
        .collect();
    let jobs: Jobs = Arc::new((input, expect));
    let buf_len = SAMPLES * 4 + TAPS * 2;

    // Framework: one domain on a pcoproc, through the in-process API; the
    // domain is this thread, the device lives on the pcoproc's runner.
    let rr = RoundRobin::new(RoundRobin::DEFAULT_SLICE)?;
    let p = Pcoproc::spawn("mcu0", factory(McuConfig::default()), Box::new(rr))?;
    let v = p.create_vcoproc(DomainId(1), SchedParams::default())?;
    v.load_firmware("fir", FIR.elf)?;
    let buf = Buffer::map(&v, buf_len as u64, MapKind::Pinned)?;
    v.start()?;
    let fjobs = jobs.clone();
    let framework: Runner<'_> = Box::new(|i| {
        let t = Instant::now();
        let y = drive::fir(
            &v,
            &buf,
            &fjobs.0[i].0,
            &fjobs.0[i].1,
            i as u32 + 1,
            Duration::from_secs(600),
        )?;
        let dt = t.elapsed().as_secs_f64();
        if y != fjobs.1[i] {
            bail!("framework run: job {i} differs from the reference");
        }
        Ok(dt)
    });

    // Jobs interleaved one by one, in rotating order, so that drifts of
    // this machine's speed hit every variant alike; the first round warms
    // the translation caches and is not counted.
    let mut runners = [
        framework,
        device_runner(jobs.clone())?,
        bare_runner(Translation::Cpu, jobs.clone())?,
        bare_runner(Translation::Identity, jobs.clone())?,
    ];
    let mut times = vec![Vec::new(); runners.len()];
    for round in 0..=rounds {
        for i in 0..JOBS {
            for k in 0..runners.len() {
                let r = (k + i + round) % runners.len();
                let dt = runners[r](i)?;
                if round > 0 {
                    times[r].push(dt);
                }
            }
        }
    }
    drop(runners);
    p.shutdown();
    // Paired per-job ratios, framework over device: robust to drift.
    let ratio: Vec<f64> = times[0].iter().zip(&times[1]).map(|(f, d)| f / d).collect();
    let sum = |v: &Vec<f64>| v.iter().sum::<f64>();
    let samples = (times[0].len() * SAMPLES) as f64;
    let rate = |k: usize| round3(samples / sum(&times[k]) / 1e6);
    let bare_best = sum(&times[2]).min(sum(&times[3]));
    let mut m = BTreeMap::new();
    m.insert("overhead_pct", round3((median(ratio) - 1.0) * 100.0));
    m.insert(
        "overhead_total_pct",
        round3((sum(&times[0]) / sum(&times[1]) - 1.0) * 100.0),
    );
    m.insert(
        "vs_bare_unicorn_pct",
        round3((sum(&times[0]) / bare_best - 1.0) * 100.0),
    );
    m.insert("framework_msamples_s", rate(0));
    m.insert("direct_device_msamples_s", rate(1));
    m.insert("bare_cpu_tlb_msamples_s", rate(2));
    m.insert("bare_virtual_tlb_msamples_s", rate(3));
    m.insert("jobs_per_variant", times[0].len() as f64);
    Ok(m)
}

fn ctx_switch(rounds: usize) -> anyhow::Result<BTreeMap<&'static str, f64>> {
    let mut dev = McuDevice::new(McuConfig::default())?;
    let mut cbs = Vec::new();
    let mut regions = Vec::new();
    for i in 1..=2u32 {
        // A mapping each, so the switch has mappings to swap too.
        let (cb, r) = device_context(&mut dev, VcoprocId(i), ECHO.elf, 64 * 1024)?;
        regions.push(r);
        cbs.push(cb);
    }
    let ids = [VcoprocId(1), VcoprocId(2)];
    // Boot both to their first WAIT.
    for id in ids {
        dev.switch(Some(id));
        let out = dev.run(Duration::from_secs(1));
        if out.stop != StopReason::Waiting {
            bail!("echo did not park: {:?}", out.stop);
        }
    }
    // One echo round trip on the current context: ring, run until parked.
    let round_trip = |dev: &mut McuDevice, i: usize| -> anyhow::Result<()> {
        cbs[i].ring();
        let out = dev.run(Duration::from_secs(1));
        if out.stop != StopReason::Waiting {
            bail!("echo stopped with {:?}", out.stop);
        }
        Ok(())
    };
    let n = 20_000usize;
    let (mut sw, mut with, mut without) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        for k in 0..n {
            dev.switch(Some(ids[k % 2]));
        }
        sw.push(t.elapsed().as_secs_f64() / n as f64);

        let t = Instant::now();
        for k in 0..n {
            dev.switch(Some(ids[k % 2]));
            round_trip(&mut dev, k % 2)?;
        }
        with.push(t.elapsed().as_secs_f64() / n as f64);

        dev.switch(Some(ids[0]));
        let t = Instant::now();
        for _ in 0..n {
            round_trip(&mut dev, 0)?;
        }
        without.push(t.elapsed().as_secs_f64() / n as f64);
    }
    // Both contexts answered every message, in order.
    for (i, cb) in cbs.iter().enumerate() {
        if u64::from(cb.read_out(15)) != cb.rung() {
            bail!(
                "context {i}: echo count {} != doorbells {}",
                cb.read_out(15),
                cb.rung()
            );
        }
    }
    let (sw, with, without) = (median(sw), median(with), median(without));
    let mut m = BTreeMap::new();
    m.insert("switch_us", round3(sw * 1e6));
    m.insert("switch_refill_us", round3((with - without).max(0.0) * 1e6));
    m.insert("round_trip_same_context_us", round3(without * 1e6));
    m.insert("round_trip_switching_us", round3(with * 1e6));
    Ok(m)
}
