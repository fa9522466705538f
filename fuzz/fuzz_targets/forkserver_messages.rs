//! The fork server's answers (`src/forkserver.rs`): a worker's pid, and its exit status. No pid
//! that would name a process group is accepted.
#![no_main]

use ferropool::forkserver::{decode_pid, decode_status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if input.len() < 12 {
        return;
    }
    if let Ok(pid) = decode_pid(input[..4].try_into().unwrap()) {
        assert!(pid > 0 && i32::try_from(pid).is_ok());
    }
    let (code, signal) = decode_status(input[4..12].try_into().unwrap());
    assert!(code.is_none_or(|c| c >= 0));
    assert!(signal.is_none_or(|s| s > 0));
});
