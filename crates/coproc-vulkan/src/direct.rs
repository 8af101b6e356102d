//! [`Direct`]: a firmware's compute entry point driven straight through ash,
//! in process, with no framework: no runner, policy, vcoproc, ring or
//! domain thread. It is the baseline of `coproc bench gpu-overhead`.
//!
//! It builds its objects with the same helpers as [`crate::VulkanDevice`]
//! (device, command pool, semaphore, queries, pipeline, host-visible
//! buffer) and records, submits and waits for each dispatch with the same
//! `execute` and `record_dispatch` the command processor
//! uses, so the benchmark compares the framework around them, not two
//! recordings. Memory is one host-visible buffer that every binding of the
//! pipeline sees (whole, unless [`Direct::bind`] narrows a binding).

// The benchmark baseline's own sizes and counts.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use crate::device::{
    destroy_buf, destroy_ctx_vk, execute, optional_features, queue_limits, record_dispatch,
    shader_limits, CtxVk, Descriptor, ExecError, Gpu,
};
use crate::gpu::{compute_family, GpuError, GpuInfo, Instance};
use crate::shader::{self, PipelineSpec, ShaderError};
use crate::Selector;
use ash::vk;
use coproc_core::device::DeviceError;
use coproc_proto::gpu::PUSH_WORDS;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a [`Direct`] could not be built or could not run a dispatch.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DirectError {
    /// No Vulkan, or no device matching the selector.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// The firmware image was refused.
    #[error(transparent)]
    Shader(#[from] ShaderError),
    /// The module has fewer compute entry points than the index asked for.
    #[error("no compute entry point {index} (the module has {count})")]
    NoEntryPoint {
        /// Index asked for.
        index: usize,
        /// Compute entry points in the module.
        count: usize,
    },
    /// Building an object or running the dispatch failed.
    #[error("{0}")]
    Vk(String),
    /// A byte range outside the buffer.
    #[error("{len} bytes at {offset} outside the {size}-byte buffer")]
    OutOfRange {
        /// First byte.
        offset: u64,
        /// Bytes.
        len: u64,
        /// Size of the buffer.
        size: u64,
    },
    /// A binding the pipeline does not use, or a range it cannot take.
    #[error("binding {binding}: {why}")]
    Binding {
        /// The binding.
        binding: u32,
        /// What is wrong with it.
        why: String,
    },
    /// Push-constant words beyond the 32 a command can set.
    #[error("push of {count} words at word {offset} outside {PUSH_WORDS} words")]
    Push {
        /// First word.
        offset: usize,
        /// Words.
        count: usize,
    },
    /// A workgroup count of 0 or beyond the device's per-axis limits.
    #[error("workgroups {groups:?} not within 1..={limit:?}")]
    Groups {
        /// The counts asked for.
        groups: [u32; 3],
        /// The device's limits.
        limit: [u32; 3],
    },
    /// The dispatch did not finish in time (see [`Direct::set_timeout`]).
    #[error("dispatch not finished after {0:?}")]
    Timeout(Duration),
}

/// One compute pipeline and one host-visible buffer on a `VkDevice` of its
/// own, dispatched one submission at a time.
pub struct Direct {
    gpu: Gpu,
    info: GpuInfo,
    spec: PipelineSpec,
    v: CtxVk,
    /// (ns per tick, valid-bit mask) when timestamps work on the queue.
    timestamps: Option<(f64, u64)>,
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    /// Host mapping of `memory`, `len` bytes (null until mapped).
    ptr: *mut u8,
    len: u64,
    /// Each binding the pipeline uses, on `buffer` (set at dispatch).
    binds: Vec<Descriptor>,
    push: [u32; PUSH_WORDS as usize],
    storage_align: u64,
    max_groups: [u32; 3],
    timeout: Duration,
    last_gpu_ns: u64,
    /// Never counts: no old device drains behind this one.
    draining: AtomicUsize,
    /// Dropped after the device (fields drop after `Drop::drop`).
    _inst: Arc<Instance>,
}

// SAFETY: `ptr` points into memory this value owns (mapped until `Drop`
// frees it) and is only used through `&self`/`&mut self`; the Vulkan
// handles' external synchronisation is provided by `&mut self` (every
// method that records, submits or waits takes it); `ash::Device` and
// `Arc<Instance>` hold function tables and handles any thread may use.
unsafe impl Send for Direct {}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("gpu", &self.info.name)
            .field("entry_point", &self.spec.name)
            .field("buffer_bytes", &self.len)
            .finish_non_exhaustive()
    }
}

