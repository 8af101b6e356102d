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

use crate::gpu::{compute_family, GpuError, GpuInfo, Instance};
use crate::shader::{Compiled, PipelineSpec, ShaderLimits, ShaderPrep};
use crate::{Import, VulkanConfig};
use ash::vk;
use coproc_abi::Shared;
use coproc_core::control::ControlBlock;
use coproc_core::device::{
    thread_cpu_time, Capabilities, ContextSpec, Device, DeviceError, FirmwareInfo, FirmwarePrep,
    Preempt, PreemptHandle, Preemption, PreparedFirmware, RunOutcome, StopReason, SwitchOutcome,
};
use coproc_core::fault::{Access, DeviceFault, FaultReason};
use coproc_core::ids::ContextId;
use coproc_core::iova::Mapping;
use coproc_core::memory::Region;
use coproc_proto::gpu::{Command, Status, PUSH_WORDS, SLOTS};
use coproc_proto::queue::{self as q, Consumer, Cqe, Garbage, Sqe};
use std::collections::{BTreeMap, HashMap};
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

/// The logical device and what hangs off it; replaced on device loss.
pub(crate) struct Gpu {
    pub(crate) device: ash::Device,
    queue: vk::Queue,
    host_mem: Option<ash::ext::external_memory_host::Device>,
    mem_props: vk::PhysicalDeviceMemoryProperties,
}

/// Device limits the command processor checks against.
#[derive(Debug, Clone, Copy)]
struct Limits {
    groups: [u32; 3],
    max_groups: u64,
    storage_align: u64,
    /// (ns per tick, valid-bit mask) when timestamps work on the queue.
    timestamps: Option<(f64, u64)>,
    import_align: u64,
    shader: ShaderLimits,
}

pub(crate) struct Pipe {
    module: vk::ShaderModule,
    set_layout: vk::DescriptorSetLayout,
    layout: vk::PipelineLayout,
    pipeline: vk::Pipeline,
    set: vk::DescriptorSet,
}

/// A context's Vulkan objects (all on the current [`Gpu`]).
#[derive(Default)]
pub(crate) struct CtxVk {
    cmd_pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
    sem: vk::Semaphore,
    value: u64,
    query: Option<vk::QueryPool>,
    desc_pool: Option<vk::DescriptorPool>,
    pipes: Vec<Pipe>,
}

enum Backing {
    /// Domain memory: `region` from `offset`.
    Domain { region: Arc<Region>, offset: u64 },
    /// Device-local memory of the context.
    Local,
}

struct Buf {
    len: u64,
    writable: bool,
    /// Changes whenever the iova is mapped anew.
    gen: u64,
    backing: Backing,
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    /// The host mapping of staged and local memory (null: imported).
    ptr: *mut u8,
}

impl Buf {
    fn staged(&self) -> bool {
        matches!(self.backing, Backing::Domain { .. }) && !self.ptr.is_null()
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    iova: u64,
    len: u64,
    gen: u64,
}

/// The submission ring a context serves: the device side of a
/// `coproc_abi` queue, reached only through its typed accessor.
struct Ring {
    iova: u64,
    gen: u64,
    region: Arc<Region>,
    /// Offset of the queue header in `region`.
    base: u64,
    /// Bytes of the queue (header and both rings).
    len: u64,
    ring: Consumer,
}

impl Ring {
    /// The queue's memory (checked to fit the region at attach).
    fn mem(region: &Region, base: u64, len: u64) -> Option<Shared<'_>> {
        coproc_core::shared::view(region).sub(base, len).ok()
    }

    /// Submissions waiting, or garbage (counted by the consumer).
    fn pending(&mut self) -> Result<u32, Garbage> {
        match Self::mem(&self.region, self.base, self.len) {
            Some(m) => self.ring.pending(&m),
            None => Ok(0),
        }
    }

    /// The submission at the head.
    fn sqe(&self) -> Sqe {
        match Self::mem(&self.region, self.base, self.len) {
            Some(m) => self.ring.peek(&m),
            None => Sqe::default(),
        }
    }

    /// Give the head's slot back.
    fn consume(&mut self) {
        if let Some(m) = Self::mem(&self.region, self.base, self.len) {
            self.ring.consume(&m);
        }
    }

    /// Post a completion if the ring has room.
    fn post(&mut self, c: &Cqe) -> bool {
        Self::mem(&self.region, self.base, self.len).is_some_and(|m| self.ring.push(&m, c))
    }

    fn cq_full(&self) -> bool {
        Self::mem(&self.region, self.base, self.len).is_none_or(|m| self.ring.cq_full(&m))
    }
}

struct Ctx {
    control: Arc<ControlBlock>,
    firmware: Option<Arc<[PipelineSpec]>>,
    vk: CtxVk,
    bufs: BTreeMap<u64, Buf>,
    local_bytes: u64,
    slots: [Option<Slot>; SLOTS as usize],
    push: [u32; PUSH_WORDS as usize],
    ring: Option<Ring>,
    aborted: bool,
    job_gpu_ns: u64,
    seq: u32,
    posted: u32,
    garbage: u32,
    executed: u32,
    refused: u32,
}

impl Ctx {
    /// The first domain buffer `work` uses whose mapping was revoked (its
    /// view trapped), as the fault to report.
    fn trapped(&self, work: &Work) -> Option<DeviceFault> {
        let used: Vec<(u64, bool)> = match work {
            Work::Dispatch { binds, .. } => binds
                .iter()
                .map(|&(_, start, _, _)| (start, self.bufs[&start].writable))
                .collect(),
            Work::Copy { src, dst, .. } => vec![(src.0, false), (dst.0, true)],
            Work::Fill { dst, .. } => vec![(dst.0, true)],
        };
        used.into_iter()
            .find_map(|(start, write)| match &self.bufs.get(&start)?.backing {
                Backing::Domain { region, .. } if region.is_trapped() => {
                    Some(revoked(start, write))
                }
                _ => None,
            })
    }

    /// The buffer holding `[iova, iova + len)` (len 0: to its end), as
    /// (buffer iova, offset in it, length).
    fn resolve(&self, iova: u64, len: u64) -> Option<(u64, u64, u64)> {
        let (&start, b) = self.bufs.range(..=iova).next_back()?;
        let off = iova - start;
        if off >= b.len {
            return None;
        }
        let len = if len == 0 { b.len - off } else { len };
        (off + len <= b.len).then_some((start, off, len))
    }
}

/// What one command asks the GPU to do, resolved to buffers.
enum Work {
    Dispatch {
        pipe: usize,
        groups: [u32; 3],
        /// (binding, buffer iova, offset, len)
        binds: Vec<(u32, u64, u64, u64)>,
    },
    Copy {
        src: (u64, u64),
        dst: (u64, u64),
        len: u64,
    },
    Fill {
        dst: (u64, u64),
        len: u64,
        value: u32,
    },
}

enum Failure {
    Watchdog,
    Lost(String),
}

