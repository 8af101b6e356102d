//! Request messages: a frame body as the daemon decodes it (`ClientFrame`
//! and every `Request` variant), and the replies and events a client
//! decodes (`ServerFrame`). What decodes must re-encode to a body that
//! decodes to the same message.

#![no_main]

use coproc_proto::frame::{decode, encode_limited, HEADER};
use coproc_proto::{ClientFrame, ServerFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(f) = decode::<ClientFrame>(body) {
        let again = encode_limited(&f, usize::MAX).expect("a decoded request encodes");
        let back: ClientFrame = decode(&again[HEADER..]).expect("and decodes again");
        assert_eq!(format!("{back:?}"), format!("{f:?}"));
    }
    if let Ok(f) = decode::<ServerFrame>(body) {
        let again = encode_limited(&f, usize::MAX).expect("a decoded reply encodes");
        let back: ServerFrame = decode(&again[HEADER..]).expect("and decodes again");
        assert_eq!(format!("{back:?}"), format!("{f:?}"));
    }
});
