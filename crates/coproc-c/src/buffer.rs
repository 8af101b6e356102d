//! Shared buffers: memory the vcoproc sees at an iova, read and written
//! from C.

use crate::{bytes, coproc_buffer, coproc_vcoproc, guard, handle, status, FfiError};
use std::ffi::c_int;
use std::ffi::c_void;

/// `len` bytes (whole pages) of zeroed memory shared with the vcoproc,
/// mapped read/write at an iova the library picks. NULL on failure.
///
/// # Safety
/// `v` a live handle.
#[no_mangle]
pub unsafe extern "C" fn coproc_buffer_new(
    v: *const coproc_vcoproc,
    len: usize,
) -> *mut coproc_buffer {
    guard(std::ptr::null_mut(), || {
        // SAFETY: a live handle, per the caller.
        let v = unsafe { handle(v, "vcoproc") }?;
        let b = v.v.buffer(len as u64)?;
        Ok(Box::into_raw(Box::new(coproc_buffer { b })))
    })
}

/// A buffer holding a copy of `len` bytes at `data`. NULL on failure.
///
/// # Safety
/// `v` a live handle; `data` points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn coproc_buffer_from(
    v: *const coproc_vcoproc,
    data: *const c_void,
    len: usize,
) -> *mut coproc_buffer {
    guard(std::ptr::null_mut(), || {
        // SAFETY: a live handle and `len` readable bytes, per the caller.
        let (v, data) = unsafe { (handle(v, "vcoproc")?, bytes(data.cast(), len, "data")?) };
        let b = v.v.buffer_from(data)?;
        Ok(Box::into_raw(Box::new(coproc_buffer { b })))
    })
}

/// Where the vcoproc sees the buffer's first byte (0 for NULL).
///
/// # Safety
/// `b` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn coproc_buffer_iova(b: *const coproc_buffer) -> u64 {
    // SAFETY: NULL or a live handle, per the caller.
    guard(0, || Ok(unsafe { handle(b, "buffer") }?.b.iova()))
}

/// The buffer's size in bytes (0 for NULL).
///
/// # Safety
/// `b` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn coproc_buffer_len(b: *const coproc_buffer) -> usize {
    guard(0, || {
        // SAFETY: NULL or a live handle, per the caller.
        let b = unsafe { handle(b, "buffer") }?;
        usize::try_from(b.b.len()).map_err(|_| FfiError::Invalid("length".into()))
    })
}

/// The buffer's memory in this process, valid until `coproc_buffer_free`
/// (NULL for NULL). The device may read and write it concurrently: it is
/// plain shared memory; order accesses through the firmware's protocol
/// (`coproc_call`, a queue).
///
/// # Safety
/// `b` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn coproc_buffer_data(b: *const coproc_buffer) -> *mut c_void {
    guard(std::ptr::null_mut(), || {
        // SAFETY: NULL or a live handle, per the caller.
        let b = unsafe { handle(b, "buffer") }?;
        // The mapping's address as a pointer, handed to C: no Rust
        // reference to the shared memory is made here.
        Ok(usize::try_from(b.b.mem().addr()).unwrap_or(0) as *mut c_void)
    })
}

/// Copy `len` bytes from `data` into the buffer at `offset`.
///
/// # Safety
/// `b` a live buffer; `data` points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn coproc_buffer_write(
    b: *const coproc_buffer,
    offset: u64,
    data: *const c_void,
    len: usize,
) -> c_int {
    status(|| {
        // SAFETY: a live handle and `len` readable bytes, per the caller.
        let (b, data) = unsafe { (handle(b, "buffer")?, bytes(data.cast(), len, "data")?) };
        Ok(b.b.write(offset, data)?)
    })
}

/// Copy `len` bytes of the buffer from `offset` to `out`.
///
/// # Safety
/// `b` a live buffer; `out` points to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn coproc_buffer_read(
    b: *const coproc_buffer,
    offset: u64,
    out: *mut c_void,
    len: usize,
) -> c_int {
    status(|| {
        // SAFETY: a live handle, per the caller.
        let b = unsafe { handle(b, "buffer") }?;
        if len == 0 {
            return Ok(());
        }
        if out.is_null() {
            return Err(FfiError::Null("out"));
        }
        // SAFETY: not NULL, `len` > 0 writable bytes per the caller, not
        // shared memory (the copy out of it goes through the SDK).
        let out = unsafe { std::slice::from_raw_parts_mut(out.cast::<u8>(), len) };
        Ok(b.b.read(offset, out)?)
    })
}

/// Unmap the buffer from its vcoproc and free it. NULL is ignored.
///
/// # Safety
/// `b` NULL or a live buffer, not used afterwards (nor its data pointer).
#[no_mangle]
pub unsafe extern "C" fn coproc_buffer_free(b: *mut coproc_buffer) {
    guard((), || {
        if !b.is_null() {
            // SAFETY: a live handle from `Box::into_raw`, given back once.
            drop(unsafe { Box::from_raw(b) });
        }
        Ok(())
    });
}
