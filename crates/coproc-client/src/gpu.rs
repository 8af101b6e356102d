//! GPU vcoprocs (device class `vulkan`) through the SDK.
//!
//! A GPU has no firmware CPU: the device reads the vcoproc's submission
//! ring itself, on the daemon's runner thread, from the queue whose iova
//! the domain wrote into mailbox-in word [`MBOX_QUEUE`]. The firmware is a
//! shader module (WGSL text or a SPIR-V binary) given to
//! [`Client::load_firmware`]; its compute entry points are the pipelines.
//! Work is a [`Job`]: commands (bind, push, dispatch, copy, fill, barrier)
//! ending in a `signal`, whose completion says the job is done. Binds are
//! exact lengths in any bind group ([`Job::bind_group`]); push-constant
//! offsets are bytes, as in the shader. Specialization values (WGSL
//! overrides, SPIR-V specialization constants) go ahead of the module:
//! [`Specialized`].
//!
//! ```no_run
//! use coproc_client::{Client, Job, SharedMem, WireMapKind, WirePerms};
//! use std::time::Duration;
//! # fn main() -> Result<(), coproc_client::ClientError> {
//! let mut c = Client::connect()?;
//! let v = c.open("gpu0")?;
//! c.load_firmware(v, "saxpy", b"/* WGSL source */")?;
//! let (x, y) = (SharedMem::new(4096)?, SharedMem::new(4096)?);
//! c.map(v, &x, 0, 0x2000_0000, 4096, WirePerms::R, WireMapKind::Pinned)?;
//! c.map(v, &y, 0, 0x2100_0000, 4096, WirePerms::Rw, WireMapKind::Pinned)?;
//! let mut q = c.create_queue(v, 0x1000_0000, 64)?;
//! c.gpu_attach(v, &q)?;
//! c.start(v)?;
//! let job = Job::new()
//!     .bind(0, 0x2000_0000, 4096)
//!     .bind(1, 0x2100_0000, 4096)
//!     .push_f32(0, &[2.0])
//!     .push_u32(4, &[1024])
//!     .dispatch(0, [16, 1, 1])
//!     .signal(1);
//! let tag = q.submit_job(&job)?;
//! let done = q.wait_job(tag, Duration::from_secs(10))?;
//! println!("{} ns on the GPU", done.gpu_ns);
//! # Ok(())
//! # }
//! ```
//!
//! [`crate::Queue::submit_job`] picks the tags (consecutive, one per
//! command) and returns the signal's; [`crate::Queue::wait_job`] returns
//! the signal's completion, or [`ClientError::Gpu`] when the device refused
//! a command of the job (the rest of the job is skipped; the error names
//! the command and the device's [`Status`]).

pub use coproc_proto::gpu::{
    op, Command, DecodeError, ImageFormat, Job, JobDone, Status, MAX_BINDING, MAX_GROUPS,
    MAX_IMAGE_SIZE, PUSH_PER_COMMAND, PUSH_WORDS,
};

use crate::{Client, ClientError, Cqe, Queue};
use std::collections::{HashMap, VecDeque};

/// Specialization values for WGSL overrides and SPIR-V specialization
/// constants, ahead of the shader module in the image given to
/// [`Client::load_firmware`]: `Specialized::new(wgsl).set("block",
/// 64.0).image()`.
pub use coproc_proto::shader::{SpecValue, Specialized};

/// Mailbox-in word the device reads the queue's iova from
/// (`coproc_abi::gpu::MBOX_QUEUE`).
#[allow(clippy::cast_possible_truncation)] // a mailbox word index, below 16
pub const MBOX_QUEUE: u32 = coproc_proto::gpu::MBOX_QUEUE as u32;

/// Mailbox-out words a `vulkan` vcoproc keeps up to date.
pub use coproc_proto::gpu::mbox_out;

