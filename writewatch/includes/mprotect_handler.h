/*
 * mprotect_handler.h - the `mprotect` backend's plain C: a process-wide
 * SIGSEGV handler and the lock-free state it shares with the control calls.
 *
 * The classic emulation (Wine's before PAGEMAP_SCAN): a tracked page that
 * was not written since the last reset is kept without PROT_WRITE; the
 * first write faults, the handler records the page and gives the write
 * permission back, and the write is retried by the CPU.
 *
 * Per page, one byte:   bit 0  W   written since the last reset
 *                       bits 1-3   the caller-visible protection (PROT_*,
 *                                  stored XOR r->flip), changed only by
 *                                  ww_mp_protect(), commit and decommit
 * The kernel protection of a page is kprot = W ? prot : prot & ~PROT_WRITE.
 * Invariant: a page without W is never writable, except between the
 * handler's mprotect() and its setting W (a write landing there is reported
 * by the next call), or between a reset's clearing W and its mprotect() (a
 * write landing there is in the page this very call reports).  The handler
 * makes the page writable BEFORE setting W; a reset clears W BEFORE taking
 * write permission away.  So no write is ever lost, and none reported in
 * an epoch before it happened.  A page with W and no write permission (a
 * reset and a handler crossing) is harmless: its next write faults again.
 *
 * The handler never takes a lock and never allocates.  Regions are found in
 * a fixed table of atomic pointers; a region's memory is freed only after
 * a grace period (two-phase reader counts, as SRCU does) in which every
 * handler that could have seen it has left.
 *
 * Budget of VMAs: every run of pages with one kernel protection is a VMA,
 * and a process has at most vm.max_map_count of them.  The handler keeps an
 * estimate of the VMAs its splits add; when a split would go over the
 * budget (or the kernel refuses one with ENOMEM), it makes the whole clean
 * run around the page writable instead -- no split -- and marks all of it
 * written.  Reports then are a superset of the pages written, never a
 * subset; no write fails.
 */
#ifndef WRITEWATCH_MPROTECT_HANDLER_H
#define WRITEWATCH_MPROTECT_HANDLER_H

#include "ww_common.h"

#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <time.h>
#include <ucontext.h>

#define WW_MP_W          1u
/* The protection bits are stored XOR the region's `flip` (its protection
 * when made: read/write for a Region, none for a win32 reservation), so
 * that the state of a fresh region is all zero bytes: calloc'd, it costs no
 * memory until pages are written or committed. */
#define WW_MP_PROT(r, b)    ((((unsigned)(b) >> 1) & 7u) ^ (r)->flip)
#define WW_MP_BYTE(r, prot) ((uint8_t)((((unsigned)(prot) ^ (r)->flip) & 7u) << 1))
#define WW_MP_SLOTS      16384          /* regions alive at once */
#define WW_MP_TSLOTS     256            /* threads followed by the loop guard */
#define WW_MP_LOOP_MAX   16             /* same fault returned this often: a loop */

struct ww_mp_region {
    uintptr_t base, end;
    size_t page;
    unsigned shift;
    size_t npages;
    long splits;                        /* VMAs this region's splits added (estimate) */
    pthread_mutex_t lock;               /* serialises the control calls */
    uint8_t *state;                     /* npages bytes */
    unsigned flip;                      /* the protection a zero byte stands for */
    char name[40];                      /* its VMAs' name (PR_SET_VMA_ANON_NAME) */
};

/* ---- global state ------------------------------------------------------ */

static struct ww_mp_region *ww_mp_table[WW_MP_SLOTS];
static unsigned ww_mp_hwm;              /* slots in use are below this */
static unsigned ww_mp_last;             /* slot of the last hit: looked at first */
static unsigned long ww_mp_readers[2];  /* handlers inside, by phase */
static unsigned ww_mp_phase;
static int ww_mp_spin;                  /* writers' lock (never taken by the handler) */
static long ww_mp_vmas;                 /* VMAs added by splits, all regions */
static long ww_mp_vma_limit = 1L << 62; /* ... may grow to this */
static uint64_t ww_mp_name_seq;
static long ww_mp_max_map = 65530;     /* vm.max_map_count when last read */
static int ww_mp_degraded;              /* a split was refused: budget to be taken again */
static int64_t ww_mp_refreshed_ns;      /* when it was last taken by a control call */

