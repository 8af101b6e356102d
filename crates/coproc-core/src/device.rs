//! The `Device` trait: the platform-specific hooks the runner calls.
//!
//! One implementation per device class. A device is created on, and owned
//! by, its pcoproc's runner thread (it need not be `Send`); only the
//! [`PreemptHandle`] crosses threads.
//!
//! # How each class implements the hooks
//!
//! | hook | mcu (Unicorn Cortex-M4) | vulkan (see `docs/gpu.md`) |
//! |---|---|---|
//! | `create_context` | allocates code and data memory for the context in the core's physical space | creates the vcoproc's command pool, timeline semaphore and timestamp queries on the pcoproc's `VkDevice` |
//! | `load_firmware` | validates the ELF, copies its `PT_LOAD` segments into code/data memory, sets SP and PC | parses and validates SPIR-V or WGSL with naga, rewrites it with bounds checks, creates one compute pipeline per entry point and their descriptor pool |
//! | `map` / `unmap` | maps the domain's pages into the core's physical space and the context's translation table; unmap removes both and flushes the TLB and translated code | imports the memfd with `VK_EXT_external_memory_host` into a `VkBuffer` of the vcoproc (staged copies where it cannot); unmap frees it at once, as no command is in flight between runs |
//! | `switch` | saves/restores the CPU registers and switches the translation table (code, data, control block, mappings) | nothing to swap on the GPU: selects whose ring the next run serves |
//! | `run` | executes Thumb code until the budget expires, WAIT, EXIT, a fault or a preempt | decodes, checks and executes the vcoproc's ring one command at a time until the budget is spent; charges GPU timestamps |
//! | preempt handle | stops the emulated core after the current translation block | sets a flag checked between commands |
//! | `reset_context` | reloads the firmware image, clears data memory and registers | clears slots, push constants and local memory; a device loss or the watchdog recreates the `VkDevice` and restores the others |

use crate::control::ControlBlock;
use crate::fault::DeviceFault;
use crate::ids::{ContextId, DomainId};
use crate::iova::Mapping;
use serde::Serialize;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Errors a device hook returns.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DeviceError {
    /// The firmware image is not acceptable.
    #[error("bad firmware: {0}")]
    BadFirmware(String),
    /// No such context.
    #[error("no context {0}")]
    NoContext(ContextId),
    /// The context already exists.
    #[error("context {0} exists")]
    ContextExists(ContextId),
    /// Out of device resources (contexts, memory).
    #[error("device out of resources: {0}")]
    Exhausted(String),
    /// A mapping the device cannot honour.
    #[error("cannot map: {0}")]
    BadMapping(String),
    /// The operation is not supported by this device class.
    #[error("not supported by this device: {0}")]
    Unsupported(&'static str),
    /// Anything else the backend reported.
    #[error("device: {0}")]
    Backend(String),
}

/// At what points a running context can be stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preemption {
    /// Between (blocks of) instructions: any time.
    Instruction,
    /// Between jobs/dispatches only.
    Dispatch,
}

/// What a device class can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Device class name ("mcu", "vulkan", "sim").
    pub class: &'static str,
    /// Model, driver or backend description.
    pub model: String,
    /// Preemption granularity.
    pub preemption: Preemption,
    /// Device-local memory per context in bytes.
    pub local_memory: u64,
    /// Width of a context's addresses in bits.
    pub address_bits: u8,
    /// Start of the window where mappings may be placed.
    pub iova_base: u64,
    /// Size of that window.
    pub iova_size: u64,
    /// Mapping granularity.
    pub page_size: u64,
    /// Whether a context can stall on a missing page and retry.
    pub demand_faults: bool,
    /// Most contexts the device holds at once.
    pub max_contexts: u32,
    /// Memory of the device itself in bytes (a GPU's heaps; 0 where the
    /// device has none of its own).
    pub memory_bytes: u64,
    /// Class-specific limits a firmware author needs, by name (a GPU's
    /// workgroup sizes, binding alignments, …); empty where none.
    pub limits: std::collections::BTreeMap<String, u64>,
    /// Optional features the device has, by name (a GPU's `f16`,
    /// `subgroups`, …); empty where none.
    pub features: Vec<String>,
}

/// What the runner passes when it creates a context.
#[derive(Debug, Clone)]
pub struct ContextSpec {
    /// The vcoproc whose context this is.
    pub id: ContextId,
    /// The domain it belongs to. A device may let contexts of one domain
    /// benefit from what another of the same domain left (the mcu class
    /// keeps a recycled slot's translated code for that domain's identical
    /// firmware), never contexts of different domains: what one domain
    /// did must not show in another's timing.
    pub domain: DomainId,
    /// Its control block, shared with the domain.
    pub control: Arc<ControlBlock>,
}

/// Facts about a loaded firmware image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FirmwareInfo {
    /// Entry point.
    pub entry: u64,
    /// Bytes loaded into code memory.
    pub code_bytes: u64,
    /// Bytes of data memory the image occupies (initialised + zeroed).
    pub data_bytes: u64,
}

