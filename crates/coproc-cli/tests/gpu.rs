//! The real daemon with a `vulkan` pcoproc (lavapipe in CI): GPU domains
//! through the SDK get the host references' results, refused commands come
//! back as typed errors without disturbing anyone, junk firmware is refused
//! by `load-firmware`, `coproc list` shows the GPU, and a daemon asked for
//! a GPU on a machine without Vulkan does not start.
//!
//! Every test but the last needs a Vulkan device; without one it says so
//! and passes.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;
use common::{coprocd_bin, Daemon};

use coproc_client::gpu::{self, op, GpuCounters};
use coproc_client::{
    Client, ClientError, ErrorCode, Job, Queue, SharedMem, Status, WireMapKind, WirePerms,
};
use coproc_firmware::gpu::{GpuFirmware, MATMUL, SAXPY, TWOENTRY};
use coproc_firmware::reference::{self, TestRng};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
[[pcoproc]]
name = "mcu0"
class = "mcu"

[[pcoproc]]
name = "gpu0"
class = "vulkan"
policy = "rr"
policy_params = { slice_us = 2000 }
options = { device = "auto", import = "auto", watchdog_ms = 10000, max_contexts = 16, local_memory_mb = 16 }

[[domain]]
uids = "*"
pcoprocs = ["mcu0", "gpu0"]
max_vcoprocs = 16
max_mapped_bytes = 268435456
"#;

const T: Duration = Duration::from_secs(60);
const QUEUE_IOVA: u64 = 0x1000_0000;
const BUF: u64 = 0x2000_0000;
/// Buffers are 16 MiB apart.
const STRIDE: u64 = 0x100_0000;

/// Whether the tests that need a Vulkan device run: they do where one is
/// (lavapipe, which the README's set-up installs, counts); without one they
/// fail loudly, unless `COPROC_SKIP_VULKAN_TESTS=1` says to skip them.
fn vulkan() -> bool {
    match coproc_vulkan::probe() {
        Ok(_) => true,
        Err(e) if std::env::var("COPROC_SKIP_VULKAN_TESTS").is_ok_and(|v| v == "1") => {
            eprintln!("skipped (COPROC_SKIP_VULKAN_TESTS=1): no Vulkan device ({e})");
            false
        }
        Err(e) => panic!(
            "no Vulkan device ({e}): install Mesa's lavapipe (scripts/setup.sh does), \
             or set COPROC_SKIP_VULKAN_TESTS=1 to skip the GPU tests"
        ),
    }
}

/// A GPU domain: its own session, a vcoproc with `fw`, a queue attached.
struct Gpu {
    c: Client,
    v: u32,
    q: Queue,
    bufs: Vec<SharedMem>,
}

impl Gpu {
    fn new(d: &Daemon, fw: &GpuFirmware) -> Gpu {
        let mut c = d.client();
        let v = c.open("gpu0").unwrap();
        c.load_firmware(v, fw.name, fw.image).unwrap();
        let q = c.create_queue(v, QUEUE_IOVA, 64).unwrap();
        c.gpu_attach(v, &q).unwrap();
        c.start(v).unwrap();
        Gpu {
            c,
            v,
            q,
            bufs: Vec::new(),
        }
    }

    /// `len` bytes of fresh memory mapped at `iova`; its index.
    fn buffer(&mut self, iova: u64, len: u64, perms: WirePerms) -> usize {
        let m = SharedMem::new(len).unwrap();
        self.c
            .map(self.v, &m, 0, iova, m.len(), perms, WireMapKind::Pinned)
            .unwrap();
        self.bufs.push(m);
        self.bufs.len() - 1
    }

    fn write_u32(&self, buf: usize, v: &[u32]) {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.bufs[buf].write(0, &b).unwrap();
    }

