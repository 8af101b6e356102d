//! A pcoproc: one physical coprocessor, its runner thread, and the handles
//! domains use to drive their vcoprocs on it.
//!
//! All scheduling state lives in one mutex-protected `Inner`; the device
//! itself lives on the runner thread only. Control operations that need the
//! device (load, map, reset, destroy) are queued as commands that the runner
//! executes between slices; the running slice is preempted so they are served
//! within one preemption point. Firmware is parsed and validated on the
//! loading thread before its command is queued.
//!
//! The domain's hot path takes no lock that device work can hold: mailbox
//! access is atomic, the vcoproc's state is published in its control block,
//! and a doorbell only *tries* the scheduling lock — if a command holds it,
//! the wake-up is handed to the runner through a small queue of its own.
//! Doorbell eventfds go straight into the runner's epoll set
//! ([`VcoprocHandle::add_doorbell_fd`]). Revoke takes only the table of
//! device views: it withdraws the pages in one step and leaves the runner
//! to tidy up (see [`VcoprocHandle::revoke`]).

use crate::control::{ControlBlock, Notify};
use crate::device::{
    Capabilities, ContextSpec, Device, DeviceError, FirmwareInfo, FirmwarePrep, PreemptHandle,
    VirtualClock,
};
use crate::fault::{DeviceFault, FaultRecord};
use crate::ids::{DomainId, VcoprocId};
use crate::iova::{IovaError, IovaSpace, MapKind, Mapping, Perms};
use crate::memory::{Region, PAGE_SIZE};
use crate::policy::{Policy, PolicyError, SchedParams, Standing, WakeAction};
use crate::runner;
use crate::state::{Event, TransitionError, VcoprocState};
use crate::stats::VcoprocStats;
use crate::wakeup::{Wakeup, WakeupError};
use rustix::fd::OwnedFd;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Fault records kept per vcoproc (newest win).
pub const VCOPROC_FAULTS_KEPT: usize = 16;
/// Fault records kept per domain on each pcoproc (newest win; one
/// domain's faults never push out another's).
pub const DOMAIN_FAULTS_KEPT: usize = 256;

