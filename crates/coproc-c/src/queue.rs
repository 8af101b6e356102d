//! Queues: submission and completion rings in shared memory, from C.

use crate::{
    coproc_cqe, coproc_queue, coproc_sqe, coproc_vcoproc, guard, handle, handle_mut, status, value,
    FfiError,
};
use coproc_client::Cqe;
use coproc_client::Sqe;
use std::ffi::c_int;
use std::time::Duration;

/// An event-driven queue of `entries` entries (a power of two up to 4096)
/// at an iova the library picks. NULL on failure.
///
/// # Safety
/// `v` a live handle.
#[no_mangle]
pub unsafe extern "C" fn coproc_queue_new(
    v: *const coproc_vcoproc,
    entries: u32,
) -> *mut coproc_queue {
    guard(std::ptr::null_mut(), || {
        // SAFETY: a live handle, per the caller.
        let v = unsafe { handle(v, "vcoproc") }?;
        let q = v.v.queue(entries)?;
        Ok(Box::into_raw(Box::new(coproc_queue { q })))
    })
}

/// Tell the firmware where the queue is, by the example firmware's
/// convention (`qecho`): mailbox words 0 and 1 = iova and length, then a
/// doorbell.
///
/// # Safety
/// `v` and `q` live handles.
#[no_mangle]
pub unsafe extern "C" fn coproc_queue_announce(
    v: *const coproc_vcoproc,
    q: *const coproc_queue,
) -> c_int {
    status(|| {
        // SAFETY: live handles, per the caller.
        let (v, q) = unsafe { (handle(v, "vcoproc")?, handle(q, "queue")?) };
        Ok(v.v.announce_queue(&q.q)?)
    })
}

pub(crate) fn to_sqe(s: &coproc_sqe) -> Sqe {
    Sqe {
        opcode: s.opcode,
        tag: s.tag,
        args: s.args,
    }
}

pub(crate) fn from_cqe(c: &Cqe) -> coproc_cqe {
    coproc_cqe {
        tag: c.tag,
        status: c.status,
        result: c.result,
    }
}

/// Put a submission in the ring (publish with `coproc_queue_ring`);
/// `COPROC_E_FULL` if the ring is full.
///
/// # Safety
/// `q` a live queue used by no other thread meanwhile; `sqe` readable.
#[no_mangle]
pub unsafe extern "C" fn coproc_queue_submit(
    q: *mut coproc_queue,
    sqe: *const coproc_sqe,
) -> c_int {
    status(|| {
        // SAFETY: a live, unshared queue and a readable entry, per the caller.
        let (q, sqe) = unsafe { (handle_mut(q, "queue")?, handle(sqe, "sqe")?) };
        if q.q.submit(&to_sqe(sqe)) {
            Ok(())
        } else {
            Err(FfiError::Full)
        }
    })
}

/// Ring the queue's doorbell (one eventfd write).
///
/// # Safety
/// `q` a live queue.
#[no_mangle]
pub unsafe extern "C" fn coproc_queue_ring(q: *const coproc_queue) -> c_int {
    // SAFETY: a live queue, per the caller.
    status(|| Ok(unsafe { handle(q, "queue") }?.q.ring()?))
}

/// Wait up to `timeout_ms` for a completion: 1 if one may be ready, 0 on
/// timeout, or a negative error code.
///
/// # Safety
/// `q` a live queue.
#[no_mangle]
pub unsafe extern "C" fn coproc_queue_wait(q: *const coproc_queue, timeout_ms: u32) -> c_int {
    value(|| {
        // SAFETY: a live queue, per the caller.
        let q = unsafe { handle(q, "queue") }?;
        let ready = q.q.wait(Duration::from_millis(u64::from(timeout_ms)))?;
        Ok(c_int::from(ready))
    })
}

/// Take the next completion into `out`: 1 if there was one, 0 if not.
///
/// # Safety
/// `q` a live queue used by no other thread meanwhile; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn coproc_queue_complete(
    q: *mut coproc_queue,
    out: *mut coproc_cqe,
) -> c_int {
    value(|| {
        // SAFETY: a live, unshared queue and a writable entry, per the caller.
        let (q, out) = unsafe { (handle_mut(q, "queue")?, handle_mut(out, "out")?) };
        Ok(match q.q.complete() {
            Some(c) => {
                *out = from_cqe(&c);
                1
            }
            None => 0,
        })
    })
}

/// Submit `sqe`, ring, and wait (up to `timeout_ms`; 0: 30 s) for the
/// completion with its tag, copied to `out` (others are dropped: keep one
/// request in flight).
///
/// # Safety
/// `q` a live queue used by no other thread meanwhile; `sqe` readable;
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn coproc_queue_round_trip(
    q: *mut coproc_queue,
    sqe: *const coproc_sqe,
    out: *mut coproc_cqe,
    timeout_ms: u32,
) -> c_int {
    status(|| {
        // SAFETY: live, unshared queue, readable and writable entries, per
        // the caller.
        let (q, sqe, out) = unsafe {
            (
                handle_mut(q, "queue")?,
                handle(sqe, "sqe")?,
                handle_mut(out, "out")?,
            )
        };
        let t = if timeout_ms == 0 {
            coproc_client::vcoproc::DEFAULT_TIMEOUT
        } else {
            Duration::from_millis(u64::from(timeout_ms))
        };
        let c = q.q.round_trip(&to_sqe(sqe), t)?;
        *out = from_cqe(&c);
        Ok(())
    })
}

/// Free a queue (its mapping stays with the vcoproc until it is
/// destroyed). NULL is ignored.
///
/// # Safety
/// `q` NULL or a live queue, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn coproc_queue_free(q: *mut coproc_queue) {
    guard((), || {
        if !q.is_null() {
            // SAFETY: a live handle from `Box::into_raw`, given back once.
            drop(unsafe { Box::from_raw(q) });
        }
        Ok(())
    });
}
