/*
 * floor.c - the raw-C floor for writewatch's benchmarks.
 *
 * The same workloads `writewatch bench` runs through the Python library,
 * done straight on the kernel: no Python, no Region, no result array
 * allocated per call.  What the library costs on top of the kernel is the
 * difference between its numbers and these.
 *
 *   ww-floor [--budget-ms N] [--min-reps N] [--max-reps N] WORKLOAD...
 *
 *   frame:SIZE:K[,K...]  pre-populated region of SIZE bytes; each frame writes
 *                        K distinct random pages (chosen before the timer
 *                        starts), then one PAGEMAP_SCAN get-and-reset whose
 *                        output is expanded into a uint64 address array --
 *                        what Region.get_write_watch(reset=True) does.  With
 *                        several K, one region runs them in turn.
 *   clean:SIZE           get-and-reset of a region where nothing was written.
 *   sparse:SIZE          get-and-reset of a pre-populated region with every
 *                        other page written (writes outside the timer).
 *   limit:SIZE:COUNT     one PAGEMAP_SCAN with max_pages=COUNT, no reset, on
 *                        a region whose first COUNT pages are written: shows
 *                        how far the kernel walks past the last match.
 *   fault:TECH:PAGES     cost of the first write to each of PAGES pages after
 *                        a reset, ascending, for TECH = uffd-async (async
 *                        uffd-wp, what `pagemap` uses), uffd-sync (a handler
 *                        thread round trip, what `uffd` uses), mprotect
 *                        (SIGSEGV + mprotect, what `mprotect` uses) or none
 *                        (a write to an already writable page: the loop).
 *
 * SIZE takes a K, M or G suffix (KiB, MiB, GiB).  Each workload repeats until
 * --budget-ms has passed (at least --min-reps, at most --max-reps times) and
 * prints one JSON line: {"workload": ..., "unit": "frame"|"call"|"page",
 * "n": repeats, "median_ns": ..., "min_ns": ..., ...}.  A workload the kernel
 * cannot run prints {"workload": ..., "skip": reason}; a failure prints
 * {"workload": ..., "error": ...} and makes the exit status 1.
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "../writewatch_abi.h"

#ifndef MADV_NOHUGEPAGE
#define MADV_NOHUGEPAGE 15
#endif

#define SCAN_VEC_LEN 256        /* the library's vec length (_pagemap.pxi) */

static size_t page_size;
static int pagemap_fd = -1;
static double budget_ns = 200e6;
static long min_reps = 3, max_reps = 100000;
static int failed;
static char error_buf[512];

/* ---- small helpers ------------------------------------------------------ */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t splitmix64(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

/* Sorts `t` in place; returns its median. */
static double median(uint64_t *t, long n)
{
    qsort(t, n, sizeof *t, cmp_u64);
    return n % 2 ? (double)t[n / 2] : ((double)t[n / 2 - 1] + t[n / 2]) / 2;
}

static int fail(const char *call)
{
    snprintf(error_buf, sizeof error_buf, "%s: %s", call, strerror(errno));
    return -1;
}

static void print_error(const char *spec)
{
    printf("{\"workload\": \"%s\", \"error\": \"%s\"}\n", spec, error_buf);
    fflush(stdout);
    failed = 1;
}

static void print_skip(const char *spec, const char *why)
{
    printf("{\"workload\": \"%s\", \"skip\": \"%s\"}\n", spec, why);
    fflush(stdout);
}

/* Times are per `per` units: median and minimum over the repeats. */
static void print_result(const char *fields, const char *unit, uint64_t *t, long n,
                         double per)
{
    double med = median(t, n);
    printf("{%s, \"unit\": \"%s\", \"n\": %ld, \"median_ns\": %.3f, \"min_ns\": %.3f}\n",
           fields, unit, n, med / per, (double)t[0] / per);
    fflush(stdout);
}

static int keep_going(long reps, uint64_t started)
{
    if (reps < min_reps)
        return 1;
    if (reps >= max_reps)
        return 0;
    return (double)(now_ns() - started) < budget_ns;
}

static size_t parse_size(const char *s)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    switch (*end) {
    case 'K': case 'k': v <<= 10; end++; break;
    case 'M': case 'm': v <<= 20; end++; break;
    case 'G': case 'g': v <<= 30; end++; break;
    }
    if (*end != '\0' && *end != ':')
        return 0;
    return (size_t)v;
}

