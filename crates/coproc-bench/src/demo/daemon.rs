//! The demo through the daemon: a private coprocd, each mcu domain a
//! `coproc domain-run` client process, each GPU domain a thread with its
//! own session; and the administrator's run-time control meanwhile.

use super::gpu::{gpu_remote, GPU, GPU_PLAN};
use super::{Args, FaultSummary, Outcome, Row, PLAN};
use anyhow::{bail, Context};
use std::time::Duration;

/// The demo through the daemon: each mcu domain is a `coproc domain-run`
/// client process of a private coprocd; each GPU domain (with `gpu`) a
/// thread of this process with its own session, using the SDK.
pub(super) fn through_daemon(args: &Args, gpu: bool) -> anyhow::Result<Outcome> {
    use std::io::Read;
    use std::process::Stdio;
    let mut config = format!(
        "[[pcoproc]]\nname = \"mcu0\"\nclass = \"mcu\"\npolicy = \"rr\"\npolicy_params = {{ slice_us = \"{}\" }}\n\n",
        args.slice_us
    );
    if gpu {
        config += &format!(
            "[[pcoproc]]\nname = \"{GPU}\"\nclass = \"vulkan\"\npolicy = \"rr\"\npolicy_params = {{ slice_us = \"{}\" }}\n\n",
            args.slice_us
        );
    }
    config += &format!(
        "[[domain]]\nuids = \"*\"\npcoprocs = [\"mcu0\"{}]\n",
        if gpu {
            format!(", \"{GPU}\"")
        } else {
            String::new()
        }
    );
    let daemon = crate::spawn::TempDaemon::start(&config)?;
    let gpu_model = if gpu {
        let mut c = coproc_client::Client::connect_to(&daemon.socket)?;
        let l = c.list_coprocs()?;
        let model = l.into_iter().find(|p| p.name == GPU).map(|p| p.model);
        Some(model.with_context(|| format!("the daemon does not list {GPU}"))?)
    } else {
        None
    };
    let scale_n = args.scale.max(1);
    let scale = scale_n.to_string();
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
    let socket = daemon.socket.clone();
    let gpu_threads: Vec<_> = GPU_PLAN
        .iter()
        .filter(|_| gpu)
        .map(|&(name, fw)| {
            let socket = socket.clone();
            std::thread::spawn(move || gpu_remote(&socket, name, &fw, scale_n))
        })
        .collect();
    let changes = run_time_control(&daemon.socket);
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
            pcoproc: "mcu0",
            firmware: fw.name,
            vcoproc: get("vcoproc").as_u64().unwrap_or(0) as u32,
            state: get("state").as_str().unwrap_or("gone").to_string(),
            verified: out.status.success() && get("verified") == serde_json::Value::Bool(true),
            run_ns: get("run_ns").as_u64().unwrap_or(0),
            share_pct: 0.0,
            slices: get("slices").as_u64().unwrap_or(0),
            switches: get("switches").as_u64().unwrap_or(0),
            faults: get("faults").as_u64().unwrap_or(0),
            detail: get("detail").as_str().map_or_else(
                || {
                    format!(
                        "FAILED: client exited {} {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                },
                String::from,
            ),
            fault: fault.is_object().then(|| FaultSummary {
                addr: fault["addr"].as_u64(),
                access: fault["access"].as_str().unwrap_or("").to_string(),
                pc: fault["pc"].as_u64(),
                reason: fault["reason"].as_str().unwrap_or("").to_string(),
            }),
        });
    }
    for (t, (name, fw)) in gpu_threads.into_iter().zip(GPU_PLAN) {
        rows.push(t.join().unwrap_or_else(|_| {
            Row::gone(name, GPU, fw.name, "FAILED: domain thread panicked".into())
        }));
    }
    let switches = rows.iter().map(|r| r.switches).sum();
    Ok(Outcome {
        rows,
        switches,
        sched_changes: changes?,
        gpu_model,
    })
}

/// As the administrator, while the domains run: switch the pcoproc from rr
/// to credit and cap the hog at 25 %. Returns what was done.
fn run_time_control(socket: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let mut admin = coproc_client::Client::connect_to(socket)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let hog = loop {
        let l = admin.list_vcoprocs(None, Some("mcu0"))?;
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
