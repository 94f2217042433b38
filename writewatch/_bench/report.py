"""The report of a run: lookups in the result document, the project's
targets, the printed tables and the plot."""

import sys

from writewatch._bench.units import (
    GiB, KiB, MiB, fmt_bytes, fmt_fraction, fmt_ns, fmt_size, fmt_spread)

# Which C-floor fault technique stands for which backend.
FLOOR_TECH = {"pagemap": "uffd-async", "uffd": "uffd-sync", "mprotect": "mprotect"}

# Published figures for Wine's microbenchmark (8 threads, 8,192 pages, 3 ms,
# random writes, WRITE_WATCH_FLAG_RESET), from Wine merge request 7871, which
# moved Wine 10.7's write watches to userfaultfd and PAGEMAP_SCAN: average
# time per write.  Measured by its author on another machine, with the
# program attached to the merge request -- context, never a target.
WINE_PUBLISHED = (("Windows", 290.0), ("Wine, kernel write watches (UFFD)", 245.0),
                  ("Wine, its old fallback (SIGSEGV handler)", 70000.0))
WINE_SOURCE = "https://gitlab.winehq.org/wine/wine/-/merge_requests/7871"

FLOOR_MEANS = ("C floor: the same workload written in C straight on the kernel "
               "(PAGEMAP_SCAN + async userfaultfd write-protect), no Python: "
               "what the technique costs without the library")


# ---------------------------------------------------------------------------
# Lookups.

def find(doc, workload, backend, **params):
    for r in doc["results"]:
        if r["workload"] != workload or r["backend"] != backend:
            continue
        # The floor's records of one workload differ by technique: a tech
        # asked for must match (the first-write table asks for the floor's
        # fault under each backend's technique).
        if backend == "floor" and "tech" in params and r.get("tech") != params["tech"]:
            continue
        if workload == "fault" and backend == "floor":
            return r
        if all(r.get(k) == v for k, v in params.items() if k != "tech"):
            return r
    return None


def _value(doc, workload, backend, **params):
    r = find(doc, workload, backend, **params)
    return None if r is None else r["value_ns"]


def _backend_reason(doc, name):
    for b in doc["backends"]:
        if b["name"] == name:
            return None if b["available"] else "%s unavailable: %s" % (name, b["reason"])
    return "%s not benchmarked" % name


def _failure(doc, job, backend):
    """Why `job` did not give a result for `backend`: an error or a skip."""
    for e in doc.get("errors", ()):
        if e.get("job") == job and e.get("backend") == backend:
            return "failed: " + e["error"], False
    for s in doc.get("skipped", ()):
        if s.get("job") == job and s.get("backend") in (backend, None):
            return "skipped: " + s["skip"], None
    return None, None


def technique_bound(doc, tech):
    """What the C floor says a frame (256 MiB, 1% written) costs with `tech`'s
    first-write fault, relative to the floor's async-WP frame: K faults of
    that technique, against the whole floor frame.  A lower bound on what any
    implementation of the technique can reach, so a target above it cannot be
    met by making pagemap faster."""
    frame = find(doc, "frame", "floor", size=256 * MiB, fraction=0.01)
    fault = _value(doc, "fault", "floor", tech=tech)
    if frame is None or fault is None:
        return None
    return frame["written"] * fault / frame["value_ns"]


# ---------------------------------------------------------------------------
# Targets.

