"""Concurrent stress of one backend, checked for lost writes and for pages
reported that nobody wrote.  Run by tests/test_stress.py in a child process
(a crash or a hang fails the test there), or by hand::

    python tests/_stress_child.py --backend pagemap --seconds 60
    python tests/_stress_child.py --backend uffd --seconds 2 --self-test drop   # must fail

All at once: on a plain Region and on a MEM_WRITE_WATCH win32 allocation,
three writer threads each (a numpy store under the GIL, a ctypes.memmove
without it, and a kernel write -- os.readv from a pipe -- where the backend
lets the kernel write into clean pages; a second numpy writer where it does
not), one collector per target looping on gets (with and without reset,
truncated by a count, over sub-ranges) and resets; on the allocation a
manager thread decommitting and recommitting chunks and calling
VirtualProtect (read/write over spans the writers are writing, read-only and
no-access round trips on chunks they are kept out of, commits over committed
chunks); a thread making, checking and releasing small allocations beside
it; and a thread forking children that write their copy, must find the
parent's tracking refused, and check regions and allocations of their own.
The run lasts --seconds, and on until every kind of operation was made
(--min-ops), up to --cap.  One JSON line of figures at the end (--json);
exit status 0 only if nothing was violated.

The checks -- writewatch/soak.py's two invariants, extended soundly
(they never fire on a correct backend, whatever the schedule):

Each page has one writer, which numbers its writes 1, 2, ...: before its
store of s it sets started[p] = s, after it done[p] = s.  Every operation X
on the tracked state is bracketed by two snapshots taken by the thread that
calls it: before_X = done[:] just before the call (the writes surely done
before X began) and after_X = started[:] just after it returns (the writes
that may have begun before X ended).

1. No lost write.  The collector keeps verified[p]: every write to p
   numbered up to it is accounted for.  A get G that reports p accounts for
   every write that began before G returned: verified[p] >= after_G[p].  A
   reset R accounts for every write it may have erased (after_R[p]).  A
   decommit D of p legitimately drops the writes done before it that no
   VirtualProtect latched: the manager holds the chunk's lock (no write to it
   is in flight), and before calling D registers the interval (L[p],
   before_D[p]], where L[p] is the highest before_V[p] of the successful
   VirtualProtects V over p so far -- the writes surely latched.  An interval
   counts once verified[p] reaches its lower end (writes below it may still be
   latched and must be reported).  Then at every get G that scanned p (inside
   its range, and before the truncation point of a truncated result):
   before_G[p] <= verified[p], or a write done before G began was lost.
   Registering before the decommit only ever excuses more, never less.

2. Nothing reported that was not written.  The collector keeps c[p] =
   before_X[p] of the last reset or reporting get-and-reset X of p: the
   writes up to c[p] are erased, latched state included.  The manager
   publishes d[p] = before_D[p] once a decommit D of p has returned, and
   m[p] = after_V[p] of the latest VirtualProtect V over p.  If G reports p,
   some write to p survived: one that began after the last erasure
   (after_G[p] > c[p]) and either after the last decommit that had surely
   returned before G began (after_G[p] > d[p], with d read before G), or
   latched by a VirtualProtect before it (a number in (c[p], min(d[p],
   m[p])]).

Every 8th page is never written, so any report of it is false whatever
else happened.  Fork children write their copies of the parent's pages
(quiet ones among them): the parent's books must stay exact through every
fork, and a write leaking into the parent's tracking is a report that
invariant 2 rejects.

softdirty's documented limits are kept to: its writers are all numpy stores
(a write made without the GIL racing a reset can be lost there), and a page
reported that was not written is counted, not a violation (false positives).

At the end the writers and the manager stop, every chunk is committed
read/write again, and two more get-and-resets close the books: the last must
report nothing, and every page must hold its last write (or zero if a
decommit came after it).  --self-test falsifies results on purpose to show
that each check fires: drop (one page never reported again), extra (a page
reported that was not written), unlatch (latched pages lost in a decommit,
as before Windows' latching was modelled).
"""

import argparse
import collections
import ctypes
import json
import os
import random
import signal
import sys
import threading
import time

import numpy as np

import writewatch
from writewatch import win32 as w
from writewatch.soak import kernel_writes_work

