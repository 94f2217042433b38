"""No privilege needed, no fd leaks across exec, nothing written outside the
process.  Each check runs in a subprocess."""

import re
import shutil

import pytest

from helpers import IS_ROOT, output, run_python

NOBODY = 65534

# Exercise every available backend through every public call, plus kernel
# writes, a fork and a short soak; print "WORKLOAD OK" at the end.
WORKLOAD = r'''
import mmap, os, sys, threading
import numpy as np
import writewatch, writewatch.soak
P = writewatch.PAGE_SIZE

def pages(r, **kw):
    return [(int(a) - r.address) // P for a in r.get_write_watch(**kw)]

def workload():
    names = [b.name for b in writewatch.backends() if b.available]
    assert names, writewatch.backends()
    for name in names:
        with writewatch.Region(64 * P, backend=name) as r:
            v = np.frombuffer(r, dtype=np.uint8)
            v[3 * P] = 1
            v[10 * P - 1: 10 * P + 1] = 2
            t = threading.Thread(target=v.__setitem__, args=(40 * P, 3))
            t.start(); t.join()
            if writewatch.soak.kernel_writes_work(name):
                rfd, wfd = os.pipe()
                os.write(wfd, b"x" * 10)
                m = memoryview(r)
                assert os.readv(rfd, [m[50 * P - 5: 50 * P + 5]]) == 10   # kernel write
                m.release(); os.close(rfd); os.close(wfd)
            else:                          # a documented limit (mprotect): EFAULT
                v[50 * P - 5: 50 * P + 5] = 1
            assert pages(r) == [3, 9, 10, 40, 49, 50], (name, pages(r))
            assert pages(r, max_count=2, reset=True) == [3, 9]
            out = np.zeros(8, dtype=np.uint64)
            got = r.get_write_watch(r.address + 10 * P, 40 * P, out=out)
            assert [(int(a) - r.address) // P for a in got] == [10, 40, 49]
            r.reset_write_watch()
            assert pages(r) == []
            r._protect(r.address, 8 * P, mmap.PROT_READ)
            r._protect(r.address, 8 * P, mmap.PROT_READ | mmap.PROT_WRITE)
            v[5 * P] = 7
            r._discard(r.address + 5 * P, P)
            assert pages(r) == [] and v[5 * P] == 0
            pid = os.fork()
            if pid == 0:
                v[1] = 1
                os._exit(0)
            os.waitpid(pid, 0)
            assert pages(r) == []
            del v
    rep = writewatch.soak.run(1.0, npages=256, nwriters=2)
    assert rep["ok"], writewatch.soak.format_report(rep)
    print("WORKLOAD OK", names)
'''


def run(code, timeout=120):
    return run_python(code, timeout=timeout).stdout


def _sysctl(name):
    try:
        with open("/proc/sys/vm/" + name) as f:
            return int(f.read())
    except OSError:
        return None


# -- no privilege ------------------------------------------------------------------

needs_root = pytest.mark.skipif(not IS_ROOT, reason="dropping to 'nobody' needs root")

# Python lives under /root here, which 'nobody' cannot enter, so the child
# imports everything as root (no backend probed, no region made), then drops
# to nobody:nogroup and runs the workload in the same interpreter.
DROP = r'''
import ctypes, errno, os
os.setgroups([]); os.setgid(%d); os.setuid(%d)
assert os.getuid() == os.geteuid() == %d
''' % (NOBODY, NOBODY, NOBODY)


@needs_root
def test_unprivileged_user():
    """As nobody, with vm.unprivileged_userfaultfd = 0: a plain userfaultfd()
    is refused, the library's UFFD_USER_MODE_ONLY one is not, and
    /proc/self/pagemap is readable: everything works."""
    out = run(WORKLOAD + DROP + r'''
# setuid() made the process non-dumpable: its /proc/self files now belong to
# root.  A program started as nobody is dumpable; be one.
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(4, 1, 0, 0, 0) == 0                  # PR_SET_DUMPABLE
os.close(os.open("/proc/self/pagemap", os.O_RDONLY))
print("pagemap readable as nobody")
if int(open("/proc/sys/vm/unprivileged_userfaultfd").read()) == 0:
    r = libc.syscall(323, os.O_CLOEXEC)                # SYS_userfaultfd, no USER_MODE_ONLY
    assert r < 0 and ctypes.get_errno() == errno.EPERM, (r, ctypes.get_errno())
    print("plain userfaultfd refused: EPERM")
workload()
''')
    assert "WORKLOAD OK" in out
    assert "pagemap readable as nobody" in out
    if _sysctl("unprivileged_userfaultfd") == 0:
        assert "plain userfaultfd refused" in out
        assert "pagemap" in out.split("WORKLOAD OK")[1]


