"""Bounded YAML for every file a user hands mtlsprobe: targets files and manifests.

PyYAML's safe loaders trust the shape of their input. An alias bomb ("billion
laughs") composes into a small shared graph that explodes in whatever walks it
next; 10,000 nested ``[`` exhaust the recursion limit; a duplicate key silently
keeps the last value; ``1:0:0:...`` (a YAML 1.1 base-60 integer) costs quadratic
time; a FIFO or ``/dev/zero`` never ends ``read()``. Here, before anything else
sees the data:

- the file must be a regular file of at most ``max_bytes``, strict UTF-8, no NUL;
- nesting deeper than ``max_depth`` is refused as soon as it is reached;
- nodes reached through aliases may not exceed ``max(ALIAS_FLOOR, nodes written)``
  for the whole stream - the ratio idea go-yaml adopted for CVE-2019-11253
  (yaml.v3 ``decode.go``, ``allowedAliasRatio``), counted exactly: each anchor's
  expanded size is known when its node closes, so the count never walks the
  expansion and refusing a bomb costs a few dozen events;
- an alias to a node that is still open (a recursive structure) is refused;
- a key written twice in one mapping is refused (merge keys ``<<`` may still be
  overridden, as YAML's merge type says);
- integer scalars longer than ``MAX_INT_CHARS`` are refused.

Composition is PyYAML's own composer driven by a parser's events, so the limits
hold the same way for libyaml's parser (``CParser``, used when PyYAML was built
with it: ~5x faster on large manifests) and for the pure-Python one. libyaml's own
composer is C code that cannot be hooked, so it is not used.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.error import Mark, MarkedYAMLError, YAMLError
from yaml.events import (
    AliasEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from probe import textsafe

ALIAS_FLOOR = 100_000
MAX_INT_CHARS = 128
DEFAULT_MAX_DEPTH = 100
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = Resolver.DEFAULT_SCALAR_TAG
_SEQ_TAG = Resolver.DEFAULT_SEQUENCE_TAG
_MAP_TAG = Resolver.DEFAULT_MAPPING_TAG


def _composer_error(problem: str, mark: Any) -> ComposerError:
    """A marked error; ``mark`` is a pure-Python or a libyaml Mark."""
    return ComposerError(None, None, problem, mark)


def _constructor_error(problem: str, mark: Any) -> ConstructorError:
    return ConstructorError(None, None, problem, mark)


class YamlLoadError(ValueError):
    """The input cannot be loaded. ``str()`` is one line without the origin; callers
    prefix the file name."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_depth: int = DEFAULT_MAX_DEPTH
    alias_floor: int = ALIAS_FLOOR


