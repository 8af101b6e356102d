//! `table`: a static cyclic schedule (ARINC 653 style).
//!
//! A major frame of fixed length repeats forever; within it, windows at
//! fixed offsets each belong to one vcoproc. During its window, the owner
//! runs if it is runnable, with a budget that ends at the window's end; the
//! device never runs anyone else there while the owner wants it.
//!
//! Time that no window covers, and windows whose owner is not runnable, are
//! slack. With [`Fill::Idle`] (the default) the device idles through slack,
//! so each vcoproc gets exactly its windows whatever the others do. With
//! [`Fill::Rr`] the runnable vcoprocs (with windows or without) share the
//! slack round robin, each turn lasting the rest of the gap (at most
//! [`Table::FILL_SLICE`]); a window's owner that becomes runnable while a
//! filler uses its window preempts the filler.
//!
//! The frame grid starts at the policy's epoch: the clock reading of the
//! first call that carries one (`wake`, `pick` or `charge`; `attach` has
//! none). It never moves afterwards: the position in the frame is
//! `(now - epoch) mod frame`. The current window is found by a binary
//! search over the windows sorted by offset.
//!
//! Overruns: a device that can only stop between jobs may run past the end
//! of a budget. What a window's owner ran past its budget is its debt: the
//! next window it runs in starts on time but ends that much earlier (the
//! rest of that window is slack), until the debt is paid. Overruns of fill
//! turns are not debt (fill time is not granted time) but are counted in
//! the `overrun_us` figure like all overruns.
//!
//! Runnable vcoprocs are kept in one ordered set by sequence number (the
//! fill order; the owner of a window is taken out of it wherever it is), so
//! every operation is O(log n) in vcoprocs plus O(log w) in windows.

use super::runqueue::{Place, RunQueue};
use super::{Decision, Policy, PolicyError, SchedParams, SliceEnd, Standing, WakeAction};
use crate::ids::VcoprocId;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// One window of the major frame: `vcoproc` owns `[offset, offset + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The owner.
    pub vcoproc: VcoprocId,
    /// Start, from the beginning of the frame.
    pub offset: Duration,
    /// Length.
    pub len: Duration,
}

impl fmt::Display for Window {
    /// `VCOPROC:OFFSET_US:LEN_US`, as the `window` parameter takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.vcoproc.0,
            self.offset.as_micros(),
            self.len.as_micros()
        )
    }
}

/// What the device does with slack (time no runnable owner's window
/// covers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fill {
    /// Idle: every vcoproc gets exactly its windows.
    #[default]
    Idle,
    /// Runnable vcoprocs share it round robin.
    Rr,
}

impl Fill {
    fn as_str(self) -> &'static str {
        match self {
            Fill::Idle => "idle",
            Fill::Rr => "rr",
        }
    }
}

/// A window in nanoseconds from the frame start.
#[derive(Debug, Clone, Copy)]
struct Win {
    v: VcoprocId,
    start: u64,
    end: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    /// Its position in the queue, if queued.
    queued: Option<Place>,
    /// Overrun of its windows not yet paid back, ns.
    debt: u64,
    /// All overruns, ns.
    overrun: u64,
    /// The window instance (absolute start) whose end was last cut by debt,
    /// and its cut end.
    cut: Option<(u64, u64)>,
    picks: u64,
}

/// The slice picked and not yet charged.
#[derive(Debug, Clone, Copy)]
struct Running {
    v: VcoprocId,
    budget: u64,
    /// In its own window (else filling slack).
    owner: bool,
}

/// The static cyclic schedule policy.
#[derive(Debug)]
pub struct Table {
    /// Major frame, ns.
    frame: u64,
    /// Sorted by start, not overlapping, inside the frame.
    windows: Vec<Win>,
    fill: Fill,
    /// Clock reading the frame grid starts at.
    epoch: Option<u64>,
    entries: HashMap<VcoprocId, Entry>,
    /// Runnable vcoprocs not running, in fill order.
    queue: RunQueue,
    running: Option<Running>,
    /// Per owner: windows per frame and their total length, ns.
    owned: HashMap<VcoprocId, (u64, u64)>,
}

/// Less than this left of a window counts as none (no zero budgets).
const MIN_RUN: u64 = 1_000;

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn us_figure(ns: u64) -> i64 {
    i64::try_from(ns / 1_000).unwrap_or(i64::MAX)
}

impl Table {
    /// Shortest major frame.
    pub const MIN_FRAME: Duration = Duration::from_micros(100);
    /// Longest major frame.
    pub const MAX_FRAME: Duration = Duration::from_secs(10);
    /// Shortest window.
    pub const MIN_WINDOW: Duration = Duration::from_micros(10);
    /// Longest turn of a vcoproc filling slack.
    pub const FILL_SLICE: Duration = Duration::from_millis(5);

