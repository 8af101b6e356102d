//! libcoproc: the coproc client SDK for C, over the Rust SDK's
//! [`coproc_client::Vcoproc`]. Handles are opaque pointers
//! (`coproc_vcoproc`, `coproc_buffer`, `coproc_queue`) made by the library
//! and given back to it; functions answer a status (`COPROC_OK` = 0, a
//! negative `COPROC_E_*` code on failure) or a handle (NULL on failure),
//! and `coproc_last_error()` says why the calling thread's last call
//! failed. No panic crosses the boundary: every entry point catches them
//! (`COPROC_E_PANIC`). Offloading a job takes four calls:
//!
//! ```c
//! coproc_vcoproc *v = coproc_open(NULL, "mcu0");                 /* 1 */
//! coproc_load(v, "crc32", elf, elf_len);                         /* 2 */
//! coproc_buffer *b = coproc_buffer_from(v, data, len);           /* 3 */
//! uint32_t req[3] = {(uint32_t)coproc_buffer_iova(b), len, 1}, reply[16];
//! coproc_call(v, req, 3, reply, 16, 0);                          /* 4 */
//! coproc_buffer_free(b); coproc_close(v);
//! ```
//!
//! The header `include/coproc.h` is generated from this crate by cbindgen
//! (build.rs); a test checks the checked-in copy is current.

#![allow(non_camel_case_types)]

use coproc_client::{Buffer, ClientError, ErrorCode, Queue, Session, Vcoproc, VcoprocError};
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

mod buffer;
mod listing;
mod queue;

/// Success.
pub const COPROC_OK: c_int = 0;
/// An argument was refused (a NULL handle, a string that is not UTF-8, a
/// size out of range).
pub const COPROC_E_INVALID: c_int = -1;
/// The daemon could not be reached.
pub const COPROC_E_CONNECT: c_int = -2;
/// No such pcoproc or vcoproc (or not one the caller may see).
pub const COPROC_E_NOT_FOUND: c_int = -3;
/// Not allowed for this domain.
pub const COPROC_E_PERMISSION: c_int = -4;
/// Over a quota.
pub const COPROC_E_QUOTA: c_int = -5;
/// Not allowed in the vcoproc's state.
pub const COPROC_E_STATE: c_int = -6;
/// The device refused (a firmware image it will not load, say).
pub const COPROC_E_DEVICE: c_int = -7;
/// The daemon refused the request otherwise (bad request, internal).
pub const COPROC_E_DAEMON: c_int = -8;
/// No answer in time.
pub const COPROC_E_TIMEOUT: c_int = -9;
/// The vcoproc faulted: `coproc_last_fault` has the record;
/// `coproc_reset` brings it back.
pub const COPROC_E_FAULTED: c_int = -10;
/// The vcoproc stopped (its firmware exited) or was destroyed.
pub const COPROC_E_STOPPED: c_int = -11;
/// Shared memory failed (or an access out of a buffer's bounds).
pub const COPROC_E_MEMORY: c_int = -12;
/// The connection broke or the daemon answered nonsense.
pub const COPROC_E_PROTOCOL: c_int = -13;
/// A queue's submission ring is full.
pub const COPROC_E_FULL: c_int = -14;
/// A bug in the library (a caught panic).
pub const COPROC_E_PANIC: c_int = -15;

/// Vcoproc states, as `coproc_state` answers them.
pub const COPROC_STATE_CREATED: c_int = 0;
/// Firmware loaded, not started.
pub const COPROC_STATE_LOADED: c_int = 1;
/// Ready to run.
pub const COPROC_STATE_RUNNABLE: c_int = 2;
/// On the device now.
pub const COPROC_STATE_RUNNING: c_int = 3;
/// Waiting for a doorbell.
pub const COPROC_STATE_WAITING: c_int = 4;
/// Its firmware exited.
pub const COPROC_STATE_STOPPED: c_int = 5;
/// It faulted.
pub const COPROC_STATE_FAULTED: c_int = 6;
/// Destroyed.
pub const COPROC_STATE_DESTROYED: c_int = 7;
/// Stalled on a missing page (demand faults).
pub const COPROC_STATE_STALLED: c_int = 8;

