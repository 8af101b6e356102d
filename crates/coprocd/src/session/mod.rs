//! One client connection: a session of a domain. Reads frames (with file
//! descriptors), answers each request, forwards events of subscribed
//! vcoprocs, and when the connection ends destroys everything the session
//! created. Every frame is hostile: a malformed one gets an error reply and
//! the session either continues (the stream is still framed) or ends (it is
//! not); nothing a session sends can affect another session.
//!
//! [`Session::handle`] checks the greeting and the descriptors, then hands
//! each request to its family: `vcoproc` (life cycle, mailbox, doorbell),
//! `memory` (maps, queues, device-local memory, revoke), `listing`
//! (pcoprocs, vcoprocs, domains, faults) and `sched` (policies and
//! parameters); `hooks` is the session's listener on a vcoproc's control
//! block, and `conn` the socket side (framing, budgets, timeouts).

use crate::daemon::{Attachment, Daemon, Entry, Quota};
use coproc_core::control::{ControlEvent, Listener};
use coproc_core::iova::{MapKind, Perms};
use coproc_core::memory::Region;
use coproc_core::policy::SchedParams;
use coproc_core::ratelimit::RateLimit;
use coproc_core::state::VcoprocState;
use coproc_core::{CoreError, DeviceError};
use coproc_proto::fdpass::{Receiver, TransportError};
use coproc_proto::frame::decode;
use coproc_proto::{
    Answer, ClientFrame, CoprocInfo, DomainInfo, ErrorCode, Event, FaultInfo, Identity,
    MappingInfo, ParamChange, Request, SchedInfo, ServerFrame, VcoprocInfo, WireError, WireMapKind,
    WirePerms, VERSION,
};
use rustix::fd::{AsFd, OwnedFd};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};

/// Largest firmware image accepted.
pub const MAX_FIRMWARE: u64 = 4 << 20;

/// How many vcoprocs' wake-ups the session's channel holds before further
/// ones are merged into those already queued.
const WAKE_QUEUE: usize = 64;

mod conn;
mod hooks;
mod listing;
mod memory;
mod sched;
mod vcoproc;

pub use conn::serve;
use hooks::Hooks;

/// A session of a domain: the state one connection's requests act on.
/// [`serve`] drives one per connection; [`Session::open`], [`Session::handle`]
/// and [`Session::close`] drive one without a socket (the fuzzer does).
pub struct Session {
    daemon: Arc<Daemon>,
    id: u64,
    who: Identity,
    greeted: bool,
    wake: mpsc::Sender<u32>,
    /// Listeners installed by this session.
    hooks: HashMap<u32, Arc<Hooks>>,
    log: Arc<RateLimit>,
    /// Whether it receives the daemon's event stream (`watch`).
    watching: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("who", &self.who)
            .field("vcoprocs_listened", &self.hooks.len())
            .finish_non_exhaustive()
    }
}

fn err(code: ErrorCode, msg: impl Into<String>) -> WireError {
    WireError::new(code, msg)
}

fn core_err(e: CoreError) -> WireError {
    match e {
        CoreError::NoVcoproc(v) => err(ErrorCode::NotFound, format!("no vcoproc {v}")),
        CoreError::NotOwner(..) => err(ErrorCode::NotFound, e.to_string()),
        CoreError::State(s) => err(ErrorCode::State, s.to_string()),
        CoreError::Device(DeviceError::Exhausted(m)) => err(ErrorCode::Quota, m),
        CoreError::Device(d) => err(ErrorCode::Device, d.to_string()),
        CoreError::Iova(i) => err(ErrorCode::InvalidArgument, i.to_string()),
        CoreError::Policy(p) => err(ErrorCode::InvalidArgument, p.to_string()),
        CoreError::Shutdown(m) => err(ErrorCode::Internal, format!("pcoproc {m} is shut down")),
        CoreError::Timeout(t) => err(ErrorCode::Internal, format!("timed out after {t:?}")),
        CoreError::BadStallTimeout(_) => err(ErrorCode::InvalidArgument, e.to_string()),
        CoreError::Failed(..) | CoreError::Panicked(_) => err(ErrorCode::Device, e.to_string()),
        CoreError::Doorbell(_) => err(ErrorCode::Quota, e.to_string()),
    }
}

