//! A pcoproc: one physical coprocessor, its runner thread, and the handles
//! domains use to drive their vcoprocs on it.
//!
//! All scheduling state lives in one mutex-protected `Inner`; the device
//! itself lives on the runner thread only. Control operations that need the
//! device (load, map, reset, destroy) are queued as commands that the runner
//! executes between slices; the running slice is preempted so they are served
//! within one preemption point. Mailbox access is lock-free; a doorbell never
//! waits for a slice to end, but takes the scheduling lock briefly, which the
//! runner also holds while it executes a control command between slices.

use crate::control::{ControlBlock, Notify};
use crate::device::{
    Capabilities, ContextSpec, Device, DeviceError, FirmwareInfo, FirmwarePrep, PreemptHandle,
    VirtualClock,
};
use crate::fault::FaultRecord;
use crate::ids::{DomainId, VcoprocId};
use crate::iova::{IovaError, IovaSpace, MapKind, Mapping, Perms};
use crate::memory::Region;
use crate::policy::{Policy, PolicyError, SchedParams, Standing, WakeAction};
use crate::runner;
use crate::state::{Event, TransitionError, VcoprocState};
use crate::stats::VcoprocStats;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Fault records kept per vcoproc (newest win).
pub const VCOPROC_FAULTS_KEPT: usize = 16;
/// Fault records kept per pcoproc (newest win).
pub const PCOPROC_FAULTS_KEPT: usize = 256;

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
        Ok(())
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
    pub faults: VecDeque<FaultRecord>,
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
}

impl Inner {
    pub(crate) fn vc(&mut self, v: VcoprocId) -> Result<&mut Vc, CoreError> {
        self.vcoprocs.get_mut(&v).ok_or(CoreError::NoVcoproc(v))
    }

    pub(crate) fn record_fault(&mut self, rec: FaultRecord) {
        if let Some(suppressed) = self.fault_log.check() {
            tracing::warn!(fault = %rec, suppressed, "vcoproc faulted");
        }
        if let Some(vc) = self.vcoprocs.get_mut(&rec.vcoproc) {
            vc.stats.faults += 1;
            if vc.faults.len() == VCOPROC_FAULTS_KEPT {
                vc.faults.pop_front();
            }
            vc.faults.push_back(rec.clone());
        }
        if self.faults.len() == PCOPROC_FAULTS_KEPT {
            self.faults.pop_front();
        }
        self.faults.push_back(rec);
    }
}

