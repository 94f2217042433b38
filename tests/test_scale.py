"""Scale (issue 10): cost follows what is committed and written, not what is
reserved or how many regions exist.

- pagemap regions share one userfaultfd (and /proc/self/pagemap): 10,000
  regions live in a process limited to 1,024 descriptors;
- a win32 MEM_WRITE_WATCH reservation is not armed: commits arm exactly the
  committed pages, decommits give their page tables back;
- arming what the process cannot get raises MemoryError (a win32 commit
  fails with ERROR_COMMITMENT_LIMIT) instead of waking the OOM killer.

Everything that could use up descriptors, map count or memory runs in a
child, and memory-hungry children inside a memory cgroup of their own (the
test is skipped, with the reason, where none can be made).
"""

import textwrap

import pytest

import writewatch
from helpers import AVAILABLE, PAGE, run_python, require_backend

# Backends whose arming fills page tables (WP_UNPOPULATED markers).
FILLS_PAGE_TABLES = ("pagemap", "uffd")

PRELUDE = r'''
import os, resource, sys, time
import numpy as np
import writewatch
from writewatch import win32 as w
P = writewatch.PAGE_SIZE
BACKEND = sys.argv[1]
os.environ["WRITEWATCH_BACKEND"] = BACKEND

def check(cond, what):
    if not cond:
        print("FAIL", what, flush=True)
        os._exit(1)
    print("ok", what, flush=True)

def vmpte():
    """This process's page tables, bytes (VmPTE)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmPTE:"):
                return int(line.split()[1]) * 1024

def fds():
    return len(os.listdir("/proc/self/fd"))

def touch(address, offsets, value=1):
    """Write one byte at address + each offset (ctypes: any memory)."""
    import ctypes
    for off in offsets:
        ctypes.c_uint8.from_address(address + off).value = value

def gww(base, size, count=4096, flags=0):
    out = np.zeros(count, dtype=np.uint64)
    res, n, gran = w.GetWriteWatch(flags, base, size, out, count)
    check(res == 0, "GetWriteWatch(%#x, %#x): error %d" % (base, size, w.GetLastError()))
    return [int(a) for a in out[:n]]
'''


def child(backend, body, **kw):
    p = run_python(PRELUDE + textwrap.dedent(body), argv=[backend], **kw)
    return p.stdout


@pytest.fixture(params=list(writewatch._core.BACKEND_NAMES))
def any_backend(request):
    return require_backend(request.param)


# -- descriptors -----------------------------------------------------------------

def test_ten_thousand_regions_under_the_usual_descriptor_limit(any_backend):
    """10,000 live regions, each exact, in a process limited to 1,024
    descriptors, with a handful of descriptors in all."""
    out = child(any_backend, r'''
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
        start = fds()
        regions = [writewatch.Region(16 * P, backend=BACKEND) for _ in range(10000)]
        check(fds() <= start + 4, "10,000 regions hold %d descriptors more" % (fds() - start))
        for i, r in enumerate(regions):
            touch(r.address, [(i % 16) * P])
        res = writewatch.get_write_watch_many(regions, reset=True)
        check(all([int(a) for a in x] == [r.address + (i % 16) * P]
                  for i, (r, x) in enumerate(zip(regions, res))), "each region exact")
        check(all(len(r.get_write_watch()) == 0 for r in regions[::97]), "and reset")
        # Other descriptors can still be opened.
        with open("/dev/null") as f:
            pass
        for r in regions:
            r.close()
        check(fds() <= start + 4, "closed: %d descriptors" % (fds() - start))
        print("DONE")
    ''', timeout=300)
    assert "DONE" in out


