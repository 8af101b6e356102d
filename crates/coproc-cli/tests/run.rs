//! `coproc run` end to end: built-in example firmware by name, data in
//! with `--input`, results out with `--output`, checked against the host
//! references; firmware of another class refused up front; the stats read
//! after the notification include the run.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use common::Daemon;
use coproc_firmware::reference::{self, TestRng};
use serde_json::Value;

const CONFIG: &str = r#"
[[pcoproc]]
name = "mcu0"
class = "mcu"
policy = "rr"
policy_params = { slice_us = "1000" }

[[domain]]
uids = "*"
pcoprocs = ["mcu0"]
max_vcoprocs = 8
max_mapped_bytes = 4194304
max_mappings = 8
"#;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn run_json(d: &Daemon, args: &[&str]) -> Value {
    let mut all = vec!["-o", "json", "run"];
    all.extend_from_slice(args);
    let (ok, out, err) = d.cli(&all);
    assert!(ok, "coproc run {args:?}: {out} {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn builtin_firmware_with_input_and_output_files() {
    let d = Daemon::start("run", CONFIG);
    let dir = d.dir.clone();
    let mut rng = TestRng::new(21);
    let mut unit = || (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;

    // fft: 256 complex values in, their transform out.
    let n = 256usize;
    let x: Vec<(f32, f32)> = (0..n).map(|_| (unit(), unit())).collect();
    let flat: Vec<f32> = x.iter().flat_map(|&(a, b)| [a, b]).collect();
    let input = dir.join("signal.bin");
    let output = dir.join("spectrum.bin");
    std::fs::write(&input, f32_bytes(&flat)).unwrap();
    let r = run_json(
        &d,
        &[
            "fft",
            "--input",
            input.to_str().unwrap(),
            "--output",
            &format!("{}:{}", output.display(), 8 * n),
            "--mbox",
            &format!("0x60000000,{n},5"),
        ],
    );
    assert_eq!(r["outcome"], "notified", "{r}");
    assert_eq!(r["notify"]["tag"], 5);
    assert_eq!(r["mailbox"][0], 0, "status");
    assert!(
        r["run_ns"].as_u64().unwrap() > 0,
        "stats include the run: {r}"
    );
    let got = f32s(&std::fs::read(&output).unwrap());
    assert_eq!(got.len(), 2 * n);
    let want = reference::dft(&x);
    let norm: f64 = flat
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        .sqrt();
    let tol = 1e-5 * (n as f64).log2() * (n as f64).sqrt() * norm;
    for (k, w) in want.iter().enumerate() {
        let err = (f64::from(got[2 * k]) - w.0).hypot(f64::from(got[2 * k + 1]) - w.1);
        assert!(err <= tol, "bin {k}: error {err} > {tol}");
    }

    // biquad: input at 0, output at an offset of the shared memory.
    let samples = 1000usize;
    let xs: Vec<f32> = (0..samples).map(|_| unit()).collect();
    std::fs::write(&input, f32_bytes(&xs)).unwrap();
    let (f, q) = (0.1f32, 0.9f32);
    let r = run_json(
        &d,
        &[
            "biquad",
            "--input",
            &format!("{}@0", input.display()),
            "--output",
            &format!("{}@0x2000:{}", output.display(), 4 * samples),
            "--mbox",
            &format!(
                "0x60000000,0x60002000,{samples},{:#x},{:#x},9",
                f.to_bits(),
                q.to_bits()
            ),
        ],
    );
    assert_eq!(
        (r["outcome"].as_str(), r["mailbox"][0].as_u64()),
        (Some("notified"), Some(0))
    );
    let got = f32s(&std::fs::read(&output).unwrap());
    let want = reference::biquad_lowpass(&xs, f64::from(f), f64::from(q));
    assert_eq!(got.len(), samples);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((f64::from(*g) - w).abs() <= 1e-3, "sample {i}: {g} vs {w}");
    }

    // hello: mailbox words only, no shared memory.
    let r = run_json(&d, &["hello", "--mbox", "1000"]);
    let sum = r["mailbox"][1].as_u64().unwrap() | r["mailbox"][2].as_u64().unwrap() << 32;
    assert_eq!(sum, reference::hello_sum(1000));
    // What it printed comes back through the daemon, and the statistics
    // read right after its notification count the run that led to it.
    let console: Vec<&str> = r["console"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        console.contains(&reference::hello_line(1000).as_str()),
        "{console:?}"
    );
    assert!(r["run_ns"].as_u64().unwrap() > 0, "{r}");

    // irq: the interrupt-driven firmware answers through its handler.
    let r = run_json(&d, &["irq", "--mbox", "1,40,2,3"]);
    assert_eq!(r["mailbox"][1], 42);
    assert_eq!(r["mailbox"][5], 16, "answered in the doorbell handler");
}

#[test]
fn firmware_of_another_class_or_unknown_is_refused_up_front() {
    let d = Daemon::start("run-refuse", CONFIG);
    let (ok, _, err) = d.cli(&["run", "saxpy"]);
    assert!(!ok);
    assert!(
        err.contains("vulkan firmware") && err.contains("class mcu"),
        "{err}"
    );
    let (ok, _, err) = d.cli(&["run", "no-such-firmware"]);
    assert!(!ok);
    assert!(err.contains("built in: echo"), "{err}");
    // Data that does not fit the memory asked for.
    let input = d.dir.join("big.bin");
    std::fs::write(&input, vec![0u8; 8192]).unwrap();
    let (ok, _, err) = d.cli(&[
        "run",
        "echo",
        "--map-kib",
        "4",
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("need 8192 bytes"), "{err}");
    // Nothing was left behind by the refusals (once the daemon has read
    // the end of each exited CLI's connection).
    let mut c = d.client();
    common::wait_for("the refused runs' vcoprocs to go", || {
        c.list_vcoprocs(None, None).unwrap().is_empty()
    });
}
