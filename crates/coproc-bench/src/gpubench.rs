//! GPU benchmarks on the `vulkan` device class, in process: `gpu-overhead`
//! (the `spin` firmware through the framework against the same shader
//! driven directly with ash) and `gpu-fairness` (two domains with weights
//! 1:3 under `credit`, shares per second).

use crate::figures::{median, round3};
use crate::schedbench::Figures;
use anyhow::{anyhow, bail, Context};
use coproc_core::control::ControlEvent;
use coproc_core::iova::{MapKind, Perms};
use coproc_core::memory::Region;
use coproc_core::policy::{self, SchedParams};
use coproc_core::{CoreError, DomainId, Pcoproc, VcoprocHandle, VcoprocId};
use coproc_firmware::drive::RegionQueue;
use coproc_firmware::gpu::SPIN;
use coproc_firmware::reference;
use coproc_proto::gpu::{Job, Status};
use coproc_proto::queue::{self, Cqe, Producer};
use coproc_vulkan::direct::Direct;
use coproc_vulkan::{factory, Selector, VulkanConfig};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Where each domain's queue lives.
const QUEUE_IOVA: u64 = 0x1000_0000;
/// Where each domain's output buffer lives.
const OUT_IOVA: u64 = 0x2000_0000;
/// Entries of each domain's queue.
const QUEUE_ENTRIES: u32 = 64;
/// Invocations of one spin dispatch (128 workgroups of 64).
const N: u32 = 8192;
/// How long one spin dispatch of `gpu-overhead` should take.
const OVERHEAD_JOB: Duration = Duration::from_millis(4);
/// How long one spin dispatch of `gpu-fairness` should take.
const FAIRNESS_JOB: Duration = Duration::from_micros(1500);
/// Jobs of the framework's time breakdown in `gpu-overhead`.
const DIAG_JOBS: usize = 40;
/// Longest any one job may take before the benchmark gives up.
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

/// The GPU the benchmarks run on, or why there is none (an error, so the
/// command says why and exits non-zero).
fn gpu_or_why() -> anyhow::Result<()> {
    coproc_vulkan::probe()
        .map(drop)
        .map_err(|e| anyhow!("GPU benchmarks need a Vulkan device: {e}"))
}

/// The `spin` job of the framework path: bind the output, push
/// `{iters, seed, n}`, dispatch, signal `seed`.
fn spin_job(iters: u32, seed: u32, n: u32) -> Job {
    Job::new()
        .bind(0, OUT_IOVA, 4 * u64::from(n))
        .push_u32(0, &[iters, seed, n])
        .dispatch(0, [n.div_ceil(64), 1, 1])
        .signal(seed)
}

