use super::*;
use crate::workload::Job;
use coproc_core::ControlBlock;

const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const A: VcoprocId = VcoprocId(1);
const B: VcoprocId = VcoprocId(2);

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

/// A sim and its device, driven on this thread, horizon far away.
fn sim(cfg: SimConfig) -> (Sim, SimDevice) {
    let sim = Sim::new(cfg);
    let dev = sim.device().unwrap();
    sim.set_horizon(10_000 * MS);
    (sim, dev)
}

fn add(dev: &mut SimDevice, id: VcoprocId, w: &Workload) {
    dev.create_context(ContextSpec {
        id,
        domain: coproc_core::DomainId(1),
        control: Arc::new(ControlBlock::default()),
    })
    .unwrap();
    let fw = dev.load_firmware(id, &w.to_image()).unwrap();
    assert_eq!(fw.code_bytes, w.to_image().len() as u64);
}

fn job(at_ns: u64, len_ns: u64) -> Job {
    Job {
        at_ns,
        len_ns,
        ..Job::default()
    }
}

fn out(ran_ns: u64, stop: StopReason) -> RunOutcome {
    RunOutcome {
        ran: Duration::from_nanos(ran_ns),
        stop,
    }
}

/// A waker that logs (who, when).
fn log_waker(sim: &Sim) -> Arc<Mutex<Vec<(VcoprocId, u64)>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (l, s) = (log.clone(), sim.clone());
    sim.set_waker(Box::new(move |v| l.lock().unwrap().push((v, s.now_ns()))));
    log
}

#[test]
fn budget_waiting_exit() {
    let (sim, mut dev) = sim(SimConfig::default());
    assert_eq!(dev.capabilities().class, "sim");
    assert_eq!(dev.capabilities().preemption, Preemption::Instruction);
    add(&mut dev, A, &Workload::hog());
    let mut w = Workload::jobs(vec![job(0, 300 * US), job(2 * MS, 100 * US)]);
    add(&mut dev, B, &w);
    assert_eq!(dev.switch(Some(A)), SwitchOutcome::Done);
    assert_eq!(dev.run(us(1000)), out(MS, StopReason::BudgetSpent));
    assert_eq!(sim.now_ns(), MS);
    assert_eq!(dev.switch(Some(B)), SwitchOutcome::Done);
    assert_eq!(dev.run(us(1000)), out(300 * US, StopReason::Waiting));
    let r = sim.context(B).unwrap();
    assert_eq!(
        r.completed,
        [JobRecord {
            arrival_ns: 0,
            start_ns: MS,
            finish_ns: MS + 300 * US,
            deadline_ns: None
        }]
    );
    assert!(r.waiting && r.pending == 0 && r.ran_ns == 300 * US);
    // Nothing to run: idle up to the next arrival, which wakes B.
    let wakes = log_waker(&sim);
    dev.switch(None);
    sim.idle(None);
    assert_eq!(*wakes.lock().unwrap(), [(B, 2 * MS)]);
    assert_eq!(sim.context(B).unwrap().pending, 1);
    dev.switch(Some(B));
    assert_eq!(dev.run(us(1000)), out(100 * US, StopReason::Waiting));
    // The same workload exits when told to.
    w.exit_when_done = true;
    dev.load_firmware(B, &w.to_image()).unwrap();
    // A fresh load: both jobs (arrived in the past) run again.
    assert_eq!(dev.run(us(1000)), out(400 * US, StopReason::Exited(0)));
    let empty = Workload {
        exit_when_done: true,
        ..Workload::default()
    };
    dev.load_firmware(B, &empty.to_image()).unwrap();
    assert_eq!(dev.run(us(1000)), out(0, StopReason::Exited(0)));
    assert!(sim.context(B).unwrap().exited);
    // Endless periodic work never exits.
    let mut p = Workload::periodic(sim.now_ns(), 10 * US, 5 * US, None);
    p.exit_when_done = true;
    dev.load_firmware(B, &p.to_image()).unwrap();
    assert_eq!(dev.run(us(100)), out(5 * US, StopReason::Waiting));
    assert_eq!(sim.context(B).unwrap().pending, 0);
}