def evaluate_targets(doc):
    """The issues' targets, each with the measured ratio (or amount) and met
    (True), missed (False: also when the measurement failed) or None (not
    measured here, with why)."""
    targets = []

    def add(name, goal, measured, ok, why=None, detail="", recs=()):
        t = dict(target=name, goal=goal, measured=measured, met=ok, why=why, detail=detail)
        if any(r is not None and r.get("unstable") for r in recs):
            t["unstable"] = True
        targets.append(t)
        return t

    def missing(name, goal, why_parts, job=None, backends=("pagemap",)):
        for b in backends if job else ():
            why, ok = _failure(doc, job, b)
            if why:
                return add(name, goal, None, ok, why)
        why = next((w for w in why_parts if w), None) or "not measured in this mode"
        return add(name, goal, None, None, why)

    def ratio_target(name, goal_text, num, den, limit, faster, why_parts, detail_fmt,
                     job=None, backends=("pagemap",)):
        """num, den: records.  faster: need num/den >= limit; else <= limit."""
        if num is None or den is None:
            return missing(name, goal_text, why_parts, job, backends)
        ratio = num["value_ns"] / den["value_ns"]
        ok = ratio >= limit if faster else ratio <= limit
        return add(name, goal_text, ratio, ok, None,
                   detail_fmt % (fmt_ns(num["value_ns"]), fmt_ns(den["value_ns"])), (num, den))

    floor_why = None if doc.get("floor_available", True) else "C floor %s" % doc["floor"]
    pm_why = _backend_reason(doc, "pagemap")
    f256 = dict(size=256 * MiB, fraction=0.01)
    pm = find(doc, "frame", "pagemap", **f256)
    for backend, goal in (("mprotect", 5.0), ("uffd", 20.0)):
        t = ratio_target("frame loop 256 MiB 1%%: pagemap vs %s" % backend,
                         ">= %gx faster" % goal,
                         find(doc, "frame", backend, **f256), pm, goal, True,
                         [_backend_reason(doc, backend), pm_why],
                         backend + " %s, pagemap %s per frame")
        bound = technique_bound(doc, FLOOR_TECH[backend])
        if bound is not None and t["met"] is not None:
            t["bound"] = bound
            t["detail"] += ("; in the C floor, the frame's %s faults alone cost "
                            "%.1fx its whole async-WP frame" % (FLOOR_TECH[backend], bound))
    flo = find(doc, "frame", "floor", **f256)
    t = ratio_target("frame loop 256 MiB 1%: pagemap vs C floor", "<= 1.3x",
                     pm, flo, 1.3, False, [pm_why, floor_why], "pagemap %s, floor %s per frame")
    if t["met"] is not None and pm.get("min_ns") and flo.get("min_ns"):
        # Frames are judged by their medians; the fastest frames show whether
        # a gap is the code's or the machine's.
        t["detail"] += "; fastest frames %s vs %s, %.2fx" % (
            fmt_ns(pm["min_ns"]), fmt_ns(flo["min_ns"]), pm["min_ns"] / flo["min_ns"])
    ratio_target("clean get-and-reset 1 GiB: pagemap vs C floor", "<= 1.2x",
                 find(doc, "clean", "pagemap", size=GiB), find(doc, "clean", "floor", size=GiB),
                 1.2, False, [pm_why, floor_why], "pagemap %s, floor %s per call")
    ratio_target("max_count=16: pagemap 4 GiB vs 64 KiB", "<= 3x",
                 find(doc, "limit", "pagemap", size=4 * GiB),
                 find(doc, "limit", "pagemap", size=64 * KiB), 3.0, False,
                 [pm_why], "4 GiB %s, 64 KiB %s per call")
    w = find(doc, "win32", "pagemap")
    if w is None:
        add("win32 GetWriteWatch, 16 pages (pagemap)", "< 5 us per call", None, None,
            doc["win32"] if doc["win32"] != "available" else (pm_why or "not measured"))
    else:
        add("win32 GetWriteWatch, 16 pages (pagemap)", "< 5 us per call", w["value_ns"],
            w["value_ns"] < 5000, None, "%s per call" % fmt_ns(w["value_ns"]), (w,))
    _scale_targets(doc, add, missing, ratio_target, pm_why, floor_why)
    _snapshot_targets(doc, ratio_target, pm_why, floor_why)
    return targets


