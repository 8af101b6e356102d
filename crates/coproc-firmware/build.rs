//! Builds the example firmware from C with `scripts/coproc-fw` (clang + lld
//! for the Cortex-M4F, picolibc and libgcc from Debian's arm-none-eabi
//! packages), and compiles the GLSL GPU firmware (`firmware/gpu/*.comp`) to
//! SPIR-V with glslangValidator. Fails with a message naming the missing
//! Debian package when a tool is absent. (The WGSL GPU firmware is included
//! as text; it needs no build step.)

use std::path::{Path, PathBuf};
use std::process::Command;

/// Firmware built freestanding and soft-float (`--nolibc --soft-float`):
/// the examples that need no C library, and the soft-float ABI's test.
const NOLIBC: &[&str] = &[
    "echo", "fir", "crc32", "hog", "faulty", "probe", "qecho", "pager", "listwalk", "localbuf",
    "scribble", "badexc",
];

/// Firmware built with the default toolchain (hard-float FPv4-SP, picolibc
/// libc and libm): (image name, source, extra `coproc-fw` options).
const LIBC: &[(&str, &str, &[&str])] = &[
    ("hello", "hello", &[]),
    ("fft", "fft", &[]),
    ("biquad", "biquad", &[]),
    ("biquad_soft", "biquad", &["--soft-float"]),
    ("irq", "irq", &[]),
    ("bigcode", "bigcode", &[]),
    // `echo` linked for a small pcoproc (code_kib = 64, data_kib = 32).
    (
        "echo_small",
        "echo",
        &[
            "--nolibc",
            "--code-size",
            "65536",
            "--data-size",
            "32768",
            "--stack-size",
            "4096",
        ],
    ),
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
        .map(std::string::ToString::to_string)
}

fn main() {
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = top.join("firmware");
    let script = top.join("scripts/coproc-fw");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed={}", root.display());
    println!("cargo:rerun-if-changed={}", script.display());
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
    assert!(
        tool(&["ld.lld", "ld.lld-14", "ld.lld-15", "ld.lld-16"]).is_some(),
        "coproc firmware needs the lld linker: install the Debian package `lld` \
         (`apt-get install lld`)"
    );

    let builds = NOLIBC
        .iter()
        .map(|n| (*n, *n, &["--nolibc", "--soft-float"][..]))
        .chain(LIBC.iter().copied());
    for (name, src, opts) in builds {
        let src = root.join("examples").join(format!("{src}.c"));
        let elf = out.join(format!("{name}.elf"));
        let output = Command::new("bash")
            .arg(&script)
            .args(opts)
            .arg("-o")
            .arg(&elf)
            .arg(&src)
            .env("COPROC_CLANG", &clang)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            output.status.success(),
            "building firmware {name} from {} failed ({}):\n{}{}\n(the C library and \
             compiler builtins come from the Debian packages `picolibc-arm-none-eabi` and \
             `gcc-arm-none-eabi`: scripts/setup.sh installs them)",
            src.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    build_gpu(&root.join("gpu"), &out);
}

/// Compiles each GLSL compute shader `dir/<name>.comp` to SPIR-V for Vulkan
/// 1.1, as `out/<name>.spv`, and for Vulkan 1.3 (SPIR-V 1.6, where glslang
/// writes specialized workgroup sizes as `LocalSizeId`) as
/// `out/<name>.vk13.spv`.
fn build_gpu(dir: &Path, out: &Path) {
    let mut shaders: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("read_dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "comp"))
        .collect();
    shaders.sort();

    println!("cargo:rerun-if-env-changed=COPROC_GLSLANG");
    let glslang = std::env::var("COPROC_GLSLANG")
        .ok()
        .or_else(|| tool(&["glslangValidator"]));
    let Some(glslang) = glslang else {
        panic!(
            "coproc firmware needs glslangValidator to build the GPU firmware: install the \
             Debian package `glslang-tools` (`apt-get install glslang-tools`), or set \
             COPROC_GLSLANG"
        );
    };
    for (src, (env, suffix)) in shaders
        .iter()
        .flat_map(|s| [(s, ("vulkan1.1", "")), (s, ("vulkan1.3", ".vk13"))])
    {
        let name = src.file_stem().expect("file name").to_string_lossy();
        let spv = out.join(format!("{name}{suffix}.spv"));
        let output = Command::new(&glslang)
            .args(["-V", "--target-env", env, "-o"])
            .arg(&spv)
            .arg(src)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {glslang}: {e}"));
        assert!(
            output.status.success(),
            "compiling GPU firmware {name} from {} failed ({}):\n{}{}",
            src.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
