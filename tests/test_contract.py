"""The Region contract, run against every backend (numpy.random's
test_direct pattern).  Ground truth is what each test wrote."""

import gc
import os
import random
import threading

import numpy as np
import pytest

import writewatch
from helpers import PAGE, output, page_indexes, run_python, write_pages, written


# -- basics -------------------------------------------------------------------

def test_fresh_region_reports_nothing(make_region):
    r = make_region(64)
    assert r.size == 64 * PAGE
    assert r.page_size == PAGE
    assert r.address % PAGE == 0
    assert r.backend in [b.name for b in writewatch.backends() if b.available]
    res = r.get_write_watch()
    assert isinstance(res, np.ndarray) and res.dtype == np.uint64 and len(res) == 0


def test_size_rounds_up_and_memory_is_zeroed(backend):
    with writewatch.Region(PAGE * 3 + 1, backend=backend) as r:
        assert r.size == 4 * PAGE
        assert bytes(memoryview(r)[: 4 * PAGE]) == bytes(4 * PAGE)
        assert written(r) == []  # reading is not writing


@pytest.mark.parametrize("seed", range(5))
def test_random_page_sets(make_region, seed):
    rng = random.Random(seed)
    n = 300
    r = make_region(n)
    for _ in range(4):
        pages = set(rng.sample(range(n), rng.randrange(1, n)))
        write_pages(r, pages)
        assert written(r) == sorted(pages)
        assert written(r, reset=True) == sorted(pages)
        assert written(r) == []


def test_results_are_absolute_ascending_addresses(make_region):
    r = make_region(16)
    write_pages(r, [9, 3, 12])
    res = r.get_write_watch()
    assert list(res) == [r.address + p * PAGE for p in (3, 9, 12)]


def test_write_straddling_two_pages_marks_both(make_region):
    r = make_region(8)
    view = np.frombuffer(r, dtype=np.uint8)
    view[3 * PAGE - 2: 3 * PAGE + 2] = 7
    del view
    assert written(r) == [2, 3]


def test_reset_write_watch(make_region):
    r = make_region(32)
    write_pages(r, range(32))
    r.reset_write_watch(r.address + 8 * PAGE, 8 * PAGE)
    assert written(r) == list(range(8)) + list(range(16, 32))
    r.reset_write_watch()
    assert written(r) == []
    write_pages(r, [5])  # re-armed pages catch the next write
    assert written(r) == [5]


def test_data_survives_tracking(make_region):
    r = make_region(4)
    view = np.frombuffer(r, dtype=np.uint64)
    view[:] = np.arange(len(view), dtype=np.uint64)
    r.get_write_watch(reset=True)
    r.reset_write_watch()
    assert (view == np.arange(len(view), dtype=np.uint64)).all()
    del view


# -- ranges and rounding --------------------------------------------------------

def test_subrange_queries_touch_only_their_range(make_region):
    r = make_region(64)
    write_pages(r, [0, 10, 20, 30, 63])
    assert written(r, address=r.address + 10 * PAGE, size=11 * PAGE, reset=True) == [10, 20]
    assert written(r) == [0, 30, 63]


