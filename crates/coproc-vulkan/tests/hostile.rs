//! Hostile jobs and firmware on a GPU pcoproc: each is refused with a clear
//! status, nothing of the job runs after the refusal, and the other
//! domain's results stay right.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use common::*;
use coproc_core::iova::{MapKind, Perms};
use coproc_firmware::gpu::{SAXPY, TOUCH, TWOENTRY};
use coproc_firmware::reference;
use coproc_proto::gpu::{op, Command, Job, Status};
use coproc_proto::queue::Sqe;
use coproc_vulkan::VulkanConfig;
use proptest::prelude::*;
use std::time::Duration;

/// B's private buffer: an iova only B has mapped.
const B_PRIVATE: u64 = BUF_IOVA + 0x400_0000;

struct Victim {
    d: Domain,
    data: std::sync::Arc<coproc_core::memory::Region>,
    expect: Vec<u32>,
    round: u32,
}

impl Victim {
    fn new(pc: &std::sync::Arc<coproc_core::Pcoproc>) -> Victim {
        let d = Domain::new(pc, 2, TOUCH.image);
        let data = d.buffer(B_PRIVATE, 4096, Perms::RW, MapKind::Pinned);
        let expect: Vec<u32> = (0..1024).collect();
        data.write(0, &u32_bytes(&expect)).unwrap();
        Victim {
            d,
            data,
            expect,
            round: 0,
        }
    }

    /// One touch job; checks the result against the host.
    fn check(&mut self) {
        self.round += 1;
        let job = Job::new()
            .bind(0, B_PRIVATE, 4096)
            .push_u32(0, &[1024, self.round])
            .dispatch(0, [16, 1, 1])
            .signal(self.round);
        let done = self.d.run(&job);
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(done[0].status, Some(Status::Ok));
        self.expect = reference::touch(&self.expect, self.round);
        assert_eq!(read_u32(&self.data, 0, 1024), self.expect);
    }
}

/// Run a job one of whose commands should be refused: one refusal
/// completion with `status`, then the signal with `Aborted`.
fn refused(d: &mut Domain, job: &Job, status: Status, what: &str) {
    let done = d.run(job);
    assert_eq!(done.len(), 2, "{what}: {done:?}");
    assert_eq!(done[0].status, Some(status), "{what}: {done:?}");
    assert_eq!(done[1].status, Some(Status::Aborted), "{what}");
}

