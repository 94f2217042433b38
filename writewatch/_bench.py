"""`writewatch bench`: every available backend and the raw-C floor on the
same workloads, in one run, with a table, targets, JSON and a plot.

The workloads are defined once here and shared with the pytest-benchmark
suite in bench/:

- frame loop: a pre-populated region; each frame writes K random pages
  (chosen before the clock starts) and makes one get-and-reset;
- first write: cost per page of the first write after a reset -- the fault
  each technique takes;
- clean scan: get-and-reset of a region nothing was written to;
- max_count: ``get_write_watch(max_count=16)`` on a region whose first 16
  pages are written -- must not grow with the region's size;
- sparse: get-and-reset with every other page written (many runs);
- win32: ``GetWriteWatch`` on a 16-page allocation.

Each workload runs on the C floor (kernel/floor/floor.c, shipped as
writewatch/_bin/ww-floor) and then on every backend before the next
workload starts, so that a change in a shared machine's load hits all of
them alike.  Statistics: see STATISTIC below; every record in the JSON
output also carries the median and the minimum.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

import writewatch
from writewatch import _core

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
PAGE = _core.PAGE_SIZE

# The statistic each workload reports.  Frames and first writes take page
# faults, whose cost varies from one repeat to the next: the median.  The
# scans and calls redo identical work each time, and a shared machine can
# only add to it: the minimum (of single calls, or of batch means).
STATISTIC = {"frame": "median", "fault": "median", "clean": "min", "sparse": "min",
             "limit": "min", "win32": "min"}

# Which C-floor fault technique stands for which backend.
FLOOR_TECH = {"pagemap": "uffd-async", "uffd": "uffd-sync", "mprotect": "mprotect"}


# ---------------------------------------------------------------------------
# Plans: which sizes and fractions a run covers.

class Plan:
    def __init__(self, name, frame_sizes, fractions, frame_full_max, clean_sizes,
                 limit_sizes, sparse_sizes, fault_pages, budget, min_reps, batch, passes):
        self.name = name
        self.frame_sizes = frame_sizes
        self.fractions = fractions
        # 100 % written is only run up to this size (it is all faults).
        self.frame_full_max = frame_full_max
        self.clean_sizes = clean_sizes
        self.limit_sizes = limit_sizes
        self.sparse_sizes = sparse_sizes
        self.fault_pages = fault_pages
        self.budget = budget          # seconds per measured configuration
        self.min_reps = min_reps
        self.batch = batch            # calls per timed batch (microbenchmarks)
        # Every workload runs this many times, the floor and the backends in
        # turn; each result is the best pass.
        self.passes = passes

    def frames(self):
        for size in self.frame_sizes:
            for frac in self.fractions:
                if frac >= 1.0 and size > self.frame_full_max:
                    continue
                yield size, frac


FRACTIONS = (0.001, 0.01, 0.1, 1.0)

PLANS = {
    "tiny": Plan("tiny", [1 * MiB, 4 * MiB], (0.01, 1.0), 4 * MiB,
                 [1 * MiB, 4 * MiB], [64 * KiB, 16 * MiB], [1 * MiB], 64,
                 budget=0.01, min_reps=2, batch=20, passes=1),
    "quick": Plan("quick", [1 * MiB, 16 * MiB, 256 * MiB], FRACTIONS, 16 * MiB,
                  [1 * MiB, 64 * MiB, 1 * GiB, 4 * GiB], [64 * KiB, 4 * GiB],
                  [16 * MiB], 2048, budget=0.06, min_reps=3, batch=200, passes=2),
    "full": Plan("full", [1 * MiB, 16 * MiB, 256 * MiB, 1 * GiB], FRACTIONS, 1 * GiB,
                 [1 * MiB, 16 * MiB, 256 * MiB, 1 * GiB, 4 * GiB],
                 [64 * KiB, 16 * MiB, 1 * GiB, 4 * GiB], [64 * MiB, 256 * MiB],
                 16384, budget=0.5, min_reps=3, batch=1000, passes=2),
}


def written_pages(size, fraction):
    """Pages written per frame: at least one."""
    return max(1, int(round(size // PAGE * fraction)))


def fmt_size(n):
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale and n % scale == 0:
            return "%d %s" % (n // scale, unit)
    return "%d B" % n


def fmt_fraction(f):
    return ("%g%%" % (f * 100))


def fmt_ns(ns):
    if ns is None:
        return "-"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if ns >= scale:
            return "%.3g %s" % (ns / scale, unit)
    return "%.3g ns" % ns


# ---------------------------------------------------------------------------
# Workloads on the library.  Each returns a list of times in ns (one per
# repeat, per the workload's unit) and checks its own answers: a backend that
# reports the wrong pages fails the benchmark instead of looking fast.

class BenchError(Exception):
    """A workload got a wrong answer from a backend."""


def verify(backend, expected, got):
    """Check a get-and-reset's answer against the pages written (`expected`,
    sorted uint64 addresses).  A missing or misplaced page is an error.  A
    superset is allowed -- a backend may report conservatively when it must
    (mprotect near vm.max_map_count) -- and the number of extra pages is
    returned so the report can say so."""
    if len(got) == len(expected) and np.array_equal(got, expected):
        return 0
    if len(got) < len(expected) or not np.isin(expected, got, assume_unique=True).all():
        raise BenchError("%s: wrote %d pages, get_write_watch reported %d%s"
                         % (backend, len(expected), len(got),
                            "" if len(got) != len(expected) else " (not the same pages)"))
    return len(got) - len(expected)


class Memory:
    """A Region and a writable uint8 numpy view of it."""

    def __init__(self, size, backend):
        self.region = writewatch.Region(size, backend=backend)
        self.u8 = np.frombuffer(self.region, dtype=np.uint8)
        self.npages = self.region.size // PAGE

    def populate(self):
        """Write every page once, then reset: pages present, nothing written."""
        self.u8[::PAGE] = 1
        self.region.reset_write_watch()

    def close(self):
        self.u8 = None
        self.region.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _repeat(step, budget, min_reps, max_reps=100000):
    """Call step() (which returns ns) until `budget` seconds have passed and
    at least min_reps times."""
    times = []
    deadline = time.perf_counter() + budget
    while len(times) < min_reps or (time.perf_counter() < deadline and len(times) < max_reps):
        times.append(step())
    return times


def _repeat_batched(call, batch, budget, min_reps):
    """_repeat over the mean time of `batch` back-to-back calls of `call`."""
    rng = range(batch)

    def step():
        t0 = time.perf_counter_ns()
        for _ in rng:
            call()
        return (time.perf_counter_ns() - t0) / batch
    return _repeat(step, budget, min_reps)


class FrameLoop:
    """The game-engine frame: write K random pages, one get-and-reset."""

    # Page choices are drawn up front, a pool of frames' worth, so that
    # nothing but an index moves between two timed frames (as in the C
    # floor, whose per-frame choice touches only K words).
    POOL_WORDS = 1 << 22

    def __init__(self, backend, size, k, seed=12345):
        self.mem = Memory(size, backend)
        self.rng = np.random.default_rng(seed)
        self.value = 1
        self.set_written(k)
        self.mem.populate()

    def set_written(self, k):
        """Write k pages per frame from now on (same region, nothing written)."""
        self.k = k
        pool = max(1, min(32, self.POOL_WORDS // k))
        self.pool = [self.rng.choice(self.mem.npages, k, replace=False).astype(np.intp) * PAGE
                     for _ in range(pool)]
        base = self.mem.region.address
        self.answers = [np.sort(offs).astype(np.uint64) + np.uint64(base) for offs in self.pool]
        self.offsets = self.expected = None
        self.frames = 0
        self.extra = 0          # most pages reported beyond those written

    def prepare(self):
        """Choose this frame's pages (outside the timed part)."""
        i = self.frames % len(self.pool)
        self.offsets = self.pool[i]
        self.expected = self.answers[i]
        self.frames += 1
        self.value = (self.value + 1) & 0xFF or 1

    def frame(self):
        self.mem.u8[self.offsets] = self.value
        return self.mem.region.get_write_watch(reset=True)

    def check(self, got):
        """The frame reported every page it wrote (and how many more)."""
        self.extra = max(self.extra, verify(self.mem.region.backend, self.expected, got))

    def measure(self, budget, min_reps):
        def step():
            self.prepare()
            t0 = time.perf_counter_ns()
            got = self.frame()
            t1 = time.perf_counter_ns()
            self.check(got)
            return t1 - t0
        return _repeat(step, budget, min_reps)

    def close(self):
        self.mem.close()