/// The answer to a context switch, after the RFC's `ctx_switch_from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchOutcome {
    /// The requested context is on the device.
    Done,
    /// The current context is at a point that cannot be left; try again
    /// after this long (the current context stays on the device).
    RetryAfter(Duration),
    /// The switch failed: `guilty`'s context is unusable until it is reset
    /// and no context is on the device; only that vcoproc is faulted, the
    /// device is otherwise usable.
    Failed {
        /// The context to blame.
        guilty: ContextId,
        /// What happened.
        reason: String,
    },
}

/// Why a run stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The budget ran out.
    BudgetSpent,
    /// The firmware parked waiting for a doorbell.
    Waiting,
    /// The preempt handle cut the slice short.
    Preempted,
    /// The firmware exited with this code.
    Exited(u32),
    /// The context faulted.
    Fault(DeviceFault),
    /// A context with demand faults on touched an address inside the iova
    /// window that no mapping covers. Nothing of the faulting instruction
    /// took effect: the next run of the context executes it again.
    PageFault {
        /// The address the device reports (the mcu: the start of the
        /// faulting TLB page, which is the exact address for an access at
        /// the start of a page).
        addr: u64,
        /// The access kind.
        access: crate::fault::Access,
    },
}

/// The result of one [`Device::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// Device time actually consumed, as the device measured it.
    pub ran: Duration,
    /// Why it stopped.
    pub stop: StopReason,
}

/// Something that can cut the running slice short from any thread.
pub trait Preempt: Send + Sync {
    /// Ask the device to stop the current run at its next preemption point.
    /// A request made while no run is in progress makes the next run return
    /// at once with [`StopReason::Preempted`] (the runner then handles what
    /// the request was for).
    fn preempt(&self);
}

/// A cloneable, thread-safe preempt handle.
#[derive(Clone)]
pub struct PreemptHandle(pub Arc<dyn Preempt>);

impl PreemptHandle {
    /// Cut the current slice short.
    pub fn preempt(&self) {
        self.0.preempt();
    }
}

impl fmt::Debug for PreemptHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PreemptHandle")
    }
}

/// Memory a device lets go of off its runner thread: taking a mapping
/// out of the host's address space (an `munmap`, whose TLB shootdown
/// waits for every CPU of the process) is done by a thread of the
/// device's own, so that the runner goes on with the next slice. The
/// device's reach into the memory ends before that (the runner's call
/// returns only once the device cannot access it); what comes later is
/// the release. Those who need the release done (an `unmap` or `destroy`
/// returns once the device holds none of the domain's memory) wait for it
/// on their own thread.
pub trait Reclaim: Send + Sync {
    /// A mark covering every release handed over so far.
    fn mark(&self) -> u64;

    /// Wait until every release up to `mark` is complete, at most
    /// `timeout`; false if it was not.
    fn wait(&self, mark: u64, timeout: Duration) -> bool;
}

/// A clock kept by the device instead of the host: a simulated device's
/// virtual time. The runner takes every timestamp from it and, when it has
/// nothing to run, lets virtual time pass with [`VirtualClock::idle`]
/// instead of sleeping, so schedules on such a device are exact and
/// deterministic.
pub trait VirtualClock: Send + Sync {
    /// Nanoseconds of virtual time since the device started.
    fn now_ns(&self) -> u64;

    /// The runner has nothing to run: let virtual time pass up to
    /// `until_ns` (None: until something happens), delivering the device's
    /// own events on the way (which may wake vcoprocs through
    /// [`crate::Pcoproc::device_wake`]). Called on the runner thread with no
    /// lock held. Returns early after [`VirtualClock::interrupt`].
    fn idle(&self, until_ns: Option<u64>);

    /// Another thread queued work for the runner: end the current `idle`
    /// now, or make the next one return at once.
    fn interrupt(&self);
}

/// A firmware image parsed, validated (and, where the class can, compiled)
/// off the runner thread, ready for [`Device::install_firmware`]. Each class
/// puts its own type in the box.
pub type PreparedFirmware = Box<dyn std::any::Any + Send>;

/// The part of a device class that turns firmware bytes into a
/// [`PreparedFirmware`]. It runs on the thread of the domain that loads the
/// firmware, before the runner is involved and without any pcoproc lock, so
/// one domain's big image never delays another domain's work.
pub trait FirmwarePrep: Send + Sync {
    /// Parse and validate `image`; errors are [`DeviceError::BadFirmware`].
    fn prepare(&self, image: &[u8]) -> Result<PreparedFirmware, DeviceError>;
}

/// The preparation of classes that do all their firmware work in
/// [`Device::load_firmware`]: it only copies the bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawFirmware;

impl FirmwarePrep for RawFirmware {
    fn prepare(&self, image: &[u8]) -> Result<PreparedFirmware, DeviceError> {
        Ok(Box::new(image.to_vec()))
    }
}

