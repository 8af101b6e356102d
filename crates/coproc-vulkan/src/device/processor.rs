//! The command processor: a GPU has no firmware CPU to read the
//! submission ring, so the runner thread does it. [`plan`] decodes nothing
//! and touches no Vulkan object: it checks one decoded command against the
//! context's firmware, slots and iova map and resolves it to buffers;
//! [`VulkanDevice::step`] then records and submits the [`Work`] (staging
//! domain memory where it is not imported); [`VulkanDevice::serve`] walks
//! the ring, posts completions and refusals, and keeps the mailbox-out
//! counters.

// Offsets and lengths are checked against the buffer they index before they become host sizes (u64 to usize cannot truncate on the 64-bit hosts coproc runs on); completion words are the ABI's u32 (GPU nanoseconds and signal values modulo 2^32).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use super::context::{revoked, Backing, Bound as Given, Ctx, Ring, Slot};
use super::objects::{
    destroy_image, destroy_sampler, execute, record_dispatch, record_image_in, record_image_out,
    Descriptor, ExecError, Img,
};
use super::recovery::Failure;
use super::{mbox_out, Limits, VulkanDevice, MBOX_QUEUE};
use crate::shader::BindingKind;
use ash::vk;
use coproc_core::control::ControlBlock;
use coproc_core::device::{thread_cpu_time, RunOutcome, StopReason};
use coproc_core::fault::{Access, DeviceFault, FaultReason};
use coproc_core::ids::ContextId;
use coproc_proto::gpu::{op, Command, ImageFormat, Status};
use coproc_proto::queue::{self as q, Consumer, Cqe, Sqe};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Loop turns of [`VulkanDevice::serve`] between reads of the runner
/// thread's CPU clock when no command submitted GPU work.
const CLOCK_TURNS: u32 = 16;

/// What one command asks the GPU to do, resolved to buffers.
pub(super) enum Work {
    Dispatch {
        pipe: usize,
        groups: [u32; 3],
        binds: Vec<Bound>,
        samplers: Vec<SamplerBind>,
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

/// One binding of a dispatch, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Bound {
    pub(super) group: u32,
    pub(super) binding: u32,
    pub(super) kind: BindingKind,
    /// Whether the shader writes it.
    pub(super) writable: bool,
    /// The buffer's iova (of an image: the buffer holding its texels).
    pub(super) start: u64,
    pub(super) offset: u64,
    pub(super) len: u64,
    /// An image's format and size.
    pub(super) image: Option<(ImageFormat, [u32; 2])>,
}

/// A sampler of a dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SamplerBind {
    pub(super) group: u32,
    pub(super) binding: u32,
    pub(super) linear: bool,
    pub(super) address: u32,
}

/// Objects made for one dispatch.
#[derive(Default)]
pub(super) struct Extras {
    /// (index in the binds, image)
    images: Vec<(usize, Img)>,
    /// (index in the samplers, sampler)
    samplers: Vec<(usize, vk::Sampler)>,
}

/// A command's fate.
pub(super) enum Step {
    Done,
    Refused(Status),
    Fault(DeviceFault),
}

