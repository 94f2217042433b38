"""Run the C selftests of the kernel contract (kernel/selftests/) and summarise.

The program is built with the extension (setup.py's PROGRAMS) into
writewatch/_bin/ww-selftest, so no compiler is needed at run time.  It prints
TAP: a plan "1..N", then "ok N - name", "not ok N - name" or
"ok N - name # SKIP reason" per check.  Exit 0: all passed; 1: a check
failed; 4 (KSFT_SKIP): this kernel lacks a feature the contract needs.
"""

import collections
import os
import re
import subprocess
import sys

BINARY_NAME = "ww-selftest"
TIMEOUT = 60            # seconds; the whole run takes well under one here
EXIT_PASS, EXIT_FAIL, EXIT_SKIP = 0, 1, 4

_RESULT = re.compile(r"^(not ok|ok)\s+(\d+)\b\s*-?\s*(.*)$")
_PLAN = re.compile(r"^1\.\.(\d+)")


def binary_path():
    """Where the built selftest lives: writewatch/_bin/ next to this file."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bin", BINARY_NAME)


# One result line: ok (bool), number, description (the rest of the line,
# directive included: "name # SKIP reason"), skip (a "# SKIP" directive) and
# the line itself.
Result = collections.namedtuple("Result", "ok number description skip line")


def parse_tap(text):
    """The plan and the result lines of a TAP output: (planned or None,
    [Result, ...]).  The only TAP parser of the project: the tests, the
    kernel matrix and run() below all read the selftest's output here."""
    planned = None
    results = []
    for line in text.splitlines():
        m = _PLAN.match(line)
        if m and planned is None:
            planned = int(m.group(1))
            continue
        m = _RESULT.match(line)
        if not m:
            continue
        ok = m.group(1) == "ok"
        skip = ok and re.search(r"#\s*SKIP\b", m.group(3), re.IGNORECASE) is not None
        results.append(Result(ok, int(m.group(2)), m.group(3), skip, line))
    return planned, results


def parse(text):
    """Count a TAP output: dict(planned, passed, failed, skipped, missing,
    failures).  A check that did not report counts as failed."""
    planned, results = parse_tap(text)
    failures = [r.line for r in results if not r.ok]
    failed = len(failures)
    skipped = sum(1 for r in results if r.skip)
    passed = len(results) - failed - skipped
    missing = 0
    if planned is not None and passed + failed + skipped < planned:
        missing = planned - (passed + failed + skipped)
    return dict(planned=planned, passed=passed, failed=failed + missing,
                skipped=skipped, missing=missing, failures=failures)


def run(verbose=False, out=None, binary=None, timeout=TIMEOUT):
    """Run the selftest, print a summary to `out` (default stdout).

    Returns 0 when every check passed, 1 when one failed (or the program
    crashed, timed out or is missing), 4 when the kernel lacks the feature
    and every check was skipped.  Failed lines are always shown; all lines
    with verbose."""
    out = out or sys.stdout
    path = binary or binary_path()
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        out.write("  selftest binary not found: %s\n"
                  "  it is built with the extension; rebuild: pip install .  "
                  "(or, in a checkout: python setup.py build_ext --inplace, "
                  "or make -C kernel check)\n" % path)
        return EXIT_FAIL
    try:
        proc = subprocess.run([path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=timeout, check=False)
        text = proc.stdout.decode("utf-8", "replace")
        rc = proc.returncode
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode("utf-8", "replace")
        out.write(text if verbose else "")
        out.write("  selftest timed out after %d s: %s\n" % (timeout, path))
        return EXIT_FAIL
    except OSError as e:
        out.write("  cannot run %s: %s\n" % (path, e))
        return EXIT_FAIL

    counts = parse(text)
    lines = text.splitlines()
    if verbose:
        for line in lines:
            out.write("  %s\n" % line)
    else:
        # failed checks, with the diagnostic lines that follow them
        show = False
        for line in lines:
            if line.startswith("not ok"):
                show = True
            elif not line.startswith("#"):
                show = False
            if show:
                out.write("  %s\n" % line)
        if rc == EXIT_SKIP:
            reason = next((l[2:] for l in lines if l.startswith("# ")), "")
            if reason:
                out.write("  skipped: %s\n" % reason)
    out.write("  %d passed, %d failed, %d skipped (of %s planned)%s\n"
              % (counts["passed"], counts["failed"], counts["skipped"],
                 counts["planned"] if counts["planned"] is not None else "?",
                 ", %d did not report" % counts["missing"] if counts["missing"] else ""))

    if rc < 0:
        out.write("  selftest killed by signal %d\n" % -rc)
        return EXIT_FAIL
    if rc == EXIT_SKIP:
        if counts["passed"] or counts["failed"]:
            return EXIT_FAIL        # a skip must be a skip of everything
        return EXIT_SKIP
    if rc != 0 or counts["failed"] or counts["planned"] is None:
        if rc == 0:
            out.write("  selftest exited 0 but its output does not show every check passing\n")
        return EXIT_FAIL
    return EXIT_PASS


if __name__ == "__main__":
    sys.exit(run(verbose="-v" in sys.argv[1:]))
