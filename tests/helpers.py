"""Test utilities: the one module every test file imports (psutil's
psutil/tests/__init__.py is the model).

Test modules import what they share from here -- never from each other, never
from conftest.py (which holds fixtures and hooks only).  `model.py` is the
reference model, not a utility module.  Everything about this machine is
decided once, at import.

Pages and ground truth::

    from helpers import PAGE, write_pages, written
    write_pages(region, [1, 5])              # one byte into each page (what the test wrote)
    assert written(region) == [1, 5]         # the page indexes the region reports
    assert written(region, reset=True) == [1, 5]
    contents(region)                         # the region's bytes
    page_indexes(region, addresses)          # absolute addresses -> page indexes (checked aligned)

Backends, probed once::

    BACKENDS         every backend name in preference order (writewatch._core.BACKEND_NAMES)
    AVAILABLE        the names that can run here
    BACKEND_INFO     name -> writewatch.BackendInfo (available, reason)
    HAS_PAGEMAP, HAS_UFFD, HAS_MPROTECT, HAS_SOFTDIRTY, IS_ROOT
    require_backend(name)      skip the test, with the probe's reason, unless `name` runs here
    backend_skip_reason(name)  that reason (None when the backend is available)

The conftest's `backend` fixture parametrises a test over BACKENDS with
require_backend; the skips of one backend are one line in pytest's summary.

Shared checks and settings::

    results, writes = writer_threads_vs_resets(region, npages, rounds)  # writers vs resets
    check_accounting(npages, results, writes)    # every write reported, every report written
    hypothesis_settings()                        # the example counts ($WRITEWATCH_HYPOTHESIS)
    Tally()                                      # what a state machine ran, for docs/reliability.md
    run_machine(Machine, "label", backend)       # a state machine as a test, its tally recorded

Child interpreters -- anything that may crash, hang, fork, change the whole
process or use up a resource runs in one::

    p = run_python(code)                           # exit status 0 expected
    p = run_python(code, argv=["x"], timeout=120)  # sys.argv[1:] == ["x"]
    p = run_python(code, returncode=-signal.SIGSEGV, flags=["-X", "faulthandler"])
    p = run_python(module="writewatch.soak", argv=["--seconds", "2"], returncode=None)
    p = run_python(script=path, env={"VAR": "1"})
    p.returncode, p.stdout, p.stderr               # text; output(p) formats all three

`code` is dedented.  The child runs `sys.executable` in the checkout, imports
writewatch from where this process did, can `import helpers` and `model`, and
gets neither WRITEWATCH_BACKEND nor PYTHONFAULTHANDLER from the environment.
A status other than `returncode` (None: any) fails the test with the child's
stdout and stderr in the message.  A child still running after `timeout`
seconds is killed with its whole process group and the test FAILS with the
output so far: a hang never hangs the suite.  run_command(argv, ...) is the
same for a program that is not Python (the C selftest, make, strace ...).

Memory cgroups -- a child that could exhaust memory runs inside a fresh one::

    p = run_python(code, memory_limit=64 << 20)    # a cgroup of its own, removed afterwards
    p.memory                                       # {"limit", "usage", "peak", "oom_kills"}
    with memory_cgroup(64 << 20) as cg:            # several children in one cgroup
        run_python(code, cgroup=cg); cg.stats()

cgroup v1 (a memory hierarchy; the new cgroup is made under this process's
own) and v2 (memory.max) are both handled.  Where none can be made (not
root, read-only, no memory controller) the test is skipped with the reason.
A child killed by the cgroup's OOM killer fails with "SIGKILL" and the
cgroup's oom_kill count in the message.  Page tables are charged to the
memory cgroup, so a limit also bounds what arming a region may cost.
"""

import contextlib
import ctypes
import errno
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import hypothesis
import numpy as np
import pytest

import writewatch

PAGE = writewatch.PAGE_SIZE

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
# Where this process imported writewatch from: children import the same one,
# and run_python() starts them there, because python -c and -m put their
# working directory first on sys.path, ahead of PYTHONPATH.  (After a plain
# `pip install .` this is site-packages, not the checkout, whose package has
# no compiled _core: see the root conftest.py.)
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(writewatch.__file__)))