/// Errors of the in-process API.
#[derive(Debug, Error)]
pub enum CoreError {
    /// No such vcoproc on this pcoproc.
    #[error("no vcoproc {0}")]
    NoVcoproc(VcoprocId),
    /// The vcoproc belongs to another domain.
    #[error("{0} does not belong to domain {1}")]
    NotOwner(VcoprocId, DomainId),
    /// Not allowed in the vcoproc's state.
    #[error(transparent)]
    State(#[from] TransitionError),
    /// The device refused.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Bad iova range.
    #[error(transparent)]
    Iova(#[from] IovaError),
    /// Bad scheduling parameter.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The runner is gone (shut down or the device failed to start).
    #[error("pcoproc {0} is shut down")]
    Shutdown(String),
    /// Timed out waiting.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The pcoproc failed (device or policy code panicked where no single
    /// vcoproc could be blamed): nothing runs on it any more.
    #[error("pcoproc {0} failed: {1}")]
    Failed(String, String),
    /// Device code panicked while serving this request; the vcoproc it was
    /// for faulted, the others go on.
    #[error("device code panicked: {0}")]
    Panicked(String),
    /// A doorbell descriptor could not be added.
    #[error(transparent)]
    Doorbell(#[from] WakeupError),
    /// A demand-fault stall timeout outside the accepted range.
    #[error("demand-fault timeout {0:?} outside {MIN_STALL_TIMEOUT:?}..={MAX_STALL_TIMEOUT:?}")]
    BadStallTimeout(Duration),
}

/// Shortest demand-fault stall timeout accepted.
pub const MIN_STALL_TIMEOUT: Duration = Duration::from_millis(1);
/// Longest demand-fault stall timeout accepted.
pub const MAX_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A pending demand fault: where a stalled vcoproc waits for a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PageFault {
    /// The address the device reported.
    pub addr: u64,
    /// The access kind.
    pub access: crate::fault::Access,
    /// When it stalled (ns since the pcoproc started).
    pub since_ns: u64,
    /// When the stall turns into a fault.
    pub deadline_ns: u64,
}

/// A queued control operation, run on the runner thread between slices.
pub(crate) type Command = Box<dyn FnOnce(&mut dyn Device, &mut Inner) + Send>;

/// One vcoproc as the framework tracks it.
#[derive(Debug)]
pub(crate) struct Vc {
    pub domain: DomainId,
    pub label: String,
    pub state: VcoprocState,
    pub stats: VcoprocStats,
    pub params: SchedParams,
    pub control: Arc<ControlBlock>,
    pub iova: IovaSpace,
    pub faults: VecDeque<FaultRecord>,
    pub exit_code: Option<u32>,
    /// When it last became runnable from not wanting the device (start,
    /// wake-up), until the slice that follows starts.
    pub woken_ns: Option<u64>,
    /// Demand faults: the stall timeout, None when off.
    pub demand: Option<Duration>,
    /// The page fault it is stalled on (only while `Stalled`).
    pub stall: Option<PageFault>,
}

impl Vc {
    pub(crate) fn transition(&mut self, e: Event) -> Result<(), TransitionError> {
        self.state = self.state.apply(e)?;
        if self.state != VcoprocState::Stalled {
            self.stall = None;
        }
        self.control.publish_state(self.state);
        Ok(())
    }

    /// Set the state whatever it was (a panic contained, a failed pcoproc).
    pub(crate) fn force(&mut self, state: VcoprocState) {
        self.state = state;
        self.stall = None;
        self.control.publish_state(state);
    }
}

/// One slice as the runner saw it (kept when tracing is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TraceEntry {
    /// Who ran.
    pub vcoproc: VcoprocId,
    /// Start, ns since the pcoproc started.
    pub start_ns: u64,
    /// Measured run time.
    pub ran_ns: u64,
    /// Budget it was given.
    pub budget_ns: u64,
    /// Whether it still wanted to run afterwards.
    pub runnable_after: bool,
    /// Whether a preempt request cut it short (it continues its turn).
    pub preempted: bool,
    /// For the first slice after a start or wake-up: ns from that wake-up
    /// to the start of this slice (the wake→run latency).
    pub waited_ns: Option<u64>,
}

/// Scheduling state shared by the runner and the API.
pub(crate) struct Inner {
    pub policy: Box<dyn Policy>,
    pub vcoprocs: BTreeMap<VcoprocId, Vc>,
    pub commands: VecDeque<Command>,
    pub running: Option<VcoprocId>,
    pub shutdown: bool,
    /// Fault logs by domain.
    pub faults: BTreeMap<DomainId, VecDeque<FaultRecord>>,
    pub busy_ns: u64,
    pub switches: u64,
    pub trace: Option<(usize, VecDeque<TraceEntry>)>,
    /// Limits the fault log lines (faults are domain-triggered).
    pub fault_log: crate::ratelimit::RateLimit,
    /// Stall deadlines, earliest first: (deadline, vcoproc). An entry
    /// whose vcoproc is no longer stalled with that deadline is stale and
    /// dropped when it reaches the front, so expiring stalls costs O(log n)
    /// per stall, never a scan of every vcoproc.
    pub stall_deadlines: std::collections::BTreeSet<(u64, VcoprocId)>,
    /// Why the pcoproc failed, once it has.
    pub failed: Option<String>,
    /// The reply of a command that panicked: the runner answers it once
    /// the panic is contained (or the pcoproc failed).
    pub panic_reply: Option<Box<dyn FnOnce(CoreError) + Send>>,
}

impl Inner {
    pub(crate) fn vc(&mut self, v: VcoprocId) -> Result<&mut Vc, CoreError> {
        self.vcoprocs.get_mut(&v).ok_or(CoreError::NoVcoproc(v))
    }

    /// Record a fault of vcoproc `id` (gone already: nothing to record)
    /// in its own log and in its domain's log on this pcoproc.
    pub(crate) fn record_fault(&mut self, id: VcoprocId, at_ns: u64, fault: DeviceFault) {
        let Some(vc) = self.vcoprocs.get_mut(&id) else {
            return;
        };
        let rec = FaultRecord {
            vcoproc: id,
            domain: vc.domain,
            at_ns,
            fault,
        };
        if let Some(suppressed) = self.fault_log.check() {
            tracing::warn!(fault = %rec, suppressed, "vcoproc faulted");
        }
        vc.stats.faults += 1;
        if vc.faults.len() == VCOPROC_FAULTS_KEPT {
            vc.faults.pop_front();
        }
        vc.faults.push_back(rec.clone());
        // One log per domain: another domain's faults never push this
        // domain's records out.
        let log = self.faults.entry(rec.domain).or_default();
        if log.len() == DOMAIN_FAULTS_KEPT {
            log.pop_front();
        }
        log.push_back(rec);
    }
}

/// The device views of every vcoproc's mappings, by iova: what revoke
/// needs, kept apart from the scheduling state so that revoke never waits
/// for a lock the runner holds across device work. Lock order: `Inner`
/// before this, never the other way.
#[derive(Debug, Default)]
pub(crate) struct Views {
    pub maps: HashMap<VcoprocId, BTreeMap<u64, (MapKind, Arc<Region>)>>,
}

/// The shared table of views.
pub(crate) type ViewTable = Arc<Mutex<Views>>;

pub(crate) fn lock_views(t: &ViewTable) -> MutexGuard<'_, Views> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// A revoked mapping the runner still has to take out of the iova space
/// and the device: (vcoproc, iova, the trapped view).
pub(crate) type Tidy = (VcoprocId, u64, Arc<Region>);

pub(crate) struct Shared {
    pub name: String,
    pub inner: Mutex<Inner>,
    /// Where an idle runner on the host clock waits: its kick eventfd and
    /// the vcoprocs' doorbell eventfds.
    pub wakeup: Wakeup,
    /// Wake-ups that found the scheduling lock taken: vcoproc → doorbells
    /// to count. The runner drains it every turn.
    pub wakes: Mutex<BTreeMap<VcoprocId, u64>>,
    /// `wakes` or `tidy` holds something.
    pub deferred: AtomicBool,
    /// A slice is running on the device.
    pub slice_running: AtomicBool,
    /// Device views of the mappings (see [`Views`]).
    pub views: ViewTable,
    /// Revoked mappings waiting for the runner.
    pub tidy: Mutex<Vec<Tidy>>,
    /// The message of the last panic contained on the runner.
    pub last_panic: Mutex<String>,
    /// Wakes those waiting for a vcoproc state change.
    pub state_cv: Condvar,
    pub preempt: PreemptHandle,
    /// Where firmware is parsed and validated, on the loading thread.
    pub prep: Arc<dyn FirmwarePrep>,
    pub epoch: Instant,
    /// The device's virtual clock, if it keeps one.
    pub clock: Option<Arc<dyn VirtualClock>>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn now_ns(&self) -> u64 {
        match &self.clock {
            Some(c) => c.now_ns(),
            None => self.epoch.elapsed().as_nanos() as u64,
        }
    }

    /// Wake an idle runner (new command, wake-up, shutdown).
    pub(crate) fn kick_runner(&self) {
        self.wakeup.kick();
        if let Some(c) = &self.clock {
            c.interrupt();
        }
    }

    /// Idle the runner until `until_ns` (None: until kicked), bounded by
    /// `max` on the host clock. Releases the lock meanwhile. Doorbell
    /// eventfds rung meanwhile are pushed into `rung`.
    pub(crate) fn idle(
        &self,
        g: MutexGuard<'_, Inner>,
        until_ns: Option<u64>,
        max: Duration,
        rung: &mut Vec<VcoprocId>,
    ) {
        match &self.clock {
            Some(c) => {
                drop(g);
                c.idle(until_ns);
            }
            None => {
                // From here kicks write the eventfd; then the last look
                // for work that arrived before (see `wakeup`).
                self.wakeup.arm();
                if !g.commands.is_empty() || g.shutdown || self.deferred.load(Ordering::SeqCst) {
                    self.wakeup.disarm();
                    return;
                }
                drop(g);
                let now = self.now_ns();
                let t = until_ns.map_or(max, |u| Duration::from_nanos(u.saturating_sub(now)));
                self.wakeup.wait(t.min(max), rung);
                self.wakeup.disarm();
            }
        }
    }

    /// Count `doorbells` for `id` and wake it if it waits: the policy hears
    /// of it and may ask to preempt the running slice. Returns whether the
    /// runner should be kicked.
    pub(crate) fn wake_in(&self, g: &mut Inner, id: VcoprocId, doorbells: u64) -> bool {
        let now = self.now_ns();
        let Some(vc) = g.vcoprocs.get_mut(&id) else {
            return false;
        };
        vc.stats.doorbells += doorbells;
        if vc.state != VcoprocState::Waiting || vc.transition(Event::Wake).is_err() {
            return false;
        }
        vc.woken_ns = Some(now);
        let action = g.policy.wake(id, now);
        if action == WakeAction::Preempt && g.running.is_some() {
            self.preempt.preempt();
        }
        true
    }

    /// Hand a wake-up to the runner (the scheduling lock was taken).
    fn defer_wake(&self, id: VcoprocId, doorbells: u64) {
        *self
            .wakes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_insert(0) += doorbells;
        self.deferred.store(true, Ordering::SeqCst);
        // A slice running now would otherwise delay the wake-up to its
        // end; cutting it short lets the policy decide at once (the
        // preempted vcoproc keeps its turn).
        if self.slice_running.load(Ordering::SeqCst) {
            self.preempt.preempt();
        }
        self.kick_runner();
    }

    /// Wake `id` if it waits. Never waits for a lock that device work can
    /// hold: the scheduling lock is only tried; when it is taken (a command
    /// runs between slices, or a snapshot is read) the wake-up goes to the
    /// runner's queue instead and the runner applies it on its next turn.
    pub(crate) fn wake(&self, id: VcoprocId, doorbells: u64) {
        let g = match self.inner.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.defer_wake(id, doorbells);
                return;
            }
        };
        let mut g = g;
        if g.failed.is_some() {
            return;
        }
        // Policy code runs here on the domain's thread: a panic in it is
        // contained like one on the runner (the pcoproc fails visibly).
        let woke = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.wake_in(&mut g, id, doorbells)
        }));
        match woke {
            Ok(true) => {
                drop(g);
                self.kick_runner();
            }
            Ok(false) => {}
            Err(p) => {
                let msg = runner::panic_message(p.as_ref());
                runner::fail(self, &mut g, &format!("policy panicked: {msg}"));
                drop(g);
                self.inner.clear_poison();
                self.kick_runner();
                self.state_cv.notify_all();
            }
        }
    }

    /// Whether the pcoproc failed, and why.
    fn failure(&self, g: &Inner) -> Option<CoreError> {
        g.failed
            .as_ref()
            .map(|m| CoreError::Failed(self.name.clone(), m.clone()))
    }
}

