//! The `coproc` Python module: the cdylib `coproc-py` is built by cargo,
//! copied as `coproc.so` onto `PYTHONPATH` (no maturin needed), and the
//! pytest suite (`crates/coproc-py/tests/test_coproc.py`) and the numpy
//! example run with the system Python against a private `coprocd` (with
//! a `vulkan` pcoproc for the GPU parts where a Vulkan device is). Needs
//! `/usr/bin/python3` with pytest and numpy (Debian's `python3-pytest`,
//! `python3-numpy`): without them the tests fail, unless
//! `COPROC_SKIP_PYTHON_TESTS=1` says to skip them.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use common::{coproc_bin, Daemon, MCU_RR};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The system Python (not whatever `python3` a user's PATH finds first).
const PYTHON: &str = "/usr/bin/python3";

fn crate_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../coproc-py")
}

/// Whether Python, pytest and numpy are there (fails loudly if not,
/// unless told to skip).
fn need_python() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import pytest, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return true;
    }
    if std::env::var("COPROC_SKIP_PYTHON_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("skipped (COPROC_SKIP_PYTHON_TESTS=1): needs {PYTHON} with pytest and numpy");
        return false;
    }
    panic!("the Python tests need {PYTHON} with pytest and numpy (scripts/setup.sh installs python3-pytest and python3-numpy), or COPROC_SKIP_PYTHON_TESTS=1 to skip them");
}

/// The module built (once per test binary, in this test's profile) and
/// copied as `coproc.so` into `dir`; returns `dir`.
fn module(dir: &Path) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let lib = BUILT.get_or_init(|| {
        let target = coproc_bin().parent().unwrap().to_path_buf();
        let mut c = Command::new(env!("CARGO"));
        c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
        c.args(["build", "-q", "-p", "coproc-py"]);
        if target.to_string_lossy().contains("/release") {
            c.arg("--release");
        }
        assert!(c.status().unwrap().success(), "building coproc-py");
        target.join("libcoproc_py.so")
    });
    let py = dir.join("python");
    std::fs::create_dir_all(&py).unwrap();
    common::copy_executable(lib, &py.join("coproc.so"));
    py
}

/// The example firmware as files in `dir`: NAME.elf (mcu), NAME.gpu
/// (vulkan: WGSL or SPIR-V).
fn firmware_dir(dir: &Path) -> PathBuf {
    let fw = dir.join("firmware");
    std::fs::create_dir_all(&fw).unwrap();
    for f in coproc_firmware::ALL {
        std::fs::write(fw.join(format!("{}.elf", f.name)), f.elf).unwrap();
    }
    for f in coproc_firmware::gpu::ALL {
        std::fs::write(fw.join(format!("{}.gpu", f.name)), f.image).unwrap();
    }
    fw
}

/// An mcu pcoproc `mcu0`, and a `vulkan` one `gpu0`.
const WITH_GPU: &str = r#"
[[pcoproc]]
name = "mcu0"
class = "mcu"

[[pcoproc]]
name = "gpu0"
class = "vulkan"
options = { device = "auto", watchdog_ms = 10000 }

[[domain]]
uids = "*"
pcoprocs = ["mcu0", "gpu0"]
max_vcoprocs = 8
max_mapped_bytes = 67108864
"#;

/// The daemon's configuration: with a `vulkan` pcoproc where a Vulkan
/// device is (lavapipe counts); without one, the GPU parts fail loudly
/// unless `COPROC_SKIP_VULKAN_TESTS=1` (then they are skipped).
fn config() -> (&'static str, bool) {
    match coproc_vulkan::probe() {
        Ok(_) => (WITH_GPU, true),
        Err(e) if std::env::var("COPROC_SKIP_VULKAN_TESTS").is_ok_and(|v| v == "1") => {
            eprintln!("GPU parts skipped (COPROC_SKIP_VULKAN_TESTS=1): no Vulkan device ({e})");
            (MCU_RR, false)
        }
        Err(e) => panic!("no Vulkan device ({e}); COPROC_SKIP_VULKAN_TESTS=1 skips the GPU parts"),
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_pytest_suite_passes() {
    if !need_python() {
        return;
    }
    let (config, gpu) = config();
    let d = Daemon::start("python-tests", config);
    let py = module(&d.dir);
    let fw = firmware_dir(&d.dir);
    let out = run(Command::new(PYTHON)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(crate_dir().join("tests"))
        .env("PYTHONPATH", &py)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("COPROC_TEST_SOCKET", &d.socket)
        .env("COPROC_TEST_FIRMWARE", &fw)
        .env("COPROC_TEST_GPU", if gpu { "1" } else { "0" }));
    eprintln!("{out}");
    // Every test of the suite ran (the GPU one skipped only when told).
    let want = if gpu {
        "8 passed"
    } else {
        "7 passed, 1 skipped"
    };
    assert!(out.contains(want) && !out.contains("failed"), "{out}");
}

#[test]
fn the_numpy_example_offloads_to_the_mcu_and_gpu_classes() {
    if !need_python() {
        return;
    }
    let (config, gpu) = config();
    let d = Daemon::start("python-example", config);
    let py = module(&d.dir);
    let fw = firmware_dir(&d.dir);
    let out = run(Command::new(PYTHON)
        .arg(crate_dir().join("examples/offload_numpy.py"))
        .arg(&fw)
        .env("PYTHONPATH", &py)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("COPROC_SOCKET", &d.socket));
    assert!(out.contains("mcu: crc32 of 200000 bytes"), "{out}");
    assert_eq!(out.contains("gpu: saxpy of 50000 floats"), gpu, "{out}");
}
