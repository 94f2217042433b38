// SPDX-License-Identifier: MIT
/*
 * pagemap_contract.c - selftests of the kernel contract writewatch stands on.
 *
 * The `pagemap` backend tracks writes with userfaultfd asynchronous
 * write-protect (UFFD_FEATURE_WP_ASYNC, WP_UNPOPULATED, UFFD_USER_MODE_ONLY)
 * and reads/re-arms them with the PAGEMAP_SCAN ioctl of /proc/self/pagemap.
 * This program checks, on the running kernel, exactly the behaviour the
 * library relies on (kernel/README.md explains each point).
 *
 * Output is TAP, as the kernel's kselftests print it: a plan line "1..N",
 * one "ok N - name" / "not ok N - name" / "ok N - name # SKIP reason" line
 * per check, "# " lines for diagnostics.  Exit status: 0 all passed,
 * 1 a check failed, 4 (KSFT_SKIP) the kernel lacks the feature (no
 * userfaultfd WP_ASYNC, no PAGEMAP_SCAN): every check is then reported as
 * skipped, never as passed.
 *
 * Build: make -C kernel selftest   (or `pip install .`: writewatch/_bin/ww-selftest)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "writewatch_abi.h"

#ifndef MADV_NOHUGEPAGE
#define MADV_NOHUGEPAGE 15
#endif

#define KSFT_PASS 0
#define KSFT_FAIL 1
#define KSFT_SKIP 4

/* ---- reporting --------------------------------------------------------- */

static int n_done, n_pass, n_fail, n_skip;
static char skip_all_reason[256];
static char diag[512];          /* why the current check failed */

static void note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(diag, sizeof(diag), fmt, ap);
    va_end(ap);
}

static void result(int ok, const char *name)
{
    n_done++;
    if (ok) {
        n_pass++;
        printf("ok %d - %s\n", n_done, name);
    } else {
        n_fail++;
        printf("not ok %d - %s\n", n_done, name);
        if (diag[0])
            printf("# %s: %s\n", name, diag);
    }
    diag[0] = 0;
    fflush(stdout);
}

static void skip(const char *name, const char *why)
{
    n_done++;
    n_skip++;
    printf("ok %d - %s # SKIP %s\n", n_done, name, why);
    fflush(stdout);
}

/* ---- the kernel interface ---------------------------------------------- */

static long page;
static int pagemap_fd = -1;
static int uffd = -1;

/* PAGEMAP_SCAN over [start, end) for PAGE_IS_WRITTEN, as writewatch asks.
 * Returns the number of page_region entries, or -errno. */
static long scan(void *start, void *end, uint64_t flags, struct page_region *vec,
                 uint64_t vec_len, uint64_t max_pages, uint64_t *walk_end)
{
    struct pm_scan_arg arg;
    long r;

    memset(&arg, 0, sizeof(arg));
    arg.size = sizeof(arg);
    arg.flags = flags;
    arg.start = (uintptr_t)start;
    arg.end = (uintptr_t)end;
    arg.vec = (uintptr_t)vec;
    arg.vec_len = vec_len;
    arg.max_pages = max_pages;
    arg.category_mask = PAGE_IS_WRITTEN;
    arg.return_mask = PAGE_IS_WRITTEN;
    do {
        r = ioctl(pagemap_fd, PAGEMAP_SCAN, &arg);
    } while (r < 0 && errno == EINTR);
    if (walk_end)
        *walk_end = arg.walk_end;
    return r < 0 ? -errno : r;
}

/* The same, with a caller-built argument: returns -errno or the result. */
static long scan_raw(struct pm_scan_arg *arg)
{
    long r = ioctl(pagemap_fd, PAGEMAP_SCAN, arg);
    return r < 0 ? -errno : r;
}

static int wp_range(void *addr, size_t len)
{
    struct uffdio_writeprotect wp;

    wp.range.start = (uintptr_t)addr;
    wp.range.len = len;
    wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
    return ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) ? -errno : 0;
}

/* A tracked region as writewatch makes one: anonymous private RW memory,
 * MADV_NOHUGEPAGE (4 KiB granularity), registered for write-protect and
 * armed as a whole (WP_UNPOPULATED: never-touched pages too). */
static char *region_new(long npages)
{
    struct uffdio_register reg;
    size_t len = npages * page;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    if (p == MAP_FAILED) {
        note("mmap: %s", strerror(errno));
        return NULL;
    }
    madvise(p, len, MADV_NOHUGEPAGE);
    reg.range.start = (uintptr_t)p;
    reg.range.len = len;
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    reg.ioctls = 0;
    if (ioctl(uffd, UFFDIO_REGISTER, &reg)) {
        note("UFFDIO_REGISTER: %s", strerror(errno));
        munmap(p, len);
        return NULL;
    }
    if (wp_range(p, len)) {
        note("UFFDIO_WRITEPROTECT: %s", strerror(errno));
        munmap(p, len);
        return NULL;
    }
    return p;
}

