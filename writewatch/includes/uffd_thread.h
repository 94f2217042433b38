/*
 * uffd_thread.h - the `uffd` backend's plain C: synchronous userfaultfd
 * write-protect (Linux >= 5.7) served by one handler thread per process.
 *
 * Why C: the handler resolves page faults of *every* thread, including a
 * Python thread that faults while holding the GIL, so it must never need the
 * GIL -- it is a pthread that only takes the two mutexes below.
 *
 * Design
 * ------
 * One userfaultfd per process, shared by every uffd region, read by one
 * handler thread started with the first region.  (The alternative, one
 * userfaultfd per region behind an epoll set, costs a descriptor per region
 * -- a program holding a thousand regions would hit the usual RLIMIT_NOFILE
 * of 1024 -- plus an epoll_ctl on every open and close, and closing a region
 * would need exactly the same synchronisation with the thread as below.)
 * The thread maps a fault address to its region through a table sorted by
 * address, guarded by ww_uffd.mu.
 *
 * Each region has a dirty bitmap (one bit per page) and a mutex, r->lock.
 * The state we keep is the invariant, true whenever r->lock is free:
 *
 *     bit clear  =>  the page is write-protected (uffd-wp bit or marker),
 *                    or not present at all in MISSING mode, so that the next
 *                    write to it faults to the handler thread.
 *
 * Handler, for a write fault on page p (under r->lock):
 *     (H1) set bit p;   (H2) UFFDIO_WRITEPROTECT mode 0: unprotect p + wake.
 * Get-and-reset, for the set bits of a chunk (under r->lock):
 *     (R1) UFFDIO_WRITEPROTECT MODE_WP over runs;  (R2) clear the bits.
 *
 * Why the lock, i.e. why (H1,H2) and (R1,R2) must not interleave: without it
 *   R1, [fault], H1, H2, R2   leaves p unprotected with its bit clear: the
 *     write that faulted after the protect is reported by this call (fine),
 *     but every later write to p goes unseen -- lost;
 *   H1, R1, R2, H2   likewise: the reset protects and clears, then the
 *     handler unprotects a page whose bit is clear.
 * So the handler must not set a bit and unprotect for a fault that the reset
 * can slip between; with r->lock each pair is atomic against the other and
 * every state after either pair satisfies the invariant.  A write after R1
 * faults (the page is protected), the handler waits for r->lock, and then
 * sets the bit again and unprotects: it is reported by the next call.  A
 * write before R1 went to an unprotected page, whose bit H1 set before H2
 * made the page writable, so R2 reports it.  Nothing is lost.
 *
 * H1 comes before H2 so that a write is never visible before its bit: H2
 * wakes the faulting thread, which may then complete its write and tell
 * another thread, whose get_write_watch() (without reset: lock-free atomic
 * reads) must see the page.
 *
 * Stale events.  Several threads faulting on one page queue several events;
 * the first H2 wakes them all, and the kernel takes a woken waiter's event
 * off the queue if it was not read yet.  Events already read in the same
 * batch are skipped when they repeat a page (dedup below).  What remains is
 * a thread that queued its event just as H2 ran and finds the page
 * writable: if the handler reads that event and a reset of the page comes
 * between, the handler sets the bit and unprotects once more -- a false
 * positive for that page (never a lost write), only under concurrent writes
 * to the same page racing a reset.
 *
 * No lock is ever held across a write to tracked memory: collect() gathers
 * page numbers into a local buffer under r->lock and copies them to the
 * caller's buffer (which may itself be tracked memory) after unlocking; the
 * handler holds ww_uffd.mu and then r->lock (that order, always) only around
 * ioctls that never wait for a fault.  So nothing the handler needs is held
 * by a thread waiting for the handler.
 *
 * Never-touched pages.  A fresh anonymous page has no page-table entry to
 * carry a uffd-wp bit.  With UFFD_FEATURE_WP_UNPOPULATED (Linux 6.4) the
 * WRITEPROTECT ioctl installs a marker there and the first write faults like
 * any other (mode WW_UFFD_MARKERS).  Without it (6.1 and older) we register
 * MODE_MISSING as well (mode WW_UFFD_MISSING): the first access of any kind
 * to an empty page is a MISSING fault; the handler maps a zero page with
 * UFFDIO_COPY -- writable with its bit set for a write, write-protected
 * (UFFDIO_COPY_MODE_WP) for a read.  We do not pre-populate (MADV_POPULATE_
 * WRITE or touching): that would commit the whole region, gigabytes for a
 * sparse region, where the MISSING route commits only pages touched.
 *
 * Kernel-mode faults (read(2) into the region) reach the handler too, as
 * long as the userfaultfd was opened without UFFD_USER_MODE_ONLY.  Unprivi-
 * leged processes with vm.unprivileged_userfaultfd=0 can only open it with
 * that flag: then a kernel write into an armed page fails with EFAULT (the
 * kernel turns the fault into SIGBUS for the copy, not a message);
 * ww_uffd.user_mode_only records that and the probe reports it.
 *
 * fork().  We never ask for UFFD_FEATURE_EVENT_FORK, so the kernel drops
 * the registration (and the uffd-wp bits) in the child's copy: the child
 * writes freely and never waits for a handler it does not have.  The child
 * inherits our state as it was at fork, maybe with a mutex held by the
 * parent's handler thread: a pthread_atfork child handler starts over with
 * fresh mutexes, an empty table and no descriptor.  Regions made before the
 * fork carry the old fork generation and are left alone (their memory is
 * not registered in the child); regions made in the child get a new
 * userfaultfd and a new handler thread.
 */