/// A command's fate.
enum Step {
    Done,
    Refused(Status),
    Fault(DeviceFault),
}

/// The device's limits and, where its compute queue has timestamps, (ns
/// per tick, valid-bit mask).
pub(crate) fn queue_limits(
    i: &ash::Instance,
    pdev: vk::PhysicalDevice,
    family: u32,
) -> (vk::PhysicalDeviceLimits, Option<(f64, u64)>) {
    // SAFETY: `pdev` came from this instance; the calls only fill locals.
    let (props, fams) = unsafe {
        (
            i.get_physical_device_properties(pdev),
            i.get_physical_device_queue_family_properties(pdev),
        )
    };
    let l = props.limits;
    let valid_bits = fams
        .get(family as usize)
        .map_or(0, |f| f.timestamp_valid_bits);
    let timestamps = (valid_bits > 0 && l.timestamp_period > 0.0).then(|| {
        let mask = if valid_bits >= 64 {
            u64::MAX
        } else {
            (1u64 << valid_bits) - 1
        };
        (f64::from(l.timestamp_period), mask)
    });
    (l, timestamps)
}

/// The `vulkan` device.
pub struct VulkanDevice {
    inst: Arc<Instance>,
    pdev: vk::PhysicalDevice,
    family: u32,
    info: GpuInfo,
    cfg: VulkanConfig,
    limits: Limits,
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
    /// Limits the log lines a domain's faults cause.
    log: coproc_core::ratelimit::RateLimit,
}

impl std::fmt::Debug for VulkanDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanDevice")
            .field("gpu", &self.info.name)
            .field("contexts", &self.ctxs.len())
            .finish_non_exhaustive()
    }
}

fn vkerr(what: &'static str) -> impl Fn(vk::Result) -> DeviceError {
    move |e| DeviceError::Backend(format!("{what}: {e}"))
}

fn gpu_err(e: GpuError) -> DeviceError {
    DeviceError::Backend(e.to_string())
}

