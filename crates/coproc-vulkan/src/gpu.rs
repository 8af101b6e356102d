//! The Vulkan instance and the choice of physical device.

// Pipeline indexes, bounded by the entry points a module may have.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use crate::Selector;
use ash::vk;
use std::ffi::CStr;
use std::sync::Arc;
use thiserror::Error;

/// Errors finding or opening a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GpuError {
    /// No Vulkan loader on this machine.
    #[error("no Vulkan loader (install libvulkan1 and a driver, e.g. mesa-vulkan-drivers): {0}")]
    NoLoader(String),
    /// The loader found no usable device.
    #[error("no Vulkan device with compute and Vulkan 1.2 timeline semaphores")]
    NoDevice,
    /// The selector matched nothing.
    #[error("no Vulkan device matches {0:?} (have: {1})")]
    NoMatch(String, String),
    /// A Vulkan call failed.
    #[error("{0}: {1}")]
    Vk(&'static str, vk::Result),
}

/// What kind of device a GPU is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuKind {
    /// A discrete GPU.
    Discrete,
    /// An integrated GPU.
    Integrated,
    /// A virtual GPU.
    Virtual,
    /// A CPU implementation (lavapipe, SwiftShader).
    Cpu,
    /// Anything else.
    Other,
}

/// What `coproc list` shows about a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// Index among the loader's physical devices.
    pub index: usize,
    /// Device name.
    pub name: String,
    /// Driver name and version.
    pub driver: String,
    /// Kind.
    pub kind: GpuKind,
    /// Bytes of its device-local heaps (all heaps where none is local).
    pub memory_bytes: u64,
    /// Vulkan version it offers.
    pub api: (u32, u32, u32),
    /// Whether it can import host memory (`VK_EXT_external_memory_host`).
    pub host_import: bool,
}

impl GpuInfo {
    /// "name (driver)".
    pub fn model(&self) -> String {
        format!("{} ({})", self.name, self.driver)
    }
}

/// An open Vulkan instance (destroyed when the last holder drops it).
pub(crate) struct Instance {
    /// Keeps the loader library loaded while the instance lives.
    pub(crate) _entry: ash::Entry,
    pub(crate) instance: ash::Instance,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Instance")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: every object created from this instance (devices) is
        // destroyed before the last Arc holding it drops; nothing else
        // uses the handle afterwards.
        unsafe { self.instance.destroy_instance(None) };
    }
}

impl Instance {
    /// Load the Vulkan loader and create an instance for Vulkan 1.2.
    pub(crate) fn open() -> Result<Arc<Instance>, GpuError> {
        // SAFETY: loading the system's Vulkan loader runs its initialisers;
        // it is the documented way to reach Vulkan and is done once per
        // device.
        let entry = unsafe { ash::Entry::load() }.map_err(|e| GpuError::NoLoader(e.to_string()))?;
        let app = vk::ApplicationInfo::default()
            .application_name(c"coproc")
            .engine_name(c"coproc")
            .api_version(vk::API_VERSION_1_2);
        let ext = [ash::khr::portability_enumeration::NAME.as_ptr()];
        // SAFETY: `entry` is a loaded loader; the create info only borrows
        // locals that outlive the call.
        let have_portability = unsafe { entry.enumerate_instance_extension_properties(None) }
            .is_ok_and(|v| {
                v.iter().any(|e| {
                    e.extension_name_as_c_str() == Ok(ash::khr::portability_enumeration::NAME)
                })
            });
        let mut info = vk::InstanceCreateInfo::default().application_info(&app);
        if have_portability {
            info = info
                .enabled_extension_names(&ext)
                .flags(vk::InstanceCreateFlags::ENUMERATE_PORTABILITY_KHR);
        }
        // SAFETY: `entry` is a loaded loader; `info` and what it points at
        // (the application info, the extension names) are locals that
        // outlive the call.
        let instance = unsafe { entry.create_instance(&info, None) }
            .map_err(|e| GpuError::Vk("vkCreateInstance", e))?;
        Ok(Arc::new(Instance {
            _entry: entry,
            instance,
        }))
    }

    /// Every physical device that can serve: Vulkan ≥ 1.2, a compute queue,
    /// timeline semaphores.
    pub(crate) fn devices(&self) -> Result<Vec<(vk::PhysicalDevice, GpuInfo)>, GpuError> {
        // SAFETY: the instance is live.
        let pdevs = unsafe { self.instance.enumerate_physical_devices() }
            .map_err(|e| GpuError::Vk("vkEnumeratePhysicalDevices", e))?;
        let mut out = Vec::new();
        for (index, pd) in pdevs.into_iter().enumerate() {
            if let Some(info) = self.describe(index, pd) {
                out.push((pd, info));
            }
        }
        Ok(out)
    }

