//! Mappings through the real daemon: revoke (own and admin), pinned memory
//! outliving the domain's own mapping, the mappings quota, hostile revoke
//! requests, listings and the CLI verbs.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;
use common::{coproc_bin, wait_for, Daemon};

use coproc_client::{Client, ErrorCode, Event, SharedMem, WireMapKind, WirePerms};
use coproc_firmware::reference::{self, TestRng};
use coproc_proto::frame::{encode, MAGIC};
use coproc_proto::ServerFrame;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
[[pcoproc]]
name = "mcu0"
class = "mcu"
policy = "rr"
policy_params = { slice_us = "1000" }

[[domain]]
uids = "*"
pcoprocs = ["mcu0"]
max_vcoprocs = 8
max_mapped_bytes = 2097152
max_mappings = 4
"#;

const IOVA: u64 = 0x6000_0000;
const LEN: u64 = 4 * 4096;

/// A scribble vcoproc of `c` with `mem` mapped at `IOVA`, started.
fn scribble(c: &mut Client, mem: &SharedMem, kind: WireMapKind) -> u32 {
    let v = c.open("mcu0").unwrap();
    c.load_firmware(v, "scribble", coproc_firmware::SCRIBBLE.elf)
        .unwrap();
    c.map(v, mem, 0, IOVA, LEN, WirePerms::Rw, kind).unwrap();
    c.mbox_write(v, 0, &[IOVA as u32, LEN as u32]).unwrap();
    c.start(v).unwrap();
    v
}

fn passes(c: &mut Client, v: u32) -> Vec<u32> {
    c.mbox_read(v).unwrap().0
}

fn domain_usage(c: &mut Client) -> (u64, u32) {
    let me = c.identity().uid;
    c.list_domains()
        .unwrap()
        .into_iter()
        .find(|d| d.uid == me)
        .map_or((0, 0), |d| (d.mapped_bytes, d.mappings))
}

