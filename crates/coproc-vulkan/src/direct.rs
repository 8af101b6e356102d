//! [`Direct`]: a firmware's compute entry point driven straight through ash,
//! in process, with no framework: no runner, policy, vcoproc, ring or
//! domain thread. It is the baseline of `coproc bench gpu-overhead`.
//!
//! It does per dispatch what [`crate::VulkanDevice`] does per command, on a
//! `VkDevice` opened with the same features: the shader is the SPIR-V naga
//! writes (with bounds checks) for the entry point, the command buffer is
//! reset and recorded (timestamps around the work, descriptor set written,
//! pipeline and set bound, push constants, dispatch, a barrier making the
//! writes visible to the host), submitted alone with a timeline semaphore
//! signal, and waited for before the call returns. Memory is one
//! host-visible, host-coherent buffer that every binding of the pipeline
//! sees (whole, unless [`Direct::bind`] narrows a binding).

use crate::gpu::{compute_family, GpuError, GpuInfo, Instance};
use crate::shader::{self, PipelineSpec, ShaderError, ShaderLimits};
use crate::Selector;
use ash::vk;
use coproc_proto::gpu::PUSH_WORDS;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a [`Direct`] could not be built or could not run a dispatch.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DirectError {
    /// No Vulkan, or no device matching the selector.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// The firmware image was refused.
    #[error(transparent)]
    Shader(#[from] ShaderError),
    /// The module has fewer compute entry points than the index asked for.
    #[error("no compute entry point {index} (the module has {count})")]
    NoEntryPoint {
        /// Index asked for.
        index: usize,
        /// Compute entry points in the module.
        count: usize,
    },
    /// A Vulkan call failed.
    #[error("{0}: {1}")]
    Vk(&'static str, vk::Result),
    /// The device has no host-visible, host-coherent memory for the buffer.
    #[error("no host-visible memory type for the buffer")]
    NoMemoryType,
    /// A byte range outside the buffer.
    #[error("{len} bytes at {offset} outside the {size}-byte buffer")]
    OutOfRange {
        /// First byte.
        offset: u64,
        /// Bytes.
        len: u64,
        /// Size of the buffer.
        size: u64,
    },
    /// A binding the pipeline does not use, or a range it cannot take.
    #[error("binding {binding}: {why}")]
    Binding {
        /// The binding.
        binding: u32,
        /// What is wrong with it.
        why: String,
    },
    /// Push-constant words beyond the 32 a command can set.
    #[error("push of {count} words at word {offset} outside {PUSH_WORDS} words")]
    Push {
        /// First word.
        offset: usize,
        /// Words.
        count: usize,
    },
    /// A workgroup count of 0 or beyond the device's per-axis limits.
    #[error("workgroups {groups:?} not within 1..={limit:?}")]
    Groups {
        /// The counts asked for.
        groups: [u32; 3],
        /// The device's limits.
        limit: [u32; 3],
    },
    /// The dispatch did not finish in time (see [`Direct::set_timeout`]).
    #[error("dispatch not finished after {0:?}")]
    Timeout(Duration),
}

fn vkerr(what: &'static str) -> impl Fn(vk::Result) -> DirectError {
    move |e| DirectError::Vk(what, e)
}

/// One compute pipeline and one host-visible buffer on a `VkDevice` of its
/// own, dispatched one submission at a time.
pub struct Direct {
    device: ash::Device,
    queue: vk::Queue,
    family: u32,
    info: GpuInfo,
    spec: PipelineSpec,
    pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
    sem: vk::Semaphore,
    value: u64,
    query: vk::QueryPool,
    /// (ns per tick, valid-bit mask) when timestamps work on the queue.
    timestamps: Option<(f64, u64)>,
    module: vk::ShaderModule,
    set_layout: vk::DescriptorSetLayout,
    layout: vk::PipelineLayout,
    pipeline: vk::Pipeline,
    desc_pool: vk::DescriptorPool,
    set: vk::DescriptorSet,
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    /// Host mapping of `memory`, `len` bytes (null until mapped).
    ptr: *mut u8,
    len: u64,
    /// (binding, offset, len) for each binding the pipeline uses.
    binds: Vec<(u32, u64, u64)>,
    push: [u32; PUSH_WORDS as usize],
    storage_align: u64,
    max_groups: [u32; 3],
    timeout: Duration,
    last_gpu_ns: u64,
    /// Dropped after the device (fields drop after `Drop::drop`).
    _inst: Arc<Instance>,
}

// SAFETY: `ptr` points into memory this value owns (mapped until `Drop`
// frees it) and is only used through `&self`/`&mut self`; the Vulkan
// handles are plain integers whose external synchronisation `&mut self`
// provides (every method that records, submits or waits takes `&mut
// self`); `ash::Device` and `Arc<Instance>` hold function tables and
// handles that any thread may use.
unsafe impl Send for Direct {}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("gpu", &self.info.name)
            .field("entry_point", &self.spec.name)
            .field("buffer_bytes", &self.len)
            .finish_non_exhaustive()
    }
}