/// A GPU vcoproc's counters, from its mailbox-out words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuCounters {
    /// Completions posted.
    pub posted: u32,
    /// Times the ring's submission tail was garbage.
    pub garbage: u32,
    /// Whether the queue named in mailbox-in word 0 was refused (not a
    /// writable mapping of this vcoproc holding a valid queue header).
    pub bad_queue: bool,
    /// Commands executed on the GPU.
    pub executed: u32,
    /// Commands refused.
    pub refused: u32,
}

impl GpuCounters {
    /// Decode mailbox-out words (missing words count as 0).
    pub fn from_words(words: &[u32]) -> GpuCounters {
        let w = |i: usize| words.get(i).copied().unwrap_or(0);
        GpuCounters {
            posted: w(mbox_out::POSTED),
            garbage: w(mbox_out::GARBAGE),
            bad_queue: w(mbox_out::BAD_QUEUE) != 0,
            executed: w(mbox_out::EXECUTED),
            refused: w(mbox_out::REFUSED),
        }
    }
}

/// The name of a GPU opcode ("bind", "dispatch", ...; "opcode N" if
/// unknown).
pub fn op_name(opcode: u32) -> String {
    match opcode {
        op::BIND => "bind".into(),
        op::PUSH => "push".into(),
        op::DISPATCH => "dispatch".into(),
        op::COPY => "copy".into(),
        op::FILL => "fill".into(),
        op::BARRIER => "barrier".into(),
        op::SIGNAL => "signal".into(),
        op::IMAGE => "image".into(),
        op::SAMPLER => "sampler".into(),
        other => format!("opcode {other}"),
    }
}

impl Client {
    /// Tell a `vulkan` vcoproc which queue to serve: writes the queue's
    /// iova into mailbox-in word [`MBOX_QUEUE`]. The device looks at it
    /// each time the vcoproc runs, so attach before the first
    /// [`Queue::submit_job`] (before or after `start`). The iova must fit
    /// 32 bits (the class's window does).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("gpu0")?;
    /// c.load_firmware(v, "saxpy", b"@compute @workgroup_size(64) fn main() {}")?;
    /// let mut q = c.create_queue(v, 0x1000_0000, 64)?;
    /// c.gpu_attach(v, &q)?;
    /// c.start(v)?;
    /// let signal = q.submit_job(&Job::new().dispatch(0, [1, 1, 1]))?;
    /// let done = q.wait_job(signal, Duration::from_secs(5))?;
    /// assert_eq!(done.status, Some(Status::Ok));
    /// # Ok(())
    /// # }
    /// ```
    pub fn gpu_attach(&mut self, vcoproc: u32, queue: &Queue) -> Result<(), ClientError> {
        let iova = u32::try_from(queue.iova()).map_err(|_| {
            ClientError::Invalid(format!(
                "queue iova {:#x} does not fit the 32-bit mailbox word of a GPU vcoproc",
                queue.iova()
            ))
        })?;
        self.mbox_write(vcoproc, MBOX_QUEUE, &[iova])
    }

    /// A `vulkan` vcoproc's counters (one `mbox-read`).
    pub fn gpu_counters(&mut self, vcoproc: u32) -> Result<GpuCounters, ClientError> {
        let (words, _) = self.mbox_read(vcoproc)?;
        Ok(GpuCounters::from_words(&words))
    }
}

/// An outstanding job: its tags are `first..=signal`.
#[derive(Debug, Clone, Copy)]
struct Open {
    first: u32,
    len: u32,
}

/// What a queue knows about the jobs it submitted: tags, completions taken
/// from the ring but not yet asked for, jobs given up on.
#[derive(Debug)]
pub(crate) struct Jobs {
    next_tag: u32,
    /// By signal tag.
    open: HashMap<u32, Open>,
    /// Completions taken from the ring, not yet claimed by `wait_job`.
    done: VecDeque<Cqe>,
    /// Jobs given up on (the error was already returned), by signal tag:
    /// their completions are dropped when they come.
    abandoned: HashMap<u32, Open>,
}

