//! The mcu device under the framework: results against host references,
//! isolation, faults, malformed firmware, round-robin shares.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use coproc_core::fault::{Access, FaultReason};
use coproc_core::iova::{MapKind, Perms};
use coproc_core::memory::Region;
use coproc_core::pcoproc::TraceEntry;
use coproc_core::policy::{RoundRobin, SchedParams};
use coproc_core::state::VcoprocState;
use coproc_core::{CoreError, DeviceError, DomainId, Pcoproc, VcoprocHandle};
use coproc_firmware::drive::{self, Buffer, BUFFER_IOVA};
use coproc_firmware::reference::{self, TestRng};
use coproc_firmware::{Firmware, CRC32, ECHO, FAULTY, FIR, HOG, PROBE, SCRIBBLE};
use coproc_mcu::abi;
use coproc_mcu::{factory, McuConfig};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

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

fn fir_domain(v: &VcoprocHandle, seed: u64, jobs: u32, samples: usize, taps: usize) {
    let buf = Buffer::map(v, (samples * 4 + taps * 2) as u64, MapKind::Pinned).unwrap();
    v.start().unwrap();
    let mut rng = TestRng::new(seed);
    for j in 0..jobs {
        let x = rng.samples(samples);
        let h = rng.samples(taps);
        let y = drive::fir(v, &buf, &x, &h, j + 1, T).unwrap();
        assert_eq!(y, reference::fir_q15(&x, &h), "fir job {j} of {}", v.id());
    }
}

fn crc_domain(v: &VcoprocHandle, seed: u64, jobs: u32, len: usize) {
    let buf = Buffer::map(v, len as u64, MapKind::Pinned).unwrap();
    v.start().unwrap();
    let mut rng = TestRng::new(seed);
    for j in 0..jobs {
        let data = rng.bytes(len - j as usize);
        assert_eq!(
            drive::crc32(v, &buf, &data, j + 7, T).unwrap(),
            reference::crc32(&data)
        );
    }
}

fn echo_domain(v: &VcoprocHandle, seed: u64, msgs: u32) {
    v.start().unwrap();
    let mut rng = TestRng::new(seed);
    for seq in 1..=msgs {
        let mut w = [0u32; 16];
        for x in &mut w {
            *x = rng.next_u64() as u32;
        }
        let out = drive::echo(v, &w, T).unwrap();
        let mut want = reference::echo(&w, seq);
        want[15] = seq;
        assert_eq!(out[..15], want[..15]);
        assert_eq!(out[15], seq);
    }
}

#[test]
fn interleaved_results_match_references() {
    // 100 µs slices: each FIR job needs many slices, so every vcoproc is
    // switched out and back in mid-computation.
    let p = pcoproc(100);
    let fir1 = vcoproc(&p, 1, FIR);
    let fir2 = vcoproc(&p, 2, FIR);
    let crc = vcoproc(&p, 3, CRC32);
    let echo = vcoproc(&p, 4, ECHO);
    std::thread::scope(|s| {
        s.spawn(|| fir_domain(&fir1, 1, 3, 8192, 32));
        s.spawn(|| fir_domain(&fir2, 2, 3, 4096, 64));
        s.spawn(|| crc_domain(&crc, 3, 6, 256 * 1024));
        s.spawn(|| echo_domain(&echo, 4, 200));
    });
    for v in [&fir1, &fir2, &crc] {
        let st = v.info().unwrap().stats;
        assert_eq!(st.faults, 0);
        assert!(
            st.slices > 10,
            "{} ran in {} slices: not interleaved",
            v.id(),
            st.slices
        );
        assert!(
            st.switches > 5,
            "{} switched in {} times",
            v.id(),
            st.switches
        );
    }
    assert!(p.busy().1 > 50, "context switches: {}", p.busy().1);
}

