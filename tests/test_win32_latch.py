"""Windows' latched write-watch state (issue 11), on every backend.

A VirtualProtect latches the written state of the pages it covers; a
decommit drops the written state that is not latched and keeps what is;
GetWriteWatch reports latched | written, in address order; the reset flag and
ResetWriteWatch clear both, for the reported prefix only.  The three cases
are the issue's, as written there (after Wine's test_write_watch: "VirtualProtect
latches write watch state"), on an allocation of 16 pages reserved with
MEM_WRITE_WATCH.  Each step is also checked against tests/model.py's
Win32Model, the reference the state machines use.
"""

import ctypes

import numpy as np
import pytest

from writewatch import win32 as w
from helpers import BACKENDS, require_backend
from model import Win32Model

P = w.PAGE_SIZE
N = 16


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Every VirtualAlloc(MEM_WRITE_WATCH) in the test uses this backend."""
    name = require_backend(request.param)
    monkeypatch.setenv("WRITEWATCH_BACKEND", name)
    return name


class Allocation:
    """16 pages reserved with MEM_WRITE_WATCH, and the model beside them."""

    def __init__(self, backend):
        self.base = w.VirtualAlloc(0, N * P, w.MEM_RESERVE | w.MEM_WRITE_WATCH,
                                   w.PAGE_NOACCESS)
        assert self.base, w.GetLastError()
        assert w._backend_of(self.base) == backend
        self.model = Win32Model(self.base, N, P, w.PAGE_NOACCESS, committed=False)

    def commit(self, protect):
        assert w.VirtualAlloc(self.base, N * P, w.MEM_COMMIT, protect) == self.base
        self.model.commit(self.base, N * P, protect)

    def decommit(self):
        assert w.VirtualFree(self.base, N * P, w.MEM_DECOMMIT)
        self.model.decommit(self.base, N * P)

    def protect(self, npages, protect):
        ok, old = w.VirtualProtect(self.base, npages * P, protect)
        assert ok, w.GetLastError()
        assert self.model.virtual_protect(self.base, npages * P) == (True, old)
        self.model.protect(self.base, npages * P, protect)

    def write(self, *pages):
        for n in pages:
            ctypes.c_uint8.from_address(self.base + n * P + 77).value = n + 1
            self.model.write(n * P + 77, bytes([n + 1]))

    def watch(self, flags=0, count=N):
        """The page indexes GetWriteWatch reports (checked against the model)."""
        out = np.zeros(count, np.uint64)
        rc, n, gran = w.GetWriteWatch(flags, self.base, N * P, out, count)
        assert (rc, gran) == (0, P), w.GetLastError()
        got = [(int(a) - self.base) // P for a in out[:n]]
        expected = self.model.get(reset=bool(flags & w.WRITE_WATCH_FLAG_RESET),
                                  max_count=count)
        assert got == [(a - self.base) // P for a in expected], (got, expected)
        return got

    def reset(self):
        assert w.ResetWriteWatch(self.base, N * P) == 0
        self.model.reset()

    def release(self):
        assert w.VirtualFree(self.base, 0, w.MEM_RELEASE)


@pytest.fixture
def alloc(backend):
    a = Allocation(backend)
    yield a
    a.release()


def test_protect_after_a_write_latches_it_through_a_decommit(alloc):
    """Commit PAGE_NOACCESS; VirtualProtect(base, 6P, RW); write page 5;
    VirtualProtect(base, 6P, NOACCESS); decommit all -> page 5."""
    _first_case(alloc)


def _first_case(alloc):
    alloc.commit(w.PAGE_NOACCESS)
    alloc.protect(6, w.PAGE_READWRITE)
    alloc.write(5)
    alloc.protect(6, w.PAGE_NOACCESS)
    alloc.decommit()
    assert alloc.watch() == [5]


def test_writes_after_the_last_protect_are_dropped_by_a_decommit(alloc):
    """After ResetWriteWatch and a commit RW: write page 3; VirtualProtect(base,
    6P, RW); write page 5 -> 3, 5.  Decommit all -> 3 only.  Recommit RW ->
    still 3.  Write pages 4, 2, 6 -> 2, 3, 4, 6.  With WRITE_WATCH_FLAG_RESET
    and count 2 -> 2, 3; then -> 4, 6."""
    alloc.reset()
    _second_case(alloc)
    assert alloc.watch() == []


def _second_case(alloc):
    alloc.commit(w.PAGE_READWRITE)
    alloc.write(3)
    alloc.protect(6, w.PAGE_READWRITE)
    alloc.write(5)
    assert alloc.watch() == [3, 5]
    alloc.decommit()
    assert alloc.watch() == [3]
    alloc.commit(w.PAGE_READWRITE)
    assert alloc.watch() == [3]
    alloc.write(4, 2, 6)
    assert alloc.watch() == [2, 3, 4, 6]
    assert alloc.watch(w.WRITE_WATCH_FLAG_RESET, count=2) == [2, 3]
    assert alloc.watch(w.WRITE_WATCH_FLAG_RESET, count=2) == [4, 6]


def test_the_two_cases_in_sequence(alloc):
    """The second case continues from the first, as in Wine's test."""
    _first_case(alloc)
    alloc.reset()
    assert alloc.watch() == []
    _second_case(alloc)


def test_decommit_without_a_protect_after_the_writes_clears_them(alloc):
    """A decommit with no VirtualProtect after the writes clears them -- a
    VirtualProtect made before the writes latches nothing of them."""
    alloc.commit(w.PAGE_READWRITE)
    alloc.write(1, 5, 9)
    alloc.decommit()
    assert alloc.watch() == []
    alloc.commit(w.PAGE_READWRITE)
    alloc.protect(N, w.PAGE_READWRITE)
    alloc.write(2, 7)
    assert alloc.watch() == [2, 7]
    alloc.decommit()
    assert alloc.watch() == []
