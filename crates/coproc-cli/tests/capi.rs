//! libcoproc from C: the library is built (cdylib and staticlib), staged
//! with its header and pkg-config file in a prefix, and the C tests
//! (`crates/coproc-c/tests/c/test_coproc.c`: the four-call offload, a
//! queue round trip, a fault seen from C, errors) and the C example are
//! compiled with `cc` against it, linked both ways, and run against a
//! private `coprocd`. Needs `cc` and `pkg-config`: without them the tests
//! fail, unless `COPROC_SKIP_C_TESTS=1` says to skip them.

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

fn crate_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../coproc-c")
}

/// Whether the tools are there (fails loudly if not, unless told to skip).
fn need_tools() -> bool {
    let have = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have("cc") && have("pkg-config") {
        return true;
    }
    if std::env::var("COPROC_SKIP_C_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("skipped (COPROC_SKIP_C_TESTS=1): needs cc and pkg-config");
        return false;
    }
    panic!("the C tests need cc and pkg-config (scripts/setup.sh installs them), or COPROC_SKIP_C_TESTS=1 to skip them");
}

/// libcoproc built (once per test binary) in the profile of this test:
/// the directory holding `libcoproc.so` and `libcoproc.a`.
fn built() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = coproc_bin().parent().unwrap().to_path_buf();
            let mut c = Command::new(env!("CARGO"));
            c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
            c.args(["build", "-q", "-p", "coproc-c"]);
            if dir.to_string_lossy().contains("/release") {
                c.arg("--release");
            }
            assert!(c.status().unwrap().success(), "building coproc-c");
            dir
        })
        .clone()
}

/// A prefix under `dir`, installed by the crate's `install.sh` (header,
/// both libraries, the pkg-config file).
fn stage(dir: &Path) -> PathBuf {
    let prefix = dir.join("prefix");
    let out = Command::new("sh")
        .arg(crate_dir().join("install.sh"))
        .arg(&prefix)
        .arg(built())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    prefix
}

fn pkg_config(prefix: &Path, args: &[&str]) -> Vec<String> {
    let out = Command::new("pkg-config")
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .args(args)
        .arg("coproc")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pkg-config {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Compile `source` to `out` against the staged library: dynamically
/// (pkg-config's flags, an rpath to the prefix) or statically
/// (`libcoproc.a` and pkg-config's private libraries).
fn compile(prefix: &Path, source: &Path, out: &Path, statically: bool) {
    let mut cc = Command::new("cc");
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1"])
        .arg(source)
        .arg("-o")
        .arg(out)
        .args(pkg_config(prefix, &["--cflags"]));
    if statically {
        cc.arg(prefix.join("lib/libcoproc.a"));
        cc.args(
            pkg_config(prefix, &["--libs", "--static"])
                .into_iter()
                .filter(|f| f.starts_with("-l") && f != "-lcoproc"),
        );
    } else {
        cc.args(pkg_config(prefix, &["--libs"]));
        cc.arg(format!("-Wl,-rpath,{}", prefix.join("lib").display()));
    }
    let o = cc.output().unwrap();
    assert!(
        o.status.success(),
        "cc {}: {}",
        source.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The example firmware the C programs load, as files in `dir`.
fn firmware_dir(dir: &Path) -> PathBuf {
    let fw = dir.join("firmware");
    std::fs::create_dir_all(&fw).unwrap();
    for f in coproc_firmware::ALL {
        std::fs::write(fw.join(format!("{}.elf", f.name)), f.elf).unwrap();
    }
    fw
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
fn the_c_tests_pass_linked_dynamically_and_statically() {
    if !need_tools() {
        return;
    }
    let d = Daemon::start("capi-tests", MCU_RR);
    let prefix = stage(&d.dir);
    let fw = firmware_dir(&d.dir);
    assert_eq!(
        pkg_config(&prefix, &["--modversion"]),
        [env!("CARGO_PKG_VERSION")]
    );
    for statically in [false, true] {
        let exe = d.dir.join(format!("test_coproc_{statically}"));
        compile(
            &prefix,
            &crate_dir().join("tests/c/test_coproc.c"),
            &exe,
            statically,
        );
        let out = run(Command::new(&exe).arg(&d.socket).arg(&fw));
        assert!(out.contains("c tests: all passed"), "{out}");
    }
}

#[test]
fn the_c_example_offloads_a_crc32() {
    if !need_tools() {
        return;
    }
    let d = Daemon::start("capi-example", MCU_RR);
    let prefix = stage(&d.dir);
    let fw = firmware_dir(&d.dir);
    let exe = d.dir.join("offload");
    compile(
        &prefix,
        &crate_dir().join("examples/offload.c"),
        &exe,
        false,
    );
    let input = d.dir.join("input");
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    std::fs::write(&input, &data).unwrap();
    let out = run(Command::new(&exe)
        .env("COPROC_SOCKET", &d.socket)
        .arg(fw.join("crc32.elf"))
        .arg(&input));
    let host = crc32fast::hash(&data);
    assert!(out.contains(&format!("device {host:#010x}")), "{out}");
}
