//! The high-level SDK for tokio (feature `tokio`): the same [`Vcoproc`] as
//! the blocking one, whose requests run on tokio's blocking pool
//! ([`tokio::task::spawn_blocking`]) so a task never blocks a runtime
//! thread, and [`AsyncQueue`], whose completions are awaited on the
//! completion eventfd without any thread. The same four calls:
//!
//! ```no_run
//! # async fn f(elf: &'static [u8]) -> Result<(), coproc_client::VcoprocError> {
//! use coproc_client::asynchronous::Vcoproc;
//! let v = Vcoproc::open("mcu0").await?;
//! v.load("crc32", elf).await?;
//! let buf = v.buffer_from(b"123456789").await?;
//! let reply = v.call(&[buf.iova32()?, 9, 1]).await?;
//! assert_eq!(reply.words[1], 0xCBF4_3926);
//! # Ok(())
//! # }
//! ```

use crate::vcoproc::{self, Buffer, Reply, VcoprocError};
use crate::{ClientError, Cqe, Queue, Sqe, VcoprocInfo};
use std::sync::Arc;
use tokio::io::unix::AsyncFd;

/// Run `f` on the blocking pool.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, VcoprocError> + Send + 'static,
) -> Result<R, VcoprocError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VcoprocError::Client(ClientError::Protocol(format!("SDK task: {e}"))))?
}

/// A vcoproc for async code; destroyed when the last clone is dropped
/// (the destroy request is then made by the dropping thread).
#[derive(Debug, Clone)]
pub struct Vcoproc {
    inner: Arc<vcoproc::Vcoproc>,
}

impl Vcoproc {
    /// Connect to the default socket and open a vcoproc on `coproc`.
    pub async fn open(coproc: &str) -> Result<Vcoproc, VcoprocError> {
        let coproc = coproc.to_owned();
        Ok(blocking(move || vcoproc::Vcoproc::open(&coproc))
            .await?
            .into())
    }

    /// Open one through the daemon at `socket`.
    pub async fn open_at(socket: &std::path::Path, coproc: &str) -> Result<Vcoproc, VcoprocError> {
        let (socket, coproc) = (socket.to_owned(), coproc.to_owned());
        Ok(
            blocking(move || vcoproc::Vcoproc::open_at(&socket, &coproc))
                .await?
                .into(),
        )
    }

    /// The blocking handle underneath.
    pub fn blocking(&self) -> &vcoproc::Vcoproc {
        &self.inner
    }

    /// [`vcoproc::Vcoproc::load`] (a `&'static [u8]` or an owned image).
    pub async fn load(
        &self,
        label: &str,
        image: impl AsRef<[u8]> + Send + 'static,
    ) -> Result<(), VcoprocError> {
        let (v, label) = (self.inner.clone(), label.to_owned());
        blocking(move || v.load(&label, image.as_ref())).await
    }

    /// [`vcoproc::Vcoproc::call`].
    pub async fn call(&self, request: &[u32]) -> Result<Reply, VcoprocError> {
        let (v, request) = (self.inner.clone(), request.to_vec());
        blocking(move || v.call(&request)).await
    }

    /// [`vcoproc::Vcoproc::buffer`].
    pub async fn buffer(&self, len: u64) -> Result<Buffer, VcoprocError> {
        let v = self.inner.clone();
        blocking(move || v.buffer(len)).await
    }

    /// [`vcoproc::Vcoproc::buffer_from`].
    pub async fn buffer_from(
        &self,
        data: impl AsRef<[u8]> + Send + 'static,
    ) -> Result<Buffer, VcoprocError> {
        let v = self.inner.clone();
        blocking(move || v.buffer_from(data.as_ref())).await
    }

    /// [`vcoproc::Vcoproc::queue`], awaitable.
    pub async fn queue(&self, entries: u32) -> Result<AsyncQueue, VcoprocError> {
        let v = self.inner.clone();
        let q = blocking(move || v.queue(entries)).await?;
        AsyncQueue::new(q)
    }

    /// [`vcoproc::Vcoproc::announce_queue`].
    pub async fn announce_queue(&self, queue: &AsyncQueue) -> Result<(), VcoprocError> {
        let v = self.inner.clone();
        let (iova, len) = (queue.queue.iova(), queue.queue.len());
        blocking(move || v.announce_words(iova, len)).await
    }

    /// [`vcoproc::Vcoproc::reset`].
    pub async fn reset(&self) -> Result<(), VcoprocError> {
        let v = self.inner.clone();
        blocking(move || v.reset()).await
    }

    /// [`vcoproc::Vcoproc::info`].
    pub async fn info(&self) -> Result<VcoprocInfo, VcoprocError> {
        let v = self.inner.clone();
        blocking(move || v.info()).await
    }
}

impl From<vcoproc::Vcoproc> for Vcoproc {
    fn from(v: vcoproc::Vcoproc) -> Vcoproc {
        Vcoproc { inner: Arc::new(v) }
    }
}

/// A [`Queue`] whose completions are awaited: the completion eventfd (a
/// duplicate) is registered with the runtime's reactor.
#[derive(Debug)]
pub struct AsyncQueue {
    queue: Queue,
    ready: AsyncFd<rustix::fd::OwnedFd>,
}

impl AsyncQueue {
    /// Wrap a queue (inside a tokio runtime).
    pub fn new(queue: Queue) -> Result<AsyncQueue, VcoprocError> {
        let io = |e: std::io::Error| VcoprocError::Client(ClientError::Memory(e.to_string()));
        let fd = queue.completion_fd().try_clone_to_owned().map_err(io)?;
        // SAFETY: an `OwnedFd` is a valid open descriptor that stays open,
        // and always answers the same number, until the `AsyncFd` that
        // owns it drops it.
        let ready = unsafe { AsyncFd::register(fd) }.map_err(|e| io(e.into_parts().1))?;
        Ok(AsyncQueue { queue, ready })
    }

    /// The queue (submit, ring, complete without waiting).
    pub fn queue(&mut self) -> &mut Queue {
        &mut self.queue
    }

    /// The next completion, awaited: taken at once if posted, otherwise
    /// after the completion eventfd fires (readiness is kept from
    /// registration on, so a completion posted between the look and the
    /// await is not missed).
    pub async fn next(&mut self) -> Result<Cqe, VcoprocError> {
        loop {
            if let Some(c) = self.queue.complete() {
                return Ok(c);
            }
            // Nothing yet: a doorbell skipped while the device polled is
            // rung before sleeping, in case it parked meanwhile.
            self.queue.ring_skipped()?;
            let mut guard = self
                .ready
                .readable()
                .await
                .map_err(|e| VcoprocError::Client(ClientError::Memory(e.to_string())))?;
            guard.clear_ready();
        }
    }

    /// Submit `sqe`, ring, and await the completion with its tag (others
    /// are dropped: one request in flight).
    pub async fn round_trip(&mut self, sqe: &Sqe) -> Result<Cqe, VcoprocError> {
        if !self.queue.submit(sqe) {
            return Err(VcoprocError::Invalid("the submission ring is full".into()));
        }
        self.queue.ring()?;
        loop {
            let c = self.next().await?;
            if c.tag == sqe.tag {
                return Ok(c);
            }
        }
    }
}