/// A vcoproc (opaque): made by `coproc_open`, destroyed by `coproc_close`.
/// May be used from several threads (calls take turns).
#[derive(Debug)]
pub struct coproc_vcoproc {
    v: Vcoproc,
}

/// Memory shared with a vcoproc (opaque): made by `coproc_buffer_new` or
/// `coproc_buffer_from`, unmapped and freed by `coproc_buffer_free`.
#[derive(Debug)]
pub struct coproc_buffer {
    b: Buffer,
}

/// A queue of a vcoproc (opaque): made by `coproc_queue_new`, freed by
/// `coproc_queue_free`; one thread at a time.
#[derive(Debug)]
pub struct coproc_queue {
    q: Queue,
}

/// A submission: what the firmware's `coproc_sq_pop` reads.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct coproc_sqe {
    /// What to do (the firmware's choice of meaning).
    pub opcode: u32,
    /// Echoed in the completion.
    pub tag: u32,
    /// Arguments.
    pub args: [u32; 14],
}

/// A completion: what the firmware's `coproc_cq_push` wrote.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct coproc_cqe {
    /// The submission's tag.
    pub tag: u32,
    /// The firmware's status.
    pub status: u32,
    /// Results.
    pub result: [u32; 14],
}

/// A vcoproc's newest fault record (`coproc_last_fault`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct coproc_fault {
    /// The faulting address (valid if `has_addr`).
    pub addr: u64,
    /// The program counter (valid if `has_pc`).
    pub pc: u64,
    /// Whether `addr` is known.
    pub has_addr: u8,
    /// Whether `pc` is known.
    pub has_pc: u8,
    /// `read`, `write`, `fetch` or `none`, NUL-terminated.
    pub access: [c_char; 8],
    /// Why, NUL-terminated (cut at 127 bytes).
    pub reason: [c_char; 128],
}

/// Why a call failed.
#[derive(Debug, Error)]
enum FfiError {
    /// A pointer argument was NULL.
    #[error("{0} is NULL")]
    Null(&'static str),
    /// Another argument was refused.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A queue's submission ring is full.
    #[error("the submission ring is full")]
    Full,
    /// The SDK failed.
    #[error(transparent)]
    Sdk(#[from] VcoprocError),
}

impl From<ClientError> for FfiError {
    fn from(e: ClientError) -> FfiError {
        FfiError::Sdk(e.into())
    }
}

impl FfiError {
    fn code(&self) -> c_int {
        let client = |e: &ClientError| match e {
            ClientError::Connect { .. } => COPROC_E_CONNECT,
            ClientError::Refused(w) => match w.code {
                ErrorCode::NotFound => COPROC_E_NOT_FOUND,
                ErrorCode::PermissionDenied => COPROC_E_PERMISSION,
                ErrorCode::Quota => COPROC_E_QUOTA,
                ErrorCode::State => COPROC_E_STATE,
                ErrorCode::Device => COPROC_E_DEVICE,
                ErrorCode::InvalidArgument => COPROC_E_INVALID,
                _ => COPROC_E_DAEMON,
            },
            ClientError::Timeout(_) => COPROC_E_TIMEOUT,
            ClientError::Stopped { state, .. } if state == "faulted" => COPROC_E_FAULTED,
            ClientError::Stopped { .. } => COPROC_E_STOPPED,
            ClientError::Memory(_) | ClientError::AddressTaken(_) => COPROC_E_MEMORY,
            ClientError::Invalid(_) => COPROC_E_INVALID,
            ClientError::Gpu { .. } => COPROC_E_DEVICE,
            _ => COPROC_E_PROTOCOL,
        };
        match self {
            FfiError::Null(_) | FfiError::Invalid(_) => COPROC_E_INVALID,
            FfiError::Full => COPROC_E_FULL,
            FfiError::Sdk(VcoprocError::Client(e)) => client(e),
            FfiError::Sdk(VcoprocError::Faulted { .. }) => COPROC_E_FAULTED,
            FfiError::Sdk(VcoprocError::Stopped { .. }) => COPROC_E_STOPPED,
            FfiError::Sdk(VcoprocError::Timeout(_)) => COPROC_E_TIMEOUT,
            FfiError::Sdk(VcoprocError::NoIova { .. }) => COPROC_E_MEMORY,
            FfiError::Sdk(_) => COPROC_E_INVALID,
        }
    }
}

thread_local! {
    /// The calling thread's last failure: code and message.
    static LAST: RefCell<(c_int, CString)> = RefCell::new((COPROC_OK, CString::default()));
}

fn set_last(code: c_int, message: &str) {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST.with(|l| *l.borrow_mut() = (code, message));
}

/// Run an entry point: its error becomes the thread's last error and
/// `fallback` is answered; a panic is caught and reported the same way.
fn guard<T>(fallback: T, f: impl FnOnce() -> Result<T, FfiError>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_last(e.code(), &e.to_string());
            fallback
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            set_last(COPROC_E_PANIC, &format!("libcoproc bug (panic): {what}"));
            fallback
        }
    }
}

