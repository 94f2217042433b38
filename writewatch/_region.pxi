# Region: the one public type.  Shared logic lives here, above the engines.
#
# Locking.  Every call that reads or changes a region's written state holds
# the region's mutex for its system calls (taken with the GIL released, and
# never while holding the GIL: the softdirty engine takes the GIL inside its
# hooks).  Calls on one region are serialised; calls on different regions
# and the writes themselves never wait for it.  Nothing under the mutex waits
# for another lock of ours, except the engines' own (uffd_thread.h,
# mprotect_control.h, softdirty.h, ww_common.h), which are always taken
# after it.  (docs/hacking.md has the whole lock order.)
#
# Consumers.  A region's written state is read and reset by its own calls
# (get_write_watch, reset_write_watch, writewatch.win32) and by any number of
# trackers (_Tracker: Snapshots, DeltaLog), each of which must see every
# write since *its* last reset, whatever the others reset.  With no tracker
# the kernel's (or the engine's) state is the region's own and the calls go
# straight to the engine.  With trackers, every consumer has a bitmap, and
# every call first *drains* the engine: a get-and-reset of the range whose
# pages are added to every consumer's bitmap, atomically under the mutex;
# then it answers from its own bitmap.  A write is thus either still in the
# engine, where every consumer's next call finds it, or in every consumer's
# bitmap: none can miss it, and none's reset hides it from another.

import bisect
import weakref

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *m, void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)

cdef enum:
    LOCAL_SLOTS = 512      # results up to this many pages need no malloc
    DRAIN_SLOTS = 1024     # addresses moved per engine call when draining

cdef enum:                 # Region._range_op
    OP_RESET
    OP_PROTECT
    OP_DISCARD
    OP_COMMIT
    OP_DECOMMIT


# The ranges of the open regions: sorted base addresses, and base -> weak
# reference.  The kernel never maps over a live mapping, so a new region that
# overlaps an open one proves the old one was unmapped behind the library's
# back -- and its scans would now read (and reset!) the new region's pages,
# which are write-watched too.  The old region is then marked lost.
cdef list _live_bases = []
cdef dict _live = {}
# C statics, not module attributes: a Region deallocated while the
# interpreter shuts down (its module dict already cleared) still finds them.
cdef object _bisect_left = bisect.bisect_left
cdef object _bisect_right = bisect.bisect_right
cdef object _insort = bisect.insort


cdef _claim_range(Region region):
    cdef uintptr_t base = region._base
    cdef uintptr_t end = region._base + region._size
    cdef Py_ssize_t j = _bisect_right(_live_bases, base) - 1
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
    _insort(_live_bases, base)
    _live[base] = weakref.ref(region)


cdef _release_range(Region region):
    if _live is None or _live_bases is None:       # interpreter shutdown
        return
    ref = _live.get(region._base)
    # In __dealloc__ the weak reference is already dead.
    if ref is not None and (ref() is region or ref() is None):
        del _live[region._base]
        del _live_bases[_bisect_left(_live_bases, region._base)]


cdef inline size_t _round_up(size_t x, size_t page) noexcept nogil:
    return (x + page - 1) & ~(page - 1)


