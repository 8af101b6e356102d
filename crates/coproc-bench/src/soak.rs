//! `coproc bench soak`: what a long life of abrupt ends costs the daemon.
//! A private `coprocd`, a well-behaved victim session doing checked qecho
//! round trips the whole time, and `--cycles` cycles, each one client
//! killed at some point of its life (a thread that closes its connection
//! abruptly, or, every seventh cycle, an `isolation-child` process
//! SIGKILLed) and one flood of connections. The daemon's resident memory,
//! descriptors and threads are read from `/proc` before and after, each
//! time once they have stopped changing.

use crate::isolation::Stage;
use crate::offender::{self, ENTRIES, MCU, QUEUE_IOVA};
use anyhow::{bail, Context};
use coproc_client::{Client, Queue, SharedMem, Sqe, WireMapKind, WirePerms};
use coproc_firmware::QECHO;
use coproc_proto::{ClientFrame, Request};
use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Notes printed under the table.
pub const NOTES: &str = "A private coprocd (one mcu pcoproc, credit). Victim: one session, qecho \
on its 64-entry queue, single round trips for the whole run, every completion checked \
(victim_errors: wrong, failed or late ones; victim_p50_us/victim_p99_us: its round trips). \
cycles: each cycle kills one client and floods the socket once. Kills, in turn: a session that \
closes its connection right after open (create), after map, after create-queue, with requests in \
flight on its started queue (mid-job), right after sending a 4 MiB load-firmware request \
(mid-load), and a started queue-bearing vcoproc of a session that lives for the whole run \
destroyed by another session of the same uid, which then closes (cross-destroy; \
cross_destroys counts them); every seventh cycle instead an isolation-child process stopped at create, \
map, queue, busy (requests in flight) or load is SIGKILLed (process_kills). A flood: 4 connections \
that never say hello and 4 sessions that say hello, all held at once, then dropped. The daemon's \
VmRSS (/proc/PID/status), open descriptors (/proc/PID/fd) and threads are read after 70 warm-up \
cycles and after the run, each once the descriptor and thread counts have been unchanged for 1 s and at least 11 s \
have passed since the cycles stopped (longer than the 10 s an idle tokio blocking thread lingers), \
or (after the run) are back to the counts before, at most 60 s (settled = 0 if it gave up): rss_growth_kib, fd_growth, thread_growth \
= after - before; rss_kib_tenth: VmRSS (not settled) after a tenth of the cycles, \
rss_growth_kib_last_90pct = rss_kib_after - rss_kib_tenth (growth that keeps on with the \
cycles, apart from what the first cycles fill once). jit_kib_before/after: resident KiB of the mcu \
engine's translated-code buffer (the anonymous mapping of coproc_mcu's JIT_CACHE_BYTES less its \
guard page, read from /proc/PID/smaps), a cache bounded by that size that fills with the code \
of every firmware loaded; rss_growth_kib_excl_jit = rss_growth_kib - (jit_kib_after - \
jit_kib_before). Before each reading a short-lived qecho vcoproc is switched in and out three \
times 150 ms apart, so that the engine's software TLB, which grows while contexts touch many \
pages and is resized only at a flush, is back to what the victim uses. leftover_vcoprocs: vcoprocs the daemon lists after the run besides the victim's. \
cycle_ms_p50/p99: one kill cycle plus its flood. failures = victim_errors.";

/// Connections of one flood: half never say hello, half open a session.
const FLOOD: usize = 8;
/// Every this many cycles, the kill is a real child process.
const PROCESS_EVERY: usize = 7;
/// Cycles before the first measurement: every kind, every child stage.
const WARM_UP: usize = 70;
/// A settle lasts at least this long after the activity that it follows
/// ended: longer than tokio's blocking threads linger idle (10 s).
const QUIET: Duration = Duration::from_secs(11);
/// And the counts must have been unchanged for this long.
const STABLE: Duration = Duration::from_secs(1);
/// The longest a settle waits.
const SETTLE_MAX: Duration = Duration::from_secs(60);
/// Requests left in flight by a mid-job kill.
const IN_FLIGHT: u32 = 8;
/// Victim requests that fail in a row before the victim gives up.
const GIVE_UP: u64 = 20;

/// The thread kills, in turn.
#[derive(Debug, Clone, Copy)]
enum Kill {
    Create,
    Map,
    Queue,
    MidJob,
    MidLoad,
    CrossDestroy,
}

const KILLS: [Kill; 6] = [
    Kill::Create,
    Kill::Map,
    Kill::Queue,
    Kill::MidJob,
    Kill::MidLoad,
    Kill::CrossDestroy,
];

/// The process kills, in turn.
const STAGES: [Stage; 5] = [
    Stage::Create,
    Stage::Map,
    Stage::Queue,
    Stage::Busy,
    Stage::Load,
];

