//! What an operator installs and runs: the systemd units (their hardening
//! scored by `systemd-analyze security`), socket activation and readiness
//! notification (through `systemd-socket-activate` and a notification
//! socket of the test's own), the log formats, and the Debian package
//! (built by `scripts/package.sh`, unpacked with `dpkg` into a private
//! root and its programs run from there). Needs systemd's tools, dpkg and
//! cargo-deb, which the README's set-up installs; without them a test
//! fails unless `COPROC_SKIP_PACKAGE_TESTS=1`.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether `tool` is on PATH; if not, the test fails unless skipping is
/// asked for (then it returns false).
fn need(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if std::env::var("COPROC_SKIP_PACKAGE_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("skipped (COPROC_SKIP_PACKAGE_TESTS=1): {tool} is missing");
        return false;
    }
    panic!("{tool} is missing: run scripts/setup.sh (the README's test command does), or set COPROC_SKIP_PACKAGE_TESTS=1");
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("coproc-pkg-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_service_unit_is_hardened() {
    if !need("systemd-analyze") {
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(root().join("packaging/coprocd.service"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let level: f64 = text
        .lines()
        .find_map(|l| {
            let rest = l
                .split("Overall exposure level for coprocd.service:")
                .nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    println!("systemd-analyze security: {level}");
    assert!(level <= 3.0, "exposure {level} > 3.0:\n{text}");
    // The units name the binary the package installs and notify readiness.
    let unit = std::fs::read_to_string(root().join("packaging/coprocd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/coprocd"));
    assert!(unit.contains("Type=notify"));
    let socket = std::fs::read_to_string(root().join("packaging/coprocd.socket")).unwrap();
    assert!(socket.contains("ListenStream=/run/coproc/coprocd.sock"));
}

/// A child killed when the test ends, however it ends (a daemon left
/// behind would hold the test's output pipe open).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait for a datagram on `sock` that contains `what`, at most 30 s.
fn await_notification(sock: &UnixDatagram, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {what} notification within 30 s");
        sock.set_read_timeout(Some(left)).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            if msg.lines().any(|l| l == what) {
                return msg;
            }
        }
    }
}

#[test]
fn socket_activation_and_readiness() {
    if !need("systemd-socket-activate") {
        return;
    }
    let dir = temp_dir("activate");
    let socket = dir.join("coprocd.sock");
    let notify = dir.join("notify.sock");
    let notifications = UnixDatagram::bind(&notify).unwrap();
    let config = dir.join("coprocd.toml");
    std::fs::write(
        &config,
        "[[pcoproc]]\nname = \"mcu0\"\nclass = \"mcu\"\n\n[[domain]]\nuids = \"*\"\npcoprocs = [\"mcu0\"]\n",
    )
    .unwrap();
    // systemd-socket-activate binds the socket and execs coprocd with it
    // as fd 3 (LISTEN_FDS=1, LISTEN_PID its own pid).
    // (It passes on only the environment it is told to.)
    let daemon = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify.display()))
        .arg(common::coprocd_bin())
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut daemon = KillOnDrop(daemon);
    // systemd-socket-activate serves the socket before coprocd runs: the
    // first connection starts it (as under systemd, it waits for that).
    // The socket file appears at bind(), before listen(): a connection
    // until then is refused, so the first one is retried until it is taken.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut c = loop {
        match coproc_client::Client::connect_to(&socket) {
            Ok(c) => break c,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no socket from systemd-socket-activate: {e}"
            ),
        }
        std::thread::yield_now();
    };
    let ready = await_notification(&notifications, "READY=1");
    println!("notification: {ready:?}");
    let names: Vec<String> = c
        .list_coprocs()
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["mcu0"]);
    drop(c);
    let pid = rustix::process::Pid::from_child(&daemon.0);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    await_notification(&notifications, "STOPPING=1");
    let status = daemon.0.wait().unwrap();
    assert!(status.success(), "coprocd exited with {status}");
    let mut log = String::new();
    daemon
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("activated=true"), "{log}");
    // The socket was systemd's: coprocd left it where it was.
    assert!(socket.exists(), "coprocd removed an inherited socket");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The log line in which coprocd, started with `env` set, says it serves.
