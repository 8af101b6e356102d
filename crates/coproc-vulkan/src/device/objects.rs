//! The ash objects of the device and their lifetimes: the logical device
//! ([`Gpu`]), each context's command pool, timeline semaphore, query pool,
//! descriptor pool and pipelines ([`CtxVk`]), buffers over imported,
//! staged or local memory; and submission: [`execute`] records one command
//! between timestamps, submits it and waits for it under the watchdog.
//! Most of the class's `unsafe` is here. The direct baseline
//! (`crate::direct`) builds and runs its objects with the same functions.

// Host sizes of buffers already bounded by the device limits (u64 to usize cannot truncate on 64-bit hosts); descriptor counts bounded by the device's limits; timestamps scaled to nanoseconds.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use crate::gpu::{GpuError, Instance};
use crate::shader::{BindingKind, PipelineSpec, ShaderFeatures};
use ash::vk;
use coproc_core::device::DeviceError;
use coproc_proto::gpu::ImageFormat;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The logical device itself, shared by the runner and the loading
/// threads that build pipelines on it ([`Gpu::builder`]): destroyed, with
/// its pipeline cache, when the last holder lets go, after every object
/// made on it (whoever made objects holds it until they are destroyed).
pub(crate) struct DeviceOwner {
    pub(crate) device: ash::Device,
    queue: vk::Queue,
    /// `vkQueueSubmit` needs the queue to itself: held around each
    /// submission (the runner's and a loading thread's trial runs).
    submit: Mutex<()>,
    /// The pipeline cache pipelines are created through (null: none;
    /// internally synchronised).
    pub(crate) cache: vk::PipelineCache,
    /// Which device this is (unique in the process).
    pub(crate) id: u64,
    /// The instance outlives the device.
    _inst: Arc<Instance>,
}

impl DeviceOwner {
    pub(crate) fn wait_idle(&self) {
        let _queue = self
            .submit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // SAFETY: the device is alive (self) and its only queue is ours
        // while the lock is held.
        unsafe {
            let _ = self.device.device_wait_idle();
        }
    }
}

impl Drop for DeviceOwner {
    fn drop(&mut self) {
        // SAFETY: the last holder is gone, so every object made on the
        // device was destroyed (each maker holds the owner until then);
        // wait for the queue, then destroy the cache and the device. A null
        // cache is ignored by Vulkan.
        unsafe {
            let _ = self.device.device_wait_idle();
            self.device.destroy_pipeline_cache(self.cache, None);
            self.device.destroy_device(None);
        }
    }
}

/// The logical device and what hangs off it; replaced on device loss.
#[derive(Clone)]
pub(crate) struct Gpu {
    /// `owner.device` (its function table, copied).
    pub(crate) device: ash::Device,
    pub(crate) owner: Arc<DeviceOwner>,
    host_mem: Option<ash::ext::external_memory_host::Device>,
    mem_props: vk::PhysicalDeviceMemoryProperties,
}

pub(crate) struct Pipe {
    module: vk::ShaderModule,
    /// One per group `0..spec.groups()` (empty ones included).
    set_layouts: Vec<vk::DescriptorSetLayout>,
    layout: vk::PipelineLayout,
    pipeline: vk::Pipeline,
    sets: Vec<vk::DescriptorSet>,
}

/// Optional device features this class turns on where the device has
/// them, and what shaders may use as a result.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Optional {
    pub(crate) shader: ShaderFeatures,
    /// 16-bit storage buffer access (f16 or i16 in buffers).
    storage16: bool,
    /// `VK_EXT_robustness2`'s `robustBufferAccess2`.
    pub(crate) robust2: bool,
    /// Its `robustImageAccess2`.
    pub(crate) robust_images: bool,
}

