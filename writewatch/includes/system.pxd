# Every C declaration the extension uses, in one place (uvloop's includes/).
from libc.stdint cimport uint8_t, uint64_t, uintptr_t
from posix.types cimport pid_t


cdef extern from "compat.h" nogil:
    # kernel/writewatch_abi.h, through compat.h
    struct page_region:
        uint64_t start
        uint64_t end
        uint64_t categories

    struct pm_scan_arg:
        uint64_t size
        uint64_t flags
        uint64_t start
        uint64_t end
        uint64_t walk_end
        uint64_t vec
        uint64_t vec_len
        uint64_t max_pages
        uint64_t category_inverted
        uint64_t category_mask
        uint64_t category_anyof_mask
        uint64_t return_mask

    unsigned long PAGEMAP_SCAN
    uint64_t PAGE_IS_WPALLOWED
    uint64_t PAGE_IS_WRITTEN
    uint64_t PAGE_IS_FILE
    uint64_t PAGE_IS_PRESENT
    uint64_t PAGE_IS_SWAPPED
    uint64_t PAGE_IS_PFNZERO
    uint64_t PAGE_IS_HUGE
    uint64_t PAGE_IS_SOFT_DIRTY
    uint64_t PM_SCAN_WP_MATCHING
    uint64_t PM_SCAN_CHECK_WPASYNC

    struct uffdio_api:
        uint64_t api
        uint64_t features
        uint64_t ioctls

    struct uffdio_range:
        uint64_t start
        uint64_t len

    struct uffdio_register:
        uffdio_range range
        uint64_t mode
        uint64_t ioctls

    struct uffdio_writeprotect:
        uffdio_range range
        uint64_t mode

    uint64_t UFFD_API
    unsigned long UFFDIO_API
    unsigned long UFFDIO_REGISTER
    unsigned long UFFDIO_UNREGISTER
    unsigned long UFFDIO_WRITEPROTECT
    unsigned long UFFDIO_WAKE
    uint64_t UFFDIO_REGISTER_MODE_WP
    uint64_t UFFDIO_WRITEPROTECT_MODE_WP
    uint64_t UFFD_FEATURE_WP_ASYNC
    uint64_t UFFD_FEATURE_WP_UNPOPULATED
    uint64_t UFFD_FEATURE_PAGEFAULT_FLAG_WP
    int UFFD_USER_MODE_ONLY

    int MAP_FIXED_NOREPLACE
    int MADV_NOHUGEPAGE

    # compat.h helpers
    uint64_t ww_fork_generation()
    int ww_pagemap_fd()
    long ww_ioctl(int fd, unsigned long req, void *arg)
    int ww_userfaultfd(int flags)
    int ww_async_uffd(const char **what)
    int ww_async_uffd_lost(int fd)
    void ww_touch_page(uintptr_t addr)


cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)
    int mprotect(void *addr, size_t length, int prot)
    int madvise(void *addr, size_t length, int advice)
    int msync(void *addr, size_t length, int flags)
    void *MAP_FAILED
    int PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC
    int MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE, MAP_FIXED
    int MADV_DONTNEED
    int MS_ASYNC


cdef extern from "<unistd.h>" nogil:
    long sysconf(int name)
    int _SC_PAGESIZE
    int close(int fd)
    pid_t getpid()
    ssize_t pread(int fd, void *buf, size_t count, long offset)


cdef extern from "<fcntl.h>" nogil:
    int O_CLOEXEC, O_NONBLOCK


cdef extern from "<sched.h>" nogil:
    int sched_yield()


cdef extern from "<errno.h>" nogil:
    int errno
    int EINVAL, ENOMEM, EEXIST, EPERM, ENOSYS, EFAULT, EINTR, ENOTTY, EIO, EAGAIN
