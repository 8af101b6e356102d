//! `coproc demo`: five domains, five firmware images, one mcu pcoproc under
//! round robin; where a Vulkan device is found, two more domains on a
//! `vulkan` pcoproc (`gpu0`): saxpy (WGSL) and matmul (SPIR-V). Every
//! result is checked against the host reference.

use crate::output::{print_table, Format};
use anyhow::{bail, Context};
use coproc_core::fault::{Access, FaultRecord};
use coproc_core::iova::{MapKind, Perms};
use coproc_core::memory::Region;
use coproc_core::policy::{RoundRobin, SchedParams};
use coproc_core::state::VcoprocState;
use coproc_core::{System, VcoprocHandle};
use coproc_firmware::drive::{self, Buffer};
use coproc_firmware::gpu::{GpuFirmware, MATMUL, SAXPY};
use coproc_firmware::reference::{self, TestRng};
use coproc_firmware::{Firmware, CRC32, ECHO, FAULTY, FIR, HOG};
use coproc_mcu::{abi, factory, McuConfig};
use coproc_proto::gpu::{Job, JobDone, Status};
use coproc_proto::queue::{self, Producer, QueueMem};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of the demo.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Round-robin slice in microseconds.
    #[arg(long, default_value_t = 1000)]
    slice_us: u64,
    /// Scale the amount of work (1 = a few seconds).
    #[arg(long, default_value_t = 1)]
    scale: u32,
    /// Run the domains as threads of this process on an in-process
    /// pcoproc, instead of as client processes of a private coprocd.
    #[arg(long)]
    in_process: bool,
}

/// A fault as the demo shows it.
#[derive(Debug, Serialize)]
struct FaultSummary {
    addr: Option<u64>,
    access: String,
    pc: Option<u64>,
    reason: String,
}

impl From<&FaultRecord> for FaultSummary {
    fn from(f: &FaultRecord) -> Self {
        FaultSummary {
            addr: f.fault.addr,
            access: format!("{:?}", f.fault.access).to_lowercase(),
            pc: f.fault.pc,
            reason: f.fault.reason.to_string(),
        }
    }
}

const T: Duration = Duration::from_secs(120);
/// Where `faulty` reads (see firmware/examples/faulty.c).
const FAULTY_ADDR: u64 = abi::IOVA_BASE as u64 + abi::IOVA_SIZE as u64 - 0x1000;

#[derive(Debug, Serialize)]
struct Row {
    domain: String,
    /// The pcoproc it ran on ("mcu0" or "gpu0").
    pcoproc: &'static str,
    firmware: &'static str,
    vcoproc: u32,
    state: String,
    verified: bool,
    run_ns: u64,
    share_pct: f64,
    slices: u64,
    switches: u64,
    faults: u64,
    detail: String,
    fault: Option<FaultSummary>,
}

/// The GPU part of the demo.
#[derive(Debug, Serialize)]
struct GpuSummary {
    pcoproc: &'static str,
    /// "name (driver)" of the device the pcoproc opened.
    model: String,
}

#[derive(Debug, Serialize)]
struct Report {
    pcoproc: String,
    /// The vulkan pcoproc, when a device was found.
    gpu: Option<GpuSummary>,
    /// Why the GPU domains did not run (no Vulkan device), if they did not.
    gpu_skipped: Option<String>,
    policy: String,
    slice_us: u64,
    /// "daemon" (client processes of coprocd) or "in-process".
    mode: &'static str,
    /// The toolchain examples (libc, libm, FPU, interrupts), on their own
    /// in-process pcoproc `mcu1`.
    examples: Vec<Row>,
    /// Run-time scheduler changes made while the domains ran.
    sched_changes: Vec<String>,
    ok: bool,
    vcoprocs: Vec<Row>,
}

const PLAN: [(&str, Firmware); 5] = [
    ("alice", FIR),
    ("bob", CRC32),
    ("carol", ECHO),
    ("dave", HOG),
    ("eve", FAULTY),
];

/// What one run of the demo found.
struct Outcome {
    rows: Vec<Row>,
    switches: u64,
    sched_changes: Vec<String>,
    /// The vulkan pcoproc's model, when the GPU domains ran.
    gpu_model: Option<String>,
}

