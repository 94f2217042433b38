#!/usr/bin/env python3
"""The kernel matrix: run writewatch's tests under other Linux kernels in QEMU.

For each kernel (Debian's packaged builds, downloaded with apt-get into
kernel/matrix/cache/, never installed) this boots a QEMU guest whose root is
the host's own / (read-only over virtio-9p, with a tmpfs overlay so the guest
can write), so the guest runs the host's Python on this very checkout and its
in-place build of writewatch/_core*.so.  Inside it runs `writewatch doctor`,
records every backend's availability and the default choice, and runs the
contract and backend test suites.  It prints a table kernel x backend ->
result, writes it as markdown to kernel/matrix/results.md, and exits non-zero
when any check failed.

Usage:  python3 kernel/matrix/matrix.py [--kernel 6.1] [--tests FILE ...]
        make -C kernel matrix
"""

import argparse
import glob
import json
import lzma
import gzip
import os
import re
import shlex
import shutil
import selectors
import signal
import stat
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(os.path.dirname(HERE))
CACHE = os.path.join(HERE, "cache")
RESULTS_MD = os.path.join(HERE, "results.md")

if __name__ == "__main__":
    sys.path.insert(0, CHECKOUT)    # the guests run this checkout's build: so do we
try:
    # The backends in preference order (BACKEND_NAMES, written once in
    # writewatch/_registry.pxi) and the one TAP parser (the C selftest's output).
    from writewatch._core import BACKEND_NAMES as BACKENDS
    from writewatch import _selftest
except ImportError as e:
    if __name__ != "__main__":
        raise
    sys.exit("matrix: error: the guests run writewatch with this Python (%s), which cannot "
             "import it from %s: %s\n(build it there: `pip install -e '.[test]'` in a virtual "
             "environment builds the extension in the checkout)"
             % (sys.executable, CHECKOUT, e))

# Debian's archive, used through a private apt configuration in the cache:
# the host's own sources and state are never touched.
APT_SOURCES = """\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
"""

# The kernels, and what each must show.  "available": the availability each
# backend must have there (both kernels are built with CONFIG_USERFAULTFD and
# CONFIG_MEM_SOFT_DIRTY; only 6.12 has PAGEMAP_SCAN and WP_ASYNC); "reason":
# a pattern the reason of an unavailable backend must match; "default": the
# backend the automatic choice must pick; "selftest": the exit status the C
# selftest of the kernel contract (writewatch/_bin/ww-selftest) must give.
KERNELS = [
    {
        "label": "6.1",
        "suites": ("bookworm-security", "bookworm-updates", "bookworm"),
        "summary": "userfaultfd WP and soft-dirty; no PAGEMAP_SCAN, no WP_ASYNC",
        "available": {"pagemap": False, "uffd": True, "mprotect": True, "softdirty": True},
        "reason": {"pagemap": r"WP_ASYNC|PAGEMAP_SCAN"},
        "default": "uffd",
        "selftest": 4,          # KSFT_SKIP: the contract's features are missing
    },
    {
        "label": "6.12",
        "suites": ("bookworm-backports",),
        "summary": "PAGEMAP_SCAN and userfaultfd WP_ASYNC, write-protect and soft-dirty",
        "available": {"pagemap": True, "uffd": True, "mprotect": True, "softdirty": True},
        "reason": {},
        "default": "pagemap",
        "selftest": 0,
    },
]

# What the guest runs: the contract suite, the per-backend suites, and the
# suites of what the backends' hooks serve (win32's commit/decommit and
# latching, many regions, consumers, Snapshots).  The benchmarks, the model,
# stress and soak runs are left out (pass them with --tests): under TCG the
# guest runs 10-20x slower than native.
DEFAULT_TESTS = (
    "tests/test_contract.py",
    "tests/test_uffd.py",
    "tests/test_mprotect.py",
    "tests/test_softdirty.py",
    "tests/test_win32*.py",
    "tests/test_many.py",
    "tests/test_trackers.py",
    "tests/test_snapshots.py",
)

# Kernel modules the initramfs loads (their dependencies come along): PCI
# virtio transport, 9p over virtio, overlayfs.  Built-in ones are skipped.
MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")

REQUIREMENTS = {
    # program: Debian package
    "qemu-system-x86_64": "qemu-system-x86",
    "busybox": "busybox-static",
    "depmod": "kmod",
    "dpkg-deb": "dpkg",
    "apt-get": "apt",
}

MARKER = "WW-MATRIX-EXIT"


def log(msg):
    sys.stderr.write("matrix: %s\n" % msg)
    sys.stderr.flush()


class MatrixError(Exception):
    """A problem with the matrix itself (not a test result)."""


