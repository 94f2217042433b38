"""The `mprotect` backend's own behaviour: chaining real faults, EFAULT on
kernel writes, the vm.max_map_count budget, writer threads, fork.

Everything that installs signal handlers, may crash, or changes the whole
process runs in a subprocess with a timeout: a hang fails the test instead
of hanging the suite.  Ground truth is what the test wrote."""

import ctypes
import errno
import mmap
import os
import random
import signal
import textwrap
import threading

import numpy as np
import pytest

import writewatch
from writewatch import _core
from helpers import PAGE, output, require_backend, run_python, write_pages, written

pytestmark = pytest.mark.usefixtures("_mprotect")


@pytest.fixture
def _mprotect():
    require_backend("mprotect")


def region(npages):
    return writewatch.Region(npages * PAGE, backend="mprotect")


SEGV = -signal.SIGSEGV          # the exit status of a child killed by a real fault


def run(*parts, timeout=60, **kw):
    """Run the script made of `parts` in a fresh interpreter (run_python: a
    hang is a failure, an exit status other than `returncode` too)."""
    script = "\n".join(textwrap.dedent(part) for part in parts)
    return run_python(script, timeout=timeout, **kw)


PRELUDE = """
import ctypes, faulthandler, os, signal, sys
import numpy as np
import writewatch
P = writewatch.PAGE_SIZE
def crash_here():
    ctypes.string_at(0)          # a real fault: not a tracked page
"""


# -- faults that are not ours go to the handler that was there before ----------

@pytest.mark.parametrize("flags", [["-X", "faulthandler"], []],
                         ids=["faulthandler-first", "default-action"])
def test_real_crash_is_chained(flags):
    p = run(PRELUDE, """
        r = writewatch.Region(4 * P, backend="mprotect")
        v = np.frombuffer(r, dtype=np.uint8)
        v[P] = 1                          # a tracked write works ...
        assert [(int(a) - r.address) // P for a in r.get_write_watch()] == [1]
        print("tracked", flush=True)
        crash_here()                      # ... and a real fault still crashes
        print("survived", flush=True)
    """, flags=flags, returncode=SEGV)
    assert p.stdout.split() == ["tracked"]
    if flags:
        assert "Fatal Python error: Segmentation fault" in p.stderr
        assert "crash_here" in p.stderr   # with its traceback


def test_real_crash_with_sigsegv_ignored_does_not_loop():
    p = run(PRELUDE, """
        signal.signal(signal.SIGSEGV, signal.SIG_IGN)
        r = writewatch.Region(4 * P, backend="mprotect")
        memoryview(r)[0] = 1
        print("tracked", flush=True)
        crash_here()
    """, returncode=SEGV)
    assert p.stdout.split() == ["tracked"]


def test_write_the_caller_made_read_only_is_a_real_fault():
    p = run(PRELUDE, """
        r = writewatch.Region(4 * P, backend="mprotect")
        v = np.frombuffer(r, dtype=np.uint8)
        r._protect(r.address + P, P, 1)  # PROT_READ, as VirtualProtect would
        v[0] = 1
        assert v[P] == 0                  # reading is allowed
        print("read", flush=True)
        def write_read_only():
            v[P] = 1
        write_read_only()
        print("survived", flush=True)
    """, flags=["-X", "faulthandler"], returncode=SEGV)
    assert p.stdout.split() == ["read"]
    assert "write_read_only" in p.stderr


def test_read_of_a_no_access_page_is_a_real_fault():
    p = run(PRELUDE, """
        r = writewatch.Region(4 * P, backend="mprotect")
        v = np.frombuffer(r, dtype=np.uint8)
        r._protect(r.address + 2 * P, P, 0)   # PROT_NONE: decommitted
        print("ok", flush=True)
        x = int(v[2 * P])
        print("survived", flush=True)
    """, flags=["-X", "faulthandler"], returncode=SEGV)
    assert p.stdout.split() == ["ok"]
    assert "Segmentation fault" in p.stderr


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 machine code")
def test_executing_a_written_page_is_a_real_fault():
    # An instruction fetch from a page without PROT_EXEC is an access fault
    # on a writable tracked page, but not a write: it must not be "resolved"
    # (and retried) forever.
    p = run(PRELUDE, """
        r = writewatch.Region(4 * P, backend="mprotect")
        memoryview(r)[0] = 0xC3           # ret
        print("written", flush=True)
        ctypes.CFUNCTYPE(None)(r.address)()
        print("survived", flush=True)
    """, flags=["-X", "faulthandler"], returncode=SEGV)
    assert p.stdout.split() == ["written"]
    assert "Segmentation fault" in p.stderr


