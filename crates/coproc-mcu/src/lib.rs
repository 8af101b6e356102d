//! The `mcu` device class of coproc: a Cortex-M4 side core modelled on
//! Unicorn, running real Thumb firmware built from C.
//!
//! - [`abi`]: the firmware ABI (memory map, control block registers);
//! - [`elf`]: validation and loading of firmware images;
//! - [`McuDevice`]: the [`Device`] implementation;
//! - [`baseline`]: the same firmware run directly on Unicorn, with no
//!   framework, for the overhead benchmark.

pub mod abi;
pub mod baseline;
mod device;
pub mod elf;
mod scs;
mod timer;

pub use device::{McuConfig, McuConfigError, McuDevice, JIT_CACHE_BYTES, LOCAL_ALLOC_MAX};

use coproc_core::device::{Device, DeviceError};

/// A factory for `Pcoproc::spawn`: builds an mcu device on the runner thread.
pub fn factory(
    config: McuConfig,
) -> impl FnOnce() -> Result<Box<dyn Device>, DeviceError> + Send + 'static {
    move || Ok(Box::new(McuDevice::new(config)?) as Box<dyn Device>)
}
