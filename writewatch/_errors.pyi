# Type stubs for writewatch._errors (kept beside the module so that
# mypy --strict does not meet its unannotated helper).

__all__ = ["WriteWatchError", "BackendUnavailable", "ForkedRegionError", "syscall_error"]

class WriteWatchError(Exception):
    """Base class of writewatch's own errors."""

class BackendUnavailable(WriteWatchError, RuntimeError):
    """A known backend cannot run on this machine; the message says why."""

class ForkedRegionError(WriteWatchError, RuntimeError):
    """A region was used in a process forked from the one that made it."""

def syscall_error(err: int, call: str, detail: str | None = None) -> OSError: ...