#[test]
fn isolation_faults_the_reader_only() {
    let p = pcoproc(200);
    let victim = vcoproc(&p, 1, CRC32);
    let attacker = vcoproc(&p, 2, PROBE);
    // The victim's mapping, with known contents.
    let secret = TestRng::new(9).bytes(8192);
    let vbuf = Buffer::map(&victim, 8192, MapKind::Pinned).unwrap();
    vbuf.region.write(0, &secret).unwrap();
    victim.start().unwrap();
    attacker.start().unwrap();

    // Reading where the victim's mapping lives (unmapped for the attacker).
    let target = BUFFER_IOVA as u32 + 0x124;
    assert!(drive::probe(&attacker, 1, target, 0, T).is_err());
    let f = attacker.faults().unwrap().pop().unwrap();
    assert_eq!(
        f.fault.addr,
        Some(u64::from(target)),
        "exact faulting address"
    );
    assert_eq!(f.fault.access, Access::Read);
    assert_eq!(f.fault.reason, FaultReason::AccessViolation);
    assert!(f.fault.pc.is_some_and(|pc| pc < u64::from(abi::CODE_SIZE)));
    assert_eq!(attacker.state().unwrap(), VcoprocState::Faulted);

    // Writing there, after a reset.
    attacker.reset().unwrap();
    attacker.start().unwrap();
    assert!(drive::probe(&attacker, 2, target, 0xdead_beef, T).is_err());
    let f = attacker.faults().unwrap().pop().unwrap();
    assert_eq!(
        (f.fault.addr, f.fault.access),
        (Some(u64::from(target)), Access::Write)
    );

    // The attacker's own data memory at the same virtual address as the
    // victim's is its own: write a marker, the victim is not affected.
    attacker.reset().unwrap();
    attacker.start().unwrap();
    let own = abi::DATA_BASE + 0x1_0000;
    drive::probe(&attacker, 2, own, 0x5151_5151, T).unwrap();
    assert_eq!(drive::probe(&attacker, 1, own, 0, T).unwrap(), 0x5151_5151);

    // Every other interesting address faults too: the physical pool where
    // contexts' memory lives, system space around the System Control
    // Space page (which is mapped), and the end of the window.
    for addr in [
        0x8000_0000u32,
        0x8004_0000,
        0x7000_0000,
        0xe000_0000,
        0xe000_dffc,
        0xe000_f000,
        0x7fff_fffc,
    ] {
        attacker.reset().unwrap();
        attacker.start().unwrap();
        assert!(drive::probe(&attacker, 1, addr, 0, T).is_err(), "{addr:#x}");
        assert_eq!(
            attacker.faults().unwrap().pop().unwrap().fault.addr,
            Some(u64::from(addr))
        );
    }

    // Writing code memory, executing data memory, an undefined instruction.
    attacker.reset().unwrap();
    attacker.start().unwrap();
    assert!(drive::probe(&attacker, 2, 0x100, 0, T).is_err());
    assert_eq!(
        attacker.faults().unwrap().pop().unwrap().fault.access,
        Access::Write
    );
    attacker.reset().unwrap();
    attacker.start().unwrap();
    assert!(drive::probe(&attacker, 3, abi::DATA_BASE + 0x100, 0, T).is_err());
    let f = attacker.faults().unwrap().pop().unwrap();
    assert_eq!(
        (f.fault.access, f.fault.addr),
        (Access::Fetch, Some(u64::from(abi::DATA_BASE) + 0x100))
    );
    attacker.reset().unwrap();
    attacker.start().unwrap();
    assert!(drive::probe(&attacker, 4, 0, 0, T).is_err());
    assert_eq!(
        attacker.faults().unwrap().pop().unwrap().fault.reason,
        FaultReason::InvalidInstruction
    );

    // After a reset the firmware can read why it was reset.
    attacker.reset().unwrap();
    attacker.start().unwrap();
    let reason = drive::probe(&attacker, 1, abi::CB_BASE + abi::CB_FAULT_REASON, 0, T).unwrap();
    assert_eq!(reason, FaultReason::InvalidInstruction.code());

    // The victim's data is unchanged and its results are right.
    assert_eq!(vbuf.region.read_vec(0, 8192).unwrap(), secret);
    let crc = drive::crc32(&victim, &vbuf, &secret, 1, T).unwrap();
    assert_eq!(crc, reference::crc32(&secret));
    assert_eq!(victim.info().unwrap().stats.faults, 0);
    assert_eq!(
        p.faults()
            .iter()
            .filter(|f| f.vcoproc == victim.id())
            .count(),
        0
    );
}

#[test]
fn faulty_firmware_faults_alone() {
    let p = pcoproc(200);
    let faulty = vcoproc(&p, 1, FAULTY);
    let crc = vcoproc(&p, 2, CRC32);
    faulty.start().unwrap();
    faulty.doorbell();
    faulty
        .wait_state(|s| s == VcoprocState::Faulted, T)
        .unwrap();
    let f = faulty.faults().unwrap().pop().unwrap();
    assert_eq!(
        f.fault.addr,
        Some(u64::from(abi::IOVA_BASE + abi::IOVA_SIZE - 0x1000))
    );
    assert_eq!(f.fault.access, Access::Read);
    // It got as far as its first mailbox write (0+3+...+45 = 360).
    assert_eq!(faulty.mbox_read(0), 360);
    assert_eq!(faulty.last_notify().seq, 0, "nothing after the fault ran");
    crc_domain(&crc, 5, 3, 4096);
}

/// Patch helpers over a real image: ELF32 header and program headers.
fn phdr(elf: &[u8], i: usize) -> usize {
    let phoff = u32::from_le_bytes(elf[28..32].try_into().unwrap()) as usize;
    phoff + 32 * i
}

fn put32(elf: &mut [u8], at: usize, v: u32) {
    elf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn malformed_firmware_is_refused() {
    let p = pcoproc(200);
    let good = FIR.elf.to_vec();
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "not a valid ELF"),
        ("truncated header", good[..20].to_vec(), "not a valid ELF"),
        ("truncated segments", good[..good.len() / 8].to_vec(), ""),
        (
            "not elf",
            b"MZ\x90\x00 this is not an elf file at all....".to_vec(),
            "bad magic",
        ),
    ];
    let mut m = good.clone();
    m[18] = 62; // EM_X86_64
    cases.push(("wrong machine", m, "wrong machine 62"));
    let mut m = good.clone();
    m[4] = 2; // ELFCLASS64
    cases.push(("64-bit", m, "32-bit"));
    let mut m = good.clone();
    put32(&mut m, phdr(&good, 0) + 8, 0x1000_0000); // p_vaddr outside memory
    cases.push(("outside memory", m, "outside code and data"));
    let mut m = good.clone();
    put32(&mut m, phdr(&good, 0) + 8, abi::CODE_SIZE - 16); // straddles the end of code
    cases.push(("straddling", m, "outside code and data"));
    let mut m = good.clone();
    put32(&mut m, phdr(&good, 1) + 8, 0); // second segment onto the first
    put32(&mut m, phdr(&good, 1) + 24, 5); // R+X so it passes W^X
    cases.push(("overlapping", m, "overlap"));
    let mut m = good.clone();
    put32(&mut m, phdr(&good, 0) + 20, 0xffff_f000); // huge p_memsz
    cases.push(("huge memsz", m, "outside code and data"));
    let mut m = good.clone();
    put32(&mut m, phdr(&good, 0) + 16, 0x7fff_ffff); // huge p_filesz
    put32(&mut m, phdr(&good, 0) + 20, 0x7fff_ffff);
    cases.push(("huge filesz", m, ""));
    let mut m = good.clone();
    put32(&mut m, phdr(&good, 0) + 4, 0xffff_fff0); // p_offset past the end
    cases.push(("offset past end", m, "past the end"));
    let mut m = good.clone();
    put32(&mut m, 24, 0x0003_0001); // entry outside any segment
    cases.push(("bad entry", m, "entry point"));
    let mut m = good.clone();
    put32(&mut m, phdr(&good, 0) + 24, 7); // code segment writable
    cases.push(("w^x", m, "W^X"));
    let mut m = good.clone();
    m[44] = 200; // e_phnum
    cases.push(("too many segments", m, ""));
    cases.push(("oversized", vec![0u8; 5 << 20], "larger than"));

    let bystander = vcoproc(&p, 9, CRC32);
    let v = p
        .create_vcoproc(DomainId(1), SchedParams::default())
        .unwrap();
    for (what, image, needle) in &cases {
        match v.load_firmware(what, image) {
            Err(CoreError::Device(DeviceError::BadFirmware(msg))) => {
                assert!(msg.contains(needle), "{what}: {msg:?} lacks {needle:?}");
            }
            other => panic!("{what}: expected a firmware error, got {other:?}"),
        }
        assert_eq!(v.state().unwrap(), VcoprocState::Created, "{what}");
    }
    // The same context still takes a good image and works.
    v.load_firmware("fir", &good).unwrap();
    fir_domain(&v, 3, 1, 512, 8);
    crc_domain(&bystander, 4, 2, 4096);
}

