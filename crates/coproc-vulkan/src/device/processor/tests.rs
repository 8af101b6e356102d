//! The command processor's checks, without a GPU: contexts are built from
//! plain data (null Vulkan handles, anonymous memory regions), and [`plan`]
//! and the ring attach are run against them.

// Casts of values the test itself chose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use super::*;
use crate::device::context::Buf;
use crate::device::objects::CtxVk;
use crate::shader::{BindingKind, BindingSpec, PipelineSpec, ShaderLimits};
use coproc_core::control::ControlBlock;
use coproc_core::memory::Region;
use coproc_proto::gpu::PUSH_PER_COMMAND;
use coproc_proto::queue::Producer;
use std::sync::Arc;

const RW: u64 = 0x1000_0000;
const RO: u64 = 0x2000_0000;
const LEN: u64 = 0x1_0000;

fn limits() -> Limits {
    Limits {
        groups: [1024, 512, 64],
        max_groups: 1 << 16,
        storage_align: 256,
        uniform_align: 64,
        storage_range: 1 << 27,
        uniform_range: 1 << 12,
        timestamps: None,
        import_align: 4096,
        shader: ShaderLimits::BASE,
    }
}

fn buf(len: u64, writable: bool, gen: u64, backing: Backing) -> Buf {
    Buf {
        len,
        writable,
        gen,
        backing,
        buffer: vk::Buffer::null(),
        memory: vk::DeviceMemory::null(),
        ptr: std::ptr::null_mut(),
    }
}

/// A context with a writable local buffer at `RW` and a read-only one at
/// `RO`, both `LEN` bytes, and no firmware.
fn ctx() -> Ctx {
    let mut c = Ctx::new(Arc::new(ControlBlock::default()), CtxVk::default());
    c.bufs.insert(RW, buf(LEN, true, 1, Backing::Local));
    c.bufs.insert(RO, buf(LEN, false, 2, Backing::Local));
    c
}

/// Pipeline 0 reads binding 0 (at least 16 bytes) and writes binding 1
/// (at least 4); pipeline 1 only reads binding 2; pipeline 2 reads a
/// uniform of 32 bytes at group 1 binding 3 and writes group 0 binding 1.
fn with_firmware(mut c: Ctx) -> Ctx {
    let spec = |bindings: Vec<BindingSpec>| PipelineSpec {
        name: "main".into(),
        spirv: Vec::new(),
        bindings,
        push_bytes: 8,
        workgroup: [64, 1, 1],
    };
    let b = |binding, writable, min_bytes| BindingSpec {
        group: 0,
        binding,
        kind: BindingKind::Storage,
        writable,
        min_bytes,
    };
    let uniform = BindingSpec {
        group: 1,
        binding: 3,
        kind: BindingKind::Uniform,
        writable: false,
        min_bytes: 32,
    };
    c.firmware = Some(
        vec![
            spec(vec![b(0, false, 16), b(1, true, 4)]),
            spec(vec![b(2, false, 4)]),
            spec(vec![b(1, true, 4), uniform]),
        ]
        .into(),
    );
    c
}

fn run(c: &mut Ctx, cmd: Command) -> Result<Work, Step> {
    plan(c, &limits(), cmd)
}

fn refused(r: Result<Work, Step>) -> Option<Status> {
    match r {
        Err(Step::Refused(s)) => Some(s),
        _ => None,
    }
}

fn done(r: &Result<Work, Step>) -> bool {
    matches!(r, Err(Step::Done))
}

fn bind(c: &mut Ctx, binding: u32, iova: u64, len: u32) -> Result<Work, Step> {
    bind_group(c, 0, binding, iova, len)
}

fn bind_group(c: &mut Ctx, group: u32, binding: u32, iova: u64, len: u32) -> Result<Work, Step> {
    run(
        c,
        Command::Bind {
            group,
            binding,
            iova: iova as u32,
            len,
        },
    )
}

fn dispatch(c: &mut Ctx, pipeline: u32, groups: [u32; 3]) -> Result<Work, Step> {
    run(c, Command::Dispatch { pipeline, groups })
}

/// Context with firmware, slot 0 on `RO` and slot 1 on `RW` (both whole).
fn bound() -> Ctx {
    let mut c = with_firmware(ctx());
    assert!(done(&bind(&mut c, 0, RO, 0)));
    assert!(done(&bind(&mut c, 1, RW, 0)));
    c
}

