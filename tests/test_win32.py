"""writewatch.win32: Windows' write-watch contract, on every available backend.

Ground truth is what the test itself wrote (through ctypes, another thread,
or the kernel via readv).  Many scenarios follow Wine's conformance test
(dlls/kernel32/tests/virtual.c, test_write_watch / test_VirtualAlloc /
test_VirtualProtect), rewritten here.
"""

import array
import ctypes
import os
import signal
import threading

import numpy as np
import pytest

from writewatch import win32 as w
from helpers import AVAILABLE, BACKEND_INFO, BACKENDS, output, require_backend, run_python

P = w.PAGE_SIZE
SIZE = 0x10000
FAILED = 0xFFFFFFFF

@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Every later VirtualAlloc(MEM_WRITE_WATCH) in the test uses this backend."""
    name = require_backend(request.param)
    monkeypatch.setenv("WRITEWATCH_BACKEND", name)
    return name


@pytest.fixture
def allocs():
    """VirtualAlloc that releases what it made when the test ends."""
    made = []

    def alloc(address, size, kind, protect):
        base = w.VirtualAlloc(address, size, kind, protect)
        if base and kind & w.MEM_RESERVE or (base and not address):
            made.append(base)
        return base

    yield alloc
    for base in made:
        w.VirtualFree(base, 0, w.MEM_RELEASE)


@pytest.fixture
def ww(backend, allocs):
    """A fresh committed read/write 16-page write-watch allocation."""
    base = allocs(0, SIZE, w.MEM_RESERVE | w.MEM_COMMIT | w.MEM_WRITE_WATCH,
                  w.PAGE_READWRITE)
    assert base, w.GetLastError()
    assert w._backend_of(base) == backend
    return base


def poke(address, value=1):
    ctypes.c_uint8.from_address(address).value = value


def peek(address):
    return ctypes.c_uint8.from_address(address).value


def watch(base, size=SIZE, flags=0, count=64, origin=None):
    """GetWriteWatch that must succeed; the reported pages as offsets from
    `origin` (default: `base`)."""
    buf = np.zeros(count, np.uint64)
    result, n, gran = w.GetWriteWatch(flags, base, size, buf, count)
    assert result == 0, w.GetLastError()
    assert gran == P
    return [int(a) - (base if origin is None else origin) for a in buf[:n]]


def pages(*numbers):
    return [n * P for n in numbers]


def fails(call, code):
    w.SetLastError(0xDEADBEEF)
    out = call()
    assert w.GetLastError() == code
    return out


# -- constants ------------------------------------------------------------

def test_constants_have_windows_values():
    assert (w.MEM_COMMIT, w.MEM_RESERVE, w.MEM_DECOMMIT, w.MEM_RELEASE) == (
        0x1000, 0x2000, 0x4000, 0x8000)
    assert (w.MEM_FREE, w.MEM_PRIVATE, w.MEM_WRITE_WATCH) == (0x10000, 0x20000, 0x200000)
    assert (w.PAGE_NOACCESS, w.PAGE_READONLY, w.PAGE_READWRITE) == (1, 2, 4)
    assert (w.PAGE_EXECUTE, w.PAGE_EXECUTE_READ, w.PAGE_EXECUTE_READWRITE) == (
        0x10, 0x20, 0x40)
    assert w.WRITE_WATCH_FLAG_RESET == 1
    assert (w.ERROR_INVALID_PARAMETER, w.ERROR_INVALID_ADDRESS, w.ERROR_NOACCESS) == (
        87, 487, 998)


# -- Wine's test_write_watch, scenario by scenario ------------------------

def test_fresh_allocation_queries_as_one_committed_run(ww):
    info = w.VirtualQuery(ww)
    assert info == w.MEMORY_BASIC_INFORMATION(ww, ww, w.PAGE_READWRITE, SIZE,
                                              w.MEM_COMMIT, w.PAGE_READWRITE,
                                              w.MEM_PRIVATE)
    assert ww % w.ALLOCATION_GRANULARITY == 0


def test_null_and_foreign_base_fail(ww):
    results = np.zeros(64, np.uint64)
    assert fails(lambda: w.GetWriteWatch(0, 0, SIZE, results, 64), 87) == (FAILED, 64, 0)
    foreign = np.zeros(SIZE, np.uint8)
    assert fails(lambda: w.GetWriteWatch(0, foreign.ctypes.data, SIZE, results, 64),
                 87)[0] == FAILED
    assert fails(lambda: w.ResetWriteWatch(foreign.ctypes.data, SIZE), 87) == FAILED


def test_write_report_and_reset_sequence(ww):
    assert watch(ww) == []
    poke(ww + P + 1, 0x44)
    assert watch(ww) == pages(1)
    assert watch(ww, flags=w.WRITE_WATCH_FLAG_RESET) == pages(1)
    assert watch(ww) == []

    poke(ww + 2 * P + 3, 0x11)
    poke(ww + 4 * P + 8, 0x11)
    assert watch(ww) == pages(2, 4)
    # a sub-range sees only its own pages
    assert watch(ww + 3 * P, 2 * P, origin=ww) == pages(4)
    # a partial reset touches only its range
    assert w.ResetWriteWatch(ww, 3 * P) == 0
    assert watch(ww) == pages(4)


def test_write_straddling_two_pages_marks_both(ww):
    poke(ww + 4 * P)
    ctypes.c_uint32.from_address(ww + 2 * P - 2).value = 0xDEADBEEF
    assert watch(ww) == pages(1, 2, 4)


def test_count_limits_report_and_reset(ww):
    for n in (1, 2, 4):
        poke(ww + n * P)
    assert watch(ww, flags=w.WRITE_WATCH_FLAG_RESET, count=1) == pages(1)
    # only the reported page was reset; the rest stay written
    assert watch(ww) == pages(2, 4)
    assert watch(ww, flags=w.WRITE_WATCH_FLAG_RESET, count=2) == pages(2, 4)
    assert watch(ww) == []


def test_many_written_more_than_count(ww):
    for n in range(16):
        poke(ww + n * P)
    got = []
    while True:
        batch = watch(ww, flags=w.WRITE_WATCH_FLAG_RESET, count=3)
        if not batch:
            break
        assert len(batch) <= 3
        got += batch
    assert got == pages(*range(16))


@pytest.mark.parametrize("protect", [w.PAGE_READONLY, w.PAGE_NOACCESS, w.PAGE_EXECUTE_READ,
                                     w.PAGE_EXECUTE, w.PAGE_EXECUTE_READWRITE])
def test_protection_changes_are_not_writes_and_keep_written_state(ww, protect):
    poke(ww + 2 * P)
    poke(ww + 4 * P)
    assert w.VirtualProtect(ww, 3 * P, protect) == (True, w.PAGE_READWRITE)
    info = w.VirtualQuery(ww)
    assert (info.BaseAddress, info.RegionSize, info.State, info.Protect) == (
        ww, 3 * P, w.MEM_COMMIT, protect)
    assert watch(ww) == pages(2, 4)
    assert w.VirtualProtect(ww, 3 * P, w.PAGE_READWRITE) == (True, protect)
    assert watch(ww) == pages(2, 4)
    info = w.VirtualQuery(ww)
    assert (info.RegionSize, info.Protect) == (SIZE, w.PAGE_READWRITE)
    # and the pages protected while clean are still clean
    assert watch(ww, 2 * P) == []


def test_querying_and_reading_are_not_writes(ww):
    for n in range(16):
        assert peek(ww + n * P) == 0
        w.VirtualQuery(ww + n * P)
    assert watch(ww) == []


def test_invalid_parameters_in_windows_order(ww):
    results = np.zeros(64, np.uint64)
    gww = w.GetWriteWatch
    # NULL count first, whatever else is wrong
    assert fails(lambda: gww(0, ww, SIZE, results, None), 998) == (FAILED, None, 0)
    assert fails(lambda: gww(0xDEADBEEF, 0, 0, None, None), 998)[0] == FAILED
    # count 0 / size 0 before the flags and before a NULL buffer
    assert fails(lambda: gww(0, ww, SIZE, results, 0), 87) == (FAILED, 0, 0)
    assert fails(lambda: gww(0, ww, SIZE, None, 0), 87)[0] == FAILED
    assert fails(lambda: gww(0xDEADBEEF, ww, 0, None, 64), 87)[0] == FAILED
    assert fails(lambda: gww(0, ww, 0, results, 64), 87) == (FAILED, 64, 0)
    # unknown flag bits before the NULL buffer
    assert fails(lambda: gww(0xDEADBEEF, ww, SIZE, results, 64), 87)[0] == FAILED
    assert fails(lambda: gww(2, ww, SIZE, None, 64), 87)[0] == FAILED
    # NULL buffer before the range
    assert fails(lambda: gww(0, ww, SIZE, None, 64), 998) == (FAILED, 64, 0)
    assert fails(lambda: gww(0, 0, SIZE, None, 64), 998)[0] == FAILED
    # ranges not inside the allocation
    assert fails(lambda: gww(0, ww, SIZE * 2, results, 64), 87)[0] == FAILED
    assert fails(lambda: gww(0, ww + SIZE - P, P + 1, results, 64), 87)[0] == FAILED
    assert fails(lambda: gww(0, ww + SIZE, 1, results, 64), 87)[0] == FAILED
    assert fails(lambda: gww(0, ww - 1, 2, results, 64), 87)[0] == FAILED
    assert fails(lambda: w.ResetWriteWatch(ww, 0), 87) == FAILED
    assert fails(lambda: w.ResetWriteWatch(ww, SIZE + 1), 87) == FAILED
    assert fails(lambda: w.ResetWriteWatch(0, SIZE), 87) == FAILED


def test_range_is_rounded_to_pages(ww):
    poke(ww + 3 * P)
    assert watch(ww + 3 * P + 100, 1, origin=ww) == pages(3)
    assert watch(ww + 2 * P + 100, P, origin=ww) == pages(3)
    assert watch(ww + 4 * P - 1, 1, origin=ww) == pages(3)
    assert w.ResetWriteWatch(ww + 3 * P + 5, 1) == 0
    assert watch(ww) == []


def test_failure_writes_nothing_and_success_nothing_past_count(ww):
    buf = np.full(64, 0xAB, np.uint64)
    assert w.GetWriteWatch(0, ww, SIZE * 2, buf, 64)[0] == FAILED
    assert (buf == 0xAB).all()
    poke(ww + 5 * P)
    poke(ww + 9 * P)
    assert w.GetWriteWatch(0, ww, SIZE, buf, 64) == (0, 2, P)
    assert list(buf[:2]) == [ww + 5 * P, ww + 9 * P]
    assert (buf[2:] == 0xAB).all()
    buf[:] = 0xAB
    assert w.GetWriteWatch(w.WRITE_WATCH_FLAG_RESET, ww, SIZE, buf, 1) == (0, 1, P)
    assert buf[0] == ww + 5 * P and (buf[1:] == 0xAB).all()


def test_spanning_two_allocations_fails(backend, allocs):
    first = allocs(0, 2 * SIZE, w.MEM_RESERVE, w.PAGE_NOACCESS)
    assert first and w.VirtualFree(first, 0, w.MEM_RELEASE)
    kind = w.MEM_RESERVE | w.MEM_COMMIT | w.MEM_WRITE_WATCH
    a = allocs(first, SIZE, kind, w.PAGE_READWRITE)
    b = allocs(first + SIZE, SIZE, kind, w.PAGE_READWRITE)
    if not (a and b):
        pytest.skip("the address range was taken meanwhile")
    assert (a, b) == (first, first + SIZE)
    poke(a + SIZE - P)
    poke(b)
    results = np.zeros(64, np.uint64)
    assert fails(lambda: w.GetWriteWatch(0, a + SIZE - P, 2 * P, results, 64), 87)[0] == FAILED
    assert fails(lambda: w.ResetWriteWatch(a, 2 * SIZE), 87) == FAILED
    assert watch(a) == pages(15)
    assert watch(b) == pages(0)


def test_reserve_only_write_watch_and_commit_later(backend, allocs):
    assert fails(lambda: w.VirtualAlloc(0, SIZE, w.MEM_WRITE_WATCH, w.PAGE_READWRITE),
                 87) == 0
    base = allocs(0, SIZE, w.MEM_RESERVE | w.MEM_WRITE_WATCH, w.PAGE_READWRITE)
    assert base and w._backend_of(base) == backend
    # reserved pages are never reported, and resetting them is fine
    assert watch(base) == []
    assert w.ResetWriteWatch(base, SIZE) == 0
    # MEM_WRITE_WATCH on a commit (no MEM_RESERVE) is refused
    assert fails(lambda: w.VirtualAlloc(base, P, w.MEM_COMMIT | w.MEM_WRITE_WATCH,
                                        w.PAGE_READWRITE), 87) == 0
    assert w.VirtualAlloc(base + 2 * P, 2 * P, w.MEM_COMMIT, w.PAGE_READWRITE) == base + 2 * P
    assert watch(base) == []                   # committing is not writing
    poke(base + 3 * P)
    assert watch(base) == pages(3)
    assert w.ResetWriteWatch(base, SIZE) == 0
    assert watch(base) == []


def test_initial_protection_does_not_matter(backend, allocs):
    base = allocs(0, SIZE, w.MEM_RESERVE | w.MEM_WRITE_WATCH, w.PAGE_NOACCESS)
    assert base
    assert w.VirtualAlloc(base, SIZE, w.MEM_COMMIT, w.PAGE_NOACCESS) == base
    assert watch(base) == []
    assert w.VirtualProtect(base, 6 * P, w.PAGE_READWRITE) == (True, w.PAGE_NOACCESS)
    poke(base + 5 * P + 200, 3)
    assert w.VirtualProtect(base, 6 * P, w.PAGE_NOACCESS) == (True, w.PAGE_READWRITE)
    assert watch(base) == pages(5)


def test_decommit_clears_written_state_and_recommit_starts_clean(ww):
    for n in (1, 5, 6, 9):
        poke(ww + n * P, 7)
    assert w.VirtualFree(ww + 5 * P, 3 * P, w.MEM_DECOMMIT)
    # decommitted pages drop out, the others stay written; the untouched
    # page 7 in the decommitted range is not reported either (MADV_DONTNEED
    # alone would leave it looking written on the pagemap backend)
    assert watch(ww) == pages(1, 9)
    info = w.VirtualQuery(ww + 5 * P)
    assert (info.RegionSize, info.State, info.Protect) == (3 * P, w.MEM_RESERVE, 0)
    assert w.VirtualAlloc(ww + 4 * P, 4 * P, w.MEM_COMMIT, w.PAGE_READWRITE) == ww + 4 * P
    assert watch(ww) == pages(1, 9)
    assert [peek(ww + n * P) for n in (1, 5, 6, 9)] == [7, 0, 0, 7]
    poke(ww + 6 * P)
    assert watch(ww) == pages(1, 6, 9)


def test_decommit_everything_with_size_zero(ww):
    poke(ww + 3 * P)
    assert w.VirtualFree(ww, 0, w.MEM_DECOMMIT)
    assert watch(ww) == []
    info = w.VirtualQuery(ww)
    assert (info.RegionSize, info.State) == (SIZE, w.MEM_RESERVE)
    assert fails(lambda: w.VirtualFree(ww + P, 0, w.MEM_DECOMMIT), 487) is False


def test_released_allocation_is_no_longer_watched(backend):
    base = w.VirtualAlloc(0, SIZE, w.MEM_RESERVE | w.MEM_COMMIT | w.MEM_WRITE_WATCH,
                          w.PAGE_READWRITE)
    assert base
    assert w.VirtualFree(base, 0, w.MEM_RELEASE)
    results = np.zeros(4, np.uint64)
    assert fails(lambda: w.GetWriteWatch(0, base, SIZE, results, 4), 87)[0] == FAILED
    assert fails(lambda: w.ResetWriteWatch(base, SIZE), 87) == FAILED
    assert w.VirtualQuery(base).State == w.MEM_FREE


def test_plain_allocation_has_no_write_watch(allocs):
    base = allocs(0, SIZE, w.MEM_RESERVE | w.MEM_COMMIT, w.PAGE_READWRITE)
    assert base and w._backend_of(base) is None
    poke(base)
    results = np.zeros(4, np.uint64)
    assert fails(lambda: w.GetWriteWatch(0, base, SIZE, results, 4), 87)[0] == FAILED
    assert fails(lambda: w.ResetWriteWatch(base, SIZE), 87) == FAILED


# -- the caller's buffer ---------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda n: np.zeros(n, np.uint64),
    lambda n: array.array("Q", bytes(8 * n)),
    lambda n: (ctypes.c_uint64 * n)(),
    lambda n: bytearray(8 * n),
], ids=["numpy", "array", "ctypes", "bytearray"])
def test_buffer_kinds(ww, make):
    poke(ww + 7 * P)
    poke(ww + 8 * P)
    buf = make(4)
    assert w.GetWriteWatch(0, ww, SIZE, buf, 4) == (0, 2, P)
    got = np.frombuffer(buf, np.uint64)
    assert list(got) == [ww + 7 * P, ww + 8 * P, 0, 0]


def test_bad_buffers(ww):
    poke(ww)
    assert fails(lambda: w.GetWriteWatch(0, ww, SIZE, bytes(64), 8), 998)[0] == FAILED
    ro = np.zeros(8, np.uint64)
    ro.flags.writeable = False
    assert fails(lambda: w.GetWriteWatch(0, ww, SIZE, ro, 8), 998)[0] == FAILED
    # fewer slots than count
    assert fails(lambda: w.GetWriteWatch(0, ww, SIZE, np.zeros(3, np.uint64), 4), 998) == (
        FAILED, 4, 0)
    with pytest.raises(TypeError):
        w.GetWriteWatch(0, ww, SIZE, [0] * 8, 8)
    with pytest.raises(TypeError):
        w.GetWriteWatch(0, ww, SIZE, np.zeros(16, np.uint64)[::2], 8)
    # nothing was consumed by the failures
    assert watch(ww) == pages(0)


def test_argument_types(ww):
    buf = np.zeros(4, np.uint64)
    with pytest.raises(TypeError):
        w.GetWriteWatch(0, float(ww), SIZE, buf, 4)
    with pytest.raises(TypeError):
        w.GetWriteWatch("0", ww, SIZE, buf, 4)
    with pytest.raises(OverflowError):
        w.GetWriteWatch(0, ww, -1, buf, 4)
    with pytest.raises(OverflowError):
        w.GetWriteWatch(1 << 32, ww, SIZE, buf, 4)
    with pytest.raises(OverflowError):
        w.ResetWriteWatch(ww, 1 << 64)
    with pytest.raises(TypeError):
        w.VirtualAlloc(None, SIZE, w.MEM_COMMIT, w.PAGE_READWRITE)
    with pytest.raises(OverflowError):
        w.VirtualProtect(ww, -5, w.PAGE_READONLY)
    # numpy integers are integers
    poke(ww)
    assert w.GetWriteWatch(np.uint32(0), np.uint64(ww), np.int64(SIZE), buf,
                           np.uint8(4)) == (0, 1, P)


# -- who writes -------------------------------------------------------------

def test_kernel_writes_are_reported(ww, backend, request):
    if backend == "mprotect":
        # the technique's documented limit (see the Region contract suite)
        request.applymarker(pytest.mark.xfail(
            raises=OSError, strict=True,
            reason="mprotect: kernel writes into a clean page fail with EFAULT"))
    r, wfd = os.pipe()
    try:
        os.write(wfd, b"x" * (P + 10))
        target = (ctypes.c_char * (2 * P)).from_address(ww + 3 * P)
        assert os.readv(r, [target]) == P + 10
    finally:
        os.close(r)
        os.close(wfd)
    assert watch(ww) == pages(3, 4)


def test_writes_from_other_threads_are_reported(ww):
    t = threading.Thread(target=lambda: [poke(ww + n * P) for n in (2, 11)])
    t.start()
    t.join()
    assert watch(ww) == pages(2, 11)


def test_get_and_reset_under_concurrent_writes(backend, allocs):
    """Every page is written exactly once while this thread keeps collecting
    with WRITE_WATCH_FLAG_RESET and a small count: each page must be reported
    -- resetting more than was reported (or losing a write to a reset) drops
    pages -- and on pagemap exactly once: reporting without resetting repeats
    them.  The fault-based backends may report a write twice when a get
    catches it in flight (the fault resolved, the store not yet retried:
    this get reports it, re-protects the page, and the retried store faults
    again -- seen under TCG on Linux 6.1), at most once per get, since one
    thread writes (docs/backends.md)."""
    npages = 256
    base = allocs(0, npages * P, w.MEM_RESERVE | w.MEM_COMMIT | w.MEM_WRITE_WATCH,
                  w.PAGE_READWRITE)
    assert base
    done = threading.Event()

    def writer():
        for n in range(npages):
            poke(base + n * P)
        done.set()

    seen = []
    gets = 0
    t = threading.Thread(target=writer)
    t.start()
    while True:
        finished = done.is_set()
        seen += watch(base, npages * P, w.WRITE_WATCH_FLAG_RESET, count=7)
        gets += not finished
        if finished and len(seen) >= npages:
            break
        if finished and not watch(base, npages * P):
            break
    t.join()
    assert sorted(set(seen)) == pages(*range(npages))
    if backend == "pagemap":
        assert sorted(seen) == pages(*range(npages))
    else:
        assert len(seen) - npages <= gets, (len(seen), npages, gets)

def test_last_error_is_per_thread():
    w.SetLastError(1234)
    seen = {}

    def other():
        seen["initial"] = w.GetLastError()
        w.VirtualAlloc(0, 0, w.MEM_RESERVE, w.PAGE_READWRITE)
        seen["after"] = w.GetLastError()

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == {"initial": 0, "after": 87}
    assert w.GetLastError() == 1234
    w.SetLastError(0xDEADBEEF)
    assert w.GetLastError() == 0xDEADBEEF


# -- backend choice ----------------------------------------------------------

def test_backend_is_read_when_allocating(monkeypatch, allocs):
    kind = w.MEM_RESERVE | w.MEM_COMMIT | w.MEM_WRITE_WATCH
    monkeypatch.setenv("WRITEWATCH_BACKEND", "no-such-backend")
    with pytest.raises(ValueError):
        w.VirtualAlloc(0, SIZE, kind, w.PAGE_READWRITE)
    made = {}
    for info in BACKEND_INFO.values():
        monkeypatch.setenv("WRITEWATCH_BACKEND", info.name)
        w.SetLastError(0)
        base = allocs(0, SIZE, kind, w.PAGE_READWRITE)
        if info.available:
            assert base and w._backend_of(base) == info.name
            made[info.name] = base
        else:
            assert base == 0 and w.GetLastError() == w.ERROR_NOT_SUPPORTED
    # each allocation keeps its own backend
    for name, base in made.items():
        assert w._backend_of(base) == name
        poke(base + P)
        assert watch(base) == pages(1)


# -- VirtualAlloc / VirtualFree / VirtualProtect / VirtualQuery --------------

def test_virtual_alloc_reserve_commit_protect_free(allocs):
    assert fails(lambda: w.VirtualAlloc(0, 0, w.MEM_RESERVE, w.PAGE_NOACCESS), 87) == 0
    base = allocs(0, 0xFFFC, w.MEM_RESERVE, w.PAGE_NOACCESS)
    assert base and base % w.ALLOCATION_GRANULARITY == 0
    assert w.VirtualQuery(base) == w.MEMORY_BASIC_INFORMATION(
        base, base, w.PAGE_NOACCESS, 0x10000, w.MEM_RESERVE, 0, w.MEM_PRIVATE)
    assert fails(lambda: w.VirtualProtect(base, 0xFFFC, w.PAGE_READONLY), 487) == (False, 0)

    assert w.VirtualAlloc(base, 0x1000, w.MEM_COMMIT, w.PAGE_NOACCESS) == base
    assert w.VirtualQuery(base) == w.MEMORY_BASIC_INFORMATION(
        base, base, w.PAGE_NOACCESS, 0x1000, w.MEM_COMMIT, w.PAGE_NOACCESS, w.MEM_PRIVATE)
    info = w.VirtualQuery(base + 0x1000)
    assert (info.BaseAddress, info.RegionSize, info.State) == (
        base + 0x1000, 0xF000, w.MEM_RESERVE)
    # not the whole range is committed
    assert fails(lambda: w.VirtualProtect(base, 0xFFFC, w.PAGE_READONLY), 487) == (False, 0)
    assert w.VirtualProtect(base, 0x1000, w.PAGE_READONLY) == (True, w.PAGE_NOACCESS)
    assert w.VirtualProtect(base, 0x1000, w.PAGE_READWRITE) == (True, w.PAGE_READONLY)
    ctypes.memset(base, 0x55, 20)
    assert ctypes.c_uint32.from_address(base).value == 0x55555555

    # MEM_RESET: over committed and reserved pages fine, past the end not
    assert w.VirtualAlloc(base, 0x1000, w.MEM_RESET, w.PAGE_NOACCESS) == base
    assert w.VirtualAlloc(base + 0x1000, 0x1000, w.MEM_RESET, w.PAGE_NOACCESS) == base + 0x1000
    assert fails(lambda: w.VirtualAlloc(base + 0xF000, 0x2000, w.MEM_RESET,
                                        w.PAGE_NOACCESS), 487) == 0
    assert fails(lambda: w.VirtualAlloc(base, 0x1000, w.MEM_RESET | w.MEM_COMMIT,
                                        w.PAGE_NOACCESS), 87) == 0
    # flags VirtualAlloc does not take (AT_ROUND_TO_PAGE, MEM_LARGE_PAGES,
    # MEM_PHYSICAL, MEM_DECOMMIT) and no type at all
    for bad in (0x40000000, 0x20000000, 0x400000, w.MEM_DECOMMIT, 0):
        assert fails(lambda: w.VirtualAlloc(0, 0x1000, w.MEM_RESERVE | w.MEM_COMMIT | bad
                                            if bad else 0, w.PAGE_READWRITE), 87) == 0

    # invalid protections
    assert fails(lambda: w.VirtualAlloc(0, 0x1000, w.MEM_RESERVE, 0), 87) == 0
    assert fails(lambda: w.VirtualAlloc(0, 0x1000, w.MEM_COMMIT, 0), 87) == 0
    assert fails(lambda: w.VirtualAlloc(base, 0x1000, w.MEM_COMMIT,
                                        w.PAGE_READONLY | w.PAGE_EXECUTE), 87) == 0
    assert fails(lambda: w.VirtualProtect(base, 0x1000, w.PAGE_READWRITE |
                                          w.PAGE_EXECUTE_WRITECOPY), 87) == (False, 0)
    assert fails(lambda: w.VirtualProtect(base, 0x1000, 0), 87) == (False, 0)

    # VirtualFree's checks
    assert fails(lambda: w.VirtualFree(base, 0x10000, 0), 87) is False
    assert fails(lambda: w.VirtualFree(base, 0, w.MEM_FREE), 87) is False
    assert fails(lambda: w.VirtualFree(base, 0, w.MEM_DECOMMIT | w.MEM_RELEASE), 87) is False
    assert w.VirtualFree(base, 0x10000, w.MEM_DECOMMIT) is True
    assert fails(lambda: w.VirtualFree(base, 1, w.MEM_RELEASE), 87) is False
    assert fails(lambda: w.VirtualFree(base + P, 0, w.MEM_RELEASE), 487) is False
    assert fails(lambda: w.VirtualFree(base, 0x20000, w.MEM_DECOMMIT), 487) is False
    assert w.VirtualFree(base, 0, w.MEM_RELEASE) is True
    assert fails(lambda: w.VirtualFree(base, 0, w.MEM_RELEASE), 487) is False
    assert w.VirtualQuery(base).State == w.MEM_FREE


def test_alignment_and_conflicts(allocs):
    base = allocs(0, 0x2000, w.MEM_RESERVE | w.MEM_COMMIT, w.PAGE_EXECUTE_READWRITE)
    assert base and base % 0x10000 == 0
    assert w.VirtualFree(base, 0, w.MEM_RELEASE)
    again = allocs(base, 0x1000, w.MEM_RESERVE | w.MEM_COMMIT, w.PAGE_EXECUTE_READWRITE)
    if again == 0:
        pytest.skip("the address was taken meanwhile")
    assert again == base
    # a reservation inside the same 64 KiB conflicts
    assert fails(lambda: w.VirtualAlloc(base + 0x1000, 0x1000, w.MEM_RESERVE | w.MEM_COMMIT,
                                        w.PAGE_READWRITE), 487) == 0
    # an unaligned explicit address is rounded down to the granularity
    assert fails(lambda: w.VirtualAlloc(base + 0x8000, 0x1000, w.MEM_RESERVE,
                                        w.PAGE_READWRITE), 487) == 0
    # commit outside the reservation, or running past its end
    assert fails(lambda: w.VirtualAlloc(base + 0x1000, 0x1000, w.MEM_COMMIT,
                                        w.PAGE_READWRITE), 487) == 0
    assert fails(lambda: w.VirtualAlloc(base, 0x2000, w.MEM_COMMIT, w.PAGE_READWRITE), 487) == 0
    # memory mapped by someone else
    foreign = np.zeros(4 * SIZE, np.uint8)
    at = (foreign.ctypes.data + SIZE) & ~0xFFFF
    assert fails(lambda: w.VirtualAlloc(at, P, w.MEM_RESERVE, w.PAGE_READWRITE), 487) == 0
    assert fails(lambda: w.VirtualAlloc(at, P, w.MEM_COMMIT, w.PAGE_READWRITE), 487) == 0
    assert fails(lambda: w.VirtualFree(at, 0, w.MEM_RELEASE), 487) is False
    assert fails(lambda: w.VirtualProtect(at, P, w.PAGE_READONLY), 487) == (False, 0)
    # beyond the user address space
    assert fails(lambda: w.VirtualAlloc(1 << 48, P, w.MEM_RESERVE, w.PAGE_READWRITE), 87) == 0


def test_unaligned_reserve_returns_the_rounded_base(allocs):
    probe = allocs(0, 2 * SIZE, w.MEM_RESERVE, w.PAGE_NOACCESS)
    assert probe and w.VirtualFree(probe, 0, w.MEM_RELEASE)
    base = allocs(probe + 0x1234, 0x3000, w.MEM_RESERVE | w.MEM_COMMIT, w.PAGE_READWRITE)
    if base == 0:
        pytest.skip("the address was taken meanwhile")
    assert base == probe
    info = w.VirtualQuery(base)
    # from the 64 KiB base to the end of the last page touched
    assert info.RegionSize == 0x5000 and info.State == w.MEM_COMMIT


PROTECTIONS = [w.PAGE_NOACCESS, w.PAGE_READONLY, w.PAGE_READWRITE, w.PAGE_EXECUTE,
               w.PAGE_EXECUTE_READ, w.PAGE_EXECUTE_READWRITE]


@pytest.mark.parametrize("protect", range(0x100))
def test_protection_table(protect, allocs):
    """Like Wine's test_VirtualAlloc_protection: exactly the six plain
    protections are accepted; combinations and write-copy are not."""
    w.SetLastError(0xDEADBEEF)
    base = allocs(0, P, w.MEM_COMMIT, protect)
    if protect in PROTECTIONS:
        assert base, w.GetLastError()
        info = w.VirtualQuery(base)
        assert (info.Protect, info.AllocationProtect, info.State, info.RegionSize) == (
            protect, protect, w.MEM_COMMIT, P)
        assert w.VirtualAlloc(base, P, w.MEM_COMMIT, protect) == base
    else:
        assert base == 0 and w.GetLastError() == 87
    # the same table for VirtualProtect
    if protect in PROTECTIONS:
        assert w.VirtualProtect(base, P, w.PAGE_NOACCESS) == (True, protect)
    else:
        other = allocs(0, P, w.MEM_COMMIT, w.PAGE_NOACCESS)
        assert fails(lambda: w.VirtualProtect(other, P, protect), 87) == (False, 0)
        assert w.VirtualQuery(other).Protect == w.PAGE_NOACCESS
    for bits in (w.PAGE_GUARD, w.PAGE_NOCACHE, w.PAGE_WRITECOMBINE):
        assert fails(lambda: w.VirtualAlloc(0, P, w.MEM_COMMIT, w.PAGE_READWRITE | bits),
                     87) == 0


def _maps_perms(address):
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return line.split()[1][:3]
    return None


EXPECTED_PERMS = {w.PAGE_NOACCESS: "---", w.PAGE_READONLY: "r--", w.PAGE_READWRITE: "rw-",
                  w.PAGE_EXECUTE: "--x", w.PAGE_EXECUTE_READ: "r-x",
                  w.PAGE_EXECUTE_READWRITE: "rwx"}


def _check_protections_reach_the_kernel(base, write_may_be_withheld):
    assert _maps_perms(base) == "---"        # reserved memory is inaccessible
    assert w.VirtualAlloc(base, P, w.MEM_COMMIT, w.PAGE_NOACCESS) == base
    for protect, perms in EXPECTED_PERMS.items():
        assert w.VirtualProtect(base, P, protect)[0]
        got = _maps_perms(base)
        if write_may_be_withheld and perms[1] == "w" and got[1] == "-":
            got = perms      # the backend write-protects clean pages itself
        assert got == perms, (hex(protect), got)
    assert w.VirtualFree(base, P, w.MEM_DECOMMIT)
    assert _maps_perms(base) == "---"


def test_protections_reach_the_kernel_plain(allocs):
    base = allocs(0, SIZE, w.MEM_RESERVE, w.PAGE_READWRITE)
    assert base
    _check_protections_reach_the_kernel(base, False)


def test_protections_reach_the_kernel_write_watch(backend, allocs):
    base = allocs(0, SIZE, w.MEM_RESERVE | w.MEM_WRITE_WATCH, w.PAGE_READWRITE)
    assert base
    _check_protections_reach_the_kernel(base, backend == "mprotect")


def test_commit_keeps_contents_and_sets_protection(allocs):
    base = allocs(0, SIZE, w.MEM_RESERVE | w.MEM_COMMIT, w.PAGE_READWRITE)
    poke(base + 10, 9)
    assert w.VirtualAlloc(base, 2 * P, w.MEM_COMMIT, w.PAGE_READONLY) == base
    assert peek(base + 10) == 9
    info = w.VirtualQuery(base)
    assert (info.Protect, info.RegionSize) == (w.PAGE_READONLY, 2 * P)
    # the commit call returns the page-rounded address
    assert w.VirtualAlloc(base + 2 * P + 5, 1, w.MEM_COMMIT, w.PAGE_READWRITE) == base + 2 * P


def test_query_free_foreign_and_out_of_range():
    info = w.VirtualQuery(0)
    assert (info.BaseAddress, info.State, info.AllocationBase, info.Type) == (
        0, w.MEM_FREE, 0, 0)
    assert info.RegionSize > 0
    heap = np.ones(4 * P, np.uint8)
    info = w.VirtualQuery(heap.ctypes.data + P)
    assert info.State == w.MEM_COMMIT and info.Protect == w.PAGE_READWRITE
    assert info.BaseAddress == (heap.ctypes.data + P) & ~(P - 1)
    assert fails(lambda: w.VirtualQuery(w.MAXIMUM_APPLICATION_ADDRESS + 1), 87) is None
    assert fails(lambda: w.VirtualQuery((1 << 64) - 1), 87) is None


def test_query_runs_do_not_split_on_write_state(ww):
    poke(ww + 3 * P)
    assert w.VirtualProtect(ww + 8 * P, 2 * P, w.PAGE_READONLY)[0]
    assert w.VirtualFree(ww + 12 * P, P, w.MEM_DECOMMIT)
    runs = []
    at = ww
    while at < ww + SIZE:
        info = w.VirtualQuery(at)
        runs.append((info.BaseAddress - ww, info.RegionSize, info.State, info.Protect))
        at += info.RegionSize
    assert runs == [(0, 8 * P, w.MEM_COMMIT, w.PAGE_READWRITE),
                    (8 * P, 2 * P, w.MEM_COMMIT, w.PAGE_READONLY),
                    (10 * P, 2 * P, w.MEM_COMMIT, w.PAGE_READWRITE),
                    (12 * P, P, w.MEM_RESERVE, 0),
                    (13 * P, 3 * P, w.MEM_COMMIT, w.PAGE_READWRITE)]
    assert w.VirtualQuery(ww + 5 * P + 7).BaseAddress == ww + 5 * P
    assert w.VirtualQuery(ww + 5 * P).RegionSize == 3 * P


def test_reserved_memory_faults():
    """Touching reserved or decommitted memory is an access violation
    (SIGSEGV here), as on Windows: run where a crash harms nobody."""
    p = run_python("""
        import ctypes, sys
        from writewatch import win32 as w
        base = w.VirtualAlloc(0, 0x10000, w.MEM_RESERVE | w.MEM_COMMIT, w.PAGE_READWRITE)
        assert w.VirtualFree(base + 0x2000, 0x1000, w.MEM_DECOMMIT)
        ctypes.c_uint8.from_address(base + 0x1000).value = 1   # committed: fine
        sys.stdout.write("ok\\n"); sys.stdout.flush()
        ctypes.c_uint8.from_address(base + 0x2000).value = 1   # decommitted
        sys.stdout.write("not reached\\n")
    """, returncode=-signal.SIGSEGV)
    assert p.stdout == "ok\n", output(p)


def test_ctypes_buffer_over_inaccessible_pages_of_ours_is_noaccess(ww, allocs):
    """A guest pointer into reserved, decommitted or read-only memory of a
    VirtualAlloc'd block: ERROR_NOACCESS, as Windows, not a crash."""
    poke(ww)
    other = allocs(0, SIZE, w.MEM_RESERVE, w.PAGE_READWRITE)
    assert w.VirtualAlloc(other, P, w.MEM_COMMIT, w.PAGE_READWRITE) == other
    inside = (ctypes.c_void_p * 8).from_address(other + P)            # reserved
    assert fails(lambda: w.GetWriteWatch(0, ww, SIZE, inside, 8), 998) == (FAILED, 8, 0)
    straddle = (ctypes.c_void_p * 8).from_address(other + P - 16)     # runs into it
    assert fails(lambda: w.GetWriteWatch(0, ww, SIZE, straddle, 8), 998)[0] == FAILED
    assert w.VirtualProtect(other, P, w.PAGE_READONLY) == (True, w.PAGE_READWRITE)
    ro = (ctypes.c_void_p * 8).from_address(other)
    assert fails(lambda: w.GetWriteWatch(0, ww, SIZE, ro, 8), 998)[0] == FAILED
    assert w.VirtualProtect(other, P, w.PAGE_READWRITE)[0]
    ok = (ctypes.c_void_p * 8).from_address(other + P - 64)
    assert w.GetWriteWatch(0, ww, SIZE, ok, 8) == (0, 1, P)
    assert ok[0] == ww
    # the results may live in the watched block itself (the write is seen)
    assert w.GetWriteWatch(w.WRITE_WATCH_FLAG_RESET, ww, SIZE, ok, 8) == (0, 1, P)
    into_self = (ctypes.c_void_p * 8).from_address(ww + 5 * P)
    assert w.GetWriteWatch(0, ww, SIZE, into_self, 8) == (0, 0, P)
    assert watch(ww) == []                  # nothing written, nothing stored
    poke(ww)
    result, n, _ = w.GetWriteWatch(w.WRITE_WATCH_FLAG_RESET, ww, SIZE, into_self, 8)
    assert result == 0
    got = [into_self[i] - ww for i in range(n)]
    # storing the result was a write: seen by this call (a backend whose
    # fault handler runs during the scan) or by the next one, never lost
    assert got in (pages(0), pages(0, 5))
    assert watch(ww) == ([] if got == pages(0, 5) else pages(5))