#[test]
fn revoke_through_the_daemon_stops_the_device_and_gives_back_the_quota() {
    let mut d = Daemon::start("revoke", CONFIG);
    // A bystander with its own results to check.
    let crc = Command::new(coproc_bin())
        .arg("--socket")
        .arg(&d.socket)
        .args([
            "-o",
            "json",
            "domain-run",
            "--firmware",
            "crc32",
            "--scale",
            "3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut c = d.client();
    let mut rng = TestRng::new(3);
    let v = {
        let mem = SharedMem::new(LEN).unwrap();
        let v = scribble(&mut c, &mem, WireMapKind::Revocable);
        assert_eq!(c.revoke(v, IOVA).unwrap(), Some(LEN));
        v
    };
    for i in 0..30 {
        let mem = SharedMem::new(LEN).unwrap();
        mem.write(0, &rng.bytes(LEN as usize)).unwrap();
        let kind = [WireMapKind::Revocable, WireMapKind::Pinned][i % 2];
        c.map(v, &mem, 0, IOVA, LEN, WirePerms::Rw, kind).unwrap();
        c.reset(v).unwrap();
        c.mbox_write(v, 0, &[IOVA as u32, LEN as u32]).unwrap();
        c.start(v).unwrap();
        wait_for("scribble passes", || passes(&mut c, v)[0] >= 2);
        let want = reference::scribble_checksum(&mem.read_vec(0, LEN as usize).unwrap());
        assert_eq!(passes(&mut c, v)[1], want);
        let q = c.query(v).unwrap();
        assert_eq!((q.mappings, q.mapped_bytes), (1, LEN));
        assert_eq!(c.revoke(v, IOVA).unwrap(), Some(LEN), "iteration {i}");
        let snapshot = mem.read_vec(0, LEN as usize).unwrap();
        wait_for("the fault", || c.query(v).unwrap().state == "faulted");
        let f = c
            .list_faults()
            .unwrap()
            .into_iter()
            .rfind(|f| f.vcoproc == v)
            .unwrap();
        let addr = f.addr.unwrap();
        assert!((IOVA..IOVA + LEN).contains(&addr), "fault at {addr:#x}");
        assert!(f.access == "read" || f.access == "write", "{f:?}");
        assert_eq!(f.reason, "access violation");
        assert_eq!(mem.read_vec(0, LEN as usize).unwrap(), snapshot);
        assert_eq!(c.revoke(v, IOVA).unwrap(), None);
        let q = c.query(v).unwrap();
        assert_eq!((q.mappings, q.mapped_bytes), (0, 0));
        assert!(c.list_mappings(Some(v)).unwrap().is_empty());
    }
    let out = crc.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["verified"], true);
    // The bystander (same uid) is gone: the domain's count is ours alone.
    wait_for("the bystander's cleanup", || domain_usage(&mut c) == (0, 0));
    assert!(d.alive());
}

#[test]
fn pinned_mapping_outlives_the_domains_munmap() {
    let d = Daemon::start("pinned", CONFIG);
    let mut c = d.client();
    let data = TestRng::new(4).bytes(LEN as usize);
    let v = {
        let mem = SharedMem::new(LEN).unwrap();
        mem.write(0, &data).unwrap();
        scribble(&mut c, &mem, WireMapKind::Pinned)
        // dropped: the client's mapping and descriptor are gone
    };
    wait_for("passes", || passes(&mut c, v)[0] >= 3);
    assert_eq!(passes(&mut c, v)[1], reference::scribble_checksum(&data));
    let before = passes(&mut c, v)[0];
    wait_for("more passes", || passes(&mut c, v)[0] > before + 2);
    assert_ne!(c.query(v).unwrap().state, "faulted");
    let m = c.list_mappings(Some(v)).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(
        (m[0].iova, m[0].len, m[0].kind),
        (IOVA, LEN, WireMapKind::Pinned)
    );
    // Its domain ends it.
    c.unmap(v, IOVA).unwrap();
    wait_for("the fault", || c.query(v).unwrap().state == "faulted");
    assert_eq!(domain_usage(&mut c), (0, 0));
}

#[test]
fn mapping_quota_is_enforced_and_death_frees_everything() {
    let d = Daemon::start("quota", CONFIG);
    let mut c = d.client();
    let v = c.open("mcu0").unwrap();
    let mem = SharedMem::new(2 << 20).unwrap();
    for i in 0..4 {
        c.map(
            v,
            &mem,
            0,
            IOVA + i * 0x10000,
            4096,
            WirePerms::R,
            WireMapKind::Revocable,
        )
        .unwrap();
    }
    let e = c
        .map(
            v,
            &mem,
            0,
            IOVA + 0x10_0000,
            4096,
            WirePerms::R,
            WireMapKind::Pinned,
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Quota));
    assert!(e.to_string().contains("4 mappings"), "{e}");
    assert_eq!(domain_usage(&mut c), (4 * 4096, 4));
    assert_eq!(c.revoke(v, IOVA).unwrap(), Some(4096));
    // Bytes: 2 MiB in all.
    let e = c
        .map(
            v,
            &mem,
            0,
            IOVA + 0x10_0000,
            2 << 20,
            WirePerms::R,
            WireMapKind::Pinned,
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Quota));
    assert!(e.to_string().contains("mapped bytes"), "{e}");
    // A refused map (overlap) takes nothing.
    let e = c
        .map(
            v,
            &mem,
            0,
            IOVA + 0x10000,
            4096,
            WirePerms::R,
            WireMapKind::Pinned,
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument));
    assert_eq!(domain_usage(&mut c), (3 * 4096, 3));
    c.map(v, &mem, 0, IOVA, 4096, WirePerms::R, WireMapKind::Pinned)
        .unwrap();
    let (ok, out, err) = d.cli(&["-o", "json", "mapping-list", &v.to_string()]);
    assert!(ok, "{err}");
    let l: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(l.as_array().unwrap().len(), 4);
    assert_eq!(l[0]["iova"], IOVA);
    assert_eq!(l[0]["kind"], "pinned");
    assert_eq!(l[1]["kind"], "revocable");
    // The CLI revokes by hex or decimal iova.
    let (ok, out, err) = d.cli(&["-o", "json", "mapping-revoke", &v.to_string(), "0x60010000"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"revoked\":true"), "{out}");
    let (ok, out, _) = d.cli(&[
        "mapping-revoke",
        &v.to_string(),
        &(IOVA + 0x10000).to_string(),
    ]);
    assert!(ok);
    assert!(out.contains("nothing mapped"), "{out}");
    let (ok, _, err) = d.cli(&["mapping-revoke", &v.to_string(), "0xzz"]);
    assert!(!ok);
    assert!(err.contains("not an iova"), "{err}");
    // Domain death: a client process killed with everything mapped.
    let mut hog = Command::new(coproc_bin())
        .arg("--socket")
        .arg(&d.socket)
        .args([
            "-o",
            "json",
            "domain-run",
            "--firmware",
            "hog",
            "--seconds",
            "600",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the hog's mapping", || {
        c.list_mappings(None).unwrap().len() == 4
    });
    hog.kill().unwrap();
    hog.wait().unwrap();
    wait_for("the hog's cleanup", || {
        c.list_mappings(None).unwrap().len() == 3
    });
    drop(c);
    let mut c = d.client();
    // The first session's end is asynchronous.
    wait_for("the session's cleanup", || domain_usage(&mut c) == (0, 0));
    assert!(c.list_mappings(None).unwrap().is_empty());
}