#[test]
fn hog_gets_its_round_robin_share_and_no_more() {
    let slice = Duration::from_micros(500);
    let p = pcoproc(slice.as_micros() as u64);
    p.set_trace(100_000);
    let hog1 = vcoproc(&p, 1, HOG);
    let hog2 = vcoproc(&p, 2, HOG);
    let echo = vcoproc(&p, 3, ECHO);
    let crc = vcoproc(&p, 4, CRC32);
    hog1.start().unwrap();
    hog2.start().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| echo_domain(&echo, 1, 200));
        s.spawn(|| crc_domain(&crc, 2, 8, 512 * 1024));
    });
    let raw = p.trace();
    // A turn longer than a slice is only given to a vcoproc that was alone
    // in the run queue, and ends the moment another one wakes.
    let slice_ns = slice.as_nanos() as u64;
    for t in raw.iter().filter(|t| t.budget_ns > slice_ns) {
        assert!(
            t.preempted || t.ran_ns >= t.budget_ns,
            "extended turn not cut short: {t:?}"
        );
    }
    // A slice cut short by a preempt request (a control command, a wake-up)
    // continues with the rest of its budget: count that as one turn.
    let mut trace: Vec<TraceEntry> = Vec::new();
    for t in raw {
        match trace.last_mut() {
            Some(last) if last.vcoproc == t.vcoproc && last.preempted => {
                last.ran_ns += t.ran_ns;
                last.preempted = t.preempted;
            }
            _ => trace.push(t),
        }
    }
    let hogs = [hog1.id(), hog2.id()];
    // While the other hog competes, every hog turn is one slice at most.
    let hog_slices: Vec<&TraceEntry> = trace.iter().filter(|t| hogs.contains(&t.vcoproc)).collect();
    assert!(hog_slices.len() > 20);
    assert!(
        hog_slices.iter().skip(2).all(|t| t.budget_ns <= slice_ns),
        "a hog got more than a slice"
    );
    // The two hogs strictly alternate: neither gets a second turn before
    // the other had one.
    for w in hog_slices.windows(2) {
        assert_ne!(w[0].vcoproc, w[1].vcoproc, "a hog ran twice in a row");
    }
    // A vcoproc that ends its turn still runnable (the crc job in the middle
    // of a buffer) waits at most one turn of each other vcoproc.
    let crc_turns: Vec<usize> = trace
        .iter()
        .enumerate()
        .filter(|(_, t)| t.vcoproc == crc.id())
        .map(|(i, _)| i)
        .collect();
    let mut checked = 0;
    for w in crc_turns.windows(2).filter(|w| trace[w[0]].runnable_after) {
        checked += 1;
        let between: Vec<_> = trace[w[0] + 1..w[1]].iter().map(|t| t.vcoproc).collect();
        for h in hogs {
            assert!(
                between.iter().filter(|&&v| v == h).count() <= 1,
                "{h} ran twice while crc waited"
            );
        }
    }
    assert!(checked > 10, "crc was preempted mid-job {checked} times");
    // The hogs kept computing and were never faulted.
    for h in [&hog1, &hog2] {
        let st = h.state().unwrap();
        assert!(
            matches!(st, VcoprocState::Runnable | VcoprocState::Running),
            "hog is {st}"
        );
        assert!(h.mbox_read(0) > 0, "hog made progress");
        assert_eq!(h.info().unwrap().stats.faults, 0);
    }
}

#[test]
fn exit_reset_destroy_and_context_reuse() {
    let p = pcoproc(200);
    let v = vcoproc(&p, 1, PROBE);
    v.start().unwrap();
    // Exit stops it with the code.
    v.mbox_write(0, 5);
    v.mbox_write(2, 42);
    v.doorbell();
    v.wait_state(|s| s == VcoprocState::Stopped, T).unwrap();
    assert_eq!(v.info().unwrap().exit_code, Some(42));
    // A stopped vcoproc cannot be started; reset brings it back.
    assert!(v.start().is_err());
    v.reset().unwrap();
    v.start().unwrap();
    assert_eq!(
        drive::probe(&v, 1, abi::CB_BASE + abi::CB_VCOPROC, 0, T).unwrap(),
        v.id().0
    );
    assert_eq!(
        drive::probe(&v, 1, abi::CB_BASE + abi::CB_MAGIC, 0, T).unwrap(),
        abi::MAGIC
    );
    // Leave a marker in data memory, destroy, and create a new vcoproc,
    // which reuses the context memory: nothing of the old one is visible.
    drive::probe(&v, 2, abi::DATA_BASE + 0x1_8000, 0xfeed_f00d, T).unwrap();
    v.destroy().unwrap();
    assert!(matches!(v.state(), Err(CoreError::NoVcoproc(_))));
    let w = vcoproc(&p, 2, PROBE);
    w.start().unwrap();
    assert_eq!(
        drive::probe(&w, 1, abi::DATA_BASE + 0x1_8000, 0, T).unwrap(),
        0
    );
    // And a different firmware in a reused context runs its own code.
    w.destroy().unwrap();
    let c = vcoproc(&p, 3, CRC32);
    crc_domain(&c, 7, 2, 4096);
}

