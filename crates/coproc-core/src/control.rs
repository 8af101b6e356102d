//! The control block a vcoproc shares with its domain: mailboxes in each
//! direction, the doorbell, notifications from firmware, and the console.
//!
//! It is device-independent state. A device class exposes it to firmware in
//! its own way (the mcu class as emulated registers); the domain reaches it
//! through the vcoproc handle. Mailbox words are plain atomics: the firmware
//! sees whatever the domain last wrote, word by word, like device registers.
//!
//! Every device-side operation is idempotent, because a device may restart
//! an instruction after preempting it: doorbells are a counter the firmware
//! acknowledges up to a value, notifications and console bytes carry a
//! firmware sequence number and a repeated one is ignored.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Words in each mailbox direction (`coproc_abi::control::MBOX_WORDS`).
pub const MBOX_WORDS: usize = coproc_abi::control::MBOX_WORDS as usize;
/// Console lines kept per vcoproc; older ones are dropped (and counted).
pub const CONSOLE_LINES: usize = 64;
/// Longest console line; longer output is split.
pub const CONSOLE_LINE_MAX: usize = 256;

/// A notification the firmware raised: a sequence number and its tag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
    last_seq: Option<u8>,
}

#[derive(Debug, Default)]
struct NotifyState {
    last: Notify,
    /// Bumped by [`ControlBlock::kick`].
    kicks: u64,
    /// The firmware's sequence number of the last notification taken.
    fw_seq: Option<u32>,
    /// Threads asleep on `notified` (a wake-up with none costs a system
    /// call for nothing, on the runner's path).
    waiters: u32,
}

/// What a [`ControlBlock`] listener is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlEvent {
    /// The firmware raised a notification.
    Notify(Notify),
    /// The vcoproc's state changed in a way waiters should re-check.
    Kick,
    /// The vcoproc stalled on a missing page (demand faults): its domain
    /// should map a range covering `addr`.
    PageFault {
        /// The address the device reported.
        addr: u64,
        /// The access kind.
        access: crate::fault::Access,
    },
}

/// A callback for control block events. It runs on the thread that caused
/// the event (often the runner, sometimes holding the scheduling lock): it
/// must only hand the event on (e.g. into a channel), never call back into
/// the pcoproc.
pub type Listener = std::sync::Arc<dyn Fn(ControlEvent) + Send + Sync>;

/// Shared state between a vcoproc's domain and its device context.
pub struct ControlBlock {
    mbox_in: [AtomicU32; MBOX_WORDS],
    mbox_out: [AtomicU32; MBOX_WORDS],
    rung: AtomicU32,
    acked: AtomicU32,
    rung_total: AtomicU64,
    notify_tag: AtomicU32,
    notify: Mutex<NotifyState>,
    notified: Condvar,
    console: Mutex<Console>,
    listener: Mutex<Option<Listener>>,
    /// The vcoproc's state as last published by the framework
    /// ([`crate::state::VcoprocState::code`]), readable without any lock.
    state: AtomicU8,
}

impl std::fmt::Debug for ControlBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlBlock")
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

impl Default for ControlBlock {
    fn default() -> Self {
        ControlBlock {
            mbox_in: Default::default(),
            mbox_out: Default::default(),
            rung: AtomicU32::new(0),
            acked: AtomicU32::new(0),
            rung_total: AtomicU64::new(0),
            notify_tag: AtomicU32::new(0),
            notify: Mutex::new(NotifyState::default()),
            notified: Condvar::new(),
            console: Mutex::new(Console::default()),
            listener: Mutex::new(None),
            state: AtomicU8::new(crate::state::VcoprocState::Created.code()),
        }
    }
}

impl ControlBlock {
    /// The framework publishes the vcoproc's state (every transition).
    pub fn publish_state(&self, s: crate::state::VcoprocState) {
        self.state.store(s.code(), Ordering::Release);
    }

