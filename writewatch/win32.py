"""A small Win32 memory model with Windows' write-watch calls.

``VirtualAlloc`` / ``VirtualFree`` / ``VirtualProtect`` / ``VirtualQuery`` /
``GetWriteWatch`` / ``ResetWriteWatch`` / ``GetLastError`` / ``SetLastError``
with Windows' names, argument order, return values and error codes, so that a
compatibility layer can forward a program's calls almost one to one::

    from writewatch import win32 as w
    base = w.VirtualAlloc(0, 0x10000, w.MEM_RESERVE | w.MEM_COMMIT | w.MEM_WRITE_WATCH,
                          w.PAGE_READWRITE)
    ...
    result, count, granularity = w.GetWriteWatch(w.WRITE_WATCH_FLAG_RESET, base,
                                                 0x10000, addresses, len(addresses))

Every function returns what its Windows namesake returns and reports failure
the Windows way: a failure value plus the reason in the calling thread's last
error (``GetLastError()``).  Python exceptions are kept for what C could not
even express: an argument that is not an integer or does not fit its C type
(``TypeError``, ``OverflowError``), an ``addresses`` object that is no buffer
at all, an unknown ``WRITEWATCH_BACKEND`` name (``ValueError``), and kernel
failures nobody can act on (``OSError`` naming the system call).

The model
---------
* An *allocation* is what one reserving ``VirtualAlloc`` makes.  Its base is
  a multiple of :data:`ALLOCATION_GRANULARITY` (64 KiB, as on Windows; an
  explicit address is rounded down to it) and its size a whole number of
  pages.  Each page is reserved (``PROT_NONE``, never reported written) or
  committed with one of the six ``PAGE_*`` protections.
* ``MEM_WRITE_WATCH`` allocations are :class:`writewatch.Region` objects,
  each with the backend chosen when it was made (``$WRITEWATCH_BACKEND`` is
  read then); protection changes go through ``Region._protect`` and decommit
  through ``Region._discard``, so written state behaves the same on every
  backend.  Other allocations are plain anonymous mappings.
* Decommit drops the pages' contents *and* their written state; recommitted
  pages read as zero and start clean.  (This is the project's contract;
  Wine's conformance test expects Windows NT to keep reporting a page
  written before its decommit -- see the README's win32 section.)
* ``PAGE_GUARD``, ``PAGE_NOCACHE``, ``PAGE_WRITECOMBINE``, the copy-on-write
  protections, ``MEM_LARGE_PAGES`` and ``MEM_PHYSICAL`` are not supported:
  they fail with ``ERROR_INVALID_PARAMETER``.  ``MEM_RESET`` and
  ``MEM_RESET_UNDO`` are accepted and keep the contents (Windows *may*
  discard them; keeping them is one of its allowed outcomes).  ``MEM_TOP_DOWN``
  is accepted and ignored.

Thread safety: allocation, release, protection changes and queries take one
lock; ``GetWriteWatch`` and ``ResetWriteWatch`` take none (they read an
immutable snapshot of the allocation table), so they never hold up threads
writing the memory nor each other.
"""

import bisect as _bisect
import collections as _collections
import ctypes as _ctypes
import errno as _errno
import mmap as _mmap
import operator as _operator
import threading as _threading

import numpy as _np

from writewatch._core import PAGE_SIZE, Region as _Region, _array_address
from writewatch._errors import BackendUnavailable as _BackendUnavailable
from writewatch._errors import syscall_error as _syscall_error

