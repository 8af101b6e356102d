//! Errors of the in-process API.

use crate::device::DeviceError;
use crate::fault::{MAX_STALL_TIMEOUT, MIN_STALL_TIMEOUT};
use crate::ids::{DomainId, VcoprocId};
use crate::iova::IovaError;
use crate::policy::PolicyError;
use crate::state::TransitionError;
use crate::wakeup::WakeupError;
use std::time::Duration;
use thiserror::Error;

/// Errors of the in-process API.
#[derive(Debug, Error)]
pub enum CoreError {
    /// No such vcoproc on this pcoproc.
    #[error("no vcoproc {0}")]
    NoVcoproc(VcoprocId),
    /// The vcoproc belongs to another domain.
    #[error("{0} does not belong to domain {1}")]
    NotOwner(VcoprocId, DomainId),
    /// Not allowed in the vcoproc's state.
    #[error(transparent)]
    State(#[from] TransitionError),
    /// The device refused.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Bad iova range.
    #[error(transparent)]
    Iova(#[from] IovaError),
    /// Bad scheduling parameter.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The runner is gone (shut down or the device failed to start).
    #[error("pcoproc {0} is shut down")]
    Shutdown(String),
    /// Timed out waiting.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The pcoproc failed (device or policy code panicked where no single
    /// vcoproc could be blamed): nothing runs on it any more.
    #[error("pcoproc {0} failed: {1}")]
    Failed(String, String),
    /// Device code panicked while serving this request; the vcoproc it was
    /// for faulted, the others go on.
    #[error("device code panicked: {0}")]
    Panicked(String),
    /// A doorbell descriptor could not be added.
    #[error(transparent)]
    Doorbell(#[from] WakeupError),
    /// A demand-fault stall timeout outside the accepted range.
    #[error("demand-fault timeout {0:?} outside {MIN_STALL_TIMEOUT:?}..={MAX_STALL_TIMEOUT:?}")]
    BadStallTimeout(Duration),
}