#[test]
fn hostile_revoke_requests_get_clear_answers() {
    let mut d = Daemon::start("hostile", CONFIG);
    let mut c = d.client();
    let mem = SharedMem::new(LEN).unwrap();
    let v = scribble(&mut c, &mem, WireMapKind::Revocable);
    for iova in [0, 1, u64::MAX, IOVA + 4096, IOVA + 1, u64::MAX - 4095] {
        assert_eq!(c.revoke(v, iova).unwrap(), None, "{iova:#x}");
    }
    for bad in [0, u32::MAX, v + 1000] {
        assert_eq!(
            c.revoke(bad, IOVA).unwrap_err().code(),
            Some(ErrorCode::NotFound)
        );
        assert_eq!(
            c.list_mappings(Some(bad)).unwrap_err().code(),
            Some(ErrorCode::NotFound)
        );
    }
    // Raw frames: unknown fields, wrong types, descriptors attached.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let send = |s: &mut UnixStream, body: serde_json::Value| {
        s.write_all(&encode(&body).unwrap()).unwrap();
    };
    let read = |s: &mut UnixStream| -> ServerFrame {
        let mut hdr = [0u8; 8];
        s.read_exact(&mut hdr).unwrap();
        assert_eq!(u32::from_le_bytes(hdr[..4].try_into().unwrap()), MAGIC);
        let mut body = vec![0; u32::from_le_bytes(hdr[4..].try_into().unwrap()) as usize];
        s.read_exact(&mut body).unwrap();
        serde_json::from_slice(&body).unwrap()
    };
    let code = |f: ServerFrame| match f {
        ServerFrame::Reply { result: Err(e), .. } => e.code,
        other => panic!("expected an error, got {other:?}"),
    };
    send(
        &mut s,
        serde_json::json!({"id": 1, "op": "hello", "version": coproc_proto::VERSION}),
    );
    assert!(matches!(
        read(&mut s),
        ServerFrame::Reply { result: Ok(_), .. }
    ));
    send(
        &mut s,
        serde_json::json!({"id": 2, "op": "revoke", "vcoproc": v, "iova": IOVA, "force": true}),
    );
    assert_eq!(code(read(&mut s)), ErrorCode::BadRequest);
    send(
        &mut s,
        serde_json::json!({"id": 3, "op": "revoke", "vcoproc": v, "iova": -1}),
    );
    assert_eq!(code(read(&mut s)), ErrorCode::BadRequest);
    send(
        &mut s,
        serde_json::json!({"id": 4, "op": "revoke", "vcoproc": v}),
    );
    assert_eq!(code(read(&mut s)), ErrorCode::BadRequest);
    send(
        &mut s,
        serde_json::json!({"id": 5, "op": "list-mappings", "vcoproc": "all"}),
    );
    assert_eq!(code(read(&mut s)), ErrorCode::BadRequest);
    let body =
        encode(&serde_json::json!({"id": 6, "op": "revoke", "vcoproc": v, "iova": IOVA})).unwrap();
    coproc_proto::fdpass::send_frame(rustix::fd::AsFd::as_fd(&s), &body, &[mem.fd()]).unwrap();
    assert_eq!(code(read(&mut s)), ErrorCode::BadFd);
    // Still mapped, still running, and the daemon serves on.
    assert_eq!(c.list_mappings(Some(v)).unwrap().len(), 1);
    let n = passes(&mut c, v)[0];
    wait_for("more passes", || passes(&mut c, v)[0] > n);
    assert_eq!(c.revoke(v, IOVA).unwrap(), Some(LEN));
    assert!(d.alive());
}

