//! The demo in one process: the domains as threads on in-process
//! pcoprocs.

use super::gpu::{gpu_workload, LocalGpu, GPU, GPU_PLAN};
use super::mcu::{crc32, echo, faulty, fir, hog};
use super::{Args, Check, Outcome, Row};
use anyhow::Context;
use coproc_core::policy::{RoundRobin, SchedParams};
use coproc_core::System;
use coproc_firmware::{Firmware, CRC32, ECHO, FAULTY, FIR, HOG};
use coproc_mcu::{factory, McuConfig};
use std::time::Duration;

/// The demo in one process: each domain a thread on an in-process pcoproc
/// (the GPU domains, with `gpu`, on an in-process vulkan pcoproc).
pub(super) fn in_process(args: &Args, gpu: bool) -> anyhow::Result<Outcome> {
    let slice = Duration::from_micros(args.slice_us);
    let scale = args.scale.max(1);
    let system = System::new();
    let rr = RoundRobin::new(slice).context("slice")?;
    let pcoproc = system.add_pcoproc("mcu0", factory(McuConfig::default()), Box::new(rr))?;
    pcoproc.set_trace(1 << 20);
    let gpu_pcoproc = if gpu {
        let rr = RoundRobin::new(slice).context("slice")?;
        let p = system
            .add_pcoproc(
                GPU,
                coproc_vulkan::factory(coproc_vulkan::VulkanConfig::default()),
                Box::new(rr),
            )
            .with_context(|| format!("opening the Vulkan device for {GPU}"))?;
        Some(p)
    } else {
        None
    };

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
    let mut gpu_vcoprocs = Vec::new();
    for (name, fw) in GPU_PLAN.iter().filter(|_| gpu_pcoproc.is_some()) {
        let d = system.add_domain(name);
        let v = system.create_vcoproc(d.id, GPU, SchedParams::default())?;
        v.load_firmware(fw.name, fw.image)
            .with_context(|| format!("loading {}", fw.name))?;
        gpu_vcoprocs.push((*name, *fw, v));
    }

    // The hog competes for the whole run.
    let hog_v = vcoprocs[3].2.clone();
    hog_v.start()?;
    let (mut checks, gpu_checks): (Vec<Check>, Vec<Check>) = std::thread::scope(|s| {
        let gpu_handles: Vec<_> = gpu_vcoprocs
            .iter()
            .map(|(_, fw, v)| {
                s.spawn(move || {
                    let mut d = LocalGpu::new(v)?;
                    gpu_workload(fw.name, &mut d, scale)
                })
            })
            .collect();
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
        let join = |h: std::thread::ScopedJoinHandle<'_, Check>| {
            h.join()
                .unwrap_or_else(|_| Err("domain thread panicked".into()))
        };
        (
            handles.into_iter().map(join).collect(),
            gpu_handles.into_iter().map(join).collect(),
        )
    });
    // Snapshot before the hog is stopped for its check.
    let infos: Vec<_> = vcoprocs
        .iter()
        .map(|(_, _, v)| v.info())
        .collect::<Result<_, _>>()?;
    checks[3] = hog(&hog_v, slice);
    let gpu_infos: Vec<_> = gpu_vcoprocs
        .iter()
        .map(|(_, _, v)| v.info())
        .collect::<Result<_, _>>()?;

    let mut rows: Vec<Row> = vcoprocs
        .iter()
        .zip(infos)
        .zip(checks)
        .map(|(((name, fw, _), info), check)| {
            Row::in_process(name, "mcu0", fw.name, &info, check, true)
        })
        .collect();
    rows.extend(gpu_vcoprocs.iter().zip(gpu_infos).zip(gpu_checks).map(
        |(((name, fw, _), info), check)| Row::in_process(name, GPU, fw.name, &info, check, true),
    ));
    let (_, mut switches) = pcoproc.busy();
    let gpu_model = gpu_pcoproc.map(|p| {
        switches += p.busy().1;
        p.capabilities().model.clone()
    });
    for d in system.domains() {
        system.remove_domain(d.id)?;
    }
    system.shutdown();
    Ok(Outcome {
        rows,
        switches,
        sched_changes: vec![],
        gpu_model,
    })
}