/* Written pages of [base, base + npages) as a bitmap, by one or more scans
 * that resume from walk_end.  Returns 0 or -errno; fails on overlap,
 * disorder or a walk that does not advance. */
static int collect(char *base, long npages, uint64_t flags, uint64_t vec_len,
                   uint64_t max_pages, unsigned char *seen, long *calls)
{
    struct page_region vec[64];
    char *pos = base, *end = base + npages * page;
    uint64_t walk_end, last = 0;
    long r, i;
    uint64_t a;

    if (vec_len > 64)
        vec_len = 64;
    memset(seen, 0, npages);
    if (calls)
        *calls = 0;
    while (pos < end) {
        r = scan(pos, end, flags, vec, vec_len, max_pages, &walk_end);
        if (calls)
            (*calls)++;
        if (r < 0) {
            note("PAGEMAP_SCAN: %s", strerror((int)-r));
            return (int)r;
        }
        for (i = 0; i < r; i++) {
            if (vec[i].start < last || vec[i].end <= vec[i].start ||
                vec[i].start < (uintptr_t)pos || vec[i].end > walk_end ||
                vec[i].categories != PAGE_IS_WRITTEN) {
                note("bad page_region [%#lx, %#lx) categories %#lx (pos %p walk_end %#lx)",
                     (unsigned long)vec[i].start, (unsigned long)vec[i].end,
                     (unsigned long)vec[i].categories, pos, (unsigned long)walk_end);
                return -EPROTO;
            }
            for (a = vec[i].start; a < vec[i].end; a += page) {
                long idx = (long)((a - (uintptr_t)base) / page);
                if (seen[idx]) {
                    note("page %ld reported twice", idx);
                    return -EPROTO;
                }
                seen[idx] = 1;
            }
            last = vec[i].end;
        }
        if (walk_end <= (uintptr_t)pos || walk_end > (uintptr_t)end) {
            note("walk_end %#lx does not advance from %p", (unsigned long)walk_end, pos);
            return -EPROTO;
        }
        pos = (char *)(uintptr_t)walk_end;
    }
    return 0;
}

/* seen == expected?  Names the first difference. */
static int same(const unsigned char *seen, const unsigned char *expected, long npages)
{
    for (long i = 0; i < npages; i++) {
        if (!!seen[i] != !!expected[i]) {
            note("page %ld: reported %s, expected %s", i,
                 seen[i] ? "written" : "clean", expected[i] ? "written" : "clean");
            return 0;
        }
    }
    return 1;
}

static int nothing_written(char *base, long npages)
{
    unsigned char seen[1024], none[1024] = {0};
    if (npages > 1024 || collect(base, npages, 0, 64, 0, seen, NULL))
        return 0;
    return same(seen, none, npages);
}

static void touch(char *base, long idx)
{
    __atomic_fetch_add((volatile uint64_t *)(base + idx * page), 1, __ATOMIC_RELAXED);
}

/* ---- the checks --------------------------------------------------------- */

/* A fresh region reports nothing, walk_end is the end of the range. */
static void t_fresh(void)
{
    const long n = 16;
    struct page_region vec[4];
    uint64_t walk_end = 0;
    char *r = region_new(n);
    long rc;
    int ok = 0;

    if (r) {
        rc = scan(r, r + n * page, PM_SCAN_CHECK_WPASYNC, vec, 4, 0, &walk_end);
        if (rc != 0)
            note("scan returned %ld", rc);
        else if (walk_end != (uintptr_t)(r + n * page))
            note("walk_end %#lx, expected %p", (unsigned long)walk_end, r + n * page);
        else
            ok = 1;
        munmap(r, n * page);
    }
    result(ok, "fresh region: nothing written, walk_end == end");
}

/* Reading a never-touched page (zero page) or a written-then-reset page is
 * not a write. */
static void t_read_not_write(void)
{
    const long n = 8;
    char *r = region_new(n);
    volatile char sink;
    unsigned char seen[8], expect[8] = {0};
    int ok = 0;

    if (r) {
        touch(r, 1);
        if (collect(r, n, PM_SCAN_WP_MATCHING, 64, 0, seen, NULL) == 0) {
            sink = r[0];
            sink = r[1 * page];
            sink = r[5 * page + 17];
            (void)sink;
            ok = collect(r, n, 0, 64, 0, seen, NULL) == 0 && same(seen, expect, n);
        }
        munmap(r, n * page);
    }
    result(ok, "reads are not writes");
}

