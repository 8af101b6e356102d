//! Revoke on the mcu device under the framework: a mapping in active use by
//! `scribble` is withdrawn; when revoke returns the device cannot touch the
//! pages, the next access faults at the mapping, and other vcoprocs go on
//! with right results. Pinned mappings outlive the domain's own view.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use coproc_core::fault::{Access, FaultReason};
use coproc_core::iova::{MapKind, Perms};
use coproc_core::memory::Region;
use coproc_core::pcoproc::RevokeOutcome;
use coproc_core::policy::{RoundRobin, SchedParams};
use coproc_core::state::VcoprocState;
use coproc_core::{DomainId, Pcoproc, VcoprocHandle};
use coproc_firmware::drive::{self, Buffer, BUFFER_IOVA};
use coproc_firmware::reference::{self, TestRng};
use coproc_firmware::{Firmware, CRC32, ECHO, SCRIBBLE};
use coproc_mcu::{factory, McuConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
const LEN: u64 = 4 * 4096;

fn pcoproc(slice_us: u64) -> Arc<Pcoproc> {
    let rr = RoundRobin::new(Duration::from_micros(slice_us)).unwrap();
    Pcoproc::spawn("mcu0", factory(McuConfig::default()), Box::new(rr)).unwrap()
}

fn vcoproc(p: &Arc<Pcoproc>, domain: u32, fw: Firmware) -> VcoprocHandle {
    let v = p
        .create_vcoproc(DomainId(domain), SchedParams::default())
        .unwrap();
    v.load_firmware(fw.name, fw.elf).unwrap();
    v
}

/// Wait (up to `T`) until scribble has published at least `n` passes.
fn passes_at_least(v: &VcoprocHandle, n: u32) -> u32 {
    let deadline = Instant::now() + T;
    loop {
        let p = v.mbox_read(0);
        if p >= n {
            return p;
        }
        let st = v.state().unwrap();
        assert!(
            matches!(st, VcoprocState::Runnable | VcoprocState::Running),
            "scribble is {st}"
        );
        assert!(Instant::now() < deadline, "scribble made no progress");
        std::thread::yield_now();
    }
}

fn random_region(rng: &mut TestRng) -> Arc<Region> {
    let r = Arc::new(Region::new_memfd(LEN).unwrap());
    r.write(0, &rng.bytes(LEN as usize)).unwrap();
    r
}

fn start_scribble(v: &VcoprocHandle) {
    v.mbox_write(0, BUFFER_IOVA as u32);
    v.mbox_write(1, LEN as u32);
    v.start().unwrap();
}

/// Background domains whose results must stay right throughout.
fn others(p: &Arc<Pcoproc>, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<u32>> {
    let crc = vcoproc(p, 2, CRC32);
    let echo = vcoproc(p, 3, ECHO);
    let s1 = stop.clone();
    let s2 = stop.clone();
    vec![
        std::thread::spawn(move || {
            let buf = Buffer::map(&crc, 8192, MapKind::Pinned).unwrap();
            crc.start().unwrap();
            let mut rng = TestRng::new(7);
            let mut jobs = 0;
            while !s1.load(Ordering::Relaxed) {
                let data = rng.bytes(1000 + jobs as usize % 7000);
                assert_eq!(
                    drive::crc32(&crc, &buf, &data, jobs + 1, T).unwrap(),
                    reference::crc32(&data)
                );
                jobs += 1;
            }
            jobs
        }),
        std::thread::spawn(move || {
            echo.start().unwrap();
            let mut rng = TestRng::new(8);
            let mut seq = 0;
            while !s2.load(Ordering::Relaxed) {
                seq += 1;
                let mut w = [0u32; 16];
                for x in &mut w {
                    *x = rng.next_u64() as u32;
                }
                let out = drive::echo(&echo, &w, T).unwrap();
                let want = reference::echo(&w, seq);
                assert_eq!(out[..15], want[..15]);
                assert_eq!(out[15], seq);
            }
            seq
        }),
    ]
}

/// Wait for the fault that follows a revoke and check it names the range.
fn faulted_in_range(v: &VcoprocHandle, iova: u64, len: u64) -> (u64, Access) {
    v.wait_state(|s| s == VcoprocState::Faulted, T)
        .expect("the next access after revoke faults");
    let f = v.faults().unwrap().pop().unwrap().fault;
    assert_eq!(f.reason, FaultReason::AccessViolation);
    let addr = f.addr.unwrap();
    assert!(
        (iova..iova + len).contains(&addr),
        "fault at {addr:#x}, mapping was {iova:#x}+{len:#x}"
    );
    assert!(matches!(f.access, Access::Read | Access::Write), "{f:?}");
    (addr, f.access)
}

#[test]
fn revoke_under_use_faults_next_access_and_leaves_pages_alone() {
    let p = pcoproc(100);
    let stop = Arc::new(AtomicBool::new(false));
    let bg = others(&p, &stop);
    let v = vcoproc(&p, 1, SCRIBBLE);
    let mut rng = TestRng::new(1);
    let mut reads = 0;
    let mut writes = 0;
    for i in 0..200u32 {
        let r = random_region(&mut rng);
        let kind = if i % 2 == 0 {
            MapKind::Revocable
        } else {
            MapKind::Pinned
        };
        v.map(&r, 0, BUFFER_IOVA, LEN, Perms::RW, kind).unwrap();
        if i > 0 {
            v.reset().unwrap();
        }
        start_scribble(&v);
        // A few passes: it reads every word and writes word 0 each pass.
        let n = passes_at_least(&v, 2);
        assert_eq!(
            v.mbox_read(1),
            reference::scribble_checksum(&r.read_vec(0, LEN).unwrap()),
            "iteration {i}"
        );
        assert_eq!(
            v.revoke(BUFFER_IOVA),
            RevokeOutcome::Removed { len: LEN },
            "iteration {i}"
        );
        let snapshot = r.read_vec(0, LEN).unwrap();
        // Word 0 holds a pass count the firmware wrote before the revoke.
        let w0 = u32::from_le_bytes(snapshot[..4].try_into().unwrap());
        assert!(w0 >= n.saturating_sub(1), "iteration {i}: {w0} < {n} - 1");
        match faulted_in_range(&v, BUFFER_IOVA, LEN).1 {
            Access::Read => reads += 1,
            _ => writes += 1,
        }
        assert_eq!(v.info().unwrap().mappings, 0);
        assert_eq!(r.read_vec(0, LEN).unwrap(), snapshot, "iteration {i}");
        assert_eq!(v.revoke(BUFFER_IOVA), RevokeOutcome::NotMapped);
        // Every tenth time: restarted with nothing mapped, its very first
        // access (word 0) faults at exactly the iova.
        if i % 10 == 0 {
            v.reset().unwrap();
            start_scribble(&v);
            let (addr, access) = faulted_in_range(&v, BUFFER_IOVA, LEN);
            assert_eq!((addr, access), (BUFFER_IOVA, Access::Read));
        }
        // Nothing holds the memory but us, once the device has released
        // it: the revoke's tidy hands the mapping to the mcu's reclaimer
        // thread, which drops it after taking it out of the window.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&r) != 1 {
            assert!(Instant::now() < deadline, "iteration {i}: still held");
            std::thread::yield_now();
        }
        // Later, with more time run, still untouched.
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(r.read_vec(0, LEN).unwrap(), snapshot);
        }
    }
    eprintln!("faults after revoke: {reads} reads, {writes} writes");
    stop.store(true, Ordering::Relaxed);
    for t in bg {
        assert!(
            t.join().unwrap() > 0,
            "a background domain made no progress"
        );
    }
}

