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
//! instead, for `bench soak`).

use anyhow::{anyhow, bail, Context};
use coproc_client::{Client, ClientError, Job, Queue, SharedMem, Sqe, WireMapKind, WirePerms};
use coproc_firmware::gpu::{SAXPY, SPIN, TOUCH};
use coproc_firmware::{reference, FAULTY, QECHO};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
victim_p99_ratio_cpu is host CPU contention rather than the framework). \
victim_p99_ratio_<kind> = p99 with / p99 without; victim_p99_ratio is the worst offender's (not the cpu control's). offender_ops_<kind>: \
operations the offender completed while the victim measured. Phases interleaved in rotating order, \
--rounds rounds, percentiles over all rounds of a kind. gpu_*: the same on a vulkan pcoproc (victim: \
saxpy over 1024 floats per job, checked against the host reference; shader: load the spin shader \
repeated as 16 entry points and padded to 4 MiB; fault: bind a revocable buffer, revoke it, dispatch \
on it (the vcoproc faults), reset, restart); absent when no Vulkan device is found (the reason goes \
to stderr). failures = victim_errors + gpu_victim_errors. loadavg_1m: /proc/loadavg at the start \
and the end of the run.";

/// Pcoprocs of the private daemon.
pub(crate) const MCU: &str = "mcu0";

/// The domain rule of the benchmarks' private daemons: every uid may use
/// the mcu pcoproc (and the GPU one with `gpu`), with quotas far above what
/// the victims, offenders and not yet cleaned-up clients need together.
pub(crate) fn open_rule(gpu: bool) -> String {
    let gpu = if gpu {
        format!(", \"{GPU}\"")
    } else {
        String::new()
    };
    format!(
        "[[domain]]\nuids = \"*\"\npcoprocs = [\"{MCU}\"{gpu}]\nmax_vcoprocs = 1024\n\
         max_queues = 1024\nmax_mappings = 4096\nmax_mapped_bytes = 4294967296\n"
    )
}
pub(crate) const GPU: &str = "gpu0";
/// Where the queues live (each vcoproc has its own iova space).
pub(crate) const QUEUE_IOVA: u64 = 0x6000_0000;
/// Where the map offender maps, inside the mcu's iova window.
const MAP_IOVA: u64 = 0x6010_0000;
/// Bytes per map offender mapping.
const MAP_LEN: u64 = 1 << 20;
/// Entries of the victim's queue.
pub(crate) const ENTRIES: u32 = 64;
/// Victim round trips per phase (mcu, GPU).
const MCU_TRIPS: usize = 1000;
const GPU_TRIPS: usize = 300;
/// Longest one victim request may take before it counts as failed.
const TRIP_TIMEOUT: Duration = Duration::from_secs(5);
/// Victim requests that fail in a row before a phase is given up.
const GIVE_UP: u32 = 20;
/// vcoprocs of one `isolation-child` process.
const CHILD_VCOPROCS: u32 = 4;
/// GPU victim: floats per saxpy job, buffers.
const GPU_N: u32 = 1024;
const GPU_X: u64 = 0x2000_0000;
const GPU_Y: u64 = 0x2100_0000;
pub(crate) const GPU_QUEUE: u64 = 0x1000_0000;
/// Entry points of the GPU shader offender's image.
const SHADER_ENTRIES: usize = 16;

/// The offenders, and `Baseline` (none). `bench faults` adds its own
/// kinds (`Hog` to `GpuKill`, implemented in [`crate::faults`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Baseline,
    Firmware,
    Fault,
    Spam,
    Map,
    Kill,
    Cpu,
    GpuShader,
    GpuFault,
    Hog,
    Hang,
    Corrupt,
    Revoke,
    GpuHog,
    GpuHang,
    GpuCorrupt,
    GpuKill,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Baseline => "baseline",
            Kind::Firmware => "firmware",
            Kind::Fault => "fault",
            Kind::Spam => "spam",
            Kind::Map => "map",
            Kind::Kill => "kill",
            Kind::Cpu => "cpu",
            Kind::GpuShader => "shader",
            Kind::GpuFault => "fault",
            Kind::Hog | Kind::GpuHog => "hog",
            Kind::Hang | Kind::GpuHang => "hang",
            Kind::Corrupt | Kind::GpuCorrupt => "corrupt",
            Kind::Revoke => "revoke",
            Kind::GpuKill => "kill",
        }
    }
}

