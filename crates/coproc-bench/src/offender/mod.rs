//! The offenders of `bench isolation` and `bench faults`: one domain doing
//! the worst it can to the others through a private `coprocd` (loading the
//! largest firmware, faulting, request spam, mapping churn, SIGKILLed
//! clients; hangs, corrupt firmware, revokes mid-job in `kinds`), and what
//! they share (the private daemon's pcoprocs and rule, the qecho victim's
//! session). The benchmarks that measure a victim beside them import this;
//! nothing here imports a benchmark.

mod kinds;

pub(crate) use kinds::*;

use anyhow::{anyhow, bail, Context};
use coproc_client::{Client, ClientError, Job, Queue, SharedMem, Sqe, WireMapKind, WirePerms};
use coproc_firmware::gpu::{SPIN, TOUCH};
use coproc_firmware::{FAULTY, QECHO};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
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
pub(crate) const MAP_IOVA: u64 = 0x6010_0000;
/// Bytes per map offender mapping.
pub(crate) const MAP_LEN: u64 = 1 << 20;
/// Entries of the victim's queue.
pub(crate) const ENTRIES: u32 = 64;
/// Victim round trips per phase (mcu, GPU).
pub(crate) const MCU_TRIPS: usize = 1000;
pub(crate) const GPU_TRIPS: usize = 300;
/// Longest one victim request may take before it counts as failed.
pub(crate) const TRIP_TIMEOUT: Duration = Duration::from_secs(5);
/// Victim requests that fail in a row before a phase is given up.
pub(crate) const GIVE_UP: u32 = 20;
/// vcoprocs of one `isolation-child` process.
pub(crate) const CHILD_VCOPROCS: u32 = 4;
/// GPU victim: floats per saxpy job, buffers.
pub(crate) const GPU_N: u32 = 1024;
pub(crate) const GPU_X: u64 = 0x2000_0000;
pub(crate) const GPU_Y: u64 = 0x2100_0000;
pub(crate) const GPU_QUEUE: u64 = 0x1000_0000;
/// Entry points of the GPU shader offender's image.
pub(crate) const SHADER_ENTRIES: usize = 16;

/// The offenders, and `Baseline` (none). `bench faults` adds its own
/// kinds (`Hog` to `GpuKill`, implemented in [`kinds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Baseline,
    Firmware,
    Fault,
    Spam,
    Map,
    Kill,
    Cpu,
    Spawn,
    Busy,
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
            Kind::Spawn => "spawn",
            Kind::Busy => "busy",
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

/// Start `exe isolation-child --stage STAGE` on `socket` and wait until
/// it says `ready` (killed, with what it said, where it does not).
pub(crate) fn ready_child(
    exe: &Path,
    socket: &Path,
    stage: &str,
) -> anyhow::Result<std::process::Child> {
    let mut child = Command::new(exe)
        .arg("--socket")
        .arg(socket)
        .args(["isolation-child", "--stage", stage])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    let out = child.stdout.take().context("child stdout")?;
    let read = std::io::BufReader::new(out).read_line(&mut line);
    if read.is_err() || line.trim() != "ready" {
        let _ = child.kill();
        let status = child.wait()?;
        bail!("isolation-child --stage {stage} did not come up ({status}): {line:?}");
    }
    Ok(child)
}

/// The `kill` offender's process (`isolation-child --stage respawn`):
/// start an `isolation-child` at stage `children` (`busy`: requests going
/// on its vcoprocs; `idle`, for the `spawn` control: no connection), let it
/// work 0–9 ms once it says `ready`, SIGKILL it, say `killed`, and again,
/// until stdin ends (the child then running is killed first).
pub(crate) fn respawn(socket: &Path, children: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let exe = std::env::current_exe()?;
    let stdin = std::io::stdin();
    let ended = || {
        let mut fds = [rustix::event::PollFd::new(
            &stdin,
            rustix::event::PollFlags::IN,
        )];
        // Readable (data or end) or closed: the benchmark is done with us.
        rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default()))
            .is_ok_and(|n| n > 0)
    };
    let mut out = std::io::stdout();
    let mut i = 0u64;
    while !ended() {
        let mut child = ready_child(&exe, socket, children)?;
        // Let it work a little (0-9 ms), then kill it mid-request.
        std::thread::sleep(Duration::from_millis(i % 10));
        child.kill()?;
        child.wait()?;
        i += 1;
        writeln!(out, "killed")?;
        out.flush()?;
    }
    Ok(())
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
        // An offender with nothing to do until then sleeps (`busy`).
        self.thread.thread().unpark();
        self.thread
            .join()
            .map_err(|_| anyhow!("panicked"))?
            .with_context(|| format!("offender {}", kind.name()))
    }
}

