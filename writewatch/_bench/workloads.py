"""The workloads, run through the library: each one's set-up, the call that
is timed, and the check of its answer against what was written.  Shared by
`writewatch bench` (runner.py) and the pytest-benchmark suite (bench/).

- frame loop: a pre-populated region; each frame writes K random pages
  (chosen before the clock starts) and makes one get-and-reset;
- first write: cost per page of the first write after a reset -- the fault
  each technique takes;
- clean scan: get-and-reset of a region nothing was written to;
- max_count: ``get_write_watch(max_count=16)`` on a region whose first 16
  pages are written -- must not grow with the region's size;
- sparse: get-and-reset with every other page written (many runs);
- win32: ``GetWriteWatch`` on a 16-page allocation;

the scale patterns of issue 10: Wine's write-watch microbenchmark, the
.NET GC's pattern, a large reservation, many regions; and issue 12's
Snapshots (save, restore, against a copy of the whole region) and
DeltaLog.append().
"""

import ctypes
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

import writewatch
from writewatch._bench.units import GiB, KiB, MiB, PAGE, fmt_bytes, fmt_size


def written_pages(size, fraction):
    """Pages written per frame: at least one."""
    return max(1, int(round(size // PAGE * fraction)))


# ---------------------------------------------------------------------------
# Workloads on the library.  Each returns a list of times in ns (one per
# repeat, per the workload's unit) and checks its own answers: a backend that
# reports the wrong pages fails the benchmark instead of looking fast.

class BenchError(Exception):
    """A workload got a wrong answer from a backend, or could not run on it."""


class BenchSkip(Exception):
    """A workload that cannot run here (the reason is the message)."""


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
        self.size = pages * PAGE
        self.w, self.base = _win32_alloc(backend, self.size)
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
# The scale patterns (issue 10).  Each has a twin in the C floor
# (kernel/floor/floor.c) that does the same steps on the kernel directly,
# writes the same bytes (write_offsets) and is checked the same way.

def write_offsets(pages):
    """The byte written in each page: a cache line that varies with the
    page, so random pages do not all land in one cache set (as the floor's
    write_offset())."""
    pages = np.asarray(pages, dtype=np.intp)
    return pages * PAGE + (pages % 64) * 64


def cpus():
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def vmpte():
    """This process's page tables (VmPTE of /proc/self/status) in bytes, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmPTE:"):
                    return int(line.split()[1]) * KiB
    except (OSError, ValueError, IndexError):
        pass
    return None


def open_descriptors():
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def _win32_alloc(backend, size):
    """VirtualAlloc(0, size, MEM_RESERVE|MEM_COMMIT|MEM_WRITE_WATCH,
    PAGE_READWRITE) with WRITEWATCH_BACKEND=backend while the call runs: the
    win32 layer takes a write-watch allocation's backend from it then.
    Returns (win32 module, base); BenchError if it fails."""
    from writewatch import win32
    saved = os.environ.get("WRITEWATCH_BACKEND")
    os.environ["WRITEWATCH_BACKEND"] = backend
    try:
        base = win32.VirtualAlloc(0, size, win32.MEM_RESERVE | win32.MEM_COMMIT |
                                  win32.MEM_WRITE_WATCH, win32.PAGE_READWRITE)
    finally:
        if saved is None:
            del os.environ["WRITEWATCH_BACKEND"]
        else:
            os.environ["WRITEWATCH_BACKEND"] = saved
    if not base:
        raise BenchError("%s: VirtualAlloc(%s) failed with error %d"
                         % (backend, fmt_size(size), win32.GetLastError()))
    return win32, base


def _u8_view(base, size):
    return np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(base))


class WinePattern:
    """Wine's write-watch microbenchmark (Wine merge request 7871): `threads`
    threads make `writes` random writes each to a `pages`-page write-watched
    allocation, while this thread sleeps `delay` seconds and calls
    GetWriteWatch(WRITE_WATCH_FLAG_RESET) over the whole allocation, again
    and again until the writers are done.

    The writers must run in parallel, as Wine's threads do, and Python
    threads holding the GIL cannot.  So each writer makes all its writes in
    one numpy fancy-index assignment, which numpy runs without the GIL (for
    index arrays above its 500-element threshold): the writes, and the write
    faults they take, are C code running on every CPU at once, and a writer
    needs the GIL only to start and to finish.  The time per write is the
    run's wall time times the CPUs the writers can use, divided by the
    writes -- on a machine with a CPU per thread, the average time a write
    took; on fewer CPUs, the machine's time per write.  The C floor's
    pthreads are timed the same way.  A busy machine lengthens the wall time;
    so each run also gives ``cpu_per_write``, the CPU time the whole process
    used during the run (writers, faults, the calls, a backend's handler
    thread) per write, which other processes' load hardly changes but which
    leaves out time spent blocked; and ``writer_cpus``, the CPU time the
    writers used over the run's wall time: how many CPUs they kept busy."""

    MIN_WRITES = 1024       # numpy keeps the GIL for fewer than ~500 elements

    def __init__(self, backend, threads, pages, writes, delay, seed=0x5eed):
        if writes < self.MIN_WRITES:
            raise ValueError("writes must be at least %d" % self.MIN_WRITES)
        self.backend = backend
        self.threads, self.pages, self.writes, self.delay = threads, pages, writes, delay
        self.size = pages * PAGE
        self.w, self.base = _win32_alloc(backend, self.size)
        self.u8 = _u8_view(self.base, self.size)
        self.u8[::PAGE] = 1                         # populated,
        if self.w.ResetWriteWatch(self.base, self.size):   # and armed
            raise BenchError("ResetWriteWatch failed with error %d" % self.w.GetLastError())
        self.buf = np.zeros(pages, dtype=np.uint64)
        self.rng = np.random.default_rng(seed)
        self.cpus = cpus()
        self.extra = 0
        self.writer_cpus = self.cpu_per_write = None
        self.runs = 0
        self.reported = 0           # pages the timed calls reported
        self._start_writers()

    def _get(self, seen):
        w = self.w
        result, count, _ = w.GetWriteWatch(w.WRITE_WATCH_FLAG_RESET, self.base, self.size,
                                           self.buf, self.pages)
        if result:
            raise BenchError("%s: GetWriteWatch failed with error %d"
                             % (self.backend, w.GetLastError()))
        seen[(self.buf[:count] - np.uint64(self.base)) // np.uint64(PAGE)] = True
        return count

    def _start_writers(self):
        """The writer threads, made once: a run wakes them (starting a
        Python thread costs milliseconds on a busy machine, not part of
        the pattern)."""
        self._cond = threading.Condition()
        self._generation = 0
        self._stopping = False
        self._offsets = None
        self._ends = [0] * self.threads
        self._cpu = [0] * self.threads
        self._failures = []
        self._workers = [threading.Thread(target=self._writer, args=(i,), daemon=True,
                                          name="ww-wine-writer-%d" % i)
                         for i in range(self.threads)]
        for t in self._workers:
            t.start()

    def _writer(self, i):
        seen = 0
        u8 = self.u8
        while True:
            with self._cond:
                while self._generation == seen and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                seen = self._generation
                mine, value = self._offsets[i], self._value
            c0 = time.thread_time_ns()
            try:
                u8[mine] = value            # all of this thread's writes, GIL released
            except BaseException as e:      # reported by run(), never a hang
                self._failures.append(e)
            self._cpu[i] = time.thread_time_ns() - c0
            self._ends[i] = time.perf_counter_ns()

    def run(self):
        """One run: (wall ns, [ns of each GetWriteWatch made while writers ran])."""
        chosen = self.rng.integers(0, self.pages, size=(self.threads, self.writes))
        written = np.zeros(self.pages, dtype=bool)
        written[chosen.ravel()] = True
        seen = np.zeros(self.pages, dtype=bool)
        ends = self._ends
        calls = []
        self.runs += 1
        with self._cond:
            self._offsets = write_offsets(chosen)
            self._value = (self.runs & 0x7F) | 1
            for i in range(self.threads):
                ends[i] = 0
            p0 = time.process_time_ns()
            t0 = time.perf_counter_ns()
            self._generation += 1
            self._cond.notify_all()
        while True:
            time.sleep(self.delay)
            if 0 not in ends:
                break
            c0 = time.perf_counter_ns()
            n = self._get(seen)
            calls.append(time.perf_counter_ns() - c0)
            self.reported += n
        if self._failures:
            raise BenchError("%s: a writer thread failed: %r"
                             % (self.backend, self._failures[0]))
        wall = max(ends) - t0
        self.cpu_per_write = (time.process_time_ns() - p0) / (self.threads * self.writes)
        self.writer_cpus = sum(self._cpu) / wall if wall > 0 else None
        self._get(seen)                                 # the rest
        if (written & ~seen).any():
            raise BenchError("%s: page %d written, never reported by GetWriteWatch"
                             % (self.backend, int(np.flatnonzero(written & ~seen)[0])))
        self.extra = max(self.extra, int((seen & ~written).sum()))
        return wall, calls

    def per_write(self, wall):
        return wall * min(self.threads, self.cpus) / (self.threads * self.writes)

    def close(self):
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._workers:
            t.join()
        self.u8 = None
        self.w.VirtualFree(self.base, 0, self.w.MEM_RELEASE)


class GCPattern:
    """The .NET GC's use of write watch on a `size` heap with `written`
    random pages written: GetWriteWatch without reset, at most `batch`
    addresses per call, each call resuming after the last address the
    previous one returned, then one ResetWriteWatch of the whole heap.  The
    writes (the program's, before a GC) are outside the timed round; rounds
    cycle through SETS page sets, so the heap's memory stays small."""

    SETS = 4

    def __init__(self, backend, size, written, batch=256, seed=0x6c):
        self.backend, self.size, self.k, self.batch = backend, size, written, batch
        self.w, self.base = _win32_alloc(backend, size)
        self.u8 = _u8_view(self.base, size)
        rng = np.random.default_rng(seed)
        npages = size // PAGE
        self.sets = [np.sort(rng.choice(npages, written, replace=False)) for _ in range(self.SETS)]
        self.offsets = [write_offsets(s) for s in self.sets]
        self.answers = [np.uint64(self.base) + s.astype(np.uint64) * np.uint64(PAGE)
                        for s in self.sets]
        self.out = np.zeros(npages + batch, dtype=np.uint64)
        self.rounds = 0
        self.calls = 0
        self.extra = 0

    def prepare(self):
        """The program's writes before a GC (not timed)."""
        self.u8[self.offsets[self.rounds % self.SETS]] = (self.rounds & 0x7F) | 1

    def round(self):
        """The GC's calls (timed).  Returns the addresses reported."""
        w, out, batch = self.w, self.out, self.batch
        pos, end, got, calls = self.base, self.base + self.size, 0, 0
        while True:
            result, n, _ = w.GetWriteWatch(0, pos, end - pos, out[got:got + batch], batch)
            if result:
                raise BenchError("%s: GetWriteWatch failed with error %d"
                                 % (self.backend, w.GetLastError()))
            calls += 1
            got += n
            if n < batch or got + batch > len(out):
                break
            pos = int(out[got - 1]) + PAGE
        if w.ResetWriteWatch(self.base, self.size):
            raise BenchError("%s: ResetWriteWatch failed with error %d"
                             % (self.backend, w.GetLastError()))
        self.calls = calls
        self.rounds += 1
        return out[:got]

    def check(self, got):
        expected = self.answers[(self.rounds - 1) % self.SETS]
        self.extra = max(self.extra, verify(self.backend, expected, got))

    def close(self):
        self.u8 = None
        self.w.VirtualFree(self.base, 0, self.w.MEM_RELEASE)


# The reservation's steps, in order, as they appear in records and tables.
RESERVATION_STEPS = ("plain_reserve", "reserve", "commit", "get_all", "get_committed",
                     "release")


def memory_headroom():
    """(bytes this process may still take, where the figure comes from):
    MemAvailable, or the memory cgroup's limit minus its usage if smaller
    (cgroup v2 or v1)."""
    best, source = None, None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    best, source = int(line.split()[1]) * KiB, "MemAvailable"
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":          # v2
            d = "/sys/fs/cgroup" + parts[2]
            files = ("memory.max", "memory.current")
        elif "memory" in parts[1].split(","):           # v1
            d = "/sys/fs/cgroup/memory" + parts[2]
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        try:
            with open(os.path.join(d, files[0])) as f:
                limit = f.read().strip()
            with open(os.path.join(d, files[1])) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 1 << 60:
            continue
        room = int(limit) - usage
        if best is None or room < best:
            best, source = room, "the memory cgroup's limit minus its usage"
    return best, source


def reservation_memory(size, committed):
    """What a reservation may cost at worst: page tables for all of it
    (about 2 MiB per GiB: a backend that arms a reservation whole), plus
    the committed part's written pages and a margin."""
    return (size + committed) // GiB * 2 * MiB + 2 * MiB + 64 * MiB


def reservation_steps(backend, size, committed, written, budget, reps):
    """The reservation pattern, in this process, on the win32 layer:
    VirtualAlloc(MEM_RESERVE|MEM_WRITE_WATCH) of `size`, MEM_COMMIT of its
    first `committed` bytes, `written` random pages of them written,
    GetWriteWatch (no reset) over the whole reservation and over the
    committed part alone (`reps` calls each), MEM_RELEASE -- and, to compare
    with, the same reservation without MEM_WRITE_WATCH (a plain mmap).
    Repeats the cycle until `budget` seconds have passed (at least once).
    Returns {step: {"times": [ns...], "pte_bytes": ...}}: page tables held
    after the step, counted from before the reservation."""
    from writewatch import win32 as w
    steps = {s: {"times": [], "pte_bytes": None} for s in RESERVATION_STEPS}
    npages = committed // PAGE
    buf = np.zeros(max(npages, 1), dtype=np.uint64)
    rng = np.random.default_rng(0x7e5)
    deadline = time.perf_counter() + budget
    cycle = 0

    def timed(step, fn, *args):
        pte0 = base_pte
        t0 = time.perf_counter_ns()
        value = fn(*args)
        steps[step]["times"].append(time.perf_counter_ns() - t0)
        now = vmpte()
        steps[step]["pte_bytes"] = None if now is None or pte0 is None else now - pte0
        return value

    while cycle == 0 or time.perf_counter() < deadline:
        base_pte = vmpte()
        plain = timed("plain_reserve", w.VirtualAlloc, 0, size, w.MEM_RESERVE, w.PAGE_READWRITE)
        if not plain:
            raise BenchError("VirtualAlloc(%s, MEM_RESERVE) failed with error %d"
                             % (fmt_size(size), w.GetLastError()))
        w.VirtualFree(plain, 0, w.MEM_RELEASE)
        base_pte = vmpte()
        base = timed("reserve", w.VirtualAlloc, 0, size,
                     w.MEM_RESERVE | w.MEM_WRITE_WATCH, w.PAGE_READWRITE)
        if not base:
            raise BenchError("%s: VirtualAlloc(%s, MEM_RESERVE|MEM_WRITE_WATCH) failed with "
                             "error %d" % (backend, fmt_size(size), w.GetLastError()))
        try:
            if timed("commit", w.VirtualAlloc, base, committed, w.MEM_COMMIT,
                     w.PAGE_READWRITE) != base:
                raise BenchError("%s: VirtualAlloc(MEM_COMMIT, %s) failed with error %d"
                                 % (backend, fmt_size(committed), w.GetLastError()))
            pages = np.sort(rng.choice(npages, written, replace=False))
            _u8_view(base, committed)[write_offsets(pages)] = 1
            expected = np.uint64(base) + pages.astype(np.uint64) * np.uint64(PAGE)
            # The two gets take turns, so that neither is always the first
            # after the writes (a cold page-table walk) or the later one.
            for rep in range(2 * reps):
                step, length = (("get_all", size), ("get_committed", committed))[
                    (rep + cycle) % 2]
                result, count, _ = timed(step, w.GetWriteWatch, 0, base, length, buf,
                                         len(buf))
                if result:
                    raise BenchError("%s: GetWriteWatch over %s failed with error %d"
                                     % (backend, fmt_size(length), w.GetLastError()))
                verify(backend, expected, buf[:count])
        finally:
            timed("release", w.VirtualFree, base, 0, w.MEM_RELEASE)
        cycle += 1
    return steps


def _reservation_main(argv):
    """Child process entry: python -m writewatch._bench.workloads reservation ..."""
    backend, size, committed, written, budget, reps = argv
    os.environ["WRITEWATCH_BACKEND"] = backend
    try:
        out = {"steps": reservation_steps(backend, int(size), int(committed), int(written),
                                          float(budget), int(reps))}
    except (BenchError, OSError, MemoryError) as e:
        out = {"error": "%s: %s" % (type(e).__name__, e)}
    json.dump(out, sys.stdout)
    return 0


def run_reservation(backend, size, committed, written, budget, reps, timeout=600):
    """reservation_steps() in a child process (a reservation armed whole
    can hold hundreds of MiB of page tables; a child gives them back for
    sure, and its VmPTE starts clean).  Skipped, with the reason, when the
    worst case does not fit in the memory this process can get."""
    need = reservation_memory(size, committed)
    room, source = memory_headroom()
    if room is not None and room < 2 * need:
        raise BenchSkip("a %s reservation may need up to %s (page tables if armed whole); "
                        "%s is %s" % (fmt_size(size), fmt_bytes(need), source, fmt_bytes(room)))
    import writewatch
    root = os.path.dirname(os.path.dirname(os.path.abspath(writewatch.__file__)))
    env = dict(os.environ, WRITEWATCH_BACKEND=backend)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "writewatch._bench.workloads", "reservation", backend,
           str(size), str(committed), str(written), repr(budget), str(reps)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise BenchError("%s: reservation child did not finish in %d s" % (backend, timeout))
    try:
        out = json.loads(p.stdout)
    except ValueError:
        raise BenchError("%s: reservation child exited with status %d: %s"
                         % (backend, p.returncode, (p.stderr.strip().splitlines() or [""])[-1]))
    if "error" in out:
        raise BenchError(out["error"])
    return out["steps"]


class ManyRegions:
    """`count` Regions of `size` bytes, one random page written in each
    (not timed), then a get-and-reset of all of them: one
    ``get_write_watch(reset=True)`` per region (each()) or one
    ``writewatch.get_write_watch_many(regions, reset=True)`` (many()).
    Making and closing the regions is timed too, once."""

    def __init__(self, backend, count, size, seed=0x4e6):
        import writewatch
        self.backend, self.count, self.size = backend, count, size
        self.regions = []
        fds0 = open_descriptors()
        t0 = time.perf_counter_ns()
        try:
            for i in range(count):
                self.regions.append(writewatch.Region(size, backend=backend))
        except (OSError, MemoryError, writewatch.WriteWatchError) as e:
            made = len(self.regions)
            self._close_all()
            raise BenchError("%s: Region %d of %d failed: %s: %s"
                             % (backend, made + 1, count, type(e).__name__, e))
        self.create_ns = (time.perf_counter_ns() - t0) / count
        fds1 = open_descriptors()
        self.descriptors = None if fds0 is None or fds1 is None else fds1 - fds0
        self.close_ns = None
        self.views = [memoryview(r) for r in self.regions]
        self.bases = np.array([r.address for r in self.regions], dtype=np.uint64)
        self.rng = np.random.default_rng(seed)
        self.npages = self.regions[0].size // PAGE
        self.expected = None
        self.extra = 0
        self.value = 1

    def prepare(self):
        """One random page written in each region (not timed)."""
        pages = self.rng.integers(0, self.npages, self.count)
        offsets = write_offsets(pages).tolist()
        self.value = (self.value + 1) & 0x7F or 1
        v = self.value
        for view, off in zip(self.views, offsets):
            view[off] = v
        self.expected = self.bases + pages.astype(np.uint64) * np.uint64(PAGE)

    def each(self):
        return [r.get_write_watch(reset=True) for r in self.regions]

    def many(self):
        import writewatch
        return writewatch.get_write_watch_many(self.regions, reset=True)

    def check(self, got):
        """Each region reported its page (a superset is noted, not failed)."""
        if len(got) != self.count:
            raise BenchError("%s: %d results for %d regions" % (self.backend, len(got), self.count))
        if all(len(a) == 1 for a in got) and np.array_equal(
                np.concatenate(got).astype(np.uint64), self.expected):
            return
        for i, a in enumerate(got):
            self.extra = max(self.extra, verify(self.backend, self.expected[i:i + 1],
                                                np.asarray(a, dtype=np.uint64)))

    def _close_all(self):
        for r in self.regions:
            r.close()
        self.regions = []

    def close(self):
        for v in getattr(self, "views", ()):
            v.release()
        self.views = []
        t0 = time.perf_counter_ns()
        n = len(self.regions)
        self._close_all()
        if n:
            self.close_ns = (time.perf_counter_ns() - t0) / n


def many_unavailable():
    """None if writewatch.get_write_watch_many exists, else why not."""
    import writewatch
    if hasattr(writewatch, "get_write_watch_many"):
        return None
    return ("writewatch.get_write_watch_many is not in this version of writewatch "
            "(writewatch %s)" % writewatch.__version__)


# ---------------------------------------------------------------------------
# Snapshots and DeltaLog (issue 12).  Their twins in the C floor (snap:,
# copy: and append: in kernel/floor/floor.c) do the same steps on the kernel
# directly and write the same bytes (write_offsets).

def _populate(mem):
    """Every page written once (1 at write_offsets()), then reset: all
    pages present, nothing written.  Returns the tracked byte of every page."""
    mem.u8[write_offsets(np.arange(mem.npages))] = 1
    mem.region.reset_write_watch()
    return np.ones(mem.npages, dtype=np.uint8)


class SnapshotFrames:
    """writewatch.Snapshots on issue 12's workload: a `size` region, every
    page written once before the Snapshots is made (which copies them, once,
    not timed), then `k` distinct random pages written per frame (not timed:
    one byte each at write_offsets(), a value that changes every frame).

    Timed: save() in the ring's steady state (after keep + 1 saves, so that
    each save folds the oldest snapshot into the base); restore() of the
    oldest snapshot kept -- keep - 1 frames back -- with `k` pages written
    since the last save (then keep - 1 saves, not timed, fill the ring
    again); and np.copyto of the whole region into an array faulted in
    before, what save() is compared with.

    Every answer is checked: a save copied exactly the pages written since
    the save or restore before it (Snapshots._pages); after a restore every
    page holds the byte it held when the snapshot restored was saved."""

    def __init__(self, backend, size, k, keep=8, seed=0x5a4e):
        self.mem = Memory(size, backend)
        self.k, self.keep = k, keep
        self.rng = np.random.default_rng(seed)
        self.offsets = write_offsets(np.arange(self.mem.npages))
        self.cur = _populate(self.mem)
        self.value = 1
        self.written = np.empty(0, dtype=np.intp)   # since the last save or restore
        self.states = {}                            # sid -> self.cur at its save
        self.target = None
        self.restored = []                          # pages each restore rewrote
        self.snaps = writewatch.Snapshots(self.mem.region, keep=keep)

    def write(self):
        """A frame's writes (not timed)."""
        pages = np.sort(self.rng.choice(self.mem.npages, self.k, replace=False))
        self.value = self.value + 1 if self.value < 255 else 2
        self.mem.u8[self.offsets[pages]] = self.value
        self.cur[pages] = self.value
        self.written = np.union1d(self.written, pages)

    def save(self):
        return self.snaps.save()

    def check_save(self, sid):
        got = np.asarray(self.snaps._pages(sid), dtype=np.intp)
        if not np.array_equal(got, self.written):
            raise BenchError("%s: save() copied %d pages, %d were written%s"
                             % (self.mem.region.backend, len(got), len(self.written),
                                "" if len(got) != len(self.written) else " (not the same)"))
        self.states[sid] = self.cur.copy()
        first = sid - len(self.snaps.ids) + 1
        for old in [i for i in self.states if i < first]:
            del self.states[old]
        self.written = self.written[:0]

    def frame(self):
        """A frame, not timed: writes, save, check."""
        self.write()
        self.check_save(self.save())

    def prepare_restore(self):
        """Before a restore (not timed): the ring full, k pages written.
        Returns how many pages the restore must rewrite."""
        while len(self.snaps.ids) < self.keep:
            self.frame()
        self.write()
        ids = self.snaps.ids
        self.target = ids[0]
        changed = [self.written] + [np.asarray(self.snaps._pages(i), dtype=np.intp)
                                    for i in ids[1:]]
        n = len(np.unique(np.concatenate(changed)))
        self.restored.append(n)
        return n

    def restore(self):
        return self.snaps.restore(self.target)

    def check_restore(self, got=None):
        """After restore() (`got`: its result, None; as the floor's)."""
        want = self.states[self.target]
        got = self.mem.u8[self.offsets]
        if not np.array_equal(got, want):
            p = int(np.flatnonzero(got != want)[0])
            raise BenchError("%s: after restore(%d) page %d holds %d, %d when it was saved"
                             % (self.mem.region.backend, self.target, p, got[p], want[p]))
        self.cur[:] = want
        self.written = self.written[:0]
        for later in [i for i in self.states if i > self.target]:
            del self.states[later]

    def measure_save(self, budget, min_reps):
        for _ in range(self.keep + 1):
            self.frame()

        def step():
            self.write()
            t0 = time.perf_counter_ns()
            sid = self.save()
            t1 = time.perf_counter_ns()
            self.check_save(sid)
            return t1 - t0
        return _repeat(step, budget, min_reps)

    def measure_restore(self, budget, min_reps):
        self.restored = []

        def step():
            self.prepare_restore()
            t0 = time.perf_counter_ns()
            self.restore()
            t1 = time.perf_counter_ns()
            self.check_restore()
            return t1 - t0
        times = _repeat(step, budget, min_reps)
        while len(self.snaps.ids) < self.keep:       # the ring full again
            self.frame()
        return times

    def measure_copy(self, budget, min_reps):
        src = self.mem.u8
        dst = np.empty_like(src)
        np.copyto(dst, src)                          # faulted in, not timed

        def step():
            t0 = time.perf_counter_ns()
            np.copyto(dst, src)
            return time.perf_counter_ns() - t0
        times = _repeat(step, budget, min_reps)
        if not np.array_equal(dst[self.offsets], self.cur):
            raise BenchError("np.copyto: the copy differs from the region")
        return times

    def close(self):
        self.snaps.close()
        self.mem.close()


class LogAppend:
    """writewatch.DeltaLog.append() on issue 12's workload: a `size` region,
    every page written once, logged to a file in `directory` (the C floor
    writes its file there too: the same filesystem).  The first append --
    every non-zero page, here the whole region -- is made when the workload
    is set up, not timed.  Timed: append() (with its fdatasync) after `k`
    random pages were written.  Checked: each record holds exactly the pages
    written (its page indexes, read back from the file) and makes the file
    grow by a record's size.  The file stays in `directory` for its owner to
    remove after the measuring: freeing its blocks (a discard, on a
    filesystem mounted with `discard`) must not land in the next
    measurement."""

    def __init__(self, backend, size, k, directory, seed=0xa99e):
        from writewatch._deltalog import RECORD_SIZE
        self.head = RECORD_SIZE
        self.mem = Memory(size, backend)
        self.k = k
        self.rng = np.random.default_rng(seed)
        self.offsets = write_offsets(np.arange(self.mem.npages))
        self.value = 1
        self.pages = None
        self.log = self.rfd = None
        _populate(self.mem)
        self.path = os.path.join(directory, "bench-%s-%d.wwlog" % (backend, os.getpid()))
        try:
            self.log = writewatch.DeltaLog(self.path, self.mem.region)
            self.log.append()                        # the whole region, not timed
            self.rfd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            self.end = os.fstat(self.rfd).st_size
        except BaseException:
            self.close()
            raise

    def write(self):
        """A frame's writes (not timed)."""
        self.pages = np.sort(self.rng.choice(self.mem.npages, self.k, replace=False))
        self.value = self.value + 1 if self.value < 255 else 2
        self.mem.u8[self.offsets[self.pages]] = self.value

    def append(self):
        return self.log.append()

    def check(self, number):
        size = os.fstat(self.rfd).st_size
        want = self.head + self.k * (8 + PAGE)
        if size - self.end != want:
            raise BenchError("%s: record %d took %d bytes of the log, %d pages take %d"
                             % (self.mem.region.backend, number, size - self.end, self.k, want))
        idx = np.frombuffer(os.pread(self.rfd, 8 * self.k, self.end + self.head), dtype="<u8")
        if not np.array_equal(idx, self.pages):
            raise BenchError("%s: record %d holds other pages than the %d written"
                             % (self.mem.region.backend, number, self.k))
        self.end = size

    def measure(self, budget, min_reps):
        def step():
            self.write()
            t0 = time.perf_counter_ns()
            number = self.append()
            t1 = time.perf_counter_ns()
            self.check(number)
            return t1 - t0
        return _repeat(step, budget, min_reps)

    def close(self):
        if self.log is not None:
            self.log.close()
        if self.rfd is not None:
            os.close(self.rfd)
            self.rfd = None
        self.mem.close()


def filesystem_of(path):
    """(filesystem type, device) of the mount holding `path`, from
    /proc/self/mountinfo; (None, None) if it cannot be told."""
    path = os.path.realpath(path)
    best, found = -1, (None, None)
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 2:
            continue
        mount = fields[4].replace("\\040", " ")
        inside = path == mount or path.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > best:
            best, found = len(mount), (tail[0], tail[1])
    return found


if __name__ == "__main__":
    if sys.argv[1:2] == ["reservation"]:
        sys.exit(_reservation_main(sys.argv[2:]))
    sys.exit("usage: python -m writewatch._bench.workloads reservation BACKEND SIZE "
             "COMMITTED WRITTEN BUDGET REPS")