cdef inline int _check_mapped(uintptr_t start, uintptr_t end) noexcept nogil:
    """0 if [start, end) is still entirely mapped, else -errno (ENOMEM).

    PAGEMAP_SCAN walks over a hole in silence -- a page unmapped behind the
    library's back (munmap, mremap) would read as "not written" and its
    writes be lost without a word.  msync(MS_ASYNC) on anonymous memory does
    nothing but look the range's VMAs up, and fails with ENOMEM on a hole:
    about 0.3 us, against 0.5-1 ms for a scan of 1 GiB.  A mapping *replaced*
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


# -- bitmaps of the consumers ------------------------------------------------

cdef inline void _bit_set(uint64_t *bits, size_t i) noexcept nogil:
    bits[i >> 6] |= (<uint64_t>1) << (i & 63)


cdef inline void _bit_clear(uint64_t *bits, size_t i) noexcept nogil:
    bits[i >> 6] &= ~((<uint64_t>1) << (i & 63))


cdef size_t _bits_take(uint64_t *bits, size_t first, size_t last, bint clear,
                       uintptr_t base, size_t shift, Sink *sink) noexcept nogil:
    """Put the pages of [first, last) whose bit is set into `sink` (up to its
    limit), ascending; with `clear`, clear exactly those.  Returns how many."""
    cdef size_t i = first, k = 0
    cdef uint64_t w
    while i < last and sink.n < sink.limit:
        w = bits[i >> 6] >> (i & 63)
        if w == 0:
            i = (i | 63) + 1
            continue
        i += <size_t>__builtin_ctzll(w)
        if i >= last:
            break
        if sink.buf != NULL:
            sink.buf[sink.n] = base + (i << shift)
        sink.n += 1
        if clear:
            _bit_clear(bits, i)
        k += 1
        i += 1
    return k


cdef void _bits_clear(uint64_t *bits, size_t first, size_t last) noexcept nogil:
    cdef size_t i = first
    while i < last:
        if (i & 63) == 0 and i + 64 <= last:
            bits[i >> 6] = 0
            i += 64
        else:
            _bit_clear(bits, i)
            i += 1


cdef void _bits_fill(uint64_t *bits, size_t first, size_t last) noexcept nogil:
    cdef size_t i = first
    while i < last:
        if (i & 63) == 0 and i + 64 <= last:
            bits[i >> 6] = <uint64_t>-1
            i += 64
        else:
            bits[i >> 6] |= (<uint64_t>1) << (i & 63)
            i += 1


cdef extern from *:
    int __builtin_ctzll(unsigned long long x) nogil     # a GCC/clang builtin


# -- the memory guard ---------------------------------------------------------

# Arming fills page tables (and the backends' per-page tables): memory the
# process pays for whether the pages are touched or not.  Asking for more
# than the process can get does not fail -- the kernel's OOM killer ends the
# process, or another one.  So before arming, writewatch compares what it
# needs with what is available and raises MemoryError instead.  Reading
# /proc/meminfo and the cgroup files costs tens of microseconds, so small
# needs are only added up, and checked once their sum is worth it.
cdef size_t _GUARD_EVERY = 8 << 20     # check once this much went unchecked
cdef size_t _GUARD_HEADROOM = 16 << 20 # left for the process to go on with
cdef size_t _unchecked = 0


def _memory_available():
    """(bytes, source): the memory this process can still get -- the least of
    MemAvailable and, for each memory cgroup above it (v1 and v2), its limit
    minus its usage plus its inactive file cache."""
    best = None
    source = None
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    best = int(line.split()[1]) * 1024
                    source = "MemAvailable"
                    break
    except OSError:
        pass
    for path, limit_name, usage_name, inactive_key in _memory_cgroups():
        level = path
        while True:
            avail = _cgroup_room(level, limit_name, usage_name, inactive_key)
            if avail is not None and (best is None or avail < best):
                best = avail
                source = "memory cgroup %s" % level
            parent = os.path.dirname(level)
            if parent == level or not os.path.exists(os.path.join(parent, limit_name)):
                break
            level = parent
    return best, source


def _memory_cgroups():
    """The memory cgroup directories of this process: (dir, limit file,
    usage file, inactive-file key of memory.stat), v1 and v2."""
    found = []
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
        with open("/proc/self/mountinfo") as f:
            mounts = f.read().splitlines()
    except OSError:
        return found
    v1 = {}
    v2 = None
    for m in mounts:
        left, _, right = m.partition(" - ")
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        root, point = fields[3], fields[4]
        if rfields[0] == "cgroup2" and v2 is None:
            v2 = (root, point)
        elif rfields[0] == "cgroup" and "memory" in rfields[2].split(","):
            v1["memory"] = (root, point)
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, cgpath = parts[1], parts[2]
        if controllers == "" and v2 is not None:
            mount = v2
            files = ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(",") and "memory" in v1:
            mount = v1["memory"]
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes",
                     "total_inactive_file")
        else:
            continue
        root, point = mount
        rel = cgpath
        if root != "/" and (rel == root or rel.startswith(root + "/")):
            rel = rel[len(root):]
        d = os.path.join(point, rel.lstrip("/"))
        if os.path.exists(os.path.join(d, files[0])):
            found.append((d,) + files)
    return found


def _cgroup_room(d, limit_name, usage_name, inactive_key):
    try:
        with open(os.path.join(d, limit_name)) as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        limit = int(limit)
        if limit >= (1 << 62):                     # v1's "no limit"
            return None
        with open(os.path.join(d, usage_name)) as f:
            usage = int(f.read().strip())
        inactive = 0
        try:
            with open(os.path.join(d, "memory.stat")) as f:
                for line in f:
                    k, _, v = line.partition(" ")
                    if k == inactive_key:
                        inactive = int(v)
                        break
        except OSError:
            pass
        return max(0, limit - usage + inactive)
    except (OSError, ValueError):
        return None


cdef int _memory_guard(size_t need, str what) except -1:
    """Raise MemoryError if arming `what` needs more memory than this process
    can get; small needs are only counted until their sum is worth a look."""
    global _unchecked
    if need + _unchecked < _GUARD_EVERY:
        _unchecked += need
        return 0
    avail, source = _memory_available()
    if avail is not None and need + _GUARD_HEADROOM > avail:
        raise MemoryError(
            "%s needs %s for page tables and write-watch state, but this process "
            "can get only %s more (%s); nothing was armed"
            % (what, _fmt_bytes(need), _fmt_bytes(avail), source))
    _unchecked = 0
    return 0


def _fmt_bytes(n):
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return "%.1f %s" % (n / scale, unit)
    return "%d bytes" % n


# -- Region -------------------------------------------------------------------

# no_gc_clear: a Region collected as part of a reference cycle must still
# have its engine in __dealloc__, to detach and release it (the mprotect
# engine's table entry, the uffd engine's registration).
@cython.no_gc_clear
@cython.auto_pickle(False)
cdef class Region:
    """Region(size, *, backend=None, address=None)