#ifndef WRITEWATCH_UFFD_THREAD_H
#define WRITEWATCH_UFFD_THREAD_H

#include "ww_common.h"

#include <signal.h>
#include <stdlib.h>
#include <time.h>

#define WW_UFFD_MARKERS 1   /* WP only; WP_UNPOPULATED markers on empty pages */
#define WW_UFFD_MISSING 2   /* MISSING|WP; empty pages fault as MISSING     */

#define WW_UFFD_BATCH 64    /* messages per read(2) */
#define WW_UFFD_CHUNK 1024  /* pages handled per r->lock hold in collect()  */

typedef struct ww_uffd_region {
    uintptr_t base, end;
    size_t page;
    unsigned shift;
    uint64_t *bits;          /* written since last reset (ww_common.h)      */
    pthread_mutex_t lock;    /* pairs (H1,H2) and (R1,R2) above             */
    uint64_t gen;            /* fork generation the region was armed in    */
    int in_table;
    int registered;
} ww_uffd_region;

static struct {
    pthread_mutex_t mu;      /* guards the fields below and the table       */
    int fd;                  /* the shared userfaultfd, -1 before first use */
    int mode;                /* WW_UFFD_MARKERS or WW_UFFD_MISSING          */
    int user_mode_only;
    uint64_t features;       /* what the kernel offers (UFFDIO_API)          */
    int thread;              /* the handler thread runs                     */
    int init_err;            /* -errno of a failed first use, 0 otherwise   */
    const char *init_what;
    void *zero;              /* a zeroed page, UFFDIO_COPY's source          */
    ww_uffd_region **tab;    /* live regions sorted by base                 */
    size_t ntab, captab;
    /* test hook: while set, the handler reads events but holds them back */
    pthread_mutex_t hold_mu;
    pthread_cond_t hold_cv;
    int hold;
    /* counters (atomics) */
    uint64_t n_wp, n_missing, n_stray, n_other, n_dup;
} ww_uffd = {
    PTHREAD_MUTEX_INITIALIZER, -1, 0, 0, 0, 0, 0, NULL, NULL, NULL, 0, 0,
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0,
    0, 0, 0, 0, 0,
};

static pthread_once_t ww_uffd_once = PTHREAD_ONCE_INIT;

static void ww_uffd_atfork_child(void)
{
    /* Single-threaded here.  The parent's descriptor refers to the parent's
     * mm: never use it in the child (registering through it would register
     * the *parent's* addresses).  Dropping our reference leaves the parent's
     * untouched.  The table and zero page are plain memory copies: forget
     * the table (its regions belong to the parent), keep the zero page. */
    pthread_mutex_init(&ww_uffd.mu, NULL);
    pthread_mutex_init(&ww_uffd.hold_mu, NULL);
    pthread_cond_init(&ww_uffd.hold_cv, NULL);
    if (ww_uffd.fd >= 0)
        close(ww_uffd.fd);
    ww_uffd.fd = -1;
    ww_uffd.thread = 0;
    ww_uffd.init_err = 0;
    ww_uffd.hold = 0;
    ww_uffd.ntab = 0;
}