def _scale_targets(doc, add, missing, ratio_target, pm_why, floor_why):
    """Issue 10's goals: the scale patterns."""
    pat = doc.get("patterns") or {}
    win32_why = None if doc.get("win32", "available") == "available" else doc["win32"]

    # Judged on the CPU time per write: on a shared machine the wall time
    # moves with other processes' load (the figure marked ! most often),
    # while pagemap's writers, like the floor's, never wait for anything but
    # a CPU.  The wall-time ratio is shown beside it.
    w = pat.get("wine")
    name = ("Wine microbenchmark%s: pagemap per write vs C floor (CPU time)"
            % (" (%d threads x %d pages)" % (w["threads"], w["pages"]) if w else ""))
    t = ratio_target(name, "<= 1.2x", find(doc, "wine", "pagemap", metric="write_cpu"),
                     find(doc, "wine", "floor", metric="write_cpu"), 1.2, False,
                     [pm_why, win32_why, floor_why], "pagemap %s, floor %s per write",
                     job="wine", backends=("pagemap", "floor"))
    lib, flo = (find(doc, "wine", "pagemap", metric="write"),
                find(doc, "wine", "floor", metric="write"))
    if t["met"] is not None and lib and flo:
        t["detail"] += "; by wall time %s vs %s, %.2fx" % (
            fmt_ns(lib["value_ns"]), fmt_ns(flo["value_ns"]), lib["value_ns"] / flo["value_ns"])

    g = pat.get("gc")
    name = ("GC pattern%s: pagemap vs C floor"
            % (" (%s heap, %s written)" % (fmt_size(g["size"]), fmt_fraction(g["fraction"]))
               if g else ""))
    ratio_target(name, "<= 1.3x", find(doc, "gc", "pagemap"), find(doc, "gc", "floor"),
                 1.3, False, [pm_why, win32_why, floor_why], "pagemap %s, floor %s per round",
                 job="gc", backends=("pagemap", "floor"))

    r = pat.get("reservation")
    size = fmt_size(r["size"]) if r else "large"
    committed = fmt_size(r["committed"]) if r else "part"
    why = [pm_why, win32_why]
    res = find(doc, "reserve", "pagemap", step="reserve")
    name = "reservation %s (pagemap): page tables" % size
    if res is None or res.get("pte_bytes") is None:
        missing(name, "< 1 MiB", why, "reserve")
    else:
        add(name, "< 1 MiB", res["pte_bytes"], res["pte_bytes"] < MiB, None,
            "%s after VirtualAlloc(MEM_RESERVE|MEM_WRITE_WATCH)" % fmt_bytes(res["pte_bytes"]))
    t = ratio_target("reservation %s (pagemap): time vs the same without MEM_WRITE_WATCH"
                     % size, "<= 2x", res, find(doc, "reserve", "pagemap", step="plain_reserve"),
                     2.0, False, why, "%s with write watch, %s without", job="reserve")
    mmap = find(doc, "reserve", "floor", step="reserve")
    if t["met"] is not None and mmap is not None:
        t["detail"] += "; a plain mmap (C floor) %s" % fmt_ns(mmap["value_ns"])
    com = find(doc, "reserve", "pagemap", step="commit")
    name = "%s committed in it (pagemap): page tables" % committed
    limit = (r["committed"] // GiB * 2 * MiB + MiB // 2) if r and r["committed"] >= GiB else None
    goal = "~2 MiB per GiB (<= %s)" % fmt_bytes(limit) if limit else "~2 MiB per GiB"
    if com is None or com.get("pte_bytes") is None:
        missing(name, goal, why, "reserve")
    else:
        fl = find(doc, "reserve", "floor", step="commit")
        per_gib = com["pte_bytes"] / max(r["committed"], 1) * GiB if r else None
        ok = com["pte_bytes"] <= limit if limit else (per_gib is not None and
                                                      per_gib <= 2.5 * MiB)
        add(name, goal, com["pte_bytes"], ok, None,
            "%s held after the commit%s" % (fmt_bytes(com["pte_bytes"]),
                                            "; C floor %s" % fmt_bytes(fl["pte_bytes"])
                                            if fl and fl.get("pte_bytes") is not None else ""))
    ratio_target("GetWriteWatch over the whole reservation vs over the committed %s alone "
                  "(pagemap)" % committed, "<= 1.2x",
                  find(doc, "reserve", "pagemap", step="get_all"),
                  find(doc, "reserve", "pagemap", step="get_committed"), 1.2, False, why,
                  "whole %s, committed part %s per call", job="reserve")

    m = pat.get("regions")
    name = ("%s regions of %s (pagemap): get-and-reset per region"
            % ("{:,}".format(m["count"]), fmt_size(m["size"])) if m else
            "many regions (pagemap): get-and-reset per region")
    each = find(doc, "regions", "pagemap", variant="each")
    many = find(doc, "regions", "pagemap", variant="many")
    best = min((x for x in (each, many) if x is not None), key=lambda x: x["value_ns"],
               default=None)
    if best is None:
        missing(name, "<= 2 us", [pm_why], "regions")
    else:
        parts = ["%s %s" % ("get_write_watch_many" if x is many else "one call per region",
                            fmt_ns(x["value_ns"])) for x in (many, each) if x is not None]
        add(name, "<= 2 us", best["value_ns"], best["value_ns"] <= 2000, None,
            "per region: " + ", ".join(parts), (best,))


def _snapshot_targets(doc, ratio_target, pm_why, floor_why):
    """Issue 12's goals: Snapshots and DeltaLog, on pagemap, each against its
    C floor measured in the same run."""
    s = (doc.get("patterns") or {}).get("snapshots")
    what = (" (%s, %s written per frame)" % (fmt_size(s["size"]), fmt_fraction(s["fraction"]))
            if s else "")
    back = s["keep"] - 1 if s else None

    def lib(op):
        return find(doc, "snapshots", "pagemap", op=op)

    def flo(op):
        return find(doc, "snapshots", "floor", op=op, tech=FLOOR_TECH["pagemap"])
    both = ("pagemap", "floor")
    ratio_target("Snapshots%s: pagemap save() vs np.copyto of the whole region" % what,
                 ">= 20x faster", lib("copy"), lib("save"), 20.0, True, [pm_why],
                 "np.copyto %s, save() %s", job="snapshots")
    ratio_target("Snapshots%s: pagemap save() vs C floor" % what, "<= 1.5x", lib("save"),
                 flo("save"), 1.5, False, [pm_why, floor_why], "save() %s, floor %s",
                 job="snapshots", backends=both)
    ratio_target("Snapshots%s: pagemap restore() %s frames back vs C floor"
                 % (what, back if back is not None else "several"), "<= 2x",
                 lib("restore"), flo("restore"), 2.0, False, [pm_why, floor_why],
                 "restore() %s, floor %s", job="snapshots", backends=both)
    app = find(doc, "deltalog", "pagemap", op="append")
    t = ratio_target("DeltaLog%s: pagemap append() vs C floor (write(2) + fsync)" % what,
                     "<= 1.5x", app, find(doc, "deltalog", "floor", op="append", tech="write"),
                     1.5, False, [pm_why, floor_why], "append() %s, floor %s",
                     job="deltalog", backends=both)
    other = find(doc, "deltalog", "floor", op="append", tech="writev")
    if t["met"] is not None and other is not None:
        t["detail"] += ("; the floor with its get-and-reset, pwritev from the region and "
                        "fdatasync %s, %.2fx" % (fmt_ns(other["value_ns"]),
                                                 app["value_ns"] / other["value_ns"]))


# ---------------------------------------------------------------------------
# Tables.

def _table(header, rows, out):
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                     for i, (h, w) in enumerate(zip(header, widths)))
    out.write("  " + line + "\n")
    out.write("  " + "  ".join("-" * w for w in widths) + "\n")
    for row in rows:
        out.write("  " + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                   for i, (c, w) in enumerate(zip(row, widths))) + "\n")


