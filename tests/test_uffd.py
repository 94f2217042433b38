"""The `uffd` backend beyond the shared contract: its handler thread under
many writers, kernel writes, fork, close racing a blocked fault, leaks, the
MISSING-fault route of kernels without WP_UNPOPULATED and the user-mode-only
fallback.  Ground truth is what each test wrote (and when)."""

import ctypes
import gc
import os
import threading

import numpy as np
import pytest

import writewatch
from writewatch import _core
from helpers import (PAGE, check_accounting, output, page_indexes, require_backend,
                     run_python, write_pages, writer_threads_vs_resets, written)


@pytest.fixture
def uffd():
    return require_backend("uffd")


def run_ok(script, argv=(), env=None, timeout=60):
    """Run `script` in a fresh interpreter (fork, threads blocked in faults
    and changed credentials stay out of the test process); it ends with "ok"."""
    p = run_python(script, argv=argv, env=env, timeout=timeout)
    assert p.stdout.strip().endswith("ok"), output(p)


# -- the probe --------------------------------------------------------------------

def test_probe_is_a_real_round_trip(uffd):
    info = {b.name: b for b in writewatch.backends()}["uffd"]
    assert info.available
    assert "handler thread" in info.reason
    state = _core._uffd_state()
    assert state["started"] and state["thread"]
    assert state["mode"] in ("markers", "missing")
    assert state["wp_faults"] + state["missing_faults"] >= 2   # the probe's writes


# -- many writers against a get-and-reset loop -----------------------------------

def test_many_writer_threads_lose_nothing(uffd):
    npages = 96
    with writewatch.Region(npages * PAGE, backend=uffd) as r:
        results, writes = writer_threads_vs_resets(r, npages, rounds=400)
    assert len(writes) > 400
    check_accounting(npages, results, writes)


# -- kernel writes -------------------------------------------------------------------

def test_read_and_readv_into_the_region(uffd):
    with writewatch.Region(16 * PAGE, backend=uffd) as r:
        rfd, wfd = os.pipe()
        mv = memoryview(r)
        try:
            # never-touched pages 1..2 (kernel-mode fault on empty pages)
            os.write(wfd, b"a" * (PAGE + 1))
            assert os.readv(rfd, [mv[PAGE: 2 * PAGE + 1]]) == PAGE + 1
            assert written(r, reset=True) == [1, 2]
            # the same pages again, now present and re-armed, and a
            # scattered readv over three separate pages
            os.write(wfd, b"b" * (PAGE + 30))
            assert os.readv(rfd, [mv[PAGE: 2 * PAGE], mv[5 * PAGE: 5 * PAGE + 10],
                                  mv[9 * PAGE + 5: 9 * PAGE + 25]]) == PAGE + 30
            assert written(r) == [1, 5, 9]
            # a plain read(2) through a ctypes pointer (no buffer export)
            os.write(wfd, b"c" * 100)
            libc = ctypes.CDLL(None, use_errno=True)
            assert libc.read(rfd, ctypes.c_void_p(r.address + 12 * PAGE - 50), 100) == 100
            assert written(r, reset=True) == [1, 5, 9, 11, 12]
            assert bytes(mv[12 * PAGE - 50: 12 * PAGE + 50]) == b"c" * 100
            assert bytes(mv[PAGE: PAGE + 3]) == b"bbb"
        finally:
            mv.release()
            os.close(rfd)
            os.close(wfd)