static struct sigaction ww_mp_prev[2];  /* the handler we chain to, double-buffered */
static int ww_mp_prev_idx;
static int ww_mp_installed;
static pthread_once_t ww_mp_atfork_once = PTHREAD_ONCE_INIT;

static struct {
    int tid;
    int depth;                          /* inside a chained handler */
    uintptr_t addr;
    unsigned count;                     /* chained faults at addr that came back */
} ww_mp_threads[WW_MP_TSLOTS];

/* Counters for tests and the report (approximate under races). */
static unsigned long ww_mp_nfaults, ww_mp_nwidened, ww_mp_nkept;

static inline void ww_mp_lock(void)
{
    while (__atomic_exchange_n(&ww_mp_spin, 1, __ATOMIC_ACQUIRE))
        sched_yield();
}

static inline void ww_mp_unlock(void) { __atomic_store_n(&ww_mp_spin, 0, __ATOMIC_RELEASE); }

/* Only the forking thread lives on in a child: no handler is inside, no
 * writer holds the lock. */
static int ww_mp_watchdog_on;           /* the watchdog thread runs */

static void ww_mp_on_fork_child(void)
{
    ww_mp_readers[0] = ww_mp_readers[1] = 0;
    ww_mp_spin = 0;
    ww_mp_watchdog_on = 0;              /* threads do not survive fork() */
}

static void ww_mp_atfork_install(void) { pthread_atfork(NULL, NULL, ww_mp_on_fork_child); }

/* ---- small helpers, all async-signal-safe --------------------------------- */

static inline int ww_mp_gettid(void) { return (int)syscall(SYS_gettid); }

static inline unsigned ww_mp_kprot(const struct ww_mp_region *r, uint8_t b)
{
    unsigned p = WW_MP_PROT(r, b);
    return (b & WW_MP_W) ? p : (p & ~(unsigned)PROT_WRITE);
}

static inline uint8_t ww_mp_load(const struct ww_mp_region *r, size_t i)
{
    return __atomic_load_n(&r->state[i], __ATOMIC_ACQUIRE);
}

static void ww_mp_say(const char *msg)
{
    ssize_t rc = write(2, msg, strlen(msg));
    (void)rc;
}

/* How many VMAs the region gains if pages [a, b), all with kernel
 * protection `before` now, get `after`.  Region edges are always VMA
 * boundaries and do not count. */
static long ww_mp_delta(const struct ww_mp_region *r, size_t a, size_t b,
                        unsigned before, unsigned after)
{
    long d = 0;
    if (before == after)
        return 0;
    if (a > 0) {
        unsigned left = ww_mp_kprot(r, ww_mp_load(r, a - 1));
        d += (left != after) - (left != before);
    }
    if (b < r->npages) {
        unsigned right = ww_mp_kprot(r, ww_mp_load(r, b));
        d += (right != after) - (right != before);
    }
    return d;
}

static inline void ww_mp_account(struct ww_mp_region *r, long d)
{
    if (d) {
        __atomic_add_fetch(&r->splits, d, __ATOMIC_RELAXED);
        __atomic_add_fetch(&ww_mp_vmas, d, __ATOMIC_RELAXED);
    }
}

static inline int ww_mp_over_budget(long d)
{
    return d > 0 && __atomic_load_n(&ww_mp_vmas, __ATOMIC_RELAXED) + d >
                    __atomic_load_n(&ww_mp_vma_limit, __ATOMIC_RELAXED);
}

static inline int ww_mp_mprotect(const struct ww_mp_region *r, size_t a, size_t b,
                                 unsigned prot)
{
    return mprotect((void *)(r->base + (a << r->shift)), (b - a) << r->shift, (int)prot) == 0
               ? 0 : -errno;
}

/* ---- the handler ----------------------------------------------------------- */