/// The offender's loop: one operation per turn until `stop`.
pub(crate) fn offend(
    kind: Kind,
    ctx: &Ctx,
    stop: &AtomicBool,
    ops: &AtomicU64,
) -> anyhow::Result<()> {
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
        Kind::Kill | Kind::Spawn => {
            // The spawning and killing happen in a process of the
            // offender's own, as another domain's would: from a thread of
            // this process they would share an address space with the
            // victim, whose round trips then measure that sharing. The
            // spawn control's children are the same program, started and
            // killed the same way, that never connect.
            let children = if kind == Kind::Spawn { "idle" } else { "busy" };
            let mut spawner = Command::new(std::env::current_exe()?)
                .arg("--socket")
                .arg(&ctx.socket)
                .args(["isolation-child", "--stage", "respawn"])
                .args(["--children", children])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            let stdin = spawner.stdin.take();
            let out = spawner.stdout.take().context("respawner stdout")?;
            let mut lines = std::io::BufReader::new(out).lines();
            let mut failed = None;
            while running() {
                match lines.next() {
                    Some(Ok(l)) if l == "killed" => {
                        done();
                    }
                    other => {
                        failed = Some(format!("{other:?}"));
                        break;
                    }
                }
            }
            // Its stdin closed, it kills its child and ends.
            drop(stdin);
            for _ in lines.by_ref() {}
            let status = spawner.wait()?;
            if let Some(got) = failed {
                bail!("the respawner stopped ({status}): {got}");
            }
        }
        Kind::Busy => {
            // The control: a `kill` offender's child that is never killed,
            // its vcoprocs busy with requests for the whole phase (one
            // operation: the client). Against `kill`, it shows what the
            // killing adds to a busy co-tenant.
            let mut child = ready_child(&std::env::current_exe()?, &ctx.socket, "busy")?;
            done();
            // Until `finish` says stop (it unparks this thread after).
            while running() {
                std::thread::park();
            }
            child.kill()?;
            child.wait()?;
        }
        Kind::Cpu => {
            // The control: no request at all, one CPU kept busy.
            while running() {
                let t = Instant::now();
                let mut x = 1u64;
                while t.elapsed() < Duration::from_millis(1) {
                    x = std::hint::black_box(
                        x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
                    );
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
        Kind::Hog => kinds::hog(ctx, &running, &done)?,
        Kind::Hang => kinds::hang(ctx, &running, &done)?,
        Kind::Corrupt => kinds::corrupt(ctx, false, &running, &done)?,
        Kind::Revoke => kinds::revoke(ctx, &running, &done)?,
        Kind::GpuHog => kinds::gpu_hog(ctx, &running, &done)?,
        Kind::GpuHang => kinds::gpu_hang(ctx, &running, &done)?,
        Kind::GpuCorrupt => kinds::corrupt(ctx, true, &running, &done)?,
        Kind::GpuKill => kinds::gpu_kill(ctx, &running, &done)?,
    }
    Ok(())
}

/// The GPU fault offender: per turn, bind a revocable buffer, revoke it,
/// dispatch on the stale binding (the vcoproc faults), reset, restart.
pub(crate) fn gpu_fault(
    ctx: &Ctx,
    running: &dyn Fn() -> bool,
    done: &dyn Fn() -> u64,
) -> anyhow::Result<()> {
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
