//! `run`: firmware by path or built-in name, input files in, output files
//! out, one job through the mailbox, the report.

use super::{fault_json, opt, RunArgs, VerbError};
use crate::output::sanitize;
use crate::output::Format;
use anyhow::{bail, Context};
use coproc_client::Client;
use coproc_client::ClientError;
use coproc_client::Event;
use coproc_client::FaultInfo;
use coproc_client::SharedMem;
use coproc_client::WireMapKind;
use coproc_client::WirePerms;
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

/// A `--input`/`--output` argument: `FILE[@OFFSET][:LEN]` (numbers decimal
/// or 0x). A suffix that is not a number stays part of the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DataSpec {
    path: PathBuf,
    offset: u64,
    len: Option<u64>,
}

pub(super) fn parse_data_spec(s: &str, with_len: bool) -> anyhow::Result<DataSpec> {
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
pub(super) fn image_class(image: &[u8]) -> Option<&'static str> {
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
pub(super) fn run_image(name: &str) -> anyhow::Result<(String, Vec<u8>)> {
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
pub(super) struct Notification {
    seq: u64,
    tag: u32,
}

#[derive(Debug, Serialize)]
pub(super) struct RunReport {
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
