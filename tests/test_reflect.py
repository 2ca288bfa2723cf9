"""Header reflections as the real apps write them; any name case, list or string,
repeats; hostile bodies never crash the parser and never yield an XFCC that the app
did not show."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.reflect import MAX_BODY, XFCC, App, parse_reflection
from tests.reflect_apps import CASES, render

V = 'By=spiffe://cluster.local/ns/a/sa/b;Hash=ab;Subject="";URI=spiffe://cluster.local/ns/p/sa/p'


def test_httpbin_title_case_string() -> None:
    # httpbin: dict(request.headers.items()) -> Werkzeug Title-Case, one string each
    body = json.dumps(
        {"headers": {"Host": "x", "X-Forwarded-Client-Cert": V, "User-Agent": "mtlsprobe"}}
    ).encode()
    r = parse_reflection(body)
    assert r is not None and r.app is App.HTTPBIN and r.xfcc == [V]


def test_go_httpbin_lists() -> None:
    # go-httpbin: http.Header, canonical names, lists of values
    body = json.dumps({"headers": {"X-Forwarded-Client-Cert": [V, V], "Accept": ["*/*"]}})
    r = parse_reflection(body.encode())
    assert r is not None and r.app is App.GO_HTTPBIN and r.xfcc == [V, V]


def test_serve_json() -> None:
    body = json.dumps(
        {"name": "ns-a/echo", "listener": "1.2.3.4:8080", "headers": {XFCC: [V]}}
    ).encode()
    r = parse_reflection(body)
    assert r is not None and r.app is App.SERVE and r.name == "ns-a/echo" and r.xfcc == [V]


def test_istio_echo_text_lines() -> None:
    # pkg/test/echo: Field.WriteKeyValue -> "RequestHeader=<Key>:<value>\n", one per value
    body = (
        "ServiceVersion=v1\nServicePort=8080\nHost=echo:8080\nURL=/headers\nCluster=\n"
        "IstioVersion=\nMethod=GET\nProto=HTTP/1.1\nIP=10.0.0.1\nAlpn=\n"
        "RequestHeader=User-Agent:mtlsprobe\n"
        f"RequestHeader=X-Forwarded-Client-Cert:{V}\n"
        "ResponseHeader=X-Forwarded-Client-Cert:By=forged\n"
        "Hostname=echo-v1-abc\n"
    ).encode()
    r = parse_reflection(body)
    assert r is not None and r.app is App.ISTIO_ECHO and r.name == "echo-v1-abc"
    assert r.xfcc == [V] and r.values("user-agent") == ["mtlsprobe"]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("app", list(App))
def test_every_app_every_case(app: App, case: str) -> None:
    spell = CASES[case]
    r = parse_reflection(render(app, [(spell("X-Forwarded-Client-Cert"), V), ("Accept", "a")]))
    assert r is not None and r.app is app and r.xfcc == [V]


def test_same_name_in_two_cases_keeps_both_in_order() -> None:
    body = b'{"headers": {"x-forwarded-client-cert": "a", "X-FORWARDED-CLIENT-CERT": "b"}}'
    r = parse_reflection(body)
    assert r is not None and r.xfcc == ["a", "b"]
    # a JSON object with the very same key twice: both kept (json keeps only the last)
    r = parse_reflection(
        b'{"headers": {"X-Forwarded-Client-Cert": "a", "X-Forwarded-Client-Cert": "b"}}'
    )
    assert r is not None and r.xfcc == ["a", "b"]


@pytest.mark.parametrize(
    "body",
    [
        b"<html>httpbin</html>",
        b'{"headers": "X-Forwarded-Client-Cert: x"}',
        b'{"headers": {"X-Forwarded-Client-Cert": 3}}',
        b'{"headers": {"X-Forwarded-Client-Cert": ["a", null]}}',
        b'{"headers": {}, "headers": {}}',
        b"[1, 2]",
        b"RequestHeader=X-Forwarded-Client-Cert:a\n",  # no Istio echo fields around it
        b"\xff\xfe",
        b"{" * 100_000,
        b" " * (MAX_BODY + 1),
    ],
)
def test_not_a_reflection(body: bytes) -> None:
    assert parse_reflection(body) is None


def test_istio_value_cannot_start_a_line_of_its_own() -> None:
    """A header value holding U+2028, U+0085 or CR must not become a forged line."""
    sneaky = (
        "x\u2028RequestHeader=X-Forwarded-Client-Cert:forged"
        "\u0085\rRequestHeader=X-Forwarded-Client-Cert:f2"
    )
    r = parse_reflection(render(App.ISTIO_ECHO, [("User-Agent", sneaky)]))
    assert r is not None and r.xfcc == [] and r.values("user-agent") == [sneaky]


names = st.one_of(
    st.sampled_from(["X-Forwarded-Client-Cert", "x-forwarded-client-cert", "Host", "Accept"]),
    st.text(
        st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
        min_size=1,
        max_size=30,
    ),
).map(lambda n: n)
values = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\n"), max_size=60)
header_lists = st.lists(st.tuples(names, values), max_size=12)


@settings(max_examples=300, deadline=None)
@given(app=st.sampled_from(list(App)), headers=header_lists, case=st.sampled_from(sorted(CASES)))
def test_property_xfcc_is_exactly_what_the_app_showed(
    app: App, headers: list[tuple[str, str]], case: str
) -> None:
    spell = CASES[case]
    shown = [(spell(k), v) for k, v in headers]
    r = parse_reflection(render(app, shown))
    want = [v for k, v in shown if k.lower() == XFCC]
    if r is None:
        # only a reflection with no header lines at all (Istio needs one) goes unread
        assert app is App.ISTIO_ECHO and not shown
        return
    if app is App.HTTPBIN:  # one string per name, repeats comma-joined
        by_name: dict[str, list[str]] = {}
        for k, v in shown:
            by_name.setdefault(k, []).append(v)
        want = [",".join(v) for k, v in by_name.items() if k.lower() == XFCC]
    # nothing made up, nothing lost; the order holds within one spelling (across
    # spellings the apps' own order is a map's)
    assert sorted(r.xfcc) == sorted(want)
    if len({k for k, _ in shown if k.lower() == XFCC}) == 1:
        assert r.xfcc == want


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_property_random_bytes_never_crash(body: bytes) -> None:
    r = parse_reflection(body)
    assert r is None or all(isinstance(v, str) for v in r.xfcc)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=25), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=25), json_values, max_size=6))
def test_property_random_json_yields_only_xfcc_strings_that_are_there(
    doc: dict[str, object],
) -> None:
    body = json.dumps(doc).encode()
    r = parse_reflection(body)
    if r is None:
        return
    headers = doc["headers"]
    assert isinstance(headers, dict)
    there: list[str] = []
    for k, v in headers.items():
        if k.lower() == XFCC:
            there += [v] if isinstance(v, str) else list(v)
    assert r.xfcc == there


def test_werkzeug_joins_repeated_lines_with_comma_space() -> None:
    """Measured with httpbin 0.10.4 on Werkzeug 3.1: two XFCC lines become one string
    joined by ", "; the last element is still the last hop's."""
    from probe.xfcc import join_values, parse_xfcc

    body = b'{"headers": {"X-Forwarded-Client-Cert": "By=a;URI=b, By=c;URI=d", "Host": "x"}}'
    r = parse_reflection(body)
    assert r is not None and r.app is App.HTTPBIN
    assert parse_xfcc(join_values(r.xfcc))[-1].by == ("c",)
