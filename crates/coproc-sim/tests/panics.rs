//! Panics of device and policy code are contained at the runner's
//! boundary: pinned on one vcoproc, that vcoproc faults with the panic
//! message in its fault record and the others go on; otherwise the pcoproc
//! fails visibly, every waiter gets an error at once and shutdown completes.
//! The simulated device panics on command (`Sim::panic_next`).

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use coproc_core::fault::FaultReason;
use coproc_core::iova::{MapKind, Perms};
use coproc_core::memory::Region;
use coproc_core::policy::{
    Decision, Policy, PolicyError, RoundRobin, SchedParams, SliceEnd, Standing, WakeAction,
};
use coproc_core::state::VcoprocState;
use coproc_core::{CoreError, DomainId, Pcoproc, VcoprocHandle, VcoprocId};
use coproc_sim::{PanicIn, Sim, SimConfig, SimError, Workload};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MS: u64 = 1_000_000;

#[allow(clippy::unnecessary_box_returns)] // what Pcoproc::spawn takes
fn rr() -> Box<RoundRobin> {
    Box::new(RoundRobin::new(Duration::from_millis(1)).unwrap())
}

fn hog(p: &Arc<Pcoproc>) -> VcoprocHandle {
    let v = p
        .create_vcoproc(DomainId(1), SchedParams::default())
        .unwrap();
    v.load_firmware("hog", &Workload::hog().to_image()).unwrap();
    v
}

/// Device time `v` got, the run in progress included.
fn ran(sim: &Sim, v: &VcoprocHandle) -> u64 {
    let r = sim.context(v.id()).unwrap();
    r.ran_ns + r.in_run_ns
}

/// The reason of `v`'s newest fault.
fn last_fault(v: &VcoprocHandle) -> String {
    match v.faults().unwrap().pop().map(|f| f.fault.reason) {
        Some(FaultReason::Device(m)) => m,
        other => panic!("expected a device fault, got {other:?}"),
    }
}

#[test]
fn a_panic_in_a_run_faults_only_that_vcoproc() {
    let sim = Sim::new(SimConfig::default());
    let p = sim.spawn("sim0", rr()).unwrap();
    let (a, b) = (hog(&p), hog(&p));
    sim.panic_next(PanicIn::Run, a.id());
    a.start().unwrap();
    b.start().unwrap();
    sim.run_until(10 * MS).unwrap();
    assert_eq!(a.state().unwrap(), VcoprocState::Faulted);
    let why = last_fault(&a);
    assert!(
        why.contains("device code panicked") && why.contains("injected panic in Run"),
        "{why}"
    );
    assert!(p.failed().is_none());
    // b had the device to itself after the panic, and keeps it.
    let b0 = ran(&sim, &b);
    assert!(b0 >= 9 * MS, "b ran {b0} ns of 10 ms");
    sim.run_until(20 * MS).unwrap();
    assert_eq!(ran(&sim, &b), b0 + 10 * MS);
    assert!(b.faults().unwrap().is_empty());
    // The faulted one is reset like after any fault and runs again.
    a.reset().unwrap();
    a.start().unwrap();
    sim.run_until(30 * MS).unwrap();
    assert!(ran(&sim, &a) > 0);
    assert!(matches!(
        a.state().unwrap(),
        VcoprocState::Runnable | VcoprocState::Running
    ));
    p.shutdown();
}

#[test]
fn a_panic_in_a_switch_faults_the_context_switched_to() {
    let sim = Sim::new(SimConfig::default());
    let p = sim.spawn("sim0", rr()).unwrap();
    let (a, b) = (hog(&p), hog(&p));
    sim.panic_next(PanicIn::Switch, b.id());
    a.start().unwrap();
    b.start().unwrap();
    sim.run_until(10 * MS).unwrap();
    assert_eq!(b.state().unwrap(), VcoprocState::Faulted);
    assert!(last_fault(&b).contains("injected panic in Switch"));
    assert!(a.faults().unwrap().is_empty());
    let a0 = ran(&sim, &a);
    sim.run_until(20 * MS).unwrap();
    assert_eq!(ran(&sim, &a), a0 + 10 * MS, "a alone on the device");
    p.shutdown();
}

#[test]
fn panics_in_commands_answer_their_caller_and_fault_only_that_vcoproc() {
    let sim = Sim::new(SimConfig::default());
    let p = sim.spawn("sim0", rr()).unwrap();
    let other = hog(&p);
    other.start().unwrap();
    sim.run_until(MS).unwrap();

    // Load.
    let v = p
        .create_vcoproc(DomainId(2), SchedParams::default())
        .unwrap();
    sim.panic_next(PanicIn::Load, v.id());
    let e = v.load_firmware("hog", &Workload::hog().to_image());
    assert!(
        matches!(&e, Err(CoreError::Panicked(m)) if m.contains("injected panic in Load")),
        "{e:?}"
    );
    assert_eq!(v.state().unwrap(), VcoprocState::Faulted);
    // A reset brings it back; the next load works.
    v.reset().unwrap();
    v.load_firmware("hog", &Workload::hog().to_image()).unwrap();

    // Map: refused with the panic, nothing left mapped.
    let mem = Arc::new(Region::new(4096).unwrap());
    sim.panic_next(PanicIn::Map, v.id());
    let e = v.map(&mem, 0, 0x1000_0000, 4096, Perms::RW, MapKind::Pinned);
    assert!(matches!(e, Err(CoreError::Panicked(_))), "{e:?}");
    assert_eq!(v.state().unwrap(), VcoprocState::Faulted);
    assert!(v.mappings().unwrap().is_empty());

    // Create: the caller gets the error, the pcoproc goes on.
    let next = VcoprocId(v.id().0 + 1);
    sim.panic_next(PanicIn::Create, next);
    let e = p.create_vcoproc(DomainId(3), SchedParams::default());
    assert!(matches!(e, Err(CoreError::Panicked(_))), "{e:?}");
    let w = hog(&p);
    w.start().unwrap();

    let before = ran(&sim, &other);
    sim.run_until(21 * MS).unwrap();
    assert!(
        ran(&sim, &other) > before && ran(&sim, &w) > 0,
        "both run after"
    );
    assert!(other.faults().unwrap().is_empty());
    assert!(p.failed().is_none());
    p.shutdown();
}

