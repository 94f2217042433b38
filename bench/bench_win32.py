"""writewatch.win32 call costs, per available backend (pytest-benchmark).

Run as a smoke test by default (--benchmark-disable in pyproject); measure
with ``python -m pytest bench/bench_win32.py --benchmark-enable -p no:cacheprovider``.
The floor to compare with is Region.get_write_watch on the same region.
"""

import array
import ctypes

import numpy as np
import pytest

import writewatch
from writewatch import win32 as w

SIZE = 16 * w.PAGE_SIZE
KIND = w.MEM_RESERVE | w.MEM_COMMIT | w.MEM_WRITE_WATCH


@pytest.fixture(params=[b.name for b in writewatch.backends()])
def heap(request, monkeypatch):
    info = next(b for b in writewatch.backends() if b.name == request.param)
    if not info.available:
        pytest.skip("backend %s unavailable: %s" % (info.name, info.reason))
    monkeypatch.setenv("WRITEWATCH_BACKEND", info.name)
    base = w.VirtualAlloc(0, SIZE, KIND, w.PAGE_READWRITE)
    assert base
    ctypes.c_uint8.from_address(base + w.PAGE_SIZE).value = 1
    yield base
    w.VirtualFree(base, 0, w.MEM_RELEASE)


BUFFERS = {
    "numpy": lambda: np.zeros(64, np.uint64),
    "array": lambda: array.array("Q", bytes(8 * 64)),
    "ctypes": lambda: (ctypes.c_void_p * 64)(),
}


@pytest.mark.parametrize("kind", list(BUFFERS))
def test_get_write_watch_16_pages(benchmark, heap, kind):
    buf = BUFFERS[kind]()
    result = benchmark(w.GetWriteWatch, 0, heap, SIZE, buf, 64)
    assert result == (0, 1, w.PAGE_SIZE)


def test_get_write_watch_reset_16_pages(benchmark, heap):
    buf = np.zeros(64, np.uint64)
    assert benchmark(w.GetWriteWatch, w.WRITE_WATCH_FLAG_RESET, heap, SIZE, buf, 64)[0] == 0


def test_reset_write_watch_16_pages(benchmark, heap):
    assert benchmark(w.ResetWriteWatch, heap, SIZE) == 0


def test_region_floor_16_pages(benchmark, heap):
    region = w._tab.find(heap).region
    out = np.zeros(64, np.uint64)
    assert len(benchmark(region.get_write_watch, heap, SIZE, out=out)) == 1
