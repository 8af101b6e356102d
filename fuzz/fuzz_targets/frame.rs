//! The frame decoder a session reads requests with (and a client reads
//! replies with): hostile bytes in hostile pieces, through the `Decoder`
//! and through a real `Receiver` on a socket with descriptors attached.
//!
//! Input: byte 0 picks the piece size and how many descriptors go with the
//! first piece; the rest is the stream.

#![no_main]

use coproc_proto::fdpass::{send_frame, Receiver};
use coproc_proto::frame::{decode, Decoder, FrameError, HEADER, MAX_BODY, MAX_REPLY};
use coproc_proto::{ClientFrame, ServerFrame};
use libfuzzer_sys::fuzz_target;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// Feed `stream` to a decoder with body limit `limit` in pieces of `piece`
/// bytes; check what it returns against the frame format.
fn feed(stream: &[u8], piece: usize, limit: usize) {
    let mut d = Decoder::with_limit(limit);
    let mut consumed = 0usize;
    'outer: for chunk in stream.chunks(piece) {
        d.push(chunk);
        loop {
            let before = d.pending();
            match d.next_body() {
                Ok(Some(body)) => {
                    assert!(body.len() <= limit);
                    assert_eq!(before - d.pending(), HEADER + body.len());
                    assert_eq!(
                        &stream[consumed + HEADER..consumed + HEADER + body.len()],
                        &body[..]
                    );
                    consumed += HEADER + body.len();
                    match decode::<ClientFrame>(&body) {
                        Ok(f) => {
                            // What decodes re-encodes, and means the same.
                            let again = coproc_proto::frame::encode_limited(&f, usize::MAX)
                                .expect("a decoded frame encodes");
                            let back: ClientFrame = decode(&again[HEADER..]).expect("re-decodes");
                            assert_eq!(format!("{back:?}"), format!("{f:?}"));
                        }
                        Err(e) => assert!(e.recoverable()),
                    }
                    let _ = decode::<ServerFrame>(&body);
                }
                Ok(None) => {
                    assert_eq!(d.pending(), before);
                    break;
                }
                Err(e) => {
                    assert!(!e.recoverable());
                    assert!(matches!(
                        e,
                        FrameError::BadMagic(_) | FrameError::TooLarge(_)
                    ));
                    break 'outer;
                }
            }
        }
    }
    if let Err(e) = d.finish() {
        assert!(matches!(e, FrameError::Truncated(n) if n > 0));
    }
}

/// The same stream through a socket and a `Receiver`.
fn receive(stream: &[u8], nfds: usize) {
    let Ok((a, b)) = UnixStream::pair() else {
        return;
    };
    let fds: Vec<OwnedFd> = (0..nfds)
        .filter_map(|_| std::fs::File::open("/dev/null").ok().map(OwnedFd::from))
        .collect();
    let borrowed = coproc_proto::fdpass::borrow_all(&fds);
    if send_frame(a.as_fd(), stream, &borrowed).is_err() {
        return;
    }
    drop(a);
    let mut r = Receiver::new();
    let mut got = 0usize;
    while let Ok((body, fds)) = r.recv_blocking(b.as_fd()) {
        assert!(body.len() <= MAX_BODY);
        assert!(fds.len() <= coproc_proto::MAX_FDS);
        got += HEADER + body.len();
        assert!(got <= stream.len());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(ctl & 0x1f) + 1;
    feed(stream, piece, MAX_BODY);
    feed(stream, stream.len().max(1), MAX_REPLY);
    if stream.len() <= 64 * 1024 {
        receive(stream, usize::from(ctl >> 5) % 4);
    }
});
