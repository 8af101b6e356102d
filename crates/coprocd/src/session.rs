//! One client connection: a session of a domain. Reads frames (with file
//! descriptors), answers each request, forwards events of subscribed
//! vcoprocs, and when the connection ends destroys everything the session
//! created. Every frame is hostile: a malformed one gets an error reply and
//! the session either continues (the stream is still framed) or ends (it is
//! not); nothing a session sends can affect another session.

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
use coproc_proto::*;
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

/// What a vcoproc's control block listener does for this session. It runs
/// on the runner thread, so it never blocks and never allocates per event:
/// notifications and kicks are merged into the latest ones (a client waits
/// for "a notification newer than n", so only the latest matters), the
/// session task is woken through a bounded channel, and completion eventfds
/// are written by a thread of this vcoproc's own, which is all a domain can
/// stall by making its eventfd unwritable.
struct Hooks {
    id: u32,
    subscribed: AtomicBool,
    /// Latest notification not yet forwarded.
    latest: Mutex<Option<coproc_core::control::Notify>>,
    kicked: AtomicBool,
    /// The last stopped/faulted state reported, with the fault count then
    /// (a new fault is a new report even in the same state).
    reported: Mutex<Option<(VcoprocState, u64)>>,
    /// A wake-up for this vcoproc is queued for the session task.
    queued: AtomicBool,
    /// Latest page fault not yet forwarded (a vcoproc stalls on one at a time).
    page_fault: Mutex<Option<(u64, coproc_core::fault::Access)>>,
    wake: mpsc::Sender<u32>,
    /// Completion eventfds and the writer thread's doorbell.
    completions: Arc<Mutex<Vec<OwnedFd>>>,
    writer: Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("vcoproc", &self.id)
            .finish_non_exhaustive()
    }
}

impl crate::daemon::Attachment for Hooks {
    fn detach(&self) {
        self.subscribed.store(false, Ordering::Release);
        // The writer thread ends when its only sender goes; the completion
        // eventfds close now.
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.completions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl Hooks {
    fn fire(&self, ev: ControlEvent) {
        if let ControlEvent::Notify(n) = ev {
            if let Some(w) = self
                .writer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                // Full means a write is already due: merged.
                let _ = w.try_send(());
            }
            if self.subscribed.load(Ordering::Acquire) {
                *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(n);
            }
        } else if let ControlEvent::PageFault { addr, access } = ev {
            if self.subscribed.load(Ordering::Acquire) {
                *self.page_fault.lock().unwrap_or_else(|e| e.into_inner()) = Some((addr, access));
            }
        } else {
            self.kicked.store(true, Ordering::Release);
        }
        if self.subscribed.load(Ordering::Acquire) && !self.queued.swap(true, Ordering::AcqRel) {
            // A full channel already holds wake-ups the session will drain.
            if self.wake.try_send(self.id).is_err() {
                self.queued.store(false, Ordering::Release);
            }
        }
    }

    /// Start the completion writer thread (once).
    fn start_writer(&self) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if w.is_some() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let fds = self.completions.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("completions-{}", self.id))
            .spawn(move || {
                while rx.recv().is_ok() {
                    for fd in fds.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                        // Write only when a write cannot block; if the domain
                        // races us into a full counter, only this thread waits.
                        let mut p = [rustix::event::PollFd::new(
                            fd,
                            rustix::event::PollFlags::OUT,
                        )];
                        let zero = rustix::time::Timespec {
                            tv_sec: 0,
                            tv_nsec: 0,
                        };
                        if rustix::event::poll(&mut p, Some(&zero)).is_ok_and(|n| n == 1) {
                            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
                        }
                    }
                }
            });
        if spawned.is_ok() {
            *w = Some(tx);
        }
    }
}

/// The `len` bytes of a firmware image from `fd`, which must be a memfd
/// sealed against writing and shrinking: a read of it never blocks (no
/// FUSE file, pipe or device can stand in), and its contents cannot change
/// between the checks of the image and its use.
fn read_firmware(fd: &OwnedFd, len: u64) -> Result<Vec<u8>, WireError> {
    use rustix::fs::{fcntl_get_seals, SealFlags};
    let need = SealFlags::WRITE | SealFlags::SHRINK;
    let sealed = fcntl_get_seals(fd).is_ok_and(|s| s.contains(need));
    if !sealed {
        return Err(err(
            ErrorCode::BadFd,
            "firmware must come in a memfd sealed against writing and shrinking \
             (F_SEAL_WRITE | F_SEAL_SHRINK)",
        ));
    }
    let size = rustix::fs::fstat(fd)
        .map_err(|e| err(ErrorCode::BadFd, format!("cannot stat firmware fd: {e}")))?
        .st_size;
    if u64::try_from(size).map_or(true, |size| size < len) {
        return Err(err(
            ErrorCode::BadFd,
            format!("firmware memfd holds {size} bytes, {len} announced"),
        ));
    }
    let mut image = vec![0u8; len as usize];
    let mut done = 0;
    while done < image.len() {
        match rustix::io::pread(fd, &mut image[done..], done as u64) {
            Ok(0) => {
                return Err(err(
                    ErrorCode::BadFd,
                    format!("fd ends after {done} of {len} bytes"),
                ))
            }
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(err(
                    ErrorCode::BadFd,
                    format!("cannot read firmware fd: {e}"),
                ))
            }
        }
    }
    Ok(image)
}

