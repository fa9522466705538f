//! Shared memory: anonymous segments for the core's own objects, named segments for
//! `SharedMemory`.
//!
//! Locks, queues, values and arrays live in *anonymous* segments (`memfd_create`). Nothing is
//! named, so nothing can be left in `/dev/shm`, whatever kills the processes: the memory goes
//! away with the last descriptor and the last mapping. Another process attaches by opening
//! `/proc/<pid>/fd/<fd>` of a process that holds the segment (same user, Linux), and checks the
//! inode it got against the one in the handle, so a recycled descriptor number can never hand it
//! somebody else's file. Small objects take a slot of a shared arena ([`crate::arena`]) rather
//! than a segment of their own ([`Region`]).
//!
//! `SharedMemory` must be reachable by name, so its segments are real POSIX shm objects. Every
//! holder keeps a shared `flock` on the object; the holder that closes last (it alone can turn its
//! lock exclusive) unlinks the name. The kernel drops the lock of a process that dies, and the
//! watchdog (`shared_memory.py`) unlinks for a creator that died, so the name lives exactly as
//! long as somebody holds it.

use crate::errors::Error;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use pyo3::prelude::*;

/// A shared mapping of a file descriptor's memory, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every concurrent access to it goes through atomics
// (sync primitives, queue) or is the user's business, as with `multiprocessing.sharedctypes`.
unsafe impl Send for Mapping {}
// SAFETY: see `Send`.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` read-write and shared.
    pub fn new(fd: &OwnedFd, len: usize) -> io::Result<Self> {
        // mmap refuses a zero length; a one-byte mapping stands in for an empty array
        let map_len = len.max(1);
        // SAFETY: a fresh mapping at an address the kernel chooses aliases no Rust object.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the pointer and length are exactly what mmap returned, and nothing borrows the
        // mapping past its owner's life (buffer exports keep the owning pyclass alive).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len.max(1)) };
    }
}

/// How another process finds a shared region: the holder's pid, its descriptor, the size, the
/// inode (which tells a recycled descriptor from the segment), and for a slot of an arena its
/// place (`offset << 32 | generation`; 0 for a segment of its own).
pub type Handle = (u32, i32, usize, u64, u64);

/// An anonymous shared-memory segment (a memfd), zero-filled when created.
#[derive(Debug)]
pub struct Segment {
    map: Mapping,
    fd: OwnedFd,
    ino: u64,
}

fn inode(fd: &OwnedFd) -> io::Result<u64> {
    Ok(inode_and_size(fd)?.0)
}

fn inode_and_size(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    // SAFETY: fstat writes into the zeroed struct we own; the descriptor is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &raw mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.st_ino, u64::try_from(st.st_size).unwrap_or(0)))
}

/// Opens the memfd that process `pid` holds as descriptor `fd_num`, checking that it is the
/// segment with inode `ino`; returns it and its size.
fn open_holders(pid: u32, fd_num: i32, ino: u64) -> io::Result<(OwnedFd, u64)> {
    let own = (pid == crate::sync::current_pid()).then(|| format!("/proc/self/fd/{fd_num}"));
    let path = own.unwrap_or_else(|| format!("/proc/{pid}/fd/{fd_num}"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot attach to the shared segment of process {pid} ({e}); the process that \
                     sent it must still hold it when the receiver unpickles it"
                ),
            )
        })?;
    let fd = OwnedFd::from(file);
    let (real_ino, real_len) = inode_and_size(&fd)?;
    if real_ino != ino {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("process {pid} no longer holds the shared segment it sent"),
        ));
    }
    Ok((fd, real_len))
}