class _BoundedComposer(Composer):
    """PyYAML's composer, rewritten as a loop over the parser's events (no recursion,
    so depth is a counter, not the interpreter's stack) with the bounds above.

    Builds the same nodes PyYAML's composer builds, except that path resolvers
    (``add_path_resolver``) are not consulted: none are registered here.
    """

    limits: Limits
    # Provided by the parser and the resolver this is mixed with.
    get_event: Any
    resolve: Any

    def _start_bounds(self, limits: Limits) -> None:
        self.limits = limits
        self._written = 0  # nodes in the text
        self._aliased = 0  # nodes reached again through aliases (expanded)
        self._expanded = 0  # running expanded count, to size anchored nodes
        self._sizes: dict[str, int] = {}  # anchor -> expanded size, once its node closed
        self._plain_tags: dict[str, str] = {}  # plain scalar -> resolved tag (keys repeat)

    def compose_document(self) -> Node:
        self.get_event()  # DOCUMENT-START
        node = self._compose_root()
        self.get_event()  # DOCUMENT-END
        self.anchors = {}
        self._sizes = {}
        return node

    def _scalar_tag(self, event: ScalarEvent) -> str:
        tag = event.tag
        if tag is not None and tag != "!":
            return str(tag)
        if not event.implicit[0]:
            return str(_STR_TAG)
        value = event.value
        cached = self._plain_tags.get(value)
        if cached is None:
            cached = self._plain_tags[value] = self.resolve(ScalarNode, value, event.implicit)
        return cached

    def _register(self, anchor: str, node: Node, event: Event) -> None:
        if anchor in self.anchors:
            first = self.anchors[anchor].start_mark.line + 1
            raise _composer_error(
                f"anchor &{_name(anchor)} defined twice (first at line {first})", event.start_mark
            )
        self.anchors[anchor] = node

    def _compose_root(self) -> Node:
        get_event = self.get_event
        max_depth = self.limits.max_depth
        # Open collections: (node, children, anchor, expanded count before it).
        stack: list[tuple[Node, list[Node], str | None, int]] = []
        while True:
            event = get_event()
            kind = type(event)
            node: Node
            if kind is ScalarEvent:
                node = ScalarNode(
                    self._scalar_tag(event),
                    event.value,
                    event.start_mark,
                    event.end_mark,
                    style=event.style,
                )
                self._written += 1
                self._expanded += 1
                if event.anchor is not None:
                    self._register(event.anchor, node, event)
                    self._sizes[event.anchor] = 1
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                if len(stack) >= max_depth:
                    raise _composer_error(
                        f"nested deeper than {max_depth} levels", event.start_mark
                    )
                tag = event.tag
                if kind is MappingStartEvent:
                    if tag is None or tag == "!":
                        tag = _MAP_TAG
                    node = MappingNode(tag, [], event.start_mark, None, flow_style=event.flow_style)
                else:
                    if tag is None or tag == "!":
                        tag = _SEQ_TAG
                    node = SequenceNode(
                        tag, [], event.start_mark, None, flow_style=event.flow_style
                    )
                if event.anchor is not None:
                    self._register(event.anchor, node, event)
                stack.append((node, [], event.anchor, self._expanded))
                self._written += 1
                self._expanded += 1
                continue
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                node, children, anchor, before = stack.pop()
                node.end_mark = event.end_mark
                if kind is MappingEndEvent:
                    node.value = list(zip(children[0::2], children[1::2], strict=True))
                else:
                    node.value = children
                if anchor is not None:
                    self._sizes[anchor] = self._expanded - before
            elif kind is AliasEvent:
                node = self._alias(event)
            else:
                raise _composer_error(f"unexpected {kind.__name__}", event.start_mark)
            if not stack:
                return node
            stack[-1][1].append(node)

    def _alias(self, event: AliasEvent) -> Node:
        anchor = str(event.anchor)
        node = self.anchors.get(anchor)
        if node is None:
            raise _composer_error(
                f"alias *{_name(anchor)} has no anchor before it", event.start_mark
            )
        size = self._sizes.get(anchor)
        if size is None:
            raise _composer_error(
                f"alias *{_name(anchor)} refers to a node that contains it", event.start_mark
            )
        self._aliased += size
        self._expanded += size
        budget = max(self.limits.alias_floor, self._written)
        if self._aliased > budget:
            raise _composer_error(
                f"aliases expand to more than {budget} nodes (an alias bomb?)", event.start_mark
            )
        return node


class _StrictConstructor(SafeConstructor):
    """SafeConstructor that refuses duplicate keys and over-long integers, and turns
    the ValueErrors some scalars raise (``2001-13-01``, a 5,000-digit integer) into
    marked errors."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        if not isinstance(node, MappingNode):  # construct_undefined paths pass any node
            return super().construct_mapping(node, deep)
        pairs = node.value
        explicit = len(pairs)
        if any(k.tag == _MERGE_TAG for k, _ in pairs):
            explicit -= sum(1 for k, _ in pairs if k.tag == _MERGE_TAG)
            self.flatten_mapping(node)
            pairs = node.value
        # flatten_mapping puts merged pairs first; they may be overridden, explicit
        # ones may not repeat.
        first_explicit = len(pairs) - explicit
        construct = self.construct_object
        mapping: dict[Hashable, Any] = {}
        explicit_keys: set[Hashable] = set()
        for i, (key_node, value_node) in enumerate(pairs):
            key = construct(key_node, deep=deep)
            try:
                repeated = key in explicit_keys if first_explicit else key in mapping
            except TypeError:
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    "found unhashable key",
                    key_node.start_mark,
                ) from None
            if repeated and i >= first_explicit:
                raise _constructor_error(f"duplicate key {_short(key)}", key_node.start_mark)
            if first_explicit and i >= first_explicit:
                explicit_keys.add(key)
            mapping[key] = construct(value_node, deep=deep)
        return mapping

    def construct_yaml_int(self, node: ScalarNode) -> int:
        if len(node.value) > MAX_INT_CHARS:
            raise _constructor_error(
                f"integer longer than {MAX_INT_CHARS} characters", node.start_mark
            )
        try:
            return super().construct_yaml_int(node)
        except ValueError as exc:
            raise _constructor_error(f"invalid integer ({exc})", node.start_mark) from None

    def construct_yaml_timestamp(self, node: ScalarNode) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except (ValueError, OverflowError) as exc:
            raise _constructor_error(f"invalid timestamp ({exc})", node.start_mark) from None


_StrictConstructor.add_constructor(
    "tag:yaml.org,2002:int",
    _StrictConstructor.construct_yaml_int,  # type: ignore[type-var]
)
_StrictConstructor.add_constructor(
    "tag:yaml.org,2002:timestamp",
    _StrictConstructor.construct_yaml_timestamp,  # type: ignore[type-var]
)


class _PyLoader(Reader, Scanner, Parser, _BoundedComposer, _StrictConstructor, Resolver):
    def __init__(self, stream: str, limits: Limits) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _BoundedComposer.__init__(self)
        _StrictConstructor.__init__(self)
        Resolver.__init__(self)
        self._start_bounds(limits)


_LOADERS: list[type[Any]] = []
try:
    from yaml._yaml import CParser

    class _CLoader(_BoundedComposer, CParser, _StrictConstructor, Resolver):
        """libyaml's parser (events only) under the bounded composer. The composer
        comes first in the MRO so CParser's C composer is never reached."""

        def __init__(self, stream: str, limits: Limits) -> None:
            CParser.__init__(self, stream)
            _BoundedComposer.__init__(self)
            _StrictConstructor.__init__(self)
            Resolver.__init__(self)
            self._start_bounds(limits)

    _LOADERS.append(_CLoader)