#[test]
fn pinned_mapping_outlives_the_domains_view_until_unmapped() {
    let p = pcoproc(200);
    let v = vcoproc(&p, 1, SCRIBBLE);
    let mut rng = TestRng::new(2);
    let data = rng.bytes(LEN as usize);
    let r = Arc::new(Region::new_memfd(LEN).unwrap());
    r.write(0, &data).unwrap();
    // Another descriptor on the same memory, to look at it afterwards.
    let file = std::fs::File::from(r.fd().unwrap().try_clone_to_owned().unwrap());
    v.map(&r, 0, BUFFER_IOVA, LEN, Perms::RW, MapKind::Pinned)
        .unwrap();
    let weak = Arc::downgrade(&r);
    drop(r); // the domain's own mapping of the memory is gone
    start_scribble(&v);
    let n = passes_at_least(&v, 3);
    assert_eq!(v.mbox_read(1), reference::scribble_checksum(&data));
    let mut w0 = [0u8; 4];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut w0, 0).unwrap();
    assert!(
        u32::from_le_bytes(w0) >= n - 1,
        "the device's writes reach the memory"
    );
    // An admin cannot take it away.
    assert_eq!(
        p.revoke(v.id(), BUFFER_IOVA),
        RevokeOutcome::Pinned { len: LEN }
    );
    let m = v.mappings().unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!((m[0].iova, m[0].kind), (BUFFER_IOVA, MapKind::Pinned));
    passes_at_least(&v, n + 2);
    assert!(weak.upgrade().is_some());
    // Its domain ends it: the memory is released, the next access faults.
    v.unmap(BUFFER_IOVA).unwrap();
    assert!(
        weak.upgrade().is_none(),
        "nothing holds the memory after unmap"
    );
    faulted_in_range(&v, BUFFER_IOVA, LEN);
}

