//! `Connection` messages (`src/connection.rs`) from a peer that is not ferropool: any packets
//! give whole messages no longer than the peer sent (and than `maxlength`), or an error.
//!
//! Input: one byte choosing `maxlength` (0: none, else that many times 64 bytes), then packets,
//! each `[len: u16 LE][repeat: u8][len bytes]`, sent `repeat + 1` times over (to reach packets
//! longer than any ferropool sends).
#![no_main]

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;

use ferropool::connection::{decode_first_packet, seqpacket_pair, Receiver, RecvError};
use libfuzzer_sys::fuzz_target;

fn packets(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while data.len() >= 3 {
        let len = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 3);
        let repeat = usize::from(data[2]) + 1;
        out.push(data[3..3 + len].repeat(repeat));
        data = &data[3 + len..];
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let Some((&max, rest)) = input.split_first() else {
        return;
    };
    let maxlength = (max != 0).then(|| usize::from(max) * 64);
    let packets = packets(rest);
    for p in &packets {
        let _ = decode_first_packet(p, p.len());
    }
    let (ours, theirs) = seqpacket_pair().unwrap();
    // a datagram handle only to send whole packets on the sequenced-packet socket
    let sender = UnixDatagram::from(theirs);
    sender.set_nonblocking(true).unwrap();
    let mut sent = 0usize;
    for p in &packets {
        if p.is_empty() {
            continue; // an empty packet reads as end-of-file
        }
        match sender.send(p) {
            Ok(n) => sent += n,
            Err(_) => break, // full, or larger than the socket takes
        }
    }
    drop(sender);
    let mut rx = Receiver::default();
    let mut never_wait = || -> io::Result<()> { Err(io::ErrorKind::WouldBlock.into()) };
    let mut received = 0usize;
    loop {
        match rx.recv(ours.as_raw_fd(), maxlength, &mut never_wait) {
            Ok(body) => {
                if let Some(max) = maxlength {
                    assert!(body.len() <= max, "{} bytes past maxlength {max}", body.len());
                }
                received += body.len();
                assert!(received <= sent, "more bytes received than sent");
            }
            Err(RecvError::TooLong) => {
                // left unread, as promised: reading without a limit takes it
                match rx.recv(ours.as_raw_fd(), None, &mut never_wait) {
                    Ok(body) => received += body.len(),
                    Err(_) => return,
                }
            }
            Err(RecvError::Eof | RecvError::Io(_)) => return,
        }
    }
});