def test_a_fork_child_gets_its_own_userfaultfd():
    require_backend("pagemap")
    out = child("pagemap", r'''
        def async_uffds():
            found = set()
            for fd in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink("/proc/self/fd/" + fd) != "anon_inode:[userfaultfd]":
                        continue
                    with open("/proc/self/fdinfo/" + fd) as f:
                        api = [l for l in f.read().splitlines() if l.startswith("API:")]
                    if api and int(api[0].split()[1].split(":")[1], 16) & (1 << 15):
                        found.add(int(fd))
                except OSError:
                    pass
            return found
        parent = [writewatch.Region(8 * P) for _ in range(3)]
        mine = async_uffds()
        check(len(mine) == 1, "the parent's regions share one userfaultfd: %s" % mine)
        touch(parent[1].address, [2 * P])
        pid = os.fork()
        if pid == 0:
            try:
                try:
                    parent[1].get_write_watch()
                    check(False, "the parent's region is not tracked in the child")
                except writewatch.ForkedRegionError:
                    pass
                r = writewatch.Region(8 * P)
                theirs = async_uffds()
                check(len(theirs) == 1 and theirs != mine, "the child has its own: %s" % theirs)
                touch(r.address, [5 * P])
                check([int(a) - r.address for a in r.get_write_watch(reset=True)] == [5 * P],
                      "the child's own region is exact")
                touch(parent[1].address, [3 * P, 4 * P])      # its copy, freely
                os._exit(0)
            except BaseException as e:
                print("child:", e, flush=True)
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        check(status == 0, "child exited cleanly")
        check([int(a) - parent[1].address for a in parent[1].get_write_watch()] == [2 * P],
              "the parent stays exact")
        print("DONE")
    ''')
    assert "DONE" in out


# -- reservations -------------------------------------------------------------------

@pytest.mark.parametrize("backend", AVAILABLE)
def test_a_reservation_is_not_armed_and_commits_arm_what_they_commit(backend):
    """256 GiB reserved: under 1 MiB of page tables.  1 GiB committed in it:
    about 2 MiB (on backends whose arming fills page tables), and
    GetWriteWatch over the whole reservation is exact.  Decommitted: the
    page tables are given back."""
    fills = backend in FILLS_PAGE_TABLES
    out = child(backend, r'''
        G = 1 << 30
        FILLS = %r
        base0 = vmpte()
        t = time.perf_counter()
        base = w.VirtualAlloc(0, 256 * G, w.MEM_RESERVE | w.MEM_WRITE_WATCH, w.PAGE_READWRITE)
        check(base, "reserved 256 GiB (error %%d)" %% w.GetLastError())
        check(vmpte() - base0 < 1 << 20, "reservation: %%d KiB of page tables" %% ((vmpte() - base0) >> 10))
        check(gww(base, 256 * G) == [], "nothing reported in a reservation")
        c = base + 100 * G
        check(w.VirtualAlloc(c, G, w.MEM_COMMIT, w.PAGE_READWRITE) == c, "committed 1 GiB")
        grew = vmpte() - base0
        if FILLS:
            check(3 << 19 <= grew <= 4 << 20, "1 GiB committed: %%d KiB of page tables" %% (grew >> 10))
        else:
            check(grew < 1 << 20, "1 GiB committed, arming fills nothing: %%d KiB" %% (grew >> 10))
        offsets = [k * 4099 * P for k in range(64)]
        touch(c, offsets)
        want = [c + (o // P) * P for o in offsets]
        check(gww(base, 256 * G) == want, "GetWriteWatch over the whole reservation")
        check(gww(c, G) == want, "... and over the committed GiB")
        check(gww(base, 256 * G, count=10, flags=w.WRITE_WATCH_FLAG_RESET) == want[:10],
              "reset flag, count 10")
        check(gww(base, 256 * G) == want[10:], "the rest stays")
        check(w.ResetWriteWatch(base, 256 * G) == 0, "ResetWriteWatch of the whole reservation")
        check(gww(base, 256 * G) == [], "nothing left")
        check(w.VirtualFree(c, G, w.MEM_DECOMMIT), "decommitted")
        check(vmpte() - base0 < 1 << 20, "decommit gives the page tables back: %%d KiB" %% ((vmpte() - base0) >> 10))
        check(w.VirtualAlloc(c + G, 4 * P, w.MEM_COMMIT, w.PAGE_READWRITE) == c + G, "commit elsewhere")
        touch(c + G, [P])
        check(gww(base, 256 * G) == [c + G + P], "a later commit tracks its pages")
        check(w.VirtualFree(base, 0, w.MEM_RELEASE), "released")
        print("DONE")
    ''' % fills, memory_limit=512 << 20)
    assert "DONE" in out


# -- refuse, don't get killed -----------------------------------------------------------

