//! Queues: the data path. Submissions and completions go through rings in
//! shared memory; the only signals are eventfds (doorbell to the daemon,
//! completion back), never a message on the socket.

use crate::{ClientError, SharedMem};
use coproc_proto::queue::{self, Cqe, Sqe};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, Ordering};
use std::time::Duration;

/// A queue of one vcoproc, owned by the domain.
#[derive(Debug)]
pub struct Queue {
    mem: SharedMem,
    iova: u64,
    entries: u32,
    doorbell: OwnedFd,
    completion: OwnedFd,
    sq_tail: u32,
    cq_head: u32,
}

fn mem_err(e: rustix::io::Errno) -> ClientError {
    ClientError::Memory(e.to_string())
}

impl Queue {
    /// Ring memory, doorbell and completion eventfds for `entries` entries,
    /// header initialised. Hand it to the daemon with `Client::create_queue`.
    pub(crate) fn new(iova: u64, entries: u32) -> Result<Queue, ClientError> {
        let bytes = queue::bytes_for(entries).ok_or_else(|| {
            ClientError::Memory(format!("{entries} entries: use a power of two up to 4096"))
        })?;
        let mem = SharedMem::new(bytes)?;
        mem.write(queue::OFF_MAGIC, &queue::MAGIC.to_le_bytes())?;
        mem.write(queue::OFF_ENTRIES, &entries.to_le_bytes())?;
        mem.write(queue::OFF_ENTRY_SIZE, &queue::ENTRY_SIZE.to_le_bytes())?;
        let flags = rustix::event::EventfdFlags::CLOEXEC;
        let doorbell = rustix::event::eventfd(0, flags).map_err(mem_err)?;
        let completion = rustix::event::eventfd(0, flags).map_err(mem_err)?;
        Ok(Queue {
            mem,
            iova,
            entries,
            doorbell,
            completion,
            sq_tail: 0,
            cq_head: 0,
        })
    }

    pub(crate) fn fds(&self) -> [BorrowedFd<'_>; 3] {
        [
            self.mem.fd(),
            self.doorbell.as_fd(),
            self.completion.as_fd(),
        ]
    }

    /// Where the vcoproc sees the ring memory.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Bytes of ring memory (what the firmware is told).
    pub fn len(&self) -> u64 {
        self.mem.len()
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Entries per ring.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    fn word(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        let _ = self.mem.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn set_word(&self, off: u64, v: u32) {
        let _ = self.mem.write(off, &v.to_le_bytes());
    }

    /// The device side's submission head.
    pub fn sq_head(&self) -> u32 {
        fence(Ordering::Acquire);
        self.word(queue::OFF_SQ_HEAD)
    }

    /// Put a submission in the ring; false if it is full. Publish with
    /// [`Queue::ring`].
    pub fn submit(&mut self, sqe: &Sqe) -> bool {
        if self.sq_tail.wrapping_sub(self.sq_head()) >= self.entries {
            return false;
        }
        let slot = u64::from(self.sq_tail & (self.entries - 1));
        let off = u64::from(queue::RING_OFFSET) + slot * u64::from(queue::ENTRY_SIZE);
        let _ = self.mem.write(off, &sqe.to_bytes());
        self.sq_tail = self.sq_tail.wrapping_add(1);
        fence(Ordering::Release);
        self.set_word(queue::OFF_SQ_TAIL, self.sq_tail);
        true
    }

    /// Ring the doorbell: one eventfd write, no message to the daemon.
    pub fn ring(&self) -> Result<(), ClientError> {
        rustix::io::write(&self.doorbell, &1u64.to_ne_bytes()).map_err(mem_err)?;
        Ok(())
    }

    /// Wait until the completion eventfd fires (or `timeout`); true if it did.
    pub fn wait(&self, timeout: Duration) -> Result<bool, ClientError> {
        let ts = rustix::time::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: timeout.subsec_nanos() as i64,
        };
        let mut fds = [PollFd::new(&self.completion, PollFlags::IN)];
        loop {
            match poll(&mut fds, Some(&ts)) {
                Ok(0) => return Ok(false),
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(mem_err(e)),
            }
        }
        let mut b = [0u8; 8];
        rustix::io::read(&self.completion, &mut b).map_err(mem_err)?;
        Ok(true)
    }

    /// Take the next completion, if the device posted one.
    pub fn complete(&mut self) -> Option<Cqe> {
        fence(Ordering::Acquire);
        let tail = self.word(queue::OFF_CQ_TAIL);
        if tail == self.cq_head {
            return None;
        }
        let slot = u64::from(self.cq_head & (self.entries - 1));
        let off = u64::from(queue::RING_OFFSET)
            + u64::from(self.entries) * u64::from(queue::ENTRY_SIZE)
            + slot * u64::from(queue::ENTRY_SIZE);
        let mut b = [0u8; 64];
        let _ = self.mem.read(off, &mut b);
        self.cq_head = self.cq_head.wrapping_add(1);
        fence(Ordering::Release);
        self.set_word(queue::OFF_CQ_HEAD, self.cq_head);
        Some(Cqe::from_bytes(&b))
    }

    /// Write any value as the submission tail (tests: garbage indices).
    pub fn poke_sq_tail(&self, v: u32) {
        self.set_word(queue::OFF_SQ_TAIL, v);
    }

    /// Take the device's head as our tail again (after garbage).
    pub fn resync(&mut self) {
        self.sq_tail = self.sq_head();
        self.set_word(queue::OFF_SQ_TAIL, self.sq_tail);
    }
}
