# The `mprotect` backend's control side (includes/mprotect_control.h): the
# calls the engine's hooks make, and the test hooks.  Never in signal context.
from libc.stdint cimport uint64_t, uintptr_t

from writewatch.includes.mprotect_handler cimport ww_mp_region


cdef extern from "mprotect_control.h" nogil:
    ww_mp_region *ww_mp_arm(uintptr_t base, size_t size, size_t page,
                            int committed, int *err, const char **what)
    void ww_mp_detach(ww_mp_region *r)
    void ww_mp_release(ww_mp_region *r)
    int ww_mp_collect(ww_mp_region *r, uintptr_t start, uintptr_t end, int reset,
                      uint64_t *buf, size_t *n, size_t limit, const char **what)
    int ww_mp_reset(ww_mp_region *r, uintptr_t start, uintptr_t end, const char **what)
    int ww_mp_protect(ww_mp_region *r, uintptr_t start, uintptr_t end, int prot,
                      const char **what)
    int ww_mp_rearm(ww_mp_region *r, uintptr_t start, uintptr_t end, const char **what)
    int ww_mp_commit(ww_mp_region *r, uintptr_t start, uintptr_t end, int prot,
                     const char **what)
    int ww_mp_decommit(ww_mp_region *r, uintptr_t start, uintptr_t end,
                       const char **what)
    int ww_mp_install()
    int ww_mp_handler_is_current()
    void ww_mp_update_budget()

    # test hooks
    long ww_mp_vmas_in(uintptr_t start, uintptr_t end)
    long ww_mp_regions()
