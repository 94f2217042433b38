/*
 * mprotect_control.h - the `mprotect` backend's control side: everything
 * that is not reachable from the SIGSEGV handler (mprotect_handler.h).
 * Installing the handler and keeping it on top (the watchdog thread), the
 * VMA budget, arming and detaching regions, the scans that report and
 * re-arm written pages, protection changes, commit and decommit.
 *
 * Where it runs: on the caller's thread, called from the engine's hooks
 * (writewatch/_mprotect.pxi) -- all but arm() without the GIL and under the
 * Region's mutex -- and on the watchdog thread.  Never in signal context.
 *
 * Locks, in the order they are taken: the Region's mutex (_region.pxi),
 * then r->lock, which serialises the control calls on one region's state
 * bytes.  ww_mp_spin guards the writers of the region table and of the
 * chained handler (arm, detach, install); it is never taken with r->lock
 * held, and never by the handler -- so detach() may hold it while waiting
 * for the handlers inside the table to leave.  A control call may fault on
 * tracked memory while holding r->lock (a scan's output buffer can be a
 * tracked page): the handler takes no lock, so that fault is resolved all
 * the same.
 *
 * How the control calls keep the handler's invariant (see its file): a
 * scan with reset clears a page's W before taking its write permission
 * away; protect(), commit and decommit change the protection bits with
 * compare-and-swap, keeping W; whatever the kernel refuses is put back as
 * it was, or left writable and counted as written (a superset, never a
 * lost write).
 */
#ifndef WRITEWATCH_MPROTECT_CONTROL_H
#define WRITEWATCH_MPROTECT_CONTROL_H

#include "mprotect_handler.h"

#include <sched.h>
#include <stdlib.h>
#include <time.h>

/* ---- control-side state ------------------------------------------------- */

static int ww_mp_spin;                  /* writers' lock (never taken by the handler) */
static uint64_t ww_mp_name_seq;
static long ww_mp_max_map = 65530;     /* vm.max_map_count when last read */
static int64_t ww_mp_refreshed_ns;      /* when it was last taken by a control call */
static int ww_mp_watchdog_on;           /* the watchdog thread runs */
static pthread_once_t ww_mp_atfork_once = PTHREAD_ONCE_INIT;

static inline void ww_mp_lock(void)
{
    while (__atomic_exchange_n(&ww_mp_spin, 1, __ATOMIC_ACQUIRE))
        sched_yield();
}

static inline void ww_mp_unlock(void) { __atomic_store_n(&ww_mp_spin, 0, __ATOMIC_RELEASE); }

/* Only the forking thread lives on in a child: no handler is inside, no
 * writer holds the lock. */
static void ww_mp_on_fork_child(void)
{
    ww_mp_readers[0] = ww_mp_readers[1] = 0;
    ww_mp_spin = 0;
    ww_mp_watchdog_on = 0;              /* threads do not survive fork() */
}

static void ww_mp_atfork_install(void) { pthread_atfork(NULL, NULL, ww_mp_on_fork_child); }

/* ---- installation ----------------------------------------------------------- */

/* Install the handler if it is not the current one (first use, or someone
 * -- faulthandler.enable() -- replaced it since): ours goes on top and
 * chains to the current one.  0 or -errno. */
