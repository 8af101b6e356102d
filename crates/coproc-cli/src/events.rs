//! `coproc events`: the daemon's event stream (`watch`): vcoproc state
//! changes, faults, revokes, policy and parameter changes, one line each
//! (with `-o json`, one JSON object per line with its wall-clock `time`).

use coproc_cli::output::{sanitize, Format};
use coproc_client::{Client, ClientError};
use coproc_proto::Event;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Errors of `coproc events`.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The daemon refused or went away.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Standard output failed (a closed pipe ends the stream).
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
}

/// `coproc events` arguments.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Exit after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Exit after this many seconds.
    #[arg(long)]
    pub seconds: Option<f64>,
}

/// `t` as RFC 3339 UTC with milliseconds ([`crate::output::rfc3339`]
/// cut to milliseconds).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let full = crate::output::rfc3339(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    // `YYYY-MM-DDTHH:MM:SS.mmm` + `Z`.
    format!("{}Z", &full[..23])
}

/// One event as a line for people; text from domains sanitised.
pub fn line(e: &Event) -> String {
    match e {
        Event::VcoprocState {
            vcoproc,
            coproc,
            domain,
            firmware,
            state,
            previous,
        } => {
            let who = format!(
                "vcoproc {vcoproc} ({}, uid {domain}, {})",
                sanitize(coproc),
                sanitize(if firmware.is_empty() {
                    "no firmware"
                } else {
                    firmware
                })
            );
            match previous {
                Some(p) => format!("{who}: {} -> {}", sanitize(p), sanitize(state)),
                None => format!("{who}: seen {}", sanitize(state)),
            }
        }
        Event::Fault { fault: f } => {
            let mut s = format!(
                "vcoproc {} ({}, uid {}): fault: {}",
                f.vcoproc,
                sanitize(&f.coproc),
                f.domain,
                sanitize(&f.reason)
            );
            if let Some(a) = f.addr {
                s.push_str(&format!(" at {a:#x}"));
            }
            if f.access != "none" {
                s.push_str(&format!(" ({})", sanitize(&f.access)));
            }
            if let Some(pc) = f.pc {
                s.push_str(&format!(" pc {pc:#x}"));
            }
            s
        }
        Event::MappingRevoked {
            vcoproc,
            iova,
            len,
            by,
        } => format!("vcoproc {vcoproc}: mapping at {iova:#x} ({len} bytes) revoked by uid {by}"),
        Event::PolicyChanged {
            coproc,
            policy,
            params,
            by,
        } => {
            let ps: Vec<String> = params.iter().map(|(k, v)| format!(" {k}={v}")).collect();
            sanitize(&format!(
                "{coproc}: policy {policy}{} (by uid {by})",
                ps.concat()
            ))
        }
        Event::ParamsChanged {
            vcoproc,
            domain,
            set,
            by,
        } => {
            let mut parts = Vec::new();
            if let Some(w) = set.weight {
                parts.push(format!("weight={w}"));
            }
            if let Some(c) = set.cap_pct {
                parts.push(format!("cap_pct={c}"));
            }
            if let Some(p) = set.priority {
                parts.push(format!("priority={p}"));
            }
            if let Some(b) = set.budget_us {
                parts.push(format!("budget_us={b}"));
            }
            if let Some(p) = set.period_us {
                parts.push(format!("period_us={p}"));
            }
            format!(
                "vcoproc {vcoproc} (uid {domain}): parameters {} (by uid {by})",
                parts.join(" ")
            )
        }
        Event::Lagged { missed } => format!("(fell behind: {missed} events missed)"),
        Event::State { vcoproc, state } => format!("vcoproc {vcoproc}: {}", sanitize(state)),
        Event::Notify { vcoproc, seq, tag } => {
            format!("vcoproc {vcoproc}: notification {seq} tag {tag:#x}")
        }
        Event::PageFault {
            vcoproc,
            iova,
            access,
        } => format!(
            "vcoproc {vcoproc}: stalled on {iova:#x} ({})",
            sanitize(access)
        ),
    }
}

/// `coproc events`.
pub fn events(c: &mut Client, f: Format, a: &EventsArgs) -> Result<bool, EventsError> {
    c.watch()?;
    let until = a
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s.clamp(0.0, 1e9)));
    let mut seen = 0;
    let mut out = std::io::stdout().lock();
    while a.count.is_none_or(|n| seen < n) {
        let wait = match until {
            Some(u) => match u.checked_duration_since(Instant::now()) {
                Some(w) => w.min(Duration::from_secs(1)),
                None => break,
            },
            None => Duration::from_secs(1),
        };
        let e = match c.next_event(wait) {
            Ok(e) => e,
            Err(ClientError::Timeout(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let time = rfc3339(SystemTime::now());
        match f {
            Format::Json => {
                let mut v = serde_json::to_value(&e).map_err(std::io::Error::other)?;
                v["time"] = time.into();
                writeln!(out, "{v}")?;
            }
            Format::Table => writeln!(out, "{time}  {}", line(&e))?,
        }
        out.flush()?;
        seen += 1;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123); // 2024-02-29T23:59:59.123Z
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn lines_name_the_vcoproc_and_sanitise_labels() {
        let e = Event::VcoprocState {
            vcoproc: 3,
            coproc: "mcu0".into(),
            domain: 1000,
            firmware: "x\u{1b}[2Jy".into(),
            state: "faulted".into(),
            previous: Some("running".into()),
        };
        let l = line(&e);
        assert_eq!(
            l,
            "vcoproc 3 (mcu0, uid 1000, x\\u{1b}[2Jy): running -> faulted"
        );
        let p = Event::PolicyChanged {
            coproc: "mcu0".into(),
            policy: "credit".into(),
            params: vec![("slice_us".into(), "1000".into())],
            by: 0,
        };
        assert_eq!(line(&p), "mcu0: policy credit slice_us=1000 (by uid 0)");
    }
}
