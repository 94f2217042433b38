"""Benchmarks of the Region API on every available backend.

The workloads are writewatch._bench's, the same `writewatch bench` runs; here
pytest-benchmark times them.  Setup (mapping, populating, choosing pages,
writing before a scan) stays outside the timed part.  Every benchmark also
checks its answer against what it wrote, so a smoke run (the default, one
round each) is a test too.
"""
import numpy as np
import pytest

from writewatch import _bench as wb

MiB, GiB, KiB = wb.MiB, wb.GiB, wb.KiB
SMOKE_MAX = 16 * MiB          # larger sizes are marked `full`


def sizes(*values):
    return [pytest.param(v, id=wb.fmt_size(v).replace(" ", ""),
                         marks=pytest.mark.full if v > SMOKE_MAX else ())
            for v in values]


def _rounds(seconds_per_round, budget=1.0, lo=5, hi=200):
    """Enough rounds to fill about `budget` seconds, within [lo, hi]."""
    return int(min(hi, max(lo, budget / max(seconds_per_round, 1e-7))))


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.1, 1.0], ids=lambda f: "%gpct" % (f * 100))
@pytest.mark.parametrize("size", sizes(1 * MiB, 16 * MiB, 256 * MiB, 1 * GiB))
def test_frame_loop(benchmark, backend, size, fraction):
    """Write K random pages, then one get-and-reset (time per frame)."""
    k = wb.written_pages(size, fraction)
    loop = wb.FrameLoop(backend, size, k)
    benchmark.group = "frame %s %s" % (wb.fmt_size(size), wb.fmt_fraction(fraction))
    benchmark.extra_info.update(size=size, written=k)
    try:
        got = benchmark.pedantic(loop.frame, setup=loop.prepare, warmup_rounds=1,
                                 rounds=_rounds(k * 2e-6 + size / 4096 * 5e-9))
        loop.check(got)             # every page written was reported
        benchmark.extra_info["over_reported"] = loop.extra
    finally:
        loop.close()


def test_first_write(benchmark, backend):
    """The first write to each of 1024 pages after a reset (time per round:
    divide by extra_info['pages'] for the cost per page)."""
    fw = wb.FirstWrite(backend, 1024)
    benchmark.group = "first write, 1024 pages"
    benchmark.extra_info["pages"] = 1024
    try:
        benchmark.pedantic(fw.write, setup=fw.prepare, rounds=20)
        assert len(fw.mem.region.get_write_watch()) == 1024
    finally:
        fw.close()


@pytest.mark.parametrize("size", sizes(1 * MiB, 16 * MiB, 256 * MiB, 1 * GiB, 4 * GiB))
def test_clean_scan(benchmark, backend, size):
    """get-and-reset of a region nothing was written to."""
    cs = wb.CleanScan(backend, size)
    benchmark.group = "clean scan %s" % wb.fmt_size(size)
    benchmark.extra_info["size"] = size
    try:
        got = benchmark(cs.call)
        assert len(got) == 0
    finally:
        cs.close()


@pytest.mark.parametrize("size", sizes(64 * KiB, 16 * MiB, 1 * GiB, 4 * GiB))
def test_max_count(benchmark, backend, size):
    """get_write_watch(max_count=16) with the first 16 pages written: the
    time must not grow with the region's size."""
    lc = wb.LimitCall(backend, size, 16)
    benchmark.group = "max_count=16"
    benchmark.extra_info["size"] = size
    try:
        got = benchmark(lc.call)
        np.testing.assert_array_equal(got, lc.expect)
    finally:
        lc.close()


@pytest.mark.parametrize("size", sizes(1 * MiB, 16 * MiB, 256 * MiB))
def test_sparse(benchmark, backend, size):
    """get-and-reset with every other page written (one run per written page)."""
    sp = wb.Sparse(backend, size)
    benchmark.group = "sparse %s" % wb.fmt_size(size)
    benchmark.extra_info.update(size=size, written=sp.expect)
    try:
        got = benchmark.pedantic(sp.call, setup=sp.prepare, warmup_rounds=1,
                                 rounds=_rounds(sp.expect * 60e-9, hi=100))
        extra = wb.verify(backend, sp.answer, got)    # every page written was reported
        benchmark.extra_info["over_reported"] = extra
    finally:
        sp.close()
