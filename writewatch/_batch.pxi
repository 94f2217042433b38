# get_write_watch_many(): one call for many regions.
#
# A program with thousands of regions (a heap of many allocations, a game's
# buffers) pays a Python call, a lock, an msync and an ioctl per region when
# it asks them one by one: ~2.5-3 us each even in C, because a get-and-reset
# that re-protects a written page flushes its TLB entry.  Asked together,
# pagemap regions that lie next to each other in memory -- regions mapped one
# after another usually do, and since they share the process's userfaultfd
# the kernel merges them into one VMA -- are scanned by one PAGEMAP_SCAN for
# the whole span (~0.2 us per region here), and the result split by region.
# Every other region is asked on its own, still without a Python call each.

cdef struct _Entry:
    uintptr_t base
    uintptr_t end
    Py_ssize_t index        # position in the caller's sequence
    Sink sink
    int rc                  # 0, or -errno
    const char *what
    int group               # regions of one span share the number
    bint merged             # answered twice (a span that failed): sort it
    pthread_mutex_t *mu     # the region's lock


cdef int _entry_cmp(const void *a, const void *b) noexcept nogil:
    cdef uintptr_t x = (<const _Entry *>a).base
    cdef uintptr_t y = (<const _Entry *>b).base
    return (x > y) - (x < y)


cdef extern from "<stdlib.h>" nogil:
    void qsort(void *base, size_t nmemb, size_t size,
               int (*compar)(const void *, const void *) noexcept nogil)


cdef int _scan_span(int pmfd, _Entry *ents, size_t k, bint reset) noexcept nogil:
    """One PAGEMAP_SCAN pass over the adjacent regions ents[0..k): their
    written pages into each one's sink (room for every page of the region,
    so nothing is cut).  Returns 0 or -errno (then ents[0].what is set)."""
    cdef page_region vec[SCAN_VEC_LEN]
    cdef pm_scan_arg arg
    cdef long r, i
    cdef size_t j = 0
    cdef uintptr_t pos = ents[0].base, end = ents[k - 1].end, s, e, lo, hi
    cdef size_t page = _PAGE_SIZE
    _scan_arg_init(&arg, PM_SCAN_WP_MATCHING if reset else 0, vec, SCAN_VEC_LEN)
    while pos < end:
        arg.start = pos
        arg.end = end
        r = ww_ioctl(pmfd, PAGEMAP_SCAN, &arg)
        if r < 0:
            ents[0].what = _scan_failure(r)
            return <int>r
        for i in range(r):
            s = vec[i].start
            e = vec[i].end
            while s < e:
                while j < k and ents[j].end <= s:
                    j += 1
                if j == k:
                    break
                lo = s if s > ents[j].base else ents[j].base
                hi = e if e < ents[j].end else ents[j].end
                sink_put_run(&ents[j].sink, lo, hi, page)
                s = hi
        if arg.walk_end <= pos:
            ents[0].what = "ioctl(PAGEMAP_SCAN) walk_end"
            return -EIO
        pos = arg.walk_end
    return 0


class WriteWatchManyError(OSError):
    """get_write_watch_many() failed for some regions.  `results` holds the
    answer for every region, None where it failed (with reset, the pages
    reported for the others were re-armed: they are here, not lost);
    `failures` maps each failed position to its OSError."""


