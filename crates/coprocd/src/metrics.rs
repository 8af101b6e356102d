//! Metrics: the busy-time windows behind `list-coprocs`' utilisation, and
//! Prometheus text (through `prometheus-client`) served over HTTP on the
//! opt-in `[daemon] metrics_listen` (loopback TCP) and `metrics_socket`
//! (Unix socket) addresses. See `docs/metrics.md`.
//!
//! A scrape never slows a session: the snapshot copies what the core and
//! the daemon's tables hold (each lock taken briefly, none held across
//! I/O), encoding happens on a blocking thread, and one scrape is served
//! at a time with a deadline, so a slow or stuck scraper costs only other
//! scrapers.

use crate::daemon::Daemon;
use coproc_core::fault::FaultReason;
use coproc_core::stats::{Histogram, BUCKETS_NS};
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// How often the busy-time windows are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The longest window kept (`list-coprocs` reports 1 s and 10 s).
const WINDOW_KEPT: Duration = Duration::from_secs(11);
/// Everything one scrape may take: reading the request, building the
/// snapshot, writing the answer.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request head read.
const MAX_REQUEST: usize = 8 << 10;

/// Errors of the metrics listeners.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Binding or preparing a listen address failed.
    #[error("metrics on {0}: {1}")]
    Bind(String, std::io::Error),
    /// Something that is not a socket is at the socket path.
    #[error("metrics socket {0} exists and is not a socket; not replacing it")]
    NotSocket(String),
    /// A daemon already serves at the socket path.
    #[error("metrics socket {0} is in use")]
    InUse(String),
}

/// Recent samples of each pcoproc's busy time, for utilisation over the
/// last 1 s and 10 s.
#[derive(Debug, Default)]
pub struct BusyWindows {
    samples: Mutex<HashMap<String, VecDeque<(Instant, u64)>>>,
}

impl BusyWindows {
    /// Take one sample of every pcoproc's busy time.
    pub fn sample(&self, daemon: &Daemon) {
        let now = Instant::now();
        let readings: Vec<(String, u64)> = daemon
            .pcoprocs
            .iter()
            .map(|(n, pc)| (n.clone(), pc.busy().0))
            .collect();
        let mut s = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, busy) in readings {
            let q = s.entry(name).or_default();
            q.push_back((now, busy));
            // Keep one sample older than the longest window.
            while q.len() > 2 && q.get(1).is_some_and(|&(t, _)| now - t > WINDOW_KEPT) {
                q.pop_front();
            }
        }
    }

    /// The busy share of pcoproc `name` over the last `window`, in
    /// percent, given its busy time `busy_ns` now: measured from the newest
    /// sample at least `window` old (the oldest one while the daemon is
    /// younger than that); 0 with no sample yet.
    pub fn utilisation_pct(&self, name: &str, busy_ns: u64, window: Duration) -> f64 {
        let now = Instant::now();
        let s = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(q) = s.get(name) else { return 0.0 };
        let from = q
            .iter()
            .rev()
            .find(|&&(t, _)| now - t >= window)
            .or_else(|| q.front());
        let Some(&(t, then)) = from else { return 0.0 };
        let elapsed = (now - t).as_nanos() as f64;
        if elapsed <= 0.0 {
            return 0.0;
        }
        // Busy time is charged when a slice ends, so a window can see a
        // little more than it lasted.
        let pct = busy_ns.saturating_sub(then) as f64 * 100.0 / elapsed;
        (pct.min(100.0) * 10.0).round() / 10.0
    }
}

/// A label value as Prometheus text needs it: `prometheus-client` writes
/// values as they are, and firmware labels come from domains.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

type Labels = Vec<(String, String)>;

/// One vcoproc as scraped.
#[derive(Debug)]
struct VcSnap {
    labels: Labels,
    state: String,
    info: coproc_core::pcoproc::VcoprocInfo,
    queues: u32,
}

/// One pcoproc as scraped.
#[derive(Debug)]
struct PcSnap {
    name: String,
    class: String,
    policy: String,
    failed: bool,
    busy_ns: u64,
    switches: u64,
    latency: coproc_core::stats::LatencyStats,
}

/// One domain as scraped.
#[derive(Debug)]
struct DomSnap {
    /// Its number (the uid outside containers).
    uid: u32,
    /// Its container, if any.
    container: Option<String>,
    usage: crate::daemon::Usage,
    /// (vcoprocs, mapped bytes, queues, mappings) its rule allows.
    limits: Option<(u64, u64, u64, u64)>,
}

