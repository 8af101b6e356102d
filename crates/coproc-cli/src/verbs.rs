//! xl-style verbs against the daemon: listings (table or `-o json`) and
//! control. Admin verbs need root or the configured admin group; others see
//! only their own domain's vcoprocs.

use crate::output::{print_table, rfc3339, sanitize, Format};
use anyhow::{bail, Context};
use coproc_client::{
    Client, ClientError, Event, FaultInfo, SchedInfo, SharedMem, VcoprocInfo, WireMapKind,
    WirePerms,
};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Failures the verbs find themselves (the daemon's own are
/// [`ClientError`]s); each has its exit status (docs/cli.md).
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

/// A parameter value as JSON: a number when it is an integer, else the
/// text.
fn param_value(v: &str) -> Value {
    if let Ok(n) = v.parse::<i64>() {
        Value::from(n)
    } else if let Ok(n) = v.parse::<u64>() {
        Value::from(n)
    } else {
        Value::from(v)
    }
}

/// Policy parameters as a JSON object: `window` (the one key that
/// repeats) is always an array; other keys hold one value (the last).
fn params_json(params: &[(String, String)]) -> Value {
    let mut m = Map::new();
    for (k, v) in params {
        if k == "window" {
            let w = m
                .entry(k.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(a) = w {
                a.push(Value::from(v.as_str()));
            }
        } else {
            m.insert(k.clone(), param_value(v));
        }
    }
    Value::Object(m)
}

/// A pcoproc's scheduler as JSON (docs/cli.md, `sched-get`).
fn sched_json(s: &SchedInfo) -> Value {
    let standings: Vec<Value> = s
        .standings
        .iter()
        .map(|(id, queued, figs)| {
            let figures: Map<String, Value> = figs
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(*v)))
                .collect();
            json!({ "vcoproc": id, "queued": queued, "figures": figures })
        })
        .collect();
    json!({
        "coproc": s.coproc,
        "policy": s.policy,
        "params": params_json(&s.params),
        "standings": standings,
    })
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
                d.uid.to_string(),
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
        &["uid", "sessions", "vcoprocs", "mapped bytes", "mappings"],
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

/// `coproc sched-get`.
pub fn sched_get(c: &mut Client, f: Format, coproc: &str) -> anyhow::Result<bool> {
    let s = c.sched_get(coproc)?;
    print_sched(f, &s, &[], &[]);
    Ok(true)
}

/// A scheduler as `sched-get` and `sched-set` print it; `notes` and
/// `warnings` (already on stderr) join the JSON.
fn print_sched(f: Format, s: &SchedInfo, notes: &[String], warnings: &[String]) {
    if f == Format::Json {
        let mut o = sched_json(s);
        if let Value::Object(m) = &mut o {
            if !notes.is_empty() || !warnings.is_empty() {
                m.insert("notes".into(), json!(notes));
                m.insert("warnings".into(), json!(warnings));
            }
        }
        println!("{o}");
        return;
    }
    let params: Vec<String> = s.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "{}: policy {} {}\n",
        s.coproc,
        s.policy,
        sanitize(&params.join(" "))
    );
    let rows = s
        .standings
        .iter()
        .map(|(id, queued, figs)| {
            let figs: Vec<String> = figs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                id.to_string(),
                if *queued { "yes".into() } else { "no".into() },
                figs.join(" "),
            ]
        })
        .collect::<Vec<_>>();
    print_table(&["vcoproc", "queued", "standing"], &rows);
}

/// `key=value` words as pairs; a word without `=` is a usage error naming
/// it.
fn parse_params(params: &[String]) -> Result<Vec<(String, String)>, VerbError> {
    params
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(VerbError::Usage(format!(
                "parameter {p:?} is not key=value (e.g. slice_us=1000)"
            ))),
        })
        .collect()
}