#[test]
fn unmap_removes_access_and_mappings_are_checked() {
    let p = pcoproc(200);
    let v = vcoproc(&p, 1, PROBE);
    let r = Arc::new(Region::new(3 * 4096).unwrap());
    r.write(4096, &0x1234_5678u32.to_le_bytes()).unwrap();
    v.map(&r, 4096, BUFFER_IOVA, 4096, Perms::R, MapKind::Revocable)
        .unwrap();
    // Refused: overlap, executable, outside the window, past the end.
    assert!(v
        .map(&r, 0, BUFFER_IOVA, 4096, Perms::RW, MapKind::Pinned)
        .is_err());
    assert!(v
        .map(
            &r,
            0,
            BUFFER_IOVA + 0x10000,
            4096,
            Perms::RX,
            MapKind::Pinned
        )
        .is_err());
    assert!(v
        .map(&r, 0, 0x2000_0000, 4096, Perms::RW, MapKind::Pinned)
        .is_err());
    assert!(v
        .map(
            &r,
            8192,
            BUFFER_IOVA + 0x10000,
            8192,
            Perms::RW,
            MapKind::Pinned
        )
        .is_err());
    v.start().unwrap();
    assert_eq!(
        drive::probe(&v, 1, BUFFER_IOVA as u32, 0, T).unwrap(),
        0x1234_5678
    );
    // Read-only: a write faults.
    assert!(drive::probe(&v, 2, BUFFER_IOVA as u32 + 8, 1, T).is_err());
    assert_eq!(
        v.faults().unwrap().pop().unwrap().fault.access,
        Access::Write
    );
    assert_eq!(r.read_vec(4096 + 8, 4).unwrap(), [0, 0, 0, 0]);
    v.reset().unwrap();
    v.start().unwrap();
    assert_eq!(
        drive::probe(&v, 1, BUFFER_IOVA as u32, 0, T).unwrap(),
        0x1234_5678
    );
    v.unmap(BUFFER_IOVA).unwrap();
    assert!(drive::probe(&v, 1, BUFFER_IOVA as u32, 0, T).is_err());
    assert_eq!(v.info().unwrap().mappings, 0);
}

/// Mappings share the device's mapping window: a range taken down by unmap
/// or by revoke (whose trap also replaced the window alias) is reused for
/// the next mapping, which must reach its own memory, readable and
/// writable, while every earlier domain's memory stays as it was left.
#[test]
fn window_ranges_are_reused_after_unmap_and_revoke() {
    let p = pcoproc(200);
    let v = vcoproc(&p, 1, PROBE);
    v.start().unwrap();
    let mut earlier: Vec<(Arc<Region>, u32)> = Vec::new();
    for i in 0..8u32 {
        let r = Arc::new(Region::new(2 * 4096).unwrap());
        let marker = 0xA5A5_0000 | i;
        r.write(4096, &marker.to_le_bytes()).unwrap();
        v.map(&r, 0, BUFFER_IOVA, 2 * 4096, Perms::RW, MapKind::Revocable)
            .unwrap();
        let at = BUFFER_IOVA as u32 + 4096;
        assert_eq!(drive::probe(&v, 1, at, 0, T).unwrap(), marker, "round {i}");
        drive::probe(&v, 2, at + 4, !marker, T).unwrap();
        assert_eq!(r.read_vec(4096 + 4, 4).unwrap(), (!marker).to_le_bytes());
        if i % 2 == 0 {
            v.unmap(BUFFER_IOVA).unwrap();
        } else {
            assert_eq!(
                v.revoke(BUFFER_IOVA),
                coproc_core::pcoproc::RevokeOutcome::Removed { len: 2 * 4096 }
            );
        }
        earlier.push((r, marker));
    }
    for (r, marker) in &earlier {
        assert_eq!(r.read_vec(4096, 4).unwrap(), marker.to_le_bytes());
        assert_eq!(r.read_vec(4096 + 4, 4).unwrap(), (!marker).to_le_bytes());
    }
}

#[test]
fn header_matches_rust_abi() {
    use coproc_proto::queue;
    let all: Vec<(&str, u32)> = abi::ALL
        .iter()
        .copied()
        .chain([
            ("COPROC_QUEUE_MAGIC", queue::MAGIC),
            ("COPROC_QUEUE_MAX_ENTRIES", queue::MAX_ENTRIES),
            ("COPROC_QUEUE_ENTRY_SIZE", queue::ENTRY_SIZE),
            ("COPROC_QUEUE_RING_OFFSET", queue::RING_OFFSET),
            ("COPROC_QUEUE_MAX_POLL_US", queue::MAX_POLL_US),
        ])
        .chain(abi::scs::ALL.iter().copied())
        .collect();
    let mut seen = 0;
    for line in coproc_firmware::HEADER.lines() {
        let mut it = line.split_whitespace();
        if it.next() != Some("#define") {
            continue;
        }
        let (Some(name), Some(value)) = (it.next(), it.next()) else {
            continue;
        };
        let Some(hex) = value.strip_prefix("0x") else {
            if let Ok(v) = value.trim_end_matches('u').parse::<u32>() {
                let want = all.iter().find(|(n, _)| *n == name);
                if let Some((_, w)) = want {
                    assert_eq!(*w, v, "{name}");
                    seen += 1;
                }
            }
            continue;
        };
        let v = u32::from_str_radix(hex.trim_end_matches('u'), 16).unwrap();
        let (_, w) = all
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} missing in abi.rs"));
        assert_eq!(*w, v, "{name}");
        seen += 1;
    }
    assert_eq!(seen, all.len(), "every ABI constant is in the header");
    // The header's offsets of the queue indices (in the helpers) match.
    for (off, name) in [
        (queue::OFF_FLAGS, "0x00cu"),
        (queue::OFF_SQ_TAIL, "0x040u"),
        (queue::OFF_SQ_HEAD, "0x080u"),
        (queue::OFF_CQ_TAIL, "0x0c0u"),
        (queue::OFF_CQ_HEAD, "0x100u"),
    ] {
        assert_eq!(format!("{off:#05x}u"), name);
        assert!(
            coproc_firmware::HEADER.contains(&format!("COPROC_Q_WORD(q, {name})")),
            "{name}"
        );
    }
}

