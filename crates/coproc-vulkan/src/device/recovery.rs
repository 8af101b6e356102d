//! Recovery: a command past the watchdog or a lost device faults the
//! context that submitted it; the device is recreated (every context's
//! pipelines, pools and buffers built again on a new `VkDevice`, local
//! memory carried over, the guilty context's zeroed) and the old one is
//! handed to a reaper thread that destroys it once idle.

// Host sizes of buffers already bounded when they were made (u64 to usize cannot truncate on 64-bit hosts).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use super::context::Backing;
use super::objects::{
    destroy_buf, destroy_ctx_vk, destroy_image, destroy_sampler, CtxVk, DeviceOwner, Gpu, Img,
};
use super::VulkanDevice;
use ash::vk;
use coproc_core::fault::{Access, DeviceFault, FaultReason};
use coproc_core::ids::ContextId;
use coproc_core::memory::Region;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Why a submission failed: the watchdog (execute's timeout) or the device
/// (an error from Vulkan, device loss included, or the test hook's loss).
pub(super) enum Failure {
    Watchdog,
    Lost(String),
}

/// What a lost or hung device still holds, for the reaper.
struct Remains {
    device: ash::Device,
    /// Destroys the device once nothing else holds it.
    owner: Arc<DeviceOwner>,
    ctxs: Vec<CtxVk>,
    bufs: Vec<(vk::Buffer, vk::DeviceMemory)>,
    images: Vec<Img>,
    samplers: Vec<vk::Sampler>,
    /// Domain memory the old device may still touch.
    held_regions: Vec<Arc<Region>>,
    /// Counts this device while it drains.
    draining: Arc<AtomicUsize>,
}

// SAFETY: only handles (integers), the ash function table and Arcs of Send
// + Sync data; used by exactly one reaper thread.
unsafe impl Send for Remains {}

fn reap(mut r: Remains) {
    // Wait for the old device's queue to drain (at once if it is lost).
    r.owner.wait_idle();
    r.draining.fetch_sub(1, Ordering::AcqRel);
    // The old device is idle and no longer given to loading threads; its
    // objects here are destroyed once, by this thread.
    for v in &mut r.ctxs {
        destroy_ctx_vk(&r.device, v);
    }
    for &(b, m) in &r.bufs {
        destroy_buf(&r.device, b, m);
    }
    for i in &r.images {
        destroy_image(&r.device, i);
    }
    for &s in &r.samplers {
        destroy_sampler(&r.device, s);
    }
    // The device itself goes with the last holder of its owner (this one,
    // or a loading thread still building on it).
    drop(r.owner);
}

impl VulkanDevice {
    /// Fault `id` for `f` (logged, rate-limited) and recreate the device.
    pub(super) fn fail(&mut self, id: ContextId, f: Failure) -> DeviceFault {
        let reason = match &f {
            Failure::Watchdog => FaultReason::Watchdog,
            Failure::Lost(_) => FaultReason::DeviceLost,
        };
        // A domain can cause these as often as the watchdog allows.
        if let Some(suppressed) = self.log.check() {
            match &f {
                Failure::Lost(why) => tracing::warn!(
                    vcoproc = %id, %why, suppressed,
                    "GPU device lost; recreating it"
                ),
                Failure::Watchdog => tracing::warn!(
                    vcoproc = %id, suppressed,
                    "GPU command past the watchdog; recreating the device"
                ),
            }
        }
        self.recover(id);
        DeviceFault {
            addr: None,
            access: Access::None,
            pc: None,
            reason,
        }
    }

    /// Recreate the device after a loss or a hang caused by `guilty`.
    fn recover(&mut self, guilty: ContextId) {
        let new = match Gpu::open(
            &self.inst,
            self.pdev,
            self.family,
            self.host_import,
            &self.optional,
            self.cfg
                .pipeline_cache
                .is_some()
                .then_some(&self.gpu.cache_data()[..]),
        ) {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "cannot recreate the GPU device");
                self.broken = Some(e.to_string());
                return;
            }
        };
        let old = std::mem::replace(&mut self.gpu, new);
        let mut remains = Remains {
            device: old.device.clone(),
            owner: old.owner.clone(),
            ctxs: std::mem::take(&mut self.stray_ctxs),
            bufs: std::mem::take(&mut self.stray),
            images: std::mem::take(&mut self.stray_images),
            samplers: std::mem::take(&mut self.stray_samplers),
            held_regions: Vec::new(),
            draining: self.draining.clone(),
        };
        self.draining.fetch_add(1, Ordering::AcqRel);
        self.set_target();
        let ids: Vec<ContextId> = self.ctxs.keys().copied().collect();
        let ts = self.limits.timestamps.is_some();
        for id in ids {
            let mut ctx = self.ctxs.remove(&id).expect("listed");
            remains.ctxs.push(std::mem::take(&mut ctx.vk));
            let mut rebuilt = self.gpu.new_ctx_vk(self.family, ts);
            if let (Ok(v), Some(fw)) = (rebuilt.as_mut(), ctx.firmware.as_ref()) {
                if let Err(e) = self.gpu.build_pipes(v, fw) {
                    tracing::error!(vcoproc = %id, error = %e, "pipelines not restored");
                }
            }
            match rebuilt {
                Ok(v) => ctx.vk = v,
                Err(e) => {
                    tracing::error!(vcoproc = %id, error = %e, "context not restored");
                }
            }
            let iovas: Vec<u64> = ctx.bufs.keys().copied().collect();
            for iova in iovas {
                let b = ctx.bufs.get_mut(&iova).expect("listed");
                // Device-local contents survive in the old mapping; the
                // guilty context's are dropped.
                let saved = (matches!(b.backing, Backing::Local) && id != guilty).then(|| {
                    // SAFETY: local memory is mapped for `len` bytes until
                    // freed, and the old device is idle or lost (its queue
                    // no longer runs this context's work).
                    unsafe { std::slice::from_raw_parts(b.ptr, b.len as usize) }.to_vec()
                });
                remains.bufs.push((b.buffer, b.memory));
                if let Backing::Domain { region, .. } = &b.backing {
                    remains.held_regions.push(region.clone());
                }
                let len = b.len;
                let made = match &b.backing {
                    Backing::Domain { region, offset } => {
                        let bk = Backing::Domain {
                            region: region.clone(),
                            offset: *offset,
                        };
                        self.make_buf(&bk, len)
                    }
                    Backing::Local => self.make_buf(&Backing::Local, len),
                };
                match made {
                    Ok((buffer, memory, ptr)) => {
                        if let Some(s) = saved {
                            // SAFETY: fresh mapping of at least `len` bytes.
                            unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), ptr, s.len()) };
                        }
                        b.buffer = buffer;
                        b.memory = memory;
                        b.ptr = ptr;
                    }
                    Err(e) => {
                        tracing::error!(vcoproc = %id, iova, error = %e, "buffer not restored");
                        ctx.bufs.remove(&iova);
                    }
                }
            }
            self.ctxs.insert(id, ctx);
        }
        if !self.reapers.spawn("vulkan-reaper", move || reap(remains)) {
            tracing::error!("no reaper thread; the old device leaks");
        }
    }
}