/// The parameters `sched-set` sends: under the same policy the current
/// ones with the named keys replaced (all `window`s if any is named);
/// under another policy only the named ones (the rest take that policy's
/// defaults).
fn merge_params(
    current_policy: &str,
    current: &[(String, String)],
    policy: &str,
    named: Vec<(String, String)>,
) -> Vec<(String, String)> {
    if current_policy != policy {
        return named;
    }
    // What sched-get reports beyond the settable parameters (rt's
    // `utilisation_ppm`) is state, not a parameter: not sent back.
    let settable: Option<&[&str]> = match policy {
        "rr" | "priority" => Some(&["slice_us"]),
        "credit" => Some(&["slice_us", "cap_period_us"]),
        "rt" => Some(&["capacity_pct", "slice_us"]),
        "table" => Some(&["frame_us", "window", "fill"]),
        _ => None,
    };
    let mut out: Vec<(String, String)> = current
        .iter()
        .filter(|(k, _)| !named.iter().any(|(n, _)| n == k))
        .filter(|(k, _)| settable.is_none_or(|s| s.contains(&k.as_str())))
        .cloned()
        .collect();
    out.extend(named);
    out
}

/// `coproc sched-set C POLICY key=value...`: keeps the parameters not
/// named, prints the resulting scheduler, warns about what has no effect.
pub fn sched_set(
    c: &mut Client,
    f: Format,
    coproc: &str,
    policy: &str,
    params: &[String],
) -> anyhow::Result<bool> {
    let named = parse_params(params)?;
    let named_keys: Vec<String> = named.iter().map(|(k, _)| k.clone()).collect();
    let before = c.sched_get(coproc)?;
    let mut notes = Vec::new();
    if before.policy != policy {
        notes.push(format!(
            "policy {} -> {policy}: parameters not named take {policy}'s defaults",
            before.policy
        ));
    }
    let send = merge_params(&before.policy, &before.params, policy, named);
    c.sched_set(coproc, policy, &send)?;
    let after = c.sched_get(coproc)?;
    let vcoprocs = c.list_vcoprocs(None, Some(coproc))?;
    let ids: Vec<u32> = vcoprocs.iter().map(|v| v.id).collect();
    let mut warnings = Vec::new();
    if policy == "credit"
        && named_keys.iter().any(|k| k == "cap_period_us")
        && vcoprocs.iter().all(|v| v.cap_pct.is_none())
    {
        warnings.push(format!(
            "cap_period_us has no effect while no vcoproc on {coproc} has a cap (vcoproc-set --cap)"
        ));
    }
    let windows = after.params.iter().filter(|(k, _)| k == "window").count();
    let fill_idle = after.params.iter().any(|(k, v)| k == "fill" && v == "idle");
    if policy == "table" && windows == 0 && fill_idle {
        warnings.push(format!(
            "no windows and fill=idle: nothing runs on {coproc} (give window=V:OFFSET_US:LEN_US)"
        ));
    }
    for (k, v) in after.params.iter().filter(|(k, _)| k == "window") {
        let owner = v.split(':').next().and_then(|w| w.parse::<u32>().ok());
        if let Some(id) = owner.filter(|id| !ids.contains(id)) {
            warnings.push(format!(
                "{k}={v}: no vcoproc {id} on {coproc}, the window stays idle (or filled)"
            ));
        }
    }
    let vparams: &[&str] = match policy {
        "credit" => &["weight", "cap_pct"],
        "priority" => &["priority"],
        "rt" => &["reservation"],
        _ => &[],
    };
    if !ids.is_empty() && vparams.is_empty() && policy != "table" {
        notes.push(format!(
            "{policy} uses no per-vcoproc parameters: weights, caps, priorities and reservations are kept but have no effect"
        ));
    }
    for n in &notes {
        eprintln!("coproc: note: {n}");
    }
    for w in &warnings {
        eprintln!("coproc: warning: {w}");
    }
    print_sched(f, &after, &notes, &warnings);
    Ok(true)
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

/// A `--input`/`--output` argument: `FILE[@OFFSET][:LEN]` (numbers decimal
/// or 0x). A suffix that is not a number stays part of the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DataSpec {
    path: PathBuf,
    offset: u64,
    len: Option<u64>,
}

