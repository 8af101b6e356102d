//! Domain memory on the GPU: zero-copy import in both directions, the
//! staged-copy fallback, device-local memory, revoke while jobs use a
//! mapping.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use common::*;
use coproc_core::iova::{MapKind, Perms};
use coproc_core::pcoproc::RevokeOutcome;
use coproc_core::state::VcoprocState;
use coproc_firmware::gpu::{SAXPY, TOUCH};
use coproc_firmware::reference;
use coproc_proto::gpu::{Job, Status};
use coproc_vulkan::{Import, VulkanConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Signals through domain memory *while the dispatch runs*: the shader
/// raises word 1, then spins until the domain writes word 0, and reports
/// how long it spun. Only possible when the GPU works on the domain's own
/// pages.
fn handshake_shader() -> String {
    // llvmpipe ends loops after 65535 iterations in all per invocation:
    // each iteration checks the flag once and burns time on a chain of
    // integer steps, which keeps the shader waiting long enough for the
    // domain to answer.
    // xorshift-multiply steps: unlike a plain LCG chain, the compiler
    // cannot fold them into one affine step.
    let burn = "x = (x ^ (x >> 15u)) * 2654435761u;\n".repeat(256);
    let one = format!(
        "loop {{ if seen || i >= p.bound {{ break; }}\n\
         if atomicLoad(&d[0]) != 0u {{ seen = true; }}\n{burn} i = i + 1u; }}\n"
    );
    format!(
        "struct P {{ bound: u32 }}\n\
         var<immediate> p: P;\n\
         @group(0) @binding(0) var<storage, read_write> d: array<atomic<u32>>;\n\
         @compute @workgroup_size(1)\n\
         fn handshake() {{\n\
         atomicStore(&d[1], 1u);\n\
         var i: u32 = 0u;\n\
         var x: u32 = 1u;\n\
         var seen = false;\n\
         {one}\n\
         atomicStore(&d[2], i);\n\
         atomicStore(&d[3], atomicLoad(&d[0]) + 1u);\n\
         atomicStore(&d[4], x);\n\
         }}\n"
    )
}

fn word(r: &coproc_core::memory::Region, i: u64) -> u32 {
    read_u32(r, 4 * i, 1)[0]
}

#[test]
fn zero_copy_both_directions_during_a_dispatch() {
    let gpus = coproc_vulkan::probe().unwrap();
    assert!(
        gpus.iter().any(|g| g.host_import),
        "the test device imports host memory (lavapipe does)"
    );
    let pc = pcoproc(VulkanConfig {
        watchdog: Duration::from_secs(120),
        ..VulkanConfig::default()
    });
    let mut d = Domain::new(&pc, 1, handshake_shader().as_bytes());
    let mem = d.buffer(BUF_IOVA, 4096, Perms::RW, MapKind::Pinned);
    // A descheduled test thread can miss the shader's window; a few tries
    // (each a fresh dispatch) prove the point if any one succeeds.
    let mut seen_both = false;
    for attempt in 0..10u32 {
        mem.write(0, &[0; 32]).unwrap();
        d.submit(
            &Job::new()
                .bind(0, BUF_IOVA, 32)
                .push_u32(0, &[u32::MAX])
                .dispatch(0, [1, 1, 1])
                .signal(attempt),
        );
        // The shader's write reaches the domain's pages while the job runs.
        let t0 = Instant::now();
        while word(&mem, 1) != 1 {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "shader never started"
            );
            std::hint::spin_loop();
        }
        // (A completion already there means the shader ran out its loop
        // before the domain looked: keep it, and try again.)
        let early = d.ring.complete(&d.qmem);
        let running = early.is_none() && word(&mem, 3) == 0;
        // And the domain's write reaches the shader while it runs.
        mem.write(0, &41u32.to_le_bytes()).unwrap();
        let c = early
            .or_else(|| d.next(Duration::from_secs(60)))
            .expect("job ends");
        assert_eq!(c.status, Status::Ok as u32);
        if running && word(&mem, 3) == 42 {
            assert!(word(&mem, 2) < 65_535, "stopped by the flag");
            seen_both = true;
            break;
        }
    }
    assert!(
        seen_both,
        "no attempt saw both directions during the dispatch"
    );
}