def test_faulthandler_enabled_after_the_region():
    # faulthandler.enable() puts its handler over ours; any Region call puts
    # ours back on top, chaining to faulthandler.  Then a real crash has its
    # traceback; after faulthandler.disable() (whose handler we still chain
    # to, and which now returns at once) it still crashes, never loops.
    script = (PRELUDE, """
        r = writewatch.Region(4 * P, backend="mprotect")
        v = np.frombuffer(r, dtype=np.uint8)
        faulthandler.enable()
        r.get_write_watch()               # re-installs on top
        v[0] = 1
        v[3 * P] = 1
        assert [(int(a) - r.address) // P for a in r.get_write_watch()] == [0, 3]
        if sys.argv[1] == "disable":
            faulthandler.disable()
            v[P] = 1
            assert len(r.get_write_watch()) == 3
        print("tracked", flush=True)
        crash_here()
    """)
    p = run(*script, argv=["keep"], returncode=SEGV)
    assert p.stdout.split() == ["tracked"]
    assert "crash_here" in p.stderr
    p = run(*script, argv=["disable"], returncode=SEGV)
    assert p.stdout.split() == ["tracked"]


def test_signal_sent_with_kill_still_kills():
    p = run(PRELUDE, """
        r = writewatch.Region(4 * P, backend="mprotect")
        memoryview(r)[0] = 1
        print("tracked", flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
        print("survived", flush=True)
    """, returncode=SEGV)
    assert p.stdout.split() == ["tracked"]


# -- kernel writes -----------------------------------------------------------------

def test_kernel_write_into_a_clean_page_fails_with_efault():
    """read(2) into a page not written since the last reset: the kernel's
    copy meets a read-only page, and no signal handler runs for it."""
    with region(4) as r:
        rfd, wfd = os.pipe()
        mv = memoryview(r)
        try:
            os.write(wfd, b"y" * 64)
            with pytest.raises(OSError) as e:
                os.readv(rfd, [mv[PAGE: PAGE + 64]])
            assert e.value.errno == errno.EFAULT
            assert written(r) == []               # nothing was written ...
            assert bytes(mv[PAGE: PAGE + 64]) == bytes(64)
            mv[PAGE] = 0                          # ... until user space writes
            assert os.readv(rfd, [mv[PAGE: PAGE + 64]]) == 64
            assert bytes(mv[PAGE: PAGE + 64]) == b"y" * 64
            assert written(r, reset=True) == [1]
            # A read spanning a written and a clean page fails whole with
            # EFAULT: the bytes before the clean page are stored, but the
            # pipe keeps them and no count says so (Linux 6.18).
            mv[0] = 0
            os.write(wfd, b"z" * 64)
            with pytest.raises(OSError) as e:
                os.readv(rfd, [mv[PAGE - 32: PAGE + 32]])
            assert e.value.errno == errno.EFAULT
            assert written(r) == [0]
            mv[PAGE] = 0
            assert os.readv(rfd, [mv[PAGE - 32: PAGE + 32]]) == 64
            assert bytes(mv[PAGE - 32: PAGE + 32]) == b"z" * 64
        finally:
            mv.release()
            os.close(rfd)
            os.close(wfd)


# -- protection changes (the win32 hooks) ------------------------------------------------

PROT_NONE, PROT_READ, PROT_RW = 0, 1, 3


def test_protect_is_not_a_write_and_keeps_written_state():
    with region(8) as r:
        write_pages(r, [2])
        r._protect(r.address, 8 * PAGE, PROT_READ)
        r._protect(r.address, 8 * PAGE, PROT_NONE)
        r._protect(r.address, 8 * PAGE, PROT_RW)
        assert written(r) == [2]                   # written before: still reported
        assert written(r, reset=True) == [2]
        r._protect(r.address + 4 * PAGE, 2 * PAGE, PROT_READ)
        r._protect(r.address + 4 * PAGE, 2 * PAGE, PROT_RW)
        assert written(r) == []                    # the changes were not writes
        write_pages(r, [4, 7])                     # and pages still catch writes
        assert written(r) == [4, 7]