#[test]
fn bind_resolves_inside_one_mapping() {
    let mut c = ctx();
    assert!(done(&bind(&mut c, 3, RW + 0x100, 0x200)));
    let slot = |c: &Ctx, k| match c.slots[&k] {
        crate::device::context::Bound::Buffer(s) => s,
        other => panic!("{other:?}"),
    };
    let s = slot(&c, (0, 3));
    assert_eq!((s.iova, s.len, s.gen), (RW + 0x100, 0x200, 1));
    // Length 0: to the end of the mapping.
    assert!(done(&bind_group(&mut c, 5, 4, RO + 0x100, 0)));
    let s = slot(&c, (5, 4));
    assert_eq!((s.iova, s.len, s.gen), (RO + 0x100, LEN - 0x100, 2));
}

#[test]
fn bind_outside_the_mappings_is_refused() {
    let mut c = ctx();
    // Before the first mapping, in the gap after one, past its end, and
    // straddling its end.
    for (iova, len) in [
        (RW - 4, 4),
        (RW + LEN, 4),
        (RW + LEN + 0x1000, 0),
        (RO + LEN - 4, 8),
    ] {
        assert_eq!(
            refused(bind(&mut c, 0, iova, len)),
            Some(Status::BadIova),
            "{iova:#x}+{len}"
        );
        assert!(c.slots.is_empty());
    }
}

#[test]
fn push_sets_words() {
    let mut c = ctx();
    let mut values = [0u32; PUSH_PER_COMMAND as usize];
    values[0] = 7;
    values[1] = 9;
    let r = run(
        &mut c,
        Command::Push {
            offset: 2,
            count: 2,
            values,
        },
    );
    assert!(done(&r));
    assert_eq!(&c.push[..5], &[0, 0, 7, 9, 0]);
}

#[test]
fn barrier_and_signal_need_no_gpu() {
    let mut c = ctx();
    assert!(done(&run(&mut c, Command::Barrier)));
    assert!(done(&run(&mut c, Command::Signal { value: 3 })));
}

#[test]
fn dispatch_without_firmware_or_pipeline_is_refused() {
    let mut c = ctx();
    assert_eq!(
        refused(dispatch(&mut c, 0, [1, 1, 1])),
        Some(Status::NoFirmware)
    );
    let mut c = bound();
    assert_eq!(
        refused(dispatch(&mut c, 3, [1, 1, 1])),
        Some(Status::BadPipeline)
    );
}

#[test]
fn dispatch_group_counts_are_checked() {
    let mut c = bound();
    for groups in [
        [0, 1, 1],
        [1, 0, 1],
        [1, 1, 0],
        // Over the device's per-dimension limit.
        [1025, 1, 1],
        [1, 513, 1],
        [1, 1, 65],
        // Each within its dimension, the product over `max_groups`.
        [1024, 64, 2],
    ] {
        assert_eq!(
            refused(dispatch(&mut c, 0, groups)),
            Some(Status::BadGroups),
            "{groups:?}"
        );
    }
    // Exactly at `max_groups`.
    assert!(dispatch(&mut c, 0, [1024, 64, 1]).is_ok());
}

#[test]
fn dispatch_resolves_its_bindings() {
    let mut c = bound();
    let Ok(Work::Dispatch {
        pipe,
        groups,
        binds,
        ..
    }) = dispatch(&mut c, 0, [4, 2, 1])
    else {
        panic!("dispatch not planned");
    };
    assert_eq!((pipe, groups), (0, [4, 2, 1]));
    let got: Vec<_> = binds
        .iter()
        .map(|b| (b.group, b.binding, b.start, b.offset, b.len, b.writable))
        .collect();
    assert_eq!(
        got,
        vec![(0, 0, RO, 0, LEN, false), (0, 1, RW, 0, LEN, true)]
    );
}

#[test]
fn dispatch_with_an_unset_binding_is_refused() {
    let mut c = with_firmware(ctx());
    assert!(done(&bind(&mut c, 0, RO, 0)));
    assert_eq!(
        refused(dispatch(&mut c, 0, [1, 1, 1])),
        Some(Status::BadBinding)
    );
    // Pipeline 1 uses slot 2 only.
    assert_eq!(
        refused(dispatch(&mut c, 1, [1, 1, 1])),
        Some(Status::BadBinding)
    );
}

