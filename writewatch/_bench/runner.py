"""One run of `writewatch bench`: the plans (which sizes a run covers), the
jobs (one workload at one size, on the C floor and on every backend), the
passes, and the JSON document the report is printed from.

Each job runs on the C floor and then on every backend before the next job
starts, `passes` times over, so that a change in a shared machine's load
hits all of them alike; each result is its best pass, and every pass's
value is kept so the report can say when they disagree.
"""

import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

import writewatch
from writewatch import _core
from writewatch._bench import floor as _floor
from writewatch._bench.report import FLOOR_TECH
from writewatch._bench.units import GiB, KiB, MiB, PAGE, fmt_size
from writewatch._bench.workloads import (
    BenchError, BenchSkip, CleanScan, FirstWrite, FrameLoop, GCPattern, LimitCall, LogAppend,
    ManyRegions, SnapshotFrames, Sparse, Win32Call, WinePattern, _repeat, filesystem_of,
    many_unavailable, run_reservation, win32_unavailable, written_pages)

# The statistic each workload reports.  Frames, first writes and the Wine
# microbenchmark take page faults, whose cost varies from one repeat to the
# next: the median.  The scans and calls redo identical work each time, and
# a shared machine can only add to it: the minimum (of single calls, or of
# batch means).  Snapshots' restores take faults and DeltaLog's appends wait
# for the disk: the median, and for saves and copies beside them too.
STATISTIC = {"frame": "median", "fault": "median", "clean": "min", "sparse": "min",
             "limit": "min", "win32": "min", "wine": "median", "gc": "min",
             "reserve": "min", "regions": "min", "snapshots": "median",
             "deltalog": "median"}

# A figure whose passes differ by more than PASS_SPREAD (best to worst), or
# whose median is more than REPEAT_SPREAD times its fastest repeat, is
# marked unstable: the machine was busy, or the figure varies by nature.
PASS_SPREAD = 1.5
REPEAT_SPREAD = 2.0


# ---------------------------------------------------------------------------
# Plans: which sizes and fractions a run covers.

class Plan:
    def __init__(self, name, frame_sizes, fractions, frame_full_max, clean_sizes,
                 limit_sizes, sparse_sizes, fault_pages, budget, min_reps, batch, passes,
                 wine, gc, reservation, regions, pattern_budget, pattern_min_reps,
                 snapshots):
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
        # The scale patterns: dicts of their parameters (see jobs()), and
        # the seconds each one's repeats may take per backend and pass.
        self.wine = wine
        self.gc = gc
        self.reservation = reservation
        self.regions = regions
        self.pattern_budget = pattern_budget
        self.pattern_min_reps = pattern_min_reps
        # Issue 12's Snapshots and DeltaLog workload: a region of `size`,
        # `fraction` of its pages written per frame, Snapshots(keep=keep);
        # the seconds each of its measurements may take (at least min_reps
        # repeats), per backend and pass.
        self.snapshots = snapshots

    def frames(self):
        for size in self.frame_sizes:
            for frac in self.fractions:
                if frac >= 1.0 and size > self.frame_full_max:
                    continue
                yield size, frac


FRACTIONS = (0.001, 0.01, 0.1, 1.0)

# Wine's merge request: 8 threads, 8,192 pages, 3 ms between calls, random
# writes, WRITE_WATCH_FLAG_RESET.
WINE = dict(threads=8, pages=8192, delay=0.003)

# Issue 12: a 170 MiB region (the game state of Brawlback's incremental
# rollback), 1 % of its pages written per frame, 8 snapshots kept; a
# restore goes 7 frames back.
SNAPSHOTS = dict(size=170 * MiB, fraction=0.01, keep=8)

