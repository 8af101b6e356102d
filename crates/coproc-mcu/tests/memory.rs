//! Shared virtual addressing and device-local memory on the mcu device,
//! in-process: a linked list built by the domain with real pointers walked
//! by firmware, and private device memory that only its vcoproc reaches.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use coproc_core::fault::{Access, FaultReason};
use coproc_core::iova::{IovaError, MapKind, Perms};
use coproc_core::memory::{MemoryError, Region};
use coproc_core::policy::{RoundRobin, SchedParams};
use coproc_core::state::VcoprocState;
use coproc_core::{CoreError, DeviceError, DomainId, Pcoproc, VcoprocHandle};
use coproc_firmware::reference::{self, ListWalk, TestRng};
use coproc_firmware::{Firmware, LISTWALK, LOCALBUF, PROBE};
use coproc_mcu::{abi, factory, McuConfig, LOCAL_ALLOC_MAX};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
const NODES: u32 = 1000;

fn pcoproc() -> Arc<Pcoproc> {
    let rr = RoundRobin::new(Duration::from_micros(200)).unwrap();
    Pcoproc::spawn("mcu0", factory(McuConfig::default()), Box::new(rr)).unwrap()
}

fn vcoproc(p: &Arc<Pcoproc>, domain: u32, fw: Firmware) -> VcoprocHandle {
    let v = p
        .create_vcoproc(DomainId(domain), SchedParams::default())
        .unwrap();
    v.load_firmware(fw.name, fw.elf).unwrap();
    v.start().unwrap();
    v
}

/// One job: mailbox-in words, doorbell, the notification, mailbox-out.
fn job(v: &VcoprocHandle, words: &[u32]) -> Result<[u32; 3], CoreError> {
    for (i, w) in words.iter().enumerate() {
        v.mbox_write(i, *w);
    }
    let after = v.last_notify().seq;
    v.doorbell();
    v.wait_notify(after, T)?;
    Ok([v.mbox_read(0), v.mbox_read(1), v.mbox_read(2)])
}

/// Memory at the same address here and (once mapped) in the vcoproc: the
/// first free range of the mcu window, found by trying.
fn sva_region(len: u64) -> Arc<Region> {
    let (base, size) = (u64::from(abi::IOVA_BASE), u64::from(abi::IOVA_SIZE));
    (0..size / (1 << 20))
        .map(|i| base + i * (1 << 20))
        .find_map(|a| match Region::new_memfd_at(a, len) {
            Ok(r) => Some(Arc::new(r)),
            Err(MemoryError::AddressTaken(_)) => None,
            Err(e) => panic!("{e}"),
        })
        .expect("a free range in the mcu iova window")
}

/// `NODES` nodes {next, value} in shuffled slots; the head pointer. Node k
/// of the list sits in slot `order[k]`.
fn build_list(r: &Region, rng: &mut TestRng) -> (u32, Vec<u32>) {
    let base = u32::try_from(r.addr()).expect("host address fits 32 bits");
    let mut order: Vec<u32> = (0..NODES).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let ptr = |slot: u32| base + 8 * slot;
    for k in 0..NODES as usize {
        let next = order.get(k + 1).map_or(0, |&s| ptr(s));
        let value = rng.next_u64() as u32;
        let mut node = [0u8; 8];
        node[..4].copy_from_slice(&next.to_le_bytes());
        node[4..].copy_from_slice(&value.to_le_bytes());
        r.write(u64::from(8 * order[k]), &node).unwrap();
    }
    (ptr(order[0]), order)
}

/// The host's walk through the same pointers, over a copy of the memory.
fn host_walk(r: &Region, head: u32, max: u32) -> Result<ListWalk, u32> {
    let bytes = r.read_vec(0, r.len()).unwrap();
    reference::list_walk_in(&bytes, r.addr(), head, max)
}

#[test]
fn firmware_walks_a_list_built_with_host_pointers() {
    let p = pcoproc();
    let v = vcoproc(&p, 1, LISTWALK);
    let len = 4 * 4096;
    let r = sva_region(len);
    assert!(r.addr() + len <= 1 << 32, "the address fits 32 bits");
    v.map(&r, 0, r.addr(), len, Perms::RW, MapKind::Pinned)
        .unwrap();
    let mut rng = TestRng::new(42);
    let (head, order) = build_list(&r, &mut rng);

    // The whole list: sum and count equal the host's walk.
    let want = host_walk(&r, head, u32::MAX).unwrap();
    assert_eq!((want.count, want.end), (NODES, 0));
    assert_eq!(job(&v, &[head, u32::MAX]).unwrap(), [want.sum, NODES, 0]);
    // Bounded: stops after N nodes, at the next pointer.
    let want = host_walk(&r, head, 377).unwrap();
    assert_eq!(job(&v, &[head, 377]).unwrap(), [want.sum, 377, want.end]);

    // A cycle: the last node points back at the head; bounded by N.
    let last = u64::from(8 * order[NODES as usize - 1]);
    r.write(last, &head.to_le_bytes()).unwrap();
    let want = host_walk(&r, head, 2500).unwrap();
    assert_eq!(
        (want.count, want.end),
        (2500, (r.addr() as u32) + 8 * order[500])
    );
    assert_eq!(job(&v, &[head, 2500]).unwrap(), [want.sum, 2500, want.end]);

    // A pointer outside the mapping: the device faults at that address.
    let bad = (r.addr() + len + 0x10) as u32;
    r.write(u64::from(8 * order[600]), &bad.to_le_bytes())
        .unwrap();
    assert_eq!(host_walk(&r, head, u32::MAX), Err(bad));
    assert!(job(&v, &[head, u32::MAX]).is_err());
    assert_eq!(v.state().unwrap(), VcoprocState::Faulted);
    let f = v.faults().unwrap().pop().unwrap();
    assert_eq!(f.fault.addr, Some(u64::from(bad)));
    assert_eq!(f.fault.access, Access::Read);
    assert_eq!(f.fault.reason, FaultReason::AccessViolation);
}

