//! The coproc client SDK: connect to `coprocd`, open vcoprocs, load
//! firmware, share memory with them, ring doorbells, read mailboxes and
//! receive events. Blocking and single-threaded by design: one [`Client`]
//! per thread (it is `Send`), each a session of the calling process's
//! domain (its uid). Everything a session created is destroyed when it
//! closes, including by the process dying.
//!
//! GPU vcoprocs (class `vulkan`) are driven with typed jobs: see [`gpu`],
//! [`Client::gpu_attach`], [`Queue::submit_job`] and [`Queue::wait_job`].
//!
//! [`Vcoproc`] (module [`vcoproc`]) is the short way: a handle destroyed on
//! drop, [`Vcoproc::call`] (request in, reply out, no notification race),
//! [`Buffer`]s and queues placed by the SDK; offloading a job takes four
//! calls. Feature `tokio`: the same for async code (module `asynchronous`).

#[cfg(feature = "tokio")]
pub mod asynchronous;
mod discover;
pub mod gpu;
mod queue;
mod shm;
pub mod vcoproc;
mod watch;

pub use coproc_proto::gpu::{Command, Job, JobDone, Status};
pub use coproc_proto::queue::{Cqe, Sqe};
pub use coproc_proto::{
    Answer, CoprocInfo, DomainInfo, ErrorCode, Event, FaultInfo, Identity, ParamChange, SchedInfo,
    VcoprocInfo, WireError, WireMapKind, WirePerms,
};
pub use gpu::GpuCounters;
pub use queue::{Queue, SUBMIT_PATIENCE};
pub use vcoproc::{Buffer, Reply, Scalar, Session, Vcoproc, VcoprocError};

/// The longest busy-poll budget a queue can have
/// ([`Client::create_queue_with`]).
pub const MAX_BUSY_POLL: Duration = Duration::from_micros(coproc_proto::queue::MAX_POLL_US as u64);
pub use discover::{socket_candidates, SYSTEM_SOCKET};
pub use shm::{sealed_image, SharedMem, SvaMem};

use coproc_proto::fdpass::{send_frame, Receiver, TransportError};
use coproc_proto::frame::{decode, encode};
use coproc_proto::{ClientFrame, Request, ServerFrame, VERSION};
use rustix::fd::{AsFd, BorrowedFd};
use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Errors of the SDK.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Cannot reach the daemon.
    #[error("cannot connect to {path}: {err}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// The connection failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The daemon refused the request.
    #[error("coprocd: {0}")]
    Refused(WireError),
    /// The daemon answered something unexpected.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Shared memory failed.
    #[error("shared memory: {0}")]
    Memory(String),
    /// Waited too long.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The vcoproc faulted or stopped while we waited for it.
    #[error("vcoproc {vcoproc} is {state}")]
    Stopped {
        /// The vcoproc.
        vcoproc: u32,
        /// Its state.
        state: String,
    },
    /// Shared memory could not be placed at a fixed address: taken here
    /// (or, for shared virtual addressing, no free range was found).
    #[error("address {0:#x} is not free for shared memory")]
    AddressTaken(u64),
    /// The SDK refused an argument before anything was sent (an empty job,
    /// a job not ending in a signal, an iova the mailbox cannot carry, a
    /// tag that is not an outstanding job's).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The GPU device refused a command of the job (the rest of the job
    /// was skipped), or the job's signal completed with an error status.
    #[error("GPU {} (command {index} of the job, tag {tag}) refused: {status} ({status:?})", gpu::op_name(*.opcode))]
    Gpu {
        /// Why, as the device said it ([`Status::describe`]).
        status: Status,
        /// The refused command's opcode ([`gpu::op`]).
        opcode: u32,
        /// Its position in the job (0 = the first command).
        index: u32,
        /// Its tag.
        tag: u32,
    },
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        ClientError::Refused(e)
    }
}