/// Check `cmd` against `ctx`'s firmware, slots and iova map: `Ok` with the
/// work to record and submit, or `Err` with the command's fate when it
/// needs no GPU (a bind, push, barrier or signal; an empty copy or fill; a
/// refusal; a fault on a revoked binding). Bind and push update the
/// context's slots and push constants. Nothing here touches Vulkan.
fn plan(ctx: &mut Ctx, limits: &Limits, cmd: Command) -> Result<Work, Step> {
    Ok(match cmd {
        Command::Bind {
            group,
            binding,
            iova,
            len,
        } => {
            return Err(match ctx.resolve(u64::from(iova), u64::from(len)) {
                Some((start, off, len)) => {
                    ctx.slots.insert(
                        (group, binding),
                        Given::Buffer(Slot {
                            iova: start + off,
                            len,
                            gen: ctx.bufs[&start].gen,
                        }),
                    );
                    Step::Done
                }
                None => Step::Refused(Status::BadIova),
            });
        }
        Command::Image {
            group,
            binding,
            iova,
            format,
            width,
            height,
        } => {
            let len = u64::from(width) * u64::from(height) * u64::from(format.texel_bytes());
            return Err(match ctx.resolve(u64::from(iova), len) {
                Some((start, off, len)) => {
                    ctx.slots.insert(
                        (group, binding),
                        Given::Image {
                            slot: Slot {
                                iova: start + off,
                                len,
                                gen: ctx.bufs[&start].gen,
                            },
                            format,
                            size: [width, height],
                        },
                    );
                    Step::Done
                }
                None => Step::Refused(Status::BadIova),
            });
        }
        Command::Sampler {
            group,
            binding,
            linear,
            address,
        } => {
            ctx.slots
                .insert((group, binding), Given::Sampler { linear, address });
            return Err(Step::Done);
        }
        Command::Push {
            offset,
            count,
            values,
        } => {
            let o = offset as usize;
            ctx.push[o..o + count as usize].copy_from_slice(&values[..count as usize]);
            return Err(Step::Done);
        }
        Command::Barrier | Command::Signal { .. } => return Err(Step::Done),
        Command::Dispatch { pipeline, groups } => {
            let Some(fw) = ctx.firmware.clone() else {
                return Err(Step::Refused(Status::NoFirmware));
            };
            let Some(spec) = fw.get(pipeline as usize) else {
                return Err(Step::Refused(Status::BadPipeline));
            };
            let total = groups.iter().map(|&g| u64::from(g)).product::<u64>();
            if groups.contains(&0)
                || groups.iter().zip(limits.groups).any(|(&g, m)| g > m)
                || total > limits.max_groups
            {
                return Err(Step::Refused(Status::BadGroups));
            }
            let mut binds = Vec::with_capacity(spec.bindings.len());
            let mut samplers = Vec::new();
            for b in &spec.bindings {
                let (s, image) = match (b.kind, ctx.slots.get(&(b.group, b.binding))) {
                    (BindingKind::Storage | BindingKind::Uniform, Some(&Given::Buffer(s))) => {
                        (s, None)
                    }
                    (
                        BindingKind::StorageImage(_) | BindingKind::SampledImage(_),
                        Some(&Given::Image { slot, format, size }),
                    ) if b.kind.takes(format) => (slot, Some((format, size))),
                    (BindingKind::Sampler, Some(&Given::Sampler { linear, address })) => {
                        samplers.push(SamplerBind {
                            group: b.group,
                            binding: b.binding,
                            linear,
                            address,
                        });
                        continue;
                    }
                    _ => return Err(Step::Refused(Status::BadBinding)),
                };
                let Some((start, off, len)) = ctx.resolve(s.iova, s.len) else {
                    return Err(Step::Fault(revoked(s.iova, b.writable)));
                };
                let buf = &ctx.bufs[&start];
                if buf.gen != s.gen {
                    return Err(Step::Fault(revoked(s.iova, b.writable)));
                }
                let (align, range) = match (b.kind, image) {
                    (BindingKind::Uniform, _) => (limits.uniform_align, limits.uniform_range),
                    // Texels are copied from a 4-byte aligned offset that is
                    // a multiple of the texel size.
                    (_, Some((f, _))) => (u64::from(f.texel_bytes()).max(4), u64::MAX),
                    _ => (limits.storage_align, limits.storage_range),
                };
                if len < b.min_bytes || !off.is_multiple_of(align) {
                    return Err(Step::Refused(Status::BadBinding));
                }
                if b.writable && !buf.writable {
                    return Err(Step::Refused(Status::ReadOnly));
                }
                // A uniform block has a fixed size: the device sees at most
                // its range (the rest of a larger bind is not reachable).
                let len = match b.kind {
                    BindingKind::Uniform => len.min(range),
                    _ if len > range => {
                        return Err(Step::Refused(Status::BadBinding));
                    }
                    _ => len,
                };
                binds.push(Bound {
                    group: b.group,
                    binding: b.binding,
                    kind: b.kind,
                    writable: b.writable,
                    start,
                    offset: off,
                    len,
                    image,
                });
            }
            Work::Dispatch {
                pipe: pipeline as usize,
                groups,
                binds,
                samplers,
            }
        }
        Command::Copy { src, dst, len } => {
            if len == 0 {
                return Err(Step::Done);
            }
            let (Some(s), Some(d)) = (
                ctx.resolve(u64::from(src), u64::from(len)),
                ctx.resolve(u64::from(dst), u64::from(len)),
            ) else {
                return Err(Step::Refused(Status::BadIova));
            };
            if !ctx.bufs[&d.0].writable {
                return Err(Step::Refused(Status::ReadOnly));
            }
            if s.0 == d.0 && s.1 < d.1 + d.2 && d.1 < s.1 + s.2 {
                return Err(Step::Refused(Status::BadCommand));
            }
            Work::Copy {
                src: (s.0, s.1),
                dst: (d.0, d.1),
                len: u64::from(len),
            }
        }
        Command::Fill { dst, len, value } => {
            if len == 0 {
                return Err(Step::Done);
            }
            let Some(d) = ctx.resolve(u64::from(dst), u64::from(len)) else {
                return Err(Step::Refused(Status::BadIova));
            };
            if !ctx.bufs[&d.0].writable {
                return Err(Step::Refused(Status::ReadOnly));
            }
            Work::Fill {
                dst: (d.0, d.1),
                len: u64::from(len),
                value,
            }
        }
    })
}

