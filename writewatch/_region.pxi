# Region: the one public type.  Shared logic lives here, above the engines.

import bisect
import weakref

cdef enum:
    LOCAL_SLOTS = 512      # results up to this many pages need no malloc

cdef enum:                 # Region._range_op
    OP_RESET
    OP_PROTECT
    OP_DISCARD


# The ranges of the open regions: sorted base addresses, and base -> weak
# reference.  The kernel never maps over a live mapping, so a new region that
# overlaps an open one proves the old one was unmapped behind the library's
# back -- and its scans would now read (and reset!) the new region's pages,
# which are write-watched too.  The old region is then marked lost.
cdef list _live_bases = []
cdef dict _live = {}


cdef _claim_range(Region region):
    cdef uintptr_t base = region._base
    cdef uintptr_t end = region._base + region._size
    cdef Py_ssize_t j = bisect.bisect_right(_live_bases, base) - 1
    if j < 0:
        j = 0
    while j < len(_live_bases) and _live_bases[j] < end:
        other = _live[_live_bases[j]]()
        if other is None:                               # stale entry
            del _live[_live_bases[j]]
            del _live_bases[j]
        elif (<Region>other)._base + (<Region>other)._size > base:
            (<Region>other)._lost = True
            _release_range(<Region>other)
            if (<Region>other)._engine is not None:
                (<Region>other)._engine.detach()
        else:
            j += 1
    bisect.insort(_live_bases, base)
    _live[base] = weakref.ref(region)


cdef _release_range(Region region):
    if _live is None or _live_bases is None:       # interpreter shutdown
        return
    ref = _live.get(region._base)
    # In __dealloc__ the weak reference is already dead.
    if ref is not None and ref() in (region, None):
        del _live[region._base]
        _live_bases.remove(region._base)


cdef inline size_t _round_up(size_t x, size_t page) noexcept nogil:
    return (x + page - 1) & ~(page - 1)


cdef inline int _check_mapped(uintptr_t start, uintptr_t end) noexcept nogil:
    """0 if [start, end) is still entirely mapped, else -errno (ENOMEM).

    PAGEMAP_SCAN walks over a hole in silence -- a page unmapped behind the
    library's back (munmap, mremap) would read as "not written" and its
    writes be lost without a word.  msync(MS_ASYNC) on anonymous memory does
    nothing but look the range's VMAs up, and fails with ENOMEM on a hole:
    about 0.1 us, against 0.5-1 ms for a scan of 1 GiB.  A mapping *replaced*
    at the same address is caught by the engine (PAGEMAP_SCAN's
    PM_SCAN_CHECK_WPASYNC fails with EPERM on a VMA not write-watched)."""
    if msync(<void *>start, end - start, MS_ASYNC) != 0:
        return -errno
    return 0


cdef object _index(object value, str name):
    """operator.index with a message that names the argument."""
    if type(value) is int:
        return value
    if isinstance(value, float):
        raise TypeError("%s must be an integer, not float" % name)
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError("%s must be an integer, not %s"
                        % (name, type(value).__name__)) from None


