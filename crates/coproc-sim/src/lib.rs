//! coproc simulated device: contexts whose firmware is a workload
//! description ([`Workload`]), running on a virtual clock that only moves
//! when the device runs, switches or idles.
//!
//! A [`Sim`] is the handle shared by a test and its [`SimDevice`]; the
//! device implements [`coproc_core::device::Device`] and the `Sim` the
//! [`coproc_core::device::VirtualClock`] the runner takes every timestamp
//! from. Virtual time never passes the *horizon*: the test raises it with
//! [`Sim::run_until`], which returns once the device is parked there, so a
//! whole scheduling scenario runs with no sleeps and gives the same result
//! every time.
//!
//! ```
//! use coproc_core::policy::{RoundRobin, SchedParams};
//! use coproc_core::DomainId;
//! use coproc_sim::{Sim, SimConfig, Workload};
//! use std::time::Duration;
//!
//! let sim = Sim::new(SimConfig::default());
//! let p = sim.spawn("sim0", Box::new(RoundRobin::new(Duration::from_millis(1)).unwrap())).unwrap();
//! let v = p.create_vcoproc(DomainId(1), SchedParams::default()).unwrap();
//! v.load_firmware("hog", &Workload::hog().to_image()).unwrap();
//! v.start().unwrap();
//! sim.run_until(1_000_000_000).unwrap();
//! assert_eq!(sim.context(v.id()).unwrap().ran_ns, 1_000_000_000);
//! p.shutdown();
//! ```

mod sim;
mod workload;

pub use sim::{
    ContextRecord, JobRecord, PanicIn, Sim, SimConfig, SimDevice, SwitchRecord, MAX_JOB_RECORDS,
};
pub use workload::{
    Job, Periodic, Workload, DEFAULT_HOG_DISPATCH_NS, MAX_IMAGE_BYTES, MAX_JOBS, MAX_NS,
    MIN_GRANULE_NS,
};

use coproc_core::CoreError;
use thiserror::Error;

/// Errors of the simulator.
#[derive(Debug, Error)]
pub enum SimError {
    /// A workload image was refused.
    #[error("bad workload: {0}")]
    BadWorkload(String),
    /// `run_until` to a time virtual time has already passed.
    #[error("virtual time is at {now} ns, cannot run until {t} ns")]
    Past {
        /// The requested time.
        t: u64,
        /// Virtual time now.
        now: u64,
    },
    /// No device is attached to this sim (never created, or its runner
    /// has shut down).
    #[error("no device attached to the sim")]
    Detached,
    /// The sim already has a device.
    #[error("the sim already has a device")]
    AlreadyAttached,
    /// The device did not park at the horizon within the stall timeout on
    /// the host clock (a hook that blocks, a deadlock).
    #[error("device not parked at {horizon} ns (virtual time {now} ns) after the stall timeout")]
    Stalled {
        /// Virtual time now.
        now: u64,
        /// The horizon it should reach.
        horizon: u64,
    },
    /// Spawning the pcoproc failed.
    #[error(transparent)]
    Core(#[from] CoreError),
}