/// A snapshot of one vcoproc.
#[derive(Debug, Clone, Serialize)]
pub struct VcoprocInfo {
    /// Its id.
    pub id: VcoprocId,
    /// Owner.
    pub domain: DomainId,
    /// Firmware label.
    pub firmware: String,
    /// State.
    pub state: VcoprocState,
    /// Counters.
    pub stats: VcoprocStats,
    /// Scheduling parameters.
    pub params: SchedParams,
    /// Mappings in its iova space.
    pub mappings: usize,
    /// Bytes mapped.
    pub mapped_bytes: u64,
    /// Exit code once stopped.
    pub exit_code: Option<u32>,
    /// Its most recent fault.
    pub last_fault: Option<FaultRecord>,
    /// Bytes of device-local memory allocated with
    /// [`VcoprocHandle::alloc_local`].
    pub local_bytes: u64,
}

/// A snapshot of the pcoproc's scheduler.
#[derive(Debug, Clone, Serialize)]
pub struct SchedInfo {
    /// Policy name.
    pub policy: String,
    /// Policy parameters.
    pub params: Vec<(String, String)>,
    /// Per-vcoproc standing.
    pub standings: Vec<Standing>,
}

/// One physical coprocessor with its runner thread.
pub struct Pcoproc {
    shared: Arc<Shared>,
    caps: Capabilities,
    /// Where vcoproc ids come from (shared by pcoprocs that want ids unique
    /// across them).
    next_id: Arc<AtomicU32>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Pcoproc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pcoproc")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl Pcoproc {
    /// Start a pcoproc: spawn its runner thread, which creates the device
    /// with `factory` (devices need not be `Send`) and schedules with `policy`.
    pub fn spawn<F>(
        name: &str,
        factory: F,
        policy: Box<dyn Policy>,
    ) -> Result<Arc<Pcoproc>, CoreError>
    where
        F: FnOnce() -> Result<Box<dyn Device>, DeviceError> + Send + 'static,
    {
        Self::spawn_with_ids(name, factory, policy, Arc::new(AtomicU32::new(1)))
    }

    /// Like [`Pcoproc::spawn`], taking vcoproc ids from `ids`: pcoprocs that
    /// share it give out ids unique across all of them.
    pub fn spawn_with_ids<F>(
        name: &str,
        factory: F,
        policy: Box<dyn Policy>,
        ids: Arc<AtomicU32>,
    ) -> Result<Arc<Pcoproc>, CoreError>
    where
        F: FnOnce() -> Result<Box<dyn Device>, DeviceError> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let wakeup = Wakeup::new()?;
        let tname = format!("runner-{name}");
        let pname = name.to_string();
        let thread = std::thread::Builder::new()
            .name(tname)
            .spawn(move || {
                let device = match factory() {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let shared = Arc::new(Shared {
                    name: pname,
                    inner: Mutex::new(Inner {
                        policy,
                        vcoprocs: BTreeMap::new(),
                        commands: VecDeque::new(),
                        running: None,
                        shutdown: false,
                        faults: BTreeMap::new(),
                        busy_ns: 0,
                        switches: 0,
                        trace: None,
                        fault_log: crate::ratelimit::RateLimit::default(),
                        stall_deadlines: std::collections::BTreeSet::new(),
                        failed: None,
                        panic_reply: None,
                    }),
                    wakeup,
                    wakes: Mutex::new(BTreeMap::new()),
                    deferred: AtomicBool::new(false),
                    slice_running: AtomicBool::new(false),
                    views: ViewTable::default(),
                    tidy: Mutex::new(Vec::new()),
                    last_panic: Mutex::new(String::new()),
                    state_cv: Condvar::new(),
                    preempt: device.preempt_handle(),
                    prep: device.firmware_prep(),
                    epoch: Instant::now(),
                    clock: device.virtual_clock(),
                });
                let _ = tx.send(Ok((shared.clone(), device.capabilities())));
                runner::run(device, &shared);
            })
            .map_err(|e| CoreError::Device(DeviceError::Backend(e.to_string())))?;
        let (shared, caps) = rx
            .recv()
            .map_err(|_| CoreError::Shutdown(name.to_string()))?
            .map_err(CoreError::Device)?;
        // The sentinel: takes doorbells while the runner runs a slice (see
        // `wakeup`); ends when the runner does.
        let sentinel = shared.clone();
        std::thread::Builder::new()
            .name(format!("doorbells-{name}"))
            .spawn(move || {
                let mut rung = Vec::new();
                while sentinel.wakeup.sentinel_wait(&mut rung) {
                    for v in rung.drain(..) {
                        sentinel.wake(v, 1);
                    }
                }
            })
            .map_err(|e| CoreError::Device(DeviceError::Backend(e.to_string())))?;
        Ok(Arc::new(Pcoproc {
            shared,
            caps,
            next_id: ids,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The device's capabilities.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Nanoseconds since the pcoproc started.
    pub fn now_ns(&self) -> u64 {
        self.shared.now_ns()
    }

    /// Run `f` on the runner thread with the device and the scheduling state,
    /// between slices, and return its result.
    pub(crate) fn command<R, F>(&self, f: F) -> Result<R, CoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn Device, &mut Inner) -> R + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel::<Result<R, CoreError>>(1);
        {
            let mut g = self.shared.lock();
            if let Some(e) = self.shared.failure(&g) {
                return Err(e);
            }
            if g.shutdown {
                return Err(CoreError::Shutdown(self.shared.name.clone()));
            }
            g.commands.push_back(Box::new(move |d, i| {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(d, i))) {
                    Ok(r) => {
                        let _ = tx.send(Ok(r));
                    }
                    Err(p) => {
                        // Answered after the runner contained the panic,
                        // so the caller sees the vcoproc's state after it.
                        i.panic_reply = Some(Box::new(move |e| {
                            let _ = tx.send(Err(e));
                        }));
                        std::panic::resume_unwind(p);
                    }
                }
            }));
            if g.running.is_some() {
                self.shared.preempt.preempt();
            }
        }
        self.shared.kick_runner();
        rx.recv().map_err(|_| {
            // The command was dropped unrun (shutdown, failure) or
            // panicked (its sender went with the unwinding).
            let g = self.shared.lock();
            if let Some(e) = self.shared.failure(&g) {
                return e;
            }
            if g.shutdown {
                return CoreError::Shutdown(self.shared.name.clone());
            }
            drop(g);
            let msg = self
                .shared
                .last_panic
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            CoreError::Panicked(msg)
        })?
    }