/// The largest image the mcu loader (and the protocol) accepts, still a
/// valid ELF: `qecho` with its code segment grown to the whole code memory,
/// its data segment to the whole data memory (both from the file), and the
/// file padded with zeros to [`coproc_mcu::elf::MAX_IMAGE`].
pub(crate) fn big_elf() -> anyhow::Result<Vec<u8>> {
    use coproc_mcu::abi::{CODE_BASE, CODE_SIZE, DATA_BASE, DATA_SIZE};
    let src = QECHO.elf;
    let rd16 = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let rd32 = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let mut out = src.to_vec();
    out.resize(coproc_mcu::elf::MAX_IMAGE, 0);
    let (phoff, phentsize, phnum) = (
        rd32(src, 0x1c) as usize,
        rd16(src, 0x2a) as usize,
        rd16(src, 0x2c) as usize,
    );
    // Code from the original offset (the text stays where it was), data
    // right after the code in the file, past everything the image had.
    let data_off = src
        .len()
        .max(0x1000 + CODE_SIZE as usize)
        .next_multiple_of(0x1000);
    let (mut code, mut data) = (false, false);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if rd32(src, ph) != 1 {
            continue; // not PT_LOAD
        }
        let vaddr = rd32(src, ph + 8);
        let (off, size) = if vaddr == CODE_BASE && !code {
            code = true;
            (rd32(src, ph + 4), CODE_SIZE)
        } else if vaddr == DATA_BASE && !data {
            data = true;
            (data_off as u32, DATA_SIZE)
        } else {
            bail!("qecho has an unexpected segment at {vaddr:#x}");
        };
        out[ph + 4..ph + 8].copy_from_slice(&off.to_le_bytes());
        out[ph + 16..ph + 20].copy_from_slice(&size.to_le_bytes());
        out[ph + 20..ph + 24].copy_from_slice(&size.to_le_bytes());
    }
    if !(code && data) {
        bail!("qecho lacks a code or a data segment");
    }
    Ok(out)
}

/// The largest shader image the daemon accepts: `spin` with its entry point
/// repeated [`SHADER_ENTRIES`] times (each a pipeline to compile), padded
/// with comment lines to the daemon's firmware limit (the mcu loader's,
/// 4 MiB).
pub(crate) fn big_shader() -> anyhow::Result<Vec<u8>> {
    let src = std::str::from_utf8(SPIN.image)?;
    let at = src.find("@compute").context("spin has no entry point")?;
    let (head, entry) = src.split_at(at);
    let mut s = head.to_string();
    for k in 0..SHADER_ENTRIES {
        s += &entry.replace("fn spin(", &format!("fn spin_{k}("));
    }
    let max = coproc_mcu::elf::MAX_IMAGE;
    let line = format!("// {}\n", "x".repeat(96));
    while s.len() + line.len() <= max {
        s += &line;
    }
    s += &"/".repeat(max - s.len());
    Ok(s.into_bytes())
}

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

/// A session with one started qecho vcoproc serving a queue.
pub(crate) fn qecho_vcoproc(socket: &Path) -> anyhow::Result<(Client, Queue)> {
    let mut c = Client::connect_to(socket)?;
    let v = c.open(MCU)?;
    c.load_firmware(v, QECHO.name, QECHO.elf)?;
    let q = c.create_queue(v, QUEUE_IOVA, ENTRIES)?;
    c.mbox_write(v, 0, &[QUEUE_IOVA as u32, q.len() as u32])?;
    c.start(v)?;
    Ok((c, q))
}