/// With the staged fallback the same jobs give the same results, in both
/// directions (copied in before, out after each command).
#[test]
fn staged_copy_fallback() {
    for import in [Import::Copy, Import::Auto] {
        let pc = pcoproc(VulkanConfig {
            import,
            ..VulkanConfig::default()
        });
        let mut d = Domain::new(&pc, 1, TOUCH.image);
        let n = 5000usize;
        let r = d.buffer(BUF_IOVA, 4 * n as u64, Perms::RW, MapKind::Revocable);
        let mut want: Vec<u32> = (0..n as u32).map(|i| i * 3).collect();
        r.write(0, &u32_bytes(&want)).unwrap();
        for round in 1..4u32 {
            let done = d.run(
                &Job::new()
                    .bind(0, BUF_IOVA, 4 * n as u64)
                    .push_u32(0, &[n as u32, round])
                    .dispatch(0, [(n as u32).div_ceil(64), 1, 1])
                    .signal(round),
            );
            assert_eq!(done[0].status, Some(Status::Ok), "{import:?}");
            want = reference::touch(&want, round);
            assert_eq!(read_u32(&r, 0, n), want, "{import:?} round {round}");
            // The domain changes its memory between jobs; the next job sees it.
            want[7] = 1234;
            r.write(28, &1234u32.to_le_bytes()).unwrap();
        }
    }
}

/// Device-local memory: private to its vcoproc, zeroed, usable by copies,
/// fills and dispatches, counted against the per-context limit.
#[test]
fn local_memory() {
    const LOCAL: u64 = 0x3000_0000;
    let pc = pcoproc(VulkanConfig {
        local_memory: 1 << 20,
        ..VulkanConfig::default()
    });
    let mut d = Domain::new(&pc, 1, TOUCH.image);
    let out = d.buffer(BUF_IOVA, 4096, Perms::RW, MapKind::Pinned);
    out.write(0, &[0xee; 4096]).unwrap();
    d.v.alloc_local(LOCAL, 4096).unwrap();
    // Zeroed at first.
    let done = d.run(&Job::new().copy(LOCAL, BUF_IOVA, 4096).signal(0));
    assert_eq!(done[0].status, Some(Status::Ok));
    assert_eq!(out.read_vec(0, 4096).unwrap(), vec![0; 4096]);
    // Filled, touched on the GPU, copied out.
    let done = d.run(
        &Job::new()
            .fill(LOCAL, 4096, 10)
            .bind(0, LOCAL, 4096)
            .push_u32(0, &[1024, 1])
            .dispatch(0, [16, 1, 1])
            .copy(LOCAL, BUF_IOVA, 4096)
            .signal(0),
    );
    assert_eq!(done[0].status, Some(Status::Ok));
    assert_eq!(read_u32(&out, 0, 1024), vec![21; 1024]);
    // Another vcoproc cannot name it.
    let mut other = Domain::new(&pc, 2, TOUCH.image);
    let done = other.run(&Job::new().bind(0, LOCAL, 4096).signal(0));
    assert_eq!(done[0].status, Some(Status::BadIova));
    // Over the per-context limit.
    assert!(d.v.alloc_local(LOCAL + 0x10_0000, 1 << 20).is_err());
    assert_eq!(d.v.free_local(LOCAL).unwrap(), 4096);
    let done = d.run(&Job::new().fill(LOCAL, 4, 1).signal(0));
    assert_eq!(done[0].status, Some(Status::BadIova), "freed");
}

