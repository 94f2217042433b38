"""Stateful tests of writewatch.win32 against the reference model: random
sequences of VirtualAlloc (reserve, commit), VirtualFree (decommit,
release), VirtualProtect, VirtualQuery, writes (ctypes memset/memmove,
straddling, kernel writes by os.readv), GetWriteWatch (sub-ranges, reset,
short counts, numpy / array('Q') / ctypes buffers) and ResetWriteWatch, on
up to three MEM_WRITE_WATCH allocations at once, every result compared with
tests/model.py.  Run per backend ($WRITEWATCH_BACKEND picks it at
allocation time)."""

import array
import ctypes
import os

import numpy as np
import pytest
from hypothesis import assume, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from writewatch.soak import kernel_writes_work
from helpers import BACKENDS, PAGE, Tally, require_backend, run_machine
from model import Win32Model

w = pytest.importorskip("writewatch.win32")

PROTECTS = [w.PAGE_NOACCESS, w.PAGE_READONLY, w.PAGE_READWRITE,
            w.PAGE_EXECUTE_READ, w.PAGE_EXECUTE_READWRITE]
MAX_PAGES = 20
MAX_ALLOCS = 3


class Win32Machine(RuleBasedStateMachine):
    tally = Tally()

    def __init__(self):
        super().__init__()
        self.tally.sequences += 1
        self.allocs = []                 # Win32Model per live allocation
        self.released = []               # bases released, not reused yet
        self.pipe = os.pipe()

    def teardown(self):
        for m in self.allocs:
            w.VirtualFree(m.base, 0, w.MEM_RELEASE)
        for fd in self.pipe:
            os.close(fd)

    # Rules draw plain integers and fold them into range here: much cheaper
    # for Hypothesis than st.data() draws, and they shrink just as well.
    def _alloc(self, which):
        return self.allocs[which % len(self.allocs)]

    @staticmethod
    def _span(m, off, length, max_len=None):
        size = m.npages * PAGE
        off %= size
        length = 1 + (length - 1) % min(max_len or size, size - off)
        return m.base + off, length

    # -- allocation -------------------------------------------------------------

    @precondition(lambda self: len(self.allocs) < MAX_ALLOCS)
    @rule(npages=st.integers(1, MAX_PAGES), commit=st.booleans(),
          protect=st.sampled_from(PROTECTS))
    def virtual_alloc(self, npages, commit, protect):
        kind = w.MEM_RESERVE | w.MEM_WRITE_WATCH | (w.MEM_COMMIT if commit else 0)
        base = w.VirtualAlloc(0, npages * PAGE, kind, protect)
        assert base, w.GetLastError()
        assert base % w.ALLOCATION_GRANULARITY == 0
        assert all(not (m.base <= base < m.base + m.npages * PAGE) for m in self.allocs)
        self.allocs.append(Win32Model(base, npages, PAGE, protect, commit))

    @precondition(lambda self: self.allocs)
    @rule(which=st.integers(0, MAX_ALLOCS - 1))
    def virtual_free_release(self, which):
        m = self._alloc(which)
        assert w.VirtualFree(m.base, 0, w.MEM_RELEASE) is True
        self.allocs.remove(m)
        self.released.append(m.base)

    @precondition(lambda self: self.released)
    @rule(which=st.integers(0, 1000))
    def released_allocation_is_gone(self, which):
        base = self.released[which % len(self.released)]
        assume(not any(m.base <= base < m.base + m.npages * PAGE for m in self.allocs))
        w.SetLastError(0)
        res = w.GetWriteWatch(0, base, PAGE, np.zeros(4, dtype=np.uint64), 4)
        assert res[0] == 0xFFFFFFFF and w.GetLastError() == w.ERROR_INVALID_PARAMETER
        assert w.ResetWriteWatch(base, PAGE) == 0xFFFFFFFF

    @precondition(lambda self: self.allocs)
    @rule(which=st.integers(0, MAX_ALLOCS - 1), off=st.integers(0, MAX_PAGES * PAGE - 1), length=st.integers(1, MAX_PAGES * PAGE),
          protect=st.sampled_from(PROTECTS))
    def commit(self, which, off, length, protect):
        m = self._alloc(which)
        address, size = self._span(m, off, length)
        assert w.VirtualAlloc(address, size, w.MEM_COMMIT, protect) == address & ~(PAGE - 1)
        m.commit(address, size, protect)

    @precondition(lambda self: self.allocs)
    @rule(which=st.integers(0, MAX_ALLOCS - 1), off=st.integers(0, MAX_PAGES * PAGE - 1), length=st.integers(1, MAX_PAGES * PAGE),
          whole=st.booleans())
    def decommit(self, which, off, length, whole):
        m = self._alloc(which)
        if whole:
            assert w.VirtualFree(m.base, 0, w.MEM_DECOMMIT) is True
            m.decommit(None, None)
        else:
            address, size = self._span(m, off, length)
            assert w.VirtualFree(address, size, w.MEM_DECOMMIT) is True
            m.decommit(address, size)

    @precondition(lambda self: self.allocs)
    @rule(which=st.integers(0, MAX_ALLOCS - 1), off=st.integers(0, MAX_PAGES * PAGE - 1), length=st.integers(1, MAX_PAGES * PAGE),
          protect=st.sampled_from(PROTECTS))
    def virtual_protect(self, which, off, length, protect):
        m = self._alloc(which)
        address, size = self._span(m, off, length)
        want = m.virtual_protect(address, size)
        w.SetLastError(0)
        got = w.VirtualProtect(address, size, protect)
        assert tuple(got) == want
        if want[0]:
            m.protect(address, size, protect)
        else:
            assert w.GetLastError() == w.ERROR_INVALID_ADDRESS

    @precondition(lambda self: self.allocs)
    @rule(which=st.integers(0, MAX_ALLOCS - 1), off=st.integers(0, MAX_PAGES * PAGE - 1))
    def virtual_query(self, which, off):
        m = self._alloc(which)
        address, _ = self._span(m, off, 1, 1)
        info = w.VirtualQuery(address)
        assert tuple(info)[:6] == m.query(address)
        assert info.Type == w.MEM_PRIVATE

    # -- writes -------------------------------------------------------------------

    @precondition(lambda self: self.allocs)
    @rule(which=st.integers(0, MAX_ALLOCS - 1), off=st.integers(0, MAX_PAGES * PAGE - 1), length=st.integers(1, MAX_PAGES * PAGE),
          value=st.integers(0, 255))
    def memset(self, which, off, length, value):
        m = self._alloc(which)
        address, size = self._span(m, off, length, 3 * PAGE)
        assume(m.can_write(address - m.base, size))
        ctypes.memset(address, value, size)
        m.write(address - m.base, bytes([value]) * size)

    @precondition(lambda self: self.allocs)
    @rule(which=st.integers(0, MAX_ALLOCS - 1), boundary=st.integers(1, MAX_PAGES),
          before=st.integers(1, 8), length=st.integers(2, 16), value=st.integers(0, 255))
    def straddle(self, which, boundary, before, length, value):
        m = self._alloc(which)
        assume(m.npages >= 2)
        k = 1 + (boundary - 1) % (m.npages - 1)
        off = k * PAGE - before
        assume(off + length > k * PAGE and m.can_write(off, length))
        payload = bytes([value]) * length
        ctypes.memmove(m.base + off, payload, length)
        m.write(off, payload)

    @precondition(lambda self: self.allocs and kernel_writes_work(os.environ["WRITEWATCH_BACKEND"]))
    @rule(which=st.integers(0, MAX_ALLOCS - 1), off=st.integers(0, MAX_PAGES * PAGE - 1), length=st.integers(1, MAX_PAGES * PAGE),
          value=st.integers(1, 255))
    def kernel_write(self, which, off, length, value):
        m = self._alloc(which)
        address, size = self._span(m, off, length, 2 * PAGE)
        assume(m.can_write(address - m.base, size))
        payload = bytes([value]) * size
        assert os.write(self.pipe[1], payload) == size
        target = (ctypes.c_char * size).from_address(address)
        assert os.readv(self.pipe[0], [target]) == size
        m.write(address - m.base, payload)

    # -- write watch ----------------------------------------------------------------

    @precondition(lambda self: self.allocs)
    @rule(which=st.integers(0, MAX_ALLOCS - 1), off=st.integers(0, MAX_PAGES * PAGE - 1), length=st.integers(1, MAX_PAGES * PAGE),
          reset=st.booleans(), count=st.integers(1, MAX_PAGES + 2),
          kind=st.sampled_from(["numpy", "array", "ctypes"]))
    def get_write_watch(self, which, off, length, reset, count, kind):
        m = self._alloc(which)
        address, size = self._span(m, off, length)
        if kind == "numpy":
            buf = np.full(count + 1, 0xABCD, dtype=np.uint64)
        elif kind == "array":
            buf = array.array("Q", [0xABCD] * (count + 1))
        else:
            buf = (ctypes.c_uint64 * (count + 1))(*([0xABCD] * (count + 1)))
        flags = w.WRITE_WATCH_FLAG_RESET if reset else 0
        res, n, gran = w.GetWriteWatch(flags, address, size, buf, count)
        want = m.get(address, size, reset=reset, max_count=count)
        assert (res, n, gran) == (0, len(want), PAGE)
        assert [int(buf[i]) for i in range(n)] == want
        assert all(int(buf[i]) == 0xABCD for i in range(n, count + 1))

    @precondition(lambda self: self.allocs)
    @rule(which=st.integers(0, MAX_ALLOCS - 1), off=st.integers(0, MAX_PAGES * PAGE - 1), length=st.integers(1, MAX_PAGES * PAGE))
    def reset_write_watch(self, which, off, length):
        m = self._alloc(which)
        address, size = self._span(m, off, length)
        assert w.ResetWriteWatch(address, size) == 0
        m.reset(address, size)

    # -- invariants -------------------------------------------------------------------

    @invariant()
    def every_allocation_matches(self):
        self.tally.steps += 1
        for m in self.allocs:
            out = np.zeros(m.npages, dtype=np.uint64)
            res, n, _ = w.GetWriteWatch(0, m.base, m.npages * PAGE, out, m.npages)
            assert res == 0 and [int(a) for a in out[:n]] == m.get()
            for p in range(m.npages):
                if m.can_read(p):
                    got = ctypes.string_at(m.base + p * PAGE, PAGE)
                    assert got == bytes(m.data[p * PAGE:(p + 1) * PAGE]), p


@pytest.mark.parametrize("name", BACKENDS)
def test_win32_against_model(name, monkeypatch):
    require_backend(name)
    monkeypatch.setenv("WRITEWATCH_BACKEND", name)
    run_machine(Win32Machine, "win32", name)


# -- regression tests: minimal sequences found by the machine ------------------
# None so far (see test_model.py).