/// Whether `fd` is an eventfd.
fn is_eventfd(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|p| p.as_os_str() == "anon_inode:[eventfd]")
}

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

fn info(id: u32, e: &Entry) -> Result<VcoprocInfo, WireError> {
    let i = e.handle.info().map_err(core_err)?;
    Ok(VcoprocInfo {
        id,
        coproc: e.coproc.clone(),
        domain: e.uid,
        firmware: i.firmware,
        state: i.state.to_string(),
        run_ns: i.stats.run_ns,
        slices: i.stats.slices,
        switches: i.stats.switches,
        faults: i.stats.faults,
        mappings: i.mappings as u32,
        mapped_bytes: i.mapped_bytes,
        exit_code: i.exit_code,
        weight: i.params.weight,
        priority: i.params.priority,
        cap_pct: i.params.cap_pct,
        reservation_us: i
            .params
            .reservation
            .map(|(b, p)| (b.as_micros() as u64, p.as_micros() as u64)),
        run_delay_max_ns: i.stats.run_delay_max_ns,
        last_fault: i
            .last_fault
            .as_ref()
            .map(|f| Box::new(fault_info(&e.coproc, e.uid, id, f))),
    })
}

/// Apply a `vcoproc-set` change to `p`.
fn apply_change(p: &mut SchedParams, set: &ParamChange) -> Result<(), WireError> {
    if let Some(w) = set.weight {
        p.weight = w;
    }
    if let Some(c) = set.cap_pct {
        p.cap_pct = (c != 0).then_some(c);
    }
    if let Some(pr) = set.priority {
        p.priority = pr;
    }
    match (set.budget_us, set.period_us) {
        (None, None) => {}
        (Some(0), _) => p.reservation = None,
        (Some(b), Some(per)) => {
            p.reservation = Some((Duration::from_micros(b), Duration::from_micros(per)))
        }
        (Some(b), None) => match p.reservation {
            Some((_, per)) => p.reservation = Some((Duration::from_micros(b), per)),
            None => {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    "a new reservation needs both budget and period",
                ))
            }
        },
        (None, Some(per)) => match p.reservation {
            Some((b, _)) => p.reservation = Some((b, Duration::from_micros(per))),
            None => {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    "a new reservation needs both budget and period",
                ))
            }
        },
    }
    Ok(())
}

fn fault_info(
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
        addr: f.fault.addr,
        access: format!("{:?}", f.fault.access).to_lowercase(),
        pc: f.fault.pc,
        reason: f.fault.reason.to_string(),
    }
}

impl Session {
    /// This session's listener on vcoproc `id`, installed on first use and
    /// recorded with the vcoproc, so that whoever destroys it releases it.
    fn hooks(&mut self, id: u32, e: &Entry) -> Arc<Hooks> {
        if let Some(h) = self.hooks.get(&id) {
            return h.clone();
        }
        // Forget hooks of vcoprocs others destroyed meanwhile.
        {
            let t = self.daemon.tables();
            self.hooks.retain(|v, _| t.vcoprocs.contains_key(v));
        }
        let h = Arc::new(Hooks {
            id,
            subscribed: false.into(),
            latest: Mutex::new(None),
            kicked: false.into(),
            reported: Mutex::new(None),
            queued: false.into(),
            page_fault: Mutex::new(None),
            wake: self.wake.clone(),
            completions: Default::default(),
            writer: Mutex::new(None),
        });
        let h2 = h.clone();
        let l: Listener = Arc::new(move |ev| h2.fire(ev));
        e.handle.control().set_listener(Some(l));
        if !self.daemon.attach(id, h.clone()) {
            // Destroyed between the lookup and here.
            e.handle.control().set_listener(None);
            h.detach();
        }
        self.hooks.insert(id, h.clone());
        h
    }

    /// Map domain memory from `fd` into vcoproc `vcoproc`, within quota.
    #[allow(clippy::too_many_arguments)]
    fn map_fd(
        &mut self,
        vcoproc: u32,
        e: &Entry,
        fd: OwnedFd,
        offset: u64,
        iova: u64,
        len: u64,
        perms: Perms,
        kind: MapKind,
    ) -> Result<(), WireError> {
        // Arguments first: nothing is reserved or sealed for a bad request.
        if len == 0 || !len.is_multiple_of(4096) || !offset.is_multiple_of(4096) {
            return Err(err(
                ErrorCode::InvalidArgument,
                "offset and length must be multiples of 4096, length non-zero",
            ));
        }
        e.handle.check_map(iova, len).map_err(core_err)?;
        let d = self.daemon.clone();
        let rule = d.rule(&self.who)?;
        d.reserve(self.who.uid, Quota::Bytes, len, rule.max_mapped_bytes)?;
        if let Err(e) = d.reserve(
            self.who.uid,
            Quota::Mappings,
            1,
            u64::from(rule.max_mappings),
        ) {
            d.unreserve(self.who.uid, Quota::Bytes, len);
            return Err(e);
        }
        let mapped = (|| -> Result<(), WireError> {
            // Region::from_fd seals the memfd against shrinking.
            let region = Region::from_fd(fd, offset, len)
                .map_err(|e| err(ErrorCode::BadFd, e.to_string()))?;
            e.handle
                .map(&Arc::new(region), 0, iova, len, perms, kind)
                .map_err(core_err)
        })();
        if let Err(e) = mapped {
            d.unreserve(self.who.uid, Quota::Bytes, len);
            d.unreserve(self.who.uid, Quota::Mappings, 1);
            return Err(e);
        }
        let recorded = d
            .tables()
            .vcoprocs
            .get_mut(&vcoproc)
            .map(|entry| entry.mapped.insert(iova, len));
        if let Some(Some(stale)) = recorded {
            // A revoke ran between the map and this record and found no
            // record to remove: the stale record's quota goes back now.
            d.unreserve(self.who.uid, Quota::Bytes, stale);
            d.unreserve(self.who.uid, Quota::Mappings, 1);
        }
        if recorded.is_none() {
            // Destroyed meanwhile (by an admin): its release did not see
            // this mapping, so give the bytes back here.
            d.unreserve(self.who.uid, Quota::Bytes, len);
            d.unreserve(self.who.uid, Quota::Mappings, 1);
        }
        Ok(())
    }

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
            Some(e) if e.uid == self.who.uid || (admin_ok && self.who.admin) => Ok(e.clone()),
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

