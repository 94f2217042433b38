"""Plain data types of writewatch's public API.

They live in a real module (not the extension) so that they pickle and show
their true ``__module__``.
"""

import collections

__all__ = ["BackendInfo"]


class BackendInfo(collections.namedtuple("BackendInfo", "name available reason")):
    """A backend, whether it can run here, and why (not).

    Attributes
    ----------
    name : str
        The backend's name, as ``Region(backend=...)`` takes it.
    available : bool
        Whether it can run on this machine, decided by a real round trip.
    reason : str
        What it uses here, or why it cannot run.
    """

    __slots__ = ()