static struct ww_mp_region *ww_mp_lookup(uintptr_t addr)
{
    unsigned last = __atomic_load_n(&ww_mp_last, __ATOMIC_RELAXED);
    unsigned n = __atomic_load_n(&ww_mp_hwm, __ATOMIC_ACQUIRE);
    struct ww_mp_region *r;
    if (last < n) {
        r = __atomic_load_n(&ww_mp_table[last], __ATOMIC_ACQUIRE);
        if (r && addr >= r->base && addr < r->end)
            return r;
    }
    for (unsigned i = 0; i < n; i++) {
        r = __atomic_load_n(&ww_mp_table[i], __ATOMIC_ACQUIRE);
        if (r && addr >= r->base && addr < r->end) {
            __atomic_store_n(&ww_mp_last, i, __ATOMIC_RELAXED);
            return r;
        }
    }
    return NULL;
}

/* Make the clean run around page i writable in one mprotect (a whole VMA:
 * no split) and mark all of it written. */
static int ww_mp_widen(struct ww_mp_region *r, size_t i, unsigned prot)
{
    uint8_t clean = WW_MP_BYTE(r, prot);
    size_t a = i, b = i + 1;
    while (a > 0 && ww_mp_load(r, a - 1) == clean)
        a--;
    while (b < r->npages && ww_mp_load(r, b) == clean)
        b++;
    long d = ww_mp_delta(r, a, b, prot & ~(unsigned)PROT_WRITE, prot);
    if (ww_mp_mprotect(r, a, b, prot) != 0)
        return -1;
    for (size_t k = a; k < b; k++)
        __atomic_fetch_or(&r->state[k], WW_MP_W, __ATOMIC_ACQ_REL);
    ww_mp_account(r, d);
    __atomic_add_fetch(&ww_mp_nwidened, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&ww_mp_degraded, 1, __ATOMIC_RELAXED);
    return 0;
}

/* The kernel refused a split (ENOMEM: the process is at vm.max_map_count).
 * Give back every VMA this region's splits made: each run of pages with one
 * caller protection that allows writing becomes writable as a whole (whole
 * VMAs: no split) and counts as written.  No more splits until the budget
 * is taken again (ww_mp_maybe_refresh, or the next region armed). */
static int ww_mp_widen_region(struct ww_mp_region *r)
{
    size_t a = 0, runs = 0;
    int failed = 0;
    long ours = __atomic_load_n(&ww_mp_vmas, __ATOMIC_RELAXED);
    if (__atomic_load_n(&ww_mp_vma_limit, __ATOMIC_RELAXED) > ours)
        __atomic_store_n(&ww_mp_vma_limit, ours, __ATOMIC_RELAXED);
    while (a < r->npages) {
        unsigned prot = WW_MP_PROT(r, ww_mp_load(r, a));
        size_t b = a + 1;
        while (b < r->npages && WW_MP_PROT(r, ww_mp_load(r, b)) == prot)
            b++;
        runs++;
        if (prot & PROT_WRITE) {
            if (ww_mp_mprotect(r, a, b, prot) == 0) {
                for (size_t k = a; k < b; k++)
                    __atomic_fetch_or(&r->state[k], WW_MP_W, __ATOMIC_ACQ_REL);
            } else {
                failed = 1;
            }
        }
        a = b;
    }
    if (!failed)
        ww_mp_account(r, (long)runs - 1 - __atomic_load_n(&r->splits, __ATOMIC_RELAXED));
    /* A concurrent protect() may have changed protections under us. */
    for (size_t k = 0; k < r->npages; k++) {
        uint8_t now = ww_mp_load(r, k);
        if ((now & WW_MP_W) && !(WW_MP_PROT(r, now) & PROT_WRITE))
            ww_mp_mprotect(r, k, k + 1, WW_MP_PROT(r, now));
    }
    __atomic_add_fetch(&ww_mp_nwidened, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&ww_mp_degraded, 1, __ATOMIC_RELAXED);
    return failed ? -1 : 0;
}

/* How often in a row this thread has faulted at addr (slots shared with
 * the chaining loop guard below; only used where faults cannot be told
 * apart by their error code). */
static unsigned ww_mp_repeats(uintptr_t addr)
{
    int tid = ww_mp_gettid();
    unsigned t = (unsigned)tid % WW_MP_TSLOTS;
    if (ww_mp_threads[t].tid != tid || ww_mp_threads[t].addr != addr) {
        ww_mp_threads[t].tid = tid;
        ww_mp_threads[t].depth = 0;
        ww_mp_threads[t].addr = addr;
        ww_mp_threads[t].count = 0;
    }
    if (++ww_mp_threads[t].count < WW_MP_LOOP_MAX)
        return ww_mp_threads[t].count;
    ww_mp_threads[t].count = 0;     /* start afresh for the chaining guard */
    return WW_MP_LOOP_MAX;
}

