//! The `coproc` binary's contract (docs/cli.md): JSON objects with named
//! fields and numbers as numbers, wall-clock fault times, distinct exit
//! statuses (2 to 8) with the protocol's error-code names, parse errors that name
//! the word, unknown names as errors, and `sched-set` keeping the
//! parameters not named and saying what has no effect.

mod common;

use common::{coproc_bin, Daemon};
use serde_json::Value;
use std::process::Command;

/// `coproc ARGS` against `d`: (exit status, stdout, stderr).
fn cli(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let out = d.coproc(args).output().unwrap();
    (
        out.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `coproc -o json ARGS`, which must succeed, parsed.
fn json(d: &Daemon, args: &[&str]) -> Value {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let (code, out, err) = cli(d, &all);
    assert_eq!(code, 0, "coproc {all:?}: {out} {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// An RFC 3339 UTC time as `rfc3339` prints it: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 30
        && s.ends_with('Z')
        && [4, 7].iter().all(|&i| b[i] == b'-')
        && b[10] == b'T'
        && [13, 16].iter().all(|&i| b[i] == b':')
        && b[19] == b'.'
        && s.starts_with("20")
}

#[test]
fn failures_exit_with_distinct_statuses_and_named_codes() {
    let d = Daemon::start("cli-exit", common::MCU_RR);
    // Usage (clap's, and a mailbox word that is no number, named).
    let (code, _, err) = cli(&d, &["run", "echo", "--mbox", "1,2,zz"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("\"zz\""), "the bad word is named: {err}");
    let (code, _, err) = cli(&d, &["sched-set", "mcu0", "rr", "slice"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("error[usage]") && err.contains("\"slice\""),
        "{err}"
    );
    let (code, _, _) = cli(&d, &["no-such-verb"]);
    assert_eq!(code, 2);
    // No daemon there.
    let out = Command::new(coproc_bin())
        .arg("--socket")
        .arg(d.dir.join("nothing.sock"))
        .arg("list")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("error[unreachable]"), "{err}");
    // Unknown names and ids: not found, never an empty success.
    let (code, out, err) = cli(&d, &["vcoproc-list", "--coproc", "mcu9"]);
    assert_eq!(code, 4, "{out} {err}");
    assert!(out.is_empty(), "no empty table: {out}");
    assert!(
        err.contains("error[not-found]") && err.contains("mcu9"),
        "{err}"
    );
    for args in [
        &["vcoproc-destroy", "999"][..],
        &["sched-get", "mcu9"],
        &["vcoproc-set", "999", "--weight", "5"],
    ] {
        let (code, _, err) = cli(&d, args);
        assert_eq!(code, 4, "{args:?}: {err}");
        assert!(err.contains("error[not-found]"), "{args:?}: {err}");
        assert!(!err.contains("NotFound"), "{err}");
    }
    // The daemon's other refusals: their protocol names, status 1.
    let (code, _, err) = cli(&d, &["sched-set", "mcu0", "credit", "slice_us=0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("error[invalid-argument]"), "{err}");
    // Over the domain's quota of mapped bytes (16 MiB here).
    let (code, _, err) = cli(&d, &["run", "echo", "--map-kib", "17408"]);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("error[quota]"), "{err}");
    // A run that times out, and one whose vcoproc faults.
    let (code, out, err) = cli(&d, &["-o", "json", "run", "hog", "--seconds", "0.2"]);
    assert_eq!(code, 6, "{out} {err}");
    assert!(err.contains("error[timeout]"), "{err}");
    let r: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r["outcome"], "timeout");
    let (code, out, err) = cli(&d, &["-o", "json", "run", "faulty"]);
    assert_eq!(code, 7, "{out} {err}");
    assert!(err.contains("error[fault]"), "{err}");
    // The JSON report carries the fault record the table shows.
    let r: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r["outcome"], "faulted", "{r}");
    let f = &r["faults"][0];
    assert_eq!(f["vcoproc"], r["vcoproc"], "{r}");
    assert!(
        f["reason"].as_str().unwrap().contains("access violation"),
        "{r}"
    );
    assert!(is_rfc3339(f["at"].as_str().unwrap()), "{r}");
    assert!(f["at_ns"].is_u64(), "{r}");
    let (code, out, _) = cli(&d, &["run", "faulty"]);
    assert_eq!(code, 7);
    assert!(out.contains("fault: "), "the table shows it too: {out}");
}

#[test]
fn permission_is_its_own_status() {
    if !common::need_root("run the CLI as another uid") {
        return;
    }
    let d = Daemon::start("cli-perm", common::MCU_RR);
    use std::os::unix::process::CommandExt;
    let out = d
        .coproc(&["sched-set", "mcu0", "rr", "slice_us=2000"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("error[permission-denied]"), "{err}");
}

#[test]
fn json_has_named_fields_numbers_and_wall_clock_times() {
    let d = Daemon::start("cli-json", common::MCU_RR);
    let mut c = d.client();
    let v = c.open("mcu0").unwrap();
    c.load_firmware(v, "faulty", coproc_firmware::FAULTY.elf)
        .unwrap();
    c.start(v).unwrap();
    c.doorbell(v).unwrap();
    common::wait_for("the fault", || c.query(v).unwrap().state == "faulted");
    let s = json(&d, &["sched-get", "mcu0"]);
    assert_eq!(s["coproc"], "mcu0");
    assert_eq!(s["policy"], "rr");
    assert_eq!(s["params"]["slice_us"], 1000, "a number, by name: {s}");
    let st = s["standings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["vcoproc"] == v)
        .unwrap_or_else(|| panic!("{s}"));
    assert!(st["queued"].is_boolean(), "{s}");
    assert!(st["figures"].is_object(), "{s}");
    // Faults: wall clock and monotonic.
    let l = json(&d, &["fault-list"]);
    let f = l
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["vcoproc"] == v)
        .unwrap_or_else(|| panic!("{l}"));
    assert!(is_rfc3339(f["at"].as_str().unwrap()), "{f}");
    assert!(f["at_ns"].is_u64() && f["pc"].is_u64(), "{f}");
    assert_eq!(f["access"], "read", "{f}");
    // vcoproc-list: its last fault the same way, the reservation by name.
    let l = json(&d, &["vcoproc-list", "--coproc", "mcu0"]);
    let me = &l[0];
    assert_eq!(me["id"], v);
    assert_eq!(me["firmware"], "faulty");
    assert!(is_rfc3339(me["last_fault"]["at"].as_str().unwrap()), "{me}");
    assert!(me["reservation_us"].is_null(), "{me}");
    let (code, out, _) = cli(&d, &["fault-list"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("COPROC"), "{out}");
    assert!(out.contains("Z "), "wall-clock times in the table: {out}");
}

#[test]
fn sched_set_keeps_unnamed_parameters_and_says_what_has_no_effect() {
    let d = Daemon::start("cli-sched", common::MCU_RR);
    let mut c = d.client();
    let v = c.open("mcu0").unwrap();
    // Switching policy: the named parameters, the others that policy's
    // defaults, and a note saying so.
    let (code, out, err) = cli(
        &d,
        &["-o", "json", "sched-set", "mcu0", "credit", "slice_us=5000"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("note:") && err.contains("defaults"), "{err}");
    let s: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(s["policy"], "credit", "the result is printed: {s}");
    assert_eq!(s["params"]["slice_us"], 5000, "{s}");
    // The same policy: parameters not named stay.
    let (code, out, err) = cli(
        &d,
        &[
            "-o",
            "json",
            "sched-set",
            "mcu0",
            "credit",
            "cap_period_us=20000",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: cap_period_us has no effect while no vcoproc on mcu0 has a cap"),
        "{err}"
    );
    let s: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(s["params"]["slice_us"], 5000, "kept: {s}");
    assert_eq!(s["params"]["cap_period_us"], 20000, "{s}");
    let got = c.sched_get("mcu0").unwrap();
    assert!(
        got.params.contains(&("slice_us".into(), "5000".into())),
        "{got:?}"
    );
    // The table form prints it too.
    let (code, out, _) = cli(&d, &["sched-set", "mcu0", "credit"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("mcu0: policy credit slice_us=5000 cap_period_us=20000"),
        "{out}"
    );
    // A parameter the policy does not use: accepted, with a warning.
    let (code, out, err) = cli(
        &d,
        &[
            "-o",
            "json",
            "vcoproc-set",
            &v.to_string(),
            "--priority",
            "4",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: --priority has no effect under policy credit"),
        "{err}"
    );
    let r: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (r["priority"].as_i64(), r["policy"].as_str()),
        (Some(4), Some("credit"))
    );
    assert_eq!(r["warnings"].as_array().unwrap().len(), 1, "{r}");
    let (code, _, err) = cli(&d, &["vcoproc-set", &v.to_string(), "--weight", "512"]);
    assert_eq!(code, 0);
    assert!(!err.contains("warning"), "weight is credit's: {err}");
    // A table window of a vcoproc that does not exist: warned about.
    let win = format!("window={v}:0:2000");
    let (code, out, err) = cli(
        &d,
        &[
            "-o",
            "json",
            "sched-set",
            "mcu0",
            "table",
            "frame_us=10000",
            &win,
            "window=4242:5000:1000",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: window=4242:5000:1000: no vcoproc 4242"),
        "{err}"
    );
    assert!(!err.contains(&format!("no vcoproc {v} ")), "{err}");
    let s: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(s["params"]["frame_us"], 10000, "{s}");
    assert_eq!(s["params"]["window"].as_array().unwrap().len(), 2, "{s}");
    assert_eq!(s["warnings"].as_array().unwrap().len(), 1, "{s}");
    // Naming fill only keeps the frame and both windows.
    let s = json(&d, &["sched-set", "mcu0", "table", "fill=rr"]);
    assert_eq!(s["params"]["window"].as_array().unwrap().len(), 2, "{s}");
    assert_eq!(s["params"]["frame_us"], 10000, "{s}");
    assert_eq!(s["params"]["fill"], "rr", "{s}");
}