fn words(b: &[u8]) -> Vec<u32> {
    b.chunks(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Iterations of the spin loop that make one job take about `target`,
/// where `one(iters)` runs one job and returns its time in seconds (on
/// the device the measurement will use: two VkDevices of a CPU
/// implementation can run at quite different speeds).
fn calibrate(
    mut one: impl FnMut(u32) -> anyhow::Result<f64>,
    target: Duration,
) -> anyhow::Result<u32> {
    const MAX: f64 = (1u32 << 26) as f64;
    let time = |one: &mut dyn FnMut(u32) -> anyhow::Result<f64>, iters: u32| {
        let mut t = Vec::new();
        for _ in 0..5 {
            t.push(one(iters)?);
        }
        let t = median(t);
        tracing::debug!(iters, us = t * 1e6, "spin calibration");
        anyhow::Ok(t)
    };
    let want = target.as_secs_f64();
    // Keep the device busy a while first: the first dispatches compile the
    // shader, and a CPU implementation's new worker threads run slower
    // until the kernel has spread them over the CPUs.
    let warm = Instant::now();
    let mut w = 64u32;
    while warm.elapsed() < Duration::from_millis(300) {
        if one(w)? < want / 2.0 && f64::from(w) * 2.0 <= MAX {
            w *= 2;
        }
    }
    // A dispatch costs a fixed part plus a part linear in iterations.
    let fixed = time(&mut one, 1)?;
    let per = (want - fixed).max(want / 4.0);
    let mut iters = 64u32;
    let mut t = time(&mut one, iters)?;
    while t - fixed < per / 2.0 && f64::from(iters) * 4.0 <= MAX {
        iters *= 4;
        t = time(&mut one, iters)?;
    }
    for _ in 0..4 {
        if (t - want).abs() <= want / 10.0 {
            break;
        }
        let scale = per / (t - fixed).max(1e-6);
        iters = (f64::from(iters) * scale).clamp(1.0, MAX) as u32;
        t = time(&mut one, iters)?;
    }
    Ok(iters)
}

/// One in-process GPU domain: a vcoproc running `spin`, its queue in a
/// memfd at [`QUEUE_IOVA`] (iova in mailbox word 0), an output buffer at
/// [`OUT_IOVA`].
struct GpuDomain {
    v: VcoprocHandle,
    q: RegionQueue,
    ring: Producer,
    /// Entries submitted so far (our own copy of the submission tail).
    submitted: u32,
    out: Arc<Region>,
    tag: u32,
}

impl GpuDomain {
    fn new(pc: &Arc<Pcoproc>, domain: u32, params: SchedParams, n: u32) -> anyhow::Result<Self> {
        let v = pc.create_vcoproc(DomainId(domain), params)?;
        v.load_firmware(SPIN.name, SPIN.image)?;
        let qlen = queue::bytes_for(QUEUE_ENTRIES)
            .context("queue size")?
            .div_ceil(4096)
            * 4096;
        let qr = Arc::new(Region::new_memfd(qlen)?);
        let q = RegionQueue(qr.clone());
        let ring = Producer::init(&q, QUEUE_ENTRIES).context("queue init")?;
        v.map(&qr, 0, QUEUE_IOVA, qlen, Perms::RW, MapKind::Pinned)?;
        let olen = (4 * u64::from(n)).div_ceil(4096) * 4096;
        let out = Arc::new(Region::new_memfd(olen)?);
        v.map(&out, 0, OUT_IOVA, olen, Perms::RW, MapKind::Pinned)?;
        v.mbox_write(0, QUEUE_IOVA as u32);
        v.start()?;
        Ok(GpuDomain {
            v,
            q,
            ring,
            submitted: 0,
            out,
            tag: 1,
        })
    }

    /// Queue every command of `job` if the ring has room for all of them
    /// (no doorbell); false if it has not.
    fn try_submit(&mut self, job: &Job) -> bool {
        let sqes = job.sqes(self.tag);
        let used = self.submitted.wrapping_sub(self.ring.sq_head(&self.q));
        if used + sqes.len() as u32 > QUEUE_ENTRIES {
            return false;
        }
        for s in &sqes {
            if !self.ring.submit(&self.q, s) {
                // Cannot happen (room checked); the device only frees room.
                return false;
            }
            self.submitted = self.submitted.wrapping_add(1);
        }
        self.tag = self.tag.wrapping_add(sqes.len() as u32);
        true
    }

    /// The next completion, sleeping on the vcoproc's notifications.
    fn next(&mut self, timeout: Duration) -> anyhow::Result<Cqe> {
        let deadline = Instant::now() + timeout;
        loop {
            let seq = self.v.last_notify().seq;
            if let Some(c) = self.ring.complete(&self.q) {
                return Ok(c);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("vcoproc {}: no completion within {timeout:?}", self.v.id());
            }
            match self.v.wait_notify(seq, left) {
                Ok(_) | Err(CoreError::Timeout(_)) => {}
                Err(e) => {
                    let faults = self.v.faults().unwrap_or_default();
                    bail!("vcoproc {}: {e} (faults: {faults:?})", self.v.id());
                }
            }
        }
    }

    /// The completion of a job's signal: `Ok` with the signal's value.
    fn check_done(&self, c: &Cqe, seed: u32) -> anyhow::Result<()> {
        if c.status != Status::Ok as u32 || c.result[0] != seed {
            bail!(
                "vcoproc {}: job {seed} completed with status {} value {} ({c:?})",
                self.v.id(),
                c.status,
                c.result[0]
            );
        }
        Ok(())
    }

    /// Submit one job, ring, wait for its completion.
    fn run(&mut self, job: &Job, seed: u32) -> anyhow::Result<Cqe> {
        if !self.try_submit(job) {
            bail!("vcoproc {}: queue full", self.v.id());
        }
        self.v.doorbell();
        let c = self.next(JOB_TIMEOUT)?;
        self.check_done(&c, seed)?;
        Ok(c)
    }

    /// Check the output buffer against the host reference.
    fn verify(&self, iters: u32, seed: u32, n: u32) -> anyhow::Result<()> {
        let got = words(&self.out.read_vec(0, 4 * u64::from(n))?);
        if got != reference::spin(seed, iters, n as usize) {
            bail!(
                "vcoproc {}: spin(seed {seed}, iters {iters}) differs from the host reference",
                self.v.id()
            );
        }
        Ok(())
    }
}

/// The direct path on a thread of its own, as the framework's device lives
/// on the pcoproc's runner thread; the `Direct` is built there, as the
/// runner builds its device.
struct DirectThread {
    jobs: Option<mpsc::Sender<u32>>,
    done: mpsc::Receiver<Result<(f64, u64), String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DirectThread {
    /// Start it with a spin pipeline over `n` invocations, calibrated to
    /// `target` per dispatch; also returns the iterations and the GPU.
    fn spawn(n: u32, target: Duration) -> anyhow::Result<(DirectThread, u32, String)> {
        Self::start(n, Err(target))
    }

    /// Start it with `iters` fixed (`Ok`) or calibrated to a target time
    /// per dispatch (`Err`).
    fn start(n: u32, iters: Result<u32, Duration>) -> anyhow::Result<(DirectThread, u32, String)> {
        let (job_tx, job_rx) = mpsc::channel::<u32>();
        let (res_tx, res_rx) = mpsc::channel();
        let (init_tx, init_rx) = mpsc::channel::<Result<(u32, String), String>>();
        let thread = std::thread::Builder::new()
            .name("direct".into())
            .spawn(move || {
                let setup = (|| -> anyhow::Result<(Direct, u32)> {
                    let mut d = Direct::new(&Selector::Auto, SPIN.image, 0, 4 * u64::from(n))?;
                    let iters = match iters {
                        Ok(i) => i,
                        Err(target) => calibrate(
                            |iters| {
                                d.set_push(0, &[iters, 1, n])?;
                                Ok(d.dispatch([n.div_ceil(64), 1, 1])?.as_secs_f64())
                            },
                            target,
                        )?,
                    };
                    Ok((d, iters))
                })();
                let (mut d, iters) = match setup {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = init_tx.send(Err(format!("{e:#}")));
                        return;
                    }
                };
                let _ = init_tx.send(Ok((iters, d.info().model())));
                while let Ok(seed) = job_rx.recv() {
                    let r = (|| -> anyhow::Result<(f64, u64)> {
                        let t = Instant::now();
                        d.set_push(0, &[iters, seed, n])?;
                        d.dispatch([n.div_ceil(64), 1, 1])?;
                        let dt = t.elapsed().as_secs_f64();
                        let got = words(&d.read_vec(0, 4 * u64::from(n))?);
                        if got != reference::spin(seed, iters, n as usize) {
                            bail!("direct: spin(seed {seed}) differs from the host reference");
                        }
                        Ok((dt, d.last_gpu_ns()))
                    })();
                    let _ = res_tx.send(r.map_err(|e| format!("{e:#}")));
                }
            })?;
        let me = DirectThread {
            jobs: Some(job_tx),
            done: res_rx,
            thread: Some(thread),
        };
        match init_rx.recv() {
            Ok(Ok((iters, gpu))) => Ok((me, iters, gpu)),
            Ok(Err(e)) => Err(anyhow!(e)),
            Err(_) => Err(anyhow!("the direct thread ended early")),
        }
    }

    /// One job with `seed`: (seconds, GPU ns), output checked.
    fn run(&self, seed: u32) -> anyhow::Result<(f64, u64)> {
        self.jobs
            .as_ref()
            .context("direct thread stopped")?
            .send(seed)?;
        self.done.recv()?.map_err(anyhow::Error::msg)
    }
}

impl Drop for DirectThread {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// GPU nanoseconds the device measured for a job (its signal's result).
fn cqe_gpu_ns(c: &Cqe) -> u64 {
    u64::from(c.result[1]) | (u64::from(c.result[2]) << 32)
}

/// Threads lavapipe computes a dispatch with during `gpu-overhead`,
/// unless the environment says otherwise (Mesa's `LP_NUM_THREADS`).
pub const OVERHEAD_LP_THREADS: &str = "1";

/// For `gpu-overhead` (among `args`), set `LP_NUM_THREADS` to
/// [`OVERHEAD_LP_THREADS`] unless it is set. lavapipe's "GPU" is a pool of
/// the host's CPU threads per VkDevice, as many as the CPUs: on a small
/// host it competes with the runner and the domain for the same CPUs,
/// which a real GPU does not, and two identical direct paths landed up to
/// 3.7 % apart (`control_pct`), too coarse to resolve the 1 % target; with
/// one thread each they land within 0.3 %. Only drivers that read the
/// variable (lavapipe, llvmpipe) are affected. Must be called before any
/// thread exists.
pub fn lavapipe_threads_for_overhead(mut args: impl Iterator<Item = String>) {
    if args.any(|a| a == "gpu-overhead") && std::env::var_os("LP_NUM_THREADS").is_none() {
        std::env::set_var("LP_NUM_THREADS", OVERHEAD_LP_THREADS);
    }
}

/// `gpu-overhead`: spin jobs directly with ash and through the framework,
/// alternating batches; returns the figures and the GPU's name.
pub fn overhead(rounds: usize) -> anyhow::Result<(Figures, String)> {
    gpu_or_why()?;
    let n = N;
    let (direct, iters, gpu) = DirectThread::spawn(n, OVERHEAD_JOB)?;
    // The control: a second, identical direct path on a VkDevice of its
    // own. How far it lands from the first is the resolution of the
    // comparison on this machine.
    let (control, _, _) = DirectThread::start(n, Ok(iters))?;

    let rr = policy::build("rr", &[])?;
    let pc = Pcoproc::spawn("gpu0", factory(VulkanConfig::default()), rr)?;
    let result = (|| -> anyhow::Result<Figures> {
        let mut dom = GpuDomain::new(&pc, 1, SchedParams::default(), n)?;
        let mut seed = 0x5eed_0000u32;
        // (a): record, submit, wait, one dispatch at a time.
        let run_direct = |seed: u32| direct.run(seed);
        // (b): the same job through the framework; the domain waits for
        // each completion before submitting the next.
        let mut run_framework = |seed: u32| -> anyhow::Result<(f64, u64)> {
            let job = spin_job(iters, seed, n);
            let t = Instant::now();
            let c = dom.run(&job, seed)?;
            let dt = t.elapsed().as_secs_f64();
            dom.verify(iters, seed, n)?;
            Ok((dt, cqe_gpu_ns(&c)))
        };
        // Warm all paths up (not counted).
        for _ in 0..5 {
            seed += 1;
            run_direct(seed)?;
            seed += 1;
            run_framework(seed)?;
            seed += 1;
            control.run(seed)?;
        }
        let batches = 5 * rounds.max(1);
        let per_batch = 6;
        let (mut d_t, mut f_t, mut d_g, mut f_g) = (vec![], vec![], vec![], vec![]);
        let mut c_t = vec![];
        for b in 0..batches {
            for k in 0..3 {
                // Rotate which goes first, so drifts hit all alike. The
                // first job of a batch finds its path idle since the last
                // batch (cold threads and caches) and is not counted.
                for j in 0..=per_batch {
                    seed += 1;
                    let counted = j > 0;
                    match (b + k) % 3 {
                        0 => {
                            let (t, g) = run_direct(seed)?;
                            if counted {
                                d_t.push(t);
                                d_g.push(g as f64);
                            }
                        }
                        1 => {
                            let (t, g) = run_framework(seed)?;
                            if counted {
                                f_t.push(t);
                                f_g.push(g as f64);
                            }
                        }
                        _ => {
                            let (t, _) = control.run(seed)?;
                            if counted {
                                c_t.push(t);
                            }
                        }
                    }
                }
            }
        }
        drop(control);
        // Where the framework's time goes, measured apart so the figures
        // above carry no instrumentation: per job, the doorbell (domain),
        // the start of the slice (the runner's trace), the notification
        // (a control block listener, on the runner thread) and the
        // domain's wake-up.
        let notified: Arc<Mutex<Option<Instant>>> = Arc::default();
        let n2 = notified.clone();
        dom.v.control().set_listener(Some(Arc::new(move |ev| {
            if let ControlEvent::Notify(_) = ev {
                *n2.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(Instant::now());
            }
        })));
        pc.set_trace(4096);
        // The pcoproc's clock is an Instant's elapsed time: map it.
        let (base, base_ns) = (Instant::now(), pc.now_ns());
        let at_ns = |ns: u64| {
            if ns >= base_ns {
                base + Duration::from_nanos(ns - base_ns)
            } else {
                base.checked_sub(Duration::from_nanos(base_ns - ns))
                    .unwrap()
            }
        };
        // (doorbell, notified, woke, GPU ns) per job.
        let mut steps = Vec::new();
        for _ in 0..DIAG_JOBS {
            seed += 1;
            if !dom.try_submit(&spin_job(iters, seed, n)) {
                bail!("framework: queue full");
            }
            let rung = Instant::now();
            dom.v.doorbell();
            let c = dom.next(JOB_TIMEOUT)?;
            let woke = Instant::now();
            dom.check_done(&c, seed)?;
            let at = notified
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(at) = at {
                steps.push((rung, at, woke, cqe_gpu_ns(&c)));
            }
            dom.verify(iters, seed, n)?;
        }
        dom.v.control().set_listener(None);
        let id = dom.v.id();
        let starts: Vec<Instant> = pc
            .trace()
            .iter()
            .filter(|e| e.vcoproc == id)
            .map(|e| at_ns(e.start_ns))
            .collect();
        let slices = starts.len();
        let (mut to_run, mut runner, mut to_domain) = (vec![], vec![], vec![]);
        for &(rung, at, woke, gpu_ns) in &steps {
            // The job's slice: the last one that started before the
            // notification.
            let Some(&start) = starts.iter().rev().find(|&&s| s <= at) else {
                continue;
            };
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            to_run.push(us(start.saturating_duration_since(rung)));
            runner.push(us(at.saturating_duration_since(start)) - gpu_ns as f64 / 1e3);
            to_domain.push(us(woke.saturating_duration_since(at)));
        }
        let faults = dom.v.info()?.stats.faults;
        if faults > 0 {
            bail!("framework: the vcoproc took {faults} faults");
        }
        let host = |t: &[f64], g: &[f64]| -> f64 {
            median(t.iter().zip(g).map(|(t, g)| t * 1e6 - g / 1e3).collect())
        };
        let (d_host, f_host) = (host(&d_t, &d_g), host(&f_t, &f_g));
        let jobs = d_t.len();
        let (d, f) = (median(d_t), median(f_t));
        let mut m = Figures::new();
        m.insert("direct_us_per_job".into(), round3(d * 1e6));
        m.insert("framework_us_per_job".into(), round3(f * 1e6));
        m.insert("overhead_pct".into(), round3((f - d) / d * 100.0));
        let c = median(c_t);
        m.insert("control_us_per_job".into(), round3(c * 1e6));
        m.insert("control_pct".into(), round3((c - d) / d * 100.0));
        m.insert("direct_gpu_us_per_job".into(), round3(median(d_g) / 1e3));
        m.insert("framework_gpu_us_per_job".into(), round3(median(f_g) / 1e3));
        m.insert("direct_host_us_per_job".into(), round3(d_host));
        m.insert("framework_host_us_per_job".into(), round3(f_host));
        m.insert(
            "host_overhead_pct".into(),
            round3((f_host - d_host) / (d * 1e6) * 100.0),
        );
        m.insert("jobs".into(), jobs as f64);
        m.insert("batches".into(), batches as f64);
        m.insert("spin_iters".into(), f64::from(iters));
        m.insert("spin_invocations".into(), f64::from(n));
        if !to_run.is_empty() {
            m.insert("doorbell_to_run_us".into(), round3(median(to_run)));
            m.insert("runner_host_us".into(), round3(median(runner)));
            m.insert("notify_to_domain_us".into(), round3(median(to_domain)));
        }
        m.insert(
            "slices_per_job".into(),
            round3(slices as f64 / DIAG_JOBS as f64),
        );
        Ok(m)
    })();
    pc.shutdown();
    Ok((result?, gpu))
}

/// What one fairness domain did.
struct Tally {
    jobs: u64,
    /// GPU time of each job (its signal's result), µs.
    gpu_us: Vec<f64>,
}

/// Keep `dom`'s queue full of spin jobs until `stop`; then drain, run one
/// last job with a fresh seed and check it against the host reference.
fn keep_busy(
    dom: &mut GpuDomain,
    iters: u32,
    n: u32,
    stop: &AtomicBool,
    seed0: u32,
) -> anyhow::Result<Tally> {
    let mut seed = seed0;
    // Seeds of the jobs in flight, oldest first.
    let mut inflight = std::collections::VecDeque::new();
    let mut jobs = 0u64;
    let mut gpu_us = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let mut queued = false;
        while dom.try_submit(&spin_job(iters, seed, n)) {
            inflight.push_back(seed);
            seed = seed.wrapping_add(1);
            queued = true;
        }
        if queued {
            dom.v.doorbell();
        }
        let c = dom.next(JOB_TIMEOUT)?;
        let want = inflight.pop_front().context("a completion with no job")?;
        dom.check_done(&c, want)?;
        gpu_us.push(cqe_gpu_ns(&c) as f64 / 1e3);
        jobs += 1;
    }
    while let Some(want) = inflight.pop_front() {
        let c = dom.next(JOB_TIMEOUT)?;
        dom.check_done(&c, want)?;
        jobs += 1;
    }
    let last = seed.wrapping_add(0x1000_0000);
    dom.run(&spin_job(iters, last, n), last)?;
    dom.verify(iters, last, n)?;
    Ok(Tally { jobs, gpu_us })
}

/// `gpu-fairness`: two domains, weights 1 and 3, under `credit` on one
/// vulkan pcoproc; returns the figures and the GPU's name.
pub fn fairness(seconds: u64) -> anyhow::Result<(Figures, String)> {
    gpu_or_why()?;
    let n = N;
    let credit = policy::build("credit", &[])?;
    let pc = Pcoproc::spawn("gpu0", factory(VulkanConfig::default()), credit)?;
    let gpu = pc.capabilities().model.clone();
    let weights = [1u32, 3];
    let result = (|| -> anyhow::Result<Figures> {
        let mut doms = Vec::new();
        for (i, w) in weights.iter().enumerate() {
            let params = SchedParams {
                weight: 256 * w,
                ..SchedParams::default()
            };
            doms.push(GpuDomain::new(&pc, i as u32 + 1, params, n)?);
        }
        // Job length from the GPU's timestamps, through the framework, on
        // the device that runs the measurement, with jobs queued back to
        // back as in the measurement (a CPU implementation runs a dispatch
        // that follows an idle gap markedly slower).
        let mut seed = 0u32;
        let iters = calibrate(
            |iters| {
                let d = &mut doms[0];
                let mut want = Vec::new();
                for _ in 0..8 {
                    seed += 1;
                    if !d.try_submit(&spin_job(iters, seed, n)) {
                        bail!("calibration: queue full");
                    }
                    want.push(seed);
                }
                d.v.doorbell();
                let mut gpu = Vec::new();
                for s in want {
                    let c = d.next(JOB_TIMEOUT)?;
                    d.check_done(&c, s)?;
                    gpu.push(cqe_gpu_ns(&c) as f64 / 1e9);
                }
                Ok(median(gpu))
            },
            FAIRNESS_JOB,
        )?;
        let ids: Vec<VcoprocId> = doms.iter().map(|d| d.v.id()).collect();
        let stop = AtomicBool::new(false);
        let run_ns = |pc: &Pcoproc| -> BTreeMap<VcoprocId, u64> {
            pc.vcoprocs()
                .into_iter()
                .map(|i| (i.id, i.stats.run_ns))
                .collect()
        };
        let (samples, tallies) = std::thread::scope(|s| {
            let workers: Vec<_> = doms
                .iter_mut()
                .enumerate()
                .map(|(i, d)| {
                    let stop = &stop;
                    s.spawn(move || keep_busy(d, iters, n, stop, (i as u32 + 1) << 24))
                })
                .collect();
            // Let both queues fill and the scheduler settle, then sample
            // each vcoproc's charged run time at every second.
            std::thread::sleep(Duration::from_millis(300));
            let t0 = Instant::now();
            let mut samples = vec![(0.0, run_ns(&pc))];
            for k in 1..=seconds {
                let at = t0 + Duration::from_secs(k);
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                samples.push((t0.elapsed().as_secs_f64(), run_ns(&pc)));
            }
            stop.store(true, Ordering::Release);
            let tallies: Vec<anyhow::Result<Tally>> = workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err(anyhow!("domain thread panicked")))
                })
                .collect();
            (samples, tallies)
        });
        let tallies = tallies.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        for d in &doms {
            let faults = d.v.info()?.stats.faults;
            if faults > 0 {
                bail!("vcoproc {} took {faults} faults", d.v.id());
            }
        }
        let sum: u32 = weights.iter().sum();
        let delta = |a: &BTreeMap<VcoprocId, u64>, b: &BTreeMap<VcoprocId, u64>, v| {
            b.get(&v).copied().unwrap_or(0) - a.get(&v).copied().unwrap_or(0)
        };
        let (mut max_err, mut mean_err) = (0.0f64, 0.0);
        let windows = samples.len() - 1;
        let mut per_window = vec![Vec::with_capacity(windows); ids.len()];
        for w in samples.windows(2) {
            let ns: Vec<u64> = ids.iter().map(|&v| delta(&w[0].1, &w[1].1, v)).collect();
            let total = ns.iter().sum::<u64>().max(1) as f64;
            for (k, got) in ns.iter().enumerate() {
                per_window[k].push(*got as f64 / total);
            }
            for (got, want) in ns.iter().zip(weights) {
                let want = f64::from(want) / f64::from(sum);
                let err = (*got as f64 / total - want).abs() / want * 100.0;
                max_err = max_err.max(err);
                mean_err += err / (windows * ids.len()) as f64;
            }
        }
        for (shares, w) in per_window.iter().zip(weights) {
            crate::samples::record(
                &format!("weight_{w}_charged"),
                crate::samples::Kind::Share,
                shares,
            );
        }
        let (first, last) = (&samples[0], &samples[windows]);
        let whole: Vec<u64> = ids.iter().map(|&v| delta(&first.1, &last.1, v)).collect();
        let total: u64 = whole.iter().sum();
        let mut f = Figures::new();
        f.insert("max_error_pct".into(), round3(max_err));
        f.insert("mean_error_pct".into(), round3(mean_err));
        let share = |ns: u64| (ns as f64 / total.max(1) as f64 * 1e4).round() / 1e4;
        f.insert("share_1".into(), share(whole[0]));
        f.insert("share_3".into(), share(whole[1]));
        f.insert("windows".into(), windows as f64);
        f.insert(
            "device_busy_pct".into(),
            round3(total as f64 / 1e9 / last.0 * 100.0),
        );
        f.insert("jobs_1".into(), tallies[0].jobs as f64);
        f.insert("jobs_3".into(), tallies[1].jobs as f64);
        f.insert("spin_iters".into(), f64::from(iters));
        let gpu_us: Vec<f64> = tallies.iter().flat_map(|t| t.gpu_us.clone()).collect();
        if !gpu_us.is_empty() {
            f.insert("job_gpu_us".into(), round3(median(gpu_us)));
        }
        Ok(f)
    })();
    pc.shutdown();
    Ok((result?, gpu))
}

