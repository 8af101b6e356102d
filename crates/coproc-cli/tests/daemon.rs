//! The real daemon with real client processes: results, a client killed
//! mid-run, hostile input, authorization between uids.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;
use common::raw::{closed, error_code, frame, hello, raw, read_reply, send_with_fds};
use common::{coproc_bin, wait_for, Daemon};

use coproc_client::{Client, ErrorCode, SharedMem, WireMapKind, WirePerms};
use coproc_proto::frame::MAGIC;
use coproc_proto::Request;
use rustix::fd::AsFd;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// One mcu pcoproc under `rr`, every uid allowed (see `common`).
const CONFIG: &str = common::MCU_RR;

fn domain(d: &Daemon, fw: &str, extra: &[&str]) -> Child {
    let mut args = vec!["-o", "json", "domain-run", "--firmware", fw];
    args.extend_from_slice(extra);
    d.coproc(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn verified(out: Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "client failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["verified"], true, "{v}");
    v
}

#[test]
fn concurrent_client_processes_get_right_results() {
    let d = Daemon::start("concurrent", CONFIG);
    let kids: Vec<Child> = ["fir", "crc32", "echo", "faulty"]
        .iter()
        .map(|fw| domain(&d, fw, &["--scale", "2"]))
        .collect();
    for k in kids {
        verified(k.wait_with_output().unwrap());
    }
    // Each session's vcoprocs went with it (the daemon ends a session once
    // it reads the end of the connection, after the process exited); the
    // faulty one's record stays.
    let mut c = d.client();
    wait_for("the clients' vcoprocs to go", || {
        c.list_vcoprocs(None, None).unwrap().is_empty()
    });
    let faults = c.list_faults().unwrap();
    assert!(
        faults
            .iter()
            .any(|f| f.addr == Some(0x7fff_f000) && f.access == "read"),
        "{faults:?}"
    );
}

#[test]
fn killed_client_loses_everything_and_others_are_unaffected() {
    let mut d = Daemon::start("sigkill", CONFIG);
    let mut admin = d.client();
    // Warm up once, then take the baseline.
    verified(domain(&d, "echo", &[]).wait_with_output().unwrap());
    let kill_one = |d: &Daemon, admin: &mut Client| {
        let mut hog = domain(d, "hog", &["--seconds", "600"]);
        wait_for("the hog's vcoproc", || {
            admin
                .list_vcoprocs(None, None)
                .unwrap()
                .iter()
                .any(|v| v.firmware == "hog" && v.run_ns > 0)
        });
        let v = admin.list_vcoprocs(None, None).unwrap();
        let hogs: Vec<_> = v.iter().filter(|v| v.firmware == "hog").collect();
        assert_eq!(hogs.len(), 1);
        assert_eq!((hogs[0].mappings, hogs[0].mapped_bytes), (1, 1 << 20));
        hog.kill().unwrap(); // SIGKILL
        hog.wait().unwrap();
        wait_for("cleanup", || {
            !admin
                .list_vcoprocs(None, None)
                .unwrap()
                .iter()
                .any(|v| v.firmware == "hog")
        });
    };
    // Warm up with the same mix (context memory is pooled and translated
    // code cached: the first round sets the high-water mark), then take the
    // baseline, then do it all again.
    let round = |d: &Daemon, admin: &mut Client| {
        let others: Vec<Child> = ["fir", "crc32", "echo"]
            .iter()
            .map(|fw| domain(d, fw, &["--scale", "3"]))
            .collect();
        for _ in 0..3 {
            kill_one(d, admin);
        }
        for k in others {
            verified(k.wait_with_output().unwrap());
        }
    };
    // Memory measured when every client session is gone.
    let settle = |d: &Daemon, admin: &mut Client| {
        wait_for("every session gone", || {
            let doms = admin.list_domains().unwrap();
            doms.len() == 1
                && doms[0].sessions == 1
                && doms[0].vcoprocs == 0
                && doms[0].mapped_bytes == 0
                && doms[0].mappings == 0
        });
        (d.rss_kib_without_jit(), d.fds(), d.memfd_maps())
    };
    // Two warm-up rounds, then nine measured ones.
    for _ in 0..2 {
        round(&d, &mut admin);
    }
    let baseline = settle(&d, &mut admin);
    let mut rss = Vec::new();
    for _ in 0..9 {
        round(&d, &mut admin);
        rss.push(settle(&d, &mut admin).0);
    }
    eprintln!("daemon RSS without the JIT cache after each round: {rss:?} KiB");
    let after = settle(&d, &mut admin);
    // Every mapping's memory and descriptor went back: exactly.
    assert_eq!(after.2, 0, "domain memory still mapped in the daemon");
    assert_eq!(
        after.1, baseline.1,
        "daemon descriptors: {} before, {} after",
        baseline.1, after.1
    );
    // Resident memory, apart from the engine's translated-code cache (which
    // fills with new code until the engine flushes it), is not monotonic
    // either: the allocator keeps freed memory until it trims, and pooled
    // context memory rises once to a high-water mark that depends on how
    // many clients overlapped, in steps of up to 16 MiB. So compare the
    // lowest readings of three windows of three rounds: six clients per
    // round each mapped 1 MiB and had a context, so keeping that memory
    // would add 6 MiB or more per round, 18 MiB or more from one window's
    // minimum to the next, in *both* steps; a one-time rise shows in one
    // step only. (Mapped domain memory itself is checked exactly above.)
    let min = |w: &[u64]| w.iter().min().copied().unwrap_or(0);
    let (a, b, c) = (min(&rss[..3]), min(&rss[3..6]), min(&rss[6..]));
    let grew = |from: u64, to: u64| to > from + 12 * 1024;
    assert!(
        !(grew(a, b) && grew(b, c)),
        "daemon RSS kept growing: {rss:?} KiB after each round"
    );
    assert!(d.alive());
}

#[test]
fn hostile_input_gets_clear_errors_and_the_daemon_keeps_serving() {
    let mut d = Daemon::start("hostile", CONFIG);
    // A well-behaved domain runs the whole time.
    let bystander = domain(&d, "echo", &["--scale", "10"]);
    let sock = d.socket.clone();
    let mut watcher = d.client();
    wait_for("the bystander's vcoproc", || {
        watcher
            .list_vcoprocs(None, None)
            .unwrap()
            .iter()
            .any(|v| v.firmware == "echo")
    });

    // Not our protocol at all: error, then closed.
    let mut s = raw(&sock);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(error_code(read_reply(&mut s)), ErrorCode::BadRequest);
    assert!(closed(&mut s));

    // An absurd length: refused before anything is allocated.
    let mut s = raw(&sock);
    s.write_all(&MAGIC.to_le_bytes()).unwrap();
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    assert_eq!(error_code(read_reply(&mut s)), ErrorCode::BadRequest);
    assert!(closed(&mut s));

    // A truncated frame, then the connection drops.
    let mut s = raw(&sock);
    s.write_all(&frame(1, Request::ListCoprocs)[..10]).unwrap();
    drop(s);

    // Wrong version: error, closed.
    let mut s = raw(&sock);
    s.write_all(&frame(1, Request::Hello { version: 99 }))
        .unwrap();
    assert_eq!(error_code(read_reply(&mut s)), ErrorCode::BadVersion);
    assert!(closed(&mut s));

    // Anything before hello.
    let mut s = raw(&sock);
    s.write_all(&frame(1, Request::ListCoprocs)).unwrap();
    assert_eq!(error_code(read_reply(&mut s)), ErrorCode::BadSequence);
    hello(&mut s);

    // Unknown message kinds and malformed JSON: error, session continues.
    for body in [
        &br#"{"id":5,"op":"format-disk"}"#[..],
        b"{not json",
        b"[]",
        br#"{"id":6,"op":"open-vcoproc"}"#,
        br#"{"id":7,"op":"vcoproc-set","vcoproc":1,"set":{"weight":2,"nice":-20}}"#,
        br#"{"id":8,"op":"vcoproc-set","vcoproc":1,"set":{"weight":-1}}"#,
        br#"{"id":9,"op":"vcoproc-set","vcoproc":1}"#,
        br#"{"id":10,"op":"sched-set","coproc":"mcu0","policy":"rr","params":[["slice_us"]]}"#,
    ] {
        let mut f = MAGIC.to_le_bytes().to_vec();
        f.extend_from_slice(&(body.len() as u32).to_le_bytes());
        f.extend_from_slice(body);
        s.write_all(&f).unwrap();
        assert_eq!(
            error_code(read_reply(&mut s)),
            ErrorCode::BadRequest,
            "{}",
            String::from_utf8_lossy(body)
        );
    }

    // Descriptors: missing, too many, wrong kind, on a request taking none.
    let mut c = Client::connect_to(&sock).unwrap();
    let v = c.open("mcu0").unwrap();
    let img = SharedMem::with_contents(coproc_firmware::CRC32.elf).unwrap();
    let sealed = coproc_client::sealed_image(coproc_firmware::CRC32.elf).unwrap();
    let sealed_len = coproc_firmware::CRC32.elf.len() as u64;
    let load = |len| Request::LoadFirmware {
        vcoproc: v,
        label: "x".into(),
        len,
    };
    let (pr, _pw) = rustix::pipe::pipe().unwrap();
    let cases: Vec<(Request, Vec<rustix::fd::BorrowedFd<'_>>, ErrorCode)> = vec![
        (load(100), vec![], ErrorCode::BadFd),
        (
            load(100),
            vec![sealed.as_fd(), sealed.as_fd()],
            ErrorCode::BadFd,
        ),
        (load(100), vec![pr.as_fd()], ErrorCode::BadFd),
        // Not sealed: its contents could change while the daemon reads it.
        (load(100), vec![img.fd()], ErrorCode::BadFd),
        (
            load(1 << 30),
            vec![sealed.as_fd()],
            ErrorCode::InvalidArgument,
        ),
        (load(sealed_len + 1), vec![sealed.as_fd()], ErrorCode::BadFd),
        (Request::ListCoprocs, vec![img.fd()], ErrorCode::BadFd),
        (
            Request::Doorbell { vcoproc: 999_999 },
            vec![],
            ErrorCode::NotFound,
        ),
        (
            Request::MboxWrite {
                vcoproc: v,
                index: 15,
                values: vec![1, 2],
            },
            vec![],
            ErrorCode::InvalidArgument,
        ),
        (
            Request::MboxWrite {
                vcoproc: v,
                index: u32::MAX,
                values: vec![1],
            },
            vec![],
            ErrorCode::InvalidArgument,
        ),
    ];
    for (i, (req, fds, want)) in cases.into_iter().enumerate() {
        // The vcoproc belongs to `c`'s session: use `c`'s connection for
        // requests on it, the raw one for the rest.
        let on_v = !matches!(req, Request::ListCoprocs | Request::Doorbell { .. });
        if on_v {
            send_with_fds(c.socket(), 100 + i as u64, req.clone(), &fds);
            let mut sock_c = c.socket().try_clone().unwrap();
            assert_eq!(
                error_code(read_reply(&mut sock_c)),
                want,
                "case {i}: {req:?}"
            );
        } else {
            send_with_fds(&s, 100 + i as u64, req.clone(), &fds);
            assert_eq!(error_code(read_reply(&mut s)), want, "case {i}: {req:?}");
        }
    }
    // A firmware image that is not one: a clear device error.
    let junk = vec![0x7fu8; 300];
    assert_eq!(
        c.load_firmware(v, "junk", &junk).unwrap_err().code(),
        Some(ErrorCode::Device)
    );
    c.load_firmware(v, "crc32", coproc_firmware::CRC32.elf)
        .unwrap();

    // Maps: past the end of the fd, not a memfd, overlapping, outside the
    // window, unaligned, over quota.
    let mem = SharedMem::new(64 * 1024).unwrap();
    let map = |c: &mut Client, m: &SharedMem, off, iova, len| {
        c.map(v, m, off, iova, len, WirePerms::Rw, WireMapKind::Pinned)
    };
    assert_eq!(
        map(&mut c, &mem, 0, 0x6000_0000, 128 * 1024)
            .unwrap_err()
            .code(),
        Some(ErrorCode::BadFd)
    );
    assert_eq!(
        map(&mut c, &mem, 4096, 0x6000_0000, 64 * 1024)
            .unwrap_err()
            .code(),
        Some(ErrorCode::BadFd)
    );
    let file = d.dir.join("plain");
    std::fs::write(&file, vec![0u8; 8192]).unwrap();
    let plain = std::fs::File::open(&file).unwrap();
    send_with_fds(
        c.socket(),
        500,
        Request::Map {
            vcoproc: v,
            iova: 0x6000_0000,
            offset: 0,
            len: 4096,
            perms: WirePerms::R,
            kind: WireMapKind::Pinned,
        },
        &[plain.as_fd()],
    );
    let mut sock_c = c.socket().try_clone().unwrap();
    assert_eq!(error_code(read_reply(&mut sock_c)), ErrorCode::BadFd);
    map(&mut c, &mem, 0, 0x6000_0000, 64 * 1024).unwrap();
    assert_eq!(
        map(&mut c, &mem, 0, 0x6000_8000, 4096).unwrap_err().code(),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        map(&mut c, &mem, 0, 0x1000_0000, 4096).unwrap_err().code(),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        map(&mut c, &mem, 0, 0x6100_0100, 4096).unwrap_err().code(),
        Some(ErrorCode::InvalidArgument)
    );
    let big = SharedMem::new(16 << 20).unwrap();
    assert_eq!(
        map(&mut c, &big, 0, 0x6200_0000, 16 << 20)
            .unwrap_err()
            .code(),
        Some(ErrorCode::Quota)
    );
    // Quota of vcoprocs (8): the bystander has one, we have one.
    let mut opened = vec![];
    loop {
        match c.open("mcu0") {
            Ok(id) => opened.push(id),
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::Quota));
                break;
            }
        }
        assert!(opened.len() < 10, "quota not enforced");
    }
    // Ours (1 + opened) and the bystander's (if it still runs): at most 8.
    assert!(opened.len() >= 6, "opened {}", opened.len());
    assert!(c.list_vcoprocs(None, None).unwrap().len() <= 8);
    // The crc vcoproc still computes right.
    c.start(v).unwrap();
    c.subscribe(v).unwrap();
    let data = b"123456789";
    mem.write(0, data).unwrap();
    let seq = c.mbox_read(v).unwrap().1;
    c.mbox_write(v, 0, &[0x6000_0000, data.len() as u32, 7])
        .unwrap();
    c.doorbell(v).unwrap();
    c.wait_notify(v, seq, Duration::from_secs(30)).unwrap();
    assert_eq!(c.mbox_read(v).unwrap().0[1], 0xCBF4_3926);
    drop(c);

    verified(bystander.wait_with_output().unwrap());
    assert!(d.alive());
    let mut fresh = d.client();
    assert_eq!(fresh.list_coprocs().unwrap().len(), 1);
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let mut d = Daemon::start("sigterm", CONFIG);
    let mut c = d.client();
    let v = c.open("mcu0").unwrap();
    c.load_firmware(v, "hog", coproc_firmware::HOG.elf).unwrap();
    c.start(v).unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(d.child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!d.socket.exists(), "socket removed");
    assert!(c.list_coprocs().is_err(), "session ended");
}

