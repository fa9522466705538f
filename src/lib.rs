//! ferropool's native core, imported by Python as `ferropool._core`.
//!
//! This file only registers; each concept lives in its own module (see `docs/ARCHITECTURE.md`).

pub mod errors;
pub mod forkserver;
pub mod process_pool;
pub mod readiness;
pub mod registry;
pub mod scheduler;
pub mod signals;
pub mod stats;
pub mod supervisor;
pub mod task;
pub mod threads;
pub mod wire;
pub mod worker;

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
pub mod _core {
    #[pymodule_export]
    use crate::process_pool::PyProcessEngine;
    #[pymodule_export]
    use crate::readiness::any_readable;
    #[pymodule_export]
    use crate::registry::{after_fork_in_child, shutdown_all};
    #[pymodule_export]
    use crate::supervisor::cpu_count;
    #[pymodule_export]
    use crate::task::PyTaskHandle;
    #[pymodule_export]
    use crate::threads::PyThreadEngine;
    #[pymodule_export]
    use crate::worker::{die_with_parent, worker_main};

    use pyo3::prelude::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        // Cargo's "0.1.0-alpha.1" is PEP 440's "0.1.0a1"
        let version = env!("CARGO_PKG_VERSION")
            .replace("-alpha.", "a")
            .replace("-beta.", "b")
            .replace("-rc.", "rc");
        m.add("__version__", version)
    }
}