    /// Answer one request with the descriptors that came with it. Blocks
    /// on device work: call it from a blocking context.
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
        let d = self.daemon.clone();
        match req {
            Request::LoadFirmware { .. } | Request::Map { .. } | Request::CreateQueue { .. } => {}
            _ => Self::no_fds(&fds)?,
        }
        match req {
            Request::Hello { .. } => Err(err(ErrorCode::BadSequence, "hello twice")),
            Request::ListCoprocs => {
                let mut out = Vec::new();
                for (name, pc) in &d.pcoprocs {
                    if d.may_use(&self.who, name).is_err() {
                        continue;
                    }
                    let caps = pc.capabilities();
                    let (busy, _) = pc.busy();
                    let now = pc.now_ns().max(1);
                    out.push(CoprocInfo {
                        name: name.clone(),
                        class: caps.class.to_string(),
                        model: caps.model.clone(),
                        policy: pc.sched_info().policy,
                        vcoprocs: pc.vcoprocs().len() as u32,
                        utilisation_pct: (busy as f64 * 1000.0 / now as f64).round() / 10.0,
                        iova_base: caps.iova_base,
                        iova_size: caps.iova_size,
                        memory_bytes: caps.memory_bytes,
                        state: match pc.failed() {
                            Some(_) => "failed".into(),
                            None => "running".into(),
                        },
                        failure: pc.failed(),
                    });
                }
                Ok(Answer::Coprocs { coprocs: out })
            }
            Request::OpenVcoproc { coproc } => {
                let pc = d.may_use(&self.who, &coproc)?;
                let rule = d.rule(&self.who)?;
                d.reserve(
                    self.who.uid,
                    Quota::Vcoprocs,
                    1,
                    u64::from(rule.max_vcoprocs),
                )?;
                let handle = match pc
                    .create_vcoproc(coproc_core::DomainId(self.who.uid), Default::default())
                {
                    Ok(h) => h,
                    Err(e) => {
                        d.unreserve(self.who.uid, Quota::Vcoprocs, 1);
                        return Err(core_err(e));
                    }
                };
                let id = d.register(Entry {
                    coproc,
                    handle,
                    uid: self.who.uid,
                    session: self.id,
                    mapped: Default::default(),
                    queues: 0,
                    attachment: None,
                });
                Ok(Answer::Opened { vcoproc: id })
            }
            Request::LoadFirmware {
                vcoproc,
                label,
                len,
            } => {
                let e = self.entry(vcoproc, false)?;
                let fd = Self::one_fd(fds)?;
                if len == 0 || len > MAX_FIRMWARE {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        format!("firmware length {len} not in 1..={MAX_FIRMWARE}"),
                    ));
                }
                if label.len() > 64 {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        "label longer than 64 bytes",
                    ));
                }
                if label.chars().any(char::is_control) {
                    // Labels end up on admins' terminals.
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        "label has control characters",
                    ));
                }
                let image = read_firmware(&fd, len)?;
                e.handle.load_firmware(&label, &image).map_err(core_err)?;
                Ok(Answer::Done)
            }
            Request::Map {
                vcoproc,
                iova,
                offset,
                len,
                perms,
                kind,
            } => {
                let e = self.entry(vcoproc, false)?;
                let fd = Self::one_fd(fds)?;
                let perms = match perms {
                    WirePerms::R => Perms::R,
                    WirePerms::Rw => Perms::RW,
                };
                let kind = match kind {
                    WireMapKind::Pinned => MapKind::Pinned,
                    WireMapKind::Revocable => MapKind::Revocable,
                };
                self.map_fd(vcoproc, &e, fd, offset, iova, len, perms, kind)?;
                Ok(Answer::Done)
            }
            Request::CreateQueue {
                vcoproc,
                iova,
                entries,
            } => {
                let e = self.own_entry(vcoproc)?;
                let bytes = coproc_proto::queue::bytes_for(entries).ok_or_else(|| {
                    err(
                        ErrorCode::InvalidArgument,
                        format!("{entries} entries: use a power of two up to 4096"),
                    )
                })?;
                let len = bytes.div_ceil(4096) * 4096;
                let [mem, doorbell, completion]: [OwnedFd; 3] = fds.try_into().map_err(|f: Vec<OwnedFd>| {
                    err(
                        ErrorCode::BadFd,
                        format!("a queue takes 3 descriptors (memory, doorbell, completion), got {}", f.len()),
                    )
                })?;
                if !is_eventfd(&doorbell) || !is_eventfd(&completion) {
                    return Err(err(
                        ErrorCode::BadFd,
                        "doorbell and completion must be eventfds",
                    ));
                }
                e.handle.check_map(iova, len).map_err(core_err)?;
                // The busy-poll budget in the header's flags word: refused
                // early if over the maximum (firmware clamps it anyway, as
                // the domain can rewrite it). Read with pread, and only from
                // a memfd (it has seals; a read of another file could
                // block); anything else is refused by the mapping below.
                let mut flags = [0u8; 4];
                let peeked = rustix::fs::fcntl_get_seals(&mem).is_ok()
                    && rustix::io::pread(&mem, &mut flags, coproc_proto::queue::OFF_FLAGS)
                        .is_ok_and(|n| n == flags.len());
                let poll_us = u32::from_ne_bytes(flags);
                if peeked && poll_us > coproc_proto::queue::MAX_POLL_US {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        format!(
                            "busy-poll budget {poll_us} us over the maximum {} us",
                            coproc_proto::queue::MAX_POLL_US
                        ),
                    ));
                }
                let rule = d.rule(&self.who)?;
                d.reserve(self.who.uid, Quota::Queues, 1, u64::from(rule.max_queues))?;
                // The runner waits on the doorbell eventfd itself: a ring
                // reaches the device with no task or lock in between. Added
                // once the quota holds and before the mapping, so a refusal
                // (at most 64 per vcoproc) gives the quota back and leaves
                // nothing behind; should the mapping fail, the descriptor
                // only rings this vcoproc and goes with it.
                if let Err(err) = e.handle.add_doorbell_fd(doorbell) {
                    d.unreserve(self.who.uid, Quota::Queues, 1);
                    return Err(core_err(err));
                }
                if let Err(e) =
                    self.map_fd(vcoproc, &e, mem, 0, iova, len, Perms::RW, MapKind::Pinned)
                {
                    d.unreserve(self.who.uid, Quota::Queues, 1);
                    return Err(e);
                }
                let recorded = d
                    .tables()
                    .vcoprocs
                    .get_mut(&vcoproc)
                    .map(|x| x.queues += 1)
                    .is_some();
                if !recorded {
                    // Destroyed meanwhile (by an admin).
                    d.unreserve(self.who.uid, Quota::Queues, 1);
                    return Err(err(ErrorCode::NotFound, format!("no vcoproc {vcoproc}")));
                }
                let hooks = self.hooks(vcoproc, &e);
                hooks
                    .completions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(completion);
                hooks.start_writer();
                Ok(Answer::Done)
            }
            Request::Unmap { vcoproc, iova } => {
                let e = self.entry(vcoproc, false)?;
                e.handle.unmap(iova).map_err(core_err)?;
                let mut t = d.tables();
                let len = t
                    .vcoprocs
                    .get_mut(&vcoproc)
                    .and_then(|x| x.mapped.remove(&iova));
                if let (Some(len), Some(u)) = (len, t.usage.get_mut(&self.who.uid)) {
                    u.mapped_bytes = u.mapped_bytes.saturating_sub(len);
                    u.mappings = u.mappings.saturating_sub(1);
                }
                Ok(Answer::Done)
            }
            Request::MboxWrite {
                vcoproc,
                index,
                values,
            } => {
                let e = self.entry(vcoproc, false)?;
                let end = (index as usize).checked_add(values.len());
                if end.is_none_or(|end| end > coproc_core::control::MBOX_WORDS) {
                    return Err(err(ErrorCode::InvalidArgument, "mailbox has 16 words"));
                }
                for (i, v) in values.iter().enumerate() {
                    e.handle.mbox_write(index as usize + i, *v);
                }
                Ok(Answer::Done)
            }
            Request::MboxRead { vcoproc } => {
                let e = self.entry(vcoproc, false)?;
                let words = (0..coproc_core::control::MBOX_WORDS)
                    .map(|i| e.handle.mbox_read(i))
                    .collect();
                Ok(Answer::Mailbox {
                    words,
                    notify_seq: e.handle.last_notify().seq,
                })
            }
            Request::Doorbell { vcoproc } => {
                self.entry(vcoproc, false)?.handle.doorbell();
                Ok(Answer::Done)
            }
            Request::Start { vcoproc } => {
                self.entry(vcoproc, false)?
                    .handle
                    .start()
                    .map_err(core_err)?;
                Ok(Answer::Done)
            }
            Request::Stop { vcoproc } => {
                self.entry(vcoproc, true)?.handle.stop().map_err(core_err)?;
                Ok(Answer::Done)
            }
            Request::Reset { vcoproc } => {
                self.entry(vcoproc, true)?
                    .handle
                    .reset()
                    .map_err(core_err)?;
                Ok(Answer::Done)
            }
            Request::Destroy { vcoproc } => {
                let e = self.entry(vcoproc, true)?;
                self.hooks.remove(&vcoproc);
                // Out of the table first (its session's attachment goes with
                // it, whichever session this is), then out of the device.
                let removed = d.take(vcoproc);
                e.handle.destroy().map_err(core_err)?;
                if let Some(removed) = removed {
                    d.release(&removed);
                    if removed.session != self.id && removed.attachment.is_some() {
                        // Its creator listened and no longer hears from
                        // it: tell it.
                        d.notice(
                            removed.session,
                            Event::State {
                                vcoproc,
                                state: VcoprocState::Destroyed.to_string(),
                            },
                        );
                    }
                }
                Ok(Answer::Done)
            }
            Request::Query { vcoproc } => {
                let e = self.entry(vcoproc, true)?;
                Ok(Answer::Vcoproc {
                    info: info(vcoproc, &e)?,
                })
            }
            Request::Subscribe { vcoproc } => {
                let e = self.own_entry(vcoproc)?;
                self.hooks(vcoproc, &e)
                    .subscribed
                    .store(true, Ordering::Release);
                Ok(Answer::Done)
            }
            Request::ListVcoprocs { domain, coproc } => {
                let entries: Vec<(u32, Entry)> = d
                    .tables()
                    .vcoprocs
                    .iter()
                    .map(|(&id, e)| (id, e.clone()))
                    .collect();
                let mut out = Vec::new();
                for (id, e) in entries {
                    let visible = self.who.admin || e.uid == self.who.uid;
                    let wanted = domain.is_none_or(|u| u == e.uid)
                        && coproc.as_ref().is_none_or(|c| *c == e.coproc);
                    if visible && wanted {
                        if let Ok(i) = info(id, &e) {
                            out.push(i);
                        }
                    }
                }
                out.sort_by_key(|i| i.id);
                Ok(Answer::Vcoprocs { vcoprocs: out })
            }
            Request::ListDomains => {
                let t = d.tables();
                let mut out: Vec<DomainInfo> = t
                    .usage
                    .iter()
                    .filter(|(&uid, _)| self.who.admin || uid == self.who.uid)
                    .map(|(&uid, u)| DomainInfo {
                        uid,
                        sessions: u.sessions,
                        vcoprocs: u.vcoprocs,
                        mapped_bytes: u.mapped_bytes,
                        mappings: u.mappings,
                    })
                    .collect();
                out.sort_by_key(|x| x.uid);
                Ok(Answer::Domains { domains: out })
            }
            Request::ListFaults => {
                // Each pcoproc's fault logs (one per domain) outlive the
                // vcoprocs they name; a record carries its vcoproc's id,
                // which is its wire id, and its domain.
                let mut out = Vec::new();
                for (name, pc) in &d.pcoprocs {
                    for f in pc.faults() {
                        let uid = f.domain.0;
                        if self.who.admin || uid == self.who.uid {
                            out.push(fault_info(name, uid, f.vcoproc.0, &f));
                        }
                    }
                }
                Ok(Answer::Faults { faults: out })
            }
            Request::SchedGet { coproc } => {
                let pc = d.may_use(&self.who, &coproc)?;
                let s = pc.sched_info();
                let local_to_wire: HashMap<u32, u32> = d
                    .tables()
                    .vcoprocs
                    .iter()
                    .filter(|(_, e)| {
                        e.coproc == coproc && (self.who.admin || e.uid == self.who.uid)
                    })
                    .map(|(&id, e)| (e.handle.id().0, id))
                    .collect();
                let standings = s
                    .standings
                    .into_iter()
                    .filter_map(|st| {
                        local_to_wire
                            .get(&st.vcoproc.0)
                            .map(|&id| (id, st.queued, st.figures))
                    })
                    .collect();
                Ok(Answer::Sched {
                    sched: SchedInfo {
                        coproc,
                        policy: s.policy,
                        params: s.params,
                        standings,
                    },
                })
            }
            Request::SchedSet {
                coproc,
                policy,
                params,
            } => {
                if !self.who.admin {
                    return Err(err(
                        ErrorCode::PermissionDenied,
                        "sched-set needs root or the admin group",
                    ));
                }
                let pc = d.may_use(&self.who, &coproc)?;
                let p = coproc_core::policy::build(&policy, &params)
                    .map_err(|e| err(ErrorCode::InvalidArgument, e.to_string()))?;
                pc.set_policy(p).map_err(core_err)?;
                tracing::info!(coproc, policy, ?params, "policy switched");
                Ok(Answer::Done)
            }
            Request::VcoprocSet { vcoproc, set } => {
                if !self.who.admin {
                    return Err(err(
                        ErrorCode::PermissionDenied,
                        "vcoproc-set needs root or the admin group",
                    ));
                }
                let e = self.entry(vcoproc, true)?;
                let mut p = e.handle.info().map_err(core_err)?.params;
                apply_change(&mut p, &set)?;
                e.handle.set_params(p).map_err(core_err)?;
                Ok(Answer::Done)
            }
            Request::SetDemandFaults {
                vcoproc,
                timeout_ms,
            } => {
                let e = self.entry(vcoproc, false)?;
                let timeout = timeout_ms.map(Duration::from_millis);
                e.handle.set_demand_faults(timeout).map_err(core_err)?;
                Ok(Answer::Done)
            }
            Request::AllocLocal { vcoproc, iova, len } => {
                self.alloc_local(vcoproc, iova, len)?;
                Ok(Answer::Done)
            }
            Request::FreeLocal { vcoproc, iova } => {
                let e = self.entry(vcoproc, false)?;
                let len = e.handle.free_local(iova).map_err(core_err)?;
                let mut t = d.tables();
                let recorded = t
                    .vcoprocs
                    .get_mut(&vcoproc)
                    .and_then(|x| x.mapped.remove(&iova));
                if let (Some(u), Some(_)) = (t.usage.get_mut(&self.who.uid), recorded) {
                    u.mapped_bytes = u.mapped_bytes.saturating_sub(len);
                    u.mappings = u.mappings.saturating_sub(1);
                }
                Ok(Answer::Done)
            }
            Request::Revoke { vcoproc, iova } => self.revoke(vcoproc, iova),
            Request::ListMappings { vcoproc } => self.list_mappings(vcoproc),
        }
    }

    /// Allocate device-local memory in vcoproc `vcoproc`, within the
    /// domain's mapped-bytes quota (reserved first, given back on failure).
    fn alloc_local(&mut self, vcoproc: u32, iova: u64, len: u64) -> Result<(), WireError> {
        let e = self.entry(vcoproc, false)?;
        if len == 0 || !len.is_multiple_of(4096) || !iova.is_multiple_of(4096) {
            return Err(err(
                ErrorCode::InvalidArgument,
                "iova and length must be multiples of 4096, length non-zero",
            ));
        }
        let d = self.daemon.clone();
        let rule = d.rule(&self.who)?;
        // A local range counts as one mapping too (it is one entry of the
        // vcoproc's iova space, released with the others).
        d.reserve(
            self.who.uid,
            Quota::Mappings,
            1,
            u64::from(rule.max_mappings),
        )?;
        if let Err(x) = d.reserve(self.who.uid, Quota::Bytes, len, rule.max_mapped_bytes) {
            d.unreserve(self.who.uid, Quota::Mappings, 1);
            return Err(x);
        }
        if let Err(x) = e.handle.alloc_local(iova, len) {
            d.unreserve(self.who.uid, Quota::Bytes, len);
            d.unreserve(self.who.uid, Quota::Mappings, 1);
            return Err(core_err(x));
        }
        let recorded = d
            .tables()
            .vcoprocs
            .get_mut(&vcoproc)
            .map(|entry| entry.mapped.insert(iova, len))
            .is_some();
        if !recorded {
            // Destroyed meanwhile: its release did not count this.
            d.unreserve(self.who.uid, Quota::Bytes, len);
            d.unreserve(self.who.uid, Quota::Mappings, 1);
        }
        Ok(())
    }

    /// Revoke a mapping: the owner any of its own, an admin revocable ones
    /// of any domain (whose session gets a `mapping-revoked` event).
    fn revoke(&mut self, vcoproc: u32, iova: u64) -> Result<Answer, WireError> {
        use coproc_core::pcoproc::RevokeOutcome;
        let d = self.daemon.clone();
        let e = self.entry(vcoproc, true)?;
        let owner = e.uid == self.who.uid;
        let outcome = if owner {
            e.handle.revoke(iova)
        } else {
            e.handle.pcoproc().revoke(e.handle.id(), iova)
        };
        match outcome {
            RevokeOutcome::Removed { len } => {
                let mut t = d.tables();
                let had = t
                    .vcoprocs
                    .get_mut(&vcoproc)
                    .and_then(|x| x.mapped.remove(&iova));
                if let (Some(had), Some(u)) = (had, t.usage.get_mut(&e.uid)) {
                    u.mapped_bytes = u.mapped_bytes.saturating_sub(had);
                    u.mappings = u.mappings.saturating_sub(1);
                }
                drop(t);
                if !owner {
                    tracing::info!(vcoproc, iova, len, by = self.who.uid, "mapping revoked");
                    d.notice(
                        e.session,
                        Event::MappingRevoked {
                            vcoproc,
                            iova,
                            len,
                            by: self.who.uid,
                        },
                    );
                }
                Ok(Answer::Revoked { len })
            }
            RevokeOutcome::NotMapped | RevokeOutcome::Gone => Ok(Answer::NotMapped),
            RevokeOutcome::Pinned { len } => Err(err(
                ErrorCode::PermissionDenied,
                format!(
                    "the mapping at {iova:#x} ({len} bytes) of vcoproc {vcoproc} is pinned: \
                     only its domain may end it"
                ),
            )),
        }
    }

    /// Mappings visible to this session, of one vcoproc or all.
    fn list_mappings(&self, vcoproc: Option<u32>) -> Result<Answer, WireError> {
        let entries: Vec<(u32, Entry)> = match vcoproc {
            Some(v) => vec![(v, self.entry(v, true)?)],
            None => self
                .daemon
                .tables()
                .vcoprocs
                .iter()
                .filter(|(_, e)| self.who.admin || e.uid == self.who.uid)
                .map(|(&id, e)| (id, e.clone()))
                .collect(),
        };
        let mut out = Vec::new();
        for (id, e) in entries {
            let Ok(maps) = e.handle.mappings() else {
                continue;
            };
            out.extend(maps.into_iter().map(|m| MappingInfo {
                vcoproc: id,
                iova: m.iova,
                len: m.len,
                perms: if m.perms.write {
                    WirePerms::Rw
                } else {
                    WirePerms::R
                },
                kind: match m.kind {
                    MapKind::Pinned => WireMapKind::Pinned,
                    MapKind::Revocable => WireMapKind::Revocable,
                },
                domain: e.uid,
            }));
        }
        out.sort_by_key(|m| (m.vcoproc, m.iova));
        Ok(Answer::Mappings { mappings: out })
    }

    /// Turn a control block event into events for the client.
    /// Events owed to the client for vcoproc `id` after a wake-up: the
    /// latest notification, and a state change if there was a kick.
    /// The events due for vcoproc `id` after a wake-up.
    pub fn wake_events(&mut self, id: u32) -> Vec<Event> {
        let Some(h) = self.hooks.get(&id).cloned() else {
            return vec![];
        };
        h.queued.store(false, Ordering::Release);
        let mut out = Vec::new();
        if let Some(n) = h.latest.lock().unwrap_or_else(|e| e.into_inner()).take() {
            out.push(Event::Notify {
                vcoproc: id,
                seq: n.seq,
                tag: n.tag,
            });
        }
        let pf = h
            .page_fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((iova, access)) = pf {
            out.push(Event::PageFault {
                vcoproc: id,
                iova,
                access: format!("{access:?}").to_lowercase(),
            });
        }
        if h.kicked.swap(false, Ordering::AcqRel) {
            out.extend(self.state_events(id));
        }
        out
    }

    /// A state event (and the fault record) if the vcoproc newly stopped or
    /// faulted; each fault is reported once.
    fn state_events(&mut self, id: u32) -> Vec<Event> {
        let Some(h) = self.hooks.get(&id).cloned() else {
            return vec![];
        };
        let Ok(e) = self.entry(id, false) else {
            self.hooks.remove(&id);
            return vec![Event::State {
                vcoproc: id,
                state: VcoprocState::Destroyed.to_string(),
            }];
        };
        let Ok(i) = e.handle.info() else {
            return vec![];
        };
        if !matches!(i.state, VcoprocState::Faulted | VcoprocState::Stopped) {
            return vec![];
        }
        let now = Some((i.state, i.stats.faults));
        if std::mem::replace(
            &mut *h.reported.lock().unwrap_or_else(|e| e.into_inner()),
            now,
        ) == now
        {
            return vec![];
        }
        let mut out = Vec::new();
        if let (VcoprocState::Faulted, Some(f)) = (i.state, &i.last_fault) {
            out.push(Event::Fault {
                fault: fault_info(&e.coproc, e.uid, id, f),
            });
        }
        out.push(Event::State {
            vcoproc: id,
            state: i.state.to_string(),
        });
        out
    }
}

