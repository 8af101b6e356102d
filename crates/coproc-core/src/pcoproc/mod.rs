//! A pcoproc: one physical coprocessor, its runner thread, and the handles
//! domains use to drive their vcoprocs on it.
//!
//! All scheduling state lives in one mutex-protected `Inner` (module
//! `sched`, shared with the runner); the device
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

use crate::control::ControlBlock;
use crate::device::{Capabilities, ContextSpec, Device, DeviceError};
use crate::fault::FaultRecord;
use crate::ids::{DomainId, VcoprocId};
use crate::iova::{IovaSpace, MapKind, Perms};
use crate::policy::{Policy, SchedParams, Standing};
use crate::runner;
use crate::sched::{lock_views, Inner, Shared, Vc, ViewTable, Views};
use crate::state::{Event, VcoprocState};
use crate::stats::VcoprocStats;
use crate::wakeup::Wakeup;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

mod handle;

pub use crate::error::CoreError;
pub use crate::fault::{PageFault, MAX_STALL_TIMEOUT, MIN_STALL_TIMEOUT};
pub use crate::sched::{TraceEntry, DOMAIN_FAULTS_KEPT, VCOPROC_FAULTS_KEPT};
pub use handle::VcoprocHandle;

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
                        slice_started_ns: None,
                        shutdown: false,
                        faults: BTreeMap::new(),
                        busy_ns: 0,
                        switches: 0,
                        latency: crate::stats::LatencyStats::default(),
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
                    reclaim: device.reclaim(),
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
                .unwrap_or_else(std::sync::PoisonError::into_inner)
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
                domain,
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
        let now = self.shared.now_ns();
        g.vcoprocs
            .iter()
            .map(|(&id, vc)| info(id, vc, &t, in_flight(&g, id, now)))
            .collect()
    }

    /// Snapshot of one vcoproc.
    pub fn vcoproc(&self, id: VcoprocId) -> Result<VcoprocInfo, CoreError> {
        let g = self.shared.lock();
        let now = self.shared.now_ns();
        g.vcoprocs
            .get(&id)
            .map(|vc| {
                info(
                    id,
                    vc,
                    &lock_views(&self.shared.views),
                    in_flight(&g, id, now),
                )
            })
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

    /// The pcoproc's latency histograms (context switches, wake→run).
    pub fn latency(&self) -> crate::stats::LatencyStats {
        self.shared.lock().latency
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
        self.shared.reclaimed();
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
        let mut slot = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

/// How long `id`'s slice in progress has run by `now` (0 when it is not
/// on the device). A notification it sent during the slice is answered
/// before the slice ends; a snapshot taken then still counts the run time
/// that led to it.
fn in_flight(g: &Inner, id: VcoprocId, now: u64) -> u64 {
    match (g.running, g.slice_started_ns) {
        (Some(r), Some(start)) if r == id => now.saturating_sub(start),
        _ => 0,
    }
}

/// A snapshot of `vc`: its statistics as charged, plus `in_flight`, the
/// part of a slice in progress (charged with the device's own measure
/// when the slice ends).
fn info(id: VcoprocId, vc: &Vc, views: &Views, in_flight: u64) -> VcoprocInfo {
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
        stats: VcoprocStats {
            run_ns: vc.stats.run_ns + in_flight,
            ..vc.stats
        },
        params: vc.params,
        mappings,
        mapped_bytes,
        exit_code: vc.exit_code,
        last_fault: vc.faults.back().cloned(),
        local_bytes: vc.iova.local_bytes(),
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