#[test]
fn refused_jobs_leave_others_untouched() {
    let pc = pcoproc(VulkanConfig::default());
    let mut victim = Victim::new(&pc);
    victim.check();

    let mut a = Domain::new(&pc, 1, SAXPY.image);
    let _x = a.buffer(BUF_IOVA, 4096, Perms::R, MapKind::Pinned);
    let y = a.buffer(BUF_IOVA + 0x10_0000, 4096, Perms::RW, MapKind::Pinned);
    y.write(0, &[0x55; 4096]).unwrap();
    let ok_tail = |j: Job| j.push_u32(4, &[1024]).dispatch(0, [16, 1, 1]).signal(0);

    // Another vcoproc's buffer: B's iova means nothing in A's map.
    refused(
        &mut a,
        &ok_tail(
            Job::new()
                .bind_to_end(0, 0, BUF_IOVA)
                .bind(1, B_PRIVATE, 4096),
        ),
        Status::BadIova,
        "other vcoproc's buffer",
    );
    // Out of range: below and above the window, past the end of a mapping,
    // wrapping.
    for (iova, len) in [
        (0u64, 4u64),
        (0xFFFF_F000, 4096),
        (BUF_IOVA + 0x10_0000, 8192),
        (BUF_IOVA + 0x10_0000 + 4092, 8),
        (0xFFFF_FFFC, 0xFFFF_FFF0),
    ] {
        refused(
            &mut a,
            &ok_tail(Job::new().bind(1, iova, len)),
            Status::BadIova,
            &format!("iova {iova:#x}+{len:#x}"),
        );
    }
    // A pipeline it does not own (saxpy has one; B's firmware is not A's).
    refused(
        &mut a,
        &Job::new()
            .bind_to_end(0, 0, BUF_IOVA)
            .bind_to_end(0, 1, BUF_IOVA + 0x10_0000)
            .dispatch(1, [1, 1, 1])
            .signal(0),
        Status::BadPipeline,
        "foreign pipeline",
    );
    refused(
        &mut a,
        &Job::new().dispatch(u32::MAX, [1, 1, 1]).signal(0),
        Status::BadPipeline,
        "pipeline u32::MAX",
    );
    // Absurd group counts.
    for groups in [
        [0, 1, 1],
        [u32::MAX, 1, 1],
        [65_536, 65_536, 65_536],
        [4096, 4096, 1],
    ] {
        refused(
            &mut a,
            &Job::new()
                .bind_to_end(0, 0, BUF_IOVA)
                .bind_to_end(0, 1, BUF_IOVA + 0x10_0000)
                .dispatch(0, groups)
                .signal(0),
            Status::BadGroups,
            &format!("groups {groups:?}"),
        );
    }
    // A writable binding on a read-only mapping; a fill of it; an unbound
    // slot; a misaligned binding; a malformed entry.
    refused(
        &mut a,
        &ok_tail(
            Job::new()
                .bind_to_end(0, 0, BUF_IOVA)
                .bind_to_end(0, 1, BUF_IOVA),
        ),
        Status::ReadOnly,
        "writable binding of a read-only mapping",
    );
    refused(
        &mut a,
        &Job::new().fill(BUF_IOVA, 16, 1).signal(0),
        Status::ReadOnly,
        "fill of a read-only mapping",
    );
    let mut fresh = Domain::new(&pc, 3, SAXPY.image);
    let _f = fresh.buffer(BUF_IOVA, 4096, Perms::RW, MapKind::Pinned);
    refused(
        &mut fresh,
        &Job::new()
            .bind_to_end(0, 0, BUF_IOVA)
            .dispatch(0, [1, 1, 1])
            .signal(0),
        Status::BadBinding,
        "unbound slot",
    );
    refused(
        &mut fresh,
        &Job::new()
            .bind_to_end(0, 0, BUF_IOVA + 4)
            .bind_to_end(0, 1, BUF_IOVA + 8)
            .dispatch(0, [1, 1, 1])
            .signal(0),
        Status::BadBinding,
        "misaligned binding",
    );
    // Raw garbage entries.
    for sqe in [
        Sqe {
            opcode: 0,
            ..Default::default()
        },
        Sqe {
            opcode: 77,
            ..Default::default()
        },
        Sqe {
            opcode: op::BIND,
            args: [32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ..Default::default()
        },
    ] {
        let ring = &mut fresh.ring;
        assert!(ring.submit(&fresh.qmem, &sqe));
        assert!(ring.submit(&fresh.qmem, &Command::Signal { value: 0 }.encode(999)));
        fresh.v.doorbell();
        let c = fresh.next(Duration::from_secs(30)).unwrap();
        assert_eq!(c.status, Status::BadCommand as u32, "{sqe:?}");
        let c = fresh.next(Duration::from_secs(30)).unwrap();
        assert_eq!((c.tag, c.status), (999, Status::Aborted as u32));
    }

    // The refused jobs wrote nothing: A's y is as it was, and B is right.
    assert_eq!(y.read_vec(0, 4096).unwrap(), vec![0x55; 4096]);
    victim.check();
    // And A still works.
    let done = a.run(&ok_tail(
        Job::new()
            .bind_to_end(0, 0, BUF_IOVA)
            .bind_to_end(0, 1, BUF_IOVA + 0x10_0000),
    ));
    assert_eq!(done[0].status, Some(Status::Ok));
    for v in pc.vcoprocs() {
        assert_eq!(v.stats.faults, 0, "refusals are not faults");
    }
}

#[test]
fn bad_firmware_is_refused_and_the_vcoproc_stays_usable() {
    let pc = pcoproc(VulkanConfig::default());
    let v = pc
        .create_vcoproc(
            coproc_core::ids::DomainId(1),
            coproc_core::policy::SchedParams::default(),
        )
        .unwrap();
    let mut spirv_garbage = 0x0723_0203u32.to_le_bytes().to_vec();
    spirv_garbage.extend_from_slice(&[0x5a; 200]);
    let images: [&[u8]; 5] = [
        b"",
        &[0xff, 0xfe, 0xfd],
        b"@compute @workgroup_size(1) fn main( {",
        &spirv_garbage,
        b"@group(0) @binding(0) var t: texture_3d<f32>;\n@compute @workgroup_size(1) fn main() { _ = textureLoad(t, vec3(0), 0); }",
    ];
    for img in images {
        let e = v.load_firmware("bad", img).unwrap_err();
        assert!(e.to_string().contains("firmware"), "{e}");
    }
    v.load_firmware("twoentry", TWOENTRY.image).unwrap();
}

/// naga's work happens on the loading thread, not on the runner: a
/// `FirmwarePrep` taken from one device compiles on another thread, after
/// that device is gone, and what it made installs on a second device like
/// a plain load; a bad image is refused by `prepare` even when no runner is
/// left to ask.
#[test]
fn firmware_is_compiled_off_the_runner() {
    use coproc_core::control::ControlBlock;
    use coproc_core::device::{ContextSpec, Device};
    use coproc_core::{CoreError, DeviceError, VcoprocId};
    use coproc_vulkan::VulkanDevice;
    let prep = VulkanDevice::new(VulkanConfig::default())
        .expect("vulkan device (lavapipe installed?)")
        .firmware_prep();
    let (good, bad) = std::thread::spawn(move || {
        (
            prep.prepare(TWOENTRY.image),
            prep.prepare(b"@compute @workgroup_size(1) fn main( {"),
        )
    })
    .join()
    .unwrap();
    match bad {
        Err(DeviceError::BadFirmware(m)) => assert!(m.contains("does not parse"), "{m}"),
        other => panic!("a bad module was prepared: {:?}", other.map(|_| ())),
    }
    let mut dev = VulkanDevice::new(VulkanConfig::default()).unwrap();
    for id in [VcoprocId(1), VcoprocId(2)] {
        dev.create_context(ContextSpec {
            id,
            domain: coproc_core::DomainId(1),
            control: std::sync::Arc::new(ControlBlock::default()),
        })
        .unwrap();
    }
    let installed = dev.install_firmware(VcoprocId(1), good.unwrap()).unwrap();
    let loaded = dev.load_firmware(VcoprocId(2), TWOENTRY.image).unwrap();
    assert_eq!(installed, loaded);
    assert!(installed.code_bytes > 0);
    // Bytes are not a compiled image of this class.
    assert!(matches!(
        dev.install_firmware(VcoprocId(1), Box::new(TWOENTRY.image.to_vec())),
        Err(DeviceError::BadFirmware(_))
    ));
    drop(dev);

    let pc = pcoproc(VulkanConfig::default());
    let v = pc
        .create_vcoproc(
            coproc_core::ids::DomainId(1),
            coproc_core::policy::SchedParams::default(),
        )
        .unwrap();
    pc.shutdown();
    match v.load_firmware("bad", b"@compute @workgroup_size(1) fn main( {") {
        Err(CoreError::Device(DeviceError::BadFirmware(m))) => {
            assert!(m.contains("does not parse"), "{m}");
        }
        other => panic!("expected a firmware error, got {other:?}"),
    }
    assert!(matches!(
        v.load_firmware("twoentry", TWOENTRY.image),
        Err(CoreError::Shutdown(_))
    ));
}

/// The SPIR-V path takes what naga itself wrote too, and pipelines are
/// numbered by entry point.
#[test]
fn spirv_from_wgsl_runs() {
    let limits = coproc_vulkan::shader::ShaderLimits {
        max_invocations: 256,
        max_size: [256, 256, 64],
        ..coproc_vulkan::shader::ShaderLimits::BASE
    };
    let p = coproc_vulkan::shader::compile(TWOENTRY.image, &limits).unwrap();
    let spv: Vec<u8> = p[1].spirv.iter().flat_map(|w| w.to_le_bytes()).collect();
    let pc = pcoproc(VulkanConfig::default());
    let mut d = Domain::new(&pc, 1, &spv);
    let r = d.buffer(BUF_IOVA, 4096, Perms::RW, MapKind::Pinned);
    r.write(0, &u32_bytes(&(0..1024).collect::<Vec<_>>()))
        .unwrap();
    let done = d.run(
        &Job::new()
            .bind_to_end(0, 0, BUF_IOVA)
            .push_u32(0, &[1024])
            .dispatch(0, [16, 1, 1])
            .signal(0),
    );
    assert_eq!(done[0].status, Some(Status::Ok));
    let want: Vec<u32> = (0..1024u32).map(|i| i.wrapping_mul(i)).collect();
    assert_eq!(read_u32(&r, 0, 1024), want);
}

fn arb_sqe() -> impl Strategy<Value = Sqe> {
    let small = prop_oneof![
        Just(0u32),
        0u32..16,
        Just(BUF_IOVA as u32),
        Just(BUF_IOVA as u32 + 4096),
        Just(B_PRIVATE as u32),
        any::<u32>(),
    ];
    (0u32..9, proptest::collection::vec(small, 14)).prop_map(|(opcode, a)| Sqe {
        opcode,
        tag: 0,
        args: a.try_into().unwrap(),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Random entries never crash the device or touch another domain; every
    /// batch ends with its signal's completion.
    #[test]
    fn random_entries(batch in proptest::collection::vec(arb_sqe(), 1..12)) {
        use std::sync::OnceLock;
        static PC: OnceLock<std::sync::Arc<coproc_core::Pcoproc>> = OnceLock::new();
        let pc = PC.get_or_init(|| pcoproc(VulkanConfig {
            watchdog: Duration::from_secs(10),
            ..VulkanConfig::default()
        }));
        let mut victim = Victim::new(pc);
        let mut a = Domain::new(pc, 1, SAXPY.image);
        let _x = a.buffer(BUF_IOVA, 8192, Perms::RW, MapKind::Pinned);
        for s in &batch {
            prop_assert!(a.ring.submit(&a.qmem, s));
        }
        let end = Command::Signal { value: 1 }.encode(4242);
        prop_assert!(a.ring.submit(&a.qmem, &end));
        a.v.doorbell();
        loop {
            let c = a.next(Duration::from_secs(60));
            prop_assert!(c.is_some(), "no completion");
            if c.unwrap().tag == 4242 { break; }
        }
        victim.check();
        a.v.destroy().unwrap();
        victim.d.v.destroy().unwrap();
    }
}
