//! ferropool's native core, imported by Python as `ferropool._core`.
//!
//! This file only registers; each concept lives in its own module (see `docs/ARCHITECTURE.md`).

pub mod arena;
pub mod buffers;
pub mod child;
pub mod connection;
pub mod errors;
pub mod fd;
pub mod fdpass;
pub mod forkserver;
pub mod process;
pub mod process_pool;
pub mod queue;
pub mod registry;
pub mod scheduler;
pub mod shm;
pub mod signals;
pub mod stats;
pub mod supervisor;
pub mod sync;
pub mod task;
pub mod threads;
pub mod wire;
pub mod worker;

use pyo3::prelude::*;

// No `gil_used = false`: the module is not tested on a free-threaded build, and parts of it rely
// on the GIL (docs/ARCHITECTURE.md, "What a free-threaded port needs").
#[pymodule]
pub mod _core {
    #[pymodule_export]
    use crate::buffers::{buffer_span, detach_mapping};
    #[pymodule_export]
    use crate::connection::{socket_pair, spin_until_readable_fd, PyConnection};
    #[pymodule_export]
    use crate::fd::{any_readable, wait_readable};
    #[pymodule_export]
    use crate::process::PyChildProcess;
    #[pymodule_export]
    use crate::process_pool::PyProcessEngine;
    #[pymodule_export]
    use crate::queue::PyQueue;
    #[pymodule_export]
    use crate::registry::{after_fork_in_child, shutdown_all};
    #[pymodule_export]
    use crate::shm::{PyNamedSegment, PySegment};
    #[pymodule_export]
    use crate::supervisor::cpu_count;
    #[pymodule_export]
    use crate::sync::barrier::PyBarrier;
    #[pymodule_export]
    use crate::sync::condition::PyCondVar;
    #[pymodule_export]
    use crate::sync::event::PyEvent;
    #[pymodule_export]
    use crate::sync::lock::{PyLock, PyRLock};
    #[pymodule_export]
    use crate::sync::semaphore::PySemaphore;
    #[pymodule_export]
    use crate::task::PyTaskHandle;
    #[pymodule_export]
    use crate::threads::PyThreadEngine;
    #[pymodule_export]
    use crate::worker::{die_with_parent, worker_main, worker_output_behind};

    use pyo3::prelude::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        // Cargo's "0.1.0-alpha.1" is PEP 440's "0.1.0a1"
        let version = env!("CARGO_PKG_VERSION")
            .replace("-alpha.", "a")
            .replace("-beta.", "b")
            .replace("-rc.", "rc");
        m.add("__version__", version)?;
        // the protocol constants Rust owns, so that Python never restates them
        for (name, value) in crate::process_pool::OUTCOME_KINDS {
            m.add(name, value)?;
        }
        m.add("WORKER_NUMBER_VAR", crate::supervisor::NUMBER_VAR)?;
        m.add("WORKER_OUTPUT_FD_VAR", crate::supervisor::OUTPUT_FD_VAR)?;
        Ok(())
    }
}
