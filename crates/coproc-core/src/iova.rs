//! Per-vcoproc iova spaces: which domain memory appears where, with which
//! permissions.
//!
//! A range map from iova to (region, offset, length, permissions, kind).
//! Overlaps are refused; every range lies inside the device's iova window and
//! is page-aligned.

use crate::memory::{Region, PAGE_SIZE};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use thiserror::Error;

/// Access permissions of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Perms {
    /// Device may read.
    pub read: bool,
    /// Device may write.
    pub write: bool,
    /// Device may execute code from it (device classes may refuse: the mcu
    /// class executes only from code memory).
    pub exec: bool,
}

impl Perms {
    /// Read only.
    pub const R: Perms = Perms {
        read: true,
        write: false,
        exec: false,
    };
    /// Read and write.
    pub const RW: Perms = Perms {
        read: true,
        write: true,
        exec: false,
    };
    /// Read and execute.
    pub const RX: Perms = Perms {
        read: true,
        write: false,
        exec: true,
    };
}

/// How long a mapping is guaranteed to last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MapKind {
    /// Valid until its domain unmaps it.
    Pinned,
    /// May also be withdrawn by the daemon or an admin (revoke).
    Revocable,
}

/// One mapping in an iova space.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// Device address of the first byte.
    pub iova: u64,
    /// Length in bytes.
    pub len: u64,
    /// The domain memory behind it.
    pub region: Arc<Region>,
    /// Offset of the first byte inside `region`.
    pub offset: u64,
    /// Permissions.
    pub perms: Perms,
    /// Pinned or revocable.
    pub kind: MapKind,
}

