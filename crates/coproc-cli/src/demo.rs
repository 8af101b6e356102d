//! `coproc demo`: five domains, five firmware images, one mcu pcoproc under
//! round robin. Every result is checked against the host reference.

use crate::output::{print_table, Format};
use anyhow::{bail, Context};
use coproc_core::fault::{Access, FaultRecord};
use coproc_core::iova::MapKind;
use coproc_core::policy::{RoundRobin, SchedParams};
use coproc_core::state::VcoprocState;
use coproc_core::{System, VcoprocHandle};
use coproc_firmware::drive::{self, Buffer};
use coproc_firmware::reference::{self, TestRng};
use coproc_firmware::{Firmware, CRC32, ECHO, FAULTY, FIR, HOG};
use coproc_mcu::{abi, factory, McuConfig};
use serde::Serialize;
use std::time::Duration;

/// Options of the demo.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Round-robin slice in microseconds.
    #[arg(long, default_value_t = 1000)]
    slice_us: u64,
    /// Scale the amount of work (1 = a few seconds).
    #[arg(long, default_value_t = 1)]
    scale: u32,
    /// Run the domains as threads of this process on an in-process
    /// pcoproc, instead of as client processes of a private coprocd.
    #[arg(long)]
    in_process: bool,
}

/// A fault as the demo shows it.
#[derive(Debug, Serialize)]
struct FaultSummary {
    addr: Option<u64>,
    access: String,
    pc: Option<u64>,
    reason: String,
}

impl From<&FaultRecord> for FaultSummary {
    fn from(f: &FaultRecord) -> Self {
        FaultSummary {
            addr: f.fault.addr,
            access: format!("{:?}", f.fault.access).to_lowercase(),
            pc: f.fault.pc,
            reason: f.fault.reason.to_string(),
        }
    }
}

const T: Duration = Duration::from_secs(120);
/// Where `faulty` reads (see firmware/examples/faulty.c).
const FAULTY_ADDR: u64 = abi::IOVA_BASE as u64 + abi::IOVA_SIZE as u64 - 0x1000;

#[derive(Debug, Serialize)]
struct Row {
    domain: String,
    firmware: &'static str,
    vcoproc: u32,
    state: String,
    verified: bool,
    run_ns: u64,
    share_pct: f64,
    slices: u64,
    switches: u64,
    faults: u64,
    detail: String,
    fault: Option<FaultSummary>,
}

#[derive(Debug, Serialize)]
struct Report {
    pcoproc: String,
    policy: String,
    slice_us: u64,
    /// "daemon" (client processes of coprocd) or "in-process".
    mode: &'static str,
    /// Run-time scheduler changes made while the domains ran.
    sched_changes: Vec<String>,
    ok: bool,
    vcoprocs: Vec<Row>,
}

const PLAN: [(&str, Firmware); 5] = [
    ("alice", FIR),
    ("bob", CRC32),
    ("carol", ECHO),
    ("dave", HOG),
    ("eve", FAULTY),
];