__all__ = [
    "MEM_COMMIT", "MEM_RESERVE", "MEM_DECOMMIT", "MEM_RELEASE", "MEM_FREE",
    "MEM_PRIVATE", "MEM_MAPPED", "MEM_IMAGE", "MEM_RESET", "MEM_RESET_UNDO",
    "MEM_TOP_DOWN", "MEM_WRITE_WATCH",
    "PAGE_NOACCESS", "PAGE_READONLY", "PAGE_READWRITE", "PAGE_WRITECOPY",
    "PAGE_EXECUTE", "PAGE_EXECUTE_READ", "PAGE_EXECUTE_READWRITE",
    "PAGE_EXECUTE_WRITECOPY", "PAGE_GUARD", "PAGE_NOCACHE", "PAGE_WRITECOMBINE",
    "WRITE_WATCH_FLAG_RESET",
    "ERROR_SUCCESS", "ERROR_ACCESS_DENIED", "ERROR_NOT_ENOUGH_MEMORY",
    "ERROR_NOT_SUPPORTED", "ERROR_INVALID_PARAMETER", "ERROR_INVALID_ADDRESS",
    "ERROR_NOACCESS",
    "PAGE_SIZE", "ALLOCATION_GRANULARITY", "MAXIMUM_APPLICATION_ADDRESS",
    "MEMORY_BASIC_INFORMATION",
    "VirtualAlloc", "VirtualFree", "VirtualProtect", "VirtualQuery",
    "GetWriteWatch", "ResetWriteWatch", "GetLastError", "SetLastError",
]

# -- constants (Windows' values) ------------------------------------------

MEM_COMMIT = 0x1000
MEM_RESERVE = 0x2000
MEM_DECOMMIT = 0x4000
MEM_RELEASE = 0x8000
MEM_FREE = 0x10000
MEM_PRIVATE = 0x20000
MEM_MAPPED = 0x40000
MEM_RESET = 0x80000
MEM_TOP_DOWN = 0x100000
MEM_WRITE_WATCH = 0x200000
MEM_PHYSICAL = 0x400000
MEM_IMAGE = 0x1000000
MEM_RESET_UNDO = 0x1000000
MEM_LARGE_PAGES = 0x20000000

PAGE_NOACCESS = 0x01
PAGE_READONLY = 0x02
PAGE_READWRITE = 0x04
PAGE_WRITECOPY = 0x08
PAGE_EXECUTE = 0x10
PAGE_EXECUTE_READ = 0x20
PAGE_EXECUTE_READWRITE = 0x40
PAGE_EXECUTE_WRITECOPY = 0x80
PAGE_GUARD = 0x100
PAGE_NOCACHE = 0x200
PAGE_WRITECOMBINE = 0x400

WRITE_WATCH_FLAG_RESET = 1

ERROR_SUCCESS = 0
ERROR_ACCESS_DENIED = 5
ERROR_NOT_ENOUGH_MEMORY = 8
ERROR_NOT_SUPPORTED = 50
ERROR_INVALID_PARAMETER = 87
ERROR_INVALID_ADDRESS = 487
ERROR_NOACCESS = 998

#: Reservations start at multiples of this (Windows' dwAllocationGranularity).
ALLOCATION_GRANULARITY = 0x10000
#: Highest user-space address (x86-64/arm64 47-bit user space, last page
#: excluded as Linux does).  VirtualQuery beyond it returns None.
MAXIMUM_APPLICATION_ADDRESS = (1 << 47) - PAGE_SIZE - 1

_FAILED = 0xFFFFFFFF
_PAGE_MASK = PAGE_SIZE - 1
_GRAN_MASK = ALLOCATION_GRANULARITY - 1
_USER_END = MAXIMUM_APPLICATION_ADDRESS + 1
_U64 = 64
_U32 = 32

_PROT = {
    PAGE_NOACCESS: 0,
    PAGE_READONLY: _mmap.PROT_READ,
    PAGE_READWRITE: _mmap.PROT_READ | _mmap.PROT_WRITE,
    PAGE_EXECUTE: _mmap.PROT_EXEC,
    PAGE_EXECUTE_READ: _mmap.PROT_READ | _mmap.PROT_EXEC,
    PAGE_EXECUTE_READWRITE: _mmap.PROT_READ | _mmap.PROT_WRITE | _mmap.PROT_EXEC,
}

_ALLOC_KNOWN = (MEM_COMMIT | MEM_RESERVE | MEM_RESET | MEM_RESET_UNDO
                | MEM_TOP_DOWN | MEM_WRITE_WATCH)

MEMORY_BASIC_INFORMATION = _collections.namedtuple(
    "MEMORY_BASIC_INFORMATION",
    "BaseAddress AllocationBase AllocationProtect RegionSize State Protect Type")
MEMORY_BASIC_INFORMATION.__doc__ = "What VirtualQuery reports, field for field."

