"""The fast road for large manifests: rapidyaml parses, emits JSON, orjson builds.

``probe.yamlload`` builds values from libyaml's events in Python; on a 50,000-pod
cluster dump that is most of ``plan --from-manifests`` (~2.7 MB/s). rapidyaml (C++)
parses and writes the same tree as JSON at ~20x that, and ``orjson.loads`` builds the
values in C. Its YAML is 1.2 where PyYAML's is 1.1, so this road is taken only for
text where the two provably agree, and otherwise returns None and the bounded loader
runs (the answer and its error messages are then exactly the bounded loader's):

- no anchors, aliases, tags, merge keys, directives, explicit keys, document-end
  markers, tabs, carriage returns, byte-order marks, Unicode line breaks or characters
  PyYAML refuses (``_plain_subset``);
- every plain scalar that either YAML could read as something other than a string
  (numbers, timestamps, ``yes``/``on``/``~``...) was checked to load to the same value
  through both roads (``_scalars_agree``; the answers are remembered per token);
- a key written twice, a collection as a key, nesting deeper than rapidyaml emits
  (64 levels, below ``Limits.max_depth``), JSON rapidyaml writes that orjson refuses
  (a control character, ``+5``): all fall back.

The bounds of the bounded loader hold here too: no anchors means no alias bomb, depth
is capped by the emitter, the size by the caller (``probe.yamlfile``).
"""

from __future__ import annotations

import functools
import os
import re
import string
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

from probe.yamlload import Limits, YamlLoadError
from probe.yamlload import load_all as bounded_load_all

try:
    import ryml
except ImportError:  # pragma: no cover - the wheel exists for every supported platform
    ryml = None

_EMIT_DEPTH = 64  # rapidyaml's emitter refuses deeper trees (ExceptionVisit)

# Constructs where YAML 1.1 and 1.2 (or PyYAML and rapidyaml) differ, or that the
# bounded loader limits itself, take the bounded road (_plain_subset): directives and
# document ends (_LINE_START), merge keys, a key spaced from its colon (``9090 : x``)...
_LINE_START = ("%", "...")
_COMMON = (string.ascii_letters + string.digits + " \n:-./_'\"").encode("ascii")
_COMMON_STR = {ord(c): None for c in _COMMON.decode("ascii")}
# Any of these and the text takes the bounded road: anchors, tags, tabs, carriage
# returns, characters PyYAML's reader refuses (rapidyaml does not).
_NEVER = frozenset(
    "&!\t\r" + "".join(map(chr, [*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]))
)
_BLOCK = frozenset("|>")
# Plain scalars starting with a reserved indicator (``@``, a backquote, ``%``), aliases,
# explicit keys; malformed block scalar headers: only rapidyaml takes some, the two read
# others apart. Each runs only when its trigger characters are in the text (a regular
# expression led by a character class scans ~10x slower than ``in``).
_INDICATORS: tuple[tuple[frozenset[str], re.Pattern[str]], ...] = (
    (frozenset("*?@`%"), re.compile(r"(?<![^\s\[{,])[*?@`%]", re.MULTILINE)),
    (frozenset("|>"), re.compile(r"(?<![^ \t\n])[|>][-+0-9]*[^-+0-9\s]", re.MULTILINE)),
)
_FLOW = "[]{},"
_MAX_FLOW_CHARS = 1_000_000
# A block scalar's header, and a line that is only a comment: the two roads disagree on
# where such a scalar's content ends.
_BLOCK_SCALAR = re.compile(r"(?<![^ \t\n])[|>][-+0-9]*[ \t]*(?:#.*)?$", re.MULTILINE)
_COMMENT_LINE = re.compile(r"^[ \t]*#", re.MULTILINE)
# Characters PyYAML's reader refuses (rapidyaml does not), and the line breaks and the
# byte-order mark YAML 1.1 reads differently from 1.2.
_REFUSED = re.compile(
    r"[^\x09\x0A\x20-\x7E\xA0-\u2027\u202A-\uD7FF\uE000-\uFEFE\uFF00-\uFFFD"
    r"\U00010000-\U0010FFFF]"
)

