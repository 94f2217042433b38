"""Stateful tests of Snapshots against a reference model that keeps a full
copy of every saved state, on every backend.

Random sequences of writes (numpy, ctypes, and the kernel's own via
os.readv), saves, restores of any kept id (and of ids not kept), the
region's own get/reset, and remaking a Snapshots on the used region, with
two Snapshots on one region at once.  After every step the region's bytes,
its own written pages, each Snapshots' ids and a bound on its nbytes are
compared with the model.

The model (SnapModel below, on tests/model.py's PageModel) says exactly
which pages a restore() rewrites -- those written since that Snapshots'
last save or restore, and those of the snapshots it drops -- and these
count as written for every other consumer.  Example counts come from the
model's settings profile (small in CI; WRITEWATCH_HYPOTHESIS=long).
"""

import ctypes
import os

import numpy as np
import pytest
from hypothesis import assume, strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant,
                                 precondition, rule)

import writewatch
from writewatch.soak import kernel_writes_work
from helpers import BACKENDS, PAGE, Tally, require_backend, run_machine
from model import PageModel

MAX_PAGES = 24
BIG_PAGES = (1030, 1300)    # more pages than Snapshots' first collect buffer (1024)
OFF = st.integers(0, 1 << 23)
LEN = st.integers(1, 1 << 23)
TRIM_SLACK = 256            # free copies Snapshots may keep beyond the bound
_KERNEL_WRITES = {}


def kernel_writes(backend):
    if backend not in _KERNEL_WRITES:
        _KERNEL_WRITES[backend] = kernel_writes_work(backend)
    return _KERNEL_WRITES[backend]


class SnapModel:
    """One Snapshots: every kept state in full, and the pages each one
    changed (what save() copied)."""

    def __init__(self, keep, region_model):
        self.keep = keep
        self.next = 0
        self.saved = {}                 # id -> (bytes of the whole region, pages changed)
        self.dirty = set()              # written since the last save or restore
        self.ever = set()               # pages saved at least once
        self.ninit = sum(1 for p in range(region_model.npages)
                         if any(region_model.data[p * PAGE:(p + 1) * PAGE]))

    @property
    def ids(self):
        return tuple(sorted(self.saved))

    def save(self, data):
        sid = self.next
        self.saved[sid] = (bytes(data), frozenset(self.dirty))
        self.ever |= self.dirty
        self.dirty = set()
        self.next += 1
        while len(self.saved) > self.keep:
            del self.saved[min(self.saved)]
        return sid

    def restore(self, sid):
        """-> (state, pages rewritten)."""
        rewritten = set(self.dirty)
        for j in [j for j in self.saved if j > sid]:
            rewritten |= self.saved[j][1]
            del self.saved[j]
        self.dirty = set()
        self.next = sid + 1
        return self.saved[sid][0], rewritten

    def nbytes_bound(self, npages):
        """docs/snapshots.md: copies of the pages non-zero at the start,
        saved at least once and changed within the kept snapshots, free
        copies up to TRIM_SLACK, and the indexes (8 bytes per entry, 8 bytes
        and 2 bits per page, 4 bytes per slot, a little per chunk and per
        snapshot) -- bounded generously here."""
        entries = sum(len(pages) for _, pages in self.saved.values())
        copies = self.ninit + len(self.ever) + entries + TRIM_SLACK
        index = 16 * entries + 9 * npages + 8 * copies + 4096 + 64 * self.keep
        return copies * PAGE + index


