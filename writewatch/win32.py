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
* An *allocation* is what one reserving ``VirtualAlloc`` makes
  (writewatch/_win32_table.py).  Its base is a multiple of
  :data:`ALLOCATION_GRANULARITY` (64 KiB, as on Windows; an explicit address
  is rounded down to it) and its size a whole number of pages.  Each page is
  reserved (``PROT_NONE``, never reported written) or committed with one of
  the six ``PAGE_*`` protections.
* Every allocation is a :class:`writewatch.Region` made reserved.  A
  reservation costs no page tables and arms nothing: committing arms exactly
  the committed pages (with ``MEM_WRITE_WATCH``, on the backend chosen when
  the reservation was made: ``$WRITEWATCH_BACKEND`` is read then), and
  decommitting disarms them and gives their page tables back.
  ``GetWriteWatch`` and ``ResetWriteWatch`` walk only the committed runs.
  A commit that would need more memory (page tables, the backend's per-page
  state) than the process can get fails with ``ERROR_COMMITMENT_LIMIT`` and
  leaves the reservation as it was.
* Written state follows Windows, latching included: a ``VirtualProtect``
  latches the written state of the pages it covers; a decommit drops the
  pages' contents and the written state that is not latched; recommitted
  pages read as zero.  ``GetWriteWatch`` reports latched or written pages;
  its reset flag and ``ResetWriteWatch`` clear both.
* ``PAGE_GUARD``, ``PAGE_NOCACHE``, ``PAGE_WRITECOMBINE``, the copy-on-write
  protections, ``MEM_LARGE_PAGES`` and ``MEM_PHYSICAL`` are not supported:
  they fail with ``ERROR_INVALID_PARAMETER``.  ``MEM_RESET`` and
  ``MEM_RESET_UNDO`` are accepted and keep the contents (Windows *may*
  discard them; keeping them is one of its allowed outcomes).  ``MEM_TOP_DOWN``
  is accepted and ignored.