impl Direct {
    /// Open the GPU `selector` picks, build pipeline `entry_index` (compute
    /// entry points in module order, as the `vulkan` class numbers them) of
    /// `image` (WGSL or SPIR-V), and a zeroed buffer of `buffer_bytes`.
    pub fn new(
        selector: &Selector,
        image: &[u8],
        entry_index: usize,
        buffer_bytes: u64,
    ) -> Result<Direct, DirectError> {
        let inst = Instance::open()?;
        let (pdev, info) = inst.select(selector)?;
        let i = &inst.instance;
        let family = compute_family(i, pdev).ok_or(GpuError::NoDevice)?;
        // SAFETY: `pdev` came from this instance.
        let props = unsafe { i.get_physical_device_properties(pdev) };
        // SAFETY: as above.
        let fams = unsafe { i.get_physical_device_queue_family_properties(pdev) };
        let l = props.limits;
        let valid_bits = fams[family as usize].timestamp_valid_bits;
        let timestamps = (valid_bits > 0 && l.timestamp_period > 0.0).then(|| {
            let mask = if valid_bits >= 64 {
                u64::MAX
            } else {
                (1u64 << valid_bits) - 1
            };
            (f64::from(l.timestamp_period), mask)
        });
        let limits = ShaderLimits {
            max_invocations: l.max_compute_work_group_invocations,
            max_size: l.max_compute_work_group_size,
        };
        let mut specs = shader::compile(image, &limits)?;
        if entry_index >= specs.len() {
            return Err(DirectError::NoEntryPoint {
                index: entry_index,
                count: specs.len(),
            });
        }
        let spec = specs.swap_remove(entry_index);
        if buffer_bytes == 0 {
            return Err(DirectError::OutOfRange {
                offset: 0,
                len: 0,
                size: 0,
            });
        }
        if let Some(b) = spec.bindings.iter().find(|b| b.min_bytes > buffer_bytes) {
            return Err(DirectError::Binding {
                binding: b.binding,
                why: format!(
                    "needs at least {} bytes, the buffer has {buffer_bytes}",
                    b.min_bytes
                ),
            });
        }

        // The same device the `vulkan` class opens: one compute queue,
        // robust buffer access, timeline semaphores.
        let prio = [1.0f32];
        let qinfo = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(family)
            .queue_priorities(&prio)];
        let features = vk::PhysicalDeviceFeatures::default().robust_buffer_access(true);
        let mut f12 = vk::PhysicalDeviceVulkan12Features::default().timeline_semaphore(true);
        let dinfo = vk::DeviceCreateInfo::default()
            .queue_create_infos(&qinfo)
            .enabled_features(&features)
            .push_next(&mut f12);
        // SAFETY: `pdev` belongs to this instance; the create info borrows
        // locals that outlive the call.
        let device = unsafe { i.create_device(pdev, &dinfo, None) }
            .map_err(|e| GpuError::Vk("vkCreateDevice", e))?;
        // SAFETY: the family and index were requested above.
        let queue = unsafe { device.get_device_queue(family, 0) };
        // SAFETY: as above.
        let mem_props = unsafe { i.get_physical_device_memory_properties(pdev) };

