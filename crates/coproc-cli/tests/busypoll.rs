//! The queue data path through the real daemon in both modes, event-driven
//! and busy-poll: after set-up, jobs cost the client no socket message at
//! all (the SDK counts every frame it sends and receives), and every
//! completion is qecho's answer computed here.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;
use common::Daemon;

use coproc_client::{Client, Cqe, Queue, Sqe, MAX_BUSY_POLL};
use rustix::fd::AsFd as _;
use std::time::Duration;

/// One mcu pcoproc under `rr`, every uid allowed (see `common`).
const CONFIG: &str = common::MCU_RR;

const JOBS: u32 = 300;
const ENTRIES: u32 = 16;

/// What qecho answers to `s`.
fn qecho(s: &Sqe) -> Cqe {
    Cqe {
        tag: s.tag,
        status: s.opcode,
        result: std::array::from_fn(|i| s.args[i].wrapping_add(s.opcode)),
    }
}

fn job(n: u32) -> Sqe {
    Sqe {
        opcode: n % 5 + 1,
        tag: n,
        args: std::array::from_fn(|i| n.wrapping_mul(2_654_435_761).wrapping_add(i as u32)),
    }
}

/// A qecho vcoproc with a queue of `ENTRIES` and the given budget.
fn set_up(c: &mut Client, poll: Duration) -> Queue {
    let v = c.open("mcu0").unwrap();
    c.load_firmware(v, "qecho", coproc_firmware::QECHO.elf)
        .unwrap();
    let q = c.create_queue_with(v, 0x6000_0000, ENTRIES, poll).unwrap();
    assert_eq!(q.busy_poll(), poll);
    c.mbox_write(v, 0, &[q.iova() as u32, q.len() as u32])
        .unwrap();
    c.start(v).unwrap();
    q
}

/// `JOBS` jobs, in batches of 1 to 8: every completion checked.
fn run_jobs(q: &mut Queue) {
    let mut sent = 0u32;
    let mut done = 0u32;
    let mut batch = 1;
    while done < JOBS {
        let n = batch.min(JOBS - sent);
        for _ in 0..n {
            assert!(q.submit(&job(sent)), "ring has room");
            sent += 1;
        }
        q.ring().unwrap();
        while done < sent {
            match q.complete() {
                Some(c) => {
                    assert_eq!(c, qecho(&job(done)), "completion {done}");
                    done += 1;
                }
                None => assert!(
                    q.wait(Duration::from_secs(30)).unwrap(),
                    "completion never came"
                ),
            }
        }
        batch = batch % 8 + 1;
    }
}

#[test]
fn queue_jobs_send_no_socket_messages_in_either_mode() {
    let d = Daemon::start("busypoll", CONFIG);
    let mut c = d.client();
    // Refused by the SDK before anything is sent: over the maximum.
    let before = c.messages();
    assert!(c
        .create_queue_with(
            0,
            0x6000_0000,
            ENTRIES,
            MAX_BUSY_POLL + Duration::from_micros(1)
        )
        .is_err());
    assert_eq!(c.messages(), before);
    // Refused by the daemon too, when a client writes such a header itself.
    {
        use coproc_proto::queue::{bytes_for, Producer, OFF_FLAGS};
        let v = c.open("mcu0").unwrap();
        let mem = coproc_client::SharedMem::new(bytes_for(ENTRIES).unwrap()).unwrap();
        Producer::init(&mem, ENTRIES).unwrap();
        mem.write(OFF_FLAGS, &5000u32.to_le_bytes()).unwrap();
        let flags = rustix::event::EventfdFlags::CLOEXEC;
        let e1 = rustix::event::eventfd(0, flags).unwrap();
        let e2 = rustix::event::eventfd(0, flags).unwrap();
        let req = coproc_proto::Request::CreateQueue {
            vcoproc: v,
            iova: 0x6000_0000,
            entries: ENTRIES,
        };
        let e = c
            .call(req, &[mem.fd(), e1.as_fd(), e2.as_fd()])
            .unwrap_err();
        assert_eq!(
            e.code(),
            Some(coproc_client::ErrorCode::InvalidArgument),
            "{e}"
        );
        assert!(e.to_string().contains("busy-poll"), "{e}");
        c.destroy(v).unwrap();
    }
    let mut event = set_up(&mut c, Duration::ZERO);
    let mut polled = set_up(&mut c, Duration::from_micros(300));
    let set_up_msgs = c.messages();
    assert!(set_up_msgs.sent >= 10 && set_up_msgs.received >= set_up_msgs.sent);
    run_jobs(&mut event);
    run_jobs(&mut polled);
    run_jobs(&mut event);
    assert_eq!(
        c.messages(),
        set_up_msgs,
        "jobs in both modes went through shared memory and eventfds only"
    );
    // The control path still counts.
    c.list_coprocs().unwrap();
    assert_eq!(c.messages().sent, set_up_msgs.sent + 1);
    assert_eq!(c.messages().received, set_up_msgs.received + 1);
}