class FirstWrite:
    """Every page of a populated, reset region written once, ascending."""

    def __init__(self, backend, pages):
        self.mem = Memory(pages * PAGE, backend)
        self.mem.populate()
        self.value = 1

    def prepare(self):
        self.mem.region.reset_write_watch()
        self.value = (self.value + 1) & 0xFF or 1

    def write(self):
        self.mem.u8[::PAGE] = self.value

    def measure(self, budget, min_reps):
        n = self.mem.npages

        def step():
            self.prepare()
            t0 = time.perf_counter_ns()
            self.write()
            t1 = time.perf_counter_ns()
            return (t1 - t0) / n
        times = _repeat(step, budget, min_reps)
        got = self.mem.region.get_write_watch()
        if len(got) != n:
            raise BenchError("%s: wrote %d pages, get_write_watch reported %d"
                             % (self.mem.region.backend, n, len(got)))
        return times

    def close(self):
        self.mem.close()


class CleanScan:
    """get-and-reset of a region nothing was written to."""

    def __init__(self, backend, size):
        self.region = writewatch.Region(size, backend=backend)

    def call(self):
        return self.region.get_write_watch(reset=True)

    def measure(self, budget, min_reps):
        def step():
            t0 = time.perf_counter_ns()
            got = self.call()
            t1 = time.perf_counter_ns()
            if len(got):
                raise BenchError("%s: clean region reported %d written pages"
                                 % (self.region.backend, len(got)))
            return t1 - t0
        return _repeat(step, budget, min_reps)

    def close(self):
        self.region.close()


