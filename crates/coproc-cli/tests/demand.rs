//! Demand faults through the real daemon: a client turns them on, gets a
//! `page-fault` event per missing page, maps it, and the vcoproc goes on.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;
use common::Daemon;

use coproc_client::{ErrorCode, Event, SharedMem, WireMapKind, WirePerms};
use std::time::Duration;

/// One mcu pcoproc under `rr`, every uid allowed (see `common`).
const CONFIG: &str = common::MCU_RR;

const T: Duration = Duration::from_secs(60);

#[test]
fn a_client_maps_pages_on_demand() {
    let d = Daemon::start("demand", CONFIG);
    let mut c = d.client();
    let v = c.open("mcu0").unwrap();
    c.load_firmware(v, "pager", coproc_firmware::PAGER.elf)
        .unwrap();
    c.subscribe(v).unwrap();
    c.set_demand_faults(v, Some(T)).unwrap();
    c.start(v).unwrap();
    let base = 0x6020_0000u64;
    let (n, stride) = (4u64, 0x2000u64);
    let words: Vec<u32> = (0..n as u32)
        .map(|i| 0x1111_1111u32.wrapping_mul(i + 3))
        .collect();
    c.mbox_write(v, 0, &[base as u32, n as u32, stride as u32])
        .unwrap();
    c.doorbell(v).unwrap();
    let mut mems = Vec::new();
    let mut faults = Vec::new();
    let seq = loop {
        match c.next_event(T).unwrap() {
            Event::PageFault {
                vcoproc,
                iova,
                access,
            } => {
                assert_eq!((vcoproc, access.as_str()), (v, "read"));
                let i = faults.len();
                assert!(i < n as usize, "more faults than pages: {iova:#x}");
                faults.push(iova);
                let mem = SharedMem::with_contents(&words[i].to_le_bytes()).unwrap();
                c.map(
                    v,
                    &mem,
                    0,
                    iova,
                    mem.len(),
                    WirePerms::R,
                    WireMapKind::Pinned,
                )
                .unwrap();
                mems.push(mem);
            }
            Event::Notify { vcoproc, seq, .. } if vcoproc == v => break seq,
            other => panic!("unexpected event {other:?}"),
        }
    };
    let want: Vec<u64> = (0..n).map(|i| base + i * stride).collect();
    assert_eq!(faults, want);
    let (out, nseq) = c.mbox_read(v).unwrap();
    assert_eq!(nseq, seq);
    assert_eq!(out[0], coproc_firmware::reference::pager_sum(&words));
    assert_eq!(out[1], n as u32);
    let info = c.query(v).unwrap();
    assert_eq!((info.faults, info.mappings), (0, n as u32));

    // Absurd timeouts are refused and change nothing.
    for t in [0u64, 60_001, u64::MAX] {
        let e = c
            .set_demand_faults(v, Some(Duration::from_millis(t)))
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{t} ms");
    }
    // An unknown vcoproc is not found.
    let e = c.set_demand_faults(v + 1000, Some(T)).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));

    // Without a map the stall times out: a fault event at the address.
    c.set_demand_faults(v, Some(Duration::from_millis(10)))
        .unwrap();
    c.mbox_write(v, 0, &[0x6400_0000, 1, 0]).unwrap();
    c.doorbell(v).unwrap();
    let mut stalled = false;
    loop {
        match c.next_event(T).unwrap() {
            Event::PageFault { iova, .. } => {
                assert_eq!(iova, 0x6400_0000);
                stalled = true;
            }
            Event::Fault { fault } => {
                assert_eq!(fault.addr, Some(0x6400_0000));
                assert_eq!(fault.access, "read");
                assert!(fault.reason.contains("page fault"), "{}", fault.reason);
                break;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert!(stalled, "the page-fault event came before the fault");
    assert_eq!(c.query(v).unwrap().state, "faulted");
}