/// The demo through the daemon: each domain is a `coproc domain-run`
/// client process of a private coprocd.
fn through_daemon(args: &Args) -> anyhow::Result<(Vec<Row>, u64, Vec<String>)> {
    use std::io::Read;
    use std::process::Stdio;
    let config = format!(
        "[[pcoproc]]\nname = \"mcu0\"\nclass = \"mcu\"\npolicy = \"rr\"\npolicy_params = {{ slice_us = \"{}\" }}\n\n\
         [[domain]]\nuids = \"*\"\npcoprocs = [\"mcu0\"]\n",
        args.slice_us
    );
    let daemon = crate::spawn::TempDaemon::start(&config)?;
    let scale = args.scale.max(1).to_string();
    let mut kids = Vec::new();
    for (name, fw) in PLAN {
        let mut c = daemon.coproc()?;
        c.args([
            "-o",
            "json",
            "domain-run",
            "--firmware",
            fw.name,
            "--scale",
            &scale,
        ]);
        if fw.name == "hog" {
            c.arg("--until-eof").stdin(Stdio::piped());
        }
        let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        kids.push((name, fw, child));
    }
    let changes = run_time_control(&daemon.socket)?;
    // Everyone but the hog finishes on its own; then the hog is told to stop.
    let mut outs = Vec::new();
    let mut hog = None;
    for (name, fw, child) in kids {
        if fw.name == "hog" {
            hog = Some((name, fw, child));
        } else {
            outs.push((name, fw, child.wait_with_output()?));
        }
    }
    if let Some((name, fw, mut child)) = hog {
        drop(child.stdin.take());
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .map(|mut s| s.read_to_string(&mut stdout));
        let status = child.wait()?;
        outs.push((
            name,
            fw,
            std::process::Output {
                status,
                stdout: stdout.into_bytes(),
                stderr: vec![],
            },
        ));
    }
    outs.sort_by_key(|(name, _, _)| PLAN.iter().position(|(n, _)| n == name));
    let mut rows = Vec::new();
    for (name, fw, out) in outs {
        let text = String::from_utf8_lossy(&out.stdout);
        let rep: Option<serde_json::Value> = serde_json::from_str(text.trim()).ok();
        let get = |k: &str| {
            rep.as_ref()
                .and_then(|r| r.get(k))
                .cloned()
                .unwrap_or_default()
        };
        let fault = get("fault");
        rows.push(Row {
            domain: name.to_string(),
            firmware: fw.name,
            vcoproc: get("vcoproc").as_u64().unwrap_or(0) as u32,
            state: get("state").as_str().unwrap_or("gone").to_string(),
            verified: out.status.success() && get("verified") == serde_json::Value::Bool(true),
            run_ns: get("run_ns").as_u64().unwrap_or(0),
            share_pct: 0.0,
            slices: get("slices").as_u64().unwrap_or(0),
            switches: get("switches").as_u64().unwrap_or(0),
            faults: get("faults").as_u64().unwrap_or(0),
            detail: get("detail").as_str().map(String::from).unwrap_or_else(|| {
                format!(
                    "FAILED: client exited {} {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            }),
            fault: fault.is_object().then(|| FaultSummary {
                addr: fault["addr"].as_u64(),
                access: fault["access"].as_str().unwrap_or("").to_string(),
                pc: fault["pc"].as_u64(),
                reason: fault["reason"].as_str().unwrap_or("").to_string(),
            }),
        });
    }
    let switches = rows.iter().map(|r| r.switches).sum();
    Ok((rows, switches, changes))
}

/// As the administrator, while the domains run: switch the pcoproc from rr
/// to credit and cap the hog at 25 %. Returns what was done.
fn run_time_control(socket: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let mut admin = coproc_client::Client::connect_to(socket)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let hog = loop {
        let l = admin.list_vcoprocs(None, None)?;
        if let Some(h) = l
            .iter()
            .find(|v| v.firmware == "hog" && v.state != "loaded")
        {
            if l.len() >= PLAN.len() - 1 || std::time::Instant::now() > deadline {
                break h.id;
            }
        }
        if std::time::Instant::now() > deadline {
            bail!("the demo's domains did not start");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    admin.sched_set("mcu0", "credit", &[])?;
    admin.vcoproc_set(
        hog,
        coproc_client::ParamChange {
            cap_pct: Some(25),
            ..Default::default()
        },
    )?;
    let s = admin.sched_get("mcu0")?;
    Ok(vec![
        format!(
            "policy rr -> {} ({}) while {} vcoprocs ran",
            s.policy,
            s.params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            s.standings.len()
        ),
        format!("hog v{hog} capped at 25 %"),
    ])
}

type Check = Result<String, String>;

fn fir(v: &VcoprocHandle, scale: u32) -> Check {
    let (samples, taps, jobs) = (16384, 32, 6 * scale);
    let buf = Buffer::map(v, (samples * 4 + taps * 2) as u64, MapKind::Pinned)
        .map_err(|e| e.to_string())?;
    v.start().map_err(|e| e.to_string())?;
    let mut rng = TestRng::new(0xf1f1);
    for j in 0..jobs {
        let x = rng.samples(samples);
        let h = rng.samples(taps);
        let y = drive::fir(v, &buf, &x, &h, j + 1, T).map_err(|e| format!("job {j}: {e}"))?;
        if y != reference::fir_q15(&x, &h) {
            return Err(format!("job {j}: output differs from the host reference"));
        }
    }
    Ok(format!(
        "{jobs} jobs x {samples} samples x {taps} taps equal the host reference"
    ))
}

fn crc32(v: &VcoprocHandle, scale: u32) -> Check {
    let (len, jobs) = (256 * 1024, 8 * scale);
    let buf = Buffer::map(v, len as u64, MapKind::Pinned).map_err(|e| e.to_string())?;
    v.start().map_err(|e| e.to_string())?;
    let mut rng = TestRng::new(0xc3c3);
    for j in 0..jobs {
        let data = rng.bytes(len - 3 * j as usize);
        let crc = drive::crc32(v, &buf, &data, j + 1, T).map_err(|e| format!("job {j}: {e}"))?;
        if crc != reference::crc32(&data) {
            return Err(format!(
                "job {j}: crc {crc:#010x} != reference {:#010x}",
                reference::crc32(&data)
            ));
        }
    }
    Ok(format!(
        "{jobs} buffers of ~{} KiB equal the host reference",
        len / 1024
    ))
}

fn echo(v: &VcoprocHandle, scale: u32) -> Check {
    let msgs = 1000 * scale;
    v.start().map_err(|e| e.to_string())?;
    let mut rng = TestRng::new(0xec40);
    for seq in 1..=msgs {
        let w: [u32; 16] = std::array::from_fn(|_| rng.next_u64() as u32);
        let out = drive::echo(v, &w, T).map_err(|e| format!("message {seq}: {e}"))?;
        if out != reference::echo(&w, seq) {
            return Err(format!("message {seq}: echo differs"));
        }
    }
    Ok(format!("{msgs} mailbox round trips echoed in order"))
}

fn faulty(v: &VcoprocHandle) -> Check {
    v.start().map_err(|e| e.to_string())?;
    v.doorbell();
    v.wait_state(|s| s == VcoprocState::Faulted, T)
        .map_err(|e| e.to_string())?;
    let rec = v
        .faults()
        .map_err(|e| e.to_string())?
        .pop()
        .ok_or("faulted without a record")?;
    if rec.fault.addr != Some(FAULTY_ADDR) || rec.fault.access != Access::Read {
        return Err(format!("unexpected fault record: {rec}"));
    }
    if v.mbox_read(0) != 360 || v.last_notify().seq != 0 {
        return Err("ran past its fault".into());
    }
    Ok(format!("faulted as expected: {rec}"))
}

fn hog(v: &VcoprocHandle, slice: Duration) -> Check {
    let p = v.pcoproc();
    // It gets more than a slice only while nobody else wants the device,
    // and gives way the moment someone wakes.
    let slice_ns = slice.as_nanos() as u64;
    let turns = p
        .trace()
        .into_iter()
        .filter(|t| t.vcoproc == v.id())
        .collect::<Vec<_>>();
    if let Some(t) = turns
        .iter()
        .find(|t| t.budget_ns > slice_ns && !t.preempted && t.ran_ns < t.budget_ns)
    {
        return Err(format!(
            "a turn of {} ns ended without giving way",
            t.ran_ns
        ));
    }
    // Stop it so its mailbox is stable, then check its computation.
    v.destroy().map_err(|e| e.to_string())?;
    let (done, x) = (u64::from(v.mbox_read(0)), v.mbox_read(1));
    if done == 0 {
        return Err("made no progress".into());
    }
    // It may have been preempted between publishing its two words.
    let ok = [done, done - 1]
        .iter()
        .any(|&d| reference::hog_state(d << 16) == x);
    if !ok {
        return Err(format!(
            "LCG state {x:#x} after {done}x65536 steps differs from the reference"
        ));
    }
    let long = turns.iter().filter(|t| t.budget_ns > slice_ns).count();
    Ok(format!(
        "{} M iterations, LCG state matches the reference; {long} of {} turns ran past a slice while alone and gave way at the next wake-up",
        (done << 16) / 1_000_000,
        turns.len()
    ))
}

/// Run the demo; returns whether every check passed.
pub fn run(args: &Args, format: Format) -> anyhow::Result<bool> {
    let (mut rows, switches, mode, sched_changes) = if args.in_process {
        let (rows, switches) = in_process(args)?;
        (rows, switches, "in-process", vec![])
    } else {
        let (rows, switches, changes) = through_daemon(args)?;
        (rows, switches, "daemon", changes)
    };
    let total: u64 = rows.iter().map(|r| r.run_ns).sum::<u64>().max(1);
    for r in &mut rows {
        r.share_pct = (r.run_ns as f64 * 1000.0 / total as f64).round() / 10.0;
    }
    let ok = rows.iter().all(|r| r.verified);
    let report = Report {
        pcoproc: "mcu0".into(),
        policy: "rr".into(),
        slice_us: args.slice_us,
        mode,
        sched_changes,
        ok,
        vcoprocs: rows,
    };
    print(&report, format, total, switches);
    Ok(ok)
}

/// The demo in one process: each domain a thread on an in-process pcoproc.
fn in_process(args: &Args) -> anyhow::Result<(Vec<Row>, u64)> {
    let slice = Duration::from_micros(args.slice_us);
    let scale = args.scale.max(1);
    let system = System::new();
    let rr = RoundRobin::new(slice).context("slice")?;
    let pcoproc = system.add_pcoproc("mcu0", factory(McuConfig::default()), Box::new(rr))?;
    pcoproc.set_trace(1 << 20);

    let plan: [(&str, Firmware); 5] = [
        ("alice", FIR),
        ("bob", CRC32),
        ("carol", ECHO),
        ("dave", HOG),
        ("eve", FAULTY),
    ];
    let mut vcoprocs = Vec::new();
    for (name, fw) in plan {
        let d = system.add_domain(name);
        let v = system.create_vcoproc(d.id, "mcu0", SchedParams::default())?;
        v.load_firmware(fw.name, fw.elf)
            .with_context(|| format!("loading {}", fw.name))?;
        vcoprocs.push((name, fw, v));
    }

    // The hog competes for the whole run.
    let hog_v = vcoprocs[3].2.clone();
    hog_v.start()?;
    let mut checks: Vec<Check> = std::thread::scope(|s| {
        let handles: Vec<_> = vcoprocs
            .iter()
            .map(|(_, fw, v)| {
                let fw = fw.name;
                s.spawn(move || match fw {
                    "fir" => fir(v, scale),
                    "crc32" => crc32(v, scale),
                    "echo" => echo(v, scale),
                    "faulty" => faulty(v),
                    _ => Ok(String::new()),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("domain thread panicked".into()))
            })
            .collect()
    });
    // Snapshot before the hog is stopped for its check.
    let infos: Vec<_> = vcoprocs
        .iter()
        .map(|(_, _, v)| v.info())
        .collect::<Result<_, _>>()?;
    checks[3] = hog(&hog_v, slice);

    let rows: Vec<Row> = vcoprocs
        .iter()
        .zip(infos)
        .zip(checks)
        .map(|(((name, fw, _), info), check)| Row {
            domain: name.to_string(),
            firmware: fw.name,
            vcoproc: info.id.0,
            state: info.state.to_string(),
            verified: check.is_ok(),
            run_ns: info.stats.run_ns,
            share_pct: 0.0,
            slices: info.stats.slices,
            switches: info.stats.switches,
            faults: info.stats.faults,
            detail: check.unwrap_or_else(|e| format!("FAILED: {e}")),
            fault: info.last_fault.as_ref().map(FaultSummary::from),
        })
        .collect();
    let (_, switches) = pcoproc.busy();
    for d in system.domains() {
        system.remove_domain(d.id)?;
    }
    system.shutdown();
    Ok((rows, switches))
}

fn print(report: &Report, format: Format, busy_ns: u64, switches: u64) {
    match format {
        Format::Json => println!("{}", serde_json::to_string(report).unwrap_or_default()),
        Format::Table => {
            let how = match report.mode {
                "daemon" => "client processes of a private coprocd",
                _ => "threads of this process",
            };
            println!(
                "coproc demo: {} domains ({how}) on one mcu pcoproc (Cortex-M4), policy rr, slice {} us\n",
                report.vcoprocs.len(),
                report.slice_us
            );
            let rows: Vec<Vec<String>> = report
                .vcoprocs
                .iter()
                .map(|r| {
                    vec![
                        r.domain.clone(),
                        r.firmware.to_string(),
                        format!("v{}", r.vcoproc),
                        r.state.clone(),
                        format!("{:.1}", r.run_ns as f64 / 1e6),
                        format!("{:.1}%", r.share_pct),
                        r.slices.to_string(),
                        r.switches.to_string(),
                        r.faults.to_string(),
                        if r.verified {
                            "yes".into()
                        } else {
                            "NO".into()
                        },
                    ]
                })
                .collect();
            print_table(
                &[
                    "domain", "firmware", "vcoproc", "state", "run ms", "share", "slices",
                    "switches", "faults", "verified",
                ],
                &rows,
            );
            println!();
            for r in &report.vcoprocs {
                println!("{:<6} {}", r.domain, r.detail);
            }
            for c in &report.sched_changes {
                println!("run-time control: {c}");
            }
            println!(
                "\ndevice busy {:.1} ms, {} context switches; {}",
                busy_ns as f64 / 1e6,
                switches,
                if report.ok {
                    "all checks passed"
                } else {
                    "SOME CHECKS FAILED"
                }
            );
        }
    }
}