static void ww_uffd_install_atfork(void)
{
    pthread_atfork(NULL, NULL, ww_uffd_atfork_child);
}

/* ---- small ioctl wrappers (return 0 or -errno) ------------------------- */

static inline int ww_uffd_wp(int fd, uintptr_t start, size_t len, int protect)
{
    struct uffdio_writeprotect wp;
    long rc;
    int tries = 0;
    wp.range.start = start;
    wp.range.len = len;
    wp.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0;
    /* EAGAIN: mm changing under a non-cooperative event (none requested). */
    while ((rc = ww_ioctl(fd, UFFDIO_WRITEPROTECT, &wp)) == -EAGAIN && ++tries < 1000)
        sched_yield();
    return rc < 0 ? (int)rc : 0;
}

static inline void ww_uffd_wake(int fd, uintptr_t start, size_t len)
{
    struct uffdio_range range;
    range.start = start;
    range.len = len;
    ww_ioctl(fd, UFFDIO_WAKE, &range);
}

static inline int ww_uffd_copy_zero(int fd, uintptr_t dst, size_t page, int protect)
{
    struct uffdio_copy copy;
    long rc;
    int tries = 0;
    copy.dst = dst;
    copy.src = (uintptr_t)ww_uffd.zero;
    copy.len = page;
    copy.mode = protect ? UFFDIO_COPY_MODE_WP : 0;
    copy.copy = 0;
    while ((rc = ww_ioctl(fd, UFFDIO_COPY, &copy)) == -EAGAIN && ++tries < 1000)
        sched_yield();
    return rc < 0 ? (int)rc : 0;
}

/* ---- the region table (ww_uffd.mu held) -------------------------------- */

