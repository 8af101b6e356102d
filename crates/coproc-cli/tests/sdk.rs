//! The high-level SDK (`Vcoproc`, `Session`, `Buffer`, queue helpers, the
//! tokio flavour) against a private `coprocd`: results checked against
//! host references, handles that clean up after themselves, faults seen
//! as errors with their record, and the state after them.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use common::{Daemon, MCU_RR};
use coproc_client::{Job, Session, Sqe, Vcoproc, VcoprocError};
use coproc_firmware::reference::TestRng;
use coproc_firmware::{CRC32, FAULTY, QECHO};

fn data(rng: &mut TestRng, len: usize) -> Vec<u8> {
    rng.bytes(len)
}

#[test]
fn a_job_is_offloaded_in_four_calls_and_drop_destroys() {
    let d = Daemon::start("sdk-four", MCU_RR);
    let input = data(&mut TestRng::new(1), 10_000);
    let id;
    {
        // The whole path, counted: open, load, buffer, call.
        let v = Vcoproc::open_at(&d.socket, "mcu0").unwrap(); // 1
        v.load("crc32", CRC32.elf).unwrap(); // 2
        let buf = v.buffer_from(&input).unwrap(); // 3
        let reply = v
            .call(&[buf.iova32().unwrap(), input.len() as u32, 7])
            .unwrap(); // 4
        assert_eq!(reply.words[1], crc32fast::hash(&input));
        assert_eq!((reply.words[2], reply.tag), (7, 7));
        // What a call costs on the socket: four requests (mbox-read for
        // the sequence, mbox-write, doorbell, mbox-read for the answer),
        // their replies and the notification.
        let frames = || v.session().with_client(|c| c.messages());
        let before = frames();
        v.call(&[buf.iova32().unwrap(), 9, 8]).unwrap();
        let after = frames();
        assert_eq!(after.sent - before.sent, 4);
        assert_eq!(after.received - before.received, 5);
        id = v.id();
        let mine: Vec<u32> = v
            .session()
            .list_vcoprocs()
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(mine, [id]);
        assert_eq!(v.session().list_coprocs().unwrap()[0].name, "mcu0");
    }
    // Dropped: the vcoproc is gone, whatever session looks.
    let c = Session::connect_to(&d.socket).unwrap();
    assert!(c.list_vcoprocs().unwrap().iter().all(|i| i.id != id));
}

#[test]
fn calls_never_take_an_older_answer() {
    let d = Daemon::start("sdk-race", MCU_RR);
    let s = Session::connect_to(&d.socket).unwrap();
    // Two vcoprocs on one session, called in turn: each answer is the
    // one to its own request.
    let a = s.open("mcu0").unwrap();
    let b = s.open("mcu0").unwrap();
    a.load("crc32", CRC32.elf).unwrap();
    b.load("crc32", CRC32.elf).unwrap();
    let (ba, bb) = (a.buffer(4096).unwrap(), b.buffer(4096).unwrap());
    let mut rng = TestRng::new(2);
    for i in 0..100u32 {
        for (v, buf) in [(&a, &ba), (&b, &bb)] {
            let len = 1 + (rng.next_u64() % 4096) as usize;
            let bytes = data(&mut rng, len);
            buf.write(0, &bytes).unwrap();
            let r = v.call(&[buf.iova32().unwrap(), len as u32, i]).unwrap();
            assert_eq!(r.words[1], crc32fast::hash(&bytes), "call {i}");
            assert_eq!(r.tag, i);
        }
    }
}

