# The backend interface (numpy.random's bitgen pattern): Region holds every
# piece of shared logic -- argument checks, range rounding, bounds, result
# arrays, `out`, `max_count`, closed/forked checks, the memory guard, the
# region's lock and its extra consumers (trackers) -- and an Engine fills in
# only these hooks.  All hooks but arm(), arm_cost(), detach() and release()
# run without the GIL, under the region's lock, and report failure as -errno,
# naming the failed call in *what; those four run with the GIL and without
# the lock.  The whole contract, and the lock order: docs/hacking.md.
#
# A region's pages are committed (accessible, armed: every write is seen) or
# reserved (PROT_NONE, not armed, never reported).  A Region made by
# Region() is committed whole; writewatch.win32 makes reservations and
# commits parts of them (commit()/decommit()), so that a reservation costs
# nothing per page until it is committed.  collect(), reset(), rearm(),
# protect() and discard() are only ever called on committed pages.

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


cdef inline size_t page_table_bytes(size_t size) noexcept nogil:
    """Upper bound of the page tables that filling [x, x+size) takes on
    x86-64/arm64 with 4 KiB pages: a 4 KiB table per 2 MiB (PTEs), per
    1 GiB (PMDs) and per 512 GiB (PUDs), each count plus one for a range
    that straddles a boundary."""
    return 4096 * ((size >> 21) + 1 + (size >> 30) + 1 + (size >> 39) + 1)


@cython.auto_pickle(False)
cdef class Engine:
    """One backend's state for one region.  Subclasses override the hooks."""

    cdef uintptr_t base
    cdef size_t size
    cdef size_t page

    cdef size_t arm_cost(self, size_t size) noexcept:
        """Bytes of memory that arming (or committing) `size` bytes takes:
        page tables filled with markers, per-page tables of the backend.
        The memory guard refuses what the process could not get."""
        return 0

    cdef int arm(self, uintptr_t base, size_t size, size_t page,
                 bint committed) except -1:
        """Start tracking [base, base+size), freshly mapped and zero-filled.
        committed: mapped read/write, to be armed whole, so that nothing
        counts as written.  Otherwise mapped PROT_NONE, all reserved: set up
        what later commits need, arm nothing.  Raises on failure."""
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
        """Re-arm [start, end): nothing in it counts as written afterwards,
        and every later write is seen -- whatever was done to the pages
        before (a program's own madvise or mprotect included)."""
        what[0] = "reset"
        return -ENOSYS

    cdef int rearm(self, uintptr_t start, uintptr_t end,
                   const char **what) noexcept nogil:
        """Make sure every later write to [start, end) is seen, forgetting
        nothing: written pages stay written.  (A reset of one consumer while
        others exist: the written pages were handed to them just before.)"""
        return 0

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
        clear its written state; the pages stay committed."""
        if madvise(<void *>start, end - start, MADV_DONTNEED) != 0:
            what[0] = "madvise(MADV_DONTNEED)"
            return -errno
        return self.reset(start, end, what)

    cdef int commit(self, uintptr_t start, uintptr_t end, int prot,
                    const char **what) noexcept nogil:
        """Reserved -> committed: make [start, end) accessible with `prot`,
        zero-filled, armed, nothing written.  On failure the range is left
        reserved."""
        what[0] = "commit"
        return -ENOSYS

    cdef int decommit(self, uintptr_t start, uintptr_t end,
                      const char **what) noexcept nogil:
        """Committed -> reserved: contents, written state and what arming
        took (page tables where the kernel gives them back) are gone; the
        range reads as a fresh PROT_NONE reservation."""
        what[0] = "decommit"
        return -ENOSYS

    cdef void detach(self) noexcept:
        """Called before the region is unmapped."""
        pass

    cdef void release(self) noexcept:
        """Called after the region is unmapped: free what arm() took."""
        pass


@cython.auto_pickle(False)
cdef class _PlainEngine(Engine):
    """No write watch: the engine of writewatch.win32's allocations made
    without MEM_WRITE_WATCH.  Commit, decommit and protection changes are
    the plain system calls; nothing is tracked (collect/reset are never
    called on such a region)."""

    cdef int commit(self, uintptr_t start, uintptr_t end, int prot,
                    const char **what) noexcept nogil:
        if prot != PROT_NONE and mprotect(<void *>start, end - start, prot) != 0:
            what[0] = "mprotect"
            return -errno
        return 0

    cdef int decommit(self, uintptr_t start, uintptr_t end,
                      const char **what) noexcept nogil:
        return ww_remap_reserved(start, end, what)
