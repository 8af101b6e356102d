//! `coproc top` against a private daemon: `--once` as a script sees it, and
//! the live view for real in a tmux pane (it fails loudly without tmux
//! unless `COPROC_SKIP_TMUX_TESTS=1`).

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use common::{wait_for, Daemon, MCU_RR};
use std::process::Command;

/// A daemon with a `hog` running, and the hog's id.
fn with_hog(name: &str) -> (Daemon, coproc_client::Client, u32) {
    let d = Daemon::start(name, MCU_RR);
    let mut c = d.client();
    let v = c.open("mcu0").unwrap();
    c.load_firmware(v, "hog", coproc_firmware::HOG.elf).unwrap();
    c.start(v).unwrap();
    wait_for("the hog to run", || c.query(v).unwrap().run_ns > 0);
    (d, c, v)
}

#[test]
fn top_once_prints_one_frame_and_json_rows() {
    let (d, mut c, v) = with_hog("top-once");
    let (ok, out, err) = d.cli(&["top", "--once", "--delay", "0.2"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("coproc top: 1 pcoprocs, 1 vcoprocs, sorted by share"),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("│mcu0") && l.contains("rr")),
        "{out}"
    );
    let row = lines
        .iter()
        .find(|l| l.starts_with(&format!("│{v} ")))
        .unwrap_or_else(|| panic!("no row for vcoproc {v}:\n{out}"));
    assert!(
        row.contains("hog") && row.contains("running") && row.contains('%'),
        "{row}"
    );
    // JSON: the rows as numbers, checked against the SDK.
    let (ok, out, err) = d.cli(&[
        "-o", "json", "top", "--once", "--delay", "0.2", "--sort", "id",
    ]);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let r = &j["vcoprocs"][0];
    let q = c.query(v).unwrap();
    assert_eq!(r["id"], v);
    assert_eq!(r["firmware"], "hog");
    assert_eq!(r["domain"], q.domain);
    assert_eq!(r["mapped_bytes"], q.mapped_bytes);
    let share = r["share_pct"].as_f64().expect("a share from two listings");
    assert!((0.0..=100.0).contains(&share), "{share}");
    assert_eq!(j["sort"], "id");
    assert_eq!(j["pcoprocs"][0]["name"], "mcu0");
    // A bad delay is refused.
    let (ok, _, err) = d.cli(&["top", "--once", "--delay", "0"]);
    assert!(!ok && err.contains("--delay"), "{err}");
}

/// tmux, or None when the environment says to skip.
fn tmux() -> Option<()> {
    if Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some(());
    }
    if std::env::var("COPROC_SKIP_TMUX_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("skipped (COPROC_SKIP_TMUX_TESTS=1): tmux is not installed");
        return None;
    }
    panic!("this test needs tmux (scripts/setup.sh installs it), or COPROC_SKIP_TMUX_TESTS=1 to skip it");
}

#[test]
fn top_runs_live_in_a_terminal_sorts_and_quits_on_q() {
    if tmux().is_none() {
        return;
    }
    let (d, _c, v) = with_hog("top-live");
    let server = format!("coproc-top-test-{}", std::process::id());
    let tm = |args: &[&str]| {
        Command::new("tmux")
            .arg("-L")
            .arg(&server)
            .args(args)
            .output()
            .unwrap()
    };
    // The shell in the pane writes top's exit status to a file: tmux's
    // own `pane_dead_status` can stay empty when it sees the terminal
    // close before it reaps the process.
    let status_file = d.dir.join("top.status");
    let cmd = format!(
        "{} --socket {} top --delay 0.2; echo $? > {}",
        common::coproc_bin().display(),
        d.socket.display(),
        status_file.display()
    );
    // The pane stays after the command exits, to read its screen.
    let o = tm(&[
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "140",
        "-y",
        "30",
        &cmd,
        ";",
        "set-option",
        "-w",
        "-t",
        "top",
        "remain-on-exit",
        "on",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let screen =
        || String::from_utf8_lossy(&tm(&["capture-pane", "-p", "-t", "top"]).stdout).to_string();
    let row = format!("│{v} ");
    wait_for("the hog's row with a share", || {
        screen()
            .lines()
            .any(|l| l.starts_with(&row) && l.contains("hog") && l.contains('%'))
    });
    assert!(screen().contains("sorted by share"));
    // A key changes the sort, in place.
    tm(&["send-keys", "-t", "top", "f"]);
    wait_for("the sort by faults", || {
        screen().contains("sorted by faults")
    });
    let s = screen();
    assert_eq!(
        s.matches("coproc top:").count(),
        1,
        "refreshed in place:\n{s}"
    );
    // q quits, with status 0. (Once, under a loaded CI run, the pane was
    // still alive a minute after one `q`; a key sent while the terminal
    // was being redrawn may be lost by tmux, so `q` is sent again every
    // few seconds, and the screen is shown if top never exits.)
    let status = || {
        std::fs::read_to_string(&status_file)
            .ok()
            .filter(|s| s.ends_with('\n'))
    };
    let mut sent: Option<std::time::Instant> = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while status().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "top did not exit on q, screen:\n{}",
            screen()
        );
        if sent.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(5)) {
            tm(&["send-keys", "-t", "top", "q"]);
            sent = Some(std::time::Instant::now());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(status().as_deref(), Some("0\n"), "top's exit status");
    tm(&["kill-server"]);
}
