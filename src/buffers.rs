//! Two memory operations the shared-memory buffer path needs and Python cannot do
//! (`python/ferropool/_runtime/buffers.py`): where a buffer lives, and un-sharing a mapping in place.

use crate::errors::Error;
use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;

/// `(address, length)` of a contiguous buffer (a `memoryview`, an `mmap`, a numpy array).
#[pyfunction]
pub fn buffer_span(obj: &Bound<'_, PyAny>) -> PyResult<(usize, usize)> {
    let buf = PyBuffer::<u8>::get(obj)?;
    Ok((buf.buf_ptr() as usize, buf.len_bytes()))
}

/// `ValueError` unless `address..address + length` is a page-aligned range that is mapped in
/// full: mremap onto anything else would corrupt or crash the process.
fn check_mapped(address: usize, length: usize) -> PyResult<()> {
    // SAFETY: sysconf only reads a system constant.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let end = address.checked_add(length).filter(|&end| isize::try_from(end).is_ok());
    if end.is_none() || address % page != 0 {
        return Err(Error::InvalidArgument(format!("invalid mapping: {length} bytes at {address:#x}")).into());
    }
    // SAFETY: msync with MS_ASYNC writes nothing back for anonymous or shared memory that needs
    // none; it fails with ENOMEM when part of the range is not mapped, which is all we ask.
    if unsafe { libc::msync(address as *mut libc::c_void, length, libc::MS_ASYNC) } != 0 {
        return Err(Error::InvalidArgument(format!(
            "invalid mapping: {length} bytes at {address:#x} are not all mapped"
        ))
        .into());
    }
    Ok(())
}

/// Gives the `length` bytes mapped at `address` a private copy of their current contents, at
/// the same address.
///
/// A worker that sent a received segment back as a result (no copy) but still holds objects on
/// it calls this, so that neither side ever sees the other's later writes.
#[pyfunction]
pub fn detach_mapping(address: usize, length: usize) -> PyResult<()> {
    if address == 0 || length == 0 {
        return Ok(());
    }
    check_mapped(address, length)?;
    // SAFETY: `address..address + length` is a live mapping owned by a Python `mmap` object
    // (the caller checked that it is one of the segments it mapped, whole, and still exported,
    // so it cannot be unmapped during this call, which holds the GIL). We map fresh private
    // memory, copy the contents into it, and move it over the old range with one mremap, which
    // replaces the old mapping atomically: every reader sees the same bytes before and after,
    // and the `mmap` object later unmaps the private copy with the same address and length.
    unsafe {
        let tmp = libc::mmap(
            std::ptr::null_mut(),
            length,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if tmp == libc::MAP_FAILED {
            return Err(Error::Io(std::io::Error::last_os_error()).into());
        }
        std::ptr::copy_nonoverlapping(address as *const u8, tmp.cast::<u8>(), length);
        let moved = libc::mremap(
            tmp,
            length,
            length,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            address as *mut libc::c_void,
        );
        if moved == libc::MAP_FAILED {
            let err = std::io::Error::last_os_error();
            libc::munmap(tmp, length);
            return Err(Error::Io(err).into());
        }
    }
    Ok(())
}
