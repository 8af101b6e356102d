//! coproc core: the device-independent part of the shared coprocessor
//! framework.
//!
//! - [`ids`], [`state`], [`fault`], [`stats`]: domains, vcoprocs, their life
//!   cycle, fault records and counters;
//! - [`device`]: the [`Device`] trait each device class implements;
//! - [`memory`], [`iova`]: domain memory (re-exported from `coproc-mem`)
//!   and per-vcoproc iova spaces; [`shared`]: a [`memory::Region`] as
//!   `coproc-abi` shared memory (also from `coproc-mem`);
//! - [`control`]: the mailbox/doorbell control block a vcoproc shares with
//!   its domain;
//! - [`policy`]: scheduling policies;
//! - [`pcoproc`]: a physical coprocessor with its runner thread and the
//!   handles domains use (the scheduling state its API and its runner
//!   share lives in a private module of its own, the runner in another;
//!   neither imports `pcoproc`); [`CoreError`]: the errors of that API;
//!   [`system`]: domains and pcoprocs together;
//! - [`ratelimit`]: limits for log lines a domain can trigger.
//!
//! No sockets, no device-specific code: usable inside a daemon, a VMM or a
//! test.

pub mod control;
pub mod device;
mod error;
pub mod fault;
pub mod ids;
pub mod iova;
pub use coproc_mem::memory;
pub mod pcoproc;
pub mod policy;
pub mod ratelimit;
mod runner;
mod sched;
pub use coproc_mem::shared;
pub mod state;
pub mod stats;
pub mod system;
pub mod wakeup;

pub use control::ControlBlock;
pub use device::{Device, DeviceError};
pub use error::CoreError;
pub use ids::{DomainId, VcoprocId};
pub use pcoproc::{Pcoproc, VcoprocHandle};
pub use system::System;