/* ---- an async uffd-wp region, as the pagemap backend makes it ------------ */

struct region {
    char *base;
    size_t size;
    int uffd;
};

static int uffd_open(uint64_t features, int nonblock)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | (nonblock ? O_NONBLOCK : 0) |
                          UFFD_USER_MODE_ONLY);
    if (fd < 0)
        return fail("userfaultfd(UFFD_USER_MODE_ONLY)");
    struct uffdio_api api = { .api = UFFD_API, .features = features };
    if (ioctl(fd, UFFDIO_API, &api) < 0) {
        fail("ioctl(UFFDIO_API)");
        close(fd);
        return -1;
    }
    return fd;
}

static int uffd_wp(int uffd, char *start, size_t len, int protect)
{
    struct uffdio_writeprotect wp = {
        .range = { .start = (uintptr_t)start, .len = len },
        .mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
    };
    if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) < 0)
        return fail("ioctl(UFFDIO_WRITEPROTECT)");
    return 0;
}

static int uffd_register_wp(int uffd, char *base, size_t size)
{
    struct uffdio_register reg = {
        .range = { .start = (uintptr_t)base, .len = size },
        .mode = UFFDIO_REGISTER_MODE_WP,
    };
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
        return fail("ioctl(UFFDIO_REGISTER)");
    return 0;
}

static int map_region(struct region *r, size_t size)
{
    r->size = size;
    r->uffd = -1;
    r->base = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r->base == MAP_FAILED)
        return fail("mmap");
    madvise(r->base, size, MADV_NOHUGEPAGE);
    return 0;
}

static void unmap_region(struct region *r)
{
    if (r->base && r->base != MAP_FAILED)
        munmap(r->base, r->size);
    if (r->uffd >= 0)
        close(r->uffd);
    r->base = NULL;
    r->uffd = -1;
}

/* Map and arm exactly as Region(size, backend="pagemap") does. */
static int async_region(struct region *r, size_t size)
{
    if (map_region(r, size) < 0)
        return -1;
    r->uffd = uffd_open(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, 1);
    if (r->uffd < 0 || uffd_register_wp(r->uffd, r->base, size) < 0 ||
        uffd_wp(r->uffd, r->base, size, 1) < 0) {
        unmap_region(r);
        return -1;
    }
    return 0;
}

static void touch_pages(char *base, size_t size, size_t stride, char v)
{
    for (size_t off = 0; off < size; off += stride)
        ((volatile char *)base)[off] = v;
}

/* One get (and reset) over [start, end), the library's collect() loop:
 * vec of SCAN_VEC_LEN regions, resumed at walk_end, each region expanded
 * into page addresses in `out` (room for `limit`).  Returns the count. */
static long scan(uintptr_t start, uintptr_t end, int reset, uint64_t *out, size_t limit)
{
    struct page_region vec[SCAN_VEC_LEN];
    struct pm_scan_arg arg;
    size_t n = 0;
    memset(&arg, 0, sizeof arg);
    arg.size = sizeof arg;
    arg.flags = (reset ? PM_SCAN_WP_MATCHING : 0) | PM_SCAN_CHECK_WPASYNC;
    arg.vec = (uintptr_t)vec;
    arg.vec_len = SCAN_VEC_LEN;
    arg.category_mask = PAGE_IS_WRITTEN;
    arg.return_mask = PAGE_IS_WRITTEN;
    uintptr_t pos = start;
    while (pos < end && n < limit) {
        arg.start = pos;
        arg.end = end;
        arg.max_pages = limit - n;
        long r = ioctl(pagemap_fd, PAGEMAP_SCAN, &arg);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return fail("ioctl(PAGEMAP_SCAN)");
        }
        for (long i = 0; i < r; i++)
            for (uint64_t a = vec[i].start; a < vec[i].end && n < limit; a += page_size)
                out[n++] = a;
        if (arg.walk_end <= pos) {
            errno = EIO;
            return fail("ioctl(PAGEMAP_SCAN) made no progress");
        }
        pos = arg.walk_end;
    }
    return (long)n;
}

