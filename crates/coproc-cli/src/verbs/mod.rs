//! xl-style verbs against the daemon: listings (table or `-o json`) and
//! control. Admin verbs need root or the configured admin group; others see
//! only their own domain's vcoprocs.

mod run;
mod sched;

pub use self::run::run;
pub use self::sched::{sched_get, sched_set};

use self::run::parse_word;
use crate::output::{print_table, rfc3339, sanitize, Format};
use coproc_client::{Client, FaultInfo, VcoprocInfo};
use serde::Serialize;
use serde_json::{json, Value};

/// Failures the verbs find themselves (the daemon's own are
/// [`coproc_client::ClientError`]s); each has its exit status (docs/cli.md).
#[derive(Debug, thiserror::Error)]
pub enum VerbError {
    /// A name given on the command line names nothing (exit 4).
    #[error("{0}")]
    NotFound(String),
    /// An argument is malformed (exit 2, like clap's usage errors).
    #[error("{0}")]
    Usage(String),
    /// `run` gave up waiting (exit 6).
    #[error("vcoproc {vcoproc}: no notification, fault or exit within {seconds} s")]
    Timeout {
        /// The vcoproc.
        vcoproc: u32,
        /// The limit.
        seconds: f64,
    },
    /// `run`'s vcoproc faulted (exit 7).
    #[error("vcoproc {vcoproc} faulted: {reason}")]
    Fault {
        /// The vcoproc.
        vcoproc: u32,
        /// Why (domain text, shown escaped).
        reason: String,
    },
}

/// A fault record as JSON: `at` wall clock (RFC 3339, null from a daemon
/// that does not report it), `at_ns` monotonic since the pcoproc started.
fn fault_json(x: &FaultInfo) -> Value {
    json!({
        "coproc": x.coproc,
        "vcoproc": x.vcoproc,
        "domain": x.domain,
        "at": (x.at_unix_ns != 0).then(|| rfc3339(x.at_unix_ns)),
        "at_ns": x.at_ns,
        "addr": x.addr,
        "access": x.access,
        "pc": x.pc,
        "reason": x.reason,
    })
}

/// A vcoproc as JSON: its fields, the reservation as an object, its last
/// fault as [`fault_json`].
fn vcoproc_json(v: &VcoprocInfo) -> anyhow::Result<Value> {
    let mut o = serde_json::to_value(v)?;
    if let Value::Object(m) = &mut o {
        m.insert(
            "reservation_us".into(),
            v.reservation_us.map_or(
                Value::Null,
                |(b, p)| json!({ "budget_us": b, "period_us": p }),
            ),
        );
        m.insert(
            "last_fault".into(),
            v.last_fault.as_deref().map_or(Value::Null, fault_json),
        );
    }
    Ok(o)
}

/// The pcoproc named `name`, or a not-found error.
fn known_coproc(c: &mut Client, name: &str) -> anyhow::Result<()> {
    let l = c.list_coprocs()?;
    if l.iter().any(|p| p.name == name) {
        return Ok(());
    }
    let names: Vec<&str> = l.iter().map(|p| p.name.as_str()).collect();
    Err(VerbError::NotFound(format!(
        "no pcoproc {:?} (this domain may use: {})",
        sanitize(name),
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    ))
    .into())
}

fn show<T: Serialize>(
    format: Format,
    value: &T,
    header: &[&str],
    rows: Vec<Vec<String>>,
) -> anyhow::Result<bool> {
    match format {
        Format::Json => println!("{}", serde_json::to_string(value)?),
        Format::Table => print_table(header, &rows),
    }
    Ok(true)
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |x| x.to_string())
}

/// Bytes for people: "-" for 0, else GiB, MiB (or KiB below 1 MiB).
pub fn memory(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    if bytes == 0 {
        "-".into()
    } else if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (MIB * 1024.0))
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB)
    }
}