/// What optional features `pdev` has.
pub(crate) fn optional_features(i: &ash::Instance, pdev: vk::PhysicalDevice) -> Optional {
    let mut f11 = vk::PhysicalDeviceVulkan11Features::default();
    let mut f12 = vk::PhysicalDeviceVulkan12Features::default();
    let mut r2 = vk::PhysicalDeviceRobustness2FeaturesEXT::default();
    // SAFETY: `pdev` was enumerated from this live instance; the call only
    // reads the extension list.
    let exts = unsafe { i.enumerate_device_extension_properties(pdev) }.unwrap_or_default();
    let has_r2 = exts
        .iter()
        .any(|e| e.extension_name_as_c_str() == Ok(ash::ext::robustness2::NAME));
    let mut f2 = vk::PhysicalDeviceFeatures2::default()
        .push_next(&mut f11)
        .push_next(&mut f12);
    if has_r2 {
        f2 = f2.push_next(&mut r2);
    }
    // SAFETY: `pdev` was enumerated from the live instance `i`; the call
    // fills `f2` and the structs chained to it, live locals that outlive
    // the call (Vulkan 1.2 is required of the device, so both feature
    // structs are known to it).
    unsafe { i.get_physical_device_features2(pdev, &mut f2) };
    let base = f2.features;
    let mut sg = vk::PhysicalDeviceSubgroupProperties::default();
    let mut p2 = vk::PhysicalDeviceProperties2::default().push_next(&mut sg);
    // SAFETY: `pdev` was enumerated from the live instance `i`; the call
    // fills `p2` and `sg`, live locals that outlive it.
    unsafe { i.get_physical_device_properties2(pdev, &mut p2) };
    let storage16 = f11.storage_buffer16_bit_access != 0;
    let mut ops = naga::valid::SubgroupOperationSet::empty();
    if sg.supported_stages.contains(vk::ShaderStageFlags::COMPUTE) {
        use naga::valid::SubgroupOperationSet as S;
        use vk::SubgroupFeatureFlags as F;
        for (f, s) in [
            (F::BASIC, S::BASIC),
            (F::VOTE, S::VOTE),
            (F::ARITHMETIC, S::ARITHMETIC),
            (F::BALLOT, S::BALLOT),
            (F::SHUFFLE, S::SHUFFLE),
            (F::SHUFFLE_RELATIVE, S::SHUFFLE_RELATIVE),
            (F::QUAD, S::QUAD_FRAGMENT_COMPUTE),
        ] {
            if sg.supported_operations.contains(f) {
                ops |= s;
            }
        }
        // naga's subgroup support starts from the basic operations.
        if !ops.contains(naga::valid::SubgroupOperationSet::BASIC) {
            ops = naga::valid::SubgroupOperationSet::empty();
        }
    }
    Optional {
        shader: ShaderFeatures {
            f16: f12.shader_float16 != 0
                && storage16
                && f11.uniform_and_storage_buffer16_bit_access != 0,
            f64: base.shader_float64 != 0,
            i64: base.shader_int64 != 0,
            i64_atomics: base.shader_int64 != 0 && f12.shader_buffer_int64_atomics != 0,
            i16: base.shader_int16 != 0
                && storage16
                && f11.uniform_and_storage_buffer16_bit_access != 0,
            subgroup_ops: ops,
            subgroup_size: sg.subgroup_size,
        },
        storage16,
        robust2: has_r2 && r2.robust_buffer_access2 != 0,
        robust_images: has_r2 && r2.robust_image_access2 != 0,
    }
}

/// A resolved binding of a dispatch: the descriptor to write (a buffer
/// range, an image view or a sampler, by `kind`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Descriptor {
    pub(crate) group: u32,
    pub(crate) binding: u32,
    pub(crate) kind: BindingKind,
    pub(crate) buffer: vk::Buffer,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) view: vk::ImageView,
    pub(crate) sampler: vk::Sampler,
}

impl Descriptor {
    /// A buffer range.
    pub(crate) fn buffer(
        group: u32,
        binding: u32,
        kind: BindingKind,
        buffer: vk::Buffer,
        offset: u64,
        len: u64,
    ) -> Descriptor {
        Descriptor {
            group,
            binding,
            kind,
            buffer,
            offset,
            len,
            view: vk::ImageView::null(),
            sampler: vk::Sampler::null(),
        }
    }
}