def _ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    r = a / b
    if r >= 100:
        return "%.0fx" % r
    return "%.3gx" % r if r >= 0.1 else "%.2gx" % r


def _cell(r):
    """A figure: fastest-median of its repeats, '!' when unstable."""
    if r is None:
        return "-"
    text = fmt_spread(r.get("fastest_ns", r.get("min_ns")), r.get("median_ns", r["value_ns"]))
    return text + ("!" if r.get("unstable") else "")


def _v(r):
    return None if r is None else r["value_ns"]


class _Report:
    def __init__(self, doc, out):
        self.doc, self.out = doc, out
        self.names = [b["name"] for b in doc["backends"] if b["available"]]
        self.cols = ["floor"] + self.names
        ratio_cols = []
        if "pagemap" in self.names:
            ratio_cols.append(("pagemap/floor", "pagemap", "floor"))
            ratio_cols += [("%s/pagemap" % n, n, "pagemap") for n in self.names if n != "pagemap"]
        else:
            ratio_cols += [("%s/floor" % n, n, "floor") for n in self.names]
        self.ratio_cols = ratio_cols

    def section(self, title, head, rows, ratios=True):
        """rows: (label, {column: record}) -> one line each, with ratios."""
        lines = []
        for label, recs in rows:
            if all(recs.get(c) is None for c in self.cols):
                continue
            line = [label] + [_cell(recs.get(c)) for c in self.cols]
            if ratios:
                line += [_ratio(_v(recs.get(a)), _v(recs.get(b))) for _, a, b in self.ratio_cols]
            lines.append(line)
        if lines:
            self.out.write("\n%s\n" % title)
            _table([head, "C floor"] + self.names +
                   ([r[0] for r in self.ratio_cols] if ratios else []), lines, self.out)
        return bool(lines)

    def rows(self, workload, keys, label):
        return [(label(k), {c: find(self.doc, workload, c, **k) for c in self.cols})
                for k in keys]