pub(crate) struct Shared {
    pub name: String,
    pub inner: Mutex<Inner>,
    /// Wakes an idle runner (new command, wake-up, shutdown).
    pub runner_cv: Condvar,
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
        self.runner_cv.notify_all();
        if let Some(c) = &self.clock {
            c.interrupt();
        }
    }

    /// Idle the runner until `until_ns` (None: until kicked), bounded by
    /// `max` on the host clock. Releases the lock meanwhile.
    pub(crate) fn idle(&self, g: MutexGuard<'_, Inner>, until_ns: Option<u64>, max: Duration) {
        match &self.clock {
            Some(c) => {
                drop(g);
                c.idle(until_ns);
            }
            None => {
                let now = self.now_ns();
                let t = until_ns.map_or(max, |u| Duration::from_nanos(u.saturating_sub(now)));
                let _ = self.runner_cv.wait_timeout(g, t.min(max));
            }
        }
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
                        faults: VecDeque::new(),
                        busy_ns: 0,
                        switches: 0,
                        trace: None,
                        fault_log: crate::ratelimit::RateLimit::default(),
                        stall_deadlines: std::collections::BTreeSet::new(),
                    }),
                    runner_cv: Condvar::new(),
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
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut g = self.shared.lock();
            if g.shutdown {
                return Err(CoreError::Shutdown(self.shared.name.clone()));
            }
            g.commands.push_back(Box::new(move |d, i| {
                let _ = tx.send(f(d, i));
            }));
            if g.running.is_some() {
                self.shared.preempt.preempt();
            }
        }
        self.shared.kick_runner();
        rx.recv()
            .map_err(|_| CoreError::Shutdown(self.shared.name.clone()))
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
        g.vcoprocs.iter().map(|(&id, vc)| info(id, vc)).collect()
    }

    /// Snapshot of one vcoproc.
    pub fn vcoproc(&self, id: VcoprocId) -> Result<VcoprocInfo, CoreError> {
        let g = self.shared.lock();
        g.vcoprocs
            .get(&id)
            .map(|vc| info(id, vc))
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

    /// The most recent faults on this pcoproc, oldest first.
    pub fn faults(&self) -> Vec<FaultRecord> {
        self.shared.lock().faults.iter().cloned().collect()
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
        self.command(move |dev, inner| -> Result<(), CoreError> {
            let vc = inner.vc(id)?;
            vc.transition(Event::Destroy)?;
            let control = vc.control.clone();
            inner.vcoprocs.remove(&id);
            inner.policy.detach(id);
            dev.destroy_context(id);
            control.kick();
            Ok(())
        })??;
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
        let mut g = self.shared.lock();
        let now = self.shared.now_ns();
        let Some(vc) = g.vcoprocs.get_mut(&id) else {
            return;
        };
        if doorbell {
            vc.stats.doorbells += 1;
        }
        if vc.state != VcoprocState::Waiting || vc.transition(Event::Wake).is_err() {
            return;
        }
        vc.woken_ns = Some(now);
        let action = g.policy.wake(id, now);
        if action == WakeAction::Preempt && g.running.is_some() {
            self.shared.preempt.preempt();
        }
        drop(g);
        self.shared.kick_runner();
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
        Ok(g.vc(vcoproc)?
            .iova
            .iter()
            .map(|m| MappingInfo {
                iova: m.iova,
                len: m.len,
                perms: m.perms,
                kind: m.kind,
            })
            .collect())
    }

    /// Revoke on the runner (between slices, the running slice preempted);
    /// `any_kind`: also pinned mappings (their own domain asks).
    fn revoke_as(&self, id: VcoprocId, iova: u64, any_kind: bool) -> RevokeOutcome {
        let r = self.command(move |dev, inner| {
            let Some(vc) = inner.vcoprocs.get_mut(&id) else {
                return RevokeOutcome::Gone;
            };
            match vc.iova.lookup(iova) {
                Some(m) if m.iova == iova => {
                    if !any_kind && m.kind == MapKind::Pinned {
                        return RevokeOutcome::Pinned { len: m.len };
                    }
                }
                _ => return RevokeOutcome::NotMapped,
            }
            match vc.iova.remove(iova) {
                Ok(m) => {
                    // Removes the translation and the engine mapping: when
                    // this returns the device cannot reach the pages.
                    dev.unmap(id, m.iova);
                    RevokeOutcome::Removed { len: m.len }
                }
                Err(_) => RevokeOutcome::NotMapped,
            }
        });
        match r {
            Ok(o) => o,
            Err(_) => {
                // The runner is gone or going: wait until it has released
                // the device (and every mapping with it), so the promise
                // holds when this returns.
                self.shutdown();
                RevokeOutcome::Gone
            }
        }
    }
}

impl Drop for Pcoproc {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn info(id: VcoprocId, vc: &Vc) -> VcoprocInfo {
    VcoprocInfo {
        id,
        domain: vc.domain,
        firmware: vc.label.clone(),
        state: vc.state,
        stats: vc.stats,
        params: vc.params,
        mappings: vc.iova.count(),
        mapped_bytes: vc.iova.bytes(),
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

    /// Its state now.
    pub fn state(&self) -> Result<VcoprocState, CoreError> {
        Ok(self.info()?.state)
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
        let m = Mapping {
            iova,
            len,
            region: region.clone(),
            offset,
            perms,
            kind,
        };
        self.pcoproc
            .command(move |dev, inner| -> Result<(), CoreError> {
                let vc = inner.vc(id)?;
                if vc.state == VcoprocState::Destroyed {
                    return Err(CoreError::NoVcoproc(id));
                }
                vc.iova.check(&m)?;
                dev.map(id, &m)?;
                vc.iova.insert(m)?;
                resolve_stall(inner, id, now_ns(&shared));
                Ok(())
            })?
    }

    /// Remove the mapping at `iova`. When this returns the device can no
    /// longer touch its pages.
    pub fn unmap(&self, iova: u64) -> Result<(), CoreError> {
        let id = self.id;
        self.pcoproc
            .command(move |dev, inner| -> Result<(), CoreError> {
                let vc = inner.vc(id)?;
                let m = vc.iova.remove(iova)?;
                dev.unmap(id, m.iova);
                Ok(())
            })?
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
