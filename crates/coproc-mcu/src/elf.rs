//! Firmware loading: parse and validate an ELF image before anything of it
//! reaches a context. Every field is hostile: sizes, offsets, addresses and
//! counts are checked with overflow-safe arithmetic.

use crate::abi::{CODE_BASE, CODE_SIZE, DATA_BASE, DATA_SIZE};
use coproc_core::device::{DeviceError, FirmwarePrep, PreparedFirmware};
use object::elf::{FileHeader32, ELFCLASS32, ELFDATA2LSB, EM_ARM, ET_EXEC, PF_W, PF_X, PT_LOAD};
use object::read::elf::{FileHeader, ProgramHeader};
use object::LittleEndian as LE;
use thiserror::Error;

/// Largest image accepted.
pub const MAX_IMAGE: usize = 4 << 20;
/// Most program headers accepted.
pub const MAX_SEGMENTS: usize = 16;

/// Why an image was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ElfError {
    /// Larger than [`MAX_IMAGE`].
    #[error("image of {0} bytes is larger than {MAX_IMAGE}")]
    TooLarge(usize),
    /// Not parseable as ELF.
    #[error("not a valid ELF file: {0}")]
    Malformed(String),
    /// Not ELF32 little-endian.
    #[error("not a 32-bit little-endian ELF")]
    WrongClass,
    /// Not for ARM.
    #[error("wrong machine {0} (want EM_ARM = 40)")]
    WrongMachine(u16),
    /// Not an executable.
    #[error("ELF type {0} is not an executable")]
    NotExecutable(u16),
    /// Too many program headers.
    #[error("{0} program headers (at most {MAX_SEGMENTS})")]
    TooManySegments(usize),
    /// File size larger than memory size.
    #[error("segment at {vaddr:#x}: file size {filesz:#x} > memory size {memsz:#x}")]
    FileLargerThanMemory {
        /// Address.
        vaddr: u32,
        /// File bytes.
        filesz: u32,
        /// Memory bytes.
        memsz: u32,
    },
    /// Segment outside code and data memory, or straddling both.
    #[error("segment {vaddr:#x}+{memsz:#x} is outside code and data memory")]
    OutsideMemory {
        /// Address.
        vaddr: u32,
        /// Memory bytes.
        memsz: u32,
    },
    /// Writable segment in code memory or executable one in data memory.
    #[error("segment at {0:#x} breaks W^X (code is read/exec, data read/write)")]
    BadPermissions(u32),
    /// Two segments overlap.
    #[error("segments at {0:#x} and {1:#x} overlap")]
    Overlap(u32, u32),
    /// Entry point not in a loaded code segment, or not Thumb.
    #[error("entry point {0:#x} is not Thumb code inside a loaded code segment")]
    BadEntry(u32),
    /// Nothing to load.
    #[error("no loadable segments")]
    Empty,
}

/// One loadable segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Where it goes.
    pub vaddr: u32,
    /// Bytes from the file.
    pub data: Vec<u8>,
    /// Size in memory (the rest zero).
    pub memsz: u32,
}

/// A validated image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Entry point (Thumb bit set).
    pub entry: u32,
    /// Its segments, sorted by address.
    pub segments: Vec<Segment>,
}

impl Image {
    /// Bytes in code memory.
    pub fn code_bytes(&self) -> u64 {
        self.segments
            .iter()
            .filter(|s| in_code(s.vaddr))
            .map(|s| u64::from(s.memsz))
            .sum()
    }

    /// Bytes in data memory.
    pub fn data_bytes(&self) -> u64 {
        self.segments
            .iter()
            .filter(|s| !in_code(s.vaddr))
            .map(|s| u64::from(s.memsz))
            .sum()
    }
}

fn in_code(a: u32) -> bool {
    a.wrapping_sub(CODE_BASE) < CODE_SIZE
}

fn within(vaddr: u32, memsz: u32, base: u32, size: u32) -> bool {
    let (v, m, b, s) = (
        u64::from(vaddr),
        u64::from(memsz),
        u64::from(base),
        u64::from(size),
    );
    v >= b && v + m <= b + s
}

/// The mcu class's [`FirmwarePrep`]: parses and validates an ELF image into
/// an [`Image`] on the loading thread. It holds no device state, so it works
/// on any thread while the runner runs (or after the device is gone);
/// installing the image only copies its segments.
#[derive(Debug, Default, Clone, Copy)]
pub struct ElfPrep;

impl FirmwarePrep for ElfPrep {
    fn prepare(&self, image: &[u8]) -> Result<PreparedFirmware, DeviceError> {
        let image = parse(image).map_err(|e| DeviceError::BadFirmware(e.to_string()))?;
        Ok(Box::new(image))
    }
}

/// Parse and validate `bytes` as mcu firmware. The bytes may sit at any
/// alignment.
pub fn parse(bytes: &[u8]) -> Result<Image, ElfError> {
    if bytes.len() > MAX_IMAGE {
        return Err(ElfError::TooLarge(bytes.len()));
    }
    if bytes.as_ptr().align_offset(8) != 0 {
        // The ELF structures are read in place and need their alignment.
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: `words` owns at least `bytes.len()` initialised bytes; a
        // u64 buffer viewed as bytes has no invalid values and the view does
        // not outlive `words`.
        let aligned =
            unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), bytes.len()) };
        aligned.copy_from_slice(bytes);
        return parse_aligned(aligned);
    }
    parse_aligned(bytes)
}

