//! Queue layout: submission and completion rings in a domain's shared
//! memory, the same for every device class (the mcu firmware SDK's
//! `coproc.h` has the firmware side; a test checks the two agree).

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
/// Flags word (reserved, 0).
pub const OFF_FLAGS: u64 = 0x00c;
/// Submission tail, written by the domain.
pub const OFF_SQ_TAIL: u64 = 0x040;
/// Submission head, written by the device side.
pub const OFF_SQ_HEAD: u64 = 0x080;
/// Completion tail, written by the device side.
pub const OFF_CQ_TAIL: u64 = 0x0c0;
/// Completion head, written by the domain.
pub const OFF_CQ_HEAD: u64 = 0x100;

/// Bytes a queue of `entries` needs (header page + both rings), or None if
/// `entries` is not a power of two in 1..=MAX_ENTRIES.
pub fn bytes_for(entries: u32) -> Option<u64> {
    (entries.is_power_of_two() && entries <= MAX_ENTRIES)
        .then(|| u64::from(RING_OFFSET) + 2 * u64::from(entries) * u64::from(ENTRY_SIZE))
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

impl Sqe {
    /// The 64 bytes of the entry.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[..4].copy_from_slice(&self.opcode.to_le_bytes());
        b[4..8].copy_from_slice(&self.tag.to_le_bytes());
        for (i, a) in self.args.iter().enumerate() {
            b[8 + 4 * i..12 + 4 * i].copy_from_slice(&a.to_le_bytes());
        }
        b
    }
}

impl Cqe {
    /// Parse 64 bytes.
    pub fn from_bytes(b: &[u8; 64]) -> Cqe {
        let w = |i: usize| u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        Cqe {
            tag: w(0),
            status: w(1),
            result: std::array::from_fn(|i| w(2 + i)),
        }
    }
}

/// Memory holding a queue, as the domain side sees it.
pub trait QueueMem {
    /// Copy bytes out (offsets are within the queue; out of range: zeros).
    fn read_at(&self, off: u64, buf: &mut [u8]);
    /// Copy bytes in (out of range: ignored).
    fn write_at(&self, off: u64, data: &[u8]);
}

fn word(m: &impl QueueMem, off: u64) -> u32 {
    let mut b = [0u8; 4];
    m.read_at(off, &mut b);
    u32::from_le_bytes(b)
}

/// The domain's end of a queue: it owns the submission tail and the
/// completion head, and trusts nothing the device side writes beyond
/// reading it.
#[derive(Debug, Clone)]
pub struct Producer {
    entries: u32,
    sq_tail: u32,
    cq_head: u32,
}

impl Producer {
    /// Write the header of a fresh queue of `entries` into `m`.
    pub fn init(m: &impl QueueMem, entries: u32) -> Option<Producer> {
        bytes_for(entries)?;
        m.write_at(OFF_MAGIC, &MAGIC.to_le_bytes());
        m.write_at(OFF_ENTRIES, &entries.to_le_bytes());
        m.write_at(OFF_ENTRY_SIZE, &ENTRY_SIZE.to_le_bytes());
        Some(Producer {
            entries,
            sq_tail: 0,
            cq_head: 0,
        })
    }

    /// Entries per ring.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// The device side's submission head.
    pub fn sq_head(&self, m: &impl QueueMem) -> u32 {
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        word(m, OFF_SQ_HEAD)
    }

    /// Put a submission in the ring and publish the tail; false if full.
    pub fn submit(&mut self, m: &impl QueueMem, sqe: &Sqe) -> bool {
        if self.sq_tail.wrapping_sub(self.sq_head(m)) >= self.entries {
            return false;
        }
        let slot = u64::from(self.sq_tail & (self.entries - 1));
        m.write_at(
            u64::from(RING_OFFSET) + slot * u64::from(ENTRY_SIZE),
            &sqe.to_bytes(),
        );
        self.sq_tail = self.sq_tail.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        m.write_at(OFF_SQ_TAIL, &self.sq_tail.to_le_bytes());
        true
    }

    /// Take the next completion, if one was posted.
    pub fn complete(&mut self, m: &impl QueueMem) -> Option<Cqe> {
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        if word(m, OFF_CQ_TAIL) == self.cq_head {
            return None;
        }
        let slot = u64::from(self.cq_head & (self.entries - 1));
        let off = u64::from(RING_OFFSET) + (u64::from(self.entries) + slot) * u64::from(ENTRY_SIZE);
        let mut b = [0u8; 64];
        m.read_at(off, &mut b);
        self.cq_head = self.cq_head.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        m.write_at(OFF_CQ_HEAD, &self.cq_head.to_le_bytes());
        Some(Cqe::from_bytes(&b))
    }

    /// Write any value as the submission tail (tests: garbage indices).
    pub fn poke_sq_tail(&self, m: &impl QueueMem, v: u32) {
        m.write_at(OFF_SQ_TAIL, &v.to_le_bytes());
    }

    /// Take the device side's head as our tail again (after garbage).
    pub fn resync(&mut self, m: &impl QueueMem) {
        self.sq_tail = self.sq_head(m);
        m.write_at(OFF_SQ_TAIL, &self.sq_tail.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Vecmem(std::cell::RefCell<Vec<u8>>);
    impl QueueMem for Vecmem {
        fn read_at(&self, off: u64, buf: &mut [u8]) {
            let v = self.0.borrow();
            buf.copy_from_slice(&v[off as usize..off as usize + buf.len()]);
        }
        fn write_at(&self, off: u64, data: &[u8]) {
            self.0.borrow_mut()[off as usize..off as usize + data.len()].copy_from_slice(data);
        }
    }

    #[test]
    fn producer_fills_and_drains() {
        let m = Vecmem(std::cell::RefCell::new(vec![
            0;
            bytes_for(4).unwrap() as usize
        ]));
        let mut p = Producer::init(&m, 4).unwrap();
        for t in 0..4 {
            assert!(p.submit(
                &m,
                &Sqe {
                    tag: t,
                    ..Default::default()
                }
            ));
        }
        assert!(
            !p.submit(&m, &Sqe::default()),
            "full until the device consumes"
        );
        // Play the device: consume two, complete one.
        m.write_at(OFF_SQ_HEAD, &2u32.to_le_bytes());
        assert!(p.submit(&m, &Sqe::default()));
        assert!(p.complete(&m).is_none());
        let cq0 = u64::from(RING_OFFSET) + 4 * 64;
        m.write_at(
            cq0,
            &Sqe {
                opcode: 9,
                tag: 1,
                args: [0; 14],
            }
            .to_bytes(),
        );
        m.write_at(OFF_CQ_TAIL, &1u32.to_le_bytes());
        assert_eq!(p.complete(&m).unwrap().tag, 9);
        assert!(p.complete(&m).is_none());
        assert!(Producer::init(&m, 5).is_none());
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
    }
}
