//! Firmware made ready off the runner: the class's `FirmwarePrep` compiles
//! with naga ([`crate::shader`]) and then, on the same loading thread,
//! creates the pipelines on the current `VkDevice` and runs each once on
//! one workgroup with scratch buffers (a driver that compiles on first
//! use, such as lavapipe, compiles then). The runner only adopts the
//! pipelines (`install_firmware`), or builds them itself when the device
//! was replaced meanwhile or the loading thread could not.
//!
//! The loading thread shares the device with the runner: the device is
//! destroyed only when its last holder lets go (`DeviceOwner`), queue
//! submissions are serialised by the owner's lock, and while a trial run
//! is on the queue the runner's commands that wait behind it are not
//! blamed for the time (the `draining` count, as for an old device that
//! drains).

use super::objects::{destroy_buf, destroy_ctx_vk, execute, record_dispatch, CtxVk, Descriptor};
use super::objects::{destroy_image, destroy_sampler, ExecError, Gpu, Img};
use super::recovery::Failure;
use crate::shader::BindingKind;
use crate::shader::{compile, PipelineSpec, ShaderLimits};
use ash::vk;
use coproc_core::device::{DeviceError, FirmwarePrep, PreparedFirmware};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a loading thread builds on: the runner's current device.
#[derive(Clone)]
pub(super) struct Target {
    pub(super) gpu: Gpu,
    pub(super) family: u32,
    /// The device's count of work that delays others' commands.
    pub(super) draining: Arc<AtomicUsize>,
    /// Longest a trial run may take.
    pub(super) timeout: Duration,
    /// One trial at a time on a device: loads in parallel (or in a loop)
    /// do not stack trial runs on its queue.
    pub(super) trials: Arc<Mutex<()>>,
    /// Threads that destroy what a hung trial left, joined when the
    /// device goes.
    pub(super) reapers: Reapers,
}

/// Threads that wait for an old or hung device to go idle and then
/// destroy what it held. The device joins them when it is dropped, so no
/// thread is inside the driver once it is gone (a process that exits
/// under such a thread crashes in the driver's teardown).
#[derive(Clone, Default)]
pub(super) struct Reapers(Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>);

impl Reapers {
    /// Run `f` on a reaper thread named `name`; false if none could start.
    pub(super) fn spawn(&self, name: &str, f: impl FnOnce() + Send + 'static) -> bool {
        let Ok(h) = std::thread::Builder::new().name(name.into()).spawn(f) else {
            return false;
        };
        let mut all = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        all.retain(|h| !h.is_finished());
        all.push(h);
        true
    }

    /// Wait for every reaper (each ends once its device is idle).
    pub(super) fn join_all(&self) {
        let all = std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if all.iter().any(|h| !h.is_finished()) {
            tracing::info!(reapers = all.len(), "waiting for old GPU work to drain");
        }
        for h in all {
            let _ = h.join();
        }
    }
}

/// The current target, replaced by the runner when it recreates the
/// device and cleared when the device goes.
pub(super) type Slot = Arc<Mutex<Option<Target>>>;

/// The vulkan class's `FirmwarePrep`.
pub(super) struct Prep {
    pub(super) limits: ShaderLimits,
    pub(super) target: Slot,
}

/// Holds one count of `draining` until dropped.
pub(super) struct Draining(Arc<AtomicUsize>);

impl Draining {
    fn new(count: &Arc<AtomicUsize>) -> Draining {
        count.fetch_add(1, Ordering::AcqRel);
        Draining(count.clone())
    }
}

