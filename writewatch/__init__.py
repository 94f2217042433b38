"""writewatch: Windows write-watch semantics for Linux.

Track which pages of a buffer were written since you last asked --
``GetWriteWatch``/``ResetWriteWatch`` -- at the cost of the kernel's own
PAGEMAP_SCAN ioctl (Linux >= 6.7), with classic emulations as fallbacks.
"""

from writewatch._core import (PAGE_SIZE, BackendInfo, Region, Snapshots,
                              WriteWatchManyError, backends, default_backend,
                              get_write_watch_many)
from writewatch._deltalog import DeltaLog
from writewatch._errors import (BackendUnavailable, CorruptLogError, ForkedRegionError,
                                WriteWatchError)

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

__version__ = "0.1.0"     # the only place it is written: pyproject.toml reads it