/// CPU time the calling thread has consumed (`CLOCK_THREAD_CPUTIME_ID`):
/// the clock a device class whose engine runs on the runner thread charges
/// in, so that time the host takes the CPU away is never charged to the
/// vcoproc on the device.
pub fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// A physical coprocessor, seen by the runner.
pub trait Device {
    /// What this device can do.
    fn capabilities(&self) -> Capabilities;

    /// Create an empty context for a vcoproc.
    fn create_context(&mut self, spec: ContextSpec) -> Result<(), DeviceError>;

    /// Destroy a context and everything it holds. Must complete.
    fn destroy_context(&mut self, ctx: ContextId);

    /// Load a firmware image into a context (replacing any earlier one).
    fn load_firmware(&mut self, ctx: ContextId, image: &[u8]) -> Result<FirmwareInfo, DeviceError>;

    /// Where firmware images are prepared before they reach the runner.
    /// Asked once, when the runner starts. The default copies the bytes and
    /// leaves all the work to [`Device::load_firmware`].
    fn firmware_prep(&self) -> Arc<dyn FirmwarePrep> {
        Arc::new(RawFirmware)
    }

    /// Install a firmware image made by this device's
    /// [`Device::firmware_prep`] into a context (replacing any earlier one).
    /// Runs on the runner between slices: it should only place what
    /// `prepare` made. The default takes the bytes of [`RawFirmware`] to
    /// [`Device::load_firmware`].
    fn install_firmware(
        &mut self,
        ctx: ContextId,
        fw: PreparedFirmware,
    ) -> Result<FirmwareInfo, DeviceError> {
        match fw.downcast::<Vec<u8>>() {
            Ok(bytes) => self.load_firmware(ctx, &bytes),
            Err(_) => Err(DeviceError::BadFirmware(
                "prepared for another device class".into(),
            )),
        }
    }

    /// Make domain memory visible to a context. The mapping was already
    /// checked against the context's [`crate::iova::IovaSpace`].
    fn map(&mut self, ctx: ContextId, mapping: &Mapping) -> Result<(), DeviceError>;

    /// Withdraw the mapping at `iova`. Must complete: when it returns the
    /// device cannot touch those pages. Revoke is built on it.
    fn unmap(&mut self, ctx: ContextId, iova: u64);

    /// Put `to` on the device (None: leave the device idle, holding nothing
    /// of any context).
    fn switch(&mut self, to: Option<ContextId>) -> SwitchOutcome;

    /// Device time the last [`Device::switch`] spent because of another
    /// context than the one it switched to, and which: work that context
    /// made expensive for everyone (on the mcu class, TLB flushes a context
    /// made costly by growing the engine's table). The runner charges it
    /// to that vcoproc. The default has none.
    fn switch_caused(&mut self) -> Option<(ContextId, Duration)> {
        None
    }

    /// Run the context on the device for at most `budget`.
    fn run(&mut self, budget: Duration) -> RunOutcome;

    /// A handle that stops the current run from another thread.
    fn preempt_handle(&self) -> PreemptHandle;

    /// Reset one context to its freshly loaded firmware. Mappings stay.
    fn reset_context(&mut self, ctx: ContextId) -> Result<(), DeviceError>;

    /// Where the device releases memory off the runner thread, if it
    /// does (None: every release is complete when the call that made it
    /// returns). Asked once, when the runner starts.
    fn reclaim(&self) -> Option<Arc<dyn Reclaim>> {
        None
    }

    /// The device's own clock, if it keeps one (None: the host's monotonic
    /// clock). Asked once, when the runner starts.
    fn virtual_clock(&self) -> Option<Arc<dyn VirtualClock>> {
        None
    }

    /// Turn demand faults on or off for a context: when on, an access
    /// inside the iova window that no mapping covers stops the run with
    /// [`StopReason::PageFault`] instead of a fault. Only devices whose
    /// [`Capabilities::demand_faults`] is true implement it.
    fn set_demand_faults(&mut self, ctx: ContextId, on: bool) -> Result<(), DeviceError> {
        let _ = (ctx, on);
        Err(DeviceError::Unsupported("demand faults"))
    }

    /// Give context `ctx` `len` bytes of zeroed device-local memory at
    /// `iova`, readable and writable by that context only, never visible to
    /// its domain or to any other context. The range was already checked
    /// against the context's [`crate::iova::IovaSpace`] (aligned, inside the
    /// window, overlapping nothing). Devices bound it by
    /// [`Capabilities::local_memory`].
    fn alloc_local(&mut self, ctx: ContextId, iova: u64, len: u64) -> Result<(), DeviceError> {
        let _ = (ctx, iova, len);
        Err(DeviceError::Unsupported("device-local memory"))
    }

    /// Free the device-local memory at `iova` of `ctx`. Must complete; its
    /// contents are gone. `destroy_context` frees all of a context's.
    fn free_local(&mut self, ctx: ContextId, iova: u64) {
        let _ = (ctx, iova);
    }
}