/// Admin revoke of another uid's mappings: pinned refused, revocable taken
/// and the domain told. Needs root (the domain runs as uid 65534).
#[test]
fn admin_revokes_only_revocable_mappings_and_the_domain_is_told() {
    if !common::need_root("run a domain as another uid") {
        return;
    }
    let d = Daemon::start("admin", CONFIG);
    let mut admin = d.client();
    assert!(admin.identity().admin);
    let mine = admin.open("mcu0").unwrap();
    let me = d.dir.join("mappings-test");
    common::copy_executable(&std::env::current_exe().unwrap(), &me);
    let mut child = {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(&me);
        cmd.args(["--exact", "revoked_domain", "--ignored", "--nocapture"])
            .env("COPROC_REVOKE_SOCKET", &d.socket)
            .env("COPROC_REVOKE_FOREIGN", mine.to_string())
            .uid(65534)
            .gid(65534)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A process another test thread forks while the copy is being
        // written holds it open for writing until it execs: "text file
        // busy" for a moment.
        let mut tries = 0;
        loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(26) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => break r.unwrap(),
            }
        }
    };
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let v: u32 = loop {
        let l = lines.next().expect("the domain says ready").unwrap();
        if let Some(v) = l.strip_prefix("ready ") {
            break v.trim().parse().unwrap();
        }
    };
    let maps = admin.list_mappings(Some(v)).unwrap();
    assert_eq!(maps.len(), 2);
    assert!(maps.iter().all(|m| m.domain == 65534));
    assert!(admin.list_mappings(None).unwrap().len() >= 2);
    let pinned = IOVA;
    let revocable = IOVA + 0x10_0000;
    let e = admin.revoke(v, pinned).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PermissionDenied));
    assert!(e.to_string().contains("pinned"), "{e}");
    let (ok, _, err) = d.cli(&["mapping-revoke", &v.to_string(), &format!("{pinned:#x}")]);
    assert!(!ok);
    assert!(err.contains("error[permission-denied]"), "{err}");
    assert_eq!(admin.revoke(v, revocable).unwrap(), Some(LEN));
    let mut got = String::new();
    for l in lines.by_ref() {
        let l = l.unwrap();
        if l.starts_with("event ") {
            got = l;
            break;
        }
    }
    assert_eq!(got, format!("event {v} {revocable} {LEN} 0"));
    // Still there: the domain's session lives until we close its stdin.
    assert_eq!(admin.revoke(v, revocable).unwrap(), None);
    assert_eq!(admin.list_mappings(Some(v)).unwrap().len(), 1);
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The domain is gone: so is every mapping and byte it had.
    wait_for("the domain's cleanup", || {
        admin
            .list_domains()
            .unwrap()
            .iter()
            .all(|d| d.uid != 65534 || (d.mappings == 0 && d.mapped_bytes == 0))
    });
}

/// Not a test of its own: run as uid 65534 by
/// `admin_revokes_only_revocable_mappings_and_the_domain_is_told`.
#[test]
#[ignore = "run as another uid by admin_revokes_only_revocable_mappings_and_the_domain_is_told"]
fn revoked_domain() {
    let sock = std::env::var_os("COPROC_REVOKE_SOCKET").expect("COPROC_REVOKE_SOCKET");
    let foreign: u32 = std::env::var("COPROC_REVOKE_FOREIGN")
        .unwrap()
        .parse()
        .unwrap();
    let mut c = Client::connect_to(Path::new(&sock)).unwrap();
    assert!(!c.identity().admin);
    // Root's vcoproc is invisible to us.
    assert_eq!(
        c.revoke(foreign, IOVA).unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        c.list_mappings(Some(foreign)).unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    let pinned = SharedMem::new(LEN).unwrap();
    let revocable = SharedMem::new(LEN).unwrap();
    let v = scribble(&mut c, &pinned, WireMapKind::Pinned);
    c.map(
        v,
        &revocable,
        0,
        IOVA + 0x10_0000,
        LEN,
        WirePerms::Rw,
        WireMapKind::Revocable,
    )
    .unwrap();
    assert!(c
        .list_mappings(None)
        .unwrap()
        .iter()
        .all(|m| m.vcoproc == v));
    println!("ready {v}");
    std::io::stdout().flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Event::MappingRevoked {
            vcoproc,
            iova,
            len,
            by,
        } = c.next_event(left).unwrap()
        {
            println!("event {vcoproc} {iova} {len} {by}");
            break;
        }
    }
    // The pinned one is still there and still in use.
    let m = c.list_mappings(Some(v)).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].iova, IOVA);
    let n = c.mbox_read(v).unwrap().0[0];
    wait_for("more passes", || c.mbox_read(v).unwrap().0[0] > n);
    // Stay until the test is done with us.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}
