//! The session's listener on a vcoproc's control block (`Hooks`): events
//! for the session task and the completion eventfds' writer thread.

use super::{
    fault_info, mpsc, Arc, AtomicBool, Attachment, ControlEvent, Entry, Event, Listener, Mutex,
    Ordering, OwnedFd, Session, VcoprocState,
};

/// What a vcoproc's control block listener does for this session. It runs
/// on the runner thread, so it never blocks and never allocates per event:
/// notifications and kicks are merged into the latest ones (a client waits
/// for "a notification newer than n", so only the latest matters), the
/// session task is woken through a bounded channel, and completion eventfds
/// are written by a thread of this vcoproc's own, which is all a domain can
/// stall by making its eventfd unwritable.
pub(super) struct Hooks {
    pub(super) id: u32,
    pub(super) subscribed: AtomicBool,
    /// Latest notification not yet forwarded.
    pub(super) latest: Mutex<Option<coproc_core::control::Notify>>,
    pub(super) kicked: AtomicBool,
    /// The last stopped/faulted state reported, with the fault count then
    /// (a new fault is a new report even in the same state).
    pub(super) reported: Mutex<Option<(VcoprocState, u64)>>,
    /// A wake-up for this vcoproc is queued for the session task.
    pub(super) queued: AtomicBool,
    /// Latest page fault not yet forwarded (a vcoproc stalls on one at a time).
    pub(super) page_fault: Mutex<Option<(u64, coproc_core::fault::Access)>>,
    pub(super) wake: mpsc::Sender<u32>,
    /// Completion eventfds and the writer thread's doorbell.
    pub(super) completions: Arc<Mutex<Vec<OwnedFd>>>,
    pub(super) writer: Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
    /// The queues' ring memory: after a notification the runner reads
    /// each ring's completion wake-up word and wakes the domain's futex
    /// sleepers on the completion tail itself (no thread in between).
    pub(super) rings: Mutex<Vec<Arc<super::Region>>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("vcoproc", &self.id)
            .finish_non_exhaustive()
    }
}

impl crate::daemon::Attachment for Hooks {
    fn detach(&self) {
        self.subscribed.store(false, Ordering::Release);
        // The writer thread ends when its only sender goes; the completion
        // eventfds close now.
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        self.completions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        self.rings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

impl Hooks {
    pub(super) fn fire(&self, ev: ControlEvent) {
        if let ControlEvent::Notify(n) = ev {
            if self.wake_rings() {
                if let Some(w) = self
                    .writer
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .as_ref()
                {
                    // Full means a write is already due: merged.
                    let _ = w.try_send(());
                }
            }
            if self.subscribed.load(Ordering::Acquire) {
                *self
                    .latest
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(n);
            }
        } else if let ControlEvent::PageFault { addr, access } = ev {
            if self.subscribed.load(Ordering::Acquire) {
                *self
                    .page_fault
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((addr, access));
            }
        } else {
            self.kicked.store(true, Ordering::Release);
        }
        if self.subscribed.load(Ordering::Acquire) && !self.queued.swap(true, Ordering::AcqRel) {
            // A full channel already holds wake-ups the session will drain.
            if self.wake.try_send(self.id).is_err() {
                self.queued.store(false, Ordering::Release);
            }
        }
    }

    /// Wake the domain's threads asleep on a completion tail (a shared
    /// futex wake: one system call that never blocks, made only where a
    /// ring's wake-up word counts sleepers); true if some ring still wants
    /// its completion eventfd written (or there is no ring). The wake-up
    /// word is the domain's to write: garbage costs at most one needless
    /// wake-up or eventfd write per ring, to that domain alone.
    fn wake_rings(&self) -> bool {
        use coproc_proto::queue::{CQ_WAKE_NO_EVENTFD, OFF_CQ_TAIL, OFF_CQ_WAKE};
        // The completion tail was stored before this notification; the
        // fence orders that store before the loads of the wake-up words,
        // against the sleeper's SeqCst increment before it looks at the
        // tail (one of the two sees the other).
        std::sync::atomic::fence(Ordering::SeqCst);
        let rings = self
            .rings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut eventfd = rings.is_empty();
        for r in rings.iter() {
            let m = r.as_shared();
            let w = m.load_u32(OFF_CQ_WAKE).unwrap_or(0);
            if w & !CQ_WAKE_NO_EVENTFD != 0 {
                let _ = m.wake_u32(OFF_CQ_TAIL);
            }
            eventfd |= w & CQ_WAKE_NO_EVENTFD == 0;
        }
        eventfd
    }

    /// Clear the polling word of each of the vcoproc's queues
    /// (`OFF_SQ_POLLING`): the domain rings for what it submits next.
    pub(super) fn not_polling(&self) {
        for r in self
            .rings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            let _ = r
                .as_shared()
                .store_u32(coproc_proto::queue::OFF_SQ_POLLING, 0);
        }
    }

    /// Start the completion writer thread (once).
    pub(super) fn start_writer(&self) {
        let mut w = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.is_some() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let fds = self.completions.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("completions-{}", self.id))
            .spawn(move || {
                while rx.recv().is_ok() {
                    for fd in fds
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .iter()
                    {
                        // Write only when a write cannot block; if the domain
                        // races us into a full counter, only this thread waits.
                        let mut p = [rustix::event::PollFd::new(
                            fd,
                            rustix::event::PollFlags::OUT,
                        )];
                        let zero = rustix::time::Timespec {
                            tv_sec: 0,
                            tv_nsec: 0,
                        };
                        if rustix::event::poll(&mut p, Some(&zero)).is_ok_and(|n| n == 1) {
                            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
                        }
                    }
                }
            });
        if spawned.is_ok() {
            *w = Some(tx);
        }
    }
}

