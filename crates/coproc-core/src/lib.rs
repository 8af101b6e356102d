//! coproc core: the device-independent part of the shared coprocessor
//! framework.
//!
//! - [`ids`], [`state`], [`fault`], [`stats`]: domains, vcoprocs, their life
//!   cycle, fault records and counters;
//! - [`device`]: the [`Device`] trait each device class implements;
//! - [`memory`], [`iova`]: domain memory and per-vcoproc iova spaces;
//!   [`shared`]: a [`memory::Region`] as `coproc-abi` shared memory (the
//!   typed accessor and the queue rings);
//! - [`control`]: the mailbox/doorbell control block a vcoproc shares with
//!   its domain;
//! - [`policy`]: scheduling policies;
//! - [`pcoproc`]: a physical coprocessor with its runner thread and the
//!   handles domains use; [`system`]: domains and pcoprocs together;
//! - [`ratelimit`]: limits for log lines a domain can trigger.
//!
//! No sockets, no device-specific code: usable inside a daemon, a VMM or a
//! test.

pub mod control;
pub mod device;
pub mod fault;
pub mod ids;
pub mod iova;
pub mod memory;
pub mod pcoproc;
pub mod policy;
pub mod ratelimit;
mod runner;
pub mod shared;
pub mod state;
pub mod stats;
pub mod system;
pub mod wakeup;

pub use control::ControlBlock;
pub use device::{Device, DeviceError};
pub use ids::{DomainId, VcoprocId};
pub use pcoproc::{CoreError, Pcoproc, VcoprocHandle};
pub use system::System;