fn descriptor_type(kind: BindingKind) -> vk::DescriptorType {
    match kind {
        BindingKind::Storage => vk::DescriptorType::STORAGE_BUFFER,
        BindingKind::Uniform => vk::DescriptorType::UNIFORM_BUFFER,
        BindingKind::StorageImage(_) => vk::DescriptorType::STORAGE_IMAGE,
        BindingKind::SampledImage(_) => vk::DescriptorType::SAMPLED_IMAGE,
        BindingKind::Sampler => vk::DescriptorType::SAMPLER,
    }
}

/// The Vulkan format of an image format.
fn vk_format(f: ImageFormat) -> vk::Format {
    match f {
        ImageFormat::Rgba8Unorm => vk::Format::R8G8B8A8_UNORM,
        ImageFormat::Rgba8Uint => vk::Format::R8G8B8A8_UINT,
        ImageFormat::R32Float => vk::Format::R32_SFLOAT,
        ImageFormat::R32Uint => vk::Format::R32_UINT,
        ImageFormat::R32Sint => vk::Format::R32_SINT,
        ImageFormat::Rgba32Float => vk::Format::R32G32B32A32_SFLOAT,
    }
}

/// An image of one dispatch: made before it, destroyed after it.
pub(crate) struct Img {
    image: vk::Image,
    memory: vk::DeviceMemory,
    pub(crate) view: vk::ImageView,
    size: [u32; 2],
}

/// A context's Vulkan objects (all on the current [`Gpu`]).
#[derive(Default)]
pub(crate) struct CtxVk {
    cmd_pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
    sem: vk::Semaphore,
    /// The timeline value of the last submission.
    pub(super) value: u64,
    query: Option<vk::QueryPool>,
    desc_pool: Option<vk::DescriptorPool>,
    pipes: Vec<Pipe>,
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

fn vkerr(what: &'static str) -> impl Fn(vk::Result) -> DeviceError {
    move |e| DeviceError::Backend(format!("{what}: {e}"))
}

impl Gpu {
    /// Open the logical device with the optional features of `opt` on,
    /// and a pipeline cache seeded with `cache` (what an earlier
    /// [`Gpu::cache_data`] returned; `None`: no cache).
    pub(crate) fn open(
        inst: &Arc<Instance>,
        pdev: vk::PhysicalDevice,
        family: u32,
        host_import: bool,
        opt: &Optional,
        cache: Option<&[u8]>,
    ) -> Result<Gpu, GpuError> {
        let i = &inst.instance;
        let prio = [1.0f32];
        let qinfo = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(family)
            .queue_priorities(&prio)];
        let sh = &opt.shader;
        let features = vk::PhysicalDeviceFeatures::default()
            .robust_buffer_access(true)
            .shader_float64(sh.f64)
            .shader_int64(sh.i64)
            .shader_int16(sh.i16);
        let sixteen = sh.f16 || sh.i16;
        let mut f11 = vk::PhysicalDeviceVulkan11Features::default()
            .storage_buffer16_bit_access(opt.storage16 && sixteen)
            .uniform_and_storage_buffer16_bit_access(sixteen);
        let mut f12 = vk::PhysicalDeviceVulkan12Features::default()
            .timeline_semaphore(true)
            .shader_float16(sh.f16)
            .shader_buffer_int64_atomics(sh.i64_atomics);
        let mut r2 = vk::PhysicalDeviceRobustness2FeaturesEXT::default()
            .robust_buffer_access2(true)
            .robust_image_access2(opt.robust_images);
        let mut exts = Vec::new();
        if host_import {
            exts.push(ash::ext::external_memory_host::NAME.as_ptr());
        }
        if opt.robust2 {
            exts.push(ash::ext::robustness2::NAME.as_ptr());
        }
        let mut info = vk::DeviceCreateInfo::default()
            .queue_create_infos(&qinfo)
            .enabled_features(&features)
            .enabled_extension_names(&exts)
            .push_next(&mut f11)
            .push_next(&mut f12);
        if opt.robust2 {
            info = info.push_next(&mut r2);
        }
        // SAFETY: `pdev` belongs to this instance; the create info borrows
        // locals that outlive the call.
        let device = unsafe { i.create_device(pdev, &info, None) }
            .map_err(|e| GpuError::Vk("vkCreateDevice", e))?;
        // SAFETY: `device` was created with one queue of `family`, so
        // queue 0 of that family exists.
        let queue = unsafe { device.get_device_queue(family, 0) };
        let host_mem = host_import.then(|| ash::ext::external_memory_host::Device::new(i, &device));
        // SAFETY: `pdev` was enumerated from this live instance; the call
        // only returns a struct by value.
        let mem_props = unsafe { i.get_physical_device_memory_properties(pdev) };
        static IDS: AtomicU64 = AtomicU64::new(1);
        let cache = match cache {
            None => vk::PipelineCache::null(),
            Some(data) => {
                let make = |data: &[u8]| {
                    // SAFETY: creation on the live device just made; the
                    // driver checks the data's header (vendor, device,
                    // cache UUID) and ignores data that is not its own.
                    unsafe {
                        device.create_pipeline_cache(
                            &vk::PipelineCacheCreateInfo::default().initial_data(data),
                            None,
                        )
                    }
                };
                // A cache the driver refuses is started again empty.
                make(data)
                    .or_else(|_| make(&[]))
                    .unwrap_or(vk::PipelineCache::null())
            }
        };
        Ok(Gpu {
            device: device.clone(),
            owner: Arc::new(DeviceOwner {
                device,
                queue,
                submit: Mutex::new(()),
                cache,
                id: IDS.fetch_add(1, Ordering::Relaxed),
                _inst: inst.clone(),
            }),
            host_mem,
            mem_props,
        })
    }

