# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, embedsignature=True, embedsignature.format=clinic
"""writewatch's extension module: the Region type, the backend interface and
the backends themselves.  The parts live in .pxi files pulled in below
(uvloop's layout); the C they call is declared in includes/*.pxd, one .pxd
per C header, all cimported here -- but for the pthread mutex (_region.pxi)
and qsort (_batch.pxi), declared where they are used.  docs/hacking.md
describes the parts."""

cimport cython
import operator
import os

import numpy as np
cimport numpy as np

from cpython.buffer cimport PyBuffer_FillInfo
from libc.stdint cimport uint8_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc, calloc, realloc
from libc.string cimport memcpy, memset

from writewatch.includes.compat cimport *          # compat.h: platform fallbacks
from writewatch.includes.writewatch_abi cimport *  # kernel/writewatch_abi.h
from writewatch.includes.ww_common cimport *       # ww_common.h: shared by the backends
from writewatch.includes.system cimport *          # the C library
from writewatch.includes.uffd_thread cimport *     # the `uffd` backend
from writewatch.includes.mprotect_handler cimport *  # the `mprotect` backend,
from writewatch.includes.mprotect_control cimport *  # signal and control sides
from writewatch.includes.softdirty cimport *       # the `softdirty` backend
from writewatch.includes.crc32c cimport *          # DeltaLog's checksum
from writewatch._errors import (BackendUnavailable, ForkedRegionError,
                                WriteWatchError, syscall_error)
from writewatch._types import BackendInfo

np.import_array()

cdef size_t _PAGE_SIZE = <size_t>sysconf(_SC_PAGESIZE)
# Largest size or address we accept: the x86-64/arm64 user address space
# (47 bits) -- anything beyond can only fail, so it fails early and clearly.
cdef object _MAX_SIZE = 1 << 47

PAGE_SIZE = _PAGE_SIZE

include "_engine.pxi"
include "_region.pxi"
include "_registry.pxi"
include "_pagemap.pxi"
include "_uffd.pxi"
include "_mprotect.pxi"
include "_softdirty.pxi"
include "_batch.pxi"
include "_snapshots.pxi"

_register("pagemap", _PagemapEngine, _probe_pagemap)
_register("uffd", _UffdEngine, _probe_uffd)
_register("mprotect", _MprotectEngine, _probe_mprotect)
_register("softdirty", _SoftDirtyEngine, _probe_softdirty)
