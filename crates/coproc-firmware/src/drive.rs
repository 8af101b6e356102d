//! Domain-side drivers for the example firmware: how a domain feeds a job to
//! its vcoproc and collects the answer. Used by the demo, the tests and the
//! benchmarks; the answers are checked against [`crate::reference`].
//!
//! The drivers work through two small traits, so the same code drives a
//! vcoproc in-process ([`VcoprocHandle`] + [`Buffer`]) or through the daemon
//! (the client SDK implements them in the `coproc` CLI).

// The drivers' own sizes and addresses: iovas and lengths of the 32-bit mailbox ABI, chosen by the caller, never by a device.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use coproc_core::iova::{MapKind, Perms};
use coproc_core::memory::{MemoryError, Region};
use coproc_core::{CoreError, VcoprocHandle};
use coproc_proto::queue::QueueMem;
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
    /// The transport to the vcoproc failed (daemon path).
    #[error("{0}")]
    Port(String),
    /// The job does not fit the buffer.
    #[error("job needs {need} bytes, buffer has {have}")]
    TooBig {
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        have: u64,
    },
}

/// Domain memory holding a queue, for a domain in the same process as its
/// pcoproc (tests, the in-process demo and benchmarks): the
/// [`coproc_proto::queue::QueueMem`] the domain's [`coproc_proto::queue::Producer`]
/// works on (the region's own, `coproc_core::shared`).
#[derive(Debug, Clone)]
pub struct RegionQueue(pub Arc<Region>);

impl QueueMem for RegionQueue {
    fn len(&self) -> u64 {
        QueueMem::len(&*self.0)
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) {
        self.0.read_at(off, buf);
    }
    fn write_at(&self, off: u64, data: &[u8]) {
        self.0.write_at(off, data);
    }
    fn load_index(&self, off: u64) -> u32 {
        self.0.load_index(off)
    }
    fn store_index(&self, off: u64, v: u32) {
        self.0.store_index(off, v);
    }
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
}

/// A vcoproc as a domain drives it: mailbox, doorbell, notifications.
pub trait Port {
    /// Sequence number of the latest notification.
    fn last_seq(&self) -> Result<u64, DriveError>;
    /// Write `words` to mailbox-in from word 0, then ring the doorbell.
    fn post(&self, words: &[u32]) -> Result<(), DriveError>;
    /// Wait for a notification newer than `after`; returns its sequence
    /// number and tag.
    fn wait_seq(&self, after: u64, timeout: Duration) -> Result<(u64, u32), DriveError>;
    /// Wait for a notification newer than `after`; returns its tag.
    fn wait(&self, after: u64, timeout: Duration) -> Result<u32, DriveError> {
        Ok(self.wait_seq(after, timeout)?.1)
    }
    /// The mailbox-out words.
    fn mailbox(&self) -> Result<[u32; 16], DriveError>;
}

/// Memory shared with a vcoproc, visible to it at [`Memory::iova`].
pub trait Memory {
    /// Bytes available.
    fn len(&self) -> u64;
    /// Where the vcoproc sees the first byte.
    fn iova(&self) -> u64;
    /// Copy bytes in.
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DriveError>;
    /// Copy bytes out.
    fn read_vec(&self, offset: u64, len: u64) -> Result<Vec<u8>, DriveError>;
    /// Never empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Port for VcoprocHandle {
    fn last_seq(&self) -> Result<u64, DriveError> {
        Ok(self.last_notify().seq)
    }
    fn post(&self, words: &[u32]) -> Result<(), DriveError> {
        for (i, w) in words.iter().enumerate() {
            self.mbox_write(i, *w);
        }
        self.doorbell();
        Ok(())
    }
    fn wait_seq(&self, after: u64, timeout: Duration) -> Result<(u64, u32), DriveError> {
        let n = self.wait_notify(after, timeout)?;
        Ok((n.seq, n.tag))
    }
    fn mailbox(&self) -> Result<[u32; 16], DriveError> {
        Ok(std::array::from_fn(|i| self.mbox_read(i)))
    }
}