#[test]
fn local_memory_is_private_zeroed_checked_and_freed() {
    let p = pcoproc();
    let v = vcoproc(&p, 1, LOCALBUF);
    let other = vcoproc(&p, 2, PROBE);
    let iova = 0x6010_0000u64;
    let len = 64 * 1024u64;
    let words = (len / 4) as u32;
    v.alloc_local(iova, len).unwrap();
    assert_eq!(v.info().unwrap().local_bytes, len);
    assert_eq!(v.info().unwrap().mapped_bytes, 0);

    // Fresh memory reads as zeros; a fill reads back the pattern.
    assert_eq!(job(&v, &[2, iova as u32, words, 0]).unwrap()[..2], [2, 0]);
    let want = reference::localbuf_sum(77, words);
    assert_eq!(
        job(&v, &[1, iova as u32, words, 77]).unwrap()[..2],
        [1, want]
    );
    // It persists between jobs (sum only).
    assert_eq!(
        job(&v, &[2, iova as u32, words, 0]).unwrap()[..2],
        [2, want]
    );

    // Another vcoproc reading that iova faults there.
    let target = iova as u32 + 0x40;
    assert!(job(&other, &[1, target, 0]).is_err());
    let f = other.faults().unwrap().pop().unwrap();
    assert_eq!(f.fault.addr, Some(u64::from(target)));
    assert_eq!(f.fault.reason, FaultReason::AccessViolation);

    // Hostile ranges.
    let r = Arc::new(Region::new(4096).unwrap());
    v.map(&r, 0, 0x6000_0000, 4096, Perms::RW, MapKind::Pinned)
        .unwrap();
    let refused = |iova, len| match v.alloc_local(iova, len) {
        Err(CoreError::Iova(e)) => e,
        other => panic!("{iova:#x}+{len:#x}: {other:?}"),
    };
    assert!(matches!(
        refused(0x6000_0000, 4096),
        IovaError::Overlap { .. }
    ));
    assert!(matches!(
        refused(iova + len - 4096, 8192),
        IovaError::Overlap { .. }
    ));
    assert!(matches!(
        refused(0x6020_0800, 4096),
        IovaError::Unaligned { .. }
    ));
    assert!(matches!(
        refused(0x6020_0000, 100),
        IovaError::Unaligned { .. }
    ));
    assert!(matches!(
        refused(0x6020_0000, 0),
        IovaError::Unaligned { .. }
    ));
    assert!(matches!(
        refused(0x2000_0000, 4096),
        IovaError::OutsideWindow { .. }
    ));
    assert!(matches!(
        refused(0x7fff_f000, 8192),
        IovaError::OutsideWindow { .. }
    ));
    assert!(matches!(
        refused(u64::MAX - 0xfff, 4096),
        IovaError::OutsideWindow { .. }
    ));
    // A mapping cannot land on local memory; unmap does not free it.
    assert!(matches!(
        v.map(&r, 0, iova, 4096, Perms::RW, MapKind::Pinned),
        Err(CoreError::Iova(IovaError::Overlap { .. }))
    ));
    assert!(matches!(
        v.unmap(iova),
        Err(CoreError::Iova(IovaError::NotMapped(_)))
    ));
    // The per-context limit.
    assert!(matches!(
        v.alloc_local(0x6100_0000, LOCAL_ALLOC_MAX),
        Err(CoreError::Device(DeviceError::Exhausted(_)))
    ));
    assert_eq!(v.info().unwrap().local_bytes, len);

    // Freed: the same access now faults; a new allocation there is zeroed.
    assert_eq!(v.free_local(iova).unwrap(), len);
    assert!(matches!(
        v.free_local(iova),
        Err(CoreError::Iova(IovaError::NotLocal(_)))
    ));
    assert_eq!(v.info().unwrap().local_bytes, 0);
    v.alloc_local(iova, len).unwrap();
    assert_eq!(job(&v, &[2, iova as u32, words, 0]).unwrap()[..2], [2, 0]);
    assert!(job(&v, &[2, (iova + len) as u32, 1, 0]).is_err());
    let f = v.faults().unwrap().pop().unwrap();
    assert_eq!(f.fault.addr, Some(iova + len));
    v.destroy().unwrap();

    // Destroyed with its vcoproc: a new vcoproc gets fresh memory there.
    let w = vcoproc(&p, 1, LOCALBUF);
    w.alloc_local(iova, len).unwrap();
    assert_eq!(job(&w, &[2, iova as u32, words, 0]).unwrap()[..2], [2, 0]);
}
