//! Queues: the data path. Submissions and completions go through rings in
//! shared memory; the only signals are eventfds (doorbell to the daemon,
//! completion back), never a message on the socket.
//!
//! For GPU vcoprocs, [`Queue::submit_job`] and [`Queue::wait_job`] carry
//! typed [`Job`]s (see [`crate::gpu`]).

use crate::gpu::{Claim, Jobs};
use crate::{ClientError, Job, JobDone, SharedMem};
use coproc_proto::queue::{self, Cqe, Producer, QueueMem, Sqe};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long [`Queue::submit_job`] waits for room in a full ring.
pub const SUBMIT_PATIENCE: Duration = Duration::from_secs(60);

/// A queue of one vcoproc, owned by the domain.
#[derive(Debug)]
pub struct Queue {
    mem: SharedMem,
    iova: u64,
    ring: Producer,
    /// Our submission tail (the producer's, mirrored).
    tail: u32,
    doorbell: OwnedFd,
    completion: OwnedFd,
    /// Someone may wait on the completion eventfd (it was handed out by
    /// [`Queue::completion_fd`]): the daemon writes it then, and
    /// [`Queue::wait`] sleeps on it; until then waits sleep on the
    /// completion tail (a shared futex the runner wakes directly).
    eventfd_used: AtomicBool,
    /// A doorbell was skipped (the device side polled) and none rung
    /// since: [`Queue::wait`] rings it before it sleeps.
    unrung: AtomicBool,
    /// Doorbells written, and skipped, so far.
    rung: AtomicU64,
    skipped: AtomicU64,
    /// GPU jobs: tags, completions not yet asked for.
    jobs: Jobs,
}

fn mem_err(e: rustix::io::Errno) -> ClientError {
    ClientError::Memory(e.to_string())
}

impl QueueMem for SharedMem {
    fn len(&self) -> u64 {
        QueueMem::len(self.region())
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) {
        self.region().read_at(off, buf);
    }
    fn write_at(&self, off: u64, data: &[u8]) {
        self.region().write_at(off, data);
    }
    fn load_index(&self, off: u64) -> u32 {
        self.region().load_index(off)
    }
    fn store_index(&self, off: u64, v: u32) {
        self.region().store_index(off, v);
    }
}

impl Queue {
    /// Ring memory, doorbell and completion eventfds for `entries` entries,
    /// header initialised. Hand it to the daemon with `Client::create_queue`.
    /// `poll_us`: the busy-poll budget (0: event-driven).
    pub(crate) fn new(iova: u64, entries: u32, poll_us: u32) -> Result<Queue, ClientError> {
        let bytes = queue::bytes_for(entries).ok_or_else(|| {
            ClientError::Memory(format!("{entries} entries: use a power of two up to 4096"))
        })?;
        let mem = SharedMem::new(bytes)?;
        let ring = Producer::init_with(&mem, entries, poll_us)
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        // Waits sleep on the completion tail until the eventfd is asked
        // for: the daemon need not write it meanwhile.
        mem.store_index(queue::OFF_CQ_WAKE, queue::CQ_WAKE_NO_EVENTFD);
        let flags = rustix::event::EventfdFlags::CLOEXEC;
        let doorbell = rustix::event::eventfd(0, flags).map_err(mem_err)?;
        let completion = rustix::event::eventfd(0, flags).map_err(mem_err)?;
        Ok(Queue {
            mem,
            iova,
            ring,
            tail: 0,
            doorbell,
            completion,
            eventfd_used: AtomicBool::new(false),
            unrung: AtomicBool::new(false),
            rung: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            jobs: Jobs::default(),
        })
    }

    pub(crate) fn fds(&self) -> [BorrowedFd<'_>; 3] {
        [
            self.mem.fd(),
            self.doorbell.as_fd(),
            self.completion.as_fd(),
        ]
    }