static void init_arg(struct pm_scan_arg *arg, char *r, long n, struct page_region *vec)
{
    memset(arg, 0, sizeof(*arg));
    arg->size = sizeof(*arg);
    arg->start = (uintptr_t)r;
    arg->end = (uintptr_t)(r + n * page);
    arg->vec = (uintptr_t)vec;
    arg->vec_len = 4;
    arg->category_mask = PAGE_IS_WRITTEN;
    arg->return_mask = PAGE_IS_WRITTEN;
}

static void expect_errno(long got, int e1, int e2, const char *name)
{
    if (got == -e1 || (e2 && got == -e2)) {
        result(1, name);
    } else {
        if (got < 0)
            note("got %s, expected %s%s%s", strerror((int)-got), strerror(e1),
                 e2 ? " or " : "", e2 ? strerror(e2) : "");
        else
            note("call succeeded (%ld), expected %s", got, strerror(e1));
        result(0, name);
    }
}

static void t_validation(void)
{
    const long n = 4;
    struct page_region vec[4];
    struct pm_scan_arg arg;
    char *r = region_new(n);
    long rc;
    int i, ok;
    static const char *const names[] = {
        "category_inverted", "category_mask", "category_anyof_mask", "return_mask"};

    if (!r) {
        for (i = 0; i < 7; i++)
            result(0, "argument validation: no region");
        return;
    }
    touch(r, 0);   /* a written page: a scan that went ahead would report it */

    init_arg(&arg, r, n, vec);
    arg.size = sizeof(arg) - 8;
    expect_errno(scan_raw(&arg), EINVAL, 0, "size field smaller than the struct -> EINVAL");

    init_arg(&arg, r, n, vec);
    arg.size = sizeof(arg) + 8;
    expect_errno(scan_raw(&arg), EINVAL, 0, "size field larger than the struct -> EINVAL");

    init_arg(&arg, r, n, vec);
    arg.flags = (uint64_t)1 << 2;
    rc = scan_raw(&arg);
    init_arg(&arg, r, n, vec);
    arg.flags = (uint64_t)1 << 63 | PM_SCAN_WP_MATCHING;
    if (rc == -EINVAL)
        rc = scan_raw(&arg);
    expect_errno(rc, EINVAL, 0, "unknown flags -> EINVAL");

    /* An unknown category bit in any of the four masks. */
    ok = 1;
    for (i = 0; i < 4 && ok; i++) {
        init_arg(&arg, r, n, vec);
        __u64 *m = i == 0 ? &arg.category_inverted : i == 1 ? &arg.category_mask :
                      i == 2 ? &arg.category_anyof_mask : &arg.return_mask;
        *m |= (uint64_t)1 << 62;
        rc = scan_raw(&arg);
        if (rc != -EINVAL) {
            note("%s with bit 62: %s", names[i], rc < 0 ? strerror((int)-rc) : "accepted");
            ok = 0;
        }
    }
    result(ok, "unknown category bits in any mask -> EINVAL");

    init_arg(&arg, r, n, vec);
    arg.vec = 0;
    arg.vec_len = 4;
    rc = scan_raw(&arg);
    if (rc == -EINVAL || rc == -EFAULT)
        printf("# NULL vec with vec_len 4: %s\n", strerror((int)-rc));
    expect_errno(rc, EINVAL, EFAULT, "NULL vec with vec_len > 0 -> EINVAL/EFAULT");

    init_arg(&arg, r, n, vec);
    arg.start += 8;
    expect_errno(scan_raw(&arg), EINVAL, 0, "unaligned start -> EINVAL");

    /* After all that, the written page is still reported exactly once:
     * rejected calls changed nothing. */
    {
        unsigned char seen[4], expect[4] = {1, 0, 0, 0};
        ok = collect(r, n, 0, 4, 0, seen, NULL) == 0 && same(seen, expect, n);
        result(ok, "rejected calls leave the written state alone");
    }
    munmap(r, n * page);
}

/* A scan without PM_SCAN_WP_MATCHING only reads. */
static void t_get_idempotent(void)
{
    const long n = 32;
    unsigned char seen[32], expect[32] = {0};
    char *r = region_new(n);
    int ok = 0;
    static const int pages[] = {0, 3, 4, 5, 17, 31};

    if (r) {
        for (unsigned i = 0; i < sizeof(pages) / sizeof(pages[0]); i++) {
            touch(r, pages[i]);
            expect[pages[i]] = 1;
        }
        ok = collect(r, n, 0, 64, 0, seen, NULL) == 0 && same(seen, expect, n) &&
             collect(r, n, 0, 64, 0, seen, NULL) == 0 && same(seen, expect, n);
        munmap(r, n * page);
    }
    result(ok, "get without reset reports the same pages twice");
}

/* With PM_SCAN_WP_MATCHING the reported pages are re-armed in the same call:
 * reported once, not again, and a new write is reported again. */