impl Drop for Draining {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Pipelines built and tried on a device by a loading thread.
pub(super) struct Built {
    /// The device (its owner held until everything here is destroyed).
    pub(super) gpu: Gpu,
    /// The pipelines, and the command pool and semaphore of the trial.
    pub(super) vk: Option<CtxVk>,
    /// The trial's scratch buffer.
    pub(super) scratch: Option<(vk::Buffer, vk::DeviceMemory)>,
    /// The trial's scratch images and samplers.
    pub(super) images: Vec<Img>,
    pub(super) samplers: Vec<vk::Sampler>,
    /// How the trial ended; a failed one may still run on the device,
    /// which then has to be recreated by the runner.
    pub(super) trial: Result<(), Failure>,
    /// Keeps others' commands from being blamed while a hung trial holds
    /// the queue, until the runner has recreated the device.
    pub(super) hold_draining: Option<Draining>,
    /// Where a hung trial's clean-up thread goes.
    pub(super) reapers: Reapers,
}

impl Drop for Built {
    fn drop(&mut self) {
        let (vk, scratch) = (self.vk.take(), self.scratch.take());
        let images = std::mem::take(&mut self.images);
        let samplers = std::mem::take(&mut self.samplers);
        if vk.is_none() && scratch.is_none() && images.is_empty() && samplers.is_empty() {
            return;
        }
        let gpu = self.gpu.clone();
        let destroy = move || {
            if let Some(mut v) = vk {
                destroy_ctx_vk(&gpu.device, &mut v);
            }
            if let Some((b, m)) = scratch {
                destroy_buf(&gpu.device, b, m);
            }
            for i in &images {
                destroy_image(&gpu.device, i);
            }
            for &s in &samplers {
                destroy_sampler(&gpu.device, s);
            }
        };
        if self.trial.is_ok() {
            // Nothing of it is in flight.
            destroy();
        } else {
            // A hung trial may still use them: destroyed once the device is
            // idle, away from this thread.
            let gpu = self.gpu.clone();
            let spawned = self.reapers.spawn("vulkan-trial-reaper", move || {
                gpu.wait_idle();
                destroy();
            });
            if !spawned {
                tracing::error!("GPU objects of a hung trial run leaked");
            }
        }
    }
}

/// A firmware image made ready by [`Prep`].
pub(super) struct Prepared {
    pub(super) specs: Vec<PipelineSpec>,
    /// `None`: no device to build on, or building failed (the runner
    /// builds then).
    pub(super) built: Option<Built>,
}

impl FirmwarePrep for Prep {
    fn prepare(&self, image: &[u8]) -> Result<PreparedFirmware, DeviceError> {
        let specs =
            compile(image, &self.limits).map_err(|e| DeviceError::BadFirmware(e.to_string()))?;
        let target = self
            .target
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let built = target.and_then(|t| build(&t, &specs));
        Ok(Box::new(Prepared { specs, built }))
    }
}

/// Build `specs` on `t`'s device and try each once; `None` if the objects
/// cannot be made (the runner tries again). Used by the loading thread
/// and, for a device replaced meanwhile, by the runner.
pub(super) fn build(t: &Target, specs: &[PipelineSpec]) -> Option<Built> {
    let gpu = t.gpu.clone();
    let mut v = gpu.new_ctx_vk(t.family, false).ok()?;
    if let Err(e) = gpu.build_pipes(&mut v, specs) {
        tracing::debug!(error = %e, "pipelines not built off the runner");
        destroy_ctx_vk(&gpu.device, &mut v);
        return None;
    }
    let mut built = Built {
        gpu,
        vk: Some(v),
        scratch: None,
        images: Vec::new(),
        samplers: Vec::new(),
        trial: Ok(()),
        hold_draining: None,
        reapers: t.reapers.clone(),
    };
    let most = specs
        .iter()
        .flat_map(|s| &s.bindings)
        .map(|b| b.min_bytes)
        .max()
        .unwrap_or(0);
    let len = most.max(256).next_multiple_of(256);
    let Ok((buffer, memory, _)) = built.gpu.host_visible(len) else {
        // No scratch memory: the driver compiles at the first job.
        return Some(built);
    };
    built.scratch = Some((buffer, memory));
    let v = built.vk.as_mut()?;
    // This trial's own wait is bounded; the runner's commands queued
    // behind it are not blamed meanwhile.
    let _one = t
        .trials
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let hold = Draining::new(&t.draining);
    let own = AtomicUsize::new(0);
    for (i, spec) in specs.iter().enumerate() {
        // Scratch images (1 x 1, of the format each binding takes) and
        // samplers for what is not a buffer.
        let mut binds = Vec::with_capacity(spec.bindings.len());
        for b in &spec.bindings {
            let mut d = Descriptor::buffer(b.group, b.binding, b.kind, buffer, 0, b.min_bytes);
            match b.kind {
                BindingKind::Storage | BindingKind::Uniform => {}
                BindingKind::Sampler => match built.gpu.make_sampler(false, 0) {
                    Ok(s) => {
                        d.sampler = s;
                        built.samplers.push(s);
                    }
                    Err(_) => return Some(built),
                },
                kind => {
                    let format = scratch_format(kind);
                    match built.gpu.make_image(format, [1, 1]) {
                        Ok(img) => {
                            d.view = img.view;
                            built.images.push(img);
                        }
                        Err(_) => return Some(built),
                    }
                }
            }
            binds.push(d);
        }
        let push = vec![0u8; spec.push_bytes.div_ceil(4) as usize * 4];
        let imgs = &built.images;
        let r = execute(&built.gpu, v, None, t.timeout, &own, |d, cmd, pipes| {
            for img in imgs {
                // Into the general layout (contents undefined: scratch).
                super::objects::record_image_layout(d, cmd, img);
            }
            record_dispatch(d, cmd, &pipes[i], &binds, &push, [1, 1, 1]);
        });
        if let Err(e) = r {
            built.trial = Err(match e {
                ExecError::Timeout => Failure::Watchdog,
                ExecError::Failed(why) => Failure::Lost(why),
            });
            built.hold_draining = Some(hold);
            return Some(built);
        }
    }
    drop(hold);
    Some(built)
}

/// A format an image binding of `kind` takes.
fn scratch_format(kind: BindingKind) -> coproc_proto::gpu::ImageFormat {
    use coproc_proto::gpu::ImageFormat as F;
    match kind {
        BindingKind::StorageImage(f) => f,
        BindingKind::SampledImage(Some(false)) => F::R32Uint,
        BindingKind::SampledImage(Some(true)) => F::R32Sint,
        _ => F::R32Float,
    }
}
