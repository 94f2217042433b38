"""`writewatch bench` and the C floor: they run, print, parse and plot.

Nothing here asserts a timing: the numbers belong to the machine.  What is
checked is that every piece runs, that its output has the promised shape,
and that the target logic judges ratios correctly.
"""
import io
import json

import numpy as np
import pytest

import writewatch
from writewatch import _bench
from helpers import run_command, run_python

CLI = "import sys; from writewatch._cli import main; sys.exit(main(sys.argv[1:]))"


def run_cli(*args, pre="", env=None, returncode=0, timeout=120):
    return run_python(pre + CLI, argv=args, env=env, returncode=returncode, timeout=timeout)


def available():
    return [b.name for b in writewatch.backends() if b.available]


def test_bench_tiny_prints_table_and_targets():
    p = run_cli("bench", "--tiny")
    out = p.stdout
    assert "writewatch bench (tiny)" in out
    for b in writewatch.backends():
        assert "backend %s" % b.name in out
        if not b.available:
            assert b.reason in out          # a skipped backend says why
    assert "Frame loop" in out and "C floor" in out
    assert "First write after a reset" in out
    assert "Targets" in out
    for t in ("pagemap vs mprotect", "pagemap vs uffd", "pagemap vs C floor",
              "clean get-and-reset 1 GiB", "max_count=16", "win32 GetWriteWatch"):
        assert t in out
    # the frame table has one row per (size, fraction) of the tiny plan
    for size, frac in _bench.PLANS["tiny"].frames():
        assert "%s, %s" % (_bench.fmt_size(size), _bench.fmt_fraction(frac)) in out
    assert p.stderr == ""                   # no progress when not a terminal


def test_bench_tiny_by_environment():
    p = run_cli("bench", "--json", env={"WRITEWATCH_BENCH_TINY": "1"})
    assert json.loads(p.stdout)["mode"] == "tiny"


def test_bench_json():
    p = run_cli("bench", "--tiny", "--json")
    doc = json.loads(p.stdout)
    assert doc["mode"] == "tiny"
    assert [b["name"] for b in doc["backends"]] == ["pagemap", "uffd", "mprotect", "softdirty"]
    assert doc["errors"] == []
    plan = _bench.PLANS["tiny"]
    res = doc["results"]
    for name in available() + ["floor"]:
        frames = [r for r in res if r["backend"] == name and r["workload"] == "frame"]
        assert {(r["size"], r["fraction"]) for r in frames} == set(plan.frames())
        for r in frames:
            assert r["written"] == _bench.written_pages(r["size"], r["fraction"])
            assert r["unit"] == "frame" and r["statistic"] == "median"
        clean = {r["size"] for r in res if r["backend"] == name and r["workload"] == "clean"}
        assert clean == set(plan.clean_sizes)
    assert doc["passes"] == plan.passes
    for r in res:
        assert r["n"] >= 1 and 0 < r["min_ns"] <= r["median_ns"]
        assert r["value_ns"] == r["%s_ns" % r["statistic"]]
        assert len(r["passes"]) == plan.passes and r["value_ns"] == min(r["passes"])
    floor_faults = {r["tech"] for r in res if r["backend"] == "floor" and r["workload"] == "fault"}
    assert {"uffd-sync", "mprotect", "none"} <= floor_faults
    if "pagemap" in available():
        assert "uffd-async" in floor_faults
    assert len(doc["targets"]) == 6
    for t in doc["targets"]:
        assert t["met"] in (True, False, None)
        if t["met"] is None:
            assert t["why"]
    # the table is printed from the same document; a conservative answer
    # shows as a note
    frame = next(r for r in res if r["workload"] == "frame" and r["backend"] != "floor")
    frame["over_reported"] = 7
    text = io.StringIO()
    _bench.print_report(doc, text)
    assert "Notes" in text.getvalue()
    assert "reported up to 7 pages more than the %d written" % frame["written"] in text.getvalue()


def test_bench_unknown_backend_is_an_error():
    p = run_cli("bench", "--tiny", "--backend", "nosuch", returncode=2)
    assert "unknown backend 'nosuch'" in p.stderr


