//! `coprocd` as a library: the daemon's configuration, shared state, socket
//! server and sessions. The `coprocd` binary is a thin `main` over it; the
//! fuzzer drives [`session::Session`] directly.

pub mod config;
pub mod daemon;
pub mod events;
pub mod identity;
pub mod metrics;
pub mod server;
pub mod session;
pub mod trim;
