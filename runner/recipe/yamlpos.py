"""YAML loading that remembers where each value came from (line numbers), for errors that point at a line."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from runner.errors import TunebookError


@dataclass
class Located:
    """A parsed YAML document and the 1-based line of every key path in it."""

    data: object
    path: str
    lines: dict[tuple, int] = field(default_factory=dict)

    def line_of(self, keypath) -> int | None:
        """Line of the deepest known prefix of `keypath` (a tuple of keys/indices)."""
        keypath = tuple(keypath)
        while keypath:
            if keypath in self.lines:
                return self.lines[keypath]
            keypath = keypath[:-1]
        return self.lines.get((), 1)

    def where(self, keypath) -> str:
        line = self.line_of(keypath)
        return f"{self.path}:{line}" if line else self.path


def _walk(node, prefix: tuple, lines: dict, path: str, dup: list):
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                dup.append((f"{path}:{key_node.start_mark.line + 1}",
                            f"key '{key}' appears twice (first at line {seen[key]}); the second would silently win"))
            seen[key] = key_node.start_mark.line + 1
            lines[prefix + (key,)] = key_node.start_mark.line + 1
            _walk(value_node, prefix + (key,), lines, path, dup)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[prefix + (i,)] = item.start_mark.line + 1
            _walk(item, prefix + (i,), lines, path, dup)


def load_yaml(path: str | Path, display: str | None = None) -> tuple[Located, list[tuple[str, str]]]:
    """Parse a YAML file; return it with its line map and a list of duplicate-key problems.

    Malformed YAML raises a TunebookError that names the line and column.
    """
    display = display or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TunebookError(f"file not found: {display}") from None
    except UnicodeDecodeError as exc:
        raise TunebookError(f"{display} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                            fix="Save the file as UTF-8.") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{display}:{mark.line + 1}:{mark.column + 1}" if mark else display
        problem = " ".join(filter(None, [exc.context, exc.problem]))
        raise TunebookError(f"malformed YAML: {problem}", where=where,
                            fix="Check indentation and quoting on that line (tabs are not allowed; "
                                "quote values containing ': ' or '#').") from None
    lines: dict[tuple, int] = {(): 1}
    dup: list[tuple[str, str]] = []
    if node is not None:
        _walk(node, (), lines, display, dup)
    return Located(data=data, path=display, lines=lines), dup