/// What one scrape reports, copied out of the core and the daemon.
#[derive(Debug)]
struct Snapshot {
    pcoprocs: Vec<PcSnap>,
    vcoprocs: Vec<VcSnap>,
    domains: Vec<DomSnap>,
    revoke: Histogram,
}

impl Snapshot {
    fn take(daemon: &Daemon) -> Snapshot {
        // The daemon's tables first, released before any pcoproc's lock.
        let (queues, usage) = {
            let t = daemon.tables();
            let q: HashMap<u32, u32> = t.vcoprocs.iter().map(|(&id, e)| (id, e.queues)).collect();
            let u: BTreeMap<u32, crate::daemon::Usage> =
                t.usage.iter().map(|(&k, &v)| (k, v)).collect();
            (q, u)
        };
        let mut pcoprocs = Vec::new();
        let mut vcoprocs = Vec::new();
        for (name, pc) in &daemon.pcoprocs {
            let (busy_ns, switches) = pc.busy();
            pcoprocs.push(PcSnap {
                name: name.clone(),
                class: pc.capabilities().class.to_string(),
                policy: pc.sched_info().policy,
                failed: pc.failed().is_some(),
                busy_ns,
                switches,
                latency: pc.latency(),
            });
            for info in pc.vcoprocs() {
                let labels = vec![
                    ("pcoproc".to_string(), escape(name)),
                    ("domain".to_string(), info.domain.0.to_string()),
                    ("vcoproc".to_string(), info.id.0.to_string()),
                    ("firmware".to_string(), escape(&info.firmware)),
                ];
                vcoprocs.push(VcSnap {
                    labels,
                    state: info.state.to_string(),
                    queues: queues.get(&info.id.0).copied().unwrap_or(0),
                    info,
                });
            }
        }
        let domains = usage
            .into_iter()
            .map(|(uid, usage)| {
                let container = daemon.container_of(uid);
                let limits = daemon
                    .config
                    .rule_for(daemon.uid_of(uid), container.as_deref())
                    .map(|r| {
                        (
                            u64::from(r.max_vcoprocs),
                            r.max_mapped_bytes,
                            u64::from(r.max_queues),
                            u64::from(r.max_mappings),
                        )
                    });
                DomSnap {
                    uid,
                    container,
                    usage,
                    limits,
                }
            })
            .collect();
        let revoke = *daemon
            .revoke_latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Snapshot {
            pcoprocs,
            vcoprocs,
            domains,
            revoke,
        }
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn histogram(enc: MetricEncoder, h: &Histogram) -> Result<(), std::fmt::Error> {
    let mut enc = enc;
    let mut buckets: Vec<(f64, u64)> = BUCKETS_NS
        .iter()
        .zip(h.counts.iter())
        .map(|(&b, &c)| (secs(b), c))
        .collect();
    buckets.push((f64::MAX, h.counts[BUCKETS_NS.len()]));
    enc.encode_histogram::<NoLabelSet>(secs(h.sum_ns), h.count, &buckets, None)
}

/// A family of counters or gauges, one per label set.
fn family<T: Copy>(
    d: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels, T)>,
    mut put: impl FnMut(&mut MetricEncoder, T) -> Result<(), std::fmt::Error>,
) -> Result<(), std::fmt::Error> {
    let mut m = d.encode_descriptor(name, help, unit, kind)?;
    for (labels, v) in rows {
        let mut e = m.encode_family(&labels)?;
        put(&mut e, v)?;
    }
    Ok(())
}

fn counter_u(e: &mut MetricEncoder, v: u64) -> Result<(), std::fmt::Error> {
    e.encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn counter_f(e: &mut MetricEncoder, v: f64) -> Result<(), std::fmt::Error> {
    e.encode_counter::<NoLabelSet, _, f64>(&v, None)
}

fn gauge_i(e: &mut MetricEncoder, v: i64) -> Result<(), std::fmt::Error> {
    e.encode_gauge(&v)
}

fn gauge_f(e: &mut MetricEncoder, v: f64) -> Result<(), std::fmt::Error> {
    e.encode_gauge(&v)
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl prometheus_client::collector::Collector for Snapshot {
    #[allow(clippy::too_many_lines)]
    fn encode(&self, mut d: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let vc = &self.vcoprocs;
        let per_vc = |f: &dyn Fn(&VcSnap) -> u64| -> Vec<(Labels, u64)> {
            vc.iter().map(|v| (v.labels.clone(), f(v))).collect()
        };
        // Per vcoproc.
        family(
            &mut d,
            "coproc_vcoproc_device",
            "Device time the vcoproc ran, as measured by the device",
            Some(&Unit::Seconds),
            MetricType::Counter,
            vc.iter()
                .map(|v| (v.labels.clone(), secs(v.info.stats.run_ns))),
            counter_f,
        )?;
        for (name, help, f) in [
            (
                "coproc_vcoproc_slices",
                "Slices the vcoproc was given",
                (|v: &VcSnap| v.info.stats.slices) as fn(&VcSnap) -> u64,
            ),
            (
                "coproc_vcoproc_switches",
                "Context switches onto the vcoproc",
                |v: &VcSnap| v.info.stats.switches,
            ),
            (
                "coproc_vcoproc_preemptions",
                "Slices of the vcoproc cut short by a preempt request",
                |v: &VcSnap| v.info.stats.preemptions,
            ),
            (
                "coproc_vcoproc_doorbells",
                "Doorbells the vcoproc's domain rang (coalesced rings count once)",
                |v: &VcSnap| v.info.stats.doorbells,
            ),
            (
                "coproc_vcoproc_waits",
                "Times the vcoproc parked waiting for a doorbell",
                |v: &VcSnap| v.info.stats.waits,
            ),
        ] {
            family(
                &mut d,
                name,
                help,
                None,
                MetricType::Counter,
                per_vc(&f),
                counter_u,
            )?;
        }
        let mut faults = Vec::new();
        for v in vc {
            for (i, kind) in FaultReason::KINDS.iter().enumerate() {
                let mut l = v.labels.clone();
                l.push(("reason".into(), (*kind).to_string()));
                faults.push((l, v.info.stats.faults_by_reason[i]));
            }
        }
        family(
            &mut d,
            "coproc_vcoproc_faults",
            "Faults the vcoproc took, by reason",
            None,
            MetricType::Counter,
            faults,
            counter_u,
        )?;
        family(
            &mut d,
            "coproc_vcoproc_run_delay",
            "Total time from the vcoproc's wake-ups (start, doorbell) to the slice that followed each",
            Some(&Unit::Seconds),
            MetricType::Counter,
            vc.iter().map(|v| (v.labels.clone(), secs(v.info.stats.run_delay_ns))),
            counter_f,
        )?;
        family(
            &mut d,
            "coproc_vcoproc_run_delay_max",
            "Longest wake-to-run latency of the vcoproc so far",
            Some(&Unit::Seconds),
            MetricType::Gauge,
            vc.iter()
                .map(|v| (v.labels.clone(), secs(v.info.stats.run_delay_max_ns))),
            gauge_f,
        )?;
        for (name, help, unit, f) in [
            (
                "coproc_vcoproc_mapped",
                "Bytes of domain memory mapped into the vcoproc",
                Some(Unit::Bytes),
                (|v: &VcSnap| v.info.mapped_bytes) as fn(&VcSnap) -> u64,
            ),
            (
                "coproc_vcoproc_local",
                "Bytes of device-local memory the vcoproc holds",
                Some(Unit::Bytes),
                |v: &VcSnap| v.info.local_bytes,
            ),
            (
                "coproc_vcoproc_mappings",
                "Mappings in the vcoproc's iova space",
                None,
                |v: &VcSnap| v.info.mappings as u64,
            ),
            (
                "coproc_vcoproc_queues",
                "Queues of the vcoproc",
                None,
                |v: &VcSnap| u64::from(v.queues),
            ),
        ] {
            family(
                &mut d,
                name,
                help,
                unit.as_ref(),
                MetricType::Gauge,
                per_vc(&f).into_iter().map(|(l, v)| (l, as_i64(v))),
                gauge_i,
            )?;
        }
        let mut m = d.encode_descriptor(
            "coproc_vcoproc_state",
            "The vcoproc's state (the series with value 1)",
            None,
            MetricType::Gauge,
        )?;
        for v in vc {
            let mut l = v.labels.clone();
            l.push(("state".into(), v.state.clone()));
            m.encode_family(&l)?.encode_gauge(&1_i64)?;
        }
        // Per pcoproc.
        let pl = |p: &PcSnap| vec![("pcoproc".to_string(), escape(&p.name))];
        family(
            &mut d,
            "coproc_pcoproc_busy",
            "Device time the pcoproc spent running vcoprocs",
            Some(&Unit::Seconds),
            MetricType::Counter,
            self.pcoprocs.iter().map(|p| (pl(p), secs(p.busy_ns))),
            counter_f,
        )?;
        family(
            &mut d,
            "coproc_pcoproc_switches",
            "Context switches the pcoproc made",
            None,
            MetricType::Counter,
            self.pcoprocs.iter().map(|p| (pl(p), p.switches)),
            counter_u,
        )?;
        family(
            &mut d,
            "coproc_pcoproc_failed",
            "1 once device or policy code failed the whole pcoproc, else 0",
            None,
            MetricType::Gauge,
            self.pcoprocs.iter().map(|p| (pl(p), i64::from(p.failed))),
            gauge_i,
        )?;
        family(
            &mut d,
            "coproc_pcoproc_vcoprocs",
            "Vcoprocs on the pcoproc",
            None,
            MetricType::Gauge,
            self.pcoprocs.iter().map(|p| {
                let n = vc
                    .iter()
                    .filter(|v| v.labels[0].1 == escape(&p.name))
                    .count();
                (pl(p), as_i64(n as u64))
            }),
            gauge_i,
        )?;
        let mut m = d.encode_descriptor(
            "coproc_pcoproc_policy",
            "The pcoproc's device class and scheduling policy",
            None,
            MetricType::Info,
        )?;
        for p in &self.pcoprocs {
            let mut l = pl(p);
            l.push(("class".into(), escape(&p.class)));
            l.push(("policy".into(), escape(&p.policy)));
            m.encode_info(&l)?;
        }
        let mut m = d.encode_descriptor(
            "coproc_pcoproc_switch",
            "Time the device's context-switch hook took, per completed switch",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for p in &self.pcoprocs {
            histogram(m.encode_family(&pl(p))?, &p.latency.switch)?;
        }
        let mut m = d.encode_descriptor(
            "coproc_pcoproc_run_delay",
            "Wake-to-run latency: from a vcoproc's start or doorbell wake-up to its next slice",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for p in &self.pcoprocs {
            histogram(m.encode_family(&pl(p))?, &p.latency.run_delay)?;
        }
        // The daemon.
        let m = d.encode_descriptor(
            "coproc_revoke",
            "Time a revoke request took in the daemon, until the device could no longer touch the pages",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        histogram(m, &self.revoke)?;
        // Per domain.
        let mut used = Vec::new();
        let mut limit = Vec::new();
        let mut sessions = Vec::new();
        for dom in &self.domains {
            let u = &dom.usage;
            // A container domain's series also name the container.
            let mut who = vec![("domain".to_string(), dom.uid.to_string())];
            if let Some(c) = &dom.container {
                who.push(("container".to_string(), escape(c)));
            }
            sessions.push((who.clone(), i64::from(u.sessions)));
            let figures = [
                ("vcoprocs", u64::from(u.vcoprocs)),
                ("mapped_bytes", u.mapped_bytes),
                ("queues", u64::from(u.queues)),
                ("mappings", u64::from(u.mappings)),
            ];
            let limits = dom.limits.map(|(a, b, c, e)| [a, b, c, e]);
            for (i, (q, v)) in figures.into_iter().enumerate() {
                let mut l = who.clone();
                l.push(("quota".to_string(), q.to_string()));
                used.push((l.clone(), as_i64(v)));
                if let Some(lim) = limits {
                    limit.push((l, as_i64(lim[i])));
                }
            }
        }
        family(
            &mut d,
            "coproc_domain_sessions",
            "Open sessions of the domain",
            None,
            MetricType::Gauge,
            sessions,
            gauge_i,
        )?;
        family(
            &mut d,
            "coproc_domain_quota_used",
            "What the domain uses of each quota",
            None,
            MetricType::Gauge,
            used,
            gauge_i,
        )?;
        family(
            &mut d,
            "coproc_domain_quota_limit",
            "Each quota of the domain's configuration rule (absent for admins without a rule)",
            None,
            MetricType::Gauge,
            limit,
            gauge_i,
        )?;
        Ok(())
    }
}

/// The metrics text of `daemon` now (OpenMetrics text format).
pub fn render(daemon: &Daemon) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot::take(daemon)));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// Answer one HTTP request on `s` (a GET of `/metrics` or `/`).
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    daemon: Arc<Daemon>,
    mut s: S,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_REQUEST {
            break;
        }
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, ctype, body) = if method != "GET" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        )
    } else if path == "/metrics" || path == "/" {
        let d = daemon.clone();
        let body = tokio::task::spawn_blocking(move || render(&d))
            .await
            .unwrap_or_default();
        (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        )
    } else {
        (
            "404 Not Found",
            "text/plain",
            "metrics are at /metrics\n".to_string(),
        )
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(reply.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.shutdown().await
}

/// One scrape at a time, each within [`SCRAPE_TIMEOUT`].
async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    daemon: Arc<Daemon>,
    s: S,
    log: &coproc_core::ratelimit::RateLimit,
) {
    match tokio::time::timeout(SCRAPE_TIMEOUT, answer(daemon, s)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            if let Some(suppressed) = log.check() {
                tracing::debug!(error = %e, suppressed, "metrics scrape failed");
            }
        }
        Err(_) => {
            if let Some(suppressed) = log.check() {
                tracing::info!(suppressed, "metrics scrape timed out; connection closed");
            }
        }
    }
}