    /// Wait until the device's queue is idle (holding the queue, which
    /// `vkDeviceWaitIdle` needs to itself).
    pub(crate) fn wait_idle(&self) {
        self.owner.wait_idle();
    }

    /// This device for a loading thread that builds pipelines on it: no
    /// host import (it only makes pipelines and scratch buffers).
    pub(crate) fn builder(&self) -> Gpu {
        Gpu {
            host_mem: None,
            ..self.clone()
        }
    }

    /// The pipeline cache's contents (empty without a cache).
    pub(crate) fn cache_data(&self) -> Vec<u8> {
        let cache = self.owner.cache;
        if cache == vk::PipelineCache::null() {
            return Vec::new();
        }
        // SAFETY: the cache belongs to this live device (the owner is
        // held) and is internally synchronised.
        unsafe { self.device.get_pipeline_cache_data(cache) }.unwrap_or_default()
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
        let sizes = [
            vk::DescriptorType::STORAGE_BUFFER,
            vk::DescriptorType::UNIFORM_BUFFER,
            vk::DescriptorType::STORAGE_IMAGE,
            vk::DescriptorType::SAMPLED_IMAGE,
            vk::DescriptorType::SAMPLER,
        ]
        .map(|ty| vk::DescriptorPoolSize {
            ty,
            descriptor_count: (specs
                .iter()
                .flat_map(|s| &s.bindings)
                .filter(|b| descriptor_type(b.kind) == ty)
                .count() as u32)
                .max(1),
        });
        let sets: u32 = specs.iter().map(PipelineSpec::groups).sum();
        // SAFETY: object creation on a live device; the create infos borrow
        // locals; every handle lands in `v` so `destroy_pipes` frees it on
        // any error.
        unsafe {
            v.desc_pool = Some(
                d.create_descriptor_pool(
                    &vk::DescriptorPoolCreateInfo::default()
                        .max_sets(sets.max(1))
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
        let binds: Vec<Vec<_>> = (0..spec.groups())
            .map(|g| {
                spec.bindings
                    .iter()
                    .filter(|b| b.group == g)
                    .map(|b| {
                        vk::DescriptorSetLayoutBinding::default()
                            .binding(b.binding)
                            .descriptor_type(descriptor_type(b.kind))
                            .descriptor_count(1)
                            .stage_flags(vk::ShaderStageFlags::COMPUTE)
                    })
                    .collect()
            })
            .collect();
        let mut p = Pipe {
            module: vk::ShaderModule::null(),
            set_layouts: Vec::new(),
            layout: vk::PipelineLayout::null(),
            pipeline: vk::Pipeline::null(),
            sets: Vec::new(),
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
                for group in &binds {
                    let l = d
                        .create_descriptor_set_layout(
                            &vk::DescriptorSetLayoutCreateInfo::default().bindings(group),
                            None,
                        )
                        .map_err(vkerr("descriptor set layout"))?;
                    p.set_layouts.push(l);
                }
                let ranges = [vk::PushConstantRange {
                    stage_flags: vk::ShaderStageFlags::COMPUTE,
                    offset: 0,
                    size: spec.push_bytes.div_ceil(4) * 4,
                }];
                let layouts = p.set_layouts.clone();
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
                    .create_compute_pipelines(self.owner.cache, &ci, None)
                    .map_err(|(_, e)| DeviceError::BadFirmware(format!("pipeline: {e}")))?[0];
                if !layouts.is_empty() {
                    p.sets = d
                        .allocate_descriptor_sets(
                            &vk::DescriptorSetAllocateInfo::default()
                                .descriptor_pool(v.desc_pool.unwrap_or_default())
                                .set_layouts(&layouts),
                        )
                        .map_err(vkerr("descriptor set"))?;
                }
                Ok(())
            })()
        };
        v.pipes.push(p);
        r
    }

    /// A 2D image of `format` and `size` in device memory, with a view,
    /// usable as a storage image, a sampled texture and a copy target.
    pub(crate) fn make_image(
        &self,
        format: ImageFormat,
        size: [u32; 2],
    ) -> Result<Img, DeviceError> {
        let d = &self.device;
        let fmt = vk_format(format);
        let ii = vk::ImageCreateInfo::default()
            .image_type(vk::ImageType::TYPE_2D)
            .format(fmt)
            .extent(vk::Extent3D {
                width: size[0],
                height: size[1],
                depth: 1,
            })
            .mip_levels(1)
            .array_layers(1)
            .samples(vk::SampleCountFlags::TYPE_1)
            .tiling(vk::ImageTiling::OPTIMAL)
            .usage(
                vk::ImageUsageFlags::STORAGE
                    | vk::ImageUsageFlags::SAMPLED
                    | vk::ImageUsageFlags::TRANSFER_SRC
                    | vk::ImageUsageFlags::TRANSFER_DST,
            )
            .sharing_mode(vk::SharingMode::EXCLUSIVE)
            .initial_layout(vk::ImageLayout::UNDEFINED);
        let mut img = Img {
            image: vk::Image::null(),
            memory: vk::DeviceMemory::null(),
            view: vk::ImageView::null(),
            size,
        };
        // SAFETY: object creation on a live device; each handle lands in
        // `img`, which `destroy_image` frees (null handles are ignored) on
        // any error.
        let r = unsafe {
            (|| {
                img.image = d.create_image(&ii, None).map_err(vkerr("image"))?;
                let req = d.get_image_memory_requirements(img.image);
                let ty = self
                    .memory_type(req.memory_type_bits, vk::MemoryPropertyFlags::DEVICE_LOCAL)
                    .or_else(|| {
                        self.memory_type(req.memory_type_bits, vk::MemoryPropertyFlags::empty())
                    })
                    .ok_or(DeviceError::Exhausted("no memory type for an image".into()))?;
                img.memory = d
                    .allocate_memory(
                        &vk::MemoryAllocateInfo::default()
                            .allocation_size(req.size)
                            .memory_type_index(ty),
                        None,
                    )
                    .map_err(|e| DeviceError::Exhausted(format!("image memory: {e}")))?;
                d.bind_image_memory(img.image, img.memory, 0)
                    .map_err(vkerr("image memory"))?;
                img.view = d
                    .create_image_view(
                        &vk::ImageViewCreateInfo::default()
                            .image(img.image)
                            .view_type(vk::ImageViewType::TYPE_2D)
                            .format(fmt)
                            .subresource_range(color_range()),
                        None,
                    )
                    .map_err(vkerr("image view"))?;
                Ok(())
            })()
        };
        match r {
            Ok(()) => Ok(img),
            Err(e) => {
                destroy_image(d, &img);
                Err(e)
            }
        }
    }

    /// A sampler: linear or nearest, with one address mode (0 clamp to
    /// edge, 1 repeat, 2 mirrored repeat) on every axis.
    pub(crate) fn make_sampler(
        &self,
        linear: bool,
        address: u32,
    ) -> Result<vk::Sampler, DeviceError> {
        let filter = if linear {
            vk::Filter::LINEAR
        } else {
            vk::Filter::NEAREST
        };
        let mode = match address {
            1 => vk::SamplerAddressMode::REPEAT,
            2 => vk::SamplerAddressMode::MIRRORED_REPEAT,
            _ => vk::SamplerAddressMode::CLAMP_TO_EDGE,
        };
        let si = vk::SamplerCreateInfo::default()
            .mag_filter(filter)
            .min_filter(filter)
            .mipmap_mode(vk::SamplerMipmapMode::NEAREST)
            .address_mode_u(mode)
            .address_mode_v(mode)
            .address_mode_w(mode)
            .max_lod(0.0);
        // SAFETY: object creation on a live device; the caller destroys it.
        unsafe { self.device.create_sampler(&si, None) }.map_err(vkerr("sampler"))
    }

    /// A buffer over `len` bytes of host memory at `ptr`, imported.
    pub(super) fn import(
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
                &raw mut props,
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
        // SAFETY: `ptr..ptr+len` is a live mapping of the domain's memfd
        // and outlives the memory object (the Buf holding both keeps the Region alive and
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
                // SAFETY: `p` maps the whole allocation of `req.size >= len`
                // bytes, host-visible, just mapped and not yet shared.
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
    // SAFETY: still recording into the context's own command buffer, not
    // in flight (each submission is waited for before the next is
    // recorded, by the owner's thread only); the query pool belongs to `d`.
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
    {
        let _queue = gpu
            .owner
            .submit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // SAFETY: the command buffer is fully recorded and not in flight;
        // the queue is ours while the lock is held.
        unsafe { d.queue_submit(gpu.owner.queue, &si, vk::Fence::null()) }
            .map_err(failed("submit"))?;
    }
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

/// Record a dispatch of `pipe` with `binds` (one per binding the pipeline
/// declares) and `push` bytes of push constants.
pub(crate) fn record_dispatch(
    d: &ash::Device,
    cmd: vk::CommandBuffer,
    pipe: &Pipe,
    binds: &[Descriptor],
    push: &[u8],
    groups: [u32; 3],
) {
    let infos: Vec<[vk::DescriptorBufferInfo; 1]> = binds
        .iter()
        .map(|b| {
            [vk::DescriptorBufferInfo {
                buffer: b.buffer,
                offset: b.offset,
                range: b.len,
            }]
        })
        .collect();
    let images: Vec<[vk::DescriptorImageInfo; 1]> = binds
        .iter()
        .map(|b| {
            [vk::DescriptorImageInfo {
                sampler: b.sampler,
                image_view: b.view,
                image_layout: vk::ImageLayout::GENERAL,
            }]
        })
        .collect();
    let writes: Vec<_> = binds
        .iter()
        .zip(infos.iter().zip(&images))
        .filter_map(|(b, (info, image))| {
            let w = vk::WriteDescriptorSet::default()
                .dst_set(*pipe.sets.get(b.group as usize)?)
                .dst_binding(b.binding)
                .descriptor_type(descriptor_type(b.kind));
            Some(match b.kind {
                BindingKind::Storage | BindingKind::Uniform => w.buffer_info(info),
                _ => w.image_info(image),
            })
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
        if !pipe.sets.is_empty() {
            d.cmd_bind_descriptor_sets(
                cmd,
                vk::PipelineBindPoint::COMPUTE,
                pipe.layout,
                0,
                &pipe.sets,
                &[],
            );
        }
        if !push.is_empty() {
            d.cmd_push_constants(cmd, pipe.layout, vk::ShaderStageFlags::COMPUTE, 0, push);
        }
        d.cmd_dispatch(cmd, groups[0], groups[1], groups[2]);
    }
}

fn color_range() -> vk::ImageSubresourceRange {
    vk::ImageSubresourceRange {
        aspect_mask: vk::ImageAspectFlags::COLOR,
        base_mip_level: 0,
        level_count: 1,
        base_array_layer: 0,
        layer_count: 1,
    }
}

/// Record: `img` gets its texels from `buffer` at `offset` and is left in
/// the general layout for the shader.
pub(crate) fn record_image_in(
    d: &ash::Device,
    cmd: vk::CommandBuffer,
    img: &Img,
    buffer: vk::Buffer,
    offset: u64,
) {
    let to_dst = [vk::ImageMemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::empty())
        .dst_access_mask(vk::AccessFlags::TRANSFER_WRITE)
        .old_layout(vk::ImageLayout::UNDEFINED)
        .new_layout(vk::ImageLayout::TRANSFER_DST_OPTIMAL)
        .src_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
        .dst_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
        .image(img.image)
        .subresource_range(color_range())];
    let to_general = [vk::ImageMemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
        .dst_access_mask(vk::AccessFlags::SHADER_READ | vk::AccessFlags::SHADER_WRITE)
        .old_layout(vk::ImageLayout::TRANSFER_DST_OPTIMAL)
        .new_layout(vk::ImageLayout::GENERAL)
        .src_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
        .dst_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
        .image(img.image)
        .subresource_range(color_range())];
    // SAFETY: recording into the context's own command buffer, not in
    // flight (see `execute`); the image and buffer are the context's, and
    // the caller checked the texels lie inside the buffer.
    unsafe {
        d.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::TOP_OF_PIPE,
            vk::PipelineStageFlags::TRANSFER,
            vk::DependencyFlags::empty(),
            &[],
            &[],
            &to_dst,
        );
        d.cmd_copy_buffer_to_image(
            cmd,
            buffer,
            img.image,
            vk::ImageLayout::TRANSFER_DST_OPTIMAL,
            &[copy_region(img, offset)],
        );
        d.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::TRANSFER,
            vk::PipelineStageFlags::COMPUTE_SHADER,
            vk::DependencyFlags::empty(),
            &[],
            &[],
            &to_general,
        );
    }
}

/// Record: `img` (contents undefined) is put in the general layout.
pub(crate) fn record_image_layout(d: &ash::Device, cmd: vk::CommandBuffer, img: &Img) {
    let to_general = [vk::ImageMemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::empty())
        .dst_access_mask(vk::AccessFlags::SHADER_READ | vk::AccessFlags::SHADER_WRITE)
        .old_layout(vk::ImageLayout::UNDEFINED)
        .new_layout(vk::ImageLayout::GENERAL)
        .src_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
        .dst_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
        .image(img.image)
        .subresource_range(color_range())];
    // SAFETY: recording into a command buffer that is not in flight (see
    // `execute`); the image is the recorder's own.
    unsafe {
        d.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::TOP_OF_PIPE,
            vk::PipelineStageFlags::COMPUTE_SHADER,
            vk::DependencyFlags::empty(),
            &[],
            &[],
            &to_general,
        );
    }
}

