/*
 * ww_common.h - the plain C that more than one backend uses: the fork
 * generation, the process's /proc/self/pagemap descriptor and asynchronous
 * userfaultfd, the system-call wrappers, ww_touch_page(), the decommit's
 * remap (ww_remap_reserved), and the per-page bitmaps of the uffd and
 * softdirty backends.
 *
 * What it keeps: every per-process resource here belongs to the process
 * (and fork generation) that uses it.  A descriptor inherited over fork()
 * still refers to the parent's address space -- pagemap reads the parent's
 * pages, a userfaultfd registers the parent's addresses -- so each is kept
 * together with the fork generation it was opened in and opened afresh by a
 * child.  The argument that no lock can be left held across fork(): the
 * pagemap descriptor takes no lock at all (one atomic compare-and-swap), and
 * the userfaultfd's mutex is re-initialised by a pthread_atfork() child
 * handler, in which only the forking thread exists.
 *
 * Nothing here is called from signal context.
 */
#ifndef WRITEWATCH_WW_COMMON_H
#define WRITEWATCH_WW_COMMON_H

#include "compat.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include "writewatch_abi.h"

/* ---- system-call wrappers ----------------------------------------------- */

/* ioctl(), retried on EINTR; returns the result or -errno. */
static inline long ww_ioctl(int fd, unsigned long req, void *arg)
{
    long r;
    do {
        r = ioctl(fd, req, arg);
    } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

/* userfaultfd(2), which the C library does not wrap; fd or -errno. */
static inline int ww_userfaultfd(int flags)
{
    long r = syscall(SYS_userfaultfd, flags);
    return r < 0 ? -errno : (int)r;
}

/* Write to a page without changing it: an atomic "or 0" is a write access
 * (it takes the write fault) but cannot overwrite a value another thread is
 * storing concurrently. */
static inline void ww_touch_page(uintptr_t addr)
{
    __atomic_fetch_or((volatile uint8_t *)addr, (uint8_t)0, __ATOMIC_RELAXED);
}

/* Replace [start, end) by a fresh PROT_NONE anonymous mapping, in one step:
 * pages, uffd registration and markers go, and page tables the range covers
 * whole are freed (MADV_DONTNEED would keep them, and the markers' are what
 * a win32 reservation must not pay for).  What a decommit does on every
 * backend; 0 or -errno and *what. */
static inline int ww_remap_reserved(uintptr_t start, uintptr_t end, const char **what)
{
    void *p = mmap((void *)start, end - start, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) {
        *what = "mmap(MAP_FIXED, PROT_NONE)";
        return -errno;
    }
    madvise(p, end - start, MADV_NOHUGEPAGE);
    return 0;
}

/* ---- per-page bitmaps ---------------------------------------------------
 * One bit per page of a region, 64 to a word.  Every access is an atomic
 * (sequentially consistent) one, so that a bitmap may be read without its
 * owner's lock -- the uffd backend's get_write_watch() without reset reads
 * bits while its handler thread sets them -- and no set can be lost to a
 * concurrent clear of another bit of the same word.  Under a lock (the
 * softdirty backend) they cost little next to the system calls around them. */

/* A bitmap of nbits zero bits (at least one word), or NULL.  calloc'd: for
 * a large region an mmap whose pages cost nothing until a bit is set. */
static inline uint64_t *ww_bits_new(size_t nbits)
{
    size_t words = (nbits + 63) / 64;
    return (uint64_t *)calloc(words ? words : 1, sizeof(uint64_t));
}

static inline void ww_bit_set(uint64_t *bits, size_t i)
{
    __atomic_fetch_or(&bits[i >> 6], (uint64_t)1 << (i & 63), __ATOMIC_SEQ_CST);
}

static inline void ww_bit_clear(uint64_t *bits, size_t i)
{
    __atomic_fetch_and(&bits[i >> 6], ~((uint64_t)1 << (i & 63)), __ATOMIC_SEQ_CST);
}

static inline int ww_bit_test(const uint64_t *bits, size_t i)
{
    return (int)((__atomic_load_n(&bits[i >> 6], __ATOMIC_SEQ_CST) >> (i & 63)) & 1);
}

/* Clear bits [first, last), a word at a time. */
static inline void ww_bits_clear(uint64_t *bits, size_t first, size_t last)
{
    while (first < last) {
        size_t w = first >> 6, lo = first & 63;
        size_t hi = last - (first - lo) < 64 ? last - (first - lo) : 64;  /* bits lo..hi of word w */
        uint64_t mask = (hi == 64 ? ~(uint64_t)0 : ((uint64_t)1 << hi) - 1)
                        & ~(((uint64_t)1 << lo) - 1);
        __atomic_fetch_and(&bits[w], ~mask, __ATOMIC_SEQ_CST);
        first = (w + 1) << 6;
    }
}

/* The first set bit in [i, end), or end. */
static inline size_t ww_next_set(const uint64_t *bits, size_t i, size_t end)
{
    while (i < end) {
        uint64_t w = __atomic_load_n(&bits[i >> 6], __ATOMIC_SEQ_CST) >> (i & 63);
        if (w) {
            i += (size_t)__builtin_ctzll(w);
            return i < end ? i : end;
        }
        i = (i | 63) + 1;
    }
    return end;
}

/* ---- fork generation ----------------------------------------------------
 * Incremented in every child made by fork(): a region remembers the
 * generation it was made in, and refuses to be used from a child, whose copy
 * of the mapping is not registered with the parent's userfaultfd.  Cheaper
 * than getpid() (a syscall since glibc 2.25) on every call. */
static volatile uint64_t ww_fork_gen = 0;
static pthread_once_t ww_atfork_once = PTHREAD_ONCE_INIT;

static void ww_on_fork_child(void) { __atomic_add_fetch(&ww_fork_gen, 1, __ATOMIC_SEQ_CST); }
static void ww_atfork_install(void) { pthread_atfork(NULL, NULL, ww_on_fork_child); }

static inline uint64_t ww_fork_generation(void)
{
    pthread_once(&ww_atfork_once, ww_atfork_install);
    return __atomic_load_n(&ww_fork_gen, __ATOMIC_ACQUIRE);
}

/* ---- /proc/self/pagemap -------------------------------------------------
 * One descriptor per process.  A descriptor inherited over fork() still reads
 * the parent's address space, so it is keyed by the fork generation and
 * reopened in a child.  (generation << 32 | fd) is swapped in atomically: no
 * lock, so no lock can be left held across fork().  Returns fd or -errno. */
static uint64_t ww_pm_packed = 0; /* 0: none yet (fds are < 2^31, gen + 1 > 0) */

static inline int ww_pagemap_fd(void)
{
    uint64_t gen = ww_fork_generation() + 1;
    uint64_t cur = __atomic_load_n(&ww_pm_packed, __ATOMIC_ACQUIRE);
    if (cur && (cur >> 32) == (gen & 0xffffffffu))
        return (int)(uint32_t)cur;
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    uint64_t mine = ((gen & 0xffffffffu) << 32) | (uint32_t)fd;
    if (__atomic_compare_exchange_n(&ww_pm_packed, &cur, mine, 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        /* A descriptor inherited from a parent is left open: by now its
         * number may belong to something else the child opened. */
        return fd;
    }
    close(fd);                                  /* another thread won the race */
    if ((cur >> 32) == (gen & 0xffffffffu))
        return (int)(uint32_t)cur;
    return -EAGAIN;
}

/* ---- the process's asynchronous userfaultfd -----------------------------
 * Every `pagemap` region is registered with one userfaultfd per process
 * (features WP_ASYNC | WP_UNPOPULATED: the kernel resolves write faults by
 * itself and never queues a message, so nothing reads it).  One descriptor
 * whatever the number of regions: a program holding thousands of them stays
 * far from RLIMIT_NOFILE, creating and closing a region costs no open() or
 * close() -- and closing a userfaultfd walks every VMA of the process.
 *
 * Kept per fork generation, like the pagemap descriptor: a descriptor
 * inherited over fork() still belongs to the parent's mm (registering
 * through it would register the *parent's* addresses), so a child opens its
 * own.  The file's identity (st_dev, st_ino: every userfaultfd has an inode
 * of its own) is kept too, so that a descriptor closed behind the library's
 * back -- its number maybe reused by another file -- is noticed when a call
 * fails, and a fresh one is opened for the regions made after that.  The
 * regions registered through the lost one read as unregistered
 * (PM_SCAN_CHECK_WPASYNC: EPERM).  Guarded by a mutex that a fork child
 * re-initialises (only the forking thread lives on in the child). */
static struct {
    pthread_mutex_t mu;
    uint64_t gen;           /* fork generation + 1 it was opened in; 0: none */
    int fd;
    dev_t dev;
    ino_t ino;
} ww_au = { PTHREAD_MUTEX_INITIALIZER, 0, -1, 0, 0 };

static void ww_au_on_fork_child(void)
{
    pthread_mutex_init(&ww_au.mu, NULL);
    /* The number still refers to the inherited descriptor here (nothing else
     * has run in the child yet): dropping the child's reference leaves the
     * parent's registrations alone. */
    if (ww_au.gen && ww_au.fd >= 0)
        close(ww_au.fd);
    ww_au.gen = 0;
    ww_au.fd = -1;
}

static pthread_once_t ww_au_once = PTHREAD_ONCE_INIT;
static void ww_au_install(void) { pthread_atfork(NULL, NULL, ww_au_on_fork_child); }

/* The descriptor, opened and handshaken on first use in this process (or
 * this fork child); -errno and *what on failure. */
static int ww_async_uffd(const char **what)
{
    pthread_once(&ww_au_once, ww_au_install);
    uint64_t gen = ww_fork_generation() + 1;
    pthread_mutex_lock(&ww_au.mu);
    if (ww_au.gen == gen && ww_au.fd >= 0) {
        int fd = ww_au.fd;
        pthread_mutex_unlock(&ww_au.mu);
        return fd;
    }
    int fd = ww_userfaultfd(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (fd < 0) {
        pthread_mutex_unlock(&ww_au.mu);
        *what = "userfaultfd(UFFD_USER_MODE_ONLY)";
        return fd;
    }
    struct uffdio_api api;
    api.api = UFFD_API;
    api.features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
    api.ioctls = 0;
    long rc = ww_ioctl(fd, UFFDIO_API, &api);
    struct stat st;
    if (rc == 0 && fstat(fd, &st) != 0)
        rc = -errno;
    if (rc < 0) {
        close(fd);
        pthread_mutex_unlock(&ww_au.mu);
        *what = "ioctl(UFFDIO_API) [features WP_ASYNC|WP_UNPOPULATED need Linux 6.7]";
        return (int)rc;
    }
    ww_au.fd = fd;
    ww_au.gen = gen;
    ww_au.dev = st.st_dev;
    ww_au.ino = st.st_ino;
    pthread_mutex_unlock(&ww_au.mu);
    return fd;
}

/* After a failed call on fd: if fd is no longer the descriptor we opened
 * (closed behind our back, number maybe reused), forget it so the next
 * region opens a new one.  Returns 1 if it was lost. */
static int ww_async_uffd_lost(int fd)
{
    struct stat st;
    int lost = 0;
    pthread_mutex_lock(&ww_au.mu);
    if (ww_au.fd == fd && ww_au.gen == ww_fork_generation() + 1) {
        if (fstat(fd, &st) != 0 || st.st_dev != ww_au.dev || st.st_ino != ww_au.ino) {
            ww_au.fd = -1;          /* not ours any more: never close it */
            ww_au.gen = 0;
            lost = 1;
        }
    }
    pthread_mutex_unlock(&ww_au.mu);
    return lost;
}

#endif /* WRITEWATCH_WW_COMMON_H */
