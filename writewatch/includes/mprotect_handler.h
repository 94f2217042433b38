/*
 * mprotect_handler.h - the `mprotect` backend's signal side: the process-
 * wide SIGSEGV handler and everything it can reach.  The control side (arm,
 * scan, protect, commit and decommit, the VMA budget, the watchdog) is in
 * mprotect_control.h, which includes this file.
 *
 * THE RULE OF THIS FILE: no locks, no allocation, async-signal-safe calls
 * only.  Everything here may run in signal context, on any thread, between
 * any two instructions -- inside malloc(), holding any lock, holding the
 * GIL, or inside a control call of this very backend.  So it takes no lock
 * (not even the control side's spin lock, whose holder it may have
 * interrupted), allocates nothing, calls only mprotect, write, sigaction,
 * raise and syscall(SYS_gettid), keeps its shared state in atomics, and
 * gives errno back as it found it.
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
 * Regions are found in a fixed table of atomic pointers; a region's memory
 * is freed only after a grace period (two-phase reader counts, as SRCU
 * does) in which every handler that could have seen it has left.
 *
 * Budget of VMAs: every run of pages with one kernel protection is a VMA,
 * and a process has at most vm.max_map_count of them.  The handler keeps an
 * estimate of the VMAs its splits add; when a split would go over the
 * budget, it makes the whole clean run around the page writable instead --
 * no split -- and marks all of it written.  When the kernel refuses a split
 * (ENOMEM: the process is at the limit), or the clean run does not end on
 * VMA boundaries either, it makes every run of writable caller protection
 * in the region writable (whole VMAs, see below) and marks them written.
 * Reports then are a superset of the pages written, never a subset.
 *
 * That last step needs each run of pages whose caller protection allows
 * writing to begin and end on VMA boundaries.  Kernel protections alone do
 * not give that: a clean read/write page is kept read-only, as is a page
 * the caller made read-only, and the kernel merges the two into one VMA --
 * then no write to the clean page could be resolved without a split, and at
 * a full vm.max_map_count the process would die of its first write there.
 * So the control side marks every page whose caller protection forbids
 * writing MADV_RANDOM (for anonymous memory it only turns off swap
 * readahead) and every other MADV_NORMAL: the kernel never merges VMAs with
 * different hints.  A VMA is then told by a key, its kernel protection and
 * hint (ww_mp_vkey).  With that, no write to a page the caller may write
 * fails -- as long as nothing else changes the hints of tracked pages, and
 * the region's own edges are VMA boundaries.  Its VMAs carry a name of
 * their own where the kernel has CONFIG_ANON_VMA_NAME.  Without it, two
 * neighbours with the same flags share a VMA when they share an anon_vma,
 * or when one of them was never written (no anon_vma yet).  A plain region
 * takes its first fault at arm under a hint no neighbour keeps, so that it
 * gets an anon_vma of its own (ww_mp_arm); a win32 reservation's committed
 * pages before their first write, next to another region, still share a
 * VMA with it -- and a write there at a full map count still ends the
 * process (docs/backends.md).
 */
#ifndef WRITEWATCH_MPROTECT_HANDLER_H
#define WRITEWATCH_MPROTECT_HANDLER_H

#include "ww_common.h"

#include <signal.h>
#include <ucontext.h>

#define WW_MP_W          1u
#define WW_MP_HINTED     8u             /* in a VMA key: the run carries MADV_RANDOM */
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

/* ---- state shared with the control side ------------------------------- */

static struct ww_mp_region *ww_mp_table[WW_MP_SLOTS];
static unsigned ww_mp_hwm;              /* slots in use are below this */
static unsigned ww_mp_last;             /* slot of the last hit: looked at first */
static unsigned long ww_mp_readers[2];  /* handlers inside, by phase */
static unsigned ww_mp_phase;
static long ww_mp_vmas;                 /* VMAs added by splits, all regions */
static long ww_mp_vma_limit = 1L << 62; /* ... may grow to this */
static int ww_mp_degraded;              /* a split was refused: budget to be taken again */

