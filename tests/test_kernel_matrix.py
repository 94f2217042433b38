"""The kernel matrix's own logic (kernel/matrix/matrix.py), on the host: no
QEMU and no download here.  The matrix itself is run with `make -C kernel
matrix`; these tests check the parts that decide what it reports."""

import importlib.util
import json
import os
import shutil
import sys

import pytest

from helpers import ROOT, run_command

_spec = importlib.util.spec_from_file_location(
    "ww_kernel_matrix", os.path.join(ROOT, "kernel", "matrix", "matrix.py"))
matrix = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(matrix)

K61 = next(k for k in matrix.KERNELS if k["label"] == "6.1")
K612 = next(k for k in matrix.KERNELS if k["label"] == "6.12")
INFO = {"package": "linux-image-test", "version": "1", "release": "6.1.0-test"}


def _case(name, classname="tests.test_contract", outcome="passed", message=""):
    if outcome == "failed":
        body = '<failure message="assert 0">trace</failure>'
    elif outcome == "skipped":
        body = '<skipped type="pytest.skip" message="%s">skip</skipped>' % message
    else:
        body = ""
    return '<testcase classname="%s" name="%s" time="0.1">%s</testcase>' % (
        classname, name, body)


SKIPPED_TAP = "1..2\nok 1 - scan # SKIP no PAGEMAP_SCAN\nok 2 - reset # SKIP no PAGEMAP_SCAN\n"


def write_guest_output(outdir, backends, default, cases, pytest_rc=0,
                       selftest=(4, SKIPPED_TAP)):
    """What a guest leaves in its output folder."""
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "selftest.rc"), "w") as f:
        f.write("%d\n" % selftest[0])
    with open(os.path.join(outdir, "selftest.txt"), "w") as f:
        f.write(selftest[1])
    probe = {"backends": [[n, ok, reason] for n, ok, reason in backends], "default": default}
    if default is None:
        probe["default_error"] = "BackendUnavailable: none"
    with open(os.path.join(outdir, "backends.json"), "w") as f:
        json.dump(probe, f)
    with open(os.path.join(outdir, "junit.xml"), "w") as f:
        f.write('<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">'
                + "".join(cases) + "</testsuite></testsuites>")
    with open(os.path.join(outdir, "pytest.rc"), "w") as f:
        f.write("%d\n" % pytest_rc)


NO_ASYNC = "userfaultfd lacks UFFD_FEATURE_WP_ASYNC (Linux >= 6.7 needed)"
AS_ON_61 = [("pagemap", False, NO_ASYNC), ("uffd", True, "ok"),
            ("mprotect", True, "ok"), ("softdirty", True, "ok")]


def cases_for(available, outcome_of=lambda b: "passed"):
    out = [_case("test_default_backend_is_the_first_available")]
    for b in matrix.BACKENDS:
        if b in available:
            out.append(_case("test_reset_write_watch[%s]" % b, outcome=outcome_of(b)))
            out.append(_case("test_random_page_sets[%s-3]" % b, outcome=outcome_of(b)))
        else:
            out.append(_case("test_reset_write_watch[%s]" % b, outcome="skipped",
                             message="unavailable"))
    return out


def test_a_good_61_run_passes(tmp_path):
    write_guest_output(str(tmp_path), AS_ON_61, "uffd",
                       cases_for({"uffd", "mprotect", "softdirty"}))
    row = matrix.judge(K61, INFO, str(tmp_path), 0, "", 10.0)
    assert row["problems"] == []
    assert row["ok"]
    assert row["short"]["softdirty"] == "pass (2 tests)"
    assert row["short"]["pagemap"] == "unavailable"
    assert row["reasons"] == {"pagemap": NO_ASYNC}
    assert row["other"] == "1 passed"
    assert row["selftest"] == "exit 4: 0 passed, 0 failed, 2 skipped"


@pytest.mark.parametrize("rc, tap", [
    (0, "1..2\nok 1 - scan\nok 2 - reset\n"),            # features found on 6.1?
    (1, "1..2\nnot ok 1 - scan\nok 2 - reset # SKIP x\n"),
    (124, ""),                                              # timed out
])
def test_selftest_must_skip_on_61(tmp_path, rc, tap):
    write_guest_output(str(tmp_path), AS_ON_61, "uffd",
                       cases_for({"uffd", "mprotect", "softdirty"}), selftest=(rc, tap))
    row = matrix.judge(K61, INFO, str(tmp_path), 0, "", 10.0)
    assert not row["ok"]
    assert any("C selftest exited %d" % rc in p for p in row["problems"]), row["problems"]


@pytest.mark.parametrize("change, expect", [
    # pagemap claiming to work on a kernel without PAGEMAP_SCAN
    (lambda b, d: ([("pagemap", True, "ok")] + b[1:], d), "pagemap is available"),
    # softdirty missing on a kernel built with it
    (lambda b, d: (b[:3] + [("softdirty", False, "x")], d), "softdirty is unavailable"),
    # the automatic choice not falling back to uffd
    (lambda b, d: (b, "mprotect"), "default backend is mprotect"),
    (lambda b, d: (b, None), "default backend is None"),
    # unavailable for the wrong reason
    (lambda b, d: ([("pagemap", False, "probe failed: OSError")] + b[1:], d),
     "does not match"),
])
def test_wrong_availability_fails_61(tmp_path, change, expect):
    backends, default = change(AS_ON_61, "uffd")
    write_guest_output(str(tmp_path), backends, default,
                       cases_for({"uffd", "mprotect", "softdirty"}))
    row = matrix.judge(K61, INFO, str(tmp_path), 0, "", 10.0)
    assert not row["ok"]
    assert any(expect in p for p in row["problems"]), row["problems"]


