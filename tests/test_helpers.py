"""The test helpers themselves (helpers.py): a child's failure shows its
output, a hang fails within its timeout and leaves no process behind, a
memory cgroup bounds a child and is always removed, the accounting checker
catches a lost write, and the summary counts a skip reason once."""

import os
import shutil
import signal
import textwrap

import pytest

import helpers
from helpers import IS_ROOT, check_accounting, output, run_python

Failed = pytest.fail.Exception


@pytest.fixture
def watchdog():
    """If run_python itself hung, this test would fail here after 60 s
    instead of hanging the suite."""
    def expired(signum, frame):
        raise RuntimeError("watchdog: the helper under test hung")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _gone(pid):
    """True once `pid` has exited (a zombie waiting for init counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _wait_gone(pid, tries=200):
    for _ in range(tries):
        if _gone(pid):
            return True
        signal.sigtimedwait([], 0.01)   # a short sleep that the watchdog may interrupt
    return False


# -- run_python ----------------------------------------------------------------------

def test_nonzero_exit_fails_and_shows_the_output():
    with pytest.raises(Failed) as e:
        run_python("""
            import sys
            print("said on stdout")
            sys.stderr.write("said on stderr\\n")
            sys.exit(3)
        """)
    msg = str(e.value)
    assert "exit status 3, expected exit status 0" in msg
    assert "said on stdout" in msg and "said on stderr" in msg


def test_a_crash_is_named_by_its_signal():
    with pytest.raises(Failed, match=r"killed by signal 11 \(SIGSEGV\)"):
        run_python("import ctypes; ctypes.string_at(0)")


def test_the_expected_status_passes():
    p = run_python("import sys; print('x'); sys.exit(3)", returncode=3)
    assert (p.returncode, p.stdout) == (3, "x\n")
    p = run_python("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)",
                   returncode=-signal.SIGSEGV)
    assert p.returncode == -signal.SIGSEGV
    assert run_python("raise SystemExit(7)", returncode=None).returncode == 7
    with pytest.raises(Failed, match="exit status 0, expected exit status 1"):
        run_python("pass", returncode=1)


def test_the_child_environment(monkeypatch):
    monkeypatch.setenv("WRITEWATCH_BACKEND", "mprotect")
    monkeypatch.setenv("PYTHONFAULTHANDLER", "1")
    p = run_python("""
        import os, sys
        import helpers, writewatch
        print(os.environ.get("WRITEWATCH_BACKEND"), os.environ.get("PYTHONFAULTHANDLER"))
        print(os.environ["EXTRA"], sys.argv[1:], os.getcwd())
        print(writewatch.__file__)
    """, argv=["a", "b c"], env={"EXTRA": "yes"})
    lines = p.stdout.splitlines()
    assert lines[0] == "None None"
    assert lines[1] == "yes ['a', 'b c'] %s" % helpers.PACKAGE_PARENT
    import writewatch
    assert os.path.samefile(lines[2], writewatch.__file__)


def test_module_and_script(tmp_path):
    script = tmp_path / "child.py"
    script.write_text("import sys; print('script', sys.argv[1:])\n")
    assert run_python(script=str(script), argv=["1"]).stdout == "script ['1']\n"
    p = run_python(module="json.tool", input='{"a": 1}')
    assert p.stdout.split() == ["{", '"a":', "1", "}"]
    with pytest.raises(TypeError):
        run_python("pass", module="json.tool")
    with pytest.raises(TypeError):
        run_python()


@pytest.mark.parametrize("how", ["hangs", "exits-leaving-its-output-open"])
def test_a_hang_fails_within_the_timeout_and_kills_the_group(watchdog, how):
    """The child (or what it started) never finishes: the test fails after
    `timeout`, shows the output so far, and no process of the group lives."""
    code = textwrap.dedent("""
        import subprocess, sys, time
        q = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print("started", q.pid, flush=True)
        if sys.argv[1] == "hangs":
            time.sleep(600)
    """)
    with pytest.raises(Failed) as e:
        run_python(code, argv=[how], timeout=3)
    msg = str(e.value)
    if how == "hangs":
        assert "child was still running after 3 s: killed with its process group" in msg
    else:
        assert ("child exited (exit status 0) but a process it started kept its output "
                "open after 3 s") in msg
    line = [w for w in msg.splitlines() if w.startswith("started ")]
    assert line, msg
    grandchild = int(line[0].split()[1])
    assert _wait_gone(grandchild), "pid %d outlived the timeout" % grandchild


def test_output_formats_status_and_streams():
    p = run_python("import sys; print('o'); sys.stderr.write('e'); sys.exit(2)",
                   returncode=2)
    assert output(p) == "exit status 2\n--- stdout ---\no\n\n--- stderr ---\ne"


# -- memory cgroups ---------------------------------------------------------------------

ALLOCATE = """
import sys
block = bytearray(int(sys.argv[1]) << 20)     # zero-filled: every page touched
print("allocated", len(block) >> 20, flush=True)
"""


def test_a_child_over_its_memory_limit_is_killed_and_fails():
    with pytest.raises(Failed) as e:
        run_python(ALLOCATE, argv=["256"], memory_limit=64 << 20, timeout=60)
    msg = str(e.value)
    assert "killed by signal 9 (SIGKILL)" in msg, msg
    assert "limit 64.0 MiB" in msg and "the cgroup's OOM killer killed a process" in msg, msg
    assert "allocated" not in msg


def test_a_child_within_its_memory_limit_passes_and_the_cgroup_goes():
    with helpers.memory_cgroup(128 << 20) as cg:
        p = run_python(ALLOCATE, argv=["32"], cgroup=cg)
        assert p.stdout == "allocated 32\n"
        assert os.path.isdir(cg.path)
        assert cg.pids() == []                        # the child has left
    assert not os.path.exists(cg.path)
    m = p.memory
    assert m["limit"] == 128 << 20 and m["oom_kills"] == 0
    assert m["peak"] is None or 32 << 20 <= m["peak"] <= 128 << 20, m


def test_the_cgroup_goes_even_with_a_process_left_in_it(watchdog):
    """A process that left the child's session (so the process-group kill
    misses it) still dies with the cgroup."""
    with helpers.memory_cgroup(64 << 20) as cg:
        p = run_python("""
            import subprocess, sys
            q = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                 start_new_session=True, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            print(q.pid)
        """, cgroup=cg)
        left = int(p.stdout)
        assert cg.pids() == [left]
    assert not os.path.exists(cg.path)
    assert _wait_gone(left)


def test_memory_limit_and_a_timeout_together(watchdog):
    with pytest.raises(Failed) as e:
        run_python("import time; print('waiting', flush=True); time.sleep(600)",
                   memory_limit=64 << 20, timeout=2)
    msg = str(e.value)
    assert "still running after 2 s" in msg and "waiting" in msg
    assert "--- memory cgroup ---" in msg


@pytest.mark.skipif(not IS_ROOT, reason="dropping to 'nobody' needs root")
def test_no_memory_cgroup_is_a_skip_with_the_reason():
    """As 'nobody' no cgroup can be made: memory_cgroup() skips and says why."""
    p = run_python("""
        import os, pytest
        import helpers
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
        try:
            with helpers.memory_cgroup(64 << 20):
                print("made one")
        except pytest.skip.Exception as e:
            print("skip:", e)
    """)
    assert p.stdout.startswith("skip: no memory cgroup: "), output(p)
    assert "Permission denied" in p.stdout, output(p)


# -- the write accounting of writer_threads_vs_resets --------------------------------------

def test_accounting_catches_a_lost_write():
    """The checker itself: a dropped report or an invented one fails."""
    writes = [(1, 0, 0), (1, 3, 4), (2, 5, 5)]
    check_accounting(4, [{1}, set(), set(), set(), {1}, {2}], writes)
    with pytest.raises(AssertionError, match="never reported"):
        check_accounting(4, [{1}, set(), set(), set(), set(), {2}, set()], writes)
    with pytest.raises(AssertionError, match="never written"):
        check_accounting(4, [{1, 3}, set(), set(), set(), {1}, {2}], writes)
    with pytest.raises(AssertionError, match="no write to account"):
        check_accounting(4, [{1}, set(), {1}, set(), {1}, {2}], writes)


# -- the skip summary ------------------------------------------------------------------------

def test_one_summary_line_per_skip_reason(tmp_path):
    """Skips of one reason -- from a fixture, at several tests, and from skip
    marks -- are counted on one line of the -ra summary."""
    for name in ("conftest.py", "helpers.py"):
        shutil.copy(os.path.join(helpers.TESTS, name), str(tmp_path / name))
    (tmp_path / "test_x.py").write_text(textwrap.dedent("""
        import pytest
        from helpers import require_backend

        @pytest.fixture(params=range(3))
        def thing(request):
            pytest.skip("no thing here")

        def test_a(thing):
            pass

        def test_b(thing):
            pass

        @pytest.mark.parametrize("i", [pytest.param(1, marks=pytest.mark.skip(
            reason="no thing here")), 2])
        def test_c(i):
            pass

        def test_d():
            pytest.skip("another reason")

        @pytest.mark.parametrize("name", ["pagemap", "uffd", "mprotect", "softdirty"])
        def test_e(name):
            require_backend(name)
    """))
    p = run_python(module="pytest", argv=["-q", "-ra", "-p", "no:cacheprovider", str(tmp_path)],
                   cwd=str(tmp_path), timeout=120)
    lines = [w for w in p.stdout.splitlines() if w.startswith("SKIPPED")]
    thing = [w for w in lines if w.endswith(": no thing here")]
    assert len(thing) == 1 and thing[0].startswith("SKIPPED [7] "), output(p)
    assert [w for w in lines if w.endswith(": another reason")], output(p)
    unavailable = [b for b in helpers.BACKENDS if b not in helpers.AVAILABLE]
    for b in unavailable:
        mine = [w for w in lines if "backend %s unavailable" % b in w]
        assert len(mine) == 1 and "helpers.py:" in mine[0], output(p)
    assert len(lines) == 2 + len(unavailable), output(p)