/// Record: the shader's writes to `img` go back to `buffer` at `offset`.
pub(crate) fn record_image_out(
    d: &ash::Device,
    cmd: vk::CommandBuffer,
    img: &Img,
    buffer: vk::Buffer,
    offset: u64,
) {
    let to_src = [vk::ImageMemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::SHADER_WRITE)
        .dst_access_mask(vk::AccessFlags::TRANSFER_READ)
        .old_layout(vk::ImageLayout::GENERAL)
        .new_layout(vk::ImageLayout::TRANSFER_SRC_OPTIMAL)
        .src_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
        .dst_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
        .image(img.image)
        .subresource_range(color_range())];
    // SAFETY: as in `record_image_in`.
    unsafe {
        d.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::COMPUTE_SHADER,
            vk::PipelineStageFlags::TRANSFER,
            vk::DependencyFlags::empty(),
            &[],
            &[],
            &to_src,
        );
        d.cmd_copy_image_to_buffer(
            cmd,
            img.image,
            vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
            buffer,
            &[copy_region(img, offset)],
        );
    }
}

fn copy_region(img: &Img, offset: u64) -> vk::BufferImageCopy {
    vk::BufferImageCopy {
        buffer_offset: offset,
        buffer_row_length: 0,
        buffer_image_height: 0,
        image_subresource: vk::ImageSubresourceLayers {
            aspect_mask: vk::ImageAspectFlags::COLOR,
            mip_level: 0,
            base_array_layer: 0,
            layer_count: 1,
        },
        image_offset: vk::Offset3D::default(),
        image_extent: vk::Extent3D {
            width: img.size[0],
            height: img.size[1],
            depth: 1,
        },
    }
}