except ImportError:  # PyYAML built without libyaml
    pass
_LOADERS.append(_PyLoader)


def loader_name() -> str:
    """Which parser loads: ``libyaml`` or ``python`` (for benchmarks and --version)."""
    return "libyaml" if _LOADERS[0] is not _PyLoader else "python"


def load_all(text: str, limits: Limits, *, pure_python: bool = False) -> list[object]:
    """Every document in ``text`` (empty documents are None). Raises YamlLoadError."""
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise YamlLoadError(f"NUL byte at line {line} (not a text file)")
    if len(text) > limits.max_bytes:
        raise YamlLoadError(f"longer than {limits.max_bytes} characters")
    cls = _PyLoader if pure_python else _LOADERS[0]
    try:
        loader = cls(text, limits)
    except UnicodeError:  # lone surrogates: libyaml wants UTF-8
        raise YamlLoadError("not valid Unicode text") from None
    try:
        docs: list[object] = []
        while loader.check_data():
            docs.append(loader.get_data())
        return docs
    except MarkedYAMLError as exc:
        raise YamlLoadError(_describe(exc)) from None
    except YAMLError as exc:
        raise YamlLoadError(f"invalid YAML: {textsafe.line(str(exc), 200)}") from None
    except RecursionError:
        raise YamlLoadError("invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def load_one(text: str, limits: Limits, *, pure_python: bool = False) -> object:
    """The single document in ``text`` (None when empty); a second document is an error."""
    docs = load_all(text, limits, pure_python=pure_python)
    if len(docs) > 1:
        raise YamlLoadError("expected one YAML document, found more (a '---' line?)")
    return docs[0] if docs else None


def read_text(path: Path, max_bytes: int) -> str:
    """The text of a regular file of at most ``max_bytes``, strict UTF-8 without NUL.

    Opened non-blocking so a FIFO without a writer cannot hang the open; the type is
    checked on the open descriptor (``fstat``), so a swap after a check cannot slip a
    device in; reading stops one byte past the cap whatever ``st_size`` claims.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise YamlLoadError(f"cannot read: {exc.strerror or exc}") from None
    except ValueError:  # embedded NUL in the path
        raise YamlLoadError("cannot read: invalid path") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise YamlLoadError("is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise YamlLoadError("not a regular file (a FIFO, socket or device?)")
        if st.st_size > max_bytes:
            raise YamlLoadError(f"larger than {max_bytes} bytes")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise YamlLoadError(f"larger than {max_bytes} bytes")
    except OSError as exc:
        raise YamlLoadError(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise YamlLoadError(f"NUL byte at line {line} (not a text file)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise YamlLoadError(f"not UTF-8 text (byte {exc.start + 1}, line {line})") from None


def load_file(path: Path, limits: Limits, *, single: bool) -> list[object]:
    """Read and load ``path`` (every document, or exactly one with ``single``)."""
    text = read_text(path, limits.max_bytes)
    if single:
        return [load_one(text, limits)]
    return load_all(text, limits)


def _describe(exc: MarkedYAMLError) -> str:
    mark: Mark | None = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = exc.problem or exc.context or "invalid YAML"
    return f"invalid YAML{where}: {textsafe.line(problem, 200)}"


def _short(value: object, limit: int = 60) -> str:
    """A bounded, quoted rendering of a value the input controls."""
    return textsafe.bounded(value, limit)


def _name(anchor: object) -> str:
    return textsafe.line(str(anchor), 60)


__all__ = [
    "ALIAS_FLOOR",
    "Limits",
    "YamlLoadError",
    "load_all",
    "load_file",
    "load_one",
    "loader_name",
    "read_text",
]
