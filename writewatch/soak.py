"""Soak test: ``python -m writewatch.soak --seconds N``.

On every available backend at once, several writer threads write per-page
sequence numbers into a region while a collector thread loops on
get-and-reset, checking after every call that no write was lost and nothing
was reported that was not written.  While it runs, a line of progress goes
to stderr every few seconds (terminal or not).  At the end it prints what it
did (operations, pages tracked, peak RSS, open fds and mappings at start and
end) and exits non-zero on any violation; an unknown or unavailable
``--backend`` is one line on stderr and exit status 2.

The check, per page p.  One writer owns each page, so the page's writes are
numbered 1, 2, ...  Before its store of s the writer notes started[p] = s and
e = the number of gets that have returned so far; after the store it
publishes done[p] = (s, e) in one atomic step.  Get G_k is bracketed by two
snapshots: before_k = done[:] just before the call, after_k = started[:]
just after it.

1. No lost write.  A write noted with e started after G_e's scan, so only
   G_(e+1), G_(e+2), ... can report it; if it is done before G_k is called,
   G_k's scan comes after the store, so one of G_(e+1) .. G_k must report p.
   Checked at every G_k for the latest write done since G_(k-1) was called
   (earlier ones have the same deadline and no later start).
2. Nothing reported that was never written.  If G_k reports p, some store to
   p came after the scan of the last get G_j that reported p; that write was
   not done when G_j was called, and had started when G_k returned:
   after_k[p] > s(before_j[p]).

Both are sound (they never fire on a correct backend, however the threads
are scheduled) and the first covers every write.  After the writers stop,
two more gets close the books: the last must report nothing, and every page
must hold its last sequence number.
"""

import argparse
import errno
import functools
import json
import os
import random
import sys
import threading
import time

import numpy as np

import writewatch

PAGE = writewatch.PAGE_SIZE
SLOTS = PAGE // 8                 # uint64 slots per page
MAX_KEPT = 20                     # violations kept verbatim per lane


def proc_stats():
    """Open fds, mappings, current and peak RSS (KiB) of this process."""
    fds = len(os.listdir("/proc/self/fd"))
    with open("/proc/self/maps") as f:
        maps = sum(1 for _ in f)
    rss = hwm = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return {"fds": fds, "mappings": maps, "rss_kib": rss, "peak_rss_kib": hwm}


@functools.lru_cache(maxsize=None)
def kernel_writes_work(backend):
    """Whether the kernel can write into a clean (armed) page of a region on
    this backend: some techniques (mprotect) make such a write fail with
    EFAULT, a documented limit.  Decided by trying it."""
    r = writewatch.Region(PAGE, backend=backend)
    rfd, wfd = os.pipe()
    mem = memoryview(r)
    try:
        os.write(wfd, b"x")
        try:
            return os.readv(rfd, [mem[:1]]) == 1
        except OSError as e:
            if e.errno == errno.EFAULT:
                return False
            raise
    finally:
        mem.release()
        os.close(rfd)
        os.close(wfd)
        r.close()