def test_out_buffer_inside_tracked_memory(uffd):
    """get_write_watch may write its result into armed memory -- even the
    region being scanned -- without deadlocking on its own handler."""
    with writewatch.Region(64 * PAGE, backend=uffd) as r:
        out = np.frombuffer(r, dtype=np.uint64)[(48 * PAGE) // 8: (48 * PAGE) // 8 + 32]
        write_pages(r, [3, 7])
        res = r.get_write_watch(reset=True, out=out)
        assert page_indexes(r, res) == [3, 7]
        del res, out
        assert written(r) == [48]          # the result landed in page 48


# -- protect and discard ----------------------------------------------------------------

def test_protection_changes_keep_written_state(uffd):
    import mmap
    with writewatch.Region(8 * PAGE, backend=uffd) as r:
        write_pages(r, [1, 2])
        r.get_write_watch(reset=True)
        write_pages(r, [2, 5])
        for prot in (mmap.PROT_READ, 0, mmap.PROT_READ | mmap.PROT_WRITE):
            r._protect(r.address, 8 * PAGE, prot)
        assert written(r) == [2, 5]
        write_pages(r, [1, 6])            # re-armed pages still fault after RW
        assert written(r, reset=True) == [1, 2, 5, 6]
        r._protect(r.address + PAGE, 2 * PAGE, mmap.PROT_READ)
        with memoryview(r) as mv:
            assert mv[PAGE + 7] == 1                           # readable
        r._protect(r.address + PAGE, 2 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
        assert written(r) == []
        write_pages(r, [2])
        assert written(r) == [2]


def test_discard_drops_contents_and_rearms(uffd):
    with writewatch.Region(16 * PAGE, backend=uffd) as r:
        write_pages(r, range(16), value=7)
        r.get_write_watch(reset=True)
        write_pages(r, [2, 3, 12], value=9)
        r._discard(r.address + 2 * PAGE, 4 * PAGE)        # pages 2..5
        assert written(r) == [12]
        mv = memoryview(r)
        assert bytes(mv[2 * PAGE: 6 * PAGE]) == bytes(4 * PAGE)   # zero again
        assert mv[PAGE + 7] == 7                           # neighbours kept
        mv.release()
        assert written(r) == [12]                          # reading is not writing
        write_pages(r, [4])
        assert written(r, reset=True) == [4, 12]
        write_pages(r, [5])
        assert written(r) == [5]


# -- fork ---------------------------------------------------------------------------------

FORK_SCRIPT = r"""
import os, threading, ctypes, numpy as np, writewatch
P = writewatch.PAGE_SIZE
from writewatch import _core
r = writewatch.Region(64 * P, backend="uffd")
v = np.frombuffer(r, dtype=np.uint8)
v[3 * P] = 1
stop = threading.Event()
def busy():                       # faults in flight while we fork
    i = 0
    while not stop.is_set():
        ctypes.memset(r.address + (10 + i % 40) * P, 1, 1)
        r.reset_write_watch(r.address + 10 * P, 40 * P)
        i += 1
t = threading.Thread(target=busy); t.start()
for n in range(5):
    pid = os.fork()
    if pid == 0:
        try:
            v[:] = 5                                   # every page of the copy
            assert _core._uffd_state()["regions"] == 0
            with writewatch.Region(8 * P, backend="uffd") as c:   # new thread here
                w = np.frombuffer(c, dtype=np.uint8)
                w[2 * P] = 1
                assert [(int(a) - c.address) // P for a in c.get_write_watch()] == [2]
                del w
            del v
            r.close()
            os._exit(0)
        except BaseException as e:
            print("child:", repr(e), flush=True)
            os._exit(1)
    for _ in range(200):                               # 20 s: a hang fails
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        import time; time.sleep(0.1)
    else:
        os.kill(pid, 9); raise SystemExit("child hung")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
stop.set(); t.join()
r.reset_write_watch(r.address + 10 * P, 40 * P)
assert int(v[20 * P]) in (0, 1) and int(v[60 * P]) == 0     # child writes stayed there
assert [(int(a) - r.address) // P for a in r.get_write_watch(reset=True)] == [3]
v[60 * P] = 1
assert [(int(a) - r.address) // P for a in r.get_write_watch()] == [60]
print("ok")
"""


def test_fork_child_writes_freely_and_tracks_its_own(uffd):
    run_ok(FORK_SCRIPT)


# -- close --------------------------------------------------------------------------------

CLOSE_BLOCKED_SCRIPT = r"""
import ctypes, os, threading, time, writewatch
from writewatch import _core
P = writewatch.PAGE_SIZE
libc = ctypes.CDLL(None, use_errno=True)
r = writewatch.Region(4 * P, backend="uffd")
other = writewatch.Region(4 * P, backend="uffd")
rfd, wfd = os.pipe()
os.write(wfd, b"x" * 64)
result = []
def reader():                     # read(2) into an armed page: a kernel fault
    n = libc.read(rfd, ctypes.c_void_p(r.address + P), 64)
    result.append((n, ctypes.get_errno()))
_core._uffd_hold(True)            # the handler keeps the fault event back
t = threading.Thread(target=reader); t.start()
deadline = time.time() + 10
while _core._uffd_state()["wp_faults"] == 0 and time.time() < deadline and t.is_alive():
    time.sleep(0.01)
time.sleep(0.2)
assert t.is_alive(), result       # blocked in the fault
r.close()                         # unregisters: wakes the reader; must not hang
t.join(10)
assert not t.is_alive(), "reader still blocked after close"
n, err = result[0]
assert n == 64 or (n == -1 and err == 14), result   # done, or EFAULT once unmapped
_core._uffd_hold(False)           # the held event now finds no region: a stray wake
ctypes.memset(other.address, 1, 1)
assert [int(a) - other.address for a in other.get_write_watch()] == [0]
other.close()
print("ok")
"""


def test_close_while_a_thread_is_blocked_in_a_fault(uffd):
    run_ok(CLOSE_BLOCKED_SCRIPT, timeout=60)


def test_close_regions_while_others_are_written(uffd):
    """Regions come and go (table changes) while writer threads fault on
    other regions; every write still lands and is reported."""
    keep = writewatch.Region(32 * PAGE, backend=uffd)
    stop = threading.Event()
    errors = []

    def churn():
        try:
            while not stop.is_set():
                with writewatch.Region(4 * PAGE, backend=uffd) as t:
                    ctypes.memset(t.address + PAGE, 1, 1)
                    assert written(t) == [1]
        except Exception as e:      # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=churn) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(300):
            ctypes.memset(keep.address + (i % 32) * PAGE, 1, 1)
            assert (i % 32) in written(keep, reset=(i % 3 == 0))
    finally:
        stop.set()
        for t in threads:
            t.join()
    keep.close()
    assert errors == []


def _fds():
    return len(os.listdir("/proc/self/fd"))


def _threads():
    return len(os.listdir("/proc/self/task"))


def test_no_descriptor_or_thread_leak(uffd):
    writewatch.Region(PAGE, backend=uffd).close()
    gc.collect()
    fds, threads = _fds(), _threads()
    for i in range(3000):
        r = writewatch.Region(4 * PAGE, backend=uffd)
        ctypes.memset(r.address + (i % 4) * PAGE, 1, 1)
        if i % 2:
            r.get_write_watch(reset=True)
        r.close()
    gc.collect()
    assert _fds() == fds
    assert _threads() == threads
    assert _core._uffd_state()["regions"] == 0


def test_many_live_regions_share_one_descriptor(uffd):
    fds = _fds()
    regions = [writewatch.Region(PAGE, backend=uffd) for _ in range(1500)]
    try:
        assert _fds() == fds        # one userfaultfd per process, not per region
        for k, r in enumerate(regions):
            if k % 7 == 0:
                ctypes.memset(r.address, 1, 1)
        assert [k for k, r in enumerate(regions) if written(r)] == list(range(0, 1500, 7))
    finally:
        for r in regions:
            r.close()


# -- kernels without WP_UNPOPULATED (the MISSING route) ------------------------------------

MISSING_SCRIPT = r"""
import os, numpy as np, writewatch
from writewatch import _core
P = writewatch.PAGE_SIZE
info = {b.name: b for b in writewatch.backends()}["uffd"]
assert info.available and "MISSING" in info.reason, info
assert _core._uffd_state()["mode"] == "missing"
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
before = rss()
with writewatch.Region(2 << 30, backend="uffd") as r:            # 2 GiB, sparse
    v = np.frombuffer(r, dtype=np.uint8)
    pages = [0, 1, 4096, (2 << 30) // P - 1]
    assert int(v[7 * P]) == 0 and int(v[4096 * P + 5]) == 0    # reads: not writes
    for p in pages:
        v[p * P + 3] = 1
    got = lambda **kw: [(int(a) - r.address) // P for a in r.get_write_watch(**kw)]
    assert got(reset=True) == pages
    assert got() == []
    v[4096 * P] = 2; v[7 * P] = 2                              # read-mapped page 7 faults too
    assert got(reset=True) == [7, 4096]
    rfd, wfd = os.pipe(); os.write(wfd, b"k" * 20)
    mv = memoryview(r)
    assert os.readv(rfd, [mv[9 * P - 10: 9 * P + 10]]) == 20   # kernel, empty pages
    r._discard(r.address, 8 * P)                               # pages 0..7 empty again
    assert got() == [8, 9]
    assert bytes(mv[0: 8 * P]) == bytes(8 * P)
    v[2 * P] = 1
    assert got(reset=True) == [2, 8, 9]
    mv.release(); del v
    os.close(rfd); os.close(wfd)
assert rss() - before < 32 * 1024, rss() - before
print("ok")
"""


def test_missing_fault_route(uffd):
    """What a 6.1 kernel does (no UFFD_FEATURE_WP_UNPOPULATED), forced here."""
    run_ok(MISSING_SCRIPT, env={"_WRITEWATCH_UFFD_FORCE": "missing"})


def test_contract_threads_under_missing_route(uffd):
    script = r"""
from helpers import writer_threads_vs_resets, check_accounting
import writewatch
P = writewatch.PAGE_SIZE
with writewatch.Region(96 * P, backend="uffd") as r:
    results, writes = writer_threads_vs_resets(r, 96, 300)
check_accounting(96, results, writes)
print("ok")
"""
    run_ok(script, env={"_WRITEWATCH_UFFD_FORCE": "missing"})


# -- user-mode-only userfaultfd --------------------------------------------------------------

USER_MODE_SCRIPT = r"""
import errno, os, sys, numpy as np, writewatch
P = writewatch.PAGE_SIZE
if sys.argv[1] == "drop":
    # A real unprivileged process: no CAP_SYS_PTRACE, so with
    # vm.unprivileged_userfaultfd=0 userfaultfd() without
    # UFFD_USER_MODE_ONLY fails with EPERM and the backend falls back.
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
from writewatch import _core
info = {b.name: b for b in writewatch.backends()}["uffd"]
assert info.available, info
assert "EFAULT" in info.reason and "user-mode" in info.reason, info.reason
assert _core._uffd_state()["user_mode_only"]
with writewatch.Region(8 * P, backend="uffd") as r:
    v = np.frombuffer(r, dtype=np.uint8)
    v[P] = 1                                          # user-mode faults work
    got = lambda **kw: [(int(a) - r.address) // P for a in r.get_write_watch(**kw)]
    assert got() == [1]
    rfd, wfd = os.pipe(); os.write(wfd, b"z" * 100)
    mv = memoryview(r)
    assert os.readv(rfd, [mv[P: P + 10]]) == 10       # written page: not armed
    try:
        os.readv(rfd, [mv[3 * P: 3 * P + 10]])        # armed page: EFAULT
        raise SystemExit("kernel write into an armed page succeeded")
    except OSError as e:
        assert e.errno == errno.EFAULT, e
    assert got() == [1]
    mv.release(); del v
print("ok")
"""


def test_user_mode_only_kernel_writes_get_efault(uffd):
    run_ok(USER_MODE_SCRIPT, argv=["force"], env={"_WRITEWATCH_UFFD_FORCE": "user-mode-only"})


def test_unprivileged_process_falls_back_to_user_mode_only(uffd):
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    try:
        with open("/proc/sys/vm/unprivileged_userfaultfd") as f:
            if f.read().strip() != "0":
                pytest.skip("vm.unprivileged_userfaultfd=1: no fallback needed")
    except OSError:
        pytest.skip("no vm.unprivileged_userfaultfd sysctl")
    run_ok(USER_MODE_SCRIPT, argv=["drop"])
