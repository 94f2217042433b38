# Type stubs for writewatch._core, the compiled extension (_core.pyx and its
# .pxi parts).  They describe what the extension does at run time;
# tests/test_typing.py checks them against it with mypy's stubtest, and
# checks that mypy --strict types a user's program by them.
#
# Keep them in step with the .pxi files: a new public function, class or
# argument is added here in the same commit.

from collections.abc import Iterable
from types import TracebackType
from typing import Literal, SupportsIndex

import numpy as np
import numpy.typing as npt
from typing_extensions import Self

from writewatch._errors import (
    BackendUnavailable as BackendUnavailable,
    ForkedRegionError as ForkedRegionError,
    WriteWatchError as WriteWatchError,
    syscall_error as syscall_error,
)
from writewatch._types import BackendInfo as BackendInfo

PAGE_SIZE: int
"""The system's page size in bytes, the unit of tracking."""

BACKEND_NAMES: tuple[str, ...]
"""Every backend writewatch knows, in order of preference."""

def backends() -> list[BackendInfo]:
    """Every backend in preference order, as BackendInfo(name, available, reason)."""

def default_backend() -> str:
    """The backend a Region gets with backend=None here and now."""

class Region:
    """Anonymous, zero-filled read/write memory whose written pages are tracked."""

    def __init__(
        self,
        size: SupportsIndex,
        *,
        backend: str | None = None,
        address: SupportsIndex | None = None,
    ) -> None: ...
    @property
    def address(self) -> int:
        """Base address of the memory (page aligned); ValueError once closed."""
    @property
    def size(self) -> int:
        """Size in bytes, a whole number of pages."""
    @property
    def page_size(self) -> int:
        """Tracking granularity in bytes."""
    @property
    def backend(self) -> str:
        """Name of the backend that tracks this region."""
    @property
    def closed(self) -> bool:
        """Whether close() has been called."""
    def get_write_watch(
        self,
        address: SupportsIndex | None = None,
        size: SupportsIndex | None = None,
        *,
        reset: bool = False,
        max_count: SupportsIndex | None = None,
        out: npt.NDArray[np.uint64] | None = None,
    ) -> npt.NDArray[np.uint64]:
        """Addresses of the pages written in the range, ascending, as uint64
        (a prefix view of `out` when it is given)."""
    def reset_write_watch(
        self, address: SupportsIndex | None = None, size: SupportsIndex | None = None
    ) -> None:
        """Re-arm the range: none of its pages counts as written afterwards."""
    def close(self) -> None:
        """Unmap the memory; idempotent; BufferError while views exist."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> Literal[False]: ...
    # The buffer protocol (memoryview(r), numpy.frombuffer(r)): writable,
    # one-dimensional bytes.
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...

class WriteWatchManyError(OSError):
    """get_write_watch_many() failed for some regions."""

    results: list[npt.NDArray[np.uint64] | None]
    """Every region's answer, in the order given; None where it failed."""
    failures: dict[int, OSError]
    """The error of each failed region, by position."""

def get_write_watch_many(
    regions: Iterable[Region], *, reset: bool = False
) -> list[npt.NDArray[np.uint64]]:
    """The written pages of each region, in one call: for each region in the
    order given, what region.get_write_watch(reset=reset) would return."""

class Snapshots:
    """Saved states of a Region, at the cost of what was written."""

    def __init__(self, region: Region, keep: SupportsIndex = 8) -> None: ...
    @property
    def ids(self) -> tuple[int, ...]:
        """The ids that can still be restored, oldest first."""
    @property
    def nbytes(self) -> int:
        """Memory the snapshots hold, in bytes."""
    @property
    def keep(self) -> int: ...
    @property
    def region(self) -> Region: ...
    @property
    def closed(self) -> bool: ...
    def save(self) -> int:
        """Save the region's current state; its id (0, 1, 2, ...)."""
    def restore(self, sid: SupportsIndex) -> None:
        """Make the region's bytes exactly those at save() number sid."""
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> Literal[False]: ...

# DeltaLog is plain Python (writewatch/_deltalog.py, annotated there).
#
# Names starting with an underscore (the hooks of writewatch.win32 and of
# the tests, the trackers under Snapshots and DeltaLog) are left out on
# purpose: they are not API, and stubtest does not ask for them.