static void t_get_and_reset(void)
{
    const long n = 32;
    unsigned char seen[32], expect[32] = {0}, none[32] = {0};
    char *r = region_new(n);
    int ok = 0;
    static const int pages[] = {0, 3, 4, 5, 9, 30, 31};

    if (r) {
        for (unsigned i = 0; i < sizeof(pages) / sizeof(pages[0]); i++) {
            touch(r, pages[i]);
            expect[pages[i]] = 1;
        }
        ok = collect(r, n, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, 64, 0, seen, NULL) == 0 &&
             same(seen, expect, n) &&
             collect(r, n, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, 64, 0, seen, NULL) == 0 &&
             same(seen, none, n);
        if (ok) {
            memset(expect, 0, sizeof(expect));
            touch(r, 4);
            touch(r, 10);
            expect[4] = expect[10] = 1;
            ok = collect(r, n, PM_SCAN_WP_MATCHING, 64, 0, seen, NULL) == 0 &&
                 same(seen, expect, n) && nothing_written(r, n);
        }
        munmap(r, n * page);
    }
    result(ok, "get-and-reset reports a written page once, then not again until rewritten");
}

/* max_pages: the scan stops after that many pages.  When the limit falls on
 * the end of a run, walk_end is the next written page (the first unreported
 * one); inside a run, it is the first page of the run not reported.  Pages
 * not reported are not reset. */
static void t_max_pages(void)
{
    const long n = 32;
    struct page_region vec[8];
    unsigned char seen[32], expect[32] = {0};
    uint64_t walk_end;
    char *r = region_new(n);
    long rc;
    int ok = 0;

    if (r) {
        /* runs [2,5) and [7,9) and [20,21) */
        static const int pages[] = {2, 3, 4, 7, 8, 20};
        for (unsigned i = 0; i < sizeof(pages) / sizeof(pages[0]); i++)
            touch(r, pages[i]);
        rc = scan(r, r + n * page, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                  vec, 8, 3, &walk_end);
        if (rc != 1 || vec[0].start != (uintptr_t)(r + 2 * page) ||
            vec[0].end != (uintptr_t)(r + 5 * page))
            note("max_pages=3: %ld regions, first [%#lx, %#lx)", rc,
                 (unsigned long)vec[0].start, (unsigned long)vec[0].end);
        else if (walk_end != (uintptr_t)(r + 7 * page))
            note("max_pages=3 at a run's end: walk_end is page %ld, expected 7",
                 (long)((walk_end - (uintptr_t)r) / page));
        else {
            expect[7] = expect[8] = expect[20] = 1;
            ok = collect(r, n, 0, 64, 0, seen, NULL) == 0 && same(seen, expect, n);
        }
    }
    result(ok, "max_pages ending on a run's end: walk_end at the next written page, rest not reset");

    ok = 0;
    if (r) {
        /* now runs [7,9) and [20,21) are written; limit 1 cuts [7,9) */
        rc = scan(r, r + n * page, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                  vec, 8, 1, &walk_end);
        if (rc != 1 || vec[0].start != (uintptr_t)(r + 7 * page) ||
            vec[0].end != (uintptr_t)(r + 8 * page))
            note("max_pages=1: %ld regions, first [%#lx, %#lx)", rc,
                 (unsigned long)vec[0].start, (unsigned long)vec[0].end);
        else if (walk_end != (uintptr_t)(r + 8 * page))
            note("max_pages=1 inside a run: walk_end is page %ld, expected 8",
                 (long)((walk_end - (uintptr_t)r) / page));
        else {
            memset(expect, 0, sizeof(expect));
            expect[8] = expect[20] = 1;
            ok = collect(r, n, 0, 64, 0, seen, NULL) == 0 && same(seen, expect, n);
        }
        munmap(r, n * page);
    }
    result(ok, "max_pages inside a run: walk_end at the first unreported page, rest not reset");
}

/* vec_len: a full vector stops the scan; walk_end is the first page not
 * stored, and nothing after it is reset. */
static void t_vec_len(void)
{
    const long n = 64;
    struct page_region vec[4];
    unsigned char seen[64], expect[64] = {0};
    uint64_t walk_end;
    char *r = region_new(n);
    long rc, i;
    int ok = 0;

    if (r) {
        for (i = 0; i < n; i += 2)
            touch(r, i);
        rc = scan(r, r + n * page, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                  vec, 4, 0, &walk_end);
        if (rc != 4)
            note("vec_len 4, 32 runs: returned %ld", rc);
        else if (walk_end != (uintptr_t)(r + 8 * page))
            note("walk_end is page %ld, expected 8", (long)((walk_end - (uintptr_t)r) / page));
        else {
            for (i = 8; i < n; i += 2)
                expect[i] = 1;
            ok = 1;
            for (i = 0; i < 4; i++)
                if (vec[i].start != (uintptr_t)(r + 2 * i * page) ||
                    vec[i].end != (uintptr_t)(r + (2 * i + 1) * page))
                    ok = 0, note("vec[%ld] wrong", i);
            ok = ok && collect(r, n, 0, 64, 0, seen, NULL) == 0 && same(seen, expect, n);
        }
        munmap(r, n * page);
    }
    result(ok, "full vec stops the scan: walk_end at the first page not stored, rest not reset");
}

