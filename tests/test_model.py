"""Stateful tests: random sequences of writes, gets, resets, protection
changes and discards on two regions at once, every result compared with the
reference model (tests/model.py), on every backend.

Hypothesis shrinks a failure to a minimal sequence; each one found is kept
below as an explicit regression test replaying it.  Example counts come from
the hypothesis profile in helpers.py (small in CI; WRITEWATCH_HYPOTHESIS=long
for a long local run).
"""

import mmap
import os

import numpy as np
import pytest
from hypothesis import assume, strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant,
                                 precondition, rule)

import writewatch
from writewatch.soak import kernel_writes_work
from helpers import BACKENDS, PAGE, Tally, require_backend, run_machine
from model import READ, WRITE, PageModel

PROTS = {"rw": mmap.PROT_READ | mmap.PROT_WRITE, "r": mmap.PROT_READ, "none": 0}  # PROT_NONE
MODEL_PROT = {"rw": READ | WRITE, "r": READ, "none": 0}
MAX_PAGES = 24
# Offsets and lengths are folded into each region's size, so one strategy
# serves small and big regions alike.
OFF = st.integers(0, 1 << 23)
LEN = st.integers(1, 1 << 23)
BIG_PAGES = (520, 1100)     # > 2 x 256 runs: more than one PAGEMAP_SCAN vec


class Tracked:
    """A region, a numpy view of it, and its model."""

    def __init__(self, backend, npages, address=None):
        self.region = writewatch.Region(npages * PAGE, backend=backend, address=address)
        self.view = np.frombuffer(self.region, dtype=np.uint8)
        self.model = PageModel(self.region.address, npages, PAGE)
        self.npages = npages

    def close(self):
        self.view = None
        self.region.close()