PLANS = {
    "tiny": Plan("tiny", [1 * MiB, 4 * MiB], (0.01, 1.0), 4 * MiB,
                 [1 * MiB, 4 * MiB], [64 * KiB, 16 * MiB], [1 * MiB], 64,
                 budget=0.01, min_reps=2, batch=20, passes=1,
                 wine=dict(WINE, pages=512, writes=1024),
                 gc=dict(size=16 * MiB, fraction=0.01, batch=256),
                 reservation=dict(size=1 * GiB, committed=16 * MiB, fraction=0.01),
                 regions=dict(count=200, size=64 * KiB), pattern_budget=0.02,
                 pattern_min_reps=2,
                 snapshots=dict(SNAPSHOTS, size=4 * MiB, budget=0.01, min_reps=2)),
    "quick": Plan("quick", [1 * MiB, 16 * MiB, 256 * MiB], FRACTIONS, 16 * MiB,
                  [1 * MiB, 64 * MiB, 1 * GiB, 4 * GiB], [64 * KiB, 4 * GiB],
                  [16 * MiB], 2048, budget=0.06, min_reps=3, batch=200, passes=2,
                  wine=dict(WINE, writes=4096),
                  gc=dict(size=1 * GiB, fraction=0.01, batch=256),
                  reservation=dict(size=256 * GiB, committed=1 * GiB, fraction=0.01),
                  regions=dict(count=10000, size=64 * KiB), pattern_budget=0.3,
                  pattern_min_reps=2, snapshots=dict(SNAPSHOTS, budget=0.25, min_reps=3)),
    "full": Plan("full", [1 * MiB, 16 * MiB, 256 * MiB, 1 * GiB], FRACTIONS, 1 * GiB,
                 [1 * MiB, 16 * MiB, 256 * MiB, 1 * GiB, 4 * GiB],
                 [64 * KiB, 16 * MiB, 1 * GiB, 4 * GiB], [64 * MiB, 256 * MiB],
                 16384, budget=0.5, min_reps=3, batch=1000, passes=2,
                 wine=dict(WINE, writes=32768),
                 gc=dict(size=1 * GiB, fraction=0.01, batch=256),
                 reservation=dict(size=256 * GiB, committed=1 * GiB, fraction=0.01),
                 regions=dict(count=10000, size=64 * KiB), pattern_budget=2.0,
                 pattern_min_reps=3, snapshots=dict(SNAPSHOTS, budget=2.0, min_reps=5)),
}


# ---------------------------------------------------------------------------
# Progress.

class Progress:
    """Progress on stderr.  On a terminal: one line, rewritten in place,
    once the run has lasted more than `delay` seconds (a short run prints
    nothing).  Otherwise -- a CI log, a pipe -- one line per step as it
    starts, so a long run shows where it is."""

    def __init__(self, total, stream=None, tty=None, delay=1.0, enabled=True):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.enabled = enabled
        self.total = total
        self.done = 0
        self.start = time.monotonic()
        self.delay = delay
        self.shown = False

    def step(self, what):
        self.done += 1
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        line = "[%d/%d %4.0fs] %s" % (self.done, self.total, elapsed, what)
        if not self.tty:
            self.stream.write("writewatch bench: %s\n" % line)
            self.stream.flush()
        elif elapsed >= self.delay:
            self.shown = True
            self.stream.write("\r\033[K" + line)
            self.stream.flush()

    def finish(self):
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()


# ---------------------------------------------------------------------------
# Records.

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


# ---------------------------------------------------------------------------
# Jobs.  A job is one workload at one size, made once per backend and
# measured in every pass (the setup -- populating 256 MiB is a fault per
# page, seconds on the slow backends -- is paid once).

class Job:
    """kind: its workload's name; label: what progress and errors call it;
    floor: ww-floor workload specs (none: no floor for this job), floor_args
    the options it needs before them;
    make(backend, plan) -> an object with close(); measure(object, plan) ->
    [(workload, unit, times, params), ...]; after_close(object) -> the same,
    for what only closing measures; passes: None for the plan's."""

    def __init__(self, kind, label, floor, make, measure, after_close=None, passes=None,
                 floor_budget=None, floor_min_reps=None, floor_args=()):
        self.kind = kind              # the workload it records, for errors and skips
        self.label = label
        self.floor = floor
        self.make = make
        self.measure = measure
        self.after_close = after_close
        self.passes = passes
        self.floor_budget = floor_budget
        self.floor_min_reps = floor_min_reps
        self.floor_args = list(floor_args)


def _over(obj, params):
    if getattr(obj, "extra", 0):
        params["over_reported"] = obj.extra
    return params


def _frames_measure(loop, plan, size, fractions):
    out = []
    for frac in fractions:
        loop.set_written(written_pages(size, frac))
        times = loop.measure(plan.budget, plan.min_reps)
        out.append(("frame", "frame", times,
                    _over(loop, dict(size=size, fraction=frac, written=loop.k))))
    return out