# -- the calling thread's last error --------------------------------------

_tls = _threading.local()


def GetLastError():
    """The calling thread's last-error code (0 until something sets it)."""
    return getattr(_tls, "error", 0)


def SetLastError(code):
    """Set the calling thread's last-error code (a DWORD)."""
    _tls.error = _dword(code, "code")


def _fail(code, value):
    _tls.error = code
    return value


# -- argument conversion (the C types of the Windows prototypes) ----------

def _index(value, name):
    if isinstance(value, float):
        raise TypeError("%s must be an integer, not float" % name)
    try:
        return _operator.index(value)
    except TypeError:
        raise TypeError("%s must be an integer, not %s"
                        % (name, type(value).__name__)) from None


def _size_t(value, name):
    v = _index(value, name)
    if v >> _U64:
        raise OverflowError("%s must be in [0, 2**64), got %d" % (name, v))
    return v


def _dword(value, name):
    v = _index(value, name)
    if v >> _U32:
        raise OverflowError("%s must be in [0, 2**32), got %d" % (name, v))
    return v


# -- plain anonymous mappings (allocations without MEM_WRITE_WATCH) -------

_libc = _ctypes.CDLL(None, use_errno=True)
_mmap_c = _libc.mmap
_mmap_c.restype = _ctypes.c_void_p
_mmap_c.argtypes = [_ctypes.c_void_p, _ctypes.c_size_t, _ctypes.c_int,
                    _ctypes.c_int, _ctypes.c_int, _ctypes.c_long]
_munmap_c = _libc.munmap
_munmap_c.argtypes = [_ctypes.c_void_p, _ctypes.c_size_t]
_mprotect_c = _libc.mprotect
_mprotect_c.argtypes = [_ctypes.c_void_p, _ctypes.c_size_t, _ctypes.c_int]
_madvise_c = _libc.madvise
_madvise_c.argtypes = [_ctypes.c_void_p, _ctypes.c_size_t, _ctypes.c_int]

_MAP_FAILED = _ctypes.c_void_p(-1).value
# Linux's generic values (x86-64, arm64): the mmap module lacks these.
_MAP_NORESERVE = 0x4000
_MAP_FIXED_NOREPLACE = 0x100000
_MAP_FLAGS = _mmap.MAP_PRIVATE | _mmap.MAP_ANONYMOUS | _MAP_NORESERVE


def _os_mmap(address, length, fixed):
    flags = _MAP_FLAGS | (_MAP_FIXED_NOREPLACE if fixed else 0)
    p = _mmap_c(address or None, length, 0, flags, -1, 0)
    if p is None or p == _MAP_FAILED:
        err = _ctypes.get_errno()
        raise _syscall_error(err, "mmap", "%d bytes at %#x" % (length, address))
    if fixed and p != address:       # pre-4.17 kernels treat it as a hint
        _munmap_c(p, length)
        raise _syscall_error(_errno.EEXIST, "mmap(MAP_FIXED_NOREPLACE)")
    return p


def _os_munmap(address, length):
    if length and _munmap_c(address, length) != 0:
        err = _ctypes.get_errno()
        raise _syscall_error(err, "munmap", "%#x+%#x" % (address, length))


def _os_mprotect(address, length, prot):
    if _mprotect_c(address, length, prot) != 0:
        err = _ctypes.get_errno()
        raise _syscall_error(err, "mprotect", "%#x+%#x" % (address, length))


def _os_discard(address, length):
    if _madvise_c(address, length, _mmap.MADV_DONTNEED) != 0:
        err = _ctypes.get_errno()
        raise _syscall_error(err, "madvise(MADV_DONTNEED)", "%#x+%#x" % (address, length))


# -- allocations ----------------------------------------------------------

_RESERVED = MEM_RESERVE
_COMMITTED = MEM_COMMIT


