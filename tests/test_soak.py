"""The soak, short: writer threads and a get-and-reset loop on every
available backend, no lost write, nothing reported unwritten, no fd leak.
And the soak's checker itself must catch a falsified result."""

import json

import pytest

import writewatch
from helpers import output, run_python


def soak(*args, returncode=0, timeout=120):
    return run_python(module="writewatch.soak", argv=args, returncode=returncode,
                      timeout=timeout)


def test_short_soak_every_backend():
    p = soak("--seconds", "3", "--json")
    rep = json.loads(p.stdout)
    assert rep["ok"] and rep["violations"] == 0 and rep["errors"] == 0
    names = [s["backend"] for s in rep["lanes"]]
    assert names == [b.name for b in writewatch.backends() if b.available]
    for lane in rep["lanes"]:
        assert lane["writes"] > 0, lane
        assert lane["kernel_writes"] > 0 or not lane["kernel_writes_supported"], lane
        assert lane["gets"] > 0 and lane["pages_reported"] > 0, lane
    assert rep["end"]["fds"] == rep["start"]["fds"]


@pytest.mark.parametrize("kind", ["drop", "extra"])
def test_soak_checker_catches_a_falsified_result(kind):
    p = soak("--seconds", "2", "--backend", writewatch.default_backend(),
             "--self-test", kind, returncode=1)
    assert "VIOLATION" in p.stdout and "RESULT: FAILED" in p.stdout, output(p)


def test_soak_rejects_bad_arguments():
    p = soak("--seconds", "0", returncode=2)
    assert "must be positive" in p.stderr, output(p)
