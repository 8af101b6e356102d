//! The same firmware run directly on Unicorn, in-process, with no framework:
//! no contexts, no virtual TLB, no runner, no scheduler. Its memory map is
//! mapped one-to-one and the control block is served by the smallest handler
//! that lets the firmware run. The overhead benchmark compares the framework
//! against it, side by side in one run.

// The benchmark baseline's own sizes and addresses, all inside the 32-bit map.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use crate::abi::{
    CB_BASE, CB_DOORBELL, CB_DOORBELL_ACK, CB_MBOX_IN, CB_MBOX_OUT, CB_NOTIFY, CB_SIZE, CB_WAIT,
    CODE_BASE, CODE_SIZE, DATA_BASE, DATA_SIZE, IOVA_BASE, IOVA_SIZE,
};
use crate::elf::{self, ElfError};
use coproc_core::memory::Region;
use std::time::{Duration, Instant};
use thiserror::Error;
use unicorn_engine::{
    uc_error, Arch, ArmCpuModel, Mode, Prot, RegisterARM, TlbEntry, TlbType, Unicorn,
};

/// How the bare core translates addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Translation {
    /// Unicorn's default: the CPU model's own (M-profile default memory map).
    Cpu,
    /// Virtual-TLB mode with a fixed translation hook placing code, data and
    /// the buffer in physical memory as the mcu device does, for one context.
    Identity,
}

/// Errors of the baseline harness.
#[derive(Debug, Error)]
pub enum BaselineError {
    /// The image was refused.
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// Unicorn refused something.
    #[error("unicorn: {0:?}")]
    Unicorn(uc_error),
    /// The firmware stopped for another reason than WAIT.
    #[error("firmware stopped unexpectedly at pc {0:#x}")]
    Stopped(u64),
    /// Host memory could not be had.
    #[error("memory: {0}")]
    Memory(String),
    /// A buffer does not fit.
    #[error("buffer of {0} bytes is larger than the iova window")]
    TooLarge(usize),
}

impl From<uc_error> for BaselineError {
    fn from(e: uc_error) -> Self {
        BaselineError::Unicorn(e)
    }
}

#[derive(Debug, Default)]
struct Cb {
    mbox_in: [u32; 16],
    mbox_out: [u32; 16],
    rung: u32,
    acked: u32,
    notified: u32,
    parked: bool,
}

/// A bare Cortex-M4 running one firmware image.
pub struct Bare {
    uc: Unicorn<'static, Cb>,
    /// Host memory behind the buffer (mapped zero-copy, like the framework's).
    buffer: Region,
}

impl std::fmt::Debug for Bare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bare")
    }
}

