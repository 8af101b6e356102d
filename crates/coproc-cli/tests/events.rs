//! The daemon's event stream (`watch`, `coproc events`) against a private
//! daemon: state changes, faults, revokes, policy and parameter changes,
//! each checked against what the SDK reports; a domain sees only its own.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use common::{need_root, test_socket, wait_for, Daemon, MCU_RR};
use coproc_client::{Client, ClientError, SharedMem, WireMapKind, WirePerms};
use coproc_proto::{Event, ParamChange};
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Read events until one satisfies `want` (at most 60 s); all read, the
/// match last.
fn until(c: &mut Client, what: &str, want: impl Fn(&Event) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; saw {seen:?}"
        );
        match c.next_event(Duration::from_millis(200)) {
            Ok(e) => {
                let done = want(&e);
                seen.push(e);
                if done {
                    return seen;
                }
            }
            Err(ClientError::Timeout(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

fn state_of(e: &Event, v: u32) -> Option<(&str, Option<&str>)> {
    match e {
        Event::VcoprocState {
            vcoproc,
            state,
            previous,
            ..
        } if *vcoproc == v => Some((state.as_str(), previous.as_deref())),
        _ => None,
    }
}

#[test]
fn the_stream_reports_states_faults_and_revokes_as_the_sdk_sees_them() {
    let d = Daemon::start("events-own", MCU_RR);
    let mut w = d.client();
    w.watch().unwrap();
    w.watch().unwrap(); // again: nothing changes
    let me = w.identity().uid;
    let mut c = d.client();
    // A vcoproc appears, gets firmware and runs.
    let v = c.open("mcu0").unwrap();
    let seen = until(&mut w, "the new vcoproc", |e| state_of(e, v).is_some());
    let (first, prev) = state_of(seen.last().unwrap(), v).unwrap();
    assert_eq!(prev, None);
    assert!(["created", "loaded"].contains(&first), "{first}");
    assert!(matches!(
        seen.last().unwrap(),
        Event::VcoprocState { coproc, domain, .. } if coproc == "mcu0" && *domain == me
    ));
    let mem = SharedMem::new(16384).unwrap();
    c.load_firmware(v, "scribble", coproc_firmware::SCRIBBLE.elf)
        .unwrap();
    c.map(
        v,
        &mem,
        0,
        0x6000_0000,
        16384,
        WirePerms::Rw,
        WireMapKind::Revocable,
    )
    .unwrap();
    c.mbox_write(v, 0, &[0x6000_0000, 16384]).unwrap();
    c.start(v).unwrap();
    until(&mut w, "running", |e| {
        state_of(e, v).is_some_and(|(s, _)| s == "running")
    });
    // Its own revoke: reported with its length; then it faults on the
    // revoked pages, fault before state, as query tells.
    assert_eq!(c.revoke(v, 0x6000_0000).unwrap(), Some(16384));
    let seen = until(&mut w, "the revoke", |e| {
        matches!(e, Event::MappingRevoked { .. })
    });
    assert!(matches!(
        seen.last().unwrap(),
        Event::MappingRevoked { vcoproc, iova: 0x6000_0000, len: 16384, by } if *vcoproc == v && *by == me
    ));
    let seen = until(&mut w, "faulted", |e| {
        state_of(e, v).is_some_and(|(s, _)| s == "faulted")
    });
    let fault = seen
        .iter()
        .find_map(|e| match e {
            Event::Fault { fault } if fault.vcoproc == v => Some(fault.clone()),
            _ => None,
        })
        .expect("a fault event before the state");
    let q = c.query(v).unwrap();
    assert_eq!(Some(Box::new(fault)), q.last_fault);
    assert_eq!(q.state, "faulted");
    // Destroyed: the last state it had before.
    c.destroy(v).unwrap();
    let seen = until(&mut w, "destroyed", |e| {
        state_of(e, v).is_some_and(|(s, _)| s == "destroyed")
    });
    assert_eq!(
        state_of(seen.last().unwrap(), v),
        Some(("destroyed", Some("faulted")))
    );
}

#[test]
fn admins_see_policy_and_parameter_changes_and_domains_only_their_own() {
    if !need_root("watch as another uid") {
        return;
    }
    let d = Daemon::start("events-admin", MCU_RR);
    let mut w = d.client();
    w.watch().unwrap();
    let mut c = d.client();
    let v = c.open("mcu0").unwrap();
    c.sched_set("mcu0", "credit", &[("slice_us".into(), "2000".into())])
        .unwrap();
    let seen = until(&mut w, "the policy change", |e| {
        matches!(e, Event::PolicyChanged { .. })
    });
    assert_eq!(
        seen.last().unwrap(),
        &Event::PolicyChanged {
            coproc: "mcu0".into(),
            policy: "credit".into(),
            params: vec![("slice_us".into(), "2000".into())],
            by: 0
        }
    );
    assert_eq!(c.sched_get("mcu0").unwrap().policy, "credit");
    let set = ParamChange {
        weight: Some(512),
        ..ParamChange::default()
    };
    c.vcoproc_set(v, set.clone()).unwrap();
    let seen = until(&mut w, "the parameter change", |e| {
        matches!(e, Event::ParamsChanged { .. })
    });
    assert_eq!(
        seen.last().unwrap(),
        &Event::ParamsChanged {
            vcoproc: v,
            domain: 0,
            set,
            by: 0
        }
    );
    assert_eq!(c.query(v).unwrap().weight, 512);
    // While root's vcoprocs come and go, uid 65534 watches: it sees its
    // own and nothing of root's.
    let stop = AtomicBool::new(false);
    let nobody = std::thread::scope(|s| {
        s.spawn(|| {
            let mut r = d.client();
            while !stop.load(Ordering::Relaxed) {
                let x = r.open("mcu0").unwrap();
                r.destroy(x).unwrap();
            }
        });
        // Root's churn is in the admin's stream meanwhile.
        let admin = s.spawn(|| {
            until(&mut w, "root's churn", |e| {
                matches!(e, Event::VcoprocState { domain: 0, state, .. } if state == "destroyed")
            })
        });
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            d.run_test_as_nobody("watch_own_events_only", &[]);
            admin.join().expect("the admin saw root's churn");
        }));
        stop.store(true, Ordering::Relaxed);
        run
    });
    if let Err(p) = nobody {
        std::panic::resume_unwind(p);
    }
}

