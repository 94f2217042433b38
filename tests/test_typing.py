"""The type stubs (writewatch/_core.pyi, _errors.pyi, _types.pyi):

* mypy's stubtest finds them true to the extension at run time: every
  public name, argument, default and keyword-only marker;
* ``mypy --strict`` passes on a program that uses them
  (examples/dirty_copy.py), which also runs and gives the right answer;
* and flags wrong calls in it: a misspelt keyword, ``backend`` passed by
  position (it is keyword-only), the result taken for something else.

mypy runs in a child process (a few seconds each, no cache kept in the
tree); without mypy these tests are skipped, saying so.  mypy comes with
the ``test`` extra.
"""

import os
import re
import site
import subprocess
import sys

import pytest

import writewatch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILT = os.path.dirname(os.path.dirname(os.path.abspath(writewatch.__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "dirty_copy.py")

# What stubtest may find missing, and why.
STUBTEST_ALLOWLIST = """\
# The buffer protocol is a C slot; Python shows it as __buffer__ only from
# 3.12 on, but the stubs declare it for every version so that mypy accepts
# memoryview(region).
writewatch._core.Region.__buffer__
writewatch._core.Region.__release_buffer__
# The backends' base class: C hooks only, nothing to call from Python.
writewatch._core.Engine
# Cython's own module attributes
writewatch._core.__reduce_cython__
writewatch._core.__setstate_cython__
writewatch._core.__test__
"""

WRONG_CALLS = """

def wrong(region: writewatch.Region) -> None:
    region.get_write_watch(resett=True)
    writewatch.Region(4096, "uffd")
    pages: str = region.get_write_watch()
"""


def mypy_env():
    """Environment in which mypy finds the writewatch this process imported:
    through site-packages (PEP 561) when it is installed there, else (an
    editable install, whose import hook mypy cannot follow, or an in-place
    build) through MYPYPATH."""
    env = dict(os.environ)
    sites = {os.path.realpath(p) for p in site.getsitepackages() + [site.getusersitepackages()]}
    if os.path.realpath(BUILT) not in sites:
        env["MYPYPATH"] = BUILT
    env["PYTHONPATH"] = os.pathsep.join(p for p in (BUILT, env.get("PYTHONPATH")) if p)
    env.pop("WRITEWATCH_BACKEND", None)
    return env


@pytest.fixture(scope="module")
def mypy(tmp_path_factory):
    """mypy(*args) -> (status, output), run in a scratch directory with a
    cache shared by this module's runs."""
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[test]')")
    work = tmp_path_factory.mktemp("mypy")
    config = work / "mypy.ini"
    config.write_text("[mypy]\ncache_dir = %s\n" % (work / "cache"))

    def run(*args, module="mypy"):
        p = subprocess.run([sys.executable, "-m", module, "--config-file" if module == "mypy"
                            else "--mypy-config-file", str(config), *args],
                           cwd=work, env=mypy_env(), capture_output=True, text=True,
                           timeout=300)
        return p.returncode, p.stdout + p.stderr

    run.work = work
    return run


def test_stubs_match_the_extension(mypy):
    allowlist = mypy.work / "allowlist.txt"
    allowlist.write_text(STUBTEST_ALLOWLIST)
    # --ignore-disjoint-bases: marking Region @disjoint_base (PEP 800) would
    # need a mypy that knows it to read the stubs at all.
    status, out = mypy("--ignore-disjoint-bases", "--allowlist", str(allowlist),
                       "writewatch._core", "writewatch._errors", "writewatch._types",
                       module="mypy.stubtest")
    assert status == 0, out


def test_example_runs():
    p = subprocess.run([sys.executable, EXAMPLE], env=mypy_env(), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.fullmatch(r"\w+ backend: 10 frames, 80 of 2560 pages copied, copy identical\n",
                        p.stdout), p.stdout


def test_mypy_strict_passes_on_the_example_and_flags_wrong_calls(mypy):
    wrong = mypy.work / "wrong_calls.py"
    with open(EXAMPLE) as f:
        source = f.read()
    wrong.write_text(source + WRONG_CALLS)
    first = source.count("\n") + WRONG_CALLS.count("\n") - 2    # line of the first call
    status, out = mypy("--strict", EXAMPLE, str(wrong))
    errors = [line for line in out.splitlines() if ": error: " in line]
    assert status == 1, out
    # nothing in the example itself ...
    assert not [e for e in errors if not e.startswith("wrong_calls.py:")], out
    # ... and exactly the three wrong calls in its copy
    assert len(errors) == 3, out
    assert errors[0].startswith("wrong_calls.py:%d: error: Unexpected keyword argument "
                                '"resett" for "get_write_watch" of "Region"' % first), out
    assert errors[1].startswith("wrong_calls.py:%d: error: Too many positional arguments "
                                'for "Region"' % (first + 1)), out
    assert errors[2].startswith("wrong_calls.py:%d: error: Incompatible types in "
                                "assignment" % (first + 2)), out
    assert 'variable has type "str"' in errors[2], out


def test_stubs_are_shipped():
    """The stubs and py.typed sit next to the extension that was imported."""
    here = os.path.dirname(writewatch.__file__)
    for name in ("_core.pyi", "_errors.pyi", "_types.pyi", "py.typed"):
        assert os.path.isfile(os.path.join(here, name)), name
