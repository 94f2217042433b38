"""DeltaLog: the on-disk contract of issue 12.

Ground truth: the states the tests wrote (full copies), and an independent
decoder of the documented format (decode() below, written from
docs/snapshots.md, sharing no code with writewatch._deltalog).  Crash tests
SIGKILL a child appending in a loop; damage tests flip bits and truncate at
every offset of a small log."""

import os
import random
import select
import signal
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import writewatch
from writewatch._core import _crc32c
from helpers import PAGE, run_python, write_pages, written
from helpers import contents as state

CorruptLogError = writewatch.CorruptLogError


def put(region, page, data):
    """Write bytes at a page (through a short-lived view)."""
    v = np.frombuffer(region, dtype=np.uint8)
    try:
        v[page * PAGE:page * PAGE + len(data)] = np.frombuffer(data, dtype=np.uint8)
    finally:
        del v


def decode(path):
    """The documented format, read independently: (page size, region size,
    [(offset, number, flags, {page: bytes})]) for every complete record;
    stops at the first record that runs past the end of the file."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89WWDLOG\n"
    version, hsize, page, size = struct.unpack_from("<IIQQ", data, 8)
    assert (version, hsize) == (1, 64)
    assert data[32:60] == bytes(28)
    assert struct.unpack_from("<I", data, 60)[0] == _crc32c(data[:60])
    out = []
    o = 64
    while o + 48 <= len(data):
        magic, flags, number, n, body_size, body_crc = struct.unpack_from("<4sIQQQI", data, o)
        assert magic == b"WWRC"
        assert data[o + 36:o + 44] == bytes(8)
        assert struct.unpack_from("<I", data, o + 44)[0] == _crc32c(data[o:o + 44])
        assert body_size == n * (8 + page)
        body = data[o + 48:o + 48 + body_size]
        if len(body) < body_size:
            break
        assert _crc32c(body) == body_crc
        idx = struct.unpack_from("<%dQ" % n, body)
        assert list(idx) == sorted(set(idx))
        pages = {p: body[8 * n + i * page:8 * n + (i + 1) * page] for i, p in enumerate(idx)}
        out.append((o, number, flags, pages))
        o += 48 + body_size
    return page, size, out


def replay_model(records, upto, size, page):
    """The state after record `upto` from decoded records."""
    start = max(i for i in range(upto + 1) if records[i][2] & 1)
    buf = bytearray(size)
    for _, _, _, pages in records[start:upto + 1]:
        for p, b in pages.items():
            buf[p * page:(p + 1) * page] = b
    return bytes(buf)


@pytest.fixture
def logpath(tmp_path):
    return str(tmp_path / "region.wwlog")


# -- the format ---------------------------------------------------------------------

def test_header_and_records_are_as_documented(make_region, logpath):
    r = make_region(8)
    put(r, 2, b"before")                    # used before the log: in the first record
    states = []
    with writewatch.DeltaLog(logpath, r) as log:
        assert log.append() == 0
        states.append(state(r))
        write_pages(r, [5, 1])
        assert log.append(sync=False) == 1
        states.append(state(r))
        assert log.append() == 2            # nothing written: an empty record
        states.append(state(r))
    page, size, records = decode(logpath)
    assert (page, size) == (PAGE, 8 * PAGE)
    assert [(n, f, sorted(p)) for _, n, f, p in records] == [(0, 1, [2]), (1, 0, [1, 5]), (2, 0, [])]
    for k in range(3):
        assert replay_model(records, k, size, page) == states[k]


def test_a_fresh_region_logs_an_empty_full_record(make_region, logpath):
    r = make_region(64)
    with writewatch.DeltaLog(logpath, r) as log:
        log.append()
    _, _, records = decode(logpath)
    assert [(n, f, len(p)) for _, n, f, p in records] == [(0, 1, 0)]
    assert os.path.getsize(logpath) == 64 + 48


def test_reopening_continues_the_numbers_with_a_full_record(make_region, logpath):
    r = make_region(8)
    with writewatch.DeltaLog(logpath, r) as log:
        write_pages(r, [1])
        log.append()
        write_pages(r, [2])
        log.append()
    # The region changes while no log follows it: the next record must not
    # be a delta from the log's last state.
    write_pages(r, [6], value=9)
    with writewatch.DeltaLog(logpath, r) as log:
        assert log.append() == 2
        want = state(r)
        write_pages(r, [3])
        assert log.append() == 3
    _, _, records = decode(logpath)
    assert [(n, f) for _, n, f, _ in records] == [(0, 1), (1, 0), (2, 1), (3, 0)]
    assert sorted(records[2][3]) == [1, 2, 6]          # every non-zero page
    out = bytearray(8 * PAGE)
    assert writewatch.DeltaLog.replay(logpath, out, upto=2) == 2
    assert bytes(out) == want


# -- replay -------------------------------------------------------------------------

def test_replay_every_record_into_every_kind_of_target(backend, make_region, logpath):
    r = make_region(16)
    states = []
    with writewatch.DeltaLog(logpath, r) as log:
        rng = random.Random(3)
        for k in range(8):
            for p in rng.sample(range(16), 3):
                put(r, p, bytes([k + 1]) * rng.randrange(1, PAGE))
            if k == 5:
                put(r, 4, bytes(PAGE))      # a page back to zero
            assert log.append(sync=k % 2 == 0) == k
            states.append(state(r))
    target = make_region(16)
    put(target, 0, b"old contents everywhere" * 100)
    arr = np.full(16 * PAGE, 0xAB, dtype=np.uint8)
    for k in range(8):
        for into in (bytearray(b"\xff" * 16 * PAGE), arr, memoryview(bytearray(16 * PAGE)), target):
            assert writewatch.DeltaLog.replay(logpath, into, upto=k) == k
            got = state(into) if isinstance(into, writewatch.Region) else bytes(into)
            assert got == states[k], (k, type(into))
    assert writewatch.DeltaLog.replay(logpath, target) == 7
    assert state(target) == states[7]


def test_replay_into_a_region_writes_only_what_differs_from_zero(make_region, logpath):
    r = make_region(4096)
    write_pages(r, [10, 2000])
    with writewatch.DeltaLog(logpath, r) as log:
        log.append()
    target = make_region(4096)
    target.reset_write_watch()
    writewatch.DeltaLog.replay(logpath, target)
    assert written(target) == [10, 2000]    # no other page touched


def test_replay_refuses_bad_targets_and_numbers(make_region, logpath):
    r = make_region(4)
    with writewatch.DeltaLog(logpath, r) as log:
        log.append()
        log.append()
    with pytest.raises(ValueError, match="16384-byte region"):
        writewatch.DeltaLog.replay(logpath, bytearray(3 * PAGE))
    with pytest.raises(ValueError, match="16384-byte region"):
        writewatch.DeltaLog.replay(logpath, make_region(5))
    with pytest.raises(TypeError, match="writable"):
        writewatch.DeltaLog.replay(logpath, bytes(4 * PAGE))
    with pytest.raises(TypeError):
        writewatch.DeltaLog.replay(logpath, 12)
    with pytest.raises(ValueError, match="contiguous"):
        writewatch.DeltaLog.replay(logpath, np.zeros(8 * PAGE, dtype=np.uint8)[::2])
    for bad in (2, -1, 100):
        with pytest.raises(ValueError, match="records 0 to 1"):
            writewatch.DeltaLog.replay(logpath, bytearray(4 * PAGE), upto=bad)
    with pytest.raises(TypeError):
        writewatch.DeltaLog.replay(logpath, bytearray(4 * PAGE), upto=1.0)
    with pytest.raises(FileNotFoundError):
        writewatch.DeltaLog.replay(logpath + ".missing", bytearray(4 * PAGE))


def test_a_log_with_no_complete_record_has_nothing_to_replay(make_region, logpath):
    r = make_region(4)
    writewatch.DeltaLog(logpath, r).close()
    assert os.path.getsize(logpath) == 64
    out = bytearray(b"\x01" * 4 * PAGE)
    with pytest.raises(ValueError, match="no complete record"):
        writewatch.DeltaLog.replay(logpath, out)
    assert out == bytearray(b"\x01" * 4 * PAGE)     # untouched


# -- opening ---------------------------------------------------------------------------

def test_a_log_of_another_size_is_refused(make_region, logpath):
    with writewatch.DeltaLog(logpath, make_region(4)) as log:
        log.append()
    with pytest.raises(ValueError, match="16384-byte region, not of 20480"):
        writewatch.DeltaLog(logpath, make_region(5))


def test_a_file_that_is_not_a_log_is_refused(make_region, tmp_path):
    path = tmp_path / "other"
    path.write_bytes(b"hello world, this is not a delta log" * 4)
    with pytest.raises(CorruptLogError) as e:
        writewatch.DeltaLog(str(path), make_region(4))
    assert e.value.offset == 0
    assert isinstance(e.value, ValueError) and isinstance(e.value, writewatch.WriteWatchError)


def test_a_newer_format_version_is_refused_by_name(make_region, logpath):
    head = struct.pack("<8sIIQQ28x", b"\x89WWDLOG\n", 2, 64, PAGE, 4 * PAGE)
    with open(logpath, "wb") as f:
        f.write(head + struct.pack("<I", _crc32c(head)))
    with pytest.raises(ValueError, match="version 2"):
        writewatch.DeltaLog(logpath, make_region(4))
    with pytest.raises(ValueError, match="version 2"):
        writewatch.DeltaLog.replay(logpath, bytearray(4 * PAGE))


def test_an_empty_file_becomes_a_log(make_region, logpath):
    open(logpath, "wb").close()
    with writewatch.DeltaLog(logpath, make_region(4)) as log:
        assert log.append() == 0
    decode(logpath)


def test_one_appender_at_a_time(make_region, logpath):
    r = make_region(4)
    with writewatch.DeltaLog(logpath, r):
        with pytest.raises(BlockingIOError, match="another DeltaLog"):
            writewatch.DeltaLog(logpath, r)
    with writewatch.DeltaLog(logpath, r) as log:          # free again
        assert log.append() == 0


def test_region_must_be_a_region(logpath):
    with pytest.raises(TypeError, match="Region"):
        writewatch.DeltaLog(logpath, bytearray(PAGE))


# -- lifetime ---------------------------------------------------------------------------

def test_closed_log_refuses_appends_and_close_is_idempotent(make_region, logpath):
    r = make_region(4)
    log = writewatch.DeltaLog(logpath, r)
    log.append()
    log.close()
    log.close()
    assert log.closed
    with pytest.raises(ValueError, match="closed"):
        log.append()
    with pytest.raises(ValueError, match="closed"):
        log.__enter__()
    write_pages(r, [1])
    assert written(r) == [1]


def test_closing_the_region_closes_its_logs(make_region, logpath):
    r = make_region(4)
    log = writewatch.DeltaLog(logpath, r)
    snaps = writewatch.Snapshots(r)
    log.append(sync=False)
    r.close()
    assert log.closed and snaps.closed
    with pytest.raises(ValueError, match="closed"):
        log.append()
    decode(logpath)                         # the unsynced record was kept


def test_appends_hide_no_write_from_the_region(make_region, logpath):
    r = make_region(8)
    with writewatch.DeltaLog(logpath, r) as log:
        log.append()
        write_pages(r, [2])
        log.append()
        assert written(r) == [2]
        write_pages(r, [4])
        r.reset_write_watch()
        log.append()
    _, _, records = decode(logpath)
    assert sorted(records[2][3]) == [4]


def test_a_restore_is_logged_as_the_pages_it_rewrote(make_region, logpath):
    r = make_region(8)
    snaps = writewatch.Snapshots(r)
    with writewatch.DeltaLog(logpath, r) as log:
        snaps.save()
        log.append()
        write_pages(r, [1, 6])
        log.append()
        snaps.restore(0)
        log.append()
    _, _, records = decode(logpath)
    assert sorted(records[2][3]) == [1, 6]
    out = bytearray(8 * PAGE)
    writewatch.DeltaLog.replay(logpath, out)
    assert bytes(out) == bytes(8 * PAGE)
    snaps.close()


def test_writes_racing_append_land_in_that_record_or_the_next(make_region, logpath):
    n = 32
    r = make_region(n)
    view = np.frombuffer(r, dtype=np.uint64)
    stop = threading.Event()
    started = [0]
    log_ = []

    def writer():
        rng = random.Random(1)
        stamp = 0
        while not stop.is_set():
            p = rng.randrange(n)
            stamp += 1
            view[p * PAGE // 8] = stamp
            log_.append((p, stamp, started[0]))

    t = threading.Thread(target=writer)
    records = 0
    with writewatch.DeltaLog(logpath, r) as log:
        t.start()
        try:
            # Until enough writes raced the appends (slow writers on the
            # fault-based backends write less per append).
            while records < 60 or (len(log_) < 300 and records < 3000):
                started[0] = records + 1
                assert log.append(sync=False) == records
                records += 1
        finally:
            stop.set()
            t.join()
    del view
    out = bytearray(n * PAGE)
    states = {}
    for k in range(records):
        writewatch.DeltaLog.replay(logpath, out, upto=k)
        states[k] = np.frombuffer(bytes(out), dtype=np.uint64)[::PAGE // 8].copy()
    checked = 0
    for p, stamp, before in log_:
        if before in states:
            assert states[before][p] >= stamp, (p, stamp, before)
            checked += 1
    assert checked > 50


APPEND_FAILS = r"""
import os, resource, signal, sys, numpy as np, writewatch
P = writewatch.PAGE_SIZE
path, backend = sys.argv[1], sys.argv[2]
r = writewatch.Region(64 * P, backend=backend)
log = writewatch.DeltaLog(path, r)
log.append()
size = os.path.getsize(path)
v = np.frombuffer(r, dtype=np.uint8)
v[::P] = 7                      # 64 pages: a record of 256 KiB
del v
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100000, resource.RLIM_INFINITY))
try:
    log.append()
