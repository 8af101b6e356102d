//! The runner against a scripted device: switch answers the mcu never gives
//! (retry-after, failed), domain removal, and state after faults.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use coproc_core::device::{
    Capabilities, ContextSpec, Device, DeviceError, FirmwareInfo, Preempt, PreemptHandle,
    Preemption, RunOutcome, StopReason, SwitchOutcome,
};
use coproc_core::fault::FaultReason;
use coproc_core::iova::{MapKind, Mapping, Perms};
use coproc_core::memory::Region;
use coproc_core::policy::{
    Decision, Policy, PolicyError, RoundRobin, SchedParams, SliceEnd, Standing, WakeAction,
};
use coproc_core::state::VcoprocState;
use coproc_core::{CoreError, System, VcoprocHandle, VcoprocId};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the scripted device does, shared with the test.
#[derive(Default)]
struct Script {
    /// Answers to give to switches onto a context, in order (then Done).
    switch_answers: HashMap<u32, VecDeque<SwitchOutcome>>,
    /// Every (from, to) switch that completed.
    switches: Vec<(Option<u32>, Option<u32>)>,
    /// Contexts with a mapping, and their count.
    maps: HashMap<u32, usize>,
    contexts: Vec<u32>,
    /// Runs per context.
    runs: HashMap<u32, u32>,
    /// Every run, in order.
    run_log: Vec<u32>,
    /// Length of `run_log` at each retry-after answer.
    refusals: Vec<usize>,
    /// Contexts that never park.
    hogs: Vec<u32>,
    /// Each completed switch reports this much device time caused by this
    /// context (`Device::switch_caused`).
    caused: Option<(u32, Duration)>,
    /// Targets of the switches that reported it.
    caused_on: Vec<u32>,
}

struct NoPreempt;
impl Preempt for NoPreempt {
    fn preempt(&self) {}
}

/// A device whose contexts run a fixed number of 100 us slices, then park.
struct Scripted {
    script: Arc<Mutex<Script>>,
    current: Option<u32>,
    caused: Option<(u32, Duration)>,
    controls: HashMap<u32, Arc<coproc_core::ControlBlock>>,
}

impl Device for Scripted {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            class: "scripted",
            model: "test".into(),
            preemption: Preemption::Dispatch,
            local_memory: 0,
            address_bits: 32,
            iova_base: 0x1000_0000,
            iova_size: 0x1000_0000,
            page_size: 4096,
            demand_faults: false,
            max_contexts: 8,
            memory_bytes: 0,
            limits: std::collections::BTreeMap::default(),
            features: Vec::new(),
        }
    }
    fn create_context(&mut self, spec: ContextSpec) -> Result<(), DeviceError> {
        self.script.lock().unwrap().contexts.push(spec.id.0);
        self.controls.insert(spec.id.0, spec.control);
        Ok(())
    }
    fn destroy_context(&mut self, ctx: VcoprocId) {
        let mut s = self.script.lock().unwrap();
        s.contexts.retain(|&c| c != ctx.0);
        s.maps.remove(&ctx.0);
        if self.current == Some(ctx.0) {
            self.current = None;
        }
    }
    fn load_firmware(
        &mut self,
        _ctx: VcoprocId,
        image: &[u8],
    ) -> Result<FirmwareInfo, DeviceError> {
        if image.is_empty() {
            return Err(DeviceError::BadFirmware("empty".into()));
        }
        Ok(FirmwareInfo {
            entry: 0,
            code_bytes: image.len() as u64,
            data_bytes: 0,
        })
    }
    fn map(&mut self, ctx: VcoprocId, _m: &Mapping) -> Result<(), DeviceError> {
        *self.script.lock().unwrap().maps.entry(ctx.0).or_default() += 1;
        Ok(())
    }
    fn unmap(&mut self, ctx: VcoprocId, _iova: u64) {
        if let Some(n) = self.script.lock().unwrap().maps.get_mut(&ctx.0) {
            *n -= 1;
        }
    }
    fn switch(&mut self, to: Option<VcoprocId>) -> SwitchOutcome {
        let mut s = self.script.lock().unwrap();
        let to = to.map(|v| v.0);
        let answer = to.and_then(|t| {
            s.switch_answers
                .get_mut(&t)
                .and_then(std::collections::VecDeque::pop_front)
        });
        match answer {
            Some(SwitchOutcome::Failed { guilty, reason }) => {
                self.current = None;
                SwitchOutcome::Failed { guilty, reason }
            }
            Some(other @ SwitchOutcome::RetryAfter(_)) => {
                let at = s.run_log.len();
                s.refusals.push(at);
                other
            }
            _ => {
                s.switches.push((self.current, to));
                self.current = to;
                self.caused = s.caused;
                if let (Some(_), Some(t)) = (s.caused, to) {
                    s.caused_on.push(t);
                }
                SwitchOutcome::Done
            }
        }
    }
    fn switch_caused(&mut self) -> Option<(VcoprocId, Duration)> {
        self.caused.take().map(|(c, d)| (VcoprocId(c), d))
    }
    fn run(&mut self, budget: Duration) -> RunOutcome {
        let cur = self.current.expect("run with a context");
        let (n, hog) = {
            let mut s = self.script.lock().unwrap();
            s.run_log.push(cur);
            let hog = s.hogs.contains(&cur);
            let n = s.runs.entry(cur).or_default();
            *n += 1;
            (*n, hog)
        };
        let ran = budget.min(Duration::from_micros(100));
        let cb = &self.controls[&cur];
        // A batch takes the doorbells rung so far, works ten slices, then
        // notifies and parks; doorbells rung meanwhile wait for the next.
        if n % 10 == 1 {
            cb.ack_doorbells(cb.doorbell_count());
        }
        if n % 10 == 0 && !hog {
            cb.set_notify_tag(n);
            cb.notify(n);
            RunOutcome {
                ran,
                stop: StopReason::Waiting,
            }
        } else {
            RunOutcome {
                ran,
                stop: StopReason::BudgetSpent,
            }
        }
    }
    fn preempt_handle(&self) -> PreemptHandle {
        PreemptHandle(Arc::new(NoPreempt))
    }
    fn reset_context(&mut self, _ctx: VcoprocId) -> Result<(), DeviceError> {
        Ok(())
    }
}