class _Allocation:
    """One reservation: [base, end), its pages' states as sorted runs
    [start, end, state, protect] (adjacent runs always differ), and the
    Region tracking it (None without MEM_WRITE_WATCH)."""

    __slots__ = ("base", "end", "protect", "region", "runs")

    def __init__(self, base, end, protect, region):
        self.base = base
        self.end = end
        self.protect = protect
        self.region = region
        self.runs = [(base, end, _RESERVED, 0)]

    def set_protection(self, start, end, prot):
        """Change the caller-visible protection of [start, end)."""
        if self.region is not None:
            self.region._protect(start, end - start, prot)
        else:
            _os_mprotect(start, end - start, prot)

    def discard(self, start, end):
        """Decommit [start, end): no access, contents and written state gone."""
        self.set_protection(start, end, 0)
        if self.region is not None:
            self.region._discard(start, end - start)
        else:
            _os_discard(start, end - start)

    def run_at(self, address):
        runs = self.runs
        i = _bisect.bisect_right(runs, (address, _USER_END << 1)) - 1
        return runs[i]

    def all_committed(self, start, end):
        for s, e, state, _ in self.runs:
            if e > start and s < end and state != _COMMITTED:
                return False
        return True

    def set_state(self, start, end, state, protect):
        out = []
        new = (start, end, state, protect)
        placed = False
        for run in self.runs:
            s, e = run[0], run[1]
            if e <= start:
                out.append(run)
                continue
            if s >= end:
                if not placed:
                    out.append(new)
                    placed = True
                out.append(run)
                continue
            if s < start:
                out.append((s, start, run[2], run[3]))
            if not placed:
                out.append(new)
                placed = True
            if e > end:
                out.append((end, e, run[2], run[3]))
        if not placed:
            out.append(new)
        merged = [out[0]]
        for run in out[1:]:
            last = merged[-1]
            if last[2] == run[2] and last[3] == run[3] and last[1] == run[0]:
                merged[-1] = (last[0], run[1], last[2], last[3])
            else:
                merged.append(run)
        self.runs = merged


_lock = _threading.Lock()
# (sorted bases, allocations in the same order): replaced, never mutated, so
# GetWriteWatch/ResetWriteWatch read it without the lock.
_table = ((), ())


def _find(address):
    """The allocation containing `address`, or None."""
    bases, allocs = _table
    i = _bisect.bisect_right(bases, address) - 1
    if i >= 0:
        a = allocs[i]
        if address < a.end:
            return a
    return None


def _overlaps(start, end):
    bases, allocs = _table
    i = _bisect.bisect_left(bases, end) - 1
    return i >= 0 and allocs[i].end > start


def _insert(alloc):
    global _table
    bases, allocs = _table
    i = _bisect.bisect_left(bases, alloc.base)
    _table = (bases[:i] + (alloc.base,) + bases[i:],
              allocs[:i] + (alloc,) + allocs[i:])


def _remove(alloc):
    global _table
    bases, allocs = _table
    i = bases.index(alloc.base)
    _table = (bases[:i] + bases[i + 1:], allocs[:i] + allocs[i + 1:])


def _backend_of(address):
    """Name of the write-watch backend tracking the allocation at `address`
    (None for memory without MEM_WRITE_WATCH or outside any allocation)."""
    a = _find(_size_t(address, "address"))
    return a.region.backend if a is not None and a.region is not None else None


def _place(length, fixed_at, make):
    """Map `length` bytes at `fixed_at` (exactly) or, for 0, at some
    multiple of the allocation granularity; `make(address)` maps with
    MAP_FIXED_NOREPLACE semantics.  An aligned hole is found by reserving a
    larger PROT_NONE placeholder and freeing its aligned middle; another
    thread mapping into the hole meanwhile makes `make` fail with EEXIST,
    and the search is retried."""
    if fixed_at:
        return make(fixed_at)
    span = length + ALLOCATION_GRANULARITY - PAGE_SIZE
    for _ in range(64):
        p = _os_mmap(0, span, False)
        aligned = (p + _GRAN_MASK) & ~_GRAN_MASK
        _os_munmap(aligned, length)
        try:
            return make(aligned)
        except OSError as e:
            if e.errno != _errno.EEXIST:
                raise
        finally:
            # the placeholder's head and tail, whatever happened
            _os_munmap(p, aligned - p)
            _os_munmap(aligned + length, p + span - aligned - length)
    raise _syscall_error(_errno.EEXIST, "mmap(MAP_FIXED_NOREPLACE)",
                         "no aligned hole stayed free")


