//! Requests about a vcoproc's memory: mappings, shared virtual addressing,
//! device-local memory, revoke, queues.

use crate::shm;
use crate::Answer;
use crate::Client;
use crate::ClientError;
use crate::ErrorCode;
use crate::Queue;
use crate::Request;
use crate::SharedMem;
use crate::SvaMem;
use crate::WireMapKind;
use crate::WirePerms;
use crate::MAX_BUSY_POLL;
use std::time::Duration;

impl Client {
    /// Map `len` bytes of `mem` from `offset` at `iova` in the vcoproc.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// let mem = SharedMem::with_contents(b"input for the firmware")?;
    /// c.map(v, &mem, 0, 0x6000_0000, mem.len(), WirePerms::Rw, WireMapKind::Pinned)?;
    /// # Ok(())
    /// # }
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn map(
        &mut self,
        vcoproc: u32,
        mem: &SharedMem,
        offset: u64,
        iova: u64,
        len: u64,
        perms: WirePerms,
        kind: WireMapKind,
    ) -> Result<(), ClientError> {
        let req = Request::Map {
            vcoproc,
            iova,
            offset,
            len,
            perms,
            kind,
        };
        answer!(self.call(req, &[mem.fd()])?, Answer::Done => ())
    }

    /// Create an event-driven queue of `entries` entries whose rings
    /// appear at `iova`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// let mut q = c.create_queue(v, 0x6000_0000, 64)?;
    /// q.submit(&Sqe { opcode: 1, tag: 7, args: [0; 14] });
    /// q.ring()?;
    /// if q.wait(Duration::from_secs(1))? {
    ///     let done = q.complete().expect("a completion");
    ///     assert_eq!(done.tag, 7);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn create_queue(
        &mut self,
        vcoproc: u32,
        iova: u64,
        entries: u32,
    ) -> Result<Queue, ClientError> {
        self.create_queue_with(vcoproc, iova, entries, Duration::ZERO)
    }

    /// Create a queue with a busy-poll budget (`Duration::ZERO`:
    /// event-driven, what [`Client::create_queue`] makes; at most
    /// [`MAX_BUSY_POLL`]). With a budget, [`Queue::wait`] spins on the
    /// completion tail for up to that long before it sleeps on the
    /// completion eventfd, and firmware that follows the queue protocol
    /// (`coproc_queue_idle` in the mcu SDK) spins on the submission tail
    /// for as long before it parks. The budget is written into the queue
    /// header's flags word.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// // Spin up to 50 µs on the completion tail before sleeping.
    /// let q = c.create_queue_with(v, 0x6000_0000, 64, Duration::from_micros(50))?;
    /// assert_eq!(q.busy_poll(), Duration::from_micros(50));
    /// # Ok(())
    /// # }
    /// ```
    pub fn create_queue_with(
        &mut self,
        vcoproc: u32,
        iova: u64,
        entries: u32,
        busy_poll: Duration,
    ) -> Result<Queue, ClientError> {
        let poll_us = u32::try_from(busy_poll.as_micros())
            .ok()
            .filter(|&us| us <= coproc_proto::queue::MAX_POLL_US)
            .ok_or_else(|| {
                ClientError::Invalid(format!(
                    "busy poll {busy_poll:?} over the maximum {MAX_BUSY_POLL:?}"
                ))
            })?;
        let q = Queue::new(iova, entries, poll_us)?;
        answer!(self.call(
            Request::CreateQueue {
                vcoproc,
                iova,
                entries,
            },
            &q.fds(),
        )?, Answer::Done => q)
    }

    /// Remove the mapping at `iova`.
    pub fn unmap(&mut self, vcoproc: u32, iova: u64) -> Result<(), ClientError> {
        self.done(Request::Unmap { vcoproc, iova })
    }

    /// Shared virtual addressing: `len` bytes (rounded up to pages) of
    /// shared memory placed at the same address in this process and in the
    /// vcoproc's iova space, so pointers stored in it are valid on both
    /// sides. Asks the daemon for the pcoproc's iova window, then tries
    /// ranges in it in order: each must be free here (`MAP_FIXED_NOREPLACE`)
    /// and free in the vcoproc (a range overlapping one of its mappings is
    /// skipped). Counted against the mapped-bytes quota like any mapping.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// // The same virtual address on both sides: pointers in it work for both.
    /// let sva = c.alloc_shared_va(v, 1 << 20, WirePerms::Rw, WireMapKind::Pinned)?;
    /// println!("shared at {:#x}", sva.iova());
    /// # Ok(())
    /// # }
    /// ```
    pub fn alloc_shared_va(
        &mut self,
        vcoproc: u32,
        len: u64,
        perms: WirePerms,
        kind: WireMapKind,
    ) -> Result<SvaMem, ClientError> {
        /// Candidate ranges tried before giving up.
        const TRIES: u64 = 512;
        let len = len.div_ceil(shm::PAGE).max(1) * shm::PAGE;
        let coproc = self.query(vcoproc)?.coproc;
        let info = self
            .list_coprocs()?
            .into_iter()
            .find(|c| c.name == coproc)
            .ok_or_else(|| ClientError::Protocol(format!("pcoproc {coproc} not listed")))?;
        let (base, size) = (info.iova_base, info.iova_size);
        if size < len {
            return Err(ClientError::Memory(format!(
                "{len} bytes do not fit the iova window {base:#x}+{size:#x} of {coproc}"
            )));
        }
        // Candidates 1 MiB apart at least (a range larger than that steps
        // by its own size), from the bottom of the window.
        let stride = len.div_ceil(1 << 20) * (1 << 20);
        let last = base + (size - len);
        let mut addr = base;
        for _ in 0..TRIES {
            if addr > last {
                break;
            }
            let mem = match SharedMem::new_at(addr, len) {
                Ok(m) => m,
                Err(ClientError::AddressTaken(_)) => {
                    addr = addr.saturating_add(stride);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match self.map(vcoproc, &mem, 0, addr, len, perms, kind) {
                Ok(()) => return Ok(SvaMem::new(mem, vcoproc)),
                Err(ClientError::Refused(e))
                    if e.code == ErrorCode::InvalidArgument && e.message.contains("overlaps") => {}
                Err(e) => return Err(e),
            }
            addr = addr.saturating_add(stride);
        }
        Err(ClientError::AddressTaken(base))
    }

    /// Allocate `len` bytes of zeroed device-local memory at `iova` in the
    /// vcoproc: only its firmware can reach it; counted against the
    /// mapped-bytes quota until [`Client::free_local`] or its destruction.
    pub fn alloc_local(&mut self, vcoproc: u32, iova: u64, len: u64) -> Result<(), ClientError> {
        self.done(Request::AllocLocal { vcoproc, iova, len })
    }

    /// Free the device-local memory at `iova`.
    pub fn free_local(&mut self, vcoproc: u32, iova: u64) -> Result<(), ClientError> {
        self.done(Request::FreeLocal { vcoproc, iova })
    }

    /// Revoke the mapping at `iova` (own mappings: any; admins: revocable
    /// ones of any domain). `Some(len)`: removed, and the device can no
    /// longer touch it; `None`: nothing was mapped there.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// let mem = SharedMem::new(4096)?;
    /// c.map(v, &mem, 0, 0x6000_0000, 4096, WirePerms::Rw, WireMapKind::Revocable)?;
    /// let gone = c.revoke(v, 0x6000_0000)?;
    /// assert_eq!(gone, Some(4096));
    /// # Ok(())
    /// # }
    /// ```
    pub fn revoke(&mut self, vcoproc: u32, iova: u64) -> Result<Option<u64>, ClientError> {
        match self.call(Request::Revoke { vcoproc, iova }, &[])? {
            Answer::Revoked { len } => Ok(Some(len)),
            Answer::NotMapped => Ok(None),
            other => Err(ClientError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Mappings visible to this session (of one vcoproc, or all).
    pub fn list_mappings(
        &mut self,
        vcoproc: Option<u32>,
    ) -> Result<Vec<coproc_proto::MappingInfo>, ClientError> {
        answer!(self.call(Request::ListMappings { vcoproc }, &[])?, Answer::Mappings { mappings } => mappings)
    }
}
