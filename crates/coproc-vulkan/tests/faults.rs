//! Device loss and the watchdog: only the guilty vcoproc faults; the device
//! is recreated and the others' pipelines and memory (domain mappings and
//! device-local contents) restored. Every policy runs GPU vcoprocs.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use common::*;
use coproc_core::fault::FaultReason;
use coproc_core::iova::{MapKind, Perms};
use coproc_core::state::VcoprocState;
use coproc_firmware::gpu::{SAXPY, SPIN, TOUCH};
use coproc_firmware::reference;
use coproc_proto::gpu::{Job, Status};
use coproc_vulkan::{TestHooks, VulkanConfig};
use std::time::Duration;

const LOCAL: u64 = 0x3000_0000;

/// A bystander with a pipeline, a mapping and device-local memory.
struct Bystander {
    d: Domain,
    data: std::sync::Arc<coproc_core::memory::Region>,
    expect: Vec<u32>,
    round: u32,
}

impl Bystander {
    fn new(pc: &std::sync::Arc<coproc_core::Pcoproc>) -> Bystander {
        let mut d = Domain::new(pc, 2, TOUCH.image);
        let data = d.buffer(BUF_IOVA, 4096, Perms::RW, MapKind::Revocable);
        let expect: Vec<u32> = (0..1024).map(|i| i * 5).collect();
        data.write(0, &u32_bytes(&expect)).unwrap();
        d.v.alloc_local(LOCAL, 4096).unwrap();
        // Local memory holds a value only the GPU wrote.
        let done = d.run(&Job::new().fill(LOCAL, 4096, 0x00C0_FFEE).signal(0));
        assert_eq!(done[0].status, Some(Status::Ok));
        Bystander {
            d,
            data,
            expect,
            round: 0,
        }
    }

    fn check(&mut self) {
        self.round += 1;
        let done = self.d.run(
            &Job::new()
                .bind(0, BUF_IOVA, 4096)
                .push_u32(0, &[1024, self.round])
                .dispatch(0, [16, 1, 1])
                .signal(0),
        );
        assert_eq!(done[0].status, Some(Status::Ok), "{done:?}");
        self.expect = reference::touch(&self.expect, self.round);
        assert_eq!(read_u32(&self.data, 0, 1024), self.expect);
        // The device-local contents survived.
        let out = self.d.buffer(0x4000_0000, 4096, Perms::RW, MapKind::Pinned);
        let done = self
            .d
            .run(&Job::new().copy(LOCAL, 0x4000_0000, 4096).signal(0));
        assert_eq!(done[0].status, Some(Status::Ok));
        assert_eq!(read_u32(&out, 0, 1024), vec![0x00C0_FFEE; 1024]);
        self.d.v.unmap(0x4000_0000).unwrap();
    }
}

fn wait_state(v: &coproc_core::VcoprocHandle, want: VcoprocState) {
    v.wait_state(|s| s == want, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("never {want:?}: {e}"));
}

fn saxpy_job(n: u32) -> Job {
    Job::new()
        .bind(0, BUF_IOVA, 4 * u64::from(n))
        .bind(1, BUF_IOVA + 0x10_0000, 4 * u64::from(n))
        .push_f32(0, &[2.0])
        .push_u32(4, &[n])
        .dispatch(0, [n.div_ceil(64), 1, 1])
        .signal(9)
}

#[test]
fn device_loss_faults_only_the_guilty() {
    let hooks = TestHooks::new();
    let pc = pcoproc(VulkanConfig {
        hooks: Some(hooks.clone()),
        ..VulkanConfig::default()
    });
    let mut by = Bystander::new(&pc);
    by.check();
    let mut a = Domain::new(&pc, 1, SAXPY.image);
    let n = 4096u32;
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let xr = a.buffer(BUF_IOVA, 4 * u64::from(n), Perms::R, MapKind::Pinned);
    xr.write(0, &f32_bytes(&x)).unwrap();
    let yr = a.buffer(
        BUF_IOVA + 0x10_0000,
        4 * u64::from(n),
        Perms::RW,
        MapKind::Pinned,
    );

    hooks.lose_device_on_next_submit(a.v.id());
    a.submit(&saxpy_job(n));
    wait_state(&a.v, VcoprocState::Faulted);
    let f = pc.faults();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].vcoproc, a.v.id());
    assert_eq!(f[0].fault.reason, FaultReason::DeviceLost);

    // The bystander's pipeline, mapping and local memory were restored.
    by.check();
    by.check();

    // The guilty vcoproc comes back with a reset: the cut job reports
    // aborted, the next one runs on the new device.
    a.v.reset().unwrap();
    a.v.mbox_write(0, QUEUE_IOVA as u32);
    a.v.start().unwrap();
    a.v.doorbell();
    let c = a
        .next(Duration::from_secs(30))
        .expect("the cut job's signal");
    assert_eq!(c.status, Status::Aborted as u32);
    yr.write(0, &vec![0u8; 4 * n as usize]).unwrap();
    let done = a.run(&saxpy_job(n));
    assert_eq!(done[0].status, Some(Status::Ok));
    let want = reference::saxpy(2.0, &x, &vec![0.0; n as usize]);
    assert_eq!(read_f32(&yr, 0, n as usize), want);
    by.check();
}

