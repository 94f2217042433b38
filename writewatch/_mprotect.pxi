# The `mprotect` backend: the classic emulation (Wine's, before PAGEMAP_SCAN).
# Pages not written since the last reset are kept without write permission;
# a process-wide SIGSEGV handler in C (includes/mprotect_handler.h; the
# calls below go to its control side, includes/mprotect_control.h) records
# the first write to each and gives the permission back.  Works on any
# Linux; kernel writes into a clean page (read(2) into the region) fail with
# EFAULT -- see docs/backends.md.


cdef class _MprotectEngine(Engine):
    cdef ww_mp_region *r

    cdef size_t arm_cost(self, size_t size) noexcept:
        # A state byte per page, calloc'd: zero bytes stand for the region's
        # first state, so only the pages of it that writes and protection
        # changes touch cost memory -- as the page tables, which fill as the
        # pages are written, as for any memory.
        return 4096

    cdef int arm(self, uintptr_t base, size_t size, size_t page,
                 bint committed) except -1:
        Engine.arm(self, base, size, page, committed)
        cdef int err = 0
        cdef const char *what = NULL
        self.r = ww_mp_arm(base, size, page, committed, &err, &what)
        if self.r == NULL:
            raise syscall_error(-err, what.decode("ascii"))
        return 0

    cdef int collect(self, uintptr_t start, uintptr_t end, bint reset,
                     Sink *sink, const char **what) noexcept nogil:
        # Re-install on top if someone (faulthandler.enable()) took SIGSEGV.
        if not ww_mp_handler_is_current():
            ww_mp_install()
        return ww_mp_collect(self.r, start, end, reset, sink.buf, &sink.n,
                             sink.limit, what)

    cdef int reset(self, uintptr_t start, uintptr_t end,
                   const char **what) noexcept nogil:
        # The written pages lose their mark and their write permission; then
        # every page's protection is applied again, so that a program's own
        # mprotect() of tracked pages cannot hide later writes.
        cdef int rc
        if not ww_mp_handler_is_current():
            ww_mp_install()
        rc = ww_mp_reset(self.r, start, end, what)
        if rc == 0:
            rc = ww_mp_rearm(self.r, start, end, what)
        return rc

    cdef int rearm(self, uintptr_t start, uintptr_t end,
                   const char **what) noexcept nogil:
        return ww_mp_rearm(self.r, start, end, what)

    cdef int protect(self, uintptr_t start, uintptr_t end, int prot,
                     const char **what) noexcept nogil:
        return ww_mp_protect(self.r, start, end, prot, what)

    cdef int commit(self, uintptr_t start, uintptr_t end, int prot,
                    const char **what) noexcept nogil:
        return ww_mp_commit(self.r, start, end, prot, what)

    cdef int decommit(self, uintptr_t start, uintptr_t end,
                      const char **what) noexcept nogil:
        return ww_mp_decommit(self.r, start, end, what)

    cdef void detach(self) noexcept:
        if self.r != NULL:
            ww_mp_detach(self.r)

    cdef void release(self) noexcept:
        if self.r != NULL:
            ww_mp_release(self.r)
            self.r = NULL

    def __dealloc__(self):
        # Only if the region never got to detach us: never leave a table
        # entry for memory that may be mapped again by someone else.
        if self.r != NULL:
            ww_mp_detach(self.r)
            ww_mp_release(self.r)
            self.r = NULL


def _mprotect_stats():
    """Process-wide counters of the mprotect backend, for tests and tuning:
    regions tracked now, faults resolved, faults that made a whole run writable instead of
    splitting it, re-arms skipped (over budget or refused by the kernel),
    the estimated VMAs added by splits and the budget for them."""
    return {"regions": ww_mp_regions(), "faults": ww_mp_nfaults, "widened": ww_mp_nwidened,
            "kept_writable": ww_mp_nkept, "split_vmas": ww_mp_vmas,
            "split_budget": ww_mp_vma_limit}


def _mprotect_vmas(Region region):
    """VMAs /proc/self/maps shows over the region's memory (for tests)."""
    return ww_mp_vmas_in(region._base, region._base + region._size)


def _mprotect_reinstall():
    """Put the handler back on top of SIGSEGV now (Region methods do this
    by themselves); returns whether it had been replaced."""
    replaced = not ww_mp_handler_is_current()
    rc = ww_mp_install()
    if rc < 0:
        raise syscall_error(-rc, "sigaction(SIGSEGV)")
    return replaced


def _probe_mprotect():
    """(available, reason): a real round trip in this process -- install
    the handler, write, fault, record, re-protect, write again."""
    try:
        r = _probe_region(4 * _PAGE_SIZE, "mprotect")
    except OSError as e:
        return _probe_refused(e)
    try:
        view = memoryview(r)
        view[_PAGE_SIZE] = 1
        first = r.get_write_watch(reset=True)
        second = r.get_write_watch()
        view[_PAGE_SIZE + 1] = 2
        third = r.get_write_watch()
        view.release()
        # Near vm.max_map_count the backend reports whole runs (a superset
        # of the pages written): the written page must be among them.
        want = r.address + _PAGE_SIZE
        if want not in first or len(second) or want not in third:
            return False, ("the SIGSEGV handler answered wrongly on a probe region "
                           "(got %s, %s, %s)" % ([int(a) for a in first], [int(a) for a in second],
                                                  [int(a) for a in third]))
    except OSError as e:
        return _probe_refused(e)
    finally:
        r.close()
    return True, "mprotect + SIGSEGV handler (kernel writes into clean pages fail with EFAULT)"
