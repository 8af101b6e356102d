//! [`VcoprocHandle`]: what a domain holds to drive one of its vcoprocs.

use super::{MappingInfo, Pcoproc, RevokeOutcome, VcoprocInfo};
use crate::control::{ControlBlock, Notify};
use crate::device::{DeviceError, FirmwareInfo};
use crate::error::CoreError;
use crate::fault::{FaultRecord, PageFault, MAX_STALL_TIMEOUT, MIN_STALL_TIMEOUT};
use crate::ids::{DomainId, VcoprocId};
use crate::iova::{IovaError, MapKind, Mapping, Perms};
use crate::memory::{Region, PAGE_SIZE};
use crate::policy::{SchedParams, WakeAction};
use crate::runner;
use crate::sched::{lock_views, ns, Inner, Shared};
use crate::state::{Event, TransitionError, VcoprocState};
use rustix::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A domain's handle on one of its vcoprocs.
#[derive(Clone)]
pub struct VcoprocHandle {
    pub(super) pcoproc: Arc<Pcoproc>,
    pub(super) id: VcoprocId,
    pub(super) domain: DomainId,
    pub(super) control: Arc<ControlBlock>,
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
    /// (the class's [`FirmwarePrep`](crate::device::FirmwarePrep)), before the runner is involved; the
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
            })??;
        self.pcoproc.shared.reclaimed();
        Ok(())
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
                .map_or(VcoprocState::Destroyed, |v| v.state);
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
                .unwrap_or_else(std::sync::PoisonError::into_inner)
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
    /// advertise [`Capabilities::demand_faults`](crate::device::Capabilities::demand_faults). Turning them off while
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
                        p.deadline_ns = p.since_ns.saturating_add(ns(t));
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
