"""Fixtures and hooks only; what tests share otherwise is in helpers.py.

Every contract test runs once per backend (the `backend` fixture).  A backend
that cannot run here is skipped with the probe's reason, so the reason shows
in pytest's summary (-ra)."""

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