# no_gc_clear: a Region collected as part of a reference cycle must still
# have its engine in __dealloc__, to detach and release it (the mprotect
# engine's table entry, the pagemap engine's userfaultfd).
@cython.no_gc_clear
@cython.auto_pickle(False)
cdef class Region:
    """Anonymous, zero-filled read/write memory whose written pages are tracked.

    ``Region(size, *, backend=None, address=None)``: `size` bytes rounded up
    to whole pages, tracked from creation (nothing counts as written before
    the first write).  `address` asks for a fixed, page-aligned placement and
    never replaces an existing mapping.  `backend` is a name from
    :func:`writewatch.backends`; ``None`` takes ``$WRITEWATCH_BACKEND`` or
    else the best backend available here.
    """

    cdef uintptr_t _base
    cdef size_t _size
    cdef size_t _page
    cdef Engine _engine
    cdef str _backend
    cdef Py_ssize_t _exports
    cdef Py_ssize_t _busy
    cdef bint _closed
    cdef bint _mapped
    cdef uint64_t _fork_gen
    cdef bint _lost            # unmapped behind our back, the range reused
    cdef object __weakref__

    def __cinit__(self):
        self._closed = True
        self._mapped = False
        self._engine = None

    def __init__(self, size, *, backend=None, address=None):
        cdef size_t page = _PAGE_SIZE
        cdef object n = _index(size, "size")
        if n <= 0:
            raise ValueError("size must be positive, got %d" % n)
        if n > _MAX_SIZE:
            raise ValueError("size %d is larger than the address space allows" % n)
        cdef size_t length = _round_up(<size_t>n, page)
        cdef uintptr_t want = 0
        cdef int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
        if address is not None:
            a = _index(address, "address")
            if a <= 0 or a % page:
                raise ValueError("address must be a positive multiple of the "
                                 "page size (%d), got %#x" % (page, a))
            if a > _MAX_SIZE or a + length > _MAX_SIZE:
                raise ValueError("address %#x is outside the user address space" % a)
            want = <uintptr_t>a
            flags |= MAP_FIXED_NOREPLACE
        if self._mapped:
            raise RuntimeError("Region.__init__ called twice")

        name, engine_class = _choose_backend(backend)

        cdef void *p
        with nogil:
            p = mmap(<void *>want, length, PROT_READ | PROT_WRITE, flags, -1, 0)
        if p == MAP_FAILED:
            err = errno
            if err == EEXIST:
                raise syscall_error(err, "mmap(MAP_FIXED_NOREPLACE)",
                                    "[%#x, %#x) is not free" % (want, want + length))
            raise syscall_error(err, "mmap", "%d bytes" % length)
        if want and <uintptr_t>p != want:
            # Kernels before 4.17 ignore MAP_FIXED_NOREPLACE and treat the
            # address as a hint: give the memory back and refuse.
            munmap(p, length)
            raise syscall_error(EEXIST, "mmap(MAP_FIXED_NOREPLACE)",
                                "[%#x, %#x) is not free" % (want, want + length))
        self._base = <uintptr_t>p
        self._size = length
        self._page = page
        self._mapped = True
        # Transparent huge pages would make a 2 MiB page the unit of
        # tracking; the contract is the 4 KiB page.
        madvise(p, length, MADV_NOHUGEPAGE)
        # Before arming: an open region whose range this overlaps was unmapped
        # behind our back, and must let go of it (an engine keyed by address,
        # such as a fault handler's table, would otherwise serve it our faults).
        _claim_range(self)
        engine = engine_class()
        try:
            (<Engine>engine).arm(self._base, length, page)
        except BaseException:
            _release_range(self)
            munmap(p, length)
            self._mapped = False
            (<Engine>engine).release()     # after munmap, as in _unmap()
            raise
        self._engine = engine
        self._backend = name
        self._fork_gen = ww_fork_generation()
        self._closed = False

    # -- properties -----------------------------------------------------

    @property
    def address(self):
        """Base address of the memory (page aligned)."""
        self._check_open()
        return self._base

    @property
    def size(self):
        """Size in bytes, a whole number of pages."""
        return self._size

    @property
    def page_size(self):
        """Tracking granularity in bytes."""
        return self._page

    @property
    def backend(self):
        """Name of the backend that tracks this region."""
        return self._backend

    @property
    def closed(self):
        return self._closed

    def __repr__(self):
        if self._closed:
            return "<writewatch.Region closed, backend=%r>" % (self._backend,)
        return "<writewatch.Region %#x+%#x, backend=%r>" % (
            self._base, self._size, self._backend)

    # -- checks shared by every method ----------------------------------

    cdef int _check_open(self) except -1:
        if self._closed:
            raise ValueError("operation on a closed Region")
        if self._lost:
            raise OSError(EFAULT, "Region [%#x, %#x) was unmapped behind writewatch's "
                          "back and its addresses now belong to another region; "
                          "its memory and write-watch state are lost"
                          % (self._base, self._base + self._size))
        return 0

    cdef int _check_tracking(self) except -1:
        self._check_open()
        if self._fork_gen != ww_fork_generation():
            raise ForkedRegionError(
                "this Region was made in the parent process; after fork() the "
                "child's copy can be read, written and closed, but is not tracked")
        return 0

    cdef int _range(self, object address, object size,
                    uintptr_t *start, uintptr_t *end) except -1:
        """Round [address, address+size) out to pages and check it lies in
        the region.  None means the region's start / up to its end."""
        cdef uintptr_t base = self._base
        cdef uintptr_t limit = self._base + self._size
        if address is None and size is None:      # the whole region: no int objects
            start[0] = base
            end[0] = limit
            return 0
        if address is None:
            a = base
        else:
            a = _index(address, "address")
        if size is None:
            n = limit - a if base <= a < limit else 1
        else:
            n = _index(size, "size")
            if n <= 0:
                raise ValueError("size must be positive, got %d" % n)
        if a < base or a + n > limit:
            raise ValueError("range [%#x, %#x) is not inside the region [%#x, %#x)"
                             % (a, a + n, base, limit))
        start[0] = <uintptr_t>a & ~(<uintptr_t>self._page - 1)
        end[0] = _round_up(<uintptr_t>(a + n), self._page)
        return 0

    cdef int _enter(self) except -1:
        # Arguments are converted before this: their __index__ (or a garbage
        # collection while allocating) may run Python code that closes the
        # region.  Checked again here, with nothing in between that could
        # release the GIL, the region stays open until _leave().
        self._check_tracking()
        self._busy += 1
        return 0

    cdef inline void _leave(self):
        self._busy -= 1

    cdef int _fail(self, int rc, const char *what) except -1:
        raise syscall_error(-rc, what.decode("ascii"))

    cdef int _fail_unmapped(self, int rc, uintptr_t start, uintptr_t end) except -1:
        raise syscall_error(-rc, "msync(MS_ASYNC)",
                            "[%#x, %#x) is no longer entirely mapped: the region was "
                            "unmapped or moved behind writewatch's back, and the "
                            "written state of the missing pages is lost" % (start, end))

    # -- write watch ----------------------------------------------------

    def get_write_watch(self, address=None, size=None, *, reset=False,
                        max_count=None, out=None):
        """Addresses of the pages written in the range, ascending, as uint64.

        With ``reset=True`` exactly the reported pages are re-armed,
        atomically with reading them.  `max_count` (and the length of
        `out`, a preallocated contiguous uint64 array whose prefix view is
        then returned) stops the scan: later pages are neither reported nor
        reset.
        """
        cdef uintptr_t start, end
        cdef Sink sink
        cdef uint64_t local[LOCAL_SLOTS]
        cdef uint64_t *heap = NULL
        cdef const char *what = NULL
        cdef int rc = 0, mapped = 0
        cdef bint do_reset = reset
        cdef np.npy_intp dims[1]
        cdef np.PyArray_Dims shape
        cdef size_t limit
        cdef np.ndarray outarr
        cdef np.ndarray result = None
        self._check_tracking()
        self._range(address, size, &start, &end)
        limit = (end - start) // self._page
        if max_count is not None:
            m = _index(max_count, "max_count")
            if m < 1:
                raise ValueError("max_count must be at least 1, got %d" % m)
            if m < limit:
                limit = <size_t>m
        if out is not None:
            outarr = _check_out(out)
            if <size_t>np.PyArray_DIM(outarr, 0) < limit:
                limit = <size_t>np.PyArray_DIM(outarr, 0)
            sink.buf = <uint64_t *>np.PyArray_DATA(outarr)
        elif do_reset:
            # The result array is made before the pages are re-armed: a
            # MemoryError after the reset would lose them (reported to no one).
            dims[0] = <np.npy_intp>limit
            result = np.PyArray_EMPTY(1, dims, np.NPY_UINT64, 0)
            sink.buf = <uint64_t *>np.PyArray_DATA(result)
        elif limit <= LOCAL_SLOTS:
            sink.buf = local
        else:
            heap = <uint64_t *>malloc(limit * sizeof(uint64_t))
            if heap == NULL:
                raise MemoryError()
            sink.buf = heap
        sink.n = 0
        sink.limit = limit
        self._enter()
        with nogil:
            mapped = _check_mapped(start, end)
            if mapped == 0:
                rc = self._engine.collect(start, end, do_reset, &sink, &what)
        self._leave()
        try:
            if mapped < 0:
                self._fail_unmapped(mapped, start, end)
            if rc < 0:
                self._fail(rc, what)
            if out is not None:
                return out[:sink.n]
            dims[0] = <np.npy_intp>sink.n
            if result is not None:
                if sink.n < limit:
                    shape.ptr = dims
                    shape.len = 1
                    try:                        # shrinks in place (realloc)
                        np.PyArray_Resize(result, &shape, 0, np.NPY_CORDER)
                    except MemoryError:
                        return result[:sink.n]
                return result
            result = np.PyArray_EMPTY(1, dims, np.NPY_UINT64, 0)
            if sink.n:
                memcpy(np.PyArray_DATA(result), sink.buf, sink.n * sizeof(uint64_t))
            return result
        finally:
            free(heap)

    def reset_write_watch(self, address=None, size=None):
        """Re-arm the range: none of its pages counts as written afterwards."""
        self._range_op(OP_RESET, address, size, 0)

    # -- hooks for writewatch.win32 (not public API) --------------------

    def _protect(self, address, size, int prot):
        """mprotect() the range with `prot` (PROT_* bits) without touching
        its written state."""
        self._range_op(OP_PROTECT, address, size, prot)

    def _discard(self, address, size):
        """Drop the range's contents and written state (Win32 decommit)."""
        self._range_op(OP_DISCARD, address, size, 0)

    cdef int _range_op(self, int op, object address, object size, int prot) except -1:
        cdef uintptr_t start, end
        cdef const char *what = NULL
        cdef int rc = 0, mapped = 0
        self._check_tracking()
        self._range(address, size, &start, &end)
        self._enter()
        with nogil:
            mapped = _check_mapped(start, end)
            if mapped == 0:
                if op == OP_RESET:
                    rc = self._engine.reset(start, end, &what)
                elif op == OP_PROTECT:
                    rc = self._engine.protect(start, end, prot, &what)
                else:
                    rc = self._engine.discard(start, end, &what)
        self._leave()
        if mapped < 0:
            self._fail_unmapped(mapped, start, end)
        if rc < 0:
            self._fail(rc, what)
        return 0

    # -- buffer protocol ------------------------------------------------

    def __getbuffer__(self, Py_buffer *view, int flags):
        self._check_open()
        PyBuffer_FillInfo(view, self, <void *>self._base, self._size, 0, flags)
        self._exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self._exports -= 1

    # -- lifetime -------------------------------------------------------

    def close(self):
        """Unmap the memory.  Idempotent; raises BufferError while views of
        the memory exist, so none can outlive it."""
        if self._closed:
            return
        if self._exports > 0:
            raise BufferError("cannot close a Region while %d view(s) of its "
                              "memory exist" % self._exports)
        self._closed = True            # no new call can start
        # Let calls in other threads finish -- but in a forked child those
        # threads do not exist: a call in flight at fork() never ends there.
        while self._busy > 0 and self._fork_gen == ww_fork_generation():
            with nogil:
                sched_yield()
        self._unmap()

    cdef void _unmap(self) noexcept:
        if not self._mapped:
            return
        if not self._lost:             # else the range is another region's now,
            if self._engine is not None:            # and the engine detached already
                self._engine.detach()
            _release_range(self)
            munmap(<void *>self._base, self._size)
        self._mapped = False
        if self._engine is not None:
            self._engine.release()

    def __enter__(self):
        self._check_open()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __dealloc__(self):
        # No view can be alive here (a view holds a reference to us).
        self._closed = True
        self._unmap()


cdef np.ndarray _check_out(object out):
    # C-API checks: this sits on the hot path of every out= call.
    if not np.PyArray_Check(out):
        raise TypeError("out must be a numpy.ndarray of uint64, not %s"
                        % type(out).__name__)
    cdef np.ndarray arr = <np.ndarray>out
    if not (np.PyArray_ISUNSIGNED(arr) and np.PyArray_ITEMSIZE(arr) == 8
            and np.PyArray_ISNOTSWAPPED(arr)):
        raise TypeError("out must have dtype uint64, not %s" % arr.dtype)
    if np.PyArray_NDIM(arr) != 1:
        raise ValueError("out must be one-dimensional")
    if not np.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError("out must be contiguous")
    if not np.PyArray_ISWRITEABLE(arr):
        raise ValueError("out must be writeable")
    if np.PyArray_DIM(arr, 0) == 0:
        raise ValueError("out must have room for at least one address")
    return arr


def _array_address(np.ndarray a):
    """Address of an array's first element (for writewatch.win32's check of
    a caller's buffer against its own inaccessible pages)."""
    return <uintptr_t>np.PyArray_DATA(a)
