//! Submission: [`execute`] records one command between timestamps,
//! submits it and waits for it under the watchdog; [`record_dispatch`]
//! records one dispatch into it.

// Timestamps scaled to nanoseconds.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use super::bindings::{write_sets, Descriptor};
use super::pipelines::{CtxVk, Pipe};
use super::Gpu;
use ash::vk;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
    write_sets(d, &pipe.sets, binds);
    // SAFETY: called from `execute`'s recording, on the command buffer of
    // the pipeline's own context, with its descriptor sets just written;
    // `push` is at most the pipeline's push range.
    unsafe {
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
