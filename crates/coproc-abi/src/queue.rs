//! Queues: submission and completion rings in a domain's shared memory,
//! the same for every device class (the mcu firmware SDK's `coproc.h` has
//! the firmware side; a test checks the two agree).
//!
//! Each side owns two indexes and keeps its own copy of them; it only ever
//! *reads* the other side's. The protocol, for either ring:
//!
//! - the writer copies an entry into the slot `index & (entries - 1)`
//!   (volatile copy), then publishes it with a `Release` store of its
//!   index (the submission tail, the completion tail);
//! - the reader loads that index with `Acquire`, copies the entry out
//!   into a private buffer, then gives the slot back with a `Release`
//!   store of its own index (the submission head, the completion head);
//! - the writer loads the reader's index with `Acquire` before it reuses a
//!   slot.
//!
//! The other side may lie. An index more than a ring ahead of ours is
//! garbage: counted, never followed. An index that makes the ring look
//! fuller than it is only stops us; neither side ever writes a slot the
//! other has not given back by its own index, or reads outside the rings.
//! All ring logic is generic over [`QueueMem`], implemented by [`Shared`]
//! (and, in `tests/loom.rs`, by loom atomics, so the protocol is
//! model-checked).

use crate::shm::Shared;
use thiserror::Error;

/// Header magic, "CQUE".
pub const MAGIC: u32 = 0x4555_5143;
/// Most entries per ring.
pub const MAX_ENTRIES: u32 = 4096;
/// Bytes per entry.
pub const ENTRY_SIZE: u32 = 64;
/// Offset of the submission ring (completion ring follows it).
pub const RING_OFFSET: u32 = 0x1000;
/// Offset of the header's magic.
pub const OFF_MAGIC: u64 = 0x000;
/// Offset of the entry count.
pub const OFF_ENTRIES: u64 = 0x004;
/// Offset of the entry size.
pub const OFF_ENTRY_SIZE: u64 = 0x008;
/// Flags word: the busy-poll budget in µs (0 = event-driven, the default;
/// at most [`MAX_POLL_US`]), written by the domain at queue init.
pub const OFF_FLAGS: u64 = 0x00c;
/// Largest busy-poll budget, µs. A larger value in the flags word is
/// refused by the daemon and clamped by the device side.
pub const MAX_POLL_US: u32 = 1000;
/// Submission tail, written by the domain.
pub const OFF_SQ_TAIL: u64 = 0x040;
/// Submission head, written by the device side.
pub const OFF_SQ_HEAD: u64 = 0x080;
/// Completion tail, written by the device side.
pub const OFF_CQ_TAIL: u64 = 0x0c0;
/// Completion head, written by the domain.
pub const OFF_CQ_HEAD: u64 = 0x100;
/// Completion wake-up word, written by the domain: the low 31 bits count
/// the domain's threads asleep on the completion tail (a shared futex on
/// [`OFF_CQ_TAIL`]), and [`CQ_WAKE_NO_EVENTFD`] says nobody waits on the
/// completion eventfd. After posting completions the device side (the
/// daemon, on the runner thread) wakes futex sleepers when the count is
/// not zero and writes the completion eventfd unless the bit is set. Zero,
/// a fresh queue's value, means "eventfd only", what a domain that never
/// heard of the word gets.
pub const OFF_CQ_WAKE: u64 = 0x140;
/// Bit of [`OFF_CQ_WAKE`]: the completion eventfd need not be written.
pub const CQ_WAKE_NO_EVENTFD: u32 = 1 << 31;
/// Submission polling word, written by the device side of a busy-poll
/// queue: nonzero while it polls the submission tail and will look at the
/// tail again before it parks, so a submission needs no doorbell
/// ([`Producer::device_polling`]). Before it parks the device side clears
/// it and then, after a full fence, looks at the tail once more
/// ([`Consumer::set_polling`]); the domain publishes its tail and then,
/// after a full fence, reads this word: one of the two sees the other's
/// store, so a submission is either seen by the device or rung for. The
/// domain can write the word too (it is its memory): a wrong value costs it
/// a needless doorbell, or a doorbell skipped, which the SDK rings anyway
/// once its own busy-poll budget passes without a completion. Zero, a fresh
/// queue's value, means "ring".
pub const OFF_SQ_POLLING: u64 = 0x180;