def test_written_page_made_read_only_and_back():
    with region(4) as r:
        v = np.frombuffer(r, dtype=np.uint8)
        v[PAGE] = 5
        r._protect(r.address + PAGE, PAGE, PROT_READ)
        assert written(r, reset=True) == [1]       # reset while read-only
        r._protect(r.address + PAGE, PAGE, PROT_RW)
        assert written(r) == []
        v[PAGE + 1] = 6                            # re-armed by that reset
        assert written(r) == [1]
        assert v[PAGE] == 5 and v[PAGE + 1] == 6
        del v


def test_decommit_clears_written_state_and_contents():
    with region(8) as r:
        v = np.frombuffer(r, dtype=np.uint8)
        v[:] = 7
        r._protect(r.address + 2 * PAGE, 3 * PAGE, PROT_NONE)
        r._discard(r.address + 2 * PAGE, 3 * PAGE)
        assert written(r) == [0, 1, 5, 6, 7]
        r._protect(r.address + 2 * PAGE, 3 * PAGE, PROT_RW)   # commit again
        assert not v[2 * PAGE: 5 * PAGE].any()
        assert written(r) == [0, 1, 5, 6, 7]
        v[3 * PAGE] = 1
        assert written(r) == [0, 1, 3, 5, 6, 7]
        del v


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_against_a_model(seed):
    """Writes, protection changes, resets, bounded get-and-resets and
    decommits in random order; the model is what the test did."""
    rng = random.Random(seed)
    n = 96
    with region(n) as r:
        v = np.frombuffer(r, dtype=np.uint8)
        prot = [PROT_RW] * n
        dirty = set()
        for _ in range(300):
            op = rng.randrange(6)
            a = rng.randrange(n)
            b = rng.randrange(a + 1, min(n, a + 24) + 1)
            if op <= 1:
                for p in range(a, b):
                    if prot[p] == PROT_RW:
                        v[p * PAGE + rng.randrange(PAGE)] = rng.randrange(1, 256)
                        dirty.add(p)
            elif op == 2:
                new = rng.choice([PROT_NONE, PROT_READ, PROT_RW])
                r._protect(r.address + a * PAGE, (b - a) * PAGE, new)
                prot[a:b] = [new] * (b - a)
            elif op == 3:
                r.reset_write_watch(r.address + a * PAGE, (b - a) * PAGE)
                dirty -= set(range(a, b))
            elif op == 4:
                m = rng.randrange(1, 8)
                got = written(r, address=r.address + a * PAGE, size=(b - a) * PAGE,
                              reset=True, max_count=m)
                want = sorted(p for p in dirty if a <= p < b)[:m]
                assert got == want
                dirty -= set(got)
            else:
                r._discard(r.address + a * PAGE, (b - a) * PAGE)
                dirty -= set(range(a, b))
            if rng.randrange(8) == 0:
                assert written(r) == sorted(dirty)
        r._protect(r.address, n * PAGE, PROT_RW)
        assert written(r, reset=True) == sorted(dirty)
        assert written(r) == []
        del v


# -- VMAs: runs coalesce, and the map count is never exhausted ------------------------------

def test_protection_changes_coalesce_into_runs():
    with region(512) as r:
        assert _core._mprotect_vmas(r) == 1
        write_pages(r, range(100, 300))            # one run of pages
        assert _core._mprotect_vmas(r) == 3        # clean | written | clean
        write_pages(r, range(0, 512, 2))
        assert written(r, reset=True) == sorted(set(range(100, 300)) | set(range(0, 512, 2)))
        assert _core._mprotect_vmas(r) == 1        # all re-armed: merged again