class LimitCall:
    """get_write_watch(max_count=COUNT) (no reset) with the first COUNT pages
    written: the walk must stop near them, whatever the region's size."""

    def __init__(self, backend, size, count=16):
        self.mem = Memory(size, backend)
        self.count = count
        self.mem.u8[:count * PAGE:PAGE] = 1
        self.expect = self.mem.region.address + PAGE * np.arange(count, dtype=np.uint64)

    def call(self):
        return self.mem.region.get_write_watch(max_count=self.count)

    def measure(self, budget, min_reps, batch):
        got = self.call()
        if not np.array_equal(got, self.expect):
            raise BenchError("%s: max_count=%d returned %d pages, not the first %d"
                             % (self.mem.region.backend, self.count, len(got), self.count))
        return _repeat_batched(self.call, batch, budget, min_reps)

    def close(self):
        self.mem.close()


class Sparse:
    """get-and-reset with every other page written (writes outside the clock)."""

    def __init__(self, backend, size):
        self.mem = Memory(size, backend)
        self.mem.populate()
        self.expect = (self.mem.npages + 1) // 2
        self.answer = self.mem.region.address + np.arange(
            0, self.mem.region.size, 2 * PAGE, dtype=np.uint64)
        self.extra = 0
        self.value = 1

    def prepare(self):
        self.value = (self.value + 1) & 0xFF or 1
        self.mem.u8[::2 * PAGE] = self.value

    def call(self):
        return self.mem.region.get_write_watch(reset=True)

    def measure(self, budget, min_reps):
        def step():
            self.prepare()
            t0 = time.perf_counter_ns()
            got = self.call()
            t1 = time.perf_counter_ns()
            self.extra = max(self.extra, verify(self.mem.region.backend, self.answer, got))
            return t1 - t0
        return _repeat(step, budget, min_reps)

    def close(self):
        self.mem.close()


class Win32Call:
    """GetWriteWatch (no reset) on a 16-page MEM_WRITE_WATCH allocation with
    4 pages written.  The allocation takes its backend from
    WRITEWATCH_BACKEND, as the win32 layer defines."""

    def __init__(self, backend, pages=16):
        import ctypes
        from writewatch import win32
        self.w = win32
        self.size = pages * PAGE
        saved = os.environ.get("WRITEWATCH_BACKEND")
        os.environ["WRITEWATCH_BACKEND"] = backend
        try:
            self.base = win32.VirtualAlloc(
                0, self.size, win32.MEM_RESERVE | win32.MEM_COMMIT | win32.MEM_WRITE_WATCH,
                win32.PAGE_READWRITE)
        finally:
            if saved is None:
                del os.environ["WRITEWATCH_BACKEND"]
            else:
                os.environ["WRITEWATCH_BACKEND"] = saved
        if not self.base:
            raise BenchError("VirtualAlloc failed with error %d" % win32.GetLastError())
        for i in (0, 3, 7, 15):
            ctypes.memset(self.base + i * PAGE, 1, 1)
        self.addresses = np.zeros(pages, dtype=np.uint64)
        self.pages = pages

    def call(self):
        return self.w.GetWriteWatch(0, self.base, self.size, self.addresses, self.pages)

    def measure(self, budget, min_reps, batch):
        result, count, gran = self.call()
        if result != 0 or count != 4 or gran != PAGE:
            raise BenchError("GetWriteWatch returned (%r, %r, %r), expected (0, 4, %d)"
                             % (result, count, gran, PAGE))
        return _repeat_batched(self.call, batch, budget, min_reps)

    def close(self):
        self.w.VirtualFree(self.base, 0, self.w.MEM_RELEASE)


def win32_unavailable():
    """None if writewatch.win32 can be used, else why not."""
    try:
        from writewatch import win32  # noqa: F401
    except ImportError as e:
        return "writewatch.win32 not importable: %s" % e
    return None


# ---------------------------------------------------------------------------
# The C floor.

def floor_path():
    """Path of the ww-floor program shipped in the package, or None."""
    override = os.environ.get("WRITEWATCH_FLOOR")
    if override:
        return override
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bin", "ww-floor")
    return path if os.access(path, os.X_OK) else None


def run_floor(workloads, budget, min_reps, timeout=600):
    """Run ww-floor on workload specs; returns (list of result dicts, error or None)."""
    path = floor_path()
    if path is None:
        return [], ("C floor not built: writewatch/_bin/ww-floor is missing "
                    "(python setup.py build_ext --inplace builds it)")
    cmd = [path, "--budget-ms", "%g" % (budget * 1000), "--min-reps", str(min_reps)]
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
# One run.

