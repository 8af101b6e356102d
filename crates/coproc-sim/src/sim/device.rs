//! The simulator as its pcoproc sees it: [`SimDevice`], the [`Device`]
//! the runner drives, and the sim as the pcoproc's [`VirtualClock`].

use super::{
    fmt, Arc, Arrivals, BTreeMap, Capabilities, ContextSpec, Ctx, Device, DeviceError, Duration,
    FirmwareInfo, Mapping, PanicIn, Park, Preempt, PreemptHandle, Preemption, RunOutcome, Sim,
    SimError, SwitchOutcome, VcoprocId, VirtualClock, Workload,
};

/// Asks the sim to preempt the running context.
struct SimPreempt(Sim);

impl Preempt for SimPreempt {
    fn preempt(&self) {
        let mut g = self.0.lock();
        g.preempt = true;
        if !g.on_device_thread() {
            g.park_break = true;
            if g.parked == Some(Park::Run) {
                g.parked = None;
            }
        }
        drop(g);
        self.0.notify();
    }
}

impl VirtualClock for Sim {
    fn now_ns(&self) -> u64 {
        self.lock().now
    }

    /// Advance to `until_ns`, the next arrival for a waiting context, the
    /// next hook or the horizon, whichever comes first, delivering arrivals
    /// and hooks on the way; return after a delivery, at `until_ns`, or on
    /// an interrupt (parking at the horizon meanwhile).
    fn idle(&self, until_ns: Option<u64>) {
        let mut g = self.lock();
        g.runner = Some(std::thread::current().id());
        loop {
            if g.interrupt {
                break;
            }
            let (g2, delivered) = self.deliver(g);
            g = g2;
            if delivered {
                break;
            }
            let now = g.now;
            if until_ns.is_some_and(|u| now >= u) {
                break;
            }
            let mut t = until_ns.unwrap_or(u64::MAX);
            if let Some(e) = g.next_external() {
                t = t.min(e);
            }
            if t > g.horizon {
                if now < g.horizon {
                    t = g.horizon;
                } else {
                    g = self.park(g, Park::Idle).0;
                    continue;
                }
            }
            g.now = t;
        }
        // Whatever the interrupt was for, the runner looks now.
        g.interrupt = false;
    }

    fn interrupt(&self) {
        let mut g = self.lock();
        g.interrupt = true;
        if g.parked == Some(Park::Idle) {
            g.parked = None;
        }
        drop(g);
        self.notify();
    }
}

/// The simulated device; made by [`Sim::device`] (or inside
/// [`Sim::spawn`]).
pub struct SimDevice {
    pub(super) sim: Sim,
}

impl fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDevice").field("sim", &self.sim).finish()
    }
}

impl SimDevice {
    /// The sim it belongs to.
    pub fn sim(&self) -> &Sim {
        &self.sim
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        let mut g = self.sim.lock();
        g.attached = false;
        g.parked = None;
        g.current = None;
        // Hooks and the waker may hold the pcoproc: let it go.
        let hooks = std::mem::take(&mut g.hooks);
        let waker = g.waker.take();
        drop(g);
        drop(hooks);
        drop(waker);
        self.sim.notify();
    }
}

fn no_ctx(ctx: VcoprocId) -> DeviceError {
    DeviceError::NoContext(ctx)
}

impl Device for SimDevice {
    fn capabilities(&self) -> Capabilities {
        let cfg = self.sim.lock().config;
        Capabilities {
            class: "sim",
            model: "coproc-sim virtual-clock workload simulator".into(),
            preemption: if cfg.dispatch_only {
                Preemption::Dispatch
            } else {
                Preemption::Instruction
            },
            local_memory: 0,
            address_bits: 64,
            iova_base: 0x1000_0000,
            iova_size: 1 << 40,
            page_size: 4096,
            demand_faults: false,
            max_contexts: cfg.max_contexts,
            memory_bytes: 0,
            limits: BTreeMap::new(),
            features: Vec::new(),
        }
    }

    fn create_context(&mut self, spec: ContextSpec) -> Result<(), DeviceError> {
        self.sim.injected(PanicIn::Create, Some(spec.id));
        let mut g = self.sim.lock();
        if g.ctxs.contains_key(&spec.id) {
            return Err(DeviceError::ContextExists(spec.id));
        }
        if g.ctxs.len() >= g.config.max_contexts as usize {
            return Err(DeviceError::Exhausted(format!(
                "{} contexts",
                g.config.max_contexts
            )));
        }
        g.ctxs.insert(spec.id, Ctx::new());
        Ok(())
    }

    fn destroy_context(&mut self, ctx: VcoprocId) {
        let mut g = self.sim.lock();
        g.ctxs.remove(&ctx);
        g.waiting.remove(&ctx);
        g.answers.remove(&ctx);
        if g.current == Some(ctx) {
            g.current = None;
        }
    }

    fn load_firmware(&mut self, ctx: VcoprocId, image: &[u8]) -> Result<FirmwareInfo, DeviceError> {
        self.sim.injected(PanicIn::Load, Some(ctx));
        let w = Workload::from_image(image).map_err(|e| match e {
            SimError::BadWorkload(m) => DeviceError::BadFirmware(m),
            other => DeviceError::BadFirmware(other.to_string()),
        })?;
        let mut g = self.sim.lock();
        let c = g.ctxs.get_mut(&ctx).ok_or(no_ctx(ctx))?;
        c.arrivals = Arrivals::new(&w);
        c.workload = Some(w);
        c.pending.clear();
        c.hog_done = 0;
        c.waiting = false;
        c.exited = false;
        c.rec.loaded = true;
        g.waiting.remove(&ctx);
        Ok(FirmwareInfo {
            entry: 0,
            code_bytes: image.len() as u64,
            data_bytes: 0,
        })
    }

    fn map(&mut self, ctx: VcoprocId, mapping: &Mapping) -> Result<(), DeviceError> {
        self.sim.injected(PanicIn::Map, Some(ctx));
        let mut g = self.sim.lock();
        let c = g.ctxs.get_mut(&ctx).ok_or(no_ctx(ctx))?;
        c.mappings.insert(mapping.iova, mapping.len);
        Ok(())
    }

    fn unmap(&mut self, ctx: VcoprocId, iova: u64) {
        if let Some(c) = self.sim.lock().ctxs.get_mut(&ctx) {
            c.mappings.remove(&iova);
        }
    }

    fn switch(&mut self, to: Option<VcoprocId>) -> SwitchOutcome {
        self.sim.injected(PanicIn::Switch, to);
        self.sim.switch(to)
    }

    fn run(&mut self, budget: Duration) -> RunOutcome {
        let current = self.sim.lock().current;
        self.sim.injected(PanicIn::Run, current);
        self.sim.run(budget)
    }

    fn preempt_handle(&self) -> PreemptHandle {
        PreemptHandle(Arc::new(SimPreempt(self.sim.clone())))
    }

    fn reset_context(&mut self, ctx: VcoprocId) -> Result<(), DeviceError> {
        self.sim.injected(PanicIn::Reset, Some(ctx));
        let mut g = self.sim.lock();
        let c = g.ctxs.get_mut(&ctx).ok_or(no_ctx(ctx))?;
        if let Some(j) = c.pending.front_mut() {
            j.done = 0;
        }
        c.hog_done = 0;
        c.waiting = false;
        c.exited = false;
        c.rec.resets += 1;
        g.waiting.remove(&ctx);
        Ok(())
    }

    fn virtual_clock(&self) -> Option<Arc<dyn VirtualClock>> {
        Some(Arc::new(self.sim.clone()))
    }
}