/// Whether `fd` is an eventfd.
pub(super) fn is_eventfd(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|p| p.as_os_str() == "anon_inode:[eventfd]")
}

impl Session {
    /// This session's listener on vcoproc `id`, installed on first use and
    /// recorded with the vcoproc, so that whoever destroys it releases it.
    pub(super) fn hooks(&mut self, id: u32, e: &Entry) -> Arc<Hooks> {
        if let Some(h) = self.hooks.get(&id) {
            return h.clone();
        }
        // Forget hooks of vcoprocs others destroyed meanwhile.
        {
            let t = self.daemon.tables();
            self.hooks.retain(|v, _| t.vcoprocs.contains_key(v));
        }
        let h = Arc::new(Hooks {
            id,
            subscribed: false.into(),
            latest: Mutex::new(None),
            kicked: false.into(),
            reported: Mutex::new(None),
            queued: false.into(),
            page_fault: Mutex::new(None),
            wake: self.wake.clone(),
            completions: Arc::default(),
            writer: Mutex::new(None),
            rings: Mutex::new(Vec::new()),
        });
        let h2 = h.clone();
        let l: Listener = Arc::new(move |ev| h2.fire(ev));
        e.handle.control().set_listener(Some(l));
        if !self.daemon.attach(id, h.clone()) {
            // Destroyed between the lookup and here.
            e.handle.control().set_listener(None);
            h.detach();
        }
        self.hooks.insert(id, h.clone());
        h
    }

    /// Turn a control block event into events for the client.
    /// Events owed to the client for vcoproc `id` after a wake-up: the
    /// latest notification, and a state change if there was a kick.
    /// The events due for vcoproc `id` after a wake-up.
    pub fn wake_events(&mut self, id: u32) -> Vec<Event> {
        let Some(h) = self.hooks.get(&id).cloned() else {
            return vec![];
        };
        h.queued.store(false, Ordering::Release);
        let mut out = Vec::new();
        if let Some(n) = h
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            out.push(Event::Notify {
                vcoproc: id,
                seq: n.seq,
                tag: n.tag,
            });
        }
        let pf = h
            .page_fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some((iova, access)) = pf {
            out.push(Event::PageFault {
                vcoproc: id,
                iova,
                access: format!("{access:?}").to_lowercase(),
            });
        }
        if h.kicked.swap(false, Ordering::AcqRel) {
            out.extend(self.state_events(id));
        }
        out
    }

    /// A state event (and the fault record) if the vcoproc newly stopped or
    /// faulted; each fault is reported once.
    pub(super) fn state_events(&mut self, id: u32) -> Vec<Event> {
        let Some(h) = self.hooks.get(&id).cloned() else {
            return vec![];
        };
        let Ok(e) = self.entry(id, false) else {
            self.hooks.remove(&id);
            return vec![Event::State {
                vcoproc: id,
                state: VcoprocState::Destroyed.to_string(),
            }];
        };
        let Ok(i) = e.handle.info() else {
            return vec![];
        };
        if !matches!(i.state, VcoprocState::Faulted | VcoprocState::Stopped) {
            return vec![];
        }
        let now = Some((i.state, i.stats.faults));
        if std::mem::replace(
            &mut *h
                .reported
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            now,
        ) == now
        {
            return vec![];
        }
        let mut out = Vec::new();
        if let (VcoprocState::Faulted, Some(f)) = (i.state, &i.last_fault) {
            out.push(Event::Fault {
                fault: fault_info(&e.coproc, e.domain, id, f),
            });
        }
        out.push(Event::State {
            vcoproc: id,
            state: i.state.to_string(),
        });
        out
    }
}