/* A write fault at addr: 1 if it was a tracked page's first write and is
 * resolved, 0 if it is not ours (a real fault). */
static int ww_mp_resolve(uintptr_t addr)
{
    unsigned phase = __atomic_load_n(&ww_mp_phase, __ATOMIC_SEQ_CST) & 1;
    int handled = 0;
    __atomic_fetch_add(&ww_mp_readers[phase], 1, __ATOMIC_SEQ_CST);
    struct ww_mp_region *r = ww_mp_lookup(addr);
    if (r == NULL)
        goto out;
    size_t i = (addr - r->base) >> r->shift;
    for (int attempt = 0; attempt < 4 && !handled; attempt++) {
        uint8_t b = ww_mp_load(r, i);
        unsigned prot = WW_MP_PROT(r, b);
        if (!(prot & PROT_WRITE))
            goto out;                   /* the caller forbade writing: real fault */
        if (b & WW_MP_W) {
            /* A reset crossed us (W set, protection taken): give it back,
             * and set W again after that -- the reset may have cleared it
             * and re-protected in between, and the retried write must
             * count. */
#if !defined(__x86_64__) || defined(WW_MP_NO_ERRCODE)
            /* Without the fault's error code, an instruction fetch from a
             * page without PROT_EXEC looks like this and would come back
             * forever: the same address over and over is not ours. */
            if (ww_mp_repeats(addr) >= WW_MP_LOOP_MAX)
                goto out;
#endif
            if (ww_mp_mprotect(r, i, i + 1, prot) == 0) {
                __atomic_fetch_or(&r->state[i], WW_MP_W, __ATOMIC_ACQ_REL);
                handled = 1;
            } else if (ww_mp_widen(r, i, prot) == 0) {
                handled = 1;
            }
        } else {
            long d = ww_mp_delta(r, i, i + 1, prot & ~(unsigned)PROT_WRITE, prot);
            int rc = ww_mp_over_budget(d) ? 1 : ww_mp_mprotect(r, i, i + 1, prot);
            if (rc == 0) {
                __atomic_fetch_or(&r->state[i], WW_MP_W, __ATOMIC_ACQ_REL);
                ww_mp_account(r, d);
                handled = 1;
            } else if (rc == -ENOMEM && ww_mp_widen_region(r) == 0) {
                handled = 1;
            } else if (ww_mp_widen(r, i, prot) == 0) {
                handled = 1;
            }
        }
        if (handled) {
            /* A concurrent protect() may have changed the caller's
             * protection while we applied the old one: apply the new. */
            for (int k = 0; k < 4; k++) {
                uint8_t now = ww_mp_load(r, i);
                if (WW_MP_PROT(r, now) == prot)
                    break;
                prot = WW_MP_PROT(r, now);
                ww_mp_mprotect(r, i, i + 1, ww_mp_kprot(r, now));
            }
        }
    }
    if (!handled)
        ww_mp_say("writewatch: mprotect backend could not make a tracked page "
                  "writable (vm.max_map_count?); treating the fault as fatal\n");
    __atomic_add_fetch(&ww_mp_nfaults, 1, __ATOMIC_RELAXED);
out:
    __atomic_fetch_sub(&ww_mp_readers[phase], 1, __ATOMIC_SEQ_CST);
    return handled;
}

static void ww_mp_handler(int sig, siginfo_t *si, void *uctx);

