//! Frames with file descriptors over Unix stream sockets (SCM_RIGHTS).
//!
//! A frame is sent with one `sendmsg`, its descriptors attached to its first
//! byte. The receiver collects descriptors from every `recvmsg` and hands
//! them out with the frame they arrived with; at most [`MAX_FDS`] per read
//! are accepted, more are closed and reported.

use crate::frame::{Decoder, FrameError, MAX_FDS};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use thiserror::Error;

/// Transport errors.
#[derive(Debug, Error)]
pub enum TransportError {
    /// The peer closed the connection.
    #[error("connection closed")]
    Closed,
    /// A socket call failed.
    #[error("socket: {0}")]
    Io(#[from] Errno),
    /// The framing broke.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Too many descriptors in one frame.
    #[error("more than {MAX_FDS} file descriptors in one frame")]
    TooManyFds,
    /// Would block (non-blocking sockets only).
    #[error("would block")]
    WouldBlock,
}

/// Send one encoded frame with `fds` attached. Loops until every byte is
/// written; the descriptors go with the first chunk.
pub fn send_frame(
    sock: BorrowedFd<'_>,
    frame: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), TransportError> {
    if fds.len() > MAX_FDS {
        return Err(TransportError::TooManyFds);
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(TransportError::TooManyFds);
    }
    let mut sent = 0;
    let mut first = true;
    while sent < frame.len() {
        let iov = [IoSlice::new(&frame[sent..])];
        let n = if first {
            sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL)
        } else {
            let mut none = SendAncillaryBuffer::new(&mut []);
            sendmsg(sock, &iov, &mut none, SendFlags::NOSIGNAL)
        };
        match n {
            Ok(n) => {
                sent += n;
                first = false;
            }
            Err(Errno::INTR) => {} // interrupted: again
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A frame body and the descriptors that came with it.
pub type Received = (Vec<u8>, Vec<OwnedFd>);

/// Receiving side: a decoder plus the descriptors that came with the bytes.
#[derive(Debug, Default)]
pub struct Receiver {
    decoder: Decoder,
    fds: Vec<OwnedFd>,
    /// Descriptors beyond the limit that were closed.
    pub dropped_fds: usize,
}

impl Receiver {
    /// An empty receiver for requests.
    pub fn new() -> Receiver {
        Receiver::default()
    }

    /// An empty receiver accepting bodies up to `limit` (for replies).
    pub fn with_limit(limit: usize) -> Receiver {
        Receiver {
            decoder: Decoder::with_limit(limit),
            fds: Vec::new(),
            dropped_fds: 0,
        }
    }

    /// Read once from the socket into the buffer. Returns the bytes read
    /// (0: end of stream).
    pub fn fill(&mut self, sock: BorrowedFd<'_>) -> Result<usize, TransportError> {
        let mut buf = [0u8; 16 * 1024];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = loop {
            match recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
                Ok(m) => break m,
                Err(Errno::INTR) => {} // interrupted: again
                Err(Errno::AGAIN) => return Err(TransportError::WouldBlock),
                Err(e) => return Err(e.into()),
            }
        };
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = m {
                for fd in fds {
                    if self.fds.len() < MAX_FDS {
                        self.fds.push(fd);
                    } else {
                        self.dropped_fds += 1;
                    }
                }
            }
        }
        if msg.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
            self.dropped_fds += 1;
        }
        self.decoder.push(&buf[..msg.bytes]);
        Ok(msg.bytes)
    }

    /// The next complete frame body and the descriptors received so far
    /// (those belong to this frame: a client sends one frame at a time when
    /// it attaches descriptors).
    pub fn next_frame(&mut self) -> Result<Option<Received>, FrameError> {
        Ok(self
            .decoder
            .next_body()?
            .map(|b| (b, std::mem::take(&mut self.fds))))
    }

    /// At end of stream: an error if a partial frame was left.
    pub fn finish(&self) -> Result<(), FrameError> {
        self.decoder.finish()
    }

    /// Block until a whole frame is available (blocking sockets).
    pub fn recv_blocking(
        &mut self,
        sock: BorrowedFd<'_>,
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), TransportError> {
        loop {
            if let Some(f) = self.next_frame()? {
                return Ok(f);
            }
            if self.fill(sock)? == 0 {
                self.finish()?;
                return Err(TransportError::Closed);
            }
        }
    }
}

/// Borrow a slice of owned descriptors.
pub fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(|f| f.as_fd()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode, encode};
    use crate::msg::{ClientFrame, Request};
    use std::io::{Read, Seek, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn frame_with_fds_roundtrip() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut file = std::fs::File::from(
            rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap(),
        );
        file.write_all(b"firmware bytes").unwrap();
        let f = encode(&ClientFrame {
            id: 9,
            req: Request::LoadFirmware {
                vcoproc: 1,
                label: "x".into(),
                len: 14,
            },
        })
        .unwrap();
        send_frame(a.as_fd(), &f, &[file.as_fd()]).unwrap();
        send_frame(
            a.as_fd(),
            &encode(&ClientFrame {
                id: 10,
                req: Request::ListCoprocs,
            })
            .unwrap(),
            &[],
        )
        .unwrap();
        let mut r = Receiver::new();
        let (body, fds) = r.recv_blocking(b.as_fd()).unwrap();
        assert_eq!(decode::<ClientFrame>(&body).unwrap().id, 9);
        assert_eq!(fds.len(), 1);
        let mut got = std::fs::File::from(fds.into_iter().next().unwrap());
        got.rewind().unwrap();
        let mut s = String::new();
        got.read_to_string(&mut s).unwrap();
        assert_eq!(s, "firmware bytes");
        let (body, fds) = r.recv_blocking(b.as_fd()).unwrap();
        assert_eq!(decode::<ClientFrame>(&body).unwrap().id, 10);
        assert!(fds.is_empty());
        drop(a);
        assert!(matches!(
            r.recv_blocking(b.as_fd()),
            Err(TransportError::Closed)
        ));
    }

    #[test]
    fn too_many_fds_are_refused_on_send() {
        let (a, _b) = UnixStream::pair().unwrap();
        let f = encode(&ClientFrame {
            id: 1,
            req: Request::ListCoprocs,
        })
        .unwrap();
        let fds = [a.as_fd(), a.as_fd(), a.as_fd(), a.as_fd()];
        assert!(matches!(
            send_frame(a.as_fd(), &f, &fds),
            Err(TransportError::TooManyFds)
        ));
    }
}