/// What [`Jobs::claim`] found for one job.
#[derive(Debug)]
pub(crate) enum Claim {
    /// Nothing yet.
    Pending,
    /// The job is over: its signal's completion, or the error to return.
    Done(Result<JobDone, ClientError>),
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs {
            next_tag: 1,
            open: HashMap::new(),
            done: VecDeque::new(),
            abandoned: HashMap::new(),
        }
    }
}

impl Jobs {
    /// Check a job and pick its tags: (first, signal). Nothing is recorded
    /// until [`Jobs::commit`].
    pub(crate) fn plan(&self, job: &Job) -> Result<(u32, u32), ClientError> {
        if let Some(why) = job.error() {
            return Err(ClientError::Invalid(why.to_string()));
        }
        let cmds = job.commands();
        let Some(last) = cmds.last() else {
            return Err(ClientError::Invalid("an empty job".into()));
        };
        if !matches!(last, Command::Signal { .. }) {
            return Err(ClientError::Invalid(
                "a job must end with a signal (Job::signal)".into(),
            ));
        }
        if cmds[..cmds.len() - 1]
            .iter()
            .any(|c| matches!(c, Command::Signal { .. }))
        {
            return Err(ClientError::Invalid(
                "a job has one signal, at its end (submit several jobs instead)".into(),
            ));
        }
        let len = u32::try_from(cmds.len())
            .ok()
            .filter(|&n| n < 1 << 24)
            .ok_or_else(|| ClientError::Invalid(format!("a job of {} commands", cmds.len())))?;
        let first = self.next_tag;
        Ok((first, first.wrapping_add(len - 1)))
    }

    /// Record a job about to be submitted (its tags are used from now on).
    pub(crate) fn commit(&mut self, first: u32, signal: u32) {
        let len = signal.wrapping_sub(first).wrapping_add(1);
        self.next_tag = signal.wrapping_add(1);
        // Tags wrapped onto a job given up on long ago: forget it.
        self.abandoned.retain(|_, o| {
            first.wrapping_sub(o.first) >= o.len && o.first.wrapping_sub(first) >= len
        });
        self.open.insert(signal, Open { first, len });
    }

    /// Give up on a job: its completions are dropped when they come.
    pub(crate) fn abandon(&mut self, signal: u32) {
        if let Some(o) = self.open.remove(&signal) {
            self.done.retain(|c| c.tag.wrapping_sub(o.first) >= o.len);
            self.abandoned.insert(signal, o);
        }
    }

    /// Whether `signal` is the signal tag of an outstanding job.
    #[cfg(test)]
    pub(crate) fn is_open(&self, signal: u32) -> bool {
        self.open.contains_key(&signal)
    }

    /// A completion taken from the ring: kept if it belongs to an
    /// outstanding job; dropped if it belongs to an abandoned one (the
    /// abandoned job is forgotten once its signal comes) or to no job.
    pub(crate) fn push(&mut self, c: Cqe) {
        let within = |o: &Open| c.tag.wrapping_sub(o.first) < o.len;
        if self.open.values().any(within) {
            self.done.push_back(c);
        } else if let Some((&signal, _)) = self.abandoned.iter().find(|(_, o)| within(o)) {
            if c.tag == signal {
                self.abandoned.remove(&signal);
            }
        }
    }

