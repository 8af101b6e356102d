//! The daemon's Prometheus metrics: scraped over its Unix socket and over
//! loopback TCP, checked against what the SDK's `query`, `list-coprocs`
//! and `list-domains` report; a stuck scraper hurts no session.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::float_cmp, // scraped counts are whole numbers and compare exactly
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use common::{wait_for, Daemon};
use std::io::{Read, Write};
use std::path::Path;

/// `MCU_RR` with the metrics on a Unix socket in the directory of the
/// daemon `Daemon::start(name, …)` starts, and (if given) a TCP port.
fn config(name: &str, tcp: Option<u16>) -> String {
    let sock = std::env::temp_dir()
        .join(format!("coproc-test-{name}-{}", std::process::id()))
        .join("metrics.sock");
    let mut daemon = format!(
        "[daemon]\nmetrics_socket = {:?}\n",
        sock.display().to_string()
    );
    if let Some(p) = tcp {
        daemon.push_str(&format!("metrics_listen = \"127.0.0.1:{p}\"\n"));
    }
    format!("{daemon}{}", common::MCU_RR)
}

fn metrics_socket(cfg: &str) -> std::path::PathBuf {
    let line = cfg
        .lines()
        .find(|l| l.starts_with("metrics_socket"))
        .unwrap();
    let path: String = line
        .split('=')
        .nth(1)
        .unwrap()
        .trim()
        .trim_matches('"')
        .into();
    path.into()
}

/// One HTTP GET of `path` on `s`: (status line, body).
fn get(mut s: impl Read + Write, path: &str) -> (String, String) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

fn scrape(sock: &Path) -> String {
    let (status, body) = get(
        std::os::unix::net::UnixStream::connect(sock).unwrap(),
        "/metrics",
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.ends_with("# EOF\n"), "{body}");
    body
}

/// The labels of one series line, unescaped.
fn labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() {
            return out;
        }
        assert_eq!(chars.next(), Some('"'));
        let mut v = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => v.push('\n'),
                    Some(c) => v.push(c),
                    None => break,
                },
                '"' => break,
                c => v.push(c),
            }
        }
        out.push((key.trim_start_matches(',').to_string(), v));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

/// The value of series `name` whose labels include `want`.
fn value(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, v) = l.rsplit_once(' ')?;
        let (n, ls) = match series.split_once('{') {
            Some((n, rest)) => (n, labels(rest.strip_suffix('}')?)),
            None => (series, Vec::new()),
        };
        let all = want
            .iter()
            .all(|(k, w)| ls.iter().any(|(lk, lv)| lk == k && lv == w));
        (n == name && all).then(|| v.parse().unwrap())
    })
}