#[test]
fn fault_is_injected_once_and_reset_restarts_the_job() {
    let (sim, mut dev) = sim(SimConfig::default());
    let w = Workload::jobs(vec![Job {
        fault_at_ns: Some(200 * US),
        ..job(0, MS)
    }]);
    add(&mut dev, A, &w);
    dev.switch(Some(A));
    let o = dev.run(us(5000));
    assert_eq!(o.ran, us(200));
    let StopReason::Fault(f) = o.stop else {
        panic!("{o:?}")
    };
    assert_eq!((f.addr, f.access, f.pc), (None, Access::None, None));
    assert!(matches!(f.reason, FaultReason::Device(m) if m.starts_with("injected fault")));
    dev.reset_context(A).unwrap();
    assert_eq!(dev.run(us(5000)), out(MS, StopReason::Waiting));
    let r = sim.context(A).unwrap();
    assert_eq!((r.faults, r.resets, r.jobs_done), (1, 1, 1));
    assert_eq!(
        (r.completed[0].start_ns, r.completed[0].finish_ns),
        (0, 1200 * US)
    );
}

#[test]
fn nonpreemptible_section_overruns_the_budget() {
    let (sim, mut dev) = sim(SimConfig::default());
    let j = Job {
        nonpreempt: Some((200 * US, 500 * US)),
        ..job(0, MS)
    };
    add(&mut dev, A, &Workload::jobs(vec![j, j]));
    dev.switch(Some(A));
    // Budget ends inside the section: it runs to the section's end.
    assert_eq!(dev.run(us(300)), out(700 * US, StopReason::BudgetSpent));
    assert_eq!(dev.run(us(100)), out(100 * US, StopReason::BudgetSpent));
    // Budget ends where the next job's section starts: no overrun.
    assert_eq!(dev.run(us(400)), out(400 * US, StopReason::BudgetSpent));
    // A preempt during the section takes effect at its end.
    let h = dev.preempt_handle();
    sim.at(1500 * US, Box::new(move || h.preempt()));
    assert_eq!(dev.run(us(5000)), out(500 * US, StopReason::Preempted));
    assert_eq!(sim.now_ns(), 1700 * US);
    assert_eq!(dev.run(us(5000)), out(300 * US, StopReason::Waiting));
}

#[test]
fn dispatch_only_preempts_between_jobs_only() {
    let cfg = SimConfig {
        dispatch_only: true,
        ..SimConfig::default()
    };
    let (sim, mut dev) = sim(cfg);
    assert_eq!(dev.capabilities().preemption, Preemption::Dispatch);
    add(&mut dev, A, &Workload::jobs(vec![job(0, 400 * US); 3]));
    dev.switch(Some(A));
    assert_eq!(dev.run(us(500)), out(800 * US, StopReason::BudgetSpent));
    // The last job overruns too, then there is no more work.
    assert_eq!(dev.run(us(100)), out(400 * US, StopReason::Waiting));
    // A hog's work is a stream of dispatches.
    let hog = Workload {
        hog_dispatch_ns: Some(100 * US),
        ..Workload::hog()
    };
    add(&mut dev, B, &hog);
    dev.switch(Some(B));
    let h = dev.preempt_handle();
    let t0 = sim.now_ns();
    sim.at(t0 + 150 * US, Box::new(move || h.preempt()));
    assert_eq!(dev.run(us(1000)), out(200 * US, StopReason::Preempted));
    assert_eq!(dev.run(us(250)), out(300 * US, StopReason::BudgetSpent));
}

#[test]
fn preempt_before_and_during_a_run() {
    let (sim, mut dev) = sim(SimConfig::default());
    add(&mut dev, A, &Workload::hog());
    dev.switch(Some(A));
    let h = dev.preempt_handle();
    h.preempt();
    assert_eq!(dev.run(us(1000)), out(0, StopReason::Preempted));
    assert_eq!(dev.run(us(1000)), out(MS, StopReason::BudgetSpent));
    let h2 = h.clone();
    sim.at(1300 * US, Box::new(move || h2.preempt()));
    assert_eq!(dev.run(us(1000)), out(300 * US, StopReason::Preempted));
    // A request does not outlive the run that ended for another reason.
    add(&mut dev, B, &Workload::jobs(vec![job(0, 10 * US)]));
    dev.switch(Some(B));
    let h3 = h.clone();
    sim.at(sim.now_ns() + 5 * US, Box::new(move || h3.preempt()));
    assert_eq!(dev.run(us(1000)), out(5 * US, StopReason::Preempted));
    assert_eq!(dev.run(us(1000)), out(5 * US, StopReason::Waiting));
}