/// The core may be preempted right after a control block access and restart
/// that instruction: doorbells, notifications and mailbox answers must come
/// out exactly once each, in order, under heavy preemption.
#[test]
fn preemption_never_repeats_or_loses_control_block_accesses() {
    let p = pcoproc(50);
    let hog = vcoproc(&p, 1, HOG);
    let echo = vcoproc(&p, 2, ECHO);
    let crc = vcoproc(&p, 3, CRC32);
    hog.start().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| crc_domain(&crc, 4, 12, 128 * 1024));
        s.spawn(|| {
            echo.start().unwrap();
            for k in 1..=2000u32 {
                let before = echo.last_notify().seq;
                let w: [u32; 16] = std::array::from_fn(|i| k * 1000 + i as u32);
                let out = drive::echo(&echo, &w, T).unwrap();
                assert_eq!(out[..15], w[..15], "message {k}");
                assert_eq!(
                    out[15], k,
                    "firmware handled message {k} as its {}th",
                    out[15]
                );
                assert_eq!(
                    echo.last_notify().seq,
                    before + 1,
                    "exactly one notification"
                );
            }
        });
    });
    assert!(p.busy().1 > 100, "switches: {}", p.busy().1);
}

#[test]
fn reloading_a_context_runs_its_new_code_and_the_others_keep_theirs() {
    let p = pcoproc(200);
    // A context whose code the engine has translated, kept busy throughout.
    let a = vcoproc(&p, 1, CRC32);
    let abuf = Buffer::map(&a, 4096, MapKind::Pinned).unwrap();
    a.start().unwrap();
    let mut rng = TestRng::new(21);
    let mut check_a = |seq: u32| {
        let data = rng.bytes(4000);
        assert_eq!(
            drive::crc32(&a, &abuf, &data, seq, T).unwrap(),
            reference::crc32(&data)
        );
    };
    check_a(1);
    // Another context runs probe, then crc32 at the same code addresses,
    // then probe again: each time its new code runs, never a stale
    // translation of the previous image, and a's code is never disturbed.
    let b = vcoproc(&p, 2, PROBE);
    b.start().unwrap();
    let magic = abi::CB_BASE + abi::CB_MAGIC;
    assert_eq!(drive::probe(&b, 1, magic, 0, T).unwrap(), abi::MAGIC);
    check_a(2);
    b.stop().unwrap();
    b.load_firmware("crc32", CRC32.elf).unwrap();
    let bbuf = Buffer::map(&b, 4096, MapKind::Pinned).unwrap();
    b.start().unwrap();
    let data = TestRng::new(22).bytes(3000);
    assert_eq!(
        drive::crc32(&b, &bbuf, &data, 1, T).unwrap(),
        reference::crc32(&data)
    );
    check_a(3);
    b.stop().unwrap();
    b.load_firmware("probe", PROBE.elf).unwrap();
    b.start().unwrap();
    assert_eq!(drive::probe(&b, 1, magic, 0, T).unwrap(), abi::MAGIC);
    check_a(4);
}

#[test]
fn context_limit_is_enforced_and_freed_contexts_are_reused() {
    let rr = RoundRobin::new(Duration::from_micros(200)).unwrap();
    let p = Pcoproc::spawn(
        "mcu0",
        factory(McuConfig {
            max_contexts: 3,
            ..McuConfig::default()
        }),
        Box::new(rr),
    )
    .unwrap();
    let vs: Vec<_> = (0..3)
        .map(|d| {
            p.create_vcoproc(DomainId(d), SchedParams::default())
                .unwrap()
        })
        .collect();
    match p.create_vcoproc(DomainId(9), SchedParams::default()) {
        Err(CoreError::Device(DeviceError::Exhausted(msg))) => assert!(msg.contains("3 contexts")),
        other => panic!("expected exhaustion, got {other:?}"),
    }
    assert_eq!(p.vcoprocs().len(), 3);
    vs[1].destroy().unwrap();
    let again = p
        .create_vcoproc(DomainId(9), SchedParams::default())
        .unwrap();
    again.load_firmware("crc32", CRC32.elf).unwrap();
    crc_domain(&again, 11, 2, 4096);
}

#[test]
fn preempt_handle_stops_a_running_slice() {
    use coproc_core::device::{Device, StopReason};
    let (mut dev, _, cb) = hog_device();
    for _ in 0..5 {
        let h = dev.preempt_handle();
        // Preempt once the hog has made progress in this run: the slice
        // is under way.
        let (cb2, before) = (cb.clone(), cb.read_out(0));
        let t = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while cb2.read_out(0) == before {
                assert!(std::time::Instant::now() < deadline, "the hog never ran");
                std::thread::yield_now();
            }
            h.preempt();
        });
        // A budget far longer than the test: only the preempt can end it.
        let out = dev.run(Duration::from_secs(3600));
        t.join().unwrap();
        assert_eq!(out.stop, StopReason::Preempted);
        assert!(
            cb.read_out(0) != before,
            "the hog ran before it was stopped"
        );
    }
    // A request made while nothing runs ends the next run at once.
    dev.preempt_handle().preempt();
    assert_eq!(
        dev.run(Duration::from_secs(3600)).stop,
        StopReason::Preempted
    );
}

