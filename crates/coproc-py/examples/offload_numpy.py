"""Offload a numpy array: its CRC-32 on the mcu class (the crc32 example
firmware), checked with zlib on the host; and, where the daemon has a
`vulkan` pcoproc, saxpy (y = a x + y) on the GPU class (the saxpy example
firmware), checked with numpy.

    COPROC_SOCKET=... python3 offload_numpy.py FIRMWARE_DIR

FIRMWARE_DIR holds crc32.elf and saxpy.gpu (the example firmware of the
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
    if words[1] != host:
        return 1

    gpus = [c["name"] for c in coproc.list_coprocs() if c["class"] == "vulkan"]
    if not gpus:
        print("gpu: no vulkan pcoproc, skipped")
        return 0
    with open(os.path.join(fw_dir, "saxpy.gpu"), "rb") as f:
        shader = f.read()
    x = samples
    y = np.cos(np.linspace(0, 20 * np.pi, x.size)).astype(np.float32)
    with coproc.open(gpus[0]) as g:
        g.load("saxpy", shader)
        q = g.gpu_queue(64)
        bx, by = g.buffer_from(x), g.buffer_from(y)
        gpu_ns = q.run_job(
            [
                ("bind", 0, bx.iova, len(bx)),
                ("bind", 1, by.iova, len(by)),
                ("push_f32", 0, [2.0]),
                ("push_u32", 4, [x.size]),
                ("dispatch", 0, ((x.size + 63) // 64, 1, 1)),
                ("barrier",),
            ]
        )
        out = np.frombuffer(by, dtype=np.float32)[: x.size]
        ok = np.allclose(out, np.float32(2.0) * x + y, rtol=1e-6, atol=1e-6)
        print(f"gpu: saxpy of {x.size} floats on {gpus[0]} in {gpu_ns} ns: {'matches' if ok else 'DIFFERS from'} numpy")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