/// An entry point answering a number: what `f` answers, or the error's
/// (negative) code.
fn value(f: impl FnOnce() -> Result<c_int, FfiError>) -> c_int {
    let mut code = COPROC_E_PANIC;
    guard(None, || f().map(Some).inspect_err(|e| code = e.code())).unwrap_or(code)
}

/// A status entry point: `COPROC_OK` or the error's code.
fn status(f: impl FnOnce() -> Result<(), FfiError>) -> c_int {
    value(|| f().map(|()| COPROC_OK))
}

/// The string at `p`.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string that outlives `'a`.
unsafe fn text<'a>(p: *const c_char, what: &'static str) -> Result<&'a str, FfiError> {
    if p.is_null() {
        return Err(FfiError::Null(what));
    }
    // SAFETY: not NULL, and the caller promises a NUL-terminated string
    // alive for 'a.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| FfiError::Invalid(format!("{what} is not UTF-8")))
}

/// The bytes at `p`.
///
/// # Safety
/// `p` is NULL (then `len` must be 0) or points to `len` readable bytes
/// that outlive `'a`.
unsafe fn bytes<'a>(p: *const u8, len: usize, what: &'static str) -> Result<&'a [u8], FfiError> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(FfiError::Null(what));
    }
    // SAFETY: not NULL, `len` > 0 bytes readable for 'a per the caller.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// The handle at `p`.
///
/// # Safety
/// `p` is NULL or a live handle this library made.
unsafe fn handle<'a, T>(p: *const T, what: &'static str) -> Result<&'a T, FfiError> {
    // SAFETY: NULL or a live handle from `Box::into_raw`, per the caller.
    unsafe { p.as_ref() }.ok_or(FfiError::Null(what))
}

/// The handle at `p`, mutably.
///
/// # Safety
/// `p` is NULL or a live handle this library made, used by no other
/// thread meanwhile.
unsafe fn handle_mut<'a, T>(p: *mut T, what: &'static str) -> Result<&'a mut T, FfiError> {
    // SAFETY: NULL or a live handle from `Box::into_raw`, not shared
    // meanwhile, per the caller.
    unsafe { p.as_mut() }.ok_or(FfiError::Null(what))
}

fn timeout(ms: u32, v: &Vcoproc) -> Duration {
    if ms == 0 {
        v.timeout()
    } else {
        Duration::from_millis(u64::from(ms))
    }
}

