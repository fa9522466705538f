//! Arenas: many small shared objects carved from one anonymous segment.
//!
//! A `Lock` or a `Value` needs a few bytes; a segment of its own would cost a descriptor in
//! every process that holds it, and a process with the common limit of 1,024 descriptors could
//! hold only about a thousand of them. So small objects take a *slot* of an arena, a 64 KiB
//! memfd divided into slots of one size (a power of two from 64 to 4,096 bytes), and descriptors
//! grow with the number of arenas, not of objects.
//!
//! Each slot starts with a 16-byte header whose first word is `generation << 32 | references`.
//! Every process that holds an object on the slot counts one reference; the slot is free when
//! there are none, and taking a free slot bumps its generation. A handle names the generation,
//! so a handle that outlived its object (the slot since reused) is refused instead of attaching
//! to a stranger. Only the process that made an arena takes slots from it; any process may
//! release the last reference, and the maker finds slots freed elsewhere by sweeping its arenas
//! before it makes a new one.
//!
//! An arena is kept (mapped, its descriptor open) by the objects on it: the maker's list and
//! the index of attached arenas hold weak references, so a process that drops every object of
//! an arena closes it, and the memory goes with the last process. A process that receives many
//! objects of one arena maps it once.
//!
//! A forked child inherits its parent's objects without counting references for them; it does
//! not release them either (each object remembers the process that counted it), and it takes
//! no slots from its parent's arenas.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::shm::{Handle, Segment};
use crate::sync::current_pid;

const ARENA_BYTES: usize = 64 * 1024;
const HEADER: usize = 16;
const MIN_SLOT: usize = 64;
const MAX_SLOT: usize = 4096;
const CLASSES: usize = 7; // 64, 128, ..., 4096
const REFS: u64 = 0xffff_ffff;

/// One arena, as mapped in this process.
#[derive(Debug)]
pub struct Arena {
    seg: Segment,
    /// The process that made it (the only one that takes slots from it).
    maker: u32,
    /// The slot size (0 in a process that attached to it).
    slot: usize,
    /// The slot offsets known to be free (the maker only).
    free: Mutex<Vec<usize>>,
    /// Slots past this offset were never handed out.
    fresh: AtomicUsize,
}

impl Arena {
    fn new(seg: Segment, maker: u32, slot: usize) -> Self {
        Arena {
            seg,
            maker,
            slot,
            free: Mutex::new(Vec::new()),
            fresh: AtomicUsize::new(0),
        }
    }

    // the mapping is page-aligned and slot starts are multiples of 16
    #[allow(clippy::cast_ptr_alignment)]
    fn state(&self, slot_start: usize) -> &AtomicU64 {
        // SAFETY: callers pass a slot start that is 16-aligned and at least HEADER bytes before
        // the end of the mapping (checked on attach; computed from `slot` on the maker's side).
        unsafe { &*self.seg.as_ptr().add(slot_start).cast::<AtomicU64>() }
    }

    /// Takes slot `start` if it is free; returns its new generation.
    fn claim(&self, start: usize) -> Option<u32> {
        let state = self.state(start);
        let mut seen = state.load(Ordering::Acquire);
        loop {
            if seen & REFS != 0 {
                return None;
            }
            let generation = ((seen >> 32) as u32).wrapping_add(1).max(1);
            let new = (u64::from(generation) << 32) | 1;
            match state.compare_exchange(seen, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(generation),
                Err(now) => seen = now,
            }
        }
    }

    /// A free slot of this arena, claimed; the maker only.
    fn take(&self) -> Option<(usize, u32)> {
        loop {
            let popped = self.free.lock().unwrap_or_else(PoisonError::into_inner).pop();
            let start = if let Some(start) = popped {
                start
            } else {
                let start = self.fresh.fetch_add(self.slot, Ordering::Relaxed);
                if start + self.slot > ARENA_BYTES {
                    self.fresh.fetch_sub(self.slot, Ordering::Relaxed);
                    return None;
                }
                start
            };
            if let Some(generation) = self.claim(start) {
                return Some((start, generation));
            }
        }
    }