    /// The completion eventfd (to wait on it with your own poll/epoll; on a
    /// busy-poll queue call [`Queue::ring_skipped`] before you sleep).
    /// From the first call on, the daemon writes it after completions are
    /// posted (until then it need not: [`Queue::wait`] sleeps on the ring
    /// itself), and [`Queue::wait`] sleeps on it too.
    pub fn completion_fd(&self) -> BorrowedFd<'_> {
        if !self.eventfd_used.swap(true, Ordering::AcqRel) {
            // Clear the "no eventfd" bit (adding 2^31 toggles it; the
            // sleeper count in the low bits is untouched).
            let _ = self
                .mem
                .region()
                .as_shared()
                .add_u32(queue::OFF_CQ_WAKE, queue::CQ_WAKE_NO_EVENTFD);
        }
        self.completion.as_fd()
    }

    /// The doorbell eventfd ([`Queue::ring`] writes it).
    pub fn doorbell_fd(&self) -> BorrowedFd<'_> {
        self.doorbell.as_fd()
    }

    /// Where the vcoproc sees the ring memory.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Bytes of ring memory (what the firmware is told).
    pub fn len(&self) -> u64 {
        self.mem.len()
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Entries per ring.
    pub fn entries(&self) -> u32 {
        self.ring.entries()
    }

    /// The device side's submission head.
    pub fn sq_head(&self) -> u32 {
        self.ring.sq_head(&self.mem)
    }

    /// Put a submission in the ring; false if it is full. Publish with
    /// [`Queue::ring`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// let mut q = c.create_queue(v, 0x6000_0000, 64)?;
    /// for tag in 0..8 {
    ///     assert!(q.submit(&Sqe { opcode: 1, tag, args: [tag; 14] }), "ring full");
    /// }
    /// q.ring()?; // one doorbell for the batch
    /// # Ok(())
    /// # }
    /// ```
    pub fn submit(&mut self, sqe: &Sqe) -> bool {
        let ok = self.ring.submit(&self.mem, sqe);
        if ok {
            self.tail = self.tail.wrapping_add(1);
        }
        ok
    }

    /// Free submission slots (0 if the device's head makes no sense).
    fn room(&self) -> u32 {
        let used = self.tail.wrapping_sub(self.sq_head());
        self.entries().saturating_sub(used)
    }

    /// Ring the doorbell: one eventfd write, no message to the daemon. On
    /// a busy-poll queue whose device side says it is polling the
    /// submission tail (`OFF_SQ_POLLING`, read after a full fence), not
    /// even that: it will see what was submitted. Should that word be
    /// wrong (the firmware's to write), [`Queue::wait`] rings before it
    /// sleeps.
    pub fn ring(&self) -> Result<(), ClientError> {
        if !self.busy_poll().is_zero() && self.ring.device_polling(&self.mem) {
            self.unrung.store(true, Ordering::Release);
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.write_doorbell()
    }

    fn write_doorbell(&self) -> Result<(), ClientError> {
        self.unrung.store(false, Ordering::Release);
        rustix::io::write(&self.doorbell, &1u64.to_ne_bytes()).map_err(mem_err)?;
        self.rung.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Ring the doorbell if [`Queue::ring`] skipped one (the device side
    /// said it polled) and none was rung since. [`Queue::wait`] does this
    /// before it sleeps; call it before you sleep on
    /// [`Queue::completion_fd`] yourself, so that a polling word the
    /// firmware left set when it parked anyway cannot leave a submission
    /// unseen.
    pub fn ring_skipped(&self) -> Result<(), ClientError> {
        if self.unrung.swap(false, Ordering::AcqRel) {
            self.write_doorbell()?;
        }
        Ok(())
    }

    /// Doorbells this queue wrote, and skipped because the device side was
    /// polling, so far.
    pub fn doorbells(&self) -> (u64, u64) {
        (
            self.rung.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
        )
    }

    /// The busy-poll budget (zero: event-driven).
    pub fn busy_poll(&self) -> Duration {
        Duration::from_micros(u64::from(self.ring.poll_us()))
    }

    /// Wait until a completion may be ready (or `timeout`); true if one
    /// may be. With a busy-poll budget, first spin on the completion tail
    /// (one `Acquire` load per turn) for up to the budget: a completion
    /// posted meanwhile returns at once, without a system call. Otherwise
    /// (and after the budget) sleep until the device posts a completion:
    /// on the completion tail itself (a shared futex the daemon's runner
    /// wakes right after posting, no other thread in between), or, once
    /// [`Queue::completion_fd`] was asked for, on the completion eventfd.
    /// A `true` can be early (the eventfd still counts completions taken
    /// after a spin): take completions with [`Queue::complete`] and wait
    /// again if there are none.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("mcu0")?;
    /// let mut q = c.create_queue(v, 0x6000_0000, 64)?;
    /// q.submit(&Sqe { opcode: 1, tag: 1, args: [0; 14] });
    /// q.ring()?;
    /// while q.complete().is_none() {
    ///     if !q.wait(Duration::from_secs(1))? {
    ///         panic!("no completion in 1 s");
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn wait(&self, timeout: Duration) -> Result<bool, ClientError> {
        let budget = self.busy_poll().min(timeout);
        if !budget.is_zero() {
            let start = Instant::now();
            loop {
                if self.ring.ready(&self.mem) {
                    return Ok(true);
                }
                if start.elapsed() >= budget {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        // No completion within the spin: a doorbell skipped because the
        // device side said it polled is rung now, in case it parked after
        // all (a stale or wrong polling word costs at most this wait).
        self.ring_skipped()?;
        if !self.eventfd_used.load(Ordering::Acquire) {
            return Ok(self.sleep_on_tail(timeout));
        }
        let ts = rustix::time::Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&self.completion, PollFlags::IN)];
        loop {
            match poll(&mut fds, Some(&ts)) {
                Ok(0) => return Ok(false),
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) => {} // interrupted: again
                Err(e) => return Err(mem_err(e)),
            }
        }
        let mut b = [0u8; 8];
        rustix::io::read(&self.completion, &mut b).map_err(mem_err)?;
        Ok(true)
    }

    /// Sleep on the completion tail until it moves past our head, or
    /// `timeout`: counted in the ring's wake-up word first (the runner
    /// wakes counted sleepers right after it posts completions), then the
    /// tail is looked at, so a completion posted in between is never
    /// slept through.
    fn sleep_on_tail(&self, timeout: Duration) -> bool {
        let m = self.mem.region().as_shared();
        let deadline = Instant::now() + timeout;
        if m.add_u32(queue::OFF_CQ_WAKE, 1).is_err() {
            return true; // cannot happen: the header is in the ring memory
        }
        let ready = loop {
            if self.ring.ready(&self.mem) {
                break true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            let _ = m.wait_u32(queue::OFF_CQ_TAIL, self.ring.cq_head(), left);
        };
        let _ = m.add_u32(queue::OFF_CQ_WAKE, u32::MAX); // one sleeper less
        ready
    }

    /// Take the next completion, if the device posted one.
    pub fn complete(&mut self) -> Option<Cqe> {
        self.ring.complete(&self.mem)
    }

    /// Write any value as the submission tail (tests: garbage indices). A
    /// test hook, not public API: only with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn poke_sq_tail(&self, v: u32) {
        self.ring.poke_sq_tail(&self.mem, v);
    }

    /// The ring's completion wake-up word (sleepers, eventfd bit). A test
    /// hook, not public API: only with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn wake_word(&self) -> u32 {
        self.mem.load_index(queue::OFF_CQ_WAKE)
    }

    /// The ring's submission polling word (`OFF_SQ_POLLING`), and a value
    /// written over it, as a firmware could leave it (`Some`). A test hook,
    /// not public API: only with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn polling_word(&self, set: Option<u32>) -> u32 {
        if let Some(v) = set {
            self.mem.store_index(queue::OFF_SQ_POLLING, v);
        }
        self.mem.load_index(queue::OFF_SQ_POLLING)
    }

    /// A duplicate of the completion eventfd that does not ask the daemon
    /// to write it. A test hook, not public API: only with `test-hooks`.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn completion_fd_unrequested(&self) -> OwnedFd {
        self.completion
            .try_clone()
            .unwrap_or_else(|e| panic!("dup: {e}"))
    }

    /// Take the device's head as our tail again (after garbage).
    pub fn resync(&mut self) {
        self.ring.resync(&self.mem);
        self.tail = self.sq_head();
    }

    /// Move posted completions into the job table (those of no outstanding
    /// job are dropped); true if there were any.
    fn drain(&mut self) -> bool {
        let mut any = false;
        while let Some(c) = self.ring.complete(&self.mem) {
            self.jobs.push(c);
            any = true;
        }
        any
    }

    /// Wait politely until `want` slots are free: completions are taken
    /// meanwhile (a full completion ring stops the device), the doorbell is
    /// rung so the device keeps draining, and the waits between looks grow
    /// from 50 µs to 2 ms.
    fn make_room(&mut self, want: u32, deadline: Instant) -> Result<(), ClientError> {
        let mut pause = Duration::from_micros(50);
        while self.room() < want {
            self.drain();
            self.ring()?;
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout(SUBMIT_PATIENCE));
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Queue a GPU job and ring the doorbell once; returns the tag of its
    /// signal, for [`Queue::wait_job`]. The queue picks the tags (one per
    /// command, consecutive). A job must end with its only `signal`.
    ///
    /// If the ring is full, waits for room (for the whole job when it fits
    /// the ring, so a job is never left half queued), taking completions
    /// meanwhile and ringing the doorbell, for at most [`SUBMIT_PATIENCE`];
    /// a job longer than the ring is streamed through it. On a timeout
    /// (the vcoproc is stopped or faulted, or was never attached with
    /// [`crate::Client::gpu_attach`]) a job longer than the ring may be left
    /// partly queued: reset the vcoproc or use a new queue.
    ///
    /// Completions of tags that belong to no outstanding job (raw
    /// [`Queue::submit`] entries) are dropped by `submit_job` and
    /// [`Queue::wait_job`]: use jobs or raw entries on a queue, not both.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("gpu0")?;
    /// let mut q = c.create_queue(v, 0x1000_0000, 64)?;
    /// c.gpu_attach(v, &q)?;
    /// let out = SharedMem::new(4096)?;
    /// c.map(v, &out, 0, 0x2000_0000, 4096, WirePerms::Rw, WireMapKind::Pinned)?;
    /// let job = Job::new().bind(0, 0x2000_0000, 4096).dispatch(0, [16, 1, 1]);
    /// let signal = q.submit_job(&job)?;
    /// q.wait_job(signal, Duration::from_secs(5))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn submit_job(&mut self, job: &Job) -> Result<u32, ClientError> {
        let (first, signal) = self.jobs.plan(job)?;
        let sqes = job.sqes(first);
        let deadline = Instant::now() + SUBMIT_PATIENCE;
        let whole = u32::try_from(sqes.len()).unwrap_or(u32::MAX);
        self.make_room(whole.min(self.entries()), deadline)?;
        self.jobs.commit(first, signal);
        for sqe in &sqes {
            while !self.submit(sqe) {
                if let Err(e) = self.make_room(1, deadline) {
                    self.jobs.abandon(signal);
                    return Err(e);
                }
            }
        }
        self.ring()?;
        Ok(signal)
    }

    /// Wait for the job whose signal has tag `signal` (from
    /// [`Queue::submit_job`]) to complete, for at most `timeout`. Returns
    /// the signal's completion ([`JobDone`]: value, GPU time), or
    /// [`ClientError::Gpu`] with the device's [`crate::Status`] if it refused
    /// a command of the job (the first refused one; the rest of the job was
    /// skipped), or [`ClientError::Timeout`] (the job stays outstanding:
    /// wait again). Completions of other jobs that arrive meanwhile are kept
    /// for their own `wait_job`; jobs may be waited for in any order.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// let v = c.open("gpu0")?;
    /// let mut q = c.create_queue(v, 0x1000_0000, 64)?;
    /// c.gpu_attach(v, &q)?;
    /// let signal = q.submit_job(&Job::new().barrier())?;
    /// match q.wait_job(signal, Duration::from_secs(5)) {
    ///     Ok(done) => assert_eq!(done.value, signal),
    ///     Err(e) => println!("refused: {:?}", e.gpu_status()),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn wait_job(&mut self, signal: u32, timeout: Duration) -> Result<JobDone, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut refused = None;
        loop {
            self.drain();
            if let Claim::Done(r) = self.jobs.claim(signal, &mut refused) {
                return r;
            }
            let now = Instant::now();
            if now >= deadline {
                return match refused {
                    // Refused, but the skipped rest has not come back yet:
                    // the refusal is the answer; its signal is dropped later.
                    Some(e) => {
                        self.jobs.abandon(signal);
                        Err(e)
                    }
                    None => Err(ClientError::Timeout(timeout)),
                };
            }
            self.wait(deadline - now)?;
        }
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
    use crate::{ClientError, Command, Status};
    use coproc_mem::memory::Region;
    use coproc_proto::gpu::op;
    use coproc_proto::queue::Consumer;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A stand-in for the vulkan class's command processor, on the queue's
    /// memory (mapped a second time) and completion eventfd: it refuses
    /// dispatches of any pipeline but 0 (and skips the rest of the job),
    /// and completes signals.
    struct FakeGpu {
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Drop for FakeGpu {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Release);
            if let Some(t) = self.thread.take() {
                t.join().unwrap();
            }
        }
    }

    fn fake_gpu(q: &Queue) -> FakeGpu {
        let mem =
            Region::from_fd(q.mem.fd().try_clone_to_owned().unwrap(), 0, q.mem.len()).unwrap();
        let done = q.completion.try_clone().unwrap();
        let entries = q.entries();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut ring = Consumer::attach(&mem).unwrap();
            assert_eq!(ring.entries(), entries);
            let mut aborted = false;
            while !flag.load(Ordering::Acquire) {
                let mut posted = false;
                while !ring.cq_full(&mem) {
                    let Some(sqe) = ring.pop(&mem) else { break };
                    let index = ring.sq_head().wrapping_sub(1);
                    let mut post = |status: Status, r: [u32; 2]| {
                        let mut result = [0u32; 14];
                        result[..2].copy_from_slice(&r);
                        let c = Cqe {
                            tag: sqe.tag,
                            status: status as u32,
                            result,
                        };
                        assert!(ring.push(&mem, &c));
                        posted = true;
                    };
                    match Command::decode(&sqe) {
                        Ok(Command::Signal { value }) => {
                            let s = if aborted { Status::Aborted } else { Status::Ok };
                            post(s, [value, 1000]);
                            aborted = false;
                        }
                        _ if aborted => {}
                        Ok(Command::Dispatch { pipeline, .. }) if pipeline != 0 => {
                            post(Status::BadPipeline, [sqe.opcode, index]);
                            aborted = true;
                        }
                        Ok(_) => {}
                        Err(_) => {
                            post(Status::BadCommand, [sqe.opcode, index]);
                            aborted = true;
                        }
                    }
                }
                if posted {
                    rustix::io::write(&done, &1u64.to_ne_bytes()).unwrap();
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        });
        FakeGpu {
            stop,
            thread: Some(thread),
        }
    }

    fn work(pipeline: u32, value: u32) -> Job {
        Job::new()
            .bind(0, 0x2000_0000, 4096)
            .push_u32(0, &[1, 2, 3])
            .dispatch(pipeline, [1, 1, 1])
            .barrier()
            .signal(value)
    }

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn jobs_complete_and_refusals_are_typed_errors() {
        let mut q = Queue::new(0x1000_0000, 16, 0).unwrap();
        let _gpu = fake_gpu(&q);
        let a = q.submit_job(&work(0, 11)).unwrap();
        let b = q.submit_job(&work(3, 22)).unwrap();
        let c = q.submit_job(&work(0, 33)).unwrap();
        // Five commands each: the queue picked consecutive tags.
        assert_eq!((a, b, c), (5, 10, 15));
        // Waited for out of order.
        let done = q.wait_job(c, T).unwrap();
        assert_eq!((done.tag, done.value, done.gpu_ns), (15, 33, 1000));
        let e = q.wait_job(b, T).unwrap_err();
        match &e {
            ClientError::Gpu {
                status,
                opcode,
                index,
                tag,
            } => assert_eq!(
                (*status, *opcode, *index, *tag),
                (Status::BadPipeline, op::DISPATCH, 2, 8)
            ),
            other => panic!("{other:?}"),
        }
        assert!(
            e.to_string().contains(Status::BadPipeline.describe()),
            "{e}"
        );
        assert_eq!(q.wait_job(a, T).unwrap().value, 11);
        // The job after a refused one runs normally.
        let d = q.submit_job(&work(0, 44)).unwrap();
        assert_eq!(q.wait_job(d, T).unwrap().value, 44);
        // Not outstanding (any more).
        assert!(matches!(q.wait_job(a, T), Err(ClientError::Invalid(_))));
        assert!(matches!(q.wait_job(12345, T), Err(ClientError::Invalid(_))));
        // Refused before anything is queued.
        assert!(matches!(
            q.submit_job(&Job::new()),
            Err(ClientError::Invalid(_))
        ));
        assert!(matches!(
            q.submit_job(&Job::new().barrier()),
            Err(ClientError::Invalid(_))
        ));
        assert_eq!(q.room(), 16);
    }

    #[test]
    fn full_rings_are_waited_for_politely() {
        // Four entries: every job fills the ring; one of 23 commands
        // streams through it. Busy-poll mode: waits spin first.
        let mut q = Queue::new(0x1000_0000, 4, 200).unwrap();
        assert_eq!(q.busy_poll(), Duration::from_micros(200));
        let _gpu = fake_gpu(&q);
        let long = (0..21)
            .fold(Job::new(), |j, i| j.fill(0x2000_0000, 4, i))
            .barrier()
            .signal(7);
        let t = q.submit_job(&long).unwrap();
        assert_eq!(q.wait_job(t, T).unwrap().value, 7);
        // Many jobs before any wait: the completion ring (4) fills; the
        // submissions take the completions aside and go on.
        let tags: Vec<u32> = (0..40)
            .map(|i| q.submit_job(&Job::new().barrier().signal(i)).unwrap())
            .collect();
        for (i, t) in tags.into_iter().enumerate().rev() {
            assert_eq!(q.wait_job(t, T).unwrap().value, i as u32);
        }
    }

    #[test]
    fn no_device_means_a_timeout_and_the_job_stays_outstanding() {
        let mut q = Queue::new(0x1000_0000, 8, 0).unwrap();
        let t = q.submit_job(&work(0, 1)).unwrap();
        assert!(matches!(
            q.wait_job(t, Duration::from_millis(20)),
            Err(ClientError::Timeout(_))
        ));
        // The device comes late: the job is still waited for.
        let _gpu = fake_gpu(&q);
        assert_eq!(q.wait_job(t, T).unwrap().value, 1);
    }
}
