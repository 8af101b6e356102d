//! [`VulkanDevice`]: a GPU shared by vcoprocs.
//!
//! # What belongs to whom
//!
//! One `VkDevice` and one compute queue per pcoproc. Per vcoproc (context):
//! its command pool and command buffer, its timeline semaphore, its
//! timestamp query pool, its descriptor pool, its pipelines (one per compute
//! entry point of its firmware) and its buffers (one per mapping, one per
//! device-local allocation). Nothing is shared between contexts, so a
//! command can only name objects of its own context: the iova map decides
//! which buffer an address means.
//!
//! # The command processor
//!
//! A GPU has no firmware CPU to read the submission ring, so the device does
//! it on the runner thread: [`Device::run`] reads the ring whose iova the
//! domain wrote in mailbox word 0, decodes each entry
//! ([`coproc_proto::gpu::Command::decode`]), checks it against the
//! context's pipelines and iova map, records it into the context's command
//! buffer, submits it, and waits for the timeline semaphore (bounded by the
//! watchdog). Commands run one at a time, so a run can stop between any
//! two: that is this class's preemption point (a dispatch, copy or fill in
//! flight is never interrupted). The time charged is the GPU's timestamps
//! around each command plus the host time spent decoding and recording.
//!
//! # Faults
//!
//! A command that runs past the watchdog, or a submission that reports
//! `VK_ERROR_DEVICE_LOST` (or the test hook's injected loss), faults the
//! context that submitted it. The device is then recreated: a new
//! `VkDevice`, and every context's pipelines, pools and buffers built again
//! on it; domain memory is imported again (it lives in the domain's memfd),
//! device-local memory is copied over from the old device's mapping (the
//! guilty context's is zeroed). The old device is handed to a reaper thread
//! that waits for it to go idle before destroying it, holding the domain
//! memory it may still touch.
//!
//! # Layout
//!
//! - `prep`: the class's `FirmwarePrep`: naga, then pipelines built and
//!   tried once on the current device from the loading thread.
//! - `objects`: the ash objects (logical device, per-context pools,
//!   semaphores, pipelines, buffers), their creation and destruction, and
//!   `execute`: record, submit and wait for one command.
//! - `context`: the per-context state the command processor checks
//!   commands against (iova map, slots, push constants, ring).
//! - `processor`: serving a context's ring: decode, check (`plan`, pure and
//!   unit-tested), record and submit, post completions.
//! - `recovery`: watchdog and device-loss faults, recreating the device,
//!   the reaper of old devices.
//! - this module: [`VulkanDevice`] and its [`Device`] impl.

// Host sizes of regions and buffers already bounded when they were made (u64 to usize cannot truncate on 64-bit hosts).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod context;
mod objects;
mod prep;
mod processor;
mod recovery;

pub(crate) use objects::{
    destroy_buf, destroy_ctx_vk, execute, optional_features, queue_limits, record_dispatch, CtxVk,
    Descriptor, ExecError, Gpu, Optional,
};

use crate::gpu::{compute_family, GpuError, GpuInfo, Instance};
use crate::shader::{Compiled, ShaderLimits};
use crate::{Import, VulkanConfig};
use ash::vk;
use context::{Backing, Buf, Ctx};
use coproc_core::device::{
    Capabilities, ContextSpec, Device, DeviceError, FirmwareInfo, FirmwarePrep, Preempt,
    PreemptHandle, Preemption, PreparedFirmware, RunOutcome, SwitchOutcome,
};
use coproc_core::ids::ContextId;
use coproc_core::iova::Mapping;
use coproc_proto::gpu::PUSH_WORDS;
use recovery::Failure;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// First iova of a context's window.
pub const IOVA_BASE: u64 = 0x1000_0000;
/// End of the window: every iova fits the 32-bit address words of commands.
pub const IOVA_END: u64 = 0xF000_0000;
/// Mapping granularity.
const PAGE: u64 = 4096;

/// Mailbox-in word holding the queue's iova, and the mailbox-out words the
/// device keeps up to date (defined in `coproc_abi::gpu`).
pub use coproc_proto::gpu::{mbox_out, MBOX_QUEUE};

