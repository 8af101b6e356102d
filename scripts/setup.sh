#!/usr/bin/env bash
# Installs what building and testing coproc needs on a Debian machine, when
# it is missing: cmake, a C compiler, clang + lld (firmware, bindgen),
# libclang-dev (bindgen, for Unicorn's bindings), glslang-tools (GPU
# firmware from GLSL), the Vulkan loader and Mesa's drivers (lavapipe runs
# the `vulkan` device class on the CPU where there is no GPU), tmux (the
# test that runs `coproc top` in a real terminal), and cargo-fuzz
# (crates.io). Needs root or sudo for apt.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v ld.lld >/dev/null 2>&1 || need+=(lld)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
if ! ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/*/libclang*.so* >/dev/null 2>&1; then
    need+=(libclang-dev)
fi
command -v glslangValidator >/dev/null 2>&1 || need+=(glslang-tools)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
if ! ls /usr/lib/*/libvulkan.so.1 >/dev/null 2>&1; then
    need+=(libvulkan1)
fi
if ! ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1; then
    need+=(mesa-vulkan-drivers)
fi

if [ "${#need[@]}" -gt 0 ]; then
    echo "setup: installing ${need[*]}" >&2
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${need[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install a Rust toolchain (https://rustup.rs)" >&2
    exit 1
fi
if command -v rustup >/dev/null 2>&1; then
    cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
    cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
fi
# cargo-fuzz, for the fuzz targets' smoke run (scripts/fuzz.sh).
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "setup: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