/* ---- workloads ---------------------------------------------------------- */

/* One region of `size` bytes, populated once, then the frame loop for each
 * K in the comma-separated list `ks` in turn (one result line each). */
static int run_frame(const char *spec, size_t size, const char *ks)
{
    struct region r;
    size_t npages = size / page_size;
    size_t klist[16], nk = 0, kmax = 0;
    for (const char *p = ks; *p && nk < 16; ) {
        char *end;
        klist[nk] = strtoul(p, &end, 10);
        if (end == p || (*end && *end != ',') || klist[nk] == 0 || klist[nk] > npages) {
            errno = EINVAL;
            return fail("frame: each K must be between 1 and the region's page count");
        }
        if (klist[nk] > kmax)
            kmax = klist[nk];
        nk++;
        p = *end ? end + 1 : end;
    }
    if (nk == 0) {
        errno = EINVAL;
        return fail("frame: K missing");
    }
    if (async_region(&r, size) < 0)
        return -1;
    uint32_t *perm = malloc(npages * sizeof *perm);
    uint64_t *out = malloc(npages * sizeof *out);
    size_t *offs = malloc(kmax * sizeof *offs);
    uint64_t *t = malloc(max_reps * sizeof *t);
    int rc = -1;
    if (!perm || !out || !offs || !t) {
        fail("malloc");
        goto done;
    }
    for (size_t i = 0; i < npages; i++)
        perm[i] = (uint32_t)i;
    touch_pages(r.base, size, page_size, 1);                 /* pre-populate */
    if (scan((uintptr_t)r.base, (uintptr_t)r.base + size, 1, out, npages) < 0)
        goto done;
    char v = 2;
    for (size_t ki = 0; ki < nk; ki++) {
        size_t k = klist[ki];
        long reps = 0;
        uint64_t started = now_ns();
        while (keep_going(reps, started)) {
            /* K distinct random pages: a partial Fisher-Yates shuffle. */
            for (size_t i = 0; i < k; i++) {
                size_t j = i + splitmix64() % (npages - i);
                uint32_t x = perm[i];
                perm[i] = perm[j];
                perm[j] = x;
                offs[i] = (size_t)perm[i] * page_size;
            }
            v++;
            uint64_t t0 = now_ns();
            for (size_t i = 0; i < k; i++)
                ((volatile char *)r.base)[offs[i]] = v;
            long got = scan((uintptr_t)r.base, (uintptr_t)r.base + size, 1, out, npages);
            uint64_t t1 = now_ns();
            if (got < 0)
                goto done;
            if ((size_t)got != k) {
                snprintf(error_buf, sizeof error_buf,
                         "frame: wrote %zu pages, PAGEMAP_SCAN reported %ld", k, got);
                goto done;
            }
            qsort(offs, k, sizeof *offs, cmp_size);         /* the same pages? */
            for (size_t i = 0; i < k; i++)
                if (out[i] != (uintptr_t)r.base + offs[i]) {
                    snprintf(error_buf, sizeof error_buf,
                             "frame: page %#zx written, PAGEMAP_SCAN reported %#llx",
                             offs[i], (unsigned long long)(out[i] - (uintptr_t)r.base));
                    goto done;
                }
            t[reps++] = t1 - t0;
        }
        char fields[256];
        snprintf(fields, sizeof fields,
                 "\"workload\": \"frame\", \"size\": %zu, \"written\": %zu", size, k);
        print_result(fields, "frame", t, reps, 1);
    }
    rc = 0;
done:
    free(perm);
    free(out);
    free(offs);
    free(t);
    unmap_region(&r);
    (void)spec;
    return rc;
}

