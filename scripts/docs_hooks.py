"""The documentation site's build hooks (mkdocs.yml: ``hooks`` and the griffe ``extensions``).

* ``SphinxStyle``, a griffe extension: the package's docstrings are written for reading in a
  terminal, with Sphinx roles (``:func:`x```) and ``#:`` comments above constants; the API
  reference shows roles as code and the comments as the constants' docstrings.
* ``<!-- readme: HEADING -->`` in a page is replaced by that section of README.md (up to the next
  heading of the same or a higher level; ``<!-- readme: HEADING | intro -->``: up to the next
  heading of any level), so the README stays the one home of what it explains. Its links to
  ``docs/...`` are made relative to the page.
* ``<!-- tasks: NAME ... -->`` is replaced by a table of those registered tasks and their
  defaults, read from the task registry, so the pages never disagree with ``bimt tasks``.
* ``<!-- facade -->`` is replaced by a table of the root package's names (``bimt.fit``...) and
  links to where each is defined, so a name missing from the reference fails the build.
* Result folders (``docs/*/README.md``) missing from the nav's "Results" section are appended to
  it, so a new one (``docs/lm``) needs no edit here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import griffe

ROOT = Path(__file__).resolve().parent.parent
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")
_README_MARK = re.compile(r"<!-- readme: (.+?)(?: \| (intro))? -->")
_TASKS_MARK = re.compile(r"<!-- tasks: (.+?) -->")
_HEADING = re.compile(r"^(#{1,6}) (.+)$")
_PARAMETERS = re.compile(r"^Parameters\n-{3,}\n((?:.+\n?)+)", re.M)


def _plain_roles(text: str) -> str:
    """``:func:`~a.b``` -> ```b```, ``:class:`a.B``` -> ```a.B```."""
    return _ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)


def _parameter_list(text: str) -> str:
    """A ``Parameters`` section of ``name : what it is`` lines (continuations indented) as a
    markdown list: the package writes no types there, which numpy-style parsing would expect."""

    def as_list(match):
        items = []
        for line in match.group(1).rstrip("\n").split("\n"):
            if line[:1].isspace() and items:
                items[-1] += " " + line.strip()
            else:
                name, sep, what = line.partition(" : ")
                items.append(f"* `{name.strip()}`: {what.strip()}" if sep else f"* {line.strip()}")
        return "**Parameters**\n\n" + "\n".join(items) + "\n"

    return _PARAMETERS.sub(as_list, text)


class SphinxStyle(griffe.Extension):
    """Roles as code, ``Parameters`` sections as lists, ``#:`` comment blocks above an assignment
    as its docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _parameter_list(_plain_roles(obj.docstring.value))

    def on_attribute_instance(self, *, attr: griffe.Attribute, **kwargs) -> None:
        if attr.docstring is not None or attr.lineno is None:
            return
        try:
            lines = attr.lines_collection[attr.filepath]
        except (KeyError, ValueError):
            return
        comment = []
        i = attr.lineno - 2
        while i >= 0 and lines[i].lstrip().startswith("#:"):
            comment.insert(0, lines[i].lstrip()[2:].strip())
            i -= 1
        if comment:
            attr.docstring = griffe.Docstring(_plain_roles("\n".join(comment)), parent=attr)


# -- mkdocs hooks ------------------------------------------------------------------------------
def readme_section(heading: str, intro: bool = False) -> str:
    """The README's section under ``heading`` (its own heading included)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start, level, fence = None, 0, False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fence = not fence
        match = None if fence else _HEADING.match(line)
        if match is None:
            continue
        if start is None:
            if match.group(2).strip() == heading:
                start, level = i, len(match.group(1))
        elif intro or len(match.group(1)) <= level:
            return "\n".join(lines[start:i]).rstrip() + "\n"
    if start is None:
        raise ValueError(f"README.md has no heading {heading!r}")
    return "\n".join(lines[start:]).rstrip() + "\n"


def _relink(text: str, page_path: str) -> str:
    """README links to ``docs/X`` -> links from the page at ``page_path`` (under docs/) to X (a
    folder: its README, the page the site makes of it)."""
    up = "../" * page_path.count("/")
    return re.sub(r"\]\(docs/([^)]*)\)", lambda m: f"]({up}{m.group(1)}{'README.md' if m.group(1).endswith('/') else ''})",
                  text)


def _shift(text: str, top: int) -> str:
    """Headings moved so the first one is at level ``top`` (the rest keep their distances)."""
    levels = [len(m.group(1)) for m in map(_HEADING.match, text.splitlines()) if m]
    if not levels:
        return text
    delta, out, fence = top - levels[0], [], False
    for line in text.splitlines():
        fence ^= line.startswith("```")
        m = None if fence else _HEADING.match(line)
        out.append(f"{'#' * max(1, len(m.group(1)) + delta)} {m.group(2)}" if m else line)
    return "\n".join(out) + "\n"


def task_table(names: list[str]) -> str:
    """A markdown table of registered tasks: name, what it is, its defaults."""
    from bimt.tasks import TASKS

    rows = ["| task | what | defaults |", "|---|---|---|"]
    for name in names:
        if name not in TASKS:
            raise ValueError(f"no task {name!r}; registered: {', '.join(sorted(TASKS))}")
        task = TASKS[name]
        defaults = ", ".join(f"`{k}={json.dumps(v, separators=(',', ':'))}`" for k, v in task.defaults.items())
        rows.append(f"| `{name}` | {task.description.replace('|', '/')} | {defaults} |")
    return "\n".join(rows) + "\n"


def facade_table() -> str:
    """``bimt.NAME`` -> a cross-reference to the object's home (``bimt.training.loop.fit``)."""
    import bimt

    rows = ["| name | defined in |", "|---|---|"]
    for name in sorted(bimt.__all__):
        home = f"bimt.{bimt._NAMES[name]}.{name}" if name in bimt._NAMES else f"bimt.{name}"
        rows.append(f"| `bimt.{name}` | [`{home}`][{home}] |")
    return "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    def readme(m):
        text = _relink(readme_section(m.group(1), bool(m.group(2))), page.file.src_uri)
        return _shift(text, 1 if page.file.src_uri == "index.md" else 2)

    markdown = _README_MARK.sub(readme, markdown)
    if "<!-- facade -->" in markdown:
        markdown = markdown.replace("<!-- facade -->", facade_table())
    return _TASKS_MARK.sub(lambda m: task_table(m.group(1).split()), markdown)


def on_config(config):
    nav = config.get("nav") or []
    results = next((s["Results"] for s in nav if isinstance(s, dict) and "Results" in s), None)
    if results is None:
        return config
    listed = json.dumps(results)
    docs = Path(config["docs_dir"])
    for readme in sorted(docs.glob("*/README.md")):
        uri = readme.relative_to(docs).as_posix()
        if f'"{uri}"' not in listed and readme.parent.name not in ("api", "tasks"):
            results.append(uri)
    return config
