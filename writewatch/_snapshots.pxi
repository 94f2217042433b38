# Snapshots: a region's saved states, at the cost of what was written.
#
# Copies.  Page copies live in *slots*: page-sized cells of anonymous
# chunks (the first chunk has 16 slots, each next one twice as many, up to
# 512, i.e. 2 MiB of 4 KiB pages), handed out in order and recycled through
# a free list.  A slot id is chunk << SLOT_SHIFT | offset in the chunk.
#
# State.  The ring holds the last `keep` snapshots, ids consecutive.
# Snapshot k is an array of (page, slot) sorted by page: the pages written
# between save k-1 and save k, copied at save k.  The *base* holds, for the
# pages it has (`_basemap[page]` = slot + 1, 0 for none), their content just
# before the oldest kept snapshot; a page the base lacks was zero then (a
# Snapshots made on a used region copies its non-zero pages into the base
# first).  So at save s, page p held: the copy of the newest kept snapshot
# <= s that has p, else the base's, else zeros.
#
# save(): collect-and-reset of our tracker (its own view of the written
# pages, see _region.pxi), copy those pages into slots, push the snapshot.
# When the ring holds more than `keep`, the oldest becomes part of the base
# by index updates alone: its slots become the base's copies, the base's
# previous slots for those pages are freed.  No page is copied twice.
#
# restore(s): the pages that may differ from the state at s are those of the
# snapshots newer than s and those written since the last save (the
# tracker, without reset).  Each gets its copy from the newest snapshot <= s
# that has it (found in one pass over those snapshots' entries, marking a
# per-page scratch array), else the base's, else zeros.  The tracker then
# forgets exactly those pages (the copies were our own writes; the region's
# other consumers do see them), and the newer snapshots are dropped.
#
# Races.  A write racing save() is either drained by the tracker's
# get-and-reset -- then the copy, made after it, holds it -- or comes after
# it and is still written for the next save(): never in neither.  restore()
# must not race writes to the region: a page written while it runs may end
# up with the write or without it, and not be counted as written.
#
# Memory.  Slots in use = base + kept entries, and the base holds only pages
# that were non-zero when the Snapshots was made (`_ninit`) or were saved at
# least once (`_ever`, each page counted once).  save() folds the oldest
# snapshot before copying, so its copies take the slots the fold frees.
# Free slots beyond _ninit + _never + kept entries + a slack (TRIM_SLACK, or
# the region's page count if smaller) -- after a restore() dropped snapshots,
# or when saves shrink -- go back to the kernel with MADV_FREE ("cold"): it
# takes them when it needs memory, and a slot reused before that costs no
# fault.  So nbytes <= (non-zero pages at the start + pages saved at least
# once + kept entries + slack) pages + indexes (8 bytes per entry, 8 bytes
# and 2 bits per page of the region, 4 bytes per slot).
#
# Locking.  Calls on one Snapshots are serialised by a lock.  Region.close()
# closes the Snapshots first (through the tracker's owner), which waits for a
# call in flight; so the region stays mapped while a call copies from or
# into it with the GIL released.

from libc.stdint cimport uint32_t, int64_t
from libc.string cimport memmove
import _thread

cdef enum:
    SLOT_SHIFT = 9                 # slot id = chunk << SLOT_SHIFT | offset
    CHUNK_MAX = 512                # slots of a full-size chunk
    CHUNK_FIRST = 16               # slots of the first chunk
    TRIM_SLACK = 256               # free slots kept beyond the memory bound (at most
                                   # one per page of the region)
    SCAN_BATCH = 512               # pages per pagemap read of the non-zero scan

cdef int _MADV_FREE = 8                # Linux >= 4.5; MADV_DONTNEED before
cdef uint64_t _PM_PRESENT = (<uint64_t>1) << 63
cdef uint64_t _PM_SWAP = (<uint64_t>1) << 62


cdef struct _SnapEntry:
    uint32_t page
    uint32_t slot


cdef struct _Snap:
    _SnapEntry *ents
    size_t n


# -- non-zero pages ------------------------------------------------------------

cdef inline bint _page_nonzero(const uint64_t *w, size_t words) noexcept nogil:
    cdef size_t i = 0
    cdef uint64_t acc
    while i + 8 <= words:
        acc = w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7]
        if acc:
            return True
        i += 8
    while i < words:
        if w[i]:
            return True
        i += 1
    return False


