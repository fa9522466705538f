//! The feeder: messages `put` on an unbounded queue that did not fit into the ring yet, moved
//! there by a background thread, as the stdlib's feeder thread does.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use super::ring::{Ring, FEEDER_SLICE};

/// Messages this process put that did not fit into the ring yet, in order, and whether a
/// feeder thread is moving them (the stdlib's feeder-thread buffer: `put` on an unbounded queue
/// never waits for a reader).
#[derive(Default)]
pub(super) struct Backlog {
    pub(super) items: Mutex<VecDeque<Arc<[u8]>>>,
    /// Signalled when the backlog empties.
    pub(super) drained: Condvar,
}

pub(super) fn feed(ring: &Ring, backlog: &Backlog) {
    let tail = &ring.rec.tail.0;
    loop {
        let next = backlog
            .items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .front()
            .cloned();
        let Some(data) = next else { break };
        while !tail.lock.lock_within(FEEDER_SLICE).0 {}
        // no Python here: the wait cannot be interrupted, and cannot fail
        let _ = ring.write_message(None, &data, None);
        tail.lock.unlock();
        let mut items = backlog.items.lock().unwrap_or_else(PoisonError::into_inner);
        items.pop_front();
        if items.is_empty() {
            backlog.drained.notify_all();
            break;
        }
    }
}