    /// Collects the slots other processes freed; the maker only, under the arenas' lock.
    fn sweep(&self) {
        let end = self.fresh.load(Ordering::Relaxed).min(ARENA_BYTES);
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        free.clear();
        free.extend(
            (0..end)
                .step_by(self.slot)
                .filter(|&start| self.state(start).load(Ordering::Acquire) & REFS == 0),
        );
    }
}

/// One object's slot of an arena; releases its reference when dropped.
#[derive(Debug)]
pub struct Slot {
    arena: Arc<Arena>,
    start: usize,
    len: usize,
    generation: u32,
    /// The process that counted this reference (a forked copy must not release it).
    counted_by: u32,
}

impl Slot {
    pub fn as_ptr(&self) -> *mut u8 {
        // SAFETY: start + HEADER + len lies inside the mapping (checked when the slot was made).
        unsafe { self.arena.seg.as_ptr().add(self.start + HEADER) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn handle(&self) -> Handle {
        (
            current_pid(),
            self.arena.seg.raw_fd(),
            self.len,
            self.arena.seg.ino(),
            ((self.start as u64 + HEADER as u64) << 32) | u64::from(self.generation),
        )
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.counted_by != current_pid() {
            return;
        }
        let state = self.arena.state(self.start);
        let Ok(before) = state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| (s & REFS != 0).then(|| s - 1))
        else {
            return;
        };
        if before & REFS == 1 && self.arena.maker == current_pid() && self.arena.slot != 0 {
            self.arena
                .free
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(self.start);
        }
    }
}

#[derive(Default)]
struct Arenas {
    /// This process's arenas, by slot size class.
    made: [Vec<Weak<Arena>>; CLASSES],
    /// Every arena mapped in this process, by inode.
    by_inode: HashMap<u64, Weak<Arena>>,
}

impl Arenas {
    fn index(&mut self, arena: &Arc<Arena>) {
        self.by_inode.retain(|_, w| w.strong_count() > 0);
        self.by_inode.insert(arena.seg.ino(), Arc::downgrade(arena));
    }
}

static ARENAS: Mutex<Option<Arenas>> = Mutex::new(None);

/// A new zeroed slot for `len` bytes, or `None` when `len` is too big for a slot.
pub fn alloc(len: usize) -> io::Result<Option<Slot>> {
    let Some(slot_size) = len
        .checked_add(HEADER)
        .map(|n| n.next_power_of_two().max(MIN_SLOT))
        .filter(|&n| n <= MAX_SLOT)
    else {
        return Ok(None);
    };
    let class = (slot_size / MIN_SLOT).trailing_zeros() as usize;
    let me = current_pid();
    let mut guard = ARENAS.lock().unwrap_or_else(PoisonError::into_inner);
    let arenas = guard.get_or_insert_with(Arenas::default);
    let mine = |arenas: &Arenas| -> Vec<Arc<Arena>> {
        arenas.made[class]
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|a| a.maker == me)
            .collect()
    };
    let live = mine(arenas);
    let found = live
        .iter()
        .find_map(|a| a.take().map(|t| (Arc::clone(a), t)))
        .or_else(|| {
            for a in &live {
                a.sweep();
            }
            live.iter().find_map(|a| a.take().map(|t| (Arc::clone(a), t)))
        });
    let (arena, (start, generation)) = if let Some(found) = found {
        found
    } else {
        let arena = Arc::new(Arena::new(Segment::create(ARENA_BYTES)?, me, slot_size));
        let taken = arena
            .take()
            .ok_or_else(|| io::Error::other("a new arena has no free slot"))?;
        arenas.made[class].retain(|w| w.strong_count() > 0);
        arenas.made[class].push(Arc::downgrade(&arena));
        arenas.index(&arena);
        (arena, taken)
    };
    drop(guard);
    // SAFETY: the slot is ours alone (claimed with no references); its payload lies inside the
    // arena. A reused slot holds its last object's bytes, and every object starts from zero.
    unsafe { std::ptr::write_bytes(arena.seg.as_ptr().add(start + HEADER), 0, slot_size - HEADER) };
    Ok(Some(Slot {
        arena,
        start,
        len,
        generation,
        counted_by: me,
    }))
}