static ww_uffd_region *ww_uffd_lookup(uintptr_t addr)
{
    size_t lo = 0, hi = ww_uffd.ntab;
    while (lo < hi) {                       /* first region with base > addr */
        size_t mid = lo + (hi - lo) / 2;
        if (ww_uffd.tab[mid]->base <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return NULL;
    ww_uffd_region *r = ww_uffd.tab[lo - 1];
    return addr < r->end ? r : NULL;
}

static int ww_uffd_table_insert(ww_uffd_region *r)
{
    if (ww_uffd.ntab == ww_uffd.captab) {
        size_t cap = ww_uffd.captab ? 2 * ww_uffd.captab : 16;
        ww_uffd_region **t = (ww_uffd_region **)realloc(ww_uffd.tab, cap * sizeof(*t));
        if (t == NULL)
            return -ENOMEM;
        ww_uffd.tab = t;
        ww_uffd.captab = cap;
    }
    size_t i = ww_uffd.ntab;
    while (i > 0 && ww_uffd.tab[i - 1]->base > r->base) {
        ww_uffd.tab[i] = ww_uffd.tab[i - 1];
        i--;
    }
    ww_uffd.tab[i] = r;
    ww_uffd.ntab++;
    r->in_table = 1;
    return 0;
}

static void ww_uffd_table_remove(ww_uffd_region *r)
{
    size_t i;
    for (i = 0; i < ww_uffd.ntab; i++)
        if (ww_uffd.tab[i] == r)
            break;
    if (i == ww_uffd.ntab)
        return;
    memmove(&ww_uffd.tab[i], &ww_uffd.tab[i + 1],
            (ww_uffd.ntab - i - 1) * sizeof(ww_uffd.tab[0]));
    ww_uffd.ntab--;
    r->in_table = 0;
}

/* ---- the handler thread ------------------------------------------------ */

static void ww_uffd_fault(int fd, uint64_t address, uint64_t flags, size_t page)
{
    uintptr_t addr = (uintptr_t)address & ~(uintptr_t)(page - 1);
    int rc = -ENOENT;
    pthread_mutex_lock(&ww_uffd.mu);
    ww_uffd_region *r = ww_uffd_lookup(addr);
    if (r != NULL) {
        size_t i = (addr - r->base) >> r->shift;
        pthread_mutex_lock(&r->lock);
        if (flags & UFFD_PAGEFAULT_FLAG_WP) {
            /* A write to a protected page or a WP_UNPOPULATED marker. */
            ww_bit_set(r->bits, i);                       /* H1 */
            rc = ww_uffd_wp(fd, addr, page, 0);           /* H2, wakes */
            __atomic_add_fetch(&ww_uffd.n_wp, 1, __ATOMIC_RELAXED);
        } else if (ww_uffd.mode == WW_UFFD_MISSING) {
            /* First access to an empty page (MISSING mode only). */
            if (flags & UFFD_PAGEFAULT_FLAG_WRITE) {
                ww_bit_set(r->bits, i);
                rc = ww_uffd_copy_zero(fd, addr, page, 0);
            } else {
                rc = ww_uffd_copy_zero(fd, addr, page, 1);
            }
            /* EEXIST: another fault mapped it first; the wake below lets
             * this thread retry (a write then takes a WP fault). */
            __atomic_add_fetch(&ww_uffd.n_missing, 1, __ATOMIC_RELAXED);
        }
        pthread_mutex_unlock(&r->lock);
    } else {
        /* Its region was closed (unregistering already woke the thread)
         * or is not ours: waking is all that is left to do. */
        __atomic_add_fetch(&ww_uffd.n_stray, 1, __ATOMIC_RELAXED);
    }
    if (rc < 0)
        ww_uffd_wake(fd, addr, page);    /* never leave a thread blocked */
    pthread_mutex_unlock(&ww_uffd.mu);
}

static void *ww_uffd_thread_main(void *arg)
{
    int fd = (int)(intptr_t)arg;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    struct uffd_msg msgs[WW_UFFD_BATCH];
    sigset_t all;
    /* Signals are for the interpreter's threads; a blocking read here need
     * not care about EINTR. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    for (;;) {
        ssize_t n = read(fd, msgs, sizeof(msgs));
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            if (errno == EBADF)
                return NULL;
            struct timespec ts = {0, 1000000};   /* unexpected: do not spin */
            nanosleep(&ts, NULL);
            continue;
        }
        if (__atomic_load_n(&ww_uffd.hold, __ATOMIC_ACQUIRE)) {
            pthread_mutex_lock(&ww_uffd.hold_mu);
            while (ww_uffd.hold)
                pthread_cond_wait(&ww_uffd.hold_cv, &ww_uffd.hold_mu);
            pthread_mutex_unlock(&ww_uffd.hold_mu);
        }
        size_t count = (size_t)n / sizeof(struct uffd_msg);
        for (size_t k = 0; k < count; k++) {
            struct uffd_msg *m = &msgs[k];
            if (m->event == UFFD_EVENT_PAGEFAULT) {
                uint64_t a = m->arg.pagefault.address & ~(uint64_t)(page - 1);
                uint64_t f = m->arg.pagefault.flags;
                size_t j;
                for (j = 0; j < k; j++)      /* same page, same kind, earlier */
                    if (msgs[j].event == UFFD_EVENT_PAGEFAULT && msgs[j].arg.pagefault.flags == f
                        && (msgs[j].arg.pagefault.address & ~(uint64_t)(page - 1)) == a)
                        break;
                if (j < k) {    /* its thread was woken with the first one */
                    __atomic_add_fetch(&ww_uffd.n_dup, 1, __ATOMIC_RELAXED);
                    continue;
                }
                ww_uffd_fault(fd, a, f, page);
            } else {
                /* Events we never asked for.  A fork event carries a new
                 * descriptor we must not leak; the others (remap, remove,
                 * unmap) need only to have been read. */
                if (m->event == UFFD_EVENT_FORK)
                    close((int)m->arg.fork.ufd);
                __atomic_add_fetch(&ww_uffd.n_other, 1, __ATOMIC_RELAXED);
            }
        }
    }
    return NULL;
}

/* The kernel's offer: a throwaway descriptor for the UFFDIO_API handshake
 * (features can be requested only once per descriptor).  0 or -errno. */
static int ww_uffd_query(int flags, uint64_t *features)
{
    struct uffdio_api api;
    int fd = ww_userfaultfd(O_CLOEXEC | flags);
    if (fd < 0)
        return fd;
    api.api = UFFD_API;
    api.features = 0;
    api.ioctls = 0;
    long rc = ww_ioctl(fd, UFFDIO_API, &api);
    close(fd);
    if (rc < 0)
        return (int)rc;
    *features = api.features;
    return 0;
}