/// Bytes a queue of `entries` needs (header page + both rings), or None if
/// `entries` is not a power of two in 1..=MAX_ENTRIES.
pub fn bytes_for(entries: u32) -> Option<u64> {
    (entries.is_power_of_two() && entries <= MAX_ENTRIES)
        .then(|| u64::from(RING_OFFSET) + 2 * u64::from(entries) * u64::from(ENTRY_SIZE))
}

/// Offset of submission slot `index` (masked) in a queue of `entries`.
pub fn sq_slot(entries: u32, index: u32) -> u64 {
    u64::from(RING_OFFSET) + u64::from(index & (entries - 1)) * u64::from(ENTRY_SIZE)
}

/// Offset of completion slot `index` (masked) in a queue of `entries`.
pub fn cq_slot(entries: u32, index: u32) -> u64 {
    u64::from(RING_OFFSET)
        + (u64::from(entries) + u64::from(index & (entries - 1))) * u64::from(ENTRY_SIZE)
}

/// A submission entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sqe {
    /// Operation.
    pub opcode: u32,
    /// Chosen by the domain, echoed in the completion.
    pub tag: u32,
    /// Arguments.
    pub args: [u32; 14],
}

/// A completion entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cqe {
    /// The submission's tag.
    pub tag: u32,
    /// Status.
    pub status: u32,
    /// Results.
    pub result: [u32; 14],
}

/// An entry's 64 bytes from its two header words and 14 argument words.
fn entry_bytes(a: u32, b: u32, words: &[u32; 14]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (i, w) in [a, b].iter().chain(words).enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// An entry's two header words and 14 argument words from its 64 bytes.
fn entry_words(b: &[u8; 64]) -> (u32, u32, [u32; 14]) {
    let w = |i: usize| u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
    (w(0), w(1), std::array::from_fn(|i| w(2 + i)))
}

impl Sqe {
    /// The 64 bytes of the entry.
    pub fn to_bytes(&self) -> [u8; 64] {
        entry_bytes(self.opcode, self.tag, &self.args)
    }

    /// Parse 64 bytes.
    pub fn from_bytes(b: &[u8; 64]) -> Sqe {
        let (opcode, tag, args) = entry_words(b);
        Sqe { opcode, tag, args }
    }
}

impl Cqe {
    /// The 64 bytes of the entry.
    pub fn to_bytes(&self) -> [u8; 64] {
        entry_bytes(self.tag, self.status, &self.result)
    }

    /// Parse 64 bytes.
    pub fn from_bytes(b: &[u8; 64]) -> Cqe {
        let (tag, status, result) = entry_words(b);
        Cqe {
            tag,
            status,
            result,
        }
    }
}

/// Errors of this module.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// Entries not a power of two in 1..=MAX_ENTRIES.
    #[error("{0} entries: use a power of two up to {MAX_ENTRIES}")]
    BadEntries(u32),
    /// The memory is smaller than the queue.
    #[error("queue needs {need} bytes, memory has {have}")]
    TooSmall {
        /// Bytes needed.
        need: u64,
        /// Bytes there.
        have: u64,
    },
    /// The header's magic or entry size is wrong.
    #[error("not a queue header")]
    BadHeader,
    /// A busy-poll budget over [`MAX_POLL_US`].
    #[error("busy-poll budget {0} µs over the maximum {MAX_POLL_US}")]
    BadPoll(u32),
}

/// Memory holding a queue: volatile copies for entries, `Acquire` loads
/// and `Release` stores for index words. [`Shared`] is the real one.
/// Offsets are within the queue; an access outside the memory reads zeros
/// and writes nothing (the ring logic never makes one once
/// [`Producer::init`] or [`Consumer::attach`] checked the size).
pub trait QueueMem {
    /// Size in bytes.
    fn len(&self) -> u64;
    /// True for no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy bytes out (volatile).
    fn read_at(&self, off: u64, buf: &mut [u8]);
    /// Copy bytes in (volatile).
    fn write_at(&self, off: u64, data: &[u8]);
    /// `Acquire` load of an index word.
    fn load_index(&self, off: u64) -> u32;
    /// `Release` store of an index word.
    fn store_index(&self, off: u64, v: u32);
}

