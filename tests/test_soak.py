"""The soak, short: writer threads and a get-and-reset loop on every
available backend, no lost write, nothing reported unwritten, no fd leak.
And the soak's checker itself must catch a falsified result."""

import json
import subprocess
import sys

import pytest

import writewatch


def soak(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "writewatch.soak", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_short_soak_every_backend():
    p = soak("--seconds", "3", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
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
             "--self-test", kind)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "VIOLATION" in p.stdout and "RESULT: FAILED" in p.stdout


def test_soak_rejects_bad_arguments():
    p = soak("--seconds", "0")
    assert p.returncode == 2 and "must be positive" in p.stderr
