//! Firmware loading: parse and validate an ELF image before anything of it
//! reaches a context, against the pcoproc's memory map ([`MemoryMap`]: its
//! code and data memory sizes). Every field is hostile: sizes, offsets,
//! addresses and counts are checked with overflow-safe arithmetic.

use crate::abi::{CODE_BASE, CODE_SIZE, DATA_BASE, DATA_SIZE};
use coproc_core::device::{DeviceError, FirmwarePrep, PreparedFirmware};
use object::elf::{FileHeader32, ELFCLASS32, ELFDATA2LSB, EM_ARM, ET_EXEC, PF_W, PF_X, PT_LOAD};
use object::read::elf::{FileHeader, ProgramHeader};
use object::LittleEndian as LE;
use thiserror::Error;

/// Largest image accepted.
pub const MAX_IMAGE: usize = 4 << 20;
/// Largest code memory a pcoproc may be configured with.
pub const MAX_CODE_SIZE: u32 = 16 << 20;
/// Largest data memory a pcoproc may be configured with.
pub const MAX_DATA_SIZE: u32 = 16 << 20;
/// Smallest code or data memory (one page).
pub const MIN_MEMORY_SIZE: u32 = 4096;

/// The sizes of a vcoproc's code memory (at [`CODE_BASE`]) and data memory
/// (at [`DATA_BASE`]) on one pcoproc. The defaults are [`CODE_SIZE`] and
/// [`DATA_SIZE`] (1 MiB and 256 KiB, a common Cortex-M4 part's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMap {
    /// Bytes of code memory.
    pub code_size: u32,
    /// Bytes of data memory; the stack starts at its top.
    pub data_size: u32,
}

impl Default for MemoryMap {
    fn default() -> Self {
        MemoryMap {
            code_size: CODE_SIZE,
            data_size: DATA_SIZE,
        }
    }
}

impl MemoryMap {
    /// Both sizes whole pages within [`MIN_MEMORY_SIZE`]..=[`MAX_CODE_SIZE`]
    /// (code) and ..=[`MAX_DATA_SIZE`] (data).
    pub fn validate(&self) -> Result<(), ElfError> {
        let ok = |n: u32, max: u32| (MIN_MEMORY_SIZE..=max).contains(&n) && n.is_multiple_of(4096);
        if !ok(self.code_size, MAX_CODE_SIZE) || !ok(self.data_size, MAX_DATA_SIZE) {
            return Err(ElfError::BadMap(*self));
        }
        Ok(())
    }

    /// One past the last byte of data memory: the initial SP.
    pub fn stack_top(&self) -> u32 {
        DATA_BASE + self.data_size
    }

    fn in_code(self, a: u32) -> bool {
        a.wrapping_sub(CODE_BASE) < self.code_size
    }
}
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
    /// The image starts with a vector table whose initial SP lies outside
    /// data memory (linked for a larger data memory than the pcoproc's).
    #[error(
        "the vector table's initial SP {sp:#x} is outside data memory (ends at {end:#x}): \
         linked for a larger data memory than this pcoproc's?"
    )]
    StackOutsideData {
        /// Word 0 of the vector table.
        sp: u32,
        /// One past data memory.
        end: u32,
    },
    /// Code or data memory sizes out of range.
    #[error(
        "code memory of {} bytes and data memory of {} bytes: each must be whole 4 KiB pages, \
         code at most {MAX_CODE_SIZE}, data at most {MAX_DATA_SIZE}",
        .0.code_size,
        .0.data_size
    )]
    BadMap(MemoryMap),
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

/// Where an image's code segments go: (address, bytes from the file, size
/// in memory) each ([`Image::code_layout`]).
pub type CodeLayout = Vec<(u32, usize, u32)>;

/// A validated image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Entry point (Thumb bit set).
    pub entry: u32,
    /// Its segments, sorted by address.
    pub segments: Vec<Segment>,
    /// The image starts with a Cortex-M vector table: (initial SP, reset
    /// handler), which the vcoproc starts from instead of the ELF entry
    /// point and the top of data memory.
    pub vectors: Option<(u32, u32)>,
}