/// Destroy an image of `d` (its view and memory too).
pub(crate) fn destroy_image(d: &ash::Device, img: &Img) {
    // SAFETY: the handles belong to `d` and no submission using them is in
    // flight (the dispatch that used them was waited for, or never
    // submitted; a hung one's device is recreated first and the image
    // handed to its reaper); null handles are ignored by Vulkan.
    unsafe {
        d.destroy_image_view(img.view, None);
        d.destroy_image(img.image, None);
        d.free_memory(img.memory, None);
    }
}

/// Destroy a sampler of `d`.
pub(crate) fn destroy_sampler(d: &ash::Device, s: vk::Sampler) {
    // SAFETY: as for `destroy_image`.
    unsafe { d.destroy_sampler(s, None) };
}

fn usage() -> vk::BufferUsageFlags {
    vk::BufferUsageFlags::STORAGE_BUFFER
        | vk::BufferUsageFlags::UNIFORM_BUFFER
        | vk::BufferUsageFlags::TRANSFER_SRC
        | vk::BufferUsageFlags::TRANSFER_DST
}

/// Pipelines (and their descriptor pool) built for a context elsewhere:
/// by a loading thread, to be adopted by the context's [`CtxVk`].
#[derive(Default)]
pub(crate) struct Pipes {
    pipes: Vec<Pipe>,
    desc_pool: Option<vk::DescriptorPool>,
}