def _os_error_code(e):
    if e.errno == _errno.EEXIST:
        return ERROR_INVALID_ADDRESS
    if e.errno in (_errno.ENOMEM, _errno.EAGAIN):
        return ERROR_NOT_ENOUGH_MEMORY
    if e.errno in (_errno.EACCES, _errno.EPERM):
        return ERROR_ACCESS_DENIED
    return None


# -- VirtualAlloc / VirtualFree / VirtualProtect / VirtualQuery -----------

def VirtualAlloc(address, size, allocation_type, protect):
    """Reserve and/or commit pages.  Returns the base address of what was
    reserved or committed, or 0 with the thread's last error set:
    ERROR_INVALID_PARAMETER (bad size, type or protection; MEM_WRITE_WATCH
    without MEM_RESERVE), ERROR_INVALID_ADDRESS (the address range is taken,
    or for a commit not inside one reservation), ERROR_NOT_ENOUGH_MEMORY,
    ERROR_NOT_SUPPORTED (MEM_WRITE_WATCH but no write-watch backend can run
    here)."""
    address = _size_t(address, "address")
    size = _size_t(size, "size")
    kind = _dword(allocation_type, "allocation_type")
    protect = _dword(protect, "protect")
    if not size or kind & ~_ALLOC_KNOWN:
        return _fail(ERROR_INVALID_PARAMETER, 0)
    if kind & (MEM_RESET | MEM_RESET_UNDO):
        if kind & ~MEM_TOP_DOWN not in (MEM_RESET, MEM_RESET_UNDO):
            return _fail(ERROR_INVALID_PARAMETER, 0)
        if protect not in _PROT or not address:
            return _fail(ERROR_INVALID_PARAMETER, 0)
        return _reset_pages(address, size)
    if not kind & (MEM_COMMIT | MEM_RESERVE):
        return _fail(ERROR_INVALID_PARAMETER, 0)
    if kind & MEM_WRITE_WATCH and not kind & MEM_RESERVE:
        return _fail(ERROR_INVALID_PARAMETER, 0)
    if protect not in _PROT:
        return _fail(ERROR_INVALID_PARAMETER, 0)
    if address + size > _USER_END:
        return _fail(ERROR_INVALID_PARAMETER if address >= _USER_END
                     else ERROR_NOT_ENOUGH_MEMORY, 0)
    if kind & MEM_RESERVE or not address:
        return _reserve(address, size, kind, protect)
    return _commit(address, size, protect)


def _reserve(address, size, kind, protect):
    base = address & ~_GRAN_MASK
    end = (address + size + _PAGE_MASK) & ~_PAGE_MASK
    if address and not base:
        return _fail(ERROR_INVALID_ADDRESS, 0)   # the first 64 KiB are never mapped
    length = end - base if address else end
    watch = bool(kind & MEM_WRITE_WATCH)
    commit = bool(kind & MEM_COMMIT)
    with _lock:
        if base and _overlaps(base, base + length):
            return _fail(ERROR_INVALID_ADDRESS, 0)
        try:
            if watch:
                region = _place(length, base, lambda at: _Region(length, address=at))
                start = region.address
            else:
                region = None
                start = _place(length, base, lambda at: _os_mmap(at, length, True))
        except _BackendUnavailable:
            return _fail(ERROR_NOT_SUPPORTED, 0)
        except OSError as e:
            code = _os_error_code(e)
            if code is None:
                raise
            return _fail(code, 0)
        alloc = _Allocation(start, start + length, protect, region)
        try:
            prot = _PROT[protect] if commit else 0
            if watch and prot != _PROT[PAGE_READWRITE]:
                region._protect(start, length, prot)
            elif not watch and prot:
                _os_mprotect(start, length, prot)
        except OSError as e:
            _release(alloc)
            code = _os_error_code(e)
            if code is None:
                raise
            return _fail(code, 0)
        if commit:
            alloc.set_state(start, start + length, _COMMITTED, protect)
        _insert(alloc)
        return start