class Progress:
    """A one-line progress display on stderr, only when it is a terminal
    and the run has lasted more than `delay` seconds (a short run prints
    nothing)."""

    def __init__(self, total, stream=None, enabled=None, delay=1.0):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total = total
        self.done = 0
        self.start = time.monotonic()
        self.delay = delay
        self.shown = False

    def step(self, what):
        self.done += 1
        if self.enabled and time.monotonic() - self.start >= self.delay:
            self.shown = True
            self.stream.write("\r\033[K[%d/%d %4.0fs] %s"
                              % (self.done, self.total, time.monotonic() - self.start, what))
            self.stream.flush()

    def finish(self):
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _record(results, workload, backend, unit, times, **params):
    stat = STATISTIC[workload]
    arr = np.asarray(times, dtype=float)
    value = float(np.median(arr)) if stat == "median" else float(arr.min())
    rec = dict(workload=workload, backend=backend, unit=unit, n=len(times),
               statistic=stat, value_ns=value, median_ns=float(np.median(arr)),
               min_ns=float(arr.min()))
    rec.update(params)
    results.append(rec)
    return rec


def machine_info():
    u = platform.uname()
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"kernel": "%s %s" % (u.system, u.release), "machine": u.machine,
            "cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "writewatch": writewatch.__version__,
            "page_size": PAGE}


# A job: one workload at one size, made once per backend and measured in
# every pass (the setup -- populating 256 MiB is a fault per page, seconds on
# the slow backends -- is paid once).  make(name, plan) -> object with
# close(); measure(object, plan) -> [(times, params), ...].

def _frames_measure(loop, plan, size, fractions):
    out = []
    for frac in fractions:
        loop.set_written(written_pages(size, frac))
        times = loop.measure(plan.budget, plan.min_reps)
        params = dict(size=size, fraction=frac, written=loop.k)
        if loop.extra:
            params["over_reported"] = loop.extra
        out.append((times, params))
    return out


def _sparse_measure(sp, plan):
    times = sp.measure(plan.budget, plan.min_reps)
    params = dict(size=sp.mem.region.size, written=sp.expect)
    if sp.extra:
        params["over_reported"] = sp.extra
    return [(times, params)]


def jobs(plan, with_win32=True):
    """(label, workload, unit, C floor specs, make, measure) for a plan."""
    out = []
    by_size = {}
    for size, frac in plan.frames():
        by_size.setdefault(size, []).append(frac)
    for size, fracs in by_size.items():
        out.append(("frame loop %s" % fmt_size(size), "frame", "frame",
                    ["frame:%d:%s" % (size, ",".join(str(written_pages(size, f))
                                                     for f in fracs))],
                    lambda n, p, s=size, f=fracs: FrameLoop(n, s, written_pages(s, f[0])),
                    lambda o, p, s=size, f=fracs: _frames_measure(o, p, s, f)))
    out.append(("first write", "fault", "page",
                ["fault:%s:%d" % (t, plan.fault_pages)
                 for t in ("uffd-async", "uffd-sync", "mprotect", "none")],
                lambda n, p: FirstWrite(n, p.fault_pages),
                lambda o, p: [(o.measure(p.budget, p.min_reps), dict(pages=p.fault_pages))]))
    for size in plan.clean_sizes:
        out.append(("clean scan %s" % fmt_size(size), "clean", "call", ["clean:%d" % size],
                    lambda n, p, s=size: CleanScan(n, s),
                    lambda o, p, s=size: [(o.measure(p.budget, p.min_reps), dict(size=s))]))
    for size in plan.limit_sizes:
        out.append(("max_count=16 %s" % fmt_size(size), "limit", "call",
                    ["limit:%d:16" % size],
                    lambda n, p, s=size: LimitCall(n, s, 16),
                    lambda o, p, s=size: [(o.measure(p.budget, p.min_reps, p.batch),
                                           dict(size=s, max_count=16))]))
    for size in plan.sparse_sizes:
        out.append(("sparse %s" % fmt_size(size), "sparse", "call", ["sparse:%d" % size],
                    lambda n, p, s=size: Sparse(n, s), _sparse_measure))
    if with_win32:
        out.append(("win32 GetWriteWatch", "win32", "call", [],
                    lambda n, p: Win32Call(n),
                    lambda o, p: [(o.measure(p.budget, p.min_reps, p.batch), dict(pages=16))]))
    return out


