//! The state a vcoproc has on the device: its Vulkan objects, its buffers
//! by iova (what each is backed by, whether it may be written, the mapping
//! generation), its binding slots and push constants, the submission ring
//! it serves, and its counters. Plain data apart from the handles in
//! [`CtxVk`] and [`Buf`]: nothing here calls Vulkan.

use super::objects::CtxVk;
use super::processor::Work;
use crate::shader::PipelineSpec;
use ash::vk;
use coproc_abi::Shared;
use coproc_core::control::ControlBlock;
use coproc_core::fault::{Access, DeviceFault, FaultReason};
use coproc_core::memory::Region;
use coproc_proto::gpu::PUSH_WORDS;
use coproc_proto::queue::{Consumer, Cqe, Garbage, Sqe};
use std::collections::BTreeMap;
use std::sync::Arc;

pub(super) enum Backing {
    /// Domain memory: `region` from `offset`.
    Domain { region: Arc<Region>, offset: u64 },
    /// Device-local memory of the context.
    Local,
}

pub(super) struct Buf {
    pub(super) len: u64,
    pub(super) writable: bool,
    /// Changes whenever the iova is mapped anew.
    pub(super) gen: u64,
    pub(super) backing: Backing,
    pub(super) buffer: vk::Buffer,
    pub(super) memory: vk::DeviceMemory,
    /// The host mapping of staged and local memory (null: imported).
    pub(super) ptr: *mut u8,
}

impl Buf {
    pub(super) fn staged(&self) -> bool {
        matches!(self.backing, Backing::Domain { .. }) && !self.ptr.is_null()
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    pub(super) iova: u64,
    pub(super) len: u64,
    pub(super) gen: u64,
}

/// What a binding was given.
#[derive(Debug, Clone, Copy)]
pub(super) enum Bound {
    /// A buffer range (`bind`).
    Buffer(Slot),
    /// An image whose texels are the range (`image`).
    Image {
        slot: Slot,
        format: coproc_proto::gpu::ImageFormat,
        size: [u32; 2],
    },
    /// A sampler (`sampler`).
    Sampler { linear: bool, address: u32 },
}

/// The submission ring a context serves: the device side of a
/// `coproc_abi` queue, reached only through its typed accessor.
pub(super) struct Ring {
    pub(super) iova: u64,
    pub(super) gen: u64,
    pub(super) region: Arc<Region>,
    /// Offset of the queue header in `region`.
    pub(super) base: u64,
    /// Bytes of the queue (header and both rings).
    pub(super) len: u64,
    #[allow(clippy::struct_field_names)] // the ring's consumer end
    pub(super) ring: Consumer,
}

impl Ring {
    /// The queue's memory (checked to fit the region at attach).
    pub(super) fn mem(region: &Region, base: u64, len: u64) -> Option<Shared<'_>> {
        coproc_core::shared::view(region).sub(base, len).ok()
    }

    /// Submissions waiting, or garbage (counted by the consumer).
    pub(super) fn pending(&mut self) -> Result<u32, Garbage> {
        match Self::mem(&self.region, self.base, self.len) {
            Some(m) => self.ring.pending(&m),
            None => Ok(0),
        }
    }

    /// The submission at the head.
    pub(super) fn sqe(&self) -> Sqe {
        match Self::mem(&self.region, self.base, self.len) {
            Some(m) => self.ring.peek(&m),
            None => Sqe::default(),
        }
    }

    /// Give the head's slot back.
    pub(super) fn consume(&mut self) {
        if let Some(m) = Self::mem(&self.region, self.base, self.len) {
            self.ring.consume(&m);
        }
    }

    /// Post a completion if the ring has room.
    pub(super) fn post(&mut self, c: &Cqe) -> bool {
        Self::mem(&self.region, self.base, self.len).is_some_and(|m| self.ring.push(&m, c))
    }

    pub(super) fn cq_full(&self) -> bool {
        Self::mem(&self.region, self.base, self.len).is_none_or(|m| self.ring.cq_full(&m))
    }

    /// Say whether the submission tail is polled (`Consumer::set_polling`:
    /// after `false`, look at the tail once more before parking).
    pub(super) fn set_polling(&self, on: bool) {
        if let Some(m) = Self::mem(&self.region, self.base, self.len) {
            self.ring.set_polling(&m, on);
        }
    }
}

/// One vcoproc (context) on the device.
pub(super) struct Ctx {
    pub(super) control: Arc<ControlBlock>,
    pub(super) firmware: Option<Arc<[PipelineSpec]>>,
    pub(super) vk: CtxVk,
    pub(super) bufs: BTreeMap<u64, Buf>,
    pub(super) local_bytes: u64,
    /// The buffer bound to each (group, binding); at most
    /// `MAX_GROUPS * MAX_BINDING` entries (the decoder bounds both).
    pub(super) slots: BTreeMap<(u32, u32), Bound>,
    pub(super) push: [u32; PUSH_WORDS as usize],
    pub(super) ring: Option<Ring>,
    pub(super) aborted: bool,
    pub(super) job_gpu_ns: u64,
    pub(super) seq: u32,
    pub(super) posted: u32,
    pub(super) garbage: u32,
    pub(super) executed: u32,
    pub(super) refused: u32,
}

impl Ctx {
    /// A context with `vk` for its objects and nothing mapped, bound or
    /// loaded yet.
    pub(super) fn new(control: Arc<ControlBlock>, vk: CtxVk) -> Ctx {
        Ctx {
            control,
            firmware: None,
            vk,
            bufs: BTreeMap::new(),
            local_bytes: 0,
            slots: BTreeMap::new(),
            push: [0; PUSH_WORDS as usize],
            ring: None,
            aborted: false,
            job_gpu_ns: 0,
            seq: 0,
            posted: 0,
            garbage: 0,
            executed: 0,
            refused: 0,
        }
    }

    /// The first domain buffer `work` uses whose mapping was revoked (its
    /// view trapped), as the fault to report.
    pub(super) fn trapped(&self, work: &Work) -> Option<DeviceFault> {
        let used: Vec<(u64, bool)> = match work {
            Work::Dispatch { binds, .. } => binds
                .iter()
                .map(|b| (b.start, self.bufs[&b.start].writable))
                .collect(),
            Work::Copy { src, dst, .. } => vec![(src.0, false), (dst.0, true)],
            Work::Fill { dst, .. } => vec![(dst.0, true)],
        };
        used.into_iter()
            .find_map(|(start, write)| match &self.bufs.get(&start)?.backing {
                Backing::Domain { region, .. } if region.is_trapped() => {
                    Some(revoked(start, write))
                }
                _ => None,
            })
    }

    /// The buffer holding `[iova, iova + len)` (len 0: to its end), as
    /// (buffer iova, offset in it, length).
    pub(super) fn resolve(&self, iova: u64, len: u64) -> Option<(u64, u64, u64)> {
        let (&start, b) = self.bufs.range(..=iova).next_back()?;
        let off = iova - start;
        if off >= b.len {
            return None;
        }
        let len = if len == 0 { b.len - off } else { len };
        (off + len <= b.len).then_some((start, off, len))
    }
}

pub(super) fn revoked(iova: u64, write: bool) -> DeviceFault {
    DeviceFault {
        addr: Some(iova),
        access: if write { Access::Write } else { Access::Read },
        pc: None,
        reason: FaultReason::AccessViolation,
    }
}