fn parse_data_spec(s: &str, with_len: bool) -> anyhow::Result<DataSpec> {
    let num = |t: &str| -> Option<u64> {
        match t.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => t.parse().ok(),
        }
    };
    let mut rest = s;
    let mut len = None;
    if with_len {
        if let Some((head, tail)) = rest.rsplit_once(':') {
            if let Some(n) = num(tail) {
                len = Some(n);
                rest = head;
            }
        }
    }
    let mut offset = 0;
    if let Some((head, tail)) = rest.rsplit_once('@') {
        if let Some(n) = num(tail) {
            offset = n;
            rest = head;
        }
    }
    if rest.is_empty() {
        bail!("{s:?}: no file name");
    }
    Ok(DataSpec {
        path: PathBuf::from(rest),
        offset,
        len,
    })
}

/// The device class a firmware image is for, from its first bytes: ELF is
/// mcu firmware, SPIR-V (magic 0x07230203) and UTF-8 text (WGSL) are
/// vulkan's; None if it is none of them.
fn image_class(image: &[u8]) -> Option<&'static str> {
    if image.starts_with(b"\x7fELF") {
        Some("mcu")
    } else if image.get(..4) == Some(&0x0723_0203u32.to_le_bytes()[..])
        || (!image.is_empty() && std::str::from_utf8(image).is_ok())
    {
        Some("vulkan")
    } else {
        None
    }
}

/// The image and its label: a file, else a built-in example of that name.
fn run_image(name: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let path = std::path::Path::new(name);
    if path.exists() {
        let image = std::fs::read(path).with_context(|| format!("reading {name}"))?;
        let label = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("firmware")
            .to_string();
        return Ok((label, image));
    }
    if let Some(f) = coproc_firmware::by_name(name) {
        return Ok((f.name.to_string(), f.elf.to_vec()));
    }
    if let Some(f) = coproc_firmware::gpu::by_name(name) {
        return Ok((f.name.to_string(), f.image.to_vec()));
    }
    let builtin: Vec<&str> = coproc_firmware::ALL
        .iter()
        .map(|f| f.name)
        .chain(coproc_firmware::gpu::ALL.iter().map(|f| f.name))
        .collect();
    bail!(
        "no file {name:?} and no built-in example firmware of that name (built in: {})",
        builtin.join(", ")
    )
}

/// A mailbox word in decimal or `0x` hex; the error names the word.
pub fn parse_word(s: &str) -> Result<u32, String> {
    let t = s.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => t.parse(),
    }
    .map_err(|e| format!("{s:?} is not a 32-bit word (decimal or 0x hex): {e}"))
}

#[derive(Debug, Serialize)]
struct Notification {
    seq: u64,
    tag: u32,
}

#[derive(Debug, Serialize)]
struct RunReport {
    vcoproc: u32,
    coproc: String,
    firmware: String,
    /// `notified`, `timeout`, or the state it stopped in (`faulted`,
    /// `exited`, ...).
    outcome: String,
    notify: Option<Notification>,
    mailbox: Vec<u32>,
    state: String,
    run_ns: u64,
    /// What the firmware printed (its console lines), and how many earlier
    /// lines the daemon no longer kept.
    console: Vec<String>,
    console_dropped: u64,
    /// Its fault records ([`fault_json`]), when it faulted.
    faults: Vec<Value>,
}

