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
    # progress on stderr although it is a pipe: the start, at least one
    # interval line naming every backend, the end
    lines = p.stderr.splitlines()
    assert lines[0].startswith("soak: " + ", ".join(names) + " for 3 s"), output(p)
    ticks = [line for line in lines if " of 3 s " in line]
    assert ticks and all(n + " " in line for line in ticks for n in names), output(p)
    assert lines[-1].startswith("soak: writers stopped after "), output(p)


@pytest.mark.parametrize("kind", ["drop", "extra"])
def test_soak_checker_catches_a_falsified_result(kind):
    p = soak("--seconds", "2", "--backend", writewatch.default_backend(),
             "--self-test", kind, returncode=1)
    assert "VIOLATION" in p.stdout and "RESULT: FAILED" in p.stdout, output(p)


def test_soak_rejects_bad_arguments():
    p = soak("--seconds", "0", returncode=2)
    assert "must be positive" in p.stderr, output(p)


def test_soak_unknown_backend_is_one_line_and_status_2():
    p = soak("--seconds", "1", "--backend", "nosuch", returncode=2)
    assert p.stdout == "" and p.stderr.count("\n") == 1, output(p)
    assert "unknown backend 'nosuch'" in p.stderr, output(p)
    assert "known backends: " + ", ".join(writewatch._core.BACKEND_NAMES) in p.stderr


def test_soak_unavailable_backend_is_one_line_and_status_2():
    missing = [b for b in writewatch.backends() if not b.available]
    if not missing:
        pytest.skip("every backend can run here")
    p = soak("--seconds", "1", "--backend", missing[0].name, returncode=2)
    assert p.stdout == "", output(p)
    assert p.stderr == ("python -m writewatch.soak: error: backend %r cannot run here: "
                        "%s\n" % (missing[0].name, missing[0].reason)), output(p)
