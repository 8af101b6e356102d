//! Queue ring entries with a lying peer (`coproc_abi::queue`): the device
//! side's `Consumer` (what the daemon's GPU command processor and the mcu
//! SDK's ring code do) and the domain side's `Producer`, each against a
//! peer that writes anything anywhere between their steps. Each end only
//! ever writes its own index words and the slots of its own ring, never
//! reads or writes outside the memory, and never hands out more entries
//! than the ring holds.
//!
//! Input: a memory size, a header, then a script of steps.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use coproc_abi::gpu::Command;
use coproc_abi::queue::{
    bytes_for, Consumer, Cqe, Producer, QueueMem, Sqe, ENTRY_SIZE, MAGIC, OFF_CQ_HEAD, OFF_CQ_TAIL,
    OFF_ENTRIES, OFF_ENTRY_SIZE, OFF_FLAGS, OFF_MAGIC, OFF_SQ_HEAD, OFF_SQ_TAIL, RING_OFFSET,
};
use coproc_abi::shm::Shared;
use libfuzzer_sys::fuzz_target;

/// One step of the script.
#[derive(Debug, Arbitrary)]
enum Step {
    /// The peer stores an index or header word.
    Poke { word: u8, value: u32 },
    /// The peer scribbles over ring bytes.
    Scribble { at: u16, bytes: [u8; 8] },
    /// The device side takes a submission.
    Pop,
    /// The device side posts a completion.
    Push { tag: u32, status: u32 },
    /// The device side attaches again (a queue served before).
    Reattach,
    /// The domain side submits.
    Submit { opcode: u32, tag: u32 },
    /// The domain side takes a completion.
    Complete,
    /// The domain side resynchronises after a refused tail.
    Resync,
}

const WORDS: [u64; 8] = [
    OFF_MAGIC,
    OFF_ENTRIES,
    OFF_ENTRY_SIZE,
    OFF_FLAGS,
    OFF_SQ_TAIL,
    OFF_SQ_HEAD,
    OFF_CQ_TAIL,
    OFF_CQ_HEAD,
];

fn snapshot(m: &Shared<'_>) -> Vec<u8> {
    let mut v = vec![0u8; m.len() as usize];
    m.read_at(0, &mut v);
    v
}

