"""Sizes and the formatting of sizes, fractions and times."""

from writewatch import _core

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
PAGE = _core.PAGE_SIZE


def fmt_size(n):
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale and n % scale == 0:
            return "%d %s" % (n // scale, unit)
    return "%d B" % n


def fmt_bytes(n):
    """A memory amount (page tables): MiB with one decimal, or KiB."""
    if n is None:
        return "-"
    if abs(n) >= MiB:
        return "%.1f MiB" % (n / MiB)
    return "%d KiB" % round(n / KiB)


def fmt_fraction(f):
    return "%g%%" % (f * 100)


def _scale(ns):
    ns = float("%.3g" % ns)         # 999.7 us is shown as 1 ms, not 1e+03 us
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if ns >= scale:
            return unit, scale
    return "ns", 1.0


def fmt_ns(ns):
    if ns is None:
        return "-"
    unit, scale = _scale(ns)
    return "%.3g %s" % (ns / scale, unit)


def fmt_spread(fastest, median):
    """'fastest-median unit', both in the median's unit: '11.0-12.9 us'."""
    if fastest is None or median is None:
        return fmt_ns(median if fastest is None else fastest)
    unit, scale = _scale(median)
    a, b = "%.3g" % (fastest / scale), "%.3g" % (median / scale)
    return "%s %s" % (a, unit) if a == b else "%s-%s %s" % (a, b, unit)