    /// A table of `windows` repeating every `frame`. Windows must lie inside
    /// the frame, last at least [`Table::MIN_WINDOW`] and not overlap; at
    /// least one is needed. Their order does not matter.
    pub fn new(frame: Duration, windows: Vec<Window>, fill: Fill) -> Result<Table, PolicyError> {
        if frame < Self::MIN_FRAME || frame > Self::MAX_FRAME {
            return Err(PolicyError::BadParam(format!(
                "table: frame {frame:?} not in {:?}..={:?}",
                Self::MIN_FRAME,
                Self::MAX_FRAME
            )));
        }
        if windows.is_empty() {
            return Err(PolicyError::BadParam(
                "table: no windows (give at least one window=VCOPROC:OFFSET_US:LEN_US)".into(),
            ));
        }
        let mut sorted = windows;
        sorted.sort_by_key(|w| (w.offset, w.len));
        for w in &sorted {
            if w.len < Self::MIN_WINDOW {
                return Err(PolicyError::BadParam(format!(
                    "table: window {w} is shorter than {:?}",
                    Self::MIN_WINDOW
                )));
            }
            if w.offset.checked_add(w.len).is_none_or(|end| end > frame) {
                return Err(PolicyError::BadParam(format!(
                    "table: window {w} ends past the frame of {} us",
                    frame.as_micros()
                )));
            }
        }
        for pair in sorted.windows(2) {
            if pair[0].offset + pair[0].len > pair[1].offset {
                return Err(PolicyError::BadParam(format!(
                    "table: windows {} and {} overlap",
                    pair[0], pair[1]
                )));
            }
        }
        let windows: Vec<Win> = sorted
            .iter()
            .map(|w| Win {
                v: w.vcoproc,
                start: ns(w.offset),
                end: ns(w.offset + w.len),
            })
            .collect();
        let mut owned: HashMap<VcoprocId, (u64, u64)> = HashMap::new();
        for w in &windows {
            let o = owned.entry(w.v).or_default();
            o.0 += 1;
            o.1 += w.end - w.start;
        }
        Ok(Table {
            frame: ns(frame),
            windows,
            fill,
            epoch: None,
            entries: HashMap::new(),
            queue: RunQueue::default(),
            running: None,
            owned,
        })
    }

    /// Build from `key=value` parameters: `frame_us` (required,
    /// 100..=10000000), `window=VCOPROC:OFFSET_US:LEN_US` (repeated, at
    /// least one; VCOPROC may be written `v3`), `fill=idle|rr` (default
    /// `idle`).
    pub fn from_params(params: &[(String, String)]) -> Result<Self, PolicyError> {
        super::check_known("table", params, &["frame_us", "window", "fill"])?;
        let frame = match super::param(params, "frame_us") {
            Some(v) => super::parse_us("frame_us", v, Self::MIN_FRAME, Self::MAX_FRAME)?,
            None => return Err(PolicyError::BadParam("table: frame_us is required".into())),
        };
        let windows = params
            .iter()
            .filter(|(k, _)| k == "window")
            .map(|(_, v)| parse_window(v))
            .collect::<Result<Vec<_>, _>>()?;
        let fill = match super::param(params, "fill").map(str::trim) {
            None | Some("idle") => Fill::Idle,
            Some("rr") => Fill::Rr,
            Some(other) => {
                return Err(PolicyError::BadParam(format!(
                    "table: fill={other:?} is neither idle nor rr"
                )))
            }
        };
        Self::new(frame, windows, fill)
    }

    /// The major frame.
    pub fn frame(&self) -> Duration {
        Duration::from_nanos(self.frame)
    }

    /// The windows, sorted by offset.
    pub fn windows(&self) -> Vec<Window> {
        self.windows
            .iter()
            .map(|w| Window {
                vcoproc: w.v,
                offset: Duration::from_nanos(w.start),
                len: Duration::from_nanos(w.end - w.start),
            })
            .collect()
    }

    /// What slack is used for.
    pub fn fill(&self) -> Fill {
        self.fill
    }

    /// Fix the epoch at the first clock reading; gives `now` back.
    fn clock(&mut self, now: u64) -> u64 {
        self.epoch.get_or_insert(now);
        now
    }

    /// Absolute start of the frame `now` is in, and the position in it.
    fn locate(&self, now: u64) -> (u64, u64) {
        let rel = now.saturating_sub(self.epoch.unwrap_or(now));
        let pos = rel % self.frame;
        (now - pos, pos)
    }

    /// The window covering `pos` with at least [`MIN_RUN`] of it left.
    fn window_at(&self, pos: u64) -> Option<Win> {
        let i = self.windows.partition_point(|w| w.start <= pos);
        let w = *self.windows.get(i.checked_sub(1)?)?;
        (w.end.saturating_sub(pos) >= MIN_RUN).then_some(w)
    }

    /// Time from `pos` until the next window starts (always non-zero).
    fn until_next(&self, pos: u64) -> u64 {
        let i = self.windows.partition_point(|w| w.start <= pos);
        match self.windows.get(i) {
            Some(w) => w.start - pos,
            None => (self.frame - pos).saturating_add(self.windows.first().map_or(0, |w| w.start)),
        }
    }

