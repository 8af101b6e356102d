//! [`Shared`]: the typed accessor for memory shared with another process or
//! a device.
//!
//! Shared memory can change under us at any moment (the other side is
//! another process, a device, or hostile), so no Rust reference to it is
//! ever formed. Data moves only by bounds-checked volatile copies
//! ([`Shared::read`], [`Shared::write`]): the compiler neither elides,
//! merges nor invents accesses, and a value read once is a value in a
//! private buffer that cannot change under its user. Index words, the
//! words that publish data to the other side, are atomic:
//! [`Shared::load_u32`] is an `Acquire` load and [`Shared::store_u32`] a
//! `Release` store, on 4-byte aligned words (`AtomicU32::from_ptr`). A side
//! that writes entries, then stores an index with `Release`, publishes the
//! entries to a side that loads the index with `Acquire` and then reads
//! them.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use thiserror::Error;

/// Errors of this module.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum AbiError {
    /// Offset/length outside the memory.
    #[error("range {offset:#x}+{len:#x} outside shared memory of {size:#x} bytes")]
    OutOfRange {
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
        /// Size of the memory.
        size: u64,
    },
    /// An index word that is not 4-byte aligned.
    #[error("index word at {0:#x} is not 4-byte aligned")]
    Misaligned(u64),
}

/// A view of `len` bytes of shared memory, valid for the lifetime `'a`.
///
/// Copy it freely: it is a pointer and a length. Every access is checked
/// against the length and goes through volatile copies or atomics.
#[derive(Debug, Clone, Copy)]
pub struct Shared<'a> {
    ptr: NonNull<u8>,
    len: usize,
    _life: PhantomData<&'a [u8]>,
}

// SAFETY: a `Shared` only ever reaches its memory through volatile copies
// and atomics, which are the contract of memory shared between threads and
// processes; it holds no reference and no thread-local state.
unsafe impl Send for Shared<'_> {}
// SAFETY: every method of `&Shared` reaches the memory only through
// volatile copies and atomics, never through a reference, so any number of
// threads may use one view at once: concurrent access is the contract of
// memory shared between processes, and the view holds no other state.
unsafe impl Sync for Shared<'_> {}

impl<'a> Shared<'a> {
    /// A view of `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + len` must be one allocation (a mapping) valid for reads
    /// and writes for the whole lifetime `'a`, and must not be reached
    /// through Rust references while the view lives (only through
    /// `Shared`s, other processes or devices).
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Option<Shared<'a>> {
        Some(Shared {
            ptr: NonNull::new(ptr)?,
            len,
            _life: PhantomData,
        })
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// True for a view of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start of `offset..offset + len` as a byte index, if it lies inside.
    fn check(&self, offset: u64, len: usize) -> Result<usize, AbiError> {
        let out = AbiError::OutOfRange {
            offset,
            len: len as u64,
            size: self.len as u64,
        };
        let start = usize::try_from(offset).map_err(|_| out)?;
        match start.checked_add(len) {
            Some(end) if end <= self.len => Ok(start),
            _ => Err(out),
        }
    }