/* First use in this process (or this forked child): open the shared
 * descriptor, shake hands, start the thread.  ww_uffd.mu held.
 * Environment knobs for tests only: _WRITEWATCH_UFFD_FORCE may hold
 * "missing" (behave as on a kernel without WP_UNPOPULATED) and/or
 * "user-mode-only" (open as an unprivileged process must). */
static int ww_uffd_start(const char **what)
{
    if (ww_uffd.fd >= 0)
        return 0;
    const char *force = getenv("_WRITEWATCH_UFFD_FORCE");
    int force_missing = force && strstr(force, "missing");
    int force_umo = force && strstr(force, "user-mode-only");
    int flags = force_umo ? UFFD_USER_MODE_ONLY : 0;
    uint64_t offer = 0;
    int rc = ww_uffd_query(flags, &offer);
    if (rc == -EPERM && !flags) {
        /* Unprivileged with vm.unprivileged_userfaultfd=0: only user-mode
         * faults may be handled, kernel writes will get EFAULT. */
        flags = UFFD_USER_MODE_ONLY;
        rc = ww_uffd_query(flags, &offer);
    }
    if (rc < 0) {
        *what = flags ? "userfaultfd(UFFD_USER_MODE_ONLY)" : "userfaultfd";
        return rc;
    }
    if (!(offer & UFFD_FEATURE_PAGEFAULT_FLAG_WP)) {
        *what = "userfaultfd write-protect (UFFD_FEATURE_PAGEFAULT_FLAG_WP, Linux >= 5.7)";
        return -ENOSYS;
    }
    int mode = (offer & UFFD_FEATURE_WP_UNPOPULATED) && !force_missing
               ? WW_UFFD_MARKERS : WW_UFFD_MISSING;
    if (mode == WW_UFFD_MISSING && ww_uffd.zero == NULL) {
        void *z = mmap(NULL, (size_t)sysconf(_SC_PAGESIZE), PROT_READ,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (z == MAP_FAILED) {
            *what = "mmap";
            return -errno;
        }
        ww_uffd.zero = z;
    }
    int fd = ww_userfaultfd(O_CLOEXEC | flags);      /* blocking reads */
    if (fd < 0) {
        *what = "userfaultfd";
        return fd;
    }
    struct uffdio_api api;
    api.api = UFFD_API;
    api.features = mode == WW_UFFD_MARKERS ? UFFD_FEATURE_WP_UNPOPULATED : 0;
    api.ioctls = 0;
    long lrc = ww_ioctl(fd, UFFDIO_API, &api);
    if (lrc < 0) {
        close(fd);
        *what = "ioctl(UFFDIO_API)";
        return (int)lrc;
    }
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    rc = pthread_create(&th, &attr, ww_uffd_thread_main, (void *)(intptr_t)fd);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        close(fd);
        *what = "pthread_create";
        return -rc;
    }
    ww_uffd.fd = fd;
    ww_uffd.mode = mode;
    ww_uffd.user_mode_only = flags != 0;
    ww_uffd.features = offer;
    ww_uffd.thread = 1;
    return 0;
}

/* Make sure the descriptor and thread exist; 0 or -errno. */
static int ww_uffd_ensure(const char **what)
{
    pthread_once(&ww_uffd_once, ww_uffd_install_atfork);
    pthread_mutex_lock(&ww_uffd.mu);
    int rc = ww_uffd_start(what);
    pthread_mutex_unlock(&ww_uffd.mu);
    return rc;
}

/* ---- regions ----------------------------------------------------------- */

static ww_uffd_region *ww_uffd_region_new(void)
{
    ww_uffd_region *r = (ww_uffd_region *)calloc(1, sizeof(*r));
    if (r != NULL)
        pthread_mutex_init(&r->lock, NULL);
    return r;
}

static void ww_uffd_detach(ww_uffd_region *r);

/* Register and write-protect [start, end) of r: its pages fault on their
 * next write.  Called for a whole fresh region, and for each commit of a
 * reservation (the range is then a fresh PROT_NONE mapping, not registered).
 * On failure nothing in the range stays registered. */
