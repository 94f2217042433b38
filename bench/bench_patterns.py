"""The scale patterns of issue 10 (pytest-benchmark): Wine's write-watch
microbenchmark, the .NET GC pattern, a large reservation, many regions.

Each runs on the C floor (libwwfloor.so, kernel/floor/floor.c built as a
library and called through ctypes, in this process) and on every available
backend, as parameters of one test, so `--group-by=group` puts them side by
side.  The workloads are writewatch._bench's, the ones `writewatch bench`
runs; the floor's twins do the same steps on the kernel directly.  Every
benchmark checks its answer against what it wrote.

By default (a smoke run) the sizes are small; --bench-full (or
WRITEWATCH_BENCH_FULL=1) runs the issue's: 8 x 8,192 pages, a 1 GiB heap, a
256 GiB reservation (which may hold hundreds of MiB of page tables on a
backend that arms a reservation whole) and 10,000 regions.
"""
import numpy as np
import pytest

import writewatch
from writewatch import _bench as wb
from writewatch._bench import floor as wf
from writewatch._bench import workloads as ww

MiB, GiB, KiB, PAGE = wb.MiB, wb.GiB, wb.KiB, wb.PAGE


def _engines():
    """"floor", then every backend in preference order; what cannot run here
    is skipped with the reason."""
    why = wf.library_unavailable()
    params = [pytest.param("floor", id="floor",
                           marks=pytest.mark.skip(reason=why) if why else ())]
    for b in writewatch.backends():
        marks = () if b.available else pytest.mark.skip(
            reason="backend %s unavailable: %s" % (b.name, b.reason))
        params.append(pytest.param(b.name, id=b.name, marks=marks))
    return params


def _win32(engine):
    if engine != "floor" and wb.win32_unavailable():
        pytest.skip(wb.win32_unavailable())


def scale(smoke, full, ident):
    return [pytest.param(smoke, id="smoke-" + ident[0]),
            pytest.param(full, id=ident[1], marks=pytest.mark.full)]


@pytest.mark.parametrize("engine", _engines())
@pytest.mark.parametrize("pages,writes", [
    pytest.param(1024, 1024, id="smoke-1024pages"),
    pytest.param(8192, 8192, id="8192pages", marks=pytest.mark.full)])
def test_wine_microbenchmark(benchmark, engine, pages, writes):
    """8 threads make `writes` random writes each to a `pages`-page
    allocation while GetWriteWatch(WRITE_WATCH_FLAG_RESET) of all of it runs
    every 3 ms; time per run (extra_info: per write, CPUs, calls)."""
    _win32(engine)
    threads, delay = 8, 0.003
    obj = (wf.FloorWine(threads, pages, writes, delay) if engine == "floor" else
           wb.WinePattern(engine, threads, pages, writes, delay))
    benchmark.group = "Wine microbenchmark %d x %d pages" % (threads, pages)
    runs = []
    try:
        benchmark.pedantic(lambda: runs.append(obj.run()), rounds=3)
    finally:
        obj.close()
    walls = [w for w, _ in runs]
    calls = [c for _, cs in runs for c in cs]
    benchmark.extra_info.update(
        threads=threads, pages=pages, writes=writes, cpus=obj.cpus,
        per_write_ns=obj.per_write(float(np.median(walls))),
        cpu_per_write_ns=obj.cpu_per_write, writer_cpus=obj.writer_cpus,
        calls=len(calls), call_median_ns=float(np.median(calls)) if calls else None)


@pytest.mark.parametrize("engine", _engines())
@pytest.mark.parametrize("size", [pytest.param(16 * MiB, id="16MiB"),
                                  pytest.param(GiB, id="1GiB", marks=pytest.mark.full)])
def test_gc_pattern(benchmark, engine, size):
    """GetWriteWatch without reset, 256 addresses per call, each resuming
    after the last address returned, then ResetWriteWatch of the heap; 1 %
    of its pages written before each round (outside the timed part)."""
    _win32(engine)
    k = wb.written_pages(size, 0.01)
    obj = wf.FloorGC(size, k, 256) if engine == "floor" else wb.GCPattern(engine, size, k, 256)
    benchmark.group = "GC pattern %s 1%%" % wb.fmt_size(size)
    benchmark.extra_info.update(size=size, written=k, batch=256)
    got = []
    try:
        benchmark.pedantic(lambda: got.append(obj.round()), setup=obj.prepare,
                           rounds=10 if size <= 16 * MiB else 5)
        obj.check(got[-1])                  # the last round reported what it wrote
        benchmark.extra_info.update(calls=obj.calls, over_reported=obj.extra)
    finally:
        obj.close()


