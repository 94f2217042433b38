"""Bad input, systematically (tests/_fuzz_child.py, in a subprocess so a
crash is a failure, not a dead test runner), and the findings kept as
regression tests."""

import json
import os

import pytest

import writewatch
from helpers import PAGE, TESTS, run_python

CHILD = os.path.join(TESTS, "_fuzz_child.py")
# Examples per fuzzed function: small in CI, WRITEWATCH_HYPOTHESIS=long for more.
EXAMPLES = "2000" if os.environ.get("WRITEWATCH_HYPOTHESIS") == "long" else "60"

REGION_FUZZERS = ["fuzz_region_new", "fuzz_get", "fuzz_reset", "fuzz_close_and_closed",
                  "fuzz_module_functions", "sweep_many", "fuzz_many"]
# sweep_*: every entry of the child's tables once, so that the assertions
# below do not depend on what the fuzz happened to draw.
SNAPSHOT_FUZZERS = ["sweep_snapshots", "fuzz_snapshots_calls", "fuzz_snapshots_new",
                    "sweep_deltalog", "fuzz_deltalog", "fuzz_replay"]
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
    assert outcomes.get("get_write_watch_many: ok", 0) > 0
    assert outcomes.get("get_write_watch_many: TypeError", 0) > 0
    assert outcomes.get("get_write_watch_many: ValueError", 0) > 0


def test_fuzz_snapshots_api():
    s = run_fuzz(SNAPSHOT_FUZZERS)
    outcomes = s["outcomes"]
    for key in ("Snapshots(): ok", "Snapshots(): TypeError", "Snapshots.save(): ok",
                "Snapshots.restore(): ok", "Snapshots.restore(): KeyError",
                "Snapshots.restore(): TypeError", "Snapshots closed save: ValueError",
                "DeltaLog(): ok", "DeltaLog(): TypeError", "DeltaLog(): CorruptLogError",
                "DeltaLog(): BlockingIOError", "DeltaLog.append(sync=...): ok",
                "DeltaLog.replay(): ok", "DeltaLog.replay(): TypeError",
                "DeltaLog.replay(): ValueError", "DeltaLog.replay(): CorruptLogError",
                "DeltaLog.replay(): FileNotFoundError"):
        assert outcomes.get(key, 0) > 0, key


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


KINDS_OF_OBJECT_BUFFERS = {
    "numpy object array": "np.full(n // 8, None, dtype=object)",
    "ctypes py_object array": "(ctypes.py_object * (n // 8))()",
    "numpy structure with an object field": "np.zeros(n // 16, dtype=[('a', 'O'), ('b', '<u8')])",
}


@pytest.mark.parametrize("kind", sorted(KINDS_OF_OBJECT_BUFFERS))
def test_replay_refuses_buffers_of_python_objects(kind, tmp_path):
    # Was a segfault: the replay wrote the log's bytes over the object
    # pointers.  In a child: a regression must fail the test, not the runner.
    p = run_python("""
        import ctypes, os, sys
        import numpy as np
        import writewatch
        n = 2 * writewatch.PAGE_SIZE
        r = writewatch.Region(n)
        memoryview(r)[5] = 7
        path = os.path.join(sys.argv[1], "a.log")
        with writewatch.DeltaLog(path, r) as log:
            log.append()
        into = %s
        try:
            writewatch.DeltaLog.replay(path, into)
        except TypeError as e:
            assert "Python objects" in str(e), e
        else:
            raise AssertionError("replayed into a buffer of object pointers")
        assert all(x is None or x == 0 for x in (into["a"] if into.dtype.names else into)
                   ) if isinstance(into, np.ndarray) else True
        del into
        print("refused")
        """ % KINDS_OF_OBJECT_BUFFERS[kind], argv=[str(tmp_path)])
    assert "refused" in p.stdout


@pytest.mark.parametrize("new", [True, False], ids=["new", "existing"])
def test_deltalog_takes_bytes_paths(new, tmp_path):
    # Was a TypeError ("can't concat str to bytes") for a new file, and a
    # `path` of bytes for an existing one.
    path = os.fsencode(tmp_path / "a.log")
    with writewatch.Region(2 * PAGE) as r:
        if not new:
            writewatch.DeltaLog(os.fsdecode(path), r).close()
        memoryview(r)[PAGE] = 3
        with writewatch.DeltaLog(path, r) as log:
            assert log.path == os.fsdecode(path)
            assert log.append() == 0
    out = bytearray(2 * PAGE)
    assert writewatch.DeltaLog.replay(path, out) == 0
    assert out[PAGE] == 3 and out.count(0) == len(out) - 1


def test_refused_replay_keeps_no_view_of_into(tmp_path):
    # A replay refused because the log could not be opened kept its view of
    # `into` alive in the traceback: the caller could not resize the buffer,
    # or close the Region it was a view of, while handling the error.
    missing = tmp_path / "missing.log"
    buf = bytearray(PAGE)
    with pytest.raises(FileNotFoundError):
        try:
            writewatch.DeltaLog.replay(missing, buf)
        except FileNotFoundError:
            buf.append(0)                 # BufferError while a view of it exists
            raise
    r = writewatch.Region(PAGE)
    m = memoryview(r)
    with pytest.raises(FileNotFoundError):
        try:
            writewatch.DeltaLog.replay(missing, m)
        except FileNotFoundError:
            m.release()
            r.close()                     # BufferError while a view of it exists
            raise
    assert r.closed
    # Refused for `into` itself (read-only here): no view either.
    r = writewatch.Region(PAGE)
    m = memoryview(r)
    ro = m.toreadonly()
    with pytest.raises(TypeError):
        try:
            writewatch.DeltaLog.replay(missing, ro)
        except TypeError:
            ro.release()
            m.release()
            r.close()
            raise
    assert r.closed


def test_deltalog_empty_path(tmp_path, monkeypatch):
    # "" went down the path that makes a new file, in the parent directory
    # of the cwd, and failed naming a temporary file there.
    monkeypatch.chdir(tmp_path)
    with writewatch.Region(PAGE) as r:
        with pytest.raises(FileNotFoundError) as e:
            writewatch.DeltaLog("", r)
    assert e.value.filename == ""