def test_mem_top_down_is_accepted(allocs):
    base = allocs(0, SIZE, w.MEM_RESERVE | w.MEM_COMMIT | w.MEM_TOP_DOWN, w.PAGE_READWRITE)
    assert base and w.VirtualQuery(base).State == w.MEM_COMMIT


def test_release_while_other_threads_watch(backend):
    """GetWriteWatch racing VirtualFree(MEM_RELEASE): each call either
    succeeds or fails with ERROR_INVALID_PARAMETER, never anything worse."""
    for _ in range(20):
        base = w.VirtualAlloc(0, SIZE, w.MEM_RESERVE | w.MEM_COMMIT | w.MEM_WRITE_WATCH,
                              w.PAGE_READWRITE)
        assert base
        poke(base + P)
        outcomes = []
        stop = threading.Event()

        def watcher():
            buf = np.zeros(16, np.uint64)
            while not stop.is_set():
                result, n, _ = w.GetWriteWatch(0, base, SIZE, buf, 16)
                outcomes.append(result if result == 0 else w.GetLastError())

        threads = [threading.Thread(target=watcher) for _ in range(2)]
        for t in threads:
            t.start()
        while not outcomes:
            pass
        assert w.VirtualFree(base, 0, w.MEM_RELEASE)
        stop.set()
        for t in threads:
            t.join()
        assert set(outcomes) <= {0, w.ERROR_INVALID_PARAMETER}


