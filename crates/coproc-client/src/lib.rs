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
pub use queue::Queue;
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

    /// Pcoprocs this domain may use.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let names: Vec<String> = c.list_coprocs()?.into_iter().map(|p| p.name).collect();
    /// assert!(!names.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn list_coprocs(&mut self) -> Result<Vec<CoprocInfo>, ClientError> {
        answer!(self.call(Request::ListCoprocs, &[])?, Answer::Coprocs { coprocs } => coprocs)
    }

    /// Open a vcoproc on `coproc`; returns its id.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?; // a vcoproc id, destroyed with the session
    /// c.destroy(v)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn open(&mut self, coproc: &str) -> Result<u32, ClientError> {
        answer!(self.call(
            Request::OpenVcoproc {
                coproc: coproc.into(),
            },
            &[],
        )?, Answer::Opened { vcoproc } => vcoproc)
    }

    /// Load a firmware image (sent as a memfd the daemon reads from).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// let elf = std::fs::read("crc32.elf").expect("a firmware image");
    /// c.load_firmware(v, "crc32", &elf)?;
    /// c.start(v)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn load_firmware(
        &mut self,
        vcoproc: u32,
        label: &str,
        image: &[u8],
    ) -> Result<(), ClientError> {
        let fd = shm::sealed_image(image)?;
        let req = Request::LoadFirmware {
            vcoproc,
            label: label.into(),
            len: image.len() as u64,
        };
        answer!(self.call(req, &[fd.as_fd()])?, Answer::Done => ())
    }

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

    /// Write mailbox-in words from `index`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// c.mbox_write(v, 0, &[0x6000_0000, 4096])?; // words 0 and 1
    /// c.doorbell(v)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn mbox_write(
        &mut self,
        vcoproc: u32,
        index: u32,
        values: &[u32],
    ) -> Result<(), ClientError> {
        self.done(Request::MboxWrite {
            vcoproc,
            index,
            values: values.to_vec(),
        })
    }

    /// Read the mailbox-out words and the latest notification sequence.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// let (words, seq) = c.mbox_read(v)?;
    /// println!("word 2 = {:#x} (notification {seq})", words[2]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn mbox_read(&mut self, vcoproc: u32) -> Result<(Vec<u32>, u64), ClientError> {
        answer!(self.call(Request::MboxRead { vcoproc }, &[])?, Answer::Mailbox { words, notify_seq } => (words, notify_seq))
    }

    /// The lines the firmware printed to its console, oldest first, and how
    /// many older ones the daemon no longer keeps.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// let (lines, dropped) = c.console(v)?;
    /// for l in lines {
    ///     println!("firmware: {l}");
    /// }
    /// assert_eq!(dropped, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn console(&mut self, vcoproc: u32) -> Result<(Vec<String>, u64), ClientError> {
        answer!(self.call(Request::Console { vcoproc }, &[])?, Answer::Console { lines, dropped } => (lines, dropped))
    }

    /// Ring the doorbell.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// c.subscribe(v)?;
    /// let (_, seen) = c.mbox_read(v)?;
    /// c.doorbell(v)?;
    /// let (seq, _value) = c.wait_notify(v, seen, Duration::from_secs(1))?;
    /// assert!(seq > seen);
    /// # Ok(())
    /// # }
    /// ```
    pub fn doorbell(&mut self, vcoproc: u32) -> Result<(), ClientError> {
        self.done(Request::Doorbell { vcoproc })
    }

    /// Start it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// c.start(v)?;
    /// assert_eq!(c.query(v)?.state, "runnable");
    /// # Ok(())
    /// # }
    /// ```
    pub fn start(&mut self, vcoproc: u32) -> Result<(), ClientError> {
        self.done(Request::Start { vcoproc })
    }

    /// Stop (pause) it; [`Client::start`] resumes it.
    pub fn stop(&mut self, vcoproc: u32) -> Result<(), ClientError> {
        self.done(Request::Stop { vcoproc })
    }

    /// Reset it.
    pub fn reset(&mut self, vcoproc: u32) -> Result<(), ClientError> {
        self.done(Request::Reset { vcoproc })
    }

    /// Destroy it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// c.destroy(v)?;
    /// assert!(c.query(v).is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn destroy(&mut self, vcoproc: u32) -> Result<(), ClientError> {
        self.done(Request::Destroy { vcoproc })
    }

    /// Its state and counters.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// let info = c.query(v)?;
    /// println!("{} ran {} ns", info.state, info.run_ns);
    /// # Ok(())
    /// # }
    /// ```
    pub fn query(&mut self, vcoproc: u32) -> Result<VcoprocInfo, ClientError> {
        answer!(self.call(Request::Query { vcoproc }, &[])?, Answer::Vcoproc { info } => info)
    }

    /// Receive its events.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// c.subscribe(v)?;
    /// c.start(v)?;
    /// match c.next_event(Duration::from_secs(1))? {
    ///     Event::Fault { fault, .. } => println!("faulted: {}", fault.reason),
    ///     other => println!("{other:?}"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribe(&mut self, vcoproc: u32) -> Result<(), ClientError> {
        self.done(Request::Subscribe { vcoproc })
    }

    /// The next event, waiting up to `timeout`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// c.subscribe(v)?;
    /// let event = c.next_event(Duration::from_millis(100))?;
    /// println!("{event:?}");
    /// # Ok(())
    /// # }
    /// ```
    pub fn next_event(&mut self, timeout: Duration) -> Result<Event, ClientError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(e);
        }
        let deadline = Instant::now() + timeout;
        match self.read_frame(Some(deadline)) {
            Ok(ServerFrame::Event { event }) => Ok(event),
            Ok(other) => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
            Err(ClientError::Timeout(_)) => Err(ClientError::Timeout(timeout)),
            Err(e) => Err(e),
        }
    }

    /// Wait for a notification of `vcoproc` newer than `after` (subscribe
    /// first); fails if it faults or stops meanwhile. Returns (seq, tag).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// c.subscribe(v)?;
    /// let (_, seen) = c.mbox_read(v)?;
    /// c.doorbell(v)?;
    /// let (seq, value) = c.wait_notify(v, seen, Duration::from_secs(1))?;
    /// println!("notification {seq}: {value:#x}");
    /// # Ok(())
    /// # }
    /// ```
    pub fn wait_notify(
        &mut self,
        vcoproc: u32,
        after: u64,
        timeout: Duration,
    ) -> Result<(u64, u32), ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left)? {
                Event::Notify {
                    vcoproc: v,
                    seq,
                    tag,
                } if v == vcoproc && seq > after => return Ok((seq, tag)),
                Event::State { vcoproc: v, state } if v == vcoproc => {
                    return Err(ClientError::Stopped { vcoproc, state })
                }
                _ => {}
            }
        }
    }

    /// Vcoprocs visible to this session, filtered.
    pub fn list_vcoprocs(
        &mut self,
        domain: Option<u32>,
        coproc: Option<&str>,
    ) -> Result<Vec<VcoprocInfo>, ClientError> {
        answer!(self.call(
            Request::ListVcoprocs {
                domain,
                coproc: coproc.map(String::from),
            },
            &[],
        )?, Answer::Vcoprocs { vcoprocs } => vcoprocs)
    }

    /// Domains visible to this session.
    pub fn list_domains(&mut self) -> Result<Vec<DomainInfo>, ClientError> {
        answer!(self.call(Request::ListDomains, &[])?, Answer::Domains { domains } => domains)
    }

    /// Faults visible to this session.
    pub fn list_faults(&mut self) -> Result<Vec<FaultInfo>, ClientError> {
        answer!(self.call(Request::ListFaults, &[])?, Answer::Faults { faults } => faults)
    }

    /// A pcoproc's scheduler.
    pub fn sched_get(&mut self, coproc: &str) -> Result<SchedInfo, ClientError> {
        answer!(self.call(
            Request::SchedGet {
                coproc: coproc.into(),
            },
            &[],
        )?, Answer::Sched { sched } => sched)
    }

    /// Change a pcoproc's policy (admin).
    pub fn sched_set(
        &mut self,
        coproc: &str,
        policy: &str,
        params: &[(String, String)],
    ) -> Result<(), ClientError> {
        self.done(Request::SchedSet {
            coproc: coproc.into(),
            policy: policy.into(),
            params: params.to_vec(),
        })
    }

    /// Change a vcoproc's scheduling parameters (admin); effective at the
    /// scheduler's next decision.
    pub fn vcoproc_set(&mut self, vcoproc: u32, set: ParamChange) -> Result<(), ClientError> {
        self.done(Request::VcoprocSet { vcoproc, set })
    }

    /// Turn demand faults on (`Some(stall timeout)`) or off (`None`) for
    /// one of this session's vcoprocs. Stalls arrive as
    /// [`Event::PageFault`] through [`Client::next_event`] (subscribe
    /// first); answer with [`Client::map`] of a range covering the address.
    pub fn set_demand_faults(
        &mut self,
        vcoproc: u32,
        timeout: Option<Duration>,
    ) -> Result<(), ClientError> {
        let timeout_ms = timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        self.done(Request::SetDemandFaults {
            vcoproc,
            timeout_ms,
        })
    }

    /// The raw socket (tests send hostile bytes through it). A test hook,
    /// not public API: only with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn socket(&self) -> &UnixStream {
        &self.sock
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
