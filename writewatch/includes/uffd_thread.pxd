# The `uffd` backend's C side (includes/uffd_thread.h): the handler thread,
# the region table and the per-region operations.
from libc.stdint cimport uint32_t, uint64_t, uintptr_t


cdef extern from "uffd_thread.h" nogil:
    int WW_UFFD_MARKERS
    int WW_UFFD_MISSING

    ctypedef struct ww_uffd_region:
        uintptr_t base
        uintptr_t end
        uint64_t *bits


    int ww_uffd_ensure(const char **what)
    ww_uffd_region *ww_uffd_region_new()
    void ww_uffd_region_free(ww_uffd_region *r)
    int ww_uffd_arm(ww_uffd_region *r, uintptr_t base, size_t size, size_t page,
                    int committed, const char **what)
    void ww_uffd_detach(ww_uffd_region *r)
    int ww_uffd_collect(ww_uffd_region *r, uintptr_t start, uintptr_t end, int reset,
                        uint64_t *buf, size_t *n, size_t limit, const char **what)
    int ww_uffd_discard(ww_uffd_region *r, uintptr_t start, uintptr_t end,
                        const char **what)
    int ww_uffd_rearm(ww_uffd_region *r, uintptr_t start, uintptr_t end, int forget,
                      const char **what)
    int ww_uffd_commit(ww_uffd_region *r, uintptr_t start, uintptr_t end, int prot,
                       const char **what)
    int ww_uffd_decommit(ww_uffd_region *r, uintptr_t start, uintptr_t end,
                         const char **what)
    int ww_uffd_write_in_thread(ww_uffd_region *r, uintptr_t addr, int timeout_ms)
    void ww_uffd_set_hold(int on)

    # fields of the process-wide state, read for diagnostics
    int ww_uffd_mode "ww_uffd.mode"
    int ww_uffd_user_mode_only "ww_uffd.user_mode_only"
    int ww_uffd_fd "ww_uffd.fd"
    int ww_uffd_thread_running "ww_uffd.thread"
    uint64_t ww_uffd_features "ww_uffd.features"
    size_t ww_uffd_ntab "ww_uffd.ntab"
    uint64_t ww_uffd_n_wp "ww_uffd.n_wp"
    uint64_t ww_uffd_n_missing "ww_uffd.n_missing"
    uint64_t ww_uffd_n_stray "ww_uffd.n_stray"
    uint64_t ww_uffd_n_other "ww_uffd.n_other"
    uint64_t ww_uffd_n_dup "ww_uffd.n_dup"