impl Gpu {
    pub(crate) fn open(
        inst: &Instance,
        pdev: vk::PhysicalDevice,
        family: u32,
        host_import: bool,
    ) -> Result<Gpu, GpuError> {
        let i = &inst.instance;
        let prio = [1.0f32];
        let qinfo = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(family)
            .queue_priorities(&prio)];
        let features = vk::PhysicalDeviceFeatures::default().robust_buffer_access(true);
        let mut f12 = vk::PhysicalDeviceVulkan12Features::default().timeline_semaphore(true);
        let exts = [ash::ext::external_memory_host::NAME.as_ptr()];
        let mut info = vk::DeviceCreateInfo::default()
            .queue_create_infos(&qinfo)
            .enabled_features(&features)
            .push_next(&mut f12);
        if host_import {
            info = info.enabled_extension_names(&exts);
        }
        // SAFETY: `pdev` belongs to this instance; the create info borrows
        // locals that outlive the call.
        let device = unsafe { i.create_device(pdev, &info, None) }
            .map_err(|e| GpuError::Vk("vkCreateDevice", e))?;
        // SAFETY: the family and index were requested above.
        let queue = unsafe { device.get_device_queue(family, 0) };
        let host_mem = host_import.then(|| ash::ext::external_memory_host::Device::new(i, &device));
        // SAFETY: as above.
        let mem_props = unsafe { i.get_physical_device_memory_properties(pdev) };
        Ok(Gpu {
            device,
            queue,
            host_mem,
            mem_props,
        })
    }

    fn memory_type(&self, bits: u32, want: vk::MemoryPropertyFlags) -> Option<u32> {
        (0..self.mem_props.memory_type_count).find(|&t| {
            bits & (1 << t) != 0
                && self.mem_props.memory_types[t as usize]
                    .property_flags
                    .contains(want)
        })
    }

    pub(crate) fn new_ctx_vk(&self, family: u32, timestamps: bool) -> Result<CtxVk, DeviceError> {
        let d = &self.device;
        let mut v = CtxVk::default();
        let r = (|| {
            // SAFETY: plain object creation on a live device; every handle
            // created is stored in `v` and destroyed by `destroy_ctx_vk`.
            unsafe {
                v.cmd_pool = d
                    .create_command_pool(
                        &vk::CommandPoolCreateInfo::default()
                            .queue_family_index(family)
                            .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER),
                        None,
                    )
                    .map_err(vkerr("command pool"))?;
                v.cmd = d
                    .allocate_command_buffers(
                        &vk::CommandBufferAllocateInfo::default()
                            .command_pool(v.cmd_pool)
                            .level(vk::CommandBufferLevel::PRIMARY)
                            .command_buffer_count(1),
                    )
                    .map_err(vkerr("command buffer"))?[0];
                let mut ty = vk::SemaphoreTypeCreateInfo::default()
                    .semaphore_type(vk::SemaphoreType::TIMELINE)
                    .initial_value(0);
                v.sem = d
                    .create_semaphore(&vk::SemaphoreCreateInfo::default().push_next(&mut ty), None)
                    .map_err(vkerr("timeline semaphore"))?;
                if timestamps {
                    v.query = Some(
                        d.create_query_pool(
                            &vk::QueryPoolCreateInfo::default()
                                .query_type(vk::QueryType::TIMESTAMP)
                                .query_count(2),
                            None,
                        )
                        .map_err(vkerr("query pool"))?,
                    );
                }
            }
            Ok(())
        })();
        match r {
            Ok(()) => Ok(v),
            Err(e) => {
                destroy_ctx_vk(d, &mut v);
                Err(e)
            }
        }
    }

    /// Build the pipelines of `specs` into `v` (replacing any).
    pub(crate) fn build_pipes(
        &self,
        v: &mut CtxVk,
        specs: &[PipelineSpec],
    ) -> Result<(), DeviceError> {
        let d = &self.device;
        destroy_pipes(d, v);
        let descriptors: u32 = specs.iter().map(|s| s.bindings.len() as u32).sum();
        let sizes = [vk::DescriptorPoolSize {
            ty: vk::DescriptorType::STORAGE_BUFFER,
            descriptor_count: descriptors.max(1),
        }];
        // SAFETY: object creation on a live device; the create infos borrow
        // locals; every handle lands in `v` so `destroy_pipes` frees it on
        // any error.
        unsafe {
            v.desc_pool = Some(
                d.create_descriptor_pool(
                    &vk::DescriptorPoolCreateInfo::default()
                        .max_sets(specs.len() as u32)
                        .pool_sizes(&sizes),
                    None,
                )
                .map_err(vkerr("descriptor pool"))?,
            );
        }
        for spec in specs {
            let r = self.build_pipe(v, spec);
            if let Err(e) = r {
                destroy_pipes(d, v);
                return Err(e);
            }
        }
        Ok(())
    }

    fn build_pipe(&self, v: &mut CtxVk, spec: &PipelineSpec) -> Result<(), DeviceError> {
        let d = &self.device;
        let binds: Vec<_> = spec
            .bindings
            .iter()
            .map(|b| {
                vk::DescriptorSetLayoutBinding::default()
                    .binding(b.binding)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
            })
            .collect();
        let mut p = Pipe {
            module: vk::ShaderModule::null(),
            set_layout: vk::DescriptorSetLayout::null(),
            layout: vk::PipelineLayout::null(),
            pipeline: vk::Pipeline::null(),
            set: vk::DescriptorSet::null(),
        };
        let name = std::ffi::CString::new(spec.name.as_str())
            .map_err(|_| DeviceError::BadFirmware("entry point name with NUL".into()))?;
        // SAFETY: object creation on a live device from naga-written SPIR-V
        // of a validated module; infos borrow locals; the handles go into
        // `v.pipes` (even half-built) so they are destroyed on error.
        let r = unsafe {
            (|| {
                p.module = d
                    .create_shader_module(
                        &vk::ShaderModuleCreateInfo::default().code(&spec.spirv),
                        None,
                    )
                    .map_err(vkerr("shader module"))?;
                p.set_layout = d
                    .create_descriptor_set_layout(
                        &vk::DescriptorSetLayoutCreateInfo::default().bindings(&binds),
                        None,
                    )
                    .map_err(vkerr("descriptor set layout"))?;
                let ranges = [vk::PushConstantRange {
                    stage_flags: vk::ShaderStageFlags::COMPUTE,
                    offset: 0,
                    size: spec.push_bytes.div_ceil(4) * 4,
                }];
                let layouts = [p.set_layout];
                let mut li = vk::PipelineLayoutCreateInfo::default().set_layouts(&layouts);
                if spec.push_bytes > 0 {
                    li = li.push_constant_ranges(&ranges);
                }
                p.layout = d
                    .create_pipeline_layout(&li, None)
                    .map_err(vkerr("pipeline layout"))?;
                let stage = vk::PipelineShaderStageCreateInfo::default()
                    .stage(vk::ShaderStageFlags::COMPUTE)
                    .module(p.module)
                    .name(&name);
                let ci = [vk::ComputePipelineCreateInfo::default()
                    .stage(stage)
                    .layout(p.layout)];
                p.pipeline = d
                    .create_compute_pipelines(vk::PipelineCache::null(), &ci, None)
                    .map_err(|(_, e)| DeviceError::BadFirmware(format!("pipeline: {e}")))?[0];
                p.set = d
                    .allocate_descriptor_sets(
                        &vk::DescriptorSetAllocateInfo::default()
                            .descriptor_pool(v.desc_pool.unwrap_or_default())
                            .set_layouts(&layouts),
                    )
                    .map_err(vkerr("descriptor set"))?[0];
                Ok(())
            })()
        };
        v.pipes.push(p);
        r
    }

    /// A buffer over `len` bytes of host memory at `ptr`, imported.
    fn import(
        &self,
        ptr: *mut u8,
        len: u64,
    ) -> Result<(vk::Buffer, vk::DeviceMemory), DeviceError> {
        let d = &self.device;
        let hm = self
            .host_mem
            .as_ref()
            .ok_or(DeviceError::Unsupported("host memory import"))?;
        let ht = vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT;
        let mut props = vk::MemoryHostPointerPropertiesEXT::default();
        // SAFETY: `ptr..ptr+len` is a live mapping of the domain's memfd
        // held by the caller's Arc<Region> for as long as the buffer exists;
        // the call only inspects it.
        unsafe {
            (hm.fp().get_memory_host_pointer_properties_ext)(
                hm.device(),
                ht,
                ptr.cast_const().cast(),
                &mut props,
            )
        }
        .result()
        .map_err(vkerr("host pointer properties"))?;
        let mut ext = vk::ExternalMemoryBufferCreateInfo::default().handle_types(ht);
        let bi = vk::BufferCreateInfo::default()
            .size(len)
            .usage(usage())
            .sharing_mode(vk::SharingMode::EXCLUSIVE)
            .push_next(&mut ext);
        // SAFETY: buffer creation on a live device.
        let buffer = unsafe { d.create_buffer(&bi, None) }.map_err(vkerr("buffer"))?;
        // SAFETY: `buffer` was just created on `d`.
        let req = unsafe { d.get_buffer_memory_requirements(buffer) };
        let ty = self.memory_type(
            req.memory_type_bits & props.memory_type_bits,
            vk::MemoryPropertyFlags::empty(),
        );
        let Some(ty) = ty.filter(|_| req.size <= len) else {
            // SAFETY: unused buffer of this device.
            unsafe { d.destroy_buffer(buffer, None) };
            return Err(DeviceError::BadMapping(
                "no memory type can import this range".into(),
            ));
        };
        let mut imp = vk::ImportMemoryHostPointerInfoEXT::default()
            .handle_type(ht)
            .host_pointer(ptr.cast());
        let ai = vk::MemoryAllocateInfo::default()
            .allocation_size(len)
            .memory_type_index(ty)
            .push_next(&mut imp);
        // SAFETY: as for the properties call: the host range outlives the
        // memory object (the Buf holding both keeps the Region alive and
        // frees the memory before dropping it, or hands both to the reaper).
        let memory = match unsafe { d.allocate_memory(&ai, None) } {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: unused buffer of this device.
                unsafe { d.destroy_buffer(buffer, None) };
                return Err(DeviceError::BadMapping(format!("import: {e}")));
            }
        };
        // SAFETY: both belong to `d`; memory is large enough (checked).
        if let Err(e) = unsafe { d.bind_buffer_memory(buffer, memory, 0) } {
            // SAFETY: unused objects of this device.
            unsafe {
                d.destroy_buffer(buffer, None);
                d.free_memory(memory, None);
            }
            return Err(DeviceError::BadMapping(format!("bind: {e}")));
        }
        Ok((buffer, memory))
    }

    /// A buffer of `len` bytes of host-visible memory (device-local where
    /// the device has such a type), mapped, zeroed.
    pub(crate) fn host_visible(
        &self,
        len: u64,
    ) -> Result<(vk::Buffer, vk::DeviceMemory, *mut u8), DeviceError> {
        let d = &self.device;
        let bi = vk::BufferCreateInfo::default()
            .size(len)
            .usage(usage())
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: buffer creation on a live device.
        let buffer = unsafe { d.create_buffer(&bi, None) }.map_err(vkerr("buffer"))?;
        // SAFETY: `buffer` was just created on `d`.
        let req = unsafe { d.get_buffer_memory_requirements(buffer) };
        let hv = vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
        let ty = self
            .memory_type(
                req.memory_type_bits,
                hv | vk::MemoryPropertyFlags::DEVICE_LOCAL,
            )
            .or_else(|| self.memory_type(req.memory_type_bits, hv));
        let Some(ty) = ty else {
            // SAFETY: unused buffer of this device.
            unsafe { d.destroy_buffer(buffer, None) };
            return Err(DeviceError::Exhausted("no host-visible memory type".into()));
        };
        let ai = vk::MemoryAllocateInfo::default()
            .allocation_size(req.size)
            .memory_type_index(ty);
        // SAFETY: allocation on a live device; on failure the buffer is
        // destroyed.
        let memory = match unsafe { d.allocate_memory(&ai, None) } {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: unused buffer of this device.
                unsafe { d.destroy_buffer(buffer, None) };
                return Err(DeviceError::Exhausted(format!("device memory: {e}")));
            }
        };
        // SAFETY: memory of `d`, host-visible, not mapped yet; the mapping
        // covers `req.size >= len` bytes and lives until the memory is
        // freed.
        let r = unsafe {
            d.bind_buffer_memory(buffer, memory, 0)
                .and_then(|()| d.map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty()))
        };
        match r {
            Ok(p) => {
                let p = p.cast::<u8>();
                // SAFETY: `p` maps at least `len` bytes (see above).
                unsafe { std::ptr::write_bytes(p, 0, len as usize) };
                Ok((buffer, memory, p))
            }
            Err(e) => {
                // SAFETY: unused objects of this device.
                unsafe {
                    d.destroy_buffer(buffer, None);
                    d.free_memory(memory, None);
                }
                Err(DeviceError::Exhausted(format!("map: {e}")))
            }
        }
    }
}

