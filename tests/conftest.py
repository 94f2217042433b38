"""Fixtures and hooks only; what tests share otherwise is in helpers.py.

Every contract test runs once per backend (the `backend` fixture).  A backend
that cannot run here is skipped with the probe's reason, and pytest's summary
(-ra) counts all skips of one reason on one line."""

import os

import pytest

import writewatch
from helpers import BACKENDS, PAGE, require_backend


@pytest.fixture(params=BACKENDS)
def backend(request):
    return require_backend(request.param)


@pytest.fixture
def make_region(backend):
    """make_region(npages) -> Region on the test's backend, closed afterwards."""
    made = []

    def make(npages, **kw):
        r = writewatch.Region(npages * PAGE, backend=backend, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        try:
            r.close()
        except BufferError:
            pass


@pytest.fixture(autouse=True)
def _no_env_backend(monkeypatch):
    """Tests choose backends explicitly; an outer WRITEWATCH_BACKEND must not leak in."""
    if "WRITEWATCH_BACKEND" in os.environ:
        monkeypatch.delenv("WRITEWATCH_BACKEND")


# -- one summary line per skip reason -------------------------------------------------
#
# pytest's -ra summary folds skips by (file, line, reason).  A skip raised in a
# fixture (require_backend, through `backend`) is reported at the test that
# asked for it, so one unavailable backend made a line per test function.

def _ours(path):
    path = os.path.abspath(str(path))
    return path.startswith(os.path.dirname(os.path.abspath(__file__)) + os.sep)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skip raised by our own code in a fixture is reported where it was
    raised (require_backend in helpers.py), not at each test using it."""
    outcome = yield
    report = outcome.get_result()
    excinfo = call.excinfo
    if (report.skipped and excinfo is not None and isinstance(report.longrepr, tuple)
            and getattr(excinfo.value, "_use_item_location", False)):
        try:
            crash = excinfo._getreprcrash()     # pytest's own choice of raise site
        except AttributeError:                  # another pytest: keep its location
            crash = None
        if crash is not None and _ours(crash.path):
            report.longrepr = (str(crash.path), crash.lineno, report.longrepr[2])


def pytest_terminal_summary(terminalreporter):
    """Skips with the same reason raised at several places get one location:
    the file most of them name (tests/helpers.py for an unavailable
    backend), without a line number, so the summary shows one line per
    reason, the benchmarks' parametrised skips included.  (pytest folds
    skips from skip marks by file alone, so a line number would split them
    again.)  Runs before the short summary is written."""
    by_reason = {}
    for rep in terminalreporter.stats.get("skipped", []):
        if isinstance(rep.longrepr, tuple) and len(rep.longrepr) == 3:
            by_reason.setdefault(rep.longrepr[2], []).append(rep)
    for reason, reps in by_reason.items():
        places = {}
        for rep in reps:
            place = rep.longrepr[:2]
            places[place] = places.get(place, 0) + 1
        if len(places) > 1:
            path, _ = max(places, key=places.get)          # first of the most common
            for rep in reps:
                rep.longrepr = (path, None, reason)