    fn read_u32(&self, buf: usize, n: usize) -> Vec<u32> {
        self.bufs[buf]
            .read_vec(0, 4 * n)
            .unwrap()
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn counters(&mut self) -> GpuCounters {
        self.c.gpu_counters(self.v).unwrap()
    }
}

/// saxpy on exactly representable values: bit-exact against the host.
struct Saxpy {
    g: Gpu,
    n: usize,
    a: f32,
    x: Vec<f32>,
    y: Vec<f32>,
    yb: usize,
}

impl Saxpy {
    fn new(d: &Daemon, n: usize, seed: u64) -> Saxpy {
        let mut g = Gpu::new(d, &SAXPY);
        let mut rng = TestRng::new(seed);
        let x: Vec<f32> = (0..n)
            .map(|_| (rng.next_u64() % 2048) as f32 / 8.0 - 128.0)
            .collect();
        let y: Vec<f32> = (0..n)
            .map(|_| (rng.next_u64() % 4096) as f32 - 2048.0)
            .collect();
        let xb = g.buffer(BUF, 4 * n as u64, WirePerms::R);
        let yb = g.buffer(BUF + STRIDE, 4 * n as u64, WirePerms::Rw);
        g.write_u32(xb, &x.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        g.write_u32(yb, &y.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        Saxpy {
            g,
            n,
            a: -1.5,
            x,
            y,
            yb,
        }
    }

    fn job(&self, value: u32) -> Job {
        let bytes = 4 * self.n as u64;
        Job::new()
            .bind(0, BUF, bytes)
            .bind(1, BUF + STRIDE, bytes)
            .push_f32(0, &[self.a])
            .push_u32(4, &[self.n as u32])
            .dispatch(0, [(self.n as u32).div_ceil(64), 1, 1])
            .signal(value)
    }

    /// Check y after one more job and take it as the next input.
    fn check(&mut self, what: &str) {
        let want = reference::saxpy(self.a, &self.x, &self.y);
        let got = self.g.read_u32(self.yb, self.n);
        let want_bits: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
        assert!(got == want_bits, "saxpy {what}: differs from the host");
        self.y = want;
    }
}

/// matmul over u32 with fresh matrices per job.
struct Matmul {
    g: Gpu,
    rng: TestRng,
    bufs: [usize; 3],
    want: Vec<u32>,
    mn: usize,
}

impl Matmul {
    fn new(d: &Daemon, seed: u64) -> Matmul {
        let mut g = Gpu::new(d, &MATMUL);
        let bufs = [
            g.buffer(BUF, 64 << 10, WirePerms::R),
            g.buffer(BUF + STRIDE, 64 << 10, WirePerms::R),
            g.buffer(BUF + 2 * STRIDE, 64 << 10, WirePerms::Rw),
        ];
        Matmul {
            g,
            rng: TestRng::new(seed),
            bufs,
            want: vec![],
            mn: 0,
        }
    }

    /// New matrices of a shape picked by `round`; the job to multiply them.
    fn job(&mut self, round: usize) -> Job {
        let s = round % 4;
        let (m, n, k) = (33 + 16 * s, 47 + 12 * s, 29 + 8 * s);
        let a: Vec<u32> = (0..m * k).map(|_| self.rng.next_u64() as u32).collect();
        let b: Vec<u32> = (0..k * n).map(|_| self.rng.next_u64() as u32).collect();
        self.g.write_u32(self.bufs[0], &a);
        self.g.write_u32(self.bufs[1], &b);
        self.g.write_u32(self.bufs[2], &vec![0xdead_beef; m * n]);
        self.want = reference::matmul_u32(&a, &b, m, n, k);
        self.mn = m * n;
        Job::new()
            .bind(0, BUF, 4 * (m * k) as u64)
            .bind(1, BUF + STRIDE, 4 * (k * n) as u64)
            .bind(2, BUF + 2 * STRIDE, 4 * (m * n) as u64)
            .push_u32(0, &[m as u32, n as u32, k as u32])
            .dispatch(0, [(n as u32).div_ceil(8), (m as u32).div_ceil(8), 1])
            .signal(round as u32)
    }

    fn check(&self, what: &str) {
        assert!(
            self.g.read_u32(self.bufs[2], self.mn) == self.want,
            "matmul {what}: differs from the host"
        );
    }
}

/// The refusal a job got: (status, opcode, index in the job).
fn refusal(r: Result<coproc_client::JobDone, ClientError>) -> (Status, u32, u32) {
    match r {
        Err(ClientError::Gpu {
            status,
            opcode,
            index,
            ..
        }) => (status, opcode, index),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn sdk_constants_match_the_device() {
    use coproc_vulkan::device::{mbox_out, MBOX_QUEUE};
    assert_eq!(gpu::MBOX_QUEUE as usize, MBOX_QUEUE);
    assert_eq!(
        [
            gpu::mbox_out::POSTED,
            gpu::mbox_out::GARBAGE,
            gpu::mbox_out::BAD_QUEUE,
            gpu::mbox_out::EXECUTED,
            gpu::mbox_out::REFUSED
        ],
        [
            mbox_out::POSTED,
            mbox_out::GARBAGE,
            mbox_out::BAD_QUEUE,
            mbox_out::EXECUTED,
            mbox_out::REFUSED
        ]
    );
}

/// Two domains, saxpy (WGSL) and matmul (SPIR-V), jobs of both queued
/// before either is waited for, several rounds: every result equals the
/// host's. Meanwhile the saxpy domain sends jobs the device must refuse: a
/// binding of the iova where the *other* domain has its output (never
/// mapped in this one), a pipeline its firmware does not have, a fill of
/// its read-only input. Each comes back as a typed error with the device's
/// status, nothing faults, and the next jobs of both domains are right.
#[test]
fn two_gpu_domains_interleave_and_refusals_stay_contained() {
    if !vulkan() {
        return;
    }
    let d = Daemon::start("gpu-interleave", CONFIG);
    let mut sx = Saxpy::new(&d, 10_000, 7);
    let mut mm = Matmul::new(&d, 9);
    let bytes = 4 * sx.n as u64;
    for round in 0..8 {
        let hostile = match round {
            // Slot 1 (written by the shader) at the other domain's C.
            2 => Some((
                Job::new()
                    .bind(0, BUF, bytes)
                    .bind(1, BUF + 2 * STRIDE, bytes)
                    .push_u32(4, &[sx.n as u32])
                    .dispatch(0, [4, 1, 1])
                    .signal(900),
                (Status::BadIova, op::BIND, 1),
            )),
            // saxpy has one pipeline (0).
            4 => Some((
                Job::new()
                    .bind(0, BUF, bytes)
                    .bind(1, BUF + STRIDE, bytes)
                    .push_f32(0, &[1.0])
                    .push_u32(4, &[sx.n as u32])
                    .dispatch(1, [4, 1, 1])
                    .signal(901),
                (Status::BadPipeline, op::DISPATCH, 4),
            )),
            // x is mapped read-only.
            6 => Some((
                Job::new().barrier().fill(BUF, 4096, 0).signal(902),
                (Status::ReadOnly, op::FILL, 1),
            )),
            _ => None,
        };
        // Queue everything, then wait: hostile job first, so the good one
        // after it in the same ring shows the queue recovers.
        let bad = hostile
            .as_ref()
            .map(|(job, _)| sx.g.q.submit_job(job).unwrap());
        let s = sx.g.q.submit_job(&sx.job(round)).unwrap();
        let mjob = mm.job(round as usize);
        let m = mm.g.q.submit_job(&mjob).unwrap();
        if let (Some(tag), Some((_, want))) = (bad, &hostile) {
            let e = sx.g.q.wait_job(tag, T);
            let text = e.as_ref().unwrap_err().to_string();
            eprintln!("round {round}: {text}");
            assert_eq!(refusal(e), *want, "round {round}");
            assert!(text.contains(want.0.describe()), "{text}");
        }
        let done = sx.g.q.wait_job(s, T).unwrap();
        assert_eq!(done.value, round, "saxpy signal value");
        sx.check(&format!("round {round}"));
        assert_eq!(mm.g.q.wait_job(m, T).unwrap().value, round);
        mm.check(&format!("round {round}"));
    }
    // Nobody faulted; the refusals are counted where they happened.
    let (sc, mc) = (sx.g.counters(), mm.g.counters());
    assert_eq!((sc.refused, sc.bad_queue, sc.garbage), (3, false, 0));
    assert_eq!((mc.refused, mc.bad_queue, mc.garbage), (0, false, 0));
    assert_eq!(mc.posted, 8);
    for (c, v) in [(&mut sx.g.c, sx.g.v), (&mut mm.g.c, mm.g.v)] {
        let info = c.query(v).unwrap();
        assert_eq!(info.faults, 0, "{info:?}");
        assert_ne!(info.state, "faulted");
        assert!(info.run_ns > 0);
        assert_eq!(info.coproc, "gpu0");
    }
    let mut admin = d.client();
    assert!(admin.list_faults().unwrap().is_empty());
    // A job the SDK refuses never reaches the device.
    assert!(matches!(
        sx.g.q.submit_job(&Job::new().barrier()),
        Err(ClientError::Invalid(_))
    ));
}

/// Jobs of one domain that do not fit its 64-entry ring at once: long jobs
/// stream through it, many small ones wait politely for room.
#[test]
fn full_rings_are_waited_for() {
    if !vulkan() {
        return;
    }
    let d = Daemon::start("gpu-ring", CONFIG);
    let mut g = Gpu::new(&d, &TWOENTRY);
    let n = 4096usize;
    let data = g.buffer(BUF, 4 * n as u64, WirePerms::Rw);
    // 150 add_one dispatches with barriers: 4 + 2 x 150 + 1 commands.
    let mut job = Job::new()
        .fill(BUF, 4 * n as u64, 0)
        .barrier()
        .bind(0, BUF, 4 * n as u64)
        .push_u32(0, &[n as u32]);
    for _ in 0..150 {
        job = job.dispatch(0, [(n as u32).div_ceil(64), 1, 1]).barrier();
    }
    let t = g.q.submit_job(&job.signal(1)).unwrap();
    assert_eq!(g.q.wait_job(t, T).unwrap().value, 1);
    assert_eq!(g.read_u32(data, n), vec![150; n]);
    // 100 jobs of 5 commands queued before any wait (500 entries, and more
    // completions than the completion ring holds).
    let tags: Vec<u32> = (0..100)
        .map(|i| {
            let j = Job::new()
                .bind(0, BUF, 4 * n as u64)
                .push_u32(0, &[n as u32])
                .dispatch(0, [(n as u32).div_ceil(64), 1, 1])
                .barrier()
                .signal(i);
            g.q.submit_job(&j).unwrap()
        })
        .collect();
    for (i, t) in tags.into_iter().enumerate().rev() {
        assert_eq!(g.q.wait_job(t, T).unwrap().value, i as u32);
    }
    assert_eq!(g.read_u32(data, n), vec![250; n]);
}

/// Images that are neither valid SPIR-V nor valid WGSL are refused by
/// `load-firmware` with `device`; the vcoproc can still take a good image,
/// a bystander's jobs stay right throughout, and the daemon keeps serving.
#[test]
fn junk_firmware_is_refused_and_the_daemon_keeps_serving() {
    if !vulkan() {
        return;
    }
    let mut d = Daemon::start("gpu-firmware", CONFIG);
    let mut bystander = Matmul::new(&d, 3);
    let mut c = d.client();
    let v = c.open("gpu0").unwrap();
    let mut spirv_junk = 0x0723_0203u32.to_le_bytes().to_vec(); // SPIR-V magic
    spirv_junk.extend((0..64u32).flat_map(|i| (i * 0x0101_0101).to_le_bytes()));
    let junk: [(&str, Vec<u8>); 6] = [
        (
            "binary",
            vec![0xff, 0x00, 0x13, 0x37, 0x80, 0x81, 0x82, 0x83],
        ),
        ("spirv-junk", spirv_junk),
        (
            "wgsl-syntax",
            b"@compute @workgroup_size(64) fn main( {".to_vec(),
        ),
        (
            "wgsl-types",
            b"@group(0) @binding(0) var<storage, read_write> d: array<u32>;\n\
              @compute @workgroup_size(64) fn main() { d[0] = 1.5; }"
                .to_vec(),
        ),
        ("no-entry", b"fn helper() -> u32 { return 1u; }".to_vec()),
        ("mcu-elf", coproc_firmware::CRC32.elf.to_vec()),
    ];
    for (round, (what, image)) in junk.iter().enumerate() {
        let e = c.load_firmware(v, what, image).unwrap_err();
        eprintln!("{what}: {e}");
        assert_eq!(e.code(), Some(ErrorCode::Device), "{what}: {e}");
        let job = bystander.job(round);
        let t = bystander.g.q.submit_job(&job).unwrap();
        bystander.g.q.wait_job(t, T).unwrap();
        bystander.check(what);
    }
    // A feature the class does not run is named in the error the domain
    // gets, in a shader author's words.
    let e = c
        .load_firmware(
            v,
            "texture",
            b"@group(0) @binding(0) var t: texture_depth_2d;\n\
              @group(0) @binding(1) var<storage, read_write> d: array<f32>;\n\
              @compute @workgroup_size(1) fn main() { d[0] = textureLoad(t, vec2(0), 0); }",
        )
        .unwrap_err();
    assert!(e.to_string().contains("depth textures"), "{e}");
    // Empty is refused before the device sees it.
    let e = c.load_firmware(v, "empty", b"").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    // The same vcoproc takes a good image and computes.
    c.load_firmware(v, "twoentry", TWOENTRY.image).unwrap();
    let mut q = c.create_queue(v, QUEUE_IOVA, 16).unwrap();
    let mem = SharedMem::new(4096).unwrap();
    c.map(v, &mem, 0, BUF, 4096, WirePerms::Rw, WireMapKind::Pinned)
        .unwrap();
    c.gpu_attach(v, &q).unwrap();
    c.start(v).unwrap();
    let t = q
        .submit_job(
            &Job::new()
                .fill(BUF, 4096, 3)
                .barrier()
                .bind(0, BUF, 4096)
                .push_u32(0, &[1024])
                .dispatch(1, [16, 1, 1]) // square
                .signal(5),
        )
        .unwrap();
    assert_eq!(q.wait_job(t, T).unwrap().value, 5);
    assert_eq!(mem.read_vec(0, 8).unwrap(), [9, 0, 0, 0, 9, 0, 0, 0]);
    assert!(d.alive());
    // And the mcu pcoproc beside it still serves.
    let m = c.open("mcu0").unwrap();
    c.load_firmware(m, "echo", coproc_firmware::ECHO.elf)
        .unwrap();
}

/// `coproc list` shows the GPU's class, model and memory; the mcu has no
/// memory of its own ("-").
#[test]
fn list_shows_the_gpu_and_its_memory() {
    if !vulkan() {
        return;
    }
    let d = Daemon::start("gpu-list", CONFIG);
    let l = d.client().list_coprocs().unwrap();
    let gpu = l.iter().find(|p| p.name == "gpu0").unwrap();
    let mcu = l.iter().find(|p| p.name == "mcu0").unwrap();
    assert_eq!(gpu.class, "vulkan");
    assert!(gpu.model.contains(" ("), "{}", gpu.model);
    assert!(gpu.memory_bytes > 0);
    assert_eq!((gpu.iova_base, gpu.iova_size), (0x1000_0000, 0xE000_0000));
    assert_eq!((mcu.class.as_str(), mcu.memory_bytes), ("mcu", 0));
    let (ok, out, err) = d.cli(&["list"]);
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap();
    assert!(header.contains("MEMORY"), "{out}");
    let row = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not listed: {out}"))
            .to_string()
    };
    let g = row("gpu0");
    assert!(
        g.contains("vulkan") && (g.contains(" GiB") || g.contains(" MiB")),
        "{g}"
    );
    assert!(row("mcu0").split_whitespace().any(|w| w == "-"), "{out}");
    let (ok, json, _) = d.cli(&["-o", "json", "list"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let g = v
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "gpu0")
        .unwrap();
    assert_eq!(g["memory_bytes"].as_u64(), Some(gpu.memory_bytes));
    // What a shader author needs: the device's limits and features, the
    // same as the device reports to the class in process.
    let dev = coproc_vulkan::VulkanDevice::new(coproc_vulkan::VulkanConfig::default()).unwrap();
    let want = dev.shader_limits();
    let limit = |k: &str| g["limits"][k].as_u64();
    assert_eq!(
        limit("max_workgroup_invocations"),
        Some(u64::from(want.max_invocations))
    );
    assert_eq!(
        limit("max_workgroup_memory_bytes"),
        Some(u64::from(want.max_workgroup_bytes))
    );
    assert_eq!(
        limit("subgroup_size"),
        Some(u64::from(want.features.subgroup_size))
    );
    assert_eq!(limit("push_constant_bytes"), Some(128));
    assert!(limit("storage_buffer_offset_alignment").is_some_and(u64::is_power_of_two));
    let features: Vec<&str> = g["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for f in want.features.names() {
        assert!(features.contains(&f), "{f} not in {features:?}");
    }
    assert_eq!(
        gpu.limits,
        l.iter().find(|p| p.name == "gpu0").unwrap().limits
    );
    assert!(mcu.limits.is_empty() && mcu.features.is_empty());
}

/// Start coprocd with `config` and `env`; it must exit by itself, with an
/// error: its standard error.
fn refused_start(name: &str, config: &str, env: &[(&str, &str)]) -> String {
    let dir = std::env::temp_dir().join(format!("coproc-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("coprocd.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(coprocd_bin());
    cmd.arg("--config")
        .arg(&path)
        .arg("--socket")
        .arg(dir.join("coprocd.sock"))
        .env("COPROC_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("coprocd started although it should not have");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!status.success(), "{err}");
    err
}

/// No Vulkan driver (the loader pointed at none), or no device matching
/// the selector: the daemon does not start, and says which pcoproc and why.
#[test]
fn a_gpu_the_machine_does_not_have_stops_the_daemon_with_a_clear_error() {
    let none = [
        ("VK_ICD_FILENAMES", "/nonexistent/icd.json"),
        ("VK_DRIVER_FILES", "/nonexistent/icd.json"),
    ];
    let err = refused_start("gpu-none", CONFIG, &none);
    assert!(
        err.contains("pcoproc gpu0 (class vulkan): cannot open a Vulkan device"),
        "{err}"
    );
    let picky = CONFIG.replace("device = \"auto\"", "device = \"no-such-gpu-9000\"");
    let err = refused_start("gpu-nomatch", &picky, &[]);
    assert!(err.contains("pcoproc gpu0"), "{err}");
    assert!(err.contains("no-such-gpu-9000"), "{err}");
    // A bad option is a configuration error (checked by --check too).
    let bad = CONFIG.replace("watchdog_ms = 10000", "watchdog_ms = 0");
    let err = refused_start("gpu-badopt", &bad, &[]);
    assert!(err.contains("watchdog_ms"), "{err}");
}

/// A shader that makes naga panic (found by the fuzzer) is refused as bad
/// firmware every time; the daemon keeps serving, and the panics reach its
/// log as rate-limited lines, never as the default hook's full reports.
#[test]
fn shader_panics_are_contained_and_their_log_is_rate_limited() {
    if !vulkan() {
        return;
    }
    let log = std::env::temp_dir().join(format!("coproc-test-panics-{}.log", std::process::id()));
    let file = std::fs::File::create(&log).unwrap();
    let d = Daemon::start_with("gpu-panics", CONFIG, |c| {
        c.stderr(Stdio::from(file));
    });
    let spv = include_bytes!("../../../fuzz/corpus/shader/regress-spv-layout-panic.spv");
    let mut c = d.client();
    let v = c.open("gpu0").unwrap();
    for _ in 0..40 {
        let e = c.load_firmware(v, "bad", spv).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Device), "{e}");
    }
    // Still serving: a good shader loads on the same vcoproc.
    c.load_firmware(v, "saxpy", SAXPY.image).unwrap();
    drop(c);
    drop(d);
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let lines = text.lines().filter(|l| l.contains("panic:")).count();
    assert!(lines >= 1, "the panic is logged: {text}");
    assert!(lines <= 12, "{lines} panic lines for 40 panics: {text}");
    assert!(
        !text.contains("panicked at"),
        "the default hook ran: {text}"
    );
}

/// Firmware as shader authors write it, through the daemon and the SDK:
/// `histo` (GLSL) with its specialization constants set in the image
/// (`gpu::Specialized`), a uniform block in bind group 1, exact bind
/// lengths; the counts equal the host's. A job the SDK cannot build (a
/// push at a byte offset that is not a multiple of 4) is refused before it
/// is sent, and the queue goes on.
#[test]
fn specialized_firmware_and_uniforms_through_the_sdk() {
    if !vulkan() {
        return;
    }
    let mut d = Daemon::start("gpu-spec", CONFIG);
    let mut c = d.client();
    let v = c.open("gpu0").unwrap();
    let image = gpu::Specialized::new(coproc_firmware::gpu::HISTO.image)
        .set("BINS", 48.0)
        .set("1", 128.0)
        .image();
    c.load_firmware(v, "histo", &image).unwrap();
    let mut q = c.create_queue(v, QUEUE_IOVA, 64).unwrap();
    c.gpu_attach(v, &q).unwrap();
    c.start(v).unwrap();
    let n = 10_000usize;
    let mut rng = TestRng::new(17);
    let data: Vec<u32> = (0..n).map(|_| rng.next_u64() as u32).collect();
    let map = |c: &mut Client, iova: u64, len: u64, perms| {
        let m = SharedMem::new(len).unwrap();
        c.map(v, &m, 0, iova, m.len(), perms, WireMapKind::Pinned)
            .unwrap();
        m
    };
    let dm = map(&mut c, BUF, 4 * n as u64, WirePerms::R);
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    dm.write(0, &bytes).unwrap();
    let bm = map(&mut c, BUF + STRIDE, 4096, WirePerms::Rw);
    let um = map(&mut c, BUF + 2 * STRIDE, 4096, WirePerms::R);
    let shift = 5u32;
    let params: Vec<u8> = [shift, n as u32]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    um.write(0, &params).unwrap();
    let bad = Job::new().push_u32(2, &[1]).signal(9);
    assert!(matches!(q.submit_job(&bad), Err(ClientError::Invalid(_))));
    let t = q
        .submit_job(
            &Job::new()
                .bind(0, BUF, 4 * n as u64)
                .bind(1, BUF + STRIDE, 4 * 48)
                .bind_group(1, 0, BUF + 2 * STRIDE, 16)
                .dispatch(0, [(n as u32).div_ceil(128), 1, 1])
                .signal(3),
        )
        .unwrap();
    assert_eq!(q.wait_job(t, T).unwrap().value, 3);
    let got: Vec<u32> = bm
        .read_vec(0, 4 * 48)
        .unwrap()
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(got, reference::histogram(&data, shift, 48));
    assert!(d.alive());
}
