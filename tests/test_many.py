"""writewatch.get_write_watch_many(): one call for many regions, the same
answers as one get_write_watch() each, on every backend and across them."""

import ctypes
import mmap
import random

import numpy as np
import pytest

import writewatch
from helpers import AVAILABLE, PAGE, run_python, write_pages, written


def _answers(regions, results):
    return [[(int(a) - r.address) // PAGE for a in res] for r, res in zip(regions, results)]


@pytest.mark.parametrize("seed", range(3))
def test_same_answers_as_one_call_each(backend, seed):
    rng = random.Random(seed)
    regions = [writewatch.Region(rng.choice((1, 2, 16, 40)) * PAGE, backend=backend)
               for _ in range(60)]
    try:
        order = regions[:]
        rng.shuffle(order)
        for _ in range(3):
            want = []
            for r in order:
                n = r.size // PAGE
                pages = sorted(rng.sample(range(n), rng.randrange(0, n + 1)))
                write_pages(r, pages)
                want.append(pages)
            assert _answers(order, writewatch.get_write_watch_many(order)) == want
            assert _answers(order, writewatch.get_write_watch_many(order, reset=True)) == want
            assert all(written(r) == [] for r in order)
    finally:
        for r in regions:
            r.close()


def test_every_backend_in_one_call():
    regions = [writewatch.Region(8 * PAGE, backend=b) for b in AVAILABLE for _ in range(3)]
    try:
        for i, r in enumerate(regions):
            write_pages(r, [i % 8])
        got = _answers(regions, writewatch.get_write_watch_many(regions, reset=True))
        assert got == [[i % 8] for i in range(len(regions))]
        assert all(len(x) == 0 for x in writewatch.get_write_watch_many(regions))
    finally:
        for r in regions:
            r.close()


def test_results_are_arrays_in_the_order_given(make_region):
    regions = [make_region(4) for _ in range(5)]
    write_pages(regions[3], [2])
    res = writewatch.get_write_watch_many(reversed(regions))
    assert len(res) == 5 and all(isinstance(x, np.ndarray) and x.dtype == np.uint64 for x in res)
    assert [int(a) for a in res[1]] == [regions[3].address + 2 * PAGE]
    assert writewatch.get_write_watch_many([]) == []


def test_bad_input(make_region):
    r = make_region(4)
    with pytest.raises(TypeError):
        writewatch.get_write_watch_many([r, object()])
    with pytest.raises(TypeError):
        writewatch.get_write_watch_many(5)
    with pytest.raises(ValueError, match="twice"):
        writewatch.get_write_watch_many([r, r])
    closed = make_region(4)
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        writewatch.get_write_watch_many([r, closed])
    write_pages(r, [1])
    assert written(r) == [1]            # nothing was reset by the refused calls


def test_a_region_unmapped_behind_the_back_fails_alone(backend):
    """Adjacent regions are scanned together; one unmapped behind the
    library's back fails with an error naming it, and the others' answers
    (reset included) are in the exception, not lost."""
    out = run_python(r'''
        import ctypes, sys
        import writewatch
        P = writewatch.PAGE_SIZE
        libc = ctypes.CDLL(None, use_errno=True)
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        regions = [writewatch.Region(4 * P, backend=sys.argv[1]) for _ in range(8)]
        for i, r in enumerate(regions):
            ctypes.c_uint8.from_address(r.address + (i % 4) * P).value = 1
        libc.munmap(regions[3].address, 4 * P)
        try:
            writewatch.get_write_watch_many(regions, reset=True)
        except writewatch.WriteWatchManyError as e:
            assert isinstance(e, OSError)
            assert list(e.failures) == [3], e.failures
            assert e.results[3] is None
            got = [[(int(a) - r.address) // P for a in x] for r, x in zip(regions, e.results) if x is not None]
            assert got == [[i % 4] for i in range(8) if i != 3], got
            print("failed alone:", e)
        else:
            raise AssertionError("no error")
        rest = [r for i, r in enumerate(regions) if i != 3]
        assert all(len(x) == 0 for x in writewatch.get_write_watch_many(rest)), "reset happened"
        print("DONE")
    ''', argv=[backend])
    assert "DONE" in out.stdout


def test_in_a_fork_child_the_parents_regions_refuse(backend):
    out = run_python(r'''
        import os, sys
        import writewatch
        regions = [writewatch.Region(4 * writewatch.PAGE_SIZE, backend=sys.argv[1]) for _ in range(3)]
        pid = os.fork()
        if pid == 0:
            try:
                writewatch.get_write_watch_many(regions)
            except writewatch.ForkedRegionError:
                os._exit(0)
            os._exit(1)
        assert os.waitpid(pid, 0)[1] == 0
        print("DONE")
    ''', argv=[backend])
    assert "DONE" in out.stdout
