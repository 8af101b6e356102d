#!/usr/bin/env bash
# Installs what building and testing coproc needs on a Debian machine, when
# it is missing: cmake, a C compiler and pkg-config (libcoproc's C tests),
# Python 3 with its headers, pytest and numpy (the Python module's tests:
# the system /usr/bin/python3), clang + lld (firmware, bindgen),
# picolibc and gcc-arm-none-eabi (the firmware's C library, libm and
# compiler builtins, for scripts/coproc-fw),
# libclang-dev (bindgen, for Unicorn's bindings), glslang-tools (GPU
# firmware from GLSL), the Vulkan loader and Mesa's drivers (lavapipe runs
# the `vulkan` device class on the CPU where there is no GPU), systemd's
# tools (the unit's security score, socket activation in the tests), tmux
# (the test that runs `coproc top` in a real terminal), podman, crun and
# runc (container domains: tests/containers.rs runs clients in containers
# built from a local rootfs, nothing is pulled; runc where crun refuses a
# cgroup v1/v2 hybrid), and from crates.io
# cargo-fuzz and cargo-deb (the Debian package). Needs root or sudo for apt.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v ld.lld >/dev/null 2>&1 || need+=(lld)
[ -f /usr/lib/picolibc/arm-none-eabi/lib/thumb/v7e-m+fp/hard/libc.a ] || need+=(picolibc-arm-none-eabi)
if ! ls /usr/lib/gcc/arm-none-eabi/*/thumb/v7e-m+fp/hard/libgcc.a >/dev/null 2>&1; then
    need+=(gcc-arm-none-eabi)
fi
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
[ -x /usr/bin/python3 ] || need+=(python3)
ls /usr/include/python3*/Python.h >/dev/null 2>&1 || need+=(python3-dev)
/usr/bin/python3 -c 'import pytest' >/dev/null 2>&1 || need+=(python3-pytest)
/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1 || need+=(python3-numpy)
if ! ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/*/libclang*.so* >/dev/null 2>&1; then
    need+=(libclang-dev)
fi
command -v glslangValidator >/dev/null 2>&1 || need+=(glslang-tools)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v crun >/dev/null 2>&1 || need+=(crun)
command -v runc >/dev/null 2>&1 || need+=(runc)
if ! ls /usr/lib/*/libvulkan.so.1 >/dev/null 2>&1; then
    need+=(libvulkan1)
fi
if ! ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1; then
    need+=(mesa-vulkan-drivers)
fi

if ! command -v systemd-analyze >/dev/null 2>&1 \
    || ! command -v systemd-socket-activate >/dev/null 2>&1; then
    need+=(systemd)
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
# cargo-deb, for the Debian package (scripts/package.sh).
if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "setup: installing cargo-deb" >&2
    cargo install cargo-deb --locked
fi