/// Why [`execute`] failed.
pub(crate) enum ExecError {
    /// Not finished within the bound (and no old device was draining).
    Timeout,
    /// Recording, submitting or waiting failed (device loss included).
    Failed(String),
}

/// Record one command with `record` between two timestamps and a barrier
/// that makes its writes visible to the host, submit it alone with a
/// timeline-semaphore signal, and wait for it at most `timeout` (longer
/// while an old device is `draining`: that time is not this command's).
/// Returns the GPU nanoseconds between the timestamps (0 without them).
/// Shared by the device's command processor and the direct baseline.
pub(crate) fn execute(
    gpu: &Gpu,
    v: &mut CtxVk,
    timestamps: Option<(f64, u64)>,
    timeout: Duration,
    draining: &AtomicUsize,
    record: impl FnOnce(&ash::Device, vk::CommandBuffer, &[Pipe]),
) -> Result<u64, ExecError> {
    let d = &gpu.device;
    let cmd = v.cmd;
    let query = v.query.filter(|_| timestamps.is_some());
    fn failed(what: &'static str) -> impl Fn(vk::Result) -> ExecError {
        move |e| ExecError::Failed(format!("{what}: {e}"))
    }
    // SAFETY: recording into the context's own command buffer, which is not
    // in flight (every submission is waited for before the next is
    // recorded, and only the owner's thread records); all handles belong
    // to `d`.
    unsafe {
        d.reset_command_buffer(cmd, vk::CommandBufferResetFlags::empty())
            .map_err(failed("reset"))?;
        d.begin_command_buffer(
            cmd,
            &vk::CommandBufferBeginInfo::default()
                .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
        )
        .map_err(failed("begin"))?;
        if let Some(qp) = query {
            d.cmd_reset_query_pool(cmd, qp, 0, 2);
            d.cmd_write_timestamp(cmd, vk::PipelineStageFlags::TOP_OF_PIPE, qp, 0);
        }
    }
    record(d, cmd, &v.pipes);
    let mb = [vk::MemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::SHADER_WRITE | vk::AccessFlags::TRANSFER_WRITE)
        .dst_access_mask(vk::AccessFlags::HOST_READ)];
    // SAFETY: as above.
    unsafe {
        d.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::COMPUTE_SHADER | vk::PipelineStageFlags::TRANSFER,
            vk::PipelineStageFlags::HOST,
            vk::DependencyFlags::empty(),
            &mb,
            &[],
            &[],
        );
        if let Some(qp) = query {
            d.cmd_write_timestamp(cmd, vk::PipelineStageFlags::BOTTOM_OF_PIPE, qp, 1);
        }
        d.end_command_buffer(cmd).map_err(failed("end"))?;
    }
    v.value += 1;
    let cmds = [cmd];
    let sems = [v.sem];
    let vals = [v.value];
    let mut tl = vk::TimelineSemaphoreSubmitInfo::default().signal_semaphore_values(&vals);
    let si = [vk::SubmitInfo::default()
        .command_buffers(&cmds)
        .signal_semaphores(&sems)
        .push_next(&mut tl)];
    // SAFETY: the command buffer is fully recorded and not in flight; the
    // queue is used by the owner's thread only.
    unsafe { d.queue_submit(gpu.queue, &si, vk::Fence::null()) }.map_err(failed("submit"))?;
    let wi = vk::SemaphoreWaitInfo::default()
        .semaphores(&sems)
        .values(&vals);
    let bound = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    loop {
        // SAFETY: waits on the context's own semaphore.
        match unsafe { d.wait_semaphores(&wi, bound) } {
            Ok(()) => break,
            // An old device still draining a hung job may hold the hardware
            // (lavapipe shares its threads between devices): the time is not
            // this command's to blame.
            Err(vk::Result::TIMEOUT) if draining.load(Ordering::Acquire) > 0 => {}
            Err(vk::Result::TIMEOUT) => return Err(ExecError::Timeout),
            Err(e) => return Err(failed("wait")(e)),
        }
    }
    let (Some(qp), Some((period, mask))) = (query, timestamps) else {
        return Ok(0);
    };
    let mut t = [0u64; 2];
    // SAFETY: both queries were written by the completed submission.
    let r = unsafe {
        d.get_query_pool_results(
            qp,
            0,
            &mut t,
            vk::QueryResultFlags::TYPE_64 | vk::QueryResultFlags::WAIT,
        )
    };
    Ok(r.map_or(0, |()| {
        ((t[1].wrapping_sub(t[0]) & mask) as f64 * period) as u64
    }))
}

/// Record a dispatch of `pipe` with `binds` (binding, buffer, offset, len)
/// and `push` bytes of push constants.
pub(crate) fn record_dispatch(
    d: &ash::Device,
    cmd: vk::CommandBuffer,
    pipe: &Pipe,
    binds: &[(u32, vk::Buffer, u64, u64)],
    push: &[u8],
    groups: [u32; 3],
) {
    let infos: Vec<[vk::DescriptorBufferInfo; 1]> = binds
        .iter()
        .map(|&(_, buffer, offset, range)| {
            [vk::DescriptorBufferInfo {
                buffer,
                offset,
                range,
            }]
        })
        .collect();
    let writes: Vec<_> = binds
        .iter()
        .zip(&infos)
        .map(|(b, info)| {
            vk::WriteDescriptorSet::default()
                .dst_set(pipe.set)
                .dst_binding(b.0)
                .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                .buffer_info(info)
        })
        .collect();
    // SAFETY: called from `execute`'s recording, on the command buffer of
    // the pipeline's own context; the descriptor set is the pipeline's own
    // and not in use (no submission of that context is in flight); the
    // callers checked each range lies inside its buffer and each binding
    // is one the pipeline declares; `push` is at most the pipeline's push
    // range.
    unsafe {
        d.update_descriptor_sets(&writes, &[]);
        d.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, pipe.pipeline);
        d.cmd_bind_descriptor_sets(
            cmd,
            vk::PipelineBindPoint::COMPUTE,
            pipe.layout,
            0,
            &[pipe.set],
            &[],
        );
        if !push.is_empty() {
            d.cmd_push_constants(cmd, pipe.layout, vk::ShaderStageFlags::COMPUTE, 0, push);
        }
        d.cmd_dispatch(cmd, groups[0], groups[1], groups[2]);
    }
}

