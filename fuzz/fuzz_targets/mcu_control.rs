//! What the mcu class takes from firmware on the host side: the control
//! block's register writes (doorbell acknowledgements, notification tag
//! and sequence, console bytes, mailbox-out words, at any index), as the
//! device's control-block hook passes them to `ControlBlock`, interleaved
//! with what the domain does (ring, mailbox-in, reads) and resets. The
//! doorbell count a domain sees pending never exceeds what it rang, never
//! wraps to look empty, notifications never go backwards, and the console
//! stays bounded.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use coproc_core::control::{ControlBlock, CONSOLE_LINES, CONSOLE_LINE_MAX, MBOX_WORDS};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Op {
    /// Firmware: DOORBELL_ACK.
    Ack(u32),
    /// Firmware: NOTIFY_TAG.
    Tag(u32),
    /// Firmware: NOTIFY.
    Notify(u32),
    /// Firmware: CONSOLE (sequence, byte).
    Console(u8, u8),
    /// Firmware: a mailbox-out word.
    Out(u32, u32),
    /// Firmware: reads (mailbox-in, doorbell words).
    Read(u32),
    /// Domain: the doorbell, `n` times.
    Ring(u8),
    /// Domain: a mailbox-in word.
    In(u32, u32),
    /// Reset of the vcoproc.
    Reset,
}

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let c = ControlBlock::default();
    // Doorbells rung since the last reset, acknowledged or not.
    let mut rung_since_reset: u64 = 0;
    let mut last_seq = 0u64;
    for _ in 0..u.arbitrary_len::<Op>()?.min(512) {
        match Op::arbitrary(u)? {
            Op::Ack(v) => c.ack_doorbells(v),
            Op::Tag(t) => c.set_notify_tag(t),
            Op::Notify(s) => {
                c.notify(s);
            }
            Op::Console(seq, b) => {
                if let Some(line) = c.console_byte(seq, b) {
                    assert!(line.chars().count() <= CONSOLE_LINE_MAX);
                }
            }
            Op::Out(i, v) => {
                c.write_out(i as usize, v);
                assert_eq!(c.read_out(i as usize % MBOX_WORDS), v);
            }
            Op::Read(i) => {
                let _ = c.read_in(i as usize);
                let _ = (c.doorbell_count(), c.doorbell_acked(), c.notify_tag());
            }
            Op::Ring(n) => {
                for _ in 0..n {
                    c.ring();
                }
                rung_since_reset += u64::from(n);
            }
            Op::In(i, v) => {
                c.write_in(i as usize, v);
                assert_eq!(c.read_in(i as usize), v);
            }
            Op::Reset => {
                c.reset();
                rung_since_reset = 0;
                assert_eq!(c.pending(), 0);
            }
        }
        assert!(u64::from(c.pending()) <= rung_since_reset);
        let n = c.last_notify();
        assert!(n.seq >= last_seq);
        last_seq = n.seq;
        let (lines, _) = c.console();
        assert!(lines.len() <= CONSOLE_LINES);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