impl VulkanDevice {
    /// Decode and carry out one command of context `id`, adding the device
    /// time it took to `gpu_ns` (the GPU's timestamps; for work that never
    /// finished, what it held the device for).
    fn step(&mut self, id: ContextId, sqe: &Sqe, gpu_ns: &mut u64) -> Step {
        let Ok(cmd) = Command::decode(sqe) else {
            return Step::Refused(Status::BadCommand);
        };
        let limits = self.limits;
        let Some(ctx) = self.ctxs.get_mut(&id) else {
            return Step::Refused(Status::NoFirmware);
        };
        let work = match plan(ctx, &limits, cmd) {
            Ok(work) => work,
            Err(step) => return step,
        };
        // A mapping revoked meanwhile (its view trapped, the runner's
        // tidy-up still to come) is gone: the command faults before it runs,
        // and a command that was running when the revoke came faults after
        // it, since part of its work went to the throwaway pages.
        if let Some(f) = self.ctxs.get(&id).and_then(|c| c.trapped(&work)) {
            return Step::Fault(f);
        }
        // The dispatch's images and samplers, made for it alone.
        let extras = match self.make_extras(&work) {
            Ok(x) => x,
            Err(status) => return Step::Refused(status),
        };
        let r = self.submit(id, &work, &extras);
        if r.is_err() {
            // May still be in use by the hung or lost work: they go to the
            // reaper with the device.
            self.stray_images
                .extend(extras.images.into_iter().map(|(_, i)| i));
            self.stray_samplers
                .extend(extras.samplers.into_iter().map(|(_, s)| s));
        } else {
            let d = &self.gpu.device;
            for (_, i) in &extras.images {
                destroy_image(d, i);
            }
            for &(_, s) in &extras.samplers {
                destroy_sampler(d, s);
            }
        }
        match r {
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
                // The GPU gives no timestamps for work it never finished.
                // Work the watchdog stopped held the device for the
                // watchdog's length at least; that, and the recovery it
                // caused, is the device time this vcoproc took from the
                // others, and it is charged as such (not the runner's CPU
                // time while it waited, which is next to nothing).
                let held = match f {
                    Failure::Watchdog => self.cfg.watchdog,
                    Failure::Lost(_) => Duration::ZERO,
                };
                let t0 = thread_cpu_time();
                let fault = self.fail(id, f);
                let took = held + thread_cpu_time().saturating_sub(t0);
                *gpu_ns += u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
                Step::Fault(fault)
            }
        }
    }

    /// The images (by index in the dispatch's binds) and samplers (by index
    /// in its samplers) a dispatch needs; a refusal if the device cannot
    /// make them.
    fn make_extras(&self, work: &Work) -> Result<Extras, Status> {
        let mut x = Extras::default();
        let Work::Dispatch {
            binds, samplers, ..
        } = work
        else {
            return Ok(x);
        };
        let r = (|| {
            for (i, b) in binds.iter().enumerate() {
                if let Some((format, size)) = b.image {
                    x.images.push((i, self.gpu.make_image(format, size)?));
                }
            }
            for (i, s) in samplers.iter().enumerate() {
                x.samplers
                    .push((i, self.gpu.make_sampler(s.linear, s.address)?));
            }
            Ok::<(), coproc_core::device::DeviceError>(())
        })();
        if r.is_err() {
            let d = &self.gpu.device;
            for (_, i) in &x.images {
                destroy_image(d, i);
            }
            for &(_, s) in &x.samplers {
                destroy_sampler(d, s);
            }
            return Err(Status::BadBinding);
        }
        Ok(x)
    }

    /// Record, submit and wait for one command; GPU nanoseconds it took.
    fn submit(&mut self, id: ContextId, work: &Work, extras: &Extras) -> Result<u64, Failure> {
        let ts = self.limits.timestamps;
        let watchdog = self.cfg.watchdog;
        let ctx = self
            .ctxs
            .get_mut(&id)
            .ok_or(Failure::Lost("no context".into()))?;
        // Staged buffers this command touches: (buffer iova, offset, len,
        // copy back).
        let staged: Vec<(u64, u64, u64, bool)> = match work {
            Work::Dispatch { binds, .. } => binds
                .iter()
                .filter(|b| ctx.bufs[&b.start].staged())
                .map(|b| (b.start, b.offset, b.len, b.writable))
                .collect(),
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
        let resolved: Vec<Descriptor> = match work {
            Work::Dispatch {
                binds, samplers, ..
            } => binds
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let mut d = Descriptor::buffer(
                        b.group,
                        b.binding,
                        b.kind,
                        ctx.bufs[&b.start].buffer,
                        b.offset,
                        b.len,
                    );
                    if let Some((_, img)) = extras.images.iter().find(|(j, _)| *j == i) {
                        d.view = img.view;
                    }
                    d
                })
                .chain(extras.samplers.iter().map(|&(i, sampler)| {
                    let s = &samplers[i];
                    Descriptor {
                        sampler,
                        ..Descriptor::buffer(
                            s.group,
                            s.binding,
                            BindingKind::Sampler,
                            vk::Buffer::null(),
                            0,
                            0,
                        )
                    }
                }))
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
                Work::Dispatch {
                    pipe,
                    groups,
                    binds,
                    ..
                } => {
                    for (i, img) in &extras.images {
                        let b = &binds[*i];
                        record_image_in(d, cmd, img, bufs[&b.start].buffer, b.offset);
                    }
                    record_dispatch(d, cmd, &pipes[*pipe], &resolved, &push, *groups);
                    for (i, img) in &extras.images {
                        let b = &binds[*i];
                        if b.writable {
                            record_image_out(d, cmd, img, bufs[&b.start].buffer, b.offset);
                        }
                    }
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
                // SAFETY: recording into the context's own command buffer,
                // not in flight (see `execute`); the range was resolved
                // inside this buffer of the context.
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
                // SAFETY: `b.ptr` maps `b.len` bytes and off + len <= b.len
                // (resolved against the buffer); the GPU work finished, so
                // nothing writes the mapping meanwhile.
                let src =
                    unsafe { std::slice::from_raw_parts(b.ptr.add(off as usize), len as usize) };
                let _ = region.write(offset + off, src);
            }
        }
        Ok(ns)
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

    /// Serve the current context's ring for at most `budget`: what
    /// [`Device::run`](coproc_core::device::Device::run) does.
    pub(super) fn serve(&mut self, budget: Duration) -> RunOutcome {
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
        let mut posted_before = ctx.posted;
        let mut late_signal = false;
        // The thread's CPU clock is a system call (no vDSO for it): it is
        // read around the commands that submit GPU work, and otherwise once
        // in `CLOCK_TURNS` turns, which bounds how stale the budget check
        // below can be (a few commands' decoding).
        let mut now = start;
        let mut unread = 0u32;
        let stop = loop {
            if self.preempt.0.swap(false, Ordering::AcqRel) {
                break StopReason::Preempted;
            }
            if unread >= CLOCK_TURNS {
                now = thread_cpu_time();
                unread = 0;
            }
            unread += 1;
            let over = now.saturating_sub(start).saturating_sub(waited)
                + Duration::from_nanos(gpu_ns)
                >= budget;
            let Some(ctx) = self.ctxs.get_mut(&id) else {
                break StopReason::Waiting;
            };
            let Some(ring) = ctx.ring.as_mut() else {
                break StopReason::Waiting;
            };
            let Ok(pending) = ring.pending() else {
                ctx.garbage += 1;
                control.write_out(mbox_out::GARBAGE, ctx.garbage);
                break StopReason::Waiting;
            };
            if pending == 0 {
                let poll = Duration::from_micros(u64::from(ring.ring.poll_us()));
                if poll.is_zero() {
                    break StopReason::Waiting;
                }
                if over {
                    // Parking on a busy-poll queue, whose polling word may
                    // still say otherwise from earlier in the slice: what
                    // the domain submitted without ringing keeps the
                    // vcoproc runnable.
                    if self.stop_polling(id) {
                        break StopReason::BudgetSpent;
                    }
                    break StopReason::Waiting;
                }
                // A busy-poll queue: show what is done, then look at the
                // submission tail for up to the queue's budget (and no
                // longer than the slice) before parking, so a domain that
                // submits again at once is served without a doorbell or a
                // wake-up of this thread. The spin is runner time, charged
                // to this vcoproc like the rest of its slice.
                Self::publish(ctx, &control, &mut posted_before);
                let charged = host().saturating_sub(waited) + Duration::from_nanos(gpu_ns);
                if self.poll_ring(id, poll, budget.saturating_sub(charged)) {
                    continue;
                }
                break StopReason::Waiting;
            }
            if ring.cq_full() {
                break StopReason::Waiting;
            }
            let index = ring.ring.sq_head();
            let sqe = ring.sqe();
            let is_signal = sqe.opcode == op::SIGNAL;
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
            let submits = matches!(sqe.opcode, op::DISPATCH | op::COPY | op::FILL);
            let t0 = if submits { thread_cpu_time() } else { now };
            let mut ns = 0;
            let step = self.step(id, &sqe, &mut ns);
            if ns > 0 {
                // The GPU's own measure replaces the host's time around the
                // submission.
                let t1 = thread_cpu_time();
                waited += t1.saturating_sub(t0);
                gpu_ns += ns;
                (now, unread) = (t1, 0);
            } else if submits {
                (now, unread) = (t0, 0);
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
            Self::publish(ctx, &control, &mut posted_before);
        }
        outcome(stop, waited, gpu_ns)
    }

    /// Publish a context's counters in its mailbox and notify its domain if
    /// completions were posted since `posted_before` (then moved up).
    fn publish(ctx: &mut Ctx, control: &ControlBlock, posted_before: &mut u32) {
        control.write_out(mbox_out::POSTED, ctx.posted);
        control.write_out(mbox_out::EXECUTED, ctx.executed);
        control.write_out(mbox_out::REFUSED, ctx.refused);
        if ctx.posted != *posted_before {
            control.set_notify_tag(ctx.posted);
            ctx.seq = ctx.seq.wrapping_add(1);
            control.notify(ctx.seq);
            *posted_before = ctx.posted;
        }
    }

    /// Before context `id` parks: clear its queue's polling word (the
    /// domain rings again from now on) and look at the tail once more
    /// after it. True if something was submitted (or the tail is garbage)
    /// meanwhile.
    fn stop_polling(&mut self, id: ContextId) -> bool {
        let Some(r) = self.ctxs.get_mut(&id).and_then(|c| c.ring.as_mut()) else {
            return false;
        };
        r.set_polling(false);
        !matches!(r.pending(), Ok(0))
    }

    /// Spin on context `id`'s submission tail for up to `poll` of wall time
    /// and `cpu` of this thread's CPU time, saying so in the queue's
    /// polling word (the domain does not ring meanwhile). True when the
    /// main loop has something to look at (submissions, a preempt request,
    /// garbage); false when the budget ran out with nothing submitted, the
    /// polling word cleared and the tail looked at once more after it.
    fn poll_ring(&mut self, id: ContextId, poll: Duration, cpu: Duration) -> bool {
        let (t0, c0) = (std::time::Instant::now(), thread_cpu_time());
        let mut turns = 0u32;
        if let Some(r) = self.ctxs.get(&id).and_then(|c| c.ring.as_ref()) {
            r.set_polling(true);
        }
        loop {
            if self.preempt.0.load(Ordering::Acquire) {
                return true;
            }
            match self
                .ctxs
                .get_mut(&id)
                .and_then(|c| c.ring.as_mut())
                .map(Ring::pending)
            {
                Some(Ok(n)) if n > 0 => return true,
                Some(Ok(_)) => {}
                // Garbage or no ring: the main loop says so.
                _ => return true,
            }
            // The clocks are read one turn in 64.
            turns = turns.wrapping_add(1);
            if turns.is_multiple_of(64)
                && (t0.elapsed() >= poll || thread_cpu_time().saturating_sub(c0) >= cpu)
            {
                return self.stop_polling(id);
            }
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests;