/// An admin revokes a mapping while the domain's jobs keep using it: once
/// revoke returns the GPU has stopped touching the pages (they never change
/// again), every later job using it is refused or faults the vcoproc, and
/// the other domain is unaffected.
#[test]
fn revoke_while_jobs_use_the_mapping() {
    let pc = pcoproc(VulkanConfig::default());
    let mut other = Domain::new(&pc, 2, SAXPY.image);
    let n = 1 << 16;
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let xr = other.buffer(BUF_IOVA, 4 * n as u64, Perms::R, MapKind::Pinned);
    xr.write(0, &f32_bytes(&x)).unwrap();
    let yr = other.buffer(
        BUF_IOVA + 0x100_0000,
        4 * n as u64,
        Perms::RW,
        MapKind::Pinned,
    );

    let mut d = Domain::new(&pc, 1, TOUCH.image);
    let len = 4u64 << 20;
    let words = (len / 4) as usize;
    let mem = d.buffer(BUF_IOVA, len, Perms::RW, MapKind::Revocable);
    let vid = d.v.id();
    let revoked = Arc::new(AtomicBool::new(false));
    let flag = revoked.clone();
    let done_ok = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let done = done_ok.clone();
    let domain = std::thread::spawn(move || {
        // (job number, status) of each job, in order; stops after 5 jobs
        // past the revoke or when the vcoproc faulted.
        let mut log = Vec::new();
        let mut after = 0;
        for j in 1..10_000u32 {
            if flag.load(Ordering::Acquire) {
                after += 1;
                if after > 5 {
                    break;
                }
            }
            let job = Job::new()
                .bind(0, BUF_IOVA, len)
                .push_u32(0, &[words as u32, j])
                .dispatch(0, [(words as u32).div_ceil(64), 1, 1])
                .signal(j);
            d.submit(&job);
            let c = d.next(Duration::from_secs(5));
            if let Some(c) = c {
                log.push((j, c.status));
                if c.status == Status::Ok as u32 {
                    done.fetch_add(1, Ordering::Release);
                }
                if c.status != Status::Ok as u32 {
                    // The refusal, then the aborted signal.
                    let s = d.next(Duration::from_secs(30)).unwrap();
                    assert_eq!(s.status, Status::Aborted as u32);
                }
            } else {
                assert_eq!(d.v.state().unwrap(), VcoprocState::Faulted);
                log.push((j, u32::MAX));
                break;
            }
        }
        log
    });
    // Revoke once jobs have run on the mapping.
    let deadline = Instant::now() + Duration::from_secs(60);
    while done_ok.load(Ordering::Acquire) < 3 {
        assert!(Instant::now() < deadline, "no job completed");
        std::thread::sleep(Duration::from_millis(1));
    }
    let before = Instant::now();
    assert!(matches!(
        pc.revoke(vid, BUF_IOVA),
        RevokeOutcome::Removed { len: l } if l == len
    ));
    let took = before.elapsed();
    let snapshot = mem.read_vec(0, len).unwrap();
    revoked.store(true, Ordering::Release);
    let log = domain.join().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        mem.read_vec(0, len).unwrap(),
        snapshot,
        "no GPU write after revoke returned ({took:?})"
    );
    let ok: Vec<u32> = log
        .iter()
        .filter(|(_, s)| *s == Status::Ok as u32)
        .map(|(j, _)| *j)
        .collect();
    assert!(!ok.is_empty(), "jobs ran before the revoke");
    assert!(
        log.len() > ok.len(),
        "jobs after the revoke did not run: {log:?}"
    );
    // Every job that completed before the revoke did its whole work. The
    // job in flight when revoke returned (the first one not `Ok`: revoke
    // does not wait for it, and it faults) may have done part of its work
    // before the pages were withdrawn: each word is either untouched by it
    // or its result.
    let mut want = vec![0u32; words];
    for j in &ok {
        want = reference::touch(&want, *j);
    }
    let partial = reference::touch(&want, log[ok.len()].0);
    let got: Vec<u32> = snapshot
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    for (w, g) in got.iter().enumerate() {
        assert!(
            *g == want[w] || *g == partial[w],
            "word {w}: {g} is neither {} nor {}",
            want[w],
            partial[w]
        );
    }
    // Later jobs were refused (bad iova) or the vcoproc faulted at it.
    for (_, s) in &log[ok.len()..] {
        assert!(
            *s == Status::BadIova as u32 || *s == u32::MAX,
            "after revoke: {log:?}"
        );
    }
    assert!(log[..ok.len()].iter().all(|(_, s)| *s == Status::Ok as u32));
    // The other domain never noticed.
    let done = other.run(
        &Job::new()
            .bind_to_end(0, 0, BUF_IOVA)
            .bind_to_end(0, 1, BUF_IOVA + 0x100_0000)
            .push_f32(0, &[0.5])
            .push_u32(4, &[n as u32])
            .dispatch(0, [(n as u32).div_ceil(64), 1, 1])
            .signal(0),
    );
    assert_eq!(done[0].status, Some(Status::Ok));
    let got = read_f32(&yr, 0, n);
    let want = reference::saxpy(0.5, &x, &vec![0.0; n]);
    assert!(got
        .iter()
        .zip(&want)
        .all(|(a, b)| (a - b).abs() <= 1e-4 * b.abs().max(1.0)));
}