#[test]
fn threads_share_a_session_and_a_handle() {
    let d = Daemon::start("sdk-threads", MCU_RR);
    let s = Session::connect_to(&d.socket).unwrap();
    let v = std::sync::Arc::new(s.open("mcu0").unwrap());
    v.load("crc32", CRC32.elf).unwrap();
    let w = s.open("mcu0").unwrap();
    w.load("crc32", CRC32.elf).unwrap();
    // Two threads on one handle, a third on another vcoproc of the same
    // session: every answer is its own request's.
    std::thread::scope(|scope| {
        for (seed, handle) in [(10, &*v), (11, &*v), (12, &w)] {
            scope.spawn(move || {
                let mut rng = TestRng::new(seed);
                let buf = handle.buffer(4096).unwrap();
                for i in 0..40u32 {
                    let len = 1 + (rng.next_u64() % 4000) as usize;
                    let bytes = data(&mut rng, len);
                    buf.write(0, &bytes).unwrap();
                    let r = handle
                        .call(&[buf.iova32().unwrap(), bytes.len() as u32, i])
                        .unwrap();
                    assert_eq!(r.words[1], crc32fast::hash(&bytes), "seed {seed} call {i}");
                }
            });
        }
    });
}

#[test]
fn a_fault_is_an_error_with_its_record_and_reset_brings_it_back() {
    let d = Daemon::start("sdk-fault", MCU_RR);
    let v = Vcoproc::open_at(&d.socket, "mcu0").unwrap();
    v.load("faulty", FAULTY.elf).unwrap();
    let info = v.coproc().clone();
    for round in 0..2 {
        match v.call(&[]) {
            Err(VcoprocError::Faulted { vcoproc, fault }) => {
                assert_eq!(vcoproc, v.id());
                let f = fault.expect("a fault record");
                // faulty reads the last page of the window, which no one maps.
                assert_eq!(f.addr, Some(info.iova_base + info.iova_size - 0x1000));
                assert_eq!(f.access, "read");
            }
            other => panic!("round {round}: {other:?}"),
        }
        assert_eq!(v.state().unwrap(), "faulted");
        // What it did before the fault is there: the sum of 3 * 0..16.
        let (words, _) = v.session().with_client(|c| c.mbox_read(v.id())).unwrap();
        assert_eq!(words[0], (0..16).map(|i| i * 3).sum::<u32>());
        // A call on a faulted vcoproc fails at once, without waiting.
        let again = v.call(&[]);
        assert!(
            matches!(again, Err(VcoprocError::Faulted { .. })),
            "{again:?}"
        );
        v.reset().unwrap();
        assert_ne!(v.state().unwrap(), "faulted");
    }
    assert_eq!(v.info().unwrap().faults, 2);
}

#[test]
fn queues_and_typed_buffers() {
    let d = Daemon::start("sdk-queue", MCU_RR);
    let v = Vcoproc::open_at(&d.socket, "mcu0").unwrap();
    v.load("qecho", QECHO.elf).unwrap();
    let mut q = v.queue(16).unwrap();
    v.announce_queue(&q).unwrap();
    for tag in 0..50u32 {
        let sqe = Sqe {
            opcode: tag % 5,
            tag,
            args: std::array::from_fn(|i| tag * 100 + i as u32),
        };
        let c = q.round_trip(&sqe, v.timeout()).unwrap();
        assert_eq!((c.tag, c.status), (tag, tag % 5));
        for (i, r) in c.result.iter().enumerate() {
            assert_eq!(*r, tag * 100 + i as u32 + tag % 5);
        }
    }
    // Buffers: typed values round trip, each mapping goes with its buffer.
    let mappings = |v: &Vcoproc| {
        v.session()
            .with_client(|c| c.list_mappings(Some(v.id())))
            .unwrap()
            .len()
    };
    let before = mappings(&v);
    let b = v.buffer(3 * 4096).unwrap();
    assert_eq!(b.len(), 3 * 4096);
    let xs: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5 - 3.0).collect();
    b.write_slice(8, &xs).unwrap();
    assert_eq!(b.read_slice::<f32>(8, 1000).unwrap(), xs);
    b.write_slice(0, &[u64::MAX - 1]).unwrap();
    assert_eq!(b.read_slice::<u32>(0, 2).unwrap(), [u32::MAX - 1, u32::MAX]);
    assert!(b.read_slice::<u64>(3 * 4096 - 4, 1).is_err());
    let c = v.buffer(4096).unwrap();
    assert!(c.iova() >= b.iova() + b.len(), "buffers do not overlap");
    assert_eq!(mappings(&v), before + 2);
    let was = b.iova();
    drop(b);
    assert_eq!(mappings(&v), before + 1);
    // Its iova range is free again: the next buffer that fits takes it.
    let d = v.buffer(2 * 4096).unwrap();
    assert_eq!(d.iova(), was);
    assert_eq!(mappings(&v), before + 2);
}

