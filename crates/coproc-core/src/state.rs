//! The vcoproc state machine.
//!
//! ```text
//!  Created --load--> Loaded --start--> Runnable <--wake-- Waiting
//!                      ^  (stop: Runnable/Waiting --> Loaded, resumes on start)
//!                      ^                 |   ^              ^
//!                      |               pick  | slice end    | wait
//!                    reset               v   |              |
//!                      |              Running ---------------+
//!                   Faulted <--fault----/  \--exit--> Stopped --reset--> Loaded
//!  (any state) --destroy--> Destroyed      (a failed switch may fault a Runnable or Waiting one)
//!
//!  Demand faults (opt-in per vcoproc):
//!  Running --page fault--> Stalled --map covering the address (resolve)--> Runnable
//!                            |  \--timeout (fault)--> Faulted
//!                            \--stop--> Loaded, --reset--> Loaded, --destroy--> Destroyed
//! ```
//!
//! Every change goes through [`VcoprocState::apply`], which refuses the
//! transitions the diagram does not have.

use serde::Serialize;
use std::fmt;
use thiserror::Error;

/// Where a vcoproc is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VcoprocState {
    /// Context exists, no firmware yet.
    Created,
    /// Firmware loaded (or reloaded by a reset), not started.
    Loaded,
    /// Wants the device; the policy will pick it.
    Runnable,
    /// On the device now.
    Running,
    /// Parked until its domain rings the doorbell.
    Waiting,
    /// The firmware exited.
    Stopped,
    /// Took a fault; keeps its record until reset or destroyed.
    Faulted,
    /// Gone; no further transitions.
    Destroyed,
    /// Stopped on a missing page (demand faults): out of the run queue
    /// until its domain maps the page or the stall times out.
    Stalled,
}

impl VcoprocState {
    /// Every state, in the order of [`VcoprocState::code`].
    pub const ALL: [VcoprocState; 9] = [
        VcoprocState::Created,
        VcoprocState::Loaded,
        VcoprocState::Runnable,
        VcoprocState::Running,
        VcoprocState::Waiting,
        VcoprocState::Stopped,
        VcoprocState::Faulted,
        VcoprocState::Destroyed,
        VcoprocState::Stalled,
    ];

    /// A small number for the state (its index in [`VcoprocState::ALL`]),
    /// so it can be published through an atomic.
    pub fn code(self) -> u8 {
        VcoprocState::ALL
            .iter()
            .position(|&s| s == self)
            .map_or(u8::MAX, |i| u8::try_from(i).unwrap_or(u8::MAX))
    }

    /// The state of a [`VcoprocState::code`] (None for any other number).
    pub fn from_code(code: u8) -> Option<VcoprocState> {
        VcoprocState::ALL.get(usize::from(code)).copied()
    }
}

/// Something that happens to a vcoproc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Firmware loaded into a fresh context.
    Load,
    /// The domain starts it.
    Start,
    /// The runner put it on the device.
    Pick,
    /// Its slice ended (budget, preemption) and it still wants to run.
    SliceEnd,
    /// It parked waiting for a doorbell.
    Wait,
    /// A doorbell woke it.
    Wake,
    /// Its firmware exited.
    Exit,
    /// It faulted.
    Fault,
    /// Reset to its freshly loaded firmware.
    Reset,
    /// Stopped by its domain (paused: kept loaded, resumes where it was on
    /// the next start).
    Halt,
    /// Destroyed.
    Destroy,
    /// It touched a missing page with demand faults on: it stalls.
    PageFault,
    /// A mapping now covers the address it stalled on: it retries.
    Resolve,
}

/// A transition the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("vcoproc is {from}: cannot {event:?}")]
pub struct TransitionError {
    /// The state it was in.
    pub from: VcoprocState,
    /// What was attempted.
    pub event: Event,
}