static int ww_uffd_register_range(ww_uffd_region *r, uintptr_t start, uintptr_t end,
                                  const char **what)
{
    struct uffdio_register reg;
    struct uffdio_range range;
    long lrc;
    int rc, fd = ww_uffd.fd, mode = ww_uffd.mode;
    reg.range.start = start;
    reg.range.len = end - start;
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    if (mode == WW_UFFD_MISSING)
        reg.mode |= UFFDIO_REGISTER_MODE_MISSING;
    reg.ioctls = 0;
    lrc = ww_ioctl(fd, UFFDIO_REGISTER, &reg);
    if (lrc < 0) {
        *what = mode == WW_UFFD_MISSING ? "ioctl(UFFDIO_REGISTER) mode MISSING|WP"
                                        : "ioctl(UFFDIO_REGISTER) mode WP";
        return (int)lrc;
    }
    r->registered = 1;
    if (!(reg.ioctls & ((uint64_t)1 << _UFFDIO_WRITEPROTECT))
        || (mode == WW_UFFD_MISSING && !(reg.ioctls & ((uint64_t)1 << _UFFDIO_COPY)))) {
        *what = "ioctl(UFFDIO_REGISTER): no UFFDIO_WRITEPROTECT on anonymous memory";
        rc = -ENOTSUP;
        goto undo;
    }
    /* Markers mode: installs a marker on every empty page (fills the page
     * tables: ~2 MiB and a few ms per GiB).  Missing mode: protects any page
     * already present (none, in a fresh range); empty pages fault anyway. */
    rc = ww_uffd_wp(fd, start, end - start, 1);
    if (rc < 0) {
        *what = "ioctl(UFFDIO_WRITEPROTECT)";
        goto undo;
    }
    return 0;
undo:
    range.start = start;
    range.len = end - start;
    ww_ioctl(fd, UFFDIO_UNREGISTER, &range);
    return rc;
}

/* Set up r for [base, base+size), freshly mapped and empty: in the table,
 * with a bitmap; committed: registered and protected whole.  A reservation
 * (committed 0) is registered piecewise by ww_uffd_commit().  The bitmap is
 * calloc'd: for a large reservation that is an mmap whose pages cost
 * nothing until a bit is set in them. */
static int ww_uffd_arm(ww_uffd_region *r, uintptr_t base, size_t size, size_t page,
                       int committed, const char **what)
{
    int rc;
    r->base = base;
    r->end = base + size;
    r->page = page;
    r->shift = (unsigned)__builtin_ctzl(page);
    r->gen = ww_fork_generation();
    r->bits = ww_bits_new(size >> r->shift);
    if (r->bits == NULL) {
        *what = "calloc";
        return -ENOMEM;
    }
    pthread_once(&ww_uffd_once, ww_uffd_install_atfork);
    pthread_mutex_lock(&ww_uffd.mu);
    rc = ww_uffd_start(what);
    if (rc == 0) {
        rc = ww_uffd_table_insert(r);
        if (rc < 0)
            *what = "realloc";
    }
    pthread_mutex_unlock(&ww_uffd.mu);
    if (rc < 0)
        return rc;
    if (!committed)
        return 0;
    rc = ww_uffd_register_range(r, base, base + size, what);
    if (rc < 0)
        ww_uffd_detach(r);
    return rc;
}

/* Unregister, wake every thread blocked on a fault in the range (they retry
 * against plain memory) and leave the table.  After this the
 * handler can no longer reach r (removal happens under ww_uffd.mu, which the
 * handler holds for as long as it uses a region).  In a forked child the
 * region's memory was never registered here: nothing to do. */
static void ww_uffd_detach(ww_uffd_region *r)
{
    if (r->gen != ww_fork_generation())
        return;
    pthread_mutex_lock(&ww_uffd.mu);
    if (r->registered && ww_uffd.fd >= 0) {
        struct uffdio_range range;
        range.start = r->base;
        range.len = r->end - r->base;
        ww_ioctl(ww_uffd.fd, UFFDIO_UNREGISTER, &range);
        /* The kernel wakes waiters on unregister only for MISSING
         * registrations: wake write-protect waiters ourselves. */
        ww_ioctl(ww_uffd.fd, UFFDIO_WAKE, &range);
        r->registered = 0;
    }
    if (r->in_table)
        ww_uffd_table_remove(r);
    pthread_mutex_unlock(&ww_uffd.mu);
}

