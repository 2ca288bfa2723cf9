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

How: values are built straight from a parser's events (``_Builder``), so the limits
hold the same way for libyaml's parser (``CParser``, used when PyYAML was built
with it) and for the pure-Python one. libyaml's own composer is C code that cannot
be hooked, and PyYAML's node graph plus generic constructor cost more than the
parse: building values from events is faster than ``CSafeLoader`` itself
(benchmarks/bench_yaml.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from yaml.composer import ComposerError
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
    StreamEndEvent,
)
from yaml.nodes import ScalarNode
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
_COLLECTION_TAGS = frozenset(
    "tag:yaml.org,2002:" + t for t in ("set", "omap", "pairs", "seq", "map")
)
_PLAIN_TAGS_CAP = 4096  # distinct plain scalars whose resolved tag is remembered


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


class _Open:
    """A collection being built: its container, and for a mapping the key waiting for
    its value and the ``<<`` merges seen."""

    __slots__ = ("anchor", "before", "container", "is_map", "key", "merges", "waiting")

    def __init__(self, is_map: bool, anchor: str | None, before: int) -> None:
        self.is_map = is_map
        self.container: Any = {} if is_map else []
        self.anchor = anchor
        self.before = before  # expanded node count when it opened, to size its anchor
        self.key: Any = None
        self.waiting = False  # a mapping key was read, its value not yet
        self.merges: list[Any] | None = None


class _Merge:
    """What ``<<`` (YAML's merge key) constructs to; it means something only as a key."""


_MERGE = _Merge()


class _Builder:
    """Python values straight from the parser's events: PyYAML's composer and safe
    constructor in one loop, without recursion (depth is a counter), with the bounds
    of this module. Values are what ``yaml.safe_load`` returns for the same text
    (aliases share one object; ``<<`` merges with the first merged mapping winning
    and explicit keys overriding), except that duplicate keys and the collection
    tags ``!!set``, ``!!omap`` and ``!!pairs`` are refused.
    """

    # Provided by the parser, the resolver and the constructor this is mixed with.
    get_event: Any
    check_event: Any
    resolve: Any
    yaml_constructors: dict[Any, Any]
    yaml_implicit_resolvers: dict[Any, Any]

    def _start_bounds(self, limits: Limits) -> None:
        self.limits = limits
        self._written = 0  # nodes in the text
        self._aliased = 0  # nodes reached again through aliases (expanded)
        self._expanded = 0  # running expanded count, to size anchored nodes
        # anchor -> (value, expanded size); the size is None while the node is open.
        self._anchors: dict[str, tuple[Any, int | None]] = {}
        # plain scalar -> resolved tag (keys repeat); bounded, unique values skip it.
        self._plain_tags: dict[str, str] = {}
        # First characters for which an implicit resolver exists (YAML 1.1: bools, null,
        # numbers, timestamps, merge, value): a plain scalar starting otherwise is a str
        # without asking the resolver - unless a wildcard or path resolver is registered.
        resolvers = self.yaml_implicit_resolvers
        wildcard = None in resolvers or bool(getattr(self, "yaml_path_resolvers", None))
        self._resolved_first: frozenset[str] | None = (
            None if wildcard else frozenset(k for k in resolvers if k)
        )

    def documents(self) -> list[object]:
        self.get_event()  # STREAM-START
        docs: list[object] = []
        while not self.check_event(StreamEndEvent):
            self.get_event()  # DOCUMENT-START
            docs.append(self._build())
            self.get_event()  # DOCUMENT-END
            self._anchors = {}
        return docs

    def _scalar(self, event: ScalarEvent) -> Any:
        tag = event.tag
        if tag is None or tag == "!":
            value = event.value
            if not event.implicit[0]:
                return value
            tag = self._plain_tags.get(value)
            if tag is None:
                first = self._resolved_first
                if first is not None and value and value[0] not in first:
                    return value  # no implicit resolver starts with this character
                tag = self.resolve(ScalarNode, value, event.implicit)
                if len(self._plain_tags) < _PLAIN_TAGS_CAP:
                    self._plain_tags[value] = tag
        if tag == _STR_TAG:
            return event.value
        if tag == _MERGE_TAG:
            return _MERGE
        if tag in _COLLECTION_TAGS:  # their constructors are generators over a collection
            raise _constructor_error(
                f"tag {_name(tag)} is not supported on a scalar", event.start_mark
            )
        construct = self.yaml_constructors.get(tag) or self.yaml_constructors[None]
        mark: Any = event.start_mark  # a libyaml Mark or a pure-Python one
        return construct(self, ScalarNode(tag, event.value, mark, mark, event.style))

    def _anchor(self, anchor: str, value: Any, size: int | None, event: Event) -> None:
        if size is None and anchor in self._anchors:
            raise _composer_error(f"anchor &{_name(anchor)} defined twice", event.start_mark)
        self._anchors[anchor] = (value, size)

    def _build(self) -> Any:
        """One document. The hot loop: the open collection's state lives in locals
        (``container``, ``is_map``, ``key``, ``waiting``) and is saved to its ``_Open``
        only when a child collection opens; the node counters are locals, written back
        before anything that reads them (aliases) and at the end."""
        get_event = self.get_event
        plain_tags = self._plain_tags
        max_depth = self.limits.max_depth
        written = self._written
        expanded = self._expanded
        stack: list[_Open] = []
        top: _Open | None = None
        container: Any = None
        is_map = False
        key: Any = None
        waiting = False
        try:
            while True:
                event = get_event()
                kind = type(event)
                value: Any
                if kind is ScalarEvent:
                    written += 1
                    expanded += 1
                    anchor = event.anchor
                    if anchor is not None:
                        self._anchor(anchor, None, None, event)
                    value = event.value
                    # Inline fast path: most scalars are strings (quoted, or plain words).
                    if event.tag is not None or (
                        event.implicit[0] and plain_tags.get(value) is not _STR_TAG
                    ):
                        value = self._scalar(event)
                        if value is _MERGE and not (is_map and not waiting):
                            raise _not_here(event)
                    if anchor is not None:
                        self._anchor(anchor, value, 1, event)
                elif kind is MappingStartEvent or kind is SequenceStartEvent:
                    if len(stack) >= max_depth:
                        raise _composer_error(
                            f"nested deeper than {max_depth} levels", event.start_mark
                        )
                    is_map = kind is MappingStartEvent
                    if event.tag not in (None, "!", _MAP_TAG if is_map else _SEQ_TAG):
                        raise _constructor_error(
                            f"tag {_name(event.tag)} is not supported here", event.start_mark
                        )
                    if event.anchor is not None:
                        self._anchor(event.anchor, None, None, event)
                    if top is not None:
                        top.key = key
                        top.waiting = waiting
                    top = _Open(is_map, event.anchor, expanded)
                    stack.append(top)
                    container = top.container
                    key = None
                    waiting = False
                    written += 1
                    expanded += 1
                    continue
                elif kind is MappingEndEvent or kind is SequenceEndEvent:
                    closed = stack.pop()
                    value = _merged(closed, event) if closed.merges else container
                    if closed.anchor is not None:
                        self._anchor(closed.anchor, value, expanded - closed.before, event)
                    if not stack:
                        return value
                    top = stack[-1]
                    container = top.container
                    is_map = top.is_map
                    key = top.key
                    waiting = top.waiting
                elif kind is AliasEvent:
                    self._written = written
                    self._expanded = expanded
                    value = self._alias(event)
                    expanded = self._expanded
                    if value is _MERGE and not (is_map and not waiting):
                        raise _not_here(event)
                else:
                    raise _composer_error(f"unexpected {kind.__name__}", event.start_mark)
                if top is None:
                    if value is _MERGE:
                        raise _not_here(event)
                    return value
                if not is_map:
                    container.append(value)
                elif waiting:
                    if key is _MERGE:
                        if top.merges is None:
                            top.merges = []
                        top.merges.append((value, event.start_mark))
                    else:
                        container[key] = value
                    waiting = False
                else:
                    if value is not _MERGE:
                        try:
                            repeated = value in container
                        except TypeError:
                            raise _constructor_error(
                                "found unhashable key (a list or mapping as a key)",
                                event.start_mark,
                            ) from None
                        if repeated:
                            raise _constructor_error(
                                f"duplicate key {_short(value)}", event.start_mark
                            )
                    key = value
                    waiting = True
        finally:
            self._written = written
            self._expanded = expanded

    def _alias(self, event: AliasEvent) -> Any:
        anchor = str(event.anchor)
        found = self._anchors.get(anchor)
        if found is None:
            raise _composer_error(
                f"alias *{_name(anchor)} has no anchor before it", event.start_mark
            )
        value, size = found
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
        return value