@needs_root
def test_privileges_dropped_without_dumpable():
    """A daemon that drops privileges with setuid() becomes non-dumpable, and
    the kernel then denies it its own /proc/self/pagemap: pagemap must be
    reported unavailable with that reason, not crash or half-work."""
    out = run("import writewatch\n" + DROP + r'''
info = writewatch.backends()[0]
assert info.name == "pagemap" and not info.available, info
assert "Permission denied" in info.reason, info.reason
try:
    writewatch.Region(4096, backend="pagemap")
except writewatch.BackendUnavailable as e:
    print("refused:", e)
''')
    assert "refused:" in out and "open(/proc/self/pagemap)" in out


# -- no fd leaks across exec ---------------------------------------------------------

def test_every_library_fd_is_close_on_exec():
    out = run(r'''
import fcntl, os, subprocess, sys
import writewatch
P = writewatch.PAGE_SIZE
def fds():
    return {int(f): os.readlink("/proc/self/fd/" + f) for f in os.listdir("/proc/self/fd")
            if os.path.exists("/proc/self/fd/" + f)}
before = fds()
regions = [writewatch.Region(8 * P, backend=b.name)
           for b in writewatch.backends() if b.available for _ in range(3)]
for r in regions:
    memoryview(r)[0] = 1
    r.get_write_watch(reset=True)
opened = {fd: t for fd, t in fds().items() if fd not in before}
assert opened, "the library opened no fd at all?"
for fd, target in opened.items():
    flags = fcntl.fcntl(fd, fcntl.F_GETFD)
    assert flags & fcntl.FD_CLOEXEC, (fd, target)
    print("cloexec", fd, target)
child = subprocess.run(
    [sys.executable, "-c",
     "import os; print(sorted((int(f), os.readlink('/proc/self/fd/' + f)) "
     "for f in os.listdir('/proc/self/fd') if os.path.exists('/proc/self/fd/' + f)))"],
    close_fds=False, pass_fds=(), capture_output=True, text=True, check=True)
inherited = eval(child.stdout)
leaked = [(fd, t) for fd, t in inherited if fd in opened]
assert not leaked, leaked
print("child fds", inherited)
for r in regions:
    r.close()
''')
    assert "cloexec" in out and "child fds" in out


# -- nothing written outside the process ------------------------------------------------

WRITE_FLAGS = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND")


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_nothing_written_outside_the_process(tmp_path):
    """Trace the whole workload (every backend, fork, soak): no file opened
    for writing, created, removed or renamed, no shared file mapping, no
    write into another process's memory.  /proc/self/clear_refs (softdirty
    resets this process's own page flags) is the only writable file allowed."""
    log = tmp_path / "strace.log"
    p = run_python(WORKLOAD + "\nworkload()\n", timeout=300, prefix=[
        "strace", "-f", "-qq", "-o", str(log), "-e",
        "trace=%file,process_vm_writev,ptrace,mmap,memfd_create,shmget,mq_open"])
    assert "WORKLOAD OK" in p.stdout, output(p)
    bad = []
    calls = 0
    for line in log.read_text().splitlines():
        calls += 1
        m = re.search(r"\b(\w+)\((.*)", line)
        if not m:
            continue
        name, args = m.groups()
        if name in ("open", "openat", "openat2", "creat") and (
                name == "creat" or WRITE_FLAGS.search(args)):
            if "clear_refs" in args or "/dev/null" in args:
                continue
            bad.append(line)
        elif name in ("unlink", "unlinkat", "rename", "renameat", "renameat2", "mkdir",
                      "mkdirat", "rmdir", "truncate", "link", "linkat", "symlink",
                      "symlinkat", "chmod", "fchmodat", "chown", "fchownat",
                      "process_vm_writev", "ptrace", "memfd_create", "shmget", "mq_open"):
            bad.append(line)
        elif name == "mmap" and "MAP_SHARED" in args and "PROT_WRITE" in args:
            bad.append(line)
    assert calls > 100, "strace saw almost nothing: %d lines" % calls
    assert not bad, "\n".join(bad[:20])