impl Mapping {
    /// A pinned read/write mapping of the first `len` bytes of `region`.
    pub fn pinned_rw(iova: u64, region: &Arc<Region>, len: u64) -> Mapping {
        Mapping {
            iova,
            len,
            region: region.clone(),
            offset: 0,
            perms: Perms::RW,
            kind: MapKind::Pinned,
        }
    }
}

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IovaError {
    /// Not page-aligned or zero length.
    #[error("iova {iova:#x}+{len:#x} is empty or not {PAGE_SIZE}-byte aligned")]
    Unaligned {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// Outside the device's iova window.
    #[error("iova {iova:#x}+{len:#x} is outside the window {base:#x}+{size:#x}")]
    OutsideWindow {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
        /// Window base.
        base: u64,
        /// Window size.
        size: u64,
    },
    /// Overlaps an existing mapping.
    #[error("iova {iova:#x}+{len:#x} overlaps the mapping at {other:#x}")]
    Overlap {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
        /// The mapping it hits.
        other: u64,
    },
    /// The region does not hold offset+len.
    #[error("offset {offset:#x}+{len:#x} is past the end of the memory ({size:#x} bytes)")]
    PastEnd {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Region size.
        size: u64,
    },
    /// No mapping starts at this iova.
    #[error("no mapping at iova {0:#x}")]
    NotMapped(u64),
    /// No permission bits.
    #[error("a mapping needs at least one of read, write, exec")]
    NoPerms,
    /// No device-local allocation starts at this iova.
    #[error("no device-local memory at iova {0:#x}")]
    NotLocal(u64),
}

/// The iova space of one vcoproc.
#[derive(Debug, Clone, Default)]
pub struct IovaSpace {
    base: u64,
    size: u64,
    maps: BTreeMap<u64, Mapping>,
    bytes: u64,
    /// Device-local allocations: iova → length. They share the window with
    /// the mappings and never overlap them.
    local: BTreeMap<u64, u64>,
}

impl IovaSpace {
    /// An empty space covering the window `base..base+size`.
    pub fn new(base: u64, size: u64) -> IovaSpace {
        IovaSpace {
            base,
            size,
            maps: BTreeMap::new(),
            bytes: 0,
            local: BTreeMap::new(),
        }
    }

    /// Check a mapping without inserting it.
    pub fn check(&self, m: &Mapping) -> Result<(), IovaError> {
        let (iova, len) = (m.iova, m.len);
        if len == 0
            || iova % PAGE_SIZE != 0
            || len % PAGE_SIZE != 0
            || !m.offset.is_multiple_of(PAGE_SIZE)
        {
            return Err(IovaError::Unaligned { iova, len });
        }
        if !(m.perms.read || m.perms.write || m.perms.exec) {
            return Err(IovaError::NoPerms);
        }
        let end = iova.checked_add(len);
        if iova < self.base || end.is_none_or(|e| e > self.base + self.size) {
            return Err(IovaError::OutsideWindow {
                iova,
                len,
                base: self.base,
                size: self.size,
            });
        }
        if m.offset.checked_add(len).is_none_or(|e| e > m.region.len()) {
            return Err(IovaError::PastEnd {
                offset: m.offset,
                len,
                size: m.region.len(),
            });
        }
        if let Some(other) = self.overlapping(iova, len) {
            return Err(IovaError::Overlap { iova, len, other });
        }
        Ok(())
    }

    fn overlapping(&self, iova: u64, len: u64) -> Option<u64> {
        let end = iova + len;
        if let Some((&s, m)) = self.maps.range(..end).next_back() {
            if s + m.len > iova {
                return Some(s);
            }
        }
        if let Some((&s, &l)) = self.local.range(..end).next_back() {
            if s + l > iova {
                return Some(s);
            }
        }
        None
    }

    /// Insert a mapping.
    pub fn insert(&mut self, m: Mapping) -> Result<(), IovaError> {
        self.check(&m)?;
        self.bytes += m.len;
        self.maps.insert(m.iova, m);
        Ok(())
    }

    /// Remove the mapping that starts at `iova`.
    pub fn remove(&mut self, iova: u64) -> Result<Mapping, IovaError> {
        let m = self.maps.remove(&iova).ok_or(IovaError::NotMapped(iova))?;
        self.bytes -= m.len;
        Ok(m)
    }

    /// The mapping containing `iova`, if any.
    pub fn lookup(&self, iova: u64) -> Option<&Mapping> {
        let (_, m) = self.maps.range(..=iova).next_back()?;
        (iova < m.iova + m.len).then_some(m)
    }

    /// All mappings in iova order.
    pub fn iter(&self) -> impl Iterator<Item = &Mapping> {
        self.maps.values()
    }

    /// Number of mappings.
    pub fn count(&self) -> usize {
        self.maps.len()
    }

    /// Bytes mapped.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Remove everything, returning the mappings.
    pub fn drain(&mut self) -> Vec<Mapping> {
        self.bytes = 0;
        std::mem::take(&mut self.maps).into_values().collect()
    }

    /// Check a device-local range without entering it: page-aligned and
    /// non-empty, inside the window, overlapping no mapping and no other
    /// device-local range.
    pub fn check_local(&self, iova: u64, len: u64) -> Result<(), IovaError> {
        if len == 0 || !iova.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(IovaError::Unaligned { iova, len });
        }
        let end = iova.checked_add(len);
        if iova < self.base || end.is_none_or(|e| e > self.base + self.size) {
            return Err(IovaError::OutsideWindow {
                iova,
                len,
                base: self.base,
                size: self.size,
            });
        }
        if let Some(other) = self.overlapping(iova, len) {
            return Err(IovaError::Overlap { iova, len, other });
        }
        Ok(())
    }

    /// Enter a device-local range (checked as by [`IovaSpace::check_local`]).
    pub fn insert_local(&mut self, iova: u64, len: u64) -> Result<(), IovaError> {
        self.check_local(iova, len)?;
        self.local.insert(iova, len);
        Ok(())
    }

    /// Remove the device-local range that starts at `iova`; its length.
    pub fn remove_local(&mut self, iova: u64) -> Result<u64, IovaError> {
        self.local.remove(&iova).ok_or(IovaError::NotLocal(iova))
    }

    /// The device-local range containing `iova`, as (start, length).
    pub fn lookup_local(&self, iova: u64) -> Option<(u64, u64)> {
        let (&s, &l) = self.local.range(..=iova).next_back()?;
        (iova < s + l).then_some((s, l))
    }

    /// Bytes of device-local memory entered.
    pub fn local_bytes(&self) -> u64 {
        self.local.values().sum()
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

    fn map(region: &Arc<Region>, iova: u64, len: u64) -> Mapping {
        Mapping::pinned_rw(iova, region, len)
    }

    #[test]
    fn refuses_bad_ranges() {
        let r = Arc::new(Region::new(4 * PAGE_SIZE).unwrap());
        let mut s = IovaSpace::new(0x6000_0000, 0x10_0000);
        s.insert(map(&r, 0x6000_1000, 0x2000)).unwrap();
        assert!(matches!(
            s.insert(map(&r, 0x6000_2000, 0x1000)),
            Err(IovaError::Overlap { .. })
        ));
        assert!(matches!(
            s.insert(map(&r, 0x6000_0000, 0x2000)),
            Err(IovaError::Overlap { .. })
        ));
        assert!(matches!(
            s.insert(map(&r, 0x5fff_f000, 0x1000)),
            Err(IovaError::OutsideWindow { .. })
        ));
        assert!(matches!(
            s.insert(map(&r, 0x600f_f000, 0x2000)),
            Err(IovaError::OutsideWindow { .. })
        ));
        assert!(matches!(
            s.insert(map(&r, 0x6000_8000, 0x5000)),
            Err(IovaError::PastEnd { .. })
        ));
        assert!(matches!(
            s.insert(map(&r, 0x6000_8001, 0x1000)),
            Err(IovaError::Unaligned { .. })
        ));
        assert!(matches!(
            s.insert(map(&r, u64::MAX - 0xfff, 0x1000)),
            Err(IovaError::OutsideWindow { .. })
        ));
        s.insert(map(&r, 0x6000_3000, 0x1000)).unwrap();
        assert_eq!(s.count(), 2);
        assert_eq!(s.bytes(), 0x3000);
        assert_eq!(s.lookup(0x6000_2fff).unwrap().iova, 0x6000_1000);
        assert!(s.lookup(0x6000_0fff).is_none());
        s.remove(0x6000_1000).unwrap();
        assert!(s.remove(0x6000_1000).is_err());
        assert_eq!(s.bytes(), 0x1000);
    }

    #[test]
    fn local_ranges_share_the_window_with_mappings() {
        let r = Arc::new(Region::new(4 * PAGE_SIZE).unwrap());
        let mut s = IovaSpace::new(0x6000_0000, 0x10_0000);
        s.insert(map(&r, 0x6000_1000, 0x2000)).unwrap();
        // Overlapping a mapping, on either side.
        for (iova, len) in [(0x6000_2000, 0x1000), (0x6000_0000, 0x2000)] {
            assert_eq!(
                s.insert_local(iova, len),
                Err(IovaError::Overlap {
                    iova,
                    len,
                    other: 0x6000_1000
                })
            );
        }
        assert!(matches!(
            s.insert_local(0x6000_4000, 0),
            Err(IovaError::Unaligned { .. })
        ));
        assert!(matches!(
            s.insert_local(0x6000_4800, 0x1000),
            Err(IovaError::Unaligned { .. })
        ));
        assert!(matches!(
            s.insert_local(0x600f_f000, 0x2000),
            Err(IovaError::OutsideWindow { .. })
        ));
        assert!(matches!(
            s.insert_local(u64::MAX - 0xfff, 0x1000),
            Err(IovaError::OutsideWindow { .. })
        ));
        s.insert_local(0x6000_4000, 0x3000).unwrap();
        // A mapping cannot land on local memory, nor local memory twice.
        assert!(matches!(
            s.insert(map(&r, 0x6000_6000, 0x1000)),
            Err(IovaError::Overlap {
                other: 0x6000_4000,
                ..
            })
        ));
        assert!(s.insert_local(0x6000_5000, 0x1000).is_err());
        // Local memory is not a mapping: unmap and lookup do not see it.
        assert_eq!(
            s.remove(0x6000_4000).unwrap_err(),
            IovaError::NotMapped(0x6000_4000)
        );
        assert!(s.lookup(0x6000_4000).is_none());
        assert_eq!(s.lookup_local(0x6000_6fff), Some((0x6000_4000, 0x3000)));
        assert_eq!(s.bytes(), 0x2000);
        assert_eq!(s.local_bytes(), 0x3000);
        assert_eq!(
            s.remove_local(0x6000_1000),
            Err(IovaError::NotLocal(0x6000_1000))
        );
        assert_eq!(s.remove_local(0x6000_4000), Ok(0x3000));
        assert_eq!(s.local_bytes(), 0);
        s.insert(map(&r, 0x6000_6000, 0x1000)).unwrap();
    }

    proptest! {
        /// Random inserts/removes of mappings and device-local ranges agree
        /// with a page-by-page model.
        #[test]
        fn matches_naive_model(ops in proptest::collection::vec((0u64..64, 1u64..8, any::<bool>(), any::<bool>()), 1..200)) {
            let r = Arc::new(Region::new(8 * PAGE_SIZE).unwrap());
            let base = 0x6000_0000;
            let mut s = IovaSpace::new(base, 64 * PAGE_SIZE);
            // Per page: (start of the range holding it, whether it is local).
            let mut owner: Vec<Option<(u64, bool)>> = vec![None; 64];
            for (page, pages, insert, local) in ops {
                let iova = base + page * PAGE_SIZE;
                if insert {
                    let fits = page + pages <= 64;
                    let free = fits && (page..page + pages).all(|p| owner[p as usize].is_none());
                    let ok = if local {
                        s.insert_local(iova, pages * PAGE_SIZE).is_ok()
                    } else {
                        s.insert(map(&r, iova, pages * PAGE_SIZE)).is_ok()
                    };
                    prop_assert_eq!(ok, free);
                    if free {
                        for p in page..page + pages { owner[p as usize] = Some((iova, local)); }
                    }
                } else {
                    let starts_here = owner[page as usize] == Some((iova, local));
                    let ok = if local { s.remove_local(iova).is_ok() } else { s.remove(iova).is_ok() };
                    prop_assert_eq!(ok, starts_here);
                    if starts_here {
                        for o in &mut owner { if *o == Some((iova, local)) { *o = None; } }
                    }
                }
                for p in 0..64u64 {
                    let a = base + p * PAGE_SIZE + 17;
                    let want = owner[p as usize];
                    prop_assert_eq!(s.lookup(a).map(|m| m.iova), want.filter(|o| !o.1).map(|o| o.0));
                    prop_assert_eq!(s.lookup_local(a).map(|l| l.0), want.filter(|o| o.1).map(|o| o.0));
                }
                let used = |l: bool| owner.iter().filter(|o| o.is_some_and(|o| o.1 == l)).count() as u64;
                prop_assert_eq!(s.bytes(), used(false) * PAGE_SIZE);
                prop_assert_eq!(s.local_bytes(), used(true) * PAGE_SIZE);
            }
        }
    }
}