Thread safety: each allocation has a lock, taken by every call on it
(``GetWriteWatch`` included: a commit or decommit racing a scan can then
neither show unarmed pages as written nor hide a write); the table of
allocations is replaced, never mutated, so finding an allocation takes no
lock.  Threads writing the memory never wait for any of these.  After
``fork()`` the child starts with fresh locks; its write-watch calls on the
parent's allocations raise ``ForkedRegionError``.
"""

import bisect as _bisect
import collections as _collections
import errno as _errno
import mmap as _mmap
import threading as _threading

import numpy as _np

from writewatch import _core
from writewatch import _win32_table as _tab
from writewatch._core import PAGE_SIZE, _array_address
from writewatch._errors import BackendUnavailable as _BackendUnavailable

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
    "ERROR_NOACCESS", "ERROR_COMMITMENT_LIMIT",
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
ERROR_COMMITMENT_LIMIT = 1455
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
    """The calling thread's last-error code.

    Returns
    -------
    int
        The ``ERROR_*`` code the last failing call of this thread set (0
        until one did, or what :func:`SetLastError` set).
    """
    return getattr(_tls, "error", 0)


def SetLastError(code):
    """Set the calling thread's last-error code.

    Parameters
    ----------
    code : int
        A DWORD.

    Raises
    ------
    TypeError, OverflowError
        `code` is not an integer, or does not fit 32 bits.
    """
    _tls.error = _dword(code, "code")


def _fail(code, value):
    _tls.error = code
    return value


# -- argument conversion (the C types of the Windows prototypes) ----------

_index = _core._index_arg


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


# -- errors: one mapping from the library's exceptions to ERROR_* ---------

_ERRNO_CODES = {
    _errno.EEXIST: ERROR_INVALID_ADDRESS,        # the address range is taken
    _errno.ENOMEM: ERROR_NOT_ENOUGH_MEMORY,      # no VMA left, no memory
    _errno.EAGAIN: ERROR_NOT_ENOUGH_MEMORY,
    _errno.EACCES: ERROR_ACCESS_DENIED,
    _errno.EPERM: ERROR_ACCESS_DENIED,
}


class _Win32Failure(Exception):
    """Raised inside a call to leave it with a Windows error code."""

    def __init__(self, code):
        self.code = code


def _win32_errors(failure):
    """Decorator (psutil's wrap_exceptions): what the library raises inside
    the call becomes the Windows failure value plus the last error --
    MemoryError (arming would need more memory than the process can get)
    ERROR_COMMITMENT_LIMIT, BackendUnavailable ERROR_NOT_SUPPORTED, an
    OSError with a known errno its ERROR_* code.  Anything else (TypeError,
    OverflowError, an OSError nobody can act on) propagates."""
    def wrap(fn):
        def call(*args):
            try:
                return fn(*args)
            except _Win32Failure as e:
                return _fail(e.code, failure)
            except MemoryError:
                return _fail(ERROR_COMMITMENT_LIMIT, failure)
            except _BackendUnavailable:
                return _fail(ERROR_NOT_SUPPORTED, failure)
            except OSError as e:
                code = _ERRNO_CODES.get(e.errno)
                if code is None:
                    raise
                return _fail(code, failure)
        call.__name__ = fn.__name__
        call.__qualname__ = fn.__qualname__
        call.__doc__ = fn.__doc__
        call.__wrapped__ = fn
        return call
    return wrap


def _backend_of(address):
    """Name of the write-watch backend tracking the allocation at `address`
    (None for memory without MEM_WRITE_WATCH or outside any allocation)."""
    a = _tab.find(_size_t(address, "address"))
    return a.region.backend if a is not None and a.watch else None


def _page_range(address, size):
    """[address, address+size) rounded out to whole pages, as Windows does."""
    return address & ~_PAGE_MASK, (address + size + _PAGE_MASK) & ~_PAGE_MASK


def _locked(address):
    """The allocation holding `address`, its lock taken (release with
    ``alloc.lock.release()``), or None.  An allocation released between the
    lookup and the lock is treated as not found."""
    alloc = _tab.find(address)
    if alloc is None:
        return None
    alloc.lock.acquire()
    if alloc.region.closed:
        alloc.lock.release()
        return None
    return alloc


# -- VirtualAlloc / VirtualFree / VirtualProtect / VirtualQuery -----------

def VirtualAlloc(address, size, allocation_type, protect):
    """Reserve and/or commit pages, as Windows' ``VirtualAlloc``.

    ``MEM_RESERVE`` makes an allocation at a multiple of
    :data:`ALLOCATION_GRANULARITY` (`address` 0: anywhere; else rounded down
    to it); with ``MEM_WRITE_WATCH`` its writes are tracked, on the backend
    chosen now (``$WRITEWATCH_BACKEND``, else the best one here).  A
    reservation costs no page tables.  ``MEM_COMMIT`` (with `address` 0: a
    reservation and a commit) makes pages accessible with `protect`: freshly
    committed pages read as zero and are armed (clean); pages already
    committed keep their contents and written state and get the new
    protection.

    Parameters
    ----------
    address : int
        Where (0: anywhere, for a reservation).
    size : int
        Bytes; the range rounds out to whole pages.
    allocation_type : int
        ``MEM_RESERVE``, ``MEM_COMMIT``, ``MEM_WRITE_WATCH``, ``MEM_RESET``,
        ``MEM_RESET_UNDO``, ``MEM_TOP_DOWN`` (ignored).
    protect : int
        One of the six plain ``PAGE_*`` protections.

    Returns
    -------
    int
        The base address of what was reserved or committed, or 0 with the
        thread's last error set: ``ERROR_INVALID_PARAMETER`` (bad size, type
        or protection; ``MEM_WRITE_WATCH`` without ``MEM_RESERVE``),
        ``ERROR_INVALID_ADDRESS`` (the range is taken, or a commit not inside
        one reservation), ``ERROR_NOT_ENOUGH_MEMORY`` (the kernel refused a
        mapping), ``ERROR_COMMITMENT_LIMIT`` (arming the commit would need
        more memory for page tables and write-watch state than the process
        can get; the reservation stays as it was), ``ERROR_NOT_SUPPORTED``
        (``MEM_WRITE_WATCH`` but no write-watch backend can run here).

    Raises
    ------
    TypeError, OverflowError
        An argument is not an integer, or does not fit its C type.
    ValueError
        ``$WRITEWATCH_BACKEND`` names no backend.

    Examples
    --------
    >>> from writewatch import win32 as w
    >>> base = w.VirtualAlloc(0, 1 << 30, w.MEM_RESERVE | w.MEM_WRITE_WATCH,
    ...                       w.PAGE_READWRITE)       # 1 GiB reserved: nothing armed
    >>> w.VirtualAlloc(base, 0x10000, w.MEM_COMMIT, w.PAGE_READWRITE) == base
    True
    >>> w.VirtualFree(base, 0, w.MEM_RELEASE)
    True
    """
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


@_win32_errors(0)
def _reserve(address, size, kind, protect):
    base = address & ~_GRAN_MASK
    end = (address + size + _PAGE_MASK) & ~_PAGE_MASK
    if address and not base:
        return _fail(ERROR_INVALID_ADDRESS, 0)   # the first 64 KiB are never mapped
    length = end - base if address else end
    watch = bool(kind & MEM_WRITE_WATCH)
    with _tab.table_lock:
        if base and _tab.overlaps(base, base + length):
            return _fail(ERROR_INVALID_ADDRESS, 0)
        region = _core._reserve(length, address=base or None,
                                align=ALLOCATION_GRANULARITY, watch=watch)
        start = region.address
        alloc = _tab.Allocation(start, start + length, protect, region, watch)
        if kind & MEM_COMMIT:
            try:
                region._commit(start, length, _PROT[protect])
            except BaseException:
                region.close()
                raise
            alloc.set_state(start, start + length, _tab.COMMITTED, protect)
        _tab.insert(alloc)
        return start


@_win32_errors(0)
def _commit(address, size, protect):
    start, end = _page_range(address, size)
    alloc = _locked(start)
    if alloc is None:
        return _fail(ERROR_INVALID_ADDRESS, 0)
    try:
        if end > alloc.end:
            return _fail(ERROR_INVALID_ADDRESS, 0)
        region = alloc.region
        prot = _PROT[protect]
        runs = alloc.runs_in(start, end)
        done = []
        try:
            # Reserved runs are armed first (what can fail for want of
            # memory), then committed runs get the new protection (contents
            # and written state kept).  A failure undoes this call's commits.
            for s, e, state, _ in runs:
                if state != _tab.COMMITTED:
                    region._commit(s, e - s, prot)
                    done.append((s, e))
            _narrow_first(alloc, runs, protect)
            for s, e, state, _ in runs:
                if state == _tab.COMMITTED:
                    region._protect(s, e - s, prot)
        except BaseException:
            for s, e in done:
                region._decommit(s, e - s)
            _restore_runs(alloc, runs)
            raise
        alloc.set_state(start, end, _tab.COMMITTED, protect)
        return start
    finally:
        alloc.lock.release()


def _narrow_first(alloc, runs, protect):
    """Before memory loses a permission, the table loses it: each committed
    run of `runs` is recorded with what its old and its new protection both
    allow.  Memory changes next, the table takes `protect` last.  A fork
    from another thread at any point between leaves the child a table never
    more permissive than its memory, so the child can act on VirtualQuery
    (the table is the child's only source; the lock is reset there)."""
    for s, e, state, old in runs:
        if state == _tab.COMMITTED and old != protect:
            both = _PROT[old] & _PROT[protect]
            if both != _PROT[old]:
                alloc.set_state(s, e, _tab.COMMITTED, _protect_from_prot(both))


def _restore_runs(alloc, runs):
    for s, e, state, protect in runs:
        alloc.set_state(s, e, state, protect)


@_win32_errors(0)
def _reset_pages(address, size):
    start, end = _page_range(address, size)
    alloc = _tab.find(start)
    if alloc is None or end > alloc.end:
        return _fail(ERROR_INVALID_ADDRESS, 0)
    return start


@_win32_errors(False)
def VirtualFree(address, size, free_type):
    """Decommit pages or release an allocation, as Windows' ``VirtualFree``.

    ``MEM_DECOMMIT`` of a page range (size 0 at an allocation's base: all of
    it) drops the pages' contents, their page tables and the written state
    that no :func:`VirtualProtect` latched; the pages become reserved.
    ``MEM_RELEASE`` (address the allocation's base, size 0) unmaps it.

    Parameters
    ----------
    address, size : int
    free_type : int
        Exactly ``MEM_DECOMMIT`` or ``MEM_RELEASE``.

    Returns
    -------
    bool
        True, or False with the last error: ``ERROR_INVALID_PARAMETER``
        (bad type, ``MEM_RELEASE`` with a size), ``ERROR_INVALID_ADDRESS``
        (not inside one allocation, or not its base where the base is
        required).

    Raises
    ------
    TypeError, OverflowError
        An argument is not an integer, or does not fit its C type.
    """
    address = _size_t(address, "address")
    size = _size_t(size, "size")
    free_type = _dword(free_type, "free_type")
    if free_type not in (MEM_DECOMMIT, MEM_RELEASE):
        return _fail(ERROR_INVALID_PARAMETER, False)
    if free_type == MEM_RELEASE and size:
        return _fail(ERROR_INVALID_PARAMETER, False)
    if free_type == MEM_RELEASE:
        with _tab.table_lock:
            alloc = _locked(address)
            if alloc is None:
                return _fail(ERROR_INVALID_ADDRESS, False)
            try:
                if address != alloc.base:
                    return _fail(ERROR_INVALID_ADDRESS, False)
                alloc.region.close()
                _tab.remove(alloc)
                return True
            finally:
                alloc.lock.release()
    alloc = _locked(address)
    if alloc is None:
        return _fail(ERROR_INVALID_ADDRESS, False)
    try:
        if size:
            start, end = _page_range(address, size)
        elif address == alloc.base:
            start, end = alloc.base, alloc.end
        else:
            return _fail(ERROR_INVALID_ADDRESS, False)
        if end > alloc.end:
            return _fail(ERROR_INVALID_ADDRESS, False)
        for s, e in alloc.committed_in(start, end):
            # The table first: a fork in between leaves the child a table
            # that is never more permissive than its memory (_narrow_first).
            saved = alloc.runs_in(s, e)
            alloc.set_state(s, e, _tab.RESERVED, 0)
            try:
                alloc.region._decommit(s, e - s)
            except BaseException:
                _restore_runs(alloc, saved)
                raise
        return True
    finally:
        alloc.lock.release()


@_win32_errors((False, 0))
def VirtualProtect(address, size, new_protect):
    """Change the protection of committed pages, as Windows' ``VirtualProtect``.

    Not a write.  On a ``MEM_WRITE_WATCH`` allocation it latches the written
    state of the pages it covers: a later decommit keeps it (Windows does;
    Wine's ``test_write_watch``).

    Parameters
    ----------
    address, size : int
        The range, rounded out to whole pages.
    new_protect : int
        One of the six plain ``PAGE_*`` protections.

    Returns
    -------
    (bool, int)
        ``(True, old_protect)`` -- the first page's previous protection --
        or ``(False, 0)`` with the last error: ``ERROR_INVALID_PARAMETER``
        (bad protection or size 0), ``ERROR_INVALID_ADDRESS`` (not inside one
        allocation, or a page in the range is not committed).

    Raises
    ------
    TypeError, OverflowError
        An argument is not an integer, or does not fit its C type.
    """
    address = _size_t(address, "address")
    size = _size_t(size, "size")
    new_protect = _dword(new_protect, "new_protect")
    if new_protect not in _PROT:
        return _fail(ERROR_INVALID_PARAMETER, (False, 0))
    start, end = _page_range(address, size)
    if start == end:
        return _fail(ERROR_INVALID_PARAMETER, (False, 0))
    alloc = _locked(start)
    if alloc is None:
        return _fail(ERROR_INVALID_ADDRESS, (False, 0))
    try:
        if end > alloc.end or not alloc.all_committed(start, end):
            return _fail(ERROR_INVALID_ADDRESS, (False, 0))
        old = alloc.run_at(start)[3]
        region = alloc.region
        if alloc.watch:
            alloc.latched.update(int(a) for a in region._written_of_runs([(start, end)]))
        runs = alloc.runs_in(start, end)
        _narrow_first(alloc, runs, new_protect)
        try:
            region._protect(start, end - start, _PROT[new_protect])
        except BaseException:
            _restore_runs(alloc, runs)
            raise
        alloc.set_state(start, end, _tab.COMMITTED, new_protect)
        return True, old
    finally:
        alloc.lock.release()


def VirtualQuery(address):
    """Describe the memory at an address, as Windows' ``VirtualQuery``.

    Parameters
    ----------
    address : int

    Returns
    -------
    MEMORY_BASIC_INFORMATION or None
        Inside an allocation: the run of pages from the page holding
        `address` on with the same state and protection (write-watch state
        never splits it).  Free memory: ``MEM_FREE`` up to the next mapping.
        Memory mapped by others: as Linux's ``/proc/self/maps`` describes
        it.  None, with ``ERROR_INVALID_PARAMETER``, beyond the user address
        space.

    Raises
    ------
    TypeError, OverflowError
        `address` is not an integer, or does not fit 64 bits.
    """
    address = _size_t(address, "address")
    if address > MAXIMUM_APPLICATION_ADDRESS:
        return _fail(ERROR_INVALID_PARAMETER, None)
    page = address & ~_PAGE_MASK
    alloc = _locked(page)
    if alloc is not None:
        try:
            s, e, state, prot = alloc.run_at(page)
            return MEMORY_BASIC_INFORMATION(page, alloc.base, alloc.protect, e - page,
                                            state, prot, MEM_PRIVATE)
        finally:
            alloc.lock.release()
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
    """The written pages of a range in the caller's buffer, as Windows'
    ``GetWriteWatch``.

    Parameters
    ----------
    flags : int
        0 or ``WRITE_WATCH_FLAG_RESET``: re-arm exactly the reported pages,
        atomically with reading them.
    base, size : int
        The range; `base` rounds down and the end up to whole pages, and it
        must lie inside one ``MEM_WRITE_WATCH`` allocation.  Only committed
        pages are walked; pages a :func:`VirtualProtect` latched count as
        written, decommitted or not.
    addresses : writable buffer or None
        At least `count` unsigned 64-bit slots (numpy ``uint64`` array,
        ``array('Q')``, a ctypes array, a ``bytearray``); None is NULL.
    count : int or None
        Slots to fill; None is NULL.

    Returns
    -------
    (int, int or None, int)
        ``(0, n, PAGE_SIZE)`` with the first n slots holding page addresses,
        ascending, and nothing written past them; when more pages were
        written than `count`, the first `count` are reported (and reset).
        On failure ``(0xFFFFFFFF, count, 0)`` with the buffer untouched and
        the last error set, checked in Windows' order: `count` NULL ->
        ``ERROR_NOACCESS``; `count` or `size` 0 -> ``ERROR_INVALID_PARAMETER``;
        unknown flag bits -> ``ERROR_INVALID_PARAMETER``; `addresses` NULL ->
        ``ERROR_NOACCESS``; the range not inside one ``MEM_WRITE_WATCH``
        allocation -> ``ERROR_INVALID_PARAMETER``; `addresses` read-only,
        too short, or over inaccessible pages of this module's allocations
        -> ``ERROR_NOACCESS``.

    Raises
    ------
    TypeError
        An argument is not an integer, or `addresses` is not a contiguous
        buffer.
    OverflowError
        An argument does not fit its C type.
    writewatch.ForkedRegionError
        The allocation was made in the parent of this forked process.

    Examples
    --------
    >>> import numpy as np
    >>> from writewatch import win32 as w
    >>> base = w.VirtualAlloc(0, 0x10000, w.MEM_RESERVE | w.MEM_COMMIT | w.MEM_WRITE_WATCH,
    ...                       w.PAGE_READWRITE)
    >>> import ctypes; ctypes.c_uint8.from_address(base + 0x3000).value = 1
    >>> out = np.zeros(16, dtype=np.uint64)
    >>> result, n, granularity = w.GetWriteWatch(w.WRITE_WATCH_FLAG_RESET, base, 0x10000, out, 16)
    >>> result, n, granularity, hex(int(out[0]) - base)
    (0, 1, 4096, '0x3000')
    >>> w.VirtualFree(base, 0, w.MEM_RELEASE)
    True
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
    # _page_range and _tab.find, inlined: the hot path of every frame
    start = base & ~_PAGE_MASK
    end = (base + size + _PAGE_MASK) & ~_PAGE_MASK
    bases, allocs = _tab._table
    i = _bisect_right(bases, start) - 1
    if i < 0:
        _tls.error = ERROR_INVALID_PARAMETER
        return _FAILED, count, 0
    alloc = allocs[i]
    if not alloc.watch or end > alloc.end:
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
    if not out.flags.writeable or not _writable(_array_address(out), 8 * count):
        # A read-only buffer, or one (ctypes array, numpy view,
        # memoryview...) laid over reserved, decommitted or read-only pages
        # of ours (a guest's bad pointer): Windows answers ERROR_NOACCESS,
        # writing would be a crash.
        _tls.error = ERROR_NOACCESS
        return _FAILED, count, 0
    region = alloc.region
    with alloc.lock:
        if region.closed:                   # released meanwhile
            _tls.error = ERROR_INVALID_PARAMETER
            return _FAILED, count, 0
        runs = alloc.committed_in(start, end)
        if alloc.latched:
            n = _get_with_latched(alloc, runs, start, end, flags, out)
        elif runs:
            n = region._get_runs(runs, flags, out)
        else:
            n = 0
    return 0, n, PAGE_SIZE


def _get_with_latched(alloc, runs, start, end, reset, out):
    """GetWriteWatch where some pages are latched: the first len(out) of
    (latched | written), ascending; with reset, exactly those stop counting
    (latch and engine alike).  alloc.lock held."""
    region = alloc.region
    written = region._written_of_runs(runs) if runs else _np.empty(0, _UINT64)
    latched = _np.array(alloc.latched_in(start, end), dtype=_UINT64)
    pages = _np.union1d(written, latched)[:len(out)]
    n = len(pages)
    out[:n] = pages
    if reset and n:
        alloc.latched.difference_update(int(a) for a in pages)
        region._reset_runs(_page_runs(alloc, pages))
    return n


def _page_runs(alloc, pages):
    """Committed runs of consecutive pages among `pages` (ascending)."""
    runs = []
    for a in pages:
        a = int(a)
        if alloc.run_at(a)[2] != _tab.COMMITTED:
            continue
        if runs and runs[-1][1] == a:
            runs[-1][1] = a + PAGE_SIZE
        else:
            runs.append([a, a + PAGE_SIZE])
    return [(s, e) for s, e in runs]


def ResetWriteWatch(base, size):
    """Re-arm a range, as Windows' ``ResetWriteWatch``: none of its pages
    counts as written afterwards, latched ones included.

    Parameters
    ----------
    base, size : int
        The range, rounded out to whole pages, inside one ``MEM_WRITE_WATCH``
        allocation.  Reserved pages in it are fine (they are never written).

    Returns
    -------
    int
        0, or 0xFFFFFFFF with ``ERROR_INVALID_PARAMETER`` when `size` is 0 or
        the range is not inside one ``MEM_WRITE_WATCH`` allocation.

    Raises
    ------
    TypeError, OverflowError
        An argument is not an integer, or does not fit 64 bits.
    writewatch.ForkedRegionError
        The allocation was made in the parent of this forked process.
    """
    if type(base) is not int or type(size) is not int or (base | size) >> _U64:
        _, base, size, _ = _convert(0, base, size, 0)
    if not size:
        _tls.error = ERROR_INVALID_PARAMETER
        return _FAILED
    start, end = _page_range(base, size)
    alloc = _tab.find(start)
    if alloc is None or not alloc.watch or end > alloc.end:
        _tls.error = ERROR_INVALID_PARAMETER
        return _FAILED
    region = alloc.region
    with alloc.lock:
        if region.closed:
            _tls.error = ERROR_INVALID_PARAMETER
            return _FAILED
        if alloc.latched:
            alloc.latched.difference_update([a for a in alloc.latched if start <= a < end])
        runs = alloc.committed_in(start, end)
        if runs:
            region._reset_runs(runs)
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
    bases, allocs = _tab._table
    i = _bisect.bisect_right(bases, address) - 1
    if i < 0:
        i = 0
    for alloc in allocs[i:]:
        if alloc.base >= end:
            break
        if alloc.end <= address:
            continue
        for s, e, state, protect in alloc.runs_in(address, end):
            if state != _tab.COMMITTED or protect not in _WRITABLE:
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