PAGE = writewatch.PAGE_SIZE
SLOTS = PAGE // 8
MAX_KEPT = 20                   # violation messages kept per target
CHUNK = 8                       # pages per chunk of the win32 allocation
REGION_PAGES = 512
WIN32_PAGES = 256               # 1 MiB: 16 allocation granules
QUIET = 8                       # every 8th page is never written: any report of it is false
CHILD_SECONDS = 20              # a fork child's SIGALRM: its calls must return by then


class Books:
    """One target's pages, their writers' counters and the collector's
    checks (see the module docstring)."""

    def __init__(self, name, npages, base, self_test, exact):
        self.name = name
        self.exact = exact                  # False: reports of unwritten pages are documented
        self.npages = npages
        self.base = base
        self.started = np.zeros(npages, np.int64)
        self.done = np.zeros(npages, np.int64)
        # the collector's
        self.verified = np.zeros(npages, np.int64)
        self.cleared = np.zeros(npages, np.int64)             # c[p]
        self.held = {}                                        # p -> [(lo, hi)] not yet counted
        # the manager's (win32 only), read by the collector
        self.dropped = np.zeros(npages, np.int64)             # d[p]
        self.latch_seen = np.zeros(npages, np.int64)          # m[p]
        self.latch_sure = np.zeros(npages, np.int64)          # L[p]
        self.zeroed = np.zeros(npages, np.int64)              # content check
        self.excuses = collections.deque()                    # (pages, lo, hi) arrays
        # figures
        self.f = collections.Counter()
        self.violations = 0
        self.messages = []
        self.errors = []
        self.self_test = self_test
        self.victim = None
        self.ops = 0

    def violation(self, text, kind):
        if kind == "reported, not written" and not self.exact:
            self.f["pages reported but not written (softdirty's documented false "
                   "positives)"] += 1
            return
        self.violations += 1
        self.f["violations: " + kind] += 1
        if len(self.messages) < MAX_KEPT:
            self.messages.append(text)

    # -- the manager's side ----------------------------------------------------

    def before_decommit(self, pages):
        """Chunk lock held (no write to `pages` in flight): register what the
        decommit may drop.  Returns before_D."""
        before = self.done[pages].copy()
        lo = self.latch_sure[pages]
        keep = before > lo
        if keep.any():
            self.excuses.append((pages[keep], lo[keep].copy(), before[keep]))
        self.zeroed[pages] = before
        return before

    def after_decommit(self, pages, before):
        self.dropped[pages] = before

    def after_protect(self, pages, before, ok):
        after = self.started[pages].copy()
        if ok:
            self.latch_sure[pages] = np.maximum(self.latch_sure[pages], before)
            self.latch_seen[pages] = np.maximum(self.latch_seen[pages], after)

    # -- the collector's side ----------------------------------------------------

    def check(self, got, first, last, reset, truncated, before, dropped, after):
        """After a get (got: page addresses) or a reset (got None) of pages
        [first, last): update the books and check both invariants."""
        self.ops += 1
        k = self.ops
        n = self.npages
        if got is None:                                       # a reset
            self.f["resets"] += 1
            span = slice(first, last)
            self.verified[span] = np.maximum(self.verified[span], after[span])
            self.cleared[span] = before[span]
            self._take_excuses()
            return
        self.f["gets"] += 1
        self.f["gets with reset" if reset else "gets without reset"] += 1
        if truncated:
            self.f["truncated gets"] += 1
        if (first, last) != (0, n):
            self.f["sub-range gets"] += 1
        got = np.asarray(got, dtype=np.uint64)
        offs = got.astype(np.int64) - self.base
        if len(offs) and (np.any(offs % PAGE) or offs[0] < first * PAGE
                          or offs[-1] >= last * PAGE or np.any(np.diff(offs) <= 0)):
            self.violation("op %d: result not ascending page addresses of [%d, %d): %s"
                           % (k, first, last, got[:8]), "malformed result")
            offs = offs[(offs >= first * PAGE) & (offs < last * PAGE) & (offs % PAGE == 0)]
        pages = np.unique(offs // PAGE)
        hit = np.zeros(n, bool)
        hit[pages] = True
        self.f["pages reported"] += int(hit.sum())
        # reported with no write since a finished decommit of the page: latched
        self.f["pages reported from a latch"] += int((hit & (after <= dropped)
                                                      & (dropped > 0)).sum())
        if self.self_test == "extra":
            cand = np.flatnonzero(~self._legit(after, dropped)[first:last]) + first
            if len(cand):
                hit[cand[0]] = True
                self.self_test = None
        elif self.self_test == "unlatch":
            # a backend that loses latched state in a decommit: hide the
            # pages no write since the last finished decommit accounts for
            hit &= ~(after <= dropped) | (dropped == 0)
        elif self.self_test == "drop" and k > 20:
            if self.victim is None and hit.any():
                self.victim = int(np.flatnonzero(hit)[0])
            if self.victim is not None:
                hit[self.victim] = False
        # 2. nothing reported that was not written since its last erasure
        bogus = hit & ~self._legit(after, dropped)
        for p in np.flatnonzero(bogus)[:3]:
            self.violation(
                "op %d: page %d reported, but no write to it survives: last erased after "
                "write #%d, last decommitted after #%d, latched up to #%d, started #%d"
                % (k, p, self.cleared[p], dropped[p], self.latch_seen[p], after[p]),
                "reported, not written")
        if reset:
            self.cleared[hit] = before[hit]
        self.verified[hit] = np.maximum(self.verified[hit], after[hit])
        # 1. no write done before this get began is lost
        self._take_excuses()
        scanned = np.zeros(n, bool)
        scanned[first:last] = True
        if truncated and len(pages):
            scanned[pages[-1] + 1:] = False
        lost = scanned & (before > self.verified)
        for p in np.flatnonzero(lost):
            self._count_excuses(p)
            if before[p] > self.verified[p]:
                self.violation(
                    "op %d: page %d lost: write #%d was done before this get began; "
                    "writes up to #%d are accounted for, none since reported or "
                    "dropped by a decommit" % (k, p, before[p], self.verified[p]),
                    "lost write")
                self.verified[p] = before[p]
        if k % 256 == 0:
            for p in list(self.held):
                self._count_excuses(p)

    def _legit(self, after, dropped):
        c = self.cleared
        return (after > c) & ((after > dropped) | (np.minimum(dropped, self.latch_seen) > c))

    def _take_excuses(self):
        while self.excuses:
            pages, lo, hi = self.excuses.popleft()
            for p, a, b in zip(pages.tolist(), lo.tolist(), hi.tolist()):
                self.held.setdefault(p, []).append((a, b))

    def _count_excuses(self, p):
        held = self.held.get(p)
        if not held:
            return
        v = int(self.verified[p])
        while held and held[0][0] <= v:
            v = max(v, held.pop(0)[1])
        self.verified[p] = v
        if not held:
            del self.held[p]

    def summary(self):
        out = dict(self.f)
        out.update(target=self.name, pages=self.npages, violations=self.violations,
                   messages=self.messages, errors=self.errors)
        return out


class Target:
    """What the writers, the collector and the fork children share."""

    def __init__(self, name, npages, base, backend, seed, self_test):
        # softdirty's documented limits: a write made without the GIL racing a
        # reset can be lost (so only numpy stores, which hold it), and pages
        # can be reported that were not written (counted, not violations)
        exact = backend != "softdirty"
        self.books = Books(name, npages, base, self_test, exact)
        self.figures_lock = threading.Lock()
        self.npages = npages
        self.base = base
        self.rng = random.Random(seed)
        self.kernel_ok = kernel_writes_work(backend)
        if not exact:
            self.kinds = ("numpy", "numpy", "numpy")
        else:
            self.kinds = ("numpy", "ctypes", "kernel" if self.kernel_ok else "numpy")
        self.words = np.ctypeslib.as_array((ctypes.c_uint64 * (npages * SLOTS))
                                           .from_address(base))
        self.bytes = np.ctypeslib.as_array((ctypes.c_uint8 * (npages * PAGE))
                                           .from_address(base))

    def may_write(self, p):
        """A context manager held while writing page p; its `ok` says
        whether p may be written now."""
        return _NO_LOCK

    # -- writers ---------------------------------------------------------------

    def writer(self, index, stop):
        b = self.books
        rng = random.Random(self.rng.random())
        mine = [p for p in range(index, self.npages, len(self.kinds))
                if p % QUIET != QUIET - 1]
        kind = self.kinds[index]
        started, done, words = b.started, b.done, self.words
        cell = ctypes.c_uint64()
        cell_address = ctypes.addressof(cell)
        if kind == "kernel":
            rfd, wfd = os.pipe()
        count = skipped = 0
        try:
            while not stop.is_set():
                for _ in range(64):
                    p = rng.choice(mine)
                    guard = self.may_write(p)
                    with guard:
                        if not guard.ok:
                            skipped += 1
                            continue
                        s = int(started[p]) + 1
                        slot = p * SLOTS + s % SLOTS
                        started[p] = s
                        if kind == "numpy":
                            words[slot] = s
                        elif kind == "ctypes":
                            cell.value = s
                            ctypes.memmove(self.base + slot * 8, cell_address, 8)
                        else:
                            os.write(wfd, s.to_bytes(8, "little"))
                            off = slot * 8
                            if os.readv(rfd, [self.bytes[off:off + 8]]) != 8:
                                raise RuntimeError("short os.readv")
                        done[p] = s
                        count += 1
        except BaseException as e:
            b.errors.append("%s writer %d (%s): %r" % (b.name, index, kind, e))
        finally:
            with self.figures_lock:             # writers end together: one at a time
                b.f["writes"] += count
                b.f["%s writes" % kind] += count
                b.f["writes skipped (page not writable)"] += skipped
            if kind == "kernel":
                os.close(rfd)
                os.close(wfd)

    # -- collector -------------------------------------------------------------

    # One cycle of the collector's operations, shuffled each time round: 1 in
    # 50 a reset of everything, 1 a reset of a sub-range, 5 gets without
    # reset, 9 get-and-resets of a sub-range, 34 of everything; 5 of the 48
    # gets truncated by a count of 1 to 16.
    COLLECTOR_CYCLE = ([("reset", False)] + [("reset", True)]
                       + [("get", False, False)] * 5 + [("get", True, True)] * 9
                       + [("get", True, False)] * 34)
    TRUNCATED = 5

    def collector(self, stop):
        rng = random.Random(self.rng.random())
        n = self.npages
        try:
            while not stop.is_set():
                cycle = list(self.COLLECTOR_CYCLE)
                rng.shuffle(cycle)
                gets = [i for i, op in enumerate(cycle) if op[0] == "get"]
                truncated = set(rng.sample(gets, self.TRUNCATED))
                for i, op in enumerate(cycle):
                    first, last = 0, n
                    if op[-1]:                      # a sub-range
                        first = rng.randrange(n)
                        last = rng.randrange(first + 1, n + 1)
                    if op[0] == "reset":
                        self.op_reset(first, last)
                    else:
                        limit = rng.randint(1, 16) if i in truncated else None
                        self.op_get(first, last, op[1], limit)
        except BaseException as e:
            self.books.errors.append("%s collector: %r" % (self.books.name, e))

    def op_get(self, first, last, reset, limit):
        b = self.books
        before = b.done.copy()
        dropped = b.dropped.copy()
        got = self.get(first, last, reset, limit)
        after = b.started.copy()
        truncated = limit is not None and len(got) == limit
        b.check(got, first, last, reset, truncated, before, dropped, after)

    def op_reset(self, first, last):
        b = self.books
        before = b.done.copy()
        self.reset(first, last)
        after = b.started.copy()
        b.check(None, first, last, True, False, before, None, after)

    def finish(self):
        """Writers and manager stopped: close the books."""
        b = self.books
        self.op_get(0, self.npages, True, None)
        self.op_get(0, self.npages, True, None)
        last = self.get(0, self.npages, False, None)
        if len(last):
            b.violation("after everything stopped, a get still reports %d page(s): %s"
                        % (len(last), [(int(a) - self.base) // PAGE for a in last[:8]]),
                        "reported, not written")
        for p in np.flatnonzero(b.done):
            s = int(b.done[p])
            want = 0 if b.zeroed[p] >= s else s
            have = int(self.words[p * SLOTS + s % SLOTS])
            if have != want:
                b.violation("page %d holds %d where its last write #%d should have left %d"
                            % (p, have, s, want), "wrong contents")


class _NoLock:
    ok = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_LOCK = _NoLock()


class RegionTarget(Target):
    def __init__(self, backend, seed, self_test):
        self.region = writewatch.Region(REGION_PAGES * PAGE, backend=backend)
        super().__init__("region", REGION_PAGES, self.region.address, backend, seed,
                         self_test)

    def get(self, first, last, reset, limit):
        return self.region.get_write_watch(self.base + first * PAGE, (last - first) * PAGE,
                                           reset=reset, max_count=limit)

    def reset(self, first, last):
        self.region.reset_write_watch(self.base + first * PAGE, (last - first) * PAGE)

    def close(self):
        self.words = self.bytes = None
        self.region.close()


class _Chunk:
    """A chunk of the win32 allocation: its lock, and whether its pages are
    committed read/write (only the manager changes that, holding the lock)."""

    __slots__ = ("lock", "ok")

    def __init__(self):
        self.lock = threading.Lock()
        self.ok = True

    def __enter__(self):
        self.lock.acquire()
        return self

    def __exit__(self, *exc):
        self.lock.release()
        return False


class Win32Target(Target):
    def __init__(self, backend, seed, self_test):
        base = w.VirtualAlloc(0, WIN32_PAGES * PAGE,
                              w.MEM_RESERVE | w.MEM_COMMIT | w.MEM_WRITE_WATCH,
                              w.PAGE_READWRITE)
        if not base:
            raise OSError("VirtualAlloc failed: error %d" % w.GetLastError())
        if w._backend_of(base) != backend:
            raise RuntimeError("allocation on %s, not %s" % (w._backend_of(base), backend))
        super().__init__("win32", WIN32_PAGES, base, backend, seed, self_test)
        self.chunks = [_Chunk() for _ in range(WIN32_PAGES // CHUNK)]
        self.manager_ops = 0
        self.out = np.zeros(WIN32_PAGES, np.uint64)

    def may_write(self, p):
        return self.chunks[p // CHUNK]

    def get(self, first, last, reset, limit):
        count = limit or (last - first)
        out = self.out[:count] if limit is None else np.zeros(count, np.uint64)
        rc, n, gran = w.GetWriteWatch(w.WRITE_WATCH_FLAG_RESET if reset else 0,
                                      self.base + first * PAGE, (last - first) * PAGE,
                                      out, count)
        if rc != 0 or gran != PAGE:
            raise OSError("GetWriteWatch: (%#x, %d, %d), error %d"
                          % (rc, n, gran, w.GetLastError()))
        return out[:n].copy()

    def reset(self, first, last):
        rc = w.ResetWriteWatch(self.base + first * PAGE, (last - first) * PAGE)
        if rc != 0:
            raise OSError("ResetWriteWatch: error %d" % w.GetLastError())

    # -- the manager --------------------------------------------------------------

    # One cycle of the manager's operations, shuffled each time round, so that
    # even a short (or slow) run has every kind.
    MANAGER_CYCLE = (["decommit"] * 5 + ["commit"] * 5 + ["protect span"] * 5
                     + ["round trip"] * 2 + ["commit over committed"])

    def manager(self, stop):
        rng = random.Random(self.rng.random())
        b = self.books
        try:
            while not stop.is_set():
                cycle = list(self.MANAGER_CYCLE)
                rng.shuffle(cycle)
                for op in cycle:
                    self.manager_op(op, rng)
                    self.manager_ops += 1
        except BaseException as e:
            b.errors.append("win32 manager: %r" % (e,))

    def manager_op(self, op, rng):
        b = self.books
        committed = [c for c, chunk in enumerate(self.chunks) if chunk.ok]
        reserved = [c for c, chunk in enumerate(self.chunks) if not chunk.ok]
        if op == "decommit" and committed:
            c = rng.choice(committed)
            with self.chunks[c]:
                self.decommit(self.chunk_pages(c))
                self.chunks[c].ok = False
        elif op == "commit":
            c = rng.choice(reserved or committed)
            with self.chunks[c]:
                if not reserved:                # nothing to commit yet: make some
                    self.decommit(self.chunk_pages(c))
                self.commit(self.chunk_pages(c))
                self.chunks[c].ok = True
        elif op == "protect span":
            # read/write over a span the writers keep writing: a VirtualProtect
            # racing writes latches what was written (refused where the span
            # meets a decommitted chunk)
            first = rng.randrange(self.npages)
            last = min(self.npages, first + rng.randint(1, 3 * CHUNK))
            self.protect(np.arange(first, last), w.PAGE_READWRITE, may_fail=True)
        elif op == "round trip" and committed:
            c = rng.choice(committed)
            chunk = self.chunks[c]
            with chunk:
                chunk.ok = False                # the writers keep out meanwhile
                self.protect(self.chunk_pages(c),
                             rng.choice([w.PAGE_READONLY, w.PAGE_NOACCESS]))
                time.sleep(0)
                self.protect(self.chunk_pages(c), w.PAGE_READWRITE)
                chunk.ok = True
            b.f["read-only / no-access round trips"] += 1
        elif op == "commit over committed" and committed:
            # contents and written state kept
            c = rng.choice(committed)
            if w.VirtualAlloc(self.base + c * CHUNK * PAGE, CHUNK * PAGE,
                              w.MEM_COMMIT, w.PAGE_READWRITE) == 0:
                raise OSError("VirtualAlloc(MEM_COMMIT) over committed pages: "
                              "error %d" % w.GetLastError())
            b.f["commits over committed pages"] += 1

    def allocator(self, stop):
        """Allocations made, written, checked and released in a loop, beside
        the big one: fork children meet releases in flight."""
        b = self.books
        out = np.zeros(16, np.uint64)
        count = 0
        try:
            while not stop.is_set():
                a = w.VirtualAlloc(0, 16 * PAGE, w.MEM_RESERVE | w.MEM_COMMIT
                                   | w.MEM_WRITE_WATCH, w.PAGE_READWRITE)
                if not a:
                    raise OSError("VirtualAlloc: error %d" % w.GetLastError())
                # A store under the GIL: on softdirty a write made without it
                # (ctypes.memset) can be lost to another thread's reset, a
                # documented limit (found so under Linux 6.1 and 6.12).
                ctypes.c_uint8.from_address(a + 3 * PAGE).value = 1
                rc, n, _ = w.GetWriteWatch(0, a, 16 * PAGE, out, 16)
                if (rc, [int(x) - a for x in out[:n]]) != (0, [3 * PAGE]):
                    b.violation("a fresh allocation written at page 3 reports %s (%#x)"
                                % ([(int(x) - a) // PAGE for x in out[:n]], rc),
                                "fresh allocation wrong")
                if not w.VirtualFree(a, 0, w.MEM_RELEASE):
                    raise OSError("VirtualFree(MEM_RELEASE): error %d" % w.GetLastError())
                count += 1
        except BaseException as e:
            b.errors.append("win32 allocator: %r" % (e,))
        finally:
            b.f["allocations made and released"] += count

    @staticmethod
    def chunk_pages(c):
        return np.arange(c * CHUNK, (c + 1) * CHUNK)

    def decommit(self, pages):
        b = self.books
        before = b.before_decommit(pages)
        if not w.VirtualFree(self.base + int(pages[0]) * PAGE, len(pages) * PAGE,
                             w.MEM_DECOMMIT):
            raise OSError("VirtualFree(MEM_DECOMMIT): error %d" % w.GetLastError())
        b.after_decommit(pages, before)
        b.f["decommits"] += 1

    def commit(self, pages):
        if w.VirtualAlloc(self.base + int(pages[0]) * PAGE, len(pages) * PAGE,
                          w.MEM_COMMIT, w.PAGE_READWRITE) == 0:
            raise OSError("VirtualAlloc(MEM_COMMIT): error %d" % w.GetLastError())
        self.books.f["commits"] += 1

    def protect(self, pages, protect, may_fail=False):
        b = self.books
        before = b.done[pages].copy()
        ok, _ = w.VirtualProtect(self.base + int(pages[0]) * PAGE, len(pages) * PAGE,
                                 protect)
        b.after_protect(pages, before, ok)
        if ok:
            b.f["VirtualProtects"] += 1
        elif may_fail and w.GetLastError() == w.ERROR_INVALID_ADDRESS:
            b.f["VirtualProtects refused (span not committed)"] += 1
        else:
            raise OSError("VirtualProtect: error %d" % w.GetLastError())

    def restore(self):
        for c, chunk in enumerate(self.chunks):
            if not chunk.ok:
                self.commit(np.arange(c * CHUNK, (c + 1) * CHUNK))
                chunk.ok = True

    def close(self):
        self.words = self.bytes = None
        if not w.VirtualFree(self.base, 0, w.MEM_RELEASE):
            raise OSError("VirtualFree(MEM_RELEASE): error %d" % w.GetLastError())


# -- fork ---------------------------------------------------------------------------------

def child_checks(backend, region_target, win32_target):
    """In a fork child: the parent's tracking is refused, its pages are ours
    to write (copies), and regions of our own are tracked exactly."""
    signal.alarm(CHILD_SECONDS)                 # a hang ends the child (SIGALRM)
    try:
        region_target.region.get_write_watch()
        raise AssertionError("the parent's Region is tracked in the child")
    except writewatch.ForkedRegionError:
        pass
    try:
        w.GetWriteWatch(0, win32_target.base, WIN32_PAGES * PAGE,
                        np.zeros(1, np.uint64), 1)
        raise AssertionError("the parent's allocation is tracked in the child")
    except writewatch.ForkedRegionError:
        pass
    words = region_target.words
    for p in range(0, region_target.npages, 37):
        words[p * SLOTS + 5] = 0xC41D              # the child's copy only
    r = writewatch.Region(16 * PAGE, backend=backend)
    v = np.frombuffer(r, np.uint8)
    v[2 * PAGE] = v[9 * PAGE + 100] = 1
    got = [(int(a) - r.address) // PAGE for a in r.get_write_watch(reset=True)]
    assert got == [2, 9], got
    assert len(r.get_write_watch()) == 0
    del v
    r.close()
    base = w.VirtualAlloc(0, 16 * PAGE, w.MEM_RESERVE | w.MEM_COMMIT | w.MEM_WRITE_WATCH,
                          w.PAGE_READWRITE)
    assert base and w._backend_of(base) == backend, (base, w.GetLastError())
    ctypes.memset(base + 3 * PAGE, 1, 1)
    ctypes.memset(base + 12 * PAGE, 1, 1)
    out = np.zeros(16, np.uint64)
    rc, n, _ = w.GetWriteWatch(0, base, 16 * PAGE, out, 16)
    assert rc == 0 and [int(a) - base for a in out[:n]] == [3 * PAGE, 12 * PAGE], out[:n]
    assert w.VirtualFree(base, 8 * PAGE, w.MEM_DECOMMIT)
    rc, n, _ = w.GetWriteWatch(0, base, 16 * PAGE, out, 16)
    assert rc == 0 and [int(a) - base for a in out[:n]] == [12 * PAGE], out[:n]
    assert w.VirtualFree(base, 0, w.MEM_RELEASE)


def forker(backend, region_target, win32_target, stop, figures, errors):
    while not stop.is_set():
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(rfd)
                child_checks(backend, region_target, win32_target)
            except BaseException as e:
                try:
                    os.write(wfd, repr(e).encode()[:2000])
                except BaseException:
                    pass
                code = 1
            os._exit(code)
        os.close(wfd)
        figures["forks"] += 1
        deadline = time.monotonic() + CHILD_SECONDS + 10
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.005)
        with os.fdopen(rfd, "rb") as f:
            said = f.read().decode(errors="replace")
        code = os.waitstatus_to_exitcode(status)
        if code == 0:
            figures["fork children ok"] += 1
        else:
            errors.append("fork child %d ended with %s%s" % (
                figures["forks"], "SIGALRM (a call hung)" if code == -signal.SIGALRM
                else "status %d" % code, ": " + said if said else ""))
        time.sleep(0.01)


# -- the run --------------------------------------------------------------------------------

def run(backend, seconds, seed, self_test=None, fork=True, min_ops=50, cap=None):
    """Run for `seconds`, and on until each collector has made `min_ops`
    operations, the manager `min_ops` // 2 and one fork child has finished
    -- with --self-test, until the falsified results have been caught --
    but no longer than `cap` seconds (then it is an error: too slow to
    check anything)."""
    os.environ["WRITEWATCH_BACKEND"] = backend          # for the win32 allocations
    if cap is None:
        cap = max(10 * seconds, 300)
    targets = [RegionTarget(backend, seed, self_test),
               Win32Target(backend, seed + 1, self_test)]
    region_target, win32_target = targets
    stop_writers = threading.Event()
    stop_others = threading.Event()
    fork_figures = collections.Counter()
    fork_errors = []
    writers = [threading.Thread(target=t.writer, args=(i, stop_writers), daemon=True)
               for t in targets for i in range(len(t.kinds))]
    others = [threading.Thread(target=t.collector, args=(stop_others,), daemon=True)
              for t in targets]
    others += [threading.Thread(target=fn, args=(stop_others,), daemon=True)
               for fn in (win32_target.manager, win32_target.allocator)]
    if fork:
        others.append(threading.Thread(target=forker, daemon=True, args=(
            backend, region_target, win32_target, stop_others, fork_figures, fork_errors)))
    falsified = [t for t in targets if self_test != "unlatch" or t is win32_target]

    def enough():
        if self_test:
            return all(t.books.violations for t in falsified)
        return (all(t.books.ops >= min_ops for t in targets)
                and win32_target.manager_ops >= min_ops // 2
                and (not fork or fork_figures["fork children ok"] >= 1))

    switch = sys.getswitchinterval()
    # Finer thread switching than the default 5 ms: more interleavings.
    sys.setswitchinterval(0.0005)
    t0 = time.monotonic()
    for t in writers + others:
        t.start()
    errors = []
    try:
        while True:
            time.sleep(0.1)
            elapsed = time.monotonic() - t0
            if fork_errors or any(t.books.errors for t in targets):
                break
            if elapsed >= seconds and enough():
                break
            if elapsed >= cap:
                errors.append("still not enough done after %.0f s (collectors %s ops, "
                              "manager %d, fork children %d): too slow to check"
                              % (elapsed, [t.books.ops for t in targets],
                                 win32_target.manager_ops, fork_figures["fork children ok"]))
                break
    finally:
        stop_writers.set()
        for t in writers:
            t.join()
        stop_others.set()
        for t in others:
            t.join()
        sys.setswitchinterval(switch)
    elapsed = time.monotonic() - t0
    win32_target.restore()
    for t in targets:
        if not t.books.errors:
            t.finish()
        t.close()
    lanes = [t.books.summary() for t in targets]
    violations = sum(x["violations"] for x in lanes)
    errors += fork_errors[:MAX_KEPT]
    nerrors = sum(len(x["errors"]) for x in lanes) + len(errors)
    operations = sum(x.get(k, 0) for x in lanes for k in OPERATIONS) + fork_figures["forks"]
    return {"backend": backend, "seconds": round(elapsed, 2), "seed": seed,
            "kernel_writes_supported": region_target.kernel_ok,
            "writers": list(region_target.kinds), "operations": operations,
            "targets": lanes, "forks": fork_figures["forks"],
            "fork_children_ok": fork_figures["fork children ok"],
            "errors_outside_targets": errors,
            "violations": violations, "errors": nerrors,
            "ok": violations == 0 and nerrors == 0}


# What counts as an operation in the figures (plus each fork).
OPERATIONS = ["writes", "gets", "resets", "decommits", "commits", "VirtualProtects",
              "commits over committed pages", "allocations made and released"]

FIGURES = ["violations: lost write", "violations: reported, not written",
           "violations: malformed result", "violations: wrong contents",
           "violations: fresh allocation wrong",
           "writes", "numpy writes", "ctypes writes", "kernel writes",
           "gets", "gets with reset", "gets without reset", "truncated gets",
           "sub-range gets", "resets", "pages reported", "pages reported from a latch",
           "decommits", "commits", "VirtualProtects", "read-only / no-access round trips",
           "commits over committed pages", "allocations made and released",
           "pages reported but not written (softdirty's documented false positives)"]


def format_report(rep):
    lines = ["writewatch stress: %s, %.1f s, seed %d, %d operations, kernel writes %s"
             % (rep["backend"], rep["seconds"], rep["seed"], rep["operations"],
                "on" if "kernel" in rep["writers"] else
                "off (EFAULT into clean pages on this backend)" if not
                rep["kernel_writes_supported"] else "off (softdirty: numpy writers only)")]
    for lane in rep["targets"]:
        shown = ", ".join("%s %d" % (k, lane[k]) for k in FIGURES if lane.get(k))
        lines.append("  %-6s %4d pages: %s; %d violation(s)"
                     % (lane["target"], lane["pages"], shown, lane["violations"]))
        for m in lane["messages"]:
            lines.append("    VIOLATION: " + m)
        for e in lane["errors"]:
            lines.append("    ERROR: " + e)
    lines.append("  forks %d, children ok %d" % (rep["forks"], rep["fork_children_ok"]))
    for e in rep["errors_outside_targets"]:
        lines.append("    ERROR: " + e)
    lines.append("RESULT: %s (%d violation(s), %d error(s))"
                 % ("ok" if rep["ok"] else "FAILED", rep["violations"], rep["errors"]))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", required=True)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--self-test", choices=["drop", "extra", "unlatch"],
                    help="falsify results on purpose (the run must then fail)")
    ap.add_argument("--min-ops", type=int, default=50,
                    help="go on past --seconds until each collector made this many "
                    "(50: one cycle of every kind)")
    ap.add_argument("--cap", type=float, help="but never longer (default: 10 x --seconds, "
                    "at least 300)")
    ap.add_argument("--no-fork", action="store_true", help="no forking thread")
    ap.add_argument("--json", action="store_true", help="end with the report as one JSON line")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    rep = run(args.backend, args.seconds, seed, args.self_test, fork=not args.no_fork,
              min_ops=args.min_ops, cap=args.cap)
    print(format_report(rep), flush=True)
    if args.json:
        print(json.dumps(rep), flush=True)
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
