#!/bin/sh
# Install libcoproc under PREFIX: include/coproc.h, lib/libcoproc.so,
# lib/libcoproc.a and lib/pkgconfig/coproc.pc (from coproc.pc.in).
#
#   cargo build --release -p coproc-c
#   crates/coproc-c/install.sh PREFIX [BUILD_DIR]
#
# BUILD_DIR holds the built libraries (default: the workspace's
# target/release). Then: cc app.c $(pkg-config --cflags --libs coproc), with
# PKG_CONFIG_PATH=PREFIX/lib/pkgconfig unless PREFIX is a standard one.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if [ $# -lt 1 ]; then
    echo "usage: $0 PREFIX [BUILD_DIR]" >&2
    exit 2
fi
prefix=$1
built=${2:-$here/../../target/release}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$here/../../Cargo.toml" | head -n 1)
mkdir -p "$prefix/include" "$prefix/lib/pkgconfig"
cp "$here/include/coproc.h" "$prefix/include/coproc.h"
cp "$built/libcoproc.so" "$built/libcoproc.a" "$prefix/lib/"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" \
    "$here/coproc.pc.in" > "$prefix/lib/pkgconfig/coproc.pc"
echo "libcoproc $version installed under $prefix"