/// What the cycles share.
struct Ctx {
    socket: PathBuf,
    exe: PathBuf,
    /// The largest ELF the loader accepts, for mid-load kills.
    elf: Vec<u8>,
    /// Mapped by map kills (each mapping is the daemon's own).
    mem: SharedMem,
    /// The session whose vcoprocs cross-destroy kills destroy from another
    /// session; it lives for the whole run.
    owner: Mutex<Client>,
}

/// A process's resident memory, descriptors and threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStats {
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
}

/// Read `pid`'s figures from `/proc`.
pub(crate) fn proc_stats(pid: u32) -> anyhow::Result<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?
        .count() as u64;
    Ok(ProcStats {
        rss_kib: field("VmRSS:")?,
        fds,
        threads: field("Threads:")?,
    })
}

/// Resident KiB of the mcu engine's translated-code buffers in `pid`: its
/// anonymous mappings exactly [`coproc_mcu::JIT_CACHE_BYTES`] less the
/// guard page long (one per mcu pcoproc).
fn jit_kib(pid: u32) -> anyhow::Result<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("reading /proc/{pid}/smaps"))?;
    let want = u64::from(coproc_mcu::JIT_CACHE_BYTES) - 4096;
    let mut total = 0;
    let mut inside = false;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                // Anonymous: no path after the inode.
                inside = b - a == want && f.nth(4).is_none();
                continue;
            }
        }
        if inside && first == "Rss:" {
            total += f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Ok(total)
}

