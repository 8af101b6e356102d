//! `coproc bench ring`: the queue data path. An echo through a queue
//! (`qecho` firmware) driven through the daemon (client SDK: shared-memory
//! rings, eventfd doorbell and completion) and the same firmware driven
//! in-process (ring in a `Region`, doorbell and notification through the
//! vcoproc handle), side by side in one run.

use crate::figures::{percentile, round1};
use anyhow::{bail, Context};
use coproc_client::{Client, Queue};
use coproc_core::iova::{MapKind, Perms};
use coproc_core::memory::Region;
use coproc_core::policy::{RoundRobin, SchedParams};
use coproc_core::{DomainId, Pcoproc, VcoprocHandle};
use coproc_firmware::drive::RegionQueue;
use coproc_firmware::QECHO;
use coproc_proto::queue::{self, Cqe, Producer, Sqe};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Notes printed under the table.
pub const NOTES: &str =
    "rtt_*: one request through a queue, submit + doorbell to completion read, \
event-driven (the domain sleeps on its completion eventfd; in-process: on the notification). \
poll_rtt_*: the same through the daemon on a busy-poll queue (budget 200 us: qecho spins on \
the submission tail and the SDK on the completion tail before either sleeps). \
socket_msgs_per_job: socket frames the client sent and received during the timed round trips \
(both modes, warm-up included), per job, counted by the SDK. \
*_rps_N: requests per second with N clients, each its own vcoproc and queue, batches of 16. \
daemon_vs_inprocess_pct: daemon requests/s as % of in-process at 4 clients. \
wake_floor_rtt_*: control, two threads of this process ping-ponging one eventfd write each way \
(the two sleeps and wake-ups every event-driven round trip has, and nothing else): \
what this host charges for them.";

const ENTRIES: u32 = 64;
const BATCH: u32 = 16;
const IOVA: u64 = 0x6000_0000;
/// Busy-poll budget of the poll_rtt queue.
const POLL: Duration = Duration::from_micros(200);

/// One client's queue, either way.
trait Lane {
    fn submit(&mut self, sqe: &Sqe) -> bool;
    fn ring(&mut self) -> anyhow::Result<()>;
    /// Sleep until the device signals a completion.
    fn wait(&mut self) -> anyhow::Result<()>;
    fn complete(&mut self) -> Option<Cqe>;
}

struct DaemonLane {
    client: Client,
    q: Queue,
}

impl Lane for DaemonLane {
    fn submit(&mut self, sqe: &Sqe) -> bool {
        self.q.submit(sqe)
    }
    fn ring(&mut self) -> anyhow::Result<()> {
        Ok(self.q.ring()?)
    }
    fn wait(&mut self) -> anyhow::Result<()> {
        if !self.q.wait(Duration::from_secs(30))? {
            bail!("no completion within 30 s");
        }
        Ok(())
    }
    fn complete(&mut self) -> Option<Cqe> {
        self.q.complete()
    }
}

struct LocalLane {
    v: VcoprocHandle,
    mem: RegionQueue,
    ring: Producer,
    seen: u64,
}

impl Lane for LocalLane {
    fn submit(&mut self, sqe: &Sqe) -> bool {
        self.ring.submit(&self.mem, sqe)
    }
    fn ring(&mut self) -> anyhow::Result<()> {
        self.v.doorbell();
        Ok(())
    }
    fn wait(&mut self) -> anyhow::Result<()> {
        let n = self.v.wait_notify(self.seen, Duration::from_secs(30))?;
        self.seen = n.seq;
        Ok(())
    }
    fn complete(&mut self) -> Option<Cqe> {
        self.ring.complete(&self.mem)
    }
}

/// A daemon client with a qecho vcoproc and a queue (busy-poll budget
/// `poll`, zero: event-driven).
fn daemon_lane(socket: &std::path::Path, poll: Duration) -> anyhow::Result<DaemonLane> {
    let mut c = Client::connect_to(socket)?;
    let v = c.open("mcu0")?;
    c.load_firmware(v, "qecho", QECHO.elf)?;
    let q = c.create_queue_with(v, IOVA, ENTRIES, poll)?;
    c.mbox_write(v, 0, &[IOVA as u32, q.len() as u32])?;
    c.start(v)?;
    Ok(DaemonLane { client: c, q })
}

