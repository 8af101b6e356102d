"""The coproc Python module against a running coprocd.

Run by crates/coproc-cli/tests/python.rs, which starts a private daemon
(one mcu pcoproc `mcu0`) and sets COPROC_TEST_SOCKET and
COPROC_TEST_FIRMWARE (a directory holding the example firmware as
NAME.elf). Results are checked against the host's own computations
(zlib.crc32, numpy)."""

import os
import zlib

import numpy as np
import pytest

import coproc

SOCK = os.environ["COPROC_TEST_SOCKET"]
FW = os.environ["COPROC_TEST_FIRMWARE"]


def firmware(name):
    with open(os.path.join(FW, name + ".elf"), "rb") as f:
        return f.read()


def test_a_job_is_offloaded_in_four_calls():
    data = bytes(range(256)) * 40
    v = coproc.open("mcu0", socket=SOCK)  # 1
    v.load("crc32", firmware("crc32"))  # 2
    buf = v.buffer_from(data)  # 3
    words = v.call([buf.iova, len(data), 5])  # 4
    assert words[1] == zlib.crc32(data)
    assert words[2] == 5
    assert len(words) == 16
    v.close()
    with pytest.raises(coproc.CoprocError, match="closed"):
        v.call([])


def test_buffers_are_python_buffers_over_the_shared_pages():
    with coproc.open("mcu0", socket=SOCK) as v:
        v.load("crc32", firmware("crc32"))
        buf = v.buffer(5000)
        assert len(buf) == 8192  # whole pages
        m = memoryview(buf)
        assert (m.nbytes, m.readonly, m.format) == (8192, False, "B")
        # numpy sees the same memory: written through it, read by the device.
        arr = np.frombuffer(buf, dtype=np.uint8)
        rng = np.random.default_rng(7)
        arr[:5000] = rng.integers(0, 256, 5000, dtype=np.uint8)
        assert buf.read(0, 5000) == arr[:5000].tobytes()
        words = v.call([buf.iova, 5000, 1])
        assert words[1] == zlib.crc32(arr[:5000].tobytes())
        # And the other way: written by copy, seen through the views.
        buf.write(b"abc", offset=10)
        assert bytes(m[10:13]) == b"abc"
        assert arr[11] == ord("b")
        # Typed views of any dtype.
        f = np.frombuffer(buf, dtype=np.float32)
        f[:1000] = np.arange(1000, dtype=np.float32) * 0.25
        g = np.frombuffer(buf.read(0, 4000), dtype=np.float32)
        np.testing.assert_array_equal(g, np.arange(1000, dtype=np.float32) * 0.25)
        del m, arr, f


def test_numpy_arrays_are_offloaded_by_copy():
    a = (np.arange(30000, dtype=np.int32) * 7919) % 65521
    with coproc.open("mcu0", socket=SOCK) as v:
        v.load("crc32", firmware("crc32"))
        buf = v.buffer_from(a)
        words = v.call([buf.iova, a.nbytes, 2])
        assert words[1] == zlib.crc32(a.tobytes())


def test_a_fault_raises_with_its_record_and_reset_brings_it_back():
    with coproc.open("mcu0", socket=SOCK) as v:
        v.load("faulty", firmware("faulty"))
        for _ in range(2):
            with pytest.raises(coproc.FaultError) as e:
                v.call([])
            fault = e.value.fault
            assert fault["access"] == "read"
            assert fault["vcoproc"] == v.id
            assert v.state() == "faulted"
            assert v.info()["last_fault"]["addr"] == fault["addr"]
            # Still faulted: the next call fails at once.
            with pytest.raises(coproc.FaultError):
                v.call([])
            v.reset()
            assert v.state() != "faulted"
        assert v.info()["faults"] == 2


def test_queue_round_trips():
    with coproc.open("mcu0", socket=SOCK) as v:
        v.load("qecho", firmware("qecho"))
        q = v.queue(16)
        assert q.entries == 16
        v.announce_queue(q)
        for tag in range(40):
            args = [tag * 100 + i for i in range(14)]
            t, status, result = q.round_trip(tag % 3, tag, args)
            assert (t, status) == (tag, tag % 3)
            assert result == [x + tag % 3 for x in args]
        # A batch: eight submissions, one doorbell.
        for tag in range(100, 108):
            assert q.submit(1, tag, [tag])
        q.ring()
        seen = []
        while len(seen) < 8:
            c = q.complete()
            if c is None:
                assert q.wait(30.0), "no completion"
                continue
            seen.append((c[0], c[2][0]))
        assert seen == [(t, t + 1) for t in range(100, 108)]


def test_listings():
    s = coproc.Session(SOCK)
    assert s.identity()["uid"] == os.getuid()
    v = s.open("mcu0")
    assert v.id in [x["id"] for x in s.list_vcoprocs()]
    coprocs = coproc.list_coprocs(SOCK)
    assert ("mcu0", "mcu") in [(c["name"], c["class"]) for c in coprocs]
    assert v.device_class == "mcu" and v.coproc == "mcu0"
    assert os.getuid() in [d["uid"] for d in s.list_domains()]
    assert isinstance(s.list_faults(), list)
    vid = v.id
    v.close()
    assert vid not in [x["id"] for x in s.list_vcoprocs()]


def test_errors_and_timeouts():
    with pytest.raises(coproc.CoprocError, match="not-found|no pcoproc"):
        coproc.open("nonesuch", socket=SOCK)
    with pytest.raises(coproc.CoprocError, match="connect"):
        coproc.open("mcu0", socket="/nonexistent/coprocd.sock")
    with coproc.open("mcu0", socket=SOCK) as v:
        with pytest.raises(coproc.CoprocError):
            v.load("junk", b"not an ELF image")
        # hog computes forever and never answers.
        v.load("hog", firmware("hog"))
        with pytest.raises(coproc.TimeoutError):
            v.call([], timeout=0.2)
        with pytest.raises(ValueError):
            v.queue(16).submit(0, 0, list(range(15)))


@pytest.mark.skipif(
    os.environ.get("COPROC_TEST_GPU") != "1",
    reason="no Vulkan device (COPROC_SKIP_VULKAN_TESTS=1)",
)
def test_a_numpy_array_on_the_gpu_class():
    n = 5000
    x = np.arange(n, dtype=np.float32) * 0.5
    y = (np.arange(n) % 7).astype(np.float32) - 3.0
    with coproc.open("gpu0", socket=SOCK) as v:
        assert v.device_class == "vulkan"
        v.load("saxpy", firmware_gpu("saxpy"))
        q = v.gpu_queue(64)
        bx, by = v.buffer_from(x), v.buffer_from(y)
        q.run_job(
            [
                ("bind", 0, bx.iova, len(bx)),
                ("bind", 1, by.iova, len(by)),
                ("push_f32", 0, [2.5]),
                ("push_u32", 4, [n]),
                ("dispatch", 0, ((n + 63) // 64, 1, 1)),
                ("barrier",),
            ]
        )
        # Exact: halves and small integers, whether the device fuses or not.
        out = np.frombuffer(by, dtype=np.float32)[:n]
        np.testing.assert_array_equal(out, np.float32(2.5) * x + y)
        with pytest.raises(coproc.CoprocError, match="pipeline"):
            q.run_job([("dispatch", 7, (1, 1, 1))])
        with pytest.raises(ValueError):
            q.run_job([("warp", 1)])


def firmware_gpu(name):
    with open(os.path.join(FW, name + ".gpu"), "rb") as f:
        return f.read()