def print_report(doc, out=None):
    out = out or sys.stdout
    doc.setdefault("patterns", {})
    m = doc["machine"]
    out.write("writewatch bench (%s): %s %s, %s, %d CPUs, Python %s, numpy %s\n"
              % (doc["mode"], m["kernel"], m["machine"], m["cpu"] or "unknown CPU",
                 m["cpus"] or 0, m["python"], m["numpy"]))
    for b in doc["backends"]:
        out.write("  backend %-9s %s\n" % (b["name"], "available" if b["available"]
                                            else "skipped: " + b["reason"]))
    out.write("  C floor          %s\n" % doc["floor"])
    out.write("  win32            %s\n" % doc["win32"])
    for s in doc["skipped"]:
        out.write("  skipped %s: %s\n" % (s["workload"], s["skip"]))
    out.write("  each time is fastest-median of its repeats%s; ratios use the median for "
              "frames, first writes, the Wine microbenchmark, Snapshots and DeltaLog, the "
              "fastest for scans and calls; ! marks a figure whose repeats disagree widely "
              "(see Notes)\n"
              % (" (best of %d passes, the C floor and the backends taking turns)"
                 % doc["passes"] if doc.get("passes", 1) > 1 else ""))
    rep = _Report(doc, out)

    frame_keys = sorted({(r["size"], r["fraction"]) for r in doc["results"]
                         if r["workload"] == "frame"})
    rep.section("Frame loop: write K random pages, then one get-and-reset (time per frame)",
                "size, written",
                rep.rows("frame", [dict(size=s, fraction=f) for s, f in frame_keys],
                         lambda k: "%s, %s" % (fmt_size(k["size"]), fmt_fraction(k["fraction"]))))

    def sizes(workload):
        return [dict(size=s) for s in sorted({r["size"] for r in doc["results"]
                                              if r["workload"] == workload})]
    rep.section("Clean scan: get-and-reset with nothing written (time per call)", "size",
                rep.rows("clean", sizes("clean"), lambda k: fmt_size(k["size"])))
    clean = sizes("clean")
    if clean:
        big = clean[-1]["size"]
        parts = ["%s %s" % ("C floor" if c == "floor" else c, fmt_ns(v * GiB / big))
                 for c in rep.cols for v in [_value(doc, "clean", c, size=big)] if v is not None]
        out.write("  per clean GiB scanned (from %s): %s\n" % (fmt_size(big), ", ".join(parts)))
    rep.section("max_count=16 with the first 16 pages written, no reset (time per call; "
                "the C floor is one raw ioctl with max_pages=16)", "region size",
                rep.rows("limit", sizes("limit"), lambda k: fmt_size(k["size"])))
    rep.section("Sparse: every other page written, one get-and-reset (time per call)", "size",
                rep.rows("sparse", sizes("sparse"), lambda k: fmt_size(k["size"])))

    rows = []
    floor_none = _value(doc, "fault", "floor", tech="none")
    for n in rep.names:
        lib = find(doc, "fault", n)
        fl = find(doc, "fault", "floor", tech=FLOOR_TECH.get(n))
        rows.append([n, _cell(lib), "%s (%s)" % (_cell(fl), FLOOR_TECH.get(n, "-")),
                     _ratio(_v(lib), _v(fl)), _ratio(_v(lib), _value(doc, "fault", "pagemap"))])
    if rows:
        out.write("\nFirst write after a reset (time per page; a plain write to a "
                  "writable page costs %s)\n" % fmt_ns(floor_none))
        _table(["backend", "library", "C floor (technique)", "lib/floor", "vs pagemap"],
               rows, out)

    rows = [[n, _cell(find(doc, "win32", n))] for n in rep.names
            if find(doc, "win32", n) is not None]
    if rows:
        out.write("\nwin32 GetWriteWatch on a 16-page allocation, 4 pages written "
                  "(time per call)\n")
        _table(["backend", "per call"], rows, out)

    _print_scale(doc, rep, out)
    _print_snapshots(doc, rep, out)

    out.write("\nTargets\n")
    for t in doc["targets"]:
        state = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        if t["measured"] is None:
            measured = t["why"]
        elif t["goal"].startswith(("<", "~")) and not t["goal"].endswith("x"):
            measured = t["detail"]
        else:
            measured = "%.2fx (%s)" % (t["measured"], t["detail"])
        if t.get("unstable"):
            measured += " [unstable figure: repeats disagree]"
        out.write("  [%-6s] %s, goal %s: %s\n" % (state, t["target"], t["goal"], measured))
    _print_notes(doc, out)


def _print_scale(doc, rep, out):
    pat = doc["patterns"]
    w = pat.get("wine")
    if w:
        title = ("Wine's write-watch microbenchmark: %d threads make %d random writes each "
                 "to a %d-page allocation while GetWriteWatch(WRITE_WATCH_FLAG_RESET) of all "
                 "of it runs every %g ms (win32 layer).  Per write: the run's wall time "
                 "times the CPUs the writers can use (%s here), over the writes"
                 % (w["threads"], w["writes"], w["pages"], w["delay"] * 1e3,
                    _cpus(doc)))
        shown = rep.section(title, "figure", [
            ("per write", {c: find(doc, "wine", c, metric="write") for c in rep.cols}),
            ("per write, CPU time", {c: find(doc, "wine", c, metric="write_cpu")
                                     for c in rep.cols}),
            ("per GetWriteWatch", {c: find(doc, "wine", c, metric="call") for c in rep.cols}),
        ])
        if shown:
            busy = ["%s %.1f" % ("C floor" if n == "floor" else n, r["writer_cpus"])
                    for n in rep.cols for r in [find(doc, "wine", n, metric="write")]
                    if r is not None and r.get("writer_cpus") is not None]
            if busy:
                out.write("  CPUs the writers kept busy (Python's: numpy writes without the "
                          "GIL): %s\n" % ", ".join(busy))
            out.write("  per write, CPU time: all the process's CPU time during the run over "
                      "the writes (what other processes' load hardly changes)\n")
            ppc = ["%s %.0f" % ("C floor" if n == "floor" else n, r["pages_per_call"])
                   for n in rep.cols for r in [find(doc, "wine", n, metric="call")]
                   if r is not None and r.get("pages_per_call") is not None]
            if ppc:
                out.write("  pages each GetWriteWatch reported, on average (its cost grows with "
                          "them; faster writers write more pages between calls): %s\n"
                          % ", ".join(ppc))
            out.write("  published, measured elsewhere (another machine, Wine's own program; "
                      "%s), per write: %s\n" % (WINE_SOURCE, ", ".join(
                          "%s %s" % (who, fmt_ns(ns)) for who, ns in WINE_PUBLISHED)))
    g = pat.get("gc")
    if g:
        rec = find(doc, "gc", "pagemap") or find(doc, "gc", "floor")
        rep.section(".NET GC pattern: %s heap, %s of its pages written; GetWriteWatch "
                    "without reset, %d addresses per call, each resuming after the last "
                    "address returned%s, then one ResetWriteWatch of the heap (time per round)"
                    % (fmt_size(g["size"]), fmt_fraction(g["fraction"]), g["batch"],
                       " (%d calls)" % rec["calls"] if rec and rec.get("calls") else ""),
                    "heap", [(fmt_size(g["size"]), {c: find(doc, "gc", c) for c in rep.cols})])
    r = pat.get("reservation")
    if r:
        _print_reservation(doc, rep, r, out)
    m = pat.get("regions")
    if m:
        _print_regions(doc, rep, m, out)


