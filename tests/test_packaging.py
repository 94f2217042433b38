"""The package around the code: one version, reported by the command line,
and a test run that finds a build -- or says how to make one.

Child interpreters here import the same writewatch as this process: they
run outside the checkout, with that package's parent directory on
PYTHONPATH."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import writewatch
import writewatch._cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILT = os.path.dirname(os.path.dirname(os.path.abspath(writewatch.__file__)))
SOURCE_SUFFIXES = (".py", ".pyx", ".pxi", ".pxd", ".h", ".pyi")


def child_env(pythonpath=BUILT):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (pythonpath, os.environ.get("PYTHONPATH")) if p)
    env.pop("WRITEWATCH_BACKEND", None)
    return env


def run(args, cwd, env=None, timeout=120):
    p = subprocess.run(args, cwd=cwd, env=env or child_env(), capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


# -- the version --------------------------------------------------------------

def test_version_is_written_once():
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "writewatch.__version__"}


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as e:
        writewatch._cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == "writewatch %s\n" % writewatch.__version__


def test_python_m_writewatch_version(tmp_path):
    rc, out = run([sys.executable, "-m", "writewatch", "--version"], cwd=tmp_path)
    assert (rc, out) == (0, "writewatch %s\n" % writewatch.__version__)


def test_console_script_version(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "writewatch")
    if not os.path.exists(script):
        pytest.skip("no `writewatch` script next to %s (not installed)" % sys.executable)
    rc, out = run([script, "--version"], cwd=tmp_path)
    assert (rc, out) == (0, "writewatch %s\n" % writewatch.__version__)


# -- the root conftest.py: which writewatch a test run imports ------------------

def checkout_without_build(tmp_path):
    """A copy of this checkout's sources and root conftest.py, no _core."""
    dst = tmp_path / "checkout"
    src = os.path.join(ROOT, "writewatch")
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = [d for d in dirnames if d not in ("__pycache__", "_bin")]
        for name in filenames:
            if name.endswith(SOURCE_SUFFIXES) or name == "py.typed":
                rel = os.path.relpath(os.path.join(dirpath, name), src)
                os.makedirs(os.path.dirname(dst / "writewatch" / rel), exist_ok=True)
                shutil.copyfile(os.path.join(dirpath, name), dst / "writewatch" / rel)
    shutil.copyfile(os.path.join(ROOT, "conftest.py"), dst / "conftest.py")
    (dst / "pytest.ini").write_text("[pytest]\n")
    (dst / "test_probe.py").write_text(textwrap.dedent("""\
        import writewatch

        def test_probe():
            with writewatch.Region(4 * writewatch.PAGE_SIZE) as r:
                memoryview(r)[writewatch.PAGE_SIZE] = 1
                assert len(r.get_write_watch()) == 1
            print("imported", writewatch.__file__)
        """))
    return dst


def pytest_in(checkout, env):
    env = dict(env, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    return run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                "test_probe.py"], cwd=checkout, env=env)


def test_checkout_without_build_uses_the_installed_build(tmp_path):
    """The situation of an unpacked sdist after `pip install .`: the build
    this process uses plays the installed one."""
    checkout = checkout_without_build(tmp_path)
    rc, out = pytest_in(checkout, child_env())
    assert rc == 0, out
    assert "imported " + os.path.join(BUILT, "writewatch", "__init__.py") in out, out


def test_checkout_without_any_build_says_how_to_build(tmp_path):
    checkout = checkout_without_build(tmp_path)
    unbuilt = tmp_path / "unbuilt"            # shadows every installed build
    (unbuilt / "writewatch").mkdir(parents=True)
    (unbuilt / "writewatch" / "__init__.py").write_text("")
    rc, out = pytest_in(checkout, child_env(str(unbuilt)))
    assert rc == pytest.ExitCode.USAGE_ERROR, out
    assert "writewatch is not built from these sources" in out, out
    assert "pip install -e '.[test]'" in out and "python setup.py build_ext --inplace" in out
    assert "No module named" not in out and "Traceback" not in out, out


def test_checkout_with_a_stale_installed_build_says_so(tmp_path):
    checkout = checkout_without_build(tmp_path)
    with open(checkout / "writewatch" / "soak.py", "a") as f:
        f.write("# changed since the build\n")
    rc, out = pytest_in(checkout, child_env())
    assert rc == pytest.ExitCode.USAGE_ERROR, out
    assert "made from other sources" in out and "(differs in soak.py)" in out, out
    assert "pip install ." in out