def collect(plan, backends=None, progress=None, with_floor=True):
    """Run every workload of `plan` on every available backend (or those
    named) and the C floor.  Each workload runs `plan.passes` times, each
    time on the C floor and then on every backend, before the next workload
    starts, so that a change in the machine's load hits all of them alike;
    each result is its best pass.  Returns a dict (the --json document)."""
    infos = writewatch.backends()
    if backends:
        known = {b.name for b in infos}
        for name in backends:
            if name not in known:
                raise ValueError("unknown backend %r; known: %s"
                                 % (name, ", ".join(sorted(known))))
        infos = [b for b in infos if b.name in backends]
    names = [b.name for b in infos if b.available]
    win32_missing = win32_unavailable()
    todo = jobs(plan, with_win32=not win32_missing)
    floor_missing = None if with_floor and floor_path() else (
        "not run (--no-floor)" if not with_floor else
        "not built: writewatch/_bin/ww-floor is missing "
        "(python setup.py build_ext --inplace builds it)")
    steps = plan.passes * sum(len(names) + (1 if specs and not floor_missing else 0)
                              for _, _, _, specs, _, _ in todo)
    prog = progress or Progress(steps)
    results, floor, errors = [], [], []
    frame_keys = list(plan.frames())
    bench_errors = (BenchError, OSError, MemoryError, writewatch.WriteWatchError)

    for label, workload, unit, specs, make, measure in todo:
        objects = {}            # backend -> its set-up workload, kept across passes
        try:
            for _ in range(plan.passes):
                _one_pass(label, workload, unit, specs, make, measure, plan, names,
                          objects, floor_missing, prog, results, floor, errors,
                          frame_keys, bench_errors)
        finally:
            for obj in objects.values():
                if obj is not None:
                    obj.close()
    prog.finish()
    skipped = _unique(r for r in floor if "skip" in r)
    results = _best_of_passes(results + [r for r in floor if "median_ns" in r])
    errors = _unique(errors)
    return _document(plan, infos, win32_missing, floor_missing, results, skipped, errors)


def _one_pass(label, workload, unit, specs, make, measure, plan, names, objects,
              floor_missing, prog, results, floor, errors, frame_keys, bench_errors):
    """The C floor, then every backend, on one job."""
    if specs and not floor_missing:
        prog.step("%s: C floor" % label)
        got, err = run_floor(specs, plan.budget, plan.min_reps)
        if err:
            errors.append({"workload": "C floor " + label, "error": err})
        for rec in got:
            if "error" in rec:
                errors.append({"workload": "C floor " + rec["workload"],
                               "error": rec["error"]})
            elif "median_ns" in rec:
                rec["backend"] = "floor"
                rec["statistic"] = STATISTIC[rec["workload"]]
                rec["value_ns"] = rec["%s_ns" % rec["statistic"]]
                if rec["workload"] == "frame":
                    rec["fraction"] = _fraction_of(rec, frame_keys)
            floor.append(rec)
    for name in names:
        prog.step("%s: %s" % (label, name))
        if name in objects and objects[name] is None:
            continue                        # its setup failed in an earlier pass
        try:
            if name not in objects:
                objects[name] = None
                objects[name] = make(name, plan)
            measured = measure(objects[name], plan)
        except bench_errors as e:
            errors.append({"workload": "%s %s" % (label, name),
                           "error": "%s: %s" % (type(e).__name__, e)})
            continue
        for times, params in measured:
            _record(results, workload, name, unit, times, **params)


def _document(plan, infos, win32_missing, floor_missing, results, skipped, errors):
    doc = {
        "mode": plan.name,
        "machine": machine_info(),
        "backends": [dict(name=b.name, available=b.available, reason=b.reason)
                     for b in infos],
        "win32": win32_missing or "available",
        "floor": floor_missing or floor_path(),
        "floor_available": not floor_missing,
        "statistics": dict(STATISTIC, limit="min of batch means",
                           win32="min of batch means"),
        "passes": plan.passes,
        "results": results,
        "skipped": skipped,
        "errors": errors,
    }
    doc["targets"] = evaluate_targets(doc)
    return doc


_KEY_FIELDS = ("workload", "backend", "size", "fraction", "written", "tech", "pages",
               "max_count")


def _best_of_passes(records):
    """One record per measurement: the pass with the lowest value (a burst
    of load elsewhere on the machine slows one pass, not both), with every
    pass's value kept in "passes"."""
    best = {}
    for r in records:
        key = tuple(r.get(k) for k in _KEY_FIELDS)
        values = best[key]["passes"] if key in best else []
        values.append(r["value_ns"])
        if key not in best or r["value_ns"] < best[key]["value_ns"]:
            r = dict(r)
            best[key] = r
        best[key]["passes"] = values
    return list(best.values())