fn usage() -> vk::BufferUsageFlags {
    vk::BufferUsageFlags::STORAGE_BUFFER
        | vk::BufferUsageFlags::TRANSFER_SRC
        | vk::BufferUsageFlags::TRANSFER_DST
}

fn destroy_pipes(d: &ash::Device, v: &mut CtxVk) {
    // SAFETY: the handles belong to `d` and no submission using them is in
    // flight (commands complete before the runner calls back in, and a
    // lost device is idle or reaped by `reap`); null handles are ignored by
    // Vulkan.
    unsafe {
        for p in v.pipes.drain(..) {
            d.destroy_pipeline(p.pipeline, None);
            d.destroy_pipeline_layout(p.layout, None);
            d.destroy_descriptor_set_layout(p.set_layout, None);
            d.destroy_shader_module(p.module, None);
        }
        if let Some(pool) = v.desc_pool.take() {
            d.destroy_descriptor_pool(pool, None);
        }
    }
}

pub(crate) fn destroy_ctx_vk(d: &ash::Device, v: &mut CtxVk) {
    destroy_pipes(d, v);
    // SAFETY: as for `destroy_pipes`.
    unsafe {
        if let Some(qp) = v.query.take() {
            d.destroy_query_pool(qp, None);
        }
        d.destroy_semaphore(v.sem, None);
        d.destroy_command_pool(v.cmd_pool, None);
    }
    *v = CtxVk::default();
}

pub(crate) fn destroy_buf(d: &ash::Device, buffer: vk::Buffer, memory: vk::DeviceMemory) {
    // SAFETY: as for `destroy_pipes`; freeing memory also unmaps it.
    unsafe {
        d.destroy_buffer(buffer, None);
        d.free_memory(memory, None);
    }
}

/// What a lost or hung device still holds, for the reaper.
struct Remains {
    device: ash::Device,
    ctxs: Vec<CtxVk>,
    bufs: Vec<(vk::Buffer, vk::DeviceMemory)>,
    /// Domain memory the old device may still touch.
    _regions: Vec<Arc<Region>>,
    _inst: Arc<Instance>,
    /// Counts this device while it drains.
    draining: Arc<AtomicUsize>,
}

// SAFETY: only handles (integers), the ash function table and Arcs of Send
// + Sync data; used by exactly one reaper thread.
unsafe impl Send for Remains {}

