"""writewatch: Windows write-watch semantics for Linux.

Track which pages of a buffer were written since you last asked --
``GetWriteWatch``/``ResetWriteWatch`` -- at the cost of the kernel's own
PAGEMAP_SCAN ioctl (Linux >= 6.7), with classic emulations as fallbacks.
"""

from writewatch._core import (PAGE_SIZE, BackendInfo, Region, WriteWatchManyError,
                              backends, default_backend, get_write_watch_many)
from writewatch._core import Snapshots
from writewatch._errors import BackendUnavailable, ForkedRegionError, WriteWatchError
from writewatch._errors import CorruptLogError

__all__ = [
    "PAGE_SIZE",
    "BackendInfo",
    "BackendUnavailable",
    "CorruptLogError",
    "DeltaLog",
    "ForkedRegionError",
    "Region",
    "Snapshots",
    "WriteWatchError",
    "WriteWatchManyError",
    "backends",
    "default_backend",
    "get_write_watch_many",
]

__version__ = "0.1.0"


def __getattr__(name):
    # DeltaLog's module, and the file machinery it imports, load on first use:
    # `import writewatch` stays what it was for programs that never log.
    if name == "DeltaLog":
        from writewatch._deltalog import DeltaLog
        return DeltaLog
    raise AttributeError("module 'writewatch' has no attribute %r" % name)


def __dir__():
    return sorted(set(globals()) | {"DeltaLog"})