class RegionMachine(RuleBasedStateMachine):
    backend = None            # set by the test that runs the machine
    tally = Tally()

    @initialize(n0=st.integers(1, MAX_PAGES), n1=st.integers(1, MAX_PAGES))
    def make(self, n0, n1):
        self.tally.sequences += 1
        self.regions = [Tracked(self.backend, n0), Tracked(self.backend, n1)]
        self.pipe = os.pipe()

    def teardown(self):
        for t in getattr(self, "regions", ()):
            t.close()
        for fd in getattr(self, "pipe", ()):
            os.close(fd)

    # -- helpers --------------------------------------------------------------
    # Rules draw plain integers and fold them into range here: much cheaper
    # for Hypothesis than st.data() draws, and they shrink just as well.

    @staticmethod
    def _span(t, off, length, max_len=None):
        """An (offset, length) inside region t, any alignment."""
        size = t.npages * PAGE
        off %= size
        length = 1 + (length - 1) % min(max_len or size, size - off)
        return off, length

    def _range(self, t, form, off, length):
        """(address, size) arguments for a range call; form 0: both None
        (the whole region), 1: size None (to the end), else both given."""
        if form == 0:
            return None, None
        off, length = self._span(t, off, length)
        return t.region.address + off, (None if form == 1 else length)

    # -- writes ---------------------------------------------------------------

    @rule(which=st.integers(0, 1), off=OFF, value=st.integers(0, 255))
    def write_byte(self, which, off, value):
        t = self.regions[which]
        off %= t.npages * PAGE
        assume(t.model.can_write(off, 1))
        t.view[off] = value
        t.model.write(off, bytes([value]))

    @rule(which=st.integers(0, 1), boundary=st.integers(1, MAX_PAGES),
          before=st.integers(1, 16), after=st.integers(1, 16), value=st.integers(0, 255))
    def write_straddling(self, which, boundary, before, after, value):
        t = self.regions[which]
        assume(t.npages >= 2)
        k = 1 + (boundary - 1) % (t.npages - 1)
        off = k * PAGE - before
        assume(t.model.can_write(off, before + after))
        t.view[off:off + before + after] = value
        t.model.write(off, bytes([value]) * (before + after))

    @rule(which=st.integers(0, 1), off=OFF, length=LEN,
          step=st.sampled_from([1, 1, 7, PAGE + 1]), value=st.integers(0, 255))
    def write_numpy_slice(self, which, off, length, step, value):
        t = self.regions[which]
        off, length = self._span(t, off, length, 3 * PAGE)
        assume(t.model.can_write(off, length))
        t.view[off:off + length:step] = value
        for i in range(off, off + length, step):
            t.model.write(i, bytes([value]))

    @precondition(lambda self: kernel_writes_work(self.backend))
    @rule(which=st.integers(0, 1), off=OFF, length=LEN, value=st.integers(1, 255))
    def write_by_kernel(self, which, off, length, value):
        """os.readv from a pipe: the kernel writes (copy_to_user)."""
        t = self.regions[which]
        off, length = self._span(t, off, length, 3 * PAGE)
        assume(t.model.can_write(off, length))
        payload = bytes([value]) * length
        assert os.write(self.pipe[1], payload) == length
        target = memoryview(t.region)[off:off + length]
        try:
            assert os.readv(self.pipe[0], [target]) == length
        finally:
            target.release()
        t.model.write(off, payload)

    @rule(which=st.integers(0, 1), first=st.integers(0, 1 << 12),
          stride=st.integers(1, 3), value=st.integers(0, 255))
    def write_every_nth_page(self, which, first, stride, value):
        """Many separate runs at once (on big regions, more than one scan
        vector's worth)."""
        t = self.regions[which]
        for p in range(first % t.npages, t.npages, stride + 1):
            off = p * PAGE + p % PAGE
            if t.model.can_write(off, 1):
                t.view[off] = value
                t.model.write(off, bytes([value]))

    # -- write watch ----------------------------------------------------------

    @rule(which=st.integers(0, 1), form=st.integers(0, 2), off=OFF, length=LEN,
          reset=st.booleans(),
          max_count=st.one_of(st.none(), st.integers(1, MAX_PAGES + 2)),
          out_len=st.one_of(st.none(), st.integers(1, MAX_PAGES + 2)))
    def get(self, which, form, off, length, reset, max_count, out_len):
        t = self.regions[which]
        address, size = self._range(t, form, off, length)
        limit = max_count
        out = None
        if out_len is not None:
            out = np.full(out_len, 0xDEADBEEF, dtype=np.uint64)
            limit = out_len if limit is None else min(limit, out_len)
        got = t.region.get_write_watch(address, size, reset=reset,
                                       max_count=max_count, out=out)
        want = t.model.get(address, size, reset=reset, max_count=limit)
        assert got.dtype == np.uint64
        assert [int(a) for a in got] == want
        if out is not None:
            assert got.ctypes.data == out.ctypes.data     # a prefix view of out
            assert (out[len(got):] == 0xDEADBEEF).all()   # nothing past the prefix

    @rule(which=st.integers(0, 1), form=st.integers(0, 2), off=OFF, length=LEN)
    def reset(self, which, form, off, length):
        t = self.regions[which]
        address, size = self._range(t, form, off, length)
        t.region.reset_write_watch(address, size)
        t.model.reset(address, size)

    # -- protection and discard (the hooks win32 builds on) ------------------

    @rule(which=st.integers(0, 1), off=OFF, length=LEN, prot=st.sampled_from(sorted(PROTS)))
    def protect(self, which, off, length, prot):
        t = self.regions[which]
        off, length = self._span(t, off, length)
        t.region._protect(t.region.address + off, length, PROTS[prot])
        t.model.protect(t.region.address + off, length, MODEL_PROT[prot])

    @rule(which=st.integers(0, 1), off=OFF, length=LEN)
    def discard(self, which, off, length):
        t = self.regions[which]
        off, length = self._span(t, off, length)
        t.region._discard(t.region.address + off, length)
        t.model.discard(t.region.address + off, length)

    # -- lifetime ---------------------------------------------------------------

    @rule(which=st.integers(0, 1), npages=st.integers(1, MAX_PAGES), same_place=st.booleans())
    def recreate(self, which, npages, same_place):
        """Close a region and make a new one -- at the same address when it
        fits, so the old range is reused: nothing may carry over."""
        old = self.regions[which]
        base, old_pages = old.region.address, old.npages
        old.close()
        fixed = base if same_place and npages <= old_pages else None
        self.regions[which] = Tracked(self.backend, npages, address=fixed)
        if fixed is not None:
            assert self.regions[which].region.address == base

    # -- invariants -------------------------------------------------------------

    @invariant()
    def contents_match(self):
        """Reading is not writing: compare every readable page's bytes."""
        self.tally.steps += 1
        for t in getattr(self, "regions", ()):
            for p in range(t.npages):
                if t.model.can_read(p):
                    got = t.view[p * PAGE:(p + 1) * PAGE].tobytes()
                    assert got == bytes(t.model.data[p * PAGE:(p + 1) * PAGE]), p

    @precondition(lambda self: hasattr(self, "regions"))
    @invariant()
    def nothing_written_by_reading(self):
        """A non-resetting whole-region get agrees with the model (and, being
        a read, changes nothing)."""
        for t in self.regions:
            assert [int(a) for a in t.region.get_write_watch()] == t.model.get()


class BigRegionMachine(RegionMachine):
    """The same rules on regions of 520-1100 pages: results longer than the
    engine's scan vector, max_count windows far inside the region."""

    @initialize(n0=st.integers(*BIG_PAGES), n1=st.integers(1, MAX_PAGES))
    def make(self, n0, n1):
        self.tally.sequences += 1
        self.regions = [Tracked(self.backend, n0), Tracked(self.backend, n1)]
        self.pipe = os.pipe()


@pytest.mark.parametrize("name", BACKENDS)
def test_region_against_model(name):
    require_backend(name)
    run_machine(RegionMachine, "region", name)


@pytest.mark.parametrize("name", BACKENDS)
def test_big_region_against_model(name):
    require_backend(name)
    run_machine(BigRegionMachine, "region-big", name, share=4, at_least=5)


# -- regression tests: minimal sequences found by the machine ------------------
# Each would replay, step by step, a sequence Hypothesis shrank a library
# failure to.  None so far: the failures these machines found were in the
# tests themselves; the library bugs found by fault injection and fuzzing
# have their regression tests in test_faults.py and test_fuzz.py.