def get_write_watch_many(regions, *, reset=False):
    """The written pages of many regions, in one call.

    Pagemap regions that lie next to each other in memory are scanned
    together by one kernel call: a program with thousands of small regions
    pays well under a microsecond per region, instead of a Python call and a
    system call each.

    Parameters
    ----------
    regions : iterable of Region
        Each region at most once, any backends, any order.
    reset : bool, optional
        As for :meth:`Region.get_write_watch`: re-arm exactly the reported
        pages, atomically with reading them.

    Returns
    -------
    list of numpy.ndarray
        For each region in the order given, what
        ``region.get_write_watch(reset=reset)`` would return.

    Raises
    ------
    TypeError
        An item is not a Region.
    ValueError
        A region is closed or appears twice.
    writewatch.ForkedRegionError
        A region was made in the parent of this forked process.
    writewatch.WriteWatchManyError
        The kernel refused for some regions (an OSError).  The others were
        answered all the same: ``.results`` holds every answer (None where it
        failed) -- with `reset`, pages already re-armed are there, not lost
        -- and ``.failures`` maps each failed position to its OSError.

    Examples
    --------
    >>> import writewatch
    >>> regions = [writewatch.Region(16 * 4096) for _ in range(3)]
    >>> memoryview(regions[1])[2 * 4096] = 1
    >>> [[(int(a) - r.address) // 4096 for a in res]
    ...  for r, res in zip(regions, writewatch.get_write_watch_many(regions, reset=True))]
    [[], [2], []]
    >>> for r in regions: r.close()
    """
    cdef list rs = list(regions)
    cdef size_t n = len(rs), i, j, k
    cdef _Entry *ents
    cdef Region r
    cdef list results = [None] * <Py_ssize_t>n
    cdef np.npy_intp dims[1]
    cdef np.PyArray_Dims shape
    cdef bint do_reset = reset
    cdef int pmfd = -1, mapped
    cdef int group
    for x in rs:
        if not isinstance(x, Region):
            raise TypeError("get_write_watch_many() takes Regions, not %s"
                            % type(x).__name__)
        (<Region>x)._check_tracking()
    if n == 0:
        return results
    ents = <_Entry *>calloc(n, sizeof(_Entry))
    if ents == NULL:
        raise MemoryError()
    cdef size_t entered = 0
    try:
        for i in range(n):
            r = <Region>rs[i]
            ents[i].base = r._base
            ents[i].end = r._base + r._size
            ents[i].index = <Py_ssize_t>i
            ents[i].mu = &r._mu
        qsort(ents, n, sizeof(_Entry), _entry_cmp)
        for i in range(1, n):
            if ents[i].base == ents[i - 1].base:
                raise ValueError("region %r appears twice" % (rs[ents[i].index],))
        # Result arrays first: a MemoryError after a reset would lose pages.
        for i in range(n):
            r = <Region>rs[ents[i].index]
            dims[0] = <np.npy_intp>(r._size >> r._shift)
            arr = np.PyArray_EMPTY(1, dims, np.NPY_UINT64, 0)
            results[ents[i].index] = arr
            ents[i].sink.buf = <uint64_t *>np.PyArray_DATA(arr)
            ents[i].sink.n = 0
            ents[i].sink.limit = <size_t>dims[0]
        # Spans: runs of adjacent pagemap regions asked straight from the
        # kernel (no tracker); every other region is a span of its own.
        group = 0
        for i in range(n):
            r = <Region>rs[ents[i].index]
            if (i > 0 and ents[i].base == ents[i - 1].end
                    and type(r._engine) is _PagemapEngine and r._own == NULL
                    and not r._reservation
                    and type((<Region>rs[ents[i - 1].index])._engine) is _PagemapEngine
                    and (<Region>rs[ents[i - 1].index])._own == NULL
                    and not (<Region>rs[ents[i - 1].index])._reservation):
                ents[i].group = group
            else:
                group += 1
                ents[i].group = group
        for i in range(n):
            (<Region>rs[ents[i].index])._enter()
            entered += 1
        pmfd = ww_pagemap_fd()
        i = 0
        while i < n:
            j = i + 1
            while j < n and ents[j].group == ents[i].group:
                j += 1
            if j - i == 1:
                r = <Region>rs[ents[i].index]
                with nogil:
                    r._lock()
                    mapped = _check_mapped(ents[i].base, ents[i].end)
                    if mapped < 0:
                        ents[i].rc = mapped
                        ents[i].what = "msync(MS_ASYNC)"
                    else:
                        ents[i].rc = r._collect_locked(ents[i].base, ents[i].end, do_reset,
                                                       &ents[i].sink, &ents[i].what)
                    r._unlock()
            else:
                with nogil:
                    for k in range(i, j):             # ascending addresses
                        pthread_mutex_lock(ents[k].mu)
                    mapped = _check_mapped(ents[i].base, ents[j - 1].end)
                    if mapped < 0:
                        ents[i].rc = mapped
                        ents[i].what = "msync(MS_ASYNC)"
                    elif pmfd < 0:
                        ents[i].rc = pmfd
                        ents[i].what = "open(/proc/self/pagemap)"
                    else:
                        ents[i].rc = _scan_span(pmfd, &ents[i], j - i, do_reset)
                    for k in range(i, j):
                        pthread_mutex_unlock(ents[k].mu)
                if ents[i].rc < 0:
                    # The span as a whole failed (a region in it unmapped or
                    # replaced behind our back): ask each one on its own, so
                    # the error names the culprit and the others answer.
                    # Pages the failed pass reported and re-armed are in the
                    # sinks already; asking again only adds to them.
                    for k in range(i, j):
                        ents[k].rc = 0
                        ents[k].merged = ents[k].sink.n > 0
                        r = <Region>rs[ents[k].index]
                        with nogil:
                            r._lock()
                            mapped = _check_mapped(ents[k].base, ents[k].end)
                            if mapped < 0:
                                ents[k].rc = mapped
                                ents[k].what = "msync(MS_ASYNC)"
                            else:
                                ents[k].rc = r._collect_locked(
                                    ents[k].base, ents[k].end, do_reset,
                                    &ents[k].sink, &ents[k].what)
                            r._unlock()
            i = j
        failures = {}
        for i in range(n):
            arr = results[ents[i].index]
            dims[0] = <np.npy_intp>ents[i].sink.n
            shape.ptr = dims
            shape.len = 1
            np.PyArray_Resize(arr, &shape, 0, np.NPY_CORDER)
            if ents[i].merged:
                results[ents[i].index] = np.unique(arr)
            if ents[i].rc < 0:
                failures[ents[i].index] = syscall_error(
                    -ents[i].rc, ents[i].what.decode("ascii") if ents[i].what != NULL
                    else "get_write_watch_many")
        if failures:
            for pos in failures:
                if not (do_reset and len(results[pos])):
                    results[pos] = None
            first = min(failures)
            err = WriteWatchManyError(failures[first].errno,
                                      "%d of %d regions failed; the first, at position "
                                      "%d: %s" % (len(failures), n, first,
                                                  failures[first].strerror))
            err.results = results
            err.failures = failures
            raise err
        return results
    finally:
        for i in range(entered):
            (<Region>rs[ents[i].index])._leave()
        free(ents)