--

    Anonymous, zero-filled read/write memory whose written pages are tracked.

    The memory is tracked from creation: nothing counts as written before
    the first write.  Writes from any thread and writes made by the kernel
    (``os.readv`` into the memory) count.  A Region exports the buffer
    protocol: ``memoryview(r)`` and ``numpy.frombuffer(r, dtype)`` are
    writable, zero-copy views.

    Parameters
    ----------
    size : int
        Bytes to map, rounded up to whole pages.
    backend : str or None, optional
        A name from :func:`writewatch.backends`.  None takes
        ``$WRITEWATCH_BACKEND``, else the best backend available here.
    address : int or None, optional
        A fixed, page-aligned address to map at.  An existing mapping is
        never replaced.

    Raises
    ------
    TypeError
        `size`, `address` or `backend` has the wrong type.
    ValueError
        `size` is not positive or too large; `address` is unaligned or
        outside the user address space; `backend` is not a known name.
    writewatch.BackendUnavailable
        The backend cannot run on this machine (the message says why).
    MemoryError
        Arming the region would need more memory -- page tables, the
        backend's per-page state -- than this process can get
        (``MemAvailable``, and its memory cgroup's limit); the message gives
        both figures.  Nothing was mapped.
    OSError
        The kernel refused (the message names the system call), e.g.
        ``EEXIST`` when `address` is taken.

    See Also
    --------
    get_write_watch_many : ask many regions in one call.
    writewatch.Snapshots : save and restore a region's state.

    Examples
    --------
    >>> import numpy as np, writewatch
    >>> r = writewatch.Region(64 * 4096)
    >>> buf = np.frombuffer(r, dtype=np.uint8)
    >>> buf[5 * 4096] = 1
    >>> [(int(a) - r.address) // 4096 for a in r.get_write_watch(reset=True)]
    [5]
    >>> len(r.get_write_watch())
    0
    >>> del buf; r.close()
    """

    cdef uintptr_t _base
    cdef size_t _size
    cdef size_t _page
    cdef unsigned _shift
    cdef Engine _engine
    cdef object _backend       # str, or None for an untracked (win32) allocation
    cdef Py_ssize_t _exports
    cdef Py_ssize_t _busy
    cdef bint _closed
    cdef bint _mapped
    cdef bint _inited
    cdef bint _reservation     # made reserved (writewatch.win32), not committed whole
    cdef uint64_t _fork_gen
    cdef bint _lost            # unmapped behind our back, the range reused
    cdef pthread_mutex_t _mu
    cdef bint _mu_ready
    # consumers (see the top of this file): own bitmap, trackers' bitmaps
    cdef uint64_t *_own
    cdef uint64_t **_tbits
    cdef size_t _ntrackers
    cdef list _trackers        # weak references to the _Tracker objects
    cdef object __weakref__

    def __cinit__(self):
        self._closed = True
        self._mapped = False
        self._engine = None
        self._own = NULL
        self._tbits = NULL
        self._ntrackers = 0
        self._trackers = []
        if pthread_mutex_init(&self._mu, NULL) == 0:
            self._mu_ready = True

    def __init__(self, size, *, backend=None, address=None):
        if self._inited:
            raise RuntimeError("a Region cannot be initialised twice; make a new one")
        name, engine_class = _choose_backend(backend)
        self._setup(size, address, name, engine_class, True)

    cdef int _setup(self, object size, object address, object name, object engine_class,
                    bint committed, size_t align=0) except -1:
        self._inited = True
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
        if not self._mu_ready:
            raise MemoryError("pthread_mutex_init")

        cdef Engine engine = engine_class()
        if committed:
            _memory_guard(engine.arm_cost(length),
                          "a %s region of %s" % (name, _fmt_bytes(length)))

        cdef void *p
        cdef uintptr_t aligned
        cdef size_t extra = align - page if align > page and want == 0 else 0
        cdef int prot = PROT_READ | PROT_WRITE if committed else PROT_NONE
        with nogil:
            p = mmap(<void *>want, length + extra, prot, flags, -1, 0)
            if p != MAP_FAILED and extra:
                # Placed at a multiple of `align`: map `extra` bytes more and
                # give back the head and the tail around the aligned part.
                aligned = (<uintptr_t>p + align - 1) & ~(<uintptr_t>align - 1)
                if aligned > <uintptr_t>p:
                    munmap(p, aligned - <uintptr_t>p)
                if <uintptr_t>p + extra > aligned:
                    munmap(<void *>(aligned + length), <uintptr_t>p + extra - aligned)
                p = <void *>aligned
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
        self._shift = <unsigned>__builtin_ctzll(page)
        self._mapped = True
        self._reservation = not committed
        # Transparent huge pages would make a 2 MiB page the unit of
        # tracking; the contract is the 4 KiB page.
        madvise(p, length, MADV_NOHUGEPAGE)
        # Before arming: an open region whose range this overlaps was unmapped
        # behind our back, and must let go of it (an engine keyed by address,
        # such as a fault handler's table, would otherwise serve it our faults).
        _claim_range(self)
        try:
            engine.arm(self._base, length, page, committed)
        except BaseException:
            _release_range(self)
            munmap(p, length)
            self._mapped = False
            engine.release()     # after munmap, as in _unmap()
            raise
        self._engine = engine
        self._backend = name
        self._fork_gen = ww_fork_generation()
        self._closed = False
        return 0

    # -- properties -----------------------------------------------------

    @property
    def address(self):
        """Base address of the memory (int, page aligned).  Reading it
        raises ValueError once the region is closed."""
        self._check_open()
        return self._base

    @property
    def size(self):
        """Size in bytes (int), a whole number of pages."""
        return self._size

    @property
    def page_size(self):
        """Tracking granularity in bytes (int): the page size."""
        return self._page

    @property
    def backend(self):
        """Name of the backend that tracks this region (str)."""
        return self._backend

    @property
    def closed(self):
        """True once close() unmapped the memory (or __init__ failed and
        left none); every other call then raises ValueError."""
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
            if self._backend is None:
                # Untracked memory (a win32 allocation without write watch):
                # nothing to lose in a child, which adopts it.  Its mutex may
                # have been held by a parent's thread at fork(): a fresh one.
                pthread_mutex_init(&self._mu, NULL)
                self._fork_gen = ww_fork_generation()
                return 0
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

    # -- the consumers' machinery (mutex held, GIL released) -------------

    cdef int _drain(self, uintptr_t start, uintptr_t end,
                    const char **what) noexcept nogil:
        """Move the engine's written pages of [start, end) into every
        consumer's bitmap: a get-and-reset, page addresses folded in chunk by
        chunk.  Pages already reported by the engine are folded even if a
        later engine call fails."""
        cdef uint64_t buf[DRAIN_SLOTS]
        cdef Sink sink
        cdef uintptr_t pos = start
        cdef size_t i, k, idx
        cdef int rc = 0
        sink.buf = buf
        sink.limit = DRAIN_SLOTS
        while pos < end:
            sink.n = 0
            rc = self._engine.collect(pos, end, 1, &sink, what)
            for i in range(sink.n):
                idx = (<uintptr_t>buf[i] - self._base) >> self._shift
                _bit_set(self._own, idx)
                for k in range(self._ntrackers):
                    _bit_set(self._tbits[k], idx)
            if rc < 0 or sink.n < sink.limit:
                break
            pos = <uintptr_t>buf[sink.n - 1] + self._page
        return rc

    cdef inline void _lock(self) noexcept nogil:
        pthread_mutex_lock(&self._mu)

    cdef inline void _unlock(self) noexcept nogil:
        pthread_mutex_unlock(&self._mu)

    cdef int _collect_locked(self, uintptr_t start, uintptr_t end, bint reset,
                             Sink *sink, const char **what) noexcept nogil:
        """The region's own get: straight from the engine, or with trackers
        from the own bitmap after a drain.  Mutex held."""
        cdef int rc
        if self._own == NULL:
            return self._engine.collect(start, end, reset, sink, what)
        rc = self._drain(start, end, what)
        if rc < 0:
            return rc
        _bits_take(self._own, (start - self._base) >> self._shift,
                   (end - self._base) >> self._shift, reset, self._base,
                   self._shift, sink)
        return 0

    cdef int _reset_locked(self, uintptr_t start, uintptr_t end,
                           const char **what) noexcept nogil:
        cdef int rc
        if self._own == NULL:
            return self._engine.reset(start, end, what)
        rc = self._drain(start, end, what)
        if rc < 0:
            return rc
        _bits_clear(self._own, (start - self._base) >> self._shift,
                    (end - self._base) >> self._shift)
        return self._engine.rearm(start, end, what)

    # -- write watch ----------------------------------------------------

    def get_write_watch(self, address=None, size=None, *, reset=False,
                        max_count=None, out=None):
        """Addresses of the pages written in a range since each was last reset.

        Parameters
        ----------
        address, size : int or None, optional
            The range [address, address+size), rounded out to whole pages as
            Windows does.  None: the region's start / up to its end.
        reset : bool, optional
            Re-arm exactly the reported pages, atomically with reading them:
            a write racing the call is reported by this call or the next,
            never lost.
        max_count : int or None, optional
            Report (and reset) at most this many pages, the first ones;
            later pages keep their state, and the call costs what it
            reports, not the rest of the range.
        out : numpy.ndarray or None, optional
            A contiguous, writable uint64 array to fill; its length bounds
            the count like `max_count`, and a prefix view of it is returned.

        Returns
        -------
        numpy.ndarray
            uint64 page addresses, ascending.

        Raises
        ------
        TypeError
            An argument has the wrong type (`out` not a uint64 array).
        ValueError
            The range is not inside the region; `size` or `max_count` is not
            positive; `out` is read-only, strided or empty; the region is
            closed.
        writewatch.ForkedRegionError
            Called in a child forked from the process that made the region.
        MemoryError
            The result could not be allocated; with `reset`, nothing was
            re-armed.
        OSError
            The kernel refused; the message names the system call (e.g. the
            region was unmapped or replaced behind the library's back).

        Examples
        --------
        >>> import writewatch
        >>> r = writewatch.Region(16 * 4096)
        >>> for p in (3, 7, 9):
        ...     memoryview(r)[p * 4096] = 1
        >>> [(int(a) - r.address) // 4096 for a in r.get_write_watch(max_count=2, reset=True)]
        [3, 7]
        >>> [(int(a) - r.address) // 4096 for a in r.get_write_watch()]
        [9]
        >>> r.close()
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
            self._lock()
            mapped = _check_mapped(start, end)
            if mapped == 0:
                rc = self._collect_locked(start, end, do_reset, &sink, &what)
            self._unlock()
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
        """Re-arm a range: none of its pages counts as written afterwards.

        Every later write to the range is seen, whatever was done to its
        pages before (the program's own ``madvise`` or ``mprotect``
        included).

        Parameters
        ----------
        address, size : int or None, optional
            The range, rounded out to whole pages; None: the whole region.

        Raises
        ------
        TypeError, ValueError, writewatch.ForkedRegionError, OSError
            As :meth:`get_write_watch`.
        """
        self._range_op(OP_RESET, address, size, 0)

    # -- hooks for writewatch.win32 and the tests (not public API) --------

    def _protect(self, address, size, int prot):
        """mprotect() the committed range with `prot` (PROT_* bits) without
        touching its written state."""
        self._range_op(OP_PROTECT, address, size, prot)

    def _discard(self, address, size):
        """Drop the committed range's contents and written state; the pages
        stay committed."""
        self._range_op(OP_DISCARD, address, size, 0)

    def _commit(self, address, size, int prot):
        """Reserved -> committed with `prot`: zero-filled, armed, clean.
        MemoryError (nothing changed) if arming needs more memory than the
        process can get."""
        cdef uintptr_t start, end
        self._check_tracking()
        self._range(address, size, &start, &end)
        _memory_guard(self._engine.arm_cost(end - start),
                      "committing %s" % _fmt_bytes(end - start))
        self._range_op(OP_COMMIT, address, size, prot)

    def _decommit(self, address, size):
        """Committed -> reserved: contents, written state and page tables go."""
        self._range_op(OP_DECOMMIT, address, size, 0)

    cdef int _range_op(self, int op, object address, object size, int prot) except -1:
        cdef uintptr_t start, end
        cdef const char *what = NULL
        cdef int rc = 0, mapped = 0
        self._check_tracking()
        self._range(address, size, &start, &end)
        if op in (OP_COMMIT, OP_DECOMMIT, OP_DISCARD) and self._ntrackers:
            raise ValueError("a tracked Region's pages cannot be discarded, "
                             "committed or decommitted while trackers "
                             "(Snapshots, DeltaLog) follow it")
        self._enter()
        with nogil:
            self._lock()
            mapped = _check_mapped(start, end)
            if mapped == 0:
                if op == OP_RESET:
                    rc = self._reset_locked(start, end, &what)
                elif op == OP_PROTECT:
                    rc = self._engine.protect(start, end, prot, &what)
                elif op == OP_DISCARD:
                    rc = self._engine.discard(start, end, &what)
                    if rc == 0 and self._own != NULL:
                        _bits_clear(self._own, (start - self._base) >> self._shift,
                                    (end - self._base) >> self._shift)
                elif op == OP_COMMIT:
                    rc = self._engine.commit(start, end, prot, &what)
                else:
                    rc = self._engine.decommit(start, end, &what)
                    if rc == 0 and self._own != NULL:
                        _bits_clear(self._own, (start - self._base) >> self._shift,
                                    (end - self._base) >> self._shift)
            self._unlock()
        self._leave()
        if mapped < 0:
            self._fail_unmapped(mapped, start, end)
        if rc < 0:
            self._fail(rc, what)
        return 0

    cdef uintptr_t *_parse_runs(self, object runs, size_t *nruns) except NULL:
        """runs -- (start, end) page ranges, ascending, disjoint, inside the
        region -- as a malloc'd C array of bounds (free it)."""
        cdef size_t n = len(runs), i
        cdef uintptr_t s, e, lo = self._base, hi = self._base + self._size
        cdef uintptr_t *bounds = <uintptr_t *>malloc((2 * n + 1) * sizeof(uintptr_t))
        if bounds == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                s, e = runs[i]
                if s < lo or e > hi or s >= e or (s | e) & (self._page - 1):
                    raise ValueError("run [%#x, %#x) is not a page range of the region"
                                     % (s, e))
                bounds[2 * i] = s
                bounds[2 * i + 1] = e
                lo = e
        except BaseException:
            free(bounds)
            raise
        nruns[0] = n
        return bounds

    def _get_runs(self, runs, bint reset, np.ndarray out):
        """For writewatch.win32: the written pages of several committed runs
        ((start, end) page-aligned, ascending, inside the region) into `out`
        (a checked contiguous uint64 array), up to its length, in one locked
        step; with reset, exactly the reported pages are re-armed.  Returns
        how many were written to `out`."""
        cdef Sink sink
        cdef const char *what = NULL
        cdef int rc = 0, mapped = 0
        cdef size_t nruns, i = 0
        self._check_tracking()
        cdef uintptr_t *bounds = self._parse_runs(runs, &nruns)
        try:
            sink.buf = <uint64_t *>np.PyArray_DATA(out)
            sink.n = 0
            sink.limit = <size_t>np.PyArray_DIM(out, 0)
            self._enter()
            with nogil:
                self._lock()
                while i < nruns and sink.n < sink.limit:
                    mapped = _check_mapped(bounds[2 * i], bounds[2 * i + 1])
                    if mapped < 0:
                        break
                    rc = self._collect_locked(bounds[2 * i], bounds[2 * i + 1], reset,
                                              &sink, &what)
                    if rc < 0:
                        break
                    i += 1
                self._unlock()
            self._leave()
            if mapped < 0:
                self._fail_unmapped(mapped, bounds[2 * i], bounds[2 * i + 1])
            if rc < 0 and not (reset and sink.n):
                self._fail(rc, what)
            return sink.n
        finally:
            free(bounds)

    def _reset_runs(self, runs):
        """For writewatch.win32: reset_write_watch() of several committed
        runs in one locked step."""
        cdef const char *what = NULL
        cdef int rc = 0, mapped = 0
        cdef size_t nruns, i = 0
        self._check_tracking()
        cdef uintptr_t *bounds = self._parse_runs(runs, &nruns)
        try:
            self._enter()
            with nogil:
                self._lock()
                while i < nruns:
                    mapped = _check_mapped(bounds[2 * i], bounds[2 * i + 1])
                    if mapped < 0:
                        break
                    rc = self._reset_locked(bounds[2 * i], bounds[2 * i + 1], &what)
                    if rc < 0:
                        break
                    i += 1
                self._unlock()
            self._leave()
            if mapped < 0:
                self._fail_unmapped(mapped, bounds[2 * i], bounds[2 * i + 1])
            if rc < 0:
                self._fail(rc, what)
        finally:
            free(bounds)

    def _written_of_runs(self, runs):
        """For writewatch.win32: every written page of the committed runs
        (ascending addresses), without reset."""
        cdef np.npy_intp dims[1]
        total = 0
        for s, e in runs:
            total += (e - s) // self._page
        dims[0] = <np.npy_intp>max(total, 1)
        out = np.PyArray_EMPTY(1, dims, np.NPY_UINT64, 0)
        n = self._get_runs(runs, False, out)
        return out[:n]

    # -- trackers ---------------------------------------------------------

    cdef int _attach(self, _Tracker t) except -1:
        """Give `t` a bitmap and make it a consumer: from now on it sees
        every write made after this call."""
        cdef size_t nwords = ((self._size >> self._shift) + 63) // 64
        cdef uint64_t **grown
        cdef uint64_t *own = NULL
        cdef const char *what = NULL
        cdef int rc = 0
        self._check_tracking()
        if self._reservation:
            raise ValueError("trackers need a Region committed whole")
        ref = weakref.ref(t)
        t.bits = <uint64_t *>calloc(nwords, sizeof(uint64_t))
        if t.bits == NULL:
            raise MemoryError()
        grown = <uint64_t **>realloc(self._tbits, (self._ntrackers + 1) * sizeof(uint64_t *))
        if grown == NULL:
            free(t.bits)
            t.bits = NULL
            raise MemoryError()
        self._tbits = grown
        if self._own == NULL:
            own = <uint64_t *>calloc(nwords, sizeof(uint64_t))
            if own == NULL:
                free(t.bits)
                t.bits = NULL
                raise MemoryError()
        self._enter()
        with nogil:
            self._lock()
            if self._own == NULL:
                # Writes made so far are the region's own: move them into its
                # bitmap before the tracker joins (it must not see them).
                self._own = own
                own = NULL
                rc = self._drain(self._base, self._base + self._size, &what)
            self._tbits[self._ntrackers] = t.bits
            self._ntrackers += 1
            self._unlock()
        self._leave()
        free(own)
        self._trackers.append(ref)
        if rc < 0:
            self._fail(rc, what)
        return 0

    cdef void _detach_tracker(self, _Tracker t) noexcept:
        """Take `t` out of the consumers and free its bitmap.  When no
        tracker is left and the own bitmap is empty, the region goes back to
        asking the engine directly."""
        cdef size_t i, j
        cdef size_t nwords = ((self._size >> self._shift) + 63) // 64
        cdef uint64_t *bits = t.bits
        cdef uint64_t *own_free = NULL
        cdef bint empty
        if bits == NULL:
            return
        with nogil:
            self._lock()
            j = 0
            for i in range(self._ntrackers):
                if self._tbits[i] != bits:
                    self._tbits[j] = self._tbits[i]
                    j += 1
            self._ntrackers = j
            if j == 0 and self._own != NULL:
                empty = True
                for i in range(nwords):
                    if self._own[i]:
                        empty = False
                        break
                if empty:
                    own_free = self._own
                    self._own = NULL
            self._unlock()
        t.bits = NULL
        free(bits)
        free(own_free)
        self._trackers = [w for w in self._trackers if w() is not None and w() is not t]

    cdef int _tracker_collect(self, _Tracker t, bint reset, Sink *sink) except -1:
        """Into `sink`: the pages written since t's last reset; with reset,
        they stop counting for t."""
        cdef const char *what = NULL
        cdef int rc = 0, mapped = 0
        cdef uintptr_t start = self._base, end = self._base + self._size
        self._enter()
        with nogil:
            self._lock()
            mapped = _check_mapped(start, end)
            if mapped == 0:
                rc = self._drain(start, end, &what)
                if rc == 0:
                    _bits_take(t.bits, 0, self._size >> self._shift, reset,
                               self._base, self._shift, sink)
            self._unlock()
        self._leave()
        if mapped < 0:
            self._fail_unmapped(mapped, start, end)
        if rc < 0:
            self._fail(rc, what)
        return 0

    cdef int _tracker_reset(self, _Tracker t, uintptr_t start, uintptr_t end,
                            bint mark) except -1:
        """t forgets the writes to [start, end) made so far (mark=False), or
        counts every page of it as written (mark=True); the other consumers
        keep seeing them either way."""
        cdef const char *what = NULL
        cdef int rc = 0, mapped = 0
        self._enter()
        with nogil:
            self._lock()
            mapped = _check_mapped(start, end)
            if mapped == 0:
                rc = self._drain(start, end, &what)
                if rc == 0:
                    if mark:
                        _bits_fill(t.bits, (start - self._base) >> self._shift,
                                   (end - self._base) >> self._shift)
                    else:
                        _bits_clear(t.bits, (start - self._base) >> self._shift,
                                    (end - self._base) >> self._shift)
            self._unlock()
        self._leave()
        if mapped < 0:
            self._fail_unmapped(mapped, start, end)
        if rc < 0:
            self._fail(rc, what)
        return 0

    cdef int _tracker_pages(self, _Tracker t, const uint64_t *addrs, size_t n,
                            bint mark) except -1:
        """t forgets the writes made so far to exactly the pages at `addrs`
        (mark=False), or counts them as written (mark=True); the other
        consumers keep seeing every write.  `addrs`: page addresses inside
        the region, any order.  One drain of the span they cover comes first,
        so that writes made before this call reach every other consumer.
        (Snapshots.restore() forgets the pages it rewrote; a save() or
        append() that fails after collecting gives its pages back.)"""
        cdef const char *what = NULL
        cdef int rc = 0, mapped = 0
        cdef uintptr_t lo = <uintptr_t>-1, hi = 0, a
        cdef size_t i, idx
        if n == 0:
            return 0
        for i in range(n):
            a = <uintptr_t>addrs[i]
            if a & (self._page - 1):
                raise ValueError("%#x is not a page address" % a)
            if a < lo:
                lo = a
            if a > hi:
                hi = a
        if lo < self._base or hi >= self._base + self._size:
            raise ValueError("page address outside the region [%#x, %#x)"
                             % (self._base, self._base + self._size))
        hi += self._page
        self._enter()
        with nogil:
            self._lock()
            mapped = _check_mapped(lo, hi)
            if mapped == 0:
                rc = self._drain(lo, hi, &what)
                if rc == 0:
                    for i in range(n):
                        idx = (<uintptr_t>addrs[i] - self._base) >> self._shift
                        if mark:
                            _bit_set(t.bits, idx)
                        else:
                            _bit_clear(t.bits, idx)
            self._unlock()
        self._leave()
        if mapped < 0:
            self._fail_unmapped(mapped, lo, hi)
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
        """Unmap the memory.  Idempotent; also ``with Region(...) as r:``.

        Trackers following the region (:class:`writewatch.Snapshots`,
        :class:`writewatch.DeltaLog`) are closed first; calls in flight in
        other threads are let finish.

        Raises
        ------
        BufferError
            Views of the memory (memoryview, numpy arrays) are alive: none
            may outlive it.  Nothing was closed.
        """
        if self._closed:
            return
        if self._exports > 0:
            raise BufferError("cannot close a Region while %d view(s) of its "
                              "memory exist" % self._exports)
        for ref in list(self._trackers):
            t = ref()
            if t is not None:
                (<_Tracker>t)._close_owner()
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
        # No view can be alive here (a view holds a reference to us), nor a
        # tracker (it holds one too).
        self._closed = True
        self._unmap()
        free(self._own)
        free(self._tbits)
        if self._mu_ready and self._fork_gen == ww_fork_generation():
            pthread_mutex_destroy(&self._mu)


# no_gc_clear: its __dealloc__ needs `region` to take its bitmap out of the
# region's consumers.
@cython.no_gc_clear
@cython.auto_pickle(False)
cdef class _Tracker:
    """A consumer of a region's written state of its own (see the top of
    _region.pxi): it sees every write made since its last reset, whatever
    the region's own calls or other trackers reset.  The machinery under
    writewatch.Snapshots and writewatch.DeltaLog; `owner` (weakly held) is
    closed when the region closes."""

    cdef readonly Region region
    cdef uint64_t *bits
    cdef object _owner
    cdef object __weakref__    # the region holds its trackers weakly

    def __init__(self, Region region, owner=None):
        self._owner = weakref.ref(owner) if owner is not None else None
        region._attach(self)
        self.region = region

    @property
    def closed(self):
        return self.bits == NULL

    cdef int _check(self) except -1:
        if self.bits == NULL:
            raise ValueError("operation on a closed tracker")
        return 0

    def collect(self, *, bint reset=True):
        """Addresses of the pages written since the last reset (ascending,
        uint64); with reset, they stop counting for this tracker."""
        cdef Sink sink
        cdef np.npy_intp dims[1]
        cdef np.PyArray_Dims shape
        self._check()
        dims[0] = <np.npy_intp>(self.region._size >> self.region._shift)
        result = np.PyArray_EMPTY(1, dims, np.NPY_UINT64, 0)
        sink.buf = <uint64_t *>np.PyArray_DATA(result)
        sink.n = 0
        sink.limit = <size_t>dims[0]
        self.region._tracker_collect(self, reset, &sink)
        dims[0] = <np.npy_intp>sink.n
        shape.ptr = dims
        shape.len = 1
        np.PyArray_Resize(result, &shape, 0, np.NPY_CORDER)
        return result

    def reset(self, address=None, size=None):
        """Forget the writes made so far to the range (default: all)."""
        cdef uintptr_t start, end
        self._check()
        self.region._check_tracking()
        self.region._range(address, size, &start, &end)
        self.region._tracker_reset(self, start, end, False)

    def mark(self, address=None, size=None):
        """Count every page of the range as written for this tracker."""
        cdef uintptr_t start, end
        self._check()
        self.region._check_tracking()
        self.region._range(address, size, &start, &end)
        self.region._tracker_reset(self, start, end, True)

    def mark_pages(self, addrs, *, bint mark=True):
        """Count exactly the pages at `addrs` (page addresses, a uint64
        array) as written for this tracker (mark=False: forget their writes
        so far).  What a consumer that collected pages and then failed uses
        to give them back."""
        cdef np.ndarray a = np.ascontiguousarray(addrs, dtype=np.uint64)
        self._check()
        self.region._check_tracking()
        self.region._tracker_pages(self, <const uint64_t *>np.PyArray_DATA(a),
                                   <size_t>np.PyArray_SIZE(a), mark)

    def close(self):
        if self.bits != NULL and self.region is not None:
            self.region._detach_tracker(self)

    cdef void _close_owner(self):
        owner = self._owner() if self._owner is not None else None
        if owner is not None:
            owner.close()
        self.close()

    def __dealloc__(self):
        if self.bits != NULL and self.region is not None:
            self.region._detach_tracker(self)


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


def _reserve(size, *, backend=None, address=None, size_t align=0, bint watch=True):
    """For writewatch.win32: a Region all of whose pages are reserved --
    mapped PROT_NONE, not armed, costing no page tables -- to be committed
    piecewise with Region._commit().  `align`: placed at a multiple of it
    when `address` is None.  watch=False: no write watch at all (a plain
    allocation; its backend is None)."""
    cdef Region r = Region.__new__(Region)
    if watch:
        name, engine_class = _choose_backend(backend)
    else:
        name, engine_class = None, _PlainEngine
    r._setup(size, address, name, engine_class, False, align)
    return r


def _index_arg(value, str name):
    """operator.index with a message that names the argument (shared with
    writewatch.win32)."""
    return _index(value, name)


def _probe_region(size, str name):
    """A committed Region on backend `name` without the availability check:
    what a backend's own probe runs its round trip on."""
    cdef Region r = Region.__new__(Region)
    r._setup(size, None, name, _ENGINES[name][0], True)
    return r
