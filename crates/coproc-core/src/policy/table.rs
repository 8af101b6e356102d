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
                if self
                    .owner_end(v, start, end, now, false)
                    .saturating_sub(now)
                    >= MIN_RUN
                {
                    WakeAction::Preempt
                } else {
                    WakeAction::None
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
        if self.queue.is_empty() {
            Decision::Idle(None)
        } else {
            Decision::Idle(Some(Duration::from_nanos(next)))
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
mod tests;
