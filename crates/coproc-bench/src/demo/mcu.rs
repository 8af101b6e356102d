//! The mcu workloads: each drives its firmware through a domain-side
//! driver and checks the answers against the host reference.

use super::{Check, T};
use coproc_core::fault::Access;
use coproc_core::iova::MapKind;
use coproc_core::state::VcoprocState;
use coproc_core::VcoprocHandle;
use coproc_firmware::drive::{self, Buffer};
use coproc_firmware::reference::{self, TestRng};
use coproc_mcu::abi;
use std::time::Duration;

/// Where `faulty` reads (see firmware/examples/faulty.c).
const FAULTY_ADDR: u64 = abi::IOVA_BASE as u64 + abi::IOVA_SIZE as u64 - 0x1000;

pub(super) fn fir(v: &VcoprocHandle, scale: u32) -> Check {
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

pub(super) fn crc32(v: &VcoprocHandle, scale: u32) -> Check {
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

pub(super) fn echo(v: &VcoprocHandle, scale: u32) -> Check {
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

pub(super) fn faulty(v: &VcoprocHandle) -> Check {
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

pub(super) fn hog(v: &VcoprocHandle, slice: Duration) -> Check {
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