static int ww_mp_install(void)
{
    struct sigaction cur, mine;
    int rc = 0;
    pthread_once(&ww_mp_atfork_once, ww_mp_atfork_install);
    ww_mp_lock();
    if (sigaction(SIGSEGV, NULL, &cur) != 0) {
        rc = -errno;
    } else if (!((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == ww_mp_handler)) {
        int idx = __atomic_load_n(&ww_mp_prev_idx, __ATOMIC_ACQUIRE) ^ 1;
        ww_mp_prev[idx] = cur;
        __atomic_store_n(&ww_mp_prev_idx, idx, __ATOMIC_RELEASE);
        memset(&mine, 0, sizeof mine);
        mine.sa_sigaction = ww_mp_handler;
        /* SA_NODEFER: a handler we chain to that raise()s again reaches us
         * at once, so the loop guard sees it instead of an endless
         * deliver-return-deliver cycle. */
        mine.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER | SA_RESTART;
        sigemptyset(&mine.sa_mask);
        if (sigaction(SIGSEGV, &mine, NULL) != 0)
            rc = -errno;
        else
            __atomic_store_n(&ww_mp_installed, 1, __ATOMIC_RELEASE);
    }
    ww_mp_unlock();
    return rc;
}

/* The handler currently installed is ours (1) or not (0). */
static int ww_mp_handler_is_current(void)
{
    struct sigaction cur;
    if (sigaction(SIGSEGV, NULL, &cur) != 0)
        return 0;
    return (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == ww_mp_handler;
}

/* ---- the watchdog ----------------------------------------------------------
 * A SIGSEGV handler installed over ours after a region exists -- Python's
 * signal.signal(SIGSEGV, f), whose C handler only sets a flag and returns --
 * never resolves a tracked page's fault: the write faults again, forever,
 * and the thread spins at 100 % CPU without ever running Python code again.
 * The control calls put ours back on top, but a thread that only writes
 * never makes one.  So while regions exist a small thread checks every
 * WW_MP_WATCH_NS that ours is still the current handler, and if not puts it
 * back on top, chaining to the newcomer (which then sees every fault that is
 * not ours, as before).  A write caught in that window resumes within one
 * period.  The thread takes no lock the handler takes and holds none while
 * sleeping. */
#define WW_MP_WATCH_NS 10000000L        /* 10 ms */

static long ww_mp_regions(void);

static void *ww_mp_watchdog(void *arg)
{
    (void)arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    for (;;) {
        struct timespec ts = {0, WW_MP_WATCH_NS};
        nanosleep(&ts, NULL);
        if (ww_mp_regions() > 0 && !ww_mp_handler_is_current()) {
            static int said;
            if (ww_mp_install() == 0 && !said) {
                said = 1;               /* once: Python resets handlers at exit too */
                ww_mp_say("writewatch: another SIGSEGV handler was installed over the "
                          "mprotect backend's; put back on top, chaining to it\n");
            }
        }
    }
    return NULL;
}

/* Start the watchdog once per process (and once more in a fork child). */
static void ww_mp_watchdog_start(void)
{
    if (__atomic_exchange_n(&ww_mp_watchdog_on, 1, __ATOMIC_ACQ_REL))
        return;
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    if (pthread_create(&th, &attr, ww_mp_watchdog, NULL) != 0)
        __atomic_store_n(&ww_mp_watchdog_on, 0, __ATOMIC_RELEASE);  /* tried again later */
    pthread_attr_destroy(&attr);
}

/* Lines in /proc/self/maps: the VMAs of the process, or -errno. */
static long ww_mp_count_vmas(void)
{
    char buf[65536];
    long n = 0;
    ssize_t k;
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    while ((k = read(fd, buf, sizeof buf)) > 0 || (k < 0 && errno == EINTR))
        for (ssize_t j = 0; j < k; j++)
            n += buf[j] == '\n';
    close(fd);
    return n;
}

static long ww_mp_read_long(const char *path, long dflt)
{
    char buf[32];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dflt;
    ssize_t k = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (k <= 0)
        return dflt;
    buf[k] = 0;
    return strtol(buf, NULL, 10);
}

/* Budget for our splits: vm.max_map_count, less what the rest of the
 * process maps now, less a margin (an eighth, at least 1024) for what it
 * maps later. */
static void ww_mp_update_budget(void)
{
    long max = ww_mp_read_long("/proc/sys/vm/max_map_count", 65530);
    __atomic_store_n(&ww_mp_max_map, max, __ATOMIC_RELAXED);
    long now = ww_mp_count_vmas();
    long margin = max / 8 > 1024 ? max / 8 : 1024;
    if (now < 0)
        return;
    long ours = __atomic_load_n(&ww_mp_vmas, __ATOMIC_RELAXED);
    __atomic_store_n(&ww_mp_vma_limit, max - margin - (now - ours), __ATOMIC_RELAXED);
}

/* While degraded, a control call takes the budget again -- at most every
 * 100 ms, as reading /proc/self/maps near the limit takes milliseconds --
 * so that tracking becomes exact again once other mappings are gone. */
static void ww_mp_maybe_refresh(void)
{
    struct timespec ts;
    if (!__atomic_load_n(&ww_mp_degraded, __ATOMIC_RELAXED))
        return;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    int64_t last = __atomic_load_n(&ww_mp_refreshed_ns, __ATOMIC_RELAXED);
    if (now - last < 100000000 ||
        !__atomic_compare_exchange_n(&ww_mp_refreshed_ns, &last, now, 0,
                                     __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        return;
    ww_mp_update_budget();
    /* Still no room: stay degraded, and look again later. */
    if (__atomic_load_n(&ww_mp_vma_limit, __ATOMIC_RELAXED) -
        __atomic_load_n(&ww_mp_vmas, __ATOMIC_RELAXED) > 256)
        __atomic_store_n(&ww_mp_degraded, 0, __ATOMIC_RELAXED);
}

/* ---- hints ------------------------------------------------------------------
 * Every page whose caller protection forbids writing carries MADV_RANDOM,
 * every other MADV_NORMAL, so that the kernel never merges a run the caller
 * may write with one it may not (mprotect_handler.h says why the handler
 * needs that).  A run whose caller protection goes from one kind to the
 * other changes its hint in three steps:
 *   1. MADV_SEQUENTIAL -- a hint no other VMA of the region carries -- on
 *      the run, so that it becomes VMAs of its own.  The only step that may
 *      need new VMAs, so the only one the kernel can refuse (ENOMEM at
 *      vm.max_map_count); then the old hint goes back on the run, which
 *      needs no split (the VMAs changed lie inside the run), and the call
 *      fails with nothing changed.
 *   2. the state bytes and mprotect(), on VMAs of its own: no split.
 *   3. the new hint: no split either; and a run left at step 1's hint is
 *      still apart from its neighbours, so nothing can go wrong here.
 * At no point can a run the caller may write share a VMA with one it may
 * not.  The price: changing a clean read/write page to read-only (or back)
 * takes a VMA where it took none, so at a full map count such a protection
 * change fails with ENOMEM -- as it does for untracked memory. */

static inline int ww_mp_advice(unsigned prot)
{
    return (prot & PROT_WRITE) ? MADV_NORMAL : MADV_RANDOM;
}

static inline int ww_mp_advise(const struct ww_mp_region *r, size_t a, size_t b, int advice)
{
    return madvise((void *)(r->base + (a << r->shift)), (b - a) << r->shift, advice) == 0
               ? 0 : -errno;
}

/* ---- the control calls (not in signal context) ------------------------------ */

static void ww_mp_detach(struct ww_mp_region *r);
static void ww_mp_release(struct ww_mp_region *r);

/* Track [base, base+size), now read/write and never written.  Returns the
 * region or NULL with *err = -errno and *what the failed call. */
static struct ww_mp_region *ww_mp_arm(uintptr_t base, size_t size, size_t page,
                                      int committed, int *err, const char **what)
{
    struct ww_mp_region *r;
    unsigned slot;
    int rc = ww_mp_install();
    if (rc < 0) {
        *err = rc;
        *what = "sigaction(SIGSEGV)";
        return NULL;
    }
    ww_mp_watchdog_start();
    /* All zero bytes: every page with the region's first protection (flip),
     * not written.  calloc of a large state is an mmap whose pages cost
     * nothing until a write or a commit changes a byte in them. */
    r = calloc(1, sizeof *r);
    if (r == NULL || (r->state = calloc(size / page, 1)) == NULL) {
        free(r);
        *err = -ENOMEM;
        *what = "calloc";
        return NULL;
    }
    r->base = base;
    r->end = base + size;
    r->page = page;
    r->shift = (unsigned)__builtin_ctzl(page);
    r->npages = size / page;
    r->flip = committed ? (unsigned)(PROT_READ | PROT_WRITE) : (unsigned)PROT_NONE;
    pthread_mutex_init(&r->lock, NULL);

    /* Reading /proc/self/maps costs milliseconds, so the budget is taken
     * by the first region and then only while it is tight (a quarter or
     * less left); later pressure from other mappings shows as ENOMEM from
     * the kernel, which the handler answers as well. */
    {
        static int taken;
        long room = __atomic_load_n(&ww_mp_vma_limit, __ATOMIC_RELAXED) -
                    __atomic_load_n(&ww_mp_vmas, __ATOMIC_RELAXED);
        if (!__atomic_exchange_n(&taken, 1, __ATOMIC_RELAXED) ||
            room < __atomic_load_n(&ww_mp_max_map, __ATOMIC_RELAXED) / 4)
            ww_mp_update_budget();
    }
    /* A name of its own keeps the kernel from merging the region's VMAs
     * with a neighbour's (needs CONFIG_ANON_VMA_NAME; harmless without). */
    {
        char *name = r->name;
        strcpy(name, "writewatch-mprotect-");
        uint64_t seq = __atomic_add_fetch(&ww_mp_name_seq, 1, __ATOMIC_RELAXED);
        char digits[24];
        int nd = 0;
        do {
            digits[nd++] = (char)('0' + seq % 10);
            seq /= 10;
        } while (seq);
        size_t len = strlen(name);
        while (nd)
            name[len++] = digits[--nd];
        name[len] = 0;
        prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, base, size, name);
    }

    ww_mp_lock();
    for (slot = 0; slot < WW_MP_SLOTS; slot++)
        if (ww_mp_table[slot] == NULL)
            break;
    if (slot == WW_MP_SLOTS) {
        ww_mp_unlock();
        pthread_mutex_destroy(&r->lock);
        free(r->state);
        free(r);
        *err = -EMFILE;
        *what = "mprotect backend: region table full";
        return NULL;
    }
    __atomic_store_n(&ww_mp_table[slot], r, __ATOMIC_RELEASE);
    if (slot >= ww_mp_hwm)
        __atomic_store_n(&ww_mp_hwm, slot + 1, __ATOMIC_RELEASE);
    ww_mp_unlock();

    if (!committed) {
        /* PROT_NONE already; commits arm.  No access, so MADV_RANDOM (see
         * "hints"): one VMA, nothing to split. */
        if (madvise((void *)base, size, MADV_RANDOM) != 0) {
            *err = -errno;
            *what = "madvise(MADV_RANDOM)";
            ww_mp_detach(r);
            ww_mp_release(r);
            return NULL;
        }
        return r;
    }
    /* Fault one page in first, so the whole mapping gets its anon_vma now.
     * Otherwise every page first written after a split gets one of its own,
     * and the kernel can never merge the VMAs again once they are re-armed
     * (seen on 6.18 with MAP_NORESERVE): the map count would only grow.
     * And an anon_vma of its *own*: a first fault reuses the anon_vma of an
     * adjacent VMA whose flags match but for the access bits -- such as the
     * region made just before, mapped right above this one -- and two
     * read-only VMAs that share an anon_vma merge.  A region merged with a
     * neighbour has an edge inside a VMA, and at a full vm.max_map_count
     * the handler cannot make its runs writable there (seen on 6.18: the
     * next write killed the process).  So the fault is taken under
     * MADV_SEQUENTIAL, a hint no neighbour keeps, which makes the mapping
     * incompatible with both for that moment; the whole-mapping madvise
     * calls split nothing. */
    if (madvise((void *)base, size, MADV_SEQUENTIAL) == 0) {
        ww_touch_page(base);
        madvise((void *)base, size, MADV_NORMAL);
    } else {
        ww_touch_page(base);
    }
    if (mprotect((void *)base, size, PROT_READ) != 0) {
        *err = -errno;
        *what = "mprotect";
        ww_mp_detach(r);
        ww_mp_release(r);
        return NULL;
    }
    return r;
}

/* Take r out of the table and wait until no handler can still see it. */
static void ww_mp_detach(struct ww_mp_region *r)
{
    ww_mp_lock();
    unsigned n = ww_mp_hwm;
    for (unsigned i = 0; i < n; i++) {
        if (ww_mp_table[i] == r) {
            __atomic_store_n(&ww_mp_table[i], NULL, __ATOMIC_SEQ_CST);
            break;
        }
    }
    while (n > 0 && ww_mp_table[n - 1] == NULL)
        n--;
    __atomic_store_n(&ww_mp_hwm, n, __ATOMIC_RELEASE);
    for (int round = 0; round < 2; round++) {
        unsigned p = __atomic_load_n(&ww_mp_phase, __ATOMIC_SEQ_CST);
        __atomic_store_n(&ww_mp_phase, p + 1, __ATOMIC_SEQ_CST);
        while (__atomic_load_n(&ww_mp_readers[p & 1], __ATOMIC_SEQ_CST) != 0)
            sched_yield();
    }
    __atomic_sub_fetch(&ww_mp_vmas, __atomic_load_n(&r->splits, __ATOMIC_RELAXED),
                       __ATOMIC_RELAXED);
    r->splits = 0;
    ww_mp_unlock();
}

static void ww_mp_release(struct ww_mp_region *r)
{
    pthread_mutex_destroy(&r->lock);
    free(r->state);
    free(r);
}

/* Eight W bits at once: the index of the first page at or after i with W,
 * or n. */
static inline size_t ww_mp_next_written(const struct ww_mp_region *r, size_t i, size_t n)
{
    const uint64_t mask = 0x0101010101010101ull;
    while (i < n && (i & 7))
        if (ww_mp_load(r, i) & WW_MP_W)
            return i;
        else
            i++;
    while (i + 8 <= n) {
        uint64_t w;
        memcpy(&w, r->state + i, 8);        /* plain read: a hint, rechecked below */
        if (w & mask)
            break;
        i += 8;
    }
    while (i < n && !(ww_mp_load(r, i) & WW_MP_W))
        i++;
    return i;
}

/* Every page of [a, b) is clean with caller protection `clean`'s. */
static int ww_mp_all_clean(const struct ww_mp_region *r, size_t a, size_t b, uint8_t clean)
{
    for (size_t k = a; k < b; k++)
        if (ww_mp_load(r, k) != clean)
            return 0;
    return 1;
}

/* A reset re-arms a span at a time: runs of reported pages, with W already
 * cleared, separated by clean pages of the same protection (already without
 * write permission).  One mprotect() takes write permission from the whole
 * span -- the clean pages in it do not change -- instead of one per run:
 * the kernel merges the span into one VMA. */
struct ww_mp_span {
    size_t a, b;
    size_t runs;
    unsigned prot;
    int open;
};

/* Take write permission from the span.  If that would go over the VMA
 * budget, or the kernel refuses it, every page of the span counts as
 * written again and keeps its permission (reported again: a superset). */
static int ww_mp_span_flush(struct ww_mp_region *r, struct ww_mp_span *s)
{
    if (!s->open)
        return 0;
    s->open = 0;
    unsigned prot = s->prot, clean = prot & ~(unsigned)PROT_WRITE;
    if (!(prot & PROT_WRITE))
        return 0;                           /* not writable anyway */
    /* VMAs: the 2 (runs - 1) boundaries inside go, the edges may change. */
    long d = -2 * (long)(s->runs - 1);
    if (s->a > 0) {
        unsigned left = ww_mp_vkey(r, ww_mp_load(r, s->a - 1));
        d += (left != clean) - (left != prot);          /* writable: no hint bit */
    }
    if (s->b < r->npages) {
        unsigned right = ww_mp_vkey(r, ww_mp_load(r, s->b));
        d += (right != clean) - (right != prot);
    }
    int rc = ww_mp_over_budget(d) ? -ENOMEM : ww_mp_mprotect(r, s->a, s->b, clean);
    if (rc == 0) {
        ww_mp_account(r, d);
        return 0;
    }
    if (rc == -ENOMEM) {
        long ours = __atomic_load_n(&ww_mp_vmas, __ATOMIC_RELAXED);
        if (__atomic_load_n(&ww_mp_vma_limit, __ATOMIC_RELAXED) > ours)
            __atomic_store_n(&ww_mp_vma_limit, ours, __ATOMIC_RELAXED);
    }
    for (size_t k = s->a; k < s->b; k++)
        __atomic_fetch_or(&r->state[k], WW_MP_W, __ATOMIC_ACQ_REL);
    __atomic_add_fetch(&ww_mp_nkept, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&ww_mp_degraded, 1, __ATOMIC_RELAXED);
    return rc == -ENOMEM ? 0 : rc;
}

/* Pages of [start, end) with W, ascending: into buf[*n ...] up to limit
 * (buf NULL: not reported, no limit).  With reset, exactly the pages found
 * are re-armed: each one's W is cleared before write permission is taken
 * away (a write landing in between is in a page this call reports).
 * 0 or -errno. */
static int ww_mp_scan(struct ww_mp_region *r, uintptr_t start, uintptr_t end, int reset,
                      uint64_t *buf, size_t *n, size_t limit, const char **what)
{
    size_t i = (start - r->base) >> r->shift, e = (end - r->base) >> r->shift;
    struct ww_mp_span span = {0, 0, 0, 0, 0};
    int rc = 0;
    ww_mp_maybe_refresh();
    pthread_mutex_lock(&r->lock);
    while (buf == NULL || *n < limit) {
        i = ww_mp_next_written(r, i, e);
        if (i >= e)
            break;
        /* A run of written pages with one protection, no longer than the room. */
        uint8_t b0 = ww_mp_load(r, i);
        unsigned prot = WW_MP_PROT(r, b0);
        size_t j = i;
        while (j < e && (buf == NULL || *n < limit) && ww_mp_load(r, j) == b0) {
            if (buf)
                buf[(*n)++] = r->base + (j << r->shift);
            j++;
        }
        if (reset) {
            for (size_t k = i; k < j; k++)
                __atomic_fetch_and(&r->state[k], (uint8_t)~WW_MP_W, __ATOMIC_ACQ_REL);
            if (span.open && span.prot == prot &&
                ww_mp_all_clean(r, span.b, i, WW_MP_BYTE(r, prot))) {
                span.b = j;
                span.runs++;
            } else {
                struct ww_mp_span done = span;
                span.a = i;
                span.b = j;
                span.runs = 1;
                span.prot = prot;
                span.open = 1;
                rc = ww_mp_span_flush(r, &done);
                if (rc < 0)
                    break;
            }
        }
        i = j;
    }
    {
        int last = ww_mp_span_flush(r, &span);   /* always: W is cleared in it */
        if (rc == 0)
            rc = last;
    }
    if (rc < 0)
        *what = "mprotect";
    pthread_mutex_unlock(&r->lock);
    return rc;
}

static int ww_mp_collect(struct ww_mp_region *r, uintptr_t start, uintptr_t end, int reset,
                         uint64_t *buf, size_t *n, size_t limit, const char **what)
{
    return ww_mp_scan(r, start, end, reset, buf, n, limit, what);
}

static int ww_mp_reset(struct ww_mp_region *r, uintptr_t start, uintptr_t end,
                       const char **what)
{
    size_t n = 0;
    return ww_mp_scan(r, start, end, 1, NULL, &n, 0, what);
}

/* The end of the run of pages from i (before e) whose state byte is page
 * i's: the unit every control call works in.  r->lock held. */
static inline size_t ww_mp_run_end(const struct ww_mp_region *r, size_t i, size_t e)
{
    uint8_t b0 = ww_mp_load(r, i);
    size_t j = i + 1;
    while (j < e && ww_mp_load(r, j) == b0)
        j++;
    return j;
}

/* Pages [i, j) get the caller bits `bits`, each keeping its W bit, which
 * the handler may set meanwhile (hence the compare-and-swap). */
static inline void ww_mp_set_caller(struct ww_mp_region *r, size_t i, size_t j, uint8_t bits)
{
    for (size_t k = i; k < j; k++) {
        uint8_t cur = ww_mp_load(r, k), want;
        do {
            want = (uint8_t)((cur & WW_MP_W) | (bits & ~WW_MP_W));
        } while (!__atomic_compare_exchange_n(&r->state[k], &cur, want, 0,
                                              __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
    }
}

/* Change the caller-visible protection of [start, end) to prot, keeping W.
 * Done run by run (pages whose bytes agree); a run the kernel refuses gets
 * its old protection back and the call fails with that error.  A run that
 * changes between writable and not changes its hint too (see "hints"). */
static int ww_mp_protect(struct ww_mp_region *r, uintptr_t start, uintptr_t end, int prot,
                         const char **what)
{
    size_t i = (start - r->base) >> r->shift, e = (end - r->base) >> r->shift;
    unsigned newp = (unsigned)prot & 7u;
    int rc = 0;
    pthread_mutex_lock(&r->lock);
    while (i < e) {
        uint8_t b0 = ww_mp_load(r, i);
        size_t j = ww_mp_run_end(r, i, e);
        unsigned oldp = WW_MP_PROT(r, b0);
        unsigned after = (b0 & WW_MP_W) ? newp : (newp & ~(unsigned)PROT_WRITE);
        int rehint = ww_mp_advice(oldp) != ww_mp_advice(newp);
        long d = ww_mp_delta(r, i, j, ww_mp_vkey(r, b0),
                             after | ((newp & PROT_WRITE) ? 0u : WW_MP_HINTED));
        if (rehint && (rc = ww_mp_advise(r, i, j, MADV_SEQUENTIAL)) < 0) {
            ww_mp_advise(r, i, j, ww_mp_advice(oldp));          /* splits nothing */
            *what = "madvise(MADV_SEQUENTIAL)";
            break;
        }
        ww_mp_set_caller(r, i, j, (uint8_t)WW_MP_BYTE(r, newp));
        rc = ww_mp_mprotect(r, i, j, after);
        if (rc < 0) {
            ww_mp_set_caller(r, i, j, b0);
            if (rehint)
                ww_mp_advise(r, i, j, ww_mp_advice(oldp));
            *what = "mprotect";
            break;
        }
        if (rehint)
            ww_mp_advise(r, i, j, ww_mp_advice(newp));          /* splits nothing */
        ww_mp_account(r, d);
        i = j;
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

/* Apply every page's kernel protection again over [start, end), run by
 * run of equal state: write permission taken from the clean pages, given to
 * the written ones.  Heals what a program's own mprotect() of tracked pages
 * did behind our back.  Forgets nothing (the state bytes stay). */
static int ww_mp_rearm(struct ww_mp_region *r, uintptr_t start, uintptr_t end,
                       const char **what)
{
    size_t i = (start - r->base) >> r->shift, e = (end - r->base) >> r->shift;
    int rc = 0;
    pthread_mutex_lock(&r->lock);
    while (i < e) {
        uint8_t b0 = ww_mp_load(r, i);
        size_t j = ww_mp_run_end(r, i, e);
        rc = ww_mp_mprotect(r, i, j, ww_mp_kprot(r, b0));
        if (rc < 0) {
            *what = "mprotect";
            break;
        }
        i = j;
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

/* Win32 commit of reserved [start, end): clean pages with protection prot
 * (kernel protection without write permission).  Reserved pages carry
 * MADV_RANDOM; a writable commit changes that (see "hints"). */
static int ww_mp_commit(struct ww_mp_region *r, uintptr_t start, uintptr_t end, int prot,
                        const char **what)
{
    size_t i = (start - r->base) >> r->shift, e = (end - r->base) >> r->shift;
    unsigned kprot = (unsigned)prot & ~(unsigned)PROT_WRITE;
    int rehint = ww_mp_advice((unsigned)prot) != MADV_RANDOM;
    int rc;
    pthread_mutex_lock(&r->lock);
    long d = ww_mp_delta(r, i, e, PROT_NONE | WW_MP_HINTED,
                         kprot | ((prot & PROT_WRITE) ? 0u : WW_MP_HINTED));
    if (rehint && (rc = ww_mp_advise(r, i, e, MADV_SEQUENTIAL)) < 0) {
        ww_mp_advise(r, i, e, MADV_RANDOM);                     /* splits nothing */
        *what = "madvise(MADV_SEQUENTIAL)";
        pthread_mutex_unlock(&r->lock);
        return rc;
    }
    for (size_t k = i; k < e; k++)
        __atomic_store_n(&r->state[k], WW_MP_BYTE(r, prot), __ATOMIC_RELEASE);
    rc = ww_mp_mprotect(r, i, e, kprot);
    if (rc < 0) {
        for (size_t k = i; k < e; k++)
            __atomic_store_n(&r->state[k], WW_MP_BYTE(r, PROT_NONE), __ATOMIC_RELEASE);
        if (rehint)
            ww_mp_advise(r, i, e, MADV_RANDOM);
        *what = "mprotect";
    } else {
        if (rehint)
            ww_mp_advise(r, i, e, MADV_NORMAL);                 /* splits nothing */
        ww_mp_account(r, d);
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

/* Win32 decommit of [start, end): no access, contents dropped, not
 * written.  A fresh PROT_NONE mapping replaces the range, which gives back
 * the page tables its written pages filled (MADV_DONTNEED keeps them); it
 * gets the region's VMA name and the hint of no access (MADV_RANDOM)
 * again. */
static int ww_mp_decommit(struct ww_mp_region *r, uintptr_t start, uintptr_t end,
                          const char **what)
{
    size_t i = (start - r->base) >> r->shift, e = (end - r->base) >> r->shift;
    int rc;
    pthread_mutex_lock(&r->lock);
    long d = 0;
    /* VMAs: each run's protection becomes PROT_NONE. */
    for (size_t a = i; a < e;) {
        uint8_t b0 = ww_mp_load(r, a);
        size_t b = ww_mp_run_end(r, a, e);
        d += ww_mp_delta(r, a, b, ww_mp_vkey(r, b0), PROT_NONE | WW_MP_HINTED);
        a = b;
    }
    rc = ww_mp_mprotect(r, i, e, PROT_NONE);
    if (rc < 0) {
        *what = "mprotect";
    } else {
        for (size_t k = i; k < e; k++)
            __atomic_store_n(&r->state[k], WW_MP_BYTE(r, PROT_NONE), __ATOMIC_RELEASE);
        ww_mp_account(r, d);
        rc = ww_remap_reserved(start, end, what);
        if (rc == 0) {
            prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, start, end - start, r->name);
            /* Should this fail, the pages keep the hint of a writable run:
             * harmless but for a clean write-only neighbour (PROT_WRITE
             * alone, which the win32 layer never asks for), the only
             * writable page whose kernel protection is PROT_NONE too. */
            madvise((void *)start, end - start, MADV_RANDOM);
        }
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

/* ---- test hooks ------------------------------------------------------------
 * For writewatch._core._mprotect_stats() and _mprotect_vmas(), with the
 * counters of mprotect_handler.h.  (The watchdog uses ww_mp_regions too.) */

/* Regions in the table now. */
static long ww_mp_regions(void)
{
    long n = 0;
    unsigned hwm = __atomic_load_n(&ww_mp_hwm, __ATOMIC_ACQUIRE);
    for (unsigned i = 0; i < hwm; i++)
        n += __atomic_load_n(&ww_mp_table[i], __ATOMIC_ACQUIRE) != NULL;
    return n;
}

/* VMAs in [start, end) per /proc/self/maps. */
static long ww_mp_vmas_in(uintptr_t start, uintptr_t end)
{
    char buf[65536], line[256];
    long n = 0;
    size_t len = 0;
    ssize_t k;
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    while ((k = read(fd, buf, sizeof buf)) > 0 || (k < 0 && errno == EINTR)) {
        for (ssize_t j = 0; j < k; j++) {
            if (buf[j] != '\n') {
                if (len < sizeof line - 1)
                    line[len++] = buf[j];
                continue;
            }
            line[len] = 0;
            len = 0;
            char *dash;
            unsigned long lo = strtoul(line, &dash, 16);
            unsigned long hi = strtoul(dash + 1, NULL, 16);
            if (lo < end && hi > start)
                n++;
        }
    }
    close(fd);
    return n;
}

#endif /* WRITEWATCH_MPROTECT_CONTROL_H */