/// Why a session's connection is done with.
#[derive(Debug)]
struct Ended;

/// The socket side of a session: the stream and what bounds a write to it.
struct Conn {
    stream: UnixStream,
    /// A reply or event not taken by the client within this ends the session.
    write_timeout: Duration,
    shutdown: watch::Receiver<bool>,
}

impl Conn {
    /// Write one frame. A client that does not read within the write timeout,
    /// or a daemon shutting down, ends the session instead of waiting on it.
    async fn send(&mut self, frame: &ServerFrame) -> Result<(), Ended> {
        let bytes = coproc_proto::frame::encode_limited(frame, coproc_proto::frame::MAX_REPLY)
            .map_err(|_| Ended)?;
        let write = tokio::time::timeout(self.write_timeout, self.stream.write_all(&bytes));
        tokio::select! {
            r = write => match r {
                Ok(Ok(())) => Ok(()),
                _ => Err(Ended),
            },
            _ = self.shutdown.wait_for(|stop| *stop) => Err(Ended),
        }
    }

    /// Wait `d` (a session over its request budget), unless the daemon
    /// shuts down first.
    async fn pause(&mut self, d: Duration) -> Result<(), Ended> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.shutdown.wait_for(|stop| *stop) => Err(Ended),
        }
    }
}

/// The budgets a session's requests spend: its own and its domain's.
struct Budgets<'a> {
    session: &'a mut coproc_core::ratelimit::Budget,
    domain: &'a crate::daemon::DomainBudget,
}