def _not_here(event: Event) -> ConstructorError:
    return _constructor_error("'<<' (merge) is only valid as a mapping key", event.start_mark)


def _merged(top: _Open, event: Event) -> dict[Any, Any]:
    """YAML's merge type as PyYAML applies it: keys of the merged mappings in order, the
    first occurrence winning, then the mapping's own keys overriding them."""
    out: dict[Any, Any] = {}
    for value, mark in top.merges or ():
        sources = value if isinstance(value, list) else [value]
        for source in sources:
            if not isinstance(source, dict):
                raise _constructor_error("'<<' takes a mapping or a list of mappings", mark)
            for k, v in source.items():
                if k not in out:
                    out[k] = v
    out.update(top.container)
    return out


class _ScalarConstructor(SafeConstructor):
    """SafeConstructor's scalar types, refusing over-long integers and turning the
    ValueErrors some scalars raise (``2001-13-01``, a 5,000-digit integer) into marked
    errors."""

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


_ScalarConstructor.add_constructor(
    "tag:yaml.org,2002:int",
    _ScalarConstructor.construct_yaml_int,  # type: ignore[type-var]
)
_ScalarConstructor.add_constructor(
    "tag:yaml.org,2002:timestamp",
    _ScalarConstructor.construct_yaml_timestamp,  # type: ignore[type-var]
)


class _PyLoader(Reader, Scanner, Parser, _Builder, _ScalarConstructor, Resolver):
    def __init__(self, stream: str, limits: Limits) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _ScalarConstructor.__init__(self)
        Resolver.__init__(self)
        self._start_bounds(limits)


_LOADERS: list[type[Any]] = []
try:
    from yaml._yaml import CParser

    class _CLoader(CParser, _Builder, _ScalarConstructor, Resolver):
        """libyaml's parser, read event by event; its C composer is never used."""

        def __init__(self, stream: str, limits: Limits) -> None:
            CParser.__init__(self, stream)
            _ScalarConstructor.__init__(self)
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
        docs: list[object] = loader.documents()
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
    "load_one",
    "loader_name",
]