def _sparse_measure(sp, plan):
    times = sp.measure(plan.budget, plan.min_reps)
    return [("sparse", "call", times,
             _over(sp, dict(size=sp.mem.region.size, written=sp.expect)))]


def _simple(workload, unit, fn, **params):
    return lambda o, p: [(workload, unit, fn(o, p), dict(params))]


def _wine_measure(obj, plan):
    writes, cpu, calls, busy = [], [], [], []
    reported = obj.reported

    def one():
        wall, c = obj.run()
        calls.extend(c)
        if obj.writer_cpus is not None:
            busy.append(obj.writer_cpus)
        writes.append(obj.per_write(wall))
        cpu.append(obj.cpu_per_write)
        return 0
    _repeat(one, plan.pattern_budget, plan.pattern_min_reps)
    w = plan.wine
    params = dict(threads=w["threads"], pages=w["pages"], writes=w["writes"],
                  delay_us=int(round(w["delay"] * 1e6)), cpus=obj.cpus)
    if busy:
        params["writer_cpus"] = round(float(np.median(busy)), 2)
    out = [("wine", "write", writes, _over(obj, dict(params, metric="write"))),
           ("wine", "write", cpu, dict(params, metric="write_cpu"))]
    if calls:
        out.append(("wine", "call", calls, dict(
            params, metric="call", pages_per_call=round((obj.reported - reported) / len(calls), 1))))
    return out


def _gc_measure(obj, plan):
    def step():
        obj.prepare()
        t0 = time.perf_counter_ns()
        got = obj.round()
        t1 = time.perf_counter_ns()
        obj.check(got)
        return t1 - t0
    times = _repeat(step, plan.pattern_budget, plan.pattern_min_reps)
    g = plan.gc
    return [("gc", "round", times, _over(obj, dict(
        size=g["size"], written=written_pages(g["size"], g["fraction"]), batch=g["batch"],
        calls=obj.calls)))]


class _Reservation:
    """The reservation job's object: the measuring happens in a child."""

    def __init__(self, backend):
        self.backend = backend

    def close(self):
        pass


def _reservation_measure(obj, plan):
    r = plan.reservation
    written = written_pages(r["committed"], r["fraction"])
    steps = run_reservation(obj.backend, r["size"], r["committed"], written,
                            plan.pattern_budget, plan.min_reps)
    out = []
    for step, data in steps.items():
        if data["times"]:
            out.append(("reserve", "call", data["times"], dict(
                step=step, size=r["size"], committed=r["committed"], written=written,
                pte_bytes=data["pte_bytes"])))
    return out


def _regions_measure(obj, plan):
    g = plan.regions
    params = dict(count=g["count"], size=g["size"], descriptors=obj.descriptors)
    out = []
    variants = [("each", obj.each)]
    if many_unavailable() is None:
        variants.append(("many", obj.many))
    for variant, call in variants:
        def step(call=call):
            obj.prepare()
            t0 = time.perf_counter_ns()
            got = call()
            t1 = time.perf_counter_ns()
            obj.check(got)
            return (t1 - t0) / g["count"]
        times = _repeat(step, plan.pattern_budget, plan.pattern_min_reps)
        out.append(("regions", "region", times, _over(obj, dict(params, variant=variant))))
    out.append(("regions", "region", [obj.create_ns], dict(params, variant="create")))
    return out


def _regions_closed(obj, plan):
    g = plan.regions
    if obj.close_ns is None:
        return []
    return [("regions", "region", [obj.close_ns],
             dict(count=g["count"], size=g["size"], descriptors=obj.descriptors,
                  variant="close"))]


def _snapshots_measure(obj, plan):
    s = plan.snapshots
    params = dict(size=s["size"], written=obj.k, keep=obj.keep)
    copy = obj.measure_copy(s["budget"], s["min_reps"])
    save = obj.measure_save(s["budget"], s["min_reps"])
    restore = obj.measure_restore(s["budget"], s["min_reps"])
    return [("snapshots", "call", copy, dict(params, op="copy")),
            ("snapshots", "call", save, dict(params, op="save")),
            ("snapshots", "call", restore, dict(
                params, op="restore", back=obj.keep - 1,
                restored=round(float(np.mean(obj.restored)), 1)))]


def _deltalog_measure(obj, plan):
    s = plan.snapshots
    return [("deltalog", "call", obj.measure(s["budget"], s["min_reps"]),
             dict(size=s["size"], written=obj.k, op="append"))]