FILL = """
import ctypes, errno, mmap, os, sys, time
import numpy as np
import writewatch
from writewatch import _core
P = writewatch.PAGE_SIZE
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MAX = int(open("/proc/sys/vm/max_map_count").read())

def vmas():
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)

def fill(leave):
    # Use up the map count with many small mappings of our own, so that
    # only `leave` more VMAs can be made.  Returns a function undoing it.
    n = (MAX - vmas() - leave) // 2
    size = (2 * n + 1) * P
    base = libc.mmap(None, size, 1, 0x22 | 0x4000, -1, 0)   # READ, PRIVATE|ANON|NORESERVE
    assert base not in (None, ctypes.c_void_p(-1).value)
    for i in range(n):
        # PROT_NONE on every other page: two more VMAs each
        assert libc.mprotect(base + (2 * i + 1) * P, P, 0) == 0, ctypes.get_errno()
    assert abs(MAX - vmas() - leave) <= 4, (MAX, vmas(), leave)
    def undo():
        libc.munmap(base, size)
    return undo

def fill_up():
    # Every VMA the kernel allows: split a reservation of our own until
    # mprotect says ENOMEM.  Returns a function undoing it.
    n = 2 * (MAX - vmas()) + 8
    base = libc.mmap(None, n * P, 0, 0x22 | 0x4000, -1, 0)  # NONE, PRIVATE|ANON|NORESERVE
    assert base not in (None, ctypes.c_void_p(-1).value)
    for i in range(1, n, 2):
        if libc.mprotect(base + i * P, P, 1) != 0:
            assert ctypes.get_errno() == 12, ctypes.get_errno()     # ENOMEM
            break
    assert vmas() >= MAX - 5, (vmas(), MAX)
    def undo():
        libc.munmap(base, n * P)
    return undo

def pages(r, res):
    return {(int(a) - r.address) // P for a in res}
"""


def test_map_count_near_the_limit_before_the_region_is_made():
    # The budget is taken when a region is armed: with the map count almost
    # used up, faults do not split VMAs at all; whole clean runs are made
    # writable and reported.  Reports are a superset, no write fails, and the
    # process keeps the margin for its own mappings.
    p = run(FILL, """
        undo = fill(600)
        N = 2048
        r = writewatch.Region(N * P, backend="mprotect")
        v = np.frombuffer(r, dtype=np.uint8)
        out = np.zeros(N, dtype=np.uint64)
        for rnd in range(3):
            want = set(range(rnd, N, 2 + rnd))
            for i in sorted(want):
                v[i * P + 1] = rnd + 1             # every write succeeds
            got = pages(r, r.get_write_watch(reset=True, out=out))
            assert want <= got, sorted(want - got)[:10]
            for i in sorted(want):
                assert v[i * P + 1] == rnd + 1
        st = _core._mprotect_stats()
        assert st["widened"] > 0, st
        assert _core._mprotect_vmas(r) <= 3, _core._mprotect_vmas(r)
        assert vmas() < MAX - 200                  # the margin is still free
        m = mmap.mmap(-1, P)                       # and the process can map
        m.close()
        del v
        r.close()
        undo()
        print("ok", st["widened"])
    """, timeout=120)
    assert p.stdout.startswith("ok"), output(p)


def test_map_count_exhausted_after_the_region_is_made():
    # Here the budget looked fine when the region was armed; other mappings
    # then take the map count, and the kernel refuses our splits (mprotect
    # fails with ENOMEM inside the handler).  The handler makes the clean
    # run writable instead (a whole VMA: no split) and marks it written; a
    # reset the kernel refuses leaves the pages writable and written.
    p = run(FILL, """
        N = 4096
        r = writewatch.Region(N * P, backend="mprotect")
        v = np.frombuffer(r, dtype=np.uint8)
        out = np.zeros(N, dtype=np.uint64)
        undo = fill(100)
        want = set(range(0, N, 2))
        for i in range(0, N, 2):
            v[i * P] = 1                           # every write succeeds
        got = pages(r, r.get_write_watch(reset=True, out=out))
        assert want <= got, sorted(want - got)[:10]
        widened = _core._mprotect_stats()["widened"]
        assert widened > 0
        want = set(range(1, N, 3))
        for i in range(1, N, 3):
            v[i * P] = 2
        got = pages(r, r.get_write_watch(reset=True, out=out))
        assert want <= got, sorted(want - got)[:10]
        undo()                                     # room again: exact again,
        time.sleep(0.15)                           # once a control call (at most
        r.reset_write_watch()                      # every 100 ms) takes the budget
        want = set(range(5, N, 7))
        for i in sorted(want):
            v[i * P] = 3
        got = pages(r, r.get_write_watch(reset=True, out=out))
        assert got == want, (len(got), len(want))
        print("ok", widened)
    """, timeout=120)
    assert p.stdout.startswith("ok"), output(p)


