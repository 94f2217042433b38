# includes/crc32c.h: CRC-32C, the checksum of DeltaLog records.
from libc.stdint cimport uint32_t


cdef extern from "crc32c.h" nogil:
    uint32_t ww_crc32c_ex(uint32_t crc, const void *p, size_t n, int software)
    uint32_t ww_crc32c(uint32_t crc, const void *p, size_t n)
    uint32_t ww_crc32c_copy(uint32_t crc, void *dst, const void *src, size_t n)
