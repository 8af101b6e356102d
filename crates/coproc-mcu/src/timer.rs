//! The slice timer and preempt handle of the mcu device.
//!
//! A persistent thread stops the emulated core when a slice's budget runs
//! out, and the preempt handle stops it from the requesting thread (waking
//! the timer thread for it would put a thread switch, tens of µs on a
//! loaded host, on the wake→run path). Both only raise the `kick` flag: the
//! device's block hook sees it at the next translation block and stops the
//! engine there, at a clean instruction boundary (see `McuDevice::new`).
//! A flag raised before the engine starts is seen by its first block, so
//! no stop is lost; arming a run lowers it.
//!
//! The budget is CPU time of the runner thread, not wall-clock time: the
//! deadline is first set in wall-clock time, and when it passes the timer
//! reads the runner's CPU clock; if the host descheduled the runner for part
//! of the slice, the deadline moves on by what the runner has not yet had.
//! So a vcoproc neither loses its slice to host preemption nor is charged
//! for it ([`thread_cpu`] is what the device charges). Only the fire path
//! reads the clock: one `clock_gettime` per slice, on the timer thread.

// Nanoseconds of one slice and instruction counts narrowed to the engine's 32-bit and 64-bit counters; a slice is far shorter than 2^32 ns.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use coproc_core::device::Preempt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Shortest wait when the runner's CPU time falls short of its budget.
const MIN_EXTEND: Duration = Duration::from_micros(50);

/// CPU time the calling thread has consumed (`CLOCK_THREAD_CPUTIME_ID`).
pub(crate) fn thread_cpu() -> Duration {
    coproc_core::device::thread_cpu_time()
}

/// The CPU-time clock of one thread, readable from any thread.
#[derive(Debug, Clone, Copy)]
struct CpuClock(libc::clockid_t);

impl CpuClock {
    /// The calling thread's clock.
    fn of_current_thread() -> Option<CpuClock> {
        let mut id: libc::clockid_t = 0;
        // SAFETY: pthread_self() is the live calling thread; `id` is a valid
        // place for the one clockid_t the call writes.
        let r = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &raw mut id) };
        (r == 0).then_some(CpuClock(id))
    }

    /// CPU time of the thread; None if it cannot be read (the thread is
    /// gone).
    fn now(self) -> Option<Duration> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec for the call to write; an
        // invalid clock id (the thread exited) is an error return, not UB.
        let r = unsafe { libc::clock_gettime(self.0, &raw mut ts) };
        (r == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
}

/// The CPU budget of an armed run: the runner's clock, its reading at the
/// start of the run, and the budget.
#[derive(Debug, Clone, Copy)]
struct CpuBudget {
    clock: CpuClock,
    start: Duration,
    budget: Duration,
}

impl CpuBudget {
    /// CPU time the runner still lacks (None: spent, or unreadable).
    fn shortfall(&self) -> Option<Duration> {
        let used = self.clock.now()?.saturating_sub(self.start);
        self.budget.checked_sub(used).filter(|d| !d.is_zero())
    }
}

#[derive(Debug, Default)]
struct State {
    deadline: Option<Instant>,
    /// The CPU budget of the armed run (None: wall-clock deadline only).
    cpu: Option<CpuBudget>,
    armed: bool,
    quit: bool,
    /// When the timer thread will next look at `deadline` (None: only when
    /// notified). Arming a later deadline needs no wake-up, which keeps a
    /// thread switch off every short run.
    wakes_at: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct TimerShared {
    state: Mutex<State>,
    cv: Condvar,
    /// Stop the engine at its next block (read by the device's block hook).
    kick: Arc<AtomicBool>,
    fired: AtomicBool,
    preempt: AtomicBool,
}

impl TimerShared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stop_engine(&self) {
        self.kick.store(true, Ordering::Release);
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
    /// The timer thread; it raises `kick` to stop the engine.
    pub(crate) fn new(kick: Arc<AtomicBool>) -> std::io::Result<SliceTimer> {
        let shared = Arc::new(TimerShared {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            kick,
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
                        None => {
                            st =
                                s.cv.wait(st)
                                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                        }
                        Some(d) => {
                            let now = Instant::now();
                            let short = if now >= d && !s.preempt.load(Ordering::Acquire) {
                                // Fire only once the runner has had its
                                // budget in CPU time.
                                st.cpu.take().and_then(|c| {
                                    let short = c.shortfall()?;
                                    st.cpu = Some(c);
                                    Some(short)
                                })
                            } else {
                                None
                            };
                            if let Some(short) = short {
                                st.deadline = Some(now + short.max(MIN_EXTEND));
                            } else if now >= d {
                                s.fired.store(true, Ordering::Release);
                                s.stop_engine();
                                st.deadline = None;
                            } else {
                                let until = d;
                                st.wakes_at = Some(until);
                                st =
                                    s.cv.wait_timeout(st, until - now)
                                        .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    /// Arm for a run of `budget` of the calling thread's CPU time, counted
    /// from `cpu_start` (its [`thread_cpu`] at the start of the run).
    pub(crate) fn arm(&self, budget: Duration, cpu_start: Duration) {
        self.shared.fired.store(false, Ordering::Release);
        self.shared.kick.store(false, Ordering::Release);
        let clock = CpuClock::of_current_thread();
        let mut s = self.shared.lock();
        s.armed = true;
        s.cpu = clock.map(|clock| CpuBudget {
            clock,
            start: cpu_start,
            budget,
        });
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
        s.cpu = None;
        drop(s);
        self.shared.kick.store(false, Ordering::Release);
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
    }
}

impl Drop for SliceTimer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