#[test]
fn the_tokio_flavour_offloads_and_awaits_completions() {
    let d = Daemon::start("sdk-async", MCU_RR);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use coproc_client::asynchronous::Vcoproc;
        let input = data(&mut TestRng::new(3), 5000);
        let v = Vcoproc::open_at(&d.socket, "mcu0").await.unwrap();
        v.load("crc32", CRC32.elf).await.unwrap();
        let buf = v.buffer_from(input.clone()).await.unwrap();
        let r = v
            .call(&[buf.iova32().unwrap(), input.len() as u32, 1])
            .await
            .unwrap();
        assert_eq!(r.words[1], crc32fast::hash(&input));

        let e = Vcoproc::open_at(&d.socket, "mcu0").await.unwrap();
        e.load("qecho", QECHO.elf).await.unwrap();
        let mut q = e.queue(8).await.unwrap();
        e.announce_queue(&q).await.unwrap();
        for tag in 0..20u32 {
            let sqe = Sqe {
                opcode: 2,
                tag,
                args: [tag; 14],
            };
            let c = q.round_trip(&sqe).await.unwrap();
            assert_eq!((c.tag, c.result[13]), (tag, tag + 2));
        }
    });
}

/// One mcu and one `vulkan` pcoproc, usable by every uid.
const WITH_GPU: &str = r#"
[[pcoproc]]
name = "mcu0"
class = "mcu"

[[pcoproc]]
name = "gpu0"
class = "vulkan"
options = { device = "auto", watchdog_ms = 10000 }

[[domain]]
uids = "*"
pcoprocs = ["mcu0", "gpu0"]
max_vcoprocs = 8
max_mapped_bytes = 67108864
"#;

/// Whether a Vulkan device is there (lavapipe counts); fails loudly
/// without one unless `COPROC_SKIP_VULKAN_TESTS=1`.
fn vulkan() -> bool {
    match coproc_vulkan::probe() {
        Ok(_) => true,
        Err(e) if std::env::var("COPROC_SKIP_VULKAN_TESTS").is_ok_and(|v| v == "1") => {
            eprintln!("skipped (COPROC_SKIP_VULKAN_TESTS=1): no Vulkan device ({e})");
            false
        }
        Err(e) => panic!("no Vulkan device ({e}); COPROC_SKIP_VULKAN_TESTS=1 skips the GPU tests"),
    }
}

#[test]
fn a_gpu_job_through_the_handle() {
    if !vulkan() {
        return;
    }
    let d = Daemon::start("sdk-gpu", WITH_GPU);
    let v = Vcoproc::open_at(&d.socket, "gpu0").unwrap();
    assert_eq!(v.coproc().class, "vulkan");
    v.load("saxpy", coproc_firmware::gpu::SAXPY.image).unwrap();
    let mut q = v.gpu_queue(64).unwrap();
    let n = 1000usize;
    let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
    let y: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
    let (bx, by) = (
        v.buffer(4 * n as u64).unwrap(),
        v.buffer(4 * n as u64).unwrap(),
    );
    bx.write_slice(0, &x).unwrap();
    by.write_slice(0, &y).unwrap();
    let job = Job::new()
        .bind(0, bx.iova(), bx.len())
        .bind(1, by.iova(), by.len())
        .push_f32(0, &[2.5])
        .push_u32(4, &[n as u32])
        .dispatch(0, [n.div_ceil(64) as u32, 1, 1])
        .barrier()
        .signal(1);
    let signal = q.submit_job(&job).unwrap();
    q.wait_job(signal, std::time::Duration::from_secs(60))
        .unwrap();
    let want = coproc_firmware::reference::saxpy(2.5, &x, &y);
    assert_eq!(by.read_slice::<f32>(0, n).unwrap(), want);
}
