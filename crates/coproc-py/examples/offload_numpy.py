"""Offload a numpy array: its CRC-32 on the mcu class (the crc32 example
firmware), checked with zlib on the host.

    COPROC_SOCKET=... python3 offload_numpy.py FIRMWARE_DIR

FIRMWARE_DIR holds crc32.elf (the example firmware, built by the
coproc-firmware crate). The four calls: open, load, buffer_from, call."""

import os
import sys
import zlib

import numpy as np

import coproc


def main():
    fw_dir = sys.argv[1]
    with open(os.path.join(fw_dir, "crc32.elf"), "rb") as f:
        elf = f.read()
    samples = np.sin(np.linspace(0, 20 * np.pi, 50_000)).astype(np.float32)

    v = coproc.open("mcu0")  # 1
    v.load("crc32", elf)  # 2
    buf = v.buffer_from(samples)  # 3
    words = v.call([buf.iova, samples.nbytes, 1])  # 4

    host = zlib.crc32(samples.tobytes())
    print(f"mcu: crc32 of {samples.nbytes} bytes of float32: device {words[1]:#010x}, host {host:#010x}")
    # The buffer is a Python buffer over the shared pages: numpy views it in place.
    view = np.frombuffer(buf, dtype=np.float32)[: samples.size]
    assert np.array_equal(view, samples)
    v.close()
    return 0 if words[1] == host else 1


if __name__ == "__main__":
    sys.exit(main())
