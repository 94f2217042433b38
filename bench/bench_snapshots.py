"""Issue 12's Snapshots and DeltaLog (pytest-benchmark): save(), restore()
7 frames back, a copy of the whole region, DeltaLog.append().

The workload is writewatch._bench's, the one `writewatch bench` runs: a
region with every page written once, 1 % of its pages written per frame
outside the timed part, Snapshots(keep=8).  Each benchmark runs on every
available backend and on the C floor (libwwfloor.so, kernel/floor/floor.c
built as a library and called through ctypes, in this process), as
parameters of one test, so `--group-by=group` puts them side by side:

- save and restore: the floor under each backend's technique
  (floor-uffd-async for pagemap, floor-uffd-sync for uffd, floor-mprotect
  for mprotect): a get-and-reset and copies into save areas; copies back
  into the armed region and one get-and-reset;
- copy: np.copyto on every backend, memcpy on the floor;
- append: DeltaLog.append() (fdatasync) on every backend; on the floor,
  write(2) of the same bytes gathered beforehand + fsync (floor-write, the
  issue's floor) and get-and-reset + pwritev from the region + fdatasync
  (floor-writev).  The log files are in pytest's tmp_path, one filesystem.

Every benchmark checks its answer (the pages saved, logged or restored).
By default (a smoke run) the region is 4 MiB; --bench-full (or
WRITEWATCH_BENCH_FULL=1) runs the issue's 170 MiB.
"""
import numpy as np
import pytest

import writewatch
from writewatch._bench import floor as wf
from writewatch._bench import workloads as ww
from writewatch._bench.report import FLOOR_TECH
from writewatch._bench.units import MiB, fmt_size

KEEP = 8


def _backends():
    out = []
    for b in writewatch.backends():
        marks = () if b.available else pytest.mark.skip(
            reason="backend %s unavailable: %s" % (b.name, b.reason))
        out.append(pytest.param(b.name, id=b.name, marks=marks))
    return out


def _floor_param(name, need_async):
    try:
        why = wf.library_unavailable() if need_async else (wf._load() and None)
    except ww.BenchError as e:
        why = str(e)
    return pytest.param(name, id=name, marks=pytest.mark.skip(reason=why) if why else ())


def _technique_engines():
    """Every backend, and the floor under each technique."""
    return _backends() + [_floor_param("floor-" + t, t == "uffd-async")
                          for t in FLOOR_TECH.values()]


SIZES = [pytest.param(4 * MiB, id="smoke-4MiB"),
         pytest.param(170 * MiB, id="170MiB", marks=pytest.mark.full)]


def _snapshots(engine, size):
    k = ww.written_pages(size, 0.01)
    if engine.startswith("floor-"):
        return wf.FloorSnapshots(engine[len("floor-"):], size, k, KEEP)
    return ww.SnapshotFrames(engine, size, k, KEEP)


@pytest.mark.parametrize("engine", _technique_engines())
@pytest.mark.parametrize("size", SIZES)
def test_save(benchmark, engine, size):
    """save() after the frame's writes (outside the timed part), the ring full."""
    obj = _snapshots(engine, size)
    benchmark.group = "Snapshots %s 1%%: save" % fmt_size(size)
    benchmark.extra_info.update(size=size, written=obj.k, keep=KEEP)
    got = []

    def setup():
        if got:
            obj.check_save(got.pop())
        obj.write()
    try:
        for _ in range(KEEP + 1):
            obj.frame()
        benchmark.pedantic(lambda: got.append(obj.save()), setup=setup,
                           rounds=50 if size <= 16 * MiB else 30)
        obj.check_save(got.pop())       # the last save copied what was written
    finally:
        obj.close()


@pytest.mark.parametrize("engine", _technique_engines())
@pytest.mark.parametrize("size", SIZES)
def test_restore(benchmark, engine, size):
    """restore() of the oldest of 8 snapshots (7 frames back) with 1 % of the
    pages written since the last save; the ring is filled again between
    rounds (outside the timed part).  extra_info: pages rewritten."""
    obj = _snapshots(engine, size)
    benchmark.group = "Snapshots %s 1%%: restore 7 frames back" % fmt_size(size)
    got = []

    def setup():
        if got:
            obj.check_restore(got.pop())
        obj.prepare_restore()
    try:
        benchmark.pedantic(lambda: got.append(obj.restore()), setup=setup,
                           rounds=10 if size <= 16 * MiB else 5)
        obj.check_restore(got.pop())    # every page holds its saved byte
        benchmark.extra_info.update(size=size, written=obj.k, keep=KEEP,
                                    restored=float(np.mean(obj.restored)))
    finally:
        obj.close()


@pytest.mark.parametrize("engine", _backends() + [_floor_param("floor", False)])
@pytest.mark.parametrize("size", SIZES)
def test_copy(benchmark, engine, size):
    """What save() is compared with: np.copyto of the whole region (the
    floor: memcpy), into memory faulted in beforehand."""
    benchmark.group = "Snapshots %s: copy of the whole region" % fmt_size(size)
    benchmark.extra_info["size"] = size
    if engine == "floor":
        c = wf.FloorCopy(size)
        try:
            c.run()
            benchmark.pedantic(c.run, rounds=10)
        finally:
            c.close()
        return
    mem = ww.Memory(size, engine)
    try:
        mem.u8[::ww.PAGE] = 1
        dst = np.empty_like(mem.u8)
        np.copyto(dst, mem.u8)
        benchmark.pedantic(np.copyto, args=(dst, mem.u8), rounds=10)
        assert np.array_equal(dst, mem.u8)
    finally:
        dst = None
        mem.close()


@pytest.mark.parametrize("engine", _backends() + [_floor_param("floor-write", True),
                                                  _floor_param("floor-writev", True)])
@pytest.mark.parametrize("size", SIZES)
def test_append(benchmark, engine, size, tmp_path):
    """DeltaLog.append() (fdatasync) of the frame's pages, written outside the
    timed part; the first, full record is made before.  The floor: write(2)
    of the record gathered beforehand + fsync, or get-and-reset + pwritev
    from the region + fdatasync."""
    k = ww.written_pages(size, 0.01)
    benchmark.group = "DeltaLog %s 1%%: append" % fmt_size(size)
    benchmark.extra_info.update(size=size, written=k)
    got = []
    if engine.startswith("floor"):
        obj = wf.FloorAppend(size, k, str(tmp_path))
        gather = engine == "floor-write"
        call = obj.write_fsync if gather else obj.writev

        def setup():
            if got and not gather:
                obj.check(got.pop())
            obj.write()
            if gather:
                obj.gather()            # get-and-reset, checked, and the record
    else:
        obj = ww.LogAppend(engine, size, k, str(tmp_path))
        call = obj.append

        def setup():
            if got:
                obj.check(got.pop())
            obj.write()
    try:
        benchmark.pedantic(lambda: got.append(call()), setup=setup,
                           rounds=20 if size <= 16 * MiB else 10)
        if got and not engine == "floor-write":
            obj.check(got.pop())
    finally:
        obj.close()