DEFAULT_TIMEOUT = 120           # seconds a child may run unless the test says otherwise


# -- capabilities, decided once -----------------------------------------------

BACKEND_INFO = {b.name: b for b in writewatch.backends()}
BACKENDS = list(BACKEND_INFO)   # in preference order: writewatch._core.BACKEND_NAMES
AVAILABLE = [name for name, info in BACKEND_INFO.items() if info.available]
HAS_PAGEMAP = BACKEND_INFO["pagemap"].available
HAS_UFFD = BACKEND_INFO["uffd"].available
HAS_MPROTECT = BACKEND_INFO["mprotect"].available
HAS_SOFTDIRTY = BACKEND_INFO["softdirty"].available
IS_ROOT = os.geteuid() == 0


def backend_skip_reason(name):
    """Why backend `name` cannot run here (None when it can).  One text per
    backend, the same as bench/conftest.py's, so pytest's summary counts
    every skip of one backend on one line."""
    info = BACKEND_INFO[name]
    if info.available:
        return None
    return "backend %s unavailable: %s" % (name, info.reason)


def require_backend(name):
    """Skip the calling test unless backend `name` runs here; returns `name`."""
    reason = backend_skip_reason(name)
    if reason is not None:
        pytest.skip(reason)
    return name


# -- pages ----------------------------------------------------------------------

def write_pages(region, pages, value=1):
    """Write one byte into each page index of `pages` (ground truth)."""
    view = np.frombuffer(region, dtype=np.uint8)
    try:
        for p in pages:
            view[p * PAGE + (p * 7) % PAGE] = value
    finally:
        del view


def contents(region):
    """The region's bytes (through a view released before returning, so
    that the region can still be closed)."""
    view = np.frombuffer(region, dtype=np.uint8)
    try:
        return view.tobytes()
    finally:
        del view


def page_indexes(region, addresses):
    """Absolute addresses -> page indexes in the region (checked aligned)."""
    out = []
    for a in addresses:
        a = int(a)
        assert a % PAGE == 0, hex(a)
        out.append((a - region.address) // PAGE)
    return out


def written(region, **kw):
    """The page indexes region.get_write_watch(**kw) reports."""
    return page_indexes(region, region.get_write_watch(**kw))


# -- hypothesis: example counts and the tally of what ran ------------------------------

# Small by default (CI), large on request:
#   WRITEWATCH_HYPOTHESIS=long python -m pytest tests/test_model.py
hypothesis.settings.register_profile(
    "ci", max_examples=20, stateful_step_count=30, deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck), derandomize=False,
    print_blob=True)
hypothesis.settings.register_profile(
    "long", max_examples=2000, stateful_step_count=100, deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck), print_blob=True)
HYPOTHESIS_PROFILE = os.environ.get("WRITEWATCH_HYPOTHESIS", "ci")


def hypothesis_settings():
    """The settings of the chosen profile ($WRITEWATCH_HYPOTHESIS: ci or long)."""
    return hypothesis.settings.get_profile(HYPOTHESIS_PROFILE)


class Tally:
    """Counts what a state machine did: sequences (one per machine run,
    shrinking included) and steps (rules executed), for the figures in
    docs/reliability.md.  With $WRITEWATCH_RELIABILITY_LOG set, each test appends one
    JSON line there."""

    def __init__(self):
        self.sequences = 0
        self.steps = 0

    def record(self, test, backend):
        path = os.environ.get("WRITEWATCH_RELIABILITY_LOG")
        line = {"test": test, "backend": backend, "profile": HYPOTHESIS_PROFILE,
                "sequences": self.sequences, "steps": self.steps}
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(line) + "\n")
        return line


