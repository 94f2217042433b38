"""Bad input, systematically: run by tests/test_fuzz.py in a subprocess (so a
crash fails the test instead of killing the runner).

Hypothesis throws arbitrary arguments -- wrong types, signs, huge values,
unaligned and overlapping ranges, addresses of other regions and of nothing,
read-only, wrong-dtype, strided and foreign buffers, junk iterables, paths of
every kind -- at every public function of writewatch (Region, the module
functions, get_write_watch_many, Snapshots, DeltaLog) and writewatch.win32,
and checks that

- only documented exceptions escape (Region API: TypeError, ValueError,
  OverflowError, BufferError, MemoryError, BackendUnavailable, OSError for
  kernel refusals; get_write_watch_many: TypeError, ValueError,
  ForkedRegionError, WriteWatchManyError; Snapshots: TypeError, ValueError,
  KeyError from restore(); DeltaLog: TypeError, ValueError (CorruptLogError
  is one), OSError from the file system; win32: failure values +
  GetLastError(), exceptions only TypeError/OverflowError for arguments C
  could not express);
- a refused call changes nothing and an accepted one gives the exact
  answer, where the fuzz can tell (get_write_watch_many's pages, a
  replay's state, Snapshots' ids and restored bytes);
- afterwards every witness region (never targeted) reports exactly what was
  written into it, every fuzzed region still tracks writes exactly, and a
  Snapshots per backend (targeted too) restores a kept id to exact bytes.

The sweep_* functions run every entry of the tables (junk objects, paths,
buffers) once, so that what the test asserts was reached does not depend
on what the fuzz drew.  Files are made only in a temporary directory of
the child's, removed at exit.

Prints one JSON line of counts at the end; exit status 0 only if all held.
"""

import array
import atexit
import ctypes
import json
import mmap
import operator
import os
import pathlib
import resource
import shutil
import sys
import tempfile
from fractions import Fraction

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

import writewatch
from writewatch import (BackendUnavailable, CorruptLogError, DeltaLog, ForkedRegionError, Region,
                        Snapshots, WriteWatchManyError)
from writewatch._core import _crc32c

PAGE = writewatch.PAGE_SIZE
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck), derandomize=False)
AVAILABLE = [b.name for b in writewatch.backends() if b.available]
COUNTS = {}                    # "call: outcome" -> how many
NOTES = {}                     # what the calls covered (not calls themselves) -> how many

# Huge sizes must fail, not eat the machine: cap the address space growth.
_soft, _hard = resource.getrlimit(resource.RLIMIT_AS)


def _vmsize():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024


resource.setrlimit(resource.RLIMIT_AS, (_vmsize() + (8 << 30), _hard))


def count(name, outcome):
    key = "%s: %s" % (name, outcome)
    COUNTS[key] = COUNTS.get(key, 0) + 1


def note(what):
    NOTES[what] = NOTES.get(what, 0) + 1