cdef size_t _nonzero_batch(int pmfd, bint swap, uintptr_t start, size_t n,
                           size_t page, unsigned shift, uint64_t *out) noexcept nogil:
    """Addresses of the non-zero pages of [start, start + n pages), n <=
    SCAN_BATCH, into `out`; returns how many.

    A page of anonymous private memory that is neither present nor swapped
    out reads as zero, and /proc/self/pagemap says which are which without
    touching them: a fresh region costs a read of 8 bytes per page, not a
    fault per page.  Armed never-written pages carry userfaultfd-wp markers,
    which pagemap shows as swap entries; so swap entries are only read when
    swap is configured (`swap`).  Without the pagemap file every page is
    read."""
    cdef uint64_t ents[SCAN_BATCH]
    cdef size_t i, k = 0
    cdef bint known = False
    cdef uint64_t want = _PM_PRESENT | (_PM_SWAP if swap else 0)
    cdef uintptr_t a
    if pmfd >= 0:
        known = pread(pmfd, ents, n * sizeof(uint64_t),
                      <long>((start >> shift) * sizeof(uint64_t))) == <ssize_t>(n * sizeof(uint64_t))
    for i in range(n):
        if known and not (ents[i] & want):
            continue
        a = start + (i << shift)
        if _page_nonzero(<const uint64_t *>a, page >> 3):
            out[k] = a
            k += 1
    return k


def _swap_configured():
    """Whether a swap area is active (or this cannot be told): only then can
    a page that pagemap shows as not present hold data."""
    try:
        with open("/proc/swaps") as f:
            return len(f.read().splitlines()) > 1
    except OSError:
        return True


cdef class _NonzeroScan:
    """Walks a region's non-zero pages batch by batch (see _nonzero_batch).
    The caller keeps the region mapped (its lock, or Region._enter)."""
    cdef uintptr_t base
    cdef size_t npages, page, pos
    cdef unsigned shift
    cdef int pmfd
    cdef bint swap
    cdef uint64_t out[SCAN_BATCH]

    def __cinit__(self, Region region, bint swap):
        self.base = region._base
        self.npages = region._size >> region._shift
        self.page = region._page
        self.shift = region._shift
        self.pos = 0
        self.swap = swap
        self.pmfd = ww_pagemap_fd()

    cdef size_t next(self) noexcept nogil:
        """The next batch's non-zero pages into self.out; 0 with pos ==
        npages at the end."""
        cdef size_t n, k = 0
        while k == 0 and self.pos < self.npages:
            n = self.npages - self.pos
            if n > SCAN_BATCH:
                n = SCAN_BATCH
            k = _nonzero_batch(self.pmfd, self.swap, self.base + (self.pos << self.shift),
                               n, self.page, self.shift, self.out)
            self.pos += n
        return k


def _nonzero_pages(Region region):
    """Addresses (uint64, ascending) of the region's pages that hold a
    non-zero byte, found without faulting in the pages never touched."""
    cdef _NonzeroScan scan
    cdef size_t k
    chunks = []
    swap = _swap_configured()
    while True:
        chunks = []
        region._enter()
        try:
            scan = _NonzeroScan(region, swap)
            while True:
                with nogil:
                    k = scan.next()
                if k == 0:
                    break
                chunks.append(np.array(<uint64_t[:k]>&scan.out[0], dtype=np.uint64))
        finally:
            region._leave()
        if swap or not _swap_configured():
            break
        swap = True           # swap came up during the scan: read it all again
    if not chunks:
        return np.empty(0, dtype=np.uint64)
    return np.concatenate(chunks)


def _gather_pages(Region region, addrs, out, crc=None):
    """Copy the region's pages at `addrs` (page addresses, uint64) one after
    another into `out` (a writable buffer of at least len(addrs) pages).
    With `crc` (an int), also run CRC-32C over the bytes copied, continuing
    `crc`, in the same pass, and return it: the checksum is of what `out`
    holds, even if a page changes while it is copied."""
    cdef np.ndarray a = np.ascontiguousarray(addrs, dtype=np.uint64)
    cdef const uint64_t *p = <const uint64_t *>np.PyArray_DATA(a)
    cdef size_t n = <size_t>np.PyArray_SIZE(a), i
    cdef size_t page = region._page
    cdef uintptr_t lo, hi
    cdef unsigned char[::1] dst = out
    cdef bint with_crc = crc is not None
    cdef uint32_t c = 0
    if with_crc:
        c = <uint32_t>crc
    if <size_t>dst.shape[0] < n * page:
        raise ValueError("out holds %d bytes, %d pages need %d" % (dst.shape[0], n, n * page))
    region._enter()
    try:
        lo = region._base
        hi = region._base + region._size
        for i in range(n):
            if p[i] < lo or p[i] >= hi or p[i] & (page - 1):
                raise ValueError("%#x is not a page address of the region" % p[i])
        with nogil:
            if with_crc:
                for i in range(n):
                    c = ww_crc32c_copy(c, &dst[i * page], <const void *>p[i], page)
            else:
                for i in range(n):
                    memcpy(&dst[i * page], <const void *>p[i], page)
    finally:
        region._leave()
    return c if with_crc else None