impl QueueMem for Shared<'_> {
    fn len(&self) -> u64 {
        Shared::len(self)
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) {
        if self.read(off, buf).is_err() {
            buf.fill(0);
        }
    }
    fn write_at(&self, off: u64, data: &[u8]) {
        let _ = self.write(off, data);
    }
    fn load_index(&self, off: u64) -> u32 {
        self.load_u32(off).unwrap_or(0)
    }
    fn store_index(&self, off: u64, v: u32) {
        let _ = self.store_u32(off, v);
    }
}

impl<T: QueueMem + ?Sized> QueueMem for &T {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) {
        (**self).read_at(off, buf);
    }
    fn write_at(&self, off: u64, data: &[u8]) {
        (**self).write_at(off, data);
    }
    fn load_index(&self, off: u64) -> u32 {
        (**self).load_index(off)
    }
    fn store_index(&self, off: u64, v: u32) {
        (**self).store_index(off, v);
    }
}

impl<T: QueueMem + ?Sized> QueueMem for std::sync::Arc<T> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) {
        (**self).read_at(off, buf);
    }
    fn write_at(&self, off: u64, data: &[u8]) {
        (**self).write_at(off, data);
    }
    fn load_index(&self, off: u64) -> u32 {
        (**self).load_index(off)
    }
    fn store_index(&self, off: u64, v: u32) {
        (**self).store_index(off, v);
    }
}

fn check_size(m: &impl QueueMem, entries: u32) -> Result<(), QueueError> {
    let need = bytes_for(entries).ok_or(QueueError::BadEntries(entries))?;
    if m.len() < need {
        return Err(QueueError::TooSmall {
            need,
            have: m.len(),
        });
    }
    Ok(())
}

/// The domain's end of a queue: it owns the submission tail and the
/// completion head, and trusts nothing the device side writes beyond
/// reading it.
#[derive(Debug, Clone)]
pub struct Producer {
    entries: u32,
    sq_tail: u32,
    cq_head: u32,
    poll_us: u32,
    garbage: u64,
}

impl Producer {
    /// Write the header of a fresh, event-driven queue of `entries` into
    /// `m`; None if `entries` is not a power of two up to
    /// [`MAX_ENTRIES`] or `m` is too small.
    pub fn init(m: &impl QueueMem, entries: u32) -> Option<Producer> {
        Producer::init_with(m, entries, 0).ok()
    }

    /// Write the header of a fresh queue of `entries` with a busy-poll
    /// budget of `poll_us` µs (0: event-driven) into `m`.
    pub fn init_with(
        m: &impl QueueMem,
        entries: u32,
        poll_us: u32,
    ) -> Result<Producer, QueueError> {
        check_size(m, entries)?;
        if poll_us > MAX_POLL_US {
            return Err(QueueError::BadPoll(poll_us));
        }
        m.write_at(OFF_MAGIC, &MAGIC.to_le_bytes());
        m.write_at(OFF_ENTRIES, &entries.to_le_bytes());
        m.write_at(OFF_ENTRY_SIZE, &ENTRY_SIZE.to_le_bytes());
        m.write_at(OFF_FLAGS, &poll_us.to_le_bytes());
        for off in [
            OFF_SQ_TAIL,
            OFF_SQ_HEAD,
            OFF_CQ_TAIL,
            OFF_CQ_HEAD,
            OFF_SQ_POLLING,
        ] {
            m.store_index(off, 0);
        }
        Ok(Producer {
            entries,
            sq_tail: 0,
            cq_head: 0,
            poll_us,
            garbage: 0,
        })
    }

    /// Entries per ring.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// The busy-poll budget written at init, µs (0: event-driven).
    pub fn poll_us(&self) -> u32 {
        self.poll_us
    }

    /// Times the device side's completion tail was garbage (more than a
    /// ring ahead of our head).
    pub fn garbage(&self) -> u64 {
        self.garbage
    }

