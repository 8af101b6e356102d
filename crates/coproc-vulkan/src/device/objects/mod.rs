//! The ash objects of the device and their lifetimes, by kind: the
//! logical device ([`Gpu`], here, with the optional features it turns on
//! and the queue's limits), each context's command pool, timeline
//! semaphore, query pool, descriptor pool and pipelines ([`CtxVk`],
//! `pipelines`), descriptor set layouts and writes (`bindings`), buffers
//! over imported, staged or local memory (`buffers`), images and samplers
//! (`images`); and submission (`submit`): [`execute`] records one command
//! between timestamps, submits it and waits for it under the watchdog.
//! Most of the class's `unsafe` is here. The direct baseline
//! (`crate::direct`) builds and runs its objects with the same functions.

mod bindings;
mod buffers;
mod images;
mod pipelines;
mod submit;

pub(crate) use bindings::Descriptor;
pub(crate) use buffers::destroy_buf;
pub(crate) use images::{
    destroy_image, destroy_sampler, record_image_in, record_image_layout, record_image_out, Img,
};
pub(crate) use pipelines::{destroy_ctx_vk, CtxVk};
pub(crate) use submit::{execute, record_dispatch, ExecError};

use crate::gpu::{GpuError, Instance};
use crate::shader::ShaderFeatures;
use ash::vk;
use coproc_core::device::DeviceError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
}
