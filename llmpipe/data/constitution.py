"""A constitution for Constitutional AI (`llmpipe align --method cai`): principles, each with a critique
request and a revision request, read from YAML or Markdown and checked line by line.

YAML (`.yaml` / `.yml`):

    name: my-constitution          # optional
    principles:
      - name: harmless             # optional; "principle N" otherwise
        critique: Point out anything harmful in your last reply.
        revision: Rewrite your reply without the harmful parts.

A bare list of principles is read too. Markdown (`.md`): one `##` heading per principle (its name), with
a `Critique:` paragraph and a `Revision:` paragraph under it; anything before the first `##` heading is
a preamble and ignored.

Every problem is one UserError naming the file, the line and the field: a YAML syntax error, a principle
that is not a mapping, a missing or empty request, an unknown key (a typo such as `critque`), two
principles of one name, or no principle at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmpipe.core.errors import UserError
from llmpipe.core.files import sha256_file

FIELD = "align.cai.constitution"
KEYS = ("name", "critique", "revision")
YAML_SUFFIXES = (".yaml", ".yml")
MARKDOWN_SUFFIXES = (".md", ".markdown")
FORMAT_HINT = "each principle needs a critique request and a revision request; see data/constitution.yaml"
_MD_HEADING = re.compile(r"^##\s+(.*?)\s*#*\s*$")
_MD_KEY = re.compile(r"^\s*(critique|revision)\s*:\s*(.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class Principle:
    """One principle: what the critique asks for and how the revision should change the reply."""

    name: str
    critique: str
    revision: str
    line: int  # where it starts in its file (1-based)


@dataclass(frozen=True)
class Constitution:
    """The principles of one file, with the file's sha256 (recorded in the manifest)."""

    path: str
    sha256: str
    name: str
    principles: tuple[Principle, ...]

    def record(self) -> dict[str, Any]:
        """What a stage's manifest says of it: path, sha256, name and the principles' names."""
        return {"path": self.path, "sha256": self.sha256, "name": self.name,
                "principles": [p.name for p in self.principles]}


def load_constitution(path: str | Path) -> Constitution:
    """Read and check a constitution file (YAML or Markdown by its suffix)."""
    file = str(path)
    p = Path(path)
    if not p.is_file():
        what = "is a folder, not a constitution file" if p.is_dir() else "constitution file not found"
        raise UserError(what, file=file, field=FIELD, hint="give a .yaml or .md file of principles, e.g. data/constitution.yaml")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError("constitution is not UTF-8 text", file=file, field=FIELD, hint="re-encode it as UTF-8") from None
    suffix = p.suffix.lower()
    if suffix in YAML_SUFFIXES:
        name, principles = _from_yaml(text, file)
    elif suffix in MARKDOWN_SUFFIXES:
        name, principles = p.stem, _from_markdown(text, file)
    else:
        raise UserError(f"unsupported constitution file type '{p.suffix}'", file=file, field=FIELD,
                        hint=f"use {', '.join(YAML_SUFFIXES + MARKDOWN_SUFFIXES)}")
    if not principles:
        raise UserError("holds no principles", file=file, field=FIELD, hint=FORMAT_HINT)
    seen: dict[str, int] = {}
    for principle in principles:
        if principle.name in seen:
            raise UserError(f"principle name {principle.name!r} is used twice (first on line {seen[principle.name]})",
                            file=file, line=principle.line, field="name", hint="give every principle its own name")
        seen[principle.name] = principle.line
    return Constitution(path=file, sha256=sha256_file(p), name=name, principles=tuple(principles))


