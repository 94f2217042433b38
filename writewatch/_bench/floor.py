"""The C floor (kernel/floor/floor.c): the same workloads done straight on
the kernel, no Python in the timed part.

Two builds of one source, both shipped in writewatch/_bin/ by setup.py:

- ``ww-floor``, a program: `writewatch bench` runs it on workload specs and
  reads one JSON line per result (run_floor);
- ``libwwfloor.so``, the scale patterns as a C library: the pytest-benchmark
  suite times them in-process through ctypes, with the same interface as the
  library's workloads (the Floor* classes below), so that "floor" is one
  more parameter beside the backends.  ctypes lets go of the GIL during each
  call.
"""

import ctypes
import json
import os
import subprocess

from writewatch._bench.workloads import BenchError

_BIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_bin")
_BUILD_HINT = "(pip install -e . or python setup.py build_ext --inplace builds it)"


def floor_path():
    """Path of the ww-floor program shipped in the package, or None."""
    override = os.environ.get("WRITEWATCH_FLOOR")
    if override:
        return override
    path = os.path.join(_BIN, "ww-floor")
    return path if os.access(path, os.X_OK) else None


def floor_missing():
    return "not built: writewatch/_bin/ww-floor is missing " + _BUILD_HINT


def run_floor(workloads, budget, min_reps, timeout=600, args=()):
    """Run ww-floor on workload specs (after its options `args`); returns
    (list of result dicts, error or None)."""
    path = floor_path()
    if path is None:
        return [], "C floor " + floor_missing()
    cmd = [path, "--budget-ms", "%g" % (budget * 1000), "--min-reps", str(min_reps)] + list(args)
    try:
        p = subprocess.run(cmd + list(workloads), capture_output=True, text=True,
                           timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return [], "C floor failed to run: %s" % e
    results = []
    for line in p.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            results.append(json.loads(line))
    err = None
    if p.returncode not in (0, 1):
        err = "C floor exited with status %d: %s" % (p.returncode, p.stderr.strip())
    return results, err


# ---------------------------------------------------------------------------
# libwwfloor.so

_lib = None              # the loaded library, once loaded
_load_error = None
_init_error = None       # why async uffd-wp workloads cannot run, if they cannot


def _load():
    """The loaded libwwfloor.so, whatever the kernel can do; BenchError if
    it cannot be loaded."""
    global _lib, _load_error
    if _lib is None and _load_error is None:
        path = os.path.join(_BIN, "libwwfloor.so")
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            _load_error = "libwwfloor.so not loadable: %s %s" % (e, _BUILD_HINT)
        else:
            _declare(lib)
            _lib = lib
    if _lib is None:
        raise BenchError(_load_error)
    return _lib


def library():
    """The loaded libwwfloor.so, able to run the workloads on async uffd-wp
    (the scale patterns, pagemap's technique); raises BenchError saying why
    it cannot be used."""
    global _init_error
    lib = _load()
    if _init_error is None and lib.ww_floor_init() < 0:
        _init_error = "C floor cannot run here: %s" % lib.ww_floor_error().decode()
    if _init_error is not None:
        raise BenchError(_init_error)
    return lib


def library_unavailable():
    """None if the floor library can run here, else why not."""
    try:
        library()
    except BenchError as e:
        return str(e)
    return None


def _declare(lib):
    P, S, U64, I, L = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint64, ctypes.c_int, ctypes.c_long
    PU64, PS = ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_size_t)
    sigs = {
        "ww_floor_error": (ctypes.c_char_p, []),
        "ww_floor_init": (I, []),
        "ww_floor_cpus": (I, []),
        "ww_floor_vmpte": (ctypes.c_longlong, []),
        "ww_floor_wine_new": (P, [I, S, S, U64]),
        "ww_floor_wine_run": (I, [P, ctypes.c_uint, PU64, PU64, PU64, PU64, S, PS]),
        "ww_floor_wine_reported": (U64, [P]),
        "ww_floor_wine_free": (None, [P]),
        "ww_floor_gc_new": (P, [S, S, S, U64]),
        "ww_floor_gc_write": (None, [P]),
        "ww_floor_gc_round": (L, [P]),
        "ww_floor_gc_check": (I, [P]),
        "ww_floor_gc_free": (None, [P]),
        "ww_floor_res_new": (P, []),
        "ww_floor_res_reserve": (I, [P, S]),
        "ww_floor_res_commit": (I, [P, S]),
        "ww_floor_res_write": (I, [P, S, U64]),
        "ww_floor_res_scan": (L, [P]),
        "ww_floor_res_check": (I, [P, L]),
        "ww_floor_res_release": (I, [P]),
        "ww_floor_res_free": (None, [P]),
        "ww_floor_regions_new": (P, [S, S, U64, PU64]),
        "ww_floor_regions_runs": (S, [P]),
        "ww_floor_regions_write": (None, [P]),
        "ww_floor_regions_each": (L, [P]),
        "ww_floor_regions_scan_runs": (L, [P]),
        "ww_floor_regions_check": (I, [P]),
        "ww_floor_regions_free": (I, [P, PU64]),
        "ww_floor_snap_new": (P, [ctypes.c_char_p, S, S, S, U64]),
        "ww_floor_snap_write": (I, [P]),
        "ww_floor_snap_save": (L, [P]),
        "ww_floor_snap_check": (I, [P, L]),
        "ww_floor_snap_restore_prepare": (L, [P]),
        "ww_floor_snap_restore": (L, [P]),
        "ww_floor_snap_restore_check": (I, [P, L]),
        "ww_floor_snap_free": (None, [P]),
        "ww_floor_copy_new": (P, [S]),
        "ww_floor_copy_run": (None, [P]),
        "ww_floor_copy_free": (None, [P]),
        "ww_floor_append_new": (P, [S, S, ctypes.c_char_p, U64]),
        "ww_floor_append_write": (I, [P]),
        "ww_floor_append_writev": (L, [P]),
        "ww_floor_append_check": (I, [P, L]),
        "ww_floor_append_gather": (L, [P]),
        "ww_floor_append_write_fsync": (L, [P]),
        "ww_floor_append_free": (None, [P]),
        "ww_floor_append_path": (ctypes.c_char_p, [P]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args


def _check(rc):
    """A floor call's result, or BenchError with the floor's reason."""
    if rc is None or rc < 0:
        raise BenchError("C floor: %s" % _lib.ww_floor_error().decode())
    return rc


class FloorWine:
    """The floor's Wine microbenchmark (pthreads writing), as WinePattern."""

    MAX_CALLS = 100000

    def __init__(self, threads, pages, writes, delay, seed=0x5eed):
        lib = library()
        self.threads, self.pages, self.writes, self.delay = threads, pages, writes, delay
        self.cpus = lib.ww_floor_cpus()
        self.writer_cpus = self.cpu_per_write = None
        self.extra = 0
        self.reported = 0           # pages the timed calls reported
        self._p = lib.ww_floor_wine_new(threads, pages, writes, seed)
        if not self._p:
            _check(-1)
        self._calls = (ctypes.c_uint64 * self.MAX_CALLS)()

    def run(self):
        wall, cpu, proc = ctypes.c_uint64(), ctypes.c_uint64(), ctypes.c_uint64()
        n = ctypes.c_size_t()
        _check(_lib.ww_floor_wine_run(self._p, int(self.delay * 1e6), ctypes.byref(wall),
                                      ctypes.byref(cpu), ctypes.byref(proc), self._calls,
                                      self.MAX_CALLS, ctypes.byref(n)))
        self.writer_cpus = cpu.value / wall.value if wall.value else None
        self.cpu_per_write = proc.value / (self.threads * self.writes)
        self.reported = _lib.ww_floor_wine_reported(self._p)
        return wall.value, list(self._calls[:min(n.value, self.MAX_CALLS)])

    def per_write(self, wall):
        return wall * min(self.threads, self.cpus) / (self.threads * self.writes)

    def close(self):
        if self._p:
            _lib.ww_floor_wine_free(self._p)
            self._p = None


class FloorGC:
    """The floor's .NET GC pattern, as GCPattern."""

    def __init__(self, size, written, batch=256, seed=0x6c):
        lib = library()
        self.extra = 0
        self.calls = 0
        self._p = lib.ww_floor_gc_new(size, written, batch, seed)
        if not self._p:
            _check(-1)

    def prepare(self):
        _lib.ww_floor_gc_write(self._p)

    def round(self):
        self.calls = _check(_lib.ww_floor_gc_round(self._p))
        return self.calls

    def check(self, got=None):
        _check(_lib.ww_floor_gc_check(self._p))

    def close(self):
        if self._p:
            _lib.ww_floor_gc_free(self._p)
            self._p = None


class FloorReservation:
    """The floor's reservation steps: a PROT_NONE mmap; commit = mprotect +
    UFFDIO_REGISTER + UFFDIO_WRITEPROTECT of the committed part; a scan of
    the committed part; munmap."""

    def __init__(self):
        self._p = library().ww_floor_res_new()
        if not self._p:
            _check(-1)

    def reserve(self, size):
        _check(_lib.ww_floor_res_reserve(self._p, size))

    def commit(self, size):
        _check(_lib.ww_floor_res_commit(self._p, size))

    def write(self, pages, seed=0x7e5):
        _check(_lib.ww_floor_res_write(self._p, pages, seed))

    def scan(self):
        return _check(_lib.ww_floor_res_scan(self._p))

    def check(self, got):
        _check(_lib.ww_floor_res_check(self._p, got))

    def release(self):
        _check(_lib.ww_floor_res_release(self._p))

    def close(self):
        if self._p:
            _lib.ww_floor_res_free(self._p)
            self._p = None


class FloorRegions:
    """The floor's many regions, as ManyRegions: each() is one scan per
    region, many() one scan per run of adjacent regions."""

    def __init__(self, count, size, seed=0x4e6):
        lib = library()
        self.count = count
        self.extra = 0
        created = ctypes.c_uint64()
        self._p = lib.ww_floor_regions_new(count, size, seed, ctypes.byref(created))
        if not self._p:
            _check(-1)
        self.create_ns = created.value / count
        self.close_ns = None
        self.descriptors = 1
        self.runs = lib.ww_floor_regions_runs(self._p)

    def prepare(self):
        _lib.ww_floor_regions_write(self._p)

    def each(self):
        return _check(_lib.ww_floor_regions_each(self._p))

    def many(self):
        return _check(_lib.ww_floor_regions_scan_runs(self._p))

    def check(self, got=None):
        _check(_lib.ww_floor_regions_check(self._p))

    def close(self):
        if self._p:
            closed = ctypes.c_uint64()
            p, self._p = self._p, None
            _check(_lib.ww_floor_regions_free(p, ctypes.byref(closed)))
            self.close_ns = closed.value / self.count


class FloorSnapshots:
    """The floor's Snapshots (issue 12), as writewatch._bench.SnapshotFrames:
    a `size` region tracked with `tech` (uffd-async, uffd-sync or mprotect),
    `k` pages written per frame, `keep` save areas.  save() and restore()
    are the timed calls; write(), prepare_restore() and the checks are not.
    The copy of the whole region is FloorCopy."""

    def __init__(self, tech, size, k, keep=8, seed=0x5a4e):
        lib = library() if tech == "uffd-async" else _load()
        self.tech, self.k, self.keep = tech, k, keep
        self._p = lib.ww_floor_snap_new(tech.encode(), size, k, keep, seed)
        if not self._p:
            _check(-1)
        self.kept = 0                   # frames in the save areas
        self.restored = []

    def write(self):
        _check(_lib.ww_floor_snap_write(self._p))
        self.kept = min(self.kept, self.keep - 1)      # the oldest went into the base

    def save(self):
        return _check(_lib.ww_floor_snap_save(self._p))

    def check_save(self, got):
        _check(_lib.ww_floor_snap_check(self._p, got))
        self.kept += 1

    def frame(self):
        self.write()
        self.check_save(self.save())

    def prepare_restore(self):
        while self.kept < self.keep:
            self.frame()
        n = _check(_lib.ww_floor_snap_restore_prepare(self._p))
        self.restored.append(n)
        return n

    def restore(self):
        return _check(_lib.ww_floor_snap_restore(self._p))

    def check_restore(self, got):
        _check(_lib.ww_floor_snap_restore_check(self._p, got))
        self.kept = 1

    def close(self):
        if self._p:
            _lib.ww_floor_snap_free(self._p)
            self._p = None


class FloorCopy:
    """memcpy of a whole populated `size` region into another, faulted in."""

    def __init__(self, size):
        self._p = _load().ww_floor_copy_new(size)
        if not self._p:
            _check(-1)

    def run(self):
        _lib.ww_floor_copy_run(self._p)

    def close(self):
        if self._p:
            _lib.ww_floor_copy_free(self._p)
            self._p = None


class FloorAppend:
    """The floor's DeltaLog.append() (issue 12), as writewatch._bench.LogAppend:
    a `size` region (uffd-async), `k` pages written per frame, appended to a
    new file in `directory`.  Two timed calls: writev() (get-and-reset, one
    pwritev straight from the region, fdatasync) and write_fsync() (write(2)
    of the record gathered by gather(), not timed, then fsync).  The file
    (`path`) stays in `directory`, for its owner to remove."""

    def __init__(self, size, k, directory, seed=0xa99e):
        lib = library()
        self.k = k
        self._p = lib.ww_floor_append_new(size, k, os.fsencode(directory), seed)
        if not self._p:
            _check(-1)
        self.path = os.fsdecode(lib.ww_floor_append_path(self._p))

    def write(self):
        _check(_lib.ww_floor_append_write(self._p))

    def writev(self):
        return _check(_lib.ww_floor_append_writev(self._p))

    def check(self, got):
        _check(_lib.ww_floor_append_check(self._p, got))

    def gather(self):
        return _check(_lib.ww_floor_append_gather(self._p))

    def write_fsync(self):
        return _check(_lib.ww_floor_append_write_fsync(self._p))

    def close(self):
        if self._p:
            _lib.ww_floor_append_free(self._p)
            self._p = None


def vmpte():
    """Page tables of this process (the floor library's reading of VmPTE)."""
    v = library().ww_floor_vmpte()
    return None if v < 0 else v


__all__ = ["floor_path", "floor_missing", "run_floor", "library", "library_unavailable",
           "FloorWine", "FloorGC", "FloorReservation", "FloorRegions", "FloorSnapshots",
           "FloorCopy", "FloorAppend", "vmpte"]