impl Budgets<'_> {
    /// Spend `cost` of both; how long to wait first (the longer debt).
    fn take(&mut self, cost: u32) -> Duration {
        let own = self.session.take(cost);
        let domain = self
            .domain
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(cost);
        own.max(domain)
    }
}

/// What a request counts against its session's budget: requests that do
/// work on a runner count more than those answered from tables.
fn cost(req: &Request) -> u32 {
    match req {
        Request::LoadFirmware { .. }
        | Request::Map { .. }
        | Request::Unmap { .. }
        | Request::CreateQueue { .. }
        | Request::OpenVcoproc { .. }
        | Request::Start { .. }
        | Request::Stop { .. }
        | Request::Reset { .. }
        | Request::Destroy { .. }
        | Request::SchedSet { .. }
        | Request::VcoprocSet { .. }
        | Request::SetDemandFaults { .. }
        | Request::AllocLocal { .. }
        | Request::FreeLocal { .. }
        | Request::Revoke { .. } => crate::config::RUNNER_REQUEST_COST,
        _ => 1,
    }
}

/// Read from the socket into the receiver when it is readable.
async fn fill(stream: &UnixStream, rx: &mut Receiver) -> Result<usize, TransportError> {
    loop {
        stream.readable().await.map_err(|e| {
            TransportError::Io(
                rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
            )
        })?;
        let r = stream.try_io(Interest::READABLE, || match rx.fill(stream.as_fd()) {
            Err(TransportError::WouldBlock) => Err(std::io::ErrorKind::WouldBlock.into()),
            other => Ok(other),
        });
        match r {
            Ok(res) => return res,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                return Err(TransportError::Io(
                    rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
                ))
            }
        }
    }
}

