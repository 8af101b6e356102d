//! Domain-side drivers for the example firmware: how a domain feeds a job to
//! its vcoproc and collects the answer. Used by the demo, the tests and the
//! benchmarks; the answers are checked against [`crate::reference`].

use coproc_core::iova::{MapKind, Perms};
use coproc_core::memory::{MemoryError, Region};
use coproc_core::{CoreError, VcoprocHandle};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Where the drivers map their buffer (the start of the mcu iova window).
pub const BUFFER_IOVA: u64 = 0x6000_0000;

/// Errors of the drivers.
#[derive(Debug, Error)]
pub enum DriveError {
    /// From the framework.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// From the shared memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The firmware answered something malformed.
    #[error("firmware answered {0}")]
    BadAnswer(String),
    /// The job does not fit the buffer.
    #[error("job needs {need} bytes, buffer has {have}")]
    TooBig {
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        have: u64,
    },
}

/// A buffer of domain memory mapped read/write at [`BUFFER_IOVA`].
#[derive(Debug, Clone)]
pub struct Buffer {
    /// The memory.
    pub region: Arc<Region>,
    /// Where the vcoproc sees it.
    pub iova: u64,
}

impl Buffer {
    /// Allocate `len` bytes (rounded up to pages) and map them into `v`.
    pub fn map(v: &VcoprocHandle, len: u64, kind: MapKind) -> Result<Buffer, DriveError> {
        let len = len.div_ceil(4096).max(1) * 4096;
        let region = Arc::new(Region::new(len)?);
        v.map(&region, 0, BUFFER_IOVA, len, Perms::RW, kind)?;
        Ok(Buffer {
            region,
            iova: BUFFER_IOVA,
        })
    }

    fn need(&self, need: u64) -> Result<(), DriveError> {
        if need > self.region.len() {
            return Err(DriveError::TooBig {
                need,
                have: self.region.len(),
            });
        }
        Ok(())
    }
}

fn kick(v: &VcoprocHandle, words: &[u32], timeout: Duration) -> Result<u32, DriveError> {
    let seq = v.last_notify().seq;
    for (i, w) in words.iter().enumerate() {
        v.mbox_write(i, *w);
    }
    v.doorbell();
    Ok(v.wait_notify(seq, timeout)?.tag)
}

fn to_bytes(s: &[i16]) -> Vec<u8> {
    s.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Run one FIR job on a vcoproc running the `fir` firmware.
pub fn fir(
    v: &VcoprocHandle,
    buf: &Buffer,
    x: &[i16],
    h: &[i16],
    tag: u32,
    timeout: Duration,
) -> Result<Vec<i16>, DriveError> {
    let (xl, hl) = (2 * x.len() as u64, 2 * h.len() as u64);
    let (x_off, y_off, h_off) = (0, xl, 2 * xl);
    buf.need(2 * xl + hl)?;
    buf.region.write(x_off, &to_bytes(x))?;
    buf.region.write(h_off, &to_bytes(h))?;
    let base = buf.iova as u32;
    let args = [
        base + x_off as u32,
        base + y_off as u32,
        x.len() as u32,
        base + h_off as u32,
        h.len() as u32,
        tag,
    ];
    let got = kick(v, &args, timeout)?;
    let (status, done, echoed) = (v.mbox_read(0), v.mbox_read(1), v.mbox_read(2));
    if got != tag || echoed != tag || status != 0 || done as usize != x.len() {
        return Err(DriveError::BadAnswer(format!(
            "status {status}, {done} samples, tag {echoed}/{got} (want {tag})"
        )));
    }
    let raw = buf.region.read_vec(y_off, xl)?;
    Ok(raw
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect())
}

/// Run one CRC-32 job on a vcoproc running the `crc32` firmware.
pub fn crc32(
    v: &VcoprocHandle,
    buf: &Buffer,
    data: &[u8],
    tag: u32,
    timeout: Duration,
) -> Result<u32, DriveError> {
    buf.need(data.len() as u64)?;
    buf.region.write(0, data)?;
    let got = kick(v, &[buf.iova as u32, data.len() as u32, tag], timeout)?;
    let (status, crc, echoed) = (v.mbox_read(0), v.mbox_read(1), v.mbox_read(2));
    if got != tag || echoed != tag || status != 0 {
        return Err(DriveError::BadAnswer(format!(
            "status {status}, tag {echoed}/{got} (want {tag})"
        )));
    }
    Ok(crc)
}

/// Send one message to a vcoproc running the `echo` firmware.
pub fn echo(
    v: &VcoprocHandle,
    words: &[u32; 16],
    timeout: Duration,
) -> Result<[u32; 16], DriveError> {
    kick(v, &words[..15], timeout)?;
    let mut out = [0u32; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = v.mbox_read(i);
    }
    Ok(out)
}

/// Ask a vcoproc running the `probe` firmware to do one operation
/// (1 read, 2 write, 3 call, 4 undefined instruction, 5 exit).
pub fn probe(
    v: &VcoprocHandle,
    op: u32,
    addr: u32,
    value: u32,
    timeout: Duration,
) -> Result<u32, DriveError> {
    kick(v, &[op, addr, value], timeout)?;
    Ok(v.mbox_read(1))
}
