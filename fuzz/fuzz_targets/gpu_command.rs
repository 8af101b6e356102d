//! The GPU command processor's decoder (`coproc_abi::gpu::Command::decode`,
//! what `VulkanDevice` runs on every ring entry before it checks the
//! command against the context): arbitrary entries. An accepted command
//! satisfies what the processor relies on (group < MAX_GROUPS and binding
//! < MAX_BINDING, which bound its table of bindings; the push range inside
//! the push words), re-encodes to an entry that decodes
//! the same, and unused argument words are zero.

#![no_main]

use coproc_abi::gpu::{
    Command, MAX_BINDING, MAX_GROUPS, MAX_IMAGE_SIZE, PUSH_PER_COMMAND, PUSH_WORDS,
};
use coproc_abi::queue::Sqe;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut b = [0u8; 64];
    let n = data.len().min(64);
    b[..n].copy_from_slice(&data[..n]);
    let sqe = Sqe::from_bytes(&b);
    assert_eq!(sqe.to_bytes(), b);
    let Ok(cmd) = Command::decode(&sqe) else {
        return;
    };
    // What the command processor does with it, on arrays of the sizes it
    // uses (`VulkanDevice::step`).
    let mut slots = [[None::<u64>; MAX_BINDING as usize]; MAX_GROUPS as usize];
    let mut push = [0u32; PUSH_WORDS as usize];
    match cmd {
        Command::Bind {
            group,
            binding,
            iova,
            ..
        } => {
            slots[group as usize][binding as usize] = Some(u64::from(iova));
            assert!(slots.iter().flatten().flatten().count() >= 1);
        }
        Command::Push {
            offset,
            count,
            values,
        } => {
            assert!((1..=PUSH_PER_COMMAND).contains(&count));
            let o = offset as usize;
            push[o..o + count as usize].copy_from_slice(&values[..count as usize]);
        }
        Command::Copy { src, dst, len } => assert_eq!((src | dst | len) % 4, 0),
        Command::Fill { dst, len, .. } => assert_eq!((dst | len) % 4, 0),
        Command::Image {
            group,
            binding,
            format,
            width,
            height,
            ..
        } => {
            slots[group as usize][binding as usize] = Some(0);
            assert!(slots.iter().flatten().flatten().count() >= 1);
            let bytes = u64::from(width) * u64::from(height) * u64::from(format.texel_bytes());
            assert!(bytes <= 16 * u64::from(MAX_IMAGE_SIZE).pow(2));
        }
        Command::Sampler {
            group,
            binding,
            address,
            ..
        } => {
            slots[group as usize][binding as usize] = Some(0);
            assert!(slots.iter().flatten().flatten().count() >= 1);
            assert!(address <= 2);
        }
        Command::Dispatch { .. } | Command::Barrier | Command::Signal { .. } => {}
    }
    let again = cmd.encode(sqe.tag);
    assert_eq!(Command::decode(&again), Ok(cmd));
    assert_eq!(again.tag, sqe.tag);
    // Decoding only accepts entries whose unused words are zero, so the
    // encoding of what it accepted is the entry itself.
    assert_eq!(again, sqe);
});