        let binds = spec
            .bindings
            .iter()
            .map(|b| (b.binding, 0, buffer_bytes))
            .collect();
        // From here on every handle lands in `d`, whose `Drop` destroys
        // those created (null handles are ignored) if a later step fails.
        let mut d = Direct {
            device,
            queue,
            family,
            info,
            spec,
            pool: vk::CommandPool::null(),
            cmd: vk::CommandBuffer::null(),
            sem: vk::Semaphore::null(),
            value: 0,
            query: vk::QueryPool::null(),
            timestamps,
            module: vk::ShaderModule::null(),
            set_layout: vk::DescriptorSetLayout::null(),
            layout: vk::PipelineLayout::null(),
            pipeline: vk::Pipeline::null(),
            desc_pool: vk::DescriptorPool::null(),
            set: vk::DescriptorSet::null(),
            buffer: vk::Buffer::null(),
            memory: vk::DeviceMemory::null(),
            ptr: std::ptr::null_mut(),
            len: buffer_bytes,
            binds,
            push: [0; PUSH_WORDS as usize],
            storage_align: l.min_storage_buffer_offset_alignment.max(4),
            max_groups: l.max_compute_work_group_count,
            timeout: Duration::from_secs(2),
            last_gpu_ns: 0,
            _inst: inst.clone(),
        };
        d.build_sync()?;
        d.build_pipeline()?;
        d.build_buffer(&mem_props)?;
        Ok(d)
    }

    /// Command pool, command buffer, timeline semaphore, query pool.
    fn build_sync(&mut self) -> Result<(), DirectError> {
        let d = &self.device;
        // SAFETY: object creation on a live device; each handle is stored
        // in `self` at once, so `Drop` destroys it on a later failure.
        unsafe {
            self.pool = d
                .create_command_pool(
                    &vk::CommandPoolCreateInfo::default()
                        .queue_family_index(self.family)
                        .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER),
                    None,
                )
                .map_err(vkerr("command pool"))?;
            self.cmd = d
                .allocate_command_buffers(
                    &vk::CommandBufferAllocateInfo::default()
                        .command_pool(self.pool)
                        .level(vk::CommandBufferLevel::PRIMARY)
                        .command_buffer_count(1),
                )
                .map_err(vkerr("command buffer"))?[0];
            let mut ty = vk::SemaphoreTypeCreateInfo::default()
                .semaphore_type(vk::SemaphoreType::TIMELINE)
                .initial_value(0);
            self.sem = d
                .create_semaphore(&vk::SemaphoreCreateInfo::default().push_next(&mut ty), None)
                .map_err(vkerr("timeline semaphore"))?;
            if self.timestamps.is_some() {
                self.query = d
                    .create_query_pool(
                        &vk::QueryPoolCreateInfo::default()
                            .query_type(vk::QueryType::TIMESTAMP)
                            .query_count(2),
                        None,
                    )
                    .map_err(vkerr("query pool"))?;
            }
        }
        Ok(())
    }

    /// Shader module, set layout, pipeline layout, pipeline, descriptor
    /// pool and set, as the `vulkan` class builds them.
    fn build_pipeline(&mut self) -> Result<(), DirectError> {
        let d = &self.device;
        let spec = &self.spec;
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
        let name = std::ffi::CString::new(spec.name.as_str()).map_err(|_| {
            DirectError::Shader(ShaderError::Unsupported("entry point name with NUL".into()))
        })?;
        let sizes = [vk::DescriptorPoolSize {
            ty: vk::DescriptorType::STORAGE_BUFFER,
            descriptor_count: (spec.bindings.len() as u32).max(1),
        }];
        // SAFETY: object creation on a live device from naga-written SPIR-V
        // of a validated module; the create infos borrow locals; each
        // handle is stored in `self` at once, so `Drop` destroys it on a
        // later failure.
        unsafe {
            self.module = d
                .create_shader_module(
                    &vk::ShaderModuleCreateInfo::default().code(&spec.spirv),
                    None,
                )
                .map_err(vkerr("shader module"))?;
            self.set_layout = d
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
            let layouts = [self.set_layout];
            let mut li = vk::PipelineLayoutCreateInfo::default().set_layouts(&layouts);
            if spec.push_bytes > 0 {
                li = li.push_constant_ranges(&ranges);
            }
            self.layout = d
                .create_pipeline_layout(&li, None)
                .map_err(vkerr("pipeline layout"))?;
            let stage = vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(self.module)
                .name(&name);
            let ci = [vk::ComputePipelineCreateInfo::default()
                .stage(stage)
                .layout(self.layout)];
            self.pipeline = d
                .create_compute_pipelines(vk::PipelineCache::null(), &ci, None)
                .map_err(|(_, e)| DirectError::Vk("compute pipeline", e))?[0];
            self.desc_pool = d
                .create_descriptor_pool(
                    &vk::DescriptorPoolCreateInfo::default()
                        .max_sets(1)
                        .pool_sizes(&sizes),
                    None,
                )
                .map_err(vkerr("descriptor pool"))?;
            self.set = d
                .allocate_descriptor_sets(
                    &vk::DescriptorSetAllocateInfo::default()
                        .descriptor_pool(self.desc_pool)
                        .set_layouts(&layouts),
                )
                .map_err(vkerr("descriptor set"))?[0];
        }
        Ok(())
    }

    /// The buffer: host-visible and coherent (device-local too where the
    /// device has such memory), mapped and zeroed.
    fn build_buffer(
        &mut self,
        mem: &vk::PhysicalDeviceMemoryProperties,
    ) -> Result<(), DirectError> {
        let d = &self.device;
        let usage = vk::BufferUsageFlags::STORAGE_BUFFER
            | vk::BufferUsageFlags::TRANSFER_SRC
            | vk::BufferUsageFlags::TRANSFER_DST;
        let bi = vk::BufferCreateInfo::default()
            .size(self.len)
            .usage(usage)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: buffer creation on a live device; stored at once.
        self.buffer = unsafe { d.create_buffer(&bi, None) }.map_err(vkerr("buffer"))?;
        // SAFETY: `self.buffer` was just created on `d`.
        let req = unsafe { d.get_buffer_memory_requirements(self.buffer) };
        let find = |want: vk::MemoryPropertyFlags| {
            (0..mem.memory_type_count).find(|&t| {
                req.memory_type_bits & (1 << t) != 0
                    && mem.memory_types[t as usize].property_flags.contains(want)
            })
        };
        let hv = vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
        let ty = find(hv | vk::MemoryPropertyFlags::DEVICE_LOCAL)
            .or_else(|| find(hv))
            .ok_or(DirectError::NoMemoryType)?;
        let ai = vk::MemoryAllocateInfo::default()
            .allocation_size(req.size)
            .memory_type_index(ty);
        // SAFETY: allocation on a live device; stored at once.
        self.memory = unsafe { d.allocate_memory(&ai, None) }.map_err(vkerr("device memory"))?;
        // SAFETY: buffer and memory belong to `d`, the memory is large
        // enough (`req.size`), host-visible and not mapped yet; the mapping
        // lives until `Drop` frees the memory.
        let p = unsafe {
            d.bind_buffer_memory(self.buffer, self.memory, 0)
                .and_then(|()| {
                    d.map_memory(self.memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty())
                })
        }
        .map_err(vkerr("map memory"))?;
        self.ptr = p.cast::<u8>();
        // SAFETY: the mapping covers `req.size >= len` bytes; no GPU work
        // uses the buffer yet.
        unsafe { std::ptr::write_bytes(self.ptr, 0, self.len as usize) };
        Ok(())
    }

    /// The GPU in use.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// The pipeline's entry point name.
    pub fn entry_point(&self) -> &str {
        &self.spec.name
    }

    /// Bytes of the buffer.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the buffer is empty (never: `new` refuses 0 bytes).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Longest a dispatch may take before [`DirectError::Timeout`]
    /// (default 2 s, the `vulkan` class's default watchdog).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), DirectError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(DirectError::OutOfRange {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    /// Copy `data` into the buffer at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DirectError> {
        self.check_range(offset, data.len() as u64)?;
        // SAFETY: the mapping covers `len` bytes and the range is inside
        // (checked); no GPU work is in flight (`dispatch` waits for its
        // submission before returning) and `&mut self` excludes readers.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(offset as usize), data.len())
        };
        Ok(())
    }

    /// Copy bytes of the buffer from `offset` into `out`.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), DirectError> {
        self.check_range(offset, out.len() as u64)?;
        // SAFETY: as for `write`; only `&mut self` methods write the
        // mapping, and no GPU work is in flight between calls.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.add(offset as usize),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        Ok(())
    }

    /// `len` bytes of the buffer from `offset`.
    pub fn read_vec(&self, offset: u64, len: u64) -> Result<Vec<u8>, DirectError> {
        self.check_range(offset, len)?;
        let mut v = vec![0u8; len as usize];
        self.read(offset, &mut v)?;
        Ok(v)
    }

    /// Let `binding` see `len` bytes of the buffer from `offset` (`len` 0:
    /// to the end). Every binding sees the whole buffer until told
    /// otherwise.
    pub fn bind(&mut self, binding: u32, offset: u64, len: u64) -> Result<(), DirectError> {
        let len = if len == 0 {
            self.len.saturating_sub(offset)
        } else {
            len
        };
        self.check_range(offset, len)?;
        let why = |why: String| DirectError::Binding { binding, why };
        let Some(spec) = self.spec.bindings.iter().find(|b| b.binding == binding) else {
            return Err(why("not used by the pipeline".into()));
        };
        if !offset.is_multiple_of(self.storage_align) {
            return Err(why(format!(
                "offset {offset} not a multiple of {}",
                self.storage_align
            )));
        }
        if len < spec.min_bytes {
            return Err(why(format!("needs at least {} bytes", spec.min_bytes)));
        }
        if let Some(b) = self.binds.iter_mut().find(|b| b.0 == binding) {
            *b = (binding, offset, len);
        }
        Ok(())
    }

    /// Set push-constant words from word `offset` (kept until changed).
    pub fn set_push(&mut self, offset: usize, words: &[u32]) -> Result<(), DirectError> {
        let end = offset.checked_add(words.len());
        match end {
            Some(end) if end <= self.push.len() => {
                self.push[offset..end].copy_from_slice(words);
                Ok(())
            }
            _ => Err(DirectError::Push {
                offset,
                count: words.len(),
            }),
        }
    }

    /// GPU time of the last dispatch from its timestamps, in ns (0 where
    /// the queue has no timestamps).
    pub fn last_gpu_ns(&self) -> u64 {
        self.last_gpu_ns
    }

    /// Record, submit and wait for one dispatch of `groups` workgroups with
    /// the current bindings and push constants. Returns the host time from
    /// the start of recording to the end of the wait (and of reading the
    /// timestamps).
    pub fn dispatch(&mut self, groups: [u32; 3]) -> Result<Duration, DirectError> {
        if groups.contains(&0) || groups.iter().zip(self.max_groups).any(|(&g, m)| g > m) {
            return Err(DirectError::Groups {
                groups,
                limit: self.max_groups,
            });
        }
        let t0 = Instant::now();
        let d = &self.device;
        let cmd = self.cmd;
        let ts = self.timestamps.is_some();
        let infos: Vec<[vk::DescriptorBufferInfo; 1]> = self
            .binds
            .iter()
            .map(|&(_, offset, range)| {
                [vk::DescriptorBufferInfo {
                    buffer: self.buffer,
                    offset,
                    range,
                }]
            })
            .collect();
        let writes: Vec<_> = self
            .binds
            .iter()
            .zip(&infos)
            .map(|(b, info)| {
                vk::WriteDescriptorSet::default()
                    .dst_set(self.set)
                    .dst_binding(b.0)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .buffer_info(info)
            })
            .collect();
        let pb = self.spec.push_bytes.div_ceil(4) as usize;
        let push: Vec<u8> = self.push[..pb]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        // SAFETY: recording into our own command buffer, which is not in
        // flight (every submission is waited for before `dispatch`
        // returns); all handles belong to `d`; the descriptor writes target
        // our own set, not in use either, and name ranges inside the buffer
        // (checked by `bind`).
        unsafe {
            d.reset_command_buffer(cmd, vk::CommandBufferResetFlags::empty())
                .map_err(vkerr("reset command buffer"))?;
            d.begin_command_buffer(
                cmd,
                &vk::CommandBufferBeginInfo::default()
                    .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
            )
            .map_err(vkerr("begin command buffer"))?;
            if ts {
                d.cmd_reset_query_pool(cmd, self.query, 0, 2);
                d.cmd_write_timestamp(cmd, vk::PipelineStageFlags::TOP_OF_PIPE, self.query, 0);
            }
            d.update_descriptor_sets(&writes, &[]);
            d.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, self.pipeline);
            d.cmd_bind_descriptor_sets(
                cmd,
                vk::PipelineBindPoint::COMPUTE,
                self.layout,
                0,
                &[self.set],
                &[],
            );
            if pb > 0 {
                d.cmd_push_constants(cmd, self.layout, vk::ShaderStageFlags::COMPUTE, 0, &push);
            }
            d.cmd_dispatch(cmd, groups[0], groups[1], groups[2]);
            let mb = [vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::SHADER_WRITE | vk::AccessFlags::TRANSFER_WRITE)
                .dst_access_mask(vk::AccessFlags::HOST_READ)];
            d.cmd_pipeline_barrier(
                cmd,
                vk::PipelineStageFlags::COMPUTE_SHADER | vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::HOST,
                vk::DependencyFlags::empty(),
                &mb,
                &[],
                &[],
            );
            if ts {
                d.cmd_write_timestamp(cmd, vk::PipelineStageFlags::BOTTOM_OF_PIPE, self.query, 1);
            }
            d.end_command_buffer(cmd)
                .map_err(vkerr("end command buffer"))?;
        }
        self.value += 1;
        let cmds = [cmd];
        let sems = [self.sem];
        let vals = [self.value];
        let mut tl = vk::TimelineSemaphoreSubmitInfo::default().signal_semaphore_values(&vals);
        let si = [vk::SubmitInfo::default()
            .command_buffers(&cmds)
            .signal_semaphores(&sems)
            .push_next(&mut tl)];
        // SAFETY: the command buffer is fully recorded and not in flight;
        // the queue is only used through `&mut self`.
        unsafe { d.queue_submit(self.queue, &si, vk::Fence::null()) }.map_err(vkerr("submit"))?;
        let wi = vk::SemaphoreWaitInfo::default()
            .semaphores(&sems)
            .values(&vals);
        let timeout = u64::try_from(self.timeout.as_nanos()).unwrap_or(u64::MAX);
        // SAFETY: waits on our own semaphore.
        match unsafe { d.wait_semaphores(&wi, timeout) } {
            Ok(()) => {}
            Err(vk::Result::TIMEOUT) => return Err(DirectError::Timeout(self.timeout)),
            Err(e) => return Err(DirectError::Vk("wait", e)),
        }
        self.last_gpu_ns = 0;
        if let Some((period, mask)) = self.timestamps {
            let mut t = [0u64; 2];
            // SAFETY: both queries were written by the completed submission.
            let r = unsafe {
                d.get_query_pool_results(
                    self.query,
                    0,
                    &mut t,
                    vk::QueryResultFlags::TYPE_64 | vk::QueryResultFlags::WAIT,
                )
            };
            if r.is_ok() {
                self.last_gpu_ns = ((t[1].wrapping_sub(t[0]) & mask) as f64 * period) as u64;
            }
        }
        Ok(t0.elapsed())
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        let d = &self.device;
        // SAFETY: waits for the queue, then destroys every object this
        // value created on its own device (null handles, from a
        // construction that failed half way, are ignored by Vulkan) and
        // the device itself; freeing the memory unmaps it; nothing uses
        // any of them afterwards.
        unsafe {
            let _ = d.device_wait_idle();
            d.destroy_pipeline(self.pipeline, None);
            d.destroy_pipeline_layout(self.layout, None);
            d.destroy_descriptor_set_layout(self.set_layout, None);
            d.destroy_shader_module(self.module, None);
            d.destroy_descriptor_pool(self.desc_pool, None);
            d.destroy_buffer(self.buffer, None);
            d.free_memory(self.memory, None);
            d.destroy_query_pool(self.query, None);
            d.destroy_semaphore(self.sem, None);
            d.destroy_command_pool(self.pool, None);
            d.destroy_device(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coproc_firmware::gpu::{SAXPY, SPIN};
    use coproc_firmware::reference;

    fn words(b: &[u8]) -> Vec<u32> {
        b.chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn spin_matches_the_host_reference() {
        let n = 1000usize;
        let mut d = Direct::new(&Selector::Auto, SPIN.image, 0, 4 * n as u64)
            .expect("vulkan device (lavapipe installed?)");
        assert_eq!(d.entry_point(), "spin");
        for (seed, iters) in [(7u32, 1u32), (0xdead_beef, 300), (42, 4096), (3, 70_000)] {
            d.set_push(0, &[iters, seed, n as u32]).unwrap();
            d.dispatch([(n as u32).div_ceil(64), 1, 1]).unwrap();
            let got = words(&d.read_vec(0, 4 * n as u64).unwrap());
            assert_eq!(got, reference::spin(seed, iters, n), "seed {seed}");
        }
        // Only the first n elements are written (n is a push constant).
        let mut big = Direct::new(&Selector::Auto, SPIN.image, 0, 4 * 2 * n as u64).unwrap();
        big.write(4 * n as u64, &[0xab; 4]).unwrap();
        big.set_push(0, &[5, 1, n as u32]).unwrap();
        big.dispatch([(2 * n as u32).div_ceil(64), 1, 1]).unwrap();
        assert_eq!(big.read_vec(4 * n as u64, 4).unwrap(), vec![0xab; 4]);
    }

    #[test]
    fn refuses_what_the_device_would() {
        let e = Direct::new(&Selector::Auto, SPIN.image, 1, 4096).unwrap_err();
        assert!(
            matches!(e, DirectError::NoEntryPoint { index: 1, count: 1 }),
            "{e}"
        );
        let e = Direct::new(&Selector::Auto, b"fn main( {", 0, 4096).unwrap_err();
        assert!(matches!(e, DirectError::Shader(_)), "{e}");
        let mut d = Direct::new(&Selector::Auto, SAXPY.image, 0, 4096).unwrap();
        assert!(d.bind(2, 0, 0).is_err(), "saxpy has no binding 2");
        assert!(d.bind(0, 4000, 200).is_err(), "past the end");
        assert!(d.set_push(31, &[1, 2]).is_err());
        assert!(d.write(4090, &[0; 8]).is_err());
        assert!(d.dispatch([0, 1, 1]).is_err());
        // Two bindings over halves of the one buffer: y = a x + y.
        let x: Vec<f32> = (0..512).map(|i| i as f32).collect();
        let y: Vec<f32> = (0..512).map(|i| 1.0 + i as f32 / 2.0).collect();
        let bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
        d.write(0, &bytes(&x)).unwrap();
        d.write(2048, &bytes(&y)).unwrap();
        d.bind(0, 0, 2048).unwrap();
        d.bind(1, 2048, 2048).unwrap();
        d.set_push(0, &[2.5f32.to_bits(), 512]).unwrap();
        d.dispatch([8, 1, 1]).unwrap();
        let got: Vec<f32> = words(&d.read_vec(2048, 2048).unwrap())
            .into_iter()
            .map(f32::from_bits)
            .collect();
        assert_eq!(got, reference::saxpy(2.5, &x, &y));
    }
}