/* clean (populate=0, stride=0), sparse (populate=1, stride=2 pages). */
static int run_scan(const char *name, size_t size, int sparse)
{
    struct region r;
    size_t npages = size / page_size;
    if (async_region(&r, size) < 0)
        return -1;
    uint64_t *out = malloc((sparse ? npages : 1) * sizeof *out);
    uint64_t *t = malloc(max_reps * sizeof *t);
    int rc = -1;
    if (!out || !t) {
        fail("malloc");
        goto done;
    }
    if (sparse) {
        touch_pages(r.base, size, page_size, 1);
        if (scan((uintptr_t)r.base, (uintptr_t)r.base + size, 1, out, npages) < 0)
            goto done;
    }
    size_t expect = sparse ? (npages + 1) / 2 : 0;
    long reps = 0;
    uint64_t started = now_ns();
    while (keep_going(reps, started)) {
        if (sparse)
            touch_pages(r.base, size, 2 * page_size, (char)reps);
        uint64_t t0 = now_ns();
        /* A clean scan finds nothing; the limit only matters as max_pages,
         * which the kernel ignores until something matches. */
        long got = scan((uintptr_t)r.base, (uintptr_t)r.base + size, 1, out,
                        sparse ? npages : 1);
        uint64_t t1 = now_ns();
        if (got < 0)
            goto done;
        if ((size_t)got != expect) {
            snprintf(error_buf, sizeof error_buf,
                     "%s: expected %zu pages, PAGEMAP_SCAN reported %ld", name, expect, got);
            goto done;
        }
        t[reps++] = t1 - t0;
    }
    char fields[256];
    snprintf(fields, sizeof fields, "\"workload\": \"%s\", \"size\": %zu, \"written\": %zu",
             name, size, expect);
    print_result(fields, "call", t, reps, 1);
    rc = 0;
done:
    free(out);
    free(t);
    unmap_region(&r);
    return rc;
}

static int run_limit(size_t size, size_t count)
{
    struct region r;
    if (count == 0 || count > size / page_size) {
        errno = EINVAL;
        return fail("limit: COUNT must be between 1 and the region's page count");
    }
    if (async_region(&r, size) < 0)
        return -1;
    uint64_t *out = malloc(count * sizeof *out);
    uint64_t *t = malloc(max_reps * sizeof *t);
    int rc = -1;
    if (!out || !t) {
        fail("malloc");
        goto done;
    }
    touch_pages(r.base, count * page_size, page_size, 1);
    long reps = 0;
    uint64_t started = now_ns();
    while (keep_going(reps, started)) {
        uint64_t t0 = now_ns();
        long got = scan((uintptr_t)r.base, (uintptr_t)r.base + size, 0, out, count);
        uint64_t t1 = now_ns();
        if (got < 0)
            goto done;
        if ((size_t)got != count) {
            snprintf(error_buf, sizeof error_buf,
                     "limit: expected %zu pages, PAGEMAP_SCAN reported %ld", count, got);
            goto done;
        }
        t[reps++] = t1 - t0;
    }
    char fields[256];
    snprintf(fields, sizeof fields,
             "\"workload\": \"limit\", \"size\": %zu, \"max_count\": %zu", size, count);
    print_result(fields, "call", t, reps, 1);
    rc = 0;
done:
    free(out);
    free(t);
    unmap_region(&r);
    return rc;
}

/* -- first-write fault techniques -- */

static char *seg_base;
static size_t seg_size;
static volatile long seg_faults;
static struct sigaction seg_old;

static void on_segv(int sig, siginfo_t *si, void *ctx)
{
    uintptr_t a = (uintptr_t)si->si_addr;
    (void)ctx;
    if (a >= (uintptr_t)seg_base && a < (uintptr_t)seg_base + seg_size) {
        a &= ~(uintptr_t)(page_size - 1);
        if (mprotect((void *)a, page_size, PROT_READ | PROT_WRITE) == 0) {
            seg_faults++;
            return;
        }
    }
    sigaction(sig, &seg_old, NULL);     /* a real crash: let it crash */
}

struct sync_handler {
    int uffd;
    int stop_pipe[2];
    long faults;
    int error;
};

static void *sync_thread(void *p)
{
    struct sync_handler *h = p;
    struct pollfd fds[2] = { { h->uffd, POLLIN, 0 }, { h->stop_pipe[0], POLLIN, 0 } };
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            h->error = errno;
            return NULL;
        }
        if (fds[1].revents)
            return NULL;
        struct uffd_msg msg;
        ssize_t n = read(h->uffd, &msg, sizeof msg);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            h->error = errno;
            return NULL;
        }
        if (n != sizeof msg || msg.event != UFFD_EVENT_PAGEFAULT)
            continue;
        uintptr_t a = msg.arg.pagefault.address & ~(uint64_t)(page_size - 1);
        struct uffdio_writeprotect wp = {
            .range = { .start = a, .len = page_size }, .mode = 0,   /* unprotect + wake */
        };
        if (ioctl(h->uffd, UFFDIO_WRITEPROTECT, &wp) < 0) {
            h->error = errno;
            return NULL;
        }
        h->faults++;
    }
}