def run(cmd, timeout=600, **kw):
    """Run a command, raise MatrixError naming it on failure; return stdout."""
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise MatrixError("%s: timed out after %d s" % (" ".join(cmd), timeout))
    if p.returncode != 0:
        raise MatrixError("%s: exit %d\n%s" % (" ".join(cmd), p.returncode,
                                               (p.stderr or p.stdout).strip()[-2000:]))
    return p.stdout


# ---------------------------------------------------------------- requirements

def find_busybox():
    """A statically linked busybox (the guest has no libc before the chroot)."""
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(path) and not elf_is_dynamic(path):
            return path
    return None


def elf_is_dynamic(path):
    """True when the ELF file asks for a program interpreter (PT_INTERP)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:     # 64-bit ELF only
            return True
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return any(struct.unpack_from("<I", table, i * phentsize)[0] == 3 for i in range(phnum))


def check_requirements(install):
    missing = []
    for prog, pkg in REQUIREMENTS.items():
        if prog == "busybox":
            ok = find_busybox() is not None
        else:
            ok = shutil.which(prog) is not None
        if not ok:
            missing.append(pkg)
    if not missing:
        return
    if not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        raise MatrixError(
            "missing: %s (programs: %s); install them with\n    apt-get install -y "
            "--no-install-recommends %s\nor run this script as root with --install"
            % (", ".join(missing),
               ", ".join(p for p, k in REQUIREMENTS.items() if k in missing),
               " ".join(missing)))
    log("installing %s with apt-get" % " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update"], timeout=600, env=env)
    run(["apt-get", "install", "-y", "--no-install-recommends"] + missing, timeout=1200, env=env)
    check_requirements(install=False)


# --------------------------------------------------------------------- kernels

class Apt:
    """apt-get/apt-cache on a private configuration under cache/apt/."""

    def __init__(self):
        self.root = os.path.join(CACHE, "apt")
        for sub in ("lists/partial", "archives/partial", "etc/preferences.d",
                    "etc/sources.list.d", "etc/apt.conf.d"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        self.sources = os.path.join(self.root, "etc", "sources.list")
        with open(self.sources, "w") as f:
            f.write(APT_SOURCES)
        r = self.root
        self.opts = [
            "-o", "Dir::Etc::sourcelist=" + self.sources,
            "-o", "Dir::Etc::sourceparts=" + os.path.join(r, "etc", "sources.list.d"),
            "-o", "Dir::Etc::preferencesparts=" + os.path.join(r, "etc", "preferences.d"),
            "-o", "Dir::Etc::parts=" + os.path.join(r, "etc", "apt.conf.d"),
            "-o", "Dir::State::Lists=" + os.path.join(r, "lists"),
            "-o", "Dir::Cache=" + os.path.join(r, "cache"),
            "-o", "Dir::Cache::archives=" + os.path.join(r, "archives"),
            "-o", "APT::Sandbox::User=root",
            "-o", "Debug::NoLocking=1",
        ]
        self.updated = False

    def update(self):
        if not self.updated:
            log("apt-get update (private configuration in %s)" % os.path.relpath(self.root))
            run(["apt-get"] + self.opts + ["update"], timeout=900)
            self.updated = True

    def image_package(self, suites):
        """(package, version) of linux-image-*-amd64 that linux-image-amd64
        depends on in the first of `suites` that has it."""
        out = run(["apt-cache"] + self.opts + ["madison", "linux-image-amd64"])
        for suite in suites:
            for line in out.splitlines():
                fields = [x.strip() for x in line.split("|")]
                if len(fields) == 3 and (" %s/" % suite) in fields[2]:
                    meta_version = fields[1]
                    deps = run(["apt-cache"] + self.opts +
                               ["show", "linux-image-amd64=" + meta_version])
                    m = re.search(r"^Depends: .*?(linux-image-[^\s,]+-amd64)\b", deps, re.M)
                    if not m:
                        raise MatrixError("linux-image-amd64=%s: no image dependency"
                                          % meta_version)
                    pkg = m.group(1)
                    pol = run(["apt-cache"] + self.opts + ["show", pkg])
                    versions = re.findall(r"^Version: (\S+)", pol, re.M)
                    if not versions:
                        raise MatrixError("%s: not in the package lists" % pkg)
                    return pkg, versions[0]
        raise MatrixError("linux-image-amd64: not found in %s" % ", ".join(suites))

    def download(self, pkg, version, dest):
        os.makedirs(dest, exist_ok=True)
        before = set(os.listdir(dest))
        run(["apt-get"] + self.opts + ["download", "%s=%s" % (pkg, version)],
            timeout=1800, cwd=dest)
        new = [f for f in set(os.listdir(dest)) - before if f.endswith(".deb")]
        if len(new) != 1:
            raise MatrixError("apt-get download %s: expected one .deb, got %s" % (pkg, new))
        return os.path.join(dest, new[0])


def deb_name(pkg, version):
    # apt-get download's file name: the epoch's colon is escaped as %3a.
    return "%s_%s_amd64.deb" % (pkg, version.replace(":", "%3a"))


def fetch_kernel(kernel, apt, offline):
    """Download and unpack the kernel package; return a dict describing it."""
    debs = os.path.join(CACHE, "debs")
    pkg = version = None
    if not offline:
        try:
            apt.update()
            pkg, version = apt.image_package(kernel["suites"])
        except MatrixError as e:
            log("cannot ask the archive (%s); looking in the cache" % str(e).splitlines()[0])
    state = os.path.join(CACHE, "kernel-%s.json" % kernel["label"])
    if pkg is None:
        if not os.path.exists(state):
            raise MatrixError("kernel %s: not in the cache and the archive cannot be reached"
                              % kernel["label"])
        with open(state) as f:
            info = json.load(f)
        pkg, version = info["package"], info["version"]
    deb = os.path.join(debs, deb_name(pkg, version))
    if not os.path.exists(deb):
        log("downloading %s %s" % (pkg, version))
        deb = apt.download(pkg, version, debs)
    root = os.path.join(CACHE, "root", "%s_%s" % (pkg, version))
    if not os.path.isdir(os.path.join(root, "lib", "modules")):
        log("unpacking %s" % os.path.basename(deb))
        tmp = root + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        run(["dpkg-deb", "-x", deb, tmp], timeout=600)
        shutil.rmtree(root, ignore_errors=True)
        os.rename(tmp, root)
    kvers = os.listdir(os.path.join(root, "lib", "modules"))
    if len(kvers) != 1:
        raise MatrixError("%s: expected one lib/modules/<version>, got %s" % (root, kvers))
    kver = kvers[0]
    vmlinuz = os.path.join(root, "boot", "vmlinuz-" + kver)
    if not os.path.exists(vmlinuz):
        raise MatrixError("%s: no boot/vmlinuz-%s" % (root, kver))
    info = {"label": kernel["label"], "package": pkg, "version": version,
            "release": kver, "root": root, "vmlinuz": vmlinuz}
    with open(state, "w") as f:
        json.dump(info, f, indent=1)
    return info


# ------------------------------------------------------------------ initramfs

def module_load_order(root, kver, wanted):
    """Paths (relative to lib/modules/<kver>) of `wanted` and their
    dependencies, dependencies first; built-in modules are skipped."""
    mdir = os.path.join(root, "lib", "modules", kver)
    if not os.path.exists(os.path.join(mdir, "modules.dep")):
        run(["depmod", "-b", root, kver], timeout=600)
    deps, by_name = {}, {}
    with open(os.path.join(mdir, "modules.dep")) as f:
        for line in f:
            path, _, rest = line.partition(":")
            deps[path] = rest.split()
            by_name[module_name(path)] = path
    builtin = set()
    if os.path.exists(os.path.join(mdir, "modules.builtin")):
        with open(os.path.join(mdir, "modules.builtin")) as f:
            builtin = {module_name(line.strip()) for line in f if line.strip()}
    order = []

    def visit(path):
        if path in order:
            return
        for d in deps.get(path, ()):
            visit(d)
        order.append(path)

    for name in wanted:
        name = name.replace("-", "_")
        if name in by_name:
            visit(by_name[name])
        elif name not in builtin:
            raise MatrixError("kernel %s: module %s is neither a module nor built in"
                              % (kver, name))
    return order


def module_name(path):
    base = os.path.basename(path)
    for ext in (".xz", ".gz", ".zst"):
        if base.endswith(ext):
            base = base[:-len(ext)]
    return base[:-3].replace("-", "_") if base.endswith(".ko") else base


def read_module(path):
    """A module's bytes, decompressed (busybox insmod wants a plain .ko)."""
    if path.endswith(".xz"):
        with lzma.open(path) as f:
            return f.read()
    if path.endswith(".gz"):
        with gzip.open(path) as f:
            return f.read()
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", path], stdout=subprocess.PIPE,
                              check=True).stdout
    with open(path, "rb") as f:
        return f.read()


