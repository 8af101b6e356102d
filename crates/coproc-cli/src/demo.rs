//! `coproc demo`: five domains, five firmware images, one mcu pcoproc under
//! round robin. Every result is checked against the host reference.

use crate::output::{print_table, Format};
use anyhow::Context;
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
}

const T: Duration = Duration::from_secs(120);
/// Where `faulty` reads (see firmware/examples/faulty.c).
const FAULTY_ADDR: u64 = abi::IOVA_BASE as u64 + abi::IOVA_SIZE as u64 - 0x1000;

#[derive(Debug, Serialize)]
struct Row {
    domain: String,
    firmware: &'static str,
    vcoproc: u32,
    state: VcoprocState,
    verified: bool,
    run_ns: u64,
    share_pct: f64,
    slices: u64,
    switches: u64,
    faults: u64,
    detail: String,
    fault: Option<FaultRecord>,
}

#[derive(Debug, Serialize)]
struct Report {
    pcoproc: String,
    policy: String,
    slice_us: u64,
    ok: bool,
    vcoprocs: Vec<Row>,
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

    let total: u64 = infos.iter().map(|i| i.stats.run_ns).sum::<u64>().max(1);
    let rows: Vec<Row> = vcoprocs
        .iter()
        .zip(infos)
        .zip(checks)
        .map(|(((name, fw, _), info), check)| Row {
            domain: name.to_string(),
            firmware: fw.name,
            vcoproc: info.id.0,
            state: info.state,
            verified: check.is_ok(),
            run_ns: info.stats.run_ns,
            share_pct: (info.stats.run_ns as f64 * 1000.0 / total as f64).round() / 10.0,
            slices: info.stats.slices,
            switches: info.stats.switches,
            faults: info.stats.faults,
            detail: check.unwrap_or_else(|e| format!("FAILED: {e}")),
            fault: info.last_fault,
        })
        .collect();
    let ok = rows.iter().all(|r| r.verified);
    let (busy_ns, switches) = pcoproc.busy();
    for d in system.domains() {
        system.remove_domain(d.id)?;
    }
    system.shutdown();

    let report = Report {
        pcoproc: "mcu0".into(),
        policy: "rr".into(),
        slice_us: args.slice_us,
        ok,
        vcoprocs: rows,
    };
    match format {
        Format::Json => println!("{}", serde_json::to_string(&report)?),
        Format::Table => {
            println!(
                "coproc demo: {} domains on one mcu pcoproc (Cortex-M4), policy rr, slice {} us\n",
                report.vcoprocs.len(),
                args.slice_us
            );
            let rows: Vec<Vec<String>> = report
                .vcoprocs
                .iter()
                .map(|r| {
                    vec![
                        r.domain.clone(),
                        r.firmware.to_string(),
                        format!("v{}", r.vcoproc),
                        r.state.to_string(),
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
            println!(
                "\ndevice busy {:.1} ms, {} context switches; {}",
                busy_ns as f64 / 1e6,
                switches,
                if ok {
                    "all checks passed"
                } else {
                    "SOME CHECKS FAILED"
                }
            );
        }
    }
    Ok(ok)
}
