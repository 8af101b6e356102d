//! The coproc shared-memory ABI: every layout that lives in memory shared
//! between a domain, the daemon and a device, and the one typed API
//! through which such memory is touched. No I/O, no allocation on the data
//! path, one dependency (`thiserror`).
//!
//! - [`shm`]: [`Shared`], a bounds-checked view of shared memory in the
//!   style of rust-vmm's `vm-memory` `Bytes`: data moves by volatile copies,
//!   index words by `Acquire` atomic loads and `Release` atomic stores.
//! - [`queue`]: the queue layout (header, submission and completion rings),
//!   [`queue::Sqe`]/[`queue::Cqe`], the domain's [`queue::Producer`] and the
//!   device side's [`queue::Consumer`], generic over [`queue::QueueMem`] so
//!   the index protocol is model-checked with loom (`tests/loom.rs`).
//! - [`gpu`]: the command words a domain writes into a `vulkan` vcoproc's
//!   queue, the completion statuses, and the class's mailbox words.
//! - [`control`]: the mcu class's memory map and control-block registers
//!   (mirrors `firmware/sdk/coproc.h`; a test checks they agree).

pub mod control;
pub mod gpu;
pub mod queue;
pub mod shm;

pub use shm::{AbiError, Shared};
