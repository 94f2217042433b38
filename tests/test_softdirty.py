"""The `softdirty` backend: its probe's reasoning (runs everywhere) and its
engine (runs where the kernel has CONFIG_MEM_SOFT_DIRTY -- the Linux 6.1
kernel matrix; skipped elsewhere with the probe's reason).  Ground truth is
what each test wrote."""

import gc
import mmap
import os
import random
import threading

import numpy as np
import pytest

import writewatch
from writewatch import _core
from helpers import (PAGE, check_accounting, output, require_backend, run_python,
                     write_pages, written)


@pytest.fixture
def softdirty():
    return require_backend("softdirty")


def _kernel_has_soft_dirty():
    """Independent of the probe: the kernel config, where it is readable."""
    import gzip
    import platform
    for path in ("/proc/config.gz", "/boot/config-" + platform.release()):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                return "CONFIG_MEM_SOFT_DIRTY=y" in f.read()
        except OSError:
            continue
    return None


# -- the probe (runs everywhere) ------------------------------------------------------

def test_probe_verdicts():
    ok, reason = _core._softdirty_verdict(1, 0, 1)
    assert ok and "clear_refs" in reason
    # This machine's kernel: bit 55 never sets, clear_refs accepts "4".
    ok, reason = _core._softdirty_verdict(0, 0, 0)
    assert not ok and "CONFIG_MEM_SOFT_DIRTY" in reason
    ok, reason = _core._softdirty_verdict(1, 1, 1)
    assert not ok and "did not clear" in reason
    ok, reason = _core._softdirty_verdict(1, 0, 0)
    assert not ok and "did not set" in reason and "CONFIG" not in reason


def test_probe_agrees_with_the_kernel_config():
    info = {b.name: b for b in writewatch.backends()}["softdirty"]
    has = _kernel_has_soft_dirty()
    if has is None:
        pytest.skip("kernel config not readable (/proc/config.gz, /boot/config-*)")
    assert info.available == has, info
    if not has:
        assert "CONFIG_MEM_SOFT_DIRTY" in info.reason


def test_unavailable_softdirty_says_why():
    info = {b.name: b for b in writewatch.backends()}["softdirty"]
    if info.available:
        pytest.skip("soft-dirty works on this kernel")
    with pytest.raises(writewatch.BackendUnavailable, match="CONFIG_MEM_SOFT_DIRTY"):
        writewatch.Region(PAGE, backend="softdirty")


# -- the engine (kernels with soft-dirty) -------------------------------------------------

def test_write_reset_rewrite(softdirty):
    with writewatch.Region(32 * PAGE, backend=softdirty) as r:
        assert written(r) == []
        write_pages(r, [0, 5, 6, 31])
        assert written(r) == [0, 5, 6, 31]
        assert written(r, reset=True) == [0, 5, 6, 31]
        assert written(r) == []
        write_pages(r, [6])
        assert written(r) == [6]
        r.reset_write_watch(r.address + 6 * PAGE, PAGE)
        assert written(r) == []


def test_reset_of_one_region_keeps_the_others(softdirty):
    """clear_refs is process-wide: the fold must keep other regions' state."""
    a = writewatch.Region(16 * PAGE, backend=softdirty)
    b = writewatch.Region(16 * PAGE, backend=softdirty)
    try:
        write_pages(a, [1, 2])
        write_pages(b, [3])
        assert written(b, reset=True) == [3]
        assert written(a) == [1, 2]
        write_pages(a, [9])
        b.reset_write_watch()
        c = writewatch.Region(4 * PAGE, backend=softdirty)   # arming clears too
        assert written(a, reset=True) == [1, 2, 9]
        assert written(b) == [] and written(c) == []
        c.close()
        write_pages(b, [0])
        assert written(a) == [] and written(b) == [0]
    finally:
        a.close()
        b.close()