#[test]
fn stop_pauses_and_start_resumes_where_it_was() {
    let p = pcoproc(200);
    let hog = vcoproc(&p, 1, HOG);
    hog.start().unwrap();
    hog.wait_state(|_| hog.mbox_read(0) > 2, T)
        .unwrap_or(VcoprocState::Running);
    while hog.mbox_read(0) < 3 {
        std::thread::sleep(Duration::from_millis(1));
    }
    hog.stop().unwrap();
    assert_eq!(hog.state().unwrap(), VcoprocState::Loaded);
    let (progress, run_ns) = (hog.mbox_read(0), hog.info().unwrap().stats.run_ns);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(hog.mbox_read(0), progress, "a stopped vcoproc does not run");
    assert_eq!(hog.info().unwrap().stats.run_ns, run_ns);
    hog.start().unwrap();
    while hog.mbox_read(0) <= progress {
        std::thread::sleep(Duration::from_millis(1));
    }
    // It resumed: the LCG state matches the iterations since boot, not a
    // fresh start.
    hog.stop().unwrap();
    let (done, x) = (u64::from(hog.mbox_read(0)), hog.mbox_read(1));
    assert!([done, done - 1]
        .iter()
        .any(|&d| reference::hog_state(d << 16) == x));
    assert!(done > u64::from(progress));
    assert!(hog.stop().is_err(), "stopping a stopped vcoproc is refused");
}

/// A hog context on a bare device, switched in.
fn hog_device() -> (
    coproc_mcu::McuDevice,
    coproc_core::VcoprocId,
    Arc<coproc_core::control::ControlBlock>,
) {
    use coproc_core::device::Device;
    let mut dev = coproc_mcu::McuDevice::new(McuConfig::default()).unwrap();
    let id = coproc_core::VcoprocId(1);
    let cb = bare_context(&mut dev, id, HOG.elf);
    dev.switch(Some(id));
    (dev, id, cb)
}

/// Context `id` of domain 1 on a bare device with `elf` loaded; its
/// control block.
fn bare_context(
    dev: &mut coproc_mcu::McuDevice,
    id: coproc_core::VcoprocId,
    elf: &[u8],
) -> Arc<coproc_core::control::ControlBlock> {
    bare_context_of(dev, id, 1, elf)
}

/// Context `id` of `domain` on a bare device with `elf` loaded.
fn bare_context_of(
    dev: &mut coproc_mcu::McuDevice,
    id: coproc_core::VcoprocId,
    domain: u32,
    elf: &[u8],
) -> Arc<coproc_core::control::ControlBlock> {
    use coproc_core::device::{ContextSpec, Device};
    let cb = Arc::new(coproc_core::control::ControlBlock::default());
    dev.create_context(ContextSpec {
        id,
        domain: DomainId(domain),
        control: cb.clone(),
    })
    .unwrap();
    dev.load_firmware(id, elf).unwrap();
    cb
}

/// Run hog in context `id` from its start until it has made progress, and
/// check its state against the host reference.
fn run_hog(
    dev: &mut coproc_mcu::McuDevice,
    id: coproc_core::VcoprocId,
    cb: &coproc_core::control::ControlBlock,
) {
    use coproc_core::device::Device;
    cb.write_out(0, 0);
    dev.switch(Some(id));
    while cb.read_out(0) < 4 {
        dev.run(Duration::from_millis(5));
    }
    // A slice may end between its two words: the state may be one behind.
    let (done, x) = (cb.read_out(0), cb.read_out(1));
    assert!(reference::hog_state_between(done, x, done), "{done} {x:#x}");
}

/// A destroyed context's slot keeps its code, with the engine's
/// translations of it, for a context of the same domain that loads the
/// same code (only data memory and the registers start over), and for a
/// reload of the same code; a context of another domain gets it cleared,
/// and different code is installed in full. Every run is checked against
/// the host reference.
#[test]
fn recycled_slots_keep_translated_code_within_a_domain_only() {
    use coproc_core::device::Device;
    use coproc_core::VcoprocId;
    let mut dev = coproc_mcu::McuDevice::new(McuConfig::default()).unwrap();
    let cb = bare_context_of(&mut dev, VcoprocId(1), 1, HOG.elf);
    run_hog(&mut dev, VcoprocId(1), &cb);
    dev.destroy_context(VcoprocId(1));
    assert_eq!(dev.warm_installs(), 0);
    // The same domain, the same firmware, the recycled slot.
    let cb = bare_context_of(&mut dev, VcoprocId(2), 1, HOG.elf);
    assert_eq!(dev.warm_installs(), 1);
    run_hog(&mut dev, VcoprocId(2), &cb);
    // Reloading it in the same context.
    dev.load_firmware(VcoprocId(2), HOG.elf).unwrap();
    assert_eq!(dev.warm_installs(), 2);
    run_hog(&mut dev, VcoprocId(2), &cb);
    // The same layout with one code byte changed is other code: in full,
    // and so is hog again after it.
    let mut changed = coproc_mcu::elf::parse(HOG.elf).unwrap();
    let seg = changed
        .segments
        .iter_mut()
        .find(|s| s.vaddr < abi::DATA_BASE && !s.data.is_empty())
        .unwrap();
    *seg.data.last_mut().unwrap() ^= 0xff;
    dev.install_firmware(VcoprocId(2), Box::new(changed))
        .unwrap();
    assert_eq!(dev.warm_installs(), 2);
    dev.load_firmware(VcoprocId(2), HOG.elf).unwrap();
    assert_eq!(dev.warm_installs(), 2);
    run_hog(&mut dev, VcoprocId(2), &cb);
    dev.destroy_context(VcoprocId(2));
    // Another domain: the slot is cleared, the same firmware installed
    // in full.
    let cb = bare_context_of(&mut dev, VcoprocId(3), 2, HOG.elf);
    assert_eq!(dev.warm_installs(), 2);
    run_hog(&mut dev, VcoprocId(3), &cb);
    dev.destroy_context(VcoprocId(3));
    // The same domain as the slot's last owner, other firmware: in full,
    // and back to hog in that context: in full again.
    let cb = bare_context_of(&mut dev, VcoprocId(4), 2, ECHO.elf);
    assert_eq!(dev.warm_installs(), 2);
    dev.load_firmware(VcoprocId(4), HOG.elf).unwrap();
    assert_eq!(dev.warm_installs(), 2);
    run_hog(&mut dev, VcoprocId(4), &cb);
}