/// Wait until `pid`'s descriptor and thread counts equal `target`'s, or
/// have not changed for [`STABLE`] with [`QUIET`] passed since the call
/// (made when the activity ended: every idle thread the activity left has
/// exited by then); at most [`SETTLE_MAX`]. Returns the figures then, how
/// long it waited and whether it settled.
pub(crate) fn settle(
    pid: u32,
    target: Option<ProcStats>,
) -> anyhow::Result<(ProcStats, Duration, bool)> {
    let began = Instant::now();
    let mut last = proc_stats(pid)?;
    let mut since = Instant::now();
    loop {
        let s = proc_stats(pid)?;
        if target.is_some_and(|t| (t.fds, t.threads) == (s.fds, s.threads)) {
            return Ok((s, began.elapsed(), true));
        }
        if (s.fds, s.threads) != (last.fds, last.threads) {
            last = s;
            since = Instant::now();
        } else if since.elapsed() >= STABLE && began.elapsed() >= QUIET {
            return Ok((s, began.elapsed(), true));
        }
        if began.elapsed() >= SETTLE_MAX {
            return Ok((s, began.elapsed(), false));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Let the mcu engine's software TLB (QEMU's, inside Unicorn) shrink back
/// to what the running vcoprocs use before a reading. It grows while
/// contexts touch many pages (the 4 MiB firmware of the `firmware` kills
/// fills it) and is resized only when it is flushed, once a 100 ms window
/// has shown it mostly empty; with only the victim running nothing flushes
/// it, so a reading would catch it at whatever size the last cycles left:
/// up to 96 MiB (malloc'd blocks of 64 and 32 MiB, `tlb_mmu_resize_locked`
/// in a backtrace of the daemon's `mmap`s). A short-lived qecho vcoproc
/// switched in and out three times, 150 ms apart, brings the flushes.
fn settle_engine(socket: &Path) -> anyhow::Result<()> {
    for tag in 0..3 {
        let (client, mut q) = offender::qecho_vcoproc(socket)?;
        offender::qecho_trip(&mut q, tag).map_err(|e| anyhow::anyhow!("settling: {e}"))?;
        drop(q);
        drop(client);
        std::thread::sleep(Duration::from_millis(150));
    }
    Ok(())
}

/// The victim: checked qecho round trips on its own thread until stopped.
struct Victim {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<f64>, u64)>,
}

impl Victim {
    fn start(socket: &Path) -> anyhow::Result<Victim> {
        let (client, mut q) = offender::qecho_vcoproc(socket)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("soak-victim".into())
            .spawn(move || {
                let _client = client;
                let (mut rtts, mut errors, mut in_a_row) = (Vec::new(), 0u64, 0u64);
                let mut tag = 1u32;
                while !s.load(Ordering::Acquire) && in_a_row < GIVE_UP {
                    let t = Instant::now();
                    match offender::qecho_trip(&mut q, tag) {
                        Ok(()) => {
                            rtts.push(t.elapsed().as_secs_f64() * 1e6);
                            in_a_row = 0;
                        }
                        Err(e) => {
                            if errors == 0 {
                                eprintln!("soak: victim: {e}");
                            }
                            errors += 1;
                            in_a_row += 1;
                        }
                    }
                    tag = tag.wrapping_add(1);
                }
                if in_a_row >= GIVE_UP {
                    eprintln!("soak: victim failed {GIVE_UP} requests in a row and gave up");
                }
                (rtts, errors)
            })?;
        Ok(Victim { stop, thread })
    }

    /// Stop it; its round-trip times and errors.
    fn finish(self) -> anyhow::Result<(Vec<f64>, u64)> {
        self.stop.store(true, Ordering::Release);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the victim panicked"))
    }
}

/// A started qecho vcoproc with `IN_FLIGHT` requests submitted and rung,
/// none waited for.
fn busy(socket: &Path) -> anyhow::Result<(Client, Queue)> {
    let (c, mut q) = offender::qecho_vcoproc(socket)?;
    for tag in 1..=IN_FLIGHT {
        let args = std::array::from_fn(|i| tag + i as u32);
        if !q.submit(&Sqe {
            opcode: 1,
            tag,
            args,
        }) {
            bail!("a fresh queue is full");
        }
    }
    q.ring()?;
    Ok((c, q))
}

/// One thread kill: a session that closes its connection at `kill`.
fn thread_kill(kill: Kill, ctx: &Ctx) -> anyhow::Result<()> {
    let mut c = Client::connect_to(&ctx.socket)?;
    match kill {
        Kill::Create => {
            c.open(MCU)?;
        }
        Kill::Map => {
            let v = c.open(MCU)?;
            let len = ctx.mem.len();
            c.map(
                v,
                &ctx.mem,
                0,
                QUEUE_IOVA,
                len,
                WirePerms::Rw,
                WireMapKind::Pinned,
            )?;
        }
        Kill::Queue => {
            let v = c.open(MCU)?;
            c.load_firmware(v, QECHO.name, QECHO.elf)?;
            c.create_queue(v, QUEUE_IOVA, ENTRIES)?;
        }
        Kill::MidJob => {
            drop(c);
            drop(busy(&ctx.socket)?);
            return Ok(());
        }
        Kill::MidLoad => {
            // The request is sent as the SDK would, and the connection
            // closed without waiting for its answer.
            let v = c.open(MCU)?;
            let image = SharedMem::with_contents(&ctx.elf)?;
            let frame = coproc_proto::frame::encode(&ClientFrame {
                id: u64::MAX,
                req: Request::LoadFirmware {
                    vcoproc: v,
                    label: "big".into(),
                    len: ctx.elf.len() as u64,
                },
            })?;
            coproc_proto::fdpass::send_frame(c.socket().as_fd(), &frame, &[image.fd()])?;
        }
        Kill::CrossDestroy => {
            // The owner lives on; this session destroys what it made.
            let mut owner = ctx
                .owner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let v = owner.open(MCU)?;
            owner.load_firmware(v, QECHO.name, QECHO.elf)?;
            let q = owner.create_queue(v, QUEUE_IOVA, ENTRIES)?;
            owner.mbox_write(v, 0, &[QUEUE_IOVA as u32, q.len() as u32])?;
            owner.start(v)?;
            c.destroy(v)?;
        }
    }
    Ok(())
}

/// One process kill: an `isolation-child` stopped at `stage`, SIGKILLed
/// once it says `ready`.
fn process_kill(stage: Stage, ctx: &Ctx) -> anyhow::Result<()> {
    use clap::ValueEnum;
    let name = stage
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    let mut child = offender::ready_child(&ctx.exe, &ctx.socket, &name)?;
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// One flood: connections that never say hello and sessions, all held at
/// once, then dropped.
fn flood(socket: &Path) -> anyhow::Result<()> {
    let raw = (0..FLOOD / 2)
        .map(|_| UnixStream::connect(socket))
        .collect::<Result<Vec<_>, _>>()?;
    let sessions = (0..FLOOD / 2)
        .map(|_| Client::connect_to(socket))
        .collect::<Result<Vec<_>, _>>()?;
    drop(raw);
    drop(sessions);
    Ok(())
}

/// Cycle `i`: one kill and one flood. Returns whether the kill was a
/// process.
fn cycle(i: usize, ctx: &Ctx) -> anyhow::Result<bool> {
    let process = i % PROCESS_EVERY == PROCESS_EVERY - 1;
    if process {
        let stage = STAGES[(i / PROCESS_EVERY) % STAGES.len()];
        process_kill(stage, ctx).with_context(|| format!("cycle {i}: {stage:?} child"))?;
    } else {
        let kill = KILLS[i % KILLS.len()];
        thread_kill(kill, ctx).with_context(|| format!("cycle {i}: {kill:?} kill"))?;
    }
    flood(&ctx.socket).with_context(|| format!("cycle {i}: flood"))?;
    Ok(process)
}

/// The benchmark. Returns its figures.
pub fn soak(cycles: usize) -> anyhow::Result<BTreeMap<String, f64>> {
    let load0 = crate::hostload::loadavg_1m().unwrap_or(f64::NAN);
    // Every session runs as this uid: quotas far above what the victim and
    // the not-yet-cleaned-up vcoprocs of killed clients need together.
    let config = format!(
        "[[pcoproc]]\nname = \"{MCU}\"\nclass = \"mcu\"\npolicy = \"credit\"\n\
         policy_params = {{ slice_us = 5000 }}\noptions = {{ max_contexts = 1024 }}\n\n{}",
        crate::offender::open_rule(false)
    );
    let daemon = crate::spawn::TempDaemon::start(&config)?;
    let pid = daemon.pid();
    let ctx = Ctx {
        socket: daemon.socket.clone(),
        exe: std::env::current_exe()?,
        elf: offender::big_elf()?,
        mem: SharedMem::new(64 * 1024)?,
        owner: Mutex::new(Client::connect_to(&daemon.socket)?),
    };
    let victim = Victim::start(&daemon.socket)?;
    for i in 0..WARM_UP {
        cycle(i, &ctx)?;
    }
    settle_engine(&daemon.socket)?;
    let (before, settle_before, settled_before) = settle(pid, None)?;
    let jit_before = jit_kib(pid)?;
    let began = Instant::now();
    let mut times = Vec::with_capacity(cycles);
    let mut processes = 0u64;
    let mut rss_tenth = before.rss_kib;
    for i in 0..cycles {
        if i == cycles / 10 {
            rss_tenth = proc_stats(pid)?.rss_kib;
        }
        let t = Instant::now();
        processes += u64::from(cycle(WARM_UP + i, &ctx)?);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let secs = began.elapsed().as_secs_f64();
    settle_engine(&daemon.socket)?;
    let (after, settle_after, settled_after) = settle(pid, Some(before))?;
    let jit_after = jit_kib(pid)?;
    let (mut rtts, errors) = victim.finish()?;
    // Measured first: this listing is a session of its own.
    let leftover = Client::connect_to(&daemon.socket)?
        .list_vcoprocs(None, None)?
        .len()
        .saturating_sub(1);
    drop(daemon);

    times.sort_by(f64::total_cmp);
    rtts.sort_by(f64::total_cmp);
    let pct = |v: &[f64], p: f64| {
        if v.is_empty() {
            f64::NAN
        } else {
            crate::figures::round3(v[((v.len() - 1) as f64 * p).round() as usize])
        }
    };
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: f64| {
        m.insert(k.to_string(), v);
    };
    put("cycles", cycles as f64);
    put("process_kills", processes as f64);
    put("thread_kills", (cycles as u64 - processes) as f64);
    let cross = (WARM_UP..WARM_UP + cycles)
        .filter(|i| {
            i % PROCESS_EVERY != PROCESS_EVERY - 1
                && matches!(KILLS[i % KILLS.len()], Kill::CrossDestroy)
        })
        .count();
    put("cross_destroys", cross as f64);
    put("flood_connections", (cycles * FLOOD) as f64);
    put("seconds", crate::figures::round3(secs));
    put("cycle_ms_p50", pct(&times, 0.5));
    put("cycle_ms_p99", pct(&times, 0.99));
    put("rss_kib_before", before.rss_kib as f64);
    put("rss_kib_after", after.rss_kib as f64);
    put(
        "rss_growth_kib",
        after.rss_kib as f64 - before.rss_kib as f64,
    );
    put("jit_kib_before", jit_before as f64);
    put("jit_kib_after", jit_after as f64);
    put(
        "rss_growth_kib_excl_jit",
        after.rss_kib as f64 - before.rss_kib as f64 - (jit_after as f64 - jit_before as f64),
    );
    put("rss_kib_tenth", rss_tenth as f64);
    put(
        "rss_growth_kib_last_90pct",
        after.rss_kib as f64 - rss_tenth as f64,
    );
    put("fds_before", before.fds as f64);
    put("fds_after", after.fds as f64);
    put("fd_growth", after.fds as f64 - before.fds as f64);
    put("threads_before", before.threads as f64);
    put("threads_after", after.threads as f64);
    put(
        "thread_growth",
        after.threads as f64 - before.threads as f64,
    );
    put(
        "settle_s_before",
        crate::figures::round3(settle_before.as_secs_f64()),
    );
    put(
        "settle_s_after",
        crate::figures::round3(settle_after.as_secs_f64()),
    );
    put(
        "settled",
        f64::from(u8::from(settled_before && settled_after)),
    );
    put("leftover_vcoprocs", leftover as f64);
    put("victim_requests", rtts.len() as f64);
    put("victim_p50_us", pct(&rtts, 0.5));
    put("victim_p99_us", pct(&rtts, 0.99));
    put("victim_errors", errors as f64);
    put("failures", errors as f64);
    put("loadavg_1m_start", load0);
    Ok(m)
}
