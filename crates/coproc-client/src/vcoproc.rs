//! The high-level SDK: a [`Vcoproc`] handle that is destroyed when dropped,
//! [`Vcoproc::call`] (request words in, reply words out, the notification
//! sequence handled inside), [`Buffer`]s mapped at an iova the SDK picks,
//! and queues set up in one call. Offloading a job on an existing firmware
//! takes four calls:
//!
//! ```no_run
//! # use coproc_client::*;
//! # fn main() -> Result<(), VcoprocError> {
//! # let elf: &[u8] = &[];
//! let v = Vcoproc::open("mcu0")?;                        // 1: connect, open
//! v.load("crc32", elf)?;                                  // 2: load, subscribe, start
//! let buf = v.buffer_from(b"123456789")?;                 // 3: memory, mapped
//! let reply = v.call(&[buf.iova32()?, 9, 1])?;            // 4: mailbox, doorbell, wait, answer
//! assert_eq!(reply.words[1], 0xCBF4_3926);
//! # Ok(())
//! # }                                                     // drop: unmap, destroy
//! ```
//!
//! Every [`Vcoproc`] lives in a [`Session`] (one connection to the daemon),
//! which may serve several: [`Vcoproc::open`] makes a session of its own,
//! [`Session::open`] adds one to an existing session. A session serves one
//! call at a time (its socket is shared); threads that call in parallel use
//! a session each. The blocking [`crate::Client`] stays underneath and is
//! reachable with [`Session::with_client`].