def _print_snapshots(doc, rep, out):
    s = doc["patterns"].get("snapshots")
    if not s:
        return
    recs = [r for r in doc["results"] if r["workload"] in ("snapshots", "deltalog")]
    if not recs:
        return
    k = next((r["written"] for r in recs if r.get("written")), None)
    back = s["keep"] - 1

    def floor_cell(workload, op, tech, label):
        r = find(doc, workload, "floor", op=op, tech=tech)
        return r, "-" if r is None else "%s (%s)" % (_cell(r), label)
    lines = []
    for workload, op, title in (("snapshots", "copy", "copy of the whole region (np.copyto)"),
                                ("snapshots", "save", "save()"),
                                ("snapshots", "restore", "restore() %d frames back" % back),
                                ("deltalog", "append", "DeltaLog.append()")):
        for i, n in enumerate(rep.names):
            lib = find(doc, workload, n, op=op)
            if op == "copy":
                fl, cell = floor_cell(workload, op, "memcpy", "memcpy")
            elif op == "append":
                fl, cell = floor_cell(workload, op, "write", "write(2) + fsync")
            else:
                tech = FLOOR_TECH.get(n)
                fl, cell = floor_cell(workload, op, tech, tech)
            if lib is None and fl is None:
                continue
            lines.append([title if not i else "", n,
                          _cell(lib), cell, _ratio(_v(lib), _v(fl))])
    if not lines:
        return
    out.write("\nSnapshots and DeltaLog (issue 12): a %s region, every page written once, "
              "then %s random pages (%s) written per frame outside the timer; "
              "Snapshots(keep=%d), restore() of the oldest snapshot kept; DeltaLog.append() "
              "with its fdatasync (time per call)\n"
              % (fmt_size(s["size"]), "{:,}".format(k) if k else "some",
                 fmt_fraction(s["fraction"]), s["keep"]))
    _table(["operation", "backend", "library", "C floor (technique)", "lib/floor"], lines, out)
    speed = ["%s %s" % (n, _ratio(_v(find(doc, "snapshots", n, op="copy")),
                                  _v(find(doc, "snapshots", n, op="save"))))
             for n in rep.names if find(doc, "snapshots", n, op="save") is not None]
    if speed:
        out.write("  np.copyto of the whole region / save(): %s\n" % ", ".join(speed))
    pages = ["%s %s" % ("C floor (%s)" % r.get("tech") if c == "floor" else c,
                        "{:,.0f}".format(r["restored"]))
             for c in rep.cols for r in doc["results"]
             if r["workload"] == "snapshots" and r["backend"] == c and r.get("op") == "restore"
             and r.get("restored") is not None]
    if pages:
        out.write("  pages a restore rewrote, on average (the %d newer snapshots' and those "
                  "written since the last save): %s\n" % (back, ", ".join(pages)))
    other = find(doc, "deltalog", "floor", op="append", tech="writev")
    if other is not None:
        parts = ["%s %s" % (n, _ratio(_v(find(doc, "deltalog", n, op="append")), _v(other)))
                 for n in rep.names if find(doc, "deltalog", n, op="append") is not None]
        out.write("  DeltaLog.append()'s other C floor -- get-and-reset, one pwritev straight "
                  "from the region, fdatasync: %s%s\n"
                  % (_cell(other), "; library / it: " + ", ".join(parts) if parts else ""))
    logs = doc.get("log_dir")
    if logs:
        out.write("  the logs, the library's and the floor's, were in %s: %s on %s\n"
                  % (logs.get("dir"), logs.get("fstype") or "unknown filesystem",
                     logs.get("device") or "unknown device"))