#[test]
fn dispatch_with_a_small_binding_is_refused() {
    let mut c = bound();
    // Binding 0 needs 16 bytes.
    assert!(done(&bind(&mut c, 0, RO, 12)));
    assert_eq!(
        refused(dispatch(&mut c, 0, [1, 1, 1])),
        Some(Status::BadBinding)
    );
    assert!(done(&bind(&mut c, 0, RO, 16)));
    assert!(dispatch(&mut c, 0, [1, 1, 1]).is_ok());
}

#[test]
fn dispatch_with_a_misaligned_binding_is_refused() {
    let mut c = bound();
    // The storage offset alignment is 256.
    assert!(done(&bind(&mut c, 1, RW + 4, 64)));
    assert_eq!(
        refused(dispatch(&mut c, 0, [1, 1, 1])),
        Some(Status::BadBinding)
    );
    assert!(done(&bind(&mut c, 1, RW + 256, 64)));
    assert!(dispatch(&mut c, 0, [1, 1, 1]).is_ok());
}

#[test]
fn dispatch_writing_a_read_only_mapping_is_refused() {
    let mut c = bound();
    // Binding 1 is written by pipeline 0.
    assert!(done(&bind(&mut c, 1, RO, 0)));
    assert_eq!(
        refused(dispatch(&mut c, 0, [1, 1, 1])),
        Some(Status::ReadOnly)
    );
    // Reading a writable mapping is fine.
    assert!(done(&bind(&mut c, 0, RW, 0)));
    assert!(done(&bind(&mut c, 1, RW, 0)));
    assert!(dispatch(&mut c, 0, [1, 1, 1]).is_ok());
}

#[test]
fn dispatch_on_an_unmapped_or_remapped_binding_faults() {
    let mut c = bound();
    c.bufs.remove(&RW);
    let Err(Step::Fault(f)) = dispatch(&mut c, 0, [1, 1, 1]) else {
        panic!("unmapped binding did not fault");
    };
    assert_eq!(f, revoked(RW, true));
    assert_eq!(f.access, Access::Write);
    // Mapped anew at the same iova: a new generation, still a fault.
    c.bufs.insert(RW, buf(LEN, true, 9, Backing::Local));
    let Err(Step::Fault(f)) = dispatch(&mut c, 0, [1, 1, 1]) else {
        panic!("remapped binding did not fault");
    };
    assert_eq!(f.addr, Some(RW));
    // Bound again, it runs.
    assert!(done(&bind(&mut c, 1, RW, 0)));
    assert!(dispatch(&mut c, 0, [1, 1, 1]).is_ok());
}

#[test]
fn copy_is_checked() {
    let mut c = ctx();
    let copy = |c: &mut Ctx, src: u64, dst: u64, len: u32| {
        run(
            c,
            Command::Copy {
                src: src as u32,
                dst: dst as u32,
                len,
            },
        )
    };
    // Nothing to do: not even the addresses are looked at.
    assert!(done(&copy(&mut c, 0, 0, 0)));
    // Source or destination outside, or straddling the end of, a mapping.
    for (src, dst) in [
        (RW + LEN, RO),
        (RO, RW + LEN),
        (RW + LEN - 4, RO),
        (RO, RW + LEN - 4),
    ] {
        assert_eq!(
            refused(copy(&mut c, src, dst, 8)),
            Some(Status::BadIova),
            "{src:#x} -> {dst:#x}"
        );
    }
    assert_eq!(refused(copy(&mut c, RW, RO, 8)), Some(Status::ReadOnly));
    // Overlapping ranges of one buffer.
    assert_eq!(
        refused(copy(&mut c, RW, RW + 4, 8)),
        Some(Status::BadCommand)
    );
    assert_eq!(
        refused(copy(&mut c, RW + 4, RW, 8)),
        Some(Status::BadCommand)
    );
    let Ok(Work::Copy { src, dst, len }) = copy(&mut c, RO + 8, RW + 16, 8) else {
        panic!("copy not planned");
    };
    assert_eq!((src, dst, len), ((RO, 8), (RW, 16), 8));
    // Adjacent ranges of one buffer do not overlap.
    assert!(copy(&mut c, RW, RW + 8, 8).is_ok());
}

