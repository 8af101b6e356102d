//! Buffers: over imported host memory, or host-visible (staged or
//! local) memory of the device's own.

// Host sizes of buffers already bounded by the device limits (u64 to usize
// cannot truncate on 64-bit hosts).
#![allow(clippy::cast_possible_truncation)]

use super::{vkerr, Gpu};
use ash::vk;
use coproc_core::device::DeviceError;

fn usage() -> vk::BufferUsageFlags {
    vk::BufferUsageFlags::STORAGE_BUFFER
        | vk::BufferUsageFlags::UNIFORM_BUFFER
        | vk::BufferUsageFlags::TRANSFER_SRC
        | vk::BufferUsageFlags::TRANSFER_DST
}

impl Gpu {
    /// A buffer over `len` bytes of host memory at `ptr`, imported.
    pub(in crate::device) fn import(
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
