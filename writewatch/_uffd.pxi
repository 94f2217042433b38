# The `uffd` backend: synchronous userfaultfd write-protect (Linux >= 5.7).
# A write to an armed page faults; the handler thread (plain C, no GIL,
# includes/uffd_thread.h) records the page in the region's bitmap and
# unprotects it.  get-and-reset write-protects the reported pages again.
# The race argument (why nothing is lost) is in uffd_thread.h.

from libc.errno cimport ETIMEDOUT


@cython.auto_pickle(False)
cdef class _UffdEngine(Engine):
    cdef ww_uffd_region *r

    def __cinit__(self):
        self.r = NULL

    cdef size_t arm_cost(self, size_t size) noexcept:
        # Markers fill the page tables (not in MISSING mode, which only maps
        # pages as they are touched); and a bit per page.
        return page_table_bytes(size) + size // _PAGE_SIZE // 8 + 8

    cdef int arm(self, uintptr_t base, size_t size, size_t page,
                 bint committed) except -1:
        Engine.arm(self, base, size, page, committed)
        cdef const char *what = NULL
        cdef int rc
        self.r = ww_uffd_region_new()
        if self.r == NULL:
            raise MemoryError()
        with nogil:
            rc = ww_uffd_arm(self.r, base, size, page, committed, &what)
        if rc < 0:
            ww_uffd_region_free(self.r)
            self.r = NULL
            raise syscall_error(-rc, what.decode("ascii"))
        return 0

    cdef int collect(self, uintptr_t start, uintptr_t end, bint reset,
                     Sink *sink, const char **what) noexcept nogil:
        return ww_uffd_collect(self.r, start, end, reset, sink.buf, &sink.n,
                               sink.limit, what)

    cdef int reset(self, uintptr_t start, uintptr_t end,
                   const char **what) noexcept nogil:
        # Every page, not only the written ones: a program's MADV_DONTNEED
        # drops the markers of pages whose bit is clear, and their writes
        # would never fault again.
        return ww_uffd_rearm(self.r, start, end, 1, what)

    cdef int rearm(self, uintptr_t start, uintptr_t end,
                   const char **what) noexcept nogil:
        return ww_uffd_rearm(self.r, start, end, 0, what)

    cdef int discard(self, uintptr_t start, uintptr_t end,
                     const char **what) noexcept nogil:
        return ww_uffd_discard(self.r, start, end, what)

    cdef int commit(self, uintptr_t start, uintptr_t end, int prot,
                    const char **what) noexcept nogil:
        return ww_uffd_commit(self.r, start, end, prot, what)

    cdef int decommit(self, uintptr_t start, uintptr_t end,
                      const char **what) noexcept nogil:
        return ww_uffd_decommit(self.r, start, end, what)

    # protect(): the default mprotect.  mprotect keeps uffd-wp bits and
    # markers (x86's _PAGE_CHG_MASK carries _PAGE_UFFD_WP; markers are not
    # present ptes) and never makes a uffd-wp pte writable, so a protection
    # change neither loses nor invents a write (tests/test_uffd.py checks).

    cdef void detach(self) noexcept:
        if self.r != NULL:
            with nogil:
                ww_uffd_detach(self.r)

    cdef void release(self) noexcept:
        if self.r != NULL:           # NULL when arm() failed
            ww_uffd_region_free(self.r)
            self.r = NULL

    def __dealloc__(self):
        if self.r != NULL:           # armed but never released by a Region
            ww_uffd_detach(self.r)
            ww_uffd_region_free(self.r)
            self.r = NULL


def _uffd_state():
    """Diagnostics of the process-wide uffd machinery (for tests and
    `writewatch doctor`): mode, whether user-mode only, handler thread,
    live regions and event counters."""
    return {
        "started": ww_uffd_fd >= 0,
        "mode": ("markers" if ww_uffd_mode == WW_UFFD_MARKERS else
                 "missing" if ww_uffd_mode == WW_UFFD_MISSING else None),
        "user_mode_only": bool(ww_uffd_user_mode_only),
        "thread": bool(ww_uffd_thread_running),
        "features": ww_uffd_features,
        "regions": ww_uffd_ntab,
        "wp_faults": ww_uffd_n_wp,
        "missing_faults": ww_uffd_n_missing,
        "stray_faults": ww_uffd_n_stray,
        "duplicate_events": ww_uffd_n_dup,
        "other_events": ww_uffd_n_other,
    }


def _uffd_hold(bint on):
    """Test hook: make the handler thread hold back the fault events it
    reads (the faulting threads stay blocked) until released."""
    with nogil:
        ww_uffd_set_hold(on)


def _uffd_write_in_thread(Region region, uintptr_t offset, int timeout_ms=2000):
    """Write one byte at region.address + offset from a new C thread and
    wait for the handler to let it finish: True, or False if it did not
    within timeout_ms (the region is then unregistered to free the thread)."""
    region._check_tracking()
    if offset >= region._size:
        raise ValueError("offset outside the region")
    cdef _UffdEngine engine = <_UffdEngine?>region._engine
    cdef int rc
    with nogil:
        rc = ww_uffd_write_in_thread(engine.r, region._base + offset, timeout_ms)
    if rc == -ETIMEDOUT:
        return False
    if rc < 0:
        raise syscall_error(-rc, "pthread_create")
    return True


def _probe_uffd():
    """(available, reason): a real round trip -- arm a scratch region, write
    from a thread, see the fault recorded, reset, see it gone, write again."""
    cdef const char *what = NULL
    cdef int rc = ww_uffd_ensure(&what)
    if rc < 0:
        return _probe_refused(syscall_error(-rc, what.decode("ascii")))
    try:
        r = _probe_region(2 * _PAGE_SIZE, "uffd")
    except OSError as e:
        return _probe_refused(e)
    try:
        target = r.address + _PAGE_SIZE
        rounds = []
        for _ in range(2):
            if not _uffd_write_in_thread(r, _PAGE_SIZE):
                return False, ("the handler thread did not resolve a write fault "
                               "within 2 s")
            rounds.append([int(a) for a in r.get_write_watch(reset=True)])
        rounds.append([int(a) for a in r.get_write_watch()])
        if rounds != [[target], [target], []]:
            return False, ("userfaultfd write-protect answered wrongly on a probe "
                           "region (got %s, expected %s)"
                           % (rounds, [[target], [target], []]))
    except OSError as e:
        return _probe_refused(e)
    finally:
        r.close()
    reason = "userfaultfd write-protect with a handler thread (Linux >= 5.7)"
    if ww_uffd_mode == WW_UFFD_MARKERS:
        reason += "; never-touched pages: WP_UNPOPULATED markers"
    else:
        reason += ("; never-touched pages: MISSING faults "
                   "(no UFFD_FEATURE_WP_UNPOPULATED, Linux < 6.4)")
    if ww_uffd_user_mode_only:
        reason += ("; user-mode faults only (UFFD_USER_MODE_ONLY: unprivileged "
                   "and vm.unprivileged_userfaultfd=0): kernel writes into armed "
                   "pages, e.g. read(2) into the region, fail with EFAULT")
    return True, reason
