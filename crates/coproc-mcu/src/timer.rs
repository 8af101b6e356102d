//! The slice timer and preempt handle of the mcu device.
//!
//! A persistent thread stops the emulated core when a slice's budget runs
//! out, both through `uc_emu_stop`, the call Unicorn's own timeout thread
//! makes from another thread. The preempt handle calls `uc_emu_stop` itself,
//! from the requesting thread: waking the timer thread for it would put a
//! thread switch (tens of µs on a loaded host) on the wake→run path.
//!
//! A stop that lands just before the engine starts is lost (Unicorn ignores
//! it while no emulation runs, and `emu_start` clears a pending one). So once
//! fired the timer repeats its stop every [`REFIRE`] until the run is
//! disarmed, and while a run is armed the timer thread looks at a pending
//! preempt request at least every [`PREEMPT_POLL`] and repeats that stop:
//! a lost preempt costs at most that long, and the common case no wake-up.

use coproc_core::device::Preempt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use unicorn_engine::uc_engine;

/// Interval at which a fired stop is repeated until the run ends.
const REFIRE: Duration = Duration::from_micros(200);

/// Longest a preempt request can wait when its direct stop was lost.
const PREEMPT_POLL: Duration = Duration::from_millis(1);

#[derive(Debug, Default)]
struct State {
    deadline: Option<Instant>,
    armed: bool,
    quit: bool,
    /// When the timer thread will next look at `deadline` (None: only when
    /// notified). Arming a later deadline needs no wake-up, which keeps a
    /// thread switch off every short run.
    wakes_at: Option<Instant>,
}

/// Raw engine handle for stop requests.
#[derive(Debug, Clone, Copy)]
struct Engine(*mut uc_engine);

// SAFETY: the handle is only used for `uc_emu_stop`, which Unicorn itself
// calls from its timeout thread; `SliceTimer::shutdown` joins the thread
// and clears `engine` before the engine is closed.
unsafe impl Send for Engine {}

#[derive(Debug)]
pub(crate) struct TimerShared {
    state: Mutex<State>,
    cv: Condvar,
    engine: Mutex<Option<Engine>>,
    fired: AtomicBool,
    preempt: AtomicBool,
}

impl TimerShared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stop_engine(&self) {
        let engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Engine(h)) = *engine {
            // SAFETY: `h` is a live engine: it is cleared (under this lock)
            // before the engine is closed. uc_emu_stop only sets the stop
            // flag and kicks the vCPU, which is what it is meant to do from
            // another thread.
            unsafe {
                let _ = unicorn_engine::uc_emu_stop(h);
            }
        }
    }
}

impl Preempt for TimerShared {
    fn preempt(&self) {
        self.preempt.store(true, Ordering::Release);
        let s = self.lock();
        if s.armed {
            self.stop_engine();
        }
    }
}

/// The timer thread and its shared state.
#[derive(Debug)]
pub(crate) struct SliceTimer {
    shared: Arc<TimerShared>,
    thread: Option<JoinHandle<()>>,
}

impl SliceTimer {
    pub(crate) fn new(engine: *mut uc_engine) -> std::io::Result<SliceTimer> {
        let shared = Arc::new(TimerShared {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            engine: Mutex::new(Some(Engine(engine))),
            fired: AtomicBool::new(false),
            preempt: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mcu-slice-timer".into())
            .spawn(move || {
                let mut st = s.lock();
                loop {
                    if st.quit {
                        return;
                    }
                    st.wakes_at = None;
                    match st.deadline {
                        None => st = s.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                        Some(d) => {
                            let now = Instant::now();
                            if now >= d {
                                s.fired.store(true, Ordering::Release);
                                s.stop_engine();
                                st.deadline = Some(now + REFIRE);
                            } else {
                                if s.preempt.load(Ordering::Acquire) {
                                    // Repeat a preempt stop that may have
                                    // been lost before the run began.
                                    s.stop_engine();
                                }
                                let until = d.min(now + PREEMPT_POLL);
                                st.wakes_at = Some(until);
                                st =
                                    s.cv.wait_timeout(st, until - now)
                                        .unwrap_or_else(|e| e.into_inner())
                                        .0;
                            }
                        }
                    }
                }
            })?;
        Ok(SliceTimer {
            shared,
            thread: Some(thread),
        })
    }

    pub(crate) fn preempter(&self) -> Arc<TimerShared> {
        self.shared.clone()
    }

    /// Take a pending preempt request (one made while no run was in progress).
    pub(crate) fn take_preempt(&self) -> bool {
        self.shared.preempt.swap(false, Ordering::AcqRel)
    }

    /// Arm for a run of `budget`.
    pub(crate) fn arm(&self, budget: Duration) {
        self.shared.fired.store(false, Ordering::Release);
        let mut s = self.shared.lock();
        s.armed = true;
        let mut deadline = Instant::now() + budget;
        // A preempt that raced with arming still counts.
        if self.shared.preempt.load(Ordering::Acquire) {
            deadline = Instant::now();
        }
        s.deadline = Some(deadline);
        if s.wakes_at.is_none_or(|w| w > deadline) {
            self.shared.cv.notify_all();
        }
    }

    /// Disarm after a run; returns (budget fired, preempted).
    pub(crate) fn disarm(&self) -> (bool, bool) {
        let mut s = self.shared.lock();
        s.armed = false;
        s.deadline = None;
        drop(s);
        (
            self.shared.fired.swap(false, Ordering::AcqRel),
            self.take_preempt(),
        )
    }

    pub(crate) fn shutdown(&mut self) {
        self.shared.lock().quit = true;
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        *self.shared.engine.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Drop for SliceTimer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