/// `d` in whole microseconds, as the wire carries it.
fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn info(id: u32, e: &Entry) -> Result<VcoprocInfo, WireError> {
    let i = e.handle.info().map_err(core_err)?;
    Ok(VcoprocInfo {
        id,
        coproc: e.coproc.clone(),
        domain: e.domain,
        firmware: i.firmware,
        state: i.state.to_string(),
        run_ns: i.stats.run_ns,
        slices: i.stats.slices,
        switches: i.stats.switches,
        faults: i.stats.faults,
        mappings: u32::try_from(i.mappings).unwrap_or(u32::MAX),
        mapped_bytes: i.mapped_bytes,
        exit_code: i.exit_code,
        weight: i.params.weight,
        priority: i.params.priority,
        cap_pct: i.params.cap_pct,
        reservation_us: i.params.reservation.map(|(b, p)| (micros(b), micros(p))),
        run_delay_max_ns: i.stats.run_delay_max_ns,
        doorbells: i.stats.doorbells,
        preemptions: i.stats.preemptions,
        last_fault: i
            .last_fault
            .as_ref()
            .map(|f| Box::new(fault_info(&e.coproc, e.domain, id, f))),
    })
}

/// A fault record as the wire carries it (`wire_id`: its vcoproc's id).
pub(crate) fn fault_info(
    coproc: &str,
    domain: u32,
    wire_id: u32,
    f: &coproc_core::fault::FaultRecord,
) -> FaultInfo {
    FaultInfo {
        coproc: coproc.to_string(),
        vcoproc: wire_id,
        domain,
        at_ns: f.at_ns,
        at_unix_ns: f.at_unix_ns,
        addr: f.fault.addr,
        access: format!("{:?}", f.fault.access).to_lowercase(),
        pc: f.fault.pc,
        reason: f.fault.reason.to_string(),
    }
}

impl Session {
    /// The entry of a vcoproc the creating session acts on (listeners and
    /// queues are per session; one vcoproc has one listener).
    fn own_entry(&self, id: u32) -> Result<Entry, WireError> {
        let e = self.entry(id, false)?;
        if e.session != self.id {
            return Err(err(
                ErrorCode::PermissionDenied,
                format!("vcoproc {id} belongs to another session of this domain: events and queues are for its creator"),
            ));
        }
        Ok(e)
    }

    /// The entry of a vcoproc this session may act on.
    fn entry(&self, id: u32, admin_ok: bool) -> Result<Entry, WireError> {
        let t = self.daemon.tables();
        match t.vcoprocs.get(&id) {
            Some(e) if e.domain == self.who.domain || (admin_ok && self.who.admin) => Ok(e.clone()),
            // Another domain's vcoproc is indistinguishable from none.
            _ => Err(err(ErrorCode::NotFound, format!("no vcoproc {id}"))),
        }
    }

    fn no_fds(fds: &[OwnedFd]) -> Result<(), WireError> {
        if fds.is_empty() {
            Ok(())
        } else {
            Err(err(
                ErrorCode::BadFd,
                "this request takes no file descriptors",
            ))
        }
    }

    fn one_fd(fds: Vec<OwnedFd>) -> Result<OwnedFd, WireError> {
        let mut fds = fds;
        if fds.len() != 1 {
            return Err(err(
                ErrorCode::BadFd,
                format!("expected one file descriptor, got {}", fds.len()),
            ));
        }
        Ok(fds.remove(0))
    }

