/*
 * softdirty.h - the `softdirty` backend's plain C: the kernel's soft-dirty
 * bit (bit 55 of a /proc/self/pagemap entry) and its reset, writing "4" to
 * /proc/self/clear_refs.  Needs a kernel built with CONFIG_MEM_SOFT_DIRTY
 * (Linux >= 3.11, on architectures that have it: x86-64, powerpc64, s390 --
 * not arm64).
 *
 * clear_refs is process-wide: it clears the soft-dirty bit of every page
 * of the process.  So a reset of one region must not lose the written state
 * of the others: each region keeps a software bitmap, r->soft, of pages
 * seen soft-dirty before the last clear_refs, and before every clear_refs
 * the bits of *every* live region are folded into its bitmap.  A region's
 * written pages are then  r->soft | (bit 55 now).  Everything below runs
 * under one process-wide mutex, ww_sd_mu.
 *
 * What is guaranteed, and what is not:
 *  - Not atomic.  Folding reads page p's entry, and clear_refs clears p
 *    later; a write to p landing between the two is LOST: it is reported
 *    neither by this call nor by any later one (the data is written, the
 *    page reads clean).  This concerns every softdirty region of the
 *    process, not only the one being reset.  The callers (_softdirty.pxi)
 *    hold the GIL across fold + clear_refs, so no Python code can write in
 *    that window; a write made without the GIL -- a kernel write such as
 *    read(2) into the region, a C extension that released the GIL (large
 *    numpy operations do), ctypes -- by another thread can be lost.  A
 *    program that does not write from other threads while it resets loses
 *    nothing.
 *  - False positives, and how regions avoid the main source.  pagemap
 *    reports bit 55 for every page of a VMA flagged VM_SOFTDIRTY, and every
 *    new mapping starts flagged.  When a later mapping merges with a
 *    region's VMA, the merged VMA takes the newcomer's flags (madvise and
 *    mprotect set vma->vm_flags = new_flags after vma_merge(); seen on
 *    Linux 6.1: Region() of a neighbour, whose MADV_NOHUGEPAGE merged it,
 *    marked every page of the older region written).  So arm() gives each
 *    region MADV_RANDOM (VM_RAND_READ: for anonymous memory it only turns
 *    off swap readahead) *after* its clear_refs: a fresh mapping, which
 *    lacks that flag, can no longer merge into a tracked region, and two
 *    tracked regions merge only with clean flags.  Left: mremap or other
 *    kernel paths that flag a VMA soft-dirty can still report whole
 *    regions once.  Discarded pages read clean unless their VMA is flagged.
 *  - Cost: clear_refs walks (and write-protects) every page table of the
 *    process, so the next write to *any* page of the process takes a minor
 *    fault; a reset costs in proportion to the process, not the region.
 *  - fork(): clear_refs and pagemap are opened per call / per process
 *    (ww_common.h), so a child never touches its parent's bits; the child
 *    starts with no live regions and a fresh mutex.
 */
#ifndef WRITEWATCH_SOFTDIRTY_H
#define WRITEWATCH_SOFTDIRTY_H

#include "ww_common.h"

#include <stdlib.h>

#define WW_PM_SOFT_DIRTY ((uint64_t)1 << 55)
#define WW_SD_BATCH 512          /* pagemap entries per pread (4 KiB) */

typedef struct ww_sd_region {
    uintptr_t base, end;
    size_t page;
    unsigned shift;
    uint64_t *soft;              /* soft-dirty before the last clear_refs */
    uint64_t gen;                /* fork generation it was armed in       */
    struct ww_sd_region *next, *prev;
    int linked;
} ww_sd_region;

static pthread_mutex_t ww_sd_mu = PTHREAD_MUTEX_INITIALIZER;
static ww_sd_region *ww_sd_live = NULL;   /* this process's live regions */
static pthread_once_t ww_sd_once = PTHREAD_ONCE_INIT;

static void ww_sd_atfork_child(void)
{
    /* The parent's regions are not tracked in the child (their memory is
     * a copy the child may write freely); the mutex may have been held. */
    pthread_mutex_init(&ww_sd_mu, NULL);
    ww_sd_live = NULL;
}

static void ww_sd_install_atfork(void)
{
    pthread_atfork(NULL, NULL, ww_sd_atfork_child);
}

/* OR the soft-dirty bits of pages [first, last) of r into bits (indexed
 * like r's pages).  0 or -errno. */