/// The demo through the daemon: each mcu domain is a `coproc domain-run`
/// client process of a private coprocd; each GPU domain (with `gpu`) a
/// thread of this process with its own session, using the SDK.
fn through_daemon(args: &Args, gpu: bool) -> anyhow::Result<Outcome> {
    use std::io::Read;
    use std::process::Stdio;
    let mut config = format!(
        "[[pcoproc]]\nname = \"mcu0\"\nclass = \"mcu\"\npolicy = \"rr\"\npolicy_params = {{ slice_us = \"{}\" }}\n\n",
        args.slice_us
    );
    if gpu {
        config += &format!(
            "[[pcoproc]]\nname = \"{GPU}\"\nclass = \"vulkan\"\npolicy = \"rr\"\npolicy_params = {{ slice_us = \"{}\" }}\n\n",
            args.slice_us
        );
    }
    config += &format!(
        "[[domain]]\nuids = \"*\"\npcoprocs = [\"mcu0\"{}]\n",
        if gpu {
            format!(", \"{GPU}\"")
        } else {
            String::new()
        }
    );
    let daemon = crate::spawn::TempDaemon::start(&config)?;
    let gpu_model = if gpu {
        let mut c = coproc_client::Client::connect_to(&daemon.socket)?;
        let l = c.list_coprocs()?;
        let model = l.into_iter().find(|p| p.name == GPU).map(|p| p.model);
        Some(model.with_context(|| format!("the daemon does not list {GPU}"))?)
    } else {
        None
    };
    let scale_n = args.scale.max(1);
    let scale = scale_n.to_string();
    let mut kids = Vec::new();
    for (name, fw) in PLAN {
        let mut c = daemon.coproc()?;
        c.args([
            "-o",
            "json",
            "domain-run",
            "--firmware",
            fw.name,
            "--scale",
            &scale,
        ]);
        if fw.name == "hog" {
            c.arg("--until-eof").stdin(Stdio::piped());
        }
        let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        kids.push((name, fw, child));
    }
    let socket = daemon.socket.clone();
    let gpu_threads: Vec<_> = GPU_PLAN
        .iter()
        .filter(|_| gpu)
        .map(|&(name, fw)| {
            let socket = socket.clone();
            std::thread::spawn(move || gpu_remote(&socket, name, &fw, scale_n))
        })
        .collect();
    let changes = run_time_control(&daemon.socket);
    // Everyone but the hog finishes on its own; then the hog is told to stop.
    let mut outs = Vec::new();
    let mut hog = None;
    for (name, fw, child) in kids {
        if fw.name == "hog" {
            hog = Some((name, fw, child));
        } else {
            outs.push((name, fw, child.wait_with_output()?));
        }
    }
    if let Some((name, fw, mut child)) = hog {
        drop(child.stdin.take());
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .map(|mut s| s.read_to_string(&mut stdout));
        let status = child.wait()?;
        outs.push((
            name,
            fw,
            std::process::Output {
                status,
                stdout: stdout.into_bytes(),
                stderr: vec![],
            },
        ));
    }
    outs.sort_by_key(|(name, _, _)| PLAN.iter().position(|(n, _)| n == name));
    let mut rows = Vec::new();
    for (name, fw, out) in outs {
        let text = String::from_utf8_lossy(&out.stdout);
        let rep: Option<serde_json::Value> = serde_json::from_str(text.trim()).ok();
        let get = |k: &str| {
            rep.as_ref()
                .and_then(|r| r.get(k))
                .cloned()
                .unwrap_or_default()
        };
        let fault = get("fault");
        rows.push(Row {
            domain: name.to_string(),
            pcoproc: "mcu0",
            firmware: fw.name,
            vcoproc: get("vcoproc").as_u64().unwrap_or(0) as u32,
            state: get("state").as_str().unwrap_or("gone").to_string(),
            verified: out.status.success() && get("verified") == serde_json::Value::Bool(true),
            run_ns: get("run_ns").as_u64().unwrap_or(0),
            share_pct: 0.0,
            slices: get("slices").as_u64().unwrap_or(0),
            switches: get("switches").as_u64().unwrap_or(0),
            faults: get("faults").as_u64().unwrap_or(0),
            detail: get("detail").as_str().map_or_else(
                || {
                    format!(
                        "FAILED: client exited {} {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                },
                String::from,
            ),
            fault: fault.is_object().then(|| FaultSummary {
                addr: fault["addr"].as_u64(),
                access: fault["access"].as_str().unwrap_or("").to_string(),
                pc: fault["pc"].as_u64(),
                reason: fault["reason"].as_str().unwrap_or("").to_string(),
            }),
        });
    }
    for (t, (name, fw)) in gpu_threads.into_iter().zip(GPU_PLAN) {
        rows.push(t.join().unwrap_or_else(|_| Row {
            domain: name.into(),
            pcoproc: GPU,
            firmware: fw.name,
            vcoproc: 0,
            state: "gone".into(),
            verified: false,
            run_ns: 0,
            share_pct: 0.0,
            slices: 0,
            switches: 0,
            faults: 0,
            detail: "FAILED: domain thread panicked".into(),
            fault: None,
        }));
    }
    let switches = rows.iter().map(|r| r.switches).sum();
    Ok(Outcome {
        rows,
        switches,
        sched_changes: changes?,
        gpu_model,
    })
}

/// As the administrator, while the domains run: switch the pcoproc from rr
/// to credit and cap the hog at 25 %. Returns what was done.
fn run_time_control(socket: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let mut admin = coproc_client::Client::connect_to(socket)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let hog = loop {
        let l = admin.list_vcoprocs(None, Some("mcu0"))?;
        if let Some(h) = l
            .iter()
            .find(|v| v.firmware == "hog" && v.state != "loaded")
        {
            if l.len() >= PLAN.len() - 1 || std::time::Instant::now() > deadline {
                break h.id;
            }
        }
        if std::time::Instant::now() > deadline {
            bail!("the demo's domains did not start");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    admin.sched_set("mcu0", "credit", &[])?;
    admin.vcoproc_set(
        hog,
        coproc_client::ParamChange {
            cap_pct: Some(25),
            ..Default::default()
        },
    )?;
    let s = admin.sched_get("mcu0")?;
    Ok(vec![
        format!(
            "policy rr -> {} ({}) while {} vcoprocs ran",
            s.policy,
            s.params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            s.standings.len()
        ),
        format!("hog v{hog} capped at 25 %"),
    ])
}

type Check = Result<String, String>;

fn fir(v: &VcoprocHandle, scale: u32) -> Check {
    let (samples, taps, jobs) = (16384, 32, 6 * scale);
    let buf = Buffer::map(v, (samples * 4 + taps * 2) as u64, MapKind::Pinned)
        .map_err(|e| e.to_string())?;
    v.start().map_err(|e| e.to_string())?;
    let mut rng = TestRng::new(0xf1f1);
    for j in 0..jobs {
        let x = rng.samples(samples);
        let h = rng.samples(taps);
        let y = drive::fir(v, &buf, &x, &h, j + 1, T).map_err(|e| format!("job {j}: {e}"))?;
        if y != reference::fir_q15(&x, &h) {
            return Err(format!("job {j}: output differs from the host reference"));
        }
    }
    Ok(format!(
        "{jobs} jobs x {samples} samples x {taps} taps equal the host reference"
    ))
}

fn crc32(v: &VcoprocHandle, scale: u32) -> Check {
    let (len, jobs) = (256 * 1024, 8 * scale);
    let buf = Buffer::map(v, len as u64, MapKind::Pinned).map_err(|e| e.to_string())?;
    v.start().map_err(|e| e.to_string())?;
    let mut rng = TestRng::new(0xc3c3);
    for j in 0..jobs {
        let data = rng.bytes(len - 3 * j as usize);
        let crc = drive::crc32(v, &buf, &data, j + 1, T).map_err(|e| format!("job {j}: {e}"))?;
        if crc != reference::crc32(&data) {
            return Err(format!(
                "job {j}: crc {crc:#010x} != reference {:#010x}",
                reference::crc32(&data)
            ));
        }
    }
    Ok(format!(
        "{jobs} buffers of ~{} KiB equal the host reference",
        len / 1024
    ))
}

fn echo(v: &VcoprocHandle, scale: u32) -> Check {
    let msgs = 1000 * scale;
    v.start().map_err(|e| e.to_string())?;
    let mut rng = TestRng::new(0xec40);
    for seq in 1..=msgs {
        let w: [u32; 16] = std::array::from_fn(|_| rng.next_u64() as u32);
        let out = drive::echo(v, &w, T).map_err(|e| format!("message {seq}: {e}"))?;
        if out != reference::echo(&w, seq) {
            return Err(format!("message {seq}: echo differs"));
        }
    }
    Ok(format!("{msgs} mailbox round trips echoed in order"))
}

fn faulty(v: &VcoprocHandle) -> Check {
    v.start().map_err(|e| e.to_string())?;
    v.doorbell();
    v.wait_state(|s| s == VcoprocState::Faulted, T)
        .map_err(|e| e.to_string())?;
    let rec = v
        .faults()
        .map_err(|e| e.to_string())?
        .pop()
        .ok_or("faulted without a record")?;
    if rec.fault.addr != Some(FAULTY_ADDR) || rec.fault.access != Access::Read {
        return Err(format!("unexpected fault record: {rec}"));
    }
    if v.mbox_read(0) != 360 || v.last_notify().seq != 0 {
        return Err("ran past its fault".into());
    }
    Ok(format!("faulted as expected: {rec}"))
}

fn hog(v: &VcoprocHandle, slice: Duration) -> Check {
    let p = v.pcoproc();
    // It gets more than a slice only while nobody else wants the device,
    // and gives way the moment someone wakes.
    let slice_ns = slice.as_nanos() as u64;
    let turns = p
        .trace()
        .into_iter()
        .filter(|t| t.vcoproc == v.id())
        .collect::<Vec<_>>();
    if let Some(t) = turns
        .iter()
        .find(|t| t.budget_ns > slice_ns && !t.preempted && t.ran_ns < t.budget_ns)
    {
        return Err(format!(
            "a turn of {} ns ended without giving way",
            t.ran_ns
        ));
    }
    // Stop it so its mailbox is stable, then check its computation.
    v.destroy().map_err(|e| e.to_string())?;
    let (done, x) = (u64::from(v.mbox_read(0)), v.mbox_read(1));
    if done == 0 {
        return Err("made no progress".into());
    }
    // It may have been preempted between publishing its two words.
    let ok = [done, done - 1]
        .iter()
        .any(|&d| reference::hog_state(d << 16) == x);
    if !ok {
        return Err(format!(
            "LCG state {x:#x} after {done}x65536 steps differs from the reference"
        ));
    }
    let long = turns.iter().filter(|t| t.budget_ns > slice_ns).count();
    Ok(format!(
        "{} M iterations, LCG state matches the reference; {long} of {} turns ran past a slice while alone and gave way at the next wake-up",
        (done << 16) / 1_000_000,
        turns.len()
    ))
}

/// The GPU domains: (name, firmware). saxpy is WGSL, matmul SPIR-V.
const GPU_PLAN: [(&str, GpuFirmware); 2] = [("frank", SAXPY), ("grace", MATMUL)];
/// The vulkan pcoproc's name.
const GPU: &str = "gpu0";
/// Where a GPU domain's queue lives.
const GPU_QUEUE_IOVA: u64 = 0x1000_0000;
/// Entries of a GPU domain's queue.
const GPU_QUEUE_ENTRIES: u32 = 64;
/// Where its buffers start (16 MiB apart).
const GPU_BUF_IOVA: u64 = 0x2000_0000;

/// What the GPU workloads need from a domain: buffers and jobs, in-process
/// or through the daemon.
trait GpuDomain {
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

fn gpu_workload(fw: &str, d: &mut dyn GpuDomain, scale: u32) -> Check {
    match fw {
        "saxpy" => gpu_saxpy(d, scale),
        "matmul" => gpu_matmul(d, scale),
        other => Err(format!("no GPU workload for {other:?}")),
    }
}

/// The queue memory of an in-process GPU domain.
struct QueueRegion(Arc<Region>);

impl QueueMem for QueueRegion {
    fn len(&self) -> u64 {
        QueueMem::len(&*self.0)
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) {
        self.0.read_at(off, buf);
    }
    fn write_at(&self, off: u64, data: &[u8]) {
        self.0.write_at(off, data);
    }
    fn load_index(&self, off: u64) -> u32 {
        self.0.load_index(off)
    }
    fn store_index(&self, off: u64, v: u32) {
        self.0.store_index(off, v);
    }
}

/// A GPU domain in this process: a vcoproc handle, its queue in a memfd
/// region, buffers as regions.
struct LocalGpu<'a> {
    v: &'a VcoprocHandle,
    queue: QueueRegion,
    ring: Producer,
    tag: u32,
    bufs: Vec<Arc<Region>>,
}

impl<'a> LocalGpu<'a> {
    /// Attach a queue (mailbox word 0) and start the vcoproc (firmware
    /// already loaded).
    fn new(v: &'a VcoprocHandle) -> Result<LocalGpu<'a>, String> {
        let len = queue::bytes_for(GPU_QUEUE_ENTRIES)
            .ok_or("queue size")?
            .div_ceil(4096)
            * 4096;
        let region = Arc::new(Region::new_memfd(len).map_err(|e| e.to_string())?);
        let q = QueueRegion(region.clone());
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
fn gpu_remote(socket: &std::path::Path, name: &str, fw: &GpuFirmware, scale: u32) -> Row {
    let mut row = Row {
        domain: name.to_string(),
        pcoproc: GPU,
        firmware: fw.name,
        vcoproc: 0,
        state: "gone".into(),
        verified: false,
        run_ns: 0,
        share_pct: 0.0,
        slices: 0,
        switches: 0,
        faults: 0,
        detail: String::new(),
        fault: None,
    };
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

/// Run the demo; returns whether every check passed.
pub fn run(args: &Args, format: Format) -> anyhow::Result<bool> {
    // The GPU domains run where a Vulkan device is found.
    let gpu_skipped = coproc_vulkan::probe()
        .err()
        .map(|e| format!("no Vulkan device: {e}"));
    let gpu = gpu_skipped.is_none();
    let (out, mode) = if args.in_process {
        (in_process(args, gpu)?, "in-process")
    } else {
        (through_daemon(args, gpu)?, "daemon")
    };
    let mut rows = out.rows;
    // Shares within each pcoproc.
    let total = |p: &str, rows: &[Row]| -> u64 {
        rows.iter()
            .filter(|r| r.pcoproc == p)
            .map(|r| r.run_ns)
            .sum::<u64>()
            .max(1)
    };
    let totals: Vec<u64> = rows.iter().map(|r| total(r.pcoproc, &rows)).collect();
    for (r, t) in rows.iter_mut().zip(totals) {
        r.share_pct = (r.run_ns as f64 * 1000.0 / t as f64).round() / 10.0;
    }
    let busy: u64 = rows.iter().map(|r| r.run_ns).sum();
    let examples = toolchain_examples(Duration::from_micros(args.slice_us))?;
    let ok = rows.iter().chain(&examples).all(|r| r.verified);
    let report = Report {
        pcoproc: "mcu0".into(),
        gpu: out.gpu_model.map(|model| GpuSummary {
            pcoproc: GPU,
            model,
        }),
        gpu_skipped,
        policy: "rr".into(),
        slice_us: args.slice_us,
        mode,
        examples,
        sched_changes: out.sched_changes,
        ok,
        vcoprocs: rows,
    };
    print(&report, format, busy, out.switches);
    if matches!(format, Format::Table) {
        print_examples(&report.examples);
    }
    Ok(ok)
}

/// The demo in one process: each domain a thread on an in-process pcoproc
/// (the GPU domains, with `gpu`, on an in-process vulkan pcoproc).
fn in_process(args: &Args, gpu: bool) -> anyhow::Result<Outcome> {
    let slice = Duration::from_micros(args.slice_us);
    let scale = args.scale.max(1);
    let system = System::new();
    let rr = RoundRobin::new(slice).context("slice")?;
    let pcoproc = system.add_pcoproc("mcu0", factory(McuConfig::default()), Box::new(rr))?;
    pcoproc.set_trace(1 << 20);
    let gpu_pcoproc = if gpu {
        let rr = RoundRobin::new(slice).context("slice")?;
        let p = system
            .add_pcoproc(
                GPU,
                coproc_vulkan::factory(coproc_vulkan::VulkanConfig::default()),
                Box::new(rr),
            )
            .with_context(|| format!("opening the Vulkan device for {GPU}"))?;
        Some(p)
    } else {
        None
    };

    let plan: [(&str, Firmware); 5] = [
        ("alice", FIR),
        ("bob", CRC32),
        ("carol", ECHO),
        ("dave", HOG),
        ("eve", FAULTY),
    ];
    let mut vcoprocs = Vec::new();
    for (name, fw) in plan {
        let d = system.add_domain(name);
        let v = system.create_vcoproc(d.id, "mcu0", SchedParams::default())?;
        v.load_firmware(fw.name, fw.elf)
            .with_context(|| format!("loading {}", fw.name))?;
        vcoprocs.push((name, fw, v));
    }
    let mut gpu_vcoprocs = Vec::new();
    for (name, fw) in GPU_PLAN.iter().filter(|_| gpu_pcoproc.is_some()) {
        let d = system.add_domain(name);
        let v = system.create_vcoproc(d.id, GPU, SchedParams::default())?;
        v.load_firmware(fw.name, fw.image)
            .with_context(|| format!("loading {}", fw.name))?;
        gpu_vcoprocs.push((*name, *fw, v));
    }

    // The hog competes for the whole run.
    let hog_v = vcoprocs[3].2.clone();
    hog_v.start()?;
    let (mut checks, gpu_checks): (Vec<Check>, Vec<Check>) = std::thread::scope(|s| {
        let gpu_handles: Vec<_> = gpu_vcoprocs
            .iter()
            .map(|(_, fw, v)| {
                s.spawn(move || {
                    let mut d = LocalGpu::new(v)?;
                    gpu_workload(fw.name, &mut d, scale)
                })
            })
            .collect();
        let handles: Vec<_> = vcoprocs
            .iter()
            .map(|(_, fw, v)| {
                let fw = fw.name;
                s.spawn(move || match fw {
                    "fir" => fir(v, scale),
                    "crc32" => crc32(v, scale),
                    "echo" => echo(v, scale),
                    "faulty" => faulty(v),
                    _ => Ok(String::new()),
                })
            })
            .collect();
        let join = |h: std::thread::ScopedJoinHandle<'_, Check>| {
            h.join()
                .unwrap_or_else(|_| Err("domain thread panicked".into()))
        };
        (
            handles.into_iter().map(join).collect(),
            gpu_handles.into_iter().map(join).collect(),
        )
    });
    // Snapshot before the hog is stopped for its check.
    let infos: Vec<_> = vcoprocs
        .iter()
        .map(|(_, _, v)| v.info())
        .collect::<Result<_, _>>()?;
    checks[3] = hog(&hog_v, slice);
    let gpu_infos: Vec<_> = gpu_vcoprocs
        .iter()
        .map(|(_, _, v)| v.info())
        .collect::<Result<_, _>>()?;

    let mut rows: Vec<Row> = vcoprocs
        .iter()
        .zip(infos)
        .zip(checks)
        .map(|(((name, fw, _), info), check)| Row {
            domain: name.to_string(),
            pcoproc: "mcu0",
            firmware: fw.name,
            vcoproc: info.id.0,
            state: info.state.to_string(),
            verified: check.is_ok(),
            run_ns: info.stats.run_ns,
            share_pct: 0.0,
            slices: info.stats.slices,
            switches: info.stats.switches,
            faults: info.stats.faults,
            detail: check.unwrap_or_else(|e| format!("FAILED: {e}")),
            fault: info.last_fault.as_ref().map(FaultSummary::from),
        })
        .collect();
    rows.extend(gpu_vcoprocs.iter().zip(gpu_infos).zip(gpu_checks).map(
        |(((name, fw, _), info), check)| Row {
            domain: name.to_string(),
            pcoproc: GPU,
            firmware: fw.name,
            vcoproc: info.id.0,
            state: info.state.to_string(),
            verified: check.is_ok(),
            run_ns: info.stats.run_ns,
            share_pct: 0.0,
            slices: info.stats.slices,
            switches: info.stats.switches,
            faults: info.stats.faults,
            detail: check.unwrap_or_else(|e| format!("FAILED: {e}")),
            fault: info.last_fault.as_ref().map(FaultSummary::from),
        },
    ));
    let (_, mut switches) = pcoproc.busy();
    let gpu_model = gpu_pcoproc.map(|p| {
        switches += p.busy().1;
        p.capabilities().model.clone()
    });
    for d in system.domains() {
        system.remove_domain(d.id)?;
    }
    system.shutdown();
    Ok(Outcome {
        rows,
        switches,
        sched_changes: vec![],
        gpu_model,
    })
}

fn print(report: &Report, format: Format, busy_ns: u64, switches: u64) {
    match format {
        Format::Json => {
            println!("{}", serde_json::to_string(report).unwrap_or_default());
            if let Some(why) = &report.gpu_skipped {
                eprintln!("coproc demo: GPU domains skipped: {why}");
            }
        }
        Format::Table => {
            let how = match (report.mode, report.gpu.is_some()) {
                ("daemon", false) => "client processes of a private coprocd",
                ("daemon", true) => {
                    "client processes of a private coprocd; GPU domains as client threads"
                }
                _ => "threads of this process",
            };
            let gpu = report
                .gpu
                .as_ref()
                .map(|g| format!(" and one vulkan pcoproc ({})", g.model))
                .unwrap_or_default();
            println!(
                "coproc demo: {} domains ({how}) on one mcu pcoproc (Cortex-M4){gpu}, policy rr, slice {} us\n",
                report.vcoprocs.len(),
                report.slice_us
            );
            let rows: Vec<Vec<String>> = report
                .vcoprocs
                .iter()
                .map(|r| {
                    vec![
                        r.domain.clone(),
                        r.pcoproc.to_string(),
                        r.firmware.to_string(),
                        format!("v{}", r.vcoproc),
                        r.state.clone(),
                        format!("{:.1}", r.run_ns as f64 / 1e6),
                        format!("{:.1}%", r.share_pct),
                        r.slices.to_string(),
                        r.switches.to_string(),
                        r.faults.to_string(),
                        if r.verified {
                            "yes".into()
                        } else {
                            "NO".into()
                        },
                    ]
                })
                .collect();
            print_table(
                &[
                    "domain", "pcoproc", "firmware", "vcoproc", "state", "run ms", "share",
                    "slices", "switches", "faults", "verified",
                ],
                &rows,
            );
            println!();
            for r in &report.vcoprocs {
                println!("{:<6} {}", r.domain, r.detail);
            }
            if let Some(why) = &report.gpu_skipped {
                println!("GPU domains skipped: {why}");
            }
            for c in &report.sched_changes {
                println!("run-time control: {c}");
            }
            println!(
                "\ndevices busy {:.1} ms, {} context switches; {}",
                busy_ns as f64 / 1e6,
                switches,
                if report.ok {
                    "all checks passed"
                } else {
                    "SOME CHECKS FAILED"
                }
            );
        }
    }
}

// ---- The toolchain examples -------------------------------------------
//
// Firmware built with `scripts/coproc-fw` (hard-float FPv4-SP, picolibc's
// libc and libm) and the Cortex-M system it expects, each checked against
// its host reference: `hello` (printf to the console, malloc), `fft` and
// `biquad` (float DSP with libm), `irq` (vector table, doorbell interrupt,
// SysTick, WFI). One domain each, in this process, on pcoproc `mcu1`.

fn toolchain_examples(slice: Duration) -> anyhow::Result<Vec<Row>> {
    use coproc_firmware::{BIQUAD, FFT, HELLO, IRQ};
    let system = System::new();
    let rr = RoundRobin::new(slice).context("slice")?;
    system.add_pcoproc("mcu1", factory(McuConfig::default()), Box::new(rr))?;
    let mut rng = TestRng::new(14);
    let mut unit = move || (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
    let mut rows = Vec::new();
    for (name, fw) in [
        ("hank", HELLO),
        ("iris", FFT),
        ("jack", BIQUAD),
        ("kate", IRQ),
    ] {
        let d = system.add_domain(name);
        let v = system.create_vcoproc(d.id, "mcu1", SchedParams::default())?;
        v.load_firmware(fw.name, fw.elf)
            .with_context(|| format!("loading {}", fw.name))?;
        let e = |e: drive::DriveError| e.to_string();
        let check: Check = match fw.name {
            "hello" => (|| {
                v.start().map_err(|e| e.to_string())?;
                let n = 1000;
                let (status, sum, _) = drive::hello(&v, n, T).map_err(e)?;
                let line = v.console().0.pop().unwrap_or_default();
                if status != 0 || sum != reference::hello_sum(n) || line != reference::hello_line(n)
                {
                    return Err(format!("status {status}, sum {sum}, console {line:?}"));
                }
                Ok(format!("printf: {line:?}"))
            })(),
            "fft" => (|| {
                let n = 1024;
                let buf = Buffer::map(&v, 8 * n as u64, MapKind::Pinned).map_err(e)?;
                v.start().map_err(|e| e.to_string())?;
                let x: Vec<(f32, f32)> = (0..n).map(|_| (unit(), unit())).collect();
                let (got, _) = drive::fft(&v, &buf, &x, 1, T).map_err(e)?;
                let want = reference::dft(&x);
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (f64::from(g.0) - w.0).hypot(f64::from(g.1) - w.1))
                    .fold(0.0, f64::max);
                let peak = want.iter().map(|w| w.0.hypot(w.1)).fold(0.0, f64::max);
                if worst > 1e-4 * peak {
                    return Err(format!(
                        "largest error {worst:e} against a peak of {peak:.1}"
                    ));
                }
                Ok(format!(
                    "{n}-point float FFT matches the DFT (largest error {:.1e} of the peak)",
                    worst / peak
                ))
            })(),
            "biquad" => (|| {
                let n = 4096;
                let buf = Buffer::map(&v, 8 * n as u64, MapKind::Pinned).map_err(e)?;
                v.start().map_err(|e| e.to_string())?;
                let x: Vec<f32> = (0..n).map(|_| unit()).collect();
                let got = drive::biquad(&v, &buf, &x, 0.05, 0.707, 1, T).map_err(e)?;
                let want = reference::biquad_lowpass(&x, 0.05, 0.707);
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (f64::from(*g) - w).abs())
                    .fold(0.0, f64::max);
                if worst > 1e-3 {
                    return Err(format!("largest error {worst:e}"));
                }
                Ok(format!("{n} samples low-passed, largest error {worst:.1e}"))
            })(),
            _ => (|| {
                v.start().map_err(|e| e.to_string())?;
                for i in 1..=10u32 {
                    let out = drive::irq(&v, 1, i, 1000 * i, i, T).map_err(e)?;
                    if out[1] != 1001 * i || out[5] != 16 {
                        return Err(format!("request {i}: {out:?}"));
                    }
                }
                let out = drive::irq(&v, 2, 3, 0, 11, T).map_err(e)?;
                Ok(format!(
                    "10 requests answered in the doorbell IRQ handler; SysTick count {} after \
                     busy-waiting for 3 ticks",
                    out[1]
                ))
            })(),
        };
        // Run time is charged when a slice ends: read the stats once the
        // vcoproc has parked after its last answer.
        let _ = v.wait_state(
            |s| !matches!(s, VcoprocState::Running | VcoprocState::Runnable),
            T,
        );
        let info = v.info()?;
        rows.push(Row {
            domain: name.to_string(),
            pcoproc: "mcu1",
            firmware: fw.name,
            vcoproc: info.id.0,
            state: info.state.to_string(),
            verified: check.is_ok(),
            run_ns: info.stats.run_ns,
            share_pct: 0.0,
            slices: info.stats.slices,
            switches: info.stats.switches,
            faults: info.stats.faults,
            detail: check.unwrap_or_else(|e| format!("FAILED: {e}")),
            fault: None,
        });
    }
    Ok(rows)
}

fn print_examples(rows: &[Row]) {
    println!("\nfirmware toolchain examples (libc, libm, FPU, interrupts) on mcu1:");
    for r in rows {
        let ok = if r.verified { "yes" } else { "NO" };
        println!(
            "{:<5} {:<7} v{:<3} {:.1} ms  verified {ok}: {}",
            r.domain,
            r.firmware,
            r.vcoproc,
            r.run_ns as f64 / 1e6,
            r.detail
        );
    }
}