static int run_fault(const char *spec, const char *tech, size_t npages)
{
    struct region r;
    size_t size = npages * page_size;
    uint64_t *t = malloc(max_reps * sizeof *t);
    uint64_t *out = malloc(npages * sizeof *out);
    struct sync_handler h = { .uffd = -1, .stop_pipe = { -1, -1 } };
    pthread_t thread;
    int have_thread = 0, have_segv = 0, rc = -1;
    int kind = !strcmp(tech, "uffd-async") ? 0 : !strcmp(tech, "uffd-sync") ? 1
             : !strcmp(tech, "mprotect") ? 2 : !strcmp(tech, "none") ? 3 : -1;
    r.base = NULL;
    r.uffd = -1;
    if (!t || !out) {
        fail("malloc");
        goto done;
    }
    if (kind < 0) {
        errno = EINVAL;
        fail("fault: TECH must be uffd-async, uffd-sync, mprotect or none");
        goto done;
    }
    if (kind == 0) {
        if (async_region(&r, size) < 0)
            goto done;
    } else {
        if (map_region(&r, size) < 0)
            goto done;
    }
    touch_pages(r.base, size, page_size, 1);       /* populated, as after a frame */
    if (kind == 1) {
        r.uffd = uffd_open(0, 1);
        if (r.uffd < 0 || uffd_register_wp(r.uffd, r.base, size) < 0)
            goto done;
        h.uffd = r.uffd;
        if (pipe(h.stop_pipe) < 0) {
            fail("pipe");
            goto done;
        }
        if ((errno = pthread_create(&thread, NULL, sync_thread, &h)) != 0) {
            fail("pthread_create");
            goto done;
        }
        have_thread = 1;
    } else if (kind == 2) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_segv;
        sa.sa_flags = SA_SIGINFO | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        seg_base = r.base;
        seg_size = size;
        if (sigaction(SIGSEGV, &sa, &seg_old) < 0) {
            fail("sigaction(SIGSEGV)");
            goto done;
        }
        have_segv = 1;
    }
    long reps = 0;
    uint64_t started = now_ns();
    while (keep_going(reps, started)) {
        /* Reset (outside the timer): every page armed again. */
        if (kind == 0) {
            if (scan((uintptr_t)r.base, (uintptr_t)r.base + size, 1, out, npages) < 0)
                goto done;
        } else if (kind == 1) {
            if (uffd_wp(r.uffd, r.base, size, 1) < 0)
                goto done;
        } else if (kind == 2) {
            if (mprotect(r.base, size, PROT_READ) < 0) {
                fail("mprotect");
                goto done;
            }
        }
        char v = (char)(reps + 2);
        uint64_t t0 = now_ns();
        touch_pages(r.base, size, page_size, v);
        uint64_t t1 = now_ns();
        t[reps++] = t1 - t0;
    }
    if (kind == 1 && h.error) {
        errno = h.error;
        fail("uffd handler thread");
        goto done;
    }
    if (kind == 1 && h.faults < (long)npages) {
        snprintf(error_buf, sizeof error_buf, "uffd-sync: %ld faults for %zu pages",
                 h.faults, npages);
        goto done;
    }
    if (kind == 2 && seg_faults < (long)npages) {
        snprintf(error_buf, sizeof error_buf, "mprotect: %ld faults for %zu pages",
                 (long)seg_faults, npages);
        goto done;
    }
    char fields[256];
    snprintf(fields, sizeof fields, "\"workload\": \"fault\", \"tech\": \"%s\", \"pages\": %zu",
             tech, npages);
    print_result(fields, "page", t, reps, (double)npages);
    rc = 0;
done:
    if (have_thread) {
        if (write(h.stop_pipe[1], "x", 1) < 0) { /* the thread still ends on close */ }
        pthread_join(thread, NULL);
    }
    if (h.stop_pipe[0] >= 0) {
        close(h.stop_pipe[0]);
        close(h.stop_pipe[1]);
    }
    if (have_segv)
        sigaction(SIGSEGV, &seg_old, NULL);
    seg_faults = 0;
    unmap_region(&r);
    free(t);
    free(out);
    (void)spec;
    return rc;
}

