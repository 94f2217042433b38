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
    cdef int uffd
    cdef int pmfd

    def __cinit__(self):
        self.uffd = -1
        self.pmfd = -1

    cdef int arm(self, uintptr_t base, size_t size, size_t page) except -1:
        Engine.arm(self, base, size, page)
        cdef int fd = ww_pagemap_fd()
        if fd < 0:
            raise syscall_error(-fd, "open(/proc/self/pagemap)")
        self.pmfd = fd
        fd = ww_userfaultfd(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY)
        if fd < 0:
            raise syscall_error(-fd, "userfaultfd(UFFD_USER_MODE_ONLY)")
        self.uffd = fd
        cdef uffdio_api api
        cdef uffdio_register reg
        cdef uffdio_writeprotect wp
        cdef long rc
        api.api = UFFD_API
        api.features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED
        api.ioctls = 0
        rc = ww_ioctl(fd, UFFDIO_API, &api)
        if rc < 0:
            raise syscall_error(-rc, "ioctl(UFFDIO_API)",
                                "features WP_ASYNC|WP_UNPOPULATED need Linux 6.7")
        reg.range.start = base
        reg.range.len = size
        reg.mode = UFFDIO_REGISTER_MODE_WP
        reg.ioctls = 0
        rc = ww_ioctl(fd, UFFDIO_REGISTER, &reg)
        if rc < 0:
            raise syscall_error(-rc, "ioctl(UFFDIO_REGISTER)", "mode WP")
        # With WP_UNPOPULATED this also installs markers on never-touched
        # pages, so their first write counts: page tables for the whole
        # range are filled (about 2 MiB and a few ms per GiB).
        wp.range.start = base
        wp.range.len = size
        wp.mode = UFFDIO_WRITEPROTECT_MODE_WP
        with nogil:
            rc = ww_ioctl(fd, UFFDIO_WRITEPROTECT, &wp)
        if rc < 0:
            raise syscall_error(-rc, "ioctl(UFFDIO_WRITEPROTECT)")
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

    cdef void release(self) noexcept:
        # The memory is already unmapped, so no uffd-wp bit can outlive the
        # userfaultfd (CVE-2024-36881 concerned bits left after close()).
        if self.uffd >= 0:
            close(self.uffd)
            self.uffd = -1


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
        r = Region(2 * _PAGE_SIZE, backend=_FORCE_PREFIX + "pagemap")
    except OSError as e:
        if e.errno in _TRANSIENT_ERRNOS:
            raise
        return False, str(e)
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
        return False, str(e)
    finally:
        r.close()
    return True, "userfaultfd async write-protect + PAGEMAP_SCAN"
