"""`writewatch bench`: its options and what it does with them.

Exit status: 0 when every workload ran and answered right (and, with
--check, every target measured was met); 1 when a workload failed or got a
wrong answer; 2 for bad usage; 3 with --check when a target was missed.
"""

import argparse
import json
import os
import sys

from writewatch._bench.report import PLOT_HINT, plot, print_report
from writewatch._bench.runner import PLANS, Progress, collect

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MISSED = 0, 1, 2, 3


def add_arguments(parser):
    parser.description = (
        "Run every available backend and the raw-C floor on the same workloads "
        "(frame loop, first write, clean scan, max_count, sparse, win32; the "
        "scale patterns: Wine's microbenchmark, the .NET GC's pattern, a large "
        "reservation, many regions; Snapshots' save and restore and DeltaLog's "
        "append) and print a table with ratios and the project's targets.")
    parser.epilog = ("Exit status: 0 all ran; 1 a workload failed or answered wrongly; "
                     "2 bad usage; 3 (--check) a target was missed.")
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
    parser.add_argument("--check", action="store_true",
                        help="exit with status 3 when a target is missed (for CI)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress on stderr")


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
            return EXIT_USAGE
    plan = PLANS[mode]
    try:
        doc = collect(plan, backends=getattr(args, "backend", None),
                      with_floor=not getattr(args, "no_floor", False),
                      progress=_progress(plan, args))
    except ValueError as e:
        sys.stderr.write("writewatch bench: %s\n" % e)
        return EXIT_USAGE
    if getattr(args, "json", False):
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print_report(doc)
    if plot_path:
        plot(doc, plot_path)
        if not getattr(args, "json", False):
            sys.stdout.write("\nplot written to %s\n" % plot_path)
    if doc["errors"]:
        return EXIT_FAILED
    missed = [t for t in doc["targets"] if t["met"] is False]
    if getattr(args, "check", False) and missed:
        sys.stderr.write("writewatch bench: %d target(s) missed: %s\n"
                         % (len(missed), "; ".join(t["target"] for t in missed)))
        return EXIT_MISSED
    return EXIT_OK


def _progress(plan, args):
    """None: collect() makes the default Progress; --quiet: one that prints
    nothing."""
    if getattr(args, "quiet", False):
        return Progress(0, enabled=False)
    return None
