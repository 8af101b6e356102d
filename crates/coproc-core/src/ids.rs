//! Identifiers of domains, pcoprocs and vcoprocs.

use serde::Serialize;
use std::fmt;

/// An authenticated client identity that owns vcoprocs and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct DomainId(pub u32);

/// A domain's virtual coprocessor. Unique within one pcoproc; the firmware
/// of the mcu class reads it (32 bits) from its control block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct VcoprocId(pub u32);

/// The device-side context of a vcoproc carries the vcoproc's id.
pub type ContextId = VcoprocId;

impl fmt::Display for DomainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "d{}", self.0)
    }
}

impl fmt::Display for VcoprocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}