def test_plot_without_matplotlib_gives_the_hint(tmp_path):
    target = tmp_path / "plot.png"
    # sys.modules[name] = None makes `import matplotlib` raise ImportError
    p = run_cli("bench", "--tiny", "--plot", str(target),
                pre="import sys; sys.modules['matplotlib'] = None; ", returncode=2)
    assert "pip install writewatch[plot]" in p.stderr
    assert not target.exists()


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (optional extra 'plot')")
    target = tmp_path / "plot.png"
    run_cli("bench", "--tiny", "--plot", str(target))
    with open(target, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_progress_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    quiet = io.StringIO()
    p = _bench.Progress(2, stream=quiet)
    p.step("one")
    p.finish()
    assert quiet.getvalue() == ""
    loud = Tty()
    p = _bench.Progress(2, stream=loud, delay=0)
    p.step("frame pagemap 1 MiB")
    assert "[1/2" in loud.getvalue() and "frame pagemap 1 MiB" in loud.getvalue()
    p.finish()
    assert loud.getvalue().endswith("\r\033[K")       # the line is cleared
    brief = Tty()
    p = _bench.Progress(2, stream=brief, delay=60)   # a run shorter than the delay
    p.step("one")
    p.finish()
    assert brief.getvalue() == ""


def _doc(values, backends=("pagemap", "uffd", "mprotect"), win32="available"):
    """A synthetic result document: values maps (workload, backend, size) -> ns."""
    results = []
    for (workload, backend, size), v in values.items():
        r = dict(workload=workload, backend=backend, size=size, value_ns=v)
        if workload == "frame":
            r["fraction"] = 0.01
        results.append(r)
    return {"results": results, "floor": "/x/ww-floor", "win32": win32,
            "backends": [dict(name=n, available=n in backends, reason="why-%s" % n)
                         for n in ("pagemap", "uffd", "mprotect", "softdirty")]}


def test_targets_are_judged_from_the_ratios():
    M, G, K = _bench.MiB, _bench.GiB, _bench.KiB
    doc = _doc({("frame", "pagemap", 256 * M): 100.0, ("frame", "mprotect", 256 * M): 600.0,
                ("frame", "uffd", 256 * M): 1500.0, ("frame", "floor", 256 * M): 80.0,
                ("clean", "pagemap", G): 110.0, ("clean", "floor", G): 100.0,
                ("limit", "pagemap", 4 * G): 40.0, ("limit", "pagemap", 64 * K): 10.0,
                ("win32", "pagemap", None): 4999.0})
    t = {x["target"]: x for x in _bench.evaluate_targets(doc)}
    assert len(t) == 6
    vs_mprotect = t["frame loop 256 MiB 1%: pagemap vs mprotect"]
    assert vs_mprotect["met"] is True and vs_mprotect["measured"] == 6.0
    assert t["frame loop 256 MiB 1%: pagemap vs uffd"]["met"] is False      # 15x < 20x
    assert t["frame loop 256 MiB 1%: pagemap vs C floor"]["met"] is True    # 1.25 <= 1.3
    assert t["clean get-and-reset 1 GiB: pagemap vs C floor"]["met"] is True
    assert t["max_count=16: pagemap 4 GiB vs 64 KiB"]["met"] is False       # 4x > 3x
    assert t["win32 GetWriteWatch, 16 pages (pagemap)"]["met"] is True


def test_targets_show_the_technique_bound_from_the_floor():
    M = _bench.MiB
    doc = _doc({("frame", "pagemap", 256 * M): 1.1e6, ("frame", "uffd", 256 * M): 8e6})
    doc["results"] += [
        dict(workload="frame", backend="floor", size=256 * M, fraction=0.01, written=655,
             value_ns=1e6),
        dict(workload="fault", backend="floor", tech="uffd-sync", value_ns=10000.0)]
    t = {x["target"]: x for x in _bench.evaluate_targets(doc)}
    vs_uffd = t["frame loop 256 MiB 1%: pagemap vs uffd"]
    assert vs_uffd["met"] is False
    assert vs_uffd["bound"] == 655 * 10000.0 / 1e6
    assert "uffd-sync faults alone cost 6.5x its whole async-WP frame" in vs_uffd["detail"]
    assert "bound" not in t["frame loop 256 MiB 1%: pagemap vs mprotect"]   # not measured


def test_targets_not_measured_say_why():
    doc = _doc({("frame", "pagemap", 256 * _bench.MiB): 100.0}, backends=("pagemap",),
               win32="writewatch.win32 not importable: nope")
    t = {x["target"]: x for x in _bench.evaluate_targets(doc)}
    assert t["frame loop 256 MiB 1%: pagemap vs mprotect"]["met"] is None
    assert "mprotect unavailable: why-mprotect" in t[
        "frame loop 256 MiB 1%: pagemap vs mprotect"]["why"]
    assert t["frame loop 256 MiB 1%: pagemap vs C floor"]["why"] == "not measured in this mode"
    assert t["win32 GetWriteWatch, 16 pages (pagemap)"]["why"] == \
        "writewatch.win32 not importable: nope"


# ---- the C floor ------------------------------------------------------------

def floor():
    path = _bench.floor_path()
    assert path, "writewatch/_bin/ww-floor is missing: python setup.py build_ext --inplace"
    return path


def test_floor_runs_every_workload():
    p = run_command(
        [floor(), "--budget-ms", "1", "--min-reps", "2", "--max-reps", "5",
         "frame:1M:3", "frame:64K:16,1", "clean:1M", "sparse:256K", "limit:1M:16",
         "fault:uffd-async:32", "fault:uffd-sync:32", "fault:mprotect:32", "fault:none:32"],
        timeout=60)
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["workload"] for r in lines] == ["frame"] * 3 + ["clean", "sparse", "limit"] + \
        ["fault"] * 4
    if "pagemap" not in available():
        pytest.skip("async uffd-wp unavailable here: the floor skips its workloads")
    for r in lines:
        assert "error" not in r and "skip" not in r, r
        assert 2 <= r["n"] <= 5
        assert 0 < r["min_ns"] <= r["median_ns"]
    assert lines[0]["size"] == 1 << 20 and lines[0]["written"] == 3
    assert lines[1]["written"] == 16                     # 100 % of 64 KiB,
    assert lines[2]["written"] == 1                      # then one page, same region
    assert lines[4]["written"] == 32                     # every other page of 256 KiB
    assert [r["tech"] for r in lines[6:]] == ["uffd-async", "uffd-sync", "mprotect", "none"]
    assert all(r["unit"] == "page" and r["pages"] == 32 for r in lines[6:])


