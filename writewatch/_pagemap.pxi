# The `pagemap` backend: userfaultfd asynchronous write-protect (the kernel
# resolves write faults itself, no thread, no signal) plus the PAGEMAP_SCAN
# ioctl, which reports written pages and -- with PM_SCAN_WP_MATCHING --
# write-protects exactly those again in the same page-table walk.  Linux 6.7.

cdef enum:
    SCAN_VEC_LEN = 256          # struct page_region slots per ioctl (6 KiB of stack)
    MIN_WINDOW = 64 * 1024      # first scan window when max_count bounds the call


cdef inline void _scan_arg_init(pm_scan_arg *arg, uint64_t flags,
                                page_region *vec, size_t vec_len) noexcept nogil:
    memset(arg, 0, sizeof(pm_scan_arg))
    arg.size = sizeof(pm_scan_arg)
    arg.flags = flags | PM_SCAN_CHECK_WPASYNC
    arg.vec = <uintptr_t>vec
    arg.vec_len = vec_len
    arg.category_mask = PAGE_IS_WRITTEN
    arg.return_mask = PAGE_IS_WRITTEN


cdef inline const char *_scan_failure(long r) noexcept nogil:
    # PM_SCAN_CHECK_WPASYNC fails with EPERM on a VMA that is not registered
    # for async write-protect: the mapping was replaced (mmap MAP_FIXED,
    # mremap onto it) or the userfaultfd closed behind the library's back.
    if r == -EPERM:
        return ("ioctl(PAGEMAP_SCAN) [the range is no longer registered with "
                "the region's userfaultfd: mapping replaced or userfaultfd "
                "closed behind writewatch's back]")
    return "ioctl(PAGEMAP_SCAN)"


