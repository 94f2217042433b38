"""The allocation table of writewatch.win32: what each reservation holds.

An *allocation* is what one reserving ``VirtualAlloc`` makes: a
:class:`writewatch.Region` made reserved (``PROT_NONE``, nothing armed, no
page tables), whose pages are committed and decommitted piecewise.  With
``MEM_WRITE_WATCH`` the region has a write-watch backend and a commit arms
exactly the committed pages; without it the region is plain memory.

Each allocation keeps, under its own lock:

* ``runs``: its pages as sorted runs ``(start, end, state, protect)``
  (``MEM_RESERVE`` with protect 0, or ``MEM_COMMIT`` with a ``PAGE_*``
  protection); adjacent runs always differ.
* ``latched``: pages whose written state a ``VirtualProtect`` latched.
  Windows captures the written state of the pages a protection change
  covers; a later decommit drops the pages' written state but not what was
  latched (Wine's ``test_write_watch``: "VirtualProtect latches write watch
  state").  ``GetWriteWatch`` reports latched | written; the reset flag and
  ``ResetWriteWatch`` clear both, for the pages they cover.

The table itself -- (sorted bases, allocations) -- is replaced, never
mutated, so lookups read it without a lock; changes to it take the table
lock.  Every lock here is made anew in a child after fork(), where the
threads that might have held one do not exist, and an allocation such a
thread had released but not yet taken out of the table is dropped from it.
Such a thread may also have been between a change of memory and the table's
record of it: win32 orders the two so that the table is never more
permissive than the memory (win32._narrow_first).
"""

import bisect
import os
import threading

__all__ = ["Allocation", "find", "overlaps", "insert", "remove", "table_lock",
           "RESERVED", "COMMITTED"]

RESERVED = 0x2000          # MEM_RESERVE
COMMITTED = 0x1000         # MEM_COMMIT
_FAR = 1 << 64


class Allocation:
    """One reservation: [base, end), its runs, its Region, its latched
    pages and its lock (see the module docstring)."""

    __slots__ = ("base", "end", "protect", "region", "watch", "runs", "latched",
                 "lock", "_spans", "_span_starts", "__weakref__")

    def __init__(self, base, end, protect, region, watch):
        self.base = base
        self.end = end
        self.protect = protect          # AllocationProtect
        self.region = region
        self.watch = watch              # MEM_WRITE_WATCH
        self.runs = [(base, end, RESERVED, 0)]
        self._spans = []                # committed (start, end), protections merged
        self._span_starts = []
        self.latched = set()            # page addresses
        self.lock = threading.Lock()
        _all.add(self)

    def run_at(self, address):
        runs = self.runs
        i = bisect.bisect_right(runs, (address, _FAR)) - 1
        return runs[i]

    def runs_in(self, start, end):
        """The runs overlapping [start, end), clipped to it, as
        (start, end, state, protect)."""
        runs = self.runs
        i = bisect.bisect_right(runs, (start, _FAR)) - 1
        if i < 0:
            i = 0
        out = []
        for s, e, state, protect in runs[i:]:
            if s >= end:
                break
            if e > start:
                out.append((max(s, start), min(e, end), state, protect))
        return out

    def committed_in(self, start, end):
        """The committed parts of [start, end) as (start, end) pairs, runs
        of different protections merged (what a scan walks).  The hot path
        of every GetWriteWatch: a range inside one committed span costs a
        bisect."""
        spans = self._spans
        i = bisect.bisect_right(self._span_starts, start) - 1
        if i >= 0 and spans[i][1] >= end:
            return [(start, end)]
        out = []
        for s, e in spans[max(i, 0):]:
            if s >= end:
                break
            if e > start:
                out.append((max(s, start), min(e, end)))
        return out

    def all_committed(self, start, end):
        return all(state == COMMITTED for _, _, state, _ in self.runs_in(start, end))

    def set_state(self, start, end, state, protect):
        out = []
        new = (start, end, state, protect)
        placed = False
        for run in self.runs:
            s, e = run[0], run[1]
            if e <= start:
                out.append(run)
                continue
            if s >= end:
                if not placed:
                    out.append(new)
                    placed = True
                out.append(run)
                continue
            if s < start:
                out.append((s, start, run[2], run[3]))
            if not placed:
                out.append(new)
                placed = True
            if e > end:
                out.append((end, e, run[2], run[3]))
        if not placed:
            out.append(new)
        merged = [out[0]]
        for run in out[1:]:
            last = merged[-1]
            if last[2] == run[2] and last[3] == run[3] and last[1] == run[0]:
                merged[-1] = (last[0], run[1], last[2], last[3])
            else:
                merged.append(run)
        self.runs = merged
        spans = []
        for s, e, state, _ in merged:
            if state != COMMITTED:
                continue
            if spans and spans[-1][1] == s:
                spans[-1] = (spans[-1][0], e)
            else:
                spans.append((s, e))
        self._spans = spans
        self._span_starts = [s for s, _ in spans]

    def latched_in(self, start, end):
        """Latched pages in [start, end), ascending."""
        if not self.latched:
            return []
        return sorted(a for a in self.latched if start <= a < end)


# Every allocation alive, for the fork handler (weakly: the table holds them).
import weakref as _weakref  # noqa: E402
_all = _weakref.WeakSet()

table_lock = threading.Lock()
# (sorted bases, allocations in the same order): replaced, never mutated.
_table = ((), ())


def snapshot():
    return _table


def find(address):
    """The allocation containing `address`, or None."""
    bases, allocs = _table
    i = bisect.bisect_right(bases, address) - 1
    if i >= 0:
        a = allocs[i]
        if address < a.end:
            return a
    return None


def overlaps(start, end):
    bases, allocs = _table
    i = bisect.bisect_left(bases, end) - 1
    return i >= 0 and allocs[i].end > start


def insert(alloc):
    global _table
    bases, allocs = _table
    i = bisect.bisect_left(bases, alloc.base)
    _table = (bases[:i] + (alloc.base,) + bases[i:],
              allocs[:i] + (alloc,) + allocs[i:])


def remove(alloc):
    global _table
    bases, allocs = _table
    i = bases.index(alloc.base)
    _table = (bases[:i] + bases[i + 1:], allocs[:i] + allocs[i + 1:])


def _after_fork_in_child():
    global table_lock, _table
    table_lock = threading.Lock()
    for a in list(_all):
        a.lock = threading.Lock()
    # A thread caught in VirtualFree(MEM_RELEASE) between closing the region
    # and removing the allocation leaves a closed one in the table; in the
    # child that thread never finishes, and the stale entry would refuse or
    # shadow the child's own allocations at those addresses.
    bases, allocs = _table
    if any(a.region.closed for a in allocs):
        live = tuple(a for a in allocs if not a.region.closed)
        _table = (tuple(a.base for a in live), live)


os.register_at_fork(after_in_child=_after_fork_in_child)
