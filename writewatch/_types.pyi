# Type stubs for writewatch._types: BackendInfo is a collections.namedtuple
# at run time, which mypy cannot give field types.

from typing import NamedTuple

__all__ = ["BackendInfo"]

class BackendInfo(NamedTuple):
    """A backend, whether it can run here, and why (not)."""

    name: str
    available: bool
    reason: str
