"""probe.yamlload: every YAML file a user hands us loads in bounded time and memory,
through libyaml's parser and through the pure-Python one alike.

Times are CPU seconds of this process (``time.process_time``), so a loaded machine
does not make them flaky; the bounds are far above what the refusals cost (a few
milliseconds) and far below what the attacks cost unbounded (minutes, gigabytes).
"""

from __future__ import annotations

import os
import string
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from probe import yamlload
from probe.yamlfile import read_text
from probe.yamlload import Limits, YamlLoadError, load_all, load_one
from tests.hostile_yaml import billion_laughs

LIMITS = Limits(max_bytes=1 << 20)
PARSERS = pytest.mark.parametrize("pure_python", [False, True], ids=["libyaml", "python"])


def refused(fn: Callable[[], object], *, cpu_bound: float = 0.5) -> tuple[str, float]:
    start = time.process_time()
    with pytest.raises(YamlLoadError) as info:
        fn()
    spent = time.process_time() - start
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 400, msg
    assert spent < cpu_bound, f"refusal took {spent:.3f} s CPU"
    return msg, spent


def test_libyaml_is_what_loads() -> None:
    """The speed-up and the bounds are both on the C path in this environment."""
    assert yaml.__with_libyaml__
    assert yamlload.loader_name() == "libyaml"


@PARSERS
def test_billion_laughs_refused_fast(pure_python: bool) -> None:
    msg, _ = refused(lambda: load_all(billion_laughs(), LIMITS, pure_python=pure_python))
    assert "alias bomb" in msg and "line" in msg


@PARSERS
def test_wide_alias_fanout_refused(pure_python: bool) -> None:
    """One anchor of 1,000 nodes aliased 1,000 times: a million nodes from 10 KB."""
    text = "a: &a [" + ",".join(["x"] * 1000) + "]\nb: [" + ",".join(["*a"] * 1000) + "]\n"
    msg, _ = refused(lambda: load_all(text, LIMITS, pure_python=pure_python))
    assert "alias bomb" in msg


@PARSERS
def test_modest_aliases_still_load(pure_python: bool) -> None:
    """Anchors people really write (shared defaults, merge keys) keep working."""
    text = (
        "defaults: &d {cpu: 100m, memory: 128Mi}\n"
        "a: {<<: *d, cpu: 200m}\n"
        "b: *d\n"
        "items: [" + ", ".join(["*d"] * 200) + "]\n"
    )
    (doc,) = load_all(text, LIMITS, pure_python=pure_python)
    assert isinstance(doc, dict)
    assert doc["a"] == {"cpu": "200m", "memory": "128Mi"}
    assert doc["b"] is doc["defaults"] and len(doc["items"]) == 200


@PARSERS
@pytest.mark.parametrize("depth", [101, 1_000, 10_000])
def test_deep_flow_nesting_refused(pure_python: bool, depth: int) -> None:
    text = "[" * depth + "]" * depth
    # The pure-Python scanner looks ahead up to 1,024 characters for a possible simple
    # key at every flow level: bounded, but slower than libyaml.
    msg, _ = refused(
        lambda: load_all(text, LIMITS, pure_python=pure_python),
        cpu_bound=5.0 if pure_python else 0.5,
    )
    assert "nest" in msg


@PARSERS
def test_deep_block_nesting_refused(pure_python: bool) -> None:
    text = "".join(" " * i + f"k{i}:\n" for i in range(1_000)) + " " * 1_000 + "x\n"
    msg, _ = refused(lambda: load_all(text, LIMITS, pure_python=pure_python), cpu_bound=2.0)
    assert "nested deeper than 100 levels" in msg


@PARSERS
def test_depth_at_the_limit_loads(pure_python: bool) -> None:
    limits = Limits(max_bytes=1 << 20, max_depth=50)
    (doc,) = load_all("[" * 50 + "]" * 50, limits, pure_python=pure_python)
    for _ in range(49):
        assert isinstance(doc, list)
        doc = doc[0]
    assert doc == []
    refused(lambda: load_all("[" * 51 + "]" * 51, limits, pure_python=pure_python))