def test_unaligned_range_rounds_out(make_region):
    r = make_region(16)
    write_pages(r, [3, 4, 5, 6])
    # [3.5 pages, 5.25 pages) covers pages 3, 4 and 5
    res = written(r, address=r.address + 3 * PAGE + PAGE // 2, size=PAGE + PAGE // 2 + PAGE // 4)
    assert res == [3, 4, 5]
    # one byte inside page 6
    assert written(r, address=r.address + 6 * PAGE + 100, size=1) == [6]


def test_address_without_size_runs_to_the_end(make_region):
    r = make_region(16)
    write_pages(r, [1, 14])
    assert written(r, address=r.address + 2 * PAGE) == [14]


# -- max_count and out -----------------------------------------------------------

def test_max_count_resets_only_the_reported_prefix(make_region):
    r = make_region(100)
    pages = [2, 3, 4, 50, 51, 90, 99]
    write_pages(r, pages)
    assert written(r, max_count=3, reset=True) == [2, 3, 4]
    assert written(r, max_count=1) == [50]
    assert written(r, max_count=100, reset=True) == [50, 51, 90, 99]
    assert written(r) == []


def test_max_count_inside_a_run(make_region):
    r = make_region(64)
    write_pages(r, range(10, 40))
    assert written(r, max_count=5, reset=True) == list(range(10, 15))
    assert written(r) == list(range(15, 40))


def test_max_count_exactly_on_last_written_page(make_region):
    r = make_region(4096)
    write_pages(r, range(16))
    assert written(r, max_count=16, reset=True) == list(range(16))
    assert written(r) == []


def test_out_buffer(make_region):
    r = make_region(64)
    write_pages(r, [1, 2, 40])
    out = np.full(8, 0xDEAD, dtype=np.uint64)
    res = r.get_write_watch(out=out)
    assert res.base is out or np.shares_memory(res, out)
    assert page_indexes(r, res) == [1, 2, 40]
    assert (out[3:] == 0xDEAD).all()  # nothing past the count is written


def test_out_shorter_than_result_limits_like_max_count(make_region):
    r = make_region(64)
    write_pages(r, [1, 2, 3, 40])
    out = np.zeros(2, dtype=np.uint64)
    assert page_indexes(r, r.get_write_watch(out=out, reset=True)) == [1, 2]
    assert page_indexes(r, r.get_write_watch(out=out, max_count=1)) == [3]
    assert written(r) == [3, 40]


@pytest.mark.parametrize("bad, exc", [
    (np.zeros(4, dtype=np.int64), TypeError),
    (np.zeros(4, dtype=np.float64), TypeError),
    ([0, 0, 0], TypeError),
    (bytearray(32), TypeError),
    (np.zeros((2, 2), dtype=np.uint64), ValueError),
    (np.zeros(8, dtype=np.uint64)[::2], ValueError),
    (np.zeros(0, dtype=np.uint64), ValueError),
])
def test_bad_out(make_region, bad, exc):
    r = make_region(8)
    write_pages(r, [1])
    with pytest.raises(exc):
        r.get_write_watch(out=bad, reset=True)
    assert written(r) == [1]  # the failed call changed nothing


def test_read_only_out(make_region):
    r = make_region(8)
    write_pages(r, [1])
    out = np.zeros(4, dtype=np.uint64)
    out.flags.writeable = False
    with pytest.raises(ValueError):
        r.get_write_watch(out=out, reset=True)
    assert written(r) == [1]


# -- many runs, big and sparse regions -----------------------------------------------

def test_more_runs_than_any_internal_buffer(backend, make_region):
    # every other page: as many separate runs as written pages
    n = 1 << 17 if backend != "mprotect" else 1 << 14
    r = make_region(n)
    view = np.frombuffer(r, dtype=np.uint8)
    view[::2 * PAGE] = 1
    del view
    expect = np.arange(0, n, 2, dtype=np.uint64) * PAGE + r.address
    res = r.get_write_watch(reset=True)
    assert np.array_equal(res, expect)
    assert len(r.get_write_watch()) == 0


def _rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def test_sparse_region_of_several_gib(backend):
    if backend == "softdirty":
        pytest.skip("softdirty is exercised on small regions only")
    before = _rss_kib()
    with writewatch.Region(6 << 30, backend=backend) as r:
        pages = [0, 1, (3 << 30) // PAGE, (6 << 30) // PAGE - 1]
        write_pages(r, pages)
        assert written(r, reset=True) == pages
        assert written(r) == []
        grown = _rss_kib() - before
    assert grown < 64 * 1024, "RSS grew by %d KiB for 4 written pages" % grown


def test_several_regions_at_once(make_region):
    regions = [make_region(16) for _ in range(8)]
    for i, r in enumerate(regions):
        write_pages(r, [i, 15 - i])
    for i, r in enumerate(regions):
        assert written(r, reset=True) == sorted({i, 15 - i})
    for r in regions:
        assert written(r) == []


# -- threads and kernel writes ---------------------------------------------------

def test_writer_threads_lose_nothing_against_get_and_reset(make_region):
    n = 256
    r = make_region(n)
    view = np.frombuffer(r, dtype=np.uint64)
    per_page = PAGE // 8
    stop = threading.Event()
    writes = [0] * n          # writes made to each page (writer k owns pages k mod 4)

    def writer(k):
        rng = random.Random(k)
        seq = 0
        while not stop.is_set():
            p = rng.randrange(k, n, 4)
            seq += 1
            view[p * per_page] = seq
            writes[p] += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    reported = set()
    for _ in range(300):
        reported.update(written(r, reset=True))
    stop.set()
    for t in threads:
        t.join()
    reported.update(written(r, reset=True))
    del view
    touched = {p for p in range(n) if writes[p]}
    assert reported == touched


def test_writes_racing_resets_are_reported_once_or_later(make_region):
    """A write made after a reset returned is always seen by a later get."""
    r = make_region(8)
    view = np.frombuffer(r, dtype=np.uint8)
    for i in range(2000):
        r.get_write_watch(reset=True)
        view[(i % 8) * PAGE] = i & 0xFF
        assert (i % 8) in written(r)
    del view


def test_kernel_writes_are_tracked(backend, make_region, request):
    if backend == "mprotect":
        # A documented limit of the technique, shown in test_mprotect.py.
        request.applymarker(pytest.mark.xfail(
            raises=OSError, strict=True,
            reason="mprotect: kernel writes into a clean page fail with EFAULT"))
    r = make_region(8)
    rfd, wfd = os.pipe()
    try:
        os.write(wfd, b"x" * (PAGE + 10))
        mv = memoryview(r)
        # readv into pages 2 and 3 (straddling the boundary by 10 bytes)
        n = os.readv(rfd, [mv[2 * PAGE: 3 * PAGE + 10]])
        mv.release()
    finally:
        os.close(rfd)
        os.close(wfd)
    assert n == PAGE + 10
    assert written(r) == [2, 3]


def test_methods_from_several_threads(make_region):
    r = make_region(64)
    errors = []

    def worker(k):
        try:
            for i in range(200):
                write_pages(r, [(k * 16 + i) % 64])
                r.get_write_watch(reset=(i % 2 == 0), max_count=5)
                r.reset_write_watch(r.address + k * 16 * PAGE, 16 * PAGE)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    r.reset_write_watch()
    write_pages(r, [7])
    assert written(r) == [7]


# -- fork -------------------------------------------------------------------------

FORK_SCRIPT = r"""
import os, sys, numpy as np, writewatch
P = writewatch.PAGE_SIZE
r = writewatch.Region(16 * P, backend=sys.argv[1])
v = np.frombuffer(r, dtype=np.uint8)
v[1 * P] = 1                      # written before fork
v[2 * P] = 1
r.get_write_watch(address=r.address + 2 * P, size=P, reset=True)   # page 2 re-armed
pid = os.fork()
if pid == 0:
    try:
        v[:] = 9                  # the child writes its copy freely
        try:
            r.get_write_watch()
            os._exit(3)           # must not be usable in the child
        except writewatch.ForkedRegionError:
            pass
        del v
        r.close()
        os._exit(0)
    except BaseException:
        os._exit(4)
_, status = os.waitpid(pid, 0)
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
assert int(v[5 * P]) == 0         # the child's writes stayed in the child
got = [(int(a) - r.address) // P for a in r.get_write_watch()]
assert got == [1], got
v[3 * P] = 1                      # copy-on-write page in the parent
v[1 * P] = 2
got = [(int(a) - r.address) // P for a in r.get_write_watch(reset=True)]
assert got == [1, 3], got
assert len(r.get_write_watch()) == 0
print("ok")
"""


def test_fork_child_writes_freely_parent_stays_exact(backend):
    p = run_python(FORK_SCRIPT, argv=[backend], timeout=60)
    assert p.stdout.strip() == "ok", output(p)


# -- buffer views and close ---------------------------------------------------------

def test_memoryview_and_numpy_views_are_zero_copy(make_region):
    r = make_region(4)
    mv = memoryview(r)
    assert not mv.readonly and mv.nbytes == 4 * PAGE
    a = np.frombuffer(r, dtype=np.uint32)
    a[PAGE // 4] = 0xABCD
    assert mv[PAGE] == 0xCD
    assert written(r) == [1]
    mv.release()
    del a


def test_close_refused_while_views_exist(make_region):
    r = make_region(4)
    a = np.frombuffer(r, dtype=np.uint8)
    with pytest.raises(BufferError):
        r.close()
    assert not r.closed
    a[0] = 1
    assert written(r) == [0]
    del a
    gc.collect()
    r.close()
    assert r.closed
    r.close()  # idempotent


def test_closed_region_rejects_everything(make_region):
    r = make_region(4)
    r.close()
    for call in (lambda: r.get_write_watch(), lambda: r.reset_write_watch(),
                 lambda: memoryview(r), lambda: r.address):
        with pytest.raises(ValueError):
            call()


def test_context_manager(backend):
    with writewatch.Region(PAGE, backend=backend) as r:
        assert not r.closed
    assert r.closed


# -- bad arguments --------------------------------------------------------------------

@pytest.mark.parametrize("kw, exc", [
    (dict(size=0), ValueError),
    (dict(size=-PAGE), ValueError),
    (dict(size=1.5), TypeError),
    (dict(size="4096"), TypeError),
    (dict(address=1.0), TypeError),
    (dict(address="x"), TypeError),
    (dict(max_count=0), ValueError),
    (dict(max_count=-1), ValueError),
    (dict(max_count=2.0), TypeError),
    (dict(max_count="3"), TypeError),
])
def test_bad_get_arguments(make_region, kw, exc):
    r = make_region(8)
    write_pages(r, [2])
    with pytest.raises(exc):
        r.get_write_watch(reset=True, **kw)
    if "max_count" not in kw:
        with pytest.raises(exc):
            r.reset_write_watch(**kw)
    assert written(r) == [2]


@pytest.mark.parametrize("offset, size", [
    (-PAGE, PAGE),           # starts before the region
    (0, 9 * PAGE),           # ends after it
    (8 * PAGE, 1),           # one byte past the end
    (7 * PAGE, PAGE + 1),    # spills one byte over
    (-(1 << 40), PAGE),
])
def test_ranges_outside_the_region(make_region, offset, size):
    r = make_region(8)
    write_pages(r, [7])
    with pytest.raises(ValueError):
        r.get_write_watch(r.address + offset, size, reset=True)
    with pytest.raises(ValueError):
        r.reset_write_watch(r.address + offset, size)
    assert written(r) == [7]


@pytest.mark.parametrize("address", [0, -4096, 1 << 70])
def test_foreign_addresses(make_region, address):
    r = make_region(8)
    with pytest.raises((ValueError, OverflowError)):
        r.get_write_watch(address, PAGE)


@pytest.mark.parametrize("size, exc", [
    (0, ValueError), (-1, ValueError), (1 << 64, ValueError), (1 << 200, ValueError),
    (None, TypeError), (4096.0, TypeError), ("4096", TypeError),
])
def test_bad_region_size(backend, size, exc):
    with pytest.raises(exc):
        writewatch.Region(size, backend=backend)


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="unknown backend"):
        writewatch.Region(PAGE, backend="nope")
    with pytest.raises(TypeError):
        writewatch.Region(PAGE, backend=3)


def test_env_var_chooses_the_backend(monkeypatch):
    monkeypatch.setenv("WRITEWATCH_BACKEND", "nope")
    with pytest.raises(ValueError, match="WRITEWATCH_BACKEND"):
        writewatch.Region(PAGE)
    for info in writewatch.backends():
        monkeypatch.setenv("WRITEWATCH_BACKEND", info.name)
        if info.available:
            with writewatch.Region(PAGE) as r:
                assert r.backend == info.name
        else:
            with pytest.raises(writewatch.BackendUnavailable, match=info.name):
                writewatch.Region(PAGE)


def test_unavailable_backend_says_why():
    for info in writewatch.backends():
        if not info.available:
            with pytest.raises(writewatch.BackendUnavailable) as e:
                writewatch.Region(PAGE, backend=info.name)
            assert info.reason in str(e.value)
            assert isinstance(e.value, RuntimeError)
            assert isinstance(e.value, writewatch.WriteWatchError)


def test_default_backend_is_the_first_available():
    infos = writewatch.backends()
    assert [b.name for b in infos] == ["pagemap", "uffd", "mprotect", "softdirty"]
    first = next(b.name for b in infos if b.available)
    assert writewatch.default_backend() == first
    with writewatch.Region(PAGE) as r:
        assert r.backend == first


# -- fixed placement -------------------------------------------------------------------

def test_fixed_address(backend):
    probe = writewatch.Region(4 * PAGE, backend=backend)
    addr = probe.address
    probe.close()
    with writewatch.Region(4 * PAGE, backend=backend, address=addr) as r:
        assert r.address == addr
        write_pages(r, [3])
        assert written(r) == [3]
        # the range is taken now: a second region there must fail, not replace it
        with pytest.raises(OSError, match="not free"):
            writewatch.Region(PAGE, backend=backend, address=addr + PAGE)
        assert written(r) == [3]


@pytest.mark.parametrize("address, exc", [
    (1, ValueError), (PAGE + 1, ValueError), (-PAGE, ValueError), (1 << 60, ValueError),
    (1.0, TypeError),
])
def test_bad_fixed_address(backend, address, exc):
    with pytest.raises(exc):
        writewatch.Region(PAGE, backend=backend, address=address)


# -- leaks -------------------------------------------------------------------------------

def _fds():
    return len(os.listdir("/proc/self/fd"))


def _maps():
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def test_no_fd_or_mapping_leak_over_thousands_of_regions(backend):
    for _ in range(20):  # warm up caches (pagemap fd, handler thread, ...)
        writewatch.Region(4 * PAGE, backend=backend).close()
    fds, maps = _fds(), _maps()
    for i in range(2000):
        r = writewatch.Region(4 * PAGE, backend=backend)
        write_pages(r, [i % 4])
        assert written(r, reset=True) == [i % 4]
        if i % 2:
            r.close()
        else:
            del r  # closed by the garbage collector
    gc.collect()
    assert _fds() == fds
    assert _maps() <= maps + 2


def test_regions_cannot_be_copied_or_pickled(make_region):
    # A copy would alias (and later unmap) memory it does not own.
    import copy
    import pickle
    r = make_region(2)
    for f in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError):
            f(r)


def test_region_closed_by_an_argument_conversion(make_region):
    """An argument's __index__ may close the region: the call must then fail
    with ValueError, not scan (or reset) memory that is no longer the region's."""
    r = make_region(4)

    class Closing:
        def __index__(self):
            r.close()
            return 4 * PAGE

    for call in (lambda: r.get_write_watch(r.address, Closing(), reset=True),
                 lambda: r.reset_write_watch(r.address, Closing()),
                 lambda: r.get_write_watch(max_count=Closing())):
        with pytest.raises(ValueError, match="closed"):
            call()