fn reap(mut r: Remains) {
    // SAFETY: waits for the old device's queue to drain (returns at once
    // with an error if it is lost), then destroys its objects and itself;
    // no other thread uses this device any more.
    unsafe {
        let _ = r.device.device_wait_idle();
        r.draining.fetch_sub(1, Ordering::AcqRel);
        for v in &mut r.ctxs {
            destroy_ctx_vk(&r.device, v);
        }
        for &(b, m) in &r.bufs {
            destroy_buf(&r.device, b, m);
        }
        r.device.destroy_device(None);
    }
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
            // SAFETY: as above; the chain points at a live local.
            unsafe { i.get_physical_device_properties2(pdev, &mut p2) };
            import_align = hp.min_imported_host_pointer_alignment.max(PAGE);
        } else if config.import == Import::Auto {
            tracing::warn!(
                gpu = %info.name,
                "VK_EXT_external_memory_host missing: domain memory is staged (copied) around each command"
            );
        }
        let limits = Limits {
            groups: l.max_compute_work_group_count,
            max_groups: config.max_groups,
            storage_align: l.min_storage_buffer_offset_alignment.max(4),
            timestamps,
            import_align,
            shader: ShaderLimits {
                max_invocations: l.max_compute_work_group_invocations,
                max_size: l.max_compute_work_group_size,
            },
        };
        let gpu = Gpu::open(&inst, pdev, family, host_import).map_err(gpu_err)?;
        tracing::info!(gpu = %info.name, driver = %info.driver, host_import, "vulkan device open");
        Ok(VulkanDevice {
            inst,
            pdev,
            family,
            info,
            cfg: config,
            limits,
            host_import,
            gpu,
            ctxs: HashMap::new(),
            current: None,
            preempt: Arc::new(PreemptFlag::default()),
            next_gen: 1,
            broken: None,
            draining: Arc::new(AtomicUsize::new(0)),
            log: coproc_core::ratelimit::RateLimit::default(),
        })
    }

    /// The GPU in use.
    pub fn info(&self) -> &GpuInfo {
        &self.info
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

    /// Decode and carry out one command of context `id`.
    fn step(&mut self, id: ContextId, sqe: &Sqe, gpu_ns: &mut u64) -> Step {
        let cmd = match Command::decode(sqe) {
            Ok(c) => c,
            Err(_) => return Step::Refused(Status::BadCommand),
        };
        let limits = self.limits;
        let Some(ctx) = self.ctxs.get_mut(&id) else {
            return Step::Refused(Status::NoFirmware);
        };
        let work = match cmd {
            Command::Bind { slot, iova, len } => {
                return match ctx.resolve(u64::from(iova), u64::from(len)) {
                    Some((start, off, len)) => {
                        ctx.slots[slot as usize] = Some(Slot {
                            iova: start + off,
                            len,
                            gen: ctx.bufs[&start].gen,
                        });
                        Step::Done
                    }
                    None => Step::Refused(Status::BadIova),
                };
            }
            Command::Push {
                offset,
                count,
                values,
            } => {
                let o = offset as usize;
                ctx.push[o..o + count as usize].copy_from_slice(&values[..count as usize]);
                return Step::Done;
            }
            Command::Barrier | Command::Signal { .. } => return Step::Done,
            Command::Dispatch { pipeline, groups } => {
                let Some(fw) = ctx.firmware.clone() else {
                    return Step::Refused(Status::NoFirmware);
                };
                let Some(spec) = fw.get(pipeline as usize) else {
                    return Step::Refused(Status::BadPipeline);
                };
                let total = groups.iter().map(|&g| u64::from(g)).product::<u64>();
                if groups.contains(&0)
                    || groups.iter().zip(limits.groups).any(|(&g, m)| g > m)
                    || total > limits.max_groups
                {
                    return Step::Refused(Status::BadGroups);
                }
                let mut binds = Vec::with_capacity(spec.bindings.len());
                for b in &spec.bindings {
                    let Some(s) = ctx.slots[b.binding as usize] else {
                        return Step::Refused(Status::BadBinding);
                    };
                    let Some((start, off, len)) = ctx.resolve(s.iova, s.len) else {
                        return Step::Fault(revoked(s.iova, b.writable));
                    };
                    let buf = &ctx.bufs[&start];
                    if buf.gen != s.gen {
                        return Step::Fault(revoked(s.iova, b.writable));
                    }
                    if len < b.min_bytes || !off.is_multiple_of(limits.storage_align) {
                        return Step::Refused(Status::BadBinding);
                    }
                    if b.writable && !buf.writable {
                        return Step::Refused(Status::ReadOnly);
                    }
                    binds.push((b.binding, start, off, len));
                }
                Work::Dispatch {
                    pipe: pipeline as usize,
                    groups,
                    binds,
                }
            }
            Command::Copy { src, dst, len } => {
                if len == 0 {
                    return Step::Done;
                }
                let (Some(s), Some(d)) = (
                    ctx.resolve(u64::from(src), u64::from(len)),
                    ctx.resolve(u64::from(dst), u64::from(len)),
                ) else {
                    return Step::Refused(Status::BadIova);
                };
                if !ctx.bufs[&d.0].writable {
                    return Step::Refused(Status::ReadOnly);
                }
                if s.0 == d.0 && s.1 < d.1 + d.2 && d.1 < s.1 + s.2 {
                    return Step::Refused(Status::BadCommand);
                }
                Work::Copy {
                    src: (s.0, s.1),
                    dst: (d.0, d.1),
                    len: u64::from(len),
                }
            }
            Command::Fill { dst, len, value } => {
                if len == 0 {
                    return Step::Done;
                }
                let Some(d) = ctx.resolve(u64::from(dst), u64::from(len)) else {
                    return Step::Refused(Status::BadIova);
                };
                if !ctx.bufs[&d.0].writable {
                    return Step::Refused(Status::ReadOnly);
                }
                Work::Fill {
                    dst: (d.0, d.1),
                    len: u64::from(len),
                    value,
                }
            }
        };
        // A mapping revoked meanwhile (its view trapped, the runner's
        // tidy-up still to come) is gone: the command faults before it runs,
        // and a command that was running when the revoke came faults after
        // it, since part of its work went to the throwaway pages.
        if let Some(f) = self.ctxs.get(&id).and_then(|c| c.trapped(&work)) {
            return Step::Fault(f);
        }
        match self.submit(id, &work) {
            Ok(ns) => {
                *gpu_ns += ns;
                if let Some(f) = self.ctxs.get(&id).and_then(|c| c.trapped(&work)) {
                    return Step::Fault(f);
                }
                if let Some(c) = self.ctxs.get_mut(&id) {
                    c.executed += 1;
                    c.job_gpu_ns += ns;
                }
                Step::Done
            }
            Err(f) => {
                let reason = match &f {
                    Failure::Watchdog => FaultReason::Watchdog,
                    Failure::Lost(_) => FaultReason::DeviceLost,
                };
                // A domain can cause these as often as the watchdog allows.
                if let Some(suppressed) = self.log.check() {
                    match &f {
                        Failure::Lost(why) => tracing::warn!(
                            vcoproc = %id, %why, suppressed,
                            "GPU device lost; recreating it"
                        ),
                        Failure::Watchdog => tracing::warn!(
                            vcoproc = %id, suppressed,
                            "GPU command past the watchdog; recreating the device"
                        ),
                    }
                }
                self.recover(id);
                Step::Fault(DeviceFault {
                    addr: None,
                    access: Access::None,
                    pc: None,
                    reason,
                })
            }
        }
    }

    /// Record, submit and wait for one command; GPU nanoseconds it took.
    fn submit(&mut self, id: ContextId, work: &Work) -> Result<u64, Failure> {
        let ts = self.limits.timestamps;
        let watchdog = self.cfg.watchdog;
        let ctx = self
            .ctxs
            .get_mut(&id)
            .ok_or(Failure::Lost("no context".into()))?;
        // Staged buffers this command touches: (buffer iova, offset, len,
        // copy back).
        let staged: Vec<(u64, u64, u64, bool)> = match work {
            Work::Dispatch { pipe, binds, .. } => {
                let fw = ctx.firmware.as_ref();
                binds
                    .iter()
                    .filter(|b| ctx.bufs[&b.1].staged())
                    .map(|&(bi, start, off, len)| {
                        let w = fw
                            .and_then(|f| f.get(*pipe))
                            .and_then(|s| s.bindings.iter().find(|x| x.binding == bi))
                            .is_some_and(|x| x.writable);
                        (start, off, len, w)
                    })
                    .collect()
            }
            Work::Copy { src, dst, len } => {
                [(src.0, src.1, *len, false), (dst.0, dst.1, *len, true)]
                    .into_iter()
                    .filter(|s| ctx.bufs[&s.0].staged())
                    .collect()
            }
            Work::Fill { dst, len, .. } => [(dst.0, dst.1, *len, true)]
                .into_iter()
                .filter(|s| ctx.bufs[&s.0].staged())
                .collect(),
        };
        for &(start, off, len, _) in &staged {
            let b = &ctx.bufs[&start];
            if let Backing::Domain { region, offset } = &b.backing {
                // SAFETY: `b.ptr` maps `b.len` bytes and off + len <= b.len
                // (resolved against the buffer); no GPU work is in flight.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(b.ptr.add(off as usize), len as usize)
                };
                let _ = region.read(offset + off, dst);
            }
        }
        let resolved: Vec<(u32, vk::Buffer, u64, u64)> = match work {
            Work::Dispatch { binds, .. } => binds
                .iter()
                .map(|&(bi, start, off, len)| (bi, ctx.bufs[&start].buffer, off, len))
                .collect(),
            _ => Vec::new(),
        };
        let push: Vec<u8> = match work {
            Work::Dispatch { pipe, .. } => {
                let words = ctx
                    .firmware
                    .as_ref()
                    .and_then(|f| f.get(*pipe))
                    .map_or(0, |s| s.push_bytes.div_ceil(4) as usize);
                ctx.push[..words]
                    .iter()
                    .flat_map(|w| w.to_le_bytes())
                    .collect()
            }
            _ => Vec::new(),
        };
        let bufs = &ctx.bufs;
        let ns = execute(
            &self.gpu,
            &mut ctx.vk,
            ts,
            watchdog,
            &self.draining,
            |d, cmd, pipes| match work {
                Work::Dispatch { pipe, groups, .. } => {
                    record_dispatch(d, cmd, &pipes[*pipe], &resolved, &push, *groups);
                }
                // SAFETY: recording into the context's own command buffer
                // (see `execute`); the ranges were resolved inside these
                // buffers of the context.
                Work::Copy { src, dst, len } => unsafe {
                    d.cmd_copy_buffer(
                        cmd,
                        bufs[&src.0].buffer,
                        bufs[&dst.0].buffer,
                        &[vk::BufferCopy {
                            src_offset: src.1,
                            dst_offset: dst.1,
                            size: *len,
                        }],
                    );
                },
                // SAFETY: as for the copy.
                Work::Fill { dst, len, value } => unsafe {
                    d.cmd_fill_buffer(cmd, bufs[&dst.0].buffer, dst.1, *len, *value);
                },
            },
        )
        .map_err(|e| match e {
            ExecError::Timeout => Failure::Watchdog,
            ExecError::Failed(why) => Failure::Lost(why),
        })?;
        if self.cfg.hooks.as_ref().is_some_and(|h| h.take_loss(id)) {
            return Err(Failure::Lost("injected by the test hook".into()));
        }
        for &(start, off, len, back) in &staged {
            let b = &ctx.bufs[&start];
            if let (true, Backing::Domain { region, offset }) = (back && b.writable, &b.backing) {
                // SAFETY: as for the copy in; the GPU work finished.
                let src =
                    unsafe { std::slice::from_raw_parts(b.ptr.add(off as usize), len as usize) };
                let _ = region.write(offset + off, src);
            }
        }
        Ok(ns)
    }

    /// Recreate the device after a loss or a hang caused by `guilty`.
    fn recover(&mut self, guilty: ContextId) {
        let new = match Gpu::open(&self.inst, self.pdev, self.family, self.host_import) {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "cannot recreate the GPU device");
                self.broken = Some(e.to_string());
                return;
            }
        };
        let old = std::mem::replace(&mut self.gpu, new);
        let mut remains = Remains {
            device: old.device.clone(),
            ctxs: Vec::new(),
            bufs: Vec::new(),
            _regions: Vec::new(),
            _inst: self.inst.clone(),
            draining: self.draining.clone(),
        };
        self.draining.fetch_add(1, Ordering::AcqRel);
        let ids: Vec<ContextId> = self.ctxs.keys().copied().collect();
        let ts = self.limits.timestamps.is_some();
        for id in ids {
            let mut ctx = self.ctxs.remove(&id).expect("listed");
            remains.ctxs.push(std::mem::take(&mut ctx.vk));
            let mut rebuilt = self.gpu.new_ctx_vk(self.family, ts);
            if let (Ok(v), Some(fw)) = (rebuilt.as_mut(), ctx.firmware.as_ref()) {
                if let Err(e) = self.gpu.build_pipes(v, fw) {
                    tracing::error!(vcoproc = %id, error = %e, "pipelines not restored");
                }
            }
            match rebuilt {
                Ok(v) => ctx.vk = v,
                Err(e) => {
                    tracing::error!(vcoproc = %id, error = %e, "context not restored");
                }
            }
            let iovas: Vec<u64> = ctx.bufs.keys().copied().collect();
            for iova in iovas {
                let b = ctx.bufs.get_mut(&iova).expect("listed");
                // Device-local contents survive in the old mapping; the
                // guilty context's are dropped.
                let saved = (matches!(b.backing, Backing::Local) && id != guilty).then(|| {
                    // SAFETY: local memory is mapped for `len` bytes until
                    // freed, and the old device is idle or lost (its queue
                    // no longer runs this context's work).
                    unsafe { std::slice::from_raw_parts(b.ptr, b.len as usize) }.to_vec()
                });
                remains.bufs.push((b.buffer, b.memory));
                if let Backing::Domain { region, .. } = &b.backing {
                    remains._regions.push(region.clone());
                }
                let len = b.len;
                let made = match &b.backing {
                    Backing::Domain { region, offset } => {
                        let bk = Backing::Domain {
                            region: region.clone(),
                            offset: *offset,
                        };
                        self.make_buf(&bk, len)
                    }
                    Backing::Local => self.make_buf(&Backing::Local, len),
                };
                match made {
                    Ok((buffer, memory, ptr)) => {
                        if let Some(s) = saved {
                            // SAFETY: fresh mapping of at least `len` bytes.
                            unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), ptr, s.len()) };
                        }
                        b.buffer = buffer;
                        b.memory = memory;
                        b.ptr = ptr;
                    }
                    Err(e) => {
                        tracing::error!(vcoproc = %id, iova, error = %e, "buffer not restored");
                        ctx.bufs.remove(&iova);
                    }
                }
            }
            self.ctxs.insert(id, ctx);
        }
        std::thread::Builder::new()
            .name("vulkan-reaper".into())
            .spawn(move || reap(remains))
            .map(drop)
            .unwrap_or_else(
                |e| tracing::error!(error = %e, "no reaper thread; the old device leaks"),
            );
    }

    fn post_error(ctx: &mut Ctx, tag: u32, status: Status, opcode: u32, index: u32) {
        ctx.refused += 1;
        ctx.aborted = true;
        let mut result = [0u32; 14];
        result[0] = opcode;
        result[1] = index;
        if let Some(r) = ctx.ring.as_mut() {
            if r.post(&Cqe {
                tag,
                status: status as u32,
                result,
            }) {
                ctx.posted += 1;
            }
        }
    }

    /// Find and check the queue named in mailbox word 0.
    fn attach_ring(ctx: &mut Ctx) -> bool {
        let want = u64::from(ctx.control.read_in(MBOX_QUEUE));
        if let Some(r) = &ctx.ring {
            let same = ctx
                .bufs
                .range(..=r.iova)
                .next_back()
                .is_some_and(|(_, b)| b.gen == r.gen);
            if r.iova == want && same {
                return true;
            }
        }
        ctx.ring = None;
        let Some((start, off, _)) = ctx.resolve(want, 0) else {
            return false;
        };
        let b = &ctx.bufs[&start];
        let Backing::Domain { region, offset } = &b.backing else {
            return false;
        };
        if !b.writable {
            return false;
        }
        let base = offset + off;
        // The header must be a queue whose rings fit the mapping.
        let Some(ring) =
            Ring::mem(region, base, b.len - off).and_then(|m| Consumer::attach(&m).ok())
        else {
            return false;
        };
        let Some(len) = q::bytes_for(ring.entries()) else {
            return false;
        };
        let r = Ring {
            iova: want,
            gen: b.gen,
            region: region.clone(),
            base,
            len,
            ring,
        };
        ctx.ring = Some(r);
        true
    }
}