static void ww_uffd_region_free(ww_uffd_region *r)
{
    if (r == NULL)
        return;
    /* A child's copy of the lock may have been held at fork: leave it. */
    if (r->gen == ww_fork_generation())
        pthread_mutex_destroy(&r->lock);
    free(r->bits);
    free(r);
}

/* Write-protect the runs of idx[0..k) (ascending page numbers), then clear
 * their bits: (R1) then (R2).  r->lock held.  0 or -errno; on failure no
 * bit is cleared (a protected page with its bit set is merely reported). */
static int ww_uffd_reprotect(ww_uffd_region *r, int fd, const uint32_t *idx, size_t k,
                         size_t off, const char **what)
{
    size_t a = 0;
    while (a < k) {
        size_t b = a + 1;
        while (b < k && idx[b] == idx[b - 1] + 1)
            b++;
        int rc = ww_uffd_wp(fd, r->base + ((off + idx[a]) << r->shift),
                            (size_t)(b - a) << r->shift, 1);
        if (rc < 0) {
            *what = "ioctl(UFFDIO_WRITEPROTECT)";
            return rc;
        }
        a = b;
    }
    for (a = 0; a < k; a++)
        ww_bit_clear(r->bits, off + idx[a]);
    return 0;
}

/* The written pages of [start, end) into buf[*n...] (at most limit - *n);
 * with reset, re-arm exactly those.  buf NULL: no output, no limit (a plain
 * reset).  0 or -errno. */
static int ww_uffd_collect(ww_uffd_region *r, uintptr_t start, uintptr_t end, int reset,
                           uint64_t *buf, size_t *n, size_t limit, const char **what)
{
    uint32_t idx[WW_UFFD_CHUNK];
    size_t p = (start - r->base) >> r->shift;
    size_t last = (end - r->base) >> r->shift;
    int fd = ww_uffd.fd;
    while (p < last && (buf == NULL || *n < limit)) {
        size_t stop = last - p > WW_UFFD_CHUNK ? p + WW_UFFD_CHUNK : last;
        size_t room = buf ? limit - *n : (size_t)-1;
        size_t k = 0, i = p;
        if (reset)
            pthread_mutex_lock(&r->lock);
        while (k < room && (i = ww_next_set(r->bits, i, stop)) < stop) {
            idx[k++] = (uint32_t)(i - p);
            i++;
        }
        if (reset && k) {
            int rc = ww_uffd_reprotect(r, fd, idx, k, p, what);
            if (rc < 0) {
                pthread_mutex_unlock(&r->lock);
                return rc;
            }
        }
        if (reset)
            pthread_mutex_unlock(&r->lock);
        if (buf != NULL) {         /* may fault on tracked memory: unlocked */
            for (size_t j = 0; j < k; j++)
                buf[(*n)++] = (uint64_t)(r->base + ((p + idx[j]) << r->shift));
        }
        p = k == room ? p + idx[k - 1] + 1 : stop;
    }
    return 0;
}

/* Win32 decommit: drop the contents and the written state of [start, end).
 * MADV_DONTNEED drops anonymous pages together with their uffd-wp bits and
 * markers; in markers mode WRITEPROTECT puts the markers back, in MISSING
 * mode the now-empty pages fault as MISSING again by themselves.  Under
 * r->lock, so no fault is resolved half-way through. */
