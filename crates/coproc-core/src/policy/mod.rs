//! Scheduling policies: one instance per pcoproc decides who runs next and
//! for how long.
//!
//! The runner drives a policy through a small protocol:
//! - [`Policy::attach`] / [`Policy::detach`] when a vcoproc joins or leaves;
//! - [`Policy::wake`] when a vcoproc becomes runnable (started, doorbell);
//!   the answer says whether the running vcoproc should be preempted;
//! - [`Policy::pick`] takes the next vcoproc out of the policy's run queue
//!   and gives its budget;
//! - [`Policy::charge`] after the slice with the time that actually ran and
//!   whether the vcoproc still wants to run (the policy requeues it then).
//!
//! A vcoproc is in the run queue between `wake`/`charge(runnable)` and the
//! `pick` that takes it. Time is charged from the device's measurement of
//! what ran, never from ticks.

mod credit;
mod priority;
mod rr;
mod rt;
mod runqueue;
mod table;
#[cfg(test)]
mod testkit;

pub use credit::Credit;
pub use priority::Priority;
pub use rr::RoundRobin;
pub use rt::Rt;
pub use table::Table;

use crate::ids::VcoprocId;
use serde::Serialize;
use std::time::Duration;
use thiserror::Error;

/// Errors of policies.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// Unknown vcoproc.
    #[error("{0} is not scheduled by this policy")]
    Unknown(VcoprocId),
    /// A parameter out of range.
    #[error("bad parameter: {0}")]
    BadParam(String),
}

/// Per-vcoproc scheduling parameters. Each policy reads the ones it uses;
/// the others are kept so a policy switch finds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SchedParams {
    /// Relative share under fair-share policies.
    pub weight: u32,
    /// Most percent of the device this vcoproc may get (None: no cap).
    pub cap_pct: Option<u32>,
    /// Fixed priority, higher runs first.
    pub priority: i32,
    /// Reservation: budget per period.
    pub reservation: Option<(Duration, Duration)>,
}

impl Default for SchedParams {
    fn default() -> Self {
        SchedParams {
            weight: 256,
            cap_pct: None,
            priority: 0,
            reservation: None,
        }
    }
}

impl SchedParams {
    /// Check ranges that hold for every policy.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.weight == 0 || self.weight > 65535 {
            return Err(PolicyError::BadParam(format!(
                "weight {} not in 1..=65535",
                self.weight
            )));
        }
        if let Some(c) = self.cap_pct {
            if c == 0 || c > 100 {
                return Err(PolicyError::BadParam(format!("cap {c}% not in 1..=100")));
            }
        }
        if let Some((b, p)) = self.reservation {
            if b.is_zero() || b > p {
                return Err(PolicyError::BadParam(format!(
                    "budget {b:?} must be non-zero and at most the period {p:?}"
                )));
            }
        }
        Ok(())
    }
}

/// What `wake` asks of the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeAction {
    /// Nothing; the woken vcoproc waits its turn.
    None,
    /// Cut the running vcoproc's slice short through the preempt handle.
    Preempt,
}

/// What `pick` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run this vcoproc for at most this long.
    Run {
        /// Who.
        vcoproc: VcoprocId,
        /// Budget of the slice.
        budget: Duration,
    },
    /// Nothing to run; ask again after this long (None: when woken).
    Idle(Option<Duration>),
}

/// How a slice ended, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceEnd {
    /// Still wants the device (budget spent or preempted, not waiting/faulted).
    pub runnable: bool,
    /// Cut short by a preempt request before its budget ran out.
    pub preempted: bool,
    /// Stopped because it had nothing to do (its queue empty, waiting for
    /// a doorbell): more work may come at any moment. Not set for a fault,
    /// an exit or a stall.
    pub waiting: bool,
}

/// One vcoproc's standing under the policy, for `sched-get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Standing {
    /// The vcoproc.
    pub vcoproc: VcoprocId,
    /// Whether it is in the run queue now.
    pub queued: bool,
    /// Policy-specific figures (name, value).
    pub figures: Vec<(String, i64)>,
}

/// A scheduling algorithm attached to one pcoproc.
pub trait Policy: Send {
    /// Short name ("rr", "credit", ...).
    fn name(&self) -> &'static str;

    /// Policy-wide parameters as (name, value) text pairs.
    fn describe(&self) -> Vec<(String, String)>;

    /// A vcoproc joins (not yet runnable).
    fn attach(&mut self, v: VcoprocId, params: &SchedParams) -> Result<(), PolicyError>;

