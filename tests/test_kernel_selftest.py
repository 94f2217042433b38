"""The C selftests of the kernel contract (kernel/selftests/pagemap_contract.c).

On this machine (Linux >= 6.7 with userfaultfd WP_ASYNC and PAGEMAP_SCAN) every
check must pass.  The skip path (exit 4, every check reported as skipped) is
exercised for real by taking the features away from the program with a
seccomp filter, so that a kernel lacking them is not a silent pass.
"""

import ctypes
import io
import os
import platform
import re
import shutil
import stat
import struct

import pytest

from writewatch import _selftest
from helpers import ROOT, run_command, run_python

BINARY = _selftest.binary_path()


def _need_binary():
    assert os.access(BINARY, os.X_OK), (
        "%s is not built: python setup.py build_ext --inplace (or pip install .)" % BINARY)


def test_binary_passes_every_check():
    _need_binary()
    out = run_command([BINARY], timeout=60).stdout
    plan, results = _selftest.parse_tap(out)
    assert plan is not None and plan >= 20, out
    assert [r.number for r in results] == list(range(1, plan + 1)), out
    assert all(r.ok for r in results), out
    assert not [r for r in results if "# SKIP" in r.description], out
    assert "# Totals: pass:%d fail:0" % plan in out


def test_run_summary_passes():
    _need_binary()
    buf = io.StringIO()
    assert _selftest.run(out=buf) == 0, buf.getvalue()
    text = buf.getvalue()
    m = re.search(r"(\d+) passed, 0 failed, 0 skipped \(of (\d+) planned\)", text)
    assert m and m.group(1) == m.group(2), text
    assert "not ok" not in text


def test_doctor_selftest_runs_it():
    _need_binary()
    out = run_python(module="writewatch", argv=["doctor", "--selftest"],
                     stderr_to_stdout=True, timeout=120).stdout
    assert re.search(r"kernel selftest:\n\s+\d+ passed, 0 failed, 0 skipped", out), out


# ---- the wrapper's own logic, against stand-in programs -----------------------

def _fake(tmp_path, body, rc):
    path = tmp_path / "fake-selftest"
    path.write_text("#!/bin/sh\ncat <<'EOF'\n%sEOF\nexit %d\n" % (body, rc))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_run_reports_failed_lines(tmp_path):
    fake = _fake(tmp_path, "1..3\nok 1 - a\nnot ok 2 - b\n# b: page 4 lost\nok 3 - c\n", 1)
    buf = io.StringIO()
    assert _selftest.run(out=buf, binary=fake) == 1
    text = buf.getvalue()
    assert "not ok 2 - b" in text and "page 4 lost" in text
    assert "ok 1 - a" not in text.replace("not ok", "")   # passing lines hidden
    assert "2 passed, 1 failed, 0 skipped (of 3 planned)" in text


def test_run_verbose_shows_every_line(tmp_path):
    fake = _fake(tmp_path, "1..2\nok 1 - a\n# note\nok 2 - b\n", 0)
    buf = io.StringIO()
    assert _selftest.run(verbose=True, out=buf, binary=fake) == 0
    text = buf.getvalue()
    assert "ok 1 - a" in text and "# note" in text and "ok 2 - b" in text
    buf = io.StringIO()
    assert _selftest.run(out=buf, binary=fake) == 0
    assert "ok 1 - a" not in buf.getvalue()
    assert "2 passed, 0 failed, 0 skipped (of 2 planned)" in buf.getvalue()


def test_run_distrusts_exit_zero_with_missing_checks(tmp_path):
    fake = _fake(tmp_path, "1..3\nok 1 - a\nok 2 - b\n", 0)
    buf = io.StringIO()
    assert _selftest.run(out=buf, binary=fake) == 1
    assert "1 did not report" in buf.getvalue()


def test_run_skip_all_is_4(tmp_path):
    fake = _fake(tmp_path, "1..2\n# no PAGEMAP_SCAN\nok 1 - a # SKIP no PAGEMAP_SCAN\n"
                           "ok 2 - b # SKIP no PAGEMAP_SCAN\n", 4)
    buf = io.StringIO()
    assert _selftest.run(out=buf, binary=fake) == 4
    assert "0 passed, 0 failed, 2 skipped" in buf.getvalue()
    assert "no PAGEMAP_SCAN" in buf.getvalue()