# Where a plain scalar ends in flow context; a chunk of text between these and
# whitespace is, at most, one plain scalar's first word (or a key with its colon).
_SPLIT = str.maketrans(",[]{}", "     ")
# First characters of anything either YAML could read as other than a string: PyYAML's
# implicit resolvers (bools, null, numbers, timestamps, merge, value) and JSON literals.
_RISKY_FIRST = frozenset("-+.0123456789~=<yYnNoOtTfFiI")
# A token led by a digit that neither road can read as a number or a timestamp: it has
# a character no YAML 1.1 int/float/timestamp and no JSON number has (hex digits count
# only after 0x/0b), or it is dotted more than once (10.0.0.1, 1.2.3).
_SURELY_STRING = re.compile(
    r"(?![-+]?0[xXbB])[-+]?\.?[0-9][-+0-9_.:eEtTzZ]*[^-+0-9_.:eEtTzZ]"
    r"|[0-9]+(?:\.[0-9]+){2,}$"
)
# What rapidyaml may write as other than the same string: numbers (also rewritten:
# ``.5`` -> ``0.5``, ``1.`` -> ``1.0``), infinities and NaNs (``inf`` -> ``".inf"``),
# JSON's literals; and the words and signs YAML 1.1 gives meaning. Measured against
# rapidyaml 0.15 (tests/test_yamlfast.py); anything matching is compared, not assumed.
_MAY_REWRITE = re.compile(
    r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]*)?"
    r"|(?i:[-+]?\.?(?:inf|infinity|nan)|true|false|null|yes|no|on|off|y|n)"
    r"|[-+.~=]"
)
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")  # an int alike in YAML 1.1 and JSON

_DQ_KEY = re.compile(r'"([^"\n]{1,64})"[ ]*[:,}]')
_SQ_KEY = re.compile(r"'([^'\n]{1,64})'[ ]*[:,}]")
_CACHE_CAP = 65_536
_MAX_COMPARED = 256  # tokens per text loaded through both roads to compare
_verdicts: dict[str, tuple[object]] = {}
_lock = threading.Lock()
_resolver = Resolver()
_STR = Resolver.DEFAULT_SCALAR_TAG
_INT_TAG = "tag:yaml.org,2002:int"
_PROBE_LIMITS = Limits(max_bytes=4096, max_depth=8)


def available() -> bool:
    return ryml is not None


@dataclass(frozen=True, slots=True)
class Emitted:
    """rapidyaml's JSON for a text that passed every check, waiting for ``build``: the
    half of the road that makes no Python values, so one process can emit and another
    build (``jobs.plan.manifests`` loads on several cores)."""

    json: str
    nodes: int  # in rapidyaml's tree: a key written twice shows as a shorter JSON value
    stream: bool  # "---" documents: the JSON is their list
    keys: dict[str, object]  # plain non-string keys and their values (see _scalars_agree)


def load_all(text: str, limits: Limits) -> list[object] | None:
    """Every document of ``text`` as ``probe.yamlload.load_all`` would return them, or
    None when this road cannot promise that (the caller then loads the bounded way)."""
    emitted = emit(text, limits)
    return None if emitted is None else build(emitted)


def emit(text: str, limits: Limits) -> Emitted | None:
    """The checks and rapidyaml's JSON; None when this road cannot promise the bounded
    loader's values."""
    if ryml is None or limits.max_depth < _EMIT_DEPTH or len(text) > limits.max_bytes:
        return None
    if not _plain_subset(text):
        return None
    keys = _scalars_agree(text)
    if keys is None:
        return None
    return _emit(text, keys)


def _plain_subset(text: str) -> bool:
    rare = _rare_characters(text)
    if rare & _NEVER:
        return False
    if text.startswith(_LINE_START) or "\n%" in text or "\n..." in text or " :" in text:
        return False  # directives, document ends, a key spaced from its colon
    if "\n: " in text or "\n:\n" in text:
        return False  # an empty key at a line's start
    if "<" in rare and "<<" in text:
        return False
    if text.startswith((":", "]", "}")):
        return False
    for trigger, pattern in _INDICATORS:
        if rare & trigger and pattern.search(text):
            return False
    if not rare.isdisjoint(_FLOW) and _flow_trouble(text):
        return False
    if rare & _BLOCK and _BLOCK_SCALAR.search(text) and _COMMENT_LINE.search(text):
        return False  # is "#..." under a block scalar header content or a comment?
    return text.isascii() or _REFUSED.search(text) is None