fn parse_aligned(bytes: &[u8]) -> Result<Image, ElfError> {
    let ident = bytes
        .get(..16)
        .ok_or_else(|| ElfError::Malformed("shorter than an ELF header".into()))?;
    if &ident[..4] != b"\x7fELF" {
        return Err(ElfError::Malformed("bad magic".into()));
    }
    if ident[4] != ELFCLASS32 || ident[5] != ELFDATA2LSB {
        return Err(ElfError::WrongClass);
    }
    let hdr = FileHeader32::<LE>::parse(bytes).map_err(|e| ElfError::Malformed(e.to_string()))?;
    let e = LE;
    if hdr.e_machine(e) != EM_ARM {
        return Err(ElfError::WrongMachine(hdr.e_machine(e)));
    }
    if hdr.e_type(e) != ET_EXEC {
        return Err(ElfError::NotExecutable(hdr.e_type(e)));
    }
    let phdrs = hdr
        .program_headers(e, bytes)
        .map_err(|e| ElfError::Malformed(e.to_string()))?;
    if phdrs.len() > MAX_SEGMENTS {
        return Err(ElfError::TooManySegments(phdrs.len()));
    }
    let mut segments = Vec::new();
    for ph in phdrs.iter().filter(|p| p.p_type(e) == PT_LOAD) {
        let (vaddr, filesz, memsz) = (ph.p_vaddr(e), ph.p_filesz(e), ph.p_memsz(e));
        if filesz > memsz {
            return Err(ElfError::FileLargerThanMemory {
                vaddr,
                filesz,
                memsz,
            });
        }
        if memsz == 0 {
            continue;
        }
        let flags = ph.p_flags(e);
        if within(vaddr, memsz, CODE_BASE, CODE_SIZE) {
            if flags & PF_W != 0 {
                return Err(ElfError::BadPermissions(vaddr));
            }
        } else if within(vaddr, memsz, DATA_BASE, DATA_SIZE) {
            if flags & PF_X != 0 {
                return Err(ElfError::BadPermissions(vaddr));
            }
        } else {
            return Err(ElfError::OutsideMemory { vaddr, memsz });
        }
        let data = ph.data(e, bytes).map_err(|_| {
            ElfError::Malformed(format!(
                "segment at {vaddr:#x} runs past the end of the file"
            ))
        })?;
        segments.push(Segment {
            vaddr,
            data: data.to_vec(),
            memsz,
        });
    }
    if segments.is_empty() {
        return Err(ElfError::Empty);
    }
    segments.sort_by_key(|s| s.vaddr);
    for w in segments.windows(2) {
        if u64::from(w[0].vaddr) + u64::from(w[0].memsz) > u64::from(w[1].vaddr) {
            return Err(ElfError::Overlap(w[0].vaddr, w[1].vaddr));
        }
    }
    let entry = hdr.e_entry(e);
    let pc = entry & !1;
    let ok = entry & 1 == 1
        && segments
            .iter()
            .any(|s| in_code(s.vaddr) && pc >= s.vaddr && pc - s.vaddr < s.memsz);
    if !ok {
        return Err(ElfError::BadEntry(entry));
    }
    Ok(Image { entry, segments })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misaligned_input_parses_the_same() {
        let good = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../firmware/sdk/link.ld"
        ))
        .unwrap();
        assert!(parse(&good).is_err(), "a linker script is not ELF");
        // A minimal valid image: one code segment with the entry point.
        let mut elf = vec![0u8; 52 + 32 + 8];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 1; // ELFCLASS32
        elf[5] = 1; // little endian
        elf[6] = 1; // version
        elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf[18..20].copy_from_slice(&40u16.to_le_bytes()); // EM_ARM
        elf[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf[24..28].copy_from_slice(&1u32.to_le_bytes()); // entry 0 | thumb
        elf[28..32].copy_from_slice(&52u32.to_le_bytes()); // e_phoff
        elf[40..42].copy_from_slice(&52u16.to_le_bytes()); // e_ehsize
        elf[42..44].copy_from_slice(&32u16.to_le_bytes()); // e_phentsize
        elf[44..46].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let ph = 52;
        elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        elf[ph + 4..ph + 8].copy_from_slice(&84u32.to_le_bytes()); // offset
        elf[ph + 16..ph + 20].copy_from_slice(&8u32.to_le_bytes()); // filesz
        elf[ph + 20..ph + 24].copy_from_slice(&8u32.to_le_bytes()); // memsz
        elf[ph + 24..ph + 28].copy_from_slice(&5u32.to_le_bytes()); // R+X
        let a = parse(&elf).unwrap();
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&elf);
        let b = parse(&shifted[1..]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.entry, 1);
        assert_eq!(a.code_bytes(), 8);
    }
}