def test_a_failed_backend_test_fails_its_cell(tmp_path):
    write_guest_output(str(tmp_path), AS_ON_61, "uffd",
                       cases_for({"uffd", "mprotect", "softdirty"},
                                 lambda b: "failed" if b == "softdirty" else "passed"),
                       pytest_rc=1)
    row = matrix.judge(K61, INFO, str(tmp_path), 0, "", 10.0)
    assert not row["ok"]
    assert row["cells"]["softdirty"][0] is False
    assert row["cells"]["uffd"][0] is True
    assert row["short"]["softdirty"] == "**FAIL**: 2 of 2 tests failed"
    assert "pytest exited" not in " ".join(row["problems"])


def test_available_backend_without_tests_fails(tmp_path):
    write_guest_output(str(tmp_path), AS_ON_61, "uffd", cases_for({"uffd", "mprotect"}))
    row = matrix.judge(K61, INFO, str(tmp_path), 0, "", 10.0)
    assert not row["ok"]
    assert any("softdirty is available but none of its tests ran" in p
               for p in row["problems"]), row["problems"]


@pytest.mark.parametrize("status, note, rc, expect", [
    (None, "timed out after 5 s", 0, "guest: timed out"),
    (3, "", 0, "guest script exited 3"),
    (0, "", 5, "collected no tests"),
    (0, "", 2, "pytest exited 2"),
    (0, "", 1, "pytest exited 1"),      # rc 1 without a failed test case
])
def test_guest_and_pytest_failures(tmp_path, status, note, rc, expect):
    write_guest_output(str(tmp_path), AS_ON_61, "uffd",
                       cases_for({"uffd", "mprotect", "softdirty"}), pytest_rc=rc)
    row = matrix.judge(K61, INFO, str(tmp_path), status, note, 10.0)
    assert not row["ok"]
    assert any(expect in p for p in row["problems"]), row["problems"]


def test_missing_output_fails(tmp_path):
    row = matrix.judge(K612, INFO, str(tmp_path), None, "not up after 300 s", 300.0)
    assert not row["ok"]
    assert "pytest did not run" in row["problems"]


@pytest.mark.parametrize("classname, name, backend", [
    ("tests.test_contract", "test_x[softdirty]", "softdirty"),
    ("tests.test_contract", "test_x[uffd-3]", "uffd"),
    ("tests.test_contract", "test_x[4096-mprotect-True]", "mprotect"),
    ("tests.test_contract", "test_unknown_backend_is_a_value_error", None),
    ("tests.test_softdirty", "test_clear_refs", "softdirty"),
    ("tests.test_uffd_sync", "test_thread", "uffd"),
    ("tests.test_contract", "test_x[pagemapish]", None),
])
def test_backend_of(classname, name, backend):
    assert matrix.backend_of({"classname": classname, "name": name}) == backend


def test_elf_interpreter_detection():
    assert matrix.elf_is_dynamic(os.path.realpath(sys.executable))
    busybox = matrix.find_busybox()
    if busybox is None:
        pytest.skip("busybox-static is not installed")
    assert not matrix.elf_is_dynamic(busybox)


def test_cpio_archive_reads_back(tmp_path):
    """The initramfs writer, checked against busybox's own cpio reader."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed")
    c = matrix.Cpio()
    c.dir("bin")
    c.file("bin/hello", b"hello world\n", 0o755)
    c.file("odd", b"x" * 4097)          # a length that needs padding
    c.chardev("console", 5, 1)
    archive = tmp_path / "a.cpio"
    archive.write_bytes(c.bytes())
    with open(archive, "rb") as f:
        listing = run_command([busybox, "cpio", "-tv"], stdin=f, timeout=60).stdout.splitlines()
    assert [line.split()[-1] for line in listing] == ["bin", "bin/hello", "odd", "console"]
    assert listing[1].startswith("-rwxr-xr-x") and listing[3].startswith("c")
    out = tmp_path / "x"
    out.mkdir()
    with open(archive, "rb") as f:
        run_command([busybox, "cpio", "-id"], stdin=f, cwd=str(out), timeout=60)
    assert (out / "bin" / "hello").read_bytes() == b"hello world\n"
    assert (out / "odd").read_bytes() == b"x" * 4097


def test_module_order_puts_dependencies_first(tmp_path):
    """modules.dep as depmod writes it -> load order with dependencies first,
    built-in modules skipped, an unknown module refused."""
    mdir = tmp_path / "lib" / "modules" / "9.9"
    mdir.mkdir(parents=True)
    (mdir / "modules.dep").write_text(
        "kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz\n"
        "kernel/net/9p/9pnet.ko.xz:\n"
        "kernel/fs/netfs/netfs.ko.xz:\n"
        "kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz\n"
        "kernel/fs/overlayfs/overlay.ko.xz:\n")
    (mdir / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    order = matrix.module_load_order(str(tmp_path), "9.9", matrix.MODULES)
    names = [matrix.module_name(p) for p in order]
    assert sorted(names) == ["9p", "9pnet", "9pnet_virtio", "netfs", "overlay"]
    assert len(names) == len(set(names))
    assert names.index("9pnet") < names.index("9pnet_virtio")
    assert names.index("9pnet") < names.index("9p") and names.index("netfs") < names.index("9p")
    with pytest.raises(matrix.MatrixError, match="nosuch"):
        matrix.module_load_order(str(tmp_path), "9.9", ["nosuch"])