    /// Create a vcoproc for `domain` with scheduling `params`.
    pub fn create_vcoproc(
        self: &Arc<Self>,
        domain: DomainId,
        params: SchedParams,
    ) -> Result<VcoprocHandle, CoreError> {
        params.validate()?;
        let id = VcoprocId(self.next_id.fetch_add(1, Ordering::Relaxed));
        if id.0 == 0 || id.0 == u32::MAX {
            return Err(CoreError::Device(DeviceError::Exhausted(
                "vcoproc ids".into(),
            )));
        }
        let control = Arc::new(ControlBlock::default());
        let (base, size) = (self.caps.iova_base, self.caps.iova_size);
        let cb = control.clone();
        let views = self.shared.views.clone();
        self.command(move |dev, inner| -> Result<(), CoreError> {
            inner.policy.attach(id, &params)?;
            if let Err(e) = dev.create_context(ContextSpec {
                id,
                control: cb.clone(),
            }) {
                inner.policy.detach(id);
                return Err(e.into());
            }
            inner.vcoprocs.insert(
                id,
                Vc {
                    domain,
                    label: String::new(),
                    state: VcoprocState::Created,
                    stats: VcoprocStats::default(),
                    params,
                    control: cb,
                    iova: IovaSpace::new(base, size),
                    faults: VecDeque::new(),
                    exit_code: None,
                    woken_ns: None,
                    demand: None,
                    stall: None,
                },
            );
            lock_views(&views).maps.insert(id, BTreeMap::new());
            Ok(())
        })??;
        Ok(VcoprocHandle {
            pcoproc: self.clone(),
            id,
            domain,
            control,
        })
    }

    /// Snapshots of every vcoproc.
    pub fn vcoprocs(&self) -> Vec<VcoprocInfo> {
        let g = self.shared.lock();
        let t = lock_views(&self.shared.views);
        g.vcoprocs
            .iter()
            .map(|(&id, vc)| info(id, vc, &t))
            .collect()
    }

    /// Snapshot of one vcoproc.
    pub fn vcoproc(&self, id: VcoprocId) -> Result<VcoprocInfo, CoreError> {
        let g = self.shared.lock();
        g.vcoprocs
            .get(&id)
            .map(|vc| info(id, vc, &lock_views(&self.shared.views)))
            .ok_or(CoreError::NoVcoproc(id))
    }

    /// A handle on vcoproc `id` (for an administrator acting on any
    /// vcoproc; domains get theirs from [`Pcoproc::create_vcoproc`]).
    pub fn handle(self: &Arc<Self>, id: VcoprocId) -> Result<VcoprocHandle, CoreError> {
        let g = self.shared.lock();
        let vc = g.vcoprocs.get(&id).ok_or(CoreError::NoVcoproc(id))?;
        Ok(VcoprocHandle {
            pcoproc: self.clone(),
            id,
            domain: vc.domain,
            control: vc.control.clone(),
        })
    }

    /// The most recent faults on this pcoproc ([`DOMAIN_FAULTS_KEPT`] per
    /// domain), oldest first.
    pub fn faults(&self) -> Vec<FaultRecord> {
        let mut all: Vec<FaultRecord> = self
            .shared
            .lock()
            .faults
            .values()
            .flat_map(|log| log.iter().cloned())
            .collect();
        all.sort_by_key(|f| f.at_ns);
        all
    }

    /// Why the pcoproc failed, if it did: device or policy code panicked
    /// where no single vcoproc could be blamed. A failed pcoproc runs
    /// nothing; its vcoprocs stay listed (faulted, with the reason in
    /// their fault records) until they are destroyed or the pcoproc is
    /// shut down, and every request on it answers [`CoreError::Failed`].
    pub fn failed(&self) -> Option<String> {
        self.shared.lock().failed.clone()
    }

    /// Total device time spent running vcoprocs, and context switches made.
    pub fn busy(&self) -> (u64, u64) {
        let g = self.shared.lock();
        (g.busy_ns, g.switches)
    }

    /// The scheduler's policy, parameters and standings.
    pub fn sched_info(&self) -> SchedInfo {
        let g = self.shared.lock();
        SchedInfo {
            policy: g.policy.name().to_string(),
            params: g.policy.describe(),
            standings: g.policy.standings(),
        }
    }

