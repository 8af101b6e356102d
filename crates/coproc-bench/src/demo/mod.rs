//! `coproc demo`: five domains, five firmware images, one mcu pcoproc under
//! round robin; where a Vulkan device is found, two more domains on a
//! `vulkan` pcoproc (`gpu0`): saxpy (WGSL) and matmul (SPIR-V). Every
//! result is checked against the host reference.
//!
//! By part, one module each: `daemon` (the domains as client processes of
//! a private coprocd, and the run-time control), `local` (the same as
//! threads of this process), `mcu` and `gpu` (the workloads and their
//! checks), `examples` (the toolchain examples on `mcu1`) and `render`
//! (the report as a table or JSON).

mod daemon;
mod examples;
mod gpu;
mod local;
mod mcu;
mod render;

use crate::output::Format;
use coproc_core::fault::FaultRecord;
use coproc_firmware::{Firmware, CRC32, ECHO, FAULTY, FIR, HOG};
use gpu::GPU;
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

#[derive(Debug, Serialize)]
struct Row {
    domain: String,
    /// The pcoproc it ran on ("mcu0" or "gpu0").
    pcoproc: &'static str,
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

impl Row {
    /// The row of a domain whose vcoproc is gone (or never came), with
    /// `detail`.
    fn gone(domain: &str, pcoproc: &'static str, firmware: &'static str, detail: String) -> Row {
        Row {
            domain: domain.to_string(),
            pcoproc,
            firmware,
            vcoproc: 0,
            state: "gone".into(),
            verified: false,
            run_ns: 0,
            share_pct: 0.0,
            slices: 0,
            switches: 0,
            faults: 0,
            detail,
            fault: None,
        }
    }

    /// The row of an in-process vcoproc: what `info` says, and its check
    /// (a detail line, or why it failed).
    fn in_process<E: std::fmt::Display>(
        domain: &str,
        pcoproc: &'static str,
        firmware: &'static str,
        info: &coproc_core::pcoproc::VcoprocInfo,
        check: Result<String, E>,
        fault: bool,
    ) -> Row {
        Row {
            domain: domain.to_string(),
            pcoproc,
            firmware,
            vcoproc: info.id.0,
            state: info.state.to_string(),
            verified: check.is_ok(),
            run_ns: info.stats.run_ns,
            share_pct: 0.0,
            slices: info.stats.slices,
            switches: info.stats.switches,
            faults: info.stats.faults,
            detail: check.unwrap_or_else(|e| format!("FAILED: {e}")),
            fault: info
                .last_fault
                .as_ref()
                .filter(|_| fault)
                .map(FaultSummary::from),
        }
    }
}

/// The GPU part of the demo.
#[derive(Debug, Serialize)]
struct GpuSummary {
    pcoproc: &'static str,
    /// "name (driver)" of the device the pcoproc opened.
    model: String,
}

#[derive(Debug, Serialize)]
struct Report {
    pcoproc: String,
    /// The vulkan pcoproc, when a device was found.
    gpu: Option<GpuSummary>,
    /// Why the GPU domains did not run (no Vulkan device), if they did not.
    gpu_skipped: Option<String>,
    policy: String,
    slice_us: u64,
    /// "daemon" (client processes of coprocd) or "in-process".
    mode: &'static str,
    /// The toolchain examples (libc, libm, FPU, interrupts), on their own
    /// in-process pcoproc `mcu1`.
    examples: Vec<Row>,
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

/// What one run of the demo found.
struct Outcome {
    rows: Vec<Row>,
    switches: u64,
    sched_changes: Vec<String>,
    /// The vulkan pcoproc's model, when the GPU domains ran.
    gpu_model: Option<String>,
}

/// A domain's check: what was verified, or why it failed.
type Check = Result<String, String>;

/// Run the demo; returns whether every check passed.
pub fn run(args: &Args, format: Format) -> anyhow::Result<bool> {
    // The GPU domains run where a Vulkan device is found.
    let gpu_skipped = coproc_vulkan::probe()
        .err()
        .map(|e| format!("no Vulkan device: {e}"));
    let gpu = gpu_skipped.is_none();
    let (out, mode) = if args.in_process {
        (local::in_process(args, gpu)?, "in-process")
    } else {
        (daemon::through_daemon(args, gpu)?, "daemon")
    };
    let mut rows = out.rows;
    // Shares within each pcoproc.
    let total = |p: &str, rows: &[Row]| -> u64 {
        rows.iter()
            .filter(|r| r.pcoproc == p)
            .map(|r| r.run_ns)
            .sum::<u64>()
            .max(1)
    };
    let totals: Vec<u64> = rows.iter().map(|r| total(r.pcoproc, &rows)).collect();
    for (r, t) in rows.iter_mut().zip(totals) {
        r.share_pct = (r.run_ns as f64 * 1000.0 / t as f64).round() / 10.0;
    }
    let busy: u64 = rows.iter().map(|r| r.run_ns).sum();
    let examples = examples::toolchain_examples(Duration::from_micros(args.slice_us))?;
    let ok = rows.iter().chain(&examples).all(|r| r.verified);
    let report = Report {
        pcoproc: "mcu0".into(),
        gpu: out.gpu_model.map(|model| GpuSummary {
            pcoproc: GPU,
            model,
        }),
        gpu_skipped,
        policy: "rr".into(),
        slice_us: args.slice_us,
        mode,
        examples,
        sched_changes: out.sched_changes,
        ok,
        vcoprocs: rows,
    };
    render::print(&report, format, busy, out.switches);
    if matches!(format, Format::Table) {
        render::print_examples(&report.examples);
    }
    Ok(ok)
}