def test_floor_rejects_bad_arguments():
    for args in ([], ["nonsense"], ["frame:1000:1"], ["--bogus", "clean:1M"], ["frame:1M"]):
        p = run_command([floor()] + args, returncode=2, timeout=30)
        assert "usage" in p.stderr or "SIZE must be" in p.stderr


def test_floor_reports_a_failing_workload():
    # K larger than the region: an error line and exit status 1, and the
    # next workload still runs.
    p = run_command([floor(), "--budget-ms", "1", "frame:64K:17", "fault:none:8"],
                    returncode=1, timeout=30)
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    assert "error" in lines[0] and "K must be" in lines[0]["error"]
    assert lines[1]["workload"] == "fault" and "median_ns" in lines[1]


def test_a_wrong_answer_fails_the_benchmark():
    names = available()
    if not names:
        pytest.skip("no backend available here")
    loop = _bench.FrameLoop(names[0], 64 * _bench.PAGE, 4)
    try:
        loop.prepare()
        got = loop.frame()
        loop.check(got)                                  # the right pages pass
        assert loop.extra == 0
        with pytest.raises(_bench.BenchError, match="reported 3"):
            loop.check(got[:3])
        wrong = got.copy()
        wrong[0] ^= _bench.PAGE * 64                     # same count, other page
        with pytest.raises(_bench.BenchError, match="not the same pages"):
            loop.check(wrong)
        more = np.unique(np.append(got, [wrong[0], wrong[0] + _bench.PAGE]))
        loop.check(more)                                 # a superset: noted, not failed
        assert loop.extra == 2
    finally:
        loop.close()


def test_best_of_passes_keeps_the_lowest_and_every_value():
    recs = [dict(workload="clean", backend="pagemap", size=1, value_ns=v, n=i)
            for i, v in enumerate([30.0, 10.0, 20.0])]
    recs.append(dict(workload="clean", backend="pagemap", size=2, value_ns=5.0, n=9))
    best = {r["size"]: r for r in _bench._best_of_passes(recs)}
    assert best[1]["value_ns"] == 10.0 and best[1]["n"] == 1
    assert best[1]["passes"] == [30.0, 10.0, 20.0]
    assert best[2]["passes"] == [5.0]