def _cpus(doc):
    for rec in doc["results"]:
        if rec["workload"] == "wine" and rec.get("cpus"):
            return rec["cpus"]
    return doc["machine"].get("cpus") or "?"


def _print_reservation(doc, rep, r, out):
    def rec(c, step):
        return find(doc, "reserve", c, step=step)

    def pte(c, step):
        x = rec(c, step)
        return "-" if x is None or x.get("pte_bytes") is None else fmt_bytes(x["pte_bytes"])
    size, committed = fmt_size(r["size"]), fmt_size(r["committed"])
    steps = [("plain_reserve", "reserve %s without MEM_WRITE_WATCH" % size, False),
             ("reserve", "reserve %s (C floor: mmap PROT_NONE)" % size, True),
             ("commit", "commit %s (C floor: mprotect + register + write-protect)" % committed,
              True),
             ("get_all", "GetWriteWatch over the whole reservation", False),
             ("get_committed", "GetWriteWatch over the committed %s (C floor: one scan)"
              % committed, True),
             ("release", "release", True)]
    lines = []
    for step, label, with_pte in steps:
        recs = {c: rec(c, step) for c in rep.cols}
        if all(x is None for x in recs.values()):
            continue
        lines.append([label] + [_cell(recs[c]) for c in rep.cols] +
                     [_ratio(_v(recs.get(a)), _v(recs.get(b))) for _, a, b in rep.ratio_cols])
        if with_pte:
            lines.append(["  page tables held after it"] + [pte(c, step) for c in rep.cols] +
                         ["" for _ in rep.ratio_cols])
    if lines:
        out.write("\nReservation: VirtualAlloc(%s, MEM_RESERVE|MEM_WRITE_WATCH), commit its "
                  "first %s, %s of that written, GetWriteWatch (no reset), release; "
                  "one child process per backend\n"
                  % (size, committed, fmt_fraction(r["fraction"])))
        _table(["step", "C floor"] + rep.names + [x[0] for x in rep.ratio_cols], lines, out)


def _print_regions(doc, rep, m, out):
    def rec(c, variant):
        return find(doc, "regions", c, variant=variant)
    rows = [("one get-and-reset per region", {c: rec(c, "each") for c in rep.cols}),
            ("get_write_watch_many (C floor: one scan per run of adjacent regions)",
             dict({c: rec(c, "many") for c in rep.names}, floor=rec("floor", "runs"))),
            ("making one (C floor: mmap + UFFDIO_REGISTER + WRITEPROTECT)",
             {c: rec(c, "create") for c in rep.cols}),
            ("closing one (C floor: munmap)", {c: rec(c, "close") for c in rep.cols})]
    shown = rep.section("%s regions of %s, one page written in each, get-and-reset of all of "
                        "them (time per region)" % ("{:,}".format(m["count"]),
                                                    fmt_size(m["size"])),
                        "figure", rows)
    if shown:
        fds = ["%s %s" % ("C floor" if c == "floor" else c, x["descriptors"])
               for c in rep.cols for x in [rec(c, "each")]
               if x is not None and x.get("descriptors") is not None]
        runs = rec("floor", "runs")
        out.write("  descriptors the regions hold: %s%s\n"
                  % (", ".join(fds) or "-",
                     "; the C floor's regions form %d run(s) of adjacent ranges"
                     % runs["runs"] if runs and runs.get("runs") else ""))


def _print_notes(doc, out):
    notes = []
    unstable = [r for r in doc["results"] if r.get("unstable")]
    if unstable:
        notes.append("%d figure(s) marked ! varied widely: passes differing by more than "
                     "%gx, or a median more than %gx the fastest repeat.  The machine was "
                     "busy or the figure varies by nature; rerun, or compare several runs."
                     % (len(unstable), doc.get("spread_limits", {}).get("passes", 1.5),
                        doc.get("spread_limits", {}).get("repeats", 2.0)))
        for r in unstable:
            notes.append("  %s %s%s: passes %s; fastest %s, median %s"
                         % (r["backend"], r["workload"], _what(r),
                            ", ".join(fmt_ns(v) for v in r.get("passes", [])),
                            fmt_ns(r.get("fastest_ns", r.get("min_ns"))),
                            fmt_ns(r.get("median_ns"))))
    for r in doc["results"]:
        if r.get("over_reported"):
            notes.append("%s %s%s: reported up to %d pages more than the %s written "
                         "(a conservative answer; no written page was missed)"
                         % (r["backend"], r["workload"], _what(r), r["over_reported"],
                            r.get("written", "pages")))
    if notes:
        out.write("\nNotes\n")
        for n in notes:
            out.write("  %s\n" % n)
    if doc["errors"]:
        out.write("\nErrors\n")
        for e in doc["errors"]:
            out.write("  %s: %s\n" % (e["workload"], e["error"]))