/// Notes printed under the `gpu-overhead` table.
pub const OVERHEAD_NOTES: &str = "The spin firmware (compute-bound, iterations calibrated at start for \
~4 ms per dispatch) one job at a time (a) directly: one pipeline on a VkDevice of its own through ash, \
on a thread of its own, each dispatch recorded, submitted and waited for on a timeline semaphore as the \
vulkan device does per command, and (b) through the framework: one domain on an in-process vulkan \
pcoproc (rr), each job bind + push + dispatch + signal in its queue, doorbell, the domain sleeping on \
the notification until the completion. Times are what the caller sees per job; (a), (b) and a control \
(a second, identical direct path on a third VkDevice) in rotating batches of 6 (plus one uncounted job first), medians; every output \
checked against the host reference. overhead_pct: (framework - direct) / direct. control_pct: the same \
for the control, i.e. how far two identical paths land apart in this run (a CPU implementation's \
thread pools, one per VkDevice, run at different speeds depending on where their threads land). \
*_gpu_us: the GPU's timestamps around the dispatch; *_host_us: a job's time minus them; \
host_overhead_pct: (framework_host - direct_host) / direct. Breakdown of the framework's time (40 more \
jobs, instrumented): doorbell_to_run_us (doorbell to the start of the runner's slice), runner_host_us \
(slice start to notification, minus GPU time), notify_to_domain_us (notification to the domain awake). \
On lavapipe each VkDevice computes with LP_NUM_THREADS threads, set to 1 by the benchmark unless the \
environment sets it (the host's CPUs are the device there; with one pool thread per CPU the device \
competes with the runner and the domain for them, which a GPU does not, and the control lands several \
% off).";
/// Notes printed under the `gpu-fairness` table.
pub const FAIRNESS_NOTES: &str = "Two domains with weights 1 and 3 under credit (slice 1 ms) on one \
in-process vulkan pcoproc, each keeping its 64-entry queue full of spin jobs (iterations calibrated \
through the framework for ~1.5 ms of GPU time each, job_gpu_us the median seen; a dispatch is never \
cut, so a slice ends after the dispatch that spends it). Each vcoproc's charged run time (stats \
run_ns, charged at the end of each slice) sampled every second; share per window = its run time / \
both; max_error_pct: the largest |share - w/4| / (w/4) over windows and domains (as bench fairness); \
one slice charged in the next window instead moves a weight-1 share by ~0.6 %. share_1/share_3: over \
the whole run. A final job of each domain is checked against the host reference.";