class Cpio:
    """A minimal writer of the "newc" cpio format the kernel unpacks."""

    def __init__(self):
        self.parts = []
        self.ino = 1

    def _entry(self, name, mode, data=b"", rdev=(0, 0)):
        name_b = name.encode() + b"\0"
        hdr = "070701" + "".join("%08X" % v for v in (
            self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
            len(name_b), 0))
        self.ino += 1
        blob = hdr.encode() + name_b
        blob += b"\0" * (-len(blob) % 4) + data
        blob += b"\0" * (-len(blob) % 4)
        self.parts.append(blob)

    def dir(self, name):
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name, data, mode=0o644):
        self._entry(name, stat.S_IFREG | mode, data)

    def chardev(self, name, major, minor):
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def bytes(self):
        self._entry("TRAILER!!!", 0)
        return b"".join(self.parts)


INIT = r"""#!/bin/busybox sh
# writewatch kernel matrix: guest init.  Mount the host's / (read-only 9p)
# under a tmpfs overlay, chroot into it, run /ww-matrix.sh, report its
# exit status on the console, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "ww-matrix: $*"; echo "%(marker)s 125"; poweroff -f; }
for m in $(cat /modules/order); do
    insmod /modules/$m || fail "insmod $m failed"
done
mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=%(msize)d,cache=loose hostroot /lower \
    || fail "mount of the host's root over 9p failed"
mount -t tmpfs -o size=%(tmpfs)s tmpfs /rw || fail "tmpfs failed"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
    || fail "overlay mount failed"
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mkdir -p /newroot/ww-out
mount -t 9p -o trans=virtio,version=9p2000.L,msize=%(msize)d wwout /newroot/ww-out \
    || fail "mount of the output folder failed"
cp /ww-matrix.sh /newroot/ww-matrix.sh
# The kernel's own build configuration where tools look for it (the host's
# /boot has none for this kernel): an overlay write, the host is untouched.
if [ -f /config ]; then
    mkdir -p /newroot/boot && cp /config /newroot/boot/config-$(uname -r)
fi
echo "ww-matrix: kernel $(uname -r) up, running the tests"
chroot /newroot /bin/sh /ww-matrix.sh
rc=$?
sync
echo "%(marker)s $rc"
poweroff -f
"""


