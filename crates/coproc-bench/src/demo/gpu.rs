//! The GPU part: saxpy and matmul against the host reference, on a
//! domain in this process ([`LocalGpu`]) or through the daemon
//! ([`RemoteGpu`], [`gpu_remote`]).

use super::{Check, FaultSummary, Row, T};
use coproc_core::iova::{MapKind, Perms};
use coproc_core::memory::Region;
use coproc_core::VcoprocHandle;
use coproc_firmware::drive::RegionQueue;
use coproc_firmware::gpu::{GpuFirmware, MATMUL, SAXPY};
use coproc_firmware::reference::{self, TestRng};
use coproc_proto::gpu::{Job, JobDone, Status};
use coproc_proto::queue::{self, Producer};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The GPU domains: (name, firmware). saxpy is WGSL, matmul SPIR-V.
pub(super) const GPU_PLAN: [(&str, GpuFirmware); 2] = [("frank", SAXPY), ("grace", MATMUL)];
/// The vulkan pcoproc's name.
pub(super) const GPU: &str = "gpu0";
/// Where a GPU domain's queue lives.
const GPU_QUEUE_IOVA: u64 = 0x1000_0000;
/// Entries of a GPU domain's queue.
const GPU_QUEUE_ENTRIES: u32 = 64;
/// Where its buffers start (16 MiB apart).
const GPU_BUF_IOVA: u64 = 0x2000_0000;

/// What the GPU workloads need from a domain: buffers and jobs, in-process
/// or through the daemon.
pub(super) trait GpuDomain {
    /// Map `len` bytes of fresh memory at `iova`; returns its handle.
    fn buffer(&mut self, iova: u64, len: u64, writable: bool) -> Result<usize, String>;
    /// Write into buffer `buf` from its start.
    fn write(&self, buf: usize, data: &[u8]) -> Result<(), String>;
    /// Read `len` bytes of buffer `buf` from its start.
    fn read(&self, buf: usize, len: usize) -> Result<Vec<u8>, String>;
    /// Queue a job, ring once, wait for its signal.
    fn run(&mut self, job: &Job) -> Result<JobDone, String>;
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn words(b: &[u8]) -> impl Iterator<Item = u32> + '_ {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// `y = a x + y` over 64 Ki floats, `8 x scale` times on the same
/// buffers (y accumulates). The inputs are exact in few bits (x in
/// 1/8ths, y integers, a = 1.5), so every product and sum is exact and the
/// GPU's result must equal the host's bit for bit, fused multiply-add or
/// not.
fn gpu_saxpy(d: &mut dyn GpuDomain, scale: u32) -> Check {
    let (n, rounds, a) = (1usize << 16, 8 * scale, 1.5f32);
    let mut rng = TestRng::new(0x5a_5a);
    let x: Vec<f32> = (0..n)
        .map(|_| (rng.next_u64() % 2048) as f32 / 8.0 - 128.0)
        .collect();
    let mut y: Vec<f32> = (0..n)
        .map(|_| (rng.next_u64() % 4096) as f32 - 2048.0)
        .collect();
    let bytes = 4 * n as u64;
    let (xi, yi) = (GPU_BUF_IOVA, GPU_BUF_IOVA + 0x100_0000);
    let xb = d.buffer(xi, bytes, false)?;
    let yb = d.buffer(yi, bytes, true)?;
    d.write(xb, &f32s(&x))?;
    d.write(yb, &f32s(&y))?;
    for r in 0..rounds {
        let job = Job::new()
            .bind(0, xi, bytes)
            .bind(1, yi, bytes)
            .push_f32(0, &[a])
            .push_u32(4, &[n as u32])
            .dispatch(0, [(n as u32).div_ceil(64), 1, 1])
            .signal(r);
        let done = d.run(&job).map_err(|e| format!("job {r}: {e}"))?;
        if done.value != r {
            return Err(format!("job {r}: signal value {} came back", done.value));
        }
        let want = reference::saxpy(a, &x, &y);
        let got: Vec<u32> = words(&d.read(yb, 4 * n)?).collect();
        if let Some(i) = (0..n).find(|&i| got[i] != want[i].to_bits()) {
            return Err(format!(
                "job {r}: y[{i}] = {} != reference {}",
                f32::from_bits(got[i]),
                want[i]
            ));
        }
        y = want;
    }
    Ok(format!(
        "{rounds} saxpy jobs (WGSL) over {} Ki floats equal the host reference bit for bit",
        n >> 10
    ))
}

/// `C = A B` over u32 (wrapping), `4 x scale` jobs of different shapes
/// (none a multiple of the 8 x 8 workgroup), fresh matrices each time and C
/// filled with garbage before each job.
fn gpu_matmul(d: &mut dyn GpuDomain, scale: u32) -> Check {
    let jobs = 4 * scale;
    let mut rng = TestRng::new(0x3a_3a);
    let cap = 64 << 10;
    let (ai, bi, ci) = (
        GPU_BUF_IOVA,
        GPU_BUF_IOVA + 0x100_0000,
        GPU_BUF_IOVA + 0x200_0000,
    );
    let ab = d.buffer(ai, cap, false)?;
    let bb = d.buffer(bi, cap, false)?;
    let cb = d.buffer(ci, cap, true)?;
    let mut macs = 0u64;
    for j in 0..jobs {
        let s = (j % 4) as usize;
        let (m, n, k) = (33 + 16 * s, 47 + 12 * s, 29 + 8 * s);
        let a: Vec<u32> = (0..m * k).map(|_| rng.next_u64() as u32).collect();
        let b: Vec<u32> = (0..k * n).map(|_| rng.next_u64() as u32).collect();
        d.write(ab, &u32s(&a))?;
        d.write(bb, &u32s(&b))?;
        d.write(cb, &u32s(&vec![0xdead_beef; m * n]))?;
        let job = Job::new()
            .bind(0, ai, 4 * (m * k) as u64)
            .bind(1, bi, 4 * (k * n) as u64)
            .bind(2, ci, 4 * (m * n) as u64)
            .push_u32(0, &[m as u32, n as u32, k as u32])
            .dispatch(0, [(n as u32).div_ceil(8), (m as u32).div_ceil(8), 1])
            .signal(j);
        d.run(&job).map_err(|e| format!("job {j}: {e}"))?;
        let got: Vec<u32> = words(&d.read(cb, 4 * m * n)?).collect();
        if got != reference::matmul_u32(&a, &b, m, n, k) {
            return Err(format!(
                "job {j}: {m}x{k} times {k}x{n} differs from the host reference"
            ));
        }
        macs += (m * n * k) as u64;
    }
    Ok(format!(
        "{jobs} matmul jobs (SPIR-V) of up to 81x53 times 53x83, {} K multiply-adds, equal the host reference",
        macs / 1000
    ))
}

pub(super) fn gpu_workload(fw: &str, d: &mut dyn GpuDomain, scale: u32) -> Check {
    match fw {
        "saxpy" => gpu_saxpy(d, scale),
        "matmul" => gpu_matmul(d, scale),
        other => Err(format!("no GPU workload for {other:?}")),
    }
}

/// A GPU domain in this process: a vcoproc handle, its queue in a memfd
/// region, buffers as regions.
pub(super) struct LocalGpu<'a> {
    v: &'a VcoprocHandle,
    queue: RegionQueue,
    ring: Producer,
    tag: u32,
    bufs: Vec<Arc<Region>>,
}