def run_machine(base, label, backend, *, share=1, at_least=1):
    """Run the state machine class `base` as a test on `backend` (a subclass
    with `backend` and a fresh Tally set), with the profile's settings --
    1/share of its examples, at least `at_least`, for machines whose
    examples cost more -- and print what it ran, recorded as `label`."""
    from hypothesis.stateful import run_state_machine_as_test
    tally = Tally()
    machine = type("%s_%s" % (base.__name__, backend), (base,),
                   {"backend": backend, "tally": tally})
    settings = hypothesis_settings()
    if share > 1:
        settings = hypothesis.settings(
            settings, max_examples=max(at_least, settings.max_examples // share))
    run_state_machine_as_test(machine, settings=settings)
    print(tally.record(label, backend))


# -- writer threads racing a get-and-reset loop --------------------------------------

def writer_threads_vs_resets(region, npages, rounds):
    """Writers of three kinds, each owning its pages: a GIL-free C store
    (ctypes.memset), a Python store under the GIL (numpy) and a kernel write
    (os.preadv from a file).  Each write is a single store (one byte, or one
    aligned word): a write of several stores may fault, be reported and
    re-armed between them, and count twice.  Each write is logged as
    (page, r0, r1): the collector's round counter read just before and just
    after it."""
    base = region.address
    view = np.frombuffer(region, dtype=np.uint64)
    mv = memoryview(region)
    started = [0]
    stop = threading.Event()
    logs = []
    fd, path = tempfile.mkstemp()
    os.write(fd, os.urandom(PAGE))
    kinds = ("memset", "numpy", "preadv", "memset")

    def writer(k):
        rng = random.Random(k)
        log = []
        logs.append(log)
        seq = 0
        while not stop.is_set():
            p = rng.randrange(k, npages, len(kinds))
            off = p * PAGE + rng.randrange(0, PAGE // 8) * 8
            seq += 1
            r0 = started[0]
            if kinds[k] == "memset":
                ctypes.memset(base + off, seq & 0xFF, 1)
            elif kinds[k] == "numpy":
                view[off // 8] = seq
            else:
                assert os.preadv(fd, [mv[off: off + 1]], rng.randrange(0, PAGE)) == 1
            log.append((p, r0, started[0]))

    results = []
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(len(kinds))]
    try:
        for t in threads:
            t.start()
        for j in range(rounds):
            started[0] = j
            results.append(set(written(region, reset=True)))
        stop.set()
        for t in threads:
            t.join()
        started[0] = rounds                       # the final round, writers stopped
        results.append(set(written(region, reset=True)))
    finally:
        stop.set()
        os.close(fd)
        os.unlink(path)
        mv.release()
        del view
    return results, [w for log in logs for w in log]


def check_accounting(npages, results, writes):
    """Check get-and-reset rounds (`results`: the set of pages each round
    reported) against the logged `writes` (page, r0, r1) of
    writer_threads_vs_resets: every write reported by a round that overlaps
    it, and every report accounted for by a write."""
    reports = {}                                  # page -> rounds that reported it
    for j, pages in enumerate(results):
        for p in pages:
            reports.setdefault(p, []).append(j)
    by_page = {}
    for p, r0, r1 in writes:
        by_page.setdefault(p, []).append((r0, r1))
        # Round r1 + 1 began after this write completed, rounds before r0
        # ended before it began: a round in [r0, r1 + 1] must report it.
        assert any(r0 <= j <= r1 + 1 for j in reports.get(p, ())), (
            "write to page %d during rounds %d..%d never reported (reports: %s)"
            % (p, r0, r1, reports.get(p)))
    for p, rounds in reports.items():
        assert p in by_page, "page %d reported but never written" % p
        # A report needs a write that began before round j ended (r0 <= j)
        # and did not end before round j - 1 began (that one was surely
        # reported by round j - 1 or earlier).  One write may account for
        # several reports: its fault is recorded, reported and re-armed
        # before the woken thread gets to store, and the store faults again.
        for j in rounds:
            assert any(r0 <= j and r1 >= j - 1 for r0, r1 in by_page[p]), (
                "page %d reported by round %d with no write to account for it" % (p, j))


# -- child processes ---------------------------------------------------------------

_OUTPUT_LIMIT = 20000           # characters of each stream shown in a failure


def _tail(text, limit=_OUTPUT_LIMIT):
    if len(text) <= limit:
        return text
    return "[... %d characters cut ...]\n%s" % (len(text) - limit, text[-limit:])


def describe_status(returncode):
    """'exit status 3' or 'killed by signal 11 (SIGSEGV)'."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "?"
        return "killed by signal %d (%s)" % (-returncode, name)
    return "exit status %d" % returncode


def _streams(p):
    text = "--- stdout ---\n%s\n--- stderr ---\n%s" % (_tail(p.stdout or ""),
                                                      _tail(p.stderr or ""))
    memory = getattr(p, "memory", None)
    if memory:
        text += "\n--- memory cgroup ---\n%s" % _describe_memory(memory)
    return text


def output(p):
    """A finished child's status, stdout and stderr, for an assertion message."""
    return "%s\n%s" % (describe_status(p.returncode), _streams(p))


def _kill_group(proc):
    # Only while the leader is not reaped: its pid, and so the group id,
    # cannot have been given to anyone else.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _drain(proc):
    """Whatever output is left once the child's group is dead."""
    try:
        return proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        # Something outside the group still holds the pipes: give up on them.
        proc.kill()
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
        proc.wait()
        return "", ""


def _command_line(argv):
    shown = []
    for a in argv:
        a = str(a)
        shown.append(a if len(a) <= 200 and "\n" not in a else "<%d-line script>" % (
            a.count("\n") + 1))
    return " ".join(shown)


def run_command(argv, *, returncode=0, timeout=DEFAULT_TIMEOUT, env=None, cwd=ROOT,
                input=None, stdin=None, preexec_fn=None, stderr_to_stdout=False,
                cgroup=None):
    """Run `argv` in a new session (its own process group) and wait for it.

    Returns a subprocess.CompletedProcess with text stdout and stderr.  Fails
    the calling test (pytest.fail) when the exit status is not `returncode`
    (None: any status) or when the child is still running after `timeout`
    seconds -- then its whole process group is killed first.  `input`: text
    for its stdin, or `stdin`: a file (default: /dev/null).  `cgroup` (a
    MemoryCgroup) puts the child into that cgroup before it starts."""
    argv = [str(a) for a in argv]
    shown = _command_line(argv)
    if cgroup is not None:
        argv = cgroup.wrap(argv)
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, start_new_session=True, preexec_fn=preexec_fn,
        stdin=subprocess.PIPE if input is not None else stdin or subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if stderr_to_stdout else subprocess.PIPE,
        text=True, errors="replace")
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        exited = proc.poll() is not None
        _kill_group(proc)
        out, err = _drain(proc)
        p = subprocess.CompletedProcess(argv, proc.returncode, out or "", err or "")
        if cgroup is not None:
            p.memory = cgroup.stats()
        why = ("exited (%s) but a process it started kept its output open"
               % describe_status(p.returncode) if exited else "was still running")
        pytest.fail("child %s after %s s: killed with its process group\ncommand: %s\n%s"
                    % (why, timeout, shown, _streams(p)))
    except BaseException:
        _kill_group(proc)       # an interrupted test leaves no child behind
        _drain(proc)
        raise
    p = subprocess.CompletedProcess(argv, proc.returncode, out or "", err or "")
    if cgroup is not None:
        p.memory = cgroup.stats()
    if returncode is not None and p.returncode != returncode:
        pytest.fail("child: %s, expected %s\ncommand: %s\n%s" % (
            describe_status(p.returncode), describe_status(returncode), shown, _streams(p)))
    return p


def child_env(env=None):
    """The environment of a child interpreter: ours, without the variables
    that would change what it tests, with writewatch (from where we imported
    it) and the test helpers importable, plus `env`."""
    e = dict(os.environ)
    e.pop("WRITEWATCH_BACKEND", None)
    e.pop("PYTHONFAULTHANDLER", None)
    path = [PACKAGE_PARENT, TESTS]
    if e.get("PYTHONPATH"):
        path.append(e["PYTHONPATH"])
    e["PYTHONPATH"] = os.pathsep.join(path)
    e["PYTHONDONTWRITEBYTECODE"] = "1"
    e.update(env or {})
    return e


def run_python(code=None, *, module=None, script=None, argv=(), flags=(), prefix=(),
               env=None, returncode=0, timeout=DEFAULT_TIMEOUT, cwd=PACKAGE_PARENT, input=None,
               stderr_to_stdout=False, memory_limit=None, cgroup=None):
    """Run Python code in a fresh interpreter and check how it ended.

    Exactly one of `code` (a string, dedented; ``python -c``), `module`
    (``python -m``) or `script` (a file) says what runs.  `argv`: its
    arguments; `flags`: interpreter options (``["-X", "faulthandler"]``);
    `prefix`: a command the interpreter runs under (``["strace", "-f", ...]``);
    `env`: variables added to child_env(); `stderr_to_stdout`: one stream.
    `returncode`: the expected exit status (negative: killed by that
    signal; None: any).  `memory_limit`:
    run inside a fresh memory cgroup of that many bytes (skips the test when
    none can be made); `cgroup`: inside that MemoryCgroup.

    Returns a CompletedProcess (text stdout/stderr; `.memory`, the cgroup's
    figures, with a cgroup).  Fails the test, showing the child's output, on
    another status or on a timeout (the child's process group is killed)."""
    if sum(x is not None for x in (code, module, script)) != 1:
        raise TypeError("run_python: give exactly one of code, module, script")
    if memory_limit is not None:
        if cgroup is not None:
            raise TypeError("run_python: memory_limit and cgroup exclude each other")
        with memory_cgroup(memory_limit) as cg:
            return run_python(code, module=module, script=script, argv=argv, flags=flags,
                              prefix=prefix, env=env, returncode=returncode,
                              timeout=timeout, cwd=cwd, input=input,
                              stderr_to_stdout=stderr_to_stdout, cgroup=cg)
    if code is not None:
        what = ["-c", textwrap.dedent(code)]
    elif module is not None:
        what = ["-m", module]
    else:
        what = [script]
    cmd = list(prefix) + [sys.executable] + list(flags) + what + list(argv)
    return run_command(cmd, returncode=returncode, timeout=timeout, env=child_env(env),
                       cwd=cwd, input=input, stderr_to_stdout=stderr_to_stdout,
                       cgroup=cgroup)


# -- memory cgroups ---------------------------------------------------------------------

def _read(path, default=None):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def _write(path, value):
    with open(path, "w") as f:
        f.write(str(value))


class NoMemoryCgroup(Exception):
    """No memory cgroup can be made here; the message says why."""


def _mounts():
    """(fstype, mount point, root, super options) of every mount."""
    found = []
    for line in (_read("/proc/self/mountinfo") or "").splitlines():
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        found.append((rest[0], fields[4], fields[3], rest[2].split(",")))
    return found


def _own_cgroups():
    """{controller or '' (v2): our cgroup path} from /proc/self/cgroup."""
    own = {}
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            own[c] = path
    return own


def _below(mount, root, path):
    """Where cgroup `path` is, in a hierarchy mounted at `mount` from `root`."""
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    return os.path.join(mount, path.lstrip("/"))


def find_memory_cgroup_parent():
    """(version, directory) under which a new memory cgroup is made: our own
    cgroup of the v1 memory hierarchy, or in v2 the cgroup whose children get
    the memory controller.  Raises NoMemoryCgroup with the reason."""
    own = _own_cgroups()
    mounts = _mounts()
    for fstype, mount, root, opts in mounts:
        if fstype == "cgroup" and "memory" in opts:
            if "memory" not in own:
                raise NoMemoryCgroup("/proc/self/cgroup names no memory cgroup (v1 "
                                     "hierarchy at %s)" % mount)
            path = _below(mount, root, own["memory"])
            if not os.path.isdir(path):
                raise NoMemoryCgroup("our memory cgroup %s is not visible at %s"
                                     % (own["memory"], path))
            return 1, path
    for fstype, mount, root, opts in mounts:
        if fstype != "cgroup2" or "" not in own:
            continue
        if "memory" not in (_read(os.path.join(mount, "cgroup.controllers")) or "").split():
            continue
        ours = _below(mount, root, own[""])
        if os.path.normpath(ours) == os.path.normpath(mount):
            parent = ours               # the root cgroup may hold processes and children
        else:
            # A cgroup with processes cannot hand controllers to children (the
            # "no internal processes" rule): make ours a sibling instead.
            parent = os.path.dirname(os.path.normpath(ours))
        enabled = (_read(os.path.join(parent, "cgroup.subtree_control")) or "").split()
        if "memory" not in enabled:
            # Enabling it would change a cgroup that is not ours to change.
            raise NoMemoryCgroup("the memory controller is not enabled for the children of "
                                 "%s (cgroup.subtree_control: %s)"
                                 % (parent, " ".join(enabled) or "empty"))
        return 2, parent
    raise NoMemoryCgroup("no memory cgroup controller is mounted (neither a v1 memory "
                         "hierarchy nor cgroup2 with memory in cgroup.controllers)")


class MemoryCgroup:
    """A memory cgroup made for a test (see memory_cgroup())."""

    _serial = itertools.count()

    def __init__(self, limit):
        self.limit = int(limit)
        self.version, parent = find_memory_cgroup_parent()
        self.path = os.path.join(parent, "writewatch-test-%d-%d" % (os.getpid(),
                                                                     next(self._serial)))
        try:
            os.mkdir(self.path)
        except OSError as e:
            raise NoMemoryCgroup("cannot make a memory cgroup: mkdir %s: %s" % (self.path, e))
        try:
            if self.version == 1:
                self._set("memory.limit_in_bytes", self.limit)
                if os.path.exists(self._file("memory.memsw.limit_in_bytes")):
                    self._set("memory.memsw.limit_in_bytes", self.limit)   # no way out by swap
            else:
                self._set("memory.max", self.limit)
                if os.path.exists(self._file("memory.swap.max")):
                    self._set("memory.swap.max", 0)
        except NoMemoryCgroup:
            self.remove()
            raise

    def _file(self, name):
        return os.path.join(self.path, name)

    def _set(self, name, value):
        try:
            _write(self._file(name), value)
        except OSError as e:
            raise NoMemoryCgroup("cannot set %s of %s to %s: %s" % (name, self.path, value, e))

    @property
    def procs_file(self):
        return self._file("cgroup.procs")

    def wrap(self, argv):
        """`argv` started by a shell that first moves itself into this cgroup
        (no preexec_fn: the test process may have threads)."""
        join = ('echo $$ > "$0" || { echo "cannot join the memory cgroup $0" >&2; exit 125; }; '
                'exec "$@"')
        return ["/bin/sh", "-c", join, self.procs_file] + list(argv)

    def pids(self):
        return [int(x) for x in (_read(self.procs_file) or "").split()]

    def stats(self):
        """{'limit', 'usage', 'peak', 'oom_kills'} in bytes and counts (None
        where this kernel does not say)."""
        def number(name):
            text = _read(self._file(name))
            try:
                return int(text)
            except (TypeError, ValueError):
                return None

        def field(name, key):
            for line in (_read(self._file(name)) or "").splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == key:
                    return int(parts[1])
            return None

        if self.version == 1:
            return {"limit": self.limit, "usage": number("memory.usage_in_bytes"),
                    "peak": number("memory.max_usage_in_bytes"),
                    "oom_kills": field("memory.oom_control", "oom_kill")}
        return {"limit": self.limit, "usage": number("memory.current"),
                "peak": number("memory.peak"),
                "oom_kills": field("memory.events", "oom_kill")}

    def remove(self, timeout=10):
        """Kill whatever still runs in the cgroup, then remove it."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise RuntimeError("cannot remove memory cgroup %s (processes %s): %s"
                                       % (self.path, pids, e))
            time.sleep(0.02)


def _describe_memory(m):
    def mib(x):
        return "?" if x is None else "%.1f MiB" % (x / 1048576.0)
    text = "limit %s, peak %s, oom_kill %s" % (
        mib(m["limit"]), mib(m["peak"]), "?" if m["oom_kills"] is None else m["oom_kills"])
    if m["oom_kills"]:
        text += "  (the cgroup's OOM killer killed a process)"
    return text


@contextlib.contextmanager
def memory_cgroup(limit):
    """A fresh memory cgroup limited to `limit` bytes (no swap), removed --
    with anything still running in it -- when the block ends.  Skips the
    test, with the reason, when none can be made here."""
    try:
        cg = MemoryCgroup(limit)
    except NoMemoryCgroup as e:
        pytest.skip("no memory cgroup: %s" % e)
    try:
        yield cg
    finally:
        cg.remove()