/// Bytes that changed between `a` and `b` all lie in `allowed` ranges
/// (sorted, not overlapping). The gaps between them are compared as slices.
fn only_changed(a: &[u8], b: &[u8], allowed: &[(u64, u64)], who: &str) {
    let mut from = 0usize;
    let gaps = allowed
        .iter()
        .map(|&(s, e)| (s as usize, e as usize))
        .chain(std::iter::once((a.len(), a.len())));
    for (s, e) in gaps {
        let (s, e) = (s.min(a.len()), e.min(a.len()));
        if from < s && a[from..s] != b[from..s] {
            let i = (from..s).find(|&i| a[i] != b[i]).unwrap_or(from);
            panic!("{who} wrote byte {i:#x} outside its own words and ring");
        }
        from = from.max(e);
    }
}

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    // Mostly small rings (each step compares the whole memory), sometimes
    // the largest.
    let shift = if u.ratio(1, 16)? {
        u.int_in_range(0..=12u32)?
    } else {
        u.int_in_range(0..=4u32)?
    };
    let entries = 1u32 << shift;
    let need = bytes_for(entries).expect("power of two") as usize;
    // Sometimes a memory too small for the header's claim.
    let len = if u.ratio(1, 8)? {
        u.int_in_range(0..=need)?
    } else {
        need
    };
    let mut words = vec![0u64; len.div_ceil(8)];
    // SAFETY: `words` is one allocation of at least `len` bytes, alive for
    // the whole function; it is reached only through this view from here on.
    let m = unsafe { Shared::new(words.as_mut_ptr().cast::<u8>(), len) }.expect("non-null");

    let mut producer = if u.ratio(3, 4)? {
        Producer::init_with(&m, entries, u.int_in_range(0..=2000u32)?).ok()
    } else {
        None
    };
    // A lying header, maybe.
    if u.ratio(1, 4)? {
        m.store_index(OFF_ENTRIES, u32::arbitrary(u)?);
    }
    let mut consumer = Consumer::attach(&m).ok();
    if let Some(c) = &consumer {
        assert!(c.entries().is_power_of_two());
        assert!(bytes_for(c.entries()).is_some_and(|b| b <= m.len()));
        assert_eq!(m.load_index(OFF_MAGIC), MAGIC);
        assert_eq!(m.load_index(OFF_ENTRY_SIZE), ENTRY_SIZE);
    }

    let ring = |e: u32, which: u64| {
        let start = u64::from(RING_OFFSET) + which * u64::from(e) * u64::from(ENTRY_SIZE);
        (start, start + u64::from(e) * u64::from(ENTRY_SIZE))
    };
    let word = |off: u64| (off, off + 4);

    let steps = u.arbitrary_len::<Step>()?.min(256);
    for _ in 0..steps {
        let step = Step::arbitrary(u)?;
        match step {
            Step::Poke { word, value } => {
                m.store_index(WORDS[usize::from(word) % WORDS.len()], value);
                continue;
            }
            Step::Scribble { at, bytes } => {
                let off = u64::from(at) % m.len().max(1);
                m.write_at(off, &bytes);
                continue;
            }
            Step::Pop | Step::Push { .. } | Step::Reattach => {
                let before = snapshot(&m);
                let Some(c) = consumer.as_mut() else {
                    if matches!(step, Step::Reattach) {
                        consumer = Consumer::attach(&m).ok();
                    }
                    continue;
                };
                let e = c.entries();
                match step {
                    Step::Pop => {
                        let head = c.sq_head();
                        if let Some(sqe) = c.pop(&m) {
                            assert_eq!(c.sq_head(), head.wrapping_add(1));
                            // The GPU command processor decodes what it pops.
                            if let Ok(cmd) = Command::decode(&sqe) {
                                assert_eq!(Command::decode(&cmd.encode(sqe.tag)), Ok(cmd));
                            }
                        }
                        assert!(c.poll_us() <= coproc_abi::queue::MAX_POLL_US);
                    }
                    Step::Push { tag, status } => {
                        let cq_head = m.load_index(OFF_CQ_HEAD);
                        let tail_before = m.load_index(OFF_CQ_TAIL);
                        let ok = c.push(
                            &m,
                            &Cqe {
                                tag,
                                status,
                                result: [0; 14],
                            },
                        );
                        if ok {
                            // Never more than a ring ahead of the domain's head.
                            let t = m.load_index(OFF_CQ_TAIL);
                            assert!(t.wrapping_sub(cq_head) <= e);
                        } else {
                            assert_eq!(m.load_index(OFF_CQ_TAIL), tail_before);
                        }
                    }
                    _ => {
                        consumer = Consumer::attach(&m).ok();
                    }
                }
                only_changed(
                    &before,
                    &snapshot(&m),
                    &[word(OFF_SQ_HEAD), word(OFF_CQ_TAIL), ring(e, 1)],
                    "the consumer",
                );
            }
            Step::Submit { .. } | Step::Complete | Step::Resync => {
                let before = snapshot(&m);
                let Some(p) = producer.as_mut() else {
                    continue;
                };
                let e = p.entries();
                match step {
                    Step::Submit { opcode, tag } => {
                        let sqe = Sqe {
                            opcode,
                            tag,
                            args: [tag; 14],
                        };
                        let sq_head = m.load_index(OFF_SQ_HEAD);
                        if p.submit(&m, &sqe) {
                            let t = m.load_index(OFF_SQ_TAIL);
                            assert!(t.wrapping_sub(sq_head) <= e);
                        }
                    }
                    Step::Complete => {
                        let _ = p.complete(&m);
                    }
                    _ => p.resync(&m),
                }
                only_changed(
                    &before,
                    &snapshot(&m),
                    &[word(OFF_SQ_TAIL), word(OFF_CQ_HEAD), ring(e, 0)],
                    "the producer",
                );
            }
        }
    }
    // The view is not used past this point; `words` outlives it.
    drop(words);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