def _what(r):
    bits = []
    if r.get("size"):
        bits.append(fmt_size(r["size"]))
    for k in ("op", "metric", "step", "variant", "tech"):
        if r.get(k):
            bits.append(str(r[k]))
    return (" " + " ".join(bits)) if bits else ""


# ---------------------------------------------------------------------------
# The plot.

PLOT_HINT = ("--plot needs matplotlib, which writewatch does not install by "
             "default: pip install writewatch[plot]")

# The scale patterns' figures drawn against the C floor: (label, workload,
# the library's record params, the floor's).
_SCALE_BARS = (
    ("Wine: per write\n(CPU time)", "wine", dict(metric="write_cpu"),
     dict(metric="write_cpu")),
    ("Wine: per GetWriteWatch", "wine", dict(metric="call"), dict(metric="call")),
    ("GC round", "gc", {}, {}),
    ("reservation:\nget, committed part", "reserve", dict(step="get_committed"),
     dict(step="get_committed")),
    ("regions: a call\nper region", "regions", dict(variant="each"), dict(variant="each")),
    ("regions: all\nat once", "regions", dict(variant="many"), dict(variant="runs")),
)


def plot(doc, path):
    """Write a PNG: frame time against region size (1% written) and against
    written fraction (largest size), clean scan against size (log scales, one
    line per backend and the C floor, dashed), and the scale patterns as bars
    relative to the C floor."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    names = [b["name"] for b in doc["backends"] if b["available"]] + ["floor"]
    style = {n: dict(color="C%d" % i, marker="o") for i, n in enumerate(names)}
    style["floor"] = dict(color="black", marker="s", linestyle="--")
    label = {n: n for n in names}
    label["floor"] = "C floor"
    frames = [r for r in doc["results"] if r["workload"] == "frame"]
    fig, axes = plt.subplots(1, 4, figsize=(20, 5.4))
    m = doc["machine"]
    fig.suptitle("writewatch bench (%s) - %s %s, %s, %d CPUs - lower is better"
                 % (doc["mode"], m["kernel"], m["machine"], m["cpu"] or "unknown CPU",
                    m["cpus"] or 0))
    fractions = sorted({r["fraction"] for r in frames})
    frac = 0.01 if 0.01 in fractions else (fractions[0] if fractions else None)
    sizes = sorted({r["size"] for r in frames})
    big = sizes[-1] if sizes else None
    panels = [
        (axes[0], lambda r: r["workload"] == "frame" and r["fraction"] == frac,
         lambda r: r["size"] / MiB, "region size (MiB)", "time per frame (\u00b5s)",
         "frame loop, %s of pages written" % (fmt_fraction(frac) if frac else "-")),
        (axes[1], lambda r: r["workload"] == "frame" and r["size"] == big,
         lambda r: r["fraction"] * 100, "pages written per frame (%)",
         "time per frame (\u00b5s)", "frame loop, %s region" % (fmt_size(big) if big else "-")),
        (axes[2], lambda r: r["workload"] == "clean",
         lambda r: r["size"] / MiB, "region size (MiB)", "time per call (\u00b5s)",
         "get-and-reset, nothing written"),
    ]
    plain = FuncFormatter(lambda v, _: "%g" % v)
    for ax, keep, x, xlabel, ylabel, title in panels:
        for n in names:
            pts = sorted((x(r), r["value_ns"] / 1e3) for r in doc["results"]
                         if r["backend"] == n and keep(r))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label[n], **style[n])
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    _plot_scale(doc, axes[3], names[:-1], style, plain)
    fig.text(0.01, 0.01, FLOOR_MEANS + ".  Frames and first writes: medians; scans and "
             "calls: fastest of the repeats.", fontsize=9, ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_scale(doc, ax, names, style, formatter):
    bars = []
    for text, workload, lib, flo in _SCALE_BARS:
        fl = find(doc, workload, "floor", **flo)
        vals = {n: find(doc, workload, n, **lib) for n in names}
        if fl is None or all(v is None for v in vals.values()):
            continue
        bars.append((text, {n: v["value_ns"] / fl["value_ns"] for n, v in vals.items()
                            if v is not None}))
    ax.set_title("scale patterns, relative to the C floor")
    if not bars:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    width = 0.8 / max(len(names), 1)
    for i, n in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j, (_, v) in enumerate(bars) if n in v]
        ys = [v[n] for _, v in bars if n in v]
        if xs:
            ax.bar(xs, ys, width, label=n, color=style[n]["color"])
    ax.axhline(1.0, color="black", linestyle="--", label="C floor = 1")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(formatter)
    ax.set_xticks(range(len(bars)))
    ax.set_xticklabels([b[0] for b in bars], fontsize=8, rotation=30, ha="right")
    ax.set_ylabel("time / C floor's time (x)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