class SnapshotsMachine(RuleBasedStateMachine):
    backend = None
    tally = Tally()
    npages_range = (1, MAX_PAGES)

    @initialize(npages=st.integers(1, MAX_PAGES), keeps=st.tuples(st.integers(1, 5), st.integers(1, 5)),
                prewritten=st.lists(st.integers(0, 1 << 16), max_size=6))
    def make(self, npages, keeps, prewritten):
        self.tally.sequences += 1
        self._make(npages, keeps, prewritten)

    def _make(self, npages, keeps, prewritten):
        self.npages = npages
        self.region = writewatch.Region(npages * PAGE, backend=self.backend)
        self.view = np.frombuffer(self.region, dtype=np.uint8)
        self.model = PageModel(self.region.address, npages, PAGE)
        self.pipe = os.pipe()
        self.snaps = [None, None]
        self.models = [None, None]
        # A region used before its Snapshots are made: they copy what is there.
        for x in prewritten:
            off = x % (npages * PAGE)
            self._write_numpy(off, 1, 1 + x % 255)
        for i, keep in enumerate(keeps):
            self._remake(i, keep)

    def teardown(self):
        if hasattr(self, "region"):
            self.view = None
            for s in self.snaps:
                if s is not None:
                    s.close()
            self.region.close()
            for fd in self.pipe:
                os.close(fd)

    # -- helpers --------------------------------------------------------------

    def _span(self, off, length, max_len=3 * PAGE):
        size = self.npages * PAGE
        off %= size
        length = 1 + (length - 1) % min(max_len, size - off)
        return off, length

    def _written(self, off, length):
        pages = set(range(off // PAGE, (off + length - 1) // PAGE + 1))
        for m in self.models:
            if m is not None:
                m.dirty |= pages

    def _write_numpy(self, off, length, value):
        self.view[off:off + length] = value
        self.model.write(off, bytes([value]) * length)
        self._written(off, length)

    def _remake(self, i, keep):
        if self.snaps[i] is not None:
            self.snaps[i].close()
            assert self.snaps[i].closed
        self.models[i] = SnapModel(keep, self.model)
        self.snaps[i] = writewatch.Snapshots(self.region, keep=keep)

    # -- writes ---------------------------------------------------------------

    @rule(off=OFF, length=LEN, value=st.integers(0, 255))
    def write_numpy(self, off, length, value):
        off, length = self._span(off, length)
        self._write_numpy(off, length, value)

    @rule(off=OFF, length=LEN, value=st.integers(0, 255))
    def write_ctypes(self, off, length, value):
        """A C store (memset), without the GIL."""
        off, length = self._span(off, length)
        ctypes.memset(self.region.address + off, value, length)
        self.model.write(off, bytes([value]) * length)
        self._written(off, length)

    @precondition(lambda self: kernel_writes(self.backend))
    @rule(off=OFF, length=LEN, value=st.integers(1, 255))
    def write_by_kernel(self, off, length, value):
        """os.readv from a pipe: the kernel writes (copy_to_user)."""
        off, length = self._span(off, length)
        payload = bytes([value]) * length
        assert os.write(self.pipe[1], payload) == length
        target = memoryview(self.region)[off:off + length]
        try:
            assert os.readv(self.pipe[0], [target]) == length
        finally:
            target.release()
        self.model.write(off, payload)
        self._written(off, length)

    @rule(first=st.integers(0, 1 << 12), stride=st.integers(1, 3), value=st.integers(0, 255))
    def write_every_nth_page(self, first, stride, value):
        for p in range(first % self.npages, self.npages, stride):
            self._write_numpy(p * PAGE + p % PAGE, 1, value)

    # -- Snapshots ------------------------------------------------------------

    @rule(which=st.integers(0, 1))
    def save(self, which):
        sid = self.snaps[which].save()
        assert sid == self.models[which].save(self.model.data)

    @rule(which=st.integers(0, 1), pick=st.integers(0, 1 << 10))
    def restore(self, which, pick):
        m = self.models[which]
        assume(m.saved)
        ids = m.ids
        sid = ids[pick % len(ids)]
        self.snaps[which].restore(sid)
        state, rewritten = m.restore(sid)
        self.model.data[:] = state
        # What a restore rewrites counts as written for everyone else.
        self.model.written |= rewritten
        other = self.models[1 - which]
        if other is not None:
            other.dirty |= rewritten

    @rule(which=st.integers(0, 1), pick=st.integers(-3, 1 << 10))
    def restore_not_kept(self, which, pick):
        m = self.models[which]
        bad = m.next + pick % 4 if pick >= 0 else pick
        if m.saved:
            bad = min(m.saved) - 1 - pick % 3 if pick % 2 else bad
        assume(bad not in m.saved)
        with pytest.raises(KeyError) as e:
            self.snaps[which].restore(bad)
        assert str(bad) in str(e.value)

    @rule(which=st.integers(0, 1), keep=st.integers(1, 5))
    def remake(self, which, keep):
        """A Snapshots made on the used region copies its non-zero pages."""
        self._remake(which, keep)

    # -- the region's own write watch ----------------------------------------

    @rule(reset=st.booleans(), form=st.integers(0, 1), off=OFF, length=LEN)
    def region_get(self, reset, form, off, length):
        if form == 0:
            address = size = None
        else:
            off, length = self._span(off, length, self.npages * PAGE)
            address, size = self.region.address + off, length
        got = [int(a) for a in self.region.get_write_watch(address, size, reset=reset)]
        assert got == self.model.get(address, size, reset=reset)

    @rule(off=OFF, length=LEN)
    def region_reset(self, off, length):
        off, length = self._span(off, length, self.npages * PAGE)
        self.region.reset_write_watch(self.region.address + off, length)
        self.model.reset(self.region.address + off, length)

    # -- invariants -----------------------------------------------------------

    @invariant()
    def agrees(self):
        self.tally.steps += 1
        if not hasattr(self, "region"):
            return
        got = self.view.tobytes()       # no view in the asserting frame: a traceback
        assert got == bytes(self.model.data)      # keeping one would block close()
        for s, m in zip(self.snaps, self.models):
            assert s.ids == m.ids
            assert s.nbytes <= m.nbytes_bound(self.npages), (s.nbytes, m.nbytes_bound(self.npages))

    @invariant()
    def region_written(self):
        if hasattr(self, "region"):
            assert [int(a) for a in self.region.get_write_watch()] == self.model.get()


class BigSnapshotsMachine(SnapshotsMachine):
    """Regions of more pages than one collect of the Snapshots' buffer holds."""

    @initialize(npages=st.integers(*BIG_PAGES), keeps=st.tuples(st.integers(1, 3), st.integers(1, 3)),
                prewritten=st.lists(st.integers(0, 1 << 24), max_size=6))
    def make(self, npages, keeps, prewritten):
        self.tally.sequences += 1
        self._make(npages, keeps, prewritten)


@pytest.mark.parametrize("name", BACKENDS)
def test_snapshots_against_model(name):
    require_backend(name)
    run_machine(SnapshotsMachine, "snapshots", name)


@pytest.mark.parametrize("name", BACKENDS)
def test_big_snapshots_against_model(name):
    require_backend(name)
    run_machine(BigSnapshotsMachine, "snapshots-big", name, share=5, at_least=4)