fn local_lane(p: &Arc<Pcoproc>, d: u32) -> anyhow::Result<LocalLane> {
    let v = p.create_vcoproc(DomainId(d), SchedParams::default())?;
    v.load_firmware("qecho", QECHO.elf)?;
    let len = queue::bytes_for(ENTRIES)
        .context("queue size")?
        .div_ceil(4096)
        * 4096;
    let region = Arc::new(Region::new(len)?);
    let mem = RegionQueue(region.clone());
    let ring = Producer::init(&mem, ENTRIES).context("queue init")?;
    v.map(&region, 0, IOVA, len, Perms::RW, MapKind::Pinned)?;
    v.mbox_write(0, IOVA as u32);
    v.mbox_write(1, len as u32);
    v.start()?;
    Ok(LocalLane {
        v,
        mem,
        ring,
        seen: 0,
    })
}

/// Send `n` requests as one batch and check every completion.
fn batch(l: &mut dyn Lane, next_tag: &mut u32, n: u32) -> anyhow::Result<()> {
    let first = *next_tag;
    for _ in 0..n {
        let tag = *next_tag;
        *next_tag = next_tag.wrapping_add(1);
        let sqe = Sqe {
            opcode: 1,
            tag,
            args: [tag; 14],
        };
        if !l.submit(&sqe) {
            bail!("submission ring full");
        }
    }
    l.ring()?;
    let mut got = 0;
    while got < n {
        while let Some(c) = l.complete() {
            let want = first.wrapping_add(got);
            if c.tag != want || c.status != 1 || c.result[0] != want.wrapping_add(1) {
                bail!("completion {c:?} for request {want}");
            }
            got += 1;
        }
        if got < n {
            l.wait()?;
        }
    }
    Ok(())
}

/// Untimed round trips before the timed ones.
const WARMUP: usize = 200;