/// `coproc run`: a one-shot client. Loads the firmware into a new vcoproc,
/// starts it, rings the doorbell once, waits for a notification, a fault,
/// an exit or the time limit, prints the mailbox; the vcoproc is destroyed
/// when the command ends. The statistics read after the notification
/// count the run time up to it (the daemon includes the slice in
/// progress); the firmware's console lines are printed after the mailbox.
pub fn run(c: &mut Client, f: Format, a: &RunArgs) -> anyhow::Result<bool> {
    let (label, image) = run_image(&a.firmware)?;
    let words = a.mbox.clone();
    if words.len() > 16 {
        return Err(VerbError::Usage(format!(
            "--mbox: {} words given, the mailbox has 16",
            words.len()
        ))
        .into());
    }
    let inputs = a
        .inputs
        .iter()
        .map(|s| {
            let spec = parse_data_spec(s, false)?;
            let data = std::fs::read(&spec.path)
                .with_context(|| format!("reading input {}", spec.path.display()))?;
            Ok((spec, data))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let outputs = a
        .outputs
        .iter()
        .map(|s| parse_data_spec(s, true))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Refuse firmware of another class up front, with the reason.
    if let (Some(kind), Some(pc)) = (
        image_class(&image),
        c.list_coprocs()?.into_iter().find(|p| p.name == a.coproc),
    ) {
        if pc.class != kind {
            bail!(
                "{} is {kind} firmware, but pcoproc {} is of class {}",
                a.firmware,
                pc.name,
                pc.class
            );
        }
        if kind == "vulkan" {
            bail!(
                "coproc run drives mcu firmware through its mailbox; {} is GPU firmware, which \
                 takes its jobs through a queue: use the SDK (docs/gpu.md)",
                a.firmware
            );
        }
    }
    // The shared memory: as asked, or as much as the data needs.
    let need = inputs
        .iter()
        .map(|(s, d)| s.offset.saturating_add(d.len() as u64))
        .chain(
            outputs
                .iter()
                .map(|s| s.offset.saturating_add(s.len.unwrap_or(1))),
        )
        .max()
        .unwrap_or(0);
    let map_len = if a.map_kib > 0 {
        a.map_kib.saturating_mul(1024)
    } else {
        need.div_ceil(4096).saturating_mul(4096)
    };
    if need > map_len {
        bail!("--input/--output need {need} bytes of shared memory, --map-kib gives {map_len}");
    }
    let v = c.open(&a.coproc)?;
    c.load_firmware(v, &label, &image)?;
    let mem = if map_len > 0 {
        let m = SharedMem::new(map_len)?;
        for (spec, data) in &inputs {
            m.write(spec.offset, data)?;
        }
        c.map(
            v,
            &m,
            0,
            0x6000_0000,
            m.len(),
            WirePerms::Rw,
            WireMapKind::Pinned,
        )?;
        Some(m)
    } else {
        None
    };
    c.subscribe(v)?;
    c.start(v)?;
    if !words.is_empty() {
        c.mbox_write(v, 0, &words)?;
    }
    c.doorbell(v)?;
    let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
    let (mut outcome, mut notify) = ("timeout".to_string(), None);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_event(left) {
            Ok(Event::Notify { vcoproc, seq, tag }) if vcoproc == v => {
                notify = Some(Notification { seq, tag });
                outcome = "notified".into();
                break;
            }
            Ok(Event::State { vcoproc, state }) if vcoproc == v => {
                outcome = state;
                break;
            }
            Ok(_) => {}
            Err(ClientError::Timeout(_)) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let (mailbox, _) = c.mbox_read(v)?;
    // The run time up to now: what was charged plus the slice in progress.
    let info = c.query(v)?;
    let (console, console_dropped) = c.console(v)?;
    if let Some(m) = &mem {
        for spec in &outputs {
            let end = match spec.len {
                Some(l) => spec.offset.saturating_add(l),
                None => m.len(),
            };
            if spec.offset > m.len() || end > m.len() {
                bail!(
                    "--output {}: bytes {}..{end} are outside the {} bytes of shared memory",
                    spec.path.display(),
                    spec.offset,
                    m.len()
                );
            }
            let bytes = m.read_vec(spec.offset, usize::try_from(end - spec.offset)?)?;
            std::fs::write(&spec.path, bytes)
                .with_context(|| format!("writing {}", spec.path.display()))?;
        }
    }
    let faults: Vec<FaultInfo> = if outcome == "faulted" || info.faults > 0 {
        let mut l: Vec<FaultInfo> = c
            .list_faults()?
            .into_iter()
            .filter(|x| x.vcoproc == v)
            .collect();
        if l.is_empty() {
            l.extend(info.last_fault.as_deref().cloned());
        }
        l
    } else {
        Vec::new()
    };
    let report = RunReport {
        vcoproc: v,
        coproc: a.coproc.clone(),
        firmware: label,
        outcome,
        notify,
        mailbox,
        state: info.state,
        run_ns: info.run_ns,
        console,
        console_dropped,
        faults: faults.iter().map(fault_json).collect(),
    };
    match f {
        Format::Json => println!("{}", serde_json::to_string(&report)?),
        Format::Table => {
            println!(
                "vcoproc {}: {} (state {}, ran {:.3} ms)",
                v,
                report.outcome,
                report.state,
                report.run_ns as f64 / 1e6
            );
            if let Some(n) = &report.notify {
                println!("notification {}, tag {}", n.seq, n.tag);
            }
            let words: Vec<String> = report.mailbox.iter().map(|w| format!("{w:#x}")).collect();
            println!("mailbox-out: {}", words.join(" "));
            if report.console_dropped > 0 {
                println!("console: {} earlier lines dropped", report.console_dropped);
            }
            // Firmware output is domain text: shown escaped, it cannot
            // drive the terminal.
            for line in &report.console {
                println!("console: {}", crate::output::sanitize(line));
            }
            for x in &faults {
                println!(
                    "fault: {} at {} ({}) pc {}",
                    sanitize(&x.reason),
                    opt(x.addr.map(|a| format!("{a:#x}"))),
                    x.access,
                    opt(x.pc.map(|p| format!("{p:#x}")))
                );
            }
        }
    }
    match report.outcome.as_str() {
        "timeout" => Err(VerbError::Timeout {
            vcoproc: v,
            seconds: a.seconds,
        }
        .into()),
        "faulted" => Err(VerbError::Fault {
            vcoproc: v,
            reason: sanitize(
                &faults
                    .last()
                    .map_or_else(|| "no fault record".to_string(), |x| x.reason.clone()),
            ),
        }
        .into()),
        _ => Ok(true),
    }
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

#[cfg(test)]
mod run_tests {
    use super::*;

    #[test]
    fn data_specs_parse_offsets_and_lengths() {
        let spec = |s: &str, l| parse_data_spec(s, l).unwrap();
        assert_eq!(
            spec("a.bin", true),
            DataSpec {
                path: "a.bin".into(),
                offset: 0,
                len: None
            }
        );
        assert_eq!(spec("a.bin@0x100:64", true).offset, 0x100);
        assert_eq!(spec("a.bin@0x100:64", true).len, Some(64));
        assert_eq!(spec("a.bin:64", true).len, Some(64));
        // Not numbers: part of the name. Inputs take no length.
        assert_eq!(spec("x@y:z", true).path, PathBuf::from("x@y:z"));
        assert_eq!(spec("in.bin:8", false).path, PathBuf::from("in.bin:8"));
        assert!(parse_data_spec("@4", false).is_err());
    }

    #[test]
    fn image_classes_come_from_the_first_bytes() {
        assert_eq!(image_class(coproc_firmware::ECHO.elf), Some("mcu"));
        for g in coproc_firmware::gpu::ALL {
            assert_eq!(image_class(g.image), Some("vulkan"), "{}", g.name);
        }
        assert_eq!(image_class(&[0xff, 0xfe, 0x00]), None);
    }
}

#[cfg(test)]
mod sched_set_tests {
    use super::{merge_params, parse_params, VerbError};

    fn kv(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn unnamed_parameters_are_kept_under_the_same_policy() {
        let cur = kv(&[("slice_us", "5000"), ("cap_period_us", "20000")]);
        assert_eq!(
            merge_params("credit", &cur, "credit", kv(&[("slice_us", "700")])),
            kv(&[("cap_period_us", "20000"), ("slice_us", "700")])
        );
        // Another policy: only what was named (its defaults for the rest).
        assert_eq!(
            merge_params("credit", &cur, "rr", kv(&[("slice_us", "700")])),
            kv(&[("slice_us", "700")])
        );
        // Naming one window replaces them all; rt's figure is not sent back.
        let t = kv(&[
            ("frame_us", "6000"),
            ("window", "1:0:100"),
            ("window", "2:100:100"),
            ("fill", "rr"),
        ]);
        assert_eq!(
            merge_params("table", &t, "table", kv(&[("window", "3:0:50")])),
            kv(&[("frame_us", "6000"), ("fill", "rr"), ("window", "3:0:50")])
        );
        let rt = kv(&[
            ("capacity_pct", "90"),
            ("slice_us", "5000"),
            ("utilisation_ppm", "0"),
        ]);
        assert_eq!(
            merge_params("rt", &rt, "rt", vec![]),
            kv(&[("capacity_pct", "90"), ("slice_us", "5000")])
        );
    }

    #[test]
    fn a_word_without_equals_is_named() {
        match parse_params(&["slice_us=1".into(), "slice".into()]) {
            Err(VerbError::Usage(m)) => assert!(m.contains("\"slice\""), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