static unsigned long long rng_state = 0x9e3779b97f4a7c15ull;
static unsigned rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned)(rng_state >> 11);
}

/* Many separate runs (far more than vec_len): resuming from walk_end loses
 * and duplicates nothing, with and without reset, and with max_pages. */
static void t_resume(void)
{
    const long n = 1024;
    static unsigned char seen[1024], expect[1024];
    char *r = region_new(n);
    long i, calls = 0, runs = 0;
    int ok;

    memset(expect, 0, sizeof(expect));
    if (r) {
        for (i = 0; i < n; i++)
            if (rnd() % 3 == 0) {
                touch(r, i);
                expect[i] = 1;
            }
        for (i = 0; i < n; i++)
            runs += expect[i] && (i == 0 || !expect[i - 1]);
    }
    ok = r && collect(r, n, PM_SCAN_CHECK_WPASYNC, 3, 0, seen, &calls) == 0 &&
         same(seen, expect, n);
    if (ok)
        printf("# %ld runs read with vec_len 3 in %ld calls\n", runs, calls);
    result(ok, "resume from walk_end (vec_len 3, hundreds of runs): exact, no duplicates");

    ok = r && collect(r, n, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, 3, 0, seen, NULL) == 0 &&
         same(seen, expect, n) && nothing_written(r, n);
    result(ok, "resume with reset (vec_len 3): exact, then nothing written");

    ok = 0;
    if (r) {
        memset(expect, 0, sizeof(expect));
        for (i = 0; i < n; i++)
            if (rnd() % 2 == 0) {
                touch(r, i);
                expect[i] = 1;
            }
        ok = collect(r, n, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, 64, 7, seen, &calls) == 0 &&
             same(seen, expect, n) && nothing_written(r, n);
        munmap(r, n * page);
    }
    result(ok, "resume with reset and max_pages 7: exact, then nothing written");
}

/* PM_SCAN_CHECK_WPASYNC turns an unwatched range into EPERM. */
static void t_check_wpasync(void)
{
    struct page_region vec[4];
    char *p = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    long rc;

    if (p == MAP_FAILED) {
        note("mmap: %s", strerror(errno));
        result(0, "CHECK_WPASYNC on an unregistered range -> EPERM");
        return;
    }
    p[0] = 1;
    rc = scan(p, p + 4 * page, PM_SCAN_CHECK_WPASYNC, vec, 4, 0, NULL);
    munmap(p, 4 * page);
    expect_errno(rc, EPERM, 0, "CHECK_WPASYNC on an unregistered range -> EPERM");
}

/* A write made by the kernel (read(2) into the region) is tracked. */
static void t_kernel_write(void)
{
    const long n = 8;
    unsigned char seen[8], expect[8] = {0};
    char *r = region_new(n);
    int fds[2], ok = 0;

    if (r && pipe(fds) == 0) {
        if (write(fds[1], "kernel", 6) == 6 && read(fds[0], r + 3 * page + 100, 6) == 6) {
            expect[3] = 1;
            ok = collect(r, n, PM_SCAN_WP_MATCHING, 64, 0, seen, NULL) == 0 &&
                 same(seen, expect, n);
        } else {
            note("pipe I/O: %s", strerror(errno));
        }
        close(fds[0]);
        close(fds[1]);
    }
    if (r)
        munmap(r, n * page);
    result(ok, "a kernel write (read(2) into the region) is reported");
}

/* mprotect round trips (to PROT_READ and PROT_NONE and back) keep both the
 * written state and the markers of clean pages. */
static void t_mprotect(void)
{
    const long n = 16;
    unsigned char seen[16], expect[16] = {0};
    char *r = region_new(n);
    int ok = 0;

    if (r) {
        touch(r, 1);
        touch(r, 2);
        collect(r, n, PM_SCAN_WP_MATCHING, 64, 0, seen, NULL);   /* 1, 2 clean again */
        touch(r, 2);
        touch(r, 5);
        if (mprotect(r, n * page, PROT_READ) || mprotect(r, n * page, PROT_READ | PROT_WRITE) ||
            mprotect(r + 4 * page, 8 * page, PROT_NONE) ||
            mprotect(r + 4 * page, 8 * page, PROT_READ | PROT_WRITE)) {
            note("mprotect: %s", strerror(errno));
        } else {
            expect[2] = expect[5] = 1;
            ok = collect(r, n, 0, 64, 0, seen, NULL) == 0 && same(seen, expect, n);
            if (ok) {
                /* clean pages, touched or never touched, still armed */
                touch(r, 1);
                touch(r, 9);
                expect[1] = expect[9] = 1;
                ok = collect(r, n, PM_SCAN_WP_MATCHING, 64, 0, seen, NULL) == 0 &&
                     same(seen, expect, n) && nothing_written(r, n);
            }
        }
        munmap(r, n * page);
    }
    result(ok, "mprotect round trips keep written and clean state");
}

