//! Demand faults on the mcu: a missing page stalls only its vcoproc, the
//! domain maps it, the faulting instruction runs again; a timeout turns the
//! stall into a fault; hard faults stay hard faults.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use coproc_core::control::ControlEvent;
use coproc_core::fault::{Access, FaultReason};
use coproc_core::iova::{MapKind, Perms};
use coproc_core::memory::Region;
use coproc_core::policy::{RoundRobin, SchedParams};
use coproc_core::state::VcoprocState;
use coproc_core::{CoreError, DomainId, Pcoproc, VcoprocHandle};
use coproc_firmware::reference::{self, TestRng};
use coproc_firmware::{Firmware, HOG, PAGER, PROBE};
use coproc_mcu::abi::IOVA_BASE;
use coproc_mcu::{factory, McuConfig};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
const PAGE: u64 = 4096;

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

/// Page-fault addresses the control block listener hears.
fn listen(v: &VcoprocHandle) -> Arc<Mutex<Vec<(u64, Access)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    v.control().set_listener(Some(Arc::new(move |e| {
        if let ControlEvent::PageFault { addr, access } = e {
            s2.lock().unwrap().push((addr, access));
        }
    })));
    seen
}

/// A one-page region whose first word is `w`.
fn page_with(w: u32) -> Arc<Region> {
    let r = Region::new(PAGE).unwrap();
    r.write(0, &w.to_le_bytes()).unwrap();
    Arc::new(r)
}