@PARSERS
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("a: 1\nb: 2\na: 3\n", "duplicate key 'a'"),
        ("{a: 1, a: 1}", "duplicate key 'a'"),
        ("1: x\n1.0: y\n", "duplicate key 1"),  # equal keys, however written
        ("x: {<<: [{a: 1}], a: 2, a: 3}\n", "duplicate key 'a'"),
        ("a: &a [1, *a]\n", "refers to a node that contains it"),
        ("a: &a {b: *a}\n", "refers to a node that contains it"),
        ("a: *nowhere\n", "alias *nowhere has no anchor before it"),
        ("a: &x 1\nb: &x 2\n", "anchor &x defined twice"),
        ("a: 2001-13-01\n", "invalid timestamp"),
        ("a: " + "9" * 5000 + "\n", "integer longer than 128"),
        ("a: 1" + ":00" * 100_000 + "\n", "integer longer than 128"),  # base 60: quadratic
        ("a: !!python/object/apply:os.system [id]\n", "is not supported here"),
        ("a: !!python/name:os.system x\n", "could not determine a constructor"),
        ("a: !!set {x, y}\n", "is not supported here"),
        ("a: <<\n", "only valid as a mapping key"),
        ("<<: 1\n", "takes a mapping or a list of mappings"),
        ("<<: [{a: 1}, 2]\n", "takes a mapping or a list of mappings"),
        ("? [a, b]\n: 1\n", "unhashable key"),
        ("a: [1, 2\n", "line"),
    ],
)
def test_bad_documents_refused(pure_python: bool, text: str, needle: str) -> None:
    msg, _ = refused(lambda: load_all(text, LIMITS, pure_python=pure_python), cpu_bound=2.0)
    assert needle in msg


@PARSERS
def test_merge_keys_may_be_overridden(pure_python: bool) -> None:
    text = "base: &b {a: 1, b: 2}\nx: {<<: *b, a: 3}\ny: {<<: [*b, {a: 9}], c: 4}\n"
    (doc,) = load_all(text, LIMITS, pure_python=pure_python)
    assert isinstance(doc, dict)
    assert doc["x"] == {"a": 3, "b": 2}
    assert doc["y"] == {"a": 1, "b": 2, "c": 4}  # the first merged mapping wins


def test_control_characters_in_keys_are_escaped_in_messages() -> None:
    text = 'k: 1\n"\\e[2J\\u2028evil": 1\n"\\e[2J\\u2028evil": 2\n'
    msg, _ = refused(lambda: load_all(text, LIMITS))
    assert "\x1b" not in msg and "\u2028" not in msg
    assert "\\x1b" in msg and "\\u2028" in msg


def test_nul_and_size_refused() -> None:
    refused(lambda: load_all("a: b\x00\n", LIMITS))
    msg, _ = refused(lambda: load_all("a: " + "x" * 200, Limits(max_bytes=100)))
    assert "longer than 100" in msg


def test_one_document_only() -> None:
    assert load_one("", LIMITS) is None
    assert load_one("a: 1\n", LIMITS) == {"a": 1}
    msg, _ = refused(lambda: load_one("a: 1\n---\nb: 2\n", LIMITS))
    assert "one YAML document" in msg


# ---- files ---------------------------------------------------------------------------------


def test_regular_file_reads(tmp_path: Path) -> None:
    p = tmp_path / "f.yaml"
    p.write_text("a: é\n", encoding="utf-8")
    assert read_text(p, 100) == "a: é\n"


def _read_refused(path: Path, max_bytes: int = 1 << 20) -> str:
    """read_text must refuse ``path`` promptly; a hang fails the test instead of the suite."""
    result: list[BaseException | str] = []

    def run() -> None:
        try:
            result.append(read_text(path, max_bytes))
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), f"reading {path} hung"
    (out,) = result
    assert isinstance(out, YamlLoadError), out
    msg = str(out)
    assert "\n" not in msg
    return msg


def test_fifo_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "targets.yaml"
    os.mkfifo(fifo)
    assert "not a regular file" in _read_refused(fifo)


def test_devices_and_directories_refused(tmp_path: Path) -> None:
    assert "not a regular file" in _read_refused(Path("/dev/zero"))
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")
    assert "not a regular file" in _read_refused(link)
    assert "directory" in _read_refused(tmp_path)
    assert "cannot read" in _read_refused(tmp_path / "missing.yaml")


def test_large_and_binary_files_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"a: " + b"x" * 2000)
    assert "larger than 1000 bytes" in _read_refused(big, 1000)
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"a: 1\nb: \x00\n")
    assert "NUL byte at line 2" in _read_refused(nul)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"a: caf\xe9\n")
    assert "not UTF-8" in _read_refused(latin)


# ---- same results as PyYAML's own safe loader on ordinary input ----------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
)
_docs = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(string.ascii_letters, min_size=1, max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=150)
@given(doc=_docs, flow=st.booleans())
def test_same_values_as_safe_load(doc: Any, flow: bool) -> None:
    text = yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=True)
    expected = yaml.safe_load(text)
    assert load_one(text, LIMITS) == expected
    assert load_one(text, LIMITS, pure_python=True) == expected


