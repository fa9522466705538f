//! `Queue`, `SimpleQueue` and `JoinableQueue`: a ring of pickled frames in shared memory.
//!
//! ```text
//!  producer (put)                      ring (anonymous segment)              consumer (get)
//!  pickle obj ─▶ take producer lock    [hdr|payload][hdr|payload]...         take consumer lock
//!               wait for room  ◀── head ──────────────────────────── tail ──▶ wait for a frame
//!               copy frame at tail                                           copy frame out
//!               publish tail (1 store)                                       publish head (1 store)
//!               wake a parked getter                                         wake a parked putter
//!               release lock                                                 release lock, unpickle
//! ```
//!
//! A frame is an 8-byte header (`len | FIRST | LAST`, producer pid) and its payload, padded to 8
//! bytes. A message larger than a quarter of the ring travels as several frames, FIRST to LAST,
//! while its producer keeps the producer lock.
//!
//! Why a killed process never corrupts the queue: a producer publishes a frame with one store of
//! `tail` after the frame is completely written, so a frame is either whole or invisible, and its
//! reservation is simply the unpublished bytes past `tail`, which the next producer (taking the
//! robust producer lock over) overwrites. A message cut off between frames is dropped by the
//! consumer: the next FIRST frame, or the producer lock no longer held by the writer's pid, tells
//! it the rest will never come; frames of a message whose start it never saw are skipped.
//! `tail` and `head` pack the byte position with the count of whole messages, so `qsize()` stays
//! exact whatever dies.
//!
//! The modules, one concept each: [`ring`] (the shared record, frames, whole messages),
//! [`feeder`] (what an unbounded `put` leaves for a background thread), [`binding`] (the
//! Python class).

mod binding;
mod feeder;
mod ring;
#[cfg(test)]
mod test;

pub use binding::{decode_ring, PyQueue};
pub use ring::{QueueRecord, DEFAULT_CAPACITY};