static int ww_sd_read(const ww_sd_region *r, size_t first, size_t last, uint64_t *bits,
                      const char **what)
{
    uint64_t ent[WW_SD_BATCH];
    int fd = ww_pagemap_fd();
    if (fd < 0) {
        *what = "open(/proc/self/pagemap)";
        return fd;
    }
    while (first < last) {
        size_t n = last - first < WW_SD_BATCH ? last - first : WW_SD_BATCH;
        off_t off = (off_t)(((r->base >> r->shift) + first) * sizeof(uint64_t));
        ssize_t got = pread(fd, ent, n * sizeof(uint64_t), off);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0 || got % sizeof(uint64_t)) {
            *what = "pread(/proc/self/pagemap)";
            return got < 0 ? -errno : -EIO;
        }
        n = (size_t)got / sizeof(uint64_t);
        for (size_t k = 0; k < n; k++)
            if (ent[k] & WW_PM_SOFT_DIRTY)
                ww_bit_set(bits, first + k);
        first += n;
    }
    return 0;
}

/* Fold every live region's soft-dirty bits into its bitmap, then clear
 * them all with clear_refs.  ww_sd_mu held.  On failure nothing is lost:
 * folded bits stay in the bitmaps, and a failed clear_refs cleared nothing. */
static int ww_sd_fold_and_clear(const char **what)
{
    for (ww_sd_region *x = ww_sd_live; x != NULL; x = x->next) {
        int rc = ww_sd_read(x, 0, (x->end - x->base) >> x->shift, x->soft, what);
        if (rc < 0)
            return rc;
    }
    int fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        *what = "open(/proc/self/clear_refs)";
        return -errno;
    }
    ssize_t w;
    do {
        w = write(fd, "4", 1);
    } while (w < 0 && errno == EINTR);
    int err = w == 1 ? 0 : (w < 0 ? -errno : -EIO);
    close(fd);
    if (err)
        *what = "write(/proc/self/clear_refs, \"4\")";
    return err;
}

static ww_sd_region *ww_sd_region_new(void)
{
    return (ww_sd_region *)calloc(1, sizeof(ww_sd_region));
}

/* Start tracking a fresh mapping: clear_refs once (folding everybody else
 * first) so that the kernel's "new VMA is soft-dirty" mark is gone. */
static int ww_sd_arm(ww_sd_region *r, uintptr_t base, size_t size, size_t page,
                     const char **what)
{
    r->base = base;
    r->end = base + size;
    r->page = page;
    r->shift = (unsigned)__builtin_ctzl(page);
    r->gen = ww_fork_generation();
    r->soft = ww_bits_new(size >> r->shift);
    if (r->soft == NULL) {
        *what = "calloc";
        return -ENOMEM;
    }
    pthread_once(&ww_sd_once, ww_sd_install_atfork);
    pthread_mutex_lock(&ww_sd_mu);
    int rc = ww_sd_fold_and_clear(what);
    if (rc == 0) {
        /* After the clear (see the header comment): no fresh mapping can
         * merge into the region and carry its VM_SOFTDIRTY over it.  A
         * failure only leaves that source of false positives open. */
        madvise((void *)base, size, MADV_RANDOM);
        r->next = ww_sd_live;
        r->prev = NULL;
        if (ww_sd_live)
            ww_sd_live->prev = r;
        ww_sd_live = r;
        r->linked = 1;
    }
    pthread_mutex_unlock(&ww_sd_mu);
    return rc;
}

static void ww_sd_detach(ww_sd_region *r)
{
    if (r->gen != ww_fork_generation() || !r->linked)
        return;
    pthread_mutex_lock(&ww_sd_mu);
    if (r->prev)
        r->prev->next = r->next;
    else
        ww_sd_live = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->linked = 0;
    pthread_mutex_unlock(&ww_sd_mu);
}

static void ww_sd_region_free(ww_sd_region *r)
{
    if (r != NULL) {
        free(r->soft);
        free(r);
    }
}

/* Written pages of [start, end) into buf[*n...] (at most limit - *n); with
 * reset, fold + clear_refs first and then take the reported pages out of
 * r->soft (pages past the limit keep their bits).  buf NULL: a plain reset
 * of the range.  0 or -errno. */