def pages(region, **kw):
    return [(int(a) - region.address) // PAGE for a in region.get_write_watch(**kw)]


# -- witnesses: never passed to the fuzzed calls ------------------------------------

class Witness:
    def __init__(self, backend):
        self.r = Region(16 * PAGE, backend=backend)
        v = np.frombuffer(self.r, dtype=np.uint8)
        for p in (1, 5, 6, 15):
            v[p * PAGE + p] = p
        del v
        self.want = [1, 5, 6, 15]

    def check(self):
        assert pages(self.r) == self.want, ("witness", self.r.backend, pages(self.r))
        v = np.frombuffer(self.r, dtype=np.uint8)
        assert all(v[p * PAGE + p] == p for p in self.want)
        del v


WITNESSES = [Witness(b) for b in AVAILABLE]

# -- fuzzed regions: any call may hit them; afterwards they must still track -------

FUZZED = [Region(8 * PAGE, backend=b) for b in AVAILABLE for _ in range(2)]
FUZZ_BASES = [r.address for r in FUZZED]


def check_fuzzed():
    for r in FUZZED:
        if r.closed:
            continue
        r.reset_write_watch()
        assert pages(r) == []
        v = np.frombuffer(r, dtype=np.uint8)
        v[2 * PAGE] = 1
        v[7 * PAGE + 5] = 1
        del v
        assert pages(r, reset=True) == [2, 7], (r.backend, pages(r))
        assert pages(r) == []


def check_all(pick=0):
    for wn in WITNESSES:
        wn.check()
    check_fuzzed()
    for t in SNAP_TARGETS:            # each restores a kept id to exact bytes
        t.check(pick)


# -- the strategies ----------------------------------------------------------------

SPECIAL = [0, 1, -1, 2, PAGE - 1, PAGE, PAGE + 1, 8 * PAGE, 8 * PAGE + 1, 1 << 31,
           (1 << 31) - 1, 1 << 32, (1 << 32) - 1, 1 << 47, (1 << 47) - PAGE, 1 << 63,
           (1 << 63) - 1, 1 << 64, (1 << 64) - 1, -(1 << 63), -(1 << 64), 10 ** 30]


class Index:
    def __init__(self, v):
        self.v = v

    def __index__(self):
        return self.v


class BadIndex:
    def __index__(self):
        raise RuntimeError("__index__ exploded")      # the caller's: may propagate (call())


class BadBool:
    def __bool__(self):
        raise RuntimeError("__bool__ exploded")


class NotIntIndex:
    """An __index__ that returns something else than an int."""
    def __init__(self, v):
        self.v = v

    def __index__(self):
        return self.v


def _arrays():
    base = FUZZED[0]
    return [
        lambda: np.zeros(4, dtype=np.uint64),
        lambda: np.zeros(1, dtype=np.uint64),
        lambda: np.zeros(0, dtype=np.uint64),
        lambda: np.zeros(100000, dtype=np.uint64),
        lambda: np.zeros((2, 4), dtype=np.uint64),
        lambda: np.zeros(16, dtype=np.uint64)[::2],
        lambda: np.zeros(8, dtype=np.int64),
        lambda: np.zeros(8, dtype=np.uint32),
        lambda: np.zeros(8, dtype=np.float64),
        lambda: np.zeros(8, dtype=">u8"),
        lambda: _readonly(np.zeros(8, dtype=np.uint64)),
        lambda: np.frombuffer(bytearray(64), dtype=np.uint64),
        lambda: np.frombuffer(b"\0" * 64, dtype=np.uint64),          # read-only
        lambda: bytearray(64),
        lambda: memoryview(b"\0" * 64),
        lambda: array.array("Q", [0] * 8),
        lambda: array.array("I", [0] * 8),
        lambda: (ctypes.c_uint64 * 8)(),
        lambda: (ctypes.c_void_p * 8)(),
        lambda: (ctypes.c_uint32 * 8)(),
    ]


def _readonly(a):
    a.flags.writeable = False
    return a


ARRAYS = _arrays()
OBJECTS = [object(), [], (), {}, "", "pagemap", b"x", 1.5, float("nan"), float("inf"),
           complex(1, 1), Fraction(1, 2), np.uint64(PAGE), np.int64(-1), np.float32(1),
           np.bool_(True), True, False, Index(PAGE), Index(-1), Index(1 << 70), BadIndex(),
           BadBool(), NotIntIndex(1.5), NotIntIndex("1"), NotIntIndex(None)]

ints = st.one_of(st.integers(), st.integers(-(1 << 70), 1 << 70), st.sampled_from(SPECIAL))
near = st.builds(lambda i, k: FUZZ_BASES[i % len(FUZZ_BASES)] + k,
                 st.integers(0, 100), st.integers(-2 * PAGE, 10 * PAGE))
witness_addr = st.builds(lambda i, k: WITNESSES[i % len(WITNESSES)].r.address + k,
                         st.integers(0, 10), st.integers(-PAGE, 17 * PAGE))
arrays = st.builds(lambda i: ARRAYS[i % len(ARRAYS)](), st.integers(0, 1000))
anything = st.one_of(st.none(), st.booleans(), ints, near, st.floats(),
                     st.text(max_size=4), st.binary(max_size=4),
                     st.sampled_from(OBJECTS), arrays)
# `anything` as one choice of a mix: st.one_of() flattens a nested one_of
# (mapped or not) into its branches, so junk would be most of what it draws.
junk = st.tuples(anything).map(lambda t: t[0])
backend_arg = st.one_of(anything, st.sampled_from(
    writewatch.backends().__class__(b.name for b in writewatch.backends())
    + ["", "nope", "PAGEMAP", "pagemap\0", "\0force:", "\0force:pagemap", "\0force:nope"]))

REGION_OK = (TypeError, ValueError, OverflowError, BufferError, MemoryError,
             BackendUnavailable, OSError)


EXPLODED = ("__index__ exploded", "__bool__ exploded", "__iter__ exploded",
            "__fspath__ exploded")


def call(name, fn, *args, _ok=REGION_OK, _on_refusal=None, **kw):
    """Call; (True, result), or (False, the exception) for one in `_ok`.
    Any other exception is a finding (re-raised), except the RuntimeError
    of an argument that explodes on purpose (BadIndex, ...): it is the
    caller's and may propagate unchanged.  _on_refusal(exception) runs
    while the exception is handled (its traceback, and every frame it
    holds, still alive).  The exception comes back without its traceback,
    so no frame (and no view it holds) outlives the call."""
    try:
        result = fn(*args, **kw)
    except _ok as e:
        count(name, type(e).__name__)
        if _on_refusal is not None:
            _on_refusal(e)
        return False, e.with_traceback(None)
    except RuntimeError as e:
        which = [x for x in EXPLODED if x in str(e)]
        if not which or type(e) is not RuntimeError:
            raise
        count(name, "caller's %s error" % which[0].split()[0])
        return False, e.with_traceback(None)
    count(name, "ok")
    return True, result


def guarded(name, fn, *args, **kw):
    """call(); the result, or None if refused."""
    ok, result = call(name, fn, *args, **kw)
    return result if ok else None


# -- Region API ----------------------------------------------------------------------

# Valid-looking calls too, so that the fuzz also reaches success paths.
plausible_new = st.tuples(st.integers(1, 64 * PAGE),
                          st.one_of(st.none(), st.sampled_from(AVAILABLE)), st.none())


@SETTINGS
@given(args=st.one_of(st.tuples(st.one_of(anything, st.integers(1, 64 * PAGE)), backend_arg,
                                st.one_of(st.none(), anything, witness_addr)),
                      plausible_new))
def fuzz_region_new(args):
    size, backend, address = args
    r = guarded("Region()", Region, size, backend=backend, address=address)
    if r is not None:
        v = np.frombuffer(r, dtype=np.uint8)
        v[-1] = 1
        del v
        assert pages(r) == [r.size // PAGE - 1]
        r.close()
    check_all()


plausible_get = st.tuples(st.one_of(st.none(), near), st.one_of(st.none(), st.integers(1, 9 * PAGE)),
                          st.booleans(), st.one_of(st.none(), st.integers(1, 9)),
                          st.one_of(st.none(), st.just(ARRAYS[0]).map(lambda f: f())))


@SETTINGS
@given(which=st.integers(0, 100),
       args=st.one_of(st.tuples(anything, anything, anything, anything,
                                st.one_of(st.none(), arrays, anything)), plausible_get))
def fuzz_get(which, args):
    address, size, reset, max_count, out = args
    r = FUZZED[which % len(FUZZED)]
    guarded("get_write_watch", r.get_write_watch, address, size, reset=reset,
            max_count=max_count, out=out)
    check_all()


@SETTINGS
@given(which=st.integers(0, 100), address=anything, size=anything)
def fuzz_reset(which, address, size):
    r = FUZZED[which % len(FUZZED)]
    guarded("reset_write_watch", r.reset_write_watch, address, size)
    check_all()


@SETTINGS
@given(which=st.integers(0, 100), args=st.lists(anything, max_size=3),
       view=st.booleans())
def fuzz_close_and_closed(which, args, view):
    """close() with junk arguments, close() under a live view, and every call
    on a closed region."""
    backend = AVAILABLE[which % len(AVAILABLE)]
    r = Region(4 * PAGE, backend=backend)
    guarded("close(junk)", r.close, *args) if args else None
    m = memoryview(r) if view and not r.closed else None
    if m is not None:
        guarded("close(view alive)", r.close)
        assert not r.closed
        m.release()
    r.close()
    r.close()
    for name, call in (("closed get", lambda: r.get_write_watch()),
                       ("closed reset", lambda: r.reset_write_watch()),
                       ("closed memoryview", lambda: memoryview(r)),
                       ("closed address", lambda: r.address)):
        guarded(name, call)
    check_all()


@SETTINGS
@given(args=st.lists(anything, max_size=3))
def fuzz_module_functions(args):
    for name, fn in (("backends", writewatch.backends),
                     ("default_backend", writewatch.default_backend)):
        res = guarded(name, fn, *args)
        if not args:
            assert res is not None
    check_all()


# -- get_write_watch_many --------------------------------------------------------------

# The regions it may be given: the fuzzed ones, a few more per backend, and
# pagemap regions made one after another (so usually adjacent in memory: the
# spans asked with one scan).  Before each example every pool region is
# reset and given known writes; afterwards each must report exactly those,
# or nothing if a successful call reset it.
MANY_POOL = FUZZED + [Region(4 * PAGE, backend=b) for b in AVAILABLE for _ in range(2)]
if "pagemap" in AVAILABLE:
    MANY_POOL += [Region(2 * PAGE, backend="pagemap") for _ in range(6)]
CLOSED = [Region(PAGE, backend=b) for b in AVAILABLE]
for _r in CLOSED:
    _r.close()


def many_pattern(i):
    n = MANY_POOL[i].size // PAGE
    return sorted({i % n, (3 * i + 1) % n})


def many_prepare():
    for i, r in enumerate(MANY_POOL):
        r.reset_write_watch()
        v = np.frombuffer(r, dtype=np.uint8)
        for p in many_pattern(i):
            v[p * PAGE + i] = i + 1
        del v


def adjacent_pagemap(regions):
    spans = sorted((r.address, r.address + r.size) for r in regions
                   if isinstance(r, Region) and not r.closed and r.backend == "pagemap")
    return any(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def _exploding(items):
    yield from items
    raise RuntimeError("__iter__ exploded")


def _objarray(items):
    a = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        a[i] = x
    return a


def many_container(kind, items):
    """(what to pass, the items it yields -- None when that is not known
    in advance)."""
    if kind == "list":
        return list(items), list(items)
    if kind == "tuple":
        return tuple(items), list(items)
    if kind == "generator":
        return (x for x in items), list(items)
    if kind == "exploding generator":
        return _exploding(items), None
    if kind in ("set", "dict"):
        try:
            c = set(items) if kind == "set" else dict.fromkeys(items)
        except TypeError:            # an unhashable item
            return list(items), list(items)
        return c, list(c)
    if kind == "object array":
        a = _objarray(items)
        return a, list(a)
    if kind == "100000 times the first":
        c = items[:1] * 100000
        return c, c
    if kind == "the first, bare":
        x = items[0] if items else None
        try:
            return x, list(x)
        except Exception:
            return x, None
    raise AssertionError(kind)


MANY_KINDS = ["list", "tuple", "generator", "exploding generator", "set", "dict",
              "object array", "100000 times the first", "the first, bare"]
pool_index = st.integers(0, len(MANY_POOL) - 1)
# Valid-looking calls too: distinct open regions of the pool.
plausible_many = st.lists(pool_index, unique=True, max_size=len(MANY_POOL)).map(
    lambda ix: [MANY_POOL[i] for i in ix])
junk_many = st.lists(st.one_of(pool_index.map(lambda i: MANY_POOL[i]),
                               pool_index.map(lambda i: MANY_POOL[i]),
                               st.sampled_from(CLOSED), junk), max_size=12)
# Regions only, some closed, some twice.
bad_regions = st.lists(st.one_of(pool_index.map(lambda i: MANY_POOL[i]), st.sampled_from(CLOSED)),
                       min_size=1, max_size=12)
MANY_OK = (TypeError, ValueError, ForkedRegionError, WriteWatchManyError)


@SETTINGS
@given(items=st.one_of(plausible_many, junk_many, bad_regions), kind=st.sampled_from(MANY_KINDS),
       reset=st.one_of(st.booleans(), junk))
def fuzz_many(items, kind, reset):
    many_prepare()
    arg, order = many_container(kind, items)
    try:
        truth = bool(reset)
    except Exception:
        truth = None
    # Succeeds exactly when it yields distinct open Regions and `reset` has
    # a truth value.
    expect = (order is not None and truth is not None
              and all(isinstance(x, Region) and not x.closed for x in order)
              and len({id(x) for x in order}) == len(order))
    if expect and adjacent_pagemap(order):
        note("get_write_watch_many: a valid call with adjacent pagemap regions")
    ok, res = call("get_write_watch_many", writewatch.get_write_watch_many, arg,
                   reset=reset, _ok=MANY_OK)
    del arg
    assert ok == expect, (kind, items, reset, res)
    if ok:
        assert isinstance(res, list) and len(res) == len(order)
        for r, got in zip(order, res):
            i = MANY_POOL.index(r)
            assert [(int(a) - r.address) // PAGE for a in got] == many_pattern(i), (r, got)
    else:
        assert not isinstance(res, WriteWatchManyError), res     # nothing was refused by the kernel
    answered = {id(x) for x in order} if ok and truth else set()
    for i, r in enumerate(MANY_POOL):
        assert pages(r) == ([] if id(r) in answered else many_pattern(i)), (i, r, pages(r))
    check_all()


def sweep_many():
    """Each kind of iterable with each kind of content once: the fuzz
    draws them at random, this makes sure each is met."""
    contents = [[], MANY_POOL[:], MANY_POOL[:3] + MANY_POOL[:1], [MANY_POOL[0], CLOSED[0]],
                [MANY_POOL[1], object()], [np.uint64(PAGE)], ["pagemap"]]
    for kind in MANY_KINDS:
        for items in contents:
            for reset in (False, True, BadBool()):
                fuzz_many.hypothesis.inner_test(items, kind, reset)


# -- Snapshots -------------------------------------------------------------------------

SNAP_KEEP = 3


def _as_index(x):
    """What writewatch's `_index` makes of an argument: the int, or None
    where it raises (TypeError, or the caller's own error)."""
    if type(x) is int:
        return x
    if isinstance(x, float):
        return None
    try:
        return operator.index(x)
    except Exception:
        return None


class SnapTarget:
    """A region per backend with a Snapshots that the fuzz calls with junk
    and with valid arguments alike, and a model of it: the ids it keeps and
    a copy of the region's bytes at each of their save()s.  check() restores
    a kept id and compares every byte, so junk that damaged a kept snapshot
    is caught."""

    def __init__(self, backend):
        self.r = Region(8 * PAGE, backend=backend)
        self.s = Snapshots(self.r, keep=SNAP_KEEP)
        self.ids = []                # what s.ids must be
        self.refs = {}               # id -> bytes of the region at its save()
        self.write(0o1234567)
        self.save()

    def write(self, seed):
        v = np.frombuffer(self.r, dtype=np.uint8)
        for k in range(1 + seed % 3):
            p = (seed >> (3 * k)) % 8
            v[p * PAGE + (seed >> 9) % PAGE] = (seed + k) % 255 + 1
        del v

    def save(self):
        sid = self.s.save()
        assert sid == (self.ids[-1] + 1 if self.ids else 0), (sid, self.ids)
        self.ids = (self.ids + [sid])[-SNAP_KEEP:]
        self.refs = {k: b for k, b in self.refs.items() if k in self.ids}
        self.refs[sid] = bytes(self.r)

    def restored(self, sid):
        assert bytes(self.r) == self.refs[sid], ("restore", self.r.backend, sid)
        self.ids = [k for k in self.ids if k <= sid]
        self.refs = {k: b for k, b in self.refs.items() if k <= sid}

    def check(self, pick):
        assert not self.s.closed
        assert self.s.ids == tuple(self.ids), (self.s.ids, self.ids)
        if self.ids:
            sid = self.ids[pick % len(self.ids)]
            self.s.restore(sid)
            self.restored(sid)


SNAP_TARGETS = [SnapTarget(b) for b in AVAILABLE]


SNAP_OK = (TypeError, ValueError)
RESTORE_OK = (TypeError, ValueError, KeyError)


def restore_call(name, s, sid, kept):
    """s.restore(sid): refused exactly when `sid` is not an integer
    (TypeError), or an integer not in `kept` (KeyError naming the ids
    kept); True if it restored."""
    want = _as_index(sid)
    ok, res = call(name, s.restore, sid, _ok=RESTORE_OK)
    assert ok == (want in kept), (sid, kept, res)
    if not ok and want is not None and isinstance(res, KeyError):
        assert "the ids kept are" in str(res), res
        if kept:
            assert str(kept[0]) in str(res) and str(kept[-1]) in str(res), (res, kept)
    if not ok and want is None:
        assert not isinstance(res, KeyError), res
    return ok


sid_arg = st.one_of(st.integers(-2, 12), st.tuples(ints).map(lambda t: t[0]), junk)
class Kept:
    """Stands for the first kept id + k: kept for 0 <= k < len(ids)."""
    def __init__(self, k):
        self.k = k


kept_arg = st.builds(Kept, st.integers(-2, SNAP_KEEP + 1))
snap_op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 1 << 20)),
    st.tuples(st.just("save"), st.just(())),
    st.tuples(st.just("save"), st.lists(anything, min_size=1, max_size=2)),
    st.tuples(st.just("restore"), st.one_of(sid_arg, kept_arg, kept_arg, kept_arg)),
    st.tuples(st.just("restore+"), st.lists(anything, min_size=1, max_size=2)),
    st.tuples(st.just("close"), st.lists(anything, min_size=1, max_size=2)),
    st.tuples(st.just("look"), st.just(())))


@SETTINGS
@given(which=st.integers(0, 100), ops=st.lists(snap_op, max_size=8), pick=st.integers(0, 10))
def fuzz_snapshots_calls(which, ops, pick):
    """Junk and valid calls on a live Snapshots (never closing it): each
    refused call changes nothing, each accepted one does what the model
    says, and every kept id still restores exact bytes."""
    t = SNAP_TARGETS[which % len(SNAP_TARGETS)]
    for op, arg in ops:
        if op == "write":
            t.write(arg)
        elif op == "save" and not arg:
            ok, _ = call("Snapshots.save()", t.save, _ok=())
        elif op == "save":
            ok, _ = call("Snapshots.save(junk)", t.s.save, *arg, _ok=SNAP_OK)
            assert not ok
        elif op == "restore":
            if isinstance(arg, Kept):
                arg = (t.ids[0] if t.ids else 0) + arg.k
            if restore_call("Snapshots.restore()", t.s, arg, tuple(t.ids)):
                t.restored(_as_index(arg))
        elif op == "restore+":
            ok, _ = call("Snapshots.restore(sid, junk)", t.s.restore, t.ids[-1] if t.ids else 0,
                         *arg, _ok=SNAP_OK)
            assert not ok
        elif op == "close":
            ok, _ = call("Snapshots.close(junk)", t.s.close, *arg, _ok=SNAP_OK)
            assert not ok and not t.s.closed
        else:
            assert t.s.ids == tuple(t.ids)
            nbytes = t.s.nbytes
            assert type(nbytes) is int and nbytes > 0, nbytes
            assert t.s.keep == SNAP_KEEP and t.s.region is t.r and not t.s.closed
            repr(t.s)
            count("Snapshots ids/nbytes/keep/region/repr", "ok")
    check_all(pick)


plausible_snap = st.tuples(st.integers(0, 100).map(lambda i: FUZZED[i % len(FUZZED)]),
                           st.one_of(st.integers(1, 5), st.just(1 << 40), st.just(10 ** 30)))


@SETTINGS
@given(args=st.one_of(
    st.tuples(st.one_of(st.sampled_from(CLOSED), st.sampled_from(FUZZED), junk),
              st.one_of(st.integers(-3, 5), st.tuples(ints).map(lambda t: t[0]), junk)),
    plausible_snap),
    seeds=st.lists(st.integers(0, 1 << 20), min_size=1, max_size=4),
    how=st.sampled_from(["close", "with", "region closes"]), after=st.lists(sid_arg, max_size=3))
def fuzz_snapshots_new(args, seeds, how, after):
    """Snapshots(junk region, junk keep); one that is made (on a fuzzed
    region) saves and restores exact bytes, and once closed -- by close(),
    a with block, or its region closing -- refuses every call with
    ValueError."""
    region, keep = args
    k = _as_index(keep)
    expect = isinstance(region, Region) and not region.closed and k is not None and k >= 1
    if k is not None and k < 1 and isinstance(region, Region):
        note("Snapshots(): keep < 1")
    own = None
    if expect and how == "region closes":
        region = own = Region(region.size, backend=region.backend)   # ours to close
        v = np.frombuffer(own, dtype=np.uint8)
        v[3 * PAGE] = 3                            # a used region: its non-zero page is copied
        del v
    ok, s = call("Snapshots()", Snapshots, region, keep=keep, _ok=SNAP_OK)
    assert ok == expect, (region, keep, s)
    if ok:
        assert s.keep == min(k, 1 << 40) and s.region is region
        refs = {}
        for seed in seeds:
            v = np.frombuffer(region, dtype=np.uint8)
            v[(seed % 8) * PAGE + (seed >> 3) % PAGE] = (seed >> 15) % 255 + 1
            del v
            sid = s.save()
            refs[sid] = bytes(region)
        kept = s.ids
        assert kept == tuple(sorted(refs)[-min(k, len(refs)):])
        for sid in after:
            if restore_call("Snapshots().restore()", s, sid, kept):
                w = _as_index(sid)
                assert bytes(region) == refs[w]
                kept = tuple(x for x in kept if x <= w)
        s.restore(kept[0])
        assert bytes(region) == refs[kept[0]]
        if how == "close":
            s.close()
        elif how == "with":
            with s as same:
                assert same is s
        else:
            own.close()
            own = None
        assert s.closed
        s.close()
        for name, fn in (("closed save", s.save), ("closed restore", lambda: s.restore(kept[0])),
                         ("closed ids", lambda: s.ids), ("closed nbytes", lambda: s.nbytes),
                         ("closed with", lambda: s.__enter__())):
            ok, e = call("Snapshots " + name, fn, _ok=SNAP_OK)
            assert not ok and type(e) is ValueError and "closed" in str(e), (name, e)
        repr(s)
    if own is not None:
        own.close()
    check_all()


SWEEP_JUNK = OBJECTS + [None, -1, 0, 1, 2, 1 << 70, -(1 << 70), 1.0, "1", b"1"]


def sweep_snapshots():
    """Every junk object once as each argument: the fuzz draws them at
    random, this makes sure each is met."""
    for i, x in enumerate(SWEEP_JUNK):
        fuzz_snapshots_calls.hypothesis.inner_test(i, [("restore", x), ("save", [x]),
                                                       ("close", [x]), ("look", ())], i)
        fuzz_snapshots_new.hypothesis.inner_test((FUZZED[i % len(FUZZED)], x), [i], "close", [x])
        fuzz_snapshots_new.hypothesis.inner_test((x, 2), [i], "with", [])
    for r in CLOSED:
        fuzz_snapshots_new.hypothesis.inner_test((r, 2), [0], "close", [])


# -- DeltaLog --------------------------------------------------------------------------

# Every file the fuzz names lies in a directory of its own (removed at exit):
# junk text never becomes a path as it is, so nothing is written elsewhere.
TMP = tempfile.mkdtemp(prefix="writewatch-fuzz-")
atexit.register(shutil.rmtree, TMP, True)
os.mkdir(os.path.join(TMP, "cwd"))
os.chdir(os.path.join(TMP, "cwd"))          # "" resolves in TMP too
LOGSIZE = 8 * PAGE


def tmp(*names):
    return os.path.join(TMP, *names)


def _template(name, size, states):
    """A log of a `size`-byte region with one record per state (bytes);
    returns the file's bytes."""
    r = Region(size)
    with DeltaLog(tmp(name), r) as log:
        for i, st_ in enumerate(states):
            memoryview(r)[:] = st_
            assert log.append() == i
    r.close()
    with open(tmp(name), "rb") as f:
        return f.read()


def _state(seed):
    b = bytearray(LOGSIZE)
    for k in range(3):
        p = (seed * 7 + k * 3) % 8
        b[p * PAGE + seed + k] = seed + k + 1
    return bytes(b)


GOOD_STATES = [_state(s) for s in (1, 2, 3)]
GOOD = _template("good.log", LOGSIZE, GOOD_STATES)
SMALL_STATES = [b"\1" * (2 * PAGE)]
SMALL = _template("small.log", 2 * PAGE, SMALL_STATES)
EMPTYLOG = _template("emptylog.log", LOGSIZE, [])
_damaged = bytearray(GOOD)
_damaged[-1] ^= 0x10                         # the last record's last page byte
_future = bytearray(GOOD[:64])
_future[8:12] = (2).to_bytes(4, "little")    # version 2, checksum right
_future[60:64] = _crc32c(bytes(_future[:60])).to_bytes(4, "little")
FILES = {                                    # name -> contents, written anew each example
    "good.log": GOOD,
    "torn.log": GOOD + b"WWRC" + b"\xab" * 20,
    "damaged.log": bytes(_damaged),
    "future.log": bytes(_future),
    "small.log": SMALL,
    "emptylog.log": EMPTYLOG,
    "notalog": b"this is not a log\n" * 20,
    "empty": b"",
}
os.mkdir(tmp("dir"))
os.mkfifo(tmp("fifo"))
os.symlink("loop", tmp("loop"))
os.symlink("nowhere", tmp("dangling"))
os.symlink("dir", tmp("dirlink"))
_HELD_REGION = Region(LOGSIZE)
HELD = DeltaLog(tmp("held.log"), _HELD_REGION)      # open all along: BlockingIOError


def reset_files():
    """The files as FILES says, and no new* file."""
    for name, data in FILES.items():
        with open(tmp(name), "wb") as f:
            f.write(data)
    for name in os.listdir(TMP):
        if name.startswith("new"):
            os.unlink(tmp(name))


reset_files()


class BadPath:
    def __fspath__(self):
        raise RuntimeError("__fspath__ exploded")


class WeirdPath:
    def __init__(self, v):
        self.v = v

    def __fspath__(self):
        return self.v


# (path, what DeltaLog(path, <an open 8-page region>) does: None for
# success, else the exception class it raises).  Replay's answers differ
# (REPLAY_EXPECT); "new" paths do not exist before the call.
LOG_PATHS = [
    (tmp("good.log"), None), (tmp("torn.log"), None),
    (os.fsencode(tmp("good.log")), None), (pathlib.Path(tmp("good.log")), None),
    (tmp("new.log"), None), (os.fsencode(tmp("new-b.log")), None),
    (pathlib.Path(tmp("new-p.log")), None), (WeirdPath(os.fsencode(tmp("new-w.log"))), None),
    (tmp("empty"), None), (tmp("emptylog.log"), None),
    (tmp("damaged.log"), CorruptLogError), (tmp("notalog"), CorruptLogError),
    (tmp("future.log"), ValueError), (tmp("small.log"), ValueError),
    (tmp("held.log"), BlockingIOError), (tmp("dir"), IsADirectoryError),
    (tmp("dirlink"), IsADirectoryError), (tmp("dir") + "/", IsADirectoryError),
    (tmp("missing", "x.log"), FileNotFoundError), (tmp("notalog", "x.log"), NotADirectoryError),
    (tmp("loop"), OSError), (tmp("dangling"), FileNotFoundError),
    (tmp("x" * 300), OSError), (tmp("a\0b"), ValueError), ("", FileNotFoundError),
    (tmp("fifo"), OSError), ("/dev/null", "?"),
    (BadPath(), RuntimeError), (WeirdPath(3), TypeError), (WeirdPath(None), TypeError),
]
# What replay(path, <a right-sized buffer>) does with each: None for success
# (the state of record `upto`), else the exception class.
REPLAY_EXPECT = {
    "good.log": None, "torn.log": None, "new.log": FileNotFoundError,
    "new-b.log": FileNotFoundError, "new-p.log": FileNotFoundError,
    "new-w.log": FileNotFoundError, "empty": CorruptLogError,
    "emptylog.log": ValueError, "damaged.log": CorruptLogError,
    "future.log": ValueError, "small.log": ValueError, "held.log": ValueError,
}
REPLAY_PATHS = [(p, e) for p, e in LOG_PATHS if "fifo" not in str(p)]   # a FIFO blocks open()


def path_name(p):
    """The file name a path names in TMP, or None."""
    try:
        s = os.fsdecode(p)
    except Exception:
        return None
    return os.path.basename(s) if os.path.dirname(s) == TMP else None


def replay_expect(p, e):
    name = path_name(p)
    return REPLAY_EXPECT.get(name, e)


junk_path = st.one_of(junk.filter(lambda x: not isinstance(x, (str, bytes))),
                      st.text(max_size=6).map(lambda s: tmp("new-t" + s.replace("/", "_"))),
                      st.binary(max_size=6).map(lambda b: os.fsencode(tmp("new-b"))
                                                + b.replace(b"/", b"_")))
DL_OK = (TypeError, ValueError, OSError)
SMALL_REGION = object()                      # stands for a 2-page region made for the example
log_region = st.one_of(st.sampled_from(FUZZED), st.sampled_from(FUZZED),
                       st.sampled_from(CLOSED), st.just(SMALL_REGION), junk)
sync_arg = st.one_of(st.booleans(), junk)


def deltalog_case(path, region, ops, extra):
    """DeltaLog(junk path, junk region), append(sync=junk) on the ones
    made; afterwards every record appended replays to the bytes the
    region held at its append()."""
    try:
        _deltalog_case(path, region, ops, extra)
    finally:
        reset_files()            # only DeltaLog() changes files: they are as made for the rest
    check_all()


def _deltalog_case(path, region, ops, extra):
    path, expect = path
    name = path_name(path)
    small = None
    if region is SMALL_REGION:
        region = small = Region(2 * PAGE)
    # The checks come in this order: region's type, the path's, the region
    # open, then the file.
    if not isinstance(region, Region):
        expect = TypeError
    elif expect in (TypeError, RuntimeError, "?"):
        pass
    elif region.closed:
        expect = ValueError
    elif small is not None and name in ("good.log", "torn.log", "emptylog.log",
                                        "damaged.log", "future.log"):
        expect = ValueError                    # logs of 8-page regions (or of version 2)
    elif small is not None and name == "small.log":
        expect = None
    ok, log = call("DeltaLog()", DeltaLog, path, region, _ok=DL_OK)
    try:
        if expect != "?":
            assert ok == (expect is None), (path, region, log)
            if not ok:
                assert isinstance(log, expect), (path, region, expect, log)
                if expect is ValueError:
                    assert not isinstance(log, CorruptLogError), (path, log)
        if ok:
            use_log(log, region, name, ops, extra)
    finally:
        if ok:
            log.close()          # even after a failed check: its lock would fail the next
        if small is not None:
            small.close()


fuzz_deltalog = SETTINGS(given(
    path=st.one_of(st.sampled_from(LOG_PATHS), st.sampled_from(LOG_PATHS),
                   junk_path.map(lambda p: (p, "?"))),
    region=log_region,
    ops=st.lists(st.tuples(st.integers(0, 1 << 20), sync_arg), max_size=4),
    extra=st.lists(anything, min_size=1, max_size=2))(deltalog_case))
fuzz_deltalog.__name__ = "fuzz_deltalog"


def use_log(log, region, name, ops, extra):
    """append(sync=junk) and append(junk) on a new DeltaLog; then every
    record replays to the bytes the region held at its append()."""
    old = {"good.log": GOOD_STATES, "torn.log": GOOD_STATES, "small.log": SMALL_STATES}
    states = dict(enumerate(old.get(name, [])))
    assert isinstance(log.path, str) and log.region is region and not log.closed, log.path
    for seed, sync in ops:
        v = np.frombuffer(region, dtype=np.uint8)
        v[seed % v.size] = (seed >> 15) % 255 + 1
        del v
        try:
            truth = bool(sync)
        except Exception:
            truth = None
        ok, n = call("DeltaLog.append(sync=...)", log.append, sync=sync, _ok=DL_OK)
        assert ok == (truth is not None), (sync, n)
        if ok:
            assert n == len(states), (n, sorted(states))
            states[n] = bytes(region)
    ok, _ = call("DeltaLog.append(junk)", log.append, True, *extra, _ok=DL_OK)
    assert not ok
    n = log.append(sync=False)
    states[n] = bytes(region)
    repr(log)
    log.close()
    log.close()
    for what, fn in (("closed append", log.append), ("closed with", log.__enter__)):
        ok, e = call("DeltaLog " + what, fn, _ok=DL_OK)
        assert not ok and type(e) is ValueError, e
    out = bytearray(region.size)
    for n, want in states.items():
        assert DeltaLog.replay(log.path, out, upto=n) == n
        assert bytes(out) == want, ("replay", log.path, n)


def _ro_mmap():
    with open(tmp("good.log"), "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _closed_mmap():
    m = mmap.mmap(-1, LOGSIZE)
    m.close()
    return m


class PyObjects(ctypes.Structure):
    _fields_ = [("a", ctypes.py_object), ("b", ctypes.c_uint64)]


# (maker, what replay into it does with a right log: None, or the exception class)
INTO = [
    (lambda: bytearray(LOGSIZE), None),
    (lambda: memoryview(bytearray(LOGSIZE)), None),
    (lambda: np.zeros(LOGSIZE // 8, dtype=np.uint64), None),
    (lambda: np.zeros((8, PAGE), dtype=np.uint8), None),
    (lambda: np.zeros(LOGSIZE // 8, dtype=np.float64), None),
    (lambda: array.array("Q", bytes(LOGSIZE)), None),
    (lambda: (ctypes.c_char * LOGSIZE)(), None),
    (lambda: mmap.mmap(-1, LOGSIZE), None),
    (lambda: memoryview(Region(LOGSIZE)), None),             # closed once checked
    (lambda: bytearray(LOGSIZE + 1), ValueError),
    (lambda: bytearray(LOGSIZE - PAGE), ValueError),
    (lambda: bytearray(0), ValueError),
    (lambda: np.zeros(2 * LOGSIZE, dtype=np.uint8)[::2], ValueError),
    (lambda: np.zeros((PAGE, 8), dtype=np.uint8).T, ValueError),
    (lambda: np.zeros(LOGSIZE // 8, dtype="M8[s]"), ValueError),       # no buffer export
    (lambda: bytes(LOGSIZE), TypeError),
    (lambda: memoryview(bytearray(LOGSIZE)).toreadonly(), TypeError),
    (lambda: _readonly(np.zeros(LOGSIZE, dtype=np.uint8)), TypeError),
    (_ro_mmap, TypeError),
    (_closed_mmap, ValueError),
    # Buffers of Python object pointers: raw bytes written over them would
    # crash the interpreter.
    (lambda: np.full(LOGSIZE // 8, None, dtype=object), TypeError),
    (lambda: (ctypes.py_object * (LOGSIZE // 8))(), TypeError),
    (lambda: np.zeros(LOGSIZE // 16, dtype=[("a", "O"), ("b", "<u8")]), TypeError),
    (lambda: (PyObjects * (LOGSIZE // 16))(), TypeError),
]


def into_bytes(x):
    if isinstance(x, Region):
        return bytes(x)
    with memoryview(x) as m:
        return m.tobytes()


def short(x):
    """A repr for assertion messages: buffers by type and size only."""
    try:
        with memoryview(x) as m:
            return "<%s of %d bytes>" % (type(x).__name__, m.nbytes)
    except Exception:
        return repr(x)[:200]


def released(mv):
    try:
        mv.nbytes
    except ValueError:
        return True
    return False


def replay_refused(target, before):
    """What runs while a refused replay's exception is handled (its
    traceback alive): no view of `into` may outlive the call."""
    def hook(e):
        if type(target) is bytearray:
            target.append(0)                   # BufferError while a view of it exists
            del target[-1]
        elif isinstance(target, memoryview) and isinstance(target.obj, Region):
            region = target.obj
            assert before is None or target.tobytes() == before, e
            target.release()
            region.close()                     # BufferError while a view of it exists
    return hook


def replay_case(path, into, upto):
    """DeltaLog.replay(junk path, junk into, junk upto): refused (with
    `into` unchanged) or the exact state of record `upto`."""
    (path, pexpect), (make, iexpect) = path, into
    pexpect = replay_expect(path, pexpect) if pexpect != "?" else "?"
    target = make()
    if isinstance(target, Region) and not target.closed:
        target.reset_write_watch()
    try:
        before = into_bytes(target)
    except Exception:
        before = None
    if upto is None:
        number = 2
    else:
        number = _as_index(upto) if not isinstance(upto, NotIntIndex) else None
    good_upto = number is not None and 0 <= number <= 2
    if path_name(path) == "damaged.log" and good_upto and number < 2:
        pexpect = None          # the damaged record is not needed: the replay goes on
    what = (path, short(target), short(upto))
    ok, res = call("DeltaLog.replay()", DeltaLog.replay, path, target, upto=upto,
                   _ok=DL_OK, _on_refusal=replay_refused(target, before))
    # Which argument is refused first is not specified; what must hold: a
    # call with every argument right succeeds, one with a wrong argument
    # fails -- with that argument's error when it is the only wrong one.
    if pexpect is None and iexpect is None:
        assert ok == good_upto, (what, res)
        if not ok and not isinstance(upto, BadIndex):
            assert type(res) is (ValueError if number is not None else TypeError), (what, res)
    if pexpect not in (None, "?") or iexpect not in (None, "?"):
        assert not ok, (what, res)
        if good_upto and iexpect is None:
            assert isinstance(res, pexpect), (what, res)
        if good_upto and pexpect is None:
            assert isinstance(res, iexpect), (what, res)
    if ok:
        assert res == number, (what, res)
        assert into_bytes(target) == GOOD_STATES[res], ("replay", what, res)
        if isinstance(target, Region):
            # The pages it changed count as written for the region's users.
            changed = [i for i in range(8) if GOOD_STATES[res][i * PAGE:(i + 1) * PAGE]
                       != before[i * PAGE:(i + 1) * PAGE]]
            assert set(changed) <= set(pages(target)), (changed, pages(target))
    elif before is not None and not (isinstance(target, memoryview) and released(target)):
        assert into_bytes(target) == before, ("refused replay changed into", what)
    if isinstance(target, mmap.mmap) and not target.closed:
        target.close()
    if isinstance(target, memoryview) and not released(target) and isinstance(target.obj, Region):
        region = target.obj
        target.release()
        region.close()
    del target
    check_all()


INTO_ANY = st.one_of(st.sampled_from(INTO), st.sampled_from(INTO),
                     st.sampled_from(FUZZED).map(lambda r: (lambda: r, None)),
                     st.sampled_from(CLOSED).map(lambda r: (lambda: r, ValueError)),
                     st.just((lambda: _HELD_REGION, None)),
                     junk.map(lambda x: (lambda: x, "?")))
GOOD_PATHS = [(p, e) for p, e in REPLAY_PATHS if path_name(p) in ("good.log", "torn.log")]
fuzz_replay = SETTINGS(given(
    path=st.one_of(st.sampled_from(GOOD_PATHS), st.sampled_from(REPLAY_PATHS),
                   st.sampled_from(REPLAY_PATHS), junk_path.map(lambda p: (p, "?"))),
    into=INTO_ANY,
    upto=st.one_of(st.none(), st.integers(-2, 4), st.integers(-2, 4),
                   st.tuples(ints).map(lambda t: t[0]), junk))(replay_case))
fuzz_replay.__name__ = "fuzz_replay"


def sweep_deltalog():
    """Every path of the tables once with every backend's fuzzed region,
    and every replay path with every kind of `into`: the fuzz draws them
    at random, this makes sure each is met."""
    for i, (p, e) in enumerate(LOG_PATHS):
        for region in FUZZED[::2]:
            deltalog_case((p, e), region, [(i * 7919, True), (i * 104729, False)], [None])
    intos = INTO + [(lambda: FUZZED[0], None), (lambda: CLOSED[0], ValueError),
                    (lambda: "junk", "?")]
    for pe in REPLAY_PATHS:
        replay_case(pe, intos[0], None)
    for into in intos:
        replay_case((tmp("good.log"), None), into, None)
        replay_case((tmp("damaged.log"), CorruptLogError), into, None)
    for upto in (-1, 0, 1, 2, 3, 1 << 64, 1.0, "1", NotIntIndex(1.5), True, np.int8(1)):
        replay_case((tmp("good.log"), None), intos[0], upto)


# -- win32 --------------------------------------------------------------------------

try:
    from writewatch import win32 as w
except ImportError:
    w = None

if w is not None:
    W_OK = (TypeError, OverflowError)
    W_ALLOC = w.MEM_RESERVE | w.MEM_COMMIT | w.MEM_WRITE_WATCH
    # win32 witness: never targeted
    W_WITNESS = w.VirtualAlloc(0, 16 * PAGE, W_ALLOC, w.PAGE_READWRITE)
    assert W_WITNESS
    for p in (0, 3, 9):
        ctypes.memset(W_WITNESS + p * PAGE, p + 1, 10)
    # fuzzed allocations: reserved, committed, write-watched or not
    W_FUZZ = [w.VirtualAlloc(0, 16 * PAGE, k, w.PAGE_READWRITE)
              for k in (W_ALLOC, w.MEM_RESERVE | w.MEM_WRITE_WATCH, w.MEM_RESERVE | w.MEM_COMMIT)]
    assert all(W_FUZZ)
    w_near = st.builds(lambda i, k: W_FUZZ[i % len(W_FUZZ)] + k,
                       st.integers(0, 100), st.integers(-2 * PAGE, 18 * PAGE))
    w_int = st.one_of(ints, w_near, st.sampled_from(
        [w.MEM_COMMIT, w.MEM_RESERVE, w.MEM_DECOMMIT, w.MEM_RELEASE, W_ALLOC,
         w.MEM_COMMIT | w.MEM_WRITE_WATCH, w.MEM_RESET, w.MEM_RESET_UNDO, w.MEM_TOP_DOWN,
         w.PAGE_NOACCESS, w.PAGE_READONLY, w.PAGE_READWRITE, w.PAGE_EXECUTE_READWRITE,
         w.PAGE_GUARD | w.PAGE_READWRITE, w.PAGE_WRITECOPY, 0x1ff, w.WRITE_WATCH_FLAG_RESET]))
    w_any = st.one_of(w_int, anything)

    def w_buffers():
        """Buffers for GetWriteWatch, including ctypes arrays laid over our
        own reserved and read-only pages (must be ERROR_NOACCESS, not a crash)."""
        over = [lambda: (ctypes.c_uint64 * 8).from_address(W_FUZZ[1]),          # reserved
                lambda: (ctypes.c_uint64 * 8).from_address(W_FUZZ[1] + 4 * PAGE)]
        return st.builds(lambda i: (ARRAYS + over)[i % (len(ARRAYS) + 2)](), st.integers(0, 1000))

    def w_witness_check():
        out = np.zeros(16, dtype=np.uint64)
        res = w.GetWriteWatch(0, W_WITNESS, 16 * PAGE, out, 16)
        assert res[0] == 0 and [int(a) - W_WITNESS for a in out[:res[1]]] == [0, 3 * PAGE, 9 * PAGE], res
        for p in (0, 3, 9):
            assert ctypes.string_at(W_WITNESS + p * PAGE, 10) == bytes([p + 1]) * 10
        check_all()

    def w_guarded(name, fn, *args):
        try:
            res = fn(*args)
        except W_OK as e:
            count(name, type(e).__name__)
            return None
        except OSError as e:                  # documented, but worth seeing
            count(name, "OSError %s" % e.errno)
            return None
        except RuntimeError as e:
            which = [x for x in EXPLODED if x in str(e)]
            if not which or type(e) is not RuntimeError:
                raise
            count(name, "caller's %s error" % which[0].split()[0])
            return None
        err = w.GetLastError()
        count(name, "ok" if not err else "error %d" % err)
        return res

    MADE = []

    # Valid-looking calls too, so that the fuzz also reaches success paths.
    plausible_alloc = st.tuples(
        st.one_of(st.just(0), w_near), st.integers(1, 64 * PAGE),
        st.sampled_from([w.MEM_RESERVE, w.MEM_COMMIT, W_ALLOC, w.MEM_RESERVE | w.MEM_WRITE_WATCH,
                         w.MEM_RESERVE | w.MEM_COMMIT, w.MEM_RESET, w.MEM_COMMIT | w.MEM_TOP_DOWN]),
        st.sampled_from([w.PAGE_NOACCESS, w.PAGE_READONLY, w.PAGE_READWRITE,
                         w.PAGE_EXECUTE_READWRITE, w.PAGE_GUARD]))

    @SETTINGS
    @given(args=st.one_of(st.tuples(w_any, w_any, w_any, w_any), plausible_alloc))
    def fuzz_virtual_alloc(args):
        address, size, kind, protect = args
        w.SetLastError(0)
        base = w_guarded("VirtualAlloc", w.VirtualAlloc, address, size, kind, protect)
        if base and base not in W_FUZZ and base != W_WITNESS:
            info = w.VirtualQuery(base)
            if info.AllocationBase == base and base not in MADE:
                MADE.append(base)
        while len(MADE) > 8:
            w.VirtualFree(MADE.pop(0), 0, w.MEM_RELEASE)
        w_witness_check()

    @SETTINGS
    @given(address=w_any, size=w_any, kind=w_any)
    def fuzz_virtual_free(address, size, kind):
        w.SetLastError(0)
        if type(kind) is int and kind & w.MEM_RELEASE and type(address) is int:
            return                                   # keep the fuzz allocations
        w_guarded("VirtualFree", w.VirtualFree, address, size, kind)
        w_witness_check()

    @SETTINGS
    @given(address=w_any)
    def fuzz_virtual_release(address):
        """MEM_RELEASE of anything but our own allocations: must fail cleanly
        (a release of the fuzz allocations themselves is left out, so they
        stay there to be fuzzed)."""
        if type(address) is int and (address in W_FUZZ or address == W_WITNESS):
            return
        w.SetLastError(0)
        res = w_guarded("VirtualFree(MEM_RELEASE)", w.VirtualFree, address, 0, w.MEM_RELEASE)
        if res and type(address) is int and address in MADE:
            MADE.remove(address)
        w_witness_check()

    @SETTINGS
    @given(address=w_any, size=w_any, protect=w_any)
    def fuzz_virtual_protect(address, size, protect):
        w.SetLastError(0)
        w_guarded("VirtualProtect", w.VirtualProtect, address, size, protect)
        w_witness_check()

    @SETTINGS
    @given(address=st.one_of(w_any, witness_addr))
    def fuzz_virtual_query(address):
        w.SetLastError(0)
        w_guarded("VirtualQuery", w.VirtualQuery, address)
        w_witness_check()

    @SETTINGS
    @given(flags=w_any, base=w_any, size=w_any,
           addresses=st.one_of(st.none(), w_buffers(), anything), cnt=st.one_of(st.none(), w_any))
    def fuzz_get_write_watch(flags, base, size, addresses, cnt):
        w.SetLastError(0)
        w_guarded("GetWriteWatch", w.GetWriteWatch, flags, base, size, addresses, cnt)
        w_witness_check()

    @SETTINGS
    @given(base=w_any, size=w_any, code=w_any)
    def fuzz_reset_write_watch(base, size, code):
        w.SetLastError(0)
        w_guarded("ResetWriteWatch", w.ResetWriteWatch, base, size)
        w_guarded("SetLastError", w.SetLastError, code)
        w_witness_check()


def main():
    fuzzers = [fuzz_region_new, fuzz_get, fuzz_reset, fuzz_close_and_closed,
               fuzz_module_functions, sweep_many, fuzz_many, sweep_snapshots,
               fuzz_snapshots_calls, fuzz_snapshots_new, sweep_deltalog, fuzz_deltalog,
               fuzz_replay]
    if w is not None:
        fuzzers += [fuzz_virtual_alloc, fuzz_virtual_free, fuzz_virtual_release,
                    fuzz_virtual_protect,
                    fuzz_virtual_query, fuzz_get_write_watch, fuzz_reset_write_watch]
    only = sys.argv[1:]
    for f in fuzzers:
        if not only or f.__name__ in only:
            f()
            print("ok", f.__name__, flush=True)
    print(json.dumps({"backends": AVAILABLE, "calls": sum(COUNTS.values()),
                      "outcomes": COUNTS, "notes": NOTES}))


if __name__ == "__main__":
    main()
