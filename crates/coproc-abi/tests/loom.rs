//! Model checks of the queue index protocol with loom: every interleaving
//! (and every weak-memory outcome loom models) of a producer and a
//! consumer thread on a ring of two entries, honest and lying.
//!
//! The entries live in loom `UnsafeCell`s, so a slot read while the other
//! side writes it (an entry consumed before it was published, or
//! overwritten before it was consumed) is reported as a data race; the
//! index words are loom atomics with the orderings the real
//! [`coproc_abi::Shared`] uses (`Acquire` loads, `Release` stores).
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p coproc-abi --release --test loom`

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]
#![cfg(loom)]

use coproc_abi::queue::{
    self, Consumer, Cqe, Producer, QueueMem, Sqe, ENTRY_SIZE, OFF_CQ_HEAD, OFF_CQ_TAIL,
    OFF_SQ_HEAD, OFF_SQ_POLLING, OFF_SQ_TAIL, RING_OFFSET,
};
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU32, Ordering};
use loom::sync::Arc;
use loom::thread;

const ENTRIES: u32 = 2;

/// A queue of two entries: header words as plain values (written before
/// the threads start), index words as loom atomics, entries in cells.
struct Model {
    header: [u32; 4],
    sq_tail: AtomicU32,
    sq_head: AtomicU32,
    cq_tail: AtomicU32,
    cq_head: AtomicU32,
    /// The device side's polling word (`Producer::init` clears it).
    sq_polling: AtomicU32,
    slots: Vec<UnsafeCell<[u8; 64]>>,
}

impl Model {
    fn new() -> Model {
        Model {
            header: [queue::MAGIC, ENTRIES, ENTRY_SIZE, 0],
            sq_tail: AtomicU32::new(0),
            sq_head: AtomicU32::new(0),
            cq_tail: AtomicU32::new(0),
            cq_head: AtomicU32::new(0),
            sq_polling: AtomicU32::new(0),
            slots: (0..2 * ENTRIES).map(|_| UnsafeCell::new([0; 64])).collect(),
        }
    }

    fn index(&self, off: u64) -> Option<&AtomicU32> {
        match off {
            OFF_SQ_TAIL => Some(&self.sq_tail),
            OFF_SQ_HEAD => Some(&self.sq_head),
            OFF_CQ_TAIL => Some(&self.cq_tail),
            OFF_CQ_HEAD => Some(&self.cq_head),
            OFF_SQ_POLLING => Some(&self.sq_polling),
            _ => None,
        }
    }

    fn slot(&self, off: u64, len: usize) -> &UnsafeCell<[u8; 64]> {
        let rel = off - u64::from(RING_OFFSET);
        assert!(
            rel.is_multiple_of(64) && len == 64,
            "the ring logic copies whole entries"
        );
        &self.slots[usize::try_from(rel / 64).unwrap()]
    }
}

impl QueueMem for Model {
    fn len(&self) -> u64 {
        queue::bytes_for(ENTRIES).unwrap()
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) {
        if off < u64::from(RING_OFFSET) {
            unreachable!("header words are read as index words")
        }
        self.slot(off, buf.len()).with(|p| {
            // SAFETY: loom's cell checks the access (a concurrent write is
            // reported as a race); `p` points to a live 64-byte array and
            // `slot` checked the length.
            let src = unsafe { &*p };
            buf.copy_from_slice(src);
        });
    }
    fn write_at(&self, off: u64, data: &[u8]) {
        if off < u64::from(RING_OFFSET) {
            // `Producer::init` writes the header the model starts with.
            let word = self.header[usize::try_from(off / 4).unwrap()];
            assert_eq!(data, word.to_le_bytes(), "header word {off:#x}");
            return;
        }
        self.slot(off, data.len()).with_mut(|p| {
            // SAFETY: as in `read_at`, for writing.
            let dst = unsafe { &mut *p };
            dst.copy_from_slice(data);
        });
    }
    fn load_index(&self, off: u64) -> u32 {
        match self.index(off) {
            Some(a) => a.load(Ordering::Acquire),
            None => self.header[usize::try_from(off / 4).unwrap()],
        }
    }
    fn store_index(&self, off: u64, v: u32) {
        self.index(off)
            .expect("only index words are stored")
            .store(v, Ordering::Release);
    }
}

fn sqe(tag: u32) -> Sqe {
    Sqe {
        opcode: 3,
        tag,
        args: [tag; 14],
    }
}

/// The serving loop of an echo device: `n` submissions answered in order.
fn serve(m: &Model, c: &mut Consumer, n: u32) {
    let mut done = 0;
    while done < n {
        match c.pop(m) {
            Some(s) => {
                let answer = Cqe {
                    tag: s.tag,
                    status: s.opcode,
                    result: s.args,
                };
                while !c.push(m, &answer) {
                    thread::yield_now();
                }
                done += 1;
            }
            None => thread::yield_now(),
        }
    }
}

/// A model explorer bounded to three preemptions per execution (the
/// spin loops make the unbounded space explode; bugs of this protocol
/// need far fewer).
fn bounded() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b
}

#[test]
fn honest_sides_wrap_a_ring_of_two() {
    bounded().check(|| {
        let m = Arc::new(Model::new());
        let mut p = Producer::init(&*m, ENTRIES).expect("header");
        let mut c = Consumer::attach(&*m).expect("attach");
        let dev = {
            let m = m.clone();
            thread::spawn(move || serve(&m, &mut c, 3))
        };
        // Three requests through two slots: the indexes wrap the ring.
        let (mut sent, mut got) = (0u32, 0u32);
        while got < 3 {
            if sent < 3 && p.submit(&*m, &sqe(sent)) {
                sent += 1;
                continue;
            }
            match p.complete(&*m) {
                Some(c) => {
                    assert_eq!((c.tag, c.status, c.result), (got, 3, [got; 14]));
                    got += 1;
                }
                None => thread::yield_now(),
            }
        }
        dev.join().unwrap();
        assert_eq!(p.garbage(), 0);
    });
}

#[test]
fn a_lying_producer_is_garbage_and_cannot_make_the_device_overwrite() {
    loom::model(|| {
        let m = Arc::new(Model::new());
        Producer::init(&*m, ENTRIES).expect("header");
        let mut c = Consumer::attach(&*m).expect("attach");
        let dev = {
            let m = m.clone();
            thread::spawn(move || {
                // Serve whatever the tail says, twice round.
                let mut posted = 0u32;
                for _ in 0..2 {
                    if let Some(s) = c.pop(&*m) {
                        let answer = Cqe {
                            tag: s.tag,
                            ..Cqe::default()
                        };
                        if c.push(&*m, &answer) {
                            posted += 1;
                        }
                    }
                }
                (c.garbage(), c.sq_head(), posted)
            })
        };
        // The liar claims five submissions (more than a ring) and that
        // it consumed a completion nobody posted; it writes no entries.
        m.sq_tail.store(5, Ordering::Release);
        m.cq_head.store(1, Ordering::Release);
        let (garbage, head, posted) = dev.join().unwrap();
        // The device either saw the lie (counted, skipped to the tail) or
        // nothing yet; it never posts into a ring whose head is ahead of
        // its tail (nothing was posted at all: that head makes it full).
        assert!(garbage <= 2);
        assert!(head == 0 || (head == 5 && garbage >= 1));
        assert!(posted == 0 || m.cq_head.load(Ordering::Acquire) == 0);
        assert!(m.cq_tail.load(Ordering::Acquire) <= ENTRIES);
    });
}

#[test]
fn a_lying_device_is_garbage_and_cannot_make_the_domain_overwrite() {
    loom::model(|| {
        let m = Arc::new(Model::new());
        let mut p = Producer::init(&*m, ENTRIES).expect("header");
        let liar = {
            let m = m.clone();
            thread::spawn(move || {
                // Claims it consumed far more than was submitted, and
                // posted seven completions into a ring of two.
                m.sq_head.store(100, Ordering::Release);
                m.cq_tail.store(7, Ordering::Release);
            })
        };
        let mut submitted = 0;
        for t in 0..4 {
            if p.submit(&*m, &sqe(t)) {
                submitted += 1;
            }
            assert_eq!(p.complete(&*m), None, "a garbage tail is never followed");
        }
        liar.join().unwrap();
        assert_eq!(p.complete(&*m), None);
        // Never more submissions in flight than slots: a head ahead of our
        // tail looks full.
        assert!(submitted <= ENTRIES);
        assert!(p.garbage() >= 1);
    });
}