cdef class _PagemapEngine(Engine):
    # The process's userfaultfd (ww_common.h: one per process and fork
    # generation, shared by every pagemap region) and /proc/self/pagemap.
    cdef int uffd
    cdef int pmfd

    def __cinit__(self):
        self.uffd = -1
        self.pmfd = -1

    cdef size_t arm_cost(self, size_t size) noexcept:
        # WP_UNPOPULATED puts a marker on every page: the page tables of the
        # whole range are filled, touched or not.
        return page_table_bytes(size)

    cdef int arm(self, uintptr_t base, size_t size, size_t page,
                 bint committed) except -1:
        Engine.arm(self, base, size, page, committed)
        cdef const char *what = NULL
        cdef int fd = ww_pagemap_fd()
        if fd < 0:
            raise syscall_error(-fd, "open(/proc/self/pagemap)")
        self.pmfd = fd
        fd = ww_async_uffd(&what)
        if fd < 0:
            raise syscall_error(-fd, what.decode("ascii"))
        self.uffd = fd
        if not committed:
            return 0
        cdef int rc
        with nogil:
            rc = self._arm_range(base, base + size, &what)
        if rc < 0 and self._renew():
            # The process's userfaultfd was closed behind our back: the
            # regions registered through it are lost, but new ones need not be.
            with nogil:
                rc = self._arm_range(base, base + size, &what)
        if rc < 0:
            raise syscall_error(-rc, what.decode("ascii"))
        return 0

    cdef bint _renew(self) noexcept nogil:
        """After a failed call: if self.uffd is no longer the descriptor the
        process opened, switch to a fresh one (True)."""
        cdef const char *what = NULL
        cdef int fd
        if not ww_async_uffd_lost(self.uffd):
            return False
        fd = ww_async_uffd(&what)
        if fd < 0:
            return False
        self.uffd = fd
        return True

    cdef int _arm_range(self, uintptr_t start, uintptr_t end,
                        const char **what) noexcept nogil:
        """Register [start, end) for async write-protect and put a marker on
        every page (with WP_UNPOPULATED this fills its page tables: about
        2 MiB and a few ms per GiB).  On failure nothing stays registered."""
        cdef uffdio_register reg
        cdef uffdio_writeprotect wp
        cdef uffdio_range rng
        cdef long rc
        reg.range.start = start
        reg.range.len = end - start
        reg.mode = UFFDIO_REGISTER_MODE_WP
        reg.ioctls = 0
        rc = ww_ioctl(self.uffd, UFFDIO_REGISTER, &reg)
        if rc < 0:
            what[0] = "ioctl(UFFDIO_REGISTER) mode WP"
            return <int>rc
        wp.range.start = start
        wp.range.len = end - start
        wp.mode = UFFDIO_WRITEPROTECT_MODE_WP
        rc = ww_ioctl(self.uffd, UFFDIO_WRITEPROTECT, &wp)
        if rc < 0:
            rng.start = start
            rng.len = end - start
            ww_ioctl(self.uffd, UFFDIO_UNREGISTER, &rng)
            what[0] = "ioctl(UFFDIO_WRITEPROTECT)"
            return <int>rc
        return 0

    cdef int collect(self, uintptr_t start, uintptr_t end, bint reset,
                     Sink *sink, const char **what) noexcept nogil:
        cdef page_region vec[SCAN_VEC_LEN]
        cdef pm_scan_arg arg
        cdef long r, i
        cdef uintptr_t pos = start, wend
        cdef size_t page = self.page
        cdef size_t window = 0
        _scan_arg_init(&arg, PM_SCAN_WP_MATCHING if reset else 0, vec, SCAN_VEC_LEN)
        # max_pages alone does not bound the cost: when the limit is reached
        # on the last written page, the kernel walks on to the end of the
        # range looking for one more (to place walk_end).  When the limit is
        # smaller than the range, scan growing windows instead, so the walk
        # past the last reported page is bounded by what was already walked.
        if sink.limit < (end - start) // page:
            window = sink.limit * page * 2
            if window < MIN_WINDOW:
                window = MIN_WINDOW
        while pos < end and sink.n < sink.limit:
            wend = end if window == 0 or end - pos <= window else pos + window
            arg.start = pos
            arg.end = wend
            arg.max_pages = sink.limit - sink.n
            r = ww_ioctl(self.pmfd, PAGEMAP_SCAN, &arg)
            if r < 0:
                if r == -EPERM:
                    ww_async_uffd_lost(self.uffd)
                if reset and sink.n > 0:
                    # Pages reported by an earlier ioctl of this call were
                    # re-armed already: hand them back as a prefix result
                    # rather than lose them; the next call meets the error.
                    return 0
                what[0] = _scan_failure(r)
                return <int>r
            for i in range(r):
                sink_put_run(sink, vec[i].start, vec[i].end, page)
            if arg.walk_end < wend:
                if arg.walk_end <= pos:     # no progress: never spin
                    what[0] = "ioctl(PAGEMAP_SCAN) walk_end"
                    return -EIO
                pos = arg.walk_end          # vec was full, or the limit hit
            else:
                pos = wend
                window *= 2
        return 0

    cdef int reset(self, uintptr_t start, uintptr_t end,
                   const char **what) noexcept nogil:
        # A reset is a scan that write-protects what it matches.  The vec is
        # never empty: a NULL vec with vec_len 0 could crash 6.7+ kernels on a
        # partly covered huge page (kernel/README.md).
        cdef page_region vec[SCAN_VEC_LEN]
        cdef pm_scan_arg arg
        cdef long r
        cdef uintptr_t pos = start
        _scan_arg_init(&arg, PM_SCAN_WP_MATCHING, vec, SCAN_VEC_LEN)
        while pos < end:
            arg.start = pos
            arg.end = end
            r = ww_ioctl(self.pmfd, PAGEMAP_SCAN, &arg)
            if r < 0:
                if r == -EPERM:
                    ww_async_uffd_lost(self.uffd)
                what[0] = _scan_failure(r)
                return <int>r
            if arg.walk_end <= pos:
                what[0] = "ioctl(PAGEMAP_SCAN) walk_end"
                return -EIO
            pos = arg.walk_end
        return 0

    cdef int discard(self, uintptr_t start, uintptr_t end,
                     const char **what) noexcept nogil:
        # MADV_DONTNEED drops the pages *and* their uffd-wp markers; the scan
        # would then call them written.  Re-arm explicitly: WRITEPROTECT with
        # WP_UNPOPULATED puts the markers back on the now-empty range.
        cdef uffdio_writeprotect wp
        cdef long rc
        if madvise(<void *>start, end - start, MADV_DONTNEED) != 0:
            what[0] = "madvise(MADV_DONTNEED)"
            return -errno
        wp.range.start = start
        wp.range.len = end - start
        wp.mode = UFFDIO_WRITEPROTECT_MODE_WP
        rc = ww_ioctl(self.uffd, UFFDIO_WRITEPROTECT, &wp)
        if rc < 0:
            what[0] = "ioctl(UFFDIO_WRITEPROTECT)"
            return <int>rc
        return 0

    cdef int commit(self, uintptr_t start, uintptr_t end, int prot,
                    const char **what) noexcept nogil:
        # Armed while still PROT_NONE, then opened: no write can land before
        # its marker.
        cdef int rc = self._arm_range(start, end, what)
        if rc < 0 and self._renew():
            rc = self._arm_range(start, end, what)
        if rc < 0:
            return rc
        if prot != PROT_NONE and mprotect(<void *>start, end - start, prot) != 0:
            rc = -errno
            ww_remap_reserved(start, end, what)
            what[0] = "mprotect"
            return rc
        return 0

    cdef int decommit(self, uintptr_t start, uintptr_t end,
                      const char **what) noexcept nogil:
        # A fresh PROT_NONE mapping in its place: the registration, the
        # markers and the page tables they filled go with the old one.
        return ww_remap_reserved(start, end, what)

    # release(): nothing.  The memory is unmapped, which ends its
    # registration; the shared userfaultfd stays open for the next region.
    # (No uffd-wp bit can outlive its userfaultfd either: CVE-2024-36881
    # concerned bits left after close().)


