"""pytest-benchmark suite: every workload on every available backend.

By default (pyproject's addopts has --benchmark-disable) each benchmark runs
once, as a smoke test that also checks its answer, and the large sizes are
skipped.  To measure for real and keep the JSON for `pytest-benchmark
compare`:

    pytest bench --bench-full --benchmark-enable --benchmark-only \\
        --benchmark-autosave
    python -m pytest_benchmark compare --group-by=group --columns=min,median,rounds

(--bench-full, or WRITEWATCH_BENCH_FULL=1, adds the regions of 256 MiB and
more.)
"""
import os

import pytest

import writewatch


def pytest_addoption(parser):
    parser.addoption("--bench-full", action="store_true", default=False,
                     help="writewatch: also run the large sizes (256 MiB .. 4 GiB)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "full: a large benchmark size, run only with --bench-full "
                   "or WRITEWATCH_BENCH_FULL=1")


def _full(config):
    return config.getoption("--bench-full") or os.environ.get("WRITEWATCH_BENCH_FULL") == "1"


def pytest_collection_modifyitems(config, items):
    if _full(config):
        return
    skip = pytest.mark.skip(reason="large size: run with --bench-full or WRITEWATCH_BENCH_FULL=1")
    for item in items:
        if "full" in item.keywords:
            item.add_marker(skip)


def pytest_generate_tests(metafunc):
    # One parameter per backend, in preference order; an unavailable one is
    # skipped with its reason, so the output says why it was not measured.
    if "backend" in metafunc.fixturenames:
        params = []
        for b in writewatch.backends():
            marks = () if b.available else pytest.mark.skip(
                reason="backend %s unavailable: %s" % (b.name, b.reason))
            params.append(pytest.param(b.name, id=b.name, marks=marks))
        metafunc.parametrize("backend", params)