def build_initramfs(info, guest_script, busybox):
    root, kver = info["root"], info["release"]
    order = module_load_order(root, kver, MODULES)
    c = Cpio()
    for d in ("bin", "dev", "proc", "sys", "modules", "tmp"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3)
    with open(busybox, "rb") as f:
        c.file("bin/busybox", f.read(), 0o755)
    names = []
    for rel in order:
        name = module_name(rel) + ".ko"
        c.file("modules/" + name, read_module(os.path.join(root, "lib", "modules", kver, rel)))
        names.append(name)
    c.file("modules/order", ("\n".join(names) + "\n").encode())
    c.file("init", (INIT % {"marker": MARKER, "msize": 512 * 1024, "tmpfs": "1g"}).encode(),
           0o755)
    c.file("ww-matrix.sh", guest_script.encode(), 0o755)
    config = os.path.join(root, "boot", "config-" + kver)
    if os.path.exists(config):
        with open(config, "rb") as f:
            c.file("config", f.read())
    return c.bytes()


# ------------------------------------------------------------------ the guest

GUEST_PROBE = r"""
import contextlib, json, sys
import writewatch
from writewatch import _cli
with open("/ww-out/doctor.txt", "w") as f, contextlib.redirect_stdout(f):
    try:
        rc = _cli.main(["doctor"])
    except BaseException as e:
        print("doctor raised %s: %s" % (type(e).__name__, e))
        rc = 1
out = {"doctor_rc": rc, "backends": [list(b) for b in writewatch.backends()]}
try:
    out["default"] = writewatch.default_backend()
except Exception as e:
    out["default"] = None
    out["default_error"] = "%s: %s" % (type(e).__name__, e)
json.dump(out, sys.stdout)
"""


SELFTEST_TIMEOUT = 900      # seconds; ~1 s natively


