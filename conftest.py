"""Which writewatch the tests import: a built one, or none at all.

``python -m pytest`` puts the current directory -- this checkout -- first on
sys.path (and pytest itself adds the directory of this file), so
``import writewatch`` finds the source package here.  That is right after
``pip install -e .`` or ``python setup.py build_ext --inplace``, which put
the compiled ``_core`` next to the sources.  After a plain ``pip install .``
(an unpacked sdist, say) the build is in site-packages and the package here
has no ``_core``: every test would fail with ``No module named
'writewatch._core'``.  So, before any test module is imported:

* this checkout's package is built for this Python: nothing to do;
* it is not, but a built writewatch is installed and its sources are these
  sources: the tests import that one (sys.modules keeps it for the session);
* otherwise pytest stops at once and says how to build.

Child interpreters are not covered here: tests/helpers.py's run_python()
starts them where this process found writewatch, with that directory on
PYTHONPATH, so that they import the same one.
"""

import importlib.machinery
import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(ROOT, "writewatch")
# Files a wheel carries and a checkout has: what "built from these sources"
# is judged by.
_SOURCE_SUFFIXES = (".py", ".pyx", ".pxi", ".pxd", ".h", ".pyi")

HOW_TO_BUILD = """\
    pip install -e '.[test]'                 # editable install, what CI does
or
    python setup.py build_ext --inplace      # build here, install nothing"""


def _has_core(package_dir):
    """Whether `package_dir` holds a _core extension this interpreter loads."""
    return any(os.path.isfile(os.path.join(package_dir, "_core" + suffix))
               for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def _sources(package_dir):
    """Relative paths of the source files under `package_dir`."""
    found = []
    for dirpath, dirnames, filenames in os.walk(package_dir):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(_SOURCE_SUFFIXES) or name == "py.typed":
                found.append(os.path.relpath(os.path.join(dirpath, name), package_dir))
    return sorted(found)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _differences(installed_dir):
    """Source files of this checkout that the installed package lacks or has
    with other contents; .py files must all be there, other sources (which a
    wheel may leave out) are compared when present."""
    out = []
    for rel in _sources(SOURCE):
        theirs = os.path.join(installed_dir, rel)
        if not os.path.isfile(theirs):
            if rel.endswith(".py"):
                out.append(rel + " (missing)")
        elif _read(theirs) != _read(os.path.join(SOURCE, rel)):
            out.append(rel)
    return out


def _is_root(entry):
    return os.path.realpath(entry or os.curdir) == os.path.realpath(ROOT)


def _find_elsewhere():
    """The spec of the writewatch that is importable without this checkout
    on sys.path, or None."""
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if not _is_root(p)]
    try:
        return importlib.util.find_spec("writewatch")
    finally:
        sys.path[:] = saved


def _import_elsewhere():
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if not _is_root(p)]
    try:
        import writewatch  # noqa: F401
    finally:
        sys.path[:] = saved


def _stop(why, how=HOW_TO_BUILD):
    # Not pytest.exit(): raised while a conftest is imported, pytest reports
    # it as a failed conftest import, traceback and all.  SystemExit leaves
    # pytest before it has printed anything.
    sys.stderr.write("writewatch is not built from these sources:\n  %s.\n"
                     "Build it, then run the tests again:\n%s\n" % (why, how))
    sys.stderr.flush()
    raise SystemExit(int(pytest.ExitCode.USAGE_ERROR))


def _choose_writewatch():
    if "writewatch" in sys.modules or not os.path.isdir(SOURCE) or _has_core(SOURCE):
        return
    here = ("this checkout's package %s has no compiled _core for this Python (%s),\n  "
            % (SOURCE, sys.implementation.cache_tag))
    spec = _find_elsewhere()
    if spec is None or not spec.submodule_search_locations:
        _stop(here + "and no writewatch is installed")
    installed = list(spec.submodule_search_locations)[0]
    if not _has_core(installed):
        _stop(here + "and the writewatch installed at %s has none either" % installed)
    differ = _differences(installed)
    if differ:
        _stop(here + "and the build installed at %s was made from other sources\n  "
              "(differs in %s)" % (installed, ", ".join(differ[:5])),
              "    pip install .                            # install this checkout's build\n"
              "or\n" + HOW_TO_BUILD)
    _import_elsewhere()


_choose_writewatch()