    /// Answer one request (with the descriptors that came with it).
    pub fn handle(&mut self, req: Request, fds: Vec<OwnedFd>) -> Result<Answer, WireError> {
        if !self.greeted {
            return match req {
                Request::Hello { version } if version == VERSION => {
                    Self::no_fds(&fds)?;
                    self.greeted = true;
                    Ok(Answer::Welcome {
                        version: VERSION,
                        identity: self.who.clone(),
                    })
                }
                Request::Hello { version } => Err(err(
                    ErrorCode::BadVersion,
                    format!("protocol version {version} not spoken (this daemon: {VERSION})"),
                )),
                _ => Err(err(ErrorCode::BadSequence, "say hello first")),
            };
        }
        match req {
            Request::LoadFirmware { .. } | Request::Map { .. } | Request::CreateQueue { .. } => {}
            _ => Self::no_fds(&fds)?,
        }
        match req {
            Request::Hello { .. } => Err(err(ErrorCode::BadSequence, "hello twice")),
            Request::ListCoprocs => self.list_coprocs(),
            Request::OpenVcoproc { coproc } => self.open_vcoproc(coproc),
            Request::LoadFirmware {
                vcoproc,
                label,
                len,
            } => self.load_firmware(vcoproc, label, len, fds),
            Request::Map {
                vcoproc,
                iova,
                offset,
                len,
                perms,
                kind,
            } => self.map(vcoproc, iova, offset, len, perms, kind, fds),
            Request::CreateQueue {
                vcoproc,
                iova,
                entries,
            } => self.create_queue(vcoproc, iova, entries, fds),
            Request::Unmap { vcoproc, iova } => self.unmap(vcoproc, iova),
            Request::MboxWrite {
                vcoproc,
                index,
                values,
            } => self.mbox_write(vcoproc, index, values),
            Request::MboxRead { vcoproc } => self.mbox_read(vcoproc),
            Request::Console { vcoproc } => self.console(vcoproc),
            Request::Doorbell { vcoproc } => self.doorbell(vcoproc),
            Request::Start { vcoproc } => self.start(vcoproc),
            Request::Stop { vcoproc } => self.stop(vcoproc),
            Request::Reset { vcoproc } => self.reset(vcoproc),
            Request::Destroy { vcoproc } => self.destroy(vcoproc),
            Request::Query { vcoproc } => self.query(vcoproc),
            Request::Subscribe { vcoproc } => self.subscribe(vcoproc),
            Request::ListVcoprocs { domain, coproc } => self.list_vcoprocs(domain, coproc),
            Request::ListDomains => self.list_domains(),
            Request::ListFaults => self.list_faults(),
            Request::SchedGet { coproc } => self.sched_get(coproc),
            Request::SchedSet {
                coproc,
                policy,
                params,
            } => self.sched_set(coproc, policy, params),
            Request::VcoprocSet { vcoproc, set } => self.vcoproc_set(vcoproc, set),
            Request::SetDemandFaults {
                vcoproc,
                timeout_ms,
            } => self.set_demand_faults(vcoproc, timeout_ms),
            Request::AllocLocal { vcoproc, iova, len } => {
                self.alloc_local(vcoproc, iova, len)?;
                Ok(Answer::Done)
            }
            Request::FreeLocal { vcoproc, iova } => self.free_local(vcoproc, iova),
            Request::Revoke { vcoproc, iova } => self.revoke(vcoproc, iova),
            Request::ListMappings { vcoproc } => self.list_mappings(vcoproc),
            Request::Watch => self.watch(),
        }
    }
}

impl Session {
    /// Open a session for `who`. Returns it with the receivers of its
    /// wake-ups (vcoproc ids whose events are due, see
    /// [`Session::wake_events`]) and of events other sessions cause.
    pub fn open(
        daemon: Arc<Daemon>,
        who: Identity,
    ) -> (Session, mpsc::Receiver<u32>, mpsc::Receiver<Event>) {
        let id = daemon.open_session(who.domain);
        let (wtx, wrx) = mpsc::channel(WAKE_QUEUE);
        let (ntx, nrx) = mpsc::channel(crate::daemon::NOTICES);
        daemon.set_notices(id, Some(ntx));
        tracing::debug!(
            session = id,
            uid = who.uid,
            domain = who.domain,
            container = who.container.as_deref(),
            pid = who.pid,
            "session opened"
        );
        let s = Session {
            log: daemon.log_limit(who.domain),
            daemon,
            id,
            who,
            greeted: false,
            wake: wtx,
            hooks: HashMap::new(),
            watching: false,
        };
        (s, wrx, nrx)
    }

    /// End the session: destroy everything it created. Blocks on device
    /// work.
    pub fn close(self) {
        // Stop listening before the vcoprocs go away (their doorbell
        // descriptors go with them).
        for vid in self.hooks.keys() {
            if let Ok(e) = self.entry(*vid, false) {
                e.handle.control().set_listener(None);
            }
        }
        self.daemon.set_notices(self.id, None);
        self.daemon.close_session(self.who.domain, self.id);
        tracing::debug!(
            session = self.id,
            uid = self.who.uid,
            domain = self.who.domain,
            "session closed"
        );
    }
}
