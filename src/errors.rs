//! The one place where Rust errors become Python exceptions.
//!
//! Every failure the core can report is a variant of [`Error`]; `impl From<Error> for PyErr` maps
//! each to the stdlib class a `concurrent.futures` or `multiprocessing` user already catches, so
//! `except BrokenProcessPool:` keeps working after the import swap.

use std::io;

use pyo3::exceptions::{
    PyAssertionError, PyBufferError, PyEOFError, PyMemoryError, PyOSError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::types::PyBytes;
use pyo3::{Py, PyErr};

pyo3::import_exception!(concurrent.futures.process, BrokenProcessPool);
pyo3::import_exception!(concurrent.futures.thread, BrokenThreadPool);
pyo3::import_exception!(multiprocessing, BufferTooShort);
pyo3::import_exception!(threading, BrokenBarrierError);
pyo3::import_exception!(queue, Empty);
pyo3::import_exception!(queue, Full);

/// What can go wrong in the core, named for the cause.
#[derive(Debug)]
pub enum Error {
    /// The pool no longer accepts work (`shutdown()` was called).
    ShutDown,
    /// The process pool cannot run work any more; the text says why.
    BrokenProcess(String),
    /// The thread pool cannot run work any more; the text says why.
    BrokenThreads(String),
    /// An argument the caller can fix (`ValueError`).
    InvalidArgument(String),
    /// An argument of the wrong kind (`TypeError`).
    WrongType(String),
    /// The object is in no state for the call: closed, corrupt, released too often (`ValueError`).
    InvalidState(String),
    /// A pool made by the parent process before `os.fork()`, used in the child.
    InheritedPool,
    /// A call that only a thread of another pool may make (joining the pool from its own task).
    WouldDeadlock(&'static str),
    /// Releasing a recursive lock this thread does not hold (`AssertionError`, as the stdlib's).
    NotOwner(&'static str),
    /// Memory that cannot be given back while views of it exist (`BufferError`).
    BufferExported(&'static str),
    /// No memory for a message of this size (`MemoryError`).
    OutOfMemory(&'static str),
    /// An operating-system call failed: the `OSError` subclass of its errno, with the errno.
    Io(io::Error),
    /// As `Io`, about a named object (a shared memory segment), whose name goes in `filename`.
    IoAbout(io::Error, String),
    /// A barrier was aborted, reset, or timed out while this process waited on it.
    BrokenBarrier,
    /// `get()` found nothing within its timeout (`queue.Empty`).
    QueueEmpty,
    /// `put()` found no room within its timeout (`queue.Full`).
    QueueFull,
    /// A Python exception raised inside the core (user code, pickling).
    Python(PyErr),
    /// A pipe connection was used after `close()`.
    ConnectionClosed,
    /// A pipe connection was used in the direction it does not go (the stdlib's words).
    WrongDirection(&'static str),
    /// The other end of a pipe is closed and no message is left.
    Eof,
    /// The waiting message is longer than `recv_bytes(maxlength)` allows.
    MessageTooLong,
    /// The message did not fit `recv_bytes_into`'s buffer; it travels in the exception.
    BufferTooShort(Py<PyBytes>),
}

/// The core's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Checks a descriptor number that came from Python: negative is a `ValueError`, one that names
/// no open descriptor an `OSError` (`EBADF`), as `os.fstat` would raise.
pub fn fd_arg(fd: i32) -> Result<std::os::fd::RawFd> {
    if fd < 0 {
        return Err(Error::InvalidArgument(format!("invalid file descriptor: {fd}")));
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; any number is safe to ask about.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(Error::Io(io::Error::last_os_error()));
    }
    Ok(fd)
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        Error::Io(err)
    }
}

impl From<PyErr> for Error {
    fn from(err: PyErr) -> Self {
        Error::Python(err)
    }
}

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        match err {
            // the stdlib's exact words, so code matching on them keeps working
            Error::ShutDown => PyRuntimeError::new_err("cannot schedule new futures after shutdown"),
            Error::BrokenProcess(why) => BrokenProcessPool::new_err(why),
            Error::BrokenThreads(why) => BrokenThreadPool::new_err(why),
            Error::InvalidArgument(why) | Error::InvalidState(why) => PyValueError::new_err(why),
            Error::WrongType(why) => PyTypeError::new_err(why),
            Error::InheritedPool => PyRuntimeError::new_err(
                "this pool was created by the parent process before os.fork(); its workers and threads \
                 belong to the parent. Create a new pool in the child process.",
            ),
            Error::WouldDeadlock(why) => PyRuntimeError::new_err(why),
            Error::NotOwner(why) => PyAssertionError::new_err(why),
            Error::BufferExported(why) => PyBufferError::new_err(why),
            Error::OutOfMemory(why) => PyMemoryError::new_err(why),
            Error::Io(e) => os_error(&e, None),
            Error::IoAbout(e, name) => os_error(&e, Some(name)),
            Error::BrokenBarrier => BrokenBarrierError::new_err(()),
            Error::QueueEmpty => Empty::new_err(()),
            Error::QueueFull => Full::new_err(()),
            Error::Python(e) => e,
            Error::ConnectionClosed => PyOSError::new_err("handle is closed"),
            Error::WrongDirection(why) => PyOSError::new_err(why),
            Error::Eof => PyEOFError::new_err(()),
            Error::MessageTooLong => {
                PyOSError::new_err("bad message length: the message is longer than maxlength; it is still unread")
            }
            Error::BufferTooShort(message) => BufferTooShort::new_err((message,)),
        }
    }
}

/// `OSError(errno, strerror[, filename])`: Python's constructor picks the subclass the errno
/// names (`FileNotFoundError`, `BrokenPipeError`...) and keeps `errno`, as `os` functions raise.
fn os_error(err: &io::Error, filename: Option<String>) -> PyErr {
    let Some(code) = err.raw_os_error() else {
        // no errno: an error Rust made (an unexpected end of a stream, say); its kind still
        // picks the subclass
        return PyErr::from(io::Error::new(err.kind(), err.to_string()));
    };
    let text = err.to_string();
    let strerror = text.split(" (os error").next().unwrap_or(&text).to_owned();
    match filename {
        Some(name) => PyOSError::new_err((code, strerror, name)),
        None => PyOSError::new_err((code, strerror)),
    }
}
