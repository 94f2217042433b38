"""The core's trackers (writewatch._core._Tracker, under Snapshots and
DeltaLog): several consumers of one region's written state, each seeing
every write since its own last reset, whatever the others reset."""

import threading

import numpy as np
import pytest

import writewatch
from helpers import PAGE, write_pages, written
from writewatch._core import _Tracker


def tracked(t, region):
    return [(int(a) - region.address) // PAGE for a in t.collect(reset=False)]


def test_a_tracker_sees_writes_made_after_it(make_region):
    r = make_region(16)
    write_pages(r, [1])                         # before: the region's own only
    t = _Tracker(r)
    write_pages(r, [4])
    assert tracked(t, r) == [4]
    assert written(r) == [1, 4]
    t.close()


def test_resets_of_one_consumer_hide_nothing_from_the_others(make_region):
    r = make_region(32)
    a, b = _Tracker(r), _Tracker(r)
    write_pages(r, [2, 9])
    assert written(r, reset=True) == [2, 9]     # the region's own reset ...
    assert tracked(a, r) == [2, 9]              # ... hides nothing from a
    assert [(int(x) - r.address) // PAGE for x in a.collect()] == [2, 9]
    assert tracked(a, r) == []                  # a's reset ...
    assert tracked(b, r) == [2, 9]              # ... hides nothing from b
    write_pages(r, [5])
    r.reset_write_watch()
    assert written(r) == []
    assert tracked(a, r) == [5] and tracked(b, r) == [2, 5, 9]
    b.reset(r.address + 4 * PAGE, 8 * PAGE)     # forget pages 4..11
    assert tracked(b, r) == [2]
    b.mark(r.address + 30 * PAGE, 2 * PAGE)
    assert tracked(b, r) == [2, 30, 31] and written(r) == [] and tracked(a, r) == [5]
    a.close()
    b.close()


def test_the_regions_own_calls_keep_their_semantics_with_trackers(make_region):
    r = make_region(64)
    t = _Tracker(r)
    write_pages(r, [3, 10, 11, 40])
    assert written(r, max_count=2, reset=True) == [3, 10]
    assert written(r) == [11, 40]
    assert written(r, address=r.address + 11 * PAGE, size=PAGE) == [11]
    out = np.zeros(1, dtype=np.uint64)
    assert [int(a) for a in r.get_write_watch(out=out, reset=True)] == [r.address + 11 * PAGE]
    assert written(r) == [40]
    assert tracked(t, r) == [3, 10, 11, 40]
    t.close()
    assert written(r) == [40]                   # closing the tracker keeps it


def test_closing_the_region_closes_the_trackers_owner(backend):
    class Owner:
        closed = False

        def __init__(self, region):
            self.t = _Tracker(region, owner=self)

        def close(self):
            self.closed = True
            self.t.close()

    r = writewatch.Region(8 * PAGE, backend=backend)
    o = Owner(r)
    r.close()
    assert o.closed and o.t.closed and r.closed
    with pytest.raises(ValueError):
        o.t.collect()


def test_bad_calls(make_region):
    r = make_region(4)
    t = _Tracker(r)
    with pytest.raises(ValueError):
        t.reset(r.address, 10 * PAGE)
    with pytest.raises(TypeError):
        t.reset("x")
    t.close()
    t.close()
    with pytest.raises(ValueError):
        t.collect()
    with pytest.raises(TypeError):
        _Tracker(object())


def test_no_write_is_lost_to_a_tracker_under_racing_resets(make_region):
    """Writer threads (numpy stores, GIL released by none but fine) against
    the region's own get-and-reset loop: every write a tracker's collect
    should see is there."""
    n = 64
    r = make_region(n)
    t = _Tracker(r)
    stop = threading.Event()
    done = [0] * n

    def writer(k):
        v = np.frombuffer(r, dtype=np.uint8)
        i = 0
        while not stop.is_set():
            p = (k * 16 + i) % n
            v[p * PAGE] = (int(v[p * PAGE]) + 1) & 0xFF
            done[p] += 1
            i += 1
        del v

    def resetter():
        while not stop.is_set():
            r.get_write_watch(reset=True)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    threads.append(threading.Thread(target=resetter))
    for th in threads:
        th.start()
    seen = set()
    for _ in range(200):
        seen.update(tracked(t, r))
        t.collect()
    stop.set()
    for th in threads:
        th.join()
    seen.update(tracked(t, r))
    assert seen == {p for p in range(n) if done[p]}
    t.close()