    /// The device side's submission head (`Acquire`).
    pub fn sq_head(&self, m: &impl QueueMem) -> u32 {
        m.load_index(OFF_SQ_HEAD)
    }

    /// Put a submission in the ring and publish the tail; false if full
    /// (or the device side's head makes no sense: it looks full then).
    pub fn submit(&mut self, m: &impl QueueMem, sqe: &Sqe) -> bool {
        // Acquire: the device's reads of the slot we reuse happened before.
        if self.sq_tail.wrapping_sub(self.sq_head(m)) >= self.entries {
            return false;
        }
        m.write_at(sq_slot(self.entries, self.sq_tail), &sqe.to_bytes());
        self.sq_tail = self.sq_tail.wrapping_add(1);
        // Release: the entry is visible before the tail that publishes it.
        m.store_index(OFF_SQ_TAIL, self.sq_tail);
        true
    }

    /// Our completion head: the completion tail's value while nothing is
    /// posted (what a sleeper on the tail expects it to hold).
    pub fn cq_head(&self) -> u32 {
        self.cq_head
    }

    /// Whether the device side posted a completion we have not taken
    /// (one `Acquire` load: what a busy poll spins on).
    pub fn ready(&self, m: &impl QueueMem) -> bool {
        m.load_index(OFF_CQ_TAIL) != self.cq_head
    }

    /// Take the next completion, if one was posted. A completion tail more
    /// than a ring ahead of our head is garbage: counted, nothing taken.
    pub fn complete(&mut self, m: &impl QueueMem) -> Option<Cqe> {
        let posted = m.load_index(OFF_CQ_TAIL).wrapping_sub(self.cq_head);
        if posted == 0 {
            return None;
        }
        if posted > self.entries {
            self.garbage += 1;
            return None;
        }
        let mut b = [0u8; 64];
        m.read_at(cq_slot(self.entries, self.cq_head), &mut b);
        self.cq_head = self.cq_head.wrapping_add(1);
        // Release: our copy of the entry is done before the slot is given
        // back.
        m.store_index(OFF_CQ_HEAD, self.cq_head);
        Some(Cqe::from_bytes(&b))
    }

    /// After publishing submissions: whether the device side polls the
    /// submission tail, so that they need no doorbell (a full fence, then
    /// an `Acquire` load of [`OFF_SQ_POLLING`]).
    pub fn device_polling(&self, m: &impl QueueMem) -> bool {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        m.load_index(OFF_SQ_POLLING) != 0
    }

    /// Write any value as the submission tail (tests: garbage indices).
    pub fn poke_sq_tail(&self, m: &impl QueueMem, v: u32) {
        m.store_index(OFF_SQ_TAIL, v);
    }

    /// Take the device side's head as our tail again (after garbage).
    pub fn resync(&mut self, m: &impl QueueMem) {
        self.sq_tail = self.sq_head(m);
        m.store_index(OFF_SQ_TAIL, self.sq_tail);
    }
}

/// The submission tail was more than a ring ahead of the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Garbage {
    /// The tail the domain wrote.
    pub tail: u32,
}

/// The device side's end of a queue: it owns the submission head and the
/// completion tail (kept here; the copies in shared memory are only
/// published), and validates everything the domain writes.
#[derive(Debug, Clone)]
pub struct Consumer {
    entries: u32,
    sq_head: u32,
    cq_tail: u32,
    poll_us: u32,
    garbage: u64,
}

impl Consumer {
    /// Attach to the queue whose header is at the start of `m`: the magic,
    /// the entry size and the entry count must be right and the rings must
    /// fit `m`. Starts from the indexes published in the memory (a queue
    /// served before keeps its place). A busy-poll budget over
    /// [`MAX_POLL_US`] is clamped to it.
    pub fn attach(m: &impl QueueMem) -> Result<Consumer, QueueError> {
        if m.len() < u64::from(RING_OFFSET) {
            return Err(QueueError::TooSmall {
                need: u64::from(RING_OFFSET),
                have: m.len(),
            });
        }
        let entries = m.load_index(OFF_ENTRIES);
        if m.load_index(OFF_MAGIC) != MAGIC || m.load_index(OFF_ENTRY_SIZE) != ENTRY_SIZE {
            return Err(QueueError::BadHeader);
        }
        check_size(m, entries)?;
        Ok(Consumer {
            entries,
            sq_head: m.load_index(OFF_SQ_HEAD),
            cq_tail: m.load_index(OFF_CQ_TAIL),
            poll_us: m.load_index(OFF_FLAGS).min(MAX_POLL_US),
            garbage: 0,
        })
    }

