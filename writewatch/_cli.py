"""The `writewatch` command: `doctor` (what this kernel offers) and `bench`."""

import argparse
import os
import platform
import sys

from writewatch import __version__, _core


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        return "unreadable (%s)" % (e.strerror or e)


_UFFD_FEATURES = [
    # (bit, name) from include/uapi/linux/userfaultfd.h
    (0, "PAGEFAULT_FLAG_WP"), (1, "EVENT_FORK"), (2, "EVENT_REMAP"),
    (3, "EVENT_REMOVE"), (4, "MISSING_HUGETLBFS"), (5, "MISSING_SHMEM"),
    (6, "EVENT_UNMAP"), (7, "SIGBUS"), (8, "THREAD_ID"), (9, "MINOR_HUGETLBFS"),
    (10, "MINOR_SHMEM"), (11, "EXACT_ADDRESS"), (12, "WP_HUGETLBFS_SHMEM"),
    (13, "WP_UNPOPULATED"), (14, "POISON"), (15, "WP_ASYNC"), (16, "MOVE"),
]


def doctor(args):
    """Print what this machine offers; exit 1 when no backend can run."""
    out = sys.stdout
    u = platform.uname()
    out.write("writewatch doctor\n")
    out.write("  kernel            %s %s (%s)\n" % (u.system, u.release, u.machine))
    out.write("  page size         %d bytes\n" % _core.PAGE_SIZE)
    try:
        feats = _core._uffd_features()
        names = [n for bit, n in _UFFD_FEATURES if feats >> bit & 1]
        out.write("  userfaultfd       features %#x: %s\n" % (feats, " ".join(names)))
    except OSError as e:
        out.write("  userfaultfd       unavailable: %s\n" % e)
    for name in ("vm/unprivileged_userfaultfd", "vm/max_map_count"):
        out.write("  %-17s %s\n" % (name.split("/")[1], _read("/proc/sys/" + name)))
    out.write("  transparent hugepages %s (regions opt out with MADV_NOHUGEPAGE)\n"
              % _read("/sys/kernel/mm/transparent_hugepage/enabled"))
    out.write("\nbackends (in order of preference):\n")
    infos = _core.backends()
    for b in infos:
        out.write("  %-10s %-12s %s\n" % (b.name, "available" if b.available else "unavailable",
                                         b.reason))
    try:
        default = _core.default_backend()
        env = os.environ.get("WRITEWATCH_BACKEND")
        out.write("\ndefault backend: %s%s\n" % (default,
                  " (from WRITEWATCH_BACKEND)" if env else ""))
        status = 0
    except Exception as e:  # BackendUnavailable, or a bad WRITEWATCH_BACKEND
        out.write("\ndefault backend: none: %s\n" % e)
        status = 1
    if getattr(args, "selftest", False):
        from writewatch import _selftest
        out.write("\nkernel selftest:\n")
        out.flush()
        rc = _selftest.run(verbose=args.verbose)
        status = status or rc
    return status


def bench(args):
    from writewatch import _bench
    return _bench.run(args)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="writewatch",
        description="Windows write-watch semantics for Linux: diagnostics and benchmarks.")
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("doctor", help="report the kernel's support and the backends available")
    p.add_argument("--selftest", action="store_true",
                   help="also run the C selftests of the kernel contract")
    p.add_argument("-v", "--verbose", action="store_true", help="show every selftest line")
    p.set_defaults(func=doctor)
    p = sub.add_parser("bench", help="compare the backends and the C floor")
    try:
        from writewatch import _bench
        _bench.add_arguments(p)
    except ImportError:
        pass
    p.set_defaults(func=bench)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
