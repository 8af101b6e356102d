//! `--samples` and `--plot`: the CSV holds the very samples the figures
//! were computed from (the percentiles recomputed from it match), and the
//! SVG draws every series.

// Indexes and figures of the tests' own small sample sets; figures are
// compared exactly because the CSV holds the very values they came from.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::float_cmp
)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Run `coproc-bench bench ARGS -o json` with `--samples` and `--plot` into
/// `dir`; returns the figures and the CSV's series.
fn run(dir: &Path, args: &[&str]) -> (serde_json::Map<String, Value>, BTreeMap<String, Vec<f64>>) {
    let csv = dir.join("samples.csv");
    let svg = dir.join("plot.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_coproc-bench"))
        .arg("bench")
        .args(args)
        .args(["-o", "json", "--samples"])
        .arg(&csv)
        .arg("--plot")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let figures = report["figures"].as_object().unwrap().clone();
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("series,kind,index,value"));
    let mut series: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f.len(), 4, "{l}");
        let v = series.entry(f[0].to_string()).or_default();
        assert_eq!(
            f[2].parse::<usize>().unwrap(),
            v.len(),
            "indexes in order: {l}"
        );
        v.push(f[3].parse().unwrap());
    }
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg"), "an SVG document");
    for name in series.keys() {
        assert!(svg.contains(name.as_str()), "legend names {name}");
    }
    assert!(
        svg.matches("<polyline").count() >= series.len(),
        "one line per series"
    );
    (figures, series)
}

/// Nearest rank, as the benchmarks compute it.
fn percentile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[test]
fn preempt_samples_are_the_ones_behind_its_percentiles() {
    let dir = tempdir("preempt");
    let (f, s) = run(&dir, &["preempt", "--messages", "200"]);
    let waits = &s["doorbell_to_slice_us"];
    let rtt = &s["round_trip_us"];
    assert_eq!((waits.len(), rtt.len()), (200, 200));
    assert_eq!(
        f["p50_us"].as_f64().unwrap(),
        round3(percentile(waits, 0.5))
    );
    assert_eq!(
        f["p99_us"].as_f64().unwrap(),
        round3(percentile(waits, 0.99))
    );
    assert_eq!(
        f["max_us"].as_f64().unwrap(),
        round3(percentile(waits, 1.0))
    );
    assert_eq!(
        f["round_trip_p99_us"].as_f64().unwrap(),
        round3(percentile(rtt, 0.99))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cap_samples_are_its_windows() {
    let dir = tempdir("cap");
    let (f, s) = run(&dir, &["cap", "--seconds", "2"]);
    let w = &s["capped_hog"];
    assert_eq!(w.len(), 2, "one share per 1 s window");
    let min = w.iter().copied().fold(f64::MAX, f64::min) * 100.0;
    let max = w.iter().copied().fold(0.0, f64::max) * 100.0;
    assert!((f["window_min_pct"].as_f64().unwrap() - min).abs() < 1e-3);
    assert!((f["window_max_pct"].as_f64().unwrap() - max).abs() < 1e-3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn plotting_a_benchmark_without_samples_is_a_clear_error() {
    let dir = tempdir("none");
    let out = Command::new(env!("CARGO_BIN_EXE_coproc-bench"))
        .args(["bench", "sched-scale", "--rounds", "1", "--plot"])
        .arg(dir.join("x.svg"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing to plot"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("coproc-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