/// A buffer in the control block's TLB slot (the control block's address
/// plus 512 MiB: at every table size up to 2^19 entries their pages share
/// a slot) has `scribble` evict and refill the control block's entry on
/// every pass, which makes the engine miscount and grow its TLB table: the
/// flushes that follow, at every switch for a while, are charged to it. A
/// buffer elsewhere in the window makes no such charge.
#[test]
fn tlb_flushes_a_context_made_costly_are_caused_by_it() {
    use coproc_core::device::{Device, SwitchOutcome};
    use coproc_core::iova::Mapping;
    const LEN: u64 = 4 * 4096;
    let in_cb_slot = u64::from(abi::CB_BASE) + 0x2000_0000;
    for (iova, culprit) in [(in_cb_slot, true), (u64::from(abi::IOVA_BASE), false)] {
        let (mut dev, hog, _) = hog_device();
        let id = coproc_core::VcoprocId(2);
        let cb = bare_context(&mut dev, id, SCRIBBLE.elf);
        let region = Arc::new(Region::new_memfd(LEN).unwrap());
        dev.map(id, &Mapping::pinned_rw(iova, &region, LEN))
            .unwrap();
        cb.write_in(0, iova as u32);
        cb.write_in(1, LEN as u32);
        assert_eq!(dev.switch(Some(id)), SwitchOutcome::Done);
        while cb.read_out(0) < 3 {
            dev.run(Duration::from_millis(5));
        }
        assert_eq!(dev.switch(Some(hog)), SwitchOutcome::Done);
        let seen = std::time::Instant::now();
        let caused = dev.switch_caused();
        if culprit {
            assert_eq!(caused.map(|(c, _)| c), Some(id), "buffer at {iova:#x}");
            // And every switch for a while (250 ms) after, whoever it is to.
            dev.run(Duration::from_millis(1));
            assert_eq!(dev.switch(Some(id)), SwitchOutcome::Done);
            if seen.elapsed() < Duration::from_millis(200) {
                assert_eq!(dev.switch_caused().map(|(c, _)| c), Some(id));
            }
        } else {
            assert_eq!(caused, None, "buffer at {iova:#x}");
        }
        // Region data matches what scribble wrote: it ran on that buffer.
        let mut word = [0u8; 4];
        region.read(0, &mut word).unwrap();
        assert!(u32::from_le_bytes(word) >= 3);
    }
}

#[test]
fn firmware_is_prepared_on_another_thread_while_the_device_runs() {
    use coproc_core::device::{ContextSpec, Device, StopReason};
    let (mut dev, _, cb) = hog_device();
    let prep = dev.firmware_prep();
    let preempt = dev.preempt_handle();
    // Another thread prepares images while the device runs a hog (it waits
    // until the hog has published progress, so the run is under way); only
    // its preempt, sent once every image is prepared, ends the run.
    let progress = cb.clone();
    let worker = std::thread::spawn(move || {
        while progress.read_out(0) == 0 {
            std::thread::yield_now();
        }
        let good = prep.prepare(HOG.elf).unwrap();
        let bad = prep.prepare(&HOG.elf[..40]).map(|_| ());
        preempt.preempt();
        (good, bad)
    });
    let out = dev.run(Duration::from_secs(3600));
    let (good, bad) = worker.join().unwrap();
    assert_eq!(out.stop, StopReason::Preempted);
    match bad {
        Err(DeviceError::BadFirmware(msg)) => assert!(msg.contains("not a valid ELF"), "{msg}"),
        other => panic!("a truncated image was prepared: {other:?}"),
    }
    // The prepared image, installed in a second context, computes what the
    // host reference says.
    let id2 = coproc_core::VcoprocId(2);
    let cb2 = Arc::new(coproc_core::control::ControlBlock::default());
    dev.create_context(ContextSpec {
        id: id2,
        domain: coproc_core::DomainId(1),
        control: cb2.clone(),
    })
    .unwrap();
    let info = dev.install_firmware(id2, good).unwrap();
    assert!(info.code_bytes > 0);
    dev.switch(Some(id2));
    while cb2.read_out(0) < 4 {
        dev.run(Duration::from_millis(5));
    }
    // A slice may end between its two words: the state may be one behind.
    let (done, x) = (cb2.read_out(0), cb2.read_out(1));
    assert!(reference::hog_state_between(done, x, done), "{done} {x:#x}");
    // Something prepared for another class is refused, not misread.
    let foreign: coproc_core::device::PreparedFirmware = Box::new(HOG.elf.to_vec());
    assert!(matches!(
        dev.install_firmware(id2, foreign),
        Err(DeviceError::BadFirmware(_))
    ));
}

