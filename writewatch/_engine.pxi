# The backend interface (numpy.random's bitgen pattern): Region holds every
# piece of shared logic -- argument checks, range rounding, bounds, result
# arrays, `out`, `max_count`, closed/forked checks -- and an Engine fills in
# only these hooks.  All hooks but arm() run without the GIL and report
# failure as -errno, naming the failed call in *what.

cdef struct Sink:
    # Where collect() puts page addresses.  `limit` slots are always there:
    # an engine writes at most limit - n more, never allocates.
    uint64_t *buf
    size_t n
    size_t limit


cdef inline void sink_put_run(Sink *sink, uint64_t start, uint64_t end,
                              size_t page) noexcept nogil:
    """Append the pages of [start, end), never past the sink's limit."""
    while start < end and sink.n < sink.limit:
        sink.buf[sink.n] = start
        sink.n += 1
        start += page


@cython.auto_pickle(False)
cdef class Engine:
    """One backend's state for one region.  Subclasses override the hooks."""

    cdef uintptr_t base
    cdef size_t size
    cdef size_t page

    cdef int arm(self, uintptr_t base, size_t size, size_t page) except -1:
        """Start tracking [base, base+size), freshly mapped read/write and
        zero-filled, so that nothing counts as written.  Raises on failure."""
        self.base = base
        self.size = size
        self.page = page
        return 0

    cdef int collect(self, uintptr_t start, uintptr_t end, bint reset,
                     Sink *sink, const char **what) noexcept nogil:
        """Put the written pages of [start, end) in ascending order into
        `sink`, stopping at its limit; with `reset`, re-arm exactly the pages
        reported, atomically with reporting them."""
        what[0] = "collect"
        return -ENOSYS

    cdef int reset(self, uintptr_t start, uintptr_t end,
                   const char **what) noexcept nogil:
        """Re-arm [start, end): nothing in it counts as written afterwards."""
        what[0] = "reset"
        return -ENOSYS

    cdef int protect(self, uintptr_t start, uintptr_t end, int prot,
                     const char **what) noexcept nogil:
        """Change the caller-visible protection of [start, end) without
        changing its written state (a protection change is not a write)."""
        if mprotect(<void *>start, end - start, prot) != 0:
            what[0] = "mprotect"
            return -errno
        return 0

    cdef int discard(self, uintptr_t start, uintptr_t end,
                     const char **what) noexcept nogil:
        """Drop the contents of [start, end) (they read as zero again) and
        clear its written state, as a Win32 decommit does."""
        if madvise(<void *>start, end - start, MADV_DONTNEED) != 0:
            what[0] = "madvise(MADV_DONTNEED)"
            return -errno
        return self.reset(start, end, what)

    cdef void detach(self) noexcept:
        """Called before the region is unmapped."""
        pass

    cdef void release(self) noexcept:
        """Called after the region is unmapped: free what arm() took."""
        pass