#[derive(Debug, Default)]
struct PreemptFlag(AtomicBool);

impl Preempt for PreemptFlag {
    fn preempt(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Device limits the command processor checks against.
#[derive(Debug, Clone, Copy)]
struct Limits {
    groups: [u32; 3],
    max_groups: u64,
    storage_align: u64,
    uniform_align: u64,
    /// Largest storage buffer range one binding may have.
    storage_range: u64,
    /// Largest uniform buffer range one binding may have.
    uniform_range: u64,
    /// (ns per tick, valid-bit mask) when timestamps work on the queue.
    timestamps: Option<(f64, u64)>,
    import_align: u64,
    shader: ShaderLimits,
}

/// The pipeline cache saved in `file` (empty if missing, unreadable or
/// implausibly large: the driver then starts an empty one).
fn read_cache(file: &std::path::Path) -> Vec<u8> {
    const MOST: u64 = 256 << 20;
    match std::fs::metadata(file) {
        Ok(m) if m.len() <= MOST => std::fs::read(file).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Write `data` to `file` through a temporary file renamed over it, the
/// directory created (owner only) if missing.
fn write_cache(file: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = file.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = file.with_extension(format!("tmp{}-{seq}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)
}

/// What modules are checked against on a device with limits `l` and
/// optional features `opt`.
pub(crate) fn shader_limits(l: &vk::PhysicalDeviceLimits, opt: &Optional) -> ShaderLimits {
    ShaderLimits {
        max_invocations: l.max_compute_work_group_invocations,
        max_size: l.max_compute_work_group_size,
        max_groups: l.max_bound_descriptor_sets,
        max_storage_buffers: l.max_per_stage_descriptor_storage_buffers,
        max_uniform_buffers: l.max_per_stage_descriptor_uniform_buffers,
        max_uniform_bytes: l.max_uniform_buffer_range,
        max_workgroup_bytes: l.max_compute_shared_memory_size,
        features: opt.shader,
        robust_buffers: opt.robust2,
        robust_images: opt.robust_images,
        max_images: l
            .max_per_stage_descriptor_storage_images
            .min(l.max_per_stage_descriptor_sampled_images),
        max_samplers: l.max_per_stage_descriptor_samplers,
    }
}

/// The `vulkan` device.
pub struct VulkanDevice {
    inst: Arc<Instance>,
    pdev: vk::PhysicalDevice,
    family: u32,
    info: GpuInfo,
    cfg: VulkanConfig,
    limits: Limits,
    optional: Optional,
    host_import: bool,
    gpu: Gpu,
    ctxs: HashMap<ContextId, Ctx>,
    current: Option<ContextId>,
    preempt: Arc<PreemptFlag>,
    next_gen: u64,
    /// Set when the device could not be recreated after a loss.
    broken: Option<String>,
    /// Old devices still draining (reapers not past their idle wait).
    draining: Arc<AtomicUsize>,
    /// The reaper threads of old devices and hung trials, joined on drop.
    reapers: prep::Reapers,
    /// Limits the log lines a domain's faults cause.
    log: coproc_core::ratelimit::RateLimit,
    /// The pipeline cache's file (`cfg.pipeline_cache` and the GPU).
    cache_file: Option<std::path::PathBuf>,
    /// Buffers a hung trial run may still use: handed to the reaper with
    /// the old device on recovery.
    stray: Vec<(vk::Buffer, vk::DeviceMemory)>,
    /// Command pools and pipelines of a hung trial run, likewise.
    stray_ctxs: Vec<CtxVk>,
    /// Images and samplers of a hung or lost dispatch, likewise.
    stray_images: Vec<objects::Img>,
    stray_samplers: Vec<vk::Sampler>,
    /// The device loading threads build pipelines on (`prep`).
    target: prep::Slot,
    /// Serialises trial runs (`prep::Target::trials`).
    trials: Arc<std::sync::Mutex<()>>,
    /// Firmware whose pipelines the runner had to build itself.
    runner_builds: u64,
}

impl std::fmt::Debug for VulkanDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanDevice")
            .field("gpu", &self.info.name)
            .field("contexts", &self.ctxs.len())
            .finish_non_exhaustive()
    }
}

fn gpu_err(e: GpuError) -> DeviceError {
    DeviceError::Backend(e.to_string())
}

impl VulkanDevice {
    /// Open the GPU `config.selector` picks.
    pub fn new(config: VulkanConfig) -> Result<VulkanDevice, DeviceError> {
        let inst = Instance::open().map_err(gpu_err)?;
        let (pdev, info) = inst.select(&config.selector).map_err(gpu_err)?;
        let i = &inst.instance;
        let family = compute_family(i, pdev).ok_or_else(|| gpu_err(GpuError::NoDevice))?;
        let (l, timestamps) = queue_limits(i, pdev, family);
        let host_import = info.host_import && config.import == Import::Auto;
        let mut import_align = PAGE;
        if host_import {
            let mut hp = vk::PhysicalDeviceExternalMemoryHostPropertiesEXT::default();
            let mut p2 = vk::PhysicalDeviceProperties2::default().push_next(&mut hp);
            // SAFETY: `pdev` was enumerated from this live instance; the
            // call only fills `p2` and the `hp` it chains to, both live
            // locals that outlive it.
            unsafe { i.get_physical_device_properties2(pdev, &mut p2) };
            import_align = hp.min_imported_host_pointer_alignment.max(PAGE);
        } else if config.import == Import::Auto {
            tracing::warn!(
                gpu = %info.name,
                "VK_EXT_external_memory_host missing: domain memory is staged (copied) around each command"
            );
        }
        let optional = optional_features(i, pdev);
        let limits = Limits {
            groups: l.max_compute_work_group_count,
            max_groups: config.max_groups,
            storage_align: l.min_storage_buffer_offset_alignment.max(4),
            uniform_align: l.min_uniform_buffer_offset_alignment.max(4),
            storage_range: u64::from(l.max_storage_buffer_range),
            uniform_range: u64::from(l.max_uniform_buffer_range),
            timestamps,
            import_align,
            shader: shader_limits(&l, &optional),
        };
        let cache_file = config.pipeline_cache.as_ref().map(|dir| {
            // SAFETY: `pdev` was enumerated from this live instance; the
            // call only returns a struct by value.
            let p = unsafe { i.get_physical_device_properties(pdev) };
            let uuid = p
                .pipeline_cache_uuid
                .iter()
                .fold(String::new(), |mut s, b| {
                    use std::fmt::Write;
                    let _ = write!(s, "{b:02x}");
                    s
                });
            dir.join(format!(
                "vulkan-{:04x}-{:04x}-{uuid}.cache",
                p.vendor_id, p.device_id
            ))
        });
        let cached = cache_file
            .as_ref()
            .map(|f| read_cache(f))
            .unwrap_or_default();
        let gpu = Gpu::open(
            &inst,
            pdev,
            family,
            host_import,
            &optional,
            cache_file.is_some().then_some(&cached[..]),
        )
        .map_err(gpu_err)?;
        tracing::info!(gpu = %info.name, driver = %info.driver, host_import, "vulkan device open");
        Ok(VulkanDevice {
            inst,
            pdev,
            family,
            info,
            cfg: config,
            limits,
            optional,
            host_import,
            gpu,
            ctxs: HashMap::new(),
            current: None,
            preempt: Arc::new(PreemptFlag::default()),
            next_gen: 1,
            broken: None,
            draining: Arc::new(AtomicUsize::new(0)),
            reapers: prep::Reapers::default(),
            log: coproc_core::ratelimit::RateLimit::default(),
            cache_file,
            stray: Vec::new(),
            stray_ctxs: Vec::new(),
            stray_images: Vec::new(),
            stray_samplers: Vec::new(),
            target: Arc::new(std::sync::Mutex::new(None)),
            trials: Arc::new(std::sync::Mutex::new(())),
            runner_builds: 0,
        })
        .inspect(VulkanDevice::set_target)
    }

    /// The current device, for building pipelines on.
    fn target_now(&self) -> prep::Target {
        prep::Target {
            gpu: self.gpu.builder(),
            family: self.family,
            draining: self.draining.clone(),
            timeout: self.cfg.compile_timeout,
            trials: self.trials.clone(),
            reapers: self.reapers.clone(),
        }
    }

    /// Let loading threads build on the current device.
    fn set_target(&self) {
        *self
            .target
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(self.target_now());
    }

    /// Write the pipeline cache to its file (atomically: a temporary file
    /// renamed over the old one). Part of loading firmware, like creating
    /// the pipelines; never inside a job.
    fn save_cache(&self) {
        let Some(file) = &self.cache_file else {
            return;
        };
        let data = self.gpu.cache_data();
        if data.is_empty() {
            return;
        }
        if let Err(e) = write_cache(file, &data) {
            if let Some(suppressed) = self.log.check() {
                tracing::warn!(file = %file.display(), error = %e, suppressed, "pipeline cache not saved");
            }
        }
    }

    /// The GPU in use.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// What firmware is checked against: workgroup and binding limits, and
    /// the optional shader features the device has (and this class turns
    /// on).
    pub fn shader_limits(&self) -> ShaderLimits {
        self.limits.shader
    }

    /// How many firmware loads had their pipelines built and tried on the
    /// runner thread (the device was replaced while they were prepared, or
    /// none could be made on the loading thread); the others were built
    /// off the runner.
    pub fn runner_builds(&self) -> u64 {
        self.runner_builds
    }

    /// Whether out-of-bounds accesses are also contained by the device
    /// (`VK_EXT_robustness2`), on top of the shader rewrite.
    pub fn robustness2(&self) -> bool {
        self.optional.robust2
    }

    /// The limits a shader author needs, by name (`coproc list -o json`).
    fn limit_table(&self) -> std::collections::BTreeMap<String, u64> {
        let l = &self.limits;
        let s = &l.shader;
        let mut t = std::collections::BTreeMap::new();
        let mut put = |k: &str, v: u64| {
            t.insert(k.to_string(), v);
        };
        put("max_workgroup_invocations", u64::from(s.max_invocations));
        for (axis, (&size, &count)) in ["x", "y", "z"].iter().zip(s.max_size.iter().zip(&l.groups))
        {
            put(&format!("max_workgroup_size_{axis}"), u64::from(size));
            put(&format!("max_workgroups_{axis}"), u64::from(count));
        }
        put("max_workgroups_per_dispatch", l.max_groups);
        put(
            "max_workgroup_memory_bytes",
            u64::from(s.max_workgroup_bytes),
        );
        put(
            "max_bind_groups",
            u64::from(s.max_groups.min(coproc_proto::gpu::MAX_GROUPS)),
        );
        put("max_binding", u64::from(coproc_proto::gpu::MAX_BINDING) - 1);
        put(
            "max_storage_buffers_per_pipeline",
            u64::from(s.max_storage_buffers),
        );
        put(
            "max_uniform_buffers_per_pipeline",
            u64::from(s.max_uniform_buffers),
        );
        put("max_images_per_pipeline", u64::from(s.max_images));
        put("max_samplers_per_pipeline", u64::from(s.max_samplers));
        put(
            "max_image_size",
            u64::from(coproc_proto::gpu::MAX_IMAGE_SIZE),
        );
        put("storage_buffer_offset_alignment", l.storage_align);
        put("uniform_buffer_offset_alignment", l.uniform_align);
        put("max_storage_buffer_range", l.storage_range);
        put("max_uniform_buffer_range", l.uniform_range);
        put("push_constant_bytes", u64::from(PUSH_WORDS) * 4);
        put("subgroup_size", u64::from(s.features.subgroup_size));
        t
    }

    /// The optional features in use, by name (`coproc list -o json`).
    fn feature_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .limits
            .shader
            .features
            .names()
            .into_iter()
            .map(String::from)
            .collect();
        if self.optional.robust2 {
            v.push("robustness2".into());
        }
        if self.limits.shader.robust_images {
            v.push("storage-images".into());
        }
        if self.host_import {
            v.push("zero-copy".into());
        }
        v
    }

    /// Whether domain memory is imported zero-copy (else staged).
    pub fn zero_copy(&self) -> bool {
        self.host_import
    }

    fn ctx(&mut self, id: ContextId) -> Result<&mut Ctx, DeviceError> {
        self.ctxs.get_mut(&id).ok_or(DeviceError::NoContext(id))
    }

    /// Make the Vulkan buffer behind a mapping or local range.
    fn make_buf(
        &self,
        backing: &Backing,
        len: u64,
    ) -> Result<(vk::Buffer, vk::DeviceMemory, *mut u8), DeviceError> {
        match backing {
            Backing::Domain { region, offset } => {
                let end = offset.checked_add(len).filter(|&e| e <= region.len());
                if end.is_none() {
                    return Err(DeviceError::BadMapping("range outside the memory".into()));
                }
                // SAFETY: offset + len is inside the region (checked).
                let ptr = unsafe { region.as_ptr().add(*offset as usize) };
                let aligned = (ptr as u64).is_multiple_of(self.limits.import_align)
                    && len.is_multiple_of(self.limits.import_align);
                if self.host_import && aligned {
                    let (b, m) = self.gpu.import(ptr, len)?;
                    Ok((b, m, std::ptr::null_mut()))
                } else {
                    self.gpu.host_visible(len)
                }
            }
            Backing::Local => self.gpu.host_visible(len),
        }
    }
}

impl Device for VulkanDevice {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            class: "vulkan",
            model: self.info.model(),
            preemption: Preemption::Dispatch,
            local_memory: self.cfg.local_memory,
            address_bits: 32,
            iova_base: IOVA_BASE,
            iova_size: IOVA_END - IOVA_BASE,
            page_size: PAGE,
            demand_faults: false,
            max_contexts: self.cfg.max_contexts,
            memory_bytes: self.info.memory_bytes,
            limits: self.limit_table(),
            features: self.feature_names(),
        }
    }

    fn create_context(&mut self, spec: ContextSpec) -> Result<(), DeviceError> {
        if self.ctxs.contains_key(&spec.id) {
            return Err(DeviceError::ContextExists(spec.id));
        }
        if self.ctxs.len() >= self.cfg.max_contexts as usize {
            return Err(DeviceError::Exhausted(format!(
                "{} contexts",
                self.cfg.max_contexts
            )));
        }
        if let Some(b) = &self.broken {
            return Err(DeviceError::Backend(format!("GPU unusable: {b}")));
        }
        let vk = self
            .gpu
            .new_ctx_vk(self.family, self.limits.timestamps.is_some())?;
        self.ctxs.insert(spec.id, Ctx::new(spec.control, vk));
        Ok(())
    }

    fn destroy_context(&mut self, id: ContextId) {
        if self.current == Some(id) {
            self.current = None;
        }
        if let Some(mut ctx) = self.ctxs.remove(&id) {
            destroy_ctx_vk(&self.gpu.device, &mut ctx.vk);
            for b in ctx.bufs.values() {
                destroy_buf(&self.gpu.device, b.buffer, b.memory);
            }
        }
    }

    fn load_firmware(&mut self, id: ContextId, image: &[u8]) -> Result<FirmwareInfo, DeviceError> {
        let prepared = self.firmware_prep().prepare(image)?;
        self.install_firmware(id, prepared)
    }

    fn firmware_prep(&self) -> Arc<dyn FirmwarePrep> {
        Arc::new(prep::Prep {
            limits: self.limits.shader,
            target: self.target.clone(),
        })
    }

    /// Adopts the pipelines the class's `FirmwarePrep` (`prep::Prep`)
    /// built and tried on the loading thread, or builds and tries them
    /// here when they were made for another device (or not made: a
    /// [`crate::shader::ShaderPrep`] image). The specs are kept, so device
    /// loss recovery builds the pipelines again from them.
    fn install_firmware(
        &mut self,
        id: ContextId,
        fw: PreparedFirmware,
    ) -> Result<FirmwareInfo, DeviceError> {
        let (specs, built) = match fw.downcast::<prep::Prepared>() {
            Ok(p) => {
                let p = *p;
                (p.specs, p.built)
            }
            Err(fw) => (
                fw.downcast::<Compiled>()
                    .map_err(|_| {
                        DeviceError::BadFirmware("prepared for another device class".into())
                    })?
                    .pipelines,
                None,
            ),
        };
        let here = self.gpu.owner.id;
        let exists = self.ctxs.contains_key(&id);
        let built = match built {
            Some(b) if b.gpu.owner.id == here => Some(b),
            // No device to build on then, or another one (recreated
            // meanwhile): the runner builds and tries them, the same way.
            other if exists => {
                drop(other);
                self.runner_builds += 1;
                prep::build(&self.target_now(), &specs)
            }
            other => other,
        };
        let mut trial = Ok(());
        let mut pipes = None;
        if let Some(mut b) = built {
            trial = std::mem::replace(&mut b.trial, Ok(()));
            pipes = b.vk.as_mut().map(objects::CtxVk::take_pipes);
            if trial.is_err() {
                // Still in flight: to the reaper with this device, which
                // is recreated below (whether or not the vcoproc is still
                // there).
                self.stray_ctxs.extend(b.vk.take());
                self.stray.extend(b.scratch.take());
                self.stray_images.append(&mut b.images);
                self.stray_samplers.append(&mut b.samplers);
            }
        }
        if let Err(f) = trial {
            if let Some(p) = pipes {
                let mut v = objects::CtxVk::default();
                v.put_pipes(&self.gpu.device, p);
                self.stray_ctxs.push(v);
            }
            let why = match &f {
                Failure::Watchdog => format!(
                    "a trial run of one workgroup did not end within {} ms",
                    self.cfg.compile_timeout.as_millis()
                ),
                Failure::Lost(why) => format!("the GPU failed a trial run: {why}"),
            };
            // The device is recreated as for a hung job; this vcoproc has
            // no firmware afterwards.
            if let Some(ctx) = self.ctxs.get_mut(&id) {
                ctx.firmware = None;
            }
            let _ = self.fail(id, f);
            return Err(DeviceError::BadFirmware(why));
        }
        let Some(ctx) = self.ctxs.get_mut(&id) else {
            if let Some(p) = pipes {
                let mut v = objects::CtxVk::default();
                v.put_pipes(&self.gpu.device, p);
                destroy_ctx_vk(&self.gpu.device, &mut v);
            }
            return Err(DeviceError::NoContext(id));
        };
        ctx.firmware = None;
        match pipes {
            // Built and tried on this very device: adopt its pipelines.
            Some(p) => ctx.vk.put_pipes(&self.gpu.device, p),
            // The objects could not be made for a trial: build the
            // pipelines alone (the driver compiles at the first job).
            None => self.gpu.build_pipes(&mut ctx.vk, &specs)?,
        }
        self.save_cache();
        let ctx = self.ctxs.get_mut(&id).ok_or(DeviceError::NoContext(id))?;
        let code_bytes = specs.iter().map(|s| 4 * s.spirv.len() as u64).sum();
        ctx.firmware = Some(specs.into());
        ctx.slots.clear();
        ctx.push = [0; PUSH_WORDS as usize];
        ctx.aborted = false;
        Ok(FirmwareInfo {
            entry: 0,
            code_bytes,
            data_bytes: 0,
        })
    }

    fn map(&mut self, id: ContextId, m: &Mapping) -> Result<(), DeviceError> {
        if m.iova < IOVA_BASE || m.iova.saturating_add(m.len) > IOVA_END {
            return Err(DeviceError::BadMapping("outside the window".into()));
        }
        self.ctx(id)?;
        let backing = Backing::Domain {
            region: m.region.clone(),
            offset: m.offset,
        };
        let (buffer, memory, ptr) = self.make_buf(&backing, m.len)?;
        let gen = self.next_gen;
        self.next_gen += 1;
        let ctx = self.ctx(id)?;
        ctx.bufs.insert(
            m.iova,
            Buf {
                len: m.len,
                writable: m.perms.write,
                gen,
                backing,
                buffer,
                memory,
                ptr,
            },
        );
        Ok(())
    }

    fn unmap(&mut self, id: ContextId, iova: u64) {
        let d = self.gpu.device.clone();
        if let Some(ctx) = self.ctxs.get_mut(&id) {
            if let Some(b) = ctx.bufs.remove(&iova) {
                // No command is in flight here: each is waited for before
                // the runner regains control, so the pages are out of the
                // GPU's reach when this returns.
                destroy_buf(&d, b.buffer, b.memory);
                if let Backing::Local = b.backing {
                    ctx.local_bytes -= b.len;
                }
            }
        }
    }

    fn switch(&mut self, to: Option<ContextId>) -> SwitchOutcome {
        self.current = to;
        SwitchOutcome::Done
    }

    fn run(&mut self, budget: Duration) -> RunOutcome {
        self.serve(budget)
    }

    fn preempt_handle(&self) -> PreemptHandle {
        PreemptHandle(self.preempt.clone())
    }

    fn reset_context(&mut self, id: ContextId) -> Result<(), DeviceError> {
        let ctx = self.ctx(id)?;
        // Slots and push constants start empty; the queue stays where it is
        // and a job a fault cut short stays aborted, so its signal reports
        // it instead of claiming success.
        ctx.slots.clear();
        ctx.push = [0; PUSH_WORDS as usize];
        ctx.job_gpu_ns = 0;
        for b in ctx.bufs.values() {
            if let Backing::Local = b.backing {
                // SAFETY: local memory is mapped for `len` bytes until freed;
                // no GPU work is in flight.
                unsafe { std::ptr::write_bytes(b.ptr, 0, b.len as usize) };
            }
        }
        Ok(())
    }

    fn alloc_local(&mut self, id: ContextId, iova: u64, len: u64) -> Result<(), DeviceError> {
        if iova < IOVA_BASE || iova.saturating_add(len) > IOVA_END {
            return Err(DeviceError::BadMapping("outside the window".into()));
        }
        let cap = self.cfg.local_memory;
        let used = self.ctx(id)?.local_bytes;
        if used.saturating_add(len) > cap {
            return Err(DeviceError::Exhausted(format!(
                "device-local memory: {used} of {cap} bytes in use"
            )));
        }
        let (buffer, memory, ptr) = self.make_buf(&Backing::Local, len)?;
        let gen = self.next_gen;
        self.next_gen += 1;
        let ctx = self.ctx(id)?;
        ctx.local_bytes += len;
        ctx.bufs.insert(
            iova,
            Buf {
                len,
                writable: true,
                gen,
                backing: Backing::Local,
                buffer,
                memory,
                ptr,
            },
        );
        Ok(())
    }

    fn free_local(&mut self, id: ContextId, iova: u64) {
        self.unmap(id, iova);
    }
}

impl Drop for VulkanDevice {
    fn drop(&mut self) {
        // No loading thread starts building on this device any more.
        *self
            .target
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        // Then every object made here goes, once the queue is idle.
        self.gpu.wait_idle();
        let d = &self.gpu.device;
        for mut v in self.stray_ctxs.drain(..) {
            destroy_ctx_vk(d, &mut v);
        }
        for i in self.stray_images.drain(..) {
            objects::destroy_image(d, &i);
        }
        for s in self.stray_samplers.drain(..) {
            objects::destroy_sampler(d, s);
        }
        for (_, mut ctx) in self.ctxs.drain() {
            destroy_ctx_vk(d, &mut ctx.vk);
            for b in ctx.bufs.values() {
                destroy_buf(d, b.buffer, b.memory);
            }
        }
        for &(b, m) in &self.stray {
            destroy_buf(d, b, m);
        }
        // Old devices and hung trials: no thread of ours stays inside the
        // driver once this device is gone (bounded by how long the driver
        // takes to finish what it runs; a lost device returns at once).
        self.reapers.join_all();
        // The device goes with `self.gpu`'s owner, once no loading thread
        // holds it any more.
    }
}
