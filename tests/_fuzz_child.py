"""Bad input, systematically: run by tests/test_fuzz.py in a subprocess (so a
crash fails the test instead of killing the runner).

Hypothesis throws arbitrary arguments -- wrong types, signs, huge values,
unaligned and overlapping ranges, addresses of other regions and of nothing,
read-only, wrong-dtype, strided and foreign buffers -- at every public
function of writewatch and writewatch.win32, and checks that

- only documented exceptions escape (Region API: TypeError, ValueError,
  OverflowError, BufferError, MemoryError, BackendUnavailable, OSError for
  kernel refusals; win32: failure values + GetLastError(), exceptions only
  TypeError/OverflowError for arguments C could not express);
- afterwards every witness region (never targeted) reports exactly what was
  written into it, and every fuzzed region still tracks writes exactly.

Prints one JSON line of counts at the end; exit status 0 only if all held.
"""

import array
import ctypes
import json
import mmap
import os
import resource
import sys
from fractions import Fraction

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

import writewatch
from writewatch import BackendUnavailable, Region

PAGE = writewatch.PAGE_SIZE
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck), derandomize=False)
AVAILABLE = [b.name for b in writewatch.backends() if b.available]
COUNTS = {}

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


def check_all():
    for wn in WITNESSES:
        wn.check()
    check_fuzzed()


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
        raise RuntimeError("__index__ exploded")      # must propagate unchanged? see below


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
           np.bool_(True), True, False, Index(PAGE), Index(-1), Index(1 << 70), BadIndex()]

ints = st.one_of(st.integers(), st.integers(-(1 << 70), 1 << 70), st.sampled_from(SPECIAL))
near = st.builds(lambda i, k: FUZZ_BASES[i % len(FUZZ_BASES)] + k,
                 st.integers(0, 100), st.integers(-2 * PAGE, 10 * PAGE))
witness_addr = st.builds(lambda i, k: WITNESSES[i % len(WITNESSES)].r.address + k,
                         st.integers(0, 10), st.integers(-PAGE, 17 * PAGE))
arrays = st.builds(lambda i: ARRAYS[i % len(ARRAYS)](), st.integers(0, 1000))
anything = st.one_of(st.none(), st.booleans(), ints, near, st.floats(),
                     st.text(max_size=4), st.binary(max_size=4),
                     st.sampled_from(OBJECTS), arrays)
backend_arg = st.one_of(anything, st.sampled_from(
    writewatch.backends().__class__(b.name for b in writewatch.backends())
    + ["", "nope", "PAGEMAP", "pagemap\0", "\0force:", "\0force:pagemap", "\0force:nope"]))

REGION_OK = (TypeError, ValueError, OverflowError, BufferError, MemoryError,
             BackendUnavailable, OSError)


def guarded(name, fn, *args, **kw):
    """Call; an exception outside REGION_OK is a finding (re-raised).  A
    BadIndex's own RuntimeError may propagate: it is the caller's."""
    try:
        result = fn(*args, **kw)
    except REGION_OK as e:
        count(name, type(e).__name__)
        return None
    except RuntimeError as e:
        if "__index__ exploded" in str(e):
            count(name, "caller's __index__ error")
            return None
        raise
    count(name, "ok")
    return result


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
            if "__index__ exploded" in str(e):
                count(name, "caller's __index__ error")
                return None
            raise
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
               fuzz_module_functions]
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
                      "outcomes": COUNTS}))


if __name__ == "__main__":
    main()