static int ww_sd_collect(ww_sd_region *r, uintptr_t start, uintptr_t end, int reset,
                         uint64_t *buf, size_t *n, size_t limit, const char **what)
{
    size_t first = (start - r->base) >> r->shift;
    size_t last = (end - r->base) >> r->shift;
    int rc = 0;
    pthread_mutex_lock(&ww_sd_mu);
    if (reset) {
        rc = ww_sd_fold_and_clear(what);
        if (rc < 0)
            goto out;
        if (buf == NULL) {
            ww_bits_clear(r->soft, first, last);
            goto out;
        }
        for (size_t i = ww_next_set(r->soft, first, last); i < last && *n < limit;
             i = ww_next_set(r->soft, i + 1, last)) {
            buf[(*n)++] = (uint64_t)(r->base + (i << r->shift));
            ww_bit_clear(r->soft, i);
        }
    } else {
        /* r->soft | bit 55, a chunk at a time (chunks start on a word). */
        uint64_t now[WW_SD_BATCH / 64 + 1];
        size_t p = first & ~(size_t)63;
        while (p < last && *n < limit) {
            size_t stop = last - p < WW_SD_BATCH ? last : p + WW_SD_BATCH;
            size_t from = p < first ? first : p;
            memset(now, 0, sizeof(now));
            /* indexes relative to p: fake a region view starting at p */
            ww_sd_region view = *r;
            view.base = r->base + (p << r->shift);
            rc = ww_sd_read(&view, from - p, stop - p, now, what);
            if (rc < 0)
                goto out;
            for (size_t i = from; i < stop && *n < limit; i++) {
                size_t k = i - p;
                if (ww_bit_test(now, k) || ww_bit_test(r->soft, i))
                    buf[(*n)++] = (uint64_t)(r->base + (i << r->shift));
            }
            p = stop;
        }
    }
out:
    pthread_mutex_unlock(&ww_sd_mu);
    return rc;
}

/* Discard (and, after an mprotect(PROT_NONE), Win32 decommit):
 * MADV_DONTNEED takes the pages and their soft-dirty bits; clear what
 * r->soft remembers of them.  (This backend fills no page tables when it
 * arms, and a fresh mapping in their place would be flagged soft-dirty
 * whole, so the mapping stays.) */
static int ww_sd_discard(ww_sd_region *r, uintptr_t start, uintptr_t end, const char **what)
{
    int rc = 0;
    pthread_mutex_lock(&ww_sd_mu);
    if (madvise((void *)start, end - start, MADV_DONTNEED) != 0) {
        rc = -errno;
        *what = "madvise(MADV_DONTNEED)";
    } else {
        ww_bits_clear(r->soft, (start - r->base) >> r->shift, (end - r->base) >> r->shift);
    }
    pthread_mutex_unlock(&ww_sd_mu);
    return rc;
}

/* Win32 commit of reserved [start, end): open it with prot; its pages
 * were never touched (or dropped by a decommit), so nothing is written. */
static int ww_sd_commit(ww_sd_region *r, uintptr_t start, uintptr_t end, int prot,
                        const char **what)
{
    int rc = 0;
    pthread_mutex_lock(&ww_sd_mu);
    if (mprotect((void *)start, end - start, prot) != 0) {
        rc = -errno;
        *what = "mprotect";
    } else {
        ww_bits_clear(r->soft, (start - r->base) >> r->shift, (end - r->base) >> r->shift);
    }
    pthread_mutex_unlock(&ww_sd_mu);
    return rc;
}

/* For the probe: the soft-dirty bit of the page at addr (0/1) or -errno. */
static int ww_sd_page_bit(uintptr_t addr, size_t page)
{
    uint64_t ent;
    int fd = ww_pagemap_fd();
    if (fd < 0)
        return fd;
    ssize_t got;
    do {
        got = pread(fd, &ent, sizeof(ent), (off_t)((addr / page) * sizeof(uint64_t)));
    } while (got < 0 && errno == EINTR);
    if (got != (ssize_t)sizeof(ent))
        return got < 0 ? -errno : -EIO;
    return (ent & WW_PM_SOFT_DIRTY) != 0;
}

/* For the probe: fold + clear_refs under the lock. */
static int ww_sd_clear_all(const char **what)
{
    pthread_once(&ww_sd_once, ww_sd_install_atfork);
    pthread_mutex_lock(&ww_sd_mu);
    int rc = ww_sd_fold_and_clear(what);
    pthread_mutex_unlock(&ww_sd_mu);
    return rc;
}

#endif /* WRITEWATCH_SOFTDIRTY_H */