@pytest.mark.parametrize("backend", AVAILABLE)
def test_a_region_whose_arming_cannot_fit_is_refused(backend):
    """Region(1 << 46): 128 GiB of page tables on backends that fill them --
    MemoryError naming both figures, before anything is armed.  The mprotect
    backend's arming costs nothing per page (its state is paid for as pages
    are written), so it makes the region.  Inside a memory cgroup, so that a
    guard that failed would kill only this child."""
    out = child(backend, r'''
        FILLS = BACKEND in ("pagemap", "uffd")
        try:
            r = writewatch.Region(1 << 46, backend=BACKEND)
        except MemoryError as e:
            check(FILLS, "refused: %s" % e)
            check("needs" in str(e) and "can get only" in str(e), "the message gives both figures")
        else:
            check(not FILLS, "made a 64 TiB region on %s" % BACKEND)
            touch(r.address, [0, (1 << 45)])
            check([int(a) - r.address for a in r.get_write_watch(max_count=2)] == [0, 1 << 45],
                  "and it works")
            r.close()
        r = writewatch.Region(16 * P, backend=BACKEND)       # the process goes on
        touch(r.address, [3 * P])
        check([int(a) - r.address for a in r.get_write_watch()] == [3 * P], "a small region works")
        print("DONE")
    ''', memory_limit=1 << 30)
    assert "DONE" in out


@pytest.mark.parametrize("backend", AVAILABLE)
def test_memory_cgroup_limit_is_respected(backend):
    """Under a 1 GiB cgroup limit: Region(1 TiB) needs 2 GiB of page tables
    on pagemap/uffd -- refused, naming the cgroup; an 8 GiB sparse region
    (16 MiB of page tables) fits and works; a win32 commit of 1 TiB fails
    with ERROR_COMMITMENT_LIMIT and leaves the reservation usable."""
    out = child(backend, r'''
        FILLS = BACKEND in ("pagemap", "uffd")
        G = 1 << 30
        try:
            big = writewatch.Region(1 << 40, backend=BACKEND)
        except MemoryError as e:
            check(FILLS and "cgroup" in str(e), "1 TiB refused: %s" % e)
        else:
            check(not FILLS, "1 TiB made on %s" % BACKEND)
            big.close()
        r = writewatch.Region(8 * G, backend=BACKEND)
        offsets = [k * 997 * P for k in range(2000)]
        touch(r.address, offsets)
        got = [int(a) - r.address for a in r.get_write_watch(reset=True)]
        check(got == [o // P * P for o in offsets], "the 8 GiB sparse region works")
        r.close()
        base = w.VirtualAlloc(0, 1 << 40, w.MEM_RESERVE | w.MEM_WRITE_WATCH, w.PAGE_READWRITE)
        check(base, "reserved 1 TiB")
        got = w.VirtualAlloc(base, 1 << 40, w.MEM_COMMIT, w.PAGE_READWRITE)
        if FILLS:
            check(got == 0 and w.GetLastError() in (w.ERROR_COMMITMENT_LIMIT,
                                                    w.ERROR_NOT_ENOUGH_MEMORY),
                  "committing 1 TiB fails with error %d" % w.GetLastError())
            info = w.VirtualQuery(base)
            check(info.State == w.MEM_RESERVE and info.RegionSize == 1 << 40,
                  "and leaves it reserved: %s" % (info,))
        else:
            check(got == base, "committing 1 TiB costs nothing on %s" % BACKEND)
            check(w.VirtualFree(base, 1 << 40, w.MEM_DECOMMIT), "decommitted again")
        check(w.VirtualAlloc(base + G, G, w.MEM_COMMIT, w.PAGE_READWRITE) == base + G,
              "a commit that fits works")
        touch(base + G, [7 * P])
        check(gww(base, 1 << 40) == [base + G + 7 * P], "and is tracked")
        check(w.VirtualFree(base, 0, w.MEM_RELEASE), "released")
        print("DONE")
    ''', memory_limit=1 << 30)
    assert "DONE" in out


def test_memory_available_reads_this_process_cgroup():
    """The guard's figure is no larger than MemAvailable, and inside a
    cgroup no larger than its limit."""
    avail, source = writewatch._core._memory_available()
    assert avail is not None and avail > 0 and source
    out = run_python(r'''
        import writewatch
        avail, source = writewatch._core._memory_available()
        print(avail, source)
        assert avail <= 256 << 20, (avail, source)
        assert "cgroup" in source, source
        print("DONE")
    ''', memory_limit=256 << 20).stdout
    assert "DONE" in out
