//! Descriptor bindings: how a pipeline's bindings are laid out (its set
//! layouts and the descriptor pool they come from), and the descriptors
//! of one dispatch ([`Descriptor`]) written into its sets.

// Descriptor counts bounded by the device's limits.
#![allow(clippy::cast_possible_truncation)]

use crate::shader::{BindingKind, PipelineSpec};
use ash::vk;

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

/// The descriptor set layout bindings of `spec`, one list per group
/// `0..spec.groups()` (empty ones included).
pub(super) fn set_layout_bindings(
    spec: &PipelineSpec,
) -> Vec<Vec<vk::DescriptorSetLayoutBinding<'static>>> {
    (0..spec.groups())
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
        .collect()
}

/// A descriptor pool's sizes for the sets of `specs`: every descriptor
/// type the class binds, as many of each as their layouts declare (at
/// least one).
pub(super) fn pool_sizes(specs: &[PipelineSpec]) -> [vk::DescriptorPoolSize; 5] {
    let layouts: Vec<_> = specs
        .iter()
        .flat_map(set_layout_bindings)
        .flatten()
        .collect();
    [
        vk::DescriptorType::STORAGE_BUFFER,
        vk::DescriptorType::UNIFORM_BUFFER,
        vk::DescriptorType::STORAGE_IMAGE,
        vk::DescriptorType::SAMPLED_IMAGE,
        vk::DescriptorType::SAMPLER,
    ]
    .map(|ty| vk::DescriptorPoolSize {
        ty,
        descriptor_count: (layouts.iter().filter(|l| l.descriptor_type == ty).count() as u32)
            .max(1),
    })
}

/// Write `binds` into `sets` (one per group; a bind of a group past them
/// is left out).
pub(super) fn write_sets(d: &ash::Device, sets: &[vk::DescriptorSet], binds: &[Descriptor]) {
    // What each write points at: a buffer range or an image view and
    // sampler, by the bind's kind.
    let infos: Vec<([vk::DescriptorBufferInfo; 1], [vk::DescriptorImageInfo; 1])> = binds
        .iter()
        .map(|b| {
            (
                [vk::DescriptorBufferInfo {
                    buffer: b.buffer,
                    offset: b.offset,
                    range: b.len,
                }],
                [vk::DescriptorImageInfo {
                    sampler: b.sampler,
                    image_view: b.view,
                    image_layout: vk::ImageLayout::GENERAL,
                }],
            )
        })
        .collect();
    let writes: Vec<_> = binds
        .iter()
        .zip(&infos)
        .filter_map(|(b, (info, image))| {
            let w = vk::WriteDescriptorSet::default()
                .dst_set(*sets.get(b.group as usize)?)
                .dst_binding(b.binding)
                .descriptor_type(descriptor_type(b.kind));
            Some(match b.kind {
                BindingKind::Storage | BindingKind::Uniform => w.buffer_info(info),
                _ => w.image_info(image),
            })
        })
        .collect();
    // SAFETY: called from `record_dispatch`, while recording for the
    // pipeline's own context: the descriptor sets are the pipeline's own
    // and not in use (no submission of that context is in flight); the
    // callers checked each range lies inside its buffer and each binding
    // is one the pipeline declares.
    unsafe { d.update_descriptor_sets(&writes, &[]) };
}
