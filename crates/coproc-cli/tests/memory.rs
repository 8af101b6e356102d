//! Shared virtual addressing and device-local memory through the real
//! daemon with the client SDK: a linked list built with host pointers
//! walked by firmware; private device memory counted against the quota.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;
use common::{wait_for, Daemon};

use coproc_client::{Client, ClientError, ErrorCode, SharedMem, SvaMem, WireMapKind, WirePerms};
use coproc_firmware::reference::{self, ListWalk, TestRng};
use coproc_firmware::{LISTWALK, LOCALBUF, PROBE};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
/// The domains' mapped-bytes quota in this configuration.
const QUOTA: u64 = 1 << 20;

const CONFIG: &str = r#"
[[pcoproc]]
name = "mcu0"
class = "mcu"
policy = "rr"
policy_params = { slice_us = "1000" }

[[domain]]
uids = "*"
pcoprocs = ["mcu0"]
max_vcoprocs = 8
max_mapped_bytes = 1048576
"#;

/// A vcoproc running `fw`, subscribed.
fn vcoproc(c: &mut Client, fw: coproc_firmware::Firmware) -> u32 {
    let v = c.open("mcu0").unwrap();
    c.load_firmware(v, fw.name, fw.elf).unwrap();
    c.subscribe(v).unwrap();
    c.start(v).unwrap();
    v
}

/// One job: mailbox-in words, doorbell, the notification, mailbox-out.
fn job(c: &mut Client, v: u32, words: &[u32]) -> Result<Vec<u32>, ClientError> {
    c.mbox_write(v, 0, words)?;
    let (_, seq) = c.mbox_read(v)?;
    c.doorbell(v)?;
    c.wait_notify(v, seq, T)?;
    Ok(c.mbox_read(v)?.0)
}

fn mapped_bytes(c: &mut Client) -> u64 {
    let uid = c.identity().uid;
    c.list_domains()
        .unwrap()
        .iter()
        .find(|d| d.uid == uid)
        .map_or(0, |d| d.mapped_bytes)
}

/// The host's walk through the same pointers, over a copy of the memory.
fn host_walk(m: &SvaMem, head: u32, max: u32) -> Result<ListWalk, u32> {
    let bytes = m.read_vec(0, m.len() as usize).unwrap();
    reference::list_walk_in(&bytes, m.addr(), head, max)
}

#[test]
fn firmware_walks_a_domain_list_through_shared_virtual_addresses() {
    let d = Daemon::start("sva", CONFIG);
    let mut c = d.client();
    let info = c.list_coprocs().unwrap().remove(0);
    assert_eq!((info.iova_base, info.iova_size), (0x6000_0000, 0x2000_0000));
    let v = vcoproc(&mut c, LISTWALK);
    // Something already mapped at the bottom of the window: the SDK must
    // place the shared memory elsewhere.
    let other = SharedMem::new(4096).unwrap();
    c.map(
        v,
        &other,
        0,
        0x6000_0000,
        4096,
        WirePerms::Rw,
        WireMapKind::Pinned,
    )
    .unwrap();
    let len = 16 * 1024;
    let m = c
        .alloc_shared_va(v, len, WirePerms::Rw, WireMapKind::Pinned)
        .unwrap();
    assert_eq!(m.iova(), m.addr(), "same address on both sides");
    assert!(m.iova() >= 0x6000_1000 && m.iova() + len <= 0x8000_0000);
    let base = u32::try_from(m.addr()).expect("host address fits 32 bits");
    assert_eq!(m.ptr32(8), Some(base + 8));
    assert_eq!(m.ptr32(len), None);
    let m2 = c
        .alloc_shared_va(v, 4096, WirePerms::Rw, WireMapKind::Pinned)
        .unwrap();
    assert!(m2.iova() >= m.iova() + len || m2.iova() + 4096 <= m.iova());
    assert_eq!(mapped_bytes(&mut c), 4096 + len + 4096);

    // 1000 nodes {next, value} in shuffled slots, linked by host pointers.
    let n = 1000u32;
    let mut rng = TestRng::new(7);
    let mut order: Vec<u32> = (0..n).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    for k in 0..n as usize {
        let next = order.get(k + 1).map_or(0, |&s| base + 8 * s);
        let value = rng.next_u64() as u32;
        let node = [next.to_le_bytes(), value.to_le_bytes()].concat();
        m.write(u64::from(8 * order[k]), &node).unwrap();
    }
    let head = base + 8 * order[0];

    let want = host_walk(&m, head, u32::MAX).unwrap();
    assert_eq!((want.count, want.end), (n, 0));
    assert_eq!(
        job(&mut c, v, &[head, u32::MAX]).unwrap()[..3],
        [want.sum, n, 0]
    );

    // A cycle is bounded by N.
    m.write(u64::from(8 * order[n as usize - 1]), &head.to_le_bytes())
        .unwrap();
    let want = host_walk(&m, head, 3333).unwrap();
    assert_eq!(want.count, 3333);
    assert_eq!(
        job(&mut c, v, &[head, 3333]).unwrap()[..3],
        [want.sum, 3333, want.end]
    );

    // A pointer outside the mapping faults the vcoproc at that address.
    let bad = base + len as u32 + 0x24;
    m.write(u64::from(8 * order[123]), &bad.to_le_bytes())
        .unwrap();
    assert_eq!(host_walk(&m, head, u32::MAX), Err(bad));
    match job(&mut c, v, &[head, u32::MAX]) {
        Err(ClientError::Stopped { state, .. }) => assert_eq!(state, "faulted"),
        other => panic!("expected a fault, got {other:?}"),
    }
    let f = c.list_faults().unwrap().pop().unwrap();
    assert_eq!(
        (f.vcoproc, f.addr, f.access.as_str()),
        (v, Some(u64::from(bad)), "read")
    );

    c.destroy(v).unwrap();
    assert_eq!(mapped_bytes(&mut c), 0);
}

