//! Each context's objects ([`CtxVk`]): command pool and buffer, timeline
//! semaphore, timestamp queries, and the descriptor pool and pipelines of
//! its firmware ([`Pipe`]); built on a [`Gpu`] here or on a loading thread
//! ([`Pipes`]), destroyed with the context.

use super::bindings::{pool_sizes, set_layout_bindings};
use super::{vkerr, Gpu};
use crate::shader::PipelineSpec;
use ash::vk;
use coproc_core::device::DeviceError;

/// One compute pipeline with its shader module, layouts and descriptor
/// sets.
pub(crate) struct Pipe {
    pub(super) module: vk::ShaderModule,
    /// One per group `0..spec.groups()` (empty ones included).
    pub(super) set_layouts: Vec<vk::DescriptorSetLayout>,
    pub(super) layout: vk::PipelineLayout,
    pub(super) pipeline: vk::Pipeline,
    pub(super) sets: Vec<vk::DescriptorSet>,
}

/// A context's Vulkan objects (all on the current [`Gpu`]).
#[derive(Default)]
pub(crate) struct CtxVk {
    pub(super) cmd_pool: vk::CommandPool,
    pub(super) cmd: vk::CommandBuffer,
    pub(super) sem: vk::Semaphore,
    /// The timeline value of the last submission.
    pub(in crate::device) value: u64,
    pub(super) query: Option<vk::QueryPool>,
    pub(super) desc_pool: Option<vk::DescriptorPool>,
    pub(super) pipes: Vec<Pipe>,
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

impl Gpu {
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
        let sizes = pool_sizes(specs);
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
        let binds = set_layout_bindings(spec);
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
