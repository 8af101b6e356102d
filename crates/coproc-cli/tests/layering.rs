//! What the client side links: the `coproc` tool, the client SDK and the
//! SDKs for C (`coproc-c`) and Python (`coproc-py`) link
//! no device code (Unicorn, Vulkan, naga, the device classes) and nothing
//! under the GPL, and the SDK links no runner or policy (`coproc-core`).
//! Read from `cargo tree` of the locked workspace.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::process::Command;

/// `(package name, licence)` of every crate `package` links (normal
/// dependencies, itself included).
fn links(package: &str) -> Vec<(String, String)> {
    let out = Command::new(env!("CARGO"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .args(["tree", "--locked", "-e", "normal", "--prefix", "none"])
        .args(["--format", "{p}|{l}", "-p", package])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let crates: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| {
            let (p, l) = l.split_once('|')?;
            Some((p.split(' ').next()?.to_string(), l.to_string()))
        })
        .collect();
    assert!(
        crates.iter().any(|(p, _)| p == package),
        "{package} missing from its own tree:\n{text}"
    );
    crates
}

const DEVICE_CODE: &[&str] = &[
    "coproc-mcu",
    "coproc-vulkan",
    "unicorn-engine",
    "unicorn-engine-sys",
    "ash",
    "naga",
];

fn check(package: &str, forbidden: &[&str]) {
    for (p, l) in links(package) {
        assert!(
            !forbidden.contains(&p.as_str()),
            "{package} links {p} ({l})"
        );
        assert!(!l.contains("GPL"), "{package} links {p}, licensed {l}");
    }
}

#[test]
fn the_coproc_tool_links_no_device_code() {
    check("coproc-cli", DEVICE_CODE);
}

#[test]
fn the_client_sdk_links_no_device_runner_or_policy_code() {
    let mut forbidden = DEVICE_CODE.to_vec();
    forbidden.push("coproc-core");
    check("coproc-client", &forbidden);
}

#[test]
fn the_c_library_links_no_device_runner_or_policy_code() {
    let mut forbidden = DEVICE_CODE.to_vec();
    forbidden.push("coproc-core");
    check("coproc-c", &forbidden);
}

#[test]
fn the_python_module_links_no_device_runner_or_policy_code() {
    let mut forbidden = DEVICE_CODE.to_vec();
    forbidden.push("coproc-core");
    check("coproc-py", &forbidden);
}

#[test]
fn the_benchmarks_do_link_the_device_classes() {
    // The check above would pass on a tree it cannot read: the binary that
    // does link them shows the names are the ones cargo prints.
    let names: Vec<String> = links("coproc-bench").into_iter().map(|(p, _)| p).collect();
    for want in ["coproc-mcu", "coproc-vulkan", "unicorn-engine", "ash"] {
        assert!(names.iter().any(|p| p == want), "coproc-bench lacks {want}");
    }
}
