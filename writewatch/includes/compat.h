/*
 * compat.h - the small amount of plain C the extension needs, kept out of
 * Cython because it must be lock-free or fork-aware.  Everything platform
 * specific (the kernel ABI) comes from kernel/writewatch_abi.h.
 */
#ifndef WRITEWATCH_COMPAT_H
#define WRITEWATCH_COMPAT_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include "writewatch_abi.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MADV_NOHUGEPAGE
#define MADV_NOHUGEPAGE 15
#endif

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

/* ioctl(), retried on EINTR; returns the result or -errno. */
static inline long ww_ioctl(int fd, unsigned long req, void *arg)
{
    long r;
    do {
        r = ioctl(fd, req, arg);
    } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

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

#endif /* WRITEWATCH_COMPAT_H */
