//! The `vulkan` device class: one GPU shared by many vcoprocs through
//! Vulkan compute (see `docs/gpu.md`).
//!
//! - [`shader`]: firmware (SPIR-V or WGSL) parsed, validated and rewritten
//!   with bounds checks by naga; one pipeline per compute entry point.
//! - [`gpu`]: the Vulkan instance, physical device selection, what
//!   `coproc list` shows about a GPU.
//! - [`device`]: [`VulkanDevice`], the [`coproc_core::Device`] of this
//!   class: per-vcoproc pipelines, buffers and pools on one `VkDevice`, the
//!   command processor that serves each vcoproc's submission ring,
//!   zero-copy import of domain memory, the watchdog and device-loss
//!   recovery.
//! - [`direct`]: the same shaders driven straight through ash, in process,
//!   for the overhead benchmark.

pub mod device;
pub mod direct;
pub mod gpu;
pub mod shader;

pub use device::VulkanDevice;
pub use gpu::{probe, GpuError, GpuInfo};

use coproc_core::device::{Device, DeviceError};
use coproc_core::ids::ContextId;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Which GPU a pcoproc uses (`device = ...` in the daemon's configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The first discrete GPU, else integrated, else virtual, else a CPU
    /// implementation (lavapipe).
    Auto,
    /// The n-th physical device, in the loader's order.
    Index(usize),
    /// The first whose name contains this text (case-insensitive).
    Name(String),
}

impl Selector {
    /// `"auto"`, a number, or a name substring.
    pub fn parse(s: &str) -> Selector {
        if s.eq_ignore_ascii_case("auto") {
            Selector::Auto
        } else if let Ok(i) = s.parse() {
            Selector::Index(i)
        } else {
            Selector::Name(s.to_string())
        }
    }
}

/// How domain memory reaches the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Import {
    /// Zero-copy through `VK_EXT_external_memory_host` where the device has
    /// it, else a staged copy (logged once).
    Auto,
    /// Always a staged copy: device memory copied in before each command
    /// that uses a mapping and out after it (for writable bindings).
    Copy,
}

/// Test hooks: faults injected on purpose (tests and drills only; the
/// daemon never sets them).
#[derive(Debug, Default)]
pub struct TestHooks {
    lose: AtomicU32,
}

impl TestHooks {
    /// New hooks, nothing armed.
    pub fn new() -> Arc<TestHooks> {
        Arc::new(TestHooks::default())
    }

    /// The next submission of context `ctx` reports `VK_ERROR_DEVICE_LOST`
    /// (after its work has finished), as a hung or crashed GPU would.
    pub fn lose_device_on_next_submit(&self, ctx: ContextId) {
        self.lose.store(ctx.0.wrapping_add(1), Ordering::Release);
    }

    pub(crate) fn take_loss(&self, ctx: ContextId) -> bool {
        self.lose
            .compare_exchange(
                ctx.0.wrapping_add(1),
                0,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }
}

/// Configuration of a `vulkan` pcoproc.
#[derive(Debug, Clone)]
pub struct VulkanConfig {
    /// Which GPU.
    pub selector: Selector,
    /// How domain memory is imported.
    pub import: Import,
    /// Longest one command may run on the GPU before its vcoproc is faulted
    /// and the device recreated.
    pub watchdog: Duration,
    /// Most vcoprocs at once.
    pub max_contexts: u32,
    /// Most device-local memory per vcoproc, bytes.
    pub local_memory: u64,
    /// Most workgroups one dispatch may launch (x·y·z), on top of the
    /// device's per-axis limits.
    pub max_groups: u64,
    /// Directory of the persistent pipeline cache (one file per GPU
    /// model and driver; created if missing). `None`: no cache kept across
    /// restarts. The daemon's default is `pipeline-cache` in its state
    /// directory.
    pub pipeline_cache: Option<std::path::PathBuf>,
    /// Longest a new pipeline's trial run may take at `load-firmware` (one
    /// workgroup on scratch buffers, which makes a driver that compiles on
    /// first use, such as lavapipe, compile then rather than in a job).
    pub compile_timeout: Duration,
    /// Injected faults (tests).
    pub hooks: Option<Arc<TestHooks>>,
}

impl Default for VulkanConfig {
    fn default() -> Self {
        VulkanConfig {
            selector: Selector::Auto,
            import: Import::Auto,
            watchdog: Duration::from_secs(2),
            max_contexts: 256,
            local_memory: 256 << 20,
            max_groups: 1 << 22,
            pipeline_cache: None,
            compile_timeout: Duration::from_secs(10),
            hooks: None,
        }
    }
}

/// A factory for [`coproc_core::Pcoproc::spawn`]: the device is created on
/// the runner thread.
pub fn factory(
    config: VulkanConfig,
) -> impl FnOnce() -> Result<Box<dyn Device>, DeviceError> + Send + 'static {
    move || Ok(Box::new(VulkanDevice::new(config)?) as Box<dyn Device>)
}