/// `coproc list`.
pub fn list(c: &mut Client, f: Format) -> anyhow::Result<bool> {
    let l = c.list_coprocs()?;
    let rows = l
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.class.clone(),
                p.model.clone(),
                memory(p.memory_bytes),
                p.policy.clone(),
                p.vcoprocs.to_string(),
                format!("{:.1}%", p.utilisation_1s_pct),
                format!("{:.1}%", p.utilisation_10s_pct),
                p.state.clone(),
            ]
        })
        .collect();
    show(
        f,
        &l,
        &[
            "name", "class", "model", "memory", "policy", "vcoprocs", "util 1s", "util 10s",
            "state",
        ],
        rows,
    )
}

/// `coproc vcoproc-list`.
pub fn vcoproc_list(
    c: &mut Client,
    f: Format,
    domain: Option<u32>,
    coproc: Option<&str>,
) -> anyhow::Result<bool> {
    if let Some(name) = coproc {
        known_coproc(c, name)?;
    }
    let l = c.list_vcoprocs(domain, coproc)?;
    if f == Format::Json {
        let out = l
            .iter()
            .map(vcoproc_json)
            .collect::<anyhow::Result<Vec<_>>>()?;
        println!("{}", serde_json::to_string(&out)?);
        return Ok(true);
    }
    let rows = l
        .iter()
        .map(|v| {
            vec![
                v.id.to_string(),
                v.coproc.clone(),
                v.domain.to_string(),
                v.firmware.clone(),
                v.state.clone(),
                format!("{:.1}", v.run_ns as f64 / 1e6),
                v.switches.to_string(),
                v.faults.to_string(),
                v.mappings.to_string(),
                sched_params(v),
            ]
        })
        .collect();
    show(
        f,
        &l,
        &[
            "id", "coproc", "domain", "firmware", "state", "run ms", "switches", "faults",
            "mappings", "sched",
        ],
        rows,
    )
}

/// A vcoproc's scheduling parameters in one cell.
fn sched_params(v: &coproc_client::VcoprocInfo) -> String {
    let mut s = format!("w={} prio={}", v.weight, v.priority);
    if let Some(c) = v.cap_pct {
        s += &format!(" cap={c}%");
    }
    if let Some((b, p)) = v.reservation_us {
        s += &format!(" rt={b}/{p}us");
    }
    s
}

/// Options of `coproc vcoproc-set`.
#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// Vcoproc id.
    vcoproc: u32,
    /// Weight under credit (1..=65535, default 256).
    #[arg(long)]
    weight: Option<u32>,
    /// Cap in percent under credit (0 removes it).
    #[arg(long)]
    cap: Option<u32>,
    /// Fixed priority under priority (higher runs first).
    #[arg(long, allow_hyphen_values = true)]
    priority: Option<i32>,
    /// Reservation budget per period under rt, µs (0 removes the reservation).
    #[arg(long)]
    budget: Option<u64>,
    /// Reservation period under rt, µs.
    #[arg(long)]
    period: Option<u64>,
}

/// `coproc vcoproc-set V --weight/--cap/--priority/--budget/--period`.
pub fn vcoproc_set(c: &mut Client, f: Format, a: &SetArgs) -> anyhow::Result<bool> {
    let set = coproc_client::ParamChange {
        weight: a.weight,
        cap_pct: a.cap,
        priority: a.priority,
        budget_us: a.budget,
        period_us: a.period,
    };
    if set == coproc_client::ParamChange::default() {
        return Err(VerbError::Usage(
            "nothing to change: give --weight, --cap, --priority, --budget or --period".into(),
        )
        .into());
    }
    c.vcoproc_set(a.vcoproc, set.clone())?;
    // What it is now, and which of the changes the policy uses.
    let v = c
        .list_vcoprocs(None, None)?
        .into_iter()
        .find(|v| v.id == a.vcoproc)
        .ok_or_else(|| VerbError::NotFound(format!("vcoproc {} is gone", a.vcoproc)))?;
    let policy = c.sched_get(&v.coproc)?.policy;
    let warnings = unused_params(&policy, &set);
    for w in &warnings {
        eprintln!("coproc: warning: {w}");
    }
    match f {
        Format::Json => {
            let out = json!({
                "vcoproc": v.id,
                "coproc": v.coproc,
                "policy": policy,
                "weight": v.weight,
                "cap_pct": v.cap_pct,
                "priority": v.priority,
                "reservation_us": v.reservation_us
                    .map(|(b, p)| json!({ "budget_us": b, "period_us": p })),
                "warnings": warnings,
            });
            println!("{out}");
        }
        Format::Table => println!(
            "vcoproc {} on {} (policy {policy}): {}",
            v.id,
            v.coproc,
            sched_params(&v)
        ),
    }
    Ok(true)
}