/// Round-trip times of single requests, in µs, sorted (after
/// [`WARMUP`] untimed ones).
fn rtts(l: &mut dyn Lane, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut tag = 1;
    for _ in 0..WARMUP {
        batch(l, &mut tag, 1)?;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        batch(l, &mut tag, 1)?;
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    v.sort_by(f64::total_cmp);
    Ok(v)
}

/// Requests per second of `lanes` clients, each on its own thread.
fn rate<L: Lane + Send>(lanes: Vec<L>, for_: Duration) -> anyhow::Result<f64> {
    let start = Instant::now();
    let results: Vec<anyhow::Result<u64>> = std::thread::scope(|s| {
        let hs: Vec<_> = lanes
            .into_iter()
            .map(|mut l| {
                s.spawn(move || -> anyhow::Result<u64> {
                    let mut tag = 1;
                    let mut done = 0u64;
                    while start.elapsed() < for_ {
                        batch(&mut l, &mut tag, BATCH)?;
                        done += u64::from(BATCH);
                    }
                    Ok(done)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("client thread panicked")))
            })
            .collect()
    });
    let mut total = 0;
    for r in results {
        total += r?;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Round trips, in µs, sorted, of two threads that each sleep in `poll` on
/// an eventfd until the other writes it: the floor under any event-driven
/// round trip on this host (a sleep and a wake-up on each side).
fn wake_floor(n: usize) -> anyhow::Result<Vec<f64>> {
    use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
    use std::os::fd::OwnedFd;
    fn sleep_on(fd: &OwnedFd) -> rustix::io::Result<()> {
        let mut p = [PollFd::new(fd, PollFlags::IN)];
        while poll(&mut p, None)? == 0 {}
        let mut b = [0u8; 8];
        rustix::io::read(fd, &mut b)?;
        Ok(())
    }
    let ping = eventfd(0, EventfdFlags::CLOEXEC)?;
    let pong = eventfd(0, EventfdFlags::CLOEXEC)?;
    let one = 1u64.to_ne_bytes();
    let total = n + WARMUP;
    std::thread::scope(|s| -> anyhow::Result<Vec<f64>> {
        let echo = s.spawn(|| -> rustix::io::Result<()> {
            for _ in 0..total {
                sleep_on(&ping)?;
                rustix::io::write(&pong, &one)?;
            }
            Ok(())
        });
        let mut v = Vec::with_capacity(n);
        for i in 0..total {
            let t = Instant::now();
            rustix::io::write(&ping, &one)?;
            sleep_on(&pong)?;
            if i >= WARMUP {
                v.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        echo.join()
            .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
        v.sort_by(f64::total_cmp);
        Ok(v)
    })
}

/// The benchmark.
pub fn ring(rounds: usize) -> anyhow::Result<BTreeMap<&'static str, f64>> {
    let config = "[[pcoproc]]\nname = \"mcu0\"\nclass = \"mcu\"\n\n[[domain]]\nuids = \"*\"\npcoprocs = [\"mcu0\"]\n";
    let daemon = crate::spawn::TempDaemon::start(config)?;
    let p = Pcoproc::spawn(
        "mcu0",
        coproc_mcu::factory(coproc_mcu::McuConfig::default()),
        Box::new(RoundRobin::new(RoundRobin::DEFAULT_SLICE)?),
    )?;
    let trips = 1000 * rounds.max(1);
    let mut m = BTreeMap::new();

    let mut dl = daemon_lane(&daemon.socket, Duration::ZERO)?;
    let before = dl.client.messages();
    let d = rtts(&mut dl, trips)?;
    let mut msgs = dl.client.messages().total() - before.total();
    drop(dl);
    let mut pl = daemon_lane(&daemon.socket, POLL)?;
    let before = pl.client.messages();
    let pd = rtts(&mut pl, trips)?;
    msgs += pl.client.messages().total() - before.total();
    drop(pl);
    // Per job of the timed round trips (the warm-up ones included, which
    // are jobs on the same queues too).
    m.insert(
        "socket_msgs_per_job",
        msgs as f64 / (2 * (trips + WARMUP)) as f64,
    );
    m.insert("poll_rtt_p50_us", round1(percentile(&pd, 0.5)));
    m.insert("poll_rtt_p99_us", round1(percentile(&pd, 0.99)));
    let mut ll = local_lane(&p, 1)?;
    let l = rtts(&mut ll, trips)?;
    let _ = ll.v.destroy();
    crate::samples::record("daemon_rtt_us", crate::samples::Kind::LatencyUs, &d);
    crate::samples::record(
        "daemon_busypoll_rtt_us",
        crate::samples::Kind::LatencyUs,
        &pd,
    );
    crate::samples::record("inprocess_rtt_us", crate::samples::Kind::LatencyUs, &l);
    m.insert("rtt_p50_us", round1(percentile(&d, 0.5)));
    m.insert("rtt_p99_us", round1(percentile(&d, 0.99)));
    m.insert("inprocess_rtt_p50_us", round1(percentile(&l, 0.5)));
    m.insert("inprocess_rtt_p99_us", round1(percentile(&l, 0.99)));
    let w = wake_floor(trips)?;
    crate::samples::record("wake_floor_rtt_us", crate::samples::Kind::LatencyUs, &w);
    m.insert("wake_floor_rtt_p50_us", round1(percentile(&w, 0.5)));
    m.insert("wake_floor_rtt_p99_us", round1(percentile(&w, 0.99)));

    let span = Duration::from_millis(300 * rounds.max(1) as u64);
    let mut at4 = (0.0, 0.0);
    for (n, dk, lk) in [
        (1, "daemon_rps_1", "inprocess_rps_1"),
        (2, "daemon_rps_2", "inprocess_rps_2"),
        (4, "daemon_rps_4", "inprocess_rps_4"),
        (8, "daemon_rps_8", "inprocess_rps_8"),
    ] {
        let lanes = (0..n)
            .map(|_| daemon_lane(&daemon.socket, Duration::ZERO))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let dr = rate(lanes, span)?;
        let lanes = (0..n)
            .map(|i| local_lane(&p, 10 + i))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let handles: Vec<VcoprocHandle> = lanes.iter().map(|l| l.v.clone()).collect();
        let lr = rate(lanes, span)?;
        for h in handles {
            let _ = h.destroy();
        }
        m.insert(dk, dr.round());
        m.insert(lk, lr.round());
        if n == 4 {
            at4 = (dr, lr);
        }
    }
    m.insert(
        "daemon_vs_inprocess_pct",
        (at4.0 / at4.1 * 1000.0).round() / 10.0,
    );
    p.shutdown();
    Ok(m)
}