impl ClientError {
    /// The daemon's error code, if it refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused(e) => Some(e.code),
            _ => None,
        }
    }

    /// The GPU's status, if the device refused a command of a job.
    pub fn gpu_status(&self) -> Option<Status> {
        match self {
            ClientError::Gpu { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The socket path: `$COPROC_SOCKET`, else the daemon's default for this
/// user (`$XDG_RUNTIME_DIR/coproc/coprocd.sock`, or `/run/coproc/coprocd.sock`
/// for root or without `XDG_RUNTIME_DIR`). [`Client::connect`] also tries
/// the system socket after the per-user one ([`socket_candidates`]).
pub fn default_socket() -> PathBuf {
    if let Some(p) = std::env::var_os("COPROC_SOCKET") {
        return PathBuf::from(p);
    }
    coproc_proto::default_socket(rustix::process::getuid().as_raw())
}

/// Take the expected answer out of a reply, or a protocol error.
macro_rules! answer {
    ($reply:expr, $pat:pat => $out:expr) => {
        match $reply {
            $pat => Ok($out),
            other => Err(ClientError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
        }
    };
}

mod admin;
mod control;
mod memory;

/// Frames a [`Client`] exchanged with the daemon on its socket
/// ([`Client::messages`]): the data path (queues) never adds to them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Messages {
    /// Frames sent (requests).
    pub sent: u64,
    /// Frames received (replies and events).
    pub received: u64,
}

impl Messages {
    /// Both directions together.
    pub fn total(&self) -> u64 {
        self.sent + self.received
    }
}

/// A session with the daemon.
#[derive(Debug)]
pub struct Client {
    sock: UnixStream,
    rx: Receiver,
    next_id: u64,
    events: VecDeque<Event>,
    identity: Identity,
    messages: Messages,
}

impl Client {
    /// Connect to the daemon at `path` and say hello.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect_to(std::path::Path::new("/run/coproc/coprocd.sock"))?;
    /// for p in c.list_coprocs()? {
    ///     println!("{} ({})", p.name, p.class);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn connect_to(path: &Path) -> Result<Client, ClientError> {
        let sock = UnixStream::connect(path).map_err(|err| ClientError::Connect {
            path: path.into(),
            err,
        })?;
        let mut c = Client {
            sock,
            rx: Receiver::with_limit(coproc_proto::frame::MAX_REPLY),
            next_id: 1,
            events: VecDeque::new(),
            identity: Identity {
                uid: 0,
                gid: 0,
                pid: 0,
                admin: false,
                domain: 0,
                container: None,
            },
            messages: Messages::default(),
        };
        match c.call(Request::Hello { version: VERSION }, &[])? {
            Answer::Welcome { identity, .. } => c.identity = identity,
            other => {
                return Err(ClientError::Protocol(format!(
                    "hello answered with {other:?}"
                )))
            }
        }
        Ok(c)
    }

    /// Who the daemon thinks we are.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Frames sent to and received from the daemon so far (counted as
    /// they are sent and decoded, hello included).
    pub fn messages(&self) -> Messages {
        self.messages
    }

    fn read_frame(&mut self, deadline: Option<Instant>) -> Result<ServerFrame, ClientError> {
        loop {
            if let Some((body, _fds)) = self.rx.next_frame().map_err(TransportError::from)? {
                self.messages.received += 1;
                return decode::<ServerFrame>(&body)
                    .map_err(|e| ClientError::Protocol(e.to_string()));
            }
            let timeout = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ClientError::Timeout(Duration::ZERO));
                    }
                    Some(left)
                }
                None => None,
            };
            self.sock
                .set_read_timeout(timeout)
                .map_err(|e| ClientError::Protocol(format!("socket timeout: {e}")))?;
            match self.rx.fill(self.sock.as_fd()) {
                Ok(0) => return Err(TransportError::Closed.into()),
                Ok(_) => {}
                Err(TransportError::WouldBlock) => {
                    return Err(ClientError::Timeout(timeout.unwrap_or_default()))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Send a request (with descriptors) and wait for its reply; events that
    /// arrive meanwhile are queued for [`Client::next_event`].
    pub fn call(&mut self, req: Request, fds: &[BorrowedFd<'_>]) -> Result<Answer, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let frame =
            encode(&ClientFrame { id, req }).map_err(|e| ClientError::Protocol(e.to_string()))?;
        send_frame(self.sock.as_fd(), &frame, fds)?;
        self.messages.sent += 1;
        loop {
            match self.read_frame(None)? {
                ServerFrame::Reply { id: rid, result } if rid == id => return Ok(result?),
                ServerFrame::Reply {
                    id: 0,
                    result: Err(e),
                } => return Err(e.into()),
                ServerFrame::Reply { id: rid, .. } => {
                    return Err(ClientError::Protocol(format!(
                        "reply to {rid} while waiting for {id}"
                    )))
                }
                ServerFrame::Event { event } => self.events.push_back(event),
            }
        }
    }

    fn done(&mut self, req: Request) -> Result<(), ClientError> {
        answer!(self.call(req, &[])?, Answer::Done => ())
    }

    /// The raw socket (tests send hostile bytes through it). A test hook,
    /// not public API: only with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }
}