/// GPU nanoseconds of a spin over `n` invocations of `iters` steps.
fn spin_ns(d: &mut Domain, iters: u32, n: u32) -> u64 {
    let done = d.run(
        &Job::new()
            .bind(0, BUF_IOVA, 4 * u64::from(n))
            .push_u32(0, &[iters, 1, n])
            .dispatch(0, [n / 64, 1, 1])
            .signal(0),
    );
    assert_eq!(done[0].status, Some(Status::Ok));
    done[0].gpu_ns.max(1)
}

#[test]
fn watchdog_faults_a_long_dispatch() {
    // Size the hog from this device's speed: ~2 s of work, a watchdog a
    // tenth of that (lavapipe and a fast GPU differ by 1000x).
    const ITERS: u32 = 1 << 16;
    let max_n = 1u32 << 22;
    let (n, watchdog) = {
        let pc = pcoproc(VulkanConfig::default());
        let mut d = Domain::new(&pc, 1, SPIN.image);
        let _b = d.buffer(BUF_IOVA, 4 * u64::from(max_n), Perms::RW, MapKind::Pinned);
        spin_ns(&mut d, ITERS, 4096); // compile and warm up
        let t = spin_ns(&mut d, ITERS, 4096) as f64;
        let n = ((2e9 / t) * 4096.0).clamp(4096.0, f64::from(max_n)) as u32 / 64 * 64;
        let predicted = t * f64::from(n) / 4096.0;
        (n, Duration::from_nanos((predicted / 10.0).max(5e6) as u64))
    };
    let pc = pcoproc(VulkanConfig {
        watchdog,
        ..VulkanConfig::default()
    });
    let mut by = Bystander::new(&pc);
    by.check();
    let mut hog = Domain::new(&pc, 1, SPIN.image);
    let out_kept = hog.buffer(BUF_IOVA, 4 * u64::from(max_n), Perms::RW, MapKind::Pinned);
    hog.submit(
        &Job::new()
            .bind(0, BUF_IOVA, 4 * u64::from(n))
            .push_u32(0, &[ITERS, 7, n])
            .dispatch(0, [n / 64, 1, 1])
            .signal(0),
    );
    wait_state(&hog.v, VcoprocState::Faulted);
    let f = pc.faults();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].vcoproc, hog.v.id());
    assert_eq!(f[0].fault.reason, FaultReason::Watchdog);
    // The hung work is charged what it held the device for: the
    // watchdog's length at least (the runner only waited meanwhile).
    let run_ns = hog.v.info().unwrap().stats.run_ns;
    assert!(
        u128::from(run_ns) >= watchdog.as_nanos(),
        "charged {run_ns} ns for a job stopped by a {watchdog:?} watchdog"
    );
    // The others carry on, on the recreated device.
    by.check();
    // A short spin is fine and right.
    hog.v.reset().unwrap();
    hog.v.mbox_write(0, QUEUE_IOVA as u32);
    hog.v.start().unwrap();
    hog.v.doorbell();
    assert_eq!(
        hog.next(Duration::from_secs(30)).unwrap().status,
        Status::Aborted as u32
    );
    let done = hog.run(
        &Job::new()
            .bind(0, BUF_IOVA, 4096)
            .push_u32(0, &[100_000, 3, 1024])
            .dispatch(0, [16, 1, 1])
            .signal(0),
    );
    assert_eq!(done[0].status, Some(Status::Ok));
    assert_eq!(
        read_u32(&out_kept, 0, 1024),
        reference::spin(3, 100_000, 1024)
    );
}

/// Every scheduling policy runs GPU vcoprocs, switched while they work;
/// with priority, a waiting high-priority job preempts a low-priority
/// stream at a dispatch boundary.
#[test]
fn every_policy_runs_gpu_vcoprocs() {
    let pc = pcoproc(VulkanConfig::default());
    let mut by = Bystander::new(&pc);
    let mut sp = Domain::new(&pc, 1, SPIN.image);
    let out = sp.buffer(BUF_IOVA, 4096, Perms::RW, MapKind::Pinned);
    let (a, b) = (sp.v.id().0, by.d.v.id().0);
    let steps: Vec<(&str, Vec<String>)> = vec![
        ("credit", vec![]),
        ("priority", vec![]),
        ("rt", vec!["capacity_pct=90".into()]),
        (
            "table",
            vec![
                "frame_us=6000".into(),
                format!("window={a}:0:3000"),
                format!("window={b}:3000:3000"),
            ],
        ),
        ("rr", vec!["slice_us=500".into()]),
    ];
    for (round, (name, params)) in steps.iter().enumerate() {
        let params: Vec<(String, String)> = params
            .iter()
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        pc.set_policy(coproc_core::policy::build(name, &params).unwrap())
            .unwrap();
        let seed = round as u32;
        let done = sp.run(
            &Job::new()
                .bind(0, BUF_IOVA, 4096)
                .push_u32(0, &[5000, seed, 1024])
                .dispatch(0, [16, 1, 1])
                .signal(0),
        );
        assert_eq!(done[0].status, Some(Status::Ok), "{name}");
        assert_eq!(
            read_u32(&out, 0, 1024),
            reference::spin(seed, 5000, 1024),
            "{name}"
        );
        by.check();
    }
}