def test_sizes_past_the_address_space(allocs):
    assert fails(lambda: w.VirtualAlloc(0, 1 << 48, w.MEM_RESERVE, w.PAGE_NOACCESS),
                 w.ERROR_NOT_ENOUGH_MEMORY) == 0
    assert fails(lambda: w.VirtualAlloc(0, (1 << 64) - 1, w.MEM_RESERVE | w.MEM_WRITE_WATCH,
                                        w.PAGE_NOACCESS), w.ERROR_NOT_ENOUGH_MEMORY) == 0
    assert fails(lambda: w.VirtualAlloc(0, P, w.MEM_RESET, w.PAGE_NOACCESS), 87) == 0


def _mapping_count():
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def test_failed_allocations_leave_no_mappings(monkeypatch):
    kind = w.MEM_RESERVE | w.MEM_COMMIT | w.MEM_WRITE_WATCH
    before = _mapping_count()
    monkeypatch.setenv("WRITEWATCH_BACKEND", "no-such-backend")
    for _ in range(20):
        with pytest.raises(ValueError):
            w.VirtualAlloc(0, SIZE, kind, w.PAGE_READWRITE)
    unavailable = [name for name in BACKENDS if name not in AVAILABLE]
    if unavailable:
        monkeypatch.setenv("WRITEWATCH_BACKEND", unavailable[0])
        for _ in range(20):
            assert fails(lambda: w.VirtualAlloc(0, SIZE, kind, w.PAGE_READWRITE),
                         w.ERROR_NOT_SUPPORTED) == 0
    assert _mapping_count() <= before + 2     # slack for the allocator's own arenas


