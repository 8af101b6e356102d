//! The coproc wire protocol (see `docs/protocol.md`).
//!
//! - [`frame`]: framing of messages on a Unix stream socket: an 8-byte
//!   header (magic, body length) and a JSON body, with file descriptors
//!   passed alongside (SCM_RIGHTS). Every frame from a peer is hostile:
//!   sizes are bounded before anything is allocated.
//! - [`msg`]: the messages: requests, replies, events, error codes.
//! - [`gpu`] and [`queue`]: the shared-memory layouts, re-exported from
//!   `coproc-abi` (the queue rings and the GPU command words).
//! - [`shader`]: a `vulkan` firmware image with specialization values
//!   (WGSL overrides, SPIR-V specialization constants) ahead of the module.
//! - [`fdpass`]: sending and receiving frames with file descriptors over a
//!   blocking or non-blocking socket.

pub mod fdpass;
pub mod frame;
pub mod msg;
pub mod shader;

pub use coproc_abi::{gpu, queue};

pub use frame::{Decoder, FrameError, MAGIC, MAX_BODY, MAX_FDS};
pub use msg::*;

/// Protocol version spoken by this build.
pub const VERSION: u32 = 1;

/// The daemon's default socket for a daemon (or client) running as `uid`:
/// `$XDG_RUNTIME_DIR/coproc/coprocd.sock`, or `/run/coproc/coprocd.sock`
/// for root or without `XDG_RUNTIME_DIR`.
pub fn default_socket(uid: u32) -> std::path::PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if uid != 0 => std::path::Path::new(&dir).join("coproc/coprocd.sock"),
        _ => std::path::PathBuf::from("/run/coproc/coprocd.sock"),
    }
}