_yamlish = st.lists(
    st.sampled_from(
        [
            "a",
            "b",
            "&a ",
            "&b ",
            "*a",
            "*b",
            ": ",
            "- ",
            "[",
            "]",
            "{",
            "}",
            ", ",
            "\n",
            "  ",
            "? ",
            "<<",
            "!!set ",
            "!!binary ",
            "!!python/name:os.system ",
            '"',
            "'",
            "|",
            ">",
            "#",
            "---\n",
            "...\n",
            "1:0:0",
            "2001-13-01",
            "0x",
            "\uff11\uff12\uff13",
            "\t",
            "\\u2028",
            "%YAML 1.1\n",
            "!local ",
            "~",
            "null",
            "yes",
            ".inf",
        ]
    ),
    max_size=60,
).map("".join)


@settings(max_examples=400)
@given(text=_yamlish)
def test_arbitrary_text_loads_or_fails_with_one_line(text: str) -> None:
    for pure_python in (False, True):
        start = time.process_time()
        try:
            load_all(text, LIMITS, pure_python=pure_python)
        except YamlLoadError as exc:
            msg = str(exc)
            assert "\n" not in msg and len(msg) < 400
        assert time.process_time() - start < 2.0


@PARSERS
@pytest.mark.parametrize(
    "text",
    [
        "a: &a {x: 1, y: 1}\nb: &b {x: 2, z: 2}\nc: {<<: [*a, *b], w: 0}\n",
        "a: &a {x: 1, y: 1}\nb: &b {x: 2, z: 2}\nd: {<<: *a, <<: *b}\ne: {<<: [*b, *a], x: 5}\n",
        "base: &b {a: [1, 2], n: {m: 1}}\nlist: [*b, *b]\nk: {<<: *b}\n",
        "? <<\n: {a: 1}\nb: 2\n",
        "- &s hello\n- *s\n- {*s : 1}\n",
        "a: !!str 1\nb: !!int '7'\nc: !!float '1.5'\nd: !!bool yes\ne: !!null ''\nf: ! 12\n",
        "t: 2001-12-14t21:59:43.10-05:00\nd: 2002-12-14\nb: !!binary aGVsbG8=\n",
        "x: [0o17, 0x1F, 017, 1_000, 1:30, .inf, -.INF, .nan, ~, Null, on, Off]\n",
        "---\na: 1\n---\n---\n- b\n...\n",
    ],
)
def test_same_values_as_safe_load_for_aliases_merges_and_tags(pure_python: bool, text: str) -> None:
    import math

    expected = list(yaml.safe_load_all(text))
    got = load_all(text, LIMITS, pure_python=pure_python)
    assert repr(got).replace("nan", "N") == repr(expected).replace("nan", "N")
    assert not any(isinstance(v, float) and math.isnan(v) for v in [got])


def test_shared_objects_stay_shared() -> None:
    shared = {"k": [1, 2]}
    text = yaml.safe_dump({"a": shared, "b": shared, "c": [shared]})
    assert "&id001" in text
    doc = load_one(text, LIMITS)
    assert isinstance(doc, dict)
    assert doc["a"] is doc["b"] is doc["c"][0] and doc == yaml.safe_load(text)


@PARSERS
@pytest.mark.parametrize("tag", ["set", "omap", "pairs", "seq", "map"])
def test_collection_tags_on_a_scalar_refused(pure_python: bool, tag: str) -> None:
    # PyYAML's constructors for these are generators over a collection node: on a scalar
    # they used to hand back a generator object as the value.
    with pytest.raises(YamlLoadError, match="not supported on a scalar"):
        load_all(f"a: !!{tag} x\n", LIMITS, pure_python=pure_python)


@PARSERS
def test_plain_scalars_resolve_like_safe_load_past_the_tag_cache(pure_python: bool) -> None:
    # More distinct plain scalars than the resolved-tag cache holds: values past the cap
    # resolve the same way (ints, bools, nulls, strings starting with any character).
    words = [f"{c}{i}" for i in range(1500) for c in ("e", "n", "1", "y", "-", "~")]
    words += ["yes", "no", "on", "null", "~", "12", "0x1F", "1.5", "2001-12-14", "-7", "<x", "=y"]
    text = "".join(f"- {w}\n" for w in words)
    assert load_one(text, LIMITS, pure_python=pure_python) == yaml.safe_load(text)