impl Segment {
    /// A new zero-filled segment of `len` bytes.
    pub fn create(len: usize) -> io::Result<Self> {
        let name = c"ferropool";
        // SAFETY: a valid C string; the returned descriptor is ours alone.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        File::from(fd.try_clone()?).set_len(len.max(1) as u64)?;
        // Fixed size from now on: a process that opens the segment through /proc and truncates
        // it would otherwise make every holder's next access die of SIGBUS.
        // SAFETY: fcntl on a descriptor we own.
        if unsafe {
            libc::fcntl(
                fd.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        let ino = inode(&fd)?;
        Ok(Segment {
            map: Mapping::new(&fd, len)?,
            fd,
            ino,
        })
    }

    /// Attaches to the segment another process described with [`Segment::handle`].
    pub fn attach(handle: Handle) -> io::Result<Self> {
        let (pid, fd_num, len, ino, _) = handle;
        let (fd, real_len) = open_holders(pid, fd_num, ino)?;
        // mapping past the end of the file would turn the first access there into SIGBUS
        if real_len < len.max(1) as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the shared segment of process {pid} holds {real_len} bytes, not the {len} its handle states"),
            ));
        }
        Ok(Segment {
            map: Mapping::new(&fd, len)?,
            fd,
            ino,
        })
    }

    /// Attaches to the whole of the segment process `pid` holds as `fd_num` (an arena).
    pub fn attach_whole(pid: u32, fd_num: i32, ino: u64, max_len: usize) -> io::Result<Self> {
        let (fd, real_len) = open_holders(pid, fd_num, ino)?;
        let len = usize::try_from(real_len).unwrap_or(usize::MAX);
        if len == 0 || len > max_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the shared segment of process {pid} is not an arena ({real_len} bytes)"),
            ));
        }
        Ok(Segment {
            map: Mapping::new(&fd, len)?,
            fd,
            ino,
        })
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// What a process needs to attach to this segment (valid while this process holds it).
    pub fn handle(&self) -> Handle {
        (
            crate::sync::current_pid(),
            self.fd.as_raw_fd(),
            self.map.len(),
            self.ino,
            0,
        )
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Shared memory for one object: a slot of an arena, or a segment of its own when it is too big
/// for a slot.
#[derive(Debug)]
pub enum Region {
    Own(Segment),
    Slot(crate::arena::Slot),
}

impl Region {
    /// `len` new zeroed bytes.
    pub fn create(len: usize) -> io::Result<Self> {
        Ok(match crate::arena::alloc(len)? {
            Some(slot) => Region::Slot(slot),
            None => Region::Own(Segment::create(len)?),
        })
    }

    /// The region another process described with [`Region::handle`].
    pub fn attach(handle: Handle) -> io::Result<Self> {
        Ok(if handle.4 == 0 {
            Region::Own(Segment::attach(handle)?)
        } else {
            Region::Slot(crate::arena::attach(handle)?)
        })
    }

    pub fn handle(&self) -> Handle {
        match self {
            Region::Own(seg) => seg.handle(),
            Region::Slot(slot) => slot.handle(),
        }
    }

    pub fn as_ptr(&self) -> *mut u8 {
        match self {
            Region::Own(seg) => seg.as_ptr(),
            Region::Slot(slot) => slot.as_ptr(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Region::Own(seg) => seg.len(),
            Region::Slot(slot) => slot.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A region whose start holds a `T` made only of atomics (all-zero is its initial state).
#[derive(Debug)]
pub struct SharedRecord<T> {
    region: Region,
    _t: std::marker::PhantomData<T>,
}

impl<T> SharedRecord<T> {
    /// A new zeroed `T` with `extra` bytes after it.
    pub fn create(extra: usize) -> io::Result<Self> {
        let len = std::mem::size_of::<T>()
            .checked_add(extra)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "shared object too large"))?;
        Self::checked(Region::create(len)?)
    }

    pub fn attach(handle: Handle) -> io::Result<Self> {
        if handle.2 < std::mem::size_of::<T>() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "shared segment too small"));
        }
        Self::checked(Region::attach(handle)?)
    }

    fn checked(region: Region) -> io::Result<Self> {
        // a handle from another process may name any offset: a misaligned `T` would be UB
        if region.len() < std::mem::size_of::<T>() || region.as_ptr() as usize % std::mem::align_of::<T>() != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "shared region misplaced"));
        }
        Ok(SharedRecord {
            region,
            _t: std::marker::PhantomData,
        })
    }

    /// The object a pickled `handle` names, or a new zeroed one (the `__new__` of every
    /// shared primitive).
    pub fn open(handle: Option<Handle>) -> io::Result<Self> {
        match handle {
            Some(h) => Self::attach(h),
            None => Self::create(0),
        }
    }

    /// What another process needs to attach to this object.
    pub fn handle(&self) -> Handle {
        self.region.handle()
    }

    /// The bytes after the `T`.
    pub fn extra(&self) -> (*mut u8, usize) {
        let head = std::mem::size_of::<T>();
        // SAFETY: the region is at least `size_of::<T>()` long (checked on create and attach).
        (unsafe { self.region.as_ptr().add(head) }, self.region.len() - head)
    }
}