/// The slot another process described with [`Slot::handle`], with one more reference.
pub fn attach(handle: Handle) -> io::Result<Slot> {
    let (pid, fd_num, len, ino, place) = handle;
    let payload = usize::try_from(place >> 32).unwrap_or(usize::MAX);
    let generation = place as u32;
    let start = payload.wrapping_sub(HEADER);
    if payload < HEADER || payload % HEADER != 0 || generation == 0 {
        return Err(bad_handle(pid));
    }
    let arena = {
        let mut guard = ARENAS.lock().unwrap_or_else(PoisonError::into_inner);
        let arenas = guard.get_or_insert_with(Arenas::default);
        if let Some(arena) = arenas.by_inode.get(&ino).and_then(Weak::upgrade) {
            arena
        } else {
            let seg = Segment::attach_whole(pid, fd_num, ino, ARENA_BYTES)?;
            let arena = Arc::new(Arena::new(seg, 0, 0));
            arenas.index(&arena);
            arena
        }
    };
    if payload.checked_add(len).is_none_or(|end| end > arena.seg.len()) {
        return Err(bad_handle(pid));
    }
    // one more reference, only while the slot still holds the object the handle names
    let state = arena.state(start);
    state
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
            ((s >> 32) as u32 == generation && s & REFS != 0 && s & REFS != REFS).then(|| s + 1)
        })
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "process {pid} no longer holds the shared object it sent; the process that sent \
                     it must still hold it when the receiver unpickles it"
                ),
            )
        })?;
    Ok(Slot {
        arena,
        start,
        len,
        generation,
        counted_by: current_pid(),
    })
}

fn bad_handle(pid: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the handle from process {pid} does not name a shared object"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_objects_share_an_arena_and_a_freed_slot_is_reused() {
        // a size no other test uses: tests run in parallel on one set of arenas
        let a = alloc(1000).unwrap().unwrap();
        let b = alloc(1000).unwrap().unwrap();
        assert_eq!(a.handle().3, b.handle().3);
        let a_handle = a.handle();
        drop(a);
        let c = alloc(1000).unwrap().unwrap();
        assert_eq!(c.handle().4 >> 32, a_handle.4 >> 32);
        // the old handle names the old generation: refused
        assert!(attach(a_handle).is_err());
        let d = attach(c.handle()).unwrap();
        // SAFETY: both point at the same live bytes
        unsafe { *c.as_ptr() = 7 };
        assert_eq!(unsafe { *d.as_ptr() }, 7);
        drop((b, c, d));
    }

    #[test]
    fn a_reused_slot_starts_zeroed_and_big_objects_get_no_slot() {
        let a = alloc(100).unwrap().unwrap();
        // SAFETY: the slot's 100 bytes are ours
        unsafe { std::ptr::write_bytes(a.as_ptr(), 0xff, 100) };
        drop(a);
        let b = alloc(100).unwrap().unwrap();
        // SAFETY: as above
        assert!(unsafe { std::slice::from_raw_parts(b.as_ptr(), 100) }
            .iter()
            .all(|&x| x == 0));
        assert!(alloc(MAX_SLOT).unwrap().is_none());
    }

    #[test]
    fn handles_pointing_outside_a_slot_are_refused() {
        let a = alloc(16).unwrap().unwrap();
        let (pid, fd, len, ino, place) = a.handle();
        for bad in [
            (pid, fd, len, ino, (8 << 32) | (place & REFS)),
            (pid, fd, len, ino, ((ARENA_BYTES as u64) << 32) | (place & REFS)),
            (pid, fd, ARENA_BYTES, ino, place),
            (pid, fd, len, ino, place & !REFS),
        ] {
            assert!(attach(bad).is_err(), "{bad:?}");
        }
    }
}
