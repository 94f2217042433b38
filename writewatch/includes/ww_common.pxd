# includes/ww_common.h: the C shared by the backends -- the fork generation,
# the process's /proc/self/pagemap descriptor and asynchronous userfaultfd,
# the system-call wrappers, the decommit's remap.  Every function returns -errno on failure.
from libc.stdint cimport uint64_t, uintptr_t


cdef extern from "ww_common.h" nogil:
    uint64_t ww_fork_generation()
    int ww_pagemap_fd()
    long ww_ioctl(int fd, unsigned long req, void *arg)
    int ww_userfaultfd(int flags)
    int ww_async_uffd(const char **what)
    int ww_async_uffd_lost(int fd)
    int ww_remap_reserved(uintptr_t start, uintptr_t end, const char **what)
