"""Bad input, systematically (tests/_fuzz_child.py, in a subprocess so a
crash is a failure, not a dead test runner), and the findings kept as
regression tests."""

import json
import os

import pytest

import writewatch
from helpers import TESTS, run_python

CHILD = os.path.join(TESTS, "_fuzz_child.py")
# Examples per fuzzed function: small in CI, WRITEWATCH_HYPOTHESIS=long for more.
EXAMPLES = "2000" if os.environ.get("WRITEWATCH_HYPOTHESIS") == "long" else "60"

REGION_FUZZERS = ["fuzz_region_new", "fuzz_get", "fuzz_reset", "fuzz_close_and_closed",
                  "fuzz_module_functions"]
WIN32_FUZZERS = ["fuzz_virtual_alloc", "fuzz_virtual_free", "fuzz_virtual_release",
                 "fuzz_virtual_protect", "fuzz_virtual_query", "fuzz_get_write_watch",
                 "fuzz_reset_write_watch"]


def run_fuzz(names):
    p = run_python(script=CHILD, argv=names, env={"FUZZ_EXAMPLES": EXAMPLES}, timeout=600)
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    print(json.dumps({"fuzzers": names, "calls": summary["calls"]}))
    log = os.environ.get("WRITEWATCH_RELIABILITY_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"test": "fuzz", "fuzzers": names, "examples": EXAMPLES,
                                "calls": summary["calls"],
                                "outcomes": summary["outcomes"]}) + "\n")
    return summary


def test_fuzz_region_api():
    s = run_fuzz(REGION_FUZZERS)
    outcomes = s["outcomes"]
    # The fuzz reached both sides: accepted calls and refused ones.
    assert outcomes.get("get_write_watch: ok", 0) > 0
    assert outcomes.get("get_write_watch: TypeError", 0) > 0
    assert outcomes.get("get_write_watch: ValueError", 0) > 0
    assert outcomes.get("Region(): ok", 0) > 0


def test_fuzz_win32_api():
    pytest.importorskip("writewatch.win32")
    s = run_fuzz(WIN32_FUZZERS)
    outcomes = s["outcomes"]
    assert any(k.startswith("VirtualAlloc: ok") for k in outcomes)
    assert any(k.startswith("GetWriteWatch: error") for k in outcomes)


# -- regressions found by the fuzz ----------------------------------------------------

@pytest.mark.parametrize("name", ["\0force:", "\0force:nope", "\0force:PAGEMAP"])
def test_internal_force_prefix_with_unknown_name_is_a_value_error(name):
    # Was a KeyError from the registry's table.
    with pytest.raises(ValueError, match="unknown backend"):
        writewatch.Region(writewatch.PAGE_SIZE, backend=name)