    /// Where owner `v` must stop in its window instance `[start, end)`
    /// (absolute) when asking at `now`: its end less the debt it pays there.
    /// `commit` records the payment.
    fn owner_end(&mut self, v: VcoprocId, start: u64, end: u64, now: u64, commit: bool) -> u64 {
        let Some(e) = self.entries.get_mut(&v) else {
            return now;
        };
        match e.cut {
            Some((s, cut)) if s == start => cut,
            _ => {
                let pay = e.debt.min(end.saturating_sub(now));
                if commit {
                    e.debt -= pay;
                    e.cut = Some((start, end - pay));
                }
                end - pay
            }
        }
    }

    /// Queue `v` at the tail (or the head) of the fill order.
    fn enqueue(&mut self, v: VcoprocId, at_head: bool) {
        let Some(e) = self.entries.get_mut(&v) else {
            return;
        };
        e.queued = Some(self.queue.push(v, at_head));
    }

    /// Take `v` out of the queue if it is there.
    fn dequeue(&mut self, v: VcoprocId) {
        if let Some(e) = self.entries.get_mut(&v) {
            if let Some(at) = e.queued.take() {
                self.queue.remove(v, at);
            }
        }
    }

    fn run(&mut self, v: VcoprocId, budget: u64, owner: bool) -> Decision {
        self.dequeue(v);
        if let Some(e) = self.entries.get_mut(&v) {
            e.picks = e.picks.saturating_add(1);
        }
        self.running = Some(Running { v, budget, owner });
        Decision::Run {
            vcoproc: v,
            budget: Duration::from_nanos(budget),
        }
    }
}

/// Parse `VCOPROC:OFFSET_US:LEN_US` (VCOPROC optionally `v`-prefixed).
fn parse_window(text: &str) -> Result<Window, PolicyError> {
    let bad = |why: &str| {
        PolicyError::BadParam(format!(
            "table: window={text:?}: {why} (expected VCOPROC:OFFSET_US:LEN_US, e.g. v3:0:2000)"
        ))
    };
    let parts: Vec<&str> = text.trim().split(':').collect();
    let [v, offset, len] = parts[..] else {
        return Err(bad("not three fields"));
    };
    let v = v.strip_prefix('v').unwrap_or(v);
    let v: u32 = v.parse().map_err(|_| bad("the vcoproc is not a number"))?;
    let offset: u64 = offset
        .parse()
        .map_err(|_| bad("the offset is not a number"))?;
    let len: u64 = len.parse().map_err(|_| bad("the length is not a number"))?;
    Ok(Window {
        vcoproc: VcoprocId(v),
        offset: Duration::from_micros(offset),
        len: Duration::from_micros(len),
    })
}

