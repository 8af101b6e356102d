//! The control block a vcoproc shares with its domain: mailboxes in each
//! direction, the doorbell, notifications from firmware, and the console.
//!
//! It is device-independent state. A device class exposes it to firmware in
//! its own way (the mcu class as emulated registers); the domain reaches it
//! through the vcoproc handle. Mailbox words are plain atomics: the firmware
//! sees whatever the domain last wrote, word by word, like device registers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Words in each mailbox direction.
pub const MBOX_WORDS: usize = 16;
/// Console lines kept per vcoproc; older ones are dropped (and counted).
pub const CONSOLE_LINES: usize = 64;
/// Longest console line; longer output is split.
pub const CONSOLE_LINE_MAX: usize = 256;

/// A notification the firmware raised: a sequence number and its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notify {
    /// Increments by one per notification, starting at 1.
    pub seq: u64,
    /// The value the firmware wrote.
    pub tag: u32,
}

#[derive(Debug, Default)]
struct Console {
    lines: VecDeque<String>,
    partial: Vec<u8>,
    dropped: u64,
}

/// Shared state between a vcoproc's domain and its device context.
#[derive(Debug)]
pub struct ControlBlock {
    mbox_in: [AtomicU32; MBOX_WORDS],
    mbox_out: [AtomicU32; MBOX_WORDS],
    doorbells: AtomicU32,
    rung: AtomicU64,
    notify: Mutex<Notify>,
    notified: Condvar,
    console: Mutex<Console>,
}

impl Default for ControlBlock {
    fn default() -> Self {
        ControlBlock {
            mbox_in: Default::default(),
            mbox_out: Default::default(),
            doorbells: AtomicU32::new(0),
            rung: AtomicU64::new(0),
            notify: Mutex::new(Notify { seq: 0, tag: 0 }),
            notified: Condvar::new(),
            console: Mutex::new(Console::default()),
        }
    }
}

impl ControlBlock {
    /// Domain side: write a mailbox-in word (index taken modulo the size).
    pub fn write_in(&self, i: usize, v: u32) {
        self.mbox_in[i % MBOX_WORDS].store(v, Ordering::Release);
    }

    /// Device side: read a mailbox-in word.
    pub fn read_in(&self, i: usize) -> u32 {
        self.mbox_in[i % MBOX_WORDS].load(Ordering::Acquire)
    }

    /// Device side: write a mailbox-out word.
    pub fn write_out(&self, i: usize, v: u32) {
        self.mbox_out[i % MBOX_WORDS].store(v, Ordering::Release);
    }

    /// Domain side: read a mailbox-out word.
    pub fn read_out(&self, i: usize) -> u32 {
        self.mbox_out[i % MBOX_WORDS].load(Ordering::Acquire)
    }

    /// Domain side: count one doorbell. The caller then wakes the vcoproc.
    pub fn ring(&self) {
        // Saturate rather than wrap: a domain ringing 2^32 times gains nothing.
        let _ = self.doorbells.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            Some(n.saturating_add(1))
        });
        self.rung.fetch_add(1, Ordering::Relaxed);
    }

    /// Doorbells pending (not yet taken by the firmware).
    pub fn pending(&self) -> u32 {
        self.doorbells.load(Ordering::Acquire)
    }

    /// Device side: take all pending doorbells (the read-to-clear register).
    pub fn take_doorbells(&self) -> u32 {
        self.doorbells.swap(0, Ordering::AcqRel)
    }

    /// Total doorbells ever rung.
    pub fn rung(&self) -> u64 {
        self.rung.load(Ordering::Relaxed)
    }

    /// Device side: raise a notification to the domain.
    pub fn notify(&self, tag: u32) {
        let mut n = self.notify.lock().unwrap_or_else(|e| e.into_inner());
        n.seq += 1;
        n.tag = tag;
        self.notified.notify_all();
    }

    /// The latest notification.
    pub fn last_notify(&self) -> Notify {
        *self.notify.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Domain side: wait until a notification newer than `after` arrives.
    pub fn wait_notify(&self, after: u64, timeout: Duration) -> Option<Notify> {
        let deadline = Instant::now() + timeout;
        let mut n = self.notify.lock().unwrap_or_else(|e| e.into_inner());
        while n.seq <= after {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            n = self.notified.wait_timeout(n, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        Some(*n)
    }

    /// Wake every notification waiter (used when the vcoproc changes state,
    /// so waiters can re-check it).
    pub fn kick(&self) {
        let _g = self.notify.lock().unwrap_or_else(|e| e.into_inner());
        self.notified.notify_all();
    }

    /// Device side: one console byte from the firmware. Returns a completed
    /// line, if this byte ended one.
    pub fn console_byte(&self, b: u8) -> Option<String> {
        let mut c = self.console.lock().unwrap_or_else(|e| e.into_inner());
        if b != b'\n' {
            c.partial.push(b);
            if c.partial.len() < CONSOLE_LINE_MAX {
                return None;
            }
        }
        let line = String::from_utf8_lossy(&std::mem::take(&mut c.partial)).into_owned();
        if c.lines.len() == CONSOLE_LINES {
            c.lines.pop_front();
            c.dropped += 1;
        }
        c.lines.push_back(line.clone());
        Some(line)
    }

    /// Console lines kept so far (oldest first) and how many were dropped.
    pub fn console(&self) -> (Vec<String>, u64) {
        let c = self.console.lock().unwrap_or_else(|e| e.into_inner());
        (c.lines.iter().cloned().collect(), c.dropped)
    }

    /// Clear mailboxes and doorbells (on reset). Notification sequence and
    /// console history are kept so waiters never see them go backwards.
    pub fn reset(&self) {
        for w in self.mbox_in.iter().chain(self.mbox_out.iter()) {
            w.store(0, Ordering::Release);
        }
        self.doorbells.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doorbells_are_taken_once() {
        let cb = ControlBlock::default();
        cb.ring();
        cb.ring();
        assert_eq!(cb.pending(), 2);
        assert_eq!(cb.take_doorbells(), 2);
        assert_eq!(cb.take_doorbells(), 0);
        assert_eq!(cb.rung(), 2);
    }

    #[test]
    fn console_is_bounded() {
        let cb = ControlBlock::default();
        for i in 0..(CONSOLE_LINES + 5) {
            for b in format!("line {i}\n").bytes() {
                cb.console_byte(b);
            }
        }
        let (lines, dropped) = cb.console();
        assert_eq!(lines.len(), CONSOLE_LINES);
        assert_eq!(dropped, 5);
        assert_eq!(lines[0], "line 5");
        for _ in 0..1000 {
            cb.console_byte(b'x');
        }
        assert!(cb.console().0.iter().all(|l| l.len() <= CONSOLE_LINE_MAX));
    }

    #[test]
    fn notify_wakes_waiter() {
        let cb = std::sync::Arc::new(ControlBlock::default());
        let c2 = cb.clone();
        let t = std::thread::spawn(move || c2.wait_notify(0, Duration::from_secs(10)));
        cb.notify(7);
        let n = t.join().unwrap().unwrap();
        assert_eq!((n.seq, n.tag), (1, 7));
        assert!(cb.wait_notify(1, Duration::from_millis(1)).is_none());
    }
}