    /// Take the completions of job `signal` that arrived: `refused` keeps
    /// the first refusal seen across calls.
    pub(crate) fn claim(&mut self, signal: u32, refused: &mut Option<ClientError>) -> Claim {
        let Some(o) = self.open.get(&signal).copied() else {
            return Claim::Done(Err(ClientError::Invalid(format!(
                "tag {signal} is not the signal of a job this queue has outstanding"
            ))));
        };
        let mine = |c: &Cqe| c.tag.wrapping_sub(o.first) < o.len;
        while let Some(pos) = self.done.iter().position(mine) {
            let Some(c) = self.done.remove(pos) else {
                break;
            };
            let index = c.tag.wrapping_sub(o.first);
            if c.tag == signal {
                self.open.remove(&signal);
                if let Some(e) = refused.take() {
                    return Claim::Done(Err(e));
                }
                return Claim::Done(match Status::from_u32(c.status) {
                    Some(Status::Ok) => Ok(JobDone::from_cqe(&c)),
                    Some(status) => Err(ClientError::Gpu {
                        status,
                        opcode: op::SIGNAL,
                        index,
                        tag: c.tag,
                    }),
                    None => Err(ClientError::Protocol(format!(
                        "GPU completion of tag {} with unknown status {}",
                        c.tag, c.status
                    ))),
                });
            }
            // Only refusals get completions of their own.
            if refused.is_none() {
                *refused = Some(match Status::from_u32(c.status) {
                    Some(status) => ClientError::Gpu {
                        status,
                        opcode: c.result[0],
                        index,
                        tag: c.tag,
                    },
                    None => ClientError::Protocol(format!(
                        "GPU completion of tag {} with unknown status {}",
                        c.tag, c.status
                    )),
                });
            }
        }
        Claim::Pending
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

    fn cqe(tag: u32, status: Status, r0: u32) -> Cqe {
        let mut c = Cqe {
            tag,
            status: status as u32,
            ..Default::default()
        };
        c.result[0] = r0;
        c
    }

    fn job(n: usize) -> Job {
        (0..n).fold(Job::new(), |j, _| j.barrier()).signal(n as u32)
    }

    #[test]
    fn tags_are_consecutive_and_jobs_are_checked() {
        let mut j = Jobs::default();
        let (f, s) = j.plan(&job(3)).unwrap();
        assert_eq!((f, s), (1, 4));
        // Planning alone uses nothing.
        assert_eq!(j.plan(&job(0)).unwrap(), (1, 1));
        j.commit(f, s);
        assert_eq!(j.plan(&job(1)).unwrap(), (5, 6));
        assert!(j.is_open(4));
        for bad in [
            Job::new(),
            Job::new().barrier(),
            Job::new().signal(1).barrier().signal(2),
        ] {
            assert!(
                matches!(j.plan(&bad), Err(ClientError::Invalid(_))),
                "{bad:?}"
            );
        }
        // What the builder could not build is refused with its reason.
        for (bad, why) in [
            (
                Job::new().bind(0, 0x2000_0000, 0).signal(1),
                "bind of 0 bytes",
            ),
            (Job::new().push_u32(2, &[1]).signal(1), "byte offset 2"),
        ] {
            match j.plan(&bad) {
                Err(ClientError::Invalid(e)) => assert!(e.contains(why), "{e}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn signal_completion_is_the_answer() {
        let mut j = Jobs::default();
        j.commit(1, 3);
        let mut refused = None;
        assert!(matches!(j.claim(3, &mut refused), Claim::Pending));
        let mut c = cqe(3, Status::Ok, 42);
        c.result[1] = 5;
        c.result[2] = 1;
        j.push(c);
        match j.claim(3, &mut refused) {
            Claim::Done(Ok(d)) => {
                assert_eq!((d.tag, d.value, d.gpu_ns), (3, 42, (1 << 32) | 5));
            }
            other => panic!("{other:?}"),
        }
        assert!(!j.is_open(3));
        // Asking again: not outstanding.
        assert!(matches!(
            j.claim(3, &mut refused),
            Claim::Done(Err(ClientError::Invalid(_)))
        ));
    }

    #[test]
    fn refusal_is_a_typed_error_and_other_jobs_keep_their_completions() {
        let mut j = Jobs::default();
        j.commit(1, 4); // job A: tags 1..=4
        j.commit(5, 6); // job B: tags 5..=6
        let mut refused = None;
        // B's signal comes first, then A's refusal of its entry 2, then A's
        // aborted signal.
        j.push(cqe(6, Status::Ok, 9));
        j.push(cqe(3, Status::BadPipeline, op::DISPATCH));
        assert!(matches!(j.claim(4, &mut refused), Claim::Pending));
        assert!(refused.is_some());
        j.push(cqe(4, Status::Aborted, 4));
        let e = match j.claim(4, &mut refused) {
            Claim::Done(Err(e)) => e,
            other => panic!("{other:?}"),
        };
        match &e {
            ClientError::Gpu {
                status,
                opcode,
                index,
                tag,
            } => {
                assert_eq!(
                    (*status, *opcode, *index, *tag),
                    (Status::BadPipeline, op::DISPATCH, 2, 3)
                );
            }
            other => panic!("{other:?}"),
        }
        let text = e.to_string();
        assert!(text.contains(Status::BadPipeline.describe()), "{text}");
        assert!(text.contains("dispatch"), "{text}");
        assert_eq!(e.gpu_status(), Some(Status::BadPipeline));
        // B is untouched.
        let mut r = None;
        assert!(matches!(j.claim(6, &mut r), Claim::Done(Ok(d)) if d.value == 9));
    }

    #[test]
    fn aborted_signal_without_refusal_and_unknown_status_are_errors() {
        let mut j = Jobs::default();
        j.commit(1, 2);
        j.push(cqe(2, Status::Aborted, 0));
        let mut r = None;
        assert!(matches!(
            j.claim(2, &mut r),
            Claim::Done(Err(ClientError::Gpu {
                status: Status::Aborted,
                opcode: op::SIGNAL,
                index: 1,
                ..
            }))
        ));
        j.commit(3, 3);
        j.push(Cqe {
            tag: 3,
            status: 1234,
            ..Default::default()
        });
        assert!(matches!(
            j.claim(3, &mut r),
            Claim::Done(Err(ClientError::Protocol(_)))
        ));
    }

    #[test]
    fn abandoned_jobs_leave_nothing_behind() {
        let mut j = Jobs::default();
        j.commit(1, 3);
        j.commit(4, 5);
        j.push(cqe(2, Status::BadIova, op::BIND));
        j.abandon(3);
        assert!(!j.is_open(3));
        // Its late signal is dropped, the next job's completion kept.
        j.push(cqe(3, Status::Aborted, 0));
        j.push(cqe(5, Status::Ok, 1));
        assert_eq!(j.done.len(), 1);
        let mut r = None;
        assert!(matches!(j.claim(5, &mut r), Claim::Done(Ok(_))));
        assert!(j.done.is_empty() && j.abandoned.is_empty());
        // Completions of no job (raw entries) are dropped.
        j.push(cqe(999, Status::Ok, 0));
        assert!(j.done.is_empty());
    }

    #[test]
    fn tags_wrap() {
        let mut j = Jobs {
            next_tag: u32::MAX - 1,
            ..Default::default()
        };
        let (f, s) = j.plan(&job(3)).unwrap();
        // Four commands: tags MAX-1, MAX, 0, 1.
        assert_eq!((f, s), (u32::MAX - 1, 1));
        j.commit(f, s);
        j.push(cqe(0, Status::ReadOnly, op::FILL));
        j.push(cqe(1, Status::Aborted, 0));
        let mut r = None;
        assert!(matches!(
            j.claim(1, &mut r),
            Claim::Done(Err(ClientError::Gpu {
                status: Status::ReadOnly,
                index: 2,
                ..
            }))
        ));
    }

    #[test]
    fn counters_decode() {
        let c = GpuCounters::from_words(&[7, 1, 1, 5, 2, 0]);
        assert_eq!(
            c,
            GpuCounters {
                posted: 7,
                garbage: 1,
                bad_queue: true,
                executed: 5,
                refused: 2
            }
        );
        assert_eq!(GpuCounters::from_words(&[]), GpuCounters::default());
        assert_eq!(op_name(op::DISPATCH), "dispatch");
        assert_eq!(op_name(99), "opcode 99");
    }
}
