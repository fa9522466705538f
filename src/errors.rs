//! The one place where Rust errors become Python exceptions.
//!
//! Every failure the core can report is a variant of [`Error`]; `impl From<Error> for PyErr` maps
//! each to the stdlib class a `concurrent.futures` or `multiprocessing` user already catches, so
//! `except BrokenProcessPool:` keeps working after the import swap.

use std::io;

use pyo3::exceptions::{PyEOFError, PyOSError, PyRuntimeError, PyTimeoutError, PyValueError};
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
    /// Work was submitted during interpreter exit.
    InterpreterShutDown,
    /// The process pool cannot run work any more; the text says why.
    BrokenProcess(String),
    /// The thread pool cannot run work any more; the text says why.
    BrokenThreads(String),
    /// A bounded wait ran out.
    Timeout,
    /// An argument the caller can fix.
    InvalidArgument(String),
    /// An operating-system call failed.
    Io(io::Error),
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
    /// An OS error on a pipe connection, raised as its `OSError` subclass (`BrokenPipeError`...).
    Connection(io::Error),
    /// A descriptor number from Python that names nothing open (`OSError` with `EBADF`).
    BadDescriptor(io::Error),
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
        return Err(Error::BadDescriptor(io::Error::last_os_error()));
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
            Error::InterpreterShutDown => {
                PyRuntimeError::new_err("cannot schedule new futures after interpreter shutdown")
            }
            Error::BrokenProcess(why) => BrokenProcessPool::new_err(why),
            Error::BrokenThreads(why) => BrokenThreadPool::new_err(why),
            Error::Timeout => PyTimeoutError::new_err("the wait timed out"),
            Error::InvalidArgument(why) => PyValueError::new_err(why),
            Error::Io(e) => PyOSError::new_err(e.to_string()),
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
            Error::Connection(e) | Error::BadDescriptor(e) => e.into(),
        }
    }
}