def _uffd_features():
    """Features this kernel's userfaultfd offers (UFFDIO_API handshake with
    none requested), or raise OSError naming the call that failed."""
    cdef int fd = ww_userfaultfd(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY)
    cdef uffdio_api api
    cdef long rc
    if fd < 0:
        raise syscall_error(-fd, "userfaultfd(UFFD_USER_MODE_ONLY)")
    api.api = UFFD_API
    api.features = 0
    api.ioctls = 0
    rc = ww_ioctl(fd, UFFDIO_API, &api)
    close(fd)
    if rc < 0:
        raise syscall_error(-rc, "ioctl(UFFDIO_API)")
    return api.features


def _probe_pagemap():
    """(available, reason): a real round trip -- arm, write, scan-and-reset,
    scan again -- on a scratch region."""
    try:
        features = _uffd_features()
    except OSError as e:
        if e.errno in _TRANSIENT_ERRNOS:
            raise                       # not remembered: see _probe()
        return False, "userfaultfd: %s" % e
    missing = [n for n, bit in (("UFFD_FEATURE_WP_ASYNC", UFFD_FEATURE_WP_ASYNC),
                                ("UFFD_FEATURE_WP_UNPOPULATED", UFFD_FEATURE_WP_UNPOPULATED))
               if not features & bit]
    if missing:
        return False, "userfaultfd lacks %s (Linux >= 6.7 needed)" % ", ".join(missing)
    try:
        r = _probe_region(2 * _PAGE_SIZE, "pagemap")
    except OSError as e:
        return _probe_refused(e)
    try:
        view = memoryview(r)
        view[_PAGE_SIZE] = 1
        view.release()
        first = r.get_write_watch(reset=True)
        second = r.get_write_watch()
        if list(first) != [r.address + _PAGE_SIZE] or len(second):
            return False, ("PAGEMAP_SCAN answered wrongly on a probe region "
                           "(got %s, then %s)" % (list(first), list(second)))
    except OSError as e:
        if e.errno in (ENOTTY, EINVAL):
            return False, "PAGEMAP_SCAN not supported (Linux >= 6.7 needed): %s" % e
        return _probe_refused(e)
    finally:
        r.close()
    return True, "userfaultfd async write-protect + PAGEMAP_SCAN"