impl CtxVk {
    /// Take the pipelines out (the context is left without any).
    pub(crate) fn take_pipes(&mut self) -> Pipes {
        Pipes {
            pipes: std::mem::take(&mut self.pipes),
            desc_pool: self.desc_pool.take(),
        }
    }

    /// Adopt `p` (made on the same device `d`), destroying the pipelines
    /// the context had.
    pub(crate) fn put_pipes(&mut self, d: &ash::Device, p: Pipes) {
        destroy_pipes(d, self);
        self.pipes = p.pipes;
        self.desc_pool = p.desc_pool;
    }
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
            for l in p.set_layouts {
                d.destroy_descriptor_set_layout(l, None);
            }
            d.destroy_shader_module(p.module, None);
        }
        if let Some(pool) = v.desc_pool.take() {
            d.destroy_descriptor_pool(pool, None);
        }
    }
}

pub(crate) fn destroy_ctx_vk(d: &ash::Device, v: &mut CtxVk) {
    destroy_pipes(d, v);
    // SAFETY: the handles belong to `d` and no submission using them is in
    // flight (commands complete before the runner calls back in, and a
    // lost device is idle or reaped by the reaper); null handles are
    // ignored by Vulkan.
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
    // SAFETY: both belong to `d` and no submission using them is in flight
    // (commands complete before the runner calls back in, and a lost device
    // is idle or reaped by the reaper); null handles are ignored by Vulkan;
    // freeing memory also unmaps it, and no host pointer into it is used
    // after.
    unsafe {
        d.destroy_buffer(buffer, None);
        d.free_memory(memory, None);
    }
}
