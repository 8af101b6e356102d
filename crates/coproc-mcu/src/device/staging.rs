//! Firmware laid out off the runner: the loading thread parses and
//! validates an image and writes it into a staged slot, an anonymous
//! mapping the size of a context's code and data memory; the runner then
//! moves the staged pages over the context's slot in one `mremap`
//! ([`super::memory::SlotMemory::replace`]) instead of zeroing and copying
//! megabytes between slices, which other domains would wait for.

use super::memory::map_anonymous;
use crate::abi::{CODE_BASE, DATA_BASE};
use crate::elf::{self, Image, MemoryMap};
use coproc_core::device::{DeviceError, FirmwarePrep, PreparedFirmware};

/// A slot's worth of memory (code, then data) outside the engine, owned
/// until it is installed or dropped.
#[derive(Debug)]
pub(super) struct StagedSlot {
    /// Host address of the mapping (0 once given away).
    host: usize,
    len: usize,
}

impl StagedSlot {
    /// A fresh zero-filled mapping of `len` bytes (pages are committed only
    /// where something is written).
    fn new(len: usize) -> Result<StagedSlot, DeviceError> {
        Ok(StagedSlot {
            host: map_anonymous(len, "firmware")?,
            len,
        })
    }

    /// Copy `bytes` to offset `off`, which must lie with them inside.
    fn write(&mut self, off: usize, bytes: &[u8]) -> Result<(), DeviceError> {
        if off
            .checked_add(bytes.len())
            .is_none_or(|end| end > self.len)
        {
            return Err(DeviceError::BadFirmware(format!(
                "segment of {} bytes at slot offset {off:#x} outside {} bytes",
                bytes.len(),
                self.len
            )));
        }
        // SAFETY: `[host + off, host + off + len)` lies inside this owned
        // read/write mapping (checked above), which no one else can reach
        // until it is installed (`&mut self`); `bytes` is a Rust slice
        // outside it, so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (self.host + off) as *mut u8,
                bytes.len(),
            );
        }
        Ok(())
    }

    /// Host address and length of the mapping.
    pub(super) fn range(&self) -> (usize, usize) {
        (self.host, self.len)
    }

    /// The mapping from offset `from` on now belongs to whoever moved it
    /// (its pages were moved elsewhere, and the address range is no longer
    /// this mapping's): what is left is the part before `from`, if any.
    pub(super) fn given_away_from(mut self, from: usize) -> Option<StagedSlot> {
        if from == 0 {
            self.host = 0;
            None
        } else {
            self.len = from.min(self.len);
            Some(self)
        }
    }
}

impl Drop for StagedSlot {
    fn drop(&mut self) {
        if self.host != 0 {
            // SAFETY: the mapping `new` made, still owned (not given away):
            // nothing else points into it.
            let _ = unsafe { rustix::mm::munmap(self.host as *mut _, self.len) };
        }
    }
}

/// What [`SlotPrep`] makes: the validated image, and its memory laid out
/// for the memory map it was made for.
#[derive(Debug)]
pub(super) struct Staged {
    pub(super) image: Image,
    pub(super) map: MemoryMap,
    pub(super) slot: StagedSlot,
}

/// Offset of virtual address `vaddr` (in code or data memory) inside a
/// slot of memory map `map`.
fn slot_offset(map: MemoryMap, vaddr: u32) -> usize {
    if vaddr >= DATA_BASE {
        map.code_size as usize + (vaddr - DATA_BASE) as usize
    } else {
        (vaddr - CODE_BASE) as usize
    }
}

/// The mcu class's [`FirmwarePrep`]: parse and validate for the pcoproc's
/// memory map ([`elf::parse_for`]), then stage the image's memory.
#[derive(Debug, Clone, Copy)]
pub(super) struct SlotPrep(pub(super) MemoryMap);

impl SlotPrep {
    /// `image` laid out in a slot of this memory map.
    pub(super) fn stage(self, image: &Image) -> Result<StagedSlot, DeviceError> {
        let map = self.0;
        let mut slot = StagedSlot::new(map.code_size as usize + map.data_size as usize)?;
        for s in &image.segments {
            slot.write(slot_offset(map, s.vaddr), &s.data)?;
        }
        Ok(slot)
    }
}

impl FirmwarePrep for SlotPrep {
    fn prepare(&self, bytes: &[u8]) -> Result<PreparedFirmware, DeviceError> {
        let image =
            elf::parse_for(bytes, &self.0).map_err(|e| DeviceError::BadFirmware(e.to_string()))?;
        let slot = self.stage(&image)?;
        Ok(Box::new(Staged {
            image,
            map: self.0,
            slot,
        }))
    }
}
