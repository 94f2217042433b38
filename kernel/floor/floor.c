/*
 * floor.c - the raw-C floor for writewatch's benchmarks.
 *
 * The same workloads `writewatch bench` runs through the Python library,
 * done straight on the kernel: no Python, no Region, no result array
 * allocated per call.  What the library costs on top of the kernel is the
 * difference between its numbers and these.
 *
 *   ww-floor [--budget-ms N] [--min-reps N] [--max-reps N] [--dir DIR] WORKLOAD...
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
 * The scale patterns (one run each repeats until the budget is spent):
 *
 *   wine:THREADS:PAGES:DELAY_US:WRITES
 *                        Wine's write-watch microbenchmark: THREADS pthreads
 *                        make WRITES random writes each to a PAGES-page
 *                        region while this thread makes a get-and-reset of it
 *                        every DELAY_US.  Two lines: time per write (the
 *                        run's wall time times the CPUs the writers can use,
 *                        divided by the writes) and time per get-and-reset.
 *   gc:SIZE:K:BATCH      the .NET GC's pattern: K random pages of SIZE
 *                        written (outside the timer), then get without reset
 *                        in calls of at most BATCH addresses, each resuming
 *                        after the last address returned, then one reset of
 *                        the whole region.  Time per round.
 *   reserve:SIZE:COMMIT:K  a PROT_NONE reservation of SIZE, COMMIT bytes of
 *                        it committed and armed (mprotect, UFFDIO_REGISTER,
 *                        UFFDIO_WRITEPROTECT), K of its pages written, a scan
 *                        of the committed range, munmap: time and VmPTE for
 *                        each step.
 *   regions:COUNT:SIZE   COUNT regions of SIZE bytes mapped one after another
 *                        and sharing one userfaultfd, one page written in
 *                        each, get-and-reset of all: one scan per region, and
 *                        one scan per run of adjacent regions.  Time per
 *                        region, and what making and unmapping one costs.
 *
 * Snapshots and DeltaLog (issue 12; see their section below):
 *
 *   snap:TECH:SIZE:K:KEEP  a SIZE region, every page written once, tracked
 *                        with TECH (uffd-async, uffd-sync or mprotect); K
 *                        random pages written per frame.  Two results: save
 *                        (a get-and-reset and a copy of the K pages into one
 *                        of KEEP save areas) and restore (back KEEP - 1
 *                        frames: the pages changed since copied back, one
 *                        get-and-reset).
 *   copy:SIZE            memcpy of a whole SIZE region.
 *   append:SIZE:K        K random pages of a SIZE region appended to a file
 *                        in --dir as one record: get-and-reset, pwritev from
 *                        the region, fdatasync ("writev"); and write(2) of the
 *                        same bytes gathered before the clock, fsync
 *                        ("write"); in turn, frame by frame.  The file is left
 *                        in --dir for its owner to remove (without --dir it is
 *                        made in $TMPDIR or /tmp and removed).
 *
 * SIZE takes a K, M or G suffix (KiB, MiB, GiB).  Each workload repeats until
 * --budget-ms has passed (at least --min-reps, at most --max-reps times) and
 * prints one JSON line per result: {"workload": ..., "unit": "frame"|"call"|
 * "page"|..., "n": repeats, "median_ns": ..., "min_ns": ..., ...}.  A workload
 * the kernel cannot run prints {"workload": ..., "skip": reason}; a failure
 * prints {"workload": ..., "error": ...} and makes the exit status 1.
 *
 * Built with -DWW_FLOOR_LIBRARY (setup.py makes writewatch/_bin/libwwfloor.so)
 * there is no main(): the scale patterns' and issue 12's functions are the
 * library's API.
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "../writewatch_abi.h"

#ifndef MADV_NOHUGEPAGE
#define MADV_NOHUGEPAGE 15
#endif

#define SCAN_VEC_LEN 256        /* the library's vec length (_pagemap.pxi) */

static size_t page_size;
static int pagemap_fd = -1;
static char error_buf[512];