    /// Entries per ring.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// The busy-poll budget, µs (0: event-driven).
    pub fn poll_us(&self) -> u32 {
        self.poll_us
    }

    /// Times the domain's submission tail was garbage.
    pub fn garbage(&self) -> u64 {
        self.garbage
    }

    /// Our submission head: the index of the next submission.
    pub fn sq_head(&self) -> u32 {
        self.sq_head
    }

    /// Submissions waiting (`Acquire` load of the tail), or [`Garbage`]
    /// (counted) if the tail is more than a ring ahead of our head.
    pub fn pending(&mut self, m: &impl QueueMem) -> Result<u32, Garbage> {
        let tail = m.load_index(OFF_SQ_TAIL);
        let n = tail.wrapping_sub(self.sq_head);
        if n > self.entries {
            self.garbage += 1;
            return Err(Garbage { tail });
        }
        Ok(n)
    }

    /// Copy out the submission at our head (call after [`Consumer::pending`]
    /// said there is one).
    pub fn peek(&self, m: &impl QueueMem) -> Sqe {
        let mut b = [0u8; 64];
        m.read_at(sq_slot(self.entries, self.sq_head), &mut b);
        Sqe::from_bytes(&b)
    }

    /// Give the slot at our head back to the domain (`Release` store of
    /// the new head), after [`Consumer::peek`] copied it out.
    pub fn consume(&mut self, m: &impl QueueMem) {
        self.sq_head = self.sq_head.wrapping_add(1);
        m.store_index(OFF_SQ_HEAD, self.sq_head);
    }

    /// Take the next submission. A garbage tail is counted and skipped:
    /// our head moves to it, so the domain's next honest submission after
    /// [`Producer::resync`] is served (what the C SDK's `coproc_sq_pop`
    /// does).
    pub fn pop(&mut self, m: &impl QueueMem) -> Option<Sqe> {
        match self.pending(m) {
            Ok(0) => None,
            Ok(_) => {
                let s = self.peek(m);
                self.consume(m);
                Some(s)
            }
            Err(Garbage { tail }) => {
                self.sq_head = tail;
                m.store_index(OFF_SQ_HEAD, tail);
                None
            }
        }
    }