fn revoked(iova: u64, write: bool) -> DeviceFault {
    DeviceFault {
        addr: Some(iova),
        access: if write { Access::Write } else { Access::Read },
        pc: None,
        reason: FaultReason::AccessViolation,
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
        self.ctxs.insert(
            spec.id,
            Ctx {
                control: spec.control,
                firmware: None,
                vk,
                bufs: BTreeMap::new(),
                local_bytes: 0,
                slots: [None; SLOTS as usize],
                push: [0; PUSH_WORDS as usize],
                ring: None,
                aborted: false,
                job_gpu_ns: 0,
                seq: 0,
                posted: 0,
                garbage: 0,
                executed: 0,
                refused: 0,
            },
        );
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
        Arc::new(ShaderPrep {
            limits: self.limits.shader,
        })
    }

    /// Creates the pipelines of firmware [`ShaderPrep`] compiled; naga's
    /// work was done on the loading thread. The specs are kept, so device
    /// loss recovery builds the pipelines again from them.
    fn install_firmware(
        &mut self,
        id: ContextId,
        fw: PreparedFirmware,
    ) -> Result<FirmwareInfo, DeviceError> {
        let specs = fw
            .downcast::<Compiled>()
            .map_err(|_| DeviceError::BadFirmware("prepared for another device class".into()))?
            .pipelines;
        let gpu = &self.gpu;
        let ctx = self.ctxs.get_mut(&id).ok_or(DeviceError::NoContext(id))?;
        ctx.firmware = None;
        gpu.build_pipes(&mut ctx.vk, &specs)?;
        let code_bytes = specs.iter().map(|s| 4 * s.spirv.len() as u64).sum();
        ctx.firmware = Some(specs.into());
        ctx.slots = [None; SLOTS as usize];
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
        // Host work (decoding, checking, recording) is charged in the
        // runner thread's CPU time, GPU work in GPU timestamps: neither
        // counts time the host took the CPU away.
        let start = thread_cpu_time();
        let host = || thread_cpu_time().saturating_sub(start);
        let mut gpu_ns = 0u64;
        let mut waited = Duration::ZERO;
        let outcome = |stop, waited: Duration, gpu_ns: u64| RunOutcome {
            ran: host().saturating_sub(waited) + Duration::from_nanos(gpu_ns),
            stop,
        };
        if self.preempt.0.swap(false, Ordering::AcqRel) {
            return outcome(StopReason::Preempted, waited, gpu_ns);
        }
        let Some(id) = self.current else {
            return outcome(StopReason::Waiting, waited, gpu_ns);
        };
        if let Some(b) = &self.broken {
            let f = DeviceFault {
                addr: None,
                access: Access::None,
                pc: None,
                reason: FaultReason::Device(format!("GPU unusable: {b}")),
            };
            return outcome(StopReason::Fault(f), waited, gpu_ns);
        }
        let Some(ctx) = self.ctxs.get_mut(&id) else {
            return outcome(StopReason::Waiting, waited, gpu_ns);
        };
        let control = ctx.control.clone();
        control.ack_doorbells(control.doorbell_count());
        if !Self::attach_ring(ctx) {
            control.write_out(mbox_out::BAD_QUEUE, 1);
            return outcome(StopReason::Waiting, waited, gpu_ns);
        }
        control.write_out(mbox_out::BAD_QUEUE, 0);
        let posted_before = ctx.posted;
        let mut late_signal = false;
        let stop = loop {
            if self.preempt.0.swap(false, Ordering::AcqRel) {
                break StopReason::Preempted;
            }
            let over = host().saturating_sub(waited) + Duration::from_nanos(gpu_ns) >= budget;
            let Some(ctx) = self.ctxs.get_mut(&id) else {
                break StopReason::Waiting;
            };
            let Some(ring) = ctx.ring.as_mut() else {
                break StopReason::Waiting;
            };
            let pending = match ring.pending() {
                Ok(n) => n,
                Err(_) => {
                    ctx.garbage += 1;
                    control.write_out(mbox_out::GARBAGE, ctx.garbage);
                    break StopReason::Waiting;
                }
            };
            if pending == 0 {
                break StopReason::Waiting;
            }
            if ring.cq_full() {
                break StopReason::Waiting;
            }
            let index = ring.ring.sq_head();
            let sqe = ring.sqe();
            let is_signal = sqe.opcode == coproc_proto::gpu::op::SIGNAL;
            // Past the budget only one job's closing signal still goes (it
            // needs no GPU time and its domain is waiting for it, which
            // would otherwise wait for this vcoproc's next slice); anything
            // else stays in the ring for the next slice.
            if over && (!is_signal || late_signal) {
                break StopReason::BudgetSpent;
            }
            late_signal |= over;
            ring.consume();
            if ctx.aborted && !is_signal {
                continue;
            }
            if is_signal {
                let status = if ctx.aborted {
                    Status::Aborted
                } else {
                    Status::Ok
                };
                let ns = std::mem::take(&mut ctx.job_gpu_ns);
                ctx.aborted = false;
                let mut result = [0u32; 14];
                result[0] = sqe.args[0];
                result[1] = ns as u32;
                result[2] = (ns >> 32) as u32;
                result[3] = ctx.vk.value as u32;
                if ring.post(&Cqe {
                    tag: sqe.tag,
                    status: status as u32,
                    result,
                }) {
                    ctx.posted += 1;
                }
                continue;
            }
            let t0 = thread_cpu_time();
            let mut ns = 0;
            let step = self.step(id, &sqe, &mut ns);
            if ns > 0 {
                // The GPU's own measure replaces the host's time around the
                // submission.
                waited += thread_cpu_time().saturating_sub(t0);
                gpu_ns += ns;
            }
            match step {
                Step::Done => {}
                Step::Refused(status) => {
                    if let Some(ctx) = self.ctxs.get_mut(&id) {
                        Self::post_error(ctx, sqe.tag, status, sqe.opcode, index);
                    }
                }
                Step::Fault(f) => {
                    // The rest of the job is skipped once the vcoproc is
                    // reset; its signal then completes as aborted.
                    if let Some(ctx) = self.ctxs.get_mut(&id) {
                        ctx.aborted = true;
                    }
                    break StopReason::Fault(f);
                }
            }
        };
        if let Some(ctx) = self.ctxs.get_mut(&id) {
            control.write_out(mbox_out::POSTED, ctx.posted);
            control.write_out(mbox_out::EXECUTED, ctx.executed);
            control.write_out(mbox_out::REFUSED, ctx.refused);
            if ctx.posted != posted_before {
                control.set_notify_tag(ctx.posted);
                ctx.seq = ctx.seq.wrapping_add(1);
                control.notify(ctx.seq);
            }
        }
        outcome(stop, waited, gpu_ns)
    }

    fn preempt_handle(&self) -> PreemptHandle {
        PreemptHandle(self.preempt.clone())
    }

    fn reset_context(&mut self, id: ContextId) -> Result<(), DeviceError> {
        let ctx = self.ctx(id)?;
        // Slots and push constants start empty; the queue stays where it is
        // and a job a fault cut short stays aborted, so its signal reports
        // it instead of claiming success.
        ctx.slots = [None; SLOTS as usize];
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
        let d = &self.gpu.device;
        // SAFETY: waits for this device's queue, then destroys every object
        // created on it and the device itself; nothing uses them after.
        unsafe {
            let _ = d.device_wait_idle();
        }
        for (_, mut ctx) in self.ctxs.drain() {
            destroy_ctx_vk(d, &mut ctx.vk);
            for b in ctx.bufs.values() {
                destroy_buf(d, b.buffer, b.memory);
            }
        }
        // SAFETY: as above; all child objects are gone.
        unsafe { d.destroy_device(None) };
    }
}
