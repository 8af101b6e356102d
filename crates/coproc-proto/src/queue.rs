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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!((c.tag, c.status, c.result[13]), (1, 2, 12));
    }
}
