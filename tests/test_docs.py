"""Every relative link in every Markdown file of the repository resolves.

The files are found by walking the tree (docs move around), so a new or
moved document is checked without touching this test.  A link resolves when
its file or directory exists inside the repository and, when it names an
#anchor in a Markdown file, that file has a heading (or an HTML id/name)
with that anchor, by GitHub's rules:

* the anchor of a heading is its rendered text, lowercased, with every
  character removed that is not a letter, mark, decimal or letter number,
  connector punctuation (``_``), hyphen or space, and each space then
  replaced by a hyphen -- so ``What `softdirty` guarantees`` is
  ``what-softdirty-guarantees`` and ``Linux ≥ 6.7`` is ``linux--67``;
* the second heading with the same anchor gets ``-1``, the third ``-2``.

Links inside code (fenced blocks, code spans) are not links.  Absolute URLs
(``https:``, ``mailto:``...) are not checked: CI has no internet.
"""

import os
import re
import unicodedata
import urllib.parse

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {"__pycache__", "build", "dist", "node_modules"}


def markdown_files(root=ROOT):
    """Relative paths of the *.md files under `root`, skipping hidden,
    build and virtual-environment directories (symlinks are not followed)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith(".") and d not in SKIP_DIRS and not d.endswith(".egg-info")
            and not os.path.exists(os.path.join(dirpath, d, "pyvenv.cfg")))
        found += [os.path.relpath(os.path.join(dirpath, f), root)
                  for f in sorted(filenames) if f.endswith(".md")]
    return found


# -- reading Markdown ----------------------------------------------------------

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
# the destination after "](": <anything> or a run without spaces whose
# parentheses balance one level deep
INLINE = re.compile(r"\]\(\s*(<[^>\n]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)")
REFDEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>\n]*>|\S+)")
HTML_LINK = re.compile(r"""\b(?:href|src)\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.I)
HTML_ID = re.compile(r"""\b(?:id|name)\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.I)


def prose_lines(text):
    """(line number, line) for each line outside fenced code blocks."""
    fence = None
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None:
            if m:
                fence = m.group(1)
                continue
            yield n, line
        elif m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) \
                and not line.strip().strip(fence[0]):
            fence = None


def rendered_text(inline):
    """The text GitHub renders for an inline Markdown fragment (enough of it
    for anchors): code spans keep their content verbatim; links and images
    become their text; HTML tags, emphasis markers and escapes go."""
    spans = []

    def keep(m):
        spans.append(m.group(2).strip() if m.group(2).strip() else m.group(2))
        return "\0%d\0" % (len(spans) - 1)

    s = CODE_SPAN.sub(keep, inline)
    s = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", s)       # [text](url), ![alt](src)
    s = re.sub(r"!?\[([^\]]*)\]\[[^\]]*\]", r"\1", s)       # [text][ref]
    s = re.sub(r"<[^>]+>", "", s)                            # HTML tags
    s = re.sub(r"(\*\*|__)(.+?)\1", r"\2", s)                # strong
    s = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"\1", s)   # emphasis
    s = re.sub(r"(?<!\w)_(?!\s)(.+?)(?<!\s)_(?!\w)", r"\1", s)
    s = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", s)             # backslash escapes
    return re.sub("\0(\\d+)\0", lambda m: spans[int(m.group(1))], s).strip()


def github_slug(heading_text):
    kept = [c for c in heading_text.lower()
            if c in "- " or unicodedata.category(c)[0] in "LM"
            or unicodedata.category(c) in ("Nd", "Nl", "Pc")]
    return "".join(kept).replace(" ", "-")


def anchors(text):
    """Every anchor a Markdown document defines."""
    found = set()
    seen = {}
    previous = None
    for _, line in prose_lines(text):
        heading = None
        m = ATX.match(line)
        if m:
            heading = m.group(2) or ""
        elif previous and previous.strip() and SETEXT.match(line) and not ATX.match(previous):
            heading = previous.strip()
        if heading is not None:
            slug = github_slug(rendered_text(heading))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else "%s-%d" % (slug, count))
        for m in HTML_ID.finditer(line):
            found.add(m.group(1) if m.group(1) is not None else m.group(2))
        previous = line if heading is None else None
    return found


def links(text):
    """(line number, destination) of every link, image and HTML href/src."""
    for n, line in prose_lines(text):
        prose = CODE_SPAN.sub("", line)
        targets = [m.group(1) for m in INLINE.finditer(prose)]
        targets += [m.group(1) for m in REFDEF.finditer(prose)]
        targets += [a if a is not None else b for a, b in
                    (m.groups() for m in HTML_LINK.finditer(prose))]
        for t in targets:
            if t.startswith("<") and t.endswith(">"):
                t = t[1:-1]
            yield n, t


# -- checking -------------------------------------------------------------------

def broken_links(relpath, root=ROOT, _anchor_cache=None):
    """Messages for the links of `relpath` (under `root`) that do not resolve."""
    cache = {} if _anchor_cache is None else _anchor_cache
    path = os.path.join(root, relpath)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    bad = []
    for n, target in links(text):
        if not target or re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", target) or target.startswith("//"):
            continue                                   # absolute URL (or empty)
        where, _, fragment = target.partition("#")
        where = urllib.parse.unquote(where.partition("?")[0])
        fragment = urllib.parse.unquote(fragment)
        if not where:
            dest = path
        elif where.startswith("/"):
            dest = os.path.join(root, where.lstrip("/"))
        else:
            dest = os.path.normpath(os.path.join(os.path.dirname(path), where))
        shown = "%s:%d: %s" % (relpath, n, target)
        if os.path.relpath(dest, root).startswith(os.pardir):
            bad.append(shown + " (outside the repository)")
            continue
        if not os.path.exists(dest):
            bad.append(shown + " (no such file)")
            continue
        if fragment and dest.endswith(".md") and os.path.isfile(dest):
            if dest not in cache:
                with open(dest, encoding="utf-8") as f:
                    cache[dest] = anchors(f.read())
            if fragment not in cache[dest]:
                bad.append(shown + " (no such anchor in %s)" % os.path.relpath(dest, root))
    return bad


_ANCHORS = {}
MARKDOWN = markdown_files()


def test_the_markdown_files_are_found():
    assert "README.md" in MARKDOWN


@pytest.mark.parametrize("relpath", MARKDOWN)
def test_relative_links_resolve(relpath):
    bad = broken_links(relpath, _anchor_cache=_ANCHORS)
    assert not bad, "broken links:\n" + "\n".join(bad)


# -- the checker itself ---------------------------------------------------------

@pytest.mark.parametrize("heading, slug", [
    ("Measured speed", "measured-speed"),
    ("What `softdirty` guarantees", "what-softdirty-guarantees"),
    ("Windows-compatible calls (`writewatch.win32`)", "windows-compatible-calls-writewatchwin32"),
    ("What these tests found (all fixed, each with a regression test)",
     "what-these-tests-found-all-fixed-each-with-a-regression-test"),
    ("Linux ≥ 6.7 and **bold** _it_", "linux--67-and-bold-it"),
    ("`max_count` and [a link](x.md) µs", "max_count-and-a-link-µs"),
    ("C++ & Ünïcödé", "c--ünïcödé"),
])
def test_github_slug(heading, slug):
    assert github_slug(rendered_text(heading)) == slug


def test_checker_finds_broken_links(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "other.md").write_text("# Other\n\n## Same\n\n## Same\n")
    (tmp_path / "a.md").write_text(
        "# Title\n\n"
        "[ok](sub/other.md) [ok](sub/other.md#same-1) [ok](#title) [ok](sub)\n"
        "[ok](https://example.com/nowhere.md) [ok](<sub/other.md#same>)\n"
        "`[code](missing.md)`\n"
        "```\n[fenced](missing.md)\n# not a heading\n```\n"
        "[bad](missing.md) ![bad](img.png) [bad](sub/other.md#same-2)\n"
        "[bad](#not-a-heading) [bad](../outside.md)\n"
        "[ref]: sub/nothing.md\n"
        '<a href="gone.md">bad</a>\n')
    bad = broken_links("a.md", root=str(tmp_path))
    assert [b.split(": ", 1)[1] for b in bad] == [
        "missing.md (no such file)",
        "img.png (no such file)",
        "sub/other.md#same-2 (no such anchor in %s)" % os.path.join("sub", "other.md"),
        "#not-a-heading (no such anchor in a.md)",
        "../outside.md (outside the repository)",
        "sub/nothing.md (no such file)",
        "gone.md (no such file)",
    ]
    assert [int(b.split(":")[1]) for b in bad] == [10, 10, 10, 11, 11, 12, 13]
