//! Queues: the data path. Submissions and completions go through rings in
//! shared memory; the only signals are eventfds (doorbell to the daemon,
//! completion back), never a message on the socket.

use crate::{ClientError, SharedMem};
use coproc_proto::queue::{self, Cqe, Producer, QueueMem, Sqe};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// A queue of one vcoproc, owned by the domain.
#[derive(Debug)]
pub struct Queue {
    mem: SharedMem,
    iova: u64,
    ring: Producer,
    doorbell: OwnedFd,
    completion: OwnedFd,
}

fn mem_err(e: rustix::io::Errno) -> ClientError {
    ClientError::Memory(e.to_string())
}

impl QueueMem for SharedMem {
    fn read_at(&self, off: u64, buf: &mut [u8]) {
        if self.read(off, buf).is_err() {
            buf.fill(0);
        }
    }
    fn write_at(&self, off: u64, data: &[u8]) {
        let _ = self.write(off, data);
    }
}

impl Queue {
    /// Ring memory, doorbell and completion eventfds for `entries` entries,
    /// header initialised. Hand it to the daemon with `Client::create_queue`.
    pub(crate) fn new(iova: u64, entries: u32) -> Result<Queue, ClientError> {
        let bytes = queue::bytes_for(entries).ok_or_else(|| {
            ClientError::Memory(format!("{entries} entries: use a power of two up to 4096"))
        })?;
        let mem = SharedMem::new(bytes)?;
        let ring = Producer::init(&mem, entries)
            .ok_or_else(|| ClientError::Memory("bad queue size".into()))?;
        let flags = rustix::event::EventfdFlags::CLOEXEC;
        let doorbell = rustix::event::eventfd(0, flags).map_err(mem_err)?;
        let completion = rustix::event::eventfd(0, flags).map_err(mem_err)?;
        Ok(Queue {
            mem,
            iova,
            ring,
            doorbell,
            completion,
        })
    }

    pub(crate) fn fds(&self) -> [BorrowedFd<'_>; 3] {
        [
            self.mem.fd(),
            self.doorbell.as_fd(),
            self.completion.as_fd(),
        ]
    }

    /// The completion eventfd (to wait on it with your own poll/epoll).
    pub fn completion_fd(&self) -> BorrowedFd<'_> {
        self.completion.as_fd()
    }

    /// The doorbell eventfd ([`Queue::ring`] writes it).
    pub fn doorbell_fd(&self) -> BorrowedFd<'_> {
        self.doorbell.as_fd()
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
        self.ring.entries()
    }

    /// The device side's submission head.
    pub fn sq_head(&self) -> u32 {
        self.ring.sq_head(&self.mem)
    }

    /// Put a submission in the ring; false if it is full. Publish with
    /// [`Queue::ring`].
    pub fn submit(&mut self, sqe: &Sqe) -> bool {
        self.ring.submit(&self.mem, sqe)
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
        self.ring.complete(&self.mem)
    }

    /// Write any value as the submission tail (tests: garbage indices).
    pub fn poke_sq_tail(&self, v: u32) {
        self.ring.poke_sq_tail(&self.mem, v);
    }

    /// Take the device's head as our tail again (after garbage).
    pub fn resync(&mut self) {
        self.ring.resync(&self.mem);
    }
}
