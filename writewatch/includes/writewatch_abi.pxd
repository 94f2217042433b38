# kernel/writewatch_abi.h: the slice of the kernel's user ABI writewatch uses
# (PAGEMAP_SCAN, userfaultfd), with fallbacks for system headers older than
# the kernel.  The same header serves the C floor and the selftests.
from libc.stdint cimport uint64_t


cdef extern from "writewatch_abi.h" nogil:
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
