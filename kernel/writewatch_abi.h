/*
 * writewatch_abi.h - the slice of the Linux user ABI that writewatch uses,
 * declared once for the Cython extension, the C floor and the selftests.
 *
 * The system headers may predate PAGEMAP_SCAN (Linux 6.7) and
 * UFFD_FEATURE_WP_ASYNC / UFFD_FEATURE_WP_UNPOPULATED (6.7 / 6.4).  Every
 * definition below is guarded: when <linux/fs.h> or <linux/userfaultfd.h>
 * already provides a name, the system's definition wins.  Values are the
 * kernel's uapi values; kernel/README.md explains each field.
 */
#ifndef WRITEWATCH_ABI_H
#define WRITEWATCH_ABI_H

#include <stdint.h>
#include <sys/ioctl.h>
#include <linux/types.h>
#include <linux/fs.h>
#include <linux/userfaultfd.h>

/* ---- PAGEMAP_SCAN (include/uapi/linux/fs.h, Linux 6.7) ------------------ */

#ifndef PAGE_IS_WPALLOWED
#define PAGE_IS_WPALLOWED   (1 << 0)  /* VMA is registered for async uffd-wp   */
#define PAGE_IS_WRITTEN     (1 << 1)  /* written since last write-protected    */
#define PAGE_IS_FILE        (1 << 2)
#define PAGE_IS_PRESENT     (1 << 3)
#define PAGE_IS_SWAPPED     (1 << 4)
#define PAGE_IS_PFNZERO     (1 << 5)
#define PAGE_IS_HUGE        (1 << 6)
#define PAGE_IS_SOFT_DIRTY  (1 << 7)
#endif
#ifndef PAGE_IS_GUARD
#define PAGE_IS_GUARD       (1 << 8)  /* Linux 6.16 (kernel/README.md) */
#endif

#ifndef PM_SCAN_WP_MATCHING
#define PM_SCAN_WP_MATCHING    (1 << 0)  /* write-protect what is reported   */
#define PM_SCAN_CHECK_WPASYNC  (1 << 1)  /* fail on a VMA without async wp   */
#define PM_SCAN_FLAGS          (PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC)

struct page_region {
    __u64 start;
    __u64 end;
    __u64 categories;
};

struct pm_scan_arg {
    __u64 size;                 /* sizeof(struct pm_scan_arg)                */
    __u64 flags;                /* PM_SCAN_*                                 */
    __u64 start;                /* first byte of the range (page aligned)    */
    __u64 end;                  /* one past the last byte                    */
    __u64 walk_end;             /* out: where the walk stopped               */
    __u64 vec;                  /* user pointer to struct page_region[]      */
    __u64 vec_len;              /* its length in elements                    */
    __u64 max_pages;            /* stop after this many pages (0: no limit)  */
    __u64 category_inverted;    /* categories that must be *absent*         */
    __u64 category_mask;        /* all of these must match                   */
    __u64 category_anyof_mask;  /* at least one of these must match          */
    __u64 return_mask;          /* categories reported in page_region        */
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif

/* ---- userfaultfd (include/uapi/linux/userfaultfd.h) --------------------- */

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1                      /* Linux 5.11 */
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)      /* Linux 6.4 */
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)            /* Linux 6.7 */
#endif

/* Compile-time checks of the layouts the kernel expects. */
#ifdef __cplusplus
static_assert(sizeof(struct pm_scan_arg) == 96, "pm_scan_arg is 96 bytes");
static_assert(sizeof(struct page_region) == 24, "page_region is 24 bytes");
#else
_Static_assert(sizeof(struct pm_scan_arg) == 96, "pm_scan_arg is 96 bytes");
_Static_assert(sizeof(struct page_region) == 24, "page_region is 24 bytes");
#endif

#endif /* WRITEWATCH_ABI_H */