except OSError as e:
    print("failed", e.errno)
print("size kept", os.path.getsize(path) == size)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
print("next", log.append())     # the pages of the failed append are in this one
log.close()
out = bytearray(64 * P)
print("replay", writewatch.DeltaLog.replay(path, out), bytes(out) == bytes(r))
"""


def test_a_failed_append_leaves_nothing_and_loses_no_page(backend, tmp_path):
    import errno
    path = str(tmp_path / "full.wwlog")
    p = run_python(APPEND_FAILS, argv=[path, backend], timeout=60)
    assert p.stdout.split("\n")[:4] == ["failed %d" % errno.EFBIG, "size kept True",
                                        "next 1", "replay 1 True"]


# -- damage ---------------------------------------------------------------------------------

@pytest.fixture
def region3():
    """A 3-page region on the default backend: the damage tests check the
    file format, which no backend changes."""
    r = writewatch.Region(3 * PAGE)
    yield r
    r.close()


def small_log(r, logpath):
    """A small log with deltas, an empty record and a second FULL record
    (after reopening); returns (states by record number, end offsets)."""
    states, ends = [], []

    def append(log):
        states.append(state(r))
        assert log.append() == len(ends)
        ends.append(os.path.getsize(logpath))

    with writewatch.DeltaLog(logpath, r) as log:
        put(r, 0, b"zero")
        append(log)
        put(r, 2, b"two" * 10)
        append(log)
        append(log)
    put(r, 1, b"one")
    with writewatch.DeltaLog(logpath, r) as log:
        append(log)
        put(r, 0, b"ZERO")
        append(log)
    return states, ends


def test_every_truncation_replays_the_last_complete_record(region3, logpath):
    states, ends = small_log(region3, logpath)
    data = open(logpath, "rb").read()
    out = bytearray(3 * PAGE)
    for cut in range(len(data) - 1, -1, -1):          # shorter and shorter
        os.truncate(logpath, cut)
        complete = [k for k, e in enumerate(ends) if e <= cut]
        if cut < 64:
            with pytest.raises(CorruptLogError):
                writewatch.DeltaLog.replay(logpath, out)
            continue
        if not complete:
            with pytest.raises(ValueError, match="no complete record"):
                writewatch.DeltaLog.replay(logpath, out)
        else:
            assert writewatch.DeltaLog.replay(logpath, out) == complete[-1], cut
            assert bytes(out) == states[complete[-1]], cut
        if cut % 997 == 0 or cut in ends or cut + 1 in ends:
            # Opening cuts the torn tail; appending goes on after it.
            with writewatch.DeltaLog(logpath, region3) as log:
                assert os.path.getsize(logpath) == (ends[complete[-1]] if complete else 64)
                assert log.append() == len(complete)
            with open(logpath, "wb") as f:
                f.write(data[:cut])


def test_every_bit_flip_is_caught_or_harmless(region3, logpath):
    """A flipped bit anywhere raises CorruptLogError, or (in a record the
    replay does not need) leaves the replay of the last record right."""
    states, ends = small_log(region3, logpath)
    data = open(logpath, "rb").read()
    out = bytearray(3 * PAGE)
    rng = random.Random(0)
    caught = 0
    fd = os.open(logpath, os.O_RDWR)
    try:
        for off in range(len(data)):
            os.pwrite(fd, bytes([data[off] ^ 1 << rng.randrange(8)]), off)
            try:
                n = writewatch.DeltaLog.replay(logpath, out)
            except CorruptLogError as e:
                assert e.offset <= off
                caught += 1
            else:
                assert n == len(ends) - 1 and bytes(out) == states[-1], off
                # Only the bodies of the records before the second FULL one
                # go unread.
                assert 64 <= off < ends[2], off
            os.pwrite(fd, data[off:off + 1], off)
    finally:
        os.close(fd)
    assert caught >= len(data) - ends[2]


def test_a_damaged_record_before_the_tail_names_its_offset(region3, logpath):
    states, ends = small_log(region3, logpath)
    data = bytearray(open(logpath, "rb").read())
    data[ends[3] + 48 + 8 + 100] ^= 0x10        # the body of record 4
    with open(logpath, "wb") as f:
        f.write(data)
    with pytest.raises(CorruptLogError, match="offset %d" % ends[3]) as e:
        writewatch.DeltaLog.replay(logpath, bytearray(3 * PAGE))
    assert e.value.offset == ends[3] and e.value.path == logpath
    with pytest.raises(CorruptLogError):
        writewatch.DeltaLog(logpath, region3)          # no appending after damage
    assert writewatch.DeltaLog.replay(logpath, bytearray(3 * PAGE), upto=3) == 3


def test_a_zero_filled_tail_is_a_torn_tail(region3, logpath):
    """A crash that extended the file without writing it."""
    states, ends = small_log(region3, logpath)
    with open(logpath, "ab") as f:
        f.write(bytes(5000))
    out = bytearray(3 * PAGE)
    assert writewatch.DeltaLog.replay(logpath, out) == 4
    with writewatch.DeltaLog(logpath, region3):
        assert os.path.getsize(logpath) == ends[-1]


# -- crashes -----------------------------------------------------------------------------

# The child and the parent share the writes of each step, so the parent can
# compute the state after any record.
STEP = r"""
import numpy as np
NPAGES = 2048
def step(mem, k, page):
    rng = np.random.default_rng(k)
    rows = mem.reshape(NPAGES, page)
    pages = rng.choice(NPAGES, 512 + k % 512, replace=False)
    rows[pages, rng.integers(0, page)] = (k * 7 + pages) % 251 + 1
