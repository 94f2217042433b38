"""A reference model of write-watch state, small enough to be obviously right.

One `PageModel` stands for one region: which of its pages count as written,
what each page holds, and how each page may be accessed.  Every operation of
the library has a counterpart here written in the plainest Python there is
(sets, sorted lists, bytearrays), with the Win32 semantics spelled out:

- a write marks every page it touches (a write of the value already there
  still counts: it is a write access);
- a get reports the written pages of the range rounded out to whole pages,
  ascending, at most `max_count` of them (the first ones); with reset, exactly
  the reported pages stop counting as written -- pages past the truncation
  keep their state;
- a reset clears the whole rounded range;
- a protection change is not a write and changes no written state;
- a commit of committed pages changes nothing; of decommitted pages makes them
  accessible and zero, not written;
- a decommit zeroes the pages and clears their written state;
- Win32 only: a VirtualProtect latches the written state of the pages it
  covers; a decommit keeps what is latched; a get reports latched or
  written pages, and a reset (or the reported prefix of a get-and-reset)
  clears both.

The stateful tests (test_model.py) compare every result of the library with
this model.  The model knows nothing of the library.
"""

READ, WRITE = 1, 2          # PROT_READ, PROT_WRITE: the only bits the model needs


class PageModel:
    def __init__(self, base, npages, page):
        self.base = base
        self.npages = npages
        self.page = page
        self.written = set()                 # page indexes
        self.data = bytearray(npages * page)
        self.prot = [READ | WRITE] * npages  # per page
        self.committed = [True] * npages

    # -- ranges -----------------------------------------------------------

    def pages_of(self, address=None, size=None):
        """Page indexes of [address, address+size) rounded out to pages; the
        defaults mean the region's start and up to its end."""
        a = self.base if address is None else address
        end = self.base + self.npages * self.page if size is None else a + size
        first = (a - self.base) // self.page
        last = (end - self.base + self.page - 1) // self.page
        return range(first, last)

    # -- writes and reads ---------------------------------------------------

    def can_write(self, offset, length):
        return all(self.prot[p] & WRITE and self.committed[p]
                   for p in range(offset // self.page,
                                  (offset + length - 1) // self.page + 1))

    def can_read(self, p):
        return bool(self.prot[p] & READ) and self.committed[p]

    def write(self, offset, data):
        assert data and self.can_write(offset, len(data))
        self.data[offset:offset + len(data)] = data
        for p in range(offset // self.page, (offset + len(data) - 1) // self.page + 1):
            self.written.add(p)

    # -- write watch --------------------------------------------------------

    def get(self, address=None, size=None, reset=False, max_count=None):
        """The expected result: absolute page addresses, ascending."""
        pages = [p for p in self.pages_of(address, size) if p in self.written]
        if max_count is not None:
            pages = pages[:max_count]
        if reset:
            self.written.difference_update(pages)
        return [self.base + p * self.page for p in pages]

    def reset(self, address=None, size=None):
        self.written.difference_update(self.pages_of(address, size))

    # -- memory management ---------------------------------------------------

    def discard(self, address, size):
        """Region._discard: contents dropped (zero again), not written."""
        for p in self.pages_of(address, size):
            self.written.discard(p)
            self.data[p * self.page:(p + 1) * self.page] = bytes(self.page)

    def protect(self, address, size, prot):
        for p in self.pages_of(address, size):
            self.prot[p] = prot

    def decommit(self, address, size):
        self.discard(address, size)
        for p in self.pages_of(address, size):
            self.committed[p] = False

    def commit(self, address, size, prot=READ | WRITE):
        for p in self.pages_of(address, size):
            if not self.committed[p]:
                self.committed[p] = True
                self.prot[p] = prot


class Win32Model(PageModel):
    """One MEM_WRITE_WATCH allocation as Windows describes it: each page is
    reserved (no access, never written) or committed with a PAGE_*
    protection.  Protections here are the Win32 constants."""

    MEM_COMMIT, MEM_RESERVE = 0x1000, 0x2000
    WRITABLE = (0x04, 0x40)                       # PAGE_READWRITE, PAGE_EXECUTE_READWRITE
    READABLE = (0x02, 0x04, 0x20, 0x40)           # ... and PAGE_READONLY, PAGE_EXECUTE_READ

    def __init__(self, base, npages, page, protect, committed):
        super().__init__(base, npages, page)
        self.alloc_protect = protect
        self.committed = [committed] * npages
        self.prot = [protect if committed else 0] * npages
        self.latched = set()                # page indexes a VirtualProtect latched

    def get(self, address=None, size=None, reset=False, max_count=None):
        pages = [p for p in self.pages_of(address, size)
                 if p in self.written or p in self.latched]
        if max_count is not None:
            pages = pages[:max_count]
        if reset:
            self.written.difference_update(pages)
            self.latched.difference_update(pages)
        return [self.base + p * self.page for p in pages]

    def reset(self, address=None, size=None):
        super().reset(address, size)
        self.latched.difference_update(self.pages_of(address, size))

    def can_write(self, offset, length):
        return all(self.committed[p] and self.prot[p] in self.WRITABLE
                   for p in range(offset // self.page, (offset + length - 1) // self.page + 1))

    def can_read(self, p):
        return self.committed[p] and self.prot[p] in self.READABLE

    def commit(self, address, size, protect):
        """VirtualAlloc(MEM_COMMIT): every page in the range gets `protect`;
        pages already committed keep contents and written state, newly
        committed ones are zero and clean (decommit made them so)."""
        for p in self.pages_of(address, size):
            self.committed[p] = True
            self.prot[p] = protect

    def decommit(self, address, size):
        super().decommit(address, size)
        for p in self.pages_of(address, size):
            self.prot[p] = 0

    def virtual_protect(self, address, size):
        """-> (ok, old protection of the first page); on success the caller
        then sets the new protection with protect()."""
        pages = self.pages_of(address, size)
        if not all(self.committed[p] for p in pages):
            return False, 0
        self.latched.update(p for p in pages if p in self.written)
        return True, self.prot[pages[0]]

    def query(self, address):
        """(BaseAddress, AllocationBase, AllocationProtect, RegionSize,
        State, Protect) for the page holding `address`."""
        p = (address - self.base) // self.page
        key = (self.committed[p], self.prot[p])
        q = p
        while q < self.npages and (self.committed[q], self.prot[q]) == key:
            q += 1
        state = self.MEM_COMMIT if self.committed[p] else self.MEM_RESERVE
        return (self.base + p * self.page, self.base, self.alloc_protect,
                (q - p) * self.page, state, self.prot[p])
