# The `softdirty` backend's C side (includes/softdirty.h).
from libc.stdint cimport uint64_t, uintptr_t


cdef extern from "softdirty.h" nogil:
    ctypedef struct ww_sd_region:
        uintptr_t base
        uintptr_t end

    ww_sd_region *ww_sd_region_new()
    void ww_sd_region_free(ww_sd_region *r)
    int ww_sd_arm(ww_sd_region *r, uintptr_t base, size_t size, size_t page,
                  const char **what)
    void ww_sd_detach(ww_sd_region *r)
    int ww_sd_collect(ww_sd_region *r, uintptr_t start, uintptr_t end, int reset,
                      uint64_t *buf, size_t *n, size_t limit, const char **what)
    int ww_sd_discard(ww_sd_region *r, uintptr_t start, uintptr_t end,
                      const char **what)
    int ww_sd_commit(ww_sd_region *r, uintptr_t start, uintptr_t end, int prot,
                     const char **what)
    int ww_sd_page_bit(uintptr_t addr, size_t page)
    int ww_sd_clear_all(const char **what)
