/*
 * compat.h - platform fallbacks, and nothing else: the constants that old
 * C library headers lack, each defined only where the system's header did
 * not define it (the system's value wins).  The kernel's own ABI (the
 * PAGEMAP_SCAN and userfaultfd structures and flags) has its fallbacks in
 * kernel/writewatch_abi.h, shared with the C selftests; the code shared by
 * the backends is in ww_common.h.
 *
 * Included first, so that _GNU_SOURCE (also set by setup.py) is seen by
 * every system header.
 */
#ifndef WRITEWATCH_COMPAT_H
#define WRITEWATCH_COMPAT_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <sys/mman.h>
#include <sys/prctl.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000        /* Linux 4.17 */
#endif
#ifndef MADV_NOHUGEPAGE
#define MADV_NOHUGEPAGE 15                  /* Linux 2.6.38 */
#endif
#ifndef PR_SET_VMA
#define PR_SET_VMA 0x53564d41               /* Linux 5.17: names of anonymous VMAs */
#endif
#ifndef PR_SET_VMA_ANON_NAME
#define PR_SET_VMA_ANON_NAME 0
#endif

#endif /* WRITEWATCH_COMPAT_H */