def test_forked_child_cannot_watch_and_parent_stays_exact(backend):
    """After fork() the child may write its copy but its write-watch calls
    raise ForkedRegionError; the parent's answers are not disturbed."""
    p = run_python("""
        import ctypes, os, sys
        import numpy as np
        import writewatch
        from writewatch import win32 as w
        P = w.PAGE_SIZE
        base = w.VirtualAlloc(0, 16 * P, w.MEM_RESERVE | w.MEM_COMMIT | w.MEM_WRITE_WATCH,
                              w.PAGE_READWRITE)
        assert base and w._backend_of(base) == sys.argv[1]
        ctypes.c_uint8.from_address(base + P).value = 1
        pid = os.fork()
        if pid == 0:
            ctypes.c_uint8.from_address(base + 7 * P).value = 1
            try:
                w.GetWriteWatch(0, base, 16 * P, np.zeros(16, np.uint64), 16)
            except writewatch.ForkedRegionError:
                os._exit(0)
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        ctypes.c_uint8.from_address(base + 3 * P).value = 1
        buf = np.zeros(16, np.uint64)
        rc, n, _ = w.GetWriteWatch(0, base, 16 * P, buf, 16)
        assert (rc, [int(a) - base for a in buf[:n]]) == (0, [P, 3 * P]), (rc, buf[:n])
        print("ok")
    """, argv=[backend], env={"WRITEWATCH_BACKEND": backend}, timeout=120)
    assert p.stdout == "ok\n", output(p)