/// The metrics listeners the configuration asks for, bound.
#[derive(Debug, Default)]
pub struct Listeners {
    tcp: Option<tokio::net::TcpListener>,
    unix: Option<(tokio::net::UnixListener, std::path::PathBuf)>,
}

impl Listeners {
    /// Bind what `[daemon] metrics_listen` and `metrics_socket` name.
    pub async fn bind(daemon: &Daemon) -> Result<Listeners, MetricsError> {
        let mut l = Listeners::default();
        if let Some(addr) = daemon.config.daemon.metrics_listen {
            let t = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| MetricsError::Bind(addr.to_string(), e))?;
            tracing::info!(address = %t.local_addr().map_or(addr, |a| a), "metrics served over HTTP");
            l.tcp = Some(t);
        }
        if let Some(path) = &daemon.config.daemon.metrics_socket {
            l.unix = Some((bind_unix(path)?, path.clone()));
            tracing::info!(socket = %path.display(), "metrics served over HTTP");
        }
        Ok(l)
    }

    /// Serve scrapes until `stop` turns true; then remove the socket file.
    pub async fn serve(self, daemon: Arc<Daemon>, mut stop: watch::Receiver<bool>) {
        let log = coproc_core::ratelimit::RateLimit::new(1, 1);
        let Listeners { tcp, unix } = self;
        if tcp.is_none() && unix.is_none() {
            return;
        }
        loop {
            tokio::select! {
                r = async { tcp.as_ref().expect("guarded").accept().await }, if tcp.is_some() => {
                    if let Ok((s, _)) = r {
                        serve_one(daemon.clone(), s, &log).await;
                    }
                }
                r = async { unix.as_ref().expect("guarded").0.accept().await }, if unix.is_some() => {
                    if let Ok((s, _)) = r {
                        serve_one(daemon.clone(), s, &log).await;
                    }
                }
                _ = stop.changed() => break,
            }
        }
        if let Some((_, path)) = unix {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Bind the metrics Unix socket, mode 0600 (the metrics name every
/// domain's vcoprocs: the operator opens it up with a group if wanted).
fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, MetricsError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let shown = path.display().to_string();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| MetricsError::Bind(shown.clone(), e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => return Err(MetricsError::NotSocket(shown)),
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(MetricsError::InUse(shown));
            }
            std::fs::remove_file(path).map_err(|e| MetricsError::Bind(shown.clone(), e))?;
        }
        Err(_) => {}
    }
    let l =
        tokio::net::UnixListener::bind(path).map_err(|e| MetricsError::Bind(shown.clone(), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| MetricsError::Bind(shown, e))?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_from_domains_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd\u{7}"), "a\\\"b\\\\c\\nd?");
        assert_eq!(escape("crc32"), "crc32");
    }

    #[test]
    fn histograms_encode_cumulative_buckets_in_seconds() {
        let mut h = Histogram::default();
        h.observe(1_500);
        h.observe(3_000_000_000);
        let mut out = String::new();
        let mut r = Registry::default();
        #[derive(Debug)]
        struct One(Histogram);
        impl prometheus_client::collector::Collector for One {
            fn encode(&self, mut d: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                let m =
                    d.encode_descriptor("x", "x", Some(&Unit::Seconds), MetricType::Histogram)?;
                histogram(m, &self.0)
            }
        }
        r.register_collector(Box::new(One(h)));
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(out.contains("x_seconds_count 2\n"), "{out}");
        assert!(
            out.contains("x_seconds_bucket{le=\"0.000002\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_bucket{le=\"1.0\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 2\n"), "{out}");
    }
}
