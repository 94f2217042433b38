/*
 * crc32c.h - CRC-32C (Castagnoli: reflected polynomial 0x82F63B78, initial
 * value and final xor 0xFFFFFFFF), the checksum of DeltaLog records.
 *
 * Why this CRC and not zlib's: it has an instruction of its own on x86-64
 * (SSE4.2 `crc32`) and arm64 (the CRC extension), so a record's checksum
 * costs a fraction of the copy that precedes it -- zlib.crc32 took ~0.7 ms
 * per 1.8 MB record here, as much as the copy itself, next to a few ms of
 * fsync.  It is the CRC of ext4's metadata, iSCSI, SCTP and btrfs, as good
 * at catching torn and flipped bits as zlib's.  Where the instruction is
 * missing, a slicing-by-8 table gives the same values.
 *
 * The convention is zlib's: ww_crc32c(0, p, n) is the CRC of p[0..n), and
 * ww_crc32c(crc, q, m) continues it over q[0..m) (the value passed in is a
 * finished CRC; the pre- and post-conditioning happen inside).
 * Check value: ww_crc32c(0, "123456789", 9) == 0xE3069283.
 */
#ifndef WRITEWATCH_CRC32C_H
#define WRITEWATCH_CRC32C_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <pthread.h>

#define WW_CRC32C_POLY 0x82F63B78u

static uint32_t ww_crc32c_tab[8][256];
static pthread_once_t ww_crc32c_once = PTHREAD_ONCE_INIT;

static void ww_crc32c_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ WW_CRC32C_POLY : c >> 1;
        ww_crc32c_tab[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            ww_crc32c_tab[t][i] = (ww_crc32c_tab[t - 1][i] >> 8)
                                  ^ ww_crc32c_tab[0][ww_crc32c_tab[t - 1][i] & 0xff];
}

/* Slicing-by-8 over the raw (conditioned) state. */
static uint32_t ww_crc32c_sw_raw(uint32_t c, const uint8_t *p, size_t n)
{
    pthread_once(&ww_crc32c_once, ww_crc32c_init);
    while (n && ((uintptr_t)p & 7)) {
        c = (c >> 8) ^ ww_crc32c_tab[0][(c ^ *p++) & 0xff];
        n--;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= c;                                   /* little-endian hosts only */
        c = ww_crc32c_tab[7][w & 0xff] ^ ww_crc32c_tab[6][(w >> 8) & 0xff]
          ^ ww_crc32c_tab[5][(w >> 16) & 0xff] ^ ww_crc32c_tab[4][(w >> 24) & 0xff]
          ^ ww_crc32c_tab[3][(w >> 32) & 0xff] ^ ww_crc32c_tab[2][(w >> 40) & 0xff]
          ^ ww_crc32c_tab[1][(w >> 48) & 0xff] ^ ww_crc32c_tab[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--)
        c = (c >> 8) ^ ww_crc32c_tab[0][(c ^ *p++) & 0xff];
    return c;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) \
    && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define WW_CRC32C_HW 1
__attribute__((target("sse4.2")))
static uint32_t ww_crc32c_hw_raw(uint32_t c, const uint8_t *p, size_t n)
{
    uint64_t c64 = c;
    while (n && ((uintptr_t)p & 7)) {
        c64 = __builtin_ia32_crc32qi((uint32_t)c64, *p++);
        n--;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c64 = __builtin_ia32_crc32di(c64, w);
        p += 8;
        n -= 8;
    }
    while (n--)
        c64 = __builtin_ia32_crc32qi((uint32_t)c64, *p++);
    return (uint32_t)c64;
}

/* Copy n bytes from src to dst and run the CRC over them in the same pass. */
__attribute__((target("sse4.2")))
static uint32_t ww_crc32c_copy_hw_raw(uint32_t c, uint8_t *dst, const uint8_t *src, size_t n)
{
    uint64_t c64 = c;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, src, 8);
        memcpy(dst, &w, 8);
        c64 = __builtin_ia32_crc32di(c64, w);
        src += 8;
        dst += 8;
        n -= 8;
    }
    while (n--) {
        *dst++ = *src;
        c64 = __builtin_ia32_crc32qi((uint32_t)c64, *src++);
    }
    return (uint32_t)c64;
}

static int ww_crc32c_has_hw(void)
{
    static int known = -1;
    int k = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (k < 0) {
        __builtin_cpu_init();
        k = __builtin_cpu_supports("sse4.2") ? 1 : 0;
        __atomic_store_n(&known, k, __ATOMIC_RELAXED);
    }
    return k;
}
#else
#define WW_CRC32C_HW 0
static int ww_crc32c_has_hw(void) { return 0; }
#endif

/* The CRC of p[0..n) continuing `crc`; software=1 forces the table path
 * (for the tests that compare both). */
static uint32_t ww_crc32c_ex(uint32_t crc, const void *p, size_t n, int software)
{
    uint32_t c = ~crc;
#if WW_CRC32C_HW
    if (!software && ww_crc32c_has_hw())
        return ~ww_crc32c_hw_raw(c, (const uint8_t *)p, n);
#endif
    (void)software;
    return ~ww_crc32c_sw_raw(c, (const uint8_t *)p, n);
}

static inline uint32_t ww_crc32c(uint32_t crc, const void *p, size_t n)
{
    return ww_crc32c_ex(crc, p, n, 0);
}

/* memcpy(dst, src, n) and the CRC of the copied bytes, continuing crc, in
 * one pass over memory where the instruction exists. */
static uint32_t ww_crc32c_copy(uint32_t crc, void *dst, const void *src, size_t n)
{
#if WW_CRC32C_HW
    if (ww_crc32c_has_hw())
        return ~ww_crc32c_copy_hw_raw(~crc, (uint8_t *)dst, (const uint8_t *)src, n);
#endif
    memcpy(dst, src, n);
    return ww_crc32c(crc, dst, n);
}

#endif /* WRITEWATCH_CRC32C_H */