def test_max_count_keeps_later_pages(softdirty):
    with writewatch.Region(64 * PAGE, backend=softdirty) as r:
        write_pages(r, [4, 8, 15, 16, 50])
        assert written(r, max_count=2, reset=True) == [4, 8]
        assert written(r) == [15, 16, 50]
        assert written(r, max_count=2) == [15, 16]
        assert written(r, reset=True) == [15, 16, 50]
        assert written(r) == []


def test_kernel_writes(softdirty):
    with writewatch.Region(8 * PAGE, backend=softdirty) as r:
        rfd, wfd = os.pipe()
        try:
            os.write(wfd, b"q" * (PAGE + 5))
            with memoryview(r) as mv:
                assert os.readv(rfd, [mv[3 * PAGE: 4 * PAGE + 5]]) == PAGE + 5
        finally:
            os.close(rfd)
            os.close(wfd)
        assert written(r) == [3, 4]


def test_protect_and_discard(softdirty):
    with writewatch.Region(16 * PAGE, backend=softdirty) as r:
        write_pages(r, [1, 2, 3], value=5)
        r.get_write_watch(reset=True)
        write_pages(r, [2, 9])
        for prot in (mmap.PROT_READ, 0, mmap.PROT_READ | mmap.PROT_WRITE):
            r._protect(r.address, 16 * PAGE, prot)
        assert written(r) == [2, 9]
        write_pages(r, [1])                    # writable again, still tracked
        assert written(r) == [1, 2, 9]
        r._discard(r.address + 2 * PAGE, 8 * PAGE)      # pages 2..9
        assert written(r) == [1]
        with memoryview(r) as mv:
            assert bytes(mv[2 * PAGE: 10 * PAGE]) == bytes(8 * PAGE)
            assert mv[PAGE + 7] == 1                   # page 1 kept
        write_pages(r, [4])
        assert written(r, reset=True) == [1, 4]


def test_python_writer_threads_lose_nothing(softdirty):
    """Writes made by Python code hold the GIL, and the engine holds it
    across fold + clear_refs: none of them can be lost."""
    npages = 64
    with writewatch.Region(npages * PAGE, backend=softdirty) as r:
        view = np.frombuffer(r, dtype=np.uint64)
        started = [0]
        stop = threading.Event()
        logs = []

        def writer(k):
            rng = random.Random(k)
            log = []
            logs.append(log)
            while not stop.is_set():
                p = rng.randrange(k, npages, 4)
                r0 = started[0]
                view[p * PAGE // 8] = r0 + 1
                log.append((p, r0, started[0]))

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        results = []
        for j in range(200):
            started[0] = j
            results.append(set(written(r, reset=True)))
        stop.set()
        for t in threads:
            t.join()
        started[0] = 200
        results.append(set(written(r, reset=True)))
        del view
    check_accounting(npages, results, [w for log in logs for w in log])


FORK_SCRIPT = r"""
import os, numpy as np, writewatch
P = writewatch.PAGE_SIZE
r = writewatch.Region(16 * P, backend="softdirty")
v = np.frombuffer(r, dtype=np.uint8)
v[2 * P] = 1
pid = os.fork()
if pid == 0:
    v[:] = 3                                  # the copy is free to write
    with writewatch.Region(4 * P, backend="softdirty") as c:   # the child's own
        w = np.frombuffer(c, dtype=np.uint8)
        w[P] = 1
        assert [(int(a) - c.address) // P for a in c.get_write_watch(reset=True)] == [1]
        del w
    os._exit(0)
_, status = os.waitpid(pid, 0)
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
v[7 * P] = 1                                  # copy-on-write after the fork
assert [(int(a) - r.address) // P for a in r.get_write_watch(reset=True)] == [2, 7]
assert len(r.get_write_watch()) == 0
print("ok")
"""


def test_fork(softdirty):
    p = run_python(FORK_SCRIPT, timeout=60)
    assert p.stdout.strip().endswith("ok"), output(p)


def test_no_descriptor_leak(softdirty):
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    for i in range(300):
        with writewatch.Region(2 * PAGE, backend=softdirty) as r:
            write_pages(r, [i % 2])
            assert written(r, reset=True) == [i % 2]
    assert len(os.listdir("/proc/self/fd")) == fds