impl Bare {
    /// Load `image` and map `buffer_len` bytes of RAM at [`IOVA_BASE`].
    pub fn new(
        image: &[u8],
        buffer_len: usize,
        translation: Translation,
    ) -> Result<Bare, BaselineError> {
        let img = elf::parse(image)?;
        if buffer_len as u64 > u64::from(IOVA_SIZE) {
            return Err(BaselineError::TooLarge(buffer_len));
        }
        let mut uc = Unicorn::new_with_data(Arch::ARM, Mode::THUMB | Mode::MCLASS, Cb::default())?;
        uc.ctl_set_cpu_model(ArmCpuModel::CORTEX_M4 as i32)?;
        uc.ctl_exits_enable()?;
        uc.ctl_set_exits(&[])?;
        if translation == Translation::Identity {
            uc.ctl_set_tlb_type(TlbType::VIRTUAL)?;
            uc.add_tlb_hook(0, u64::MAX, |_, vaddr, _| {
                let paddr = match vaddr as u32 {
                    v if v < CODE_SIZE => 0x8000_0000 + vaddr,
                    v if (DATA_BASE..DATA_BASE + DATA_SIZE).contains(&v) => {
                        0x8000_0000 + u64::from(CODE_SIZE) + vaddr - u64::from(DATA_BASE)
                    }
                    v if (IOVA_BASE..IOVA_BASE + IOVA_SIZE).contains(&v) => {
                        0x9000_0000 + vaddr - u64::from(IOVA_BASE)
                    }
                    _ => vaddr,
                };
                Some(TlbEntry {
                    paddr,
                    perms: Prot::ALL,
                })
            })?;
        }
        let (code_at, data_at, buf_at) = match translation {
            Translation::Cpu => (
                u64::from(CODE_BASE),
                u64::from(DATA_BASE),
                u64::from(IOVA_BASE),
            ),
            Translation::Identity => (0x8000_0000, 0x8000_0000 + u64::from(CODE_SIZE), 0x9000_0000),
        };
        uc.mem_map(code_at, u64::from(CODE_SIZE), Prot::ALL)?;
        uc.mem_map(data_at, u64::from(DATA_SIZE), Prot::ALL)?;
        let buf = (buffer_len as u64).div_ceil(4096).max(1) * 4096;
        let buffer = Region::new(buf).map_err(|e| BaselineError::Memory(e.to_string()))?;
        // SAFETY: `buffer` is `buf` bytes of live host memory owned by the
        // returned `Bare`, which also owns the engine: the mapping never
        // outlives the memory.
        unsafe {
            uc.mem_map_ptr(
                buf_at,
                buf,
                Prot::READ | Prot::WRITE,
                buffer.as_ptr().cast(),
            )?;
        };
        for s in &img.segments {
            let at = if s.vaddr >= DATA_BASE {
                data_at + u64::from(s.vaddr - DATA_BASE)
            } else {
                code_at + u64::from(s.vaddr)
            };
            uc.mem_write(at, &s.data)?;
        }
        uc.mmio_map(
            u64::from(CB_BASE),
            u64::from(CB_SIZE),
            Some(|uc: &mut Unicorn<'_, Cb>, off: u64, _size: usize| {
                let cb = uc.get_data();
                u64::from(match off as u32 {
                    CB_DOORBELL if cb.parked => cb.acked,
                    CB_DOORBELL => cb.rung,
                    CB_DOORBELL_ACK => cb.acked,
                    o if (CB_MBOX_IN..CB_MBOX_IN + 64).contains(&o) => {
                        cb.mbox_in[((o - CB_MBOX_IN) / 4) as usize]
                    }
                    _ => 0,
                })
            }),
            Some(
                |uc: &mut Unicorn<'_, Cb>, off: u64, _size: usize, value: u64| {
                    let cb = uc.get_data_mut();
                    match off as u32 {
                        CB_WAIT if cb.rung == cb.acked => {
                            cb.parked = true;
                            let _ = uc.emu_stop();
                        }
                        CB_DOORBELL_ACK if !cb.parked => cb.acked = value as u32,
                        CB_NOTIFY => cb.notified = value as u32,
                        o if (CB_MBOX_OUT..CB_MBOX_OUT + 64).contains(&o) => {
                            cb.mbox_out[((o - CB_MBOX_OUT) / 4) as usize] = value as u32;
                        }
                        _ => {}
                    }
                },
            ),
        )?;
        uc.reg_write(RegisterARM::SP, u64::from(DATA_BASE + DATA_SIZE))?;
        uc.reg_write(RegisterARM::PC, u64::from(img.entry & !1))?;
        let mut bare = Bare { uc, buffer };
        bare.resume()?;
        Ok(bare)
    }

    /// Run until the firmware parks on WAIT.
    fn resume(&mut self) -> Result<(), BaselineError> {
        self.uc.get_data_mut().parked = false;
        let pc = self.uc.reg_read(RegisterARM::PC)?;
        self.uc.emu_start(pc | 1, 0, 0, 0)?;
        if !self.uc.get_data().parked {
            return Err(BaselineError::Stopped(self.uc.reg_read(RegisterARM::PC)?));
        }
        Ok(())
    }

    /// Write the buffer.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), BaselineError> {
        self.buffer
            .write(offset, data)
            .map_err(|e| BaselineError::Memory(e.to_string()))
    }

    /// Read the buffer.
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, BaselineError> {
        self.buffer
            .read_vec(offset, len as u64)
            .map_err(|e| BaselineError::Memory(e.to_string()))
    }

    /// Put `words` in the mailbox, ring once and run until the firmware parks
    /// again; returns mailbox-out and the time the core ran.
    pub fn job(&mut self, words: &[u32]) -> Result<([u32; 16], Duration), BaselineError> {
        let cb = self.uc.get_data_mut();
        cb.mbox_in[..words.len()].copy_from_slice(words);
        cb.rung = cb.rung.wrapping_add(1);
        let t = Instant::now();
        self.resume()?;
        Ok((self.uc.get_data().mbox_out, t.elapsed()))
    }
}