/// The changes of `set` that `policy` does not use, as warnings.
fn unused_params(policy: &str, set: &coproc_client::ParamChange) -> Vec<String> {
    let used: &[&str] = match policy {
        "credit" => &["weight", "cap"],
        "priority" => &["priority"],
        "rt" => &["budget", "period"],
        _ => &[],
    };
    let given = [
        ("weight", set.weight.is_some()),
        ("cap", set.cap_pct.is_some()),
        ("priority", set.priority.is_some()),
        ("budget", set.budget_us.is_some()),
        ("period", set.period_us.is_some()),
    ];
    given
        .iter()
        .filter(|(name, g)| *g && !used.contains(name))
        .map(|(name, _)| {
            format!(
                "--{name} has no effect under policy {policy} (kept for a later policy that uses it; docs/scheduling.md)"
            )
        })
        .collect()
}

/// `coproc domain-list`.
pub fn domain_list(c: &mut Client, f: Format) -> anyhow::Result<bool> {
    let l = c.list_domains()?;
    let rows = l
        .iter()
        .map(|d| {
            vec![
                d.domain.to_string(),
                d.uid.to_string(),
                // A cgroup path is the container's to name: escaped.
                d.container.as_deref().map_or_else(|| "-".into(), sanitize),
                d.sessions.to_string(),
                d.vcoprocs.to_string(),
                d.mapped_bytes.to_string(),
                d.mappings.to_string(),
            ]
        })
        .collect();
    show(
        f,
        &l,
        &[
            "domain",
            "uid",
            "container",
            "sessions",
            "vcoprocs",
            "mapped bytes",
            "mappings",
        ],
        rows,
    )
}

/// `coproc fault-list`.
pub fn fault_list(c: &mut Client, f: Format) -> anyhow::Result<bool> {
    let l = c.list_faults()?;
    if f == Format::Json {
        let out: Vec<Value> = l.iter().map(fault_json).collect();
        println!("{}", serde_json::to_string(&out)?);
        return Ok(true);
    }
    let rows = l
        .iter()
        .map(|x| {
            vec![
                x.coproc.clone(),
                x.vcoproc.to_string(),
                x.domain.to_string(),
                if x.at_unix_ns == 0 {
                    format!("{:.3} s", x.at_ns as f64 / 1e9)
                } else {
                    rfc3339(x.at_unix_ns)
                },
                x.addr.map_or_else(|| "-".into(), |a| format!("{a:#x}")),
                x.access.clone(),
                x.pc.map_or_else(|| "-".into(), |a| format!("{a:#x}")),
                x.reason.clone(),
            ]
        })
        .collect();
    show(
        f,
        &l,
        &[
            "coproc", "vcoproc", "domain", "at", "addr", "access", "pc", "reason",
        ],
        rows,
    )
}