fn system(script: &Arc<Mutex<Script>>) -> System {
    let s = System::new();
    let script = script.clone();
    let factory = move || {
        Ok(Box::new(Scripted {
            script,
            current: None,
            caused: None,
            controls: HashMap::new(),
        }) as Box<dyn Device>)
    };
    let rr = RoundRobin::new(Duration::from_micros(100)).unwrap();
    s.add_pcoproc("p0", factory, Box::new(rr)).unwrap();
    s
}

const T: Duration = Duration::from_secs(10);

/// Two vcoprocs of one domain on `p0`.
fn two(sys: &System) -> (VcoprocHandle, VcoprocHandle) {
    let d = sys.add_domain("d");
    let mk = || {
        sys.create_vcoproc(d.id, "p0", SchedParams::default())
            .unwrap()
    };
    (mk(), mk())
}

#[test]
fn failed_switch_faults_only_the_guilty_vcoproc() {
    let script = Arc::new(Mutex::new(Script::default()));
    let sys = system(&script);
    let (a, b) = two(&sys);
    script.lock().unwrap().switch_answers.insert(
        b.id().0,
        VecDeque::from([SwitchOutcome::Failed {
            guilty: b.id(),
            reason: "device hung".into(),
        }]),
    );
    for v in [&a, &b] {
        v.load_firmware("x", b"image").unwrap();
        v.start().unwrap();
    }
    b.wait_state(|s| s == VcoprocState::Faulted, T).unwrap();
    let f = b.faults().unwrap().pop().unwrap();
    assert_eq!(
        f.fault.reason,
        FaultReason::SwitchFailed("device hung".into())
    );
    // The other one finishes its work (ten slices, then parks).
    a.wait_notify(0, T).unwrap();
    assert_eq!(a.info().unwrap().stats.faults, 0);
    // Reset brings the guilty one back; then it runs to its notification.
    b.reset().unwrap();
    b.start().unwrap();
    b.wait_notify(0, T).unwrap();
    sys.shutdown();
}