/// Submit one qecho request, wait for its completion and check it against
/// qecho's rule.
pub(crate) fn qecho_trip(q: &mut Queue, tag: u32) -> Result<(), String> {
    let opcode = 1 + tag % 7;
    let args: [u32; 14] = std::array::from_fn(|i| tag.wrapping_mul(31).wrapping_add(i as u32));
    if !q.submit(&Sqe { opcode, tag, args }) {
        return Err(format!("request {tag}: submission ring full"));
    }
    q.ring()
        .map_err(|e| format!("request {tag}: doorbell: {e}"))?;
    let deadline = Instant::now() + TRIP_TIMEOUT;
    loop {
        if let Some(c) = q.complete() {
            let want: [u32; 14] = std::array::from_fn(|i| args[i].wrapping_add(opcode));
            if c.tag != tag || c.status != opcode || c.result != want {
                return Err(format!("request {tag}: wrong completion {c:?}"));
            }
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("request {tag}: no completion in {TRIP_TIMEOUT:?}"));
        }
        q.wait(left)
            .map_err(|e| format!("request {tag}: wait: {e}"))?;
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

/// What every offender shares.
pub(crate) struct Ctx {
    /// The daemon's socket.
    pub(crate) socket: PathBuf,
    /// The `firmware` offender's image ([`big_elf`]).
    pub(crate) elf: Vec<u8>,
    /// The GPU `shader` offender's image ([`big_shader`]).
    pub(crate) shader: Vec<u8>,
}

/// A running offender: a thread with its own session (`kill`: a thread
/// that spawns and kills client processes).
pub(crate) struct Offender {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Offender {
    /// Start `kind` and wait until it has completed its first operation.
    pub(crate) fn start(kind: Kind, ctx: &Arc<Ctx>) -> anyhow::Result<Offender> {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let (s, o, c) = (stop.clone(), ops.clone(), ctx.clone());
        let thread = std::thread::Builder::new()
            .name(format!("offender-{}", kind.name()))
            .spawn(move || offend(kind, &c, &s, &o))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while ops.load(Ordering::Acquire) == 0 {
            if thread.is_finished() || Instant::now() > deadline {
                stop.store(true, Ordering::Release);
                return Err(match thread.join() {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => anyhow!("ended before its first operation"),
                    Err(_) => anyhow!("panicked"),
                })
                .with_context(|| format!("offender {}", kind.name()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(Offender { stop, ops, thread })
    }

    pub(crate) fn ops(&self) -> u64 {
        self.ops.load(Ordering::Acquire)
    }

    pub(crate) fn finish(self, kind: Kind) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Release);
        self.thread
            .join()
            .map_err(|_| anyhow!("panicked"))?
            .with_context(|| format!("offender {}", kind.name()))
    }
}

/// The offender's loop: one operation per turn until `stop`.
fn offend(kind: Kind, ctx: &Ctx, stop: &AtomicBool, ops: &AtomicU64) -> anyhow::Result<()> {
    let done = || ops.fetch_add(1, Ordering::AcqRel);
    let running = || !stop.load(Ordering::Acquire);
    match kind {
        Kind::Baseline => {}
        Kind::Firmware => {
            let mut c = Client::connect_to(&ctx.socket)?;
            let v = c.open(MCU)?;
            while running() {
                c.load_firmware(v, "big", &ctx.elf)?;
                done();
            }
        }
        Kind::Fault => {
            let mut c = Client::connect_to(&ctx.socket)?;
            let v = c.open(MCU)?;
            c.load_firmware(v, FAULTY.name, FAULTY.elf)?;
            c.subscribe(v)?;
            while running() {
                c.start(v)?;
                let (_, seq) = c.mbox_read(v)?;
                c.doorbell(v)?;
                match c.wait_notify(v, seq, Duration::from_secs(10)) {
                    Err(ClientError::Stopped { state, .. }) if state == "faulted" => {}
                    other => bail!("faulty did not fault: {other:?}"),
                }
                c.reset(v)?;
                done();
            }
        }
        Kind::Spam => {
            let mut c = Client::connect_to(&ctx.socket)?;
            let v = c.open(MCU)?;
            let mut i = 0u32;
            while running() {
                // Cheap requests, and bad ones that must be refused.
                let refused = match i % 6 {
                    0 => c.list_coprocs().map(drop).is_err(),
                    1 => c.query(v).map(drop).is_err(),
                    2 => c.list_vcoprocs(None, None).map(drop).is_err(),
                    3 => c.query(0xdead_0000 + i).is_ok(),
                    4 => c.mbox_write(0xdead_0000 + i, 0, &[1]).is_ok(),
                    _ => c.load_firmware(v, "junk", b"not an ELF file").is_ok(),
                };
                if refused {
                    bail!("spam request {} was answered wrongly", i % 6);
                }
                i = i.wrapping_add(1);
                done();
            }
        }
        Kind::Map => {
            let mut c = Client::connect_to(&ctx.socket)?;
            let v = c.open(MCU)?;
            let mems = (0..4)
                .map(|_| SharedMem::new(MAP_LEN))
                .collect::<Result<Vec<_>, _>>()?;
            let mut i = 0;
            while running() {
                let m = &mems[i % mems.len()];
                c.map(
                    v,
                    m,
                    0,
                    MAP_IOVA,
                    MAP_LEN,
                    WirePerms::Rw,
                    WireMapKind::Pinned,
                )?;
                c.unmap(v, MAP_IOVA)?;
                i += 1;
                done();
            }
        }
        Kind::Kill => {
            let exe = std::env::current_exe()?;
            let mut i = 0u64;
            while running() {
                let mut child = Command::new(&exe)
                    .arg("--socket")
                    .arg(&ctx.socket)
                    .arg("isolation-child")
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .spawn()?;
                let mut line = String::new();
                let out = child.stdout.take().context("child stdout")?;
                let read = std::io::BufReader::new(out).read_line(&mut line);
                if read.is_err() || line.trim() != "ready" {
                    let _ = child.kill();
                    let status = child.wait()?;
                    bail!("isolation-child did not come up ({status}): {line:?}");
                }
                // Let it work a little (0-9 ms), then kill it mid-request.
                std::thread::sleep(Duration::from_millis(i % 10));
                child.kill()?;
                child.wait()?;
                i += 1;
                done();
            }
        }
        Kind::Cpu => {
            // The control: no request at all, one CPU kept busy.
            while running() {
                let t = Instant::now();
                let mut x = 1u64;
                while t.elapsed() < Duration::from_millis(1) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
                done();
            }
        }
        Kind::GpuShader => {
            let mut c = Client::connect_to(&ctx.socket)?;
            let v = c.open(GPU)?;
            while running() {
                c.load_firmware(v, "big", &ctx.shader)?;
                done();
            }
        }
        Kind::GpuFault => gpu_fault(ctx, &running, &done)?,
        Kind::Hog => crate::faults::hog(ctx, &running, &done)?,
        Kind::Hang => crate::faults::hang(ctx, &running, &done)?,
        Kind::Corrupt => crate::faults::corrupt(ctx, false, &running, &done)?,
        Kind::Revoke => crate::faults::revoke(ctx, &running, &done)?,
        Kind::GpuHog => crate::faults::gpu_hog(ctx, &running, &done)?,
        Kind::GpuHang => crate::faults::gpu_hang(ctx, &running, &done)?,
        Kind::GpuCorrupt => crate::faults::corrupt(ctx, true, &running, &done)?,
        Kind::GpuKill => crate::faults::gpu_kill(ctx, &running, &done)?,
    }
    Ok(())
}

/// The GPU fault offender: per turn, bind a revocable buffer, revoke it,
/// dispatch on the stale binding (the vcoproc faults), reset, restart.
fn gpu_fault(ctx: &Ctx, running: &dyn Fn() -> bool, done: &dyn Fn() -> u64) -> anyhow::Result<()> {
    const BUF: u64 = 0x2000_0000;
    const N: u32 = 4096;
    let len = 4 * u64::from(N);
    let mut c = Client::connect_to(&ctx.socket)?;
    let v = c.open(GPU)?;
    c.load_firmware(v, TOUCH.name, TOUCH.image)?;
    let mut q = c.create_queue(v, GPU_QUEUE, ENTRIES)?;
    c.gpu_attach(v, &q)?;
    c.start(v)?;
    let mem = SharedMem::new(len)?;
    let mut turn = 0u32;
    while running() {
        turn = turn.wrapping_add(1);
        c.map(v, &mem, 0, BUF, len, WirePerms::Rw, WireMapKind::Revocable)?;
        let tag = q.submit_job(&Job::new().bind(0, BUF, len).signal(turn))?;
        q.wait_job(tag, Duration::from_secs(30))?;
        c.revoke(v, BUF)?;
        let tag = q.submit_job(
            &Job::new()
                .push_u32(0, &[N, turn])
                .dispatch(0, [N / 64, 1, 1])
                .signal(turn),
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = c.query(v)?.state;
            if state == "faulted" {
                break;
            }
            if Instant::now() > deadline {
                bail!("the dispatch on a revoked buffer did not fault (state {state})");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        c.reset(v)?;
        c.gpu_attach(v, &q)?;
        c.start(v)?;
        // The faulted job's signal comes back aborted.
        if q.wait_job(tag, Duration::from_secs(30)).is_ok() {
            bail!("the faulted job completed");
        }
        done();
    }
    Ok(())
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
}

/// Options of the hidden `isolation-child` verb.
#[derive(Debug, clap::Args)]
pub struct ChildArgs {
    /// Where to stop the set-up (and say `ready`).
    #[arg(long, value_enum, default_value_t = Stage::Busy)]
    pub stage: Stage,
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
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
            crate::bench::round3(ratio),
        );
        m.insert(format!("{prefix}offender_ops_{n}"), t.ops as f64);
        // The worst offender; the cpu control is not one.
        if *kind != Kind::Cpu && (worst.is_nan() || ratio > worst) {
            worst = ratio;
        }
    }
    m.insert(
        format!("{prefix}victim_p99_ratio"),
        crate::bench::round3(worst),
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
    ];
    let mut failures = phases(&mut victim, &kinds, rounds, MCU_TRIPS, &ctx, "", &mut m)?;
    drop(victim);

    match gpu_skipped {
        Some(why) => eprintln!("isolation: GPU part skipped: {why}"),
        None => {
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
    }
    m.insert("failures".into(), failures as f64);
    m.insert("loadavg_1m_start".into(), load0);
    m.insert("loadavg_1m".into(), loadavg_1m());
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_big_elf_is_as_large_as_the_loader_accepts() {
        let elf = big_elf().unwrap();
        assert_eq!(elf.len(), coproc_mcu::elf::MAX_IMAGE);
        let img = coproc_mcu::elf::parse(&elf).unwrap();
        assert_eq!(img.code_bytes(), u64::from(coproc_mcu::abi::CODE_SIZE));
        assert_eq!(img.data_bytes(), u64::from(coproc_mcu::abi::DATA_SIZE));
        let mut more = elf;
        more.push(0);
        assert!(coproc_mcu::elf::parse(&more).is_err());
    }

    #[test]
    fn the_big_shader_fills_the_limit() {
        let s = big_shader().unwrap();
        assert_eq!(s.len(), coproc_mcu::elf::MAX_IMAGE);
        let text = std::str::from_utf8(&s).unwrap();
        assert_eq!(text.matches("@compute").count(), SHADER_ENTRIES);
    }
}