/// Whether the eventfd's counter is non-zero (read without blocking; the
/// read resets it).
fn fired(fd: rustix::fd::BorrowedFd<'_>) -> bool {
    let mut p = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if rustix::event::poll(&mut p, Some(&zero)).unwrap() == 0 {
        return false;
    }
    let mut b = [0u8; 8];
    rustix::io::read(fd, &mut b).unwrap();
    true
}

/// An event-driven wait sleeps on the completion tail and the daemon's
/// runner wakes it directly: the completion eventfd is not written while
/// nobody asked for it (the SDK borrows it here only to look, which is
/// what asks for it), and once asked for it fires after every batch and
/// waits still get every completion.
#[test]
fn waits_sleep_on_the_ring_until_the_eventfd_is_asked_for() {
    let d = Daemon::start("busypoll-wake", CONFIG);
    let mut c = d.client();
    let mut q = set_up(&mut c, Duration::ZERO);
    let word = |q: &Queue| q.wake_word();
    assert_eq!(
        word(&q),
        coproc_proto::queue::CQ_WAKE_NO_EVENTFD,
        "a fresh queue: no sleeper, no eventfd"
    );
    run_jobs(&mut q);
    assert_eq!(
        word(&q),
        coproc_proto::queue::CQ_WAKE_NO_EVENTFD,
        "sleepers all gone"
    );
    // Sleepers were woken without the eventfd: it never fired. (A dup of
    // the descriptor, so that looking does not ask for it.)
    let dup = q.completion_fd_unrequested();
    assert!(
        !fired(dup.as_fd()),
        "the daemon wrote the eventfd nobody waits on"
    );
    // Asked for: the bit goes, the daemon writes it after completions.
    let fd = q.completion_fd().try_clone_to_owned().unwrap();
    assert_eq!(word(&q), 0);
    // Every wait now sleeps on the eventfd (and reads it): had the daemon
    // not written it, a wait would time out and `run_jobs` panic.
    run_jobs(&mut q);
    // One more job, waited for on the descriptor alone. A write for an
    // earlier batch may still be counted (the writer thread is not
    // synchronous with completions), so: take the completion once there
    // is one, and sleep on the eventfd (30 s at most) until then.
    assert!(q.submit(&job(7)));
    q.ring().unwrap();
    let c = loop {
        if let Some(c) = q.complete() {
            break c;
        }
        let mut p = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let thirty = rustix::time::Timespec {
            tv_sec: 30,
            tv_nsec: 0,
        };
        assert_eq!(
            rustix::event::poll(&mut p, Some(&thirty)).unwrap(),
            1,
            "the eventfd never fired"
        );
        fired(fd.as_fd());
    };
    assert_eq!(c, qecho(&job(7)));
}

/// On a busy-poll queue the SDK rings only while the firmware does not
/// poll (qecho says so in the queue's polling word), and every completion
/// is still right; on an event-driven queue it rings for every batch. A
/// polling word left set while the firmware parked (here written over by
/// the test, as a firmware that parks without clearing it would leave it)
/// costs a wait of the busy-poll budget, after which the SDK rings anyway;
/// a start clears the word.
#[test]
fn doorbells_are_skipped_only_while_the_firmware_polls() {
    let d = Daemon::start("busypoll-bells", CONFIG);
    let mut c = d.client();
    let mut event = set_up(&mut c, Duration::ZERO);
    let mut polled = set_up(&mut c, Duration::from_micros(300));
    run_jobs(&mut event);
    run_jobs(&mut polled);
    let (rung, skipped) = event.doorbells();
    assert_eq!(skipped, 0);
    assert!(rung >= u64::from(JOBS) / 8, "{rung}");
    let (rung, skipped) = polled.doorbells();
    assert!(
        skipped > 0 && skipped + rung >= u64::from(JOBS) / 8,
        "rung {rung}, skipped {skipped}"
    );
    // Once its budget has passed with nothing submitted, qecho clears the
    // word and parks.
    while polled.polling_word(None) != 0 {
        std::thread::yield_now();
    }
    assert_eq!(polled.polling_word(Some(1)), 1);
    let (rung, skipped) = polled.doorbells();
    assert!(polled.submit(&job(JOBS)));
    polled.ring().unwrap();
    assert_eq!(
        polled.doorbells(),
        (rung, skipped + 1),
        "skipped: the word says polling"
    );
    let done = loop {
        if let Some(c) = polled.complete() {
            break c;
        }
        assert!(polled.wait(Duration::from_secs(30)).unwrap(), "never came");
    };
    assert_eq!(done, qecho(&job(JOBS)));
    assert_eq!(
        polled.doorbells(),
        (rung + 1, skipped + 1),
        "the wait rang the skipped doorbell"
    );
}