impl<'a> LocalGpu<'a> {
    /// Attach a queue (mailbox word 0) and start the vcoproc (firmware
    /// already loaded).
    pub(super) fn new(v: &'a VcoprocHandle) -> Result<LocalGpu<'a>, String> {
        let len = queue::bytes_for(GPU_QUEUE_ENTRIES)
            .ok_or("queue size")?
            .div_ceil(4096)
            * 4096;
        let region = Arc::new(Region::new_memfd(len).map_err(|e| e.to_string())?);
        let q = RegionQueue(region.clone());
        let ring = Producer::init(&q, GPU_QUEUE_ENTRIES).ok_or("queue header")?;
        v.map(&region, 0, GPU_QUEUE_IOVA, len, Perms::RW, MapKind::Pinned)
            .map_err(|e| e.to_string())?;
        v.mbox_write(0, GPU_QUEUE_IOVA as u32);
        v.start().map_err(|e| e.to_string())?;
        Ok(LocalGpu {
            v,
            queue: q,
            ring,
            tag: 1,
            bufs: Vec::new(),
        })
    }
}

impl GpuDomain for LocalGpu<'_> {
    fn buffer(&mut self, iova: u64, len: u64, writable: bool) -> Result<usize, String> {
        let len = len.div_ceil(4096).max(1) * 4096;
        let r = Arc::new(Region::new_memfd(len).map_err(|e| e.to_string())?);
        let perms = if writable { Perms::RW } else { Perms::R };
        self.v
            .map(&r, 0, iova, len, perms, MapKind::Pinned)
            .map_err(|e| e.to_string())?;
        self.bufs.push(r);
        Ok(self.bufs.len() - 1)
    }
    fn write(&self, buf: usize, data: &[u8]) -> Result<(), String> {
        self.bufs[buf].write(0, data).map_err(|e| e.to_string())
    }
    fn read(&self, buf: usize, len: usize) -> Result<Vec<u8>, String> {
        self.bufs[buf]
            .read_vec(0, len as u64)
            .map_err(|e| e.to_string())
    }
    fn run(&mut self, job: &Job) -> Result<JobDone, String> {
        let deadline = Instant::now() + T;
        let sqes = job.sqes(self.tag);
        let first = self.tag;
        let signal = first.wrapping_add(sqes.len() as u32 - 1);
        self.tag = signal.wrapping_add(1);
        for sqe in &sqes {
            while !self.ring.submit(&self.queue, sqe) {
                self.v.doorbell();
                if Instant::now() > deadline {
                    return Err("the ring stayed full".into());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        self.v.doorbell();
        loop {
            let seq = self.v.last_notify().seq;
            while let Some(c) = self.ring.complete(&self.queue) {
                let status = Status::from_u32(c.status);
                if c.tag == signal && status == Some(Status::Ok) {
                    return Ok(JobDone::from_cqe(&c));
                }
                if c.tag.wrapping_sub(first) <= signal.wrapping_sub(first) {
                    return Err(format!(
                        "command {} refused: {}",
                        c.tag.wrapping_sub(first),
                        status.map_or("unknown status", Status::describe)
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("no completion after {T:?}"));
            }
            match self.v.wait_notify(seq, Duration::from_millis(50)) {
                Ok(_) | Err(coproc_core::CoreError::Timeout(_)) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// A GPU domain through the daemon: its own session, memory shared as
/// memfds, jobs through the SDK's queue.
struct RemoteGpu {
    client: coproc_client::Client,
    v: u32,
    queue: coproc_client::Queue,
    bufs: Vec<coproc_client::SharedMem>,
}

impl RemoteGpu {
    fn new(socket: &std::path::Path, fw: &GpuFirmware) -> Result<RemoteGpu, String> {
        let e = |e: coproc_client::ClientError| e.to_string();
        let mut client = coproc_client::Client::connect_to(socket).map_err(e)?;
        let v = client.open(GPU).map_err(e)?;
        client.load_firmware(v, fw.name, fw.image).map_err(e)?;
        let queue = client
            .create_queue(v, GPU_QUEUE_IOVA, GPU_QUEUE_ENTRIES)
            .map_err(e)?;
        client.gpu_attach(v, &queue).map_err(e)?;
        client.start(v).map_err(e)?;
        Ok(RemoteGpu {
            client,
            v,
            queue,
            bufs: Vec::new(),
        })
    }
}

impl GpuDomain for RemoteGpu {
    fn buffer(&mut self, iova: u64, len: u64, writable: bool) -> Result<usize, String> {
        use coproc_client::{WireMapKind, WirePerms};
        let m = coproc_client::SharedMem::new(len).map_err(|e| e.to_string())?;
        let perms = if writable {
            WirePerms::Rw
        } else {
            WirePerms::R
        };
        self.client
            .map(self.v, &m, 0, iova, m.len(), perms, WireMapKind::Pinned)
            .map_err(|e| e.to_string())?;
        self.bufs.push(m);
        Ok(self.bufs.len() - 1)
    }
    fn write(&self, buf: usize, data: &[u8]) -> Result<(), String> {
        self.bufs[buf].write(0, data).map_err(|e| e.to_string())
    }
    fn read(&self, buf: usize, len: usize) -> Result<Vec<u8>, String> {
        self.bufs[buf].read_vec(0, len).map_err(|e| e.to_string())
    }
    fn run(&mut self, job: &Job) -> Result<JobDone, String> {
        let tag = self.queue.submit_job(job).map_err(|e| e.to_string())?;
        self.queue.wait_job(tag, T).map_err(|e| e.to_string())
    }
}

/// One GPU domain through the daemon, as a thread of the demo with its
/// own session: the row it shows.
pub(super) fn gpu_remote(
    socket: &std::path::Path,
    name: &str,
    fw: &GpuFirmware,
    scale: u32,
) -> Row {
    let mut row = Row::gone(name, GPU, fw.name, String::new());
    let mut d = match RemoteGpu::new(socket, fw) {
        Ok(d) => d,
        Err(e) => {
            row.detail = format!("FAILED: setting up: {e}");
            return row;
        }
    };
    let check = gpu_workload(fw.name, &mut d, scale);
    row.vcoproc = d.v;
    match d.client.query(d.v) {
        Ok(info) => {
            row.state = info.state;
            row.run_ns = info.run_ns;
            row.slices = info.slices;
            row.switches = info.switches;
            row.faults = info.faults;
        }
        Err(e) => row.detail = format!("query: {e}; "),
    }
    if let Ok(faults) = d.client.list_faults() {
        row.fault = faults
            .into_iter()
            .rfind(|f| f.vcoproc == d.v)
            .map(|f| FaultSummary {
                addr: f.addr,
                access: f.access,
                pc: f.pc,
                reason: f.reason,
            });
    }
    row.verified = check.is_ok() && row.detail.is_empty();
    row.detail += &check.unwrap_or_else(|e| format!("FAILED: {e}"));
    row
}