#[test]
fn retry_after_keeps_the_current_context_then_switches() {
    let script = Arc::new(Mutex::new(Script::default()));
    let sys = system(&script);
    let (a, b) = two(&sys);
    {
        let mut s = script.lock().unwrap();
        s.switch_answers.insert(
            b.id().0,
            (0..3)
                .map(|_| SwitchOutcome::RetryAfter(Duration::from_micros(50)))
                .collect(),
        );
        s.hogs.push(a.id().0);
    }
    // a never parks: it is always on the device when b asks for it.
    a.load_firmware("x", b"image").unwrap();
    a.start().unwrap();
    b.load_firmware("x", b"image").unwrap();
    b.start().unwrap();
    b.wait_notify(0, T).unwrap();
    let s = script.lock().unwrap();
    // Each refusal kept the current context (a, which wanted to run) on the
    // device for another run; b got on only after the three refusals.
    assert_eq!(s.refusals.len(), 3);
    for &at in &s.refusals {
        assert_eq!(
            s.run_log[at],
            a.id().0,
            "after a retry-after the current one runs"
        );
    }
    let first_b = s.run_log.iter().position(|&c| c == b.id().0).unwrap();
    assert!(first_b > s.refusals[2]);
    assert!(s.switches.iter().any(|&(_, to)| to == Some(b.id().0)));
    drop(s);
    assert_eq!(
        a.info().unwrap().stats.faults + b.info().unwrap().stats.faults,
        0
    );
    sys.shutdown();
}

#[test]
fn removing_a_domain_frees_everything_it_had() {
    let script = Arc::new(Mutex::new(Script::default()));
    let sys = system(&script);
    let gone = sys.add_domain("gone");
    let stays = sys.add_domain("stays");
    let mem = Arc::new(Region::new(4 * 4096).unwrap());
    let mut mine = vec![];
    for _ in 0..3 {
        let v = sys
            .create_vcoproc(gone.id, "p0", SchedParams::default())
            .unwrap();
        v.load_firmware("x", b"image").unwrap();
        v.map(&mem, 0, 0x1000_0000, 4096, Perms::RW, MapKind::Pinned)
            .unwrap();
        v.start().unwrap();
        mine.push(v);
    }
    let other = sys
        .create_vcoproc(stays.id, "p0", SchedParams::default())
        .unwrap();
    other.load_firmware("x", b"image").unwrap();
    other.start().unwrap();
    assert_eq!(Arc::strong_count(&mem), 4);
    sys.remove_domain(gone.id).unwrap();
    // Its vcoprocs, contexts and mappings are gone; the memory is ours alone.
    assert_eq!(Arc::strong_count(&mem), 1);
    for v in &mine {
        assert!(v.info().is_err());
        assert!(v.wait_notify(0, T).is_err());
    }
    let s = script.lock().unwrap();
    assert_eq!(s.contexts, [other.id().0]);
    assert!(s.maps.values().all(|&n| n == 0));
    drop(s);
    other.wait_notify(0, T).unwrap();
    assert!(sys.remove_domain(gone.id).is_err());
    // Bad firmware leaves the vcoproc as it was.
    let v = sys
        .create_vcoproc(stays.id, "p0", SchedParams::default())
        .unwrap();
    assert!(v.load_firmware("x", b"").is_err());
    assert_eq!(v.state().unwrap(), VcoprocState::Created);
    sys.shutdown();
}

#[test]
fn policy_switch_mid_run_keeps_every_vcoproc() {
    let script = Arc::new(Mutex::new(Script::default()));
    let sys = system(&script);
    let (a, b) = two(&sys);
    script.lock().unwrap().hogs.push(a.id().0);
    for v in [&a, &b] {
        v.load_firmware("x", b"image").unwrap();
        v.start().unwrap();
    }
    let p = sys.pcoproc("p0").unwrap();
    for k in 1..=20u64 {
        let slice = Duration::from_micros(50 + 10 * k);
        p.set_policy(Box::new(RoundRobin::new(slice).unwrap()))
            .unwrap();
        assert_eq!(p.sched_info().params[0].1, slice.as_micros().to_string());
        // b keeps answering doorbells across every switch; a keeps running.
        let seq = b.last_notify().seq;
        b.doorbell();
        b.wait_notify(seq, T).unwrap();
    }
    let runs = script.lock().unwrap().runs.clone();
    assert!(runs[&a.id().0] > 20 && runs[&b.id().0] >= 200);
    assert_eq!(p.vcoprocs().len(), 2);
    let st = p.sched_info().standings;
    assert_eq!(st.len(), 2, "both vcoprocs attached to the new policy");
    sys.shutdown();
}

