"""`writewatch bench`: every available backend and the raw-C floor on the
same workloads, in one run, with a table, targets, JSON and a plot.

The parts, by concern:

- ``workloads``: each workload's set-up, timed call and check, through the
  library (shared with the pytest-benchmark suite in bench/);
- ``floor``: the C floor (kernel/floor/floor.c) as a program and as a
  ctypes library;
- ``runner``: plans, jobs, passes, the result document;
- ``report``: targets, tables, the plot;
- ``cli``: the command's options and exit status.

This module only gathers the names the command line, bench/ and the tests
use.
"""

from writewatch._bench.cli import add_arguments, run
from writewatch._bench.floor import floor_path, run_floor
from writewatch._bench.report import (
    FLOOR_TECH, PLOT_HINT, evaluate_targets, find, plot, print_report, technique_bound)
from writewatch._bench.runner import (
    PLANS, STATISTIC, Plan, Progress, _best_of_passes, collect, jobs, machine_info)
from writewatch._bench.units import (
    GiB, KiB, MiB, PAGE, fmt_bytes, fmt_fraction, fmt_ns, fmt_size, fmt_spread)
from writewatch._bench.workloads import (
    BenchError, BenchSkip, CleanScan, FirstWrite, FrameLoop, GCPattern, LimitCall, LogAppend,
    ManyRegions, Memory, SnapshotFrames, Sparse, Win32Call, WinePattern, filesystem_of,
    many_unavailable, reservation_steps, verify, win32_unavailable, write_offsets,
    written_pages)

__all__ = [
    "add_arguments", "run", "floor_path", "run_floor", "FLOOR_TECH", "PLOT_HINT",
    "evaluate_targets", "find", "plot", "print_report", "technique_bound", "PLANS",
    "STATISTIC", "Plan", "Progress", "_best_of_passes", "collect", "jobs", "machine_info",
    "GiB", "KiB", "MiB", "PAGE", "fmt_bytes", "fmt_fraction", "fmt_ns", "fmt_size",
    "fmt_spread", "BenchError", "BenchSkip", "CleanScan", "FirstWrite", "FrameLoop",
    "GCPattern", "LimitCall", "LogAppend", "ManyRegions", "Memory", "SnapshotFrames", "Sparse",
    "Win32Call", "WinePattern", "filesystem_of", "many_unavailable", "reservation_steps",
    "verify", "win32_unavailable", "write_offsets", "written_pages",
]