/* Hand a fault that is not ours to the handler that was there before. */
static void ww_mp_chain(int sig, siginfo_t *si, void *uctx)
{
    struct sigaction prev = ww_mp_prev[__atomic_load_n(&ww_mp_prev_idx, __ATOMIC_ACQUIRE)];
    int kernel = si->si_code > 0;
    int tid = ww_mp_gettid();
    unsigned t = (unsigned)tid % WW_MP_TSLOTS;
    uintptr_t addr = (uintptr_t)si->si_addr;

    if (ww_mp_threads[t].tid != tid) {
        ww_mp_threads[t].tid = tid;
        ww_mp_threads[t].depth = 0;
        ww_mp_threads[t].addr = 0;
        ww_mp_threads[t].count = 0;
    }
    /* A handler we chained to and that raise()d the signal again while
     * still inside: a cycle (faulthandler enabled over us, then us over it).
     * A fault from the kernel is never such a re-entry; depth may also be
     * stale after a handler that left by siglongjmp(). */
    if (kernel)
        ww_mp_threads[t].depth = 0;
    int looping = ww_mp_threads[t].depth > 0
                  || (kernel && ww_mp_threads[t].addr == addr &&
                      ww_mp_threads[t].count >= WW_MP_LOOP_MAX);
    int is_default = !(prev.sa_flags & SA_SIGINFO) &&
                     (prev.sa_handler == SIG_DFL || prev.sa_handler == SIG_IGN);
    if ((prev.sa_flags & SA_SIGINFO) && prev.sa_sigaction == ww_mp_handler)
        is_default = 1;                 /* never chain to ourselves */

    if (looping || is_default) {
        struct sigaction dfl;
        if (looping && ww_mp_threads[t].depth > 0)
            ww_mp_say("writewatch: SIGSEGV handlers chain back into each other; "
                      "restoring the default action\n");
        else if (looping)
            ww_mp_say("writewatch: the previous SIGSEGV handler returned without "
                      "resolving a fault; restoring the default action\n");
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        sigaction(sig, &dfl, NULL);
        __atomic_store_n(&ww_mp_installed, 0, __ATOMIC_RELEASE);
        if (!kernel)
            raise(sig);                 /* sent, not a fault: send it again */
        return;                         /* a fault: it re-faults, and kills */
    }
    ww_mp_threads[t].depth++;
    if (prev.sa_flags & SA_SIGINFO)
        prev.sa_sigaction(sig, si, uctx);
    else
        prev.sa_handler(sig);
    ww_mp_threads[t].depth--;
    /* It returned: if the same fault comes straight back, count it. */
    if (kernel) {
        if (ww_mp_threads[t].addr == addr) {
            ww_mp_threads[t].count++;
        } else {
            ww_mp_threads[t].addr = addr;
            ww_mp_threads[t].count = 1;
        }
    }
}

static inline int ww_mp_is_write(void *uctx)
{
#if defined(__x86_64__) && !defined(WW_MP_NO_ERRCODE)
    /* The page-fault error code: bit 1 write, bit 4 instruction fetch. */
    unsigned long err = (unsigned long)((ucontext_t *)uctx)->uc_mcontext.gregs[REG_ERR];
    return (err & 2) && !(err & 16);
#else
    (void)uctx;
    return 1;     /* elsewhere: ww_mp_repeats() catches a non-write fault */
#endif
}

