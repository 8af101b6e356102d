//! coproc domain memory, on its own so that what a domain links (the client
//! SDK) needs no runner, policy or device code:
//!
//! - [`memory`]: [`memory::Region`], page-aligned memory backed by a
//!   sealable memfd, shared with the device zero-copy, with views a revoke
//!   can withdraw;
//! - [`shared`]: a region as `coproc-abi` shared memory (the typed accessor
//!   and the queue rings).
//!
//! `coproc-core` re-exports both as `coproc_core::memory` and
//! `coproc_core::shared`.

pub mod memory;
pub mod shared;