def test_run_missing_binary_says_how_to_rebuild(tmp_path):
    buf = io.StringIO()
    assert _selftest.run(out=buf, binary=str(tmp_path / "nope")) == 1
    assert "pip install ." in buf.getvalue()


def test_run_timeout(tmp_path):
    path = tmp_path / "slow"
    path.write_text("#!/bin/sh\necho 1..1\nexec sleep 30\n")
    path.chmod(0o755)
    buf = io.StringIO()
    assert _selftest.run(out=buf, binary=str(path), timeout=1) == 1
    assert "timed out" in buf.getvalue()


# ---- a real skip: the features taken away by seccomp ---------------------------

_AUDIT_ARCH_X86_64 = 0xC000003E
_NR_IOCTL, _NR_USERFAULTFD = 16, 323
_PAGEMAP_SCAN = (3 << 30) | (96 << 16) | (ord("f") << 8) | 16
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000


def _bpf(code, jt, jf, k):
    return struct.pack("=HBBI", code, jt, jf, k)


def _seccomp_preexec(filter_bytes):
    def install():
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(filter_bytes, len(filter_bytes))

        class Prog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        prog = Prog(len(filter_bytes) // 8, ctypes.addressof(buf))
        if libc.prctl(38, 1, 0, 0, 0) != 0:                       # PR_SET_NO_NEW_PRIVS
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:      # SECCOMP_MODE_FILTER
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
    return install


def _no_userfaultfd():
    ld, jeq, ret = 0x20, 0x15, 0x06
    return b"".join([
        _bpf(ld, 0, 0, 4),                                  # arch
        _bpf(jeq, 0, 3, _AUDIT_ARCH_X86_64),
        _bpf(ld, 0, 0, 0),                                  # syscall number
        _bpf(jeq, 0, 1, _NR_USERFAULTFD),
        _bpf(ret, 0, 0, _RET_ERRNO | 38),                   # ENOSYS
        _bpf(ret, 0, 0, _RET_ALLOW),
    ])


def _no_pagemap_scan():
    ld, jeq, ret = 0x20, 0x15, 0x06
    return b"".join([
        _bpf(ld, 0, 0, 4),
        _bpf(jeq, 0, 5, _AUDIT_ARCH_X86_64),
        _bpf(ld, 0, 0, 0),
        _bpf(jeq, 0, 3, _NR_IOCTL),
        _bpf(ld, 0, 0, 24),                                 # args[1], low 32 bits
        _bpf(jeq, 0, 1, _PAGEMAP_SCAN),
        _bpf(ret, 0, 0, _RET_ERRNO | 25),                   # ENOTTY, as before 6.7
        _bpf(ret, 0, 0, _RET_ALLOW),
    ])


@pytest.mark.skipif(platform.machine() != "x86_64",
                    reason="the seccomp filter here is written for x86_64 syscall numbers")
@pytest.mark.parametrize("filt,reason", [
    (_no_userfaultfd, "userfaultfd"),
    (_no_pagemap_scan, "PAGEMAP_SCAN not supported"),
])
def test_missing_feature_is_a_skip_not_a_pass(filt, reason):
    _need_binary()
    out = run_command([BINARY], returncode=4, preexec_fn=_seccomp_preexec(filt()),
                      timeout=60).stdout
    plan, results = _selftest.parse_tap(out)
    assert plan and len(results) == plan, out
    assert all(r.ok and "# SKIP " in r.description for r in results), out
    assert reason in out
    assert "# Totals: pass:0 fail:0" in out
    # and the Python summary calls it a skip
    counts = _selftest.parse(out)
    assert counts["skipped"] == plan and counts["passed"] == 0 and counts["failed"] == 0


# ---- make -C kernel check ------------------------------------------------------

@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.skipif(shutil.which("cc") is None and not os.environ.get("CC"),
                    reason="no C compiler (cc) is installed")
def test_make_check(tmp_path):
    # A copy of kernel/, so that concurrent runs do not share kernel/build/.
    src = os.path.join(ROOT, "kernel")
    dst = tmp_path / "kernel"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("build", "matrix"))
    out = run_command(["make", "-C", str(dst), "check"], stderr_to_stdout=True,
                      timeout=180).stdout
    assert (dst / "build" / "pagemap_contract").exists()
    plan, results = _selftest.parse_tap(out)
    assert plan and len(results) == plan and all(r.ok for r in results), out
    run_command(["make", "-C", str(dst), "clean"], stderr_to_stdout=True, timeout=60)
    assert not (dst / "build").exists()
