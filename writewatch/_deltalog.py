"""DeltaLog: a region's written pages appended to a file, record by record.

The format (little-endian; docs/snapshots.md describes it for readers in
other languages)::

    file header, 64 bytes
      0  magic             8 bytes  b"\\x89WWDLOG\\n"
      8  format version    u32      1
     12  header size       u32      64
     16  page size         u64      bytes per page of the records
     24  region size       u64      bytes; a multiple of the page size
     32  reserved          28 bytes zero
     60  header crc        u32      CRC-32C of bytes 0-59

    records, back to back from offset 64
      0  magic             4 bytes  b"WWRC"
      4  flags             u32      bit 0 FULL: the record replaces the
                                    state (pages it lacks are zero); the
                                    other bits are zero
      8  number            u64      0, 1, 2, ... in file order
     16  page count n      u64
     24  body size         u64      8 n + n * page size
     32  body crc          u32      CRC-32C of the body
     36  reserved          8 bytes  zero
     44  header crc        u32      CRC-32C of bytes 0-43 of the record
     48  body: n page indexes (u64, strictly ascending, below region size /
         page size), then the n pages' bytes in the same order

The state after record k: start from the last FULL record at or before k
(record 0 is always FULL), then apply each later record up to k -- each
page of a record replaces that page.

Crashes.  A record is written with one pwrite() at the end of the last
complete record, then fdatasync()ed (append(sync=True)).  A process killed
during append() leaves at most a *torn tail*: a record whose header or body
runs past the end of the file (or, from a crash that extended the file
without writing it, a tail of zero bytes).  Readers ignore a torn tail; a
DeltaLog opened on the file cuts it off.  Anything else that does not check
out -- a header or body checksum mismatch in a record that is all there, a
number out of sequence, indexes not ascending -- is damage, and raises
CorruptLogError naming the offset: a log never replays to a state that was
not written.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import struct
import tempfile
import threading
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from typing import SupportsIndex

    from typing_extensions import Buffer

from writewatch._core import (Region, _crc32c, _gather_pages, _nonzero_pages, _put_pages,
                              _Tracker)
from writewatch._errors import CorruptLogError

__all__ = ["DeltaLog"]

MAGIC = b"\x89WWDLOG\n"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ28x")          # + CRC-32C u32 = 64 bytes
HEADER_SIZE = HEADER.size + 4
RECORD_MAGIC = b"WWRC"
RECORD = struct.Struct("<4sIQQQI8x")          # + CRC-32C u32 = 48 bytes
RECORD_SIZE = RECORD.size + 4
FULL = 1
_CHUNK_PAGES = 1024                            # pages read per step of a replay
_READ_WHOLE = 64 << 20                         # replays using less are read once, whole


def _u32(b):
    return struct.unpack("<I", b)[0]


class _Record:
    __slots__ = ("offset", "number", "flags", "n", "body_size", "body_crc")

    def __init__(self, offset, number, flags, n, body_size, body_crc):
        self.offset = offset
        self.number = number
        self.flags = flags
        self.n = n
        self.body_size = body_size
        self.body_crc = body_crc


class _LogReader:
    """Reads a log's header and record headers; checks bodies on request."""

    def __init__(self, fd, path):
        self.fd = fd
        self.path = path
        self.file_size = os.fstat(fd).st_size
        self._read_header()

    def _pread(self, size, offset):
        out = bytearray()
        while len(out) < size:
            chunk = os.pread(self.fd, size - len(out), offset + len(out))
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def _read_header(self):
        head = self._pread(HEADER_SIZE, 0)
        if len(head) < HEADER_SIZE or head[:8] != MAGIC:
            raise CorruptLogError(self.path, 0, "not a writewatch delta log "
                                  "(no complete header with its magic)")
        if _crc32c(head[:HEADER.size]) != _u32(head[HEADER.size:]):
            raise CorruptLogError(self.path, 0, "file header checksum mismatch")
        _, version, hsize, page, size = HEADER.unpack(head[:HEADER.size])
        if version != VERSION:
            raise ValueError("%s: delta log format version %d; this writewatch reads "
                             "version %d" % (self.path, version, VERSION))
        if (hsize != HEADER_SIZE or page < 512 or page & (page - 1)
                or size == 0 or size % page):
            raise CorruptLogError(self.path, 0, "file header holds impossible values "
                                  "(header size %d, page size %d, region size %d)"
                                  % (hsize, page, size))
        self.page = page
        self.size = size
        self.npages = size // page

    def walk(self):
        """(records, end, torn): every complete record (headers checked,
        bodies not), the offset just past the last one, and whether a torn
        tail follows it.  Raises CorruptLogError on damage."""
        records = []
        o = HEADER_SIZE
        while o < self.file_size:
            if self.file_size - o < RECORD_SIZE:
                return records, o, True
            head = self._pread(RECORD_SIZE, o)
            if head[:4] != RECORD_MAGIC or _crc32c(head[:RECORD.size]) != _u32(head[RECORD.size:]):
                if self._zero_tail(o):
                    return records, o, True
                raise CorruptLogError(self.path, o, "record header checksum mismatch")
            _, flags, number, n, body_size, body_crc = RECORD.unpack(head[:RECORD.size])
            if number != len(records):
                raise CorruptLogError(self.path, o, "record number %d where %d was due"
                                      % (number, len(records)))
            if flags & ~FULL or n > self.npages or body_size != n * (8 + self.page):
                raise CorruptLogError(self.path, o, "record header holds impossible values "
                                      "(flags %#x, %d pages, body of %d bytes)"
                                      % (flags, n, body_size))
            if not records and not flags & FULL:
                raise CorruptLogError(self.path, o, "the first record does not hold "
                                      "the full state")
            if o + RECORD_SIZE + body_size > self.file_size:
                return records, o, True
            records.append(_Record(o, number, flags, n, body_size, body_crc))
            o += RECORD_SIZE + body_size
        return records, o, False

    def _zero_tail(self, o):
        """Whether every byte from `o` to the end of the file is zero: a
        crash extended the file without writing it (a torn tail)."""
        while o < self.file_size:
            chunk = self._pread(min(1 << 20, self.file_size - o), o)
            if not chunk:
                return True
            if chunk.count(0) != len(chunk):
                return False
            o += len(chunk)
        return True

    def body(self, rec, apply=None):
        """Check a record's body (checksum, page indexes), reading it in
        chunks; with `apply`, call apply(indexes, pages) for each chunk.
        Only apply a body that checked out in an earlier call: a failure
        midway leaves the chunks applied so far."""
        start = rec.offset + RECORD_SIZE
        raw = self._pread(8 * rec.n, start)
        if len(raw) != 8 * rec.n:
            raise CorruptLogError(self.path, rec.offset, "record body shorter than its header says")
        crc = _crc32c(raw)
        idx = np.frombuffer(raw, dtype="<u8")
        bad = not self._ascending(idx)
        pos = start + 8 * rec.n
        buf = np.empty(min(rec.n, _CHUNK_PAGES) * self.page, dtype=np.uint8)
        for first in range(0, rec.n, _CHUNK_PAGES):
            k = min(_CHUNK_PAGES, rec.n - first)
            view = memoryview(buf)[:k * self.page]
            got = 0
            while got < len(view):
                more = os.preadv(self.fd, [view[got:]], pos + got)
                if more <= 0:
                    raise CorruptLogError(self.path, rec.offset,
                                          "record body shorter than its header says")
                got += more
            crc = _crc32c(view, crc)
            if apply is not None and not bad:
                apply(idx[first:first + k], buf[:k * self.page].reshape(k, self.page))
            pos += k * self.page
        self._check_body(rec, crc, bad)

    def read_indexes(self, rec):
        """A checked record's page indexes."""
        return np.frombuffer(self._pread(8 * rec.n, rec.offset + RECORD_SIZE), dtype="<u8")

    def read_body(self, rec):
        """A record's checked body, read whole: (indexes, pages as rows)."""
        data = self._pread(rec.body_size, rec.offset + RECORD_SIZE)
        if len(data) != rec.body_size:
            raise CorruptLogError(self.path, rec.offset, "record body shorter than its header says")
        idx = np.frombuffer(data, dtype="<u8", count=rec.n)
        self._check_body(rec, _crc32c(data), not self._ascending(idx))
        pages = np.frombuffer(data, dtype=np.uint8, offset=8 * rec.n).reshape(rec.n, self.page)
        return idx, pages

    def _ascending(self, idx):
        return idx.size == 0 or (int(idx[-1]) < self.npages
                                 and bool((idx[1:] > idx[:-1]).all()))

    def _check_body(self, rec, crc, bad):
        if crc != rec.body_crc:
            raise CorruptLogError(self.path, rec.offset, "record %d: body checksum mismatch"
                                  % rec.number)
        if bad:
            raise CorruptLogError(self.path, rec.offset, "record %d: page indexes not "
                                  "ascending or past the region" % rec.number)