    /// The `len` bytes at `offset`, as a view of their own.
    pub fn sub(&self, offset: u64, len: u64) -> Result<Shared<'a>, AbiError> {
        let n = usize::try_from(len).map_err(|_| AbiError::OutOfRange {
            offset,
            len,
            size: self.len as u64,
        })?;
        let start = self.check(offset, n)?;
        Ok(Shared {
            // SAFETY: `start` was checked to lie inside (or at the end of)
            // the view, so the sum stays in the same allocation; the
            // result of adding to a non-null pointer inside an allocation
            // is not null.
            ptr: unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(start)) },
            len: n,
            _life: PhantomData,
        })
    }

    /// Copy `buf.len()` bytes out of the memory at `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), AbiError> {
        let start = self.check(offset, buf.len())?;
        // SAFETY: `start..start + buf.len()` was checked to lie inside the
        // view, which `new`'s contract keeps valid for reads for `'a`; the
        // destination is a distinct Rust buffer.
        unsafe { copy_in(self.ptr.as_ptr().add(start), buf) };
        Ok(())
    }

    /// Copy `data` into the memory at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), AbiError> {
        let start = self.check(offset, data.len())?;
        // SAFETY: `start..start + data.len()` was checked to lie inside the
        // view, which `new`'s contract keeps valid for writes for `'a`; the
        // source is a distinct Rust buffer.
        unsafe { copy_out(data, self.ptr.as_ptr().add(start)) };
        Ok(())
    }

    /// The index word at `offset`: in range and 4-byte aligned.
    fn word(&self, offset: u64) -> Result<*mut u32, AbiError> {
        let start = self.check(offset, 4)?;
        // SAFETY: `start + 4 <= len` was checked just above.
        let p = unsafe { self.ptr.as_ptr().add(start) };
        if !(p as usize).is_multiple_of(4) {
            return Err(AbiError::Misaligned(offset));
        }
        Ok(p.cast())
    }

    /// `Acquire` load of the little-endian index word at `offset`: what
    /// the other side wrote before its `Release` store of this word is
    /// visible to reads made after this load.
    pub fn load_u32(&self, offset: u64) -> Result<u32, AbiError> {
        let p = self.word(offset)?;
        // SAFETY: `word` checked that the 4 bytes lie inside the view
        // (valid for reads and writes for `'a`) and are 4-byte aligned,
        // as `AtomicU32` needs. Index words are touched only atomically
        // through this API on our side.
        let a = unsafe { AtomicU32::from_ptr(p) };
        Ok(u32::from_le(a.load(Ordering::Acquire)))
    }

    /// `Release` store of `v` (little-endian) into the index word at
    /// `offset`: everything written before it is visible to a side that
    /// loads the word with `Acquire` and sees `v`.
    pub fn store_u32(&self, offset: u64, v: u32) -> Result<(), AbiError> {
        let p = self.word(offset)?;
        // SAFETY: as in `load_u32`: in range, aligned, valid for `'a`.
        let a = unsafe { AtomicU32::from_ptr(p) };
        a.store(v.to_le(), Ordering::Release);
        Ok(())
    }

    /// Sequentially consistent `fetch_add` of `delta` (wrapping) on the
    /// little-endian word at `offset`, followed by a `SeqCst` fence: a
    /// load made after it is ordered after the store, for a side that
    /// announces itself before it looks (see [`Shared::wait_u32`]).
    /// Returns the previous value.
    pub fn add_u32(&self, offset: u64, delta: u32) -> Result<u32, AbiError> {
        let p = self.word(offset)?;
        // SAFETY: as in `load_u32`: in range, aligned, valid for `'a`.
        let a = unsafe { AtomicU32::from_ptr(p) };
        // On a little-endian host (the only kind this crate builds for)
        // the host's add is the add on the stored little-endian word.
        let prev = a.fetch_add(delta, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        Ok(u32::from_le(prev))
    }

    /// Sleep while the word at `offset` still holds `expected`, for at
    /// most `timeout` (a shared futex: the sleeper and the waker may be
    /// in different processes mapping the same memory). Returns false on
    /// timeout, true once woken, or at once if the word differs. A wake-up
    /// can be spurious; callers look again.
    pub fn wait_u32(
        &self,
        offset: u64,
        expected: u32,
        timeout: std::time::Duration,
    ) -> Result<bool, AbiError> {
        use rustix::thread::futex;
        let p = self.word(offset)?;
        // SAFETY: as in `load_u32`: in range, aligned, valid for `'a`; the
        // kernel only reads the word.
        let a = unsafe { AtomicU32::from_ptr(p) };
        let ts = futex::Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        match futex::wait(a, futex::Flags::empty(), expected.to_le(), Some(&ts)) {
            Err(rustix::io::Errno::TIMEDOUT) => Ok(false),
            // Woken, interrupted, changed already (EAGAIN), or a word the
            // kernel cannot wait on: the caller looks at the word again.
            _ => Ok(true),
        }
    }

    /// Wake every thread sleeping in [`Shared::wait_u32`] on the word at
    /// `offset`, in any process. Never blocks; returns how many woke (0
    /// if the kernel refused, e.g. for memory it cannot key).
    pub fn wake_u32(&self, offset: u64) -> Result<usize, AbiError> {
        use rustix::thread::futex;
        let p = self.word(offset)?;
        // SAFETY: as in `load_u32`: in range, aligned, valid for `'a`; the
        // kernel does not touch the word's value.
        let a = unsafe { AtomicU32::from_ptr(p) };
        Ok(futex::wake(a, futex::Flags::empty(), u32::MAX).unwrap_or(0))
    }
}

#[cfg(not(target_endian = "little"))]
compile_error!(
    "coproc's shared-memory words are little-endian; big-endian hosts are not supported"
);

/// Volatile copy from shared memory into `dst`: bytes up to an 8-byte
/// boundary of the source, then 8-byte words, then the remaining bytes.
///
/// # Safety
///
/// `src..src + dst.len()` must be valid for reads.
unsafe fn copy_in(src: *const u8, dst: &mut [u8]) {
    let n = dst.len();
    let mut i = 0;
    while i < n && !(src as usize + i).is_multiple_of(8) {
        // SAFETY: i < n, inside the range the caller vouches for.
        dst[i] = unsafe { src.add(i).read_volatile() };
        i += 1;
    }
    while n - i >= 8 {
        #[allow(clippy::cast_ptr_alignment)] // aligned, as the SAFETY comment says
        // SAFETY: i + 8 <= n, inside the range; `src + i` is 8-byte aligned
        // (the loop above stopped at a boundary and steps are 8).
        let w = unsafe { src.add(i).cast::<u64>().read_volatile() };
        dst[i..i + 8].copy_from_slice(&w.to_ne_bytes());
        i += 8;
    }
    while i < n {
        // SAFETY: i < n, inside the range.
        dst[i] = unsafe { src.add(i).read_volatile() };
        i += 1;
    }
}