#[test]
fn admin_revoke_takes_only_revocable_and_never_fails() {
    let p = pcoproc(200);
    let v = vcoproc(&p, 1, SCRIBBLE);
    let r = Arc::new(Region::new(2 * LEN).unwrap());
    v.map(&r, 0, BUFFER_IOVA, LEN, Perms::RW, MapKind::Pinned)
        .unwrap();
    v.map(
        &r,
        LEN,
        BUFFER_IOVA + LEN,
        LEN,
        Perms::R,
        MapKind::Revocable,
    )
    .unwrap();
    // Scribble on the pinned one; the revocable one is idle.
    start_scribble(&v);
    passes_at_least(&v, 1);
    assert_eq!(
        p.revoke(v.id(), BUFFER_IOVA),
        RevokeOutcome::Pinned { len: LEN }
    );
    assert_eq!(
        p.revoke(v.id(), BUFFER_IOVA + LEN),
        RevokeOutcome::Removed { len: LEN }
    );
    assert_eq!(
        p.revoke(v.id(), BUFFER_IOVA + LEN),
        RevokeOutcome::NotMapped
    );
    // Absurd or partial iovas: nothing to do, nothing changed.
    for iova in [0, 1, u64::MAX, BUFFER_IOVA + 4096, BUFFER_IOVA + 1] {
        assert_eq!(v.revoke(iova), RevokeOutcome::NotMapped, "{iova:#x}");
        assert_eq!(p.revoke(v.id(), iova), RevokeOutcome::NotMapped);
    }
    assert_eq!(v.info().unwrap().mappings, 1);
    let n = v.mbox_read(0);
    passes_at_least(&v, n + 2);
    // The owner may revoke a pinned mapping.
    assert_eq!(v.revoke(BUFFER_IOVA), RevokeOutcome::Removed { len: LEN });
    faulted_in_range(&v, BUFFER_IOVA, LEN);
    // A vcoproc that is gone: an outcome, not an error.
    v.map(&r, 0, BUFFER_IOVA, LEN, Perms::RW, MapKind::Revocable)
        .unwrap();
    let id = v.id();
    v.destroy().unwrap();
    assert_eq!(p.revoke(id, BUFFER_IOVA), RevokeOutcome::Gone);
    assert_eq!(v.revoke(BUFFER_IOVA), RevokeOutcome::Gone);
    assert_eq!(Arc::strong_count(&r), 1);
    // A pcoproc shut down: the device and its mappings are gone by the time
    // revoke returns.
    let w = vcoproc(&p, 1, SCRIBBLE);
    w.map(&r, 0, BUFFER_IOVA, LEN, Perms::RW, MapKind::Revocable)
        .unwrap();
    start_scribble(&w);
    p.shutdown();
    assert_eq!(w.revoke(BUFFER_IOVA), RevokeOutcome::Gone);
    assert_eq!(Arc::strong_count(&r), 1);
}