    fn describe(&self, index: usize, pd: vk::PhysicalDevice) -> Option<GpuInfo> {
        let i = &self.instance;
        // SAFETY: `pd` came from this instance; the queried structs are
        // locals the calls fill.
        let props = unsafe { i.get_physical_device_properties(pd) };
        if props.api_version < vk::API_VERSION_1_2 {
            return None;
        }
        let mut driver = vk::PhysicalDeviceDriverProperties::default();
        let mut p2 = vk::PhysicalDeviceProperties2::default().push_next(&mut driver);
        // SAFETY: `pd` was enumerated from the live instance `i`; the call
        // fills `p2` and the driver struct chained to it, live locals.
        unsafe { i.get_physical_device_properties2(pd, &mut p2) };
        let mut f12 = vk::PhysicalDeviceVulkan12Features::default();
        let mut f2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut f12);
        // SAFETY: `pd` was enumerated from the live instance `i`; the call
        // fills `f2` and the Vulkan 1.2 struct chained to it, live locals.
        unsafe { i.get_physical_device_features2(pd, &mut f2) };
        if f12.timeline_semaphore == 0 {
            return None;
        }
        compute_family(i, pd)?;
        // SAFETY: `pd` was enumerated from the live instance `i`; the call
        // returns a struct by value.
        let mem = unsafe { i.get_physical_device_memory_properties(pd) };
        let heaps = &mem.memory_heaps[..mem.memory_heap_count as usize];
        let local: u64 = heaps
            .iter()
            .filter(|h| h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL))
            .map(|h| h.size)
            .sum();
        let memory_bytes = if local > 0 {
            local
        } else {
            heaps.iter().map(|h| h.size).sum()
        };
        // SAFETY: `pd` was enumerated from the live instance `i`; the call
        // returns an owned vector.
        let exts = unsafe { i.enumerate_device_extension_properties(pd) }.unwrap_or_default();
        let host_import = exts
            .iter()
            .any(|e| e.extension_name_as_c_str() == Ok(ash::ext::external_memory_host::NAME));
        let cstr = |b: &[std::ffi::c_char]| {
            // SAFETY: Vulkan fills these fixed arrays with NUL-terminated
            // strings; `from_bytes_until_nul` stops at the array's end.
            let bytes = unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<u8>(), b.len()) };
            CStr::from_bytes_until_nul(bytes)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let name = cstr(&props.device_name);
        let dname = cstr(&driver.driver_name);
        let dinfo = cstr(&driver.driver_info);
        let driver = match (dname.is_empty(), dinfo.is_empty()) {
            (false, false) => format!("{dname} {dinfo}"),
            (false, true) => dname,
            _ => format!("driver {:#x}", props.driver_version),
        };
        let kind = match props.device_type {
            vk::PhysicalDeviceType::DISCRETE_GPU => GpuKind::Discrete,
            vk::PhysicalDeviceType::INTEGRATED_GPU => GpuKind::Integrated,
            vk::PhysicalDeviceType::VIRTUAL_GPU => GpuKind::Virtual,
            vk::PhysicalDeviceType::CPU => GpuKind::Cpu,
            _ => GpuKind::Other,
        };
        Some(GpuInfo {
            index,
            name,
            driver,
            kind,
            memory_bytes,
            api: (
                vk::api_version_major(props.api_version),
                vk::api_version_minor(props.api_version),
                vk::api_version_patch(props.api_version),
            ),
            host_import,
        })
    }

    /// The device `sel` picks.
    pub(crate) fn select(&self, sel: &Selector) -> Result<(vk::PhysicalDevice, GpuInfo), GpuError> {
        let devs = self.devices()?;
        if devs.is_empty() {
            return Err(GpuError::NoDevice);
        }
        let rank = |k: GpuKind| match k {
            GpuKind::Discrete => 0,
            GpuKind::Integrated => 1,
            GpuKind::Virtual => 2,
            GpuKind::Other => 3,
            GpuKind::Cpu => 4,
        };
        let found = match sel {
            Selector::Auto => devs.iter().min_by_key(|(_, i)| (rank(i.kind), i.index)),
            Selector::Index(n) => devs.iter().find(|(_, i)| i.index == *n),
            Selector::Name(s) => {
                let s = s.to_lowercase();
                devs.iter()
                    .find(|(_, i)| i.name.to_lowercase().contains(&s))
            }
        };
        found.cloned().ok_or_else(|| {
            let have = devs
                .iter()
                .map(|(_, i)| format!("{}: {}", i.index, i.name))
                .collect::<Vec<_>>()
                .join(", ");
            GpuError::NoMatch(format!("{sel:?}"), have)
        })
    }
}

/// The first queue family with compute.
pub(crate) fn compute_family(i: &ash::Instance, pd: vk::PhysicalDevice) -> Option<u32> {
    // SAFETY: `pd` came from `i`.
    let fams = unsafe { i.get_physical_device_queue_family_properties(pd) };
    fams.iter()
        .position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE) && f.queue_count > 0)
        .map(|p| p as u32)
}

/// The GPUs this machine offers, or why there are none.
pub fn probe() -> Result<Vec<GpuInfo>, GpuError> {
    let inst = Instance::open()?;
    let devs = inst.devices()?;
    if devs.is_empty() {
        return Err(GpuError::NoDevice);
    }
    Ok(devs.into_iter().map(|(_, i)| i).collect())
}
