//! Images and samplers of one dispatch: made before it, destroyed after
//! it; the copies and layout transitions recorded around the dispatch.

use super::{vkerr, Gpu};
use ash::vk;
use coproc_core::device::DeviceError;
use coproc_proto::gpu::ImageFormat;

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

impl Gpu {
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
    let to_dst = [transition(
        img,
        vk::AccessFlags::empty(),
        vk::AccessFlags::TRANSFER_WRITE,
        vk::ImageLayout::UNDEFINED,
        vk::ImageLayout::TRANSFER_DST_OPTIMAL,
    )];
    let to_general = [transition(
        img,
        vk::AccessFlags::TRANSFER_WRITE,
        vk::AccessFlags::SHADER_READ | vk::AccessFlags::SHADER_WRITE,
        vk::ImageLayout::TRANSFER_DST_OPTIMAL,
        vk::ImageLayout::GENERAL,
    )];
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
    let to_general = [transition(
        img,
        vk::AccessFlags::empty(),
        vk::AccessFlags::SHADER_READ | vk::AccessFlags::SHADER_WRITE,
        vk::ImageLayout::UNDEFINED,
        vk::ImageLayout::GENERAL,
    )];
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
    let to_src = [transition(
        img,
        vk::AccessFlags::SHADER_WRITE,
        vk::AccessFlags::TRANSFER_READ,
        vk::ImageLayout::GENERAL,
        vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
    )];
    // SAFETY: recording into the context's own command buffer, not in
    // flight (see `execute`); the image and buffer are the context's, and
    // the caller checked the texels fit inside the buffer.
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

/// A layout transition of all of `img`, from the accesses `src` in
/// layout `old` to the accesses `dst` in layout `new`.
fn transition(
    img: &Img,
    src: vk::AccessFlags,
    dst: vk::AccessFlags,
    old: vk::ImageLayout,
    new: vk::ImageLayout,
) -> vk::ImageMemoryBarrier<'static> {
    vk::ImageMemoryBarrier::default()
        .src_access_mask(src)
        .dst_access_mask(dst)
        .old_layout(old)
        .new_layout(new)
        .src_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
        .dst_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
        .image(img.image)
        .subresource_range(color_range())
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
    // SAFETY: the sampler belongs to `d` and no submission using it is in
    // flight (the dispatch that used it was waited for, or never
    // submitted; a hung one's device is recreated first and the sampler
    // handed to its reaper); a null handle is ignored by Vulkan.
    unsafe { d.destroy_sampler(s, None) };
}