/* MADV_DONTNEED zaps the pages and, on anonymous memory, their uffd-wp
 * markers: the scan then calls them written.  UFFDIO_WRITEPROTECT re-arms
 * them (writewatch's discard()).  A few pages in the middle of a region:
 * the page table itself stays (see kernel/README.md on PMD holes). */
static void t_dontneed(void)
{
    const long n = 16;
    unsigned char seen[16], expect[16] = {0};
    char *r = region_new(n);
    long i;
    int ok = 0, zero = 1;

    if (r) {
        for (i = 0; i < 8; i++)
            touch(r, i);
        collect(r, n, PM_SCAN_WP_MATCHING, 64, 0, seen, NULL);   /* all clean */
        if (madvise(r + 4 * page, 4 * page, MADV_DONTNEED)) {
            note("MADV_DONTNEED: %s", strerror(errno));
        } else {
            for (i = 4; i < 8; i++)
                zero &= *(volatile uint64_t *)(r + i * page) == 0;
            for (i = 4; i < 8; i++)
                expect[i] = 1;
            ok = zero && collect(r, n, 0, 64, 0, seen, NULL) == 0 && same(seen, expect, n);
            if (!zero)
                note("zapped pages do not read as zero");
        }
    }
    result(ok, "MADV_DONTNEED drops the markers: zapped pages reported written");

    ok = 0;
    if (r) {
        if (wp_range(r + 4 * page, 4 * page)) {
            note("UFFDIO_WRITEPROTECT: %s", strerror(errno));
        } else if (nothing_written(r, n)) {
            memset(expect, 0, sizeof(expect));
            touch(r, 5);
            expect[5] = 1;
            ok = collect(r, n, 0, 64, 0, seen, NULL) == 0 && same(seen, expect, n);
        }
        munmap(r, n * page);
    }
    result(ok, "UFFDIO_WRITEPROTECT after MADV_DONTNEED re-arms: clean, then a new write reported");
}

/* fork(): the parent's tracking stays exact (copy-on-write pages, never
 * touched pages); the child's writes are not reported in the parent; the
 * child can write its copy freely. */
static void t_fork(void)
{
    const long n = 16;
    unsigned char seen[16], expect[16] = {0};
    char *r = region_new(n);
    int to_child[2], to_parent[2], status = -1, ok = 0, child_ok = 0;
    pid_t pid;
    char c;

    if (!r || pipe(to_child) || pipe(to_parent)) {
        result(0, "fork: parent's tracking exact (COW and untouched pages), child's writes not reported");
        result(0, "fork: the child writes its copy freely");
        return;
    }
    touch(r, 0);
    touch(r, 1);
    collect(r, n, PM_SCAN_WP_MATCHING, 64, 0, seen, NULL);   /* 0, 1: present and armed */
    touch(r, 2);                                             /* 2: written before fork */
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        alarm(10);
        touch(r, 0);                /* COW copy of an armed page */
        touch(r, 2);
        touch(r, 3);                /* never touched */
        touch(r, 12);
        if (write(to_parent[1], "w", 1) != 1)
            _exit(2);
        if (read(to_child[0], &c, 1) != 1)  /* stay alive while the parent writes */
            _exit(3);
        _exit(*(volatile uint64_t *)(r + 0 * page) == 2 ? 0 : 4);
    }
    if (pid < 0) {
        note("fork: %s", strerror(errno));
    } else {
        if (read(to_parent[0], &c, 1) == 1) {
            touch(r, 1);            /* COW-shared with the live child, armed */
            touch(r, 7);            /* never touched: an unpopulated marker */
            expect[1] = expect[2] = expect[7] = 1;
            ok = collect(r, n, PM_SCAN_CHECK_WPASYNC, 64, 0, seen, NULL) == 0 &&
                 same(seen, expect, n);
        } else {
            note("child did not report its writes");
        }
        if (write(to_child[1], "x", 1) != 1)
            kill(pid, SIGKILL);
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        child_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (ok && collect(r, n, PM_SCAN_WP_MATCHING, 64, 0, seen, NULL) != 0)
            ok = 0;
    }
    result(ok, "fork: parent's tracking exact (COW and untouched pages), child's writes not reported");
    if (!child_ok && pid > 0)
        note("child status %#x", status);
    result(child_ok, "fork: the child writes its copy freely");
    close(to_child[0]); close(to_child[1]);
    close(to_parent[0]); close(to_parent[1]);
    munmap(r, n * page);
}

