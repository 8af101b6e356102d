//! Frames: `magic: u32 LE | len: u32 LE | body: len bytes of JSON`.

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

/// "COPC" read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"COPC");
/// Largest request body the daemon accepts (firmware and memory travel as
/// file descriptors, so requests are small).
pub const MAX_BODY: usize = 64 * 1024;
/// Largest reply or event body (listings of many vcoprocs or faults).
pub const MAX_REPLY: usize = 16 << 20;
/// Most file descriptors one frame may carry.
pub const MAX_FDS: usize = 3;
/// Header size.
pub const HEADER: usize = 8;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The magic is wrong: the stream cannot be resynchronised.
    #[error("bad frame magic {0:#010x}")]
    BadMagic(u32),
    /// The announced body is larger than the limit.
    #[error("frame body of {0} bytes is over the limit")]
    TooLarge(u32),
    /// The body is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The stream ended inside a frame.
    #[error("connection closed inside a frame ({0} bytes pending)")]
    Truncated(usize),
    /// A message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
}

impl FrameError {
    /// Whether the stream is still in sync after this error (the next frame
    /// can be read): true only for a well-framed body that did not parse.
    pub fn recoverable(&self) -> bool {
        matches!(self, FrameError::Malformed(_))
    }
}

/// Encode a request as one frame (at most [`MAX_BODY`]).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    encode_limited(msg, MAX_BODY)
}

/// Encode a message as one frame of at most `limit` body bytes.
pub fn encode_limited<T: Serialize>(msg: &T, limit: usize) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(msg).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|_| body.len() <= limit)
        .ok_or(FrameError::TooLarge(
            u32::try_from(body.len()).unwrap_or(u32::MAX),
        ))?;
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decode a body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Incremental frame decoder over a byte stream.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    limit: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            buf: Vec::new(),
            limit: MAX_BODY,
        }
    }
}

impl Decoder {
    /// A decoder for requests (bodies up to [`MAX_BODY`]).
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// A decoder accepting bodies up to `limit` (clients: [`MAX_REPLY`]).
    pub fn with_limit(limit: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            limit,
        }
    }

    /// Append bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet returned.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame's body, if one is buffered. A header error
    /// is returned as soon as the header is complete, before the body
    /// arrives, so an oversized length never makes us wait or allocate.
    pub fn next_body(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let magic = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let len = u32::from_le_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        if len as usize > self.limit {
            return Err(FrameError::TooLarge(len));
        }
        let end = HEADER + len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let body = self.buf[HEADER..end].to_vec();
        self.buf.drain(..end);
        Ok(Some(body))
    }

    /// Call at end of stream: an error if a partial frame is buffered.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(FrameError::Truncated(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{ClientFrame, Request};
    use proptest::prelude::*;

    #[test]
    fn roundtrip_in_pieces() {
        let f = ClientFrame {
            id: 7,
            req: Request::Hello { version: 1 },
        };
        let bytes = encode(&f).unwrap();
        let mut d = Decoder::new();
        for b in &bytes {
            assert!(d.next_body().unwrap().is_none());
            d.push(std::slice::from_ref(b));
        }
        let body = d.next_body().unwrap().unwrap();
        let back: ClientFrame = decode(&body).unwrap();
        assert_eq!(back.id, 7);
        assert!(matches!(back.req, Request::Hello { version: 1 }));
        d.finish().unwrap();
    }

    #[test]
    fn hostile_headers() {
        let mut d = Decoder::new();
        d.push(b"GET / HTTP/1.1\r\n");
        assert!(matches!(d.next_body(), Err(FrameError::BadMagic(_))));
        let mut d = Decoder::new();
        d.push(&MAGIC.to_le_bytes());
        d.push(&u32::MAX.to_le_bytes());
        assert_eq!(d.next_body(), Err(FrameError::TooLarge(u32::MAX)));
        let mut d = Decoder::new();
        d.push(
            &encode(&ClientFrame {
                id: 1,
                req: Request::ListCoprocs,
            })
            .unwrap()[..11],
        );
        assert_eq!(d.next_body(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated(11)));
        // A well-framed body that is not a message: recoverable.
        let mut bad = MAGIC.to_le_bytes().to_vec();
        bad.extend_from_slice(&5u32.to_le_bytes());
        bad.extend_from_slice(b"{oops");
        let mut d = Decoder::new();
        d.push(&bad);
        let body = d.next_body().unwrap().unwrap();
        let e = decode::<ClientFrame>(&body).unwrap_err();
        assert!(e.recoverable());
        let unknown = br#"{"id":3,"op":"format-disk"}"#;
        assert!(decode::<ClientFrame>(unknown)
            .unwrap_err()
            .to_string()
            .contains("format-disk"));
    }

    proptest! {
        /// Any byte soup: the decoder never panics and never buffers a body
        /// larger than MAX_BODY.
        #[test]
        fn decoder_survives_garbage(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..32)) {
            let mut d = Decoder::new();
            for c in chunks {
                d.push(&c);
                match d.next_body() {
                    Ok(Some(body)) => { let _ = decode::<ClientFrame>(&body); }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        }
    }
}