def _unique(dicts):
    out, seen = [], set()
    for d in dicts:
        key = json.dumps(d, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _fraction_of(rec, frames):
    for size, frac in frames:
        if size == rec["size"] and written_pages(size, frac) == rec["written"]:
            return frac
    return rec["written"] / (rec["size"] // PAGE)


# ---------------------------------------------------------------------------
# Lookups, targets.

def find(doc, workload, backend, **params):
    for r in doc["results"]:
        if r["workload"] != workload or r["backend"] != backend:
            continue
        if workload == "fault" and backend == "floor":
            if r.get("tech") != params.get("tech"):
                continue
            return r
        if all(r.get(k) == v for k, v in params.items() if k != "tech"):
            return r
    return None


def _value(doc, workload, backend, **params):
    r = find(doc, workload, backend, **params)
    return None if r is None else r["value_ns"]


def _backend_reason(doc, name):
    for b in doc["backends"]:
        if b["name"] == name:
            return None if b["available"] else "%s unavailable: %s" % (name, b["reason"])
    return "%s not benchmarked" % name


def technique_bound(doc, tech):
    """What the C floor says a frame (256 MiB, 1% written) costs with `tech`'s
    first-write fault, relative to the floor's async-WP frame: K faults of
    that technique, against the whole floor frame.  A lower bound on what any
    implementation of the technique can reach, so a target above it cannot be
    met by making pagemap faster."""
    frame = find(doc, "frame", "floor", size=256 * MiB, fraction=0.01)
    fault = _value(doc, "fault", "floor", tech=tech)
    if frame is None or fault is None:
        return None
    return frame["written"] * fault / frame["value_ns"]


def evaluate_targets(doc):
    """The issue's targets, each with the measured ratio and met / missed /
    None (not measured, with why)."""
    targets = []

    def add(name, goal, measured, ok, why=None, detail=""):
        targets.append(dict(target=name, goal=goal, measured=measured,
                            met=ok, why=why, detail=detail))

    def ratio_target(name, goal_text, num, den, limit, faster, why_parts, detail_fmt):
        """faster: need num/den >= limit; else need num/den <= limit."""
        if num is None or den is None:
            why = next((w for w in why_parts if w), None) or "not measured in this mode"
            add(name, goal_text, None, None, why)
            return
        ratio = num / den
        ok = ratio >= limit if faster else ratio <= limit
        add(name, goal_text, ratio, ok, None, detail_fmt % (fmt_ns(num), fmt_ns(den)))

    floor_why = None if doc.get("floor_available", True) else "C floor %s" % doc["floor"]
    f256 = dict(size=256 * MiB, fraction=0.01)
    pm = _value(doc, "frame", "pagemap", **f256)
    for backend, goal in (("mprotect", 5.0), ("uffd", 20.0)):
        ratio_target("frame loop 256 MiB 1%%: pagemap vs %s" % backend,
                     ">= %gx faster" % goal,
                     _value(doc, "frame", backend, **f256), pm, goal, True,
                     [_backend_reason(doc, backend), _backend_reason(doc, "pagemap")],
                     backend + " %s, pagemap %s per frame")
        bound = technique_bound(doc, FLOOR_TECH[backend])
        if bound is not None and targets[-1]["met"] is not None:
            targets[-1]["bound"] = bound
            targets[-1]["detail"] += ("; in the C floor, the frame's %s faults alone cost "
                                      "%.1fx its whole async-WP frame"
                                      % (FLOOR_TECH[backend], bound))
    ratio_target("frame loop 256 MiB 1%: pagemap vs C floor", "<= 1.3x",
                 pm, _value(doc, "frame", "floor", **f256), 1.3, False,
                 [_backend_reason(doc, "pagemap"), floor_why],
                 "pagemap %s, floor %s per frame")
    lib, flo = find(doc, "frame", "pagemap", **f256), find(doc, "frame", "floor", **f256)
    if targets[-1]["met"] is not None and lib.get("min_ns") and flo.get("min_ns"):
        # Frames are judged by their medians; the fastest frames show whether
        # a gap is the code's or the machine's.
        targets[-1]["detail"] += "; fastest frames %s vs %s, %.2fx" % (
            fmt_ns(lib["min_ns"]), fmt_ns(flo["min_ns"]), lib["min_ns"] / flo["min_ns"])
    ratio_target("clean get-and-reset 1 GiB: pagemap vs C floor", "<= 1.2x",
                 _value(doc, "clean", "pagemap", size=GiB),
                 _value(doc, "clean", "floor", size=GiB), 1.2, False,
                 [_backend_reason(doc, "pagemap"), floor_why], "pagemap %s, floor %s per call")
    ratio_target("max_count=16: pagemap 4 GiB vs 64 KiB", "<= 3x",
                 _value(doc, "limit", "pagemap", size=4 * GiB),
                 _value(doc, "limit", "pagemap", size=64 * KiB), 3.0, False,
                 [_backend_reason(doc, "pagemap")], "4 GiB %s, 64 KiB %s per call")
    w = _value(doc, "win32", "pagemap")
    if w is None:
        add("win32 GetWriteWatch, 16 pages (pagemap)", "< 5 us per call", None, None,
            doc["win32"] if doc["win32"] != "available" else
            (_backend_reason(doc, "pagemap") or "not measured"))
    else:
        add("win32 GetWriteWatch, 16 pages (pagemap)", "< 5 us per call", w, w < 5000,
            None, "%s per call" % fmt_ns(w))
    return targets


# ---------------------------------------------------------------------------
# Output.

def _table(header, rows, out):
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                     for i, (h, w) in enumerate(zip(header, widths)))
    out.write("  " + line + "\n")
    out.write("  " + "  ".join("-" * w for w in widths) + "\n")
    for row in rows:
        out.write("  " + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                   for i, (c, w) in enumerate(zip(row, widths))) + "\n")