    /// Replace the policy while vcoprocs run: every vcoproc is attached to
    /// the new policy with its parameters and the runnable ones are queued.
    pub fn set_policy(&self, mut policy: Box<dyn Policy>) -> Result<(), CoreError> {
        let mut g = self.shared.lock();
        let now = self.shared.now_ns();
        for (&id, vc) in &g.vcoprocs {
            policy.attach(id, &vc.params)?;
        }
        for (&id, vc) in &g.vcoprocs {
            if vc.state.is_runnable() {
                policy.wake(id, now);
            }
        }
        g.policy = policy;
        drop(g);
        self.shared.kick_runner();
        Ok(())
    }

    /// Keep the last `capacity` slices in a trace (0 turns tracing off).
    pub fn set_trace(&self, capacity: usize) {
        self.shared.lock().trace = (capacity > 0).then(|| (capacity, VecDeque::new()));
    }

    /// The slices traced so far, oldest first.
    pub fn trace(&self) -> Vec<TraceEntry> {
        self.shared
            .lock()
            .trace
            .as_ref()
            .map(|(_, t)| t.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Destroy every vcoproc of `domain` (its death or removal).
    pub fn destroy_domain(&self, domain: DomainId) -> Result<usize, CoreError> {
        let ids: Vec<VcoprocId> = {
            let g = self.shared.lock();
            g.vcoprocs
                .iter()
                .filter(|(_, vc)| vc.domain == domain)
                .map(|(&id, _)| id)
                .collect()
        };
        let n = ids.len();
        for id in ids {
            self.destroy(id)?;
        }
        Ok(n)
    }

    fn destroy(&self, id: VcoprocId) -> Result<(), CoreError> {
        let views = self.shared.views.clone();
        let r = self.command(move |dev, inner| -> Result<(), CoreError> {
            let vc = inner.vc(id)?;
            vc.transition(Event::Destroy)?;
            let control = vc.control.clone();
            inner.vcoprocs.remove(&id);
            inner.policy.detach(id);
            lock_views(&views).maps.remove(&id);
            dev.destroy_context(id);
            control.kick();
            Ok(())
        });
        // Its doorbell descriptors go whatever happened to the command.
        self.shared.wakeup.remove_vcoproc(id);
        if matches!(r, Err(CoreError::Failed(..))) {
            // A failed pcoproc: nothing runs any more; forget it here.
            let mut g = self.shared.lock();
            if let Some(vc) = g.vcoprocs.remove(&id) {
                vc.control.publish_state(VcoprocState::Destroyed);
                vc.control.kick();
            }
            lock_views(&self.shared.views).maps.remove(&id);
            drop(g);
            self.shared.state_cv.notify_all();
            return Ok(());
        }
        r??;
        self.shared.state_cv.notify_all();
        Ok(())
    }

    /// Stop the runner: every vcoproc is destroyed and the device released.
    pub fn shutdown(&self) {
        {
            let mut g = self.shared.lock();
            g.shutdown = true;
            if g.running.is_some() {
                self.shared.preempt.preempt();
            }
        }
        self.shared.kick_runner();
        let mut slot = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        // Called on the runner thread itself (the last handle dropped by a
        // device hook): it sees `shutdown` when the hook returns and ends.
        if slot
            .as_ref()
            .is_some_and(|t| t.thread().id() != std::thread::current().id())
        {
            if let Some(t) = slot.take() {
                let _ = t.join();
            }
        }
        drop(slot);
        self.shared.state_cv.notify_all();
    }

    fn wake(&self, id: VcoprocId, doorbell: bool) {
        self.shared.wake(id, u64::from(doorbell));
    }

    /// Wake vcoproc `id` if it is waiting, for an event of the device itself
    /// (a simulated job arriving, a fence signalled) rather than a doorbell
    /// of its domain. Callable from the device's own hooks on the runner
    /// thread: it takes the scheduling lock, which the runner does not hold
    /// while the device runs or idles.
    pub fn device_wake(&self, id: VcoprocId) {
        self.wake(id, false);
    }

    /// Revoke the mapping at `iova` of vcoproc `vcoproc` as an administrator:
    /// only a [`MapKind::Revocable`] mapping is removed (a pinned one ends
    /// only when its domain unmaps it or the vcoproc dies: the outcome is
    /// [`RevokeOutcome::Pinned`] and nothing changes). Never fails; see
    /// [`VcoprocHandle::revoke`] for what holds when it returns.
    pub fn revoke(&self, vcoproc: VcoprocId, iova: u64) -> RevokeOutcome {
        self.revoke_as(vcoproc, iova, false)
    }

    /// Mappings of vcoproc `vcoproc`, in iova order.
    pub fn mappings(&self, vcoproc: VcoprocId) -> Result<Vec<MappingInfo>, CoreError> {
        let mut g = self.shared.lock();
        let vc = g.vc(vcoproc)?;
        // A revoked mapping waiting for the runner's tidy-up is gone already.
        let t = lock_views(&self.shared.views);
        let live = t.maps.get(&vcoproc);
        Ok(vc
            .iova
            .iter()
            .filter(|m| live.is_some_and(|l| l.contains_key(&m.iova)))
            .map(|m| MappingInfo {
                iova: m.iova,
                len: m.len,
                perms: m.perms,
                kind: m.kind,
            })
            .collect())
    }

    /// Revoke without waiting for the runner: take the mapping's device
    /// view out of the view table and trap it (its pages are replaced in
    /// one step, see [`Region::trap`]), then leave the runner to take the
    /// mapping out of the iova space and the device on its next turn (the
    /// running slice is cut short so that happens at once).
    /// `any_kind`: also pinned mappings (their own domain asks).
    fn revoke_as(&self, id: VcoprocId, iova: u64, any_kind: bool) -> RevokeOutcome {
        let view = {
            let mut t = lock_views(&self.shared.views);
            let Some(maps) = t.maps.get_mut(&id) else {
                return RevokeOutcome::Gone;
            };
            match maps.get(&iova) {
                None => return RevokeOutcome::NotMapped,
                Some((MapKind::Pinned, r)) if !any_kind => {
                    return RevokeOutcome::Pinned { len: r.len() };
                }
                Some(_) => {}
            }
            let Some((_, view)) = maps.remove(&iova) else {
                return RevokeOutcome::NotMapped;
            };
            view
        };
        // Out of the table, so no one else will trap or tidy it; trapped
        // outside the table's lock (an `mmap` that grows with the mapping's
        // pages), which map, unmap and listings of other domains take.
        view.trap();
        let len = view.len();
        self.shared
            .tidy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, iova, view));
        self.shared.deferred.store(true, Ordering::SeqCst);
        if self.shared.slice_running.load(Ordering::SeqCst) {
            self.shared.preempt.preempt();
        }
        self.shared.kick_runner();
        RevokeOutcome::Removed { len }
    }
}

