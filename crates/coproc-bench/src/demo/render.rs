//! The report, as a table (the toolchain examples after it) or JSON.

use super::{Report, Row};
use crate::output::{print_table, Format};

/// Print `report` in `format`.
pub(super) fn print(report: &Report, format: Format, busy_ns: u64, switches: u64) {
    match format {
        Format::Json => {
            println!("{}", serde_json::to_string(report).unwrap_or_default());
            if let Some(why) = &report.gpu_skipped {
                eprintln!("coproc demo: GPU domains skipped: {why}");
            }
        }
        Format::Table => {
            let how = match (report.mode, report.gpu.is_some()) {
                ("daemon", false) => "client processes of a private coprocd",
                ("daemon", true) => {
                    "client processes of a private coprocd; GPU domains as client threads"
                }
                _ => "threads of this process",
            };
            let gpu = report
                .gpu
                .as_ref()
                .map(|g| format!(" and one vulkan pcoproc ({})", g.model))
                .unwrap_or_default();
            println!(
                "coproc demo: {} domains ({how}) on one mcu pcoproc (Cortex-M4){gpu}, policy rr, slice {} us\n",
                report.vcoprocs.len(),
                report.slice_us
            );
            let rows: Vec<Vec<String>> = report
                .vcoprocs
                .iter()
                .map(|r| {
                    vec![
                        r.domain.clone(),
                        r.pcoproc.to_string(),
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
                    "domain", "pcoproc", "firmware", "vcoproc", "state", "run ms", "share",
                    "slices", "switches", "faults", "verified",
                ],
                &rows,
            );
            println!();
            for r in &report.vcoprocs {
                println!("{:<6} {}", r.domain, r.detail);
            }
            if let Some(why) = &report.gpu_skipped {
                println!("GPU domains skipped: {why}");
            }
            for c in &report.sched_changes {
                println!("run-time control: {c}");
            }
            println!(
                "\ndevices busy {:.1} ms, {} context switches; {}",
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

/// The toolchain examples' rows, after the table.
pub(super) fn print_examples(rows: &[Row]) {
    println!("\nfirmware toolchain examples (libc, libm, FPU, interrupts) on mcu1:");
    for r in rows {
        let ok = if r.verified { "yes" } else { "NO" };
        println!(
            "{:<5} {:<7} v{:<3} {:.1} ms  verified {ok}: {}",
            r.domain,
            r.firmware,
            r.vcoproc,
            r.run_ns as f64 / 1e6,
            r.detail
        );
    }
}