/// Firmware staged for another pcoproc's memory map of the same total size
/// (code and data split differently) cannot have its pages moved in as
/// they are: it is staged again for this map, and runs as the reference
/// says; one staged for this map replaces the context's memory, old code
/// included.
#[test]
fn firmware_staged_for_another_layout_is_staged_again_and_runs() {
    use coproc_core::device::Device;
    let (mut dev, _, _) = hog_device();
    let other = coproc_mcu::McuDevice::new(McuConfig {
        code_size: abi::DATA_SIZE,
        data_size: abi::CODE_SIZE,
        ..McuConfig::default()
    })
    .unwrap();
    let foreign = other.firmware_prep().prepare(HOG.elf).unwrap();
    let native = dev.firmware_prep().prepare(HOG.elf).unwrap();
    let id = coproc_core::VcoprocId(2);
    let cb = bare_context(&mut dev, id, ECHO.elf);
    for prepared in [foreign, native] {
        // First something else, run, so the slot holds other code.
        dev.load_firmware(id, ECHO.elf).unwrap();
        dev.switch(Some(id));
        dev.run(Duration::from_millis(2));
        let warm = dev.warm_installs();
        dev.install_firmware(id, prepared).unwrap();
        // Installed in full: the slot held other code.
        assert_eq!(dev.warm_installs(), warm);
        run_hog(&mut dev, id, &cb);
    }
}

#[test]
fn a_bad_image_is_refused_before_the_runner_is_involved() {
    let p = pcoproc(200);
    let v = p
        .create_vcoproc(DomainId(1), SchedParams::default())
        .unwrap();
    p.shutdown();
    // No runner is left: a refusal can only come from the loading thread.
    match v.load_firmware("bad", b"MZ\x90\x00 this is not an elf file at all....") {
        Err(CoreError::Device(DeviceError::BadFirmware(msg))) => {
            assert!(msg.contains("bad magic"), "{msg}");
        }
        other => panic!("expected a firmware error, got {other:?}"),
    }
    assert!(matches!(
        v.load_firmware("fir", FIR.elf),
        Err(CoreError::Shutdown(_))
    ));
}

/// CPUs this thread may run on.
fn allowed_cpus() -> Vec<usize> {
    let set = rustix::thread::sched_getaffinity(None).unwrap();
    (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| set.is_set(c))
        .collect()
}

/// Runner thread CPU time.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[test]
fn a_run_is_charged_the_cpu_time_it_got_not_the_wall_time() {
    use coproc_core::device::{Device, StopReason};
    use std::sync::atomic::{AtomicBool, Ordering};
    // Pin this thread, and the spinner it starts, to one CPU: they share
    // it, so the host deschedules the device's runner (this thread) for
    // part of every run. Where pinning is refused, one spinner per CPU
    // competes instead.
    let cpus = allowed_cpus();
    let mut one = rustix::thread::CpuSet::new();
    one.set(cpus[0]);
    let pinned = rustix::thread::sched_setaffinity(None, &one).is_ok();
    let (mut dev, _, cb) = hog_device();
    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..if pinned { 1 } else { cpus.len() })
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
                }
            })
        })
        .collect();
    let budget = Duration::from_millis(30);
    let mut contested = 0;
    for _ in 0..200 {
        let (wall0, cpu0) = (std::time::Instant::now(), thread_cpu());
        let out = dev.run(budget);
        let (wall, cpu) = (wall0.elapsed(), thread_cpu().checked_sub(cpu0).unwrap());
        assert_eq!(out.stop, StopReason::BudgetSpent);
        // Charged no more than the CPU time this thread had around the run
        // (a wall-clock charge exceeds it whenever the runner waited for
        // the CPU) ...
        assert!(out.ran <= cpu, "charged {:?} > CPU time {cpu:?}", out.ran);
        // ... and given its whole budget in CPU time, however long the
        // host kept it off the CPU.
        assert!(
            out.ran >= budget,
            "charged {:?} < budget {budget:?}",
            out.ran
        );
        // Count the runs where the runner really waited for the CPU (a
        // quarter of the budget or more).
        if wall >= cpu + budget / 4 {
            contested += 1;
            if contested == 3 {
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for s in spinners {
        s.join().unwrap();
    }
    assert!(cb.read_out(0) > 0, "the hog ran");
    assert_eq!(
        contested, 3,
        "the spinner never took the CPU from the runner"
    );
}

/// Sizes of this process's anonymous mappings (no path), from
/// `/proc/self/maps`.
fn anonymous_mapping_sizes() -> Vec<u64> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.split_whitespace().nth(5).is_none())
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some(u64::from_str_radix(b, 16).ok()? - u64::from_str_radix(a, 16).ok()?)
        })
        .collect()
}

/// The engine's translated-code buffer is `JIT_CACHE_BYTES`, not
/// Unicorn's 1 GiB default (whose pages stay resident as translations of
/// every firmware ever loaded fill it), and the engine still runs
/// firmware right from it.
#[test]
fn the_translated_code_buffer_is_capped() {
    let p = pcoproc(1000);
    let v = vcoproc(&p, 1, ECHO);
    v.start().unwrap();
    let w: [u32; 16] = std::array::from_fn(|i| 7 * i as u32 + 1);
    let out = drive::echo(&v, &w, T).unwrap();
    assert_eq!(out[..15], w[..15]);
    let sizes = anonymous_mapping_sizes();
    // The buffer less its guard page (a mapping of its own).
    let jit = u64::from(coproc_mcu::JIT_CACHE_BYTES) - 4096;
    assert!(
        sizes.contains(&jit),
        "no {jit:#x}-byte buffer in {sizes:x?}"
    );
    assert!(
        !sizes.contains(&((1u64 << 30) - 4096)),
        "a 1 GiB translation buffer is mapped"
    );
    p.shutdown();
}