impl Memory for Buffer {
    fn len(&self) -> u64 {
        self.region.len()
    }
    fn iova(&self) -> u64 {
        self.iova
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DriveError> {
        Ok(self.region.write(offset, data)?)
    }
    fn read_vec(&self, offset: u64, len: u64) -> Result<Vec<u8>, DriveError> {
        Ok(self.region.read_vec(offset, len)?)
    }
}

fn need(m: &impl Memory, need: u64) -> Result<(), DriveError> {
    if need > m.len() {
        return Err(DriveError::TooBig {
            need,
            have: m.len(),
        });
    }
    Ok(())
}

/// Post a job and wait for its notification; returns the tag.
fn kick(v: &impl Port, words: &[u32], timeout: Duration) -> Result<u32, DriveError> {
    let seq = v.last_seq()?;
    v.post(words)?;
    v.wait(seq, timeout)
}

/// Q15 samples as the little-endian bytes the firmware reads.
pub fn samples_to_bytes(s: &[i16]) -> Vec<u8> {
    s.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian bytes the firmware wrote, as Q15 samples.
pub fn bytes_to_samples(b: &[u8]) -> Vec<i16> {
    b.chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// Run one FIR job on a vcoproc running the `fir` firmware.
pub fn fir(
    v: &impl Port,
    buf: &impl Memory,
    x: &[i16],
    h: &[i16],
    tag: u32,
    timeout: Duration,
) -> Result<Vec<i16>, DriveError> {
    let (xl, hl) = (2 * x.len() as u64, 2 * h.len() as u64);
    let (x_off, y_off, h_off) = (0, xl, 2 * xl);
    need(buf, 2 * xl + hl)?;
    buf.write(x_off, &samples_to_bytes(x))?;
    buf.write(h_off, &samples_to_bytes(h))?;
    let base = buf.iova() as u32;
    let args = [
        base + x_off as u32,
        base + y_off as u32,
        x.len() as u32,
        base + h_off as u32,
        h.len() as u32,
        tag,
    ];
    let got = kick(v, &args, timeout)?;
    let out = v.mailbox()?;
    let (status, done, echoed) = (out[0], out[1], out[2]);
    if got != tag || echoed != tag || status != 0 || done as usize != x.len() {
        return Err(DriveError::BadAnswer(format!(
            "status {status}, {done} samples, tag {echoed}/{got} (want {tag})"
        )));
    }
    Ok(bytes_to_samples(&buf.read_vec(y_off, xl)?))
}

/// Run one CRC-32 job on a vcoproc running the `crc32` firmware.
pub fn crc32(
    v: &impl Port,
    buf: &impl Memory,
    data: &[u8],
    tag: u32,
    timeout: Duration,
) -> Result<u32, DriveError> {
    need(buf, data.len() as u64)?;
    buf.write(0, data)?;
    let got = kick(v, &[buf.iova() as u32, data.len() as u32, tag], timeout)?;
    let out = v.mailbox()?;
    let (status, crc, echoed) = (out[0], out[1], out[2]);
    if got != tag || echoed != tag || status != 0 {
        return Err(DriveError::BadAnswer(format!(
            "status {status}, tag {echoed}/{got} (want {tag})"
        )));
    }
    Ok(crc)
}

/// Send one message to a vcoproc running the `echo` firmware.
pub fn echo(v: &impl Port, words: &[u32; 16], timeout: Duration) -> Result<[u32; 16], DriveError> {
    kick(v, &words[..15], timeout)?;
    v.mailbox()
}

/// Ask a vcoproc running the `probe` firmware to do one operation
/// (1 read, 2 write, 3 call, 4 undefined instruction, 5 exit).
pub fn probe(
    v: &impl Port,
    op: u32,
    addr: u32,
    value: u32,
    timeout: Duration,
) -> Result<u32, DriveError> {
    kick(v, &[op, addr, value], timeout)?;
    Ok(v.mailbox()?[1])
}

fn f32s_to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_to_f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Run one FFT on a vcoproc running the `fft` firmware: `x` (complex, a
/// power of two long) in, its transform and the root-sum-square the
/// firmware reported out.
pub fn fft(
    v: &impl Port,
    buf: &impl Memory,
    x: &[(f32, f32)],
    tag: u32,
    timeout: Duration,
) -> Result<(Vec<(f32, f32)>, f32), DriveError> {
    let len = 8 * x.len() as u64;
    need(buf, len)?;
    let flat: Vec<f32> = x.iter().flat_map(|&(a, b)| [a, b]).collect();
    buf.write(0, &f32s_to_bytes(&flat))?;
    let got = kick(v, &[buf.iova() as u32, x.len() as u32, tag], timeout)?;
    let out = v.mailbox()?;
    if got != tag || out[0] != 0 || out[1] as usize != x.len() || out[2] != tag {
        return Err(DriveError::BadAnswer(format!(
            "status {}, n {}, tag {}/{got} (want {tag})",
            out[0], out[1], out[2]
        )));
    }
    let y = bytes_to_f32s(&buf.read_vec(0, len)?);
    Ok((
        y.chunks_exact(2).map(|c| (c[0], c[1])).collect(),
        f32::from_bits(out[3]),
    ))
}

/// Run one low-pass filter job on a vcoproc running the `biquad` firmware
/// (`f` is the cut-off over the sample rate).
pub fn biquad(
    v: &impl Port,
    buf: &impl Memory,
    x: &[f32],
    f: f32,
    q: f32,
    tag: u32,
    timeout: Duration,
) -> Result<Vec<f32>, DriveError> {
    let len = 4 * x.len() as u64;
    need(buf, 2 * len)?;
    buf.write(0, &f32s_to_bytes(x))?;
    let base = buf.iova() as u32;
    let args = [
        base,
        base + len as u32,
        x.len() as u32,
        f.to_bits(),
        q.to_bits(),
        tag,
    ];
    let got = kick(v, &args, timeout)?;
    let out = v.mailbox()?;
    if got != tag || out[0] != 0 || out[1] as usize != x.len() || out[2] != tag {
        return Err(DriveError::BadAnswer(format!(
            "status {}, {} samples, tag {}/{got} (want {tag})",
            out[0], out[1], out[2]
        )));
    }
    Ok(bytes_to_f32s(&buf.read_vec(len, len)?))
}

/// Ask a vcoproc running the `hello` firmware for the sum of `i²` below
/// `n`: (status, sum, heap address).
pub fn hello(v: &impl Port, n: u32, timeout: Duration) -> Result<(u32, u64, u32), DriveError> {
    kick(v, &[n], timeout)?;
    let out = v.mailbox()?;
    Ok((out[0], u64::from(out[1]) | u64::from(out[2]) << 32, out[3]))
}

/// One request to a vcoproc running the `irq` firmware (op 1: add `a` and
/// `b`; op 2: busy until `a` more SysTick interrupts): the mailbox-out
/// words (op, result, CPUID, ticks, handler entries, IPSR, VTOR).
pub fn irq(
    v: &impl Port,
    op: u32,
    a: u32,
    b: u32,
    tag: u32,
    timeout: Duration,
) -> Result<[u32; 16], DriveError> {
    let deadline = std::time::Instant::now() + timeout;
    let seq = v.last_seq()?;
    v.post(&[op, a, b, tag])?;
    // Main may answer an earlier request (op 5) while this one is
    // handled: wait on past other tags for this request's.
    let (mut seq, mut got) = v.wait_seq(seq, timeout)?;
    while got != tag {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        (seq, got) = v.wait_seq(seq, left)?;
    }
    let out = v.mailbox()?;
    if got != tag || out[0] != op {
        return Err(DriveError::BadAnswer(format!(
            "op {} tag {got} (want op {op} tag {tag})",
            out[0]
        )));
    }
    Ok(out)
}
