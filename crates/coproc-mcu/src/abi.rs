//! The firmware ABI: every vcoproc's memory map and its control block
//! registers, defined once in `coproc-abi` (`coproc_abi::control`) and
//! re-exported here. Mirrors `firmware/sdk/coproc.h`; a test checks they
//! agree.

pub use coproc_abi::control::*;