impl<T> std::ops::Deref for SharedRecord<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the region is at least `size_of::<T>()` long and aligned for `T` (checked on
        // create and attach); `T` consists of atomics, valid for any bit pattern another process
        // may have written, and zero is the initial state every `T` here is designed for.
        unsafe { &*self.region.as_ptr().cast::<T>() }
    }
}

/// A raw anonymous segment Python sees as a writable buffer (`sharedctypes` builds its ctypes
/// objects over it with `from_buffer`).
#[pyclass(name = "Segment", module = "ferropool._core", frozen)]
pub struct PySegment {
    seg: Region,
}

#[pymethods]
impl PySegment {
    #[new]
    #[pyo3(signature = (size, handle=None))]
    fn new(size: usize, handle: Option<Handle>) -> PyResult<Self> {
        let seg = match handle {
            Some(h) => Region::attach(h)?,
            None => Region::create(size)?,
        };
        Ok(PySegment { seg })
    }

    #[getter]
    fn handle(&self) -> Handle {
        self.seg.handle()
    }

    #[getter]
    fn size(&self) -> usize {
        self.seg.len()
    }

    fn __len__(&self) -> usize {
        self.seg.len()
    }

    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut pyo3::ffi::Py_buffer, flags: i32) -> PyResult<()> {
        let (ptr, len) = (slf.get().seg.as_ptr(), slf.get().seg.len());
        fill_buffer(&slf, view, ptr, len, flags)
    }
}

/// Fills a buffer view over `len` writable bytes at `ptr`, owned by `owner`.
fn fill_buffer<T: pyo3::PyClass>(
    owner: &Bound<'_, T>,
    view: *mut pyo3::ffi::Py_buffer,
    ptr: *mut u8,
    len: usize,
    flags: i32,
) -> PyResult<()> {
    // SAFETY: `view` comes from the buffer protocol; PyBuffer_FillInfo takes a new reference to
    // `owner`, which keeps the mapping alive for as long as the view exists.
    let rc = unsafe { pyo3::ffi::PyBuffer_FillInfo(view, owner.as_ptr(), ptr.cast(), len as isize, 0, flags) };
    if rc != 0 {
        return Err(PyErr::fetch(owner.py()));
    }
    Ok(())
}

/// A named POSIX shared-memory object (`/dev/shm/<name>`) held under a shared `flock`.
#[derive(Debug)]
struct Named {
    map: Mapping,
    fd: OwnedFd,
}

/// `SharedMemory`'s native half: create or attach by name, close, unlink.
#[pyclass(name = "NamedSegment", module = "ferropool._core", frozen)]
pub struct PyNamedSegment {
    name: String,
    size: usize,
    inner: std::sync::Mutex<Option<Named>>,
    /// Buffer views handed out and not yet released: `close()` refuses while any exist.
    exports: std::sync::atomic::AtomicUsize,
}

/// The `OSError` subclass the stdlib raises for `errno`, naming the block as it does
/// (`[Errno 22] Invalid argument: '/a/b'`).
fn os_error_for(err: io::Error, name: &str) -> PyErr {
    Error::IoAbout(err, format!("/{name}")).into()
}

fn shm_path(name: &str) -> PyResult<CString> {
    CString::new(format!("/{name}")).map_err(|_| Error::InvalidArgument("the name must not contain NUL".into()).into())
}