    /// The vcoproc's state as last published: what a domain thread checks
    /// without taking the pcoproc's scheduling lock.
    pub fn state(&self) -> crate::state::VcoprocState {
        crate::state::VcoprocState::from_code(self.state.load(Ordering::Acquire))
            .unwrap_or(crate::state::VcoprocState::Destroyed)
    }

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
        // Never let the pending count wrap to zero: a domain ringing 2^32
        // times without the firmware acknowledging gains nothing.
        let acked = self.acked.load(Ordering::Acquire);
        let _ = self
            .rung
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                (r.wrapping_sub(acked) < u32::MAX).then(|| r.wrapping_add(1))
            });
        self.rung_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Doorbells rung and not yet acknowledged by the firmware.
    pub fn pending(&self) -> u32 {
        let acked = self.acked.load(Ordering::Acquire);
        self.rung.load(Ordering::Acquire).wrapping_sub(acked)
    }

    /// Device side: the doorbell counter (wrapping).
    pub fn doorbell_count(&self) -> u32 {
        self.rung.load(Ordering::Acquire)
    }

    /// Device side: the count the firmware acknowledged up to.
    pub fn doorbell_acked(&self) -> u32 {
        self.acked.load(Ordering::Acquire)
    }

    /// Device side: the firmware has handled doorbells up to `count`. A value
    /// ahead of the counter acknowledges everything; repeating it is harmless.
    pub fn ack_doorbells(&self, count: u32) {
        let acked = self.acked.load(Ordering::Acquire);
        let rung = self.rung.load(Ordering::Acquire);
        let v = if count.wrapping_sub(acked) > rung.wrapping_sub(acked) {
            rung
        } else {
            count
        };
        self.acked.store(v, Ordering::Release);
    }

    /// Total doorbells ever rung.
    pub fn rung(&self) -> u64 {
        self.rung_total.load(Ordering::Relaxed)
    }

    /// Device side: set the tag of the next notification.
    pub fn set_notify_tag(&self, tag: u32) {
        self.notify_tag.store(tag, Ordering::Release);
    }

    /// Device side: the tag of the next notification.
    pub fn notify_tag(&self) -> u32 {
        self.notify_tag.load(Ordering::Acquire)
    }

    /// Device side: the firmware wrote notification sequence `fw_seq`. A
    /// value equal to the previous one is a repeat and is ignored.
    pub fn notify(&self, fw_seq: u32) {
        let mut n = self
            .notify
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if n.fw_seq == Some(fw_seq) {
            return;
        }
        n.fw_seq = Some(fw_seq);
        n.last.seq += 1;
        n.last.tag = self.notify_tag.load(Ordering::Acquire);
        let last = n.last;
        self.wake_waiters(n, ControlEvent::Notify(last));
    }

    /// Set (or clear) the listener told of notifications and kicks.
    pub fn set_listener(&self, listener: Option<Listener>) {
        *self
            .listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = listener;
    }

    fn tell(&self, ev: ControlEvent) {
        let l = self
            .listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(l) = l {
            l(ev);
        }
    }

    /// Tell the listener that the vcoproc stalled on a missing page (the
    /// runner calls it; no waiter state changes).
    pub fn page_fault(&self, addr: u64, access: crate::fault::Access) {
        self.tell(ControlEvent::PageFault { addr, access });
    }

    /// The latest notification.
    pub fn last_notify(&self) -> Notify {
        self.notify
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .last
    }

    /// Domain side: wait until a notification newer than `after` arrives.
    pub fn wait_notify(&self, after: u64, timeout: Duration) -> Option<Notify> {
        self.wait_notify_or_kick(after, self.kicks(), timeout)
    }

    /// How many times [`ControlBlock::kick`] was called.
    pub fn kicks(&self) -> u64 {
        self.notify
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .kicks
    }

    /// Wait until a notification newer than `after` arrives, or until the
    /// kick count moves past `kicks`, or `timeout`. Returns the notification
    /// if there is a newer one.
    pub fn wait_notify_or_kick(&self, after: u64, kicks: u64, timeout: Duration) -> Option<Notify> {
        let deadline = Instant::now() + timeout;
        let mut n = self
            .notify
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while n.last.seq <= after && n.kicks == kicks {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            n.waiters += 1;
            n = self
                .notified
                .wait_timeout(n, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
            n.waiters -= 1;
        }
        (n.last.seq > after).then_some(n.last)
    }

    /// Release the notification state just changed, tell the listener of
    /// `ev`, then wake the waiters, if any. They are woken after the lock is
    /// released, so that a waiter scheduled at once does not go back to
    /// sleep on the lock the waker still holds; none is missed, since each
    /// counted itself under that lock before it slept. The listener hears
    /// first: what it hands on (a domain's wake-up elsewhere) is never later
    /// than what a waiter here sees.
    fn wake_waiters(&self, n: std::sync::MutexGuard<'_, NotifyState>, ev: ControlEvent) {
        let any = n.waiters > 0;
        drop(n);
        self.tell(ev);
        if any {
            self.notified.notify_all();
        }
    }

    /// Wake every notification waiter so it re-checks the vcoproc's state
    /// (the runner calls it when a vcoproc stops running for good or parks).
    pub fn kick(&self) {
        let mut n = self
            .notify
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        n.kicks += 1;
        self.wake_waiters(n, ControlEvent::Kick);
    }

    /// Device side: one console byte with the firmware's 8-bit sequence
    /// number (a repeated sequence number is ignored). Returns a completed
    /// line, if this byte ended one.
    pub fn console_byte(&self, seq: u8, b: u8) -> Option<String> {
        let mut c = self
            .console
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if c.last_seq == Some(seq) {
            return None;
        }
        c.last_seq = Some(seq);
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
        let c = self
            .console
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (c.lines.iter().cloned().collect(), c.dropped)
    }

    /// Clear mailboxes and doorbells (on reset): the firmware starts over
    /// with its own counters. The domain's notification sequence and console
    /// history are kept so they never go backwards.
    pub fn reset(&self) {
        for w in self.mbox_in.iter().chain(self.mbox_out.iter()) {
            w.store(0, Ordering::Release);
        }
        self.rung.store(0, Ordering::Release);
        self.acked.store(0, Ordering::Release);
        self.notify_tag.store(0, Ordering::Release);
        self.notify
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fw_seq = None;
        let mut c = self
            .console
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.last_seq = None;
        c.partial.clear();
    }
}

