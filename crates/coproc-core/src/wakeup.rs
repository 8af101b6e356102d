//! How the runner of a pcoproc on the host clock waits: one epoll set
//! holding its own kick eventfd and the doorbell eventfds of its vcoprocs.
//!
//! A domain that rings a doorbell eventfd reaches the runner directly: the
//! runner's `epoll_wait` returns (when idle), or its per-turn poll sees the
//! event (when busy), with no task or thread in between and no lock that
//! device work can hold. Doorbell eventfds are registered edge-triggered
//! and never read: every write to an eventfd raises a new edge, so the
//! runner never performs a read that a domain sharing the file description
//! could make block.
//!
//! Kicks from other threads (a queued command, a wake-up) write the kick
//! eventfd only while the runner is about to wait or waiting (`idle`), so a
//! busy runner costs its kickers nothing but an atomic load.

use crate::ids::VcoprocId;
use rustix::event::epoll;
use rustix::fd::{AsFd, OwnedFd};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use thiserror::Error;

/// Errors of this module.
#[derive(Debug, Error)]
pub enum WakeupError {
    /// A system call failed.
    #[error("runner wake-up: {0}")]
    Sys(#[from] rustix::io::Errno),
    /// The vcoproc has the most doorbell descriptors it may have.
    #[error("a vcoproc may have at most {0} doorbell descriptors")]
    TooMany(usize),
}

/// Most doorbell eventfds one vcoproc may register.
pub const MAX_DOORBELLS_PER_VCOPROC: usize = 64;

/// The key of the runner's own kick eventfd in the epoll set.
const KICK_KEY: u64 = 0;

/// The runner's wait set.
pub(crate) struct Wakeup {
    epoll: OwnedFd,
    kick: OwnedFd,
    /// The runner is about to wait or waiting: kickers must write `kick`.
    idle: AtomicBool,
    /// Registered doorbells: epoll key → (vcoproc, eventfd).
    doorbells: Mutex<HashMap<u64, (VcoprocId, OwnedFd)>>,
    /// How many are registered (the busy runner polls only if any are).
    count: AtomicUsize,
    next_key: AtomicU64,
}

impl std::fmt::Debug for Wakeup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wakeup")
            .field("doorbells", &self.count.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Wakeup {
    pub(crate) fn new() -> Result<Wakeup, WakeupError> {
        use rustix::event::{eventfd, EventfdFlags};
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let kick = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(
            &epoll,
            &kick,
            epoll::EventData::new_u64(KICK_KEY),
            epoll::EventFlags::IN,
        )?;
        Ok(Wakeup {
            epoll,
            kick,
            idle: AtomicBool::new(false),
            doorbells: Mutex::new(HashMap::new()),
            count: AtomicUsize::new(0),
            next_key: AtomicU64::new(KICK_KEY + 1),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (VcoprocId, OwnedFd)>> {
        self.doorbells.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wake the runner if it waits (or is about to). Callers make their work
    /// visible (a queued command, a wake record) before calling this.
    pub(crate) fn kick(&self) {
        if self.idle.load(Ordering::SeqCst) {
            // A full counter (never: the runner drains it) only means a
            // wake-up is already pending.
            let _ = rustix::io::write(&self.kick, &1u64.to_ne_bytes());
        }
    }

    /// The runner is going to check for work and then wait: from here on
    /// kicks write the eventfd. Call before the last check for work.
    pub(crate) fn arm(&self) {
        self.idle.store(true, Ordering::SeqCst);
    }

    /// The runner is busy again.
    pub(crate) fn disarm(&self) {
        self.idle.store(false, Ordering::SeqCst);
    }

    /// Register `fd` (an eventfd) as a doorbell of `v`.
    pub(crate) fn add_doorbell(&self, v: VcoprocId, fd: OwnedFd) -> Result<u64, WakeupError> {
        let mut t = self.table();
        if t.values().filter(|(o, _)| *o == v).count() >= MAX_DOORBELLS_PER_VCOPROC {
            return Err(WakeupError::TooMany(MAX_DOORBELLS_PER_VCOPROC));
        }
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        epoll::add(
            &self.epoll,
            &fd,
            epoll::EventData::new_u64(key),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )?;
        t.insert(key, (v, fd));
        self.count.store(t.len(), Ordering::Relaxed);
        Ok(key)
    }

    /// Forget every doorbell of `v` (it is being destroyed).
    pub(crate) fn remove_vcoproc(&self, v: VcoprocId) {
        let mut t = self.table();
        let keys: Vec<u64> = t
            .iter()
            .filter(|(_, (o, _))| *o == v)
            .map(|(&k, _)| k)
            .collect();
        for k in keys {
            if let Some((_, fd)) = t.remove(&k) {
                let _ = epoll::delete(&self.epoll, fd.as_fd());
            }
        }
        self.count.store(t.len(), Ordering::Relaxed);
    }

    /// Forget every doorbell (shutdown).
    pub(crate) fn clear(&self) {
        let mut t = self.table();
        for (_, (_, fd)) in t.drain() {
            let _ = epoll::delete(&self.epoll, fd.as_fd());
        }
        self.count.store(0, Ordering::Relaxed);
    }

    /// Whether any doorbell eventfd is registered.
    pub(crate) fn has_doorbells(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
    }

    /// Wait up to `timeout` (zero: just look) and push the vcoprocs whose
    /// doorbell eventfds were written into `rung`. Returns with the kick
    /// eventfd drained.
    pub(crate) fn wait(&self, timeout: Duration, rung: &mut Vec<VcoprocId>) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(32);
        let ts = rustix::event::Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let r = epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut events),
            Some(&ts),
        );
        if r.is_err() {
            // EINTR: the caller loops anyway.
            return;
        }
        let mut kicked = false;
        let t = (events.iter().any(|e| e.data.u64() != KICK_KEY)).then(|| self.table());
        for e in &events {
            let key = e.data.u64();
            if key == KICK_KEY {
                kicked = true;
            } else if let Some((v, _)) = t.as_ref().and_then(|t| t.get(&key)) {
                if !rung.contains(v) {
                    rung.push(*v);
                }
            }
        }
        drop(t);
        if kicked {
            let mut b = [0u8; 8];
            let _ = rustix::io::read(&self.kick, &mut b);
        }
    }
}