    /// A vcoproc leaves (wherever it is).
    fn detach(&mut self, v: VcoprocId);

    /// Change a vcoproc's parameters; effective at the next decision.
    fn set_params(&mut self, v: VcoprocId, params: &SchedParams) -> Result<(), PolicyError>;

    /// `v` became runnable at `now_ns`.
    fn wake(&mut self, v: VcoprocId, now_ns: u64) -> WakeAction;

    /// `v` stopped being runnable while queued (halted, reset, faulted by a
    /// switch) and must leave the run queue.
    fn block(&mut self, v: VcoprocId);

    /// Take the next vcoproc to run.
    fn pick(&mut self, now_ns: u64) -> Decision;

    /// `v` ran for `ran` (measured); requeue it if `end.runnable`.
    fn charge(&mut self, v: VcoprocId, ran: Duration, now_ns: u64, end: SliceEnd);

    /// The device spent `took` on `v`'s behalf outside its slices (its
    /// commands: create, load, map, unmap, reset, and the clean-up of its
    /// revoked mappings), measured at `now_ns`. A policy that shares time
    /// charges it like running time, without changing where `v` is (queued
    /// or not); the default, for policies that do not account time, ignores
    /// it.
    fn charge_work(&mut self, v: VcoprocId, took: Duration, now_ns: u64) {
        let _ = (v, took, now_ns);
    }

    /// Standing of every attached vcoproc.
    fn standings(&self) -> Vec<Standing>;
}

/// The policies [`build`] knows.
pub const POLICIES: &[&str] = &["rr", "credit", "priority", "rt", "table"];

/// Make policy `name` from its `key=value` parameters (configuration,
/// `sched-set`). Unknown names and parameters are errors.
pub fn build(name: &str, params: &[(String, String)]) -> Result<Box<dyn Policy>, PolicyError> {
    Ok(match name {
        "rr" => Box::new(RoundRobin::from_params(params)?),
        "credit" => Box::new(Credit::from_params(params)?),
        "priority" => Box::new(Priority::from_params(params)?),
        "rt" => Box::new(Rt::from_params(params)?),
        "table" => Box::new(Table::from_params(params)?),
        other => {
            return Err(PolicyError::BadParam(format!(
                "unknown policy {other:?} (known: {})",
                POLICIES.join(", ")
            )))
        }
    })
}

/// Refuse parameters a policy does not know.
/// A count or time as a standing's figure (figures are `i64`, where -1
/// means "none"); one past `i64::MAX` shows as `i64::MAX`.
pub(crate) fn figure(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `d` in whole microseconds as a standing's figure.
pub(crate) fn figure_us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

pub(crate) fn check_known(
    policy: &str,
    params: &[(String, String)],
    known: &[&str],
) -> Result<(), PolicyError> {
    match params.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        Some((k, _)) => Err(PolicyError::BadParam(format!(
            "{policy} has no parameter {k:?} (known: {})",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// The last value given for `key`, if any.
pub(crate) fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// An integer parameter in `min..=max`.
pub(crate) fn parse_u64(key: &str, value: &str, min: u64, max: u64) -> Result<u64, PolicyError> {
    let n: u64 = value
        .trim()
        .parse()
        .map_err(|_| PolicyError::BadParam(format!("{key}={value:?} is not a number")))?;
    if n < min || n > max {
        return Err(PolicyError::BadParam(format!(
            "{key}={n} not in {min}..={max}"
        )));
    }
    Ok(n)
}

/// A duration parameter given in microseconds, in `min..=max`.
pub(crate) fn parse_us(
    key: &str,
    value: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, PolicyError> {
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let us = parse_u64(key, value, micros(min), micros(max))?;
    Ok(Duration::from_micros(us))
}

#[cfg(test)]
mod build_tests {
    use super::*;

    fn kv(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn unknown_names_and_parameters_are_refused() {
        assert!(build("fifo", &[]).is_err());
        assert!(build("rr", &kv(&[("weight", "3")])).is_err());
        assert!(build("rr", &kv(&[("slice_us", "ten")])).is_err());
        assert!(build("rr", &kv(&[("slice_us", "1")])).is_err());
        let rr = build("rr", &kv(&[("slice_us", "2000")])).unwrap();
        assert_eq!(rr.name(), "rr");
        assert_eq!(rr.describe(), vec![("slice_us".into(), "2000".into())]);
    }
}
