//! Memory benchmarks: `coproc bench revoke` (revoke latency while the
//! mapping is in use, each revoke verified) and `coproc bench map` (map +
//! unmap cost by size), on the real mcu device in-process.

use crate::figures::{median, percentile, round3};
use anyhow::Context;
use coproc_core::fault::FaultReason;
use coproc_core::iova::{MapKind, Perms};
use coproc_core::memory::Region;
use coproc_core::pcoproc::RevokeOutcome;
use coproc_core::policy::{RoundRobin, SchedParams};
use coproc_core::state::VcoprocState;
use coproc_core::{DomainId, Pcoproc, VcoprocHandle};
use coproc_firmware::reference::TestRng;
use coproc_firmware::SCRIBBLE;
use coproc_mcu::{abi, factory, McuConfig};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) const REVOKE_NOTES: &str = "revoke: one vcoproc runs scribble (reads a 16 KiB \
mapping in a loop, writes a counter into it every pass) under rr with 5 ms slices; each \
iteration maps the buffer (revocable), resets and starts the vcoproc, waits until it has \
completed a pass, and times VcoprocHandle::revoke (preempt the slice, remove the mapping from \
the iova space and the device). Then it is verified: the outcome is Removed, the vcoproc \
faults with an access violation inside the mapping, and the memory is byte-identical to a \
snapshot taken right after revoke returned. failures counts revokes where any check failed. \
A busy host (loadavg_1m, --host-load) delays the runner thread and shows in the tail.";

pub(crate) const MAP_NOTES: &str = "map_unmap_us_SIZE: one VcoprocHandle::map plus one unmap of \
SIZE bytes of anonymous memory on a loaded vcoproc (two runner commands), median over rounds \
of the mean of many pairs. Nothing is copied and the domain's pages are not touched, but the \
engine's own map/unmap work grows with the number of pages, so large mappings cost (and take \
to revoke) time in proportion.";

/// Pages the scribble buffer spans.
const LEN: u64 = 4 * 4096;
/// How long one step may take before the iteration counts as failed.
const STEP: Duration = Duration::from_secs(10);

fn pcoproc(slice_us: u64) -> anyhow::Result<Arc<Pcoproc>> {
    let rr = RoundRobin::new(Duration::from_micros(slice_us))?;
    Ok(Pcoproc::spawn(
        "bench",
        factory(McuConfig::default()),
        Box::new(rr),
    )?)
}

fn scribble(p: &Arc<Pcoproc>) -> anyhow::Result<VcoprocHandle> {
    let v = p.create_vcoproc(DomainId(1), SchedParams::default())?;
    v.load_firmware(SCRIBBLE.name, SCRIBBLE.elf)?;
    Ok(v)
}

/// One iteration: map, run until a pass completed, revoke (timed), verify.
/// Returns the revoke's duration in µs and whether every check held.
fn revoke_once(v: &VcoprocHandle, r: &Arc<Region>, first: bool) -> anyhow::Result<(f64, bool)> {
    let iova = u64::from(abi::IOVA_BASE);
    v.map(r, 0, iova, LEN, Perms::RW, MapKind::Revocable)?;
    if !first {
        v.reset()?;
    }
    v.mbox_write(0, iova as u32);
    v.mbox_write(1, LEN as u32);
    v.start()?;
    let deadline = Instant::now() + STEP;
    while v.mbox_read(0) < 1 {
        if Instant::now() > deadline {
            let _ = v.revoke(iova);
            return Ok((0.0, false));
        }
        // Sleep rather than spin: the runner needs the CPU more.
        std::thread::sleep(Duration::from_micros(50));
    }
    let t = Instant::now();
    let out = v.revoke(iova);
    let us = t.elapsed().as_secs_f64() * 1e6;
    let snapshot = r.read_vec(0, LEN)?;
    let mut ok = out == RevokeOutcome::Removed { len: LEN };
    ok &= v.wait_state(|s| s == VcoprocState::Faulted, STEP).is_ok();
    let fault = v.faults()?.pop().map(|f| f.fault);
    ok &= fault.is_some_and(|f| {
        f.reason == FaultReason::AccessViolation
            && f.addr.is_some_and(|a| (iova..iova + LEN).contains(&a))
    });
    ok &= r.read_vec(0, LEN)? == snapshot;
    Ok((us, ok))
}

/// `coproc bench revoke`.
pub(crate) fn revoke(revokes: usize) -> anyhow::Result<BTreeMap<String, f64>> {
    let p = pcoproc(5000)?;
    let v = scribble(&p)?;
    let r = Arc::new(Region::new_memfd(LEN)?);
    r.write(0, &TestRng::new(1).bytes(LEN as usize))?;
    let mut lat = Vec::with_capacity(revokes);
    let mut failures = 0u64;
    for i in 0..revokes.max(1) {
        let (us, ok) = revoke_once(&v, &r, i == 0).with_context(|| format!("revoke {i}"))?;
        if ok {
            lat.push(us);
        } else {
            failures += 1;
            if us > 0.0 {
                lat.push(us);
            }
        }
    }
    p.shutdown();
    anyhow::ensure!(!lat.is_empty(), "no revoke completed");
    crate::samples::record("revoke_us", crate::samples::Kind::LatencyUs, &lat);
    lat.sort_by(f64::total_cmp);
    let mut f = BTreeMap::new();
    f.insert("p50_us".into(), round3(percentile(&lat, 0.5)));
    f.insert("p99_us".into(), round3(percentile(&lat, 0.99)));
    f.insert("max_us".into(), round3(*lat.last().unwrap_or(&0.0)));
    f.insert("revokes".into(), lat.len() as f64);
    f.insert("failures".into(), failures as f64);
    // `bench` adds loadavg_1m: the latency tail is the runner thread
    // waiting for a CPU when the host is busy.
    Ok(f)
}

/// `coproc bench map`.
pub(crate) fn map(rounds: usize) -> anyhow::Result<BTreeMap<String, f64>> {
    let p = pcoproc(5000)?;
    let v = scribble(&p)?;
    let iova = u64::from(abi::IOVA_BASE);
    let mut f = BTreeMap::new();
    for (name, size, pairs) in [
        ("4k", 4u64 << 10, 500),
        ("64k", 64 << 10, 500),
        ("1m", 1 << 20, 200),
        ("16m", 16 << 20, 50),
        ("64m", 64 << 20, 20),
    ] {
        let r = Arc::new(Region::new(size)?);
        // Warm-up.
        v.map(&r, 0, iova, size, Perms::RW, MapKind::Pinned)?;
        v.unmap(iova)?;
        let mut per = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            for _ in 0..pairs {
                v.map(&r, 0, iova, size, Perms::RW, MapKind::Pinned)?;
                v.unmap(iova)?;
            }
            per.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(pairs));
        }
        f.insert(format!("map_unmap_us_{name}"), round3(median(per)));
    }
    p.shutdown();
    Ok(f)
}