/* ---- main --------------------------------------------------------------- */

static int probe_async(char *why, size_t n)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (fd < 0) {
        snprintf(why, n, "userfaultfd: %s", strerror(errno));
        return 0;
    }
    struct uffdio_api api = { .api = UFFD_API, .features = 0 };
    int ok = ioctl(fd, UFFDIO_API, &api) == 0;
    close(fd);
    if (!ok) {
        snprintf(why, n, "ioctl(UFFDIO_API): %s", strerror(errno));
        return 0;
    }
    uint64_t need = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
    if ((api.features & need) != need) {
        snprintf(why, n, "userfaultfd lacks WP_ASYNC/WP_UNPOPULATED (Linux >= 6.7 needed)");
        return 0;
    }
    return 1;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: ww-floor [--budget-ms N] [--min-reps N] [--max-reps N] WORKLOAD...\n"
            "  frame:SIZE:K[,K...]  clean:SIZE  sparse:SIZE  limit:SIZE:COUNT  fault:TECH:PAGES\n"
            "  TECH: uffd-async uffd-sync mprotect none; SIZE with K/M/G suffix\n");
}

int main(int argc, char **argv)
{
    page_size = (size_t)sysconf(_SC_PAGESIZE);
    int i = 1;
    for (; i < argc && !strncmp(argv[i], "--", 2); i++) {
        if (!strcmp(argv[i], "--budget-ms") && i + 1 < argc)
            budget_ns = atof(argv[++i]) * 1e6;
        else if (!strcmp(argv[i], "--min-reps") && i + 1 < argc)
            min_reps = atol(argv[++i]);
        else if (!strcmp(argv[i], "--max-reps") && i + 1 < argc)
            max_reps = atol(argv[++i]);
        else {
            usage();
            return 2;
        }
    }
    if (i == argc || min_reps < 1 || max_reps < min_reps) {
        usage();
        return 2;
    }
    char why[256];
    int async_ok = probe_async(why, sizeof why);
    pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pagemap_fd < 0 && async_ok) {
        snprintf(why, sizeof why, "open(/proc/self/pagemap): %s", strerror(errno));
        async_ok = 0;
    }
    for (; i < argc; i++) {
        const char *spec = argv[i];
        char kind[16] = "", tech[16] = "";
        const char *c1 = strchr(spec, ':');
        if (!c1 || c1 - spec >= (long)sizeof kind) {
            usage();
            return 2;
        }
        memcpy(kind, spec, c1 - spec);
        const char *c2 = strchr(c1 + 1, ':');
        size_t a = parse_size(c1 + 1), b = c2 ? parse_size(c2 + 1) : 0;
        int rc;
        error_buf[0] = '\0';
        if (!strcmp(kind, "fault")) {
            if (!c2 || c2 - c1 - 1 >= (long)sizeof tech) {
                usage();
                return 2;
            }
            memcpy(tech, c1 + 1, c2 - c1 - 1);
            b = strtoul(c2 + 1, NULL, 10);
            if (!strcmp(tech, "uffd-async") && !async_ok) {
                print_skip(spec, why);
                continue;
            }
            rc = run_fault(spec, tech, b);
        } else {
            if (a == 0 || a % page_size) {
                fprintf(stderr, "ww-floor: %s: SIZE must be a positive multiple of %zu\n",
                        spec, page_size);
                return 2;
            }
            if (!async_ok) {
                print_skip(spec, why);
                continue;
            }
            if (!strcmp(kind, "frame") && c2)
                rc = run_frame(spec, a, c2 + 1);
            else if (!strcmp(kind, "clean"))
                rc = run_scan("clean", a, 0);
            else if (!strcmp(kind, "sparse"))
                rc = run_scan("sparse", a, 1);
            else if (!strcmp(kind, "limit") && c2)
                rc = run_limit(a, strtoul(c2 + 1, NULL, 10));
            else {
                usage();
                return 2;
            }
        }
        if (rc < 0)
            print_error(spec);
    }
    return failed;
}
