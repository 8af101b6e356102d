//! Builds the example firmware from C with clang + lld for
//! thumbv7em-none-eabi (Cortex-M4). Fails with a message naming the missing
//! Debian package when the toolchain is absent.

use std::path::{Path, PathBuf};
use std::process::Command;

const FIRMWARE: &[&str] = &[
    "echo", "fir", "crc32", "hog", "faulty", "probe", "qecho", "pager", "listwalk", "localbuf",
    "scribble",
];

fn tool(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find(|n| {
            Command::new(n)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|n| n.to_string())
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../firmware");
    let sdk = root.join("sdk");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed={}", root.display());
    println!("cargo:rerun-if-env-changed=COPROC_CLANG");

    let clang = std::env::var("COPROC_CLANG")
        .ok()
        .or_else(|| tool(&["clang", "clang-14", "clang-15", "clang-16"]));
    let Some(clang) = clang else {
        panic!(
            "coproc firmware needs clang to build Cortex-M firmware: install the Debian package \
             `clang` (and `lld`), e.g. `apt-get install clang lld`, or set COPROC_CLANG"
        );
    };
    if tool(&["ld.lld", "ld.lld-14", "ld.lld-15", "ld.lld-16"]).is_none() {
        panic!(
            "coproc firmware needs the lld linker: install the Debian package `lld` \
             (`apt-get install lld`)"
        );
    }

    for name in FIRMWARE {
        let src = root.join("examples").join(format!("{name}.c"));
        let elf = out.join(format!("{name}.elf"));
        let status = Command::new(&clang)
            .args([
                "--target=thumbv7em-none-eabi",
                "-mcpu=cortex-m4",
                "-mthumb",
                "-mfloat-abi=soft",
                "-O2",
                "-g0",
                "-std=c11",
                "-ffreestanding",
                "-nostdlib",
                "-fno-unwind-tables",
                "-fno-asynchronous-unwind-tables",
                "-ffunction-sections",
                "-fdata-sections",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-fuse-ld=lld",
                "-Wl,--gc-sections",
                "-Wl,-z,max-page-size=4096",
                "-Wl,--build-id=none",
            ])
            .arg(format!("-I{}", sdk.display()))
            .arg(format!("-Wl,-T,{}", sdk.join("link.ld").display()))
            .arg("-o")
            .arg(&elf)
            .arg(sdk.join("crt0.c"))
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {clang}: {e}"));
        if !status.success() {
            panic!(
                "building firmware {name} from {} failed ({status})",
                src.display()
            );
        }
    }
}