fn dev_err(e: DeviceError) -> DirectError {
    DirectError::Vk(e.to_string())
}

impl Direct {
    /// Open the GPU `selector` picks, build pipeline `entry_index` (compute
    /// entry points in module order, as the `vulkan` class numbers them) of
    /// `image` (WGSL or SPIR-V), and a zeroed buffer of `buffer_bytes`.
    pub fn new(
        selector: &Selector,
        image: &[u8],
        entry_index: usize,
        buffer_bytes: u64,
    ) -> Result<Direct, DirectError> {
        let inst = Instance::open()?;
        let (pdev, info) = inst.select(selector)?;
        let family = compute_family(&inst.instance, pdev).ok_or(GpuError::NoDevice)?;
        let (l, timestamps) = queue_limits(&inst.instance, pdev, family);
        let optional = optional_features(&inst.instance, pdev);
        let limits = shader_limits(&l, &optional);
        let mut specs = shader::compile(image, &limits)?;
        if entry_index >= specs.len() {
            return Err(DirectError::NoEntryPoint {
                index: entry_index,
                count: specs.len(),
            });
        }
        let spec = specs.swap_remove(entry_index);
        if buffer_bytes == 0 {
            return Err(DirectError::OutOfRange {
                offset: 0,
                len: 0,
                size: 0,
            });
        }
        if let Some(b) = spec.bindings.iter().find(|b| b.min_bytes > buffer_bytes) {
            return Err(DirectError::Binding {
                binding: b.binding,
                why: format!(
                    "needs at least {} bytes, the buffer has {buffer_bytes}",
                    b.min_bytes
                ),
            });
        }
        // The device the `vulkan` class opens (without host import: the
        // buffer is the baseline's own memory).
        let gpu = Gpu::open(&inst, pdev, family, false, &optional, None)?;
        let binds = spec
            .bindings
            .iter()
            .map(|b| {
                Descriptor::buffer(
                    b.group,
                    b.binding,
                    b.kind,
                    vk::Buffer::null(),
                    0,
                    buffer_bytes,
                )
            })
            .collect();
        // From here on every object lands in `d`, whose `Drop` destroys what
        // exists (null handles are ignored) if a later step fails.
        let mut d = Direct {
            gpu,
            info,
            spec,
            v: CtxVk::default(),
            timestamps,
            buffer: vk::Buffer::null(),
            memory: vk::DeviceMemory::null(),
            ptr: std::ptr::null_mut(),
            len: buffer_bytes,
            binds,
            push: [0; PUSH_WORDS as usize],
            storage_align: l.min_storage_buffer_offset_alignment.max(4),
            max_groups: l.max_compute_work_group_count,
            timeout: Duration::from_secs(2),
            last_gpu_ns: 0,
            draining: AtomicUsize::new(0),
            _inst: inst.clone(),
        };
        d.v = d
            .gpu
            .new_ctx_vk(family, timestamps.is_some())
            .map_err(dev_err)?;
        d.gpu
            .build_pipes(&mut d.v, std::slice::from_ref(&d.spec))
            .map_err(dev_err)?;
        let (buffer, memory, ptr) = d.gpu.host_visible(buffer_bytes).map_err(dev_err)?;
        (d.buffer, d.memory, d.ptr) = (buffer, memory, ptr);
        Ok(d)
    }

    /// The GPU in use.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// The pipeline's entry point name.
    pub fn entry_point(&self) -> &str {
        &self.spec.name
    }