def _ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    r = a / b
    return "%.2fx" % r if r >= 0.1 else "%.2gx" % r


def print_report(doc, out=None):
    out = out or sys.stdout
    m = doc["machine"]
    out.write("writewatch bench (%s): %s %s, %s, %d CPUs, Python %s, numpy %s\n"
              % (doc["mode"], m["kernel"], m["machine"], m["cpu"] or "unknown CPU",
                 m["cpus"] or 0, m["python"], m["numpy"]))
    names = []
    for b in doc["backends"]:
        out.write("  backend %-9s %s\n" % (b["name"], "available" if b["available"]
                                            else "skipped: " + b["reason"]))
        if b["available"]:
            names.append(b["name"])
    out.write("  C floor          %s\n" % doc["floor"])
    out.write("  win32            %s\n" % doc["win32"])
    for s in doc["skipped"]:
        out.write("  C floor skipped %s: %s\n" % (s["workload"], s["skip"]))
    out.write("  statistic: median of repeats (frame, first write); minimum of "
              "repeats (clean, sparse) or of batch means (max_count, win32)%s\n"
              % ("; best of %d passes, the C floor and the backends taking turns"
                 % doc["passes"] if doc.get("passes", 1) > 1 else ""))
    cols = ["floor"] + names
    ratio_cols = []
    if "pagemap" in names:
        ratio_cols.append(("pagemap/floor", "pagemap", "floor"))
        ratio_cols += [("%s/pagemap" % n, n, "pagemap") for n in names if n != "pagemap"]
    else:
        ratio_cols += [("%s/floor" % n, n, "floor") for n in names]

    def section(title, keyfn, rowlabel, workload, keys):
        rows = []
        for key in keys:
            vals = {c: _value(doc, workload, c, **key) for c in cols}
            if all(v is None for v in vals.values()):
                continue
            rows.append([rowlabel(key)] + [fmt_ns(vals[c]) for c in cols]
                        + [_ratio(vals[a], vals[b]) for _, a, b in ratio_cols])
        if rows:
            out.write("\n%s\n" % title)
            _table([keyfn] + ["C floor"] + names + [r[0] for r in ratio_cols], rows, out)

    frame_keys = []
    seen = set()
    for r in doc["results"]:
        if r["workload"] == "frame":
            k = (r["size"], r["fraction"])
            if k not in seen:
                seen.add(k)
                frame_keys.append(dict(size=r["size"], fraction=r["fraction"]))
    frame_keys.sort(key=lambda k: (k["size"], k["fraction"]))
    section("Frame loop: write K random pages, then one get-and-reset (time per frame)",
            "size, written", lambda k: "%s, %s" % (fmt_size(k["size"]),
                                                    fmt_fraction(k["fraction"])),
            "frame", frame_keys)

    def keys_for(workload):
        return [dict(size=s) for s in sorted({r["size"] for r in doc["results"]
                                              if r["workload"] == workload})]
    section("Clean scan: get-and-reset with nothing written (time per call)",
            "size", lambda k: fmt_size(k["size"]), "clean", keys_for("clean"))
    # per clean GiB, from the largest size measured
    clean_sizes = [k["size"] for k in keys_for("clean")]
    if clean_sizes:
        big = max(clean_sizes)
        parts = []
        for c in cols:
            v = _value(doc, "clean", c, size=big)
            if v is not None:
                parts.append("%s %s" % ("C floor" if c == "floor" else c,
                                        fmt_ns(v * GiB / big)))
        out.write("  per clean GiB scanned (from %s): %s\n" % (fmt_size(big), ", ".join(parts)))
    section("max_count=16 with the first 16 pages written, no reset (time per call; "
            "the C floor is one raw ioctl with max_pages=16)",
            "region size", lambda k: fmt_size(k["size"]), "limit", keys_for("limit"))
    section("Sparse: every other page written, one get-and-reset (time per call)",
            "size", lambda k: fmt_size(k["size"]), "sparse", keys_for("sparse"))

    rows = []
    floor_none = _value(doc, "fault", "floor", tech="none")
    for n in names:
        lib = _value(doc, "fault", n)
        fl = _value(doc, "fault", "floor", tech=FLOOR_TECH.get(n))
        rows.append([n, fmt_ns(lib), "%s (%s)" % (fmt_ns(fl), FLOOR_TECH.get(n, "-")),
                     _ratio(lib, fl), _ratio(lib, _value(doc, "fault", "pagemap"))])
    if rows:
        out.write("\nFirst write after a reset (time per page; a plain write to a "
                  "writable page costs %s)\n" % fmt_ns(floor_none))
        _table(["backend", "library", "C floor (technique)", "lib/floor", "vs pagemap"],
               rows, out)

    rows = [[n, fmt_ns(_value(doc, "win32", n))] for n in names
            if _value(doc, "win32", n) is not None]
    if rows:
        out.write("\nwin32 GetWriteWatch on a 16-page allocation, 4 pages written "
                  "(time per call)\n")
        _table(["backend", "per call"], rows, out)

    out.write("\nTargets\n")
    for t in doc["targets"]:
        state = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        if t["met"] is None:
            measured = t["why"]
        elif "us per call" in t["goal"]:
            measured = t["detail"]
        else:
            measured = "%.2fx (%s)" % (t["measured"], t["detail"])
        out.write("  [%-6s] %s, goal %s: %s\n" % (state, t["target"], t["goal"], measured))
    over = [r for r in doc["results"] if r.get("over_reported")]
    if over:
        out.write("\nNotes\n")
        for r in over:
            out.write("  %s %s on %s: reported up to %d pages more than the %d written "
                      "(a conservative answer; no written page was missed)\n"
                      % (r["backend"], r["workload"], fmt_size(r["size"]),
                         r["over_reported"], r["written"]))
    if doc["errors"]:
        out.write("\nErrors\n")
        for e in doc["errors"]:
            out.write("  %s: %s\n" % (e["workload"], e["error"]))