def _flow_trouble(text: str) -> bool:
    """A flow indicator where the two roads part: a closing bracket after a space, a
    colon or a dash (``[a, ]`` is a false alarm; ``a: ]``, ``[x, a:]``, ``[-]`` are
    not); a comma after a colon or a dash; an empty key (``{: a}``). Visits each flow
    character once (``find`` is a memchr; flow characters are few in block YAML)."""
    if sum(text.count(c) for c in _FLOW) > _MAX_FLOW_CHARS:
        return True  # JSON-like text: the bounded road, rather than a long loop here
    size = len(text)
    for c in _FLOW:
        i = text.find(c)
        while i >= 0:
            before = text[i - 1] if i else "\n"
            if c in "]}" and before in " \n:-":
                return True
            if c == "," and before in ":-":
                return True
            if c in "[{," and text.startswith(":", i + 1):
                after = text[i + 2] if i + 2 < size else "\n"
                if after in " \n":
                    return True
            i = text.find(c, i + 1)
    return False


def _rare_characters(text: str) -> frozenset[str]:
    """The characters of ``text`` outside the common ones of YAML (letters, digits, space,
    newline, ``:-./_'"``): one pass in C, then the checks run only for what is there."""
    if text.isascii():
        return frozenset(text.encode("ascii").translate(None, _COMMON).decode("ascii"))
    return frozenset(text.translate(_COMMON_STR))


def _scalars_agree(text: str) -> dict[str, object] | None:
    """None when some plain scalar may load differently through the two roads; else
    the plain non-strings that may be keys (``9090:``, ``true:``, ``{a, 8}`` in a flow
    mapping) with their values: JSON can only carry a key as a string.

    Over-approximates: every whitespace- or flow-separated chunk that starts like a
    non-string is judged, quoted text and comments included (a false alarm only costs
    the bounded road). A plain scalar that either YAML reads as a non-string has no
    spaces - except a YAML 1.1 timestamp, whose first chunk is a date - so its first
    chunk is judged."""
    chunks = set(text.replace('":', '" ').replace("':", "' ").translate(_SPLIT).split())
    keys: dict[str, object] = {}
    budget = [_MAX_COMPARED]
    for chunk in chunks:
        if chunk[0] not in _RISKY_FIRST:
            continue
        token = chunk[:-1] if chunk.endswith(":") else chunk
        if token in ("", "-", "---"):
            continue  # indicators (a lone dash in flow context is refused above)
        if _SURELY_STRING.match(token):
            continue  # uids, addresses, versions: unique, so not worth remembering
        verdict = _verdict(token, budget)
        if verdict is _DIFFERS:
            return None
        if verdict is not _STRING:
            keys[token] = verdict[0]
    # A quoted key "9090" (or an escape that spells it) is a string in both roads; the
    # conversion in _nodes could not tell it from the plain one.
    if keys and ("\\" in text or not keys.keys().isdisjoint(_quoted_keys(text))):
        return None
    return keys


def _quoted_keys(text: str) -> set[str]:
    """Every short text written quoted where a key can be (``'9090':``, ``{"true", x}``):
    one pass per quote character (a pattern led by a literal scans fast)."""
    return {*_DQ_KEY.findall(text), *_SQ_KEY.findall(text)}


# Verdicts on one plain token: a string in both, a non-string alike in both (its value,
# boxed: it may be None), or different.
_STRING: tuple[object] = ("str",)
_DIFFERS: tuple[object] = ("differs",)


def _verdict(token: str, budget: list[int]) -> tuple[object]:
    """What the two roads make of ``token``; a token neither rule decides is loaded
    through both (~0.1 ms), at most ``_MAX_COMPARED`` per text: a file of a million
    distinct floats would otherwise cost far more here than the bounded road."""
    with _lock:
        known = _verdicts.get(token)
    if known is not None:
        return known
    verdict = _judge(token)
    if verdict is None:
        if budget[0] <= 0:
            return _DIFFERS  # not remembered: the token itself may be fine
        budget[0] -= 1
        verdict = _compared(token)
    with _lock:
        if len(_verdicts) < _CACHE_CAP:
            _verdicts[token] = verdict
    return verdict