class Lane:
    """One backend: a region, its writers, its collector, its books."""

    def __init__(self, backend, npages, nwriters, seed, self_test=None):
        self.backend = backend
        self.npages = npages
        self.region = writewatch.Region(npages * PAGE, backend=backend)
        self.base = self.region.address
        self.words = np.frombuffer(self.region, dtype=np.uint64)
        self.started = np.zeros(npages, dtype=np.int64)
        self.done = np.zeros(npages, dtype=np.int64)     # s << 32 | e, see above
        self.nwriters = nwriters
        self.kernel_ok = kernel_writes_work(backend)
        self.seed = seed
        self.self_test = self_test          # "drop" / "extra": falsify results on purpose
        self.victim = None
        self.writes = [0] * nwriters
        self.kernel_writes = 0
        self.gets = 0                       # gets that have returned
        self.reported = 0
        self.violations = 0
        self.messages = []
        self.errors = []
        # collector state
        self.prev_before = np.zeros(npages, dtype=np.int64)
        self.last_hit = np.zeros(npages, dtype=np.int64)            # index of last report
        self.last_report_before = np.zeros(npages, dtype=np.int64)  # its before[p] >> 32

    # -- writers --------------------------------------------------------------

    def writer(self, index, stop):
        rng = random.Random(self.seed * 1000 + index)
        mine = list(range(index, self.npages, self.nwriters))
        words, started, done = self.words, self.started, self.done
        # writer 0 writes by os.readv where the backend lets the kernel write
        kernel = index == 0 and self.nwriters > 1 and self.kernel_ok
        if kernel:
            rfd, wfd = os.pipe()
            mem = memoryview(self.region)
        count = 0
        try:
            while not stop.is_set():
                for _ in range(64):
                    p = rng.choice(mine)
                    s = int(started[p]) + 1
                    slot = p * SLOTS + s % SLOTS
                    e = self.gets
                    started[p] = s
                    if kernel:
                        os.write(wfd, s.to_bytes(8, "little"))
                        off = slot * 8
                        if os.readv(rfd, [mem[off:off + 8]]) != 8:
                            raise RuntimeError("short os.readv")
                    else:
                        words[slot] = s
                    done[p] = s << 32 | e
                    count += 1
        except BaseException as e:                       # reported, not lost
            self.errors.append("writer %d: %r" % (index, e))
        finally:
            self.writes[index] = count
            if kernel:
                self.kernel_writes = count
                mem.release()
                os.close(rfd)
                os.close(wfd)

    # -- collector ------------------------------------------------------------

    def violation(self, text):
        self.violations += 1
        if len(self.messages) < MAX_KEPT:
            self.messages.append(text)

    def get_and_check(self, falsify=False):
        before = self.done.copy()
        got = self.region.get_write_watch(reset=True)
        after = self.started.copy()
        self.gets += 1
        k = self.gets
        self.reported += len(got)
        if falsify and self.self_test == "drop":
            # a backend that stops reporting one page: from the first
            # non-empty result on, that page is never reported again
            if self.victim is None and len(got):
                self.victim = int(got[len(got) // 2])
            if self.victim is not None:
                got = got[got != self.victim]
        elif falsify and self.self_test == "extra":
            quiet = np.flatnonzero(~(after > self.last_report_before))
            if len(quiet):
                got = np.union1d(got, [self.base + int(quiet[0]) * PAGE]).astype(np.uint64)
                self.self_test = None
        offs = got.astype(np.int64) - self.base
        if len(got) and (np.any(offs % PAGE) or offs[0] < 0 or
                         offs[-1] >= self.npages * PAGE or np.any(np.diff(offs) <= 0)):
            self.violation("get %d: result not ascending page addresses of the "
                           "region: %s" % (k, got[:8]))
            offs = offs[(offs >= 0) & (offs < self.npages * PAGE)]
        hit = np.zeros(self.npages, dtype=bool)
        hit[offs // PAGE] = True
        before_s = before >> 32
        # 2. nothing reported that was never written
        bogus = hit & ~(after > self.last_report_before)
        for p in np.flatnonzero(bogus)[:3]:
            self.violation("get %d: page %d reported but not written since its "
                           "last report" % (k, p))
        self.last_hit[hit] = k
        self.last_report_before[hit] = before_s[hit]
        # 1. no lost write: the latest write done since the previous call
        # must have been reported by a get after the one it started behind
        new = before_s > (self.prev_before >> 32)
        lost = new & (self.last_hit <= (before & 0xFFFFFFFF))
        for p in np.flatnonzero(lost)[:3]:
            self.violation("get %d: page %d lost: write #%d (started after get %d) "
                           "was done before this call and no get since reported it"
                           % (k, p, before_s[p], before[p] & 0xFFFFFFFF))
        self.prev_before = before
        return hit

    def collector(self, stop):
        rng = random.Random(self.seed)
        # Early enough that a short self-test on a busy machine (a few dozen
        # gets a second) still falsifies a result.
        falsify_from = rng.randrange(5, 25)
        try:
            while not stop.is_set():
                self.get_and_check(falsify=self.gets >= falsify_from)
        except BaseException as e:
            self.errors.append("collector: %r" % (e,))

    def finish(self):
        """Writers stopped: close the books."""
        self.get_and_check()
        last = self.get_and_check()
        if last.any():
            self.violation("after the writers stopped, the last get still "
                           "reported %d page(s)" % last.sum())
        for p in np.flatnonzero(self.done):
            s = int(self.done[p]) >> 32
            if int(self.words[p * SLOTS + s % SLOTS]) != s:
                self.violation("page %d does not hold its last write #%d" % (p, s))

    def close(self):
        self.words = None
        self.region.close()

    def summary(self):
        return {"backend": self.backend, "pages": self.npages,
                "writes": sum(self.writes), "kernel_writes": self.kernel_writes,
                "kernel_writes_supported": self.kernel_ok,
                "gets": self.gets, "pages_reported": self.reported,
                "violations": self.violations, "errors": self.errors,
                "messages": self.messages}


def progress_interval(seconds):
    """Seconds between progress lines: ten or so per run, 1 to 30 s apart."""
    return min(30.0, max(1.0, seconds / 10))


def progress_line(elapsed, seconds, lanes):
    """One line of progress: per backend, writes started, gets, violations."""
    return "soak: %5.1f of %g s  %s" % (elapsed, seconds, "  ".join(
        "%s %d writes, %d gets, %d violation(s)"
        % (lane.backend, int(lane.started.sum()), lane.gets, lane.violations)
        for lane in lanes))


def run(seconds, backends=None, npages=2048, nwriters=4, seed=None, self_test=None,
        progress=None):
    """Run the soak; returns a dict report (report["ok"] says it all).

    With `progress` (a text file such as sys.stderr), writes a line when the
    run starts, one per interval (see progress_interval) and one when the
    writers stop, whether or not the file is a terminal."""
    if seed is None:
        seed = random.randrange(1 << 31)
    if backends is None:
        backends = [b.name for b in writewatch.backends() if b.available]
    start_stats = proc_stats()
    lanes = [Lane(b, npages, nwriters, seed + i, self_test) for i, b in enumerate(backends)]
    if progress is not None:
        progress.write("soak: %s for %g s, %d pages and %d writer threads each, seed %d\n"
                       % (", ".join(backends) or "no backend", seconds, npages,
                          nwriters, seed))
        progress.flush()
    stop_writers = threading.Event()
    stop_collectors = threading.Event()
    writers = [threading.Thread(target=lane.writer, args=(i, stop_writers), daemon=True)
               for lane in lanes for i in range(nwriters)]
    collectors = [threading.Thread(target=lane.collector, args=(stop_collectors,), daemon=True)
                  for lane in lanes]
    # Finer thread switching than the default 5 ms: more interleavings of
    # writes with scans per second.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    t0 = time.monotonic()
    for t in writers + collectors:
        t.start()
    busy_stats = None
    interval = progress_interval(seconds)
    next_line = interval
    try:
        while time.monotonic() - t0 < seconds:
            time.sleep(min(0.5, max(0.0, seconds - (time.monotonic() - t0))))
            if busy_stats is None and time.monotonic() - t0 >= seconds / 2:
                busy_stats = proc_stats()
            if any(lane.errors for lane in lanes):
                break
            if progress is not None and time.monotonic() - t0 >= next_line:
                progress.write(progress_line(time.monotonic() - t0, seconds, lanes) + "\n")
                progress.flush()
                next_line += interval
    finally:
        stop_writers.set()
        for t in writers:
            t.join()
        stop_collectors.set()
        for t in collectors:
            t.join()
        sys.setswitchinterval(switch)
    elapsed = time.monotonic() - t0
    if progress is not None:
        progress.write("soak: writers stopped after %.1f s, closing the books\n" % elapsed)
        progress.flush()
    for lane in lanes:
        if not lane.errors:
            try:
                lane.finish()
            except BaseException as e:
                lane.errors.append("finish: %r" % (e,))
    for lane in lanes:
        lane.close()
    end_stats = proc_stats()
    summaries = [lane.summary() for lane in lanes]
    violations = sum(s["violations"] for s in summaries)
    errors = sum(len(s["errors"]) for s in summaries)
    return {
        "ok": bool(lanes) and violations == 0 and errors == 0
              and end_stats["fds"] == start_stats["fds"],
        "seconds": round(elapsed, 2), "seed": seed, "writers_per_backend": nwriters,
        "pages_tracked": npages * len(lanes), "lanes": summaries,
        "violations": violations, "errors": errors,
        "start": start_stats, "middle": busy_stats or start_stats, "end": end_stats,
    }


def format_report(rep):
    lines = ["writewatch soak: %.1f s, seed %d, %d writer threads per backend, "
             "%d pages tracked" % (rep["seconds"], rep["seed"],
                                   rep["writers_per_backend"], rep["pages_tracked"])]
    for s in rep["lanes"]:
        kernel = ("%d by the kernel" % s["kernel_writes"] if s["kernel_writes_supported"]
                  else "kernel writes fail with EFAULT on this backend: none")
        lines.append("  %-9s %8d pages  %10d writes (%s)  %8d get-and-resets  "
                     "%10d pages reported  %d violation(s)"
                     % (s["backend"], s["pages"], s["writes"], kernel,
                        s["gets"], s["pages_reported"], s["violations"]))
        for m in s["messages"]:
            lines.append("    VIOLATION: " + m)
        for e in s["errors"]:
            lines.append("    ERROR: " + e)
    for when in ("start", "middle", "end"):
        st = rep[when]
        lines.append("  %-6s fds %d, mappings %d, RSS %d KiB, peak RSS %d KiB"
                     % (when, st["fds"], st["mappings"], st["rss_kib"], st["peak_rss_kib"]))
    if rep["end"]["fds"] != rep["start"]["fds"]:
        lines.append("  LEAK: %d fds at start, %d at end"
                     % (rep["start"]["fds"], rep["end"]["fds"]))
    lines.append("RESULT: %s (%d violation(s), %d error(s))"
                 % ("ok" if rep["ok"] else "FAILED", rep["violations"], rep["errors"]))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m writewatch.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--pages", type=int, default=2048, help="pages per backend")
    ap.add_argument("--writers", type=int, default=4, help="writer threads per backend")
    ap.add_argument("--backend", action="append", help="only this backend (repeatable)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--self-test", choices=["drop", "extra"],
                    help="check the checker: stop reporting one page, or add one "
                         "never written, on purpose -- the run must then fail")
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.pages < 1 or args.writers < 1:
        ap.error("--seconds, --pages and --writers must be positive")
    known = {b.name: b for b in writewatch.backends()}
    for name in args.backend or ():
        # One line and exit status 2, as argparse does for its own errors,
        # without the usage text: the line says everything.
        if name not in known:
            sys.stderr.write("%s: error: unknown backend %r; known backends: %s\n"
                             % (ap.prog, name, ", ".join(known)))
            return 2
        if not known[name].available:
            sys.stderr.write("%s: error: backend %r cannot run here: %s\n"
                             % (ap.prog, name, known[name].reason))
            return 2
    rep = run(args.seconds, args.backend, args.pages, args.writers, args.seed,
              args.self_test, progress=sys.stderr)
    print(json.dumps(rep, indent=1) if args.json else format_report(rep))
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