static void ww_mp_handler(int sig, siginfo_t *si, void *uctx)
{
    int saved = errno;
    if (si->si_code == SEGV_ACCERR && ww_mp_is_write(uctx) &&
        ww_mp_resolve((uintptr_t)si->si_addr)) {
        errno = saved;
        return;
    }
    ww_mp_chain(sig, si, uctx);
    errno = saved;
}

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

    if (!committed)
        return r;                   /* PROT_NONE already; commits arm */
    /* Fault one page in first, so the whole mapping gets its anon_vma now.
     * Otherwise every page first written after a split gets one of its own,
     * and the kernel can never merge the VMAs again once they are re-armed
     * (seen on 6.18 with MAP_NORESERVE): the map count would only grow. */
    ww_touch_page(base);
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
        unsigned left = ww_mp_kprot(r, ww_mp_load(r, s->a - 1));
        d += (left != clean) - (left != prot);
    }
    if (s->b < r->npages) {
        unsigned right = ww_mp_kprot(r, ww_mp_load(r, s->b));
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

/* Change the caller-visible protection of [start, end) to prot, keeping W.
 * Done run by run (pages whose bytes agree); a run the kernel refuses gets
 * its old protection back and the call fails with that error. */
static int ww_mp_protect(struct ww_mp_region *r, uintptr_t start, uintptr_t end, int prot,
                         const char **what)
{
    size_t i = (start - r->base) >> r->shift, e = (end - r->base) >> r->shift;
    unsigned newp = (unsigned)prot & 7u;
    int rc = 0;
    pthread_mutex_lock(&r->lock);
    while (i < e) {
        uint8_t b0 = ww_mp_load(r, i);
        size_t j = i + 1;
        while (j < e && ww_mp_load(r, j) == b0)
            j++;
        unsigned before = ww_mp_kprot(r, b0);
        unsigned after = (b0 & WW_MP_W) ? newp : (newp & ~(unsigned)PROT_WRITE);
        long d = ww_mp_delta(r, i, j, before, after);
        for (size_t k = i; k < j; k++) {
            uint8_t cur = ww_mp_load(r, k), want;
            do {
                want = (uint8_t)((cur & WW_MP_W) | WW_MP_BYTE(r, newp));
            } while (!__atomic_compare_exchange_n(&r->state[k], &cur, want, 0,
                                                  __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
        }
        rc = ww_mp_mprotect(r, i, j, after);
        if (rc < 0) {
            for (size_t k = i; k < j; k++) {
                uint8_t cur = ww_mp_load(r, k), want;
                do {
                    want = (uint8_t)((cur & WW_MP_W) | (b0 & ~WW_MP_W));
                } while (!__atomic_compare_exchange_n(&r->state[k], &cur, want, 0,
                                                      __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
            }
            *what = "mprotect";
            break;
        }
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
        size_t j = i + 1;
        while (j < e && ww_mp_load(r, j) == b0)
            j++;
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
 * (kernel protection without write permission). */
static int ww_mp_commit(struct ww_mp_region *r, uintptr_t start, uintptr_t end, int prot,
                        const char **what)
{
    size_t i = (start - r->base) >> r->shift, e = (end - r->base) >> r->shift;
    int rc;
    pthread_mutex_lock(&r->lock);
    long d = ww_mp_delta(r, i, e, PROT_NONE, (unsigned)prot & ~(unsigned)PROT_WRITE);
    for (size_t k = i; k < e; k++)
        __atomic_store_n(&r->state[k], WW_MP_BYTE(r, prot), __ATOMIC_RELEASE);
    rc = ww_mp_mprotect(r, i, e, (unsigned)prot & ~(unsigned)PROT_WRITE);
    if (rc < 0) {
        for (size_t k = i; k < e; k++)
            __atomic_store_n(&r->state[k], WW_MP_BYTE(r, PROT_NONE), __ATOMIC_RELEASE);
        *what = "mprotect";
    } else {
        ww_mp_account(r, d);
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

/* Win32 decommit of [start, end): no access, contents dropped, not
 * written.  A fresh PROT_NONE mapping replaces the range, which gives back
 * the page tables its written pages filled (MADV_DONTNEED keeps them); it
 * gets the region's VMA name again. */
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
        size_t b = a + 1;
        while (b < e && ww_mp_load(r, b) == b0)
            b++;
        d += ww_mp_delta(r, a, b, ww_mp_kprot(r, b0), PROT_NONE);
        a = b;
    }
    rc = ww_mp_mprotect(r, i, e, PROT_NONE);
    if (rc < 0) {
        *what = "mprotect";
    } else {
        for (size_t k = i; k < e; k++)
            __atomic_store_n(&r->state[k], WW_MP_BYTE(r, PROT_NONE), __ATOMIC_RELEASE);
        ww_mp_account(r, d);
        void *p = mmap((void *)start, end - start, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
        if (p == MAP_FAILED) {
            rc = -errno;
            *what = "mmap(MAP_FIXED, PROT_NONE)";
        } else {
            madvise(p, end - start, MADV_NOHUGEPAGE);
            prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, start, end - start, r->name);
        }
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

/* Regions in the table now: for tests. */
static long ww_mp_regions(void)
{
    long n = 0;
    unsigned hwm = __atomic_load_n(&ww_mp_hwm, __ATOMIC_ACQUIRE);
    for (unsigned i = 0; i < hwm; i++)
        n += __atomic_load_n(&ww_mp_table[i], __ATOMIC_ACQUIRE) != NULL;
    return n;
}

/* VMAs in [start, end) per /proc/self/maps: for tests. */
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

#endif /* WRITEWATCH_MPROTECT_HANDLER_H */
