"""Concurrent stress per backend (tests/_stress_child.py, in a child process,
so a crash or a hang fails the test): writer threads of three kinds,
get-and-reset, VirtualProtect, decommit/commit and fork at once, on a plain
Region and on a win32 allocation, checked for lost writes and for pages
reported that nobody wrote.  The checks are the soak's two invariants,
extended soundly to decommits (which drop unlatched written state) and to
fork children; the child script's docstring has the argument.

CI runs a few seconds per backend (longer where a slow machine needs it to
reach a minimum of operations of every kind).  For a long run, printing the figures
for the table in docs/reliability.md::

    WRITEWATCH_STRESS_SECONDS=300 python -m pytest -s tests/test_stress.py

With $WRITEWATCH_RELIABILITY_LOG set, each run appends its report there as
one JSON line.
"""

import json
import os

import pytest

import writewatch
from helpers import BACKENDS, TESTS, output, require_backend, run_python

CHILD = os.path.join(TESTS, "_stress_child.py")
SECONDS = float(os.environ.get("WRITEWATCH_STRESS_SECONDS", "3"))


CAP = max(10 * SECONDS, 300)    # the child goes on until enough is done, up to this


def stress(backend, seconds, *args, returncode=0):
    p = run_python(script=CHILD, argv=["--backend", backend, "--seconds", seconds,
                                       "--cap", CAP, "--json"] + list(args),
                   returncode=returncode, timeout=CAP + 120)
    lines = p.stdout.strip().splitlines()
    try:
        rep = json.loads(lines[-1])
    except (IndexError, ValueError):
        pytest.fail("no report from the stress child\n%s" % output(p))
    return p, rep


@pytest.mark.parametrize("backend", BACKENDS)
def test_stress(backend):
    require_backend(backend)
    p, rep = stress(backend, SECONDS)
    print("\n" + "\n".join(p.stdout.strip().splitlines()[:-1]))
    log = os.environ.get("WRITEWATCH_RELIABILITY_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps(dict(rep, test="stress")) + "\n")
    assert rep["ok"] and rep["violations"] == 0 and rep["errors"] == 0, output(p)
    region, win32 = rep["targets"]
    for lane in (region, win32):
        assert lane["writes"] > 0 and lane["gets"] > 0 and lane["pages reported"] > 0, lane
        assert (lane.get("kernel writes", 0) > 0) == ("kernel" in rep["writers"]), lane
        assert lane.get("gets without reset", 0) > 0 and lane.get("resets", 0) > 0, lane
    for what in ("decommits", "commits", "VirtualProtects", "read-only / no-access round trips",
                 "commits over committed pages", "allocations made and released"):
        assert win32.get(what, 0) > 0, (what, win32)
    assert rep["forks"] > 0 and rep["fork_children_ok"] == rep["forks"], rep


@pytest.mark.parametrize("kind", ["drop", "extra", "unlatch"])
def test_stress_checker_catches_a_falsified_result(kind):
    """The checks can fail: a page no longer reported (drop), a page reported
    that was not written (extra), latched pages lost in a decommit (unlatch)
    -- results falsified on purpose on a correct backend."""
    p, rep = stress(writewatch.default_backend(), 2, "--self-test", kind, returncode=1)
    assert "RESULT: FAILED" in p.stdout and "VIOLATION" in p.stdout, output(p)
    region, win32 = rep["targets"]
    if kind == "drop":
        assert region.get("violations: lost write") and win32.get("violations: lost write")
    elif kind == "extra":
        assert region.get("violations: reported, not written") == 1, region
        assert win32.get("violations: reported, not written") == 1, win32
    else:
        assert region["violations"] == 0, region          # no decommits there
        assert win32.get("violations: lost write"), win32
