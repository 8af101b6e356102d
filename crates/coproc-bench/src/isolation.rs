//! `coproc bench isolation`: how much one domain can hurt another. A victim
//! domain does single request round trips on its queue while an offender
//! domain (its own session) loops on one of the worst things it can do;
//! baseline phases (no offender) and offender phases are interleaved in
//! rotating order over several rounds, all in one run, through one private
//! `coprocd`. Every victim completion is checked; wrong or failed ones are
//! counted (`victim_errors`, and `failures`, which fails the run).
//!
//! Also the hidden `isolation-child` verb: the `kill` offender's client
//! process, which opens vcoprocs with queues and keeps them busy until it
//! is SIGKILLed (with `--stage`, it stops at an earlier point of the set-up
//! instead, for `bench soak`, or connects to nothing, `idle`, for the
//! `spawn` control); and, with `--stage respawn`, the offender's own
//! process that starts and kills those clients one after the other.

use crate::figures::{percentile, round1};
use crate::offender::{
    big_elf, big_shader, open_rule, qecho_trip, qecho_vcoproc, Ctx, Kind, Offender, CHILD_VCOPROCS,
    ENTRIES, GIVE_UP, GPU, GPU_N, GPU_QUEUE, GPU_TRIPS, GPU_X, GPU_Y, MCU, MCU_TRIPS, QUEUE_IOVA,
    TRIP_TIMEOUT,
};
use anyhow::Context;
use coproc_client::{Client, Job, Queue, SharedMem, WireMapKind, WirePerms};
use coproc_firmware::gpu::SAXPY;
use coproc_firmware::{reference, QECHO};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Notes printed under the table.
pub const NOTES: &str = "Victim: one session, one vcoproc running qecho, single request round trips on \
its 64-entry queue (submit, ring, wait on the completion eventfd, complete), every completion checked \
(status = opcode, result[i] = args[i] + opcode); victim_p50_us/victim_p99_us are the baseline phases \
(no offender), victim_p99_us_<kind> the phases with offender <kind> running in its own session \
(firmware: load a 4 MiB ELF, code and data segments filling the whole code and data memory, into its \
own vcoproc, again and again; fault: faulty firmware, fault, reset, restart; spam: list, query, \
requests on vcoprocs it does not own, bad firmware; map: map + unmap 1 MiB memfds; kill: a client \
process that opens 4 vcoprocs with queues and keeps them busy is SIGKILLed and respawned; cpu: a \
control, a thread that keeps one CPU busy and makes no request (ops: ms spun), so a ratio near \
victim_p99_ratio_cpu is host CPU contention rather than the framework; spawn: a control, kill's \
process churn without the daemon: the same program started and SIGKILLed the same way by a process \
of its own, its children connecting to nothing; busy: a control, one of kill's client processes never \
killed, its 4 vcoprocs busy for the whole phase (ops: 1), so kill against busy is what the killing adds \
to a busy co-tenant). \
victim_p99_ratio_<kind> = p99 with / p99 without; victim_p99_ratio is the worst offender's (not a \
control's: cpu, spawn, busy). offender_ops_<kind>: \
operations the offender completed while the victim measured. Phases interleaved in rotating order, \
--rounds rounds, percentiles over all rounds of a kind. gpu_*: the same on a vulkan pcoproc (victim: \
saxpy over 1024 floats per job, checked against the host reference; shader: load the spin shader \
repeated as 16 entry points and padded to 4 MiB; fault: bind a revocable buffer, revoke it, dispatch \
on it (the vcoproc faults), reset, restart); absent when no Vulkan device is found (the reason goes \
to stderr). failures = victim_errors + gpu_victim_errors. loadavg_1m: /proc/loadavg at the start \
and the end of the run.";

/// One checked request at a time through the daemon.
trait Victim {
    /// One round trip: its time in µs, or why it failed or was wrong.
    fn trip(&mut self) -> Result<f64, String>;
}

/// The mcu victim: qecho on its own queue.
struct McuVictim {
    _client: Client,
    q: Queue,
    tag: u32,
}

impl McuVictim {
    fn new(socket: &Path) -> anyhow::Result<McuVictim> {
        let (client, q) = qecho_vcoproc(socket)?;
        Ok(McuVictim {
            _client: client,
            q,
            tag: 1,
        })
    }
}

impl Victim for McuVictim {
    fn trip(&mut self) -> Result<f64, String> {
        let tag = self.tag;
        self.tag = self.tag.wrapping_add(1);
        let t = Instant::now();
        qecho_trip(&mut self.q, tag)?;
        Ok(t.elapsed().as_secs_f64() * 1e6)
    }
}

/// The GPU victim: small saxpy jobs, each checked bit for bit.
struct GpuVictim {
    _client: Client,
    q: Queue,
    /// Kept for the life of the mapping.
    _x: SharedMem,
    y: SharedMem,
    xs: Vec<f32>,
    job: u32,
}

