"""Bounded YAML and JSON loading: a small hostile file can't make tunebook use unbounded memory, time or stack.

Every limit is checked before the data is built: the file's size before it is read, and for YAML the nesting
depth, the number of aliases and the size of the document *with every alias expanded* while the document is
composed (PyYAML's composer shares an aliased node instead of copying it, so "billion laughs" composes in a few
kilobytes; anything that later walks it - line maps, JSON Schema, deep copies - would expand it). JSON has no
aliases, so a size-bounded JSON text builds a size-bounded value; its depth is bounded by Python's recursion
limit while parsing and by `max_depth` right after.

YAML scalars follow YAML 1.2 for numbers: `2e-4` and `1E5` are floats (YAML 1.1, PyYAML's default, reads them
as strings), so the spelling the guides use means what the user meant.

Users: recipes and presets (`runner.recipe.yamlpos`), and any module reading a YAML/JSON file a user can edit
or damage (data rows, the lock): `load_yaml_file`, `load_json_file`, `loads_json`.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from runner.errors import TunebookError


@dataclass(frozen=True)
class Limits:
    """How big a document may be: bytes of text, nesting depth, values with aliases expanded, alias uses."""

    max_bytes: int = 4 * 1024 * 1024
    max_depth: int = 64
    max_nodes: int = 200_000
    max_aliases: int = 1_000


DEFAULT = Limits()

# YAML 1.2 core schema floats (with an exponent, a leading/trailing dot, .inf/.nan), added after PyYAML's 1.1
# resolvers so that everything 1.1 already reads keeps its meaning.
_FLOAT_12 = re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
                          |[-+]?\.(?:inf|Inf|INF)
                          |\.(?:nan|NaN|NAN))$""", re.X)


def _too_big(what: str, where: str) -> TunebookError:
    return TunebookError(f"{what}: refused before reading further", where=where,
                         fix="Write the values out plainly (anchors and aliases that multiply a value, or "
                             "values nested this deep, are refused so that a small file can't exhaust memory).")