def jobs(plan, with_win32=True, backends=None, workdir=None):
    """The Jobs of a plan, in the order they run.  backends: the names the
    C floor's per-technique workloads are run for (default: all);
    workdir: where DeltaLog's workload and its floor make their files
    (default: no DeltaLog job)."""
    out = []
    by_size = {}
    for size, frac in plan.frames():
        by_size.setdefault(size, []).append(frac)
    for size, fracs in by_size.items():
        out.append(Job("frame", "frame loop %s" % fmt_size(size),
                       ["frame:%d:%s" % (size, ",".join(str(written_pages(size, f))
                                                        for f in fracs))],
                       lambda n, p, s=size, f=fracs: FrameLoop(n, s, written_pages(s, f[0])),
                       lambda o, p, s=size, f=fracs: _frames_measure(o, p, s, f)))
    out.append(Job("fault", "first write",
                   ["fault:%s:%d" % (t, plan.fault_pages)
                    for t in ("uffd-async", "uffd-sync", "mprotect", "none")],
                   lambda n, p: FirstWrite(n, p.fault_pages),
                   _simple("fault", "page", lambda o, p: o.measure(p.budget, p.min_reps),
                           pages=plan.fault_pages)))
    for size in plan.clean_sizes:
        out.append(Job("clean", "clean scan %s" % fmt_size(size), ["clean:%d" % size],
                       lambda n, p, s=size: CleanScan(n, s),
                       _simple("clean", "call", lambda o, p: o.measure(p.budget, p.min_reps),
                               size=size)))
    for size in plan.limit_sizes:
        out.append(Job("limit", "max_count=16 %s" % fmt_size(size), ["limit:%d:16" % size],
                       lambda n, p, s=size: LimitCall(n, s, 16),
                       _simple("limit", "call",
                               lambda o, p: o.measure(p.budget, p.min_reps, p.batch),
                               size=size, max_count=16)))
    for size in plan.sparse_sizes:
        out.append(Job("sparse", "sparse %s" % fmt_size(size), ["sparse:%d" % size],
                       lambda n, p, s=size: Sparse(n, s), _sparse_measure))
    if with_win32:
        out.append(Job("win32", "win32 GetWriteWatch", [],
                       lambda n, p: Win32Call(n),
                       _simple("win32", "call",
                               lambda o, p: o.measure(p.budget, p.min_reps, p.batch),
                               pages=16)))
    # The scale patterns.  Wine's and the GC's go through the win32 layer.
    pb, reps = plan.pattern_budget, plan.pattern_min_reps
    if with_win32:
        w = plan.wine
        out.append(Job("wine", "Wine microbenchmark",
                       ["wine:%d:%d:%d:%d" % (w["threads"], w["pages"],
                                              round(w["delay"] * 1e6), w["writes"])],
                       lambda n, p: WinePattern(n, p.wine["threads"], p.wine["pages"],
                                                p.wine["writes"], p.wine["delay"]),
                       _wine_measure, floor_budget=pb, floor_min_reps=reps))
        g = plan.gc
        k = written_pages(g["size"], g["fraction"])
        out.append(Job("gc", "GC pattern %s" % fmt_size(g["size"]),
                       ["gc:%d:%d:%d" % (g["size"], k, g["batch"])],
                       lambda n, p, k=k: GCPattern(n, p.gc["size"], k, p.gc["batch"]),
                       _gc_measure, floor_budget=pb, floor_min_reps=reps))
        r = plan.reservation
        out.append(Job("reserve", "reservation %s" % fmt_size(r["size"]),
                       ["reserve:%d:%d:%d" % (r["size"], r["committed"],
                                              written_pages(r["committed"], r["fraction"]))],
                       lambda n, p: _Reservation(n), _reservation_measure, passes=1,
                       floor_budget=pb, floor_min_reps=1))
    g = plan.regions
    out.append(Job("regions", "%d regions" % g["count"], ["regions:%d:%d" % (g["count"], g["size"])],
                   lambda n, p: ManyRegions(n, p.regions["count"], p.regions["size"]),
                   _regions_measure, after_close=_regions_closed,
                   floor_budget=pb, floor_min_reps=reps))
    # Issue 12: Snapshots, on the floor of each backend's technique.
    s = plan.snapshots
    k = written_pages(s["size"], s["fraction"])
    techs = [FLOOR_TECH[n] for n in (FLOOR_TECH if backends is None else backends)
             if n in FLOOR_TECH]
    out.append(Job("snapshots", "Snapshots %s" % fmt_size(s["size"]),
                   ["copy:%d" % s["size"]] +
                   ["snap:%s:%d:%d:%d" % (t, s["size"], k, s["keep"]) for t in techs],
                   lambda n, p, k=k: SnapshotFrames(n, p.snapshots["size"], k,
                                                    p.snapshots["keep"]),
                   _snapshots_measure, floor_budget=s["budget"],
                   floor_min_reps=s["min_reps"]))
    if workdir is not None:
        out.append(Job("deltalog", "DeltaLog %s" % fmt_size(s["size"]),
                       ["append:%d:%d" % (s["size"], k)],
                       lambda n, p, k=k: LogAppend(n, p.snapshots["size"], k, workdir),
                       _deltalog_measure, floor_budget=s["budget"],
                       floor_min_reps=s["min_reps"], floor_args=["--dir", workdir]))
    return out


