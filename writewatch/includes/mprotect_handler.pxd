# The `mprotect` backend's signal side (includes/mprotect_handler.h): the
# per-region state the handler reads, and what it counts.  Read from Python
# only for diagnostics (_mprotect_stats()).
from libc.stdint cimport uintptr_t


cdef extern from "mprotect_handler.h" nogil:
    struct ww_mp_region:
        uintptr_t base
        uintptr_t end
        size_t npages
        long splits

    long ww_mp_vmas
    long ww_mp_vma_limit
    unsigned long ww_mp_nfaults
    unsigned long ww_mp_nwidened
    unsigned long ww_mp_nkept