/* ---- small helpers ------------------------------------------------------ */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t splitmix64_r(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int fail(const char *call)
{
    snprintf(error_buf, sizeof error_buf, "%s: %s", call, strerror(errno));
    return -1;
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

/* Can this kernel do async uffd-wp?  If not, `why` says why. */
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


/* ---- the scale patterns (issue 10) ---------------------------------------
 *
 * Four patterns of programs that use write watches at scale.  These
 * functions are exported: the drivers further down time them for
 * `writewatch bench`, and libwwfloor.so (this file built with
 * -DWW_FLOOR_LIBRARY) offers them to the pytest-benchmark suite through
 * ctypes (writewatch/_bench/floor.py).  Each returns 0 (or a count) on
 * success and -1 with the reason in ww_floor_error().  Set-up -- mapping,
 * arming, choosing and writing pages -- stays out of the calls that are
 * timed; answers are checked against what was written, after the clock.
 */

const char *ww_floor_error(void)
{
    return error_buf;
}

/* The CPUs this process may run on. */
int ww_floor_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* Page size, /proc/self/pagemap and the async uffd-wp probe, once.  -1 when
 * the kernel cannot run the patterns (why: ww_floor_error()). */
int ww_floor_init(void)
{
    static int state;                   /* 0 not yet, 1 usable, -1 not */
    static char why[256];
    if (state) {
        if (state < 0)
            snprintf(error_buf, sizeof error_buf, "%s", why);
        return state > 0 ? 0 : -1;
    }
    page_size = (size_t)sysconf(_SC_PAGESIZE);
    state = -1;
    if (!probe_async(why, sizeof why))
        return ww_floor_init();
    if (pagemap_fd < 0)
        pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pagemap_fd < 0) {
        snprintf(why, sizeof why, "open(/proc/self/pagemap): %s", strerror(errno));
        return ww_floor_init();
    }
    state = 1;
    return 0;
}

/* This process's page tables (VmPTE), in bytes; -1 if unreadable. */
long long ww_floor_vmpte(void)
{
    FILE *f = fopen("/proc/self/status", "re");
    char line[256];
    long long kb = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmPTE:", 6)) {
            kb = strtoll(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

/* Re-arm every written page of [start, end) without reporting: what
 * Region.reset_write_watch does (a scan that write-protects what it
 * matches; the vec is never NULL, see kernel/README.md). */
static int reset_range(uintptr_t start, uintptr_t end)
{
    struct page_region vec[SCAN_VEC_LEN];
    struct pm_scan_arg arg;
    memset(&arg, 0, sizeof arg);
    arg.size = sizeof arg;
    arg.flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC;
    arg.vec = (uintptr_t)vec;
    arg.vec_len = SCAN_VEC_LEN;
    arg.category_mask = PAGE_IS_WRITTEN;
    arg.return_mask = PAGE_IS_WRITTEN;
    uintptr_t pos = start;
    while (pos < end) {
        arg.start = pos;
        arg.end = end;
        if (ioctl(pagemap_fd, PAGEMAP_SCAN, &arg) < 0) {
            if (errno == EINTR)
                continue;
            return fail("ioctl(PAGEMAP_SCAN)");
        }
        if (arg.walk_end <= pos) {
            errno = EIO;
            return fail("ioctl(PAGEMAP_SCAN) made no progress");
        }
        pos = arg.walk_end;
    }
    return 0;
}

/* The byte a pattern writes in page `page`: a cache line that varies with
 * the page, so that random pages do not all land in one cache set.  The
 * Python workloads write the same bytes (writewatch/_bench/workloads.py). */
static size_t write_offset(size_t page)
{
    return page * page_size + (page % 64) * 64;
}

/* `count` distinct pages out of `npages`, sorted (a partial Fisher-Yates
 * shuffle of `perm`, which holds a permutation of 0..npages-1). */
static int cmp_size_t(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

static void choose_pages(uint64_t *rng, uint32_t *perm, size_t npages, size_t *out,
                         size_t count)
{
    for (size_t i = 0; i < count; i++) {
        size_t j = i + splitmix64_r(rng) % (npages - i);
        uint32_t x = perm[i];
        perm[i] = perm[j];
        perm[j] = x;
        out[i] = perm[i];
    }
    qsort(out, count, sizeof *out, cmp_size_t);
}

static uint32_t *identity(size_t n)
{
    uint32_t *p = malloc(n * sizeof *p);
    if (p)
        for (size_t i = 0; i < n; i++)
            p[i] = (uint32_t)i;
    return p;
}

/* -- Wine's write-watch microbenchmark ------------------------------------
 * THREADS threads write random pages of a PAGES-page region (populated and
 * armed), WRITES writes each; meanwhile the calling thread sleeps DELAY_US
 * and makes one get-and-reset of the whole region (GetWriteWatch with
 * WRITE_WATCH_FLAG_RESET), again and again until the writers are done.
 * Wine's program (attached to its merge request, 7871) is not reproduced
 * here; this follows its description: threads, pages, delay, random writes,
 * reset in the call. */

struct ww_wine {
    struct region r;
    int threads;
    size_t pages, writes;       /* writes per thread */
    size_t *offs;               /* threads * writes byte offsets */
    uint8_t *written, *seen;    /* per page: written by a writer; reported */
    uint64_t *out;
    uint64_t rng;
    uint64_t reported;          /* pages the timed calls reported, all runs */
};

struct wine_start {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int go, abort, finished;
};

struct wine_writer {
    pthread_t thread;
    volatile char *base;
    const size_t *offs;
    size_t n;
    uint64_t end_ns, cpu_ns;
    struct wine_start *start;
};

static uint64_t cpu_clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *wine_write(void *p)
{
    struct wine_writer *w = p;
    struct wine_start *s = w->start;
    pthread_mutex_lock(&s->lock);
    while (!s->go)
        pthread_cond_wait(&s->cond, &s->lock);
    int abort = s->abort;
    pthread_mutex_unlock(&s->lock);
    uint64_t c0 = cpu_clock_ns(CLOCK_THREAD_CPUTIME_ID);
    if (!abort)
        for (size_t i = 0; i < w->n; i++)
            w->base[w->offs[i]] = (char)i;
    w->cpu_ns = cpu_clock_ns(CLOCK_THREAD_CPUTIME_ID) - c0;
    w->end_ns = now_ns();
    __atomic_add_fetch(&s->finished, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* Pages reported by the timed calls of every run so far. */
uint64_t ww_floor_wine_reported(struct ww_wine *w)
{
    return w->reported;
}

void ww_floor_wine_free(struct ww_wine *w)
{
    if (!w)
        return;
    unmap_region(&w->r);
    free(w->offs);
    free(w->written);
    free(w->seen);
    free(w->out);
    free(w);
}

struct ww_wine *ww_floor_wine_new(int threads, size_t pages, size_t writes, uint64_t seed)
{
    if (ww_floor_init() < 0)
        return NULL;
    if (threads < 1 || threads > 1024 || pages == 0 || writes == 0) {
        errno = EINVAL;
        fail("wine: THREADS must be 1..1024, PAGES and WRITES positive");
        return NULL;
    }
    struct ww_wine *w = calloc(1, sizeof *w);
    if (!w) {
        fail("malloc");
        return NULL;
    }
    w->r.uffd = -1;
    w->threads = threads;
    w->pages = pages;
    w->writes = writes;
    w->rng = seed;
    w->offs = malloc((size_t)threads * writes * sizeof *w->offs);
    w->written = malloc(pages);
    w->seen = malloc(pages);
    w->out = malloc(pages * sizeof *w->out);
    if (!w->offs || !w->written || !w->seen || !w->out) {
        fail("malloc");
        goto bad;
    }
    if (async_region(&w->r, pages * page_size) < 0)
        goto bad;
    touch_pages(w->r.base, w->r.size, page_size, 1);       /* populated, */
    if (reset_range((uintptr_t)w->r.base, (uintptr_t)w->r.base + w->r.size) < 0)
        goto bad;                                          /* and armed */
    return w;
bad:
    ww_floor_wine_free(w);
    return NULL;
}

static void wine_mark(struct ww_wine *w, long n)
{
    for (long i = 0; i < n; i++)
        w->seen[(w->out[i] - (uintptr_t)w->r.base) / page_size] = 1;
}

/* One run.  *wall_ns: from the writers' start to the last writer's end;
 * *cpu_ns: the CPU time the writers used in all; *proc_ns: the CPU time the
 * whole process used meanwhile (writers, faults, calls); call_ns[]: each
 * get-and-reset made while writers were running (the first max_calls are
 * kept; *ncalls says how many were made).  Every page written must have been
 * reported by one of the calls or by a last one after the run, and no other
 * page. */
int ww_floor_wine_run(struct ww_wine *w, unsigned delay_us, uint64_t *wall_ns,
                      uint64_t *cpu_ns, uint64_t *proc_ns, uint64_t *call_ns,
                      size_t max_calls, size_t *ncalls)
{
    size_t total = (size_t)w->threads * w->writes, calls = 0;
    uintptr_t base = (uintptr_t)w->r.base, end = base + w->r.size;
    struct wine_start s = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0 };
    struct wine_writer *ws = calloc(w->threads, sizeof *ws);
    struct timespec nap = { .tv_sec = delay_us / 1000000,
                            .tv_nsec = (long)(delay_us % 1000000) * 1000 };
    int started = 0, rc = -1;
    uint64_t t0 = 0, t1 = 0, cpu = 0, p0 = 0, p1 = 0;
    if (!ws)
        return fail("malloc");
    memset(w->written, 0, w->pages);
    memset(w->seen, 0, w->pages);
    for (size_t i = 0; i < total; i++) {
        size_t page = splitmix64_r(&w->rng) % w->pages;
        w->offs[i] = write_offset(page);
        w->written[page] = 1;
    }
    for (; started < w->threads; started++) {
        struct wine_writer *x = &ws[started];
        x->base = w->r.base;
        x->offs = w->offs + (size_t)started * w->writes;
        x->n = w->writes;
        x->start = &s;
        if ((errno = pthread_create(&x->thread, NULL, wine_write, x)) != 0) {
            fail("pthread_create");
            break;
        }
    }
    pthread_mutex_lock(&s.lock);
    s.go = 1;
    s.abort = started < w->threads;
    p0 = cpu_clock_ns(CLOCK_PROCESS_CPUTIME_ID);
    t0 = now_ns();
    pthread_cond_broadcast(&s.cond);
    pthread_mutex_unlock(&s.lock);
    if (s.abort)
        goto join;
    for (;;) {
        nanosleep(&nap, NULL);
        if (__atomic_load_n(&s.finished, __ATOMIC_ACQUIRE) == w->threads)
            break;
        uint64_t c0 = now_ns();
        long got = scan(base, end, 1, w->out, w->pages);
        uint64_t c1 = now_ns();
        if (got < 0)
            goto join;
        if (calls < max_calls)
            call_ns[calls] = c1 - c0;
        calls++;
        w->reported += (uint64_t)got;
        wine_mark(w, got);
    }
    rc = 0;
join:
    for (int i = 0; i < started; i++) {
        pthread_join(ws[i].thread, NULL);
        if (ws[i].end_ns > t1)
            t1 = ws[i].end_ns;
        cpu += ws[i].cpu_ns;
    }
    p1 = cpu_clock_ns(CLOCK_PROCESS_CPUTIME_ID);
    free(ws);
    if (rc < 0)
        return rc;
    long got = scan(base, end, 1, w->out, w->pages);        /* the rest */
    if (got < 0)
        return -1;
    wine_mark(w, got);
    for (size_t p = 0; p < w->pages; p++)
        if (w->written[p] != w->seen[p]) {
            snprintf(error_buf, sizeof error_buf, "wine: page %zu %s", p,
                     w->written[p] ? "written, never reported" : "reported, never written");
            return -1;
        }
    *wall_ns = t1 - t0;
    *cpu_ns = cpu;
    *proc_ns = p1 - p0;
    *ncalls = calls;
    return 0;
}

/* -- the .NET GC pattern ---------------------------------------------------
 * A SIZE heap; a round writes K random pages (outside the timer: the
 * program's allocations), then the GC asks for the written pages in calls of
 * at most BATCH addresses without reset, each resuming after the last
 * address the previous call returned, and finally resets the whole heap.
 * The rounds cycle through GC_SETS page sets, so the heap's memory stays at
 * GC_SETS * K pages however many rounds run. */

#define GC_SETS 4

struct ww_gc {
    struct region r;
    size_t pages, k, batch, round, got;
    size_t *sets;               /* GC_SETS * k sorted page numbers */
    uint64_t *out;              /* what the last round reported (k + batch) */
};

void ww_floor_gc_free(struct ww_gc *g)
{
    if (!g)
        return;
    unmap_region(&g->r);
    free(g->sets);
    free(g->out);
    free(g);
}

struct ww_gc *ww_floor_gc_new(size_t size, size_t k, size_t batch, uint64_t seed)
{
    if (ww_floor_init() < 0)
        return NULL;
    if (size == 0 || size % page_size || k == 0 || k > size / page_size || batch == 0) {
        errno = EINVAL;
        fail("gc: SIZE a positive multiple of the page size, K 1..its pages, BATCH positive");
        return NULL;
    }
    struct ww_gc *g = calloc(1, sizeof *g);
    uint32_t *perm = identity(size / page_size);
    if (!g || !perm) {
        free(g);
        free(perm);
        fail("malloc");
        return NULL;
    }
    g->r.uffd = -1;
    g->pages = size / page_size;
    g->k = k;
    g->batch = batch;
    g->sets = malloc(GC_SETS * k * sizeof *g->sets);
    g->out = malloc((k + batch) * sizeof *g->out);
    if (!g->sets || !g->out) {
        fail("malloc");
        goto bad;
    }
    for (int i = 0; i < GC_SETS; i++)
        choose_pages(&seed, perm, g->pages, g->sets + i * k, k);
    if (async_region(&g->r, size) < 0)
        goto bad;
    free(perm);
    return g;
bad:
    free(perm);
    ww_floor_gc_free(g);
    return NULL;
}

/* The program's writes before a GC: the next page set. */
void ww_floor_gc_write(struct ww_gc *g)
{
    const size_t *set = g->sets + (g->round % GC_SETS) * g->k;
    for (size_t i = 0; i < g->k; i++)
        ((volatile char *)g->r.base)[write_offset(set[i])] = (char)(g->round + 1);
}

/* The timed part.  Returns the number of get calls made. */
long ww_floor_gc_round(struct ww_gc *g)
{
    uintptr_t pos = (uintptr_t)g->r.base, end = pos + g->r.size;
    long calls = 0;
    g->got = 0;
    for (;;) {
        if (g->got > g->k) {            /* out has room for k + batch */
            snprintf(error_buf, sizeof error_buf,
                     "gc: more than the %zu pages written were reported", g->k);
            return -1;
        }
        long n = scan(pos, end, 0, g->out + g->got, g->batch);
        if (n < 0)
            return -1;
        calls++;
        g->got += (size_t)n;
        if ((size_t)n < g->batch)
            break;
        pos = g->out[g->got - 1] + page_size;
    }
    if (reset_range((uintptr_t)g->r.base, end) < 0)
        return -1;
    g->round++;
    return calls;
}

/* Did the last round report exactly the pages written? */
int ww_floor_gc_check(struct ww_gc *g)
{
    const size_t *set = g->sets + ((g->round - 1) % GC_SETS) * g->k;
    if (g->got != g->k) {
        snprintf(error_buf, sizeof error_buf, "gc: wrote %zu pages, reported %zu",
                 g->k, g->got);
        return -1;
    }
    for (size_t i = 0; i < g->k; i++)
        if (g->out[i] != (uintptr_t)g->r.base + set[i] * page_size) {
            snprintf(error_buf, sizeof error_buf, "gc: page %zu written, %#llx reported",
                     set[i], (unsigned long long)(g->out[i] - (uintptr_t)g->r.base));
            return -1;
        }
    return 0;
}

/* -- the reservation --------------------------------------------------------
 * What a GC heap does with VirtualAlloc: reserve a large range (PROT_NONE,
 * no page tables), commit the start of it (mprotect read/write, register it
 * with a userfaultfd for async write-protect, write-protect it: the page
 * tables of the committed part only), write K pages, scan the committed
 * part, unmap. */

struct ww_res {
    char *base;
    size_t size, committed, k;
    int uffd;
    uint64_t *out;
    size_t *pages;
};

struct ww_res *ww_floor_res_new(void)
{
    if (ww_floor_init() < 0)
        return NULL;
    struct ww_res *r = calloc(1, sizeof *r);
    if (!r) {
        fail("malloc");
        return NULL;
    }
    r->uffd = -1;
    return r;
}

int ww_floor_res_release(struct ww_res *r)
{
    int rc = 0;
    if (r->base && munmap(r->base, r->size) < 0)
        rc = fail("munmap");
    if (r->uffd >= 0)
        close(r->uffd);
    r->base = NULL;
    r->uffd = -1;
    r->committed = r->k = 0;
    free(r->out);
    free(r->pages);
    r->out = NULL;
    r->pages = NULL;
    return rc;
}

void ww_floor_res_free(struct ww_res *r)
{
    if (r) {
        ww_floor_res_release(r);
        free(r);
    }
}

int ww_floor_res_reserve(struct ww_res *r, size_t size)
{
    if (r->base || size == 0 || size % page_size) {
        errno = EINVAL;
        return fail("reserve: already reserved, or SIZE not a positive multiple of pages");
    }
    void *p = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return fail("mmap(PROT_NONE)");
    r->base = p;
    r->size = size;
    return 0;
}

int ww_floor_res_commit(struct ww_res *r, size_t size)
{
    if (!r->base || r->committed || size == 0 || size % page_size || size > r->size) {
        errno = EINVAL;
        return fail("commit: nothing reserved, already committed, or a bad size");
    }
    if (mprotect(r->base, size, PROT_READ | PROT_WRITE) < 0)
        return fail("mprotect");
    madvise(r->base, size, MADV_NOHUGEPAGE);
    if (r->uffd < 0) {
        r->uffd = uffd_open(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, 1);
        if (r->uffd < 0)
            return -1;
    }
    if (uffd_register_wp(r->uffd, r->base, size) < 0 || uffd_wp(r->uffd, r->base, size, 1) < 0)
        return -1;
    r->committed = size;
    return 0;
}

/* Write k random pages of the committed range (not timed). */
int ww_floor_res_write(struct ww_res *r, size_t k, uint64_t seed)
{
    size_t npages = r->committed / page_size;
    if (k == 0 || k > npages) {
        errno = EINVAL;
        return fail("reserve: K must be 1..the committed pages");
    }
    uint32_t *perm = identity(npages);
    free(r->pages);
    free(r->out);
    r->pages = malloc(k * sizeof *r->pages);
    r->out = malloc(npages * sizeof *r->out);
    if (!perm || !r->pages || !r->out) {
        free(perm);
        return fail("malloc");
    }
    choose_pages(&seed, perm, npages, r->pages, k);
    free(perm);
    for (size_t i = 0; i < k; i++)
        ((volatile char *)r->base)[write_offset(r->pages[i])] = 1;
    r->k = k;
    return 0;
}

/* Get (no reset) over the committed range.  Returns the count. */
long ww_floor_res_scan(struct ww_res *r)
{
    size_t npages = r->committed / page_size;
    if (!r->out) {
        errno = EINVAL;
        return fail("reserve: scan before write");
    }
    return scan((uintptr_t)r->base, (uintptr_t)r->base + r->committed, 0, r->out, npages);
}

int ww_floor_res_check(struct ww_res *r, long got)
{
    if ((size_t)got != r->k) {
        snprintf(error_buf, sizeof error_buf, "reserve: wrote %zu pages, reported %ld",
                 r->k, got);
        return -1;
    }
    for (size_t i = 0; i < r->k; i++)
        if (r->out[i] != (uintptr_t)r->base + r->pages[i] * page_size) {
            snprintf(error_buf, sizeof error_buf, "reserve: page %zu written, not reported",
                     r->pages[i]);
            return -1;
        }
    return 0;
}

/* -- many regions ------------------------------------------------------------
 * COUNT regions of SIZE bytes, each its own mmap, all registered with one
 * userfaultfd.  Mapped one after another they are usually adjacent, and
 * adjacent ranges registered with the same userfaultfd merge into one VMA,
 * so that one scan can cover a whole run of them.  One page is written in
 * each; a get-and-reset of all of them is either one scan per region
 * ("each") or one scan per run of adjacent regions ("runs"), whose output
 * is handed back to the regions it belongs to. */

struct ww_regions {
    size_t count, size, nruns, total;
    int uffd;
    char **base;                /* in creation order */
    size_t *order;              /* region numbers sorted by address */
    size_t *run_first;          /* nruns + 1 indices into order */
    size_t *written;            /* the page written in each region */
    uint64_t *reported;         /* per region: the one page it reported */
    uint32_t *nreported;        /* per region: how many pages */
    uint64_t *out;
    uint64_t rng;
};

static struct ww_regions *sort_regions;

static int cmp_region(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)sort_regions->base[*(const size_t *)a];
    uintptr_t y = (uintptr_t)sort_regions->base[*(const size_t *)b];
    return x < y ? -1 : x > y;
}

/* Unmap every region; *close_ns is the time it took.  Frees g. */
int ww_floor_regions_free(struct ww_regions *g, uint64_t *close_ns)
{
    int rc = 0;
    if (!g)
        return 0;
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < g->count && g->base; i++)
        if (g->base[i] && munmap(g->base[i], g->size) < 0)
            rc = fail("munmap");
    if (g->uffd >= 0)
        close(g->uffd);
    if (close_ns)
        *close_ns = now_ns() - t0;
    free(g->base);
    free(g->order);
    free(g->run_first);
    free(g->written);
    free(g->reported);
    free(g->nreported);
    free(g->out);
    free(g);
    return rc;
}

/* Map and arm COUNT regions; *create_ns is the time that took. */
struct ww_regions *ww_floor_regions_new(size_t count, size_t size, uint64_t seed,
                                        uint64_t *create_ns)
{
    if (ww_floor_init() < 0)
        return NULL;
    if (count == 0 || size == 0 || size % page_size) {
        errno = EINVAL;
        fail("regions: COUNT positive, SIZE a positive multiple of the page size");
        return NULL;
    }
    struct ww_regions *g = calloc(1, sizeof *g);
    if (!g) {
        fail("malloc");
        return NULL;
    }
    g->uffd = -1;
    g->count = count;
    g->size = size;
    g->rng = seed;
    g->base = calloc(count, sizeof *g->base);
    g->order = malloc(count * sizeof *g->order);
    g->run_first = malloc((count + 1) * sizeof *g->run_first);
    g->written = malloc(count * sizeof *g->written);
    g->reported = malloc(count * sizeof *g->reported);
    g->nreported = malloc(count * sizeof *g->nreported);
    g->out = malloc(count * (size / page_size) * sizeof *g->out);
    if (!g->base || !g->order || !g->run_first || !g->written || !g->reported ||
        !g->nreported || !g->out) {
        fail("malloc");
        goto bad;
    }
    uint64_t t0 = now_ns();
    g->uffd = uffd_open(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, 1);
    if (g->uffd < 0)
        goto bad;
    for (size_t i = 0; i < count; i++) {
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            fail("mmap");
            goto bad;
        }
        g->base[i] = p;
        madvise(p, size, MADV_NOHUGEPAGE);
        if (uffd_register_wp(g->uffd, p, size) < 0 || uffd_wp(g->uffd, p, size, 1) < 0)
            goto bad;
    }
    if (create_ns)
        *create_ns = now_ns() - t0;
    for (size_t i = 0; i < count; i++)
        g->order[i] = i;
    sort_regions = g;
    qsort(g->order, count, sizeof *g->order, cmp_region);
    g->nruns = 0;
    for (size_t j = 0; j < count; j++)
        if (j == 0 || g->base[g->order[j]] != g->base[g->order[j - 1]] + size)
            g->run_first[g->nruns++] = j;
    g->run_first[g->nruns] = count;
    return g;
bad:
    ww_floor_regions_free(g, NULL);
    return NULL;
}

size_t ww_floor_regions_runs(struct ww_regions *g)
{
    return g->nruns;
}

/* One random page written in each region (not timed). */
void ww_floor_regions_write(struct ww_regions *g)
{
    size_t npages = g->size / page_size;
    for (size_t i = 0; i < g->count; i++) {
        g->written[i] = splitmix64_r(&g->rng) % npages;
        ((volatile char *)g->base[i])[write_offset(g->written[i])] = 1;
    }
}

/* One get-and-reset per region.  Returns the pages reported in all. */
long ww_floor_regions_each(struct ww_regions *g)
{
    size_t npages = g->size / page_size;
    g->total = 0;
    for (size_t i = 0; i < g->count; i++) {
        uintptr_t b = (uintptr_t)g->base[i];
        long n = scan(b, b + g->size, 1, g->out, npages);
        if (n < 0)
            return -1;
        g->nreported[i] = (uint32_t)n;
        g->reported[i] = n ? g->out[0] : 0;
        g->total += (size_t)n;
    }
    return (long)g->total;
}

/* One get-and-reset per run of adjacent regions, handed back per region. */
long ww_floor_regions_scan_runs(struct ww_regions *g)
{
    memset(g->nreported, 0, g->count * sizeof *g->nreported);
    g->total = 0;
    for (size_t k = 0; k < g->nruns; k++) {
        size_t first = g->run_first[k], n_in = g->run_first[k + 1] - first;
        uintptr_t b = (uintptr_t)g->base[g->order[first]];
        long n = scan(b, b + n_in * g->size, 1, g->out, n_in * (g->size / page_size));
        if (n < 0)
            return -1;
        for (long i = 0; i < n; i++) {
            size_t region = g->order[first + (g->out[i] - b) / g->size];
            g->nreported[region]++;
            g->reported[region] = g->out[i];
        }
        g->total += (size_t)n;
    }
    return (long)g->total;
}

/* Did each region report exactly its page? */
int ww_floor_regions_check(struct ww_regions *g)
{
    for (size_t i = 0; i < g->count; i++)
        if (g->nreported[i] != 1 ||
            g->reported[i] != (uintptr_t)g->base[i] + g->written[i] * page_size) {
            snprintf(error_buf, sizeof error_buf,
                     "regions: region %zu wrote page %zu, reported %u pages", i,
                     g->written[i], g->nreported[i]);
            return -1;
        }
    return 0;
}

/* ---- the three techniques, as the backends use them ----------------------
 *
 * uffd-async (`pagemap`): the kernel records the first write to each page
 * (async uffd-wp); a PAGEMAP_SCAN reads and re-arms.  uffd-sync (`uffd`): a
 * write to an armed page stops until a handler thread, woken by the
 * userfaultfd, records the page and write-unprotects it.  mprotect
 * (`mprotect`): an armed page is read-only; the SIGSEGV handler records the
 * page and makes it writable.  With uffd-sync and mprotect the record is a
 * bitmap of ours (`bits`); NULL counts the faults only (the first-write
 * workload).
 */

static char *seg_base;
static size_t seg_size;
static uint64_t *seg_bits;
static volatile long seg_faults;
static struct sigaction seg_old;

static void on_segv(int sig, siginfo_t *si, void *ctx)
{
    uintptr_t a = (uintptr_t)si->si_addr;
    if (a >= (uintptr_t)seg_base && a < (uintptr_t)seg_base + seg_size) {
        a &= ~(uintptr_t)(page_size - 1);
        if (seg_bits) {             /* recorded before the write can proceed */
            size_t i = (a - (uintptr_t)seg_base) / page_size;
            __atomic_fetch_or(&seg_bits[i >> 6], (uint64_t)1 << (i & 63), __ATOMIC_RELEASE);
        }
        if (mprotect((void *)a, page_size, PROT_READ | PROT_WRITE) == 0) {
            seg_faults++;
            return;
        }
    }
    /* Not ours: the handler that was there before (in a process that loaded
     * libwwfloor.so: faulthandler, writewatch's mprotect backend...), or the
     * default action -- a real crash crashes. */
    if ((seg_old.sa_flags & SA_SIGINFO) && seg_old.sa_sigaction) {
        seg_old.sa_sigaction(sig, si, ctx);
        return;
    }
    if (!(seg_old.sa_flags & SA_SIGINFO) && seg_old.sa_handler != SIG_DFL &&
        seg_old.sa_handler != SIG_IGN) {
        seg_old.sa_handler(sig);
        return;
    }
    signal(sig, SIG_DFL);
}

/* The handler thread: a blocking read(2) of up to 64 messages at a time on
 * a blocking userfaultfd, then for each fault one ioctl that unprotects the
 * page and wakes the writer -- as the `uffd` backend's thread does
 * (includes/uffd_thread.h), without its locks and region table.  Stopped
 * with pthread_cancel() (read(2) is a cancellation point). */
struct sync_handler {
    int uffd;
    long faults;
    int error;
    uintptr_t base;             /* with bits: the region's start */
    uint64_t *bits;
    pthread_t thread;
    int running;
};

static void *sync_thread(void *p)
{
    struct sync_handler *h = p;
    struct uffd_msg msgs[64];
    sigset_t all;
    sigfillset(&all);           /* signals are for the other threads */
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    for (;;) {
        ssize_t n = read(h->uffd, msgs, sizeof msgs);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            h->error = errno;
            return NULL;
        }
        for (size_t k = 0; k < (size_t)n / sizeof *msgs; k++) {
            if (msgs[k].event != UFFD_EVENT_PAGEFAULT)
                continue;
            uintptr_t a = msgs[k].arg.pagefault.address & ~(uint64_t)(page_size - 1);
            if (h->bits) {          /* recorded before the write is let go */
                size_t i = (a - h->base) / page_size;
                __atomic_fetch_or(&h->bits[i >> 6], (uint64_t)1 << (i & 63), __ATOMIC_RELEASE);
            }
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
}

static int sync_start(struct sync_handler *h)
{
    if ((errno = pthread_create(&h->thread, NULL, sync_thread, h)) != 0)
        return fail("pthread_create");
    h->running = 1;
    return 0;
}

static void sync_stop(struct sync_handler *h)
{
    if (h->running) {
        pthread_cancel(h->thread);
        pthread_join(h->thread, NULL);
        h->running = 0;
    }
}

enum { TECH_ASYNC, TECH_SYNC, TECH_MPROTECT };

static int tech_of(const char *name)
{
    return !strcmp(name, "uffd-async") ? TECH_ASYNC : !strcmp(name, "uffd-sync") ? TECH_SYNC
         : !strcmp(name, "mprotect") ? TECH_MPROTECT : -1;
}

/* A region tracked with one technique.  Only one mprotect region at a time
 * (the SIGSEGV handler's globals). */
struct tracked {
    struct region r;
    int tech;
    size_t npages;
    uint64_t *bits;
    struct sync_handler h;
    int have_segv;
};

static void tracked_close(struct tracked *t)
{
    sync_stop(&t->h);
    if (t->have_segv) {
        sigaction(SIGSEGV, &seg_old, NULL);
        seg_base = NULL;
        seg_size = 0;
        seg_bits = NULL;
        t->have_segv = 0;
    }
    unmap_region(&t->r);
    free(t->bits);
    t->bits = NULL;
}

/* Map `size` bytes, write 1 at write_offset(p) of every page p (every page
 * present), and arm the region as the technique's backend does: afterwards
 * no page counts as written. */
static int tracked_open(struct tracked *t, int tech, size_t size)
{
    memset(t, 0, sizeof *t);
    t->r.uffd = t->h.uffd = -1;
    t->tech = tech;
    t->npages = size / page_size;
    if (tech == TECH_ASYNC ? async_region(&t->r, size) : map_region(&t->r, size)) {
        t->r.base = NULL;
        return -1;
    }
    for (size_t p = 0; p < t->npages; p++)
        ((volatile char *)t->r.base)[write_offset(p)] = 1;
    if (tech == TECH_ASYNC) {
        if (reset_range((uintptr_t)t->r.base, (uintptr_t)t->r.base + size) < 0)
            goto bad;
        return 0;
    }
    t->bits = calloc((t->npages + 63) / 64, sizeof *t->bits);
    if (!t->bits) {
        fail("malloc");
        goto bad;
    }
    if (tech == TECH_SYNC) {
        t->r.uffd = uffd_open(0, 0);
        if (t->r.uffd < 0 || uffd_register_wp(t->r.uffd, t->r.base, size) < 0 ||
            uffd_wp(t->r.uffd, t->r.base, size, 1) < 0)
            goto bad;
        t->h.uffd = t->r.uffd;
        t->h.base = (uintptr_t)t->r.base;
        t->h.bits = t->bits;
        if (sync_start(&t->h) < 0)
            goto bad;
        return 0;
    }
    if (seg_base) {
        errno = EBUSY;
        fail("mprotect technique: another region is tracked");
        goto bad;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    seg_base = t->r.base;
    seg_size = size;
    seg_bits = t->bits;
    if (sigaction(SIGSEGV, &sa, &seg_old) < 0) {
        seg_base = NULL;
        fail("sigaction(SIGSEGV)");
        goto bad;
    }
    t->have_segv = 1;
    if (mprotect(t->r.base, size, PROT_READ) < 0) {
        fail("mprotect");
        goto bad;
    }
    return 0;
bad:
    tracked_close(t);
    return -1;
}

/* One get-and-reset of the whole region: the written pages' addresses into
 * `out` (ascending; room for every page), each armed again.  uffd-sync
 * write-protects each run of written pages again (what the `uffd` backend
 * does); mprotect takes write permission away from the span from the first
 * written page to the last in one call (the pages between are read-only
 * already; what the `mprotect` backend does).  The count, or -1. */
static long tracked_get_reset(struct tracked *t, uint64_t *out)
{
    uintptr_t base = (uintptr_t)t->r.base;
    size_t n = 0, nwords = (t->npages + 63) / 64;
    if (t->tech == TECH_ASYNC)
        return scan(base, base + t->r.size, 1, out, t->npages);
    if (t->h.error) {
        errno = t->h.error;
        return fail("uffd handler thread");
    }
    for (size_t w = 0; w < nwords; w++) {
        uint64_t x = t->bits[w] ? __atomic_exchange_n(&t->bits[w], 0, __ATOMIC_ACQ_REL) : 0;
        for (; x; x &= x - 1)
            out[n++] = base + (((w << 6) + (size_t)__builtin_ctzll(x)) * page_size);
    }
    if (n == 0)
        return 0;
    if (t->tech == TECH_MPROTECT) {
        if (mprotect((void *)out[0], out[n - 1] + page_size - out[0], PROT_READ) < 0)
            return fail("mprotect");
        return (long)n;
    }
    for (size_t a = 0, b; a < n; a = b) {
        for (b = a + 1; b < n && out[b] == out[b - 1] + page_size; b++)
            ;
        if (uffd_wp(t->r.uffd, (char *)out[a], (b - a) * page_size, 1) < 0)
            return -1;
    }
    return (long)n;
}

/* ---- Snapshots and DeltaLog (issue 12) -----------------------------------
 *
 * What writewatch.Snapshots and writewatch.DeltaLog do, as little as it can
 * be done: on a region tracked with one technique, every page written once
 * before the clock, K distinct random pages written per frame (outside the
 * clock, one byte each at write_offset(): a value that changes each frame).
 *
 *   save     one get-and-reset, and a copy of each page reported into the
 *            next of KEEP save areas (allocated and faulted in beforehand).
 *            When the areas are all in use, the oldest frame's pages are
 *            first copied into the base -- a copy of the whole region, the
 *            state before the oldest kept frame -- outside the clock (the
 *            library does that by index updates alone, inside its save).
 *   restore  KEEP frames saved, K more pages written; then back to the
 *            oldest kept frame: a copy back into the (armed) region of the
 *            pages of the KEEP - 1 newer frames and of the K pages written
 *            since the last save -- each from the oldest frame's copy, or
 *            the base's -- and one get-and-reset.  Which pages, and where
 *            from, is worked out before the clock.
 *   copy     memcpy of the whole region (as np.copyto).
 *   append   (uffd-async) one get-and-reset, then one pwritev of a record
 *            -- a 48-byte header and the pages' 8-byte indexes, then the
 *            pages straight from the region -- at the end of a file, and
 *            fdatasync; or, as the issue words it, write(2) of the same
 *            bytes gathered before the clock, and fsync.
 *
 * Every answer is checked after the clock: a save or append reports
 * exactly the pages written; a restore reports exactly the pages it
 * rewrote, and leaves every page holding the byte it held at the frame
 * restored.
 */

#define SNAP_HEAD 48            /* a DeltaLog record header's size */

struct ww_snap {
    struct tracked t;
    size_t k, keep, npages;
    char *base;                 /* every page: the state before the oldest kept frame */
    char *areas;                /* keep save areas of k pages */
    size_t *area_pages;         /* keep x k: the page of each copy */
    size_t *area_n;
    uint8_t *cur;               /* per page: the byte at write_offset() now */
    uint8_t *state;             /* keep x npages: cur at each kept frame's save */
    uint64_t *out;
    size_t *written;            /* the pages written since the last save or restore */
    size_t nwritten;
    uint32_t *perm, *mark;
    uint64_t *targets;          /* restore: the pages to copy back (addresses, ascending), */
    const char **srcs;          /* and where from */
    size_t ntargets;
    uint64_t rng;
    size_t first, count;        /* the kept frames: first .. first + count - 1 */
    uint8_t value;
};

/* Anonymous memory without huge pages (as the library's page copies);
 * `src` copied into it, or zeros: faulted in now, not in a timed call. */
static void *map_filled(size_t size, const void *src)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        fail("mmap");
        return NULL;
    }
    madvise(p, size, MADV_NOHUGEPAGE);
    if (src)
        memcpy(p, src, size);
    else
        memset(p, 0, size);
    return p;
}

void ww_floor_snap_free(struct ww_snap *s)
{
    if (!s)
        return;
    tracked_close(&s->t);
    if (s->base)
        munmap(s->base, s->npages * page_size);
    if (s->areas)
        munmap(s->areas, s->keep * s->k * page_size);
    free(s->area_pages);
    free(s->area_n);
    free(s->cur);
    free(s->state);
    free(s->out);
    free(s->written);
    free(s->perm);
    free(s->mark);
    free(s->targets);
    free(s->srcs);
    free(s);
}

struct ww_snap *ww_floor_snap_new(const char *tech, size_t size, size_t k, size_t keep,
                                  uint64_t seed)
{
    int kind = tech_of(tech);
    if (!page_size)
        page_size = (size_t)sysconf(_SC_PAGESIZE);
    if (kind < 0 || size == 0 || size % page_size || k == 0 || k > size / page_size ||
        keep < 2 || keep > 1024) {
        errno = EINVAL;
        fail("snap: TECH uffd-async, uffd-sync or mprotect; K pages 1..the region's; "
             "KEEP 2..1024");
        return NULL;
    }
    if (kind == TECH_ASYNC && ww_floor_init() < 0)
        return NULL;
    struct ww_snap *s = calloc(1, sizeof *s);
    if (!s) {
        fail("malloc");
        return NULL;
    }
    s->t.r.uffd = -1;
    s->k = k;
    s->keep = keep;
    s->npages = size / page_size;
    s->rng = seed;
    s->value = 1;
    if (tracked_open(&s->t, kind, size) < 0)
        goto bad;
    s->area_pages = malloc(keep * k * sizeof *s->area_pages);
    s->area_n = calloc(keep, sizeof *s->area_n);
    s->cur = malloc(s->npages);
    s->state = malloc(keep * s->npages);
    s->out = malloc(s->npages * sizeof *s->out);
    s->written = malloc(k * sizeof *s->written);
    s->perm = identity(s->npages);
    s->mark = calloc(s->npages, sizeof *s->mark);
    s->targets = malloc(keep * k * sizeof *s->targets);
    s->srcs = malloc(keep * k * sizeof *s->srcs);
    if (!s->area_pages || !s->area_n || !s->cur || !s->state || !s->out || !s->written ||
        !s->perm || !s->mark || !s->targets || !s->srcs) {
        fail("malloc");
        goto bad;
    }
    memset(s->cur, 1, s->npages);
    if (!(s->base = map_filled(size, s->t.r.base)) ||
        !(s->areas = map_filled(keep * k * page_size, NULL)))
        goto bad;
    return s;
bad:
    ww_floor_snap_free(s);
    return NULL;
}

/* K distinct random pages, each given a new byte. */
static void snap_write_pages(struct ww_snap *s)
{
    choose_pages(&s->rng, s->perm, s->npages, s->written, s->k);
    s->nwritten = s->k;
    s->value = s->value >= 255 ? 2 : s->value + 1;
    for (size_t i = 0; i < s->k; i++) {
        ((volatile char *)s->t.r.base)[write_offset(s->written[i])] = (char)s->value;
        s->cur[s->written[i]] = s->value;
    }
}

/* A frame's writes (not timed); with every area in use, the oldest frame
 * goes into the base first, so that the next save can reuse its area. */
int ww_floor_snap_write(struct ww_snap *s)
{
    if (s->nwritten) {
        errno = EINVAL;
        return fail("snap: two frames' writes without a save between");
    }
    if (s->count == s->keep) {
        size_t a = s->first % s->keep;
        for (size_t j = 0; j < s->area_n[a]; j++)
            memcpy(s->base + s->area_pages[a * s->k + j] * page_size,
                   s->areas + (a * s->k + j) * page_size, page_size);
        s->first++;
        s->count--;
    }
    snap_write_pages(s);
    return 0;
}

/* save (timed): one get-and-reset, each page reported copied into the next
 * frame's area.  Returns the pages saved. */
long ww_floor_snap_save(struct ww_snap *s)
{
    if (s->count == s->keep) {
        errno = EINVAL;
        return fail("snap: save with every area in use (ww_floor_snap_write first)");
    }
    long n = tracked_get_reset(&s->t, s->out);
    if (n < 0)
        return -1;
    if ((size_t)n > s->k) {
        snprintf(error_buf, sizeof error_buf, "snap: %ld pages reported, %zu written", n, s->k);
        return -1;
    }
    size_t a = (s->first + s->count) % s->keep;
    char *dst = s->areas + a * s->k * page_size;
    size_t *pages = s->area_pages + a * s->k;
    uintptr_t base = (uintptr_t)s->t.r.base;
    for (long i = 0; i < n; i++) {
        memcpy(dst + (size_t)i * page_size, (const void *)s->out[i], page_size);
        pages[i] = (s->out[i] - base) / page_size;
    }
    s->area_n[a] = (size_t)n;
    s->count++;
    return n;
}

/* After a save: it reported exactly the pages written; the frame's bytes
 * are kept for restore's check. */
int ww_floor_snap_check(struct ww_snap *s, long got)
{
    size_t a = (s->first + s->count - 1) % s->keep;
    uintptr_t base = (uintptr_t)s->t.r.base;
    if ((size_t)got != s->nwritten) {
        snprintf(error_buf, sizeof error_buf, "snap: wrote %zu pages, save copied %ld",
                 s->nwritten, got);
        return -1;
    }
    for (size_t i = 0; i < s->nwritten; i++)        /* both ascending */
        if (s->out[i] != base + s->written[i] * page_size) {
            snprintf(error_buf, sizeof error_buf, "snap: page %zu written, %#llx reported",
                     s->written[i], (unsigned long long)(s->out[i] - base));
            return -1;
        }
    memcpy(s->state + a * s->npages, s->cur, s->npages);
    s->nwritten = 0;
    return 0;
}

/* Before a restore (not timed): K pages written since the last save, then
 * which pages the restore to the oldest kept frame copies back, and from
 * where.  Returns how many. */
long ww_floor_snap_restore_prepare(struct ww_snap *s)
{
    if (s->count < 2 || s->nwritten) {
        errno = EINVAL;
        return fail("snap: restore needs two kept frames and a save after the last writes");
    }
    snap_write_pages(s);
    size_t n = 0, a0 = s->first % s->keep, *p;
    for (size_t f = s->first + 1; f < s->first + s->count; f++) {
        size_t a = f % s->keep;
        p = s->area_pages + a * s->k;
        for (size_t j = 0; j < s->area_n[a]; j++)
            if (!s->mark[p[j]]) {
                s->mark[p[j]] = 1;
                s->targets[n++] = p[j];
            }
    }
    for (size_t j = 0; j < s->nwritten; j++)
        if (!s->mark[s->written[j]]) {
            s->mark[s->written[j]] = 1;
            s->targets[n++] = s->written[j];
        }
    qsort(s->targets, n, sizeof *s->targets, cmp_u64);
    p = s->area_pages + a0 * s->k;
    for (size_t j = 0; j < s->area_n[a0]; j++)
        if (s->mark[p[j]])
            s->mark[p[j]] = 2 + (uint32_t)j;
    for (size_t i = 0; i < n; i++) {
        size_t page = s->targets[i];
        uint32_t m = s->mark[page];
        s->srcs[i] = m >= 2 ? s->areas + (a0 * s->k + m - 2) * page_size
                            : s->base + page * page_size;
        s->mark[page] = 0;
        s->targets[i] = (uintptr_t)s->t.r.base + page * page_size;
    }
    s->ntargets = n;
    return (long)n;
}

/* restore (timed): the copies back, then one get-and-reset.  Returns the
 * pages it reported. */
long ww_floor_snap_restore(struct ww_snap *s)
{
    for (size_t i = 0; i < s->ntargets; i++)
        memcpy((void *)s->targets[i], s->srcs[i], page_size);
    return tracked_get_reset(&s->t, s->out);
}

/* After a restore: it reported exactly the pages it rewrote, and every page
 * holds the byte it held when the frame restored was saved.  The frames
 * after it are gone. */
int ww_floor_snap_restore_check(struct ww_snap *s, long got)
{
    const uint8_t *want = s->state + (s->first % s->keep) * s->npages;
    if ((size_t)got != s->ntargets) {
        snprintf(error_buf, sizeof error_buf, "snap: restore rewrote %zu pages, %ld reported",
                 s->ntargets, got);
        return -1;
    }
    for (size_t i = 0; i < s->ntargets; i++)
        if (s->out[i] != s->targets[i]) {
            snprintf(error_buf, sizeof error_buf, "snap: restore rewrote %#llx, %#llx reported",
                     (unsigned long long)s->targets[i], (unsigned long long)s->out[i]);
            return -1;
        }
    for (size_t p = 0; p < s->npages; p++)
        if ((uint8_t)s->t.r.base[write_offset(p)] != want[p]) {
            snprintf(error_buf, sizeof error_buf, "snap: page %zu holds %u after the restore, "
                     "%u when saved", p, (uint8_t)s->t.r.base[write_offset(p)], want[p]);
            return -1;
        }
    memcpy(s->cur, want, s->npages);
    s->count = 1;
    s->nwritten = 0;
    return 0;
}

/* -- the whole region copied (np.copyto's floor) -- */

struct ww_copy {
    char *src, *dst;
    size_t size;
};

void ww_floor_copy_free(struct ww_copy *c)
{
    if (!c)
        return;
    if (c->src)
        munmap(c->src, c->size);
    if (c->dst)
        munmap(c->dst, c->size);
    free(c);
}

struct ww_copy *ww_floor_copy_new(size_t size)
{
    struct ww_copy *c = calloc(1, sizeof *c);
    if (!c) {
        fail("malloc");
        return NULL;
    }
    c->size = size;
    if (!(c->src = map_filled(size, NULL)) || !(c->dst = map_filled(size, NULL))) {
        ww_floor_copy_free(c);
        return NULL;
    }
    if (!page_size)
        page_size = (size_t)sysconf(_SC_PAGESIZE);
    for (size_t off = 0; off < size; off += page_size)
        c->src[off] = 1;
    return c;
}

void ww_floor_copy_run(struct ww_copy *c)
{
    memcpy(c->dst, c->src, c->size);
    __asm__ volatile("" : : "r"(c->dst) : "memory");    /* the copy is used */
}

/* -- DeltaLog.append's floor -- */

struct ww_append {
    struct tracked t;
    size_t k, npages;
    int fd;
    char path[4096];
    off_t end;
    uint64_t *out;
    size_t *written;
    size_t nwritten;
    uint32_t *perm;
    uint64_t rng;
    uint8_t value;
    char *head;                 /* a record's header and indexes */
    struct iovec *iov;
    char *gathered;             /* write(2)'s record, gathered before the clock */
    size_t gathered_len;
};

/* The file stays: its directory's owner removes it, after the measuring
 * (freeing its blocks -- a discard, on a filesystem mounted with `discard`
 * -- must not land in the next measurement).  ww_floor_append_path(). */
void ww_floor_append_free(struct ww_append *a)
{
    if (!a)
        return;
    tracked_close(&a->t);
    if (a->fd >= 0)
        close(a->fd);
    free(a->out);
    free(a->written);
    free(a->perm);
    free(a->head);
    free(a->iov);
    if (a->gathered)
        munmap(a->gathered, SNAP_HEAD + a->k * (8 + page_size));
    free(a);
}

/* A region of `size` (uffd-async), and a new file in `dir` appended to. */
struct ww_append *ww_floor_append_new(size_t size, size_t k, const char *dir, uint64_t seed)
{
    if (ww_floor_init() < 0)
        return NULL;
    if (size == 0 || size % page_size || k == 0 || k > size / page_size) {
        errno = EINVAL;
        fail("append: K pages 1..the region's");
        return NULL;
    }
    struct ww_append *a = calloc(1, sizeof *a);
    if (!a) {
        fail("malloc");
        return NULL;
    }
    a->fd = -1;
    a->t.r.uffd = -1;
    a->k = k;
    a->npages = size / page_size;
    a->rng = seed;
    a->value = 1;
    if (tracked_open(&a->t, TECH_ASYNC, size) < 0)
        goto bad;
    a->out = malloc(a->npages * sizeof *a->out);
    a->written = malloc(k * sizeof *a->written);
    a->perm = identity(a->npages);
    a->head = calloc(1, SNAP_HEAD + 8 * k);
    a->iov = malloc((k + 1) * sizeof *a->iov);
    if (!a->out || !a->written || !a->perm || !a->head || !a->iov) {
        fail("malloc");
        goto bad;
    }
    if (!(a->gathered = map_filled(SNAP_HEAD + k * (8 + page_size), NULL)))
        goto bad;
    if (snprintf(a->path, sizeof a->path, "%s/ww-floor-append-XXXXXX", dir) >=
        (int)sizeof a->path) {
        errno = ENAMETOOLONG;
        fail("append: directory");
        goto bad;
    }
    a->fd = mkostemp(a->path, O_CLOEXEC);
    if (a->fd < 0) {
        fail("mkostemp");
        goto bad;
    }
    return a;
bad:
    ww_floor_append_free(a);
    return NULL;
}

const char *ww_floor_append_path(struct ww_append *a)
{
    return a->path;
}

/* A frame's writes (not timed): K distinct random pages. */
int ww_floor_append_write(struct ww_append *a)
{
    choose_pages(&a->rng, a->perm, a->npages, a->written, a->k);
    a->nwritten = a->k;
    a->value = a->value >= 255 ? 2 : a->value + 1;
    for (size_t i = 0; i < a->k; i++)
        ((volatile char *)a->t.r.base)[write_offset(a->written[i])] = (char)a->value;
    return 0;
}

static int write_all_at(int fd, struct iovec *iov, int n, off_t at)
{
    while (n > 0) {
        ssize_t done = pwritev(fd, iov, n > IOV_MAX ? IOV_MAX : n, at);
        if (done < 0) {
            if (errno == EINTR)
                continue;
            return fail("pwritev");
        }
        at += done;
        while (n > 0 && (size_t)done >= iov->iov_len) {
            done -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + done;
            iov->iov_len -= (size_t)done;
        }
    }
    return 0;
}

/* The record's header and indexes for the pages in a->out. */
static size_t append_head(struct ww_append *a, long n)
{
    uint64_t *idx = (uint64_t *)(a->head + SNAP_HEAD);
    memcpy(a->head, "WWRC", 4);
    memcpy(a->head + 16, &n, sizeof n);
    for (long i = 0; i < n; i++)
        idx[i] = (a->out[i] - (uintptr_t)a->t.r.base) / page_size;
    return SNAP_HEAD + 8 * (size_t)n;
}

/* append (timed): get-and-reset, one pwritev at the end of the file
 * straight from the region, fdatasync.  Returns the pages appended. */
long ww_floor_append_writev(struct ww_append *a)
{
    long n = tracked_get_reset(&a->t, a->out);
    if (n < 0)
        return -1;
    if ((size_t)n > a->k) {
        snprintf(error_buf, sizeof error_buf, "append: %ld pages reported, %zu written", n, a->k);
        return -1;
    }
    size_t len = append_head(a, n);
    a->iov[0].iov_base = a->head;
    a->iov[0].iov_len = len;
    for (long i = 0; i < n; i++) {
        a->iov[1 + i].iov_base = (void *)a->out[i];
        a->iov[1 + i].iov_len = page_size;
    }
    if (write_all_at(a->fd, a->iov, (int)n + 1, a->end) < 0)
        return -1;
    if (fdatasync(a->fd) < 0)
        return fail("fdatasync");
    a->end += (off_t)(len + (size_t)n * page_size);
    return n;
}

/* After a get-and-reset: it reported exactly the pages written. */
int ww_floor_append_check(struct ww_append *a, long got)
{
    uintptr_t base = (uintptr_t)a->t.r.base;
    if ((size_t)got != a->nwritten) {
        snprintf(error_buf, sizeof error_buf, "append: wrote %zu pages, %ld reported",
                 a->nwritten, got);
        return -1;
    }
    for (size_t i = 0; i < a->nwritten; i++)
        if (a->out[i] != base + a->written[i] * page_size) {
            snprintf(error_buf, sizeof error_buf, "append: page %zu written, %#llx reported",
                     a->written[i], (unsigned long long)(a->out[i] - base));
            return -1;
        }
    a->nwritten = 0;
    return 0;
}

/* Before write_fsync (not timed): get-and-reset, and the record gathered
 * into one buffer.  Returns the pages (checked as ww_floor_append_check). */
long ww_floor_append_gather(struct ww_append *a)
{
    long n = tracked_get_reset(&a->t, a->out);
    if (n < 0 || ww_floor_append_check(a, n) < 0)
        return -1;
    size_t len = append_head(a, n);
    memcpy(a->gathered, a->head, len);
    for (long i = 0; i < n; i++)
        memcpy(a->gathered + len + (size_t)i * page_size, (const void *)a->out[i], page_size);
    a->gathered_len = len + (size_t)n * page_size;
    if (lseek(a->fd, a->end, SEEK_SET) < 0)
        return fail("lseek");
    return n;
}

/* write(2) of the gathered record at the end of the file, then fsync
 * (timed).  Returns the bytes written. */
long ww_floor_append_write_fsync(struct ww_append *a)
{
    size_t done = 0;
    while (done < a->gathered_len) {
        ssize_t w = write(a->fd, a->gathered + done, a->gathered_len - done);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return fail("write");
        }
        done += (size_t)w;
    }
    if (fsync(a->fd) < 0)
        return fail("fsync");
    a->end += (off_t)done;
    return (long)done;
}

/* ---- the program ------------------------------------------------------- */
#ifndef WW_FLOOR_LIBRARY

static double budget_ns = 200e6;
static long min_reps = 3, max_reps = 100000;
static int failed;
static const char *work_dir;
static int dir_given;
static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t splitmix64(void)
{
    return splitmix64_r(&rng_state);
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

static int run_fault(const char *spec, const char *tech, size_t npages)
{
    struct region r;
    size_t size = npages * page_size;
    uint64_t *t = malloc(max_reps * sizeof *t);
    uint64_t *out = malloc(npages * sizeof *out);
    struct sync_handler h = { .uffd = -1 };
    int have_segv = 0, rc = -1;
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
        r.uffd = uffd_open(0, 0);
        if (r.uffd < 0 || uffd_register_wp(r.uffd, r.base, size) < 0)
            goto done;
        h.uffd = r.uffd;
        if (sync_start(&h) < 0)
            goto done;
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
    sync_stop(&h);
    if (have_segv)
        sigaction(SIGSEGV, &seg_old, NULL);
    seg_base = NULL;
    seg_size = 0;
    seg_faults = 0;
    unmap_region(&r);
    free(t);
    free(out);
    (void)spec;
    return rc;
}

/* ---- the scale patterns, timed ------------------------------------------ */

/* The colon-separated numbers after "kind:" (K/M/G suffixes allowed), each
 * positive; returns how many were read, or -1 on a malformed field. */
static int parse_fields(const char *s, size_t *out, int max)
{
    int n = 0;
    while (*s && n < max) {
        size_t v = parse_size(s);
        if (v == 0)
            return -1;
        out[n++] = v;
        s = strchr(s, ':');
        if (!s)
            break;
        s++;
    }
    return s && *s ? -1 : n;
}

static int run_wine(size_t threads, size_t pages, size_t delay_us, size_t writes)
{
    struct ww_wine *w = ww_floor_wine_new((int)threads, pages, writes, 0x5eed);
    uint64_t *per_write = malloc(max_reps * sizeof *per_write);
    uint64_t *cpu_write = malloc(max_reps * sizeof *cpu_write);
    double busy_sum = 0;
    size_t max_calls = 100000, ncalls = 0, calls_kept = 0, calls_made = 0;
    uint64_t *call_ns = malloc(max_calls * sizeof *call_ns);
    int cpus = ww_floor_cpus(), rc = -1;
    size_t busy = threads < (size_t)cpus ? threads : (size_t)cpus;
    long reps = 0;
    if (!w)
        goto done;
    if (!per_write || !cpu_write || !call_ns) {
        fail("malloc");
        goto done;
    }
    uint64_t started = now_ns();
    while (keep_going(reps, started)) {
        uint64_t wall, cpu, proc;
        if (ww_floor_wine_run(w, (unsigned)delay_us, &wall, &cpu, &proc, call_ns + calls_kept,
                              max_calls - calls_kept, &ncalls) < 0)
            goto done;
        cpu_write[reps] = proc / (threads * writes);
        busy_sum += wall ? (double)cpu / wall : 0;
        calls_kept += ncalls < max_calls - calls_kept ? ncalls : max_calls - calls_kept;
        calls_made += ncalls;
        /* The writers' share of the machine: the run's wall time times the
         * CPUs they can use, per write. */
        per_write[reps++] = wall * busy / (threads * writes);
    }
    char fields[320];
    snprintf(fields, sizeof fields,
             "\"workload\": \"wine\", \"metric\": \"write\", \"threads\": %zu, \"pages\": %zu, "
             "\"delay_us\": %zu, \"writes\": %zu, \"cpus\": %d, \"writer_cpus\": %.2f",
             threads, pages, delay_us, writes, cpus, reps ? busy_sum / reps : 0.0);
    print_result(fields, "write", per_write, reps, 1);
    snprintf(fields, sizeof fields,
             "\"workload\": \"wine\", \"metric\": \"write_cpu\", \"threads\": %zu, "
             "\"pages\": %zu, \"delay_us\": %zu, \"writes\": %zu, \"cpus\": %d",
             threads, pages, delay_us, writes, cpus);
    print_result(fields, "write", cpu_write, reps, 1);
    if (calls_kept) {
        snprintf(fields, sizeof fields,
                 "\"workload\": \"wine\", \"metric\": \"call\", \"threads\": %zu, "
                 "\"pages\": %zu, \"delay_us\": %zu, \"writes\": %zu, \"cpus\": %d, "
                 "\"pages_per_call\": %.1f", threads, pages, delay_us, writes, cpus,
                 (double)ww_floor_wine_reported(w) / (double)calls_made);
        print_result(fields, "call", call_ns, (long)calls_kept, 1);
    }
    rc = 0;
done:
    ww_floor_wine_free(w);
    free(per_write);
    free(cpu_write);
    free(call_ns);
    return rc;
}

static int run_gc(size_t size, size_t k, size_t batch)
{
    struct ww_gc *g = ww_floor_gc_new(size, k, batch, 0x6c);
    uint64_t *t = malloc(max_reps * sizeof *t);
    long reps = 0, calls = 0;
    int rc = -1;
    if (!g)
        goto done;
    if (!t) {
        fail("malloc");
        goto done;
    }
    uint64_t started = now_ns();
    while (keep_going(reps, started)) {
        ww_floor_gc_write(g);
        uint64_t t0 = now_ns();
        calls = ww_floor_gc_round(g);
        uint64_t t1 = now_ns();
        if (calls < 0 || ww_floor_gc_check(g) < 0)
            goto done;
        t[reps++] = t1 - t0;
    }
    char fields[256];
    snprintf(fields, sizeof fields,
             "\"workload\": \"gc\", \"size\": %zu, \"written\": %zu, \"batch\": %zu, "
             "\"calls\": %ld", size, k, batch, calls);
    print_result(fields, "round", t, reps, 1);
    rc = 0;
done:
    ww_floor_gc_free(g);
    free(t);
    return rc;
}

#define RES_SCANS 5             /* scans of the committed range per cycle */

static int run_reserve(size_t size, size_t commit, size_t k)
{
    enum { RESERVE, COMMIT, SCAN, RELEASE, STEPS };
    static const char *const names[STEPS] = { "reserve", "commit", "get_committed", "release" };
    uint64_t *t[STEPS];
    long long pte[STEPS] = { 0 }, pte0 = 0;
    long reps = 0, n[STEPS] = { 0 };
    int rc = -1;
    struct ww_res *r = ww_floor_res_new();
    for (int s = 0; s < STEPS; s++)
        t[s] = malloc(max_reps * (s == SCAN ? RES_SCANS : 1) * sizeof *t[s]);
    if (!r)
        goto done;
    if (commit > size) {
        errno = EINVAL;
        fail("reserve: COMMIT larger than SIZE");
        goto done;
    }
    for (int s = 0; s < STEPS; s++)
        if (!t[s]) {
            fail("malloc");
            goto done;
        }
    uint64_t started = now_ns();
    while (keep_going(reps, started)) {
        pte0 = ww_floor_vmpte();
        uint64_t t0 = now_ns();
        if (ww_floor_res_reserve(r, size) < 0)
            goto done;
        t[RESERVE][n[RESERVE]++] = now_ns() - t0;
        pte[RESERVE] = ww_floor_vmpte() - pte0;
        t0 = now_ns();
        if (ww_floor_res_commit(r, commit) < 0)
            goto done;
        t[COMMIT][n[COMMIT]++] = now_ns() - t0;
        pte[COMMIT] = ww_floor_vmpte() - pte0;
        if (ww_floor_res_write(r, k, 0x7e5 + (uint64_t)reps) < 0)
            goto done;
        for (int i = 0; i < RES_SCANS; i++) {
            t0 = now_ns();
            long got = ww_floor_res_scan(r);
            uint64_t t1 = now_ns();
            if (got < 0 || ww_floor_res_check(r, got) < 0)
                goto done;
            t[SCAN][n[SCAN]++] = t1 - t0;
        }
        pte[SCAN] = ww_floor_vmpte() - pte0;
        t0 = now_ns();
        if (ww_floor_res_release(r) < 0)
            goto done;
        t[RELEASE][n[RELEASE]++] = now_ns() - t0;
        pte[RELEASE] = ww_floor_vmpte() - pte0;
        reps++;
    }
    for (int s = 0; s < STEPS; s++) {
        char fields[320];
        snprintf(fields, sizeof fields,
                 "\"workload\": \"reserve\", \"step\": \"%s\", \"size\": %zu, "
                 "\"committed\": %zu, \"written\": %zu, \"pte_bytes\": %lld",
                 names[s], size, commit, k, pte[s]);
        print_result(fields, "call", t[s], n[s], 1);
    }
    rc = 0;
done:
    ww_floor_res_free(r);
    for (int s = 0; s < STEPS; s++)
        free(t[s]);
    return rc;
}

static int run_regions(size_t count, size_t size)
{
    uint64_t create_ns = 0, close_ns = 0;
    struct ww_regions *g = ww_floor_regions_new(count, size, 0x4e6, &create_ns);
    uint64_t *each = malloc(max_reps * sizeof *each), *runs = malloc(max_reps * sizeof *runs);
    long reps = 0;
    int rc = -1;
    if (!g)
        goto done;
    if (!each || !runs) {
        fail("malloc");
        goto done;
    }
    uint64_t started = now_ns();
    while (keep_going(reps, started)) {
        ww_floor_regions_write(g);
        uint64_t t0 = now_ns();
        long got = ww_floor_regions_each(g);
        uint64_t t1 = now_ns();
        if (got < 0 || ww_floor_regions_check(g) < 0)
            goto done;
        each[reps] = t1 - t0;
        ww_floor_regions_write(g);
        t0 = now_ns();
        got = ww_floor_regions_scan_runs(g);
        t1 = now_ns();
        if (got < 0 || ww_floor_regions_check(g) < 0)
            goto done;
        runs[reps++] = t1 - t0;
    }
    size_t nruns = ww_floor_regions_runs(g);
    rc = ww_floor_regions_free(g, &close_ns);
    g = NULL;
    if (rc < 0)
        goto done;
    char fields[320];
    const char *common = "\"workload\": \"regions\", \"count\": %zu, \"size\": %zu, "
                         "\"runs\": %zu, \"descriptors\": 1, \"variant\": \"%s\"";
    snprintf(fields, sizeof fields, common, count, size, nruns, "each");
    print_result(fields, "region", each, reps, (double)count);
    snprintf(fields, sizeof fields, common, count, size, nruns, "runs");
    print_result(fields, "region", runs, reps, (double)count);
    snprintf(fields, sizeof fields, common, count, size, nruns, "create");
    print_result(fields, "region", &create_ns, 1, (double)count);
    snprintf(fields, sizeof fields, common, count, size, nruns, "close");
    print_result(fields, "region", &close_ns, 1, (double)count);
done:
    ww_floor_regions_free(g, NULL);
    free(each);
    free(runs);
    return rc;
}

/* ---- Snapshots and DeltaLog, timed -------------------------------------- */

/* save, then restore KEEP - 1 frames back, on a region tracked with `tech`.
 * The save is timed once every area is in use (KEEP + 1 saves before: the
 * ring full and folding, as the library's in its steady state).  Each
 * restore is followed by KEEP - 1 saves (not timed) that fill the ring
 * again. */
static int run_snap(const char *tech, size_t size, size_t k, size_t keep)
{
    struct ww_snap *s = ww_floor_snap_new(tech, size, k, keep, 0x5a4e);
    uint64_t *t = malloc(max_reps * sizeof *t);
    long reps = 0;
    double restored = 0;
    int rc = -1;
    char fields[320];
    if (!s)
        goto done;
    if (!t) {
        fail("malloc");
        goto done;
    }
    for (size_t i = 0; i <= keep; i++) {
        long got;
        if (ww_floor_snap_write(s) < 0 || (got = ww_floor_snap_save(s)) < 0 ||
            ww_floor_snap_check(s, got) < 0)
            goto done;
    }
    uint64_t started = now_ns();
    while (keep_going(reps, started)) {
        if (ww_floor_snap_write(s) < 0)
            goto done;
        uint64_t t0 = now_ns();
        long got = ww_floor_snap_save(s);
        uint64_t t1 = now_ns();
        if (got < 0 || ww_floor_snap_check(s, got) < 0)
            goto done;
        t[reps++] = t1 - t0;
    }
    snprintf(fields, sizeof fields, "\"workload\": \"snapshots\", \"op\": \"save\", "
             "\"tech\": \"%s\", \"size\": %zu, \"written\": %zu, \"keep\": %zu",
             tech, size, k, keep);
    print_result(fields, "call", t, reps, 1);
    reps = 0;
    started = now_ns();
    while (keep_going(reps, started)) {
        long n = ww_floor_snap_restore_prepare(s);
        if (n < 0)
            goto done;
        uint64_t t0 = now_ns();
        long got = ww_floor_snap_restore(s);
        uint64_t t1 = now_ns();
        if (got < 0 || ww_floor_snap_restore_check(s, got) < 0)
            goto done;
        t[reps++] = t1 - t0;
        restored += (double)n;
        for (size_t i = 1; i < keep; i++) {
            if (ww_floor_snap_write(s) < 0 || (got = ww_floor_snap_save(s)) < 0 ||
                ww_floor_snap_check(s, got) < 0)
                goto done;
        }
    }
    snprintf(fields, sizeof fields, "\"workload\": \"snapshots\", \"op\": \"restore\", "
             "\"tech\": \"%s\", \"size\": %zu, \"written\": %zu, \"keep\": %zu, "
             "\"back\": %zu, \"restored\": %.1f", tech, size, k, keep, keep - 1,
             restored / (double)reps);
    print_result(fields, "call", t, reps, 1);
    rc = 0;
done:
    ww_floor_snap_free(s);
    free(t);
    return rc;
}

static int run_copy(size_t size)
{
    struct ww_copy *c = ww_floor_copy_new(size);
    uint64_t *t = malloc(max_reps * sizeof *t);
    long reps = 0;
    int rc = -1;
    if (!c)
        goto done;
    if (!t) {
        fail("malloc");
        goto done;
    }
    ww_floor_copy_run(c);                                   /* warm-up */
    uint64_t started = now_ns();
    while (keep_going(reps, started)) {
        uint64_t t0 = now_ns();
        ww_floor_copy_run(c);
        t[reps++] = now_ns() - t0;
    }
    char fields[256];
    snprintf(fields, sizeof fields, "\"workload\": \"snapshots\", \"op\": \"copy\", "
             "\"tech\": \"memcpy\", \"size\": %zu", size);
    print_result(fields, "call", t, reps, 1);
    rc = 0;
done:
    ww_floor_copy_free(c);
    free(t);
    return rc;
}

/* The two append floors, frame by frame in turn on one file. */
static int run_append(size_t size, size_t k, const char *dir)
{
    struct ww_append *a = ww_floor_append_new(size, k, dir, 0xa99e);
    uint64_t *tv = malloc(max_reps * sizeof *tv), *tw = malloc(max_reps * sizeof *tw);
    long reps = 0;
    int rc = -1;
    if (!a)
        goto done;
    if (!tv || !tw) {
        fail("malloc");
        goto done;
    }
    uint64_t started = now_ns();
    for (long warm = 1; warm >= 0; warm--) {
        while (warm || keep_going(reps, started)) {
            ww_floor_append_write(a);
            uint64_t t0 = now_ns();
            long got = ww_floor_append_writev(a);
            uint64_t t1 = now_ns();
            if (got < 0 || ww_floor_append_check(a, got) < 0)
                goto done;
            ww_floor_append_write(a);
            if (ww_floor_append_gather(a) < 0)
                goto done;
            uint64_t t2 = now_ns();
            if (ww_floor_append_write_fsync(a) < 0)
                goto done;
            uint64_t t3 = now_ns();
            if (warm)
                break;                  /* one of each first, not kept */
            tv[reps] = t1 - t0;
            tw[reps++] = t3 - t2;
        }
        started = now_ns();
    }
    char fields[320];
    const char *common = "\"workload\": \"deltalog\", \"op\": \"%s\", \"tech\": \"%s\", "
                         "\"size\": %zu, \"written\": %zu";
    snprintf(fields, sizeof fields, common, "append", "writev", size, k);
    print_result(fields, "call", tv, reps, 1);
    snprintf(fields, sizeof fields, common, "append", "write", size, k);
    print_result(fields, "call", tw, reps, 1);
    rc = 0;
done:
    if (a && !dir_given)
        unlink(a->path);        /* else the caller removes its directory */
    ww_floor_append_free(a);
    free(tv);
    free(tw);
    return rc;
}

/* ---- main --------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr,
            "usage: ww-floor [--budget-ms N] [--min-reps N] [--max-reps N] [--dir DIR] "
            "WORKLOAD...\n"
            "  frame:SIZE:K[,K...]  clean:SIZE  sparse:SIZE  limit:SIZE:COUNT  fault:TECH:PAGES\n"
            "  wine:THREADS:PAGES:DELAY_US:WRITES  gc:SIZE:K:BATCH  reserve:SIZE:COMMIT:K\n"
            "  regions:COUNT:SIZE  snap:TECH:SIZE:K:KEEP  copy:SIZE  append:SIZE:K\n"
            "  TECH: uffd-async uffd-sync mprotect none (snap: not none); SIZE with K/M/G\n"
            "  suffix; --dir DIR: where append makes its file (default $TMPDIR or /tmp)\n");
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
        else if (!strcmp(argv[i], "--dir") && i + 1 < argc) {
            work_dir = argv[++i];
            dir_given = 1;
        }
        else {
            usage();
            return 2;
        }
    }
    if (i == argc || min_reps < 1 || max_reps < min_reps) {
        usage();
        return 2;
    }
    if (!work_dir)
        work_dir = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
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
        static const struct { const char *kind; int fields; } patterns[] = {
            { "wine", 4 }, { "gc", 3 }, { "reserve", 3 }, { "regions", 2 },
        };
        int pattern = -1;
        for (int p = 0; p < (int)(sizeof patterns / sizeof *patterns); p++)
            if (!strcmp(kind, patterns[p].kind))
                pattern = p;
        if (pattern >= 0) {
            size_t f[4];
            if (parse_fields(c1 + 1, f, 4) != patterns[pattern].fields) {
                usage();
                return 2;
            }
            if (!async_ok) {
                print_skip(spec, why);
                continue;
            }
            switch (pattern) {
            case 0: rc = run_wine(f[0], f[1], f[2], f[3]); break;
            case 1: rc = run_gc(f[0], f[1], f[2]); break;
            case 2: rc = run_reserve(f[0], f[1], f[2]); break;
            default: rc = run_regions(f[0], f[1]); break;
            }
        } else if (!strcmp(kind, "fault")) {
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
        } else if (!strcmp(kind, "snap")) {
            /* snap:TECH:SIZE:K:KEEP */
            size_t f[3];
            if (!c2 || c2 - c1 - 1 >= (long)sizeof tech || parse_fields(c2 + 1, f, 3) != 3 ||
                f[0] % page_size) {
                usage();
                return 2;
            }
            memcpy(tech, c1 + 1, c2 - c1 - 1);
            if (!strcmp(tech, "uffd-async") && !async_ok) {
                print_skip(spec, why);
                continue;
            }
            rc = run_snap(tech, f[0], f[1], f[2]);
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
            else if (!strcmp(kind, "copy") && !c2)
                rc = run_copy(a);
            else if (!strcmp(kind, "append") && c2 && b)
                rc = run_append(a, b, work_dir);
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

#endif /* !WW_FLOOR_LIBRARY */