# ---------------------------------------------------------------------------
# One run.

def collect(plan, backends=None, progress=None, with_floor=True):
    """Run every workload of `plan` on every available backend (or those
    named) and the C floor.  Returns a dict (the --json document)."""
    infos = writewatch.backends()
    order = list(_core.BACKEND_NAMES)       # the preference order, written once
    infos.sort(key=lambda b: order.index(b.name) if b.name in order else len(order))
    if backends:
        known = {b.name for b in infos}
        for name in backends:
            if name not in known:
                raise ValueError("unknown backend %r; known: %s"
                                 % (name, ", ".join(b.name for b in infos)))
        infos = [b for b in infos if b.name in backends]
    names = [b.name for b in infos if b.available]
    win32_missing = win32_unavailable()
    # DeltaLog's files, the library's and the floor's, on one filesystem.
    workdir = tempfile.mkdtemp(prefix="writewatch-bench-")
    try:
        return _collect(plan, infos, names, win32_missing, workdir, progress, with_floor)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _collect(plan, infos, names, win32_missing, workdir, progress, with_floor):
    todo = jobs(plan, with_win32=not win32_missing, backends=names, workdir=workdir)
    floor_missing = None if with_floor and _floor.floor_path() else (
        "not run (--no-floor)" if not with_floor else _floor.floor_missing())
    steps = sum((job.passes or plan.passes) * (len(names) + (1 if job.floor and not
                                                             floor_missing else 0))
                + (1 if job.after_close and names else 0) for job in todo)
    prog = progress or Progress(steps)
    run = _Run(plan, names, floor_missing, prog)
    for job in todo:
        objects = {}            # backend -> its set-up workload, kept across passes
        try:
            for _ in range(job.passes or plan.passes):
                run.one_pass(job, objects)
        finally:
            if job.after_close and names:
                prog.step("%s: closing them" % job.label)
            for name, obj in objects.items():
                if obj is not None:
                    obj.close()
                    if job.after_close:
                        run.add(name, job.after_close(obj, plan))
    prog.finish()
    skipped = _unique([r for r in run.floor if "skip" in r] + run.skipped)
    if many_unavailable():
        skipped.append({"workload": "%d regions: get_write_watch_many" % plan.regions["count"],
                        "skip": many_unavailable(), "job": "regions-many", "backend": None})
    results = _best_of_passes(run.results + [r for r in run.floor if "median_ns" in r])
    fstype, device = filesystem_of(workdir)
    logs = dict(dir=workdir, fstype=fstype, device=device)
    return _document(plan, infos, win32_missing, floor_missing, results, skipped,
                     _unique(run.errors), logs)