"""

CHILD = STEP + r"""
import sys, writewatch
path, backend = sys.argv[1], sys.argv[2]
P = writewatch.PAGE_SIZE
r = writewatch.Region(NPAGES * P, backend=backend)
log = writewatch.DeltaLog(path, r)
print("ready", flush=True)
k = 0
while True:
    v = np.frombuffer(r, dtype=np.uint8)
    step(v, k, P)
    del v
    assert log.append(sync=k % 4 == 3) == k
    print(k, flush=True)
    k += 1
"""


def crash_runs():
    return int(os.environ.get("WRITEWATCH_CRASH_RUNS", "8"))


def test_sigkill_during_appends_leaves_a_log_of_complete_records(backend, tmp_path):
    """A child appends in a loop and is SIGKILLed at a random moment; the
    log replays to the state after a record it completed (the last one it
    reported, or the one in flight), and opening it again cuts the tail and
    goes on.  WRITEWATCH_CRASH_RUNS sets the number of runs (8)."""
    ns = {}
    exec(STEP, ns)
    step, npages = ns["step"], ns["NPAGES"]
    rng = random.Random(os.getpid())
    expected = {}

    def state_after(n):
        if n not in expected:
            mem = np.zeros(npages * PAGE, dtype=np.uint8)
            for k in range(n + 1):
                step(mem, k, PAGE)
            expected[n] = mem.tobytes()
        return expected[n]

    r = writewatch.Region(npages * PAGE, backend=backend)
    try:
        for run in range(crash_runs()):
            path = str(tmp_path / ("crash%d.wwlog" % run))
            child = subprocess.Popen([sys.executable, "-c", CHILD, path, backend],
                                     stdout=subprocess.PIPE, text=True)
            try:
                # Never hang the suite on a child that hangs before "ready".
                assert select.select([child.stdout], [], [], 60)[0], "child never ready"
                assert child.stdout.readline().strip() == "ready"
                time.sleep(rng.uniform(0, 0.15))
                child.send_signal(signal.SIGKILL)
                lines = child.stdout.read().split()
            finally:
                child.kill()
                child.wait(30)
            reported = int(lines[-1]) if lines else -1
            out = bytearray(npages * PAGE)
            try:
                n = writewatch.DeltaLog.replay(path, out)
            except ValueError as e:
                assert "no complete record" in str(e) and reported == -1
                n = -1
            else:
                assert reported <= n <= reported + 1
                assert bytes(out) == state_after(n), (run, n)
            with writewatch.DeltaLog(path, r) as log:
                assert log.append() == n + 1
            if n >= 0:
                assert writewatch.DeltaLog.replay(path, out, upto=n) == n
                assert bytes(out) == state_after(n)
    finally:
        r.close()


def test_the_record_checksum_is_crc32c():
    """CRC-32C, with the hardware instruction and without: the check value,
    continuation, and agreement on odd lengths and alignments."""
    import random
    assert _crc32c(b"123456789") == 0xE3069283
    assert _crc32c(b"123456789", software=True) == 0xE3069283
    assert _crc32c(b"") == 0 and _crc32c(b"", 0x1234) == 0x1234
    assert _crc32c(b"6789", _crc32c(b"12345")) == 0xE3069283
    rng = random.Random(7)
    data = bytes(rng.randrange(256) for _ in range(5000))
    for start in range(9):
        for n in (0, 1, 7, 8, 9, 63, 4096, 4991 - start):
            piece = memoryview(data)[start:start + n]
            assert _crc32c(piece) == _crc32c(piece, software=True), (start, n)
