# The C library's declarations the extension uses beyond Cython's own
# libc/posix .pxd files: memory mapping, a few calls of <unistd.h>, <fcntl.h>
# and <sched.h>, errno values.
# (Constants old headers may lack come from compat.h: see compat.pxd.)
from posix.types cimport pid_t


cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)
    int mprotect(void *addr, size_t length, int prot)
    int madvise(void *addr, size_t length, int advice)
    int msync(void *addr, size_t length, int flags)
    void *MAP_FAILED
    int PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC
    int MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE, MAP_FIXED
    int MADV_DONTNEED
    int MS_ASYNC


cdef extern from "<unistd.h>" nogil:
    long sysconf(int name)
    int _SC_PAGESIZE
    int close(int fd)
    pid_t getpid()
    ssize_t pread(int fd, void *buf, size_t count, long offset)


cdef extern from "<fcntl.h>" nogil:
    int O_CLOEXEC, O_NONBLOCK


cdef extern from "<sched.h>" nogil:
    int sched_yield()


cdef extern from "<errno.h>" nogil:
    int errno
    int EINVAL, ENOMEM, EEXIST, EPERM, ENOSYS, EFAULT, EINTR, ENOTTY, EIO, EAGAIN