def test_numpy_view_over_our_decommitted_page_is_refused(backend, monkeypatch):
    """Any buffer type laid over a decommitted page of ours gets 998 (writing
    through it would crash), not only ctypes arrays; an impossible count is
    998 too, never an exception."""
    monkeypatch.setenv("WRITEWATCH_BACKEND", backend)
    base = w.VirtualAlloc(0, 0x20000, w.MEM_RESERVE | w.MEM_COMMIT | w.MEM_WRITE_WATCH,
                          w.PAGE_READWRITE)
    assert base
    try:
        ctypes.c_uint8.from_address(base + 0x1000).value = 1
        arr = np.ctypeslib.as_array((ctypes.c_uint64 * 16).from_address(base + 0x10000))
        assert w.VirtualFree(base + 0x10000, 0x10000, w.MEM_DECOMMIT)
        assert w.GetWriteWatch(0, base, 0x10000, arr, 16) == (0xFFFFFFFF, 16, 0)
        assert w.GetLastError() == w.ERROR_NOACCESS
        for count in (1 << 63, (1 << 64) - 1):
            res = w.GetWriteWatch(0, base, 0x10000, np.zeros(4, np.uint64), count)
            assert res == (0xFFFFFFFF, count, 0) and w.GetLastError() == w.ERROR_NOACCESS
        out = np.zeros(4, np.uint64)
        assert w.GetWriteWatch(0, base, 0x10000, out, 4)[:2] == (0, 1)
    finally:
        assert w.VirtualFree(base, 0, w.MEM_RELEASE)


def test_release_refused_while_a_view_is_alive_keeps_the_allocation(backend, monkeypatch):
    monkeypatch.setenv("WRITEWATCH_BACKEND", backend)
    base = w.VirtualAlloc(0, 0x10000, w.MEM_RESERVE | w.MEM_COMMIT | w.MEM_WRITE_WATCH,
                          w.PAGE_READWRITE)
    view = memoryview(w._tab.find(base).region)
    with pytest.raises(BufferError):
        w.VirtualFree(base, 0, w.MEM_RELEASE)
    assert w.VirtualQuery(base).State == w.MEM_COMMIT
    view.release()
    assert w.VirtualFree(base, 0, w.MEM_RELEASE)
    assert w.VirtualQuery(base).State == w.MEM_FREE