def _crc32c(data, crc=0, *, software=False):
    """CRC-32C (Castagnoli) of `data` (any contiguous buffer), continuing
    `crc` as zlib.crc32 does; software=True forces the table path (tests)."""
    cdef const unsigned char[::1] buf = memoryview(data).cast("B")
    cdef uint32_t c = <uint32_t>crc
    cdef int sw = software
    cdef size_t n = <size_t>buf.shape[0]
    if n:
        with nogil:
            c = ww_crc32c_ex(c, &buf[0], n, sw)
    return c


def _put_pages(Region region, idx, data, size_t page):
    """Write page `idx[i]` (units of `page` bytes, which divides the
    region's size) of the region from row i of `data` (a buffer of
    len(idx) * page bytes), or with zeros if `data` is None.  No view of the
    region is made, so none can outlive the call."""
    cdef np.ndarray a = np.ascontiguousarray(idx, dtype=np.uint64)
    cdef const uint64_t *p = <const uint64_t *>np.PyArray_DATA(a)
    cdef size_t n = <size_t>np.PyArray_SIZE(a), i
    cdef size_t npages = region._size // page if page else 0
    cdef const unsigned char[::1] src
    cdef const unsigned char *s = NULL
    cdef uintptr_t base
    if page == 0 or region._size % page:
        raise ValueError("page size %d does not divide the region's size" % page)
    if data is not None:
        src = data
        if <size_t>src.shape[0] < n * page:
            raise ValueError("data holds %d bytes, %d pages need %d"
                             % (src.shape[0], n, n * page))
        if n:
            s = &src[0]
    for i in range(n):
        if p[i] >= npages:
            raise ValueError("page %d is past the region's %d pages" % (p[i], npages))
    region._enter()
    try:
        base = region._base
        with nogil:
            for i in range(n):
                if s != NULL:
                    memcpy(<void *>(base + p[i] * page), s + i * page, page)
                else:
                    memset(<void *>(base + p[i] * page), 0, page)
    finally:
        region._leave()


# -- Snapshots -------------------------------------------------------------------