/// Serve one connection until it closes, misbehaves beyond repair, or the
/// daemon shuts down. `slot` counts the connection against its uid's limit
/// until it ends.
pub async fn serve(
    daemon: Arc<Daemon>,
    stream: UnixStream,
    who: Identity,
    slot: crate::daemon::ConnectionSlot,
    shutdown: watch::Receiver<bool>,
) {
    let limits = &daemon.config.daemon;
    let hello_by = tokio::time::Instant::now() + Duration::from_millis(limits.hello_timeout_ms);
    let mut budget = coproc_core::ratelimit::Budget::new(limits.request_burst, limits.request_rate);
    let mut conn = Conn {
        stream,
        write_timeout: Duration::from_millis(limits.write_timeout_ms),
        shutdown,
    };
    let (mut s, mut wrx, mut nrx) = Session::open(daemon.clone(), who.clone());
    let id = s.id;
    let mut rx = Receiver::new();
    let mut budgets = Budgets {
        session: &mut budget,
        domain: &slot.budget,
    };
    let _ = session_loop(
        &mut s,
        &mut conn,
        &mut rx,
        &mut budgets,
        &mut wrx,
        &mut nrx,
        hello_by,
    )
    .await;
    tokio::task::block_in_place(|| s.close());
    drop(slot);
    tracing::debug!(session = id, uid = who.uid, "connection closed");
}