fn first_log_line(env: &[(&str, &str)]) -> String {
    let dir = temp_dir(&format!("log{}", env.len()));
    let mut cmd = Command::new(common::coprocd_bin());
    cmd.arg("--socket").arg(dir.join("s.sock"));
    cmd.env_remove("JOURNAL_STREAM")
        .env_remove("COPROC_LOG_FORMAT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut d = KillOnDrop(cmd.stderr(Stdio::piped()).spawn().unwrap());
    let mut line = String::new();
    let mut log = BufReader::new(d.0.stderr.take().unwrap());
    for _ in 0..100 {
        line.clear();
        if log.read_line(&mut line).unwrap() == 0 || line.contains("coprocd serving") {
            break;
        }
    }
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
    line
}

#[test]
fn log_formats_follow_the_environment() {
    // Text, without colour when stderr is no terminal (a pipe here).
    let text = first_log_line(&[]);
    assert!(text.contains("coprocd serving"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour in a pipe: {text:?}");
    // JSON lines.
    let json = first_log_line(&[("COPROC_LOG_FORMAT", "json")]);
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(v["fields"]["message"], "coprocd serving", "{json}");
    assert_eq!(v["level"], "INFO");
    // Under journald: no timestamp of its own (the line starts with the
    // level), no colour.
    let journal = first_log_line(&[("JOURNAL_STREAM", "8:1234")]);
    assert!(journal.trim_start().starts_with("INFO"), "{journal:?}");
    assert!(!journal.contains('\u{1b}'));
}

#[test]
fn the_debian_package_installs_and_runs() {
    if !(need("dpkg") && need("cargo-deb")) {
        return;
    }
    // Built by the script the docs give.
    let out = Command::new(root().join("scripts/package.sh"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/package.sh failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let deb = text
        .lines()
        .rev()
        .find(|l| {
            std::path::Path::new(l.trim())
                .extension()
                .is_some_and(|e| e == "deb")
        })
        .map_or_else(
            || panic!("no .deb named in: {text}"),
            |l| root().join(l.trim()),
        );
    // Installed with dpkg into a private root (its own package database),
    // so the test leaves the machine as it was.
    let inst = temp_dir("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(inst.join(d)).unwrap();
    }
    std::fs::write(inst.join("var/lib/dpkg/status"), "").unwrap();
    let st = Command::new("dpkg")
        .arg(format!("--root={}", inst.display()))
        .args([
            "--force-depends",
            "--force-not-root",
            "--force-script-chrootless",
            "-i",
        ])
        .arg(&deb)
        .status()
        .unwrap();
    assert!(st.success(), "dpkg -i {}", deb.display());
    for f in [
        "usr/bin/coprocd",
        "usr/bin/coproc",
        "usr/bin/coproc-bench",
        "lib/systemd/system/coprocd.service",
        "lib/systemd/system/coprocd.socket",
        "etc/coproc/coprocd.toml",
        "usr/share/man/man1/coproc.1.gz",
        "usr/share/man/man1/coproc-run.1.gz",
        "usr/share/man/man8/coprocd.8.gz",
        "usr/share/bash-completion/completions/coproc",
        "usr/share/coproc/sdk/coproc.h",
        "usr/share/coproc/firmware/crc32.elf",
        "usr/share/doc/coproc/daemon.md",
    ] {
        assert!(inst.join(f).exists(), "{f} not installed");
    }
    // The installed programs run: the daemon checks the installed
    // configuration, serves it, and the installed tool talks to it.
    let bin = inst.join("usr/bin");
    let check = Command::new(bin.join("coprocd"))
        .arg("--check")
        .arg("--config")
        .arg(inst.join("etc/coproc/coprocd.toml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let sock = inst.join("coprocd.sock");
    let d = KillOnDrop(
        Command::new(bin.join("coprocd"))
            .arg("--config")
            .arg(inst.join("etc/coproc/coprocd.toml"))
            .arg("--socket")
            .arg(&sock)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "installed coprocd did not come up"
        );
        std::thread::yield_now();
    }
    let list = Command::new(bin.join("coproc"))
        .arg("--socket")
        .arg(&sock)
        .args(["-o", "json", "list"])
        .output()
        .unwrap();
    drop(d);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(String::from_utf8_lossy(&list.stdout).contains("mcu0"));
    // The installed firmware is the firmware the project builds.
    assert_eq!(
        std::fs::read(inst.join("usr/share/coproc/firmware/crc32.elf")).unwrap(),
        coproc_firmware::CRC32.elf
    );
    let _ = std::fs::remove_dir_all(&inst);
}