def _commit(address, size, protect):
    start, end = _page_range(address, size)
    with _lock:
        alloc = _find(start)
        if alloc is None or end > alloc.end:
            return _fail(ERROR_INVALID_ADDRESS, 0)
        try:
            alloc.set_protection(start, end, _PROT[protect])
        except OSError as e:
            code = _os_error_code(e)
            if code is None:
                raise
            return _fail(code, 0)
        alloc.set_state(start, end, _COMMITTED, protect)
        return start


def _reset_pages(address, size):
    start, end = _page_range(address, size)
    with _lock:
        alloc = _find(start)
        if alloc is None or end > alloc.end:
            return _fail(ERROR_INVALID_ADDRESS, 0)
    return start


def _page_range(address, size):
    """[address, address+size) rounded out to whole pages, as Windows does."""
    return address & ~_PAGE_MASK, (address + size + _PAGE_MASK) & ~_PAGE_MASK


def _release(alloc):
    if alloc.region is not None:
        alloc.region.close()
    else:
        _os_munmap(alloc.base, alloc.end - alloc.base)


def VirtualFree(address, size, free_type):
    """MEM_DECOMMIT a page range (size 0 at an allocation's base: all of it)
    or MEM_RELEASE a whole allocation (address its base, size 0).  Returns
    True, or False with the last error: ERROR_INVALID_PARAMETER (bad type,
    MEM_RELEASE with a size), ERROR_INVALID_ADDRESS (not inside one
    allocation, or not its base where the base is required)."""
    address = _size_t(address, "address")
    size = _size_t(size, "size")
    free_type = _dword(free_type, "free_type")
    if free_type not in (MEM_DECOMMIT, MEM_RELEASE):
        return _fail(ERROR_INVALID_PARAMETER, False)
    if free_type == MEM_RELEASE and size:
        return _fail(ERROR_INVALID_PARAMETER, False)
    with _lock:
        alloc = _find(address)
        if alloc is None:
            return _fail(ERROR_INVALID_ADDRESS, False)
        if free_type == MEM_RELEASE:
            if address != alloc.base:
                return _fail(ERROR_INVALID_ADDRESS, False)
            _release(alloc)    # BufferError (views alive): the table is unchanged
            _remove(alloc)
            return True
        if size:
            start, end = _page_range(address, size)
        elif address == alloc.base:
            start, end = alloc.base, alloc.end
        else:
            return _fail(ERROR_INVALID_ADDRESS, False)
        if end > alloc.end:
            return _fail(ERROR_INVALID_ADDRESS, False)
        try:
            alloc.discard(start, end)
        except OSError as e:
            code = _os_error_code(e)
            if code is None:
                raise
            return _fail(code, False)
        alloc.set_state(start, end, _RESERVED, 0)
        return True


def VirtualProtect(address, size, new_protect):
    """Change the protection of committed pages.  Returns (True,
    old_protect) -- the first page's previous protection -- or (False, 0)
    with the last error: ERROR_INVALID_PARAMETER (bad protection or size 0),
    ERROR_INVALID_ADDRESS (not inside one allocation, or a page in the
    range is not committed).  Written state is not changed."""
    address = _size_t(address, "address")
    size = _size_t(size, "size")
    new_protect = _dword(new_protect, "new_protect")
    if new_protect not in _PROT:
        return _fail(ERROR_INVALID_PARAMETER, (False, 0))
    start, end = _page_range(address, size)
    if start == end:
        return _fail(ERROR_INVALID_PARAMETER, (False, 0))
    with _lock:
        alloc = _find(start)
        if alloc is None or end > alloc.end or not alloc.all_committed(start, end):
            return _fail(ERROR_INVALID_ADDRESS, (False, 0))
        old = alloc.run_at(start)[3]
        try:
            alloc.set_protection(start, end, _PROT[new_protect])
        except OSError as e:
            code = _os_error_code(e)
            if code is None:
                raise
            return _fail(code, (False, 0))
        alloc.set_state(start, end, _COMMITTED, new_protect)
        return True, old


