//! The `Queue` ring (`src/queue.rs`), which every process mapping the queue can write: any ring
//! bytes and positions decode to messages or to "corrupt", never a panic, a hang or a read
//! outside the ring.
//!
//! Input: `[cap: u8][tail: u64 LE][head: u64 LE][ring bytes...]`.
#![no_main]

use ferropool::queue::decode_ring;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if input.len() < 17 {
        return;
    }
    let cap = 4096 << (input[0] % 2);
    let tail = u64::from_le_bytes(input[1..9].try_into().unwrap());
    let head = u64::from_le_bytes(input[9..17].try_into().unwrap());
    if let Ok(messages) = decode_ring(cap, tail, head, &input[17..]) {
        let total: usize = messages.iter().map(Vec::len).sum();
        assert!(total <= cap, "more message bytes than the ring holds");
    }
});
