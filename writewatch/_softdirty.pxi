# The `softdirty` backend: the kernel's soft-dirty bit (pagemap bit 55) and
# clear_refs "4".  Process-wide and not atomic by nature: see
# includes/softdirty.h for exactly what is and is not guaranteed.
#
# Every hook takes the GIL back for its whole duration: the window between
# folding the soft-dirty bits and clear_refs -- where a write would be lost
# -- is then closed to every write made by Python code.  Only writes made
# without the GIL (kernel writes, C code that released it) can fall in it.


@cython.auto_pickle(False)
cdef class _SoftDirtyEngine(Engine):
    cdef ww_sd_region *r

    def __cinit__(self):
        self.r = NULL

    cdef size_t arm_cost(self, size_t size) noexcept:
        return size // _PAGE_SIZE // 8 + 8          # a bit per page

    cdef int arm(self, uintptr_t base, size_t size, size_t page,
                 bint committed) except -1:
        Engine.arm(self, base, size, page, committed)
        cdef const char *what = NULL
        cdef int rc
        self.r = ww_sd_region_new()
        if self.r == NULL:
            raise MemoryError()
        rc = ww_sd_arm(self.r, base, size, page, &what)      # GIL held
        if rc < 0:
            ww_sd_region_free(self.r)
            self.r = NULL
            raise syscall_error(-rc, what.decode("ascii"))
        return 0

    cdef int collect(self, uintptr_t start, uintptr_t end, bint reset,
                     Sink *sink, const char **what) noexcept nogil:
        with gil:
            return ww_sd_collect(self.r, start, end, reset, sink.buf, &sink.n,
                                 sink.limit, what)

    cdef int reset(self, uintptr_t start, uintptr_t end,
                   const char **what) noexcept nogil:
        with gil:
            return ww_sd_collect(self.r, start, end, 1, NULL, NULL, 0, what)

    cdef int discard(self, uintptr_t start, uintptr_t end,
                     const char **what) noexcept nogil:
        with gil:
            return ww_sd_discard(self.r, start, end, what)

    cdef int commit(self, uintptr_t start, uintptr_t end, int prot,
                    const char **what) noexcept nogil:
        with gil:
            return ww_sd_commit(self.r, start, end, prot, what)

    cdef int decommit(self, uintptr_t start, uintptr_t end,
                      const char **what) noexcept nogil:
        with gil:
            if mprotect(<void *>start, end - start, PROT_NONE) != 0:
                what[0] = "mprotect"
                return -errno
            return ww_sd_discard(self.r, start, end, what)

    # protect(): the default mprotect.  mprotect keeps the soft-dirty bit,
    # and since Linux 6.1 (commit 76aefad628aa, "mm/mprotect: fix soft-dirty
    # check in can_change_pte_writable()") never makes a clean pte writable
    # behind soft-dirty's back; older kernels could lose the next write.

    cdef void detach(self) noexcept:
        if self.r != NULL:
            ww_sd_detach(self.r)

    cdef void release(self) noexcept:
        if self.r != NULL:           # NULL when arm() failed
            ww_sd_region_free(self.r)
            self.r = NULL

    def __dealloc__(self):
        if self.r != NULL:
            ww_sd_detach(self.r)
            ww_sd_region_free(self.r)
            self.r = NULL


def _softdirty_verdict(after_write, after_clear, after_rewrite):
    """(available, reason) from the probe's three readings of pagemap bit 55
    on one page: after a write, after clear_refs "4", after a second write.
    Soft-dirty works iff clear_refs clears the bit and a write sets it."""
    if after_clear:
        return False, ('writing "4" to /proc/self/clear_refs did not clear '
                       'pagemap bit 55 (soft-dirty)')
    if not after_rewrite:
        if not after_write:
            return False, ("pagemap bit 55 (soft-dirty) never sets on a written "
                           "page: the kernel is built without CONFIG_MEM_SOFT_DIRTY "
                           '(/proc/self/clear_refs accepts "4" silently)')
        return False, ('a write after clear_refs "4" did not set pagemap bit 55 '
                       "(soft-dirty)")
    return True, ('pagemap soft-dirty bit + clear_refs "4" (process-wide, not '
                  "atomic: a write made without the GIL that races a reset can "
                  "be lost)")


def _probe_softdirty():
    """(available, reason): write a page, clear_refs, read bit 55 back (must
    be 0), write again, read back (must be 1) -- on a scratch region, with
    every live softdirty region folded before the clear."""
    cdef const char *what = NULL
    cdef int rc
    cdef uintptr_t addr
    try:
        r = _probe_region(_PAGE_SIZE, "softdirty")
    except OSError as e:
        return _probe_refused(e)
    try:
        addr = r.address
        bits = []
        with memoryview(r) as mv:
            for step in ("write", "clear", "write"):
                if step == "write":
                    mv[0] = (mv[0] + 1) & 0xFF
                else:
                    rc = ww_sd_clear_all(&what)
                    if rc < 0:
                        return _probe_refused(syscall_error(-rc, what.decode("ascii")))
                rc = ww_sd_page_bit(addr, _PAGE_SIZE)
                if rc < 0:
                    return _probe_refused(syscall_error(-rc, "pread(/proc/self/pagemap)"))
                bits.append(rc)
    finally:
        r.close()
    return _softdirty_verdict(*bits)