/* Writers increment per-page counters while the main thread gets-and-resets.
 * For each page, the counter value read just after the last scan that
 * reported the page must be its final value: a write after that scan's reset
 * would have to be reported by a later scan.  A lost write shows as a final
 * counter larger than the value last seen. */
#define MT_PAGES 64
#define MT_WRITERS 2
static char *mt_region;
static volatile int mt_stop;
static long mt_writes;          /* increments made by all writers */

/* With two CPUs or more, keep the writers off the checker's CPU so that
 * writes really race with the scans. */
static int mt_ncpu;
static void mt_pin(int writer)
{
    cpu_set_t set;

    if (mt_ncpu < 2)
        return;
    CPU_ZERO(&set);
    if (writer)
        for (int c = 1; c < mt_ncpu && c < CPU_SETSIZE; c++)
            CPU_SET(c, &set);
    else
        CPU_SET(0, &set);
    sched_setaffinity(0, sizeof(set), &set);    /* best effort */
}

static void *mt_writer(void *arg)
{
    unsigned long long s = 0x2545f4914f6cdd1dull * ((uintptr_t)arg + 1);
    long k = 0;

    mt_pin(1);

    while (!__atomic_load_n(&mt_stop, __ATOMIC_ACQUIRE)) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        touch(mt_region, (long)(s % MT_PAGES));
        k++;
    }
    __atomic_add_fetch(&mt_writes, k, __ATOMIC_RELAXED);
    return NULL;
}

static void t_threads(void)
{
    pthread_t th[MT_WRITERS];
    uint64_t last_seen[MT_PAGES] = {0};
    unsigned char seen[MT_PAGES];
    long i, rounds = 0, reported = 0, started = 0, elapsed = 0;
    cpu_set_t saved_cpus;
    int have_saved = 0;
    int ok = 1;
    struct timespec t0, t1;

    mt_region = region_new(MT_PAGES);
    if (!mt_region) {
        result(0, "threads: no write lost between concurrent writes and get-and-reset");
        return;
    }
    mt_stop = 0;
    mt_writes = 0;
    mt_ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (sched_getaffinity(0, sizeof(saved_cpus), &saved_cpus) == 0)
        have_saved = 1;
    mt_pin(0);
    for (i = 0; i < MT_WRITERS; i++)
        if (pthread_create(&th[i], NULL, mt_writer, (void *)(uintptr_t)i) == 0)
            started++;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        if (collect(mt_region, MT_PAGES, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                    8, 0, seen, NULL)) {
            ok = 0;
            break;
        }
        for (i = 0; i < MT_PAGES; i++)
            if (seen[i]) {
                last_seen[i] = __atomic_load_n((uint64_t *)(mt_region + i * page),
                                               __ATOMIC_ACQUIRE);
                reported++;
            }
        rounds++;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        elapsed = (t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec);
        /* at least 0.3 s, and until the writers have been seen at work
         * (page reports) often enough to mean something; at most 10 s
         * (on a loaded machine the threads may rarely run at once) */
    } while (elapsed < 300000000L || (reported < 5000 && elapsed < 10000000000L));
    __atomic_store_n(&mt_stop, 1, __ATOMIC_RELEASE);
    for (i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    if (have_saved)
        sched_setaffinity(0, sizeof(saved_cpus), &saved_cpus);
    /* the last writes, after the loop's last scan */
    if (ok && collect(mt_region, MT_PAGES, PM_SCAN_WP_MATCHING, 8, 0, seen, NULL) == 0) {
        for (i = 0; i < MT_PAGES; i++)
            if (seen[i])
                last_seen[i] = *(volatile uint64_t *)(mt_region + i * page);
        for (i = 0; i < MT_PAGES && ok; i++) {
            uint64_t final = *(volatile uint64_t *)(mt_region + i * page);
            if (final != last_seen[i]) {
                note("page %ld: final counter %llu, last reported at %llu: write lost",
                     i, (unsigned long long)final, (unsigned long long)last_seen[i]);
                ok = 0;
            }
        }
    } else {
        ok = 0;
    }
    if (started != MT_WRITERS) {
        note("pthread_create failed");
        ok = 0;
    }
    printf("# %ld get-and-reset rounds, %ld page reports, %ld writes by %d threads in %.2f s\n",
           rounds, reported, mt_writes, MT_WRITERS, elapsed / 1e9);
    munmap(mt_region, MT_PAGES * page);
    if (ok && reported < 200) {
        /* not a pass: the race was hardly exercised */
        char why[128];
        snprintf(why, sizeof(why), "inconclusive: only %ld page reports in %.1f s "
                 "(writers starved by load)", reported, elapsed / 1e9);
        skip("threads: no write lost between concurrent writes and get-and-reset", why);
        return;
    }
    result(ok, "threads: no write lost between concurrent writes and get-and-reset");
}