fn flock(fd: &OwnedFd, op: i32) -> io::Result<()> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(fd.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn same_file(fd: &OwnedFd, path: &CString) -> bool {
    let Ok(ino) = inode(fd) else { return false };
    // SAFETY: stat writes into a zeroed struct we own; `path` is a valid C string.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let dev_path = CString::new(format!("/dev/shm{}", path.to_string_lossy())).unwrap_or_default();
    (unsafe { libc::stat(dev_path.as_ptr(), &raw mut st) } == 0) && st.st_ino == ino
}

#[pymethods]
impl PyNamedSegment {
    #[new]
    fn new(name: String, create: bool, size: usize) -> PyResult<Self> {
        let path = shm_path(&name)?;
        let oflag = if create {
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR
        } else {
            libc::O_RDWR
        };
        // SAFETY: a valid C string; the descriptor returned is ours alone.
        let raw = unsafe { libc::shm_open(path.as_ptr(), oflag | libc::O_CLOEXEC, 0o600) };
        if raw < 0 {
            return Err(os_error_for(io::Error::last_os_error(), &name));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let setup = || -> PyResult<usize> {
            // the closer that unlinks holds the lock exclusively, so this waits for it to finish
            flock(&fd, libc::LOCK_SH)?;
            if create {
                File::from(fd.try_clone()?).set_len(size as u64)?;
                Ok(size)
            } else if !same_file(&fd, &path) {
                // the last holder unlinked it between our open and our lock
                Err(os_error_for(io::Error::from_raw_os_error(libc::ENOENT), &name))
            } else {
                Ok(File::from(fd.try_clone()?).metadata()?.len() as usize)
            }
        };
        let size = match setup() {
            Ok(s) => s,
            Err(e) => {
                if create {
                    // SAFETY: a valid C string naming the object we just created.
                    unsafe { libc::shm_unlink(path.as_ptr()) };
                }
                return Err(e);
            }
        };
        let map = Mapping::new(&fd, size)?;
        Ok(PyNamedSegment {
            name,
            size,
            inner: std::sync::Mutex::new(Some(Named { map, fd })),
            exports: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    #[getter]
    fn size(&self) -> usize {
        self.size
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_none()
    }

    /// Unmaps and drops this process's hold; `True` when this was the last holder, which then
    /// unlinked the name.
    fn close(&self) -> PyResult<bool> {
        if self.exports.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return Err(Error::BufferExported(
                "cannot close exported pointers exist: release every memoryview of buf first",
            )
            .into());
        }
        let Some(named) = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return Ok(false);
        };
        drop(named.map);
        // only a process with no other holder can turn its shared lock exclusive
        let last = flock(&named.fd, libc::LOCK_EX | libc::LOCK_NB).is_ok();
        let path = shm_path(&self.name)?;
        if last && same_file(&named.fd, &path) {
            // SAFETY: a valid C string; we hold the exclusive lock, so nobody else holds it
            unsafe { libc::shm_unlink(path.as_ptr()) };
            return Ok(true);
        }
        Ok(false)
    }

    /// Removes the name now, as the stdlib's `unlink()` does; holders keep their mappings.
    fn unlink(&self) -> PyResult<()> {
        let path = shm_path(&self.name)?;
        // SAFETY: a valid C string.
        if unsafe { libc::shm_unlink(path.as_ptr()) } != 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::NotFound {
                return Err(os_error_for(err, &self.name));
            }
            return Err(err.into());
        }
        Ok(())
    }

    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut pyo3::ffi::Py_buffer, flags: i32) -> PyResult<()> {
        let guard = slf
            .get()
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(named) = guard.as_ref() else {
            return Err(Error::InvalidState("the shared memory is closed".into()).into());
        };
        let (ptr, len) = (named.map.as_ptr(), named.map.len());
        drop(guard);
        fill_buffer(&slf, view, ptr, len, flags)?;
        slf.get().exports.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {
        self.exports.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn attach_sees_the_same_memory() {
        let a: SharedRecord<AtomicU32> = SharedRecord::create(0).unwrap();
        a.store(7, Ordering::SeqCst);
        let b: SharedRecord<AtomicU32> = SharedRecord::attach(a.handle()).unwrap();
        assert_eq!(b.load(Ordering::SeqCst), 7);
        b.store(9, Ordering::SeqCst);
        assert_eq!(a.load(Ordering::SeqCst), 9);
    }

    #[test]
    fn a_segment_cannot_be_resized_and_a_longer_handle_is_refused() {
        let a = Segment::create(64).unwrap();
        let (pid, fd, len, ino, _) = a.handle();
        let file = File::from(a.fd.try_clone().unwrap());
        assert!(file.set_len(0).is_err());
        assert!(file.set_len(1 << 20).is_err());
        assert_eq!(file.metadata().unwrap().len(), 64);
        assert!(Segment::attach((pid, fd, len, ino, 0)).is_ok());
        assert!(Segment::attach((pid, fd, 1 << 20, ino, 0)).is_err());
    }

    #[test]
    fn a_wrong_inode_is_refused() {
        let a = Segment::create(64).unwrap();
        let (pid, fd, len, ino, _) = a.handle();
        assert!(Segment::attach((pid, fd, len, ino + 1, 0)).is_err());
    }
}
