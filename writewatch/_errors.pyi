# Type stubs for writewatch._errors (kept beside the module so that
# mypy --strict does not meet its unannotated helper).

__all__ = ["WriteWatchError", "BackendUnavailable", "ForkedRegionError", "CorruptLogError",
           "syscall_error"]

class WriteWatchError(Exception):
    """Base class of writewatch's own errors."""

class BackendUnavailable(WriteWatchError, RuntimeError):
    """A known backend cannot run on this machine; the message says why."""

class ForkedRegionError(WriteWatchError, RuntimeError):
    """A region was used in a process forked from the one that made it."""

class CorruptLogError(WriteWatchError, ValueError):
    """A DeltaLog file is damaged; `path` and `offset` say where."""

    path: str
    offset: int
    what: str
    def __init__(self, path: str, offset: int, what: str) -> None: ...

def syscall_error(err: int, call: str, detail: str | None = None) -> OSError: ...