#[test]
fn a_panic_that_cannot_be_contained_fails_the_pcoproc_visibly() {
    let sim = Sim::new(SimConfig::default());
    let p = sim.spawn("sim0", rr()).unwrap();
    let (a, b) = (hog(&p), hog(&p));
    // The reset that would contain the first panic panics too.
    sim.panic_next(PanicIn::Run, a.id());
    sim.panic_next(PanicIn::Reset, a.id());
    let waiter = {
        let b = b.clone();
        std::thread::spawn(move || b.wait_notify(0, Duration::from_secs(120)))
    };
    // b first: a's run may start (and panic) as soon as a is started.
    b.start().unwrap();
    a.start().unwrap();
    // The runner ends and releases the device.
    assert!(matches!(sim.run_until(10 * MS), Err(SimError::Detached)));
    let why = p.failed().expect("the pcoproc failed");
    assert!(why.contains("injected panic in Run"), "{why}");
    // Every vcoproc is reported faulted, with the reason.
    for v in [&a, &b] {
        assert_eq!(v.state().unwrap(), VcoprocState::Faulted);
        assert!(last_fault(v).contains("pcoproc failed"));
    }
    // The waiter was told at once (not by its timeout).
    let w = waiter.join().unwrap();
    assert!(matches!(w, Err(CoreError::State(_))), "{w:?}");
    // Requests answer with the failure; destroying still works.
    assert!(matches!(a.reset(), Err(CoreError::Failed(..))));
    assert!(matches!(
        p.create_vcoproc(DomainId(1), SchedParams::default()),
        Err(CoreError::Failed(..))
    ));
    b.destroy().unwrap();
    assert_eq!(p.vcoprocs().len(), 1);
    p.shutdown();
}

/// Round robin that panics in `pick` once armed.
struct Panicky {
    inner: RoundRobin,
    armed: Arc<AtomicBool>,
}

impl Policy for Panicky {
    fn name(&self) -> &'static str {
        "panicky"
    }
    fn describe(&self) -> Vec<(String, String)> {
        self.inner.describe()
    }
    fn attach(&mut self, v: VcoprocId, params: &SchedParams) -> Result<(), PolicyError> {
        self.inner.attach(v, params)
    }
    fn detach(&mut self, v: VcoprocId) {
        self.inner.detach(v);
    }
    fn set_params(&mut self, v: VcoprocId, params: &SchedParams) -> Result<(), PolicyError> {
        self.inner.set_params(v, params)
    }
    fn wake(&mut self, v: VcoprocId, now_ns: u64) -> WakeAction {
        self.inner.wake(v, now_ns)
    }
    fn block(&mut self, v: VcoprocId) {
        self.inner.block(v);
    }
    fn pick(&mut self, now_ns: u64) -> Decision {
        assert!(!self.armed.load(Ordering::SeqCst), "policy bug");
        self.inner.pick(now_ns)
    }
    fn charge(&mut self, v: VcoprocId, ran: Duration, now_ns: u64, end: SliceEnd) {
        self.inner.charge(v, ran, now_ns, end);
    }
    fn standings(&self) -> Vec<Standing> {
        self.inner.standings()
    }
}

#[test]
fn a_policy_panic_fails_the_pcoproc_and_shutdown_completes() {
    let sim = Sim::new(SimConfig::default());
    let armed = Arc::new(AtomicBool::new(false));
    let policy = Panicky {
        inner: RoundRobin::new(Duration::from_millis(1)).unwrap(),
        armed: armed.clone(),
    };
    let p = sim.spawn("sim0", Box::new(policy)).unwrap();
    // Two hogs: slices of 1 ms, so the policy decides every millisecond.
    let (a, b) = (hog(&p), hog(&p));
    a.start().unwrap();
    b.start().unwrap();
    sim.run_until(5 * MS).unwrap();
    assert!(ran(&sim, &a) > 0 && ran(&sim, &b) > 0);
    armed.store(true, Ordering::SeqCst);
    assert!(matches!(sim.run_until(10 * MS), Err(SimError::Detached)));
    assert!(p.failed().is_some_and(|m| m.contains("policy bug")));
    assert_eq!(a.state().unwrap(), VcoprocState::Faulted);
    assert!(matches!(a.stop(), Err(CoreError::Failed(..))));
    p.shutdown();
}
