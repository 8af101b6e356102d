//! Listings as JSON text: pcoprocs and vcoprocs.

use crate::{put_json, session, value, FfiError};
use std::ffi::c_char;
use std::ffi::c_int;

pub(crate) fn json<T: serde::Serialize>(v: &T) -> Result<String, FfiError> {
    serde_json::to_string(v).map_err(|e| FfiError::Invalid(e.to_string()))
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
    value(|| {
        // SAFETY: per the caller.
        let s = unsafe { session(socket) }?;
        let text = json(&s.list_coprocs()?)?;
        // SAFETY: per the caller.
        unsafe { put_json(&text, buf, cap) }
    })
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
    value(|| {
        // SAFETY: per the caller.
        let s = unsafe { session(socket) }?;
        let text = json(&s.list_vcoprocs()?)?;
        // SAFETY: per the caller.
        unsafe { put_json(&text, buf, cap) }
    })
}