impl Drop for Pcoproc {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn info(id: VcoprocId, vc: &Vc, views: &Views) -> VcoprocInfo {
    // A revoked mapping waiting for the runner's tidy-up is gone already.
    let live = views.maps.get(&id);
    let (mappings, mapped_bytes) = vc
        .iova
        .iter()
        .filter(|m| live.is_some_and(|l| l.contains_key(&m.iova)))
        .fold((0, 0), |(n, b), m| (n + 1, b + m.len));
    VcoprocInfo {
        id,
        domain: vc.domain,
        firmware: vc.label.clone(),
        state: vc.state,
        stats: vc.stats,
        params: vc.params,
        mappings,
        mapped_bytes,
        exit_code: vc.exit_code,
        last_fault: vc.faults.back().cloned(),
        local_bytes: vc.iova.local_bytes(),
    }
}

/// A domain's handle on one of its vcoprocs.
#[derive(Clone)]
pub struct VcoprocHandle {
    pcoproc: Arc<Pcoproc>,
    id: VcoprocId,
    domain: DomainId,
    control: Arc<ControlBlock>,
}

impl std::fmt::Debug for VcoprocHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VcoprocHandle({} of {})", self.id, self.domain)
    }
}

impl VcoprocHandle {
    /// The vcoproc's id.
    pub fn id(&self) -> VcoprocId {
        self.id
    }