/// Options of `coproc run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Pcoproc.
    #[arg(long, default_value = "mcu0")]
    coproc: String,
    /// Firmware: an image file (ELF for the mcu class, SPIR-V or WGSL for
    /// vulkan), or, when no such file exists, the name of a built-in
    /// example firmware (`fft`, `biquad`, `hello`, `irq`, `echo`, ...).
    firmware: String,
    /// Mailbox-in words to write before ringing the doorbell (decimal or 0x).
    #[arg(long, value_delimiter = ',', value_parser = parse_word)]
    mbox: Vec<u32>,
    /// Shared memory to map at 0x60000000, in KiB (0: as much as --input
    /// and --output need, none without them).
    #[arg(long, default_value_t = 0)]
    map_kib: u64,
    /// Copy FILE into the shared memory at OFFSET (default 0) before
    /// starting. Repeatable.
    #[arg(long = "input", value_name = "FILE[@OFFSET]")]
    inputs: Vec<String>,
    /// Once the firmware has notified (or stopped), write LEN bytes of the
    /// shared memory from OFFSET (default 0; LEN default: to its end) to
    /// FILE. Repeatable.
    #[arg(long = "output", value_name = "FILE[@OFFSET][:LEN]")]
    outputs: Vec<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

/// `coproc mapping-list [V]`.
pub fn mapping_list(c: &mut Client, f: Format, vcoproc: Option<u32>) -> anyhow::Result<bool> {
    let l = c.list_mappings(vcoproc)?;
    let rows = l
        .iter()
        .map(|m| {
            vec![
                m.vcoproc.to_string(),
                format!("{:#x}", m.iova),
                m.len.to_string(),
                format!("{:?}", m.perms).to_lowercase(),
                format!("{:?}", m.kind).to_lowercase(),
                m.domain.to_string(),
            ]
        })
        .collect();
    show(
        f,
        &l,
        &["vcoproc", "iova", "len", "perms", "kind", "domain"],
        rows,
    )
}

/// An iova in decimal or `0x` hexadecimal.
pub fn parse_iova(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(&h.replace('_', ""), 16),
        None => s.replace('_', "").parse(),
    };
    r.map_err(|e| format!("{s:?} is not an iova (decimal or 0x hex): {e}"))
}

/// `coproc mapping-revoke V IOVA`.
pub fn mapping_revoke(c: &mut Client, f: Format, vcoproc: u32, iova: u64) -> anyhow::Result<bool> {
    let r = c.revoke(vcoproc, iova)?;
    #[derive(Serialize)]
    struct Out {
        vcoproc: u32,
        iova: u64,
        revoked: bool,
        len: Option<u64>,
    }
    let out = Out {
        vcoproc,
        iova,
        revoked: r.is_some(),
        len: r,
    };
    match f {
        Format::Json => println!("{}", serde_json::to_string(&out)?),
        Format::Table => match r {
            Some(len) => println!("revoked {len} bytes at {iova:#x} of vcoproc {vcoproc}"),
            None => println!("nothing mapped at {iova:#x} of vcoproc {vcoproc}"),
        },
    }
    Ok(true)
}

#[cfg(test)]
mod revoke_tests {
    use super::parse_iova;

    #[test]
    fn iovas_parse_in_decimal_and_hex() {
        assert_eq!(parse_iova("0x6000_0000"), Ok(0x6000_0000));
        assert_eq!(parse_iova("1610612736"), Ok(0x6000_0000));
        assert_eq!(parse_iova("0XfF"), Ok(255));
        assert!(parse_iova("0x").is_err());
        assert!(parse_iova("-1").is_err());
        assert!(parse_iova("0x1_0000_0000_0000_0000").is_err());
    }
}

#[cfg(test)]
mod list_tests {
    use super::memory;

    #[test]
    fn memory_is_shown_in_mib_or_gib() {
        assert_eq!(memory(0), "-");
        assert_eq!(memory(1 << 20), "1.0 MiB");
        assert_eq!(memory(3 << 19), "1.5 MiB");
        assert_eq!(memory(1023 << 20), "1023.0 MiB");
        assert_eq!(memory(1 << 30), "1.0 GiB");
        assert_eq!(memory(80 << 30), "80.0 GiB");
        assert_eq!(memory(4096), "4.0 KiB");
    }
}