class DeltaLog:
    """DeltaLog(path, region)

    An append-only file of `region`'s written pages, one checksummed record
    per ``append()``, crash-safe.

    Makes the file (its header records the format version, the page size
    and the region's size), or opens an existing log of a region of this
    size, cutting off a torn tail a crash may have left.  The first record
    appended after opening holds every non-zero page of the region and
    replaces the state (the region need not hold the log's last state);
    each later one holds the pages written since the previous append.

    `path` is a str, bytes or os.PathLike (``path`` gives it back as a
    str).  Raises ValueError if an existing log was made for a region of
    another size or page size, CorruptLogError if it is damaged,
    BlockingIOError if another DeltaLog has it open, and OSError for what
    the file system refuses.  Closing the region closes its DeltaLogs
    first.
    """

    def __init__(self, path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
                 region: Region) -> None:
        if not isinstance(region, Region):
            raise TypeError("region must be a writewatch.Region, not %s"
                            % type(region).__name__)
        self._path = os.fsdecode(path)            # bytes too, as os.open takes them
        self._region = region
        self._lock = threading.Lock()
        self._fd = -1
        self._tracker = None
        self._buf = np.empty(0, dtype=np.uint8)
        self._closed = True
        if region.closed:
            raise ValueError("operation on a closed Region")
        page, size = region.page_size, region.size
        fd = self._open_or_create(page, size)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BlockingIOError(errno.EWOULDBLOCK, "%s is open for appending by "
                                      "another DeltaLog" % self._path) from None
            reader = _LogReader(fd, self._path)
            if reader.page != page:
                raise ValueError("%s is a log of %d-byte pages; this region's pages are "
                                 "%d bytes" % (self._path, reader.page, page))
            if reader.size != size:
                raise ValueError("%s is a log of a %d-byte region, not of %d bytes"
                                 % (self._path, reader.size, size))
            records, end, torn = reader.walk()
            if records:
                reader.body(records[-1])       # appending after damage would bury it
            if torn:
                os.ftruncate(fd, end)
                os.fsync(fd)
            self._end = end
            self._next = len(records)
            self._full_next = True
            self._unsynced = False
            self._tracker = _Tracker(region, self)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._closed = False

    def _open_or_create(self, page, size):
        flags = os.O_RDWR | os.O_CLOEXEC
        try:
            fd = os.open(self._path, flags)
        except FileNotFoundError:
            if not self._path:
                raise             # "" names no file (and its "directory" is not the cwd)
        else:
            if os.fstat(fd).st_size == 0:         # made empty by someone: ours to fill
                try:
                    os.pwrite(fd, self._header(page, size), 0)
                    os.fsync(fd)
                except BaseException:
                    os.close(fd)
                    raise
            return fd
        # A new file appears whole or not at all: its header is written and
        # synced under a temporary name, then linked into place.
        d = os.path.dirname(os.path.abspath(self._path))
        tfd, tmp = tempfile.mkstemp(dir=d, prefix=os.path.basename(self._path) + ".",
                                    suffix=".tmp")
        try:
            os.write(tfd, self._header(page, size))
            os.fsync(tfd)
            try:
                os.link(tmp, self._path)
            except FileExistsError:
                pass                                   # made meanwhile: open that one
            except OSError:
                if not os.path.exists(self._path):     # no hard links here
                    os.rename(tmp, self._path)
        finally:
            os.close(tfd)
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        dfd = os.open(d, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return os.open(self._path, flags)

    @staticmethod
    def _header(page, size):
        head = HEADER.pack(MAGIC, VERSION, HEADER_SIZE, page, size)
        return head + struct.pack("<I", _crc32c(head))

    # -- properties ----------------------------------------------------------

    @property
    def path(self) -> str:
        """The log file's path."""
        return self._path

    @property
    def region(self) -> Region:
        """The Region whose writes are logged."""
        return self._region

    @property
    def closed(self) -> bool:
        """True once close() ran (or the region closed)."""
        return self._closed

    def __repr__(self):
        state = "closed" if self._closed else "next record %d" % self._next
        return "<writewatch.DeltaLog %r, %s>" % (self._path, state)

    def _check(self):
        if self._closed:
            raise ValueError("operation on a closed DeltaLog")

    # -- appending -----------------------------------------------------------

    def append(self, sync: bool = True) -> int:
        """Write the pages written since the previous append (the first time:
        every non-zero page, as a record that replaces the state) as one
        record, and return its number: 0, 1, 2, ... in file order.  With
        `sync`, the record is on stable storage when this returns
        (fdatasync); without, it is at the next synced append or close().
        A write racing this call lands in this record or the next, never in
        neither.  On failure (a full disk...) nothing is appended and the
        pages count as written for the next append.
        """
        with self._lock:
            self._check()
            region = self._region
            addrs = self._tracker.collect(reset=True)
            flags = 0
            if self._full_next:
                # After the get-and-reset above: a page written while the
                # scan runs is in this record or not, and in the next one.
                addrs = _nonzero_pages(region)
                flags = FULL
            n = len(addrs)
            page = region.page_size
            body = n * (8 + page)
            total = RECORD_SIZE + body
            try:
                if self._buf.size < total:
                    self._buf = np.empty(max(total, 2 * self._buf.size), dtype=np.uint8)
                buf = self._buf
                mv = memoryview(buf)
                shift = page.bit_length() - 1
                idx = ((addrs - np.uint64(region.address)) >> np.uint64(shift)).astype("<u8")
                buf[RECORD_SIZE:RECORD_SIZE + 8 * n] = idx.view(np.uint8)
                # The pages are copied and checksummed in one pass: the CRC
                # is of the bytes written to the file.
                crc = _gather_pages(region, addrs, mv[RECORD_SIZE + 8 * n:total],
                                    _crc32c(mv[RECORD_SIZE:RECORD_SIZE + 8 * n]))
                head = RECORD.pack(RECORD_MAGIC, flags, self._next, n, body, crc)
                buf[:RECORD_SIZE] = np.frombuffer(
                    head + struct.pack("<I", _crc32c(head)), dtype=np.uint8)
                self._write_all(mv[:total], self._end)
                if sync:
                    os.fdatasync(self._fd)
                del mv
            except BaseException:
                try:
                    os.ftruncate(self._fd, self._end)
                except OSError:
                    pass                    # the next append writes over it
                if not flags & FULL and n and not self._tracker.closed:
                    self._tracker.mark_pages(addrs)
                raise
            self._end += total
            number = self._next
            self._next += 1
            self._full_next = False
            self._unsynced = not sync
            return number

    def _write_all(self, view, offset):
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], offset + done)

    # -- lifetime ------------------------------------------------------------

    def close(self) -> None:
        """Sync what append(sync=False) left unsynced, stop following the
        region, close the file.  Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            err = None
            if self._unsynced:
                try:
                    os.fdatasync(self._fd)
                except OSError as e:
                    err = e
            if self._tracker is not None:
                self._tracker.close()
            os.close(self._fd)
            self._fd = -1
            if err is not None:
                raise err

    def __enter__(self) -> DeltaLog:
        self._check()
        return self

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False

    def __del__(self):
        if getattr(self, "_fd", -1) >= 0:
            try:
                self.close()
            except Exception:
                pass

    # -- replaying -----------------------------------------------------------

    @staticmethod
    def replay(path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
               into: Region | Buffer,
               upto: SupportsIndex | None = None) -> int:
        """Write the state after record `upto` (default: the last complete
        record) into `into` -- a Region or any writable, contiguous buffer
        of the logged region's size -- and return that record's number.
        Only pages that differ from zero or are in the records are written.

        Every record used is checked before `into` is touched: on
        CorruptLogError (damage, with its offset) `into` is unchanged.  A
        torn tail is ignored.  Raises ValueError if `into` has another size,
        if `upto` is not a complete record's number, or if the log holds no
        complete record (nothing was appended, or the first append did not
        complete); TypeError if `into` is read-only or holds Python objects
        (a numpy object array, a ctypes py_object array: bytes written over
        object pointers would crash the interpreter); OSError for what the
        file system refuses.  A refused call keeps no view of `into`.
        """
        path = os.fsdecode(path)
        target = _Target(into)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            target.release()      # no view of `into` outlives the call, traceback or not
            raise
        try:
            reader = _LogReader(fd, path)
            if target.nbytes != reader.size:
                raise ValueError("%s is a log of a %d-byte region; `into` holds %d bytes"
                                 % (path, reader.size, target.nbytes))
            records, _, _ = reader.walk()
            if not records:
                raise ValueError("%s holds no complete record: nothing to replay" % path)
            last = records[-1].number
            if upto is None:
                number = last
            else:
                number = _record_number(upto)
                if not 0 <= number <= last:
                    raise ValueError("upto=%d: %s holds records 0 to %d"
                                     % (number, path, last))
            start = number
            while not records[start].flags & FULL:
                start -= 1
            used = records[start:number + 1]
            # Every record used is checked before `into` is touched.
            if sum(rec.body_size for rec in used) <= _READ_WHOLE:
                bodies = [reader.read_body(rec) for rec in used]
                target.zero_outside(reader, bodies[0][0])
                for idx, pages in bodies:
                    target.write(idx, pages)
            else:
                for rec in used:                      # check, then read again to apply
                    reader.body(rec)
                target.zero_outside(reader, reader.read_indexes(used[0]))
                for rec in used:
                    reader.body(rec, target.write)
            return number
        finally:
            os.close(fd)
            target.release()


_FIELD_NAMES = re.compile(r":[^:]*:")


def _holds_objects(fmt):
    """Whether a buffer of struct format `fmt` holds Python object pointers
    ('O', also as a field of a structure, 'T{O:a:...}')."""
    return "O" in _FIELD_NAMES.sub("", fmt)


def _record_number(value):
    if isinstance(value, float) or not hasattr(type(value), "__index__"):
        raise TypeError("upto must be an integer or None, not %s" % type(value).__name__)
    return value.__index__()


class _Target:
    """Where a replay writes: a Region (through its address, so that no
    view of it outlives the call, whatever a traceback keeps) or a
    writable contiguous buffer."""

    def __init__(self, into):
        self.region = None
        self.mem = None
        self.page = 0
        if isinstance(into, Region):
            if into.closed:
                raise ValueError("operation on a closed Region")
            self.region = into
            self.nbytes = into.size
            return
        try:
            mv = memoryview(into)
        except TypeError:
            raise TypeError("into must be a Region or a writable buffer, not %s"
                            % type(into).__name__) from None
        with mv:                  # released on refusal too: no view outlives the call
            if mv.readonly:
                raise TypeError("into must be writable (a %s is read-only)"
                                % type(into).__name__)
            if _holds_objects(mv.format):
                # Bytes written over object pointers crash the interpreter.
                raise TypeError("into must not hold Python objects (a %s of format %r)"
                                % (type(into).__name__, mv.format))
            if not mv.c_contiguous:
                raise ValueError("into must be a contiguous buffer")
            self.mem = np.frombuffer(mv.cast("B"), dtype=np.uint8)
        self.nbytes = self.mem.nbytes

    def zero_outside(self, reader, keep):
        """Zero the pages that hold non-zero bytes and that a FULL record
        with pages `keep` does not hold (it writes its own pages over)."""
        self.page = reader.page
        stale = np.zeros(reader.npages, dtype=bool)
        if self.region is not None:
            r = self.region
            if r.page_size == reader.page:
                # Never-touched pages of a Region are found without faulting them in.
                stale[(_nonzero_pages(r) - np.uint64(r.address)) // np.uint64(reader.page)] = True
            else:
                stale[:] = True
        else:
            rows = self.mem.reshape(reader.npages, reader.page)
            stale[:] = rows.any(axis=1)
        stale[keep.astype(np.intp)] = False
        where = np.flatnonzero(stale)
        if where.size:
            if self.region is not None:
                _put_pages(self.region, where.astype(np.uint64), None, reader.page)
            else:
                self.mem.reshape(reader.npages, reader.page)[where] = 0

    def write(self, idx, pages):
        if self.region is not None:
            _put_pages(self.region, idx, pages.reshape(-1), self.page)
        else:
            self.mem.reshape(-1, self.page)[idx] = pages

    def release(self):
        self.mem = None