def test_map_count_full_with_read_only_pages_among_clean_ones():
    # The win32 layer's case: pages the caller made read-only among clean
    # read/write pages.  Both have the kernel protection PROT_READ, so the
    # kernel would merge them into one VMA, and with the map count full no
    # write to a clean page there could be resolved without a split: the
    # process died of its first write (seen on 6.18 before the hints).  The
    # backend keeps read-only runs in VMAs of their own (MADV_RANDOM), so
    # every write succeeds and is reported (a superset); the read-only
    # pages, never written, are never reported.
    p = run(FILL, """
        N = 64
        r = writewatch.Region(N * P, backend="mprotect")
        v = np.frombuffer(r, dtype=np.uint8)
        ro = set(range(8, N, 8))
        for i in sorted(ro):
            r._protect(r.address + i * P, P, mmap.PROT_READ)
        apart = _core._mprotect_vmas(r)            # one VMA per run: checked below
        undo = fill_up()
        want = {i for i in range(1, N, 3) if i not in ro}
        for i in sorted(want):
            v[i * P] = 1                           # every write succeeds
        got = pages(r, r.get_write_watch())
        assert want <= got and not got & ro, (sorted(want - got), sorted(got & ro))
        assert _core._mprotect_stats()["widened"] > 0
        # Making a page read-only now needs a VMA of its own: refused
        # cleanly (madvise's EAGAIN: the backend isolates the page before it
        # changes its protection), and the page stays writable and tracked.
        try:
            r._protect(r.address + 2 * P, P, mmap.PROT_READ)
            raise AssertionError("a protection change that needs a VMA was made")
        except OSError as e:
            assert e.errno in (errno.ENOMEM, errno.EAGAIN), e
        v[2 * P] = 2
        got = pages(r, r.get_write_watch(reset=True))
        assert want | {2} <= got and not got & ro, sorted(got)
        undo()
        del v
        r.close()
        assert apart == 2 * len(ro) + 1, apart
        print("ok")
    """, timeout=120)
    assert p.stdout.startswith("ok"), output(p)


# -- threads -------------------------------------------------------------------------------

def test_many_writer_threads_against_get_and_reset():
    """Writers store unique sequence numbers with the GIL released (ctypes
    memmove); a get-and-reset loop copies each reported page.  When all is
    done the copies equal the memory: a write never reported would leave a
    stale copy.  No page that nobody wrote is ever reported."""
    n, nthreads = 512, 8
    with region(n) as r:
        base = r.address
        snap = np.zeros(n, dtype=np.uint64)
        mem = np.frombuffer(r, dtype=np.uint64)[::PAGE // 8]
        stop = threading.Event()
        touched = [set() for _ in range(nthreads)]
        memmove = ctypes.memmove

        def writer(k):
            rng = random.Random(k)
            val = ctypes.c_uint64()
            seq = k
            mine = range(k, n - 8, nthreads)       # the last 8 pages are never written
            while not stop.is_set():
                for _ in range(50):
                    p = rng.choice(mine)
                    seq += nthreads
                    val.value = seq
                    memmove(base + p * PAGE, ctypes.addressof(val), 8)
                    touched[k].add(p)

        def collect():
            got = written(r, reset=True)
            snap[got] = mem[got]
            return got

        def toggler():
            # Protection changes on pages nobody writes: not writes, and
            # no disturbance to the pages around them.
            rng = random.Random(99)
            while not stop.is_set():
                for prot in (PROT_READ, PROT_NONE, PROT_RW):
                    a = rng.randrange(n - 8, n)
                    r._protect(base + a * PAGE, (n - a) * PAGE, prot)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(nthreads)]
        threads.append(threading.Thread(target=toggler))
        for t in threads:
            t.start()
        reported = set()
        try:
            for _ in range(400):
                reported.update(collect())
        finally:
            stop.set()
            for t in threads:
                t.join()
        r._protect(base + (n - 8) * PAGE, 8 * PAGE, PROT_RW)   # readable again
        reported.update(collect())
        assert collect() == []
        assert reported == set().union(*touched)
        stale = np.nonzero(snap != mem)[0]
        assert len(stale) == 0, "writes lost on pages %s" % stale[:10]
        del mem