static int ww_uffd_discard(ww_uffd_region *r, uintptr_t start, uintptr_t end,
                           const char **what)
{
    int rc = 0;
    size_t first = (start - r->base) >> r->shift;
    size_t last = (end - r->base) >> r->shift;
    pthread_mutex_lock(&r->lock);
    if (madvise((void *)start, end - start, MADV_DONTNEED) != 0) {
        rc = -errno;
        *what = "madvise(MADV_DONTNEED)";
    } else if (ww_uffd.mode == WW_UFFD_MARKERS) {
        rc = ww_uffd_wp(ww_uffd.fd, start, end - start, 1);
        if (rc < 0)
            *what = "ioctl(UFFDIO_WRITEPROTECT)";
    }
    if (rc == 0)
        ww_bits_clear(r->bits, first, last);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

static void ww_uffd_clear_bits(ww_uffd_region *r, uintptr_t start, uintptr_t end)
{
    ww_bits_clear(r->bits, (start - r->base) >> r->shift, (end - r->base) >> r->shift);
}

/* Write-protect all of [start, end) again -- pages, and (markers mode) the
 * empty ones, whose markers a program's MADV_DONTNEED may have dropped --
 * and, with forget, clear its bits.  Under r->lock, so that no fault is
 * resolved half-way (the handler's (H1, H2) against this).  Without forget
 * nothing is lost: a page protected here with its bit set is reported all
 * the same, and its next write faults once more. */
static int ww_uffd_rearm(ww_uffd_region *r, uintptr_t start, uintptr_t end, int forget,
                         const char **what)
{
    int rc;
    pthread_mutex_lock(&r->lock);
    rc = ww_uffd_wp(ww_uffd.fd, start, end - start, 1);
    if (rc < 0)
        *what = "ioctl(UFFDIO_WRITEPROTECT)";
    else if (forget)
        ww_uffd_clear_bits(r, start, end);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

/* Win32 commit of [start, end), a reserved (PROT_NONE, unregistered) part
 * of r: register and protect it while still inaccessible, then open it with
 * prot.  Its bits are clear (a decommit cleared them). */
static int ww_uffd_commit(ww_uffd_region *r, uintptr_t start, uintptr_t end, int prot,
                          const char **what)
{
    int rc = ww_uffd_register_range(r, start, end, what);
    if (rc < 0)
        return rc;
    if (prot != PROT_NONE && mprotect((void *)start, end - start, prot) != 0) {
        struct uffdio_range range;
        rc = -errno;
        range.start = start;
        range.len = end - start;
        ww_ioctl(ww_uffd.fd, UFFDIO_UNREGISTER, &range);
        mprotect((void *)start, end - start, PROT_NONE);
        *what = "mprotect";
        return rc;
    }
    return 0;
}

/* Win32 decommit: a fresh PROT_NONE mapping replaces [start, end) -- pages,
 * registration, markers and the page tables they filled go with the old one
 * -- and its bits are cleared.  Under r->lock, as a discard. */
static int ww_uffd_decommit(ww_uffd_region *r, uintptr_t start, uintptr_t end,
                            const char **what)
{
    pthread_mutex_lock(&r->lock);
    int rc = ww_remap_reserved(start, end, what);
    if (rc == 0)
        ww_uffd_clear_bits(r, start, end);
    pthread_mutex_unlock(&r->lock);
    /* Threads blocked on a fault there (none should be: the pages were
     * being decommitted) retry against the new, inaccessible mapping. */
    struct uffdio_range range;
    range.start = start;
    range.len = end - start;
    ww_ioctl(ww_uffd.fd, UFFDIO_WAKE, &range);
    return rc;
}

/* ---- probe and test helpers -------------------------------------------- */

static void *ww_uffd_writer_main(void *arg)
{
    *(volatile uint8_t *)arg = 1;
    return NULL;
}

/* Write one byte at addr from a new thread and wait up to timeout_ms for it
 * to finish (the handler must resolve its fault).  On timeout, unregister
 * the region, which wakes the thread (its write then lands on plain
 * memory), join it and return -ETIMEDOUT. */
static int ww_uffd_write_in_thread(ww_uffd_region *r, uintptr_t addr, int timeout_ms)
{
    pthread_t th;
    struct timespec ts;
    int rc = pthread_create(&th, NULL, ww_uffd_writer_main, (void *)addr);
    if (rc != 0)
        return -rc;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    rc = pthread_timedjoin_np(th, NULL, &ts);
    if (rc == 0)
        return 0;
    ww_uffd_detach(r);
    pthread_join(th, NULL);
    return -ETIMEDOUT;
}

/* Test hook: hold back (1) or release (0) the events the handler reads. */
static void ww_uffd_set_hold(int on)
{
    pthread_mutex_lock(&ww_uffd.hold_mu);
    __atomic_store_n(&ww_uffd.hold, on, __ATOMIC_RELEASE);
    if (!on)
        pthread_cond_broadcast(&ww_uffd.hold_cv);
    pthread_mutex_unlock(&ww_uffd.hold_mu);
}

#endif /* WRITEWATCH_UFFD_THREAD_H */
