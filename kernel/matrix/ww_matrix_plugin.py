"""pytest plugin loaded inside the matrix's QEMU guests (-p ww_matrix_plugin).

Under TCG the guest runs 10-20x slower than native, so hypothesis's
per-example deadline (wall clock) and its too_slow health check would fail
tests for the emulator's speed, not for writewatch's behaviour.  After the
project's conftest files have chosen their hypothesis profile, this loads a
copy of it without the deadline and that health check; everything else (the
number of examples, the other checks) stays as the suite has it.
"""

import platform

import pytest


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:      # the suite does not use hypothesis
        return
    current = settings()
    suppressed = set(current.suppress_health_check) | {HealthCheck.too_slow}
    settings.register_profile("ww-matrix", parent=current, deadline=None,
                              suppress_health_check=sorted(suppressed, key=lambda h: h.value))
    settings.load_profile("ww-matrix")


def pytest_report_header(config):
    return "writewatch kernel matrix guest: Linux %s" % platform.release()
