//! Speaking the protocol by hand: raw frames, descriptors and replies.

use coproc_client::ErrorCode;
use coproc_proto::frame::{encode, MAGIC};
use coproc_proto::{ClientFrame, Request, ServerFrame};
use rustix::fd::AsFd;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Send raw bytes (and fds) and read the daemon's answer frames.
pub fn raw(socket: &Path) -> UnixStream {
    let s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

pub fn read_reply(s: &mut UnixStream) -> Option<ServerFrame> {
    let mut hdr = [0u8; 8];
    s.read_exact(&mut hdr).ok()?;
    assert_eq!(u32::from_le_bytes(hdr[..4].try_into().unwrap()), MAGIC);
    let len = u32::from_le_bytes(hdr[4..].try_into().unwrap()) as usize;
    let mut body = vec![0; len];
    s.read_exact(&mut body).ok()?;
    Some(serde_json::from_slice(&body).unwrap())
}

pub fn error_code(f: Option<ServerFrame>) -> ErrorCode {
    match f {
        Some(ServerFrame::Reply { result: Err(e), .. }) => e.code,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

pub fn closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0))
}

pub fn frame(id: u64, req: Request) -> Vec<u8> {
    encode(&ClientFrame { id, req }).unwrap()
}

pub fn hello(s: &mut UnixStream) {
    s.write_all(&frame(
        1,
        Request::Hello {
            version: coproc_proto::VERSION,
        },
    ))
    .unwrap();
    assert!(matches!(
        read_reply(s),
        Some(ServerFrame::Reply { result: Ok(_), .. })
    ));
}

pub fn send_with_fds(s: &UnixStream, id: u64, req: Request, fds: &[rustix::fd::BorrowedFd<'_>]) {
    coproc_proto::fdpass::send_frame(s.as_fd(), &frame(id, req), fds).unwrap();
}
