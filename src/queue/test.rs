//! The ring, the feeder and the binding against one another, without a second process.

use std::sync::atomic::Ordering;

use crate::shm::SharedRecord;
use crate::sync::current_pid;

use super::binding::*;
use super::ring::*;

fn ring(cap: usize) -> Ring {
    let rec: SharedRecord<QueueRecord> = SharedRecord::create(cap).unwrap();
    rec.capacity.store(cap as u32, Ordering::SeqCst);
    let (bytes, _) = rec.extra();
    Ring {
        rec,
        bytes,
        cap: cap as u32,
    }
}

#[test]
fn a_message_is_published_whole_with_one_count() {
    let r = ring(4096);
    r.write_message(None, b"hello", None).unwrap();
    let t = r.rec.tail.0.pos.load(Ordering::SeqCst);
    assert_eq!((pos(t), msgs(t)), (16, 1));
    let (word, pid) = r.read_header(0);
    assert_eq!(word, 5 | FIRST | LAST);
    assert_eq!(pid, current_pid());
    let mut out = [0u8; 5];
    r.copy_out(8, &mut out);
    assert_eq!(&out, b"hello");
}

#[test]
fn a_large_message_spans_frames_counted_once() {
    let r = ring(4096);
    let data = vec![7u8; 2500];
    r.write_message(None, &data, None).unwrap();
    let t = r.rec.tail.0.pos.load(Ordering::SeqCst);
    assert_eq!(msgs(t), 1);
    let (first, _) = r.read_header(0);
    assert_eq!(first & (FIRST | LAST), FIRST);
    assert_eq!((first & LEN_MASK) as usize, r.chunk_max());
}

#[test]
fn a_corrupt_ring_is_reported_not_trusted() {
    let frame = |word: u32, body: &[u8]| {
        let mut f = word.to_le_bytes().to_vec();
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(body);
        f.resize(HEADER + padded(body.len()), 0);
        f
    };
    let good = frame(3 | FIRST | LAST, b"abc");
    assert_eq!(decode_ring(4096, 16, 0, &good).unwrap(), vec![b"abc".to_vec()]);
    // a frame longer than what was published
    assert!(decode_ring(4096, 8, 0, &good).is_err());
    // a length beyond one chunk
    assert!(decode_ring(4096, 16, 0, &frame(LEN_MASK | FIRST | LAST, b"")).is_err());
    // tail more than a ring ahead of head
    assert!(decode_ring(4096, 1 << 20, 0, &good).is_err());
    // a message that never finishes, from a writer that is gone
    assert_eq!(
        decode_ring(4096, 16, 0, &frame(3 | FIRST, b"abc")).unwrap(),
        Vec::<Vec<u8>>::new()
    );
}

#[test]
fn frames_wrap_around_the_end_of_the_ring() {
    let r = ring(4096);
    // consume as we go, so the ring wraps several times
    for i in 0..1000u32 {
        let msg = i.to_le_bytes().repeat(10);
        r.write_message(None, &msg, None).unwrap();
        let h = r.rec.head.0.pos.load(Ordering::SeqCst);
        let (word, _) = r.read_header(pos(h));
        let len = (word & LEN_MASK) as usize;
        let mut out = vec![0u8; len];
        r.copy_out(pos(h).wrapping_add(HEADER as u32), &mut out);
        assert_eq!(out, msg);
        let next = pos(h).wrapping_add((HEADER + padded(len)) as u32);
        r.rec.head.0.pos.store(pack(next, msgs(h) + 1), Ordering::SeqCst);
    }
    assert!(r.fits_now(100));
}
