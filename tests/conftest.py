"""Shared fixtures: every contract test runs once per backend.

A backend that cannot run here is skipped with the probe's reason, so the
reason shows in pytest's summary (-ra)."""

import os

import numpy as np
import pytest

import writewatch

PAGE = writewatch.PAGE_SIZE
BACKENDS = [b.name for b in writewatch.backends()]
_INFO = {b.name: b for b in writewatch.backends()}


def require_backend(name):
    info = _INFO[name]
    if not info.available:
        pytest.skip("backend %r unavailable here: %s" % (name, info.reason))
    return name


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


def write_pages(region, pages, value=1):
    """Write one byte into each page index of `pages` (ground truth)."""
    view = np.frombuffer(region, dtype=np.uint8)
    try:
        for p in pages:
            view[p * PAGE + (p * 7) % PAGE] = value
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


@pytest.fixture(autouse=True)
def _no_env_backend(monkeypatch):
    """Tests choose backends explicitly; an outer WRITEWATCH_BACKEND must not leak in."""
    if "WRITEWATCH_BACKEND" in os.environ:
        monkeypatch.delenv("WRITEWATCH_BACKEND")
