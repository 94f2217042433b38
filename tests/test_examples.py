"""The examples run, and check what they claim, on every backend."""

import os

import pytest

from helpers import BACKENDS, ROOT, require_backend, run_python

EXAMPLES = os.path.join(ROOT, "examples")


@pytest.mark.parametrize("name", BACKENDS)
def test_rollback_example(name):
    """examples/rollback.py: a peer whose partner's inputs arrive late rolls
    back and re-simulates; it exits non-zero unless its final state is
    byte-equal to the run where every input was on time."""
    require_backend(name)
    p = run_python(script=os.path.join(EXAMPLES, "rollback.py"),
                   argv=["--frames", "80", "--side", "512", "--delay", "3", "--backend", name],
                   timeout=120)
    assert "byte-equal to the on-time run: yes" in p.stdout
    rollbacks = int(p.stdout.split("rollbacks")[1].split()[0])
    assert rollbacks > 0                    # the run did roll back
    assert "backend %s" % name in p.stdout
