"""The XFCC grammar: Envoy's shapes parse; nothing crashes the parser."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.xfcc import XfccError, parse_xfcc, trusted_element

REAL = (
    'By=spiffe://cluster.local/ns/ns-a/sa/echo;Hash=c94dad0948b5;Subject="";'
    "URI=spiffe://cluster.local/ns/probe/sa/meshprobe"
)


def test_envoy_element() -> None:
    (el,) = parse_xfcc(REAL)
    assert el.by == ("spiffe://cluster.local/ns/ns-a/sa/echo",)
    assert el.uri == ("spiffe://cluster.local/ns/probe/sa/meshprobe",)
    assert el.subject == "" and el.hash == "c94dad0948b5"


def test_last_element_is_trusted_and_keys_case_insensitive() -> None:
    forged = "by=spiffe://x/ns/a/sa/b;uri=spiffe://x/ns/evil/sa/evil"
    el = trusted_element([forged + "," + REAL])
    assert el is not None and el.uri == ("spiffe://cluster.local/ns/probe/sa/meshprobe",)
    first = parse_xfcc(forged)[0]
    assert first.uri == ("spiffe://x/ns/evil/sa/evil",)


def test_quoted_values_with_separators() -> None:
    header = 'By=spiffe://a/b;Subject="CN=a, O=\\"x;y\\"";URI=spiffe://c/d;DNS=a.b;DNS=c.d'
    (el,) = parse_xfcc(header)
    assert el.subject == 'CN=a, O="x;y"'
    assert el.dns == ("a.b", "c.d")


def test_multiple_header_values_join() -> None:
    el = trusted_element(["By=spiffe://a/1;URI=spiffe://a/2", "By=spiffe://b/1;URI=spiffe://b/2"])
    assert el is not None and el.by == ("spiffe://b/1",)


def test_absent_is_none() -> None:
    assert trusted_element([]) is None


@pytest.mark.parametrize("bad", ["", "By", 'Subject="unterminated', "=x", 'a=b"c', "x" * 70000])
def test_malformed_raises_xfcc_error(bad: str) -> None:
    with pytest.raises(XfccError):
        parse_xfcc(bad)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=400))
def test_no_input_crashes(text: str) -> None:
    with contextlib.suppress(XfccError):
        parse_xfcc(text)


_value = st.text(alphabet=st.characters(codec="ascii", exclude_characters='"\\\r\n'), max_size=30)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_value, _value, _value), min_size=1, max_size=5))
def test_round_trip(elements: list[tuple[str, str, str]]) -> None:
    def q(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

    header = ",".join(f"By={q(b)};Subject={q(s)};URI={q(u)}" for b, s, u in elements)
    parsed = parse_xfcc(header)
    assert [(e.by[0], e.subject, e.uri[0]) for e in parsed] == elements