/// Why the calling thread's last failed call failed (empty if none did).
/// Valid until the thread's next failing call.
#[no_mangle]
pub extern "C" fn coproc_last_error() -> *const c_char {
    LAST.with(|l| l.borrow().1.as_ptr())
}

/// The code of the calling thread's last failure (`COPROC_OK` if none).
#[no_mangle]
pub extern "C" fn coproc_last_error_code() -> c_int {
    LAST.with(|l| l.borrow().0)
}

/// Connect to the daemon at `socket` (NULL: `$COPROC_SOCKET`, else the
/// default socket) and open a vcoproc on the pcoproc `coproc`, in a session
/// of its own. NULL on failure.
///
/// # Safety
/// `socket` is NULL or a NUL-terminated string; `coproc` a NUL-terminated
/// string.
#[no_mangle]
pub unsafe extern "C" fn coproc_open(
    socket: *const c_char,
    coproc: *const c_char,
) -> *mut coproc_vcoproc {
    guard(std::ptr::null_mut(), || {
        // SAFETY: a NUL-terminated string, per the caller.
        let coproc = unsafe { text(coproc, "coproc") }?;
        let v = if socket.is_null() {
            Vcoproc::open(coproc)?
        } else {
            // SAFETY: not NULL: a NUL-terminated string, per the caller.
            let socket = unsafe { text(socket, "socket") }?;
            Vcoproc::open_at(Path::new(socket), coproc)?
        };
        Ok(Box::into_raw(Box::new(coproc_vcoproc { v })))
    })
}

/// Destroy the vcoproc (its mappings and queues with it) and free the
/// handle. Buffers and queues made from it stay to be freed. NULL is
/// ignored.
///
/// # Safety
/// `v` is NULL or a live handle from `coproc_open`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn coproc_close(v: *mut coproc_vcoproc) {
    guard((), || {
        if !v.is_null() {
            // SAFETY: a live handle from `Box::into_raw`, given back once.
            drop(unsafe { Box::from_raw(v) });
        }
        Ok(())
    });
}

/// The vcoproc's id (as `coproc vcoproc-list` shows it); 0 for NULL.
///
/// # Safety
/// `v` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn coproc_id(v: *const coproc_vcoproc) -> u32 {
    // SAFETY: NULL or a live handle, per the caller.
    guard(0, || Ok(unsafe { handle(v, "vcoproc") }?.v.id()))
}

/// Load `len` bytes of firmware `image` labelled `label`, and start it.
///
/// # Safety
/// `v` a live handle; `label` a NUL-terminated string; `image` points to
/// `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn coproc_load(
    v: *const coproc_vcoproc,
    label: *const c_char,
    image: *const u8,
    len: usize,
) -> c_int {
    status(|| {
        // SAFETY: per the caller: a live handle, a string, `len` bytes.
        let (v, label, image) = unsafe {
            (
                handle(v, "vcoproc")?,
                text(label, "label")?,
                bytes(image, len, "image")?,
            )
        };
        Ok(v.v.load(label, image)?)
    })
}

/// Write `n` request words to the mailbox, ring the doorbell, wait for
/// the firmware's answer (up to `timeout_ms`; 0: the SDK's default, 30 s)
/// and copy up to `reply_cap` mailbox-out words to `reply`. Answers the
/// number of words copied, or a negative `COPROC_E_*` code
/// (`COPROC_E_FAULTED` if the vcoproc faulted).
///
/// # Safety
/// `v` a live handle; `request` points to `n` words; `reply` to
/// `reply_cap` writable words (or is NULL with `reply_cap` 0).
#[no_mangle]
pub unsafe extern "C" fn coproc_call(
    v: *const coproc_vcoproc,
    request: *const u32,
    n: usize,
    reply: *mut u32,
    reply_cap: usize,
    timeout_ms: u32,
) -> c_int {
    value(|| {
        // SAFETY: a live handle, per the caller.
        let v = unsafe { handle(v, "vcoproc") }?;
        let req = if n == 0 {
            &[][..]
        } else if request.is_null() {
            return Err(FfiError::Null("request"));
        } else {
            // SAFETY: not NULL, `n` readable words per the caller.
            unsafe { std::slice::from_raw_parts(request, n) }
        };
        if reply.is_null() && reply_cap > 0 {
            return Err(FfiError::Null("reply"));
        }
        let r = v.v.call_timeout(req, timeout(timeout_ms, &v.v))?;
        let k = r.words.len().min(reply_cap);
        if k > 0 {
            // SAFETY: `reply` is not NULL (k > 0 means reply_cap > 0) and
            // has room for `reply_cap` >= k words per the caller; the
            // source is our own vector, so they cannot overlap.
            unsafe { std::ptr::copy_nonoverlapping(r.words.as_ptr(), reply, k) };
        }
        Ok(c_int::try_from(k).unwrap_or(c_int::MAX))
    })
}