class _Reservation:
    """The reservation's steps on one engine, in this process."""

    def __init__(self, engine, size, committed):
        self.engine, self.size, self.committed = engine, size, committed
        self.written = wb.written_pages(committed, 0.01)
        if engine == "floor":
            self.floor = wf.FloorReservation()
        else:
            from writewatch import win32
            self.w = win32
            self.base = None
            self.buf = np.zeros(committed // PAGE, dtype=np.uint64)

    def reserve(self):
        if self.engine == "floor":
            self.floor.reserve(self.size)
            return
        kind = self.w.MEM_RESERVE | self.w.MEM_WRITE_WATCH
        with _backend(self.engine):
            self.base = self.w.VirtualAlloc(0, self.size, kind, self.w.PAGE_READWRITE)
        if not self.base:
            raise wb.BenchError("VirtualAlloc failed with error %d" % self.w.GetLastError())

    def commit(self):
        if self.engine == "floor":
            self.floor.commit(self.committed)
        elif self.w.VirtualAlloc(self.base, self.committed, self.w.MEM_COMMIT,
                                 self.w.PAGE_READWRITE) != self.base:
            raise wb.BenchError("MEM_COMMIT failed with error %d" % self.w.GetLastError())

    def write(self):
        if self.engine == "floor":
            self.floor.write(self.written)
            return
        pages = np.sort(np.random.default_rng(7).choice(self.committed // PAGE, self.written,
                                                        replace=False))
        ww._u8_view(self.base, self.committed)[ww.write_offsets(pages)] = 1
        self.expected = np.uint64(self.base) + pages.astype(np.uint64) * np.uint64(PAGE)

    def get(self, length):
        if self.engine == "floor":
            return self.floor.scan()
        result, count, _ = self.w.GetWriteWatch(0, self.base, length, self.buf, len(self.buf))
        if result:
            raise wb.BenchError("GetWriteWatch failed with error %d" % self.w.GetLastError())
        return count

    def check(self, got):
        if self.engine == "floor":
            self.floor.check(got)
        else:
            wb.verify(self.engine, self.expected, self.buf[:got])

    def release(self):
        if self.engine == "floor":
            self.floor.release()
        elif self.base:
            self.w.VirtualFree(self.base, 0, self.w.MEM_RELEASE)
            self.base = None

    def close(self):
        self.release()
        if self.engine == "floor":
            self.floor.close()


class _backend:
    """WRITEWATCH_BACKEND set while a win32 allocation is made."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        import os
        self.saved = os.environ.get("WRITEWATCH_BACKEND")
        os.environ["WRITEWATCH_BACKEND"] = self.name

    def __exit__(self, *exc):
        import os
        if self.saved is None:
            del os.environ["WRITEWATCH_BACKEND"]
        else:
            os.environ["WRITEWATCH_BACKEND"] = self.saved


def _vmpte():
    return ww.vmpte()


@pytest.mark.parametrize("engine", _engines())
@pytest.mark.parametrize("step", ["reserve", "commit", "get_all", "get_committed"])
@pytest.mark.parametrize("size,committed", [
    pytest.param(GiB, 16 * MiB, id="1GiB"),
    pytest.param(256 * GiB, GiB, id="256GiB", marks=pytest.mark.full)])
def test_reservation(benchmark, engine, step, size, committed):
    """VirtualAlloc(MEM_RESERVE|MEM_WRITE_WATCH) of `size`, MEM_COMMIT of its
    first `committed` bytes, 1 % of them written, GetWriteWatch (no reset)
    over the whole reservation or the committed part: each step timed on its
    own; extra_info: the page tables (VmPTE) the reservation holds after it.
    The C floor: a PROT_NONE mmap; mprotect + UFFDIO_REGISTER +
    UFFDIO_WRITEPROTECT; one PAGEMAP_SCAN of the committed part."""
    _win32(engine)
    if engine == "floor" and step == "get_all":
        pytest.skip("the C floor scans the committed part only (PM_SCAN_CHECK_WPASYNC "
                    "fails on the unregistered rest)")
    need = ww.reservation_memory(size, committed)
    room, source = ww.memory_headroom()
    if room is not None and room < 2 * need:
        pytest.skip("a %s reservation may need up to %s; %s is %s"
                    % (wb.fmt_size(size), wb.fmt_bytes(need), source, wb.fmt_bytes(room)))
    r = _Reservation(engine, size, committed)
    benchmark.group = "reservation %s: %s" % (wb.fmt_size(size), step)
    pte0 = _vmpte()
    rounds = 3 if size <= GiB else 1
    try:
        # (a smoke run calls the target once, without the teardown: release
        # again before redoing the steps whose page tables are measured)
        if step == "reserve":
            benchmark.pedantic(r.reserve, teardown=r.release, rounds=rounds)
            r.release()
            r.reserve()
        elif step == "commit":
            benchmark.pedantic(r.commit, setup=r.reserve, teardown=r.release, rounds=rounds)
            r.release()
            r.reserve()
            r.commit()
        else:
            r.reserve()
            r.commit()
            r.write()
            length = size if step == "get_all" else committed
            got = benchmark.pedantic(r.get, args=(length,), rounds=5)
            r.check(got)
        pte = _vmpte()
        benchmark.extra_info.update(size=size, committed=committed,
                                    pte_bytes=None if pte is None or pte0 is None
                                    else pte - pte0)
    finally:
        r.close()


@pytest.mark.parametrize("engine", _engines())
@pytest.mark.parametrize("variant", ["each", "many"])
@pytest.mark.parametrize("count", [pytest.param(200, id="200"),
                                   pytest.param(10000, id="10000", marks=pytest.mark.full)])
def test_many_regions(benchmark, engine, variant, count):
    """`count` regions of 64 KiB, one page written in each (outside the
    timed part), get-and-reset of all of them: one call per region ("each"),
    or one writewatch.get_write_watch_many ("many"; the C floor: one scan per
    run of adjacent regions sharing one userfaultfd).  Time per round;
    extra_info: per region, descriptors, making and closing one."""
    if engine != "floor" and variant == "many" and ww.many_unavailable():
        pytest.skip(ww.many_unavailable())
    obj = (wf.FloorRegions(count, 64 * KiB) if engine == "floor" else
           wb.ManyRegions(engine, count, 64 * KiB))
    benchmark.group = "%d regions of 64 KiB: %s" % (count, variant)
    call = obj.each if variant == "each" else obj.many
    got = []
    try:
        benchmark.pedantic(lambda: got.append(call()), setup=obj.prepare, rounds=5)
        obj.check(got[-1])
    finally:
        obj.close()
    benchmark.extra_info.update(count=count, descriptors=obj.descriptors,
                                create_ns=obj.create_ns, close_ns=obj.close_ns)
    if benchmark.stats:
        benchmark.extra_info["per_region_ns"] = benchmark.stats.stats.median * 1e9 / count