#[test]
fn local_memory_is_private_counted_and_returned() {
    let d = Daemon::start("local", CONFIG);
    let mut c = d.client();
    let v = vcoproc(&mut c, LOCALBUF);
    let iova = 0x6008_0000u64;
    let len = 256 * 1024u64;
    let words = (len / 4) as u32;
    c.alloc_local(v, iova, len).unwrap();
    assert_eq!(mapped_bytes(&mut c), len);

    assert_eq!(
        job(&mut c, v, &[2, iova as u32, words, 0]).unwrap()[..2],
        [2, 0]
    );
    let want = reference::localbuf_sum(0xfeed, words);
    assert_eq!(
        job(&mut c, v, &[1, iova as u32, words, 0xfeed]).unwrap()[..2],
        [1, want]
    );

    // Another vcoproc of the same domain cannot read it.
    let p = vcoproc(&mut c, PROBE);
    let target = iova as u32 + 0x100;
    assert!(matches!(
        job(&mut c, p, &[1, target, 0]),
        Err(ClientError::Stopped { .. })
    ));
    let f = c.list_faults().unwrap().pop().unwrap();
    assert_eq!((f.vcoproc, f.addr), (p, Some(u64::from(target))));

    // Hostile requests: clear errors, nothing counted.
    let mem = SharedMem::new(4096).unwrap();
    c.map(
        v,
        &mem,
        0,
        0x6000_0000,
        4096,
        WirePerms::Rw,
        WireMapKind::Pinned,
    )
    .unwrap();
    let base_use = len + 4096;
    assert_eq!(mapped_bytes(&mut c), base_use);
    for (i, l, what) in [
        (0x6000_0000, 4096, "overlaps"),
        (iova + len - 4096, 8192, "overlaps"),
        (0x6020_0800, 4096, "multiples of 4096"),
        (0x6020_0000, 1000, "multiples of 4096"),
        (0x6020_0000, 0, "multiples of 4096"),
        (0x1000_0000, 4096, "outside the window"),
        (0x7fff_f000, 8192, "outside the window"),
        (u64::MAX - 0xfff, 4096, "outside the window"),
    ] {
        let e = c.alloc_local(v, i, l).unwrap_err();
        assert_eq!(
            e.code(),
            Some(ErrorCode::InvalidArgument),
            "{i:#x}+{l:#x}: {e}"
        );
        assert!(e.to_string().contains(what), "{i:#x}+{l:#x}: {e}");
    }
    // Not local memory: a mapping cannot be freed as local memory, nor
    // local memory unmapped.
    assert_eq!(
        c.free_local(v, 0x6000_0000).unwrap_err().code(),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        c.unmap(v, iova).unwrap_err().code(),
        Some(ErrorCode::InvalidArgument)
    );
    // Over the quota.
    let e = c.alloc_local(v, 0x6100_0000, QUOTA).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Quota), "{e}");
    assert!(e.to_string().contains("quota"), "{e}");
    // Another vcoproc: same quota.
    let e = c
        .alloc_local(p, 0x6100_0000, QUOTA - base_use + 4096)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Quota), "{e}");
    c.alloc_local(p, 0x6100_0000, QUOTA - base_use).unwrap();
    assert_eq!(mapped_bytes(&mut c), QUOTA);
    assert_eq!(c.query(v).unwrap().mapped_bytes, 4096);
    assert_eq!(mapped_bytes(&mut c), QUOTA);

    // Free returns it; destroy returns the rest.
    c.free_local(v, iova).unwrap();
    assert_eq!(mapped_bytes(&mut c), QUOTA - len);
    assert_eq!(
        c.free_local(v, iova).unwrap_err().code(),
        Some(ErrorCode::InvalidArgument)
    );
    c.destroy(p).unwrap();
    assert_eq!(mapped_bytes(&mut c), 4096);
    c.alloc_local(v, iova, len).unwrap();
    // Fresh memory again: zeros.
    assert_eq!(
        job(&mut c, v, &[2, iova as u32, words, 0]).unwrap()[..2],
        [2, 0]
    );

    // Session end returns everything.
    drop(c);
    let mut c2 = d.client();
    wait_for("the session's memory to be returned", || {
        mapped_bytes(&mut c2) == 0
    });
    // And a foreign vcoproc id is not found.
    assert_eq!(
        c2.alloc_local(v, iova, 4096).unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
}