impl Image {
    /// Its code segments.
    pub fn code_segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(|s| s.vaddr < DATA_BASE)
    }

    /// Where its code segments go and their sizes: (address, bytes from
    /// the file, size in memory) each. Two images with the same layout put
    /// the same bytes in code memory exactly when their segments' bytes
    /// are the same (code memory is zero elsewhere).
    pub fn code_layout(&self) -> CodeLayout {
        self.code_segments()
            .map(|s| (s.vaddr, s.data.len(), s.memsz))
            .collect()
    }

    /// Bytes in code memory.
    pub fn code_bytes(&self) -> u64 {
        self.segments
            .iter()
            .filter(|s| s.vaddr < DATA_BASE)
            .map(|s| u64::from(s.memsz))
            .sum()
    }

    /// Bytes in data memory.
    pub fn data_bytes(&self) -> u64 {
        self.segments
            .iter()
            .filter(|s| s.vaddr >= DATA_BASE)
            .map(|s| u64::from(s.memsz))
            .sum()
    }

    /// Whether every segment, and the initial SP of its vector table, lies
    /// inside the memory map `map`.
    pub fn fits(&self, map: &MemoryMap) -> bool {
        let segs = self.segments.iter().all(|s| {
            within(s.vaddr, s.memsz, CODE_BASE, map.code_size)
                || within(s.vaddr, s.memsz, DATA_BASE, map.data_size)
        });
        segs && self.vectors.is_none_or(|(sp, _)| sp <= map.stack_top())
    }

    /// Where the vcoproc starts: (SP, PC with the Thumb bit) — from the
    /// vector table if the image has one, else the top of data memory and
    /// the ELF entry point.
    pub fn start(&self, map: &MemoryMap) -> (u32, u32) {
        self.vectors.unwrap_or((map.stack_top(), self.entry))
    }
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

/// The mcu class's [`FirmwarePrep`] for the default memory map: parses and
/// validates an ELF image into an [`Image`] on the loading thread. It holds
/// no device state, so it works on any thread while the runner runs (or
/// after the device is gone); installing the image only copies its
/// segments.
#[derive(Debug, Default, Clone, Copy)]
pub struct ElfPrep;

impl FirmwarePrep for ElfPrep {
    fn prepare(&self, image: &[u8]) -> Result<PreparedFirmware, DeviceError> {
        ElfPrepFor(MemoryMap::default()).prepare(image)
    }
}

/// [`ElfPrep`] for a pcoproc's own memory map.
#[derive(Debug, Clone, Copy)]
pub struct ElfPrepFor(pub MemoryMap);

impl FirmwarePrep for ElfPrepFor {
    fn prepare(&self, image: &[u8]) -> Result<PreparedFirmware, DeviceError> {
        let image =
            parse_for(image, &self.0).map_err(|e| DeviceError::BadFirmware(e.to_string()))?;
        Ok(Box::new(image))
    }
}

/// Parse and validate `bytes` as mcu firmware for the default memory map.
/// The bytes may sit at any alignment.
pub fn parse(bytes: &[u8]) -> Result<Image, ElfError> {
    parse_for(bytes, &MemoryMap::default())
}

/// Parse and validate `bytes` as mcu firmware for the memory map `map`.
pub fn parse_for(bytes: &[u8], map: &MemoryMap) -> Result<Image, ElfError> {
    map.validate()?;
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
        return parse_aligned(aligned, *map);
    }
    parse_aligned(bytes, *map)
}

fn parse_aligned(bytes: &[u8], map: MemoryMap) -> Result<Image, ElfError> {
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
        if within(vaddr, memsz, CODE_BASE, map.code_size) {
            if flags & PF_W != 0 {
                return Err(ElfError::BadPermissions(vaddr));
            }
        } else if within(vaddr, memsz, DATA_BASE, map.data_size) {
            if flags & PF_X != 0 {
                return Err(ElfError::BadPermissions(vaddr));
            }
        } else {
            return Err(ElfError::OutsideMemory { vaddr, memsz });
        }
        let data = ph.data(e, bytes).map_err(|()| {
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
            .any(|s| map.in_code(s.vaddr) && pc >= s.vaddr && pc - s.vaddr < s.memsz);
    if !ok {
        return Err(ElfError::BadEntry(entry));
    }
    let vectors = vector_table(&segments, map)?;
    Ok(Image {
        entry,
        segments,
        vectors,
    })
}

/// The end of the Cortex-M SRAM region, where data memory lies.
const SRAM_END: u32 = 0x4000_0000;

/// A Cortex-M vector table at the start of code memory: word 0 an initial
/// SP in the data region (0x2000_0000..0x4000_0000, word aligned), word 1
/// a Thumb address inside a loaded code segment. Found, its SP must lie
/// inside this pcoproc's data memory (the image was linked for it).
fn vector_table(segments: &[Segment], map: MemoryMap) -> Result<Option<(u32, u32)>, ElfError> {
    let Some(first) = segments.iter().find(|s| s.vaddr == CODE_BASE) else {
        return Ok(None);
    };
    let word = |i: usize| -> Option<u32> {
        let b = first.data.get(4 * i..4 * i + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (Some(sp), Some(reset)) = (word(0), word(1)) else {
        return Ok(None);
    };
    let stack_like = sp > DATA_BASE && sp <= SRAM_END && sp.is_multiple_of(4);
    let code = |a: u32| {
        segments
            .iter()
            .any(|s| map.in_code(s.vaddr) && a.wrapping_sub(s.vaddr) < s.memsz)
    };
    if !stack_like || reset & 1 == 0 || !code(reset & !1) {
        return Ok(None);
    }
    if sp > map.stack_top() {
        return Err(ElfError::StackOutsideData {
            sp,
            end: map.stack_top(),
        });
    }
    Ok(Some((sp, reset)))
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