#[test]
fn other_uids_cannot_see_or_touch_our_vcoprocs() {
    if !common::need_root("run a client as another uid") {
        return;
    }
    let d = Daemon::start("uids", CONFIG);
    let mut root = d.client();
    let v = root.open("mcu0").unwrap();
    root.load_firmware(v, "echo", coproc_firmware::ECHO.elf)
        .unwrap();
    // A copy of the CLI (and of coproc-bench beside it, for `domain-run`)
    // that uid 65534 can execute.
    let bin = d.dir.join("coproc");
    common::copy_executable(&coproc_bin(), &bin);
    common::copy_executable(
        &common::coprocd_bin().with_file_name("coproc-bench"),
        &d.dir.join("coproc-bench"),
    );
    let as_nobody = |args: &[&str]| {
        use std::os::unix::process::CommandExt;
        let out = Command::new(&bin)
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, err) = as_nobody(&["-o", "json", "vcoproc-list"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "[]", "uid 65534 sees nothing of root's");
    let id = v.to_string();
    for verb in ["vcoproc-reset", "vcoproc-destroy"] {
        let (ok, _, err) = as_nobody(&[verb, &id]);
        assert!(!ok);
        assert!(err.contains("error[not-found]"), "{verb}: {err}");
    }
    let (ok, _, err) = as_nobody(&["sched-set", "mcu0", "rr", "slice_us=100"]);
    assert!(!ok);
    assert!(err.contains("error[permission-denied]"), "{err}");
    let (ok, _, err) = as_nobody(&["vcoproc-set", &id, "--weight", "65535"]);
    assert!(!ok);
    assert!(err.contains("error[permission-denied]"), "{err}");
    assert_eq!(root.query(v).unwrap().weight, 256);
    // Every request on root's vcoproc, from uid 65534 through the SDK (this
    // test binary, re-run as that uid): not found, as if it did not exist.
    let me = d.dir.join("daemon-test");
    common::copy_executable(&std::env::current_exe().unwrap(), &me);
    let out = {
        use std::os::unix::process::CommandExt;
        Command::new(&me)
            .args([
                "--exact",
                "act_on_a_foreign_vcoproc",
                "--ignored",
                "--nocapture",
            ])
            .env("COPROC_FOREIGN_SOCKET", &d.socket)
            .env("COPROC_FOREIGN_VCOPROC", v.to_string())
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("foreign: all refused"),
        "{text}"
    );
    // Its own vcoprocs work.
    let (ok, out, err) = as_nobody(&["-o", "json", "domain-run", "--firmware", "crc32"]);
    assert!(ok, "{out} {err}");
    // Root's vcoproc is untouched.
    assert_eq!(root.query(v).unwrap().state, "loaded");
    // Root (admin) may change the policy.
    root.sched_set("mcu0", "rr", &[("slice_us".into(), "2000".into())])
        .unwrap();
    assert_eq!(
        root.sched_get("mcu0").unwrap().params,
        [("slice_us".to_string(), "2000".to_string())]
    );
}

#[test]
fn queues_carry_requests_with_only_doorbells_and_survive_garbage_indices() {
    use coproc_client::Sqe;
    let d = Daemon::start("queues", CONFIG);
    let mut c = d.client();
    let v = c.open("mcu0").unwrap();
    c.load_firmware(v, "qecho", coproc_firmware::QECHO.elf)
        .unwrap();
    // Refused by the SDK, and by the daemon: not a power of two.
    assert!(c.create_queue(v, 0x6000_0000, 48).is_err());
    {
        let mem = SharedMem::new(1 << 20).unwrap();
        let e1 = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        let e2 = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        send_with_fds(
            c.socket(),
            800,
            Request::CreateQueue {
                vcoproc: v,
                iova: 0x6000_0000,
                entries: 48,
            },
            &[mem.fd(), e1.as_fd(), e2.as_fd()],
        );
        let mut sock_c = c.socket().try_clone().unwrap();
        assert_eq!(
            error_code(read_reply(&mut sock_c)),
            ErrorCode::InvalidArgument
        );
    }
    let mut q = c.create_queue(v, 0x6000_0000, 64).unwrap();
    c.mbox_write(v, 0, &[q.iova() as u32, q.len() as u32])
        .unwrap();
    c.start(v).unwrap();
    let mut tag = 0u32;
    let mut roundtrip = |q: &mut coproc_client::Queue, n: u32| {
        for _ in 0..n {
            tag += 1;
            let sqe = Sqe {
                opcode: 3,
                tag,
                args: std::array::from_fn(|i| tag.wrapping_mul(31) + i as u32),
            };
            assert!(q.submit(&sqe));
        }
        q.ring().unwrap();
        let mut got = 0;
        while got < n {
            while let Some(cqe) = q.complete() {
                let want = tag - n + 1 + got;
                assert_eq!(cqe.tag, want, "completions in order");
                assert_eq!(cqe.status, 3);
                for i in 0..14 {
                    assert_eq!(cqe.result[i], want.wrapping_mul(31) + i as u32 + 3);
                }
                got += 1;
            }
            if got < n {
                assert!(
                    q.wait(Duration::from_secs(30)).unwrap(),
                    "completion never signalled"
                );
            }
        }
    };
    for batch in [1, 7, 64, 33, 64] {
        roundtrip(&mut q, batch);
    }
    // Garbage ring indices: the firmware skips them, nothing faults.
    let head = q.sq_head();
    q.poke_sq_tail(head.wrapping_add(1_000_000));
    q.ring().unwrap();
    wait_for("the garbage to be counted", || {
        let _ = q.wait(Duration::from_millis(50));
        c.mbox_read(v).unwrap().0[1] >= 1
    });
    q.resync();
    roundtrip(&mut q, 50);
    let info = c.query(v).unwrap();
    assert_eq!(info.faults, 0);
    assert_ne!(info.state, "faulted");
    // A pipe is not an eventfd.
    let (pr, pw) = rustix::pipe::pipe().unwrap();
    let mem = SharedMem::new(8192).unwrap();
    send_with_fds(
        c.socket(),
        900,
        Request::CreateQueue {
            vcoproc: v,
            iova: 0x6800_0000,
            entries: 1,
        },
        &[mem.fd(), pr.as_fd(), pw.as_fd()],
    );
    let mut sock_c = c.socket().try_clone().unwrap();
    assert_eq!(error_code(read_reply(&mut sock_c)), ErrorCode::BadFd);
}

#[test]
fn a_domain_cannot_stall_the_runner_or_leak_through_its_queues() {
    use coproc_client::{Event, Sqe};
    let mut d = Daemon::start("eventfds", CONFIG);
    let mut c = d.client();
    let v = c.open("mcu0").unwrap();
    c.load_firmware(v, "qecho", coproc_firmware::QECHO.elf)
        .unwrap();
    let mut q = c.create_queue(v, 0x6000_0000, 4).unwrap();
    c.mbox_write(v, 0, &[q.iova() as u32, q.len() as u32])
        .unwrap();
    c.start(v).unwrap();
    // Fill both eventfds' counters to the brim: a write of 1 would block.
    let full = 0xffff_ffff_ffff_fffeu64.to_ne_bytes();
    rustix::io::write(q.completion_fd(), &full).unwrap();
    rustix::io::write(q.doorbell_fd(), &full).unwrap();
    for tag in 0..3 {
        assert!(q.submit(&Sqe {
            opcode: 1,
            tag,
            args: [0; 14]
        }));
    }
    // (Our own doorbell eventfd is full too: ring through the socket.)
    c.doorbell(v).unwrap();
    // The runner keeps serving everyone else.
    verified(domain(&d, "crc32", &[]).wait_with_output().unwrap());
    verified(domain(&d, "echo", &[]).wait_with_output().unwrap());
    // Our own vcoproc still processed the requests.
    wait_for("our completions", || q.complete().is_some());
    drop(q);

    // Creating and destroying queues in one session gives every descriptor
    // back, and each fault is reported, also the second one.
    wait_for("the other sessions gone", || {
        c.list_domains().unwrap().iter().all(|x| x.sessions == 1)
    });
    let base = d.fds();
    for _ in 0..20 {
        let w = c.open("mcu0").unwrap();
        c.load_firmware(w, "qecho", coproc_firmware::QECHO.elf)
            .unwrap();
        let q = c.create_queue(w, 0x6000_0000, 8).unwrap();
        c.subscribe(w).unwrap();
        c.destroy(w).unwrap();
        drop(q);
    }
    wait_for("descriptors back", || d.fds() <= base);
    let w = c.open("mcu0").unwrap();
    c.load_firmware(w, "faulty", coproc_firmware::FAULTY.elf)
        .unwrap();
    c.subscribe(w).unwrap();
    let mut faults = 0;
    for _ in 0..2 {
        c.start(w).unwrap();
        c.doorbell(w).unwrap();
        loop {
            match c.next_event(Duration::from_secs(30)).unwrap() {
                Event::Fault { fault } if fault.vcoproc == w => faults += 1,
                Event::State { vcoproc, state } if vcoproc == w && state == "faulted" => break,
                _ => {}
            }
        }
        c.reset(w).unwrap();
    }
    assert_eq!(faults, 2);

    // A frame with more descriptors than allowed is refused unread.
    let s = raw(&d.socket);
    let mut s2 = s.try_clone().unwrap();
    hello(&mut s2);
    let m = SharedMem::new(4096).unwrap();
    let fds = [m.fd(), m.fd(), m.fd(), m.fd()];
    // send_frame refuses more than MAX_FDS itself: build the cmsg by hand.
    let f = frame(7, Request::ListCoprocs);
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut ctl = rustix::net::SendAncillaryBuffer::new(&mut space);
    assert!(ctl.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
    rustix::net::sendmsg(
        &s,
        &[std::io::IoSlice::new(&f)],
        &mut ctl,
        rustix::net::SendFlags::empty(),
    )
    .unwrap();
    assert_eq!(error_code(read_reply(&mut s2)), ErrorCode::BadFd);
    assert!(closed(&mut s2));
    assert!(d.alive());
}

/// Not a test of its own: `other_uids_cannot_see_or_touch_our_vcoprocs`
/// runs it as another uid (hence ignored in a normal run).
#[test]
#[ignore = "run as another uid by other_uids_cannot_see_or_touch_our_vcoprocs"]
fn act_on_a_foreign_vcoproc() {
    let sock = std::env::var_os("COPROC_FOREIGN_SOCKET").expect("COPROC_FOREIGN_SOCKET");
    let v = std::env::var("COPROC_FOREIGN_VCOPROC").expect("COPROC_FOREIGN_VCOPROC");
    let v: u32 = v.parse().unwrap();
    let mut c = Client::connect_to(Path::new(&sock)).unwrap();
    assert!(!c.identity().admin);
    let mem = SharedMem::new(4096).unwrap();
    let not_found = |r: Result<(), coproc_client::ClientError>, what: &str| {
        assert_eq!(r.unwrap_err().code(), Some(ErrorCode::NotFound), "{what}");
    };
    not_found(
        c.map(
            v,
            &mem,
            0,
            0x6000_0000,
            4096,
            WirePerms::Rw,
            WireMapKind::Pinned,
        ),
        "map",
    );
    not_found(c.unmap(v, 0x6000_0000), "unmap");
    not_found(c.load_firmware(v, "x", coproc_firmware::ECHO.elf), "load");
    not_found(c.mbox_write(v, 0, &[1]), "mbox write");
    not_found(c.mbox_read(v).map(|_| ()), "mbox read");
    not_found(c.doorbell(v), "doorbell");
    not_found(c.start(v), "start");
    not_found(c.stop(v), "stop");
    not_found(c.reset(v), "reset");
    not_found(c.destroy(v), "destroy");
    not_found(c.query(v).map(|_| ()), "query");
    not_found(c.subscribe(v), "subscribe");
    not_found(
        c.set_demand_faults(v, Some(Duration::from_secs(1))),
        "set demand faults",
    );
    not_found(
        c.create_queue(v, 0x6000_0000, 4).map(|_| ()),
        "create queue",
    );
    assert!(c.list_vcoprocs(None, None).unwrap().is_empty());
    assert!(c.list_faults().unwrap().iter().all(|f| f.domain == 65534));
    assert_eq!(
        c.sched_set("mcu0", "rr", &[]).unwrap_err().code(),
        Some(ErrorCode::PermissionDenied)
    );
    println!("foreign: all refused");
}

#[test]
fn policies_and_parameters_change_while_domains_run() {
    let d = Daemon::start("policies", CONFIG);
    let kids: Vec<Child> = ["fir", "crc32", "echo", "fir"]
        .iter()
        .map(|fw| domain(&d, fw, &["--scale", "6"]))
        .collect();
    let mut c = d.client();
    // Two vcoprocs of this session that live through the test: a hog that
    // keeps the device busy and an echo that waits.
    let (ha, hb) = (c.open("mcu0").unwrap(), c.open("mcu0").unwrap());
    c.load_firmware(ha, "hog", coproc_firmware::HOG.elf)
        .unwrap();
    c.load_firmware(hb, "echo", coproc_firmware::ECHO.elf)
        .unwrap();
    c.start(ha).unwrap();
    c.start(hb).unwrap();
    let (a, b) = (ha.to_string(), hb.to_string());
    let (a, b) = (a.as_str(), b.as_str());
    wait_for("vcoprocs", || {
        c.list_vcoprocs(None, None).unwrap().len() >= 4
    });
    let win_a = format!("window={a}:0:2000");
    let win_b = format!("window={b}:2000:2000");
    // Every policy in turn while the domains run, parameters changed live.
    let steps: Vec<Vec<String>> = vec![
        vec!["credit".into(), "slice_us=500".into()],
        vec!["priority".into()],
        vec!["rt".into(), "capacity_pct=90".into()],
        vec![
            "table".into(),
            "frame_us=6000".into(),
            win_a.clone(),
            win_b.clone(),
            "fill=rr".into(),
        ],
        vec!["rr".into(), "slice_us=700".into()],
        vec!["credit".into()],
    ];
    for step in &steps {
        let mut args = vec!["sched-set", "mcu0"];
        args.extend(step.iter().map(String::as_str));
        let (ok, _, err) = d.cli(&args);
        assert!(ok, "{step:?}: {err}");
        let s = c.sched_get("mcu0").unwrap();
        assert_eq!(s.policy, step[0]);
        match step[0].as_str() {
            "credit" => {
                let (ok, _, err) = d.cli(&["vcoproc-set", a, "--weight", "1024"]);
                assert!(ok, "{err}");
                let (ok, _, err) = d.cli(&["vcoproc-set", b, "--cap", "40"]);
                assert!(ok, "{err}");
            }
            "priority" => {
                let (ok, _, err) = d.cli(&["vcoproc-set", a, "--priority", "-3"]);
                assert!(ok, "{err}");
            }
            "rt" => {
                let (ok, _, err) =
                    d.cli(&["vcoproc-set", a, "--budget", "2000", "--period", "10000"]);
                assert!(ok, "{err}");
                // Over capacity: refused, nothing changes.
                let (ok, _, err) =
                    d.cli(&["vcoproc-set", b, "--budget", "9000", "--period", "10000"]);
                assert!(!ok && err.contains("error[invalid-argument]"), "{err}");
                let vb = c.query(b.parse().unwrap()).unwrap();
                assert_eq!(vb.reservation_us, None);
            }
            _ => {}
        }
        // The standings list this session's vcoprocs under the new policy.
        let s = c.sched_get("mcu0").unwrap();
        for id in [ha, hb] {
            assert!(s.standings.iter().any(|st| st.0 == id), "{s:?}");
        }
        // The hog makes progress under each policy.
        let ran = c.query(ha).unwrap().run_ns;
        wait_for("the hog to run under the new policy", || {
            c.query(ha).unwrap().run_ns > ran
        });
    }
    let va = c.query(ha).unwrap();
    assert_eq!(va.weight, 1024);
    assert_eq!(va.priority, -3);
    assert_eq!(va.reservation_us, Some((2000, 10000)));
    assert_eq!(c.query(hb).unwrap().cap_pct, Some(40));
    assert!(
        matches!(va.state.as_str(), "running" | "runnable"),
        "the hog survived every switch: {}",
        va.state
    );
    // Every domain got every result right.
    for k in kids {
        verified(k.wait_with_output().unwrap());
    }
    // Bad requests: clear errors, the daemon keeps serving.
    for bad in [
        &["sched-set", "mcu0", "lottery"][..],
        &["sched-set", "mcu0", "credit", "slice_us=0"],
        &[
            "sched-set",
            "mcu0",
            "table",
            "frame_us=1000",
            "window=1:500:900",
        ],
        &["sched-set", "mcu0", "rr", "slice"],
        &["vcoproc-set", "999999", "--weight", "5"],
        &["vcoproc-set", a, "--weight", "0"],
        &["vcoproc-set", a, "--cap", "101"],
        &["vcoproc-set", a, "--budget", "20000", "--period", "10000"],
        &["vcoproc-set", b, "--budget", "100"],
        &["vcoproc-set", a],
    ] {
        let (ok, _, err) = d.cli(bad);
        assert!(!ok && !err.is_empty(), "{bad:?} accepted");
    }
    assert_eq!(c.sched_get("mcu0").unwrap().policy, "credit");
    assert_eq!(
        c.query(ha).unwrap().weight,
        1024,
        "refused changes change nothing"
    );
    let (ok, out, _) = d.cli(&["-o", "json", "domain-run", "--firmware", "crc32"]);
    assert!(ok, "{out}");
}