    /// Whether [`VcoprocHandle::map`] of `len` bytes at `iova` would be
    /// refused for the range: unaligned, outside the iova window, or over a
    /// mapping it has now. Answered without the runner, so a caller can
    /// refuse a request before it commits to anything (sealing a domain's
    /// memfd, say); `map` checks again, as the answer can change.
    pub fn check_map(&self, iova: u64, len: u64) -> Result<(), CoreError> {
        use crate::iova::IovaError;
        let (base, size) = (self.pcoproc.caps.iova_base, self.pcoproc.caps.iova_size);
        if len == 0 || !iova.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(IovaError::Unaligned { iova, len }.into());
        }
        let end = iova.checked_add(len);
        if iova < base || end.is_none_or(|e| e > base.saturating_add(size)) {
            return Err(IovaError::OutsideWindow {
                iova,
                len,
                base,
                size,
            }
            .into());
        }
        let views = lock_views(&self.pcoproc.shared.views);
        if let Some(maps) = views.maps.get(&self.id) {
            // The last mapping starting below `end` is the only one that can
            // reach into [iova, end).
            if let Some((&other, (_, view))) = maps.range(..iova + len).next_back() {
                if other + view.len() > iova {
                    return Err(IovaError::Overlap { iova, len, other }.into());
                }
            }
        }
        Ok(())
    }

    /// Its owner.
    pub fn domain(&self) -> DomainId {
        self.domain
    }

    /// The pcoproc it lives on.
    pub fn pcoproc(&self) -> &Arc<Pcoproc> {
        &self.pcoproc
    }

    /// A snapshot of it.
    pub fn info(&self) -> Result<VcoprocInfo, CoreError> {
        self.pcoproc.vcoproc(self.id)
    }

    /// Its state now, read from its control block without taking the
    /// pcoproc's scheduling lock ([`CoreError::NoVcoproc`] once destroyed).
    pub fn state(&self) -> Result<VcoprocState, CoreError> {
        match self.control.state() {
            VcoprocState::Destroyed => Err(CoreError::NoVcoproc(self.id)),
            s => Ok(s),
        }
    }

    /// Its fault records, oldest first.
    pub fn faults(&self) -> Result<Vec<FaultRecord>, CoreError> {
        let mut g = self.pcoproc.shared.lock();
        Ok(g.vc(self.id)?.faults.iter().cloned().collect())
    }

    /// Load a firmware image (state created or loaded); `label` names it in
    /// listings. The image is parsed and validated on the calling thread
    /// (the class's [`FirmwarePrep`]), before the runner is involved; the
    /// runner only installs the result between slices.
    pub fn load_firmware(&self, label: &str, image: &[u8]) -> Result<FirmwareInfo, CoreError> {
        let prepared = self.pcoproc.shared.prep.prepare(image)?;
        let (id, label) = (self.id, label.to_string());
        self.pcoproc
            .command(move |dev, inner| -> Result<FirmwareInfo, CoreError> {
                let vc = inner.vc(id)?;
                vc.state.apply(Event::Load)?;
                let fw = dev.install_firmware(id, prepared)?;
                vc.transition(Event::Load)?;
                vc.label = label;
                vc.exit_code = None;
                vc.control.reset();
                Ok(fw)
            })?
    }

    /// Map `len` bytes of `region` from `offset` at `iova`.
    pub fn map(
        &self,
        region: &Arc<Region>,
        offset: u64,
        iova: u64,
        len: u64,
        perms: Perms,
        kind: MapKind,
    ) -> Result<(), CoreError> {
        let id = self.id;
        let shared = Arc::downgrade(&self.pcoproc.shared);
        // The device gets a view of its own of the range (made here, off
        // the runner): revoke withdraws exactly that view's pages.
        let view = Arc::new(
            region
                .view(offset, len)
                .map_err(|e| CoreError::Device(DeviceError::BadMapping(e.to_string())))?,
        );
        let m = Mapping {
            iova,
            len,
            region: view.clone(),
            offset: 0,
            perms,
            kind,
        };
        let views = self.pcoproc.shared.views.clone();
        self.pcoproc
            .command(move |dev, inner| -> Result<(), CoreError> {
                let vc = inner.vc(id)?;
                if vc.state == VcoprocState::Destroyed {
                    return Err(CoreError::NoVcoproc(id));
                }
                vc.iova.check(&m)?;
                dev.map(id, &m)?;
                vc.iova.insert(m)?;
                if let Some(t) = lock_views(&views).maps.get_mut(&id) {
                    t.insert(iova, (kind, view));
                }
                resolve_stall(inner, id, now_ns(&shared));
                Ok(())
            })?
    }

    /// Remove the mapping at `iova`. When this returns the device can no
    /// longer touch its pages.
    pub fn unmap(&self, iova: u64) -> Result<(), CoreError> {
        let id = self.id;
        let views = self.pcoproc.shared.views.clone();
        self.pcoproc
            .command(move |dev, inner| -> Result<(), CoreError> {
                let vc = inner.vc(id)?;
                // Revoked and not yet tidied: already gone.
                let mut t = lock_views(&views);
                let live = t.maps.get_mut(&id).and_then(|m| m.remove(&iova));
                drop(t);
                if live.is_none() {
                    return Err(IovaError::NotMapped(iova).into());
                }
                let m = vc.iova.remove(iova)?;
                dev.unmap(id, m.iova);
                Ok(())
            })?
    }

    /// Add `fd`, an eventfd, as a doorbell of this vcoproc: every write to
    /// it rings the doorbell, reaching the runner directly (it waits on the
    /// descriptor itself; see the `wakeup` module). The descriptor is never
    /// read. It is closed when the vcoproc is destroyed; at most
    /// [`crate::wakeup::MAX_DOORBELLS_PER_VCOPROC`] per vcoproc.
    pub fn add_doorbell_fd(&self, fd: OwnedFd) -> Result<(), CoreError> {
        if self.control.state() == VcoprocState::Destroyed {
            return Err(CoreError::NoVcoproc(self.id));
        }
        self.pcoproc
            .shared
            .wakeup
            .add_doorbell(self.id, fd, self.control.clone())?;
        // Destroyed meanwhile: do not keep the descriptor.
        if self.control.state() == VcoprocState::Destroyed {
            self.pcoproc.shared.wakeup.remove_vcoproc(self.id);
            return Err(CoreError::NoVcoproc(self.id));
        }
        self.pcoproc.shared.kick_runner();
        Ok(())
    }

    /// Start it (state loaded → runnable).
    pub fn start(&self) -> Result<(), CoreError> {
        let shared = &self.pcoproc.shared;
        let mut g = shared.lock();
        let now = shared.now_ns();
        let vc = g.vc(self.id)?;
        vc.transition(Event::Start)?;
        vc.woken_ns = Some(now);
        if g.policy.wake(self.id, now) == WakeAction::Preempt && g.running.is_some() {
            shared.preempt.preempt();
        }
        drop(g);
        shared.kick_runner();
        shared.state_cv.notify_all();
        Ok(())
    }

    /// Stop it (runnable or waiting → loaded): it leaves the device at the
    /// next slice boundary and keeps its registers, memory and mappings;
    /// [`VcoprocHandle::start`] resumes it where it was.
    pub fn stop(&self) -> Result<(), CoreError> {
        let id = self.id;
        self.pcoproc
            .command(move |_dev, inner| -> Result<(), CoreError> {
                inner.vc(id)?.transition(Event::Halt)?;
                inner.policy.block(id);
                Ok(())
            })??;
        self.pcoproc.shared.state_cv.notify_all();
        Ok(())
    }

    /// Reset it to its freshly loaded firmware (mappings stay); start it again
    /// with [`VcoprocHandle::start`].
    pub fn reset(&self) -> Result<(), CoreError> {
        let id = self.id;
        self.pcoproc
            .command(move |dev, inner| -> Result<(), CoreError> {
                let vc = inner.vc(id)?;
                vc.state.apply(Event::Reset)?;
                dev.reset_context(id)?;
                vc.transition(Event::Reset)?;
                vc.exit_code = None;
                vc.control.reset();
                inner.policy.block(id);
                Ok(())
            })??;
        self.pcoproc.shared.state_cv.notify_all();
        Ok(())
    }

    /// Destroy it: its context, mappings and queue entries are released.
    pub fn destroy(&self) -> Result<(), CoreError> {
        self.pcoproc.destroy(self.id)
    }

    /// Change its scheduling parameters; effective at the next decision.
    pub fn set_params(&self, params: SchedParams) -> Result<(), CoreError> {
        params.validate()?;
        let mut g = self.pcoproc.shared.lock();
        g.vc(self.id)?;
        g.policy.set_params(self.id, &params)?;
        g.vc(self.id)?.params = params;
        drop(g);
        // An idle runner decides again (a cap raised, a window given).
        self.pcoproc.shared.kick_runner();
        Ok(())
    }

    /// Write mailbox-in word `i`.
    pub fn mbox_write(&self, i: usize, v: u32) {
        self.control.write_in(i, v);
    }

    /// Read mailbox-out word `i`.
    pub fn mbox_read(&self, i: usize) -> u32 {
        self.control.read_out(i)
    }

    /// Ring the doorbell: wakes the vcoproc if it is waiting.
    pub fn doorbell(&self) {
        self.control.ring();
        self.pcoproc.wake(self.id, true);
    }

    /// The latest notification from the firmware.
    pub fn last_notify(&self) -> Notify {
        self.control.last_notify()
    }

    /// Wait for a notification newer than `after`. Fails early if the
    /// vcoproc faults, stops or is destroyed meanwhile.
    pub fn wait_notify(&self, after: u64, timeout: Duration) -> Result<Notify, CoreError> {
        let deadline = Instant::now() + timeout;
        loop {
            // Kicks taken before the state check: a state change after the
            // check ends the wait below.
            let kicks = self.control.kicks();
            let st = self.state()?;
            if matches!(st, VcoprocState::Faulted | VcoprocState::Stopped) {
                if let Some(n) = self
                    .control
                    .wait_notify_or_kick(after, kicks, Duration::ZERO)
                {
                    return Ok(n);
                }
                return Err(CoreError::State(TransitionError {
                    from: st,
                    event: Event::Wake,
                }));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(n) = self.control.wait_notify_or_kick(after, kicks, left) {
                return Ok(n);
            }
            if Instant::now() >= deadline {
                return Err(CoreError::Timeout(timeout));
            }
        }
    }

    /// Wait until `pred` holds for its state.
    pub fn wait_state(
        &self,
        pred: impl Fn(VcoprocState) -> bool,
        timeout: Duration,
    ) -> Result<VcoprocState, CoreError> {
        let shared = &self.pcoproc.shared;
        let deadline = Instant::now() + timeout;
        let mut g = shared.lock();
        loop {
            let st = g
                .vcoprocs
                .get(&self.id)
                .map(|v| v.state)
                .unwrap_or(VcoprocState::Destroyed);
            if pred(st) {
                return Ok(st);
            }
            let now = Instant::now();
            if now >= deadline || shared.inner.is_poisoned() {
                return Err(CoreError::Timeout(timeout));
            }
            g = shared
                .state_cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Its control block (mailboxes, doorbell, notifications).
    pub fn control(&self) -> &Arc<ControlBlock> {
        &self.control
    }

    /// Console lines of the firmware, and how many older ones were dropped.
    pub fn console(&self) -> (Vec<String>, u64) {
        self.control.console()
    }

    /// Allocate `len` bytes of zeroed device-local memory at `iova` in its
    /// iova space: private to this vcoproc (its domain cannot see it, nor
    /// can any other vcoproc), never overlapping a mapping, freed by
    /// [`VcoprocHandle::free_local`] or with the vcoproc. Kept across
    /// `reset`, like mappings.
    pub fn alloc_local(&self, iova: u64, len: u64) -> Result<(), CoreError> {
        let id = self.id;
        self.pcoproc
            .command(move |dev, inner| -> Result<(), CoreError> {
                let vc = inner.vc(id)?;
                vc.iova.check_local(iova, len)?;
                dev.alloc_local(id, iova, len)?;
                vc.iova.insert_local(iova, len)?;
                Ok(())
            })?
    }

    /// Free the device-local memory at `iova`; returns its length. When
    /// this returns the memory is gone from the device.
    pub fn free_local(&self, iova: u64) -> Result<u64, CoreError> {
        let id = self.id;
        self.pcoproc
            .command(move |dev, inner| -> Result<u64, CoreError> {
                let len = inner.vc(id)?.iova.remove_local(iova)?;
                dev.free_local(id, iova);
                Ok(len)
            })?
    }

    /// Turn demand faults on (`Some(timeout)`) or off (`None`, the
    /// default). With them on, an access inside the iova window that no
    /// mapping covers stalls the vcoproc (state `Stalled`, out of the run
    /// queue) and tells the control block listener
    /// ([`crate::control::ControlEvent::PageFault`]); a map covering the
    /// address makes it runnable again and it retries the access; after
    /// `timeout` without one it faults with
    /// [`crate::fault::FaultReason::PageFaultTimeout`]. The timeout must lie
    /// in [`MIN_STALL_TIMEOUT`]`..=`[`MAX_STALL_TIMEOUT`]; the device must
    /// advertise [`Capabilities::demand_faults`]. Turning them off while
    /// stalled faults the vcoproc at once (an access violation).
    pub fn set_demand_faults(&self, timeout: Option<Duration>) -> Result<(), CoreError> {
        if let Some(t) = timeout {
            if !(MIN_STALL_TIMEOUT..=MAX_STALL_TIMEOUT).contains(&t) {
                return Err(CoreError::BadStallTimeout(t));
            }
        }
        if !self.pcoproc.caps.demand_faults {
            return Err(CoreError::Device(DeviceError::Unsupported("demand faults")));
        }
        let id = self.id;
        let shared = Arc::downgrade(&self.pcoproc.shared);
        self.pcoproc
            .command(move |dev, inner| -> Result<(), CoreError> {
                let vc = inner.vc(id)?;
                if vc.state == VcoprocState::Destroyed {
                    return Err(CoreError::NoVcoproc(id));
                }
                dev.set_demand_faults(id, timeout.is_some())?;
                let vc = inner.vc(id)?;
                vc.demand = timeout;
                let now = now_ns(&shared);
                match (timeout, vc.stall.as_mut()) {
                    // A new timeout counts from the stall's start.
                    (Some(t), Some(p)) => {
                        p.deadline_ns = p.since_ns.saturating_add(runner::ns(t));
                        let deadline = p.deadline_ns;
                        inner.stall_deadlines.insert((deadline, id));
                    }
                    (None, Some(_)) => {
                        runner::fail_stall(
                            inner,
                            id,
                            now,
                            crate::fault::FaultReason::AccessViolation,
                        );
                    }
                    _ => {}
                }
                Ok(())
            })??;
        self.pcoproc.shared.state_cv.notify_all();
        Ok(())
    }

    /// The page fault it is stalled on, if it is `Stalled`.
    pub fn page_fault(&self) -> Result<Option<PageFault>, CoreError> {
        let mut g = self.pcoproc.shared.lock();
        Ok(g.vc(self.id)?.stall)
    }

    /// Revoke the mapping at `iova`, pinned or revocable (its domain may end
    /// any of its mappings). Never fails and takes a bounded time: a running
    /// vcoproc is stopped at its next preemption point, the mapping leaves
    /// the iova space and the device, then the vcoproc continues (its next
    /// access to the range faults). When this returns the device cannot
    /// touch the pages. A missing mapping is [`RevokeOutcome::NotMapped`];
    /// a vcoproc already destroyed, or a pcoproc shut down (the device and
    /// its mappings are released before this returns), is
    /// [`RevokeOutcome::Gone`].
    pub fn revoke(&self, iova: u64) -> RevokeOutcome {
        self.pcoproc.revoke_as(self.id, iova, true)
    }

    /// Its mappings, in iova order.
    pub fn mappings(&self) -> Result<Vec<MappingInfo>, CoreError> {
        self.pcoproc.mappings(self.id)
    }
}

/// What a revoke did. Revoke never fails: each case is an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RevokeOutcome {
    /// The mapping (`len` bytes) was removed; the device cannot touch it.
    Removed {
        /// Its length.
        len: u64,
    },
    /// No mapping starts at that iova; nothing changed.
    NotMapped,
    /// Refused for an administrator: the mapping is pinned (only its
    /// domain, or the vcoproc's death, ends it); nothing changed.
    Pinned {
        /// Its length.
        len: u64,
    },
    /// The vcoproc no longer exists (destroyed, or its pcoproc shut down):
    /// its mappings went with it.
    Gone,
}

/// One mapping as listed (the memory behind it left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MappingInfo {
    /// Device address of the first byte.
    pub iova: u64,
    /// Length in bytes.
    pub len: u64,
    /// Permissions.
    pub perms: Perms,
    /// Pinned or revocable.
    pub kind: MapKind,
}

/// The pcoproc's clock seen from a command (which holds a weak reference
/// so the command queue never keeps the runner's state alive).
fn now_ns(shared: &std::sync::Weak<Shared>) -> u64 {
    shared.upgrade().map_or(0, |s| s.now_ns())
}

/// A mapping was added to `id`: if it covers the address the vcoproc is
/// stalled on, make it runnable so it retries the access.
fn resolve_stall(inner: &mut Inner, id: VcoprocId, now: u64) {
    let Some(vc) = inner.vcoprocs.get_mut(&id) else {
        return;
    };
    let Some(p) = vc.stall else { return };
    if vc.iova.lookup(p.addr).is_none() || vc.transition(Event::Resolve).is_err() {
        return;
    }
    vc.woken_ns = Some(now);
    // The runner executes this command between slices and picks again next.
    let _ = inner.policy.wake(id, now);
}