#[test]
fn arrival_for_a_waiting_context_calls_the_waker_mid_run() {
    let (sim, mut dev) = sim(SimConfig::default());
    add(&mut dev, A, &Workload::jobs(vec![job(250 * US, 50 * US)]));
    add(&mut dev, B, &Workload::hog());
    // A ran and found nothing: it waits.
    dev.switch(Some(A));
    assert_eq!(dev.run(us(1000)), out(0, StopReason::Waiting));
    let wakes = Arc::new(Mutex::new(Vec::new()));
    let (w, s, h) = (wakes.clone(), sim.clone(), dev.preempt_handle());
    sim.set_waker(Box::new(move |v| {
        w.lock().unwrap().push((v, s.now_ns()));
        h.preempt();
    }));
    dev.switch(Some(B));
    assert_eq!(dev.run(us(1000)), out(250 * US, StopReason::Preempted));
    assert_eq!(*wakes.lock().unwrap(), [(A, 250 * US)]);
    // The running context's own arrivals wake nobody.
    dev.switch(Some(A));
    assert_eq!(dev.run(us(1000)), out(50 * US, StopReason::Waiting));
    assert_eq!(sim.context(A).unwrap().wakeups, 1);
}

#[test]
fn idle_until_hooks_and_interrupts() {
    let (sim, mut dev) = sim(SimConfig::default());
    add(&mut dev, A, &Workload::jobs(vec![job(5 * MS, 1)]));
    dev.switch(Some(A));
    assert_eq!(dev.run(us(1000)), out(0, StopReason::Waiting));
    let wakes = log_waker(&sim);
    sim.idle(Some(2 * MS));
    assert_eq!(sim.now_ns(), 2 * MS);
    let hit = Arc::new(Mutex::new(None));
    let (hh, s) = (hit.clone(), sim.clone());
    sim.at(
        3 * MS,
        Box::new(move || *hh.lock().unwrap() = Some(s.now_ns())),
    );
    sim.idle(None);
    assert_eq!((*hit.lock().unwrap(), sim.now_ns()), (Some(3 * MS), 3 * MS));
    // An interrupt while not idling ends the next idle at once.
    sim.interrupt();
    sim.idle(None);
    assert_eq!(sim.now_ns(), 3 * MS);
    sim.idle(None);
    assert_eq!(*wakes.lock().unwrap(), [(A, 5 * MS)]);
    assert_eq!(sim.now_ns(), 5 * MS);
}

#[test]
fn switch_answers_cost_and_log() {
    let cfg = SimConfig {
        switch_ns: 10 * US,
        ..SimConfig::default()
    };
    let (sim, mut dev) = sim(cfg);
    add(&mut dev, A, &Workload::hog());
    add(&mut dev, B, &Workload::hog());
    assert_eq!(dev.switch(Some(A)), SwitchOutcome::Done);
    assert_eq!(sim.now_ns(), 10 * US);
    sim.answer_switch(B, SwitchOutcome::RetryAfter(us(5)));
    let failed = SwitchOutcome::Failed {
        guilty: B,
        reason: "hung".into(),
    };
    sim.answer_switch(B, failed.clone());
    assert_eq!(dev.switch(Some(B)), SwitchOutcome::RetryAfter(us(5)));
    assert_eq!(sim.current(), Some(A));
    assert_eq!(dev.switch(Some(B)), failed);
    assert_eq!(sim.current(), None);
    assert_eq!(dev.switch(Some(B)), SwitchOutcome::Done);
    assert_eq!(sim.now_ns(), 20 * US);
    assert_eq!(
        sim.switch_log(),
        [
            SwitchRecord {
                from: None,
                to: Some(A),
                at_ns: 10 * US
            },
            SwitchRecord {
                from: None,
                to: Some(B),
                at_ns: 20 * US
            }
        ]
    );
    assert_eq!(sim.context(B).unwrap().switches_in, 1);
    assert!(matches!(
        dev.switch(Some(VcoprocId(9))),
        SwitchOutcome::Failed { .. }
    ));
}