#[test]
fn demand_faults_need_a_device_that_has_them() {
    let script = Arc::new(Mutex::new(Script::default()));
    let sys = system(&script);
    let (a, _b) = two(&sys);
    // Bounds are checked first, then the device's capability.
    assert!(matches!(
        a.set_demand_faults(Some(Duration::ZERO)),
        Err(CoreError::BadStallTimeout(_))
    ));
    assert!(matches!(
        a.set_demand_faults(Some(Duration::from_secs(1))),
        Err(CoreError::Device(DeviceError::Unsupported(_)))
    ));
    assert!(a.page_fault().unwrap().is_none());
    sys.shutdown();
}

/// Round-robin that records the work charged outside slices.
struct Recording {
    rr: RoundRobin,
    work: Arc<Mutex<Vec<(VcoprocId, Duration)>>>,
}

impl Policy for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }
    fn describe(&self) -> Vec<(String, String)> {
        self.rr.describe()
    }
    fn attach(&mut self, v: VcoprocId, params: &SchedParams) -> Result<(), PolicyError> {
        self.rr.attach(v, params)
    }
    fn detach(&mut self, v: VcoprocId) {
        self.rr.detach(v);
    }
    fn set_params(&mut self, v: VcoprocId, params: &SchedParams) -> Result<(), PolicyError> {
        self.rr.set_params(v, params)
    }
    fn wake(&mut self, v: VcoprocId, now_ns: u64) -> WakeAction {
        self.rr.wake(v, now_ns)
    }
    fn block(&mut self, v: VcoprocId) {
        self.rr.block(v);
    }
    fn pick(&mut self, now_ns: u64) -> Decision {
        self.rr.pick(now_ns)
    }
    fn charge(&mut self, v: VcoprocId, ran: Duration, now_ns: u64, end: SliceEnd) {
        self.rr.charge(v, ran, now_ns, end);
    }
    fn charge_work(&mut self, v: VcoprocId, took: Duration, now_ns: u64) {
        self.work.lock().unwrap().push((v, took));
        self.rr.charge_work(v, took, now_ns);
    }
    fn standings(&self) -> Vec<Standing> {
        self.rr.standings()
    }
}

/// Device time a switch spent because of another context is charged to
/// that context, whichever context the switch was to.
#[test]
fn what_a_switch_spent_for_another_context_is_charged_to_it() {
    const CAUSED: Duration = Duration::from_micros(3333);
    let script = Arc::new(Mutex::new(Script::default()));
    let sys = system(&script);
    let (a, b) = two(&sys);
    let work = Arc::new(Mutex::new(Vec::new()));
    let p = sys.pcoproc("p0").unwrap();
    p.set_policy(Box::new(Recording {
        rr: RoundRobin::new(Duration::from_micros(100)).unwrap(),
        work: work.clone(),
    }))
    .unwrap();
    {
        let mut s = script.lock().unwrap();
        s.hogs.extend([a.id().0, b.id().0]);
        s.caused = Some((a.id().0, CAUSED));
    }
    for v in [&a, &b] {
        v.load_firmware("x", b"image").unwrap();
        v.start().unwrap();
    }
    // Wait until switches onto both have been charged.
    let caused = |w: &[(VcoprocId, Duration)]| w.iter().filter(|(_, d)| *d == CAUSED).count();
    let deadline = std::time::Instant::now() + T;
    while caused(&work.lock().unwrap()) < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "no caused work charged"
        );
        std::thread::yield_now();
    }
    a.stop().unwrap();
    b.stop().unwrap();
    let on = script.lock().unwrap().caused_on.clone();
    assert!(on.contains(&a.id().0) && on.contains(&b.id().0), "{on:?}");
    let w = work.lock().unwrap().clone();
    assert!(
        w.iter()
            .filter(|(_, d)| *d == CAUSED)
            .all(|(v, _)| *v == a.id()),
        "{w:?}"
    );
    assert!(
        caused(&w) >= 10 && caused(&w) <= on.len(),
        "{} of {}",
        caused(&w),
        on.len()
    );
    sys.shutdown();
}