    /// Say whether this side polls the submission tail ([`OFF_SQ_POLLING`]):
    /// `true` while it does and will look at the tail again before it
    /// parks; `false` before it parks, followed by a full fence, after which
    /// the caller must look at the tail ([`Consumer::pending`]) once more.
    pub fn set_polling(&self, m: &impl QueueMem, on: bool) {
        m.store_index(OFF_SQ_POLLING, u32::from(on));
        if !on {
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Whether the completion ring is full (or the domain's head makes no
    /// sense, which looks full).
    pub fn cq_full(&self, m: &impl QueueMem) -> bool {
        self.cq_tail.wrapping_sub(m.load_index(OFF_CQ_HEAD)) >= self.entries
    }

    /// Post a completion and publish the tail; false if the ring is full.
    pub fn push(&mut self, m: &impl QueueMem, c: &Cqe) -> bool {
        // Acquire: the domain's reads of the slot we reuse happened before.
        if self.cq_full(m) {
            return false;
        }
        m.write_at(cq_slot(self.entries, self.cq_tail), &c.to_bytes());
        self.cq_tail = self.cq_tail.wrapping_add(1);
        // Release: the entry is visible before the tail that publishes it.
        m.store_index(OFF_CQ_TAIL, self.cq_tail);
        true
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
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// Queue memory on the heap (8-byte aligned), for single-threaded tests.
    struct Heap(Vec<u64>);

    impl Heap {
        fn new(entries: u32) -> Heap {
            Heap(vec![0; bytes_for(entries).unwrap() as usize / 8])
        }
        fn view(&mut self) -> Shared<'_> {
            // SAFETY: the vector is touched only through the view while it
            // lives (the borrow of `self` says so).
            unsafe { Shared::new(self.0.as_mut_ptr().cast(), self.0.len() * 8) }.unwrap()
        }
    }

    fn sqe(tag: u32) -> Sqe {
        Sqe {
            opcode: tag % 7,
            tag,
            args: std::array::from_fn(|i| tag.wrapping_mul(31) ^ i as u32),
        }
    }

    #[test]
    fn producer_fills_and_drains() {
        let mut h = Heap::new(4);
        let m = h.view();
        let mut p = Producer::init(&m, 4).unwrap();
        let mut c = Consumer::attach(&m).unwrap();
        for t in 0..4 {
            assert!(p.submit(&m, &sqe(t)));
        }
        assert!(!p.submit(&m, &sqe(9)), "full until the device consumes");
        assert_eq!(c.pop(&m), Some(sqe(0)));
        assert_eq!(c.pop(&m), Some(sqe(1)));
        assert!(p.submit(&m, &sqe(4)));
        assert!(p.complete(&m).is_none());
        assert!(!p.ready(&m));
        let done = Cqe {
            tag: 1,
            status: 9,
            result: [3; 14],
        };
        assert!(c.push(&m, &done));
        assert!(p.ready(&m));
        assert_eq!(p.complete(&m), Some(done));
        assert!(p.complete(&m).is_none());
        assert!(Producer::init(&m, 5).is_none());
        assert!(Producer::init(&m, 8).is_none(), "does not fit");
        assert_eq!(
            Producer::init_with(&m, 4, MAX_POLL_US + 1).unwrap_err(),
            QueueError::BadPoll(MAX_POLL_US + 1)
        );
    }

    #[test]
    fn the_polling_word_says_when_a_doorbell_is_needed() {
        let mut h = Heap::new(4);
        let m = h.view();
        let p = Producer::init_with(&m, 4, 100).unwrap();
        let c = Consumer::attach(&m).unwrap();
        assert!(!p.device_polling(&m), "a fresh queue rings");
        c.set_polling(&m, true);
        assert!(p.device_polling(&m));
        c.set_polling(&m, false);
        assert!(!p.device_polling(&m));
        // A domain's init starts over from "ring", whatever was left.
        c.set_polling(&m, true);
        let p = Producer::init_with(&m, 4, 100).unwrap();
        assert!(!p.device_polling(&m));
    }

    #[test]
    fn lying_indexes_are_garbage_and_never_followed() {
        let mut h = Heap::new(2);
        let m = h.view();
        let mut p = Producer::init_with(&m, 2, 50).unwrap();
        let mut c = Consumer::attach(&m).unwrap();
        assert_eq!(c.poll_us(), 50);
        // A tail three ahead of a ring of two: garbage, skipped.
        p.poke_sq_tail(&m, 3);
        assert_eq!(c.pending(&m), Err(Garbage { tail: 3 }));
        assert_eq!(c.pop(&m), None);
        assert_eq!((c.garbage(), c.sq_head()), (2, 3));
        p.resync(&m);
        assert!(p.submit(&m, &sqe(7)));
        assert_eq!(c.pop(&m), Some(sqe(7)));
        // A completion head ahead of our tail looks full: nothing posted.
        m.store_index(OFF_CQ_HEAD, 1);
        assert!(c.cq_full(&m));
        assert!(!c.push(&m, &Cqe::default()));
        m.store_index(OFF_CQ_HEAD, 0);
        // A completion tail far ahead: the producer counts garbage.
        m.store_index(OFF_CQ_TAIL, 100);
        assert_eq!(p.complete(&m), None);
        assert_eq!(p.garbage(), 1);
        // A submission head ahead of our tail: looks full.
        m.store_index(OFF_SQ_HEAD, 1000);
        assert!(!p.submit(&m, &sqe(1)));
        // Bad headers.
        m.write_at(OFF_ENTRY_SIZE, &32u32.to_le_bytes());
        assert_eq!(Consumer::attach(&m).unwrap_err(), QueueError::BadHeader);
        m.write_at(OFF_ENTRY_SIZE, &64u32.to_le_bytes());
        m.write_at(OFF_ENTRIES, &4u32.to_le_bytes());
        assert!(matches!(
            Consumer::attach(&m),
            Err(QueueError::TooSmall { .. })
        ));
        m.write_at(OFF_ENTRIES, &3u32.to_le_bytes());
        assert_eq!(Consumer::attach(&m).unwrap_err(), QueueError::BadEntries(3));
        m.write_at(OFF_ENTRIES, &2u32.to_le_bytes());
        m.write_at(OFF_FLAGS, &u32::MAX.to_le_bytes());
        assert_eq!(Consumer::attach(&m).unwrap().poll_us(), MAX_POLL_US);
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes_for(1), Some(0x1000 + 128));
        assert_eq!(bytes_for(4096), Some(0x1000 + 2 * 4096 * 64));
        assert_eq!(bytes_for(0), None);
        assert_eq!(bytes_for(3), None);
        assert_eq!(bytes_for(8192), None);
        let s = Sqe {
            opcode: 1,
            tag: 2,
            args: std::array::from_fn(|i| i as u32),
        };
        let b = s.to_bytes();
        let c = Cqe::from_bytes(&b);
        assert_eq!((c.tag, c.status, c.result[13]), (1, 2, 13));
        assert_eq!(Sqe::from_bytes(&b), s);
        assert_eq!(Cqe::from_bytes(&c.to_bytes()), c);
        assert_eq!(sq_slot(4, 5), 0x1000 + 64);
        assert_eq!(cq_slot(4, 5), 0x1000 + 5 * 64);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Submit,
        Pop,
        Push,
        Complete,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Submit),
            Just(Op::Pop),
            Just(Op::Push),
            Just(Op::Complete)
        ]
    }

