//! Builds the example firmware from C with clang + lld for
//! thumbv7em-none-eabi (Cortex-M4), and compiles the GLSL GPU firmware
//! (`firmware/gpu/*.comp`) to SPIR-V with glslangValidator. Fails with a
//! message naming the missing Debian package when a tool is absent. (The
//! WGSL GPU firmware is included as text; it needs no build step.)

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
        if !output.status.success() {
            panic!(
                "compiling GPU firmware {name} from {} failed ({}):\n{}{}",
                src.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}
