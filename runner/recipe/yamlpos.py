"""YAML loading that remembers where each value came from (line numbers), for errors that point at a line.

Parsing goes through `runner.safeload` (size, depth and alias-expansion limits checked while composing; YAML 1.2
numbers), so the line map below is only ever built for a bounded document."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from runner.safeload import BoundedLoader, Limits, compose_yaml, read_text

# A recipe or preset is a page of settings: 1 MiB, 32 levels and 20,000 values leave room for any real one
# (the shipped ones are under 3 KiB, 5 levels, 100 values) and bound what validation walks.
RECIPE_LIMITS = Limits(max_bytes=1024 * 1024, max_depth=32, max_nodes=20_000, max_aliases=200)


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


def _key_of(node, constructor) -> object:
    """A mapping key as the parsed data has it (`1:` is the integer 1, `true:` the boolean), so key paths of the
    data find their line."""
    if not isinstance(node, yaml.ScalarNode):  # `? [a, b]: c`: no name to point at; its kind stands in
        return f"<{node.tag.rsplit(':', 1)[-1]} key>"
    if node.tag == "tag:yaml.org,2002:str":
        return node.value
    try:
        key = constructor.construct_object(node)
        hash(key)
    except (yaml.YAMLError, ValueError, TypeError):
        return node.value
    return key


def _walk(node, prefix: tuple, lines: dict, path: str, dup: list, constructor):
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, value_node in node.value:
            key = _key_of(key_node, constructor)
            if key in seen:
                dup.append((f"{path}:{key_node.start_mark.line + 1}",
                            f"key '{key}' appears twice (first at line {seen[key]}); the second would silently win"))
            seen[key] = key_node.start_mark.line + 1
            lines[prefix + (key,)] = key_node.start_mark.line + 1
            _walk(value_node, prefix + (key,), lines, path, dup, constructor)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[prefix + (i,)] = item.start_mark.line + 1
            _walk(item, prefix + (i,), lines, path, dup, constructor)


def load_yaml(path: str | Path, display: str | None = None,
              limits: Limits = RECIPE_LIMITS) -> tuple[Located, list[tuple[str, str]]]:
    """Parse a YAML file within `limits`; return it with its line map and a list of duplicate-key problems.

    Malformed, oversized or over-nested YAML raises a TunebookError that names the line (and column).
    """
    display = display or str(path)
    node, data = compose_yaml(read_text(path, display, limits.max_bytes), display, limits)
    lines: dict[tuple, int] = {(): 1}
    dup: list[tuple[str, str]] = []
    if node is not None:
        _walk(node, (), lines, display, dup, BoundedLoader(""))
    return Located(data=data, path=display, lines=lines), dup
