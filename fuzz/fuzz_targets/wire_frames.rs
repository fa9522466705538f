//! Worker-link frames (`src/wire.rs`): any bytes, arriving in pieces of any size, decode to
//! frames or to a `FrameError`, never a panic, and never cost memory beyond what arrived. The
//! same bytes through a real socket with the engine's checks (`scheduler::decode_link`) give
//! only results for the tasks the worker holds, in order, or a reason to give the link up.
#![no_main]

use std::io::{self, Read};

use ferropool::scheduler::decode_link;
use ferropool::wire::{kind, FrameReader, ReadOutcome, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

/// Hands out `data` `step` bytes at a time, like a busy socket.
struct Pieces<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.step.min(out.len()).min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&step, data)) = input.split_first() else {
        return;
    };
    check_link(data, step % 2 == 0);
    let mut src = Pieces {
        data,
        step: usize::from(step) + 1,
    };
    let mut reader = FrameReader::default();
    let mut decoded = 0usize;
    loop {
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    decoded += HEADER_LEN + frame.body.len();
                    assert!(decoded <= data.len(), "a frame made of bytes that never arrived");
                    assert!(frame.fds.is_empty());
                }
                Ok(None) => break,
                Err(_) => return, // the link would be given up here
            }
        }
        assert!(reader.buffered() <= data.len());
        match reader.read_from(&mut src) {
            Ok(ReadOutcome::Eof) => return,
            Ok(_) => {}
            Err(e) => panic!("reading from memory failed: {e}"),
        }
    }
});

/// The engine's view: with `expect`ing tasks 0..4, every result it accepts names the next one.
fn check_link(data: &[u8], checked: bool) {
    const TASKS: [u64; 4] = [0, 1, 2, 3];
    let (frames, _) = decode_link(data, checked.then_some(&TASKS[..])).unwrap();
    if checked {
        let ids = frames
            .iter()
            .filter(|f| matches!(f.kind, kind::OK | kind::ERR))
            .map(|f| f.id);
        for (id, want) in ids.zip(TASKS) {
            assert_eq!(id, want, "a result out of order was accepted");
        }
    }
}
