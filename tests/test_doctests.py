"""The examples in the public docstrings run and say what they show
(numpydoc's Examples sections: help() must not lie)."""

import doctest

import pytest

import writewatch
import writewatch._core
import writewatch.win32


@pytest.mark.parametrize("module", [writewatch._core, writewatch.win32],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module, monkeypatch):
    monkeypatch.delenv("WRITEWATCH_BACKEND", raising=False)
    if not writewatch.default_backend():
        pytest.skip("no backend")
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert attempted > 0
    assert failed == 0


def test_help_shows_the_true_signature():
    import inspect
    assert str(inspect.signature(writewatch.Region)) == "(size, *, backend=None, address=None)"
    sig = inspect.signature(writewatch.Region.get_write_watch)
    assert str(sig) == "(self, address=None, size=None, *, reset=False, max_count=None, out=None)"
    assert str(inspect.signature(writewatch.get_write_watch_many)) == "(regions, *, reset=False)"
    assert writewatch.Region.closed.__doc__