impl GpuVictim {
    fn new(socket: &Path) -> anyhow::Result<GpuVictim> {
        let mut c = Client::connect_to(socket)?;
        let v = c.open(GPU)?;
        c.load_firmware(v, SAXPY.name, SAXPY.image)?;
        let bytes = 4 * u64::from(GPU_N);
        let (x, y) = (SharedMem::new(bytes)?, SharedMem::new(bytes)?);
        c.map(v, &x, 0, GPU_X, x.len(), WirePerms::R, WireMapKind::Pinned)?;
        c.map(v, &y, 0, GPU_Y, y.len(), WirePerms::Rw, WireMapKind::Pinned)?;
        // x in 1/8ths, y integers, a = 1.5: every result exact.
        let xs: Vec<f32> = (0..GPU_N)
            .map(|i| (i % 2048) as f32 / 8.0 - 128.0)
            .collect();
        x.write(0, &f32_bytes(&xs))?;
        let q = c.create_queue(v, GPU_QUEUE, ENTRIES)?;
        c.gpu_attach(v, &q)?;
        c.start(v)?;
        Ok(GpuVictim {
            _client: c,
            q,
            _x: x,
            y,
            xs,
            job: 1,
        })
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Victim for GpuVictim {
    fn trip(&mut self) -> Result<f64, String> {
        let r = self.job;
        self.job = self.job.wrapping_add(1);
        let ys: Vec<f32> = (0..GPU_N)
            .map(|i| ((i + r) % 4096) as f32 - 2048.0)
            .collect();
        self.y
            .write(0, &f32_bytes(&ys))
            .map_err(|e| format!("job {r}: {e}"))?;
        let bytes = 4 * u64::from(GPU_N);
        let job = Job::new()
            .bind(0, GPU_X, bytes)
            .bind(1, GPU_Y, bytes)
            .push_f32(0, &[1.5])
            .push_u32(4, &[GPU_N])
            .dispatch(0, [GPU_N.div_ceil(64), 1, 1])
            .signal(r);
        let t = Instant::now();
        let tag = self
            .q
            .submit_job(&job)
            .map_err(|e| format!("job {r}: {e}"))?;
        let done = self
            .q
            .wait_job(tag, TRIP_TIMEOUT)
            .map_err(|e| format!("job {r}: {e}"))?;
        let us = t.elapsed().as_secs_f64() * 1e6;
        if done.value != r {
            return Err(format!("job {r}: signal value {}", done.value));
        }
        let got = self
            .y
            .read_vec(0, bytes as usize)
            .map_err(|e| format!("job {r}: {e}"))?;
        let want = reference::saxpy(1.5, &self.xs, &ys);
        if got != f32_bytes(&want) {
            return Err(format!("job {r}: y differs from the host reference"));
        }
        Ok(us)
    }
}
/// How far an `isolation-child` gets before it says `ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// Open one vcoproc, then wait.
    Create,
    /// Open one vcoproc and map 64 KiB of shared memory into it, then wait.
    Map,
    /// Open one vcoproc, load qecho and create its queue, then wait.
    Queue,
    /// Open one vcoproc, then load the largest ELF again and again.
    Load,
    /// Open vcoprocs with queues and keep requests going on all of them.
    Busy,
    /// Start children (at `--children`) one after the other, each
    /// SIGKILLed 0–9 ms after it says `ready`, saying `killed` after each,
    /// until stdin ends (the `kill` offender's process).
    Respawn,
    /// Say `ready` and wait, connecting to nothing (the children of the
    /// `spawn` control).
    Idle,
}

/// Options of the hidden `isolation-child` verb.
#[derive(Debug, clap::Args)]
pub struct ChildArgs {
    /// Where to stop the set-up (and say `ready`).
    #[arg(long, value_enum, default_value_t = Stage::Busy)]
    pub stage: Stage,
    /// With `--stage respawn`: the stage of the children it starts.
    #[arg(long, value_enum, default_value_t = Stage::Busy)]
    pub children: Stage,
}

/// An `isolation-child` that stops at `stage`: it says `ready` once the
/// stage is reached and then waits (`load`: loads again and again) until
/// it is killed.
fn child_stage(socket: &Path, stage: Stage) -> anyhow::Result<bool> {
    let mut c = Client::connect_to(socket)?;
    let v = c.open(MCU)?;
    let _mem = match stage {
        Stage::Map => {
            let m = SharedMem::new(64 * 1024)?;
            c.map(
                v,
                &m,
                0,
                QUEUE_IOVA,
                m.len(),
                WirePerms::Rw,
                WireMapKind::Pinned,
            )?;
            Some(m)
        }
        _ => None,
    };
    let _q = match stage {
        Stage::Queue => {
            c.load_firmware(v, QECHO.name, QECHO.elf)?;
            Some(c.create_queue(v, QUEUE_IOVA, ENTRIES)?)
        }
        _ => None,
    };
    let elf = if stage == Stage::Load {
        big_elf()?
    } else {
        Vec::new()
    };
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    loop {
        if stage == Stage::Load {
            c.load_firmware(v, "big", &elf)?;
        } else {
            std::thread::park();
        }
    }
}

/// The hidden `isolation-child` verb: open [`CHILD_VCOPROCS`] qecho
/// vcoprocs with queues, say `ready`, then keep requests going on all of
/// them until killed.
pub fn child(socket: &Path, args: &ChildArgs) -> anyhow::Result<bool> {
    match (args.stage, args.children) {
        (Stage::Respawn, Stage::Respawn) => anyhow::bail!("a respawner's children cannot respawn"),
        (Stage::Respawn, children) => {
            use clap::ValueEnum;
            let children = children
                .to_possible_value()
                .map(|v| v.get_name().to_string())
                .unwrap_or_default();
            crate::offender::respawn(socket, &children)?;
            return Ok(true);
        }
        (Stage::Idle, _) => {
            let mut out = std::io::stdout();
            writeln!(out, "ready")?;
            out.flush()?;
            loop {
                std::thread::park();
            }
        }
        _ => {}
    }
    if !matches!(args.stage, Stage::Busy) {
        return child_stage(socket, args.stage);
    }
    let mut lanes = (0..CHILD_VCOPROCS)
        .map(|_| qecho_vcoproc(socket))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut tag = 1u32;
    for (_, q) in &mut lanes {
        qecho_trip(q, tag).map_err(anyhow::Error::msg)?;
        tag += 1;
    }
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    loop {
        for (_, q) in &mut lanes {
            qecho_trip(q, tag).map_err(anyhow::Error::msg)?;
            tag = tag.wrapping_add(1);
        }
    }
}

/// Per kind: the victim's round-trip times and what the offender did.
#[derive(Default)]
struct Tally {
    rtts: Vec<f64>,
    ops: u64,
}

/// Interleaved phases of `kinds` (the first must be `Baseline`), `rounds`
/// rounds of `trips` requests each; figures prefixed with `prefix`.
fn phases(
    victim: &mut dyn Victim,
    kinds: &[Kind],
    rounds: usize,
    trips: usize,
    ctx: &Arc<Ctx>,
    prefix: &str,
    m: &mut BTreeMap<String, f64>,
) -> anyhow::Result<u64> {
    let mut errors = 0u64;
    let mut first_error = None;
    let mut note = |errors: &mut u64, e: String| {
        *errors += 1;
        if first_error.is_none() {
            eprintln!("isolation: {prefix}victim: {e}");
            first_error = Some(e);
        }
    };
    // Warm up: translation caches, pipelines, the daemon's threads.
    for _ in 0..trips / 10 {
        if let Err(e) = victim.trip() {
            note(&mut errors, e);
        }
    }
    let mut tally: Vec<Tally> = kinds.iter().map(|_| Tally::default()).collect();
    for round in 0..rounds {
        for k in 0..kinds.len() {
            let idx = (k + round) % kinds.len();
            let kind = kinds[idx];
            let began = Instant::now();
            let n0 = tally[idx].rtts.len();
            let offender = match kind {
                Kind::Baseline => None,
                _ => Some(Offender::start(kind, ctx)?),
            };
            let ops0 = offender.as_ref().map_or(0, Offender::ops);
            let mut in_a_row = 0;
            for _ in 0..trips {
                match victim.trip() {
                    Ok(us) => {
                        in_a_row = 0;
                        tally[idx].rtts.push(us);
                    }
                    Err(e) => {
                        note(&mut errors, e);
                        in_a_row += 1;
                        if in_a_row >= GIVE_UP {
                            break;
                        }
                    }
                }
            }
            if let Some(o) = offender {
                tally[idx].ops += o.ops() - ops0;
                o.finish(kind)?;
            }
            let slow = |us: f64| tally[idx].rtts[n0..].iter().filter(|&&t| t > us).count();
            tracing::debug!(
                phase = %format!("{prefix}{}", kind.name()),
                round,
                ms = began.elapsed().as_secs_f64() * 1e3,
                over_1ms = slow(1e3),
                over_10ms = slow(1e4),
                over_50ms = slow(5e4),
                over_90ms = slow(9e4),
                "isolation phase"
            );
            if in_a_row >= GIVE_UP {
                eprintln!(
                    "isolation: {prefix}victim failed {GIVE_UP} requests in a row; phases stopped"
                );
                break;
            }
        }
    }
    for t in &mut tally {
        t.rtts.sort_by(f64::total_cmp);
    }
    for (kind, t) in kinds.iter().zip(&tally) {
        let name = format!("{prefix}victim_rtt_us_{}", kind.name());
        crate::samples::record(&name, crate::samples::Kind::LatencyUs, &t.rtts);
    }
    let base = &tally[0].rtts;
    let (b50, b99) = (percentile(base, 0.5), percentile(base, 0.99));
    m.insert(format!("{prefix}victim_p50_us"), round1(b50));
    m.insert(format!("{prefix}victim_p99_us"), round1(b99));
    m.insert(
        format!("{prefix}victim_max_us"),
        round1(percentile(base, 1.0)),
    );
    let mut worst = f64::NAN;
    for (kind, t) in kinds.iter().zip(&tally).skip(1) {
        let n = kind.name();
        let p99 = percentile(&t.rtts, 0.99);
        let ratio = p99 / b99;
        m.insert(
            format!("{prefix}victim_p50_us_{n}"),
            round1(percentile(&t.rtts, 0.5)),
        );
        m.insert(format!("{prefix}victim_p99_us_{n}"), round1(p99));
        m.insert(
            format!("{prefix}victim_max_us_{n}"),
            round1(percentile(&t.rtts, 1.0)),
        );
        m.insert(
            format!("{prefix}victim_p99_ratio_{n}"),
            crate::figures::round3(ratio),
        );
        m.insert(format!("{prefix}offender_ops_{n}"), t.ops as f64);
        // The worst offender; the controls are not ones.
        if !matches!(kind, Kind::Cpu | Kind::Spawn | Kind::Busy)
            && (worst.is_nan() || ratio > worst)
        {
            worst = ratio;
        }
    }
    m.insert(
        format!("{prefix}victim_p99_ratio"),
        crate::figures::round3(worst),
    );
    m.insert(format!("{prefix}victim_errors"), errors as f64);
    m.insert(
        format!("{prefix}victim_requests"),
        tally.iter().map(|t| t.rtts.len()).sum::<usize>() as f64,
    );
    Ok(errors)
}

fn loadavg_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|w| w.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// The benchmark. Returns its figures.
pub fn isolation(rounds: usize, policy: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let load0 = loadavg_1m();
    let gpu_skipped = coproc_vulkan::probe()
        .err()
        .map(|e| format!("no Vulkan device: {e}"));
    let gpu = gpu_skipped.is_none();
    // Every session runs as this uid: quotas large enough for the victim,
    // an offender and the vcoprocs of killed children not yet cleaned up.
    let mut config = format!(
        "[[pcoproc]]\nname = \"{MCU}\"\nclass = \"mcu\"\npolicy = \"{policy}\"\n\
         policy_params = {{ slice_us = 5000 }}\noptions = {{ max_contexts = 1024 }}\n\n"
    );
    if gpu {
        config += &format!(
            "[[pcoproc]]\nname = \"{GPU}\"\nclass = \"vulkan\"\npolicy = \"{policy}\"\n\
             policy_params = {{ slice_us = 5000 }}\n\n"
        );
    }
    config += &open_rule(gpu);
    let daemon = crate::spawn::TempDaemon::start(&config)?;
    let ctx = Arc::new(Ctx {
        socket: daemon.socket.clone(),
        elf: big_elf()?,
        shader: big_shader()?,
    });
    let rounds = rounds.max(1);
    let mut m = BTreeMap::new();

    let mut victim = McuVictim::new(&daemon.socket)?;
    let kinds = [
        Kind::Baseline,
        Kind::Firmware,
        Kind::Fault,
        Kind::Spam,
        Kind::Map,
        Kind::Kill,
        Kind::Cpu,
        Kind::Spawn,
        Kind::Busy,
    ];
    let mut failures = phases(&mut victim, &kinds, rounds, MCU_TRIPS, &ctx, "", &mut m)?;
    drop(victim);

    if let Some(why) = gpu_skipped {
        eprintln!("isolation: GPU part skipped: {why}");
    } else {
        let mut c = Client::connect_to(&daemon.socket)?;
        let model = c
            .list_coprocs()?
            .into_iter()
            .find(|p| p.name == GPU)
            .map(|p| p.model)
            .with_context(|| format!("the daemon does not list {GPU}"))?;
        eprintln!("isolation: GPU part on {model}");
        let mut victim = GpuVictim::new(&daemon.socket)?;
        let kinds = [Kind::Baseline, Kind::GpuShader, Kind::GpuFault, Kind::Cpu];
        failures += phases(&mut victim, &kinds, rounds, GPU_TRIPS, &ctx, "gpu_", &mut m)?;
    }
    m.insert("failures".into(), failures as f64);
    m.insert("loadavg_1m_start".into(), load0);
    m.insert("loadavg_1m".into(), loadavg_1m());
    Ok(m)
}