@cython.auto_pickle(False)
cdef class Snapshots:
    """Snapshots(region, keep=8)
--

    Saved states of a Region, at the cost of what was written.

    ``save()`` copies the pages written since the previous save (as a
    tracker of its own, it sees every write whatever the region's other
    users reset) and returns the snapshot's id: 0, 1, 2, ... in order.
    ``restore(sid)`` makes the region's bytes exactly those at ``save()``
    number `sid`, copying back only the pages that changed since.  The ring
    keeps the last `keep` snapshots; the copies of older ones become the
    base that restores fall back on, so no page is ever copied twice.

    Memory: pages never written are never copied (a fresh region costs
    nothing; one used before is scanned once and its non-zero pages copied).
    ``nbytes`` stays within the pages saved at least once, plus the pages
    of the kept snapshots, plus a small overhead (see docs/snapshots.md).

    Errors: ``keep < 1`` raises ValueError; ``restore()`` of an id not in
    ``ids`` raises KeyError naming the ids kept; any call after ``close()``
    raises ValueError.  Closing the region closes its Snapshots first.
    Writes racing a ``save()`` land in that snapshot or the next one, page
    by page, never in neither; ``restore()`` must not race writes to the
    region.
    """

    cdef Region _region
    cdef _Tracker _tracker
    cdef object _lock
    cdef uintptr_t _base
    cdef size_t _page
    cdef size_t _npages
    cdef unsigned _shift
    cdef size_t _keep
    cdef bint _closed
    # slot pool
    cdef char **_chunks
    cdef size_t _nchunks
    cdef size_t _cap             # slots in all chunks
    cdef size_t _fresh           # slots handed out of the last chunk so far
    cdef size_t _touched         # slots ever handed out fresh
    cdef uint32_t *_free         # warm free slots at [0, _nhot), cold at [_cap - _ncold, _cap)
    cdef size_t _nhot
    cdef size_t _ncold
    # per page
    cdef uint32_t *_basemap      # slot + 1 of the base's copy, 0: none (lazily made)
    cdef size_t _nbase
    cdef uint32_t *_srcmap       # restore's scratch: 0, 1 (target), slot + 2 (lazily made)
    cdef uint64_t *_ever         # bit per page: saved at least once
    cdef size_t _never
    cdef size_t _ninit           # pages copied because non-zero at the start
    # ring
    cdef _Snap *_ring
    cdef size_t _ringcap
    cdef size_t _head
    cdef size_t _count
    cdef int64_t _first          # id of the oldest kept snapshot
    cdef size_t _entries         # entries of the kept snapshots
    # buffers
    cdef uint64_t *_addrs
    cdef size_t _addrcap
    cdef object __weakref__      # the tracker holds its owner weakly

    def __cinit__(self):
        self._closed = True

    def __init__(self, Region region not None, keep=8):
        cdef object k = _index(keep, "keep")
        if k < 1:
            raise ValueError("keep must be at least 1, got %d" % k)
        if self._tracker is not None:
            raise RuntimeError("a Snapshots cannot be initialised twice; make a new one")
        region._check_tracking()
        if (region._size >> region._shift) >= 0xFFFFFFFF:
            raise ValueError("Snapshots handle regions of fewer than 2**32 pages")
        self._keep = <size_t>min(k, 1 << 40)
        self._region = region
        self._base = region._base
        self._page = region._page
        self._shift = region._shift
        self._npages = region._size >> region._shift
        self._lock = _thread.allocate_lock()
        self._ever = <uint64_t *>calloc((self._npages + 63) // 64, sizeof(uint64_t))
        if self._ever == NULL:
            raise MemoryError()
        with self._lock:
            # The tracker first: every write from now on is seen by the first
            # save(), so the scan below may race writes and still be right.
            self._tracker = _Tracker(region, self)
            self._closed = False
            try:
                self._copy_nonzero()
            except BaseException:
                self._release()
                raise

    cdef int _copy_nonzero(self) except -1:
        """Copy the region's non-zero pages into the base (a region used
        before the Snapshots was made); a fresh region has none."""
        cdef _NonzeroScan scan
        cdef size_t k, i, p
        cdef uint32_t s
        swap = _swap_configured()
        scan = _NonzeroScan(self._region, swap)
        while True:
            with nogil:
                k = scan.next()
            if k == 0:
                if not swap and _swap_configured():
                    swap = True            # swap came up: read it all again
                    scan = _NonzeroScan(self._region, swap)
                    continue
                return 0
            self._need_basemap()
            self._reserve(k)
            with nogil:
                for i in range(k):
                    p = (<uintptr_t>scan.out[i] - self._base) >> self._shift
                    if self._basemap[p]:
                        s = self._basemap[p] - 1       # seen in the first pass
                    else:
                        s = self._take()
                        self._basemap[p] = s + 1
                        self._nbase += 1
                        self._ninit += 1
                    memcpy(self._slot(s), <const void *>scan.out[i], self._page)

    # -- properties -------------------------------------------------------------

    @property
    def ids(self):
        """The ids that restore() accepts, oldest first."""
        with self._lock:
            self._check()
            return tuple(range(self._first, self._first + <int64_t>self._count))

    @property
    def nbytes(self):
        """Memory the snapshots hold, in bytes: page copies (free ones kept
        for reuse included) and indexes."""
        with self._lock:
            self._check()
            return self._nbytes()

    cdef size_t _nbytes(self):
        cdef size_t n = (self._touched - self._ncold) * self._page
        n += self._entries * sizeof(_SnapEntry)
        n += self._cap * sizeof(uint32_t) + self._nchunks * sizeof(char *)
        n += self._ringcap * sizeof(_Snap) + self._addrcap * sizeof(uint64_t)
        n += 2 * ((self._npages + 63) // 64) * sizeof(uint64_t)   # _ever, the tracker's bits
        if self._basemap != NULL:
            n += self._npages * sizeof(uint32_t)
        if self._srcmap != NULL:
            n += self._npages * sizeof(uint32_t)
        return n

    @property
    def keep(self):
        """How many snapshots the ring keeps."""
        return self._keep

    @property
    def region(self):
        """The Region whose states are saved."""
        return self._region

    @property
    def closed(self):
        return self._closed

    def __repr__(self):
        if self._closed:
            return "<writewatch.Snapshots closed>"
        ids = ("%d..%d" % (self._first, self._first + <int64_t>self._count - 1)
               if self._count else "none")
        return "<writewatch.Snapshots ids=%s keep=%d nbytes=%d>" % (ids, self._keep, self._nbytes())

    cdef int _check(self) except -1:
        if self._closed:
            raise ValueError("operation on a closed Snapshots")
        return 0

    # -- save -------------------------------------------------------------------

    def save(self):
        """Save the region's current state; returns its id (0, then 1, 2, ...;
        after restore(sid), sid + 1).  Copies the pages written since the
        previous save() or restore() -- on the first call, since the
        Snapshots was made -- and nothing else.  When more than `keep`
        snapshots would be kept, the oldest is folded into the base (no
        copy).
        """
        cdef size_t n, i, p, freed = 0
        cdef _SnapEntry *ents = NULL
        cdef _Snap *slot
        with self._lock:
            self._check()
            n = self._collect(True)
            try:
                if n:
                    ents = <_SnapEntry *>malloc(n * sizeof(_SnapEntry))
                    if ents == NULL:
                        raise MemoryError()
                if self._count >= self._keep:
                    self._need_basemap()
                    freed = self._fold_frees()
                self._reserve(n - freed if n > freed else 0)
                self._ring_room()
            except BaseException:
                free(ents)
                # Give the collected pages back to the tracker: they count as
                # written for the next save().
                if n:
                    self._tracker.mark_pages(<uint64_t[:n]>self._addrs)
                raise
            # Nothing can fail from here on.  The oldest snapshot is folded
            # first, so that the copies take the slots it frees.
            while self._count >= self._keep:
                self._fold_oldest()
            with nogil:
                for i in range(n):
                    p = (<uintptr_t>self._addrs[i] - self._base) >> self._shift
                    ents[i].page = <uint32_t>p
                    ents[i].slot = self._take()
                    memcpy(self._slot(ents[i].slot), <const void *>self._addrs[i], self._page)
                    self._mark_ever(p)
            slot = &self._ring[(self._head + self._count) % self._ringcap]
            slot.ents = ents
            slot.n = n
            self._count += 1
            self._entries += n
            self._trim()
            return self._first + <int64_t>self._count - 1

    cdef Py_ssize_t _collect(self, bint reset) except -1:
        """The pages written since the tracker's last reset into _addrs
        (ascending, no duplicates); with reset, they stop counting for it.
        Returns how many."""
        cdef Sink sink
        cdef size_t total = 0, rounds = 0
        try:
            if self._addrcap == 0:
                self._grow_addrs(min(self._npages, <size_t>1024))
            while True:
                sink.buf = self._addrs + total
                sink.n = 0
                sink.limit = self._addrcap - total
                self._region._tracker_collect(self._tracker, reset, &sink)
                total += sink.n
                # A full result may have left pages behind, unless it had
                # room for every page of the region.
                if sink.n < sink.limit or sink.limit >= self._npages:
                    break
                rounds += 1
                if not reset:
                    total = 0             # without reset, the next call starts over
                self._grow_addrs(total + self._npages)
        except BaseException:
            if reset and total:
                self._tracker.mark_pages(<uint64_t[:total]>self._addrs)
            raise
        if reset and rounds:
            # Several get-and-resets: a page written again in between may come
            # twice, and the later rounds start from the region's start again.
            total = _sort_unique(self._addrs, total)
        return total

    cdef int _grow_addrs(self, size_t want) except -1:
        cdef uint64_t *grown = <uint64_t *>realloc(self._addrs, want * sizeof(uint64_t))
        if grown == NULL:
            raise MemoryError()
        self._addrs = grown
        self._addrcap = want
        return 0

    cdef int _ring_room(self) except -1:
        """Room in the ring for one more snapshot (it may hold keep + 1
        for a moment)."""
        cdef size_t cap, i
        cdef _Snap *grown
        if self._count < self._ringcap:
            return 0
        cap = self._ringcap * 2 if self._ringcap else 8
        if cap > self._keep + 1:
            cap = self._keep + 1
        if cap <= self._count:
            cap = self._count + 1
        grown = <_Snap *>malloc(cap * sizeof(_Snap))
        if grown == NULL:
            raise MemoryError()
        for i in range(self._count):
            grown[i] = self._ring[(self._head + i) % self._ringcap]
        free(self._ring)
        self._ring = grown
        self._ringcap = cap
        self._head = 0
        return 0

    cdef size_t _fold_frees(self) noexcept:
        """How many slots _fold_oldest() will free."""
        cdef _Snap *old = &self._ring[self._head]
        cdef size_t i, k = 0
        for i in range(old.n):
            if self._basemap[old.ents[i].page]:
                k += 1
        return k

    cdef void _fold_oldest(self) noexcept:
        """The oldest snapshot becomes part of the base: its slots are the
        base's copies from now on; the base's older copies are freed."""
        cdef _Snap *old = &self._ring[self._head]
        cdef size_t i
        cdef uint32_t p, prev
        for i in range(old.n):
            p = old.ents[i].page
            prev = self._basemap[p]
            if prev:
                self._put(prev - 1)
            else:
                self._nbase += 1
            self._basemap[p] = old.ents[i].slot + 1
        self._entries -= old.n
        free(old.ents)
        old.ents = NULL
        old.n = 0
        self._head = (self._head + 1) % self._ringcap
        self._count -= 1
        self._first += 1

    # -- restore ----------------------------------------------------------------

    def restore(self, sid):
        """Make the region's bytes exactly those at save() number `sid`:
        only the pages written since (in later snapshots, or since the
        last save) are copied back.  Snapshots newer than `sid` are
        dropped; the next save() returns sid + 1 and costs only what is
        written after this call.  For the region's other users (its own
        get_write_watch, other Snapshots, DeltaLogs) the pages rewritten
        count as written.  Raises KeyError if `sid` is not in ``ids``.
        Must not race writes to the region.
        """
        cdef object want = _index(sid, "sid")
        cdef size_t k, ndirty, ntargets = 0, i, j, p, newer = 0
        cdef uint64_t *targets = NULL
        cdef _Snap *snap
        cdef uint32_t v
        cdef char *dst
        with self._lock:
            self._check()
            if not (self._first <= want < self._first + <int64_t>self._count):
                raise KeyError("snapshot %d is not kept; the ids kept are %s"
                               % (want, self._ids_text()))
            k = <size_t>(want - self._first)
            ndirty = self._collect(False)
            for j in range(k + 1, self._count):
                newer += self._ring[(self._head + j) % self._ringcap].n
            if self._srcmap == NULL:
                self._srcmap = <uint32_t *>calloc(self._npages, sizeof(uint32_t))
                if self._srcmap == NULL:
                    raise MemoryError()
            if ndirty + newer:
                targets = <uint64_t *>malloc((ndirty + newer) * sizeof(uint64_t))
                if targets == NULL:
                    raise MemoryError()
            try:
                with nogil:
                    # The pages that may differ from the state at `sid`...
                    for i in range(ndirty):
                        p = (<uintptr_t>self._addrs[i] - self._base) >> self._shift
                        if self._srcmap[p] == 0:
                            self._srcmap[p] = 1
                            targets[ntargets] = self._addrs[i]
                            ntargets += 1
                    for j in range(k + 1, self._count):
                        snap = &self._ring[(self._head + j) % self._ringcap]
                        for i in range(snap.n):
                            p = snap.ents[i].page
                            if self._srcmap[p] == 0:
                                self._srcmap[p] = 1
                                targets[ntargets] = self._base + (p << self._shift)
                                ntargets += 1
                    # ... their newest copy at or before `sid` ...
                    for j in range(k + 1):
                        snap = &self._ring[(self._head + j) % self._ringcap]
                        for i in range(snap.n):
                            p = snap.ents[i].page
                            if self._srcmap[p]:
                                self._srcmap[p] = snap.ents[i].slot + 2
                    # ... copied back: that copy, the base's, or zeros.
                    for i in range(ntargets):
                        dst = <char *>targets[i]
                        p = (<uintptr_t>dst - self._base) >> self._shift
                        v = self._srcmap[p]
                        self._srcmap[p] = 0
                        if v >= 2:
                            memcpy(dst, self._slot(v - 2), self._page)
                        elif self._basemap != NULL and self._basemap[p]:
                            memcpy(dst, self._slot(self._basemap[p] - 1), self._page)
                        else:
                            memset(dst, 0, self._page)
                while self._count > k + 1:
                    self._drop_newest()
                self._trim()
                # Our copies are not writes for our next save().
                self._region._tracker_pages(self._tracker, targets, ntargets, False)
            finally:
                free(targets)

    cdef void _drop_newest(self) noexcept:
        cdef _Snap *snap = &self._ring[(self._head + self._count - 1) % self._ringcap]
        cdef size_t i
        for i in range(snap.n):
            self._put(snap.ents[i].slot)
        self._entries -= snap.n
        free(snap.ents)
        snap.ents = NULL
        snap.n = 0
        self._count -= 1

    def _pages(self, sid):
        """For the tests: the page indexes (ascending) that save() number
        `sid` copied -- the pages written since the save or restore before
        it."""
        cdef object want = _index(sid, "sid")
        cdef _Snap *snap
        cdef size_t i
        with self._lock:
            self._check()
            if not (self._first <= want < self._first + <int64_t>self._count):
                raise KeyError("snapshot %d is not kept; the ids kept are %s"
                               % (want, self._ids_text()))
            snap = &self._ring[(self._head + <size_t>(want - self._first)) % self._ringcap]
            return [snap.ents[i].page for i in range(snap.n)]

    cdef str _ids_text(self):
        if self._count == 0:
            return "none (nothing was saved yet)"
        if self._count == 1:
            return "(%d,)" % self._first
        return "%d..%d" % (self._first, self._first + <int64_t>self._count - 1)

    # -- the slot pool ----------------------------------------------------------

    cdef inline char *_slot(self, uint32_t s) noexcept nogil:
        return self._chunks[s >> SLOT_SHIFT] + (<size_t>(s & (CHUNK_MAX - 1)) << self._shift)

    cdef inline size_t _chunk_slots(self, size_t c) noexcept nogil:
        if c >= 5:
            return CHUNK_MAX
        return <size_t>CHUNK_FIRST << c

    cdef int _reserve(self, size_t n) except -1:
        """Make sure n slots can be taken (by _take, which cannot fail)."""
        cdef size_t size, have
        cdef void *mem
        cdef uint32_t *grown
        cdef char **table
        while True:
            have = self._nhot + self._ncold
            if self._nchunks:
                have += self._chunk_slots(self._nchunks - 1) - self._fresh
            if have >= n:
                return 0
            if (self._nchunks + 1) << SLOT_SHIFT > 0xFFFFFFFF:
                raise MemoryError("Snapshots: more than 2**32 page copies")
            size = self._chunk_slots(self._nchunks)
            mem = mmap(NULL, size << self._shift, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            if mem == MAP_FAILED:
                raise MemoryError("mmap of %d bytes for page copies: %s"
                                  % (size << self._shift, os.strerror(errno)))
            # Whole huge pages would make nbytes lie about untouched slots.
            madvise(mem, size << self._shift, MADV_NOHUGEPAGE)
            table = <char **>realloc(self._chunks, (self._nchunks + 1) * sizeof(char *))
            if table == NULL:
                munmap(mem, size << self._shift)
                raise MemoryError()
            self._chunks = table
            grown = <uint32_t *>realloc(self._free, (self._cap + size) * sizeof(uint32_t))
            if grown == NULL:
                munmap(mem, size << self._shift)
                raise MemoryError()
            # the cold part stays at the end
            memmove(grown + self._cap + size - self._ncold, grown + self._cap - self._ncold,
                    self._ncold * sizeof(uint32_t))
            self._free = grown
            self._cap += size
            if self._nchunks:
                # The last chunk's untouched slots join the cold ones: not
                # resident, taken before fresh ones.
                while self._fresh < self._chunk_slots(self._nchunks - 1):
                    self._free[self._cap - self._ncold - 1] = <uint32_t>(
                        ((self._nchunks - 1) << SLOT_SHIFT) | self._fresh)
                    self._ncold += 1
                    self._fresh += 1
                    self._touched += 1
            self._chunks[self._nchunks] = <char *>mem
            self._nchunks += 1
            self._fresh = 0

    cdef inline uint32_t _take(self) noexcept nogil:
        """A slot: a warm free one, else a cold one, else a fresh one
        (_reserve() made sure there is one)."""
        cdef uint32_t s
        if self._nhot:
            self._nhot -= 1
            return self._free[self._nhot]
        if self._ncold:
            s = self._free[self._cap - self._ncold]
            self._ncold -= 1
            return s
        s = <uint32_t>(((self._nchunks - 1) << SLOT_SHIFT) | self._fresh)
        self._fresh += 1
        self._touched += 1
        return s

    cdef inline void _put(self, uint32_t s) noexcept nogil:
        self._free[self._nhot] = s
        self._nhot += 1

    cdef inline void _mark_ever(self, size_t p) noexcept nogil:
        cdef uint64_t bit = (<uint64_t>1) << (p & 63)
        if not (self._ever[p >> 6] & bit):
            self._ever[p >> 6] |= bit
            self._never += 1

    cdef int _need_basemap(self) except -1:
        if self._basemap == NULL:
            self._basemap = <uint32_t *>calloc(self._npages, sizeof(uint32_t))
            if self._basemap == NULL:
                raise MemoryError()
        return 0

    cdef void _trim(self) noexcept:
        """Give free slots beyond the memory bound back to the kernel (the
        oldest freed first), in runs of adjacent slots.  MADV_FREE: the
        kernel takes the pages when it needs memory, and a slot reused
        before that costs no fault."""
        cdef size_t slack = TRIM_SLACK if self._npages > TRIM_SLACK else self._npages
        cdef size_t held = self._touched - self._ncold
        cdef size_t bound = self._ninit + self._never + self._entries + slack
        cdef size_t k, i, j
        cdef uint32_t *rel
        if held <= bound or self._nhot == 0:
            return
        k = held - (bound - slack // 2)
        if k > self._nhot:
            k = self._nhot
        rel = <uint32_t *>malloc(k * sizeof(uint32_t))
        if rel == NULL:
            return                        # trimming is an economy, not a duty
        memcpy(rel, self._free, k * sizeof(uint32_t))
        memmove(self._free, self._free + k, (self._nhot - k) * sizeof(uint32_t))
        self._nhot -= k
        qsort(rel, k, sizeof(uint32_t), _u32_cmp)
        i = 0
        while i < k:
            j = i + 1
            while (j < k and rel[j] == rel[j - 1] + 1
                   and (rel[j] >> SLOT_SHIFT) == (rel[i] >> SLOT_SHIFT)):
                j += 1
            if madvise(self._slot(rel[i]), (j - i) << self._shift, _MADV_FREE) != 0:
                madvise(self._slot(rel[i]), (j - i) << self._shift, MADV_DONTNEED)
            i = j
        for i in range(k):
            self._free[self._cap - self._ncold - 1] = rel[i]
            self._ncold += 1
        free(rel)

    # -- lifetime ---------------------------------------------------------------

    def close(self):
        """Free the copies and stop following the region.  Idempotent.  The
        region's own write-watch state is not touched.
        """
        if self._lock is None:
            return
        with self._lock:
            if self._closed:
                return
            self._release()

    cdef void _release(self):
        self._closed = True
        if self._tracker is not None:
            self._tracker.close()
        self._free_memory()

    cdef void _free_memory(self) noexcept:
        cdef size_t i
        if self._ring != NULL:
            for i in range(self._count):
                free(self._ring[(self._head + i) % self._ringcap].ents)
        free(self._ring)
        self._ring = NULL
        self._ringcap = self._count = self._head = self._entries = 0
        for i in range(self._nchunks):
            munmap(self._chunks[i], self._chunk_slots(i) << self._shift)
        free(self._chunks)
        self._chunks = NULL
        self._nchunks = self._cap = self._fresh = self._touched = 0
        free(self._free)
        self._free = NULL
        self._nhot = self._ncold = 0
        free(self._basemap)
        self._basemap = NULL
        self._nbase = 0
        free(self._srcmap)
        self._srcmap = NULL
        free(self._ever)
        self._ever = NULL
        self._never = self._ninit = 0
        free(self._addrs)
        self._addrs = NULL
        self._addrcap = 0

    def __enter__(self):
        self._check()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __dealloc__(self):
        self._free_memory()


cdef int _u32_cmp(const void *a, const void *b) noexcept nogil:
    cdef uint32_t x = (<const uint32_t *>a)[0]
    cdef uint32_t y = (<const uint32_t *>b)[0]
    return (x > y) - (x < y)


cdef int _u64_cmp(const void *a, const void *b) noexcept nogil:
    cdef uint64_t x = (<const uint64_t *>a)[0]
    cdef uint64_t y = (<const uint64_t *>b)[0]
    return (x > y) - (x < y)


cdef size_t _sort_unique(uint64_t *a, size_t n) noexcept nogil:
    cdef size_t i, k = 0
    qsort(a, n, sizeof(uint64_t), _u64_cmp)
    for i in range(n):
        if k == 0 or a[i] != a[k - 1]:
            a[k] = a[i]
            k += 1
    return k