class _Run:
    """What one run has gathered so far."""

    def __init__(self, plan, names, floor_missing, progress):
        self.plan = plan
        self.names = names
        self.floor_missing = floor_missing
        self.progress = progress
        self.results, self.floor, self.errors, self.skipped = [], [], [], []
        self.frame_keys = list(plan.frames())

    def add(self, backend, measured):
        for workload, unit, times, params in measured:
            _record(self.results, workload, backend, unit, times, **params)

    def one_pass(self, job, objects):
        """The C floor, then every backend, on one job."""
        plan = self.plan
        if job.floor and not self.floor_missing:
            self.progress.step("%s: C floor" % job.label)
            got, err = _floor.run_floor(
                job.floor, job.floor_budget or plan.budget,
                job.floor_min_reps or plan.min_reps, args=job.floor_args)
            if err:
                self.errors.append({"workload": "C floor " + job.label, "error": err,
                                    "job": job.kind, "backend": "floor"})
            for rec in got:
                if "error" in rec:
                    self.errors.append({"workload": "C floor " + rec["workload"],
                                        "error": rec["error"], "job": job.kind,
                                        "backend": "floor"})
                elif "skip" in rec:
                    rec.update(job=job.kind, backend="floor")
                elif "median_ns" in rec:
                    rec["backend"] = "floor"
                    rec["statistic"] = STATISTIC[rec["workload"]]
                    rec["value_ns"] = rec["%s_ns" % rec["statistic"]]
                    if rec["workload"] == "frame":
                        rec["fraction"] = _fraction_of(rec, self.frame_keys)
                self.floor.append(rec)
        for name in self.names:
            self.progress.step("%s: %s" % (job.label, name))
            if name in objects and objects[name] is None:
                continue                        # its setup failed in an earlier pass
            try:
                if name not in objects:
                    objects[name] = None
                    objects[name] = job.make(name, plan)
                measured = job.measure(objects[name], plan)
            except BenchSkip as e:
                self.skipped.append({"workload": "%s %s" % (job.label, name),
                                     "skip": str(e), "job": job.kind, "backend": name})
                continue
            except (BenchError, OSError, MemoryError, writewatch.WriteWatchError) as e:
                self.errors.append({"workload": "%s %s" % (job.label, name),
                                    "error": "%s: %s" % (type(e).__name__, e),
                                    "job": job.kind, "backend": name})
                continue
            self.add(name, measured)


def _document(plan, infos, win32_missing, floor_missing, results, skipped, errors,
              logs=None):
    from writewatch._bench.report import evaluate_targets
    doc = {
        "mode": plan.name,
        "machine": machine_info(),
        "backends": [dict(name=b.name, available=b.available, reason=b.reason)
                     for b in infos],
        "win32": win32_missing or "available",
        "floor": floor_missing or _floor.floor_path(),
        "floor_available": not floor_missing,
        "statistics": dict(STATISTIC, limit="min of batch means",
                           win32="min of batch means"),
        "passes": plan.passes,
        "patterns": dict(wine=plan.wine, gc=plan.gc, reservation=plan.reservation,
                         regions=plan.regions, snapshots=plan.snapshots),
        "log_dir": logs,
        "spread_limits": dict(passes=PASS_SPREAD, repeats=REPEAT_SPREAD),
        "results": results,
        "skipped": skipped,
        "errors": errors,
    }
    doc["targets"] = evaluate_targets(doc)
    return doc


_KEY_FIELDS = ("workload", "backend", "size", "fraction", "written", "tech", "pages",
               "max_count", "metric", "step", "variant", "count", "threads", "op")


def _best_of_passes(records):
    """One record per measurement: the pass with the lowest value (a burst
    of load elsewhere on the machine slows one pass, not both), with every
    pass's value kept in "passes", the fastest repeat of any pass in
    "fastest_ns", and "unstable" set when the passes, or the repeats of the
    pass kept, disagree widely (PASS_SPREAD, REPEAT_SPREAD)."""
    best, fastest, groups = {}, {}, {}
    for r in records:
        key = tuple(r.get(k) for k in _KEY_FIELDS)
        low = r.get("min_ns", r["value_ns"])
        groups.setdefault(key, []).append(r["value_ns"])
        fastest[key] = min(fastest.get(key, low), low)
        if key not in best or r["value_ns"] < best[key]["value_ns"]:
            best[key] = dict(r)
    out = []
    for key, r in best.items():
        passes = groups[key]
        r["passes"] = passes
        r["fastest_ns"] = fastest[key]
        spread = max(passes) / min(passes) if min(passes) > 0 else 1.0
        low, mid = r.get("min_ns", r["value_ns"]), r.get("median_ns", r["value_ns"])
        repeats = mid / low if low > 0 else 1.0
        r["spread"] = round(spread, 3)
        r["unstable"] = bool(spread > PASS_SPREAD or
                             (r.get("n", 0) >= 3 and repeats > REPEAT_SPREAD))
        out.append(r)
    return out


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