#[test]
fn fill_is_checked() {
    let mut c = ctx();
    let fill = |c: &mut Ctx, dst: u64, len: u32| {
        run(
            c,
            Command::Fill {
                dst: dst as u32,
                len,
                value: 0xAB,
            },
        )
    };
    assert!(done(&fill(&mut c, 0, 0)));
    assert_eq!(refused(fill(&mut c, RW + LEN, 4)), Some(Status::BadIova));
    assert_eq!(
        refused(fill(&mut c, RW + LEN - 4, 8)),
        Some(Status::BadIova)
    );
    assert_eq!(refused(fill(&mut c, RO, 4)), Some(Status::ReadOnly));
    let Ok(Work::Fill { dst, len, value }) = fill(&mut c, RW + 32, 16) else {
        panic!("fill not planned");
    };
    assert_eq!((dst, len, value), ((RW, 32), 16, 0xAB));
}

#[test]
fn work_on_a_revoked_domain_mapping_faults() {
    const DOM: u64 = 0x3000_0000;
    let region = Arc::new(Region::new(LEN).unwrap());
    let mut c = ctx();
    c.bufs.insert(
        DOM,
        buf(
            LEN,
            true,
            5,
            Backing::Domain {
                region: region.clone(),
                offset: 0,
            },
        ),
    );
    let work = run(
        &mut c,
        Command::Fill {
            dst: DOM as u32,
            len: 4,
            value: 0,
        },
    );
    let Ok(work) = work else {
        panic!("fill not planned");
    };
    assert!(c.trapped(&work).is_none());
    region.trap();
    assert_eq!(c.trapped(&work), Some(revoked(DOM, true)));
}

#[test]
fn ring_attach_is_checked() {
    const DOM: u64 = 0x3000_0000;
    let domain = |writable| {
        let region = Arc::new(Region::new(LEN).unwrap());
        let backing = Backing::Domain {
            region: region.clone(),
            offset: 0,
        };
        (region, buf(LEN, writable, 5, backing))
    };
    let mut c = ctx();
    // Mailbox word 0 names no mapping.
    c.control.write_in(MBOX_QUEUE, DOM as u32);
    assert!(!VulkanDevice::attach_ring(&mut c));
    // Local memory is no queue.
    c.control.write_in(MBOX_QUEUE, RW as u32);
    assert!(!VulkanDevice::attach_ring(&mut c));
    // A domain mapping without a queue header.
    c.control.write_in(MBOX_QUEUE, DOM as u32);
    let (region, b) = domain(true);
    c.bufs.insert(DOM, b);
    assert!(!VulkanDevice::attach_ring(&mut c));
    // A queue, read-only.
    Producer::init(&coproc_core::shared::view(&region), 8).unwrap();
    c.bufs.get_mut(&DOM).unwrap().writable = false;
    assert!(!VulkanDevice::attach_ring(&mut c));
    // Writable: attached.
    c.bufs.get_mut(&DOM).unwrap().writable = true;
    assert!(VulkanDevice::attach_ring(&mut c));
    assert_eq!(c.ring.as_ref().map(|r| r.iova), Some(DOM));
    // Mapped anew: attached again, to the new generation.
    let (region, mut b) = domain(true);
    b.gen = 6;
    Producer::init(&coproc_core::shared::view(&region), 8).unwrap();
    c.bufs.insert(DOM, b);
    assert!(VulkanDevice::attach_ring(&mut c));
    assert_eq!(c.ring.as_ref().map(|r| r.gen), Some(6));
}

/// A uniform in group 1: its own alignment, and the device sees at most
/// the device's uniform range of a larger bind.
#[test]
fn uniform_in_another_group() {
    let mut c = bound();
    assert_eq!(
        refused(dispatch(&mut c, 2, [1, 1, 1])),
        Some(Status::BadBinding)
    );
    // 64-byte aligned is enough for a uniform (storage needs 256).
    assert!(done(&bind_group(&mut c, 1, 3, RO + 64, 0)));
    let Ok(Work::Dispatch { binds, .. }) = dispatch(&mut c, 2, [1, 1, 1]) else {
        panic!("uniform dispatch refused");
    };
    let u = binds.iter().find(|b| b.group == 1).expect("group 1 bound");
    assert_eq!(
        (u.binding, u.kind, u.offset, u.len),
        (3, BindingKind::Uniform, 64, 1 << 12)
    );
    assert!(done(&bind_group(&mut c, 1, 3, RO + 32, 0)));
    assert_eq!(
        refused(dispatch(&mut c, 2, [1, 1, 1])),
        Some(Status::BadBinding)
    );
    // Too small for the block.
    assert!(done(&bind_group(&mut c, 1, 3, RO + 64, 16)));
    assert_eq!(
        refused(dispatch(&mut c, 2, [1, 1, 1])),
        Some(Status::BadBinding)
    );
}
