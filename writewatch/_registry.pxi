# Backends by name, their probes, and the choice of one for a new region
# (pyzmq's backend selection: an environment variable first, then the
# preference order).

BACKEND_NAMES = ("pagemap", "uffd", "mprotect", "softdirty")

import errno as _errnos

# A probe that fails for want of a resource (no fd left, no memory) says
# nothing about the kernel: such a failure is reported but not remembered,
# so the backend is probed again once the shortage is over.
_TRANSIENT_ERRNOS = frozenset((_errnos.EMFILE, _errnos.ENFILE, _errnos.ENOMEM,
                               _errnos.EAGAIN, _errnos.EINTR))


def _probe_refused(e):
    """What a probe returns for an OSError: (False, reason) -- unless the
    error is a shortage, which is raised so that _probe() does not remember
    it."""
    if e.errno in _TRANSIENT_ERRNOS:
        raise e
    return False, str(e)


cdef dict _ENGINES = {}          # name -> (Engine subclass, probe function)
cdef dict _PROBED = {}           # name -> (available, reason), decided once


cdef _register(str name, engine_class, probe):
    assert name in BACKEND_NAMES, name
    _ENGINES[name] = (engine_class, probe)


def _probe(str name):
    """(available, reason) for a backend, probed once per process."""
    try:
        return _PROBED[name]
    except KeyError:
        pass
    if name not in _ENGINES:
        result = (False, "not built into this version of writewatch")
    else:
        try:
            result = tuple(_ENGINES[name][1]())
        except OSError as e:
            if e.errno in _TRANSIENT_ERRNOS:
                return (False, "%s (a shortage: probed again next time)" % e)
            result = (False, "probe failed: %s: %s" % (type(e).__name__, e))
        except Exception as e:       # a probe must never take the import down
            result = (False, "probe failed: %s: %s" % (type(e).__name__, e))
    _PROBED[name] = result
    return result


def backends():
    """Every backend, in preference order, and whether it can run here.

    Each backend's availability is decided once per process by a real round
    trip on a scratch region (arm, write, read, reset), not by version
    sniffing; a probe that failed for want of a resource (no descriptor, no
    memory) is tried again on the next call.

    Returns
    -------
    list of BackendInfo
        ``BackendInfo(name, available, reason)``: `reason` says what the
        backend uses here, or why it cannot run.

    Examples
    --------
    >>> import writewatch
    >>> [b.name for b in writewatch.backends()]
    ['pagemap', 'uffd', 'mprotect', 'softdirty']
    """
    return [BackendInfo(name, *_probe(name)) for name in BACKEND_NAMES]


def default_backend():
    """The name of the backend a Region gets with ``backend=None`` here and
    now: ``$WRITEWATCH_BACKEND`` if set, else the first available one.

    Raises
    ------
    ValueError
        ``$WRITEWATCH_BACKEND`` names no backend.
    writewatch.BackendUnavailable
        That backend (or, without the variable, every backend) cannot run.
    """
    return _choose_backend(None)[0]


def _choose_backend(backend):
    if backend is None:
        backend = os.environ.get("WRITEWATCH_BACKEND") or None
        source = "WRITEWATCH_BACKEND"
    else:
        source = "backend"
    if backend is None:
        reasons = []
        for name in BACKEND_NAMES:
            ok, reason = _probe(name)
            if ok:
                return name, _ENGINES[name][0]
            reasons.append("%s: %s" % (name, reason))
        raise BackendUnavailable("no write-watch backend can run here (%s)"
                                 % "; ".join(reasons))
    if not isinstance(backend, str):
        raise TypeError("backend must be a str or None, not %s" % type(backend).__name__)
    if backend not in BACKEND_NAMES:
        raise ValueError("unknown backend %r (from %s); known backends: %s"
                         % (backend, source, ", ".join(BACKEND_NAMES)))
    ok, reason = _probe(backend)
    if not ok:
        raise BackendUnavailable("backend %r cannot run here: %s" % (backend, reason))
    return backend, _ENGINES[backend][0]
