//! The mcu class's ELF loader (`coproc_mcu::elf::parse`, through `ElfPrep`
//! as the loading thread runs it): an accepted image keeps every promise
//! the device relies on when it copies the segments in.

#![no_main]

use coproc_core::device::FirmwarePrep;
use coproc_mcu::abi::{CODE_BASE, CODE_SIZE, DATA_BASE, DATA_SIZE};
use coproc_mcu::elf::{parse, ElfPrep, Image, MAX_SEGMENTS};
use libfuzzer_sys::fuzz_target;

/// Whether `[vaddr, vaddr + memsz)` lies inside `[base, base + size)`.
fn inside(vaddr: u32, memsz: u32, base: u32, size: u32) -> bool {
    let (v, m, b, s) = (
        u64::from(vaddr),
        u64::from(memsz),
        u64::from(base),
        u64::from(size),
    );
    v >= b && v + m <= b + s
}

fn check(img: &Image) {
    assert!(!img.segments.is_empty());
    assert!(img.segments.len() <= MAX_SEGMENTS);
    assert_eq!(img.entry & 1, 1, "entry must be Thumb");
    let entry = img.entry & !1;
    let mut entry_in_code = false;
    for s in &img.segments {
        assert!(s.data.len() as u64 <= u64::from(s.memsz));
        let code = inside(s.vaddr, s.memsz, CODE_BASE, CODE_SIZE);
        let data = inside(s.vaddr, s.memsz, DATA_BASE, DATA_SIZE);
        assert!(
            code || data,
            "segment {:#x}+{:#x} outside memory",
            s.vaddr,
            s.memsz
        );
        if code && entry >= s.vaddr && u64::from(entry) < u64::from(s.vaddr) + u64::from(s.memsz) {
            entry_in_code = true;
        }
    }
    assert!(entry_in_code, "entry {:#x} outside code", img.entry);
    for w in img.segments.windows(2) {
        assert!(u64::from(w[0].vaddr) + u64::from(w[0].memsz) <= u64::from(w[1].vaddr));
    }
    assert!(img.code_bytes() <= u64::from(CODE_SIZE));
    assert!(img.data_bytes() <= u64::from(DATA_SIZE));
}

fuzz_target!(|data: &[u8]| {
    let parsed = parse(data);
    if let Ok(img) = &parsed {
        check(img);
    }
    // Misaligned input parses the same.
    let mut shifted = vec![0u8; data.len() + 1];
    shifted[1..].copy_from_slice(data);
    assert_eq!(parse(&shifted[1..]), parsed);
    assert_eq!(ElfPrep.prepare(data).is_ok(), parsed.is_ok());
});