# -- fork -------------------------------------------------------------------------------------

def test_fork_while_threads_write():
    # The child inherits the read-only protections and the handler (with
    # the parent's reader counts, possibly mid-fault in another thread): it
    # writes its copy, makes and tracks a region of its own, and closes both.
    p = run(PRELUDE, """
        import threading
        r = writewatch.Region(64 * P, backend="mprotect")
        v = np.frombuffer(r, dtype=np.uint8)
        stop = threading.Event()
        def writer(k):
            i = 0
            while not stop.is_set():
                v[((i * 4 + k) % 64) * P] = 1
                i += 1
                if i % 64 == 0:
                    r.reset_write_watch()
        ts = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
        for t in ts:
            t.start()
        for rnd in range(20):
            pid = os.fork()
            if pid == 0:
                try:
                    v[:] = 9
                    q = writewatch.Region(8 * P, backend="mprotect")
                    memoryview(q)[3 * P] = 1
                    got = [(int(a) - q.address) // P for a in q.get_write_watch()]
                    q.close()
                    del v
                    r.close()
                    os._exit(0 if got == [3] else 3)
                except BaseException:
                    os._exit(4)
            _, status = os.waitpid(pid, 0)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        stop.set()
        for t in ts:
            t.join()
        assert not (v == 9).any()
        r.reset_write_watch()
        v[5 * P] = 2
        assert [(int(a) - r.address) // P for a in r.get_write_watch()] == [5]
        print("ok")
    """)
    assert p.stdout.strip() == "ok", output(p)


# -- lifetime --------------------------------------------------------------------------------

def test_thousands_of_regions_leak_nothing():
    def counts():
        with open("/proc/self/maps") as f:
            maps = sum(1 for _ in f)
        return maps, len(os.listdir("/proc/self/fd"))

    for _ in range(50):
        region(4).close()
    before = counts()
    tracked = _core._mprotect_stats()["regions"]
    for i in range(3000):
        r = region(4)
        memoryview(r)[(i % 4) * PAGE] = 1
        if i % 2:
            r.close()
        else:
            del r                                  # dropped without close()
    assert counts() == before
    held = [region(2) for _ in range(300)]         # many alive at once
    for k, r in enumerate(held):
        memoryview(r)[(k % 2) * PAGE] = 1
    bad = [(k, written(r)) for k, r in enumerate(held) if written(r) != [k % 2]]
    assert bad == [], (_core._mprotect_stats(), [hex(r.address) for r in held[:8]])
    for r in held:
        r.close()
    assert counts() == before
    assert _core._mprotect_stats()["regions"] == tracked


def test_regions_collected_in_reference_cycles_leave_no_table_entry():
    # The garbage collector may clear a Region's attributes before it is
    # deallocated; the engine must still be detached, or a stale entry for
    # memory mapped again later would swallow the next region's writes.
    import gc

    class Holder:
        pass

    base = _core._mprotect_stats()["regions"]
    gc.disable()
    try:
        addrs = set()
        for _ in range(50):
            r = region(2)              # made first: cleared first by the collector
            h = Holder()
            h.cycle = [r, h]
            addrs.add(r.address)
            del r, h
        gc.collect()
    finally:
        gc.enable()
    assert _core._mprotect_stats()["regions"] == base
    fresh = [region(2) for _ in range(50)]
    assert addrs & {r.address for r in fresh}      # the same memory, mapped again
    for k, r in enumerate(fresh):
        memoryview(r)[(k % 2) * PAGE] = 1
    assert [written(r) for r in fresh] == [[k % 2] for k in range(50)]
    for r in fresh:
        r.close()


def test_probe_reports_available():
    info = {b.name: b for b in writewatch.backends()}["mprotect"]
    assert info.available, info.reason
    assert "EFAULT" in info.reason