def VirtualQuery(address):
    """MEMORY_BASIC_INFORMATION for the page holding `address`: inside an
    allocation, the run of pages from there on with the same state and
    protection (write-watch state never shows); free memory as MEM_FREE up
    to the next mapping; memory mapped by others as Linux describes it.
    None, with ERROR_INVALID_PARAMETER, beyond the user address space."""
    address = _size_t(address, "address")
    if address > MAXIMUM_APPLICATION_ADDRESS:
        return _fail(ERROR_INVALID_PARAMETER, None)
    page = address & ~_PAGE_MASK
    with _lock:
        alloc = _find(page)
        if alloc is not None:
            s, e, state, prot = alloc.run_at(page)
            return MEMORY_BASIC_INFORMATION(page, alloc.base, alloc.protect, e - page,
                                            state, prot, MEM_PRIVATE)
    return _query_foreign(page)


def _query_foreign(page):
    """Describe memory this module did not allocate, from /proc/self/maps."""
    next_start = _USER_END
    with open("/proc/self/maps", "rb") as f:
        for line in f:
            fields = line.split(None, 5)
            lo, hi = (int(x, 16) for x in fields[0].split(b"-"))
            if hi <= page:
                continue
            if lo > page:
                next_start = min(lo, _USER_END)
                break
            perms = fields[1]
            prot = ((_mmap.PROT_READ if perms[0:1] == b"r" else 0)
                    | (_mmap.PROT_WRITE if perms[1:2] == b"w" else 0)
                    | (_mmap.PROT_EXEC if perms[2:3] == b"x" else 0))
            if not prot:
                state, protect = MEM_RESERVE, 0
            else:
                state = MEM_COMMIT
                protect = _protect_from_prot(prot)
            inode = int(fields[4]) if len(fields) > 4 else 0
            kind = MEM_MAPPED if inode else MEM_PRIVATE
            return MEMORY_BASIC_INFORMATION(page, lo, protect or PAGE_NOACCESS,
                                            min(hi, _USER_END) - page, state,
                                            protect, kind)
    return MEMORY_BASIC_INFORMATION(page, 0, 0, next_start - page, MEM_FREE,
                                    PAGE_NOACCESS, 0)


def _protect_from_prot(prot):
    for protect, bits in _PROT.items():
        if bits == prot:
            return protect
    if prot == _mmap.PROT_WRITE:                       # -w-: writable means readable on x86
        return PAGE_READWRITE
    return PAGE_EXECUTE_READWRITE                      # -wx


# -- write watch ----------------------------------------------------------

def GetWriteWatch(flags, base, size, addresses, count):
    """Written pages of [base, base+size) in the caller's buffer.

    `addresses`: a writable buffer of at least `count` unsigned 64-bit slots
    (numpy uint64 array, array('Q'), ctypes array) or None for NULL; `count`
    the slots to fill, or None for NULL.  Returns (0, n, PAGE_SIZE) with the
    n page addresses, ascending, in the first n slots and nothing written
    past them; with WRITE_WATCH_FLAG_RESET exactly those n pages are re-armed
    atomically with reading them.  On failure returns (0xFFFFFFFF, count, 0)
    with the last error set, checking in this order: count NULL ->
    ERROR_NOACCESS; count or size 0 -> ERROR_INVALID_PARAMETER; unknown flag
    bits -> ERROR_INVALID_PARAMETER; addresses NULL -> ERROR_NOACCESS; the
    page-rounded range not wholly inside one MEM_WRITE_WATCH allocation ->
    ERROR_INVALID_PARAMETER; addresses read-only or shorter than count ->
    ERROR_NOACCESS.
    """
    if count is None:
        _tls.error = ERROR_NOACCESS
        return _FAILED, None, 0
    if (type(base) is not int or type(size) is not int or type(count) is not int
            or type(flags) is not int):
        flags, base, size, count = _convert(flags, base, size, count)
    elif (base | size | count) >> _U64 or flags >> _U32:
        _convert(flags, base, size, count)
    if not count or not size or flags & ~WRITE_WATCH_FLAG_RESET:
        _tls.error = ERROR_INVALID_PARAMETER
        return _FAILED, count, 0
    if addresses is None:
        _tls.error = ERROR_NOACCESS
        return _FAILED, count, 0
    # _page_range, inlined: the hot path of every frame
    start = base & ~_PAGE_MASK
    end = (base + size + _PAGE_MASK) & ~_PAGE_MASK
    bases, allocs = _table
    i = _bisect_right(bases, start) - 1
    if i < 0:
        _tls.error = ERROR_INVALID_PARAMETER
        return _FAILED, count, 0
    alloc = allocs[i]
    region = alloc.region
    if region is None or end > alloc.end:
        _tls.error = ERROR_INVALID_PARAMETER
        return _FAILED, count, 0
    try:
        if count > _MAX_SLOTS:
            raise ValueError("no buffer has that many slots")
        out = _frombuffer(addresses, _UINT64, count)
    except (ValueError, BufferError):
        _check_buffer(addresses)            # TypeError unless a contiguous buffer
        _tls.error = ERROR_NOACCESS         # too short for `count` slots
        return _FAILED, count, 0
    if not _writable(_array_address(out), 8 * count):
        # A buffer (ctypes array, numpy view, memoryview...) laid over
        # reserved, decommitted or read-only pages of ours (a guest's bad
        # pointer): Windows answers ERROR_NOACCESS, writing would be a crash.
        _tls.error = ERROR_NOACCESS
        return _FAILED, count, 0
    try:
        found = region.get_write_watch(start, end - start, reset=flags, out=out)
    except ValueError:
        # Region refuses a read-only `out`, and a region released meanwhile
        # by another thread; anything else is a bug worth seeing.
        if not out.flags.writeable:
            _tls.error = ERROR_NOACCESS
        elif region.closed:
            _tls.error = ERROR_INVALID_PARAMETER
        else:
            raise
        return _FAILED, count, 0
    return 0, len(found), PAGE_SIZE


