//! How the runner of a pcoproc on the host clock waits: one epoll set
//! holding its own kick eventfd and the doorbell eventfds of its vcoprocs.
//!
//! A domain that rings a doorbell eventfd reaches an idle runner directly:
//! its `epoll_wait` returns, with no task or thread in between and no lock
//! that device work can hold (a busy runner's doorbells go through the
//! sentinel, below). Doorbell eventfds are registered edge-triggered
//! and never read: every write to an eventfd raises a new edge, so the
//! runner never performs a read that a domain sharing the file description
//! could make block.
//!
//! Kicks from other threads (a queued command, a wake-up) write the kick
//! eventfd only while the runner is about to wait or waiting (`idle`), so a
//! busy runner costs its kickers nothing but an atomic load.
//!
//! The doorbell eventfds sit in a set of their own (`bells`), nested in the
//! runner's set. While the runner runs a slice it cannot wait, so the
//! pcoproc's sentinel thread waits on `bells` all the time: whoever of the
//! two takes a doorbell's edge first rings it and wakes the vcoproc (the
//! sentinel through the lock-free wake path, so a policy can still cut the
//! running slice short for it). Ringing happens here, under the table's
//! lock, with the control block registered beside the descriptor.

use crate::control::ControlBlock;
use crate::ids::VcoprocId;
use rustix::event::epoll;
use rustix::fd::{AsFd, OwnedFd};
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
/// The key of the nested doorbell set in the runner's set.
const BELLS_KEY: u64 = 1;
/// The key of the sentinel's stop eventfd in the doorbell set.
const STOP_KEY: u64 = 2;

/// One registered doorbell: its vcoproc, the eventfd, the control block
/// the ring is counted in.
type Bell = (VcoprocId, OwnedFd, std::sync::Arc<ControlBlock>);

/// The runner's wait set.
pub(crate) struct Wakeup {
    epoll: OwnedFd,
    kick: OwnedFd,
    /// The doorbell eventfds (and the sentinel's stop eventfd).
    bells: OwnedFd,
    stop: OwnedFd,
    /// The runner is about to wait or waiting: kickers must write `kick`.
    idle: AtomicBool,
    /// Registered doorbells: epoll key → (vcoproc, eventfd).
    doorbells: Mutex<HashMap<u64, Bell>>,
    next_key: AtomicU64,
}

impl std::fmt::Debug for Wakeup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wakeup").finish_non_exhaustive()
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
        let bells = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &epoll,
            &bells,
            epoll::EventData::new_u64(BELLS_KEY),
            epoll::EventFlags::IN,
        )?;
        let stop = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(
            &bells,
            &stop,
            epoll::EventData::new_u64(STOP_KEY),
            epoll::EventFlags::IN,
        )?;
        Ok(Wakeup {
            epoll,
            kick,
            bells,
            stop,
            idle: AtomicBool::new(false),
            doorbells: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(STOP_KEY + 1),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Bell>> {
        self.doorbells
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    /// Register `fd` (an eventfd) as a doorbell of `v`, counted in `control`.
    pub(crate) fn add_doorbell(
        &self,
        v: VcoprocId,
        fd: OwnedFd,
        control: std::sync::Arc<ControlBlock>,
    ) -> Result<u64, WakeupError> {
        let mut t = self.table();
        if t.values().filter(|(o, _, _)| *o == v).count() >= MAX_DOORBELLS_PER_VCOPROC {
            return Err(WakeupError::TooMany(MAX_DOORBELLS_PER_VCOPROC));
        }
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        epoll::add(
            &self.bells,
            &fd,
            epoll::EventData::new_u64(key),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )?;
        t.insert(key, (v, fd, control));
        Ok(key)
    }

    /// Forget every doorbell of `v` (it is being destroyed).
    pub(crate) fn remove_vcoproc(&self, v: VcoprocId) {
        let mut t = self.table();
        let keys: Vec<u64> = t
            .iter()
            .filter(|(_, (o, _, _))| *o == v)
            .map(|(&k, _)| k)
            .collect();
        for k in keys {
            if let Some((_, fd, _)) = t.remove(&k) {
                let _ = epoll::delete(&self.bells, fd.as_fd());
            }
        }
    }

    /// Forget every doorbell (shutdown).
    pub(crate) fn clear(&self) {
        let mut t = self.table();
        for (_, (_, fd, _)) in t.drain() {
            let _ = epoll::delete(&self.bells, fd.as_fd());
        }
    }

    /// End the sentinel (the runner is gone).
    pub(crate) fn stop_sentinel(&self) {
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
    }

    /// The runner: wait up to `timeout` (zero: just look) and push the
    /// vcoprocs whose doorbell eventfds were written (and rung) into `rung`.
    /// Returns with the kick eventfd drained.
    pub(crate) fn wait(&self, timeout: Duration, rung: &mut Vec<VcoprocId>) {
        let mut buf = [const { MaybeUninit::uninit() }; 2];
        let Ok(events) = epoll_wait(&self.epoll, &mut buf, Some(timeout)) else {
            // EINTR: the caller loops anyway.
            return;
        };
        let mut kicked = false;
        for e in events.iter() {
            match e.data.u64() {
                KICK_KEY => kicked = true,
                _ => {
                    self.take_bells(Duration::ZERO, rung);
                }
            }
        }
        if kicked {
            let mut b = [0u8; 8];
            let _ = rustix::io::read(&self.kick, &mut b);
        }
    }

    /// Take the doorbell edges that are there (waiting up to `timeout`):
    /// ring each vcoproc's doorbell once and push it into `rung`. False once
    /// the sentinel is told to stop.
    fn take_bells(&self, timeout: Duration, rung: &mut Vec<VcoprocId>) -> bool {
        let mut buf = [const { MaybeUninit::uninit() }; 32];
        let t = (timeout != Duration::MAX).then_some(timeout);
        let events = match epoll_wait(&self.bells, &mut buf, t) {
            Ok(e) if !e.is_empty() => e,
            _ => return true,
        };
        let table = self.table();
        let mut go = true;
        for e in events.iter() {
            let key = e.data.u64();
            if key == STOP_KEY {
                go = false;
            } else if let Some((v, _, control)) = table.get(&key) {
                if !rung.contains(v) {
                    control.ring();
                    rung.push(*v);
                }
            }
        }
        go
    }

    /// The sentinel: block until doorbells are written (rung and pushed
    /// into `rung`); false once told to stop.
    pub(crate) fn sentinel_wait(&self, rung: &mut Vec<VcoprocId>) -> bool {
        self.take_bells(Duration::MAX, rung)
    }
}

/// `epoll_wait` into `buf` (no allocation: the runner and the sentinel
/// call it on every wake-up); `None`: no timeout. The events that came.
fn epoll_wait<'b>(
    set: &OwnedFd,
    buf: &'b mut [MaybeUninit<epoll::Event>],
    timeout: Option<Duration>,
) -> rustix::io::Result<&'b mut [epoll::Event]> {
    let ts = timeout.map(|t| rustix::event::Timespec {
        tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    let (events, _) = epoll::wait(set, buf, ts.as_ref())?;
    Ok(events)
}
