//! The scheduling state of a pcoproc, shared by its runner thread and the
//! API (`Pcoproc`, `VcoprocHandle`): the vcoprocs as the
//! framework tracks them, the policy, the command queue, the table of device
//! views that revoke works on, and how the pcoproc fails.

use crate::control::ControlBlock;
use crate::device::{Device, FirmwarePrep, PreemptHandle, VirtualClock};
use crate::error::CoreError;
use crate::fault::{Access, DeviceFault, FaultReason, FaultRecord, PageFault};
use crate::ids::{DomainId, VcoprocId};
use crate::iova::{IovaSpace, MapKind};
use crate::memory::Region;
use crate::policy::{Policy, SchedParams, WakeAction};
use crate::state::{Event, TransitionError, VcoprocState};
use crate::stats::VcoprocStats;
use crate::wakeup::Wakeup;
use serde::Serialize;
use std::any::Any;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

/// Fault records kept per vcoproc (newest win).
pub const VCOPROC_FAULTS_KEPT: usize = 16;
/// Fault records kept per domain on each pcoproc (newest win; one
/// domain's faults never push out another's).
pub const DOMAIN_FAULTS_KEPT: usize = 256;

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
    /// When the slice of `running` began on the device (after the switch);
    /// `None` while it is being switched in. Lets a snapshot count the run
    /// time of the slice in progress.
    pub slice_started_ns: Option<u64>,
    pub shutdown: bool,
    /// Fault logs by domain.
    pub faults: BTreeMap<DomainId, VecDeque<FaultRecord>>,
    pub busy_ns: u64,
    pub switches: u64,
    /// Switch and wake→run latency histograms.
    pub latency: crate::stats::LatencyStats,
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
            at_unix_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            fault,
        };
        if let Some(suppressed) = self.fault_log.check() {
            tracing::warn!(fault = %rec, suppressed, "vcoproc faulted");
        }
        vc.stats.faults += 1;
        vc.stats.faults_by_reason[rec.fault.reason.kind_index()] += 1;
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
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
    /// Where the device releases memory off the runner, if it does.
    pub reclaim: Option<Arc<dyn crate::device::Reclaim>>,
}

/// The longest a caller waits for the device to release memory.
const RECLAIM_WAIT: Duration = Duration::from_secs(10);

impl Shared {
    /// Wait until the device has released the memory handed over to its
    /// reclaimer so far (see [`crate::device::Reclaim`]); on the caller's
    /// thread, never the runner's. Bounded: a reclaimer that does not
    /// answer is logged, not waited for forever.
    pub(crate) fn reclaimed(&self) {
        if let Some(r) = &self.reclaim {
            if !r.wait(r.mark(), RECLAIM_WAIT) {
                tracing::error!(pcoproc = %self.name, "the device did not release memory in {RECLAIM_WAIT:?}");
            }
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn now_ns(&self) -> u64 {
        match &self.clock {
            Some(c) => c.now_ns(),
            None => u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX),
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
        if let Some(c) = &self.clock {
            drop(g);
            c.idle(until_ns);
        } else {
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
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
                let msg = panic_message(p.as_ref());
                fail(self, &mut g, &format!("policy panicked: {msg}"));
                drop(g);
                self.inner.clear_poison();
                self.kick_runner();
                self.state_cv.notify_all();
            }
        }
    }

    /// Whether the pcoproc failed, and why.
    pub(crate) fn failure(&self, g: &Inner) -> Option<CoreError> {
        g.failed
            .as_ref()
            .map(|m| CoreError::Failed(self.name.clone(), m.clone()))
    }
}

/// The pcoproc fails: record why, fault every vcoproc (with the reason in
/// its fault record), drop every queued command (their callers get
/// [`crate::CoreError::Failed`] at once) and stop the runner.
pub(crate) fn fail(shared: &Shared, g: &mut Inner, msg: &str) {
    if g.failed.is_some() {
        return;
    }
    if let Some(suppressed) = g.fault_log.check() {
        tracing::error!(pcoproc = %shared.name, reason = %msg, suppressed, "pcoproc failed");
    }
    g.failed = Some(msg.to_string());
    g.shutdown = true;
    g.running = None;
    g.commands.clear();
    let now = shared.now_ns();
    let ids: Vec<VcoprocId> = g.vcoprocs.keys().copied().collect();
    for id in ids {
        let Some(vc) = g.vcoprocs.get_mut(&id) else {
            continue;
        };
        vc.force(VcoprocState::Faulted);
        let control = vc.control.clone();
        g.record_fault(
            id,
            now,
            DeviceFault {
                addr: None,
                access: Access::None,
                pc: None,
                reason: FaultReason::Device(format!("pcoproc failed: {msg}")),
            },
        );
        control.kick();
    }
    lock_views(&shared.views).maps.clear();
}

/// The text of a panic's payload.
pub(crate) fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// A duration in ns, saturating.
pub(crate) fn ns(t: Duration) -> u64 {
    u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)
}
