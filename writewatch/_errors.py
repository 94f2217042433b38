"""Exceptions of writewatch.

Kernel failures are plain ``OSError`` (the subclass Python picks for the
errno: ``PermissionError`` for EPERM, ...) whose message names the system call
that failed.  Domain errors derive from :class:`WriteWatchError` *and* a
builtin, so callers can catch either (pyzmq's pattern).
"""

import errno as _errno
import os as _os

__all__ = ["WriteWatchError", "BackendUnavailable", "ForkedRegionError", "CorruptLogError",
           "syscall_error"]


class WriteWatchError(Exception):
    """Base class of writewatch's own errors."""


class BackendUnavailable(WriteWatchError, RuntimeError):
    """A known backend cannot run on this machine; the message says why."""


class ForkedRegionError(WriteWatchError, RuntimeError):
    """A region was used in a process forked from the one that made it.

    The child's copy of the memory is not registered for tracking (the kernel
    drops userfaultfd registrations in a child), so it may be read and
    written freely, and closed, but not asked for written pages.
    """


class CorruptLogError(WriteWatchError, ValueError):
    """A DeltaLog file is damaged: a checksum does not match, or a header
    holds what no writer writes.  `path` and `offset` (of the damaged
    header or record, in bytes) say where.  Never raised for a torn tail --
    a record cut short by a crash, which is ignored (and cut when the log
    is opened for appending)."""

    def __init__(self, path, offset, what):
        self.path = path
        self.offset = offset
        self.what = what
        super().__init__("%s: damaged at offset %d: %s" % (path, offset, what))

    def __reduce__(self):
        return type(self), (self.path, self.offset, self.what)


def syscall_error(err, call, detail=None):
    """``OSError(err, "<call>: <strerror>[ (<detail>)]")``, as psutil words it."""
    msg = "%s: %s" % (call, _os.strerror(err) if err else "failed")
    if detail:
        msg = "%s (%s)" % (msg, detail)
    return OSError(err or _errno.EIO, msg)