/// The vcoproc's state (`COPROC_STATE_*`) or a negative error code.
///
/// # Safety
/// `v` a live handle.
#[no_mangle]
pub unsafe extern "C" fn coproc_state(v: *const coproc_vcoproc) -> c_int {
    value(|| {
        // SAFETY: a live handle, per the caller.
        let state = unsafe { handle(v, "vcoproc") }?.v.state()?;
        Ok(match state.as_str() {
            "created" => COPROC_STATE_CREATED,
            "loaded" => COPROC_STATE_LOADED,
            "runnable" => COPROC_STATE_RUNNABLE,
            "running" => COPROC_STATE_RUNNING,
            "waiting" => COPROC_STATE_WAITING,
            "stopped" => COPROC_STATE_STOPPED,
            "faulted" => COPROC_STATE_FAULTED,
            "destroyed" => COPROC_STATE_DESTROYED,
            "stalled" => COPROC_STATE_STALLED,
            other => {
                return Err(FfiError::Sdk(VcoprocError::Client(ClientError::Protocol(
                    format!("unknown state {other}"),
                ))))
            }
        })
    })
}

fn copy_text(dst: &mut [c_char], src: &str) {
    let n = src.len().min(dst.len() - 1);
    for (d, s) in dst.iter_mut().zip(&src.as_bytes()[..n]) {
        *d = c_char::from_ne_bytes([*s]);
    }
    dst[n] = 0;
}

/// Copy the vcoproc's newest fault record to `out`: 1 if it has one, 0
/// if it never faulted, or a negative error code.
///
/// # Safety
/// `v` a live handle; `out` points to a writable `coproc_fault`.
#[no_mangle]
pub unsafe extern "C" fn coproc_last_fault(
    v: *const coproc_vcoproc,
    out: *mut coproc_fault,
) -> c_int {
    value(|| {
        // SAFETY: a live handle and a writable record, per the caller.
        let (v, out) = unsafe { (handle(v, "vcoproc")?, handle_mut(out, "out")?) };
        let Some(f) = v.v.info()?.last_fault else {
            return Ok(0);
        };
        out.addr = f.addr.unwrap_or(0);
        out.pc = f.pc.unwrap_or(0);
        out.has_addr = u8::from(f.addr.is_some());
        out.has_pc = u8::from(f.pc.is_some());
        copy_text(&mut out.access, &f.access);
        copy_text(&mut out.reason, &f.reason);
        Ok(1)
    })
}

/// Reset the vcoproc (after a fault, say) and start it again, mappings
/// kept.
///
/// # Safety
/// `v` a live handle.
#[no_mangle]
pub unsafe extern "C" fn coproc_reset(v: *const coproc_vcoproc) -> c_int {
    // SAFETY: a live handle, per the caller.
    status(|| Ok(unsafe { handle(v, "vcoproc") }?.v.reset()?))
}