/// The body of [`serve`]: returns when the session is over.
async fn session_loop(
    s: &mut Session,
    conn: &mut Conn,
    rx: &mut Receiver,
    budget: &mut Budgets<'_>,
    wrx: &mut mpsc::Receiver<u32>,
    nrx: &mut mpsc::Receiver<Event>,
    hello_by: tokio::time::Instant,
) -> Result<(), Ended> {
    let (id, uid) = (s.id, s.who.uid);
    loop {
        // Answer every complete frame already buffered.
        loop {
            let next = match rx.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    // Bad header: the stream cannot be resynchronised.
                    if let Some(sup) = s.log.check() {
                        tracing::info!(session = id, uid, error = %e, suppressed = sup, "closing session: bad frame");
                    }
                    let reply = ServerFrame::Reply {
                        id: 0,
                        result: Err(err(ErrorCode::BadRequest, e.to_string())),
                    };
                    let _ = conn.send(&reply).await;
                    return Err(Ended);
                }
            };
            if rx.dropped_fds > 0 {
                // Never act on a frame whose descriptors were cut short.
                break;
            }
            let (body, fds) = next;
            let (rid, result, close) = match decode::<ClientFrame>(&body) {
                Err(e) => (0, Err(err(ErrorCode::BadRequest, e.to_string())), false),
                Ok(ClientFrame { id: rid, req }) => {
                    let wait = budget.take(cost(&req));
                    if !wait.is_zero() {
                        conn.pause(wait).await?;
                    }
                    let hello = matches!(req, Request::Hello { .. });
                    let r = tokio::task::block_in_place(|| s.handle(req, fds));
                    let close = hello && r.is_err();
                    (rid, r, close)
                }
            };
            if let Err(e) = &result {
                if let Some(sup) = s.log.check() {
                    tracing::debug!(session = id, uid, error = %e, suppressed = sup, "request refused");
                }
            }
            conn.send(&ServerFrame::Reply { id: rid, result }).await?;
            if close {
                return Err(Ended);
            }
        }
        if rx.dropped_fds > 0 {
            let reply = ServerFrame::Reply {
                id: 0,
                result: Err(err(
                    ErrorCode::BadFd,
                    "too many file descriptors in one frame",
                )),
            };
            let _ = conn.send(&reply).await;
            return Err(Ended);
        }
        /// What woke the session up.
        enum Woken {
            Read,
            Vcoproc(u32),
            Notice(Event),
        }
        let greeted = s.greeted;
        let woken = tokio::select! {
            r = fill(&conn.stream, rx) => match r {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => Woken::Read,
            },
            Some(vid) = wrx.recv() => Woken::Vcoproc(vid),
            Some(event) = nrx.recv() => Woken::Notice(event),
            _ = tokio::time::sleep_until(hello_by), if !greeted => {
                if let Some(sup) = s.log.check() {
                    tracing::info!(session = id, uid, suppressed = sup, "closing session: no hello in time");
                }
                return Err(Ended);
            }
            _ = conn.shutdown.wait_for(|stop| *stop) => return Err(Ended),
        };
        match woken {
            Woken::Read => {}
            Woken::Vcoproc(vid) => {
                let events = tokio::task::block_in_place(|| s.wake_events(vid));
                for event in events {
                    conn.send(&ServerFrame::Event { event }).await?;
                }
            }
            Woken::Notice(event) => conn.send(&ServerFrame::Event { event }).await?,
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
        let id = daemon.open_session(who.uid);
        let (wtx, wrx) = mpsc::channel(WAKE_QUEUE);
        let (ntx, nrx) = mpsc::channel(crate::daemon::NOTICES);
        daemon.set_notices(id, Some(ntx));
        tracing::debug!(session = id, uid = who.uid, pid = who.pid, "session opened");
        let s = Session {
            log: daemon.log_limit(who.uid),
            daemon,
            id,
            who,
            greeted: false,
            wake: wtx,
            hooks: HashMap::new(),
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
        self.daemon.close_session(self.who.uid, self.id);
        tracing::debug!(session = self.id, uid = self.who.uid, "session closed");
    }
}