static struct sigaction ww_mp_prev[2];  /* the handler we chain to, double-buffered */
static int ww_mp_prev_idx;
static int ww_mp_installed;

/* What the loop guards (ww_mp_chain, and ww_mp_repeats where the fault's
 * error code is not available) remember per thread: one slot per
 * tid % WW_MP_TSLOTS, taken over by writing the tid into it.  Plain memory,
 * no lock (the rule above).
 *
 * Two threads whose tids are equal modulo WW_MP_TSLOTS share a slot.  That
 * is harmless to tracking on x86-64: the slot holds nothing about regions
 * or pages, and is used only for faults that are not ours, on their way to
 * the previous handler.  It is not harmless to the guards, which exist to
 * turn a fault loop into a crash instead of a hang.  A thread that finds
 * another tid in the slot starts it afresh, so two such threads in fault
 * loops at the same time can keep resetting each other's count -- both spin
 * instead of being stopped -- and one thread can read the other's fields
 * between its check of the tid and its use of them, so that the default
 * action is restored for a fault that was going to the previous handler
 * anyway (with faulthandler: the crash comes without its traceback).
 * Without the error code (WW_MP_NO_ERRCODE, or not x86-64) ww_mp_repeats()
 * counts faults on tracked pages too, and there a fault it takes for a loop
 * is handed on as a real one, which ends the process: a shared slot can add
 * another thread's faults to the count -- and the count is not forgotten
 * when a fault is resolved, so one thread alone that takes 16 such faults
 * (a reset crossing its write) at one address, none elsewhere in between,
 * meets the same end. */
static struct {
    int tid;
    int depth;                          /* inside a chained handler */
    uintptr_t addr;
    unsigned count;                     /* chained faults at addr that came back */
} ww_mp_threads[WW_MP_TSLOTS];

/* Counters for tests and the report (approximate under races). */
static unsigned long ww_mp_nfaults, ww_mp_nwidened, ww_mp_nkept;

/* ---- small helpers, all async-signal-safe --------------------------------- */

static inline int ww_mp_gettid(void) { return (int)syscall(SYS_gettid); }

static inline unsigned ww_mp_kprot(const struct ww_mp_region *r, uint8_t b)
{
    unsigned p = WW_MP_PROT(r, b);
    return (b & WW_MP_W) ? p : (p & ~(unsigned)PROT_WRITE);
}

/* The key of the VMA a page with state b belongs in: two neighbouring runs
 * of pages share a VMA only if their keys are equal (see the hints above). */
static inline unsigned ww_mp_vkey(const struct ww_mp_region *r, uint8_t b)
{
    return ww_mp_kprot(r, b) | ((WW_MP_PROT(r, b) & PROT_WRITE) ? 0u : WW_MP_HINTED);
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

/* How many VMAs the region gains if pages [a, b), all with VMA key
 * `before` now (ww_mp_vkey), get `after`.  Region edges are always VMA
 * boundaries and do not count. */
static long ww_mp_delta(const struct ww_mp_region *r, size_t a, size_t b,
                        unsigned before, unsigned after)
{
    long d = 0;
    if (before == after)
        return 0;
    if (a > 0) {
        unsigned left = ww_mp_vkey(r, ww_mp_load(r, a - 1));
        d += (left != after) - (left != before);
    }
    if (b < r->npages) {
        unsigned right = ww_mp_vkey(r, ww_mp_load(r, b));
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
 * VMAs, thanks to the hints: no split) and counts as written.  No more splits until the budget
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
            } else if (ww_mp_widen(r, i, prot) == 0 || ww_mp_widen_region(r) == 0) {
                handled = 1;            /* the split was refused: see the top */
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
            } else if (rc != -ENOMEM && ww_mp_widen_region(r) == 0) {
                handled = 1;            /* over budget, and the run needs a split */
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

#endif /* WRITEWATCH_MPROTECT_HANDLER_H */