#[cfg(test)]
// Casts of values the test itself chose.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]
mod tests {
    use super::*;

    #[test]
    fn doorbells_are_acknowledged_idempotently() {
        let cb = ControlBlock::default();
        cb.ring();
        cb.ring();
        assert_eq!(cb.pending(), 2);
        let seen = cb.doorbell_count();
        cb.ack_doorbells(seen);
        cb.ack_doorbells(seen);
        assert_eq!(cb.pending(), 0);
        cb.ring();
        assert_eq!(cb.pending(), 1);
        // Acknowledging ahead of the counter takes everything, no more.
        cb.ack_doorbells(seen.wrapping_add(100));
        assert_eq!(cb.pending(), 0);
        cb.ring();
        assert_eq!(cb.pending(), 1);
        assert_eq!(cb.rung(), 4);
    }

    #[test]
    fn repeated_notify_and_console_are_ignored() {
        let cb = ControlBlock::default();
        cb.set_notify_tag(5);
        cb.notify(1);
        cb.notify(1);
        assert_eq!(cb.last_notify(), Notify { seq: 1, tag: 5 });
        cb.notify(2);
        assert_eq!(cb.last_notify().seq, 2);
        for (i, b) in b"hii\n".iter().enumerate() {
            cb.console_byte(i as u8, *b);
            cb.console_byte(i as u8, *b);
        }
        assert_eq!(cb.console().0, ["hii"]);
    }

    #[test]
    fn console_is_bounded() {
        let cb = ControlBlock::default();
        let mut seq = 0u8;
        for i in 0..(CONSOLE_LINES + 5) {
            for b in format!("line {i}\n").bytes() {
                seq = seq.wrapping_add(1);
                cb.console_byte(seq, b);
            }
        }
        let (lines, dropped) = cb.console();
        assert_eq!(lines.len(), CONSOLE_LINES);
        assert_eq!(dropped, 5);
        assert_eq!(lines[0], "line 5");
        for _ in 0..1000 {
            seq = seq.wrapping_add(1);
            cb.console_byte(seq, b'x');
        }
        assert!(cb.console().0.iter().all(|l| l.len() <= CONSOLE_LINE_MAX));
    }

    #[test]
    fn listener_hears_notifications_and_kicks() {
        let cb = ControlBlock::default();
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        cb.set_listener(Some(std::sync::Arc::new(move |e| {
            s2.lock().unwrap().push(e);
        })));
        cb.set_notify_tag(4);
        cb.notify(1);
        cb.notify(1);
        cb.kick();
        cb.set_listener(None);
        cb.notify(2);
        assert_eq!(
            *seen.lock().unwrap(),
            [
                ControlEvent::Notify(Notify { seq: 1, tag: 4 }),
                ControlEvent::Kick
            ]
        );
    }

    #[test]
    fn notify_wakes_waiter() {
        let cb = std::sync::Arc::new(ControlBlock::default());
        let c2 = cb.clone();
        let t = std::thread::spawn(move || c2.wait_notify(0, Duration::from_secs(10)));
        cb.set_notify_tag(7);
        cb.notify(1);
        let n = t.join().unwrap().unwrap();
        assert_eq!((n.seq, n.tag), (1, 7));
        assert!(cb.wait_notify(1, Duration::from_millis(1)).is_none());
    }

    /// Wait until `n` threads are asleep on `cb`'s notifications.
    fn asleep(cb: &ControlBlock, n: u32) {
        while cb.notify.lock().unwrap().waiters != n {
            std::thread::yield_now();
        }
    }

    #[test]
    fn sleeping_waiters_are_woken_by_a_kick_and_by_a_notification() {
        let cb = std::sync::Arc::new(ControlBlock::default());
        let c2 = cb.clone();
        let t = std::thread::spawn(move || c2.wait_notify(0, Duration::from_secs(60)));
        asleep(&cb, 1);
        cb.kick();
        // Woken with nothing new.
        assert_eq!(t.join().unwrap(), None);
        asleep(&cb, 0);
        let c2 = cb.clone();
        let t = std::thread::spawn(move || c2.wait_notify(0, Duration::from_secs(60)));
        asleep(&cb, 1);
        cb.set_notify_tag(3);
        cb.notify(9);
        assert_eq!(t.join().unwrap(), Some(Notify { seq: 1, tag: 3 }));
        asleep(&cb, 0);
        // A waiter whose time runs out counts itself out again.
        assert!(cb.wait_notify(1, Duration::from_millis(1)).is_none());
        asleep(&cb, 0);
    }
}