def _from_yaml(text: str, file: str) -> tuple[str, list[Principle]]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"invalid YAML: {problem}", file=file, line=mark.line + 1 if mark is not None else None, field=FIELD,
                        hint="fix the YAML syntax") from None
    name = Path(file).stem
    items, nodes = data, root
    if isinstance(data, dict):
        unknown = sorted(set(map(str, data)) - {"name", "principles"})
        if unknown:
            raise UserError(f"unknown key {unknown[0]!r}", file=file, line=_key_line(root, unknown[0]), field=unknown[0],
                            hint="a constitution has 'name' and 'principles'")
        name = str(data.get("name") or name)
        items, nodes = data.get("principles"), _value_node(root, "principles")
    if items is None:
        return name, []
    if not isinstance(items, list):
        raise UserError("'principles' must be a list of principles", file=file, line=_line(nodes), field="principles", hint=FORMAT_HINT)
    item_nodes = nodes.value if isinstance(nodes, yaml.SequenceNode) else [None] * len(items)
    return name, [_principle(item, node, i, file) for i, (item, node) in enumerate(zip(items, item_nodes))]


def _principle(item: Any, node: Any, index: int, file: str) -> Principle:
    line = _line(node)
    where = f"principles[{index}]"
    if not isinstance(item, dict):
        raise UserError(f"must be a mapping with {', '.join(KEYS[1:])}, got {type(item).__name__}", file=file, line=line,
                        field=where, hint=FORMAT_HINT)
    unknown = sorted(set(map(str, item)) - set(KEYS))
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r}", file=file, line=_key_line(node, unknown[0]) or line,
                        field=f"{where}.{unknown[0]}", hint=f"a principle has {', '.join(KEYS)}")
    for key in KEYS[1:]:
        value = item.get(key)
        if not isinstance(value, str) or not value.strip():
            what = "missing" if key not in item else "must be a non-empty string"
            raise UserError(what, file=file, line=_key_line(node, key) or line, field=f"{where}.{key}", hint=FORMAT_HINT)
    name = item.get("name", f"principle {index + 1}")
    if not isinstance(name, str | int) or not str(name).strip():
        raise UserError("must be a non-empty string", file=file, line=_key_line(node, "name") or line, field=f"{where}.name")
    return Principle(name=str(name).strip(), critique=item["critique"].strip(), revision=item["revision"].strip(), line=line or 1)


def _from_markdown(text: str, file: str) -> list[Principle]:
    """`## name` sections, each with `Critique:` and `Revision:` paragraphs (a paragraph runs to the
    next key, heading or blank line)."""
    sections: list[tuple[str, int, dict[str, list[str]]]] = []
    key: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        heading = _MD_HEADING.match(raw)
        if heading:
            sections.append((heading.group(1), number, {}))
            key = None
            continue
        if not sections:
            continue  # the preamble
        found = _MD_KEY.match(raw)
        parts = sections[-1][2]
        if found:
            key = found.group(1).lower()
            if key in parts:
                raise UserError(f"a second {key.capitalize()}: paragraph in principle {sections[-1][0]!r}", file=file, line=number,
                                field=key, hint="give each principle one Critique: and one Revision:")
            parts[key] = [found.group(2).strip()]
        elif not raw.strip():
            key = None
        elif key is not None:
            parts[key].append(raw.strip())
    principles = []
    for name, line, parts in sections:
        if not name:
            raise UserError("a principle heading without a name", file=file, line=line, field="##", hint="write '## name'")
        for key in KEYS[1:]:
            if not " ".join(parts.get(key, [])).strip():
                raise UserError(f"principle {name!r} has no {key.capitalize()}: paragraph", file=file, line=line, field=key,
                                hint=FORMAT_HINT)
        principles.append(Principle(name=name, critique=" ".join(parts["critique"]).strip(),
                                    revision=" ".join(parts["revision"]).strip(), line=line))
    return principles


def _line(node: Any) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


def _value_node(mapping: Any, key: str) -> Any:
    if isinstance(mapping, yaml.MappingNode):
        for k, v in mapping.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def _key_line(mapping: Any, key: str) -> int | None:
    if isinstance(mapping, yaml.MappingNode):
        for k, _ in mapping.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return k.start_mark.line + 1
    return None