use crate::{
    Client, ClientError, CoprocInfo, DomainInfo, Event, FaultInfo, Identity, Queue, SharedMem,
    VcoprocInfo, WireMapKind, WirePerms,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long [`Vcoproc::call`] waits for the firmware's answer unless told
/// otherwise ([`Vcoproc::set_timeout`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the high-level SDK.
#[derive(Debug, Error)]
pub enum VcoprocError {
    /// A request failed (connection, refusal by the daemon, memory).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The vcoproc faulted (before or while it served the call); reset it
    /// with [`Vcoproc::reset`] to use it again.
    #[error("vcoproc {vcoproc} faulted: {}", fault.as_ref().map_or("no fault record", |f| f.reason.as_str()))]
    Faulted {
        /// The vcoproc.
        vcoproc: u32,
        /// The daemon's record of the fault (address, access, pc, reason).
        fault: Option<Box<FaultInfo>>,
    },
    /// The vcoproc stopped (its firmware exited) or was destroyed.
    #[error("vcoproc {vcoproc} is {state}")]
    Stopped {
        /// The vcoproc.
        vcoproc: u32,
        /// Its state (`stopped`, `destroyed`).
        state: String,
    },
    /// No answer in time; the vcoproc is left as it is.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// An argument the SDK refused before anything was sent.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// No room left in the vcoproc's iova window for a buffer or queue.
    #[error("no room for {len} bytes in the iova window of {coproc}")]
    NoIova {
        /// The pcoproc.
        coproc: String,
        /// The size asked for.
        len: u64,
    },
}

/// Lock a mutex whose data stays consistent through a panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The free ranges of a vcoproc's iova window: first fit among ranges
/// given back, else from the untouched top (`next..end`).
#[derive(Debug)]
struct Iovas {
    next: u64,
    end: u64,
    /// Start → length, neither overlapping nor touching each other or
    /// `next`.
    free: BTreeMap<u64, u64>,
}

impl Iovas {
    fn new(base: u64, end: u64) -> Iovas {
        Iovas {
            next: base,
            end,
            free: BTreeMap::new(),
        }
    }

    fn take(&mut self, len: u64) -> Option<u64> {
        if let Some((&at, &l)) = self.free.iter().find(|(_, l)| **l >= len) {
            self.free.remove(&at);
            if l > len {
                self.free.insert(at + len, l - len);
            }
            return Some(at);
        }
        let at = self.next;
        let end = at.checked_add(len).filter(|e| *e <= self.end)?;
        self.next = end;
        Some(at)
    }

    fn give(&mut self, mut at: u64, mut len: u64) {
        // Merge with the range before and the one after.
        if let Some((&p, &pl)) = self.free.range(..at).next_back() {
            if p + pl == at {
                self.free.remove(&p);
                at = p;
                len += pl;
            }
        }
        if let Some(nl) = self.free.remove(&(at + len)) {
            len += nl;
        }
        if at + len == self.next {
            self.next = at;
        } else {
            self.free.insert(at, len);
        }
    }
}

/// What happened to one vcoproc that no call has consumed yet.
#[derive(Debug, Default)]
struct Pending {
    /// The newest notification (seq, tag): notifications merge.
    notify: Option<(u64, u32)>,
    /// The newest fault record.
    fault: Option<FaultInfo>,
    /// A state change (faulted, stopped, destroyed).
    state: Option<String>,
}

/// A session's connection and what it received for its vcoprocs.
#[derive(Debug)]
struct State {
    client: Client,
    /// Vcoprocs of this session's handles, alive.
    live: HashSet<u32>,
    pending: HashMap<u32, Pending>,
}

impl State {
    /// Keep an event for the call that wants it (only for live vcoprocs:
    /// constant memory per vcoproc).
    fn route(&mut self, event: Event) {
        let id = match &event {
            Event::Notify { vcoproc, .. } | Event::State { vcoproc, .. } => *vcoproc,
            Event::Fault { fault } => fault.vcoproc,
            _ => return,
        };
        if !self.live.contains(&id) {
            return;
        }
        let p = self.pending.entry(id).or_default();
        match event {
            Event::Notify { seq, tag, .. } if p.notify.is_none_or(|(s, _)| seq > s) => {
                p.notify = Some((seq, tag));
            }
            Event::Fault { fault } => p.fault = Some(fault),
            Event::State { state, .. } => p.state = Some(state),
            _ => {}
        }
    }
}

/// A connection to the daemon shared by [`Vcoproc`] handles (cheap to
/// clone; the connection closes, destroying whatever it still holds, when
/// the last clone and the last handle are gone).
#[derive(Debug, Clone)]
pub struct Session {
    inner: Arc<Mutex<State>>,
}

impl Session {
    /// Connect to the default socket (`$COPROC_SOCKET`, else the daemon's
    /// default for this user).
    pub fn connect() -> Result<Session, VcoprocError> {
        Ok(Session::from_client(Client::connect()?))
    }

    /// Connect to the daemon at `socket`.
    pub fn connect_to(socket: &Path) -> Result<Session, VcoprocError> {
        Ok(Session::from_client(Client::connect_to(socket)?))
    }

    /// Wrap a connected client.
    pub fn from_client(client: Client) -> Session {
        Session {
            inner: Arc::new(Mutex::new(State {
                client,
                live: HashSet::new(),
                pending: HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held (a caller's closure in
        // `with_client`) leaves the connection usable: every request is
        // answered before the lock is let go.
        lock(&self.inner)
    }

    /// Run `f` on the underlying [`Client`] (everything the low-level SDK
    /// offers), holding the session for the duration. Events `f` takes
    /// ([`Client::next_event`], [`Client::wait_notify`]) are not seen by
    /// [`Vcoproc::call`]; a call that waits for one already taken waits
    /// until its timeout.
    pub fn with_client<R>(&self, f: impl FnOnce(&mut Client) -> R) -> R {
        f(&mut self.lock().client)
    }

    /// Who the daemon thinks we are.
    pub fn identity(&self) -> Identity {
        self.lock().client.identity().clone()
    }

    /// Open a vcoproc on the pcoproc `coproc`.
    pub fn open(&self, coproc: &str) -> Result<Vcoproc, VcoprocError> {
        let mut st = self.lock();
        let info = st
            .client
            .list_coprocs()?
            .into_iter()
            .find(|c| c.name == coproc);
        let id = st.client.open(coproc)?;
        // Listed pcoprocs are those the domain may use: open succeeding
        // means it is there.
        let Some(info) = info else {
            let _ = st.client.destroy(id);
            return Err(VcoprocError::Invalid(format!(
                "pcoproc {coproc} not listed"
            )));
        };
        st.live.insert(id);
        drop(st);
        Ok(Vcoproc {
            session: self.clone(),
            id,
            iovas: Arc::new(Mutex::new(Iovas::new(
                info.iova_base,
                info.iova_base.saturating_add(info.iova_size),
            ))),
            info,
            timeout_ms: AtomicU64::new(millis(DEFAULT_TIMEOUT)),
        })
    }

    /// Pcoprocs this domain may use.
    pub fn list_coprocs(&self) -> Result<Vec<CoprocInfo>, VcoprocError> {
        Ok(self.lock().client.list_coprocs()?)
    }

    /// Vcoprocs this session may see (its domain's; an admin's: all).
    pub fn list_vcoprocs(&self) -> Result<Vec<VcoprocInfo>, VcoprocError> {
        Ok(self.lock().client.list_vcoprocs(None, None)?)
    }

    /// Domains this session may see.
    pub fn list_domains(&self) -> Result<Vec<DomainInfo>, VcoprocError> {
        Ok(self.lock().client.list_domains()?)
    }

    /// Faults this session may see.
    pub fn list_faults(&self) -> Result<Vec<FaultInfo>, VcoprocError> {
        Ok(self.lock().client.list_faults()?)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A firmware's answer to [`Vcoproc::call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The mailbox-out words, read after the notification.
    pub words: Vec<u32>,
    /// The notification's tag.
    pub tag: u32,
    /// The notification's sequence number.
    pub seq: u64,
}

/// A vcoproc of this domain, destroyed when dropped (with its mappings and
/// queues). `Send` and `Sync`: calls from several threads take turns on
/// the session.
#[derive(Debug)]
pub struct Vcoproc {
    session: Session,
    id: u32,
    info: CoprocInfo,
    /// Free iova ranges (buffers and queues are placed upwards from the
    /// bottom of the window; a dropped buffer's range is reused).
    iovas: Arc<Mutex<Iovas>>,
    timeout_ms: AtomicU64,
}

impl Vcoproc {
    /// Connect to the default socket and open a vcoproc on `coproc`, in a
    /// session of its own.
    pub fn open(coproc: &str) -> Result<Vcoproc, VcoprocError> {
        Session::connect()?.open(coproc)
    }

    /// [`Vcoproc::open`] through the daemon at `socket`.
    pub fn open_at(socket: &Path, coproc: &str) -> Result<Vcoproc, VcoprocError> {
        Session::connect_to(socket)?.open(coproc)
    }

    /// Its id (as `coproc vcoproc-list` shows it).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The pcoproc it is on.
    pub fn coproc(&self) -> &CoprocInfo {
        &self.info
    }

    /// Its session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// How long [`Vcoproc::call`] waits.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    /// Change how long [`Vcoproc::call`] waits.
    pub fn set_timeout(&self, timeout: Duration) {
        self.timeout_ms.store(millis(timeout), Ordering::Relaxed);
    }

    /// Load `image` (labelled `label`), subscribe to its events and start
    /// it: the vcoproc then waits for its first doorbell.
    pub fn load(&self, label: &str, image: &[u8]) -> Result<(), VcoprocError> {
        let mut st = self.session.lock();
        st.client.load_firmware(self.id, label, image)?;
        st.client.subscribe(self.id)?;
        st.pending.remove(&self.id);
        st.client.start(self.id)?;
        Ok(())
    }

    /// Write `request` to the mailbox from word 0, ring the doorbell, wait
    /// for the firmware's notification and read the answer. The
    /// notification sequence is read before the doorbell, so an answer
    /// cannot be missed nor an older one taken for it. Fails with
    /// [`VcoprocError::Faulted`] if the vcoproc faults (or had faulted),
    /// [`VcoprocError::Stopped`] if it stops, [`VcoprocError::Timeout`]
    /// after [`Vcoproc::timeout`].
    pub fn call(&self, request: &[u32]) -> Result<Reply, VcoprocError> {
        self.call_timeout(request, self.timeout())
    }

    /// [`Vcoproc::call`] with its own timeout.
    pub fn call_timeout(&self, request: &[u32], timeout: Duration) -> Result<Reply, VcoprocError> {
        let deadline = Instant::now() + timeout;
        let mut st = self.session.lock();
        let (_, after) = st.client.mbox_read(self.id)?;
        let rung = if request.is_empty() {
            Ok(())
        } else {
            st.client.mbox_write(self.id, 0, request)
        }
        .and_then(|()| st.client.doorbell(self.id));
        if let Err(e) = rung {
            // Refused for its state: say which (a fault, with its record).
            if e.code() == Some(crate::ErrorCode::State) {
                let now = st.client.query(self.id)?;
                st.pending.remove(&self.id);
                return Err(end(self.id, &now.state, None, now.last_fault));
            }
            return Err(e.into());
        }
        let (seq, tag) = self.wait(&mut st, after, deadline, timeout)?;
        let (words, _) = st.client.mbox_read(self.id)?;
        Ok(Reply { words, tag, seq })
    }

    /// Wait for a notification newer than `after`, or the end.
    fn wait(
        &self,
        st: &mut State,
        after: u64,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(u64, u32), VcoprocError> {
        loop {
            if let Some(p) = st.pending.get_mut(&self.id) {
                if let Some((seq, tag)) = p.notify.take() {
                    if seq > after {
                        return Ok((seq, tag));
                    }
                }
                // The end of the vcoproc stays recorded (every later call
                // fails at once) until `reset` or `load`.
                if let Some(state) = p.state.clone() {
                    let fault = p.fault.clone();
                    // A state event left from before a reset made elsewhere
                    // (an admin's) is stale if the vcoproc runs again.
                    let now = st.client.query(self.id)?;
                    if !matches!(now.state.as_str(), "runnable" | "running" | "waiting") {
                        return Err(end(self.id, &state, fault, now.last_fault));
                    }
                    st.pending.remove(&self.id);
                    continue;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VcoprocError::Timeout(timeout));
            }
            match st.client.next_event(left) {
                Ok(event) => st.route(event),
                Err(ClientError::Timeout(_)) => return Err(VcoprocError::Timeout(timeout)),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Its state and counters.
    pub fn info(&self) -> Result<VcoprocInfo, VcoprocError> {
        Ok(self.session.lock().client.query(self.id)?)
    }

    /// Its state (`runnable`, `waiting`, `faulted`, ...).
    pub fn state(&self) -> Result<String, VcoprocError> {
        Ok(self.info()?.state)
    }

    /// Reset it (after a fault, say) and start it again: its firmware runs
    /// from the beginning with its mappings kept.
    pub fn reset(&self) -> Result<(), VcoprocError> {
        let mut st = self.session.lock();
        st.client.reset(self.id)?;
        st.pending.remove(&self.id);
        st.client.start(self.id)?;
        Ok(())
    }

    /// A free iova range of `len` bytes (whole pages).
    fn place(&self, len: u64) -> Result<u64, VcoprocError> {
        let no_room = || VcoprocError::NoIova {
            coproc: self.info.name.clone(),
            len,
        };
        lock(&self.iovas).take(len).ok_or_else(no_room)
    }

    /// `len` bytes (rounded up to pages) of zeroed memory shared with the
    /// vcoproc, mapped read/write and pinned at an iova the SDK picks.
    pub fn buffer(&self, len: u64) -> Result<Buffer, VcoprocError> {
        self.buffer_with(len, WirePerms::Rw, WireMapKind::Pinned)
    }

    /// A buffer holding a copy of `data`.
    pub fn buffer_from(&self, data: &[u8]) -> Result<Buffer, VcoprocError> {
        let b = self.buffer(data.len() as u64)?;
        b.write(0, data)?;
        Ok(b)
    }

    /// A buffer with its permissions and kind chosen.
    pub fn buffer_with(
        &self,
        len: u64,
        perms: WirePerms,
        kind: WireMapKind,
    ) -> Result<Buffer, VcoprocError> {
        let mem = SharedMem::new(len)?;
        let iova = self.place(mem.len())?;
        let mapped = self
            .session
            .lock()
            .client
            .map(self.id, &mem, 0, iova, mem.len(), perms, kind);
        if let Err(e) = mapped {
            lock(&self.iovas).give(iova, mem.len());
            return Err(e.into());
        }
        Ok(Buffer {
            session: self.session.clone(),
            vcoproc: self.id,
            iova,
            mem,
            iovas: self.iovas.clone(),
        })
    }

    /// An event-driven queue of `entries` entries (a power of two up to
    /// 4096) at an iova the SDK picks. Tell the firmware where it is
    /// ([`Vcoproc::announce_queue`] for the example firmware's convention,
    /// [`Vcoproc::gpu_queue`] for a GPU vcoproc).
    pub fn queue(&self, entries: u32) -> Result<Queue, VcoprocError> {
        self.queue_with(entries, Duration::ZERO)
    }

    /// [`Vcoproc::queue`] with a busy-poll budget
    /// ([`Client::create_queue_with`]).
    pub fn queue_with(&self, entries: u32, busy_poll: Duration) -> Result<Queue, VcoprocError> {
        let bytes = coproc_proto::queue::bytes_for(entries).ok_or_else(|| {
            VcoprocError::Invalid(format!("{entries} entries: use a power of two up to 4096"))
        })?;
        let iova = self.place(bytes.div_ceil(crate::shm::PAGE) * crate::shm::PAGE)?;
        Ok(self
            .session
            .lock()
            .client
            .create_queue_with(self.id, iova, entries, busy_poll)?)
    }

    /// Tell firmware that serves a queue where it is, by the example
    /// firmware's convention (`qecho`): mailbox words 0 and 1 = the queue's
    /// iova and length, then one doorbell.
    pub fn announce_queue(&self, queue: &Queue) -> Result<(), VcoprocError> {
        self.announce_words(queue.iova(), queue.len())
    }

    pub(crate) fn announce_words(&self, iova: u64, len: u64) -> Result<(), VcoprocError> {
        let iova = u32::try_from(iova)
            .map_err(|_| VcoprocError::Invalid(format!("iova {iova:#x} over 32 bits")))?;
        let len =
            u32::try_from(len).map_err(|_| VcoprocError::Invalid("queue over 4 GiB".into()))?;
        let mut st = self.session.lock();
        st.client.mbox_write(self.id, 0, &[iova, len])?;
        st.client.doorbell(self.id)?;
        Ok(())
    }

    /// A queue attached to this `vulkan` vcoproc's command processor, for
    /// [`Queue::submit_job`] and [`Queue::wait_job`].
    pub fn gpu_queue(&self, entries: u32) -> Result<Queue, VcoprocError> {
        let q = self.queue(entries)?;
        self.session.lock().client.gpu_attach(self.id, &q)?;
        Ok(q)
    }

    /// Destroy it now, reporting errors (dropping it does the same
    /// silently).
    pub fn destroy(self) -> Result<(), VcoprocError> {
        let r = self.session.lock().client.destroy(self.id);
        // Drop finds it gone and says nothing.
        r.map_err(Into::into)
    }
}

/// The error a call ends with when the vcoproc reached `state`.
fn end(
    vcoproc: u32,
    state: &str,
    fault: Option<FaultInfo>,
    last: Option<Box<FaultInfo>>,
) -> VcoprocError {
    if state == "faulted" {
        VcoprocError::Faulted {
            vcoproc,
            fault: fault.map(Box::new).or(last),
        }
    } else {
        VcoprocError::Stopped {
            vcoproc,
            state: state.into(),
        }
    }
}

impl Drop for Vcoproc {
    fn drop(&mut self) {
        let mut st = self.session.lock();
        st.live.remove(&self.id);
        st.pending.remove(&self.id);
        // Already gone (destroyed explicitly, by an admin, or the daemon
        // went away): nothing to do.
        let _ = st.client.destroy(self.id);
    }
}

/// Memory shared with one vcoproc, mapped at [`Buffer::iova`]; unmapped
/// from the vcoproc when dropped. Reads and writes are copies through the
/// SDK's typed access to shared memory (the device may write it
/// concurrently).
#[derive(Debug)]
pub struct Buffer {
    session: Session,
    vcoproc: u32,
    iova: u64,
    mem: SharedMem,
    /// Its vcoproc's free ranges, to give its range back to.
    iovas: Arc<Mutex<Iovas>>,
}

mod sealed {
    pub trait Sealed {}
}

/// Plain numbers a [`Buffer`] can hold, stored little-endian (what both
/// device classes use).
pub trait Scalar: sealed::Sealed + Copy {
    /// Bytes per value.
    const SIZE: usize;
    /// Append the value's little-endian bytes.
    fn put(self, out: &mut Vec<u8>);
    /// The value from `SIZE` little-endian bytes.
    fn get(bytes: &[u8]) -> Self;
}

macro_rules! scalar {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Scalar for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(bytes: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(bytes);
                <$t>::from_le_bytes(a)
            }
        }
    )*};
}
scalar!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64);

impl Buffer {
    /// Where the vcoproc sees its first byte.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// The iova as the 32-bit word a mailbox carries (always fits on the
    /// mcu class, whose window lies below 4 GiB).
    pub fn iova32(&self) -> Result<u32, VcoprocError> {
        u32::try_from(self.iova)
            .map_err(|_| VcoprocError::Invalid(format!("iova {:#x} over 32 bits", self.iova)))
    }

    /// The vcoproc it is mapped in.
    pub fn vcoproc(&self) -> u32 {
        self.vcoproc
    }

    /// Its size in bytes (whole pages).
    pub fn len(&self) -> u64 {
        self.mem.len()
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The shared memory itself (its memfd, its address in this process).
    pub fn mem(&self) -> &SharedMem {
        &self.mem
    }

    /// Copy bytes in at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), VcoprocError> {
        Ok(self.mem.write(offset, data)?)
    }

    /// Copy bytes out from `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VcoprocError> {
        Ok(self.mem.read(offset, buf)?)
    }

    /// `len` bytes from `offset`.
    pub fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>, VcoprocError> {
        Ok(self.mem.read_vec(offset, len)?)
    }

    /// Store `values` from byte `offset`, little-endian.
    pub fn write_slice<T: Scalar>(&self, offset: u64, values: &[T]) -> Result<(), VcoprocError> {
        let mut bytes = Vec::with_capacity(values.len() * T::SIZE);
        for v in values {
            v.put(&mut bytes);
        }
        self.write(offset, &bytes)
    }

    /// `count` values from byte `offset`, little-endian.
    pub fn read_slice<T: Scalar>(&self, offset: u64, count: usize) -> Result<Vec<T>, VcoprocError> {
        let len = count
            .checked_mul(T::SIZE)
            .ok_or_else(|| VcoprocError::Invalid(format!("{count} values")))?;
        let bytes = self.read_vec(offset, len)?;
        Ok(bytes.chunks_exact(T::SIZE).map(T::get).collect())
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // The vcoproc may be gone already (destroyed with its mappings):
        // then its iovas do not matter any more.
        if self
            .session
            .lock()
            .client
            .unmap(self.vcoproc, self.iova)
            .is_ok()
        {
            lock(&self.iovas).give(self.iova, self.mem.len());
        }
    }
}

impl Queue {
    /// Submit `sqe`, ring the doorbell and wait (up to `timeout`) for the
    /// completion with its tag; completions of other tags that arrive
    /// meanwhile are dropped, so keep one request in flight on a queue
    /// used this way. [`ClientError::Timeout`] if none came.
    pub fn round_trip(
        &mut self,
        sqe: &crate::Sqe,
        timeout: Duration,
    ) -> Result<crate::Cqe, ClientError> {
        if !self.submit(sqe) {
            return Err(ClientError::Invalid("the submission ring is full".into()));
        }
        self.ring()?;
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(c) = self.complete() {
                if c.tag == sqe.tag {
                    return Ok(c);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.wait(left)? {
                return Err(ClientError::Timeout(timeout));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Iovas;

    #[test]
    fn iova_ranges_are_reused_first_fit_and_merged() {
        let mut w = Iovas::new(0x1000, 0x10000);
        let a = w.take(0x1000).unwrap();
        let b = w.take(0x2000).unwrap();
        let c = w.take(0x1000).unwrap();
        assert_eq!((a, b, c), (0x1000, 0x2000, 0x4000));
        w.give(b, 0x2000);
        // First fit: the hole, split.
        assert_eq!(w.take(0x1000), Some(0x2000));
        assert_eq!(w.take(0x1000), Some(0x3000));
        assert_eq!(w.take(0x1000), Some(0x5000));
        // Given back in any order, merged, and the top comes down.
        for at in [0x3000, 0x1000, 0x5000, 0x2000, 0x4000] {
            w.give(at, 0x1000);
        }
        assert!(w.free.is_empty());
        assert_eq!(w.next, 0x1000);
        // The window's end is a hard limit.
        assert_eq!(w.take(0xF000), Some(0x1000));
        assert_eq!(w.take(0x1000), None);
        w.give(0x1000, 0xF000);
        assert_eq!(w.take(0x10000), None);
        assert_eq!(w.take(0xF000), Some(0x1000));
    }
}