#[test]
#[ignore = "run as another uid by admins_see_policy_and_parameter_changes_and_domains_only_their_own"]
fn watch_own_events_only() {
    let mut w = Client::connect_to(&test_socket()).unwrap();
    w.watch().unwrap();
    let me = w.identity().uid;
    let mut c = Client::connect_to(&test_socket()).unwrap();
    let v = c.open("mcu0").unwrap();
    c.destroy(v).unwrap();
    let seen = until(&mut w, "our vcoproc destroyed", |e| {
        state_of(e, v).is_some_and(|(s, _)| s == "destroyed")
    });
    for e in &seen {
        match e {
            Event::VcoprocState { domain, .. } => assert_eq!(*domain, me, "{e:?}"),
            Event::Lagged { .. } => {}
            other => panic!("not ours: {other:?}"),
        }
    }
}

#[test]
fn coproc_events_prints_json_lines_with_times() {
    let d = Daemon::start("events-cli", MCU_RR);
    let mut child = d
        .coproc(&["-o", "json", "events", "--count", "2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Vcoprocs come and go until the tool has printed two events.
    let mut c = d.client();
    wait_for("two events", || {
        let v = c.open("mcu0").unwrap();
        c.destroy(v).unwrap();
        child.try_wait().unwrap().is_some()
    });
    assert!(child.wait().unwrap().success());
    let lines: Vec<String> = std::io::BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(Result::unwrap)
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        let j: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(j["event"], "vcoproc-state", "{l}");
        assert_eq!(j["coproc"], "mcu0");
        assert_eq!(j["domain"], c.identity().uid);
        let t = j["time"].as_str().unwrap();
        assert!(
            t.len() == 24 && t.ends_with('Z') && &t[10..11] == "T",
            "{t}"
        );
    }
}