def _judge(token: str) -> tuple[object] | None:
    """The verdict the rules give without loading anything, or None."""
    tag = _resolver.resolve(ScalarNode, token, (True, False))  # type: ignore[no-untyped-call]
    if tag == _STR and not _MAY_REWRITE.fullmatch(token):
        return _STRING  # the same string in both
    if tag == _INT_TAG and _DECIMAL.fullmatch(token) and _decimals_alike():
        return (int(token),)
    return None


@functools.cache
def _decimals_alike() -> bool:
    """Decimal integers load alike through both roads (checked once, by sample)."""
    return all(_compared(str(n)) == (n,) for n in (8080, -5, 0, 123456789012345678))


def _compared(token: str) -> tuple[object]:
    """``token`` loaded as a plain scalar through both roads: its verdict."""
    text = f"- {token}\n"
    try:
        expected = bounded_load_all(text, _PROBE_LIMITS)
    except YamlLoadError:
        return _DIFFERS
    got = _through_json(text, {}) if _plain_subset(text) else None
    if got is None or not _same(expected, got):
        return _DIFFERS
    value = expected[0][0]  # type: ignore[index]
    if isinstance(value, list | dict):
        return _DIFFERS  # not a scalar after all
    return _STRING if isinstance(value, str) else (value,)


def _emit(text: str, keys: dict[str, object]) -> Emitted | None:
    if threading.active_count() > 1:
        return None  # silencing rapidyaml's stderr swaps fd 2 for the whole process
    try:
        with _quiet_stderr():
            tree = ryml.parse_in_arena(text.encode("utf-8"))
            root = tree.root_id()
            emitted = ryml.emit_json_malloc(tree, root)
            stream = bool(tree.is_stream(root))
            nodes = int(tree.size())
    except (ryml.ExceptionBasic, MemoryError, UnicodeError):
        return None
    return Emitted(emitted if emitted is not None else "", nodes, stream, keys)


def build(emitted: Emitted) -> list[object] | None:
    """The documents from ``emit``'s JSON; None when JSON cannot carry them alike (a key
    written twice, an integer past 64 bits, NaN, a control character)."""
    if not emitted.json:
        return []  # nothing but comments and blank lines
    try:
        value: Any = orjson.loads(emitted.json)
    except orjson.JSONDecodeError:
        return None
    # JSON keeps the last of a key written twice; the tree counted every one.
    if _nodes(value, emitted.keys) != emitted.nodes:
        return None
    if not emitted.stream:
        return [value]
    return value if isinstance(value, list) else None


def _through_json(text: str, keys: dict[str, object]) -> list[object] | None:
    emitted = _emit(text, keys)
    return None if emitted is None else build(emitted)


def _nodes(value: object, keys: dict[str, object]) -> int:
    """Nodes of ``value`` (the tree's count when no key was written twice), with plain
    non-string keys put back as PyYAML reads them (``"9090"`` -> 9090); -1 when two
    keys are then equal (``1`` and ``true``: refused, as the bounded loader does)."""
    count = 1
    stack = [value] if type(value) is dict or type(value) is list else []
    pop, push = stack.pop, stack.append
    while stack:
        node = pop()
        if type(node) is dict:
            count += len(node)
            if keys and not keys.keys().isdisjoint(node):
                fixed = {keys.get(k, k): v for k, v in node.items()}
                if len(fixed) != len(node):
                    return -1
                node.clear()
                node.update(fixed)
            children: Any = node.values()
        else:
            count += len(node)
            children = node
        for child in children:
            kind = type(child)
            if kind is dict or kind is list:
                push(child)
    return count


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """rapidyaml prints its parse errors to fd 2 before raising; we fall back to the
    bounded loader, whose one-line message is the one the user should see."""
    saved = os.dup(2)
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 2)
        finally:
            os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _same(a: object, b: object) -> bool:
    """Equal with the same types all the way down (``1 == 1.0 == True`` is not enough;
    a NaN is never the same)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(
            type(k) is type(kb) and _same(a[k], b[kb]) for k, kb in zip(a, b, strict=True)
        )
    return a == b


__all__ = ["Emitted", "available", "build", "emit", "load_all"]
