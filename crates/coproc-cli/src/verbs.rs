//! xl-style verbs against the daemon: listings (table or `-o json`) and
//! control. Admin verbs need root or the configured admin group; others see
//! only their own domain's vcoprocs.

use crate::output::{print_table, Format};
use anyhow::{bail, Context};
use coproc_client::{Client, ClientError, Event, SharedMem, WireMapKind, WirePerms};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    let l = c.list_vcoprocs(domain, coproc)?;
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
pub fn vcoproc_set(c: &mut Client, a: &SetArgs) -> anyhow::Result<bool> {
    let set = coproc_client::ParamChange {
        weight: a.weight,
        cap_pct: a.cap,
        priority: a.priority,
        budget_us: a.budget,
        period_us: a.period,
    };
    if set == coproc_client::ParamChange::default() {
        anyhow::bail!("nothing to change: give --weight, --cap, --priority, --budget or --period");
    }
    c.vcoproc_set(a.vcoproc, set)?;
    Ok(true)
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
    let rows = l
        .iter()
        .map(|x| {
            vec![
                x.coproc.clone(),
                x.vcoproc.to_string(),
                x.domain.to_string(),
                format!("{:.3}", x.at_ns as f64 / 1e9),
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
            "coproc", "vcoproc", "domain", "at s", "addr", "access", "pc", "reason",
        ],
        rows,
    )
}

/// `coproc sched-get`.
pub fn sched_get(c: &mut Client, f: Format, coproc: &str) -> anyhow::Result<bool> {
    let s = c.sched_get(coproc)?;
    if f == Format::Json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(true);
    }
    let params: Vec<String> = s.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("{}: policy {} {}\n", s.coproc, s.policy, params.join(" "));
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
    Ok(true)
}

/// `coproc sched-set C POLICY key=value...`.
pub fn sched_set(
    c: &mut Client,
    coproc: &str,
    policy: &str,
    params: &[String],
) -> anyhow::Result<bool> {
    let mut kv = Vec::new();
    for p in params {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("parameter {p:?} is not key=value"))?;
        kv.push((k.to_string(), v.to_string()));
    }
    c.sched_set(coproc, policy, &kv)?;
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
    #[arg(long, value_delimiter = ',')]
    mbox: Vec<String>,
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

fn parse_word(s: &str) -> anyhow::Result<u32> {
    let s = s.trim();
    Ok(match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16)?,
        None => s.parse()?,
    })
}

#[derive(Debug, Serialize)]
struct RunReport {
    vcoproc: u32,
    outcome: String,
    notify: Option<(u64, u32)>,
    mailbox: Vec<u32>,
    state: String,
    run_ns: u64,
    /// What the firmware printed (its console lines), and how many earlier
    /// lines the daemon no longer kept.
    console: Vec<String>,
    console_dropped: u64,
}

/// `coproc run`: a one-shot client. Loads the firmware into a new vcoproc,
/// starts it, rings the doorbell once, waits for a notification, a fault,
/// an exit or the time limit, prints the mailbox; the vcoproc is destroyed
/// when the command ends. The statistics read after the notification
/// count the run time up to it (the daemon includes the slice in
/// progress); the firmware's console lines are printed after the mailbox.
pub fn run(c: &mut Client, f: Format, a: &RunArgs) -> anyhow::Result<bool> {
    let (label, image) = run_image(&a.firmware)?;
    let words: Vec<u32> = a
        .mbox
        .iter()
        .map(|w| parse_word(w))
        .collect::<anyhow::Result<_>>()?;
    if words.len() > 16 {
        bail!("the mailbox has 16 words");
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
                notify = Some((seq, tag));
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
    let report = RunReport {
        vcoproc: v,
        outcome,
        notify,
        mailbox,
        state: info.state,
        run_ns: info.run_ns,
        console,
        console_dropped,
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
            if let Some((seq, tag)) = report.notify {
                println!("notification {seq}, tag {tag}");
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
            if report.outcome == "faulted" {
                for x in c.list_faults()?.iter().filter(|x| x.vcoproc == v) {
                    println!(
                        "fault: {} at {} ({}) pc {}",
                        crate::output::sanitize(&x.reason),
                        opt(x.addr.map(|a| format!("{a:#x}"))),
                        x.access,
                        opt(x.pc.map(|p| format!("{p:#x}")))
                    );
                }
            }
        }
    }
    Ok(report.outcome != "timeout" && report.outcome != "faulted")
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
