//! Listings as JSON text: pcoprocs and vcoprocs.

use crate::{put_json, session, value, FfiError};
use coproc_client::{Session, VcoprocError};
use std::ffi::c_char;
use std::ffi::c_int;

/// One listing through `socket`, as JSON into `buf` (see
/// `coproc_list_coprocs`).
///
/// # Safety
/// As `coproc_list_coprocs`.
unsafe fn listing<T: serde::Serialize>(
    socket: *const c_char,
    buf: *mut c_char,
    cap: usize,
    list: impl FnOnce(&Session) -> Result<T, VcoprocError>,
) -> c_int {
    value(|| {
        // SAFETY: NULL or a NUL-terminated string, per the caller.
        let s = unsafe { session(socket) }?;
        let text =
            serde_json::to_string(&list(&s)?).map_err(|e| FfiError::Invalid(e.to_string()))?;
        // SAFETY: NULL with `cap` 0, or `cap` writable bytes, per the caller.
        unsafe { put_json(&text, buf, cap) }
    })
}

/// The pcoprocs this domain may use, as a JSON array of objects (`name`,
/// `class`, `policy`, `vcoprocs`, `iova_base`, ..., as `coproc list -o
/// json` shows them), asked through `socket` (NULL: the default). Writes
/// at most `cap` bytes, NUL-terminated, to `buf` and answers the JSON's
/// length: call again with a larger buffer if it is `cap` or more
/// (`buf` NULL and `cap` 0 ask for the length only). Negative on error.
///
/// # Safety
/// `socket` NULL or a NUL-terminated string; `buf` NULL with `cap` 0, or
/// `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn coproc_list_coprocs(
    socket: *const c_char,
    buf: *mut c_char,
    cap: usize,
) -> c_int {
    // SAFETY: the caller's guarantees, passed on.
    unsafe { listing(socket, buf, cap, Session::list_coprocs) }
}

/// The vcoprocs this domain may see (an admin: all), as a JSON array of
/// objects (`id`, `coproc`, `domain`, `state`, ...), written like
/// `coproc_list_coprocs`.
///
/// # Safety
/// As `coproc_list_coprocs`.
#[no_mangle]
pub unsafe extern "C" fn coproc_list_vcoprocs(
    socket: *const c_char,
    buf: *mut c_char,
    cap: usize,
) -> c_int {
    // SAFETY: the caller's guarantees, passed on.
    unsafe { listing(socket, buf, cap, Session::list_vcoprocs) }
}