/// Volatile copy of `src` into shared memory, shaped like [`copy_in`].
///
/// # Safety
///
/// `dst..dst + src.len()` must be valid for writes.
unsafe fn copy_out(src: &[u8], dst: *mut u8) {
    let n = src.len();
    let mut i = 0;
    while i < n && !(dst as usize + i).is_multiple_of(8) {
        // SAFETY: i < n, inside the range the caller vouches for.
        unsafe { dst.add(i).write_volatile(src[i]) };
        i += 1;
    }
    while n - i >= 8 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&src[i..i + 8]);
        #[allow(clippy::cast_ptr_alignment)] // aligned, as the SAFETY comment says
        // SAFETY: i + 8 <= n, inside the range; `dst + i` is 8-byte
        // aligned.
        unsafe {
            dst.add(i)
                .cast::<u64>()
                .write_volatile(u64::from_ne_bytes(w));
        };
        i += 8;
    }
    while i < n {
        // SAFETY: i < n, inside the range.
        unsafe { dst.add(i).write_volatile(src[i]) };
        i += 1;
    }
}

#[cfg(test)]
// Casts of values the test itself chose.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]
mod tests {
    use super::*;

    #[test]
    fn copies_bounds_and_words() {
        let mut backing = vec![0u64; 8]; // 64 bytes, 8-byte aligned
                                         // SAFETY: the vector outlives the view and is touched only through
                                         // it until the end of the test.
        let m = unsafe { Shared::new(backing.as_mut_ptr().cast(), 64) }.unwrap();
        // Every alignment and length, against a plain model.
        let mut model = [0u8; 64];
        for off in 0..64u64 {
            for len in 0..=(64 - off as usize).min(19) {
                let data: Vec<u8> = (0..len).map(|i| (off as usize * 7 + i) as u8).collect();
                m.write(off, &data).unwrap();
                model[off as usize..off as usize + len].copy_from_slice(&data);
                let mut got = vec![0u8; 64];
                m.read(0, &mut got).unwrap();
                assert_eq!(got, model);
            }
        }
        let mut b = [0u8; 2];
        assert_eq!(
            m.read(63, &mut b),
            Err(AbiError::OutOfRange {
                offset: 63,
                len: 2,
                size: 64
            })
        );
        assert!(m.write(u64::MAX, &[1]).is_err());
        assert!(m.read(64, &mut []).is_ok());
        m.store_u32(8, 0x1234_5678).unwrap();
        assert_eq!(m.load_u32(8).unwrap(), 0x1234_5678);
        let mut w = [0u8; 4];
        m.read(8, &mut w).unwrap();
        assert_eq!(
            u32::from_le_bytes(w),
            0x1234_5678,
            "index words are little-endian"
        );
        assert_eq!(m.load_u32(9), Err(AbiError::Misaligned(9)));
        assert!(m.store_u32(62, 0).is_err());
        assert!(m.load_u32(64).is_err());
        let s = m.sub(8, 8).unwrap();
        assert_eq!(s.load_u32(0).unwrap(), 0x1234_5678);
        assert!(s.load_u32(8).is_err());
        assert!(m.sub(60, 8).is_err());
        drop(backing);
    }
}

#[cfg(test)]
mod futex_tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn wait_sleeps_until_timeout_or_wake() {
        let mut backing = vec![0u64; 8];
        // SAFETY: the vector outlives the view and is touched only through
        // it (and the thread below, through a copy of it) until the end.
        let m = unsafe { Shared::new(backing.as_mut_ptr().cast(), 64) }.unwrap();
        m.store_u32(8, 7).unwrap();
        let t = Instant::now();
        assert!(!m.wait_u32(8, 7, Duration::from_millis(30)).unwrap());
        assert!(t.elapsed() >= Duration::from_millis(30));
        // A word that differs returns at once.
        assert!(m.wait_u32(8, 6, Duration::from_secs(5)).unwrap());
        std::thread::scope(|s| {
            s.spawn(|| {
                // Wake until the sleeper is gone (it may not sleep yet).
                while m.load_u32(16).unwrap() == 0 {
                    m.wake_u32(8).unwrap();
                    std::thread::yield_now();
                }
            });
            assert!(m.wait_u32(8, 7, Duration::from_secs(30)).unwrap());
            m.store_u32(16, 1).unwrap();
        });
        drop(backing);
    }
}
