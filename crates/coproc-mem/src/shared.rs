//! A [`Region`] seen through `coproc-abi`: the typed shared-memory accessor
//! ([`view`]) and the queue memory ([`QueueMem`]) the ring logic works on,
//! for device classes and for domains in the same process as their
//! pcoproc.

use crate::memory::Region;
use coproc_abi::queue::QueueMem;
use coproc_abi::Shared;

/// The region as a [`Shared`] view, borrowed from it
/// ([`Region::as_shared`]).
pub fn view(r: &Region) -> Shared<'_> {
    r.as_shared()
}

impl QueueMem for Region {
    fn len(&self) -> u64 {
        Region::len(self)
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) {
        view(self).read_at(off, buf);
    }
    fn write_at(&self, off: u64, data: &[u8]) {
        view(self).write_at(off, data);
    }
    fn load_index(&self, off: u64) -> u32 {
        view(self).load_index(off)
    }
    fn store_index(&self, off: u64, v: u32) {
        view(self).store_index(off, v);
    }
}