class _ValueFailed(Exception):
    """A scalar PyYAML could not build (a 5,000-digit integer, 2024-13-45), with where it is."""

    def __init__(self, exc: ValueError, mark):
        super().__init__(str(exc))
        self.exc, self.mark = exc, mark


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats and limits checked while the document is composed."""

    limits: Limits = DEFAULT
    display: str = "<yaml>"

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._size: dict[int, tuple[int, int]] = {}  # id(node) -> (values, levels) under it, aliases expanded

    def _where(self, mark) -> str:
        return f"{self.display}:{mark.line + 1}" if mark is not None else self.display

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except ValueError as exc:
            raise _ValueFailed(exc, node.start_mark) from None

    def compose_node(self, parent, index):
        lim = self.limits
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            self._aliases += 1
            if self._aliases > lim.max_aliases:
                raise _too_big(f"the document uses more than {lim.max_aliases} aliases (*name)",
                               self._where(mark))
            node = super().compose_node(parent, index)
            if id(node) not in self._size:
                raise TunebookError("an alias refers to the value that contains it (a recursive document)",
                                    where=self._where(mark), fix="Remove the alias or point it at another value.")
            return node
        self._depth += 1
        try:
            if self._depth > lim.max_depth:
                raise _too_big(f"values are nested more than {lim.max_depth} levels deep",
                               self._where(self.peek_event().start_mark))
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        sizes = [self._size[id(c)] for c in children]
        size, height = 1 + sum(s for s, _ in sizes), 1 + max((h for _, h in sizes), default=0)
        self._size[id(node)] = (size, height)
        if height > lim.max_depth:  # aliases inside aliases nest deeper than the text shows
            raise _too_big(f"values are nested more than {lim.max_depth} levels deep (counting aliases)",
                           self._where(node.start_mark))
        if size > lim.max_nodes:
            raise _too_big(f"the document expands to more than {lim.max_nodes:,} values (counting every "
                           "alias as a copy of what it names)", self._where(node.start_mark))
        return node


BoundedLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def read_text(path: str | Path, display: str | None = None, max_bytes: int = DEFAULT.max_bytes) -> str:
    """A UTF-8 text file, refused before it is read when it is larger than `max_bytes`."""
    display = display or str(path)
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise TunebookError(f"{display} is not a regular file", fix="Point at a file.")
        if size > max_bytes:
            raise TunebookError(f"{display} is {size:,} bytes; tunebook reads at most {max_bytes:,} bytes here",
                                where=display, fix="Is this the right file? Trim it, or split it up.")
        with open(p, "rb") as fh:
            raw = fh.read(max_bytes + 1)  # the file may have grown since stat()
    except FileNotFoundError:
        raise TunebookError(f"file not found: {display}") from None
    except IsADirectoryError:
        raise TunebookError(f"{display} is a folder, not a file", fix="Point at a file.") from None
    except OSError as exc:
        raise TunebookError(f"cannot read {display}: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        raise TunebookError(f"{display} is larger than {max_bytes:,} bytes", where=display,
                            fix="Is this the right file? Trim it, or split it up.")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TunebookError(f"{display} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                            fix="Save the file as UTF-8 text (binary or compressed files can't be read).") from None


def compose_yaml(text: str, display: str, limits: Limits = DEFAULT):
    """(root node, value) of one YAML document, with every limit checked while composing.

    Malformed YAML raises a TunebookError naming the line and column."""
    if len(text.encode("utf-8", errors="surrogatepass")) > limits.max_bytes:
        raise TunebookError(f"{display} is larger than {limits.max_bytes:,} bytes", where=display,
                            fix="Is this the right file? Trim it, or split it up.")
    loader_cls = type("Loader", (BoundedLoader,), {"limits": limits, "display": display})
    loader = None
    try:
        loader = loader_cls(text)  # the reader refuses control characters here already
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{display}:{mark.line + 1}:{mark.column + 1}" if mark else display
        problem = " ".join(filter(None, [exc.context, exc.problem]))
        raise TunebookError(f"malformed YAML: {problem}", where=where,
                            fix="Check indentation and quoting on that line (tabs are not allowed; "
                                "quote values containing ': ' or '#').") from None
    except yaml.reader.ReaderError as exc:  # control characters: binary or compressed content
        raise TunebookError(f"not a text file: character #x{exc.character:04x} at position {exc.position}",
                            where=display, fix="A recipe is plain UTF-8 text; binary or compressed files can't be "
                                               "read.") from None
    except yaml.YAMLError as exc:
        raise TunebookError(f"malformed YAML: {str(exc).splitlines()[0]}", where=display,
                            fix="Save the file as plain UTF-8 text.") from None
    except RecursionError:  # a limit above Python's own stack: refuse rather than crash
        raise _too_big("values are nested too deeply", display) from None
    except _ValueFailed as exc:  # an integer with more digits than Python converts (4300), a date that isn't
        where = f"{display}:{exc.mark.line + 1}"
        if "integer string conversion" in str(exc):
            raise TunebookError("a number is too long to read (thousands of digits)", where=where,
                                fix="Write numbers of a sensible size.") from None
        raise TunebookError(f"a value can't be read: {exc}", where=where,
                            fix="Quote the value if it is meant as text.") from None
    finally:
        if loader is not None:
            loader.dispose()
    return node, data


_PARSED: dict[tuple, object] = {}  # (path, mtime, size, display, limits) -> value: presets are read by every resolve
_PARSED_MAX = 64


def load_yaml_file(path: str | Path, display: str | None = None, limits: Limits = DEFAULT):
    """The value of a YAML file, within `limits` (see the module docstring). A file read before and unchanged
    since (same modification time and size) is not parsed again; each caller gets its own copy."""
    display = display or str(path)
    try:
        st = os.stat(path)
        key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size, display, limits)
    except OSError:
        key = None  # read_text reports it
    if key is not None and key in _PARSED:
        return copy.deepcopy(_PARSED[key])
    value = compose_yaml(read_text(path, display, limits.max_bytes), display, limits)[1]
    if key is not None:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.pop(next(iter(_PARSED)))
        _PARSED[key] = copy.deepcopy(value)
    return value


def check_depth(value, where: str, limits: Limits = DEFAULT) -> None:
    """Refuse a parsed value nested deeper, or with more values, than `limits` allow (iteratively: no stack)."""
    stack, count = [(value, 1)], 0
    while stack:
        v, depth = stack.pop()
        count += 1
        if depth > limits.max_depth:
            raise _too_big(f"values are nested more than {limits.max_depth} levels deep", where)
        if count > limits.max_nodes:
            raise _too_big(f"the document has more than {limits.max_nodes:,} values", where)
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def loads_json(text: str | bytes, where: str, limits: Limits = DEFAULT, allow_nonfinite: bool = False):
    """One JSON value from `text`, within `limits`; NaN/Infinity are refused unless allow_nonfinite.

    Invalid JSON raises a TunebookError at `where` (e.g. 'data/train.jsonl:17') with the column."""
    if len(text) > limits.max_bytes:
        raise TunebookError(f"JSON text of {len(text):,} bytes; tunebook reads at most {limits.max_bytes:,} here",
                            where=where, fix="Is this the right file? Trim it, or split it up.")
    try:
        value = json.loads(text, parse_constant=None if allow_nonfinite else _refuse_constant)
    except json.JSONDecodeError as exc:
        raise TunebookError(f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", where=where,
                            fix="Fix the JSON on that line (a JSON validator or `python -m json.tool` shows "
                                "where it breaks).") from None
    except UnicodeDecodeError as exc:
        raise TunebookError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", where=where,
                            fix="Save the file as UTF-8 text (binary or compressed files can't be read).") from None
    except RecursionError:
        raise _too_big("values are nested too deeply", where) from None
    except ValueError as exc:  # NaN/Infinity, integers with more digits than Python converts
        raise TunebookError(f"invalid JSON: {exc}", where=where,
                            fix="Write plain finite numbers (JSON has no NaN or Infinity).") from None
    check_depth(value, where, limits)
    return value


def load_json_file(path: str | Path, display: str | None = None, limits: Limits = DEFAULT,
                   allow_nonfinite: bool = False):
    """The value of a JSON file, within `limits`."""
    display = display or str(path)
    return loads_json(read_text(path, display, limits.max_bytes), display, limits, allow_nonfinite)


def nonfinite_paths(value, prefix: tuple = ()) -> list[tuple]:
    """Key paths of every NaN or infinite float inside a parsed value (iteratively)."""
    out, stack = [], [(value, prefix)]
    while stack:
        v, path = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            out.append(path)
        elif isinstance(v, dict):
            stack.extend((x, path + (k,)) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((x, path + (i,)) for i, x in enumerate(v))
    return sorted(out, key=str)