impl Policy for Table {
    fn name(&self) -> &'static str {
        "table"
    }

    fn describe(&self) -> Vec<(String, String)> {
        let mut out = vec![("frame_us".to_string(), (self.frame / 1_000).to_string())];
        out.extend(
            self.windows()
                .iter()
                .map(|w| ("window".to_string(), w.to_string())),
        );
        out.push(("fill".into(), self.fill.as_str().into()));
        out
    }

    fn attach(&mut self, v: VcoprocId, params: &SchedParams) -> Result<(), PolicyError> {
        params.validate()?;
        self.entries.entry(v).or_default();
        Ok(())
    }

    fn detach(&mut self, v: VcoprocId) {
        if self.running.is_some_and(|r| r.v == v) {
            self.running = None;
        }
        self.dequeue(v);
        self.entries.remove(&v);
    }

    fn set_params(&mut self, v: VcoprocId, params: &SchedParams) -> Result<(), PolicyError> {
        params.validate()?;
        self.entries
            .get(&v)
            .map(|_| ())
            .ok_or(PolicyError::Unknown(v))
    }

    fn wake(&mut self, v: VcoprocId, now_ns: u64) -> WakeAction {
        let now = self.clock(now_ns);
        let Some(e) = self.entries.get(&v) else {
            return WakeAction::None;
        };
        if e.queued.is_some() || self.running.is_some_and(|r| r.v == v) {
            return WakeAction::None;
        }
        self.enqueue(v, false);
        // Only a filler can be in the way of an owner.
        if self.running.is_none_or(|r| r.owner) {
            return WakeAction::None;
        }
        let (frame_start, pos) = self.locate(now);
        match self.window_at(pos) {
            Some(w) if w.v == v => {
                let (start, end) = (
                    frame_start.saturating_add(w.start),
                    frame_start.saturating_add(w.end),
                );
                match self
                    .owner_end(v, start, end, now, false)
                    .saturating_sub(now)
                    >= MIN_RUN
                {
                    true => WakeAction::Preempt,
                    false => WakeAction::None,
                }
            }
            _ => WakeAction::None,
        }
    }

    fn block(&mut self, v: VcoprocId) {
        self.dequeue(v);
    }

    fn pick(&mut self, now_ns: u64) -> Decision {
        let now = self.clock(now_ns);
        self.running = None;
        let (frame_start, pos) = self.locate(now);
        let next = self.until_next(pos);
        // How long fillers may run, and who may not fill.
        let (gap, exclude) = match self.window_at(pos) {
            Some(w) => {
                let (start, end) = (
                    frame_start.saturating_add(w.start),
                    frame_start.saturating_add(w.end),
                );
                let queued = self.entries.get(&w.v).is_some_and(|e| e.queued.is_some());
                if queued {
                    let stop = self.owner_end(w.v, start, end, now, true);
                    if stop.saturating_sub(now) >= MIN_RUN {
                        return self.run(w.v, stop.saturating_sub(now), true);
                    }
                }
                // The owner pays debt: it may not fill its own window.
                (end.saturating_sub(now), Some(w.v))
            }
            None => (next, None),
        };
        if self.fill == Fill::Rr && gap >= MIN_RUN {
            let filler = self.queue.iter().find(|&v| Some(v) != exclude);
            if let Some(v) = filler {
                return self.run(v, gap.min(ns(Self::FILL_SLICE)), false);
            }
        }
        match self.queue.is_empty() {
            true => Decision::Idle(None),
            false => Decision::Idle(Some(Duration::from_nanos(next))),
        }
    }

    fn charge(&mut self, v: VcoprocId, ran: Duration, now_ns: u64, end: SliceEnd) {
        self.clock(now_ns);
        let ours = self.running.filter(|r| r.v == v);
        if ours.is_some() {
            self.running = None;
        }
        let Some(e) = self.entries.get_mut(&v) else {
            return;
        };
        if let Some(r) = ours {
            let over = ns(ran).saturating_sub(r.budget);
            e.overrun = e.overrun.saturating_add(over);
            if r.owner {
                e.debt = e.debt.saturating_add(over);
            }
        }
        if !end.runnable || e.queued.is_some() {
            return;
        }
        self.enqueue(v, end.preempted);
    }

    fn standings(&self) -> Vec<Standing> {
        let mut out: Vec<Standing> = self
            .entries
            .iter()
            .map(|(&v, e)| {
                let (windows, window_ns) = self.owned.get(&v).copied().unwrap_or_default();
                Standing {
                    vcoproc: v,
                    queued: e.queued.is_some(),
                    figures: vec![
                        ("windows".into(), i64::try_from(windows).unwrap_or(i64::MAX)),
                        ("window_us".into(), us_figure(window_ns)),
                        ("debt_us".into(), us_figure(e.debt)),
                        ("overrun_us".into(), us_figure(e.overrun)),
                        ("picks".into(), i64::try_from(e.picks).unwrap_or(i64::MAX)),
                    ],
                }
            })
            .collect();
        out.sort_by_key(|s| s.vcoproc);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testkit::{figure, kv, Demand, Sim, MS, PREEMPTED, RUN, US};

    /// Frame 10 ms: v1 0..2 ms, v2 2..7 ms, slack 7..10 ms.
    fn ab(fill: &str) -> Table {
        Table::from_params(&kv(&[
            ("frame_us", "10000"),
            ("window", "1:0:2000"),
            ("window", "v2:2000:5000"),
            ("fill", fill),
        ]))
        .unwrap()
    }

    fn run_of(d: Decision) -> Option<(u32, u64)> {
        match d {
            Decision::Run { vcoproc, budget } => Some((vcoproc.0, budget.as_nanos() as u64)),
            Decision::Idle(_) => None,
        }
    }

    /// Every slice of `v` starts at `epoch + k * 10 ms + offset` (k =
    /// 0..frames) and runs `len`.
    fn assert_windows(sim: &Sim<Table>, v: u32, epoch: u64, offset: u64, len: u64, frames: u64) {
        let got: Vec<(u64, u64)> = sim.slices_of(v).iter().map(|s| (s.start, s.ran)).collect();
        let want: Vec<(u64, u64)> = (0..frames)
            .map(|k| (epoch + k * 10 * MS + offset, len))
            .collect();
        assert_eq!(got, want, "v{v}");
    }

    #[test]
    fn windows_start_on_the_frame_grid_and_last_exactly() {
        // The epoch is the first clock reading, not zero.
        let epoch = 3 * MS + 123;
        let mut sim = Sim::starting_at(ab("idle"), epoch);
        sim.add(1, &SchedParams::default(), Demand::Hog);
        sim.add(2, &SchedParams::default(), Demand::Hog);
        sim.run_until(epoch + 1_000 * MS);
        assert_windows(&sim, 1, epoch, 0, 2 * MS, 100);
        assert_windows(&sim, 2, epoch, 2 * MS, 5 * MS, 100);
        assert_eq!(sim.ran(1), 200 * MS);
        assert_eq!(sim.ran(2), 500 * MS);
        assert_eq!(sim.idle, 300 * MS, "3 ms of slack per frame");
        assert_eq!(figure(&sim.policy, 1, "windows"), 1);
        assert_eq!(figure(&sim.policy, 2, "window_us"), 5000);
        assert_eq!(figure(&sim.policy, 2, "debt_us"), 0);
        assert_eq!(figure(&sim.policy, 1, "picks"), 100);
    }

    #[test]
    fn fill_rr_gives_the_slack_to_a_third_vcoproc() {
        let epoch = 42;
        let mut sim = Sim::starting_at(ab("rr"), epoch);
        sim.add(1, &SchedParams::default(), Demand::Hog);
        sim.add(2, &SchedParams::default(), Demand::Hog);
        sim.add(3, &SchedParams::default(), Demand::Hog);
        sim.run_until(epoch + 1_000 * MS);
        assert_windows(&sim, 1, epoch, 0, 2 * MS, 100);
        assert_windows(&sim, 2, epoch, 2 * MS, 5 * MS, 100);
        // The owners just had their turn: the slack goes to the third.
        assert_windows(&sim, 3, epoch, 7 * MS, 3 * MS, 100);
        assert_eq!(sim.idle, 0);
        // With fill=idle the third never runs.
        let mut sim = Sim::starting_at(ab("idle"), epoch);
        for v in 1..=3 {
            sim.add(v, &SchedParams::default(), Demand::Hog);
        }
        sim.run_until(epoch + 1_000 * MS);
        assert_eq!(sim.ran(3), 0);
        assert_eq!(sim.idle, 300 * MS);
    }

    #[test]
    fn an_absent_owner_leaves_its_window_idle() {
        let mut sim = Sim::starting_at(ab("idle"), 0);
        sim.add(1, &SchedParams::default(), Demand::Hog);
        sim.add(2, &SchedParams::default(), Demand::Off);
        sim.run_until(1_000 * MS);
        assert_windows(&sim, 1, 0, 0, 2 * MS, 100);
        assert_eq!(sim.idle, 800 * MS);
        // Unless slack is filled: then v1 fills v2's window and the gap.
        let mut sim = Sim::starting_at(ab("rr"), 0);
        sim.add(1, &SchedParams::default(), Demand::Hog);
        sim.add(2, &SchedParams::default(), Demand::Off);
        sim.run_until(1_000 * MS);
        assert_eq!(sim.idle, 0);
        let starts: Vec<u64> = sim.slices_of(1).iter().take(3).map(|s| s.start).collect();
        assert_eq!(starts, [0, 2 * MS, 7 * MS]);
        // A window of a vcoproc never attached stays idle too.
        let t = Table::new(
            Duration::from_millis(10),
            vec![
                Window {
                    vcoproc: VcoprocId(1),
                    offset: Duration::ZERO,
                    len: Duration::from_millis(2),
                },
                Window {
                    vcoproc: VcoprocId(99),
                    offset: Duration::from_millis(2),
                    len: Duration::from_millis(8),
                },
            ],
            Fill::Idle,
        )
        .unwrap();
        let mut sim = Sim::starting_at(t, 0);
        sim.add(1, &SchedParams::default(), Demand::Hog);
        sim.run_until(1_000 * MS);
        assert_windows(&sim, 1, 0, 0, 2 * MS, 100);
        assert_eq!(sim.idle, 800 * MS);
    }

    #[test]
    fn an_owner_waking_in_its_window_preempts_a_filler() {
        // v1: a job of 500 us every 10 ms, released 300 us into its window;
        // v3 (no window) fills all slack.
        let mut sim = Sim::starting_at(ab("rr"), 0);
        sim.add(3, &SchedParams::default(), Demand::Hog);
        sim.add(
            1,
            &SchedParams::default(),
            Demand::Periodic {
                job: 500 * US,
                period: 10 * MS,
                first: 300 * US,
            },
        );
        sim.add(2, &SchedParams::default(), Demand::Off);
        sim.run_until(1_000 * MS);
        assert_windows(&sim, 1, 0, 300 * US, 500 * US, 100);
        assert!(sim
            .wakes
            .iter()
            .all(|&(v, _, a)| v == 1 && a == WakeAction::Preempt));
        assert_eq!(sim.ran(3), 1_000 * MS - 50 * MS);
        assert_eq!(sim.idle, 0);
        // The same by hand, and a non-owner's wake-up preempts nobody.
        let mut t = ab("rr");
        for v in 1..=4 {
            t.attach(VcoprocId(v), &SchedParams::default()).unwrap();
        }
        t.wake(VcoprocId(3), 0);
        assert_eq!(run_of(t.pick(0)), Some((3, 2 * MS)), "fills v1's window");
        assert_eq!(t.wake(VcoprocId(2), 100 * US), WakeAction::None);
        assert_eq!(t.wake(VcoprocId(4), 200 * US), WakeAction::None);
        assert_eq!(t.wake(VcoprocId(1), 500 * US), WakeAction::Preempt);
        t.charge(
            VcoprocId(3),
            Duration::from_micros(500),
            500 * US,
            PREEMPTED,
        );
        assert_eq!(run_of(t.pick(500 * US)), Some((1, 1_500 * US)));
        // With fill=idle, nothing runs to preempt: the wake-up just queues.
        let mut t = ab("idle");
        t.attach(VcoprocId(1), &SchedParams::default()).unwrap();
        t.attach(VcoprocId(3), &SchedParams::default()).unwrap();
        t.wake(VcoprocId(3), 0);
        assert_eq!(t.pick(0), Decision::Idle(Some(Duration::from_millis(2))));
        assert_eq!(t.wake(VcoprocId(1), 500 * US), WakeAction::None);
        assert_eq!(run_of(t.pick(500 * US)), Some((1, 1_500 * US)));
    }

    #[test]
    fn overrun_is_debt_taken_from_the_next_window() {
        // v1 stops only between jobs: it runs 300 us past every budget.
        let mut sim = Sim::starting_at(ab("idle"), 0);
        sim.add(1, &SchedParams::default(), Demand::Hog).overrun = 300 * US;
        sim.add(2, &SchedParams::default(), Demand::Hog);
        sim.run_until(1_000 * MS);
        let s1 = sim.slices_of(1);
        let s2 = sim.slices_of(2);
        assert_eq!(s1.len(), 100);
        assert_eq!(s2.len(), 100);
        // Frame 0: v1 overruns into v2's window, which still ends on time.
        assert_eq!(
            (s1[0].start, s1[0].budget, s1[0].ran),
            (0, 2 * MS, 2_300 * US)
        );
        assert_eq!((s2[0].start, s2[0].ran), (2_300 * US, 4_700 * US));
        // Later frames: every window starts on time; v1's budget is short
        // by its debt, so with the overrun it ends at its window's end.
        for k in 1..100 {
            assert_eq!(
                (s1[k].start, s1[k].budget, s1[k].ran),
                (k as u64 * 10 * MS, 1_700 * US, 2 * MS)
            );
            assert_eq!(
                (s2[k].start, s2[k].ran),
                (k as u64 * 10 * MS + 2 * MS, 5 * MS)
            );
        }
        assert_eq!(figure(&sim.policy, 1, "debt_us"), 300);
        assert_eq!(figure(&sim.policy, 1, "overrun_us"), 100 * 300);
        assert_eq!(sim.ran(1), 200 * MS + 300 * US, "its windows and the debt");
    }

    #[test]
    fn debt_longer_than_a_window_is_paid_over_several() {
        let mut t = Table::from_params(&kv(&[
            ("frame_us", "10000"),
            ("window", "1:0:2000"),
            ("fill", "rr"),
        ]))
        .unwrap();
        t.attach(VcoprocId(1), &SchedParams::default()).unwrap();
        t.wake(VcoprocId(1), 0);
        assert_eq!(run_of(t.pick(0)), Some((1, 2 * MS)));
        t.charge(VcoprocId(1), Duration::from_millis(7), 7 * MS, RUN);
        assert_eq!(figure(&t, 1, "debt_us"), 5000);
        // Slack outside any window is still filled by it...
        assert_eq!(run_of(t.pick(7 * MS)), Some((1, 3 * MS)));
        t.charge(VcoprocId(1), Duration::from_millis(3), 10 * MS, RUN);
        // ...but its own window pays the debt: 2 ms now, 2 ms next frame.
        assert_eq!(
            t.pick(10 * MS),
            Decision::Idle(Some(Duration::from_millis(10)))
        );
        assert_eq!(figure(&t, 1, "debt_us"), 3000);
        assert_eq!(run_of(t.pick(12 * MS)), Some((1, 5 * MS)), "slack");
        t.charge(VcoprocId(1), Duration::from_millis(5), 17 * MS, PREEMPTED);
        assert_eq!(run_of(t.pick(17 * MS)), Some((1, 3 * MS)));
        t.charge(VcoprocId(1), Duration::from_millis(3), 20 * MS, RUN);
        assert_eq!(
            t.pick(20 * MS),
            Decision::Idle(Some(Duration::from_millis(10)))
        );
        // Last 1 ms of debt: 1 ms of the window left.
        assert_eq!(run_of(t.pick(30 * MS)), Some((1, MS)));
        assert_eq!(figure(&t, 1, "debt_us"), 0);
        // Preempted in its window, it gets the same cut end back.
        t.charge(
            VcoprocId(1),
            Duration::from_micros(400),
            30 * MS + 400 * US,
            PREEMPTED,
        );
        assert_eq!(run_of(t.pick(30 * MS + 400 * US)), Some((1, 600 * US)));
        // Fill overruns are counted but are no debt.
        t.charge(VcoprocId(1), Duration::from_micros(600), 31 * MS, RUN);
        assert_eq!(run_of(t.pick(32 * MS)), Some((1, 5 * MS)));
        t.charge(VcoprocId(1), Duration::from_millis(6), 38 * MS, RUN);
        assert_eq!(figure(&t, 1, "debt_us"), 0);
        assert_eq!(figure(&t, 1, "overrun_us"), 5000 + 1000);
    }

    #[test]
    fn window_edges() {
        // Adjacent windows; less than 1 us left of a window is none.
        let mut t = Table::from_params(&kv(&[
            ("frame_us", "10000"),
            ("window", "1:0:2000"),
            ("window", "2:2000:1000"),
        ]))
        .unwrap();
        for v in 1..=2 {
            t.attach(VcoprocId(v), &SchedParams::default()).unwrap();
        }
        t.wake(VcoprocId(1), 0);
        assert_eq!(run_of(t.pick(0)), Some((1, 2 * MS)));
        t.charge(
            VcoprocId(1),
            Duration::from_nanos(2 * MS - 500),
            2 * MS - 500,
            RUN,
        );
        assert_eq!(
            t.pick(2 * MS - 500),
            Decision::Idle(Some(Duration::from_nanos(500)))
        );
        assert_eq!(
            t.pick(2 * MS - 1_000),
            Decision::Run {
                vcoproc: VcoprocId(1),
                budget: Duration::from_micros(1),
            }
        );
        t.charge(VcoprocId(1), Duration::from_micros(1), 2 * MS, RUN);
        t.wake(VcoprocId(2), 2 * MS);
        assert_eq!(run_of(t.pick(2 * MS)), Some((2, MS)));
        t.charge(VcoprocId(2), Duration::from_millis(1), 3 * MS, RUN);
        // Past the last window: wait until the first one of the next frame.
        assert_eq!(
            t.pick(3 * MS),
            Decision::Idle(Some(Duration::from_millis(7)))
        );
        assert_eq!(run_of(t.pick(1_000 * MS + 2 * MS)), Some((2, MS)));
        // A clock behind the epoch counts as the epoch.
        let mut t = ab("idle");
        t.attach(VcoprocId(1), &SchedParams::default()).unwrap();
        t.wake(VcoprocId(1), 5 * MS);
        assert_eq!(run_of(t.pick(0)), Some((1, 2 * MS)));
        assert_eq!(run_of(t.pick(u64::MAX)).map(|r| r.0), None);
    }

    #[test]
    fn several_windows_per_vcoproc_and_none() {
        let t = Table::from_params(&kv(&[
            ("frame_us", "1000"),
            ("window", "v7:500:100"),
            ("window", "7:0:100"),
            ("window", "8:200:50"),
            ("fill", "rr"),
        ]))
        .unwrap();
        let mut sim = Sim::starting_at(t, 0);
        sim.add(7, &SchedParams::default(), Demand::Hog);
        sim.add(8, &SchedParams::default(), Demand::Hog);
        sim.add(9, &SchedParams::default(), Demand::Hog);
        sim.run_until(100 * MS);
        assert_eq!(figure(&sim.policy, 7, "windows"), 2);
        assert_eq!(figure(&sim.policy, 7, "window_us"), 200);
        assert_eq!(figure(&sim.policy, 9, "windows"), 0);
        assert_eq!(sim.idle, 0);
        // Every window ran its owner, whole.
        for k in 0..100 {
            let at = |off: u64| sim.slices.iter().find(|s| s.start == k * MS + off).copied();
            assert_eq!(at(0).map(|s| (s.v, s.ran)), Some((7, 100 * US)));
            assert_eq!(at(200 * US).map(|s| (s.v, s.ran)), Some((8, 50 * US)));
            assert_eq!(at(500 * US).map(|s| (s.v, s.ran)), Some((7, 100 * US)));
        }
        // The one without a window only got slack, and a good part of it.
        assert!(sim.ran(9) > 20 * MS, "{}", sim.ran(9));
        assert_eq!(sim.ran(7) + sim.ran(8) + sim.ran(9), 100 * MS);
    }

    #[test]
    fn parameters_and_invalid_tables() {
        let t = ab("rr");
        assert_eq!(t.name(), "table");
        assert_eq!(
            t.describe(),
            kv(&[
                ("frame_us", "10000"),
                ("window", "1:0:2000"),
                ("window", "2:2000:5000"),
                ("fill", "rr"),
            ])
        );
        // describe round-trips.
        let again = Table::from_params(&t.describe()).unwrap();
        assert_eq!(again.windows(), t.windows());
        assert_eq!(again.fill(), Fill::Rr);
        assert_eq!(again.frame(), Duration::from_millis(10));
        let t = Table::from_params(&kv(&[("frame_us", "100"), ("window", "1:0:10")])).unwrap();
        assert_eq!(t.fill(), Fill::Idle);
        assert!(super::super::build("table", &ab("idle").describe()).is_ok());

        let err = |items: &[(&str, &str)]| match Table::from_params(&kv(items)) {
            Err(PolicyError::BadParam(m)) => m,
            other => panic!("{items:?} accepted: {other:?}"),
        };
        let f = ("frame_us", "10000");
        let msg = err(&[f, ("window", "1:0:2000"), ("window", "2:1500:1000")]);
        assert!(msg.contains("overlap"), "{msg}");
        let msg = err(&[f, ("window", "1:9000:2000")]);
        assert!(msg.contains("past the frame"), "{msg}");
        let msg = err(&[f, ("window", "1:18446744073709551615:2000")]);
        assert!(msg.contains("past the frame"), "{msg}");
        let msg = err(&[f]);
        assert!(msg.contains("no windows"), "{msg}");
        let msg = err(&[("window", "1:0:2000")]);
        assert!(msg.contains("frame_us is required"), "{msg}");
        let msg = err(&[f, ("window", "1:0:9")]);
        assert!(msg.contains("shorter"), "{msg}");
        for bad in [
            "1:0",
            "1:0:2000:5",
            "x1:0:10",
            "v:0:10",
            "1:a:10",
            "1:0:-1",
            "",
        ] {
            let msg = err(&[f, ("window", bad)]);
            assert!(msg.contains("VCOPROC:OFFSET_US:LEN_US"), "{msg}");
        }
        assert!(err(&[f, ("window", "1:0:10"), ("fill", "fifo")]).contains("fill"));
        assert!(err(&[("frame_us", "99"), ("window", "1:0:10")]).contains("frame_us"));
        assert!(err(&[("frame_us", "10000001"), ("window", "1:0:10")]).contains("frame_us"));
        assert!(err(&[f, ("window", "1:0:10"), ("slice_us", "5")]).contains("slice_us"));
        // Exactly adjacent and exactly filling the frame is fine.
        assert!(
            Table::from_params(&kv(&[f, ("window", "2:5000:5000"), ("window", "1:0:5000")]))
                .is_ok()
        );
    }

    #[test]
    fn odd_calls_are_harmless() {
        let mut t = ab("rr");
        assert_eq!(t.pick(0), Decision::Idle(None));
        assert_eq!(t.wake(VcoprocId(1), 0), WakeAction::None, "unknown");
        t.block(VcoprocId(1));
        t.detach(VcoprocId(1));
        t.charge(VcoprocId(1), Duration::MAX, u64::MAX, RUN);
        assert!(t.set_params(VcoprocId(1), &SchedParams::default()).is_err());
        let bad = SchedParams {
            weight: 0,
            ..SchedParams::default()
        };
        assert!(t.attach(VcoprocId(1), &bad).is_err());
        t.attach(VcoprocId(1), &SchedParams::default()).unwrap();
        assert!(t.set_params(VcoprocId(1), &SchedParams::default()).is_ok());
        assert!(t.set_params(VcoprocId(1), &bad).is_err());
        // Charged without a pick (policy switched mid-slice): queued, no debt.
        t.charge(VcoprocId(1), Duration::MAX, 0, RUN);
        assert!(t.standings()[0].queued);
        assert_eq!(figure(&t, 1, "debt_us"), 0);
        assert_eq!(run_of(t.pick(0)), Some((1, 2 * MS)));
        // A huge overrun saturates.
        t.charge(VcoprocId(1), Duration::MAX, u64::MAX, RUN);
        let debt = (u64::MAX - 2 * MS) / 1_000;
        assert_eq!(figure(&t, 1, "debt_us"), debt as i64);
        // At the end of time: slack (9.55 ms into a frame), filled.
        assert_eq!(run_of(t.pick(u64::MAX)), Some((1, 448_385)));
        t.charge(VcoprocId(1), Duration::MAX, u64::MAX, RUN);
        assert_eq!(figure(&t, 1, "debt_us"), debt as i64, "no debt from fill");
        // Detached while running.
        assert_eq!(run_of(t.pick(7 * MS)), Some((1, 3 * MS)));
        t.detach(VcoprocId(1));
        t.charge(VcoprocId(1), Duration::from_millis(3), 10 * MS, RUN);
        assert!(t.standings().is_empty());
        assert_eq!(t.pick(10 * MS), Decision::Idle(None));
    }

    #[test]
    fn a_hundred_thousand_vcoprocs() {
        const N: u32 = 100_000;
        let mut t = ab("rr");
        for i in 0..N {
            t.attach(VcoprocId(i), &SchedParams::default()).unwrap();
            t.wake(VcoprocId(i), 0);
        }
        let mut now = 0;
        let mut fillers = vec![];
        for _ in 0..5_000 {
            let (v, budget) = run_of(t.pick(now)).unwrap();
            let pos = now % (10 * MS);
            match pos {
                p if p < 2 * MS => assert_eq!(v, 1),
                p if p < 7 * MS => assert_eq!(v, 2),
                _ => fillers.push(v),
            }
            // Jobs of 250 us.
            let ran = budget.min(250 * US);
            now += ran;
            t.charge(VcoprocId(v), Duration::from_nanos(ran), now, RUN);
        }
        // The slack went round robin, in wake-up order, skipping the owners.
        let want: Vec<u32> = (0..N)
            .filter(|&v| v != 1 && v != 2)
            .take(fillers.len())
            .collect();
        assert_eq!(fillers, want);
        assert_eq!(t.standings().len(), N as usize);
    }
}
