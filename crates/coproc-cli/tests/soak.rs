//! `coproc bench soak`, `coproc bench faults` and `coproc bench
//! isolation`, short runs: the figures that are not timing must hold. A leak is a count, not a time: after
//! the soak's cycles the daemon holds exactly the descriptors and threads
//! it held before, and no vcoproc of a killed client is left; the victim
//! of each benchmark never sees a wrong or failed result. Share and
//! latency ratios are timing and are not asserted.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]
// Figures that are counts compare exactly.
#![allow(clippy::float_cmp)]

mod common;

use serde_json::Value;

/// A benchmark's figures and what it printed on stderr (its victims'
/// errors, in their words): both are shown when an assertion fails.
struct Report {
    figures: serde_json::Map<String, Value>,
    stderr: String,
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}\nstderr:\n{}", self.figures, self.stderr)
    }
}

/// Run `coproc bench ARGS -o json` and return its figures (whatever its
/// exit status: a failed run still prints them).
fn bench(args: &[&str]) -> Report {
    // The benchmarks start the coprocd next to the coproc binary.
    common::coprocd_bin();
    let out = std::process::Command::new(common::coproc_bin())
        .arg("bench")
        .args(args)
        .args(["-o", "json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "bench {args:?} printed no report ({e}; {}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Report {
        figures: report["figures"].as_object().unwrap().clone(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn figure(f: &Report, name: &str) -> f64 {
    f.figures
        .get(name)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no figure {name} in {f:?}"))
}

#[test]
fn soak_cycles_leave_no_descriptor_thread_or_vcoproc_behind() {
    let f = bench(&["soak", "--cycles", "140"]);
    assert_eq!(figure(&f, "cycles"), 140.0);
    assert!(figure(&f, "process_kills") > 0.0, "{f:?}");
    assert_eq!(figure(&f, "victim_errors"), 0.0, "{f:?}");
    assert!(figure(&f, "victim_requests") > 0.0, "{f:?}");
    assert_eq!(figure(&f, "settled"), 1.0, "{f:?}");
    assert_eq!(figure(&f, "leftover_vcoprocs"), 0.0, "{f:?}");
    assert_eq!(figure(&f, "fd_growth"), 0.0, "{f:?}");
    assert_eq!(figure(&f, "thread_growth"), 0.0, "{f:?}");
}

#[test]
fn faults_of_an_offender_never_break_the_victim() {
    let f = bench(&["faults", "--rounds", "1"]);
    assert_eq!(figure(&f, "mcu_victim_errors"), 0.0, "{f:?}");
    assert_eq!(figure(&f, "victim_errors"), 0.0, "{f:?}");
    assert_eq!(figure(&f, "failures"), 0.0, "{f:?}");
    // Every offender did what it does at least once.
    for kind in ["fault", "hang", "corrupt", "kill", "revoke"] {
        assert!(
            figure(&f, &format!("mcu_offender_ops_{kind}")) > 0.0,
            "{kind}: {f:?}"
        );
    }
}

#[test]
fn isolation_offenders_never_break_the_victim() {
    let f = bench(&["isolation", "--rounds", "1"]);
    assert_eq!(figure(&f, "victim_errors"), 0.0, "{f:?}");
    assert_eq!(figure(&f, "failures"), 0.0, "{f:?}");
    assert!(figure(&f, "victim_requests") > 0.0, "{f:?}");
    // Every offender and control ran its phase (a NaN p99 would mean
    // none of the victim's trips did): a phase begins only
    // after its offender completed a first operation (kill and spawn:
    // children started and SIGKILLed by a process of their own, which
    // reported the first; busy: its child up, its vcoprocs answering),
    // and the benchmark fails otherwise. (Operations
    // counted while the victim measures may be none for the slow ones:
    // a phase of one round is a few milliseconds.)
    for kind in [
        "firmware", "fault", "spam", "map", "kill", "cpu", "spawn", "busy",
    ] {
        assert!(
            figure(&f, &format!("victim_p99_us_{kind}")) > 0.0,
            "{kind}: {f:?}"
        );
    }
}