def ResetWriteWatch(base, size):
    """Re-arm [base, base+size): none of its pages counts as written after.
    Returns 0, or 0xFFFFFFFF with ERROR_INVALID_PARAMETER when size is 0 or
    the page-rounded range is not inside one MEM_WRITE_WATCH allocation.
    Reserved pages in the range are fine (they are never written)."""
    if type(base) is not int or type(size) is not int or (base | size) >> _U64:
        _, base, size, _ = _convert(0, base, size, 0)
    if not size:
        _tls.error = ERROR_INVALID_PARAMETER
        return _FAILED
    start, end = _page_range(base, size)
    alloc = _find(start)
    if alloc is None or alloc.region is None or end > alloc.end:
        _tls.error = ERROR_INVALID_PARAMETER
        return _FAILED
    region = alloc.region
    try:
        region.reset_write_watch(start, end - start)
    except ValueError:
        if not region.closed:
            raise
        _tls.error = ERROR_INVALID_PARAMETER
        return _FAILED
    return 0


_frombuffer = _np.frombuffer
_bisect_right = _bisect.bisect_right
_UINT64 = _np.dtype(_np.uint64)
_MAX_SLOTS = (1 << 63) // 8 - 1      # np.frombuffer's count is a C ssize_t
_WRITABLE = (PAGE_READWRITE, PAGE_EXECUTE_READWRITE)


def _writable(address, length):
    """False if [address, address+length) touches a page of one of our
    allocations that is not committed writable.  (Memory we did not
    allocate cannot be checked cheaply and is trusted.)"""
    end = address + length
    bases, allocs = _table
    i = _bisect.bisect_right(bases, address) - 1
    if i < 0:
        i = 0
    for alloc in allocs[i:]:
        if alloc.base >= end:
            break
        if alloc.end <= address:
            continue
        for s, e, state, protect in alloc.runs:
            if e > address and s < end and (state != _COMMITTED or protect not in _WRITABLE):
                return False
    return True


def _convert(flags, base, size, count):
    """The arguments as plain ints of their C types, or TypeError /
    OverflowError naming the one that is not."""
    return (_dword(flags, "flags"), _size_t(base, "base"), _size_t(size, "size"),
            _size_t(count, "count"))


def _check_buffer(addresses):
    """Raise TypeError unless `addresses` exports a contiguous buffer."""
    try:
        view = memoryview(addresses)
    except TypeError:
        raise TypeError("addresses must be a writable buffer of uint64 slots or "
                        "None, not %s" % type(addresses).__name__) from None
    with view:
        if not view.contiguous:
            raise TypeError("addresses must be a contiguous buffer")