/// Every `coproc_…` metric name in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("coproc_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        // Rust paths and crate names (coproc_core::…) are not metrics.
        if !tail[end..].starts_with("::") && !name.starts_with("coproc_core") {
            out.push(name.to_string());
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn scraped_metrics_match_what_the_sdk_reports() {
    let cfg = config("metrics-match", None);
    let sock = metrics_socket(&cfg);
    let d = Daemon::start("metrics-match", &cfg);
    wait_for("the metrics socket", || sock.exists());
    let mut c = d.client();
    // A busy vcoproc whose firmware label needs escaping, and one that
    // faults.
    let label = "hog \"one\" \\ two";
    let hog = c.open("mcu0").unwrap();
    c.load_firmware(hog, label, coproc_firmware::HOG.elf)
        .unwrap();
    c.start(hog).unwrap();
    let bad = c.open("mcu0").unwrap();
    c.load_firmware(bad, "faulty", coproc_firmware::FAULTY.elf)
        .unwrap();
    c.start(bad).unwrap();
    c.doorbell(bad).unwrap();
    wait_for("the fault", || c.query(bad).unwrap().state == "faulted");
    wait_for("the hog to run some slices", || {
        c.query(hog).unwrap().slices > 20
    });
    wait_for("the busy share over the last second", || {
        c.list_coprocs().unwrap()[0].utilisation_1s_pct > 0.0
    });
    // Stopped, its counters hold still: the scrape and the query must agree
    // exactly.
    c.stop(hog).unwrap();
    let q = c.query(hog).unwrap();
    let qb = c.query(bad).unwrap();
    let text = scrape(&sock);
    let hog_id = hog.to_string();
    let me = rustix::process::getuid().as_raw().to_string();
    let who = [
        ("pcoproc", "mcu0"),
        ("vcoproc", hog_id.as_str()),
        ("domain", me.as_str()),
        ("firmware", label),
    ];
    let m = |name: &str| value(&text, name, &who).unwrap_or_else(|| panic!("{name} in\n{text}"));
    assert_eq!(
        m("coproc_vcoproc_device_seconds_total"),
        q.run_ns as f64 / 1e9
    );
    assert_eq!(m("coproc_vcoproc_slices_total"), q.slices as f64);
    assert_eq!(m("coproc_vcoproc_switches_total"), q.switches as f64);
    assert_eq!(m("coproc_vcoproc_mapped_bytes"), q.mapped_bytes as f64);
    assert_eq!(m("coproc_vcoproc_mappings"), f64::from(q.mappings));
    assert_eq!(
        m("coproc_vcoproc_run_delay_max_seconds"),
        q.run_delay_max_ns as f64 / 1e9
    );
    assert!(q.slices > 20 && q.run_ns > 0);
    let mut st = who.to_vec();
    st.push(("state", "loaded"));
    assert_eq!(value(&text, "coproc_vcoproc_state", &st), Some(1.0));
    // Faults by reason.
    let bad_id = bad.to_string();
    let f = |reason: &str| {
        value(
            &text,
            "coproc_vcoproc_faults_total",
            &[
                ("vcoproc", bad_id.as_str()),
                ("firmware", "faulty"),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(qb.faults, 1);
    assert_eq!(f("access_violation"), Some(1.0));
    assert_eq!(f("watchdog"), Some(0.0));
    // The pcoproc: busy time and switches as list-coprocs reports them
    // (nothing runs now, so they hold still too).
    let pc = &c.list_coprocs().unwrap()[0];
    let p = [("pcoproc", "mcu0")];
    assert_eq!(
        value(&text, "coproc_pcoproc_busy_seconds_total", &p),
        Some(pc.busy_ns as f64 / 1e9)
    );
    assert!(pc.busy_ns >= q.run_ns + qb.run_ns);
    assert_eq!(
        value(
            &text,
            "coproc_pcoproc_policy_info",
            &[("pcoproc", "mcu0"), ("policy", "rr"), ("class", "mcu")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&text, "coproc_pcoproc_vcoprocs", &p), Some(2.0));
    // Every switch onto a vcoproc was timed, every wake-up's delay counted.
    let switches = value(&text, "coproc_pcoproc_switches_total", &p).unwrap();
    assert!(switches >= (q.switches + qb.switches) as f64, "{switches}");
    assert_eq!(
        value(&text, "coproc_pcoproc_switch_seconds_count", &p),
        Some(switches)
    );
    assert_eq!(
        value(
            &text,
            "coproc_pcoproc_switch_seconds_bucket",
            &[("pcoproc", "mcu0"), ("le", "+Inf")]
        ),
        Some(switches)
    );
    assert!(value(&text, "coproc_pcoproc_run_delay_seconds_count", &p).unwrap() >= 2.0);
    // The domain: quota use as list-domains reports it, limits from its rule.
    let dom = c.list_domains().unwrap();
    let mine = dom.iter().find(|x| x.uid.to_string() == me).unwrap();
    let qd = |quota: &'static str| [("domain", me.as_str()), ("quota", quota)];
    assert_eq!(
        value(&text, "coproc_domain_quota_used", &qd("vcoprocs")),
        Some(f64::from(mine.vcoprocs))
    );
    assert_eq!(
        value(&text, "coproc_domain_quota_used", &qd("mapped_bytes")),
        Some(mine.mapped_bytes as f64)
    );
    assert_eq!(
        value(&text, "coproc_domain_quota_limit", &qd("vcoprocs")),
        Some(8.0)
    );
    assert_eq!(
        value(&text, "coproc_domain_quota_limit", &qd("mapped_bytes")),
        Some(16_777_216.0)
    );
    assert_eq!(
        value(&text, "coproc_domain_sessions", &[("domain", me.as_str())]),
        Some(1.0)
    );
    // Units and types as Prometheus names them.
    for line in [
        "# TYPE coproc_vcoproc_device_seconds counter",
        "# UNIT coproc_vcoproc_device_seconds seconds",
        "# TYPE coproc_pcoproc_switch_seconds histogram",
        "# TYPE coproc_vcoproc_mapped_bytes gauge",
        "# TYPE coproc_revoke_seconds histogram",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    // docs/metrics.md documents every family served and the dashboard uses
    // only families served.
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let doc = std::fs::read_to_string(format!("{root}/docs/metrics.md")).unwrap();
    let dash = std::fs::read_to_string(format!("{root}/packaging/grafana-coproc.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&dash).expect("the dashboard is JSON");
    for f in &families {
        assert!(doc.contains(&format!("`{f}")), "docs/metrics.md misses {f}");
    }
    for name in metric_names(&doc).into_iter().chain(metric_names(&dash)) {
        assert!(
            families.iter().any(|f| name.starts_with(f)),
            "{name} is named in the docs or dashboard but not served"
        );
    }
    // Nothing runs: the share of the last second falls to 0 while the
    // busy time since start stays.
    wait_for("an idle last second", || {
        c.list_coprocs().unwrap()[0].utilisation_1s_pct == 0.0
    });
    let pc = &c.list_coprocs().unwrap()[0];
    assert!(pc.busy_ns > 0);
    // Destroyed vcoprocs leave the metrics.
    c.destroy(hog).unwrap();
    let text = scrape(&sock);
    assert_eq!(
        value(
            &text,
            "coproc_vcoproc_slices_total",
            &[("vcoproc", hog_id.as_str())]
        ),
        None
    );
    let mut d = d;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(d.child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(d.child.wait().unwrap().success());
    assert!(!sock.exists(), "the metrics socket is removed at shutdown");
}

#[test]
fn metrics_over_loopback_tcp_and_a_stuck_scraper_hurts_no_session() {
    // A port free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config("metrics-tcp", Some(port));
    let sock = metrics_socket(&cfg);
    let d = Daemon::start("metrics-tcp", &cfg);
    wait_for("the metrics socket", || sock.exists());
    let tcp = || std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (status, body) = get(tcp(), "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        body.contains("coproc_pcoproc_busy_seconds_total{pcoproc=\"mcu0\"}"),
        "{body}"
    );
    assert_eq!(get(tcp(), "/nothing").0, "HTTP/1.1 404 Not Found");
    // A scraper that connects and never sends: sessions go on at once.
    let mut stuck = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut c = d.client();
    let v = c.open("mcu0").unwrap();
    c.load_firmware(v, "hog", coproc_firmware::HOG.elf).unwrap();
    c.start(v).unwrap();
    wait_for("the hog to run", || c.query(v).unwrap().run_ns > 0);
    // The next scrape is served once the stuck one's deadline ends it,
    // and the stuck one gets nothing but the close.
    let (status, body) = get(tcp(), "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("firmware=\"hog\""), "{body}");
    let mut rest = Vec::new();
    stuck.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(c.query(v).unwrap().run_ns > 0, "the session still answers");
}

#[test]
fn a_non_loopback_metrics_address_is_refused() {
    let dir = std::env::temp_dir().join(format!("coproc-metrics-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[daemon]\nmetrics_listen = \"0.0.0.0:9464\"\n{}",
            common::MCU_RR
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::coprocd_bin())
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metrics_listen") && err.contains("loopback"),
        "{err}"
    );
}