def guest_script(tests, pytest_args):
    """The shell script the guest runs inside the chroot.  Each step's exit
    status goes into a file of its own (no pipes to lose it in)."""
    python = os.path.abspath(sys.executable)   # not realpath: keep a venv a venv
    path = ":".join([os.path.dirname(python), "/usr/local/sbin", "/usr/local/bin",
                     "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
    q = shlex.quote
    pytest = [python, "-m", "pytest", "-p", "no:cacheprovider", "-p", "ww_matrix_plugin",
              "-rA", "--durations=15", "--junitxml=/ww-out/junit.xml"] + list(pytest_args) + list(tests)
    return "\n".join([
        "#!/bin/sh",
        "export PATH=%s HOME=/root LANG=C.UTF-8 PYTHONUNBUFFERED=1" % q(path),
        "export PYTHONPATH=%s" % q(HERE),
        "unset WRITEWATCH_BACKEND",
        "cd %s || exit 124" % q(CHECKOUT),
        "uname -r > /ww-out/uname.txt",
        "%s -c %s > /ww-out/backends.json 2> /ww-out/backends.err" % (q(python), q(GUEST_PROBE)),
        "echo $? > /ww-out/backends.rc",
        "timeout %d writewatch/_bin/ww-selftest > /ww-out/selftest.txt 2>&1" % SELFTEST_TIMEOUT,
        "echo $? > /ww-out/selftest.rc",
        "%s > /ww-out/pytest.txt 2>&1" % " ".join(q(a) for a in pytest),
        "echo $? > /ww-out/pytest.rc",
        "exit 0",
        "",
    ])


def kvm_usable():
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


UP_LINE = "ww-matrix: kernel "
BOOT_TIMEOUT = 300      # seconds until the guest must have mounted its root


def boot(info, initrd, outdir, accel, memory, cpus, timeout, console_log, verbose):
    """Boot the kernel; return (exit status reported by the guest or None,
    seconds, note).  The guest must be up within BOOT_TIMEOUT seconds and
    done within `timeout`."""
    cmd = ["qemu-system-x86_64", "-nodefaults", "-no-reboot", "-display", "none",
           "-machine", "q35", "-m", str(memory), "-smp", str(cpus),
           "-kernel", info["vmlinuz"], "-initrd", initrd,
           "-append", "console=ttyS0 panic=-1 loglevel=4 mitigations=off rdinit=/init",
           "-serial", "stdio", "-monitor", "none",
           "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                      "multidevs=remap,id=hostroot",
           "-virtfs", "local,path=%s,mount_tag=wwout,security_model=none,id=wwout" % outdir]
    if accel == "kvm":
        cmd += ["-accel", "kvm", "-cpu", "host"]
    else:
        cmd += ["-accel", "tcg,thread=multi", "-cpu", "max,la57=off"]
    start = time.monotonic()
    status, note = None, ""
    with open(console_log, "w") as logf:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = start + timeout
            sel = selectors.DefaultSelector()
            sel.register(p.stdout, selectors.EVENT_READ)
            buf = b""
            up = False
            follow = os.path.join(outdir, "pytest.txt")
            followed = 0
            while True:
                now = time.monotonic()
                if not up and now - start > BOOT_TIMEOUT:
                    note = "not up after %d s" % BOOT_TIMEOUT
                    break
                left = deadline - now
                if left <= 0:
                    note = "timed out after %d s" % timeout
                    break
                if verbose and os.path.exists(follow):
                    with open(follow, "rb") as f:
                        f.seek(followed)
                        more = f.read()
                    cut = more.rfind(b"\n") + 1
                    for line in more[:cut].decode("utf-8", "replace").splitlines():
                        sys.stderr.write("  pytest| %s\n" % line)
                    followed += cut
                if not sel.select(min(left, 5.0)):
                    continue
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    break
                logf.write(chunk.decode("utf-8", "replace"))
                logf.flush()
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    if verbose:
                        sys.stderr.write("  | %s\n" % line)
                    if line.startswith(UP_LINE):
                        up = True
                    m = re.match(r"%s (\d+)$" % MARKER, line.strip())
                    if m:
                        status = int(m.group(1))
        finally:
            if p.poll() is None:
                try:
                    p.wait(timeout=30 if status is not None else 0.1)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
    if status is None and not note:
        note = "guest stopped without reporting (qemu exit %s)" % p.returncode
    return status, time.monotonic() - start, note


# ------------------------------------------------------------------ results

def backend_of(testcase):
    """The backend a junit test case belongs to: its parameter id, else its
    module's name, else None."""
    name = testcase.get("name", "")
    m = re.search(r"\[(.*)\]$", name)
    if m:
        tokens = re.split(r"[-_/,. ]", m.group(1))
        found = [b for b in BACKENDS if b in tokens]
        if len(found) == 1:
            return found[0]
    module = testcase.get("classname", "").split(".")
    for part in module:
        for b in BACKENDS:
            if part == "test_" + b or part.startswith("test_" + b + "_"):
                return b
    return None


def read_junit(path):
    """{backend or None: {"passed": n, "failed": n, "skipped": n, "reasons": set,
    "failures": [names]}}"""
    counts = {}
    if not os.path.exists(path):
        return None
    try:
        tree = ET.parse(path)
    except ET.ParseError:
        return None
    for tc in tree.iter("testcase"):
        c = counts.setdefault(backend_of(tc), {"passed": 0, "failed": 0, "skipped": 0,
                                               "reasons": set(), "failures": []})
        if tc.find("failure") is not None or tc.find("error") is not None:
            c["failed"] += 1
            c["failures"].append("%s::%s" % (tc.get("classname"), tc.get("name")))
        elif tc.find("skipped") is not None:
            c["skipped"] += 1
            msg = tc.find("skipped").get("message", "")
            c["reasons"].add(msg.replace("\n", " ")[:160])
        else:
            c["passed"] += 1
    return counts


def read_text(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def judge(kernel, info, outdir, status, note, seconds):
    """Turn the guest's output into a row: {backend: (ok, text)} plus notes."""
    row = {"kernel": "%s (%s)" % (kernel["label"], info["release"]),
           "package": "%s %s" % (info["package"], info["version"]),
           "seconds": seconds, "cells": {}, "short": {}, "reasons": {}, "problems": [],
           "default": "?"}
    problems = row["problems"]
    if status is None:
        problems.append("guest: " + note)
    elif status != 0:
        problems.append("guest script exited %d" % status)
    try:
        probe = json.loads(read_text(os.path.join(outdir, "backends.json")))
    except ValueError:
        probe = None
        problems.append("backend probe failed: %s" % read_text(
            os.path.join(outdir, "backends.err")).strip()[-500:])
    selftest_rc = read_text(os.path.join(outdir, "selftest.rc")).strip()
    counts = tap_counts(read_text(os.path.join(outdir, "selftest.txt")))
    row["selftest"] = "exit %s: %s" % (selftest_rc or "?", counts)
    want = kernel.get("selftest")
    if want is not None and selftest_rc != str(want):
        problems.append("C selftest exited %s (%s), expected %d (see %s)" % (
            selftest_rc or "nothing", counts, want,
            os.path.relpath(os.path.join(outdir, "selftest.txt"))))
    pytest_rc = read_text(os.path.join(outdir, "pytest.rc")).strip()
    junit = read_junit(os.path.join(outdir, "junit.xml"))
    if pytest_rc == "":
        problems.append("pytest did not run")
    elif pytest_rc == "5" or (junit is not None and not junit):
        problems.append("pytest collected no tests")
    elif pytest_rc != "0" and not (pytest_rc == "1" and junit and
                                   any(c["failed"] for c in junit.values())):
        problems.append("pytest exited %s (see %s)" % (
            pytest_rc, os.path.relpath(os.path.join(outdir, "pytest.txt"))))
    junit = junit or {}
    avail = {}
    if probe:
        for name, ok, reason in probe["backends"]:
            avail[name] = (ok, reason)
        row["default"] = probe.get("default") or "none"
        want = kernel.get("default")
        if want and probe.get("default") != want:
            problems.append("default backend is %s, expected %s (%s)" % (
                probe.get("default"), want, probe.get("default_error", "")))
    for b in BACKENDS:
        ok = True
        parts = []
        if b in avail:
            is_avail, reason = avail[b]
            parts.append("available" if is_avail else "unavailable: %s" % reason)
            if not is_avail:
                row["reasons"][b] = reason
            want = kernel["available"].get(b)
            if want is not None and want != is_avail:
                ok = False
                problems.append("%s is %s, expected %s" % (
                    b, "available" if is_avail else "unavailable (%s)" % reason,
                    "available" if want else "unavailable"))
            pattern = kernel["reason"].get(b)
            if pattern and not is_avail and not re.search(pattern, reason):
                ok = False
                problems.append("%s: reason %r does not match %r" % (b, reason, pattern))
        else:
            ok = False
            parts.append("no probe result")
        c = junit.get(b)
        if c:
            parts.append(counts_text(c))
            if c["failed"]:
                ok = False
                problems.append("%s: %d failed: %s" % (b, c["failed"],
                                                        ", ".join(c["failures"][:5])))
            if b in avail and avail[b][0] and c["passed"] == 0:
                ok = False
                problems.append("%s is available but none of its tests ran" % b)
        else:
            parts.append("no tests")
            if b in avail and avail[b][0]:
                ok = False
                problems.append("%s is available but has no tests in the run" % b)
        row["cells"][b] = (ok, "; ".join(parts))
        row["short"][b] = short_cell(ok, avail.get(b), c)
    other = junit.get(None)
    if other:
        row["other"] = counts_text(other)
        if other["failed"]:
            problems.append("%d backend-independent tests failed: %s" % (
                other["failed"], ", ".join(other["failures"][:5])))
    row["ok"] = not problems and all(ok for ok, _ in row["cells"].values())
    return row


def tap_counts(text):
    """"N passed, N failed, N skipped" from the selftest's TAP output; a
    planned check that did not report counts as failed, and is named."""
    c = _selftest.parse(text)
    s = "%d passed, %d failed, %d skipped" % (c["passed"], c["failed"], c["skipped"])
    if c["missing"]:
        s += " (%d did not report)" % c["missing"]
    return s


def counts_text(c):
    s = "%d passed" % c["passed"]
    if c["failed"]:
        s += ", %d FAILED" % c["failed"]
    if c["skipped"]:
        s += ", %d skipped" % c["skipped"]
    return s


def short_cell(ok, avail, counts):
    """A backend's result in a few words, for the markdown table."""
    if avail is None:
        text = "no result"
    elif not avail[0]:
        text = "unavailable"
    elif counts and counts["failed"]:
        text = "%d of %d tests failed" % (counts["failed"], counts["failed"] + counts["passed"])
    elif counts and counts["passed"]:
        text = "pass (%d tests)" % counts["passed"]
    else:
        text = "no tests ran"
    return text if ok else "**FAIL**: " + text


def table_markdown(rows):
    head = (["kernel"] + list(BACKENDS) +
            ["default backend", "other tests", "C selftest", "result", "time"])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r["short"].get(b, "not run") for b in BACKENDS]
        lines.append("| " + " | ".join(
            [r["kernel"]] + cells + [r["default"], r.get("other", "-"),
                                     r.get("selftest", "-"),
                                     "pass" if r["ok"] else "**FAIL**",
                                     "%.0f s" % r["seconds"]]) + " |")
    return "\n".join(lines) + "\n"


def print_table(rows):
    out = sys.stdout
    out.write("\nkernel matrix\n")
    for r in rows:
        out.write("\n%s  [%s]  %s, %.0f s, default backend: %s\n" % (
            r["kernel"], "PASS" if r["ok"] else "FAIL", r["package"], r["seconds"],
            r["default"]))
        for b in BACKENDS:
            ok, text = r["cells"].get(b, (False, "not run"))
            out.write("  %-10s %-4s %s\n" % (b, "ok" if ok else "FAIL", text))
        if r.get("other"):
            out.write("  %-10s %-4s %s\n" % ("(other)", "", r["other"]))
        out.write("  %-15s %s\n" % ("C selftest", r.get("selftest", "-")))
        for p in r["problems"]:
            out.write("  problem: %s\n" % p)
    out.flush()


def tested_tree():
    """The checkout's commit (and whether it had local changes), for the record."""
    try:
        head = run(["git", "-C", CHECKOUT, "rev-parse", "--short", "HEAD"], timeout=30).strip()
        dirty = run(["git", "-C", CHECKOUT, "status", "--porcelain", "--untracked-files=no"],
                    timeout=30).strip()
    except (MatrixError, OSError):
        return "not a git checkout"
    return "commit %s%s" % (head, " with local changes" if dirty else "")


def write_markdown(rows, total, host):
    with open(RESULTS_MD, "w") as f:
        f.write("# Kernel matrix results\n\n")
        f.write("Generated by `make -C kernel matrix` (kernel/matrix/matrix.py): "
                "writewatch's contract and backend tests, run inside each kernel "
                "under QEMU (%s).  Tested tree: %s.  Whole run: %.0f s.\n\n"
                % (host, tested_tree(), total))
        f.write(table_markdown(rows))
        f.write("\nWhy a backend is unavailable, as its probe says:\n\n")
        for r in rows:
            for b, reason in r["reasons"].items():
                f.write("- %s, %s: %s\n" % (r["kernel"], b, reason))
        f.write("\nKernel packages (Debian): %s.\n" % "; ".join(
            "`%s`" % r["package"] for r in rows))
        problems = [(r["kernel"], p) for r in rows for p in r["problems"]]
        if problems:
            f.write("\nProblems:\n\n")
            for k, p in problems:
                f.write("- %s: %s\n" % (k, p.replace("\n", " ")))


# ------------------------------------------------------------------ main

_accel = []     # the accelerator that worked, once one has


def run_guest(kernel, info, work, script, busybox, args):
    """Build the initramfs and boot one kernel; return what the next run of
    judge() needs, or None when the matrix itself failed."""
    shutil.rmtree(work, ignore_errors=True)
    outdir = os.path.join(work, "out")
    os.makedirs(outdir)
    initrd = os.path.join(work, "initrd.cpio")
    try:
        with open(initrd, "wb") as f:
            f.write(build_initramfs(info, script, busybox))
    except MatrixError as e:
        log("error: %s" % e)
        return None
    accel = _accel[0] if _accel else args.accel
    if accel == "auto":
        accel = "kvm" if kvm_usable() else "tcg"
    console = os.path.join(work, "console.log")
    log("kernel %s (%s): booting under %s, console in %s" % (
        kernel["label"], info["release"], accel, os.path.relpath(console)))
    status, seconds, note = boot(info, initrd, outdir, accel, args.memory, args.cpus,
                                 args.timeout, console, args.verbose)
    if status is None and accel == "kvm" and args.accel == "auto":
        # /dev/kvm is there but cannot run this kernel (it happens on nested
        # hosts: QEMU aborts setting an MSR): TCG for this and later kernels.
        log("kernel %s under KVM: %s; falling back to TCG" % (kernel["label"], note))
        accel = "tcg"
        shutil.rmtree(outdir)
        os.makedirs(outdir)
        status, seconds, note = boot(info, initrd, outdir, accel, args.memory, args.cpus,
                                     args.timeout, console, args.verbose)
    if status is not None:
        _accel[:] = [accel]
    return {"status": status, "seconds": seconds, "note": note, "accel": accel}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", action="append", choices=[k["label"] for k in KERNELS],
                    help="run only this kernel (repeatable; default: all)")
    ap.add_argument("--tests", nargs="+", metavar="PATH",
                    help="test files or node ids to run (default: the contract and "
                         "backend suites under tests/)")
    ap.add_argument("--pytest-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for pytest in the guest (repeatable)")
    ap.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto",
                    help="QEMU accelerator; auto tries KVM once and falls back to TCG")
    ap.add_argument("--memory", type=int, default=4096, help="guest memory in MiB")
    ap.add_argument("--cpus", type=int, default=2, help="guest vCPUs")
    ap.add_argument("--timeout", type=int, default=3600,
                    help="seconds one kernel's guest may run before it is killed")
    ap.add_argument("--install", action="store_true",
                    help="apt-get install missing requirements (as root); on by default "
                         "when CI is set")
    ap.add_argument("--offline", action="store_true",
                    help="use the cached kernels without asking the archive")
    ap.add_argument("--no-markdown", action="store_true",
                    help="do not rewrite kernel/matrix/results.md")
    ap.add_argument("--judge-only", action="store_true",
                    help="boot nothing: judge the guests' output of the last run again")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="echo the guest's console and pytest's output")
    args = ap.parse_args(argv)

    started = time.monotonic()
    try:
        check_requirements(args.install or bool(os.environ.get("CI")))
        busybox = find_busybox()
        if not glob.glob(os.path.join(CHECKOUT, "writewatch", "_core*.so")):
            raise MatrixError("writewatch/_core*.so is not built in %s: run "
                              "`pip install -e .` there first" % CHECKOUT)
        if args.tests:
            tests = args.tests
        else:
            tests = sorted({os.path.relpath(p, CHECKOUT) for pat in DEFAULT_TESTS
                            for p in glob.glob(os.path.join(CHECKOUT, pat))
                            if "bench" not in os.path.basename(p)})
        log("tests: %s" % (" ".join(tests) or "(none found)"))
        apt = Apt()
        kernels = [k for k in KERNELS if not args.kernel or k["label"] in args.kernel]
        infos = [(k, fetch_kernel(k, apt, args.offline or args.judge_only))
                 for k in kernels]
    except MatrixError as e:
        log("error: %s" % e)
        return 2

    rows = []
    script = guest_script(tests, args.pytest_arg)
    for kernel, info in infos:
        work = os.path.join(CACHE, "run", kernel["label"])
        outdir = os.path.join(work, "out")
        meta_path = os.path.join(work, "meta.json")
        if args.judge_only:
            try:
                with open(meta_path) as f:
                    meta = json.load(f)
            except (OSError, ValueError):
                log("error: kernel %s has no earlier run to judge" % kernel["label"])
                return 2
        else:
            meta = run_guest(kernel, info, work, script, busybox, args)
            if meta is None:
                return 2
            with open(meta_path, "w") as f:
                json.dump(meta, f)
        row = judge(kernel, info, outdir, meta["status"], meta["note"], meta["seconds"])
        row["accel"] = meta["accel"]
        rows.append(row)
        log("kernel %s: %s in %.0f s" % (kernel["label"], "pass" if row["ok"] else "FAIL",
                                         meta["seconds"]))
    total_path = os.path.join(CACHE, "run", "total.json")
    if args.judge_only:
        try:
            with open(total_path) as f:
                total = json.load(f)["seconds"]
        except (OSError, ValueError, KeyError):
            total = sum(r["seconds"] for r in rows)
    else:
        total = time.monotonic() - started
        with open(total_path, "w") as f:
            json.dump({"seconds": total}, f)
    print_table(rows)
    sys.stdout.write("\nwhole run: %.0f s (guest output in %s)\n" % (
        total, os.path.relpath(os.path.join(CACHE, "run"))))
    if not args.no_markdown:
        write_markdown(rows, total, "accelerator: %s" % ", ".join(
            sorted({r["accel"] for r in rows})))
    return 0 if rows and all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