    /// Bytes of the buffer.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the buffer is empty (never: `new` refuses 0 bytes).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Longest a dispatch may take before [`DirectError::Timeout`]
    /// (default 2 s, the `vulkan` class's default watchdog).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), DirectError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(DirectError::OutOfRange {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    /// Copy `data` into the buffer at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DirectError> {
        self.check_range(offset, data.len() as u64)?;
        // SAFETY: the mapping covers `len` bytes and the range is inside
        // (checked); no GPU work is in flight (`dispatch` waits for its
        // submission before returning) and `&mut self` excludes readers.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(offset as usize), data.len());
        };
        Ok(())
    }

    /// Copy bytes of the buffer from `offset` into `out`.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), DirectError> {
        self.check_range(offset, out.len() as u64)?;
        // SAFETY: as for `write`; only `&mut self` methods write the
        // mapping, and no GPU work is in flight between calls.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.add(offset as usize),
                out.as_mut_ptr(),
                out.len(),
            );
        };
        Ok(())
    }

    /// `len` bytes of the buffer from `offset`.
    pub fn read_vec(&self, offset: u64, len: u64) -> Result<Vec<u8>, DirectError> {
        self.check_range(offset, len)?;
        let mut v = vec![0u8; len as usize];
        self.read(offset, &mut v)?;
        Ok(v)
    }

    /// Let `binding` see `len` bytes of the buffer from `offset` (`len` 0:
    /// to the end). Every binding sees the whole buffer until told
    /// otherwise.
    pub fn bind(&mut self, binding: u32, offset: u64, len: u64) -> Result<(), DirectError> {
        let len = if len == 0 {
            self.len.saturating_sub(offset)
        } else {
            len
        };
        self.check_range(offset, len)?;
        let why = |why: String| DirectError::Binding { binding, why };
        let Some(spec) = self.spec.bindings.iter().find(|b| b.binding == binding) else {
            return Err(why("not used by the pipeline".into()));
        };
        if !offset.is_multiple_of(self.storage_align) {
            return Err(why(format!(
                "offset {offset} not a multiple of {}",
                self.storage_align
            )));
        }
        if len < spec.min_bytes {
            return Err(why(format!("needs at least {} bytes", spec.min_bytes)));
        }
        if let Some(b) = self.binds.iter_mut().find(|b| b.binding == binding) {
            (b.offset, b.len) = (offset, len);
        }
        Ok(())
    }

    /// Set push-constant words from word `offset` (kept until changed).
    pub fn set_push(&mut self, offset: usize, words: &[u32]) -> Result<(), DirectError> {
        let end = offset.checked_add(words.len());
        match end {
            Some(end) if end <= self.push.len() => {
                self.push[offset..end].copy_from_slice(words);
                Ok(())
            }
            _ => Err(DirectError::Push {
                offset,
                count: words.len(),
            }),
        }
    }

    /// GPU time of the last dispatch from its timestamps, in ns (0 where
    /// the queue has no timestamps).
    pub fn last_gpu_ns(&self) -> u64 {
        self.last_gpu_ns
    }

    /// Record, submit and wait for one dispatch of `groups` workgroups with
    /// the current bindings and push constants. Returns the host time from
    /// the start of recording to the end of the wait (and of reading the
    /// timestamps).
    pub fn dispatch(&mut self, groups: [u32; 3]) -> Result<Duration, DirectError> {
        if groups.contains(&0) || groups.iter().zip(self.max_groups).any(|(&g, m)| g > m) {
            return Err(DirectError::Groups {
                groups,
                limit: self.max_groups,
            });
        }
        let t0 = Instant::now();
        let binds: Vec<Descriptor> = self
            .binds
            .iter()
            .map(|&b| Descriptor {
                buffer: self.buffer,
                ..b
            })
            .collect();
        let pb = self.spec.push_bytes.div_ceil(4) as usize;
        let push: Vec<u8> = self.push[..pb]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        self.last_gpu_ns = execute(
            &self.gpu,
            &mut self.v,
            self.timestamps,
            self.timeout,
            &self.draining,
            |d, cmd, pipes| record_dispatch(d, cmd, &pipes[0], &binds, &push, groups),
        )
        .map_err(|e| match e {
            ExecError::Timeout => DirectError::Timeout(self.timeout),
            ExecError::Failed(why) => DirectError::Vk(why),
        })?;
        Ok(t0.elapsed())
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        self.gpu.wait_idle();
        let d = &self.gpu.device;
        destroy_ctx_vk(d, &mut self.v);
        destroy_buf(d, self.buffer, self.memory);
        // The device itself goes with `self.gpu`'s owner.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coproc_firmware::gpu::{SAXPY, SPIN};
    use coproc_firmware::reference;

    fn words(b: &[u8]) -> Vec<u32> {
        b.chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn spin_matches_the_host_reference() {
        let n = 1000usize;
        let mut d = Direct::new(&Selector::Auto, SPIN.image, 0, 4 * n as u64)
            .expect("vulkan device (lavapipe installed?)");
        assert_eq!(d.entry_point(), "spin");
        for (seed, iters) in [(7u32, 1u32), (0xdead_beef, 300), (42, 4096), (3, 70_000)] {
            d.set_push(0, &[iters, seed, n as u32]).unwrap();
            d.dispatch([(n as u32).div_ceil(64), 1, 1]).unwrap();
            let got = words(&d.read_vec(0, 4 * n as u64).unwrap());
            assert_eq!(got, reference::spin(seed, iters, n), "seed {seed}");
        }
        // Only the first n elements are written (n is a push constant).
        let mut big = Direct::new(&Selector::Auto, SPIN.image, 0, 4 * 2 * n as u64).unwrap();
        big.write(4 * n as u64, &[0xab; 4]).unwrap();
        big.set_push(0, &[5, 1, n as u32]).unwrap();
        big.dispatch([(2 * n as u32).div_ceil(64), 1, 1]).unwrap();
        assert_eq!(big.read_vec(4 * n as u64, 4).unwrap(), vec![0xab; 4]);
    }

    #[test]
    fn refuses_what_the_device_would() {
        let e = Direct::new(&Selector::Auto, SPIN.image, 1, 4096).unwrap_err();
        assert!(
            matches!(e, DirectError::NoEntryPoint { index: 1, count: 1 }),
            "{e}"
        );
        let e = Direct::new(&Selector::Auto, b"fn main( {", 0, 4096).unwrap_err();
        assert!(matches!(e, DirectError::Shader(_)), "{e}");
        let mut d = Direct::new(&Selector::Auto, SAXPY.image, 0, 4096).unwrap();
        assert!(d.bind(2, 0, 0).is_err(), "saxpy has no binding 2");
        assert!(d.bind(0, 4000, 200).is_err(), "past the end");
        assert!(d.set_push(31, &[1, 2]).is_err());
        assert!(d.write(4090, &[0; 8]).is_err());
        assert!(d.dispatch([0, 1, 1]).is_err());
        // Two bindings over halves of the one buffer: y = a x + y.
        let x: Vec<f32> = (0..512).map(|i| i as f32).collect();
        let y: Vec<f32> = (0..512).map(|i| 1.0 + i as f32 / 2.0).collect();
        let bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
        d.write(0, &bytes(&x)).unwrap();
        d.write(2048, &bytes(&y)).unwrap();
        d.bind(0, 0, 2048).unwrap();
        d.bind(1, 2048, 2048).unwrap();
        d.set_push(0, &[2.5f32.to_bits(), 512]).unwrap();
        d.dispatch([8, 1, 1]).unwrap();
        let got: Vec<f32> = words(&d.read_vec(2048, 2048).unwrap())
            .into_iter()
            .map(f32::from_bits)
            .collect();
        assert_eq!(got, reference::saxpy(2.5, &x, &y));
    }
}