#[test]
fn contexts_maps_and_bad_firmware() {
    let (sim, mut dev) = sim(SimConfig::default());
    add(&mut dev, A, &Workload::hog());
    let spec = ContextSpec {
        id: A,
        domain: coproc_core::DomainId(1),
        control: Arc::new(ControlBlock::default()),
    };
    assert_eq!(dev.create_context(spec), Err(DeviceError::ContextExists(A)));
    assert!(matches!(
        dev.load_firmware(A, b"{\"periodic\": {\"period_ns\": 0, \"len_ns\": 1}}"),
        Err(DeviceError::BadFirmware(_))
    ));
    assert_eq!(
        dev.load_firmware(B, &Workload::hog().to_image()),
        Err(DeviceError::NoContext(B))
    );
    let region = Arc::new(coproc_core::memory::Region::new(4096).unwrap());
    let m = Mapping::pinned_rw(0x1000_0000, &region, 4096);
    dev.map(A, &m).unwrap();
    assert_eq!(sim.context(A).unwrap().mappings, [(0x1000_0000, 4096)]);
    dev.unmap(A, 0x1000_0000);
    assert!(sim.context(A).unwrap().mappings.is_empty());
    dev.switch(Some(A));
    dev.destroy_context(A);
    assert!(sim.context(A).is_none() && sim.current().is_none());
    assert!(matches!(sim.device(), Err(SimError::AlreadyAttached)));
    sim.idle(Some(5));
    assert!(matches!(sim.run_until(4), Err(SimError::Past { .. })));
    drop(dev);
    assert!(matches!(sim.run_until(u64::MAX), Err(SimError::Detached)));
}

#[test]
fn overloaded_endless_periodic_counts_pending_lazily() {
    let (sim, mut dev) = sim(SimConfig::default());
    add(&mut dev, A, &Workload::periodic(0, US, 2 * US, None));
    dev.switch(Some(A));
    assert_eq!(dev.run(us(1000)), out(MS, StopReason::BudgetSpent));
    let r = sim.context(A).unwrap();
    assert_eq!((r.jobs_done, r.pending), (500, 501));
    assert!(!r.completed[0].met_deadline());
    assert_eq!(r.completed[0].response_ns(), 2 * US);
}

/// Run `f` with the device on another thread.
fn on_thread<R: Send + 'static>(
    mut dev: SimDevice,
    f: impl FnOnce(&mut SimDevice) -> R + Send + 'static,
) -> std::thread::JoinHandle<(SimDevice, R)> {
    std::thread::spawn(move || {
        let r = f(&mut dev);
        (dev, r)
    })
}

#[test]
fn parked_run_returns_on_a_request_from_another_thread() {
    let sim = Sim::new(SimConfig::default());
    let mut dev = sim.device().unwrap();
    let j = Job {
        nonpreempt: Some((100 * US, 800 * US)),
        ..job(0, MS)
    };
    add(&mut dev, A, &Workload::jobs(vec![j]));
    let h = dev.preempt_handle();
    let t = on_thread(dev, |d| {
        d.switch(Some(A));
        d.run(us(200))
    });
    sim.run_until(0).unwrap();
    sim.run_until(500 * US).unwrap();
    assert!(sim.is_parked());
    // Inside the section, but a request while parked ends the run.
    h.preempt();
    let (dev, o) = t.join().unwrap();
    assert_eq!(o, out(500 * US, StopReason::Preempted));
    // The rest of the section stays non-preemptible.
    let t = on_thread(dev, |d| d.run(Duration::ZERO));
    sim.set_horizon(MS);
    let (_dev, o) = t.join().unwrap();
    assert_eq!(sim.now_ns(), 900 * US);
    assert_eq!(o, out(400 * US, StopReason::BudgetSpent));
}

#[test]
fn parked_idle_returns_on_interrupt() {
    let sim = Sim::new(SimConfig::default());
    let dev = sim.device().unwrap();
    let s = sim.clone();
    let t = on_thread(dev, move |_| s.idle(None));
    sim.run_until(7 * MS).unwrap();
    assert!(sim.is_parked());
    sim.interrupt();
    t.join().unwrap();
    assert_eq!(sim.now_ns(), 7 * MS);
}