/* ---- main --------------------------------------------------------------- */

static const char *const check_names[] = {
    "fresh region: nothing written, walk_end == end",
    "reads are not writes",
    "size field smaller than the struct -> EINVAL",
    "size field larger than the struct -> EINVAL",
    "unknown flags -> EINVAL",
    "unknown category bits in any mask -> EINVAL",
    "NULL vec with vec_len > 0 -> EINVAL/EFAULT",
    "unaligned start -> EINVAL",
    "rejected calls leave the written state alone",
    "get without reset reports the same pages twice",
    "get-and-reset reports a written page once, then not again until rewritten",
    "max_pages ending on a run's end: walk_end at the next written page, rest not reset",
    "max_pages inside a run: walk_end at the first unreported page, rest not reset",
    "full vec stops the scan: walk_end at the first page not stored, rest not reset",
    "resume from walk_end (vec_len 3, hundreds of runs): exact, no duplicates",
    "resume with reset (vec_len 3): exact, then nothing written",
    "resume with reset and max_pages 7: exact, then nothing written",
    "CHECK_WPASYNC on an unregistered range -> EPERM",
    "a kernel write (read(2) into the region) is reported",
    "mprotect round trips keep written and clean state",
    "MADV_DONTNEED drops the markers: zapped pages reported written",
    "UFFDIO_WRITEPROTECT after MADV_DONTNEED re-arms: clean, then a new write reported",
    "fork: parent's tracking exact (COW and untouched pages), child's writes not reported",
    "fork: the child writes its copy freely",
    "threads: no write lost between concurrent writes and get-and-reset",
};
#define N_CHECKS ((int)(sizeof(check_names) / sizeof(check_names[0])))

/* Can this kernel run the contract at all?  Opens the descriptors; on
 * failure fills skip_all_reason. */
static int setup(void)
{
    struct uffdio_api api;
    struct page_region vec[1];
    char *p;
    long r;

    page = sysconf(_SC_PAGESIZE);
    pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pagemap_fd < 0) {
        snprintf(skip_all_reason, sizeof(skip_all_reason),
                 "open(/proc/self/pagemap): %s", strerror(errno));
        return 0;
    }
    uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (uffd < 0) {
        snprintf(skip_all_reason, sizeof(skip_all_reason),
                 "userfaultfd(UFFD_USER_MODE_ONLY): %s%s", strerror(errno),
                 errno == EINVAL ? " (UFFD_USER_MODE_ONLY needs Linux 5.11)" : "");
        return 0;
    }
    memset(&api, 0, sizeof(api));
    api.api = UFFD_API;
    api.features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
    if (ioctl(uffd, UFFDIO_API, &api)) {
        snprintf(skip_all_reason, sizeof(skip_all_reason),
                 "UFFDIO_API(WP_ASYNC|WP_UNPOPULATED): %s (Linux 6.7 needed)", strerror(errno));
        return 0;
    }
    p = region_new(1);
    if (!p) {
        snprintf(skip_all_reason, sizeof(skip_all_reason),
                 "cannot arm a region: %.200s", diag);
        diag[0] = 0;
        return 0;
    }
    r = scan(p, p + page, 0, vec, 1, 0, NULL);
    munmap(p, page);
    if (r == -ENOTTY || r == -EINVAL) {
        snprintf(skip_all_reason, sizeof(skip_all_reason),
                 "PAGEMAP_SCAN not supported: %s (Linux 6.7 needed)", strerror((int)-r));
        return 0;
    }
    /* Any other error is not "missing": the checks will fail and say why. */
    return 1;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("TAP version 13\n");
    printf("1..%d\n", N_CHECKS);
    if (!setup()) {
        printf("# %s\n", skip_all_reason);
        for (int i = 0; i < N_CHECKS; i++)
            skip(check_names[i], skip_all_reason);
        printf("# Totals: pass:0 fail:0 xfail:0 xpass:0 skip:%d error:0\n", n_skip);
        return KSFT_SKIP;
    }

    t_fresh();
    t_read_not_write();
    t_validation();
    t_get_idempotent();
    t_get_and_reset();
    t_max_pages();
    t_vec_len();
    t_resume();
    t_check_wpasync();
    t_kernel_write();
    t_mprotect();
    t_dontneed();
    t_fork();
    t_threads();

    if (n_done != N_CHECKS) {
        printf("# planned %d checks, ran %d\n", N_CHECKS, n_done);
        n_fail++;
    }
    /* Regions are unmapped before the userfaultfd is closed (see
     * kernel/README.md, CVE-2024-36881). */
    close(uffd);
    close(pagemap_fd);
    printf("# Totals: pass:%d fail:%d xfail:0 xpass:0 skip:%d error:0\n",
           n_pass, n_fail, n_skip);
    return n_fail ? KSFT_FAIL : KSFT_PASS;
}