    proptest! {
        /// Producer and Consumer against two VecDeques of capacity
        /// `entries`: every operation succeeds exactly when the model
        /// says it can, and entries come out in order, unchanged, across
        /// many wraps of the indexes.
        #[test]
        fn rings_match_a_model(
            log2 in 0u32..4,
            start in any::<u32>(),
            ops in proptest::collection::vec(op(), 1..400),
        ) {
            let entries = 1u32 << log2;
            let mut h = Heap::new(entries);
            let m = h.view();
            let mut p = Producer::init(&m, entries).unwrap();
            // Start anywhere, to cross the u32 wrap of the indexes.
            for off in [OFF_SQ_TAIL, OFF_SQ_HEAD, OFF_CQ_TAIL, OFF_CQ_HEAD] {
                m.store_index(off, start);
            }
            p.resync(&m);
            let mut p = Producer { cq_head: start, ..p };
            let mut c = Consumer::attach(&m).unwrap();
            let (mut sq, mut cq, mut taken) = (VecDeque::new(), VecDeque::new(), VecDeque::new());
            let mut next = 0u32;
            let cap = entries as usize;
            for o in ops {
                match o {
                    Op::Submit => {
                        let ok = p.submit(&m, &sqe(next));
                        prop_assert_eq!(ok, sq.len() < cap);
                        if ok {
                            sq.push_back(sqe(next));
                            next += 1;
                        }
                    }
                    Op::Pop => {
                        let got = c.pop(&m);
                        prop_assert_eq!(got, sq.pop_front());
                        if let Some(s) = got {
                            taken.push_back(s);
                        }
                    }
                    Op::Push => {
                        let Some(s) = taken.front().copied() else { continue };
                        let done = Cqe { tag: s.tag, status: s.opcode, result: s.args };
                        let ok = c.push(&m, &done);
                        prop_assert_eq!(ok, cq.len() < cap);
                        if ok {
                            taken.pop_front();
                            cq.push_back(done);
                        }
                    }
                    Op::Complete => {
                        prop_assert_eq!(p.ready(&m), !cq.is_empty());
                        prop_assert_eq!(p.complete(&m), cq.pop_front());
                    }
                }
                prop_assert_eq!(c.garbage() + p.garbage(), 0);
            }
        }
    }
}