PLOT_HINT = ("--plot needs matplotlib, which writewatch does not install by "
             "default: pip install writewatch[plot]")


def plot(doc, path):
    """Write a PNG: frame time against region size (1% written) and against
    written fraction (largest size), clean scan against size; log scales,
    one line per backend and the C floor (dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    names = [b["name"] for b in doc["backends"] if b["available"]] + ["floor"]
    style = {n: dict(color="C%d" % i, marker="o") for i, n in enumerate(names)}
    style["floor"] = dict(color="black", marker="s", linestyle="--")
    label = {n: n for n in names}
    label["floor"] = "C floor"
    frames = [r for r in doc["results"] if r["workload"] == "frame"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    m = doc["machine"]
    fig.suptitle("writewatch bench (%s) - %s %s, %s, %d CPUs"
                 % (doc["mode"], m["kernel"], m["machine"], m["cpu"] or "unknown CPU",
                    m["cpus"] or 0))
    fractions = sorted({r["fraction"] for r in frames})
    frac = 0.01 if 0.01 in fractions else (fractions[0] if fractions else None)
    sizes = sorted({r["size"] for r in frames})
    big = sizes[-1] if sizes else None
    panels = [
        (axes[0], lambda r: r["workload"] == "frame" and r["fraction"] == frac,
         lambda r: r["size"] / MiB, "region size (MiB)", "time per frame (us)",
         "frame loop, %s of pages written" % (fmt_fraction(frac) if frac else "-")),
        (axes[1], lambda r: r["workload"] == "frame" and r["size"] == big,
         lambda r: r["fraction"] * 100, "pages written per frame (%)", "time per frame (us)",
         "frame loop, %s region" % (fmt_size(big) if big else "-")),
        (axes[2], lambda r: r["workload"] == "clean",
         lambda r: r["size"] / MiB, "region size (MiB)", "time per call (us)",
         "get-and-reset, nothing written"),
    ]
    plain = FuncFormatter(lambda v, _: "%g" % v)
    for ax, keep, x, xlabel, ylabel, title in panels:
        for n in names:
            pts = sorted((x(r), r["value_ns"] / 1e3) for r in doc["results"]
                         if r["backend"] == n and keep(r))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label[n], **style[n])
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------
# Command line.

def add_arguments(parser):
    parser.description = (
        "Run every available backend and the raw-C floor on the same workloads "
        "(frame loop, first write, clean scan, max_count, sparse, win32) and "
        "print a table with ratios and the project's targets.")
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--full", action="store_true",
                   help="the long version: more sizes (up to 1 GiB frames, 4 GiB scans) "
                        "and longer repeats (several minutes)")
    # A few seconds' run for the tests (also WRITEWATCH_BENCH_TINY=1).
    g.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true",
                        help="print the results as one JSON document instead of the table")
    parser.add_argument("--plot", metavar="FILE",
                        help="also write a PNG plot (needs matplotlib: "
                             "pip install writewatch[plot])")
    parser.add_argument("--backend", action="append", metavar="NAME",
                        help="benchmark only this backend (repeatable)")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the C floor")


def run(args):
    mode = ("full" if getattr(args, "full", False) else
            "tiny" if getattr(args, "tiny", False) or os.environ.get("WRITEWATCH_BENCH_TINY")
            else "quick")
    plot_path = getattr(args, "plot", None)
    if plot_path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            sys.stderr.write("writewatch bench: %s\n" % PLOT_HINT)
            return 2
    try:
        doc = collect(PLANS[mode], backends=getattr(args, "backend", None),
                      with_floor=not getattr(args, "no_floor", False))
    except ValueError as e:
        sys.stderr.write("writewatch bench: %s\n" % e)
        return 2
    if getattr(args, "json", False):
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print_report(doc)
    if plot_path:
        plot(doc, plot_path)
        if not getattr(args, "json", False):
            sys.stdout.write("\nplot written to %s\n" % plot_path)
    return 1 if doc["errors"] else 0