impl VcoprocState {
    /// The state after `event`, or an error if the transition is not allowed.
    pub fn apply(self, event: Event) -> Result<VcoprocState, TransitionError> {
        use Event as E;
        use VcoprocState as S;
        let next = match (self, event) {
            (S::Destroyed, _) => None,
            (_, E::Destroy) => Some(S::Destroyed),
            (S::Created | S::Loaded, E::Load) => Some(S::Loaded),
            (S::Loaded, E::Start) => Some(S::Runnable),
            (S::Runnable, E::Pick) => Some(S::Running),
            (S::Running, E::SliceEnd) => Some(S::Runnable),
            (S::Running, E::Wait) => Some(S::Waiting),
            (S::Waiting, E::Wake) => Some(S::Runnable),
            (S::Running, E::Exit) => Some(S::Stopped),
            (S::Running, E::Fault) => Some(S::Faulted),
            // A failed context switch faults the context it blames, which
            // may be queued or parked rather than running.
            (S::Runnable | S::Waiting, E::Fault) => Some(S::Faulted),
            (S::Faulted | S::Stopped | S::Loaded | S::Runnable | S::Waiting, E::Reset) => {
                Some(S::Loaded)
            }
            (S::Runnable | S::Waiting, E::Halt) => Some(S::Loaded),
            (S::Running, E::PageFault) => Some(S::Stalled),
            (S::Stalled, E::Resolve) => Some(S::Runnable),
            // The stall timed out (or demand faults were turned off).
            (S::Stalled, E::Fault) => Some(S::Faulted),
            (S::Stalled, E::Reset | E::Halt) => Some(S::Loaded),
            _ => None,
        };
        next.ok_or(TransitionError { from: self, event })
    }

    /// Whether the policy should consider it.
    pub fn is_runnable(self) -> bool {
        self == VcoprocState::Runnable
    }
}

impl fmt::Display for VcoprocState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            VcoprocState::Created => "created",
            VcoprocState::Loaded => "loaded",
            VcoprocState::Runnable => "runnable",
            VcoprocState::Running => "running",
            VcoprocState::Waiting => "waiting",
            VcoprocState::Stopped => "stopped",
            VcoprocState::Faulted => "faulted",
            VcoprocState::Destroyed => "destroyed",
            VcoprocState::Stalled => "stalled",
        };
        f.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event as E;
    use VcoprocState as S;

    #[test]
    fn lifecycle() {
        let mut s = S::Created;
        for e in [
            E::Load,
            E::Start,
            E::Pick,
            E::Wait,
            E::Wake,
            E::Pick,
            E::Fault,
            E::Reset,
        ] {
            s = s.apply(e).unwrap();
        }
        assert_eq!(s, S::Loaded);
        assert_eq!(s.apply(E::Start).unwrap(), S::Runnable);
    }

    #[test]
    fn refused_transitions() {
        assert!(
            S::Created.apply(E::Start).is_err(),
            "cannot start without firmware"
        );
        assert!(
            S::Faulted.apply(E::Pick).is_err(),
            "a faulted vcoproc never runs"
        );
        assert!(S::Waiting.apply(E::Pick).is_err());
        assert!(
            S::Running.apply(E::Load).is_err(),
            "no reload under the device"
        );
        assert!(S::Destroyed.apply(E::Reset).is_err());
        assert!(S::Destroyed.apply(E::Destroy).is_err());
        assert!(
            S::Faulted.apply(E::Halt).is_err(),
            "a faulted vcoproc is reset, not stopped"
        );
    }

    #[test]
    fn destroy_from_anywhere_else() {
        for s in [
            S::Created,
            S::Loaded,
            S::Runnable,
            S::Running,
            S::Waiting,
            S::Stopped,
            S::Faulted,
            S::Stalled,
        ] {
            assert_eq!(s.apply(E::Destroy).unwrap(), S::Destroyed);
        }
    }

    #[test]
    fn demand_fault_stall() {
        assert_eq!(S::Running.apply(E::PageFault).unwrap(), S::Stalled);
        assert_eq!(S::Stalled.apply(E::Resolve).unwrap(), S::Runnable);
        assert_eq!(S::Stalled.apply(E::Fault).unwrap(), S::Faulted);
        assert_eq!(S::Stalled.apply(E::Halt).unwrap(), S::Loaded);
        assert_eq!(S::Stalled.apply(E::Reset).unwrap(), S::Loaded);
        assert!(
            S::Stalled.apply(E::Pick).is_err(),
            "a stalled vcoproc never runs"
        );
        assert!(
            S::Stalled.apply(E::Wake).is_err(),
            "a doorbell does not end a stall"
        );
        assert!(S::Runnable.apply(E::PageFault).is_err());
        assert!(S::Waiting.apply(E::Resolve).is_err());
    }
}