/// The session a listing asks through.
///
/// # Safety
/// `socket` is NULL or a NUL-terminated string.
unsafe fn session(socket: *const c_char) -> Result<Session, FfiError> {
    Ok(if socket.is_null() {
        Session::connect()?
    } else {
        // SAFETY: not NULL: a NUL-terminated string, per the caller.
        Session::connect_to(Path::new(unsafe { text(socket, "socket") }?))?
    })
}

/// Write `json` into `buf` (cut to `cap - 1` bytes, NUL-terminated) and
/// answer its full length.
///
/// # Safety
/// `buf` is NULL with `cap` 0, or points to `cap` writable bytes.
unsafe fn put_json(json: &str, buf: *mut c_char, cap: usize) -> Result<c_int, FfiError> {
    if cap > 0 {
        if buf.is_null() {
            return Err(FfiError::Null("buf"));
        }
        let n = json.len().min(cap - 1);
        // SAFETY: `buf` has `cap` > n writable bytes per the caller; the
        // source is our own string, so they cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(json.as_ptr().cast::<c_char>(), buf, n);
            *buf.add(n) = 0;
        }
    }
    c_int::try_from(json.len()).map_err(|_| FfiError::Invalid("listing over 2 GiB".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::{coproc_buffer_free, coproc_buffer_iova};
    use crate::queue::{coproc_queue_free, coproc_queue_submit};

    #[test]
    fn the_checked_in_header_is_what_cbindgen_makes() {
        let made = include_str!(concat!(env!("OUT_DIR"), "/coproc.h"));
        let kept = include_str!("../include/coproc.h");
        assert!(
            made == kept,
            "include/coproc.h is stale: copy {}/coproc.h over it",
            env!("OUT_DIR")
        );
    }

    #[test]
    fn null_handles_and_strings_are_errors_not_crashes() {
        // SAFETY: NULL handles and strings are what is being tested; the
        // functions accept them.
        unsafe {
            assert!(coproc_open(std::ptr::null(), std::ptr::null()).is_null());
            assert_eq!(coproc_last_error_code(), COPROC_E_INVALID);
            let msg = CStr::from_ptr(coproc_last_error()).to_str().unwrap();
            assert_eq!(msg, "coproc is NULL");
            assert_eq!(
                coproc_load(std::ptr::null(), std::ptr::null(), std::ptr::null(), 0),
                COPROC_E_INVALID
            );
            assert_eq!(
                coproc_call(
                    std::ptr::null(),
                    std::ptr::null(),
                    0,
                    std::ptr::null_mut(),
                    0,
                    0
                ),
                COPROC_E_INVALID
            );
            assert_eq!(coproc_state(std::ptr::null()), COPROC_E_INVALID);
            assert_eq!(
                coproc_queue_submit(std::ptr::null_mut(), std::ptr::null()),
                COPROC_E_INVALID
            );
            assert_eq!(coproc_buffer_iova(std::ptr::null()), 0);
            coproc_close(std::ptr::null_mut());
            coproc_buffer_free(std::ptr::null_mut());
            coproc_queue_free(std::ptr::null_mut());
        }
    }

    #[test]
    fn a_missing_daemon_is_a_connect_error() {
        let sock = CString::new("/nonexistent/coprocd.sock").unwrap();
        let coproc = CString::new("mcu0").unwrap();
        // SAFETY: two NUL-terminated strings.
        let v = unsafe { coproc_open(sock.as_ptr(), coproc.as_ptr()) };
        assert!(v.is_null());
        assert_eq!(coproc_last_error_code(), COPROC_E_CONNECT);
    }

    #[test]
    fn panics_are_caught_at_the_boundary() {
        let r = guard(7, || -> Result<i32, FfiError> { panic!("on purpose") });
        assert_eq!(r, 7);
        assert_eq!(coproc_last_error_code(), COPROC_E_PANIC);
        // SAFETY: the library's own NUL-terminated message.
        let msg = unsafe { CStr::from_ptr(coproc_last_error()) };
        assert!(msg.to_str().unwrap().contains("on purpose"));
    }
}