/// Wait until `v` has run more than `ns` in total.
fn wait_run_past(v: &VcoprocHandle, ns: u64) {
    let deadline = Instant::now() + T;
    while v.info().unwrap().stats.run_ns <= ns {
        assert!(Instant::now() < deadline, "{} made no progress", v.id());
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn pages_are_mapped_on_demand_while_others_run() {
    let p = pcoproc(200);
    let pager = vcoproc(&p, 1, PAGER);
    let hog = vcoproc(&p, 2, HOG);
    pager.set_demand_faults(Some(T)).unwrap();
    let heard = listen(&pager);
    hog.start().unwrap();
    pager.start().unwrap();

    let base = u64::from(IOVA_BASE) + 0x10_0000;
    let (n, stride) = (6u64, 3 * PAGE);
    let mut rng = TestRng::new(5);
    let words: Vec<u32> = (0..n).map(|_| rng.next_u64() as u32).collect();
    pager.mbox_write(0, base as u32);
    pager.mbox_write(1, n as u32);
    pager.mbox_write(2, stride as u32);
    pager.doorbell();

    let mut regions = Vec::new();
    for (i, &w) in words.iter().enumerate() {
        let addr = base + i as u64 * stride;
        pager.wait_state(|s| s == VcoprocState::Stalled, T).unwrap();
        let pf = pager
            .page_fault()
            .unwrap()
            .expect("stalled on a page fault");
        assert_eq!((pf.addr, pf.access), (addr, Access::Read), "page {i}");
        // The other vcoproc keeps the device while this one is stalled.
        let ran = hog.info().unwrap().stats.run_ns;
        wait_run_past(&hog, ran);
        assert_eq!(pager.state().unwrap(), VcoprocState::Stalled);
        let r = page_with(w);
        pager
            .map(&r, 0, addr, PAGE, Perms::R, MapKind::Pinned)
            .unwrap();
        // Resolved: it may already be stalled again, but on a later page.
        let now = pager.page_fault().unwrap().map(|pf| pf.addr);
        assert_ne!(now, Some(addr), "page {i} still missing");
        regions.push(r);
    }
    let n1 = pager.wait_notify(0, T).unwrap();
    assert_eq!(n1.tag, 1);
    assert_eq!(pager.mbox_read(0), reference::pager_sum(&words));
    assert_eq!(pager.mbox_read(1), n as u32);
    let want: Vec<(u64, Access)> = (0..n).map(|i| (base + i * stride, Access::Read)).collect();
    assert_eq!(*heard.lock().unwrap(), want, "one event per missing page");
    assert_eq!(pager.info().unwrap().stats.faults, 0);
    assert!(pager.faults().unwrap().is_empty());

    // Everything is mapped now: the same job runs without a stall.
    pager.doorbell();
    let n2 = pager.wait_notify(n1.seq, T).unwrap();
    assert_eq!(n2.tag, 2);
    assert_eq!(pager.mbox_read(0), reference::pager_sum(&words));
    assert_eq!(heard.lock().unwrap().len(), n as usize);
    assert_eq!(hog.info().unwrap().stats.faults, 0);
}

#[test]
fn an_unresolved_stall_times_out_into_a_fault() {
    let p = pcoproc(200);
    let pager = vcoproc(&p, 1, PAGER);
    pager
        .set_demand_faults(Some(Duration::from_millis(20)))
        .unwrap();
    let heard = listen(&pager);
    let addr = u64::from(IOVA_BASE) + 0x42_0000;
    pager.start().unwrap();
    pager.mbox_write(0, addr as u32);
    pager.mbox_write(1, 1);
    pager.doorbell();
    // Nothing else runs: the idle runner still times the stall out.
    pager.wait_state(|s| s == VcoprocState::Faulted, T).unwrap();
    let f = pager.faults().unwrap().pop().unwrap();
    assert_eq!(f.fault.reason, FaultReason::PageFaultTimeout);
    assert_eq!((f.fault.addr, f.fault.access), (Some(addr), Access::Read));
    assert_eq!(*heard.lock().unwrap(), [(addr, Access::Read)]);
    assert!(pager.page_fault().unwrap().is_none());

    // Reset keeps the opt-in; the same job succeeds once the page is mapped.
    pager.reset().unwrap();
    let r = page_with(77);
    pager
        .map(&r, 0, addr, PAGE, Perms::R, MapKind::Pinned)
        .unwrap();
    pager.start().unwrap();
    // Read before the doorbell: the job may notify before we look again.
    let seq = pager.last_notify().seq;
    pager.mbox_write(0, addr as u32);
    pager.mbox_write(1, 1);
    pager.doorbell();
    pager.wait_notify(seq, T).unwrap();
    assert_eq!(pager.mbox_read(0), 77);
}

#[test]
fn stop_and_start_of_a_stalled_vcoproc_retries_the_access() {
    let p = pcoproc(200);
    let pager = vcoproc(&p, 1, PAGER);
    pager.set_demand_faults(Some(T)).unwrap();
    let addr = u64::from(IOVA_BASE) + 0x7000;
    pager.start().unwrap();
    pager.mbox_write(0, addr as u32);
    pager.mbox_write(1, 1);
    pager.doorbell();
    pager.wait_state(|s| s == VcoprocState::Stalled, T).unwrap();
    pager.stop().unwrap();
    assert_eq!(pager.state().unwrap(), VcoprocState::Loaded);
    assert!(pager.page_fault().unwrap().is_none());
    pager.start().unwrap();
    pager.wait_state(|s| s == VcoprocState::Stalled, T).unwrap();
    assert_eq!(pager.page_fault().unwrap().unwrap().addr, addr);
    let r = page_with(9);
    pager
        .map(&r, 0, addr, PAGE, Perms::R, MapKind::Pinned)
        .unwrap();
    pager.wait_notify(0, T).unwrap();
    assert_eq!(pager.mbox_read(0), 9);
}

#[test]
fn without_opt_in_or_against_permissions_it_is_a_hard_fault() {
    let p = pcoproc(200);
    // No opt-in: the same access is an access violation at once.
    let pager = vcoproc(&p, 1, PAGER);
    let addr = u64::from(IOVA_BASE) + 0x10_0000 + 0x124;
    pager.start().unwrap();
    pager.mbox_write(0, addr as u32);
    pager.mbox_write(1, 1);
    pager.doorbell();
    pager.wait_state(|s| s == VcoprocState::Faulted, T).unwrap();
    let f = pager.faults().unwrap().pop().unwrap();
    assert_eq!(f.fault.reason, FaultReason::AccessViolation);
    assert_eq!((f.fault.addr, f.fault.access), (Some(addr), Access::Read));

    // With opt-in, a write to a read-only mapping and an access outside the
    // iova window stay hard faults.
    for (op, target, access) in [
        (2u32, u64::from(IOVA_BASE) + 0x2008, Access::Write),
        (1, 0x9000_0010, Access::Read),
    ] {
        let probe = vcoproc(&p, 2, PROBE);
        probe.set_demand_faults(Some(T)).unwrap();
        let r = page_with(1);
        let ro = u64::from(IOVA_BASE) + 0x2000;
        probe
            .map(&r, 0, ro, PAGE, Perms::R, MapKind::Pinned)
            .unwrap();
        probe.start().unwrap();
        probe.mbox_write(0, op);
        probe.mbox_write(1, target as u32);
        probe.mbox_write(2, 0xdead_beef);
        probe.doorbell();
        probe.wait_state(|s| s == VcoprocState::Faulted, T).unwrap();
        let f = probe.faults().unwrap().pop().unwrap();
        assert_eq!(f.fault.reason, FaultReason::AccessViolation);
        assert_eq!((f.fault.addr, f.fault.access), (Some(target), access));
        let mut first = [0u8; 4];
        r.read(0, &mut first).unwrap();
        assert_eq!(
            u32::from_le_bytes(first),
            1,
            "the read-only page is unchanged"
        );
        probe.destroy().unwrap();
    }
}

#[test]
fn stall_timeouts_are_bounded() {
    let p = pcoproc(200);
    let v = vcoproc(&p, 1, PAGER);
    for t in [
        Duration::ZERO,
        Duration::from_micros(999),
        Duration::from_secs(61),
    ] {
        assert!(
            matches!(
                v.set_demand_faults(Some(t)),
                Err(CoreError::BadStallTimeout(_))
            ),
            "{t:?} accepted"
        );
    }
    v.set_demand_faults(Some(Duration::from_millis(1))).unwrap();
    v.set_demand_faults(Some(Duration::from_secs(60))).unwrap();
    v.set_demand_faults(None).unwrap();
    assert!(p.capabilities().demand_faults);
    // Off again: the access is a plain violation.
    v.start().unwrap();
    v.mbox_write(0, IOVA_BASE + 0x5000);
    v.mbox_write(1, 1);
    v.doorbell();
    v.wait_state(|s| s == VcoprocState::Faulted, T).unwrap();
    let f = v.faults().unwrap().pop().unwrap();
    assert_eq!(f.fault.reason, FaultReason::AccessViolation);
    v.destroy().unwrap();
    assert!(matches!(
        v.set_demand_faults(Some(T)),
        Err(CoreError::NoVcoproc(_))
    ));
}
